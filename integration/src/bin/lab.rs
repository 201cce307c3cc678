//! `lab`: the virtual LAN demo and its scriptable pieces (run it through
//! `cargo xtask lab`, as root).
//!
//! * no argument — the full demo: builds the lab (integration::lab), shows
//!   who holds which Service, ARP/NDP resolution and HTTP from the client,
//!   SIGKILL of the holder with the takeover timeline, SIGTERM of the new
//!   holder with the handover timeline, then removes everything (also on
//!   Ctrl-C).
//! * `up` — builds the lab and leaves it running in the background (a
//!   daemon hosting the API server and the HTTP servers); prints the
//!   kubeconfig and the node names.
//! * `kill NODE [--signal SIG]`, `start NODE`, `exec NODE -- CMD...`
//!   (NODE may also be `client` for exec), `down`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use integration::lab::{
    self, AnnouncementKind, EXT_SERVICE, EXT_V4, EXT_V6, LB_SERVICE, LB_V4, LB_V6, Lab, LabConfig,
    LabError, LabState, Takeover,
};
use integration::mac::format as format_mac;
use integration::poll::{self, wait_until};
use integration::probe::monotonic_ns;

fn main() -> ExitCode {
    integration::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("demo") => demo(),
        Some("up") => up(),
        Some("__host") => host(),
        Some("down") => down(),
        Some("kill") => kill(&args[1..]),
        Some("start") => start(&args[1..]),
        Some("exec") => exec(&args[1..]),
        Some(other) => Err(LabError::State(format!(
            "unknown command {other:?}; usage: lab [up|down|kill NODE [--signal SIG]|start NODE|exec NODE -- CMD...]"
        ))),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config() -> Result<LabConfig, LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        what: "current_exe".into(),
        source,
    })?;
    let bin = exe
        .parent()
        .map(|d| d.join("l2announcer"))
        .unwrap_or_else(|| PathBuf::from("l2announcer"));
    if !bin.exists() {
        return Err(LabError::State(format!(
            "{} not found: build with `cargo build -p l2announcer -p integration --bins`",
            bin.display()
        )));
    }
    Ok(LabConfig::demo(bin))
}

fn state() -> Result<LabState, LabError> {
    LabState::load(&config()?.dir).map_err(|e| {
        LabError::State(format!(
            "no lab running ({e}); start one with `cargo xtask lab up`"
        ))
    })
}

fn up() -> Result<u8, LabError> {
    let cfg = config()?;
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        what: "current_exe".into(),
        source,
    })?;
    std::fs::create_dir_all(&cfg.dir).map_err(|source| LabError::Io {
        what: cfg.dir.display().to_string(),
        source,
    })?;
    let _ = std::fs::remove_file(cfg.dir.join("ready"));
    let log_path = cfg.dir.with_extension("log");
    let log = std::fs::File::create(&log_path).map_err(|source| LabError::Io {
        what: log_path.display().to_string(),
        source,
    })?;
    let log2 = log.try_clone().map_err(|source| LabError::Io {
        what: "log".into(),
        source,
    })?;
    // A daemon: own session, no terminal, output to the log.
    let mut cmd = Command::new("setsid");
    cmd.arg(&exe)
        .arg("__host")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let mut child = cmd.spawn().map_err(|source| LabError::Io {
        what: "starting the lab host".into(),
        source,
    })?;
    wait_until(
        "the lab to come up",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            if cfg.dir.join("ready").exists() {
                return Ok(Some(()));
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(LabError::State(format!(
                    "lab host exited ({status}):\n{log}"
                )));
            }
            Ok(None)
        },
    )?;
    let s = LabState::load(&cfg.dir)?;
    println!(
        "lab {} is up (host process {}, log {})",
        s.id,
        s.host_pid,
        log_path.display()
    );
    println!("kubeconfig: {}", s.kubeconfig.display());
    println!("API server: {}", s.apiserver);
    for n in &s.nodes {
        println!(
            "{}: netns {} eth0 {} {} {} eth1 {} metrics http://{}/metrics",
            n.name, n.netns, n.mac, n.v4, n.v6, n.mgmt, n.metrics_addr
        );
    }
    println!(
        "client: netns {} eth0 {} 192.0.2.2 2001:db8::2",
        s.client_netns, s.client_mac
    );
    println!(
        "try: kubectl --kubeconfig {} -n kube-system get leases; cargo xtask lab exec client -- arping -c 3 -I eth0 {LB_V4}",
        s.kubeconfig.display()
    );
    Ok(0)
}

/// The background process of `lab up`.
fn host() -> Result<u8, LabError> {
    poll::install_interrupt_handler();
    let cfg = config()?;
    let lab = Lab::up(&cfg)?;
    std::fs::write(cfg.dir.join("ready"), "").map_err(|source| LabError::Io {
        what: "ready".into(),
        source,
    })?;
    eprintln!("lab host ready");
    while !poll::interrupted() {
        lab.reap();
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("lab host stopping");
    lab.down();
    Ok(0)
}

fn down() -> Result<u8, LabError> {
    let s = state()?;
    if lab::process_alive(s.host_pid) {
        // SAFETY: kill(2) of the lab host's pid recorded in state.json.
        unsafe { libc::kill(s.host_pid as libc::pid_t, libc::SIGTERM) };
        let waited = wait_until::<_, LabError>(
            "the lab host to stop",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || Ok((!lab::process_alive(s.host_pid)).then_some(())),
        );
        if let Err(e) = waited {
            eprintln!("lab: {e}; removing what is left");
        }
    }
    // Whatever the host left (or all of it when the host died).
    s.teardown();
    let _ = std::fs::remove_file(s.dir.with_extension("log"));
    println!("lab {} removed", s.id);
    Ok(0)
}

fn signal_number(name: &str) -> Option<libc::c_int> {
    let n = name.trim_start_matches("SIG").to_ascii_uppercase();
    Some(match n.as_str() {
        "KILL" | "9" => libc::SIGKILL,
        "TERM" | "15" => libc::SIGTERM,
        "INT" | "2" => libc::SIGINT,
        "STOP" | "19" => libc::SIGSTOP,
        "CONT" | "18" => libc::SIGCONT,
        _ => return None,
    })
}

fn kill(args: &[String]) -> Result<u8, LabError> {
    let node = args
        .first()
        .ok_or_else(|| LabError::State("usage: lab kill NODE [--signal SIG]".into()))?;
    let sig = match args.get(1).map(String::as_str) {
        Some("--signal") => {
            let name = args.get(2).map(String::as_str).unwrap_or("");
            signal_number(name)
                .ok_or_else(|| LabError::State(format!("unknown signal {name:?}")))?
        }
        Some(other) => return Err(LabError::State(format!("unexpected argument {other:?}"))),
        None => libc::SIGKILL,
    };
    let pid = state()?.signal_agent(node, sig)?;
    println!("sent signal {sig} to the agent of {node} (pid {pid})");
    if sig == libc::SIGKILL || sig == libc::SIGTERM || sig == libc::SIGINT {
        wait_until::<_, LabError>(
            &format!("the agent of {node} to exit"),
            Duration::from_secs(15),
            Duration::from_millis(20),
            || Ok((!lab::process_alive(pid)).then_some(())),
        )?;
        println!("the agent of {node} exited");
    }
    Ok(0)
}

fn start(args: &[String]) -> Result<u8, LabError> {
    let node = args
        .first()
        .ok_or_else(|| LabError::State("usage: lab start NODE".into()))?;
    let s = state()?;
    let child = s.start_agent(node)?;
    println!("started the agent of {node} (pid {})", child.id());
    Ok(0)
}

fn exec(args: &[String]) -> Result<u8, LabError> {
    let usage = || LabError::State("usage: lab exec NODE -- CMD...".into());
    let node = args.first().ok_or_else(usage)?;
    let rest = match args.get(1).map(String::as_str) {
        Some("--") => &args[2..],
        _ => &args[1..],
    };
    if rest.is_empty() {
        return Err(usage());
    }
    let code = state()?.exec(node, rest)?;
    Ok(u8::try_from(code).unwrap_or(1))
}

fn ms(ns: u64, t0: u64) -> String {
    format!("{:+8.1} ms", (ns as f64 - t0 as f64) / 1e6)
}

fn node_of(lab: &Lab, mac: [u8; 6]) -> String {
    lab.state
        .node_by_mac(mac)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| "?".into())
}

fn mac_of(lab: &Lab, node: &str) -> Result<[u8; 6], LabError> {
    lab.state.mac(node)
}

fn demo() -> Result<u8, LabError> {
    poll::install_interrupt_handler();
    let cfg = config()?;
    let started = std::time::Instant::now();
    println!(
        "== building the lab {} (bridge, 3 nodes, client, API server, agents)",
        cfg.id
    );
    let lab = Lab::up(&cfg)?;
    println!(
        "   kubeconfig {}  API server {}",
        lab.state.kubeconfig.display(),
        lab.state.apiserver
    );
    for n in &lab.state.nodes {
        println!("   {}  eth0 {}  {} {}", n.name, n.mac, n.v4, n.v6);
    }
    println!(
        "   policy: deploy/examples/l2-policy.yaml (node-3 is control-plane, so it never announces)"
    );
    let mut ok = true;

    println!("\n== who holds what (leases in kube-system)");
    for (svc, v4, v6) in [(LB_SERVICE, LB_V4, LB_V6), (EXT_SERVICE, EXT_V4, EXT_V6)] {
        let holder = lab.wait_holder(svc, None, Duration::from_secs(10))?;
        println!("   Service default/{svc:<18} {v4} {v6}  held by {holder}");
    }

    println!("\n== the client resolves each VIP");
    for (svc, v4, v6) in [(LB_SERVICE, LB_V4, LB_V6), (EXT_SERVICE, EXT_V4, EXT_V6)] {
        let holder = lab.wait_holder(svc, None, Duration::from_secs(10))?;
        let want = mac_of(&lab, &holder)?;
        let arp = wait_until::<_, LabError>(
            "ARP answer",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let m = lab.arping(v4, 2)?;
                Ok((!m.is_empty()).then_some(m))
            },
        )?;
        let nd = wait_until::<_, LabError>(
            "NDP answer",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let m = lab.ndisc(v6)?;
                Ok((!m.is_empty()).then_some(m))
            },
        )?;
        for (proto, ip, macs) in [("ARP", IpAddr::V4(v4), &arp), ("NDP", IpAddr::V6(v6), &nd)] {
            let good = macs.as_slice() == [want];
            ok &= good;
            let shown: Vec<String> = macs
                .iter()
                .map(|m| format!("{} ({})", format_mac(*m), node_of(&lab, *m)))
                .collect();
            println!(
                "   {proto} {ip:<15} -> {}  {}",
                shown.join(", "),
                if good {
                    format!("= {holder}'s eth0, ok")
                } else {
                    format!("MISMATCH: holder is {holder}")
                }
            );
        }
        for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
            let body = lab.client_http(ip)?;
            let good = body.trim() == format!("served by {holder}");
            ok &= good;
            println!(
                "   HTTP GET http://{}/ -> {:?}{}",
                fmt_host(ip),
                body.trim(),
                if good { "" } else { "  MISMATCH" }
            );
        }
    }

    // SIGKILL of the holder of the LoadBalancer Service.
    let old = lab.wait_holder(LB_SERVICE, None, Duration::from_secs(10))?;
    let old_mac = mac_of(&lab, &old)?;
    println!(
        "\n== SIGKILL of {old}'s agent (holder of {LB_SERVICE}); probing {LB_V4} every 10 ms from the client"
    );
    let pcap = lab.state.dir.join("client.pcap");
    let capture = lab.capture(&pcap)?;
    let probe = lab.probe(LB_V4, Duration::from_millis(10))?;
    probe.wait_answers(old_mac, 0, 20)?;
    let t_kill = lab.kill(&old, libc::SIGKILL)?;
    let new = lab.wait_holder(LB_SERVICE, Some(&old), Duration::from_secs(15))?;
    let t_lease = monotonic_ns();
    let new_mac = mac_of(&lab, &new)?;
    probe.wait_answers(new_mac, t_kill, 50)?;
    let probes = probe.stop(Duration::from_millis(200))?;
    let tk = lab::takeover(&probes, old_mac, t_kill.saturating_sub(200_000_000));
    // The announcements of the LoadBalancer Service's VIPs.
    let ann = capture
        .wait_announced(LB_V4, LB_V6, new_mac, t_kill, Duration::from_secs(5))
        .map(|all| {
            all.into_iter()
                .filter(|a| a.ip == IpAddr::V4(LB_V4) || a.ip == IpAddr::V6(LB_V6))
                .collect::<Vec<_>>()
        });
    println!("   takeover timeline (t=0: SIGKILL of {old}):");
    println!("   {}  SIGKILL {old}", ms(t_kill, t_kill));
    print_timeline(&tk, &ann, t_kill, new_mac, &old, &new, Some(t_lease));
    let lease_bound = lab::LEASE_DURATION + lab::RETRY_PERIOD + Duration::from_secs(1);
    let within = tk
        .first_new_ns
        .is_some_and(|f| f.saturating_sub(t_kill) <= lease_bound.as_nanos() as u64);
    ok &= within && tk.doubly_answered == 0 && ann.is_ok();
    if let Err(e) = &ann {
        println!("   -> NOT seen by the client: {e}");
    }
    println!(
        "   -> new holder answered {} lease duration + retry period + 1 s ({:?}); {} requests, {} unanswered, {} answered by two MACs",
        if within { "within" } else { "NOT within" },
        lease_bound,
        tk.requests,
        tk.unanswered,
        tk.doubly_answered
    );
    let body = lab.client_http(IpAddr::V4(LB_V4))?;
    println!("   HTTP GET http://{LB_V4}/ -> {:?}", body.trim());
    let svg_takeover = (
        tk.clone(),
        ann.as_ref().ok().cloned().unwrap_or_default(),
        t_kill,
        old.clone(),
        new.clone(),
    );
    drop(capture);

    println!("\n== restarting {old}'s agent (it rejoins as a candidate)");
    lab.start(&old)?;
    lab.wait_ready(&old, Duration::from_secs(20))?;
    println!("   {old} ready");

    println!("\n== SIGTERM of {new}'s agent (it releases its leases on the way out)");
    let probe = lab.probe(LB_V4, Duration::from_millis(5))?;
    probe.wait_answers(new_mac, 0, 20)?;
    let t_term = lab.kill(&new, libc::SIGTERM)?;
    let next = lab.wait_holder(LB_SERVICE, Some(&new), Duration::from_secs(10))?;
    let t_lease2 = monotonic_ns();
    let next_mac = mac_of(&lab, &next)?;
    probe.wait_answers(next_mac, t_term, 50)?;
    let probes = probe.stop(Duration::from_millis(100))?;
    let th = lab::takeover(&probes, new_mac, t_term.saturating_sub(100_000_000));
    println!("   handover timeline (t=0: SIGTERM of {new}):");
    println!("   {}  SIGTERM {new}", ms(t_term, t_term));
    print_timeline(
        &th,
        &Err(LabError::State("not captured".into())),
        t_term,
        next_mac,
        &new,
        &next,
        Some(t_lease2),
    );
    let handover_ns = th
        .first_new_ns
        .map(|f| f.saturating_sub(t_term))
        .unwrap_or(u64::MAX);
    let sub_second = handover_ns < 1_000_000_000;
    ok &= sub_second && th.doubly_answered == 0;
    println!(
        "   -> handover {} ({:.0} ms from SIGTERM to the first reply from {next}); {} requests, {} unanswered, {} answered by two MACs",
        if sub_second {
            "under 1 s"
        } else {
            "NOT under 1 s"
        },
        handover_ns as f64 / 1e6,
        th.requests,
        th.unanswered,
        th.doubly_answered
    );

    let svg = std::env::current_dir()
        .map(|d| d.join("target/lab-timeline.svg"))
        .unwrap_or_else(|_| PathBuf::from("lab-timeline.svg"));
    let (tk, ann, t0, o, n) = svg_takeover;
    if std::fs::write(&svg, timeline_svg(&tk, &ann, t0, &o, &n, &th, t_term)).is_ok() {
        println!("\n   timeline drawn in {}", svg.display());
    }

    println!("\n== cleaning up");
    lab.down();
    println!(
        "   done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        if ok {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    Ok(if ok { 0 } else { 1 })
}

fn fmt_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

fn print_timeline(
    t: &Takeover,
    ann: &Result<Vec<lab::Announcement>, LabError>,
    t0: u64,
    new_mac: [u8; 6],
    old: &str,
    new: &str,
    lease_seen: Option<u64>,
) {
    let mut rows: Vec<(u64, String)> = Vec::new();
    if let Some(x) = t.last_old_ns {
        rows.push((x, format!("last ARP reply from {old}'s MAC")));
    }
    if let Some(x) = lease_seen {
        rows.push((x, format!("lease seen held by {new} (polled)")));
    }
    if let Some(x) = t.first_new_ns {
        rows.push((
            x,
            format!("first ARP reply from {new}'s MAC {}", format_mac(new_mac)),
        ));
    }
    if let Ok(a) = ann {
        let first = |k| {
            a.iter()
                .filter(|x| x.kind == k && x.mac == new_mac && x.at_ns > t0)
                .map(|x| x.at_ns)
                .min()
        };
        if let Some(x) = first(AnnouncementKind::GratuitousArp) {
            rows.push((
                x,
                format!("gratuitous ARP from {new} seen by the client (tcpdump)"),
            ));
        }
        if let Some(x) = first(AnnouncementKind::UnsolicitedNa) {
            rows.push((
                x,
                format!("unsolicited NA from {new} seen by the client (tcpdump)"),
            ));
        }
    }
    rows.sort();
    for (at, what) in rows {
        println!("   {}  {what}", ms(at, t0));
    }
    println!(
        "   client-observed outage: {:.1} ms (longest gap between answered probes)",
        t.outage_ns as f64 / 1e6
    );
}

/// Both timelines as two horizontal bars with markers (ms from the signal).
fn timeline_svg(
    tk: &Takeover,
    ann: &[lab::Announcement],
    t_kill: u64,
    old: &str,
    new: &str,
    th: &Takeover,
    t_term: u64,
) -> String {
    let span_ms = tk
        .first_new_ns
        .map(|x| (x.saturating_sub(t_kill)) as f64 / 1e6)
        .unwrap_or(5000.0)
        .max(1000.0)
        * 1.15;
    let x = |ns: u64, t0: u64| 60.0 + (ns as f64 - t0 as f64) / 1e6 / span_ms * 820.0;
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"920\" height=\"260\" font-family=\"monospace\" font-size=\"11\">\n<rect width=\"920\" height=\"260\" fill=\"white\"/>\n",
    );
    let mark = |s: &mut String, px: f64, y: f64, color: &str, label: &str| {
        s.push_str(&format!(
            "<line x1=\"{px:.1}\" y1=\"{:.0}\" x2=\"{px:.1}\" y2=\"{:.0}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.0}\" fill=\"{color}\">{label}</text>\n",
            y - 12.0,
            y + 12.0,
            px + 3.0,
            y - 14.0
        ));
    };
    for (row, (t, t0, title, ann)) in [
        (tk, t_kill, format!("SIGKILL {old} -> {new}"), ann),
        (th, t_term, format!("SIGTERM {new}"), &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let y = 80.0 + row as f64 * 110.0;
        s.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{title}</text>\n",
            y - 40.0
        ));
        s.push_str(&format!(
            "<line x1=\"60\" y1=\"{y:.0}\" x2=\"880\" y2=\"{y:.0}\" stroke=\"#999\"/>\n"
        ));
        mark(&mut s, x(t0, t0), y, "black", "signal");
        if let Some(v) = t.last_old_ns {
            mark(
                &mut s,
                x(v, t0),
                y + 30.0,
                "#c00",
                &format!("last old {:.0}ms", (v as f64 - t0 as f64) / 1e6),
            );
        }
        if let Some(v) = t.first_new_ns {
            mark(
                &mut s,
                x(v, t0),
                y,
                "#080",
                &format!("first new {:.0}ms", (v as f64 - t0 as f64) / 1e6),
            );
        }
        if let Some(g) = ann
            .iter()
            .filter(|a| a.at_ns > t0 && a.kind == AnnouncementKind::GratuitousArp)
            .map(|a| a.at_ns)
            .min()
        {
            mark(&mut s, x(g, t0), y + 30.0, "#06c", "GARP");
        }
    }
    s.push_str("</svg>\n");
    s
}
