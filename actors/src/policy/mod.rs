//! The `CiliumL2AnnouncementPolicy` resource (`cilium.io/v2alpha1`) and its
//! compilation: selectors and interface regexes are checked once, giving
//! either a [`CompiledPolicy`] to evaluate Services and devices against, or
//! the status conditions that say what is wrong.

mod actor;

pub use actor::{FIELD_MANAGER, NoPolicyObserver, PolicyActor, PolicyObserver};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::k8s::selector::Selector;

/// Condition types a policy's status carries, as Cilium names them.
pub const BAD_SERVICE_SELECTOR: &str = "io.cilium/bad-service-selector";
pub const BAD_NODE_SELECTOR: &str = "io.cilium/bad-node-selector";
pub const BAD_INTERFACE_REGEX: &str = "io.cilium/bad-interface-regex";
pub const CONDITION_TYPES: [&str; 3] =
    [BAD_SERVICE_SELECTOR, BAD_NODE_SELECTOR, BAD_INTERFACE_REGEX];

/// Label keys that select on a Service's metadata rather than its labels.
pub const SERVICE_NAMESPACE_LABEL: &str = "io.kubernetes.service.namespace";
pub const SERVICE_NAME_LABEL: &str = "io.kubernetes.service.name";

/// The policy spec: which Services, from which nodes, on which interfaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2alpha1",
    kind = "CiliumL2AnnouncementPolicy",
    plural = "ciliuml2announcementpolicies",
    singular = "ciliuml2announcementpolicy",
    shortname = "l2announcement",
    category = "cilium",
    status = "CiliumL2AnnouncementPolicyStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CiliumL2AnnouncementPolicySpec {
    /// Selects the Services announced under this policy; absent selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Selects the nodes that may announce; absent selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Regular expressions (Go syntax, unanchored) of interface names to
    /// announce on; absent or empty uses every selected device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Announce the Services' `spec.externalIPs`.
    #[serde(
        default,
        rename = "externalIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ips: Option<bool>,
    /// Announce the Services' `status.loadBalancer.ingress` IPs.
    #[serde(
        default,
        rename = "loadBalancerIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ips: Option<bool>,
}

/// The policy status: conditions that report invalid parts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CiliumL2AnnouncementPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A validated policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    pub service_selector: Selector,
    pub node_selector: Selector,
    pub interfaces: Vec<Regex>,
    pub external_ips: bool,
    pub load_balancer_ips: bool,
}

/// What a policy's compilation found wrong, per condition type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyProblems {
    /// Condition type -> message, for each invalid part.
    pub by_condition: BTreeMap<&'static str, String>,
}

impl PolicyProblems {
    pub fn is_empty(&self) -> bool {
        self.by_condition.is_empty()
    }
}

/// Compiles a policy; every invalid part is reported, not only the first.
pub fn compile(
    name: &str,
    spec: &CiliumL2AnnouncementPolicySpec,
) -> Result<CompiledPolicy, PolicyProblems> {
    let mut problems = PolicyProblems::default();
    let service_selector = Selector::compile(spec.service_selector.as_ref())
        .map_err(|e| problems.by_condition.insert(BAD_SERVICE_SELECTOR, e.0))
        .ok();
    let node_selector = Selector::compile(spec.node_selector.as_ref())
        .map_err(|e| problems.by_condition.insert(BAD_NODE_SELECTOR, e.0))
        .ok();
    let mut interfaces = Vec::new();
    for pattern in spec.interfaces.iter().flatten() {
        match Regex::new(pattern) {
            Ok(re) => interfaces.push(re),
            Err(e) => {
                problems.by_condition.insert(
                    BAD_INTERFACE_REGEX,
                    format!(
                        "error parsing regexp {pattern:?}: {}",
                        one_line(&e.to_string())
                    ),
                );
                break;
            }
        }
    }
    match (service_selector, node_selector, problems.is_empty()) {
        (Some(service_selector), Some(node_selector), true) => Ok(CompiledPolicy {
            name: name.to_string(),
            service_selector,
            node_selector,
            interfaces,
            external_ips: spec.external_ips.unwrap_or(false),
            load_balancer_ips: spec.load_balancer_ips.unwrap_or(false),
        }),
        _ => Err(problems),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl CompiledPolicy {
    /// Whether the interface regexes allow `device` (none given: all do).
    pub fn selects_interface(&self, device: &str) -> bool {
        self.interfaces.is_empty() || self.interfaces.iter().any(|re| re.is_match(device))
    }

    /// Whether this node may announce under this policy.
    pub fn selects_node(&self, node_labels: &BTreeMap<String, String>) -> bool {
        self.node_selector.matches(node_labels)
    }

    /// Whether the Service is selected: its labels plus the two metadata
    /// keys Cilium adds (`io.kubernetes.service.namespace` / `.name`).
    pub fn selects_service(
        &self,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let mut all = labels.clone();
        all.insert(SERVICE_NAMESPACE_LABEL.to_string(), namespace.to_string());
        all.insert(SERVICE_NAME_LABEL.to_string(), name.to_string());
        self.service_selector.matches(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn reference_example() -> CiliumL2AnnouncementPolicySpec {
        serde_yaml::from_str(
            r#"
serviceSelector:
  matchLabels:
    color: blue
nodeSelector:
  matchExpressions:
    - key: node-role.kubernetes.io/control-plane
      operator: DoesNotExist
interfaces:
- ^eth[0-9]+
externalIPs: true
loadBalancerIPs: true
"#,
        )
        .expect("the reference example parses")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reference_example_compiles_and_selects() {
        let p = compile("policy1", &reference_example()).expect("valid");
        assert!(p.external_ips && p.load_balancer_ips);
        assert!(p.selects_interface("eth0"));
        assert!(p.selects_interface("eth0.100")); // unanchored at the end, like Go
        assert!(!p.selects_interface("veth12"));
        assert!(!p.selects_interface("wlan0"));
        assert!(p.selects_node(&labels(&[])));
        assert!(!p.selects_node(&labels(&[("node-role.kubernetes.io/control-plane", "")])));
        assert!(p.selects_service("default", "svc", &labels(&[("color", "blue")])));
        assert!(!p.selects_service("default", "svc", &labels(&[("color", "red")])));
    }

    #[test]
    fn metadata_keys_select_by_namespace_and_name() {
        let spec = CiliumL2AnnouncementPolicySpec {
            service_selector: Some(LabelSelector {
                match_labels: Some(labels(&[(SERVICE_NAME_LABEL, "deathstar")])),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: SERVICE_NAMESPACE_LABEL.into(),
                    operator: "In".into(),
                    values: Some(vec!["default".into()]),
                }]),
            }),
            ..Default::default()
        };
        let p = compile("p", &spec).expect("valid");
        assert!(p.selects_service("default", "deathstar", &labels(&[])));
        assert!(!p.selects_service("other", "deathstar", &labels(&[])));
        assert!(!p.selects_service("default", "xwing", &labels(&[])));
        assert!(!p.external_ips && !p.load_balancer_ips);
    }

    #[test]
    fn every_invalid_part_is_reported() {
        let mut spec = reference_example();
        spec.interfaces = Some(vec!["eth[".into()]);
        spec.service_selector = Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "something".into(),
                operator: "NotIn".into(),
                values: None,
            }]),
        });
        let problems = compile("p", &spec).expect_err("invalid");
        assert_eq!(problems.by_condition.len(), 2);
        assert!(problems.by_condition[BAD_SERVICE_SELECTOR].contains("values set can't be empty"));
        assert!(
            problems.by_condition[BAD_INTERFACE_REGEX].starts_with("error parsing regexp \"eth[\"")
        );
        assert!(!problems.by_condition[BAD_INTERFACE_REGEX].contains('\n'));
    }
}
