//! Network namespaces and veth pairs for tests and benchmarks: each
//! [`Netns`] is created with a unique name (`<prefix>-<pid>-<counter>`) and
//! deleted when dropped, so a failing test leaves nothing behind. Commands
//! run through `ip netns exec`; in-process code enters a namespace with
//! [`Netns::enter`] on a thread of its own.
//!
//! It is not the multi-node lab (a bridge with several agents): this is the
//! two-namespace fixture the datapath tests and the datapath benchmark use.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("entering network namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command to completion; an error when it cannot start or fails.
pub fn run(cmd: &mut Command) -> Result<Output, NetnsError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// A network namespace this process created; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> Result<Self, NetnsError> {
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on Drop removes it, also when the next step fails.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the handle `setns(2)` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output, NetnsError> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command that runs `program args` inside the namespace (not started).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Runs `program args` inside the namespace and returns its output,
    /// whatever its exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output, NetnsError> {
        let mut cmd = self.command(program, args);
        cmd.output().map_err(|source| NetnsError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })
    }

    /// Moves the calling thread into this namespace (for good: call it on a
    /// thread of its own). Sockets opened afterwards belong to it.
    pub fn enter(&self) -> Result<(), NetnsError> {
        enter_path(&self.name, &self.path())
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a new thread inside the named namespace (`/run/netns/<name>`,
/// as `ip netns add` makes them) and returns its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let name = name.to_string();
    let handle = std::thread::spawn(move || -> Result<T, NetnsError> {
        enter_path(&name, &PathBuf::from("/run/netns").join(&name))?;
        Ok(f())
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `setns(2)` the calling thread into the namespace at `path`.
pub fn enter_path(name: &str, path: &std::path::Path) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Enter {
        name: name.to_string(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    // SAFETY: setns(2) with a valid namespace descriptor affects only the
    // calling thread; `file` outlives the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            tracing::warn!(netns = %self.name, error = %e, "deleting network namespace");
        }
    }
}

/// Two namespaces joined by a veth pair: `agent_if` on the agent side
/// (no IP address) and `client_if` on the client side with 192.0.2.1/24
/// and 2001:db8::1/64 (no DAD).
#[derive(Debug)]
pub struct VethLab {
    // Field order: the client namespace goes first, then the agent's (the
    // veth dies with either).
    pub client: Netns,
    pub agent: Netns,
    pub agent_if: String,
    pub client_if: String,
    pub agent_mac: [u8; 6],
    pub client_mac: [u8; 6],
}

/// The client's IPv4 address in every [`VethLab`].
pub const CLIENT_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);
/// The client's IPv6 address in every [`VethLab`].
pub const CLIENT_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

impl VethLab {
    /// Creates `l2a-dp-agent-*` and `l2a-dp-client-*`, the agent's `eth0`
    /// (MAC `02:a0:00:00:00:01`) and the client's `veth0`
    /// (`02:c0:00:00:00:01`), both up.
    pub fn new() -> Result<Self, NetnsError> {
        let agent = Netns::new("l2a-dp-agent")?;
        let client = Netns::new("l2a-dp-client")?;
        let lab = VethLab {
            client,
            agent,
            agent_if: "eth0".into(),
            client_if: "veth0".into(),
            agent_mac: [0x02, 0xa0, 0, 0, 0, 0x01],
            client_mac: [0x02, 0xc0, 0, 0, 0, 0x01],
        };
        lab.add_pair(&lab.agent_if, lab.agent_mac, &lab.client_if, lab.client_mac)?;
        lab.client
            .ip(&["addr", "add", "192.0.2.1/24", "dev", &lab.client_if])?;
        lab.client.ip(&[
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            &lab.client_if,
            "nodad",
        ])?;
        Ok(lab)
    }

    /// Adds another veth pair between the namespaces, both ends up, without
    /// addresses: `agent_if` in the agent namespace, `client_if` in the
    /// client's.
    pub fn add_pair(
        &self,
        agent_if: &str,
        agent_mac: [u8; 6],
        client_if: &str,
        client_mac: [u8; 6],
    ) -> Result<(), NetnsError> {
        self.agent.ip(&[
            "link",
            "add",
            agent_if,
            "address",
            &crate::mac::format(agent_mac),
            "type",
            "veth",
            "peer",
            "name",
            client_if,
            "address",
            &crate::mac::format(client_mac),
            "netns",
            self.client.name(),
        ])?;
        self.agent.ip(&["link", "set", agent_if, "up"])?;
        self.client.ip(&["link", "set", client_if, "up"])?;
        Ok(())
    }
}
