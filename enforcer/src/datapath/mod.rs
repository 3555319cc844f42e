//! The only aya user: loads the kernel programs, writes compiled policy into their maps, attaches
//! them to the managed cgroup root, and hands out the event ring buffer and counters.
//!
//! Policy is written slot by slot: a new policy goes into the inactive slot, then one store to
//! `ACTIVE_SLOT` switches every later decision to it, then the old slot is emptied. Cgroup labels
//! are synced into the active slot by diff as cgroups come and go.

mod maps;

use std::{collections::BTreeMap, fs::File, io, path::Path};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, RingBuf},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError},
};
use enforcer_common::maps as names;

pub use self::maps::Counters;
use self::maps::PolicyMaps;
use crate::compile::DesiredState;

/// The kernel object, built by `build.rs` from `enforcer-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// The programs that judge connections (`cgroup_sock_addr`).
const JUDGES: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// The programs that keep the listener map (`cgroup_sock`); attached first, so that sockets bound
/// while the judges are being attached are already seen.
const OBSERVERS: [&str; 3] = ["post_bind4", "post_bind6", "sock_release"];

/// Errors loading, attaching or writing the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this binary was built without the kernel programs (AYA_BUILD_SKIP); rebuild with bpf-linker installed"
    )]
    NoObject,
    #[error("loading the kernel object")]
    Load(#[source] EbpfError),
    #[error("the kernel object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the kernel object has no map {0}")]
    MissingMap(&'static str),
    #[error("program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("opening cgroup {path}")]
    Cgroup {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    maps: PolicyMaps,
    events: Option<RingBuf<MapData>>,
    /// Slot the kernel reads, once a policy has been applied.
    active: Option<u32>,
    generation: u32,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("active", &self.active)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs into the kernel (verifier included) without attaching them, with an
    /// event ring buffer of `event_buffer_bytes` (a power of two, at least one page).
    ///
    /// # Errors
    /// When the object is missing or the kernel refuses a program or map.
    pub fn load(event_buffer_bytes: u32) -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, event_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(DatapathError::Load)?;
        for name in OBSERVERS {
            program::<CgroupSock>(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        for name in JUDGES {
            program::<CgroupSockAddr>(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        let maps = PolicyMaps::take(&mut ebpf)?;
        let events = ebpf
            .take_map(names::EVENTS)
            .ok_or(DatapathError::MissingMap(names::EVENTS))?;
        let events = RingBuf::try_from(events).map_err(|source| DatapathError::Map {
            map: names::EVENTS,
            source,
        })?;
        Ok(Self {
            ebpf,
            maps,
            events: Some(events),
            active: None,
            generation: 0,
        })
    }

    /// Writes `state` and the cgroup labels into the inactive slot, switches the kernel to it, and
    /// empties the old one. Returns the generation now in force.
    ///
    /// # Errors
    /// When a map write fails; the previous policy then stays active.
    pub fn apply(
        &mut self,
        state: &DesiredState,
        cgroups: &BTreeMap<u64, u32>,
    ) -> Result<u32, DatapathError> {
        let slot = self.active.map_or(0, |active| 1 - active);
        let generation = self.generation.wrapping_add(1);
        if let Err(error) = self.maps.write_slot(slot, generation, state, cgroups) {
            // Leave nothing half-written behind in the slot nobody reads.
            self.maps.clear_slot(slot);
            return Err(error);
        }
        self.maps.activate(slot)?;
        if let Some(old) = self.active.replace(slot) {
            self.maps.clear_slot(old);
        }
        self.generation = generation;
        Ok(generation)
    }

    /// Brings the active slot's cgroup labels in line with `cgroups`: deletes and adds only what
    /// changed. Returns (added or changed, removed).
    ///
    /// # Errors
    /// When a map write fails.
    pub fn sync_cgroups(
        &mut self,
        cgroups: &BTreeMap<u64, u32>,
    ) -> Result<(usize, usize), DatapathError> {
        match self.active {
            Some(slot) => self.maps.sync_cgroups(slot, cgroups),
            None => Ok((0, 0)),
        }
    }

    /// Attaches every program to the cgroup at `path`, for it and all cgroups below it.
    ///
    /// # Errors
    /// When the cgroup cannot be opened or the kernel refuses the attachment.
    pub fn attach(&mut self, path: &Path) -> Result<(), DatapathError> {
        let cgroup = File::open(path).map_err(|source| DatapathError::Cgroup {
            path: path.display().to_string(),
            source,
        })?;
        // Through a bpf_link (kernel ≥ 5.7) "single" means flags 0, which is the only mode
        // link_create accepts for cgroups; links always coexist with other programs.
        let mode = CgroupAttachMode::Single;
        let attach_error = |program| move |source| DatapathError::Program { program, source };
        for name in OBSERVERS {
            program::<CgroupSock>(&mut self.ebpf, name)?
                .attach(&cgroup, mode)
                .map_err(attach_error(name))?;
        }
        for name in JUDGES {
            program::<CgroupSockAddr>(&mut self.ebpf, name)?
                .attach(&cgroup, mode)
                .map_err(attach_error(name))?;
        }
        Ok(())
    }

    /// The event ring buffer; `None` once taken.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// A handle to read the per-CPU verdict counters.
    ///
    /// # Errors
    /// When the counters map is missing.
    pub fn counters(&mut self) -> Result<Counters, DatapathError> {
        Counters::take(&mut self.ebpf)
    }
}

/// The loaded program `name` as its concrete type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            source,
        })
}
