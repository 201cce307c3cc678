//! Property test: random sequences of transactions (inserts, deletes,
//! unique-index conflicts, aborts) over two tables, and change readers
//! registering, reading and leaving, compared after every step with a plain
//! in-memory model: every read by every index, prefix scans, revision order,
//! revisions, change batches and the number of tombstones kept.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use statedb::{Changes, Db, Error, Index, Row, Table, TableDef, ToKey};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    name: String,
    group: u8,
    code: u8,
}

impl Row for Item {
    fn header() -> Vec<&'static str> {
        vec!["Name", "Group", "Code"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.group.to_string(),
            self.code.to_string(),
        ]
    }
}

const NAME: Index<Item> = Index::primary("name", |i| i.name.to_key());
const GROUP: Index<Item> = Index::non_unique("group", |i| vec![i.group.to_key()]);
const CODE: Index<Item> = Index::unique("code", |i| i.code.to_key());
/// Table 0 has a unique and a non-unique secondary index, table 1 only a
/// non-unique one.
const DEFS: [TableDef<Item>; 2] = [
    TableDef {
        name: "items",
        primary: NAME,
        secondary: &[GROUP, CODE],
    },
    TableDef {
        name: "others",
        primary: NAME,
        secondary: &[GROUP],
    },
];
const GROUPS: u8 = 3;
const CODES: u8 = 5;

#[derive(Clone, Debug)]
enum Write {
    Insert { table: usize, item: Item },
    Delete { table: usize, name: String },
}

#[derive(Clone, Debug)]
enum Step {
    Txn { writes: Vec<Write>, commit: bool },
    Register { table: usize },
    Read { reader: usize },
    Unregister { reader: usize },
}

fn name() -> impl Strategy<Value = String> {
    "[ab]{1,3}"
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        3 => (0..2usize, name(), 0..GROUPS, 0..CODES)
            .prop_map(|(table, name, group, code)| Write::Insert { table, item: Item { name, group, code } }),
        2 => (0..2usize, name()).prop_map(|(table, name)| Write::Delete { table, name }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (prop::collection::vec(write(), 1..6), prop::bool::weighted(0.8))
            .prop_map(|(writes, commit)| Step::Txn { writes, commit }),
        1 => (0..2usize).prop_map(|table| Step::Register { table }),
        2 => any::<prop::sample::Index>().prop_map(|i| Step::Read { reader: i.index(usize::MAX) }),
        1 => any::<prop::sample::Index>().prop_map(|i| Step::Unregister { reader: i.index(usize::MAX) }),
    ]
}

/// The model of one table.
#[derive(Clone, Debug, Default)]
struct ModelTable {
    revision: u64,
    rows: BTreeMap<String, (u64, Item)>,
    /// Every delete ever: revision -> row.
    deletes: BTreeMap<u64, Item>,
    /// Revisions of the tombstones the database should still hold.
    graves: BTreeSet<u64>,
}

impl ModelTable {
    fn insert(&mut self, table: usize, item: Item) -> Result<(), ()> {
        if table == 0
            && self
                .rows
                .values()
                .any(|(_, r)| r.code == item.code && r.name != item.name)
        {
            return Err(());
        }
        self.revision += 1;
        self.rows.insert(item.name.clone(), (self.revision, item));
        Ok(())
    }

    fn delete(&mut self, name: &str) {
        if let Some((_, item)) = self.rows.remove(name) {
            self.revision += 1;
            self.deletes.insert(self.revision, item);
            self.graves.insert(self.revision);
        }
    }
}

struct ModelReader {
    table: usize,
    seen: u64,
    floor: u64,
}

impl ModelReader {
    fn mark(&self) -> u64 {
        self.seen.max(self.floor)
    }
}

fn entries(v: Vec<statedb::Entry<Item>>) -> Vec<(u64, Item)> {
    v.into_iter().map(|e| (e.revision, e.row)).collect()
}

/// Compares the reads that work through a transaction too.
fn check_reads(r: &impl statedb::ReadTxn, t: &Table<Item>, m: &ModelTable, which: usize) {
    let all: Vec<(u64, Item)> = m.rows.values().cloned().collect();
    assert_eq!(entries(t.list(r).unwrap()), all, "list of {which}");
    assert_eq!(t.revision(r), m.revision, "revision of {which}");
    for name in ["a", "b", "aa", "ab", "ba", "bb", "aab", "bbb"] {
        let want = m.rows.get(name).cloned();
        assert_eq!(
            t.get(r, NAME, name).unwrap().map(|e| (e.revision, e.row)),
            want,
            "get {name}"
        );
    }
    for group in 0..GROUPS {
        let want: Vec<_> = all
            .iter()
            .filter(|(_, i)| i.group == group)
            .cloned()
            .collect();
        assert_eq!(
            entries(t.get_all(r, GROUP, &group).unwrap()),
            want,
            "group {group}"
        );
    }
    if which == 0 {
        for code in 0..CODES {
            let want = all.iter().find(|(_, i)| i.code == code).cloned();
            let got = t.get(r, CODE, &code).unwrap().map(|e| (e.revision, e.row));
            assert_eq!(got, want, "code {code}");
        }
    }
}

fn check_all(db: &Db, tables: &[Table<Item>; 2], models: &[ModelTable; 2]) {
    for which in 0..2 {
        let (t, m) = (&tables[which], &models[which]);
        check_reads(db, t, m, which);
        for prefix in ["", "a", "ab", "b", "ba"] {
            let want: Vec<_> = m
                .rows
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            assert_eq!(
                entries(t.prefix(db, NAME, prefix).unwrap()),
                want,
                "prefix {prefix:?}"
            );
        }
        // The group index lists by (group, name).
        let mut by_group: Vec<_> = m.rows.values().cloned().collect();
        by_group.sort_by(|a, b| (a.1.group, &a.1.name).cmp(&(b.1.group, &b.1.name)));
        assert_eq!(entries(t.prefix(db, GROUP, &[][..]).unwrap()), by_group);
        let mut by_rev: Vec<_> = m.rows.values().cloned().collect();
        by_rev.sort_by_key(|(rev, _)| *rev);
        assert_eq!(
            entries(t.list_by_revision(db).unwrap()),
            by_rev,
            "revision order"
        );
        assert_eq!(t.tombstones(db), m.graves.len(), "tombstones of {which}");
    }
}

fn run(steps: Vec<Step>) {
    let db = Db::open_temporary().unwrap();
    let tables = DEFS.map(|def| Table::open(&db, def).unwrap());
    let mut models: [ModelTable; 2] = Default::default();
    let mut readers: Vec<(Changes<Item>, ModelReader)> = Vec::new();

    for step in steps {
        match step {
            Step::Txn { writes, commit } => {
                let mut txn = db.write_txn();
                let mut draft = models.clone();
                for w in writes {
                    match w {
                        Write::Insert { table, item } => {
                            let got = tables[table].insert(&mut txn, item.clone());
                            match draft[table].insert(table, item) {
                                Ok(()) => {
                                    got.unwrap();
                                }
                                Err(()) => {
                                    assert!(matches!(got, Err(Error::UniqueViolation { .. })))
                                }
                            }
                        }
                        Write::Delete { table, name } => {
                            tables[table].delete_key(&mut txn, &name).unwrap();
                            draft[table].delete(&name);
                        }
                    }
                    for which in 0..2 {
                        check_reads(&txn, &tables[which], &draft[which], which);
                    }
                }
                if commit {
                    txn.commit().unwrap();
                    for which in 0..2 {
                        if draft[which].revision != models[which].revision {
                            // The commit drops the tombstones every reader has seen.
                            let seen = readers
                                .iter()
                                .filter(|(_, r)| r.table == which)
                                .map(|(_, r)| r.mark())
                                .min();
                            draft[which]
                                .graves
                                .retain(|rev| seen.is_some_and(|s| *rev > s));
                        }
                    }
                    models = draft;
                } else {
                    drop(txn);
                }
            }
            Step::Register { table } => {
                let changes = tables[table].changes(&db);
                readers.push((
                    changes,
                    ModelReader {
                        table,
                        seen: 0,
                        floor: models[table].revision,
                    },
                ));
            }
            Step::Read { reader } if !readers.is_empty() => {
                let (changes, model) = {
                    let n = readers.len();
                    let (c, m) = &mut readers[reader % n];
                    (c, m)
                };
                let m = &models[model.table];
                let mut want: Vec<(u64, bool, Item)> = m
                    .rows
                    .values()
                    .filter(|(rev, _)| *rev > model.seen)
                    .map(|(rev, item)| (*rev, false, item.clone()))
                    .chain(
                        m.deletes
                            .range(model.mark() + 1..)
                            .map(|(rev, item)| (*rev, true, item.clone())),
                    )
                    .collect();
                want.sort_by_key(|(rev, _, _)| *rev);
                let got: Vec<_> = changes
                    .next_batch()
                    .unwrap()
                    .into_iter()
                    .map(|c| (c.revision, c.deleted, c.row))
                    .collect();
                assert_eq!(got, want, "change batch");
                model.seen = m.revision;
            }
            Step::Unregister { reader } if !readers.is_empty() => {
                let n = readers.len();
                readers.remove(reader % n);
            }
            Step::Read { .. } | Step::Unregister { .. } => {}
        }
        check_all(&db, &tables, &models);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn tables_match_the_model(steps in prop::collection::vec(step(), 1..40)) {
        run(steps);
    }
}
