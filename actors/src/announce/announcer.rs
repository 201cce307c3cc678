//! [`Announcer`]: the task that owns the datapath. One loop, so every map
//! write happens here: reconciling `l2-announce` (incremental on changes,
//! full at start, periodically and when the `devices` table changes),
//! applying [`FenceCommand`]s, refreshing the agent liveness and reporting
//! the reply counters, following MAC changes, and sending the gratuitous
//! announcements the schedule says are due.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpf::AttachMode;
use statedb::{Changes, Reconciler, Table};
use tracing::{info, warn};

use super::datapath::Datapath;
use super::gratuitous::{Check, GratuitousConfig, GratuitousSchedule};
use super::maps::{GratuitousSender, ResponderMaps};
use super::target::{ResponderTarget, reconciler_config};
use super::{DatapathObserver, FenceCommand, FenceReceiver};
use crate::RunId;
use crate::devices::{DEVICES, DeviceRow};
use crate::tables::{L2_ANNOUNCE, L2AnnounceRow};

/// How the announcer runs.
#[derive(Debug, Clone, Copy)]
pub struct AnnouncerOptions {
    pub mode: AttachMode,
    pub gratuitous: GratuitousConfig,
    /// How often the agent liveness is refreshed (and counters read).
    pub liveness_interval: Duration,
    /// Whether the elections extend a node fence (node-heartbeat mode);
    /// otherwise it is opened for good at start and claims' fences alone
    /// time the entries (per-service mode).
    pub node_fence: bool,
}

/// The datapath's owner. Build it with [`Announcer::new`] before any
/// election can open a fence, then [`run`](Self::run) it.
pub struct Announcer<M: ResponderMaps + 'static, G> {
    reconciler: Reconciler<L2AnnounceRow, ResponderTarget<M>>,
    commands: Option<FenceReceiver>,
    devices_table: Table<DeviceRow>,
    devices: Changes<DeviceRow>,
    db: statedb::Db,
    sender: G,
    schedule: GratuitousSchedule,
    liveness_interval: Duration,
    full_interval: Duration,
    observer: Arc<dyn DatapathObserver>,
}

fn monotonic_ns(at: Instant) -> u64 {
    let now = Instant::now();
    let base = bpf::monotonic_now_ns();
    if at >= now {
        base.saturating_add(u64::try_from((at - now).as_nanos()).unwrap_or(u64::MAX))
    } else {
        base.saturating_sub(u64::try_from((now - at).as_nanos()).unwrap_or(u64::MAX))
    }
}

impl<M: ResponderMaps + 'static, G: GratuitousSender> Announcer<M, G> {
    /// Takes stock of what an earlier run left in `maps` (those entries are
    /// inherited: kept under their own fence, never re-armed) and prepares
    /// the reconciler. Nothing is written until [`run`](Self::run).
    pub fn new(
        db: &statedb::Db,
        maps: M,
        sender: G,
        run: RunId,
        commands: FenceReceiver,
        options: AnnouncerOptions,
        observer: Arc<dyn DatapathObserver>,
    ) -> Result<Self, statedb::Error> {
        let mut datapath = Datapath::new(maps, options.mode);
        match datapath.recover() {
            Ok(0) => {}
            Ok(n) => info!(
                entries = n,
                "responder entries of an earlier run kept under their own fences until this run confirms their claims"
            ),
            Err(e) => warn!(error = %e, "reading the responder maps of an earlier run"),
        }
        // Inherited entries now obey their own slots alone, so the node
        // fence may open without re-arming any of them.
        if !options.node_fence
            && let Err(e) = datapath.maps_mut().set_node_fence(u64::MAX)
        {
            warn!(error = %e, "opening the node fence");
        }
        let table = Table::open(db, L2_ANNOUNCE)?;
        let target = ResponderTarget::new(datapath, db, run, observer.clone())?;
        let config = reconciler_config();
        let devices_table = Table::open(db, DEVICES)?;
        Ok(Announcer {
            reconciler: Reconciler::new(db, &table, target, config),
            commands: Some(commands),
            devices: devices_table.changes(db),
            devices_table,
            db: db.clone(),
            sender,
            schedule: GratuitousSchedule::new(options.gratuitous),
            liveness_interval: options.liveness_interval,
            full_interval: config.full_interval,
            observer,
        })
    }

    fn datapath(&mut self) -> &mut Datapath<M> {
        &mut self.reconciler.target_mut().datapath
    }

    /// Runs until `shutdown` resolves. Returns early only on a database
    /// error.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), statedb::Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        self.refresh_liveness();
        self.reconciler.reconcile_full()?;
        self.reconciler.reconcile_incremental()?;
        self.announce_due(true);
        let mut next_full = Instant::now() + self.full_interval;
        let mut next_liveness = Instant::now() + self.liveness_interval;
        loop {
            let wake = [
                Some(next_full),
                Some(next_liveness),
                self.reconciler.next_retry(),
                self.schedule.next_due(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_full);
            let command = async {
                match self.commands.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let mut devices_changed = false;
            // Whether anything but a timer woke the loop: only then can a
            // waiting entry's fence have opened.
            let mut changed = true;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                cmd = command => match cmd {
                    Some(cmd) => {
                        // Take every command already queued (a takeover
                        // opens thousands of fences at once): one
                        // reconcile and one announcement pass for them all.
                        let mut batch = vec![cmd];
                        if let Some(rx) = self.commands.as_mut() {
                            while let Ok(more) = rx.try_recv() {
                                batch.push(more);
                            }
                        }
                        for cmd in batch {
                            self.apply(cmd);
                        }
                    }
                    None => self.commands = None,
                },
                () = self.reconciler.changed() => {}
                () = self.devices.wait() => devices_changed = true,
                () = tokio::time::sleep_until(wake.into()) => changed = false,
            }
            let now = Instant::now();
            if now >= next_liveness {
                self.refresh_liveness();
                next_liveness = now + self.liveness_interval;
                changed = true;
            }
            if devices_changed && self.devices_changed() {
                next_full = now;
            }
            if now >= next_full {
                self.reconciler.reconcile_full()?;
                next_full = Instant::now() + self.full_interval;
                changed = true;
            }
            self.reconciler.reconcile_incremental()?;
            self.announce_due(changed);
        }
        info!("announcer stopped");
        Ok(())
    }

    fn apply(&mut self, cmd: FenceCommand) {
        match cmd {
            FenceCommand::Open { claim, until, done } => {
                // Entries waiting for this fence are announced by the
                // schedule's next run, right after this.
                let deadline = until.map_or(u64::MAX, monotonic_ns);
                match self.datapath().open(&claim, deadline) {
                    Ok(_) => self.observer.fence(&claim, until),
                    Err(e) => warn!(claim = %claim, error = %e, "opening a claim's fence"),
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            FenceCommand::NodeFence { until } => {
                if let Err(e) = self
                    .datapath()
                    .maps_mut()
                    .set_node_fence(monotonic_ns(until))
                {
                    warn!(error = %e, "extending the node fence");
                }
            }
            FenceCommand::Close { claim, done } => {
                if let Err(e) = self.datapath().close(&claim) {
                    warn!(claim = %claim, error = %e, "closing a claim's fence");
                    // No acknowledgement: the election must not release a
                    // claim whose fence may still be open.
                    return;
                }
                self.observer.fence(&claim, None);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            FenceCommand::CloseAll { done } => {
                if let Err(e) = self.datapath().close_all() {
                    warn!(error = %e, "closing every fence");
                    return;
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Reads the device changes; follows MAC changes of attached
    /// interfaces. Whether anything changed (a full pass is due).
    fn devices_changed(&mut self) -> bool {
        let batch = match self.devices.next_batch() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "reading device changes");
                return false;
            }
        };
        if batch.is_empty() {
            return false;
        }
        for change in batch.iter().filter(|c| !c.deleted) {
            match self.datapath().follow_mac(&change.row) {
                Ok(Some(entries)) => {
                    for e in entries {
                        self.schedule.start(e);
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(interface = %change.row.name, error = %e, "following a MAC change"),
            }
        }
        // The table is read again by the full pass; keep the handle alive.
        let _ = (&self.devices_table, &self.db);
        true
    }

    /// Schedules what the reconciler started answering, then sends what is
    /// due, each after checking entry and fence in the maps.
    fn announce_due(&mut self, changed: bool) {
        let mut started = false;
        for e in self.reconciler.target_mut().take_started() {
            self.schedule.start(e);
            started = true;
        }
        let scan = (changed || started) && self.schedule.waiting() > 0;
        if !scan && self.schedule.next_due().is_none_or(|d| d > Instant::now()) {
            return;
        }
        let Self {
            reconciler,
            schedule,
            sender,
            observer,
            ..
        } = self;
        let target = reconciler.target_mut();
        let datapath = &target.datapath;
        let now_ns = bpf::monotonic_now_ns();
        let names: std::collections::BTreeMap<u32, String> = datapath
            .interfaces()
            .map(|(i, n)| (i, n.to_string()))
            .collect();
        let mut check = |ip, ifindex| match datapath.answerable(ip, ifindex, now_ns) {
            Some(mac) => Check::Send(mac),
            None if datapath
                .entry(ip, ifindex)
                .is_some_and(|e| e.claim.is_some()) =>
            {
                Check::Closed
            }
            None => Check::Gone,
        };
        let mut send = |ip: IpAddr, ifindex, mac| {
            let name = names.get(&ifindex).map(String::as_str).unwrap_or("?");
            match sender.send(ip, ifindex, mac) {
                Ok(()) => observer.gratuitous_sent(ip, name),
                Err(e) => {
                    warn!(ip = %ip, interface = name, error = %e, "gratuitous announcement failed")
                }
            }
        };
        let now = Instant::now();
        if scan {
            schedule.run_waiting(now, &mut check, &mut send);
        }
        schedule.run_due(now, &mut check, &mut send);
    }

    fn refresh_liveness(&mut self) {
        match self.datapath().maps_mut().set_liveness_now() {
            Ok(_) => self.observer.liveness_refreshed(),
            Err(e) => warn!(error = %e, "refreshing datapath liveness"),
        }
        match self.reconciler.target().datapath.counters() {
            Ok(counters) => self.observer.responses(&counters),
            Err(e) => warn!(error = %e, "reading response counters"),
        }
    }
}
