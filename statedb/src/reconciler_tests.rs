//! Unit tests of the reconciler, against an in-memory target.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::*;
use crate::{Index, Row, Table, TableDef, ToKey};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    key: String,
    value: u32,
    status: Status,
}

impl Row for Entry {
    fn header() -> Vec<&'static str> {
        vec!["Key", "Value", "Status"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.key.clone(),
            self.value.to_string(),
            self.status.to_string(),
        ]
    }
}

impl Reconcilable for Entry {
    fn status(&self) -> &Status {
        &self.status
    }
    fn set_status(&mut self, status: Status) {
        self.status = status;
    }
}

const KEY: Index<Entry> = Index::primary("key", |e| e.key.to_key());
const ENTRIES: TableDef<Entry> = TableDef {
    name: "entries",
    primary: KEY,
    secondary: &[],
};

/// What the target holds and how it was called; shared with the test.
#[derive(Default)]
struct MapState {
    map: BTreeMap<String, u32>,
    updates: usize,
    deletes: usize,
    prunes: usize,
    failing: BTreeSet<String>,
    fail_prune: bool,
}

#[derive(Clone, Default)]
struct MapTarget(Arc<Mutex<MapState>>);

impl MapTarget {
    fn state(&self) -> std::sync::MutexGuard<'_, MapState> {
        self.0.lock().unwrap()
    }
}

impl Target<Entry> for MapTarget {
    type Error = String;
    fn update(&mut self, row: &Entry) -> Result<(), String> {
        let mut s = self.state();
        s.updates += 1;
        if s.failing.contains(&row.key) {
            return Err(format!("{} refused", row.key));
        }
        s.map.insert(row.key.clone(), row.value);
        Ok(())
    }
    fn delete(&mut self, row: &Entry) -> Result<(), String> {
        let mut s = self.state();
        s.deletes += 1;
        if s.failing.contains(&row.key) {
            return Err(format!("{} refused", row.key));
        }
        s.map.remove(&row.key);
        Ok(())
    }
    fn prune(&mut self, desired: &[Entry]) -> Result<(), String> {
        let mut s = self.state();
        s.prunes += 1;
        if s.fail_prune {
            return Err("prune refused".into());
        }
        let keep: BTreeSet<&str> = desired.iter().map(|e| e.key.as_str()).collect();
        s.map.retain(|k, _| keep.contains(k.as_str()));
        Ok(())
    }
}

const FAST: ReconcilerConfig = ReconcilerConfig {
    full_interval: Duration::from_secs(3600),
    retry_min: Duration::from_millis(5),
    retry_max: Duration::from_millis(20),
};

fn setup() -> (Db, Table<Entry>, MapTarget, Reconciler<Entry, MapTarget>) {
    let db = Db::open_temporary().unwrap();
    let table = Table::open(&db, ENTRIES).unwrap();
    let target = MapTarget::default();
    let rec = Reconciler::new(&db, &table, target.clone(), FAST);
    (db, table, target, rec)
}

fn put(db: &Db, t: &Table<Entry>, key: &str, value: u32) {
    let mut txn = db.write_txn();
    t.insert(
        &mut txn,
        Entry {
            key: key.into(),
            value,
            status: Status::Pending,
        },
    )
    .unwrap();
    txn.commit().unwrap();
}

fn remove(db: &Db, t: &Table<Entry>, key: &str) {
    let mut txn = db.write_txn();
    t.delete_key(&mut txn, key).unwrap();
    txn.commit().unwrap();
}

fn status(db: &Db, t: &Table<Entry>, key: &str) -> Status {
    t.get(db, KEY, key).unwrap().unwrap().row.status
}

/// Sleeps until the reconciler's earliest retry is due.
fn until_retry_due(rec: &Reconciler<Entry, MapTarget>) {
    let due = rec.next_retry().expect("a retry is queued");
    std::thread::sleep(due.saturating_duration_since(Instant::now()));
}

#[test]
fn backoff_doubles_and_caps() {
    let c = ReconcilerConfig {
        full_interval: Duration::from_secs(1),
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
    };
    let got: Vec<u128> = (1..=6).map(|a| c.backoff(a).as_millis()).collect();
    assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    assert_eq!(c.backoff(u32::MAX), Duration::from_secs(1));
}

#[test]
fn pending_rows_are_pushed_once_and_marked_done() {
    let (db, t, target, mut rec) = setup();
    put(&db, &t, "a", 1);
    put(&db, &t, "b", 2);
    let round = rec.reconcile_incremental().unwrap();
    assert_eq!(
        round,
        Round {
            updated: 2,
            ..Round::default()
        }
    );
    assert_eq!(status(&db, &t, "a"), Status::Done);
    assert_eq!(
        target.state().map,
        BTreeMap::from([("a".into(), 1), ("b".into(), 2)])
    );

    // The status writes show up as changes but trigger nothing.
    let round = rec.reconcile_incremental().unwrap();
    assert_eq!(round, Round::default());
    assert_eq!(target.state().updates, 2);

    put(&db, &t, "a", 10);
    rec.reconcile_incremental().unwrap();
    assert_eq!(target.state().map["a"], 10);
    assert_eq!(target.state().updates, 3);
}

#[test]
fn deletes_reach_the_target() {
    let (db, t, target, mut rec) = setup();
    put(&db, &t, "a", 1);
    rec.reconcile_incremental().unwrap();
    remove(&db, &t, "a");
    let round = rec.reconcile_incremental().unwrap();
    assert_eq!(round.deleted, 1);
    assert!(target.state().map.is_empty());
}

#[test]
fn failures_are_retried_with_backoff_and_counted() {
    let (db, t, target, mut rec) = setup();
    target.state().failing.insert("a".into());
    put(&db, &t, "a", 1);
    assert_eq!(rec.reconcile_incremental().unwrap().errors, 1);
    assert_eq!(
        status(&db, &t, "a"),
        Status::Error {
            message: "a refused".into(),
            attempts: 1
        }
    );
    let due = rec.next_retry().unwrap();
    assert!(due > Instant::now(), "retry must wait for its backoff");
    // Not due yet: nothing happens (the Error status change is skipped).
    rec.reconcile_incremental().unwrap();
    assert_eq!(target.state().updates, 1);

    until_retry_due(&rec);
    rec.reconcile_incremental().unwrap();
    assert_eq!(target.state().updates, 2);
    assert!(matches!(
        status(&db, &t, "a"),
        Status::Error { attempts: 2, .. }
    ));

    target.state().failing.clear();
    until_retry_due(&rec);
    let round = rec.reconcile_incremental().unwrap();
    assert_eq!(round.updated, 1);
    assert_eq!(status(&db, &t, "a"), Status::Done);
    assert_eq!(rec.pending_retries(), 0);
    assert_eq!(target.state().map["a"], 1);
}

#[test]
fn failed_deletes_are_retried_unless_the_row_returns() {
    let (db, t, target, mut rec) = setup();
    put(&db, &t, "a", 1);
    put(&db, &t, "b", 2);
    rec.reconcile_incremental().unwrap();
    target
        .state()
        .failing
        .extend(["a".to_string(), "b".to_string()]);
    remove(&db, &t, "a");
    remove(&db, &t, "b");
    assert_eq!(rec.reconcile_incremental().unwrap().errors, 2);
    assert_eq!(rec.pending_retries(), 2);

    target.state().failing.clear();
    put(&db, &t, "b", 3); // back before the retry: must not be deleted
    until_retry_due(&rec);
    rec.reconcile_incremental().unwrap();
    assert_eq!(target.state().map, BTreeMap::from([("b".into(), 3)]));
    assert_eq!(rec.pending_retries(), 0);
}

#[test]
fn full_pass_prunes_and_repairs_drift() {
    let (db, t, target, mut rec) = setup();
    put(&db, &t, "a", 1);
    put(&db, &t, "b", 2);
    rec.reconcile_incremental().unwrap();
    {
        let mut s = target.state();
        s.map.remove("a"); // lost from the target
        s.map.insert("stray".into(), 9); // not desired
    }
    let round = rec.reconcile_full().unwrap();
    assert_eq!((round.pruned, round.updated), (1, 2));
    assert_eq!(
        target.state().map,
        BTreeMap::from([("a".into(), 1), ("b".into(), 2)])
    );
    // Statuses did not change, so nothing was rewritten.
    assert_eq!(t.revision(&db), 4);
}

#[test]
fn failed_prune_is_retried_as_a_full_pass() {
    let (db, t, target, mut rec) = setup();
    put(&db, &t, "a", 1);
    target.state().fail_prune = true;
    target.state().map.insert("stray".into(), 9);
    assert_eq!(rec.reconcile_full().unwrap().errors, 1);
    target.state().fail_prune = false;
    until_retry_due(&rec);
    let round = rec.reconcile_incremental().unwrap();
    assert_eq!(round.pruned, 1);
    assert!(!target.state().map.contains_key("stray"));
    assert_eq!(status(&db, &t, "a"), Status::Done);
}

#[tokio::test]
async fn run_reconciles_until_shutdown() {
    let db = Db::open_temporary().unwrap();
    let t = Table::open(&db, ENTRIES).unwrap();
    put(&db, &t, "early", 1);
    let target = MapTarget::default();
    let rec = Reconciler::new(&db, &t, target.clone(), FAST);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(rec.run(async {
        let _ = stopped.await;
    }));

    let mut watch = t.changes(&db);
    put(&db, &t, "late", 2);
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            // Drain first, then check: a change after the drain wakes `wait`.
            watch.next_batch().unwrap();
            let rows = t.list(&db).unwrap();
            if rows.len() == 2 && rows.iter().all(|e| e.row.status == Status::Done) {
                break;
            }
            watch.wait().await;
        }
    })
    .await
    .expect("both rows reconciled");
    assert_eq!(target.state().map.len(), 2);

    stop.send(()).unwrap();
    tokio::time::timeout(deadline, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn full_trigger_runs_a_full_pass() {
    let db = Db::open_temporary().unwrap();
    let t = Table::open(&db, ENTRIES).unwrap();
    put(&db, &t, "a", 1);
    put(&db, &t, "b", 2);
    let target = MapTarget::default();
    target.state().failing.insert("b".into());
    let trigger = Arc::new(tokio::sync::Notify::new());
    // Retries and the periodic pass are an hour away: only the trigger
    // can make the reconciler look at the target again.
    let slow = ReconcilerConfig {
        full_interval: Duration::from_secs(3600),
        retry_min: Duration::from_secs(3600),
        retry_max: Duration::from_secs(3600),
    };
    let rec = Reconciler::new(&db, &t, target.clone(), slow).with_full_trigger(trigger.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(rec.run(async {
        let _ = stopped.await;
    }));
    let deadline = Duration::from_secs(10);
    let wait_prunes = |n: usize| {
        let target = target.clone();
        async move {
            tokio::time::timeout(deadline, async {
                while target.state().prunes < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no full pass number {n}"));
        }
    };
    wait_prunes(1).await;
    assert!(!target.state().map.contains_key("b"));
    // Something outside the table changed: the target gained a stray entry
    // and what the failed row waited for appeared.
    target.state().map.insert("stray".into(), 9);
    target.state().failing.clear();
    trigger.notify_one();
    wait_prunes(2).await;
    tokio::time::timeout(deadline, async {
        while status(&db, &t, "b") != Status::Done {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("b reconciled after the trigger");
    assert!(!target.state().map.contains_key("stray"));
    assert_eq!(target.state().map.get("a"), Some(&1));
    assert_eq!(target.state().map.get("b"), Some(&2));

    stop.send(()).unwrap();
    tokio::time::timeout(deadline, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
