//! Policy edits and Service churn, running beside the faults:
//!
//! * two churn Services (`chaos-churn-0/1`, externalIPs 192.0.2.12N and
//!   2001:db8::12N, labelled `chaos: churn`) created and deleted;
//! * the policy `chaos-churn` that selects them moved between node sets
//!   (node-1 only, node-2 only, both), so their claims hand over;
//! * the reference policy's interface list rewritten between two forms
//!   that both match `eth0` (`^eth[0-9]+`, `^eth0$`): an edit that must
//!   change nothing for the Services it selects.
//!
//! Their IPs are probed and judged for split brain and foreign
//! announcements; their gaps are expected (that is what churn does) and
//! not judged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde::Serialize;

use crate::lab::objects::{POLICY, policies};
use crate::lab::{Lab, LabError, lease_name};
use crate::poll::{WaitError, wait_for};
use crate::probe::monotonic_ns;

/// The churn Services: name, IPv4, IPv6.
pub const SERVICES: [(&str, Ipv4Addr, Ipv6Addr); 2] = [
    (
        "chaos-churn-0",
        Ipv4Addr::new(192, 0, 2, 120),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x120),
    ),
    (
        "chaos-churn-1",
        Ipv4Addr::new(192, 0, 2, 121),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x121),
    ),
];

/// The policy selecting the churn Services.
pub const CHURN_POLICY: &str = "chaos-churn";

/// Every churn IP with the Lease of its Service.
pub fn claims() -> Vec<(IpAddr, String)> {
    SERVICES
        .iter()
        .flat_map(|(name, v4, v6)| {
            [
                (IpAddr::V4(*v4), lease_name(name)),
                (IpAddr::V6(*v6), lease_name(name)),
            ]
        })
        .collect()
}

/// The churn Services' IPs with their claims (node-heartbeat record).
pub fn service_claims() -> Vec<(IpAddr, String)> {
    SERVICES
        .iter()
        .flat_map(|(name, v4, v6)| {
            [
                (IpAddr::V4(*v4), format!("default/{name}")),
                (IpAddr::V6(*v6), format!("default/{name}")),
            ]
        })
        .collect()
}

/// One churn action, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChurnAction {
    pub at_ns: u64,
    pub what: String,
    /// The API's answer when it refused (e.g. during an API fault).
    pub error: Option<String>,
}

fn api_err(e: kube::Error) -> LabError {
    LabError::Api(e.to_string())
}

fn churn_policy(nodes: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "cilium.io/v2alpha1",
        "kind": "CiliumL2AnnouncementPolicy",
        "metadata": {"name": CHURN_POLICY},
        "spec": {
            "serviceSelector": {"matchLabels": {"chaos": "churn"}},
            "nodeSelector": {"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}
            ]},
            "interfaces": ["^eth0$"],
            "externalIPs": true,
            "loadBalancerIPs": true,
        }
    })
}

fn churn_service(name: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"chaos": "churn"}},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": "web"},
            "externalIPs": [v4.to_string(), v6.to_string()],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        }
    })
}

/// The node sets the churn policy moves between.
const NODE_SETS: [&[&str]; 3] = [&["node-1"], &["node-2"], &["node-1", "node-2"]];
/// The two forms of the reference policy's interface list.
const INTERFACES: [&str; 2] = ["^eth[0-9]+", "^eth0$"];

/// Creates the churn policy and Services.
pub fn set_up(lab: &Lab) -> Result<(), LabError> {
    let client = lab.client();
    lab.block_on(async {
        let policy: DynamicObject = serde_json::from_value(churn_policy(NODE_SETS[2]))
            .map_err(|e| LabError::Api(e.to_string()))?;
        policies(client.clone())
            .create(&PostParams::default(), &policy)
            .await
            .map_err(api_err)?;
        let services = Api::<Service>::namespaced(client, "default");
        for (name, v4, v6) in SERVICES {
            let svc: Service = serde_json::from_value(churn_service(name, v4, v6))
                .map_err(|e| LabError::Api(e.to_string()))?;
            services
                .create(&PostParams::default(), &svc)
                .await
                .map_err(api_err)?;
        }
        Ok(())
    })
}

/// Churns until `stop` is set, an action every 1–3 s chosen by `rng`;
/// every action done.
pub fn run(lab: &Lab, rng: &mut fastrand::Rng, stop: &AtomicBool) -> Vec<ChurnAction> {
    let mut log = Vec::new();
    let mut present = [true; SERVICES.len()];
    let mut node_set = 2;
    let mut interfaces = 0;
    let client = lab.client();
    let services = Api::<Service>::namespaced(client.clone(), "default");
    let policies = policies(client);
    while !stop.load(Ordering::SeqCst) {
        // The dwell between actions, cut short by `stop`.
        let dwell = Duration::from_millis(rng.u64(1_000..3_000));
        let waited = wait_for("the end of the chaos run", dwell, || {
            stop.load(Ordering::SeqCst).then_some(())
        });
        // Stopped or interrupted; a timeout is the dwell run out.
        if !matches!(waited, Err(WaitError::Timeout { .. })) {
            break;
        }
        let at_ns = monotonic_ns();
        let (what, result) = match rng.u8(0..3) {
            0 => {
                let i = rng.usize(..SERVICES.len());
                let (name, v4, v6) = SERVICES[i];
                if present[i] {
                    let r = lab.block_on(services.delete(name, &DeleteParams::default()));
                    present[i] = r.is_err() && present[i];
                    (format!("delete Service {name}"), r.map(drop))
                } else {
                    let r = serde_json::from_value::<Service>(churn_service(name, v4, v6))
                        .map_err(kube::Error::SerdeError)
                        .and_then(|svc| {
                            lab.block_on(services.create(&PostParams::default(), &svc))
                        });
                    present[i] = r.is_ok();
                    (format!("create Service {name}"), r.map(drop))
                }
            }
            1 => {
                node_set = (node_set + 1 + rng.usize(..NODE_SETS.len() - 1)) % NODE_SETS.len();
                let nodes = NODE_SETS[node_set];
                let patch = serde_json::json!({"spec": {"nodeSelector": churn_policy(nodes)["spec"]["nodeSelector"]}});
                let r = lab.block_on(policies.patch(
                    CHURN_POLICY,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ));
                (
                    format!("policy {CHURN_POLICY} to nodes {nodes:?}"),
                    r.map(drop),
                )
            }
            _ => {
                interfaces = 1 - interfaces;
                let patch = serde_json::json!({"spec": {"interfaces": [INTERFACES[interfaces]]}});
                let r = lab.block_on(policies.patch(
                    POLICY,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ));
                (
                    format!("policy {POLICY} interfaces to [{}]", INTERFACES[interfaces]),
                    r.map(drop),
                )
            }
        };
        if let Err(e) = &result {
            tracing::info!(action = %what, error = %e, "churn action refused");
        }
        log.push(ChurnAction {
            at_ns,
            what,
            error: result.err().map(|e| e.to_string()),
        });
    }
    log
}
