//! What the client hears unasked: a tcpdump capture (crate::pcap) of every
//! gratuitous ARP (sender IP = target IP, request or reply) and unsolicited
//! Neighbor Advertisement (Solicited flag clear) on the client's `eth0`,
//! read back as [`Announcement`]s on the prober's clock (CLOCK_MONOTONIC).
//!
//! pcap timestamps are wall-clock; they are moved onto the monotonic clock
//! with the offset between the two clocks sampled nearest in time
//! ([`Capture::sample_clock`], also sampled at every read), so that a wall
//! clock slewed during a long run does not shift them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::LabError;
use crate::pcap::Tcpdump;
use crate::poll::wait_until;
use crate::probe::{ArpPacket, monotonic_ns};

/// The capture filter: gratuitous ARP and unsolicited NA only (the probes'
/// requests and solicited answers are left out).
const FILTER: &[&str] = &[
    "(arp and arp[14:4] = arp[24:4])",
    "or",
    "(icmp6 and ip6[40] = 136 and (ip6[44] & 0x40) = 0)",
];

/// A gratuitous announcement seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Announcement {
    pub kind: AnnouncementKind,
    /// The address announced.
    pub ip: IpAddr,
    /// Monotonic ns (converted from the capture's wall clock).
    pub at_ns: u64,
    /// The announced link-layer address (ARP sender hardware address, NA
    /// target link-layer option; the Ethernet source when it has none).
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AnnouncementKind {
    GratuitousArp,
    UnsolicitedNa,
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` in ns now.
pub fn realtime_minus_monotonic() -> u64 {
    let mono = monotonic_ns();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    real.saturating_sub(mono)
}

/// The announcement a frame carries, if any (`at_ns` on the pcap clock).
pub fn parse_announcement(frame: &[u8], at_ns: u64) -> Option<Announcement> {
    if let Some(a) = ArpPacket::parse(frame) {
        return (a.sender_ip == a.target_ip).then_some(Announcement {
            kind: AnnouncementKind::GratuitousArp,
            ip: IpAddr::V4(a.sender_ip),
            at_ns,
            mac: a.sender_mac,
        });
    }
    // Ethernet + IPv6 (next header ICMPv6) + NA (136), Solicited clear.
    let d = frame;
    if d.len() < 14 + 40 + 24 || d[12..14] != [0x86, 0xdd] || d[20] != 58 || d[54] != 136 {
        return None;
    }
    if d[58] & 0x40 != 0 {
        return None;
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&d[62..78]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[6..12]);
    // Target link-layer address option (type 2, length 1) right after.
    if d.len() >= 86 && d[78] == 2 && d[79] == 1 {
        mac.copy_from_slice(&d[80..86]);
    }
    Some(Announcement {
        kind: AnnouncementKind::UnsolicitedNa,
        ip: IpAddr::V6(Ipv6Addr::from(target)),
        at_ns,
        mac,
    })
}

/// tcpdump of the announcements on a namespace's `eth0` (stopped on drop).
pub struct Capture {
    dump: Tcpdump,
    /// (wall-clock ns, wall minus monotonic) samples, in time order.
    clock: Mutex<Vec<(u64, u64)>>,
}

impl Capture {
    /// Starts tcpdump on `eth0` of `netns`, writing to `path`; returns once
    /// it listens.
    pub fn start(netns: &str, path: &Path) -> Result<Capture, LabError> {
        let dump = Tcpdump::start(netns, "eth0", path, FILTER, Duration::from_secs(10))?;
        let capture = Capture {
            dump,
            clock: Mutex::new(Vec::new()),
        };
        capture.sample_clock();
        Ok(capture)
    }

    /// Records the offset between the wall and monotonic clocks now (call it
    /// every few seconds during a long capture).
    pub fn sample_clock(&self) {
        let offset = realtime_minus_monotonic();
        let real = monotonic_ns() + offset;
        self.clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((real, offset));
    }

    fn to_monotonic(samples: &[(u64, u64)], real_ns: u64) -> u64 {
        let i = samples.partition_point(|(r, _)| *r < real_ns);
        let nearest = [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .filter_map(|j| samples.get(j))
            .min_by_key(|(r, _)| r.abs_diff(real_ns));
        real_ns.saturating_sub(nearest.map_or(0, |(_, off)| *off))
    }

    /// Every announcement captured so far, in capture order.
    pub fn announcements(&self) -> Result<Vec<Announcement>, LabError> {
        self.sample_clock();
        let cap = self.dump.read()?;
        let samples = self.clock.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(cap
            .packets
            .iter()
            .filter_map(|p| parse_announcement(&p.data, Self::to_monotonic(&samples, p.ts_ns)))
            .collect())
    }

    /// Waits up to `timeout` until both a gratuitous ARP for `vip` and an
    /// unsolicited NA for `vip6` from `mac` later than `after_ns` are in the
    /// capture; every announcement seen by then.
    pub fn wait_announced(
        &self,
        vip: Ipv4Addr,
        vip6: Ipv6Addr,
        mac: [u8; 6],
        after_ns: u64,
        timeout: Duration,
    ) -> Result<Vec<Announcement>, LabError> {
        wait_until(
            "gratuitous ARP and unsolicited NA in the capture",
            timeout,
            Duration::from_millis(50),
            || {
                let a = self.announcements()?;
                let has = |k, ip: IpAddr| {
                    a.iter()
                        .any(|x| x.kind == k && x.ip == ip && x.mac == mac && x.at_ns > after_ns)
                };
                Ok((has(AnnouncementKind::GratuitousArp, vip.into())
                    && has(AnnouncementKind::UnsolicitedNa, vip6.into()))
                .then_some(a))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_frames_are_announcements_and_answers_are_not() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(192, 0, 2, 100);
        let [request, reply] = bpf::frame::ArpPacket::gratuitous(mac, ip).map(|a| a.to_bytes());
        for f in [&request[..], &reply[..]] {
            let a = parse_announcement(f, 7).expect("gratuitous ARP");
            assert_eq!(
                (a.kind, a.ip, a.mac, a.at_ns),
                (AnnouncementKind::GratuitousArp, IpAddr::V4(ip), mac, 7)
            );
        }
        // An answer to a probe: sender IP is the VIP, target the client.
        let mut answer = reply;
        answer[38..42].copy_from_slice(&[192, 0, 2, 2]);
        assert_eq!(parse_announcement(&answer, 0), None);

        let ip6: Ipv6Addr = "2001:db8::100".parse().expect("ip");
        let na = bpf::frame::NeighborAdvertisement::unsolicited(mac, ip6).to_bytes();
        let a = parse_announcement(&na, 9).expect("unsolicited NA");
        assert_eq!(
            (a.kind, a.ip, a.mac),
            (AnnouncementKind::UnsolicitedNa, IpAddr::V6(ip6), mac)
        );
        let mut solicited = na;
        solicited[58] |= 0x40;
        assert_eq!(parse_announcement(&solicited, 0), None);
    }

    #[test]
    fn wall_clock_times_use_the_nearest_offset() {
        let samples = [(1_000, 100), (5_000, 150)];
        assert_eq!(Capture::to_monotonic(&samples, 1_200), 1_100);
        assert_eq!(Capture::to_monotonic(&samples, 4_000), 3_850);
        assert_eq!(Capture::to_monotonic(&samples, 9_000), 8_850);
        assert_eq!(Capture::to_monotonic(&[], 9_000), 9_000);
    }
}
