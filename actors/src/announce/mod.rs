//! The announcer: the one owner of the eBPF datapath.
//!
//! One task ([`Announcer`]) owns the responder maps, the fence slots and the
//! attachments. It reconciles the `l2-announce` table into the maps (a
//! statedb reconciler driven step by step, [`ResponderTarget`]), opens and
//! closes claims' fences when the elections say so ([`Fences`], a channel:
//! nothing else touches the maps), refreshes the agent liveness, follows
//! interface MAC changes, and sends gratuitous ARP / unsolicited NA.
//!
//! Safety rules it enforces (DESIGN.md, "Safety rules"):
//! * an entry answers only under its claim's fence as this run's elections
//!   opened it; entries a previous process left keep the deadline it gave
//!   them and are never re-armed (see [`datapath`]);
//! * a gratuitous announcement is sent only for an entry this run answers,
//!   and only while its fence in the maps is open, checked right before
//!   every send; the repeats stop the moment either fails;
//! * closing a fence is acknowledged once the maps hold it, so an election
//!   can close before it releases.
//!
//! Split: [`datapath`] (plain state over the [`maps`] traits), [`target`]
//! (the reconcile target), [`announcer`] (the task), [`gratuitous`] (the
//! announcement schedule).

pub mod announcer;
pub mod datapath;
pub mod gratuitous;
pub mod maps;
pub mod target;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use announcer::{Announcer, AnnouncerOptions};
pub use datapath::{Datapath, DatapathError, SlotAllocator};
pub use gratuitous::GratuitousConfig;
pub use maps::{GratuitousSender, MemoryDatapath, MemoryState, ResponderMaps, SocketSender};
pub use target::ResponderTarget;

/// Receives datapath events for the metrics.
pub trait DatapathObserver: Send + Sync {
    fn gratuitous_sent(&self, _ip: IpAddr, _interface: &str) {}
    fn liveness_refreshed(&self) {}
    /// The map counters: (IP, interface, responses sent), absolute.
    fn responses(&self, _entries: &[(IpAddr, String, u64)]) {}
    /// One datapath operation of the reconciler (update, delete, prune).
    fn reconciled(&self, _duration: Duration, _failed: bool) {}
    /// A claim's fence was opened until `until`, or closed (`None`).
    fn fence(&self, _claim: &str, _until: Option<Instant>) {}
}

/// An observer that records nothing.
pub struct NoDatapathObserver;
impl DatapathObserver for NoDatapathObserver {}

/// What the elections tell the announcer.
#[derive(Debug)]
pub enum FenceCommand {
    /// `claim` is confirmed in this run until `until` (`None`: until it
    /// is closed; the node fence still applies): its entries may answer
    /// until then; `done` fires once the maps hold it.
    Open {
        claim: String,
        until: Option<Instant>,
        done: Option<oneshot::Sender<()>>,
    },
    /// The node fence (node-heartbeat mode) is open until `until`: every
    /// entry answers only before it, whatever its claim's fence says.
    NodeFence { until: Instant },
    /// `claim` is given up: its entries stop answering; `done` fires once
    /// the maps hold the closed fence.
    Close {
        claim: String,
        done: Option<oneshot::Sender<()>>,
    },
    /// Every claim is given up (shutdown).
    CloseAll { done: Option<oneshot::Sender<()>> },
}

/// The announcer is gone: a fence could not be confirmed closed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the announcer is not running; the fence could not be closed")]
pub struct AnnouncerGone;

/// The elections' handle on the fences (clone it freely).
#[derive(Debug, Clone)]
pub struct Fences {
    tx: mpsc::UnboundedSender<FenceCommand>,
}

/// The announcer's end of [`Fences`].
pub type FenceReceiver = mpsc::UnboundedReceiver<FenceCommand>;

impl Fences {
    /// A handle and the receiver to give the [`Announcer`].
    pub fn channel() -> (Fences, FenceReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Fences { tx }, rx)
    }

    /// Opens or extends `claim`'s fence until `until`.
    pub fn open(&self, claim: &str, until: Instant) {
        let _ = self.tx.send(FenceCommand::Open {
            claim: claim.to_string(),
            until: Some(until),
            done: None,
        });
    }

    /// Opens `claim`'s fence until it is closed: its entries answer while
    /// the node fence is open (node-heartbeat mode).
    pub fn open_until_closed(&self, claim: &str) {
        let _ = self.tx.send(FenceCommand::Open {
            claim: claim.to_string(),
            until: None,
            done: None,
        });
    }

    /// Extends the node fence until `until`.
    pub fn node_fence(&self, until: Instant) {
        let _ = self.tx.send(FenceCommand::NodeFence { until });
    }

    /// [`Fences::open`], resolving once the datapath holds the fence.
    pub fn opened(
        &self,
        claim: &str,
        until: Instant,
    ) -> impl Future<Output = Result<(), AnnouncerGone>> + use<> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(FenceCommand::Open {
            claim: claim.to_string(),
            until: Some(until),
            done: Some(done),
        });
        async move {
            sent.map_err(|_| AnnouncerGone)?;
            wait.await.map_err(|_| AnnouncerGone)
        }
    }

    /// Closes `claim`'s fence; resolves once the datapath holds it closed.
    pub fn close(&self, claim: &str) -> impl Future<Output = Result<(), AnnouncerGone>> + use<> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(FenceCommand::Close {
            claim: claim.to_string(),
            done: Some(done),
        });
        async move {
            sent.map_err(|_| AnnouncerGone)?;
            wait.await.map_err(|_| AnnouncerGone)
        }
    }

    /// Closes every fence; resolves once the datapath holds them closed.
    pub fn close_all(&self) -> impl Future<Output = Result<(), AnnouncerGone>> + use<> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(FenceCommand::CloseAll { done: Some(done) });
        async move {
            sent.map_err(|_| AnnouncerGone)?;
            wait.await.map_err(|_| AnnouncerGone)
        }
    }
}
