//! statedb: typed, sled-backed state tables with revisions, change streams
//! and a generic reconciler, modelled on cilium/statedb. It knows nothing of
//! networking or Kubernetes, and it is not a general database: one process
//! opens it, write transactions run one at a time, and reads see committed
//! state (or, through a [`WriteTxn`], that transaction's own writes).
//!
//! * A [`Table`] has a name, a unique primary [`Index`] and any number of
//!   secondary indexes (unique or not), declared once beside the [`Row`]
//!   type as a [`TableDef`]. Rows are serde types, stored as JSON.
//! * Writes go through a [`WriteTxn`] spanning any tables; [`WriteTxn::commit`]
//!   applies them in one sled transaction (all or nothing, also across a
//!   crash), dropping the transaction aborts it. By default a commit is
//!   flushed to disk before it returns ([`Durability`]). Writers of many
//!   rows that need no atomicity across them commit in steps
//!   ([`WriteTxn::checkpoint_when_full`], every [`ROWS_PER_COMMIT`] rows,
//!   under the same write lock): sled holds every node version a
//!   transaction makes until it ends.
//! * Each table has a revision, bumped by every insert and delete; each row
//!   carries the revision it was last written at ([`Entry`]).
//! * Reads: [`Table::get`] / [`Table::get_all`] by any index, [`Table::list`],
//!   [`Table::prefix`], [`Table::list_by_revision`].
//! * Change streams: [`Table::changes`] registers a reader; [`Changes::next_batch`]
//!   returns inserts and deletes since its previous batch, and
//!   [`Changes::wait`] waits for the next change. Deleted rows are kept as
//!   tombstones until every registered reader has seen them.
//! * [`reconciler`]: pushes rows into a [`Target`] and writes their
//!   [`Status`] back.
//! * [`AnyTable`] / [`AnyChanges`] give a CLI access by table name, and
//!   [`render_table`] prints rows as `cilium-dbg statedb` does.
//!
//! Calls block on disk I/O (a commit waits for an fsync by default); from
//! async code keep write transactions short and never hold one across an
//! `.await` (it is not `Send`).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use statedb::{Db, Index, Row, Table, TableDef, ToKey};
//!
//! #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! struct Device {
//!     name: String,
//!     index: u32,
//!     up: bool,
//! }
//!
//! impl Row for Device {
//!     fn header() -> Vec<&'static str> {
//!         vec!["Name", "Index", "Up"]
//!     }
//!     fn cells(&self) -> Vec<String> {
//!         vec![self.name.clone(), self.index.to_string(), self.up.to_string()]
//!     }
//! }
//!
//! const BY_NAME: Index<Device> = Index::primary("name", |d| d.name.to_key());
//! const BY_INDEX: Index<Device> = Index::unique("index", |d| d.index.to_key());
//! const BY_UP: Index<Device> = Index::non_unique("up", |d| vec![d.up.to_key()]);
//! const DEVICES: TableDef<Device> = TableDef {
//!     name: "devices",
//!     primary: BY_NAME,
//!     secondary: &[BY_INDEX, BY_UP],
//! };
//!
//! # fn main() -> Result<(), statedb::Error> {
//! let db = Db::open_temporary()?;
//! let devices = Table::open(&db, DEVICES)?;
//! let mut reader = devices.changes(&db);
//!
//! let mut txn = db.write_txn();
//! devices.insert(&mut txn, Device { name: "eth0".into(), index: 2, up: true })?;
//! devices.insert(&mut txn, Device { name: "lo".into(), index: 1, up: true })?;
//! txn.commit()?;
//!
//! let eth0 = devices.get(&db, BY_INDEX, &2u32)?.expect("inserted above");
//! assert_eq!((eth0.row.name.as_str(), eth0.revision), ("eth0", 1));
//! assert_eq!(devices.get_all(&db, BY_UP, &true)?.len(), 2);
//!
//! let mut txn = db.write_txn();
//! devices.delete_key(&mut txn, "lo")?;
//! txn.commit()?;
//!
//! let changes = reader.next_batch()?;
//! // eth0 inserted at 1; lo inserted at 2 and deleted at 3: the stream has
//! // each row once at its latest revision.
//! let seen: Vec<_> = changes.iter().map(|c| (c.row.name.as_str(), c.deleted)).collect();
//! assert_eq!(seen, [("eth0", false), ("lo", true)]);
//!
//! let rows: Vec<_> = devices.list(&db)?.into_iter().map(|e| e.row.cells()).collect();
//! assert_eq!(
//!     statedb::render_table(&Device::header(), &rows),
//!     "# Name   Index   Up\neth0     2       true\n"
//! );
//! # Ok(())
//! # }
//! ```

mod any;
mod db;
mod key;
pub mod reconciler;
mod table;

pub use any::{AnyChange, AnyChanges, AnyTable, render_table};
pub use db::{Db, Durability, ROWS_PER_COMMIT, ReadTxn, WriteTxn};
pub use key::ToKey;
pub use reconciler::{Reconcilable, Reconciler, ReconcilerConfig, Round, Status, Target};
pub use table::{Change, Changes, Entry, Index, Revision, Row, Table, TableDef};

/// Errors of the database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("statedb storage: {0}")]
    Storage(#[from] sled::Error),
    /// Another handle (in this process or another) has the database open.
    #[error("statedb at {} is in use by another process", path.display())]
    Locked { path: std::path::PathBuf },
    #[error("statedb at {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("table {table}: encoding a row: {source}")]
    Encoding {
        table: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("table {table}: corrupt {what}")]
    Corrupt { table: String, what: &'static str },
    #[error("table {table}: index {index} already holds this key for another row")]
    UniqueViolation { table: String, index: String },
    #[error("table {table} has no index {index}")]
    UnknownIndex { table: String, index: String },
    #[error("table {table} is already open with other indexes")]
    SchemaMismatch { table: String },
    #[error("statedb transaction aborted")]
    Aborted,
}
