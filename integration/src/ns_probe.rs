//! A Neighbor Solicitation prober, the IPv6 twin of integration::probe's
//! ARP prober: it sends NS for a target with exact timing and timestamps
//! the Neighbor Advertisements with `CLOCK_MONOTONIC` (the datapath's
//! clock).
//!
//! A solicitation can carry a tag: its IPv6 source becomes
//! `2001:db8:7a::<tag>` (the Ethernet source and the source link-layer
//! option stay the interface's). A responder that follows RFC 4861 sends
//! its solicited advertisement to that source, so each answer names the
//! solicitation it answers. The kernel of the probing namespace drops those
//! answers (the address is not its own); this socket still reads them.
//!
//! The frames are [`bpf::frame::NeighborSolicitation`] and
//! [`bpf::frame::NeighborAdvertisement`], the socket is
//! [`bpf::PacketSocket`]: this module adds tags and timestamps. NS out, NA
//! in, over Ethernet.

use std::net::Ipv6Addr;
use std::time::Duration;

use bpf::PacketSocket;
use bpf::frame::{ETHERTYPE_IPV6, NeighborAdvertisement, NeighborSolicitation};

use crate::probe::{ProbeError, bind_interface, io_err, monotonic_ns, recv_stamped};

/// The tag prefix of a tagged solicitation's source: 2001:db8:7a::/96.
const TAG_PREFIX: [u8; 12] = [0x20, 0x01, 0x0d, 0xb8, 0x00, 0x7a, 0, 0, 0, 0, 0, 0];

/// A Neighbor Advertisement and when the prober read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NaReply {
    /// `CLOCK_MONOTONIC` ns when it was read.
    pub at_ns: u64,
    /// The advertised target.
    pub target: Ipv6Addr,
    /// The target link-layer address option (the Ethernet source when the
    /// advertisement has none).
    pub mac: [u8; 6],
    /// The tag of the solicitation it answers, when it was tagged.
    pub tag: Option<u32>,
    /// Solicited flag.
    pub solicited: bool,
}

/// Parses an Ethernet frame holding an ICMPv6 Neighbor Advertisement
/// (no extension headers) read at `at_ns`.
pub fn parse_na(frame: &[u8], at_ns: u64) -> Option<NaReply> {
    let na = NeighborAdvertisement::parse(frame)?;
    let dst = na.dst.octets();
    let tag =
        (dst[..12] == TAG_PREFIX).then(|| u32::from_be_bytes([dst[12], dst[13], dst[14], dst[15]]));
    Some(NaReply {
        at_ns,
        target: na.target,
        mac: na.target_mac.unwrap_or(na.eth_src),
        tag,
        solicited: na.solicited,
    })
}

/// The source address of a solicitation tagged `tag`.
pub fn tagged_source(tag: u32) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[..12].copy_from_slice(&TAG_PREFIX);
    a[12..].copy_from_slice(&tag.to_be_bytes());
    Ipv6Addr::from(a)
}

/// An AF_PACKET socket bound to one interface for IPv6 frames.
#[derive(Debug)]
pub struct NsProber {
    socket: PacketSocket,
    mac: [u8; 6],
    source: Ipv6Addr,
}

impl NsProber {
    /// Opens a prober on `ifname` of the calling thread's network namespace
    /// (the socket stays in that namespace whatever thread uses it later),
    /// soliciting as `source` (untagged) from the interface's MAC. It
    /// receives IPv6 frames arriving on the interface, not its own.
    pub fn open(ifname: &str, source: Ipv6Addr) -> Result<NsProber, ProbeError> {
        let (socket, mac) = bind_interface(ifname, ETHERTYPE_IPV6)?;
        Ok(NsProber {
            socket,
            mac,
            source,
        })
    }

    /// Sends a multicast NS for `target`, tagged or not; returns the
    /// monotonic time just before sending.
    pub fn send_solicitation(&self, target: Ipv6Addr, tag: Option<u32>) -> Result<u64, ProbeError> {
        let source = tag.map_or(self.source, tagged_source);
        let frame = NeighborSolicitation::multicast(self.mac, source, target).to_bytes();
        let at = monotonic_ns();
        self.socket
            .send(&frame)
            .map_err(io_err("sendto(AF_PACKET)"))?;
        Ok(at)
    }

    /// The next advertisement, sleeping in ppoll(2) up to `timeout`.
    pub fn recv_advertisement(&self, timeout: Duration) -> Result<Option<NaReply>, ProbeError> {
        recv_stamped(&self.socket, timeout, parse_na)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_to_a_tagged_solicitation_names_the_tag() {
        let mac = [2, 0x1a, 0xb0, 0, 0, 0x11];
        let target: Ipv6Addr = "2001:db8::100".parse().expect("ip");
        let ns =
            NeighborSolicitation::multicast([2, 0x1a, 0xb0, 0, 0, 2], tagged_source(7), target);
        // The responder's answer: to the tagged source, target option.
        let na = NeighborAdvertisement::solicited(mac, target, ns.eth_src, ns.src).to_bytes();
        let r = parse_na(&na, 5).expect("an NA");
        assert_eq!(
            r,
            NaReply {
                at_ns: 5,
                target,
                mac,
                tag: Some(7),
                solicited: true
            }
        );
        let untagged = NeighborAdvertisement::unsolicited(mac, target).to_bytes();
        assert_eq!(parse_na(&untagged, 0).and_then(|r| r.tag), None);
        assert_eq!(parse_na(&ns.to_bytes(), 0), None, "an NS is not an NA");
    }
}
