//! The announcing node on the Service itself: a condition of type
//! `l2announcer.io/Announced` in the Service's `status.conditions`, so that
//! `kubectl get service -o yaml` and `kubectl describe service` show who
//! announces it, on which interfaces, without reading Leases.
//!
//! * The node that starts announcing writes `True` (reason `Announced`,
//!   message naming the node, interfaces and IPs).
//! * The node that stops writes `False` (reason `NotAnnounced`, or
//!   `NoReadyEndpoint` when `externalTrafficPolicy: Local` has no ready
//!   endpoint anywhere) — only if the condition it last saw still names it,
//!   and with that Service's resourceVersion as precondition, so it never
//!   overwrites what the new holder wrote meanwhile.
//! * Written only on change (the Service as the watch shows it already says
//!   so: nothing is sent) and rate limited per Service (a burst, then one
//!   per interval; a limited change waits and the latest one is written).
//!
//! Written through the status subresource with a JSON merge patch of the
//! whole conditions list (other controllers' conditions kept as seen).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::client::Background;
use super::events::{EventBudget, prune_idle};
use crate::service::{AnnounceObserver, Candidacy, ServiceView};

/// The condition type.
pub const CONDITION_TYPE: &str = "l2announcer.io/Announced";
/// Reasons.
pub const REASON_ANNOUNCED: &str = "Announced";
pub const REASON_NOT_ANNOUNCED: &str = "NotAnnounced";
pub const REASON_NO_READY_ENDPOINT: &str = "NoReadyEndpoint";
/// Services sharing an IP, of which this node is selected for some only.
pub const REASON_SHARED_IP_NOT_SELECTED: &str = "SharedIPNotSelected";

/// How often rate-limited changes are tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What this node wants the condition to say.
#[derive(Debug, Clone)]
struct Wanted {
    service: ServiceView,
    status: &'static str,
    reason: &'static str,
    message: String,
    /// Only if the condition still names this node (a release).
    conditional: bool,
}

/// The observer half: hands changes to the writing task.
pub struct ServiceStatus {
    tx: mpsc::UnboundedSender<Wanted>,
    node: String,
}

impl ServiceStatus {
    /// Starts the writing task on the current runtime.
    pub fn start(
        client: kube::Client,
        node: &str,
        background: Arc<Background>,
    ) -> Arc<ServiceStatus> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(client, background, node.to_string(), rx));
        Arc::new(ServiceStatus {
            tx,
            node: node.into(),
        })
    }

    fn send(&self, w: Wanted) {
        let _ = self.tx.send(w);
    }
}

/// The message naming the node, interfaces and IPs.
pub fn announced_message(node: &str, entries: &Candidacy) -> String {
    let ips: Vec<String> = entries.ips().iter().map(|ip| ip.to_string()).collect();
    let mut ifaces: Vec<&str> = entries.entries.iter().map(|(_, i)| i.as_str()).collect();
    ifaces.sort();
    ifaces.dedup();
    format!(
        "announced by node {node} on {} ({})",
        ifaces.join(", "),
        ips.join(", ")
    )
}

/// Our condition on a Service, if any.
pub fn current(service: &ServiceView) -> Option<&Condition> {
    service
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)
}

/// Whether the condition names `node` as the announcer.
fn names(c: &Condition, node: &str) -> bool {
    c.status == "True" && c.message.starts_with(&format!("announced by node {node} "))
}

impl AnnounceObserver for ServiceStatus {
    fn announcing(&self, service: &ServiceView, announcing: bool, entries: &Candidacy) {
        if announcing {
            self.send(Wanted {
                service: service.slim(true),
                status: "True",
                reason: REASON_ANNOUNCED,
                message: announced_message(&self.node, entries),
                conditional: false,
            });
        } else {
            self.send(Wanted {
                service: service.slim(true),
                status: "False",
                reason: REASON_NOT_ANNOUNCED,
                message: format!("node {} stopped announcing it", self.node),
                conditional: true,
            });
        }
    }

    fn not_announceable(&self, service: &ServiceView, reason: &'static str, why: &str) {
        self.send(Wanted {
            service: service.slim(true),
            status: "False",
            reason,
            message: why.to_string(),
            conditional: true,
        });
    }
}

/// The conditions list with ours set to `w`; `None` when nothing changes
/// or, for a conditional write, when the condition no longer names `node`
/// (`ours_after`: the watch may not show this node's own last write yet,
/// which it then names).
fn next_conditions(w: &Wanted, node: &str, ours_after: bool) -> Option<Vec<Condition>> {
    let cur = current(&w.service);
    if w.conditional && !ours_after && !cur.is_some_and(|c| names(c, node)) {
        return None;
    }
    if cur.is_some_and(|c| c.status == w.status && c.reason == w.reason && c.message == w.message) {
        return None;
    }
    let transition = match cur {
        Some(c) if c.status == w.status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let ours = Condition {
        type_: CONDITION_TYPE.to_string(),
        status: w.status.to_string(),
        reason: w.reason.to_string(),
        message: w.message.clone(),
        last_transition_time: transition,
        observed_generation: w.service.generation,
    };
    let mut list: Vec<Condition> = w
        .service
        .conditions
        .iter()
        .filter(|c| c.type_ != CONDITION_TYPE)
        .cloned()
        .collect();
    list.push(ours);
    Some(list)
}

async fn write(
    client: kube::Client,
    background: Arc<Background>,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Wanted>,
) {
    let mut budgets: HashMap<String, EventBudget> = HashMap::new();
    // The latest wanted state of each rate-limited Service.
    let mut waiting: HashMap<String, Wanted> = HashMap::new();
    let mut retry = tokio::time::interval(RETRY);
    // The resourceVersion this node's last `True` write of a Service
    // produced, while the Service as seen is older than it: a release
    // then uses it as precondition (it fails if anyone wrote since).
    let mut mine: HashMap<String, String> = HashMap::new();
    let mut pruned = Instant::now();
    loop {
        prune_idle(&mut budgets, &mut pruned, Instant::now());
        let mut batch: Vec<Wanted> = Vec::new();
        tokio::select! {
            w = rx.recv() => match w {
                Some(w) => batch.push(w),
                None => return,
            },
            _ = retry.tick() => {
                batch.extend(waiting.drain().map(|(_, w)| w));
                // A mass create leaves the table sized for thousands.
                waiting.shrink_to(batch.len());
            }
        }
        // Once the node's background budget is spent, the rest of the batch
        // waits as it is (thousands after a mass create: nothing to compute
        // for them until the budget has room).
        let mut spent = false;
        for w in batch {
            let key = w.service.key();
            if spent {
                waiting.insert(key, w);
                continue;
            }
            // Our own write is newer than the view when the view does not
            // show its resourceVersion yet (kube resourceVersions are
            // opaque; equal means seen, and a later event replaces `mine`).
            let ours_after = mine
                .get(&key)
                .is_some_and(|rv| *rv != w.service.resource_version);
            let seen_ours = current(&w.service).is_some_and(|c| names(c, &node));
            let Some(conditions) = next_conditions(&w, &node, ours_after && !seen_ours) else {
                continue;
            };
            let now = Instant::now();
            let budget = budgets
                .entry(key.clone())
                .or_insert_with(|| EventBudget::new(now));
            // The node's background budget first (the latest wanted state
            // waits and is written later), then the Service's own.
            spent = !background.try_take(now);
            if spent || !budget.allow(now) {
                debug!(service = %key, "condition write rate limited");
                waiting.insert(key, w);
                continue;
            }
            // The latest state goes out: earlier limited ones are moot (and
            // the budget can be forgotten once it is full again).
            budget.take_dropped();
            let api: Api<Service> = Api::namespaced(client.clone(), &w.service.namespace);
            let mut patch = serde_json::json!({ "status": { "conditions": conditions } });
            if w.conditional {
                let rv = match mine.get(&key) {
                    Some(rv) if !seen_ours => rv.clone(),
                    _ => w.service.resource_version.clone(),
                };
                patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
            }
            let params = PatchParams {
                field_manager: Some(crate::policy::FIELD_MANAGER.to_string()),
                ..Default::default()
            };
            match api
                .patch_status(&w.service.name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(svc) => {
                    if w.status == "True" {
                        let rv = svc.metadata.resource_version.unwrap_or_default();
                        mine.insert(key, rv);
                    } else {
                        mine.remove(&key);
                    }
                }
                // A release based on an older view: the new holder wrote.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    debug!(service = %key, "condition changed meanwhile; left as it is")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => warn!(service = %key, error = %e, "writing the Announced condition"),
            }
        }
    }
}
