//! The Kubernetes side shared by the actors: the throttled client every
//! request goes through ([`client`]), label selectors as Kubernetes
//! evaluates them ([`selector`]), Events on Services ([`events`]), the
//! Announced condition in their status ([`status`]) and watches kept in
//! reflector stores ([`reflect`]).

pub mod client;
pub mod events;
pub mod reflect;
pub mod selector;
pub mod status;
