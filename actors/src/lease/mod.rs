//! The elections, in two modes (`--l2-announcements-election`):
//! * `node-heartbeat` (default, [`heartbeat`]): one heartbeat Lease per
//!   node, an assignment record, rendezvous placement; API cost O(nodes).
//! * `per-service`: Cilium's scheme, one Lease per claim renewed every
//!   retry period (the LeaseActor and [`election`]); `client-go` is the
//!   same with candidates polling every Lease instead of watching, as
//!   client-go's leader election does (a benchmark baseline only).
//!
//! Both answer the ServiceActor's Campaign/Withdraw with Leadership and
//! drive the announcer's fences.

mod actor;
pub mod election;
pub mod heartbeat;

pub use actor::{
    GC_INTERVAL, LEASE_PREFIX, LeaseActor, LeaseConfig, LeaseObserver, NoLeaseObserver, from_lease,
    lease_for_service, renewal_rate, sizing_warning, to_lease,
};
pub use election::{LeaseTiming, lease_name};

/// Which election the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElectionMode {
    #[default]
    NodeHeartbeat,
    PerService,
    /// `per-service` with candidates polling every Lease every retry period
    /// (client-go's leader election); for the benchmark only.
    ClientGo,
}

impl ElectionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ElectionMode::NodeHeartbeat => "node-heartbeat",
            ElectionMode::PerService => "per-service",
            ElectionMode::ClientGo => "client-go",
        }
    }
}

impl std::fmt::Display for ElectionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ElectionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "node-heartbeat" => Ok(ElectionMode::NodeHeartbeat),
            "per-service" => Ok(ElectionMode::PerService),
            "client-go" => Ok(ElectionMode::ClientGo),
            other => Err(format!(
                "must be node-heartbeat or per-service, not {other:?}"
            )),
        }
    }
}
