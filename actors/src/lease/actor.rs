//! LeaseActor: per-Service elections over Kubernetes Leases.
//!
//! One watch on the lease namespace, kept in a reflector store, feeds
//! every election (client-go mode instead polls the leases it campaigns
//! for); decisions come from [`super::election::Election`]; this actor
//! only sends the create/update requests they call for, opens the claim's
//! fence in the datapath on every successful renewal ([`Fences`]) and
//! reports [`Leadership`] to the ServiceActor. Giving a claim up closes its
//! fence first and writes the release only once the datapath confirmed it.
//! It also keeps the `leases` table and deletes released leases nobody
//! claims (once a minute).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use super::election::{Decision, Election, LeaseRecord, LeaseTiming, lease_name};
use super::write_release;
use crate::announce::Fences;
use crate::k8s::client::ClientBudget;
use crate::k8s::reflect::{is_listed, reflected};
use crate::messages::{
    Campaign, CandidaciesSynced, Leadership, NodeSelected, ReleaseAll, Withdraw,
};
use crate::tables::{LEASES, LeaseRow};

/// Prefix of every lease this agent manages.
pub const LEASE_PREFIX: &str = "cilium-l2announce-";

/// How often elections are re-evaluated locally (no API traffic unless an
/// election decides on a request).
const TICK: Duration = Duration::from_millis(50);
/// How often released, unclaimed leases are garbage collected.
pub const GC_INTERVAL: Duration = Duration::from_secs(60);

/// Lease renewals per second that `held` leases need: each is renewed
/// once per retry period (as client-go's leader election does).
pub fn renewal_rate(held: usize, timing: &LeaseTiming) -> f64 {
    held as f64 / timing.retry_period.as_secs_f64().max(f64::EPSILON)
}

/// A warning when holding `held` leases needs more requests per second than
/// the client's rate limit grants: renewals then queue behind the limiter,
/// miss the renew deadline and the leases flap between nodes.
pub fn sizing_warning(held: usize, timing: &LeaseTiming, qps: f64) -> Option<String> {
    let need = renewal_rate(held, timing);
    (need > qps).then(|| {
        format!(
            "{held} leases renewed every {:?} need {need:.1} requests/s, more than \
             --k8s-client-qps {qps}: renewals will be throttled and leases may flap; \
             raise --k8s-client-qps (and --k8s-client-burst) to at least {}",
            timing.retry_period,
            need.ceil()
        )
    })
}

/// Receives election events for the metrics.
pub trait LeaseObserver: Send + Sync {
    fn acquired(&self, _service: &str, _takeover: Option<Duration>) {}
    fn lost(&self, _service: &str, _reason: &str) {}
    fn renew(&self, _service: &str, _latency: Duration, _ok: bool) {}
    /// Claims (or per-Service leases) held.
    fn held(&self, _count: usize) {}
    /// A heartbeat renewal (node-heartbeat mode) answered after `latency`.
    fn heartbeat(&self, _latency: Duration, _ok: bool) {}
    /// An eviction this node performed (`true`) or saw another perform.
    fn eviction(&self, _performed: bool) {}
    /// This node took a claim: `new`, `takeover` or `hand-off`.
    fn claim_taken(&self, _claim: &str, _reason: &str) {}
    /// Mirror Lease writes waiting (node-heartbeat mode).
    fn mirror_pending(&self, _count: usize) {}
}

/// An observer that records nothing.
pub struct NoLeaseObserver;
impl LeaseObserver for NoLeaseObserver {}

struct Slot {
    service: String,
    election: Election,
    in_flight: bool,
    leading: bool,
    /// Whether the ServiceActor has heard a first verdict for this
    /// election (it keeps a previous run's rows until then).
    reported: bool,
    created: Instant,
}

/// Where the actor learns what the Leases say.
enum Seen {
    /// A reflector store that the watch on the lease namespace feeds (the
    /// writer until the watch starts).
    Watched {
        namespace: String,
        store: Store<Lease>,
        writer: Option<Writer<Lease>>,
    },
    /// client-go mode: the last answer of a GET, by lease name. Not a
    /// store: it holds only the Leases this node campaigns for, each as
    /// recent as its last poll, never a list the API server gave.
    Polled(BTreeMap<String, (LeaseRecord, String)>),
}

impl Seen {
    /// What is known of Lease `name` (record, resourceVersion).
    fn get(&self, name: &str) -> Option<(LeaseRecord, String)> {
        match self {
            Seen::Watched {
                namespace, store, ..
            } => store
                .get(&ObjectRef::new(name).within(namespace))
                .map(|lease| record_of(&lease)),
            Seen::Polled(polled) => polled.get(name).cloned(),
        }
    }

    /// Whether a Lease not known is known to be absent: the watch has
    /// delivered its initial list (always, when polling: absence is a GET
    /// answer).
    fn complete(&self) -> bool {
        match self {
            Seen::Watched { store, .. } => is_listed(store),
            Seen::Polled(_) => true,
        }
    }
}

/// The actor. Build with [`LeaseActor::new`], then `start()`.
pub struct LeaseActor {
    api: Api<Lease>,
    me: String,
    timing: LeaseTiming,
    db: statedb::Db,
    leases: statedb::Table<LeaseRow>,
    /// By lease name.
    slots: BTreeMap<String, Slot>,
    /// [`ReleaseAll`] came: no campaign is started any more.
    stopping: bool,
    seen: Seen,
    leadership: Recipient<Leadership>,
    fences: Fences,
    observer: std::sync::Arc<dyn LeaseObserver>,
    /// When each held lease's previous holder last renewed, as observed,
    /// for the takeover latency.
    last_foreign_renewal: BTreeMap<String, Instant>,
    /// When each lease was last seen changing, for garbage collection.
    changed_at: BTreeMap<String, Instant>,
    gc_interval: Duration,
    /// The client's rate limit, for the sizing warning.
    client_qps: Option<f64>,
    /// The largest number of held leases already warned about.
    warned_at: usize,
    poll: bool,
    budget: Option<ClientBudget>,
    /// Leases with a poll (GET) in flight, client-go mode.
    polling: BTreeSet<String>,
    /// When each lease was last polled, client-go mode.
    polled_at: BTreeMap<String, Instant>,
}

/// What a LeaseActor is configured with.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease objects.
    pub namespace: String,
    /// This node's name: the holder identity.
    pub me: String,
    pub timing: LeaseTiming,
    /// The client's rate limit: warn (once per new high) when the held
    /// leases need more renewals per second.
    pub client_qps: Option<f64>,
    /// How often released, unclaimed leases are collected.
    pub gc_interval: Duration,
    /// Poll every Lease every retry period instead of watching (the
    /// `client-go` baseline of the benchmark).
    pub poll: bool,
    /// The client's token bucket: acquisitions wait while it runs low, so
    /// that renewals are never starved by new work.
    pub budget: Option<ClientBudget>,
}

impl LeaseConfig {
    pub fn new(namespace: &str, me: &str, timing: LeaseTiming) -> Self {
        LeaseConfig {
            namespace: namespace.to_string(),
            me: me.to_string(),
            timing,
            client_qps: None,
            gc_interval: GC_INTERVAL,
            poll: false,
            budget: None,
        }
    }
}

impl LeaseActor {
    pub fn new(
        client: kube::Client,
        db: statedb::Db,
        config: LeaseConfig,
        leadership: Recipient<Leadership>,
        fences: Fences,
        observer: std::sync::Arc<dyn LeaseObserver>,
    ) -> Result<Self, statedb::Error> {
        let seen = if config.poll {
            Seen::Polled(BTreeMap::new())
        } else {
            let (store, writer) = reflector::store();
            Seen::Watched {
                namespace: config.namespace.clone(),
                store,
                writer: Some(writer),
            }
        };
        Ok(LeaseActor {
            api: Api::namespaced(client, &config.namespace),
            me: config.me,
            stopping: false,
            timing: config.timing,
            leases: statedb::Table::open(&db, LEASES)?,
            db,
            slots: BTreeMap::new(),
            seen,
            leadership,
            fences,
            observer,
            last_foreign_renewal: BTreeMap::new(),
            changed_at: BTreeMap::new(),
            gc_interval: config.gc_interval,
            client_qps: config.client_qps,
            warned_at: 0,
            poll: config.poll,
            budget: config.budget,
            polling: BTreeSet::new(),
            polled_at: BTreeMap::new(),
        })
    }

    fn held_count(&self) -> usize {
        self.slots.values().filter(|s| s.leading).count()
    }

    /// Feeds what the watch (or the poll) shows of `name` to its election,
    /// if any.
    fn observe(&mut self, name: &str, now: Instant) {
        if self.slots.contains_key(name) {
            let seen = self.seen.get(name);
            self.observe_as(name, seen, now);
        }
    }

    /// Feeds `seen` (record, resourceVersion) of `name` to its election and
    /// the `leases` table.
    fn observe_as(&mut self, name: &str, seen: Option<(LeaseRecord, String)>, now: Instant) {
        let complete = self.seen.complete();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let mut foreign = false;
        match &seen {
            Some((record, rv)) => {
                foreign = record.holder != self.me && !record.holder.is_empty();
                if foreign {
                    self.last_foreign_renewal.insert(name.to_string(), now);
                }
                slot.election.observe(record.clone(), rv.clone(), now);
            }
            None if complete => slot.election.observe_absent(now),
            None => {}
        }
        if foreign {
            self.report_not_leading(name);
        }
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let row = lease_row(&slot.service, name, &self.me, seen.as_ref().map(|s| &s.0));
        self.write_row(row);
    }

    fn write_row(&self, row: LeaseRow) {
        let mut txn = self.db.write_txn();
        let same = self
            .leases
            .get(&txn, LEASES.primary, row.service.as_str())
            .ok()
            .flatten()
            .is_some_and(|e| e.row == row);
        if same {
            txn.abort();
            return;
        }
        if let Err(e) = self.leases.insert(&mut txn, row).and_then(|_| txn.commit()) {
            warn!(error = %e, "writing leases table");
        }
    }

    fn delete_row(&self, service: &str) {
        let mut txn = self.db.write_txn();
        let existing = self
            .leases
            .get(&txn, LEASES.primary, service)
            .ok()
            .flatten();
        if let Some(e) = existing
            && let Err(err) = self
                .leases
                .delete(&mut txn, &e.row)
                .and_then(|_| txn.commit())
        {
            warn!(error = %err, "deleting from leases table");
        }
    }

    /// Tells the ServiceActor, once, that this node does not lead `name`
    /// (another node holds it, or our own renewals keep failing).
    fn report_not_leading(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.reported || slot.leading {
            return;
        }
        slot.reported = true;
        self.leadership.do_send(Leadership {
            service: slot.service.clone(),
            held: false,
        });
    }

    fn set_leading(&mut self, name: &str, leading: bool, reason: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.reported = true;
        if slot.leading == leading {
            return;
        }
        slot.leading = leading;
        let service = slot.service.clone();
        if leading {
            let takeover = self.last_foreign_renewal.remove(name).map(|t| t.elapsed());
            info!(service = %service, lease = %name, "acquired lease, announcing");
            self.observer.acquired(&service, takeover);
            let held = self.held_count();
            if held > self.warned_at
                && let Some(qps) = self.client_qps
                && let Some(message) = sizing_warning(held, &self.timing, qps)
            {
                self.warned_at = held;
                warn!("{message}");
            }
        } else {
            info!(service = %service, lease = %name, reason, "lost lease, no longer announcing");
            self.observer.lost(&service, reason);
        }
        self.leadership.do_send(Leadership {
            service,
            held: leading,
        });
        self.observer.held(self.held_count());
    }

    /// Evaluates every election; sends the requests they decide on:
    /// renewals first, the one closest to its fence deadline first, then
    /// acquisitions, which wait while the client's token bucket runs low so
    /// that new work never starves a renewal.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let stamp = rfc3339_now();
        let synced = self.seen.complete();
        if self.poll {
            self.poll_leases(ctx, now);
        }
        // Leases held or being acquired: the stagger below counts both, so
        // that a node that starts first does not take every free lease.
        let mut held = self
            .slots
            .values()
            .filter(|s| s.leading || s.in_flight)
            .count();
        let mut renewals: Vec<(Instant, String, Decision)> = Vec::new();
        let mut acquisitions: Vec<(String, Decision)> = Vec::new();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            if slot.leading && !slot.election.is_leader(now) {
                // The fence has closed by itself at this very deadline;
                // close it in the maps too.
                drop(self.fences.close(&slot.service));
                self.set_leading(&name, false, "renew-deadline");
                continue;
            }
            if !slot.reported
                && now.saturating_duration_since(slot.created) >= self.timing.renew_deadline
            {
                self.report_not_leading(&name);
            }
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            if slot.in_flight || (!synced && slot.election.observed().is_none()) {
                continue;
            }
            let decision = slot.election.decide(now, &stamp);
            if matches!(decision, Decision::WaitUntil(_)) {
                continue;
            }
            // Balanced distribution: a node that already leads others waits
            // a little before taking a free lease, so the least loaded
            // candidate usually wins. Never more than one retry period.
            let acquiring = matches!(&decision, Decision::Update { record, .. }
                if slot.election.observed().is_some_and(|o| o.record.holder != self.me) && record.holder == self.me)
                || matches!(decision, Decision::Create(_));
            if !acquiring {
                let deadline = slot.election.fence_until().unwrap_or(now);
                renewals.push((deadline, name, decision));
                continue;
            }
            if held > 0 {
                let stagger = (self.timing.retry_period / 4)
                    .saturating_mul(u32::try_from(held).unwrap_or(u32::MAX))
                    .min(self.timing.retry_period);
                let free = slot.election.free_at().unwrap_or(now);
                if now < free + stagger {
                    continue;
                }
            }
            held += 1;
            acquisitions.push((name, decision));
        }
        renewals.sort_by_key(|(deadline, _, _)| *deadline);
        for (_, name, decision) in renewals {
            self.send_decision(ctx, name, decision, now);
        }
        for (name, decision) in acquisitions {
            // Half the burst stays for renewals (client-go, the
            // benchmark's baseline, has no such priority).
            if !self.poll
                && self
                    .budget
                    .as_ref()
                    .is_some_and(|b| b.available(now) < b.burst() / 2.0)
            {
                break;
            }
            self.send_decision(ctx, name, decision, now);
        }
    }

    fn send_decision(
        &mut self,
        ctx: &mut Context<Self>,
        name: String,
        decision: Decision,
        now: Instant,
    ) {
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        let (record, rv) = match decision {
            Decision::WaitUntil(_) => return,
            Decision::Create(record) => (record, None),
            Decision::Update {
                record,
                resource_version,
            } => (record, Some(resource_version)),
        };
        slot.in_flight = true;
        slot.election.attempted(now);
        self.send_write(ctx, name, record, rv, now);
    }

    /// client-go's way (benchmark baseline): every campaigned Lease is read
    /// every retry period instead of followed by a watch.
    fn poll_leases(&mut self, ctx: &mut Context<Self>, now: Instant) {
        let due: Vec<String> = self
            .slots
            .keys()
            .filter(|n| !self.polling.contains(*n))
            .filter(|n| {
                self.polled_at
                    .get(*n)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= self.timing.retry_period)
            })
            .cloned()
            .collect();
        for name in due {
            self.polling.insert(name.clone());
            self.polled_at.insert(name.clone(), now);
            let api = self.api.clone();
            let get = name.clone();
            ctx.spawn(async move { api.get_opt(&get).await }.into_actor(self).map(
                move |result, act, _| {
                    act.polling.remove(&name);
                    let now = Instant::now();
                    let seen = match result {
                        Ok(lease) => lease.as_ref().map(record_of),
                        Err(e) => {
                            debug!(lease = %name, error = %e, "polling lease");
                            return;
                        }
                    };
                    act.remember_polled(&name, seen.clone());
                    act.observe_as(&name, seen, now);
                },
            ));
        }
    }

    fn send_write(
        &self,
        ctx: &mut Context<Self>,
        name: String,
        record: LeaseRecord,
        resource_version: Option<String>,
        sent: Instant,
    ) {
        let api = self.api.clone();
        let lease = to_lease(&name, &record, resource_version.clone());
        let fut = async move {
            match resource_version {
                None => api.create(&PostParams::default(), &lease).await,
                Some(_) => {
                    api.replace(&lease.name_any(), &PostParams::default(), &lease)
                        .await
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, _ctx| {
            act.on_write(&name, result, sent);
        }));
    }

    fn on_write(&mut self, name: &str, result: Result<Lease, kube::Error>, sent: Instant) {
        let now = Instant::now();
        let me = self.me.clone();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.in_flight = false;
        match result {
            Ok(lease) => {
                let (record, rv) = record_of(&lease);
                let ours = record.holder == me;
                slot.election
                    .succeeded(record.clone(), rv.clone(), sent, now);
                let service = slot.service.clone();
                self.observer.renew(&service, now - sent, true);
                if ours {
                    if let Some(fence_until) = slot.election.fence_until() {
                        self.fences.open(&service, fence_until);
                    }
                    self.set_leading(name, true, "acquired");
                }
                // The answer is newer than what the store holds until the
                // watch brings this write.
                let seen = Some((record, rv));
                self.remember_polled(name, seen.clone());
                self.observe_as(name, seen, now);
            }
            Err(e) => {
                let service = slot.service.clone();
                let leading = slot.leading;
                if let kube::Error::Api(status) = &e {
                    match status.code {
                        404 => slot.election.observe_absent(now),
                        // A create refused: the Lease exists already.
                        409 if status.reason == "AlreadyExists" => slot.election.exists_unseen(),
                        _ => {}
                    }
                }
                if leading {
                    self.observer.renew(&service, now - sent, false);
                }
                debug!(service = %service, lease = %name, error = %e, "lease write refused");
            }
        }
    }

    /// Releases `name` if held: holder cleared, one-second duration.
    /// The write that releases `name`, when held. `over_own_renewal`: on
    /// shutdown only — a refusal caused by a renewal of this node that
    /// crossed it is retried ([`write_release`]), which is safe because no
    /// slot exists any more to open a fence again (and no campaign makes
    /// one). A withdrawn claim may be campaigned for again at once, and its
    /// new election renew: a refused release of it is left refused.
    fn release(
        &mut self,
        name: &str,
        over_own_renewal: bool,
    ) -> Option<impl Future<Output = ()> + use<>> {
        let slot = self.slots.get(name)?;
        let (record, rv) = slot.election.release_record(&rfc3339_now())?;
        let api = self.api.clone();
        let lease = to_lease(name, &record, Some(rv));
        let name = name.to_string();
        let me = self.me.clone();
        Some(async move {
            let ours = |current: &Lease| over_own_renewal && from_lease(current).holder == me;
            match write_release(&api, &name, lease, ours).await {
                Ok(true) => info!(lease = %name, "released lease"),
                Ok(false) => info!(lease = %name, "not released: the lease changed meanwhile"),
                Err(e) => warn!(lease = %name, error = %e, "releasing lease"),
            }
        })
    }

    /// Gives a claim up: closes its fence in the datapath, and once that is
    /// confirmed, writes the release (when held).
    fn withdraw(&mut self, ctx: &mut Context<Self>, name: &str) {
        self.set_leading(name, false, "withdrawn");
        let release = self.release(name, false);
        let Some(slot) = self.slots.remove(name) else {
            return;
        };
        self.delete_row(&slot.service);
        let closed = self.fences.close(&slot.service);
        let lease = name.to_string();
        ctx.spawn(
            async move {
                match closed.await {
                    Ok(()) => {
                        if let Some(release) = release {
                            release.await;
                        }
                    }
                    Err(e) => {
                        warn!(lease = %lease, error = %e, "not releasing: the lease expires by itself")
                    }
                }
            }
            .into_actor(self),
        );
    }

    /// client-go mode: keeps what a GET or a write answered for `name`.
    fn remember_polled(&mut self, name: &str, seen: Option<(LeaseRecord, String)>) {
        if let Seen::Polled(polled) = &mut self.seen {
            match seen {
                Some(s) => polled.insert(name.to_string(), s),
                None => polled.remove(name),
            };
        }
    }

    /// Deletes leases of ours that have no holder and were not changed for
    /// a whole GC interval. The resourceVersion precondition keeps a lease
    /// that someone claimed in the meantime. Only the watch shows such
    /// leases (client-go mode reads only the leases it campaigns for).
    fn collect_garbage(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let Seen::Watched { store, .. } = &self.seen else {
            return;
        };
        for lease in store.state() {
            let name = lease.name_any();
            let (record, rv) = record_of(&lease);
            if !name.starts_with(LEASE_PREFIX) || !record.holder.is_empty() {
                continue;
            }
            if self.slots.contains_key(&name) {
                continue;
            }
            let unchanged_for = self
                .changed_at
                .get(&name)
                .map(|t| now.saturating_duration_since(*t))
                .unwrap_or_default();
            if unchanged_for < self.gc_interval {
                continue;
            }
            let api = self.api.clone();
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(rv),
                    uid: None,
                }),
                ..Default::default()
            };
            ctx.spawn(
                async move {
                    match api.delete(&name, &dp).await {
                        Ok(_) => info!(lease = %name, "deleted stale lease"),
                        Err(e) => debug!(lease = %name, error = %e, "stale lease kept"),
                    }
                }
                .into_actor(self),
            );
        }
    }
}

/// The election fields of a Lease and its resourceVersion.
fn record_of(lease: &Lease) -> (LeaseRecord, String) {
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    (from_lease(lease), rv)
}

fn rfc3339_now() -> String {
    Timestamp::now().to_string()
}

fn parse_micro(s: &Option<String>) -> Option<MicroTime> {
    s.as_ref()
        .and_then(|s| s.parse::<Timestamp>().ok())
        .map(MicroTime)
}

/// Builds the Lease object for a record.
pub fn to_lease(name: &str, record: &LeaseRecord, resource_version: Option<String>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version,
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(record.holder.clone()),
            lease_duration_seconds: Some(record.lease_duration_seconds),
            acquire_time: parse_micro(&record.acquire_time),
            renew_time: parse_micro(&record.renew_time),
            lease_transitions: Some(record.transitions),
            ..Default::default()
        }),
    }
}

/// Reads the election fields of a Lease.
pub fn from_lease(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity.unwrap_or_default(),
        lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
        acquire_time: spec.acquire_time.map(|t| t.0.to_string()),
        renew_time: spec.renew_time.map(|t| t.0.to_string()),
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

fn lease_row(service: &str, name: &str, me: &str, record: Option<&LeaseRecord>) -> LeaseRow {
    let r = record.cloned().unwrap_or_default();
    LeaseRow {
        service: service.to_string(),
        lease: name.to_string(),
        me: !r.holder.is_empty() && r.holder == me,
        holder: r.holder,
        acquired: r.acquire_time.unwrap_or_default(),
        renewed: r.renew_time.unwrap_or_default(),
        transitions: r.transitions,
    }
}

/// The lease name of a `namespace/name` Service key.
pub fn lease_for_service(service: &str) -> String {
    let (ns, name) = service.split_once('/').unwrap_or(("", service));
    lease_name(ns, name)
}

impl Actor for LeaseActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Seen::Watched { writer, .. } = &mut self.seen
            && let Some(writer) = writer.take()
        {
            ctx.add_stream(reflected(self.api.clone(), writer));
        }
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
        ctx.run_interval(self.gc_interval, |act, ctx| act.collect_garbage(ctx));
    }
}

/// Watch events, each already applied to the store.
impl StreamHandler<Result<watcher::Event<Lease>, watcher::Error>> for LeaseActor {
    fn handle(
        &mut self,
        event: Result<watcher::Event<Lease>, watcher::Error>,
        _ctx: &mut Context<Self>,
    ) {
        let now = Instant::now();
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "lease watch failed; retrying with backoff");
                return;
            }
        };
        match event {
            watcher::Event::Init => {}
            // The store takes a (re)list in whole at InitDone.
            watcher::Event::InitApply(lease) => {
                self.changed_at.insert(lease.name_any(), now);
            }
            watcher::Event::Apply(lease) => {
                let name = lease.name_any();
                self.changed_at.insert(name.clone(), now);
                self.observe(&name, now);
            }
            watcher::Event::Delete(lease) => {
                let name = lease.name_any();
                self.changed_at.remove(&name);
                self.observe(&name, now);
            }
            watcher::Event::InitDone => {
                let Seen::Watched { store, .. } = &self.seen else {
                    return;
                };
                let listed: BTreeSet<String> = store.state().iter().map(|l| l.name_any()).collect();
                self.changed_at.retain(|name, _| listed.contains(name));
                for name in self.slots.keys().cloned().collect::<Vec<_>>() {
                    self.observe(&name, now);
                }
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // The watcher retries forever; it ends only with the actor.
    }
}

impl Handler<Campaign> for LeaseActor {
    type Result = ();
    fn handle(&mut self, msg: Campaign, _ctx: &mut Context<Self>) {
        let name = lease_for_service(&msg.service);
        if self.stopping || self.slots.contains_key(&name) {
            return;
        }
        debug!(service = %msg.service, lease = %name, "campaigning");
        self.slots.insert(
            name.clone(),
            Slot {
                service: msg.service,
                election: Election::new(self.me.clone(), self.timing),
                in_flight: false,
                leading: false,
                reported: false,
                created: Instant::now(),
            },
        );
        self.observe(&name, Instant::now());
    }
}

impl Handler<CandidaciesSynced> for LeaseActor {
    type Result = ();
    fn handle(&mut self, _: CandidaciesSynced, _ctx: &mut Context<Self>) {}
}

impl Handler<Withdraw> for LeaseActor {
    type Result = ();
    fn handle(&mut self, msg: Withdraw, ctx: &mut Context<Self>) {
        let name = lease_for_service(&msg.service);
        debug!(service = %msg.service, lease = %name, "withdrawing");
        self.withdraw(ctx, &name);
    }
}

impl Handler<ReleaseAll> for LeaseActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: ReleaseAll, _ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let names: Vec<String> = self.slots.keys().cloned().collect();
        let mut releases = Vec::new();
        for name in &names {
            self.set_leading(name, false, "shutdown");
            if let Some(fut) = self.release(name, true) {
                releases.push(fut);
            }
        }
        self.slots.clear();
        // Fences first: no lease is released while its entries may answer.
        let closed = self.fences.close_all();
        let all = async move {
            match closed.await {
                Ok(()) => {
                    futures::future::join_all(releases).await;
                }
                Err(e) => warn!(error = %e, "not releasing the leases: they expire by themselves"),
            }
        };
        Box::pin(all.into_actor(self))
    }
}

/// Per-service mode has no heartbeat to say it in.
impl Handler<NodeSelected> for LeaseActor {
    type Result = ();
    fn handle(&mut self, _: NodeSelected, _ctx: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(retry_ms: u64) -> LeaseTiming {
        LeaseTiming {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn renewals_per_second_follow_the_retry_period() {
        assert_eq!(renewal_rate(0, &timing(200)), 0.0);
        assert_eq!(renewal_rate(1, &timing(200)), 5.0);
        assert_eq!(renewal_rate(13, &timing(2000)), 6.5);
    }

    #[test]
    fn warns_only_when_renewals_exceed_the_rate_limit() {
        assert_eq!(sizing_warning(1, &timing(200), 5.0), None);
        let w = sizing_warning(2, &timing(200), 5.0).expect("2 leases at 200ms need 10/s");
        assert!(w.contains("need 10.0 requests/s"), "{w}");
        assert!(w.contains("--k8s-client-qps 5"), "{w}");
        assert!(w.contains("at least 10"), "{w}");
        assert_eq!(sizing_warning(10, &timing(2000), 5.0), None);
        assert!(sizing_warning(11, &timing(2000), 5.0).is_some());
    }
}
