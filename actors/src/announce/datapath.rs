//! [`Datapath`]: the state the announcer keeps about the responder maps —
//! which entries it put there and under which fence slot, which claim each
//! entry is answered for, how many entries use each attached interface, and
//! each claim's fence deadline as the elections of this run gave it. Plain
//! code over [`ResponderMaps`], unit-tested against [`MemoryDatapath`].
//!
//! Fences: every entry has its own slot in `lease_fence`, written before the
//! entry is inserted and never shared, so an entry is never re-pointed (its
//! value, and with it the datapath's reply counter, is never rewritten). A
//! claim's fence is the slots of its entries: opening or closing a claim
//! writes each of them.
//!
//! Entries of an earlier run (found in the pinned maps at start) are
//! *inherited*: they keep the slot and the deadline the previous process
//! gave them, which closes by itself; they are never re-armed, and they
//! become this run's only when a row of this run for the same IP and
//! interface arrives (its claim confirmed here). A slot a pinned entry uses
//! is never handed to another entry while that entry exists.
//!
//! [`MemoryDatapath`]: super::MemoryDatapath

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bpf::{AttachMode, AttachedLink, MacAddr, ResponderError};
use tracing::{debug, info, warn};

use super::maps::ResponderMaps;
use crate::devices::DeviceRow;

/// Why a row could not be pushed to the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    #[error("interface {0:?} has no MAC address")]
    NoMac(String),
    #[error("no free lease fence slot")]
    NoSlot,
    #[error("reading devices: {0}")]
    Devices(#[from] statedb::Error),
    #[error(transparent)]
    Responder(#[from] ResponderError),
}

/// One entry of the responder maps as the announcer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its own `lease_fence` slot.
    pub slot: u32,
    /// The claim this run answers it for; `None` while inherited.
    pub claim: Option<String>,
    /// Whether it counts as a user of its interface's attachment.
    linked: bool,
}

/// What [`Datapath::apply_row`] did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// This run now answers the entry for a (new) claim: announce it once
    /// its fence is open.
    Started,
    /// Nothing changed.
    Unchanged,
    /// An inherited row: what the previous run left is kept untouched.
    Kept,
}

#[derive(Debug, Clone)]
struct Attachment {
    name: String,
    mac: MacAddr,
    users: usize,
}

/// Fence slots. This run gives each entry a slot of its own; slots that
/// entries found in the maps at start use are reserved (counted, since an
/// earlier version of the agent shared one slot between the entries of a
/// claim) and become free only when no entry uses them any more.
#[derive(Debug, Default)]
pub struct SlotAllocator {
    users: BTreeMap<u32, usize>,
    free: BTreeSet<u32>,
    next: u32,
}

impl SlotAllocator {
    /// Counts one more entry found in the maps using `slot`.
    pub fn reserve(&mut self, slot: u32) {
        *self.users.entry(slot).or_default() += 1;
        self.free.remove(&slot);
        while self.next <= slot {
            if !self.users.contains_key(&self.next) {
                self.free.insert(self.next);
            }
            self.next += 1;
        }
    }

    /// A slot no entry uses.
    pub fn allocate(&mut self) -> Option<u32> {
        let slot = match self.free.pop_first() {
            Some(s) => s,
            None if self.next < bpf::LEASE_FENCE_SLOTS => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.users.insert(slot, 1);
        Some(slot)
    }

    /// One entry using `slot` is gone from the maps.
    pub fn release(&mut self, slot: u32) {
        if let Some(n) = self.users.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&slot);
                self.free.insert(slot);
            }
        }
    }

    /// How many entries use `slot`.
    pub fn users(&self, slot: u32) -> usize {
        self.users.get(&slot).copied().unwrap_or(0)
    }
}

/// The announcer's view of the responder, over the maps `M`.
pub struct Datapath<M> {
    maps: M,
    mode: AttachMode,
    attached: BTreeMap<u32, Attachment>,
    entries: BTreeMap<(IpAddr, u32), Entry>,
    slots: SlotAllocator,
    /// Claim -> fence deadline (CLOCK_MONOTONIC ns) given in this run.
    fences: BTreeMap<String, u64>,
}

impl<M: ResponderMaps> Datapath<M> {
    pub fn new(maps: M, mode: AttachMode) -> Self {
        Datapath {
            maps,
            mode,
            attached: BTreeMap::new(),
            entries: BTreeMap::new(),
            slots: SlotAllocator::default(),
            fences: BTreeMap::new(),
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Takes stock of what an earlier run left in the (pinned) maps: those
    /// entries become inherited and their slots reserved. Call once, first.
    ///
    /// Each inherited entry's slot is capped at the node fence the earlier
    /// run left, so that this run extending or opening the node fence
    /// re-arms none of them: from here on their own slot alone times them.
    pub fn recover(&mut self) -> Result<usize, ResponderError> {
        let found = self.maps.entries()?;
        let node_fence = self.maps.node_fence()?;
        let slots: BTreeSet<u32> = found.iter().map(|e| e.fence_slot).collect();
        for slot in slots {
            let deadline = self.maps.fence(slot)?;
            if deadline > node_fence {
                self.maps.set_fence(slot, node_fence)?;
            }
        }
        for e in &found {
            self.slots.reserve(e.fence_slot);
            self.entries.insert(
                (e.ip, e.ifindex),
                Entry {
                    slot: e.fence_slot,
                    claim: None,
                    linked: false,
                },
            );
        }
        Ok(found.len())
    }

    /// The entry for `ip` on `ifindex`, if the maps hold one.
    pub fn entry(&self, ip: IpAddr, ifindex: u32) -> Option<&Entry> {
        self.entries.get(&(ip, ifindex))
    }

    /// Every entry with its key.
    pub fn entries(&self) -> impl Iterator<Item = (&(IpAddr, u32), &Entry)> {
        self.entries.iter()
    }

    fn deadline(&self, claim: &str) -> u64 {
        self.fences.get(claim).copied().unwrap_or(0)
    }

    /// Makes the maps hold what `row` asks for on `device`. Rows of another
    /// run than `run` are inherited: only what is already in the maps is
    /// kept (and its interface stays attached), nothing is inserted, armed
    /// or announced.
    pub fn apply_row(
        &mut self,
        ip: IpAddr,
        claim: &str,
        inherited: bool,
        device: &DeviceRow,
    ) -> Result<Applied, DatapathError> {
        let key = (ip, device.index);
        if let Some(e) = self.entries.get(&key) {
            let linked = e.linked;
            if !linked {
                self.attach_if_first(device)?;
                if let Some(e) = self.entries.get_mut(&key) {
                    e.linked = true;
                }
            }
            if inherited {
                return Ok(Applied::Kept);
            }
            let deadline = self.deadline(claim);
            let Some(e) = self.entries.get_mut(&key) else {
                return Ok(Applied::Unchanged);
            };
            if e.claim.as_deref() == Some(claim) {
                return Ok(Applied::Unchanged);
            }
            let slot = e.slot;
            if self.slots.users(slot) > 1 {
                // A slot shared with other inherited entries: arming it
                // would arm them too. Give this entry a slot of its own.
                self.move_to_own_slot(key, claim)?;
            } else {
                e.claim = Some(claim.to_string());
                self.maps.set_fence(slot, deadline)?;
            }
            debug!(ip = %ip, interface = %device.name, claim, "entry taken over by this run");
            return Ok(Applied::Started);
        }
        if inherited {
            return Ok(Applied::Kept);
        }
        self.attach_if_first(device)?;
        let Some(slot) = self.slots.allocate() else {
            self.release_interface(device.index);
            return Err(DatapathError::NoSlot);
        };
        // The slot's deadline first: the entry answers nothing before its
        // claim's fence is open here.
        let inserted = self
            .maps
            .set_fence(slot, self.deadline(claim))
            .and_then(|()| self.maps.insert(ip, device.index, slot));
        if let Err(e) = inserted {
            self.slots.release(slot);
            self.release_interface(device.index);
            return Err(e.into());
        }
        self.entries.insert(
            key,
            Entry {
                slot,
                claim: Some(claim.to_string()),
                linked: true,
            },
        );
        debug!(ip = %ip, interface = %device.name, slot, claim, "entry added");
        Ok(Applied::Started)
    }

    /// Re-inserts an inherited entry under a fresh slot of its own (it
    /// shared its slot with others): the one case where an entry's value is
    /// written again, once, for state an older agent left.
    fn move_to_own_slot(&mut self, key: (IpAddr, u32), claim: &str) -> Result<(), DatapathError> {
        let slot = self.slots.allocate().ok_or(DatapathError::NoSlot)?;
        let moved = self
            .maps
            .set_fence(slot, self.deadline(claim))
            .and_then(|()| self.maps.remove(key.0, key.1))
            .and_then(|_| self.maps.insert(key.0, key.1, slot));
        if let Err(e) = moved {
            self.slots.release(slot);
            return Err(e.into());
        }
        if let Some(e) = self.entries.get_mut(&key) {
            self.slots.release(e.slot);
            e.slot = slot;
            e.claim = Some(claim.to_string());
        }
        Ok(())
    }

    /// Removes the entries of `ip` on the interface called `interface` (or
    /// with index `ifindex`, when the device is still known).
    pub fn remove(
        &mut self,
        ip: IpAddr,
        interface: &str,
        ifindex: Option<u32>,
    ) -> Result<(), DatapathError> {
        let found: Vec<(IpAddr, u32)> = self
            .entries
            .keys()
            .filter(|(eip, idx)| {
                *eip == ip
                    && (Some(*idx) == ifindex
                        || self.attached.get(idx).is_some_and(|a| a.name == interface))
            })
            .copied()
            .collect();
        for key in found {
            self.remove_entry(key)?;
        }
        Ok(())
    }

    fn remove_entry(&mut self, key: (IpAddr, u32)) -> Result<(), ResponderError> {
        self.maps.remove(key.0, key.1)?;
        if let Some(e) = self.entries.remove(&key) {
            // Closed before reuse, unless other (inherited) entries still
            // use it: they keep the deadline they had.
            if self.slots.users(e.slot) <= 1
                && let Err(err) = self.maps.set_fence(e.slot, 0)
            {
                warn!(slot = e.slot, error = %err, "clearing a freed fence slot");
            }
            self.slots.release(e.slot);
            if e.linked {
                self.release_interface(key.1);
            }
        }
        Ok(())
    }

    /// Removes every map entry not in `wanted` (IP, ifindex) — entries of
    /// an earlier run included — and every attachment no entry uses.
    pub fn prune(&mut self, wanted: &BTreeSet<(IpAddr, u32)>) -> Result<(), DatapathError> {
        let in_maps = self.maps.entries()?;
        let present: BTreeSet<(IpAddr, u32)> = in_maps.iter().map(|e| (e.ip, e.ifindex)).collect();
        for e in in_maps {
            let key = (e.ip, e.ifindex);
            if wanted.contains(&key) {
                continue;
            }
            if !self.entries.contains_key(&key) {
                // Not ours and not recovered: still, its slot is in use.
                self.slots.reserve(e.fence_slot);
                self.entries.insert(
                    key,
                    Entry {
                        slot: e.fence_slot,
                        claim: None,
                        linked: false,
                    },
                );
            }
            self.remove_entry(key)?;
            info!(ip = %e.ip, ifindex = e.ifindex, "pruned stale entry");
        }
        // Entries gone from the maps behind our back.
        let vanished: Vec<(IpAddr, u32)> = self
            .entries
            .keys()
            .filter(|k| !present.contains(k))
            .copied()
            .collect();
        for key in vanished {
            if let Some(e) = self.entries.remove(&key) {
                self.slots.release(e.slot);
                if e.linked {
                    self.release_interface(key.1);
                }
            }
        }
        let keep: Vec<AttachedLink> = self
            .attached
            .keys()
            .copied()
            .chain(wanted.iter().map(|(_, ifindex)| *ifindex))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .map(|ifindex| AttachedLink {
                ifindex,
                mode: self.mode,
            })
            .collect();
        self.maps.cleanup_stale(&keep)?;
        Ok(())
    }

    /// Opens (or extends) `claim`'s fence until `deadline_ns`; the entries
    /// this run answers for it.
    pub fn open(
        &mut self,
        claim: &str,
        deadline_ns: u64,
    ) -> Result<Vec<(IpAddr, u32)>, ResponderError> {
        self.fences.insert(claim.to_string(), deadline_ns);
        self.write_fence(claim, deadline_ns)
    }

    /// Closes `claim`'s fence: its entries stop answering at once.
    pub fn close(&mut self, claim: &str) -> Result<(), ResponderError> {
        self.fences.remove(claim);
        self.write_fence(claim, 0).map(drop)
    }

    /// Closes every fence this run opened.
    pub fn close_all(&mut self) -> Result<(), ResponderError> {
        let claims: Vec<String> = self.fences.keys().cloned().collect();
        let mut result = Ok(());
        for claim in claims {
            if let Err(e) = self.close(&claim) {
                result = Err(e);
            }
        }
        result
    }

    fn write_fence(
        &mut self,
        claim: &str,
        deadline_ns: u64,
    ) -> Result<Vec<(IpAddr, u32)>, ResponderError> {
        let mut keys = Vec::new();
        for (key, e) in &self.entries {
            if e.claim.as_deref() == Some(claim) {
                self.maps.set_fence(e.slot, deadline_ns)?;
                keys.push(*key);
            }
        }
        Ok(keys)
    }

    /// The MAC to announce `ip` on `ifindex` with, when this run answers
    /// that entry for a claim and the entry's fence in the maps is open
    /// at `now_ns`: the check made right before every gratuitous send.
    pub fn answerable(&self, ip: IpAddr, ifindex: u32, now_ns: u64) -> Option<MacAddr> {
        let e = self.entries.get(&(ip, ifindex))?;
        e.claim.as_ref()?;
        // Both fences the program obeys: the entry's slot and the node
        // fence (heartbeat mode; always open in per-service mode). A node
        // that wakes from a freeze with its heartbeat lapsed announces
        // nothing, even for a repeat that fell due while it slept.
        let open = self
            .maps
            .fence(e.slot)
            .is_ok_and(|deadline| now_ns < deadline)
            && self
                .maps
                .node_fence()
                .is_ok_and(|deadline| now_ns < deadline);
        if !open {
            return None;
        }
        self.attached.get(&ifindex).map(|a| a.mac)
    }

    /// Follows a changed MAC of an attached interface into the maps; the
    /// entries this run answers there (to be announced again), or `None`
    /// when nothing changed.
    pub fn follow_mac(
        &mut self,
        device: &DeviceRow,
    ) -> Result<Option<Vec<(IpAddr, u32)>>, ResponderError> {
        let Some(mac) = device.mac() else {
            return Ok(None);
        };
        let Some(a) = self.attached.get_mut(&device.index) else {
            return Ok(None);
        };
        if a.mac == mac {
            return Ok(None);
        }
        a.mac = mac;
        self.maps.set_interface_mac(device.index, mac)?;
        info!(interface = %device.name, mac = %device.hw_addr, "interface MAC changed");
        Ok(Some(
            self.entries
                .iter()
                .filter(|((_, idx), e)| *idx == device.index && e.claim.is_some())
                .map(|(k, _)| *k)
                .collect(),
        ))
    }

    /// The attached interfaces: ifindex -> name.
    pub fn interfaces(&self) -> impl Iterator<Item = (u32, &str)> {
        self.attached.iter().map(|(i, a)| (*i, a.name.as_str()))
    }

    fn attach_if_first(&mut self, device: &DeviceRow) -> Result<(), DatapathError> {
        if let Some(a) = self.attached.get_mut(&device.index) {
            a.users += 1;
            return Ok(());
        }
        let mac = device
            .mac()
            .ok_or_else(|| DatapathError::NoMac(device.name.clone()))?;
        self.maps.attach(&device.name, mac, self.mode)?;
        info!(interface = %device.name, mode = %self.mode, "responder attached");
        self.attached.insert(
            device.index,
            Attachment {
                name: device.name.clone(),
                mac,
                users: 1,
            },
        );
        Ok(())
    }

    fn release_interface(&mut self, ifindex: u32) {
        let Some(a) = self.attached.get_mut(&ifindex) else {
            return;
        };
        a.users = a.users.saturating_sub(1);
        if a.users == 0 {
            let name = a.name.clone();
            self.attached.remove(&ifindex);
            match self.maps.detach(ifindex) {
                Ok(_) => info!(interface = %name, "responder detached"),
                Err(e) => warn!(interface = %name, error = %e, "detaching responder"),
            }
        }
    }

    /// The reply counters with interface names: (IP, interface, count).
    pub fn counters(&self) -> Result<Vec<(IpAddr, String, u64)>, ResponderError> {
        Ok(self
            .maps
            .entries()?
            .into_iter()
            .filter_map(|e| {
                self.attached
                    .get(&e.ifindex)
                    .map(|a| (e.ip, a.name.clone(), e.responses_sent))
            })
            .collect())
    }
}

#[cfg(test)]
#[path = "datapath_tests.rs"]
mod tests;
