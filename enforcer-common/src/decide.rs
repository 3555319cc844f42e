//! The decision of POLICY.md ("Decision"), once, for every hook and for user space.
//!
//! It runs over a [`PolicyView`]: the kernel implements the view over its maps (one slot of
//! them), user space over a compiled policy image, so `enforcer explain`-style tooling and the
//! kernel can never disagree. Resolving the *local* end (a cgroup, a listening socket) is the
//! caller's: each hook knows its own context (the current task, the packet's socket).
//!
//! Everything here is `#[inline(always)]`: the verifier sees one straight program per hook.
//!
//! # Examples
//!
//! ```
//! use enforcer_common::{
//!     AddrValue, IdentityInfo, RuleValue, SlotConfig, VERDICT_ALLOW, VERDICT_DENY,
//!     decide::{PolicyView, decide},
//!     protocol,
//! };
//!
//! struct NoRules;
//! impl PolicyView for NoRules {
//!     fn addr_exact(&self, _: &[u8; 16]) -> Option<AddrValue> { None }
//!     fn addr_cidr(&self, _: &[u8; 16]) -> Option<AddrValue> { None }
//!     fn rule(&self, _: u32, _: u32, _: u8, _: u16) -> Option<RuleValue> { None }
//!     fn identity_info(&self, _: u32) -> Option<IdentityInfo> { Some(IdentityInfo::default()) }
//! }
//! // Neither end is segmented: outside the policy's scope, allowed (step 5).
//! let d = decide(&NoRules, &SlotConfig::default(), 256, 2, protocol::TCP, 443);
//! assert_eq!(d.verdict, VERDICT_ALLOW);
//! # let _ = VERDICT_DENY;
//! ```

use crate::{
    ADDR_LOCAL, AddrValue, CONFIG_AUDIT, IDENTITY_MODE_AUDIT, IDENTITY_MODE_ENFORCE,
    IDENTITY_SEGMENTED, IdentityInfo, RULE_AUDIT, RULE_FAILSAFE, RuleValue, SlotConfig,
    VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, counter, identity, protocol, reason,
};

/// What the decision reads: one policy, already resolved to identities.
pub trait PolicyView {
    /// The exact-address entry (`ADDR_EXACT`) of `addr` (16 bytes, IPv4-mapped).
    fn addr_exact(&self, addr: &[u8; 16]) -> Option<AddrValue>;
    /// The longest CIDR entry (`ADDR_CIDR`) containing `addr`.
    fn addr_cidr(&self, addr: &[u8; 16]) -> Option<AddrValue>;
    /// The resolved rule (`RULES`) for a folded protocol and a port (0 for ICMP), longest
    /// port prefix first.
    fn rule(&self, src: u32, dst: u32, protocol: u8, port: u16) -> Option<RuleValue>;
    /// Segment membership and mode of an identity (`IDENTITY_INFO`).
    fn identity_info(&self, identity: u32) -> Option<IdentityInfo>;
}

/// What a destination address stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A remote identity (a node, a peer, or `@world`).
    Remote(u32),
    /// This node (one of its addresses, loopback, unspecified): the identity is the owner of
    /// the socket that will receive the connection, which only the hook can find.
    Local,
}

/// Resolves a destination address: exact node address, else longest CIDR, else `@world`.
#[inline(always)]
pub fn destination<V: PolicyView>(view: &V, addr: &[u8; 16]) -> Destination {
    if crate::is_loopback_or_unspecified(addr) {
        return Destination::Local;
    }
    let value = match view.addr_exact(addr) {
        Some(value) => Some(value),
        None => view.addr_cidr(addr),
    };
    match value {
        Some(value) if value.flags & ADDR_LOCAL != 0 => Destination::Local,
        Some(value) => Destination::Remote(value.identity),
        None => Destination::Remote(identity::WORLD),
    }
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// [`VERDICT_ALLOW`], [`VERDICT_DENY`] or [`VERDICT_AUDIT`].
    pub verdict: u8,
    /// One of [`reason`]'s constants (meaningless for allow).
    pub reason: u8,
    /// The deciding rule's index, or the segment's index for a default deny.
    pub rule_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// A [`counter`] the caller bumps besides the verdict counter (an error or the failsafe);
    /// [`counter::COUNT`] for none.
    pub extra_counter: u32,
}

impl Decision {
    /// A deliberate denial when an identity could not be resolved; `why` is one of [`reason`]'s
    /// constants and `counter` the error counter it bumps.
    #[must_use]
    #[inline(always)]
    pub const fn fail_closed(src_identity: u32, why: u8, counter: u32) -> Self {
        Self {
            verdict: VERDICT_DENY,
            reason: why,
            rule_id: 0,
            src_identity,
            dst_identity: identity::UNKNOWN,
            extra_counter: counter,
        }
    }
}

/// The policy's protocol of an IANA protocol number: ICMPv6 is folded into ICMP (the `icmp` term
/// means both), and every protocol other than TCP, UDP and ICMP is [`protocol::OTHER`], which
/// only the `any` term covers.
#[must_use]
#[inline(always)]
pub const fn fold_protocol(raw: u8) -> u8 {
    match raw {
        protocol::TCP | protocol::UDP | protocol::ICMP => raw,
        protocol::ICMPV6 => protocol::ICMP,
        _ => protocol::OTHER,
    }
}

/// Whether a denial between `src` and `dst` is only audited: explicit segment modes win over
/// `settings.mode`; between two explicit modes, audit wins (POLICY.md: "S or D is a member of a
/// segment whose mode is audit").
#[must_use]
#[inline(always)]
pub const fn effective_audit(global_audit: bool, src: &IdentityInfo, dst: &IdentityInfo) -> bool {
    let flags = src.flags | dst.flags;
    if flags & IDENTITY_MODE_AUDIT != 0 {
        true
    } else if flags & IDENTITY_MODE_ENFORCE != 0 {
        false
    } else {
        global_audit
    }
}

/// Decides a connection from identity `src` to identity `dst` on `raw_protocol` (IANA number)
/// and destination `port` (host byte order). Steps 1–3 (failsafe, deny, allow) are one rule
/// lookup, because user space resolved their precedence into the rules; steps 4 and 5 read the
/// identities' segment membership.
#[must_use]
#[inline(always)]
pub fn decide<V: PolicyView>(
    view: &V,
    config: &SlotConfig,
    src: u32,
    dst: u32,
    raw_protocol: u8,
    port: u16,
) -> Decision {
    let folded = fold_protocol(raw_protocol);
    let port = if folded == protocol::ICMP { 0 } else { port };
    let mut decision = Decision {
        verdict: VERDICT_ALLOW,
        reason: reason::RULE,
        rule_id: 0,
        src_identity: src,
        dst_identity: dst,
        extra_counter: counter::COUNT,
    };
    if let Some(rule) = view.rule(src, dst, folded, port) {
        decision.rule_id = rule.rule_id;
        decision.verdict = if rule.verdict == VERDICT_ALLOW {
            if rule.flags & RULE_FAILSAFE != 0 {
                decision.extra_counter = counter::FAILSAFE;
            }
            VERDICT_ALLOW
        } else if rule.flags & RULE_AUDIT != 0 {
            VERDICT_AUDIT
        } else {
            VERDICT_DENY
        };
        return decision;
    }
    let (Some(src_info), Some(dst_info)) = (view.identity_info(src), view.identity_info(dst))
    else {
        let mut failed =
            Decision::fail_closed(src, reason::UNRESOLVED, counter::ERR_NO_IDENTITY_INFO);
        failed.dst_identity = dst;
        return failed;
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
    decision.verdict = if effective_audit(config.flags & CONFIG_AUDIT != 0, &src_info, &dst_info) {
        VERDICT_AUDIT
    } else {
        VERDICT_DENY
    };
    decision
}
