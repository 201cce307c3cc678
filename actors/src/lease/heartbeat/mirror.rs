//! The per-Service Leases as a lazy mirror of the assignment record, so
//! that `kubectl -n kube-system get lease` shows
//! `cilium-l2announce-<ns>-<name>` with the announcing node as HOLDER, as
//! the reference's troubleshooting expects. The record stays the truth:
//! mirrors are written by the holder after it took a claim, at a small
//! share of the client rate and never before the critical writes (a budget
//! of their own: a fifth of `--k8s-client-qps`, one at a time), and say so
//! in an annotation. A released claim's mirror is emptied only if it still
//! names this node (a JSON-patch `test`), and deleted a GC interval later
//! only if nobody wrote it since (a resourceVersion precondition).

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use tracing::debug;

use crate::k8s::client::TokenBucket;
use crate::lease::{GC_INTERVAL, LeaseTiming, lease_for_service};

/// Annotation on mirror Leases.
pub const MIRROR_ANNOTATION: &str = "l2announcer.io/mirror-of";
/// Its value.
pub const MIRROR_OF: &str = "node-heartbeat assignment record";

/// A mirror request; its result is the Lease's resourceVersion after it.
pub type MirrorRequest = Pin<Box<dyn Future<Output = Result<Option<String>, kube::Error>> + Send>>;

/// One mirror request in flight, to hand back to [`Mirror::done`].
pub struct MirrorWrite {
    claim: String,
    op: Op,
    future: MirrorRequest,
}

impl MirrorWrite {
    /// The claim, what is done to its mirror, and the request.
    pub fn into_parts(self) -> (String, Op, MirrorRequest) {
        (self.claim, self.op, self.future)
    }
}

/// What a mirror request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Name this node as holder (create when missing).
    Hold,
    /// Empty the holder if it is still this node.
    Release,
    /// Delete if unchanged since the release.
    Delete,
}

/// The mirror writer of one node.
pub struct Mirror {
    api: Api<Lease>,
    me: String,
    timing: LeaseTiming,
    budget: TokenBucket,
    /// Claims whose mirror must name this node.
    hold: BTreeSet<String>,
    /// Claims whose mirror must be emptied.
    release: BTreeSet<String>,
    /// Mirrors written as held by this node in this process.
    written: BTreeSet<String>,
    /// Emptied mirrors to delete: (due, claim, resourceVersion).
    deletes: VecDeque<(Instant, String, String)>,
    in_flight: bool,
}

impl Mirror {
    pub fn new(api: Api<Lease>, me: &str, timing: LeaseTiming, client_qps: f64) -> Self {
        Mirror {
            api,
            me: me.to_string(),
            timing,
            budget: TokenBucket::new((client_qps / 5.0).max(0.2), 1, Instant::now()),
            hold: BTreeSet::new(),
            release: BTreeSet::new(),
            written: BTreeSet::new(),
            deletes: VecDeque::new(),
            in_flight: false,
        }
    }

    /// This node took `claim`.
    pub fn held(&mut self, claim: &str) {
        self.release.remove(claim);
        if !self.written.contains(claim) {
            self.hold.insert(claim.to_string());
        }
    }

    /// This node gave `claim` up.
    pub fn released(&mut self, claim: &str) {
        self.hold.remove(claim);
        if self.written.remove(claim) {
            self.release.insert(claim.to_string());
        }
    }

    /// Mirror writes not done yet.
    pub fn pending(&self) -> usize {
        self.hold.len() + self.release.len()
    }

    /// The next request, when the budget allows one.
    pub fn next(&mut self, now: Instant) -> Option<MirrorWrite> {
        if self.in_flight {
            return None;
        }
        let due_delete = self.deletes.front().is_some_and(|(due, _, _)| *due <= now);
        if self.hold.is_empty() && self.release.is_empty() && !due_delete {
            return None;
        }
        if !self.budget.try_take(now) {
            return None;
        }
        self.in_flight = true;
        if let Some(claim) = self.hold.pop_first() {
            return Some(self.hold_write(claim));
        }
        if let Some(claim) = self.release.pop_first() {
            return Some(self.release_write(claim));
        }
        let (_, claim, rv) = self.deletes.pop_front()?;
        Some(self.delete_write(claim, rv))
    }

    /// The answer to a request from [`Self::next`].
    pub fn done(&mut self, claim: String, op: Op, result: Result<Option<String>, kube::Error>) {
        self.in_flight = false;
        match (op, result) {
            (Op::Hold, Ok(_)) => {
                self.written.insert(claim);
            }
            (Op::Release, Ok(Some(rv))) => {
                self.deletes
                    .push_back((Instant::now() + GC_INTERVAL, claim, rv));
            }
            (Op::Release | Op::Delete, Ok(_)) => {}
            (Op::Hold, Err(e)) => {
                debug!(claim = %claim, error = %e, "mirror lease not written; retrying");
                self.hold.insert(claim);
            }
            // Someone else holds or changed it: nothing to undo.
            (Op::Release | Op::Delete, Err(e)) => {
                debug!(claim = %claim, error = %e, "mirror lease left as it is");
            }
        }
    }

    /// Claims whose mirror names this node (written in this process).
    pub fn written(&self) -> impl Iterator<Item = &str> {
        self.written.iter().map(String::as_str)
    }

    fn hold_write(&self, claim: String) -> MirrorWrite {
        let name = lease_for_service(&claim);
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: Some([(MIRROR_ANNOTATION.to_string(), MIRROR_OF.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.me.clone()),
                lease_duration_seconds: Some(self.timing.duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        let api = self.api.clone();
        // One server-side apply creates the mirror or updates it (a merge
        // patch on a missing Lease costs a 404 and a create).
        let future = Box::pin(async move {
            let params = PatchParams::apply(crate::policy::FIELD_MANAGER).force();
            api.patch(&name, &params, &Patch::Apply(&lease))
                .await
                .map(|l| l.resource_version())
        });
        MirrorWrite {
            claim,
            op: Op::Hold,
            future,
        }
    }

    fn release_write(&self, claim: String) -> MirrorWrite {
        let name = lease_for_service(&claim);
        let api = self.api.clone();
        let me = self.me.clone();
        let future = Box::pin(async move {
            let ops = serde_json::json!([
                {"op": "test", "path": "/spec/holderIdentity", "value": me},
                {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
            ]);
            let patch =
                Patch::<()>::Json(serde_json::from_value(ops).map_err(kube::Error::SerdeError)?);
            api.patch(&name, &PatchParams::default(), &patch)
                .await
                .map(|l| l.resource_version())
        });
        MirrorWrite {
            claim,
            op: Op::Release,
            future,
        }
    }

    fn delete_write(&self, claim: String, rv: String) -> MirrorWrite {
        let name = lease_for_service(&claim);
        let api = self.api.clone();
        let future = Box::pin(async move {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(rv),
                    uid: None,
                }),
                ..Default::default()
            };
            api.delete(&name, &params).await.map(|_| None)
        });
        MirrorWrite {
            claim,
            op: Op::Delete,
            future,
        }
    }
}
