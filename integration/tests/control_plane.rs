//! The control plane against the test API server: three in-process nodes
//! (Policy, Service and Lease actors each) elect one holder per Service,
//! fail over when a holder stops renewing (and its fence closes first),
//! hand over at once on shutdown, report invalid policies, honour node
//! selectors, load balancer classes and IP kinds, share rows between
//! Services with one IP, and converge under client-side throttling.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actors::lease::{ElectionMode, LeaseTiming};
use actors::policy::CiliumL2AnnouncementPolicy;
use integration::apiserver::{ClientMatch, TestApiServer};
use integration::controlplane::{ControlPlaneNode, NodeOptions};
use integration::poll::wait_for;
use integration::rbac;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const FAST: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_secs(2),
    renew_deadline: Duration::from_secs(1),
    retry_period: Duration::from_millis(200),
};

/// An API server on its own runtime, and a client for the test's writes.
struct Cluster {
    rt: tokio::runtime::Runtime,
    server: TestApiServer,
    client: kube::Client,
}

impl Cluster {
    fn start() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(TestApiServer::start("127.0.0.1:0".parse().expect("addr")))
            .expect("api server");
        let client = rt.block_on(async { server.client() }).expect("client");
        let c = Cluster { rt, server, client };
        for ns in ["default", "kube-system"] {
            let obj: Namespace =
                serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns");
            let _ = c.rt.block_on(
                Api::<Namespace>::all(c.client.clone()).create(&PostParams::default(), &obj),
            );
        }
        let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
        c.rt.block_on(crds.create(&PostParams::default(), &CiliumL2AnnouncementPolicy::crd()))
            .expect("create CRD");
        c
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn node(&self, name: &str, labels: serde_json::Value) {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("node");
        self.rt
            .block_on(Api::<Node>::all(self.client.clone()).create(&PostParams::default(), &node))
            .expect("create node");
    }

    fn policy(&self, name: &str, spec: serde_json::Value) {
        let api: Api<CiliumL2AnnouncementPolicy> = Api::all(self.client.clone());
        let obj: CiliumL2AnnouncementPolicy = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("policy");
        // The agents patch the status concurrently, so a get + replace can
        // meet a 409 Conflict: get the latest version and try again, as
        // every Kubernetes client does.
        for _ in 0..20 {
            let written = match self.rt.block_on(api.get_opt(name)).expect("get policy") {
                Some(mut existing) => {
                    existing.spec = obj.spec.clone();
                    self.rt
                        .block_on(api.replace(name, &PostParams::default(), &existing))
                }
                None => self.rt.block_on(api.create(&PostParams::default(), &obj)),
            };
            match written {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => panic!("write policy: {e}"),
            }
        }
        panic!("write policy: 20 conflicts in a row");
    }

    fn get_policy(&self, name: &str) -> CiliumL2AnnouncementPolicy {
        let api: Api<CiliumL2AnnouncementPolicy> = Api::all(self.client.clone());
        self.rt.block_on(api.get(name)).expect("get policy")
    }

    /// A Service with `spec` extras and load balancer IPs in its status.
    fn service(&self, name: &str, spec: serde_json::Value, lb_ips: &[&str]) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), "default");
        let mut full = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
        if let (Some(f), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            for (k, v) in extra {
                f.insert(k.clone(), v.clone());
            }
        }
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"}, "spec": full
        }))
        .expect("service");
        self.rt
            .block_on(api.create(&PostParams::default(), &svc))
            .expect("create service");
        if !lb_ips.is_empty() {
            let ingress: Vec<_> = lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
            let status = json!({"status": {"loadBalancer": {"ingress": ingress}}});
            self.rt
                .block_on(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
                .expect("service status");
        }
    }

    fn delete_service(&self, name: &str) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), "default");
        self.rt
            .block_on(api.delete(name, &DeleteParams::default()))
            .expect("delete service");
    }

    fn leases(&self) -> BTreeMap<String, Lease> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "kube-system");
        self.rt
            .block_on(api.list(&Default::default()))
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|lease| (lease.metadata.name.clone().unwrap_or_default(), lease))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn holder(&self, lease: &str) -> Option<String> {
        self.leases()
            .get(lease)
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty())
    }
}

fn start_nodes(cluster: &Cluster, names: &[&str], timing: LeaseTiming) -> Vec<ControlPlaneNode> {
    names
        .iter()
        .map(|n| {
            ControlPlaneNode::start(&cluster.url(), NodeOptions::new(n, timing))
                .expect("start node")
        })
        .collect()
}

/// Which node announces each Service, requiring exactly one per Service.
fn announcers(nodes: &[ControlPlaneNode], services: &[String]) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for svc in services {
        let holders: Vec<&ControlPlaneNode> = nodes
            .iter()
            .filter(|n| n.announced_services().contains(svc))
            .collect();
        if holders.len() != 1 {
            return None;
        }
        out.insert(svc.clone(), holders[0].name.clone());
    }
    Some(out)
}

fn standard_policy(cluster: &Cluster) {
    cluster.policy(
        "policy1",
        json!({
            "nodeSelector": {"matchExpressions": [{"key": "l2", "operator": "NotIn", "values": ["no"]}]},
            "interfaces": ["^eth[0-9]+"],
            "externalIPs": true,
            "loadBalancerIPs": true
        }),
    );
}

#[test]
fn one_holder_per_service_failover_and_handover() {
    let cluster = Cluster::start();
    cluster.node("node-a", json!({}));
    cluster.node("node-b", json!({}));
    cluster.node("node-c", json!({"l2": "no"}));
    standard_policy(&cluster);
    let services: Vec<String> = (0..20).map(|i| format!("default/svc-{i}")).collect();
    for i in 0..20 {
        cluster.service(
            &format!("svc-{i}"),
            json!({}),
            &[&format!("192.0.2.{}", 100 + i)],
        );
    }
    let mut nodes = start_nodes(&cluster, &["node-a", "node-b", "node-c"], FAST);

    let owners = wait_for("one announcer per service", Duration::from_secs(20), || {
        announcers(&nodes, &services)
    })
    .expect("converged");
    // Leases agree with the rows, with the fields client-go writes.
    let leases = cluster.leases();
    for (svc, owner) in &owners {
        let name = format!(
            "cilium-l2announce-default-{}",
            svc.trim_start_matches("default/")
        );
        let spec = leases[&name].spec.clone().expect("spec");
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some(owner.as_str()),
            "{name}"
        );
        assert_eq!(spec.lease_duration_seconds, Some(2));
        assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
        assert_eq!(spec.lease_transitions, Some(0));
    }
    // The node selector keeps node-c out entirely; the others share.
    let per_node: BTreeMap<&str, usize> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| (*n, owners.values().filter(|o| o == n).count()))
        .collect();
    assert_eq!(per_node["node-c"], 0);
    assert!(
        nodes[2].lease_rows().is_empty(),
        "node-c campaigns for nothing"
    );
    assert!(
        per_node["node-a"] >= 3 && per_node["node-b"] >= 3,
        "balanced: {per_node:?}"
    );
    // Rows carry the Service's IP on eth0.
    let row = nodes
        .iter()
        .flat_map(|n| n.announce_rows())
        .find(|r| r.origins == vec!["default/svc-0".to_string()])
        .expect("row of svc-0");
    assert_eq!(row.ip.to_string(), "192.0.2.100");
    assert_eq!(row.network_interface, "eth0");
    let policy_row = nodes[0]
        .policy_rows()
        .into_iter()
        .find(|p| p.name == "policy1")
        .expect("policy row");
    assert!(policy_row.valid);
    assert_eq!(policy_row.services.len(), 20);

    // Freeze the holder of svc-0: its requests hang from now on.
    let svc0 = "default/svc-0".to_string();
    let old = owners[&svc0].clone();
    let old_idx = nodes.iter().position(|n| n.name == old).expect("node");
    cluster
        .server
        .pause(ClientMatch::UserAgent(format!("({old})")));
    let paused_at = Instant::now();
    let new_idx = 1 - old_idx;
    wait_for("takeover of svc-0", Duration::from_secs(10), || {
        nodes[new_idx]
            .announced_services()
            .contains(&svc0)
            .then_some(())
    })
    .expect("taken over");
    let takeover = Instant::now();
    let election = "default/svc-0";
    let old_fence = nodes[old_idx]
        .last_fence(election)
        .expect("old holder was fenced");
    let last_renewal_sent = old_fence - FAST.renew_deadline;
    let new_first_renewal = {
        let log = nodes[new_idx].log.lock().expect("log");
        log.renewed
            .iter()
            .find(|(e, f, _)| e == election && *f > old_fence)
            .map(|(_, _, at)| *at)
            .expect("new holder renewed")
    };
    let gap = new_first_renewal - last_renewal_sent;
    println!(
        "failover: old fence closed {:?} before the new holder's first renewal; takeover {:?} after the last renewal (pause at +{:?})",
        new_first_renewal - old_fence,
        gap,
        paused_at.saturating_duration_since(last_renewal_sent)
    );
    assert!(
        old_fence < new_first_renewal,
        "old fence must close before the takeover"
    );
    assert!(
        gap <= FAST.lease_duration + Duration::from_secs(1),
        "takeover {gap:?} after the last renewal"
    );
    assert!(takeover - paused_at <= FAST.lease_duration + Duration::from_secs(2));
    // The frozen holder stopped announcing by itself (renew deadline).
    wait_for("old holder withdrew", Duration::from_secs(3), || {
        (!nodes[old_idx].announced_services().contains(&svc0)).then_some(())
    })
    .expect("old holder quiet");
    let lease = &cluster.leases()["cilium-l2announce-default-svc-0"];
    assert_eq!(
        lease.spec.as_ref().and_then(|s| s.lease_transitions),
        Some(1)
    );
    cluster.server.unpause_all();

    // Graceful stop of the current holder of svc-0 hands over in < 1 s.
    let holder_idx = new_idx;
    let other_idx = old_idx;
    let start = Instant::now();
    nodes[holder_idx].terminate();
    wait_for("handover of svc-0", Duration::from_secs(5), || {
        nodes[other_idx]
            .announced_services()
            .contains(&svc0)
            .then_some(())
    })
    .expect("handed over");
    let handover = start.elapsed();
    println!("handover after graceful stop: {handover:?}");
    assert!(
        handover < Duration::from_secs(1),
        "handover took {handover:?}"
    );
    for n in nodes.iter_mut() {
        n.kill();
    }
}

#[test]
fn policy_conditions_classes_ip_kinds_sharing_and_deletion() {
    let cluster = Cluster::start();
    cluster.node("node-a", json!({}));
    cluster.node("node-b", json!({}));
    // Only load balancer IPs; a bad regex first.
    cluster.policy(
        "lb-only",
        json!({"loadBalancerIPs": true, "interfaces": ["eth["]}),
    );
    cluster.service("web", json!({}), &["192.0.2.10"]);
    cluster.service(
        "other-class",
        json!({"loadBalancerClass": "example.com/other"}),
        &["192.0.2.11"],
    );
    cluster.service(
        "ext-only",
        json!({"type": "ClusterIP", "externalIPs": ["198.51.100.7"]}),
        &[],
    );
    cluster.service("shared-a", json!({}), &["192.0.2.20"]);
    cluster.service("shared-b", json!({}), &["192.0.2.20"]);
    cluster.service("late", json!({}), &[]);
    let nodes = start_nodes(&cluster, &["node-a", "node-b"], FAST);

    let condition = wait_for(
        "bad-interface-regex condition",
        Duration::from_secs(10),
        || {
            let p = cluster.get_policy("lb-only");
            p.status.and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "io.cilium/bad-interface-regex")
            })
        },
    )
    .expect("condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "error")
    );
    assert!(condition.message.contains("eth["), "{}", condition.message);
    assert_eq!(condition.observed_generation, Some(1));
    wait_for("invalid policy row", Duration::from_secs(5), || {
        nodes[0]
            .policy_rows()
            .into_iter()
            .find(|p| p.name == "lb-only" && !p.valid)
    })
    .expect("row");
    assert!(
        cluster.leases().is_empty(),
        "an invalid policy selects nothing"
    );

    // Fix it: the condition turns False, Services get announced.
    cluster.policy(
        "lb-only",
        json!({"loadBalancerIPs": true, "interfaces": ["^eth0$"]}),
    );
    wait_for("condition cleared", Duration::from_secs(10), || {
        let p = cluster.get_policy("lb-only");
        p.status.and_then(|s| {
            s.conditions.into_iter().find(|c| {
                c.type_ == "io.cilium/bad-interface-regex"
                    && c.status == "False"
                    && c.message.is_empty()
            })
        })
    })
    .expect("cleared");
    let expected: Vec<String> = ["default/web", "default/shared-a", "default/shared-b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    wait_for("announced", Duration::from_secs(10), || {
        announcers(&nodes, &expected)
    })
    .expect("announced");

    // Shared IP: one row with both origins, one lease for the pair.
    let rows: Vec<_> = nodes
        .iter()
        .flat_map(|n| n.announce_rows())
        .filter(|r| r.ip.to_string() == "192.0.2.20")
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].origins,
        vec![
            "default/shared-a".to_string(),
            "default/shared-b".to_string()
        ]
    );
    let leases = cluster.leases();
    assert!(leases.contains_key("cilium-l2announce-default-shared-a"));
    assert!(!leases.contains_key("cilium-l2announce-default-shared-b"));
    // Another class, and an externalIPs-only Service under an LB-only
    // policy, get no lease at all; neither does one without IPs yet.
    assert!(!leases.contains_key("cilium-l2announce-default-other-class"));
    assert!(!leases.contains_key("cilium-l2announce-default-ext-only"));
    assert!(!leases.contains_key("cilium-l2announce-default-late"));

    // IPs assigned later (LB IPAM) are picked up.
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.30"}]}}});
    cluster
        .rt
        .block_on(api.patch_status("late", &PatchParams::default(), &Patch::Merge(&status)))
        .expect("assign IP");
    let late = vec!["default/late".to_string()];
    wait_for("late service announced", Duration::from_secs(10), || {
        announcers(&nodes, &late)
    })
    .expect("late");

    // externalIPs: true selects the externalIPs Service too.
    cluster.policy(
        "lb-only",
        json!({"loadBalancerIPs": true, "externalIPs": true, "interfaces": ["^eth0$"]}),
    );
    let ext = vec!["default/ext-only".to_string()];
    let owner = wait_for("external IP announced", Duration::from_secs(10), || {
        announcers(&nodes, &ext)
    })
    .expect("ext");
    let ext_row = nodes
        .iter()
        .find(|n| n.name == owner["default/ext-only"])
        .expect("owner")
        .announce_rows()
        .into_iter()
        .find(|r| r.origins.contains(&"default/ext-only".to_string()))
        .expect("row");
    assert_eq!(ext_row.ip.to_string(), "198.51.100.7");

    // Deleting a Service removes its rows and releases its lease.
    cluster.delete_service("web");
    wait_for("rows of web removed", Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| !n.announced_services().contains("default/web"))
            .then_some(())
    })
    .expect("removed");
    wait_for("lease of web released", Duration::from_secs(5), || {
        cluster
            .holder("cilium-l2announce-default-web")
            .is_none()
            .then_some(())
    })
    .expect("released");
}

#[test]
fn converges_under_client_side_throttling() {
    // qps 1, burst 1: renewals of 20 leases every 25 s fit 0.8 qps.
    let timing = LeaseTiming {
        lease_duration: Duration::from_secs(50),
        renew_deadline: Duration::from_secs(35),
        retry_period: Duration::from_secs(25),
    };
    let cluster = Cluster::start();
    cluster.node("node-a", json!({}));
    standard_policy(&cluster);
    let services: Vec<String> = (0..20).map(|i| format!("default/svc-{i}")).collect();
    for i in 0..20 {
        cluster.service(
            &format!("svc-{i}"),
            json!({}),
            &[&format!("192.0.2.{}", 100 + i)],
        );
    }
    let mut options = NodeOptions::new("node-a", timing);
    options.qps = 1.0;
    options.burst = 1;
    let node = ControlPlaneNode::start(&cluster.url(), options).expect("node");
    let nodes = [node];
    let started = Instant::now();
    wait_for(
        "all 20 announced under qps 1",
        Duration::from_secs(60),
        || announcers(&nodes, &services),
    )
    .expect("converged");
    let waits = nodes[0].waits.waits.lock().expect("waits").clone();
    let waited: Vec<&Duration> = waits.iter().filter(|w| !w.is_zero()).collect();
    println!(
        "throttled: converged in {:?}; {} of {} requests waited, longest {:?}",
        started.elapsed(),
        waited.len(),
        waits.len(),
        waited.iter().max()
    );
    assert!(waited.len() >= 15, "requests were throttled: {waited:?}");
    let distinct: BTreeSet<String> = nodes[0]
        .lease_rows()
        .into_iter()
        .map(|r| r.service)
        .collect();
    assert_eq!(distinct.len(), 20);
}

/// Runs the RBAC scenario with the nodes in `election` mode: a bad policy
/// (status patched), a Service announced, withdrawn, announced again (a
/// repeated Event is patched), deleted. The grants used; asserts that
/// every request was allowed by deploy/'s roles.
fn rbac_scenario(election: ElectionMode) -> std::collections::BTreeSet<(String, String, String)> {
    let cluster = Cluster::start();
    cluster.node("node-a", json!({}));
    cluster.node("node-b", json!({}));
    cluster.policy(
        "p",
        json!({"loadBalancerIPs": true, "interfaces": ["eth["]}),
    );
    cluster.service("web", json!({}), &["192.0.2.10"]);
    let nodes: Vec<ControlPlaneNode> = ["node-a", "node-b"]
        .iter()
        .map(|n| {
            let mut o = NodeOptions::new(n, FAST);
            o.gc_interval = Duration::from_secs(1);
            o.election = election;
            // Pod announcements watch this node's pods.
            o.pod_interface = Some("eth0".into());
            ControlPlaneNode::start(&cluster.url(), o).expect("node")
        })
        .collect();
    let web = vec!["default/web".to_string()];
    // A bad policy gets its status patched, then the fixed one selects web.
    wait_for("status patched", Duration::from_secs(10), || {
        cluster
            .get_policy("p")
            .status
            .filter(|s| !s.conditions.is_empty())
    })
    .expect("status");
    cluster.policy(
        "p",
        json!({"loadBalancerIPs": true, "interfaces": ["^eth0$"]}),
    );
    wait_for("web announced", Duration::from_secs(10), || {
        announcers(&nodes, &web)
    })
    .expect("announced");
    // Withdraw and announce again until an Event repeats on the node that
    // reported it before (a repeated Event is patched; which node takes
    // the claim each time is the election's business).
    let event_patched = || {
        rbac::used(&cluster.server.request_log()).contains(&(
            "events.k8s.io".into(),
            "events".into(),
            "patch".into(),
        ))
    };
    for _ in 0..5 {
        if event_patched() {
            break;
        }
        cluster.policy(
            "p",
            json!({"loadBalancerIPs": true, "interfaces": ["^wlan$"]}),
        );
        wait_for("web withdrawn", Duration::from_secs(10), || {
            nodes
                .iter()
                .all(|n| n.announced_services().is_empty())
                .then_some(())
        })
        .expect("withdrawn");
        cluster.policy(
            "p",
            json!({"loadBalancerIPs": true, "interfaces": ["^eth0$"]}),
        );
        wait_for("web announced again", Duration::from_secs(10), || {
            announcers(&nodes, &web)
        })
        .expect("again");
        // The Event of the announcement is written in the background.
        let _ = wait_for("event patch", Duration::from_secs(2), || {
            event_patched().then_some(())
        });
    }
    // Deleting the Service releases the claim: per-service, garbage
    // collection deletes its Lease; node-heartbeat, the Lease (a mirror)
    // is emptied at once and deleted a GC interval later.
    cluster.delete_service("web");
    wait_for("lease released", Duration::from_secs(10), || {
        let leases = cluster.leases();
        let lease = leases.get("cilium-l2announce-default-web");
        match election {
            ElectionMode::NodeHeartbeat => lease
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(str::is_empty)
                .then_some(()),
            _ => lease.is_none().then_some(()),
        }
    })
    .expect("released");
    let used = wait_for("event patch", Duration::from_secs(10), || {
        let used = rbac::used(&cluster.server.request_log());
        used.contains(&("events.k8s.io".into(), "events".into(), "patch".into()))
            .then_some(used)
    })
    .expect("the repeated event was patched");
    let denied = rbac::Grants::deploy().denied(&cluster.server.request_log());
    assert!(
        denied.is_empty(),
        "{election}: requests the roles do not allow: {denied:#?}"
    );
    used
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    // Every grant is used by one election mode or the other.
    let mut used = rbac_scenario(ElectionMode::NodeHeartbeat);
    used.extend(rbac_scenario(ElectionMode::PerService));
    let granted = rbac::Grants::deploy().all();
    let not_used: Vec<_> = granted.difference(&used).collect();
    assert!(
        not_used.is_empty(),
        "grants the agent never used (remove them): {not_used:?}"
    );
}

/// What lands on a Lease between the write a release was built from and
/// the release itself.
#[derive(Clone, Copy, Debug)]
enum Crossing {
    /// A renewal of the releasing node (same holder, same epoch).
    Renewal,
    /// Another node's eviction of it.
    Eviction,
    /// The same holder under a later epoch (a new run of the agent).
    NewEpoch,
    /// Another node took the per-Service Lease.
    TakenOver,
}

/// The release of a Lease on shutdown is written with the resourceVersion
/// the node's last write returned; a renewal of its own still in flight may
/// land first. The release then reads the Lease again and retries while it
/// is still this node's (heartbeat: holder, not evicted, same epoch;
/// per-Service Lease: holder); anything else is left as it is.
#[test]
fn a_release_crossed_by_its_own_renewal_is_retried_anything_else_left_alone() {
    use actors::lease::heartbeat::{EVICTED_BY, HEARTBEAT_PREFIX, heartbeat_of, release_heartbeat};
    use actors::lease::{from_lease, write_release};
    let cluster = Cluster::start();
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-system");
    // The release runs as the agent does (its user agent), the rest as the
    // test.
    let agent = cluster
        .rt
        .block_on(async { cluster.server.client_with_user_agent("l2announcer/test") })
        .expect("client");
    let agent_api: Api<Lease> = Api::namespaced(agent, "kube-system");
    // Creates `name` held by node-a at epoch 3, lands `crossing`, runs
    // `release` with the release built from the created Lease; the Lease
    // after.
    let run = |name: &str, crossing: Crossing, heartbeat: bool| {
        let live: Lease = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 2, "leaseTransitions": 3}
        }))
        .expect("lease");
        let created = cluster
            .rt
            .block_on(api.create(&PostParams::default(), &live))
            .expect("create");
        let mut released = created.clone();
        released.spec.as_mut().expect("spec").holder_identity = Some(String::new());
        let mut next = created.clone();
        let spec = next.spec.as_mut().expect("spec");
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        match crossing {
            Crossing::Renewal => {}
            Crossing::Eviction => {
                spec.holder_identity = Some(String::new());
                next.metadata.annotations =
                    Some([(EVICTED_BY.to_string(), "node-b".to_string())].into());
            }
            Crossing::NewEpoch => spec.lease_transitions = Some(4),
            Crossing::TakenOver => spec.holder_identity = Some("node-b".to_string()),
        }
        cluster
            .rt
            .block_on(api.replace(name, &PostParams::default(), &next))
            .expect("crossing write");
        if heartbeat {
            cluster
                .rt
                .block_on(release_heartbeat(&agent_api, name, released, "node-a"));
        } else {
            let ours = |l: &Lease| from_lease(l).holder == "node-a";
            cluster
                .rt
                .block_on(write_release(&agent_api, name, released, ours))
                .expect("release");
        }
        let after = cluster.rt.block_on(api.get(name)).expect("get");
        cluster
            .rt
            .block_on(api.delete(name, &DeleteParams::default()))
            .expect("delete");
        after
    };
    let hb = format!("{HEARTBEAT_PREFIX}node-a");
    let after = heartbeat_of(&run(&hb, Crossing::Renewal, true));
    assert_eq!(
        (after.holder.as_str(), after.epoch, after.evicted_by),
        ("", 3, None),
        "released over its own renewal"
    );
    let after = heartbeat_of(&run(&hb, Crossing::Eviction, true));
    assert_eq!(after.evicted_by.as_deref(), Some("node-b"), "eviction kept");
    let after = heartbeat_of(&run(&hb, Crossing::NewEpoch, true));
    assert_eq!(
        (after.holder.as_str(), after.epoch),
        ("node-a", 4),
        "a later epoch is not this run's to release"
    );
    let svc = "cilium-l2announce-default-web";
    let after = from_lease(&run(svc, Crossing::Renewal, false));
    assert_eq!(after.holder, "", "released over its own renewal");
    let after = from_lease(&run(svc, Crossing::TakenOver, false));
    assert_eq!(after.holder, "node-b", "another holder kept");
    // The release's own requests (replace, and a list by name to read the
    // Lease again) are allowed by deploy/'s Role.
    let log = cluster.server.request_log();
    let used = rbac::used(&log);
    assert!(used.len() >= 2, "the release's requests: {used:?}");
    let denied = rbac::Grants::deploy().denied(&log);
    assert!(denied.is_empty(), "not allowed by deploy/: {denied:#?}");
}

/// Creates pod `name` on `node` with `ips` in its status (phase Running).
fn pod(cluster: &Cluster, name: &str, node: &str, host_network: bool, ips: &[&str]) {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let obj: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "c"}]},
    }))
    .expect("pod");
    cluster
        .rt
        .block_on(pods.create(&PostParams::default(), &obj))
        .expect("create pod");
    pod_ips(cluster, name, ips);
}

fn pod_ips(cluster: &Cluster, name: &str, ips: &[&str]) {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let status = json!({"status": {
        "phase": "Running",
        "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
    }});
    cluster
        .rt
        .block_on(pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
        .expect("pod status");
}

/// The addresses a node sent gratuitous announcements for, with the MAC.
fn gratuitous(node: &ControlPlaneNode) -> BTreeSet<(std::net::IpAddr, [u8; 6])> {
    node.datapath
        .state()
        .gratuitous
        .iter()
        .map(|(_, ip, _, mac)| (*ip, *mac))
        .collect()
}

#[test]
fn pod_addresses_are_announced_by_their_node_only() {
    let cluster = Cluster::start();
    cluster.node("node-a", json!({}));
    cluster.node("node-b", json!({}));
    let nodes: Vec<ControlPlaneNode> = ["node-a", "node-b"]
        .iter()
        .map(|n| {
            let mut o = NodeOptions::new(n, FAST);
            o.pod_interface = Some("eth0".into());
            ControlPlaneNode::start(&cluster.url(), o).expect("node")
        })
        .collect();
    // eth0 is ifindex 2 in the modelled datapath, MAC 02:00:00:00:00:02.
    let mac = [2, 0, 0, 0, 0, 2];
    let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("ip") };
    pod(&cluster, "host-a", "node-a", true, &["192.0.2.52"]);
    pod(&cluster, "web-b", "node-b", false, &["192.0.2.51"]);
    pod(
        &cluster,
        "web-a",
        "node-a",
        false,
        &["192.0.2.50", "2001:db8::50"],
    );
    wait_for("node-a announces web-a", Duration::from_secs(10), || {
        let g = gratuitous(&nodes[0]);
        (g.contains(&(ip("192.0.2.50"), mac)) && g.contains(&(ip("2001:db8::50"), mac)))
            .then_some(())
    })
    .expect("web-a");
    wait_for("node-b announces web-b", Duration::from_secs(10), || {
        gratuitous(&nodes[1])
            .contains(&(ip("192.0.2.51"), mac))
            .then_some(())
    })
    .expect("web-b");
    // web-a's new address, by node-a.
    pod_ips(&cluster, "web-a", &["192.0.2.53"]);
    wait_for(
        "node-a announces the new address",
        Duration::from_secs(10),
        || {
            gratuitous(&nodes[0])
                .contains(&(ip("192.0.2.53"), mac))
                .then_some(())
        },
    )
    .expect("changed");
    let a: BTreeSet<_> = gratuitous(&nodes[0]).into_iter().map(|(i, _)| i).collect();
    let b: BTreeSet<_> = gratuitous(&nodes[1]).into_iter().map(|(i, _)| i).collect();
    assert_eq!(
        a,
        [ip("192.0.2.50"), ip("2001:db8::50"), ip("192.0.2.53")].into(),
        "node-a: its pod only, never the host-network one"
    );
    assert_eq!(b, [ip("192.0.2.51")].into(), "node-b: its pod only");
}

/// `kubectl describe service` output, through a kubeconfig for `cluster`.
fn describe_service(cluster: &Cluster, kubeconfig: &std::path::Path, name: &str) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["describe", "service", name, "-n", "default"])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl describe against {}: {}",
        cluster.url(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubectl_describe_service_shows_announcement_events() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    cluster
        .server
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig");
    cluster.node("node-a", json!({}));
    cluster.policy(
        "p",
        json!({"loadBalancerIPs": true, "interfaces": ["^eth0$"]}),
    );
    cluster.service("web", json!({}), &["192.0.2.10"]);
    let node =
        ControlPlaneNode::start(&cluster.url(), NodeOptions::new("node-a", FAST)).expect("node");
    let web = vec!["default/web".to_string()];
    wait_for("web announced", Duration::from_secs(10), || {
        announcers(std::slice::from_ref(&node), &web)
    })
    .expect("announced");
    let shown = wait_for(
        "the start event in describe",
        Duration::from_secs(10),
        || {
            let text = describe_service(&cluster, &kubeconfig, "web");
            text.contains("L2AnnouncementStarted").then_some(text)
        },
    )
    .expect("started event");
    assert!(
        shown.contains("node node-a announces 192.0.2.10 on eth0"),
        "{shown}"
    );
    assert!(shown.contains("l2announcer"), "no source: {shown}");

    // The policy stops selecting eth0: the stop event names what was announced.
    cluster.policy(
        "p",
        json!({"loadBalancerIPs": true, "interfaces": ["^wlan$"]}),
    );
    let shown = wait_for(
        "the stop event in describe",
        Duration::from_secs(10),
        || {
            let text = describe_service(&cluster, &kubeconfig, "web");
            text.contains("L2AnnouncementStopped").then_some(text)
        },
    )
    .expect("stopped event");
    assert!(
        shown.contains("node node-a stopped announcing 192.0.2.10 on eth0"),
        "{shown}"
    );
    drop(node);
}
