//! Gratuitous ARP and unsolicited Neighbor Advertisements, sent from
//! userspace through an AF_PACKET socket when this node starts announcing an
//! address, so neighbours update their caches at once instead of waiting for
//! their entries to expire. AF_PACKET needs no IP address on the interface
//! (VLANs, bonds).
//!
//! This module only sends; the frames are [`crate::frame`]'s, and when and
//! how often to send (and whether the entry's gates are open:
//! [`crate::Responder::answers`]) is the caller's decision. The eBPF
//! responder (replies to requests) is [`crate::Responder`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use crate::frame::{ArpPacket, NeighborAdvertisement};
use crate::maps::MacAddr;
use crate::sys::PacketSocket;

/// Sending a gratuitous frame failed.
#[derive(Debug, thiserror::Error)]
pub enum GratuitousError {
    /// The AF_PACKET socket could not be opened (needs CAP_NET_RAW).
    #[error("opening an AF_PACKET socket for ifindex {ifindex}: {source}")]
    Socket {
        /// Interface index.
        ifindex: u32,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The frame could not be sent (interface down or gone, ...).
    #[error("sending on ifindex {ifindex}: {source}")]
    Send {
        /// Interface index.
        ifindex: u32,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn sender(ifindex: u32) -> Result<PacketSocket, GratuitousError> {
    PacketSocket::sender(ifindex).map_err(|source| GratuitousError::Socket { ifindex, source })
}

/// Sends both gratuitous ARP forms for `ip` ([`ArpPacket::gratuitous`]: an
/// RFC 5227 announcement and an `arping -A` reply) out of `ifindex`.
pub fn send_gratuitous_arp(
    ifindex: u32,
    mac: MacAddr,
    ip: Ipv4Addr,
) -> Result<(), GratuitousError> {
    let socket = sender(ifindex)?;
    for packet in ArpPacket::gratuitous(mac, ip) {
        socket
            .send(&packet.to_bytes())
            .map_err(|source| GratuitousError::Send { ifindex, source })?;
    }
    tracing::debug!(ifindex, ip = %ip, "sent gratuitous ARP (request and reply)");
    Ok(())
}

/// Sends one unsolicited Neighbor Advertisement for `ip`
/// ([`NeighborAdvertisement::unsolicited`]) out of `ifindex`.
pub fn send_unsolicited_na(
    ifindex: u32,
    mac: MacAddr,
    ip: Ipv6Addr,
) -> Result<(), GratuitousError> {
    let socket = sender(ifindex)?;
    socket
        .send(&NeighborAdvertisement::unsolicited(mac, ip).to_bytes())
        .map_err(|source| GratuitousError::Send { ifindex, source })?;
    tracing::debug!(ifindex, ip = %ip, "sent unsolicited neighbor advertisement");
    Ok(())
}

/// Sender sockets kept open, one per interface. Opening an AF_PACKET
/// socket per frame costs its close an RCU grace period (15–25 ms measured
/// here), which blocks the sending thread: a thousand claims announced
/// three times each would hold it for a minute. A socket whose send fails
/// (interface gone or down) is dropped and opened again next time.
#[derive(Default)]
pub struct GratuitousSockets {
    sockets: Mutex<HashMap<u32, PacketSocket>>,
}

impl std::fmt::Debug for GratuitousSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open: Vec<u32> = self
            .sockets
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        f.debug_struct("GratuitousSockets")
            .field("open", &open)
            .finish()
    }
}

impl GratuitousSockets {
    /// [`send_gratuitous_arp`] on this interface's kept socket.
    pub fn send_gratuitous_arp(
        &self,
        ifindex: u32,
        mac: MacAddr,
        ip: Ipv4Addr,
    ) -> Result<(), GratuitousError> {
        let frames: Vec<Vec<u8>> = ArpPacket::gratuitous(mac, ip)
            .iter()
            .map(|p| p.to_bytes().to_vec())
            .collect();
        self.send(ifindex, &frames)?;
        tracing::debug!(ifindex, ip = %ip, "sent gratuitous ARP (request and reply)");
        Ok(())
    }

    /// [`send_unsolicited_na`] on this interface's kept socket.
    pub fn send_unsolicited_na(
        &self,
        ifindex: u32,
        mac: MacAddr,
        ip: Ipv6Addr,
    ) -> Result<(), GratuitousError> {
        let frame = NeighborAdvertisement::unsolicited(mac, ip)
            .to_bytes()
            .to_vec();
        self.send(ifindex, &[frame])?;
        tracing::debug!(ifindex, ip = %ip, "sent unsolicited neighbor advertisement");
        Ok(())
    }

    fn send(&self, ifindex: u32, frames: &[Vec<u8>]) -> Result<(), GratuitousError> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let socket = match sockets.entry(ifindex) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(sender(ifindex)?),
        };
        for frame in frames {
            if let Err(source) = socket.send(frame) {
                sockets.remove(&ifindex);
                return Err(GratuitousError::Send { ifindex, source });
            }
        }
        Ok(())
    }
}
