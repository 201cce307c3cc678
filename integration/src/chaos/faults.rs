//! The faults the chaos suite injects into a lab, each with the longest gap
//! in answers it may cost (its bound) and why, from the lab's timings:
//! lease duration 3 s, renew deadline 1 s, retry period 200 ms.
//!
//! The failover window: a holder that stops renewing keeps answering until
//! its fence closes (its last renewal + the renew deadline); the others may
//! take the lease a lease duration after the last renewal they observed and
//! try every retry period. So a takeover ends a gap at most
//! lease duration + retry period after the last renewal; 1 s more covers
//! the acquire request, the row, the reconcile, the gratuitous ARP and the
//! 10 ms probe cadence on a loaded two-core machine (the same bound
//! the end-to-end failover test uses).

use std::time::Duration;

use serde::Serialize;

use crate::apiserver::ClientMatch;
use crate::lab::{LEASE_DURATION, Lab, LabError, RETRY_PERIOD};

/// Lease duration + retry period + 1 s (see the module docs).
pub const FAILOVER_WINDOW: Duration = Duration::from_millis(
    LEASE_DURATION.as_millis() as u64 + RETRY_PERIOD.as_millis() as u64 + 1_000,
);

/// How long a fault that is held (a freeze, a partition, a pause, a link
/// down) lasts: longer than the lease, so the claim must move or lapse.
pub const HOLD: Duration = Duration::from_millis(LEASE_DURATION.as_millis() as u64 + 2_000);

/// How long the API server is away when restarted (listener and
/// connections closed, objects kept), as a real restart takes seconds.
pub const API_DOWNTIME: Duration = Duration::from_secs(2);

/// After a fault's last action, how long its consequences are still its
/// own (a fence left open, gratuitous repeats 1 s apart): a lease duration
/// and a second.
pub const AFTERMATH: Duration = Duration::from_millis(LEASE_DURATION.as_millis() as u64 + 1_000);

/// A fault of the chaos suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL of the holder; started again once another node took over.
    KillRestartAfterTakeover,
    /// SIGKILL, the node's pins removed (bpffs empties on reboot), started
    /// again with its state directory kept, after the takeover.
    Reboot,
    /// SIGSTOP of the holder for [`HOLD`], then SIGCONT.
    Freeze,
    /// The holder's API requests held by the API server for [`HOLD`].
    CutOffFromApi,
    /// Every client's API requests held for [`HOLD`].
    ApiPausedForAll,
    /// The API server restarted with its objects kept ([`API_DOWNTIME`]).
    ApiRestart,
    /// SIGTERM of the holder (it releases), started again after the
    /// takeover: a rolling update.
    RollingUpdate,
    /// SIGKILL of the holder and an immediate start: within the lease.
    RestartWithinLease,
    /// The holder's `eth0` (its LAN link) down for [`HOLD`], then up; its
    /// agent stays connected over `eth1`.
    LanLinkDown,
    /// The holder's `eth0` without carrier for [`HOLD`] (the bridge's end
    /// of its veth down), then back; `eth0` itself stays up.
    LanCarrierLoss,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::KillRestartAfterTakeover,
        FaultKind::Reboot,
        FaultKind::Freeze,
        FaultKind::CutOffFromApi,
        FaultKind::ApiPausedForAll,
        FaultKind::ApiRestart,
        FaultKind::RollingUpdate,
        FaultKind::RestartWithinLease,
        FaultKind::LanLinkDown,
        FaultKind::LanCarrierLoss,
    ];

    /// Its key on the command line (`chaos --faults a,b`).
    pub fn key(self) -> &'static str {
        match self {
            FaultKind::KillRestartAfterTakeover => "kill-restart",
            FaultKind::Reboot => "reboot",
            FaultKind::Freeze => "freeze",
            FaultKind::CutOffFromApi => "cut-off",
            FaultKind::ApiPausedForAll => "api-pause",
            FaultKind::ApiRestart => "api-restart",
            FaultKind::RollingUpdate => "rolling",
            FaultKind::RestartWithinLease => "restart-within-lease",
            FaultKind::LanLinkDown => "link-down",
            FaultKind::LanCarrierLoss => "carrier-loss",
        }
    }

    /// The fault whose [`Self::key`] is `key`.
    pub fn from_key(key: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|f| f.key() == key)
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRestartAfterTakeover => "sigkill, restart after takeover",
            FaultKind::Reboot => "reboot (pins removed)",
            FaultKind::Freeze => "sigstop > lease, sigcont",
            FaultKind::CutOffFromApi => "holder cut off from API > lease",
            FaultKind::ApiPausedForAll => "API paused for all > lease",
            FaultKind::ApiRestart => "API server restart",
            FaultKind::RollingUpdate => "sigterm, restart (rolling)",
            FaultKind::RestartWithinLease => "restart within lease",
            FaultKind::LanLinkDown => "holder LAN link down > lease",
            FaultKind::LanCarrierLoss => "holder LAN carrier lost > lease",
        }
    }

    /// The longest gap in answers this fault may cost.
    pub fn gap_bound(self) -> Duration {
        match self {
            FaultKind::KillRestartAfterTakeover
            | FaultKind::Reboot
            | FaultKind::Freeze
            | FaultKind::CutOffFromApi => FAILOVER_WINDOW,
            FaultKind::ApiPausedForAll => HOLD + RETRY_PERIOD + Duration::from_secs(1),
            FaultKind::ApiRestart => API_DOWNTIME + RETRY_PERIOD + Duration::from_secs(1),
            FaultKind::RollingUpdate => Duration::from_secs(1),
            FaultKind::RestartWithinLease => Duration::ZERO,
            FaultKind::LanLinkDown | FaultKind::LanCarrierLoss => {
                RETRY_PERIOD + Duration::from_secs(1)
            }
        }
    }

    /// Whether it hits every node at once (the API server's faults) rather
    /// than the target alone.
    pub fn hits_everyone(self) -> bool {
        matches!(self, FaultKind::ApiPausedForAll | FaultKind::ApiRestart)
    }

    /// Why [`Self::gap_bound`] is what it is.
    pub fn bound_reason(self) -> &'static str {
        match self {
            FaultKind::KillRestartAfterTakeover
            | FaultKind::Reboot
            | FaultKind::Freeze
            | FaultKind::CutOffFromApi => {
                "the failover window: lease + retry period + 1 s; the holder stops renewing, its fence closes, another node takes over after the lease"
            }
            FaultKind::ApiPausedForAll => {
                "nobody can renew or take over while the API is away, so every fence closes (renew deadline after the last renewal); after it a renewal at the next retry: pause + retry period + 1 s"
            }
            FaultKind::ApiRestart => {
                "as a pause for everyone of the downtime: downtime + retry period + 1 s"
            }
            FaultKind::RollingUpdate => {
                "a graceful stop releases the lease; the next node takes it at once: under 1 s"
            }
            FaultKind::RestartWithinLease => {
                "the restarted agent keeps its pinned fences and renews its own lease before they close: no unanswered probe"
            }
            FaultKind::LanLinkDown | FaultKind::LanCarrierLoss => {
                "a holder whose announcing interfaces are all down or without carrier is no candidate any more: it closes the fence and releases, another node takes over within retry period + 1 s"
            }
        }
    }
}

/// The node and Service a fault is aimed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub service: String,
    /// The holder of the Service when the fault began.
    pub node: String,
}

/// A hold: the fault's own duration, not a wait for anything.
fn hold(d: Duration) {
    std::thread::sleep(d);
}

/// Waits until another node holds the target's Service, then starts the
/// target's agent again and waits until it is ready.
fn restart_after_takeover(lab: &Lab, t: &Target) -> Result<(), LabError> {
    lab.wait_holder(&t.service, Some(&t.node), Duration::from_secs(20))?;
    lab.start(&t.node)?;
    lab.wait_ready(&t.node, Duration::from_secs(20))
}

/// Injects `kind` on `t` and undoes it; returns after the last action.
pub fn inject(lab: &Lab, kind: FaultKind, t: &Target) -> Result<(), LabError> {
    let node = t.node.as_str();
    match kind {
        FaultKind::KillRestartAfterTakeover => {
            lab.kill(node, libc::SIGKILL)?;
            restart_after_takeover(lab, t)
        }
        FaultKind::Reboot => {
            lab.kill(node, libc::SIGKILL)?;
            lab.state.remove_pins(node)?;
            restart_after_takeover(lab, t)
        }
        FaultKind::Freeze => {
            lab.kill(node, libc::SIGSTOP)?;
            hold(HOLD);
            lab.kill(node, libc::SIGCONT).map(drop)
        }
        FaultKind::CutOffFromApi => {
            lab.pause_agent_requests(node)?;
            hold(HOLD);
            lab.resume_agent_requests(node)
        }
        FaultKind::ApiPausedForAll => {
            let server = lab.apiserver()?;
            server.pause(ClientMatch::All);
            hold(HOLD);
            server.unpause(&ClientMatch::All);
            Ok(())
        }
        FaultKind::ApiRestart => lab.api_outage(API_DOWNTIME),
        FaultKind::RollingUpdate => {
            lab.kill(node, libc::SIGTERM)?;
            restart_after_takeover(lab, t)
        }
        FaultKind::RestartWithinLease => {
            lab.kill(node, libc::SIGKILL)?;
            lab.start(node)?;
            lab.wait_ready(node, Duration::from_secs(20))
        }
        FaultKind::LanLinkDown => {
            lab.set_lan_link(node, false)?;
            hold(HOLD);
            lab.set_lan_link(node, true)
        }
        FaultKind::LanCarrierLoss => {
            lab.set_lan_carrier(node, false)?;
            hold(HOLD);
            lab.set_lan_carrier(node, true)
        }
    }
}

/// Undoes whatever a failed injection may have left: pauses lifted, links
/// up, agents continued or started. Best effort; what it did, for the
/// report.
pub fn repair(lab: &Lab) -> Vec<String> {
    let mut done = Vec::new();
    if let Ok(server) = lab.apiserver() {
        server.unpause_all();
    }
    for n in lab.state.nodes.clone() {
        if lab.set_lan_link(&n.name, true).is_err() {
            done.push(format!("could not set {}'s eth0 up", n.name));
        }
        if lab.set_lan_carrier(&n.name, true).is_err() {
            done.push(format!("could not give {}'s eth0 its carrier back", n.name));
        }
        if lab.state.agent_pid(&n.name).is_some() {
            let _ = lab.state.signal_agent(&n.name, libc::SIGCONT);
        } else {
            match lab.start(&n.name) {
                Ok(()) => done.push(format!("started {}", n.name)),
                Err(e) => done.push(format!("could not start {}: {e}", n.name)),
            }
        }
    }
    done
}
