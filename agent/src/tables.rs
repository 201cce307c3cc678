//! The agent's state tables by name, for the local API and `statedb --db`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actors::tables::{DEVICES, L2_ANNOUNCE, LEASES, POLICIES};
use statedb::{AnyTable, Db, Table};

use crate::api::{DumpRow, TableDump};

pub use actors::tables::NAMES;

/// How long `run` waits for the lock of a database whose previous owner
/// is still exiting (a restart right after SIGKILL).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens (creating when new) the database and every table in it, waiting
/// briefly for a lock still held by an exiting agent.
pub fn open(path: &Path) -> Result<Db, statedb::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let db = loop {
        match Db::open(path) {
            Ok(db) => break db,
            Err(statedb::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    register(&db)?;
    Ok(db)
}

/// Why `statedb --db` could not open a stopped agent's files.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the database at {} is in use by a running agent; query the agent instead (without --db)",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("cannot open the database at {}: {source}", path.display())]
    Other {
        path: PathBuf,
        source: statedb::Error,
    },
}

/// Opens the files of a stopped agent without waiting; fails if an agent
/// holds them.
pub fn open_existing(path: &Path) -> Result<Db, OpenError> {
    let open = || -> Result<Db, statedb::Error> {
        let db = Db::open(path)?;
        register(&db)?;
        Ok(db)
    };
    open().map_err(|e| match e {
        statedb::Error::Locked { .. } => OpenError::InUse {
            path: path.to_path_buf(),
        },
        source => OpenError::Other {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Opens every table so that the database lists them.
pub fn register(db: &Db) -> Result<(), statedb::Error> {
    Table::open(db, DEVICES)?;
    Table::open(db, L2_ANNOUNCE)?;
    Table::open(db, LEASES)?;
    Table::open(db, POLICIES)?;
    Ok(())
}

/// Whether `name` is one of the agent's tables.
pub fn is_known(name: &str) -> bool {
    NAMES.contains(&name)
}

/// The column names of table `name`.
pub fn header(name: &str) -> Option<Vec<&'static str>> {
    use statedb::Row;
    Some(match name {
        "devices" => actors::devices::DeviceRow::header(),
        "l2-announce" => actors::tables::L2AnnounceRow::header(),
        "leases" => actors::tables::LeaseRow::header(),
        "policies" => actors::tables::PolicyRow::header(),
        _ => return None,
    })
}

/// The open table called `name`, type-erased, for change streams.
pub fn get(db: &Db, name: &str) -> Option<Arc<dyn AnyTable>> {
    db.table(name)
}

fn dump_typed<R: statedb::Row>(db: &Db, def: statedb::TableDef<R>) -> Result<TableDump, String> {
    let table = Table::open(db, def).map_err(|e| e.to_string())?;
    let entries = table.list(db).map_err(|e| e.to_string())?;
    let rows = entries
        .into_iter()
        .map(|e| {
            Ok(DumpRow {
                cells: e.row.cells(),
                object: serde_json::to_value(&e.row).map_err(|e| e.to_string())?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(TableDump {
        table: def.name.to_string(),
        header: R::header().into_iter().map(str::to_string).collect(),
        rows,
    })
}

/// Every row of table `name` (one consistent read): cells and JSON.
pub fn dump(db: &Db, name: &str) -> Result<TableDump, String> {
    match name {
        "devices" => dump_typed(db, DEVICES),
        "l2-announce" => dump_typed(db, L2_ANNOUNCE),
        "leases" => dump_typed(db, LEASES),
        "policies" => dump_typed(db, POLICIES),
        other => Err(format!("unknown table {other:?}")),
    }
}
