//! The `node-heartbeat` election: one heartbeat Lease per node fences every
//! claim of that node; an assignment record in a few shards says which node
//! announces each claim; free claims go to the rendezvous winner among the
//! eligible live nodes; a dead node is evicted by one write and its claims
//! taken over in batches. API cost O(nodes), not O(Services).
//!
//! [`core`] is the protocol as plain code; [`rendezvous`] the placement;
//! [`mirror`] keeps the per-Service Leases as a lazy mirror of the record;
//! the actor carries the core's decisions out.

mod actor;
pub mod core;
pub mod mirror;
pub mod rendezvous;

pub use actor::{
    EVICTED_BY, HEARTBEAT_LABEL, HEARTBEAT_PREFIX, HeartbeatActor, HeartbeatConfig, RECORD_KEY,
    RECORD_LABEL, RECORD_PREFIX, heartbeat_of, release_heartbeat, shard_of_configmap,
};

#[cfg(test)]
mod model_tests;
