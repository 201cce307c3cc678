//! The Kubernetes side shared by the actors: the throttled client every
//! request goes through ([`client`]), label selectors as Kubernetes
//! evaluates them ([`selector`]) and Events on Services ([`events`]).

pub mod client;
pub mod events;
pub mod selector;
