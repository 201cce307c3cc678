//! The real resolvers a client host runs, run inside a network namespace:
//! `arping` (iputils) and `ndisc6` (ndisc6), their answers read into the
//! MACs that answered. What a user would type, as opposed to the paced
//! AF_PACKET prober (integration::probe) used for timing.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use crate::netns::NetnsError;

fn output(netns: &str, program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]).args(args);
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        command: format!("{cmd:?}"),
        source,
    })?;
    // Whatever the exit status: no answer is an answer here.
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn push_new(macs: &mut Vec<[u8; 6]>, mac: Option<[u8; 6]>) {
    if let Some(mac) = mac
        && !macs.contains(&mac)
    {
        macs.push(mac);
    }
}

/// `arping -c count -w wait_s -I ifname ip` in `netns`: the MACs that
/// answered, each once, in order of first answer.
pub fn arping(
    netns: &str,
    ifname: &str,
    ip: Ipv4Addr,
    count: u32,
    wait_s: u32,
) -> Result<Vec<[u8; 6]>, NetnsError> {
    let out = output(
        netns,
        "arping",
        &[
            "-c",
            &count.to_string(),
            "-w",
            &wait_s.to_string(),
            "-I",
            ifname,
            &ip.to_string(),
        ],
    )?;
    Ok(arping_macs(&out, ip))
}

/// The MACs in arping's `reply from IP [MAC]` lines.
fn arping_macs(out: &str, ip: Ipv4Addr) -> Vec<[u8; 6]> {
    let mut macs = Vec::new();
    for line in out
        .lines()
        .filter(|l| l.contains(&format!("reply from {ip} ")))
    {
        let mac = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .and_then(|(mac, _)| crate::mac::parse(mac));
        push_new(&mut macs, mac);
    }
    macs
}

/// `ndisc6 -m -n -r tries -w wait_ms ip ifname` in `netns`: every MAC that
/// answered the solicitations (`-m`: all answers, not only the first).
pub fn ndisc6(
    netns: &str,
    ifname: &str,
    ip: Ipv6Addr,
    tries: u32,
    wait_ms: u32,
) -> Result<Vec<[u8; 6]>, NetnsError> {
    let out = output(
        netns,
        "ndisc6",
        &[
            "-m",
            "-n",
            "-r",
            &tries.to_string(),
            "-w",
            &wait_ms.to_string(),
            &ip.to_string(),
            ifname,
        ],
    )?;
    Ok(ndisc6_macs(&out))
}

/// The MACs in ndisc6's `Target link-layer address: MAC` lines.
fn ndisc6_macs(out: &str) -> Vec<[u8; 6]> {
    let mut macs = Vec::new();
    for line in out.lines() {
        let mac = line
            .split_once("address:")
            .and_then(|(_, rest)| crate::mac::parse(rest));
        push_new(&mut macs, mac);
    }
    macs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arping_and_ndisc6_answers() {
        let ip = Ipv4Addr::new(192, 0, 2, 100);
        let out = "ARPING 192.0.2.100\nUnicast reply from 192.0.2.100 [02:1A:B0:00:00:11]  0.6ms\nUnicast reply from 192.0.2.100 [02:1A:B0:00:00:11]  0.5ms\nUnicast reply from 192.0.2.100 [02:1A:B0:00:00:12]  0.5ms\n";
        assert_eq!(
            arping_macs(out, ip),
            vec![[2, 0x1a, 0xb0, 0, 0, 0x11], [2, 0x1a, 0xb0, 0, 0, 0x12]]
        );
        assert_eq!(arping_macs("Sent 2 probes\n", ip), Vec::<[u8; 6]>::new());
        let nd = "Soliciting 2001:db8::100 (2001:db8::100) on eth0...\nTarget link-layer address: 02:1A:B0:00:00:11\n from 2001:db8::100\n";
        assert_eq!(ndisc6_macs(nd), vec![[2, 0x1a, 0xb0, 0, 0, 0x11]]);
    }
}
