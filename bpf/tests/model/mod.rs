//! A reference model of the responder, written from the RFCs (826, 5227,
//! 4861, 4291, 2464) and the Linux behaviour bpf/README.md describes, not
//! from responder.c: a pure function from (frame, ingress interface, the
//! interfaces' MACs, the map entries and whether their gates are open) to
//! "pass" or "reply with exactly these bytes". Headers are read with
//! etherparse and every rule is checked here; replies are built by
//! `bpf::frame` (etherparse too), so no code is shared with the C.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bpf::frame::{ArpPacket, NeighborAdvertisement};
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType, Ethernet2Header, Icmpv6Slice, IpNumber,
    Ipv6HeaderSlice,
};

pub type Mac = [u8; 6];

const BROADCAST: Mac = [0xff; 6];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ICMPv6 type and code of a Neighbor Solicitation (RFC 4861 §4.3).
const NS_TYPE: u8 = 135;
/// Fixed part of an NS: type, code, checksum, reserved, target.
const NS_FIXED_LEN: usize = 24;
/// The responder's limit on an NS (bpf/README.md).
const NS_MAX_LEN: usize = 256;
const OPT_SOURCE_LL_ADDR: u8 = 1;

/// What the datapath is configured with.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// `l2_responder_ifmac`: the MAC of each attached interface.
    pub macs: BTreeMap<u32, Mac>,
    /// The map entries `(ip, ifindex)` and whether all their gates (agent
    /// liveness, lease fence, node fence) are open.
    pub entries: BTreeMap<(IpAddr, u32), bool>,
}

impl World {
    fn has_entry(&self, ip: IpAddr, ifindex: u32) -> bool {
        self.entries.contains_key(&(ip, ifindex))
    }

    fn open(&self, ip: IpAddr, ifindex: u32) -> bool {
        self.entries.get(&(ip, ifindex)).copied().unwrap_or(false)
    }
}

/// The model's verdict on one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handed on untouched.
    Pass,
    /// Answered with exactly these bytes, out of the ingress interface, for
    /// the entry `(target, ifindex)` (whose counter goes up by one).
    Reply { frame: Vec<u8>, target: IpAddr },
}

/// The model: what the responder does with `frame` arriving on `ifindex`.
pub fn respond(world: &World, ifindex: u32, frame: &[u8]) -> Verdict {
    let Ok((eth, rest)) = Ethernet2Header::from_slice(frame) else {
        return Verdict::Pass;
    };
    let Some(&ours) = world.macs.get(&ifindex) else {
        return Verdict::Pass;
    };
    // Never from a group address, never our own frames (both protocols).
    if !is_other_station(eth.source, ours) {
        return Verdict::Pass;
    }
    let verdict = match eth.ether_type {
        EtherType::ARP => arp(world, ifindex, ours, &eth, rest),
        EtherType::IPV6 => neighbor_solicitation(world, ifindex, ours, &eth, rest),
        _ => None,
    };
    verdict.unwrap_or(Verdict::Pass)
}

/// I/G bit: multicast and broadcast.
fn is_group(mac: Mac) -> bool {
    mac[0] & 1 == 1
}

fn is_other_station(mac: Mac, ours: Mac) -> bool {
    !is_group(mac) && mac != ours
}

/// Linux's martian sources (ip_route_input): 0/8, loopback, multicast, the
/// limited broadcast address. 0.0.0.0 itself is a probe (RFC 5227).
fn ipv4_sender_ok(ip: Ipv4Addr) -> bool {
    ip.is_unspecified()
        || !(ip.octets()[0] == 0 || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

/// Addresses Linux never owns for ARP.
fn ipv4_target_ok(ip: Ipv4Addr) -> bool {
    !(ip.octets()[0] == 0 || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

fn arp(
    world: &World,
    ifindex: u32,
    ours: Mac,
    eth: &Ethernet2Header,
    body: &[u8],
) -> Option<Verdict> {
    // RFC 826: Ethernet hardware, IPv4 protocol, a request.
    let arp = ArpPacketSlice::from_slice(body).ok()?;
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
        || arp.operation() != ArpOperation::REQUEST
    {
        return None;
    }
    // To everyone or to us.
    if eth.destination != BROADCAST && eth.destination != ours {
        return None;
    }
    let sha: Mac = arp.sender_hw_addr().try_into().ok()?;
    let spa = Ipv4Addr::from(<[u8; 4]>::try_from(arp.sender_protocol_addr()).ok()?);
    let tpa = Ipv4Addr::from(<[u8; 4]>::try_from(arp.target_protocol_addr()).ok()?);
    if !is_other_station(sha, ours) {
        return None;
    }
    // RFC 5227: probes answered, announcements not; no martians.
    if !ipv4_sender_ok(spa) || !ipv4_target_ok(tpa) || spa == tpa {
        return None;
    }
    // A request from one of our own addresses is a conflict.
    if world.has_entry(spa.into(), ifindex) {
        return None;
    }
    if !world.open(tpa.into(), ifindex) {
        return None;
    }
    Some(Verdict::Reply {
        // RFC 826: to the requester's hardware address, padded to 60 bytes.
        frame: ArpPacket::reply(ours, tpa, sha, spa).to_bytes().to_vec(),
        target: tpa.into(),
    })
}

/// ff02::1:ffXX:XXXX (RFC 4291 §2.7.1).
fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, t[13], t[14], t[15],
    ])
}

/// 33:33 and the last four bytes of the group (RFC 2464 §7).
fn multicast_mac(group: Ipv6Addr) -> Mac {
    let g = group.octets();
    [0x33, 0x33, g[12], g[13], g[14], g[15]]
}

fn neighbor_solicitation(
    world: &World,
    ifindex: u32,
    ours: Mac,
    eth: &Ethernet2Header,
    packet: &[u8],
) -> Option<Verdict> {
    // IPv6 (RFC 8200): version 6, the payload inside the frame (what
    // follows it is trimmed), ICMPv6 directly, hop limit 255 (§7.1.1).
    let ip = Ipv6HeaderSlice::from_slice(packet).ok()?;
    let payload_len = usize::from(ip.payload_length());
    let payload = packet.get(40..40 + payload_len)?;
    if ip.next_header() != IpNumber::IPV6_ICMP || ip.hop_limit() != 255 {
        return None;
    }
    if !(NS_FIXED_LEN..=NS_MAX_LEN).contains(&payload_len) {
        return None;
    }
    // ICMPv6: type 135 code 0, checksum over the pseudo header.
    let icmp = Icmpv6Slice::from_slice(payload).ok()?;
    if icmp.type_u8() != NS_TYPE || icmp.code_u8() != 0 {
        return None;
    }
    if !icmp.is_checksum_valid(ip.source(), ip.destination()) {
        return None;
    }
    let src = ip.source_addr();
    let dst = ip.destination_addr();
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&payload[8..24]).ok()?);
    // RFC 4291: no multicast or loopback source; a unicast target.
    if src.is_multicast() || src.is_loopback() {
        return None;
    }
    if target.is_multicast() || target.is_unspecified() || target.is_loopback() {
        return None;
    }
    // §7.1.1: DAD only to the solicited-node group; otherwise to the group
    // or to the target itself.
    let dad = src.is_unspecified();
    let to_group = dst == solicited_node(target);
    if !to_group && (dad || dst != target) {
        return None;
    }
    // Ethernet destination matching the IP destination.
    if eth.destination != ours && !(to_group && eth.destination == multicast_mac(dst)) {
        return None;
    }
    // Options (§4.6): length > 0, inside the message, filling it. The first
    // source link-layer address option counts and must be one unit.
    let mut options = &payload[NS_FIXED_LEN..];
    let mut slla: Option<Mac> = None;
    while !options.is_empty() {
        if options.len() < 2 {
            return None;
        }
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if options[0] == OPT_SOURCE_LL_ADDR && slla.is_none() {
            if len != 8 {
                return None;
            }
            slla = Some(options[2..8].try_into().ok()?);
        }
        options = &options[len..];
    }
    // Where the reply goes at layer 2.
    let reply_mac = if dad {
        if slla.is_some() {
            return None;
        }
        multicast_mac(ALL_NODES)
    } else if let Some(mac) = slla {
        if !is_other_station(mac, ours) {
            return None;
        }
        mac
    } else if to_group {
        return None;
    } else {
        eth.source
    };
    if !world.open(target.into(), ifindex) {
        return None;
    }
    // §7.2.4: from the target, Solicited (not for DAD) and Override, with
    // the target link-layer address option.
    let reply_dst = if dad { ALL_NODES } else { src };
    let na = NeighborAdvertisement {
        solicited: !dad,
        ..NeighborAdvertisement::solicited(ours, target, reply_mac, reply_dst)
    };
    Some(Verdict::Reply {
        frame: na.to_bytes(),
        target: target.into(),
    })
}
