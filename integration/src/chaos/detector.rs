//! What the chaos suite flags, computed from what the client saw and the
//! ground truth of who held what:
//!
//! * split brain — a probe (one ARP request or NS, one 10 ms interval)
//!   answered by two different MACs for one IP;
//! * foreign announcement — a gratuitous ARP / unsolicited NA for an IP
//!   from a node that did not hold the claim on it at that moment;
//! * gap — a run of consecutive unanswered probes of an IP, from the send
//!   time of its first request to that of the next answered one.
//!
//! Plain functions over plain data: no lab needed to test them.

use std::net::IpAddr;

use serde::Serialize;

use super::timeline::HolderTimeline;
use crate::lab::{Announcement, Probe};

/// How far apart the capture's clock and the timeline's may be: the Lease
/// watch delivers a version about a millisecond after its commit, and pcap
/// times are moved from the wall clock; an announcement within this of a
/// tenure counts as inside it.
pub const TOLERANCE_NS: u64 = 50_000_000;

/// A probe answered by more than one MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitBrain {
    pub ip: IpAddr,
    pub sent_ns: u64,
    /// The answering nodes (or MACs, when no node has them).
    pub answered_by: Vec<String>,
}

/// An announcement by a node that did not hold the claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Foreign {
    pub announcement: Announcement,
    /// The announcing node (or its MAC, when no node has it).
    pub node: String,
    /// Who held the claim then.
    pub holders: Vec<String>,
}

/// A run of unanswered probes of one IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub ip: IpAddr,
    /// Send time of the first unanswered probe.
    pub from_ns: u64,
    /// Send time of the next answered probe (or the last probe sent plus
    /// one period when none was answered after it).
    pub to_ns: u64,
    pub unanswered: usize,
}

impl Gap {
    pub fn duration_ns(&self) -> u64 {
        self.to_ns.saturating_sub(self.from_ns)
    }
}

/// The probes of `ip` answered by two or more MACs.
pub fn split_brain(
    ip: IpAddr,
    log: &[Probe],
    name: &impl Fn([u8; 6]) -> String,
) -> Vec<SplitBrain> {
    log.iter()
        .filter_map(|p| {
            let mut macs: Vec<[u8; 6]> = p.replies.iter().map(|r| r.1).collect();
            macs.sort();
            macs.dedup();
            (macs.len() > 1).then(|| SplitBrain {
                ip,
                sent_ns: p.sent_ns,
                answered_by: macs.into_iter().map(name).collect(),
            })
        })
        .collect()
}

/// Every run of unanswered probes of `ip` (`period_ns`: the probe period).
pub fn gaps(ip: IpAddr, log: &[Probe], period_ns: u64) -> Vec<Gap> {
    let mut out = Vec::new();
    let mut open: Option<Gap> = None;
    for p in log {
        if p.replies.is_empty() {
            match &mut open {
                Some(g) => g.unanswered += 1,
                None => {
                    open = Some(Gap {
                        ip,
                        from_ns: p.sent_ns,
                        to_ns: p.sent_ns,
                        unanswered: 1,
                    })
                }
            }
        } else if let Some(mut g) = open.take() {
            g.to_ns = p.sent_ns;
            out.push(g);
        }
    }
    if let (Some(mut g), Some(last)) = (open, log.last()) {
        g.to_ns = last.sent_ns + period_ns;
        out.push(g);
    }
    out
}

/// The announcements made by a node that did not hold the claim on the IP
/// (within [`TOLERANCE_NS`]); `node_of` names the node of a MAC.
pub fn foreign(
    announcements: &[Announcement],
    timeline: &dyn HolderTimeline,
    node_of: &impl Fn([u8; 6]) -> Option<String>,
) -> Vec<Foreign> {
    announcements
        .iter()
        .filter_map(|a| {
            let holders = timeline.holders_between(
                a.ip,
                a.at_ns.saturating_sub(TOLERANCE_NS),
                a.at_ns.saturating_add(TOLERANCE_NS),
            );
            let node = node_of(a.mac);
            let held = node.as_ref().is_some_and(|n| holders.contains(n));
            (!held).then(|| Foreign {
                announcement: *a,
                node: node.unwrap_or_else(|| crate::mac::format(a.mac)),
                holders,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::AnnouncementKind;
    use std::collections::BTreeMap;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn p(sent_ns: u64, macs: &[[u8; 6]]) -> Probe {
        Probe {
            sent_ns,
            replies: macs.iter().map(|m| (sent_ns + 1, *m)).collect(),
        }
    }

    fn ip() -> IpAddr {
        "192.0.2.100".parse().expect("ip")
    }

    #[test]
    fn flags_two_macs_in_one_probe_and_measures_gaps() {
        let log = [
            p(0, &[A]),
            p(10, &[]),
            p(20, &[]),
            p(30, &[B]),
            p(40, &[A, B]),
            p(50, &[A, A]),
            p(60, &[]),
        ];
        let sb = split_brain(ip(), &log, &crate::mac::format);
        assert_eq!(sb.len(), 1);
        assert_eq!(sb[0].sent_ns, 40);
        let g = gaps(ip(), &log, 10);
        assert_eq!(
            g.iter()
                .map(|g| (g.from_ns, g.to_ns, g.unanswered))
                .collect::<Vec<_>>(),
            [(10, 30, 2), (60, 70, 1)]
        );
        assert_eq!(g[0].duration_ns(), 20);
    }

    struct Fixed(BTreeMap<&'static str, (u64, u64)>);

    impl HolderTimeline for Fixed {
        fn holders_between(&self, _: IpAddr, from_ns: u64, to_ns: u64) -> Vec<String> {
            self.0
                .iter()
                .filter(|(_, (f, t))| *f <= to_ns && *t >= from_ns)
                .map(|(n, _)| n.to_string())
                .collect()
        }

        fn all(&self) -> BTreeMap<String, Vec<crate::chaos::timeline::Tenure>> {
            BTreeMap::new()
        }
    }

    #[test]
    fn an_announcement_outside_the_nodes_tenure_is_foreign() {
        let s = 1_000_000_000;
        let timeline = Fixed([("a", (0, 10 * s)), ("b", (10 * s, 20 * s))].into());
        let node_of = |m: [u8; 6]| match m {
            A => Some("a".to_string()),
            B => Some("b".to_string()),
            _ => None,
        };
        let ann = |at_ns, mac| Announcement {
            kind: AnnouncementKind::GratuitousArp,
            ip: ip(),
            at_ns,
            mac,
        };
        let found = foreign(
            &[
                ann(s, A),
                ann(11 * s, B),
                // a, a second after it lost the claim: foreign.
                ann(11 * s, A),
                // b right at the start of its tenure, within the tolerance.
                ann(10 * s - TOLERANCE_NS / 2, B),
                ann(s, [2, 0, 0, 0, 0, 9]),
            ],
            &timeline,
            &node_of,
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].node, "a");
        assert_eq!(found[0].holders, ["b"]);
        assert_eq!(found[1].node, "02:00:00:00:00:09");
    }
}
