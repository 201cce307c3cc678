//! Attachment tests on a real veth pair in namespaces this test creates:
//! the responder answers `arping` / `ndisc6` from the peer, the pinned link
//! keeps answering after the loading process lets go, a second open reuses
//! maps and link, detach and cleanup_stale remove what they should.
//! Needs root, BPF, iproute2, arping and ndisc6.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aya::programs::links::{FdLink, PinnedLink};
use bpf::{AttachMode, AttachedLink};
use common::{Netns, PinDir, agent_and_client};

const IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const IF_MAC_TEXT: &str = "02:00:00:00:00:AA";
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

struct Lab {
    agent: Netns,
    client: Netns,
}

fn lab() -> Lab {
    let (agent, client) = agent_and_client("l2a-bpf-agent", "l2a-bpf-client");
    client.ip(&["addr", "add", "192.0.2.1/24", "dev", "veth1"]);
    client.ip(&["addr", "add", "2001:db8::1/64", "dev", "veth1", "nodad"]);
    // The agent side has no IP address at all: only the responder can answer.
    Lab { agent, client }
}

/// One ARP request from the client; the MAC that answered, if any.
fn arping(client: &Netns) -> Option<String> {
    let (_, out) = client.exec(&["arping", "-c", "1", "-w", "2", "-I", "veth1", "192.0.2.10"]);
    out.lines()
        .find(|l| l.contains("reply from 192.0.2.10"))
        .and_then(|l| l.split('[').nth(1))
        .and_then(|s| s.split(']').next())
        .map(str::to_uppercase)
}

/// One Neighbor Solicitation from the client; the target link-layer address.
fn ndisc(client: &Netns) -> Option<String> {
    let (_, out) = client.exec(&[
        "ndisc6",
        "-1",
        "-r",
        "1",
        "-w",
        "2000",
        "2001:db8::10",
        "veth1",
    ]);
    out.lines()
        .find(|l| l.contains("Target link-layer address"))
        .and_then(|l| {
            l.split(':')
                .skip(1)
                .collect::<Vec<_>>()
                .join(":")
                .trim()
                .to_owned()
                .into()
        })
        .map(|s: String| s.to_uppercase())
}

fn pinned_program_id(path: std::path::PathBuf) -> u32 {
    let link: FdLink = PinnedLink::from_pin(path).expect("pinned link").into();
    link.info().expect("link info").program_id()
}

#[test]
fn tc_link_outlives_its_loader_and_is_reused() {
    let lab = lab();
    let pins = PinDir::new();
    let dir = pins.0.clone();

    // First agent: attach, fill the maps, then let go of everything.
    let d = dir.clone();
    let (ifindex, first_prog) = lab.agent.run(move || {
        let mut r = bpf::Responder::open(&bpf::ResponderConfig {
            pin_dir: d.clone(),
            max_liveness: Duration::from_secs(60),
        })
        .unwrap();
        let ifindex = r.attach("veth0", IF_MAC, AttachMode::Tc).unwrap();
        // Idempotent.
        assert_eq!(r.attach("veth0", IF_MAC, AttachMode::Tc).unwrap(), ifindex);
        assert_eq!(
            r.attached().unwrap(),
            vec![AttachedLink {
                ifindex,
                mode: AttachMode::Tc
            }]
        );
        r.insert_v4(VIP4, ifindex, 0).unwrap();
        r.insert_v6(VIP6, ifindex, 0).unwrap();
        let now = r.set_liveness_now().unwrap();
        r.set_fence(0, now + 120_000_000_000).unwrap();
        r.set_node_fence(u64::MAX).unwrap();
        let prog = pinned_program_id(d.join(format!("links/tc-{ifindex}")));
        (ifindex, prog)
    });

    // Nobody holds the responder now: the pinned link and maps still answer.
    assert_eq!(arping(&lab.client).as_deref(), Some(IF_MAC_TEXT));
    assert_eq!(ndisc(&lab.client).as_deref(), Some(IF_MAC_TEXT));

    // Second agent: same maps (entries and counters), link switched to its program.
    let d = dir.clone();
    let client = lab.client.name.clone();
    lab.agent.run(move || {
        let mut r = bpf::Responder::open(&bpf::ResponderConfig {
            pin_dir: d.clone(),
            max_liveness: Duration::from_secs(60),
        })
        .unwrap();
        let entries = r.list().unwrap();
        let v4 = entries
            .iter()
            .find(|e| e.ip == VIP4)
            .expect("v4 entry survived");
        assert!(v4.responses_sent >= 1, "counter survived: {v4:?}");
        let v6 = entries
            .iter()
            .find(|e| e.ip == VIP6)
            .expect("v6 entry survived");
        assert!(v6.responses_sent >= 1, "counter survived: {v6:?}");

        assert_eq!(r.attach("veth0", IF_MAC, AttachMode::Tc).unwrap(), ifindex);
        let link_path = d.join(format!("links/tc-{ifindex}"));
        let second_prog = pinned_program_id(link_path.clone());
        assert_ne!(second_prog, first_prog, "link now runs the new program");
        let client = Netns::borrowed(&client);
        assert_eq!(arping(&client).as_deref(), Some(IF_MAC_TEXT));

        // Detach: no more answers.
        assert!(r.detach("veth0").unwrap());
        assert!(!link_path.exists());
        assert_eq!(arping(&client), None);

        // cleanup_stale removes what is not kept.
        r.attach("veth0", IF_MAC, AttachMode::Tc).unwrap();
        assert_eq!(arping(&client).as_deref(), Some(IF_MAC_TEXT));
        let removed = r.cleanup_stale(&[]).unwrap();
        assert_eq!(
            removed,
            vec![AttachedLink {
                ifindex,
                mode: AttachMode::Tc
            }]
        );
        assert!(r.attached().unwrap().is_empty());
        assert_eq!(arping(&client), None);
    });
}

#[test]
fn switching_to_xdp_replaces_the_tc_link() {
    let lab = lab();
    let pins = PinDir::new();
    let dir = pins.0.clone();
    let client = lab.client.name.clone();
    lab.agent.run(move || {
        let mut r = bpf::Responder::open(&bpf::ResponderConfig {
            pin_dir: dir,
            max_liveness: Duration::from_secs(60),
        })
        .unwrap();
        let ifindex = r.attach("veth0", IF_MAC, AttachMode::Tc).unwrap();
        r.insert_v4(VIP4, ifindex, 0).unwrap();
        let now = r.set_liveness_now().unwrap();
        r.set_fence(0, now + 120_000_000_000).unwrap();
        r.set_node_fence(u64::MAX).unwrap();
        assert_eq!(r.attach("veth0", IF_MAC, AttachMode::Xdp).unwrap(), ifindex);
        assert_eq!(
            r.attached().unwrap(),
            vec![AttachedLink {
                ifindex,
                mode: AttachMode::Xdp
            }]
        );
        let client = Netns::borrowed(&client);
        // veth delivers XDP_TX frames only to a peer running NAPI, which a
        // peer gets by having an XDP program itself: give veth1 one that
        // passes everything (a responder with no entries for it).
        let peer_pins = PinDir::new();
        let peer_dir = peer_pins.0.clone();
        client.run(move || {
            let mut peer = bpf::Responder::open(&bpf::ResponderConfig {
                pin_dir: peer_dir,
                max_liveness: Duration::from_secs(60),
            })
            .unwrap();
            peer.attach("veth1", [0x02, 0, 0, 0, 0, 0xbb], AttachMode::Xdp)
                .unwrap();
        });
        assert_eq!(arping(&client).as_deref(), Some(IF_MAC_TEXT));
        drop(peer_pins);
        let kept = [AttachedLink {
            ifindex,
            mode: AttachMode::Xdp,
        }];
        assert!(r.cleanup_stale(&kept).unwrap().is_empty());
        assert!(r.detach_ifindex(ifindex).unwrap());
        assert!(r.attached().unwrap().is_empty());
    });
}
