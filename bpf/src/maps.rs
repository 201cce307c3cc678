//! The key and value layouts of the responder's maps, mirrored byte for byte
//! from `responder.c`. Plain data only: reading and writing the maps is
//! [`crate::Responder`]'s job.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet MAC address.
pub type MacAddr = [u8; 6];

/// Slots in `lease_fence` (`LEASE_FENCE_SLOTS` in responder.c): one per
/// Service lease this node holds at the same time.
pub const LEASE_FENCE_SLOTS: u32 = 65_536;

/// Entries each of `l2_responder_v4` and `l2_responder_v6` can hold.
pub const RESPONDER_MAX_ENTRIES: u32 = 16_384;

/// Interfaces `l2_responder_ifmac` can hold.
pub const IFMAC_MAX_ENTRIES: u32 = 4_096;

/// Key of `l2_responder_v4`: `{__be32 ip; __u32 ifindex}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct V4Key {
    /// The IPv4 address in network byte order, as the bytes appear on the wire.
    pub ip: [u8; 4],
    /// Interface the address is answered on.
    pub ifindex: u32,
}

impl V4Key {
    /// The key for `ip` on `ifindex`.
    pub fn new(ip: Ipv4Addr, ifindex: u32) -> Self {
        Self {
            ip: ip.octets(),
            ifindex,
        }
    }

    /// The address of this key.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip)
    }
}

/// Key of `l2_responder_v6`: `{__u8 ip[16]; __u32 ifindex; __u32 pad}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct V6Key {
    /// The IPv6 address, network byte order.
    pub ip: [u8; 16],
    /// Interface the address is answered on.
    pub ifindex: u32,
    /// Always zero (the whole key is hashed).
    pub pad: u32,
}

impl V6Key {
    /// The key for `ip` on `ifindex`.
    pub fn new(ip: Ipv6Addr, ifindex: u32) -> Self {
        Self {
            ip: ip.octets(),
            ifindex,
            pad: 0,
        }
    }

    /// The address of this key.
    pub fn addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ip)
    }
}

/// Value of both responder maps: `{__u64 responses_sent; __u32 fence_slot; __u32 flags}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryValue {
    /// Replies the datapath sent for this entry (incremented atomically there).
    pub responses_sent: u64,
    /// Index into `lease_fence` whose deadline gates this entry.
    pub fence_slot: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Value of `l2_responder_ifmac` (key: ifindex `u32`): the interface's MAC,
/// used as the reply's source and sender hardware address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfMacValue {
    /// The MAC address.
    pub addr: MacAddr,
    /// Always zero.
    pub pad: u16,
}

/// Value of the single entry of `l2_responder_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigValue {
    /// The datapath answers only while `now - agent_liveness[0]` is below this.
    pub max_liveness_ns: u64,
    /// Reserved, zero.
    pub reserved: u64,
}

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte
// arrays, and laid out without implicit padding (checked by the size tests
// below), so every bit pattern is a valid value and no byte is uninitialised.
unsafe impl aya::Pod for V4Key {}
// SAFETY: see above.
unsafe impl aya::Pod for V6Key {}
// SAFETY: see above.
unsafe impl aya::Pod for EntryValue {}
// SAFETY: see above.
unsafe impl aya::Pod for IfMacValue {}
// SAFETY: see above.
unsafe impl aya::Pod for ConfigValue {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, size_of};

    #[test]
    fn layouts_match_responder_c() {
        assert_eq!(size_of::<V4Key>(), 8);
        assert_eq!(size_of::<V6Key>(), 24);
        assert_eq!(size_of::<EntryValue>(), 16);
        assert_eq!(align_of::<EntryValue>(), 8);
        assert_eq!(size_of::<IfMacValue>(), 8);
        assert_eq!(size_of::<ConfigValue>(), 16);
    }

    #[test]
    fn keys_hold_network_order_addresses() {
        let k = V4Key::new(Ipv4Addr::new(192, 0, 2, 10), 7);
        assert_eq!(k.ip, [192, 0, 2, 10]);
        assert_eq!(k.addr(), Ipv4Addr::new(192, 0, 2, 10));
        let ip6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let k6 = V6Key::new(ip6, 3);
        assert_eq!(k6.ip[0..2], [0x20, 0x01]);
        assert_eq!(k6.ip[15], 1);
        assert_eq!(k6.pad, 0);
        assert_eq!(k6.addr(), ip6);
    }
}
