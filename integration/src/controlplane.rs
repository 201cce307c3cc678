//! In-process control-plane nodes: one agent's control plane — the same
//! [`ControlPlane`] the agent starts — on its own actix System (one thread
//! per node) against an API server, with the eBPF maps replaced by the
//! in-memory model [`MemoryDatapath`] (fences, entries and gratuitous
//! announcements included) and devices given by the test instead of
//! netlink. For the real datapath see the namespace tests; for whole
//! agents, the lab.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::announce::{AnnouncerOptions, DatapathObserver, GratuitousConfig, MemoryDatapath};
use actors::control_plane::{ControlPlane, Devices, Observers};
use actors::devices::DeviceRow;
use actors::k8s::client::{self as kubeclient, ThrottleObserver};
use actors::k8s::events::{Fanout, ServiceEvents};
use actors::k8s::status::ServiceStatus;
use actors::lease::{ElectionMode, LeaseTiming};
use actors::tables::{L2_ANNOUNCE, L2AnnounceRow, LEASES, LeaseRow, POLICIES, PolicyRow};
use bpf::AttachMode;

/// What the datapath side of one node received.
#[derive(Debug, Default)]
pub struct DatapathLog {
    /// Every fence opening: (claim, fence_until, received at).
    pub renewed: Vec<(String, Instant, Instant)>,
    /// Every fence closing: (claim, received at).
    pub closed: Vec<(String, Instant)>,
}

struct Recorder(Arc<Mutex<DatapathLog>>);

impl DatapathObserver for Recorder {
    fn fence(&self, claim: &str, until: Option<Instant>) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match until {
            Some(until) => log.renewed.push((claim.to_string(), until, Instant::now())),
            None => log.closed.push((claim.to_string(), Instant::now())),
        }
    }
}

/// Counts client-side throttling waits.
#[derive(Default)]
pub struct WaitCounter {
    pub waits: Mutex<Vec<Duration>>,
}

impl ThrottleObserver for WaitCounter {
    fn waited(&self, wait: Duration, _: &str, _: &str) {
        self.waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(wait);
    }
}

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    pub namespace: String,
    pub timing: LeaseTiming,
    pub devices: BTreeSet<String>,
    pub external_ips_enabled: bool,
    pub qps: f64,
    pub burst: u32,
    pub gc_interval: Duration,
    pub election: ElectionMode,
    /// `--l2-pod-announcements-interface` (`None`: pod announcements off);
    /// what they send lands in the node's `datapath` too.
    pub pod_interface: Option<String>,
}

impl NodeOptions {
    pub fn new(name: &str, timing: LeaseTiming) -> Self {
        NodeOptions {
            name: name.to_string(),
            namespace: "kube-system".to_string(),
            timing,
            devices: ["eth0".to_string()].into(),
            external_ips_enabled: true,
            qps: 1000.0,
            burst: 1000,
            gc_interval: actors::lease::GC_INTERVAL,
            election: ElectionMode::PerService,
            pod_interface: None,
        }
    }
}

/// One running node.
pub struct ControlPlaneNode {
    pub name: String,
    pub db: statedb::Db,
    pub log: Arc<Mutex<DatapathLog>>,
    pub waits: Arc<WaitCounter>,
    /// The node's modelled datapath.
    pub datapath: MemoryDatapath,
    system: Option<actix::System>,
    control_plane: Option<ControlPlane>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0}: {1}")]
    Start(String, String),
}

/// The device rows of a node with `names` (ifindexes as in `datapath`).
fn device_rows(names: &BTreeSet<String>, datapath: &MemoryDatapath) -> Vec<DeviceRow> {
    let state = datapath.state();
    names
        .iter()
        .map(|name| {
            let index = state.interfaces.get(name).copied().unwrap_or(0);
            DeviceRow {
                name: name.clone(),
                index,
                selected: true,
                kind: "veth".to_string(),
                mtu: 1500,
                hw_addr: format!("02:00:00:00:00:{index:02x}"),
                flags: vec!["up".to_string()],
                addresses: Vec::new(),
                master_index: None,
                oper_state: "up".to_string(),
            }
        })
        .collect()
}

impl ControlPlaneNode {
    /// Starts the node's control plane against the API server at `url`.
    pub fn start(url: &str, options: NodeOptions) -> Result<ControlPlaneNode, NodeError> {
        let err = |e: &dyn std::fmt::Display| NodeError::Start(options.name.clone(), e.to_string());
        let db = statedb::Db::open_temporary().map_err(|e| err(&e))?;
        let log = Arc::new(Mutex::new(DatapathLog::default()));
        let waits = Arc::new(WaitCounter::default());
        let datapath = MemoryDatapath::with_interfaces(options.devices.iter().map(String::as_str));
        let uri: http::Uri = url.parse().map_err(|e| err(&e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let db = db.clone();
            let log = log.clone();
            let waits = waits.clone();
            let datapath = datapath.clone();
            let options = options.clone();
            std::thread::spawn(move || {
                let system = actix::System::new();
                let started = system.block_on(async move {
                    let mut config = kube::Config::new(uri);
                    config.default_namespace = "default".into();
                    config.read_timeout = None;
                    let client = kubeclient::build_client(
                        config,
                        &options.name,
                        options.qps,
                        options.burst,
                        waits,
                    )
                    .map_err(|e| e.to_string())?;
                    // Tests count every Event and condition write: no background limit.
                    let background = kubeclient::Background::new(1e6, None);
                    let observers = Observers {
                        announce: std::sync::Arc::new(Fanout(vec![
                            ServiceEvents::start(client.clone(), &options.name, background.clone()),
                            ServiceStatus::start(client.clone(), &options.name, background),
                        ])),
                        datapath: Arc::new(Recorder(log)),
                        ..Observers::default()
                    };
                    let devices = Devices::Fixed(device_rows(&options.devices, &datapath));
                    let mut builder = ControlPlane::builder(
                        client,
                        db,
                        &options.name,
                        &options.namespace,
                        options.timing,
                    )
                    .election(options.election)
                    .external_ips(options.external_ips_enabled)
                    .client_qps(options.qps)
                    .lease_gc_interval(options.gc_interval)
                    .devices(devices)
                    .observers(observers);
                    if let Some(interface) = &options.pod_interface {
                        builder = builder.pod_announcements(interface.clone());
                    }
                    let control_plane = builder
                        .start(
                            datapath.clone(),
                            datapath,
                            AnnouncerOptions {
                                mode: AttachMode::Tc,
                                gratuitous: GratuitousConfig::default(),
                                liveness_interval: Duration::from_secs(1),
                                node_fence: false,
                            },
                        )
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((actix::System::current(), control_plane))
                });
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    let _ = system.run();
                }
            })
        };
        let (system, control_plane) = rx.recv().map_err(|e| err(&e))?.map_err(|e| err(&e))?;
        Ok(ControlPlaneNode {
            name: options.name,
            db,
            log,
            waits,
            datapath,
            system: Some(system),
            control_plane: Some(control_plane),
            thread: Some(thread),
        })
    }

    /// The `l2-announce` rows of this node.
    pub fn announce_rows(&self) -> Vec<L2AnnounceRow> {
        statedb::Table::open(&self.db, L2_ANNOUNCE)
            .and_then(|t| t.list(&self.db))
            .map(|rows| rows.into_iter().map(|e| e.row).collect())
            .unwrap_or_default()
    }

    /// The `leases` rows of this node.
    pub fn lease_rows(&self) -> Vec<LeaseRow> {
        statedb::Table::open(&self.db, LEASES)
            .and_then(|t| t.list(&self.db))
            .map(|rows| rows.into_iter().map(|e| e.row).collect())
            .unwrap_or_default()
    }

    /// The `policies` rows of this node.
    pub fn policy_rows(&self) -> Vec<PolicyRow> {
        statedb::Table::open(&self.db, POLICIES)
            .and_then(|t| t.list(&self.db))
            .map(|rows| rows.into_iter().map(|e| e.row).collect())
            .unwrap_or_default()
    }

    /// Services this node announces (origins of its rows).
    pub fn announced_services(&self) -> BTreeSet<String> {
        self.announce_rows()
            .into_iter()
            .flat_map(|r| r.origins)
            .collect()
    }

    /// The IPs the modelled datapath answers now, per interface index.
    pub fn answering(&self) -> BTreeMap<u32, BTreeSet<IpAddr>> {
        let now = bpf::monotonic_now_ns();
        let state = self.datapath.state();
        let mut out: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
        for &(ip, ifindex) in state.entries.keys() {
            if state.answers(ip, ifindex, now) {
                out.entry(ifindex).or_default().insert(ip);
            }
        }
        out
    }

    /// The last fence this node's datapath was given for `claim`.
    pub fn last_fence(&self, claim: &str) -> Option<Instant> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.renewed
            .iter()
            .rev()
            .find(|(e, _, _)| e == claim)
            .map(|(_, f, _)| *f)
    }

    /// Graceful stop, as on SIGTERM: fences closed, leases released, then
    /// everything stopped.
    pub fn terminate(&mut self) {
        if let Some(control_plane) = self.control_plane.take() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(control_plane.shutdown(Duration::from_secs(3)));
            }
        }
        self.kill();
    }

    /// Stops at once, releasing nothing (as a crash).
    pub fn kill(&mut self) {
        self.control_plane = None;
        if let Some(system) = self.system.take() {
            system.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlPlaneNode {
    fn drop(&mut self) {
        self.kill();
    }
}
