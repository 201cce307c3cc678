//! The node's network devices as the `devices` table shows them: the row
//! type ([`DeviceRow`]), the `--devices` filter ([`DeviceFilter`]), the rules
//! that mark a device `selected`, and the netlink tracker
//! ([`DeviceTracker`]) that turns link and address events into
//! [`DeviceChange`]s.
//!
//! It does not write the table itself: a consumer applies each
//! [`DeviceChange`] to the table keyed by device name ([`DeviceChange::apply`]
//! shows the semantics on a map). It does not resolve routes, watch
//! neighbours or touch the datapath.
//!
//! Selection follows Cilium's devices controller as far as L2 announcements
//! need it: a device is selected when it is administratively up, is not a
//! loopback, has a non-zero 6-byte MAC, is not enslaved to a bridge or bond
//! (no `IFLA_MASTER`), and — when `--devices` is set — its name matches the
//! filter. Addresses are not required: a VLAN or bond without an IP is still
//! usable for announcements. Beyond Cilium, it must also carry frames: it
//! has carrier (`IFF_LOWER_UP`) and its operational state is `up` or
//! `unknown` ([`oper_state_carries`]), so a device that loses carrier (or
//! whose lower device goes down) leaves the selection, and a node whose
//! announcing devices all left it stops being a candidate for their claims.

mod actor;
mod state;
mod table;
mod tracker;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use statedb::ToKey;

pub use actor::DeviceActor;
pub use state::{DeviceState, Link, oper_state_carries};
pub use table::DeviceTableWriter;
pub use tracker::{DeviceError, DeviceTracker, TrackerOptions};

/// `IFF_UP`: administratively up.
pub const IFF_UP: u32 = 1 << 0;
/// `IFF_BROADCAST`.
pub const IFF_BROADCAST: u32 = 1 << 1;
/// `IFF_LOOPBACK`.
pub const IFF_LOOPBACK: u32 = 1 << 3;
/// `IFF_POINTOPOINT`.
pub const IFF_POINTOPOINT: u32 = 1 << 4;
/// `IFF_MULTICAST`.
pub const IFF_MULTICAST: u32 = 1 << 12;
/// `IFF_LOWER_UP`: the driver reports carrier (netlink sets it only on a
/// device that is up).
pub const IFF_LOWER_UP: u32 = 1 << 16;

/// The flags the table prints, in the order and spelling of Go's
/// `net.Flags` as `cilium-dbg statedb devices` shows them (it does not show
/// `running`).
const PRINTED_FLAGS: [(u32, &str); 5] = [
    (IFF_UP, "up"),
    (IFF_BROADCAST, "broadcast"),
    (IFF_LOOPBACK, "loopback"),
    (IFF_POINTOPOINT, "pointtopoint"),
    (IFF_MULTICAST, "multicast"),
];

/// Linux's `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// One network device: a row of the `devices` table, keyed by `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub name: String,
    /// The kernel's ifindex.
    pub index: u32,
    /// Usable for announcements (see the module documentation).
    pub selected: bool,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `vlan`, `bond`, ...), or `device`
    /// when the link has none (physical NICs, `lo`).
    pub kind: String,
    pub mtu: u32,
    /// Link-layer address, lower-case colon form; empty when the device has
    /// none or it is all zeros.
    pub hw_addr: String,
    /// `up`, `broadcast`, `loopback`, `pointtopoint`, `multicast`, in that
    /// order.
    pub flags: Vec<String>,
    /// Every address on the device, sorted (IPv4 first), without duplicates.
    pub addresses: Vec<IpAddr>,
    /// ifindex of the bridge or bond this device is enslaved to.
    #[serde(default)]
    pub master_index: Option<u32>,
    /// RFC 2863 operational state in lower case (`up`, `down`,
    /// `lowerlayerdown`, `unknown`, ...).
    #[serde(default)]
    pub oper_state: String,
}

impl DeviceRow {
    pub const HEADER: [&'static str; 8] = [
        "Name",
        "Index",
        "Selected",
        "Type",
        "MTU",
        "HWAddr",
        "Flags",
        "Addresses",
    ];

    /// The CLI cells, one per [`Self::HEADER`] column.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.index.to_string(),
            self.selected.to_string(),
            self.kind.clone(),
            self.mtu.to_string(),
            self.hw_addr.clone(),
            self.flags.join("|"),
            self.addresses
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ]
    }

    /// The MAC as bytes, when the device has a 6-byte link-layer address.
    pub fn mac(&self) -> Option<[u8; 6]> {
        parse_mac(&self.hw_addr)
    }

    /// Whether the row shows the device administratively up.
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "up")
    }
}

impl statedb::Row for DeviceRow {
    fn header() -> Vec<&'static str> {
        DeviceRow::HEADER.to_vec()
    }
    fn cells(&self) -> Vec<String> {
        DeviceRow::cells(self)
    }
}

/// `devices`: primary device name; secondary by ifindex (not unique: a
/// rename arrives as delete + insert and a resync may briefly see both).
pub const DEVICES: statedb::TableDef<DeviceRow> = statedb::TableDef {
    name: "devices",
    primary: statedb::Index::primary("name", |r| r.name.to_key()),
    secondary: &[statedb::Index::non_unique("index", |r| {
        vec![r.index.to_key()]
    })],
};

/// Write one change into the `devices` table (opened with [`DEVICES`]) in
/// one transaction, with the semantics of [`DeviceChange::apply`]. Rows that
/// did not change are not rewritten, so a resync bumps no revision for them.
/// Blocks on the commit: call it off the async hot path.
pub fn write_change(
    db: &statedb::Db,
    table: &statedb::Table<DeviceRow>,
    change: DeviceChange,
) -> Result<(), statedb::Error> {
    let by_name = table.primary_index();
    let mut txn = db.write_txn();
    match change {
        DeviceChange::Upsert(row) => {
            let current = table.get(&txn, by_name, &row.name)?;
            if current.is_none_or(|e| e.row != row) {
                table.insert(&mut txn, row)?;
            }
        }
        DeviceChange::Delete { index, name } => {
            if let Some(e) = table.get(&txn, by_name, &name)?
                && e.row.index == index
            {
                table.delete(&mut txn, &e.row)?;
            }
        }
        DeviceChange::Resync(rows) => {
            let mut wanted: BTreeMap<String, DeviceRow> =
                rows.into_iter().map(|r| (r.name.clone(), r)).collect();
            for e in table.list(&txn)? {
                match wanted.remove(&e.row.name) {
                    None => {
                        table.delete(&mut txn, &e.row)?;
                    }
                    Some(row) if row != e.row => {
                        table.insert(&mut txn, row)?;
                    }
                    Some(_) => {}
                }
            }
            for row in wanted.into_values() {
                table.insert(&mut txn, row)?;
            }
        }
    }
    txn.commit()
}

/// Lower-case colon form of a link-layer address; empty for none or zeros.
pub fn format_hw_addr(addr: &[u8]) -> String {
    if addr.iter().all(|b| *b == 0) {
        return String::new();
    }
    addr.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(mac)
}

/// The printed flag names of raw `IFF_*` flags.
pub fn flag_names(flags: u32) -> Vec<String> {
    PRINTED_FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect()
}

/// One change to the `devices` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Insert or replace the row named `row.name`.
    Upsert(DeviceRow),
    /// Remove the row named `name` (the device was deleted or renamed away).
    Delete { index: u32, name: String },
    /// The complete set of devices: replace the table's contents with it
    /// (sent at start and after a netlink overrun).
    Resync(Vec<DeviceRow>),
}

impl actix::Message for DeviceChange {
    type Result = ();
}

impl DeviceChange {
    /// Apply the change to a table keyed by device name. A consumer writing
    /// the statedb table does the same inside one write transaction.
    pub fn apply(self, table: &mut BTreeMap<String, DeviceRow>) {
        match self {
            DeviceChange::Upsert(row) => {
                table.insert(row.name.clone(), row);
            }
            DeviceChange::Delete { index, name } => {
                if table.get(&name).is_some_and(|r| r.index == index) {
                    table.remove(&name);
                }
            }
            DeviceChange::Resync(rows) => {
                table.clear();
                table.extend(rows.into_iter().map(|r| (r.name.clone(), r)));
            }
        }
    }
}

/// Why a `--devices` value was rejected. The message is meant to follow
/// `option --devices: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceFilterError {
    #[error("empty device name")]
    Empty,
    #[error("device name {name:?} is longer than {MAX_IFNAME_LEN} characters")]
    TooLong { name: String },
    #[error("device name {name:?} contains {ch:?}, which Linux does not allow in interface names")]
    InvalidChar { name: String, ch: char },
    #[error("device name {name:?} is not a valid interface name")]
    Reserved { name: String },
    #[error("device name {name:?}: '+' is only allowed once, at the end, as a prefix wildcard")]
    MisplacedWildcard { name: String },
    #[error("{name:?} is a wildcard; one interface name is expected")]
    Wildcard { name: String },
}

/// Checks one interface name (no wildcard), as `--devices` checks its
/// entries; the name.
pub fn interface_name(name: &str) -> Result<String, DeviceFilterError> {
    match parse_entry(name)? {
        DeviceMatch::Exact(n) => Ok(n),
        DeviceMatch::Prefix(_) => Err(DeviceFilterError::Wildcard {
            name: name.to_string(),
        }),
    }
}

/// One `--devices` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DeviceMatch {
    /// `eth0`: this name only.
    Exact(String),
    /// `eth+`: every name starting with `eth` (a lone `+` matches all).
    Prefix(String),
}

/// The `--devices` filter in Cilium's syntax: exact interface names and
/// iptables-like prefix wildcards (`eth+`). An empty filter (the option not
/// set) matches every device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    entries: Vec<DeviceMatch>,
}

impl DeviceFilter {
    /// A filter that matches every device (`--devices` not set).
    pub fn all() -> Self {
        Self::default()
    }

    /// Build a filter from entries such as `eth0` or `eth+`.
    pub fn new<I, S>(entries: I) -> Result<Self, DeviceFilterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let entries = entries
            .into_iter()
            .map(|e| parse_entry(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { entries })
    }

    /// No entries: every device matches.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `name` passes the filter.
    pub fn matches(&self, name: &str) -> bool {
        self.entries.is_empty()
            || self.entries.iter().any(|e| match e {
                DeviceMatch::Exact(n) => n == name,
                DeviceMatch::Prefix(p) => name.starts_with(p.as_str()),
            })
    }
}

fn parse_entry(entry: &str) -> Result<DeviceMatch, DeviceFilterError> {
    let (name, prefix) = match entry.strip_suffix('+') {
        Some(stem) => (stem, true),
        None => (entry, false),
    };
    if name.contains('+') {
        return Err(DeviceFilterError::MisplacedWildcard {
            name: entry.to_string(),
        });
    }
    if name.is_empty() && !prefix {
        return Err(DeviceFilterError::Empty);
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(DeviceFilterError::TooLong {
            name: entry.to_string(),
        });
    }
    // Linux's dev_valid_name(): no '/', ':' or whitespace, not "." or "..".
    if let Some(ch) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(DeviceFilterError::InvalidChar {
            name: entry.to_string(),
            ch,
        });
    }
    if !prefix && (name == "." || name == "..") {
        return Err(DeviceFilterError::Reserved {
            name: entry.to_string(),
        });
    }
    Ok(if prefix {
        DeviceMatch::Prefix(name.to_string())
    } else {
        DeviceMatch::Exact(name.to_string())
    })
}

/// Parses the option value: entries separated by commas and/or whitespace
/// (`eth0,eth1`, `eth+ bond0`); empty pieces are skipped, so `""` is the
/// empty filter.
impl FromStr for DeviceFilter {
    type Err = DeviceFilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(
            s.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty()),
        )
    }
}

impl fmt::Display for DeviceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.entries {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            match e {
                DeviceMatch::Exact(n) => f.write_str(n)?,
                DeviceMatch::Prefix(p) => write!(f, "{p}+")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> DeviceRow {
        DeviceRow {
            name: "eth0".into(),
            index: 50,
            selected: true,
            kind: "veth".into(),
            mtu: 1500,
            hw_addr: "02:42:ac:13:00:03".into(),
            flags: flag_names(IFF_UP | IFF_BROADCAST | IFF_MULTICAST),
            addresses: vec![
                "172.19.0.3".parse().expect("ip"),
                "fc00:c111::3".parse().expect("ip"),
                "fe80::42:acff:fe13:3".parse().expect("ip"),
            ],
            master_index: None,
            oper_state: "up".into(),
        }
    }

    #[test]
    fn cells_match_cilium_dbg() {
        assert_eq!(
            row().cells(),
            vec![
                "eth0",
                "50",
                "true",
                "veth",
                "1500",
                "02:42:ac:13:00:03",
                "up|broadcast|multicast",
                "172.19.0.3, fc00:c111::3, fe80::42:acff:fe13:3",
            ]
        );
        let lo = DeviceRow {
            name: "lo".into(),
            index: 1,
            selected: false,
            kind: "device".into(),
            mtu: 65536,
            hw_addr: format_hw_addr(&[0; 6]),
            flags: flag_names(IFF_UP | IFF_LOOPBACK),
            addresses: vec![],
            master_index: None,
            oper_state: "unknown".into(),
        };
        assert_eq!(
            lo.cells(),
            vec!["lo", "1", "false", "device", "65536", "", "up|loopback", ""]
        );
    }

    #[test]
    fn hw_addr_formats_and_parses() {
        let a = format_hw_addr(&[0x0a, 0x94, 0xBF, 0x49, 0xd5, 0x50]);
        assert_eq!(a, "0a:94:bf:49:d5:50");
        assert_eq!(parse_mac(&a), Some([0x0a, 0x94, 0xbf, 0x49, 0xd5, 0x50]));
        assert_eq!(format_hw_addr(&[]), "");
        assert_eq!(parse_mac(""), None);
        assert_eq!(parse_mac("0a:94:bf:49:d5"), None);
        assert_eq!(parse_mac("0a:94:bf:49:d5:50:01"), None);
        // A 4-byte tunnel address is shown but is not a MAC.
        assert_eq!(format_hw_addr(&[192, 0, 2, 1]), "c0:00:02:01");
        assert_eq!(parse_mac("c0:00:02:01"), None);
    }

    #[test]
    fn filter_semantics_follow_cilium() {
        let f: DeviceFilter = "eth+,bond0".parse().expect("valid");
        assert!(f.matches("eth0"));
        assert!(f.matches("eth"));
        assert!(f.matches("eth1.100"));
        assert!(f.matches("bond0"));
        assert!(!f.matches("bond01"));
        assert!(!f.matches("veth1"));
        assert_eq!(f.to_string(), "eth+,bond0");

        let all = DeviceFilter::all();
        assert!(all.is_empty());
        assert!(all.matches("anything"));
        let empty: DeviceFilter = "".parse().expect("empty is valid");
        assert!(empty.is_empty());
        let spaced: DeviceFilter = "eth+ lxdbr+".parse().expect("valid");
        assert!(spaced.matches("lxdbr0") && !spaced.matches("lo"));
        let everything: DeviceFilter = "+".parse().expect("valid");
        assert!(!everything.is_empty() && everything.matches("lo"));
    }

    #[test]
    fn filter_rejects_invalid_names() {
        assert_eq!(
            DeviceFilter::new(["eth0", ""]),
            Err(DeviceFilterError::Empty)
        );
        assert!(matches!(
            "eth++".parse::<DeviceFilter>(),
            Err(DeviceFilterError::MisplacedWildcard { .. })
        ));
        assert!(matches!(
            "e+th".parse::<DeviceFilter>(),
            Err(DeviceFilterError::MisplacedWildcard { .. })
        ));
        assert!(matches!(
            "averyveryverylongname".parse::<DeviceFilter>(),
            Err(DeviceFilterError::TooLong { .. })
        ));
        assert!(matches!(
            "eth0/1".parse::<DeviceFilter>(),
            Err(DeviceFilterError::InvalidChar { ch: '/', .. })
        ));
        assert!(matches!(
            "eth0:1".parse::<DeviceFilter>(),
            Err(DeviceFilterError::InvalidChar { ch: ':', .. })
        ));
        assert!(matches!(
            "..".parse::<DeviceFilter>(),
            Err(DeviceFilterError::Reserved { .. })
        ));
        // 15 characters is the longest interface name.
        assert!("abcdefghijklmno".parse::<DeviceFilter>().is_ok());
        let msg = "eth0/1".parse::<DeviceFilter>().unwrap_err().to_string();
        assert!(msg.contains("eth0/1"), "{msg}");
    }

    #[test]
    fn apply_follows_renames_and_resyncs() {
        let mut table = BTreeMap::new();
        DeviceChange::Upsert(row()).apply(&mut table);
        assert_eq!(table.len(), 1);
        // A delete naming another index leaves the row alone.
        DeviceChange::Delete {
            index: 7,
            name: "eth0".into(),
        }
        .apply(&mut table);
        assert_eq!(table.len(), 1);
        DeviceChange::Delete {
            index: 50,
            name: "eth0".into(),
        }
        .apply(&mut table);
        assert!(table.is_empty());

        DeviceChange::Upsert(row()).apply(&mut table);
        let mut other = row();
        other.name = "eth1".into();
        other.index = 51;
        DeviceChange::Resync(vec![other.clone()]).apply(&mut table);
        assert_eq!(table.into_values().collect::<Vec<_>>(), vec![other]);
    }

    #[test]
    fn write_change_keeps_the_table_like_apply() {
        let db = statedb::Db::open_temporary().expect("db");
        let table = statedb::Table::open(&db, DEVICES).expect("table");
        let rows = |t: &statedb::Table<DeviceRow>| {
            t.list(&db)
                .expect("list")
                .into_iter()
                .map(|e| e.row)
                .collect::<Vec<_>>()
        };
        write_change(&db, &table, DeviceChange::Upsert(row())).expect("upsert");
        assert_eq!(rows(&table), vec![row()]);

        // An unchanged upsert writes nothing.
        let rev = table.revision(&db);
        write_change(&db, &table, DeviceChange::Upsert(row())).expect("upsert");
        assert_eq!(table.revision(&db), rev);

        // Delete for another index is ignored; for the right one it removes.
        let del = |index| DeviceChange::Delete {
            index,
            name: "eth0".into(),
        };
        write_change(&db, &table, del(7)).expect("delete");
        assert_eq!(rows(&table).len(), 1);
        write_change(&db, &table, del(50)).expect("delete");
        assert!(rows(&table).is_empty());

        // Resync replaces everything and leaves unchanged rows untouched.
        let mut eth1 = row();
        eth1.name = "eth1".into();
        eth1.index = 51;
        write_change(&db, &table, DeviceChange::Upsert(row())).expect("upsert");
        write_change(&db, &table, DeviceChange::Upsert(eth1.clone())).expect("upsert");
        let before = table.list(&db).expect("list");
        let mut eth2 = row();
        eth2.name = "eth2".into();
        eth2.index = 52;
        write_change(
            &db,
            &table,
            DeviceChange::Resync(vec![eth1.clone(), eth2.clone()]),
        )
        .expect("resync");
        let after = table.list(&db).expect("list");
        assert_eq!(
            after.iter().map(|e| e.row.clone()).collect::<Vec<_>>(),
            vec![eth1.clone(), eth2]
        );
        let rev_of = |entries: &[statedb::Entry<DeviceRow>], name: &str| {
            entries
                .iter()
                .find(|e| e.row.name == name)
                .map(|e| e.revision)
        };
        assert_eq!(rev_of(&before, "eth1"), rev_of(&after, "eth1"));
        // Found by ifindex through the secondary index.
        let by_index = DEVICES.secondary[0];
        let found = table.get(&db, by_index, &51u32).expect("get");
        assert_eq!(found.map(|e| e.row), Some(eth1));
    }
}
