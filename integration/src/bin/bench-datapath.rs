//! `bench-datapath` (`cargo xtask bench datapath`): the eBPF responder
//! against the kernel's own ARP, in the same run. Two namespaces joined by
//! a veth; in the agent namespace the agent's datapath code path answers
//! 192.0.2.10 from the eBPF responder and the kernel answers 192.0.2.20,
//! an address configured on the same `eth0`. From the client namespace an
//! AF_PACKET prober measures ARP round trips, alternating the two targets
//! request by request, and then floods each target to count replies per
//! second. Needs root and bpffs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::announce::GratuitousConfig;
use anyhow::{Context, bail};
use clap::Parser;
use integration::datapath_lab::{AgentConfig, InProcessAgent};
use integration::mac::format as format_mac;
use integration::netns::{CLIENT_V4, VethLab};
use integration::probe::{ArpProber, FloodResult, RttSamples, flood, interleaved_rtt};
use statedb::Status;

const EBPF_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const SERVICE: &str = "default/web";

#[derive(Parser)]
#[command(about = "ARP round-trip latency and reply rate: eBPF responder vs kernel ARP")]
struct Args {
    /// Measured requests per responder (interleaved).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Unmeasured requests per responder first.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Flood duration per responder, seconds.
    #[arg(long, default_value_t = 2.0)]
    flood_secs: f64,
    /// Sender threads (own sockets) in the flood.
    #[arg(long, default_value_t = 1)]
    flood_senders: usize,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Latency {
    median: u64,
    p99: u64,
    mean: f64,
    min: u64,
    n: usize,
    lost: usize,
}

fn latency(s: &RttSamples) -> Latency {
    let mut v = s.rtt_ns.clone();
    v.sort_unstable();
    Latency {
        median: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        mean: v.iter().sum::<u64>() as f64 / v.len().max(1) as f64,
        min: v.first().copied().unwrap_or(0),
        n: v.len(),
        lost: s.lost,
    }
}

fn us(ns: f64) -> String {
    format!("{:.1} µs", ns / 1e3)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lab = VethLab::new().context("namespaces and veth")?;
    lab.agent
        .ip(&["addr", "add", "192.0.2.20/24", "dev", "eth0"])
        .context("kernel address")?;
    let agent = InProcessAgent::start(
        &lab.agent,
        AgentConfig {
            gratuitous: GratuitousConfig {
                count: 1,
                interval: Duration::from_secs(1),
            },
            ..AgentConfig::default()
        },
        &["eth0"],
    )
    .context("in-process agent")?;
    agent.open_fence(SERVICE, Instant::now() + Duration::from_secs(3600))?;
    agent.upsert(EBPF_IP.into(), "eth0", &[SERVICE])?;
    agent.wait_status(EBPF_IP.into(), "eth0", Duration::from_secs(10), |s| {
        *s == Status::Done
    })?;
    let eth0 = agent.wait_device("eth0", Duration::from_secs(5))?.index;

    let open = || {
        lab.client
            .run_in(|| ArpProber::open("veth0", CLIENT_V4))
            .context("entering the client namespace")?
            .context("opening the prober")
    };
    let prober = open()?;
    let receiver = Arc::new(open()?);
    let targets = [EBPF_IP, KERNEL_IP];
    let timeout = Duration::from_millis(100);

    let warm = interleaved_rtt(&prober, &targets, args.warmup, timeout)?;
    for s in &warm {
        if s.macs != [lab.agent_mac] {
            bail!(
                "{} answered by {:?}, expected {}",
                s.target,
                s.macs.iter().map(|m| format_mac(*m)).collect::<Vec<_>>(),
                format_mac(lab.agent_mac)
            );
        }
    }
    let counter = |ip: Ipv4Addr| -> anyhow::Result<u64> {
        Ok(agent
            .entry(IpAddr::V4(ip), eth0)?
            .map(|e| e.responses_sent)
            .unwrap_or(0))
    };

    let before = counter(EBPF_IP)?;
    let samples = interleaved_rtt(&prober, &targets, args.requests, timeout)?;
    let ebpf_answers = counter(EBPF_IP)? - before;
    let ebpf = latency(&samples[0]);
    let kernel = latency(&samples[1]);

    let duration = Duration::from_secs_f64(args.flood_secs);
    let before = counter(EBPF_IP)?;
    let senders = (0..args.flood_senders.max(1))
        .map(|_| open())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let flood_ebpf = flood(&senders, receiver.clone(), EBPF_IP, duration)?;
    let flood_ebpf_counted = counter(EBPF_IP)? - before;
    let flood_kernel = flood(&senders, receiver, KERNEL_IP, duration)?;

    println!();
    println!(
        "ARP round trip, {} requests per responder, interleaved (veth, AF_PACKET prober, busy-polled)",
        args.requests
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>6}",
        "responder", "median", "p99", "mean", "min", "lost"
    );
    for (name, l) in [("eBPF (TC ingress)", &ebpf), ("kernel ARP", &kernel)] {
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10} {:>6}",
            name,
            us(l.median as f64),
            us(l.p99 as f64),
            us(l.mean),
            us(l.min as f64),
            l.lost
        );
    }
    println!(
        "{:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
        "ratio eBPF / kernel",
        ebpf.median as f64 / kernel.median.max(1) as f64,
        ebpf.p99 as f64 / kernel.p99.max(1) as f64,
        ebpf.mean / kernel.mean.max(1.0),
        ebpf.min as f64 / kernel.min.max(1) as f64,
    );
    println!(
        "(samples: eBPF {}, kernel {}; the eBPF map counted {} answers)",
        ebpf.n, kernel.n, ebpf_answers
    );
    println!();
    println!(
        "Flood, {:.1} s per responder, {} sender thread(s), replies counted by another socket",
        args.flood_secs, args.flood_senders
    );
    println!(
        "(veth delivers in the sender's softirq: with one sender the request rate is the \
         per-core cost of a whole exchange)"
    );
    println!(
        "{:<22} {:>12} {:>12} {:>10} {:>12} {:>10}",
        "responder", "requests/s", "replies/s", "answered", "send errors", "rx drops"
    );
    let row = |name: &str, f: &FloodResult| {
        let secs = f.elapsed.as_secs_f64();
        println!(
            "{:<22} {:>12.0} {:>12.0} {:>9.1}% {:>12} {:>10}",
            name,
            f.sent as f64 / secs,
            f.replies as f64 / secs,
            100.0 * f.replies as f64 / f.sent.max(1) as f64,
            f.send_errors,
            f.receive_drops
        );
    };
    row("eBPF (TC ingress)", &flood_ebpf);
    row("kernel ARP", &flood_kernel);
    let rate = |f: &FloodResult| f.replies as f64 / f.elapsed.as_secs_f64();
    println!(
        "{:<22} {:>12} {:>12.3}",
        "ratio eBPF / kernel",
        "",
        rate(&flood_ebpf) / rate(&flood_kernel).max(1.0)
    );
    println!(
        "(the eBPF map counted {} answers during its flood)",
        flood_ebpf_counted
    );
    drop(agent);
    drop(lab);
    Ok(())
}
