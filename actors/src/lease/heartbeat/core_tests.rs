use super::*;

fn timing() -> LeaseTiming {
    LeaseTiming {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(200),
    }
}

fn core(me: &str) -> HeartbeatCore {
    let mut c = HeartbeatCore::new(me, CoreConfig::new(timing()));
    c.heartbeats_synced();
    c.shards_synced();
    c.eligibility_synced();
    c
}

fn hb(holder: &str, epoch: u32) -> Heartbeat {
    Heartbeat {
        holder: holder.into(),
        epoch,
        evicted_by: None,
    }
}

#[test]
fn joins_then_takes_a_free_claim_and_opens_its_fence_after_the_write() {
    let t0 = Instant::now();
    let mut c = core("node-a");
    c.campaign("ns/web", vec!["ns/web".into()]);
    let a = c.tick(t0);
    assert_eq!(
        a,
        vec![Action::WriteHeartbeat {
            rv: None,
            heartbeat: hb("node-a", 1)
        }]
    );
    let a = c.heartbeat_written(Some((hb("node-a", 1), "1".into())), t0, t0);
    assert_eq!(a, vec![Action::NodeFence(t0 + Duration::from_secs(1))]);
    assert!(c.joined(t0));
    // The bid waits a bid step after joining (nodes starting at the same
    // time see each other's heartbeats first), then goes out; nothing is
    // open yet.
    assert!(c.tick(t0).is_empty());
    assert!(
        !c.tick(t0 + Duration::from_millis(150))
            .iter()
            .any(|a| matches!(a, Action::WriteShard { .. }))
    );
    let t1 = t0 + Duration::from_millis(200);
    let a = c.tick(t1);
    let Some(Action::WriteShard {
        shard,
        rv: None,
        assignments,
        taken,
    }) = a
        .iter()
        .find(|a| matches!(a, Action::WriteShard { .. }))
        .cloned()
    else {
        panic!("expected a shard write, got {a:?}");
    };
    assert_eq!(shard, shard_of("ns/web"));
    assert_eq!(taken, vec![("ns/web".to_string(), TakeReason::New)]);
    assert!(c.held().is_empty());
    let a = c.shard_written(shard, None, Some((assignments, "2".into())), t1);
    assert_eq!(
        a,
        vec![
            Action::OpenClaim("ns/web".into()),
            Action::Leadership {
                claim: "ns/web".into(),
                held: true
            }
        ]
    );
}

#[test]
fn a_claim_of_a_live_node_is_never_taken_and_a_dead_one_is() {
    let t0 = Instant::now();
    let mut c = core("node-b");
    c.campaign("ns/web", vec!["ns/web".into()]);
    c.observe_heartbeat("node-a", Some((hb("node-a", 3), "5".into())), t0);
    let assigned: Shard = [(
        "ns/web".to_string(),
        Assignment {
            node: "node-a".into(),
            epoch: 3,
        },
    )]
    .into();
    c.observe_shard(shard_of("ns/web"), Some((assigned, "6".into())), t0);
    c.tick(t0);
    c.heartbeat_written(Some((hb("node-b", 1), "7".into())), t0, t0);
    // node-a stops renewing; a lease duration later node-b evicts it...
    let mut t = t0;
    let mut evicted = None;
    while t < t0 + Duration::from_secs(4) {
        t += Duration::from_millis(50);
        for a in c.tick(t) {
            match a {
                Action::WriteShard { .. } => panic!("took a live node's claim at {t:?}"),
                Action::Evict {
                    node,
                    rv,
                    heartbeat,
                } => evicted = Some((node, rv, heartbeat, t)),
                Action::WriteHeartbeat { heartbeat, rv } => {
                    c.heartbeat_written(
                        Some((heartbeat, rv.map_or("8".into(), |r| r + "0"))),
                        t,
                        t,
                    );
                }
                _ => {}
            }
        }
        if evicted.is_some() {
            break;
        }
    }
    let (node, rv, heartbeat, at) = evicted.expect("evicted");
    assert_eq!((node.as_str(), rv.as_str()), ("node-a", "5"));
    assert!(
        at >= t0 + Duration::from_secs(3),
        "not before a lease duration"
    );
    c.eviction_done(&node, Some((heartbeat, "99".into())), at);
    // ...and takes the claim over (after the batch delay).
    assert!(
        c.tick(at)
            .iter()
            .all(|a| !matches!(a, Action::WriteShard { .. }))
    );
    let a = c.tick(at + Duration::from_millis(20));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::WriteShard { taken, .. }
            if taken.len() == 1 && taken[0].0 == "ns/web"
                && matches!(taken[0].1, TakeReason::Takeover { .. }))),
        "{a:?}"
    );
}

/// `node-a` joined (heartbeat at resourceVersion "1"), bid for `ns/web`
/// once its join grace passed and had the record write answered ("2"):
/// the core, that instant, and the actions of that answer.
fn holding_web() -> (HeartbeatCore, Instant, Vec<Action>) {
    let t0 = Instant::now();
    let mut c = core("node-a");
    c.campaign("ns/web", vec!["ns/web".into()]);
    c.tick(t0);
    c.heartbeat_written(Some((hb("node-a", 1), "1".into())), t0, t0);
    // Seen free now, bid once the join grace has passed.
    c.tick(t0);
    let t1 = t0 + Duration::from_millis(200);
    let Some(Action::WriteShard {
        shard, assignments, ..
    }) = c
        .tick(t1)
        .into_iter()
        .find(|a| matches!(a, Action::WriteShard { .. }))
    else {
        panic!("no bid");
    };
    let a = c.shard_written(shard, None, Some((assignments, "2".into())), t1);
    (c, t1, a)
}

#[test]
fn release_closes_the_fence_before_the_record_is_written() {
    let (mut c, t1, _) = holding_web();
    c.withdraw("ns/web");
    let a = c.tick(t1);
    assert_eq!(
        a,
        vec![
            Action::Leadership {
                claim: "ns/web".into(),
                held: false
            },
            Action::CloseClaim {
                claim: "ns/web".into(),
                release: false
            },
            Action::CloseClaim {
                claim: "ns/web".into(),
                release: true
            },
        ]
    );
    // No record write before the datapath confirmed the close.
    assert!(
        c.tick(t1)
            .iter()
            .all(|a| !matches!(a, Action::WriteShard { .. }))
    );
    c.claim_closed("ns/web");
    let a = c.tick(t1);
    assert!(
        matches!(a.as_slice(), [Action::WriteShard { assignments, .. }] if assignments.is_empty()),
        "{a:?}"
    );
}

#[test]
fn a_node_that_is_a_candidate_for_nothing_is_not_waited_for() {
    let t0 = Instant::now();
    // A claim for which the other member outranks node-a.
    let claim = (0..100)
        .map(|i| format!("ns/svc-{i}"))
        .find(|k| rendezvous::rank(k, ["node-a", "node-c"])[0] == "node-c")
        .expect("a claim node-c outranks");
    let bids_at = |idle: bool| {
        let mut c = core("node-a");
        c.observe_heartbeat("node-c", Some((hb("node-c", 1), "5".into())), t0);
        c.set_idle("node-c", idle);
        c.campaign(&claim, vec![claim.clone()]);
        c.tick(t0);
        c.heartbeat_written(Some((hb("node-a", 1), "1".into())), t0, t0);
        (0..=100)
            .map(|ms| t0 + Duration::from_millis(ms * 5))
            .find(|t| {
                c.tick(*t)
                    .iter()
                    .any(|a| matches!(a, Action::WriteShard { .. }))
            })
            .map(|t| t - t0)
    };
    // Every new claim waits a bid step after joining (200 ms); node-c
    // would bid first: node-a waits another bid step.
    assert!(bids_at(false).expect("bids") >= Duration::from_millis(400));
    // node-c's heartbeat says it is a candidate for nothing: no more wait.
    assert!(bids_at(true).expect("bids") < Duration::from_millis(250));
}

/// After `release_all` (shutdown: fences closed, the release about to be
/// written, possibly over a renewal of its own that crossed it), nothing
/// opens a fence again: not a campaign, not that renewal's answer.
#[test]
fn after_release_all_nothing_opens_again() {
    let (mut c, t1, a) = holding_web();
    assert!(a.contains(&Action::OpenClaim("ns/web".into())), "{a:?}");
    let (rv, released) = c.release_all().expect("a release to write");
    assert_eq!((rv.as_str(), released.holder.as_str()), ("1", ""));
    assert!(c.held().is_empty());
    // Campaigns that were on their way, and a renewal that crossed.
    c.campaign("ns/web", vec!["ns/web".into()]);
    let t2 = t1 + Duration::from_millis(50);
    let a = c.heartbeat_written(Some((hb("node-a", 1), "3".into())), t2, t2);
    assert!(
        !a.iter().any(|a| matches!(a, Action::OpenClaim(_))),
        "{a:?}"
    );
    let a = c.tick(t2 + Duration::from_millis(500));
    assert!(
        !a.iter().any(|a| matches!(a, Action::OpenClaim(_))),
        "{a:?}"
    );
    assert!(c.held().is_empty());
}
