//! `bench-control-plane` (`cargo xtask bench control-plane`): what the
//! control plane costs and delivers with N Services × M nodes, for each
//! election mode in the same run on the same machine.
//!
//! For every N and mode it builds a fresh bench lab (integration::bench_lab:
//! namespaces, the release `test-apiserver`, release agents with the chosen
//! timings, client rate and `--l2-announcements-election`), sweeps the VIPs
//! with Neighbor Solicitations from the client (integration::ndp_sweep) and
//! measures, in order:
//! 1. convergence: N Services created at once → every VIP answered;
//! 2. steady state over a window: the agents' API requests/s by verb and
//!    code and writes/s (the API server's counters), VIPs still answered,
//!    placement (which MAC answers each VIP; who the Leases name), agent
//!    and API server CPU and RSS (/proc);
//! 3. new Services one by one among the N: create → first answer;
//! 4. failover: SIGKILL of the node answering the most Services; per
//!    Service the gap at the client and kill → first answer of a survivor,
//!    the 409s meanwhile.
//!
//! It writes `control-plane.md`, `.json` and `.svg` to `--out-dir` and the
//! lab logs of each case under `control-plane-logs/`. Every mode is passed
//! to the agents as `--l2-announcements-election=<mode>`. Who holds what is
//! read where the mode keeps it: the assignment record and the heartbeats
//! in `node-heartbeat` mode (its per-Service Leases are a lazy mirror,
//! counted separately), the per-Service Leases otherwise. Nothing here is a
//! pass/fail check. Needs root and bpffs.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::TryStreamExt;
use integration::bench_lab::{self, AgentOptions, BenchLab, BenchLabConfig, CLIENT_V6};
use integration::control_plane_bench::{
    self as measure, CaseResult, CaseStatus, Convergence, Dist, Failover, NewServices, ProcUsage,
    Report, RequestSummary, RunInfo, Steady, proc_sample, secs_between,
};
use integration::lab::{LEASE_NAMESPACE, LabError, record_holders};
use integration::ndp_sweep::{NdpSweep, SweepRates, SweepSocket};
use integration::netns::run_in;
use integration::poll::{WaitError, install_interrupt_handler, interrupted};
use integration::probe::monotonic_ns;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ServiceType {
    /// ClusterIP Services with `externalIPs` (agents get --enable-external-ips).
    ExternalIps,
    /// LoadBalancer Services whose status carries the VIP.
    LoadBalancer,
}

#[derive(Parser, Debug)]
#[command(
    about = "Control-plane benchmark: convergence, API cost, time to announce, failover, per election mode",
    args_override_self = true
)]
struct Args {
    /// Numbers of Services, one case each (comma list or repeated).
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 5000])]
    services: Vec<usize>,
    /// Nodes; the last one is a control-plane node the policy leaves out.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Election modes, each passed as `--l2-announcements-election=<mode>`
    /// (`client-go` is the agent's hidden baseline emulation).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = ["node-heartbeat", "per-service", "client-go", "client-go-unthrottled"],
        default_values = ["node-heartbeat", "per-service", "client-go", "client-go-unthrottled"]
    )]
    modes: Vec<String>,
    /// The client rate of `client-go-unthrottled`: the client-go emulation
    /// with a rate high enough to hold every Lease, the baseline of what
    /// per-Service leader election costs when it works.
    #[arg(long, default_value_t = 1000.0)]
    unthrottled_qps: f64,
    #[arg(long, default_value_t = 2000)]
    unthrottled_burst: u32,
    /// The agents' --k8s-client-qps.
    #[arg(long, default_value_t = 5.0)]
    qps: f64,
    /// The agents' --k8s-client-burst.
    #[arg(long, default_value_t = 10)]
    burst: u32,
    /// Lease duration / renew deadline / retry period.
    #[arg(long, default_value = "15s/5s/2s", value_parser = parse_timings)]
    timings: (Duration, Duration, Duration),
    /// Seed of the Service names (placement depends on them).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value = "external-ips")]
    service_type: ServiceType,
    /// How long to wait for every VIP to be answered.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    converge_timeout: Duration,
    /// Pause between convergence and the steady-state window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    settle: Duration,
    /// Steady-state window.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    steady: Duration,
    /// New Services created one by one after the steady state.
    #[arg(long, default_value_t = 20)]
    new_services: usize,
    /// Interval between two new Services.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    new_interval: Duration,
    /// How long to wait for the new Services after the last is created.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    new_timeout: Duration,
    /// Observation after lease duration + retry period in the failover.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    failover_slack: Duration,
    /// Skip the failover.
    #[arg(long)]
    no_failover: bool,
    /// Solicitations per second sweeping all VIPs.
    #[arg(long, default_value_t = 1000.0)]
    sweep_rate: f64,
    /// Solicitations per second for watched VIPs (awaited answers), at most.
    #[arg(long, default_value_t = 4000.0)]
    watch_rate: f64,
    /// Shortest period between two solicitations of one watched VIP.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    watch_period: Duration,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// The agent (default: `l2announcer` next to this binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// The API server (default: `test-apiserver` next to this binary).
    #[arg(long)]
    apiserver_bin: Option<PathBuf>,
}

/// `150ms`, `2s`, `1.5s`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!("{s:?}: give a unit (ms, s, m)"));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// `LEASE/RENEW/RETRY`, e.g. `15s/5s/2s`.
fn parse_timings(s: &str) -> Result<(Duration, Duration, Duration), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let [l, r, p] = parts.as_slice() else {
        return Err(format!("{s:?}: want LEASE/RENEW/RETRY, e.g. 15s/5s/2s"));
    };
    Ok((parse_duration(l)?, parse_duration(r)?, parse_duration(p)?))
}

/// splitmix64: Service names from the seed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The name and VIP of Service number `i`.
fn service(seed: u64, i: usize) -> (String, Ipv6Addr) {
    let name = format!("bench-{:012x}", mix(seed ^ mix(i as u64)) >> 16);
    let vip = Ipv6Addr::from(
        u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0)) + i as u128 + 1,
    );
    (name, vip)
}

fn service_object(name: &str, vip: Ipv6Addr, ty: ServiceType) -> Result<Service, LabError> {
    let spec = match ty {
        ServiceType::ExternalIps => serde_json::json!({
            "type": "ClusterIP",
            "selector": {"app": "web"},
            "externalIPs": [vip.to_string()],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        }),
        ServiceType::LoadBalancer => serde_json::json!({
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        }),
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"color": "blue", "app.kubernetes.io/part-of": "l2bench"},
        },
        "spec": spec,
    }))
    .map_err(|e| LabError::Api(e.to_string()))
}

/// Creates the Services (`concurrency` requests in flight).
async fn create_services(
    client: kube::Client,
    list: Vec<(String, Ipv6Addr)>,
    ty: ServiceType,
    concurrency: usize,
) -> Result<(), LabError> {
    let api = Api::<Service>::namespaced(client, "default");
    futures::stream::iter(list.into_iter().map(Ok::<_, LabError>))
        .try_for_each_concurrent(concurrency, |(name, vip)| {
            let api = api.clone();
            async move {
                let svc = service_object(&name, vip, ty)?;
                api.create(&PostParams::default(), &svc)
                    .await
                    .map_err(|e| LabError::Api(format!("creating {name}: {e}")))?;
                if let ServiceType::LoadBalancer = ty {
                    let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": vip.to_string()}]}}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .map_err(|e| LabError::Api(format!("status of {name}: {e}")))?;
                }
                Ok(())
            }
        })
        .await
}

/// The bench's Services per node the per-Service Leases name as holder,
/// and how many of those Leases were not renewed within their duration.
async fn per_service_lease_holders(
    client: kube::Client,
) -> Result<(BTreeMap<String, usize>, usize), LabError> {
    let leases = Api::<Lease>::namespaced(client, LEASE_NAMESPACE)
        .list(&ListParams::default())
        .await
        .map_err(|e| LabError::Api(e.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut holders = BTreeMap::new();
    let mut expired = 0;
    for l in leases.items.into_iter().filter(|l| {
        l.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("cilium-l2announce-default-bench-"))
    }) {
        let Some(spec) = l.spec else { continue };
        let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
            continue;
        };
        let renewed = spec
            .renew_time
            .map(|t| t.0.as_millisecond() as f64 / 1e3)
            .unwrap_or(0.0);
        let duration = f64::from(spec.lease_duration_seconds.unwrap_or(0));
        if renewed + duration < now {
            expired += 1;
        }
        *holders.entry(holder).or_default() += 1;
    }
    Ok((holders, expired))
}

/// The bench's Services per node the node-heartbeat assignment record
/// gives to a live member.
async fn assignment_holders(client: kube::Client) -> Result<BTreeMap<String, usize>, LabError> {
    let claims = record_holders(client)
        .await
        .map_err(|e| LabError::Api(e.to_string()))?;
    let mut holders = BTreeMap::new();
    for (_, node) in claims
        .into_iter()
        .filter(|(claim, _)| claim.starts_with("default/bench-"))
    {
        *holders.entry(node).or_default() += 1;
    }
    Ok(holders)
}

/// Whether `e` is the end of a wait by Ctrl-C.
fn is_interrupted(e: &LabError) -> bool {
    matches!(e, LabError::Wait(WaitError::Interrupted { .. }))
}

/// Sleeps `d` in short slices; an error once Ctrl-C was pressed.
fn pause(d: Duration) -> Result<(), LabError> {
    let end = Instant::now() + d;
    loop {
        if interrupted() {
            return Err(WaitError::Interrupted {
                what: "the benchmark".into(),
            }
            .into());
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Polls `done` every 50 ms until it holds or `deadline_ns` (monotonic)
/// passes, checking the agents and the sweep; whether it held.
fn wait_for(
    lab: &mut BenchLab,
    sweep: &mut NdpSweep,
    deadline_ns: u64,
    mut done: impl FnMut(&NdpSweep) -> bool,
) -> Result<bool, LabError> {
    loop {
        if done(sweep) {
            return Ok(true);
        }
        if monotonic_ns() >= deadline_ns {
            return Ok(false);
        }
        lab.check_agents()?;
        sweep.check()?;
        pause(Duration::from_millis(50))?;
    }
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

struct Bins {
    agent: PathBuf,
    apiserver: PathBuf,
}

/// One (N, mode) case: fresh lab, the four phases, logs saved.
fn run_case(args: &Args, bins: &Bins, n: usize, mode: &str) -> Result<CaseResult, LabError> {
    let started = Instant::now();
    let mut result = CaseResult::empty(n, mode, CaseStatus::Ran);
    let (lease, renew, retry) = args.timings;
    let (election, qps, burst) = match mode {
        "client-go-unthrottled" => ("client-go", args.unthrottled_qps, args.unthrottled_burst),
        other => (other, args.qps, args.burst),
    };
    result.qps = qps;
    result.burst = burst;
    let mut lab = BenchLab::up(BenchLabConfig {
        nodes: args.nodes,
        agent_bin: bins.agent.clone(),
        apiserver_bin: bins.apiserver.clone(),
        agent: AgentOptions {
            lease_duration: lease,
            renew_deadline: renew,
            retry_period: retry,
            qps,
            burst,
            election: election.to_string(),
        },
    })?;
    let outcome = phases(args, &mut lab, n, &mut result);
    let logs = args
        .out_dir
        .join("control-plane-logs")
        .join(format!("{n}-{mode}"));
    if let Err(e) = lab.save_logs(&logs) {
        tracing::warn!(error = %e, "saving the lab logs");
    }
    drop(lab);
    result.duration_s = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => Ok(result),
        Err(e) if is_interrupted(&e) => Err(e),
        Err(e) => {
            result.status = CaseStatus::Failed(e.to_string());
            Ok(result)
        }
    }
}

fn phases(
    args: &Args,
    lab: &mut BenchLab,
    n: usize,
    result: &mut CaseResult,
) -> Result<(), LabError> {
    let (lease, _, retry) = args.timings;
    let rates = SweepRates {
        sweep_pps: args.sweep_rate,
        watch_pps: args.watch_rate,
        watch_min_period: args.watch_period,
    };
    let sock = run_in(&lab.client_netns, || SweepSocket::open("eth0"))??;
    let mut sweep = NdpSweep::start(sock, CLIENT_V6, rates);
    lab.start_agents()?;
    lab.wait_ready(Duration::from_secs(60))?;
    tracing::info!(services = n, mode = %result.mode, lab = %lab.id, "agents ready");

    // 1. Convergence.
    let all: Vec<(String, Ipv6Addr)> = (0..n).map(|i| service(args.seed, i)).collect();
    let vips: Vec<Ipv6Addr> = all.iter().map(|s| s.1).collect();
    let ids = sweep.add(&vips);
    let c0 = lab.counters()?;
    let t0 = monotonic_ns();
    sweep.watch(&ids, t0, None);
    let client = lab.client()?;
    lab.block_on(create_services(client.clone(), all, args.service_type, 32))??;
    let t_created = monotonic_ns();
    tracing::info!(
        services = n,
        secs = secs_between(t0, t_created),
        "Services created"
    );
    let deadline = t0 + dur_ns(args.converge_timeout);
    wait_for(lab, &mut sweep, deadline, |s| s.watching() == 0)?;
    let t_conv = monotonic_ns();
    let c1 = lab.counters()?;
    let firsts = sweep.read(|log| {
        measure::first_answers(log, &ids.iter().map(|&id| (id, t0)).collect::<Vec<_>>())
    });
    let dist = Dist::of(&firsts);
    sweep.unwatch_all();
    let conv = Convergence {
        services: n,
        create_s: secs_between(t0, t_created),
        answered: dist.n,
        all_answered_s: (dist.missing == 0).then_some(dist.max).flatten(),
        first_answer: dist,
        timeout_s: args.converge_timeout.as_secs_f64(),
        resolution_s: rates.watch_period(n).as_secs_f64(),
        requests: RequestSummary::between(&c0, &c1, secs_between(t0, t_conv)),
    };
    tracing::info!(
        answered = conv.answered,
        of = n,
        all_after = ?conv.all_answered_s,
        "convergence"
    );
    result.convergence = Some(conv);

    // 2. Steady state.
    pause(args.settle)?;
    lab.check_agents()?;
    let pids: Vec<(String, bool, Option<u32>)> = lab
        .nodes
        .iter()
        .map(|nd| (nd.name.clone(), nd.eligible, nd.pid()))
        .chain([("apiserver".to_string(), false, lab.apiserver_pid())])
        .collect();
    let sample = |pids: &[(String, bool, Option<u32>)]| {
        pids.iter()
            .map(|(_, _, p)| p.and_then(proc_sample))
            .collect::<Vec<_>>()
    };
    let p0 = sample(&pids);
    let s0 = lab.counters()?;
    let tw0 = monotonic_ns();
    let window_end = tw0 + dur_ns(args.steady);
    wait_for(lab, &mut sweep, window_end, |_| false)?;
    let tw1 = monotonic_ns();
    let s1 = lab.counters()?;
    let p1 = sample(&pids);
    let wall = secs_between(tw0, tw1);
    // "Answered at the end": a reply within the last two sweep rounds.
    let recent = 2 * dur_ns(rates.sweep_period(n)) + 1_000_000_000;
    let (answered_at_end, several, last_macs) = sweep.read(|log| {
        let mut answered = 0;
        let mut several = 0;
        let mut macs = Vec::with_capacity(ids.len());
        for &id in &ids {
            let last = log.last_reply(id).filter(|r| r.at_ns + recent >= tw1);
            if last.is_some() {
                answered += 1;
            }
            if log.macs_between(id, tw0, tw1).len() > 1 {
                several += 1;
            }
            macs.push(last.map(|r| r.mac));
        }
        (answered, several, macs)
    });
    let mut placement = std::collections::BTreeMap::new();
    for nd in lab.nodes.iter().filter(|nd| nd.eligible) {
        placement.insert(nd.name.clone(), 0usize);
    }
    for mac in last_macs.iter().flatten() {
        let name = lab.node_by_mac(*mac).map_or_else(
            || integration::mac::format(*mac),
            |i| lab.nodes[i].name.clone(),
        );
        *placement.entry(name).or_default() += 1;
    }
    let eligible = lab.nodes.iter().filter(|nd| nd.eligible).count();
    let imbalance_pct = (answered_at_end > 0).then(|| {
        let fair = answered_at_end as f64 / eligible.max(1) as f64;
        lab.nodes
            .iter()
            .filter(|nd| nd.eligible)
            .map(|nd| {
                let got = placement.get(&nd.name).copied().unwrap_or(0) as f64;
                (got - fair).abs() / fair * 100.0
            })
            .fold(0.0, f64::max)
    });
    // Who holds what, where the mode keeps it.
    let (lease_holders, leases_expired) =
        lab.block_on(per_service_lease_holders(client.clone()))??;
    let (holder_source, holders, leases_expired) = if result.mode == "node-heartbeat" {
        // The per-Service Leases are a lazy, unrenewed mirror here.
        let holders = lab.block_on(assignment_holders(client.clone()))??;
        ("assignment record", holders, None)
    } else {
        (
            "per-Service Leases",
            lease_holders.clone(),
            Some(leases_expired),
        )
    };
    let processes = pids
        .iter()
        .zip(p0.iter().zip(p1.iter()))
        .filter_map(|((name, eligible, _), (a, b))| {
            let (a, b) = (a.as_ref()?, b.as_ref()?);
            let mut u = ProcUsage::between(name, a, b, wall);
            u.eligible = *eligible;
            u.answering = placement.get(name).copied().unwrap_or(0);
            Some(u)
        })
        .collect();
    let steady = Steady {
        settle_s: args.settle.as_secs_f64(),
        requests: RequestSummary::between(&s0, &s1, wall),
        answered_at_end,
        services: n,
        answered_by_several: several,
        placement,
        imbalance_pct,
        holder_source: holder_source.into(),
        holders,
        lease_holders,
        leases_expired,
        processes,
    };
    tracing::info!(
        requests_per_s = steady.requests.requests_per_s,
        writes_per_s = steady.requests.writes_per_s,
        answered = steady.answered_at_end,
        "steady state"
    );
    result.steady = Some(steady);

    // 3. New Services, one at a time.
    let mut new_ids: Vec<(usize, u64)> = Vec::new();
    for k in 0..args.new_services {
        let (name, vip) = service(args.seed, n + k);
        let id = sweep.add(&[vip])[0];
        let t = monotonic_ns();
        sweep.watch(&[id], t, None);
        lab.block_on(create_services(
            client.clone(),
            vec![(name, vip)],
            args.service_type,
            1,
        ))??;
        new_ids.push((id, t));
        wait_for(lab, &mut sweep, t + dur_ns(args.new_interval), |_| false)?;
    }
    if let Some(&(_, last)) = new_ids.last() {
        wait_for(lab, &mut sweep, last + dur_ns(args.new_timeout), |s| {
            s.watching() == 0
        })?;
    }
    sweep.unwatch_all();
    let samples = sweep.read(|log| measure::first_answers(log, &new_ids));
    let new = NewServices {
        interval_s: args.new_interval.as_secs_f64(),
        timeout_s: args.new_timeout.as_secs_f64(),
        resolution_s: rates.watch_period(1).as_secs_f64(),
        dist: Dist::of(&samples),
        samples,
    };
    tracing::info!(p50 = ?new.dist.p50, p99 = ?new.dist.p99, answered = new.dist.n, "new Services");
    result.new_services = Some(new);

    // 4. Failover.
    if args.no_failover {
        return Ok(());
    }
    let every: Vec<usize> = ids
        .iter()
        .copied()
        .chain(new_ids.iter().map(|x| x.0))
        .collect();
    let now = monotonic_ns();
    let holders: Vec<Option<[u8; 6]>> = sweep.read(|log| {
        every
            .iter()
            .map(|&id| {
                log.last_reply(id)
                    .filter(|r| r.at_ns + recent >= now)
                    .map(|r| r.mac)
            })
            .collect()
    });
    let mut by_mac: std::collections::BTreeMap<[u8; 6], Vec<usize>> = Default::default();
    for (id, mac) in every.iter().zip(&holders) {
        if let Some(mac) = mac {
            by_mac.entry(*mac).or_default().push(*id);
        }
    }
    let Some((victim_mac, victim_ids)) = by_mac
        .into_iter()
        .filter(|(mac, _)| lab.node_by_mac(*mac).is_some())
        .max_by_key(|(_, v)| v.len())
    else {
        tracing::warn!("no VIP answered: no failover");
        result
            .notes
            .push("failover not measured: no VIP was answered to fail over".into());
        return Ok(());
    };
    let victim = lab.node_by_mac(victim_mac).unwrap_or(0);
    let t_watch = monotonic_ns();
    sweep.watch(&victim_ids, t_watch, Some(victim_mac));
    // Fresh answers from the victim for every one of them first, so the
    // last answer before the kill is recent.
    let period = rates.watch_period(victim_ids.len());
    wait_for(
        lab,
        &mut sweep,
        t_watch + 3 * dur_ns(period) + 1_000_000_000,
        |s| {
            s.read(|log| {
                victim_ids
                    .iter()
                    .all(|&id| log.first_reply(id, t_watch, None).is_some())
            })
        },
    )?;
    let f0 = lab.counters()?;
    let t_kill = lab.kill_agent(victim)?;
    tracing::info!(node = %lab.nodes[victim].name, services = victim_ids.len(), "SIGKILL");
    let bound = lease + retry;
    let end = t_kill + dur_ns(bound + args.failover_slack);
    wait_for(lab, &mut sweep, end, |s| s.watching() == 0)?;
    let t_end = monotonic_ns();
    let f1 = lab.counters()?;
    sweep.unwatch_all();
    let times =
        sweep.read(|log| measure::failover_times(log, &victim_ids, victim_mac, t_watch, t_kill));
    let bound_s = bound.as_secs_f64();
    let failover = Failover {
        victim: lab.nodes[victim].name.clone(),
        services: victim_ids.len(),
        bound_s,
        observed_s: secs_between(t_kill, t_end),
        resolution_s: period.as_secs_f64(),
        kill_to_answer_dist: Dist::of(&times.kill_to_answer),
        gap_dist: Dist::of(&times.gaps),
        dead_answered_for: Dist::of(&times.dead_answered_for),
        not_within_bound: times
            .kill_to_answer
            .iter()
            .filter(|t| t.is_none_or(|t| t > bound_s))
            .count(),
        never_answered: times.kill_to_answer.iter().filter(|t| t.is_none()).count(),
        answered_before_kill: times.answered_before_kill,
        overlaps: times.overlaps,
        requests: RequestSummary::between(&f0, &f1, secs_between(t_kill, t_end)),
        kill_to_answer: times.kill_to_answer,
        gaps: times.gaps,
    };
    tracing::info!(
        gap_p50 = ?failover.gap_dist.p50,
        gap_max = ?failover.gap_dist.max,
        not_within_bound = failover.not_within_bound,
        "failover"
    );
    result.failover = Some(failover);
    let counters = sweep.read(|log| log.counters);
    tracing::info!(?counters, "probe counters");
    sweep.stop()?;
    Ok(())
}

fn command_output(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn write_report(args: &Args, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("creating {}: {e}", args.out_dir.display()))?;
    let md = measure::markdown(report);
    println!("\n{md}");
    let write = |name: &str, text: &str| -> Result<(), String> {
        let path = args.out_dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
        Ok(())
    };
    write("control-plane.md", &md)?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    write("control-plane.json", &json)?;
    write("control-plane.svg", &measure::svg(report))
}

fn bin_next_to_me(arg: &Option<PathBuf>, name: &str) -> Result<PathBuf, String> {
    if let Some(p) = arg {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let p = exe
        .parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| Path::new(name).to_path_buf());
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it (`cargo xtask bench control-plane` builds everything)",
            p.display()
        ))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    install_interrupt_handler();
    let stale = bench_lab::remove_stale();
    if !stale.is_empty() {
        tracing::warn!(?stale, "removed what an earlier benchmark left");
    }
    let bins = Bins {
        agent: bin_next_to_me(&args.agent_bin, "l2announcer")?,
        apiserver: bin_next_to_me(&args.apiserver_bin, "test-apiserver")?,
    };
    let (lease, renew, retry) = args.timings;
    let info = RunInfo {
        started: command_output(Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ")),
        commit: command_output(Command::new("git").args(["rev-parse", "--short", "HEAD"])),
        kernel: command_output(Command::new("uname").arg("-r")),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        nodes: args.nodes,
        eligible: args.nodes.saturating_sub(1),
        lease_duration_s: lease.as_secs_f64(),
        renew_deadline_s: renew.as_secs_f64(),
        retry_period_s: retry.as_secs_f64(),
        qps: args.qps,
        burst: args.burst,
        service_type: match args.service_type {
            ServiceType::ExternalIps => "externalIPs".into(),
            ServiceType::LoadBalancer => "LoadBalancer".into(),
        },
        seed: args.seed,
        sweep_pps: args.sweep_rate,
        watch_pps: args.watch_rate,
        watch_min_period_s: args.watch_period.as_secs_f64(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let started = Instant::now();
    let mut report = Report {
        info,
        cases: Vec::new(),
        total_s: 0.0,
    };
    let mut stopped = false;
    'cases: for &n in &args.services {
        for mode in &args.modes {
            if interrupted() {
                stopped = true;
                break 'cases;
            }
            tracing::info!(services = n, mode = %mode, "case");
            match run_case(args, &bins, n, mode) {
                Ok(r) => {
                    if let CaseStatus::Failed(e) = &r.status {
                        tracing::error!(services = n, mode = %mode, error = %e, "case failed");
                    }
                    report.cases.push(r);
                }
                Err(e) if is_interrupted(&e) => {
                    stopped = true;
                    break 'cases;
                }
                Err(e) => report.cases.push(CaseResult::empty(
                    n,
                    mode,
                    CaseStatus::Failed(e.to_string()),
                )),
            }
        }
    }
    report.total_s = started.elapsed().as_secs_f64();
    write_report(args, &report)?;
    if stopped {
        eprintln!("bench-control-plane: interrupted; the report holds the cases that finished");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_timings() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(
            parse_timings("15s/5s/2s"),
            Ok((
                Duration::from_secs(15),
                Duration::from_secs(5),
                Duration::from_secs(2)
            ))
        );
        assert!(parse_timings("15s/5s").is_err());
    }

    #[test]
    fn services_have_distinct_names_and_documentation_vips() {
        let mut names = std::collections::BTreeSet::new();
        for i in 0..6000 {
            let (name, vip) = service(7, i);
            assert!(name.len() <= 63 && names.insert(name));
            let o = vip.octets();
            assert_eq!(o[..8], [0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00, 0, 0]);
        }
        assert_eq!(
            service(7, 0).1,
            "2001:db8:100::1".parse::<Ipv6Addr>().expect("ip")
        );
        assert_eq!(
            service(7, 65535).1,
            "2001:db8:100::1:0".parse::<Ipv6Addr>().expect("ip")
        );
        assert_ne!(
            service(7, 0).0,
            service(8, 0).0,
            "the seed changes the names"
        );
    }

    #[test]
    fn default_arguments_are_the_issue_s() {
        let a = Args::parse_from(["bench-control-plane"]);
        assert_eq!(a.services, vec![1000, 5000]);
        assert_eq!(a.nodes, 3);
        assert_eq!(
            a.modes,
            vec![
                "node-heartbeat",
                "per-service",
                "client-go",
                "client-go-unthrottled"
            ]
        );
        assert_eq!((a.qps, a.burst), (5.0, 10));
        assert_eq!(
            a.timings,
            (
                Duration::from_secs(15),
                Duration::from_secs(5),
                Duration::from_secs(2)
            )
        );
        let a = Args::parse_from([
            "x",
            "--services",
            "20,30",
            "--services",
            "40",
            "--modes",
            "per-service",
        ]);
        assert_eq!(a.services, vec![20, 30, 40]);
        assert_eq!(a.modes, vec!["per-service"]);
    }
}
