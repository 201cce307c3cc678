//! The Kubernetes side shared by the actors: the throttled client every
//! request goes through ([`client`]), label selectors as Kubernetes
//! evaluates them ([`selector`]), Events on Services ([`events`]) and the
//! Announced condition in their status ([`status`]).

pub mod client;
pub mod events;
pub mod selector;
pub mod status;
