//! Fault injection and observation: latency, injected error codes, 429 with
//! Retry-After, late watch events, pausing clients (until lifted or for a
//! while), per verb/resource/client counters and a request log.
//!
//! Error injection is deterministic: a rule with `fraction: 0.25` fails
//! exactly every fourth matching request (an accumulator, not a random
//! draw), so tests that use it are repeatable.
//!
//! A pause acts like a network partition between the server and the
//! matching clients: their requests get no answer and their watches deliver
//! nothing while it lasts. Nothing is failed with an error the client could
//! take for an answer. When the pause ends, each held request is handled
//! then (it takes effect at that moment, as one retransmitted after a healed
//! partition would) and answered, and the held watch events follow in
//! order. A request whose client gave up meanwhile (closed the connection)
//! is dropped unanswered and has no effect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// Which clients a rule or pause applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ClientMatch {
    /// Every client.
    #[default]
    All,
    /// Clients whose User-Agent contains this string.
    UserAgent(String),
    /// Clients connecting from this IP address (any port), e.g. "127.0.0.1".
    SourceIp(String),
    /// Clients connecting from this exact address, e.g. "127.0.0.1:40000".
    SourceAddr(String),
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientId {
    pub user_agent: String,
    pub addr: SocketAddr,
}

impl ClientMatch {
    pub fn matches(&self, c: &ClientId) -> bool {
        match self {
            ClientMatch::All => true,
            ClientMatch::UserAgent(ua) => c.user_agent.contains(ua.as_str()),
            ClientMatch::SourceIp(ip) => c.addr.ip().to_string() == *ip,
            ClientMatch::SourceAddr(a) => c.addr.to_string() == *a,
        }
    }
}

/// What a fault rule does to a matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum FaultAction {
    /// Delay the request before handling it.
    Latency { millis: u64 },
    /// Answer a fraction of requests with this HTTP code and a Status.
    Fail { code: u16, fraction: f64 },
    /// Answer a fraction of requests with 429 TooManyRequests and
    /// `Retry-After: retry_after_seconds`.
    TooManyRequests {
        fraction: f64,
        retry_after_seconds: u64,
    },
    /// Deliver each watch event (and bookmark) `millis` after it was
    /// committed; the request itself is answered at once. Rules whose verb
    /// is set apply only when it is "watch".
    WatchDelay { millis: u64 },
}

/// A fault: which requests (client, verb, resource) and what happens to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    #[serde(default)]
    pub client: ClientMatch,
    /// Kubernetes verb (get, list, watch, create, update, patch, delete);
    /// None for all.
    #[serde(default)]
    pub verb: Option<String>,
    /// Resource plural (leases, services, ...); None for all.
    #[serde(default)]
    pub resource: Option<String>,
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule for every request.
    pub fn all(action: FaultAction) -> Self {
        FaultRule {
            client: ClientMatch::All,
            verb: None,
            resource: None,
            action,
        }
    }

    fn applies(&self, client: &ClientId, verb: &str, resource: &str) -> bool {
        self.client.matches(client)
            && self.verb.as_deref().is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

/// One served request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// Milliseconds since the Unix epoch when the request arrived.
    pub time_ms: u64,
    pub user_agent: String,
    pub source: String,
    pub method: String,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete,
    /// deletecollection; or "discovery" / "openapi" / "version"; "unknown".
    pub verb: String,
    pub group: String,
    /// Resource plural, "" for non-resource requests.
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    /// Raw query string ("" when none).
    pub query: String,
    /// HTTP status code answered (for watches: the initial code).
    pub code: u16,
    /// Time to the response head, in microseconds.
    pub latency_us: u64,
}

/// Request count per (verb, group/resource, user agent).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterKey {
    pub verb: String,
    pub resource: String,
    pub user_agent: String,
    pub code: u16,
}

/// Matching clients are paused until `until` (None: until lifted).
struct Pause {
    client: ClientMatch,
    until: Option<Instant>,
}

impl Pause {
    fn active(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

#[derive(Default)]
struct FaultState {
    rules: BTreeMap<u64, (FaultRule, f64)>,
    next_id: u64,
    paused: Vec<Pause>,
    log: Vec<RequestRecord>,
    counters: BTreeMap<CounterKey, u64>,
    log_limit: usize,
}

/// Shared fault and observation state; `changed` wakes paused requests.
pub struct Faults {
    state: Mutex<FaultState>,
    /// Requests (and watch deliveries) waiting in a pause right now.
    held: std::sync::atomic::AtomicUsize,
    changed: watch::Sender<u64>,
}

/// What to do with a request after consulting the rules.
pub enum Verdict {
    Proceed,
    Fail(u16),
    TooMany(u64),
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    pub fn new() -> Self {
        Faults {
            state: Mutex::new(FaultState {
                log_limit: 200_000,
                ..Default::default()
            }),
            changed: watch::Sender::new(0),
            held: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        // A panic while holding this lock leaves only counters half-updated;
        // keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn add_rule(&self, rule: FaultRule) -> u64 {
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.rules.insert(id, (rule, 0.0));
        id
    }

    pub fn remove_rule(&self, id: u64) -> bool {
        self.lock().rules.remove(&id).is_some()
    }

    pub fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    pub fn rules(&self) -> Vec<(u64, FaultRule)> {
        self.lock()
            .rules
            .iter()
            .map(|(id, (r, _))| (*id, r.clone()))
            .collect()
    }

    /// Pauses matching clients until lifted, or for `duration`.
    pub fn pause(&self, client: ClientMatch, duration: Option<Duration>) {
        let until = duration.map(|d| Instant::now() + d);
        self.lock().paused.push(Pause { client, until });
        self.notify();
    }

    /// Lifts pauses equal to `m` (`ClientMatch::All` lifts only the global
    /// pause; use `unpause_all` for everything).
    pub fn unpause(&self, m: &ClientMatch) {
        self.lock().paused.retain(|p| p.client != *m);
        self.notify();
    }

    pub fn unpause_all(&self) {
        self.lock().paused.clear();
        self.notify();
    }

    /// Whether `c` is paused now, and until when (None: until lifted).
    /// Forgets pauses that have run out.
    fn paused_until(&self, c: &ClientId) -> Option<Option<Instant>> {
        let now = Instant::now();
        let mut s = self.lock();
        s.paused.retain(|p| p.active(now));
        let mut found: Option<Option<Instant>> = None;
        for p in s.paused.iter().filter(|p| p.client.matches(c)) {
            found = match (found, p.until) {
                (Some(None), _) | (_, None) => Some(None),
                (Some(Some(a)), Some(b)) => Some(Some(a.max(b))),
                (None, Some(b)) => Some(Some(b)),
            };
        }
        found
    }

    pub fn is_paused(&self, c: &ClientId) -> bool {
        self.paused_until(c).is_some()
    }

    /// Waits while `c` is paused.
    pub async fn wait_unpaused(&self, c: &ClientId) {
        use std::sync::atomic::Ordering;
        let mut rx = self.changed.subscribe();
        if !self.is_paused(c) {
            return;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        // Decrements even when the waiting future is dropped.
        struct Held<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _held = Held(&self.held);
        while let Some(until) = self.paused_until(c) {
            let run_out = async {
                match until {
                    Some(u) => tokio::time::sleep_until(u).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = run_out => {}
            }
        }
    }

    /// How many requests or watch deliveries are held by a pause now.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Total latency to add and the verdict for a request.
    pub fn consult(&self, c: &ClientId, verb: &str, resource: &str) -> (Duration, Verdict) {
        let mut s = self.lock();
        let mut delay = Duration::ZERO;
        let mut verdict = Verdict::Proceed;
        for (rule, acc) in s.rules.values_mut() {
            if !rule.applies(c, verb, resource) {
                continue;
            }
            match rule.action {
                FaultAction::WatchDelay { .. } => {}
                FaultAction::Latency { millis } => delay += Duration::from_millis(millis),
                FaultAction::Fail { code, fraction } => {
                    *acc += fraction;
                    if *acc >= 1.0 - 1e-9 {
                        *acc -= 1.0;
                        if matches!(verdict, Verdict::Proceed) {
                            verdict = Verdict::Fail(code);
                        }
                    }
                }
                FaultAction::TooManyRequests {
                    fraction,
                    retry_after_seconds,
                } => {
                    *acc += fraction;
                    if *acc >= 1.0 - 1e-9 {
                        *acc -= 1.0;
                        if matches!(verdict, Verdict::Proceed) {
                            verdict = Verdict::TooMany(retry_after_seconds);
                        }
                    }
                }
            }
        }
        (delay, verdict)
    }

    /// How late watch events of `resource` reach client `c` (the sum of
    /// the matching `WatchDelay` rules).
    pub fn watch_delay(&self, c: &ClientId, resource: &str) -> Duration {
        self.lock()
            .rules
            .values()
            .filter(|(rule, _)| rule.applies(c, "watch", resource))
            .map(|(rule, _)| match rule.action {
                FaultAction::WatchDelay { millis } => Duration::from_millis(millis),
                _ => Duration::ZERO,
            })
            .sum()
    }

    pub fn record(&self, r: RequestRecord) {
        let mut s = self.lock();
        let key = CounterKey {
            verb: r.verb.clone(),
            resource: if r.group.is_empty() {
                r.resource.clone()
            } else {
                format!("{}.{}", r.resource, r.group)
            },
            user_agent: r.user_agent.clone(),
            code: r.code,
        };
        *s.counters.entry(key).or_default() += 1;
        if s.log.len() >= s.log_limit {
            let drop = s.log_limit / 10 + 1;
            s.log.drain(..drop);
        }
        s.log.push(r);
    }

    pub fn log(&self) -> Vec<RequestRecord> {
        self.lock().log.clone()
    }

    pub fn counters(&self) -> Vec<(CounterKey, u64)> {
        self.lock()
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn reset_observations(&self) {
        let mut s = self.lock();
        s.log.clear();
        s.counters.clear();
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ua: &str) -> ClientId {
        ClientId {
            user_agent: ua.into(),
            addr: "127.0.0.1:4000".parse().unwrap(),
        }
    }

    #[test]
    fn fractions_are_exact() {
        let f = Faults::new();
        f.add_rule(FaultRule::all(FaultAction::Fail {
            code: 500,
            fraction: 0.25,
        }));
        let fails = (0..100)
            .filter(|_| {
                matches!(
                    f.consult(&client("x"), "get", "leases").1,
                    Verdict::Fail(500)
                )
            })
            .count();
        assert_eq!(fails, 25);
    }

    #[test]
    fn rules_match_client_verb_resource() {
        let f = Faults::new();
        f.add_rule(FaultRule {
            client: ClientMatch::UserAgent("agent".into()),
            verb: Some("update".into()),
            resource: Some("leases".into()),
            action: FaultAction::TooManyRequests {
                fraction: 1.0,
                retry_after_seconds: 2,
            },
        });
        assert!(matches!(
            f.consult(&client("agent/1"), "update", "leases").1,
            Verdict::TooMany(2)
        ));
        assert!(matches!(
            f.consult(&client("agent/1"), "get", "leases").1,
            Verdict::Proceed
        ));
        assert!(matches!(
            f.consult(&client("kubectl"), "update", "leases").1,
            Verdict::Proceed
        ));
        f.pause(ClientMatch::SourceIp("127.0.0.1".into()), None);
        assert!(f.is_paused(&client("x")));
        f.unpause_all();
        assert!(!f.is_paused(&client("x")));
    }

    #[test]
    fn watch_delays_add_up_and_leave_requests_alone() {
        let f = Faults::new();
        f.add_rule(FaultRule {
            client: ClientMatch::UserAgent("slow".into()),
            verb: None,
            resource: Some("leases".into()),
            action: FaultAction::WatchDelay { millis: 200 },
        });
        f.add_rule(FaultRule::all(FaultAction::WatchDelay { millis: 50 }));
        assert_eq!(
            f.watch_delay(&client("slow/1"), "leases"),
            Duration::from_millis(250)
        );
        assert_eq!(
            f.watch_delay(&client("other"), "leases"),
            Duration::from_millis(50)
        );
        assert_eq!(
            f.watch_delay(&client("slow/1"), "services"),
            Duration::from_millis(50)
        );
        let (delay, verdict) = f.consult(&client("slow/1"), "get", "leases");
        assert_eq!(delay, Duration::ZERO);
        assert!(matches!(verdict, Verdict::Proceed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_pause_lifts_itself() {
        let f = Faults::new();
        f.pause(
            ClientMatch::UserAgent("(node-a)".into()),
            Some(Duration::from_secs(3)),
        );
        let a = client("l2announcer/0.1.0 (node-a)");
        assert!(f.is_paused(&a));
        assert!(!f.is_paused(&client("l2announcer/0.1.0 (node-b)")));
        let started = Instant::now();
        f.wait_unpaused(&a).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(!f.is_paused(&a));
        assert_eq!(f.held(), 0);
    }
}
