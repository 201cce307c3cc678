//! Which claims this node campaigns for and what it announces: the
//! ServiceActor and the plain decision code it calls — [`selection`] (a
//! Service's candidacy on this node), [`claims`] (Services sharing an IP
//! form one claim).

mod actor;
pub mod claims;
pub mod selection;

pub use actor::{
    AnnounceObserver, ElectionRecipients, NoAnnounceObserver, ServiceActor, ServiceConfig,
};
pub use claims::{ClaimChange, ClaimGroups};
pub use selection::{Candidacy, NodeView, ServiceView, candidacy, service_view};
