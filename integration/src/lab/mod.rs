//! The lab: a virtual LAN of network namespaces with real agents.
//!
//! Three nodes (`<id>-node-N`) and a client (`<id>-client`) on a LAN
//! bridge, the nodes also on a management bridge where the test API server
//! listens (see [`topology`]); every node runs `l2announcer run` (through
//! `nsenter`) with short lease timings and serves `served by node-N` over
//! HTTP ([`backends`]); the Kubernetes side is deploy/'s CRD, the reference
//! policy and the two example Services ([`objects`]).
//!
//! [`Lab`] is a running lab owned by this process (torn down on drop);
//! [`LabState`] its description on disk, enough for another process to
//! kill, start or enter a node and to tear it all down ([`state`]). The
//! client's view: a paced ARP prober that keeps every reply ([`probing`])
//! and a capture of gratuitous ARP / unsolicited NA ([`capture`]).
//!
//! It is not the demo script (that is `src/bin/lab.rs`) and not a general
//! network emulator: the topology and addresses are fixed.

pub mod backends;
pub mod capture;
pub mod objects;
pub mod probing;
pub mod state;
pub mod topology;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

pub use capture::{Announcement, AnnouncementKind, Capture, realtime_minus_monotonic};
pub use probing::{Probe, ProbeLogs, ProbeSession, Takeover, takeover};
pub use state::{LabState, NodeState, process_alive};

use crate::apiserver::TestApiServer;
use crate::http::HttpError;
use crate::netns::{NetnsError, run_in};
use crate::pcap::PcapError;
use crate::poll::{WaitError, wait_until};
use crate::probe::{ProbeError, monotonic_ns};
use backends::Backends;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("lab state: {0}")]
    State(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Lease duration the lab's agents run with.
pub const LEASE_DURATION: Duration = Duration::from_secs(3);
/// Renew deadline of the lab's agents.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(1);
/// Retry period of the lab's agents.
pub const RETRY_PERIOD: Duration = Duration::from_millis(200);
/// The management address of the host end (the API server listens there).
pub const MGMT_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The client's addresses.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The LoadBalancer Service (deploy/examples/service-loadbalancer.yaml).
pub const LB_SERVICE: &str = "web-blue";
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// The externalIPs Service (deploy/examples/service-externalips.yaml).
pub const EXT_SERVICE: &str = "web-blue-external";
pub const EXT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
pub const EXT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);
/// Number of nodes.
pub const NODES: usize = 3;
const METRICS_PORT: u16 = 9972;
/// The namespace of the Leases.
pub const LEASE_NAMESPACE: &str = "kube-system";

/// The Lease of a Service in `default` (Cilium's name).
pub fn lease_name(service: &str) -> String {
    format!("cilium-l2announce-default-{service}")
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Name prefix of everything (at most 11 characters: interface names).
    pub id: String,
    /// Where state.json, the kubeconfig and per-node files go.
    pub dir: PathBuf,
    /// The `l2announcer` binary.
    pub agent_bin: PathBuf,
    /// `--l2-announcements-election` of the agents (`None`: the default,
    /// node-heartbeat).
    pub election: Option<String>,
}

impl LabConfig {
    /// `l2alab` in /run/l2announcer-lab with the agent next to this binary.
    pub fn demo(agent_bin: PathBuf) -> LabConfig {
        LabConfig {
            id: "l2alab".into(),
            dir: PathBuf::from("/run/l2announcer-lab"),
            agent_bin,
            election: None,
        }
    }

    /// A lab with a name unique to this process and call (`l2e<pid>-<n>`),
    /// its state in a directory under /run.
    pub fn unique(agent_bin: PathBuf) -> LabConfig {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "l2e{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        LabConfig {
            dir: PathBuf::from(format!("/run/l2announcer-{id}")),
            id,
            agent_bin,
            election: None,
        }
    }

    /// The description of the lab this config builds (nothing created).
    fn state(&self) -> LabState {
        let id = &self.id;
        let nodes: Vec<NodeState> = (1..=NODES)
            .map(|i| {
                let ndir = self.dir.join(format!("node-{i}"));
                let mgmt = Ipv4Addr::new(198, 51, 100, 10 + i as u8);
                NodeState {
                    name: format!("node-{i}"),
                    netns: format!("{id}-node-{i}"),
                    host_if: format!("{id}-n{i}"),
                    mgmt_host_if: format!("{id}-m{i}"),
                    mac: format!("02:1a:b0:00:00:{:02x}", 0x10 + i),
                    v4: Ipv4Addr::new(192, 0, 2, 10 + i as u8),
                    v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + i as u16),
                    mgmt,
                    metrics_addr: SocketAddr::new(IpAddr::V4(mgmt), METRICS_PORT),
                    state_dir: ndir.join("state"),
                    api_socket: ndir.join("l2announcer.sock"),
                    bpf_root: PathBuf::from(format!("/sys/fs/bpf/{id}-node-{i}")),
                    log: ndir.join("agent.log"),
                    pid_file: ndir.join("agent.pid"),
                }
            })
            .collect();
        LabState {
            id: id.clone(),
            dir: self.dir.clone(),
            bridge: format!("{id}-br"),
            mgmt_bridge: format!("{id}-mg"),
            client_netns: format!("{id}-client"),
            client_host_if: format!("{id}-c"),
            client_mac: "02:1a:b0:00:00:02".into(),
            kubeconfig: self.dir.join("kubeconfig"),
            apiserver: String::new(),
            agent_bin: self.agent_bin.clone(),
            host_pid: std::process::id(),
            nodes,
            client_rate: state::default_client_rate(),
            election: self.election.clone(),
        }
    }
}

/// Tears a lab down on drop until it is disarmed.
struct TeardownGuard(Option<LabState>);

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.teardown();
        }
    }
}

/// A running lab owned by this process. Dropping it tears everything down.
pub struct Lab {
    pub state: LabState,
    rt: tokio::runtime::Runtime,
    server: Option<TestApiServer>,
    client: kube::Client,
    backends: Backends,
    children: Mutex<BTreeMap<String, Child>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("state", &self.state).finish()
    }
}

impl Lab {
    /// Builds the topology, starts the API server, applies the objects,
    /// starts every agent and waits until both Services have a holder.
    pub fn up(config: &LabConfig) -> Result<Lab, LabError> {
        let id = &config.id;
        if Path::new(&format!("/run/netns/{id}-client")).exists() {
            return Err(LabError::State(format!(
                "a lab named {id} exists already (run `lab down` first)"
            )));
        }
        std::fs::create_dir_all(&config.dir).map_err(io_err(config.dir.display().to_string()))?;
        let mut state = config.state();
        // From here on a failure tears down what exists (Lab's Drop, or this
        // guard until the Lab is built).
        state.save()?;
        let mut guard = TeardownGuard(Some(state.clone()));
        topology::build(&state)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io_err("tokio runtime"))?;
        let server = rt
            .block_on(TestApiServer::start(SocketAddr::new(
                IpAddr::V4(MGMT_HOST),
                0,
            )))
            .map_err(objects::api_err)?;
        server
            .write_kubeconfig(&state.kubeconfig)
            .map_err(objects::api_err)?;
        state.apiserver = server.url();
        state.save()?;
        let client = {
            let _entered = rt.enter();
            server.client().map_err(objects::api_err)?
        };
        objects::apply(&rt, &client)?;
        let backends = Backends::start(
            state
                .nodes
                .iter()
                .map(|n| (n.netns.as_str(), n.name.as_str())),
        )?;
        let lab = Lab {
            state: state.clone(),
            rt,
            server: Some(server),
            client,
            backends,
            children: Mutex::new(BTreeMap::new()),
        };
        guard.0 = None;
        for n in &state.nodes {
            lab.start(&n.name)?;
        }
        for svc in [LB_SERVICE, EXT_SERVICE] {
            if let Err(e) = wait_until(
                &format!("a holder of {svc}"),
                Duration::from_secs(30),
                Duration::from_millis(50),
                || {
                    lab.check_agents()?;
                    lab.holder(svc)
                },
            ) {
                return Err(LabError::State(format!("{e}\n{}", lab.state.log_tails(15))));
            }
        }
        Ok(lab)
    }

    /// A kube-rs client for the lab's API server.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The lab's API server (None in a process that did not build the lab).
    pub fn apiserver(&self) -> Result<&TestApiServer, LabError> {
        self.server
            .as_ref()
            .ok_or_else(|| LabError::State("the API server runs elsewhere".into()))
    }

    /// Takes the API server away for `downtime` (listener and connections
    /// closed, objects kept), then brings it back; returns when it is back.
    pub fn api_outage(&self, downtime: Duration) -> Result<(), LabError> {
        self.rt
            .block_on(self.apiserver()?.restart(downtime))
            .map_err(objects::api_err)
    }

    /// Holds every request of `node`'s agent (matched by the node name in
    /// its User-Agent, `l2announcer/<version> (<node>)`) until
    /// [`Self::resume_agent_requests`].
    pub fn pause_agent_requests(&self, node: &str) -> Result<(), LabError> {
        self.apiserver()?
            .pause_client(&agent_user_agent(node), None);
        Ok(())
    }

    /// Lets `node`'s agent requests through again.
    pub fn resume_agent_requests(&self, node: &str) -> Result<(), LabError> {
        self.apiserver()?.resume_client(&agent_user_agent(node));
        Ok(())
    }

    /// Every request the lab's API server answered so far.
    pub fn request_log(&self) -> Vec<crate::apiserver::RequestRecord> {
        self.server
            .as_ref()
            .map(TestApiServer::request_log)
            .unwrap_or_default()
    }

    /// Runs a future (e.g. with [`Self::client`]) on the lab's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The lab's async runtime (to spawn watches on).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The current holder of `service`'s lease (in `default`), when valid.
    pub fn holder(&self, service: &str) -> Result<Option<String>, LabError> {
        if self
            .state
            .election
            .as_deref()
            .is_some_and(|m| m != "node-heartbeat")
        {
            return self.lease_holder(service);
        }
        self.record_holder(service)
    }

    /// The holder the per-Service Lease names (per-service mode; in
    /// node-heartbeat mode the Lease is a lazy mirror of the record).
    pub fn lease_holder(&self, service: &str) -> Result<Option<String>, LabError> {
        let client = self.client();
        let name = lease_name(service);
        let lease = self
            .rt
            .block_on(async move {
                Api::<Lease>::namespaced(client, LEASE_NAMESPACE)
                    .get_opt(&name)
                    .await
            })
            .map_err(objects::api_err)?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// The holder the node-heartbeat assignment record names for the claim
    /// `default/<service>`, when that node is a member under the assigned
    /// epoch.
    pub fn record_holder(&self, service: &str) -> Result<Option<String>, LabError> {
        let holders = self
            .rt
            .block_on(record_holders(self.client()))
            .map_err(objects::api_err)?;
        Ok(holders.get(&format!("default/{service}")).cloned())
    }

    /// Waits until `service` is held by someone other than `not` (any
    /// holder when `None`); the holder.
    pub fn wait_holder(
        &self,
        service: &str,
        not: Option<&str>,
        timeout: Duration,
    ) -> Result<String, LabError> {
        wait_until(
            &format!("a new holder of {service}"),
            timeout,
            Duration::from_millis(20),
            || Ok(self.holder(service)?.filter(|h| Some(h.as_str()) != not)),
        )
    }

    /// Starts a node's agent (again).
    pub fn start(&self, name: &str) -> Result<(), LabError> {
        let child = self.state.start_agent(name)?;
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut old) = children.insert(name.to_string(), child) {
            let _ = old.try_wait();
        }
        Ok(())
    }

    /// Sends `signal` to a node's agent; returns the monotonic time (ns)
    /// just before the signal. Waits until it has exited unless the signal
    /// is SIGSTOP or SIGCONT.
    pub fn kill(&self, name: &str, signal: libc::c_int) -> Result<u64, LabError> {
        let at = monotonic_ns();
        self.state.signal_agent(name, signal)?;
        if signal == libc::SIGSTOP || signal == libc::SIGCONT {
            return Ok(at);
        }
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = children.get_mut(name) {
            wait_until(
                &format!("agent of {name} to exit"),
                Duration::from_secs(10),
                Duration::from_millis(5),
                || child.try_wait().map_err(io_err("wait")),
            )?;
        }
        Ok(at)
    }

    /// Sets a node's `eth0` (its LAN link) down or up; its agent keeps its
    /// API connection over `eth1`.
    pub fn set_lan_link(&self, name: &str, up: bool) -> Result<(), LabError> {
        topology::set_lan_link(&self.state, name, up)
    }

    /// Takes the carrier of a node's `eth0` away (the bridge's end of its
    /// veth down) or gives it back; `eth0` itself stays up and the agent
    /// keeps its API connection over `eth1`.
    pub fn set_lan_carrier(&self, name: &str, up: bool) -> Result<(), LabError> {
        topology::set_lan_carrier(&self.state, name, up)
    }

    /// Waits until the node's metrics server answers `/readyz`.
    pub fn wait_ready(&self, name: &str, timeout: Duration) -> Result<(), LabError> {
        wait_until(
            &format!("{name} ready"),
            timeout,
            Duration::from_millis(50),
            || {
                Ok(self
                    .state
                    .http_get_metrics(name, "/readyz")
                    .ok()
                    .map(|_| ()))
            },
        )
    }

    /// The MACs `arping` in the client sees answering `vip` (`count` requests).
    pub fn arping(&self, vip: Ipv4Addr, count: u32) -> Result<Vec<[u8; 6]>, LabError> {
        Ok(crate::resolvers::arping(
            &self.state.client_netns,
            "eth0",
            vip,
            count,
            3,
        )?)
    }

    /// The MACs `ndisc6` in the client sees answering `vip` (every answer
    /// to up to three solicitations).
    pub fn ndisc(&self, vip: Ipv6Addr) -> Result<Vec<[u8; 6]>, LabError> {
        Ok(crate::resolvers::ndisc6(
            &self.state.client_netns,
            "eth0",
            vip,
            3,
            300,
        )?)
    }

    /// An HTTP GET from the client to `vip`:80; the body.
    pub fn client_http(&self, vip: IpAddr) -> Result<String, LabError> {
        crate::netns::run(std::process::Command::new("ip").args([
            "-n",
            &self.state.client_netns,
            "neigh",
            "flush",
            "all",
        ]))?;
        let body = run_in(&self.state.client_netns, move || {
            crate::http::get(SocketAddr::new(vip, 80), "/", Duration::from_secs(3))
        })??;
        Ok(body)
    }

    /// Starts a paced tagged ARP prober in the client for `vip`.
    pub fn probe(&self, vip: Ipv4Addr, period: Duration) -> Result<ProbeSession, LabError> {
        ProbeSession::start(&self.state.client_netns, vip, period)
    }

    /// Starts tcpdump of announcements on the client's eth0 into `path`.
    pub fn capture(&self, path: &Path) -> Result<Capture, LabError> {
        Capture::start(&self.state.client_netns, path)
    }

    /// Stops everything and removes it (also done on drop).
    pub fn down(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        self.backends.stop();
        self.state.teardown();
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (_, mut c) in std::mem::take(&mut *children) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }

    /// An error when an agent this lab started has exited.
    pub fn check_agents(&self) -> Result<(), LabError> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for (name, c) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(LabError::State(format!(
                    "the agent of {name} exited ({status})"
                )));
            }
        }
        Ok(())
    }

    /// Reaps agents that exited (for a long-running host process).
    pub fn reap(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Every claim (`<namespace>/<service>`, a shared IP's group under its
/// first Service) the node-heartbeat assignment record gives to a node
/// that is a member under the assigned epoch, with that node: who answers
/// in node-heartbeat mode. One list of the record's ConfigMaps and one of
/// the heartbeat Leases.
pub async fn record_holders(client: kube::Client) -> Result<BTreeMap<String, String>, kube::Error> {
    use actors::lease::heartbeat::{
        HEARTBEAT_LABEL, RECORD_LABEL, heartbeat_of, shard_of_configmap,
    };
    use k8s_openapi::api::core::v1::ConfigMap;
    let lp = |l: &str| kube::api::ListParams::default().labels(l);
    let shards = Api::<ConfigMap>::namespaced(client.clone(), LEASE_NAMESPACE)
        .list(&lp(RECORD_LABEL))
        .await?;
    let heartbeats = Api::<Lease>::namespaced(client, LEASE_NAMESPACE)
        .list(&lp(HEARTBEAT_LABEL))
        .await?;
    let heartbeats: Vec<_> = heartbeats.items.iter().map(heartbeat_of).collect();
    Ok(shards
        .items
        .iter()
        .flat_map(shard_of_configmap)
        .filter(|(_, a)| {
            heartbeats
                .iter()
                .any(|hb| hb.member(&a.node) && hb.epoch == a.epoch)
        })
        .map(|(claim, a)| (claim, a.node))
        .collect())
}

/// What singles out `node`'s agent in a User-Agent
/// (`l2announcer/<version> (<node>)`).
/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

/// `target/debug/l2announcer`, the agent the lab tests run. Panics, naming
/// the command that builds it, when it is missing (tests only).
pub fn debug_agent() -> PathBuf {
    let bin = target_dir().join("debug/l2announcer");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p l2announcer` first",
        bin.display()
    );
    bin
}

pub fn agent_user_agent(node: &str) -> String {
    format!("({node})")
}
