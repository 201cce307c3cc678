//! `responses_sent` never loses an increment: an existing entry's value is
//! never rewritten, so replies counted by the datapath while the owner calls
//! `insert` on that entry again (same slot: no-op; another slot: a typed
//! error) all stay counted. Replies are generated with BPF_PROG_TEST_RUN on
//! one thread while another thread keeps inserting. Needs root and BPF.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};

use bpf::{AttachMode, ResponderError};
use common::{TC_ACT_REDIRECT, TestResponder, skb_ctx, test_run};

const IFINDEX: u32 = 42;
const SLOT: u32 = 3;
const OTHER_SLOT: u32 = 4;
const IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const RUNS: u64 = 20_000;

#[rustfmt::skip]
fn arp_request() -> Vec<u8> {
    vec![
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x02, 0, 0, 0, 0, 0x01,
        0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
        0x02, 0, 0, 0, 0, 0x01,
        192, 0, 2, 1,
        0, 0, 0, 0, 0, 0,
        192, 0, 2, 10,
    ]
}

fn counter(t: &mut TestResponder) -> u64 {
    t.r()
        .list()
        .unwrap()
        .into_iter()
        .find(|e| e.ip == TARGET)
        .map(|e| e.responses_sent)
        .expect("entry present")
}

#[test]
fn reinserting_an_entry_while_it_answers_loses_no_count() {
    let mut t = TestResponder::new();
    let r = t.r();
    r.set_interface_mac(IFINDEX, IF_MAC).unwrap();
    r.insert_v4(TARGET, IFINDEX, SLOT).unwrap();
    let now = r.set_liveness_now().unwrap();
    r.set_fence(SLOT, now + 600_000_000_000).unwrap();
    r.set_fence(OTHER_SLOT, now + 600_000_000_000).unwrap();
    r.set_node_fence(u64::MAX).unwrap();
    let prog = r
        .program_fd(AttachMode::Tc)
        .unwrap()
        .try_clone_to_owned()
        .unwrap();

    let done = AtomicBool::new(false);
    let (replies, inserts) = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            let frame = arp_request();
            let ctx = skb_ctx(IFINDEX);
            let mut replies = 0u64;
            for _ in 0..RUNS {
                let (rc, _) = test_run(std::os::fd::AsFd::as_fd(&prog), &frame, Some(&ctx));
                if rc == TC_ACT_REDIRECT {
                    replies += 1;
                }
            }
            done.store(true, Ordering::Release);
            replies
        });
        let mut inserts = 0u64;
        while !done.load(Ordering::Acquire) {
            t.r().insert_v4(TARGET, IFINDEX, SLOT).unwrap();
            match t.r().insert_v4(TARGET, IFINDEX, OTHER_SLOT) {
                Err(ResponderError::SlotMismatch {
                    existing_slot: SLOT,
                    requested_slot: OTHER_SLOT,
                    ifindex: IFINDEX,
                    ..
                }) => {}
                other => panic!("expected SlotMismatch, got {other:?}"),
            }
            inserts += 2;
        }
        (runner.join().unwrap(), inserts)
    });
    assert_eq!(replies, RUNS, "every run is answered");
    assert!(inserts > 0, "inserts ran alongside the replies");
    assert_eq!(
        counter(&mut t),
        replies,
        "counter equals replies after {inserts} inserts"
    );
    let entry = t
        .r()
        .list()
        .unwrap()
        .into_iter()
        .find(|e| e.ip == TARGET)
        .unwrap();
    assert_eq!(entry.fence_slot, SLOT, "the slot was never re-pointed");
}

#[test]
fn an_entry_moves_to_another_slot_by_remove_then_insert() {
    let mut t = TestResponder::new();
    let r = t.r();
    r.insert_v4(TARGET, IFINDEX, SLOT).unwrap();
    assert!(matches!(
        r.insert_v4(TARGET, IFINDEX, OTHER_SLOT),
        Err(ResponderError::SlotMismatch {
            existing_slot: SLOT,
            ..
        })
    ));
    assert!(r.remove_v4(TARGET, IFINDEX).unwrap());
    r.insert_v4(TARGET, IFINDEX, OTHER_SLOT).unwrap();
    let e = r
        .list()
        .unwrap()
        .into_iter()
        .find(|e| e.ip == TARGET)
        .unwrap();
    assert_eq!((e.fence_slot, e.responses_sent), (OTHER_SLOT, 0));
    // The same entry on another interface is a different key.
    r.insert_v4(TARGET, IFINDEX + 1, SLOT).unwrap();
    let v6 = "2001:db8::10".parse().unwrap();
    r.insert_v6(v6, IFINDEX, SLOT).unwrap();
    r.insert_v6(v6, IFINDEX, SLOT).unwrap();
    assert!(matches!(
        r.insert_v6(v6, IFINDEX, OTHER_SLOT),
        Err(ResponderError::SlotMismatch { .. })
    ));
}
