//! A Neighbor Solicitation sweep: one AF_PACKET socket in a client
//! namespace solicits many IPv6 addresses (thousands of Service VIPs) at a
//! set rate and keeps, per address, every solicited Neighbor Advertisement
//! addressed to it: when it was read (`CLOCK_MONOTONIC`) and which MAC sent
//! it. The control-plane benchmark measures with it when each VIP is first
//! answered, by whom, and how long a failover leaves it unanswered.
//!
//! Two schedules share the socket. The *sweep* walks every address
//! round-robin at `sweep_pps`. The *watch list* holds addresses waiting for
//! an answer — a new Service's first one, a survivor's after a failover —
//! and solicits them round-robin at up to `watch_pps`, each at most once per
//! `watch_min_period`, until each gets the reply it waits for; watched
//! addresses are left out of the sweep meanwhile. The time resolution of a
//! measurement is the solicitation period of its address, which the caller
//! can read back ([`SweepLog::targets`]: `sent`, and the rates it chose).
//!
//! Solicitations are [`bpf::frame::NeighborSolicitation::multicast`]
//! frames (to the target's solicited-node group, from a fixed source
//! address and the interface's MAC, with the source link-layer address
//! option) sent on a [`bpf::PacketSocket`]. Only solicited advertisements
//! unicast to the interface with a valid ICMPv6 checksum are recorded; the
//! others are counted. It is not an NDP implementation (no neighbor cache,
//! no DAD) and not the one-target NS prober (`crate::ns_probe`).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpf::PacketSocket;
use bpf::frame::{
    ETH_HEADER_LEN, ETHERTYPE_IPV6, NeighborAdvertisement, NeighborSolicitation, icmpv6_checksum,
};

use crate::probe::{ProbeError, monotonic_ns};

/// Length of an IPv6 header (NDP carries no extension headers).
const IPV6_HEADER_LEN: usize = 40;
/// Room for the answers of thousands of solicitations in flight.
const RECEIVE_BUFFER: usize = 16 << 20;

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { op, source }
}

/// The socket of a sweep and its interface's MAC.
#[derive(Debug)]
pub struct SweepSocket {
    socket: PacketSocket,
    mac: [u8; 6],
}

impl SweepSocket {
    /// An IPv6 socket on `ifname` of the calling thread's network
    /// namespace, for [`NdpSweep::start`] (the socket stays in that
    /// namespace whatever thread uses it later; the MAC is read here, where
    /// the interface's name means something).
    pub fn open(ifname: &str) -> Result<SweepSocket, ProbeError> {
        let ifindex = bpf::if_nametoindex(ifname)
            .ok_or_else(|| ProbeError::UnknownInterface(ifname.to_string()))?;
        let socket =
            PacketSocket::bind(ifindex, ETHERTYPE_IPV6).map_err(io_err("bind(AF_PACKET)"))?;
        socket
            .set_receive_buffer(RECEIVE_BUFFER)
            .map_err(io_err("setsockopt(SO_RCVBUFFORCE)"))?;
        let mac = socket
            .interface_mac()
            .map_err(io_err("ioctl(SIOCGIFHWADDR)"))?;
        Ok(SweepSocket { socket, mac })
    }
}

/// A Neighbor Advertisement as the sweep judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertisement {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub target: Ipv6Addr,
    /// The S flag: an answer to a solicitation (else unsolicited).
    pub solicited: bool,
    pub checksum_ok: bool,
}

impl Advertisement {
    /// Parses an Ethernet frame holding an IPv6 Neighbor Advertisement
    /// ([`NeighborAdvertisement::parse`]) and checks its ICMPv6 checksum.
    pub fn parse(frame: &[u8]) -> Option<Advertisement> {
        let na = NeighborAdvertisement::parse(frame)?;
        let icmp_at = ETH_HEADER_LEN + IPV6_HEADER_LEN;
        let len = usize::from(u16::from_be_bytes([
            *frame.get(ETH_HEADER_LEN + 4)?,
            *frame.get(ETH_HEADER_LEN + 5)?,
        ]));
        let checksum_ok = frame
            .get(icmp_at..icmp_at + len)
            .is_some_and(|msg| icmpv6_checksum(&na.src, &na.dst, msg) == 0);
        Some(Advertisement {
            eth_dst: na.eth_dst,
            eth_src: na.eth_src,
            target: na.target,
            solicited: na.solicited,
            checksum_ok,
        })
    }
}

/// How fast a sweep solicits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepRates {
    /// Solicitations per second over all addresses not watched.
    pub sweep_pps: f64,
    /// Solicitations per second over the watch list, at most.
    pub watch_pps: f64,
    /// Shortest interval between two solicitations of one watched address.
    pub watch_min_period: Duration,
}

impl SweepRates {
    /// The solicitation period of each of `watched` watched addresses.
    pub fn watch_period(&self, watched: usize) -> Duration {
        let by_rate = Duration::from_secs_f64(watched as f64 / self.watch_pps.max(1e-9));
        by_rate.max(self.watch_min_period)
    }

    /// The solicitation period of each of `swept` swept addresses.
    pub fn sweep_period(&self, swept: usize) -> Duration {
        Duration::from_secs_f64(swept as f64 / self.sweep_pps.max(1e-9))
    }
}

/// One recorded answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// `CLOCK_MONOTONIC` ns when it was read.
    pub at_ns: u64,
    /// Ethernet source of the advertisement.
    pub mac: [u8; 6],
}

/// Everything seen for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLog {
    pub ip: Ipv6Addr,
    /// Every recorded answer, in the order read.
    pub replies: Vec<Reply>,
    /// Solicitations sent.
    pub sent: u64,
}

/// Packets a sweep saw that it did not record, and its own counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounters {
    pub sent: u64,
    pub send_errors: u64,
    pub recorded: u64,
    /// Unsolicited advertisements (gratuitous NA to all nodes).
    pub unsolicited: u64,
    /// Solicited advertisements for an address not swept, or not to us.
    pub foreign: u64,
    pub bad_checksum: u64,
    /// Frames the socket's receive queue dropped.
    pub socket_drops: u64,
}

/// The answers of every address, indexed by the id [`NdpSweep::add`] gave.
#[derive(Debug, Default)]
pub struct SweepLog {
    pub targets: Vec<TargetLog>,
    pub counters: SweepCounters,
}

impl SweepLog {
    /// The first reply to `id` read at or after `after_ns` from a MAC other
    /// than `not_from`.
    pub fn first_reply(
        &self,
        id: usize,
        after_ns: u64,
        not_from: Option<[u8; 6]>,
    ) -> Option<Reply> {
        self.targets
            .get(id)?
            .replies
            .iter()
            .copied()
            .find(|r| r.at_ns >= after_ns && Some(r.mac) != not_from)
    }

    /// The last reply to `id` from `mac` read before `before_ns`.
    pub fn last_reply_from(&self, id: usize, mac: [u8; 6], before_ns: u64) -> Option<Reply> {
        self.targets
            .get(id)?
            .replies
            .iter()
            .rev()
            .copied()
            .find(|r| r.mac == mac && r.at_ns < before_ns)
    }

    /// The last reply to `id`.
    pub fn last_reply(&self, id: usize) -> Option<Reply> {
        self.targets.get(id)?.replies.last().copied()
    }

    /// The distinct MACs that answered `id` between `from_ns` and `to_ns`.
    pub fn macs_between(&self, id: usize, from_ns: u64, to_ns: u64) -> Vec<[u8; 6]> {
        let mut macs: Vec<[u8; 6]> = Vec::new();
        if let Some(t) = self.targets.get(id) {
            for r in t
                .replies
                .iter()
                .filter(|r| r.at_ns >= from_ns && r.at_ns < to_ns)
            {
                if !macs.contains(&r.mac) {
                    macs.push(r.mac);
                }
            }
        }
        macs
    }
}

/// What a watched address waits for.
#[derive(Debug, Clone, Copy)]
struct Watch {
    after_ns: u64,
    not_from: Option<[u8; 6]>,
}

impl Watch {
    fn satisfied_by(&self, r: &Reply) -> bool {
        r.at_ns >= self.after_ns && Some(r.mac) != self.not_from
    }
}

#[derive(Debug, Default)]
struct SweepState {
    log: SweepLog,
    index: HashMap<Ipv6Addr, usize>,
    watches: Vec<Option<Watch>>,
    /// Ids in round-robin order; entries whose watch ended leave lazily.
    watch_queue: VecDeque<usize>,
    watching: usize,
    sweep_next: usize,
    rates: Option<SweepRates>,
}

impl SweepState {
    fn record(&mut self, at_ns: u64, adv: &Advertisement, own_mac: [u8; 6]) {
        let c = &mut self.log.counters;
        if !adv.solicited {
            c.unsolicited += 1;
            return;
        }
        if !adv.checksum_ok {
            c.bad_checksum += 1;
            return;
        }
        let Some(&id) = self
            .index
            .get(&adv.target)
            .filter(|_| adv.eth_dst == own_mac)
        else {
            c.foreign += 1;
            return;
        };
        c.recorded += 1;
        let reply = Reply {
            at_ns,
            mac: adv.eth_src,
        };
        self.log.targets[id].replies.push(reply);
        if self.watches[id].is_some_and(|w| w.satisfied_by(&reply)) {
            self.watches[id] = None;
            self.watching -= 1;
        }
    }

    /// The next `n` watched ids, round-robin (each at most once).
    fn next_watched(&mut self, n: usize, out: &mut Vec<usize>) {
        let mut looked = 0;
        let start = out.len();
        while out.len() - start < n && looked < self.watch_queue.len() {
            let Some(id) = self.watch_queue.pop_front() else {
                break;
            };
            if self.watches[id].is_none() {
                continue;
            }
            looked += 1;
            self.watch_queue.push_back(id);
            out.push(id);
        }
    }

    /// The next `n` ids of the sweep (skipping watched ones).
    fn next_swept(&mut self, n: usize, out: &mut Vec<usize>) {
        let len = self.log.targets.len();
        let mut looked = 0;
        let start = out.len();
        while out.len() - start < n && looked < len {
            let id = self.sweep_next % len;
            self.sweep_next = (id + 1) % len;
            looked += 1;
            if self.watches[id].is_none() {
                out.push(id);
            }
        }
    }
}

/// A running sweep (two threads: sender and receiver). Stops on drop.
pub struct NdpSweep {
    mac: [u8; 6],
    state: Arc<Mutex<SweepState>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), ProbeError>>>,
}

fn lock(state: &Mutex<SweepState>) -> MutexGuard<'_, SweepState> {
    // A panic in a sweep thread leaves only a log half-appended; keep going.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl NdpSweep {
    /// Starts soliciting from `sock` (opened in the client's namespace) as
    /// `src_ip`. No address yet: see [`Self::add`].
    pub fn start(sock: SweepSocket, src_ip: Ipv6Addr, rates: SweepRates) -> NdpSweep {
        let SweepSocket { socket, mac } = sock;
        let sock = Arc::new(socket);
        let state = Arc::new(Mutex::new(SweepState {
            rates: Some(rates),
            ..SweepState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let send_errors = Arc::new(AtomicU64::new(0));
        let sender = {
            let (sock, state, stop, errors) = (
                sock.clone(),
                state.clone(),
                stop.clone(),
                send_errors.clone(),
            );
            std::thread::spawn(move || send_loop(&sock, mac, src_ip, &state, &stop, &errors))
        };
        let receiver = {
            let (sock, state, stop) = (sock.clone(), state.clone(), stop.clone());
            std::thread::spawn(move || receive_loop(&sock, mac, &state, &stop, &send_errors))
        };
        NdpSweep {
            mac,
            state,
            stop,
            threads: vec![sender, receiver],
        }
    }

    /// The interface MAC solicitations come from (answers go to it).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Adds addresses to the sweep; their ids (an address added twice keeps
    /// its id).
    pub fn add(&self, ips: &[Ipv6Addr]) -> Vec<usize> {
        let mut s = lock(&self.state);
        ips.iter()
            .map(|ip| {
                if let Some(&id) = s.index.get(ip) {
                    return id;
                }
                let id = s.log.targets.len();
                s.log.targets.push(TargetLog {
                    ip: *ip,
                    replies: Vec::new(),
                    sent: 0,
                });
                s.watches.push(None);
                s.index.insert(*ip, id);
                id
            })
            .collect()
    }

    /// Watches `ids` until each gets a reply read at or after `after_ns`
    /// from a MAC other than `not_from` (one already recorded counts).
    pub fn watch(&self, ids: &[usize], after_ns: u64, not_from: Option<[u8; 6]>) {
        let mut s = lock(&self.state);
        let w = Watch { after_ns, not_from };
        for &id in ids {
            let Some(t) = s.log.targets.get(id) else {
                continue;
            };
            if t.replies.iter().any(|r| w.satisfied_by(r)) {
                continue;
            }
            if s.watches[id].replace(w).is_none() {
                s.watching += 1;
                s.watch_queue.push_back(id);
            }
        }
    }

    /// Ends every watch.
    pub fn unwatch_all(&self) {
        let mut s = lock(&self.state);
        s.watches.iter_mut().for_each(|w| *w = None);
        s.watch_queue.clear();
        s.watching = 0;
    }

    /// How many addresses are still watched.
    pub fn watching(&self) -> usize {
        lock(&self.state).watching
    }

    /// The rates in use.
    pub fn rates(&self) -> Option<SweepRates> {
        lock(&self.state).rates
    }

    /// Reads the log under the sweep's lock (keep `f` short: the sweep
    /// records nothing meanwhile).
    pub fn read<T>(&self, f: impl FnOnce(&SweepLog) -> T) -> T {
        f(&lock(&self.state).log)
    }

    /// An error when a sweep thread failed.
    pub fn check(&mut self) -> Result<(), ProbeError> {
        if self.threads.iter().any(|t| t.is_finished()) {
            return self.stop();
        }
        Ok(())
    }

    /// Stops both threads; the first error either met.
    pub fn stop(&mut self) -> Result<(), ProbeError> {
        self.stop.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        result
    }
}

impl Drop for NdpSweep {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Paces solicitations in 1 ms ticks; credit carried over at most 20 ms
/// (after a stall it does not burst to catch up).
fn send_loop(
    sock: &PacketSocket,
    mac: [u8; 6],
    src_ip: Ipv6Addr,
    state: &Mutex<SweepState>,
    stop: &AtomicBool,
    errors: &AtomicU64,
) -> Result<(), ProbeError> {
    let mut last = Instant::now();
    let (mut watch_credit, mut sweep_credit) = (0.0f64, 0.0f64);
    let mut batch: Vec<usize> = Vec::with_capacity(256);
    let mut frames: Vec<Ipv6Addr> = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        batch.clear();
        frames.clear();
        {
            let mut s = lock(state);
            let Some(rates) = s.rates else { continue };
            let watch_rate = if s.watching == 0 {
                0.0
            } else {
                s.watching as f64 / rates.watch_period(s.watching).as_secs_f64()
            };
            watch_credit = (watch_credit + watch_rate * dt).min(watch_rate * 0.02 + 1.0);
            sweep_credit = (sweep_credit + rates.sweep_pps * dt).min(rates.sweep_pps * 0.02 + 1.0);
            let n = watch_credit.floor() as usize;
            s.next_watched(n, &mut batch);
            watch_credit -= batch.len() as f64;
            if s.watching == 0 {
                watch_credit = 0.0;
            }
            let before = batch.len();
            s.next_swept(sweep_credit.floor() as usize, &mut batch);
            sweep_credit -= (batch.len() - before) as f64;
            for &id in &batch {
                let t = &mut s.log.targets[id];
                t.sent += 1;
                frames.push(t.ip);
            }
            s.log.counters.sent += batch.len() as u64;
        }
        for ip in &frames {
            let frame = NeighborSolicitation::multicast(mac, src_ip, *ip).to_bytes();
            if sock.send(&frame).is_err() {
                // ENOBUFS under load: counted, the sweep comes back to it.
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

fn receive_loop(
    sock: &PacketSocket,
    own_mac: [u8; 6],
    state: &Mutex<SweepState>,
    stop: &AtomicBool,
    send_errors: &AtomicU64,
) -> Result<(), ProbeError> {
    let mut buf = [0u8; 2048];
    let mut got: Vec<(u64, Advertisement)> = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) {
        let readable = sock
            .wait_readable(Duration::from_millis(50))
            .map_err(io_err("ppoll"))?;
        got.clear();
        if readable {
            while let Some(n) = sock.try_recv(&mut buf).map_err(io_err("recv(AF_PACKET)"))? {
                let at_ns = monotonic_ns();
                if let Some(adv) = Advertisement::parse(&buf[..n]) {
                    got.push((at_ns, adv));
                }
                if got.len() >= 1024 {
                    break;
                }
            }
        }
        let drops = sock
            .drops()
            .map_err(io_err("getsockopt(PACKET_STATISTICS)"))?;
        let mut s = lock(state);
        for (at_ns, adv) in &got {
            s.record(*at_ns, adv, own_mac);
        }
        s.log.counters.socket_drops += u64::from(drops);
        s.log.counters.send_errors = send_errors.load(Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
    const SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0x12, 0x3456);

    /// A solicited NA as the responder builds it, to the client.
    fn advertisement(from: [u8; 6], target: Ipv6Addr, solicited: bool) -> Vec<u8> {
        let mut na = NeighborAdvertisement::solicited(from, target, MAC, SRC);
        na.solicited = solicited;
        na.to_bytes()
    }

    #[test]
    fn parses_advertisements_and_checks_their_checksum() {
        let node = [0x02, 0x1b, 0, 0, 0, 1];
        let f = advertisement(node, VIP, true);
        let a = Advertisement::parse(&f).expect("an NA");
        assert_eq!(a.eth_src, node);
        assert_eq!(a.eth_dst, MAC);
        assert_eq!(a.target, VIP);
        assert!(a.solicited);
        assert!(a.checksum_ok);
        let mut bad = f.clone();
        bad[70] ^= 0xff;
        assert!(!Advertisement::parse(&bad).expect("an NA").checksum_ok);
        let unsolicited = advertisement(node, VIP, false);
        assert!(!Advertisement::parse(&unsolicited).expect("an NA").solicited);
        // A solicitation is not an advertisement; a truncated frame is nothing.
        let ns = NeighborSolicitation::multicast(MAC, SRC, VIP).to_bytes();
        assert_eq!(Advertisement::parse(&ns), None);
        assert_eq!(Advertisement::parse(&f[..60]), None);
    }

    fn state_with(n: usize) -> SweepState {
        let mut s = SweepState::default();
        for i in 0..n {
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i as u16 + 1);
            s.log.targets.push(TargetLog {
                ip,
                replies: Vec::new(),
                sent: 0,
            });
            s.index.insert(ip, i);
            s.watches.push(None);
        }
        s
    }

    fn adv(from: [u8; 6], target: Ipv6Addr) -> Advertisement {
        Advertisement {
            eth_dst: MAC,
            eth_src: from,
            target,
            solicited: true,
            checksum_ok: true,
        }
    }

    #[test]
    fn a_watch_ends_with_the_reply_it_waits_for_and_the_sweep_skips_watched() {
        let (a, b) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        let mut s = state_with(3);
        let ip1 = s.log.targets[1].ip;
        s.watches[1] = Some(Watch {
            after_ns: 100,
            not_from: Some(a),
        });
        s.watching = 1;
        s.watch_queue.push_back(1);

        let mut out = Vec::new();
        s.next_swept(5, &mut out);
        assert_eq!(out, vec![0, 2], "the watched id is not swept");
        out.clear();
        s.next_watched(5, &mut out);
        assert_eq!(out, vec![1], "each watched id once per call");

        s.record(150, &adv(a, ip1), MAC);
        assert_eq!(
            s.watching, 1,
            "a reply from the excluded MAC does not end it"
        );
        s.record(90, &adv(b, ip1), MAC);
        assert_eq!(s.watching, 1, "a reply before after_ns does not end it");
        s.record(200, &adv(b, ip1), MAC);
        assert_eq!(s.watching, 0);
        out.clear();
        s.next_watched(5, &mut out);
        assert!(out.is_empty());
        assert_eq!(s.watch_queue.len(), 0, "ended watches leave the queue");

        // Not recorded: unsolicited, to someone else, unknown target.
        s.record(
            300,
            &Advertisement {
                solicited: false,
                ..adv(a, ip1)
            },
            MAC,
        );
        s.record(300, &adv(a, ip1), [2, 2, 2, 2, 2, 2]);
        s.record(300, &adv(a, "2001:db8:ffff::1".parse().expect("ip")), MAC);
        assert_eq!(s.log.counters.unsolicited, 1);
        assert_eq!(s.log.counters.foreign, 2);
        assert_eq!(s.log.counters.recorded, 3);

        let log = &s.log;
        assert_eq!(log.first_reply(1, 0, Some(a)).map(|r| r.at_ns), Some(90));
        assert_eq!(log.first_reply(1, 100, Some(a)).map(|r| r.at_ns), Some(200));
        assert_eq!(log.last_reply_from(1, a, 200).map(|r| r.at_ns), Some(150));
        assert_eq!(log.last_reply(1).map(|r| r.mac), Some(b));
        assert_eq!(log.macs_between(1, 100, 250), vec![a, b]);
        assert_eq!(log.macs_between(0, 0, u64::MAX), Vec::<[u8; 6]>::new());
    }

    #[test]
    fn watch_period_is_bounded_by_rate_and_minimum() {
        let r = SweepRates {
            sweep_pps: 1000.0,
            watch_pps: 4000.0,
            watch_min_period: Duration::from_millis(5),
        };
        assert_eq!(r.watch_period(1), Duration::from_millis(5));
        assert_eq!(r.watch_period(4000), Duration::from_secs(1));
        assert_eq!(r.sweep_period(5000), Duration::from_secs(5));
    }
}
