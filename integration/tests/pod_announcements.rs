//! L2 pod announcements end to end on the lab (integration::lab): the real
//! agents run with `--enable-l2-pod-announcements
//! --l2-pod-announcements-interface eth0`; pods with addresses are created
//! through the test API server (status written through the status
//! subresource, as a kubelet does), and the client's tcpdump shows which
//! node sent gratuitous ARP / unsolicited NA for which address.
//!
//! Needs root and `target/debug/l2announcer` (built by
//! `cargo build -p l2announcer`, or `cargo xtask test`). The lab is built
//! with a unique name and removed on drop; one lab at a time (a lock), as
//! every lab puts 198.51.100.254 on its bridge in the host namespace.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use integration::lab::{Announcement, AnnouncementKind, Capture, Lab, LabConfig, LabError};
use integration::poll::wait_until;
use integration::probe::monotonic_ns;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn agent_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let bin = target.join("debug/l2announcer");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p l2announcer` first",
        bin.display()
    );
    bin
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Creates pod `name` on `node` (host network or not), then gives it
/// `ips` (phase Running) through the status subresource.
fn create_pod(lab: &Lab, name: &str, node: &str, host_network: bool, ips: &[&str]) {
    let pods: Api<Pod> = Api::namespaced(lab.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    }))
    .expect("pod");
    lab.block_on(pods.create(&PostParams::default(), &pod))
        .expect("create pod");
    set_pod_ips(lab, name, ips);
}

/// Writes `status.podIPs` (and `podIP`, the first) of pod `name`.
fn set_pod_ips(lab: &Lab, name: &str, ips: &[&str]) {
    let pods: Api<Pod> = Api::namespaced(lab.client(), "default");
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ips.first(),
        "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
    }});
    lab.block_on(pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
        .expect("patch pod status");
}

/// Waits until the capture holds a gratuitous ARP for `v4` and an
/// unsolicited NA for `v6`, both from `mac` and later than `after_ns`.
fn wait_pod_announced(
    capture: &Capture,
    v4: &str,
    v6: &str,
    mac: [u8; 6],
    after_ns: u64,
) -> Vec<Announcement> {
    let (v4, v6) = match (ip(v4), ip(v6)) {
        (IpAddr::V4(a), IpAddr::V6(b)) => (a, b),
        other => panic!("not a v4/v6 pair: {other:?}"),
    };
    capture
        .wait_announced(v4, v6, mac, after_ns, Duration::from_secs(10))
        .expect("pod addresses announced")
}

/// Announcements for `addr` (any sender).
fn for_address<'a>(all: &'a [Announcement], addr: &str) -> Vec<&'a Announcement> {
    let addr = ip(addr);
    all.iter().filter(|a| a.ip == addr).collect()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn each_node_announces_its_own_pods_addresses_only() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&LabConfig::unique(agent_bin())).expect("lab up");
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = lab.capture(&dir.path().join("pods.pcap")).expect("capture");
    let mac1 = lab.state.mac("node-1").expect("mac");
    let mac2 = lab.state.mac("node-2").expect("mac");

    // Created in this order: once node-1's announcements of web-1 are
    // captured, its agent has seen (and not announced) the host-network
    // pod created before it, as a watch delivers events in order.
    let t0 = monotonic_ns();
    create_pod(&lab, "host-1", "node-1", true, &["192.0.2.52"]);
    create_pod(
        &lab,
        "web-2",
        "node-2",
        false,
        &["192.0.2.51", "2001:db8::51"],
    );
    create_pod(
        &lab,
        "web-1",
        "node-1",
        false,
        &["192.0.2.50", "2001:db8::50"],
    );
    wait_pod_announced(&capture, "192.0.2.50", "2001:db8::50", mac1, t0);
    let seen = wait_pod_announced(&capture, "192.0.2.51", "2001:db8::51", mac2, t0);
    for (addr, owner) in [
        ("192.0.2.50", mac1),
        ("2001:db8::50", mac1),
        ("192.0.2.51", mac2),
        ("2001:db8::51", mac2),
    ] {
        let from: Vec<[u8; 6]> = for_address(&seen, addr).iter().map(|a| a.mac).collect();
        assert!(
            from.iter().all(|m| *m == owner),
            "{addr}: announced by {from:02x?}, only {owner:02x?} runs its pod"
        );
    }
    // Both kinds, each from the announcing node's own MAC.
    assert!(
        seen.iter()
            .any(|a| a.kind == AnnouncementKind::GratuitousArp
                && a.ip == ip("192.0.2.50")
                && a.mac == mac1)
    );
    assert!(
        seen.iter()
            .any(|a| a.kind == AnnouncementKind::UnsolicitedNa
                && a.ip == ip("2001:db8::50")
                && a.mac == mac1)
    );

    // A new address: announced afresh, by node-1 only.
    let t_change = monotonic_ns();
    set_pod_ips(&lab, "web-1", &["192.0.2.53", "2001:db8::53"]);
    wait_pod_announced(&capture, "192.0.2.53", "2001:db8::53", mac1, t_change);

    // A restarted agent announces its existing pods once at start.
    lab.kill("node-1", libc::SIGTERM).expect("stop node-1");
    let t_start = monotonic_ns();
    lab.start("node-1").expect("start node-1");
    lab.wait_ready("node-1", Duration::from_secs(10))
        .expect("node-1 ready");
    wait_pod_announced(&capture, "192.0.2.53", "2001:db8::53", mac1, t_start);

    // The counters, by family, on the agents that sent them; node-3 runs
    // no pod and sent none.
    let count = |node: &str, family: &str| {
        let text = lab
            .state
            .http_get_metrics(node, "/metrics")
            .expect("metrics");
        metric(
            &text,
            &format!("l2announcer_pod_announcements_total{{family=\"{family}\"}}"),
        )
    };
    wait_until::<_, LabError>(
        "node-1's pod announcements in its metrics",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            Ok((count("node-1", "ipv4").unwrap_or(0.0) >= 1.0
                && count("node-1", "ipv6").unwrap_or(0.0) >= 1.0)
                .then_some(()))
        },
    )
    .expect("node-1 counted its announcements since its restart");
    assert!(count("node-2", "ipv4").unwrap_or(0.0) >= 1.0);
    assert!(count("node-2", "ipv6").unwrap_or(0.0) >= 1.0);
    assert_eq!(count("node-3", "ipv4"), Some(0.0));
    assert_eq!(count("node-3", "ipv6"), Some(0.0));

    // The host-network pod's address was never announced (its event came
    // before web-1's, whose frames are in), and no node spoke for another
    // node's pod, repeats and the restart included.
    let all = capture.announcements().expect("read capture");
    assert!(
        for_address(&all, "192.0.2.52").is_empty(),
        "host-network pod announced: {:?}",
        for_address(&all, "192.0.2.52")
    );
    for addr in ["192.0.2.51", "2001:db8::51"] {
        assert!(
            for_address(&all, addr).iter().all(|a| a.mac == mac2),
            "{addr} announced by another node than node-2"
        );
    }
    for addr in ["192.0.2.50", "2001:db8::50", "192.0.2.53", "2001:db8::53"] {
        assert!(
            for_address(&all, addr).iter().all(|a| a.mac == mac1),
            "{addr} announced by another node than node-1"
        );
    }
    // Each agent watched only its own node's pods.
    let watches: Vec<String> = lab
        .request_log()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("l2announcer/") && r.resource == "pods")
        .map(|r| format!("{} {}", r.user_agent, r.query))
        .collect();
    for node in ["node-1", "node-2", "node-3"] {
        let mine: Vec<&String> = watches
            .iter()
            .filter(|w| w.contains(&format!("({node})")))
            .collect();
        assert!(!mine.is_empty(), "{node} never listed pods: {watches:#?}");
        assert!(
            mine.iter().all(|w| {
                w.contains(&format!("fieldSelector=spec.nodeName%3D{node}"))
                    || w.contains(&format!("fieldSelector=spec.nodeName={node}"))
            }),
            "{node} asked for more than its own pods: {mine:#?}"
        );
    }
    lab.down();
}
