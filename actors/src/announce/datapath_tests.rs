use super::*;
use crate::announce::maps::MemoryDatapath;

const NOW: u64 = 1_000_000_000;
const LATER: u64 = 5_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn device(name: &str, index: u32, mac: &str) -> DeviceRow {
    DeviceRow {
        name: name.to_string(),
        index,
        selected: true,
        kind: "veth".to_string(),
        mtu: 1500,
        hw_addr: mac.to_string(),
        flags: vec!["up".to_string()],
        addresses: Vec::new(),
        master_index: None,
        oper_state: "up".to_string(),
    }
}

fn eth0() -> DeviceRow {
    device("eth0", 2, "02:00:00:00:00:01")
}

/// A datapath as the per-service mode runs it: node fence open for good.
fn fresh() -> (MemoryDatapath, Datapath<MemoryDatapath>) {
    let mem = MemoryDatapath::with_interfaces(["eth0", "eth1"]);
    mem.state().node_fence = u64::MAX;
    let dp = Datapath::new(mem.clone(), AttachMode::Tc);
    (mem, dp)
}

#[test]
fn a_new_entry_answers_only_under_its_open_claim() {
    let (mem, mut dp) = fresh();
    let a = ip("192.0.2.10");
    assert_eq!(
        dp.apply_row(a, "default/web", false, &eth0())
            .expect("apply"),
        Applied::Started
    );
    assert!(
        !mem.state().answers(a, 2, NOW),
        "closed until the claim opens"
    );
    assert_eq!(dp.answerable(a, 2, NOW), None);
    assert_eq!(dp.open("default/web", LATER).expect("open"), vec![(a, 2)]);
    assert!(mem.state().answers(a, 2, NOW));
    assert_eq!(dp.answerable(a, 2, NOW), Some([2, 0, 0, 0, 0, 1]));
    assert_eq!(dp.answerable(a, 2, LATER), None, "past the deadline");
    // The node fence gates it too (a lapsed heartbeat).
    mem.state().node_fence = NOW;
    assert_eq!(dp.answerable(a, 2, NOW), None, "node fence closed");
    mem.state().node_fence = u64::MAX;
    // A fence given before the row arrives applies to it at once.
    let b = ip("2001:db8::10");
    dp.apply_row(b, "default/web", false, &eth0())
        .expect("apply");
    assert!(mem.state().answers(b, 2, NOW));
    dp.close("default/web").expect("close");
    assert!(!mem.state().answers(a, 2, NOW) && !mem.state().answers(b, 2, NOW));
    // Applying the same row again changes nothing.
    assert_eq!(
        dp.apply_row(a, "default/web", false, &eth0())
            .expect("apply"),
        Applied::Unchanged
    );
}

#[test]
fn every_entry_has_its_own_slot() {
    let (mem, mut dp) = fresh();
    for (i, s) in ["192.0.2.1", "192.0.2.2", "2001:db8::3"].iter().enumerate() {
        dp.apply_row(ip(s), "ns/a", false, &eth0()).expect("apply");
        assert_eq!(mem.state().entries.len(), i + 1);
    }
    let slots: BTreeSet<u32> = mem.state().entries.values().map(|(s, _)| *s).collect();
    assert_eq!(slots.len(), 3);
    assert_eq!(mem.state().attached.len(), 1, "one attachment for eth0");
}

fn with_previous_run(
    entries: &[(&str, u32, u32, u64)],
) -> (MemoryDatapath, Datapath<MemoryDatapath>) {
    let (mem, mut dp) = fresh();
    {
        let mut s = mem.state();
        for (addr, ifindex, slot, deadline) in entries {
            s.entries.insert((ip(addr), *ifindex), (*slot, 7));
            s.fences.insert(*slot, *deadline);
        }
    }
    assert_eq!(dp.recover().expect("recover"), entries.len());
    (mem, dp)
}

#[test]
fn entries_of_an_earlier_run_are_kept_but_never_rearmed() {
    let a = ip("192.0.2.10");
    let (mem, mut dp) = with_previous_run(&[("192.0.2.10", 2, 9, NOW + 100)]);
    // The row the earlier run left: kept as it is.
    assert_eq!(
        dp.apply_row(a, "default/web", true, &eth0())
            .expect("apply"),
        Applied::Kept
    );
    // This run opening that claim does not re-arm the inherited entry.
    dp.open("default/web", LATER).expect("open");
    assert_eq!(mem.state().fences[&9], NOW + 100);
    assert_eq!(dp.answerable(a, 2, NOW), None, "never announced");
    // An inherited row whose entry is not in the maps (reboot) adds nothing.
    let b = ip("192.0.2.11");
    assert_eq!(
        dp.apply_row(b, "default/web", true, &eth0())
            .expect("apply"),
        Applied::Kept
    );
    assert!(!mem.state().entries.contains_key(&(b, 2)));
    // Once this run confirms the claim and writes the row, the entry is
    // this run's: same slot, counter untouched, fence the claim's.
    assert_eq!(
        dp.apply_row(a, "default/web", false, &eth0())
            .expect("apply"),
        Applied::Started
    );
    assert_eq!(mem.state().entries[&(a, 2)], (9, 7));
    assert_eq!(mem.state().fences[&9], LATER);
}

#[test]
fn a_slot_a_pinned_entry_uses_is_never_given_to_another_entry() {
    let (mem, mut dp) = with_previous_run(&[("192.0.2.10", 2, 0, NOW), ("192.0.2.11", 2, 2, NOW)]);
    for k in 0..5 {
        dp.apply_row(ip(&format!("198.51.100.{k}")), "ns/x", false, &eth0())
            .expect("apply");
    }
    let s = mem.state();
    let mut by_slot: BTreeMap<u32, usize> = BTreeMap::new();
    for (slot, _) in s.entries.values() {
        *by_slot.entry(*slot).or_default() += 1;
    }
    assert!(by_slot.values().all(|n| *n == 1), "{by_slot:?}");
    assert_eq!(s.fences[&0], NOW, "the inherited entries' deadlines stay");
    assert_eq!(s.fences[&2], NOW);
}

#[test]
fn an_inherited_shared_slot_is_split_before_it_is_armed() {
    // An older agent put both entries of a claim under one slot.
    let (mem, mut dp) = with_previous_run(&[
        ("192.0.2.10", 2, 4, NOW + 100),
        ("2001:db8::10", 2, 4, NOW + 100),
    ]);
    dp.open("ns/a", LATER).expect("open");
    dp.apply_row(ip("192.0.2.10"), "ns/a", false, &eth0())
        .expect("apply");
    let s = mem.state();
    let (slot, _) = s.entries[&(ip("192.0.2.10"), 2)];
    assert_ne!(slot, 4, "moved to a slot of its own");
    assert_eq!(s.fences[&slot], LATER);
    assert_eq!(
        s.fences[&4],
        NOW + 100,
        "the other inherited entry is not re-armed"
    );
}

#[test]
fn prune_removes_what_no_row_wants_and_frees_slots_closed() {
    let (mem, mut dp) = with_previous_run(&[("192.0.2.50", 2, 3, LATER)]);
    let a = ip("192.0.2.10");
    dp.open("ns/a", LATER).expect("open");
    dp.apply_row(a, "ns/a", false, &eth0()).expect("apply");
    let wanted: BTreeSet<(IpAddr, u32)> = [(a, 2)].into();
    dp.prune(&wanted).expect("prune");
    assert_eq!(
        mem.state().entries.keys().copied().collect::<Vec<_>>(),
        vec![(a, 2)]
    );
    assert_eq!(mem.state().fences[&3], 0, "freed slot closed");
    dp.remove(a, "eth0", None).expect("remove");
    assert!(mem.state().entries.is_empty());
    assert!(mem.state().attached.is_empty(), "last user gone: detached");
    // A freed slot comes back closed for the next entry.
    dp.close("ns/a").expect("close");
    dp.apply_row(ip("192.0.2.20"), "ns/b", false, &eth0())
        .expect("apply");
    assert!(!mem.state().answers(ip("192.0.2.20"), 2, NOW));
}

#[test]
fn a_changed_mac_is_followed_and_its_entries_announced_again() {
    let (mem, mut dp) = fresh();
    let a = ip("192.0.2.10");
    dp.open("ns/a", LATER).expect("open");
    dp.apply_row(a, "ns/a", false, &eth0()).expect("apply");
    assert_eq!(dp.follow_mac(&eth0()).expect("same"), None);
    let moved = device("eth0", 2, "02:00:00:00:00:99");
    assert_eq!(dp.follow_mac(&moved).expect("follow"), Some(vec![(a, 2)]));
    assert_eq!(mem.state().attached[&2].1, [2, 0, 0, 0, 0, 0x99]);
    assert_eq!(dp.answerable(a, 2, NOW), Some([2, 0, 0, 0, 0, 0x99]));
}

#[test]
fn slot_allocator_reuses_and_reserves() {
    let mut s = SlotAllocator::default();
    s.reserve(3);
    s.reserve(3);
    let got: Vec<u32> = (0..4).filter_map(|_| s.allocate()).collect();
    assert_eq!(got, vec![0, 1, 2, 4]);
    s.release(3);
    assert_eq!(s.users(3), 1, "still used by the second entry");
    s.release(3);
    assert_eq!(s.allocate(), Some(3));
}

#[test]
fn entries_of_a_node_heartbeat_run_are_capped_at_its_node_fence() {
    // The earlier run (node-heartbeat): slot open until released, node
    // fence at NOW + 100.
    let mem = MemoryDatapath::with_interfaces(["eth0"]);
    {
        let mut s = mem.state();
        s.entries.insert((ip("192.0.2.10"), 2), (6, 0));
        s.fences.insert(6, u64::MAX);
        s.node_fence = NOW + 100;
    }
    let mut dp = Datapath::new(mem.clone(), AttachMode::Tc);
    dp.recover().expect("recover");
    assert_eq!(mem.state().fences[&6], NOW + 100);
    // This run extends the node fence: the inherited entry still stops at
    // its old deadline.
    dp.maps_mut().set_node_fence(LATER).expect("node fence");
    assert!(mem.state().answers(ip("192.0.2.10"), 2, NOW));
    assert!(!mem.state().answers(ip("192.0.2.10"), 2, NOW + 100));
}
