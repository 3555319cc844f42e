//! The compiled policy as the kernel sees it: [`PolicyView`] over a [`DesiredState`], user
//! space's twin of one slot of the kernel maps. The shared decision
//! ([`enforcer_common::decide`]) then runs over a policy that is not loaded (or not loadable
//! here), and gives the answer the kernel gives, so `enforcer explain`-style tooling and the
//! hooks can never disagree.
//!
//! Each lookup has the semantics of the map it stands for, as `datapath` writes the state:
//!
//! - `ADDR_EXACT`, `IDENTITY_INFO` (hash maps): the exact key.
//! - `ADDR_CIDR` (LPM trie over the 128-bit IPv4-mapped space): the longest prefix containing
//!   the address.
//! - `RULES` (LPM trie over source, destination and protocol, matched in full
//!   ([`RULE_LPM_FIXED_BITS`](enforcer_common::RULE_LPM_FIXED_BITS)), then the
//!   [`PortBlock::prefix_len`] high bits of the port): the entry with the longest port prefix.
//!
//! Like the tries, a prefix is compared on its prefix bits only (host bits of a key are
//! ignored); an entry longer than the key (more than 128 address bits, more than 16 port bits)
//! never matches, because the kernel refuses to store it; and of entries the trie sees as one key
//! (same prefix bits, same length) the last one written wins, `datapath` writing in map order.
//! (Compiled states have none of these: their prefixes are aligned and unique.)
//!
//! What the image cannot know is what only the kernel learns at run time: addresses the node
//! has but the policy does not declare, and the socket a local connection reaches. The caller
//! gives the latter to [`decide_flow`].

use std::net::IpAddr;

use enforcer_common::{
    AddrValue, IdentityInfo, RuleValue,
    decide::{Decision, Destination, PolicyView, decide, destination},
};

use super::{DesiredState, PortBlock, RuleKey, mapped, mask};

impl PolicyView for DesiredState {
    fn addr_exact(&self, addr: &[u8; 16]) -> Option<AddrValue> {
        self.addr_exact.get(addr).copied()
    }

    fn addr_cidr(&self, addr: &[u8; 16]) -> Option<AddrValue> {
        let addr = u128::from_be_bytes(*addr);
        self.addr_cidr
            .iter()
            .filter(|(prefix, _)| {
                prefix.bits <= 128
                    && (u128::from_be_bytes(prefix.addr) ^ addr) & mask(prefix.bits) == 0
            })
            // The last of equal lengths: the one written last.
            .max_by_key(|(prefix, _)| prefix.bits)
            .map(|(_, value)| *value)
    }

    fn rule(&self, src: u32, dst: u32, protocol: u8, port: u16) -> Option<RuleValue> {
        let key = |first, prefix_len| RuleKey {
            src_identity: src,
            dst_identity: dst,
            protocol,
            ports: PortBlock { first, prefix_len },
        };
        self.rules
            .range(key(0, 0)..=key(u16::MAX, u8::MAX))
            .filter(|(key, _)| block_contains(key.ports, port))
            // The last of equal lengths: the one written last.
            .max_by_key(|(key, _)| key.ports.prefix_len)
            .map(|(_, value)| *value)
    }

    fn identity_info(&self, identity: u32) -> Option<IdentityInfo> {
        self.identity_info.get(&identity).copied()
    }
}

/// Whether the trie matches `port` against `block`: its top `prefix_len` bits are the block's.
fn block_contains(block: PortBlock, port: u16) -> bool {
    let high = u16::MAX
        .checked_shl(16 - u32::from(block.prefix_len.min(16)))
        .unwrap_or(0);
    block.prefix_len <= 16 && (block.first ^ port) & high == 0
}

/// What the kernel decides for a connection from identity `src` to `dst_addr` (an IPv4-mapped
/// IPv6 address means its IPv4 address, as on a dual-stack socket) on `protocol` (IANA number,
/// unfolded: ICMPv6 is ICMP, UDP-Lite and the like match only `any`) and destination `port`
/// (host byte order; ignored for ICMP).
///
/// The destination is resolved as the hooks do ([`destination`]: exact node address, else the
/// longest CIDR, else `@world`; loopback, unspecified and this node's addresses are local). A
/// local destination is `local_dst_identity`, the owner of the socket the kernel would find
/// receiving the connection; `None` when no socket receives it, which makes it the node's own
/// identity (`config.local_identity`), as in the kernel. Then [`decide`] runs with the state's
/// config.
///
/// The kernel may also fail closed where the image cannot see why (a local destination whose
/// owner it cannot resolve, a cgroup held until labelled): this is the policy's answer.
#[must_use]
pub fn decide_flow(
    state: &DesiredState,
    src: u32,
    dst_addr: IpAddr,
    local_dst_identity: Option<u32>,
    protocol: u8,
    port: u16,
) -> Decision {
    let dst = match destination(state, &mapped(dst_addr)) {
        Destination::Remote(identity) => identity,
        Destination::Local => local_dst_identity.unwrap_or(state.config.local_identity),
    };
    decide(state, &state.config, src, dst, protocol, port)
}

#[cfg(test)]
mod tests;
