//! l2announcer: the node agent's wiring — command line, configuration, the
//! local API on a unix socket, and the `run` loop that starts the actors.
//! The logic of devices, policies, leases and the datapath lives in the
//! `actors`, `statedb` and `bpf` crates; this crate only connects them.

pub mod api;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod duration;
pub mod metrics;
pub mod run;
pub mod tables;
