//! In-process control-plane nodes: the agent's Policy, Service and Lease
//! actors on their own actix System (one thread per node) against an API
//! server, with the datapath replaced by a recorder of what the
//! AnnounceActor would receive (fences, election groups). Devices are given
//! by the test instead of netlink. For the datapath itself see the
//! namespace tests; for whole agents, the lab.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, AsyncContext, Context, Handler};
use actors::election::LeaseTiming;
use actors::events::ServiceEvents;
use actors::kubeclient::{self, ThrottleObserver};
use actors::lease::{LeaseActor, NoLeaseObserver};
use actors::messages::{ElectionGroups, ReleaseAll, Renewed, SelectedDevices};
use actors::policy_actor::{NoPolicyObserver, PolicyActor};
use actors::service_actor::ServiceActor;
use actors::tables::{L2_ANNOUNCE, L2AnnounceRow, LEASES, LeaseRow, POLICIES, PolicyRow};

/// What the datapath side of one node received.
#[derive(Debug, Default)]
pub struct DatapathLog {
    /// Every fence extension: (election, fence_until, received at).
    pub renewed: Vec<(String, Instant, Instant)>,
    pub groups: BTreeMap<String, String>,
}

struct Recorder(Arc<Mutex<DatapathLog>>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<Renewed> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: Renewed, _: &mut Context<Self>) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.renewed
            .push((msg.service, msg.fence_until, Instant::now()));
    }
}

impl Handler<ElectionGroups> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: ElectionGroups, _: &mut Context<Self>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).groups = msg.0;
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
        }
    }
}

/// One running node.
pub struct ControlPlaneNode {
    pub name: String,
    pub db: statedb::Db,
    pub log: Arc<Mutex<DatapathLog>>,
    pub waits: Arc<WaitCounter>,
    system: Option<actix::System>,
    lease: Option<Addr<LeaseActor>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0}: {1}")]
    Start(String, String),
}

impl ControlPlaneNode {
    /// Starts the node's actors against the API server at `url`.
    pub fn start(url: &str, options: NodeOptions) -> Result<ControlPlaneNode, NodeError> {
        let err = |e: &dyn std::fmt::Display| NodeError::Start(options.name.clone(), e.to_string());
        let db = statedb::Db::open_temporary().map_err(|e| err(&e))?;
        let log = Arc::new(Mutex::new(DatapathLog::default()));
        let waits = Arc::new(WaitCounter::default());
        let uri: http::Uri = url.parse().map_err(|e| err(&e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let db = db.clone();
            let log = log.clone();
            let waits = waits.clone();
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
                    let recorder = Recorder(log).start();
                    let service_ctx = Context::<ServiceActor>::new();
                    let service_addr = service_ctx.address();
                    let lease = LeaseActor::new(
                        client.clone(),
                        &options.namespace,
                        &options.name,
                        options.timing,
                        db.clone(),
                        service_addr.clone().recipient(),
                        recorder.clone().recipient(),
                        Arc::new(NoLeaseObserver),
                    )
                    .map_err(|e| e.to_string())?
                    .with_gc_interval(options.gc_interval)
                    .start();
                    let events = ServiceEvents::start(client.clone(), &options.name);
                    let service = ServiceActor::new(
                        client.clone(),
                        &options.name,
                        options.external_ips_enabled,
                        db,
                        lease.clone().recipient(),
                        lease.clone().recipient(),
                        recorder.recipient(),
                        events,
                    )
                    .map_err(|e| e.to_string())?;
                    service_ctx.run(service);
                    service_addr.do_send(SelectedDevices(options.devices.clone()));
                    PolicyActor::new(client, service_addr.recipient(), Arc::new(NoPolicyObserver))
                        .start();
                    Ok::<_, String>((actix::System::current(), lease))
                });
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    let _ = system.run();
                }
            })
        };
        let (system, lease) = rx.recv().map_err(|e| err(&e))?.map_err(|e| err(&e))?;
        Ok(ControlPlaneNode {
            name: options.name,
            db,
            log,
            waits,
            system: Some(system),
            lease: Some(lease),
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

    /// The last fence this node's datapath was given for `election`.
    pub fn last_fence(&self, election: &str) -> Option<Instant> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.renewed
            .iter()
            .rev()
            .find(|(e, _, _)| e == election)
            .map(|(_, f, _)| *f)
    }

    /// Graceful stop, as on SIGTERM: releases the leases, then stops.
    pub fn terminate(&mut self) {
        if let Some(lease) = self.lease.take() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(3), lease.send(ReleaseAll)).await
                });
            }
        }
        self.kill();
    }

    /// Stops at once, releasing nothing (as a crash).
    pub fn kill(&mut self) {
        self.lease = None;
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
