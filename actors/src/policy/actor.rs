//! PolicyActor: watches CiliumL2AnnouncementPolicy objects, compiles them,
//! writes their status conditions (as Cilium: a condition is set True with
//! the error, and turned False with an empty message once fixed; one that
//! never existed is not created for a valid part), and sends every policy's
//! state to the ServiceActor. The watched policies live in a reflector
//! store; the states are sent once the store holds the initial list, then
//! on every change.

use actix::prelude::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::k8s::reflect::{is_listed, reflected};
use crate::messages::{PolicyState, PolicyStates};
use crate::policy::{
    CONDITION_TYPES, CiliumL2AnnouncementPolicy, CiliumL2AnnouncementPolicyStatus, PolicyProblems,
    compile,
};

/// The field manager of our status writes, as Cilium names its own.
pub const FIELD_MANAGER: &str = "l2announcer-agent";

/// Receives policy validation outcomes for the metrics.
pub trait PolicyObserver: Send + Sync {
    fn invalid_policies(&self, _count: usize) {}
}

/// An observer that records nothing.
pub struct NoPolicyObserver;
impl PolicyObserver for NoPolicyObserver {}

pub struct PolicyActor {
    api: Api<CiliumL2AnnouncementPolicy>,
    policies: Store<CiliumL2AnnouncementPolicy>,
    /// Until the watch starts: it feeds `policies`.
    writer: Option<Writer<CiliumL2AnnouncementPolicy>>,
    out: Recipient<PolicyStates>,
    observer: std::sync::Arc<dyn PolicyObserver>,
}

impl PolicyActor {
    pub fn new(
        client: kube::Client,
        out: Recipient<PolicyStates>,
        observer: std::sync::Arc<dyn PolicyObserver>,
    ) -> Self {
        let (policies, writer) = reflector::store();
        PolicyActor {
            api: Api::all(client),
            policies,
            writer: Some(writer),
            out,
            observer,
        }
    }

    /// Sends the state of every policy in the store, by name, once the
    /// store holds the initial list.
    fn publish(&self) {
        if !is_listed(&self.policies) {
            return;
        }
        let mut policies = self.policies.state();
        policies.sort_by_key(|p| p.name_any());
        let states: Vec<PolicyState> = policies
            .iter()
            .map(|p| {
                let name = p.name_any();
                let interfaces = p.spec.interfaces.clone().unwrap_or_default();
                match compile(&name, &p.spec) {
                    Ok(compiled) => PolicyState {
                        name,
                        compiled: Some(compiled),
                        problems: Vec::new(),
                        interfaces,
                    },
                    Err(problems) => PolicyState {
                        name,
                        compiled: None,
                        problems: problems
                            .by_condition
                            .iter()
                            .map(|(t, m)| format!("{t}: {m}"))
                            .collect(),
                        interfaces,
                    },
                }
            })
            .collect();
        self.observer
            .invalid_policies(states.iter().filter(|s| s.compiled.is_none()).count());
        self.out.do_send(PolicyStates(states));
    }

    fn write_status(&self, ctx: &mut Context<Self>, policy: &CiliumL2AnnouncementPolicy) {
        let name = policy.name_any();
        let problems = compile(&name, &policy.spec).err().unwrap_or_default();
        let current = policy.status.clone().unwrap_or_default();
        let Some(next) = next_status(&current, &problems, policy.metadata.generation) else {
            return;
        };
        if !problems.is_empty() {
            warn!(policy = %name, problems = ?problems.by_condition, "invalid policy");
        } else {
            info!(policy = %name, "policy errors resolved");
        }
        let api = self.api.clone();
        // `add` sets /status whether or not the object has one yet.
        let patch = serde_json::json!([{ "op": "add", "path": "/status", "value": next }]);
        let fut = async move {
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            };
            let patch: Patch<()> = match serde_json::from_value(patch) {
                Ok(p) => Patch::Json(p),
                Err(e) => {
                    warn!(policy = %name, error = %e, "building status patch");
                    return;
                }
            };
            if let Err(e) = api.patch_status(&name, &params, &patch).await {
                warn!(policy = %name, error = %e, "updating policy status failed");
            }
        };
        ctx.spawn(fut.into_actor(self));
    }
}

/// The status to write, or `None` when the current one already says it.
/// Only the `Status`, `Message` and `ObservedGeneration` of our three
/// condition types are compared, so that agents agreeing on a verdict do not
/// rewrite each other's timestamps.
pub fn next_status(
    current: &CiliumL2AnnouncementPolicyStatus,
    problems: &PolicyProblems,
    generation: Option<i64>,
) -> Option<CiliumL2AnnouncementPolicyStatus> {
    let mut next = current.clone();
    let mut changed = false;
    for typ in CONDITION_TYPES {
        let problem = problems.by_condition.get(typ);
        let idx = next.conditions.iter().position(|c| c.type_ == typ);
        let (status, message) = match problem {
            Some(m) => ("True", m.clone()),
            None => ("False", String::new()),
        };
        match idx {
            None if problem.is_none() => {}
            None => {
                next.conditions.push(Condition {
                    type_: typ.to_string(),
                    status: status.to_string(),
                    reason: "error".to_string(),
                    message,
                    observed_generation: generation,
                    last_transition_time: Time(Timestamp::now()),
                });
                changed = true;
            }
            Some(i) => {
                let c = &mut next.conditions[i];
                if c.status != status || c.message != message || c.observed_generation != generation
                {
                    if c.status != status {
                        c.last_transition_time = Time(Timestamp::now());
                    }
                    c.status = status.to_string();
                    c.message = message;
                    c.reason = "error".to_string();
                    c.observed_generation = generation;
                    changed = true;
                }
            }
        }
    }
    changed.then_some(next)
}

impl Actor for PolicyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        ctx.add_stream(reflected(self.api.clone(), writer));
    }
}

/// Watch events, each already applied to the store.
impl StreamHandler<Result<watcher::Event<CiliumL2AnnouncementPolicy>, watcher::Error>>
    for PolicyActor
{
    fn handle(
        &mut self,
        event: Result<watcher::Event<CiliumL2AnnouncementPolicy>, watcher::Error>,
        ctx: &mut Context<Self>,
    ) {
        match event {
            Err(e) => warn!(error = %e, "policy watch failed; retrying with backoff"),
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitApply(p)) => self.write_status(ctx, &p),
            Ok(watcher::Event::InitDone | watcher::Event::Delete(_)) => self.publish(),
            Ok(watcher::Event::Apply(p)) => {
                self.write_status(ctx, &p);
                self.publish();
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BAD_INTERFACE_REGEX, BAD_SERVICE_SELECTOR};

    fn problems(pairs: &[(&'static str, &str)]) -> PolicyProblems {
        PolicyProblems {
            by_condition: pairs.iter().map(|(t, m)| (*t, m.to_string())).collect(),
        }
    }

    #[test]
    fn valid_policy_without_conditions_needs_no_write() {
        let empty = CiliumL2AnnouncementPolicyStatus::default();
        assert_eq!(next_status(&empty, &problems(&[]), Some(1)), None);
    }

    #[test]
    fn error_sets_true_then_fix_sets_false_with_empty_message() {
        let empty = CiliumL2AnnouncementPolicyStatus::default();
        let bad = next_status(
            &empty,
            &problems(&[(BAD_INTERFACE_REGEX, "bad [")]),
            Some(1),
        )
        .expect("write");
        assert_eq!(bad.conditions.len(), 1);
        let c = &bad.conditions[0];
        assert_eq!(
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_str(),
                c.message.as_str()
            ),
            (BAD_INTERFACE_REGEX, "True", "error", "bad [")
        );
        assert_eq!(c.observed_generation, Some(1));
        // The same verdict again: nothing to write.
        assert_eq!(
            next_status(&bad, &problems(&[(BAD_INTERFACE_REGEX, "bad [")]), Some(1)),
            None
        );
        // Fixed in generation 2: False, empty message, new generation.
        let fixed = next_status(&bad, &problems(&[]), Some(2)).expect("write");
        let c = &fixed.conditions[0];
        assert_eq!((c.status.as_str(), c.message.as_str()), ("False", ""));
        assert_eq!(c.observed_generation, Some(2));
        // Another problem appears next to the resolved one.
        let again =
            next_status(&fixed, &problems(&[(BAD_SERVICE_SELECTOR, "x")]), Some(3)).expect("write");
        assert_eq!(again.conditions.len(), 2);
    }
}
