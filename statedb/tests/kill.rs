//! Crash consistency: a child process (this test binary, re-executed with
//! `STATEDB_KILL_WRITER` set) commits numbered transactions over two tables
//! and reports each commit on stdout; the parent SIGKILLs it mid-stream,
//! reopens the database and checks that it holds exactly the state after
//! some transaction M, where M is the last reported commit or the one after
//! it (in flight when killed). Repeated over several kill cycles, each child
//! continuing from what it finds.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use statedb::{Db, Durability, Index, Row, Table, TableDef, ToKey};

const WRITER_ENV: &str = "STATEDB_KILL_WRITER";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Part {
    txn: u64,
    part: u32,
    payload: String,
}

impl Row for Part {
    fn header() -> Vec<&'static str> {
        vec!["Txn", "Part"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.txn.to_string(), self.part.to_string()]
    }
}

const PART_KEY: Index<Part> = Index::primary("txn-part", |p| (p.txn, p.part).to_key());
const PART_TXN: Index<Part> = Index::non_unique("txn", |p| vec![p.txn.to_key()]);
const PARTS: TableDef<Part> = TableDef {
    name: "parts",
    primary: PART_KEY,
    secondary: &[PART_TXN],
};
const LOG_KEY: Index<Part> = Index::primary("txn", |p| p.txn.to_key());
const LOG: TableDef<Part> = TableDef {
    name: "log",
    primary: LOG_KEY,
    secondary: &[],
};

/// Rows transaction `txn` writes into `parts`.
fn parts_of(txn: u64) -> u32 {
    1 + (txn % 7) as u32 * 3
}

fn part(txn: u64, part: u32) -> Part {
    Part {
        txn,
        part,
        payload: format!("{txn}-{part}-{}", "x".repeat(100)),
    }
}

/// Opens the database, retrying for a while if the lock of a process that
/// just died (or of a sibling test's fork, before its exec) is still held.
fn open(dir: &Path, durability: Durability) -> (Db, Table<Part>, Table<Part>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let db = loop {
        match Db::open_with(dir, durability) {
            Ok(db) => break db,
            Err(e) if Instant::now() < deadline => {
                eprintln!("open {}: {e}; retrying", dir.display());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    };
    let parts = Table::open(&db, PARTS).unwrap();
    let log = Table::open(&db, LOG).unwrap();
    (db, parts, log)
}

fn last_txn(db: &Db, log: &Table<Part>) -> u64 {
    log.list(db).unwrap().last().map_or(0, |e| e.row.txn)
}

/// The child: commit transactions until killed. Transaction `n` inserts
/// `parts_of(n)` rows, deletes the rows of transaction `n - 3`, and appends
/// `n` to the log table.
fn writer(dir: &Path, durability: Durability) {
    let (db, parts, log) = open(dir, durability);
    let start = last_txn(&db, &log) + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = std::io::stdout().lock();
    for n in start.. {
        if Instant::now() > deadline {
            break;
        }
        let mut txn = db.write_txn();
        for p in 0..parts_of(n) {
            parts.insert(&mut txn, part(n, p)).unwrap();
        }
        if n > 3 {
            for old in parts.get_all(&txn, PART_TXN, &(n - 3)).unwrap() {
                parts.delete(&mut txn, &old.row).unwrap();
            }
        }
        log.insert(&mut txn, part(n, 0)).unwrap();
        txn.commit().unwrap();
        writeln!(out, "COMMIT {n}").unwrap();
        out.flush().unwrap();
    }
}

/// Checks the database holds exactly the state after transaction `m`.
fn check_state_after(db: &Db, parts: &Table<Part>, log: &Table<Part>, m: u64) {
    let logged: Vec<u64> = log
        .list(db)
        .unwrap()
        .into_iter()
        .map(|e| e.row.txn)
        .collect();
    assert_eq!(logged, (1..=m).collect::<Vec<_>>(), "log after {m}");
    let mut want = Vec::new();
    for t in m.saturating_sub(2).max(1)..=m {
        for p in 0..parts_of(t) {
            want.push(part(t, p));
        }
    }
    let got: Vec<Part> = parts.list(db).unwrap().into_iter().map(|e| e.row).collect();
    assert_eq!(got.len(), want.len(), "rows in parts after {m}");
    assert_eq!(got, want, "parts after {m}");
    let inserts: u64 = (1..=m).map(|t| u64::from(parts_of(t))).sum();
    let deletes: u64 = (1..=m.saturating_sub(3))
        .map(|t| u64::from(parts_of(t)))
        .sum();
    assert_eq!(
        parts.revision(db),
        inserts + deletes,
        "parts revision after {m}"
    );
    assert_eq!(log.revision(db), m, "log revision after {m}");
    // Index entries match the rows.
    for t in m.saturating_sub(5).max(1)..=m {
        let n = parts.get_all(db, PART_TXN, &t).unwrap().len();
        let want = if t + 2 >= m { parts_of(t) as usize } else { 0 };
        assert_eq!(n, want, "index entries of txn {t} after {m}");
    }
}

/// Runs the writer/kill/reopen cycles. With `FlushOnCommit` every reported
/// commit must be there; with `Background` the state may be any earlier
/// transaction's, but still exactly one transaction's.
fn kill_cycles(test_name: &str, durability: Durability) {
    if let Some(dir) = std::env::var_os(WRITER_ENV) {
        writer(Path::new(&dir), durability);
        return;
    }
    // One scenario at a time: a fork by one test must not inherit the other
    // test's open database (and its lock) for the moment before exec.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut reported_total = 0;
    for (cycle, commits_before_kill) in [40u64, 75, 130, 20].into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut last_reported = None;
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let Some(n) = line.unwrap().strip_prefix("COMMIT ").map(str::to_string) else {
                continue;
            };
            last_reported = Some(n.parse::<u64>().unwrap());
            seen += 1;
            if seen == commits_before_kill {
                // Kill while it keeps committing (`Child::kill` sends
                // SIGKILL), then drain what it reported before dying.
                child.kill().unwrap();
            }
        }
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "cycle {cycle}: writer must have been killed"
        );
        let last_reported = last_reported.expect("writer reported commits");
        reported_total += seen;

        let (db, parts, log) = open(dir.path(), durability);
        let m = last_txn(&db, &log);
        let durable = match durability {
            Durability::FlushOnCommit => last_reported,
            Durability::Background => 0,
        };
        assert!(
            durable <= m && m <= last_reported + 1,
            "cycle {cycle}: found state after txn {m}, last reported commit {last_reported}"
        );
        eprintln!("cycle {cycle}: last reported commit {last_reported}, recovered state after {m}");
        check_state_after(&db, &parts, &log, m);
    }
    assert!(reported_total >= 265);
}

#[test]
fn committed_transactions_survive_sigkill() {
    kill_cycles(
        "committed_transactions_survive_sigkill",
        Durability::FlushOnCommit,
    );
}

#[test]
fn background_flush_recovers_whole_transactions() {
    kill_cycles(
        "background_flush_recovers_whole_transactions",
        Durability::Background,
    );
}
