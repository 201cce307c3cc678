//! `cargo xtask image [--tag TAG] [--debug]`: builds the agent's OCI image
//! on this machine from the release binary, with buildah and no registry,
//! and tests it with podman. `--debug` packages the debug binary instead,
//! for the same checks without a release build (`cargo xtask test` does).
//!
//! The image is `FROM scratch` plus the root file system that
//! `deploy/image/rootfs.sh` lays out: `/l2announcer` and exactly the shared
//! libraries and dynamic loader `ldd` lists for it. It is written to
//! `target/image/l2announcer-TAG.tar` (an `oci-archive`), then loaded from
//! that archive into a second, empty store and checked there: its entrypoint
//! runs `version` and `run --help` with the same output as the binary on the
//! host, its files are the binary and its libraries and nothing else, its
//! configuration carries the entrypoint and the labels, and the DaemonSet in
//! `deploy/` names the image at the workspace version.
//!
//! buildah and podman use a private storage under `target/image/` (not the
//! system's `/var/lib/containers/storage`; they still update their blob-info
//! cache in `/var/lib/containers/cache`, which no flag moves) with the `vfs`
//! driver, which works on any file system, inside containers too; the image
//! is a few megabytes.
//!
//! This is not the Dockerfile build (`deploy/image/Dockerfile`, for users
//! with a container engine): both lay out the image with the same script and
//! the unit tests below keep the Dockerfile's final stage equal to what this
//! builds (base, files, entrypoint, labels).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{Result, cargo, run, target_dir, workspace_root};

/// The image's name, as the DaemonSet and kustomization name it.
const NAME: &str = "l2announcer";
/// Where the binary sits in the image, and the image's entrypoint.
const ENTRYPOINT: &str = "/l2announcer";
/// The image's PATH: the directory of the one program in it, so that
/// `kubectl exec POD -- l2announcer status` finds it. (Without it, container
/// engines write a PATH of directories the image does not have.)
const PATH: &str = "/";
/// Lays out the image's root file system; also run by the Dockerfile.
const ROOTFS_SCRIPT: &str = "deploy/image/rootfs.sh";
/// The multi-stage build for users with a container engine.
const DOCKERFILE: &str = "deploy/image/Dockerfile";
const DESCRIPTION: &str = "Kubernetes node agent answering ARP and IPv6 Neighbor Solicitations \
     for Service IPs from eBPF; a drop-in for Cilium's L2 Announcements";
/// The workspace version: the binary's, and the image tag by default.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The image's labels (OCI annotation keys), in the order the Dockerfile
/// writes them.
fn labels(version: &str, revision: &str) -> Vec<(&'static str, String)> {
    vec![
        ("org.opencontainers.image.title", NAME.to_string()),
        (
            "org.opencontainers.image.description",
            DESCRIPTION.to_string(),
        ),
        ("org.opencontainers.image.version", version.to_string()),
        ("org.opencontainers.image.revision", revision.to_string()),
        (
            "org.opencontainers.image.licenses",
            env!("CARGO_PKG_LICENSE").to_string(),
        ),
    ]
}

const USAGE: &str = "usage: cargo xtask image [--tag TAG] [--debug]";

/// What `cargo xtask image` was asked for.
#[derive(Debug, PartialEq)]
struct Options {
    /// The image's tag (default: the workspace version; `VERSION-debug`
    /// with `--debug`).
    tag: String,
    /// `--debug`: package `target/debug/l2announcer` as the last cargo
    /// build or test left it (built only when missing) instead of a release
    /// build. Every check runs the same; `cargo xtask test` uses it, as the
    /// tests have just built that binary and a release build costs minutes.
    debug: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut tag = None;
    let mut debug = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if let Some(value) = arg.strip_prefix("--tag=") {
            tag = Some(value.to_string());
        } else if arg == "--tag" {
            tag = Some(
                rest.next()
                    .ok_or_else(|| format!("--tag needs a value; {USAGE}"))?
                    .clone(),
            );
        } else if arg == "--debug" {
            debug = true;
        } else {
            return Err(format!("unknown argument {arg:?}; {USAGE}"));
        }
    }
    let tag = tag.unwrap_or_else(|| {
        if debug {
            format!("{VERSION}-debug")
        } else {
            VERSION.to_string()
        }
    });
    // The OCI distribution spec's tag grammar: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if valid {
        Ok(Options { tag, debug })
    } else {
        Err(format!(
            "invalid tag {tag:?}: letters, digits, '_', '.' and '-', not starting with '.' or '-', at most 128"
        ))
    }
}

/// Builds, writes and checks the image. See the module comment.
pub fn image(args: &[String]) -> Result {
    let Options { tag, debug } = parse_args(args)?;
    let mut timings = Timings::start();
    let out_dir = target_dir().join("image");
    let archive = out_dir.join(format!("{NAME}-{tag}.tar"));
    if archive.to_string_lossy().contains(':') {
        // The transport syntax `oci-archive:PATH:REF` cannot carry a ':' in PATH.
        return Err(format!(
            "{}: the image path must not contain ':'",
            archive.display()
        ));
    }

    let binary = target_dir()
        .join(if debug { "debug" } else { "release" })
        .join(NAME);
    if !debug {
        run(cargo().args(["build", "--release", "-p", "l2announcer", "--locked"]))?;
    } else if !binary.exists() {
        // Only when missing: after `cargo test --workspace` a build of this
        // package alone would unify features differently and rebuild.
        run(cargo().args(["build", "-p", "l2announcer", "--locked"]))?;
    }
    timings.step(if debug {
        "cargo build -p l2announcer (when missing)"
    } else {
        "cargo build --release -p l2announcer"
    });

    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let rootfs = out_dir.join("rootfs");
    remove_dir(&rootfs)?;
    run(Command::new("sh")
        .arg(workspace_root().join(ROOTFS_SCRIPT))
        .arg(&binary)
        .arg(&rootfs))?;

    let build_store = Store::new(out_dir.join("build"))?;
    let reference = format!("{NAME}:{tag}");
    build(&build_store, &rootfs, &reference, &archive)?;
    timings.step("buildah: lay out, commit, write the archive");
    compare_dockerfile(&build_store, &out_dir, &rootfs, &reference)?;
    build_store.remove()?;
    timings.step("buildah bud: the Dockerfile's final stage, compared");

    let check_store = Store::new(out_dir.join("check"))?;
    check(&check_store, &archive, &binary)?;
    check_store.remove()?;
    timings.step("podman: load the archive, run, list, inspect");
    check_deploy(&tag, debug)?;
    timings.step("deploy/: kubectl kustomize");

    let size = std::fs::metadata(&archive)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    eprintln!(
        "xtask: image {reference} written to {} ({:.1} MiB)",
        archive.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    timings.print();
    Ok(())
}

/// buildah from scratch, the root file system copied in, entrypoint and
/// labels set, committed into `store` and written to `archive`.
fn build(store: &Store, rootfs: &Path, reference: &str, archive: &Path) -> Result {
    let container = format!("{NAME}-image-build");
    run(store
        .buildah()
        .args(["from", "--name", &container, "scratch"]))?;
    run(store
        .buildah()
        .args(["copy", "--chown", "0:0", &container])
        .arg(format!("{}/", rootfs.display()))
        .arg("/"))?;
    let mut config = store.buildah();
    config.args(["config", "--entrypoint", &format!("[\"{ENTRYPOINT}\"]")]);
    config.args(["--env", &format!("PATH={PATH}")]);
    for (key, value) in labels(VERSION, &revision()) {
        config.arg("--label").arg(format!("{key}={value}"));
    }
    run(config.arg(&container))?;
    run(store
        .buildah()
        .args(["commit", "--quiet", "--format", "oci", "--rm"])
        // No io.buildah.version label: the labels are the ones above.
        .arg("--identity-label=false")
        .args([&container, reference]))?;
    if archive.exists() {
        std::fs::remove_file(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    }
    run(store
        .buildah()
        .args(["push", "--quiet", reference])
        .arg(format!("oci-archive:{}:{reference}", archive.display())))
}

/// Builds the final stage of `deploy/image/Dockerfile` with `buildah bud`
/// on the root file system laid out here (a stand-in for its builder stage,
/// whose base image needs a registry) and checks it gives the image `build`
/// made: the same configuration and the same files, byte for byte.
fn compare_dockerfile(store: &Store, out_dir: &Path, rootfs: &Path, reference: &str) -> Result {
    let path = workspace_root().join(DOCKERFILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let final_stage =
        final_stage(&text).ok_or_else(|| format!("{}: no FROM line", path.display()))?;
    let generated = out_dir.join("Dockerfile.final-stage");
    std::fs::write(
        &generated,
        format!(
            "# Generated by `cargo xtask image`: {DOCKERFILE}'s final stage over\n\
             # the root file system target/image/rootfs.\n\
             FROM scratch AS build\nCOPY . /rootfs/\n{final_stage}"
        ),
    )
    .map_err(|e| format!("{}: {e}", generated.display()))?;
    let from_dockerfile = format!("{NAME}-dockerfile:check");
    run(store
        .buildah()
        .args(["bud", "--pull-never", "--layers=false", "--quiet"])
        .arg("--identity-label=false")
        .args(["--build-arg", &format!("VERSION={VERSION}")])
        .args(["--build-arg", &format!("REVISION={}", revision())])
        .arg("-f")
        .arg(&generated)
        .args(["-t", &from_dockerfile])
        .arg(rootfs))?;

    let config = |image: &str| {
        output(store.buildah().args([
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.OCIv1.Config}}",
            image,
        ]))
    };
    let (ours, theirs) = (config(reference)?, config(&from_dockerfile)?);
    if ours != theirs {
        return Err(format!(
            "the Dockerfile's image is configured as {theirs}, xtask's as {ours}"
        ));
    }
    let mut trees = Vec::new();
    for image in [reference, from_dockerfile.as_str()] {
        let container = output(store.buildah().args(["from", image]))?;
        let container = container.trim().to_string();
        let mount = output(store.buildah().args(["mount", &container]))?;
        trees.push((container, list_tree(Path::new(mount.trim()))?));
    }
    let (ours, theirs) = (&trees[0].1, &trees[1].1);
    let names = |t: &Tree| (t.0.keys().cloned().collect::<Vec<_>>(), t.1.clone());
    if names(ours) != names(theirs) {
        return Err(format!(
            "the Dockerfile's image holds {:?}, xtask's {:?}",
            names(theirs),
            names(ours)
        ));
    }
    for (path, file) in &ours.0 {
        if read(file)? != read(&theirs.0[path])? {
            return Err(format!(
                "{path} differs between the Dockerfile's image and xtask's"
            ));
        }
    }
    for (container, _) in &trees {
        run(store.buildah().args(["rm", container]))?;
    }
    eprintln!("xtask: {DOCKERFILE}'s final stage gives the same configuration and files");
    Ok(())
}

/// The text from the last `FROM` line of a Dockerfile on.
fn final_stage(dockerfile: &str) -> Option<&str> {
    let mut at = None;
    let mut offset = 0;
    for line in dockerfile.split_inclusive('\n') {
        if line
            .trim_start()
            .get(..5)
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM "))
        {
            at = Some(offset);
        }
        offset += line.len();
    }
    at.map(|at| &dockerfile[at..])
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads the archive into an empty store and checks the image there.
fn check(store: &Store, archive: &Path, binary: &Path) -> Result {
    let pulled = output(
        store
            .podman()
            .args(["pull", "--quiet"])
            .arg(format!("oci-archive:{}", archive.display())),
    )?;
    let id = pulled
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| format!("podman pull printed no image id: {pulled:?}"))?
        .to_string();

    // The entrypoint runs inside the image, with the output the same binary
    // gives on the host.
    for args in [&["version"][..], &["run", "--help"][..]] {
        let inside = output(store.podman_run(&id, None).args(args))?;
        let host = output(Command::new(binary).args(args))?;
        if inside != host {
            return Err(format!(
                "`l2announcer {}` in the image printed\n{inside}\nbut on the host\n{host}",
                args.join(" ")
            ));
        }
        eprintln!(
            "xtask: in the image, `l2announcer {}` printed what it prints on the host ({} bytes, first line {:?})",
            args.join(" "),
            inside.len(),
            inside.lines().next().unwrap_or("")
        );
    }
    let version = output(store.podman_run(&id, None).arg("version"))?;
    if version.trim() != format!("{NAME} {VERSION}") {
        return Err(format!(
            "`l2announcer version` in the image printed {version:?}, expected \"{NAME} {VERSION}\""
        ));
    }
    // By name through the image's PATH, as `kubectl exec POD -- l2announcer`.
    let by_name = output(store.podman_run(&id, Some(NAME)).arg("version"))?;
    if by_name != version {
        return Err(format!(
            "`l2announcer version` found through PATH printed {by_name:?}, the entrypoint {version:?}"
        ));
    }
    let help = output(store.podman_run(&id, None).args(["run", "--help"]))?;
    for expected in [
        "Usage: l2announcer run",
        "--enable-l2-announcements",
        "--config-dir",
    ] {
        if !help.contains(expected) {
            return Err(format!(
                "`l2announcer run --help` in the image lacks {expected:?}:\n{help}"
            ));
        }
    }

    // The configuration: entrypoint, no command, the labels.
    let inspect = |format: &str| {
        output(
            store
                .podman()
                .args(["image", "inspect", "--format", format, &id]),
        )
    };
    let entrypoint = inspect("{{json .Config.Entrypoint}}")?;
    if entrypoint.trim() != format!("[\"{ENTRYPOINT}\"]") {
        return Err(format!(
            "image entrypoint is {entrypoint}, expected [\"{ENTRYPOINT}\"]"
        ));
    }
    let env = inspect("{{json .Config.Env}}")?;
    if env.trim() != format!("[\"PATH={PATH}\"]") {
        return Err(format!(
            "image environment is {env}, expected [\"PATH={PATH}\"]"
        ));
    }
    let cmd = inspect("{{json .Config.Cmd}}")?;
    if !matches!(cmd.trim(), "null" | "[]") {
        return Err(format!(
            "image has a command {cmd}; only the entrypoint is expected"
        ));
    }
    let expected_labels = labels(VERSION, &revision());
    let count = inspect("{{len .Config.Labels}}")?;
    if count.trim() != expected_labels.len().to_string() {
        return Err(format!(
            "image has {} labels, expected {}: {}",
            count.trim(),
            expected_labels.len(),
            inspect("{{json .Config.Labels}}")?
        ));
    }
    for (key, value) in &expected_labels {
        let got = inspect(&format!("{{{{index .Config.Labels \"{key}\"}}}}"))?;
        if got.trim_end_matches('\n') != value {
            return Err(format!("label {key} is {got:?}, expected {value:?}"));
        }
    }

    // The files: the binary and what ldd lists, byte for byte as on the host.
    let expected = expected_files(binary)?;
    let mount = output(store.podman().args(["image", "mount", &id]))?;
    let root = PathBuf::from(mount.trim());
    let listed = list_tree(&root);
    let unmount = run(store.podman().args(["image", "unmount", &id]));
    let (files, dirs) = listed?;
    let found: BTreeSet<String> = files.keys().cloned().collect();
    let wanted: BTreeSet<String> = expected.keys().cloned().collect();
    if found != wanted {
        return Err(format!(
            "the image holds {found:?}, expected exactly {wanted:?} (the binary and what ldd lists)"
        ));
    }
    let parents: BTreeSet<String> = wanted.iter().flat_map(|f| ancestors(f)).collect();
    let stray: Vec<&String> = dirs.iter().filter(|d| !parents.contains(*d)).collect();
    if !stray.is_empty() {
        return Err(format!(
            "the image holds directories nothing needs: {stray:?}"
        ));
    }
    for (path, host) in &expected {
        if read(&files[path])? != read(host)? {
            return Err(format!(
                "{path} in the image differs from {}",
                host.display()
            ));
        }
    }
    unmount?;
    eprintln!("xtask: the image holds exactly:");
    for path in &wanted {
        eprintln!("  {path}");
    }
    Ok(())
}

/// The rendered DaemonSet names the image at the workspace version. With
/// another `--tag`, says how to point the DaemonSet at it instead.
fn check_deploy(tag: &str, debug: bool) -> Result {
    let rendered = output(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(workspace_root().join("deploy")),
    )?;
    let images: Vec<&str> = rendered
        .lines()
        .filter_map(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .strip_prefix("image: ")
        })
        .map(str::trim)
        .collect();
    let expected = format!("{NAME}:{VERSION}");
    if images != [expected.as_str()] {
        return Err(format!(
            "`kubectl kustomize deploy/` names the images {images:?}, expected [{expected:?}]: \
             set the image in deploy/daemonset.yaml and newTag in deploy/kustomization.yaml \
             to the workspace version"
        ));
    }
    if tag == VERSION {
        eprintln!("xtask: deploy/ runs {expected}, the image built");
    } else if debug {
        eprintln!(
            "xtask: deploy/ runs {expected}, which `cargo xtask image` builds; \
             {NAME}:{tag} (debug build) is for these checks"
        );
    } else {
        eprintln!(
            "xtask: deploy/ runs {expected}; for the tag {tag} built here set \
             `images: [{{name: {NAME}, newTag: \"{tag}\"}}]` in a kustomize overlay"
        );
    }
    Ok(())
}

/// Path in the image -> file on the host, for the binary and each library
/// and loader `ldd` lists.
fn expected_files(binary: &Path) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let ldd = output(Command::new("ldd").arg(binary))?;
    let mut files = std::collections::BTreeMap::new();
    files.insert(ENTRYPOINT.to_string(), binary.to_path_buf());
    for lib in ldd_paths(&ldd)? {
        files.insert(lib.clone(), PathBuf::from(lib));
    }
    Ok(files)
}

/// The files `ldd` names: `name => /path (addr)` for libraries, `/path
/// (addr)` for the loader; the vDSO (`name (addr)`) has none.
fn ldd_paths(ldd: &str) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(format!("ldd: {} not found", name.trim()));
                }
                target
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            paths.push(path.to_string());
        }
    }
    Ok(paths)
}

/// `/a/b/c` -> `/a`, `/a/b`.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = Path::new(path).parent();
    while let Some(dir) = at {
        if dir != Path::new("/") {
            out.push(dir.to_string_lossy().into_owned());
        }
        at = dir.parent();
    }
    out
}

type Tree = (
    std::collections::BTreeMap<String, PathBuf>,
    BTreeSet<String>,
);

/// Every entry under `root` as an absolute path in the image: non-directories
/// (files, links, devices) -> where they are on the host; directories apart.
fn list_tree(root: &Path) -> Result<Tree> {
    let mut files = std::collections::BTreeMap::new();
    let mut dirs = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            let in_image = format!(
                "/{}",
                path.strip_prefix(root)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .display()
            );
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if kind.is_dir() {
                dirs.insert(in_image);
                pending.push(path);
            } else {
                files.insert(in_image, path);
            }
        }
    }
    Ok((files, dirs))
}

/// The commit the image is built from, or "unknown" outside a git checkout.
fn revision() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

fn remove_dir(dir: &Path) -> Result {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}

/// Runs `cmd`; its standard output when it succeeds, an error with its
/// standard error when not.
fn output(cmd: &mut Command) -> Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed with {status}: {}",
            String::from_utf8_lossy(&stderr).trim()
        ))
    }
}

/// A containers-storage of buildah and podman of its own, in one directory.
struct Store {
    dir: PathBuf,
}

impl Store {
    /// An empty store at `dir`; whatever an earlier run left there is removed.
    fn new(dir: PathBuf) -> Result<Store> {
        let store = Store { dir };
        store.remove()?;
        Ok(store)
    }

    /// Global options naming this store. vfs: plain directory copies, which
    /// work on any file system (overlay needs kernel or FUSE support for
    /// the file system `target/` is on).
    fn global_args(&self, cmd: &mut Command) {
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"]);
    }

    fn buildah(&self) -> Command {
        let mut cmd = Command::new("buildah");
        self.global_args(&mut cmd);
        cmd
    }

    /// podman on this store, with what it needs to run as root on a host
    /// without systemd: runc (crun 1.8 refuses cgroup v1 hierarchies with
    /// a cgroup v2 controller beside them, as some hosts have), cgroupfs
    /// and no event log.
    fn podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        self.global_args(&mut cmd);
        cmd.arg("--tmpdir").arg(self.dir.join("tmp")).args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]);
        cmd
    }

    /// `podman run` of the image's entrypoint, without a network, with low
    /// limits on open files and processes. As root, podman asks the runtime
    /// for the highest RLIMIT_NOFILE and RLIMIT_NPROC it can think of, which
    /// fails without CAP_SYS_RESOURCE (inside a sandbox or a container; on
    /// one such host even the caller's own hard RLIMIT_NPROC was refused),
    /// while lowering a limit needs no privilege. The checks run two short
    /// commands.
    /// `entrypoint`: another program than the image's (looked up through
    /// the image's PATH when it is a bare name).
    fn podman_run(&self, image: &str, entrypoint: Option<&str>) -> Command {
        let mut cmd = self.podman();
        cmd.args(["run", "--rm", "--network=none"]);
        for (limit, name) in [("Max open files", "nofile"), ("Max processes", "nproc")] {
            let value = run_limit(hard_limit(limit));
            cmd.arg("--ulimit").arg(format!("{name}={value}:{value}"));
        }
        if let Some(entrypoint) = entrypoint {
            cmd.args(["--entrypoint", entrypoint]);
        }
        cmd.arg(image);
        cmd
    }

    /// Removes the store's directory. Containers are run with `--rm` and
    /// nothing stays mounted with vfs, so removing the files is enough.
    fn remove(&self) -> Result {
        remove_dir(&self.dir)
    }
}

/// The limits the checks run with: 1024, or the caller's hard limit when
/// lower (a limit can be lowered, never raised, without privilege).
fn run_limit(hard: Option<u64>) -> u64 {
    hard.map_or(RUN_LIMIT, |hard| hard.min(RUN_LIMIT))
}
const RUN_LIMIT: u64 = 1024;

/// A hard limit of this process from /proc/self/limits (None: unlimited or
/// unknown).
fn hard_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_hard_limit(&limits, name)
}

fn parse_hard_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().nth(1)?.parse().ok()
}

/// Wall-clock time of each step, printed at the end.
struct Timings {
    steps: Vec<(&'static str, Duration)>,
    last: Instant,
}

impl Timings {
    fn start() -> Timings {
        Timings {
            steps: Vec::new(),
            last: Instant::now(),
        }
    }

    /// Ends the step that began at the previous call (or at `start`).
    fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }

    fn print(&self) {
        for (name, took) in &self.steps {
            eprintln!("xtask: {:>7.1}s  {name}", took.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The Dockerfile (not buildable here: its base image needs a registry)
    //! is parsed and held to what `image` builds; the manifests in deploy/
    //! name the workspace version.

    use super::*;

    /// One Dockerfile instruction, continuation lines joined.
    #[derive(Debug, Clone)]
    struct Instruction {
        keyword: String,
        args: String,
    }

    #[derive(Debug)]
    struct Stage {
        from: String,
        body: Vec<Instruction>,
    }

    fn read_text(path: &str) -> String {
        std::fs::read_to_string(workspace_root().join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn instructions(text: &str) -> Vec<Instruction> {
        let mut out = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part.trim());
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                    out.push(Instruction {
                        keyword: keyword.to_ascii_uppercase(),
                        args: args.trim().to_string(),
                    });
                    current.clear();
                }
            }
        }
        assert!(current.is_empty(), "Dockerfile ends inside a continuation");
        out
    }

    fn stages(text: &str) -> Vec<Stage> {
        let mut out: Vec<Stage> = Vec::new();
        for i in instructions(text) {
            if i.keyword == "FROM" {
                out.push(Stage {
                    from: i.args.clone(),
                    body: Vec::new(),
                });
            } else {
                let stage = out
                    .last_mut()
                    .unwrap_or_else(|| panic!("{} before any FROM", i.keyword));
                stage.body.push(i);
            }
        }
        out
    }

    /// `a="x y" b=z` -> [(a, x y), (b, z)].
    fn assignments(args: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut token = String::new();
        let mut quoted = false;
        for c in args.chars().chain([' ']) {
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    if !token.is_empty() {
                        let (k, v) = token.split_once('=').unwrap_or((&token, ""));
                        out.push((k.to_string(), v.to_string()));
                        token.clear();
                    }
                }
                c => token.push(c),
            }
        }
        assert!(!quoted, "unbalanced quotes in {args:?}");
        out
    }

    fn dockerfile() -> Vec<Stage> {
        stages(&read_text(DOCKERFILE))
    }

    /// `rust-version = "1.95"` of the workspace.
    fn rust_version() -> String {
        read_text("Cargo.toml")
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = "))
            .map(|v| v.trim_matches('"').to_string())
            .expect("rust-version in Cargo.toml")
    }

    #[test]
    fn dockerfile_builds_with_the_workspace_rust_and_ends_from_scratch() {
        let stages = dockerfile();
        let froms: Vec<&str> = stages.iter().map(|s| s.from.as_str()).collect();
        assert_eq!(
            froms,
            [
                format!(
                    "docker.io/library/rust:{}-bookworm AS build",
                    rust_version()
                )
                .as_str(),
                "scratch"
            ]
        );
    }

    #[test]
    fn dockerfile_builder_installs_what_the_bpf_build_needs_and_builds_the_release() {
        let stages = dockerfile();
        let runs: Vec<&str> = stages[0]
            .body
            .iter()
            .filter(|i| i.keyword == "RUN")
            .map(|i| i.args.as_str())
            .collect();
        // The packages xtask installs for bpf/build.rs: clang and llc, and
        // the headers.
        let wanted: BTreeSet<&str> = crate::REQUIRED
            .iter()
            .filter(|(cmd, _)| matches!(*cmd, "clang" | "llc"))
            .map(|(_, pkg)| *pkg)
            .chain(crate::REQUIRED_FILES.iter().map(|(_, pkg)| *pkg))
            .collect();
        let installed: BTreeSet<&str> = runs
            .iter()
            .flat_map(|r| r.split("&&"))
            .filter_map(|cmd| cmd.trim().strip_prefix("apt-get install"))
            .flat_map(str::split_whitespace)
            .filter(|w| !w.starts_with('-'))
            .collect();
        assert_eq!(installed, wanted);
        let steps: Vec<&str> = runs
            .iter()
            .flat_map(|r| r.split("&&"))
            .map(str::trim)
            .collect();
        for expected in [
            "cargo build --release -p l2announcer --locked",
            &format!("sh {ROOTFS_SCRIPT} target/release/{NAME} /rootfs"),
        ] {
            assert!(steps.contains(&expected), "{expected:?} in {steps:?}");
        }
    }

    #[test]
    fn dockerfile_final_stage_is_what_xtask_builds() {
        let stages = dockerfile();
        let last = &stages[1].body;
        let keywords: BTreeSet<&str> = last.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(
            keywords,
            BTreeSet::from(["ARG", "COPY", "ENV", "LABEL", "ENTRYPOINT"]),
            "the final stage only copies the root file system and describes it"
        );
        let copies: Vec<&str> = last
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| i.args.as_str())
            .collect();
        assert_eq!(copies, ["--from=build /rootfs/ /"]);
        let entrypoints: Vec<&str> = last
            .iter()
            .filter(|i| i.keyword == "ENTRYPOINT")
            .map(|i| i.args.as_str())
            .collect();
        assert_eq!(entrypoints, [format!("[\"{ENTRYPOINT}\"]")]);
        let env: Vec<(String, String)> = last
            .iter()
            .filter(|i| i.keyword == "ENV")
            .flat_map(|i| assignments(&i.args))
            .collect();
        assert_eq!(env, [("PATH".to_string(), PATH.to_string())]);

        let args: Vec<(String, String)> = last
            .iter()
            .filter(|i| i.keyword == "ARG")
            .flat_map(|i| assignments(&i.args))
            .collect();
        assert_eq!(
            args,
            [
                ("VERSION".to_string(), VERSION.to_string()),
                ("REVISION".to_string(), "unknown".to_string())
            ]
        );
        let labels_written: Vec<(String, String)> = last
            .iter()
            .filter(|i| i.keyword == "LABEL")
            .flat_map(|i| assignments(&i.args))
            .collect();
        let expected: Vec<(String, String)> = labels("${VERSION}", "${REVISION}")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(labels_written, expected);
    }

    #[test]
    fn dockerignore_keeps_build_output_out_of_the_context() {
        let ignored: Vec<String> = read_text(".dockerignore")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        for dir in ["target/", ".git/"] {
            assert!(ignored.iter().any(|l| l == dir), "{dir} in {ignored:?}");
        }
        // Nothing the build reads is left out.
        for needed in ["Cargo.toml", "Cargo.lock", "bpf", "agent", "deploy"] {
            assert!(
                !ignored.iter().any(|l| l.trim_end_matches('/') == needed),
                "{needed} ignored"
            );
        }
    }

    #[test]
    fn deploy_names_the_image_at_the_workspace_version() {
        let daemonset = read_text("deploy/daemonset.yaml");
        let images: Vec<&str> = daemonset
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .collect();
        assert_eq!(images, [format!("{NAME}:{VERSION}")]);
        // kustomization.yaml: `- name: l2announcer` followed by `newTag: V`.
        let kustomization = read_text("deploy/kustomization.yaml");
        let lines: Vec<&str> = kustomization
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        let at = lines
            .iter()
            .position(|l| *l == format!("- name: {NAME}"))
            .expect("an images: entry for l2announcer");
        let tag = lines
            .get(at + 1)
            .and_then(|l| l.strip_prefix("newTag: "))
            .map(|t| t.trim_matches('"'));
        assert_eq!(tag, Some(VERSION), "newTag after `- name: {NAME}`");
    }

    #[test]
    fn parses_the_instructions_of_a_dockerfile() {
        let stages = stages(
            "# comment\nFROM a AS b\nRUN x \\\n    && y\n\nfrom scratch\nLABEL k=\"v w\" \\\n  l=m\n",
        );
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[0].from, "a AS b");
        assert_eq!(stages[0].body[0].args, "x && y");
        assert_eq!(
            assignments(&stages[1].body[0].args),
            [("k".into(), "v w".into()), ("l".into(), "m".into())]
        );
    }

    #[test]
    fn final_stage_is_the_text_from_the_last_from() {
        let text = "FROM a AS b\nRUN x\n# the end\nfrom scratch\nCOPY --from=b /r/ /\n";
        assert_eq!(
            final_stage(text),
            Some("from scratch\nCOPY --from=b /r/ /\n")
        );
        assert_eq!(final_stage("RUN x\n"), None);
        let real = read_text(DOCKERFILE);
        let last = final_stage(&real).unwrap();
        assert!(last.starts_with("FROM scratch\n"), "{last}");
    }

    #[test]
    fn ldd_output_gives_libraries_and_loader_not_the_vdso() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            ldd_paths(ldd).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let err = ldd_paths("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn ancestors_stop_below_the_root() {
        assert_eq!(
            ancestors("/lib/x86_64-linux-gnu/libc.so.6"),
            ["/lib/x86_64-linux-gnu", "/lib"]
        );
        assert!(ancestors("/l2announcer").is_empty());
    }

    #[test]
    fn tags_default_to_the_workspace_version_and_are_checked() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tag = |a: &[&str]| parse_args(&args(a)).map(|o| o.tag);
        assert_eq!(
            parse_args(&[]).unwrap(),
            Options {
                tag: VERSION.to_string(),
                debug: false
            }
        );
        assert_eq!(
            parse_args(&args(&["--debug"])).unwrap(),
            Options {
                tag: format!("{VERSION}-debug"),
                debug: true
            }
        );
        assert_eq!(tag(&["--tag", "v1.2_rc-3"]).unwrap(), "v1.2_rc-3");
        assert_eq!(tag(&["--tag=dev", "--debug"]).unwrap(), "dev");
        for bad in ["", "-x", ".x", "a:b", "a/b"] {
            assert!(tag(&["--tag", bad]).is_err(), "{bad:?}");
        }
        assert!(tag(&["--tag"]).is_err());
        assert!(tag(&["--push"]).is_err());
    }

    #[test]
    fn hard_limits_come_from_proc_self_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96365                96365                processes \n\
                      Max open files            1024                 20000                files     \n\
                      Max locked memory         unlimited            unlimited            bytes     \n";
        assert_eq!(parse_hard_limit(limits, "Max open files"), Some(20000));
        assert_eq!(parse_hard_limit(limits, "Max processes"), Some(96365));
        assert_eq!(parse_hard_limit(limits, "Max locked memory"), None);
        assert_eq!(parse_hard_limit(limits, "Max nice priority"), None);
        assert_eq!(run_limit(Some(20000)), 1024);
        assert_eq!(run_limit(Some(512)), 512);
        assert_eq!(run_limit(None), 1024);
    }
}
