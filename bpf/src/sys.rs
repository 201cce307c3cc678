//! The few raw system calls the crate needs that neither std nor aya wrap:
//! the monotonic clock, interface name lookup and the AF_PACKET socket
//! ([`PacketSocket`]). Every `unsafe` block outside the `Pod` impls lives
//! here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`, so
/// deadlines and liveness stamps written by userspace compare directly with
/// the datapath's `now`.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always
    // supported on Linux, so the call cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn if_nametoindex(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    (index != 0).then_some(index)
}

/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, kernel 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// A raw AF_PACKET socket on one interface: sends complete Ethernet frames
/// out of it (no IP address needed: VLANs, bonds) and, when opened with
/// [`PacketSocket::bind`], receives the frames of one EtherType arriving
/// on it. The one packet socket type of the project: the gratuitous ARP /
/// NA sender and the integration probes both use it.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    /// A send-only socket for `ifindex` (protocol 0: it receives nothing).
    pub fn sender(ifindex: u32) -> io::Result<PacketSocket> {
        Self::socket(ifindex, 0)
    }

    /// A socket bound to `ifindex` that receives every frame of `ethertype`
    /// arriving on the interface (whatever its destination MAC), but not
    /// the frames it or others send out of it.
    pub fn bind(ifindex: u32, ethertype: u16) -> io::Result<PacketSocket> {
        let proto = ethertype.to_be();
        let socket = Self::socket(ifindex, proto)?;
        socket.setsockopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        let mut addr = socket.link_address(proto)?;
        addr.sll_halen = 0;
        // SAFETY: `addr` is a valid sockaddr_ll for the length given.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Frames of other interfaces may have queued before bind().
        let mut buf = [0u8; 64];
        while socket.try_recv(&mut buf)?.is_some() {}
        Ok(socket)
    }

    fn socket(ifindex: u32, proto_be: u16) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2) call; the returned descriptor is checked
        // and immediately owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto_be),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(PacketSocket { fd, ifindex })
    }

    /// The interface this socket sends on (and receives from, when bound).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn link_address(&self, proto_be: u16) -> io::Result<libc::sockaddr_ll> {
        let ifindex = i32::try_from(self.ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto_be;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        Ok(addr)
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
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
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets the receive buffer to `bytes`, beyond `rmem_max`
    /// (`SO_RCVBUFFORCE`, needs CAP_NET_ADMIN): room for the replies of a
    /// flood.
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
    }

    /// Sends one frame (destination MAC, source MAC and EtherType included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame shorter than an Ethernet header",
            ));
        }
        let mut addr = self.link_address(u16::from_ne_bytes([frame[12], frame[13]]))?;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the given lengths for the
        // duration of the call; the descriptor is open.
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
            return Err(io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short packet write",
            ));
        }
        Ok(())
    }

    /// Reads one queued frame into `buf` without waiting; its length (cut
    /// at `buf.len()`), or `None` when nothing is queued.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
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
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for a frame to be readable; false on timeout
    /// (or a signal).
    pub fn wait_readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            // Below 10^9: fits every c_long.
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd and a valid timespec; no signal mask.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(rc > 0)
    }

    /// Frames the kernel dropped because the receive queue was full, since
    /// the previous call (`PACKET_STATISTICS`).
    pub fn drops(&self) -> io::Result<u32> {
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
            return Err(io::Error::last_os_error());
        }
        Ok(stats.tp_drops)
    }

    /// The interface's current MAC address (`SIOCGIFHWADDR`).
    pub fn interface_mac(&self) -> io::Result<crate::maps::MacAddr> {
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname
        // requires.
        let named = unsafe { libc::if_indextoname(self.ifindex, name.as_mut_ptr()) };
        if named.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.iter()) {
            *dst = *src;
        }
        // SAFETY: SIOCGIFHWADDR fills `req.ifr_ifru.ifru_hwaddr`; `req` is
        // valid and writable.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the ioctl succeeded, so the hwaddr member is the one set.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok(mac)
    }
}

/// Whether `path` lies on a mounted bpf filesystem, judged from
/// `/proc/self/mounts` (the longest mount point that is a prefix of `path`).
pub fn is_on_bpffs(path: &std::path::Path) -> io::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut best: Option<(usize, bool)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_dev), Some(mount_point), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount_point = mount_point.replace("\\040", " ");
        if path.starts_with(&mount_point) {
            let len = mount_point.len();
            if best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, fstype == "bpf"));
            }
        }
    }
    Ok(best.is_some_and(|(_, bpf)| bpf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0);
        assert!(b >= a);
    }

    #[test]
    fn loopback_has_an_index_and_nonsense_has_none() {
        assert!(if_nametoindex("lo").is_some());
        assert_eq!(if_nametoindex("no-such-if-xyz"), None);
        assert_eq!(if_nametoindex("bad\0name"), None);
    }

    #[test]
    fn proc_is_not_bpffs() {
        assert!(!is_on_bpffs(std::path::Path::new("/proc/self")).unwrap());
    }
}
