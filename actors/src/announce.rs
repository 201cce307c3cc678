//! AnnounceActor: reconciles `l2-announce` into the eBPF responder maps,
//! attaches the responder where entries exist, sends gratuitous ARP /
//! unsolicited NA for new entries, owns the lease fence slots and refreshes
//! the datapath liveness.
//!
//! The statedb reconciler runs as its own task (incremental on changes, full
//! on start and periodically); the actor shares the [`Datapath`] with it
//! behind a mutex and writes fences ([`Renewed`]) and liveness.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bpf::{AttachMode, AttachedLink, Responder, ResponderError};
use statedb::{Table, Target};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::devices::{DEVICES, DeviceRow};
use crate::messages::{ElectionGroups, Renewed};
use crate::tables::{L2_ANNOUNCE, L2AnnounceRow};

/// How gratuitous announcements are repeated for a new entry.
#[derive(Debug, Clone, Copy)]
pub struct GratuitousConfig {
    /// Announcements in all (the first at once).
    pub count: u32,
    pub interval: Duration,
}

impl Default for GratuitousConfig {
    fn default() -> Self {
        GratuitousConfig {
            count: 3,
            interval: Duration::from_secs(1),
        }
    }
}

/// Receives datapath events for the metrics.
pub trait DatapathObserver: Send + Sync {
    fn gratuitous_sent(&self, _ip: IpAddr, _interface: &str) {}
    fn liveness_refreshed(&self) {}
    /// The map counters: (IP, interface, responses sent), absolute.
    fn responses(&self, _entries: &[(IpAddr, String, u64)]) {}
    /// One datapath operation of the reconciler (update, delete, prune).
    fn reconciled(&self, _duration: Duration, _failed: bool) {}
}

/// An observer that records nothing.
pub struct NoDatapathObserver;
impl DatapathObserver for NoDatapathObserver {}

/// Why a row could not be pushed to the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    #[error("interface {0:?} has no MAC address")]
    NoMac(String),
    #[error("no free lease fence slot")]
    NoSlot,
    #[error("reading devices: {0}")]
    Devices(#[from] statedb::Error),
    #[error(transparent)]
    Responder(#[from] ResponderError),
}

/// The responder plus what the agent tracks about it.
pub struct Datapath {
    responder: Responder,
    mode: AttachMode,
    /// ifindex -> number of entries on it, and its name.
    users: BTreeMap<u32, (usize, String)>,
    /// (IP, ifindex) -> fence slot of the entries in the maps.
    entries: BTreeMap<(IpAddr, u32), u32>,
    /// Election key -> fence slot.
    slots: BTreeMap<String, u32>,
    /// Service -> election key (from the ServiceActor).
    groups: BTreeMap<String, String>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl Datapath {
    pub fn new(responder: Responder, mode: AttachMode) -> Self {
        Datapath {
            responder,
            mode,
            users: BTreeMap::new(),
            entries: BTreeMap::new(),
            slots: BTreeMap::new(),
            groups: BTreeMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
        }
    }

    pub fn responder(&self) -> &Responder {
        &self.responder
    }

    pub fn responder_mut(&mut self) -> &mut Responder {
        &mut self.responder
    }

    /// Takes over the slot assignment of a previous run from the pinned
    /// maps, so that a restarted agent never resets a fence that entries
    /// still answer under. `rows` are the persisted `l2-announce` rows and
    /// `ifnames` the device names by ifindex.
    pub fn recover_slots(
        &mut self,
        rows: &[L2AnnounceRow],
        ifnames: &BTreeMap<u32, String>,
    ) -> Result<usize, ResponderError> {
        let mut recovered = 0;
        for entry in self.responder.list()? {
            let Some(name) = ifnames.get(&entry.ifindex) else {
                continue;
            };
            let origin = rows
                .iter()
                .find(|r| r.ip == entry.ip && r.network_interface == *name)
                .and_then(|r| r.origins.first());
            if let Some(origin) = origin
                && !self.slots.contains_key(origin)
            {
                self.slots.insert(origin.clone(), entry.fence_slot);
                self.next_slot = self.next_slot.max(entry.fence_slot + 1);
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// The slot of an election, allocated on first use.
    fn slot_for(&mut self, key: &str) -> Result<u32, DatapathError> {
        if let Some(s) = self.slots.get(key) {
            return Ok(*s);
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None if self.next_slot < bpf::LEASE_FENCE_SLOTS => {
                self.next_slot += 1;
                self.next_slot - 1
            }
            None => return Err(DatapathError::NoSlot),
        };
        // A fresh slot answers nothing until a renewal sets its deadline.
        self.responder.set_fence(slot, 0)?;
        self.slots.insert(key.to_string(), slot);
        Ok(slot)
    }

    fn election_of(&self, service: &str) -> String {
        self.groups
            .get(service)
            .cloned()
            .unwrap_or_else(|| service.to_string())
    }

    /// Frees the slots of elections that are gone and have no entries.
    ///
    /// "No entries" counts what the pinned maps hold, not only what this run
    /// inserted: after a restart the maps still answer under the slots of
    /// the previous run until the first full pass re-inserts or prunes
    /// them, and clearing such a slot's fence would silence a held lease.
    fn free_unused_slots(&mut self) {
        let live: BTreeSet<&String> = self.groups.values().collect();
        let ours: BTreeSet<u32> = self.entries.values().copied().collect();
        let mut gone: Vec<(String, u32)> = self
            .slots
            .iter()
            .filter(|(k, s)| !live.contains(k) && !ours.contains(s))
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        if gone.is_empty() {
            return;
        }
        // Only now read the maps (one syscall per entry), for the slots
        // that a previous run's entries still use.
        match self.responder.list() {
            Ok(in_maps) => {
                let pinned: BTreeSet<u32> = in_maps.iter().map(|e| e.fence_slot).collect();
                gone.retain(|(_, s)| !pinned.contains(s));
            }
            Err(e) => {
                // Without knowing what the maps hold, keep every slot.
                warn!(error = %e, "listing responder entries; keeping fence slots");
                return;
            }
        }
        for (key, slot) in gone {
            self.slots.remove(&key);
            if let Err(e) = self.responder.set_fence(slot, 0) {
                warn!(error = %e, slot, "clearing fence slot");
            }
            self.free_slots.push(slot);
        }
    }

    /// Takes the ServiceActor's Service -> election key map; frees the
    /// slots of elections that are gone.
    pub fn set_groups(&mut self, groups: BTreeMap<String, String>) {
        // Slots recovered at start are keyed by a row's first origin; move
        // them to the election that origin now belongs to.
        for (service, election) in &groups {
            if service != election
                && !self.slots.contains_key(election)
                && let Some(slot) = self.slots.remove(service)
            {
                self.slots.insert(election.clone(), slot);
            }
        }
        self.groups = groups;
        self.free_unused_slots();
    }

    /// The fence slot assigned to an election, if any.
    pub fn slot_of(&self, election: &str) -> Option<u32> {
        self.slots.get(election).copied()
    }

    /// Sets the fence of an election's slot to `until` (monotonic clock).
    pub fn renew(&mut self, election: &str, until: Instant) -> Result<(), DatapathError> {
        let slot = self.slot_for(election)?;
        let now = Instant::now();
        let ns = bpf::monotonic_now_ns()
            + u64::try_from(until.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
        self.responder.set_fence(slot, ns)?;
        Ok(())
    }

    fn attach_if_first(&mut self, device: &DeviceRow) -> Result<(), DatapathError> {
        let entry = self
            .users
            .entry(device.index)
            .or_insert((0, device.name.clone()));
        if entry.0 == 0 {
            let mac = device
                .mac()
                .ok_or_else(|| DatapathError::NoMac(device.name.clone()))?;
            self.responder.attach(&device.name, mac, self.mode)?;
            info!(interface = %device.name, mode = %self.mode, "responder attached");
        }
        if let Some(e) = self.users.get_mut(&device.index) {
            e.0 += 1;
        }
        Ok(())
    }

    fn release_interface(&mut self, ifindex: u32) {
        let Some(entry) = self.users.get_mut(&ifindex) else {
            return;
        };
        entry.0 = entry.0.saturating_sub(1);
        if entry.0 == 0 {
            let name = entry.1.clone();
            self.users.remove(&ifindex);
            match self.responder.detach_ifindex(ifindex) {
                Ok(_) => info!(interface = %name, "responder detached"),
                Err(e) => warn!(interface = %name, error = %e, "detaching responder"),
            }
        }
    }

    /// Counters per (IP, ifindex) for the metrics.
    pub fn responses(&self) -> Result<Vec<bpf::ResponderEntry>, ResponderError> {
        self.responder.list()
    }

    pub fn set_liveness_now(&mut self) -> Result<u64, ResponderError> {
        self.responder.set_liveness_now()
    }
}

/// Locks the datapath; a panic while holding it leaves consistent maps
/// (every write is one syscall), so a poisoned lock is still usable.
fn lock(dp: &Mutex<Datapath>) -> MutexGuard<'_, Datapath> {
    dp.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reconciler's target: rows of `l2-announce` into the maps.
pub struct ResponderTarget {
    datapath: Arc<Mutex<Datapath>>,
    db: statedb::Db,
    devices: Table<DeviceRow>,
    gratuitous: GratuitousConfig,
    observer: Arc<dyn DatapathObserver>,
}

impl ResponderTarget {
    fn device(&self, name: &str) -> Result<DeviceRow, DatapathError> {
        self.devices
            .get(&self.db, DEVICES.primary, name)?
            .map(|e| e.row)
            .ok_or_else(|| DatapathError::UnknownInterface(name.to_string()))
    }

    fn announce(&self, ip: IpAddr, device: &DeviceRow) {
        let Some(mac) = device.mac() else {
            return;
        };
        let ifindex = device.index;
        let name = device.name.clone();
        let observer = self.observer.clone();
        let cfg = self.gratuitous;
        let send = move || {
            let result = match ip {
                IpAddr::V4(v4) => bpf::send_gratuitous_arp(ifindex, mac, v4),
                IpAddr::V6(v6) => bpf::send_unsolicited_na(ifindex, mac, v6),
            };
            match result {
                Ok(()) => observer.gratuitous_sent(ip, &name),
                Err(e) => {
                    warn!(ip = %ip, interface = %name, error = %e, "gratuitous announcement failed")
                }
            }
        };
        send();
        if cfg.count > 1 {
            tokio::spawn(async move {
                for _ in 1..cfg.count {
                    tokio::time::sleep(cfg.interval).await;
                    send();
                }
            });
        }
    }
}

impl Target<L2AnnounceRow> for ResponderTarget {
    type Error = DatapathError;

    fn update(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let start = Instant::now();
        let result = self.update_entry(row);
        self.observer.reconciled(start.elapsed(), result.is_err());
        result
    }

    fn delete(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let start = Instant::now();
        let result = self.delete_entry(row);
        self.observer.reconciled(start.elapsed(), result.is_err());
        result
    }

    fn prune(&mut self, desired: &[L2AnnounceRow]) -> Result<(), DatapathError> {
        let start = Instant::now();
        let result = self.prune_entries(desired);
        self.observer.reconciled(start.elapsed(), result.is_err());
        result
    }
}

impl ResponderTarget {
    fn update_entry(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let device = self.device(&row.network_interface)?;
        let mut dp = lock(&self.datapath);
        let origin = row.origins.first().cloned().unwrap_or_default();
        let election = dp.election_of(&origin);
        let slot = dp.slot_for(&election)?;
        let key = (row.ip, device.index);
        let new = !dp.entries.contains_key(&key);
        if new {
            dp.attach_if_first(&device)?;
        }
        if let Err(e) = dp.responder.insert(row.ip, device.index, slot) {
            // Undo the attach count taken for this entry, or the interface
            // would never be detached.
            if new {
                dp.release_interface(device.index);
            }
            return Err(e.into());
        }
        dp.entries.insert(key, slot);
        drop(dp);
        if new {
            debug!(ip = %row.ip, interface = %device.name, slot, "entry added");
            self.announce(row.ip, &device);
        }
        Ok(())
    }

    fn delete_entry(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let mut dp = lock(&self.datapath);
        let found: Vec<(IpAddr, u32)> = dp
            .entries
            .keys()
            .filter(|(ip, ifindex)| {
                *ip == row.ip
                    && dp
                        .users
                        .get(ifindex)
                        .is_some_and(|(_, n)| *n == row.network_interface)
            })
            .copied()
            .collect();
        for key in found {
            dp.responder.remove(key.0, key.1)?;
            dp.entries.remove(&key);
            dp.release_interface(key.1);
        }
        dp.free_unused_slots();
        Ok(())
    }

    fn prune_entries(&mut self, desired: &[L2AnnounceRow]) -> Result<(), DatapathError> {
        let mut wanted: BTreeSet<(IpAddr, u32)> = BTreeSet::new();
        for row in desired {
            if let Ok(device) = self.device(&row.network_interface) {
                wanted.insert((row.ip, device.index));
            }
        }
        let mut dp = lock(&self.datapath);
        // What the maps hold may include entries of an earlier run.
        for entry in dp.responder.list()? {
            let key = (entry.ip, entry.ifindex);
            if !wanted.contains(&key) {
                dp.responder.remove(entry.ip, entry.ifindex)?;
                if dp.entries.remove(&key).is_some() {
                    dp.release_interface(entry.ifindex);
                }
                info!(ip = %entry.ip, ifindex = entry.ifindex, "pruned stale entry");
            }
        }
        // Attachments nobody wants (left by an earlier run) go too; those
        // of interfaces with desired rows stay, so that a restarted agent
        // answers without a gap while its full pass re-inserts them.
        let mode = dp.mode;
        let keep: Vec<AttachedLink> = dp
            .users
            .keys()
            .copied()
            .chain(wanted.iter().map(|(_, ifindex)| *ifindex))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .map(|ifindex| AttachedLink { ifindex, mode })
            .collect();
        dp.responder.cleanup_stale(&keep)?;
        dp.free_unused_slots();
        Ok(())
    }
}

/// The reconciler over `l2-announce`, woken for a full pass whenever the
/// `devices` table changes: rows waiting for an interface are pushed as
/// soon as it appears, and entries follow an interface that was recreated
/// under a new index.
pub struct AnnounceReconciler {
    reconciler: statedb::Reconciler<L2AnnounceRow, ResponderTarget>,
    devices: statedb::Changes<DeviceRow>,
    trigger: Arc<Notify>,
}

impl AnnounceReconciler {
    /// Runs until `shutdown` resolves (see [`statedb::Reconciler::run`]).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), statedb::Error> {
        let AnnounceReconciler {
            reconciler,
            mut devices,
            trigger,
        } = self;
        let watch = async move {
            loop {
                devices.wait().await;
                match devices.next_batch() {
                    Ok(batch) if batch.is_empty() => {}
                    Ok(_) => trigger.notify_one(),
                    Err(e) => {
                        warn!(error = %e, "reading device changes; rows waiting for an interface are retried on their backoff only");
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        tokio::select! {
            result = reconciler.run(shutdown) => result,
            () = watch => Ok(()),
        }
    }
}

/// Builds the reconciler over `l2-announce` for this datapath.
pub fn reconciler(
    db: &statedb::Db,
    datapath: Arc<Mutex<Datapath>>,
    gratuitous: GratuitousConfig,
    observer: Arc<dyn DatapathObserver>,
) -> Result<AnnounceReconciler, statedb::Error> {
    let table = Table::open(db, L2_ANNOUNCE)?;
    let devices = Table::open(db, DEVICES)?;
    let rows: Vec<L2AnnounceRow> = table.list(db)?.into_iter().map(|e| e.row).collect();
    let ifnames: BTreeMap<u32, String> = devices
        .list(db)?
        .into_iter()
        .map(|e| (e.row.index, e.row.name))
        .collect();
    match lock(&datapath).recover_slots(&rows, &ifnames) {
        Ok(0) => {}
        Ok(n) => info!(slots = n, "recovered lease fence slots of the previous run"),
        Err(e) => warn!(error = %e, "recovering lease fence slots"),
    }
    let target = ResponderTarget {
        datapath,
        db: db.clone(),
        devices,
        gratuitous,
        observer,
    };
    // Device changes trigger a full pass; the capped backoff is a backstop.
    let config = statedb::ReconcilerConfig {
        retry_max: Duration::from_secs(2),
        ..Default::default()
    };
    let trigger = Arc::new(Notify::new());
    let device_changes = target.devices.changes(db);
    Ok(AnnounceReconciler {
        reconciler: statedb::Reconciler::new(db, &table, target, config)
            .with_full_trigger(trigger.clone()),
        devices: device_changes,
        trigger,
    })
}

/// The actor: fences, liveness, election groups.
pub struct AnnounceActor {
    datapath: Arc<Mutex<Datapath>>,
    liveness_interval: Duration,
    observer: Arc<dyn DatapathObserver>,
}

impl AnnounceActor {
    pub fn new(
        datapath: Arc<Mutex<Datapath>>,
        liveness_interval: Duration,
        observer: Arc<dyn DatapathObserver>,
    ) -> Self {
        AnnounceActor {
            datapath,
            liveness_interval,
            observer,
        }
    }

    /// Refreshes liveness and reports the response counters.
    fn refresh_liveness(&self) {
        let mut dp = lock(&self.datapath);
        match dp.set_liveness_now() {
            Ok(_) => self.observer.liveness_refreshed(),
            Err(e) => warn!(error = %e, "refreshing datapath liveness"),
        }
        match dp.responses() {
            Ok(entries) => {
                let named: Vec<(IpAddr, String, u64)> = entries
                    .into_iter()
                    .filter_map(|e| {
                        dp.users
                            .get(&e.ifindex)
                            .map(|(_, name)| (e.ip, name.clone(), e.responses_sent))
                    })
                    .collect();
                self.observer.responses(&named);
            }
            Err(e) => warn!(error = %e, "reading response counters"),
        }
    }
}

impl Actor for AnnounceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.refresh_liveness();
        ctx.run_interval(self.liveness_interval, |act, _| act.refresh_liveness());
    }
}

impl Handler<Renewed> for AnnounceActor {
    type Result = ();
    fn handle(&mut self, msg: Renewed, _ctx: &mut Context<Self>) {
        if let Err(e) = lock(&self.datapath).renew(&msg.service, msg.fence_until) {
            warn!(service = %msg.service, error = %e, "extending lease fence");
        }
    }
}

impl Handler<ElectionGroups> for AnnounceActor {
    type Result = ();
    fn handle(&mut self, msg: ElectionGroups, _ctx: &mut Context<Self>) {
        lock(&self.datapath).set_groups(msg.0);
    }
}
