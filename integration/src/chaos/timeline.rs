//! The ground truth of who held each claim when, against which the chaos
//! detector judges every announcement: [`HolderTimeline`], and
//! [`LeaseHistory`], its source for per-Service Lease elections (every
//! version of every claim's Lease, watched from the lab's own process).
//!
//! A node holds a claim from the first Lease version naming it until
//! another version names someone else (or nobody), or the Lease is
//! deleted, or a lease duration has passed since the last version naming
//! it (its last renewal) — whichever comes first. Versions are timed by
//! their arrival at this process's watch (CLOCK_MONOTONIC): the API server
//! runs in this process, so that trails the commit by the watch's delivery
//! (about a millisecond; see [`super::detector::TOLERANCE`]).
//!
//! Another election mode (a node-heartbeat assignment record instead of
//! per-Service Leases) supplies its own [`HolderTimeline`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::lab::{LEASE_NAMESPACE, Lab};
use crate::probe::monotonic_ns;

/// Who held which claim when.
pub trait HolderTimeline {
    /// The nodes that held the claim covering `ip` at some instant of
    /// `[from_ns, to_ns]` (monotonic ns).
    fn holders_between(&self, ip: IpAddr, from_ns: u64, to_ns: u64) -> Vec<String>;
}

/// One node's tenure of a claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tenure {
    pub node: String,
    pub from_ns: u64,
    pub to_ns: u64,
}

/// One version of a Lease as this process saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseVersion {
    /// Monotonic ns of its arrival.
    pub at_ns: u64,
    pub lease: String,
    /// `None`: no holder, or the Lease was deleted.
    pub holder: Option<String>,
    pub duration_ns: u64,
    pub resource_version: String,
}

/// The tenures a Lease's versions (in arrival order) describe.
pub fn tenures(versions: &[&LeaseVersion]) -> Vec<Tenure> {
    let mut out = Vec::new();
    // (holder, since, last renewal, its lease duration)
    let mut current: Option<(String, u64, u64, u64)> = None;
    for v in versions {
        if let Some((node, since, renewed, duration)) = current.take() {
            if v.holder.as_deref() == Some(node.as_str()) {
                current = Some((node, since, v.at_ns, v.duration_ns));
                continue;
            }
            out.push(Tenure {
                node,
                from_ns: since,
                to_ns: v.at_ns.min(renewed.saturating_add(duration)),
            });
        }
        if let Some(h) = &v.holder {
            current = Some((h.clone(), v.at_ns, v.at_ns, v.duration_ns));
        }
    }
    if let Some((node, since, renewed, duration)) = current {
        out.push(Tenure {
            node,
            from_ns: since,
            to_ns: renewed.saturating_add(duration),
        });
    }
    out
}

/// Every version of the claims' Leases, recorded by a watch on the lab's
/// runtime until dropped.
pub struct LeaseHistory {
    /// IP -> the Lease of the claim that covers it.
    claims: BTreeMap<IpAddr, String>,
    versions: Arc<Mutex<Vec<LeaseVersion>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseHistory {
    /// Starts watching the Leases of `claims` (IP -> Lease name, in the
    /// lease namespace).
    pub fn watch(lab: &Lab, claims: BTreeMap<IpAddr, String>) -> LeaseHistory {
        let versions: Arc<Mutex<Vec<LeaseVersion>>> = Arc::default();
        let api = Api::<Lease>::namespaced(lab.client(), LEASE_NAMESPACE);
        let record = versions.clone();
        let task = lab.runtime().spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let at_ns = monotonic_ns();
                let (lease, deleted) = match event {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => (l, false),
                    Ok(watcher::Event::Delete(l)) => (l, true),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "lease watch");
                        continue;
                    }
                };
                let version = version_of(&lease, at_ns, deleted);
                let mut all = record.lock().unwrap_or_else(|p| p.into_inner());
                // A watch that starts again lists what it has seen already.
                let seen = all.iter().rev().find(|v| v.lease == version.lease);
                if seen.is_none_or(|v| v.resource_version != version.resource_version || deleted) {
                    all.push(version);
                }
            }
        });
        LeaseHistory {
            claims,
            versions,
            task,
        }
    }

    /// The versions recorded so far of `lease`.
    pub fn versions(&self, lease: &str) -> Vec<LeaseVersion> {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|v| v.lease == lease)
            .cloned()
            .collect()
    }

    /// The tenures of `lease` so far.
    pub fn tenures(&self, lease: &str) -> Vec<Tenure> {
        let versions = self.versions(lease);
        tenures(&versions.iter().collect::<Vec<_>>())
    }
}

fn version_of(lease: &Lease, at_ns: u64, deleted: bool) -> LeaseVersion {
    let spec = lease.spec.as_ref();
    LeaseVersion {
        at_ns,
        lease: lease.metadata.name.clone().unwrap_or_default(),
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty() && !deleted),
        duration_ns: spec
            .and_then(|s| s.lease_duration_seconds)
            .map_or(0, |s| u64::try_from(s).unwrap_or(0) * 1_000_000_000),
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

impl HolderTimeline for LeaseHistory {
    fn holders_between(&self, ip: IpAddr, from_ns: u64, to_ns: u64) -> Vec<String> {
        let Some(lease) = self.claims.get(&ip) else {
            return Vec::new();
        };
        let mut nodes: Vec<String> = self
            .tenures(lease)
            .into_iter()
            .filter(|t| t.from_ns <= to_ns && t.to_ns >= from_ns)
            .map(|t| t.node)
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

impl Drop for LeaseHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(at_ns: u64, holder: Option<&str>) -> LeaseVersion {
        LeaseVersion {
            at_ns,
            lease: "l".into(),
            holder: holder.map(str::to_string),
            duration_ns: 3_000,
            resource_version: at_ns.to_string(),
        }
    }

    #[test]
    fn tenures_end_at_a_new_holder_a_release_or_the_lease_expiry() {
        let versions = [
            v(100, Some("a")),
            v(1_100, Some("a")),
            // a stops renewing; b takes over after the expiry.
            v(5_000, Some("b")),
            v(6_000, Some("b")),
            // b releases.
            v(7_000, None),
            v(8_000, Some("a")),
            // b takes over before a's lease ran out (a released it, say).
            v(9_000, Some("b")),
        ];
        let t = tenures(&versions.iter().collect::<Vec<_>>());
        let spans: Vec<(&str, u64, u64)> = t
            .iter()
            .map(|t| (t.node.as_str(), t.from_ns, t.to_ns))
            .collect();
        assert_eq!(
            spans,
            [
                ("a", 100, 4_100),
                ("b", 5_000, 7_000),
                ("a", 8_000, 9_000),
                ("b", 9_000, 12_000),
            ]
        );
    }
}
