//! actors: the agent's actix actors (Device, Policy, Service, Lease, Announce),
//! the messages they exchange and the state-table rows they own.

pub mod policy;
pub mod selector;
pub mod tables;
pub mod election;
pub mod selection;
pub mod kubeclient;
