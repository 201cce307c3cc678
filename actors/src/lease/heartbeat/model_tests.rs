//! Model test of the node-heartbeat election: several [`HeartbeatCore`]s
//! against a simulated API server with compare-and-swap writes, on one
//! simulated clock, with request and watch latencies, stalled watches,
//! partitions, crashes and restarts (the datapath survives a crash, as the
//! pinned maps do), API server pauses and eligibility changes, in random
//! schedules (proptest). Checked after every event: at most one node's
//! datapath answers each claim. Checked once the faults stop: every claim
//! that some running, eligible node can take is answered by exactly one
//! node within the bound.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::core::{Action, CoreConfig, Heartbeat, HeartbeatCore, Shard, shard_of};
use crate::lease::LeaseTiming;

const TIMING: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(1),
    retry_period: Duration::from_millis(200),
};
const TICK: Duration = Duration::from_millis(20);
/// A request whose answer does not come back is failed after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
enum Fault {
    /// The agent dies (its datapath state stays) and starts again later.
    Crash { node: usize, down_ms: u64 },
    /// Nothing the node sends reaches the API server, nothing comes back.
    Partition { node: usize, ms: u64 },
    /// The node's watches deliver nothing for a while, then catch up.
    Stall { node: usize, ms: u64 },
    /// The API server answers nobody for a while.
    ApiPause { ms: u64 },
    /// The node's eligibility for a claim flips.
    Flip { node: usize, claim: usize },
    /// The agent stops gracefully (SIGTERM): its fences close, it writes
    /// its heartbeat as released (retried over a renewal of its own that
    /// crossed it), meanwhile still handling answers, watch events and
    /// campaigns; then it exits, and starts again `down_ms` later.
    Stop { node: usize, down_ms: u64 },
}

#[derive(Debug, Clone)]
struct Scenario {
    nodes: usize,
    claims: usize,
    eligible: Vec<Vec<bool>>,
    request_ms: Vec<u64>,
    watch_ms: Vec<u64>,
    faults: Vec<(u64, Fault)>,
}

#[derive(Debug, Clone)]
enum Request {
    Heartbeat {
        rv: Option<String>,
        hb: Heartbeat,
    },
    Evict {
        node: String,
        rv: String,
        hb: Heartbeat,
    },
    Shard {
        shard: u32,
        rv: Option<String>,
        assignments: Shard,
    },
    Release {
        rv: String,
        hb: Heartbeat,
        attempt: u32,
    },
}

#[derive(Debug, Clone)]
enum Response {
    Heartbeat(Option<(Heartbeat, String)>),
    /// Written; else whether it was refused (not lost).
    Release {
        written: bool,
        refused: bool,
        hb: Heartbeat,
        attempt: u32,
    },
    Evict(String, Option<(Heartbeat, String)>),
    Shard(u32, Option<String>, Option<(Shard, String)>),
}

#[derive(Debug, Clone)]
enum Change {
    Heartbeat(String, Heartbeat, String),
    Shard(u32, Shard, String),
}

#[derive(Debug)]
enum Event {
    Tick(usize),
    /// A request reaches the API server.
    Arrive {
        node: usize,
        incarnation: u32,
        id: u64,
        req: Request,
    },
    /// An answer reaches the node (or its timeout fires).
    Answer {
        node: usize,
        incarnation: u32,
        id: u64,
        resp: Response,
    },
    /// A watch event reaches the node.
    Watch {
        node: usize,
        incarnation: u32,
        change: Change,
    },
    Fault(Fault),
    Restart(usize),
    Heal,
}

#[derive(Default)]
struct Api {
    rv: u64,
    heartbeats: BTreeMap<String, (Heartbeat, u64)>,
    shards: BTreeMap<u32, (Shard, u64)>,
    paused_until: u64,
}

/// What a node's datapath answers: claims whose fence is open (under the
/// node fence), and claims inherited from a crashed run (under the node
/// fence that run left, never extended).
#[derive(Default, Clone)]
struct Datapath {
    open: BTreeSet<String>,
    node_fence: Option<u64>,
    inherited: BTreeMap<String, u64>,
}

impl Datapath {
    fn answers(&self, claim: &str, now: u64) -> bool {
        (self.open.contains(claim) && self.node_fence.is_some_and(|f| now < f))
            || self.inherited.get(claim).is_some_and(|d| now < *d)
    }
}

struct Node {
    name: String,
    core: Option<HeartbeatCore>,
    incarnation: u32,
    datapath: Datapath,
    eligible: BTreeSet<String>,
    partitioned_until: u64,
    stalled_until: u64,
    last_watch: u64,
    pending: BTreeMap<u64, Instant>,
    /// Stopping gracefully: restarts this long after it exits.
    stopping: Option<u64>,
}

struct Sim {
    base: Instant,
    now: u64,
    seq: u64,
    next_id: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    api: Api,
    nodes: Vec<Node>,
    claims: Vec<String>,
    scenario: Scenario,
    violations: Vec<String>,
}

impl Sim {
    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn new(scenario: Scenario) -> Sim {
        let claims: Vec<String> = (0..scenario.claims)
            .map(|c| format!("ns/claim-{c}"))
            .collect();
        let nodes = (0..scenario.nodes)
            .map(|i| Node {
                name: format!("node-{i}"),
                core: None,
                incarnation: 0,
                datapath: Datapath::default(),
                eligible: claims
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| scenario.eligible[i][*c])
                    .map(|(_, n)| n.clone())
                    .collect(),
                partitioned_until: 0,
                stalled_until: 0,
                last_watch: 0,
                pending: BTreeMap::new(),
                stopping: None,
            })
            .collect();
        let mut sim = Sim {
            base: Instant::now(),
            now: 0,
            seq: 0,
            next_id: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            api: Api::default(),
            nodes,
            claims,
            scenario: scenario.clone(),
            violations: Vec::new(),
        };
        for i in 0..scenario.nodes {
            sim.start(i);
        }
        for (at, fault) in scenario.faults {
            sim.push(at, Event::Fault(fault));
        }
        sim
    }

    /// Starts (or restarts) a node's agent: a fresh core that lists the
    /// API's state, and a datapath whose open claims become inherited.
    fn start(&mut self, i: usize) {
        let now = self.at(self.now);
        let mut core = HeartbeatCore::new(self.nodes[i].name.clone(), CoreConfig::new(TIMING));
        for (n, (hb, rv)) in &self.api.heartbeats {
            core.observe_heartbeat(n, Some((hb.clone(), rv.to_string())), now);
        }
        for (s, (shard, rv)) in &self.api.shards {
            core.observe_shard(*s, Some((shard.clone(), rv.to_string())), now);
        }
        core.heartbeats_synced();
        core.shards_synced();
        let node = &mut self.nodes[i];
        for c in &node.eligible {
            core.campaign(c, vec![c.clone()]);
        }
        core.eligibility_synced();
        // What the previous run left answers under the fence it left.
        let fence = node.datapath.node_fence.unwrap_or(0);
        for c in std::mem::take(&mut node.datapath.open) {
            node.datapath.inherited.insert(c, fence);
        }
        node.core = Some(core);
        node.incarnation += 1;
        node.last_watch = self.now;
        node.pending.clear();
        node.stopping = None;
        self.push(self.now + TICK.as_millis() as u64, Event::Tick(i));
    }

    fn send(&mut self, i: usize, req: Request) {
        self.next_id += 1;
        let id = self.next_id;
        let node = &mut self.nodes[i];
        node.pending
            .insert(id, self.base + Duration::from_millis(self.now));
        let incarnation = node.incarnation;
        let latency = self.scenario.request_ms[i];
        if node.partitioned_until > self.now {
            // Lost on the way: the client gives up after its timeout.
            let resp = match &req {
                Request::Heartbeat { .. } => Response::Heartbeat(None),
                Request::Evict { node, .. } => Response::Evict(node.clone(), None),
                Request::Shard { shard, rv, .. } => Response::Shard(*shard, rv.clone(), None),
                Request::Release { hb, attempt, .. } => Response::Release {
                    written: false,
                    refused: false,
                    hb: hb.clone(),
                    attempt: *attempt,
                },
            };
            let at = self.now + REQUEST_TIMEOUT.as_millis() as u64;
            self.push(
                at,
                Event::Answer {
                    node: i,
                    incarnation,
                    id,
                    resp,
                },
            );
            return;
        }
        self.push(
            self.now + latency,
            Event::Arrive {
                node: i,
                incarnation,
                id,
                req,
            },
        );
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::WriteHeartbeat { rv, heartbeat } => {
                    self.send(i, Request::Heartbeat { rv, hb: heartbeat })
                }
                Action::Evict {
                    node,
                    rv,
                    heartbeat,
                } => self.send(
                    i,
                    Request::Evict {
                        node,
                        rv,
                        hb: heartbeat,
                    },
                ),
                Action::WriteShard {
                    shard,
                    rv,
                    assignments,
                    ..
                } => self.send(
                    i,
                    Request::Shard {
                        shard,
                        rv,
                        assignments,
                    },
                ),
                Action::OpenClaim(c) => {
                    let dp = &mut self.nodes[i].datapath;
                    dp.inherited.remove(&c);
                    dp.open.insert(c);
                }
                Action::CloseClaim { claim, release } => {
                    let dp = &mut self.nodes[i].datapath;
                    dp.open.remove(&claim);
                    dp.inherited.remove(&claim);
                    if release && let Some(core) = self.nodes[i].core.as_mut() {
                        core.claim_closed(&claim);
                    }
                }
                Action::NodeFence(until) => {
                    let ms = self.ms(until);
                    self.nodes[i].datapath.node_fence = Some(ms);
                }
                Action::Leadership { .. } => {}
            }
        }
    }

    /// The API server handles a request; the answer and watch events go out.
    fn handle(&mut self, i: usize, incarnation: u32, id: u64, req: Request) {
        if self.api.paused_until > self.now {
            let at = self.api.paused_until;
            self.push(
                at,
                Event::Arrive {
                    node: i,
                    incarnation,
                    id,
                    req,
                },
            );
            return;
        }
        let check = |current: Option<u64>, rv: &Option<String>| match (current, rv) {
            (None, None) => true,
            (Some(c), Some(r)) => r.parse::<u64>().ok() == Some(c),
            _ => false,
        };
        let (resp, change) = match req {
            Request::Heartbeat { rv, hb } => {
                let name = hb.holder.clone();
                let current = self.api.heartbeats.get(&name).map(|(_, r)| *r);
                if check(current, &rv) {
                    self.api.rv += 1;
                    let r = self.api.rv;
                    self.api.heartbeats.insert(name.clone(), (hb.clone(), r));
                    (
                        Response::Heartbeat(Some((hb.clone(), r.to_string()))),
                        Some(Change::Heartbeat(name, hb, r.to_string())),
                    )
                } else {
                    (Response::Heartbeat(None), None)
                }
            }
            Request::Evict { node, rv, hb } => {
                let current = self.api.heartbeats.get(&node).map(|(_, r)| *r);
                if check(current, &Some(rv)) {
                    self.api.rv += 1;
                    let r = self.api.rv;
                    self.api.heartbeats.insert(node.clone(), (hb.clone(), r));
                    (
                        Response::Evict(node.clone(), Some((hb.clone(), r.to_string()))),
                        Some(Change::Heartbeat(node, hb, r.to_string())),
                    )
                } else {
                    (Response::Evict(node, None), None)
                }
            }
            Request::Shard {
                shard,
                rv,
                assignments,
            } => {
                let current = self.api.shards.get(&shard).map(|(_, r)| *r);
                if check(current, &rv) {
                    self.api.rv += 1;
                    let r = self.api.rv;
                    self.api.shards.insert(shard, (assignments.clone(), r));
                    (
                        Response::Shard(shard, rv, Some((assignments.clone(), r.to_string()))),
                        Some(Change::Shard(shard, assignments, r.to_string())),
                    )
                } else {
                    (Response::Shard(shard, rv, None), None)
                }
            }
            Request::Release { rv, hb, attempt } => {
                let name = self.nodes[i].name.clone();
                let current = self.api.heartbeats.get(&name).map(|(_, r)| *r);
                if check(current, &Some(rv)) {
                    self.api.rv += 1;
                    let r = self.api.rv;
                    self.api.heartbeats.insert(name.clone(), (hb.clone(), r));
                    (
                        Response::Release {
                            written: true,
                            refused: false,
                            hb: hb.clone(),
                            attempt,
                        },
                        Some(Change::Heartbeat(name, hb, r.to_string())),
                    )
                } else {
                    (
                        Response::Release {
                            written: false,
                            refused: true,
                            hb,
                            attempt,
                        },
                        None,
                    )
                }
            }
        };
        // The answer comes back unless the node is cut off by then.
        let back = self.now + self.scenario.request_ms[i];
        let lost = self.nodes[i].partitioned_until > self.now;
        let at = if lost {
            self.now + REQUEST_TIMEOUT.as_millis() as u64
        } else {
            back
        };
        let resp = if lost { failed(resp) } else { resp };
        self.push(
            at,
            Event::Answer {
                node: i,
                incarnation,
                id,
                resp,
            },
        );
        if let Some(change) = change {
            for n in 0..self.nodes.len() {
                let node = &self.nodes[n];
                let at = (self.now + self.scenario.watch_ms[n])
                    .max(node.stalled_until)
                    .max(node.partitioned_until)
                    .max(node.last_watch);
                self.nodes[n].last_watch = at;
                let incarnation = self.nodes[n].incarnation;
                self.push(
                    at,
                    Event::Watch {
                        node: n,
                        incarnation,
                        change: change.clone(),
                    },
                );
            }
        }
    }

    fn step(&mut self, event: Event) {
        let now = self.at(self.now);
        match event {
            Event::Tick(i) => {
                // A stopping agent no longer ticks.
                if self.nodes[i].stopping.is_some() {
                    return;
                }
                let actions = match self.nodes[i].core.as_mut() {
                    Some(core) => core.tick(now),
                    None => return,
                };
                self.apply(i, actions);
                self.push(self.now + TICK.as_millis() as u64, Event::Tick(i));
            }
            Event::Arrive {
                node,
                incarnation,
                id,
                req,
            } => self.handle(node, incarnation, id, req),
            Event::Answer {
                node: i,
                incarnation,
                id,
                resp,
            } => {
                if self.nodes[i].incarnation != incarnation {
                    return;
                }
                let Some(sent) = self.nodes[i].pending.remove(&id) else {
                    return;
                };
                let Some(core) = self.nodes[i].core.as_mut() else {
                    return;
                };
                let actions = match resp {
                    Response::Heartbeat(r) => core.heartbeat_written(r, sent, now),
                    Response::Evict(n, r) => {
                        core.eviction_done(&n, r, now);
                        Vec::new()
                    }
                    Response::Shard(s, rv, r) => core.shard_written(s, rv, r, now),
                    Response::Release {
                        written,
                        refused,
                        hb,
                        attempt,
                    } => {
                        self.release_answered(i, written, refused, hb, attempt);
                        return;
                    }
                };
                self.apply(i, actions);
            }
            Event::Watch {
                node: i,
                incarnation,
                change,
            } => {
                if self.nodes[i].incarnation != incarnation {
                    return;
                }
                let Some(core) = self.nodes[i].core.as_mut() else {
                    return;
                };
                match change {
                    Change::Heartbeat(n, hb, rv) => core.observe_heartbeat(&n, Some((hb, rv)), now),
                    Change::Shard(s, shard, rv) => core.observe_shard(s, Some((shard, rv)), now),
                }
            }
            Event::Fault(f) => self.fault(f),
            Event::Restart(i) => self.start(i),
            Event::Heal => {}
        }
        self.check();
    }

    /// The agent's exit after a graceful stop.
    fn exit(&mut self, i: usize) {
        if let Some(down_ms) = self.nodes[i].stopping.take() {
            self.nodes[i].core = None;
            self.push(self.now + down_ms, Event::Restart(i));
        }
    }

    /// The answer to a release (`write_release`): refused, the heartbeat
    /// is read again (here: as the API server holds it now) and the
    /// release written on its version while it is still this node's live
    /// heartbeat of that epoch; written, lost or given up: the agent exits.
    fn release_answered(
        &mut self,
        i: usize,
        written: bool,
        refused: bool,
        hb: Heartbeat,
        attempt: u32,
    ) {
        let name = self.nodes[i].name.clone();
        if !written
            && refused
            && attempt < 5
            && let Some((current, rv)) = self.api.heartbeats.get(&name)
            && current.member(&name)
            && current.epoch == hb.epoch
        {
            let rv = rv.to_string();
            self.send(
                i,
                Request::Release {
                    rv,
                    hb,
                    attempt: attempt + 1,
                },
            );
            return;
        }
        self.exit(i);
    }

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Crash { node, down_ms } => {
                self.nodes[node].stopping = None;
                if self.nodes[node].core.take().is_some() {
                    self.push(self.now + down_ms, Event::Restart(node));
                }
            }
            Fault::Stop { node, down_ms } => {
                let n = &mut self.nodes[node];
                if n.stopping.is_some() {
                    return;
                }
                let Some(core) = n.core.as_mut() else {
                    return;
                };
                // ReleaseAll: every fence closed (and confirmed), then the
                // release written.
                let release = core.release_all();
                n.datapath.open.clear();
                n.datapath.inherited.clear();
                n.stopping = Some(down_ms);
                match release {
                    Some((rv, hb)) => self.send(node, Request::Release { rv, hb, attempt: 1 }),
                    None => self.exit(node),
                }
            }
            Fault::Partition { node, ms } => {
                self.nodes[node].partitioned_until = self.now + ms;
            }
            Fault::Stall { node, ms } => {
                self.nodes[node].stalled_until = self.now + ms;
            }
            Fault::ApiPause { ms } => self.api.paused_until = self.now + ms,
            Fault::Flip { node, claim } => {
                let c = self.claims[claim].clone();
                let n = &mut self.nodes[node];
                let now_eligible = !n.eligible.remove(&c);
                if now_eligible {
                    n.eligible.insert(c.clone());
                }
                if let Some(core) = n.core.as_mut() {
                    if now_eligible {
                        core.campaign(&c, vec![c.clone()]);
                    } else {
                        core.withdraw(&c);
                    }
                }
            }
        }
    }

    /// At most one node answers each claim.
    fn check(&mut self) {
        for c in &self.claims {
            let answering: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| n.datapath.answers(c, self.now))
                .map(|n| n.name.as_str())
                .collect();
            if answering.len() > 1 {
                self.violations
                    .push(format!("at {} ms {c} answered by {answering:?}", self.now));
            }
        }
    }

    fn run_until(&mut self, end: u64) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = at;
            if let Some(event) = self.events.remove(&seq) {
                self.step(event);
            }
            if self.violations.len() > 5 {
                return;
            }
        }
        self.now = end;
    }

    /// Every node's state, for failure messages.
    fn describe(&self) -> String {
        let now = self.at(self.now);
        let mut out = format!(
            "at {} ms; api: heartbeats {:?}, shards {:?}\n",
            self.now, self.api.heartbeats, self.api.shards
        );
        for n in &self.nodes {
            out.push_str(&format!(
                "{}: eligible {:?}, open {:?}, node fence {:?}, inherited {:?}",
                n.name, n.eligible, n.datapath.open, n.datapath.node_fence, n.datapath.inherited
            ));
            match &n.core {
                None => out.push_str(", not running\n"),
                Some(c) => out.push_str(&format!(
                    ", epoch {:?}, joined {}, held {:?}, members {:?}, assignments {:?}\n",
                    c.epoch(),
                    c.joined(now),
                    c.held(),
                    c.members(),
                    c.assignments().collect::<Vec<_>>()
                )),
            }
        }
        out
    }

    /// Claims some running, reachable node is eligible for, and who
    /// answers each.
    fn coverage(&self) -> Vec<(String, Vec<String>)> {
        self.claims
            .iter()
            .filter(|c| {
                self.nodes
                    .iter()
                    .any(|n| n.core.is_some() && n.eligible.contains(*c))
            })
            .map(|c| {
                let answering = self
                    .nodes
                    .iter()
                    .filter(|n| n.datapath.answers(c, self.now))
                    .map(|n| n.name.clone())
                    .collect();
                (c.clone(), answering)
            })
            .collect()
    }
}

fn failed(resp: Response) -> Response {
    match resp {
        Response::Heartbeat(_) => Response::Heartbeat(None),
        Response::Evict(n, _) => Response::Evict(n, None),
        Response::Shard(s, rv, _) => Response::Shard(s, rv, None),
        Response::Release { hb, attempt, .. } => Response::Release {
            written: false,
            refused: false,
            hb,
            attempt,
        },
    }
}

/// Time after the last fault for every claim to be answered: a lease
/// duration for an eviction, a renew deadline of fence, a few retry
/// periods of requests, watch delays and rank steps.
fn bound_ms() -> u64 {
    (TIMING.lease_duration + TIMING.renew_deadline + TIMING.retry_period * 5).as_millis() as u64
        + 1000
}

fn run(scenario: Scenario) -> Result<(), TestCaseError> {
    let last_fault = scenario
        .faults
        .iter()
        .map(|(at, f)| {
            at + match f {
                // A stop's release takes a few requests at most (each
                // lost one times out).
                Fault::Crash { down_ms, .. } => *down_ms,
                Fault::Stop { down_ms, .. } => *down_ms + 5 * REQUEST_TIMEOUT.as_millis() as u64,
                Fault::Partition { ms, .. } | Fault::Stall { ms, .. } | Fault::ApiPause { ms } => {
                    *ms
                }
                Fault::Flip { .. } => 0,
            }
        })
        .max()
        .unwrap_or(0);
    let mut sim = Sim::new(scenario);
    let quiet = last_fault.max(5_000);
    sim.push(quiet, Event::Heal);
    let end = quiet + bound_ms();
    sim.run_until(end);
    prop_assert!(
        sim.violations.is_empty(),
        "split brain: {:?}\n{}",
        sim.violations,
        sim.describe()
    );
    let uncovered: Vec<_> = sim
        .coverage()
        .into_iter()
        .filter(|(_, answering)| answering.len() != 1)
        .collect();
    prop_assert!(
        uncovered.is_empty(),
        "{} ms after the faults stopped, claims not answered by exactly one node: {uncovered:?}\n{}",
        bound_ms(),
        sim.describe()
    );
    Ok(())
}

fn fault(nodes: usize, claims: usize) -> impl Strategy<Value = (u64, Fault)> {
    let kind = prop_oneof![
        (0..nodes, 0u64..6_000).prop_map(|(node, down_ms)| Fault::Crash { node, down_ms }),
        (0..nodes, 0u64..6_000).prop_map(|(node, ms)| Fault::Partition { node, ms }),
        (0..nodes, 0u64..6_000).prop_map(|(node, ms)| Fault::Stall { node, ms }),
        (0u64..6_000).prop_map(|ms| Fault::ApiPause { ms }),
        (0..nodes, 0..claims).prop_map(|(node, claim)| Fault::Flip { node, claim }),
        (0..nodes, 0u64..6_000).prop_map(|(node, down_ms)| Fault::Stop { node, down_ms }),
    ];
    (0u64..20_000, kind)
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (2usize..=4, 1usize..=4).prop_flat_map(|(nodes, claims)| {
        (
            proptest::collection::vec(proptest::collection::vec(any::<bool>(), claims), nodes),
            proptest::collection::vec(1u64..60, nodes),
            proptest::collection::vec(0u64..150, nodes),
            proptest::collection::vec(fault(nodes, claims), 0..8),
        )
            .prop_map(move |(eligible, request_ms, watch_ms, faults)| Scenario {
                nodes,
                claims,
                eligible,
                request_ms,
                watch_ms,
                faults,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: model_cases(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn at_most_one_node_answers_each_claim_and_all_are_answered_after_faults(s in scenario()) {
        run(s)?;
    }
}

/// Cases per run: `L2A_MODEL_CASES` (the long profile), else 2,000.
fn model_cases() -> u32 {
    std::env::var("L2A_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[test]
fn a_crashed_holder_is_evicted_and_its_claims_taken_over_in_bound() {
    let s = Scenario {
        nodes: 3,
        claims: 4,
        eligible: vec![vec![true; 4], vec![true; 4], vec![false; 4]],
        request_ms: vec![5, 5, 5],
        watch_ms: vec![5, 5, 5],
        faults: vec![
            (
                5_000,
                Fault::Crash {
                    node: 0,
                    down_ms: 30_000,
                },
            ),
            (
                6_000,
                Fault::Crash {
                    node: 1,
                    down_ms: 100,
                },
            ),
        ],
    };
    let mut sim = Sim::new(s);
    sim.run_until(4_000);
    let before: Vec<_> = sim.coverage();
    assert!(before.iter().all(|(_, a)| a.len() == 1), "{before:?}");
    sim.run_until(20_000);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    let after = sim.coverage();
    assert!(
        after.iter().all(|(_, a)| a == &vec!["node-1".to_string()]),
        "{after:?}"
    );
    assert!(sim.api.shards.keys().all(|s| *s < super::core::SHARDS));
    let _ = shard_of("x");
}

/// Without faults, every claim ends on its rendezvous winner: a node that
/// loses a write race to another writes again at once, before the winner's
/// bids for the loser's claims fall due (the watch event of the winning
/// write often arrives before the refusal does). Requests take a tenth of
/// the retry period or less, as they do at qps 5 with the default timings.
#[test]
fn without_faults_each_claim_is_placed_on_its_rendezvous_winner() {
    let claims = 200;
    let s = Scenario {
        nodes: 3,
        claims,
        eligible: vec![vec![true; claims]; 3],
        request_ms: vec![10, 12, 15],
        watch_ms: vec![5, 5, 5],
        faults: vec![],
    };
    let mut sim = Sim::new(s);
    sim.run_until(3_000);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    let names: Vec<String> = sim.nodes.iter().map(|n| n.name.clone()).collect();
    let misplaced: Vec<_> = sim
        .coverage()
        .into_iter()
        .filter(|(claim, answering)| {
            let winner = super::rendezvous::rank(claim, names.iter().map(String::as_str))[0];
            answering != &vec![winner.to_string()]
        })
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} of {claims} claims not on their rendezvous winner: {:?}",
        misplaced.len(),
        &misplaced[..misplaced.len().min(5)]
    );
}

/// A graceful stop whose release crosses a renewal of its own, while the
/// Services' campaigns still come (a claim withdrawn and campaigned for
/// again): the release is written over that renewal, so nothing the
/// stopping node does afterwards may open a fence. Swept over the renewal
/// cycle so that some stops fall while a renewal is in flight.
#[test]
fn a_stop_crossed_by_a_renewal_and_campaigns_opens_nothing_again() {
    let claims = 4;
    for offset in 0..25u64 {
        let at = 5_000 + offset * 9;
        let mut faults = vec![(
            at,
            Fault::Stop {
                node: 0,
                down_ms: 2_000,
            },
        )];
        for claim in 0..claims {
            faults.push((at + 1, Fault::Flip { node: 0, claim }));
            faults.push((at + 2, Fault::Flip { node: 0, claim }));
        }
        let s = Scenario {
            nodes: 2,
            claims,
            eligible: vec![vec![true; claims]; 2],
            request_ms: vec![40, 5],
            watch_ms: vec![5, 5],
            faults,
        };
        run(s).unwrap_or_else(|e| panic!("stop at {at} ms: {e}"));
    }
}
