//! The datapath: the two policy slots over a [`Datapath`] store ([`PolicySlots`]), the kernel's
//! maps as one such store and an in-memory one, and the only aya user, [`KernelDatapath`], which
//! loads the programs, pins them with their maps and links, and adopts what an earlier daemon
//! pinned.
//!
//! Policy is written slot by slot (see [`slots`]); the node's local addresses and the instance's
//! runtime facts live outside the slots.

mod image;
mod inspect;
mod interfaces;
mod maps;
mod memory;
mod pins;
mod programs;
mod reports;
pub mod slots;
#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, io, path::Path, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, RingBuf},
    pin::PinError,
    programs::ProgramError,
};
use enforcer_common::{Runtime, maps as names};

use self::maps::HostMaps;
pub use self::{
    image::{EntryKey, EntryValue, SlotImage},
    inspect::{PinnedLinkInfo, PinnedState, read_pins},
    interfaces::select as select_interfaces,
    maps::KernelMaps,
    memory::MemoryDatapath,
    pins::{PinDir, layout_name},
    programs::{Attached, bpf_lsm_active},
    reports::{Drained, FLIP_GRACE, ReportWindows},
    slots::{Applied, Datapath, PolicySlots, Repairs},
};
use crate::compile::Limits;

/// The kernel object, built by `build.rs` from `enforcer-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// Errors loading, attaching, pinning or writing the datapath.
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
    #[error("an entry of the wrong kind for map {map}")]
    Mismatched { map: &'static str },
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
    #[error(
        "slot {slot} does not read back as written ({wrong} entries missing or different, {unexpected} unexpected); the policy in force is unchanged"
    )]
    Verify {
        slot: u32,
        wrong: usize,
        unexpected: usize,
    },
    #[error("there is no previous policy to roll back to")]
    NoStandby,
    #[error("pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinning program or link {program}")]
    PinLink {
        program: &'static str,
        #[source]
        source: PinError,
    },
    #[error("mounting bpffs at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching or replacing the program of link {program}")]
    Link {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("attaching the interface layer to {interface}")]
    Interface {
        interface: String,
        #[source]
        source: crate::host::HostError,
    },
    #[error("there is no interface {0} in the node's network namespace (--interface)")]
    NoInterface(String),
    #[error("listing the interfaces of the node's network namespace")]
    ListInterfaces(#[source] crate::host::HostError),
}

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Size of the event ring buffer (a power of two, at least one page).
    pub event_buffer_bytes: u32,
    /// Entries of the cgroup label map, shared by the two policy slots.
    pub cgroup_entries: u32,
    /// Entries of the connection-tracking table (`FLOWS`).
    pub flow_entries: u32,
    /// Sizes of the other policy maps.
    pub limits: Limits,
    /// Load the BPF LSM programs (only where the kernel runs BPF LSM).
    pub lsm: bool,
    /// The instance's bpffs directory.
    pub pins: PathBuf,
}

impl LoadOptions {
    /// The sizes that make up the map layout (see [`layout_name`]).
    fn sizes(&self) -> [(&'static str, u32); 8] {
        [
            (names::EVENTS, self.event_buffer_bytes),
            (names::CGROUP_IDENTITY, self.cgroup_entries),
            (names::FLOWS, self.flow_entries),
            (names::ADDR_EXACT, self.limits.addr_exact),
            (names::ADDR_CIDR, self.limits.addr_cidr),
            (names::IDENTITY_INFO, self.limits.identities),
            (names::RULES, self.limits.rules),
            (names::RULES_EXACT, self.limits.rules),
        ]
    }
}

/// How the daemon found the instance's pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Nothing was pinned: a first start.
    Fresh,
    /// The maps of this layout were pinned: their policy, sockets, counters and unread events
    /// carry on.
    Adopted,
    /// Links were pinned but over maps of another layout: fresh maps were made beside them, and
    /// the old ones are removed once this daemon's programs run.
    NewLayout,
}

/// The loaded datapath.
pub struct KernelDatapath {
    ebpf: Ebpf,
    slots: PolicySlots<KernelMaps>,
    host: HostMaps,
    events: Option<RingBuf<MapData>>,
    reports: Option<ReportWindows>,
    lsm: bool,
    /// Why the LSM programs are not loaded although they were asked for.
    lsm_refused: Option<DatapathError>,
    /// Whether the kernel has tcx links, which the interface layer needs (6.6+).
    interface_layer: bool,
    pins: PinDir,
    layout: String,
    adoption: Adoption,
    /// Where bpffs was mounted for this instance, if it was not.
    mounted: Option<PathBuf>,
}

impl std::fmt::Debug for KernelDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDatapath")
            .field("pins", &self.pins)
            .field("layout", &self.layout)
            .field("adoption", &self.adoption)
            .field("lsm", &self.lsm)
            .finish_non_exhaustive()
    }
}

impl KernelDatapath {
    /// Loads the programs into the kernel (verifier included) without attaching them, over the
    /// instance's pinned maps when there are any (mounting bpffs if needed).
    ///
    /// # Errors
    /// When the object is missing, bpffs cannot be prepared, or the kernel refuses a program or
    /// map.
    pub fn load(options: &LoadOptions) -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let pins = PinDir::new(&options.pins);
        let layout = layout_name(&options.sizes());
        let maps_dir = pins.maps(&layout);
        let adoption = if maps_dir.join(names::ACTIVE_SLOT).exists() {
            Adoption::Adopted
        } else if pins.has_links() {
            Adoption::NewLayout
        } else {
            Adoption::Fresh
        };
        let mounted = pins.prepare(&layout)?;
        let btf = if options.lsm {
            Some(Btf::from_sys_fs().map_err(DatapathError::Btf)?)
        } else {
            None
        };
        let map_paths: Vec<(&str, PathBuf)> = names::ALL
            .iter()
            .map(|name| (*name, maps_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader.btf(btf.as_ref());
        for (name, size) in options.sizes() {
            loader.map_max_entries(name, size);
        }
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DatapathError::Load)?;
        let lsm_refused = programs::load(&mut ebpf, btf.as_ref())?;
        interfaces::load(&mut ebpf)?;
        let interface_layer = interfaces::tcx_supported(&ebpf)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        let slots = PolicySlots::adopt(maps, options.cgroup_entries as usize / 2)?;
        let host = HostMaps::take(&mut ebpf)?;
        let events = ebpf
            .take_map(names::EVENTS)
            .ok_or(DatapathError::MissingMap(names::EVENTS))?;
        let events = RingBuf::try_from(events).map_err(|source| DatapathError::Map {
            map: names::EVENTS,
            source,
        })?;
        let reports = ReportWindows::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            slots,
            host,
            events: Some(events),
            reports: Some(reports),
            lsm: options.lsm && lsm_refused.is_none(),
            lsm_refused,
            interface_layer,
            pins,
            layout,
            adoption,
            mounted,
        })
    }

    /// The policy slots.
    #[must_use]
    pub const fn slots(&self) -> &PolicySlots<KernelMaps> {
        &self.slots
    }

    /// The policy slots, to write.
    pub const fn slots_mut(&mut self) -> &mut PolicySlots<KernelMaps> {
        &mut self.slots
    }

    /// How the pins were found at load.
    #[must_use]
    pub const fn adoption(&self) -> Adoption {
        self.adoption
    }

    /// Where bpffs was mounted at load, if it had to be.
    #[must_use]
    pub fn mounted(&self) -> Option<&Path> {
        self.mounted.as_deref()
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

    /// Makes every program run on the cgroup at `path` and all cgroups below it: pinned links get
    /// this daemon's programs in one step each, missing ones are made and pinned. Then the maps
    /// of an older layout, which no program reads any more, are removed.
    ///
    /// # Errors
    /// When the cgroup cannot be opened, a pin cannot be written or the kernel refuses.
    pub fn attach(&mut self, path: &Path) -> Result<Attached, DatapathError> {
        let cgroup = programs::open_cgroup(path)?;
        self.host.set_managed_root(&cgroup)?;
        let attached = programs::attach(&mut self.ebpf, &cgroup, self.lsm, &self.pins)?;
        for old in self.pins.other_layouts(&self.layout)? {
            std::fs::remove_dir_all(&old).map_err(|source| DatapathError::Pin {
                path: old.clone(),
                source,
            })?;
        }
        Ok(attached)
    }

    /// Whether the kernel can run the interface layer (it has tcx links, 6.6+).
    #[must_use]
    pub const fn interface_layer(&self) -> bool {
        self.interface_layer
    }

    /// Puts the interface layer on `chosen` (interfaces of the node's namespace `ns`) but those
    /// in `current` (covered by this daemon already), and takes it off interfaces it was pinned on
    /// that are not chosen any more. Returns how many are covered.
    ///
    /// # Errors
    /// When the namespace cannot be entered, the kernel refuses a link or a pin fails.
    pub fn attach_interfaces(
        &mut self,
        ns: &crate::host::NetNs,
        chosen: &[crate::host::Interface],
        current: &[String],
    ) -> Result<usize, DatapathError> {
        interfaces::attach(&self.ebpf, &self.pins, ns, chosen, current)
    }

    /// Removes every pin of the instance: its programs are detached once this daemon exits.
    ///
    /// # Errors
    /// When a pin cannot be removed.
    pub fn unpin(&self) -> Result<(), DatapathError> {
        self.pins.remove_all()
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

    /// The kernel's aggregation windows; `None` once taken.
    pub fn take_reports(&mut self) -> Option<ReportWindows> {
        self.reports.take()
    }
}
