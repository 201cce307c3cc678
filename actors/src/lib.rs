//! actors: the agent's control plane. One folder per actor, each holding the
//! actor (an actix shell) and the plain decision code it calls, which is
//! unit-tested without a runtime:
//!
//! * [`devices`]: netlink → the `devices` table (DeviceActor, DeviceTracker,
//!   the `--devices` filter and the selection rules);
//! * [`policy`]: CiliumL2AnnouncementPolicy objects → compiled policies and
//!   their status conditions (PolicyActor, `compile`);
//! * [`service`]: Services, EndpointSlices and this Node → which claims this
//!   node campaigns for, and the `l2-announce` rows of the claims it holds
//!   (ServiceActor, `candidacy`, claim grouping);
//! * [`lease`]: the elections over Kubernetes Leases (LeaseActor,
//!   `Election`);
//! * [`announce`]: the one owner of the eBPF datapath — it reconciles
//!   `l2-announce` into the responder maps, opens and closes fences as the
//!   elections tell it, and sends gratuitous ARP / unsolicited NA;
//! * [`pods`]: the pods of this node → gratuitous ARP / unsolicited NA for
//!   their addresses on the pod interface (PodActor, `PodAnnouncements`);
//! * [`k8s`]: the throttled Kubernetes client, label selectors, Events.
//!
//! [`ControlPlane`] wires them; the agent and the tests use the same builder.
//! It knows nothing of the command line or of the agent's local API (that is
//! the `l2announcer` package), and nothing of how eBPF programs are loaded
//! (that is the `bpf` package).

pub mod announce;
pub mod control_plane;
pub mod devices;
pub mod k8s;
pub mod lease;
pub mod messages;
pub mod pods;
pub mod policy;
pub mod service;
pub mod tables;
pub mod vec_set;

pub use control_plane::{ControlPlane, ControlPlaneBuilder, ControlPlaneError, RunId};
