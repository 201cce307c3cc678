//! Packet tests of the eBPF responder through BPF_PROG_TEST_RUN: exact reply
//! bytes for valid ARP requests and Neighbor Solicitations, and one case per
//! rejection rule asserting the frame passes unchanged. Needs root and BPF.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use bpf::frame::{ArpPacket, NeighborAdvertisement, NeighborSolicitation};
use bpf::{AttachMode, monotonic_now_ns};
use common::{TC_ACT_REDIRECT, TC_ACT_UNSPEC, TestResponder, XDP_PASS, XDP_TX, skb_ctx, test_run};

/// The ingress interface the TC tests claim (BPF_PROG_TEST_RUN honours
/// `__sk_buff.ingress_ifindex`, which need not exist).
const IFINDEX: u32 = 42;
/// XDP test runs without a context arrive on loopback.
const XDP_IFINDEX: u32 = 1;
const SLOT: u32 = 3;

const IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const TARGET4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TARGET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn fixture(ifindex: u32) -> TestResponder {
    let mut t = TestResponder::new();
    let r = t.r();
    r.set_interface_mac(ifindex, IF_MAC).unwrap();
    r.insert_v4(TARGET4, ifindex, SLOT).unwrap();
    r.insert_v6(TARGET6, ifindex, SLOT).unwrap();
    let now = r.set_liveness_now().unwrap();
    r.set_fence(SLOT, now + 60_000_000_000).unwrap();
    r.set_node_fence(u64::MAX).unwrap();
    t
}

fn responses(t: &mut TestResponder) -> u64 {
    t.r().list().unwrap().iter().map(|e| e.responses_sent).sum()
}

#[rustfmt::skip]
fn arp_request() -> Vec<u8> {
    vec![
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst broadcast
        0x02, 0, 0, 0, 0, 0x01,             // src requester
        0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // Ethernet/IPv4 request
        0x02, 0, 0, 0, 0, 0x01,             // SHA
        192, 0, 2, 1,                       // SPA
        0, 0, 0, 0, 0, 0,                   // THA
        192, 0, 2, 10,                      // TPA
    ]
}

/// The reply: to the requester's hardware address, zero-padded to 60 bytes.
#[rustfmt::skip]
fn arp_reply_expected() -> Vec<u8> {
    let mut f = vec![
        0x02, 0, 0, 0, 0, 0x01,             // dst requester (SHA)
        0x02, 0, 0, 0, 0, 0xaa,             // src interface
        0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02, // reply
        0x02, 0, 0, 0, 0, 0xaa,             // SHA interface
        192, 0, 2, 10,                      // SPA target
        0x02, 0, 0, 0, 0, 0x01,             // THA requester
        192, 0, 2, 1,                       // TPA requester
    ];
    f.resize(60, 0);
    f
}

/// NS from 2001:db8::1 for 2001:db8::10 with a source link-layer option.
#[rustfmt::skip]
fn ns() -> Vec<u8> {
    vec![
        0x33, 0x33, 0xff, 0x00, 0x00, 0x10, // solicited-node multicast MAC
        0x02, 0, 0, 0, 0, 0x01,
        0x86, 0xdd,
        0x60, 0, 0, 0, 0x00, 0x20, 58, 255,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,          // src
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0x00, 0x00, 0x10,    // ff02::1:ff00:10
        135, 0, 0x1c, 0x0b, 0, 0, 0, 0,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,          // target
        1, 1, 0x02, 0, 0, 0, 0, 0x01,                                           // SLLA
    ]
}

#[rustfmt::skip]
fn na_expected() -> Vec<u8> {
    vec![
        0x02, 0, 0, 0, 0, 0x01,             // to the solicitor's MAC
        0x02, 0, 0, 0, 0, 0xaa,
        0x86, 0xdd,
        0x60, 0, 0, 0, 0x00, 0x20, 58, 255,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,          // src = target
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,          // dst = solicitor
        136, 0, 0x89, 0xad, 0x60, 0, 0, 0,                                      // Solicited+Override
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        2, 1, 0x02, 0, 0, 0, 0, 0xaa,                                           // TLLA
    ]
}

/// DAD probe: from ::, no options (ICMPv6 length 24).
fn dad_ns() -> Vec<u8> {
    NeighborSolicitation::dad(PEER, TARGET6).to_bytes()
}

#[rustfmt::skip]
fn dad_na_expected() -> Vec<u8> {
    vec![
        0x33, 0x33, 0, 0, 0, 0x01,          // all-nodes MAC
        0x02, 0, 0, 0, 0, 0xaa,
        0x86, 0xdd,
        0x60, 0, 0, 0, 0x00, 0x20, 58, 255,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,                // ff02::1
        136, 0, 0xf8, 0x63, 0x20, 0, 0, 0,                                      // Override only
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        2, 1, 0x02, 0, 0, 0, 0, 0xaa,
    ]
}

fn fix_ns_checksum(f: &mut [u8]) {
    f[56..58].fill(0);
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
    let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let end = (54 + plen).min(f.len());
    let csum = bpf::frame::icmpv6_checksum(&src, &dst, &f[54..end]);
    f[56..58].copy_from_slice(&csum.to_be_bytes());
}

fn run_tc(t: &TestResponder, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let fd = t
        .responder
        .as_ref()
        .unwrap()
        .program_fd(AttachMode::Tc)
        .unwrap();
    test_run(fd, frame, Some(&skb_ctx(ifindex)))
}

fn run_xdp(t: &TestResponder, frame: &[u8]) -> (u32, Vec<u8>) {
    let fd = t
        .responder
        .as_ref()
        .unwrap()
        .program_fd(AttachMode::Xdp)
        .unwrap();
    test_run(fd, frame, None)
}

/// The frame must come back unchanged, handed on, and nothing counted.
#[track_caller]
fn assert_passes(t: &mut TestResponder, frame: &[u8], ifindex: u32) {
    let before = responses(t);
    let (rc, out) = run_tc(t, frame, ifindex);
    assert_eq!(rc, TC_ACT_UNSPEC, "expected pass");
    assert_eq!(out, frame, "frame must pass unchanged");
    assert_eq!(responses(t), before, "nothing may be counted");
}

// ---- answers ----------------------------------------------------------

#[test]
fn arp_request_is_answered_in_place() {
    let mut t = fixture(IFINDEX);
    let (rc, out) = run_tc(&t, &arp_request(), IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, arp_reply_expected());
    let entries = t.r().list().unwrap();
    let e = entries.iter().find(|e| e.ip == TARGET4).unwrap();
    assert_eq!(
        (e.ifindex, e.fence_slot, e.responses_sent),
        (IFINDEX, SLOT, 1)
    );
    run_tc(&t, &arp_request(), IFINDEX);
    let e = t
        .r()
        .list()
        .unwrap()
        .into_iter()
        .find(|e| e.ip == TARGET4)
        .unwrap();
    assert_eq!(e.responses_sent, 2);
}

#[test]
fn arp_request_to_interface_mac_is_answered() {
    let t = fixture(IFINDEX);
    let mut f = arp_request();
    f[0..6].copy_from_slice(&IF_MAC);
    let (rc, out) = run_tc(&t, &f, IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, arp_reply_expected());
}

#[test]
fn arp_padding_is_allowed_and_not_echoed() {
    let t = fixture(IFINDEX);
    for len in [60, 64, 1514] {
        let mut f = arp_request();
        f.resize(len, 0x5a);
        let (rc, out) = run_tc(&t, &f, IFINDEX);
        assert_eq!(rc, TC_ACT_REDIRECT, "{len} bytes");
        assert_eq!(out, arp_reply_expected(), "{len} bytes");
    }
}

#[test]
fn arp_probe_is_answered_to_the_requester_hardware_address() {
    let t = fixture(IFINDEX);
    let mut f = arp_request();
    f[28..32].fill(0); // sender IP 0.0.0.0 (RFC 5227 probe)
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]); // Ethernet source differs
    let (rc, out) = run_tc(&t, &f, IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    let mut expected = arp_reply_expected();
    expected[38..42].fill(0); // TPA 0.0.0.0
    assert_eq!(out, expected, "to SHA 02:..:01, not the Ethernet source");
}

#[test]
fn arp_announcements_and_martian_senders_pass() {
    let mut t = fixture(IFINDEX);
    for spa in [
        [192, 0, 2, 10], // announcement: sender = target
        [224, 0, 0, 1],  // multicast
        [239, 255, 255, 250],
        [255, 255, 255, 255], // broadcast
        [127, 0, 0, 1],       // loopback
        [0, 0, 0, 1],         // 0/8 other than 0.0.0.0
    ] {
        let mut f = arp_request();
        f[28..32].copy_from_slice(&spa);
        assert_passes(&mut t, &f, IFINDEX);
    }
    // A sender claiming an address answered here is a conflict.
    t.r()
        .insert_v4(Ipv4Addr::new(192, 0, 2, 1), IFINDEX, SLOT)
        .unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
}

#[test]
fn arp_from_group_or_own_hardware_addresses_passes() {
    let mut t = fixture(IFINDEX);
    for (at, mac) in [
        (6, [0x01, 0, 0x5e, 0, 0, 1]), // Ethernet source multicast
        (6, [0xff; 6]),                // Ethernet source broadcast
        (6, IF_MAC),                   // our own frame
        (22, [0x03, 0, 0, 0, 0, 1]),   // SHA with the group bit
        (22, IF_MAC),                  // SHA is ours
    ] {
        let mut f = arp_request();
        f[at..at + 6].copy_from_slice(&mac);
        assert_passes(&mut t, &f, IFINDEX);
    }
    // Multicast (not broadcast) Ethernet destination.
    let mut f = arp_request();
    f[0..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn neighbor_solicitation_is_answered_with_solicited_na() {
    let mut t = fixture(IFINDEX);
    let (rc, out) = run_tc(&t, &ns(), IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, na_expected());
    let e = t
        .r()
        .list()
        .unwrap()
        .into_iter()
        .find(|e| e.ip == TARGET6)
        .unwrap();
    assert_eq!(e.responses_sent, 1);
}

#[test]
fn unicast_nud_solicitation_is_answered() {
    let t = fixture(IFINDEX);
    let mut f = ns();
    f[0..6].copy_from_slice(&IF_MAC);
    f[38..54].copy_from_slice(&TARGET6.octets());
    fix_ns_checksum(&mut f);
    let (rc, out) = run_tc(&t, &f, IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, na_expected());
}

#[test]
fn dad_solicitation_is_answered_to_all_nodes() {
    let t = fixture(IFINDEX);
    let (rc, out) = run_tc(&t, &dad_ns(), IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, dad_na_expected());
}

/// The frame builders of `bpf::frame` produce exactly the bytes pinned
/// above, and parse the replies back.
#[test]
fn frame_builders_match_the_pinned_bytes() {
    let request = ArpPacket::request(PEER, PEER4, TARGET4);
    assert_eq!(request.to_bytes()[..42], arp_request()[..]);
    let reply = ArpPacket::reply(IF_MAC, TARGET4, PEER, PEER4);
    assert_eq!(reply.to_bytes()[..], arp_reply_expected()[..]);
    assert_eq!(ArpPacket::parse(&arp_reply_expected()), Some(reply));
    assert_eq!(
        NeighborSolicitation::multicast(PEER, PEER6, TARGET6).to_bytes(),
        ns()
    );
    let na = NeighborAdvertisement::solicited(IF_MAC, TARGET6, PEER, PEER6);
    assert_eq!(na.to_bytes(), na_expected());
    assert_eq!(NeighborAdvertisement::parse(&na_expected()), Some(na));
    let dad_na = NeighborAdvertisement::unsolicited(IF_MAC, TARGET6);
    assert_eq!(dad_na.to_bytes(), dad_na_expected());
}

#[test]
fn na_checksums_verify() {
    for f in [na_expected(), dad_na_expected()] {
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
        assert_eq!(bpf::frame::icmpv6_checksum(&src, &dst, &f[54..]), 0);
    }
}

// ---- everything else passes ------------------------------------------------

#[test]
fn other_ethertype_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = arp_request();
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn vlan_tagged_arp_passes() {
    let mut t = fixture(IFINDEX);
    let req = arp_request();
    let mut f = req[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]); // 802.1Q, VLAN 100
    f.extend_from_slice(&req[12..]);
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn arp_reply_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = arp_request();
    f[21] = 2;
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn truncated_arp_passes() {
    let mut t = fixture(IFINDEX);
    let f = arp_request();
    assert_passes(&mut t, &f[..41], IFINDEX);
    assert_passes(&mut t, &f[..20], IFINDEX);
}

#[test]
fn malformed_arp_header_passes() {
    let mut t = fixture(IFINDEX);
    for (offset, value) in [(15, 6u8), (16, 0x86), (18, 8), (19, 16)] {
        let mut f = arp_request();
        f[offset] = value; // htype, ptype, hlen, plen
        assert_passes(&mut t, &f, IFINDEX);
    }
}

#[test]
fn foreign_destination_mac_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = arp_request();
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]);
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn address_not_in_map_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = arp_request();
    f[38..42].copy_from_slice(&[192, 0, 2, 99]);
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn other_interface_passes() {
    let mut t = fixture(IFINDEX);
    t.r().set_interface_mac(IFINDEX + 1, IF_MAC).unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX + 1);
    assert_passes(&mut t, &ns(), IFINDEX + 1);
}

#[test]
fn interface_without_mac_passes() {
    let mut t = fixture(IFINDEX);
    assert!(t.r().remove_interface_mac(IFINDEX).unwrap());
    assert_passes(&mut t, &arp_request(), IFINDEX);
}

#[test]
fn stale_liveness_passes() {
    let mut t = fixture(IFINDEX);
    let stale = monotonic_now_ns().saturating_sub(16_000_000_000);
    t.r().set_liveness(stale).unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
    assert_passes(&mut t, &ns(), IFINDEX);
    t.r().set_liveness(0).unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
    // Refreshed liveness answers again.
    t.r().set_liveness_now().unwrap();
    assert_eq!(run_tc(&t, &arp_request(), IFINDEX).0, TC_ACT_REDIRECT);
}

#[test]
fn shorter_max_liveness_silences() {
    let mut t = fixture(IFINDEX);
    let now = monotonic_now_ns();
    t.r()
        .set_liveness(now.saturating_sub(2_000_000_000))
        .unwrap();
    assert_eq!(run_tc(&t, &arp_request(), IFINDEX).0, TC_ACT_REDIRECT);
    t.r()
        .set_max_liveness(std::time::Duration::from_secs(1))
        .unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
}

#[test]
fn expired_fence_passes() {
    let mut t = fixture(IFINDEX);
    t.r().set_fence(SLOT, monotonic_now_ns() - 1).unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
    assert_passes(&mut t, &ns(), IFINDEX);
    // An entry on a slot that was never set is silent too.
    t.r().set_fence(SLOT, u64::MAX).unwrap();
    assert!(t.r().remove_v4(TARGET4, IFINDEX).unwrap());
    t.r().insert_v4(TARGET4, IFINDEX, SLOT + 1).unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
}

#[test]
fn node_fence_gates_every_entry() {
    let mut t = fixture(IFINDEX);
    assert!(t.r().answers(TARGET4.into(), IFINDEX).unwrap());
    // Never written (a fresh map holds 0): closed.
    t.r().set_node_fence(0).unwrap();
    assert_eq!(t.r().node_fence().unwrap(), 0);
    assert!(!t.r().answers(TARGET4.into(), IFINDEX).unwrap());
    assert_passes(&mut t, &arp_request(), IFINDEX);
    assert_passes(&mut t, &ns(), IFINDEX);
    // Expired, although liveness and the lease fence are open.
    t.r().set_node_fence(monotonic_now_ns() - 1).unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
    assert_passes(&mut t, &ns(), IFINDEX);
    // Extended (a heartbeat renewal): answered again.
    t.r()
        .set_node_fence(monotonic_now_ns() + 60_000_000_000)
        .unwrap();
    assert!(t.r().answers(TARGET6.into(), IFINDEX).unwrap());
    assert_eq!(run_tc(&t, &arp_request(), IFINDEX).0, TC_ACT_REDIRECT);
    assert_eq!(run_tc(&t, &ns(), IFINDEX).0, TC_ACT_REDIRECT);
    // The node fence does not open a closed lease fence.
    t.r().set_fence(SLOT, 0).unwrap();
    assert!(!t.r().answers(TARGET4.into(), IFINDEX).unwrap());
    assert_passes(&mut t, &arp_request(), IFINDEX);
}

#[test]
fn a_fresh_responder_answers_nothing_until_every_gate_is_set() {
    let mut t = TestResponder::new();
    let r = t.r();
    r.set_interface_mac(IFINDEX, IF_MAC).unwrap();
    r.insert_v4(TARGET4, IFINDEX, SLOT).unwrap();
    assert_eq!(r.node_fence().unwrap(), 0);
    assert!(!r.answers(TARGET4.into(), IFINDEX).unwrap());
    assert_passes(&mut t, &arp_request(), IFINDEX);
    let now = t.r().set_liveness_now().unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
    t.r().set_fence(SLOT, now + 60_000_000_000).unwrap();
    assert_passes(&mut t, &arp_request(), IFINDEX);
    t.r().set_node_fence(now + 60_000_000_000).unwrap();
    assert!(t.r().answers(TARGET4.into(), IFINDEX).unwrap());
    assert!(!t.r().answers(TARGET4.into(), IFINDEX + 1).unwrap());
    assert!(!t.r().answers(TARGET6.into(), IFINDEX).unwrap());
    assert_eq!(run_tc(&t, &arp_request(), IFINDEX).0, TC_ACT_REDIRECT);
}

#[test]
fn ns_with_bad_checksum_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = ns();
    f[57] ^= 0x01;
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn ns_with_hop_limit_254_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = ns();
    f[21] = 254;
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn truncated_ns_passes() {
    let mut t = fixture(IFINDEX);
    let f = ns();
    assert_passes(&mut t, &f[..f.len() - 1], IFINDEX);
    assert_passes(&mut t, &f[..14 + 40 + 20], IFINDEX);
}

#[test]
fn ns_with_nonzero_code_or_other_target_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = ns();
    f[55] = 1;
    fix_ns_checksum(&mut f);
    assert_passes(&mut t, &f, IFINDEX);
    let mut f = ns();
    f[77] = 0x11; // target 2001:db8::11 (not in the map)
    f[53] = 0x11; // and its solicited-node group
    f[5] = 0x11;
    fix_ns_checksum(&mut f);
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn ns_reply_goes_to_the_source_link_layer_address() {
    let t = fixture(IFINDEX);
    let mut f = ns();
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]); // Ethernet source differs
    let (rc, out) = run_tc(&t, &f, IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, na_expected(), "to the SLLA 02:..:01");
}

#[test]
fn unicast_ns_without_slla_is_answered_to_the_ethernet_source() {
    let t = fixture(IFINDEX);
    let f = NeighborSolicitation {
        source_mac: None,
        ..NeighborSolicitation::unicast(PEER, PEER6, TARGET6, IF_MAC)
    }
    .to_bytes();
    let (rc, out) = run_tc(&t, &f, IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, na_expected());
}

#[test]
fn ns_with_trailing_bytes_after_the_payload_is_answered() {
    let t = fixture(IFINDEX);
    let mut f = ns();
    f.extend_from_slice(&[0xee; 10]);
    let (rc, out) = run_tc(&t, &f, IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, na_expected());
}

#[test]
fn ns_with_a_nonce_option_is_answered() {
    let t = fixture(IFINDEX);
    let f = NeighborSolicitation::multicast(PEER, PEER6, TARGET6)
        .with_option(14, &[1, 2, 3, 4, 5, 6]) // nonce (RFC 7527)
        .to_bytes();
    let (rc, out) = run_tc(&t, &f, IFINDEX);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, na_expected());
}

#[test]
fn ns_failing_rfc_4861_validity_checks_passes() {
    let mut t = fixture(IFINDEX);
    type Mutation = fn(&mut Vec<u8>);
    let cases: [(&str, Mutation); 16] = [
        ("extension header", |f| f[20] = 0),
        ("payload longer than the frame", |f| {
            f[18..20].copy_from_slice(&40u16.to_be_bytes())
        }),
        ("payload shorter than an NS", |f| {
            f.truncate(14 + 40 + 16);
            f[18..20].copy_from_slice(&16u16.to_be_bytes())
        }),
        ("multicast source", |f| f[22] = 0xff),
        ("loopback source", |f| {
            f[22..38].copy_from_slice(&Ipv6Addr::LOCALHOST.octets())
        }),
        ("zero-length option", |f| f[79] = 0),
        ("option overruns the message", |f| f[79] = 2),
        ("Ethernet SLLA of two units", |f| {
            f.extend_from_slice(&[0; 8]);
            f[79] = 2;
            f[18..20].copy_from_slice(&40u16.to_be_bytes())
        }),
        ("multicast target", |f| f[62] = 0xff),
        ("multicast NS without SLLA", |f| {
            f.truncate(14 + 40 + 24);
            f[18..20].copy_from_slice(&24u16.to_be_bytes())
        }),
        ("DAD with SLLA", |f| f[22..38].fill(0)),
        ("SLLA with the group bit", |f| f[80] = 0x03),
        ("SLLA is our MAC", |f| f[80..86].copy_from_slice(&IF_MAC)),
        ("Ethernet source with the group bit", |f| f[6] = 0x03),
        ("Ethernet source is our MAC", |f| {
            f[6..12].copy_from_slice(&IF_MAC)
        }),
        ("unicast IP destination in a 33:33 frame", |f| {
            f[38..54].copy_from_slice(&TARGET6.octets())
        }),
    ];
    for (name, mutate) in cases {
        let mut f = ns();
        mutate(&mut f);
        fix_ns_checksum(&mut f);
        let before = responses(&mut t);
        let (rc, out) = run_tc(&t, &f, IFINDEX);
        assert_eq!((rc, &out), (TC_ACT_UNSPEC, &f), "{name}: expected pass");
        assert_eq!(responses(&mut t), before, "{name}: nothing counted");
    }
}

#[test]
fn dad_ns_to_unicast_passes() {
    let mut t = fixture(IFINDEX);
    let mut f = dad_ns();
    f[0..6].copy_from_slice(&IF_MAC);
    f[38..54].copy_from_slice(&TARGET6.octets());
    fix_ns_checksum(&mut f);
    assert_passes(&mut t, &f, IFINDEX);
}

#[test]
fn removed_entry_passes() {
    let mut t = fixture(IFINDEX);
    assert!(t.r().remove_v4(TARGET4, IFINDEX).unwrap());
    assert!(!t.r().remove_v4(TARGET4, IFINDEX).unwrap());
    assert_passes(&mut t, &arp_request(), IFINDEX);
    assert!(t.r().remove_v6(TARGET6, IFINDEX).unwrap());
    assert_passes(&mut t, &ns(), IFINDEX);
}

// ---- XDP variant ---------------------------------------------------------------

#[test]
fn xdp_answers_arp_and_passes_replies() {
    let mut t = fixture(XDP_IFINDEX);
    let (rc, out) = run_xdp(&t, &arp_request());
    assert_eq!(rc, XDP_TX);
    assert_eq!(out, arp_reply_expected());
    assert_eq!(responses(&mut t), 1);

    let mut reply = arp_request();
    reply[21] = 2;
    let (rc, out) = run_xdp(&t, &reply);
    assert_eq!(rc, XDP_PASS);
    assert_eq!(out, reply);
    assert_eq!(responses(&mut t), 1);
}

#[test]
fn xdp_answers_dad_ns_growing_the_frame() {
    let t = fixture(XDP_IFINDEX);
    let (rc, out) = run_xdp(&t, &dad_ns());
    assert_eq!(rc, XDP_TX);
    assert_eq!(out, dad_na_expected());
    let (rc, out) = run_xdp(&t, &ns());
    assert_eq!(rc, XDP_TX);
    assert_eq!(out, na_expected());
}

#[test]
fn xdp_stale_liveness_passes() {
    let mut t = fixture(XDP_IFINDEX);
    t.r().set_liveness(0).unwrap();
    let (rc, out) = run_xdp(&t, &arp_request());
    assert_eq!(rc, XDP_PASS);
    assert_eq!(out, arp_request());
}
