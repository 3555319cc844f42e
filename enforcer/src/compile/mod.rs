//! Compiles a policy and its identities into the desired state of the kernel maps. Pure: no aya,
//! no I/O, deterministic (golden-tested).
//!
//! Rules are resolved here, not in the kernel: for every (source identity, destination identity,
//! protocol) the overlapping allow, deny and failsafe claims are cut into disjoint port intervals
//! with one winner each, and each interval becomes a few prefix-aligned LPM entries. The kernel
//! then needs exactly one rule lookup per connection, and a miss means "no rule": default deny for
//! segment members, allow otherwise.
#![forbid(unsafe_code)]

mod dump;
pub mod image;
mod ports;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use enforcer_common::{
    ADDR_LOCAL, AddrValue, CONFIG_AUDIT, IDENTITY_MODE_AUDIT, IDENTITY_MODE_ENFORCE,
    IDENTITY_PACKET_SOCKETS, IDENTITY_SEGMENTED, IdentityInfo, RULE_AUDIT, RULE_FAILSAFE,
    RuleValue, SlotConfig, VERDICT_ALLOW, VERDICT_DENY, capacity, identity, ipv4_mapped, protocol,
};
use ipnet::IpNet;

pub use self::ports::{Claim, PortBlock, blocks, resolve};
use crate::{
    identity::Identities,
    policy::{
        Action, Endpoint, Entity, Location, Mode, PacketSockets, Policy, PortTerm, Protocol, Rule,
    },
};

/// An address prefix in the 128-bit space every address map uses (IPv4 is IPv4-mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrPrefix {
    pub addr: [u8; 16],
    /// 0 to 128.
    pub bits: u8,
}

/// One entry of the rules map, without the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    pub src_identity: u32,
    pub dst_identity: u32,
    /// One of `enforcer_common::protocol`'s constants.
    pub protocol: u8,
    pub ports: PortBlock,
}

/// What the kernel maps should hold for one policy, without the slot it will be written to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// `generation` is left 0: the datapath stamps it when it writes the slot.
    pub config: SlotConfig,
    pub addr_exact: BTreeMap<[u8; 16], AddrValue>,
    pub addr_cidr: BTreeMap<AddrPrefix, AddrValue>,
    pub identity_info: BTreeMap<u32, IdentityInfo>,
    pub rules: BTreeMap<RuleKey, RuleValue>,
}

/// What events need to explain a `rule_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// `file:line`, or `settings:failsafe_inbound`.
    pub uid: String,
    pub name: String,
    pub description: Option<String>,
}

/// Something legal but worth an operator's attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileWarning {
    /// A deny rule would close a failsafe inbound port; the failsafe wins.
    FailsafeOverridesDeny { rule: String, port: String },
    /// An IPv6 peer prefix (`::/0`, `::/8`, ...) contains `::ffff:0:0/96`, where the maps keep IPv4.
    /// It is compiled as `entries` prefixes around that block, because an IPv6 prefix never claims
    /// an IPv4 address (POLICY.md); an author who wrote `::/0` may well have meant "everything".
    Ipv6PrefixSkipsIpv4 {
        peer: String,
        /// The `[[peer]]` table.
        location: Location,
        cidr: IpNet,
        entries: usize,
    },
}

impl fmt::Display for CompileWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FailsafeOverridesDeny { rule, port } => write!(
                f,
                "{rule}: the failsafe inbound port {port} overrides this deny rule for local destinations"
            ),
            Self::Ipv6PrefixSkipsIpv4 {
                peer,
                location,
                cidr,
                entries,
            } => write!(
                f,
                "{location}: peer `{peer}`: the IPv6 prefix {cidr} does not claim IPv4 addresses \
                 (IPv4 and IPv6 are separate spaces), which need their own IPv4 CIDR in `cidrs`; \
                 it is compiled as {entries} prefixes around ::ffff:0:0/96"
            ),
        }
    }
}

/// Errors compiling a valid policy: it does not fit the kernel maps.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "the policy needs {needed} entries in map {map}, which holds {capacity} per policy; raise it with {flag} (the map's size: twice what one policy may use)"
    )]
    TooLarge {
        map: &'static str,
        needed: usize,
        capacity: u32,
        flag: &'static str,
    },
}

/// A compiled policy: the desired map state plus what explains its ids.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub state: DesiredState,
    /// Indexed by `RuleValue::rule_id`: the policy's rules in order, then the failsafe.
    pub rules: Vec<RuleRef>,
    /// Segment names, indexed by `IdentityInfo::segment`.
    pub segments: Vec<String>,
    /// Members of each segment, in segment order.
    pub members: Vec<BTreeSet<u32>>,
    pub warnings: Vec<CompileWarning>,
    /// The policy's content hash.
    pub version: String,
}

const PRIORITY_ALLOW: u8 = 1;
const PRIORITY_DENY: u8 = 2;
const PRIORITY_FAILSAFE: u8 = 3;

/// The decision attached to a port interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outcome {
    rule_id: u32,
    verdict: u8,
    failsafe: bool,
}

/// Compiles `policy` as seen by the node `identities` was built for.
///
/// # Errors
/// When the result would not fit the kernel maps.
pub fn compile(policy: &Policy, identities: &Identities) -> Result<CompiledPolicy, CompileError> {
    let members = segment_members(policy, identities);
    let identity_info = identity_info(policy, identities, &members);
    let global_audit = policy.settings.mode == Mode::Audit;

    let mut rule_refs: Vec<RuleRef> = policy.rules.iter().map(|r| rule_ref(policy, r)).collect();
    let failsafe_id = u32::try_from(rule_refs.len()).unwrap_or(u32::MAX);
    rule_refs.push(RuleRef {
        uid: "settings:failsafe_inbound".to_owned(),
        name: "failsafe-inbound".to_owned(),
        description: Some("inbound ports on this node that no rule can close".to_owned()),
    });

    let mut claims: BTreeMap<(u32, u32, u8), Vec<Claim<Outcome>>> = BTreeMap::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let (priority, verdict) = match rule.action {
            Action::Allow => (PRIORITY_ALLOW, VERDICT_ALLOW),
            Action::Deny => (PRIORITY_DENY, VERDICT_DENY),
        };
        let outcome = Outcome {
            rule_id: u32::try_from(index).unwrap_or(u32::MAX),
            verdict,
            failsafe: false,
        };
        let sources = endpoint_ids(&rule.from, identities, &members);
        let destinations = endpoint_ids(&rule.to, identities, &members);
        for &src in &sources {
            for &dst in &destinations {
                add_claims(
                    &mut claims,
                    (src, dst),
                    &rule.ports,
                    priority,
                    index,
                    outcome,
                );
            }
        }
    }
    let local: Vec<u32> = identities
        .iter()
        .filter(|i| i.is_local())
        .map(|i| i.id)
        .collect();
    let failsafe = Outcome {
        rule_id: failsafe_id,
        verdict: VERDICT_ALLOW,
        failsafe: true,
    };
    for src in identities.iter().map(|i| i.id) {
        for &dst in &local {
            let terms = &policy.settings.failsafe_inbound;
            add_claims(
                &mut claims,
                (src, dst),
                terms,
                PRIORITY_FAILSAFE,
                0,
                failsafe,
            );
        }
    }

    let mut warnings = BTreeSet::new();
    let mut rules = BTreeMap::new();
    for ((src, dst, proto), list) in &claims {
        for (first, last, winner) in resolve(list) {
            if winner.outcome.failsafe {
                overridden_denies(list, first, last, &rule_refs, *proto, &mut warnings);
            }
            let mut flags = 0;
            if winner.outcome.failsafe {
                flags |= RULE_FAILSAFE;
            }
            // The kernel's own rule (explicit segment modes win over the global one, audit over
            // enforce); an identity without info has no segment and no mode.
            let info = |id: &u32| identity_info.get(id).copied().unwrap_or_default();
            if winner.outcome.verdict == VERDICT_DENY
                && enforcer_common::decide::effective_audit(global_audit, &info(src), &info(dst))
            {
                flags |= RULE_AUDIT;
            }
            let value = RuleValue {
                rule_id: winner.outcome.rule_id,
                verdict: winner.outcome.verdict,
                flags,
                _pad: 0,
            };
            for block in blocks(first, last) {
                let key = RuleKey {
                    src_identity: *src,
                    dst_identity: *dst,
                    protocol: *proto,
                    ports: block,
                };
                rules.insert(key, value);
            }
        }
    }

    let (addr_exact, addr_cidr) = addresses(policy, identities);
    let state = DesiredState {
        config: SlotConfig {
            generation: 0,
            flags: if global_audit { CONFIG_AUDIT } else { 0 },
            local_identity: identities.local_default(),
            _pad: 0,
        },
        addr_exact,
        addr_cidr,
        identity_info,
        rules,
    };
    Ok(CompiledPolicy {
        state,
        rules: rule_refs,
        segments: policy.segments.iter().map(|s| s.name.clone()).collect(),
        members,
        warnings: warnings
            .into_iter()
            .map(|(rule, port)| CompileWarning::FailsafeOverridesDeny { rule, port })
            .chain(ipv4_overlaps(policy))
            .collect(),
        version: policy.version.clone(),
    })
}

/// For each segment, the identities its selector picks (entities are never selected).
fn segment_members(policy: &Policy, identities: &Identities) -> Vec<BTreeSet<u32>> {
    policy
        .segments
        .iter()
        .map(|segment| {
            identities
                .iter()
                .filter(|i| i.id >= identity::FIRST_TABLE && segment.select.matches(&i.labels))
                .map(|i| i.id)
                .collect()
        })
        .collect()
}

fn identity_info(
    policy: &Policy,
    identities: &Identities,
    members: &[BTreeSet<u32>],
) -> BTreeMap<u32, IdentityInfo> {
    identities
        .iter()
        .map(|identity| {
            let mut info = IdentityInfo::default();
            let mut first = true;
            // Fail closed: one segment that keeps the packet-socket ban keeps it for the identity.
            let mut packet_sockets = true;
            for (index, (segment, set)) in policy.segments.iter().zip(members).enumerate() {
                if !set.contains(&identity.id) {
                    continue;
                }
                info.flags |= IDENTITY_SEGMENTED;
                if first {
                    info.segment = u32::try_from(index).unwrap_or(u32::MAX);
                    first = false;
                }
                match segment.mode {
                    Some(Mode::Audit) => info.flags |= IDENTITY_MODE_AUDIT,
                    Some(Mode::Enforce) => info.flags |= IDENTITY_MODE_ENFORCE,
                    None => {}
                }
                packet_sockets &= segment.packet_sockets == PacketSockets::Allow;
            }
            // Only segment members are banned, so only they carry the exemption.
            if info.flags & IDENTITY_SEGMENTED != 0 && packet_sockets {
                info.flags |= IDENTITY_PACKET_SOCKETS;
            }
            (identity.id, info)
        })
        .collect()
}

fn endpoint_ids(
    endpoint: &Endpoint,
    identities: &Identities,
    members: &[BTreeSet<u32>],
) -> BTreeSet<u32> {
    match endpoint {
        Endpoint::Segment(index) => members.get(*index).cloned().unwrap_or_default(),
        Endpoint::Entity(Entity::Host) => BTreeSet::from([identity::HOST]),
        Endpoint::Entity(Entity::World) => BTreeSet::from([identity::WORLD]),
        Endpoint::Entity(Entity::Any) => identities.iter().map(|i| i.id).collect(),
        Endpoint::Selector(selector) => identities
            .iter()
            .filter(|i| i.id >= identity::FIRST_TABLE && selector.matches(&i.labels))
            .map(|i| i.id)
            .collect(),
    }
}

/// Protocol and port interval for each port term; `any` covers every protocol the hooks see.
fn port_intervals(term: PortTerm) -> Vec<(u8, u16, u16)> {
    match term {
        PortTerm::Any => vec![
            (protocol::TCP, 0, u16::MAX),
            (protocol::UDP, 0, u16::MAX),
            (protocol::ICMP, 0, 0),
            (protocol::OTHER, 0, u16::MAX),
        ],
        PortTerm::Icmp => vec![(protocol::ICMP, 0, 0)],
        PortTerm::Range {
            protocol: proto,
            first,
            last,
        } => {
            let number = match proto {
                Protocol::Tcp => protocol::TCP,
                Protocol::Udp => protocol::UDP,
                Protocol::Icmp => return vec![(protocol::ICMP, 0, 0)],
            };
            vec![(number, first, last)]
        }
    }
}

fn add_claims(
    claims: &mut BTreeMap<(u32, u32, u8), Vec<Claim<Outcome>>>,
    (src, dst): (u32, u32),
    terms: &[PortTerm],
    priority: u8,
    order: usize,
    outcome: Outcome,
) {
    for term in terms {
        for (proto, first, last) in port_intervals(*term) {
            claims.entry((src, dst, proto)).or_default().push(Claim {
                first,
                last,
                priority,
                order,
                outcome,
            });
        }
    }
}

fn overridden_denies(
    claims: &[Claim<Outcome>],
    first: u16,
    last: u16,
    rule_refs: &[RuleRef],
    proto: u8,
    warnings: &mut BTreeSet<(String, String)>,
) {
    for claim in claims {
        if claim.outcome.verdict == VERDICT_DENY && claim.first <= last && first <= claim.last {
            let rule = rule_refs
                .get(claim.outcome.rule_id as usize)
                .map_or_else(String::new, |r| format!("{} ({})", r.uid, r.name));
            let name = protocol::name(proto);
            let port = if first == last {
                format!("{name}/{first}")
            } else {
                format!("{name}/{first}-{last}")
            };
            warnings.insert((rule, port));
        }
    }
}

fn rule_ref(policy: &Policy, rule: &Rule) -> RuleRef {
    let endpoint = |e: &Endpoint| match e {
        Endpoint::Segment(index) => policy
            .segments
            .get(*index)
            .map_or_else(String::new, |s| s.name.clone()),
        Endpoint::Entity(entity) => entity.as_str().to_owned(),
        Endpoint::Selector(selector) => selector.to_string(),
    };
    RuleRef {
        uid: format!("{}:{}", rule.location.file.display(), rule.location.line),
        name: rule.name.clone().unwrap_or_else(|| {
            format!(
                "{} {} -> {}",
                rule.action.as_str(),
                endpoint(&rule.from),
                endpoint(&rule.to)
            )
        }),
        description: rule.description.clone(),
    }
}

/// An address in the 16-byte form every map uses (IPv4 is IPv4-mapped).
#[must_use]
pub fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn prefix(net: IpNet) -> AddrPrefix {
    let bits = match net {
        IpNet::V4(v4) => 96 + v4.prefix_len(),
        IpNet::V6(v6) => v6.prefix_len(),
    };
    AddrPrefix {
        addr: mapped(net.network()),
        bits,
    }
}

/// `::ffff:0:0/96`: where the address maps keep IPv4.
const MAPPED_BLOCK: AddrPrefix = AddrPrefix {
    addr: ipv4_mapped([0; 4]),
    bits: 96,
};

/// The top `bits` bits of a 128-bit address.
fn mask(bits: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)
}

/// Whether every address of `inner` is in `outer`.
fn covers(outer: AddrPrefix, inner: AddrPrefix) -> bool {
    let (a, b) = (
        u128::from_be_bytes(outer.addr),
        u128::from_be_bytes(inner.addr),
    );
    outer.bits <= inner.bits && (a ^ b) & mask(outer.bits) == 0
}

/// The map prefixes that stand for `net`. An IPv4 CIDR is its mapped prefix. An IPv6 prefix keeps
/// out of the mapped block, since IPv4 and IPv6 are separate spaces (POLICY.md) while the LPM trie
/// sees one 128-bit space: one that contains the block becomes the sibling of each prefix on the
/// path from it down to the block (at most 96, exactly its IPv6 space), and one inside the block
/// (which the parser refuses) claims nothing.
fn map_prefixes(net: IpNet) -> Vec<AddrPrefix> {
    let whole = prefix(net);
    if !overlaps_mapped(net) {
        return vec![whole];
    }
    let block = u128::from_be_bytes(MAPPED_BLOCK.addr);
    (whole.bits + 1..=MAPPED_BLOCK.bits)
        .map(|bits| {
            // The block's own path to this depth, with its last bit flipped.
            let sibling = (block & mask(bits)) ^ (1u128 << (128 - u32::from(bits)));
            AddrPrefix {
                addr: sibling.to_be_bytes(),
                bits,
            }
        })
        .collect()
}

/// Whether `net` is an IPv6 prefix that shares addresses with the mapped block.
fn overlaps_mapped(net: IpNet) -> bool {
    let whole = prefix(net);
    matches!(net, IpNet::V6(_)) && (covers(whole, MAPPED_BLOCK) || covers(MAPPED_BLOCK, whole))
}

/// A warning for each IPv6 peer prefix that overlaps the mapped block.
fn ipv4_overlaps(policy: &Policy) -> Vec<CompileWarning> {
    policy
        .peers
        .iter()
        .flat_map(|peer| {
            peer.cidrs
                .iter()
                .filter(|net| overlaps_mapped(**net))
                .map(|net| CompileWarning::Ipv6PrefixSkipsIpv4 {
                    peer: peer.name.clone(),
                    location: peer.location.clone(),
                    cidr: *net,
                    entries: map_prefixes(*net).len(),
                })
        })
        .collect()
}

/// Exact node addresses, peer CIDRs, and the addresses that always mean "this host": loopback and
/// the unspecified address (connecting to 0.0.0.0 or :: reaches a local socket).
fn addresses(
    policy: &Policy,
    identities: &Identities,
) -> (
    BTreeMap<[u8; 16], AddrValue>,
    BTreeMap<AddrPrefix, AddrValue>,
) {
    let by_name: BTreeMap<&str, (u32, bool)> = identities
        .iter()
        .map(|i| (i.name.as_str(), (i.id, i.is_local())))
        .collect();
    let mut exact = BTreeMap::new();
    for node in &policy.nodes {
        let Some(&(id, local)) = by_name.get(node.name.as_str()) else {
            continue;
        };
        let flags = if local { ADDR_LOCAL } else { 0 };
        for addr in &node.addresses {
            exact.entry(mapped(*addr)).or_insert(AddrValue {
                identity: id,
                flags,
            });
        }
    }
    let local = AddrValue {
        identity: identities.local_default(),
        flags: ADDR_LOCAL,
    };
    let mut cidr = BTreeMap::new();
    for always_local in ["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"] {
        if let Ok(net) = always_local.parse::<IpNet>() {
            cidr.insert(prefix(net), local);
        }
    }
    // Each entry remembers the length of the CIDR it came from. The split of a shorter prefix can
    // produce exactly the key of a longer one (`::/0` and `::/8` share every sibling below /8, and
    // `::/0` yields `8000::/1`): the longer CIDR written is the longest match, so it keeps the key.
    let mut peers: BTreeMap<AddrPrefix, (u8, AddrValue)> = BTreeMap::new();
    for peer in &policy.peers {
        let Some(&(id, _)) = by_name.get(peer.name.as_str()) else {
            continue;
        };
        let value = AddrValue {
            identity: id,
            flags: 0,
        };
        for net in &peer.cidrs {
            let written = prefix(*net).bits;
            for key in map_prefixes(*net) {
                let entry = peers.entry(key).or_insert((written, value));
                if entry.0 < written {
                    *entry = (written, value);
                }
            }
        }
    }
    for (key, (_, value)) in peers {
        // The always-local entries win over a peer that names them.
        cidr.entry(key).or_insert(value);
    }
    (exact, cidr)
}

/// Sizes of the kernel's policy maps, in entries. Both policy slots share each map (the one in
/// force and the one kept for rollback), so one policy may use half of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub addr_exact: u32,
    pub addr_cidr: u32,
    pub identities: u32,
    pub rules: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            addr_exact: capacity::ADDR_EXACT,
            addr_cidr: capacity::ADDR_CIDR,
            identities: capacity::IDENTITIES,
            rules: capacity::RULES,
        }
    }
}

impl DesiredState {
    /// Checks that the state fits one slot of maps sized by `limits`, so that a policy too large
    /// is refused before anything is written rather than by a write failing half-way.
    ///
    /// # Errors
    /// [`CompileError::TooLarge`], naming the map, the limit and the flag that raises it.
    pub fn check_fits(&self, limits: &Limits) -> Result<(), CompileError> {
        let checks = [
            (
                "ADDR_EXACT",
                self.addr_exact.len(),
                limits.addr_exact,
                "--max-addresses",
            ),
            (
                "ADDR_CIDR",
                self.addr_cidr.len(),
                limits.addr_cidr,
                "--max-cidrs",
            ),
            (
                "IDENTITY_INFO",
                self.identity_info.len(),
                limits.identities,
                "--max-identities",
            ),
            ("RULES", self.rules.len(), limits.rules, "--max-rules"),
        ];
        for (map, needed, size, flag) in checks {
            if needed > (size / 2) as usize {
                return Err(CompileError::TooLarge {
                    map,
                    needed,
                    capacity: size / 2,
                    flag,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
