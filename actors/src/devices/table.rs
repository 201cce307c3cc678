//! DeviceTableWriter: applies [`DeviceChange`]s from the DeviceActor to the
//! `devices` table and tells the ServiceActor which devices are selected
//! whenever that set changes.

use std::collections::BTreeSet;

use actix::prelude::*;
use tracing::warn;

use super::{DEVICES, DeviceChange, DeviceRow, write_change};
use crate::messages::SelectedDevices;

pub struct DeviceTableWriter {
    db: statedb::Db,
    table: statedb::Table<DeviceRow>,
    selected: Option<BTreeSet<String>>,
    notify: Option<Recipient<SelectedDevices>>,
}

impl DeviceTableWriter {
    pub fn new(
        db: statedb::Db,
        notify: Option<Recipient<SelectedDevices>>,
    ) -> Result<Self, statedb::Error> {
        Ok(DeviceTableWriter {
            table: statedb::Table::open(&db, DEVICES)?,
            db,
            selected: None,
            notify,
        })
    }
}

impl Actor for DeviceTableWriter {
    type Context = Context<Self>;
}

impl Handler<DeviceChange> for DeviceTableWriter {
    type Result = ();
    fn handle(&mut self, change: DeviceChange, _ctx: &mut Context<Self>) {
        if let Err(e) = write_change(&self.db, &self.table, change) {
            warn!(error = %e, "writing devices table");
            return;
        }
        let selected: BTreeSet<String> = match self.table.list(&self.db) {
            Ok(rows) => rows
                .into_iter()
                .filter(|e| e.row.selected)
                .map(|e| e.row.name)
                .collect(),
            Err(e) => {
                warn!(error = %e, "reading devices table");
                return;
            }
        };
        if self.selected.as_ref() != Some(&selected) {
            if let Some(n) = &self.notify {
                n.do_send(SelectedDevices(selected.clone()));
            }
            self.selected = Some(selected);
        }
    }
}
