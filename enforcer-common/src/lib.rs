//! The ABI between the enforcer's kernel programs (`enforcer-ebpf`) and its daemon (`enforcer`).
//!
//! Every type here is `#[repr(C)]` with explicit padding, so that keys hash the same on both sides
//! and the verifier never reads uninitialised bytes. Sizes and offsets are checked at compile time.
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), in network byte
//! order, so one set of maps serves both families.
//!
//! Every policy key carries a `slot` (0 or 1). The kernel reads the active slot once per decision
//! from [`ACTIVE_SLOT`](maps::ACTIVE_SLOT), so user space can write a whole new policy into the other
//! slot and switch in one store: no decision ever sees half of two policies.
#![no_std]

use core::mem::{offset_of, size_of};

/// Names of the maps declared by `enforcer-ebpf`, as user space looks them up.
pub mod maps {
    /// `Array<u32>`, one entry: the slot (0 or 1) that holds the policy in force.
    pub const ACTIVE_SLOT: &str = "ACTIVE_SLOT";
    /// `Array<SlotConfig>`, one entry per slot.
    pub const SLOT_CONFIG: &str = "SLOT_CONFIG";
    /// `HashMap<CgroupKey, CgroupLabel>`: cgroup v2 id → local identity and hold flag.
    pub const CGROUP_IDENTITY: &str = "CGROUP_IDENTITY";
    /// `HashMap<AddrKey, AddrValue>`: exact host addresses (nodes, this node's own addresses).
    pub const ADDR_EXACT: &str = "ADDR_EXACT";
    /// `LpmTrie<AddrLpmData, AddrValue>`: CIDRs of peers and loopback.
    pub const ADDR_CIDR: &str = "ADDR_CIDR";
    /// `HashMap<IdentityKey, IdentityInfo>`: segment membership and mode of each identity.
    pub const IDENTITY_INFO: &str = "IDENTITY_INFO";
    /// `LpmTrie<RuleLpmData, RuleValue>`: resolved verdicts per identity pair, protocol and port
    /// block, for blocks of more than one port.
    pub const RULES: &str = "RULES";
    /// `HashMap<RuleLpmData, RuleValue>`: the resolved verdicts of single ports, the longest
    /// prefix there is, so a hit here is what [`RULES`] would answer. A hash costs a fraction of
    /// a trie to look up and to write, and most rules name single ports.
    pub const RULES_EXACT: &str = "RULES_EXACT";
    /// `PerCpuArray<u64>` indexed by [`counter`](crate::counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// `RingBuf` of [`FlowEvent`](crate::FlowEvent).
    pub const EVENTS: &str = "EVENTS";
    /// `HashMap<ListenerKey, ListenerValue>`: local sockets by the exact address, port, protocol
    /// and family they are bound to, so that the socket the kernel finds for a connection
    /// (`bpf_sk_lookup_*`) is resolved to the workload that bound it. Kept by the kernel
    /// (`post_bind4/6` add, `sock_release` removes); survives policy swaps. A socket it does not
    /// know (bound before the programs were attached) is left to the packet layer, which asks the
    /// kernel for the socket's cgroup.
    pub const LISTENERS: &str = "LISTENERS";
    /// `LruHashMap<u64, ListenerKey>`: socket cookie → its [`LISTENERS`] key, because
    /// `sock_release` may not read the port of the socket it releases.
    pub const LISTENER_KEYS: &str = "LISTENER_KEYS";
    /// `LruHashMap<u64, SocketOwner>`: socket cookie → who created the socket, recorded by
    /// `sock_create` for every inet socket made inside the managed subtree.
    pub const SOCKET_OWNERS: &str = "SOCKET_OWNERS";
    /// `LruHashMap<u64, SocketVerdict>`: socket cookie → the last flow judged on it, so that the
    /// packets of an established flow cost one lookup. An evicted entry is judged again.
    pub const SOCKET_VERDICTS: &str = "SOCKET_VERDICTS";
    /// `HashMap<LocalAddrKey, u32>`: every address the kernel holds in the node's network
    /// namespace, learnt by the daemon over netlink (declared in `[[node]]` or not).
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    /// `Array<Runtime>`, one entry: facts about this instance that are not policy.
    pub const RUNTIME: &str = "RUNTIME";
    /// `CgroupArray`, one entry: the managed cgroup root, for the task-keyed LSM programs that
    /// are not attached to a cgroup.
    pub const MANAGED_ROOT: &str = "MANAGED_ROOT";
    /// `LruHashMap<FlowKey, FlowState>`: connection tracking, keyed by each flow's opening
    /// direction, for what a socket's own memory cannot tell: replies to datagrams sent to many
    /// peers, an accepted socket's first packet, the sender of a flow between two local
    /// workloads. An evicted entry is judged again, never allowed.
    pub const FLOWS: &str = "FLOWS";
    /// `LruHashMap<ArrivedKey, u32>`: peers that opened a datagram flow to a local port (value:
    /// the generation that let it in), so that the socket hooks leave a server's reply to them to
    /// the packet layer instead of judging it as a connection of its own.
    pub const ARRIVED: &str = "ARRIVED";
    /// `HashMap<ReportKey, ReportRepeats>`: repeats of denied and audited attempts, by window
    /// half (see [`report`](crate::report)).
    pub const REPORTS: &str = "REPORTS";
    /// `Array<u32>`, one entry: the window half the kernel counts repeats into now.
    pub const REPORT_WINDOW: &str = "REPORT_WINDOW";

    /// Every map, as pinned under an instance's bpffs directory so that a restarted daemon
    /// adopts them.
    pub const ALL: [&str; 21] = [
        ACTIVE_SLOT,
        SLOT_CONFIG,
        CGROUP_IDENTITY,
        ADDR_EXACT,
        ADDR_CIDR,
        IDENTITY_INFO,
        RULES,
        RULES_EXACT,
        COUNTERS,
        EVENTS,
        LISTENERS,
        LISTENER_KEYS,
        SOCKET_OWNERS,
        SOCKET_VERDICTS,
        LOCAL_ADDRS,
        RUNTIME,
        MANAGED_ROOT,
        FLOWS,
        ARRIVED,
        REPORTS,
        REPORT_WINDOW,
    ];
}

/// Version of the maps' layout: their set, types, key and value types. Pinned maps are adopted by
/// a later daemon only when it was built for the same version (and the same sizes); bump it on any
/// change to a map or to a type stored in one, so that a new daemon puts fresh maps beside the
/// old ones instead of misreading them.
pub const ABI_VERSION: u32 = 5;

/// Map sizes. User space refuses a policy that would not fit rather than letting an insert fail
/// half-way.
pub mod capacity {
    pub const CGROUPS: u32 = 65_536;
    pub const ADDR_EXACT: u32 = 16_384;
    pub const ADDR_CIDR: u32 = 16_384;
    pub const IDENTITIES: u32 = 8_192;
    pub const RULES: u32 = 262_144;
    pub const LISTENERS: u32 = 65_536;
    /// Sockets whose owner and last verdict are remembered; older ones are evicted (LRU) and
    /// judged again, never let through unjudged.
    pub const SOCKETS: u32 = 131_072;
    pub const LOCAL_ADDRS: u32 = 4_096;
    /// Tracked flows (see [`FLOWS`](crate::maps::FLOWS)); older ones are evicted and judged
    /// again.
    pub const FLOWS: u32 = 262_144;
    /// Ring buffer size in bytes (a power of two multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
}

/// Reserved numeric identities. Identities of policy tables start at [`identity::FIRST_TABLE`].
pub mod identity {
    /// Never assigned: the kernel treats it as "could not resolve" and fails closed.
    pub const UNKNOWN: u32 = 0;
    /// `@host`: local processes that no table claims.
    pub const HOST: u32 = 1;
    /// `@world`: addresses that no table claims.
    pub const WORLD: u32 = 2;
    /// The first identity handed to a `node`, `workload` or `peer` table.
    pub const FIRST_TABLE: u32 = 256;
}

/// Protocol numbers as used in [`RuleLpmData::protocol`]. ICMPv6 echo is folded into [`ICMP`](protocol::ICMP)
/// because the policy's `icmp` term means both.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    /// Any other protocol: only the `any` port term covers it.
    pub const OTHER: u8 = 255;

    /// The policy's name of a protocol number: `tcp`, `udp`, `icmp` (ICMPv6 too), else `other`.
    #[must_use]
    pub const fn name(number: u8) -> &'static str {
        match number {
            TCP => "tcp",
            UDP => "udp",
            ICMP | ICMPV6 => "icmp",
            _ => "other",
        }
    }
}

/// Indexes into the per-CPU [`COUNTERS`](maps::COUNTERS) array. Every connection verdict bumps
/// exactly one verdict counter (or [`REMEMBERED`](counter::REMEMBERED), [`ESTABLISHED`](counter::ESTABLISHED),
/// [`SELF_EXEMPT`](counter::SELF_EXEMPT) for packets not judged again); error paths bump their own
/// counter as well. Refusals that are not connections (packet sockets, source-routing options)
/// bump only their own counter.
pub mod counter {
    pub const ALLOWED: u32 = 0;
    pub const DENIED: u32 = 1;
    pub const AUDITED: u32 = 2;
    /// Allowed only because the destination port is a failsafe inbound port.
    pub const FAILSAFE: u32 = 3;
    /// No active slot or slot config: no policy loaded. Fails closed.
    pub const ERR_NO_POLICY: u32 = 4;
    /// Neither the process's cgroup nor any ancestor has an identity. Fails closed.
    pub const ERR_NO_CGROUP_IDENTITY: u32 = 5;
    /// The socket's address family is neither IPv4 nor IPv6. Fails closed.
    pub const ERR_BAD_FAMILY: u32 = 6;
    /// An event could not be reserved in the ring buffer: it was lost, the verdict still applied.
    pub const EVENTS_LOST: u32 = 7;
    /// An identity has no [`IdentityInfo`](crate::IdentityInfo) entry: the maps are inconsistent.
    /// Fails closed.
    pub const ERR_NO_IDENTITY_INFO: u32 = 8;
    /// A bound socket could not be recorded in the listener map (full); connections to it are
    /// judged by the packet layer. Not a verdict.
    pub const ERR_LISTENER_UPDATE: u32 = 9;
    /// A cgroup not labelled yet whose labelled ancestor may have a broader identity than its
    /// own: held, fail closed, until the daemon labels it.
    pub const HELD_UNLABELLED: u32 = 10;
    /// A local destination whose receiving socket could not be resolved to its owner (another
    /// network namespace, an unknown namespace). Fails closed.
    pub const ERR_UNRESOLVED_LOCAL: u32 = 11;
    /// The daemon's own cgroup: never judged, so it can neither deny nor report itself.
    pub const SELF_EXEMPT: u32 = 12;
    /// Packets passed or dropped by the verdict remembered on their socket, without judging.
    pub const REMEMBERED: u32 = 13;
    /// TCP segments of an established (or accepted) stream passed: the flow was judged at its SYN.
    pub const ESTABLISHED: u32 = 14;
    /// A packet that could not be parsed (truncated header, fragment without a judged flow).
    /// Fails closed.
    pub const ERR_PACKET: u32 = 15;
    /// An IPv6 routing header or IPv4 source route refused (setsockopt) or dropped (packet).
    pub const SOURCE_ROUTE_REFUSED: u32 = 16;
    /// A packet socket (`AF_PACKET`, `SOCK_PACKET`) refused to a segment member.
    pub const PACKET_SOCKET_REFUSED: u32 = 17;
    /// The socket owner or verdict memory could not be written. Not a verdict.
    pub const ERR_SOCKET_UPDATE: u32 = 18;
    /// A connection to a local listener whose owner the fast path does not know: left to the
    /// packet layer, which asks the kernel for the socket's cgroup. Not a verdict.
    pub const DEFERRED_LOCAL: u32 = 19;
    /// The cgroup ancestor walk hit its bound before finding a labelled ancestor. Fails closed.
    pub const ERR_CGROUP_TOO_DEEP: u32 = 20;
    /// Packets of a flow found in the flow table (a reply, an accepted socket's first packets,
    /// another peer of a datagram socket): passed without judging, never judged as a new
    /// connection.
    pub const TRACKED: u32 = 21;
    /// Packets of an established flow that the policy now in force denies (judged again because
    /// the generation that allowed it was replaced). Counted besides the verdict counter.
    pub const REVOKED: u32 = 22;
    /// An inbound flow from a local sender that the sender's own egress already judged with both
    /// real identities under the policy in force: its verdict is followed, not taken again.
    pub const JUDGED_AT_ORIGIN: u32 = 23;
    /// A flow from a socket of the subtree in another network namespace of this node (a
    /// container) to one of the node's addresses: passed at its sender with the sender's identity
    /// recorded in the flow table, and judged where it arrives, with both real identities, by
    /// the socket layer of the receiving workload or the interface layer of the node.
    pub const HANDED_OFF: u32 = 24;
    /// A denied or audited attempt counted as a repeat in the aggregation map instead of written
    /// to the ring buffer (see [`report`](crate::report)). Not a verdict.
    pub const AGGREGATED: u32 = 25;
    /// The aggregation map was full: the attempt went to the ring buffer on its own. Not a
    /// verdict.
    pub const AGGREGATION_FULL: u32 = 26;
    /// The part of [`ALLOWED`], [`DENIED`] and [`AUDITED`] decided on arrival (`cgroup_skb`
    /// ingress, the interface layer); the rest was decided leaving (the socket hooks, `cgroup_skb`
    /// egress, the LSM). Not verdicts of their own.
    pub const INGRESS_ALLOWED: u32 = 27;
    pub const INGRESS_DENIED: u32 = 28;
    pub const INGRESS_AUDITED: u32 = 29;
    pub const COUNT: u32 = 30;

    /// Human-readable names, indexed like the counters.
    pub const NAMES: [&str; COUNT as usize] = [
        "allowed",
        "denied",
        "audited",
        "failsafe",
        "err_no_policy",
        "err_no_cgroup_identity",
        "err_bad_family",
        "events_lost",
        "err_no_identity_info",
        "err_listener_update",
        "held_unlabelled",
        "err_unresolved_local",
        "self_exempt",
        "remembered",
        "established",
        "err_packet",
        "source_route_refused",
        "packet_socket_refused",
        "err_socket_update",
        "deferred_local",
        "err_cgroup_too_deep",
        "tracked",
        "revoked",
        "judged_at_origin",
        "handed_off",
        "aggregated",
        "aggregation_full",
        "ingress_allowed",
        "ingress_denied",
        "ingress_audited",
    ];
}

/// Key of [`CGROUP_IDENTITY`](maps::CGROUP_IDENTITY).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupKey {
    /// The cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    pub slot: u32,
    pub _pad: u32,
}

/// Value of [`CGROUP_IDENTITY`](maps::CGROUP_IDENTITY).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupLabel {
    pub identity: u32,
    /// [`CGROUP_HOLD`].
    pub flags: u32,
}

/// A cgroup created below this one (and not labelled yet) may belong to another identity than
/// this one's: a deeper workload glob could match it. The kernel then holds it fail-closed
/// instead of letting it inherit this identity.
pub const CGROUP_HOLD: u32 = 1;

/// Key of [`ADDR_EXACT`](maps::ADDR_EXACT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrKey {
    pub slot: u32,
    /// Network byte order; IPv4 is IPv4-mapped.
    pub addr: [u8; 16],
}

/// Data of an [`ADDR_CIDR`](maps::ADDR_CIDR) LPM key. The prefix length covers the 32 bits of
/// `slot` and then the address bits (IPv4 prefixes are offset by the 96 bits of the mapping).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrLpmData {
    pub slot: u32,
    pub addr: [u8; 16],
}

/// Prefix bits of [`AddrLpmData`] that precede the address.
pub const ADDR_LPM_SLOT_BITS: u32 = 32;

/// Value of both address maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrValue {
    pub identity: u32,
    /// [`ADDR_LOCAL`] when the address belongs to this node (its own addresses, loopback).
    pub flags: u32,
}

/// The address belongs to this node: the peer is a local process, not a remote host.
pub const ADDR_LOCAL: u32 = 1;

/// Key of [`LISTENERS`](maps::LISTENERS): exactly what a socket is bound to, so that binding
/// `[::1]:P` never takes over the identity of a `0.0.0.0:P` listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    /// `bpf_get_netns_cookie` of the socket's network namespace: ports are per namespace.
    pub netns_cookie: u64,
    /// The bound address, network byte order, IPv4-mapped for `AF_INET` sockets; all zero (or
    /// `::ffff:0.0.0.0`) for a wildcard bind.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// [`protocol::TCP`] or [`protocol::UDP`].
    pub protocol: u8,
    /// 4 for `AF_INET`, 6 for `AF_INET6` sockets (a dual-stack `[::]:P` listener is 6).
    pub family: u8,
    pub _pad: u32,
}

/// Value of [`LISTENERS`](maps::LISTENERS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerValue {
    /// The cgroup of the process that bound the socket; resolved to an identity per slot.
    pub cgroup_id: u64,
    /// `bpf_get_socket_cookie` of the bound socket, so a release only removes its own entry
    /// (0 for entries seeded by the daemon).
    pub socket_cookie: u64,
}

/// Value of [`SOCKET_OWNERS`](maps::SOCKET_OWNERS): recorded in process context when the socket
/// is created, because the packet layer runs where the current task may be anyone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketOwner {
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; 16],
}

/// Value of [`SOCKET_VERDICTS`](maps::SOCKET_VERDICTS): the last flow judged on a socket, in
/// either direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketVerdict {
    /// The remote end of the flow, network byte order, IPv4-mapped.
    pub peer_addr: [u8; 16],
    /// The generation of the policy that judged it: a new policy judges again.
    pub generation: u32,
    /// The flow's destination port, host byte order: the peer's for [`FLOW_OUTBOUND`], the
    /// socket's own for [`FLOW_INBOUND`] (0 for ICMP and protocols without ports).
    pub port: u16,
    /// Folded protocol (see [`decide::fold_protocol`]).
    pub protocol: u8,
    /// [`VERDICT_ALLOW`], [`VERDICT_DENY`] or [`VERDICT_AUDIT`].
    pub verdict: u8,
    /// [`FLOW_OUTBOUND`] (the socket opened the flow) or [`FLOW_INBOUND`] (the peer did).
    pub direction: u8,
    /// 1 once the packet layer put the flow in [`FLOWS`](maps::FLOWS), so that its next packets
    /// do not look there again. Not part of what the memory says of the flow.
    pub tracked: u8,
    pub _pad: [u8; 2],
    /// The identity of the remote end when the flow was judged, so that a flow judged again
    /// after a policy change keeps its origin's identity.
    pub peer_identity: u32,
    /// The identity of the socket's own end when the flow was judged: what the flow table
    /// records for a receiver in another network namespace of this node.
    pub local_identity: u32,
}

impl SocketVerdict {
    /// Whether both say the same of the same flow, whether or not the flow table has it yet.
    #[inline(always)]
    #[must_use]
    pub fn same_judgement(&self, other: &Self) -> bool {
        self.peer_addr == other.peer_addr
            && self.generation == other.generation
            && self.port == other.port
            && self.protocol == other.protocol
            && self.verdict == other.verdict
            && self.direction == other.direction
            && self.peer_identity == other.peer_identity
            && self.local_identity == other.local_identity
    }
}

/// The flow was opened by this end (egress).
pub const FLOW_OUTBOUND: u8 = 1;
/// The flow was opened by the remote end (ingress).
pub const FLOW_INBOUND: u8 = 2;

pub mod flow;
pub use flow::{ArrivedKey, FlowKey, FlowState};

/// Key of [`LOCAL_ADDRS`](maps::LOCAL_ADDRS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalAddrKey {
    pub netns_cookie: u64,
    /// Network byte order, IPv4-mapped.
    pub addr: [u8; 16],
}

/// Value of [`RUNTIME`](maps::RUNTIME).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Runtime {
    /// The network namespace whose addresses are this node's (`--netns`).
    pub node_netns_cookie: u64,
    /// The daemon's own cgroup: exempt from judging, so that it never denies or reports itself.
    pub daemon_cgroup_id: u64,
    /// The managed cgroup root, and its absolute level in the cgroup hierarchy: a socket whose
    /// ancestor at that level is the root was made inside the managed subtree.
    pub root_cgroup_id: u64,
    pub root_level: u32,
    /// [`RUNTIME_HAND_OFF`].
    pub flags: u32,
}

/// [`Runtime::flags`]: the interface layer covers every interface of the node (no `--interface`
/// restricts it), so a flow from another network namespace of this node to one of the node's
/// addresses is judged where it arrives, whoever receives it, and its sender may hand it off.
/// Without it such flows fail closed at their sender.
pub const RUNTIME_HAND_OFF: u32 = 1;

/// Key of [`IDENTITY_INFO`](maps::IDENTITY_INFO).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    pub slot: u32,
    pub identity: u32,
}

/// Value of [`IDENTITY_INFO`](maps::IDENTITY_INFO): what step 4 of the decision needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityInfo {
    /// [`IDENTITY_SEGMENTED`], [`IDENTITY_MODE_AUDIT`], [`IDENTITY_MODE_ENFORCE`].
    pub flags: u32,
    /// Index of the first segment (policy order) this identity is a member of; the default-deny
    /// rule id reported when it is isolated.
    pub segment: u32,
}

/// The identity is a member of at least one segment: default deny applies to it.
pub const IDENTITY_SEGMENTED: u32 = 1;
/// One of its segments says `mode = "audit"`.
pub const IDENTITY_MODE_AUDIT: u32 = 2;
/// One of its segments says `mode = "enforce"` (and none says audit).
pub const IDENTITY_MODE_ENFORCE: u32 = 4;
/// Every segment of this identity allows packet sockets (`packet_sockets = "allow"`): `AF_PACKET`
/// is not refused.
pub const IDENTITY_PACKET_SOCKETS: u32 = 8;

/// Data of a [`RULES`](maps::RULES) LPM key. Every field but `port_be` is always matched in full;
/// the prefix then covers the high bits of the port, which is why it is big-endian and last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleLpmData {
    pub slot: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// One of [`protocol`]'s constants (ICMPv6 folded into ICMP).
    pub protocol: u8,
    pub _pad: u8,
    /// Destination port, network byte order (0 for ICMP).
    pub port_be: u16,
}

/// Prefix bits of [`RuleLpmData`] that precede the port.
pub const RULE_LPM_FIXED_BITS: u32 = 112;

/// Prefix bits of a rule for one port: it lives in [`RULES_EXACT`](maps::RULES_EXACT).
pub const RULE_EXACT_BITS: u32 = RULE_LPM_FIXED_BITS + 16;

/// `BPF_F_NO_PREALLOC`: entries are allocated as they are written, so a map sized for the
/// largest policy costs memory only for the policy it holds.
pub const MAP_NO_PREALLOC: u32 = 1;

/// Value of [`RULES`](maps::RULES): a verdict already resolved in user space (deny over allow,
/// failsafe over both), so the kernel needs one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleValue {
    /// Index of the deciding rule in the compiled policy's rule table.
    pub rule_id: u32,
    /// [`VERDICT_ALLOW`] or [`VERDICT_DENY`].
    pub verdict: u8,
    /// [`RULE_AUDIT`], [`RULE_FAILSAFE`].
    pub flags: u8,
    pub _pad: u16,
}

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
/// Only on [`FlowEvent::verdict`]: denied by policy but let through because the mode is audit.
pub const VERDICT_AUDIT: u8 = 3;

/// The denial is in audit mode: let the connection through and report it.
pub const RULE_AUDIT: u8 = 1;
/// Allowed by the failsafe inbound ports, not by a rule.
pub const RULE_FAILSAFE: u8 = 2;

/// Value of [`SLOT_CONFIG`](maps::SLOT_CONFIG).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotConfig {
    /// Policy generation written into this slot; carried on events so user space attributes them
    /// to the policy that decided.
    pub generation: u32,
    /// [`CONFIG_AUDIT`] when `settings.mode = "audit"`.
    pub flags: u32,
    /// Identity of a local peer reached through a local address (this node's `node` table, or
    /// `@host`).
    pub local_identity: u32,
    pub _pad: u32,
}

pub const CONFIG_AUDIT: u32 = 1;

/// Which hook produced an event.
pub mod hook {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
    /// `cgroup_skb/egress`: the packet layer, for what the socket hooks did not see or judged
    /// for another destination.
    pub const SKB_EGRESS: u8 = 5;
    /// BPF LSM `socket_connect`, for sockets created outside the managed subtree.
    pub const LSM_CONNECT: u8 = 6;
    /// BPF LSM `socket_sendmsg`, for sockets created outside the managed subtree.
    pub const LSM_SENDMSG: u8 = 7;
    /// `cgroup_skb/ingress`: flows arriving at a socket of the managed subtree.
    pub const SKB_INGRESS: u8 = 8;
    /// tcx ingress on an interface of the node: arrivals that reach no socket of the subtree
    /// (closed ports, scans, processes outside the subtree, ICMP to the node).
    pub const TC_INGRESS: u8 = 9;
}

/// Why a connection was denied (or audited).
pub mod reason {
    /// A `deny` rule matched; `rule_id` names it.
    pub const RULE: u8 = 1;
    /// Default deny of a segment member; `rule_id` is the segment's index.
    pub const DEFAULT_DENY: u8 = 2;
    /// The kernel could not resolve the local identity and failed closed.
    pub const UNRESOLVED: u8 = 3;
    /// The process's cgroup is new and not labelled yet, and inheriting its parent's identity
    /// could be broader than its own: held until labelled.
    pub const UNLABELLED_CGROUP: u8 = 4;
    /// The packet carries an IPv6 routing header or an IPv4 source route.
    pub const SOURCE_ROUTE: u8 = 5;
    /// The destination is local but the socket that would receive it could not be resolved to
    /// its owner.
    pub const UNRESOLVED_LOCAL: u8 = 6;
}

/// Version of [`FlowEvent`]'s layout and meaning; bump on any change.
pub const FLOW_EVENT_VERSION: u16 = 3;

/// [`FlowEvent::flags`]: `pid`, `uid` and `comm` are those of the process that created the socket
/// (recorded when it was created), not of the task current at the decision.
pub const EVENT_PROCESS_FROM_SOCKET: u8 = 1;
/// [`FlowEvent::flags`]: the process is unknown (`pid`, `uid` and `comm` are zero).
pub const EVENT_NO_PROCESS: u8 = 2;
/// [`FlowEvent::flags`]: an established flow that a new policy denies; its packets are dropped
/// from now on and user space aborts its socket ([`FlowEvent::socket_cookie`]).
pub const EVENT_REVOKED: u8 = 4;

/// One denied or audited connection attempt, written to [`EVENTS`](maps::EVENTS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// [`FLOW_EVENT_VERSION`].
    pub version: u16,
    /// One of [`hook`]'s constants.
    pub hook: u8,
    /// [`VERDICT_DENY`] or [`VERDICT_AUDIT`].
    pub verdict: u8,
    /// One of [`reason`]'s constants.
    pub reason: u8,
    /// IANA protocol number as the socket has it (ICMPv6 is not folded here).
    pub protocol: u8,
    /// 4 or 6: the IP version on the wire (IPv4-mapped destinations are 4).
    pub ip_version: u8,
    /// [`EVENT_PROCESS_FROM_SOCKET`], [`EVENT_NO_PROCESS`].
    pub flags: u8,
    pub generation: u32,
    pub rule_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Thread group id of the process that opened the connection.
    pub pid: u32,
    pub uid: u32,
    /// Host byte order; 0 when the kernel had not bound a source port yet.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    pub _pad1: u32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub boot_ns: u64,
    /// Network byte order; IPv4-mapped; all zero when the socket had no source address yet.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// `bpf_get_socket_cookie` of the local socket; 0 when there is none.
    pub socket_cookie: u64,
    /// `bpf_get_netns_cookie` of the local socket's network namespace; 0 when unknown.
    pub netns_cookie: u64,
}

pub mod decide;
pub mod report;
pub use report::{ReportKey, ReportRepeats};

const _: () = {
    assert!(size_of::<CgroupKey>() == 16);
    assert!(size_of::<AddrKey>() == 20);
    assert!(size_of::<AddrLpmData>() == 20);
    assert!(size_of::<AddrValue>() == 8);
    assert!(size_of::<IdentityKey>() == 8);
    assert!(size_of::<CgroupLabel>() == 8);
    assert!(size_of::<ListenerKey>() == 32);
    assert!(offset_of!(ListenerKey, port) == 24);
    assert!(size_of::<SocketOwner>() == 40);
    assert!(size_of::<SocketVerdict>() == 36);
    assert!(size_of::<LocalAddrKey>() == 24);
    assert!(size_of::<Runtime>() == 32);
    assert!(size_of::<ListenerValue>() == 16);
    assert!(size_of::<IdentityInfo>() == 8);
    assert!(size_of::<RuleLpmData>() == 16);
    assert!(offset_of!(RuleLpmData, port_be) * 8 == RULE_LPM_FIXED_BITS as usize);
    assert!(offset_of!(AddrLpmData, addr) * 8 == ADDR_LPM_SLOT_BITS as usize);
    assert!(size_of::<RuleValue>() == 8);
    assert!(size_of::<SlotConfig>() == 16);
    assert!(offset_of!(FlowEvent, generation) == 8);
    assert!(offset_of!(FlowEvent, cgroup_id) == 40);
    assert!(offset_of!(FlowEvent, src_addr) == 56);
    assert!(size_of::<FlowEvent>() == 120);
};

/// Maps an IPv4 address (network-order octets) to the 16-byte form every map uses.
#[must_use]
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Whether a 16-byte address is IPv4-mapped.
#[must_use]
#[inline(always)]
pub fn is_ipv4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// Whether an address always means "this host, in the caller's own network namespace": IPv4
/// loopback (127/8), `::1`, and the unspecified addresses (connecting to `0.0.0.0` or `::`
/// reaches a local socket).
#[must_use]
#[inline(always)]
pub fn is_loopback_or_unspecified(addr: &[u8; 16]) -> bool {
    if is_ipv4_mapped(addr) {
        return addr[12] == 127 || (addr[12] | addr[13] | addr[14] | addr[15]) == 0;
    }
    addr[..15].iter().all(|b| *b == 0) && addr[15] <= 1
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        AddrKey, AddrLpmData, AddrValue, CgroupKey, CgroupLabel, FlowEvent, IdentityInfo,
        IdentityKey, ListenerKey, ListenerValue, LocalAddrKey, RuleLpmData, RuleValue, Runtime,
        SlotConfig, SocketOwner, SocketVerdict,
    };

    // SAFETY: every type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and has its
    // padding spelled out as fields (checked by the size asserts above), so any bit pattern is valid.
    unsafe impl aya::Pod for CgroupKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrLpmData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IdentityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IdentityInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RuleLpmData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RuleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SlotConfig {}

    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CgroupLabel {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketVerdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LocalAddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Runtime {}
}
