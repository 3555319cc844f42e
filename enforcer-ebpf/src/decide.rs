//! The decision of POLICY.md ("Decision"), over maps that user space already resolved: the local
//! identity from the cgroup, the remote one from the address, then one rule lookup, then default
//! deny for segment members. Every path returns a deliberate verdict.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    maps::lpm_trie::Key,
};
use enforcer_common::{
    ADDR_LOCAL, ADDR_LPM_SLOT_BITS, AddrKey, AddrLpmData, CONFIG_AUDIT, CgroupKey,
    IDENTITY_MODE_AUDIT, IDENTITY_MODE_ENFORCE, IDENTITY_SEGMENTED, IdentityInfo, IdentityKey,
    ListenerKey, RULE_AUDIT, RULE_FAILSAFE, RULE_LPM_FIXED_BITS, RuleLpmData, SlotConfig,
    VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, counter, identity, protocol, reason,
};

use crate::maps::{
    ACTIVE_SLOT, ADDR_CIDR, ADDR_EXACT, CGROUP_IDENTITY, IDENTITY_INFO, LISTENERS, RULES,
    SLOT_CONFIG,
};

/// Deepest cgroup level searched for an ancestor with an identity. systemd trees are rarely deeper
/// than 8; containers add a few.
const MAX_CGROUP_DEPTH: i32 = 32;

/// The connection being judged, as the hook saw it.
pub(crate) struct Connection {
    /// Network byte order, IPv4-mapped for IPv4.
    pub dst_addr: [u8; 16],
    /// Host byte order.
    pub dst_port: u16,
    /// IANA protocol number of the socket.
    pub protocol: u8,
    /// The socket's network namespace, for looking up local listeners.
    pub netns_cookie: u64,
}

/// The outcome, with what an event needs.
pub(crate) struct Decision {
    /// `VERDICT_ALLOW`, `VERDICT_DENY` or `VERDICT_AUDIT`.
    pub verdict: u8,
    /// One of `reason`'s constants (meaningless for allow).
    pub reason: u8,
    pub rule_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub generation: u32,
}

impl Decision {
    const fn fail_closed(generation: u32, src_identity: u32) -> Self {
        Self {
            verdict: VERDICT_DENY,
            reason: reason::UNRESOLVED,
            rule_id: 0,
            src_identity,
            dst_identity: identity::UNKNOWN,
            generation,
        }
    }
}

/// Judges an egress connection opened by the current task. Bumps the error counters it hits; the
/// caller bumps the verdict counter.
#[inline(always)]
pub(crate) fn decide(conn: &Connection) -> Decision {
    let Some(slot) = ACTIVE_SLOT.get(0).copied() else {
        crate::maps::count(counter::ERR_NO_POLICY);
        return Decision::fail_closed(0, identity::UNKNOWN);
    };
    let Some(config) = SLOT_CONFIG.get(slot).copied() else {
        crate::maps::count(counter::ERR_NO_POLICY);
        return Decision::fail_closed(0, identity::UNKNOWN);
    };
    let Some(src) = local_identity(slot) else {
        crate::maps::count(counter::ERR_NO_CGROUP_IDENTITY);
        return Decision::fail_closed(config.generation, identity::UNKNOWN);
    };
    let folded = fold_protocol(conn.protocol);
    let dst = remote_identity(slot, &config, conn, folded);

    let port = if folded == protocol::ICMP {
        0
    } else {
        conn.dst_port
    };
    let key = Key::new(
        RULE_LPM_FIXED_BITS + 16,
        RuleLpmData {
            slot,
            src_identity: src,
            dst_identity: dst,
            protocol: folded,
            _pad: 0,
            port_be: port.to_be(),
        },
    );
    let mut decision = Decision {
        verdict: VERDICT_ALLOW,
        reason: reason::RULE,
        rule_id: 0,
        src_identity: src,
        dst_identity: dst,
        generation: config.generation,
    };
    if let Some(rule) = RULES.get(&key) {
        decision.rule_id = rule.rule_id;
        decision.verdict = if rule.verdict == VERDICT_ALLOW {
            if rule.flags & RULE_FAILSAFE != 0 {
                crate::maps::count(counter::FAILSAFE);
            }
            VERDICT_ALLOW
        } else if rule.flags & RULE_AUDIT != 0 {
            VERDICT_AUDIT
        } else {
            VERDICT_DENY
        };
        return decision;
    }

    // No rule: step 4 (default deny for segment members) or step 5 (outside the policy's scope).
    let (Some(src_info), Some(dst_info)) = (identity_info(slot, src), identity_info(slot, dst))
    else {
        crate::maps::count(counter::ERR_NO_IDENTITY_INFO);
        return Decision::fail_closed(config.generation, src);
    };
    if (src_info.flags | dst_info.flags) & IDENTITY_SEGMENTED == 0 {
        return decision;
    }
    decision.reason = reason::DEFAULT_DENY;
    decision.rule_id = if src_info.flags & IDENTITY_SEGMENTED != 0 {
        src_info.segment
    } else {
        dst_info.segment
    };
    decision.verdict = if effective_audit(&config, &src_info, &dst_info) {
        VERDICT_AUDIT
    } else {
        VERDICT_DENY
    };
    decision
}

/// Explicit segment modes win over `settings.mode`; between two explicit modes, audit wins (POLICY.md:
/// "S or D is a member of a segment whose mode is audit").
#[inline(always)]
fn effective_audit(config: &SlotConfig, src: &IdentityInfo, dst: &IdentityInfo) -> bool {
    let flags = src.flags | dst.flags;
    if flags & IDENTITY_MODE_AUDIT != 0 {
        true
    } else if flags & IDENTITY_MODE_ENFORCE != 0 {
        false
    } else {
        config.flags & CONFIG_AUDIT != 0
    }
}

#[inline(always)]
pub(crate) fn fold_protocol(raw: u8) -> u8 {
    match raw {
        protocol::TCP | protocol::UDP | protocol::ICMP => raw,
        protocol::ICMPV6 => protocol::ICMP,
        _ => protocol::OTHER,
    }
}

/// The identity of the current task's cgroup, or of its nearest ancestor that has one: a cgroup made
/// since user space last scanned inherits its parent's identity until it is labelled itself.
#[inline(always)]
fn local_identity(slot: u32) -> Option<u32> {
    let mut key = CgroupKey {
        // SAFETY: a plain helper call without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        slot,
        _pad: 0,
    };
    // SAFETY: hash map values are read-only copies for us; user space replaces, never mutates in place.
    if let Some(id) = unsafe { CGROUP_IDENTITY.get(key) } {
        return Some(*id);
    }
    let mut level = MAX_CGROUP_DEPTH;
    while level >= 0 {
        // SAFETY: a plain helper call; it returns 0 for levels below the task's cgroup.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor != 0 {
            key.cgroup_id = ancestor;
            // SAFETY: as above.
            if let Some(id) = unsafe { CGROUP_IDENTITY.get(key) } {
                return Some(*id);
            }
        }
        level -= 1;
    }
    None
}

/// The identity of a destination address: exact node address, else longest CIDR, else `@world`.
/// This node's own addresses and loopback mean a local process: the workload listening on the
/// port, else the node's local identity.
#[inline(always)]
fn remote_identity(slot: u32, config: &SlotConfig, conn: &Connection, folded: u8) -> u32 {
    let addr = &conn.dst_addr;
    let exact = AddrKey { slot, addr: *addr };
    // SAFETY: as in `local_identity`.
    let value = match unsafe { ADDR_EXACT.get(exact) } {
        Some(value) => Some(*value),
        None => ADDR_CIDR
            .get(Key::new(
                ADDR_LPM_SLOT_BITS + 128,
                AddrLpmData { slot, addr: *addr },
            ))
            .copied(),
    };
    match value {
        Some(value) if value.flags & ADDR_LOCAL != 0 => {
            listener_identity(slot, conn, folded).unwrap_or(config.local_identity)
        }
        Some(value) => value.identity,
        None => identity::WORLD,
    }
}

/// The identity of the local process bound to the destination port in the caller's network
/// namespace, if the kernel saw it bind and its cgroup is labelled.
#[inline(always)]
fn listener_identity(slot: u32, conn: &Connection, folded: u8) -> Option<u32> {
    if folded != protocol::TCP && folded != protocol::UDP {
        return None;
    }
    let key = ListenerKey {
        netns_cookie: conn.netns_cookie,
        port: conn.dst_port,
        protocol: folded,
        _pad: [0; 5],
    };
    // SAFETY: as in `local_identity`.
    let listener = unsafe { LISTENERS.get(key) }?;
    let cgroup = CgroupKey {
        cgroup_id: listener.cgroup_id,
        slot,
        _pad: 0,
    };
    // SAFETY: as in `local_identity`.
    unsafe { CGROUP_IDENTITY.get(cgroup) }.copied()
}

#[inline(always)]
fn identity_info(slot: u32, identity: u32) -> Option<IdentityInfo> {
    // SAFETY: as in `local_identity`.
    unsafe { IDENTITY_INFO.get(IdentityKey { slot, identity }) }.copied()
}
