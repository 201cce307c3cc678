//! [`HeartbeatCore`]: one node's side of the `node-heartbeat` election, as
//! plain code. It is fed what the watches and the write answers show and
//! the local clock, and answers with [`Action`]s (requests to send, fence
//! commands, leadership changes) in the order they must happen. The actor
//! ([`super::HeartbeatActor`]) only executes them; the model test
//! (`model_tests.rs`) runs many cores against a simulated API server.
//!
//! The protocol (DESIGN.md, "Elections"):
//! * Every node renews its heartbeat every retry period; that is the only
//!   periodic write. A successful renewal sent at `t` keeps the node's
//!   fence open until `t + renew deadline`.
//! * The assignment record (a few shards; a claim always lives in the same
//!   shard) maps each claim to `(node, epoch)`. A node answers a claim only
//!   while the record it has seen gives it to its current epoch, it is
//!   eligible, and its fence is open.
//! * A claim leaves a node only by the node's own release (claim fence
//!   closed first, then the record written) or by eviction: an observer
//!   that saw the node's heartbeat unchanged for a whole lease duration
//!   writes it evicted with the observed resourceVersion as precondition;
//!   success proves the node has not renewed since, so its fence is closed.
//!   Assignments to an evicted node (or to an older epoch of a node) are
//!   free to take.
//! * A node that comes back after an eviction joins again under a new
//!   epoch and holds nothing of the old one.
//! * Free claims go to the rendezvous winner among the live nodes that are
//!   eligible: every eligible node bids, later the lower it ranks, so the
//!   highest-ranked eligible node bids first. Bids, releases and hand-overs
//!   of one shard are written together, with resourceVersion
//!   preconditions: at most one assignment per claim ever exists.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::rendezvous;
use crate::lease::LeaseTiming;

/// Number of record shards. Fixed: every node must put a claim in the
/// same shard.
pub const SHARDS: u32 = 4;

/// A node's heartbeat as the protocol reads it (the Lease's holder,
/// `leaseTransitions` as the epoch, and the eviction mark).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// The node itself while it is a member; empty once evicted or gone.
    pub holder: String,
    pub epoch: u32,
    /// The node that evicted it, if any.
    pub evicted_by: Option<String>,
}

impl Heartbeat {
    /// Whether the heartbeat says `node` is a member (which says nothing
    /// about whether it still renews).
    pub fn member(&self, node: &str) -> bool {
        self.holder == node && self.evicted_by.is_none()
    }
}

/// Who a claim is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Assignment {
    #[serde(rename = "n")]
    pub node: String,
    #[serde(rename = "e")]
    pub epoch: u32,
}

/// One shard of the record: claim -> assignment.
pub type Shard = BTreeMap<String, Assignment>;

/// The shard a claim lives in.
pub fn shard_of(claim: &str) -> u32 {
    u32::try_from(rendezvous::stable_hash(claim.as_bytes()) % u64::from(SHARDS)).unwrap_or(0)
}

/// Why a node took a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeReason {
    /// Never assigned before, as far as this node saw.
    New,
    /// Assigned to a node that was evicted or joined again since; when
    /// this node last saw that node renew, if it did.
    Takeover { last_renewal: Option<Instant> },
    /// Released by its previous holder.
    HandOff,
}

impl TakeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TakeReason::New => "new",
            TakeReason::Takeover { .. } => "takeover",
            TakeReason::HandOff => "hand-off",
        }
    }
}

/// What the core asks for, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create (`rv: None`) or update this node's heartbeat.
    WriteHeartbeat {
        rv: Option<String>,
        heartbeat: Heartbeat,
    },
    /// Mark `node`'s heartbeat evicted, if it is still at `rv`.
    Evict {
        node: String,
        rv: String,
        heartbeat: Heartbeat,
    },
    /// Create (`rv: None`) or update a record shard to `assignments`;
    /// `taken` are the claims this write gives to this node.
    WriteShard {
        shard: u32,
        rv: Option<String>,
        assignments: Shard,
        taken: Vec<(String, TakeReason)>,
    },
    /// Open a claim's fence in the datapath (its entries may answer while
    /// the node fence is open).
    OpenClaim(String),
    /// Close a claim's fence; with `release`, tell the core once the
    /// datapath confirmed it ([`HeartbeatCore::claim_closed`]), so that the
    /// release is written only then.
    CloseClaim { claim: String, release: bool },
    /// Extend the node fence until this instant.
    NodeFence(Instant),
    /// Leadership of a claim began or ended (for the ServiceActor).
    Leadership { claim: String, held: bool },
}

/// What a watch or a write answer showed of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen<T> {
    value: T,
    rv: String,
    /// Local time the object was first seen at this resourceVersion.
    since: Instant,
}

/// Whether resourceVersion `a` is older than `b` (numeric when both are,
/// as every Kubernetes API server writes them; otherwise unknown: no).
fn older(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// Tunables of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    pub timing: LeaseTiming,
    /// Delay per rank between the evictors of one node.
    pub rank_step: Duration,
    /// Delay per rank between the bids of the nodes for a new claim: a
    /// retry period after this node saw it free and after its shard last
    /// changed, so that the winner still bids first when it sees a
    /// thousand new Services later than another node does, or loses a
    /// few write races while the other writes its own (a lease duration
    /// per rank at most). Claims handed off or taken over use `rank_step`
    /// (the waiting nodes saw the same record change).
    pub bid_step: Duration,
    /// How long pending record changes of a shard wait for more to join
    /// the same write.
    pub batch_delay: Duration,
}

impl CoreConfig {
    pub fn new(timing: LeaseTiming) -> Self {
        CoreConfig {
            timing,
            rank_step: Duration::from_millis(20),
            bid_step: timing.retry_period.max(Duration::from_millis(20)),
            batch_delay: Duration::from_millis(20),
        }
    }
}

/// One node's election state. See the module documentation.
#[derive(Debug)]
pub struct HeartbeatCore {
    me: String,
    config: CoreConfig,
    /// Whether the initial lists of heartbeats and of shards arrived.
    heartbeats_synced: bool,
    shards_synced: bool,
    heartbeats: BTreeMap<String, Seen<Heartbeat>>,
    shards: BTreeMap<u32, Seen<Shard>>,
    /// The epoch this process's last successful heartbeat write carried.
    epoch: Option<u32>,
    /// When the last successful heartbeat write was sent.
    renewed_sent: Option<Instant>,
    /// When this process joined (its first successful heartbeat write
    /// under its epoch was answered): new claims wait a `bid_step` after
    /// it, so that the heartbeats of nodes starting at the same time are
    /// seen before the ranks are (the first node up would take them all).
    joined_at: Option<Instant>,
    heartbeat_in_flight: bool,
    /// [`Self::release_all`] ran: nothing is held or campaigned for again.
    stopped: bool,
    heartbeat_attempt: Option<Instant>,
    evicting: BTreeSet<String>,
    /// Shards with a write in flight.
    writing: BTreeSet<u32>,
    /// Shards whose last write was refused or failed at this
    /// resourceVersion: wait for a newer one, or a retry period at most
    /// (a failed request may have changed nothing).
    refused: BTreeMap<u32, (String, Instant)>,
    /// Claims this node is eligible for (campaigns for), with their member
    /// Services.
    eligible: BTreeMap<String, Vec<String>>,
    /// Whether the ServiceActor reported its first full evaluation: until
    /// then a claim assigned here but not (yet) eligible is not released
    /// (a restarted agent would otherwise give everything away).
    eligibility_synced: bool,
    /// Claims free to take, since when this node saw them so.
    free_since: BTreeMap<String, Instant>,
    /// Claims seen assigned at some point (to tell new from hand-off).
    seen_assigned: BTreeSet<String>,
    /// Claims whose fences are open (reported held).
    held: BTreeSet<String>,
    /// Claims being released: fence close requested, not yet confirmed.
    closing: BTreeSet<String>,
    /// Claims released in the datapath, to remove from the record.
    released: BTreeSet<String>,
    /// Releases carried by the write in flight of each shard.
    releasing: BTreeMap<u32, Vec<String>>,
    /// When each node was last seen renewing (a new member version).
    last_renewal: BTreeMap<String, Instant>,
    /// Nodes whose heartbeat says they are a candidate for no claim at
    /// all: left out of the bid ranking, so that the nodes that are bid
    /// without waiting for them.
    idle: BTreeSet<String>,
    /// Whether a policy selects this node at all (unknown: true).
    selected_here: bool,
    /// Evictions this node performed and observed (for metrics).
    pub evictions_performed: u64,
    /// Bumped by every input: what [`Self::update_held`] and the bid
    /// candidates were last computed from (with thousands of claims, doing
    /// it again every tick for nothing costs a core).
    version: u64,
    /// The version and `joined` that [`Self::update_held`] last ran with.
    held_for: Option<(u64, bool)>,
    /// Eligible claims that may need a bid (not assigned to a live node),
    /// and the version they were computed at.
    candidates: Vec<String>,
    candidates_for: Option<u64>,
}

impl HeartbeatCore {
    pub fn new(me: impl Into<String>, config: CoreConfig) -> Self {
        HeartbeatCore {
            me: me.into(),
            config,
            heartbeats_synced: false,
            shards_synced: false,
            heartbeats: BTreeMap::new(),
            shards: BTreeMap::new(),
            epoch: None,
            renewed_sent: None,
            joined_at: None,
            stopped: false,
            heartbeat_in_flight: false,
            heartbeat_attempt: None,
            evicting: BTreeSet::new(),
            writing: BTreeSet::new(),
            refused: BTreeMap::new(),
            eligible: BTreeMap::new(),
            eligibility_synced: false,
            free_since: BTreeMap::new(),
            seen_assigned: BTreeSet::new(),
            held: BTreeSet::new(),
            closing: BTreeSet::new(),
            released: BTreeSet::new(),
            releasing: BTreeMap::new(),
            last_renewal: BTreeMap::new(),
            idle: BTreeSet::new(),
            selected_here: true,
            evictions_performed: 0,
            version: 0,
            held_for: None,
            candidates: Vec::new(),
            candidates_for: None,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// An input changed what the decisions are made from.
    fn touch(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    /// The epoch this process joined under, once a heartbeat write
    /// succeeded.
    pub fn epoch(&self) -> Option<u32> {
        self.epoch
    }

    /// Until when the node fence is open, as far as this process knows.
    pub fn fence_until(&self) -> Option<Instant> {
        self.renewed_sent
            .map(|t| t + self.config.timing.renew_deadline)
    }

    /// Whether this node is a member whose fence is open at `now`: its
    /// heartbeat, as last seen, is its own under the epoch this process
    /// wrote, and a renewal succeeded within the renew deadline.
    pub fn joined(&self, now: Instant) -> bool {
        let Some(epoch) = self.epoch else {
            return false;
        };
        let mine_ok = self
            .heartbeats
            .get(&self.me)
            .is_some_and(|s| s.value.member(&self.me) && s.value.epoch == epoch);
        mine_ok && self.fence_until().is_some_and(|f| now < f)
    }

    /// The claims whose fences are open.
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// The assignment of `claim` in this node's view.
    pub fn assignment(&self, claim: &str) -> Option<&Assignment> {
        self.shards.get(&shard_of(claim))?.value.get(claim)
    }

    /// Every node whose heartbeat says it is a member, with its epoch.
    pub fn members(&self) -> BTreeMap<&str, u32> {
        self.heartbeats
            .iter()
            .filter(|(n, s)| s.value.member(n))
            .map(|(n, s)| (n.as_str(), s.value.epoch))
            .collect()
    }

    /// Every heartbeat seen: node -> (heartbeat, resourceVersion).
    pub fn heartbeats(&self) -> impl Iterator<Item = (&str, &Heartbeat, &str)> {
        self.heartbeats
            .iter()
            .map(|(n, s)| (n.as_str(), &s.value, s.rv.as_str()))
    }

    /// Every assignment in this node's view.
    pub fn assignments(&self) -> impl Iterator<Item = (&str, &Assignment)> {
        self.shards
            .values()
            .flat_map(|s| s.value.iter().map(|(c, a)| (c.as_str(), a)))
    }

    /// Claims this node is eligible for.
    pub fn eligible(&self) -> impl Iterator<Item = &str> + '_ {
        self.eligible.keys().map(String::as_str)
    }

    // ---- inputs -------------------------------------------------------------

    /// This node is (again) eligible for `claim`, whose member Services are
    /// `members`.
    pub fn campaign(&mut self, claim: &str, members: Vec<String>) {
        if self.stopped {
            return;
        }
        if self.eligible.get(claim) != Some(&members) {
            self.eligible.insert(claim.to_string(), members);
            self.touch();
        }
    }

    /// The ServiceActor finished its first full evaluation: from now on a
    /// claim assigned here that is not eligible is released.
    pub fn eligibility_synced(&mut self) {
        self.touch();
        self.eligibility_synced = true;
    }

    /// Whether `node`'s heartbeat says it is a candidate for no claim.
    pub fn set_idle(&mut self, node: &str, idle: bool) {
        self.touch();
        if idle {
            self.idle.insert(node.to_string());
        } else {
            self.idle.remove(node);
        }
    }

    /// Whether a valid policy selects this node (its node selector).
    pub fn set_selected_here(&mut self, selected: bool) {
        self.touch();
        self.selected_here = selected;
    }

    /// Whether this node is a candidate for no claim at all, whatever
    /// Services come (said in its heartbeat): no policy selects it.
    pub fn idle_here(&self) -> bool {
        !self.selected_here && self.eligible.is_empty()
    }

    /// This node is no longer eligible for `claim`.
    pub fn withdraw(&mut self, claim: &str) {
        self.touch();
        self.eligible.remove(claim);
        self.free_since.remove(claim);
    }

    /// The heartbeat watch delivered its initial list.
    pub fn heartbeats_synced(&mut self) {
        self.touch();
        self.heartbeats_synced = true;
    }

    /// The record watch delivered its initial list.
    pub fn shards_synced(&mut self) {
        self.touch();
        self.shards_synced = true;
    }

    /// A heartbeat as a watch or a read shows it (`None`: deleted).
    pub fn observe_heartbeat(
        &mut self,
        node: &str,
        seen: Option<(Heartbeat, String)>,
        now: Instant,
    ) {
        self.touch();
        match seen {
            Some((value, rv)) => {
                if let Some(cur) = self.heartbeats.get(node)
                    && (cur.rv == rv || older(&rv, &cur.rv))
                {
                    return;
                }
                if value.member(node) {
                    self.last_renewal.insert(node.to_string(), now);
                }
                self.heartbeats.insert(
                    node.to_string(),
                    Seen {
                        value,
                        rv,
                        since: now,
                    },
                );
            }
            None => {
                self.heartbeats.remove(node);
            }
        }
    }

    /// A record shard as a watch or a read shows it (`None`: absent).
    pub fn observe_shard(&mut self, shard: u32, seen: Option<(Shard, String)>, now: Instant) {
        self.touch();
        match seen {
            Some((value, rv)) => {
                if let Some(cur) = self.shards.get(&shard)
                    && (cur.rv == rv || older(&rv, &cur.rv))
                {
                    return;
                }
                if self.refused.get(&shard).is_some_and(|(r, _)| *r != rv) {
                    self.refused.remove(&shard);
                }
                self.seen_assigned.extend(value.keys().cloned());
                self.shards.insert(
                    shard,
                    Seen {
                        value,
                        rv,
                        since: now,
                    },
                );
            }
            None => {
                self.shards.remove(&shard);
                self.refused.remove(&shard);
            }
        }
    }

    /// The answer to a [`Action::WriteHeartbeat`] sent at `sent`:
    /// `Some((written, rv))` on success, `None` when refused or failed.
    /// Returns what must happen now, in order (fences closed before the
    /// node fence is extended).
    pub fn heartbeat_written(
        &mut self,
        result: Option<(Heartbeat, String)>,
        sent: Instant,
        now: Instant,
    ) -> Vec<Action> {
        self.touch();
        self.heartbeat_in_flight = false;
        let mut out = Vec::new();
        let Some((hb, rv)) = result else {
            return out;
        };
        self.observe_heartbeat(&self.me.clone(), Some((hb.clone(), rv)), now);
        if self.epoch != Some(hb.epoch) {
            // A new epoch: nothing of the old one is ours any more.
            self.epoch = Some(hb.epoch);
            self.joined_at = Some(now);
        }
        self.renewed_sent = Some(sent);
        self.update_held(now, &mut out);
        if let Some(until) = self.fence_until() {
            out.push(Action::NodeFence(until));
        }
        out
    }

    /// The answer to an [`Action::Evict`]: success proves the node has not
    /// renewed since its heartbeat was seen at that resourceVersion.
    pub fn eviction_done(&mut self, node: &str, result: Option<(Heartbeat, String)>, now: Instant) {
        self.touch();
        self.evicting.remove(node);
        if let Some((hb, rv)) = result {
            self.evictions_performed += 1;
            self.observe_heartbeat(node, Some((hb, rv)), now);
        }
    }

    /// The answer to an [`Action::WriteShard`]: the shard as written, or
    /// `None` when refused (a newer version exists) or failed.
    pub fn shard_written(
        &mut self,
        shard: u32,
        sent_rv: Option<String>,
        result: Option<(Shard, String)>,
        now: Instant,
    ) -> Vec<Action> {
        self.touch();
        self.writing.remove(&shard);
        let carried = self.releasing.remove(&shard).unwrap_or_default();
        match result {
            Some((value, rv)) => {
                for c in carried {
                    self.released.remove(&c);
                }
                self.observe_shard(shard, Some((value, rv)), now);
            }
            None => {
                // Refused because of a version this view already shows (the
                // watch is often faster than the refusal): write again at
                // once. Otherwise wait for a newer version, or a retry
                // period at most (a failed request may have changed nothing).
                let sent = sent_rv.unwrap_or_default();
                let seen = self.shards.get(&shard).map(|s| s.rv.as_str());
                if seen.unwrap_or_default() == sent {
                    self.refused.insert(shard, (sent, now));
                }
            }
        }
        let mut out = Vec::new();
        self.update_held(now, &mut out);
        out
    }

    /// Shutdown: nothing is held any more; the heartbeat write that
    /// releases every claim of this node at once (`holder` empty, same
    /// epoch), when this process is a member.
    pub fn release_all(&mut self) -> Option<(String, Heartbeat)> {
        self.touch();
        // For good: a campaign or a renewal answered after this opens
        // nothing (the release may be written over such a renewal).
        self.stopped = true;
        self.held.clear();
        self.eligible.clear();
        let epoch = self.epoch?;
        let mine = self.heartbeats.get(&self.me)?;
        if !mine.value.member(&self.me) || mine.value.epoch != epoch {
            return None;
        }
        Some((
            mine.rv.clone(),
            Heartbeat {
                holder: String::new(),
                epoch,
                evicted_by: None,
            },
        ))
    }

    /// The datapath confirmed `claim`'s fence closed: its release may be
    /// written.
    pub fn claim_closed(&mut self, claim: &str) {
        self.touch();
        if self.closing.remove(claim) {
            self.released.insert(claim.to_string());
        }
    }

    /// The datapath could not confirm a close: keep the claim assigned (it
    /// expires with the node fence) and try again later.
    pub fn claim_close_failed(&mut self, claim: &str) {
        self.touch();
        self.closing.remove(claim);
    }

    // ---- decisions ----------------------------------------------------------

    /// Whether `a` is certainly dead: its node's heartbeat, as seen here,
    /// is of a later epoch, or marks that very epoch evicted or released.
    /// A heartbeat not seen, or older than the assignment (this view lags),
    /// proves nothing: such assignments are left alone.
    fn dead(&self, a: &Assignment) -> bool {
        match self.heartbeats.get(&a.node) {
            None => false,
            Some(s) if s.value.member(&a.node) => s.value.epoch > a.epoch,
            Some(s) => s.value.epoch >= a.epoch,
        }
    }

    fn mine(&self, a: &Assignment) -> bool {
        a.node == self.me && Some(a.epoch) == self.epoch
    }

    /// The claims this node answers now: assigned to its current epoch,
    /// eligible, not being released, and only while joined.
    fn should_hold(&self, now: Instant) -> BTreeSet<String> {
        if self.stopped || !self.joined(now) {
            return BTreeSet::new();
        }
        self.eligible
            .keys()
            .filter(|c| !self.closing.contains(*c) && !self.released.contains(*c))
            .filter(|c| self.assignment(c).is_some_and(|a| self.mine(a)))
            .cloned()
            .collect()
    }

    /// Opens and closes claim fences to match [`Self::should_hold`]; asks
    /// to release claims assigned here that this node is no longer
    /// eligible for.
    fn update_held(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Nothing changed since the last run: its result still holds (it
        // leaves a fixed point).
        let joined = self.joined(now);
        if self.held_for == Some((self.version, joined)) {
            return;
        }
        self.held_for = Some((self.version, joined));
        let want = self.should_hold(now);
        let gone: Vec<String> = self.held.difference(&want).cloned().collect();
        for claim in gone {
            self.held.remove(&claim);
            out.push(Action::Leadership {
                claim: claim.clone(),
                held: false,
            });
            out.push(Action::CloseClaim {
                claim,
                release: false,
            });
        }
        // Assigned here, not eligible: close, then release.
        let to_release: Vec<String> = self
            .assignments()
            .filter(|(c, a)| self.mine(a) && !self.eligible.contains_key(*c))
            .map(|(c, _)| c.to_string())
            .filter(|c| !self.closing.contains(c) && !self.released.contains(c))
            .collect();
        if joined && self.eligibility_synced {
            for claim in to_release {
                self.closing.insert(claim.clone());
                out.push(Action::CloseClaim {
                    claim,
                    release: true,
                });
            }
        }
        // A release overtaken by eligibility again: keep the claim.
        let back: Vec<String> = self
            .released
            .iter()
            .filter(|c| self.eligible.contains_key(*c))
            .cloned()
            .collect();
        for c in back {
            self.released.remove(&c);
        }
        let want = self.should_hold(now);
        for claim in want.difference(&self.held.clone()) {
            self.held.insert(claim.clone());
            out.push(Action::OpenClaim(claim.clone()));
            out.push(Action::Leadership {
                claim: claim.clone(),
                held: true,
            });
        }
    }

    /// Everything due at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.heartbeat_step(now, &mut out);
        self.update_held(now, &mut out);
        if !self.joined(now) || !self.heartbeats_synced || !self.shards_synced {
            return out;
        }
        self.evict_step(now, &mut out);
        self.record_step(now, &mut out);
        out
    }

    fn heartbeat_step(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.heartbeat_in_flight || !self.heartbeats_synced {
            return;
        }
        if self
            .heartbeat_attempt
            .is_some_and(|t| now < t + self.config.timing.retry_period)
        {
            return;
        }
        let (rv, heartbeat) = match self.heartbeats.get(&self.me) {
            None => (
                None,
                Heartbeat {
                    holder: self.me.clone(),
                    epoch: 1,
                    evicted_by: None,
                },
            ),
            Some(s) if s.value.member(&self.me) => (
                Some(s.rv.clone()),
                Heartbeat {
                    holder: self.me.clone(),
                    epoch: s.value.epoch,
                    evicted_by: None,
                },
            ),
            // Evicted or released: join again under a new epoch.
            Some(s) => (
                Some(s.rv.clone()),
                Heartbeat {
                    holder: self.me.clone(),
                    epoch: s.value.epoch.saturating_add(1),
                    evicted_by: None,
                },
            ),
        };
        self.heartbeat_in_flight = true;
        self.heartbeat_attempt = Some(now);
        out.push(Action::WriteHeartbeat { rv, heartbeat });
    }

    /// The members ranked for `key`, highest first.
    fn ranked<'a>(&'a self, key: &str, exclude: Option<&str>) -> Vec<&'a str> {
        let members: Vec<&str> = self
            .members()
            .into_keys()
            .filter(|n| Some(*n) != exclude)
            .collect();
        rendezvous::rank(key, members)
    }

    fn evict_step(&mut self, now: Instant, out: &mut Vec<Action>) {
        let candidates: Vec<(String, Seen<Heartbeat>)> = self
            .heartbeats
            .iter()
            .filter(|(n, s)| **n != self.me && s.value.member(n) && !self.evicting.contains(*n))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (node, seen) in candidates {
            let ranked = self.ranked(&format!("evict/{node}"), Some(&node));
            let rank = ranked
                .iter()
                .position(|n| *n == self.me)
                .unwrap_or(ranked.len());
            let due = seen.since
                + self.config.timing.lease_duration
                + self.config.rank_step * u32::try_from(rank).unwrap_or(u32::MAX);
            if now < due {
                continue;
            }
            self.evicting.insert(node.clone());
            out.push(Action::Evict {
                rv: seen.rv.clone(),
                heartbeat: Heartbeat {
                    holder: String::new(),
                    epoch: seen.value.epoch,
                    evicted_by: Some(self.me.clone()),
                },
                node,
            });
        }
    }

    /// Whether this node may take `claim` now and why: free (unassigned or
    /// assigned to a dead epoch), none of its other members still held
    /// under claims of their own, and this node's bid is due by its rank.
    fn bid(&mut self, claim: &str, now: Instant, bidders: &[String]) -> Option<TakeReason> {
        // Claims merge when Services come to share an IP: the merged claim
        // waits until its members' own claims are given up.
        let members = self.eligible.get(claim).cloned().unwrap_or_default();
        if members
            .iter()
            .filter(|m| *m != claim)
            .any(|m| self.assignment(m).is_some_and(|a| !self.dead(a)))
        {
            return None;
        }
        let reason = match self.assignment(claim) {
            Some(a) if self.mine(a) => return None,
            Some(a) if !self.dead(a) => {
                self.free_since.remove(claim);
                return None;
            }
            Some(a) => TakeReason::Takeover {
                last_renewal: self.last_renewal.get(&a.node).copied(),
            },
            None if self.seen_assigned.contains(claim) => TakeReason::HandOff,
            None => TakeReason::New,
        };
        let mut since = *self.free_since.entry(claim.to_string()).or_insert(now);
        if reason == TakeReason::New
            && let Some(joined) = self.joined_at
        {
            since = since.max(joined + self.config.bid_step);
        }
        let ranked = rendezvous::rank(claim, bidders.iter().map(String::as_str));
        let rank = ranked.iter().position(|n| *n == self.me)?;
        let rank = u32::try_from(rank).unwrap_or(u32::MAX);
        let due = match reason {
            // A new claim: the nodes ranked higher get `bid_step` each
            // from when this node saw it free, and from the shard's last
            // change (while a burst of new Services is being written, their
            // writes may be refused and retried a few times), but never
            // more than a lease duration in all.
            TakeReason::New if rank > 0 => {
                let changed = self
                    .shards
                    .get(&shard_of(claim))
                    .map_or(since, |s| s.since.max(since));
                (changed + self.config.bid_step * rank)
                    .min(since + self.config.timing.lease_duration * rank)
            }
            TakeReason::New => since,
            _ => since + self.config.rank_step * rank,
        };
        (now >= due).then_some(reason)
    }

    fn record_step(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(epoch) = self.epoch else {
            return;
        };
        // The eligible claims not assigned to a live node, computed again
        // only when an input changed.
        if self.candidates_for != Some(self.version) {
            self.candidates_for = Some(self.version);
            let mut candidates = Vec::new();
            let mut taken_by_others = Vec::new();
            for claim in self.eligible.keys() {
                match self.assignment(claim) {
                    Some(a) if self.mine(a) => {}
                    Some(a) if !self.dead(a) => taken_by_others.push(claim.clone()),
                    _ => candidates.push(claim.clone()),
                }
            }
            for c in taken_by_others {
                self.free_since.remove(&c);
            }
            self.candidates = candidates;
        }
        // The members that bid, in any order: those whose heartbeat says
        // they are a candidate for something, and this node.
        let bidders: Vec<String> = self
            .members()
            .into_keys()
            .filter(|n| *n == self.me || !self.idle.contains(*n))
            .map(str::to_string)
            .collect();
        // Pending changes per shard.
        let mut bids: BTreeMap<u32, Vec<(String, TakeReason)>> = BTreeMap::new();
        let candidates = std::mem::take(&mut self.candidates);
        for claim in &candidates {
            if let Some(reason) = self.bid(claim, now, &bidders) {
                bids.entry(shard_of(claim))
                    .or_default()
                    .push((claim.clone(), reason));
            }
        }
        self.candidates = candidates;
        let mut releases: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for claim in &self.released {
            releases
                .entry(shard_of(claim))
                .or_default()
                .push(claim.clone());
        }
        let shards: BTreeSet<u32> = bids.keys().chain(releases.keys()).copied().collect();
        let retry = self.config.timing.retry_period;
        self.refused.retain(|_, (_, at)| now < *at + retry);
        for shard in shards {
            if self.writing.contains(&shard) || self.refused.contains_key(&shard) {
                continue;
            }
            let taken = bids.remove(&shard).unwrap_or_default();
            let gone = releases.remove(&shard).unwrap_or_default();
            // Let a burst gather: write once the oldest pending bid waited
            // the batch delay (releases go at once).
            let oldest = taken
                .iter()
                .filter_map(|(c, _)| self.free_since.get(c))
                .min()
                .copied();
            if gone.is_empty() && oldest.is_some_and(|t| now < t + self.config.batch_delay) {
                continue;
            }
            let current = self.shards.get(&shard);
            let mut assignments = current.map(|s| s.value.clone()).unwrap_or_default();
            for claim in &gone {
                if assignments.get(claim).is_some_and(|a| self.mine(a)) {
                    assignments.remove(claim);
                }
            }
            for (claim, _) in &taken {
                assignments.insert(
                    claim.clone(),
                    Assignment {
                        node: self.me.clone(),
                        epoch,
                    },
                );
            }
            // Assignments to dead epochs are dropped while at it, so the
            // record does not keep them.
            let dead: Vec<String> = assignments
                .iter()
                .filter(|(_, a)| self.dead(a))
                .map(|(c, _)| c.clone())
                .collect();
            for c in dead {
                assignments.remove(&c);
            }
            if current.is_some_and(|s| s.value == assignments) {
                // Nothing to change (e.g. releases already gone).
                for c in &gone {
                    self.released.remove(c);
                }
                self.touch();
                continue;
            }
            self.writing.insert(shard);
            self.releasing.insert(shard, gone);
            out.push(Action::WriteShard {
                shard,
                rv: current.map(|s| s.rv.clone()),
                assignments,
                taken,
            });
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
