//! The test API server's faults as kube-rs clients see them: one client
//! paused (until resumed, or for a while; abandoned requests dropped),
//! everyone paused, a restart with state kept, watch events delivered late
//! to one client, and the write history with monotonic commit times.
//! Each test also shows who is not affected.

use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use integration::apiserver::{ClientMatch, TestApiServer, WriteRecord, monotonic_ns, raw_request};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(10);
/// User-Agents as agents send them.
const NODE_A: &str = "l2announcer/0.1.0 (node-a)";
const NODE_B: &str = "l2announcer/0.1.0 (node-b)";

async fn server() -> TestApiServer {
    TestApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start server")
}

fn leases(srv: &TestApiServer, user_agent: &str) -> Api<Lease> {
    Api::namespaced(
        srv.client_with_user_agent(user_agent).unwrap(),
        "kube-system",
    )
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
    }))
    .unwrap()
}

fn holder(l: &Lease) -> &str {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("")
}

/// `l` with its holder changed, keeping its resourceVersion (so a replace
/// is a compare-and-swap on it).
fn held_by(l: &Lease, who: &str) -> Lease {
    let mut l = l.clone();
    l.spec.get_or_insert_with(Default::default).holder_identity = Some(who.to_string());
    l
}

/// Polls `cond` every 5 ms until it holds; panics after the deadline.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_held(srv: &TestApiServer, n: usize) {
    wait_until(&format!("{n} requests are held"), || {
        srv.held_requests() == n
    })
    .await;
}

type Events = std::pin::Pin<Box<dyn Stream<Item = kube::Result<WatchEvent<Lease>>> + Send>>;

/// A raw watch (no bookmarks, so every delivery is an object event).
async fn watch(api: &Api<Lease>, from: &str) -> Events {
    api.watch(&WatchParams::default().disable_bookmarks(), from)
        .await
        .unwrap()
        .boxed()
}

/// The next event as (type, name, holder).
async fn next_event(events: &mut Events) -> (&'static str, String, String) {
    let e = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("a watch event within the deadline")
        .expect("the watch goes on")
        .expect("a good event");
    let (kind, l) = match &e {
        WatchEvent::Added(l) => ("ADDED", l),
        WatchEvent::Modified(l) => ("MODIFIED", l),
        WatchEvent::Deleted(l) => ("DELETED", l),
        other => panic!("unexpected event {other:?}"),
    };
    (
        kind,
        l.metadata.name.clone().unwrap_or_default(),
        holder(l).to_string(),
    )
}

fn ev(kind: &'static str, name: &str, holder: &str) -> (&'static str, String, String) {
    (kind, name.to_string(), holder.to_string())
}

fn lease_writes(srv: &TestApiServer) -> Vec<WriteRecord> {
    srv.write_history()
        .into_iter()
        .filter(|w| w.resource == "leases")
        .collect()
}

fn write_holder(w: &WriteRecord) -> &str {
    w.object
        .pointer("/spec/holderIdentity")
        .and_then(|h| h.as_str())
        .unwrap_or("")
}

#[tokio::test]
async fn pausing_one_client_holds_its_requests_and_watch_and_no_one_elses() {
    let srv = server().await;
    let a = leases(&srv, NODE_A);
    let b = leases(&srv, NODE_B);
    let first = a
        .create(&PostParams::default(), &lease("web", "node-a"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    let mut a_events = watch(&a, &rv).await;
    let mut b_events = watch(&b, &rv).await;

    srv.pause_client("(node-a)", None);
    let a_get = tokio::spawn({
        let a = a.clone();
        async move { a.get("web").await }
    });
    // A renewal that compares-and-swaps on the version it last read.
    let a_renew = tokio::spawn({
        let a = a.clone();
        let renewal = held_by(&first, "node-a");
        async move { a.replace("web", &PostParams::default(), &renewal).await }
    });
    wait_held(&srv, 2).await;

    // node-b is served as usual: it takes the lease over and its watch sees
    // that at once.
    let current = b.get("web").await.unwrap();
    b.replace("web", &PostParams::default(), &held_by(&current, "node-b"))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut b_events).await,
        ev("MODIFIED", "web", "node-b")
    );
    // node-a's watch holds the event back, its requests stay unanswered.
    wait_held(&srv, 3).await;
    assert!(a_events.next().now_or_never().is_none());
    assert!(!a_get.is_finished() && !a_renew.is_finished());

    // Resumed, node-a's held requests are handled now: the read sees the
    // takeover and the stale renewal is a conflict; its watch catches up.
    srv.resume_client("(node-a)");
    let got = a_get.await.unwrap().unwrap();
    assert_eq!(holder(&got), "node-b");
    match a_renew.await.unwrap() {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        next_event(&mut a_events).await,
        ev("MODIFIED", "web", "node-b")
    );
    assert_eq!(srv.held_requests(), 0);

    // A request its client gives up on during the pause is dropped unanswered
    // and has no effect, even after the pause ends.
    srv.pause_client("(node-a)", None);
    let grab = held_by(&got, "node-a");
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        a.replace("web", &PostParams::default(), &grab),
    )
    .await;
    assert!(abandoned.is_err(), "a paused request got an answer");
    wait_held(&srv, 0).await;
    srv.resume_client("(node-a)");
    assert_eq!(holder(&a.get("web").await.unwrap()), "node-b");
    assert!(
        lease_writes(&srv)
            .iter()
            .all(|w| w.user_agent != NODE_A || w.kind == "ADDED"),
        "node-a's abandoned write took effect: {:?}",
        lease_writes(&srv)
    );

    // A pause for a while lifts itself; node-b goes on meanwhile.
    let paused_at = Instant::now();
    srv.pause_client("(node-a)", Some(Duration::from_millis(500)));
    b.get("web").await.unwrap();
    a.get("web").await.unwrap();
    assert!(paused_at.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn pausing_everyone_holds_every_client_but_not_the_control_endpoints() {
    let srv = server().await;
    let a = leases(&srv, NODE_A);
    let b = leases(&srv, NODE_B);
    a.create(&PostParams::default(), &lease("web", "node-a"))
        .await
        .unwrap();
    // Bookmarks every 50 ms give each watch something to deliver.
    srv.set_bookmark_interval(Duration::from_millis(50));
    let mut a_watch = a.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    let mut b_watch = b.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    for w in [&mut a_watch, &mut b_watch] {
        let first = tokio::time::timeout(DEADLINE, w.next()).await.unwrap();
        assert!(matches!(first, Some(Ok(WatchEvent::Added(_)))));
    }

    srv.pause(ClientMatch::All);
    let gets: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|api| tokio::spawn(async move { api.get("web").await }))
        .collect();
    // Two requests and both watches' next deliveries.
    wait_held(&srv, 4).await;
    let health = raw_request(srv.addr(), "GET", "/__control/health", &[], b"")
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    assert!(gets.iter().all(|g| !g.is_finished()));

    srv.unpause_all();
    wait_held(&srv, 0).await;
    for g in gets {
        assert_eq!(holder(&g.await.unwrap().unwrap()), "node-a");
    }
    for w in [&mut a_watch, &mut b_watch] {
        let next = tokio::time::timeout(DEADLINE, w.next()).await.unwrap();
        assert!(matches!(next, Some(Ok(WatchEvent::Bookmark(_)))));
    }

    // A pause of everyone for a while ends by itself.
    let paused_at = Instant::now();
    srv.pause_for(ClientMatch::All, Duration::from_millis(300));
    a.get("web").await.unwrap();
    assert!(paused_at.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn restart_closes_everything_and_serves_the_same_objects_again() {
    let srv = server().await;
    let a = leases(&srv, NODE_A);
    let b = leases(&srv, NODE_B);
    let created = a
        .create(&PostParams::default(), &lease("web", "node-a"))
        .await
        .unwrap();
    let rv_before: u64 = created
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let mut a_events = watch(&a, &rv_before.to_string()).await;
    wait_until("the watch is registered", || srv.watch_count() == 1).await;

    let downtime = Duration::from_secs(1);
    let during = async {
        // The open watch ends, as its connection closes.
        let end = tokio::time::timeout(DEADLINE, a_events.next())
            .await
            .expect("the watch ends");
        assert!(
            !matches!(end, Some(Ok(_))),
            "the watch delivered {end:?} instead of ending"
        );
        // Then nobody listens on the address while it is down.
        let deadline = Instant::now() + downtime / 2;
        while tokio::net::TcpStream::connect(srv.addr()).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting connections");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(srv.watch_count(), 0);
    };
    let (restarted, ()) = tokio::join!(srv.restart(downtime), during);
    restarted.unwrap();

    // The same object (same uid), and versions go on from where they were.
    let after = b.get("web").await.unwrap();
    assert_eq!(after.metadata.uid, created.metadata.uid);
    let taken = b
        .replace("web", &PostParams::default(), &held_by(&after, "node-b"))
        .await
        .unwrap();
    let rv_after: u64 = taken
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv_after > rv_before);
    // A client resuming its watch from its last version gets what it missed.
    let mut resumed = watch(&a, &rv_before.to_string()).await;
    assert_eq!(
        next_event(&mut resumed).await,
        ev("MODIFIED", "web", "node-b")
    );
}

#[tokio::test]
async fn delayed_watches_reach_one_client_late_and_others_at_once() {
    let srv = server().await;
    let a = leases(&srv, NODE_A);
    let b = leases(&srv, NODE_B);
    let created = a
        .create(&PostParams::default(), &lease("web", "node-a"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let delay = Duration::from_secs(2);
    srv.delay_watches(ClientMatch::UserAgent("(node-a)".into()), delay);
    let mut a_events = watch(&a, &rv).await;
    let mut b_events = watch(&b, &rv).await;

    b.replace("web", &PostParams::default(), &held_by(&created, "node-b"))
        .await
        .unwrap();
    let committed = lease_writes(&srv).last().unwrap().committed_mono_ns;
    assert_eq!(
        next_event(&mut b_events).await,
        ev("MODIFIED", "web", "node-b")
    );
    assert!(a_events.next().now_or_never().is_none());
    // node-a's requests are not delayed: it reads the takeover before its
    // watch tells it.
    assert_eq!(holder(&a.get("web").await.unwrap()), "node-b");
    let read_done = monotonic_ns();
    assert!(a_events.next().now_or_never().is_none());
    assert_eq!(
        next_event(&mut a_events).await,
        ev("MODIFIED", "web", "node-b")
    );
    let a_saw = monotonic_ns();
    assert!(
        a_saw - committed >= delay.as_nanos() as u64,
        "delivered {} ns after the commit",
        a_saw - committed
    );
    assert!(read_done < a_saw);
}

#[tokio::test]
async fn write_history_has_every_commit_with_its_monotonic_time_and_writer() {
    let srv = server().await;
    let a = leases(&srv, NODE_A);
    let b = leases(&srv, NODE_B);
    let since = Instant::now();
    let before = monotonic_ns();
    let created = a
        .create(&PostParams::default(), &lease("web", "node-a"))
        .await
        .unwrap();
    // A no-op update and a stale one commit nothing.
    a.replace("web", &PostParams::default(), &created)
        .await
        .unwrap();
    let taken = b
        .replace("web", &PostParams::default(), &held_by(&created, "node-b"))
        .await
        .unwrap();
    let stale = a
        .replace("web", &PostParams::default(), &held_by(&created, "node-a"))
        .await;
    assert!(matches!(stale, Err(kube::Error::Api(s)) if s.code == 409));
    let after = monotonic_ns();
    let elapsed = since.elapsed();

    let writes = lease_writes(&srv);
    let summary: Vec<_> = writes
        .iter()
        .map(|w| {
            (
                w.kind.as_str(),
                w.namespace.as_str(),
                w.name.as_str(),
                w.user_agent.as_str(),
                write_holder(w),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ADDED", "kube-system", "web", NODE_A, "node-a"),
            ("MODIFIED", "kube-system", "web", NODE_B, "node-b"),
        ]
    );
    // The write that changed the holder, and exactly when it committed.
    let takeover = &writes[1];
    assert_eq!(
        Some(takeover.resource_version.to_string()),
        taken.metadata.resource_version
    );
    assert!(before <= writes[0].committed_mono_ns);
    assert!(writes[0].committed_mono_ns < takeover.committed_mono_ns);
    assert!(takeover.committed_mono_ns <= after);
    // Read between two Instants, the clock advanced no more than they did.
    assert!(after - before <= elapsed.as_nanos() as u64);

    // Over HTTP as well.
    let raw = raw_request(srv.addr(), "GET", "/__control/writes", &[], b"")
        .await
        .unwrap();
    let over_http: Vec<WriteRecord> = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(over_http, srv.write_history());
    srv.clear_write_history();
    assert!(srv.write_history().is_empty());
}
