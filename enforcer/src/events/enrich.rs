//! From a raw [`FlowEvent`] to a [`FlowRecord`]: identities to names and labels, rule ids to
//! `file:line`, the process to its command line, all through the context of the policy
//! generation that decided, or explicitly marked unknown when that generation is not on record.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::SystemTime,
};

use enforcer_common::{
    EVENT_NO_PROCESS, EVENT_PROCESS_FROM_SOCKET, EVENT_REVOKED, FLOW_EVENT_VERSION, FlowEvent,
    IDENTITY_SEGMENTED, VERDICT_AUDIT, hook, identity, protocol, reason,
};

use super::{
    FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowRule, FlowWorkload, Layer, Verdict,
    process::ProcessCache,
};
use crate::{
    compile::CompiledPolicy,
    host::SourceResolver,
    identity::Identities,
    policy::{Labels, Mode},
};

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

/// Everything needed to explain the decisions of one policy generation: its rules and segments
/// by kernel index, and its identity numbers by name. Facts about the node are not here but in
/// the [`Enricher`], since they do not depend on which generation decided.
#[derive(Debug)]
pub struct PolicyContext {
    pub compiled: CompiledPolicy,
    pub identities: Identities,
}

/// Enriches events with the context of the generation that produced them.
///
/// An event of a generation it has no context for (written while the daemon was down, by a
/// policy it adopted from the kernel and cannot explain) is reported as such, never explained
/// with another generation's tables: rule ids, segment indexes and identity numbers of another
/// generation may mean other rules and other workloads.
#[derive(Debug)]
pub struct Enricher {
    generations: BTreeMap<u32, Arc<PolicyContext>>,
    node: FlowNode,
    /// This node's own addresses, the fallback source when the kernel had none and the route
    /// lookup gave no answer.
    node_addresses: Vec<IpAddr>,
    /// Asks the routing table (over netlink, opening no inet socket) for the source address of
    /// a connection refused before the kernel bound one; `None` when its worker could not start.
    resolver: Option<SourceResolver>,
    /// Command lines, executables, parents, user names and cgroups of the processes seen.
    processes: ProcessCache,
    /// Events explained without a context so far.
    unknown_generations: u64,
}

impl Enricher {
    /// An enricher for events of `node`, which knows no generation yet. `node_addresses` (this
    /// node's declared addresses) are the last fallback for the source of an unbound socket;
    /// `resolver`, when its worker started, is asked before them.
    #[must_use]
    pub fn new(
        node: FlowNode,
        node_addresses: Vec<IpAddr>,
        resolver: Option<SourceResolver>,
    ) -> Self {
        Self {
            generations: BTreeMap::new(),
            node,
            node_addresses,
            resolver,
            processes: ProcessCache::default(),
            unknown_generations: 0,
        }
    }

    /// Replaces the generations this enricher can explain with `contexts`, keyed by generation:
    /// the daemon publishes the whole set it keeps (in force, rollback, recent), so a generation
    /// it let go of is no longer explained with tables it no longer vouches for.
    pub fn set_generations(&mut self, contexts: BTreeMap<u32, Arc<PolicyContext>>) {
        self.generations = contexts;
    }

    /// How many events were explained without a context so far (see [`Enricher::enrich`]).
    #[must_use]
    pub const fn unknown_generations(&self) -> u64 {
        self.unknown_generations
    }

    /// Builds the record of `event`, explained by the context of the generation that decided.
    ///
    /// Without that context the record still carries everything the kernel reported (process,
    /// addresses, ports, protocol, layer, verdict), but both ends are `@unknown` without labels
    /// or segments, the policy version is `unknown`, and a rule or default-deny decision is
    /// named `generation:<N>` / `unknown-generation`. Fail-closed decisions keep their names:
    /// the kernel's reason codes mean the same in every generation.
    pub fn enrich(&mut self, event: &FlowEvent, time: SystemTime) -> FlowRecord {
        let context = self.generations.get(&event.generation).map(Arc::as_ref);
        if context.is_none() {
            self.unknown_generations += 1;
        }
        let src_ip = self.source(event);
        record(
            context,
            &self.node,
            &mut self.processes,
            src_ip,
            event,
            time,
        )
    }

    /// The source address of `event`: the kernel's, else the route's preferred source in the
    /// process's namespace, else this node's first address of the destination's family.
    fn source(&self, event: &FlowEvent) -> IpAddr {
        let dst_ip = ip_from(event.dst_addr);
        let kernel_src = ip_from(event.src_addr);
        // Unbound sockets have no source yet (all zeros, or ::ffff:0.0.0.0 for IPv4).
        if !kernel_src.is_unspecified() {
            return kernel_src;
        }
        self.resolver
            .as_ref()
            .filter(|_| event.pid != 0)
            .and_then(|resolver| resolver.resolve(event.pid, dst_ip))
            .or_else(|| {
                self.node_addresses
                    .iter()
                    .find(|a| a.is_ipv4() == dst_ip.is_ipv4())
                    .copied()
            })
            .unwrap_or(if dst_ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            })
    }
}

/// The record of `event` as `context` explains it (`None`: its generation is not on record).
fn record(
    context: Option<&PolicyContext>,
    node: &FlowNode,
    processes: &mut ProcessCache,
    src_ip: IpAddr,
    event: &FlowEvent,
    time: SystemTime,
) -> FlowRecord {
    let dst_ip = ip_from(event.dst_addr);
    let is_icmp = matches!(event.protocol, protocol::ICMP | protocol::ICMPV6);
    let port = |p: u16| (!is_icmp).then_some(p);
    let audited = event.verdict == VERDICT_AUDIT;
    let (process, workload) = if event.flags & EVENT_NO_PROCESS == 0 {
        let (process, workload) = process(event, processes);
        (Some(process), workload)
    } else {
        (None, None)
    };
    FlowRecord {
        time,
        verdict: if audited {
            Verdict::Audited
        } else {
            Verdict::Denied
        },
        protocol: event.protocol,
        ip_version: event.ip_version,
        outbound: !matches!(event.hook, hook::SKB_INGRESS | hook::TC_INGRESS),
        revoked: event.flags & EVENT_REVOKED != 0,
        src: endpoint(context, event.src_identity, src_ip, port(event.src_port)),
        dst: endpoint(context, event.dst_identity, dst_ip, port(event.dst_port)),
        process,
        layer: match event.hook {
            hook::SKB_EGRESS | hook::SKB_INGRESS => Layer::Packet,
            hook::LSM_CONNECT | hook::LSM_SENDMSG => Layer::Lsm,
            hook::TC_INGRESS => Layer::Interface,
            _ => Layer::Socket,
        },
        process_from_socket: event.flags & EVENT_PROCESS_FROM_SOCKET != 0,
        workload,
        rule: rule(context, event),
        policy_version: context.map_or_else(
            || UNKNOWN_VERSION.to_owned(),
            |c| c.compiled.version.clone(),
        ),
        mode: if audited { Mode::Audit } else { Mode::Enforce },
        node: node.clone(),
        count: 1,
        span: None,
        swept_ports: Vec::new(),
    }
}

/// `policy_version` of an event whose generation is not on record.
const UNKNOWN_VERSION: &str = "unknown";
/// The name of an end that could not be resolved, by the kernel or for want of its generation.
const UNKNOWN_ENDPOINT: &str = "@unknown";

fn ip_from(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// One end of the connection. Without the context of its generation the identity number is not
/// interpreted: another generation's tables may give it another name or other segments. The
/// reserved `@host`/`@world` numbers are not special-cased either, so that both ends of such an
/// event read the same `@unknown`.
fn endpoint(
    context: Option<&PolicyContext>,
    id: u32,
    ip: IpAddr,
    port: Option<u16>,
) -> FlowEndpoint {
    let Some(context) = context else {
        return FlowEndpoint {
            ip,
            port,
            name: UNKNOWN_ENDPOINT.to_owned(),
            labels: Labels::new(),
            is_world: false,
            segmented: false,
        };
    };
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
        name: identity.map_or_else(|| UNKNOWN_ENDPOINT.to_owned(), |i| i.name.clone()),
        labels: identity.map(|i| i.labels.clone()).unwrap_or_default(),
        is_world: id == identity::WORLD,
        segmented,
    }
}

/// The process of `event`: what the kernel reported, with what `/proc` still tells of it, and
/// the workload its cgroup shows.
fn process(event: &FlowEvent, processes: &mut ProcessCache) -> (FlowProcess, Option<FlowWorkload>) {
    let end = event
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(event.comm.len());
    let details = (event.pid != 0)
        .then(|| processes.details(event.pid, event.boot_ns))
        .flatten()
        .unwrap_or_default();
    let process = FlowProcess {
        pid: event.pid,
        name: String::from_utf8_lossy(&event.comm[..end]).into_owned(),
        cmd_line: details.cmd_line,
        uid: event.uid,
        // The uid is the kernel's: its name does not depend on the process still being there.
        user_name: processes.user_name(event.uid),
        executable: details.executable,
        parent_pid: details.parent_pid,
    };
    (process, details.workload)
}

fn rule(context: Option<&PolicyContext>, event: &FlowEvent) -> FlowRule {
    match (event.reason, context) {
        // Rule ids and segment indexes are positions in one generation's tables.
        (reason::RULE | reason::DEFAULT_DENY, None) => FlowRule {
            uid: format!("generation:{}", event.generation),
            name: "unknown-generation".to_owned(),
            description: Some(format!(
                "decided by policy generation {}, which is not on record: the rule cannot be named",
                event.generation
            )),
        },
        (reason::RULE, Some(context)) => context
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
        (reason::DEFAULT_DENY, Some(context)) => {
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
        (reason::UNLABELLED_CGROUP, _) => fail_closed(
            "unlabelled-cgroup",
            "the process's cgroup is new and not labelled yet, and its ancestor's identity could be broader than its own: held until labelled",
        ),
        (reason::SOURCE_ROUTE, _) => fail_closed(
            "source-route",
            "a segment member may not route a packet past its judged destination (IPv6 routing header, IPv4 source route)",
        ),
        (reason::UNRESOLVED_LOCAL, _) => fail_closed(
            "unresolved-local",
            "the destination is on this node but the socket that would receive it could not be resolved to its owner",
        ),
        (_, _) => fail_closed(
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
    use enforcer_common::{VERDICT_DENY, ipv4_mapped};

    use super::*;
    use crate::{
        compile::compile,
        identity::IdentityAllocator,
        policy::{Source, parse_sources},
    };

    const TABLES: &str = r#"
[[node]]
name = "local"
addresses = ["10.0.0.1"]

[[node]]
name = "db"
addresses = ["10.0.0.2"]
labels = { segment = "finance" }

[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "web-tier"
select = { segment = "web" }
"#;

    const WEB_NEVER_DB: &str = r#"
[[deny]]
name = "web-never-db"
from = "web-tier"
to = "finance"
ports = ["tcp/5432"]
"#;

    const WEB_NEVER_DNS: &str = r#"
[[deny]]
name = "web-never-dns"
from = "web-tier"
to = "finance"
ports = ["udp/53"]
"#;

    /// The context of the policy `TABLES` + `rules`: rule 0 is the first of `rules`.
    fn context(rules: &[&str]) -> Arc<PolicyContext> {
        let text = [TABLES].iter().chain(rules).copied().collect::<String>();
        let policy = parse_sources(&[Source {
            path: "p.toml".into(),
            text,
        }])
        .expect("valid policy");
        let identities = Identities::build(&policy, "local", &mut IdentityAllocator::default())
            .expect("identities");
        let compiled = compile(&policy, &identities).expect("compiles");
        Arc::new(PolicyContext {
            compiled,
            identities,
        })
    }

    fn id(context: &PolicyContext, name: &str) -> u32 {
        context
            .identities
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.id)
            .expect("identity")
    }

    fn node() -> FlowNode {
        FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        }
    }

    /// web (10.0.0.1:40000) -> db (10.0.0.2:5432) over TCP, refused at the socket layer by rule 0
    /// of `generation`, the identities numbered as in `context`.
    fn denial(context: &PolicyContext, generation: u32) -> FlowEvent {
        FlowEvent {
            version: FLOW_EVENT_VERSION,
            hook: hook::SKB_EGRESS,
            verdict: VERDICT_DENY,
            reason: reason::RULE,
            protocol: protocol::TCP,
            ip_version: 4,
            flags: EVENT_NO_PROCESS,
            generation,
            rule_id: 0,
            src_identity: id(context, "web"),
            dst_identity: id(context, "db"),
            src_port: 40000,
            dst_port: 5432,
            src_addr: ipv4_mapped([10, 0, 0, 1]),
            dst_addr: ipv4_mapped([10, 0, 0, 2]),
            ..FlowEvent::default()
        }
    }

    fn enricher(contexts: &[(u32, &Arc<PolicyContext>)]) -> Enricher {
        let mut enricher = Enricher::new(node(), Vec::new(), None);
        enricher.set_generations(
            contexts
                .iter()
                .map(|(generation, context)| (*generation, Arc::clone(context)))
                .collect(),
        );
        enricher
    }

    #[test]
    fn a_known_generation_names_its_own_rule() {
        let (first, second) = (
            context(&[WEB_NEVER_DB]),
            context(&[WEB_NEVER_DNS, WEB_NEVER_DB]),
        );
        let mut enricher = enricher(&[(1, &first), (2, &second)]);
        let old = enricher.enrich(&denial(&first, 1), SystemTime::now());
        assert_eq!(old.rule.name, "web-never-db");
        assert_eq!(old.policy_version, first.compiled.version);
        let new = enricher.enrich(&denial(&second, 2), SystemTime::now());
        assert_eq!(new.rule.name, "web-never-dns", "rule 0 of generation 2");
        assert_eq!(new.policy_version, second.compiled.version);
        for record in [&old, &new] {
            assert_eq!(
                (record.src.name.as_str(), record.dst.name.as_str()),
                ("web", "db")
            );
            assert!(record.src.segmented && record.dst.segmented);
            assert_eq!(record.node, node());
        }
        assert_eq!(enricher.unknown_generations(), 0);
    }

    #[test]
    fn an_unknown_generation_is_reported_as_such_and_counted() {
        let known = context(&[WEB_NEVER_DB]);
        let mut enricher = enricher(&[(1, &known)]);
        let event = denial(&known, 7);
        let record = enricher.enrich(&event, SystemTime::now());
        assert_eq!(
            record.rule,
            FlowRule {
                uid: "generation:7".to_owned(),
                name: "unknown-generation".to_owned(),
                description: Some(
                    "decided by policy generation 7, which is not on record: the rule cannot be named"
                        .to_owned()
                ),
            }
        );
        for end in [&record.src, &record.dst] {
            assert_eq!(end.name, "@unknown");
            assert!(end.labels.is_empty());
            assert!(!end.segmented && !end.is_world);
        }
        assert_eq!(record.policy_version, "unknown");
        // What the kernel reported is kept.
        assert_eq!(record.src.ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(record.dst.ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(
            (record.src.port, record.dst.port),
            (Some(40000), Some(5432))
        );
        assert_eq!((record.protocol, record.ip_version), (protocol::TCP, 4));
        assert_eq!(
            (record.layer, record.verdict),
            (Layer::Packet, Verdict::Denied)
        );
        assert_eq!(record.node, node());
        assert_eq!(enricher.unknown_generations(), 1);

        let default_deny = FlowEvent {
            reason: reason::DEFAULT_DENY,
            ..event
        };
        let record = enricher.enrich(&default_deny, SystemTime::now());
        assert_eq!(
            record.rule.uid, "generation:7",
            "segment indexes are per generation too"
        );
        assert_eq!(enricher.unknown_generations(), 2);
    }

    #[test]
    fn a_fail_closed_decision_of_an_unknown_generation_keeps_its_name() {
        let known = context(&[WEB_NEVER_DB]);
        let mut enricher = enricher(&[]);
        let event = FlowEvent {
            reason: reason::SOURCE_ROUTE,
            ..denial(&known, 0)
        };
        let record = enricher.enrich(&event, SystemTime::now());
        assert_eq!(record.rule.uid, "fail-closed:source-route");
        assert_eq!(record.src.name, "@unknown");
        assert_eq!(record.policy_version, "unknown");
        assert_eq!(enricher.unknown_generations(), 1);
    }

    #[test]
    fn set_generations_replaces_the_set() {
        let (first, second) = (
            context(&[WEB_NEVER_DB]),
            context(&[WEB_NEVER_DNS, WEB_NEVER_DB]),
        );
        let mut enricher = enricher(&[(1, &first)]);
        assert_eq!(
            enricher
                .enrich(&denial(&first, 1), SystemTime::now())
                .rule
                .name,
            "web-never-db"
        );
        enricher.set_generations(BTreeMap::from([(2, Arc::clone(&second))]));
        let dropped = enricher.enrich(&denial(&first, 1), SystemTime::now());
        assert_eq!(
            dropped.rule.uid, "generation:1",
            "not explained by generation 2"
        );
        let kept = enricher.enrich(&denial(&second, 2), SystemTime::now());
        assert_eq!(kept.rule.name, "web-never-dns");
        assert_eq!(enricher.unknown_generations(), 1);
    }

    #[test]
    fn an_unbound_source_falls_back_to_the_node_address_without_a_context() {
        let known = context(&[WEB_NEVER_DB]);
        let own = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let mut enricher = Enricher::new(node(), vec!["fd00::1".parse().expect("v6"), own], None);
        let event = FlowEvent {
            src_addr: ipv4_mapped([0; 4]),
            ..denial(&known, 9)
        };
        assert_eq!(enricher.enrich(&event, SystemTime::now()).src.ip, own);
    }

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
