//! The device tracker against a real kernel: each test creates its own
//! network namespace, runs the tracker on a thread inside it, changes links
//! and addresses with `ip`, and waits (with a deadline) for the rows to
//! follow. Needs root and iproute2.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ::actors::devices::{
    DeviceActor, DeviceChange, DeviceFilter, DeviceRow, DeviceTracker, TrackerOptions,
    oper_state_carries,
};
use actix::prelude::*;

/// How long a change may take to show up.
const DEADLINE: Duration = Duration::from_secs(1);

/// How long a carrier change may take: the kernel's link watch reports
/// some of them (a bridge's; a veth's whose peer has the same ifindex in
/// its own namespace) only a second after the previous link-watch run
/// anywhere on the machine.
const CARRIER_DEADLINE: Duration = Duration::from_secs(3);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists for the life of the value.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!(
            "l2a-dev-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run(&["netns", "add", &name]);
        Netns { name }
    }

    /// `ip -n <ns> <args>`, which must succeed.
    fn ip(&self, args: &str) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend(args.split_whitespace());
        run(&full);
    }

    /// `ip -n <ns> <args>`; whether it succeeded.
    fn try_ip(&self, args: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The addresses the kernel reports for `dev`, sorted.
    fn kernel_addresses(&self, dev: &str) -> Vec<std::net::IpAddr> {
        let out = Command::new("ip")
            .args(["-j", "-n", &self.name, "addr", "show", "dev", dev])
            .output()
            .expect("run ip");
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let mut ips: Vec<std::net::IpAddr> = v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["local"].as_str())
                    .map(|s| s.parse().expect("ip from ip -j"))
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips.dedup();
        ips
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Work run on the tracker's thread, blocking its runtime meanwhile.
type Blocking = Box<dyn FnOnce() + Send>;

/// A tracker running on its own thread inside a namespace, and the table its
/// changes build.
struct Tracked {
    changes: mpsc::Receiver<DeviceChange>,
    block: Option<mpsc::Sender<Blocking>>,
    thread: Option<thread::JoinHandle<()>>,
    table: BTreeMap<String, DeviceRow>,
    /// Every change applied so far, in order.
    seen: Vec<DeviceChange>,
}

impl Tracked {
    fn start(ns: &Netns, filter: DeviceFilter, options: TrackerOptions) -> Self {
        Self::spawn(ns, move |tx, block_rx| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut tracker = DeviceTracker::start_with(filter, options)
                    .await
                    .expect("tracker starts");
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tokio::select! {
                        change = tracker.recv() => match change {
                            Some(c) => if tx.send(c).is_err() { return },
                            None => return,
                        },
                        _ = tick.tick() => match block_rx.try_recv() {
                            Ok(work) => work(),
                            Err(mpsc::TryRecvError::Empty) => {}
                            Err(mpsc::TryRecvError::Disconnected) => return,
                        },
                    }
                }
            });
        })
    }

    /// The same through [`DeviceActor`] on an actix system in the namespace.
    fn start_actor(ns: &Netns, filter: DeviceFilter) -> Self {
        Self::spawn(ns, move |tx, block_rx| {
            actix::System::new().block_on(async move {
                let collector = Collector(tx).start();
                let _devices =
                    DeviceActor::new(filter, TrackerOptions::default(), collector.recipient())
                        .start();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tick.tick().await;
                    if let Err(mpsc::TryRecvError::Disconnected) = block_rx.try_recv() {
                        return;
                    }
                }
            });
        })
    }

    /// Run `body` on a new thread moved into the namespace.
    fn spawn(
        ns: &Netns,
        body: impl FnOnce(mpsc::Sender<DeviceChange>, mpsc::Receiver<Blocking>) + Send + 'static,
    ) -> Self {
        let path = format!("/run/netns/{}", ns.name);
        let (tx, changes) = mpsc::channel();
        let (block, block_rx) = mpsc::channel::<Blocking>();
        let thread = thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd; it only moves this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            body(tx, block_rx);
        });
        Tracked {
            changes,
            block: Some(block),
            thread: Some(thread),
            table: BTreeMap::new(),
            seen: Vec::new(),
        }
    }

    /// Apply changes until `done` holds for the table; panics after
    /// [`DEADLINE`]. Returns how long it took.
    fn wait_for(
        &mut self,
        what: &str,
        done: impl Fn(&BTreeMap<String, DeviceRow>) -> bool,
    ) -> Duration {
        self.wait_for_within(what, DEADLINE, done)
    }

    fn wait_for_within(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&BTreeMap<String, DeviceRow>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if done(&self.table) {
                return start.elapsed();
            }
            let left = limit.saturating_sub(start.elapsed());
            match self.changes.recv_timeout(left) {
                Ok(change) => {
                    self.seen.push(change.clone());
                    change.apply(&mut self.table);
                }
                Err(e) => panic!(
                    "{what}: not reached within {limit:?} ({e}); table: {:#?}",
                    self.table
                ),
            }
        }
    }

    fn row(&self, name: &str) -> &DeviceRow {
        self.table
            .get(name)
            .unwrap_or_else(|| panic!("no row {name}: {:#?}", self.table))
    }

    /// Run `work` on the tracker's thread, blocking its runtime.
    fn block_with(&self, work: Blocking) {
        self.block
            .as_ref()
            .expect("running")
            .send(work)
            .expect("tracker thread alive");
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Closing both channels ends the thread's loop.
        self.block = None;
        let (_, closed) = mpsc::channel();
        self.changes = closed;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Passes what the actor forwards to the test thread.
struct Collector(mpsc::Sender<DeviceChange>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<DeviceChange> for Collector {
    type Result = ();
    fn handle(&mut self, change: DeviceChange, _ctx: &mut Context<Self>) {
        let _ = self.0.send(change);
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("ip")
}

#[test]
fn rows_follow_link_and_address_changes() {
    let ns = Netns::new();
    let mut t = Tracked::start(&ns, DeviceFilter::all(), TrackerOptions::default());

    // The first change is a resync with what exists: only lo.
    t.wait_for("initial resync", |tb| tb.contains_key("lo"));
    assert!(matches!(t.seen.first(), Some(DeviceChange::Resync(_))));
    let lo = t.row("lo");
    assert!(!lo.selected);
    assert_eq!(lo.kind, "device");
    assert_eq!(lo.hw_addr, "");

    let created = Instant::now();
    ns.ip("link add veth0 type veth peer name veth1");
    t.wait_for("veth pair appears", |tb| {
        tb.contains_key("veth0") && tb.contains_key("veth1")
    });
    println!(
        "veth rows appeared {:?} after running `ip link add`",
        created.elapsed()
    );
    let v0 = t.row("veth0").clone();
    assert_eq!(v0.kind, "veth");
    assert!(!v0.selected, "down at creation");
    assert!(v0.mac().is_some_and(|m| m != [0; 6]), "{v0:?}");
    assert_eq!(v0.mtu, 1500);

    // Up without its peer: no carrier, not selected.
    ns.ip("link set veth0 up");
    t.wait_for("veth0 up without carrier", |tb| {
        tb["veth0"].is_up() && tb["veth0"].oper_state == "lowerlayerdown"
    });
    assert!(!t.row("veth0").selected, "{:?}", t.row("veth0"));
    ns.ip("link set veth1 up");
    t.wait_for("veth0 up and selected", |tb| tb["veth0"].selected);
    assert_eq!(t.row("veth0").flags, vec!["up", "broadcast", "multicast"]);
    assert_eq!(t.row("veth0").oper_state, "up");

    ns.ip("addr add 192.0.2.10/24 dev veth0");
    ns.ip("addr add 2001:db8::10/64 dev veth0 nodad");
    t.wait_for("addresses added", |tb| {
        let a = &tb["veth0"].addresses;
        a.contains(&ip("192.0.2.10")) && a.contains(&ip("2001:db8::10"))
    });
    // Sorted, IPv4 first.
    let addrs = t.row("veth0").addresses.clone();
    assert_eq!(addrs.first(), Some(&ip("192.0.2.10")));
    let mut sorted = addrs.clone();
    sorted.sort();
    assert_eq!(addrs, sorted);
    assert!(t.row("veth0").cells()[7].starts_with("192.0.2.10, 2001:db8::10"));

    ns.ip("addr del 192.0.2.10/24 dev veth0");
    t.wait_for("IPv4 address removed", |tb| {
        let a = &tb["veth0"].addresses;
        !a.contains(&ip("192.0.2.10")) && a.contains(&ip("2001:db8::10"))
    });

    ns.ip("link set veth0 down");
    t.wait_for("veth0 down, not selected", |tb| {
        !tb["veth0"].selected && !tb["veth0"].flags.iter().any(|f| f == "up")
    });

    let before = t.seen.len();
    ns.ip("link set veth0 name eth0");
    t.wait_for("renamed to eth0", |tb| {
        tb.contains_key("eth0") && !tb.contains_key("veth0")
    });
    assert_eq!(t.row("eth0").index, v0.index);
    assert!(
        t.seen[before..].contains(&DeviceChange::Delete {
            index: v0.index,
            name: "veth0".into()
        }),
        "{:?}",
        &t.seen[before..]
    );
    // Whatever the kernel kept across down/rename, the row shows the same.
    let kernel = ns.kernel_addresses("eth0");
    t.wait_for("addresses match the kernel", |tb| {
        tb["eth0"].addresses == kernel
    });

    ns.ip("link del eth0");
    t.wait_for("pair deleted", |tb| {
        !tb.contains_key("eth0") && !tb.contains_key("veth1")
    });
    assert_eq!(t.table.keys().collect::<Vec<_>>(), vec!["lo"]);
}

#[test]
fn devices_filter_is_respected() {
    let ns = Netns::new();
    let filter: DeviceFilter = "eth+".parse().expect("filter");
    let mut t = Tracked::start(&ns, filter, TrackerOptions::default());
    ns.ip("link add eth0 type veth peer name veth1");
    ns.ip("link set eth0 up");
    ns.ip("link set veth1 up");
    t.wait_for("both up, eth0 selected", |tb| {
        tb.get("eth0").is_some_and(|r| r.selected) && tb.get("veth1").is_some_and(|r| r.is_up())
    });
    assert!(!t.row("veth1").selected, "filtered out by eth+");
}

#[test]
fn bridge_ports_are_not_selected_and_vlans_without_addresses_are() {
    let ns = Netns::new();
    let mut t = Tracked::start(&ns, DeviceFilter::all(), TrackerOptions::default());
    ns.ip("link add br0 type bridge");
    ns.ip("link add p0 type veth peer name p1");
    ns.ip("link set p0 master br0");
    ns.ip("link set p0 up");
    ns.ip("link set p1 up");
    ns.ip("link set br0 up");
    // A VLAN when the kernel has 8021q; otherwise a macvlan stands in as
    // the upper device without an address.
    let (upper, kind) = if ns.try_ip("link add link p1 name up0 type vlan id 100") {
        ("up0", "vlan")
    } else {
        println!("kernel without VLAN support: using macvlan for the address-less device");
        ns.ip("link add link p1 name up0 type macvlan mode bridge");
        ("up0", "macvlan")
    };
    // No IPv6 link-local either: the device has no address at all.
    ns.ip(&format!("link set {upper} addrgenmode none"));
    ns.ip(&format!("link set {upper} up"));
    // The bridge has carrier once its port forwards; the upper device
    // follows p1.
    t.wait_for_within("bridge, port and upper device up", CARRIER_DEADLINE, |tb| {
        ["br0", "p0", upper]
            .iter()
            .all(|n| tb.get(*n).is_some_and(|r| r.is_up()))
            && tb["p0"].master_index.is_some()
            && tb["br0"].selected
            && tb[upper].selected
    });
    let br0 = t.row("br0").clone();
    assert_eq!(br0.kind, "bridge");
    let p0 = t.row("p0");
    assert_eq!(p0.master_index, Some(br0.index));
    assert!(!p0.selected, "enslaved: {p0:?}");
    let vlan = t.row(upper);
    assert_eq!(vlan.kind, kind);
    assert!(ns.kernel_addresses(upper).is_empty());
    assert!(vlan.addresses.is_empty(), "{vlan:?}");
    assert!(vlan.selected, "{vlan:?}");

    // Leaving the bridge makes the port selectable again (and is not
    // mistaken for a deletion by the AF_BRIDGE DELLINK it causes).
    ns.ip("link set p0 nomaster");
    t.wait_for("p0 released", |tb| {
        tb.get("p0")
            .is_some_and(|r| r.master_index.is_none() && r.selected)
    });
}

#[test]
fn overrun_dumps_again_and_resyncs() {
    let ns = Netns::new();
    let options = TrackerOptions {
        receive_buffer: Some(4096),
        ..TrackerOptions::default()
    };
    let mut t = Tracked::start(&ns, DeviceFilter::all(), options);
    t.wait_for("initial resync", |tb| tb.contains_key("lo"));

    // Write the events while the tracker's thread is blocked, so the small
    // receive buffer overflows.
    let count = 200;
    let dir = std::env::temp_dir().join(format!("{}-batch", ns.name));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let batch = dir.join("batch");
    let mut text = String::from("link add o0 type veth peer name o1\n");
    for i in 1..=count {
        text.push_str(&format!("addr add 198.51.100.{i}/32 dev o0\n"));
    }
    std::fs::write(&batch, text).expect("write batch");
    let (done_tx, done_rx) = mpsc::channel();
    let ns_name = ns.name.clone();
    let batch_path = batch.clone();
    t.block_with(Box::new(move || {
        let ok = Command::new("ip")
            .args(["-n", &ns_name, "-batch"])
            .arg(&batch_path)
            .status()
            .is_ok_and(|s| s.success());
        let _ = done_tx.send(ok);
    }));
    assert!(
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("batch ran"),
        "ip -batch failed"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let before = t.seen.len();
    t.wait_for_within("all addresses present", Duration::from_secs(5), |tb| {
        tb.get("o0").is_some_and(|r| r.addresses.len() == count)
    });
    let resyncs = t.seen[before..]
        .iter()
        .filter(|c| matches!(c, DeviceChange::Resync(_)))
        .count();
    assert!(resyncs >= 1, "expected a resync after the overrun");
    assert!(t.row("o1").addresses.is_empty());
}

#[test]
fn device_actor_forwards_changes() {
    let ns = Netns::new();
    let mut t = Tracked::start_actor(&ns, "eth+".parse().expect("filter"));
    t.wait_for("initial resync", |tb| tb.contains_key("lo"));
    assert!(matches!(t.seen.first(), Some(DeviceChange::Resync(_))));
    ns.ip("link add eth0 type veth peer name veth1");
    ns.ip("link set eth0 up");
    ns.ip("link set veth1 up");
    t.wait_for("eth0 selected", |tb| {
        tb.get("eth0").is_some_and(|r| r.selected)
    });
    ns.ip("link del eth0");
    t.wait_for("eth0 gone", |tb| {
        !tb.contains_key("eth0") && !tb.contains_key("veth1")
    });
}

// Issue 12 §4: a device that loses carrier leaves the selection and comes
// back with the carrier. The far end of the veth sits in a namespace of its
// own, as the LAN bridge's port does in the lab.
#[test]
fn carrier_loss_on_the_veth_peer_deselects_the_device_and_back() {
    let node = Netns::new();
    let lan = Netns::new();
    let mut t = Tracked::start(&node, DeviceFilter::all(), TrackerOptions::default());
    t.wait_for("initial resync", |tb| tb.contains_key("lo"));
    node.ip(&format!(
        "link add eth0 type veth peer name lan0 netns {}",
        lan.name
    ));
    node.ip("link set eth0 up");
    lan.ip("link set lan0 up");
    t.wait_for_within("eth0 selected", CARRIER_DEADLINE, |tb| {
        tb.get("eth0").is_some_and(|r| r.selected)
    });
    assert_eq!(t.row("eth0").oper_state, "up");

    // The peer down: eth0 stays administratively up but has no carrier.
    lan.ip("link set lan0 down");
    let took = t.wait_for_within("carrier lost", CARRIER_DEADLINE, |tb| !tb["eth0"].selected);
    println!("carrier loss deselected eth0 after {took:?}");
    let row = t.row("eth0");
    assert!(row.is_up(), "still administratively up: {row:?}");
    assert!(!oper_state_carries(&row.oper_state), "{row:?}");

    lan.ip("link set lan0 up");
    t.wait_for_within("carrier back", CARRIER_DEADLINE, |tb| tb["eth0"].selected);
    assert_eq!(t.row("eth0").oper_state, "up");

    // Administratively down and up again, the other way to lose the link.
    node.ip("link set eth0 down");
    t.wait_for("eth0 down", |tb| {
        !tb["eth0"].selected && !tb["eth0"].is_up()
    });
    node.ip("link set eth0 up");
    t.wait_for_within("eth0 up again", CARRIER_DEADLINE, |tb| tb["eth0"].selected);
}
