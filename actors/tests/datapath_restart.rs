//! A restarted agent keeps the lease fences its previous run left in the
//! pinned maps: nothing it learns before its first full pass (election
//! groups arriving one Service at a time, or none yet) may clear a fence
//! that a pinned entry still answers under.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use actors::announce::Datapath;
use actors::tables::L2AnnounceRow;
use bpf::{AttachMode, Responder, ResponderConfig};

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
/// Not a real interface: map entries do not need one.
const IFINDEX: u32 = 4242;
const SLOT: u32 = 5;

struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        let root = Path::new("/sys/fs/bpf");
        if !bpf::is_on_bpffs(root).expect("mounts") {
            let ok = Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .expect("mount")
                .success();
            assert!(ok || bpf::is_on_bpffs(root).expect("mounts"), "no bpffs");
        }
        PinDir(root.join(format!("l2a-actors-restart-{}", std::process::id())))
    }

    fn open(&self) -> Responder {
        Responder::open(&ResponderConfig {
            pin_dir: self.0.clone(),
            max_liveness: Duration::from_secs(15),
        })
        .expect("open responder")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = Responder::remove_pins(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

#[test]
fn election_groups_before_the_first_pass_keep_recovered_fences() {
    let pins = PinDir::new();
    // The previous run: one entry answering under slot 5, fence a minute out.
    let until = {
        let mut r = pins.open();
        r.insert(VIP, IFINDEX, SLOT).expect("insert");
        let until = bpf::monotonic_now_ns() + 60_000_000_000;
        r.set_fence(SLOT, until).expect("fence");
        until
    };

    // The restarted run recovers the slot from the persisted row.
    let mut dp = Datapath::new(pins.open(), AttachMode::Tc);
    let row = L2AnnounceRow {
        ip: VIP,
        network_interface: "eth0".into(),
        origins: vec!["default/web".into()],
        status: Default::default(),
    };
    let ifnames = BTreeMap::from([(IFINDEX, "eth0".to_string())]);
    assert_eq!(dp.recover_slots(&[row], &ifnames).expect("recover"), 1);
    assert_eq!(dp.slot_of("default/web"), Some(SLOT));

    // The ServiceActor knows no Service yet, then only another one.
    dp.set_groups(BTreeMap::new());
    assert_eq!(dp.responder().fence(SLOT).expect("fence"), until);
    dp.set_groups(BTreeMap::from([(
        "default/other".to_string(),
        "default/other".to_string(),
    )]));
    assert_eq!(dp.responder().fence(SLOT).expect("fence"), until);

    // Web now shares an IP with another Service: its slot follows the
    // election key, still with its deadline.
    dp.set_groups(BTreeMap::from([
        ("default/web".to_string(), "ip/192.0.2.77".to_string()),
        ("default/web2".to_string(), "ip/192.0.2.77".to_string()),
    ]));
    assert_eq!(dp.slot_of("ip/192.0.2.77"), Some(SLOT));
    assert_eq!(dp.responder().fence(SLOT).expect("fence"), until);

    // Once the entry is gone and the election too, the slot is cleared.
    dp.responder_mut().remove(VIP, IFINDEX).expect("remove");
    dp.set_groups(BTreeMap::new());
    assert_eq!(dp.responder().fence(SLOT).expect("fence"), 0);
    assert_eq!(dp.slot_of("ip/192.0.2.77"), None);
}
