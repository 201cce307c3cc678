//! What the announcer needs of the kernel, as two small traits: the
//! responder's maps and attachments ([`ResponderMaps`]) and the sending of
//! gratuitous ARP / unsolicited NA ([`GratuitousSender`]). The agent uses
//! [`bpf::Responder`] and [`SocketSender`]; unit tests and the in-process
//! control-plane nodes use [`MemoryDatapath`], which models the same
//! contract in memory (fences included) and records what was sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bpf::{AttachMode, AttachedLink, MacAddr, Responder, ResponderEntry, ResponderError};

/// The responder maps and attachments, as the announcer uses them.
/// Implementations must keep an entry's value untouched once inserted:
/// `insert` of an existing entry with the same slot is a no-op.
pub trait ResponderMaps: Send {
    /// Answers `ip` on `ifindex` while `fence[slot]` lies in the future.
    fn insert(&mut self, ip: IpAddr, ifindex: u32, slot: u32) -> Result<(), ResponderError>;
    /// Stops answering `ip` on `ifindex`; whether it was there.
    fn remove(&mut self, ip: IpAddr, ifindex: u32) -> Result<bool, ResponderError>;
    /// Every entry with its slot and counter.
    fn entries(&self) -> Result<Vec<ResponderEntry>, ResponderError>;
    /// Sets fence `slot` to `deadline_ns` (CLOCK_MONOTONIC; 0 closes it).
    fn set_fence(&mut self, slot: u32, deadline_ns: u64) -> Result<(), ResponderError>;
    /// The deadline of fence `slot`.
    fn fence(&self, slot: u32) -> Result<u64, ResponderError>;
    /// Sets the node fence every entry also obeys (0 closes everything).
    fn set_node_fence(&mut self, deadline_ns: u64) -> Result<(), ResponderError>;
    /// The node fence.
    fn node_fence(&self) -> Result<u64, ResponderError>;
    /// Stamps the agent liveness with the current monotonic time.
    fn set_liveness_now(&mut self) -> Result<u64, ResponderError>;
    /// Attaches the responder to `ifname` (idempotent) and records its MAC.
    fn attach(
        &mut self,
        ifname: &str,
        mac: MacAddr,
        mode: AttachMode,
    ) -> Result<u32, ResponderError>;
    /// Records a new MAC for an attached interface.
    fn set_interface_mac(&mut self, ifindex: u32, mac: MacAddr) -> Result<(), ResponderError>;
    /// Detaches the responder from `ifindex`.
    fn detach(&mut self, ifindex: u32) -> Result<bool, ResponderError>;
    /// Removes every attachment not in `keep`.
    fn cleanup_stale(&mut self, keep: &[AttachedLink]) -> Result<(), ResponderError>;
}

impl ResponderMaps for Responder {
    fn insert(&mut self, ip: IpAddr, ifindex: u32, slot: u32) -> Result<(), ResponderError> {
        Responder::insert(self, ip, ifindex, slot)
    }
    fn remove(&mut self, ip: IpAddr, ifindex: u32) -> Result<bool, ResponderError> {
        Responder::remove(self, ip, ifindex)
    }
    fn entries(&self) -> Result<Vec<ResponderEntry>, ResponderError> {
        self.list()
    }
    fn set_fence(&mut self, slot: u32, deadline_ns: u64) -> Result<(), ResponderError> {
        Responder::set_fence(self, slot, deadline_ns)
    }
    fn fence(&self, slot: u32) -> Result<u64, ResponderError> {
        Responder::fence(self, slot)
    }
    fn set_node_fence(&mut self, deadline_ns: u64) -> Result<(), ResponderError> {
        Responder::set_node_fence(self, deadline_ns)
    }
    fn node_fence(&self) -> Result<u64, ResponderError> {
        Responder::node_fence(self)
    }
    fn set_liveness_now(&mut self) -> Result<u64, ResponderError> {
        Responder::set_liveness_now(self)
    }
    fn attach(
        &mut self,
        ifname: &str,
        mac: MacAddr,
        mode: AttachMode,
    ) -> Result<u32, ResponderError> {
        Responder::attach(self, ifname, mac, mode)
    }
    fn set_interface_mac(&mut self, ifindex: u32, mac: MacAddr) -> Result<(), ResponderError> {
        Responder::set_interface_mac(self, ifindex, mac)
    }
    fn detach(&mut self, ifindex: u32) -> Result<bool, ResponderError> {
        self.detach_ifindex(ifindex)
    }
    fn cleanup_stale(&mut self, keep: &[AttachedLink]) -> Result<(), ResponderError> {
        Responder::cleanup_stale(self, keep).map(drop)
    }
}

/// Sends gratuitous ARP (IPv4) or an unsolicited NA (IPv6) for `ip` from
/// `mac` on `ifindex`.
pub trait GratuitousSender: Send {
    fn send(&self, ip: IpAddr, ifindex: u32, mac: MacAddr) -> Result<(), bpf::GratuitousError>;
}

/// The real sender: AF_PACKET sockets kept open per interface (see
/// [`bpf::GratuitousSockets`]); clones share them.
#[derive(Debug, Clone, Default)]
pub struct SocketSender(Arc<bpf::GratuitousSockets>);

impl GratuitousSender for SocketSender {
    fn send(&self, ip: IpAddr, ifindex: u32, mac: MacAddr) -> Result<(), bpf::GratuitousError> {
        match ip {
            IpAddr::V4(v4) => self.0.send_gratuitous_arp(ifindex, mac, v4),
            IpAddr::V6(v6) => self.0.send_unsolicited_na(ifindex, mac, v6),
        }
    }
}

/// What a [`MemoryDatapath`] holds; readable by tests.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    /// (IP, ifindex) -> (fence slot, responses sent).
    pub entries: BTreeMap<(IpAddr, u32), (u32, u64)>,
    pub fences: BTreeMap<u32, u64>,
    /// 0 until set, as the datapath's (closed).
    pub node_fence: u64,
    pub liveness_ns: u64,
    /// Attached interfaces: ifindex -> (name, MAC).
    pub attached: BTreeMap<u32, (String, MacAddr)>,
    /// Every gratuitous announcement: (monotonic ns, IP, ifindex, MAC).
    pub gratuitous: Vec<(u64, IpAddr, u32, MacAddr)>,
    /// Interfaces known to this fake: name -> ifindex (as if_nametoindex).
    pub interfaces: BTreeMap<String, u32>,
}

impl MemoryState {
    /// Whether the modelled datapath would answer `ip` on `ifindex` at
    /// `now_ns`: an entry whose fence and the node fence lie in the future.
    pub fn answers(&self, ip: IpAddr, ifindex: u32, now_ns: u64) -> bool {
        now_ns < self.node_fence
            && self
                .entries
                .get(&(ip, ifindex))
                .and_then(|(slot, _)| self.fences.get(slot))
                .is_some_and(|deadline| now_ns < *deadline)
    }
}

/// An in-memory model of the responder maps and the gratuitous sender, for
/// tests. Clones share one state.
#[derive(Debug, Default, Clone)]
pub struct MemoryDatapath(Arc<Mutex<MemoryState>>);

impl MemoryDatapath {
    /// A fake whose interfaces are `names`, with ifindexes 2, 3, ...
    pub fn with_interfaces<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let dp = MemoryDatapath::default();
        dp.state().interfaces = names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), u32::try_from(i).unwrap_or(0) + 2))
            .collect();
        dp
    }

    /// The shared state (a poisoned lock is still consistent: every
    /// operation is one assignment).
    pub fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResponderMaps for MemoryDatapath {
    fn insert(&mut self, ip: IpAddr, ifindex: u32, slot: u32) -> Result<(), ResponderError> {
        if slot >= bpf::LEASE_FENCE_SLOTS {
            return Err(ResponderError::FenceSlot(slot));
        }
        self.state()
            .entries
            .entry((ip, ifindex))
            .or_insert((slot, 0));
        Ok(())
    }
    fn remove(&mut self, ip: IpAddr, ifindex: u32) -> Result<bool, ResponderError> {
        Ok(self.state().entries.remove(&(ip, ifindex)).is_some())
    }
    fn entries(&self) -> Result<Vec<ResponderEntry>, ResponderError> {
        Ok(self
            .state()
            .entries
            .iter()
            .map(
                |(&(ip, ifindex), &(fence_slot, responses_sent))| ResponderEntry {
                    ip,
                    ifindex,
                    fence_slot,
                    responses_sent,
                },
            )
            .collect())
    }
    fn set_fence(&mut self, slot: u32, deadline_ns: u64) -> Result<(), ResponderError> {
        if slot >= bpf::LEASE_FENCE_SLOTS {
            return Err(ResponderError::FenceSlot(slot));
        }
        self.state().fences.insert(slot, deadline_ns);
        Ok(())
    }
    fn fence(&self, slot: u32) -> Result<u64, ResponderError> {
        Ok(self.state().fences.get(&slot).copied().unwrap_or(0))
    }
    fn set_node_fence(&mut self, deadline_ns: u64) -> Result<(), ResponderError> {
        self.state().node_fence = deadline_ns;
        Ok(())
    }
    fn node_fence(&self) -> Result<u64, ResponderError> {
        Ok(self.state().node_fence)
    }
    fn set_liveness_now(&mut self) -> Result<u64, ResponderError> {
        let now = bpf::monotonic_now_ns();
        self.state().liveness_ns = now;
        Ok(now)
    }
    fn attach(
        &mut self,
        ifname: &str,
        mac: MacAddr,
        _mode: AttachMode,
    ) -> Result<u32, ResponderError> {
        let mut s = self.state();
        let ifindex = *s
            .interfaces
            .get(ifname)
            .ok_or_else(|| ResponderError::UnknownInterface(ifname.to_string()))?;
        s.attached.insert(ifindex, (ifname.to_string(), mac));
        Ok(ifindex)
    }
    fn set_interface_mac(&mut self, ifindex: u32, mac: MacAddr) -> Result<(), ResponderError> {
        if let Some(a) = self.state().attached.get_mut(&ifindex) {
            a.1 = mac;
        }
        Ok(())
    }
    fn detach(&mut self, ifindex: u32) -> Result<bool, ResponderError> {
        Ok(self.state().attached.remove(&ifindex).is_some())
    }
    fn cleanup_stale(&mut self, keep: &[AttachedLink]) -> Result<(), ResponderError> {
        let keep: BTreeSet<u32> = keep.iter().map(|l| l.ifindex).collect();
        self.state().attached.retain(|i, _| keep.contains(i));
        Ok(())
    }
}

impl GratuitousSender for MemoryDatapath {
    fn send(&self, ip: IpAddr, ifindex: u32, mac: MacAddr) -> Result<(), bpf::GratuitousError> {
        self.state()
            .gratuitous
            .push((bpf::monotonic_now_ns(), ip, ifindex, mac));
        Ok(())
    }
}
