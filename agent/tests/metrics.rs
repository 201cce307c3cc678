//! The metrics exposition checked by Prometheus' own tools: `promtool check
//! metrics` on a populated exposition, a real `prometheus` server scraping
//! the agent's HTTP endpoint, and the dashboards and alert rules in
//! dashboards/ validated and checked against the names the agent exports.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`; `cargo
//! xtask test` installs it).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use actors::announce::DatapathObserver;
use actors::kubeclient::ThrottleObserver;
use actors::lease::LeaseObserver;
use actors::policy_actor::PolicyObserver;
use actors::selection::{Candidacy, ServiceView};
use actors::service_actor::AnnounceObserver;
use l2announcer::metrics::{Metrics, serve_listener};

/// A Metrics with at least one series of every metric.
fn populated() -> Metrics {
    let m = Metrics::new().expect("metrics");
    let v4: IpAddr = "192.0.2.10".parse().unwrap();
    let v6: IpAddr = "2001:db8::10".parse().unwrap();
    m.acquired("default/web", None);
    m.acquired("default/db", Some(Duration::from_millis(2300)));
    m.acquired("default/dns", Some(Duration::from_millis(900)));
    m.lost("default/db", "renew-deadline");
    m.renew("default/web", Duration::from_millis(12), true);
    m.renew("default/web", Duration::from_millis(800), false);
    m.held(2);
    m.waited(Duration::ZERO, "GET", "/api/v1/services");
    m.waited(
        Duration::from_millis(250),
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/cilium-l2announce-default-web",
    );
    m.completed("GET", "/api/v1/services", Some("watch=true"), Some(200));
    m.completed(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/cilium-l2announce-default-web",
        None,
        Some(409),
    );
    m.record_request("patch", "ciliuml2announcementpolicies/status", None);
    m.set_responses(&[(v4, "eth0".into(), 42), (v6, "eth0".into(), 7)]);
    m.gratuitous_sent(v4, "eth0");
    m.gratuitous_sent(v6, "eth0");
    let mut c = Candidacy::default();
    c.entries.insert((v4, "eth0".into()));
    c.entries.insert((v6, "eth0".into()));
    let view = ServiceView {
        namespace: "default".into(),
        name: "web".into(),
        ..Default::default()
    };
    m.announcing(&view, true, &c);
    m.liveness_refreshed();
    m.observe_reconcile(Duration::from_micros(300), 1);
    m.invalid_policies(1);
    m
}

/// The metric names of an exposition (from its `# TYPE` lines).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found: install the Debian package prometheus (cargo xtask test does)"
    );
    Command::new(name)
}

#[test]
fn promtool_check_metrics_is_clean() {
    let text = populated().render();
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout: {stdout}\nstderr: {stderr}\nexposition:\n{text}",
        out.status
    );
    // And it did look at a full exposition, not an empty one.
    assert_eq!(
        exported_names(&text).len(),
        l2announcer::metrics::NAMES.len()
    );
}

#[test]
fn promtool_lint_catches_a_bad_exposition() {
    // The check above could pass vacuously if promtool ignored stdin.
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("_total"), "promtool output: {all}");
}

/// A `prometheus` server process, killed on drop.
struct PrometheusServer {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl PrometheusServer {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: l2announcer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        PrometheusServer { child, dir, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// One instant query through the HTTP API; `None` when the server does
    /// not answer (yet).
    fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        write!(
            s,
            "GET /api/v1/query?query={q} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let body = out.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_the_agent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve_listener(
        listener,
        Arc::new(populated()),
        Arc::new(AtomicBool::new(true)),
        stop_rx,
    ));

    let prom = PrometheusServer::start(target);
    let found = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = prom.query("l2announcer_build_info")
                && v["status"] == "success"
                && let Some(series) = v["data"]["result"].as_array()
                && !series.is_empty()
            {
                let takeovers =
                    prom.query("l2announcer_lease_acquisitions_total{reason=\"takeover\"}");
                return Ok((series.clone(), takeovers));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no l2announcer_build_info series within 60 s; prometheus log:\n{}",
                    prom.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await
    .unwrap();
    let (series, takeovers) = found.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["job"], "l2announcer");
    assert_eq!(labels["instance"], target.to_string());
    assert_eq!(series[0]["value"][1], "1");
    let takeovers = takeovers.expect("second query answered");
    assert_eq!(
        takeovers["data"]["result"][0]["value"][1], "2",
        "{takeovers}"
    );

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Every `l2announcer_*` identifier in `text`.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("l2announcer_") {
        let start = &rest[i..];
        let end = start
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(start.len());
        out.insert(start[..end].to_string());
        rest = &start[end..];
    }
    out
}

fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

fn unknown_names(referenced: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    referenced
        .iter()
        .filter(|n| !exported.contains(n.as_str()) && !exported.contains(base_name(n)))
        .cloned()
        .collect()
}

/// Every `expr` string anywhere in a Grafana dashboard.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_references_only_exported_metrics() {
    let exported = exported_names(&populated().render());
    let path = repo_root().join("dashboards/l2announcer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "only {} exprs", exprs.len());
    for expr in &exprs {
        let names = referenced_names(expr);
        assert!(!names.is_empty(), "expr without an agent metric: {expr}");
        let unknown = unknown_names(&names, &exported);
        assert!(unknown.is_empty(), "{expr}: unknown {unknown:?}");
    }
    // The negative case: the check itself notices a wrong name.
    let bogus = referenced_names("rate(l2announcer_lease_flaps_total[5m])");
    assert_eq!(
        unknown_names(&bogus, &exported),
        ["l2announcer_lease_flaps_total"]
    );
}

#[test]
fn dashboard_exprs_are_valid_promql() {
    // promtool parses PromQL only inside rules: each expr becomes a
    // recording rule, with Grafana's variables given plain values.
    let text = std::fs::read_to_string(repo_root().join("dashboards/l2announcer.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

#[test]
fn alert_rules_reference_only_exported_metrics() {
    let exported = exported_names(&populated().render());
    for file in ["dashboards/alerts.yaml", "dashboards/alerts_test.yaml"] {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let names = referenced_names(&text);
        assert!(!names.is_empty(), "{file} references no metric");
        let unknown = unknown_names(&names, &exported);
        assert!(unknown.is_empty(), "{file}: unknown {unknown:?}");
    }
}

fn promtool(args: &[&str]) -> String {
    let out = tool("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run promtool");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{all}",
        out.status
    );
    all
}

#[test]
fn promtool_check_rules() {
    let out = promtool(&["check", "rules", "dashboards/alerts.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_test_rules() {
    let out = promtool(&["test", "rules", "dashboards/alerts_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}
