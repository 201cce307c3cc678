//! [`PinnedMaps`]: read-only access to the maps a [`crate::Responder`]
//! pinned, from another handle than the one that writes them — for tests
//! that watch a running agent's datapath and for inspecting a stopped
//! agent's. It loads no program and writes nothing.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData};

use crate::maps::{EntryValue, V4Key, V6Key};
use crate::responder::{
    MAP_FENCE, MAP_LIVENESS, MAP_V4, MAP_V6, list_entries, map_err, pinned_links,
};
use crate::{AttachedLink, ResponderEntry, ResponderError};

/// The pinned responder maps under one bpffs directory, read-only.
pub struct PinnedMaps {
    pin_dir: PathBuf,
    v4: HashMap<MapData, V4Key, EntryValue>,
    v6: HashMap<MapData, V6Key, EntryValue>,
    liveness: Array<MapData, u64>,
    fence: Array<MapData, u64>,
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedMaps")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

fn open(pin_dir: &Path, name: &'static str) -> Result<Map, ResponderError> {
    MapData::from_pin(pin_dir.join(name))
        .and_then(Map::from_map_data)
        .map_err(map_err(name))
}

impl PinnedMaps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, ResponderError> {
        Ok(PinnedMaps {
            pin_dir: pin_dir.to_owned(),
            v4: HashMap::try_from(open(pin_dir, MAP_V4)?).map_err(map_err(MAP_V4))?,
            v6: HashMap::try_from(open(pin_dir, MAP_V6)?).map_err(map_err(MAP_V6))?,
            liveness: Array::try_from(open(pin_dir, MAP_LIVENESS)?)
                .map_err(map_err(MAP_LIVENESS))?,
            fence: Array::try_from(open(pin_dir, MAP_FENCE)?).map_err(map_err(MAP_FENCE))?,
        })
    }

    /// Every entry of both responder maps with its counter.
    pub fn entries(&self) -> Result<Vec<ResponderEntry>, ResponderError> {
        list_entries(&self.v4, &self.v6)
    }

    /// `lease_fence[slot]` (CLOCK_MONOTONIC ns).
    pub fn fence(&self, slot: u32) -> Result<u64, ResponderError> {
        self.fence.get(&slot, 0).map_err(map_err(MAP_FENCE))
    }

    /// `agent_liveness[0]` (CLOCK_MONOTONIC ns).
    pub fn liveness(&self) -> Result<u64, ResponderError> {
        self.liveness.get(&0, 0).map_err(map_err(MAP_LIVENESS))
    }

    /// The attachments pinned under the same directory.
    pub fn attached(&self) -> Result<Vec<AttachedLink>, ResponderError> {
        pinned_links(&self.pin_dir)
    }
}
