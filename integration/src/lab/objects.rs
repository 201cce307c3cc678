//! The Kubernetes objects a lab starts with: deploy/'s CRD, the namespace
//! `kube-system`, three Nodes (node-3 labelled control-plane), the
//! reference policy (deploy/examples/l2-policy.yaml: Services labelled
//! `color: blue`, nodes without `node-role.kubernetes.io/control-plane`)
//! and the two example Services (deploy/examples/service-*.yaml), the
//! LoadBalancer one with 192.0.2.100 and 2001:db8::100 in its status.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};

use super::{LB_SERVICE, LB_V4, LB_V6, LabError, NODES};
use crate::poll::wait_until;

const CRD_YAML: &str = include_str!("../../../deploy/crd/ciliuml2announcementpolicies.yaml");
const POLICY_YAML: &str = include_str!("../../../deploy/examples/l2-policy.yaml");
const LB_YAML: &str = include_str!("../../../deploy/examples/service-loadbalancer.yaml");
const EXT_YAML: &str = include_str!("../../../deploy/examples/service-externalips.yaml");

/// The name of the reference policy.
pub const POLICY: &str = "policy1";

pub(super) fn api_err(e: impl std::fmt::Display) -> LabError {
    LabError::Api(e.to_string())
}

/// The CiliumL2AnnouncementPolicy resource.
pub fn policy_resource() -> ApiResource {
    ApiResource {
        group: "cilium.io".into(),
        version: "v2alpha1".into(),
        api_version: "cilium.io/v2alpha1".into(),
        kind: "CiliumL2AnnouncementPolicy".into(),
        plural: "ciliuml2announcementpolicies".into(),
    }
}

/// The policies of the cluster.
pub fn policies(client: kube::Client) -> Api<DynamicObject> {
    Api::all_with(client, &policy_resource())
}

fn already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Creates what every lab cluster has: deploy/'s CRD, the namespace
/// `kube-system`, Nodes `node-1..node-<nodes>` of which the last carries
/// `node-role.kubernetes.io/control-plane` (so the reference policy never
/// selects it), and the reference policy. The lab adds its two Services;
/// the control-plane benchmark (crate::bench_lab) its own.
pub fn apply_cluster(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    nodes: usize,
) -> Result<(), LabError> {
    let pp = PostParams::default();
    rt.block_on(async {
        let crd: CustomResourceDefinition = serde_yaml::from_str(CRD_YAML).map_err(api_err)?;
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&pp, &crd)
            .await
            .map_err(api_err)?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kube-system"}
        }))
        .map_err(api_err)?;
        if let Err(e) = Api::<Namespace>::all(client.clone()).create(&pp, &ns).await
            && !already_exists(&e)
        {
            return Err(api_err(e));
        }
        for i in 1..=nodes {
            let mut labels = serde_json::json!({
                "kubernetes.io/hostname": format!("node-{i}"),
                "kubernetes.io/os": "linux",
            });
            if i == nodes {
                labels["node-role.kubernetes.io/control-plane"] = serde_json::json!("");
            }
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("node-{i}"), "labels": labels}
            }))
            .map_err(api_err)?;
            Api::<Node>::all(client.clone())
                .create(&pp, &node)
                .await
                .map_err(api_err)?;
        }
        Ok::<_, LabError>(())
    })?;
    // The CRD starts serving its kind right after creation; retry briefly.
    let policy: DynamicObject = serde_yaml::from_str(POLICY_YAML).map_err(api_err)?;
    let api = policies(client.clone());
    wait_until::<_, LabError>(
        "the policy to be accepted",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || match rt.block_on(api.create(&pp, &policy)) {
            Ok(_) => Ok(Some(())),
            Err(e) => {
                tracing::debug!(error = %e, "policy not accepted yet");
                Ok(None)
            }
        },
    )?;
    Ok(())
}

/// Creates every object on the lab's API server.
pub(super) fn apply(rt: &tokio::runtime::Runtime, client: &kube::Client) -> Result<(), LabError> {
    let pp = PostParams::default();
    apply_cluster(rt, client, NODES)?;
    rt.block_on(async {
        let services = Api::<Service>::namespaced(client.clone(), "default");
        for yaml in [LB_YAML, EXT_YAML] {
            let mut svc: Service = serde_yaml::from_str(yaml).map_err(api_err)?;
            svc.status = None;
            services.create(&pp, &svc).await.map_err(api_err)?;
        }
        let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [
            {"ip": LB_V4.to_string()}, {"ip": LB_V6.to_string()}
        ]}}});
        services
            .patch_status(LB_SERVICE, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err)?;
        Ok(())
    })
}
