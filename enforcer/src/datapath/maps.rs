//! Typed handles on the kernel's maps: the policy slots as a [`Datapath`], and the maps that are
//! not policy (runtime facts, local addresses, the managed root).

use std::{collections::BTreeSet, fs::File, io};

use aya::Ebpf;
use aya::maps::{
    Array, CgroupArray, HashMap, MapData, MapError, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use enforcer_common::{
    AddrKey, AddrLpmData, AddrValue, CgroupKey, CgroupLabel, IdentityInfo, IdentityKey,
    LocalAddrKey, RuleLpmData, RuleValue, Runtime, SlotConfig, capacity, counter, maps as names,
};

use super::{
    DatapathError,
    image::{EntryKey, EntryValue, SlotImage},
    slots::Datapath,
};

pub(super) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// A delete of a key that is not there: the goal (no such entry) is met.
pub(super) fn absent_ok(
    result: Result<(), MapError>,
    map: &'static str,
) -> Result<(), DatapathError> {
    match result {
        Err(MapError::SyscallError(error)) if error.io_error.kind() == io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other.map_err(map_error(map)),
    }
}

/// The policy maps: both slots of every table.
pub struct KernelMaps {
    active_slot: Array<MapData, u32>,
    slot_config: Array<MapData, SlotConfig>,
    cgroup_identity: HashMap<MapData, CgroupKey, CgroupLabel>,
    addr_exact: HashMap<MapData, AddrKey, AddrValue>,
    addr_cidr: LpmTrie<MapData, AddrLpmData, AddrValue>,
    identity_info: HashMap<MapData, IdentityKey, IdentityInfo>,
    rules: LpmTrie<MapData, RuleLpmData, RuleValue>,
    rules_exact: HashMap<MapData, RuleLpmData, RuleValue>,
    counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps").finish_non_exhaustive()
    }
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            active_slot: take(ebpf, names::ACTIVE_SLOT)?,
            slot_config: take(ebpf, names::SLOT_CONFIG)?,
            cgroup_identity: take(ebpf, names::CGROUP_IDENTITY)?,
            addr_exact: take(ebpf, names::ADDR_EXACT)?,
            addr_cidr: take(ebpf, names::ADDR_CIDR)?,
            identity_info: take(ebpf, names::IDENTITY_INFO)?,
            rules: take(ebpf, names::RULES)?,
            rules_exact: take(ebpf, names::RULES_EXACT)?,
            counters: take(ebpf, names::COUNTERS)?,
        })
    }
}

impl Datapath for KernelMaps {
    fn active_slot(&self) -> Result<u32, DatapathError> {
        self.active_slot
            .get(&0, 0)
            .map_err(map_error(names::ACTIVE_SLOT))
    }

    fn set_active_slot(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.active_slot
            .set(0, slot, 0)
            .map_err(map_error(names::ACTIVE_SLOT))
    }

    fn read_slot(&self, slot: u32) -> Result<SlotImage, DatapathError> {
        let [first, second] = self.read_slots()?;
        Ok(if slot & 1 == 0 { first } else { second })
    }

    fn read_slots(&self) -> Result<[SlotImage; 2], DatapathError> {
        let config = |slot: u32| {
            self.slot_config
                .get(&slot, 0)
                .map_err(map_error(names::SLOT_CONFIG))
        };
        let mut images = [
            SlotImage {
                config: config(0)?,
                ..SlotImage::default()
            },
            SlotImage {
                config: config(1)?,
                ..SlotImage::default()
            },
        ];
        // An entry of no slot (written by hand) is never read by the kernel: left alone.
        let mut put = |slot: u32, key: EntryKey, value: EntryValue| {
            if let Some(image) = images.get_mut(slot as usize) {
                image.entries.insert(key, value);
            }
        };
        for item in self.identity_info.iter() {
            let (key, info) = item.map_err(map_error(names::IDENTITY_INFO))?;
            put(
                key.slot,
                EntryKey::Identity(key.identity),
                EntryValue::Identity(info),
            );
        }
        for item in self.addr_exact.iter() {
            let (key, value) = item.map_err(map_error(names::ADDR_EXACT))?;
            put(
                key.slot,
                EntryKey::AddrExact(key.addr),
                EntryValue::Addr(value),
            );
        }
        for item in self.addr_cidr.iter() {
            let (key, value) = item.map_err(map_error(names::ADDR_CIDR))?;
            let data = key.data();
            let entry = EntryKey::AddrCidr {
                bits: key.prefix_len(),
                addr: data.addr,
            };
            put(data.slot, entry, EntryValue::Addr(value));
        }
        for item in self.rules.iter() {
            let (key, value) = item.map_err(map_error(names::RULES))?;
            let data = key.data();
            let entry = EntryKey::Rule {
                bits: key.prefix_len(),
                data: RuleLpmData { slot: 0, ..data },
            };
            put(data.slot, entry, EntryValue::Rule(value));
        }
        for item in self.rules_exact.iter() {
            let (data, value) = item.map_err(map_error(names::RULES_EXACT))?;
            let entry = EntryKey::RulePort(RuleLpmData { slot: 0, ..data });
            put(data.slot, entry, EntryValue::Rule(value));
        }
        for item in self.cgroup_identity.iter() {
            let (key, label) = item.map_err(map_error(names::CGROUP_IDENTITY))?;
            put(
                key.slot,
                EntryKey::Cgroup(key.cgroup_id),
                EntryValue::Cgroup(label),
            );
        }
        Ok(images)
    }

    fn set_config(&mut self, slot: u32, config: SlotConfig) -> Result<(), DatapathError> {
        self.slot_config
            .set(slot, config, 0)
            .map_err(map_error(names::SLOT_CONFIG))
    }

    fn put(&mut self, slot: u32, key: &EntryKey, value: &EntryValue) -> Result<(), DatapathError> {
        let map = key.map();
        let result = match (*key, *value) {
            (EntryKey::Identity(identity), EntryValue::Identity(info)) => self
                .identity_info
                .insert(IdentityKey { slot, identity }, info, 0),
            (EntryKey::AddrExact(addr), EntryValue::Addr(value)) => {
                self.addr_exact.insert(AddrKey { slot, addr }, value, 0)
            }
            (EntryKey::AddrCidr { bits, addr }, EntryValue::Addr(value)) => {
                self.addr_cidr
                    .insert(&Key::new(bits, AddrLpmData { slot, addr }), value, 0)
            }
            (EntryKey::RulePort(data), EntryValue::Rule(value)) => {
                self.rules_exact
                    .insert(RuleLpmData { slot, ..data }, value, 0)
            }
            (EntryKey::Rule { bits, data }, EntryValue::Rule(value)) => {
                self.rules
                    .insert(&Key::new(bits, RuleLpmData { slot, ..data }), value, 0)
            }
            (EntryKey::Cgroup(cgroup_id), EntryValue::Cgroup(label)) => {
                let key = CgroupKey {
                    cgroup_id,
                    slot,
                    _pad: 0,
                };
                self.cgroup_identity.insert(key, label, 0)
            }
            _ => return Err(DatapathError::Mismatched { map }),
        };
        result.map_err(map_error(map))
    }

    fn get(&self, slot: u32, key: &EntryKey) -> Result<Option<EntryValue>, DatapathError> {
        let map = key.map();
        let value = match *key {
            EntryKey::Identity(identity) => self
                .identity_info
                .get(&IdentityKey { slot, identity }, 0)
                .map(EntryValue::Identity),
            EntryKey::AddrExact(addr) => self
                .addr_exact
                .get(&AddrKey { slot, addr }, 0)
                .map(EntryValue::Addr),
            EntryKey::AddrCidr { bits, addr } => self
                .addr_cidr
                .get(&Key::new(bits, AddrLpmData { slot, addr }), 0)
                .map(EntryValue::Addr),
            EntryKey::RulePort(data) => self
                .rules_exact
                .get(&RuleLpmData { slot, ..data }, 0)
                .map(EntryValue::Rule),
            EntryKey::Rule { bits, data } => self
                .rules
                .get(&Key::new(bits, RuleLpmData { slot, ..data }), 0)
                .map(EntryValue::Rule),
            EntryKey::Cgroup(cgroup_id) => self
                .cgroup_identity
                .get(
                    &CgroupKey {
                        cgroup_id,
                        slot,
                        _pad: 0,
                    },
                    0,
                )
                .map(EntryValue::Cgroup),
        };
        match value {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map { map, source }),
        }
    }

    fn delete(&mut self, slot: u32, key: &EntryKey) -> Result<(), DatapathError> {
        let map = key.map();
        let result = match *key {
            EntryKey::Identity(identity) => {
                self.identity_info.remove(&IdentityKey { slot, identity })
            }
            EntryKey::AddrExact(addr) => self.addr_exact.remove(&AddrKey { slot, addr }),
            EntryKey::AddrCidr { bits, addr } => self
                .addr_cidr
                .remove(&Key::new(bits, AddrLpmData { slot, addr })),
            EntryKey::RulePort(data) => self.rules_exact.remove(&RuleLpmData { slot, ..data }),
            EntryKey::Rule { bits, data } => self
                .rules
                .remove(&Key::new(bits, RuleLpmData { slot, ..data })),
            EntryKey::Cgroup(cgroup_id) => self.cgroup_identity.remove(&CgroupKey {
                cgroup_id,
                slot,
                _pad: 0,
            }),
        };
        absent_ok(result, map)
    }

    fn counters(&self) -> Result<Vec<u64>, DatapathError> {
        (0..counter::COUNT)
            .map(|index| {
                self.counters
                    .get(&index, 0)
                    .map(|values| values.iter().sum())
                    .map_err(map_error(names::COUNTERS))
            })
            .collect()
    }
}

/// The maps that are not policy: runtime facts, local addresses, the managed root.
pub(super) struct HostMaps {
    runtime: Array<MapData, Runtime>,
    local_addrs: HashMap<MapData, LocalAddrKey, u32>,
    managed_root: CgroupArray<MapData>,
    /// What `LOCAL_ADDRS` holds: read from the map at start (an adopted map keeps the addresses
    /// an earlier daemon wrote), then kept by diff.
    written_addrs: BTreeSet<LocalAddrKey>,
}

impl HostMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let local_addrs: HashMap<MapData, LocalAddrKey, u32> = take(ebpf, names::LOCAL_ADDRS)?;
        let written_addrs = local_addrs
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(names::LOCAL_ADDRS))?;
        Ok(Self {
            runtime: take(ebpf, names::RUNTIME)?,
            local_addrs,
            managed_root: take(ebpf, names::MANAGED_ROOT)?,
            written_addrs,
        })
    }

    pub(super) fn set_runtime(&mut self, runtime: Runtime) -> Result<(), DatapathError> {
        self.runtime
            .set(0, runtime, 0)
            .map_err(map_error(names::RUNTIME))
    }

    pub(super) fn set_managed_root(&mut self, cgroup: &File) -> Result<(), DatapathError> {
        use std::os::fd::AsRawFd as _;
        self.managed_root
            .set(0, cgroup.as_raw_fd(), 0)
            .map_err(map_error(names::MANAGED_ROOT))
    }

    pub(super) fn sync_local_addresses(
        &mut self,
        netns_cookie: u64,
        addrs: &BTreeSet<[u8; 16]>,
    ) -> Result<(usize, usize), DatapathError> {
        let desired: BTreeSet<LocalAddrKey> = addrs
            .iter()
            .map(|addr| LocalAddrKey {
                netns_cookie,
                addr: *addr,
            })
            .collect();
        let stale: Vec<LocalAddrKey> = self.written_addrs.difference(&desired).copied().collect();
        for key in &stale {
            absent_ok(self.local_addrs.remove(key), names::LOCAL_ADDRS)?;
            self.written_addrs.remove(key);
        }
        let missing: Vec<LocalAddrKey> = desired.difference(&self.written_addrs).copied().collect();
        let mut added = 0;
        for key in &missing {
            if self.written_addrs.len() >= capacity::LOCAL_ADDRS as usize {
                return Err(DatapathError::Full {
                    map: names::LOCAL_ADDRS,
                    capacity: capacity::LOCAL_ADDRS,
                    unwritten: missing.len() - added,
                    flag: "(a rebuild with a larger capacity::LOCAL_ADDRS)",
                });
            }
            self.local_addrs
                .insert(key, 0, 0)
                .map_err(map_error(names::LOCAL_ADDRS))?;
            self.written_addrs.insert(*key);
            added += 1;
        }
        Ok((added, stale.len()))
    }
}
