//! deploy/'s CRD is generated from the Rust type; this keeps them identical.
//! Regenerate with `L2A_UPDATE_CRD=1 cargo test -p actors --test crd`.

use actors::policy::CiliumL2AnnouncementPolicy;
use kube::CustomResourceExt;

const HEADER: &str = "# Generated from actors::policy::CiliumL2AnnouncementPolicy; do not edit.\n# Regenerate: L2A_UPDATE_CRD=1 cargo test -p actors --test crd\n";

#[test]
fn deploy_crd_is_generated_from_the_type() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/crd/ciliuml2announcementpolicies.yaml"
    );
    let generated = format!(
        "{HEADER}{}",
        serde_yaml::to_string(&CiliumL2AnnouncementPolicy::crd()).expect("serialize CRD")
    );
    if std::env::var_os("L2A_UPDATE_CRD").is_some() {
        std::fs::write(path, &generated).expect("write CRD");
    }
    let on_disk = std::fs::read_to_string(path).expect("read CRD");
    assert!(
        on_disk == generated,
        "{path} differs from the type; run L2A_UPDATE_CRD=1 cargo test -p actors --test crd"
    );
}

#[test]
fn crd_matches_ciliums_names() {
    let crd = CiliumL2AnnouncementPolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("ciliuml2announcementpolicies.cilium.io")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "CiliumL2AnnouncementPolicy");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["l2announcement".to_string()])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v2alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let schema = serde_json::to_value(&version.schema).expect("schema");
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in [
        "serviceSelector",
        "nodeSelector",
        "interfaces",
        "externalIPs",
        "loadBalancerIPs",
    ] {
        assert!(spec.get(field).is_some(), "spec.{field} in the schema");
    }
}
