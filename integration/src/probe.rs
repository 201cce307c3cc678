//! An ARP prober on an AF_PACKET socket: sends ARP requests with exact
//! timing and timestamps the replies with `CLOCK_MONOTONIC` (the clock of
//! `bpf_ktime_get_ns`, so times compare directly with liveness stamps and
//! fence deadlines in the datapath maps). Used by the end-to-end tests
//! (how close to a deadline the answers stop) and the datapath benchmark
//! (round-trip latency, reply rate under a flood).
//!
//! A request can carry a tag: its sender hardware address becomes
//! `02:7a:<tag, 4 bytes>` while the Ethernet source stays the interface MAC.
//! A responder that follows RFC 826 sends its reply to that address and
//! copies it into the reply's target hardware address, so each reply names
//! the request it answers; the prober's socket sees frames to any address
//! arriving on its interface. The Linux kernel's ARP also answers to that
//! hardware address.
//!
//! The frames are [`bpf::frame::ArpPacket`]s and the socket is
//! [`bpf::PacketSocket`]: this module adds timing, tags and statistics. It
//! is ARP over Ethernet only; its receive loop ([`recv_stamped`]) serves
//! integration::ns_probe's NDP prober too.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bpf::PacketSocket;
use bpf::frame::{ARP_REPLY, ETH_MIN_FRAME, ETHERTYPE_ARP};

pub use bpf::frame::ArpPacket;

/// Room for the replies of a flood.
const RECEIVE_BUFFER: usize = 16 << 20;

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

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io { op, source }
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    bpf::monotonic_now_ns()
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
    socket: PacketSocket,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

impl ArpProber {
    /// Opens a prober on `ifname` of the calling thread's network namespace
    /// (the socket stays in that namespace whatever thread uses it later),
    /// sending as `ip` from the interface's MAC. It receives ARP frames
    /// arriving on the interface, not its own.
    pub fn open(ifname: &str, ip: Ipv4Addr) -> Result<ArpProber, ProbeError> {
        let (socket, mac) = bind_interface(ifname, ETHERTYPE_ARP)?;
        socket
            .set_receive_buffer(RECEIVE_BUFFER)
            .map_err(io_err("setsockopt(SO_RCVBUFFORCE)"))?;
        Ok(ArpProber { socket, mac, ip })
    }

    /// The interface MAC requests are sent from.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// An ARP request for `target` (broadcast), tagged or not.
    pub fn request_frame(&self, target: Ipv4Addr, tag: Option<u32>) -> [u8; ETH_MIN_FRAME] {
        match tag {
            Some(t) => ArpPacket::tagged_request(self.mac, self.ip, target, t),
            None => ArpPacket::request(self.mac, self.ip, target),
        }
        .to_bytes()
    }

    /// Sends one frame out of the interface.
    pub fn send_frame(&self, frame: &[u8]) -> Result<(), ProbeError> {
        self.socket.send(frame).map_err(io_err("sendto(AF_PACKET)"))
    }

    /// Sends an ARP request; returns the monotonic time just before sending.
    pub fn send_request(&self, target: Ipv4Addr, tag: Option<u32>) -> Result<u64, ProbeError> {
        let frame = self.request_frame(target, tag);
        let at = monotonic_ns();
        self.send_frame(&frame)?;
        Ok(at)
    }

    /// Reads one queued ARP reply without waiting (other frames are
    /// skipped).
    fn try_recv(&self) -> Result<Option<ArpReply>, ProbeError> {
        try_recv_stamped(&self.socket, arp_reply)
    }

    /// The next ARP reply, sleeping in ppoll(2) up to `timeout`.
    pub fn recv_reply(&self, timeout: Duration) -> Result<Option<ArpReply>, ProbeError> {
        recv_stamped(&self.socket, timeout, arp_reply)
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
        self.socket
            .drops()
            .map_err(io_err("getsockopt(PACKET_STATISTICS)"))
    }
}

/// A socket bound to `ifname` of the calling thread's network namespace
/// for `ethertype` frames arriving there, and the interface's MAC.
pub(crate) fn bind_interface(
    ifname: &str,
    ethertype: u16,
) -> Result<(PacketSocket, [u8; 6]), ProbeError> {
    let ifindex = bpf::if_nametoindex(ifname)
        .ok_or_else(|| ProbeError::UnknownInterface(ifname.to_string()))?;
    let socket = PacketSocket::bind(ifindex, ethertype).map_err(io_err("bind(AF_PACKET)"))?;
    let mac = socket
        .interface_mac()
        .map_err(io_err("ioctl(SIOCGIFHWADDR)"))?;
    Ok((socket, mac))
}

fn arp_reply(frame: &[u8], at_ns: u64) -> Option<ArpReply> {
    ArpPacket::parse(frame)
        .filter(|p| p.op == ARP_REPLY)
        .map(|packet| ArpReply { at_ns, packet })
}

/// Reads the frames queued on `socket` without waiting until `parse`
/// accepts one, given the frame and the monotonic time it was read;
/// `None` once nothing is queued.
fn try_recv_stamped<T>(
    socket: &PacketSocket,
    parse: impl Fn(&[u8], u64) -> Option<T>,
) -> Result<Option<T>, ProbeError> {
    let mut buf = [0u8; 512];
    loop {
        let Some(n) = socket
            .try_recv(&mut buf)
            .map_err(io_err("recv(AF_PACKET)"))?
        else {
            return Ok(None);
        };
        let at_ns = monotonic_ns();
        if let Some(r) = parse(&buf[..n], at_ns) {
            return Ok(Some(r));
        }
    }
}

/// The next frame on `socket` that `parse` accepts (see
/// [`try_recv_stamped`]), sleeping in ppoll(2) up to `timeout`.
pub fn recv_stamped<T>(
    socket: &PacketSocket,
    timeout: Duration,
    parse: impl Fn(&[u8], u64) -> Option<T>,
) -> Result<Option<T>, ProbeError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = try_recv_stamped(socket, &parse)? {
            return Ok(Some(r));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !socket.wait_readable(left).map_err(io_err("ppoll"))? {
            return try_recv_stamped(socket, &parse);
        }
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
