//! PodActor: the actix shell around [`PodAnnouncements`]. Inputs: a watch
//! of the pods scheduled on this node (field selector `spec.nodeName`) and
//! the changes of the `devices` table (the pod interface's ifindex, MAC and
//! state). Output: gratuitous ARP / unsolicited NA through a
//! [`GratuitousSender`], as the schedule says, and reports to a
//! [`PodObserver`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use statedb::{Changes, Table};
use tracing::{debug, warn};

use super::PodObserver;
use super::announcements::{PodAnnouncements, PodDevice, pod_key};
use crate::announce::{GratuitousConfig, GratuitousSender};
use crate::devices::{DEVICES, DeviceRow};

/// What a PodActor is configured with.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// This node's name: the pods whose `spec.nodeName` it is.
    pub node: String,
    /// `--l2-pod-announcements-interface`.
    pub interface: String,
    /// How often and how far apart each address is announced
    /// (`--l2-gratuitous-count`, `--l2-gratuitous-interval`).
    pub gratuitous: GratuitousConfig,
}

pub struct PodActor {
    client: kube::Client,
    config: PodConfig,
    db: statedb::Db,
    devices: Table<DeviceRow>,
    changes: Option<Changes<DeviceRow>>,
    state: PodAnnouncements,
    sender: Box<dyn GratuitousSender>,
    observer: Arc<dyn PodObserver>,
    /// The wake-up for the next repeat.
    timer: Option<SpawnHandle>,
}

impl PodActor {
    pub fn new(
        client: kube::Client,
        db: statedb::Db,
        config: PodConfig,
        sender: Box<dyn GratuitousSender>,
        observer: Arc<dyn PodObserver>,
    ) -> Result<Self, statedb::Error> {
        let devices = Table::open(&db, DEVICES)?;
        Ok(PodActor {
            client,
            state: PodAnnouncements::new(&config.node, config.gratuitous),
            config,
            changes: Some(devices.changes(&db)),
            devices,
            db,
            sender,
            observer,
            timer: None,
        })
    }

    /// Reads the interface's row again.
    fn read_device(&mut self) {
        let row = match self.devices.get(
            &self.db,
            self.devices.primary_index(),
            &self.config.interface,
        ) {
            Ok(entry) => entry.map(|e| e.row),
            Err(e) => {
                warn!(interface = %self.config.interface, error = %e, "reading the devices table");
                return;
            }
        };
        let device = row.as_ref().and_then(PodDevice::of);
        if self.state.device_changed(device) {
            debug!(interface = %self.config.interface, ?device, "pod interface changed: announcing every pod address");
        }
    }

    /// Sends what is due and sets the timer for the next repeat.
    fn announce_due(&mut self, ctx: &mut Context<Self>) {
        let Self {
            state,
            sender,
            observer,
            config,
            ..
        } = self;
        let interface = config.interface.as_str();
        state.run(Instant::now(), |ip: IpAddr, ifindex, mac| {
            match sender.send(ip, ifindex, mac) {
                Ok(()) => {
                    debug!(ip = %ip, interface, "announced pod address");
                    observer.pod_announced(ip, interface);
                }
                Err(e) => warn!(ip = %ip, interface, error = %e, "pod announcement failed"),
            }
        });
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if let Some(due) = self.state.next_due() {
            let wait = due.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                act.announce_due(ctx);
            }));
        }
    }

    fn report_addresses(&self) {
        let all = self.state.addresses();
        let v4 = all.iter().filter(|ip| ip.is_ipv4()).count();
        self.observer.pod_addresses(v4, all.len() - v4);
    }
}

impl Actor for PodActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.read_device();
        if let Some(changes) = self.changes.take() {
            ctx.add_stream(futures::stream::unfold(changes, |mut c| async move {
                c.wait().await;
                // The batch only wakes us; the row is read again.
                let read = c.next_batch().map(drop);
                Some((DevicesChanged(read), c))
            }));
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={}", self.config.node);
        ctx.add_stream(
            watcher(pods, watcher::Config::default().fields(&selector))
                .default_backoff()
                .map(PodEvent),
        );
    }
}

struct PodEvent(Result<watcher::Event<Pod>, watcher::Error>);

struct DevicesChanged(Result<(), statedb::Error>);

impl StreamHandler<PodEvent> for PodActor {
    fn handle(&mut self, PodEvent(event): PodEvent, ctx: &mut Context<Self>) {
        match event {
            Err(e) => {
                warn!(node = %self.config.node, error = %e, "pod watch failed; retrying with backoff");
                return;
            }
            Ok(watcher::Event::Init) => self.state.relist_started(),
            Ok(watcher::Event::InitDone) => self.state.relist_done(),
            Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                let new = self.state.pod_applied(&pod);
                if !new.is_empty() {
                    debug!(pod = %pod_key(&pod), ips = ?new, "pod addresses to announce");
                }
            }
            Ok(watcher::Event::Delete(pod)) => self.state.pod_deleted(&pod),
        }
        self.report_addresses();
        self.announce_due(ctx);
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<DevicesChanged> for PodActor {
    fn handle(&mut self, DevicesChanged(read): DevicesChanged, ctx: &mut Context<Self>) {
        if let Err(e) = read {
            warn!(error = %e, "reading device changes");
        }
        self.read_device();
        self.announce_due(ctx);
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}
