//! The tracker's view of links and addresses, independent of netlink: it
//! turns link/address events into [`DeviceChange`]s by diffing each device's
//! row against the one last emitted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{
    DeviceChange, DeviceFilter, DeviceRow, IFF_LOOPBACK, IFF_LOWER_UP, IFF_UP, flag_names,
};

/// One link as netlink reports it (`RTM_NEWLINK`), reduced to what a row
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`, `None` for devices without one.
    pub kind: Option<String>,
    pub mtu: u32,
    /// `IFLA_ADDRESS`, empty when absent.
    pub hw_addr: Vec<u8>,
    /// Raw `IFF_*` flags.
    pub flags: u32,
    /// `IFLA_MASTER`.
    pub master_index: Option<u32>,
    /// Lower-case operational state.
    pub oper_state: String,
}

impl Link {
    /// The row for this link with the given addresses.
    pub fn to_row(&self, addresses: Vec<IpAddr>, filter: &DeviceFilter) -> DeviceRow {
        DeviceRow {
            name: self.name.clone(),
            index: self.index,
            selected: self.is_selected(filter),
            kind: self.kind.clone().unwrap_or_else(|| "device".to_string()),
            mtu: self.mtu,
            hw_addr: super::format_hw_addr(&self.hw_addr),
            flags: flag_names(self.flags),
            addresses,
            master_index: self.master_index,
            oper_state: self.oper_state.clone(),
        }
    }

    /// Up, with carrier (`IFF_LOWER_UP` and [`oper_state_carries`]), not
    /// loopback, a non-zero 6-byte MAC, not enslaved, and matching the
    /// filter.
    pub fn is_selected(&self, filter: &DeviceFilter) -> bool {
        self.flags & IFF_UP != 0
            && self.flags & IFF_LOWER_UP != 0
            && oper_state_carries(&self.oper_state)
            && self.flags & IFF_LOOPBACK == 0
            && self.hw_addr.len() == 6
            && self.hw_addr.iter().any(|b| *b != 0)
            && self.master_index.is_none()
            && filter.matches(&self.name)
    }
}

/// Whether a device in this RFC 2863 operational state (lower case, as
/// [`Link::oper_state`]) can carry frames: `up`, and `unknown`, which
/// drivers without carrier reporting leave (tun/tap, dummy, some virtual
/// and older NICs) and which the tracker assumes when netlink sends no
/// `IFLA_OPERSTATE`. The same two states the kernel's `netif_oper_up()`
/// accepts, which also sets `IFF_RUNNING`. Every other state — `down` (no
/// carrier), `lowerlayerdown` (e.g. a veth whose peer is down, a VLAN on a
/// downed parent), `dormant` (e.g. waiting for 802.1X), `testing`,
/// `notpresent`, or a value newer than this code — cannot.
pub fn oper_state_carries(oper_state: &str) -> bool {
    matches!(oper_state, "up" | "unknown")
}

/// Links and addresses by ifindex, and the rows last emitted for them.
#[derive(Debug, Default)]
pub struct DeviceState {
    filter: DeviceFilter,
    links: BTreeMap<u32, Link>,
    /// (address, prefix length): the same IP may be configured twice with
    /// different prefixes, and removing one must keep the other.
    addrs: BTreeMap<u32, BTreeSet<(IpAddr, u8)>>,
    emitted: BTreeMap<u32, DeviceRow>,
}

impl DeviceState {
    pub fn new(filter: DeviceFilter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// Replace everything with a fresh dump and return the full set of rows.
    pub fn resync(&mut self, links: Vec<Link>, addrs: Vec<(u32, IpAddr, u8)>) -> DeviceChange {
        self.links = links.into_iter().map(|l| (l.index, l)).collect();
        self.addrs.clear();
        for (index, ip, prefix) in addrs {
            self.addrs.entry(index).or_default().insert((ip, prefix));
        }
        self.emitted = self
            .links
            .keys()
            .filter_map(|i| self.row(*i).map(|r| (*i, r)))
            .collect();
        DeviceChange::Resync(self.emitted.values().cloned().collect())
    }

    /// A link appeared or changed (including a rename).
    pub fn upsert_link(&mut self, link: Link) -> Vec<DeviceChange> {
        let index = link.index;
        self.links.insert(index, link);
        self.refresh(index)
    }

    /// A link went away.
    pub fn remove_link(&mut self, index: u32) -> Vec<DeviceChange> {
        self.links.remove(&index);
        self.addrs.remove(&index);
        self.refresh(index)
    }

    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Vec<DeviceChange> {
        self.addrs.entry(index).or_default().insert((ip, prefix));
        self.refresh(index)
    }

    pub fn remove_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Vec<DeviceChange> {
        if let Some(set) = self.addrs.get_mut(&index) {
            set.remove(&(ip, prefix));
            if set.is_empty() {
                self.addrs.remove(&index);
            }
        }
        self.refresh(index)
    }

    /// The rows as last emitted, by ifindex.
    pub fn rows(&self) -> impl Iterator<Item = &DeviceRow> {
        self.emitted.values()
    }

    fn row(&self, index: u32) -> Option<DeviceRow> {
        let link = self.links.get(&index)?;
        let addresses: Vec<IpAddr> = self
            .addrs
            .get(&index)
            .map(|set| {
                let ips: BTreeSet<IpAddr> = set.iter().map(|(ip, _)| *ip).collect();
                ips.into_iter().collect()
            })
            .unwrap_or_default();
        Some(link.to_row(addresses, &self.filter))
    }

    /// Diff the current row of `index` against the emitted one.
    fn refresh(&mut self, index: u32) -> Vec<DeviceChange> {
        let new = self.row(index);
        let old = self.emitted.get(&index);
        let changes = match (old, &new) {
            (None, None) => vec![],
            (Some(old), None) => vec![DeviceChange::Delete {
                index,
                name: old.name.clone(),
            }],
            (None, Some(new)) => vec![DeviceChange::Upsert(new.clone())],
            (Some(old), Some(new)) if old == new => vec![],
            (Some(old), Some(new)) if old.name != new.name => vec![
                DeviceChange::Delete {
                    index,
                    name: old.name.clone(),
                },
                DeviceChange::Upsert(new.clone()),
            ],
            (Some(_), Some(new)) => vec![DeviceChange::Upsert(new.clone())],
        };
        match new {
            Some(row) => {
                self.emitted.insert(index, row);
            }
            None => {
                self.emitted.remove(&index);
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{IFF_BROADCAST, IFF_MULTICAST};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some("veth".into()),
            mtu: 1500,
            hw_addr: vec![0x02, 0, 0, 0, 0, index as u8],
            flags: IFF_UP | IFF_LOWER_UP | IFF_BROADCAST | IFF_MULTICAST,
            master_index: None,
            oper_state: "up".into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn selection_rules() {
        let all = DeviceFilter::all();
        assert!(link(2, "eth0").is_selected(&all));

        let mut down = link(2, "eth0");
        down.flags &= !IFF_UP;
        assert!(!down.is_selected(&all), "down");

        let mut lo = link(1, "lo");
        lo.flags |= IFF_LOOPBACK;
        assert!(!lo.is_selected(&all), "loopback");

        let mut zero = link(2, "eth0");
        zero.hw_addr = vec![0; 6];
        assert!(!zero.is_selected(&all), "all-zero MAC");

        let mut none = link(2, "tun0");
        none.hw_addr = vec![];
        assert!(!none.is_selected(&all), "no MAC");

        let mut ipip = link(2, "tunl0");
        ipip.hw_addr = vec![192, 0, 2, 1];
        assert!(!ipip.is_selected(&all), "4-byte link address");

        let mut port = link(3, "veth1");
        port.master_index = Some(9);
        assert!(!port.is_selected(&all), "bridge port");

        let f: DeviceFilter = "eth+".parse().expect("filter");
        assert!(link(2, "eth0").is_selected(&f));
        assert!(!link(3, "veth1").is_selected(&f));

        // No address needed: the row is selected with an empty list.
        let row = link(4, "eth0.100").to_row(vec![], &all);
        assert!(row.selected && row.addresses.is_empty());
    }

    #[test]
    fn selection_needs_carrier() {
        let all = DeviceFilter::all();
        let with = |state: &str| {
            let mut l = link(2, "eth0");
            l.oper_state = state.into();
            l
        };
        // What the tracker writes: netlink's names in lower case, `unknown`
        // when the attribute is missing, the number of a state it does not
        // know.
        for (state, carries) in [
            ("up", true),
            // tun/tap, dummy and drivers that do not report carrier.
            ("unknown", true),
            ("down", false),
            ("lowerlayerdown", false),
            ("dormant", false),
            ("testing", false),
            ("notpresent", false),
            ("7", false),
        ] {
            assert_eq!(oper_state_carries(state), carries, "{state:?}");
            assert_eq!(with(state).is_selected(&all), carries, "{state:?}");
        }
        // Carrier does not make an administratively down device usable.
        let mut down = with("unknown");
        down.flags &= !IFF_UP;
        assert!(!down.is_selected(&all));
        // Nor does an operational state the driver never updates make a
        // device without carrier usable.
        let mut no_carrier = with("unknown");
        no_carrier.flags &= !IFF_LOWER_UP;
        assert!(!no_carrier.is_selected(&all));
        // The row keeps the state it was decided on.
        let row = with("lowerlayerdown").to_row(vec![], &all);
        assert!(!row.selected && row.is_up() && row.oper_state == "lowerlayerdown");
    }

    #[test]
    fn carrier_loss_and_return_emit_the_row_again() {
        let mut s = DeviceState::new(DeviceFilter::all());
        s.resync(vec![link(1, "eth0")], vec![]);
        let mut lost = link(1, "eth0");
        lost.flags &= !IFF_LOWER_UP;
        lost.oper_state = "lowerlayerdown".into();
        let ch = s.upsert_link(lost);
        assert!(
            matches!(&ch[..], [DeviceChange::Upsert(r)] if !r.selected && r.is_up()),
            "{ch:?}"
        );
        let ch = s.upsert_link(link(1, "eth0"));
        assert!(
            matches!(&ch[..], [DeviceChange::Upsert(r)] if r.selected && r.oper_state == "up"),
            "{ch:?}"
        );
    }

    #[test]
    fn rows_follow_events() {
        let mut s = DeviceState::new(DeviceFilter::all());
        let DeviceChange::Resync(rows) =
            s.resync(vec![link(1, "a")], vec![(1, ip("192.0.2.1"), 24)])
        else {
            panic!("resync expected");
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].addresses, vec![ip("192.0.2.1")]);

        // Addresses are sorted, IPv4 first, deduplicated across prefixes.
        s.add_address(1, ip("2001:db8::1"), 64);
        s.add_address(1, ip("192.0.2.1"), 32);
        let ch = s.add_address(1, ip("192.0.2.0"), 24);
        let [DeviceChange::Upsert(r)] = ch.as_slice() else {
            panic!("one upsert expected: {ch:?}");
        };
        assert_eq!(
            r.addresses,
            vec![ip("192.0.2.0"), ip("192.0.2.1"), ip("2001:db8::1")]
        );
        // Removing one of two prefixes keeps the IP: nothing changes.
        assert_eq!(s.remove_address(1, ip("192.0.2.1"), 32), vec![]);
        let ch = s.remove_address(1, ip("192.0.2.1"), 24);
        assert_eq!(ch.len(), 1);

        // The same state again emits nothing.
        assert_eq!(s.upsert_link(link(1, "a")), vec![]);

        // Rename: delete old name, then upsert new.
        let ch = s.upsert_link(link(1, "b"));
        assert_eq!(ch.len(), 2);
        assert_eq!(
            ch[0],
            DeviceChange::Delete {
                index: 1,
                name: "a".into()
            }
        );
        assert!(matches!(&ch[1], DeviceChange::Upsert(r) if r.name == "b"));

        // Down: upsert with selected false.
        let mut down = link(1, "b");
        down.flags &= !IFF_UP;
        let ch = s.upsert_link(down);
        assert!(matches!(&ch[..], [DeviceChange::Upsert(r)] if !r.selected && !r.is_up()));

        // Delete drops the row and its addresses; a later address event for
        // an unknown link emits nothing.
        assert_eq!(
            s.remove_link(1),
            vec![DeviceChange::Delete {
                index: 1,
                name: "b".into()
            }]
        );
        assert_eq!(s.remove_address(1, ip("2001:db8::1"), 64), vec![]);
        assert_eq!(s.rows().count(), 0);
        // An address seen before its link is kept for when the link appears.
        assert_eq!(s.add_address(5, ip("198.51.100.5"), 24), vec![]);
        let ch = s.upsert_link(link(5, "c"));
        assert!(
            matches!(&ch[..], [DeviceChange::Upsert(r)] if r.addresses == vec![ip("198.51.100.5")])
        );
    }
}
