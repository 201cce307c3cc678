//! The measures of the control-plane benchmark (`bench-control-plane`,
//! `cargo xtask bench control-plane`) and its report: the result types
//! (serialized as `control-plane.json`), the analysis of what the probes
//! and the API server saw (first answers, failover gaps, placement,
//! request rates by verb and code, process CPU and memory), and the
//! renderings (a Markdown table, an SVG of the distributions).
//!
//! It measures and reports; it asserts nothing (no timing is a test
//! failure) and drives nothing (the binary runs the lab and the phases).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::bench_lab::CounterRow;
use crate::ndp_sweep::SweepLog;

/// Nearest-rank percentile of sorted samples (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A distribution of durations in seconds; samples that never happened
/// (`None`) are counted, not ranked.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dist {
    /// Samples with a value.
    pub n: usize,
    /// Samples without one (never answered).
    pub missing: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Dist {
    pub fn of(samples: &[Option<f64>]) -> Dist {
        let mut v: Vec<f64> = samples.iter().flatten().copied().collect();
        v.sort_by(f64::total_cmp);
        let some = |x: f64| (!v.is_empty()).then_some(x);
        Dist {
            n: v.len(),
            missing: samples.len() - v.len(),
            p50: some(percentile(&v, 0.5)),
            p99: some(percentile(&v, 0.99)),
            max: v.last().copied(),
        }
    }
}

/// Seconds from `from_ns` to `to_ns` (monotonic).
pub fn secs_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as f64 - from_ns as f64) / 1e9
}

/// For each id, seconds from its `t0` to its first reply at or after it
/// (any MAC).
pub fn first_answers(log: &SweepLog, ids: &[(usize, u64)]) -> Vec<Option<f64>> {
    ids.iter()
        .map(|&(id, t0)| {
            log.first_reply(id, t0, None)
                .map(|r| secs_between(t0, r.at_ns))
        })
        .collect()
}

/// Requests per second of one (verb, resource, code).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRate {
    pub verb: String,
    pub resource: String,
    pub code: u16,
    pub count: u64,
    pub per_s: f64,
}

/// Whether a counter row is an agent's (`l2announcer/<version> (<node>)`).
pub fn is_agent(row: &CounterRow) -> bool {
    row.key.user_agent.starts_with("l2announcer/")
}

/// The agents' requests between two counter snapshots, summed over
/// agents, per (verb, resource, code), busiest first.
pub fn request_rates(before: &[CounterRow], after: &[CounterRow], secs: f64) -> Vec<RequestRate> {
    let mut base: BTreeMap<(&str, &str, &str, u16), u64> = BTreeMap::new();
    for r in before.iter().filter(|r| is_agent(r)) {
        base.insert(
            (&r.key.verb, &r.key.resource, &r.key.user_agent, r.key.code),
            r.count,
        );
    }
    let mut sum: BTreeMap<(String, String, u16), u64> = BTreeMap::new();
    for r in after.iter().filter(|r| is_agent(r)) {
        let was = base
            .get(&(
                r.key.verb.as_str(),
                r.key.resource.as_str(),
                r.key.user_agent.as_str(),
                r.key.code,
            ))
            .copied()
            .unwrap_or(0);
        let d = r.count.saturating_sub(was);
        if d > 0 {
            *sum.entry((r.key.verb.clone(), r.key.resource.clone(), r.key.code))
                .or_default() += d;
        }
    }
    let mut out: Vec<RequestRate> = sum
        .into_iter()
        .map(|((verb, resource, code), count)| RequestRate {
            verb,
            resource,
            code,
            count,
            per_s: count as f64 / secs.max(1e-9),
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.verb.cmp(&b.verb)));
    out
}

/// Writes: create, update, patch, delete and deletecollection answered 2xx.
pub fn is_write(r: &RequestRate) -> bool {
    matches!(
        r.verb.as_str(),
        "create" | "update" | "patch" | "delete" | "deletecollection"
    ) && (200..300).contains(&r.code)
}

/// Writes of the election itself: heartbeats and the assignment record in
/// `node-heartbeat` mode, the per-Service Leases otherwise (created and
/// updated). The rest is deferred work of the Services' creation: mirror
/// Leases (patched, deleted), Service conditions, Events.
pub fn is_election_write(r: &RequestRate) -> bool {
    is_write(r)
        && (r.resource.starts_with("configmaps")
            || (r.resource.starts_with("leases") && matches!(r.verb.as_str(), "create" | "update")))
}

/// What the API server saw from the agents over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestSummary {
    pub secs: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub writes: u64,
    pub writes_per_s: f64,
    /// Of the writes, the election's own ([`is_election_write`]).
    pub election_writes_per_s: f64,
    /// Answered 409 Conflict.
    pub conflicts: u64,
    pub by_verb: Vec<RequestRate>,
}

impl RequestSummary {
    pub fn between(before: &[CounterRow], after: &[CounterRow], secs: f64) -> RequestSummary {
        let by_verb = request_rates(before, after, secs);
        let requests: u64 = by_verb.iter().map(|r| r.count).sum();
        let writes: u64 = by_verb
            .iter()
            .filter(|r| is_write(r))
            .map(|r| r.count)
            .sum();
        RequestSummary {
            secs,
            requests,
            requests_per_s: requests as f64 / secs.max(1e-9),
            writes,
            writes_per_s: writes as f64 / secs.max(1e-9),
            election_writes_per_s: by_verb
                .iter()
                .filter(|r| is_election_write(r))
                .map(|r| r.count)
                .sum::<u64>() as f64
                / secs.max(1e-9),
            conflicts: by_verb
                .iter()
                .filter(|r| r.code == 409)
                .map(|r| r.count)
                .sum(),
            by_verb,
        }
    }
}

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmRSS, MiB.
    pub rss_mib: f64,
    /// VmHWM (peak RSS), MiB.
    pub hwm_mib: f64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_proc(&stat, &status, clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn parse_proc(stat: &str, status: &str, ticks: f64) -> Option<ProcSample> {
    // Fields after the command name (which may hold spaces and parens):
    // state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let kib = |key: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(ProcSample {
        cpu_s: (utime + stime) / ticks,
        rss_mib: kib("VmRSS:")? / 1024.0,
        hwm_mib: kib("VmHWM:").unwrap_or(0.0) / 1024.0,
    })
}

/// One process over the steady-state window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcUsage {
    pub name: String,
    /// Selected by the policy (agents only).
    pub eligible: bool,
    /// Services it answered at the end of the window (agents only).
    pub answering: usize,
    pub rss_mib: f64,
    pub hwm_mib: f64,
    /// CPU seconds per minute of wall time.
    pub cpu_s_per_min: f64,
}

impl ProcUsage {
    pub fn between(name: &str, a: &ProcSample, b: &ProcSample, wall_s: f64) -> ProcUsage {
        ProcUsage {
            name: name.into(),
            eligible: false,
            answering: 0,
            rss_mib: b.rss_mib,
            hwm_mib: b.hwm_mib,
            cpu_s_per_min: (b.cpu_s - a.cpu_s) / wall_s.max(1e-9) * 60.0,
        }
    }
}

/// Phase 1: N Services created at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Convergence {
    pub services: usize,
    /// From the first create request to the last acknowledged.
    pub create_s: f64,
    pub answered: usize,
    /// Every VIP answered after (seconds from the first create), if all were.
    pub all_answered_s: Option<f64>,
    pub first_answer: Dist,
    pub timeout_s: f64,
    /// Solicitation period of each VIP while none was answered.
    pub resolution_s: f64,
    pub requests: RequestSummary,
}

/// Phase 2: steady state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Steady {
    pub settle_s: f64,
    pub requests: RequestSummary,
    /// VIPs answered in the last sweep rounds of the window.
    pub answered_at_end: usize,
    pub services: usize,
    /// VIPs answered by more than one MAC during the window.
    pub answered_by_several: usize,
    /// Node name -> VIPs it answered last (eligible nodes listed even at 0).
    pub placement: BTreeMap<String, usize>,
    /// Largest deviation of an eligible node from its fair share, percent.
    pub imbalance_pct: Option<f64>,
    /// Where the mode keeps who holds what: "assignment record"
    /// (node-heartbeat) or "per-Service Leases".
    pub holder_source: String,
    /// Node name -> Services it holds according to `holder_source`.
    pub holders: BTreeMap<String, usize>,
    /// Node name -> per-Service Leases naming it holder (in node-heartbeat
    /// mode the lazy mirror of the record).
    pub lease_holders: BTreeMap<String, usize>,
    /// Per-Service Leases naming a holder whose renewTime is older than
    /// their duration (modes that renew them; the mirror is not renewed).
    pub leases_expired: Option<usize>,
    pub processes: Vec<ProcUsage>,
}

/// Phase 3: new Services among the N.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewServices {
    pub interval_s: f64,
    pub timeout_s: f64,
    pub resolution_s: f64,
    /// Seconds from the create request to the first answer (None: never).
    pub samples: Vec<Option<f64>>,
    pub dist: Dist,
}

/// Phase 4: SIGKILL of the node answering the most Services.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Failover {
    pub victim: String,
    pub services: usize,
    /// Lease duration + retry period.
    pub bound_s: f64,
    pub observed_s: f64,
    pub resolution_s: f64,
    /// Seconds from the SIGKILL to the first answer of a survivor.
    pub kill_to_answer: Vec<Option<f64>>,
    /// Seconds from the dead node's last answer to a survivor's first.
    pub gaps: Vec<Option<f64>>,
    pub kill_to_answer_dist: Dist,
    pub gap_dist: Dist,
    /// Seconds the dead node's datapath kept answering after the kill.
    pub dead_answered_for: Dist,
    pub not_within_bound: usize,
    pub never_answered: usize,
    /// Answered by a survivor before the kill (two nodes at once).
    pub answered_before_kill: usize,
    /// The dead node answered again after a survivor had.
    pub overlaps: usize,
    pub requests: RequestSummary,
}

/// The analysis of a failover from the sweep log.
pub struct FailoverTimes {
    pub kill_to_answer: Vec<Option<f64>>,
    pub gaps: Vec<Option<f64>>,
    pub dead_answered_for: Vec<Option<f64>>,
    pub answered_before_kill: usize,
    pub overlaps: usize,
}

/// For each of `ids` (answered by `victim` until the kill at `t_kill`,
/// watched from `t_watch`): kill → first answer from another MAC, the gap
/// from the victim's last answer before that to it, how long the victim
/// kept answering after the kill, double answers.
pub fn failover_times(
    log: &SweepLog,
    ids: &[usize],
    victim: [u8; 6],
    t_watch: u64,
    t_kill: u64,
) -> FailoverTimes {
    let mut out = FailoverTimes {
        kill_to_answer: Vec::with_capacity(ids.len()),
        gaps: Vec::with_capacity(ids.len()),
        dead_answered_for: Vec::with_capacity(ids.len()),
        answered_before_kill: 0,
        overlaps: 0,
    };
    for &id in ids {
        let first_new = log.first_reply(id, t_watch, Some(victim));
        let until = first_new.map_or(u64::MAX, |r| r.at_ns);
        let last_old = log.last_reply_from(id, victim, until);
        if first_new.is_some_and(|r| r.at_ns < t_kill) {
            out.answered_before_kill += 1;
        }
        if first_new.is_some()
            && log.last_reply_from(id, victim, u64::MAX).map(|r| r.at_ns) > Some(until)
        {
            out.overlaps += 1;
        }
        out.kill_to_answer
            .push(first_new.map(|r| secs_between(t_kill, r.at_ns)));
        out.gaps.push(match (first_new, last_old) {
            (Some(n), Some(o)) => Some(secs_between(o.at_ns, n.at_ns)),
            (Some(n), None) => Some(secs_between(t_watch, n.at_ns)),
            _ => None,
        });
        out.dead_answered_for.push(
            log.last_reply_from(id, victim, u64::MAX)
                .map(|r| secs_between(t_kill, r.at_ns).max(0.0)),
        );
    }
    out
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Ran,
    Failed(String),
}

/// One (N, mode) run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    pub services: usize,
    pub mode: String,
    /// The agents' client rate in this case.
    pub qps: f64,
    pub burst: u32,
    pub status: CaseStatus,
    pub duration_s: f64,
    pub convergence: Option<Convergence>,
    pub steady: Option<Steady>,
    pub new_services: Option<NewServices>,
    pub failover: Option<Failover>,
    /// What the harness could not measure, and why.
    pub notes: Vec<String>,
}

impl CaseResult {
    pub fn empty(services: usize, mode: &str, status: CaseStatus) -> Self {
        CaseResult {
            services,
            mode: mode.into(),
            qps: 0.0,
            burst: 0,
            status,
            duration_s: 0.0,
            convergence: None,
            steady: None,
            new_services: None,
            failover: None,
            notes: Vec::new(),
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub started: String,
    pub commit: String,
    pub kernel: String,
    pub cpus: usize,
    pub nodes: usize,
    pub eligible: usize,
    pub lease_duration_s: f64,
    pub renew_deadline_s: f64,
    pub retry_period_s: f64,
    pub qps: f64,
    pub burst: u32,
    pub service_type: String,
    pub seed: u64,
    pub sweep_pps: f64,
    pub watch_pps: f64,
    pub watch_min_period_s: f64,
    pub command: String,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub info: RunInfo,
    pub cases: Vec<CaseResult>,
    pub total_s: f64,
}

fn dur(s: Option<f64>) -> String {
    match s {
        None => "—".into(),
        Some(s) if s.abs() < 1.0 => format!("{:.0} ms", s * 1e3),
        Some(s) if s < 100.0 => format!("{s:.1} s"),
        Some(s) => format!("{s:.0} s"),
    }
}

fn dist3(d: &Dist) -> String {
    format!("{} / {} / {}", dur(d.p50), dur(d.p99), dur(d.max))
}

fn counts(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "—".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn conv(c: &CaseResult, f: impl Fn(&Convergence) -> String) -> String {
    c.convergence.as_ref().map_or_else(|| "—".into(), f)
}

fn st(c: &CaseResult, f: impl Fn(&Steady) -> String) -> String {
    c.steady.as_ref().map_or_else(|| "—".into(), f)
}

fn nw(c: &CaseResult, f: impl Fn(&NewServices) -> String) -> String {
    c.new_services.as_ref().map_or_else(|| "—".into(), f)
}

fn fo(c: &CaseResult, f: impl Fn(&Failover) -> String) -> String {
    c.failover.as_ref().map_or_else(|| "—".into(), f)
}

/// The Markdown report: how the run was set up, then one column per case.
pub fn markdown(r: &Report) -> String {
    let i = &r.info;
    let mut s = String::new();
    let _ = writeln!(s, "# Control-plane benchmark\n");
    let _ = writeln!(
        s,
        "{} · commit {} · kernel {} · {} CPUs · total {}\n",
        i.started,
        i.commit,
        i.kernel,
        i.cpus,
        dur(Some(r.total_s))
    );
    let _ = writeln!(
        s,
        "{} nodes ({} eligible through the reference policy), agents with lease {} / renew {} / retry {}, \
         `--k8s-client-qps {} --k8s-client-burst {}`, {} Services with IPv6 VIPs in 2001:db8:100::/64, \
         seed {}, `--l2-announcements-election=<mode>`. Probes: Neighbor Solicitations from the client, \
         sweep {:.0}/s over all VIPs, watched VIPs at up to {:.0}/s and each at most every {}; \
         \"answered\" = first solicited NA at the client.\n",
        i.nodes,
        i.eligible,
        dur(Some(i.lease_duration_s)),
        dur(Some(i.renew_deadline_s)),
        dur(Some(i.retry_period_s)),
        i.qps,
        i.burst,
        i.service_type,
        i.seed,
        i.sweep_pps,
        i.watch_pps,
        dur(Some(i.watch_min_period_s)),
    );
    let _ = writeln!(s, "`{}`\n", i.command);
    let cols: Vec<&CaseResult> = r.cases.iter().collect();
    let _ = write!(s, "| measure |");
    for c in &cols {
        let _ = write!(s, " {} × {}", c.services, c.mode);
        if (c.qps, c.burst) != (i.qps, i.burst) && c.qps > 0.0 {
            let _ = write!(s, " (qps {} / burst {})", c.qps, c.burst);
        }
        s.push_str(" |");
    }
    let _ = write!(s, "\n|---|");
    for _ in &cols {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    let row = |s: &mut String, name: &str, f: &dyn Fn(&CaseResult) -> String| {
        let _ = write!(s, "| {name} |");
        for c in &cols {
            let _ = write!(s, " {} |", f(c));
        }
        s.push('\n');
    };
    row(&mut s, "status", &|c| match &c.status {
        CaseStatus::Ran => "ran".into(),
        CaseStatus::Failed(w) => format!("failed: {}", w.lines().next().unwrap_or("")),
    });
    row(&mut s, "N Services created through the API in", &|c| {
        conv(c, |v| dur(Some(v.create_s)))
    });
    row(
        &mut s,
        "**all N answered after** (from the first create)",
        &|c| {
            conv(c, |v| match v.all_answered_s {
                Some(t) => format!("**{}**", dur(Some(t))),
                None => format!(
                    "**{} of {} after {}**",
                    v.answered,
                    v.services,
                    dur(Some(v.timeout_s))
                ),
            })
        },
    );
    row(&mut s, "VIPs answered after p50 / p99 / max", &|c| {
        conv(c, |v| dist3(&v.first_answer))
    });
    row(&mut s, "(probe period per VIP at start)", &|c| {
        conv(c, |v| dur(Some(v.resolution_s)))
    });
    row(
        &mut s,
        "API requests/s while converging (of which 409)",
        &|c| {
            conv(c, |v| {
                format!(
                    "{:.1} ({:.1})",
                    v.requests.requests_per_s,
                    v.requests.conflicts as f64 / v.requests.secs.max(1e-9)
                )
            })
        },
    );
    row(&mut s, "steady: window (after settling)", &|c| {
        st(c, |v| {
            format!("{} ({})", dur(Some(v.requests.secs)), dur(Some(v.settle_s)))
        })
    });
    row(&mut s, "**steady: API requests/s** (agents)", &|c| {
        st(c, |v| format!("**{:.2}**", v.requests.requests_per_s))
    });
    row(&mut s, "**steady: writes/s**", &|c| {
        st(c, |v| format!("**{:.2}**", v.requests.writes_per_s))
    });
    row(
        &mut s,
        "**steady: election writes/s** (heartbeats, record; per-Service Leases)",
        &|c| {
            st(c, |v| {
                format!("**{:.2}**", v.requests.election_writes_per_s)
            })
        },
    );
    row(
        &mut s,
        "steady: deferred writes/s (mirror Leases, Service conditions, Events)",
        &|c| {
            st(c, |v| {
                format!(
                    "{:.2}",
                    v.requests.writes_per_s - v.requests.election_writes_per_s
                )
            })
        },
    );
    row(&mut s, "steady: by verb resource code, /s", &|c| {
        st(c, |v| {
            v.requests
                .by_verb
                .iter()
                .take(6)
                .map(|r| format!("{} {} {} {:.2}", r.verb, r.resource, r.code, r.per_s))
                .collect::<Vec<_>>()
                .join("<br>")
        })
    });
    row(&mut s, "steady: 409 answers", &|c| {
        st(c, |v| v.requests.conflicts.to_string())
    });
    row(&mut s, "steady: VIPs answered at the end", &|c| {
        st(c, |v| format!("{} / {}", v.answered_at_end, v.services))
    });
    row(&mut s, "steady: VIPs answered by two MACs", &|c| {
        st(c, |v| v.answered_by_several.to_string())
    });
    row(&mut s, "placement by answering MAC (imbalance)", &|c| {
        st(c, |v| {
            format!(
                "{} ({})",
                counts(&v.placement),
                v.imbalance_pct.map_or("—".into(), |p| format!("±{p:.1} %"))
            )
        })
    });
    row(
        &mut s,
        "placement by holder (where the mode records it)",
        &|c| {
            st(c, |v| {
                format!("{} ({})", counts(&v.holders), v.holder_source)
            })
        },
    );
    row(&mut s, "per-Service Leases naming a holder", &|c| {
        st(c, |v| counts(&v.lease_holders))
    });
    row(
        &mut s,
        "per-Service Leases naming a holder but expired",
        &|c| {
            st(c, |v| {
                v.leases_expired
                    .map_or("— (a mirror, not renewed)".into(), |n| n.to_string())
            })
        },
    );
    row(&mut s, "agent RSS MiB (peak)", &|c| {
        st(c, |v| {
            v.processes
                .iter()
                .filter(|p| p.name.starts_with("node-"))
                .map(|p| format!("{} {:.0} ({:.0})", p.name, p.rss_mib, p.hwm_mib))
                .collect::<Vec<_>>()
                .join("<br>")
        })
    });
    row(&mut s, "agent CPU s/min", &|c| {
        st(c, |v| {
            v.processes
                .iter()
                .filter(|p| p.name.starts_with("node-"))
                .map(|p| format!("{} {:.2}", p.name, p.cpu_s_per_min))
                .collect::<Vec<_>>()
                .join("<br>")
        })
    });
    row(&mut s, "API server CPU s/min, RSS MiB", &|c| {
        st(c, |v| {
            v.processes
                .iter()
                .filter(|p| p.name == "apiserver")
                .map(|p| format!("{:.2}, {:.0}", p.cpu_s_per_min, p.rss_mib))
                .collect::<Vec<_>>()
                .join("")
        })
    });
    row(
        &mut s,
        "**new Service: create → answered** p50 / p99 / max",
        &|c| nw(c, |v| format!("**{}**", dist3(&v.dist))),
    );
    row(&mut s, "new Services answered (within)", &|c| {
        nw(c, |v| {
            format!(
                "{} / {} ({} after the last)",
                v.dist.n,
                v.samples.len(),
                dur(Some(v.timeout_s))
            )
        })
    });
    row(&mut s, "(probe period per new VIP)", &|c| {
        nw(c, |v| dur(Some(v.resolution_s)))
    });
    row(&mut s, "failover: SIGKILL of", &|c| {
        fo(c, |v| format!("{} ({} Services)", v.victim, v.services))
    });
    row(
        &mut s,
        "failover: kill → survivor answers p50 / p99 / max",
        &|c| fo(c, |v| dist3(&v.kill_to_answer_dist)),
    );
    row(
        &mut s,
        "**failover: gap per Service** p50 / p99 / max",
        &|c| fo(c, |v| format!("**{}**", dist3(&v.gap_dist))),
    );
    row(
        &mut s,
        "failover: dead node's datapath answered for (p50)",
        &|c| fo(c, |v| dur(v.dead_answered_for.p50)),
    );
    row(
        &mut s,
        "**failover: not answered within lease + retry** / never",
        &|c| {
            fo(c, |v| {
                format!(
                    "**{}** / {} (bound {}, watched {})",
                    v.not_within_bound,
                    v.never_answered,
                    dur(Some(v.bound_s)),
                    dur(Some(v.observed_s))
                )
            })
        },
    );
    row(
        &mut s,
        "failover: double answers (before kill / overlap)",
        &|c| {
            fo(c, |v| {
                format!("{} / {}", v.answered_before_kill, v.overlaps)
            })
        },
    );
    row(&mut s, "failover: 409 answers", &|c| {
        fo(c, |v| v.requests.conflicts.to_string())
    });
    row(&mut s, "(probe period per failing-over VIP)", &|c| {
        fo(c, |v| dur(Some(v.resolution_s)))
    });
    row(&mut s, "notes", &|c| c.notes.join("<br>"));
    row(&mut s, "case duration", &|c| dur(Some(c.duration_s)));
    ratios(r, &mut s);
    s
}

/// Steady writes of each mode against the baselines of the same N.
fn ratios(r: &Report, s: &mut String) {
    let steady = |n: usize, mode: &str| {
        r.cases
            .iter()
            .find(|c| c.services == n && c.mode == mode)
            .and_then(|c| c.steady.as_ref())
            .map(|v| v.requests.clone())
    };
    let mut ns: Vec<usize> = r.cases.iter().map(|c| c.services).collect();
    ns.dedup();
    let mut lines = Vec::new();
    for n in ns {
        for base in ["client-go-unthrottled", "client-go", "per-service"] {
            let (Some(b), Some(h)) = (steady(n, base), steady(n, "node-heartbeat")) else {
                continue;
            };
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.4} (1/{:.0})", a / b, b / a.max(1e-9))
                } else {
                    "— (the baseline wrote nothing)".to_string()
                }
            };
            lines.push(format!(
                "| {n} | {base} | {} | {} | {} |",
                ratio(h.election_writes_per_s, b.election_writes_per_s),
                ratio(h.writes_per_s, b.writes_per_s),
                ratio(h.requests_per_s, b.requests_per_s),
            ));
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## node-heartbeat against the baselines (steady state, same run)\n\n\
         | N | baseline | election writes/s | all writes/s | all requests/s |\n|---|---|---|---|---|"
    );
    for l in lines {
        let _ = writeln!(s, "{l}");
    }
}

const COLORS: [&str; 6] = [
    "#1b6ac9", "#d2461b", "#2a9d3a", "#8e44ad", "#b8860b", "#555555",
];

/// Empirical CDFs (log time axis, 1 ms to 100 s) of the new-Service
/// time-to-answer and the failover gap, one line per mode, one row of two
/// panels per number of Services. Samples that never came keep a curve
/// below 100 %.
pub fn svg(r: &Report) -> String {
    let mut ns: Vec<usize> = r.cases.iter().map(|c| c.services).collect();
    ns.dedup();
    let modes: Vec<&str> = {
        let mut m: Vec<&str> = Vec::new();
        for c in r.cases.iter().filter(|c| c.status == CaseStatus::Ran) {
            if !m.contains(&c.mode.as_str()) {
                m.push(&c.mode);
            }
        }
        m
    };
    let (pw, ph, left, top) = (420.0, 220.0, 60.0, 50.0);
    let width = left + 2.0 * (pw + 60.0);
    let height = top + ns.len().max(1) as f64 * (ph + 80.0) + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Control-plane benchmark: cumulative share of Services answered</text>"
    );
    for (k, m) in modes.iter().enumerate() {
        let x = left + k as f64 * 150.0;
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"34\" x2=\"{:.0}\" y2=\"34\" stroke=\"{}\" stroke-width=\"3\"/><text x=\"{:.0}\" y=\"38\">{m}</text>",
            x + 20.0,
            COLORS[k % COLORS.len()],
            x + 25.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{:.0}\" fill=\"#555\">Gap: the dead node's last answer to a survivor's first, at the client. A curve below 100 % at the right: Services never answered.</text>",
        height - 8.0
    );
    let (lo, hi) = (-3.0f64, 2.0f64);
    for (row, n) in ns.iter().enumerate() {
        let y0 = top + row as f64 * (ph + 80.0) + 20.0;
        for (col, title) in [
            "new Service: create → first answer",
            "failover: gap per Service",
        ]
        .iter()
        .enumerate()
        {
            let x0 = left + col as f64 * (pw + 60.0);
            let _ = writeln!(
                s,
                "<text x=\"{x0}\" y=\"{:.0}\" font-weight=\"bold\">{n} Services — {title}</text>",
                y0 - 6.0
            );
            let _ = writeln!(
                s,
                "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
            );
            for d in lo as i32..=hi as i32 {
                let x = x0 + (f64::from(d) - lo) / (hi - lo) * pw;
                let label = match d {
                    -3 => "1 ms",
                    -2 => "10 ms",
                    -1 => "100 ms",
                    0 => "1 s",
                    1 => "10 s",
                    _ => "100 s",
                };
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{:.0}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{label}</text>",
                    y0 + ph,
                    y0 + ph + 14.0
                );
            }
            for q in [0.0, 0.5, 1.0] {
                let y = y0 + ph - q * ph;
                let _ = writeln!(
                    s,
                    "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{:.0} %</text>",
                    x0 - 4.0,
                    y + 4.0,
                    q * 100.0
                );
            }
            for (k, m) in modes.iter().enumerate() {
                let Some(c) = r.cases.iter().find(|c| c.services == *n && c.mode == *m) else {
                    continue;
                };
                let samples: Option<&Vec<Option<f64>>> = if col == 0 {
                    c.new_services.as_ref().map(|v| &v.samples)
                } else {
                    c.failover.as_ref().map(|v| &v.gaps)
                };
                let Some(samples) = samples.filter(|v| !v.is_empty()) else {
                    continue;
                };
                let mut v: Vec<f64> = samples.iter().flatten().copied().collect();
                v.sort_by(f64::total_cmp);
                let total = samples.len() as f64;
                let px = |t: f64| {
                    let l = t.max(1e-3).log10().clamp(lo, hi);
                    x0 + (l - lo) / (hi - lo) * pw
                };
                let py = |share: f64| y0 + ph - share * ph;
                let mut pts = format!("{:.1},{:.1}", x0, py(0.0));
                for (j, t) in v.iter().enumerate() {
                    let x = px(*t);
                    let _ = write!(
                        pts,
                        " {x:.1},{:.1} {x:.1},{:.1}",
                        py(j as f64 / total),
                        py((j + 1) as f64 / total)
                    );
                }
                let _ = write!(pts, " {:.1},{:.1}", x0 + pw, py(v.len() as f64 / total));
                let _ = writeln!(
                    s,
                    "<polyline points=\"{pts}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                    COLORS[k % COLORS.len()]
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ndp_sweep::{Reply, TargetLog};
    use kube_test_apiserver::CounterKey;

    #[test]
    fn percentiles_and_distributions() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert_eq!(percentile(&v, 0.99), 4.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let d = Dist::of(&[Some(3.0), None, Some(1.0), Some(2.0)]);
        assert_eq!(d.n, 3);
        assert_eq!(d.missing, 1);
        assert_eq!(d.p50, Some(2.0));
        assert_eq!(d.max, Some(3.0));
        assert_eq!(Dist::of(&[None]).p50, None);
    }

    fn row(verb: &str, ua: &str, code: u16, count: u64) -> CounterRow {
        CounterRow {
            key: CounterKey {
                verb: verb.into(),
                resource: "leases.coordination.k8s.io".into(),
                user_agent: ua.into(),
                code,
            },
            count,
        }
    }

    #[test]
    fn request_rates_sum_agents_over_the_window_only() {
        let a = "l2announcer/0.1.0 (node-1)";
        let b = "l2announcer/0.1.0 (node-2)";
        let before = vec![
            row("update", a, 200, 10),
            row("update", b, 200, 5),
            row("create", "l2bench", 201, 1000),
        ];
        let after = vec![
            row("update", a, 200, 30),
            row("update", b, 200, 15),
            row("update", b, 409, 4),
            row("create", "l2bench", 201, 2000),
            row("get", a, 200, 10),
        ];
        let s = RequestSummary::between(&before, &after, 10.0);
        assert_eq!(s.requests, 20 + 10 + 4 + 10);
        assert_eq!(
            s.writes, 30,
            "the 409 is not a write; the bench's creates are not the agents'"
        );
        assert_eq!(s.conflicts, 4);
        assert_eq!(s.by_verb[0].verb, "update");
        assert_eq!(s.by_verb[0].count, 30);
        assert!((s.by_verb[0].per_s - 3.0).abs() < 1e-9);
    }

    #[test]
    fn reads_cpu_and_memory_from_proc_text() {
        let stat = "1234 (l2announcer (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 500";
        let status = "Name:\tl2announcer\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\n";
        let p = parse_proc(stat, status, 100.0).expect("parsed");
        assert!((p.cpu_s - 3.0).abs() < 1e-9);
        assert!((p.rss_mib - 20.0).abs() < 1e-9);
        assert!((p.hwm_mib - 40.0).abs() < 1e-9);
        // Our own process reads too.
        assert!(proc_sample(std::process::id()).is_some_and(|p| p.rss_mib > 0.0));
    }

    #[test]
    fn failover_times_per_service() {
        let (old, new) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let r = |at_ns: u64, mac| Reply { at_ns, mac };
        let s = 1_000_000_000u64;
        let log = SweepLog {
            targets: vec![
                // Clean takeover: old until 2 s, new at 5 s.
                TargetLog {
                    ip: "2001:db8:100::1".parse().expect("ip"),
                    replies: vec![r(s, old), r(2 * s, old), r(5 * s, new)],
                    sent: 0,
                },
                // Never taken over.
                TargetLog {
                    ip: "2001:db8:100::2".parse().expect("ip"),
                    replies: vec![r(s, old)],
                    sent: 0,
                },
                // Overlap: old answers again after new.
                TargetLog {
                    ip: "2001:db8:100::3".parse().expect("ip"),
                    replies: vec![r(s, old), r(4 * s, new), r(6 * s, old)],
                    sent: 0,
                },
            ],
            counters: Default::default(),
        };
        let t = failover_times(&log, &[0, 1, 2], old, s / 2, s + s / 2);
        assert_eq!(t.kill_to_answer, vec![Some(3.5), None, Some(2.5)]);
        assert_eq!(t.gaps, vec![Some(3.0), None, Some(3.0)]);
        assert_eq!(t.overlaps, 1);
        assert_eq!(t.answered_before_kill, 0);
        assert_eq!(t.dead_answered_for[0], Some(0.5));
        assert_eq!(t.dead_answered_for[1], Some(0.0));
    }

    #[test]
    fn report_renders_every_case() {
        let mut ran = CaseResult::empty(1000, "per-service", CaseStatus::Ran);
        ran.new_services = Some(NewServices {
            samples: vec![Some(0.02), Some(1.5), None],
            dist: Dist::of(&[Some(0.02), Some(1.5), None]),
            ..Default::default()
        });
        ran.failover = Some(Failover {
            gaps: vec![Some(12.0), Some(14.0)],
            ..Default::default()
        });
        let report = Report {
            info: RunInfo {
                started: "t".into(),
                commit: "c".into(),
                kernel: "k".into(),
                cpus: 2,
                nodes: 3,
                eligible: 2,
                lease_duration_s: 15.0,
                renew_deadline_s: 5.0,
                retry_period_s: 2.0,
                qps: 5.0,
                burst: 10,
                service_type: "externalIPs".into(),
                seed: 1,
                sweep_pps: 1000.0,
                watch_pps: 4000.0,
                watch_min_period_s: 0.005,
                command: "bench".into(),
            },
            cases: vec![
                ran,
                CaseResult::empty(
                    1000,
                    "node-heartbeat",
                    CaseStatus::Failed("the agent of node-1 exited".into()),
                ),
            ],
            total_s: 1.0,
        };
        let md = markdown(&report);
        assert!(
            md.contains("| measure | 1000 × per-service | 1000 × node-heartbeat |\n"),
            "{md}"
        );
        assert!(
            md.contains("| status | ran | failed: the agent of node-1 exited |"),
            "{md}"
        );
        assert!(md.contains("20 ms / 1.5 s / 1.5 s"));
        let svg = svg(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "one curve per panel with samples"
        );
    }
}
