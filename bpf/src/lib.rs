//! bpf: the eBPF ARP / NDP responder of l2announcer and its typed wrappers.
//!
//! `responder.c` (compiled by clang in build.rs) answers ARP requests and
//! IPv6 Neighbor Solicitations for the addresses in its maps, in the kernel,
//! gated by agent liveness, a per-lease fence and a node fence.
//! [`Responder`] loads it with aya, pins its maps and attachments under a
//! bpffs directory so that a restarted agent keeps answering, and offers
//! typed map access.
//! [`frame`] builds and parses the ARP / NS / NA frames (etherparse),
//! [`PacketSocket`] is the AF_PACKET socket that sends and receives them,
//! [`garp`] sends gratuitous ARP / unsolicited NA from userspace.
//!
//! It is not the reconciler (deciding which addresses to announce, fence slot
//! allocation, retries) and knows nothing of Kubernetes: that is the
//! `actors` crate. See bpf/README.md for the datapath contract.

pub mod frame;
pub mod garp;
pub mod maps;
mod pinned;
mod responder;
mod sys;

pub use garp::{GratuitousError, GratuitousSockets, send_gratuitous_arp, send_unsolicited_na};
pub use maps::{LEASE_FENCE_SLOTS, MacAddr, RESPONDER_MAX_ENTRIES};
pub use pinned::PinnedMaps;
pub use responder::{
    AttachMode, AttachedLink, Responder, ResponderConfig, ResponderEntry, ResponderError,
    TC_PROGRAM, XDP_PROGRAM,
};
pub use sys::{PacketSocket, if_nametoindex, is_on_bpffs, monotonic_now_ns};
