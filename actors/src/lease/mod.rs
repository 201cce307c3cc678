//! The elections over Kubernetes Leases: the LeaseActor (requests, the
//! watch, fences, the `leases` table) and the per-lease decision code it
//! calls ([`election`]), which is unit-tested without a runtime.

mod actor;
pub mod election;

pub use actor::{
    GC_INTERVAL, LEASE_PREFIX, LeaseActor, LeaseConfig, LeaseObserver, NoLeaseObserver, from_lease,
    lease_for_service, renewal_rate, sizing_warning, to_lease,
};
pub use election::{LeaseTiming, lease_name};
