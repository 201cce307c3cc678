//! Claims: the unit one node announces. Services that share an IP —
//! directly or through others — form one claim whatever policies select
//! them, so a shared IP never has two announcers. The claim is named after
//! its smallest member (`namespace/name`), which every node computes alike
//! from the same Services and policies (membership ignores node selectors
//! and interfaces: see [`super::selection::claimed_ips`]).
//!
//! Eligibility (the rule, documented in the README): a node campaigns for a
//! claim only when it is a candidate for *every* member, so whichever node
//! wins can announce every IP of every member; when no node is a candidate
//! for all of them, nobody announces the claim and each member's Service
//! says why.
//!
//! [`ClaimGroups`] keeps the grouping incrementally: changing one Service's
//! IPs touches only the claims it leaves and joins.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::vec_set::VecSet;

/// One Service's claim before and after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimChange {
    pub service: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Services grouped into claims by shared IPs. The sets are [`VecSet`]s:
/// nearly every Service has one IP and is its claim's only member.
#[derive(Debug, Default, Clone)]
pub struct ClaimGroups {
    /// Service -> the IPs any policy would announce for it (non-empty).
    ips: BTreeMap<String, VecSet<IpAddr>>,
    /// IP -> the Services with it.
    by_ip: BTreeMap<IpAddr, VecSet<String>>,
    /// Service -> its claim.
    claim: BTreeMap<String, String>,
    /// Claim -> its members.
    members: BTreeMap<String, VecSet<String>>,
}

impl ClaimGroups {
    /// The claim `service` belongs to, if it has claimed IPs.
    pub fn claim_of(&self, service: &str) -> Option<&str> {
        self.claim.get(service).map(String::as_str)
    }

    /// The members of `claim` (empty when there is no such claim).
    pub fn members(&self, claim: &str) -> impl Iterator<Item = &str> {
        self.members
            .get(claim)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every claim with its members.
    pub fn claims(&self) -> impl Iterator<Item = (&str, &VecSet<String>)> {
        self.members.iter().map(|(c, m)| (c.as_str(), m))
    }

    /// Sets the claimed IPs of `service` (empty: it claims nothing). Returns
    /// every Service whose claim changed (joined, left or renamed), `service`
    /// included when its own did, with its claim before and after.
    pub fn set(&mut self, service: &str, ips: VecSet<IpAddr>) -> Vec<ClaimChange> {
        let old = self.ips.get(service).cloned().unwrap_or_default();
        if old == ips {
            return Vec::new();
        }
        // The components touched: the one `service` was in, and those of
        // the IPs it joins.
        let mut touched: BTreeSet<String> = self.component_of_ips(&old);
        for ip in &old {
            if let Some(s) = self.by_ip.get_mut(ip) {
                s.remove(service);
                if s.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        if ips.is_empty() {
            self.ips.remove(service);
        } else {
            for ip in &ips {
                self.by_ip
                    .entry(*ip)
                    .or_default()
                    .insert(service.to_string());
            }
            self.ips.insert(service.to_string(), ips.clone());
        }
        touched.extend(self.component_of_ips(&ips));
        touched.insert(service.to_string());
        let mut changed = Vec::new();
        // Recompute the claims of every touched Service.
        let mut done: BTreeSet<String> = BTreeSet::new();
        for s in &touched {
            if done.contains(s) {
                continue;
            }
            let component = match self.ips.get(s) {
                Some(own) => self.component_of_ips(own),
                None => BTreeSet::new(),
            };
            let name = component.iter().next().cloned();
            for member in &component {
                done.insert(member.clone());
                changed.extend(self.assign(member, name.clone()));
            }
            if component.is_empty() {
                done.insert(s.clone());
                changed.extend(self.assign(s, None));
            }
        }
        changed
    }

    /// Puts `service` into `claim` (or none); the change, if any.
    fn assign(&mut self, service: &str, claim: Option<String>) -> Option<ClaimChange> {
        let old = self.claim.get(service).cloned();
        if old == claim {
            return None;
        }
        if let Some(old) = &old
            && let Some(m) = self.members.get_mut(old)
        {
            m.remove(service);
            if m.is_empty() {
                self.members.remove(old);
            }
        }
        let change = ClaimChange {
            service: service.to_string(),
            from: old,
            to: claim.clone(),
        };
        match claim {
            Some(c) => {
                self.members
                    .entry(c.clone())
                    .or_default()
                    .insert(service.to_string());
                self.claim.insert(service.to_string(), c);
            }
            None => {
                self.claim.remove(service);
            }
        }
        Some(change)
    }

    /// Every Service connected to `ips` through shared IPs.
    fn component_of_ips(&self, ips: &VecSet<IpAddr>) -> BTreeSet<String> {
        let mut seen_ips: BTreeSet<IpAddr> = BTreeSet::new();
        let mut services: BTreeSet<String> = BTreeSet::new();
        let mut queue: Vec<IpAddr> = ips.iter().copied().collect();
        while let Some(ip) = queue.pop() {
            if !seen_ips.insert(ip) {
                continue;
            }
            for s in self.by_ip.get(&ip).into_iter().flatten() {
                if services.insert(s.clone())
                    && let Some(more) = self.ips.get(s)
                {
                    queue.extend(more.iter().copied().filter(|i| !seen_ips.contains(i)));
                }
            }
        }
        services
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> VecSet<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    fn claims(g: &ClaimGroups) -> BTreeMap<String, String> {
        g.claim.clone()
    }

    fn names(changes: &[ClaimChange]) -> Vec<&str> {
        let mut n: Vec<&str> = changes.iter().map(|c| c.service.as_str()).collect();
        n.sort();
        n
    }

    #[test]
    fn services_sharing_an_ip_directly_or_through_others_share_one_claim() {
        let mut g = ClaimGroups::default();
        g.set("default/a", ips(&["192.0.2.1"]));
        g.set("default/b", ips(&["192.0.2.2", "192.0.2.3"]));
        g.set("default/c", ips(&["192.0.2.3", "192.0.2.4"]));
        g.set("default/d", ips(&["192.0.2.4"]));
        g.set("other/e", ips(&["2001:db8::5"]));
        let c = claims(&g);
        assert_eq!(c["default/a"], "default/a");
        assert_eq!(c["default/b"], "default/b");
        assert_eq!(c["default/c"], "default/b");
        assert_eq!(c["default/d"], "default/b", "transitively shared");
        assert_eq!(c["other/e"], "other/e");
        assert_eq!(
            g.members("default/b").collect::<Vec<_>>(),
            ["default/b", "default/c", "default/d"]
        );
    }

    #[test]
    fn changes_report_exactly_the_services_whose_claim_moved() {
        let mut g = ClaimGroups::default();
        g.set("ns/b", ips(&["192.0.2.2"]));
        g.set("ns/c", ips(&["192.0.2.3"]));
        // a joins b: b's claim is renamed after a, c is untouched.
        let changed = g.set("ns/a", ips(&["192.0.2.2"]));
        assert_eq!(
            changed,
            [
                ClaimChange {
                    service: "ns/a".into(),
                    from: None,
                    to: Some("ns/a".into())
                },
                ClaimChange {
                    service: "ns/b".into(),
                    from: Some("ns/b".into()),
                    to: Some("ns/a".into())
                },
            ]
        );
        assert_eq!(g.claim_of("ns/b"), Some("ns/a"));
        // The same IPs again: nothing.
        assert!(g.set("ns/a", ips(&["192.0.2.2"])).is_empty());
        // c bridges into the group.
        let changed = g.set("ns/c", ips(&["192.0.2.3", "192.0.2.2"]));
        assert_eq!(names(&changed), ["ns/c"]);
        // a leaves: the group is renamed after b, a has no claim.
        let changed = g.set("ns/a", VecSet::new());
        assert_eq!(names(&changed), ["ns/a", "ns/b", "ns/c"]);
        assert_eq!(g.claim_of("ns/a"), None);
        assert_eq!(g.claim_of("ns/c"), Some("ns/b"));
        // The bridge goes: c is alone again.
        let changed = g.set("ns/c", ips(&["192.0.2.3"]));
        assert_eq!(names(&changed), ["ns/c"]);
        assert_eq!(g.claim_of("ns/c"), Some("ns/c"));
        assert_eq!(g.claims().count(), 2);
    }

    #[test]
    fn incremental_grouping_matches_grouping_from_scratch() {
        // A deterministic pseudo-random sequence of changes.
        let mut g = ClaimGroups::default();
        let mut state: BTreeMap<String, VecSet<IpAddr>> = BTreeMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let svc = format!("ns/s{}", x % 40);
            let n = (x >> 8) % 3;
            let set: VecSet<IpAddr> = (0..n)
                .map(|k| IpAddr::from([192, 0, 2, ((x >> (16 + 8 * k)) % 30) as u8]))
                .collect();
            g.set(&svc, set.clone());
            if set.is_empty() {
                state.remove(&svc);
            } else {
                state.insert(svc, set);
            }
        }
        let mut fresh = ClaimGroups::default();
        for (s, set) in &state {
            fresh.set(s, set.clone());
        }
        assert_eq!(claims(&g), claims(&fresh));
        assert_eq!(g.members, fresh.members);
    }
}
