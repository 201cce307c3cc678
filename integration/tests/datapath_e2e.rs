//! End to end in namespaces: the agent's datapath code path (device
//! tracking, the announcer with its reconciler, the pinned eBPF responder)
//! runs in-process inside an agent namespace whose `eth0` has no IP
//! address; a client namespace on the other end of the veth runs real
//! `arping`, `ndisc6` and `tcpdump`, and the AF_PACKET prober for timing.
//! The tests write `l2-announce` rows as the ServiceActor does and open and
//! close fences as the elections do.
//!
//! Needs root, bpffs, iproute2, iputils-arping, ndisc6 and tcpdump
//! (`cargo xtask setup`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use actors::announce::GratuitousConfig;
use integration::datapath_lab::{AgentConfig, InProcessAgent};
use integration::netns::{CLIENT_V4, Netns, VethLab};
use integration::pcap::Tcpdump;
use integration::poll::wait_for;
use integration::probe::{ArpPacket, ArpProber, PacedRequest, monotonic_ns, paced};
use integration::resolvers;
use statedb::Status;

const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const SERVICE: &str = "default/web";
const WAIT: Duration = Duration::from_secs(10);
/// How close to a deadline the answers must stop (issue 3).
const PRECISION: Duration = Duration::from_millis(10);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The two namespaces and the agent in one of them. Fields drop in order:
/// the agent (and its pins) before the namespaces.
struct Fixture {
    agent: InProcessAgent,
    lab: VethLab,
}

impl Fixture {
    fn new(config: AgentConfig) -> Fixture {
        init_tracing();
        let lab = VethLab::new().expect("namespaces and veth");
        let agent = InProcessAgent::start(&lab.agent, config, &["eth0"]).expect("agent");
        Fixture { agent, lab }
    }

    /// Renews the Service's fence for a minute and announces `ips` on eth0;
    /// returns once every row is done.
    fn announce(&self, ips: &[IpAddr]) {
        self.agent
            .open_fence(SERVICE, Instant::now() + Duration::from_secs(60))
            .expect("fence opened");
        for ip in ips {
            self.agent.upsert(*ip, "eth0", &[SERVICE]).expect("upsert");
        }
        for ip in ips {
            self.agent
                .wait_status(*ip, "eth0", WAIT, |s| *s == Status::Done)
                .expect("row done");
        }
    }

    fn eth0_index(&self) -> u32 {
        self.agent
            .wait_device("eth0", WAIT)
            .expect("eth0 row")
            .index
    }

    fn prober(&self, ifname: &str) -> ArpProber {
        let ifname = ifname.to_string();
        self.lab
            .client
            .run_in(move || ArpProber::open(&ifname, CLIENT_V4))
            .expect("enter client namespace")
            .expect("open prober")
    }
}

fn once() -> GratuitousConfig {
    GratuitousConfig {
        count: 1,
        interval: Duration::from_secs(1),
    }
}

/// Real `arping` from the client: the MACs that answered.
fn arping(client: &Netns, ifname: &str, ip: Ipv4Addr, count: u32, wait_s: u32) -> Vec<[u8; 6]> {
    resolvers::arping(client.name(), ifname, ip, count, wait_s).expect("run arping")
}

/// Real `ndisc6` from the client (one solicitation): the MACs that answered.
fn ndisc6(client: &Netns, ifname: &str, ip: Ipv6Addr) -> Vec<[u8; 6]> {
    resolvers::ndisc6(client.name(), ifname, ip, 1, 500).expect("run ndisc6")
}

/// One tagged request from the prober; the MAC that answered within 500 ms.
fn probe_once(prober: &ArpProber, ip: Ipv4Addr) -> Option<[u8; 6]> {
    prober.drain();
    prober.send_request(ip, Some(u32::MAX)).expect("send");
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = prober.recv_reply(left).expect("recv")?;
        if reply.packet.sender_ip == ip {
            return Some(reply.packet.sender_mac);
        }
    }
}

/// Where the answers of a paced run stopped relative to `deadline_ns`.
#[derive(Debug)]
struct Cutoff {
    /// Requests sent before `deadline - PRECISION` that got no reply.
    lost_early: usize,
    /// Requests sent after the deadline that were answered (must be 0).
    answered_late: usize,
    /// Send time of the last answered request, ns before the deadline.
    last_answered_sent_before: i64,
    /// Arrival of the last reply, ns before the deadline (negative: after).
    last_reply_before: i64,
    /// Send time of the first unanswered request, ns after the deadline
    /// (negative: before, i.e. it was in flight when the gate closed).
    first_unanswered_after: i64,
    requests: usize,
}

fn cutoff(reqs: &[PacedRequest], deadline_ns: u64) -> Cutoff {
    let d = deadline_ns as i64;
    let early = deadline_ns.saturating_sub(PRECISION.as_nanos() as u64);
    let last_answered = reqs
        .iter()
        .filter(|r| r.reply.is_some())
        .max_by_key(|r| r.sent_ns)
        .expect("some request was answered");
    let last_reply = reqs
        .iter()
        .filter_map(|r| r.reply.map(|(at, _)| at))
        .max()
        .expect("some reply");
    let first_unanswered = reqs
        .iter()
        .filter(|r| r.reply.is_none() && r.sent_ns > last_answered.sent_ns)
        .map(|r| r.sent_ns)
        .min()
        .expect("a request after the last answered one");
    Cutoff {
        lost_early: reqs
            .iter()
            .filter(|r| r.sent_ns < early && r.reply.is_none())
            .count(),
        answered_late: reqs
            .iter()
            .filter(|r| r.sent_ns > deadline_ns && r.reply.is_some())
            .count(),
        last_answered_sent_before: d - last_answered.sent_ns as i64,
        last_reply_before: d - last_reply as i64,
        first_unanswered_after: first_unanswered as i64 - d,
        requests: reqs.len(),
    }
}

fn assert_stops_at_deadline(what: &str, c: &Cutoff) {
    eprintln!(
        "{what}: {} requests at 1 ms; last answered request sent {:.3} ms before the deadline, \
         its reply read {:.3} ms before it; first unanswered request sent {:.3} ms after it",
        c.requests,
        c.last_answered_sent_before as f64 / 1e6,
        c.last_reply_before as f64 / 1e6,
        c.first_unanswered_after as f64 / 1e6,
    );
    assert_eq!(
        c.answered_late, 0,
        "{what}: answered after the deadline: {c:?}"
    );
    assert_eq!(
        c.lost_early, 0,
        "{what}: unanswered before the deadline: {c:?}"
    );
    assert!(
        c.last_answered_sent_before >= 0
            && c.last_answered_sent_before < PRECISION.as_nanos() as i64,
        "{what}: answers stopped more than {PRECISION:?} before the deadline: {c:?}"
    );
    assert!(
        c.last_reply_before > -(PRECISION.as_nanos() as i64)
            && c.last_reply_before < PRECISION.as_nanos() as i64,
        "{what}: last reply not within {PRECISION:?} of the deadline: {c:?}"
    );
}

#[test]
fn answers_from_the_interface_mac_until_the_row_is_removed() {
    let f = Fixture::new(AgentConfig {
        gratuitous: once(),
        ..AgentConfig::default()
    });
    let mac = f.lab.agent_mac;
    f.announce(&[V4.into(), V6.into()]);
    let eth0 = f.eth0_index();

    assert_eq!(
        arping(&f.lab.client, "veth0", V4, 2, 3),
        vec![mac],
        "arping"
    );
    assert_eq!(ndisc6(&f.lab.client, "veth0", V6), vec![mac]);

    let sent = |ip: IpAddr| {
        f.agent
            .entry(ip, eth0)
            .expect("entries")
            .map(|e| e.responses_sent)
    };
    assert!(
        sent(V4.into()) >= Some(2),
        "v4 counter {:?}",
        sent(V4.into())
    );
    assert!(
        sent(V6.into()) >= Some(1),
        "v6 counter {:?}",
        sent(V6.into())
    );
    assert!(
        f.agent
            .attached()
            .expect("attached")
            .iter()
            .any(|l| l.ifindex == eth0),
        "responder not attached to eth0"
    );

    // Removing the IPv4 row stops ARP answers; IPv6 is untouched.
    assert!(f.agent.remove(V4.into(), "eth0").expect("remove"));
    wait_for("v4 entry removed from the map", WAIT, || {
        sent(V4.into()).is_none().then_some(())
    })
    .expect("v4 entry gone");
    assert!(arping(&f.lab.client, "veth0", V4, 2, 2).is_empty());
    assert_eq!(ndisc6(&f.lab.client, "veth0", V6), vec![mac]);

    // The last row gone: no answers and the program is detached.
    assert!(f.agent.remove(V6.into(), "eth0").expect("remove"));
    wait_for("responder detached from eth0", WAIT, || {
        let attached = f.agent.attached().expect("attached");
        (sent(V6.into()).is_none() && attached.is_empty()).then_some(())
    })
    .expect("v6 entry gone and detached");
    assert!(ndisc6(&f.lab.client, "veth0", V6).is_empty());
}

#[test]
fn a_stopped_agent_goes_quiet_when_liveness_expires() {
    let max = Duration::from_secs(1);
    let mut f = Fixture::new(AgentConfig {
        max_liveness: max,
        liveness_interval: Duration::from_millis(100),
        gratuitous: once(),
        ..AgentConfig::default()
    });
    f.announce(&[V4.into()]);
    let prober = f.prober("veth0");
    // Liveness is refreshed: answers last beyond one maximum age.
    let refreshed = paced(
        &prober,
        V4,
        Duration::from_millis(10),
        monotonic_ns() + (max + Duration::from_millis(300)).as_nanos() as u64,
        Duration::from_millis(50),
    )
    .expect("paced probe");
    assert!(
        refreshed
            .iter()
            .all(|r| r.reply.is_some_and(|(_, m)| m == f.lab.agent_mac)),
        "unanswered while the agent refreshes liveness"
    );

    f.agent.stop();
    let expiry = f.agent.liveness_ns().expect("liveness") + max.as_nanos() as u64;
    assert!(
        monotonic_ns() < expiry,
        "liveness expired before probing started"
    );
    let reqs = paced(
        &prober,
        V4,
        Duration::from_millis(1),
        expiry + 100_000_000,
        Duration::from_millis(50),
    )
    .expect("paced probe");
    assert!(
        reqs.iter()
            .all(|r| r.reply.is_none_or(|(_, m)| m == f.lab.agent_mac))
    );
    assert_stops_at_deadline("liveness", &cutoff(&reqs, expiry));
    assert!(arping(&f.lab.client, "veth0", V4, 1, 1).is_empty());
}

#[test]
fn answers_stop_at_the_lease_fence_deadline() {
    let f = Fixture::new(AgentConfig {
        gratuitous: once(),
        ..AgentConfig::default()
    });
    f.announce(&[V4.into()]);
    let prober = f.prober("veth0");
    assert_eq!(probe_once(&prober, V4), Some(f.lab.agent_mac));
    let slot = f
        .agent
        .entry(V4.into(), f.eth0_index())
        .expect("entries")
        .expect("v4 entry")
        .fence_slot;

    // A last renewal, then none: the fence closes 300 ms from now.
    let before = monotonic_ns();
    f.agent
        .open_fence(SERVICE, Instant::now() + Duration::from_millis(300))
        .expect("fence opened");
    let deadline = f.agent.fence_ns(slot).expect("fence");
    assert!(
        deadline > before + 250_000_000 && deadline < before + 400_000_000,
        "fence {deadline} not ~300 ms after {before}"
    );
    let reqs = paced(
        &prober,
        V4,
        Duration::from_millis(1),
        deadline + 100_000_000,
        Duration::from_millis(50),
    )
    .expect("paced probe");
    assert_stops_at_deadline("fence", &cutoff(&reqs, deadline));
    assert!(arping(&f.lab.client, "veth0", V4, 1, 1).is_empty());

    // The next renewal opens the fence again.
    f.agent
        .open_fence(SERVICE, Instant::now() + Duration::from_secs(60))
        .expect("fence opened");
    assert_eq!(
        arping(&f.lab.client, "veth0", V4, 1, 2),
        vec![f.lab.agent_mac]
    );
}

#[test]
fn status_is_error_for_an_unknown_interface_until_it_appears() {
    let f = Fixture::new(AgentConfig {
        gratuitous: once(),
        ..AgentConfig::default()
    });
    let v4 = Ipv4Addr::new(192, 0, 2, 11);
    let ip: IpAddr = v4.into();
    f.agent
        .open_fence(SERVICE, Instant::now() + Duration::from_secs(60))
        .expect("fence opened");
    f.agent.upsert(ip, "eth1", &[SERVICE]).expect("upsert");
    // Let the retries back off to their cap (2 s) first, so that only the
    // device table waking the reconciler can make it quick below.
    let row = f
        .agent
        .wait_status(
            ip,
            "eth1",
            WAIT,
            |s| matches!(s, Status::Error { attempts, .. } if *attempts >= 5),
        )
        .expect("error status");
    let Status::Error { message, .. } = &row.status else {
        unreachable!("waited for an error");
    };
    assert!(message.contains("unknown interface"), "{message}");

    let eth1_mac = [0x02, 0xa0, 0, 0, 0, 0x02];
    f.lab
        .add_pair("eth1", eth1_mac, "veth1", [0x02, 0xc0, 0, 0, 0, 0x02])
        .expect("second veth");
    let added = Instant::now();
    f.agent
        .wait_status(ip, "eth1", WAIT, |s| *s == Status::Done)
        .expect("done once eth1 exists");
    assert!(
        added.elapsed() < Duration::from_millis(1000),
        "the row waited {:?} for eth1 after it appeared",
        added.elapsed()
    );
    let prober = f.prober("veth1");
    assert_eq!(probe_once(&prober, v4), Some(eth1_mac));
    // Nothing answers it on eth0.
    let other = f.prober("veth0");
    assert_eq!(probe_once(&other, v4), None);
}

#[test]
fn a_recreated_interface_is_answered_again_at_once() {
    let f = Fixture::new(AgentConfig {
        gratuitous: once(),
        ..AgentConfig::default()
    });
    let v4 = Ipv4Addr::new(192, 0, 2, 12);
    let ip: IpAddr = v4.into();
    let eth1_mac = [0x02, 0xa0, 0, 0, 0, 0x03];
    let veth1_mac = [0x02, 0xc0, 0, 0, 0, 0x03];
    f.lab
        .add_pair("eth1", eth1_mac, "veth1", veth1_mac)
        .expect("eth1");
    let before = f.agent.wait_device("eth1", WAIT).expect("eth1 row").index;
    f.agent
        .open_fence(SERVICE, Instant::now() + Duration::from_secs(60))
        .expect("fence opened");
    f.agent.upsert(ip, "eth1", &[SERVICE]).expect("upsert");
    f.agent
        .wait_status(ip, "eth1", WAIT, |s| *s == Status::Done)
        .expect("done");
    assert_eq!(probe_once(&f.prober("veth1"), v4), Some(eth1_mac));

    // Same name, new index: the row stays done, only the device changed.
    f.lab
        .agent
        .ip(&["link", "del", "eth1"])
        .expect("delete eth1");
    f.lab
        .add_pair("eth1", eth1_mac, "veth1", veth1_mac)
        .expect("eth1 again");
    let after = wait_for("eth1 under a new index", WAIT, || {
        f.agent
            .wait_device("eth1", WAIT)
            .ok()
            .map(|d| d.index)
            .filter(|i| *i != before)
    })
    .expect("new index");
    let recreated = Instant::now();
    wait_for("entry on the new index", Duration::from_secs(1), || {
        f.agent.entry(ip, after).ok().flatten()
    })
    .unwrap_or_else(|e| panic!("{e} ({:?} after the device row)", recreated.elapsed()));
    assert_eq!(f.agent.entry(ip, before).expect("entry"), None);
    assert_eq!(probe_once(&f.prober("veth1"), v4), Some(eth1_mac));
}

/// The ICMPv6 checksum over the pseudo-header and `msg` is valid.
fn icmpv6_checksum_ok(src: &[u8], dst: &[u8], msg: &[u8]) -> bool {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
    };
    add(src);
    add(dst);
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn tcpdump_captures_gratuitous_arp_and_unsolicited_na_when_a_row_is_added() {
    let f = Fixture::new(AgentConfig {
        gratuitous: GratuitousConfig {
            count: 2,
            interval: Duration::from_millis(200),
        },
        ..AgentConfig::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("garp.pcap");
    let dump = Tcpdump::start(
        f.lab.client.name(),
        "veth0",
        &path,
        &["arp", "or", "icmp6"],
        WAIT,
    )
    .expect("tcpdump");

    let mac = f.lab.agent_mac;
    f.announce(&[V4.into(), V6.into()]);

    let classify = |cap: &integration::pcap::Capture| {
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        let mut nas = Vec::new();
        for p in &cap.packets {
            let d = &p.data;
            if d.len() < 14 || d[6..12] != mac {
                continue;
            }
            if let Some(arp) = ArpPacket::parse(d) {
                match arp.op {
                    1 => requests.push((arp, d.len())),
                    2 => replies.push((arp, d.len())),
                    _ => {}
                }
            } else if d[12..14] == [0x86, 0xdd] && d.len() >= 54 && d[20] == 58 && d[54] == 136 {
                nas.push(d.clone());
            }
        }
        (requests, replies, nas)
    };
    let (requests, replies, nas) = wait_for("two of each announcement", WAIT, || {
        let cap = dump.read().ok()?;
        let c = classify(&cap);
        (c.0.len() >= 2 && c.1.len() >= 2 && c.2.len() >= 2).then_some(c)
    })
    .expect("gratuitous frames captured");
    let cap = dump.read().expect("read capture");
    drop(dump);
    assert_eq!(cap.linktype, 1, "Ethernet capture");
    // Exactly the configured count of each.
    assert_eq!((requests.len(), replies.len(), nas.len()), (2, 2, 2));

    for (arp, len) in &requests {
        // RFC 5227 announcement: SPA = TPA = the IP, THA zero, broadcast.
        assert_eq!(arp.eth_dst, [0xff; 6]);
        assert_eq!(arp.sender_mac, mac);
        assert_eq!(arp.sender_ip, V4);
        assert_eq!(arp.target_mac, [0; 6]);
        assert_eq!(arp.target_ip, V4);
        assert_eq!(*len, 60, "padded to the Ethernet minimum");
    }
    for (arp, _) in &replies {
        // `arping -A` form: a broadcast reply, THA = own MAC.
        assert_eq!(arp.eth_dst, [0xff; 6]);
        assert_eq!(arp.sender_mac, mac);
        assert_eq!(arp.sender_ip, V4);
        assert_eq!(arp.target_mac, mac);
        assert_eq!(arp.target_ip, V4);
    }
    for d in &nas {
        assert_eq!(d[0..6], [0x33, 0x33, 0, 0, 0, 1], "to all-nodes MAC");
        let ip6 = &d[14..54];
        assert_eq!(ip6[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([ip6[4], ip6[5]]), 32, "payload length");
        assert_eq!(ip6[7], 255, "hop limit");
        assert_eq!(ip6[8..24], V6.octets(), "source is the target itself");
        assert_eq!(
            ip6[24..40],
            "ff02::1".parse::<Ipv6Addr>().expect("ip").octets()
        );
        let icmp = &d[54..86];
        assert_eq!((icmp[0], icmp[1]), (136, 0), "neighbor advertisement");
        assert_eq!(icmp[4], 0x20, "Override only: not Router, not Solicited");
        assert_eq!(icmp[8..24], V6.octets(), "target");
        assert_eq!(icmp[24..26], [2, 1], "target link-layer address option");
        assert_eq!(icmp[26..32], mac);
        assert!(
            icmpv6_checksum_ok(&ip6[8..24], &ip6[24..40], icmp),
            "checksum"
        );
    }
}

/// Gratuitous frames (ARP with SPA = TPA, or NA) from `mac` in a capture,
/// with their capture times (CLOCK_REALTIME ns).
fn announcements_from(cap: &integration::pcap::Capture, mac: [u8; 6]) -> Vec<u64> {
    cap.packets
        .iter()
        .filter(|p| p.data.len() >= 14 && p.data[6..12] == mac)
        .filter(|p| match ArpPacket::parse(&p.data) {
            Some(arp) => arp.sender_ip == arp.target_ip,
            None => {
                let d = &p.data;
                d[12..14] == [0x86, 0xdd] && d.len() >= 55 && d[20] == 58 && d[54] == 136
            }
        })
        .map(|p| p.ts_ns)
        .collect()
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[test]
fn announcements_wait_for_the_fence_and_stop_when_it_closes() {
    let interval = Duration::from_millis(300);
    let f = Fixture::new(AgentConfig {
        gratuitous: GratuitousConfig { count: 8, interval },
        ..AgentConfig::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let dump = Tcpdump::start(
        f.lab.client.name(),
        "veth0",
        &dir.path().join("g.pcap"),
        &["arp", "or", "icmp6"],
        WAIT,
    )
    .expect("tcpdump");
    let mac = f.lab.agent_mac;
    // A row of this run whose claim has no open fence: in the maps, but
    // neither answered nor announced.
    f.agent
        .upsert(V4.into(), "eth0", &[SERVICE])
        .expect("upsert");
    f.agent
        .wait_status(V4.into(), "eth0", WAIT, |s| *s == Status::Done)
        .expect("row done");
    assert!(
        f.agent
            .entry(V4.into(), f.eth0_index())
            .expect("entry")
            .is_some()
    );
    // arping waits a second: several repeat intervals of observation.
    assert_eq!(
        arping(&f.lab.client, "veth0", V4, 1, 1),
        Vec::<[u8; 6]>::new()
    );
    let cap = dump.read().expect("capture");
    assert!(
        announcements_from(&cap, mac).is_empty(),
        "announced before the fence opened"
    );

    // The fence opens: announced at once, then repeated.
    f.agent
        .open_fence(SERVICE, Instant::now() + Duration::from_secs(60))
        .expect("open");
    wait_for("two announcements", WAIT, || {
        let cap = dump.read().ok()?;
        (announcements_from(&cap, mac).len() >= 2).then_some(())
    })
    .expect("announced");
    // Fence before release: once the close is acknowledged nothing answers
    // and the repeats stop.
    f.agent.close_fence(SERVICE).expect("close");
    let closed_at = realtime_ns();
    let prober = f.prober("veth0");
    assert_eq!(
        probe_once(&prober, V4),
        None,
        "answered after the fence closed"
    );
    assert_eq!(
        arping(&f.lab.client, "veth0", V4, 2, 2),
        Vec::<[u8; 6]>::new()
    );
    let cap = dump.read().expect("capture");
    drop(dump);
    let late: Vec<u64> = announcements_from(&cap, mac)
        .into_iter()
        .filter(|t| *t > closed_at)
        .collect();
    assert!(
        late.is_empty(),
        "{} announcements after the fence closed",
        late.len()
    );
}

#[test]
fn a_restarted_agent_neither_rearms_nor_announces_what_its_previous_run_left() {
    let mut f = Fixture::new(AgentConfig {
        gratuitous: once(),
        ..AgentConfig::default()
    });
    let other = "default/other";
    let v4b = Ipv4Addr::new(192, 0, 2, 12);
    f.announce(&[V4.into(), V6.into()]);
    f.agent
        .open_fence(other, Instant::now() + Duration::from_secs(60))
        .expect("open");
    f.agent
        .upsert(v4b.into(), "eth0", &[other])
        .expect("upsert");
    f.agent
        .wait_status(v4b.into(), "eth0", WAIT, |s| *s == Status::Done)
        .expect("done");
    let eth0 = f.eth0_index();
    let slot_of = |f: &Fixture, ip: IpAddr| -> u32 {
        f.agent
            .entry(ip, eth0)
            .expect("entries")
            .expect("entry")
            .fence_slot
    };
    let (slot_a, slot_6) = (slot_of(&f, V4.into()), slot_of(&f, V6.into()));
    let old_deadline = f.agent.fence_ns(slot_a).expect("fence");

    let dir = tempfile::tempdir().expect("tempdir");
    let dump = Tcpdump::start(
        f.lab.client.name(),
        "veth0",
        &dir.path().join("r.pcap"),
        &["arp", "or", "icmp6"],
        WAIT,
    )
    .expect("tcpdump");
    let mac = f.lab.agent_mac;
    let restarted_at = realtime_ns();
    f.agent.restart().expect("restart");
    // This run confirms the claim with a shorter fence (its first renewal).
    // The acknowledgement comes after the new run's first full pass.
    let until = Instant::now() + Duration::from_secs(5);
    f.agent
        .open_fence(SERVICE, until)
        .expect("open in the new run");
    // The inherited entries still answer under the old fence (no gap)...
    assert_eq!(arping(&f.lab.client, "veth0", V4, 1, 2), vec![mac]);
    // ...which the new run did not touch: neither re-armed nor cleared.
    assert_eq!(f.agent.fence_ns(slot_a).expect("fence"), old_deadline);
    assert_eq!(f.agent.fence_ns(slot_6).expect("fence"), old_deadline);
    let cap = dump.read().expect("capture");
    assert!(
        announcements_from(&cap, mac)
            .iter()
            .all(|t| *t < restarted_at),
        "the new run announced an entry it has not taken"
    );

    // This run's row for V4: the same entry and slot, now under the
    // claim's fence of this run, and announced.
    f.agent
        .upsert(V4.into(), "eth0", &[SERVICE])
        .expect("upsert");
    let adopted = wait_for("V4 under this run's fence", WAIT, || {
        let d = f.agent.fence_ns(slot_a).ok()?;
        (d != old_deadline).then_some(d)
    })
    .expect("adopted");
    assert!(adopted < old_deadline, "took this run's shorter fence");
    assert_eq!(slot_of(&f, V4.into()), slot_a, "never re-pointed");
    wait_for("V4 announced by the new run", WAIT, || {
        let cap = dump.read().ok()?;
        announcements_from(&cap, mac)
            .iter()
            .any(|t| *t > restarted_at)
            .then_some(())
    })
    .expect("announced after adoption");
    // V6 was not taken by this run: still the old deadline.
    assert_eq!(f.agent.fence_ns(slot_6).expect("fence"), old_deadline);

    // The other claim is decided elsewhere: its row goes, so does its entry.
    assert!(f.agent.remove(v4b.into(), "eth0").expect("remove"));
    wait_for("the other claim's entry removed", WAIT, || {
        f.agent
            .entry(v4b.into(), eth0)
            .ok()?
            .is_none()
            .then_some(())
    })
    .expect("removed");
    assert_eq!(
        arping(&f.lab.client, "veth0", v4b, 1, 1),
        Vec::<[u8; 6]>::new()
    );
}

#[test]
fn a_changed_interface_mac_is_answered_with_and_announced_at_once() {
    let f = Fixture::new(AgentConfig {
        gratuitous: once(),
        ..AgentConfig::default()
    });
    f.announce(&[V4.into(), V6.into()]);
    assert_eq!(
        arping(&f.lab.client, "veth0", V4, 1, 2),
        vec![f.lab.agent_mac]
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dump = Tcpdump::start(
        f.lab.client.name(),
        "veth0",
        &dir.path().join("m.pcap"),
        &["arp", "or", "icmp6"],
        WAIT,
    )
    .expect("tcpdump");
    // A bond failing over to another slave changes the bond's MAC likewise.
    let new_mac = [0x02, 0xa0, 0, 0, 0, 0x77];
    f.lab
        .agent
        .ip(&[
            "link",
            "set",
            "eth0",
            "address",
            &integration::mac::format(new_mac),
        ])
        .expect("set address");
    let prober = f.prober("veth0");
    wait_for("answers from the new MAC", WAIT, || {
        (probe_once(&prober, V4) == Some(new_mac)).then_some(())
    })
    .expect("new MAC answers");
    assert_eq!(ndisc6(&f.lab.client, "veth0", V6), vec![new_mac]);
    wait_for("gratuitous ARP and NA from the new MAC", WAIT, || {
        let cap = dump.read().ok()?;
        (announcements_from(&cap, new_mac).len() >= 3).then_some(())
    })
    .expect("announced with the new MAC");
}
