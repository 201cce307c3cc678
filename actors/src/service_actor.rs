//! ServiceActor: decides, per Service, whether this node campaigns, and
//! keeps `l2-announce` in line with the leases it holds.
//!
//! Inputs: policy states (PolicyActor), Services, EndpointSlices (for
//! `externalTrafficPolicy: Local`), this node's Node object, the selected
//! devices, and leadership reports (LeaseActor). Outputs: Campaign /
//! Withdraw to the LeaseActor, rows of `l2-announce` and `policies`.
//!
//! Services that share an IP are one election: every member campaigns under
//! the lease of the group's first Service (by `namespace/name`), so a shared
//! IP never has two announcers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use actix::prelude::*;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::{debug, warn};

use crate::messages::{
    Campaign, ElectionGroups, Leadership, PolicyState, PolicyStates, SelectedDevices, Withdraw,
};
use crate::policy::CompiledPolicy;
use crate::selection::{Candidacy, NodeView, ServiceView, candidacy};
use crate::tables::{L2_ANNOUNCE, L2AnnounceRow, POLICIES, PolicyRow};

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Receives announcement changes (for Events and metrics).
pub trait AnnounceObserver: Send + Sync {
    /// This node started (`true`) or stopped announcing a Service.
    fn announcing(&self, _service: &ServiceView, _announcing: bool, _entries: &Candidacy) {}
    /// The Services (`namespace/name`) this node is a candidate for now:
    /// selected by a policy, with at least one IP and interface here.
    fn candidates(&self, _services: &BTreeSet<String>) {}
}

/// An observer that records nothing.
pub struct NoAnnounceObserver;
impl AnnounceObserver for NoAnnounceObserver {}

/// Which inputs have delivered their initial state.
#[derive(Debug, Default)]
struct Synced {
    policies: bool,
    services: bool,
    node: bool,
    slices: bool,
    devices: bool,
}

impl Synced {
    fn all(&self) -> bool {
        self.policies && self.services && self.node && self.slices && self.devices
    }
}

pub struct ServiceActor {
    client: kube::Client,
    me: String,
    external_ips_enabled: bool,
    db: statedb::Db,
    announce: statedb::Table<L2AnnounceRow>,
    policy_rows: statedb::Table<PolicyRow>,
    policies: Vec<PolicyState>,
    services: BTreeMap<String, ServiceView>,
    /// Service key -> slice name -> has a ready endpoint on this node.
    local_endpoints: BTreeMap<String, BTreeMap<String, bool>>,
    node_labels: BTreeMap<String, String>,
    devices: BTreeSet<String>,
    synced: Synced,
    /// Current candidacies by Service key.
    candidacies: BTreeMap<String, Candidacy>,
    /// Election key (lease Service) each candidate Service campaigns under.
    elections: BTreeMap<String, String>,
    /// Election keys this node leads.
    leading: BTreeSet<String>,
    /// Election keys the LeaseActor has decided at least once. Until then
    /// rows a previous run left for them are kept: a restarted holder
    /// keeps answering while it renews its lease.
    decided: BTreeSet<String>,
    /// Services this node announces now and what it announces of them,
    /// for start/stop reports.
    announcing: BTreeMap<String, (ServiceView, Candidacy)>,
    /// The candidacies last reported to the observer.
    reported_candidates: Option<BTreeSet<String>>,
    lease: Recipient<Campaign>,
    withdraw: Recipient<Withdraw>,
    groups: Recipient<ElectionGroups>,
    observer: std::sync::Arc<dyn AnnounceObserver>,
}

impl ServiceActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        me: &str,
        external_ips_enabled: bool,
        db: statedb::Db,
        lease: Recipient<Campaign>,
        withdraw: Recipient<Withdraw>,
        groups: Recipient<ElectionGroups>,
        observer: std::sync::Arc<dyn AnnounceObserver>,
    ) -> Result<Self, statedb::Error> {
        Ok(ServiceActor {
            client,
            me: me.to_string(),
            external_ips_enabled,
            announce: statedb::Table::open(&db, L2_ANNOUNCE)?,
            policy_rows: statedb::Table::open(&db, POLICIES)?,
            db,
            policies: Vec::new(),
            services: BTreeMap::new(),
            local_endpoints: BTreeMap::new(),
            node_labels: BTreeMap::new(),
            devices: BTreeSet::new(),
            synced: Synced::default(),
            candidacies: BTreeMap::new(),
            elections: BTreeMap::new(),
            leading: BTreeSet::new(),
            decided: BTreeSet::new(),
            announcing: BTreeMap::new(),
            reported_candidates: None,
            lease,
            withdraw,
            groups,
            observer,
        })
    }

    fn compiled(&self) -> Vec<CompiledPolicy> {
        self.policies
            .iter()
            .filter_map(|p| p.compiled.clone())
            .collect()
    }

    fn node_view(&self) -> NodeView {
        NodeView {
            labels: self.node_labels.clone(),
            selected_devices: self.devices.clone(),
            external_ips_enabled: self.external_ips_enabled,
        }
    }

    fn has_local_endpoint(&self, key: &str) -> bool {
        self.local_endpoints
            .get(key)
            .is_some_and(|slices| slices.values().any(|ready| *ready))
    }

    /// Re-evaluates `keys` (or every Service with `None`), then elections
    /// and rows.
    fn evaluate(&mut self, keys: Option<Vec<String>>) {
        if !self.synced.all() {
            return;
        }
        let policies = self.compiled();
        let node = self.node_view();
        let keys = keys.unwrap_or_else(|| {
            self.services
                .keys()
                .chain(self.candidacies.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        });
        for key in keys {
            let c = self
                .services
                .get(&key)
                .and_then(|svc| candidacy(&policies, svc, &node, self.has_local_endpoint(&key)));
            match c {
                Some(c) => {
                    self.candidacies.insert(key, c);
                }
                None => {
                    self.candidacies.remove(&key);
                }
            }
        }
        self.update_elections();
        let candidates: BTreeSet<String> = self.candidacies.keys().cloned().collect();
        if self.reported_candidates.as_ref() != Some(&candidates) {
            self.observer.candidates(&candidates);
            self.reported_candidates = Some(candidates);
        }
        self.write_rows();
        self.write_policy_rows(&node);
    }

    /// Groups candidates sharing an IP; campaigns/withdraws by group.
    fn update_elections(&mut self) {
        let next = election_keys(&self.candidacies);
        if next != self.elections {
            self.groups.do_send(ElectionGroups(next.clone()));
        }
        let old_keys: BTreeSet<&String> = self.elections.values().collect();
        let new_keys: BTreeSet<&String> = next.values().collect();
        for gone in old_keys.difference(&new_keys) {
            self.leading.remove(*gone);
            self.decided.remove(*gone);
            self.withdraw.do_send(Withdraw {
                service: (*gone).clone(),
            });
        }
        for added in new_keys.difference(&old_keys) {
            self.lease.do_send(Campaign {
                service: (*added).clone(),
            });
        }
        self.elections = next;
    }

    /// Writes the rows of every Service whose election this node leads
    /// and removes the rest; unchanged rows are not rewritten.
    fn write_rows(&mut self) {
        let mut desired: BTreeMap<(IpAddr, String), BTreeSet<String>> = BTreeMap::new();
        let mut now_announcing = BTreeSet::new();
        for (svc, c) in &self.candidacies {
            let Some(election) = self.elections.get(svc) else {
                continue;
            };
            if !self.leading.contains(election) {
                continue;
            }
            now_announcing.insert(svc.clone());
            for entry in &c.entries {
                desired
                    .entry(entry.clone())
                    .or_default()
                    .insert(svc.clone());
            }
        }
        let mut txn = self.db.write_txn();
        let existing = match self.announce.list(&txn) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "reading l2-announce");
                return;
            }
        };
        let undecided = |origin: &String| {
            self.candidacies.contains_key(origin)
                && self
                    .elections
                    .get(origin)
                    .is_some_and(|e| !self.decided.contains(e))
        };
        let mut writes = 0;
        for e in &existing {
            let key = (e.row.ip, e.row.network_interface.clone());
            if !desired.contains_key(&key) && !e.row.origins.iter().any(undecided) {
                if let Err(err) = self.announce.delete(&mut txn, &e.row) {
                    warn!(error = %err, "deleting l2-announce row");
                }
                writes += 1;
            }
        }
        for ((ip, iface), origins) in desired {
            let origins: Vec<String> = origins.into_iter().collect();
            let current = existing
                .iter()
                .find(|e| e.row.ip == ip && e.row.network_interface == iface);
            if current.is_some_and(|e| e.row.origins == origins) {
                continue;
            }
            let row = L2AnnounceRow {
                ip,
                network_interface: iface,
                origins,
                status: statedb::Status::Pending,
            };
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
        for svc in &now_announcing {
            if let (Some(view), Some(c)) = (self.services.get(svc), self.candidacies.get(svc)) {
                match self.announcing.get_mut(svc) {
                    // Keep what is announced current for the stop report.
                    Some(known) => {
                        if known.0 != *view || known.1 != *c {
                            *known = (view.clone(), c.clone());
                        }
                    }
                    None => {
                        self.observer.announcing(view, true, c);
                        self.announcing
                            .insert(svc.clone(), (view.clone(), c.clone()));
                    }
                }
            }
        }
        let stopped: Vec<String> = self
            .announcing
            .keys()
            .filter(|svc| !now_announcing.contains(*svc))
            .cloned()
            .collect();
        for svc in stopped {
            // What was announced, also when the Service is gone by now.
            if let Some((view, c)) = self.announcing.remove(&svc) {
                self.observer.announcing(&view, false, &c);
            }
        }
    }

    fn write_policy_rows(&self, node: &NodeView) {
        let mut txn = self.db.write_txn();
        let existing = self.policy_rows.list(&txn).unwrap_or_default();
        let mut writes = 0;
        let names: BTreeSet<&str> = self.policies.iter().map(|p| p.name.as_str()).collect();
        for e in &existing {
            if !names.contains(e.row.name.as_str()) {
                let _ = self.policy_rows.delete(&mut txn, &e.row);
                writes += 1;
            }
        }
        for p in &self.policies {
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

/// For each candidate Service, the Service whose lease its election uses:
/// the smallest key among the candidates it shares an IP with, directly or
/// through others.
pub fn election_keys(candidacies: &BTreeMap<String, Candidacy>) -> BTreeMap<String, String> {
    let keys: Vec<&String> = candidacies.keys().collect();
    let mut parent: Vec<usize> = (0..keys.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut owner_of_ip: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        for ip in candidacies[*key].ips() {
            match owner_of_ip.get(&ip) {
                Some(&j) => {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    // Keys are sorted, so the smaller index is the smaller key.
                    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                    parent[hi] = lo;
                }
                None => {
                    owner_of_ip.insert(ip, i);
                }
            }
        }
    }
    (0..keys.len())
        .map(|i| {
            let root = find(&mut parent, i);
            (keys[i].clone(), keys[root].clone())
        })
        .collect()
}

/// Reads the parts of a Service the selection needs.
pub fn service_view(svc: &Service) -> ServiceView {
    let spec = svc.spec.clone().unwrap_or_default();
    let parse = |s: &str| s.parse::<IpAddr>().ok();
    ServiceView {
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        labels: svc.labels().clone(),
        load_balancer_class: spec.load_balancer_class.clone(),
        external_ips: spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|s| parse(s))
            .collect(),
        load_balancer_ips: svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref().and_then(parse))
            .collect(),
        traffic_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
    }
}

/// Whether a slice has a ready endpoint on `node`.
pub fn slice_has_local_ready(slice: &EndpointSlice, node: &str) -> bool {
    slice.endpoints.iter().any(|ep| {
        ep.node_name.as_deref() == Some(node)
            && ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    })
}

impl Actor for ServiceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let services: Api<Service> = Api::all(self.client.clone());
        ctx.add_stream(
            watcher(services, watcher::Config::default())
                .default_backoff()
                .map(ServiceEvent),
        );
        let slices: Api<EndpointSlice> = Api::all(self.client.clone());
        ctx.add_stream(
            watcher(
                slices,
                watcher::Config::default().labels(SERVICE_NAME_LABEL),
            )
            .default_backoff()
            .map(SliceEvent),
        );
        let nodes: Api<Node> = Api::all(self.client.clone());
        ctx.add_stream(
            watcher(
                nodes,
                watcher::Config::default().fields(&format!("metadata.name={}", self.me)),
            )
            .default_backoff()
            .map(NodeEvent),
        );
    }
}

type WatchResult<K> = Result<watcher::Event<K>, watcher::Error>;

struct ServiceEvent(WatchResult<Service>);
struct SliceEvent(WatchResult<EndpointSlice>);
struct NodeEvent(WatchResult<Node>);

use futures::StreamExt as _;

impl StreamHandler<ServiceEvent> for ServiceActor {
    fn handle(&mut self, ServiceEvent(event): ServiceEvent, _ctx: &mut Context<Self>) {
        match event {
            Err(e) => warn!(error = %e, "service watch failed; retrying with backoff"),
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitApply(svc)) => {
                let view = service_view(&svc);
                self.services.insert(view.key(), view);
            }
            Ok(watcher::Event::InitDone) => {
                self.synced.services = true;
                self.evaluate(None);
            }
            Ok(watcher::Event::Apply(svc)) => {
                let view = service_view(&svc);
                let key = view.key();
                if self.services.get(&key) != Some(&view) {
                    self.services.insert(key.clone(), view);
                    self.evaluate(Some(vec![key]));
                }
            }
            Ok(watcher::Event::Delete(svc)) => {
                let key = service_view(&svc).key();
                self.services.remove(&key);
                self.evaluate(Some(vec![key]));
            }
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl ServiceActor {
    fn slice_key(slice: &EndpointSlice) -> Option<(String, String)> {
        let svc = slice.labels().get(SERVICE_NAME_LABEL)?;
        Some((
            format!("{}/{}", slice.namespace().unwrap_or_default(), svc),
            slice.name_any(),
        ))
    }
}

impl StreamHandler<SliceEvent> for ServiceActor {
    fn handle(&mut self, SliceEvent(event): SliceEvent, _ctx: &mut Context<Self>) {
        let (apply, slice) = match event {
            Err(e) => {
                warn!(error = %e, "endpointslice watch failed; retrying with backoff");
                return;
            }
            Ok(watcher::Event::Init) => return,
            Ok(watcher::Event::InitDone) => {
                self.synced.slices = true;
                self.evaluate(None);
                return;
            }
            Ok(watcher::Event::InitApply(s)) | Ok(watcher::Event::Apply(s)) => (true, s),
            Ok(watcher::Event::Delete(s)) => (false, s),
        };
        let Some((svc, name)) = Self::slice_key(&slice) else {
            return;
        };
        let before = self.has_local_endpoint(&svc);
        let entry = self.local_endpoints.entry(svc.clone()).or_default();
        if apply {
            entry.insert(name, slice_has_local_ready(&slice, &self.me));
        } else {
            entry.remove(&name);
        }
        if before != self.has_local_endpoint(&svc) {
            debug!(service = %svc, local = !before, "local endpoints changed");
            self.evaluate(Some(vec![svc]));
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<NodeEvent> for ServiceActor {
    fn handle(&mut self, NodeEvent(event): NodeEvent, _ctx: &mut Context<Self>) {
        match event {
            Err(e) => warn!(error = %e, "node watch failed; retrying with backoff"),
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitApply(node)) | Ok(watcher::Event::Apply(node)) => {
                let labels = node.labels().clone();
                if labels != self.node_labels {
                    self.node_labels = labels;
                    self.evaluate(None);
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                self.node_labels.clear();
                self.evaluate(None);
            }
            Ok(watcher::Event::InitDone) => {
                self.synced.node = true;
                self.evaluate(None);
            }
        }
    }
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<PolicyStates> for ServiceActor {
    type Result = ();
    fn handle(&mut self, PolicyStates(states): PolicyStates, _ctx: &mut Context<Self>) {
        self.policies = states;
        self.synced.policies = true;
        self.evaluate(None);
    }
}

impl Handler<SelectedDevices> for ServiceActor {
    type Result = ();
    fn handle(&mut self, SelectedDevices(devices): SelectedDevices, _ctx: &mut Context<Self>) {
        let first = !self.synced.devices;
        self.synced.devices = true;
        if first || devices != self.devices {
            self.devices = devices;
            self.evaluate(None);
        }
    }
}

impl Handler<Leadership> for ServiceActor {
    type Result = ();
    fn handle(&mut self, msg: Leadership, _ctx: &mut Context<Self>) {
        let first = self.decided.insert(msg.service.clone());
        let ours = self.elections.values().any(|k| *k == msg.service);
        let changed = if msg.held && ours {
            self.leading.insert(msg.service)
        } else {
            self.leading.remove(&msg.service)
        };
        if first || changed {
            self.write_rows();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(ips: &[&str]) -> Candidacy {
        Candidacy {
            entries: ips
                .iter()
                .map(|ip| (ip.parse().expect("ip"), "eth0".to_string()))
                .collect(),
            policies: BTreeSet::new(),
        }
    }

    #[test]
    fn services_sharing_an_ip_share_one_election() {
        let c: BTreeMap<String, Candidacy> = [
            ("default/a".to_string(), cand(&["192.0.2.1"])),
            ("default/b".to_string(), cand(&["192.0.2.2", "192.0.2.3"])),
            ("default/c".to_string(), cand(&["192.0.2.3", "192.0.2.4"])),
            ("default/d".to_string(), cand(&["192.0.2.4"])),
            ("other/e".to_string(), cand(&["2001:db8::5"])),
        ]
        .into();
        let keys = election_keys(&c);
        assert_eq!(keys["default/a"], "default/a");
        assert_eq!(keys["default/b"], "default/b");
        assert_eq!(keys["default/c"], "default/b");
        assert_eq!(keys["default/d"], "default/b", "transitively shared");
        assert_eq!(keys["other/e"], "other/e");
    }

    #[test]
    fn service_view_reads_ips_and_policy() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web", "labels": {"color": "blue"}},
            "spec": {"externalIPs": ["198.51.100.7", "not-an-ip"], "externalTrafficPolicy": "Local",
                     "loadBalancerClass": "io.cilium/l2-announcer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "x.example"}]}}
        }))
        .expect("service");
        let v = service_view(&svc);
        assert_eq!(v.key(), "default/web");
        assert_eq!(
            v.external_ips,
            vec!["198.51.100.7".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            v.load_balancer_ips,
            vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]
        );
        assert!(v.traffic_policy_local);
        assert_eq!(v.labels["color"], "blue");
    }

    #[test]
    fn local_ready_endpoints() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["198.51.100.20"], "nodeName": "node-a", "conditions": {"ready": false}},
                {"addresses": ["198.51.100.21"], "nodeName": "node-b", "conditions": {"ready": true}}
            ]
        }))
        .expect("slice");
        assert!(!slice_has_local_ready(&slice, "node-a"));
        assert!(slice_has_local_ready(&slice, "node-b"));
        assert!(!slice_has_local_ready(&slice, "node-c"));
        assert_eq!(
            ServiceActor::slice_key(&slice),
            Some(("default/web".to_string(), "web-1".to_string()))
        );
    }
}
