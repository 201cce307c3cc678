//! Which Services this node campaigns for, with which IPs and on which
//! interfaces: a pure function of the compiled policies, the Service, this
//! node's labels and the selected devices. Also what the decision reads of
//! Kubernetes objects ([`service_view`], [`slice_has_local_ready`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::LoadBalancerStatus;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Deserialize;

use crate::policy::CompiledPolicy;
use crate::vec_set::VecSet;

/// The `loadBalancerClass` Cilium's L2 announcer answers to.
pub const L2_ANNOUNCER_CLASS: &str = "io.cilium/l2-announcer";

/// The parts of a Service the selection reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    /// `metadata.uid`: Events name the Service by it, as `kubectl
    /// describe` looks them up by uid.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub load_balancer_class: Option<String>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub traffic_policy_local: bool,
    /// `metadata.resourceVersion`, `metadata.generation` and
    /// `status.conditions`, for the Announced condition.
    pub resource_version: String,
    pub generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

impl ServiceView {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A copy without what only the selection reads (labels, IPs), and
    /// without the conditions unless `conditions`: what a report that may
    /// wait, or outlive the Service, needs to name and update it.
    pub fn slim(&self, conditions: bool) -> ServiceView {
        ServiceView {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            labels: BTreeMap::new(),
            load_balancer_class: self.load_balancer_class.clone(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            traffic_policy_local: self.traffic_policy_local,
            resource_version: self.resource_version.clone(),
            generation: self.generation,
            conditions: if conditions {
                self.conditions.clone()
            } else {
                Vec::new()
            },
        }
    }
}

/// What a node needs beyond the policies to decide.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub labels: BTreeMap<String, String>,
    /// Names of the devices whose `selected` is true.
    pub selected_devices: BTreeSet<String>,
    /// `--enable-external-ips`.
    pub external_ips_enabled: bool,
}

/// This node's candidacy for one Service: every (IP, interface) pair it
/// would announce, and the policies that selected it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidacy {
    pub entries: VecSet<(IpAddr, String)>,
    pub policies: VecSet<String>,
}

impl Candidacy {
    pub fn ips(&self) -> BTreeSet<IpAddr> {
        self.entries.iter().map(|(ip, _)| *ip).collect()
    }
}

/// The IPs some valid policy would announce for `service` on some node:
/// what makes it a member of a claim (see [`super::claims`]). Node
/// selectors and interfaces are left out so that every node computes the
/// same claims.
pub fn claimed_ips(
    policies: &[CompiledPolicy],
    service: &ServiceView,
    external_ips_enabled: bool,
) -> VecSet<IpAddr> {
    let mut ips = VecSet::new();
    if !matches!(
        service.load_balancer_class.as_deref(),
        None | Some(L2_ANNOUNCER_CLASS)
    ) {
        return ips;
    }
    for policy in policies {
        if !policy.selects_service(&service.namespace, &service.name, &service.labels) {
            continue;
        }
        if policy.external_ips && external_ips_enabled {
            ips.extend(service.external_ips.iter().copied());
        }
        if policy.load_balancer_ips {
            ips.extend(service.load_balancer_ips.iter().copied());
        }
    }
    ips
}

/// A Service as the agent watches and stores it: what [`service_view`]
/// reads and nothing else. The watch decodes straight into it (kube's `Api`
/// takes any type naming the Service resource), so ports, selectors,
/// cluster IPs and the like are neither parsed nor kept; [`keep_viewed`]
/// drops the metadata nothing reads. At 5,000 Services whole `Service`
/// objects were the largest part of the agent's memory after the state
/// tables.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StoredService {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<StoredServiceSpec>,
    pub status: Option<StoredServiceStatus>,
    /// `metadata.labels`, moved here by [`keep_viewed`]: a sorted vector,
    /// where a map of a Service's usual two labels costs a whole B-tree
    /// node.
    #[serde(skip)]
    pub labels: Vec<(String, String)>,
}

/// The read parts of `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredServiceSpec {
    pub load_balancer_class: Option<String>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    pub external_traffic_policy: Option<String>,
}

/// The read parts of `status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredServiceStatus {
    pub load_balancer: Option<LoadBalancerStatus>,
    pub conditions: Option<Vec<Condition>>,
}

impl k8s_openapi::Resource for StoredService {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Service";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "services";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for StoredService {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Drops the metadata [`service_view`] does not read, before the reflector
/// stores the Service.
pub fn keep_viewed(svc: &mut StoredService) {
    let metadata = std::mem::take(&mut svc.metadata);
    // In key order, and exactly sized (the map's iterator knows its length).
    svc.labels = metadata.labels.into_iter().flatten().collect();
    svc.metadata = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        resource_version: metadata.resource_version,
        generation: metadata.generation,
        ..ObjectMeta::default()
    };
}

/// Reads the parts of a Service the selection needs.
pub fn service_view(svc: &StoredService) -> ServiceView {
    let spec = svc.spec.clone().unwrap_or_default();
    let parse = |s: &str| s.parse::<IpAddr>().ok();
    ServiceView {
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        labels: svc
            .metadata
            .labels
            .iter()
            .flatten()
            .chain(svc.labels.iter().map(|(k, v)| (k, v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
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
        resource_version: svc.resource_version().unwrap_or_default(),
        generation: svc.metadata.generation,
        conditions: svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default(),
    }
}

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service (`namespace/name`) and name of an EndpointSlice.
pub fn slice_key(slice: &EndpointSlice) -> Option<(String, String)> {
    let svc = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some((
        format!("{}/{}", slice.namespace().unwrap_or_default(), svc),
        slice.name_any(),
    ))
}

/// Whether a slice has a ready endpoint on any node.
pub fn slice_has_ready(slice: &EndpointSlice) -> bool {
    slice
        .endpoints
        .iter()
        .any(|ep| ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
}

/// Whether a slice has a ready endpoint on `node`.
pub fn slice_has_local_ready(slice: &EndpointSlice, node: &str) -> bool {
    slice.endpoints.iter().any(|ep| {
        ep.node_name.as_deref() == Some(node)
            && ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    })
}

/// Decides whether this node campaigns for `service`. `None` when no valid
/// policy selects it here, or when it has nothing announceable on any
/// selected interface (no lease is taken for such a Service). With
/// `externalTrafficPolicy: Local`, `has_local_endpoint` must be true.
pub fn candidacy(
    policies: &[CompiledPolicy],
    service: &ServiceView,
    node: &NodeView,
    has_local_endpoint: bool,
) -> Option<Candidacy> {
    match service.load_balancer_class.as_deref() {
        None | Some(L2_ANNOUNCER_CLASS) => {}
        Some(_) => return None,
    }
    if service.traffic_policy_local && !has_local_endpoint {
        return None;
    }
    let mut out = Candidacy::default();
    for policy in policies {
        if !policy.selects_node(&node.labels)
            || !policy.selects_service(&service.namespace, &service.name, &service.labels)
        {
            continue;
        }
        let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
        if policy.external_ips && node.external_ips_enabled {
            ips.extend(service.external_ips.iter().copied());
        }
        if policy.load_balancer_ips {
            ips.extend(service.load_balancer_ips.iter().copied());
        }
        let interfaces: Vec<&String> = node
            .selected_devices
            .iter()
            .filter(|d| policy.selects_interface(d))
            .collect();
        if ips.is_empty() || interfaces.is_empty() {
            continue;
        }
        out.policies.insert(policy.name.clone());
        for ip in &ips {
            for iface in &interfaces {
                out.entries.insert((*ip, (*iface).clone()));
            }
        }
    }
    (!out.entries.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CiliumL2AnnouncementPolicySpec, compile};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn policy(name: &str, yaml: &str) -> CompiledPolicy {
        let spec: CiliumL2AnnouncementPolicySpec = serde_yaml::from_str(yaml).expect("yaml");
        compile(name, &spec).expect("valid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn node(devices: &[&str]) -> NodeView {
        NodeView {
            labels: BTreeMap::new(),
            selected_devices: devices.iter().map(|s| s.to_string()).collect(),
            external_ips_enabled: true,
        }
    }

    fn service() -> ServiceView {
        ServiceView {
            namespace: "default".into(),
            name: "web".into(),
            labels: [("color".to_string(), "blue".to_string())].into(),
            external_ips: vec![ip("198.51.100.7")],
            load_balancer_ips: vec![ip("192.0.2.10"), ip("2001:db8::10")],
            ..Default::default()
        }
    }

    #[test]
    fn ip_kinds_follow_the_policy_flags() {
        let lb = policy("lb", "loadBalancerIPs: true");
        let c = candidacy(&[lb], &service(), &node(&["eth0"]), false).expect("candidate");
        assert_eq!(c.ips(), [ip("192.0.2.10"), ip("2001:db8::10")].into());
        let ext = policy("ext", "externalIPs: true");
        let c = candidacy(
            std::slice::from_ref(&ext),
            &service(),
            &node(&["eth0"]),
            false,
        )
        .expect("candidate");
        assert_eq!(c.ips(), [ip("198.51.100.7")].into());
        // Without --enable-external-ips, externalIPs are not announced.
        let mut n = node(&["eth0"]);
        n.external_ips_enabled = false;
        assert_eq!(candidacy(&[ext], &service(), &n, false), None);
        // A policy with neither flag announces nothing: no candidacy.
        assert_eq!(
            candidacy(&[policy("none", "{}")], &service(), &node(&["eth0"]), false),
            None
        );
    }

    #[test]
    fn load_balancer_class_other_than_ours_is_ignored() {
        let p = policy("p", "loadBalancerIPs: true");
        let mut s = service();
        s.load_balancer_class = Some("example.com/other".into());
        assert_eq!(
            candidacy(std::slice::from_ref(&p), &s, &node(&["eth0"]), false),
            None
        );
        s.load_balancer_class = Some(L2_ANNOUNCER_CLASS.into());
        assert!(candidacy(&[p], &s, &node(&["eth0"]), false).is_some());
    }

    #[test]
    fn interfaces_regexes_pick_among_selected_devices() {
        let p = policy("p", "loadBalancerIPs: true\ninterfaces: ['^eth[0-9]+']");
        let c = candidacy(&[p], &service(), &node(&["eth0", "eth1", "bond0"]), false)
            .expect("candidate");
        let ifaces: BTreeSet<&str> = c.entries.iter().map(|(_, i)| i.as_str()).collect();
        assert_eq!(ifaces, ["eth0", "eth1"].into());
        assert_eq!(c.entries.len(), 4);
        // No matching device: nothing to announce, no candidacy.
        let p = policy("p", "loadBalancerIPs: true\ninterfaces: ['^wlan']");
        assert_eq!(candidacy(&[p], &service(), &node(&["eth0"]), false), None);
    }

    #[test]
    fn selectors_and_traffic_policy() {
        let p = policy(
            "p",
            "loadBalancerIPs: true\nserviceSelector: {matchLabels: {color: red}}",
        );
        assert_eq!(candidacy(&[p], &service(), &node(&["eth0"]), false), None);
        let p = policy(
            "p",
            "loadBalancerIPs: true\nnodeSelector: {matchLabels: {l2: 'yes'}}",
        );
        assert_eq!(
            candidacy(
                std::slice::from_ref(&p),
                &service(),
                &node(&["eth0"]),
                false
            ),
            None
        );
        let mut n = node(&["eth0"]);
        n.labels.insert("l2".into(), "yes".into());
        assert!(candidacy(std::slice::from_ref(&p), &service(), &n, false).is_some());
        let mut local = service();
        local.traffic_policy_local = true;
        assert_eq!(candidacy(std::slice::from_ref(&p), &local, &n, false), None);
        assert!(candidacy(&[p], &local, &n, true).is_some());
    }

    #[test]
    fn several_policies_union_their_entries() {
        let a = policy("a", "loadBalancerIPs: true\ninterfaces: ['^eth0$']");
        let b = policy("b", "externalIPs: true\ninterfaces: ['^eth1$']");
        let c = candidacy(&[a, b], &service(), &node(&["eth0", "eth1"]), false).expect("candidate");
        assert!(c.entries.contains(&(ip("192.0.2.10"), "eth0".into())));
        assert!(c.entries.contains(&(ip("198.51.100.7"), "eth1".into())));
        assert!(!c.entries.contains(&(ip("198.51.100.7"), "eth0".into())));
        assert_eq!(c.policies, ["a".to_string(), "b".to_string()].into());
    }

    #[test]
    fn service_view_reads_ips_and_policy() {
        let svc: StoredService = serde_json::from_value(serde_json::json!({
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
    fn a_service_is_stored_with_what_the_view_reads() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": "web", "uid": "u-1",
                         "resourceVersion": "42", "generation": 3,
                         "labels": {"color": "blue"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"type": "LoadBalancer", "externalIPs": ["198.51.100.7"],
                     "externalTrafficPolicy": "Local", "loadBalancerClass": "io.cilium/l2-announcer",
                     "ports": [{"port": 80}], "selector": {"app": "web"}, "clusterIP": "10.0.0.1"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]},
                       "conditions": [{"type": "l2announcer.io/Announced", "status": "True",
                                       "reason": "Announced", "message": "announced by node n1 on eth0 (192.0.2.10)",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        });
        let mut svc: StoredService = serde_json::from_value(json).expect("service");
        keep_viewed(&mut svc);
        let v = service_view(&svc);
        assert_eq!(v.key(), "default/web");
        assert_eq!(v.uid, "u-1");
        assert_eq!(v.resource_version, "42");
        assert_eq!(v.generation, Some(3));
        assert_eq!(v.labels["color"], "blue");
        assert_eq!(v.external_ips, vec![ip("198.51.100.7")]);
        assert_eq!(v.load_balancer_ips, vec![ip("192.0.2.10")]);
        assert!(v.traffic_policy_local);
        assert_eq!(v.load_balancer_class.as_deref(), Some(L2_ANNOUNCER_CLASS));
        assert_eq!(v.conditions.len(), 1);
        assert!(svc.metadata.annotations.is_none() && svc.metadata.managed_fields.is_none());
        assert!(svc.metadata.labels.is_none());
        assert_eq!(svc.labels, [("color".to_string(), "blue".to_string())]);
    }

    #[test]
    fn the_stored_service_names_the_service_resource() {
        use kube::Resource as _;
        assert_eq!(
            StoredService::url_path(&(), Some("default")),
            Service::url_path(&(), Some("default"))
        );
        assert_eq!(StoredService::kind(&()), Service::kind(&()));
        assert_eq!(StoredService::api_version(&()), Service::api_version(&()));
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
            slice_key(&slice),
            Some(("default/web".to_string(), "web-1".to_string()))
        );
    }
}
