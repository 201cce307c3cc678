//! A lab's description on disk (`state.json`) and what another process can
//! do with it alone: start, signal and find the node agents, enter a
//! namespace, read an agent's tables and metrics, and tear everything down.
//!
//! It holds no handles: the API server and the HTTP servers live in the
//! process that built the lab ([`super::Lab`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LEASE_DURATION, LabError, RENEW_DEADLINE, RETRY_PERIOD, io_err, topology};
use crate::netns::run;
use crate::poll::{WaitError, wait_until};

/// One node of a lab, as recorded in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Kubernetes node name, `node-N`.
    pub name: String,
    pub netns: String,
    /// The LAN bridge's end of its `eth0` veth.
    pub host_if: String,
    /// The management bridge's end of its `eth1` veth.
    pub mgmt_host_if: String,
    /// MAC of its `eth0`.
    pub mac: String,
    /// LAN addresses (`eth0`).
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// Management address (`eth1`): API server traffic and metrics.
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
    /// The LAN bridge (nodes' `eth0`, the client).
    pub bridge: String,
    /// The management bridge (nodes' `eth1`, the host's address where the
    /// API server listens).
    pub mgmt_bridge: String,
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
    /// `--l2-announcements-election` of the agents (`None`: the agent's
    /// default, node-heartbeat).
    #[serde(default)]
    pub election: Option<String>,
}

/// Renewing every 200 ms per Service needs more than the default 5 qps
/// (else renewals wait on the client's token bucket past the 1 s renew
/// deadline and leases flap).
pub(super) fn default_client_rate() -> (f64, u32) {
    (50.0, 100)
}

/// A Go duration for the agent's command line.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl LabState {
    /// Reads `<dir>/state.json`.
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(path.display().to_string()))?;
        serde_json::from_str(&text).map_err(|e| LabError::State(e.to_string()))
    }

    pub(super) fn save(&self) -> Result<(), LabError> {
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

    /// The MAC of a node's `eth0`.
    pub fn mac(&self, name: &str) -> Result<[u8; 6], LabError> {
        let node = self.node(name)?;
        crate::mac::parse(&node.mac)
            .ok_or_else(|| LabError::State(format!("bad MAC {:?} of {name}", node.mac)))
    }

    /// The node whose `eth0` has `mac`.
    pub fn node_by_mac(&self, mac: [u8; 6]) -> Option<&NodeState> {
        self.nodes
            .iter()
            .find(|n| crate::mac::parse(&n.mac) == Some(mac))
    }

    /// The network namespace of `name` (a node, or `client`).
    pub fn netns_of(&self, name: &str) -> Result<&str, LabError> {
        if name == "client" {
            Ok(&self.client_netns)
        } else {
            Ok(&self.node(name)?.netns)
        }
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
                // The LAN only: eth1 carries the API and metrics traffic.
                "--devices",
                "eth0",
                // The addresses of each node's pods, on the LAN.
                "--enable-l2-pod-announcements",
                "--l2-pod-announcements-interface",
                "eth0",
                "--l2-announcements-lease-duration",
                &go_duration(LEASE_DURATION),
                "--l2-announcements-renew-deadline",
                &go_duration(RENEW_DEADLINE),
                "--l2-announcements-retry-period",
                &go_duration(RETRY_PERIOD),
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
        if let Some(mode) = &self.election {
            c.arg("--l2-announcements-election").arg(mode);
        }
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

    /// Removes the node's pinned maps and links (its bpffs directory), as a
    /// reboot empties bpffs. The agent must not be running.
    pub fn remove_pins(&self, name: &str) -> Result<(), LabError> {
        if let Some(pid) = self.agent_pid(name) {
            return Err(LabError::State(format!(
                "agent of {name} is running (pid {pid}): stop it before removing its pins"
            )));
        }
        let root = &self.node(name)?.bpf_root;
        match std::fs::remove_dir_all(root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(root.display().to_string())(e)),
        }
    }

    /// `ip netns exec <node> <argv>` with inherited stdio; its exit code.
    pub fn exec(&self, name: &str, argv: &[String]) -> Result<i32, LabError> {
        let status = Command::new("ip")
            .args(["netns", "exec", self.netns_of(name)?])
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
        Ok(crate::http::get(
            node.metrics_addr,
            path,
            Duration::from_secs(2),
        )?)
    }

    /// The sum of every sample of `metric` carrying all of `labels`
    /// (e.g. `("ip", "192.0.2.100")`), from the node's `/metrics`.
    pub fn metric(
        &self,
        name: &str,
        metric: &str,
        labels: &[(&str, &str)],
    ) -> Result<f64, LabError> {
        let text = self.http_get_metrics(name, "/metrics")?;
        Ok(crate::prom::sum(&text, metric, labels))
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
        for n in &self.nodes {
            let exited = wait_until(
                "the agent to exit",
                Duration::from_secs(3),
                Duration::from_millis(20),
                || Ok::<_, WaitError>(self.agent_pid(&n.name).is_none().then_some(())),
            );
            if exited.is_err()
                && let Some(pid) = self.agent_pid(&n.name)
            {
                // SAFETY: kill(2) of our agent's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        topology::remove(self);
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
