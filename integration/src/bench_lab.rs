//! The control-plane benchmark's lab: M nodes and a client on a bridge,
//! the test API server as its own process, real agents with the timings,
//! client rate and election mode the benchmark chooses.
//!
//! Everything lives in network namespaces named `<id>-*` (`id` =
//! `l2bench-<pid>-<n>`), the bridge included: `<id>-sw` holds `br0`
//! (198.51.100.254/24, no IPv6) and the `test-apiserver` process listening
//! there; `<id>-node-<i>` has an `eth0` (MAC `02:1b:00:01:00:<i>`,
//! 198.51.100.<10+i>/24) running `l2announcer run`; `<id>-client` has an
//! `eth0` (`02:1b:00:00:00:02`, 2001:db8::2/64) for the probes. Nothing is
//! added to the host's own network namespace, so a bench never collides
//! with a lab (integration::lab, whose bridge and 198.51.100.254 sit in the
//! host namespace). The benchmark's own Kubernetes client runs on a tokio
//! runtime whose threads live in `<id>-sw`.
//!
//! The cluster is the lab's ([`crate::lab::objects::apply_cluster`]): deploy/'s CRD,
//! the reference policy, nodes `node-1..node-M`, the last one a
//! control-plane node the policy never selects. The Services are the
//! benchmark's business.
//!
//! Child processes (the API server, the agents) get SIGKILL when the thread
//! that started them ends (PR_SET_PDEATHSIG), so start them from the main
//! thread; [`BenchLab`]'s Drop ends them and removes the namespaces, the
//! pinned BPF objects and the state directory; [`remove_stale`] removes
//! what a killed benchmark left. It is not the demo lab (fixed three nodes,
//! in-process API server, short timings).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube_test_apiserver::CounterKey;
use serde::{Deserialize, Serialize};

use crate::lab::objects::apply_cluster;
use crate::lab::{LabError, agent_user_agent, process_alive};
use crate::netns::{enter_path, run, run_in};
use crate::poll::{WaitError, wait_until};
use crate::probe::monotonic_ns;

/// Namespace prefix of every bench lab.
pub const PREFIX: &str = "l2bench";
/// The API server's address on the bench bridge.
pub const API_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const API_PORT: u16 = 6443;
/// The client's address (the source of the probes).
pub const CLIENT_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// Most nodes a bench lab has (addresses 198.51.100.11 and up).
pub const MAX_NODES: usize = 100;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

fn sh(args: &[&str]) -> Result<(), LabError> {
    run(Command::new(args[0]).args(&args[1..]))?;
    Ok(())
}

/// How the agents run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentOptions {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub qps: f64,
    pub burst: u32,
    /// `--l2-announcements-election` value (`node-heartbeat`,
    /// `per-service` or the benchmark-only `client-go`).
    pub election: String,
}

/// How to build a bench lab.
#[derive(Debug, Clone)]
pub struct BenchLabConfig {
    pub nodes: usize,
    pub agent_bin: PathBuf,
    pub apiserver_bin: PathBuf,
    pub agent: AgentOptions,
}

/// One node of a bench lab.
#[derive(Debug)]
pub struct BenchNode {
    /// Kubernetes node name, `node-<i>`.
    pub name: String,
    pub netns: String,
    pub mac: [u8; 6],
    pub mgmt: Ipv4Addr,
    /// Selected by the reference policy (not a control-plane node).
    pub eligible: bool,
    dir: PathBuf,
    bpf_root: PathBuf,
    agent: Option<Child>,
}

impl BenchNode {
    /// The agent's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The pid of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.agent
            .as_ref()
            .map(Child::id)
            .filter(|p| process_alive(*p))
    }
}

/// A request counter of the API server (`/__control/counters`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CounterRow {
    #[serde(flatten)]
    pub key: CounterKey,
    pub count: u64,
}

/// A running bench lab; Drop tears it down.
pub struct BenchLab {
    pub id: String,
    pub dir: PathBuf,
    pub switch_netns: String,
    pub client_netns: String,
    pub nodes: Vec<BenchNode>,
    pub kubeconfig: PathBuf,
    config: BenchLabConfig,
    apiserver: Option<Child>,
    rt: Option<tokio::runtime::Runtime>,
    client: Option<kube::Client>,
}

impl std::fmt::Debug for BenchLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchLab").field("id", &self.id).finish()
    }
}

/// Sets PR_SET_PDEATHSIG = SIGKILL in the child before exec.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the
    // parent; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl BenchLab {
    /// Builds the namespaces, starts the API server and creates the
    /// cluster objects. The agents are not started yet.
    pub fn up(config: BenchLabConfig) -> Result<BenchLab, LabError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if config.nodes < 2 || config.nodes > MAX_NODES {
            return Err(LabError::State(format!(
                "{} nodes: a bench lab has 2 to {MAX_NODES} (the last is not eligible)",
                config.nodes
            )));
        }
        let id = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = PathBuf::from("/run/l2announcer-bench").join(&id);
        let nodes = (1..=config.nodes)
            .map(|i| BenchNode {
                name: format!("node-{i}"),
                netns: format!("{id}-node-{i}"),
                mac: [0x02, 0x1b, 0, 0x01, 0, i as u8],
                mgmt: Ipv4Addr::new(198, 51, 100, 10 + i as u8),
                eligible: i != config.nodes,
                dir: dir.join(format!("node-{i}")),
                bpf_root: PathBuf::from(format!("/sys/fs/bpf/{id}-node-{i}")),
                agent: None,
            })
            .collect();
        let mut lab = BenchLab {
            switch_netns: format!("{id}-sw"),
            client_netns: format!("{id}-client"),
            kubeconfig: dir.join("kubeconfig"),
            id,
            dir,
            nodes,
            config,
            apiserver: None,
            rt: None,
            client: None,
        };
        // From here on a failure tears down what exists (Drop).
        std::fs::create_dir_all(&lab.dir).map_err(io_err(lab.dir.display().to_string()))?;
        lab.build_topology()?;
        lab.start_apiserver()?;
        lab.apply_cluster()?;
        Ok(lab)
    }

    fn build_topology(&self) -> Result<(), LabError> {
        let sw = self.switch_netns.as_str();
        sh(&["ip", "netns", "add", sw])?;
        sh(&["ip", "-n", sw, "link", "set", "lo", "up"])?;
        // The switch speaks IPv4 only (to the API server); no IPv6 noise.
        sh(&[
            "ip",
            "netns",
            "exec",
            sw,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        sh(&[
            "ip",
            "-n",
            sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        sh(&[
            "ip",
            "-n",
            sw,
            "addr",
            "add",
            &format!("{API_HOST}/24"),
            "dev",
            "br0",
        ])?;
        sh(&["ip", "-n", sw, "link", "set", "br0", "up"])?;
        let client_mac = [0x02, 0x1b, 0, 0, 0, 0x02];
        let mut hosts: Vec<(String, String, [u8; 6])> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.netns.clone(), format!("n{}", i + 1), n.mac))
            .collect();
        hosts.push((self.client_netns.clone(), "c".into(), client_mac));
        for (ns, port, mac) in &hosts {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                sw,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &crate::mac::format(*mac),
                "netns",
                ns,
            ])?;
            sh(&["ip", "-n", sw, "link", "set", port, "master", "br0", "up"])?;
        }
        let c = self.client_netns.as_str();
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
        for n in &self.nodes {
            sh(&[
                "ip",
                "-n",
                &n.netns,
                "addr",
                "add",
                &format!("{}/24", n.mgmt),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &n.netns, "link", "set", "eth0", "up"])?;
            std::fs::create_dir_all(n.dir.join("state"))
                .map_err(io_err(n.dir.display().to_string()))?;
        }
        Ok(())
    }

    fn start_apiserver(&mut self) -> Result<(), LabError> {
        let log_path = self.dir.join("apiserver.log");
        let log =
            std::fs::File::create(&log_path).map_err(io_err(log_path.display().to_string()))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.switch_netns))
            .arg("--")
            .arg(&self.config.apiserver_bin)
            .arg("--listen")
            .arg(format!("{API_HOST}:{API_PORT}"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            // Ctrl-C reaches the benchmark, which stops the server last.
            cmd.process_group(0);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(io_err(format!(
            "starting {}",
            self.config.apiserver_bin.display()
        )))?;
        let stdout = child.stdout.take();
        self.apiserver = Some(child);
        // The server prints its URL once it listens.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(out).read_line(&mut line);
                let _ = tx.send(line);
            });
        }
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| WaitError::Timeout {
                what: "the test API server to listen".into(),
                after: Duration::from_secs(20),
            })?;
        if !url.trim().starts_with("http://") {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(LabError::State(format!(
                "the test API server did not start: {log}"
            )));
        }
        let netns = self.switch_netns.clone();
        let path = Path::new("/run/netns").join(&netns);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // A thread that cannot enter talks to nothing: the API
                // server's address exists only in the switch namespace, so
                // the requests below fail loudly.
                if let Err(e) = enter_path(&netns, &path) {
                    tracing::error!(error = %e, "runtime thread outside the bench switch");
                }
            })
            .build()
            .map_err(io_err("tokio runtime"))?;
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|e: http::uri::InvalidUri| LabError::Api(e.to_string()))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        config.read_timeout = None;
        if let Ok(v) = http::HeaderValue::from_str("l2bench") {
            config.headers = vec![(http::header::USER_AGENT, v)];
        }
        let client = {
            let _entered = rt.enter();
            kube::Client::try_from(config).map_err(|e| LabError::Api(e.to_string()))?
        };
        self.rt = Some(rt);
        self.client = Some(client);
        Ok(())
    }

    /// Creates the cluster's objects from a thread inside the switch
    /// namespace: whatever thread ends up connecting, it can only reach
    /// this bench's API server (a lab in the host namespace listens on the
    /// same address).
    fn apply_cluster(&self) -> Result<(), LabError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| LabError::State("no runtime".into()))?;
        let client = self.client()?;
        let nodes = self.nodes.len();
        let path = Path::new("/run/netns").join(&self.switch_netns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter_path(&self.switch_netns, &path)?;
                    apply_cluster(rt, &client, nodes)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The benchmark's Kubernetes client (User-Agent `l2bench`).
    pub fn client(&self) -> Result<kube::Client, LabError> {
        self.client
            .clone()
            .ok_or_else(|| LabError::State("no API client".into()))
    }

    /// Runs `f` to completion on the runtime's threads (inside the switch
    /// namespace, where the API server is reachable).
    pub fn block_on<F>(&self, f: F) -> Result<F::Output, LabError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| LabError::State("no runtime".into()))?;
        rt.block_on(rt.spawn(f))
            .map_err(|e| LabError::State(format!("API task failed: {e}")))
    }

    /// The API server's request counters (cumulative).
    pub fn counters(&self) -> Result<Vec<CounterRow>, LabError> {
        let client = self.client()?;
        let text = self.block_on(async move {
            let req = http::Request::get("/__control/counters")
                .body(Vec::new())
                .map_err(|e| LabError::Api(e.to_string()))?;
            client
                .request_text(req)
                .await
                .map_err(|e| LabError::Api(e.to_string()))
        })??;
        serde_json::from_str(&text).map_err(|e| LabError::Api(format!("counters: {e}")))
    }

    /// The API server's pid.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver
            .as_ref()
            .map(Child::id)
            .filter(|p| process_alive(*p))
    }

    /// The agent's command line of node `i` (0-based).
    fn agent_command(&self, i: usize) -> Command {
        let n = &self.nodes[i];
        let o = &self.config.agent;
        let secs = |d: Duration| format!("{}ms", d.as_millis());
        // nsenter, not `ip netns exec` (which remounts /sys and hides the
        // host's bpffs).
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", n.netns))
            .arg("--")
            .arg(&self.config.agent_bin)
            .args([
                "run",
                "--enable-l2-announcements",
                "--enable-external-ips",
                "--node-name",
                &n.name,
                "--devices",
                "eth0",
                "--l2-announcements-lease-duration",
                &secs(o.lease_duration),
                "--l2-announcements-renew-deadline",
                &secs(o.renew_deadline),
                "--l2-announcements-retry-period",
                &secs(o.retry_period),
                "--k8s-client-qps",
                &o.qps.to_string(),
                "--k8s-client-burst",
                &o.burst.to_string(),
                "--prometheus-serve-addr",
                &format!("{}:9972", n.mgmt),
            ])
            .arg("--k8s-kubeconfig-path")
            .arg(&self.kubeconfig)
            .arg("--state-dir")
            .arg(n.dir.join("state"))
            .arg("--api-socket")
            .arg(n.dir.join("l2announcer.sock"))
            .arg("--bpf-root")
            .arg(&n.bpf_root);
        c.arg(format!("--l2-announcements-election={}", o.election));
        c
    }

    /// Starts every agent (call from the main thread: see the module docs).
    pub fn start_agents(&mut self) -> Result<(), LabError> {
        for i in 0..self.nodes.len() {
            let log_path = self.nodes[i].log();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io_err(log_path.display().to_string()))?;
            let log2 = log.try_clone().map_err(io_err("log"))?;
            let mut cmd = self.agent_command(i);
            cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
            {
                use std::os::unix::process::CommandExt;
                // Ctrl-C reaches the benchmark, which stops the agents.
                cmd.process_group(0);
            }
            die_with_parent(&mut cmd);
            let child = cmd.spawn().map_err(io_err(format!("starting {cmd:?}")))?;
            tracing::info!(node = %self.nodes[i].name, pid = child.id(), "agent started");
            self.nodes[i].agent = Some(child);
        }
        Ok(())
    }

    /// Waits until every agent answers `/readyz` and watches Services (its
    /// watch is in the API server's counters).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), LabError> {
        let addrs: Vec<(String, std::net::SocketAddr)> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    std::net::SocketAddr::new(n.mgmt.into(), 9972),
                )
            })
            .collect();
        wait_until(
            "every agent ready and watching Services",
            timeout,
            Duration::from_millis(100),
            || {
                self.check_agents()?;
                let sw = self.switch_netns.clone();
                let probe = addrs.clone();
                let ready = run_in(&sw, move || {
                    probe.iter().all(|(_, a)| {
                        crate::http::get(*a, "/readyz", Duration::from_secs(1)).is_ok()
                    })
                })?;
                if !ready {
                    return Ok(None);
                }
                let counters = self.counters()?;
                let watching = addrs.iter().all(|(name, _)| {
                    counters.iter().any(|c| {
                        c.key.verb == "watch"
                            && c.key.resource.ends_with("services")
                            && c.key.user_agent.ends_with(&agent_user_agent(name))
                    })
                });
                Ok(watching.then_some(()))
            },
        )
    }

    /// An error naming the first agent that exited, with its log's tail.
    pub fn check_agents(&mut self) -> Result<(), LabError> {
        for n in &mut self.nodes {
            if let Some(c) = n.agent.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(n.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(LabError::State(format!(
                    "the agent of {} exited ({status}):\n{}",
                    n.name,
                    tail.join("\n")
                )));
            }
        }
        Ok(())
    }

    /// SIGKILLs node `i`'s agent and reaps it; the monotonic time just
    /// before the signal.
    pub fn kill_agent(&mut self, i: usize) -> Result<u64, LabError> {
        let n = &mut self.nodes[i];
        let child = n
            .agent
            .as_mut()
            .ok_or_else(|| LabError::State(format!("no agent on {}", n.name)))?;
        let at = monotonic_ns();
        child.kill().map_err(io_err("kill"))?;
        child.wait().map_err(io_err("wait"))?;
        n.agent = None;
        Ok(at)
    }

    /// The node whose `eth0` has `mac`.
    pub fn node_by_mac(&self, mac: [u8; 6]) -> Option<usize> {
        self.nodes.iter().position(|n| n.mac == mac)
    }

    /// Copies the agents' and the API server's logs into `dest`.
    pub fn save_logs(&self, dest: &Path) -> Result<(), LabError> {
        std::fs::create_dir_all(dest).map_err(io_err(dest.display().to_string()))?;
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        files.insert("apiserver.log".into(), self.dir.join("apiserver.log"));
        for n in &self.nodes {
            files.insert(format!("{}.log", n.name), n.log());
        }
        for (name, src) in files {
            if src.exists() {
                std::fs::copy(&src, dest.join(&name))
                    .map_err(io_err(format!("copying {}", src.display())))?;
            }
        }
        Ok(())
    }

    fn teardown(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.agent.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // The client first: its connections close before the server does.
        self.client = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_lab(&self.id, self.nodes.len());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Deletes the namespaces and pinned objects of lab `id` (best effort).
fn remove_lab(id: &str, nodes: usize) {
    let mut names = vec![format!("{id}-client"), format!("{id}-sw")];
    names.extend((1..=nodes).map(|i| format!("{id}-node-{i}")));
    for ns in names {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
    }
    for i in 1..=nodes {
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/{id}-node-{i}"));
    }
}

/// Removes what benchmarks that are no longer running left behind:
/// namespaces `l2bench-<pid>-*` of dead pids (after killing the processes
/// still inside them, by pid), their pinned objects and state. Returns
/// the namespaces removed.
pub fn remove_stale() -> Vec<String> {
    let dead = |name: &str| -> bool {
        name.strip_prefix(&format!("{PREFIX}-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !process_alive(pid))
    };
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| dead(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    let stale = names("/run/netns");
    for ns in &stale {
        // Processes still inside (agents, the API server), by pid.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for p in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) of a process inside a namespace of a
                // benchmark run that no longer exists.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    for pin in names("/sys/fs/bpf") {
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(pin));
    }
    for dir in names("/run/l2announcer-bench") {
        let _ = std::fs::remove_dir_all(Path::new("/run/l2announcer-bench").join(dir));
    }
    stale
}
