//! The agent's state tables: row types, their indexes and how they print.
//! `devices` rows come from [`crate::devices`]; the others are defined here.
//!

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use statedb::{Index, Row, TableDef};

pub use crate::devices::DEVICES;

/// Every table name the agent serves, in the order the CLI lists them.
pub const NAMES: [&str; 4] = ["devices", "l2-announce", "leases", "policies"];

/// One IP announced on one interface, wanted by one or more Services.
///
/// A row is desired state only for the agent run that wrote it (`run`):
/// rows a previous process left in the database (crash, reboot, upgrade)
/// are *inherited*. The datapath keeps what they left in the maps under the
/// fence the previous process gave it (which closes by itself), never
/// announces or re-arms them, and prunes them unless this run confirms
/// their claim and writes the row again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2AnnounceRow {
    pub ip: IpAddr,
    pub network_interface: String,
    /// `namespace/name` of every Service that wants this entry, sorted.
    pub origins: Vec<String>,
    /// The claim (election) the entry belongs to: the datapath answers it
    /// only while that claim's fence is open.
    #[serde(default)]
    pub claim: String,
    /// The agent run that wrote the row (see [`crate::RunId`]).
    #[serde(default)]
    pub run: String,
    /// Where the entry stands with the datapath (written by the reconciler).
    #[serde(default)]
    pub status: statedb::Status,
}

impl L2AnnounceRow {
    pub const HEADER: [&'static str; 5] = ["IP", "NetworkInterface", "Origins", "Claim", "Status"];

    /// The primary key: IP and interface.
    pub fn key(&self) -> String {
        announce_key(self.ip, &self.network_interface)
    }

    /// Whether the row was written by another run than `run`.
    pub fn inherited(&self, run: &crate::RunId) -> bool {
        self.run != run.as_str()
    }

    pub fn cells(&self) -> Vec<String> {
        vec![
            self.ip.to_string(),
            self.network_interface.clone(),
            self.origins.join(", "),
            self.claim.clone(),
            self.status.to_string(),
        ]
    }
}

/// Primary key text of an `l2-announce` row: sorts by IP family, then IP.
pub fn announce_key(ip: IpAddr, interface: &str) -> String {
    match ip {
        IpAddr::V4(v4) => format!("4:{:08x}:{interface}", u32::from(v4)),
        IpAddr::V6(v6) => format!("6:{:032x}:{interface}", u128::from(v6)),
    }
}

/// This node's view of one Service's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRow {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Lease object's name, `cilium-l2announce-<ns>-<name>`.
    pub lease: String,
    pub holder: String,
    /// Whether this node holds it.
    pub me: bool,
    /// RFC 3339 times as the Lease carries them; empty when unset.
    pub acquired: String,
    pub renewed: String,
    pub transitions: i32,
}

impl LeaseRow {
    pub const HEADER: [&'static str; 7] = [
        "Service",
        "Lease",
        "Holder",
        "Me",
        "Acquired",
        "Renewed",
        "Transitions",
    ];

    pub fn cells(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.lease.clone(),
            self.holder.clone(),
            self.me.to_string(),
            self.acquired.clone(),
            self.renewed.clone(),
            self.transitions.to_string(),
        ]
    }
}

/// A CiliumL2AnnouncementPolicy as this node evaluated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    pub name: String,
    pub valid: bool,
    /// `type: message` of each condition that is True.
    pub conditions: Vec<String>,
    /// `namespace/name` of the Services it selects for this node.
    pub services: Vec<String>,
    /// The interface regexes (empty = every selected device).
    pub interfaces: Vec<String>,
}

impl PolicyRow {
    pub const HEADER: [&'static str; 5] = ["Name", "Valid", "Conditions", "Services", "Interfaces"];

    pub fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.valid.to_string(),
            self.conditions.join("; "),
            self.services.join(", "),
            self.interfaces.join(", "),
        ]
    }
}

impl Row for L2AnnounceRow {
    fn header() -> Vec<&'static str> {
        L2AnnounceRow::HEADER.to_vec()
    }
    fn cells(&self) -> Vec<String> {
        L2AnnounceRow::cells(self)
    }
}

impl statedb::Reconcilable for L2AnnounceRow {
    fn status(&self) -> &statedb::Status {
        &self.status
    }
    fn set_status(&mut self, status: statedb::Status) {
        self.status = status;
    }
}

impl Row for LeaseRow {
    fn header() -> Vec<&'static str> {
        LeaseRow::HEADER.to_vec()
    }
    fn cells(&self) -> Vec<String> {
        LeaseRow::cells(self)
    }
}

impl Row for PolicyRow {
    fn header() -> Vec<&'static str> {
        PolicyRow::HEADER.to_vec()
    }
    fn cells(&self) -> Vec<String> {
        PolicyRow::cells(self)
    }
}

/// `l2-announce` by claim.
pub const L2_ANNOUNCE_BY_CLAIM: Index<L2AnnounceRow> =
    Index::non_unique("claim", |r| vec![r.claim.clone().into_bytes()]);

/// `l2-announce`: primary (IP, interface); secondary by origin Service, by
/// interface and by claim.
pub const L2_ANNOUNCE: TableDef<L2AnnounceRow> = TableDef {
    name: "l2-announce",
    primary: Index::primary("id", |r| r.key().into_bytes()),
    secondary: &[
        Index::non_unique("origin", |r| {
            r.origins.iter().map(|o| o.clone().into_bytes()).collect()
        }),
        Index::non_unique("interface", |r| {
            vec![r.network_interface.clone().into_bytes()]
        }),
        L2_ANNOUNCE_BY_CLAIM,
    ],
};

/// `leases`: primary Service; unique secondary by Lease name.
pub const LEASES: TableDef<LeaseRow> = TableDef {
    name: "leases",
    primary: Index::primary("service", |r| r.service.clone().into_bytes()),
    secondary: &[Index::unique("lease", |r| r.lease.clone().into_bytes())],
};

/// `policies`: primary policy name.
pub const POLICIES: TableDef<PolicyRow> = TableDef {
    name: "policies",
    primary: Index::primary("name", |r| r.name.clone().into_bytes()),
    secondary: &[],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_keys_sort_numerically() {
        let a = announce_key("192.0.2.9".parse().expect("ip"), "eth0");
        let b = announce_key("192.0.2.10".parse().expect("ip"), "eth0");
        let c = announce_key("2001:db8::1".parse().expect("ip"), "eth0");
        assert!(a < b && b < c);
    }
}
