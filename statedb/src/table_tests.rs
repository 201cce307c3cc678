//! Unit tests of tables, transactions and change streams.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Db, Error, Index, Row, Table, TableDef, ToKey};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Svc {
    name: String,
    ip: std::net::IpAddr,
    labels: Vec<String>,
}

impl Row for Svc {
    fn header() -> Vec<&'static str> {
        vec!["Name", "IP", "Labels"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.ip.to_string(),
            self.labels.join(","),
        ]
    }
}

const NAME: Index<Svc> = Index::primary("name", |s| s.name.to_key());
const IP: Index<Svc> = Index::unique("ip", |s| s.ip.to_key());
const LABEL: Index<Svc> =
    Index::non_unique("label", |s| s.labels.iter().map(|l| l.to_key()).collect());
const SVCS: TableDef<Svc> = TableDef {
    name: "svcs",
    primary: NAME,
    secondary: &[IP, LABEL],
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Announce {
    ip: std::net::IpAddr,
    iface: String,
}

impl Row for Announce {
    fn header() -> Vec<&'static str> {
        vec!["IP", "NetworkInterface"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.ip.to_string(), self.iface.clone()]
    }
}

const IP_IFACE: Index<Announce> = Index::primary("ip-iface", |a| (a.ip, &a.iface).to_key());
const ANNOUNCE: TableDef<Announce> = TableDef {
    name: "l2-announce",
    primary: IP_IFACE,
    secondary: &[],
};

fn svc(name: &str, ip: &str, labels: &[&str]) -> Svc {
    Svc {
        name: name.to_string(),
        ip: ip.parse().unwrap(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
    }
}

fn names(entries: &[crate::Entry<Svc>]) -> Vec<&str> {
    entries.iter().map(|e| e.row.name.as_str()).collect()
}

fn setup() -> (Db, Table<Svc>) {
    let db = Db::open_temporary().unwrap();
    let table = Table::open(&db, SVCS).unwrap();
    (db, table)
}

#[test]
fn insert_then_get_by_every_index() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    assert_eq!(
        t.insert(&mut txn, svc("a", "192.0.2.1", &["x", "y"]))
            .unwrap(),
        None
    );
    t.insert(&mut txn, svc("b", "192.0.2.2", &["y"])).unwrap();
    txn.commit().unwrap();

    let a = t.get(&db, NAME, "a").unwrap().unwrap();
    assert_eq!(a.revision, 1);
    assert_eq!(a.row, svc("a", "192.0.2.1", &["x", "y"]));
    let ip: std::net::IpAddr = "192.0.2.2".parse().unwrap();
    assert_eq!(t.get(&db, IP, &ip).unwrap().unwrap().row.name, "b");
    assert_eq!(names(&t.get_all(&db, LABEL, "y").unwrap()), ["a", "b"]);
    assert_eq!(names(&t.get_all(&db, LABEL, "x").unwrap()), ["a"]);
    assert!(t.get(&db, LABEL, "z").unwrap().is_none());
    assert!(t.get(&db, NAME, "c").unwrap().is_none());
    assert_eq!(t.revision(&db), 2);
}

#[test]
fn replacing_a_row_moves_its_secondary_keys() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &["x"])).unwrap();
    txn.commit().unwrap();
    let mut txn = db.write_txn();
    let old = t.insert(&mut txn, svc("a", "192.0.2.9", &["z"])).unwrap();
    txn.commit().unwrap();

    assert_eq!(old.unwrap().revision, 1);
    assert!(t.get_all(&db, LABEL, "x").unwrap().is_empty());
    let old_ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    assert!(t.get(&db, IP, &old_ip).unwrap().is_none());
    let a = t.get(&db, LABEL, "z").unwrap().unwrap();
    assert_eq!(a.revision, 2);
    assert_eq!(t.list(&db).unwrap().len(), 1);
}

#[test]
fn unique_violation_writes_nothing_and_keeps_the_transaction_usable() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
    let err = t.insert(&mut txn, svc("b", "192.0.2.1", &[])).unwrap_err();
    assert!(matches!(err, Error::UniqueViolation { ref index, .. } if index == "ip"));
    // The same row may keep its own unique key.
    t.insert(&mut txn, svc("a", "192.0.2.1", &["x"])).unwrap();
    txn.commit().unwrap();
    assert_eq!(names(&t.list(&db).unwrap()), ["a"]);
    assert_eq!(t.revision(&db), 2);
}

#[test]
fn delete_removes_row_and_index_entries() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &["x"])).unwrap();
    t.insert(&mut txn, svc("b", "192.0.2.2", &["x"])).unwrap();
    txn.commit().unwrap();

    let mut txn = db.write_txn();
    let gone = t.delete_key(&mut txn, "a").unwrap().unwrap();
    assert_eq!(gone.row.name, "a");
    assert!(t.delete_key(&mut txn, "missing").unwrap().is_none());
    assert_eq!(
        t.delete(&mut txn, &svc("b", "0.0.0.0", &[]))
            .unwrap()
            .unwrap()
            .revision,
        2
    );
    txn.commit().unwrap();

    assert!(t.list(&db).unwrap().is_empty());
    assert!(t.get_all(&db, LABEL, "x").unwrap().is_empty());
    // Two deletes of existing rows; the missing one took no revision.
    assert_eq!(t.revision(&db), 4);
}

#[test]
fn dropped_or_aborted_transactions_leave_no_trace() {
    let (db, t) = setup();
    {
        let mut txn = db.write_txn();
        t.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
    }
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("b", "192.0.2.2", &[])).unwrap();
    txn.abort();
    assert!(t.list(&db).unwrap().is_empty());
    assert_eq!(t.revision(&db), 0);
}

#[test]
fn reads_through_a_transaction_see_its_writes() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &["x"])).unwrap();
    t.insert(&mut txn, svc("b", "192.0.2.2", &["x"])).unwrap();
    txn.commit().unwrap();

    let mut txn = db.write_txn();
    t.delete_key(&mut txn, "a").unwrap();
    t.insert(&mut txn, svc("c", "192.0.2.3", &["x"])).unwrap();
    assert_eq!(names(&t.list(&txn).unwrap()), ["b", "c"]);
    assert_eq!(names(&t.get_all(&txn, LABEL, "x").unwrap()), ["b", "c"]);
    assert_eq!(names(&t.list_by_revision(&txn).unwrap()), ["b", "c"]);
    assert_eq!(t.revision(&txn), 4);
    // The committed state is untouched until commit.
    assert_eq!(names(&t.list(&db).unwrap()), ["a", "b"]);
    assert_eq!(t.revision(&db), 2);
    txn.commit().unwrap();
    assert_eq!(names(&t.list(&db).unwrap()), ["b", "c"]);
}

#[test]
fn one_transaction_spans_tables_with_their_own_revisions() {
    let db = Db::open_temporary().unwrap();
    let svcs = Table::open(&db, SVCS).unwrap();
    let ann = Table::open(&db, ANNOUNCE).unwrap();
    let mut txn = db.write_txn();
    svcs.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
    ann.insert(
        &mut txn,
        Announce {
            ip: "192.0.2.1".parse().unwrap(),
            iface: "eth0".into(),
        },
    )
    .unwrap();
    ann.insert(
        &mut txn,
        Announce {
            ip: "192.0.2.1".parse().unwrap(),
            iface: "eth1".into(),
        },
    )
    .unwrap();
    txn.commit().unwrap();
    assert_eq!(svcs.revision(&db), 1);
    assert_eq!(ann.revision(&db), 2);
}

#[test]
fn a_checkpoint_commits_what_is_pending_and_the_transaction_goes_on() {
    let (db, t) = setup();
    let mut changes = t.changes(&db);
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
    t.insert(&mut txn, svc("b", "192.0.2.2", &[])).unwrap();
    assert_eq!(txn.pending_rows(), 2);
    // Below the step size nothing is committed.
    txn.checkpoint_when_full().unwrap();
    assert_eq!(txn.pending_rows(), 2);
    assert!(t.list(&db).unwrap().is_empty());
    txn.checkpoint().unwrap();
    assert_eq!(txn.pending_rows(), 0);
    // Committed: readers and change streams see it while the writer goes on.
    assert_eq!(names(&t.list(&db).unwrap()), ["a", "b"]);
    assert_eq!(t.revision(&db), 2);
    assert_eq!(changes.next_batch().unwrap().len(), 2);
    // The transaction still reads its own (now committed) writes and
    // checks unique indexes against them.
    assert!(t.insert(&mut txn, svc("c", "192.0.2.1", &[])).is_err());
    t.delete(&mut txn, &svc("a", "192.0.2.1", &[])).unwrap();
    t.insert(&mut txn, svc("c", "192.0.2.3", &[])).unwrap();
    // Dropping it discards what came after the checkpoint only.
    drop(txn);
    assert_eq!(names(&t.list(&db).unwrap()), ["a", "b"]);
    assert_eq!(t.revision(&db), 2);
    // Full steps commit by themselves.
    let mut txn = db.write_txn();
    for i in 0..crate::ROWS_PER_COMMIT + 3 {
        t.insert(
            &mut txn,
            svc(&format!("s{i}"), &format!("2001:db8::{i:x}"), &[]),
        )
        .unwrap();
        txn.checkpoint_when_full().unwrap();
    }
    assert_eq!(txn.pending_rows(), 3);
    assert_eq!(t.list(&db).unwrap().len(), 2 + crate::ROWS_PER_COMMIT);
    txn.commit().unwrap();
    assert_eq!(t.list(&db).unwrap().len(), 2 + crate::ROWS_PER_COMMIT + 3);
}

#[test]
fn prefix_scans_follow_index_order() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    for (n, ip, l) in [
        ("web-2", "192.0.2.2", "tier-b"),
        ("web-1", "192.0.2.1", "tier-a"),
        ("db", "192.0.2.3", "t"),
    ] {
        t.insert(&mut txn, svc(n, ip, &[l])).unwrap();
    }
    txn.commit().unwrap();
    assert_eq!(
        names(&t.prefix(&db, NAME, "web-").unwrap()),
        ["web-1", "web-2"]
    );
    assert_eq!(
        names(&t.prefix(&db, NAME, "").unwrap()),
        ["db", "web-1", "web-2"]
    );
    assert_eq!(
        names(&t.prefix(&db, LABEL, "tier-").unwrap()),
        ["web-1", "web-2"]
    );
    // "t" is a prefix of every label.
    assert_eq!(
        names(&t.prefix(&db, LABEL, "t").unwrap()),
        ["db", "web-1", "web-2"]
    );
    assert!(t.prefix(&db, NAME, "x").unwrap().is_empty());

    let ann = Table::open(&db, ANNOUNCE).unwrap();
    let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let other: std::net::IpAddr = "192.0.2.10".parse().unwrap();
    let mut txn = db.write_txn();
    for (ip, iface) in [(ip, "eth1"), (other, "eth0"), (ip, "eth0")] {
        ann.insert(
            &mut txn,
            Announce {
                ip,
                iface: iface.into(),
            },
        )
        .unwrap();
    }
    txn.commit().unwrap();
    let on_ip: Vec<String> = ann
        .prefix(&db, IP_IFACE, &(ip,))
        .unwrap()
        .into_iter()
        .map(|e| e.row.iface)
        .collect();
    assert_eq!(on_ip, ["eth0", "eth1"]);
}

#[test]
fn list_by_revision_is_oldest_write_first() {
    let (db, t) = setup();
    for (n, ip) in [("c", "192.0.2.3"), ("a", "192.0.2.1"), ("b", "192.0.2.2")] {
        let mut txn = db.write_txn();
        t.insert(&mut txn, svc(n, ip, &[])).unwrap();
        txn.commit().unwrap();
    }
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("c", "192.0.2.3", &["new"])).unwrap();
    txn.commit().unwrap();
    let order = t.list_by_revision(&db).unwrap();
    assert_eq!(names(&order), ["a", "b", "c"]);
    assert_eq!(
        order.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [2, 3, 4]
    );
}

#[test]
fn change_stream_delivers_inserts_and_deletes_once() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
    t.insert(&mut txn, svc("gone", "192.0.2.9", &[])).unwrap();
    t.delete_key(&mut txn, "gone").unwrap();
    txn.commit().unwrap();

    let mut reader = t.changes(&db);
    let first = reader.next_batch().unwrap();
    // Deleted before registration: not in the stream.
    assert_eq!(
        first
            .iter()
            .map(|c| (c.row.name.as_str(), c.deleted))
            .collect::<Vec<_>>(),
        [("a", false)]
    );
    assert!(reader.next_batch().unwrap().is_empty());

    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("b", "192.0.2.2", &[])).unwrap();
    t.delete_key(&mut txn, "a").unwrap();
    txn.commit().unwrap();
    let next = reader.next_batch().unwrap();
    let seen: Vec<_> = next
        .iter()
        .map(|c| (c.revision, c.row.name.as_str(), c.deleted))
        .collect();
    assert_eq!(seen, [(4, "b", false), (5, "a", true)]);
    assert_eq!(reader.seen(), 5);
}

#[test]
fn tombstones_live_until_every_reader_has_seen_them() {
    let (db, t) = setup();
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
    t.insert(&mut txn, svc("b", "192.0.2.2", &[])).unwrap();
    txn.commit().unwrap();

    let mut fast = t.changes(&db);
    let mut slow = t.changes(&db);
    fast.next_batch().unwrap();
    slow.next_batch().unwrap();

    let delete = |name: &str| {
        let mut txn = db.write_txn();
        t.delete_key(&mut txn, name).unwrap();
        txn.commit().unwrap();
    };
    delete("a");
    assert_eq!(t.tombstones(&db), 1);
    fast.next_batch().unwrap();
    delete("b"); // commit collects what every reader has seen: nothing yet
    assert_eq!(t.tombstones(&db), 2);
    let got = slow.next_batch().unwrap();
    assert_eq!(got.iter().filter(|c| c.deleted).count(), 2);
    fast.next_batch().unwrap();
    // Collected at the next commit.
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("c", "192.0.2.3", &[])).unwrap();
    txn.commit().unwrap();
    assert_eq!(t.tombstones(&db), 0);

    // A dropped reader no longer holds tombstones back.
    delete("c");
    assert_eq!(t.tombstones(&db), 1);
    drop(slow);
    drop(fast);
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("d", "192.0.2.4", &[])).unwrap();
    t.delete_key(&mut txn, "d").unwrap();
    txn.commit().unwrap();
    assert_eq!(t.tombstones(&db), 0);
}

#[tokio::test]
async fn wait_wakes_on_commit_and_not_before() {
    let (db, t) = setup();
    let mut reader = t.changes(&db);
    assert!(reader.next_batch().unwrap().is_empty());
    let idle = tokio::time::timeout(Duration::from_millis(50), reader.wait()).await;
    assert!(idle.is_err(), "wait returned with nothing to read");

    let writer = {
        let db = db.clone();
        let t = t.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.write_txn();
            t.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
            txn.commit().unwrap();
        })
    };
    tokio::time::timeout(Duration::from_secs(10), reader.wait())
        .await
        .expect("woken by the commit");
    writer.await.unwrap();
    assert_eq!(reader.next_batch().unwrap().len(), 1);
}

#[test]
fn reopening_restores_rows_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        let t = Table::open(&db, SVCS).unwrap();
        let mut txn = db.write_txn();
        t.insert(&mut txn, svc("a", "192.0.2.1", &["x"])).unwrap();
        t.insert(&mut txn, svc("b", "192.0.2.2", &["x"])).unwrap();
        txn.commit().unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    let t = Table::open(&db, SVCS).unwrap();
    assert_eq!(t.revision(&db), 2);
    assert_eq!(names(&t.get_all(&db, LABEL, "x").unwrap()), ["a", "b"]);
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("c", "192.0.2.3", &[])).unwrap();
    txn.commit().unwrap();
    assert_eq!(t.get(&db, NAME, "c").unwrap().unwrap().revision, 3);
}

#[test]
fn an_open_database_is_locked_until_its_last_handle_drops() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let clone = db.clone();
    match Db::open(dir.path()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(db);
    assert!(matches!(Db::open(dir.path()), Err(Error::Locked { .. })));
    drop(clone);
    Db::open(dir.path()).unwrap();
}

#[test]
fn opening_a_table_twice_shares_it_and_checks_the_layout() {
    let (db, t) = setup();
    let again = Table::open(&db, SVCS).unwrap();
    let mut txn = db.write_txn();
    again.insert(&mut txn, svc("a", "192.0.2.1", &[])).unwrap();
    txn.commit().unwrap();
    assert_eq!(t.revision(&db), 1);

    const OTHER: TableDef<Svc> = TableDef {
        name: "svcs",
        primary: NAME,
        secondary: &[IP],
    };
    assert!(matches!(
        Table::open(&db, OTHER),
        Err(Error::SchemaMismatch { .. })
    ));
    let unknown: Index<Svc> = Index::unique("nope", |s| s.name.to_key());
    assert!(matches!(
        t.get(&db, unknown, "a"),
        Err(Error::UnknownIndex { .. })
    ));
}

#[tokio::test]
async fn any_table_lists_and_follows_by_name() {
    let (db, t) = setup();
    let _ann = Table::open(&db, ANNOUNCE).unwrap();
    let mut txn = db.write_txn();
    t.insert(&mut txn, svc("a", "192.0.2.1", &["x", "y"]))
        .unwrap();
    txn.commit().unwrap();

    let names: Vec<String> = db.tables().iter().map(|t| t.name().to_string()).collect();
    assert_eq!(names, ["l2-announce", "svcs"]);
    assert!(db.table("nope").is_none());
    let any = db.table("svcs").unwrap();
    assert_eq!(any.header(), ["Name", "IP", "Labels"]);
    assert_eq!(any.revision(), 1);
    assert_eq!(
        any.list_cells(&db).unwrap(),
        [vec!["a", "192.0.2.1", "x,y"]]
    );
    assert_eq!(any.list_json(&db).unwrap()[0]["ip"], "192.0.2.1");

    let mut changes = any.changes(&db).unwrap();
    let first = changes.next_batch().unwrap();
    assert_eq!((first[0].revision, first[0].deleted), (1, false));
    let mut txn = db.write_txn();
    t.delete_key(&mut txn, "a").unwrap();
    txn.commit().unwrap();
    tokio::time::timeout(Duration::from_secs(10), changes.wait())
        .await
        .unwrap();
    let next = changes.next_batch().unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].deleted);
    assert_eq!(next[0].cells[0], "a");
    assert_eq!(next[0].json["name"], "a");
}

#[test]
fn changed_secondary_indexes_are_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    const BEFORE: TableDef<Svc> = TableDef {
        name: "svcs",
        primary: NAME,
        secondary: &[IP],
    };
    {
        let db = Db::open(dir.path()).unwrap();
        let t = Table::open(&db, BEFORE).unwrap();
        let mut txn = db.write_txn();
        t.insert(&mut txn, svc("a", "192.0.2.1", &["x"])).unwrap();
        t.insert(&mut txn, svc("b", "192.0.2.2", &["x", "y"]))
            .unwrap();
        txn.commit().unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    let t = Table::open(&db, SVCS).unwrap();
    assert_eq!(names(&t.get_all(&db, LABEL, "x").unwrap()), ["a", "b"]);
    assert_eq!(names(&t.get_all(&db, LABEL, "y").unwrap()), ["b"]);
    let ip: std::net::IpAddr = "192.0.2.2".parse().unwrap();
    assert_eq!(t.get(&db, IP, &ip).unwrap().unwrap().row.name, "b");
    assert_eq!(t.revision(&db), 2);
}

#[test]
fn a_large_transaction_commits_whole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        let t = Table::open(&db, SVCS).unwrap();
        let mut txn = db.write_txn();
        for i in 0..5000u32 {
            let ip = std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i));
            t.insert(
                &mut txn,
                svc(&format!("s{i:05}"), &ip.to_string(), &["bulk"]),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    let t = Table::open(&db, SVCS).unwrap();
    assert_eq!(t.list(&db).unwrap().len(), 5000);
    assert_eq!(t.get_all(&db, LABEL, "bulk").unwrap().len(), 5000);
    assert_eq!(t.revision(&db), 5000);
}
