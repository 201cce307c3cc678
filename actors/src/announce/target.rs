//! [`ResponderTarget`]: the statedb reconcile target that pushes
//! `l2-announce` rows into the [`Datapath`]. Rows of this run are inserted
//! (their fence closed until the claim's fence opens); rows of an earlier
//! run keep only what is already in the maps; the full pass prunes
//! everything no row asks for. Entries this run starts answering are
//! collected for the announcer to announce once their fence is open.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use statedb::{Table, Target};

use super::DatapathObserver;
use super::datapath::{Applied, Datapath, DatapathError};
use super::maps::ResponderMaps;
use crate::RunId;
use crate::devices::{DEVICES, DeviceRow};
use crate::tables::L2AnnounceRow;

/// The reconciler's target: rows of `l2-announce` into the maps.
pub struct ResponderTarget<M> {
    pub(crate) datapath: Datapath<M>,
    db: statedb::Db,
    devices: Table<DeviceRow>,
    run: RunId,
    observer: Arc<dyn DatapathObserver>,
    /// Entries this run started answering since the last [`Self::take_started`].
    started: Vec<(IpAddr, u32)>,
}

impl<M: ResponderMaps> ResponderTarget<M> {
    pub fn new(
        datapath: Datapath<M>,
        db: &statedb::Db,
        run: RunId,
        observer: Arc<dyn DatapathObserver>,
    ) -> Result<Self, statedb::Error> {
        Ok(ResponderTarget {
            datapath,
            db: db.clone(),
            devices: Table::open(db, DEVICES)?,
            run,
            observer,
            started: Vec::new(),
        })
    }

    /// The entries this run started answering since the last call.
    pub fn take_started(&mut self) -> Vec<(IpAddr, u32)> {
        std::mem::take(&mut self.started)
    }

    fn device(&self, name: &str) -> Result<DeviceRow, DatapathError> {
        self.devices
            .get(&self.db, DEVICES.primary, name)?
            .map(|e| e.row)
            .ok_or_else(|| DatapathError::UnknownInterface(name.to_string()))
    }

    fn update_entry(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let device = self.device(&row.network_interface)?;
        let inherited = row.inherited(&self.run);
        match self
            .datapath
            .apply_row(row.ip, &row.claim, inherited, &device)?
        {
            Applied::Started => self.started.push((row.ip, device.index)),
            Applied::Unchanged | Applied::Kept => {}
        }
        Ok(())
    }

    fn delete_entry(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let ifindex = self.device(&row.network_interface).ok().map(|d| d.index);
        self.datapath
            .remove(row.ip, &row.network_interface, ifindex)
    }

    fn prune_entries(&mut self, desired: &[L2AnnounceRow]) -> Result<(), DatapathError> {
        let mut wanted: BTreeSet<(IpAddr, u32)> = BTreeSet::new();
        for row in desired {
            if let Ok(device) = self.device(&row.network_interface) {
                wanted.insert((row.ip, device.index));
            }
        }
        self.datapath.prune(&wanted)
    }
}

impl<M: ResponderMaps> Target<L2AnnounceRow> for ResponderTarget<M> {
    type Error = DatapathError;

    fn update(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let start = Instant::now();
        let result = self.update_entry(row);
        self.observer.reconciled(start.elapsed(), result.is_err());
        result
    }

    fn delete(&mut self, row: &L2AnnounceRow) -> Result<(), DatapathError> {
        let start = Instant::now();
        let result = self.delete_entry(row);
        self.observer.reconciled(start.elapsed(), result.is_err());
        result
    }

    fn prune(&mut self, desired: &[L2AnnounceRow]) -> Result<(), DatapathError> {
        let start = Instant::now();
        let result = self.prune_entries(desired);
        self.observer.reconciled(start.elapsed(), result.is_err());
        result
    }
}

/// Retry timing of the reconciler: device changes trigger a full pass, so
/// the capped backoff is only a backstop.
pub fn reconciler_config() -> statedb::ReconcilerConfig {
    statedb::ReconcilerConfig {
        retry_max: Duration::from_secs(2),
        ..Default::default()
    }
}
