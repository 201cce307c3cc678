//! The database handle, write transactions and the storage layout.
//!
//! Layout per table `t` (all sled trees of one sled database):
//! * `t/rows`: primary key -> 8-byte big-endian revision ++ row JSON.
//! * `t/revs`: revision -> primary key, one entry per live row (at the
//!   revision it was last written), for revision order and change streams.
//! * `t/graves`: revision -> row JSON of a deleted row (tombstone), kept
//!   while a registered change reader has not seen it.
//! * `t/idx/<index>`: escaped secondary key ++ terminator ++ primary key ->
//!   primary key.
//!
//! and one shared tree `statedb/meta`: table name -> table revision.
//!
//! Writes are buffered in the [`WriteTxn`] and applied at commit in one sled
//! transaction over every tree touched, so a crash keeps all of a commit or
//! none of it. One write transaction at a time (a database-wide lock);
//! readers never see a half-applied commit (a read/commit gate).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, TryLockError};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use crate::Error;
use crate::any::AnyTable;

/// Tree slots of a table, in [`TableCore::trees`] and [`PendingTable::trees`].
pub(crate) const ROWS: usize = 0;
pub(crate) const REVS: usize = 1;
pub(crate) const GRAVES: usize = 2;
pub(crate) const FIRST_INDEX: usize = 3;

const META_TREE: &str = "statedb/meta";

/// The file in the database directory whose exclusive lock marks the
/// database as open, so that a second opener gets [`Error::Locked`].
const LOCK_FILE: &str = "statedb.lock";

/// How far a commit is on disk when [`WriteTxn::commit`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// sled flushes (and fsyncs) its log before commit returns: a returned
    /// commit survives a process kill and a power loss.
    #[default]
    FlushOnCommit,
    /// sled flushes in the background every 500 ms: after a crash the
    /// database holds a prefix of the commits (each whole or absent), and
    /// may lack the last half second of them.
    Background,
}

/// A handle to the database. Cheap to clone; all clones share one sled
/// database, one write lock and one set of open tables.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<DbInner>,
}

pub(crate) struct DbInner {
    sled: sled::Db,
    meta: sled::Tree,
    durability: Durability,
    /// Held by the one open [`WriteTxn`].
    write_lock: Mutex<()>,
    /// Readers hold it shared while they read; a commit holds it exclusively
    /// while sled applies it, so no read sees half a commit.
    gate: RwLock<()>,
    tables: Mutex<BTreeMap<String, OpenTable>>,
    /// Holds the exclusive lock of [`LOCK_FILE`] while the database is
    /// open (none for a temporary database).
    _lock: Option<File>,
}

struct OpenTable {
    core: Arc<TableCore>,
    any: Arc<dyn AnyTable>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

/// Creates the database directory if needed and takes the exclusive lock
/// of its [`LOCK_FILE`]; the lock lasts as long as the returned file.
fn lock(dir: &Path) -> Result<File, Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(io(source)),
    }
}

/// sled's page cache: the tables of a node hold a few rows per Service
/// (a few MiB at 5,000 Services); a larger cache only grows the agent.
const CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// How long [`Db::open_with`] waits for sled's file lock to be released by
/// a handle of this process that was just dropped.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Db {
    /// Opens (or creates) the database in directory `path`, flushing on
    /// every commit. sled allows one process per database directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Db, Error> {
        Db::open_with(path, Durability::FlushOnCommit)
    }

    /// Opens (or creates) the database in `path` with the given durability.
    /// Fails with [`Error::Locked`] while another handle has it open.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Db, Error> {
        let path = path.as_ref();
        let lock = lock(path)?;
        let config = sled::Config::new().path(path).cache_capacity(CACHE_BYTES);
        // We hold the directory's lock, so nobody else has the database:
        // sled's own file lock can still be held for a moment by the
        // background threads of a handle of this process just dropped (a
        // restart in place, a test reopening). Wait for them, briefly.
        let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
        let sled = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => break result?,
            }
        };
        Db::from_sled(sled, durability, Some(lock))
    }

    /// A database in a temporary directory, removed when the last clone is
    /// dropped. For tests.
    pub fn open_temporary() -> Result<Db, Error> {
        let config = sled::Config::new()
            .temporary(true)
            .cache_capacity(16 * 1024 * 1024);
        Db::from_sled(config.open()?, Durability::Background, None)
    }

    fn from_sled(sled: sled::Db, durability: Durability, lock: Option<File>) -> Result<Db, Error> {
        let meta = sled.open_tree(META_TREE)?;
        tracing::debug!(?durability, "statedb opened");
        Ok(Db {
            inner: Arc::new(DbInner {
                sled,
                meta,
                durability,
                write_lock: Mutex::new(()),
                gate: RwLock::new(()),
                tables: Mutex::new(BTreeMap::new()),
                _lock: lock,
            }),
        })
    }

    /// Starts a write transaction, waiting while another one is open.
    /// Commit it with [`WriteTxn::commit`]; dropping it aborts.
    ///
    /// Do not open a second one on the same thread while holding one: that
    /// waits forever. Keep write transactions short; they block other
    /// writers (not readers).
    pub fn write_txn(&self) -> WriteTxn<'_> {
        let lock = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        WriteTxn {
            db: self,
            _lock: lock,
            tables: Vec::new(),
        }
    }

    /// Every table opened on this database, by name.
    pub fn tables(&self) -> Vec<Arc<dyn AnyTable>> {
        self.open_tables()
            .values()
            .map(|t| Arc::clone(&t.any))
            .collect()
    }

    /// The table opened under `name`, if any.
    pub fn table(&self, name: &str) -> Option<Arc<dyn AnyTable>> {
        self.open_tables().get(name).map(|t| Arc::clone(&t.any))
    }

    /// Waits for sled to write everything to disk.
    pub fn flush(&self) -> Result<(), Error> {
        self.inner.sled.flush()?;
        Ok(())
    }

    fn open_tables(&self) -> MutexGuard<'_, BTreeMap<String, OpenTable>> {
        self.inner
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.inner
            .gate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the storage of a table, or returns the one already open under
    /// that name when its layout matches. `make_any` builds the type-erased
    /// handle registered for the CLI.
    pub(crate) fn open_core(
        &self,
        layout: TableLayout,
        make_any: impl FnOnce(Arc<TableCore>) -> Arc<dyn AnyTable>,
        index_keys: impl Fn(&[u8]) -> Result<Vec<Vec<Vec<u8>>>, Error>,
    ) -> Result<Arc<TableCore>, Error> {
        let mut tables = self.open_tables();
        if let Some(open) = tables.get(&layout.name) {
            if open.core.layout != layout {
                return Err(Error::SchemaMismatch { table: layout.name });
            }
            return Ok(Arc::clone(&open.core));
        }
        let name = &layout.name;
        let mut trees = vec![
            self.inner.sled.open_tree(format!("{name}/rows"))?,
            self.inner.sled.open_tree(format!("{name}/revs"))?,
            self.inner.sled.open_tree(format!("{name}/graves"))?,
        ];
        for (index, _) in &layout.secondary {
            trees.push(self.inner.sled.open_tree(format!("{name}/idx/{index}"))?);
        }
        self.check_layout(&layout, &trees, index_keys)?;
        let revision = match self.inner.meta.get(name.as_bytes())? {
            Some(bytes) => decode_u64(&bytes).ok_or_else(|| Error::Corrupt {
                table: name.clone(),
                what: "table revision",
            })?,
            None => 0,
        };
        let (notify, _) = watch::channel(revision);
        let core = Arc::new(TableCore {
            layout,
            trees,
            revision: AtomicU64::new(revision),
            notify,
            readers: Mutex::new(HashMap::new()),
            next_reader: AtomicU64::new(1),
        });
        let any = make_any(Arc::clone(&core));
        tables.insert(
            core.layout.name.clone(),
            OpenTable {
                core: Arc::clone(&core),
                any,
            },
        );
        tracing::debug!(table = %core.layout.name, revision, "table opened");
        Ok(core)
    }
}

impl Db {
    /// Rebuilds the secondary indexes of a table stored with other indexes
    /// than it is opened with (an upgrade added, removed or changed one).
    /// The layout is recorded last, so a crash mid-way rebuilds again.
    fn check_layout(
        &self,
        layout: &TableLayout,
        trees: &[sled::Tree],
        index_keys: impl Fn(&[u8]) -> Result<Vec<Vec<Vec<u8>>>, Error>,
    ) -> Result<(), Error> {
        let meta_key = format!("\0layout\0{}", layout.name);
        let wanted = layout.encode();
        let stored = self.inner.meta.get(meta_key.as_bytes())?;
        if stored.as_deref() == Some(wanted.as_bytes()) {
            return Ok(());
        }
        if !trees[ROWS].is_empty() {
            tracing::info!(table = %layout.name, "secondary indexes changed, rebuilding");
            for tree in &trees[FIRST_INDEX..] {
                tree.clear()?;
            }
            for item in trees[ROWS].iter() {
                let (pk, stored) = item?;
                let json = stored.get(8..).ok_or_else(|| Error::Corrupt {
                    table: layout.name.clone(),
                    what: "row",
                })?;
                for (i, keys) in index_keys(json)?.into_iter().enumerate() {
                    let tree = &trees[FIRST_INDEX + i];
                    for key in keys {
                        let entry = crate::table::index_entry(&key, &pk);
                        if layout.secondary[i].1 {
                            let exact = &entry[..entry.len() - pk.len()];
                            if tree.scan_prefix(exact).next().is_some() {
                                return Err(Error::UniqueViolation {
                                    table: layout.name.clone(),
                                    index: layout.secondary[i].0.clone(),
                                });
                            }
                        }
                        tree.insert(entry, pk.to_vec())?;
                    }
                }
            }
        }
        self.inner
            .meta
            .insert(meta_key.as_bytes(), wanted.as_bytes())?;
        self.inner.sled.flush()?;
        Ok(())
    }
}

/// The shape of a table: what must match when it is opened twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableLayout {
    pub name: String,
    pub primary: String,
    /// Secondary index names and whether each is unique.
    pub secondary: Vec<(String, bool)>,
}

impl TableLayout {
    fn encode(&self) -> String {
        let mut out = self.primary.clone();
        for (name, unique) in &self.secondary {
            out.push_str(if *unique { ";unique:" } else { ";multi:" });
            out.push_str(name);
        }
        out
    }
}

/// The untyped state of one open table, shared by every handle to it.
pub(crate) struct TableCore {
    pub layout: TableLayout,
    /// Indexed by the slot constants ([`ROWS`], ...).
    pub trees: Vec<sled::Tree>,
    /// Last committed revision.
    pub revision: AtomicU64,
    /// Carries the last committed revision to waiting change readers.
    pub notify: watch::Sender<u64>,
    /// Registered change readers: id -> revision up to which tombstones are
    /// no longer needed by that reader.
    pub readers: Mutex<HashMap<u64, u64>>,
    pub next_reader: AtomicU64,
}

impl TableCore {
    pub fn name(&self) -> &str {
        &self.layout.name
    }

    pub fn committed_revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn readers(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tombstones at or below this revision are seen by every reader.
    fn tombstones_seen_up_to(&self) -> u64 {
        self.readers().values().copied().min().unwrap_or(u64::MAX)
    }
}

/// Writes buffered for one table: the final value (or removal) per key per
/// tree, applied at commit.
pub(crate) struct PendingTable {
    pub core: Arc<TableCore>,
    pub revision: u64,
    pub trees: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

mod sealed {
    pub trait Sealed {}
}

/// Something rows can be read through: a [`Db`] (the committed state) or a
/// [`WriteTxn`] (the committed state plus the transaction's own writes).
pub trait ReadTxn: sealed::Sealed {
    #[doc(hidden)]
    fn db(&self) -> &Db;
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn pending(&self, table: &TableCore) -> Option<&PendingTable>;
}

impl sealed::Sealed for Db {}
impl ReadTxn for Db {
    fn db(&self) -> &Db {
        self
    }
    #[allow(private_interfaces)]
    fn pending(&self, _table: &TableCore) -> Option<&PendingTable> {
        None
    }
}

impl sealed::Sealed for WriteTxn<'_> {}
impl ReadTxn for WriteTxn<'_> {
    fn db(&self) -> &Db {
        self.db
    }
    #[allow(private_interfaces)]
    fn pending(&self, table: &TableCore) -> Option<&PendingTable> {
        self.tables
            .iter()
            .find(|p| std::ptr::eq(Arc::as_ptr(&p.core), table))
    }
}

/// Point read in one tree, through the transaction's own writes.
pub(crate) fn get_raw(
    r: &(impl ReadTxn + ?Sized),
    core: &TableCore,
    slot: usize,
    key: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    if let Some(value) = r.pending(core).and_then(|p| p.trees[slot].get(key)) {
        return Ok(value.clone());
    }
    Ok(core.trees[slot].get(key)?.map(|v| v.to_vec()))
}

/// A key and its value, as read from a tree.
pub(crate) type KeyValue = (Vec<u8>, Vec<u8>);

/// Range read in one tree, through the transaction's own writes, in key
/// order.
pub(crate) fn scan_raw(
    r: &(impl ReadTxn + ?Sized),
    core: &TableCore,
    slot: usize,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
) -> Result<Vec<KeyValue>, Error> {
    let range = (lower, upper);
    let pending = r.pending(core).map(|p| &p.trees[slot]);
    let mut out = Vec::new();
    let mut merged: Option<BTreeMap<Vec<u8>, Vec<u8>>> = pending.map(|_| BTreeMap::new());
    for item in core.trees[slot].range::<Vec<u8>, _>(range.clone()) {
        let (k, v) = item?;
        match merged.as_mut() {
            Some(m) => {
                m.insert(k.to_vec(), v.to_vec());
            }
            None => out.push((k.to_vec(), v.to_vec())),
        }
    }
    if let (Some(mut m), Some(pending)) = (merged, pending) {
        for (k, v) in pending.range(range) {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        out = m.into_iter().collect();
    }
    Ok(out)
}

/// Bounds covering every key that starts with `prefix`.
pub(crate) fn prefix_bounds(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let upper = match crate::key::prefix_end(prefix) {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix.to_vec()), upper)
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// How many rows a writer that needs no atomicity across them commits at
/// a time ([`WriteTxn::checkpoint_when_full`]). sled keeps every version of
/// the tree nodes a transaction rewrites until the transaction ends: one
/// transaction of 5,000 rows held ~20 MiB while it ran, and the heap it
/// grew stayed fragmented after (the agent's RSS at 5,000 Services fell by
/// a third once its bulk writers committed every few hundred rows). Each
/// step is a commit of its own, flushed as the [`Durability`] says.
pub const ROWS_PER_COMMIT: usize = 256;

/// A write transaction over any number of tables. Reads through it see its
/// own writes. [`commit`](WriteTxn::commit) applies everything atomically;
/// dropping it (or [`abort`](WriteTxn::abort)) discards everything.
///
/// It holds the database's write lock, so it is not `Send`: finish it
/// before any `.await`.
pub struct WriteTxn<'db> {
    db: &'db Db,
    _lock: MutexGuard<'db, ()>,
    tables: Vec<PendingTable>,
}

impl WriteTxn<'_> {
    pub(crate) fn pending_mut(&mut self, core: &Arc<TableCore>) -> &mut PendingTable {
        let pos = match self.tables.iter().position(|p| Arc::ptr_eq(&p.core, core)) {
            Some(pos) => pos,
            None => {
                self.tables.push(PendingTable {
                    core: Arc::clone(core),
                    revision: core.committed_revision(),
                    trees: vec![BTreeMap::new(); core.trees.len()],
                });
                self.tables.len() - 1
            }
        };
        &mut self.tables[pos]
    }

    /// Discards every write of this transaction (same as dropping it).
    pub fn abort(self) {}

    /// Applies every write atomically and wakes the change readers of the
    /// tables that changed. On error nothing was applied.
    pub fn commit(mut self) -> Result<(), Error> {
        self.apply()
    }

    /// Rows written (inserted or deleted) since the transaction began or
    /// its last [`checkpoint`](WriteTxn::checkpoint).
    pub fn pending_rows(&self) -> usize {
        self.tables.iter().map(|p| p.trees[ROWS].len()).sum()
    }

    /// Commits the writes so far, as [`commit`](WriteTxn::commit) does, and
    /// goes on as an empty transaction under the same write lock (no other
    /// writer comes in between). For writers of many rows that need no
    /// atomicity across them: see [`ROWS_PER_COMMIT`]. On error nothing of
    /// this step was applied and the transaction is empty.
    pub fn checkpoint(&mut self) -> Result<(), Error> {
        let result = self.apply();
        self.tables.clear();
        result
    }

    /// [`checkpoint`](WriteTxn::checkpoint) once [`ROWS_PER_COMMIT`] rows
    /// are pending; whether it did.
    pub fn checkpoint_when_full(&mut self) -> Result<bool, Error> {
        let full = self.pending_rows() >= ROWS_PER_COMMIT;
        if full {
            self.checkpoint()?;
        }
        Ok(full)
    }

    fn apply(&mut self) -> Result<(), Error> {
        self.tables
            .retain(|p| p.revision != p.core.committed_revision());
        if self.tables.is_empty() {
            return Ok(());
        }
        let inner = &self.db.inner;
        let _gate = inner.gate.write().unwrap_or_else(PoisonError::into_inner);

        // Tombstones every reader has seen need not be written, and old ones
        // can go: computed under the gate, so no reader registers meanwhile.
        for pending in &mut self.tables {
            let seen = pending.core.tombstones_seen_up_to();
            let graves = &mut pending.trees[GRAVES];
            graves.retain(|rev, _| decode_u64(rev).is_none_or(|r| r > seen));
            let upper = if seen == u64::MAX {
                Bound::Unbounded
            } else {
                Bound::Included(seen.to_be_bytes().to_vec())
            };
            for item in pending.core.trees[GRAVES].range::<Vec<u8>, _>((Bound::Unbounded, upper)) {
                let (rev, _) = item?;
                graves.insert(rev.to_vec(), None);
            }
        }

        let mut trees: Vec<sled::Tree> = Vec::new();
        for pending in &self.tables {
            trees.extend(pending.core.trees.iter().cloned());
        }
        trees.push(inner.meta.clone());
        let flush = inner.durability == Durability::FlushOnCommit;
        let tables = &self.tables;
        let result: Result<(), TransactionError<()>> = trees.as_slice().transaction(|views| {
            let mut at = 0;
            for pending in tables {
                for writes in &pending.trees {
                    let view = &views[at];
                    for (k, v) in writes {
                        match v {
                            Some(v) => view.insert(k.as_slice(), v.as_slice())?,
                            None => view.remove(k.as_slice())?,
                        };
                    }
                    at += 1;
                }
            }
            let meta = &views[at];
            for pending in tables {
                meta.insert(
                    pending.core.name().as_bytes(),
                    &pending.revision.to_be_bytes()[..],
                )?;
            }
            if flush {
                meta.flush();
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(e.into()),
            // The closure never aborts.
            Err(TransactionError::Abort(())) => return Err(Error::Aborted),
        }
        for pending in &self.tables {
            pending
                .core
                .revision
                .store(pending.revision, Ordering::Release);
            pending.core.notify.send_replace(pending.revision);
        }
        Ok(())
    }
}
