//! The agent's Prometheus metrics: one [`Metrics`] value owning its own
//! registry, fed by the actors through their observer traits and by a few
//! plain methods, rendered in the text exposition format and served with
//! `/healthz` and `/readyz` over HTTP by [`serve`].
//!
//! It is not where anything is decided: it only counts what the actors
//! report. Names carry the `l2announcer_` prefix; counters end in `_total`
//! and durations in `_seconds`, so `promtool check metrics` stays clean.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actors::announce::DatapathObserver;
use actors::k8s::client::ThrottleObserver;
use actors::lease::LeaseObserver;
use actors::pods::PodObserver;
use actors::policy::PolicyObserver;
use actors::service::{AnnounceObserver, Candidacy, ServiceView};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tracing::warn;

mod series;
use series::ServiceSeries;

/// Every metric name this module exports, for tests and documentation.
pub const NAMES: &[&str] = &[
    "l2announcer_leases_held",
    "l2announcer_lease_acquisitions_total",
    "l2announcer_lease_losses_total",
    "l2announcer_takeover_latency_seconds",
    "l2announcer_lease_renew_errors_total",
    "l2announcer_lease_renew_duration_seconds",
    "l2announcer_k8s_client_requests_total",
    "l2announcer_k8s_client_throttle_wait_seconds",
    "l2announcer_responses_sent_total",
    "l2announcer_gratuitous_sent_total",
    "l2announcer_announced",
    "l2announcer_service_candidate",
    "l2announcer_liveness_age_seconds",
    "l2announcer_reconcile_errors_total",
    "l2announcer_reconcile_duration_seconds",
    "l2announcer_policy_errors",
    "l2announcer_heartbeat_renewals_total",
    "l2announcer_heartbeat_age_seconds",
    "l2announcer_evictions_total",
    "l2announcer_claims_taken_total",
    "l2announcer_mirror_updates_pending",
    "l2announcer_pod_announcements_total",
    "l2announcer_pod_addresses",
    "l2announcer_build_info",
];

/// The `family` label of the pod metrics.
pub const FAMILIES: &[&str] = &["ipv4", "ipv6"];

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

/// Why a claim was taken (node-heartbeat mode).
pub const TAKE_REASONS: &[&str] = &["new", "takeover", "hand-off"];

/// Reasons a lease is acquired: nobody held it, or it was taken over from
/// another node whose lease expired.
pub const ACQUISITION_REASONS: &[&str] = &["acquired", "takeover"];
/// Reasons a lease is lost, as the lease actor names them.
pub const LOSS_REASONS: &[&str] = &["renew-deadline", "withdrawn", "shutdown", "released"];
/// The `code` label of a request that got no HTTP answer (as client-go).
pub const NO_ANSWER_CODE: &str = "<error>";

const TAKEOVER_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];
const RENEW_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const THROTTLE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const RECONCILE_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Why the metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric: {0}")]
    Register(#[from] prometheus::Error),
}

/// What the metrics remember between observations.
#[derive(Default)]
struct State {
    /// When the datapath liveness was last refreshed.
    last_liveness: Option<Instant>,
    /// When a heartbeat renewal last succeeded (node-heartbeat mode).
    last_heartbeat: Option<Instant>,
}

/// The agent's metrics. Share it as `Arc<Metrics>`; every observer method
/// takes `&self`.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    leases_held: IntGauge,
    lease_acquisitions: IntCounterVec,
    lease_losses: IntCounterVec,
    takeover_latency: Histogram,
    renew_errors: IntCounter,
    renew_duration: Histogram,
    k8s_requests: IntCounterVec,
    throttle_wait: Histogram,
    /// Responses, gratuitous, announced and candidate series.
    series: ServiceSeries,
    liveness_age: Gauge,
    reconcile_errors: IntCounter,
    reconcile_duration: Histogram,
    policy_errors: IntGauge,
    heartbeat_renewals: IntCounterVec,
    heartbeat_age: Gauge,
    evictions: IntCounterVec,
    claims_taken: IntCounterVec,
    mirror_pending: IntGauge,
    pod_announcements: IntCounterVec,
    pod_addresses: IntGaugeVec,
    state: Mutex<State>,
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, MetricsError> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Registers every metric in a fresh registry. Fails only on a name or
    /// label the prometheus crate rejects, which would be a bug here.
    pub fn new() -> Result<Self, MetricsError> {
        let r = Registry::new();
        let lease_acquisitions = counter_vec(
            &r,
            "l2announcer_lease_acquisitions_total",
            "Leases acquired by this node, by reason (acquired: no previous holder; takeover: taken from another node's expired lease).",
            &["reason"],
        )?;
        for reason in ACQUISITION_REASONS {
            lease_acquisitions.with_label_values(&[reason]);
        }
        let lease_losses = counter_vec(
            &r,
            "l2announcer_lease_losses_total",
            "Leases this node stopped holding, by reason (renew-deadline, withdrawn, shutdown).",
            &["reason"],
        )?;
        for reason in LOSS_REASONS {
            lease_losses.with_label_values(&[reason]);
        }
        let heartbeat_renewals = counter_vec(
            &r,
            "l2announcer_heartbeat_renewals_total",
            "Heartbeat Lease writes of this node (node-heartbeat mode), by result (ok, error).",
            &["result"],
        )?;
        for result in ["ok", "error"] {
            heartbeat_renewals.with_label_values(&[result]);
        }
        let heartbeat_age = Gauge::new(
            "l2announcer_heartbeat_age_seconds",
            "Seconds since this node's heartbeat was last renewed (node-heartbeat mode; since start when never).",
        )?;
        r.register(Box::new(heartbeat_age.clone()))?;
        let evictions = counter_vec(
            &r,
            "l2announcer_evictions_total",
            "Nodes evicted for not renewing their heartbeat, by role (performed by this node, observed).",
            &["role"],
        )?;
        for role in ["performed", "observed"] {
            evictions.with_label_values(&[role]);
        }
        let claims_taken = counter_vec(
            &r,
            "l2announcer_claims_taken_total",
            "Claims this node took in the assignment record, by reason (new, takeover, hand-off).",
            &["reason"],
        )?;
        for reason in TAKE_REASONS {
            claims_taken.with_label_values(&[reason]);
        }
        let liveness_age = Gauge::new(
            "l2announcer_liveness_age_seconds",
            "Seconds since the datapath liveness timestamp was last refreshed (since start when never).",
        )?;
        r.register(Box::new(liveness_age.clone()))?;
        let build_info = gauge_vec(
            &r,
            "l2announcer_build_info",
            "Always 1; the version label names the agent's build.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let pod_announcements = counter_vec(
            &r,
            "l2announcer_pod_announcements_total",
            "Gratuitous ARP (ipv4) and unsolicited neighbor advertisements (ipv6) sent for the addresses of this node's pods (--enable-l2-pod-announcements), by family.",
            &["family"],
        )?;
        let pod_addresses = gauge_vec(
            &r,
            "l2announcer_pod_addresses",
            "Addresses of this node's pods that pod announcements cover now, by family.",
            &["family"],
        )?;
        for f in FAMILIES {
            pod_announcements.with_label_values(&[f]);
            pod_addresses.with_label_values(&[f]);
        }
        Ok(Metrics {
            started: Instant::now(),
            leases_held: int_gauge(&r, "l2announcer_leases_held", "Leases this node holds now.")?,
            lease_acquisitions,
            lease_losses,
            takeover_latency: histogram(
                &r,
                "l2announcer_takeover_latency_seconds",
                "Time from the previous holder's last observed renewal to this node's acquisition of the lease.",
                TAKEOVER_BUCKETS,
            )?,
            renew_errors: counter(
                &r,
                "l2announcer_lease_renew_errors_total",
                "Lease writes of a held lease that failed.",
            )?,
            renew_duration: histogram(
                &r,
                "l2announcer_lease_renew_duration_seconds",
                "Duration of lease write requests (renewals and acquisitions).",
                RENEW_BUCKETS,
            )?,
            k8s_requests: counter_vec(
                &r,
                "l2announcer_k8s_client_requests_total",
                "Kubernetes API requests by verb, resource and HTTP status code (<error> when no answer came).",
                &["verb", "resource", "code"],
            )?,
            throttle_wait: histogram(
                &r,
                "l2announcer_k8s_client_throttle_wait_seconds",
                "Client-side rate limiter wait of every Kubernetes API request, zero waits included.",
                THROTTLE_BUCKETS,
            )?,
            series: {
                let series = ServiceSeries::new()?;
                r.register(Box::new(series.clone()))?;
                series
            },
            liveness_age,
            heartbeat_renewals,
            heartbeat_age,
            evictions,
            claims_taken,
            mirror_pending: int_gauge(
                &r,
                "l2announcer_mirror_updates_pending",
                "Per-Service Lease mirror writes waiting (node-heartbeat mode).",
            )?,
            reconcile_errors: counter(
                &r,
                "l2announcer_reconcile_errors_total",
                "Datapath reconciliation errors.",
            )?,
            reconcile_duration: histogram(
                &r,
                "l2announcer_reconcile_duration_seconds",
                "Duration of datapath reconciliation rounds.",
                RECONCILE_BUCKETS,
            )?,
            pod_announcements,
            pod_addresses,
            policy_errors: int_gauge(
                &r,
                "l2announcer_policy_errors",
                "CiliumL2AnnouncementPolicies that are invalid now.",
            )?,
            registry: r,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters behind; they
        // stay usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one Kubernetes API request; `code` is `None` when no HTTP
    /// answer came.
    pub fn record_request(&self, verb: &str, resource: &str, code: Option<u16>) {
        let code = code.map_or_else(|| NO_ANSWER_CODE.to_string(), |c| c.to_string());
        self.k8s_requests
            .with_label_values(&[verb, resource, code.as_str()])
            .inc();
    }

    /// Mirrors the datapath's absolute per-entry response counters. Each
    /// reading adds its increase since the last one; a reading lower than
    /// the last (the map entry was re-created) counts from zero. Entries
    /// missing from `entries` are dropped from the exposition.
    pub fn set_responses(&self, entries: &[(IpAddr, String, u64)]) {
        self.series.set_responses(entries);
    }

    /// Records one datapath reconciliation round and its errors.
    pub fn observe_reconcile(&self, duration: Duration, errors: u64) {
        self.reconcile_duration.observe(duration.as_secs_f64());
        self.reconcile_errors.inc_by(errors);
    }

    /// The exposition in Prometheus' text format; the liveness age is
    /// computed now.
    pub fn render(&self) -> String {
        let (age, heartbeat_age) = {
            let state = self.state();
            (
                state.last_liveness.unwrap_or(self.started).elapsed(),
                state.last_heartbeat.unwrap_or(self.started).elapsed(),
            )
        };
        self.liveness_age.set(age.as_secs_f64());
        self.heartbeat_age.set(heartbeat_age.as_secs_f64());
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl LeaseObserver for Metrics {
    fn acquired(&self, _service: &str, takeover: Option<Duration>) {
        match takeover {
            Some(latency) => {
                self.lease_acquisitions
                    .with_label_values(&["takeover"])
                    .inc();
                self.takeover_latency.observe(latency.as_secs_f64());
            }
            None => self
                .lease_acquisitions
                .with_label_values(&["acquired"])
                .inc(),
        }
    }

    fn lost(&self, _service: &str, reason: &str) {
        self.lease_losses.with_label_values(&[reason]).inc();
    }

    fn renew(&self, _service: &str, latency: Duration, ok: bool) {
        self.renew_duration.observe(latency.as_secs_f64());
        if !ok {
            self.renew_errors.inc();
        }
    }

    fn held(&self, count: usize) {
        self.leases_held
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    fn heartbeat(&self, latency: Duration, ok: bool) {
        self.renew_duration.observe(latency.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.heartbeat_renewals.with_label_values(&[result]).inc();
        if ok {
            self.state().last_heartbeat = Some(Instant::now());
        }
    }

    fn eviction(&self, performed: bool) {
        let role = if performed { "performed" } else { "observed" };
        self.evictions.with_label_values(&[role]).inc();
    }

    fn claim_taken(&self, _claim: &str, reason: &str) {
        // lease_acquisitions is counted by `acquired`, which the
        // heartbeat election reports alongside.
        self.claims_taken.with_label_values(&[reason]).inc();
    }

    fn mirror_pending(&self, count: usize) {
        self.mirror_pending
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

impl ThrottleObserver for Metrics {
    fn waited(&self, wait: Duration, _method: &str, _path: &str) {
        self.throttle_wait.observe(wait.as_secs_f64());
    }

    fn completed(&self, method: &str, path: &str, query: Option<&str>, code: Option<u16>) {
        let (verb, resource) = classify(method, path, query);
        self.record_request(verb, &resource, code);
    }
}

impl PolicyObserver for Metrics {
    fn invalid_policies(&self, count: usize) {
        self.policy_errors
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

impl DatapathObserver for Metrics {
    fn responses(&self, entries: &[(IpAddr, String, u64)]) {
        self.set_responses(entries);
    }

    fn reconciled(&self, duration: Duration, failed: bool) {
        self.observe_reconcile(duration, u64::from(failed));
    }

    fn gratuitous_sent(&self, ip: IpAddr, interface: &str) {
        self.series.gratuitous_sent(ip, interface);
    }

    fn liveness_refreshed(&self) {
        self.state().last_liveness = Some(Instant::now());
    }
}

impl PodObserver for Metrics {
    fn pod_announced(&self, ip: IpAddr, _interface: &str) {
        self.pod_announcements
            .with_label_values(&[family(ip)])
            .inc();
    }

    fn pod_addresses(&self, ipv4: usize, ipv6: usize) {
        for (f, n) in [("ipv4", ipv4), ("ipv6", ipv6)] {
            self.pod_addresses
                .with_label_values(&[f])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

impl AnnounceObserver for Metrics {
    fn announcing(&self, service: &ServiceView, announcing: bool, entries: &Candidacy) {
        let entries = if announcing {
            entries.entries.iter().cloned().collect()
        } else {
            Vec::new()
        };
        self.series.announced(service.key(), entries);
    }

    fn candidate(&self, service: &str, candidate: bool) {
        self.series.candidate(service, candidate);
    }
}

/// Maps a Kubernetes REST request to its RBAC verb and resource, as the API
/// server's authorizer would: `get`/`list`/`watch`/`create`/`update`/
/// `patch`/`delete`/`deletecollection`, and the plural resource with its
/// subresource after a slash (`ciliuml2announcementpolicies/status`).
/// Discovery paths (`/api`, `/apis/...` without a resource, `/version`) are
/// resource `discovery`; anything else is `other`.
pub fn classify(method: &str, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Strip the group/version prefix.
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        ["api"] | ["apis"] | ["apis", _] | ["version"] | ["openapi", ..] => {
            return (verb_for(method, false, false), "discovery".to_string());
        }
        _ => return (verb_for(method, false, false), "other".to_string()),
    };
    // The legacy watch prefix: /api/v1/watch/...
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    // namespaces/{ns}/{resource}... unless the object is the namespace itself.
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        _ => rest,
    };
    let (resource, named) = match rest {
        [] => return (verb_for(method, false, false), "discovery".to_string()),
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = legacy_watch || query.is_some_and(is_watch_query);
    (verb_for(method, named, watch), resource)
}

fn is_watch_query(query: &str) -> bool {
    query
        .split('&')
        .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
}

fn verb_for(method: &str, named: bool, watch: bool) -> &'static str {
    match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" if watch => "watch",
        "GET" | "HEAD" if named => "get",
        "GET" | "HEAD" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if named => "delete",
        "DELETE" => "deletecollection",
        _ => "other",
    }
}

/// The HTTP routes: `/metrics`, `/healthz` (always 200 `ok`) and `/readyz`
/// (200 while `ready` is true, else 503).
pub fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ok").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                    }
                }
            }),
        )
}

/// Binds `addr` and serves [`router`] until `stop` turns true.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_listener(listener, metrics, ready, stop).await
}

/// Serves [`router`] on a bound listener until `stop` turns true (for a
/// port chosen by the kernel, bind `:0` and read `local_addr()` first).
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn classify_maps_kubernetes_paths() {
        let cases: &[(&str, &str, Option<&str>, &str, &str)] = &[
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/cilium-l2announce-a-b",
                None,
                "get",
                "leases",
            ),
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
                Some("watch=true&resourceVersion=5"),
                "watch",
                "leases",
            ),
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
                Some("limit=500"),
                "list",
                "leases",
            ),
            (
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
                None,
                "create",
                "leases",
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x",
                None,
                "update",
                "leases",
            ),
            (
                "DELETE",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x",
                None,
                "delete",
                "leases",
            ),
            (
                "DELETE",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
                None,
                "deletecollection",
                "leases",
            ),
            (
                "GET",
                "/api/v1/services",
                Some("watch=1"),
                "watch",
                "services",
            ),
            ("GET", "/api/v1/services", None, "list", "services"),
            ("GET", "/api/v1/nodes/node-a", None, "get", "nodes"),
            (
                "GET",
                "/apis/discovery.k8s.io/v1/endpointslices",
                Some("watch=true"),
                "watch",
                "endpointslices",
            ),
            (
                "PATCH",
                "/apis/cilium.io/v2alpha1/ciliuml2announcementpolicies/p1/status",
                None,
                "patch",
                "ciliuml2announcementpolicies/status",
            ),
            (
                "GET",
                "/apis/cilium.io/v2alpha1/ciliuml2announcementpolicies",
                None,
                "list",
                "ciliuml2announcementpolicies",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/events",
                None,
                "create",
                "events",
            ),
            (
                "PATCH",
                "/apis/events.k8s.io/v1/namespaces/default/events/e1",
                None,
                "patch",
                "events",
            ),
            (
                "GET",
                "/api/v1/namespaces/default",
                None,
                "get",
                "namespaces",
            ),
            ("GET", "/api/v1/namespaces", None, "list", "namespaces"),
            (
                "GET",
                "/api/v1/watch/namespaces/default/services",
                None,
                "watch",
                "services",
            ),
            ("GET", "/api", None, "list", "discovery"),
            (
                "GET",
                "/apis/coordination.k8s.io/v1",
                None,
                "list",
                "discovery",
            ),
            ("GET", "/version", None, "list", "discovery"),
            ("GET", "/healthz", None, "list", "other"),
        ];
        for (method, path, query, verb, resource) in cases {
            let got = classify(method, path, *query);
            assert_eq!(
                got,
                (*verb, resource.to_string()),
                "{method} {path} {query:?}"
            );
        }
    }

    #[test]
    fn acquisitions_and_losses_by_reason() {
        let m = Metrics::new().unwrap();
        m.acquired("default/a", None);
        m.acquired("default/b", Some(Duration::from_millis(2500)));
        m.acquired("default/c", Some(Duration::from_millis(700)));
        m.lost("default/a", "withdrawn");
        m.held(2);
        let text = m.render();
        assert_eq!(
            value_of(
                &text,
                "l2announcer_lease_acquisitions_total{reason=\"acquired\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &text,
                "l2announcer_lease_acquisitions_total{reason=\"takeover\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value_of(
                &text,
                "l2announcer_lease_losses_total{reason=\"withdrawn\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, "l2announcer_lease_losses_total{reason=\"shutdown\"}"),
            Some(0.0)
        );
        assert_eq!(
            value_of(&text, "l2announcer_takeover_latency_seconds_count"),
            Some(2.0)
        );
        assert_eq!(
            value_of(&text, "l2announcer_takeover_latency_seconds_sum"),
            Some(3.2)
        );
        assert_eq!(
            value_of(
                &text,
                "l2announcer_takeover_latency_seconds_bucket{le=\"1\"}"
            ),
            Some(1.0)
        );
        assert_eq!(value_of(&text, "l2announcer_leases_held"), Some(2.0));
    }

    #[test]
    fn renew_errors_and_duration() {
        let m = Metrics::new().unwrap();
        m.renew("default/a", Duration::from_millis(20), true);
        m.renew("default/a", Duration::from_millis(30), false);
        let text = m.render();
        assert_eq!(
            value_of(&text, "l2announcer_lease_renew_errors_total"),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, "l2announcer_lease_renew_duration_seconds_count"),
            Some(2.0)
        );
    }

    #[test]
    fn throttle_wait_counts_zero_waits() {
        let m = Metrics::new().unwrap();
        m.waited(Duration::ZERO, "GET", "/api/v1/services");
        m.waited(
            Duration::from_millis(1500),
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x",
        );
        let text = m.render();
        assert_eq!(
            value_of(&text, "l2announcer_k8s_client_throttle_wait_seconds_count"),
            Some(2.0)
        );
        assert_eq!(
            value_of(&text, "l2announcer_k8s_client_throttle_wait_seconds_sum"),
            Some(1.5)
        );
        assert_eq!(
            value_of(
                &text,
                "l2announcer_k8s_client_throttle_wait_seconds_bucket{le=\"0.001\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn completed_requests_are_classified() {
        let m = Metrics::new().unwrap();
        m.completed("GET", "/api/v1/services", Some("watch=true"), Some(200));
        m.completed(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x",
            None,
            Some(409),
        );
        m.completed(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x",
            None,
            None,
        );
        let text = m.render();
        assert_eq!(
            value_of(
                &text,
                "l2announcer_k8s_client_requests_total{code=\"200\",resource=\"services\",verb=\"watch\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &text,
                "l2announcer_k8s_client_requests_total{code=\"409\",resource=\"leases\",verb=\"update\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &text,
                "l2announcer_k8s_client_requests_total{code=\"<error>\",resource=\"leases\",verb=\"update\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn responses_mirror_absolute_counters_monotonically() {
        let m = Metrics::new().unwrap();
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let series = "l2announcer_responses_sent_total{interface=\"eth0\",ip=\"192.0.2.10\"}";
        m.set_responses(&[(ip, "eth0".into(), 5)]);
        assert_eq!(value_of(&m.render(), series), Some(5.0));
        m.set_responses(&[(ip, "eth0".into(), 8)]);
        assert_eq!(value_of(&m.render(), series), Some(8.0));
        // The map entry was re-created: its 2 are new responses.
        m.set_responses(&[(ip, "eth0".into(), 2)]);
        assert_eq!(value_of(&m.render(), series), Some(10.0));
        // Gone from the map: gone from the exposition.
        m.set_responses(&[]);
        assert_eq!(value_of(&m.render(), series), None);
        assert!(!m.render().contains("l2announcer_responses_sent_total{"));
    }

    #[test]
    fn candidate_gauge_follows_the_reports() {
        let m = Metrics::new().unwrap();
        let web = "l2announcer_service_candidate{service=\"default/web\"}";
        let db = "l2announcer_service_candidate{service=\"default/db\"}";
        m.candidate("default/web", true);
        m.candidate("default/db", true);
        assert_eq!(value_of(&m.render(), web), Some(1.0));
        assert_eq!(value_of(&m.render(), db), Some(1.0));
        m.candidate("default/web", false);
        assert_eq!(value_of(&m.render(), web), None);
        assert_eq!(value_of(&m.render(), db), Some(1.0));
    }

    #[test]
    fn pod_announcements_count_by_family_from_zero() {
        let m = Metrics::new().unwrap();
        let v4 = "l2announcer_pod_announcements_total{family=\"ipv4\"}";
        let v6 = "l2announcer_pod_announcements_total{family=\"ipv6\"}";
        assert_eq!(value_of(&m.render(), v4), Some(0.0), "exposed before any");
        assert_eq!(value_of(&m.render(), v6), Some(0.0));
        m.pod_announced("192.0.2.50".parse().unwrap(), "eth0");
        m.pod_announced("192.0.2.51".parse().unwrap(), "eth0");
        m.pod_announced("2001:db8::50".parse().unwrap(), "eth0");
        assert_eq!(value_of(&m.render(), v4), Some(2.0));
        assert_eq!(value_of(&m.render(), v6), Some(1.0));
        m.pod_addresses(3, 1);
        let text = m.render();
        assert_eq!(
            value_of(&text, "l2announcer_pod_addresses{family=\"ipv4\"}"),
            Some(3.0)
        );
        assert_eq!(
            value_of(&text, "l2announcer_pod_addresses{family=\"ipv6\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn announced_gauge_follows_candidacy() {
        let m = Metrics::new().unwrap();
        let view = ServiceView {
            namespace: "default".into(),
            name: "web".into(),
            ..Default::default()
        };
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        let mut c = Candidacy::default();
        c.entries.insert((v4, "eth0".into()));
        c.entries.insert((v6, "eth0".into()));
        m.announcing(&view, true, &c);
        let s4 =
            "l2announcer_announced{interface=\"eth0\",ip=\"192.0.2.10\",service=\"default/web\"}";
        let s6 =
            "l2announcer_announced{interface=\"eth0\",ip=\"2001:db8::10\",service=\"default/web\"}";
        let text = m.render();
        assert_eq!(value_of(&text, s4), Some(1.0));
        assert_eq!(value_of(&text, s6), Some(1.0));
        // A changed candidacy drops the pair no longer announced.
        c.entries.remove(&(v6, "eth0".into()));
        m.announcing(&view, true, &c);
        let text = m.render();
        assert_eq!(value_of(&text, s4), Some(1.0));
        assert_eq!(value_of(&text, s6), None);
        m.announcing(&view, false, &Candidacy::default());
        assert!(!m.render().contains("l2announcer_announced{"));
    }

    #[test]
    fn liveness_age_is_computed_at_render() {
        let m = Metrics::new().unwrap();
        m.liveness_refreshed();
        let age = value_of(&m.render(), "l2announcer_liveness_age_seconds").unwrap();
        assert!((0.0..5.0).contains(&age), "age {age}");
        // Pretend the last refresh was long ago.
        m.state().last_liveness = Instant::now().checked_sub(Duration::from_secs(100));
        let age = value_of(&m.render(), "l2announcer_liveness_age_seconds").unwrap();
        assert!(age >= 100.0, "age {age}");
    }

    #[test]
    fn policy_errors_reconcile_and_build_info() {
        let m = Metrics::new().unwrap();
        m.invalid_policies(3);
        m.observe_reconcile(Duration::from_millis(2), 2);
        let text = m.render();
        assert_eq!(value_of(&text, "l2announcer_policy_errors"), Some(3.0));
        assert_eq!(
            value_of(&text, "l2announcer_reconcile_errors_total"),
            Some(2.0)
        );
        assert_eq!(
            value_of(&text, "l2announcer_reconcile_duration_seconds_count"),
            Some(1.0)
        );
        let info = format!(
            "l2announcer_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value_of(&text, &info), Some(1.0));
    }

    #[test]
    fn every_name_is_exported() {
        let m = Metrics::new().unwrap();
        // Label sets without a child are not exposed: give each one.
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        m.record_request("list", "services", Some(200));
        m.set_responses(&[(ip, "eth0".into(), 1)]);
        m.gratuitous_sent(ip, "eth0");
        let mut c = Candidacy::default();
        c.entries.insert((ip, "eth0".into()));
        m.announcing(&ServiceView::default(), true, &c);
        m.candidate("default/web", true);
        let text = m.render();
        for name in NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, NAMES.len());
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve_listener(
            listener,
            Arc::new(Metrics::new().unwrap()),
            ready.clone(),
            stop_rx,
        ));
        async fn fetch(addr: SocketAddr, path: &str) -> String {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
        assert!(fetch(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(fetch(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Release);
        assert!(fetch(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = fetch(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"));
        assert!(metrics.contains("text/plain; version=0.0.4"));
        assert!(metrics.contains("l2announcer_build_info{"));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
