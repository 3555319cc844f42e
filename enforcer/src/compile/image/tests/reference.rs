//! The image against what it is made from: the policy as POLICY.md states it, for every pair of
//! identities, and the lookups against a plain scan of the entries, compiled or hand-made.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::{
    AddrValue, IdentityInfo, RuleValue, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, counter,
    decide::{Destination, PolicyView, decide, destination, fold_protocol},
    protocol, reason,
};

use super::{Case, UDPLITE};
use crate::{
    compile::{AddrPrefix, DesiredState, PortBlock, RuleKey, endpoint_ids, segment_members},
    policy::{Action, Mode, PortTerm, Protocol},
};

/// POLICY.md's "Decision", read straight off the parsed policy: no compiled rules, no port
/// blocks, no tries. Only which identities a segment or an endpoint names is compile's.
struct Reference<'a> {
    case: &'a Case,
    members: Vec<BTreeSet<u32>>,
    /// Each rule's sources and destinations.
    ends: Vec<(BTreeSet<u32>, BTreeSet<u32>)>,
}

impl<'a> Reference<'a> {
    fn new(case: &'a Case) -> Self {
        let members = segment_members(&case.policy, &case.ids);
        let ends = case
            .policy
            .rules
            .iter()
            .map(|rule| {
                (
                    endpoint_ids(&rule.from, &case.ids, &members),
                    endpoint_ids(&rule.to, &case.ids, &members),
                )
            })
            .collect();
        Self {
            case,
            members,
            ends,
        }
    }

    /// Verdict, reason, rule id and extra counter.
    fn decide(&self, src: u32, dst: u32, raw: u8, port: u16) -> (u8, u8, u32, u32) {
        let policy = &self.case.policy;
        let proto = fold_protocol(raw);
        let port = if proto == protocol::ICMP { 0 } else { port };
        let matches = |term: &PortTerm| match *term {
            PortTerm::Any => true,
            PortTerm::Icmp
            | PortTerm::Range {
                protocol: Protocol::Icmp,
                ..
            } => proto == protocol::ICMP,
            PortTerm::Range {
                protocol: p,
                first,
                last,
            } => {
                let number = if p == Protocol::Tcp {
                    protocol::TCP
                } else {
                    protocol::UDP
                };
                proto == number && first <= port && port <= last
            }
        };
        let segments_of = |id: u32| -> Vec<usize> {
            (0..self.members.len())
                .filter(|i| self.members[*i].contains(&id))
                .collect()
        };
        let (src_segments, dst_segments) = (segments_of(src), segments_of(dst));
        let modes: Vec<Option<Mode>> = src_segments
            .iter()
            .chain(&dst_segments)
            .map(|i| policy.segments[*i].mode)
            .collect();
        let audit = if modes.contains(&Some(Mode::Audit)) {
            true
        } else if modes.contains(&Some(Mode::Enforce)) {
            false
        } else {
            policy.settings.mode == Mode::Audit
        };
        let denied = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
        let index = |i: usize| u32::try_from(i).expect("small");

        // 1. The failsafe, inbound to a process on this node.
        let local = self.case.ids.get(dst).is_some_and(|i| i.is_local());
        if local && policy.settings.failsafe_inbound.iter().any(matches) {
            let id = index(policy.rules.len());
            return (VERDICT_ALLOW, reason::RULE, id, counter::FAILSAFE);
        }
        // 2 and 3. The first matching deny, else the first matching allow.
        for action in [Action::Deny, Action::Allow] {
            let found = policy
                .rules
                .iter()
                .zip(&self.ends)
                .position(|(rule, ends)| {
                    rule.action == action
                        && ends.0.contains(&src)
                        && ends.1.contains(&dst)
                        && rule.ports.iter().any(matches)
                });
            if let Some(i) = found {
                let verdict = if action == Action::Allow {
                    VERDICT_ALLOW
                } else {
                    denied
                };
                return (verdict, reason::RULE, index(i), counter::COUNT);
            }
        }
        // 4. Segment members are isolated.
        if let Some(segment) = src_segments.first().or(dst_segments.first()) {
            return (
                denied,
                reason::DEFAULT_DENY,
                index(*segment),
                counter::COUNT,
            );
        }
        // 5. Out of scope.
        (VERDICT_ALLOW, reason::RULE, 0, counter::COUNT)
    }
}

#[test]
fn the_image_agrees_with_the_policy_everywhere() {
    let protocols = [
        protocol::TCP,
        protocol::UDP,
        protocol::ICMP,
        protocol::ICMPV6,
        UDPLITE,
    ];
    let ports = [
        0, 1, 21, 22, 23, 53, 79, 80, 443, 5432, 8080, 8443, 9099, 9100, 9101, 65535,
    ];
    let mut audit = Case::example("app-1").policy;
    audit.settings.mode = Mode::Audit;
    let cases = ["app-1", "db-1", "jump-1", "mon-1", "not-a-node"]
        .into_iter()
        .map(Case::example)
        .chain([Case::new(audit, "db-1")]);
    let mut decisions = 0;
    for case in cases {
        let reference = Reference::new(&case);
        let state = case.state();
        let all: Vec<u32> = case.ids.iter().map(|i| i.id).collect();
        for &src in &all {
            for &dst in &all {
                for proto in protocols {
                    for port in ports {
                        let d = decide(state, &state.config, src, dst, proto, port);
                        assert_eq!(
                            (d.verdict, d.reason, d.rule_id, d.extra_counter),
                            reference.decide(src, dst, proto, port),
                            "{src} -> {dst} {proto}/{port}"
                        );
                        assert_eq!((d.src_identity, d.dst_identity), (src, dst));
                        decisions += 1;
                    }
                }
            }
        }
    }
    assert!(decisions > 10_000, "{decisions}");
}

#[test]
fn lookups_follow_the_tries_on_any_state() {
    // A hand-made state with what a compiled one never has: unaligned and duplicate prefixes,
    // and prefixes longer than the trie's key.
    let value = |rule_id| RuleValue {
        rule_id,
        verdict: VERDICT_ALLOW,
        flags: 0,
        _pad: 0,
    };
    let key = |first, prefix_len| RuleKey {
        src_identity: 300,
        dst_identity: 301,
        protocol: protocol::TCP,
        ports: PortBlock { first, prefix_len },
    };
    let addr = |identity| AddrValue { identity, flags: 0 };
    let v4 = |a, b, c, d| enforcer_common::ipv4_mapped([a, b, c, d]);
    let state = DesiredState {
        rules: BTreeMap::from([
            (key(0, 0), value(1)),
            // 9000-9001 twice (the host bit of 9001 is ignored): written second, 9001 wins.
            (key(9000, 15), value(2)),
            (key(9001, 15), value(3)),
            // Longer than the key: the kernel refuses it.
            (key(9000, 17), value(4)),
            // Another triple.
            (
                RuleKey {
                    protocol: protocol::UDP,
                    ..key(9000, 16)
                },
                value(5),
            ),
        ]),
        addr_cidr: BTreeMap::from([
            (
                AddrPrefix {
                    addr: v4(10, 1, 2, 3),
                    bits: 104,
                },
                addr(10),
            ),
            (
                AddrPrefix {
                    addr: v4(10, 1, 0, 0),
                    bits: 112,
                },
                addr(11),
            ),
            (
                AddrPrefix {
                    addr: v4(10, 1, 2, 3),
                    bits: 129,
                },
                addr(12),
            ),
        ]),
        addr_exact: BTreeMap::from([(v4(10, 1, 2, 3), addr(13))]),
        identity_info: BTreeMap::from([(300, IdentityInfo::default())]),
        ..DesiredState::default()
    };
    let rule = |port| state.rule(300, 301, protocol::TCP, port).map(|v| v.rule_id);
    assert_eq!(rule(8999), Some(1));
    assert_eq!(rule(9000), Some(3));
    assert_eq!(rule(9001), Some(3));
    assert_eq!(rule(9002), Some(1));
    assert_eq!(
        state.rule(300, 301, protocol::UDP, 9000).map(|v| v.rule_id),
        Some(5)
    );
    assert_eq!(state.rule(300, 301, protocol::UDP, 9001), None);
    assert_eq!(state.rule(301, 300, protocol::TCP, 9000), None);

    let cidr = |a, b, c, d| state.addr_cidr(&v4(a, b, c, d)).map(|v| v.identity);
    assert_eq!(cidr(10, 1, 2, 3), Some(11));
    assert_eq!(cidr(10, 1, 200, 1), Some(11));
    assert_eq!(cidr(10, 9, 9, 9), Some(10));
    assert_eq!(cidr(11, 0, 0, 0), None);
    assert_eq!(
        state.addr_exact(&v4(10, 1, 2, 3)).map(|v| v.identity),
        Some(13)
    );
    assert_eq!(state.addr_exact(&v4(10, 1, 2, 4)), None);
    // The exact entry comes first.
    assert_eq!(
        destination(&state, &v4(10, 1, 2, 3)),
        Destination::Remote(13)
    );
    assert_eq!(state.identity_info(300), Some(IdentityInfo::default()));
    assert_eq!(state.identity_info(301), None);
}

#[test]
fn every_block_boundary_finds_the_block_that_covers_it() {
    // The trie's answer is the entry whose block covers the port: compare with a plain scan of
    // the compiled blocks, at both ends of every block and on either side, for every rule of the
    // example policy.
    let c = Case::example("app-1");
    let state = c.state();
    let mut triples: BTreeMap<(u32, u32, u8), Vec<(PortBlock, RuleValue)>> = BTreeMap::new();
    for (k, v) in &state.rules {
        triples
            .entry((k.src_identity, k.dst_identity, k.protocol))
            .or_default()
            .push((k.ports, *v));
    }
    for ((src, dst, proto), blocks) in triples {
        let mut probes = vec![0, u16::MAX];
        for (block, _) in &blocks {
            probes.extend([block.first, block.last()]);
            probes.extend(block.first.checked_sub(1));
            probes.extend(block.last().checked_add(1));
        }
        for port in probes {
            let mut scanned: Vec<RuleValue> = blocks
                .iter()
                .filter(|(b, _)| b.first <= port && port <= b.last())
                .map(|(_, v)| *v)
                .collect();
            assert!(scanned.len() <= 1, "compiled blocks are disjoint");
            assert_eq!(
                state.rule(src, dst, proto, port),
                scanned.pop(),
                "{src} -> {dst} {proto}/{port}"
            );
        }
    }
}
