//! HeartbeatActor: the actix shell of the node-heartbeat election. It
//! watches the heartbeat Leases and the record's ConfigMaps in the agent
//! namespace, feeds them and the clock to the [`HeartbeatCore`], and
//! carries out what the core decides, in order: requests with
//! resourceVersion preconditions, fence commands to the announcer (a claim
//! released only once the datapath confirmed its fence closed), leadership
//! to the ServiceActor. It also keeps the per-Service Leases as a lazy
//! mirror of the record ([`super::mirror`]) and the `leases` table.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use super::core::{Action, CoreConfig, Heartbeat, HeartbeatCore, SHARDS, Shard};
use super::mirror::Mirror;
use crate::announce::Fences;
use crate::lease::{LeaseObserver, LeaseTiming, lease_for_service, write_release};
use crate::messages::{
    Campaign, CandidaciesSynced, Leadership, NodeSelected, ReleaseAll, Withdraw,
};
use crate::tables::{LEASES, LeaseRow};

/// Annotation on a heartbeat whose node is a candidate for no claim
/// (`"false"`): the others do not wait for its bids.
pub const CANDIDATE: &str = "l2announcer.io/candidate";
/// Prefix of the heartbeat Leases: `l2announcer-node-<node>`.
pub const HEARTBEAT_PREFIX: &str = "l2announcer-node-";
/// Label marking heartbeat Leases (the watch selects on it).
pub const HEARTBEAT_LABEL: &str = "l2announcer.io/heartbeat";
/// Annotation naming the node that evicted a heartbeat.
pub const EVICTED_BY: &str = "l2announcer.io/evicted-by";
/// Prefix of the record's ConfigMaps: `l2announcer-assignments-<shard>`.
pub const RECORD_PREFIX: &str = "l2announcer-assignments-";
/// Label marking the record's ConfigMaps.
pub const RECORD_LABEL: &str = "l2announcer.io/assignments";
/// The ConfigMap key holding a shard (JSON: claim -> {n: node, e: epoch}).
pub const RECORD_KEY: &str = "assignments";

/// How often the core is evaluated.
const TICK: Duration = Duration::from_millis(10);
/// How often the `leases` table is brought up to date at most.
const ROWS_INTERVAL: Duration = Duration::from_secs(1);

/// What a HeartbeatActor is configured with.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub namespace: String,
    pub me: String,
    pub timing: LeaseTiming,
    /// The client's rate limit: mirror Lease writes use a small share.
    pub client_qps: f64,
}

/// The actor. Build with [`HeartbeatActor::new`], then `start()`.
pub struct HeartbeatActor {
    leases: Api<Lease>,
    configmaps: Api<ConfigMap>,
    config: HeartbeatConfig,
    core: HeartbeatCore,
    leadership: Recipient<Leadership>,
    fences: Fences,
    observer: Arc<dyn LeaseObserver>,
    mirror: Mirror,
    db: statedb::Db,
    table: statedb::Table<LeaseRow>,
    /// The `leases` rows last written, by key: a digest of what each was
    /// made from, and the pass of [`Self::write_rows`] that last saw it. At
    /// thousands of claims a copy of the rows (or rebuilding them all every
    /// second) cost more than the table itself.
    rows: HashMap<String, (u64, u64)>,
    rows_pass: u64,
    rows_written: Option<Instant>,
    stopping: bool,
    /// Whether the node fence was open at the last tick (to say when it
    /// lapses).
    was_joined: bool,
}

fn rfc3339_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// The protocol's view of a heartbeat Lease.
pub fn heartbeat_of(lease: &Lease) -> Heartbeat {
    let spec = lease.spec.clone().unwrap_or_default();
    Heartbeat {
        holder: spec.holder_identity.unwrap_or_default(),
        epoch: u32::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0),
        evicted_by: lease.annotations().get(EVICTED_BY).cloned(),
    }
}

/// The shard number of a record ConfigMap's name.
fn shard_number(name: &str) -> Option<u32> {
    name.strip_prefix(RECORD_PREFIX)?
        .parse()
        .ok()
        .filter(|s| *s < SHARDS)
}

/// A record shard as its ConfigMap holds it (unreadable: empty, with a
/// warning — a shard nobody can read is rewritten by the next writer).
pub fn shard_of_configmap(cm: &ConfigMap) -> Shard {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(RECORD_KEY)) else {
        return Shard::new();
    };
    serde_json::from_str(text).unwrap_or_else(|e| {
        warn!(configmap = %cm.name_any(), error = %e, "unreadable assignment record shard");
        Shard::new()
    })
}

impl HeartbeatActor {
    pub fn new(
        client: kube::Client,
        db: statedb::Db,
        config: HeartbeatConfig,
        leadership: Recipient<Leadership>,
        fences: Fences,
        observer: Arc<dyn LeaseObserver>,
    ) -> Result<Self, statedb::Error> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
        let mirror = Mirror::new(leases.clone(), &config.me, config.timing, config.client_qps);
        Ok(HeartbeatActor {
            configmaps: Api::namespaced(client, &config.namespace),
            leases,
            core: HeartbeatCore::new(config.me.clone(), CoreConfig::new(config.timing)),
            config,
            leadership,
            fences,
            observer,
            mirror,
            table: statedb::Table::open(&db, LEASES)?,
            db,
            rows: HashMap::new(),
            rows_pass: 0,
            rows_written: None,
            stopping: false,
            was_joined: false,
        })
    }

    fn heartbeat_lease(&self, name: &str, hb: &Heartbeat, rv: Option<String>) -> Lease {
        let mut annotations = BTreeMap::new();
        if let Some(by) = &hb.evicted_by {
            annotations.insert(EVICTED_BY.to_string(), by.clone());
        }
        if hb.member(&self.config.me) && self.core.idle_here() {
            annotations.insert(CANDIDATE.to_string(), "false".to_string());
        }
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                resource_version: rv,
                labels: Some([(HEARTBEAT_LABEL.to_string(), "true".to_string())].into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(hb.holder.clone()),
                lease_duration_seconds: Some(self.config.timing.duration_seconds()),
                renew_time: Some(rfc3339_now()),
                lease_transitions: Some(i32::try_from(hb.epoch).unwrap_or(i32::MAX)),
                ..Default::default()
            }),
        }
    }

    /// Carries out the core's actions in order.
    fn execute(&mut self, ctx: &mut Context<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::WriteHeartbeat { rv, heartbeat } => {
                    self.write_heartbeat(ctx, rv, heartbeat)
                }
                Action::Evict {
                    node,
                    rv,
                    heartbeat,
                } => self.evict(ctx, node, rv, heartbeat),
                Action::WriteShard {
                    shard,
                    rv,
                    assignments,
                    taken,
                } => self.write_shard(ctx, shard, rv, assignments, taken),
                Action::OpenClaim(claim) => self.fences.open_until_closed(&claim),
                Action::CloseClaim { claim, release } => {
                    let closed = self.fences.close(&claim);
                    if release {
                        ctx.spawn(closed.into_actor(self).map(
                            move |result, act, _| match result {
                                Ok(()) => act.core.claim_closed(&claim),
                                Err(e) => {
                                    warn!(claim = %claim, error = %e, "not releasing");
                                    act.core.claim_close_failed(&claim);
                                }
                            },
                        ));
                    }
                }
                Action::NodeFence(until) => self.fences.node_fence(until),
                Action::Leadership { claim, held } => {
                    if held {
                        info!(claim = %claim, "holding claim, announcing");
                        self.mirror.held(&claim);
                    } else {
                        info!(claim = %claim, "no longer holding claim");
                        self.observer.lost(&claim, "released");
                    }
                    self.leadership.do_send(Leadership {
                        service: claim,
                        held,
                    });
                    self.observer.held(self.core.held().len());
                }
            }
        }
    }

    fn write_heartbeat(&mut self, ctx: &mut Context<Self>, rv: Option<String>, hb: Heartbeat) {
        let name = format!("{HEARTBEAT_PREFIX}{}", self.config.me);
        let lease = self.heartbeat_lease(&name, &hb, rv.clone());
        let api = self.leases.clone();
        let sent = Instant::now();
        let fut = async move {
            match rv {
                None => api.create(&PostParams::default(), &lease).await,
                Some(_) => api.replace(&name, &PostParams::default(), &lease).await,
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let now = Instant::now();
            let ok = result.is_ok();
            act.observer.heartbeat(now - sent, ok);
            debug!(
                ok,
                took_ms = (now - sent).as_millis() as u64,
                "heartbeat written"
            );
            let seen = match result {
                Ok(lease) => Some((
                    heartbeat_of(&lease),
                    lease.resource_version().unwrap_or_default(),
                )),
                Err(e) => {
                    debug!(error = %e, "heartbeat write refused");
                    None
                }
            };
            let actions = act.core.heartbeat_written(seen, sent, now);
            act.execute(ctx, actions);
        }));
    }

    fn evict(&mut self, ctx: &mut Context<Self>, node: String, rv: String, hb: Heartbeat) {
        let name = format!("{HEARTBEAT_PREFIX}{node}");
        let lease = self.heartbeat_lease(&name, &hb, Some(rv));
        let api = self.leases.clone();
        let fut = async move { api.replace(&name, &PostParams::default(), &lease).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, _| {
            let seen = match result {
                Ok(lease) => {
                    info!(node = %node, "evicted a node that stopped renewing its heartbeat");
                    act.observer.eviction(true);
                    Some((
                        heartbeat_of(&lease),
                        lease.resource_version().unwrap_or_default(),
                    ))
                }
                Err(e) => {
                    debug!(node = %node, error = %e, "eviction refused: the node renewed");
                    None
                }
            };
            act.core.eviction_done(&node, seen, Instant::now());
        }));
    }

    fn write_shard(
        &mut self,
        ctx: &mut Context<Self>,
        shard: u32,
        rv: Option<String>,
        assignments: Shard,
        taken: Vec<(String, super::core::TakeReason)>,
    ) {
        let name = format!("{RECORD_PREFIX}{shard}");
        let text = match serde_json::to_string(&assignments) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "encoding a record shard");
                return;
            }
        };
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                resource_version: rv.clone(),
                labels: Some([(RECORD_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            data: Some([(RECORD_KEY.to_string(), text)].into()),
            ..Default::default()
        };
        let api = self.configmaps.clone();
        let create = rv.is_none();
        let fut = async move {
            if create {
                api.create(&PostParams::default(), &cm).await
            } else {
                api.replace(&name, &PostParams::default(), &cm).await
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let now = Instant::now();
            let seen = match result {
                Ok(cm) => {
                    debug!(shard, taken = taken.len(), "record written");
                    for (claim, reason) in &taken {
                        let takeover = match reason {
                            super::core::TakeReason::Takeover { last_renewal } => {
                                last_renewal.map(|t| now.saturating_duration_since(t))
                            }
                            _ => None,
                        };
                        act.observer.acquired(claim, takeover);
                        act.observer.claim_taken(claim, reason.as_str());
                    }
                    Some((
                        shard_of_configmap(&cm),
                        cm.resource_version().unwrap_or_default(),
                    ))
                }
                Err(e) => {
                    debug!(shard, error = %e, "record write refused");
                    None
                }
            };
            let actions = act.core.shard_written(shard, rv, seen, now);
            act.execute(ctx, actions);
        }));
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        let actions = self.core.tick(now);
        self.execute(ctx, actions);
        let joined = self.core.joined(now);
        if self.was_joined && !joined {
            warn!(
                renew_deadline = ?self.config.timing.renew_deadline,
                "heartbeat not renewed within the renew deadline: this node answers nothing until it is"
            );
        }
        self.was_joined = joined;
        if let Some(write) = self.mirror.next(now) {
            let (claim, op, future) = write.into_parts();
            ctx.spawn(
                future
                    .into_actor(self)
                    .map(move |result, act, _| act.mirror.done(claim, op, result)),
            );
        }
        if self
            .rows_written
            .is_none_or(|t| now.saturating_duration_since(t) >= ROWS_INTERVAL)
        {
            self.rows_written = Some(now);
            self.write_rows(now);
            // Mirrors naming this node for claims the record gives others.
            let epoch = self.core.epoch();
            let gone: Vec<String> = self
                .mirror
                .written()
                .filter(|c| {
                    self.core
                        .assignment(c)
                        .is_none_or(|a| a.node != self.config.me || Some(a.epoch) != epoch)
                })
                .map(str::to_string)
                .collect();
            for c in gone {
                self.mirror.released(&c);
            }
            self.observer.mirror_pending(self.mirror.pending());
        }
    }

    /// The `leases` table: one row per claim in the record (holder, epoch)
    /// and one per heartbeat (`node:<name>`, holder, live or evicted).
    /// Writes only the rows whose inputs changed since the last call, and
    /// allocates only for those.
    fn write_rows(&mut self, now: Instant) {
        let me = &self.config.me;
        let epoch = self.core.epoch();
        let joined = self.core.joined(now);
        self.rows_pass += 1;
        let pass = self.rows_pass;
        let mut changed: Vec<LeaseRow> = Vec::new();
        // Marks `key` seen with `digest`; whether it differs from the last.
        let seen = |rows: &mut HashMap<String, (u64, u64)>, key: &str, digest: u64| match rows
            .get_mut(key)
        {
            Some(r) => {
                r.1 = pass;
                std::mem::replace(&mut r.0, digest) != digest
            }
            None => {
                rows.insert(key.to_string(), (digest, pass));
                true
            }
        };
        for (claim, a) in self.core.assignments() {
            let mine = a.node == *me && Some(a.epoch) == epoch && joined;
            if seen(
                &mut self.rows,
                claim,
                digest(&(claim, &a.node, mine, a.epoch)),
            ) {
                changed.push(LeaseRow {
                    service: claim.to_string(),
                    lease: lease_for_service(claim),
                    holder: a.node.clone(),
                    me: mine,
                    acquired: String::new(),
                    renewed: String::new(),
                    transitions: i32::try_from(a.epoch).unwrap_or(i32::MAX),
                });
            }
        }
        for (node, hb, _) in self.core.heartbeats() {
            let key = format!("node:{node}");
            let state = match &hb.evicted_by {
                Some(by) => format!("evicted by {by}"),
                None if hb.holder.is_empty() => "released".to_string(),
                None => "member".to_string(),
            };
            let mine = node == me && joined;
            let d = digest(&(&key, &hb.holder, &state, mine, hb.epoch));
            if seen(&mut self.rows, &key, d) {
                changed.push(LeaseRow {
                    service: key,
                    lease: format!("{HEARTBEAT_PREFIX}{node}"),
                    holder: hb.holder.clone(),
                    me: mine,
                    acquired: String::new(),
                    renewed: state,
                    transitions: i32::try_from(hb.epoch).unwrap_or(i32::MAX),
                });
            }
        }
        let gone: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, (_, p))| *p != pass)
            .map(|(k, _)| k.clone())
            .collect();
        if changed.is_empty() && gone.is_empty() {
            return;
        }
        // Rows are independent: committed a few hundred at a time, which
        // keeps sled's memory down when thousands change at once.
        let mut txn = self.db.write_txn();
        let mut result = Ok(());
        for k in &gone {
            if let Err(e) = self.table.delete_key(&mut txn, k) {
                warn!(error = %e, "deleting from leases table");
            }
            self.rows.remove(k);
            result = result.and(txn.checkpoint_when_full().map(drop));
        }
        for row in changed {
            if let Err(e) = self.table.insert(&mut txn, row) {
                warn!(error = %e, "writing leases table");
            }
            result = result.and(txn.checkpoint_when_full().map(drop));
        }
        if let Err(e) = result.and(txn.commit()) {
            warn!(error = %e, "committing leases table");
            // Some steps may not be written: the next pass writes again
            // every row the table holds (a digest that matches nothing)
            // and deletes those it no longer has.
            self.rows = match self.table.list(&self.db) {
                Ok(rows) => rows.into_iter().map(|e| (e.row.service, (0, 0))).collect(),
                Err(_) => HashMap::new(),
            };
        }
    }
}

/// A digest of what a `leases` row is made from.
fn digest(inputs: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    inputs.hash(&mut h);
    h.finish()
}

impl Actor for HeartbeatActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The tables of an earlier run describe that run's view.
        let mut txn = self.db.write_txn();
        if let Ok(rows) = self.table.list(&txn) {
            for e in rows {
                let _ = self.table.delete(&mut txn, &e.row);
            }
        }
        let _ = txn.commit();
        let heartbeats = watcher(
            self.leases.clone(),
            watcher::Config::default().labels(HEARTBEAT_LABEL),
        )
        .default_backoff()
        .map(HeartbeatEvent);
        ctx.add_stream(heartbeats);
        let record = watcher(
            self.configmaps.clone(),
            watcher::Config::default().labels(RECORD_LABEL),
        )
        .default_backoff()
        .map(RecordEvent);
        ctx.add_stream(record);
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}

use futures::StreamExt as _;

struct HeartbeatEvent(Result<watcher::Event<Lease>, watcher::Error>);
struct RecordEvent(Result<watcher::Event<ConfigMap>, watcher::Error>);

impl StreamHandler<HeartbeatEvent> for HeartbeatActor {
    fn handle(&mut self, HeartbeatEvent(event): HeartbeatEvent, _ctx: &mut Context<Self>) {
        let now = Instant::now();
        let node_of = |l: &Lease| {
            l.name_any()
                .strip_prefix(HEARTBEAT_PREFIX)
                .map(str::to_string)
        };
        match event {
            Err(e) => warn!(error = %e, "heartbeat watch failed; retrying with backoff"),
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => self.core.heartbeats_synced(),
            Ok(watcher::Event::InitApply(lease) | watcher::Event::Apply(lease)) => {
                let Some(node) = node_of(&lease) else {
                    return;
                };
                let hb = heartbeat_of(&lease);
                self.core.set_idle(
                    &node,
                    lease.annotations().get(CANDIDATE).map(String::as_str) == Some("false"),
                );
                if let Some(by) = &hb.evicted_by
                    && *by != self.config.me
                    && self
                        .core
                        .heartbeats()
                        .any(|(n, old, _)| n == node && old.evicted_by.is_none())
                {
                    info!(node = %node, evicted_by = %by, "node evicted");
                    self.observer.eviction(false);
                }
                self.core.observe_heartbeat(
                    &node,
                    Some((hb, lease.resource_version().unwrap_or_default())),
                    now,
                );
            }
            Ok(watcher::Event::Delete(lease)) => {
                if let Some(node) = node_of(&lease) {
                    self.core.observe_heartbeat(&node, None, now);
                }
            }
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<RecordEvent> for HeartbeatActor {
    fn handle(&mut self, RecordEvent(event): RecordEvent, _ctx: &mut Context<Self>) {
        let now = Instant::now();
        match event {
            Err(e) => warn!(error = %e, "record watch failed; retrying with backoff"),
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => self.core.shards_synced(),
            Ok(watcher::Event::InitApply(cm) | watcher::Event::Apply(cm)) => {
                if let Some(shard) = shard_number(&cm.name_any()) {
                    let rv = cm.resource_version().unwrap_or_default();
                    self.core
                        .observe_shard(shard, Some((shard_of_configmap(&cm), rv)), now);
                }
            }
            Ok(watcher::Event::Delete(cm)) => {
                if let Some(shard) = shard_number(&cm.name_any()) {
                    self.core.observe_shard(shard, None, now);
                }
            }
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<Campaign> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, msg: Campaign, _ctx: &mut Context<Self>) {
        self.core.campaign(&msg.service, msg.members);
        tracing::trace!(claim = %msg.service, "campaigning");
    }
}

impl Handler<Withdraw> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, msg: Withdraw, ctx: &mut Context<Self>) {
        // Stopping: everything is released already, and no tick runs.
        if self.stopping {
            return;
        }
        self.core.withdraw(&msg.service);
        // Close and release at once rather than at the next tick.
        let actions = self.core.tick(Instant::now());
        self.execute(ctx, actions);
    }
}

impl Handler<NodeSelected> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, msg: NodeSelected, _ctx: &mut Context<Self>) {
        self.core.set_selected_here(msg.0);
    }
}

impl Handler<CandidaciesSynced> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, _: CandidaciesSynced, _ctx: &mut Context<Self>) {
        self.core.eligibility_synced();
    }
}

impl Handler<ReleaseAll> for HeartbeatActor {
    type Result = ResponseActFuture<Self, ()>;
    /// Shutdown: every fence closed, then the heartbeat written as released
    /// (one write): every claim of this node is free at once.
    fn handle(&mut self, _: ReleaseAll, _ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        for claim in self.core.held().clone() {
            self.leadership.do_send(Leadership {
                service: claim,
                held: false,
            });
        }
        let closed = self.fences.close_all();
        let release = self.core.release_all();
        let api = self.leases.clone();
        let name = format!("{HEARTBEAT_PREFIX}{}", self.config.me);
        let lease = release.map(|(rv, hb)| self.heartbeat_lease(&name, &hb, Some(rv)));
        let me = self.config.me.clone();
        Box::pin(
            async move {
                if let Err(e) = closed.await {
                    warn!(error = %e, "not releasing: the heartbeat expires by itself");
                    return;
                }
                if let Some(lease) = lease {
                    release_heartbeat(&api, &name, lease, &me).await;
                }
            }
            .into_actor(self),
        )
    }
}

/// Writes the released heartbeat (see [`crate::lease::write_release`]):
/// retried while the heartbeat read again is still this node's live one
/// of that epoch — anything else (evicted, already released, a later
/// epoch) is left as it is, the fences being closed.
pub async fn release_heartbeat(api: &Api<Lease>, name: &str, lease: Lease, me: &str) {
    let epoch = heartbeat_of(&lease).epoch;
    let ours = |current: &Lease| {
        let seen = heartbeat_of(current);
        seen.member(me) && seen.epoch == epoch
    };
    match write_release(api, name, lease, ours).await {
        Ok(true) => info!("released every claim"),
        Ok(false) => info!("the heartbeat was no longer this node's to release"),
        Err(e) => warn!(error = %e, "releasing the heartbeat; it expires by itself"),
    }
}
