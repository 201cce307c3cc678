//! The chaos suite's short profile (integration::chaos): a lab of real
//! agents, each fault once in a seeded order (the seed is printed; set
//! `L2A_CHAOS_SEED` to replay one), policy edits and Service churn all
//! along, a 10 ms ARP and NS probe of every VIP and a capture of every
//! gratuitous ARP / unsolicited NA at the client. Fails on any split brain,
//! any foreign announcement, any gap over its fault's bound and any fault
//! the lab did not recover from; the table is printed and written to
//! target/chaos/short/report.{md,json}.
//!
//! Needs root and `target/debug/l2announcer`; builds its own lab (one lab
//! at a time on a machine: every lab puts 198.51.100.254 on a host bridge).

use integration::chaos::{self, ChaosConfig, Profile};
use integration::lab::{Lab, LabConfig};

#[test]
fn chaos_short_profile_finds_one_answerer_per_ip_node_heartbeat() {
    short_profile("node-heartbeat");
}

#[test]
fn chaos_short_profile_finds_one_answerer_per_ip_per_service() {
    short_profile("per-service");
}

/// One lab at a time on a machine (the host bridge address is shared).
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn short_profile(election: &str) {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = integration::lab::debug_agent();
    let seed = std::env::var("L2A_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(chaos::fresh_seed);
    eprintln!("chaos ({election}): seed {seed} (replay with L2A_CHAOS_SEED={seed})");
    let lab_config = LabConfig {
        election: Some(election.to_string()),
        ..LabConfig::unique(agent)
    };
    let lab = Lab::up(&lab_config).expect("lab up");
    let config = ChaosConfig {
        seed,
        profile: Profile::Short,
        work_dir: lab_config.dir.join("chaos"),
        faults: None,
    };
    let report = chaos::run(&lab, &config);
    let logs = lab.state.log_tails(40);
    lab.down();
    let report = report.expect("chaos run");
    let out = integration::lab::target_dir()
        .join("chaos/short")
        .join(election);
    report.write(&out).expect("write the report");
    eprintln!("{}\n(report in {})", report.table(), out.display());
    assert!(
        report.passed(),
        "{election}, seed {seed}:\n{}\nagent logs:\n{logs}",
        report.markdown()
    );
}
