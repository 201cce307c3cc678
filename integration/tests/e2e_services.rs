//! End-to-end tests on the lab for what a Service asks of the announcer
//! beyond its IPs: `externalTrafficPolicy: Local` (the announcer follows
//! the ready endpoint), Services sharing an IP under policies that select
//! different nodes (one claim, announced only by a node selected for every
//! member), and the `l2announcer.io/Announced` condition on the Service.
//!
//! Real agents, ARP probes from the client namespace every 10 ms, the
//! test API server's request log. One lab at a time (see e2e_lab.rs).

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use integration::lab::{self, LB_SERVICE, Lab, LabConfig, RETRY_PERIOD};
use integration::poll::wait_until;
use integration::probe::monotonic_ns;
use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

const CONDITION: &str = "l2announcer.io/Announced";
const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

fn services(lab: &Lab) -> Api<Service> {
    Api::namespaced(lab.client(), "default")
}

fn create_service(lab: &Lab, name: &str, labels: serde_json::Value, spec: serde_json::Value) {
    let mut full = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
    if let (Some(f), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        f.extend(extra.clone());
    }
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": full
    }))
    .expect("service");
    lab.block_on(services(lab).create(&PostParams::default(), &svc))
        .expect("create service");
}

/// A one-endpoint EndpointSlice of `service` on `node`.
fn endpoint_slice(service: &str, node: &str, ready: bool) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.51.100.20"], "nodeName": node,
                       "conditions": {"ready": ready}}],
        "ports": [{"port": 80, "protocol": "TCP"}]
    })
}

fn apply_slice(lab: &Lab, slice: serde_json::Value) {
    let api: Api<EndpointSlice> = Api::namespaced(lab.client(), "default");
    let name = slice["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let pp = PatchParams::apply("e2e-test").force();
    lab.block_on(api.patch(&name, &pp, &Patch::Apply(&slice)))
        .expect("apply EndpointSlice");
}

fn condition(lab: &Lab, service: &str) -> Option<Condition> {
    let svc = lab
        .block_on(services(lab).get(service))
        .expect("get service");
    svc.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == CONDITION)
}

/// Waits until the Service's condition satisfies `ok`, returning it.
fn wait_condition(
    lab: &Lab,
    service: &str,
    what: &str,
    ok: impl Fn(&Condition) -> bool,
) -> Condition {
    wait_until::<_, lab::LabError>(what, WAIT, POLL, || {
        Ok(condition(lab, service).filter(|c| ok(c)))
    })
    .unwrap_or_else(|e| panic!("{e}: last {:?}", condition(lab, service)))
}

/// The Warning events of `service` with `reason`.
fn warnings(lab: &Lab, service: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(lab.client(), "default");
    lab.block_on(api.list(&ListParams::default()))
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(service)
                && e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
        })
        .collect()
}

/// Waits until `mac` answers ARP for `vip` (arping from the client).
fn wait_answered_by(lab: &Lab, vip: Ipv4Addr, mac: [u8; 6]) {
    wait_until::<_, lab::LabError>("the VIP answered", WAIT, POLL, || {
        Ok(lab.arping(vip, 1)?.contains(&mac).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{vip}: {e}"));
}

fn wait_unanswered(lab: &Lab, vip: Ipv4Addr) {
    wait_until::<_, lab::LabError>("nobody to answer", WAIT, POLL, || {
        Ok(lab.arping(vip, 2)?.is_empty().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{vip}: {e}"));
}

fn wait_holder_is(lab: &Lab, service: &str, node: &str) {
    wait_until::<_, lab::LabError>("the holder", WAIT, POLL, || {
        Ok((lab.holder(service)?.as_deref() == Some(node)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{service} held by {node}: {e}"));
}

#[test]
fn external_traffic_policy_local_follows_the_ready_endpoint() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&LabConfig::unique(lab::debug_agent())).expect("lab up");
    let vip = Ipv4Addr::new(192, 0, 2, 130);
    let (mac1, mac2) = (
        lab.state.mac("node-1").expect("mac"),
        lab.state.mac("node-2").expect("mac"),
    );
    apply_slice(&lab, endpoint_slice("web-local", "node-2", true));
    create_service(
        &lab,
        "web-local",
        json!({"color": "blue"}),
        json!({"externalTrafficPolicy": "Local", "externalIPs": [vip.to_string()]}),
    );
    // Only node-2 has a ready endpoint: only node-2 may announce.
    wait_holder_is(&lab, "web-local", "node-2");
    let probe = lab.probe(vip, Duration::from_millis(10)).expect("probe");
    probe.wait_answers(mac2, 0, 10).expect("node-2 answers");
    wait_condition(&lab, "web-local", "Announced by node-2", |c| {
        c.status == "True" && c.message.starts_with("announced by node node-2 ")
    });

    // The endpoint moves to node-1: node-1 takes over, at most a retry
    // period without an answer, never two MACs.
    let t_move = monotonic_ns();
    apply_slice(&lab, endpoint_slice("web-local", "node-1", true));
    probe
        .wait_answers(mac1, t_move, 30)
        .expect("node-1 answers");
    let probes = probe.stop(Duration::from_millis(100)).expect("stop");
    let t = lab::takeover(&probes, mac2, t_move);
    eprintln!(
        "endpoint move: outage {} ms, {} unanswered of {}",
        t.outage_ns / 1_000_000,
        t.unanswered,
        t.requests
    );
    assert_eq!(t.new_mac, Some(mac1), "{t:?}");
    assert_eq!(t.doubly_answered, 0, "two MACs answered one probe: {t:?}");
    assert!(
        t.outage_ns <= RETRY_PERIOD.as_nanos() as u64,
        "{} ms without an answer, more than the retry period",
        t.outage_ns / 1_000_000
    );
    wait_holder_is(&lab, "web-local", "node-1");
    wait_condition(&lab, "web-local", "Announced by node-1", |c| {
        c.status == "True" && c.message.starts_with("announced by node node-1 ")
    });

    // No ready endpoint anywhere: nobody announces, and the Service says why.
    apply_slice(&lab, endpoint_slice("web-local", "node-1", false));
    wait_unanswered(&lab, vip);
    let c = wait_condition(&lab, "web-local", "NoReadyEndpoint", |c| {
        c.status == "False" && c.reason == "NoReadyEndpoint"
    });
    assert!(c.message.contains("no node has a ready endpoint"), "{c:?}");
    let events = wait_until::<_, lab::LabError>("the Warning event", WAIT, POLL, || {
        let e = warnings(&lab, "web-local", "NoReadyEndpoint");
        Ok((!e.is_empty()).then_some(e))
    })
    .expect("event");
    let note = events[0].message.clone().unwrap_or_default();
    assert!(note.contains("externalTrafficPolicy is Local"), "{note}");
    for node in ["node-1", "node-2", "node-3"] {
        let rows = lab.state.statedb(node, "l2-announce").expect("statedb");
        assert!(
            !rows.contains("192.0.2.130 "),
            "{node} still has a row:\n{rows}"
        );
    }
    lab.down();
}

#[test]
fn services_sharing_an_ip_are_announced_only_by_a_node_selected_for_all() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&LabConfig::unique(lab::debug_agent())).expect("lab up");
    let vip = Ipv4Addr::new(192, 0, 2, 140);
    let (mac1, mac2) = (
        lab.state.mac("node-1").expect("mac"),
        lab.state.mac("node-2").expect("mac"),
    );
    // Two policies selecting disjoint nodes: label share=a on node-1 only,
    // share=b on node-2 only.
    let policies = integration::lab::objects::policies(lab.client());
    for (name, share, node) in [
        ("only-node-1", "a", "node-1"),
        ("only-node-2", "b", "node-2"),
    ] {
        let p: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
            "metadata": {"name": name},
            "spec": {
                "serviceSelector": {"matchLabels": {"share": share}},
                "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
                "interfaces": ["^eth0$"],
                "externalIPs": true
            }
        }))
        .expect("policy");
        lab.block_on(policies.create(&PostParams::default(), &p))
            .expect("create policy");
    }
    // Alone, shared-a is announced by node-1, the only node selected.
    create_service(
        &lab,
        "shared-a",
        json!({"share": "a"}),
        json!({"externalIPs": [vip.to_string()]}),
    );
    wait_answered_by(&lab, vip, mac1);
    let probe = lab.probe(vip, Duration::from_millis(10)).expect("probe");
    probe.wait_answers(mac1, 0, 5).expect("node-1 answers");
    wait_condition(&lab, "shared-a", "Announced by node-1", |c| {
        c.status == "True" && c.message.starts_with("announced by node node-1 ")
    });

    // shared-b, selected on node-2 only, shares the IP: one claim, and no
    // node is selected for both, so nobody may announce it.
    create_service(
        &lab,
        "shared-b",
        json!({"share": "b"}),
        json!({"externalIPs": [vip.to_string()]}),
    );
    for svc in ["shared-a", "shared-b"] {
        let e = wait_until::<_, lab::LabError>("the Warning event", WAIT, POLL, || {
            let e = warnings(&lab, svc, "SharedIPNotSelected");
            Ok((!e.is_empty()).then_some(e))
        })
        .unwrap_or_else(|e| panic!("{svc}: {e}"));
        let note = e[0].message.clone().unwrap_or_default();
        assert!(note.contains("selected for every Service"), "{note}");
    }
    wait_unanswered(&lab, vip);
    let c = wait_condition(&lab, "shared-a", "SharedIPNotSelected", |c| {
        c.status == "False"
    });
    assert_eq!(c.reason, "SharedIPNotSelected", "{c:?}");
    for node in ["node-1", "node-2"] {
        let rows = lab.state.statedb(node, "l2-announce").expect("statedb");
        assert!(!rows.contains("192.0.2.140 "), "{node}:\n{rows}");
    }

    // shared-b selected on node-1 too (label share=a): node-1 is selected
    // for both and announces the IP for both Services.
    let t_fix = monotonic_ns();
    let relabel = json!({"metadata": {"labels": {"share": "a"}}});
    lab.block_on(services(&lab).patch(
        "shared-b",
        &PatchParams::default(),
        &Patch::Merge(&relabel),
    ))
    .expect("relabel");
    probe.wait_answers(mac1, t_fix, 10).expect("node-1 again");
    for svc in ["shared-a", "shared-b"] {
        wait_condition(&lab, svc, "Announced by node-1", |c| {
            c.status == "True" && c.message.starts_with("announced by node node-1 ")
        });
    }
    let probes = probe.stop(Duration::from_millis(100)).expect("stop");
    // Never two MACs on the shared IP, and never node-2's.
    let t = lab::takeover(&probes, mac1, 0);
    assert_eq!(t.doubly_answered, 0, "{t:?}");
    assert!(
        probes
            .iter()
            .all(|p| p.replies.iter().all(|(_, m)| *m != mac2)),
        "node-2 answered the shared IP"
    );
    lab.down();
}

/// `kubectl` with the lab's kubeconfig.
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_service_shows_its_announcer_through_kubectl() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&LabConfig::unique(lab::debug_agent())).expect("lab up");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    lab.apiserver()
        .expect("api server")
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig");
    let old = lab
        .wait_holder(LB_SERVICE, None, WAIT)
        .expect("holder of web-blue");
    let c = wait_condition(&lab, LB_SERVICE, "Announced", |c| c.status == "True");
    assert!(
        c.message.starts_with(&format!("announced by node {old} ")),
        "{c:?}"
    );
    assert!(c.message.contains("eth0"), "interfaces: {c:?}");
    assert_eq!(c.reason, "Announced");
    let yaml = kubectl(
        &kubeconfig,
        &["get", "service", LB_SERVICE, "-n", "default", "-o", "yaml"],
    );
    assert!(yaml.contains("type: l2announcer.io/Announced"), "{yaml}");
    assert!(
        yaml.contains(&format!("announced by node {old} ")),
        "{yaml}"
    );
    let described = kubectl(
        &kubeconfig,
        &["describe", "service", LB_SERVICE, "-n", "default"],
    );
    assert!(
        described.contains(&format!("node {old} announces")),
        "{described}"
    );

    // SIGKILL the holder: the survivor writes the condition with its name.
    lab.kill(&old, libc::SIGKILL).expect("kill");
    let new = lab
        .wait_holder(LB_SERVICE, Some(&old), WAIT)
        .expect("new holder");
    wait_condition(&lab, LB_SERVICE, "Announced by the new holder", |c| {
        c.status == "True" && c.message.starts_with(&format!("announced by node {new} "))
    });
    let yaml = kubectl(
        &kubeconfig,
        &["get", "service", LB_SERVICE, "-n", "default", "-o", "yaml"],
    );
    assert!(
        yaml.contains(&format!("announced by node {new} ")),
        "{yaml}"
    );

    // Written only on change: a handful of status patches by the agents
    // for the lab's two Services and one failover, all allowed (2xx, or
    // 409 for a release that found the new holder's condition).
    let is_agent = |ua: &str| {
        ["node-1", "node-2", "node-3"]
            .iter()
            .any(|n| ua.contains(&lab::agent_user_agent(n)))
    };
    let patches: Vec<_> = lab
        .request_log()
        .into_iter()
        .filter(|r| {
            r.resource == "services"
                && r.subresource == "status"
                && r.verb == "patch"
                && is_agent(&r.user_agent)
        })
        .collect();
    assert!(!patches.is_empty(), "no status patches by the agents");
    assert!(
        patches.len() <= 8,
        "{} status patches for 2 Services and 1 failover: {patches:?}",
        patches.len()
    );
    for p in &patches {
        assert!(p.code < 300 || p.code == 409, "{p:?}");
    }
    lab.down();
}
