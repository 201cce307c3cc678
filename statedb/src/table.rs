//! Typed tables: rows, indexes, reads, writes and change streams.

use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::db::{
    FIRST_INDEX, GRAVES, REVS, ROWS, ReadTxn, TableCore, TableLayout, WriteTxn, decode_u64,
    get_raw, prefix_bounds, scan_raw,
};
use crate::key::{TERMINATOR, ToKey, escape};
use crate::{Db, Error};

/// A row type: stored as JSON, printed for the CLI as cells under a header.
pub trait Row: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Column names, as `cilium-dbg statedb` prints them.
    fn header() -> Vec<&'static str>;
    /// One cell per header column.
    fn cells(&self) -> Vec<String>;
}

/// The revision counter of a table. Every insert and delete takes the next
/// one; 0 means "nothing yet".
pub type Revision = u64;

/// A row as stored, with the revision it was last written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<R> {
    pub revision: Revision,
    pub row: R,
}

/// One insert (or update) or delete, as a change reader receives it. For a
/// delete, `row` is the row as it was when deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<R> {
    pub revision: Revision,
    pub deleted: bool,
    pub row: R,
}

enum KeyFn<R> {
    One(fn(&R) -> Vec<u8>),
    Many(fn(&R) -> Vec<Vec<u8>>),
}

/// An index of a table: a name and how to get the key(s) of a row.
/// Declare them as constants beside the row type.
pub struct Index<R> {
    name: &'static str,
    unique: bool,
    key: KeyFn<R>,
}

impl<R> Clone for Index<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for Index<R> {}
impl<R> Clone for KeyFn<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for KeyFn<R> {}

impl<R> std::fmt::Debug for Index<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("name", &self.name)
            .field("unique", &self.unique)
            .finish()
    }
}

impl<R> Index<R> {
    /// The primary index (unique by definition): one key per row.
    pub const fn primary(name: &'static str, key: fn(&R) -> Vec<u8>) -> Self {
        Index {
            name,
            unique: true,
            key: KeyFn::One(key),
        }
    }

    /// A unique secondary index: one key per row; inserting a row whose key
    /// another row holds fails with [`Error::UniqueViolation`].
    pub const fn unique(name: &'static str, key: fn(&R) -> Vec<u8>) -> Self {
        Index {
            name,
            unique: true,
            key: KeyFn::One(key),
        }
    }

    /// A non-unique secondary index: any number of keys per row (none, one,
    /// or one per element of a list field).
    pub const fn non_unique(name: &'static str, keys: fn(&R) -> Vec<Vec<u8>>) -> Self {
        Index {
            name,
            unique: false,
            key: KeyFn::Many(keys),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn keys(&self, row: &R) -> Vec<Vec<u8>> {
        match self.key {
            KeyFn::One(f) => vec![f(row)],
            KeyFn::Many(f) => {
                let mut keys = f(row);
                keys.sort();
                keys.dedup();
                keys
            }
        }
    }
}

/// A table declaration: name, primary index, secondary indexes.
pub struct TableDef<R: 'static> {
    pub name: &'static str,
    pub primary: Index<R>,
    pub secondary: &'static [Index<R>],
}

impl<R> Clone for TableDef<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for TableDef<R> {}

/// A handle to an open table. Cheap to clone. Reads take a [`ReadTxn`]
/// (`&db` or `&txn`), writes a `&mut` [`WriteTxn`].
pub struct Table<R: 'static> {
    core: Arc<TableCore>,
    def: TableDef<R>,
}

impl<R> Clone for Table<R> {
    fn clone(&self) -> Self {
        Table {
            core: Arc::clone(&self.core),
            def: self.def,
        }
    }
}

impl<R> std::fmt::Debug for Table<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

/// Where an index's entries live and how its keys are laid out.
enum IndexSlot {
    Primary,
    Secondary(usize),
}

impl<R: Row> Table<R> {
    /// Opens the table (creating it when new) and registers it with the
    /// database for [`Db::tables`]. Opening the same name twice returns a
    /// handle to the same table; with different indexes it fails.
    pub fn open(db: &Db, def: TableDef<R>) -> Result<Table<R>, Error> {
        let layout = TableLayout {
            name: def.name.to_string(),
            primary: def.primary.name.to_string(),
            secondary: def
                .secondary
                .iter()
                .map(|i| (i.name.to_string(), i.unique))
                .collect(),
        };
        let index_keys = |json: &[u8]| -> Result<Vec<Vec<Vec<u8>>>, Error> {
            let row: R = serde_json::from_slice(json).map_err(|source| Error::Encoding {
                table: def.name.to_string(),
                source,
            })?;
            Ok(def.secondary.iter().map(|i| i.keys(&row)).collect())
        };
        let core = db.open_core(layout, |core| Arc::new(Table { core, def }), index_keys)?;
        Ok(Table { core, def })
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// The table's revision as `r` sees it: the revision of its last write.
    pub fn revision(&self, r: &impl ReadTxn) -> Revision {
        match r.pending(&self.core) {
            Some(p) => p.revision,
            None => self.core.committed_revision(),
        }
    }

    pub(crate) fn committed_revision(&self) -> Revision {
        self.core.committed_revision()
    }

    /// The first row whose `index` key equals `key`.
    pub fn get(
        &self,
        r: &impl ReadTxn,
        index: Index<R>,
        key: &(impl ToKey + ?Sized),
    ) -> Result<Option<Entry<R>>, Error> {
        match self.slot(index)? {
            IndexSlot::Primary => {
                let _gate = r.db().read_gate();
                self.get_by_primary(r, &key.to_key())
            }
            IndexSlot::Secondary(_) => Ok(self.get_all(r, index, key)?.into_iter().next()),
        }
    }

    /// Every row whose `index` key equals `key`, in primary key order.
    pub fn get_all(
        &self,
        r: &impl ReadTxn,
        index: Index<R>,
        key: &(impl ToKey + ?Sized),
    ) -> Result<Vec<Entry<R>>, Error> {
        match self.slot(index)? {
            IndexSlot::Primary => Ok(self.get(r, index, key)?.into_iter().collect()),
            IndexSlot::Secondary(i) => {
                let mut exact = escape(&key.to_key());
                exact.extend_from_slice(&TERMINATOR);
                self.scan_secondary(r, i, &exact)
            }
        }
    }

    /// Every row, in primary key order.
    pub fn list(&self, r: &impl ReadTxn) -> Result<Vec<Entry<R>>, Error> {
        let _gate = r.db().read_gate();
        scan_raw(r, &self.core, ROWS, Bound::Unbounded, Bound::Unbounded)?
            .into_iter()
            .map(|(_, v)| self.decode_stored(&v))
            .collect()
    }

    /// Every row whose `index` key starts with the bytes of `prefix`, in
    /// that index's order.
    pub fn prefix(
        &self,
        r: &impl ReadTxn,
        index: Index<R>,
        prefix: &(impl ToKey + ?Sized),
    ) -> Result<Vec<Entry<R>>, Error> {
        let prefix = prefix.to_key();
        match self.slot(index)? {
            IndexSlot::Primary => {
                let _gate = r.db().read_gate();
                let (lower, upper) = prefix_bounds(&prefix);
                scan_raw(r, &self.core, ROWS, lower, upper)?
                    .into_iter()
                    .map(|(_, v)| self.decode_stored(&v))
                    .collect()
            }
            IndexSlot::Secondary(i) => self.scan_secondary(r, i, &escape(&prefix)),
        }
    }

    /// Every row, oldest write first.
    pub fn list_by_revision(&self, r: &impl ReadTxn) -> Result<Vec<Entry<R>>, Error> {
        let _gate = r.db().read_gate();
        let mut out = Vec::new();
        for (_, pk) in scan_raw(r, &self.core, REVS, Bound::Unbounded, Bound::Unbounded)? {
            out.push(
                self.get_by_primary(r, &pk)?
                    .ok_or_else(|| self.corrupt("revision entry"))?,
            );
        }
        Ok(out)
    }

    /// Inserts `row`, replacing the row with the same primary key. Returns
    /// the replaced row. On [`Error::UniqueViolation`] nothing is written.
    pub fn insert(&self, txn: &mut WriteTxn<'_>, row: R) -> Result<Option<Entry<R>>, Error> {
        let pk = self.primary_key(&row);
        let old = self.get_by_primary(txn, &pk)?;
        let new_keys: Vec<Vec<Vec<u8>>> = self.def.secondary.iter().map(|i| i.keys(&row)).collect();
        for (i, index) in self.def.secondary.iter().enumerate() {
            if !index.unique {
                continue;
            }
            for key in &new_keys[i] {
                let mut exact = escape(key);
                exact.extend_from_slice(&TERMINATOR);
                let (lower, upper) = prefix_bounds(&exact);
                let holders = scan_raw(txn, &self.core, FIRST_INDEX + i, lower, upper)?;
                if holders.iter().any(|(_, holder)| *holder != pk) {
                    return Err(Error::UniqueViolation {
                        table: self.def.name.to_string(),
                        index: index.name.to_string(),
                    });
                }
            }
        }
        let json = serde_json::to_vec(&row).map_err(|source| self.encoding(source))?;
        let pending = txn.pending_mut(&self.core);
        pending.revision += 1;
        let revision = pending.revision;
        if let Some(old) = &old {
            pending.trees[REVS].insert(old.revision.to_be_bytes().to_vec(), None);
            for (i, index) in self.def.secondary.iter().enumerate() {
                for key in index.keys(&old.row) {
                    pending.trees[FIRST_INDEX + i].insert(index_entry(&key, &pk), None);
                }
            }
        }
        let mut stored = Vec::with_capacity(8 + json.len());
        stored.extend_from_slice(&revision.to_be_bytes());
        stored.extend_from_slice(&json);
        pending.trees[ROWS].insert(pk.clone(), Some(stored));
        pending.trees[REVS].insert(revision.to_be_bytes().to_vec(), Some(pk.clone()));
        for (i, keys) in new_keys.iter().enumerate() {
            for key in keys {
                pending.trees[FIRST_INDEX + i].insert(index_entry(key, &pk), Some(pk.clone()));
            }
        }
        Ok(old)
    }

    /// Deletes the row with the primary key of `row`. Returns the deleted
    /// row, or `None` (and no new revision) when there was none.
    pub fn delete(&self, txn: &mut WriteTxn<'_>, row: &R) -> Result<Option<Entry<R>>, Error> {
        let pk = self.primary_key(row);
        self.delete_pk(txn, pk)
    }

    /// Deletes the row whose primary key is `key`.
    pub fn delete_key(
        &self,
        txn: &mut WriteTxn<'_>,
        key: &(impl ToKey + ?Sized),
    ) -> Result<Option<Entry<R>>, Error> {
        self.delete_pk(txn, key.to_key())
    }

    /// Registers a change reader. Its first batch holds every row present
    /// now as an insert; later batches hold what changed since the previous
    /// batch, deletes included. Deleted rows are kept as tombstones until
    /// every registered reader has received them (they are collected at the
    /// table's next commit). Dropping the reader unregisters it.
    pub fn changes(&self, db: &Db) -> Changes<R> {
        let _gate = db.read_gate();
        let floor = self.core.committed_revision();
        let id = self.core.next_reader.fetch_add(1, Ordering::Relaxed);
        self.core.readers().insert(id, floor);
        Changes {
            db: db.clone(),
            core: Arc::clone(&self.core),
            id,
            seen: 0,
            floor,
            notify: self.core.notify.subscribe(),
            _row: PhantomData,
        }
    }

    /// The table's primary index.
    pub fn primary_index(&self) -> Index<R> {
        self.def.primary
    }

    /// The primary key bytes of `row`.
    pub fn primary_key(&self, row: &R) -> Vec<u8> {
        match self.def.primary.key {
            KeyFn::One(f) => f(row),
            // `Index::primary` only builds `KeyFn::One`.
            KeyFn::Many(f) => f(row).into_iter().next().unwrap_or_default(),
        }
    }

    /// Number of tombstones kept for change readers (for tests and status).
    pub fn tombstones(&self, db: &Db) -> usize {
        let _gate = db.read_gate();
        self.core.trees[GRAVES].len()
    }

    fn delete_pk(&self, txn: &mut WriteTxn<'_>, pk: Vec<u8>) -> Result<Option<Entry<R>>, Error> {
        let Some(old) = self.get_by_primary(txn, &pk)? else {
            return Ok(None);
        };
        let json = serde_json::to_vec(&old.row).map_err(|source| self.encoding(source))?;
        let pending = txn.pending_mut(&self.core);
        pending.revision += 1;
        let revision = pending.revision;
        pending.trees[ROWS].insert(pk.clone(), None);
        pending.trees[REVS].insert(old.revision.to_be_bytes().to_vec(), None);
        pending.trees[GRAVES].insert(revision.to_be_bytes().to_vec(), Some(json));
        for (i, index) in self.def.secondary.iter().enumerate() {
            for key in index.keys(&old.row) {
                pending.trees[FIRST_INDEX + i].insert(index_entry(&key, &pk), None);
            }
        }
        Ok(Some(old))
    }

    fn slot(&self, index: Index<R>) -> Result<IndexSlot, Error> {
        if index.name == self.def.primary.name {
            return Ok(IndexSlot::Primary);
        }
        self.def
            .secondary
            .iter()
            .position(|i| i.name == index.name)
            .map(IndexSlot::Secondary)
            .ok_or_else(|| Error::UnknownIndex {
                table: self.def.name.to_string(),
                index: index.name.to_string(),
            })
    }

    fn scan_secondary(
        &self,
        r: &impl ReadTxn,
        i: usize,
        prefix: &[u8],
    ) -> Result<Vec<Entry<R>>, Error> {
        let _gate = r.db().read_gate();
        let (lower, upper) = prefix_bounds(prefix);
        let mut out = Vec::new();
        let mut last_pk: Option<Vec<u8>> = None;
        for (_, pk) in scan_raw(r, &self.core, FIRST_INDEX + i, lower, upper)? {
            // A row with several keys under one prefix is listed once when
            // its keys are adjacent; a prefix scan may still list it again
            // under a later key, as it matches under each.
            if last_pk.as_ref() == Some(&pk) {
                continue;
            }
            out.push(
                self.get_by_primary(r, &pk)?
                    .ok_or_else(|| self.corrupt("index entry"))?,
            );
            last_pk = Some(pk);
        }
        Ok(out)
    }

    fn get_by_primary(&self, r: &impl ReadTxn, pk: &[u8]) -> Result<Option<Entry<R>>, Error> {
        get_raw(r, &self.core, ROWS, pk)?
            .map(|v| self.decode_stored(&v))
            .transpose()
    }

    fn decode_stored(&self, stored: &[u8]) -> Result<Entry<R>, Error> {
        let revision = decode_u64(stored).ok_or_else(|| self.corrupt("row"))?;
        let row = serde_json::from_slice(&stored[8..]).map_err(|source| self.encoding(source))?;
        Ok(Entry { revision, row })
    }

    fn corrupt(&self, what: &'static str) -> Error {
        Error::Corrupt {
            table: self.def.name.to_string(),
            what,
        }
    }

    fn encoding(&self, source: serde_json::Error) -> Error {
        Error::Encoding {
            table: self.def.name.to_string(),
            source,
        }
    }
}

pub(crate) fn index_entry(key: &[u8], pk: &[u8]) -> Vec<u8> {
    let mut entry = escape(key);
    entry.extend_from_slice(&TERMINATOR);
    entry.extend_from_slice(pk);
    entry
}

/// A registered change reader of one table (see [`Table::changes`]).
pub struct Changes<R> {
    db: Db,
    core: Arc<TableCore>,
    id: u64,
    /// Every change up to this revision has been returned.
    seen: Revision,
    /// Tombstones at or below this were made before registration.
    floor: Revision,
    notify: watch::Receiver<u64>,
    _row: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Changes<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("table", &self.core.name())
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<R: Row> Changes<R> {
    /// Every insert and delete since the previous batch, in revision order
    /// (empty when nothing changed). Each row appears once, at its latest
    /// revision; a row deleted and inserted again appears as both.
    pub fn next_batch(&mut self) -> Result<Vec<Change<R>>, Error> {
        let _gate = self.db.read_gate();
        let now = self.core.committed_revision();
        if now <= self.seen {
            return Ok(Vec::new());
        }
        let lower = Bound::Excluded(self.seen.to_be_bytes().to_vec());
        let live = scan_raw(&self.db, &self.core, REVS, lower.clone(), Bound::Unbounded)?;
        let graves = scan_raw(&self.db, &self.core, GRAVES, lower, Bound::Unbounded)?;
        let mut out = Vec::with_capacity(live.len() + graves.len());
        for (rev, pk) in live {
            let revision = decode_u64(&rev).ok_or_else(|| self.corrupt("revision key"))?;
            let stored = self.core.trees[ROWS]
                .get(&pk)?
                .ok_or_else(|| self.corrupt("revision entry"))?;
            let row = serde_json::from_slice(stored.get(8..).unwrap_or_default())
                .map_err(|source| self.encoding(source))?;
            out.push(Change {
                revision,
                deleted: false,
                row,
            });
        }
        for (rev, json) in graves {
            let revision = decode_u64(&rev).ok_or_else(|| self.corrupt("tombstone key"))?;
            if revision <= self.floor {
                continue;
            }
            let row = serde_json::from_slice(&json).map_err(|source| self.encoding(source))?;
            out.push(Change {
                revision,
                deleted: true,
                row,
            });
        }
        out.sort_by_key(|c| c.revision);
        self.seen = now;
        if let Some(mark) = self.core.readers().get_mut(&self.id) {
            *mark = now.max(self.floor);
        }
        Ok(out)
    }

    /// Waits until the table has changes this reader has not received.
    /// Cancel-safe.
    pub async fn wait(&mut self) {
        let seen = self.seen;
        // The sender lives in the table core, which `self` keeps alive, so
        // the channel cannot close.
        let _ = self.notify.wait_for(|rev| *rev > seen).await;
    }

    pub(crate) fn table_name(&self) -> &str {
        self.core.name()
    }

    /// The revision up to which changes have been returned.
    pub fn seen(&self) -> Revision {
        self.seen
    }

    fn corrupt(&self, what: &'static str) -> Error {
        Error::Corrupt {
            table: self.core.name().to_string(),
            what,
        }
    }

    fn encoding(&self, source: serde_json::Error) -> Error {
        Error::Encoding {
            table: self.core.name().to_string(),
            source,
        }
    }
}

impl<R> Drop for Changes<R> {
    fn drop(&mut self) {
        self.core.readers().remove(&self.id);
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Db>();
    is::<Table<()>>();
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
