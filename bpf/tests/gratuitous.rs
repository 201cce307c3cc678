//! Gratuitous ARP and unsolicited NA on a real veth whose sending side has no
//! IP address: the peer's existing neighbour entries move to the new MAC.
//! Needs root and iproute2.

mod common;

use std::time::{Duration, Instant};

use common::{Netns, agent_and_client};

const NEW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

fn neigh_mac(client: &Netns, ip: &str) -> Option<String> {
    let (_, out) = client.exec(&["ip", "neigh", "show", ip, "dev", "veth1"]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_lowercase)
}

fn wait_for_mac(client: &Netns, ip: &str, mac: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if neigh_mac(client, ip).as_deref() == Some(mac) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
    false
}

#[test]
fn gratuitous_frames_update_the_peer_without_an_ip_on_the_sender() {
    let (agent, client) = agent_and_client("l2a-garp-agent", "l2a-garp-client");
    client.ip(&["addr", "add", "192.0.2.1/24", "dev", "veth1"]);
    client.ip(&["addr", "add", "2001:db8::1/64", "dev", "veth1", "nodad"]);
    // The old announcer's MACs, as the client last learned them.
    client.ip(&[
        "neigh",
        "replace",
        "192.0.2.10",
        "lladdr",
        "02:00:00:00:00:cc",
        "dev",
        "veth1",
        "nud",
        "stale",
    ]);
    client.ip(&[
        "-6",
        "neigh",
        "replace",
        "2001:db8::10",
        "lladdr",
        "02:00:00:00:00:cc",
        "dev",
        "veth1",
        "nud",
        "stale",
    ]);
    assert_eq!(
        neigh_mac(&client, "192.0.2.10").as_deref(),
        Some("02:00:00:00:00:cc")
    );

    agent.run(|| {
        let ifindex = bpf::if_nametoindex("veth0").unwrap();
        bpf::send_gratuitous_arp(ifindex, NEW_MAC, "192.0.2.10".parse().unwrap()).unwrap();
        bpf::send_unsolicited_na(ifindex, NEW_MAC, "2001:db8::10".parse().unwrap()).unwrap();
    });

    assert!(
        wait_for_mac(&client, "192.0.2.10", "02:00:00:00:00:aa"),
        "ARP entry now {:?}",
        neigh_mac(&client, "192.0.2.10")
    );
    assert!(
        wait_for_mac(&client, "2001:db8::10", "02:00:00:00:00:aa"),
        "NDP entry now {:?}",
        neigh_mac(&client, "2001:db8::10")
    );
}

#[test]
fn sending_on_a_missing_interface_fails_cleanly() {
    let agent = Netns::new("l2a-garp-empty");
    let err = agent.run(|| {
        bpf::send_gratuitous_arp(999_999, NEW_MAC, "192.0.2.10".parse().unwrap()).unwrap_err()
    });
    assert!(
        matches!(
            err,
            bpf::GratuitousError::Send {
                ifindex: 999_999,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_bound_packet_socket_receives_its_ethertype_from_the_peer_only() {
    let (agent, client) = agent_and_client("l2a-psock-agent", "l2a-psock-client");
    let client_name = client.name.clone();
    agent.run(move || {
        use bpf::PacketSocket;
        use bpf::frame::{ARP_REQUEST, ArpPacket, ETHERTYPE_ARP, NeighborAdvertisement};
        let ifindex = bpf::if_nametoindex("veth0").unwrap();
        let socket = PacketSocket::bind(ifindex, ETHERTYPE_ARP).unwrap();
        assert_eq!(socket.interface_mac().unwrap(), NEW_MAC);
        // Its own frames are not received (PACKET_IGNORE_OUTGOING).
        let own = ArpPacket::request(
            NEW_MAC,
            "192.0.2.10".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        );
        socket.send(&own.to_bytes()).unwrap();
        // The peer sends an NA (another EtherType) and then an ARP request
        // to a MAC that is not ours: only the request arrives.
        let client = Netns::borrowed(&client_name);
        let request = client.run(|| {
            let peer = PacketSocket::sender(bpf::if_nametoindex("veth1").unwrap()).unwrap();
            let na = NeighborAdvertisement::unsolicited(
                [2, 0, 0, 0, 0, 1],
                "2001:db8::1".parse().unwrap(),
            );
            peer.send(&na.to_bytes()).unwrap();
            let request = ArpPacket {
                eth_dst: [0x02, 0x7a, 0, 0, 0, 7],
                ..ArpPacket::request(
                    [2, 0, 0, 0, 0, 1],
                    "192.0.2.1".parse().unwrap(),
                    "192.0.2.10".parse().unwrap(),
                )
            };
            peer.send(&request.to_bytes()).unwrap();
            request
        });
        assert!(socket.wait_readable(Duration::from_secs(2)).unwrap());
        let mut buf = [0u8; 128];
        let n = socket.try_recv(&mut buf).unwrap().expect("a frame");
        let got = ArpPacket::parse(&buf[..n]).expect("an ARP frame");
        assert_eq!((got, got.op), (request, ARP_REQUEST));
        assert_eq!(
            socket.try_recv(&mut buf).unwrap(),
            None,
            "nothing else queued"
        );
        assert_eq!(socket.drops().unwrap(), 0);
    });
}
