//! An ARP prober on an AF_PACKET socket: sends ARP requests with exact
//! timing and timestamps the replies with `CLOCK_MONOTONIC` (the clock of
//! `bpf_ktime_get_ns`, so times compare directly with liveness stamps and
//! fence deadlines in the datapath maps). Used by the end-to-end tests
//! (how close to a deadline the answers stop) and the datapath benchmark
//! (round-trip latency, reply rate under a flood).
//!
//! A request can carry a tag: its sender hardware address becomes
//! `02:7a:<tag, 4 bytes>` while the Ethernet source stays the interface MAC.
//! A responder that follows RFC 826 copies it into the reply's target
//! hardware address, so each reply names the request it answers. The Linux
//! kernel's ARP also sends its reply to that hardware address, so use
//! untagged requests for the kernel.
//!
//! It is not a general packet library: ARP over Ethernet only.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ETH_HLEN: usize = 14;
/// Shortest Ethernet frame without FCS; ARP requests are padded to it.
const ETH_MIN_FRAME: usize = 60;
const TAG_PREFIX: [u8; 2] = [0x02, 0x7a];
/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, kernel 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Why probing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no interface named {0:?} in this network namespace")]
    UnknownInterface(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn last_err(op: &'static str) -> ProbeError {
    ProbeError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    bpf::monotonic_now_ns()
}

/// An ARP packet (Ethernet, IPv4) as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// 1 request, 2 reply.
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// Parses an Ethernet frame holding an Ethernet/IPv4 ARP packet.
    pub fn parse(frame: &[u8]) -> Option<ArpPacket> {
        if frame.len() < ETH_HLEN + 28 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
            return None;
        }
        let a = &frame[ETH_HLEN..];
        // htype 1, ptype IPv4, hlen 6, plen 4.
        if a[0..6] != [0, 1, 0x08, 0, 6, 4] {
            return None;
        }
        let mac = |at: usize| -> [u8; 6] {
            let mut m = [0u8; 6];
            m.copy_from_slice(&a[at..at + 6]);
            m
        };
        let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
        Some(ArpPacket {
            eth_dst: {
                let mut m = [0u8; 6];
                m.copy_from_slice(&frame[0..6]);
                m
            },
            eth_src: {
                let mut m = [0u8; 6];
                m.copy_from_slice(&frame[6..12]);
                m
            },
            op: u16::from_be_bytes([a[6], a[7]]),
            sender_mac: mac(8),
            sender_ip: ip(14),
            target_mac: mac(18),
            target_ip: ip(24),
        })
    }

    /// The tag of the request this reply answers (see the module docs).
    pub fn tag(&self) -> Option<u32> {
        (self.target_mac[..2] == TAG_PREFIX).then(|| {
            u32::from_be_bytes([
                self.target_mac[2],
                self.target_mac[3],
                self.target_mac[4],
                self.target_mac[5],
            ])
        })
    }
}

/// An ARP reply and when the prober read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpReply {
    /// `CLOCK_MONOTONIC` ns when it was read.
    pub at_ns: u64,
    pub packet: ArpPacket,
}

/// An AF_PACKET socket bound to one interface for ARP.
#[derive(Debug)]
pub struct ArpProber {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

impl ArpProber {
    /// Opens a prober on `ifname` of the calling thread's network namespace
    /// (the socket stays in that namespace whatever thread uses it later),
    /// sending as `ip` from the interface's MAC. It receives ARP frames
    /// arriving on the interface, not its own.
    pub fn open(ifname: &str, ip: Ipv4Addr) -> Result<ArpProber, ProbeError> {
        let ifindex = bpf::if_nametoindex(ifname)
            .ok_or_else(|| ProbeError::UnknownInterface(ifname.to_string()))?;
        let proto = ETH_P_ARP.to_be();
        // SAFETY: plain socket(2); the descriptor is checked and owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(last_err("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut prober = ArpProber {
            fd,
            ifindex,
            mac: [0; 6],
            ip,
        };
        prober.setsockopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        // Room for the replies of a flood; FORCE works for root beyond rmem_max.
        prober.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll for the length given.
        let rc = unsafe {
            libc::bind(
                prober.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_err("bind(AF_PACKET)"));
        }
        prober.mac = prober.read_mac(ifname)?;
        // Frames from other interfaces may have queued before bind().
        prober.drain();
        Ok(prober)
    }

    /// The interface MAC requests are sent from.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> Result<(), ProbeError> {
        // SAFETY: `value` is a valid c_int for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_err("setsockopt"));
        }
        Ok(())
    }

    fn read_mac(&self, ifname: &str) -> Result<[u8; 6], ProbeError> {
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills `req.ifr_ifru.ifru_hwaddr`; `req` is
        // valid and writable.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
        if rc != 0 {
            return Err(last_err("ioctl(SIOCGIFHWADDR)"));
        }
        // SAFETY: the ioctl succeeded, so the hwaddr member is the one set.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok(mac)
    }

    /// An ARP request for `target` (broadcast), tagged or not.
    pub fn request_frame(&self, target: Ipv4Addr, tag: Option<u32>) -> [u8; ETH_MIN_FRAME] {
        let mut f = [0u8; ETH_MIN_FRAME];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&self.mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        let a = &mut f[ETH_HLEN..];
        a[0..8].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        match tag {
            Some(t) => {
                a[8..10].copy_from_slice(&TAG_PREFIX);
                a[10..14].copy_from_slice(&t.to_be_bytes());
            }
            None => a[8..14].copy_from_slice(&self.mac),
        }
        a[14..18].copy_from_slice(&self.ip.octets());
        // Target hardware address stays zero.
        a[24..28].copy_from_slice(&target.octets());
        f
    }

    /// Sends one frame out of the interface.
    pub fn send_frame(&self, frame: &[u8]) -> Result<(), ProbeError> {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(last_err("sendto(AF_PACKET)"));
        }
        Ok(())
    }

    /// Sends an ARP request; returns the monotonic time just before sending.
    pub fn send_request(&self, target: Ipv4Addr, tag: Option<u32>) -> Result<u64, ProbeError> {
        let frame = self.request_frame(target, tag);
        let at = monotonic_ns();
        self.send_frame(&frame)?;
        Ok(at)
    }

    /// Reads one queued ARP frame without waiting.
    fn try_recv(&self) -> Result<Option<ArpReply>, ProbeError> {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: `buf` is valid and writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let at_ns = monotonic_ns();
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(ProbeError::Io {
                        op: "recv(AF_PACKET)",
                        source: e,
                    }),
                };
            }
            let Some(packet) = ArpPacket::parse(&buf[..n as usize]) else {
                continue;
            };
            if packet.op != 2 {
                continue;
            }
            return Ok(Some(ArpReply { at_ns, packet }));
        }
    }

    /// Waits up to `timeout` for the socket to become readable.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, ProbeError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd and a valid timespec; no signal mask.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(ProbeError::Io {
                op: "ppoll",
                source: e,
            });
        }
        Ok(rc > 0)
    }

    /// The next ARP reply, sleeping in ppoll(2) up to `timeout`.
    pub fn recv_reply(&self, timeout: Duration) -> Result<Option<ArpReply>, ProbeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv()? {
                return Ok(Some(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(left)? {
                return self.try_recv();
            }
        }
    }

    /// The next ARP reply, spinning on a non-blocking read up to `timeout`
    /// (no wake-up latency in the timestamp; burns a core while waiting).
    pub fn recv_reply_spin(&self, timeout: Duration) -> Result<Option<ArpReply>, ProbeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv()? {
                return Ok(Some(r));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::hint::spin_loop();
        }
    }

    /// Throws away every queued frame.
    pub fn drain(&self) {
        while let Ok(Some(_)) = self.try_recv() {}
    }

    /// Frames the kernel dropped because the receive queue was full, since
    /// the previous call (`PACKET_STATISTICS`).
    pub fn socket_drops(&self) -> Result<u32, ProbeError> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are valid and writable.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(last_err("getsockopt(PACKET_STATISTICS)"));
        }
        Ok(stats.tp_drops)
    }
}

/// One request of a [`paced`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacedRequest {
    /// Monotonic ns just before it was sent; its tag is its index.
    pub sent_ns: u64,
    /// When its reply arrived, and the MAC that answered.
    pub reply: Option<(u64, [u8; 6])>,
}

/// Sends a tagged request for `target` every `period` until the monotonic
/// clock passes `until_ns`, then listens `grace` longer for late replies.
/// Each reply is matched to its request by tag; untagged replies (the
/// kernel's) are ignored.
pub fn paced(
    prober: &ArpProber,
    target: Ipv4Addr,
    period: Duration,
    until_ns: u64,
    grace: Duration,
) -> Result<Vec<PacedRequest>, ProbeError> {
    let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
    let grace_ns = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
    let mut requests: Vec<PacedRequest> = Vec::new();
    prober.drain();
    let mut next_send = monotonic_ns();
    let end = until_ns.saturating_add(grace_ns);
    loop {
        let now = monotonic_ns();
        if now >= end {
            break;
        }
        if now >= next_send && now < until_ns {
            let tag = u32::try_from(requests.len()).unwrap_or(u32::MAX);
            let sent_ns = prober.send_request(target, Some(tag))?;
            requests.push(PacedRequest {
                sent_ns,
                reply: None,
            });
            next_send += period_ns;
            // After a stall, send at once but do not burst to catch up.
            if next_send < sent_ns {
                next_send = sent_ns + period_ns;
            }
        }
        let wake = if monotonic_ns() < until_ns {
            next_send.min(end)
        } else {
            end
        };
        let wait = Duration::from_nanos(wake.saturating_sub(monotonic_ns()));
        if let Some(reply) = prober.recv_reply(wait)? {
            if reply.packet.sender_ip != target {
                continue;
            }
            if let Some(req) = reply
                .packet
                .tag()
                .and_then(|t| requests.get_mut(t as usize))
                && req.reply.is_none()
            {
                req.reply = Some((reply.at_ns, reply.packet.sender_mac));
            }
        }
    }
    Ok(requests)
}

/// Round-trip times of one target in an [`interleaved_rtt`] run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RttSamples {
    pub target: Ipv4Addr,
    /// Nanoseconds from just before sending to reading the reply.
    pub rtt_ns: Vec<u64>,
    /// Requests without a reply within the timeout.
    pub lost: usize,
    /// The MACs that answered.
    pub macs: Vec<[u8; 6]>,
}

/// Measures ARP round trips to several targets in the same run: `rounds`
/// rounds, each sending one untagged request to every target in turn (the
/// order reversed every other round), one request outstanding at a time,
/// replies read by spinning.
pub fn interleaved_rtt(
    prober: &ArpProber,
    targets: &[Ipv4Addr],
    rounds: usize,
    timeout: Duration,
) -> Result<Vec<RttSamples>, ProbeError> {
    let mut out: Vec<RttSamples> = targets
        .iter()
        .map(|t| RttSamples {
            target: *t,
            rtt_ns: Vec::with_capacity(rounds),
            lost: 0,
            macs: Vec::new(),
        })
        .collect();
    let mut order: Vec<usize> = (0..targets.len()).collect();
    for _ in 0..rounds {
        for &i in &order {
            let target = targets[i];
            prober.drain();
            let sent = prober.send_request(target, None)?;
            let deadline = Instant::now() + timeout;
            let mut got = None;
            while got.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                match prober.recv_reply_spin(left)? {
                    Some(r) if r.packet.sender_ip == target => got = Some(r),
                    Some(_) => {}
                    None => break,
                }
            }
            let s = &mut out[i];
            match got {
                Some(r) => {
                    s.rtt_ns.push(r.at_ns.saturating_sub(sent));
                    if !s.macs.contains(&r.packet.sender_mac) {
                        s.macs.push(r.packet.sender_mac);
                    }
                }
                None => s.lost += 1,
            }
        }
        order.reverse();
    }
    Ok(out)
}

/// What a [`flood`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodResult {
    pub target: Ipv4Addr,
    pub elapsed: Duration,
    /// Requests the socket accepted.
    pub sent: u64,
    /// Requests the kernel refused (`ENOBUFS`: queues full).
    pub send_errors: u64,
    /// Replies from the target read by the receiver.
    pub replies: u64,
    /// Frames the receiving socket's queue dropped.
    pub receive_drops: u32,
}

/// Sends untagged requests for `target` from every prober in `senders`
/// (one thread each) as fast as the sockets take them for `duration`,
/// while another thread counts the replies on `receiver` (a separate
/// prober on the same interface).
pub fn flood(
    senders: &[ArpProber],
    receiver: Arc<ArpProber>,
    target: Ipv4Addr,
    duration: Duration,
) -> Result<FloodResult, ProbeError> {
    receiver.drain();
    receiver.socket_drops()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let stop = stop.clone();
        let receiver = receiver.clone();
        std::thread::spawn(move || -> Result<u64, ProbeError> {
            let mut replies = 0u64;
            loop {
                match receiver.recv_reply(Duration::from_millis(50))? {
                    Some(r) if r.packet.sender_ip == target => replies += 1,
                    Some(_) => {}
                    // Quiet after the sender stopped: everything is in.
                    None if stop.load(Ordering::Acquire) => return Ok(replies),
                    None => {}
                }
            }
        })
    };
    let start = Instant::now();
    let (sent, send_errors) = std::thread::scope(|scope| {
        let threads: Vec<_> = senders
            .iter()
            .map(|sender| {
                scope.spawn(move || {
                    let frame = sender.request_frame(target, None);
                    let (mut sent, mut errors) = (0u64, 0u64);
                    while start.elapsed() < duration {
                        for _ in 0..64 {
                            match sender.send_frame(&frame) {
                                Ok(()) => sent += 1,
                                Err(_) => errors += 1,
                            }
                        }
                    }
                    (sent, errors)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .fold((0, 0), |(s, e), (s1, e1)| (s + s1, e + e1))
    });
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Release);
    let replies = match counter.join() {
        Ok(r) => r?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    Ok(FloodResult {
        target,
        elapsed,
        sent,
        send_errors,
        replies,
        receive_drops: receiver.socket_drops()?,
    })
}
