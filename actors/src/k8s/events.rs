//! Kubernetes Events on Services when this node starts or stops announcing
//! them (reason, node, IPs, interfaces), visible with `kubectl describe
//! service`. Published by a task fed through a channel, so the actors never
//! wait for the API; rate limited per Service (a burst, then one per
//! interval; what exceeds it is dropped and counted in the next note).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::k8s::client::Background;
use crate::service::AnnounceObserver;
use crate::service::selection::{Candidacy, ServiceView};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Reasons, as `kubectl describe` shows them.
pub const REASON_STARTED: &str = "L2AnnouncementStarted";
pub const REASON_STOPPED: &str = "L2AnnouncementStopped";

/// How many events a Service may get at once, and then how often.
const BURST: u32 = 4;
const REFILL: Duration = Duration::from_secs(10);

struct Change {
    service: ServiceView,
    announcing: bool,
    entries: Candidacy,
    /// Set for a Service nobody can announce: (reason, note).
    not_possible: Option<(&'static str, String)>,
}

/// The observer half: hands changes to the publishing task.
pub struct ServiceEvents {
    tx: mpsc::UnboundedSender<Change>,
}

impl ServiceEvents {
    /// Starts the publishing task on the current runtime.
    pub fn start(
        client: kube::Client,
        node: &str,
        background: Arc<Background>,
    ) -> Arc<ServiceEvents> {
        let (tx, rx) = mpsc::unbounded_channel();
        let reporter = Reporter {
            controller: "l2announcer".to_string(),
            instance: Some(node.to_string()),
        };
        tokio::spawn(publish(
            Recorder::new(client, reporter),
            node.to_string(),
            background,
            rx,
        ));
        Arc::new(ServiceEvents { tx })
    }
}

impl AnnounceObserver for ServiceEvents {
    fn announcing(&self, service: &ServiceView, announcing: bool, entries: &Candidacy) {
        let _ = self.tx.send(Change {
            service: service.clone(),
            announcing,
            entries: entries.clone(),
            not_possible: None,
        });
    }

    fn not_announceable(&self, service: &ServiceView, reason: &'static str, why: &str) {
        let _ = self.tx.send(Change {
            service: service.clone(),
            announcing: false,
            entries: Candidacy::default(),
            not_possible: Some((reason, why.to_string())),
        });
    }
}

/// Forgets, at most once per [`PRUNE_EVERY`], the budgets that are as good
/// as new.
pub fn prune_idle(budgets: &mut HashMap<String, EventBudget>, last: &mut Instant, now: Instant) {
    if now.saturating_duration_since(*last) < PRUNE_EVERY {
        return;
    }
    *last = now;
    budgets.retain(|_, b| !b.is_idle(now));
    budgets.shrink_to_fit();
}

/// How often idle budgets are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Per-Service token bucket: `allow` says whether an event may go out now.
#[derive(Debug)]
pub struct EventBudget {
    tokens: u32,
    last: Instant,
    dropped: u32,
}

impl EventBudget {
    pub fn new(now: Instant) -> Self {
        EventBudget {
            tokens: BURST,
            last: now,
            dropped: 0,
        }
    }

    /// Takes a token if there is one; otherwise counts a drop.
    pub fn allow(&mut self, now: Instant) -> bool {
        let refills = now.saturating_duration_since(self.last).as_secs_f64() / REFILL.as_secs_f64();
        if refills >= 1.0 {
            self.tokens = (self.tokens + refills as u32).min(BURST);
            self.last = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Whether the bucket is full again at `now` with no drop to report: it
    /// is then the same as a new one, and its Service's entry can go (at
    /// thousands of Services, kept buckets add up).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.dropped == 0
            && (self.tokens >= BURST
                || now.saturating_duration_since(self.last) >= REFILL * (BURST - self.tokens))
    }

    /// Drops since the last event that went out (and resets the count).
    pub fn take_dropped(&mut self) -> u32 {
        std::mem::take(&mut self.dropped)
    }
}

/// The note of an event: node, IPs and interfaces.
pub fn note(node: &str, announcing: bool, entries: &Candidacy, dropped: u32) -> String {
    let ips: Vec<String> = entries.ips().iter().map(|ip| ip.to_string()).collect();
    let mut ifaces: Vec<&str> = entries.entries.iter().map(|(_, i)| i.as_str()).collect();
    ifaces.sort();
    ifaces.dedup();
    let mut text = if announcing {
        format!(
            "node {node} announces {} on {}",
            ips.join(", "),
            ifaces.join(", ")
        )
    } else {
        format!(
            "node {node} stopped announcing {} on {}",
            ips.join(", "),
            ifaces.join(", ")
        )
    };
    if dropped > 0 {
        text.push_str(&format!(" ({dropped} earlier changes not reported)"));
    }
    text
}

async fn publish(
    recorder: Recorder,
    node: String,
    background: Arc<Background>,
    mut rx: mpsc::UnboundedReceiver<Change>,
) {
    let mut budgets: HashMap<String, EventBudget> = HashMap::new();
    let mut pruned = Instant::now();
    while let Some(change) = rx.recv().await {
        let key = change.service.key();
        let now = Instant::now();
        prune_idle(&mut budgets, &mut pruned, now);
        let budget = budgets
            .entry(key.clone())
            .or_insert_with(|| EventBudget::new(now));
        // Events are best effort: over the node's background budget they
        // are dropped (and counted in the Service's next note).
        if !background.try_take(now) {
            budget.dropped += 1;
            debug!(service = %key, "event dropped: background budget");
            continue;
        }
        if !budget.allow(now) {
            debug!(service = %key, "event rate limited");
            continue;
        }
        let dropped = budget.take_dropped();
        let event = match &change.not_possible {
            Some((reason, why)) => Event {
                type_: EventType::Warning,
                reason: reason.to_string(),
                note: Some(format!("node {node}: {why}")),
                action: "Withdraw".to_string(),
                secondary: None,
            },
            None => Event {
                type_: EventType::Normal,
                reason: if change.announcing {
                    REASON_STARTED
                } else {
                    REASON_STOPPED
                }
                .to_string(),
                note: Some(note(&node, change.announcing, &change.entries, dropped)),
                action: if change.announcing {
                    "Announce"
                } else {
                    "Withdraw"
                }
                .to_string(),
                secondary: None,
            },
        };
        let reference = ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Service".to_string()),
            namespace: Some(change.service.namespace.clone()),
            name: Some(change.service.name.clone()),
            uid: Some(change.service.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(service = %key, error = %e, "publishing event");
        }
    }
}

/// Sends announcement changes to several observers (metrics and events).
pub struct Fanout(pub Vec<Arc<dyn AnnounceObserver>>);

impl AnnounceObserver for Fanout {
    fn not_announceable(&self, service: &ServiceView, reason: &'static str, why: &str) {
        for o in &self.0 {
            o.not_announceable(service, reason, why);
        }
    }

    fn announcing(&self, service: &ServiceView, announcing: bool, entries: &Candidacy) {
        for o in &self.0 {
            o.announcing(service, announcing, entries);
        }
    }

    fn candidate(&self, service: &str, candidate: bool) {
        for o in &self.0 {
            o.candidate(service, candidate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0);
        for _ in 0..BURST {
            assert!(b.allow(t0));
        }
        assert!(!b.allow(t0));
        assert!(!b.allow(t0 + REFILL / 2));
        assert_eq!(b.take_dropped(), 2);
        assert!(b.allow(t0 + REFILL));
        assert!(!b.allow(t0 + REFILL));
    }

    #[test]
    fn notes_name_node_ips_and_interfaces() {
        let entries = Candidacy {
            entries: [
                ("192.0.2.10".parse().expect("ip"), "eth0".to_string()),
                ("2001:db8::10".parse().expect("ip"), "eth0".to_string()),
            ]
            .into(),
            policies: Default::default(),
        };
        assert_eq!(
            note("node-1", true, &entries, 0),
            "node node-1 announces 192.0.2.10, 2001:db8::10 on eth0"
        );
        assert_eq!(
            note("node-1", false, &entries, 3),
            "node node-1 stopped announcing 192.0.2.10, 2001:db8::10 on eth0 \
             (3 earlier changes not reported)"
        );
    }
}
