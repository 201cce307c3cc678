//! The `l2announcer` binary as an operator uses it: option errors, the
//! statedb CLI against a live agent and against a stopped agent's files,
//! `config`, `status`, clean shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use actors::tables::{L2_ANNOUNCE, L2AnnounceRow, LEASES, LeaseRow};

const BIN: &str = env!("CARGO_BIN_EXE_l2announcer");

fn l2announcer(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("L2ANNOUNCER_API_SOCKET")
        .output()
        .expect("run l2announcer")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A running agent in a private directory; killed if the test fails.
struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(dir: tempfile::TempDir) -> Agent {
        let child = Command::new(BIN)
            .args([
                "run",
                "--node-name",
                "node-a",
                "--prometheus-serve-addr",
                "",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--api-socket")
            .arg(dir.path().join("api.sock"))
            .arg("--bpf-root")
            .arg(dir.path().join("bpf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let agent = Agent {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o = agent.query(&["status"]);
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not answer: {}",
                stderr(&o)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    fn query(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        let socket = self.socket();
        let socket = socket.to_str().expect("utf-8 path");
        full.extend(["--api-socket", socket]);
        l2announcer(&full)
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait agent")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn seed(db_path: &Path) {
    std::fs::create_dir_all(db_path.parent().expect("parent")).expect("mkdir");
    let db = statedb::Db::open(db_path).expect("open db");
    let leases = statedb::Table::open(&db, LEASES).expect("leases");
    let announce = statedb::Table::open(&db, L2_ANNOUNCE).expect("l2-announce");
    let mut txn = db.write_txn();
    leases
        .insert(
            &mut txn,
            LeaseRow {
                service: "default/web".into(),
                lease: "cilium-l2announce-default-web".into(),
                holder: "node-a".into(),
                me: true,
                acquired: "2026-11-22T07:00:00Z".into(),
                renewed: "2026-11-22T07:00:01Z".into(),
                transitions: 2,
            },
        )
        .expect("insert lease");
    announce
        .insert(
            &mut txn,
            L2AnnounceRow {
                ip: "192.0.2.10".parse().expect("ip"),
                network_interface: "eth0".into(),
                origins: vec!["default/web".into()],
                claim: "default/web".into(),
                run: "1-1".into(),
                status: statedb::Status::Done,
            },
        )
        .expect("insert entry");
    txn.commit().expect("commit");
    db.flush().expect("flush");
}

#[test]
fn bad_options_exit_2_with_one_line_naming_the_option() {
    for (args, option) in [
        (
            vec!["run", "--l2-announcements-lease-duration=5s"],
            "--l2-announcements-lease-duration",
        ),
        (
            vec!["run", "--l2-announcements-renew-deadline=2s"],
            "--l2-announcements-renew-deadline",
        ),
        (vec!["run", "--k8s-client-qps=0"], "--k8s-client-qps"),
        (vec!["run", "--k8s-client-burst=-2"], "--k8s-client-burst"),
        (vec!["run", "--devices=eth/0"], "--devices"),
        (
            vec!["run", "--l2-announcements-retry-period=2"],
            "--l2-announcements-retry-period",
        ),
        (vec!["run", "--no-such-option"], "--no-such-option"),
    ] {
        let o = l2announcer(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.contains(option),
            "{args:?}: {err:?} does not name {option}"
        );
    }
}

/// `l2announcer ARGS` with only the environment given (nothing inherited).
fn with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run l2announcer")
}

fn one_line_exit_2(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    err.trim_end().to_string()
}

#[test]
fn bad_value_from_env_and_config_dir_is_refused_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let burst = dir.path().join("k8s-client-burst");
    std::fs::write(&burst, "0\n").expect("write");
    let o = Command::new(BIN)
        .args(["run", "--config-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(
        one_line_exit_2(&o),
        format!(
            "invalid option --k8s-client-burst: must be positive (got 0) (from {})",
            burst.display()
        )
    );
    // The config dir itself from the environment.
    let dir_text = dir.path().to_str().expect("utf-8");
    let o = with_env(&["run"], &[("L2ANNOUNCER_CONFIG_DIR", dir_text)]);
    assert!(one_line_exit_2(&o).contains("--k8s-client-burst"));

    let o = with_env(
        &["run"],
        &[("L2ANNOUNCER_L2_ANNOUNCEMENTS_LEASE_DURATION", "soon")],
    );
    assert_eq!(
        one_line_exit_2(&o),
        "invalid option --l2-announcements-lease-duration: invalid duration \"soon\": expected a number with a unit, e.g. 15s or 200ms"
    );
    // A rule between options, with the value from the environment.
    let o = with_env(
        &["run"],
        &[("L2ANNOUNCER_L2_ANNOUNCEMENTS_LEASE_DURATION", "5s")],
    );
    assert_eq!(
        one_line_exit_2(&o),
        "invalid option --l2-announcements-lease-duration: must be greater than --l2-announcements-renew-deadline (5s <= 5s)"
    );
    let o = with_env(&["run"], &[("L2ANNOUNCER_ENABLE_L2_ANNOUNCEMENTS", "yes")]);
    assert!(one_line_exit_2(&o).starts_with("invalid option --enable-l2-announcements: "));
    let o = with_env(&["status"], &[("L2ANNOUNCER_API_SOCKET", "")]);
    assert!(one_line_exit_2(&o).starts_with("invalid option --api-socket: "));
}

#[test]
fn config_local_shows_precedence() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("l2-announcements-lease-duration"), "20s").expect("write");
    std::fs::write(dir.path().join("enable-l2-announcements"), "true").expect("write");
    std::fs::write(dir.path().join("k8s-client-qps"), "7").expect("write");
    std::fs::write(dir.path().join("k8s-client-burst"), "8").expect("write");
    std::fs::write(dir.path().join("kube-proxy-replacement"), "true").expect("write");
    let local = |args: &[&str], env: &[(&str, &str)]| {
        let mut full = vec!["config", "--local", "--all", "-o", "json"];
        full.extend(args);
        let o = with_env(&full, env);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        v
    };
    let dir_text = dir.path().to_str().expect("utf-8");
    let v = local(
        &[
            "--k8s-client-qps=9",
            "--k8s-client-burst=11",
            "--config-dir",
            dir_text,
        ],
        &[
            ("L2ANNOUNCER_L2_ANNOUNCEMENTS_LEASE_DURATION", "30s"),
            ("L2ANNOUNCER_K8S_CLIENT_BURST", "12"),
        ],
    );
    let get = |v: &serde_json::Value, k: &str| {
        (
            v[k]["value"].as_str().unwrap_or("").to_string(),
            v[k]["source"].as_str().unwrap_or("").to_string(),
        )
    };
    let pair = |value: &str, source: &str| (value.to_string(), source.to_string());
    // flag beats env and config dir
    assert_eq!(get(&v, "k8s-client-qps"), pair("9", "flag"));
    assert_eq!(get(&v, "k8s-client-burst"), pair("11", "flag"));
    // env beats config dir
    assert_eq!(
        get(&v, "l2-announcements-lease-duration"),
        pair("30s", "env")
    );
    // config dir beats default
    assert_eq!(
        get(&v, "enable-l2-announcements"),
        pair("true", "config-dir")
    );
    assert_eq!(
        v["enable-l2-announcements"]["field"],
        "EnableL2Announcements"
    );
    assert_eq!(
        get(&v, "l2-announcements-retry-period"),
        pair("2s", "default")
    );
    assert!(v.get("kube-proxy-replacement").is_none());

    // The node name: flag or L2ANNOUNCER_NODE_NAME, then K8S_NODE_NAME.
    let v = local(&[], &[("K8S_NODE_NAME", "worker-1")]);
    assert_eq!(get(&v, "node-name"), pair("worker-1", "default"));
    let v = local(
        &[],
        &[
            ("K8S_NODE_NAME", "worker-1"),
            ("L2ANNOUNCER_NODE_NAME", "n2"),
        ],
    );
    assert_eq!(get(&v, "node-name"), pair("n2", "env"));
    // Go's boolean syntax from the environment; values are trimmed.
    let v = local(
        &[],
        &[
            ("L2ANNOUNCER_ENABLE_EXTERNAL_IPS", "T"),
            ("L2ANNOUNCER_K8S_CLIENT_QPS", " 3 "),
        ],
    );
    assert_eq!(get(&v, "enable-external-ips"), pair("T", "env"));
    assert_eq!(get(&v, "k8s-client-qps"), pair("3", "env"));

    // Without --all, only what differs from the default; table output
    // uses Cilium's field names.
    let o = with_env(
        &["config", "--local", "--k8s-client-burst", "12"],
        &[("L2ANNOUNCER_NODE_NAME", "n1")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "K8sClientBurst : 12\nNodeName       : n1\n");
}

#[test]
fn statedb_cli_usage_errors() {
    let o = l2announcer(&["statedb", "routes"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for t in ["devices", "l2-announce", "leases", "policies"] {
        assert!(err.contains(t), "{err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("none.sock");
    let o = l2announcer(&[
        "statedb",
        "devices",
        "--api-socket",
        socket.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot reach the agent"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn statedb_cli_against_live_and_stopped_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("state").join("statedb");
    seed(&db_path);
    let mut agent = Agent::start(dir);

    let mode = std::fs::metadata(agent.socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let o = agent.query(&["statedb", "leases"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    assert!(header.starts_with("# Service"), "{header}");
    assert!(header.contains("Holder"));
    let row = lines.next().expect("row");
    assert!(
        row.contains("default/web") && row.contains("node-a") && row.contains("true"),
        "{row}"
    );

    let o = agent.query(&["statedb", "l2-announce", "-o", "json"]);
    assert!(o.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(rows[0]["ip"], "192.0.2.10");
    assert_eq!(rows[0]["network_interface"], "eth0");
    assert_eq!(rows[0]["origins"][0], "default/web");

    // --watch prints the current rows, then keeps the stream open.
    let socket = agent.socket();
    let mut watch = Command::new(BIN)
        .args(["statedb", "leases", "--watch", "--api-socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("watch");
    let mut reader = BufReader::new(watch.stdout.take().expect("stdout"));
    let mut first = String::new();
    let mut second = String::new();
    reader.read_line(&mut first).expect("header line");
    reader.read_line(&mut second).expect("row line");
    assert!(first.starts_with("# Rev Op Service"), "{first}");
    assert!(second.contains("+ default/web"), "{second}");

    let o = agent.query(&["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(status["node"], "node-a");
    assert_eq!(status["tables"]["leases"], 1);

    let o = agent.query(&["config", "--all"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("NodeName") && l.ends_with(": node-a"))
    );

    // The database is locked while the agent runs: --db says so.
    let o = l2announcer(&[
        "statedb",
        "leases",
        "--db",
        db_path.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("in use by a running agent"),
        "{}",
        stderr(&o)
    );

    // SIGTERM: clean exit 0 even with a watch open; the watch ends too.
    let status = agent.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "socket removed on shutdown");
    let watch_status = watch.wait().expect("watch ends");
    assert!(watch_status.success());

    let o = l2announcer(&[
        "statedb",
        "leases",
        "--db",
        db_path.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("cilium-l2announce-default-web"));
    let o = l2announcer(&[
        "statedb",
        "leases",
        "--watch",
        "--db",
        db_path.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2));
}
