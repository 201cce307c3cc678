//! What the responder must never do, on real veth pairs between network
//! namespaces this test creates: answer for an address on an interface
//! whose map has no entry for it (an entry on veth A is not answered on
//! veth B), answer on an interface it is not attached to (even with a map
//! entry and a MAC for it), or answer its own frames (our MAC as Ethernet
//! source, sender hardware address or source link-layer address; our own
//! gratuitous announcement looped back). Each refusal is checked next to a
//! control that the same path does answer, and the counters must show only
//! the control's replies. Needs root, BPF and iproute2.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use bpf::frame::{
    ArpPacket, ETHERTYPE_ARP, ETHERTYPE_IPV6, NeighborAdvertisement, NeighborSolicitation,
};
use bpf::{AttachMode, MacAddr, PacketSocket, Responder, ResponderConfig};
use common::{Netns, PinDir};

const MAC_A: MacAddr = [0x02, 0, 0, 0, 0, 0xaa];
const MAC_B: MacAddr = [0x02, 0, 0, 0, 0, 0xab];
const CLIENT_A: MacAddr = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_B: MacAddr = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const VIP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const VIP6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const VIP6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11);
/// How long to listen for a reply: far above the round trip of a control
/// that is answered (well under a millisecond on veth).
const WINDOW: Duration = Duration::from_millis(400);
const SLOT: u32 = 1;

/// The agent namespace with veth0 (MAC_A) facing client A and veth2
/// (MAC_B) facing client B; no IP address on the agent side.
struct Lab {
    agent: Netns,
    client_a: Netns,
    client_b: Netns,
}

fn lab() -> Lab {
    let agent = Netns::new("l2a-sec-agent");
    let client_a = Netns::new("l2a-sec-a");
    let client_b = Netns::new("l2a-sec-b");
    for (ours, theirs, ns, our_mac, their_mac) in [
        (
            "veth0",
            "veth1",
            &client_a,
            "02:00:00:00:00:aa",
            "02:00:00:00:00:01",
        ),
        (
            "veth2",
            "veth3",
            &client_b,
            "02:00:00:00:00:ab",
            "02:00:00:00:00:02",
        ),
    ] {
        agent.veth_to(ours, our_mac, ns, theirs, their_mac);
    }
    Lab {
        agent,
        client_a,
        client_b,
    }
}

/// Sends `frame` from `ifname` in `ns` and returns every frame of
/// `ethertype` that arrives there within [`WINDOW`].
fn exchange(ns: &Netns, ifname: &'static str, frame: Vec<u8>, ethertype: u16) -> Vec<Vec<u8>> {
    ns.run(move || {
        let ifindex = bpf::if_nametoindex(ifname).expect("client interface");
        let socket = PacketSocket::bind(ifindex, ethertype).expect("bind");
        socket.send(&frame).expect("send");
        let deadline = Instant::now() + WINDOW;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !socket.wait_readable(left).expect("ppoll") {
                return got;
            }
            while let Some(n) = socket.try_recv(&mut buf).expect("recv") {
                got.push(buf[..n].to_vec());
            }
        }
    })
}

/// The MACs that answered `request` with an ARP reply for its target.
fn arp_answers(ns: &Netns, ifname: &'static str, request: ArpPacket) -> Vec<MacAddr> {
    exchange(ns, ifname, request.to_bytes().to_vec(), ETHERTYPE_ARP)
        .iter()
        .filter_map(|f| ArpPacket::parse(f))
        .filter(|a| a.op == bpf::frame::ARP_REPLY && a.sender_ip == request.target_ip)
        .map(|a| a.sender_mac)
        .collect()
}

/// The target link-layer addresses of the NAs answering `ns_frame`.
fn ns_answers(
    ns: &Netns,
    ifname: &'static str,
    solicitation: NeighborSolicitation,
) -> Vec<MacAddr> {
    let target = solicitation.target;
    exchange(ns, ifname, solicitation.to_bytes(), ETHERTYPE_IPV6)
        .iter()
        .filter_map(|f| NeighborAdvertisement::parse(f))
        .filter(|na| na.target == target && na.solicited)
        .filter_map(|na| na.target_mac)
        .collect()
}

fn arp_from_a(target: Ipv4Addr) -> ArpPacket {
    ArpPacket::request(CLIENT_A, CLIENT4, target)
}

fn arp_from_b(target: Ipv4Addr) -> ArpPacket {
    ArpPacket {
        sender_ip: Ipv4Addr::new(192, 0, 2, 2),
        ..ArpPacket::request(CLIENT_B, CLIENT4, target)
    }
}

/// Opens the responder in the agent namespace, attaches it to `attached`,
/// writes the MAC of every interface in `macs` and the entries, opens all
/// gates. Returns the pin directory guard (drop it to clean up).
fn responder(
    lab: &Lab,
    attached: &'static [&'static str],
    macs: &'static [(&'static str, MacAddr)],
    entries: Vec<(IpAddr, &'static str)>,
) -> PinDir {
    let pins = PinDir::new();
    let dir = pins.0.clone();
    lab.agent.run(move || {
        let mut r = Responder::open(&ResponderConfig {
            pin_dir: dir,
            max_liveness: Duration::from_secs(120),
        })
        .expect("open");
        for ifname in attached {
            let mac = macs.iter().find(|(n, _)| n == ifname).expect("mac").1;
            r.attach(ifname, mac, AttachMode::Tc).expect("attach");
        }
        for (ifname, mac) in macs {
            let ifindex = bpf::if_nametoindex(ifname).expect("ifindex");
            r.set_interface_mac(ifindex, *mac).expect("mac");
        }
        for (ip, ifname) in entries {
            let ifindex = bpf::if_nametoindex(ifname).expect("ifindex");
            r.insert(ip, ifindex, SLOT).expect("insert");
        }
        let now = r.set_liveness_now().expect("liveness");
        r.set_fence(SLOT, now + 120_000_000_000).expect("fence");
        r.set_node_fence(u64::MAX).expect("node fence");
    });
    pins
}

/// Replies counted per (ip, interface name).
fn counters(lab: &Lab, pins: &PinDir) -> Vec<(IpAddr, String, u64)> {
    let dir = pins.0.clone();
    lab.agent.run(move || {
        let r = Responder::open(&ResponderConfig {
            pin_dir: dir,
            max_liveness: Duration::from_secs(120),
        })
        .expect("reopen");
        let names = [("veth0", MAC_A), ("veth2", MAC_B)]
            .map(|(n, _)| (bpf::if_nametoindex(n).expect("ifindex"), n));
        let mut out: Vec<(IpAddr, String, u64)> = r
            .list()
            .expect("list")
            .into_iter()
            .map(|e| {
                let name = names
                    .iter()
                    .find(|(i, _)| *i == e.ifindex)
                    .map_or("?", |(_, n)| n);
                (e.ip, name.to_string(), e.responses_sent)
            })
            .collect();
        out.sort();
        out
    })
}

#[test]
fn an_entry_is_answered_only_on_its_own_interface() {
    let lab = lab();
    let pins = responder(
        &lab,
        &["veth0", "veth2"],
        &[("veth0", MAC_A), ("veth2", MAC_B)],
        vec![
            (VIP_A.into(), "veth0"),
            (VIP6_A.into(), "veth0"),
            (VIP_B.into(), "veth2"),
            (VIP6_B.into(), "veth2"),
        ],
    );
    // Controls: each interface answers its own entries.
    assert_eq!(
        arp_answers(&lab.client_a, "veth1", arp_from_a(VIP_A)),
        [MAC_A]
    );
    assert_eq!(
        arp_answers(&lab.client_b, "veth3", arp_from_b(VIP_B)),
        [MAC_B]
    );
    let ns_a = |t| NeighborSolicitation::multicast(CLIENT_A, CLIENT6, t);
    let ns_b = |t| NeighborSolicitation::multicast(CLIENT_B, CLIENT6, t);
    assert_eq!(ns_answers(&lab.client_a, "veth1", ns_a(VIP6_A)), [MAC_A]);
    assert_eq!(ns_answers(&lab.client_b, "veth3", ns_b(VIP6_B)), [MAC_B]);
    // Never the other interface's entries, nor addresses in no map.
    assert!(arp_answers(&lab.client_a, "veth1", arp_from_a(VIP_B)).is_empty());
    assert!(arp_answers(&lab.client_b, "veth3", arp_from_b(VIP_A)).is_empty());
    assert!(ns_answers(&lab.client_a, "veth1", ns_a(VIP6_B)).is_empty());
    assert!(ns_answers(&lab.client_b, "veth3", ns_b(VIP6_A)).is_empty());
    let unknown = Ipv4Addr::new(192, 0, 2, 99);
    assert!(arp_answers(&lab.client_a, "veth1", arp_from_a(unknown)).is_empty());
    assert_eq!(
        counters(&lab, &pins),
        vec![
            (VIP_A.into(), "veth0".into(), 1),
            (VIP_B.into(), "veth2".into(), 1),
            (VIP6_A.into(), "veth0".into(), 1),
            (VIP6_B.into(), "veth2".into(), 1),
        ]
    );
}

#[test]
fn an_interface_without_the_program_is_never_answered() {
    let lab = lab();
    // veth2 has a MAC entry and map entries, but no attachment.
    let pins = responder(
        &lab,
        &["veth0"],
        &[("veth0", MAC_A), ("veth2", MAC_B)],
        vec![
            (VIP_A.into(), "veth0"),
            (VIP_B.into(), "veth2"),
            (VIP6_B.into(), "veth2"),
        ],
    );
    assert_eq!(
        arp_answers(&lab.client_a, "veth1", arp_from_a(VIP_A)),
        [MAC_A]
    );
    assert!(arp_answers(&lab.client_b, "veth3", arp_from_b(VIP_B)).is_empty());
    let ns_b = NeighborSolicitation::multicast(CLIENT_B, CLIENT6, VIP6_B);
    assert!(ns_answers(&lab.client_b, "veth3", ns_b).is_empty());
    assert_eq!(
        counters(&lab, &pins),
        vec![
            (VIP_A.into(), "veth0".into(), 1),
            (VIP_B.into(), "veth2".into(), 0),
            (VIP6_B.into(), "veth2".into(), 0),
        ]
    );
}

#[test]
fn its_own_frames_are_never_answered() {
    let lab = lab();
    let pins = responder(
        &lab,
        &["veth0"],
        &[("veth0", MAC_A)],
        vec![(VIP_A.into(), "veth0"), (VIP6_A.into(), "veth0")],
    );
    let a = &lab.client_a;
    // Control.
    assert_eq!(arp_answers(a, "veth1", arp_from_a(VIP_A)), [MAC_A]);
    // Our MAC as Ethernet source (a frame of ours looped back).
    let looped = ArpPacket {
        eth_src: MAC_A,
        ..arp_from_a(VIP_A)
    };
    assert!(arp_answers(a, "veth1", looped).is_empty());
    // Our MAC as sender hardware address.
    let spoofed = ArpPacket {
        sender_mac: MAC_A,
        ..arp_from_a(VIP_A)
    };
    assert!(arp_answers(a, "veth1", spoofed).is_empty());
    // Our own gratuitous ARP, both forms, coming back.
    for garp in ArpPacket::gratuitous(MAC_A, VIP_A) {
        let back = exchange(a, "veth1", garp.to_bytes().to_vec(), ETHERTYPE_ARP);
        assert!(
            back.iter()
                .filter_map(|f| ArpPacket::parse(f))
                .all(|p| p.op != bpf::frame::ARP_REPLY || p.sender_ip != VIP_A),
            "answered our own announcement"
        );
    }
    // Neighbor Solicitations: control, then our MAC as Ethernet source and
    // as source link-layer address.
    let ns = NeighborSolicitation::multicast(CLIENT_A, CLIENT6, VIP6_A);
    assert_eq!(ns_answers(a, "veth1", ns.clone()), [MAC_A]);
    let looped = NeighborSolicitation {
        eth_src: MAC_A,
        ..ns.clone()
    };
    assert!(ns_answers(a, "veth1", looped).is_empty());
    let spoofed = NeighborSolicitation {
        source_mac: Some(MAC_A),
        ..ns
    };
    assert!(ns_answers(a, "veth1", spoofed).is_empty());
    // Only the two controls were counted.
    assert_eq!(
        counters(&lab, &pins),
        vec![
            (VIP_A.into(), "veth0".into(), 1),
            (VIP6_A.into(), "veth0".into(), 1),
        ]
    );
}
