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
//! Solicitations go to the target's solicited-node group (RFC 4861 §7.2.2)
//! from a fixed source address and the interface's MAC, with a source
//! link-layer address option. Only solicited advertisements unicast to the
//! interface with a valid ICMPv6 checksum are recorded; the others are
//! counted. It is not an NDP implementation (no neighbor cache, no DAD) and
//! not the ARP prober (`crate::probe`).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::probe::{PacketSocket, ProbeError};

/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_HLEN: usize = 14;
const IP6_HLEN: usize = 40;
const ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const NA_FLAG_SOLICITED: u8 = 0x40;
/// NS: type, code, checksum, reserved (8) + target (16) + source
/// link-layer address option (8).
const NS_LEN: usize = 32;
/// Length of the frames [`solicitation_frame`] builds.
pub const NS_FRAME_LEN: usize = ETH_HLEN + IP6_HLEN + NS_LEN;

/// The solicited-node multicast address of `target` (ff02::1:ffXX:XXXX).
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    )
}

/// The ICMPv6 checksum of `msg` (its checksum field zero, or the checksum
/// it carries: then a valid message sums to 0) between `src` and `dst`.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A Neighbor Solicitation for `target` from `src_ip` / `src_mac` to the
/// target's solicited-node group.
pub fn solicitation_frame(
    src_mac: [u8; 6],
    src_ip: Ipv6Addr,
    target: Ipv6Addr,
) -> [u8; NS_FRAME_LEN] {
    let group = solicited_node(target);
    let g = group.octets();
    let mut f = [0u8; NS_FRAME_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, g[12], g[13], g[14], g[15]]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[ETH_HLEN..ETH_HLEN + IP6_HLEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(NS_LEN as u16).to_be_bytes());
    ip[6] = ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&src_ip.octets());
    ip[24..40].copy_from_slice(&g);
    let ns = &mut f[ETH_HLEN + IP6_HLEN..];
    ns[0] = NEIGHBOR_SOLICITATION;
    ns[8..24].copy_from_slice(&target.octets());
    ns[24] = 1; // source link-layer address
    ns[25] = 1; // length in units of 8 bytes
    ns[26..32].copy_from_slice(&src_mac);
    let sum = icmpv6_checksum(src_ip, group, ns);
    ns[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A Neighbor Advertisement as read off the wire.
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
    /// (no extension headers, as NDP sends them).
    pub fn parse(frame: &[u8]) -> Option<Advertisement> {
        let icmp_at = ETH_HLEN + IP6_HLEN;
        if frame.len() < icmp_at + 24 || frame[12..14] != ETH_P_IPV6.to_be_bytes() {
            return None;
        }
        let ip = &frame[ETH_HLEN..icmp_at];
        if ip[0] >> 4 != 6 || ip[6] != ICMPV6 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let msg = frame.get(icmp_at..icmp_at + len)?;
        if len < 24 || msg[0] != NEIGHBOR_ADVERTISEMENT || msg[1] != 0 {
            return None;
        }
        let addr = |b: &[u8]| -> Ipv6Addr {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Ipv6Addr::from(o)
        };
        let mac = |b: &[u8]| -> [u8; 6] {
            let mut m = [0u8; 6];
            m.copy_from_slice(b);
            m
        };
        Some(Advertisement {
            eth_dst: mac(&frame[0..6]),
            eth_src: mac(&frame[6..12]),
            target: addr(&msg[8..24]),
            solicited: msg[4] & NA_FLAG_SOLICITED != 0,
            checksum_ok: icmpv6_checksum(addr(&ip[8..24]), addr(&ip[24..40]), msg) == 0,
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
    sock: Arc<PacketSocket>,
    state: Arc<Mutex<SweepState>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), ProbeError>>>,
}

fn lock(state: &Mutex<SweepState>) -> MutexGuard<'_, SweepState> {
    // A panic in a sweep thread leaves only a log half-appended; keep going.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl NdpSweep {
    /// Starts soliciting from `sock` (an [`ETH_P_IPV6`] socket opened in
    /// the client's namespace) as `src_ip`. No address yet: see [`Self::add`].
    pub fn start(sock: PacketSocket, src_ip: Ipv6Addr, rates: SweepRates) -> NdpSweep {
        let sock = Arc::new(sock);
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
            std::thread::spawn(move || send_loop(&sock, src_ip, &state, &stop, &errors))
        };
        let receiver = {
            let (sock, state, stop) = (sock.clone(), state.clone(), stop.clone());
            std::thread::spawn(move || receive_loop(&sock, &state, &stop, &send_errors))
        };
        NdpSweep {
            sock,
            state,
            stop,
            threads: vec![sender, receiver],
        }
    }

    /// The interface MAC solicitations come from (answers go to it).
    pub fn mac(&self) -> [u8; 6] {
        self.sock.mac()
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
    src_ip: Ipv6Addr,
    state: &Mutex<SweepState>,
    stop: &AtomicBool,
    errors: &AtomicU64,
) -> Result<(), ProbeError> {
    let mac = sock.mac();
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
            if sock
                .send_frame(&solicitation_frame(mac, src_ip, *ip))
                .is_err()
            {
                // ENOBUFS under load: counted, the sweep comes back to it.
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

fn receive_loop(
    sock: &PacketSocket,
    state: &Mutex<SweepState>,
    stop: &AtomicBool,
    send_errors: &AtomicU64,
) -> Result<(), ProbeError> {
    let own_mac = sock.mac();
    let mut buf = [0u8; 2048];
    let mut got: Vec<(u64, Advertisement)> = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) {
        let readable = sock.wait_readable(Duration::from_millis(50))?;
        got.clear();
        if readable {
            while let Some((n, at_ns)) = sock.try_recv(&mut buf)? {
                if let Some(adv) = Advertisement::parse(&buf[..n]) {
                    got.push((at_ns, adv));
                }
                if got.len() >= 1024 {
                    break;
                }
            }
        }
        let drops = sock.socket_drops()?;
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

    #[test]
    fn solicitation_goes_to_the_solicited_node_group_with_a_valid_checksum() {
        let f = solicitation_frame(MAC, SRC, VIP);
        assert_eq!(f[0..6], [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
        assert_eq!(f[6..12], MAC);
        assert_eq!(f[12..14], [0x86, 0xdd]);
        let group: Ipv6Addr = "ff02::1:ff12:3456".parse().expect("address");
        assert_eq!(solicited_node(VIP), group);
        assert_eq!(f[14 + 24..14 + 40], group.octets());
        assert_eq!(f[14 + 7], 255, "hop limit");
        let msg = &f[54..];
        assert_eq!(msg[0], 135);
        assert_eq!(msg[8..24], VIP.octets());
        assert_eq!(msg[24..32], [1, 1, 0x02, 0xc1, 0, 0, 0, 0x02]);
        assert_eq!(icmpv6_checksum(SRC, group, msg), 0, "checksum verifies");
        let mut broken = msg.to_vec();
        broken[10] ^= 1;
        assert_ne!(icmpv6_checksum(SRC, group, &broken), 0);
    }

    /// A solicited NA as a responder would build it.
    fn advertisement(from: [u8; 6], target: Ipv6Addr, flags: u8) -> Vec<u8> {
        let mut msg = vec![0u8; 32];
        msg[0] = 136;
        msg[4] = flags;
        msg[8..24].copy_from_slice(&target.octets());
        msg[24] = 2;
        msg[25] = 1;
        msg[26..32].copy_from_slice(&from);
        let sum = icmpv6_checksum(target, SRC, &msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&from);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, 58, 255]);
        f.extend_from_slice(&target.octets());
        f.extend_from_slice(&SRC.octets());
        f.extend_from_slice(&msg);
        f
    }

    #[test]
    fn parses_advertisements_and_checks_their_checksum() {
        let node = [0x02, 0x1b, 0, 0, 0, 1];
        let f = advertisement(node, VIP, 0x60);
        let a = Advertisement::parse(&f).expect("an NA");
        assert_eq!(a.eth_src, node);
        assert_eq!(a.eth_dst, MAC);
        assert_eq!(a.target, VIP);
        assert!(a.solicited);
        assert!(a.checksum_ok);
        let mut bad = f.clone();
        bad[70] ^= 0xff;
        assert!(!Advertisement::parse(&bad).expect("an NA").checksum_ok);
        let unsolicited = advertisement(node, VIP, 0x20);
        assert!(!Advertisement::parse(&unsolicited).expect("an NA").solicited);
        // A solicitation is not an advertisement; a truncated frame is nothing.
        assert_eq!(
            Advertisement::parse(&solicitation_frame(MAC, SRC, VIP)),
            None
        );
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
