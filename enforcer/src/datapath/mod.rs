//! The only aya user: loads the kernel programs, writes compiled policy into their maps, attaches
//! them to the managed cgroup root, and hands out the event ring buffer and counters.
//!
//! Policy is written slot by slot: a new policy goes into the inactive slot, then one store to
//! `ACTIVE_SLOT` switches every later decision to it, then the old slot is emptied. Cgroup labels
//! are synced into the active slot by diff as cgroups come and go; the node's local addresses and
//! the instance's runtime facts live outside the slots.

mod maps;
mod programs;

use std::{collections::BTreeMap, collections::BTreeSet, io, path::Path};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, RingBuf},
    programs::ProgramError,
};
use enforcer_common::{CgroupLabel, Runtime, maps as names};

use self::maps::{HostMaps, PolicyMaps};
pub use self::{maps::Counters, programs::bpf_lsm_active};
use crate::compile::DesiredState;

/// The kernel object, built by `build.rs` from `enforcer-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// Errors loading, attaching or writing the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this binary was built without the kernel programs (AYA_BUILD_SKIP); rebuild with bpf-linker installed"
    )]
    NoObject,
    #[error("loading the kernel object")]
    Load(#[source] EbpfError),
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux), needed for the BPF LSM programs")]
    Btf(#[source] aya::BtfError),
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
    #[error(
        "map {map} is full ({capacity} entries): {unwritten} entries were not written; raise it with {flag}"
    )]
    Full {
        map: &'static str,
        capacity: u32,
        unwritten: usize,
        flag: &'static str,
    },
}

/// How to load the datapath.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Size of the event ring buffer (a power of two, at least one page).
    pub event_buffer_bytes: u32,
    /// Entries of the cgroup label map, shared by the two policy slots.
    pub cgroup_entries: u32,
    /// Load the BPF LSM programs (only where the kernel runs BPF LSM).
    pub lsm: bool,
}

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    maps: PolicyMaps,
    host: HostMaps,
    events: Option<RingBuf<MapData>>,
    /// Slot the kernel reads, once a policy has been applied.
    active: Option<u32>,
    generation: u32,
    lsm: bool,
    /// Why the LSM programs are not loaded although they were asked for.
    lsm_refused: Option<DatapathError>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("active", &self.active)
            .field("generation", &self.generation)
            .field("lsm", &self.lsm)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs into the kernel (verifier included) without attaching them.
    ///
    /// # Errors
    /// When the object is missing or the kernel refuses a program or map.
    pub fn load(options: LoadOptions) -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let btf = if options.lsm {
            Some(Btf::from_sys_fs().map_err(DatapathError::Btf)?)
        } else {
            None
        };
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .map_max_entries(names::EVENTS, options.event_buffer_bytes)
            .map_max_entries(names::CGROUP_IDENTITY, options.cgroup_entries)
            .load(EBPF_OBJECT)
            .map_err(DatapathError::Load)?;
        let lsm_refused = programs::load(&mut ebpf, btf.as_ref())?;
        let maps = PolicyMaps::take(&mut ebpf, options.cgroup_entries / 2)?;
        let host = HostMaps::take(&mut ebpf)?;
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
            host,
            events: Some(events),
            active: None,
            generation: 0,
            lsm: options.lsm && lsm_refused.is_none(),
            lsm_refused,
        })
    }

    /// Writes `state` and the cgroup labels into the inactive slot, switches the kernel to it, and
    /// empties the old one. Returns the generation now in force.
    ///
    /// # Errors
    /// When a policy map write fails; the previous policy then stays active. Cgroups beyond the
    /// label map's capacity are not an error here (see [`Datapath::sync_cgroups`]).
    pub fn apply(
        &mut self,
        state: &DesiredState,
        cgroups: &BTreeMap<u64, CgroupLabel>,
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
    /// When a map write fails, or [`DatapathError::Full`] when some labels did not fit (the
    /// rest are written; the unlabelled cgroups inherit or are held, never let out).
    pub fn sync_cgroups(
        &mut self,
        cgroups: &BTreeMap<u64, CgroupLabel>,
    ) -> Result<(usize, usize), DatapathError> {
        match self.active {
            Some(slot) => self.maps.sync_cgroups(slot, cgroups),
            None => Ok((0, 0)),
        }
    }

    /// How many cgroup labels one slot holds.
    #[must_use]
    pub const fn cgroup_capacity(&self) -> u32 {
        self.maps.cgroup_capacity()
    }

    /// Tells the kernel this instance's node namespace and the daemon's own cgroup.
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn set_runtime(&mut self, runtime: Runtime) -> Result<(), DatapathError> {
        self.host.set_runtime(runtime)
    }

    /// Brings the node's local addresses (16-byte, IPv4-mapped) in line with `addrs`.
    ///
    /// # Errors
    /// When the map cannot be written, or is full.
    pub fn sync_local_addresses(
        &mut self,
        netns_cookie: u64,
        addrs: &BTreeSet<[u8; 16]>,
    ) -> Result<(usize, usize), DatapathError> {
        self.host.sync_local_addresses(netns_cookie, addrs)
    }

    /// Attaches every program to the cgroup at `path`, for it and all cgroups below it; the LSM
    /// programs are told that root and attached too.
    ///
    /// # Errors
    /// When the cgroup cannot be opened or the kernel refuses the attachment.
    pub fn attach(&mut self, path: &Path) -> Result<(), DatapathError> {
        let cgroup = programs::open_cgroup(path)?;
        self.host.set_managed_root(&cgroup)?;
        programs::attach(&mut self.ebpf, &cgroup, self.lsm)
    }

    /// Why the BPF LSM programs were asked for but not loaded: the kernel refused one.
    #[must_use]
    pub const fn lsm_refused(&self) -> Option<&DatapathError> {
        self.lsm_refused.as_ref()
    }

    /// Whether the BPF LSM programs are loaded.
    #[must_use]
    pub const fn lsm(&self) -> bool {
        self.lsm
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
