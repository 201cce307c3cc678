//! Gratuitous ARP and unsolicited Neighbor Advertisements, sent from
//! userspace through an AF_PACKET socket when this node starts announcing an
//! address, so neighbours update their caches at once instead of waiting for
//! their entries to expire. AF_PACKET needs no IP address on the interface
//! (VLANs, bonds).
//!
//! This module only builds and sends frames; when and how often to send is
//! the caller's decision. The eBPF responder (replies to requests) is
//! [`crate::Responder`].

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::maps::MacAddr;
use crate::sys::PacketSocket;

/// Ethernet frames shorter than this (without FCS) are padded with zeros.
const ETH_MIN_FRAME: usize = 60;
/// Length of an unsolicited NA frame: Ethernet 14 + IPv6 40 + ICMPv6 32.
pub const NA_FRAME_LEN: usize = 86;

const BROADCAST: MacAddr = [0xff; 6];
const ALL_NODES_MAC: MacAddr = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Sending a gratuitous frame failed.
#[derive(Debug, thiserror::Error)]
pub enum GratuitousError {
    /// The AF_PACKET socket could not be opened (needs CAP_NET_RAW).
    #[error("opening an AF_PACKET socket for ifindex {ifindex}: {source}")]
    Socket {
        /// Interface index.
        ifindex: u32,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The frame could not be sent (interface down or gone, ...).
    #[error("sending on ifindex {ifindex}: {source}")]
    Send {
        /// Interface index.
        ifindex: u32,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// The two gratuitous ARP forms for `ip` owned by `mac`, both to the
/// Ethernet broadcast address and padded to 60 bytes:
///
/// 0. request (RFC 5227 "ARP Announcement"): op 1, SPA = TPA = `ip`,
///    THA zero;
/// 1. reply (as `arping -A`): op 2, SPA = TPA = `ip`, THA = `mac`.
///
/// Neighbours differ in which form they accept (Linux `arp_accept`, some
/// routers only honour one), so both are sent.
pub fn gratuitous_arp_frames(mac: MacAddr, ip: Ipv4Addr) -> [[u8; ETH_MIN_FRAME]; 2] {
    let request = arp_frame(mac, ip, 1, [0; 6]);
    let reply = arp_frame(mac, ip, 2, mac);
    [request, reply]
}

fn arp_frame(mac: MacAddr, ip: Ipv4Addr, op: u16, tha: MacAddr) -> [u8; ETH_MIN_FRAME] {
    let mut f = [0u8; ETH_MIN_FRAME];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited Neighbor Advertisement for `ip` owned by `mac`: to ff02::1
/// (33:33:00:00:00:01), hop limit 255, flags Override only (not Solicited,
/// not Router), with the target link-layer address option.
///
/// The IPv6 source is `ip` itself: the interface may have no other address
/// (not even a link-local one), and receivers take the mapping from the
/// target and its option, not from the source.
pub fn unsolicited_na_frame(mac: MacAddr, ip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    // IPv6 header
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = 58; // ICMPv6
    f[21] = 255;
    f[22..38].copy_from_slice(&ip.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    // ICMPv6 Neighbor Advertisement
    f[54] = 136;
    f[55] = 0;
    f[58] = 0x20; // Override
    f[62..78].copy_from_slice(&ip.octets());
    f[78] = 2; // target link-layer address
    f[79] = 1; // in units of 8 bytes
    f[80..86].copy_from_slice(&mac);
    let csum = icmpv6_checksum(&ip, &ALL_NODES, &f[54..]);
    f[56..58].copy_from_slice(&csum.to_be_bytes());
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `msg` (checksum field zero) sent
/// from `src` to `dst`.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends both gratuitous ARP forms for `ip` out of `ifindex`.
pub fn send_gratuitous_arp(
    ifindex: u32,
    mac: MacAddr,
    ip: Ipv4Addr,
) -> Result<(), GratuitousError> {
    let socket = PacketSocket::open(ifindex)
        .map_err(|source| GratuitousError::Socket { ifindex, source })?;
    for frame in gratuitous_arp_frames(mac, ip) {
        socket
            .send(&frame)
            .map_err(|source| GratuitousError::Send { ifindex, source })?;
    }
    tracing::debug!(ifindex, ip = %ip, "sent gratuitous ARP (request and reply)");
    Ok(())
}

/// Sends one unsolicited Neighbor Advertisement for `ip` out of `ifindex`.
pub fn send_unsolicited_na(
    ifindex: u32,
    mac: MacAddr,
    ip: Ipv6Addr,
) -> Result<(), GratuitousError> {
    let socket = PacketSocket::open(ifindex)
        .map_err(|source| GratuitousError::Socket { ifindex, source })?;
    socket
        .send(&unsolicited_na_frame(mac, ip))
        .map_err(|source| GratuitousError::Send { ifindex, source })?;
    tracing::debug!(ifindex, ip = %ip, "sent unsolicited neighbor advertisement");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn gratuitous_arp_request_bytes() {
        let [request, _] = gratuitous_arp_frames(MAC, Ipv4Addr::new(192, 0, 2, 10));
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // eth src
            0x08, 0x06,                         // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // htype, ptype, hlen, plen
            0x00, 0x01,                         // request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // SHA
            192, 0, 2, 10,                      // SPA
            0, 0, 0, 0, 0, 0,                   // THA
            192, 0, 2, 10,                      // TPA
        ];
        assert_eq!(request[..42], expected);
        assert!(request[42..].iter().all(|b| *b == 0));
    }

    #[test]
    fn gratuitous_arp_reply_bytes() {
        let [_, reply] = gratuitous_arp_frames(MAC, Ipv4Addr::new(198, 51, 100, 7));
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4,
            0x00, 0x02,                         // reply
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // SHA
            198, 51, 100, 7,                    // SPA
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // THA = own MAC
            198, 51, 100, 7,                    // TPA
        ];
        assert_eq!(reply[..42], expected);
        assert_eq!(reply.len(), 60);
    }

    #[test]
    fn unsolicited_na_bytes() {
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let frame = unsolicited_na_frame(MAC, ip);
        #[rustfmt::skip]
        let expected: [u8; NA_FRAME_LEN] = [
            0x33, 0x33, 0, 0, 0, 1,             // eth dst all-nodes
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // eth src
            0x86, 0xdd,
            0x60, 0, 0, 0, 0x00, 0x20, 58, 255, // version, payload 32, ICMPv6, hop 255
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, // src = target
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,       // dst ff02::1
            136, 0, 0x7a, 0xcd,                 // NA, code 0, checksum
            0x20, 0, 0, 0,                      // Override only
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, // target
            2, 1, 0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // target link-layer option
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn na_checksum_verifies_to_zero() {
        let ip: Ipv6Addr = "2001:db8:1::abcd".parse().unwrap();
        let frame = unsolicited_na_frame(MAC, ip);
        // Summing a message including its own checksum gives 0 after inversion.
        assert_eq!(icmpv6_checksum(&ip, &ALL_NODES, &frame[54..]), 0);
    }

    #[test]
    fn checksum_handles_odd_lengths() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::2".parse().unwrap();
        assert_ne!(
            icmpv6_checksum(&a, &b, &[1, 2, 3]),
            icmpv6_checksum(&a, &b, &[1, 2])
        );
    }
}
