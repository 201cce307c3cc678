//! Shared fixtures of the bpf crate's kernel tests: a responder pinned under
//! a unique bpffs directory (removed on drop) and BPF_PROG_TEST_RUN.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bpf::{Responder, ResponderConfig};

// Program verdicts as BPF_PROG_TEST_RUN returns them.
/// TC -1: hand on to the next program / the kernel.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there.
pub fn ensure_bpffs() {
    let root = Path::new("/sys/fs/bpf");
    if bpf::is_on_bpffs(root).unwrap() {
        return;
    }
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .expect("running mount");
    assert!(
        status.success() || bpf::is_on_bpffs(root).unwrap(),
        "cannot mount bpffs"
    );
}

/// A fresh bpffs directory whose pins are removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> Self {
        ensure_bpffs();
        Self(Path::new("/sys/fs/bpf").join(unique_name("l2a-test")))
    }

    pub fn open(&self) -> Responder {
        Responder::open(&ResponderConfig {
            pin_dir: self.0.clone(),
            max_liveness: Duration::from_secs(15),
        })
        .expect("open responder")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = Responder::remove_pins(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

/// A responder whose pins live in a fresh directory, removed on drop.
pub struct TestResponder {
    // Dropped before `dir`: fields drop in declaration order.
    pub responder: Option<Responder>,
    pub dir: PinDir,
}

impl TestResponder {
    pub fn new() -> Self {
        // The guard exists before anything is pinned, so a failing open
        // still cleans up on unwind.
        let mut guard = Self {
            responder: None,
            dir: PinDir::new(),
        };
        guard.responder = Some(guard.dir.open());
        guard
    }

    pub fn r(&mut self) -> &mut Responder {
        self.responder.as_mut().unwrap()
    }
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `prog` once over `frame` with optional context bytes; returns the
/// program's return value and the frame as the program left it.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
    try_test_run(prog, frame, ctx).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
}

/// [`test_run`], returning the system call's error.
pub fn try_test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ctx: Option<&[u8]>,
) -> std::io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; 4096];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = ctx.len() as u32;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; the
    // buffers it points to outlive the call and have the sizes given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}

/// A `struct __sk_buff` for test runs with the given ingress interface.
pub fn skb_ctx(ingress_ifindex: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

/// Two namespaces, `agent` and `client`, joined by a veth pair: `veth0`
/// (02:00:00:00:00:aa) in the agent, `veth1` (02:00:00:00:00:01) in the
/// client, both up, no addresses.
pub fn agent_and_client(agent_prefix: &str, client_prefix: &str) -> (Netns, Netns) {
    let agent = Netns::new(agent_prefix);
    let client = Netns::new(client_prefix);
    agent.veth_to(
        "veth0",
        "02:00:00:00:00:aa",
        &client,
        "veth1",
        "02:00:00:00:00:01",
    );
    (agent, client)
}

/// A network namespace created for a test (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    owned: bool,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        Self { name, owned: true }
    }

    /// A handle on a namespace owned (and deleted) by another `Netns`.
    pub fn borrowed(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            owned: false,
        }
    }

    /// Runs `ip -n <ns> <args>` and asserts success.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A veth pair from this namespace (`ours`, MAC `our_mac`) to `peer`
    /// (`theirs`, MAC `their_mac`), both ends up.
    pub fn veth_to(&self, ours: &str, our_mac: &str, peer: &Netns, theirs: &str, their_mac: &str) {
        self.ip(&[
            "link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", &peer.name,
        ]);
        self.ip(&["link", "set", ours, "address", our_mac, "up"]);
        peer.ip(&["link", "set", theirs, "address", their_mac, "up"]);
    }

    /// Runs a command inside the namespace; returns (success, stdout).
    pub fn exec(&self, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("ip netns exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a valid netns descriptor.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}
