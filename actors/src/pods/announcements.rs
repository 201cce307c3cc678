//! Which pod addresses this node announces, and when: plain state that the
//! PodActor feeds with pod watch events and with the pod interface's row of
//! the `devices` table, and that says which gratuitous ARP / unsolicited NA
//! to send.
//!
//! * A pod counts when it is scheduled on this node, does not use the
//!   host's network and has not terminated ([`pod_ips`]).
//! * Its addresses are announced when it gets them, when they change (the
//!   new ones only), and once when the agent starts: the first list makes
//!   every pod new. A re-list after a broken watch announces only what
//!   changed meanwhile and forgets the pods that are gone.
//! * Every address is announced again when the interface first shows up
//!   or changes its ifindex or MAC (neighbours must learn the new MAC).
//! * Each announcement is a series on the shared [`GratuitousSchedule`]:
//!   the first frame waits until the interface is up, the repeats stop as
//!   soon as the address no longer belongs to a local pod.
//!
//! It sends nothing itself and knows nothing of the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use bpf::MacAddr;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::announce::GratuitousConfig;
use crate::announce::gratuitous::{Check, GratuitousSchedule};
use crate::devices::DeviceRow;

/// Pod phases after which a pod's addresses are free for reuse.
const TERMINAL_PHASES: [&str; 2] = ["Succeeded", "Failed"];

/// The addresses of `pod` that node `node` announces: none for a pod
/// scheduled elsewhere (or not yet), one on the host's network, or one that
/// has terminated; otherwise every parseable unicast address of
/// `status.podIPs` (`status.podIP` when the list is missing).
pub fn pod_ips(pod: &Pod, node: &str) -> BTreeSet<IpAddr> {
    let Some(spec) = pod.spec.as_ref() else {
        return BTreeSet::new();
    };
    if spec.node_name.as_deref() != Some(node) || spec.host_network == Some(true) {
        return BTreeSet::new();
    }
    let Some(status) = pod.status.as_ref() else {
        return BTreeSet::new();
    };
    if status
        .phase
        .as_deref()
        .is_some_and(|p| TERMINAL_PHASES.contains(&p))
    {
        return BTreeSet::new();
    }
    let listed: Vec<&str> = match status.pod_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(|p| p.ip.as_str()).collect(),
        _ => status.pod_ip.as_deref().into_iter().collect(),
    };
    listed
        .into_iter()
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .filter(is_announceable)
        .collect()
}

/// Whether an address can be claimed on a LAN with gratuitous ARP / NA.
fn is_announceable(ip: &IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
        && match ip {
            IpAddr::V4(v4) => !v4.is_broadcast(),
            IpAddr::V6(_) => true,
        }
}

/// The pod interface as the `devices` table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodDevice {
    pub index: u32,
    pub mac: MacAddr,
    /// Administratively up.
    pub up: bool,
}

impl PodDevice {
    /// The device of a row; `None` when it has no 6-byte MAC.
    pub fn of(row: &DeviceRow) -> Option<PodDevice> {
        Some(PodDevice {
            index: row.index,
            mac: row.mac()?,
            up: row.is_up(),
        })
    }
}

/// A local pod: its uid (a pod deleted and created again under the same
/// name is a new pod) and the addresses announced for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalPod {
    uid: String,
    ips: BTreeSet<IpAddr>,
}

/// The local pods' addresses and their announcement schedule.
#[derive(Debug)]
pub struct PodAnnouncements {
    node: String,
    device: Option<PodDevice>,
    /// `namespace/name` -> the pod, for pods with addresses to announce.
    pods: BTreeMap<String, LocalPod>,
    /// Pods seen since a re-list began (`None` outside one).
    relisted: Option<BTreeSet<String>>,
    schedule: GratuitousSchedule,
}

impl PodAnnouncements {
    /// Announcements for the pods of `node`, repeated as `gratuitous` says.
    pub fn new(node: &str, gratuitous: GratuitousConfig) -> Self {
        PodAnnouncements {
            node: node.to_string(),
            device: None,
            pods: BTreeMap::new(),
            relisted: None,
            schedule: GratuitousSchedule::new(gratuitous),
        }
    }

    /// A pod was created or changed (or listed): the addresses it has now
    /// that were not announced for it yet, each now scheduled.
    pub fn pod_applied(&mut self, pod: &Pod) -> BTreeSet<IpAddr> {
        let key = pod_key(pod);
        if let Some(seen) = self.relisted.as_mut() {
            seen.insert(key.clone());
        }
        let uid = pod.uid().unwrap_or_default();
        let ips = pod_ips(pod, &self.node);
        let before = match self.pods.get(&key) {
            Some(p) if p.uid == uid => p.ips.clone(),
            _ => BTreeSet::new(),
        };
        let new: BTreeSet<IpAddr> = ips.difference(&before).copied().collect();
        if ips.is_empty() {
            self.pods.remove(&key);
        } else {
            self.pods.insert(key, LocalPod { uid, ips });
        }
        for ip in &new {
            self.start(*ip);
        }
        new
    }

    /// A pod was deleted: its addresses are no longer announced (a repeat
    /// still due is dropped, unless another local pod has the address).
    pub fn pod_deleted(&mut self, pod: &Pod) {
        self.pods.remove(&pod_key(pod));
    }

    /// The watch lists every pod again (at start, or after it broke).
    pub fn relist_started(&mut self) {
        self.relisted = Some(BTreeSet::new());
    }

    /// The list is complete: pods it did not name are gone.
    pub fn relist_done(&mut self) {
        if let Some(seen) = self.relisted.take() {
            self.pods.retain(|k, _| seen.contains(k));
        }
    }

    /// The pod interface's row changed (or vanished: `None`). A new
    /// ifindex or MAC announces every local address again; whether it did.
    pub fn device_changed(&mut self, device: Option<PodDevice>) -> bool {
        let old = std::mem::replace(&mut self.device, device);
        let Some(new) = device else {
            return false;
        };
        if old.is_some_and(|o| (o.index, o.mac) == (new.index, new.mac)) {
            return false;
        }
        for ip in self.addresses() {
            self.start(ip);
        }
        true
    }

    /// Every address of a local pod.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.pods
            .values()
            .flat_map(|p| p.ips.iter().copied())
            .collect()
    }

    /// When the next repeat is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.schedule.next_due()
    }

    /// Sends what is due at `now` through `send(ip, ifindex, mac)`: first
    /// announcements once the interface is up, repeats whose time came,
    /// each only while a local pod has the address and the interface is
    /// the one it was scheduled on.
    pub fn run(&mut self, now: Instant, send: impl FnMut(IpAddr, u32, MacAddr)) {
        let Self {
            schedule,
            pods,
            device,
            ..
        } = self;
        let (pods, device) = (&*pods, *device);
        schedule.run(
            now,
            |ip, ifindex| match device {
                Some(d) if d.index == ifindex && pods.values().any(|p| p.ips.contains(&ip)) => {
                    if d.up {
                        Check::Send(d.mac)
                    } else {
                        Check::Closed
                    }
                }
                _ => Check::Gone,
            },
            send,
        );
    }

    fn start(&mut self, ip: IpAddr) {
        if let Some(d) = self.device {
            self.schedule.start((ip, d.index));
        }
    }
}

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MAC: MacAddr = [2, 0, 0, 0, 0, 0x11];
    const NODE: &str = "node-1";

    fn pod(name: &str, node: &str, ips: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {
                "phase": "Running",
                "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(),
            },
        }))
        .expect("pod")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn device(index: u32, mac: MacAddr, up: bool) -> Option<PodDevice> {
        Some(PodDevice { index, mac, up })
    }

    fn once() -> GratuitousConfig {
        GratuitousConfig {
            count: 1,
            interval: Duration::from_secs(1),
        }
    }

    /// Runs the schedule at `now`; what was sent.
    fn sent(p: &mut PodAnnouncements, now: Instant) -> Vec<(IpAddr, u32, MacAddr)> {
        let mut out = Vec::new();
        p.run(now, |ip, i, m| out.push((ip, i, m)));
        out
    }

    #[test]
    fn only_running_pods_of_this_node_off_the_host_network_count() {
        let mine = pod("a", NODE, &["192.0.2.50", "2001:db8::50"]);
        assert_eq!(pod_ips(&mine, NODE), ips(&["192.0.2.50", "2001:db8::50"]));
        assert!(pod_ips(&mine, "node-2").is_empty(), "another node's pod");
        let mut host = mine.clone();
        host.spec.as_mut().expect("spec").host_network = Some(true);
        assert!(pod_ips(&host, NODE).is_empty(), "host network");
        let mut unscheduled = mine.clone();
        unscheduled.spec.as_mut().expect("spec").node_name = None;
        assert!(pod_ips(&unscheduled, NODE).is_empty(), "not scheduled");
        for phase in TERMINAL_PHASES {
            let mut done = mine.clone();
            done.status.as_mut().expect("status").phase = Some(phase.to_string());
            assert!(pod_ips(&done, NODE).is_empty(), "{phase}");
        }
        let mut pending = pod("p", NODE, &[]);
        assert!(pod_ips(&pending, NODE).is_empty(), "no addresses yet");
        // status.podIP alone (older API servers), and addresses that
        // cannot be claimed on a LAN or are not addresses at all.
        pending.status.as_mut().expect("status").pod_ip = Some("192.0.2.60".into());
        assert_eq!(pod_ips(&pending, NODE), ips(&["192.0.2.60"]));
        let odd = pod(
            "o",
            NODE,
            &[
                "0.0.0.0",
                "127.0.0.1",
                "255.255.255.255",
                "ff02::1",
                "bogus",
                "::1",
            ],
        );
        assert!(pod_ips(&odd, NODE).is_empty());
    }

    #[test]
    fn addresses_are_announced_when_a_pod_gets_them_and_when_they_change() {
        let mut p = PodAnnouncements::new(NODE, once());
        p.device_changed(device(2, MAC, true));
        let t = Instant::now();
        assert!(p.pod_applied(&pod("a", NODE, &[])).is_empty());
        assert!(sent(&mut p, t).is_empty(), "no address, nothing to say");

        let got = p.pod_applied(&pod("a", NODE, &["192.0.2.50", "2001:db8::50"]));
        assert_eq!(got, ips(&["192.0.2.50", "2001:db8::50"]));
        assert_eq!(
            sent(&mut p, t),
            vec![(ip("192.0.2.50"), 2, MAC), (ip("2001:db8::50"), 2, MAC)]
        );
        // The same addresses again (a label or a condition changed): quiet.
        assert!(
            p.pod_applied(&pod("a", NODE, &["192.0.2.50", "2001:db8::50"]))
                .is_empty()
        );
        assert!(sent(&mut p, t).is_empty());
        // One address changes: only the new one is announced.
        let got = p.pod_applied(&pod("a", NODE, &["192.0.2.53", "2001:db8::50"]));
        assert_eq!(got, ips(&["192.0.2.53"]));
        assert_eq!(sent(&mut p, t), vec![(ip("192.0.2.53"), 2, MAC)]);
        assert_eq!(p.addresses(), ips(&["192.0.2.53", "2001:db8::50"]));
    }

    #[test]
    fn other_nodes_and_host_network_pods_are_never_announced() {
        let mut p = PodAnnouncements::new(NODE, once());
        p.device_changed(device(2, MAC, true));
        assert!(
            p.pod_applied(&pod("b", "node-2", &["192.0.2.51"]))
                .is_empty()
        );
        let mut host = pod("h", NODE, &["192.0.2.52"]);
        host.spec.as_mut().expect("spec").host_network = Some(true);
        assert!(p.pod_applied(&host).is_empty());
        assert!(sent(&mut p, Instant::now()).is_empty());
        assert!(p.addresses().is_empty());
    }

    #[test]
    fn start_announces_every_pod_once_and_a_relist_only_what_changed() {
        let mut p = PodAnnouncements::new(NODE, once());
        p.device_changed(device(2, MAC, true));
        let t = Instant::now();
        // The first list at start: everything is new.
        p.relist_started();
        p.pod_applied(&pod("a", NODE, &["192.0.2.50"]));
        p.pod_applied(&pod("b", NODE, &["192.0.2.51"]));
        p.relist_done();
        assert_eq!(sent(&mut p, t).len(), 2);
        // The watch broke; meanwhile b was deleted and c created.
        p.relist_started();
        assert!(p.pod_applied(&pod("a", NODE, &["192.0.2.50"])).is_empty());
        assert_eq!(
            p.pod_applied(&pod("c", NODE, &["192.0.2.52"])),
            ips(&["192.0.2.52"])
        );
        p.relist_done();
        assert_eq!(sent(&mut p, t), vec![(ip("192.0.2.52"), 2, MAC)]);
        assert_eq!(p.addresses(), ips(&["192.0.2.50", "192.0.2.52"]));
    }

    #[test]
    fn a_pod_created_again_under_its_name_is_announced_again() {
        let mut p = PodAnnouncements::new(NODE, once());
        p.device_changed(device(2, MAC, true));
        let first = pod("a", NODE, &["192.0.2.50"]);
        p.pod_applied(&first);
        let mut again = first.clone();
        again.metadata.uid = Some("uid-a-2".into());
        assert_eq!(p.pod_applied(&again), ips(&["192.0.2.50"]));
    }

    #[test]
    fn repeats_stop_when_the_pod_goes_unless_another_pod_has_the_address() {
        let mut p = PodAnnouncements::new(
            NODE,
            GratuitousConfig {
                count: 3,
                interval: Duration::from_secs(1),
            },
        );
        p.device_changed(device(2, MAC, true));
        let t = Instant::now();
        let a = pod("a", NODE, &["192.0.2.50", "192.0.2.55"]);
        p.pod_applied(&a);
        assert_eq!(sent(&mut p, t).len(), 2);
        // Another pod briefly has .55 too (its address was reused).
        p.pod_applied(&pod("b", NODE, &["192.0.2.55"]));
        p.pod_deleted(&a);
        let at = t + Duration::from_secs(1);
        assert_eq!(sent(&mut p, at), vec![(ip("192.0.2.55"), 2, MAC)]);
        // b terminates: its series ends too.
        let mut done = pod("b", NODE, &["192.0.2.55"]);
        done.status.as_mut().expect("status").phase = Some("Succeeded".into());
        p.pod_applied(&done);
        assert!(sent(&mut p, t + Duration::from_secs(2)).is_empty());
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn nothing_is_sent_before_the_interface_is_known_and_up() {
        let mut p = PodAnnouncements::new(NODE, once());
        let t = Instant::now();
        p.pod_applied(&pod("a", NODE, &["192.0.2.50"]));
        assert!(sent(&mut p, t).is_empty(), "no interface yet");
        // It appears, down: the announcement waits.
        assert!(p.device_changed(device(4, MAC, false)));
        assert!(sent(&mut p, t).is_empty(), "interface down");
        assert!(
            !p.device_changed(device(4, MAC, true)),
            "same index and MAC"
        );
        assert_eq!(sent(&mut p, t), vec![(ip("192.0.2.50"), 4, MAC)]);
    }

    #[test]
    fn a_new_mac_or_ifindex_announces_everything_again() {
        let mut p = PodAnnouncements::new(NODE, once());
        p.device_changed(device(2, MAC, true));
        let t = Instant::now();
        p.pod_applied(&pod("a", NODE, &["192.0.2.50", "2001:db8::50"]));
        assert_eq!(sent(&mut p, t).len(), 2);
        let mac2 = [2, 0, 0, 0, 0, 0x99];
        assert!(p.device_changed(device(2, mac2, true)));
        assert_eq!(
            sent(&mut p, t),
            vec![(ip("192.0.2.50"), 2, mac2), (ip("2001:db8::50"), 2, mac2)]
        );
        // The interface vanishes: nothing; it returns under a new index.
        assert!(!p.device_changed(None));
        assert!(sent(&mut p, t).is_empty());
        assert!(p.device_changed(device(7, mac2, true)));
        assert_eq!(sent(&mut p, t).len(), 2);
    }

    #[test]
    fn a_series_scheduled_on_an_old_ifindex_is_dropped() {
        let mut p = PodAnnouncements::new(NODE, once());
        p.device_changed(device(2, MAC, false));
        let t = Instant::now();
        p.pod_applied(&pod("a", NODE, &["192.0.2.50"]));
        // Recreated (new index) before it came up: one series, the new one.
        p.device_changed(device(3, MAC, true));
        assert_eq!(sent(&mut p, t), vec![(ip("192.0.2.50"), 3, MAC)]);
    }
}
