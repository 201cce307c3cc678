//! The ground truth of who held each claim when, against which the chaos
//! detector judges every announcement: [`HolderTimeline`], and
//! [`LeaseHistory`], its source for per-Service Lease elections, read from
//! the test API server's write log (every committed version of every
//! claim's Lease with its CLOCK_MONOTONIC commit time, the clock of the
//! probes and of the datapath).
//!
//! A node holds a claim from the first committed Lease version naming it
//! until another version names someone else (or nobody), or the Lease is
//! deleted, or a lease duration has passed since the last version naming
//! it (its last renewal) — whichever comes first.
//!
//! In node-heartbeat mode the truth is the assignment record and the
//! heartbeats instead ([`RecordHistory`]): a node holds a claim while the
//! record assigns the claim to its current epoch, its heartbeat says it is
//! a member, and its last renewal is younger than the renew deadline.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::apiserver::WriteRecord;
use crate::lab::LEASE_NAMESPACE;

/// Who held which claim when.
pub trait HolderTimeline {
    /// The nodes that held the claim covering `ip` at some instant of
    /// `[from_ns, to_ns]` (monotonic ns).
    fn holders_between(&self, ip: IpAddr, from_ns: u64, to_ns: u64) -> Vec<String>;
    /// Every claim's tenures, for the report.
    fn all(&self) -> BTreeMap<String, Vec<Tenure>>;
}

/// The nodes among `tenures` overlapping `[from_ns, to_ns]`.
fn overlapping(tenures: &[Tenure], from_ns: u64, to_ns: u64) -> Vec<String> {
    let mut nodes: Vec<String> = tenures
        .iter()
        .filter(|t| t.from_ns <= to_ns && t.to_ns >= from_ns)
        .map(|t| t.node.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// One node's tenure of a claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tenure {
    pub node: String,
    pub from_ns: u64,
    pub to_ns: u64,
}

/// One committed version of a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseVersion {
    /// CLOCK_MONOTONIC ns of its commit.
    pub at_ns: u64,
    pub lease: String,
    /// `None`: no holder, or the Lease was deleted.
    pub holder: Option<String>,
    pub duration_ns: u64,
}

/// The Lease version a write committed, if it is a Lease's in the lease
/// namespace.
pub fn lease_version(w: &WriteRecord) -> Option<LeaseVersion> {
    if w.group != "coordination.k8s.io" || w.resource != "leases" || w.namespace != LEASE_NAMESPACE
    {
        return None;
    }
    let spec = &w.object["spec"];
    Some(LeaseVersion {
        at_ns: w.committed_mono_ns,
        lease: w.name.clone(),
        holder: spec["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty() && w.kind != "DELETED")
            .map(str::to_string),
        duration_ns: spec["leaseDurationSeconds"].as_u64().unwrap_or(0) * 1_000_000_000,
    })
}

/// The tenures a Lease's versions (in commit order) describe.
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

/// The tenures of the claims' Leases, from the API server's write log.
#[derive(Debug, Clone, Default)]
pub struct LeaseHistory {
    /// IP -> the Lease of the claim that covers it.
    claims: BTreeMap<IpAddr, String>,
    /// Lease -> its tenures.
    tenures: BTreeMap<String, Vec<Tenure>>,
}

impl LeaseHistory {
    /// The history of the Leases of `claims` (IP -> Lease name, in the
    /// lease namespace) in `writes` (commit order).
    pub fn from_writes(claims: BTreeMap<IpAddr, String>, writes: &[WriteRecord]) -> LeaseHistory {
        let mut versions: BTreeMap<String, Vec<LeaseVersion>> = BTreeMap::new();
        for v in writes.iter().filter_map(lease_version) {
            if claims.values().any(|l| *l == v.lease) {
                versions.entry(v.lease.clone()).or_default().push(v);
            }
        }
        let tenures = versions
            .into_iter()
            .map(|(lease, v)| {
                let t = tenures(&v.iter().collect::<Vec<_>>());
                (lease, t)
            })
            .collect();
        LeaseHistory { claims, tenures }
    }

    /// Who held `lease` when.
    pub fn tenures(&self, lease: &str) -> &[Tenure] {
        self.tenures.get(lease).map_or(&[], Vec::as_slice)
    }
}

impl HolderTimeline for LeaseHistory {
    fn holders_between(&self, ip: IpAddr, from_ns: u64, to_ns: u64) -> Vec<String> {
        let Some(lease) = self.claims.get(&ip) else {
            return Vec::new();
        };
        overlapping(self.tenures(lease), from_ns, to_ns)
    }

    fn all(&self) -> BTreeMap<String, Vec<Tenure>> {
        self.tenures.clone()
    }
}

/// Node-heartbeat mode: claims' tenures from the record's ConfigMaps and
/// the heartbeat Leases in the write log.
#[derive(Debug, Clone, Default)]
pub struct RecordHistory {
    /// IP -> the claim (`namespace/name`) that covers it.
    claims: BTreeMap<IpAddr, String>,
    /// Claim -> its tenures.
    tenures: BTreeMap<String, Vec<Tenure>>,
}

impl RecordHistory {
    /// The history of `claims` (IP -> claim) in `writes` (commit order),
    /// a node's renewal keeping it a member for `renew_deadline_ns`.
    pub fn from_writes(
        claims: BTreeMap<IpAddr, String>,
        writes: &[WriteRecord],
        renew_deadline_ns: u64,
    ) -> RecordHistory {
        use actors::lease::heartbeat::{EVICTED_BY, HEARTBEAT_PREFIX, RECORD_KEY, RECORD_PREFIX};
        // Per node: (from, to, epoch) spans it was a renewing member.
        let mut alive: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
        // Per claim: (node, epoch, from, to) spans of its assignments.
        let mut assigned: BTreeMap<String, Vec<(String, u64, u64, u64)>> = BTreeMap::new();
        let mut current: BTreeMap<String, (String, u64, u64)> = BTreeMap::new();
        let mut shards: BTreeMap<String, BTreeMap<String, (String, u64)>> = BTreeMap::new();
        for w in writes.iter().filter(|w| w.namespace == LEASE_NAMESPACE) {
            if w.resource == "leases"
                && let Some(node) = w.name.strip_prefix(HEARTBEAT_PREFIX)
            {
                let spec = &w.object["spec"];
                let member = w.kind != "DELETED"
                    && spec["holderIdentity"].as_str() == Some(node)
                    && w.object["metadata"]["annotations"][EVICTED_BY].is_null();
                let epoch = spec["leaseTransitions"].as_u64().unwrap_or(0);
                let spans = alive.entry(node.to_string()).or_default();
                // A later version ends the last span at once unless it is
                // a renewal of the same epoch.
                if let Some(last) = spans.last_mut()
                    && last.1 > w.committed_mono_ns
                {
                    last.1 = w.committed_mono_ns;
                }
                if member {
                    spans.push((
                        w.committed_mono_ns,
                        w.committed_mono_ns + renew_deadline_ns,
                        epoch,
                    ));
                }
                continue;
            }
            if w.resource != "configmaps" || !w.name.starts_with(RECORD_PREFIX) {
                continue;
            }
            let text = w.object["data"][RECORD_KEY].as_str().unwrap_or("{}");
            let parsed: BTreeMap<String, serde_json::Value> =
                serde_json::from_str(text).unwrap_or_default();
            let shard: BTreeMap<String, (String, u64)> = parsed
                .into_iter()
                .filter_map(|(c, a)| Some((c, (a["n"].as_str()?.to_string(), a["e"].as_u64()?))))
                .collect();
            if w.kind == "DELETED" {
                shards.remove(&w.name);
            } else {
                shards.insert(w.name.clone(), shard);
            }
            let now: BTreeMap<&String, &(String, u64)> =
                shards.values().flat_map(|s| s.iter()).collect();
            for claim in claims.values() {
                let next = now.get(claim).copied();
                let cur = current.get(claim);
                if cur.map(|(n, e, _)| (n, e)) == next.map(|(n, e)| (n, e)) {
                    continue;
                }
                if let Some((n, e, from)) = current.remove(claim) {
                    assigned.entry(claim.clone()).or_default().push((
                        n,
                        e,
                        from,
                        w.committed_mono_ns,
                    ));
                }
                if let Some((n, e)) = next {
                    current.insert(claim.clone(), (n.clone(), *e, w.committed_mono_ns));
                }
            }
        }
        for (claim, (n, e, from)) in current {
            assigned
                .entry(claim)
                .or_default()
                .push((n, e, from, u64::MAX));
        }
        let mut tenures: BTreeMap<String, Vec<Tenure>> = BTreeMap::new();
        for (claim, spans) in assigned {
            let out = tenures.entry(claim).or_default();
            for (node, epoch, from, to) in spans {
                for (a_from, a_to, a_epoch) in alive.get(&node).into_iter().flatten() {
                    if *a_epoch != epoch || *a_to < from || *a_from > to {
                        continue;
                    }
                    out.push(Tenure {
                        node: node.clone(),
                        from_ns: from.max(*a_from),
                        to_ns: to.min(*a_to),
                    });
                }
            }
        }
        RecordHistory { claims, tenures }
    }
}

impl HolderTimeline for RecordHistory {
    fn holders_between(&self, ip: IpAddr, from_ns: u64, to_ns: u64) -> Vec<String> {
        let Some(claim) = self.claims.get(&ip) else {
            return Vec::new();
        };
        overlapping(
            self.tenures.get(claim).map_or(&[], Vec::as_slice),
            from_ns,
            to_ns,
        )
    }

    fn all(&self) -> BTreeMap<String, Vec<Tenure>> {
        self.tenures.clone()
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
        }
    }

    #[test]
    fn lease_writes_are_versions() {
        let w = WriteRecord {
            resource_version: 7,
            committed_mono_ns: 42,
            kind: "MODIFIED".into(),
            group: "coordination.k8s.io".into(),
            resource: "leases".into(),
            namespace: LEASE_NAMESPACE.into(),
            name: "cilium-l2announce-default-web".into(),
            user_agent: "l2announcer/0.1.0 (node-1)".into(),
            object: serde_json::json!({"spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 3}}),
        };
        let v = lease_version(&w).expect("a lease version");
        assert_eq!(
            (v.at_ns, v.holder.as_deref(), v.duration_ns),
            (42, Some("node-1"), 3_000_000_000)
        );
        let deleted = WriteRecord {
            kind: "DELETED".into(),
            ..w.clone()
        };
        assert_eq!(lease_version(&deleted).expect("a version").holder, None);
        let service = WriteRecord {
            group: String::new(),
            resource: "services".into(),
            ..w
        };
        assert_eq!(lease_version(&service), None);
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
