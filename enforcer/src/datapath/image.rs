//! What one policy slot holds, in the maps' own key and value types minus the slot number: the
//! desired state the reconciler writes, and what it reads back from the kernel to verify a write
//! or find drift. Pure: no aya.

use std::collections::BTreeMap;

use enforcer_common::{
    ADDR_LPM_SLOT_BITS, AddrValue, CgroupLabel, IdentityInfo, RULE_EXACT_BITS, RULE_LPM_FIXED_BITS,
    RuleLpmData, RuleValue, SlotConfig,
};

use crate::compile::DesiredState;

/// One map entry's key, without the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKey {
    /// `IDENTITY_INFO`.
    Identity(u32),
    /// `ADDR_EXACT`.
    AddrExact([u8; 16]),
    /// `ADDR_CIDR`; `bits` counts the slot's own bits, as the trie does.
    AddrCidr { bits: u32, addr: [u8; 16] },
    /// `RULES`, a block of more than one port; `data.slot` is always 0 here.
    Rule { bits: u32, data: RuleLpmData },
    /// `RULES_EXACT`, one port; `data.slot` is always 0 here.
    RulePort(RuleLpmData),
    /// `CGROUP_IDENTITY`.
    Cgroup(u64),
}

/// One map entry's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryValue {
    Identity(IdentityInfo),
    Addr(AddrValue),
    Rule(RuleValue),
    Cgroup(CgroupLabel),
}

impl EntryKey {
    /// Whether the entry lives in a hash map, where a lookup finds this very key. In a prefix
    /// map a lookup finds the longest prefix covering the key's first address, which may be
    /// another entry.
    #[must_use]
    pub const fn is_exact(&self) -> bool {
        match self {
            Self::Rule { .. } | Self::AddrCidr { .. } => false,
            Self::Identity(_) | Self::AddrExact(_) | Self::RulePort(_) | Self::Cgroup(_) => true,
        }
    }

    /// The map the entry lives in.
    #[must_use]
    pub const fn map(&self) -> &'static str {
        use enforcer_common::maps;
        match self {
            Self::Identity(_) => maps::IDENTITY_INFO,
            Self::AddrExact(_) => maps::ADDR_EXACT,
            Self::AddrCidr { .. } => maps::ADDR_CIDR,
            Self::Rule { .. } => maps::RULES,
            Self::RulePort(_) => maps::RULES_EXACT,
            Self::Cgroup(_) => maps::CGROUP_IDENTITY,
        }
    }
}

/// Everything one slot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotImage {
    /// `generation` 0: the slot never held a policy (or was emptied).
    pub config: SlotConfig,
    pub entries: BTreeMap<EntryKey, EntryValue>,
}

impl SlotImage {
    /// The slot image of `state` with the cgroup labels `cgroups` (the generation is stamped when
    /// it is written).
    #[must_use]
    pub fn new(state: &DesiredState, cgroups: &BTreeMap<u64, CgroupLabel>) -> Self {
        let mut entries = BTreeMap::new();
        for (id, info) in &state.identity_info {
            entries.insert(EntryKey::Identity(*id), EntryValue::Identity(*info));
        }
        for (addr, value) in &state.addr_exact {
            entries.insert(EntryKey::AddrExact(*addr), EntryValue::Addr(*value));
        }
        for (prefix, value) in &state.addr_cidr {
            let key = EntryKey::AddrCidr {
                bits: ADDR_LPM_SLOT_BITS + u32::from(prefix.bits),
                addr: prefix.addr,
            };
            entries.insert(key, EntryValue::Addr(*value));
        }
        for (rule, value) in &state.rules {
            let data = RuleLpmData {
                slot: 0,
                src_identity: rule.src_identity,
                dst_identity: rule.dst_identity,
                protocol: rule.protocol,
                _pad: 0,
                port_be: rule.ports.first.to_be(),
            };
            let bits = RULE_LPM_FIXED_BITS + u32::from(rule.ports.prefix_len);
            // A single port is the longest prefix there is: the kernel looks for it in the hash
            // first, and a hit there is what the trie would have answered.
            let key = if bits == RULE_EXACT_BITS {
                EntryKey::RulePort(data)
            } else {
                EntryKey::Rule { bits, data }
            };
            entries.insert(key, EntryValue::Rule(*value));
        }
        let mut image = Self {
            config: state.config,
            entries,
        };
        image.set_cgroups(cgroups);
        image
    }

    /// Whether the slot holds a policy.
    #[must_use]
    pub const fn holds_policy(&self) -> bool {
        self.config.generation != 0
    }

    /// The slot's cgroup labels.
    pub fn cgroups(&self) -> impl Iterator<Item = (u64, CgroupLabel)> + '_ {
        self.entries
            .iter()
            .filter_map(|(key, value)| match (key, value) {
                (EntryKey::Cgroup(id), EntryValue::Cgroup(label)) => Some((*id, *label)),
                _ => None,
            })
    }

    /// How many cgroup labels the slot holds.
    #[must_use]
    pub fn cgroup_count(&self) -> usize {
        self.cgroups().count()
    }

    /// Replaces the slot's cgroup labels with `cgroups`.
    pub fn set_cgroups(&mut self, cgroups: &BTreeMap<u64, CgroupLabel>) {
        self.entries
            .retain(|key, _| !matches!(key, EntryKey::Cgroup(_)));
        for (id, label) in cgroups {
            self.entries
                .insert(EntryKey::Cgroup(*id), EntryValue::Cgroup(*label));
        }
    }
}

/// The writes that turn `current` into `desired`: entries to put (new or changed), then keys
/// to delete.
#[must_use]
pub fn diff<'a>(
    current: &'a SlotImage,
    desired: &'a SlotImage,
) -> (Vec<(&'a EntryKey, &'a EntryValue)>, Vec<&'a EntryKey>) {
    let put = desired
        .entries
        .iter()
        .filter(|(key, value)| current.entries.get(key) != Some(value))
        .collect();
    let delete = current
        .entries
        .keys()
        .filter(|key| !desired.entries.contains_key(key))
        .collect();
    (put, delete)
}
