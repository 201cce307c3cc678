//! The metrics exposition checked by Prometheus' own tools: `promtool check
//! metrics` on an exposition with a series of every metric, the dashboards'
//! PromQL and the alert rules validated and unit-tested by promtool. Live
//! agents are scraped by a real `prometheus`, and the dashboards checked
//! against their names, in integration/tests/e2e_lab.rs.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`; `cargo
//! xtask test` installs it).

use std::net::IpAddr;
use std::time::Duration;

use actors::announce::DatapathObserver;
use actors::k8s::client::ThrottleObserver;
use actors::lease::LeaseObserver;
use actors::policy::PolicyObserver;
use actors::service::{AnnounceObserver, Candidacy, ServiceView};
use integration::prom;
use l2announcer::metrics::Metrics;

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
    m.candidate("default/web", true);
    m.liveness_refreshed();
    m.observe_reconcile(Duration::from_micros(300), 1);
    m.invalid_policies(1);
    m
}

#[test]
fn promtool_check_metrics_is_clean() {
    let text = populated().render();
    let (ok, out) = prom::check_metrics(&text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics: {out}\nexposition:\n{text}"
    );
    // And it did look at a full exposition, not an empty one.
    assert_eq!(
        prom::exported_names(&text).len(),
        l2announcer::metrics::NAMES.len()
    );
    // Every name the dashboards use exists (with every metric populated;
    // e2e_lab checks the same against live agents).
    let unknown = prom::dashboards_unknown_names(&prom::exported_names(&text));
    assert!(unknown.is_empty(), "{unknown:#?}");
    let bogus = prom::referenced_names("rate(l2announcer_lease_flaps_total[5m])");
    assert_eq!(
        prom::unknown_names(&bogus, &prom::exported_names(&text)),
        ["l2announcer_lease_flaps_total"]
    );
}

#[test]
fn promtool_lint_catches_a_bad_exposition() {
    // The check above could pass vacuously if promtool ignored stdin.
    let (ok, out) =
        prom::check_metrics("# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n");
    assert!(!ok || out.contains("_total"), "promtool output: {out}");
    assert!(out.contains("_total"), "promtool output: {out}");
}

#[test]
fn dashboard_exprs_are_valid_promql() {
    // promtool parses PromQL only inside rules: each expr becomes a
    // recording rule, with Grafana's variables given plain values.
    let exprs = prom::dashboard();
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
    let out = prom::promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

#[test]
fn promtool_check_rules() {
    let out = prom::promtool(&["check", "rules", "dashboards/alerts.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_test_rules() {
    let out = prom::promtool(&["test", "rules", "dashboards/alerts_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}
