//! A Neighbor Solicitation prober on an AF_PACKET socket, the IPv6 twin of
//! integration::probe's ARP prober: it sends NS for a target with exact
//! timing and timestamps the Neighbor Advertisements with
//! `CLOCK_MONOTONIC` (the datapath's clock).
//!
//! A solicitation can carry a tag: its IPv6 source becomes
//! `2001:db8:7a::<tag>` (the Ethernet source and the source link-layer
//! option stay the interface's). A responder that follows RFC 4861 sends
//! its solicited advertisement to that source, so each answer names the
//! solicitation it answers. The kernel of the probing namespace drops those
//! answers (the address is not its own); this socket still reads them.
//!
//! It is not a general packet library: NS out, NA in, over Ethernet.
//! (It keeps its own socket code while integration::probe is being
//! rewritten around one shared AF_PACKET socket type; it belongs there.)

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::probe::{ProbeError, monotonic_ns};

const ETH_P_IPV6: u16 = 0x86dd;
const ETH_HLEN: usize = 14;
const IPV6_HLEN: usize = 40;
/// NS: type, code, checksum, reserved, target (24) + source link-layer
/// address option (8).
const NS_LEN: usize = 32;
/// The tag prefix of a tagged solicitation's source: 2001:db8:7a::/96.
const TAG_PREFIX: [u8; 12] = [0x20, 0x01, 0x0d, 0xb8, 0x00, 0x7a, 0, 0, 0, 0, 0, 0];
/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, kernel 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

fn last_err(op: &'static str) -> ProbeError {
    ProbeError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// A Neighbor Advertisement and when the prober read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NaReply {
    /// `CLOCK_MONOTONIC` ns when it was read.
    pub at_ns: u64,
    /// The advertised target.
    pub target: Ipv6Addr,
    /// The target link-layer address option (the Ethernet source when the
    /// advertisement has none).
    pub mac: [u8; 6],
    /// The tag of the solicitation it answers, when it was tagged.
    pub tag: Option<u32>,
    /// Solicited flag.
    pub solicited: bool,
}

/// Parses an Ethernet frame holding an ICMPv6 Neighbor Advertisement
/// (no extension headers).
pub fn parse_na(frame: &[u8], at_ns: u64) -> Option<NaReply> {
    let icmp = ETH_HLEN + IPV6_HLEN;
    if frame.len() < icmp + 24
        || frame[12..14] != ETH_P_IPV6.to_be_bytes()
        || frame[ETH_HLEN] >> 4 != 6
        || frame[ETH_HLEN + 6] != 58
        || frame[icmp] != 136
    {
        return None;
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&frame[icmp + 8..icmp + 24]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[6..12]);
    let mut opt = icmp + 24;
    while opt + 8 <= frame.len() {
        let len = usize::from(frame[opt + 1]) * 8;
        if len == 0 {
            break;
        }
        if frame[opt] == 2 && len == 8 {
            mac.copy_from_slice(&frame[opt + 2..opt + 8]);
        }
        opt += len;
    }
    let dst = &frame[ETH_HLEN + 24..ETH_HLEN + 40];
    let tag =
        (dst[..12] == TAG_PREFIX).then(|| u32::from_be_bytes([dst[12], dst[13], dst[14], dst[15]]));
    Some(NaReply {
        at_ns,
        target: Ipv6Addr::from(target),
        mac,
        tag,
        solicited: frame[icmp + 4] & 0x40 != 0,
    })
}

/// The solicited-node multicast address of `target` (ff02::1:ffXX:XXXX).
fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    let mut a = [0u8; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[11] = 0x01;
    a[12] = 0xff;
    a[13..16].copy_from_slice(&t[13..16]);
    Ipv6Addr::from(a)
}

/// A multicast NS for `target` from `mac`, with source `source` and the
/// source link-layer address option.
pub fn solicitation_frame(
    mac: [u8; 6],
    source: Ipv6Addr,
    target: Ipv6Addr,
) -> [u8; ETH_HLEN + IPV6_HLEN + NS_LEN] {
    let dst = solicited_node(target);
    let d = dst.octets();
    let mut f = [0u8; ETH_HLEN + IPV6_HLEN + NS_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, d[12], d[13], d[14], d[15]]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(NS_LEN as u16).to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&source.octets());
    ip[24..40].copy_from_slice(&d);
    let ns = &mut f[ETH_HLEN + IPV6_HLEN..];
    ns[0] = 135;
    ns[8..24].copy_from_slice(&target.octets());
    ns[24] = 1; // source link-layer address
    ns[25] = 1;
    ns[26..32].copy_from_slice(&mac);
    let csum = bpf::frame::icmpv6_checksum(&source, &dst, ns);
    ns[2..4].copy_from_slice(&csum.to_be_bytes());
    f
}

/// The source address of a solicitation tagged `tag`.
pub fn tagged_source(tag: u32) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[..12].copy_from_slice(&TAG_PREFIX);
    a[12..].copy_from_slice(&tag.to_be_bytes());
    Ipv6Addr::from(a)
}

/// An AF_PACKET socket bound to one interface for IPv6 frames.
#[derive(Debug)]
pub struct NsProber {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    source: Ipv6Addr,
}

impl NsProber {
    /// Opens a prober on `ifname` of the calling thread's network namespace,
    /// soliciting as `source` (untagged) from the interface's MAC `mac`.
    pub fn open(ifname: &str, mac: [u8; 6], source: Ipv6Addr) -> Result<NsProber, ProbeError> {
        let ifindex = bpf::if_nametoindex(ifname)
            .ok_or_else(|| ProbeError::UnknownInterface(ifname.to_string()))?;
        let proto = ETH_P_IPV6.to_be();
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
        let prober = NsProber {
            fd,
            ifindex,
            mac,
            source,
        };
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid c_int for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                prober.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_err("setsockopt(PACKET_IGNORE_OUTGOING)"));
        }
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
        while let Ok(Some(_)) = prober.try_recv() {}
        Ok(prober)
    }

    /// Sends an NS for `target`, tagged or not; returns the monotonic time
    /// just before sending.
    pub fn send_solicitation(&self, target: Ipv6Addr, tag: Option<u32>) -> Result<u64, ProbeError> {
        let source = tag.map_or(self.source, tagged_source);
        let frame = solicitation_frame(self.mac, source, target);
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_IPV6.to_be();
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let at = monotonic_ns();
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
        Ok(at)
    }

    /// Reads one queued advertisement without waiting.
    fn try_recv(&self) -> Result<Option<NaReply>, ProbeError> {
        let mut buf = [0u8; 512];
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
            if let Some(na) = parse_na(&buf[..n as usize], at_ns) {
                return Ok(Some(na));
            }
        }
    }

    /// The next advertisement, sleeping in ppoll(2) up to `timeout`.
    pub fn recv_advertisement(&self, timeout: Duration) -> Result<Option<NaReply>, ProbeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv()? {
                return Ok(Some(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: one valid pollfd and a valid timespec; no signal mask.
            let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(ProbeError::Io {
                        op: "ppoll",
                        source: e,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_solicitation_is_valid_and_its_answer_names_the_tag() {
        let mac = [2, 0x1a, 0xb0, 0, 0, 2];
        let target: Ipv6Addr = "2001:db8::100".parse().expect("ip");
        let f = solicitation_frame(mac, tagged_source(0x0102_0304), target);
        assert_eq!(f[0..6], [0x33, 0x33, 0xff, 0, 1, 0]);
        let dst: Ipv6Addr = "ff02::1:ff00:100".parse().expect("ip");
        assert_eq!(f[38..54], dst.octets());
        // The checksum over the pseudo-header verifies to zero.
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).expect("16"));
        let mut ns = f[54..].to_vec();
        let sent = u16::from_be_bytes([ns[2], ns[3]]);
        ns[2] = 0;
        ns[3] = 0;
        assert_eq!(bpf::frame::icmpv6_checksum(&src, &dst, &ns), sent);

        // The responder's answer: to the tagged source, target option.
        let mut na =
            bpf::frame::NeighborAdvertisement::unsolicited([2, 0x1a, 0xb0, 0, 0, 0x11], target)
                .to_bytes();
        na[38..54].copy_from_slice(&tagged_source(7).octets());
        na[58] = 0x60;
        let r = parse_na(&na, 5).expect("an NA");
        assert_eq!(r.tag, Some(7));
        assert_eq!(r.target, target);
        assert_eq!(r.mac, [2, 0x1a, 0xb0, 0, 0, 0x11]);
        assert!(r.solicited);
        assert_eq!(parse_na(&f, 0), None, "an NS is not an NA");
    }
}
