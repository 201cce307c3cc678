//! ServiceActor: decides which claims this node campaigns for, and keeps
//! `l2-announce` in line with the claims it holds.
//!
//! Inputs: policy states (PolicyActor), the selected devices, reflector
//! stores of Services, EndpointSlices (for `externalTrafficPolicy: Local`)
//! and this node's Node, and leadership reports (LeaseActor). Outputs:
//! Campaign / Withdraw per claim to the LeaseActor, rows of `l2-announce`
//! (each carrying its claim and this run) and `policies`.
//!
//! Work is incremental: a Service event re-evaluates that Service and the
//! claims it leaves or joins, and rewrites only those claims' rows. Rows an
//! earlier run left are kept while their claim is undecided here (so a
//! restarted holder keeps answering under the fence it had) and removed
//! once this run decides otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::{debug, warn};

use super::claims::{ClaimChange, ClaimGroups};
use super::selection::{
    Candidacy, NodeView, SERVICE_NAME_LABEL, ServiceView, StoredService, candidacy, claimed_ips,
    keep_viewed, service_view, slice_has_local_ready, slice_has_ready, slice_key,
};
use crate::RunId;
use crate::messages::{
    Campaign, CandidaciesSynced, Leadership, NodeSelected, PolicyState, PolicyStates,
    SelectedDevices, Withdraw,
};
use crate::policy::CompiledPolicy;
use crate::tables::{L2_ANNOUNCE, L2_ANNOUNCE_BY_CLAIM, L2AnnounceRow, POLICIES, PolicyRow};

/// How long policy rows may lag behind, so that a burst of Service events
/// rewrites them once.
const POLICY_ROWS_DELAY: Duration = Duration::from_millis(200);

/// Receives announcement changes (for Events and metrics).
pub trait AnnounceObserver: Send + Sync {
    /// This node started (`true`) or stopped announcing a Service.
    fn announcing(&self, _service: &ServiceView, _announcing: bool, _entries: &Candidacy) {}
    /// This node became (`true`) or stopped being a candidate for a
    /// Service: selected by a policy, with an IP and interface here.
    fn candidate(&self, _service: &str, _candidate: bool) {}
    /// A Service this node announced can be announced by no node now, for
    /// `reason` (a condition reason) explained by `why`.
    fn not_announceable(&self, _service: &ServiceView, _reason: &'static str, _why: &str) {}
}

/// An observer that records nothing.
pub struct NoAnnounceObserver;
impl AnnounceObserver for NoAnnounceObserver {}

/// What a ServiceActor is configured with.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This node's name.
    pub me: String,
    /// `--enable-external-ips`.
    pub external_ips_enabled: bool,
    /// This agent run: it stamps the rows it writes.
    pub run: RunId,
}

struct Writers {
    services: reflector::store::Writer<StoredService>,
    slices: reflector::store::Writer<EndpointSlice>,
    nodes: reflector::store::Writer<Node>,
}

pub struct ServiceActor {
    client: kube::Client,
    config: ServiceConfig,
    db: statedb::Db,
    announce: statedb::Table<L2AnnounceRow>,
    policy_rows: statedb::Table<PolicyRow>,
    /// `None` until the PolicyActor and the device tracking reported.
    policies: Option<Vec<PolicyState>>,
    compiled: Vec<CompiledPolicy>,
    devices: Option<BTreeSet<String>>,
    services: Store<StoredService>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    writers: Option<Writers>,
    /// An index over the slice store: Service -> its slices with a ready
    /// endpoint on this node.
    local_ready: BTreeMap<String, BTreeSet<String>>,
    /// Whether every input delivered its initial state once.
    evaluated: bool,
    groups: ClaimGroups,
    candidacies: BTreeMap<String, Candidacy>,
    /// Claims this node campaigns for, with their members.
    campaigning: BTreeMap<String, Vec<String>>,
    /// Claims this node leads.
    leading: BTreeSet<String>,
    /// Claims the LeaseActor decided at least once in this run.
    decided: BTreeSet<String>,
    /// Services this node announces, with what, for the stop reports: the
    /// view without labels, IPs and conditions (the store has them while the
    /// Service exists; a stop report takes them from there).
    announcing: BTreeMap<String, (ServiceView, Candidacy)>,
    /// Claims this node is a candidate for some members of but not all:
    /// reported once each time a claim becomes so.
    partial: BTreeSet<String>,
    policy_rows_scheduled: bool,
    campaign: Recipient<Campaign>,
    withdraw: Recipient<Withdraw>,
    synced: Recipient<CandidaciesSynced>,
    selected: Recipient<NodeSelected>,
    /// What was last said on `selected`.
    node_selected: Option<bool>,
    observer: Arc<dyn AnnounceObserver>,
}

/// Where the ServiceActor's decisions go: the election of the mode in use.
pub struct ElectionRecipients {
    pub campaign: Recipient<Campaign>,
    pub withdraw: Recipient<Withdraw>,
    pub synced: Recipient<CandidaciesSynced>,
    pub selected: Recipient<NodeSelected>,
}

impl ServiceActor {
    pub fn new(
        client: kube::Client,
        db: statedb::Db,
        config: ServiceConfig,
        election: ElectionRecipients,
        observer: Arc<dyn AnnounceObserver>,
    ) -> Result<Self, statedb::Error> {
        let (services, services_w) = reflector::store();
        let (slices, slices_w) = reflector::store();
        let (nodes, nodes_w) = reflector::store();
        Ok(ServiceActor {
            client,
            config,
            announce: statedb::Table::open(&db, L2_ANNOUNCE)?,
            policy_rows: statedb::Table::open(&db, POLICIES)?,
            db,
            policies: None,
            compiled: Vec::new(),
            devices: None,
            services,
            slices,
            nodes,
            writers: Some(Writers {
                services: services_w,
                slices: slices_w,
                nodes: nodes_w,
            }),
            local_ready: BTreeMap::new(),
            evaluated: false,
            groups: ClaimGroups::default(),
            candidacies: BTreeMap::new(),
            campaigning: BTreeMap::new(),
            leading: BTreeSet::new(),
            decided: BTreeSet::new(),
            announcing: BTreeMap::new(),
            partial: BTreeSet::new(),
            policy_rows_scheduled: false,
            campaign: election.campaign,
            withdraw: election.withdraw,
            synced: election.synced,
            selected: election.selected,
            node_selected: None,
            observer,
        })
    }

    /// Whether every input has delivered its initial state.
    fn inputs_ready(&self) -> bool {
        fn ready<K>(s: &Store<K>) -> bool
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            matches!(s.wait_until_ready().now_or_never(), Some(Ok(())))
        }
        self.policies.is_some()
            && self.devices.is_some()
            && ready(&self.services)
            && ready(&self.slices)
            && ready(&self.nodes)
    }

    fn node_view(&self) -> NodeView {
        NodeView {
            labels: self
                .nodes
                .state()
                .first()
                .map(|n| n.labels().clone())
                .unwrap_or_default(),
            selected_devices: self.devices.clone().unwrap_or_default(),
            external_ips_enabled: self.config.external_ips_enabled,
        }
    }

    fn view(&self, key: &str) -> Option<ServiceView> {
        let (ns, name) = key.split_once('/')?;
        self.services
            .get(&ObjectRef::new(name).within(ns))
            .map(|s| service_view(&s))
    }

    /// Re-evaluates the Services `keys` (every known one with `None`) and
    /// the claims they touch.
    fn evaluate(&mut self, ctx: &mut Context<Self>, keys: Option<Vec<String>>) {
        if !self.inputs_ready() {
            return;
        }
        let first = !self.evaluated;
        self.evaluated = true;
        let full = keys.is_none() || first;
        let keys: Vec<String> = match keys {
            Some(k) if !first => k,
            _ => self
                .services
                .state()
                .iter()
                .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
                .chain(self.candidacies.keys().cloned())
                .chain(self.groups.claims().flat_map(|(_, m)| m.iter().cloned()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let node = self.node_view();
        let selected = self.compiled.iter().any(|p| p.selects_node(&node.labels));
        if self.node_selected != Some(selected) {
            self.node_selected = Some(selected);
            self.selected.do_send(NodeSelected(selected));
        }
        let mut claims: BTreeSet<String> = BTreeSet::new();
        for key in &keys {
            let view = self.view(key);
            let claimed = view
                .as_ref()
                .map(|v| claimed_ips(&self.compiled, v, self.config.external_ips_enabled))
                .unwrap_or_default();
            for ClaimChange { from, to, .. } in self.groups.set(key, claimed) {
                claims.extend(from);
                claims.extend(to);
            }
            let local = self.local_ready.get(key).is_some_and(|s| !s.is_empty());
            let c = view
                .as_ref()
                .and_then(|v| candidacy(&self.compiled, v, &node, local));
            let was = self.candidacies.contains_key(key);
            match c {
                // Replaced only on change (see update_announcing).
                Some(c) if self.candidacies.get(key) == Some(&c) => {}
                Some(c) => {
                    self.candidacies.insert(key.clone(), c);
                }
                None => {
                    self.candidacies.remove(key);
                }
            }
            if was != self.candidacies.contains_key(key) {
                self.observer.candidate(key, !was);
            }
            claims.extend(self.groups.claim_of(key).map(str::to_string));
        }
        if full {
            claims.extend(self.campaigning.keys().cloned());
        }
        for claim in &claims {
            self.sync_claim(claim);
        }
        for key in &keys {
            self.update_announcing(key);
        }
        if first {
            self.reap_inherited();
            self.synced.do_send(CandidaciesSynced);
        }
        self.schedule_policy_rows(ctx);
    }

    /// Campaigns for or withdraws from `claim`, then writes its rows.
    fn sync_claim(&mut self, claim: &str) {
        let members: Vec<String> = self.groups.members(claim).map(str::to_string).collect();
        let eligible =
            !members.is_empty() && members.iter().all(|m| self.candidacies.contains_key(m));
        if eligible && self.campaigning.get(claim) != Some(&members) {
            debug!(claim, "campaigning");
            self.campaigning.insert(claim.to_string(), members.clone());
            self.campaign.do_send(Campaign {
                service: claim.to_string(),
                members: members.clone(),
            });
        }
        if !eligible && self.campaigning.remove(claim).is_some() {
            debug!(claim, "withdrawing");
            self.leading.remove(claim);
            self.decided.remove(claim);
            self.withdraw.do_send(Withdraw {
                service: claim.to_string(),
            });
        }
        self.write_claim_rows(claim);
        // Why, before the stop reports (see update_announcing).
        self.report_partial(claim, &members);
        for m in &members {
            self.update_announcing(m);
        }
    }

    /// Says on each member's Service, once per occurrence, that this node
    /// is selected for some Services sharing the claim's IPs but not for
    /// all, so it may announce none of them (the eligibility rule).
    fn report_partial(&mut self, claim: &str, members: &[String]) {
        let (selected, not): (Vec<&String>, Vec<&String>) = members
            .iter()
            .partition(|m| self.candidacies.contains_key(*m));
        if selected.is_empty() || not.is_empty() {
            self.partial.remove(claim);
            return;
        }
        if !self.partial.insert(claim.to_string()) {
            return;
        }
        let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let why = format!(
            "{} share IPs with {}: this node is selected for the first only, and a node \
             announces a shared IP only when selected for every Service sharing it",
            list(&selected),
            list(&not),
        );
        for m in members {
            if let Some(view) = self.view(m) {
                self.observer.not_announceable(
                    &view,
                    crate::k8s::status::REASON_SHARED_IP_NOT_SELECTED,
                    &why,
                );
            }
        }
    }

    /// Writes the rows `claim` wants on this node (every entry of its
    /// members when held here, none otherwise) and removes the others: this
    /// run's at once, an earlier run's once the claim is decided here.
    fn write_claim_rows(&mut self, claim: &str) {
        let mut desired: BTreeMap<(IpAddr, String), BTreeSet<String>> = BTreeMap::new();
        if self.leading.contains(claim) {
            for m in self.groups.members(claim) {
                for entry in self.candidacies.get(m).into_iter().flat_map(|c| &c.entries) {
                    desired
                        .entry(entry.clone())
                        .or_default()
                        .insert(m.to_string());
                }
            }
        }
        let keep_inherited = self.campaigning.contains_key(claim) && !self.decided.contains(claim);
        let mut txn = self.db.write_txn();
        let existing = match self.announce.get_all(&txn, L2_ANNOUNCE_BY_CLAIM, claim) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "reading l2-announce");
                return;
            }
        };
        let mut writes = 0;
        for e in &existing {
            let key = (e.row.ip, e.row.network_interface.clone());
            if desired.contains_key(&key) {
                continue;
            }
            if e.row.inherited(&self.config.run) && keep_inherited {
                continue;
            }
            if let Err(err) = self.announce.delete(&mut txn, &e.row) {
                warn!(error = %err, "deleting l2-announce row");
            }
            writes += 1;
        }
        for ((ip, iface), origins) in desired {
            let row = L2AnnounceRow {
                ip,
                network_interface: iface,
                origins: origins.into_iter().collect(),
                claim: claim.to_string(),
                run: self.config.run.as_str().to_string(),
                status: statedb::Status::Pending,
            };
            let current = self
                .announce
                .get(&txn, L2_ANNOUNCE.primary, row.key().as_str())
                .ok()
                .flatten();
            if current.is_some_and(|e| {
                e.row.origins == row.origins && e.row.claim == row.claim && e.row.run == row.run
            }) {
                continue;
            }
            if let Err(err) = self.announce.insert(&mut txn, row) {
                warn!(error = %err, "writing l2-announce row");
            }
            writes += 1;
        }
        if writes == 0 {
            txn.abort();
        } else if let Err(e) = txn.commit() {
            warn!(error = %e, "committing l2-announce");
        }
    }

    /// Rows an earlier run left: those whose claim this node does not
    /// campaign for go now; the others wait for this run's decision. Rows
    /// of agents that did not record a claim get the claim of their first
    /// origin.
    fn reap_inherited(&mut self) {
        let mut txn = self.db.write_txn();
        let rows = match self.announce.list(&txn) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "reading l2-announce");
                return;
            }
        };
        let mut writes = 0;
        for e in rows {
            if !e.row.inherited(&self.config.run) {
                continue;
            }
            let claim = if e.row.claim.is_empty() {
                e.row
                    .origins
                    .first()
                    .and_then(|o| self.groups.claim_of(o))
                    .map(str::to_string)
                    .unwrap_or_default()
            } else {
                e.row.claim.clone()
            };
            let result = if self.campaigning.contains_key(&claim) && !self.decided.contains(&claim)
            {
                if claim == e.row.claim {
                    continue;
                }
                let mut row = e.row;
                row.claim = claim;
                self.announce.insert(&mut txn, row).map(drop)
            } else {
                self.announce.delete(&mut txn, &e.row).map(drop)
            };
            if let Err(err) = result {
                warn!(error = %err, "tidying rows of an earlier run");
            }
            writes += 1;
            // Rows stand alone: thousands are committed in steps.
            if let Err(err) = txn.checkpoint_when_full() {
                warn!(error = %err, "committing l2-announce");
            }
        }
        if writes == 0 {
            txn.abort();
        } else if let Err(e) = txn.commit() {
            warn!(error = %e, "committing l2-announce");
        }
    }

    /// Reports a start or stop of announcing `service`.
    fn update_announcing(&mut self, service: &str) {
        let held = self
            .groups
            .claim_of(service)
            .is_some_and(|c| self.leading.contains(c));
        let now = match (held, self.candidacies.get(service), self.view(service)) {
            (true, Some(c), Some(v)) => Some((v, c)),
            _ => None,
        };
        // What a stop report needs when the Service is gone by then.
        let kept = |v: ServiceView| v.slim(false);
        match (now, self.announcing.get_mut(service)) {
            (Some((view, c)), Some(known)) => {
                // Keep what is announced current for the stop report
                // (replaced only on change: every event of every Service
                // comes here, and long-lived copies made anew each time
                // leave the heap fragmented).
                if known.1 != *c {
                    known.1 = c.clone();
                }
                if known.0.resource_version != view.resource_version || known.0.uid != view.uid {
                    known.0 = kept(view);
                }
            }
            (Some((view, c)), None) => {
                self.observer.announcing(&view, true, c);
                let entry = (kept(view), c.clone());
                self.announcing.insert(service.to_string(), entry);
            }
            (None, Some(_)) => {
                // The last holder says why nobody can take it over, before
                // it reports the stop: the Service's condition keeps the
                // why (the stop's conditional write then finds it changed).
                if let Some(view) = self.view(service)
                    && view.traffic_policy_local
                    && !self.any_ready_endpoint(&view)
                {
                    self.observer.not_announceable(
                        &view,
                        crate::k8s::status::REASON_NO_READY_ENDPOINT,
                        "externalTrafficPolicy is Local and no node has a ready endpoint: not announced",
                    );
                }
                // What was announced, also when the Service is gone by now.
                if let Some((kept, c)) = self.announcing.remove(service) {
                    let view = self.view(service).unwrap_or(kept);
                    self.observer.announcing(&view, false, &c);
                }
            }
            (None, None) => {}
        }
    }

    /// Whether any node has a ready endpoint of `view`'s Service.
    fn any_ready_endpoint(&self, view: &ServiceView) -> bool {
        self.slices.state().iter().any(|s| {
            s.namespace().as_deref() == Some(view.namespace.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&view.name)
                && slice_has_ready(s)
        })
    }

    fn schedule_policy_rows(&mut self, ctx: &mut Context<Self>) {
        if self.policy_rows_scheduled {
            return;
        }
        self.policy_rows_scheduled = true;
        ctx.run_later(POLICY_ROWS_DELAY, |act, _| {
            act.policy_rows_scheduled = false;
            act.write_policy_rows();
        });
    }

    fn write_policy_rows(&self) {
        let Some(policies) = &self.policies else {
            return;
        };
        let node = self.node_view();
        let mut txn = self.db.write_txn();
        let existing = self.policy_rows.list(&txn).unwrap_or_default();
        let mut writes = 0;
        let names: BTreeSet<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        for e in &existing {
            if !names.contains(e.row.name.as_str()) {
                let _ = self.policy_rows.delete(&mut txn, &e.row);
                writes += 1;
            }
        }
        for p in policies {
            let services: Vec<String> = match &p.compiled {
                Some(c) if c.selects_node(&node.labels) => self
                    .candidacies
                    .iter()
                    .filter(|(_, cand)| cand.policies.contains(&p.name))
                    .map(|(k, _)| k.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let row = PolicyRow {
                name: p.name.clone(),
                valid: p.compiled.is_some(),
                conditions: p.problems.clone(),
                services,
                interfaces: p.interfaces.clone(),
            };
            if existing.iter().any(|e| e.row == row) {
                continue;
            }
            let _ = self.policy_rows.insert(&mut txn, row);
            writes += 1;
        }
        if writes == 0 {
            txn.abort();
        } else if let Err(e) = txn.commit() {
            warn!(error = %e, "committing policies");
        }
    }
}

impl Actor for ServiceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(w) = self.writers.take() else {
            return;
        };
        // The Service store keeps what the view reads; the other stores
        // keep whole objects but for managed fields, which nothing reads.
        let services: Api<StoredService> = Api::all(self.client.clone());
        ctx.add_stream(
            watcher(services, watcher::Config::default())
                .default_backoff()
                .modify(keep_viewed)
                .reflect(w.services)
                .map(ServiceEvent),
        );
        let slices: Api<EndpointSlice> = Api::all(self.client.clone());
        ctx.add_stream(
            watcher(
                slices,
                watcher::Config::default().labels(SERVICE_NAME_LABEL),
            )
            .default_backoff()
            .modify(|s| s.managed_fields_mut().clear())
            .reflect(w.slices)
            .map(SliceEvent),
        );
        let nodes: Api<Node> = Api::all(self.client.clone());
        ctx.add_stream(
            watcher(
                nodes,
                watcher::Config::default().fields(&format!("metadata.name={}", self.config.me)),
            )
            .default_backoff()
            .modify(|n| n.managed_fields_mut().clear())
            .reflect(w.nodes)
            .map(NodeEvent),
        );
    }
}

type WatchResult<K> = Result<watcher::Event<K>, watcher::Error>;

struct ServiceEvent(WatchResult<StoredService>);
struct SliceEvent(WatchResult<EndpointSlice>);
struct NodeEvent(WatchResult<Node>);

fn key_of<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

impl StreamHandler<ServiceEvent> for ServiceActor {
    fn handle(&mut self, ServiceEvent(event): ServiceEvent, ctx: &mut Context<Self>) {
        match event {
            Err(e) => warn!(error = %e, "service watch failed; retrying with backoff"),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => self.evaluate(ctx, None),
            Ok(watcher::Event::Apply(svc) | watcher::Event::Delete(svc)) => {
                self.evaluate(ctx, Some(vec![key_of(&svc)]));
            }
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<SliceEvent> for ServiceActor {
    fn handle(&mut self, SliceEvent(event): SliceEvent, ctx: &mut Context<Self>) {
        let (apply, slice) = match event {
            Err(e) => {
                warn!(error = %e, "endpointslice watch failed; retrying with backoff");
                return;
            }
            Ok(watcher::Event::Init) => {
                self.local_ready.clear();
                return;
            }
            Ok(watcher::Event::InitDone) => {
                self.evaluate(ctx, None);
                return;
            }
            Ok(watcher::Event::InitApply(s) | watcher::Event::Apply(s)) => (true, s),
            Ok(watcher::Event::Delete(s)) => (false, s),
        };
        let Some((svc, name)) = slice_key(&slice) else {
            return;
        };
        let before = self.local_ready.get(&svc).is_some_and(|s| !s.is_empty());
        let set = self.local_ready.entry(svc.clone()).or_default();
        if apply && slice_has_local_ready(&slice, &self.config.me) {
            set.insert(name);
        } else {
            set.remove(&name);
        }
        if set.is_empty() {
            self.local_ready.remove(&svc);
        }
        let after = self.local_ready.contains_key(&svc);
        if before != after && self.evaluated {
            debug!(service = %svc, local = after, "local endpoints changed");
            self.evaluate(ctx, Some(vec![svc]));
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<NodeEvent> for ServiceActor {
    fn handle(&mut self, NodeEvent(event): NodeEvent, ctx: &mut Context<Self>) {
        match event {
            Err(e) => warn!(error = %e, "node watch failed; retrying with backoff"),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            // Labels may have changed: everything is evaluated again.
            Ok(_) => self.evaluate(ctx, None),
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<PolicyStates> for ServiceActor {
    type Result = ();
    fn handle(&mut self, PolicyStates(states): PolicyStates, ctx: &mut Context<Self>) {
        self.compiled = states.iter().filter_map(|p| p.compiled.clone()).collect();
        self.policies = Some(states);
        self.evaluate(ctx, None);
    }
}

impl Handler<SelectedDevices> for ServiceActor {
    type Result = ();
    fn handle(&mut self, SelectedDevices(devices): SelectedDevices, ctx: &mut Context<Self>) {
        if self.devices.as_ref() != Some(&devices) {
            self.devices = Some(devices);
            self.evaluate(ctx, None);
        }
    }
}

impl Handler<Leadership> for ServiceActor {
    type Result = ();
    fn handle(&mut self, msg: Leadership, _ctx: &mut Context<Self>) {
        let claim = msg.service;
        let first = self.decided.insert(claim.clone());
        let changed = if msg.held && self.campaigning.contains_key(&claim) {
            self.leading.insert(claim.clone())
        } else {
            self.leading.remove(&claim)
        };
        if first || changed {
            self.write_claim_rows(&claim);
            let members: Vec<String> = self.groups.members(&claim).map(str::to_string).collect();
            for m in members {
                self.update_announcing(&m);
            }
        }
    }
}
