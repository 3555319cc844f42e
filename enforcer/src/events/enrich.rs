//! From a raw [`FlowEvent`] to a [`FlowRecord`]: identities to names and labels, rule ids to
//! `file:line`, the process to its command line.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::SystemTime,
};

use enforcer_common::{
    EVENT_NO_PROCESS, EVENT_PROCESS_FROM_SOCKET, FLOW_EVENT_VERSION, FlowEvent, IDENTITY_SEGMENTED,
    VERDICT_AUDIT, hook, identity, protocol, reason,
};

use super::{FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowRule, Layer, Verdict};
use crate::{compile::CompiledPolicy, host::SourceResolver, identity::Identities, policy::Mode};

/// Errors decoding a ring-buffer record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes, expected {expected}")]
    Size { len: usize, expected: usize },
    #[error("event layout version {found}, this daemon reads {expected}")]
    Version { found: u16, expected: u16 },
}

/// Reads a [`FlowEvent`] out of ring-buffer bytes, checking size and layout version.
///
/// # Errors
/// When the record is not a `FlowEvent` of the version this build knows.
pub fn decode(bytes: &[u8]) -> Result<FlowEvent, DecodeError> {
    let expected = size_of::<FlowEvent>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked above, FlowEvent is plain old data (every bit pattern is
    // valid), and read_unaligned makes no alignment assumption about the ring-buffer bytes.
    let event = unsafe { bytes.as_ptr().cast::<FlowEvent>().read_unaligned() };
    if event.version != FLOW_EVENT_VERSION {
        return Err(DecodeError::Version {
            found: event.version,
            expected: FLOW_EVENT_VERSION,
        });
    }
    Ok(event)
}

/// Everything needed to explain the decisions of one policy generation.
#[derive(Debug)]
pub struct PolicyContext {
    pub compiled: CompiledPolicy,
    pub identities: Identities,
    pub node: FlowNode,
    /// This node's own addresses, the fallback source when the kernel had none.
    pub node_addresses: Vec<IpAddr>,
}

/// Enriches events with the context of the generation that produced them.
#[derive(Debug, Default)]
pub struct Enricher {
    generations: BTreeMap<u32, Arc<PolicyContext>>,
    /// Asks the routing table (over netlink, opening no inet socket) for the source address of
    /// a connection refused before the kernel bound one.
    resolver: Option<SourceResolver>,
}

/// Generations kept for events still in flight after a policy change.
const GENERATIONS_KEPT: usize = 4;

impl Enricher {
    /// An enricher that fills in missing source addresses with `resolver`.
    #[must_use]
    pub fn with_resolver(resolver: SourceResolver) -> Self {
        Self {
            generations: BTreeMap::new(),
            resolver: Some(resolver),
        }
    }

    /// Registers the context of a newly applied generation.
    pub fn insert(&mut self, generation: u32, context: Arc<PolicyContext>) {
        self.generations.insert(generation, context);
        while self.generations.len() > GENERATIONS_KEPT {
            self.generations.pop_first();
        }
    }

    /// Builds the record of `event`. Events from an unknown generation (e.g. decided before the
    /// first policy was in force) are explained with the newest context.
    #[must_use]
    pub fn enrich(&self, event: &FlowEvent, time: SystemTime) -> Option<FlowRecord> {
        let context = self
            .generations
            .get(&event.generation)
            .or_else(|| self.generations.values().next_back())?;
        Some(record(context, self.resolver.as_ref(), event, time))
    }
}

fn record(
    context: &PolicyContext,
    resolver: Option<&SourceResolver>,
    event: &FlowEvent,
    time: SystemTime,
) -> FlowRecord {
    let dst_ip = ip_from(event.dst_addr);
    let kernel_src = ip_from(event.src_addr);
    // Unbound sockets have no source yet (all zeros, or ::ffff:0.0.0.0 for IPv4).
    let src_ip = if kernel_src.is_unspecified() {
        resolver
            .filter(|_| event.pid != 0)
            .and_then(|resolver| resolver.resolve(event.pid, dst_ip))
            .or_else(|| {
                context
                    .node_addresses
                    .iter()
                    .find(|a| a.is_ipv4() == dst_ip.is_ipv4())
                    .copied()
            })
            .unwrap_or(if dst_ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            })
    } else {
        kernel_src
    };
    let is_icmp = matches!(event.protocol, protocol::ICMP | protocol::ICMPV6);
    let port = |p: u16| (!is_icmp).then_some(p);
    let audited = event.verdict == VERDICT_AUDIT;
    FlowRecord {
        time,
        verdict: if audited {
            Verdict::Audited
        } else {
            Verdict::Denied
        },
        protocol: event.protocol,
        ip_version: event.ip_version,
        outbound: true,
        src: endpoint(context, event.src_identity, src_ip, port(event.src_port)),
        dst: endpoint(context, event.dst_identity, dst_ip, port(event.dst_port)),
        process: (event.flags & EVENT_NO_PROCESS == 0).then(|| process(event)),
        layer: match event.hook {
            hook::SKB_EGRESS => Layer::Packet,
            hook::LSM_CONNECT | hook::LSM_SENDMSG => Layer::Lsm,
            _ => Layer::Socket,
        },
        process_from_socket: event.flags & EVENT_PROCESS_FROM_SOCKET != 0,
        rule: rule(context, event),
        policy_version: context.compiled.version.clone(),
        mode: if audited { Mode::Audit } else { Mode::Enforce },
        node: context.node.clone(),
        count: 1,
    }
}

fn ip_from(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

fn endpoint(context: &PolicyContext, id: u32, ip: IpAddr, port: Option<u16>) -> FlowEndpoint {
    let identity = context.identities.get(id);
    let segmented = context
        .compiled
        .state
        .identity_info
        .get(&id)
        .is_some_and(|i| i.flags & IDENTITY_SEGMENTED != 0);
    FlowEndpoint {
        ip,
        port,
        name: identity.map_or_else(|| "@unknown".to_owned(), |i| i.name.clone()),
        labels: identity.map(|i| i.labels.clone()).unwrap_or_default(),
        is_world: id == identity::WORLD,
        segmented,
    }
}

fn process(event: &FlowEvent) -> FlowProcess {
    let end = event
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(event.comm.len());
    let cmd_line = fs::read(format!("/proc/{}/cmdline", event.pid))
        .ok()
        .filter(|raw| !raw.is_empty())
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        });
    FlowProcess {
        pid: event.pid,
        name: String::from_utf8_lossy(&event.comm[..end]).into_owned(),
        cmd_line,
        uid: event.uid,
    }
}

fn rule(context: &PolicyContext, event: &FlowEvent) -> FlowRule {
    match event.reason {
        reason::RULE => context
            .compiled
            .rules
            .get(event.rule_id as usize)
            .map_or_else(
                || FlowRule {
                    uid: format!("rule#{}", event.rule_id),
                    name: format!("rule#{}", event.rule_id),
                    description: None,
                },
                |r| FlowRule {
                    uid: r.uid.clone(),
                    name: r.name.clone(),
                    description: r.description.clone(),
                },
            ),
        reason::DEFAULT_DENY => {
            let segment = context
                .compiled
                .segments
                .get(event.rule_id as usize)
                .map_or("?", String::as_str);
            FlowRule {
                uid: format!("default-deny:{segment}"),
                name: format!("default-deny:{segment}"),
                description: Some(format!(
                    "segment {segment} isolates its members: no rule allows this connection"
                )),
            }
        }
        reason::UNLABELLED_CGROUP => fail_closed(
            "unlabelled-cgroup",
            "the process's cgroup is new and not labelled yet, and its ancestor's identity could be broader than its own: held until labelled",
        ),
        reason::SOURCE_ROUTE => fail_closed(
            "source-route",
            "a segment member may not route a packet past its judged destination (IPv6 routing header, IPv4 source route)",
        ),
        reason::UNRESOLVED_LOCAL => fail_closed(
            "unresolved-local",
            "the destination is on this node but the socket that would receive it could not be resolved to its owner",
        ),
        _ => fail_closed(
            "unresolved",
            "the kernel could not resolve an identity and refused the connection",
        ),
    }
}

fn fail_closed(what: &str, why: &str) -> FlowRule {
    FlowRule {
        uid: format!("fail-closed:{what}"),
        name: format!("fail-closed:{what}"),
        description: Some(why.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_size_and_version() {
        assert!(matches!(decode(&[0; 8]), Err(DecodeError::Size { .. })));
        let event = FlowEvent {
            version: FLOW_EVENT_VERSION + 1,
            ..FlowEvent::default()
        };
        // SAFETY: FlowEvent is plain old data; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<FlowEvent>())
        };
        assert!(matches!(decode(bytes), Err(DecodeError::Version { .. })));
    }

    #[test]
    fn mapped_addresses_come_back_as_ipv4() {
        let v4 = enforcer_common::ipv4_mapped([10, 1, 2, 3]);
        assert_eq!(ip_from(v4), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let v6 = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(ip_from(v6), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
