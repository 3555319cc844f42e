//! Every map the programs use, in one place. Sizes come from `enforcer_common::capacity` so user
//! space checks a policy against the same limits before writing it.

use aya_ebpf::{
    macros::map,
    maps::{Array, CgroupArray, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{
    AddrKey, AddrLpmData, AddrValue, ArrivedKey, CgroupKey, CgroupLabel, FlowKey, FlowState,
    IdentityInfo, IdentityKey, ListenerKey, ListenerValue, LocalAddrKey, MAP_NO_PREALLOC,
    ReportKey, ReportRepeats, RuleLpmData, RuleValue, Runtime, SlotConfig, SocketOwner,
    SocketVerdict, capacity, counter, report::REPORT_ENTRIES,
};

#[map]
pub(crate) static ACTIVE_SLOT: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static SLOT_CONFIG: Array<SlotConfig> = Array::with_max_entries(2, 0);

#[map]
pub(crate) static CGROUP_IDENTITY: HashMap<CgroupKey, CgroupLabel> =
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

#[map]
pub(crate) static RULES_EXACT: HashMap<RuleLpmData, RuleValue> =
    HashMap::with_max_entries(capacity::RULES, MAP_NO_PREALLOC);

/// A plain hash, not an LRU: an entry evicted quietly would make its listener resolve to someone
/// else. A full map is counted and the packet layer judges what the fast path cannot resolve.
#[map]
pub(crate) static LISTENERS: HashMap<ListenerKey, ListenerValue> =
    HashMap::with_max_entries(capacity::LISTENERS, 0);

#[map]
pub(crate) static LISTENER_KEYS: LruHashMap<u64, ListenerKey> =
    LruHashMap::with_max_entries(capacity::LISTENERS, 0);

#[map]
pub(crate) static SOCKET_OWNERS: LruHashMap<u64, SocketOwner> =
    LruHashMap::with_max_entries(capacity::SOCKETS, 0);

#[map]
pub(crate) static SOCKET_VERDICTS: LruHashMap<u64, SocketVerdict> =
    LruHashMap::with_max_entries(capacity::SOCKETS, 0);

#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(capacity::FLOWS, 0);

#[map]
pub(crate) static ARRIVED: LruHashMap<ArrivedKey, u32> =
    LruHashMap::with_max_entries(capacity::FLOWS / 4, 0);

#[map]
pub(crate) static LOCAL_ADDRS: HashMap<LocalAddrKey, u32> =
    HashMap::with_max_entries(capacity::LOCAL_ADDRS, 0);

#[map]
pub(crate) static RUNTIME: Array<Runtime> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static MANAGED_ROOT: CgroupArray = CgroupArray::with_max_entries(1, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// A plain hash, not an LRU: an evicted entry would lose the repeats it counted. A full map is
/// counted, and its attempts go to the ring buffer one by one.
#[map]
pub(crate) static REPORTS: HashMap<ReportKey, ReportRepeats> =
    HashMap::with_max_entries(REPORT_ENTRIES, 0);

/// Not pinned: scratch of the running programs, nothing to carry over.
#[map]
pub(crate) static REPORT_SCRATCH: PerCpuArray<crate::report::ReportScratch> =
    PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static REPORT_WINDOW: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// This instance's runtime facts; all zero before the daemon wrote them.
#[inline(always)]
pub(crate) fn runtime() -> Runtime {
    RUNTIME.get(0).copied().unwrap_or_default()
}

/// The same, read in place rather than copied to the stack, for deep frames.
#[inline(always)]
pub(crate) fn runtime_ref() -> &'static Runtime {
    static UNSET: Runtime = Runtime {
        node_netns_cookie: 0,
        daemon_cgroup_id: 0,
        root_cgroup_id: 0,
        root_level: 0,
        flags: 0,
    };
    RUNTIME.get(0).unwrap_or(&UNSET)
}

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
