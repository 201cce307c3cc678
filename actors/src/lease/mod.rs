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

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{ListParams, PostParams};

/// Writes a release (`lease`, carrying the resourceVersion this node last
/// wrote or saw). A renewal of this node still in flight may land first
/// and the release is then refused (409): the Lease is read again and the
/// release written on its new version while `ours` says the Lease is still
/// this node's to release. `Ok(false)`: it no longer was, nothing written.
/// Only for shutdown, when nothing of this node can open a fence for the
/// Lease again: `ours` cannot tell the crossing renewal from a new one.
pub async fn write_release(
    api: &Api<Lease>,
    name: &str,
    mut lease: Lease,
    ours: impl Fn(&Lease) -> bool,
) -> Result<bool, kube::Error> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < ATTEMPTS => {}
            Err(e) => return Err(e),
        }
        // A list by name: the Role grants no `get` on Leases.
        let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
        let listed = api.list(&by_name).await?.items;
        let Some(current) = listed
            .into_iter()
            .find(|l| l.metadata.name.as_deref() == Some(name))
        else {
            return Ok(false);
        };
        if !ours(&current) {
            return Ok(false);
        }
        lease.metadata.resource_version = current.metadata.resource_version;
    }
}

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
