//! Ethernet frames of the protocols the responder speaks — ARP over
//! Ethernet for IPv4 (RFC 826) and the Neighbor Discovery messages NS and NA
//! (RFC 4861) — built and parsed with etherparse. The gratuitous ARP /
//! unsolicited NA sender ([`crate::garp`]), the probes of the integration
//! tests and the packet tests all use these types.
//!
//! It only turns values into bytes and back: it sends nothing (that is
//! [`crate::PacketSocket`]) and judges nothing (what the responder answers
//! is responder.c's job, documented in bpf/README.md).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::checksum::Sum16BitWords;
use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacketSlice, EtherType, Ethernet2Header, Icmpv6Header,
    Icmpv6Slice, Icmpv6Type, IpNumber, Ipv6Header, Ipv6HeaderSlice,
};

use crate::maps::MacAddr;

/// Length of an Ethernet II header.
pub const ETH_HEADER_LEN: usize = 14;
/// Shortest Ethernet frame without FCS; shorter frames are padded with zeros.
pub const ETH_MIN_FRAME: usize = 60;
/// Length of a Neighbor Advertisement frame with the target link-layer
/// address option: Ethernet 14 + IPv6 40 + ICMPv6 32.
pub const NA_FRAME_LEN: usize = 86;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// The Ethernet broadcast address.
pub const BROADCAST: MacAddr = [0xff; 6];
/// The link-local all-nodes group ff02::1.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ARP operation: request.
pub const ARP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const ARP_REPLY: u16 = 2;
/// NDP option type: source link-layer address.
pub const OPT_SOURCE_LL_ADDR: u8 = 1;
/// NDP option type: target link-layer address.
pub const OPT_TARGET_LL_ADDR: u8 = 2;
/// The hop limit of every Neighbor Discovery message (RFC 4861 §7.1).
pub const NDP_HOP_LIMIT: u8 = 255;

const ICMPV6_NEIGHBOR_SOLICITATION: u8 = 135;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// First two bytes of a tagged request's sender hardware address.
const TAG_PREFIX: [u8; 2] = [0x02, 0x7a];

/// Whether `mac` is a group (multicast or broadcast) address: the I/G bit.
pub fn is_group(mac: MacAddr) -> bool {
    mac[0] & 0x01 == 0x01
}

/// The solicited-node multicast group of `ip`: ff02::1:ffXX:XXXX with its
/// last three bytes (RFC 4291 §2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address of IPv6 multicast `group`: 33:33 and the group's
/// last four bytes (RFC 2464 §7).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `msg` sent from `src` to `dst`.
/// With the checksum field zero it is the value to write there; over a
/// message carrying its checksum it is 0 when that checksum is right.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    Sum16BitWords::new()
        .add_16bytes(src.octets())
        .add_16bytes(dst.octets())
        .add_4bytes(len.to_be_bytes())
        .add_2bytes([0, IpNumber::IPV6_ICMP.0])
        .add_slice(msg)
        .ones_complement()
        // The words were summed in host order; the result reads big-endian.
        .to_be()
}

fn ethernet(frame: &[u8]) -> Option<(Ethernet2Header, &[u8])> {
    Ethernet2Header::from_slice(frame).ok()
}

fn mac_at(bytes: &[u8], at: usize) -> Option<MacAddr> {
    bytes.get(at..at + 6)?.try_into().ok()
}

// ---- ARP --------------------------------------------------------------------

/// An Ethernet/IPv4 ARP packet with the addresses of its Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// [`ARP_REQUEST`] or [`ARP_REPLY`] (or anything else on the wire).
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// A broadcast request from `mac` (as `sender_ip`) for `target_ip`,
    /// target hardware address zero.
    pub fn request(mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            eth_dst: BROADCAST,
            eth_src: mac,
            op: ARP_REQUEST,
            sender_mac: mac,
            sender_ip,
            target_mac: [0; 6],
            target_ip,
        }
    }

    /// [`ArpPacket::request`] naming itself: the sender hardware address is
    /// `02:7a:<tag, 4 bytes>` (the Ethernet source stays `mac`). A responder
    /// following RFC 826 sends its reply to that address and copies it into
    /// the reply's target hardware address, so [`ArpPacket::tag`] of the
    /// reply names the request it answers.
    pub fn tagged_request(
        mac: MacAddr,
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
        tag: u32,
    ) -> ArpPacket {
        let t = tag.to_be_bytes();
        ArpPacket {
            sender_mac: [TAG_PREFIX[0], TAG_PREFIX[1], t[0], t[1], t[2], t[3]],
            ..ArpPacket::request(mac, sender_ip, target_ip)
        }
    }

    /// The tag of the request a reply answers (see
    /// [`ArpPacket::tagged_request`]).
    pub fn tag(&self) -> Option<u32> {
        let m = self.target_mac;
        (m[..2] == TAG_PREFIX).then(|| u32::from_be_bytes([m[2], m[3], m[4], m[5]]))
    }

    /// The RFC 826 reply of `owner_mac`, which owns `target_ip`, to a
    /// request from `requester_mac` / `requester_ip`: sent to the
    /// requester's hardware address.
    pub fn reply(
        owner_mac: MacAddr,
        target_ip: Ipv4Addr,
        requester_mac: MacAddr,
        requester_ip: Ipv4Addr,
    ) -> ArpPacket {
        ArpPacket {
            eth_dst: requester_mac,
            eth_src: owner_mac,
            op: ARP_REPLY,
            sender_mac: owner_mac,
            sender_ip: target_ip,
            target_mac: requester_mac,
            target_ip: requester_ip,
        }
    }

    /// The gratuitous ARP forms for `ip` owned by `mac`, both broadcast:
    /// a request (RFC 5227 "ARP Announcement": sender IP = target IP, target
    /// hardware address zero) and a reply (as `arping -A`: target hardware
    /// address = `mac`). Neighbours differ in which they honour (Linux
    /// `arp_accept`, some routers only take one), so both are sent.
    pub fn gratuitous(mac: MacAddr, ip: Ipv4Addr) -> [ArpPacket; 2] {
        let request = ArpPacket::request(mac, ip, ip);
        let reply = ArpPacket {
            eth_dst: BROADCAST,
            op: ARP_REPLY,
            target_mac: mac,
            ..request
        };
        [request, reply]
    }

    /// The frame: Ethernet header, the 28-byte ARP body, zero padding to
    /// [`ETH_MIN_FRAME`].
    pub fn to_bytes(&self) -> [u8; ETH_MIN_FRAME] {
        let eth = Ethernet2Header {
            source: self.eth_src,
            destination: self.eth_dst,
            ether_type: EtherType::ARP,
        };
        let arp = ArpEthIpv4Packet {
            operation: ArpOperation(self.op),
            sender_mac: self.sender_mac,
            sender_ipv4: self.sender_ip.octets(),
            target_mac: self.target_mac,
            target_ipv4: self.target_ip.octets(),
        };
        let mut f = [0u8; ETH_MIN_FRAME];
        f[..ETH_HEADER_LEN].copy_from_slice(&eth.to_bytes());
        f[ETH_HEADER_LEN..ETH_HEADER_LEN + ArpEthIpv4Packet::LEN].copy_from_slice(&arp.to_bytes());
        f
    }

    /// Parses an Ethernet II frame holding an Ethernet/IPv4 ARP packet
    /// (any padding after it is ignored); `None` for anything else.
    pub fn parse(frame: &[u8]) -> Option<ArpPacket> {
        let (eth, rest) = ethernet(frame)?;
        if eth.ether_type != EtherType::ARP {
            return None;
        }
        let arp = ArpPacketSlice::from_slice(rest)
            .ok()?
            .to_packet()
            .try_eth_ipv4()
            .ok()?;
        Some(ArpPacket {
            eth_dst: eth.destination,
            eth_src: eth.source,
            op: arp.operation.0,
            sender_mac: arp.sender_mac,
            sender_ip: arp.sender_ipv4_addr(),
            target_mac: arp.target_mac,
            target_ip: arp.target_ipv4_addr(),
        })
    }
}

// ---- Neighbor Discovery -----------------------------------------------------

/// A Neighbor Discovery option as on the wire: type, then the body; the
/// length field (units of 8 bytes) is `(2 + body.len()) / 8`.
fn push_option(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let units = (2 + body.len()).div_ceil(8);
    out.push(kind);
    out.push(u8::try_from(units).unwrap_or(u8::MAX));
    out.extend_from_slice(body);
    out.resize(out.len() + units * 8 - 2 - body.len(), 0);
}

/// The options of an NS/NA: `None` when one has length 0 or runs past the
/// end; otherwise `(type, whole option bytes)` in order.
fn options(mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(*bytes.get(1)?) * 8;
        if len == 0 || len > bytes.len() {
            return None;
        }
        out.push((bytes[0], &bytes[..len]));
        bytes = &bytes[len..];
    }
    Some(out)
}

/// The IPv6 header and ICMPv6 message of an Ethernet frame whose ICMPv6
/// type is `icmp_type` (bytes after the IPv6 payload are ignored).
fn icmpv6(frame: &[u8], icmp_type: u8) -> Option<(Ethernet2Header, Ipv6HeaderSlice<'_>, &[u8])> {
    let (eth, rest) = ethernet(frame)?;
    if eth.ether_type != EtherType::IPV6 {
        return None;
    }
    let ip = Ipv6HeaderSlice::from_slice(rest).ok()?;
    if ip.next_header() != IpNumber::IPV6_ICMP {
        return None;
    }
    let msg = rest.get(40..40 + usize::from(ip.payload_length()))?;
    let icmp = Icmpv6Slice::from_slice(msg).ok()?;
    (icmp.type_u8() == icmp_type && msg.len() >= 24).then_some((eth, ip, msg))
}

/// An Ethernet frame carrying an ICMPv6 message: the IPv6 header (payload
/// length, next header 58), the ICMPv6 header with its checksum computed over
/// `body` (what follows the first 8 bytes). Nothing here can fail: a body too
/// long for an IPv6 payload gets a saturated length field, as any crafted
/// frame would.
fn icmpv6_frame(
    eth_src: MacAddr,
    eth_dst: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    icmp_type: Icmpv6Type,
    body: &[u8],
) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: eth_src,
        destination: eth_dst,
        ether_type: EtherType::IPV6,
    };
    let icmp_len = Icmpv6Header::MIN_LEN + body.len();
    let ip = Ipv6Header {
        payload_length: u16::try_from(icmp_len).unwrap_or(u16::MAX),
        next_header: IpNumber::IPV6_ICMP,
        hop_limit,
        source: src.octets(),
        destination: dst.octets(),
        ..Ipv6Header::default()
    };
    let mut msg = Vec::with_capacity(icmp_len);
    msg.extend_from_slice(&Icmpv6Header::new(icmp_type).to_bytes());
    msg.extend_from_slice(body);
    let checksum = icmpv6_checksum(&src, &dst, &msg);
    let icmp = Icmpv6Header {
        icmp_type,
        checksum,
    };
    let mut out = Vec::with_capacity(ETH_HEADER_LEN + Ipv6Header::LEN + icmp_len);
    out.extend_from_slice(&eth.to_bytes());
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&icmp.to_bytes());
    out.extend_from_slice(body);
    out
}

/// A Neighbor Solicitation (RFC 4861 §4.3) in an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborSolicitation {
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// IPv6 source (:: for duplicate address detection).
    pub src: Ipv6Addr,
    /// IPv6 destination: the target's solicited-node group or the target.
    pub dst: Ipv6Addr,
    /// IPv6 hop limit (255 when valid).
    pub hop_limit: u8,
    /// The address asked about.
    pub target: Ipv6Addr,
    /// The source link-layer address option, if carried.
    pub source_mac: Option<MacAddr>,
    /// Further options as on the wire (type, length, body), after the
    /// source link-layer address option.
    pub other_options: Vec<u8>,
}

impl NeighborSolicitation {
    /// What a host sends to resolve `target`: from `mac` / `src` to the
    /// target's solicited-node group and its multicast MAC, with the source
    /// link-layer address option.
    pub fn multicast(mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr) -> NeighborSolicitation {
        let group = solicited_node(target);
        NeighborSolicitation {
            eth_dst: ipv6_multicast_mac(group),
            eth_src: mac,
            src,
            dst: group,
            hop_limit: NDP_HOP_LIMIT,
            target,
            source_mac: Some(mac),
            other_options: Vec::new(),
        }
    }

    /// Neighbour unreachability detection: to the target itself at the
    /// MAC `target_mac` it is known by.
    pub fn unicast(
        mac: MacAddr,
        src: Ipv6Addr,
        target: Ipv6Addr,
        target_mac: MacAddr,
    ) -> NeighborSolicitation {
        NeighborSolicitation {
            eth_dst: target_mac,
            dst: target,
            ..NeighborSolicitation::multicast(mac, src, target)
        }
    }

    /// A duplicate address detection probe for `target`: from ::, to the
    /// solicited-node group, no options.
    pub fn dad(mac: MacAddr, target: Ipv6Addr) -> NeighborSolicitation {
        NeighborSolicitation {
            src: Ipv6Addr::UNSPECIFIED,
            source_mac: None,
            ..NeighborSolicitation::multicast(mac, Ipv6Addr::UNSPECIFIED, target)
        }
    }

    /// Adds an option of `kind` with `body` (zero-padded to a multiple of 8
    /// bytes with its header).
    pub fn with_option(mut self, kind: u8, body: &[u8]) -> NeighborSolicitation {
        push_option(&mut self.other_options, kind, body);
        self
    }

    /// The frame, with payload length and checksum computed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut payload = self.target.octets().to_vec();
        if let Some(mac) = self.source_mac {
            push_option(&mut payload, OPT_SOURCE_LL_ADDR, &mac);
        }
        payload.extend_from_slice(&self.other_options);
        icmpv6_frame(
            self.eth_src,
            self.eth_dst,
            self.src,
            self.dst,
            self.hop_limit,
            Icmpv6Type::NeighborSolicitation,
            &payload,
        )
    }

    /// Parses a frame holding a Neighbor Solicitation (checksum and the
    /// validity rules are not judged; options must be well formed).
    pub fn parse(frame: &[u8]) -> Option<NeighborSolicitation> {
        let (eth, ip, msg) = icmpv6(frame, ICMPV6_NEIGHBOR_SOLICITATION)?;
        let mut source_mac = None;
        let mut other_options = Vec::new();
        for (kind, opt) in options(&msg[24..])? {
            if kind == OPT_SOURCE_LL_ADDR && source_mac.is_none() && opt.len() == 8 {
                source_mac = mac_at(opt, 2);
            } else {
                other_options.extend_from_slice(opt);
            }
        }
        Some(NeighborSolicitation {
            eth_dst: eth.destination,
            eth_src: eth.source,
            src: ip.source_addr(),
            dst: ip.destination_addr(),
            hop_limit: ip.hop_limit(),
            target: Ipv6Addr::from(<[u8; 16]>::try_from(&msg[8..24]).ok()?),
            source_mac,
            other_options,
        })
    }
}

/// A Neighbor Advertisement (RFC 4861 §4.4) in an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborAdvertisement {
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// IPv6 hop limit (255 when valid).
    pub hop_limit: u8,
    /// R: the sender is a router.
    pub router: bool,
    /// S: an answer to a solicitation.
    pub solicited: bool,
    /// O: replace a cached link-layer address.
    pub override_flag: bool,
    /// The address advertised.
    pub target: Ipv6Addr,
    /// The target link-layer address option, if carried.
    pub target_mac: Option<MacAddr>,
}

impl NeighborAdvertisement {
    /// The unsolicited advertisement of `ip` owned by `mac`: to ff02::1
    /// (33:33:00:00:00:01), Override only, with the target link-layer
    /// address option. The IPv6 source is `ip` itself: the interface may
    /// have no other address (not even link-local), and receivers take the
    /// mapping from the target and the option.
    pub fn unsolicited(mac: MacAddr, ip: Ipv6Addr) -> NeighborAdvertisement {
        NeighborAdvertisement {
            eth_dst: ipv6_multicast_mac(ALL_NODES),
            eth_src: mac,
            src: ip,
            dst: ALL_NODES,
            hop_limit: NDP_HOP_LIMIT,
            router: false,
            solicited: false,
            override_flag: true,
            target: ip,
            target_mac: Some(mac),
        }
    }

    /// The answer of `mac`, owner of `target`, to a solicitation from
    /// `dst` (layer 2: `eth_dst`): Solicited + Override, with the target
    /// link-layer address option.
    pub fn solicited(
        mac: MacAddr,
        target: Ipv6Addr,
        eth_dst: MacAddr,
        dst: Ipv6Addr,
    ) -> NeighborAdvertisement {
        NeighborAdvertisement {
            eth_dst,
            dst,
            solicited: true,
            ..NeighborAdvertisement::unsolicited(mac, target)
        }
    }

    /// The frame, with payload length and checksum computed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = NeighborAdvertisementHeader {
            router: self.router,
            solicited: self.solicited,
            r#override: self.override_flag,
        };
        let mut payload = self.target.octets().to_vec();
        if let Some(mac) = self.target_mac {
            push_option(&mut payload, OPT_TARGET_LL_ADDR, &mac);
        }
        icmpv6_frame(
            self.eth_src,
            self.eth_dst,
            self.src,
            self.dst,
            self.hop_limit,
            Icmpv6Type::NeighborAdvertisement(header),
            &payload,
        )
    }

    /// Parses a frame holding a Neighbor Advertisement (checksum not
    /// judged; options must be well formed).
    pub fn parse(frame: &[u8]) -> Option<NeighborAdvertisement> {
        let (eth, ip, msg) = icmpv6(frame, ICMPV6_NEIGHBOR_ADVERTISEMENT)?;
        let flags = NeighborAdvertisementHeader::from_bytes([msg[4], msg[5], msg[6], msg[7]]);
        let target_mac = options(&msg[24..])?
            .into_iter()
            .find(|(kind, opt)| *kind == OPT_TARGET_LL_ADDR && opt.len() == 8)
            .and_then(|(_, opt)| mac_at(opt, 2));
        Some(NeighborAdvertisement {
            eth_dst: eth.destination,
            eth_src: eth.source,
            src: ip.source_addr(),
            dst: ip.destination_addr(),
            hop_limit: ip.hop_limit(),
            router: flags.router,
            solicited: flags.solicited,
            override_flag: flags.r#override,
            target: Ipv6Addr::from(<[u8; 16]>::try_from(&msg[8..24]).ok()?),
            target_mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn gratuitous_arp_request_bytes() {
        let [request, _] = ArpPacket::gratuitous(MAC, Ipv4Addr::new(192, 0, 2, 10));
        let frame = request.to_bytes();
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
        assert_eq!(frame[..42], expected);
        assert!(frame[42..].iter().all(|b| *b == 0));
        assert_eq!(ArpPacket::parse(&frame), Some(request));
    }

    #[test]
    fn gratuitous_arp_reply_bytes() {
        let [_, reply] = ArpPacket::gratuitous(MAC, Ipv4Addr::new(198, 51, 100, 7));
        let frame = reply.to_bytes();
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
        assert_eq!(frame[..42], expected);
        assert_eq!(frame.len(), ETH_MIN_FRAME);
    }

    #[test]
    fn arp_reply_goes_to_the_requester_and_tags_round_trip() {
        let peer = [0x02, 0, 0, 0, 0, 1];
        let request = ArpPacket::tagged_request(
            peer,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 10),
            0xdead_beef,
        );
        assert_eq!(request.sender_mac, [0x02, 0x7a, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(request.eth_src, peer);
        assert_eq!(request.tag(), None);
        let reply = ArpPacket::reply(
            MAC,
            request.target_ip,
            request.sender_mac,
            request.sender_ip,
        );
        assert_eq!(reply.eth_dst, request.sender_mac);
        assert_eq!(reply.tag(), Some(0xdead_beef));
        assert_eq!(ArpPacket::parse(&reply.to_bytes()), Some(reply));
    }

    #[test]
    fn arp_parse_rejects_other_frames() {
        let frame = ArpPacket::request(
            MAC,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
        )
        .to_bytes();
        assert!(ArpPacket::parse(&frame[..41]).is_none());
        let mut f = frame;
        f[12] = 0x08;
        f[13] = 0x00;
        assert!(ArpPacket::parse(&f).is_none());
        let mut f = frame;
        f[18] = 8; // hlen
        assert!(ArpPacket::parse(&f).is_none());
    }

    #[test]
    fn unsolicited_na_bytes() {
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let na = NeighborAdvertisement::unsolicited(MAC, ip);
        let frame = na.to_bytes();
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
        assert_eq!(NeighborAdvertisement::parse(&frame), Some(na));
    }

    #[test]
    fn na_checksum_verifies_to_zero() {
        let ip: Ipv6Addr = "2001:db8:1::abcd".parse().unwrap();
        let frame = NeighborAdvertisement::unsolicited(MAC, ip).to_bytes();
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

    #[test]
    fn solicitations_round_trip() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let target: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let ns = NeighborSolicitation::multicast(MAC, src, target);
        assert_eq!(ns.dst, "ff02::1:ff00:10".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ns.eth_dst, [0x33, 0x33, 0xff, 0, 0, 0x10]);
        let frame = ns.to_bytes();
        assert_eq!(frame.len(), 14 + 40 + 32);
        assert_eq!(icmpv6_checksum(&src, &ns.dst, &frame[54..]), 0);
        assert_eq!(frame[78..86], [1, 1, 0x02, 0x00, 0x5e, 0x10, 0x20, 0x30]);
        assert_eq!(NeighborSolicitation::parse(&frame), Some(ns));

        let dad = NeighborSolicitation::dad(MAC, target).with_option(14, &[1, 2, 3, 4, 5, 6]);
        let frame = dad.to_bytes();
        assert_eq!(frame.len(), 14 + 40 + 32);
        assert_eq!(frame[78..86], [14, 1, 1, 2, 3, 4, 5, 6]);
        assert_eq!(NeighborSolicitation::parse(&frame), Some(dad));

        let nud = NeighborSolicitation::unicast(MAC, src, target, [2, 0, 0, 0, 0, 9]);
        assert_eq!((nud.dst, nud.eth_dst), (target, [2, 0, 0, 0, 0, 9]));
        assert!(NeighborAdvertisement::parse(&nud.to_bytes()).is_none());
    }

    #[test]
    fn malformed_options_do_not_parse() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let target: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let mut frame = NeighborSolicitation::multicast(MAC, src, target).to_bytes();
        frame[79] = 0;
        assert!(NeighborSolicitation::parse(&frame).is_none());
        frame[79] = 2;
        assert!(NeighborSolicitation::parse(&frame).is_none());
    }

    #[test]
    fn multicast_helpers() {
        let ip: Ipv6Addr = "2001:db8::aa:bbcc".parse().unwrap();
        assert_eq!(
            solicited_node(ip),
            "ff02::1:ffaa:bbcc".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ipv6_multicast_mac(solicited_node(ip)),
            [0x33, 0x33, 0xff, 0xaa, 0xbb, 0xcc]
        );
        assert!(is_group(BROADCAST));
        assert!(is_group([0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_group(MAC));
    }
}
