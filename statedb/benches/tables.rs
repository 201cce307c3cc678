//! Insert+commit and indexed reads at 10k rows, on a database in a
//! temporary directory with the default durability (flush on commit) and,
//! for comparison, background flushing.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use statedb::{Db, Durability, Index, Row, Table, TableDef, ToKey};

const ROWS: u32 = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Announce {
    ip: std::net::IpAddr,
    iface: String,
    origin: String,
}

impl Row for Announce {
    fn header() -> Vec<&'static str> {
        vec!["IP", "NetworkInterface", "Origin"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.ip.to_string(), self.iface.clone(), self.origin.clone()]
    }
}

const KEY: Index<Announce> = Index::primary("ip-iface", |a| (a.ip, &a.iface).to_key());
const ORIGIN: Index<Announce> = Index::non_unique("origin", |a| vec![a.origin.to_key()]);
const ANNOUNCE: TableDef<Announce> = TableDef {
    name: "l2-announce",
    primary: KEY,
    secondary: &[ORIGIN],
};

fn row(i: u32) -> Announce {
    Announce {
        ip: std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)).into(),
        iface: "eth0".to_string(),
        origin: format!("default/svc-{i}"),
    }
}

fn fresh(durability: Durability) -> (tempfile::TempDir, Db, Table<Announce>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), durability).unwrap();
    let table = Table::open(&db, ANNOUNCE).unwrap();
    (dir, db, table)
}

fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert_10k");
    group.sample_size(10);
    for (label, durability) in [
        ("flush", Durability::FlushOnCommit),
        ("background", Durability::Background),
    ] {
        group.bench_function(format!("single_row_txns/{label}"), |b| {
            b.iter_batched(
                || fresh(durability),
                |(_dir, db, table)| {
                    for i in 0..ROWS {
                        let mut txn = db.write_txn();
                        table.insert(&mut txn, row(i)).unwrap();
                        txn.commit().unwrap();
                    }
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("one_txn/{label}"), |b| {
            b.iter_batched(
                || fresh(durability),
                |(_dir, db, table)| {
                    let mut txn = db.write_txn();
                    for i in 0..ROWS {
                        table.insert(&mut txn, row(i)).unwrap();
                    }
                    txn.commit().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn get(c: &mut Criterion) {
    let (_dir, db, table) = fresh(Durability::FlushOnCommit);
    let mut txn = db.write_txn();
    for i in 0..ROWS {
        table.insert(&mut txn, row(i)).unwrap();
    }
    txn.commit().unwrap();
    let mut group = c.benchmark_group("get_at_10k");
    let mut i = 0u32;
    group.bench_function("primary", |b| {
        b.iter(|| {
            i = (i + 7919) % ROWS;
            let r = row(i);
            table.get(&db, KEY, &(r.ip, &r.iface)).unwrap().unwrap()
        })
    });
    group.bench_function("secondary", |b| {
        b.iter(|| {
            i = (i + 7919) % ROWS;
            table
                .get(&db, ORIGIN, &format!("default/svc-{i}"))
                .unwrap()
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, insert, get);
criterion_main!(benches);
