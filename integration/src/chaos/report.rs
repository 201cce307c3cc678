//! The chaos suite's verdict: per fault kind, how many runs, split-brain
//! probes (goal 0), foreign announcements (goal 0) and the worst gap
//! against the fault's bound; the findings behind them; printed as a table
//! and written as Markdown and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use super::churn::ChurnAction;
use super::detector::{Foreign, Gap, SplitBrain};
use super::faults::{FaultKind, Target};
use super::timeline::Tenure;

/// One fault injected, and the span of time whose findings are its own.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRun {
    pub kind: FaultKind,
    pub target: Target,
    /// Monotonic ns: the first action.
    pub from_ns: u64,
    /// Monotonic ns: the lab settled again (one holder per Service,
    /// answering) after the fault's aftermath.
    pub to_ns: u64,
    /// What went wrong injecting or undoing it, or settling after it.
    pub errors: Vec<String>,
}

/// Where a finding belongs: a fault kind; the stable VIPs between faults;
/// or the churn Services' IPs, for what the fault did not touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Window {
    Fault(FaultKind),
    Between,
    Churn,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Fault(k) => k.name(),
            Window::Between => "between faults (stable VIPs)",
            Window::Churn => "Service churn, policy edits",
        }
    }

    /// The longest gap it may cost, ns.
    pub fn bound_ns(self) -> u64 {
        match self {
            Window::Fault(k) => u64::try_from(k.gap_bound().as_nanos()).unwrap_or(u64::MAX),
            Window::Between | Window::Churn => 0,
        }
    }

    fn bound_reason(self) -> &'static str {
        match self {
            Window::Fault(k) => k.bound_reason(),
            Window::Between => "steady state: churn and policy edits must not silence a stable VIP",
            Window::Churn => {
                "the churn Services come and go and move: their gaps are expected and not judged"
            }
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub window: Window,
    pub name: &'static str,
    pub runs: usize,
    pub split_brain: usize,
    pub foreign: usize,
    /// Longest run of unanswered probes of a stable VIP, ms.
    pub worst_gap_ms: f64,
    pub bound_ms: f64,
    pub bound_reason: &'static str,
    pub errors: usize,
    pub ok: bool,
}

/// Everything a chaos run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub profile: String,
    pub seconds: f64,
    /// Requests sent, all IPs and both families.
    pub probes: usize,
    pub rows: Vec<Row>,
    pub runs: Vec<FaultRun>,
    pub split_brain: Vec<(Window, SplitBrain)>,
    pub foreign: Vec<(Window, Foreign)>,
    /// Gaps of stable VIPs longer than their window's bound.
    pub gaps_over_bound: Vec<(Window, Gap)>,
    pub churn: Vec<ChurnAction>,
    /// The ground truth: each claim's Lease, who held it when.
    pub tenures: BTreeMap<String, Vec<Tenure>>,
    /// Monotonic ns the run started at (times in the findings are
    /// monotonic; subtract this for seconds into the run).
    pub start_ns: u64,
}

/// The window of a finding at `at_ns` about `ip`, involving `nodes`: the
/// fault running then, for a stable VIP; for a churn IP, the fault only
/// when it hit everyone or one of `nodes`, else churn.
pub fn window_of(
    runs: &[FaultRun],
    stable: &[IpAddr],
    at_ns: u64,
    ip: IpAddr,
    nodes: &[String],
) -> Window {
    let run = runs.iter().find(|r| r.from_ns <= at_ns && at_ns <= r.to_ns);
    if stable.contains(&ip) {
        return run.map_or(Window::Between, |r| Window::Fault(r.kind));
    }
    match run {
        Some(r) if r.kind.hits_everyone() || nodes.contains(&r.target.node) => {
            Window::Fault(r.kind)
        }
        _ => Window::Churn,
    }
}

/// What the detector found, in the order of the table.
pub struct Findings {
    pub split_brain: Vec<SplitBrain>,
    pub foreign: Vec<Foreign>,
    /// Gaps of the stable VIPs only.
    pub gaps: Vec<Gap>,
}

impl Report {
    /// Sorts `findings` into windows (`stable`: the VIPs whose gaps are
    /// judged) and builds the rows.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        seed: u64,
        profile: String,
        start_ns: u64,
        end_ns: u64,
        probes: usize,
        runs: Vec<FaultRun>,
        stable: &[IpAddr],
        findings: Findings,
        churn: Vec<ChurnAction>,
        tenures: BTreeMap<String, Vec<Tenure>>,
    ) -> Report {
        let split_brain: Vec<(Window, SplitBrain)> = findings
            .split_brain
            .into_iter()
            .map(|s| (window_of(&runs, stable, s.sent_ns, s.ip, &s.answered_by), s))
            .collect();
        let foreign: Vec<(Window, Foreign)> = findings
            .foreign
            .into_iter()
            .map(|f| {
                let w = window_of(
                    &runs,
                    stable,
                    f.announcement.at_ns,
                    f.announcement.ip,
                    std::slice::from_ref(&f.node),
                );
                (w, f)
            })
            .collect();
        let gaps: Vec<(Window, Gap)> = findings
            .gaps
            .into_iter()
            .map(|g| (window_of(&runs, stable, g.from_ns, g.ip, &[]), g))
            .collect();
        let mut windows: BTreeMap<Window, Row> = BTreeMap::new();
        let row = |w: Window| Row {
            window: w,
            name: w.name(),
            runs: 0,
            split_brain: 0,
            foreign: 0,
            worst_gap_ms: 0.0,
            bound_ms: w.bound_ns() as f64 / 1e6,
            bound_reason: w.bound_reason(),
            errors: 0,
            ok: true,
        };
        for k in FaultKind::ALL {
            windows.insert(Window::Fault(k), row(Window::Fault(k)));
        }
        windows.insert(Window::Between, row(Window::Between));
        windows.insert(Window::Churn, row(Window::Churn));
        for r in &runs {
            let w = windows
                .entry(Window::Fault(r.kind))
                .or_insert_with(|| row(Window::Fault(r.kind)));
            w.runs += 1;
            w.errors += r.errors.len();
        }
        for (w, _) in &split_brain {
            windows.entry(*w).or_insert_with(|| row(*w)).split_brain += 1;
        }
        for (w, _) in &foreign {
            windows.entry(*w).or_insert_with(|| row(*w)).foreign += 1;
        }
        for (w, g) in &gaps {
            let r = windows.entry(*w).or_insert_with(|| row(*w));
            r.worst_gap_ms = r.worst_gap_ms.max(g.duration_ns() as f64 / 1e6);
        }
        let gaps_over_bound: Vec<(Window, Gap)> = gaps
            .into_iter()
            .filter(|(w, g)| g.duration_ns() > w.bound_ns())
            .collect();
        let mut rows: Vec<Row> = windows.into_values().collect();
        for r in &mut rows {
            r.ok = r.split_brain == 0
                && r.foreign == 0
                && r.errors == 0
                && r.worst_gap_ms <= r.bound_ms;
        }
        Report {
            seed,
            profile,
            seconds: end_ns.saturating_sub(start_ns) as f64 / 1e9,
            probes,
            rows,
            runs,
            split_brain,
            foreign,
            gaps_over_bound,
            churn,
            tenures,
            start_ns,
        }
    }

    /// No split brain, no foreign announcement, no gap over its bound, no
    /// fault that could not be injected or recovered from.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.ok)
    }

    fn secs(&self, ns: u64) -> String {
        format!("{:.3} s", ns.saturating_sub(self.start_ns) as f64 / 1e9)
    }

    /// The table, as printed and as the top of the Markdown.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| fault | runs | split-brain probes | foreign announcements | worst gap (ms) | bound (ms) | errors | ok |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|");
        for r in &self.rows {
            let (gap, bound) = if r.window == Window::Churn {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    format!("{:.0}", r.worst_gap_ms),
                    format!("{:.0}", r.bound_ms),
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {gap} | {bound} | {} | {} |",
                r.name,
                r.runs,
                r.split_brain,
                r.foreign,
                r.errors,
                if r.ok { "yes" } else { "NO" }
            );
        }
        s
    }

    /// The whole report in Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Chaos report\n\nseed {} ({} profile), {:.0} s, {} probes: {}\n",
            self.seed,
            self.profile,
            self.seconds,
            self.probes,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        s.push_str(&self.table());
        let _ = writeln!(s, "\n## Bounds\n");
        for r in &self.rows {
            let _ = writeln!(s, "* {} ({:.0} ms): {}", r.name, r.bound_ms, r.bound_reason);
        }
        let _ = writeln!(s, "\n## Fault runs\n");
        for r in &self.runs {
            let _ = writeln!(
                s,
                "* {} – {}: {} on {} (holder of {}){}",
                self.secs(r.from_ns),
                self.secs(r.to_ns),
                r.kind.name(),
                r.target.node,
                r.target.service,
                if r.errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.errors.join("; "))
                }
            );
        }
        if !self.foreign.is_empty() {
            let _ = writeln!(s, "\n## Foreign announcements\n");
            for (w, f) in &self.foreign {
                let _ = writeln!(
                    s,
                    "* {} [{}] {:?} for {} from {} while held by {:?}",
                    self.secs(f.announcement.at_ns),
                    w.name(),
                    f.announcement.kind,
                    f.announcement.ip,
                    f.node,
                    f.holders
                );
            }
        }
        if !self.split_brain.is_empty() {
            let _ = writeln!(s, "\n## Split brain\n");
            for (w, b) in &self.split_brain {
                let _ = writeln!(
                    s,
                    "* {} [{}] {} answered by {:?}",
                    self.secs(b.sent_ns),
                    w.name(),
                    b.ip,
                    b.answered_by
                );
            }
        }
        if !self.gaps_over_bound.is_empty() {
            let _ = writeln!(s, "\n## Gaps over their bound\n");
            for (w, g) in &self.gaps_over_bound {
                let _ = writeln!(
                    s,
                    "* {} [{}] {}: {:.0} ms ({} probes unanswered)",
                    self.secs(g.from_ns),
                    w.name(),
                    g.ip,
                    g.duration_ns() as f64 / 1e6,
                    g.unanswered
                );
            }
        }
        s
    }

    /// Writes `report.md` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)
    }
}
