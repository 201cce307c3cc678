//! Prometheus and the agents' metrics: the text exposition read in one
//! place (samples with their labels, sums, metric names), Prometheus' own
//! tools (`promtool`, a real `prometheus` server queried through its HTTP
//! API) and the metric names the dashboards and alert rules in dashboards/
//! reference.
//!
//! The exposition parser reads what the agents export (no exemplars, no
//! escaped quotes inside label values); it is not a general OpenMetrics
//! parser. The tool functions need `promtool` and `prometheus` (Debian
//! package `prometheus`; `cargo xtask test` installs it) and are test
//! support: they panic with a message saying what is missing.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One sample line of a text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// (label, value) in the order written.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of `label`, if the sample has it.
    pub fn label(&self, label: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == label)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a text exposition; comment lines and lines that do not
/// parse are skipped.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head, Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            for pair in body.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"")?;
                labels.push((
                    k.trim_start_matches(',').to_string(),
                    v.trim_end_matches('"').to_string(),
                ));
            }
            (name, labels)
        }
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The sum of the samples of `metric` that carry every (label, value) of
/// `labels` (0 when there is none).
pub fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == metric && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// The repository's root (dashboards/ lives there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// A command for one of Prometheus' programs; panics when it is missing.
pub fn tool(name: &str) -> Command {
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

/// Runs `promtool args` in the repository root; its stdout and stderr.
/// Panics when it fails.
pub fn promtool(args: &[&str]) -> String {
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

/// `promtool check metrics` on `exposition`: (success, stdout + stderr).
pub fn check_metrics(exposition: &str) -> (bool, String) {
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
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The metric names of an exposition (from its `# TYPE` lines).
pub fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `l2announcer_*` identifier in `text`.
pub fn referenced_names(text: &str) -> BTreeSet<String> {
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

/// The names of `referenced` that `exported` lacks (histogram series are
/// matched by their family name).
pub fn unknown_names(referenced: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    referenced
        .iter()
        .filter(|n| !exported.contains(n.as_str()) && !exported.contains(base_name(n)))
        .cloned()
        .collect()
}

/// Every `expr` string anywhere in a Grafana dashboard.
pub fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
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

/// The PromQL expressions of dashboards/l2announcer.json.
pub fn dashboard() -> Vec<String> {
    let path = repo_root().join("dashboards/l2announcer.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    exprs
}

/// What in dashboards/ (dashboard expressions, alert rules and their tests)
/// names a metric `exported` lacks: one line per finding.
pub fn dashboards_unknown_names(exported: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for expr in dashboard() {
        let names = referenced_names(&expr);
        if names.is_empty() {
            problems.push(format!("expr without an agent metric: {expr}"));
        }
        for n in unknown_names(&names, exported) {
            problems.push(format!("{expr}: unknown {n}"));
        }
    }
    for file in ["dashboards/alerts.yaml", "dashboards/alerts_test.yaml"] {
        let text = std::fs::read_to_string(repo_root().join(file)).expect("alert rules");
        let names = referenced_names(&text);
        if names.is_empty() {
            problems.push(format!("{file} references no metric"));
        }
        for n in unknown_names(&names, exported) {
            problems.push(format!("{file}: unknown {n}"));
        }
    }
    problems
}

/// A `prometheus` server process scraping `targets` every second, killed
/// on drop.
pub struct PrometheusServer {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl PrometheusServer {
    pub fn start(targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = dir.path().join("prometheus.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: l2announcer\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// One instant query through the HTTP API; `None` when the server does
    /// not answer (yet).
    pub fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = crate::http::get(
            self.addr,
            &format!("/api/v1/query?query={q}"),
            Duration::from_secs(5),
        )
        .ok()?;
        serde_json::from_str(&body).ok()
    }

    /// The series of a successful query with at least one result.
    pub fn series(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        let v = self.query(promql)?;
        if v["status"] != "success" {
            return None;
        }
        v["data"]["result"]
            .as_array()
            .filter(|s| !s.is_empty())
            .cloned()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_label() {
        let text = "# HELP x\nl2announcer_responses_sent_total{ip=\"192.0.2.100\",interface=\"eth0\"} 5\nl2announcer_responses_sent_total{ip=\"192.0.2.101\",interface=\"eth0\"} 2\nl2announcer_leases_held 1\nl2announcer_info{version=\"a,b\"} 1\n";
        let all = samples(text);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].label("interface"), Some("eth0"));
        assert_eq!(all[3].label("version"), Some("a,b"));
        assert_eq!(sum(text, "l2announcer_responses_sent_total", &[]), 7.0);
        assert_eq!(
            sum(
                text,
                "l2announcer_responses_sent_total",
                &[("ip", "192.0.2.101")]
            ),
            2.0
        );
        assert_eq!(sum(text, "l2announcer_leases_held", &[]), 1.0);
        assert_eq!(sum(text, "l2announcer_leases", &[]), 0.0);
    }

    #[test]
    fn names_are_found_and_histogram_series_match_their_family() {
        let refs = referenced_names(
            "sum(rate(l2announcer_takeover_latency_seconds_bucket[5m])) / l2announcer_leases_held",
        );
        let exported: BTreeSet<String> =
            ["l2announcer_takeover_latency_seconds".to_string()].into();
        assert_eq!(unknown_names(&refs, &exported), ["l2announcer_leases_held"]);
    }
}
