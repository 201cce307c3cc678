//! actors: the agent's actix actors (Device, Policy, Service, Lease, Announce),
//! the messages they exchange and the state-table rows they own.

pub mod announce;
pub mod device_table;
pub mod devices;
pub mod election;
pub mod events;
pub mod kubeclient;
pub mod lease;
pub mod messages;
pub mod policy;
pub mod policy_actor;
pub mod selection;
pub mod selector;
pub mod service_actor;
pub mod tables;
