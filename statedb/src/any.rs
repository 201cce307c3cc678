//! Type-erased access to tables, for a CLI that knows table names only at
//! run time, and the text rendering of rows.

use std::future::Future;
use std::pin::Pin;

use crate::table::{Changes, Row, Table};
use crate::{Db, Error, Revision};

/// A table whose row type is not known to the caller.
pub trait AnyTable: Send + Sync {
    fn name(&self) -> &str;
    /// Column names, as [`Row::header`].
    fn header(&self) -> Vec<String>;
    /// The last committed revision.
    fn revision(&self) -> Revision;
    /// Every row as JSON, in primary key order.
    fn list_json(&self, db: &Db) -> Result<Vec<serde_json::Value>, Error>;
    /// Every row as cells, in primary key order.
    fn list_cells(&self, db: &Db) -> Result<Vec<Vec<String>>, Error>;
    /// Registers a change reader (see [`Table::changes`]).
    fn changes(&self, db: &Db) -> Result<Box<dyn AnyChanges>, Error>;
}

/// A change as [`AnyChanges`] yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyChange {
    pub revision: Revision,
    pub deleted: bool,
    pub json: serde_json::Value,
    pub cells: Vec<String>,
}

/// A change reader whose row type is not known to the caller.
pub trait AnyChanges: Send {
    /// Every change since the previous batch (see [`Changes::next_batch`]).
    fn next_batch(&mut self) -> Result<Vec<AnyChange>, Error>;
    /// Resolves when there are changes not yet returned. Cancel-safe.
    fn wait(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl<R: Row> AnyTable for Table<R> {
    fn name(&self) -> &str {
        Table::name(self)
    }

    fn header(&self) -> Vec<String> {
        R::header().into_iter().map(str::to_string).collect()
    }

    fn revision(&self) -> Revision {
        self.committed_revision()
    }

    fn list_json(&self, db: &Db) -> Result<Vec<serde_json::Value>, Error> {
        self.list(db)?
            .into_iter()
            .map(|e| to_json(self.name(), &e.row))
            .collect()
    }

    fn list_cells(&self, db: &Db) -> Result<Vec<Vec<String>>, Error> {
        Ok(self.list(db)?.into_iter().map(|e| e.row.cells()).collect())
    }

    fn changes(&self, db: &Db) -> Result<Box<dyn AnyChanges>, Error> {
        Ok(Box::new(Table::changes(self, db)))
    }
}

impl<R: Row> AnyChanges for Changes<R> {
    fn next_batch(&mut self) -> Result<Vec<AnyChange>, Error> {
        let table = self.table_name().to_string();
        Changes::next_batch(self)?
            .into_iter()
            .map(|c| {
                Ok(AnyChange {
                    revision: c.revision,
                    deleted: c.deleted,
                    json: to_json(&table, &c.row)?,
                    cells: c.row.cells(),
                })
            })
            .collect()
    }

    fn wait(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Changes::wait(self))
    }
}

fn to_json<R: Row>(table: &str, row: &R) -> Result<serde_json::Value, Error> {
    serde_json::to_value(row).map_err(|source| Error::Encoding {
        table: table.to_string(),
        source,
    })
}

/// Column-aligned text as `cilium-dbg statedb <table>` prints it: the header
/// line starts with `# `, columns are separated by at least three spaces,
/// every line ends with a newline and has no trailing spaces.
pub fn render_table<H: AsRef<str>>(header: &[H], rows: &[Vec<String>]) -> String {
    const GAP: usize = 3;
    let head: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if i == 0 {
                format!("# {}", h.as_ref())
            } else {
                h.as_ref().to_string()
            }
        })
        .collect();
    let columns = rows
        .iter()
        .map(Vec::len)
        .chain([head.len()])
        .max()
        .unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for line in std::iter::once(&head).chain(rows) {
        for (i, cell) in line.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&head).chain(rows) {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < line.len() {
                let pad = widths[i] - cell.chars().count() + GAP;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_table_aligns_columns_like_cilium() {
        let text = render_table(
            &["IP", "NetworkInterface"],
            &[
                vec!["10.0.10.0".to_string(), "eth0".to_string()],
                vec!["192.0.2.100".to_string(), "".to_string()],
            ],
        );
        assert_eq!(
            text,
            "# IP          NetworkInterface\n\
             10.0.10.0     eth0\n\
             192.0.2.100\n"
        );
    }

    #[test]
    fn render_table_with_no_rows_prints_the_header() {
        assert_eq!(render_table(&["Name", "MTU"], &[]), "# Name   MTU\n");
    }
}
