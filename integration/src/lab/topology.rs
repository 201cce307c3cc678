//! The lab's network: two bridges in the host namespace and a namespace per
//! node and for the client, joined by veth pairs.
//!
//! * The LAN bridge `<id>-br` (no address on the host) joins every node's
//!   `eth0` (192.0.2.1N/24, 2001:db8::1N/64) and the client's `eth0`
//!   (192.0.2.2/24, 2001:db8::2/64). Only LAN traffic crosses it: ARP, NDP,
//!   the probes, HTTP to the VIPs.
//! * The management bridge `<id>-mg` (198.51.100.254/24 on the host, where
//!   the test API server listens) joins every node's `eth1`
//!   (198.51.100.1N/24): the agents' API requests and their metrics. A
//!   node's `eth0` can go down while its agent stays connected.
//!
//! Every node has the Service IPs on its `lo` with arp_ignore=1 /
//! arp_announce=2, so its kernel never answers ARP for them (nor NDP: a
//! global address on `lo` is not answered on `eth0`); only the eBPF
//! responder does.

use std::process::{Command, Stdio};

use super::state::LabState;
use super::{CLIENT_V4, CLIENT_V6, EXT_V4, EXT_V6, LB_V4, LB_V6, LabError, MGMT_HOST, io_err};
use crate::netns::run;

fn sh(args: &[&str]) -> Result<(), LabError> {
    run(Command::new(args[0]).args(&args[1..]))?;
    Ok(())
}

/// Writes a sysctl of the host namespace under /proc/sys/net (best effort:
/// the lab works without it, less strictly).
fn host_sysctl(path: &str, value: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/{path}"), value);
}

/// A bridge in the host namespace, up; without IPv6 (it only forwards).
fn bridge(name: &str) -> Result<(), LabError> {
    sh(&["ip", "link", "add", name, "type", "bridge"])?;
    host_sysctl(&format!("ipv6/conf/{name}/disable_ipv6"), "1");
    sh(&["ip", "link", "set", name, "up"])
}

/// A veth pair: `host_if` on `bridge` in the host namespace, `inner` with
/// `mac` (when given) in `ns`.
fn attach(
    ns: &str,
    host_if: &str,
    inner: &str,
    mac: Option<&str>,
    bridge: &str,
) -> Result<(), LabError> {
    let mut args = vec![
        "ip", "link", "add", host_if, "type", "veth", "peer", "name", inner,
    ];
    if let Some(mac) = mac {
        args.extend(["address", mac]);
    }
    args.extend(["netns", ns]);
    sh(&args)?;
    host_sysctl(&format!("ipv6/conf/{host_if}/disable_ipv6"), "1");
    sh(&["ip", "link", "set", host_if, "master", bridge])?;
    sh(&["ip", "link", "set", host_if, "up"])
}

/// Builds the bridges, namespaces, links and addresses of `s`.
pub(super) fn build(s: &LabState) -> Result<(), LabError> {
    bridge(&s.bridge)?;
    bridge(&s.mgmt_bridge)?;
    // With arp_ignore=0 the host would answer ARP arriving on a bridge for
    // any of its own addresses (a host whose uplink sits in 192.0.2.0/24
    // would steal the client's IP): on the LAN it answers nothing (8), on
    // the management network only for the bridge's own address (1).
    host_sysctl(&format!("ipv4/conf/{}/arp_ignore", s.bridge), "8");
    host_sysctl(&format!("ipv4/conf/{}/arp_ignore", s.mgmt_bridge), "1");
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{MGMT_HOST}/24"),
        "dev",
        &s.mgmt_bridge,
    ])?;

    let c = s.client_netns.as_str();
    sh(&["ip", "netns", "add", c])?;
    sh(&["ip", "-n", c, "link", "set", "lo", "up"])?;
    attach(c, &s.client_host_if, "eth0", Some(&s.client_mac), &s.bridge)?;
    sh(&[
        "ip",
        "-n",
        c,
        "addr",
        "add",
        &format!("{CLIENT_V4}/24"),
        "dev",
        "eth0",
    ])?;
    sh(&[
        "ip",
        "-n",
        c,
        "addr",
        "add",
        &format!("{CLIENT_V6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    sh(&["ip", "-n", c, "link", "set", "eth0", "up"])?;

    for n in &s.nodes {
        let ns = n.netns.as_str();
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        attach(ns, &n.host_if, "eth0", Some(&n.mac), &s.bridge)?;
        attach(ns, &n.mgmt_host_if, "eth1", None, &s.mgmt_bridge)?;
        for sysctl in [
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.eth0.arp_ignore=1",
            "net.ipv4.conf.eth0.arp_announce=2",
        ] {
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", sysctl])?;
        }
        // No DAD for the IPv6 address, so it is usable at once.
        for (addr, dev, extra) in [
            (format!("{}/24", n.v4), "eth0", None),
            (format!("{}/64", n.v6), "eth0", Some("nodad")),
            (format!("{}/24", n.mgmt), "eth1", None),
        ] {
            let mut args = vec!["ip", "-n", ns, "addr", "add", &addr, "dev", dev];
            args.extend(extra);
            sh(&args)?;
        }
        for vip in [format!("{LB_V4}/32"), format!("{EXT_V4}/32")] {
            sh(&["ip", "-n", ns, "addr", "add", &vip, "dev", "lo"])?;
        }
        for vip in [format!("{LB_V6}/128"), format!("{EXT_V6}/128")] {
            sh(&["ip", "-n", ns, "addr", "add", &vip, "dev", "lo", "nodad"])?;
        }
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "eth1", "up"])?;
        std::fs::create_dir_all(&n.state_dir).map_err(io_err(n.state_dir.display().to_string()))?;
    }
    Ok(())
}

/// Adds `ips` (host prefixes) to the `lo` of every node, as the Service
/// IPs are (for Services created later, e.g. by the chaos suite).
pub fn add_vips(s: &LabState, ips: &[std::net::IpAddr]) -> Result<(), LabError> {
    for n in &s.nodes {
        for ip in ips {
            let (addr, extra) = match ip {
                std::net::IpAddr::V4(v) => (format!("{v}/32"), None),
                std::net::IpAddr::V6(v) => (format!("{v}/128"), Some("nodad")),
            };
            let mut args = vec!["ip", "-n", &n.netns, "addr", "add", &addr, "dev", "lo"];
            args.extend(extra);
            sh(&args)?;
        }
    }
    Ok(())
}

/// Sets a node's `eth0` up or down (inside its namespace). Setting a link
/// down flushes its IPv6 addresses (`keep_addr_on_down` is 0), so setting
/// it up puts the node's LAN IPv6 address back, as a network manager would.
pub fn set_lan_link(s: &LabState, node: &str, up: bool) -> Result<(), LabError> {
    let n = s.node(node)?;
    let ns = n.netns.as_str();
    sh(&[
        "ip",
        "-n",
        ns,
        "link",
        "set",
        "eth0",
        if up { "up" } else { "down" },
    ])?;
    if up {
        let v6 = format!("{}/64", n.v6);
        sh(&[
            "ip", "-n", ns, "addr", "replace", &v6, "dev", "eth0", "nodad",
        ])?;
    }
    Ok(())
}

/// Sets the LAN bridge's end of a node's `eth0` veth (in the host
/// namespace) down or up: the node's `eth0` stays administratively up but
/// loses carrier (operstate `lowerlayerdown`), as when a cable is pulled or
/// a switch port dies.
pub fn set_lan_carrier(s: &LabState, node: &str, up: bool) -> Result<(), LabError> {
    let host_if = &s.node(node)?.host_if;
    sh(&["ip", "link", "set", host_if, if up { "up" } else { "down" }])
}

/// Deletes the namespaces and links of `s` (best effort).
pub(super) fn remove(s: &LabState) {
    for ns in s
        .nodes
        .iter()
        .map(|n| n.netns.as_str())
        .chain([s.client_netns.as_str()])
    {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    for link in s
        .nodes
        .iter()
        .flat_map(|n| [n.host_if.as_str(), n.mgmt_host_if.as_str()])
        .chain([
            s.client_host_if.as_str(),
            s.bridge.as_str(),
            s.mgmt_bridge.as_str(),
        ])
    {
        let _ = Command::new("ip")
            .args(["link", "del", link])
            .stderr(Stdio::null())
            .status();
    }
}
