//! [`ControlPlane`]: the actors and the announcer of one node, wired in one
//! place. The agent, the in-process control-plane nodes of the tests and
//! the datapath lab all start through [`ControlPlaneBuilder`].
//!
//! Wiring (one direction; the datapath has one owner):
//!
//! ```text
//! netlink -> DeviceActor -> DeviceTableWriter -> table `devices` ------+
//!                                  |                                   |
//!                                  +--> SelectedDevices                v
//! policies watch -> PolicyActor --> PolicyStates --> ServiceActor   Announcer (owns the maps)
//! Services, slices, Node (reflectors) ------------> ServiceActor      ^    ^
//!                         Campaign/Withdraw per claim |               |    |
//!                                                     v               |    | table `l2-announce`
//! Lease watch + writes ------------------------> LeaseActor --Fences--+    |
//!                         Leadership per claim  <------+                   |
//!                                    ServiceActor --------- rows ----------+
//!
//! with --enable-l2-pod-announcements (no election, no eBPF map):
//! pods of this node (watch) + table `devices` --> PodActor --> GratuitousSender
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::announce::announcer::AnnouncerOptions;
use crate::announce::{
    Announcer, DatapathObserver, Fences, GratuitousSender, NoDatapathObserver, ResponderMaps,
};
use crate::devices::{
    DEVICES, DeviceActor, DeviceChange, DeviceFilter, DeviceRow, DeviceTableWriter, TrackerOptions,
};
use crate::k8s::client::ClientBudget;
use crate::lease::heartbeat::{HeartbeatActor, HeartbeatConfig};
use crate::lease::{
    ElectionMode, LeaseActor, LeaseConfig, LeaseObserver, LeaseTiming, NoLeaseObserver,
};
use crate::messages::{
    Campaign, CandidaciesSynced, NodeSelected, ReleaseAll, SelectedDevices, Withdraw,
};
use crate::pods::{NoPodObserver, PodActor, PodConfig, PodObserver};
use crate::policy::{NoPolicyObserver, PolicyActor, PolicyObserver};
use crate::service::{
    AnnounceObserver, ElectionRecipients, NoAnnounceObserver, ServiceActor, ServiceConfig,
};

/// One agent run. Rows of `l2-announce` carry the run that wrote them;
/// rows of another run are not desired state (see [`crate::tables`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    /// A new, unique run: process id and start time.
    pub fn new() -> Self {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        RunId(format!("{:x}-{}", ns, std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the ServiceActor's decisions go, and where shutdown asks for the
/// claims' release: the election actor of the mode in use.
fn election_recipients<A>(addr: Addr<A>) -> (ElectionRecipients, Recipient<ReleaseAll>)
where
    A: Actor<Context = Context<A>>
        + Handler<Campaign>
        + Handler<Withdraw>
        + Handler<CandidaciesSynced>
        + Handler<NodeSelected>
        + Handler<ReleaseAll>,
{
    let recipients = ElectionRecipients {
        campaign: addr.clone().recipient(),
        withdraw: addr.clone().recipient(),
        synced: addr.clone().recipient(),
        selected: addr.clone().recipient(),
    };
    (recipients, addr.recipient())
}

/// Where the node's devices come from.
#[derive(Debug, Clone)]
pub enum Devices {
    /// Followed through netlink, selected by this `--devices` filter.
    Netlink(DeviceFilter),
    /// Given rows (tests without netlink): written to the `devices` table
    /// as they are; those marked selected are the selected devices.
    Fixed(Vec<DeviceRow>),
}

/// Receivers of what happens, for metrics and Events.
#[derive(Clone)]
pub struct Observers {
    pub lease: Arc<dyn LeaseObserver>,
    pub announce: Arc<dyn AnnounceObserver>,
    pub policy: Arc<dyn PolicyObserver>,
    pub datapath: Arc<dyn DatapathObserver>,
    pub pods: Arc<dyn PodObserver>,
}

impl Default for Observers {
    fn default() -> Self {
        Observers {
            lease: Arc::new(NoLeaseObserver),
            announce: Arc::new(NoAnnounceObserver),
            policy: Arc::new(NoPolicyObserver),
            datapath: Arc::new(NoDatapathObserver),
            pods: Arc::new(NoPodObserver),
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("state database: {0}")]
    Db(#[from] statedb::Error),
}

/// Builds a node's control plane. Start it on an actix System.
pub struct ControlPlaneBuilder {
    client: kube::Client,
    db: statedb::Db,
    lease: LeaseConfig,
    election: ElectionMode,
    external_ips_enabled: bool,
    devices: Devices,
    observers: Observers,
    run: RunId,
    /// `--l2-pod-announcements-interface` when pod announcements are on.
    pod_interface: Option<String>,
}

/// A running control plane.
pub struct ControlPlane {
    run: RunId,
    release: Recipient<ReleaseAll>,
    service: Addr<ServiceActor>,
    datapath: DatapathTask,
}

/// The running [`Announcer`] and the fences that reach it. Started alone by
/// the datapath tests (which play the elections' part), and by
/// [`ControlPlaneBuilder::start`].
pub struct DatapathTask {
    pub fences: Fences,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DatapathTask {
    /// Starts the announcer over `maps` on the current actix arbiter.
    pub fn start<M, G>(
        db: &statedb::Db,
        run: RunId,
        maps: M,
        sender: G,
        options: AnnouncerOptions,
        observer: Arc<dyn DatapathObserver>,
    ) -> Result<DatapathTask, ControlPlaneError>
    where
        M: ResponderMaps + 'static,
        G: GratuitousSender + 'static,
    {
        let (fences, fence_rx) = Fences::channel();
        let announcer = Announcer::new(db, maps, sender, run, fence_rx, options, observer)?;
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = actix::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            if let Err(e) = announcer.run(stop).await {
                tracing::error!(error = %e, "announcer stopped");
            }
        });
        Ok(DatapathTask {
            fences,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops the announcer and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl ControlPlane {
    /// A builder for node `node`, with leases in `namespace`.
    pub fn builder(
        client: kube::Client,
        db: statedb::Db,
        node: &str,
        namespace: &str,
        timing: LeaseTiming,
    ) -> ControlPlaneBuilder {
        ControlPlaneBuilder {
            client,
            db,
            lease: LeaseConfig::new(namespace, node, timing),
            election: ElectionMode::default(),
            external_ips_enabled: false,
            devices: Devices::Netlink(DeviceFilter::all()),
            observers: Observers::default(),
            run: RunId::new(),
            pod_interface: None,
        }
    }

    /// This run.
    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// The ServiceActor.
    pub fn service(&self) -> &Addr<ServiceActor> {
        &self.service
    }

    /// The fences (what the elections tell the announcer).
    pub fn fences(&self) -> &Fences {
        &self.datapath.fences
    }

    /// Graceful stop, as on SIGTERM: every fence closed, then every held
    /// claim released (within `timeout`), then the announcer stopped.
    pub async fn shutdown(mut self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.release.send(ReleaseAll)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "releasing leases"),
            Err(_) => warn!("releasing leases timed out"),
        }
        self.datapath.stop().await;
    }
}

impl ControlPlaneBuilder {
    /// The election mode (default node-heartbeat).
    pub fn election(mut self, mode: ElectionMode) -> Self {
        self.election = mode;
        self
    }

    pub fn external_ips(mut self, enabled: bool) -> Self {
        self.external_ips_enabled = enabled;
        self
    }

    /// The client's rate limit, for the lease sizing warning and the
    /// mirror writes' share.
    pub fn client_qps(mut self, qps: f64) -> Self {
        self.lease.client_qps = Some(qps);
        self
    }

    /// The client's token bucket: per-service acquisitions wait while it
    /// runs low.
    pub fn client_budget(mut self, budget: ClientBudget) -> Self {
        self.lease.budget = Some(budget);
        self
    }

    pub fn lease_gc_interval(mut self, interval: Duration) -> Self {
        self.lease.gc_interval = interval;
        self
    }

    pub fn devices(mut self, devices: Devices) -> Self {
        self.devices = devices;
        self
    }

    pub fn observers(mut self, observers: Observers) -> Self {
        self.observers = observers;
        self
    }

    /// Announces the addresses of this node's pods on `interface`
    /// (`--enable-l2-pod-announcements`), with the announcer's gratuitous
    /// sender and repeat settings.
    pub fn pod_announcements(mut self, interface: impl Into<String>) -> Self {
        self.pod_interface = Some(interface.into());
        self
    }

    /// Starts the announcer over `maps` and `sender`, then the actors.
    /// Must run inside an actix System (the actors start on its arbiter).
    pub fn start<M, G>(
        self,
        maps: M,
        sender: G,
        mut options: AnnouncerOptions,
    ) -> Result<ControlPlane, ControlPlaneError>
    where
        M: ResponderMaps + 'static,
        G: GratuitousSender + Clone + 'static,
    {
        let ControlPlaneBuilder {
            client,
            db,
            lease,
            election,
            external_ips_enabled,
            devices,
            observers,
            run,
            pod_interface,
        } = self;
        let pod_sender = sender.clone();
        options.node_fence = election == ElectionMode::NodeHeartbeat;
        // The datapath first: built (and what an earlier run left taken
        // stock of) before any election can open a fence.
        let datapath = DatapathTask::start(
            &db,
            run.clone(),
            maps,
            sender,
            options,
            observers.datapath.clone(),
        )?;
        let service_ctx = Context::<ServiceActor>::new();
        let service_addr = service_ctx.address();
        let node = lease.me.clone();
        let (recipients, release) = match election {
            ElectionMode::NodeHeartbeat => {
                let addr = HeartbeatActor::new(
                    client.clone(),
                    db.clone(),
                    HeartbeatConfig {
                        namespace: lease.namespace.clone(),
                        me: lease.me.clone(),
                        timing: lease.timing,
                        client_qps: lease.client_qps.unwrap_or(5.0),
                    },
                    service_addr.clone().recipient(),
                    datapath.fences.clone(),
                    observers.lease.clone(),
                )?
                .start();
                election_recipients(addr)
            }
            ElectionMode::PerService | ElectionMode::ClientGo => {
                let mut lease = lease;
                lease.poll = election == ElectionMode::ClientGo;
                let addr = LeaseActor::new(
                    client.clone(),
                    db.clone(),
                    lease,
                    service_addr.clone().recipient(),
                    datapath.fences.clone(),
                    observers.lease.clone(),
                )?
                .start();
                election_recipients(addr)
            }
        };
        let service = ServiceActor::new(
            client.clone(),
            db.clone(),
            ServiceConfig {
                me: node.clone(),
                external_ips_enabled,
                run: run.clone(),
            },
            recipients,
            observers.announce.clone(),
        )?;
        service_ctx.run(service);
        if let Some(interface) = pod_interface {
            start_pod_announcements(
                client.clone(),
                &db,
                PodConfig {
                    node: node.clone(),
                    interface,
                    gratuitous: options.gratuitous,
                },
                Box::new(pod_sender),
                observers.pods.clone(),
            )?;
        }
        PolicyActor::new(client, service_addr.clone().recipient(), observers.policy).start();
        start_devices(&db, devices, Some(service_addr.clone()))?;
        info!(run = %run, "control plane started");
        info!(election = %election, "election started");
        Ok(ControlPlane {
            run,
            release,
            service: service_addr,
            datapath,
        })
    }
}

/// Starts the PodActor (`--enable-l2-pod-announcements`). Must run inside
/// an actix System. Used alone when L2 announcements are disabled, next to
/// [`start_devices`], which fills the `devices` table it reads.
pub fn start_pod_announcements(
    client: kube::Client,
    db: &statedb::Db,
    config: PodConfig,
    sender: Box<dyn GratuitousSender>,
    observer: Arc<dyn PodObserver>,
) -> Result<(), ControlPlaneError> {
    info!(interface = %config.interface, node = %config.node, "L2 pod announcements started");
    PodActor::new(client, db.clone(), config, sender, observer)?.start();
    Ok(())
}

/// Follows the node's devices into the `devices` table, telling the
/// ServiceActor (when given) which are selected. Must run inside an actix
/// System. Used alone when L2 announcements are disabled.
pub fn start_devices(
    db: &statedb::Db,
    devices: Devices,
    service: Option<Addr<ServiceActor>>,
) -> Result<(), ControlPlaneError> {
    match devices {
        Devices::Netlink(filter) => {
            let writer =
                DeviceTableWriter::new(db.clone(), service.map(|s| s.recipient()))?.start();
            DeviceActor::new(filter, TrackerOptions::default(), writer.recipient()).start();
        }
        Devices::Fixed(rows) => {
            let table = statedb::Table::open(db, DEVICES)?;
            let selected: BTreeSet<String> = rows
                .iter()
                .filter(|r| r.selected)
                .map(|r| r.name.clone())
                .collect();
            crate::devices::write_change(db, &table, DeviceChange::Resync(rows))?;
            if let Some(s) = service {
                s.do_send(SelectedDevices(selected));
            }
        }
    }
    Ok(())
}
