//! Reading an instance's pins with no daemon: what `enforcer status` shows while the daemon is
//! down, and what a test checks after `kill -9`.

use std::path::Path;

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::links::PinnedLink,
};
use enforcer_common::{SlotConfig, counter, maps as names};
use serde::Serialize;

use super::{DatapathError, pins::PinDir};

/// What the pins hold.
#[derive(Clone, Debug, Serialize)]
pub struct PinnedState {
    /// The map directory read (the layout in use).
    pub layout: String,
    pub active_slot: u32,
    pub generation: u32,
    pub standby_generation: u32,
    /// Counters by name.
    pub counters: Vec<(&'static str, u64)>,
    /// Pinned links: program name, link id, id of the program it runs.
    pub links: Vec<PinnedLinkInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PinnedLinkInfo {
    pub program: String,
    pub link_id: u32,
    pub program_id: u32,
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    MapData::from_pin(dir.join(name)).map_err(|source| DatapathError::Map { map: name, source })
}

/// Reads the pins under `bpffs`; `None` when nothing is pinned there.
///
/// # Errors
/// When a pin exists but cannot be read.
pub fn read_pins(bpffs: &Path) -> Result<Option<PinnedState>, DatapathError> {
    let pins = PinDir::new(bpffs);
    let Some(maps) = pins
        .layouts()?
        .into_iter()
        .find(|dir| dir.join(names::ACTIVE_SLOT).exists())
    else {
        return Ok(None);
    };
    let error = |map: &'static str| move |source| DatapathError::Map { map, source };
    let active: Array<MapData, u32> = Array::try_from(Map::Array(open(&maps, names::ACTIVE_SLOT)?))
        .map_err(error(names::ACTIVE_SLOT))?;
    let active_slot = active.get(&0, 0).map_err(error(names::ACTIVE_SLOT))? & 1;
    let configs: Array<MapData, SlotConfig> =
        Array::try_from(Map::Array(open(&maps, names::SLOT_CONFIG)?))
            .map_err(error(names::SLOT_CONFIG))?;
    let generation_of = |slot: u32| {
        configs
            .get(&slot, 0)
            .map(|config| config.generation)
            .map_err(error(names::SLOT_CONFIG))
    };
    let counters_map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(&maps, names::COUNTERS)?))
            .map_err(error(names::COUNTERS))?;
    let mut counters = Vec::new();
    for (index, name) in (0..counter::COUNT).zip(counter::NAMES) {
        let values = counters_map
            .get(&index, 0)
            .map_err(error(names::COUNTERS))?;
        counters.push((name, values.iter().sum()));
    }
    let mut links = Vec::new();
    if let Ok(entries) = std::fs::read_dir(pins.links()) {
        for entry in entries.flatten() {
            let Ok(link) = PinnedLink::from_pin(entry.path()) else {
                continue;
            };
            let Ok(info) = aya::programs::links::FdLink::from(link).info() else {
                continue;
            };
            links.push(PinnedLinkInfo {
                program: entry.file_name().to_string_lossy().into_owned(),
                link_id: info.id(),
                program_id: info.program_id(),
            });
        }
    }
    links.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(Some(PinnedState {
        layout: maps
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        active_slot,
        generation: generation_of(active_slot)?,
        standby_generation: generation_of(1 - active_slot)?,
        counters,
        links,
    }))
}
