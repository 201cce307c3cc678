//! A smoke run of the control-plane benchmark (`bench-control-plane`): 20
//! Services on 3 nodes in `node-heartbeat` mode (the default, whose holders
//! live in the assignment record), short timings and a generous client
//! rate so that it ends within half a minute. It checks that the harness
//! measures what it claims — every VIP found answered by the sweep, holders
//! read from the record, the new Services and the failover observed, the
//! report written — not how fast anything is (no timing assertion).
//!
//! Needs root, bpffs and the debug builds of the agent and the test API
//! server (`cargo build -p l2announcer -p kube-test-apiserver`, or
//! `cargo xtask test`).

use std::path::PathBuf;
use std::process::Command;

fn debug_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let bin = target.join("debug").join(name);
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p l2announcer -p kube-test-apiserver` first",
        bin.display()
    );
    bin
}

#[test]
fn a_small_control_plane_bench_measures_every_phase() {
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_bench-control-plane"))
        .args([
            "--services",
            "20",
            "--nodes",
            "3",
            "--modes",
            "node-heartbeat",
            "--timings",
            "3s/1s/200ms",
            "--qps",
            "100",
            "--burst",
            "200",
            "--converge-timeout",
            "30s",
            "--settle",
            "1s",
            "--steady",
            "3s",
            "--new-services",
            "3",
            "--new-interval",
            "200ms",
            "--new-timeout",
            "10s",
            "--failover-slack",
            "2s",
        ])
        .arg("--out-dir")
        .arg(out.path())
        .arg("--agent-bin")
        .arg(debug_bin("l2announcer"))
        .arg("--apiserver-bin")
        .arg(debug_bin("test-apiserver"))
        .status()
        .expect("running bench-control-plane");
    assert!(status.success(), "bench-control-plane failed: {status}");

    let json = std::fs::read_to_string(out.path().join("control-plane.json")).expect("json");
    let report: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    let cases = report["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 1);
    let c = &cases[0];
    assert_eq!(c["status"], "ran", "{c:#}");

    let conv = &c["convergence"];
    assert_eq!(conv["answered"], 20, "every VIP answered: {conv:#}");
    assert!(conv["all_answered_s"].is_f64(), "{conv:#}");

    let steady = &c["steady"];
    assert_eq!(steady["answered_at_end"], 20, "{steady:#}");
    assert_eq!(steady["answered_by_several"], 0, "{steady:#}");
    let placed: u64 = steady["placement"]
        .as_object()
        .expect("placement")
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        placed, 20,
        "each answered VIP placed on one node: {steady:#}"
    );
    assert!(
        !steady["placement"]
            .as_object()
            .expect("placement")
            .contains_key("node-3"),
        "the control-plane node answers nothing: {steady:#}"
    );
    assert_eq!(steady["holder_source"], "assignment record", "{steady:#}");
    let held: u64 = steady["holders"]
        .as_object()
        .expect("holders")
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        held, 20,
        "the record gives every Service to a live node: {steady:#}"
    );
    assert_eq!(
        steady["holders"], steady["placement"],
        "the record's holders are the nodes that answer: {steady:#}"
    );
    assert!(
        steady["requests"]["requests"].as_u64().unwrap_or(0) > 0,
        "the agents' heartbeat renewals are counted: {steady:#}"
    );
    let procs = steady["processes"].as_array().expect("processes");
    assert_eq!(
        procs.len(),
        4,
        "three agents and the API server: {steady:#}"
    );
    assert!(
        procs
            .iter()
            .all(|p| p["rss_mib"].as_f64().unwrap_or(0.0) > 0.0)
    );

    let new = &c["new_services"];
    let samples = new["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 3);
    assert!(
        samples.iter().all(|s| s.is_f64()),
        "every new Service answered: {new:#}"
    );

    let fo = &c["failover"];
    assert!(fo["services"].as_u64().unwrap_or(0) > 0, "{fo:#}");
    assert_ne!(fo["victim"], "node-3");
    assert_eq!(
        fo["never_answered"], 0,
        "survivors took every Service over: {fo:#}"
    );
    assert_eq!(fo["answered_before_kill"], 0, "{fo:#}");

    let md = std::fs::read_to_string(out.path().join("control-plane.md")).expect("md");
    assert!(md.contains("| measure | 20 × node-heartbeat |"), "{md}");
    let svg = std::fs::read_to_string(out.path().join("control-plane.svg")).expect("svg");
    assert!(svg.contains("<polyline"), "distributions drawn");
    assert!(
        out.path()
            .join("control-plane-logs/20-node-heartbeat/node-1.log")
            .exists()
    );
}
