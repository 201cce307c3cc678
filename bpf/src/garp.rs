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

use std::net::{Ipv4Addr, Ipv6Addr};

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
