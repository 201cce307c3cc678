//! Messages the actors exchange. Services are named `namespace/name`.

use actix::Message;

use crate::policy::CompiledPolicy;

/// ServiceActor -> election: this node is a candidate for the claim
/// `service` (named after its first member), whose members are `members`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Campaign {
    pub service: String,
    pub members: Vec<String>,
}

/// ServiceActor -> election: whether a valid policy selects this node at
/// all (its node selector). The heartbeat election says so in the node's
/// heartbeat, so that others do not wait for the bids of a node that is a
/// candidate for nothing.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct NodeSelected(pub bool);

/// ServiceActor -> election: the first full evaluation is done; every
/// claim this node is eligible for has been campaigned for.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CandidaciesSynced;

/// ServiceActor -> election: no longer a candidate; release at once.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Withdraw {
    pub service: String,
}

/// Election -> ServiceActor: leadership of a claim began or ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Leadership {
    pub service: String,
    pub held: bool,
}

/// Shutdown: close every fence, then release every held lease; answers
/// when the requests are done.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ReleaseAll;

/// One policy as the PolicyActor found it.
#[derive(Debug, Clone)]
pub struct PolicyState {
    pub name: String,
    /// `None` when invalid; `problems` then says why.
    pub compiled: Option<CompiledPolicy>,
    /// `condition-type: message` of each invalid part.
    pub problems: Vec<String>,
    pub interfaces: Vec<String>,
}

/// PolicyActor -> ServiceActor: every policy, valid or not.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PolicyStates(pub Vec<PolicyState>);

/// Device tracking -> ServiceActor: the names of the selected devices.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SelectedDevices(pub std::collections::BTreeSet<String>);
