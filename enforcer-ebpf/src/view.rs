//! The shared decision's view of the policy maps, for one slot.

use aya_ebpf::maps::lpm_trie::Key;
use enforcer_common::{
    ADDR_LPM_SLOT_BITS, AddrKey, AddrLpmData, AddrValue, IdentityInfo, IdentityKey,
    RULE_EXACT_BITS, RuleLpmData, RuleValue, SlotConfig, counter, decide::PolicyView,
};

use crate::maps::{
    ACTIVE_SLOT, ADDR_CIDR, ADDR_EXACT, IDENTITY_INFO, RULES, RULES_EXACT, SLOT_CONFIG, count,
};

/// The policy in force: the active slot and its config, read once per decision so that a flip
/// in between can never mix two policies.
pub(crate) struct MapView {
    pub slot: u32,
    pub config: SlotConfig,
}

impl MapView {
    /// The active policy; `None` (counted) when none was loaded.
    #[inline(always)]
    pub(crate) fn active() -> Option<Self> {
        let Some(slot) = ACTIVE_SLOT.get(0).copied() else {
            count(counter::ERR_NO_POLICY);
            return None;
        };
        let Some(config) = SLOT_CONFIG.get(slot).copied() else {
            count(counter::ERR_NO_POLICY);
            return None;
        };
        Some(Self { slot, config })
    }
}

impl PolicyView for MapView {
    #[inline(always)]
    fn addr_exact(&self, addr: &[u8; 16]) -> Option<AddrValue> {
        let key = AddrKey {
            slot: self.slot,
            addr: *addr,
        };
        // SAFETY: hash map values are read-only copies for us; user space replaces, never
        // mutates in place.
        unsafe { ADDR_EXACT.get(key) }.copied()
    }

    #[inline(always)]
    fn addr_cidr(&self, addr: &[u8; 16]) -> Option<AddrValue> {
        ADDR_CIDR
            .get(Key::new(
                ADDR_LPM_SLOT_BITS + 128,
                AddrLpmData {
                    slot: self.slot,
                    addr: *addr,
                },
            ))
            .copied()
    }

    #[inline(always)]
    fn rule(&self, src: u32, dst: u32, protocol: u8, port: u16) -> Option<RuleValue> {
        let data = RuleLpmData {
            slot: self.slot,
            src_identity: src,
            dst_identity: dst,
            protocol,
            _pad: 0,
            port_be: port.to_be(),
        };
        // A single port is the longest prefix: found here, it is what the trie would answer.
        // SAFETY: as in `addr_exact`.
        if let Some(value) = unsafe { RULES_EXACT.get(data) } {
            return Some(*value);
        }
        RULES.get(Key::new(RULE_EXACT_BITS, data)).copied()
    }

    #[inline(always)]
    fn identity_info(&self, identity: u32) -> Option<IdentityInfo> {
        // SAFETY: as in `addr_exact`.
        unsafe {
            IDENTITY_INFO.get(IdentityKey {
                slot: self.slot,
                identity,
            })
        }
        .copied()
    }
}
