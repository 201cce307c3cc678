//! `chaos`: the chaos suite's long profile (run it through
//! `cargo xtask chaos`, as root): builds a lab, injects shuffled rounds of
//! every fault for `--minutes N` (default 30) with `--seed S` (default:
//! from the clock; printed either way), prints the per-fault table and
//! writes it to `target/chaos/report.md` and `report.json`. `--short`
//! runs the short profile instead (each fault once); `--election MODE`
//! runs the agents in that election mode (default: node-heartbeat);
//! `--faults a,b` injects only those faults (keys: `FaultKind::key`). Exits 1 when the
//! suite found split brain, a foreign announcement, a gap over its bound or
//! a fault it could not recover from.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use integration::chaos::faults::FaultKind;
use integration::chaos::{self, ChaosConfig, Profile};
use integration::lab::{Lab, LabConfig};

struct Args {
    minutes: u64,
    seed: Option<u64>,
    short: bool,
    election: Option<String>,
    faults: Option<Vec<FaultKind>>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        minutes: 30,
        seed: None,
        short: false,
        election: None,
        faults: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match a.as_str() {
            "--minutes" => args.minutes = value("--minutes")?,
            "--seed" => args.seed = Some(value("--seed")?),
            "--short" => args.short = true,
            "--election" => args.election = Some(it.next().ok_or("--election needs a value")?),
            "--faults" => {
                let list = it.next().ok_or("--faults needs a comma list")?;
                let faults = list
                    .split(',')
                    .map(|k| {
                        FaultKind::from_key(k.trim()).ok_or_else(|| {
                            let keys: Vec<&str> = FaultKind::ALL.iter().map(|f| f.key()).collect();
                            format!("--faults: unknown fault {k:?}; known: {}", keys.join(", "))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                args.faults = Some(faults);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: chaos [--minutes N] [--seed S] [--short] [--election node-heartbeat|per-service] [--faults a,b]"
                ));
            }
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    integration::init_tracing();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    integration::poll::install_interrupt_handler();
    let seed = args.seed.unwrap_or_else(chaos::fresh_seed);
    let profile = if args.short {
        Profile::Short
    } else {
        Profile::Long(Duration::from_secs(args.minutes * 60))
    };
    println!("chaos: seed {seed} ({profile} profile; rerun with --seed {seed})");
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
        .unwrap_or_default();
    let agent = exe_dir.join("l2announcer");
    if !agent.exists() {
        eprintln!(
            "chaos: {} not found: build with `cargo build -p l2announcer -p integration --bins`",
            agent.display()
        );
        return ExitCode::FAILURE;
    }
    let out_dir = exe_dir
        .parent()
        .map(|target| target.join("chaos"))
        .unwrap_or_else(|| PathBuf::from("chaos"));
    let lab_config = LabConfig {
        election: args.election.clone(),
        ..LabConfig::unique(agent)
    };
    let lab = match Lab::up(&lab_config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chaos: lab up: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = ChaosConfig {
        seed,
        profile,
        work_dir: lab_config.dir.join("chaos"),
        faults: args.faults.clone(),
    };
    let report = chaos::run(&lab, &config);
    lab.down();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\n{}", report.table());
    if let Err(e) = report.write(&out_dir) {
        eprintln!("chaos: writing the report to {}: {e}", out_dir.display());
    } else {
        println!("report: {}", out_dir.join("report.md").display());
    }
    println!(
        "chaos: seed {seed}: {}",
        if report.passed() { "PASSED" } else { "FAILED" }
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
