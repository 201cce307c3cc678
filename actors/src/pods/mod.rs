//! L2 pod announcements (`--enable-l2-pod-announcements`): gratuitous ARP
//! for the IPv4 addresses, and unsolicited Neighbor Advertisements for the
//! IPv6 addresses, of the pods running on this node, sent on one interface
//! (`--l2-pod-announcements-interface`) when a pod gets its addresses, when
//! they change, and once when the agent starts.
//!
//! [`PodActor`] watches the pods of this node (field selector
//! `spec.nodeName`) and the interface's row of the `devices` table, and
//! sends through the announcer's [`GratuitousSender`] (the frames are
//! `bpf::frame`'s); what to announce and when is [`PodAnnouncements`].
//!
//! It is not an election and touches no eBPF map: a pod's addresses belong
//! to the node it runs on, and nothing answers ARP / NS for them here (the
//! kernel does, through the pod's own interface or the node's routes).
//!
//! [`GratuitousSender`]: crate::announce::GratuitousSender

pub mod actor;
pub mod announcements;

use std::net::IpAddr;

pub use actor::{PodActor, PodConfig};
pub use announcements::{PodAnnouncements, PodDevice, pod_ips};

/// Receives pod announcement events for the metrics.
pub trait PodObserver: Send + Sync {
    /// A gratuitous ARP (IPv4) or unsolicited NA (IPv6) was sent for a
    /// pod's address.
    fn pod_announced(&self, _ip: IpAddr, _interface: &str) {}
    /// The local pods' addresses now, by family.
    fn pod_addresses(&self, _ipv4: usize, _ipv6: usize) {}
}

/// An observer that records nothing.
pub struct NoPodObserver;
impl PodObserver for NoPodObserver {}
