//! The lab: a virtual LAN of network namespaces with real agents.
//!
//! A Linux bridge in the host namespace (`<id>-br`, 198.51.100.254/24, the
//! management network where the test API server listens) joins three nodes
//! (`<id>-node-N`, each with an `eth0` carrying 192.0.2.1N/24,
//! 2001:db8::1N/64 and 198.51.100.1N/24) and a client (`<id>-client`,
//! 192.0.2.2/24 and 2001:db8::2/64). Every node runs `l2announcer run`
//! (through `ip netns exec`) with short lease timings, has the Service IPs
//! on its `lo` (arp_ignore=1 / arp_announce=2 so the kernel never answers
//! ARP for them, only the eBPF responder does) and serves
//! `served by node-N` over HTTP on port 80.
//!
//! The Kubernetes side is deploy/'s CRD, the reference example policy
//! (deploy/examples/l2-policy.yaml: Services labelled `color: blue`, nodes
//! without `node-role.kubernetes.io/control-plane`, which node-3 carries,
//! so node-3 never announces) and the two example Services
//! (deploy/examples/service-*.yaml: a LoadBalancer Service whose status gets
//! 192.0.2.100 and 2001:db8::100, an externalIPs Service with 192.0.2.101
//! and 2001:db8::101).
//!
//! [`Lab`] is a running lab owned by this process (torn down on drop);
//! [`LabState`] is its description on disk (`state.json`), enough for
//! another process to kill, start or enter a node and to tear it all down.
//! Also here: a paced ARP prober that keeps every reply ([`ProbeSession`]),
//! pcap analysis of gratuitous ARP / unsolicited NA, `/metrics` scraping.
//!
//! It is not the demo script (that is `src/bin/lab.rs`) and not a general
//! network emulator: the topology and addresses are fixed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};

use crate::apiserver::TestApiServer;
use crate::netns::{NetnsError, enter_path, format_mac, parse_mac, run};
use crate::pcap::PcapError;
use crate::probe::{ArpProber, ProbeError, monotonic_ns};

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("lab state: {0}")]
    State(String),
    #[error("interrupted")]
    Interrupted,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
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

/// Set by [`install_interrupt_handler`] on SIGINT/SIGTERM; every wait of
/// this module gives up with [`LabError::Interrupted`] once it is set.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into [`INTERRUPTED`] (so Drop guards clean up).
pub fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupt() -> Result<(), LabError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// Polls `f` until it returns `Some`, every `every`, up to `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>, LabError>,
) -> Result<T, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout(timeout, what.to_string()));
        }
        std::thread::sleep(every);
    }
}

/// One node of a lab, as recorded in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Kubernetes node name, `node-N`.
    pub name: String,
    pub netns: String,
    /// The bridge end of its `eth0` veth.
    pub host_if: String,
    /// MAC of its `eth0`.
    pub mac: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub mgmt: Ipv4Addr,
    pub metrics_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    pub bpf_root: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

/// A lab's description on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub id: String,
    pub dir: PathBuf,
    pub bridge: String,
    pub client_netns: String,
    pub client_host_if: String,
    pub client_mac: String,
    pub kubeconfig: PathBuf,
    pub apiserver: String,
    pub agent_bin: PathBuf,
    /// The process hosting the API server (and the HTTP servers).
    pub host_pid: u32,
    pub nodes: Vec<NodeState>,
    /// `--k8s-client-qps` and `--k8s-client-burst` of agents started from
    /// now on.
    #[serde(default = "default_client_rate")]
    pub client_rate: (f64, u32),
}

/// Renewing every 200 ms per Service needs more than the default 5 qps
/// (else renewals wait on the client's token bucket past the 1 s renew
/// deadline and leases flap).
fn default_client_rate() -> (f64, u32) {
    (50.0, 100)
}

impl LabState {
    /// Reads `<dir>/state.json`.
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(path.display().to_string()))?;
        serde_json::from_str(&text).map_err(|e| LabError::State(e.to_string()))
    }

    fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join("state.json");
        let text =
            serde_json::to_string_pretty(self).map_err(|e| LabError::State(e.to_string()))?;
        std::fs::write(&path, text).map_err(io_err(path.display().to_string()))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Result<&NodeState, LabError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::State(format!("no node {name:?} in lab {}", self.id)))
    }

    /// The node whose `eth0` has `mac`.
    pub fn node_by_mac(&self, mac: [u8; 6]) -> Option<&NodeState> {
        let m = format_mac(mac);
        self.nodes.iter().find(|n| n.mac == m)
    }

    /// The agent's command line of a node (not started).
    pub fn agent_command(&self, node: &NodeState) -> Command {
        // nsenter, not `ip netns exec`: the latter remounts /sys in a mount
        // namespace of its own, which hides the host's bpffs at /sys/fs/bpf.
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", node.netns))
            .arg("--")
            .arg(&self.agent_bin)
            .args([
                "run",
                "--enable-l2-announcements",
                "--enable-external-ips",
                "--node-name",
                &node.name,
                "--devices",
                "eth0",
                "--l2-announcements-lease-duration",
                "3s",
                "--l2-announcements-renew-deadline",
                "1s",
                "--l2-announcements-retry-period",
                "200ms",
                "--k8s-client-qps",
                &self.client_rate.0.to_string(),
                "--k8s-client-burst",
                &self.client_rate.1.to_string(),
                "--prometheus-serve-addr",
                &node.metrics_addr.to_string(),
            ])
            .arg("--k8s-kubeconfig-path")
            .arg(&self.kubeconfig)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--api-socket")
            .arg(&node.api_socket)
            .arg("--bpf-root")
            .arg(&node.bpf_root);
        c
    }

    /// Starts the agent of `name` (detached in its own process group, output
    /// appended to its log); records its pid. Returns the child.
    pub fn start_agent(&self, name: &str) -> Result<Child, LabError> {
        use std::os::unix::process::CommandExt;
        let node = self.node(name)?;
        if let Some(pid) = self.agent_pid(name) {
            return Err(LabError::State(format!(
                "agent of {name} is already running (pid {pid})"
            )));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io_err(node.log.display().to_string()))?;
        let log2 = log.try_clone().map_err(io_err("log"))?;
        let mut cmd = self.agent_command(node);
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd.spawn().map_err(io_err(format!("starting {cmd:?}")))?;
        std::fs::write(&node.pid_file, child.id().to_string())
            .map_err(io_err(node.pid_file.display().to_string()))?;
        tracing::info!(node = name, pid = child.id(), "agent started");
        Ok(child)
    }

    /// The pid of the node's agent when it is alive (not a zombie).
    pub fn agent_pid(&self, name: &str) -> Option<u32> {
        let node = self.node(name).ok()?;
        let pid: u32 = std::fs::read_to_string(&node.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Sends `signal` to the node's agent; returns its pid.
    pub fn signal_agent(&self, name: &str, signal: libc::c_int) -> Result<u32, LabError> {
        let pid = self
            .agent_pid(name)
            .ok_or_else(|| LabError::State(format!("agent of {name} is not running")))?;
        // SAFETY: kill(2) of a pid read from our pid file and seen alive.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
        Ok(pid)
    }

    /// `ip netns exec <node> <argv>` with inherited stdio; its exit code.
    pub fn exec(&self, name: &str, argv: &[String]) -> Result<i32, LabError> {
        let ns = if name == "client" {
            self.client_netns.clone()
        } else {
            self.node(name)?.netns.clone()
        };
        let status = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(argv)
            .status()
            .map_err(io_err("ip netns exec"))?;
        Ok(status.code().unwrap_or(1))
    }

    /// `l2announcer statedb <table>` run inside the node's namespace.
    pub fn statedb(&self, name: &str, table: &str) -> Result<String, LabError> {
        let node = self.node(name)?;
        let out = run(Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(&self.agent_bin)
            .args(["statedb", table, "--api-socket"])
            .arg(&node.api_socket))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// GET `path` from the node's metrics server (over the management LAN).
    pub fn http_get_metrics(&self, name: &str, path: &str) -> Result<String, LabError> {
        let node = self.node(name)?;
        http_get(node.metrics_addr, path, Duration::from_secs(2))
    }

    /// The sum of every sample of `metric` whose label text contains all of
    /// `labels` (e.g. `ip="192.0.2.100"`), from the node's `/metrics`.
    pub fn metric(&self, name: &str, metric: &str, labels: &[&str]) -> Result<f64, LabError> {
        let text = self.http_get_metrics(name, "/metrics")?;
        Ok(metric_sum(&text, metric, labels))
    }

    /// The last `lines` lines of every agent's log, for error messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ({})\n", n.name, n.log.display()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Tears everything down: agents (SIGTERM, then SIGKILL), namespaces,
    /// links, pinned objects and the state directory. Best effort.
    pub fn teardown(&self) {
        for n in &self.nodes {
            if let Some(pid) = self.agent_pid(&n.name) {
                // SAFETY: kill(2) of our agent's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for n in &self.nodes {
            while let Some(pid) = self.agent_pid(&n.name) {
                if Instant::now() >= deadline {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for ns in self
            .nodes
            .iter()
            .map(|n| n.netns.as_str())
            .chain([self.client_netns.as_str()])
        {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for link in self
            .nodes
            .iter()
            .map(|n| n.host_if.as_str())
            .chain([self.client_host_if.as_str(), self.bridge.as_str()])
        {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
        for n in &self.nodes {
            let _ = std::fs::remove_dir_all(&n.bpf_root);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True when `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Sum of the samples of `metric` whose labels contain every `labels` part.
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (name, lbl) = match head.split_once('{') {
            Some((n, l)) => (n, l),
            None => (head, ""),
        };
        if name == metric && labels.iter().all(|p| lbl.contains(p)) {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// A plain HTTP/1.0 GET; the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, LabError> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(io_err(format!("connecting {addr}")))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_err("timeout"))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io_err("sending request"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(io_err(format!("reading from {addr}")))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(LabError::State(format!(
            "bad answer from {addr}: {resp:.80}"
        ))),
    }
}

/// Runs `f` on a new thread inside the namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LabError> {
    let name = netns.to_string();
    let handle = std::thread::spawn(move || -> Result<T, NetnsError> {
        enter_path(&name, &Path::new("/run/netns").join(&name))?;
        Ok(f())
    });
    match handle.join() {
        Ok(r) => Ok(r?),
        Err(panic) => std::panic::resume_unwind(panic),
    }
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
}

impl LabConfig {
    /// `l2alab` in /run/l2announcer-lab with the agent next to this binary.
    pub fn demo(agent_bin: PathBuf) -> LabConfig {
        LabConfig {
            id: "l2alab".into(),
            dir: PathBuf::from("/run/l2announcer-lab"),
            agent_bin,
        }
    }

    /// A lab with a name unique to this process and call (`l2e<pid>-<n>`),
    /// its state in a directory under /run.
    pub fn unique(agent_bin: PathBuf) -> LabConfig {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "l2e{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        LabConfig {
            dir: PathBuf::from(format!("/run/l2announcer-{id}")),
            id,
            agent_bin,
        }
    }
}

struct HttpServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServers {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_http(
    netns: String,
    node: String,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, LabError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), LabError>>();
    let handle = std::thread::spawn(move || {
        let setup = enter_path(&netns, &Path::new("/run/netns").join(&netns))
            .map_err(LabError::from)
            .and_then(|()| {
                // [::] takes IPv4 too (v4-mapped) unless bindv6only is set.
                let l = TcpListener::bind("[::]:80").map_err(io_err("binding [::]:80"))?;
                l.set_nonblocking(true).map_err(io_err("nonblocking"))?;
                Ok(l)
            });
        let listener = match setup {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let body = format!("served by {node}\n");
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                // Accept is non-blocking so the stop flag is seen.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LabError::Timeout(
            Duration::from_secs(5),
            "HTTP server to listen".into(),
        )),
    }
}

/// A running lab owned by this process. Dropping it tears everything down.
pub struct Lab {
    pub state: LabState,
    rt: tokio::runtime::Runtime,
    server: Option<TestApiServer>,
    client: kube::Client,
    http: HttpServers,
    children: Mutex<BTreeMap<String, Child>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("state", &self.state).finish()
    }
}

fn sh(args: &[&str]) -> Result<(), LabError> {
    run(Command::new(args[0]).args(&args[1..]))?;
    Ok(())
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
        let nodes: Vec<NodeState> = (1..=NODES)
            .map(|i| {
                let ndir = config.dir.join(format!("node-{i}"));
                NodeState {
                    name: format!("node-{i}"),
                    netns: format!("{id}-node-{i}"),
                    host_if: format!("{id}-n{i}"),
                    mac: format!("02:1a:b0:00:00:{:02x}", 0x10 + i),
                    v4: Ipv4Addr::new(192, 0, 2, 10 + i as u8),
                    v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + i as u16),
                    mgmt: Ipv4Addr::new(198, 51, 100, 10 + i as u8),
                    metrics_addr: SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8)),
                        METRICS_PORT,
                    ),
                    state_dir: ndir.join("state"),
                    api_socket: ndir.join("l2announcer.sock"),
                    bpf_root: PathBuf::from(format!("/sys/fs/bpf/{id}-node-{i}")),
                    log: ndir.join("agent.log"),
                    pid_file: ndir.join("agent.pid"),
                }
            })
            .collect();
        let mut state = LabState {
            id: id.clone(),
            dir: config.dir.clone(),
            bridge: format!("{id}-br"),
            client_netns: format!("{id}-client"),
            client_host_if: format!("{id}-c"),
            client_mac: "02:1a:b0:00:00:02".into(),
            kubeconfig: config.dir.join("kubeconfig"),
            apiserver: String::new(),
            agent_bin: config.agent_bin.clone(),
            host_pid: std::process::id(),
            nodes,
            client_rate: default_client_rate(),
        };
        // From here on a failure tears down what exists (Lab's Drop, or this
        // guard until the Lab is built).
        state.save()?;
        let guard = TeardownGuard(Some(state.clone()));
        build_topology(&state)?;
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
            .map_err(|e| LabError::Api(e.to_string()))?;
        server
            .write_kubeconfig(&state.kubeconfig)
            .map_err(|e| LabError::Api(e.to_string()))?;
        state.apiserver = server.url();
        state.save()?;
        let client = {
            let _entered = rt.enter();
            server.client().map_err(|e| LabError::Api(e.to_string()))?
        };
        rt.block_on(apply_objects(client.clone()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for n in &state.nodes {
            threads.push(serve_http(n.netns.clone(), n.name.clone(), stop.clone())?);
        }
        let lab = Lab {
            state: state.clone(),
            rt,
            server: Some(server),
            client,
            http: HttpServers { stop, threads },
            children: Mutex::new(BTreeMap::new()),
        };
        std::mem::forget(guard);
        for n in &state.nodes {
            std::fs::create_dir_all(&n.state_dir)
                .map_err(io_err(n.state_dir.display().to_string()))?;
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

    /// Takes the API server away for `downtime` (listener and connections
    /// closed, objects kept), then brings it back; returns when it is back.
    pub fn api_outage(&self, downtime: Duration) -> Result<(), LabError> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| LabError::State("the API server runs elsewhere".into()))?;
        self.rt
            .block_on(server.restart(downtime))
            .map_err(|e| LabError::Api(e.to_string()))
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

    /// The current holder of `service`'s lease (in `default`), when valid.
    pub fn holder(&self, service: &str) -> Result<Option<String>, LabError> {
        let client = self.client();
        let name = format!("cilium-l2announce-default-{service}");
        let lease = self
            .rt
            .block_on(async move {
                Api::<Lease>::namespaced(client, "kube-system")
                    .get_opt(&name)
                    .await
            })
            .map_err(|e| LabError::Api(e.to_string()))?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
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

    /// Sends `signal` to a node's agent and waits until it has exited;
    /// returns the monotonic time (ns) just before the signal.
    pub fn kill(&self, name: &str, signal: libc::c_int) -> Result<u64, LabError> {
        let at = monotonic_ns();
        self.state.signal_agent(name, signal)?;
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

    /// Runs `argv` in the client namespace; its stdout (whatever the status).
    pub fn client_output(&self, argv: &[&str]) -> Result<String, LabError> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.state.client_netns])
            .args(argv)
            .output()
            .map_err(io_err(format!("running {argv:?}")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The MACs `arping` in the client sees answering `vip` (`count` requests).
    pub fn arping(&self, vip: Ipv4Addr, count: u32) -> Result<Vec<[u8; 6]>, LabError> {
        let out = self.client_output(&[
            "arping",
            "-c",
            &count.to_string(),
            "-w",
            "3",
            "-I",
            "eth0",
            &vip.to_string(),
        ])?;
        Ok(bracketed_macs(&out))
    }

    /// The MACs `ndisc6` in the client sees answering `vip` (every answer
    /// to one solicitation, `-m`).
    pub fn ndisc(&self, vip: Ipv6Addr) -> Result<Vec<[u8; 6]>, LabError> {
        let out = self.client_output(&[
            "ndisc6",
            "-m",
            "-n",
            "-r",
            "3",
            "-w",
            "300",
            &vip.to_string(),
            "eth0",
        ])?;
        let mut macs = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.split_once("address:").map(|x| x.1)
                && let Some(mac) = parse_mac(rest.trim())
                && !macs.contains(&mac)
            {
                macs.push(mac);
            }
        }
        Ok(macs)
    }

    /// An HTTP GET from the client to `vip`:80; the body.
    pub fn client_http(&self, vip: IpAddr) -> Result<String, LabError> {
        let _ = self.client_output(&["ip", "neigh", "flush", "all"]);
        in_netns(&self.state.client_netns, move || {
            http_get(SocketAddr::new(vip, 80), "/", Duration::from_secs(3))
        })?
    }

    /// Starts a paced tagged ARP prober in the client for `vip`.
    pub fn probe(&self, vip: Ipv4Addr, period: Duration) -> Result<ProbeSession, LabError> {
        ProbeSession::start(&self.state.client_netns, vip, period)
    }

    /// Starts tcpdump on the client's eth0 (ARP and ICMPv6) into `path`.
    pub fn capture(&self, path: &Path) -> Result<Capture, LabError> {
        Capture::start(&self.state.client_netns, path)
    }

    /// Stops everything and removes it (also done on drop).
    pub fn down(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        self.http.stop();
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

struct TeardownGuard(Option<LabState>);

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.teardown();
        }
    }
}

fn bracketed_macs(out: &str) -> Vec<[u8; 6]> {
    let mut macs = Vec::new();
    for part in out.split('[').skip(1) {
        if let Some(mac) = part.split(']').next().and_then(parse_mac)
            && !macs.contains(&mac)
        {
            macs.push(mac);
        }
    }
    macs
}

fn build_topology(s: &LabState) -> Result<(), LabError> {
    let mgmt = format!("{MGMT_HOST}/24");
    sh(&["ip", "link", "add", &s.bridge, "type", "bridge"])?;
    // No IPv6 on the host end: the bridge only forwards for the nodes.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", s.bridge),
        "1",
    );
    // The host answers ARP only for the bridge's own address there: with
    // arp_ignore=0 it would answer for any of its addresses (a host whose
    // own uplink sits in 192.0.2.0/24 would then steal the client's IP).
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{}/arp_ignore", s.bridge),
        "1",
    );
    sh(&["ip", "addr", "add", &mgmt, "dev", &s.bridge])?;
    sh(&["ip", "link", "set", &s.bridge, "up"])?;
    let mut hosts: Vec<(&str, &str, &str)> = s
        .nodes
        .iter()
        .map(|n| (n.netns.as_str(), n.host_if.as_str(), n.mac.as_str()))
        .collect();
    hosts.push((&s.client_netns, &s.client_host_if, &s.client_mac));
    for (ns, host_if, mac) in hosts {
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "address", mac,
            "netns", ns,
        ])?;
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"),
            "1",
        );
        sh(&["ip", "link", "set", host_if, "master", &s.bridge])?;
        sh(&["ip", "link", "set", host_if, "up"])?;
    }
    let c = s.client_netns.as_str();
    sh(&[
        "ip",
        "-n",
        c,
        "addr",
        "add",
        &format!("{CLIENT_V4}/24"),
        "dev",
        "eth0",
    ])?;
    sh(&[
        "ip",
        "-n",
        c,
        "addr",
        "add",
        &format!("{CLIENT_V6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    sh(&["ip", "-n", c, "link", "set", "eth0", "up"])?;
    for n in &s.nodes {
        let ns = n.netns.as_str();
        for sysctl in [
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.eth0.arp_ignore=1",
            "net.ipv4.conf.eth0.arp_announce=2",
        ] {
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", sysctl])?;
        }
        // No DAD for the IPv6 address, so it is usable at once.
        for (addr, extra) in [
            (format!("{}/24", n.v4), None),
            (format!("{}/64", n.v6), Some("nodad")),
            (format!("{}/24", n.mgmt), None),
        ] {
            let mut args = vec!["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"];
            args.extend(extra);
            sh(&args)?;
        }
        for vip in [format!("{LB_V4}/32"), format!("{EXT_V4}/32")] {
            sh(&["ip", "-n", ns, "addr", "add", &vip, "dev", "lo"])?;
        }
        for vip in [format!("{LB_V6}/128"), format!("{EXT_V6}/128")] {
            sh(&["ip", "-n", ns, "addr", "add", &vip, "dev", "lo", "nodad"])?;
        }
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        std::fs::create_dir_all(&n.state_dir).map_err(io_err(n.state_dir.display().to_string()))?;
    }
    Ok(())
}

const CRD_YAML: &str = include_str!("../../deploy/crd/ciliuml2announcementpolicies.yaml");
const POLICY_YAML: &str = include_str!("../../deploy/examples/l2-policy.yaml");
const LB_YAML: &str = include_str!("../../deploy/examples/service-loadbalancer.yaml");
const EXT_YAML: &str = include_str!("../../deploy/examples/service-externalips.yaml");

fn api_err(e: impl std::fmt::Display) -> LabError {
    LabError::Api(e.to_string())
}

async fn apply_objects(client: kube::Client) -> Result<(), LabError> {
    let pp = PostParams::default();
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD_YAML).map_err(api_err)?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&pp, &crd)
        .await
        .map_err(api_err)?;
    for ns in ["kube-system"] {
        let obj: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": ns}
        }))
        .map_err(api_err)?;
        if let Err(e) = Api::<Namespace>::all(client.clone())
            .create(&pp, &obj)
            .await
            && !e.to_string().contains("already exists")
        {
            return Err(api_err(e));
        }
    }
    for i in 1..=NODES {
        let mut labels = serde_json::json!({
            "kubernetes.io/hostname": format!("node-{i}"),
            "kubernetes.io/os": "linux",
        });
        if i == NODES {
            labels["node-role.kubernetes.io/control-plane"] = serde_json::json!("");
        }
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("node-{i}"), "labels": labels}
        }))
        .map_err(api_err)?;
        Api::<Node>::all(client.clone())
            .create(&pp, &node)
            .await
            .map_err(api_err)?;
    }
    let ar = ApiResource {
        group: "cilium.io".into(),
        version: "v2alpha1".into(),
        api_version: "cilium.io/v2alpha1".into(),
        kind: "CiliumL2AnnouncementPolicy".into(),
        plural: "ciliuml2announcementpolicies".into(),
    };
    let policy: DynamicObject = serde_yaml::from_str(POLICY_YAML).map_err(api_err)?;
    let policies = Api::<DynamicObject>::all_with(client.clone(), &ar);
    // The CRD starts serving its kind right after creation; retry briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match policies.create(&pp, &policy).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "policy not accepted yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(api_err(e)),
        }
    }
    let services = Api::<Service>::namespaced(client.clone(), "default");
    for yaml in [LB_YAML, EXT_YAML] {
        let mut svc: Service = serde_yaml::from_str(yaml).map_err(api_err)?;
        svc.status = None;
        services.create(&pp, &svc).await.map_err(api_err)?;
    }
    let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [
        {"ip": LB_V4.to_string()}, {"ip": LB_V6.to_string()}
    ]}}});
    services
        .patch_status(LB_SERVICE, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(api_err)?;
    Ok(())
}

/// One request of a [`ProbeSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Monotonic ns just before sending.
    pub sent_ns: u64,
    /// Every reply to it: (monotonic ns read, sender MAC).
    pub replies: Vec<(u64, [u8; 6])>,
}

/// A tagged ARP request for one VIP every period from the client, on its
/// own thread, keeping every reply (so two answering MACs are seen).
pub struct ProbeSession {
    log: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), LabError>>>,
}

impl ProbeSession {
    /// Starts probing `vip` from `eth0` in `netns`.
    pub fn start(netns: &str, vip: Ipv4Addr, period: Duration) -> Result<ProbeSession, LabError> {
        let prober = in_netns(netns, || ArpProber::open("eth0", CLIENT_V4))??;
        let log: Arc<Mutex<Vec<Probe>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || -> Result<(), LabError> {
            let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
            let mut next = monotonic_ns();
            while !s.load(Ordering::SeqCst) {
                let now = monotonic_ns();
                if now >= next {
                    let tag =
                        u32::try_from(l.lock().map(|v| v.len()).unwrap_or(0)).unwrap_or(u32::MAX);
                    let sent_ns = prober.send_request(vip, Some(tag))?;
                    if let Ok(mut v) = l.lock() {
                        v.push(Probe {
                            sent_ns,
                            replies: Vec::new(),
                        });
                    }
                    next = sent_ns.max(next) + period_ns;
                }
                let wait = Duration::from_nanos(next.saturating_sub(monotonic_ns()));
                if let Some(r) = prober.recv_reply(wait)?
                    && r.packet.sender_ip == vip
                    && let Some(tag) = r.packet.tag()
                    && let Ok(mut v) = l.lock()
                    && let Some(p) = v.get_mut(tag as usize)
                {
                    p.replies.push((r.at_ns, r.packet.sender_mac));
                }
            }
            Ok(())
        });
        Ok(ProbeSession {
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// What was seen so far.
    pub fn snapshot(&self) -> Vec<Probe> {
        self.log.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits up to 15 s until `n` requests sent after `after_ns` (monotonic)
    /// were answered by `mac`.
    pub fn wait_answers(&self, mac: [u8; 6], after_ns: u64, n: usize) -> Result<(), LabError> {
        wait_until(
            &format!("{n} answers from {}", crate::netns::format_mac(mac)),
            Duration::from_secs(15),
            Duration::from_millis(10),
            || {
                let seen = self
                    .snapshot()
                    .iter()
                    .filter(|p| p.sent_ns > after_ns && p.replies.iter().any(|r| r.1 == mac))
                    .count();
                Ok((seen >= n).then_some(()))
            },
        )
    }

    /// Stops (after listening `grace` more for late replies); everything seen.
    pub fn stop(mut self, grace: Duration) -> Result<Vec<Probe>, LabError> {
        std::thread::sleep(grace);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r?,
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(self.snapshot())
    }
}

impl Drop for ProbeSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a probe run shows around a change of holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// Last reply (read time) from `old` at or after `from_ns`.
    pub last_old_ns: Option<u64>,
    /// First reply from a MAC other than `old` after `from_ns`.
    pub first_new_ns: Option<u64>,
    pub new_mac: Option<[u8; 6]>,
    /// Longest run without any reply, from the send time of the last
    /// answered request before it to the reply that ended it (ns).
    pub outage_ns: u64,
    /// Requests sent after `from_ns` without any reply.
    pub unanswered: usize,
    /// Requests answered by more than one MAC.
    pub doubly_answered: usize,
    pub requests: usize,
}

/// Analyses a probe log from `from_ns` on, `old` being the MAC before.
pub fn takeover(probes: &[Probe], old: [u8; 6], from_ns: u64) -> Takeover {
    let mut t = Takeover {
        last_old_ns: None,
        first_new_ns: None,
        new_mac: None,
        outage_ns: 0,
        unanswered: 0,
        doubly_answered: 0,
        requests: 0,
    };
    let mut last_answer: Option<u64> = None;
    for p in probes.iter().filter(|p| p.sent_ns >= from_ns) {
        t.requests += 1;
        let mut macs: Vec<[u8; 6]> = p.replies.iter().map(|r| r.1).collect();
        macs.dedup();
        if macs.len() > 1 {
            t.doubly_answered += 1;
        }
        for &(at, mac) in &p.replies {
            if mac == old {
                t.last_old_ns = Some(t.last_old_ns.map_or(at, |x| x.max(at)));
            } else if t.first_new_ns.is_none_or(|x| at < x) {
                t.first_new_ns = Some(at);
                t.new_mac = Some(mac);
            }
        }
        match p.replies.first() {
            None => t.unanswered += 1,
            Some(&(at, _)) => {
                if let Some(prev) = last_answer {
                    t.outage_ns = t.outage_ns.max(at.saturating_sub(prev));
                }
                last_answer = Some(p.sent_ns);
            }
        }
    }
    t
}

/// tcpdump on the client's `eth0`, ARP and ICMPv6 (stopped on drop).
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    fn start(netns: &str, path: &Path) -> Result<Capture, LabError> {
        let file = path.to_string_lossy().into_owned();
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", "eth0", "-w", &file])
            .args(["-U", "-n", "-Z", "root", "arp", "or", "icmp6"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("starting tcpdump"))?;
        let stderr = child.stderr.take();
        let capture = Capture {
            child,
            path: path.to_owned(),
        };
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        if let Some(stderr) = stderr {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return Ok(capture),
                Ok(_) => {}
                Err(_) => {
                    return Err(LabError::Timeout(
                        Duration::from_secs(10),
                        "tcpdump to listen".into(),
                    ));
                }
            }
        }
    }

    /// Gratuitous ARP (sender IP = target IP = `vip`) and unsolicited NA
    /// (type 136 for `vip6`) seen so far: (kind, monotonic ns, source MAC).
    pub fn announcements(
        &self,
        vip: Ipv4Addr,
        vip6: Ipv6Addr,
    ) -> Result<Vec<Announcement>, LabError> {
        let cap = crate::pcap::read(&self.path)?;
        let offset = realtime_minus_monotonic();
        let mut out = Vec::new();
        for p in &cap.packets {
            let at_ns = p.ts_ns.saturating_sub(offset);
            let d = &p.data;
            if let Some(a) = crate::probe::ArpPacket::parse(d) {
                if a.sender_ip == vip && a.target_ip == vip {
                    out.push(Announcement {
                        kind: AnnouncementKind::GratuitousArp,
                        at_ns,
                        mac: a.sender_mac,
                    });
                }
                continue;
            }
            // Ethernet + IPv6 (next header ICMPv6) + NA (136) for vip6.
            if d.len() >= 14 + 40 + 24
                && d[12..14] == [0x86, 0xdd]
                && d[14 + 6] == 58
                && d[54] == 136
                && d[62..78] == vip6.octets()
            {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&d[6..12]);
                out.push(Announcement {
                    kind: AnnouncementKind::UnsolicitedNa,
                    at_ns,
                    mac,
                });
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout` until both a gratuitous ARP for `vip` and an
    /// unsolicited NA for `vip6` from `mac` later than `after_ns` are in the
    /// capture; every announcement seen by then.
    pub fn wait_announced(
        &self,
        vip: Ipv4Addr,
        vip6: Ipv6Addr,
        mac: [u8; 6],
        after_ns: u64,
        timeout: Duration,
    ) -> Result<Vec<Announcement>, LabError> {
        wait_until(
            "gratuitous ARP and unsolicited NA in the capture",
            timeout,
            Duration::from_millis(50),
            || {
                let a = self.announcements(vip, vip6)?;
                let has = |k| {
                    a.iter()
                        .any(|x| x.kind == k && x.mac == mac && x.at_ns > after_ns)
                };
                Ok(
                    (has(AnnouncementKind::GratuitousArp) && has(AnnouncementKind::UnsolicitedNa))
                        .then_some(a),
                )
            },
        )
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) of our unreaped child (`ip netns exec` execs
            // tcpdump, so it is tcpdump).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

/// A gratuitous announcement seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    pub kind: AnnouncementKind,
    /// Monotonic ns (converted from the capture's wall clock).
    pub at_ns: u64,
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnouncementKind {
    GratuitousArp,
    UnsolicitedNa,
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` in ns, to put pcap times on the
/// prober's clock.
pub fn realtime_minus_monotonic() -> u64 {
    let mono = monotonic_ns();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    real.saturating_sub(mono)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metric_samples_by_label() {
        let text = "# HELP x\nl2announcer_responses_sent_total{ip=\"192.0.2.100\",interface=\"eth0\"} 5\nl2announcer_responses_sent_total{ip=\"192.0.2.101\",interface=\"eth0\"} 2\nl2announcer_leases_held 1\n";
        assert_eq!(
            metric_sum(text, "l2announcer_responses_sent_total", &[]),
            7.0
        );
        assert_eq!(
            metric_sum(
                text,
                "l2announcer_responses_sent_total",
                &["ip=\"192.0.2.101\""]
            ),
            2.0
        );
        assert_eq!(metric_sum(text, "l2announcer_leases_held", &[]), 1.0);
        assert_eq!(metric_sum(text, "l2announcer_leases", &[]), 0.0);
    }

    #[test]
    fn takeover_finds_the_gap_and_double_answers() {
        let a = [2, 0, 0, 0, 0, 1];
        let b = [2, 0, 0, 0, 0, 2];
        let probes = vec![
            Probe {
                sent_ns: 100,
                replies: vec![(101, a)],
            },
            Probe {
                sent_ns: 200,
                replies: vec![],
            },
            Probe {
                sent_ns: 300,
                replies: vec![],
            },
            Probe {
                sent_ns: 400,
                replies: vec![(402, b)],
            },
            Probe {
                sent_ns: 500,
                replies: vec![(501, b), (502, a)],
            },
        ];
        let t = takeover(&probes, a, 0);
        assert_eq!(t.last_old_ns, Some(502));
        assert_eq!(t.first_new_ns, Some(402));
        assert_eq!(t.new_mac, Some(b));
        assert_eq!(t.outage_ns, 302);
        assert_eq!(t.unanswered, 2);
        assert_eq!(t.doubly_answered, 1);
    }

    #[test]
    fn reads_arping_macs() {
        let out = "ARPING 192.0.2.100\nUnicast reply from 192.0.2.100 [02:1A:B0:00:00:11]  0.6ms\nUnicast reply from 192.0.2.100 [02:1A:B0:00:00:11]  0.5ms\n";
        assert_eq!(bracketed_macs(out), vec![[2, 0x1a, 0xb0, 0, 0, 0x11]]);
    }
}
