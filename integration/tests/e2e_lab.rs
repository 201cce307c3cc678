//! End-to-end tests on the lab (integration::lab): real `l2announcer run`
//! agents in three node namespaces on a bridge, the test API server, a
//! client namespace probing ARP (tagged, every request's replies kept),
//! NDP (ndisc6) and capturing with tcpdump.
//!
//! Each test builds its own lab with a unique name (`l2e<pid>-<n>`), and
//! the Drop of [`Lab`] removes it. The tests of this file run one at a time
//! (a lock): every lab puts 198.51.100.254 on its bridge in the host
//! namespace. Needs root and `target/debug/l2announcer` (built by
//! `cargo build -p l2announcer`, or `cargo xtask test`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use integration::lab::{
    self, EXT_SERVICE, EXT_V4, EXT_V6, LB_SERVICE, LB_V4, LB_V6, LEASE_DURATION, Lab, LabConfig,
    RETRY_PERIOD,
};
use integration::poll::wait_until;
use integration::probe::monotonic_ns;
use integration::prom;
use integration::rbac;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn new_lab() -> Lab {
    Lab::up(&LabConfig::unique(lab::debug_agent())).expect("lab up")
}

fn mac(lab: &Lab, node: &str) -> [u8; 6] {
    lab.state.mac(node).expect("node MAC")
}

fn holder(lab: &Lab, svc: &str, not: Option<&str>) -> String {
    lab.wait_holder(svc, not, Duration::from_secs(10))
        .expect("holder")
}

/// Waits until `n` probes sent after `after` were answered by `mac`.
fn wait_answers(probe: &lab::ProbeSession, mac: [u8; 6], after: u64, n: usize) {
    probe.wait_answers(mac, after, n).expect("probe answers");
}

#[test]
fn every_vip_is_answered_by_the_lease_holder_only() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab();
    for (svc, v4, v6) in [(LB_SERVICE, LB_V4, LB_V6), (EXT_SERVICE, EXT_V4, EXT_V6)] {
        let h = holder(&lab, svc, None);
        let want = mac(&lab, &h);
        let ip = v4.to_string();
        let by_ip = [("ip", ip.as_str())];
        let before = lab
            .state
            .metric(&h, "l2announcer_responses_sent_total", &by_ip)
            .expect("metrics");
        // Paced tagged probes: every one answered, by the holder alone.
        let probe = lab.probe(v4, Duration::from_millis(5)).expect("probe");
        let t0 = monotonic_ns();
        wait_answers(&probe, want, t0, 100);
        let probes = probe.stop(Duration::from_millis(100)).expect("stop");
        let t = lab::takeover(&probes, want, 0);
        assert_eq!(t.new_mac, None, "{svc}: another MAC answered {v4}");
        assert_eq!(t.doubly_answered, 0);
        assert_eq!(t.unanswered, 0, "{svc}: unanswered probes of {v4}");
        assert_eq!(
            lab.arping(v4, 2).expect("arping"),
            vec![want],
            "arping {v4}"
        );
        for _ in 0..3 {
            assert_eq!(lab.ndisc(v6).expect("ndisc6"), vec![want], "ndisc6 {v6}");
        }
        assert_eq!(
            lab.client_http(v4.into()).expect("http").trim(),
            format!("served by {h}")
        );
        // The responder's counters reach /metrics (liveness-interval scrape).
        wait_until::<_, lab::LabError>(
            "responses_sent_total to grow",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let now = lab
                    .state
                    .metric(&h, "l2announcer_responses_sent_total", &by_ip)?;
                Ok((now >= before + 100.0).then_some(now))
            },
        )
        .expect("responses counted");
        let leases = lab
            .state
            .metric(&h, "l2announcer_leases_held", &[])
            .expect("metrics");
        assert!(leases >= 1.0, "{h} holds {leases} leases");

        // The tables inside the holder's namespace.
        let rows = lab.state.statedb(&h, "l2-announce").expect("statedb");
        for ip in [v4.to_string(), v6.to_string()] {
            assert!(
                rows.lines().any(|l| l.starts_with(&format!("{ip} "))
                    && l.contains("eth0")
                    && l.contains(svc)),
                "no l2-announce row for {ip} on {h}:\n{rows}"
            );
        }
        // Service, Lease, Holder, Me, ...: held by this node, and it knows.
        let leases = lab.state.statedb(&h, "leases").expect("statedb");
        let lease = format!("cilium-l2announce-default-{svc}");
        assert!(
            leases.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.get(1) == Some(&lease.as_str())
                    && cells.get(2) == Some(&h.as_str())
                    && cells.get(3) == Some(&"true")
            }),
            "leases of {h}:\n{leases}"
        );
    }
    for n in ["node-1", "node-2", "node-3"] {
        let devices = lab.state.statedb(n, "devices").expect("statedb devices");
        assert!(
            devices
                .lines()
                .any(|l| l.starts_with("eth0 ") && l.contains(" true ")),
            "eth0 not selected on {n}:\n{devices}"
        );
    }
    // node-3 is a control-plane node: the example policy leaves it out.
    let rows = lab.state.statedb("node-3", "l2-announce").expect("statedb");
    assert!(!rows.contains("192.0.2.10"), "node-3 announces:\n{rows}");
    lab.down();
}

#[test]
fn sigkill_of_the_holder_fails_over_within_the_lease() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab();
    let old = holder(&lab, LB_SERVICE, None);
    let old_mac = mac(&lab, &old);
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = lab
        .capture(&dir.path().join("client.pcap"))
        .expect("tcpdump");
    let probe = lab.probe(LB_V4, Duration::from_millis(10)).expect("probe");
    wait_answers(&probe, old_mac, 0, 10);
    // What each candidate's /metrics say before the failover.
    let lb_ip = LB_V4.to_string();
    let watched: [(&str, &[(&str, &str)]); 4] = [
        (
            "l2announcer_lease_acquisitions_total",
            &[("reason", "takeover")],
        ),
        ("l2announcer_takeover_latency_seconds_count", &[]),
        ("l2announcer_takeover_latency_seconds_sum", &[]),
        (
            "l2announcer_gratuitous_sent_total",
            &[("ip", lb_ip.as_str())],
        ),
    ];
    let scrape = |node: &str| -> Vec<f64> {
        watched
            .iter()
            .map(|(m, l)| lab.state.metric(node, m, l).expect("metrics"))
            .collect()
    };
    let before: BTreeMap<String, Vec<f64>> = ["node-1", "node-2"]
        .iter()
        .filter(|n| **n != old)
        .map(|n| (n.to_string(), scrape(n)))
        .collect();
    let t_kill = lab.kill(&old, libc::SIGKILL).expect("kill");
    let new = holder(&lab, LB_SERVICE, Some(&old));
    let new_mac = mac(&lab, &new);
    assert_ne!(new, "node-3", "the policy excludes node-3");
    wait_answers(&probe, new_mac, t_kill, 30);
    let probes = probe.stop(Duration::from_millis(200)).expect("stop");
    let t = lab::takeover(&probes, old_mac, t_kill);
    let bound = LEASE_DURATION + RETRY_PERIOD + Duration::from_secs(1);
    let first_new = t.first_new_ns.expect("new MAC answered");
    // The first other MAC to answer is the new lease holder's.
    assert_eq!(t.new_mac, Some(new_mac), "{t:?}");
    assert!(
        first_new - t_kill <= bound.as_nanos() as u64,
        "takeover took {} ms",
        (first_new - t_kill) / 1_000_000
    );
    assert_eq!(t.doubly_answered, 0, "two MACs answered one probe");
    // The killed node's datapath stops answering once its fence expires
    // (at the latest a lease duration after its last renewal), before the
    // new holder answers: never both.
    if let Some(last_old) = t.last_old_ns {
        assert!(
            last_old - t_kill <= LEASE_DURATION.as_nanos() as u64,
            "{old} answered {} ms after SIGKILL",
            (last_old - t_kill) / 1_000_000
        );
        assert!(last_old < first_new, "old MAC answered after the new one");
    }
    // Gratuitous ARP and unsolicited NA from the new holder.
    capture
        .wait_announced(LB_V4, LB_V6, new_mac, t_kill, Duration::from_secs(5))
        .expect("announcements captured");
    // The new holder counted the takeover, its latency (the old holder's
    // last renewal as observed, plus at least a lease duration) and the
    // gratuitous ARP for the VIP: differences across the failover.
    let before = before
        .get(&new)
        .expect("new holder was a candidate")
        .clone();
    let after = wait_until::<_, lab::LabError>(
        "the new holder's metrics to move",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let now = scrape(&new);
            Ok((now[0] > before[0] && now[1] > before[1] && now[3] > before[3]).then_some(now))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?} -> {:?}", before, scrape(&new)));
    let takeovers = after[1] - before[1];
    assert_eq!(after[0] - before[0], takeovers, "acquisitions vs takeovers");
    let mean = (after[2] - before[2]) / takeovers;
    assert!(
        mean >= LEASE_DURATION.as_secs_f64() - 0.05 && mean <= bound.as_secs_f64(),
        "takeover latency {mean:.3} s outside [{:?}, {bound:?}]",
        LEASE_DURATION
    );
    drop(capture);
    lab.down();
}

#[test]
fn sigterm_hands_over_in_under_a_second() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab();
    let old = holder(&lab, LB_SERVICE, None);
    let old_mac = mac(&lab, &old);
    let probe = lab.probe(LB_V4, Duration::from_millis(5)).expect("probe");
    wait_answers(&probe, old_mac, 0, 10);
    let t_term = lab.kill(&old, libc::SIGTERM).expect("kill");
    let new = holder(&lab, LB_SERVICE, Some(&old));
    let new_mac = mac(&lab, &new);
    wait_answers(&probe, new_mac, t_term, 20);
    let probes = probe.stop(Duration::from_millis(100)).expect("stop");
    let t = lab::takeover(&probes, old_mac, t_term);
    let first_new = t.first_new_ns.expect("new MAC answered");
    // The first other MAC to answer is the new lease holder's.
    assert_eq!(t.new_mac, Some(new_mac), "{t:?}");
    assert!(
        first_new - t_term < 1_000_000_000,
        "handover took {} ms",
        (first_new - t_term) / 1_000_000
    );
    assert_eq!(t.doubly_answered, 0, "two MACs answered one probe");
    // Everything the real agents asked the API server for, through the
    // acquisitions, events and the release, is allowed by deploy/'s roles
    // (leases only in the Role's namespace).
    let log = lab.request_log();
    assert!(
        rbac::used(&log).len() >= 8,
        "too few kinds of requests to mean much: {:?}",
        rbac::used(&log)
    );
    let denied = rbac::Grants::deploy().denied(&log);
    assert!(denied.is_empty(), "not allowed by deploy/: {denied:#?}");
    lab.down();
}

// A restarted agent must keep the fences its previous run left in the pinned
// maps: election groups that reach it before its first full pass once
// cleared them, silencing the held VIP for ~50-100 ms.
#[test]
fn restarting_the_holder_within_the_lease_leaves_no_gap() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab();
    let h = holder(&lab, LB_SERVICE, None);
    let h_mac = mac(&lab, &h);
    let probe = lab.probe(LB_V4, Duration::from_millis(10)).expect("probe");
    wait_answers(&probe, h_mac, 0, 10);
    let t_kill = lab.kill(&h, libc::SIGKILL).expect("kill");
    let t_start = monotonic_ns();
    lab.start(&h).expect("start");
    lab.wait_ready(&h, Duration::from_secs(10)).expect("ready");
    // Probe on past the old lease's and fence's expiry.
    let settle = t_kill + (LEASE_DURATION + Duration::from_secs(1)).as_nanos() as u64;
    wait_answers(&probe, h_mac, settle, 20);
    let probes = probe.stop(Duration::from_millis(200)).expect("stop");
    let t = lab::takeover(&probes, h_mac, t_kill);
    let gaps: Vec<String> = probes
        .iter()
        .filter(|p| p.sent_ns >= t_kill && p.replies.is_empty())
        .map(|p| format!("{:.1}", (p.sent_ns - t_kill) as f64 / 1e6))
        .collect();
    assert_eq!(
        t.unanswered,
        0,
        "probes went unanswered across the restart (ms after SIGKILL, restart at {:.1} ms): {gaps:?} {t:?}",
        (t_start - t_kill) as f64 / 1e6
    );
    assert_eq!(t.new_mac, None, "another node answered: {t:?}");
    assert_eq!(lab.holder(LB_SERVICE).expect("lease"), Some(h.clone()));
    lab.down();
}

/// A holder killed and started again after another node took its
/// Services over: whatever it persisted (state database rows; pinned maps
/// unless `reboot` removed them) must not make it announce or answer an IP
/// it no longer holds. Checks, from the client: no gratuitous ARP /
/// unsolicited NA from the restarted node, no probe answered by two MACs,
/// every probe after the takeover answered by the new holder.
fn restarted_node_announces_nothing_it_lost(reboot: bool) {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab();
    let h = holder(&lab, LB_SERVICE, None);
    let h_mac = mac(&lab, &h);
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = lab
        .capture(&dir.path().join("client.pcap"))
        .expect("tcpdump");
    let probe = lab.probe(LB_V4, Duration::from_millis(10)).expect("probe");
    wait_answers(&probe, h_mac, 0, 10);
    let t_kill = lab.kill(&h, libc::SIGKILL).expect("kill");
    let n = holder(&lab, LB_SERVICE, Some(&h));
    let n_mac = mac(&lab, &n);
    wait_answers(&probe, n_mac, t_kill, 10);
    let t_takeover = monotonic_ns();
    if reboot {
        // A reboot empties bpffs; the state directory survives.
        let pins = lab.state.node(&h).expect("node").bpf_root.clone();
        std::fs::remove_dir_all(&pins).expect("remove pins");
    }
    let t_start = monotonic_ns();
    lab.start(&h).expect("start");
    lab.wait_ready(&h, Duration::from_secs(10))
        .expect("restarted agent ready");
    // Watch past the whole gratuitous repeat window of the restarted agent
    // (3 announcements, 1 s apart) and a lease duration.
    let watch_until = t_start + (LEASE_DURATION + Duration::from_secs(1)).as_nanos() as u64;
    wait_answers(&probe, n_mac, watch_until, 20);
    let probes = probe.stop(Duration::from_millis(200)).expect("stop");
    let vips: [std::net::IpAddr; 4] = [LB_V4.into(), LB_V6.into(), EXT_V4.into(), EXT_V6.into()];
    let foreign: Vec<String> = capture
        .announcements()
        .expect("capture")
        .into_iter()
        .filter(|a| vips.contains(&a.ip) && a.mac == h_mac && a.at_ns >= t_start)
        .map(|a| {
            format!(
                "{:?} at +{:.0} ms",
                a.kind,
                (a.at_ns - t_start) as f64 / 1e6
            )
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "the restarted {h} announced VIPs it no longer holds: {foreign:?}\n{}",
        lab.state.log_tails(30)
    );
    let after = lab::takeover(&probes, n_mac, t_takeover);
    assert_eq!(after.doubly_answered, 0, "two MACs answered: {after:?}");
    assert_eq!(
        after.new_mac, None,
        "another MAC than {n}'s answered: {after:?}"
    );
    assert_eq!(after.unanswered, 0, "unanswered probes: {after:?}");
    assert_eq!(lab.holder(LB_SERVICE).expect("lease"), Some(n.clone()));
    assert_ne!(
        lab.holder(EXT_SERVICE).expect("lease"),
        Some(h.clone()),
        "the restarted node took a held lease"
    );
    lab.down();
}

#[test]
fn a_holder_restarted_after_a_takeover_announces_nothing_it_lost() {
    restarted_node_announces_nothing_it_lost(false);
}

#[test]
fn a_holder_rebooted_after_a_takeover_announces_nothing_it_lost() {
    restarted_node_announces_nothing_it_lost(true);
}

#[test]
fn prometheus_scrapes_the_lab_agents_and_the_dashboards_match_them() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab();
    let holders = [
        holder(&lab, LB_SERVICE, None),
        holder(&lab, EXT_SERVICE, None),
    ];
    let nodes = ["node-1", "node-2", "node-3"];
    let mut targets = Vec::new();
    for n in nodes {
        targets.push(lab.state.node(n).expect("node").metrics_addr);
        // Each live exposition passes promtool's lint.
        let text = lab.state.http_get_metrics(n, "/metrics").expect("metrics");
        let (ok, out) = prom::check_metrics(&text);
        assert!(ok && out.trim().is_empty(), "{n}: promtool: {out}");
    }
    // The agents together export every name the dashboards and alert rules
    // use (a labelled metric appears once it has a series: the responses of
    // a VIP on its holder, after the next liveness refresh).
    let mut unknown = Vec::new();
    wait_until::<_, lab::LabError>(
        "the dashboards' metrics on the agents",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let mut names = std::collections::BTreeSet::new();
            for n in nodes {
                names.extend(prom::exported_names(
                    &lab.state.http_get_metrics(n, "/metrics")?,
                ));
            }
            unknown = prom::dashboards_unknown_names(&names);
            Ok(unknown.is_empty().then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {unknown:#?}"));
    // A real Prometheus scrapes the three agents; PromQL through its API.
    let server = prom::PrometheusServer::start(&targets);
    let value = |promql: &str| -> Option<String> {
        let series = server.series(promql)?;
        series[0]["value"][1].as_str().map(str::to_string)
    };
    let held = wait_until::<_, lab::LabError>(
        "prometheus to scrape every agent",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            Ok(
                (value("count(up{job=\"l2announcer\"} == 1)").as_deref() == Some("3"))
                    .then(|| value("sum(l2announcer_leases_held)")),
            )
        },
    )
    .unwrap_or_else(|e| panic!("{e}; prometheus log:\n{}", server.log()));
    assert_eq!(held.as_deref(), Some("2"), "two Services, one lease each");
    // Per instance: the lease holders, and nobody else, hold leases.
    let by_instance = server
        .series("sum by (instance) (l2announcer_leases_held) > 0")
        .expect("holders");
    let mut seen: Vec<String> = by_instance
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_string))
        .collect();
    seen.sort();
    let mut expected: Vec<String> = holders
        .iter()
        .map(|h| lab.state.node(h).expect("node").metrics_addr.to_string())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(seen, expected);
    drop(server);
    lab.down();
}

/// Runs `target/debug/lab args`; (success, stdout + stderr).
fn lab_bin(args: &[&str]) -> (bool, String) {
    // Cargo builds the package's binaries for its integration tests.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lab"));
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .expect("run lab");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn lab_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("l2alab-"))
        .map(str::to_string)
        .collect()
}

// The README's command: the demo and the scriptable pieces of the `lab`
// binary (the fixed lab `l2alab`; do not run it beside a lab of your own).
#[test]
fn the_lab_binary_demo_and_its_pieces() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        lab_namespaces().is_empty(),
        "a lab is already up: {:?}",
        lab_namespaces()
    );
    let (ok, out) = lab_bin(&[]);
    assert!(ok, "demo failed:\n{out}");
    for expected in [
        "all checks passed",
        "gratuitous ARP from",
        "unsolicited NA from",
        "first ARP reply from",
        "handover under 1 s",
        "served by node-",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    assert!(
        lab_namespaces().is_empty(),
        "demo left {:?}",
        lab_namespaces()
    );

    let (ok, out) = lab_bin(&["up"]);
    assert!(ok, "lab up:\n{out}");
    let guard = LabDown;
    let kubeconfig = out
        .lines()
        .find_map(|l| l.strip_prefix("kubeconfig: "))
        .unwrap_or_else(|| panic!("no kubeconfig in:\n{out}"))
        .trim()
        .to_string();
    let leases = wait_until::<_, lab::LabError>(
        "two held leases through kubectl",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let out = std::process::Command::new("kubectl")
                .args([
                    "--kubeconfig",
                    &kubeconfig,
                    "-n",
                    "kube-system",
                    "get",
                    "leases",
                ])
                .output()
                .map_err(|source| lab::LabError::Io {
                    what: "kubectl".into(),
                    source,
                })?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let held = text
                .lines()
                .filter(|l| l.starts_with("cilium-l2announce-") && l.contains("node-"))
                .count();
            Ok((held == 2).then_some(text))
        },
    )
    .expect("leases");
    let lb_holder = leases
        .lines()
        .find(|l| l.starts_with(&format!("cilium-l2announce-default-{LB_SERVICE} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("holder column")
        .to_string();
    let (ok, out) = lab_bin(&[
        "exec",
        "client",
        "--",
        "arping",
        "-c",
        "1",
        "-w",
        "2",
        "-I",
        "eth0",
        &LB_V4.to_string(),
    ]);
    assert!(ok, "arping from the client:\n{out}");
    let (ok, out) = lab_bin(&["kill", &lb_holder]);
    assert!(ok && out.contains("exited"), "lab kill:\n{out}");
    let (ok, out) = lab_bin(&["start", &lb_holder]);
    assert!(ok && out.contains("started the agent"), "lab start:\n{out}");
    drop(guard);
    assert!(
        lab_namespaces().is_empty(),
        "lab down left {:?}",
        lab_namespaces()
    );
}

/// `lab down` on drop, also when an assertion fails.
struct LabDown;

impl Drop for LabDown {
    fn drop(&mut self) {
        let (ok, out) = lab_bin(&["down"]);
        if !ok {
            eprintln!("lab down: {out}");
        }
    }
}

#[test]
fn a_low_client_rate_limit_shows_in_metrics_and_logs() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The per-Service election: one renewal per Service every retry
    // period (node-heartbeat needs one per node, and never warns).
    let mut lab = Lab::up(&LabConfig {
        election: Some("per-service".into()),
        ..LabConfig::unique(lab::debug_agent())
    })
    .expect("lab up");
    holder(&lab, LB_SERVICE, None);
    // node-1 alone (node-3 is never a candidate), at 1 request/s: it holds
    // both Services, whose renewals every 200 ms need 10/s.
    for n in ["node-1", "node-2"] {
        lab.kill(n, libc::SIGTERM).expect("stop");
    }
    lab.state.client_rate = (1.0, 1);
    lab.start("node-1").expect("start");
    lab.wait_ready("node-1", Duration::from_secs(20))
        .expect("ready");
    let waited = wait_until::<_, lab::LabError>(
        "throttling in node-1's /metrics",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let count = lab.state.metric(
                "node-1",
                "l2announcer_k8s_client_throttle_wait_seconds_count",
                &[],
            )?;
            let sum = lab.state.metric(
                "node-1",
                "l2announcer_k8s_client_throttle_wait_seconds_sum",
                &[],
            )?;
            Ok((count >= 3.0 && sum > 1.0).then_some((count, sum)))
        },
    )
    .expect("throttled requests counted");
    let log_path = lab.state.node("node-1").expect("node").log.clone();
    let log = wait_until::<_, lab::LabError>(
        "the sizing warning in node-1's log",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            Ok(text.contains("--k8s-client-qps 1").then_some(text))
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", lab.state.log_tails(40)));
    assert!(
        log.contains("due to client-side throttling"),
        "{waited:?}\n{log}"
    );
    assert!(log.contains("renewals will be throttled"), "{log}");
    lab.down();
}

#[test]
fn an_api_server_outage_stops_no_agent_and_one_holder_answers_after() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = new_lab();
    let h = holder(&lab, LB_SERVICE, None);
    let probe = lab.probe(LB_V4, Duration::from_millis(10)).expect("probe");
    wait_answers(&probe, mac(&lab, &h), 0, 10);
    // Longer than the lease: nobody can renew or take over meanwhile.
    let t_down = monotonic_ns();
    lab.api_outage(LEASE_DURATION + Duration::from_secs(2))
        .expect("outage");
    let t_back = monotonic_ns();
    assert!(t_back - t_down >= (LEASE_DURATION + Duration::from_secs(2)).as_nanos() as u64);
    for n in ["node-1", "node-2", "node-3"] {
        assert!(
            lab.state.agent_pid(n).is_some(),
            "the agent of {n} exited during the outage:\n{}",
            lab.state.log_tails(30)
        );
    }
    // The lease object still names the holder from before the outage until
    // someone renews or takes it: go by the answers, then by the lease.
    let answering = wait_until::<_, lab::LabError>(
        "20 answers from one MAC after the outage",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let answered: Vec<[u8; 6]> = probe
                .snapshot()
                .iter()
                .filter(|p| p.sent_ns > t_back && !p.replies.is_empty())
                .map(|p| p.replies[0].1)
                .collect();
            let last = answered.last().copied();
            Ok(last.filter(|m| {
                answered.len() >= 20 && answered[answered.len() - 20..].iter().all(|a| a == m)
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", lab.state.log_tails(30)));
    let probes = probe.stop(Duration::from_millis(200)).expect("stop");
    let t = lab::takeover(&probes, answering, t_down);
    assert_eq!(t.doubly_answered, 0, "two MACs answered one probe: {t:?}");
    // Whoever answers after the outage holds the lease.
    let holder_now = wait_until::<_, lab::LabError>(
        "the lease to name the answering node",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            Ok(lab.holder(LB_SERVICE)?.filter(|h| {
                lab.state
                    .node(h)
                    .is_ok_and(|n| integration::mac::parse(&n.mac) == Some(answering))
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: holder {:?}", lab.holder(LB_SERVICE)));
    eprintln!(
        "after the outage {holder_now} answers; {} ms without answers in all",
        t.outage_ns / 1_000_000
    );
    lab.down();
}

/// How a LAN fault takes the holder off the LAN (issue 12 §4).
#[derive(Debug, Clone, Copy)]
enum LanFault {
    /// `ip link set eth0 down` inside the holder's namespace.
    LinkDown,
    /// The bridge's end of the holder's `eth0` veth down: `eth0` stays up,
    /// without carrier.
    CarrierLoss,
}

impl LanFault {
    fn set(self, lab: &Lab, node: &str, faulted: bool) {
        match self {
            LanFault::LinkDown => lab.set_lan_link(node, !faulted),
            LanFault::CarrierLoss => lab.set_lan_carrier(node, !faulted),
        }
        .unwrap_or_else(|e| panic!("{self:?} on {node} ({faulted}): {e}"));
    }
}

/// The `selected` cell of `eth0` in the node's `devices` table.
fn eth0_selected(lab: &Lab, node: &str) -> Result<bool, lab::LabError> {
    let table = lab.state.statedb(node, "devices")?;
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&"eth0"))
        .and_then(|cells| cells.get(2).map(|c| *c == "true"))
        .ok_or_else(|| lab::LabError::State(format!("no eth0 row on {node}:\n{table}")))
}

/// Whether the node's /metrics call it a candidate for the LoadBalancer
/// Service.
fn lb_candidate(lab: &Lab, node: &str) -> Result<bool, lab::LabError> {
    let svc = format!("default/{LB_SERVICE}");
    Ok(lab
        .state
        .metric(node, "l2announcer_service_candidate", &[("service", &svc)])?
        == 1.0)
}

/// What one LAN fault on the holder of the LoadBalancer Service cost.
struct LanFaultRun {
    new_holder: String,
    /// From the fault to the first ARP reply from the new holder's MAC.
    takeover: Duration,
    /// The longest run of unanswered probes around it.
    outage: Duration,
}

/// Takes `old` (the holder of the LoadBalancer Service) off the LAN with
/// `fault`, checks from the client (10 ms tagged ARP probes, tcpdump) that
/// the other eligible node takes over within retry period + 1 s and that no
/// probe is answered by two MACs; that `old`'s agent stays alive and
/// connected (over eth1) and is no candidate while the fault lasts; and
/// that once the link is back `old` is a candidate again without taking
/// the claim back.
fn lan_fault_hands_the_claim_over(
    lab: &Lab,
    capture: &lab::Capture,
    old: &str,
    fault: LanFault,
) -> LanFaultRun {
    // node-3 carries the control-plane label: the policy leaves it out.
    let new = if old == "node-1" { "node-2" } else { "node-1" };
    let (old_mac, new_mac) = (mac(lab, old), mac(lab, new));
    let probe = lab.probe(LB_V4, Duration::from_millis(10)).expect("probe");
    wait_answers(&probe, old_mac, 0, 10);
    assert!(lb_candidate(lab, old).expect("metrics"), "{old} candidate");
    assert!(eth0_selected(lab, old).expect("devices"), "{old}'s eth0");
    let ok = [("code", "200")];
    let requests = |n: &str| {
        lab.state
            .metric(n, "l2announcer_k8s_client_requests_total", &ok)
            .expect("metrics")
    };
    let requests_before = requests(old);

    let t_fault = monotonic_ns();
    fault.set(lab, old, true);
    wait_answers(&probe, new_mac, t_fault, 20);
    // While the fault lasts: eth0 is not selected, so the node is no
    // candidate; its agent lives and talks to the API server over eth1
    // (the release at least, and heartbeat renewals in node-heartbeat
    // mode).
    let no_candidate = wait_until::<_, lab::LabError>(
        "the faulted node to leave the candidates",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let out = !eth0_selected(lab, old)? && !lb_candidate(lab, old)?;
            Ok(out.then_some(()))
        },
    );
    no_candidate.unwrap_or_else(|e| panic!("{fault:?}: {e}\n{}", lab.state.log_tails(30)));
    wait_until::<_, lab::LabError>(
        "API requests of the faulted node",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok((requests(old) > requests_before).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{fault:?}: {old} made no API request: {e}"));
    lab.check_agents().expect("every agent alive");
    assert_eq!(
        lab.wait_holder(LB_SERVICE, Some(old), Duration::from_secs(10))
            .expect("lease"),
        new,
        "the Lease names the new holder"
    );

    let t_back = monotonic_ns();
    fault.set(lab, old, false);
    wait_until::<_, lab::LabError>(
        "the node to be a candidate again",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok((eth0_selected(lab, old)? && lb_candidate(lab, old)?).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{fault:?}: {e}\n{}", lab.state.log_tails(30)));
    // Watch a lease duration and a second past the link's return: the
    // claim stays where it is.
    let settle = monotonic_ns() + (LEASE_DURATION + Duration::from_secs(1)).as_nanos() as u64;
    wait_answers(&probe, new_mac, settle, 20);
    let probes = probe.stop(Duration::from_millis(100)).expect("stop");
    lab.check_agents().expect("every agent alive");

    let t = lab::takeover(&probes, old_mac, t_fault);
    assert_eq!(t.new_mac, Some(new_mac), "{fault:?}: {t:?}");
    assert_eq!(t.doubly_answered, 0, "{fault:?}: two MACs answered: {t:?}");
    let first_new = t.first_new_ns.expect("the new MAC answered");
    if let Some(last_old) = t.last_old_ns {
        assert!(last_old < first_new, "{fault:?}: old MAC after the new one");
    }
    let takeover = Duration::from_nanos(first_new - t_fault);
    assert!(
        takeover <= RETRY_PERIOD + Duration::from_secs(1),
        "{fault:?}: takeover took {takeover:?}\n{}",
        lab.state.log_tails(30)
    );
    // From the link's return on, the new holder alone answers, every probe.
    let after = lab::takeover(&probes, new_mac, t_back);
    assert_eq!(
        after.new_mac, None,
        "{fault:?}: claim taken back: {after:?}"
    );
    assert_eq!(after.doubly_answered, 0, "{fault:?}: {after:?}");
    assert_eq!(after.unanswered, 0, "{fault:?}: {after:?}");
    assert_eq!(lab.holder(LB_SERVICE).expect("lease").as_deref(), Some(new));
    // The new holder announced itself; the faulted node announced nothing
    // from the fault on, also not once its link was back.
    capture
        .wait_announced(LB_V4, LB_V6, new_mac, t_fault, Duration::from_secs(5))
        .expect("announcements from the new holder");
    let vips: [std::net::IpAddr; 4] = [LB_V4.into(), LB_V6.into(), EXT_V4.into(), EXT_V6.into()];
    let foreign: Vec<String> = capture
        .announcements()
        .expect("capture")
        .into_iter()
        .filter(|a| vips.contains(&a.ip) && a.mac == old_mac && a.at_ns >= t_fault)
        .map(|a| {
            format!(
                "{:?} {} at +{} ms",
                a.kind,
                a.ip,
                (a.at_ns - t_fault) / 1_000_000
            )
        })
        .collect();
    assert!(foreign.is_empty(), "{fault:?}: {old} announced {foreign:?}");
    LanFaultRun {
        new_holder: new.to_string(),
        takeover,
        outage: Duration::from_nanos(t.outage_ns),
    }
}

/// Issue 12 §4 in one lab: the holder's `eth0` set down, then the carrier
/// of the node that took over taken away (which the first node, eligible
/// again, must pick up).
fn lan_faults_hand_claims_over(election: &str) {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(&LabConfig {
        election: Some(election.into()),
        ..LabConfig::unique(lab::debug_agent())
    })
    .expect("lab up");
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = lab
        .capture(&dir.path().join("client.pcap"))
        .expect("tcpdump");
    let first = holder(&lab, LB_SERVICE, None);
    let down = lan_fault_hands_the_claim_over(&lab, &capture, &first, LanFault::LinkDown);
    let carrier =
        lan_fault_hands_the_claim_over(&lab, &capture, &down.new_holder, LanFault::CarrierLoss);
    assert_eq!(carrier.new_holder, first);
    for (what, run) in [("eth0 down", &down), ("carrier loss", &carrier)] {
        eprintln!(
            "{election}: {what}: takeover {} ms (fault to first reply from the new MAC), longest gap {} ms",
            run.takeover.as_millis(),
            run.outage.as_millis()
        );
    }
    drop(capture);
    lab.down();
}

#[test]
fn lan_link_down_and_carrier_loss_hand_the_claim_over() {
    lan_faults_hand_claims_over("node-heartbeat");
}

#[test]
fn lan_link_down_and_carrier_loss_hand_the_claim_over_per_service() {
    lan_faults_hand_claims_over("per-service");
}
