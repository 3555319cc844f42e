//! Every map the programs use, in one place. Sizes come from `enforcer_common::capacity` so user
//! space checks a policy against the same limits before writing it.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{
    AddrKey, AddrLpmData, AddrValue, CgroupKey, IdentityInfo, IdentityKey, ListenerKey,
    ListenerValue, RuleLpmData, RuleValue, SlotConfig, capacity, counter,
};

#[map]
pub(crate) static ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static SLOT_CONFIG: Array<SlotConfig> = Array::with_max_entries(2, 0);

#[map]
pub(crate) static CGROUP_IDENTITY: HashMap<CgroupKey, u32> =
    HashMap::with_max_entries(capacity::CGROUPS, 0);

#[map]
pub(crate) static ADDR_EXACT: HashMap<AddrKey, AddrValue> =
    HashMap::with_max_entries(capacity::ADDR_EXACT, 0);

#[map]
pub(crate) static ADDR_CIDR: LpmTrie<AddrLpmData, AddrValue> =
    LpmTrie::with_max_entries(capacity::ADDR_CIDR, 0);

#[map]
pub(crate) static IDENTITY_INFO: HashMap<IdentityKey, IdentityInfo> =
    HashMap::with_max_entries(capacity::IDENTITIES, 0);

#[map]
pub(crate) static RULES: LpmTrie<RuleLpmData, RuleValue> =
    LpmTrie::with_max_entries(capacity::RULES, 0);

/// LRU so that entries whose release was never seen (e.g. sockets bound before the programs were
/// attached and closed after) age out instead of filling the map.
#[map]
pub(crate) static LISTENERS: LruHashMap<ListenerKey, ListenerValue> =
    LruHashMap::with_max_entries(capacity::LISTENERS, 0);

#[map]
pub(crate) static LISTENER_KEYS: LruHashMap<u64, ListenerKey> =
    LruHashMap::with_max_entries(capacity::LISTENERS, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Adds one to a per-CPU counter. The index is always one of `counter`'s constants, so the lookup
/// cannot miss; if it ever did, there is nothing better to do than not count.
#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do not nest on one CPU
        // for the same hook.
        unsafe { *slot += 1 };
    }
}
