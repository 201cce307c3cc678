//! xtask: the project's two front doors and its chores, run as `cargo xtask …`.
//!
//! * `test`  — installs the system packages the tests need (when missing), then
//!   runs `cargo fmt --check`, `cargo clippy -D warnings`, every test and the
//!   image checks on the debug binary (`image --debug`).
//! * `lab`   — the virtual LAN demo (see the README).
//! * `chaos` — the chaos suite's long profile in a lab (`--minutes N`,
//!   default 30; `--seed S`); its short profile runs in `test`.
//! * `bench` — benchmarks, printed as ratios against a baseline of the same run.
//! * `fuzz`  — the long profile of the datapath's property test against its
//!   reference model (bpf/tests/conformance.rs), in release mode.
//! * `image` — the agent's OCI image, built with buildah and checked with
//!   podman (`image.rs`).
//! * `setup` — only the package installation step of `test`.
//!
//! It is plain std on purpose: it must build before anything else works.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod image;

/// A command the tests need, the Debian package that provides it.
const REQUIRED: &[(&str, &str)] = &[
    ("clang", "clang"),
    ("llc", "llvm"),
    ("ip", "iproute2"),
    ("tcpdump", "tcpdump"),
    ("arping", "iputils-arping"),
    ("ndisc6", "ndisc6"),
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    // `cargo xtask image`: build the image, run it (runc: see image.rs).
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("runc", "runc"),
];

/// Header files the eBPF build needs, and their Debian package.
const REQUIRED_FILES: &[(&str, &str)] = &[
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("/usr/include/linux/bpf.h", "linux-libc-dev"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => setup().and_then(|()| test(&args[1..])),
        Some("setup") => setup(),
        Some("lab") => setup().and_then(|()| lab(&args[1..])),
        Some("chaos") => setup().and_then(|()| chaos(&args[1..])),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => setup().and_then(|()| fuzz(&args[1..])),
        Some("image") => setup().and_then(|()| image::image(&args[1..])),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|setup|lab|chaos|bench|fuzz|image> [args]\n  \
                 test [-- cargo test args]   install what is missing, fmt, clippy, all tests\n  \
                 setup                      install the system packages only\n  \
                 lab [up|down|kill NODE [--signal SIG]|start NODE|exec NODE -- CMD]\n  \
                                            the virtual LAN demo and its pieces\n  \
                 chaos [--minutes N] [--seed S] [--short]\n  \
                                            faults in a lab, one answerer per IP checked\n  \
                 bench [statedb|datapath|control-plane [-- flags]]\n  \
                                            benchmarks\n  \
                 fuzz [--cases N] [--seed S] the datapath against its model, N cases per\n  \
                                            program (default 1000000), release build\n  \
                 image [--tag TAG] [--debug]\n  \
                                            build the OCI image into target/image/ and test it"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn workspace_root() -> PathBuf {
    // xtask/Cargo.toml sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `target/`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// Installs the Debian packages whose commands or headers are missing.
/// kubectl: the machine image ships one; Debian's kubernetes-client
/// conflicts with it, so it is installed only when no kubectl exists at all.
fn setup() -> Result {
    install_packages()?;
    mount_bpffs()
}

/// The datapath pins its maps on bpffs; mount it where the system has not.
fn mount_bpffs() -> Result {
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(|e| format!("/proc/mounts: {e}"))?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").map_err(|e| format!("/sys/fs/bpf: {e}"))?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn install_packages() -> Result {
    let mut missing: Vec<&str> = Vec::new();
    for (cmd, pkg) in REQUIRED {
        if !on_path(cmd) && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    for (file, pkg) in REQUIRED_FILES {
        if !Path::new(file).exists() && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    let image_kubectl = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl").exists();
    if !on_path("kubectl") && !image_kubectl {
        missing.push("kubernetes-client");
    }
    if missing.is_empty() {
        eprintln!("xtask: system packages present");
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let sudo = |args: &[&str]| {
        let mut c = if is_root() {
            Command::new(args[0])
        } else {
            let mut c = Command::new("sudo");
            c.arg(args[0]);
            c
        };
        c.args(&args[1..]);
        c
    };
    run(sudo(&["apt-get", "update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    let mut install = sudo(&["apt-get", "install", "-y", "-qq", "--no-install-recommends"]);
    install
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// cargo, in the workspace, without the variables `cargo run` set for
/// xtask itself (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...): build scripts that
/// watch them (ring's) would otherwise see them change between `cargo xtask`
/// and a plain cargo command, and rebuild half the tree each time.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            c.env_remove(key.as_ref());
        }
    }
    c
}

fn test(extra: &[String]) -> Result {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    let mut t = cargo();
    // Benchmarks are built by clippy above and run by `cargo xtask bench`.
    t.args([
        "test",
        "--workspace",
        "--lib",
        "--bins",
        "--tests",
        "--locked",
    ]);
    t.args(extra);
    run(&mut t)?;
    run(cargo().args(["test", "--workspace", "--doc", "--locked"]))?;
    // The image built and checked from the debug agent the tests just
    // built: every check of `cargo xtask image` in ~25 s, where the release
    // build alone takes ~6 min here (fat LTO).
    image::image(&["--debug".to_string()])
}

/// Builds the agent and the integration binaries, then runs
/// `target/debug/<bin>` with the arguments. Needs root (namespaces, eBPF).
fn run_lab_binary(bin: &str, args: &[String]) -> Result {
    run(cargo().args(["build", "-p", "l2announcer", "-p", "integration", "--bins"]))?;
    let status = Command::new(target_dir().join("debug").join(bin))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{bin} {} failed with {status}", args.join(" ")))
    }
}

/// `target/debug/lab` with the arguments (none: the full demo).
fn lab(args: &[String]) -> Result {
    run_lab_binary("lab", args)
}

/// `target/debug/chaos` with the arguments: the long profile (report in
/// target/chaos/).
fn chaos(args: &[String]) -> Result {
    run_lab_binary("chaos", args)
}

fn bench(args: &[String]) -> Result {
    let statedb = || run(cargo().args(["bench", "-p", "statedb"]));
    // Namespaces and BPF: needs root. Extra arguments go to the binary
    // (`cargo xtask bench datapath --requests 5000`).
    let datapath = |extra: &[String]| {
        let mut c = cargo();
        c.args([
            "run",
            "--release",
            "-p",
            "integration",
            "--bin",
            "bench-datapath",
            "--",
        ]);
        run(c.args(extra))
    };
    // Release builds of the agent, the test API server and the bench; the
    // report goes to target/bench/control-plane.{md,json,svg}. Root.
    let control_plane = |extra: &[String]| {
        run(cargo().args([
            "build",
            "--release",
            "-p",
            "l2announcer",
            "-p",
            "kube-test-apiserver",
            "-p",
            "integration",
            "--bin",
            "l2announcer",
            "--bin",
            "test-apiserver",
            "--bin",
            "bench-control-plane",
        ]))?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let mut c = Command::new(target.join("release").join("bench-control-plane"));
        c.arg("--out-dir")
            .arg(target.join("bench"))
            .args(extra.iter().filter(|a| a.as_str() != "--"))
            .current_dir(workspace_root());
        run(&mut c)
    };
    match args.first().map(String::as_str) {
        None => statedb().and_then(|()| datapath(&[])),
        Some("statedb") => statedb(),
        Some("datapath") => datapath(&args[1..]),
        Some("control-plane") => control_plane(&args[1..]),
        Some(other) => Err(format!(
            "unknown benchmark {other:?}; known: statedb, datapath, control-plane"
        )),
    }
}

/// Cases per program of the long fuzz profile.
const FUZZ_CASES: u64 = 1_000_000;

/// Runs the datapath's property test (both programs against the reference
/// model through BPF_PROG_TEST_RUN) with `--cases N` per program and an
/// optional `--seed S` (decimal or 0x-hex; printed either way), in release
/// mode. Needs root (BPF).
fn fuzz(args: &[String]) -> Result {
    let mut cases = FUZZ_CASES;
    let mut seed: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--cases" => {
                let v = value("--cases")?;
                cases = v
                    .replace('_', "")
                    .parse()
                    .map_err(|e| format!("--cases {v}: {e}"))?;
            }
            "--seed" => seed = Some(value("--seed")?),
            other => return Err(format!("fuzz: unknown argument {other:?}")),
        }
    }
    let mut c = cargo();
    c.args([
        "test",
        "--release",
        "-p",
        "bpf",
        "--test",
        "conformance",
        "--",
        "--nocapture",
    ]);
    c.env("L2A_FUZZ_CASES", cases.to_string());
    if let Some(seed) = seed {
        c.env("L2A_FUZZ_SEED", seed);
    }
    let started = std::time::Instant::now();
    run(&mut c)?;
    eprintln!(
        "xtask: fuzz: {cases} cases per program (TC and XDP) passed; {:.1} s with the build",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
