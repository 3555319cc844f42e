//! Typed handles on the policy maps, and the slot-wise writes and diffs over them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
};

use aya::Ebpf;
use aya::maps::{
    Array, CgroupArray, HashMap, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use enforcer_common::{
    ADDR_LPM_SLOT_BITS, AddrKey, AddrLpmData, AddrValue, CgroupKey, CgroupLabel, IdentityInfo,
    IdentityKey, LocalAddrKey, RULE_LPM_FIXED_BITS, RuleLpmData, RuleValue, Runtime, SlotConfig,
    capacity, counter, maps as names,
};

use super::DatapathError;
use crate::compile::DesiredState;

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// What has been written to one slot, so it can be emptied or diffed without reading the kernel.
#[derive(Default)]
struct Written {
    cgroups: BTreeMap<u64, CgroupLabel>,
    addr_exact: Vec<[u8; 16]>,
    addr_cidr: Vec<(u32, [u8; 16])>,
    identities: Vec<u32>,
    rules: Vec<(u32, RuleLpmData)>,
}

pub(super) struct PolicyMaps {
    active_slot: Array<MapData, u32>,
    slot_config: Array<MapData, SlotConfig>,
    cgroup_identity: HashMap<MapData, CgroupKey, CgroupLabel>,
    addr_exact: HashMap<MapData, AddrKey, AddrValue>,
    addr_cidr: LpmTrie<MapData, AddrLpmData, AddrValue>,
    identity_info: HashMap<MapData, IdentityKey, IdentityInfo>,
    rules: LpmTrie<MapData, RuleLpmData, RuleValue>,
    written: [Written; 2],
    /// Cgroup labels one slot may hold (half the map: two slots share it during a swap).
    cgroup_capacity: u32,
}

impl PolicyMaps {
    pub(super) fn take(ebpf: &mut Ebpf, cgroup_capacity: u32) -> Result<Self, DatapathError> {
        Ok(Self {
            cgroup_capacity,
            active_slot: take(ebpf, names::ACTIVE_SLOT)?,
            slot_config: take(ebpf, names::SLOT_CONFIG)?,
            cgroup_identity: take(ebpf, names::CGROUP_IDENTITY)?,
            addr_exact: take(ebpf, names::ADDR_EXACT)?,
            addr_cidr: take(ebpf, names::ADDR_CIDR)?,
            identity_info: take(ebpf, names::IDENTITY_INFO)?,
            rules: take(ebpf, names::RULES)?,
            written: [Written::default(), Written::default()],
        })
    }

    pub(super) fn write_slot(
        &mut self,
        slot: u32,
        generation: u32,
        state: &DesiredState,
        cgroups: &BTreeMap<u64, CgroupLabel>,
    ) -> Result<(), DatapathError> {
        let index = slot as usize & 1;
        for (id, info) in &state.identity_info {
            let key = IdentityKey {
                slot,
                identity: *id,
            };
            self.identity_info
                .insert(key, info, 0)
                .map_err(map_error(names::IDENTITY_INFO))?;
            self.written[index].identities.push(*id);
        }
        for (addr, value) in &state.addr_exact {
            let key = AddrKey { slot, addr: *addr };
            self.addr_exact
                .insert(key, value, 0)
                .map_err(map_error(names::ADDR_EXACT))?;
            self.written[index].addr_exact.push(*addr);
        }
        for (prefix, value) in &state.addr_cidr {
            let bits = ADDR_LPM_SLOT_BITS + u32::from(prefix.bits);
            let key = Key::new(
                bits,
                AddrLpmData {
                    slot,
                    addr: prefix.addr,
                },
            );
            self.addr_cidr
                .insert(&key, value, 0)
                .map_err(map_error(names::ADDR_CIDR))?;
            self.written[index].addr_cidr.push((bits, prefix.addr));
        }
        for (rule, value) in &state.rules {
            let data = RuleLpmData {
                slot,
                src_identity: rule.src_identity,
                dst_identity: rule.dst_identity,
                protocol: rule.protocol,
                _pad: 0,
                port_be: rule.ports.first.to_be(),
            };
            let bits = RULE_LPM_FIXED_BITS + u32::from(rule.ports.prefix_len);
            self.rules
                .insert(&Key::new(bits, data), value, 0)
                .map_err(map_error(names::RULES))?;
            self.written[index].rules.push((bits, data));
        }
        match self.sync_cgroups(slot, cgroups) {
            // Cgroups that do not fit inherit their ancestors' labels or are held: never let out,
            // so the policy still applies; the caller reports the shortfall on its next sync.
            Ok(_) | Err(DatapathError::Full { .. }) => {}
            Err(error) => return Err(error),
        }
        let config = SlotConfig {
            generation,
            ..state.config
        };
        self.slot_config
            .set(slot, config, 0)
            .map_err(map_error(names::SLOT_CONFIG))
    }

    /// One store: every decision after it reads `slot`.
    pub(super) fn activate(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.active_slot
            .set(0, slot, 0)
            .map_err(map_error(names::ACTIVE_SLOT))
    }

    pub(super) fn clear_slot(&mut self, slot: u32) {
        let written = std::mem::take(&mut self.written[slot as usize & 1]);
        // A key that is already gone is fine: the goal is an empty slot.
        for id in written.identities {
            let _ = self
                .identity_info
                .remove(&IdentityKey { slot, identity: id });
        }
        for addr in written.addr_exact {
            let _ = self.addr_exact.remove(&AddrKey { slot, addr });
        }
        for (bits, addr) in written.addr_cidr {
            let _ = self
                .addr_cidr
                .remove(&Key::new(bits, AddrLpmData { slot, addr }));
        }
        for (bits, data) in written.rules {
            let _ = self.rules.remove(&Key::new(bits, data));
        }
        for cgroup_id in written.cgroups.into_keys() {
            let _ = self.cgroup_identity.remove(&CgroupKey {
                cgroup_id,
                slot,
                _pad: 0,
            });
        }
    }

    pub(super) const fn cgroup_capacity(&self) -> u32 {
        self.cgroup_capacity
    }

    pub(super) fn sync_cgroups(
        &mut self,
        slot: u32,
        desired: &BTreeMap<u64, CgroupLabel>,
    ) -> Result<(usize, usize), DatapathError> {
        let written = &mut self.written[slot as usize & 1].cgroups;
        let stale: Vec<u64> = written
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for cgroup_id in &stale {
            let key = CgroupKey {
                cgroup_id: *cgroup_id,
                slot,
                _pad: 0,
            };
            // A cgroup removed since the last sync may already be gone from the map.
            let _ = self.cgroup_identity.remove(&key);
            written.remove(cgroup_id);
        }
        let mut changed = 0;
        let mut unwritten = 0;
        for (cgroup_id, label) in desired {
            if written.get(cgroup_id) == Some(label) {
                continue;
            }
            let is_new = !written.contains_key(cgroup_id);
            if is_new && written.len() >= self.cgroup_capacity as usize {
                unwritten += 1;
                continue;
            }
            let key = CgroupKey {
                cgroup_id: *cgroup_id,
                slot,
                _pad: 0,
            };
            self.cgroup_identity
                .insert(key, label, 0)
                .map_err(map_error(names::CGROUP_IDENTITY))?;
            written.insert(*cgroup_id, *label);
            changed += 1;
        }
        if unwritten > 0 {
            return Err(DatapathError::Full {
                map: names::CGROUP_IDENTITY,
                capacity: self.cgroup_capacity,
                unwritten,
                flag: "--max-cgroups",
            });
        }
        Ok((changed, stale.len()))
    }
}

/// The maps that are not policy: runtime facts, local addresses, the managed root.
pub(super) struct HostMaps {
    runtime: Array<MapData, Runtime>,
    local_addrs: HashMap<MapData, LocalAddrKey, u32>,
    managed_root: CgroupArray<MapData>,
    written_addrs: BTreeSet<LocalAddrKey>,
}

impl HostMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            runtime: take(ebpf, names::RUNTIME)?,
            local_addrs: take(ebpf, names::LOCAL_ADDRS)?,
            managed_root: take(ebpf, names::MANAGED_ROOT)?,
            written_addrs: BTreeSet::new(),
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
            let _ = self.local_addrs.remove(key);
            self.written_addrs.remove(key);
        }
        let mut added = 0;
        for key in desired.difference(&self.written_addrs.clone()) {
            if self.written_addrs.len() >= capacity::LOCAL_ADDRS as usize {
                return Err(DatapathError::Full {
                    map: names::LOCAL_ADDRS,
                    capacity: capacity::LOCAL_ADDRS,
                    unwritten: desired.len() - self.written_addrs.len(),
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

/// The per-CPU verdict counters.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self(take(ebpf, names::COUNTERS)?))
    }

    /// Every counter summed over CPUs, in `enforcer_common::counter` order.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn read(&self) -> Result<Vec<u64>, DatapathError> {
        (0..counter::COUNT)
            .map(|index| {
                self.0
                    .get(&index, 0)
                    .map(|values| values.iter().sum())
                    .map_err(map_error(names::COUNTERS))
            })
            .collect()
    }
}
