//! `cgroup_skb/egress`: the packet layer. Every packet a socket of the managed subtree sends
//! passes here after netfilter's `OUTPUT` (so after DNAT), whatever made it: UDP-Lite, raw, ping,
//! a datagram sent without an address. A packet of a flow already judged on its socket (same
//! destination, protocol, port and policy generation) costs one lookup; anything else is judged
//! by its headers, with the socket's cgroup as the local identity and its creator as the actor.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, bpf_sock},
    helpers::{bpf_get_socket_cookie, bpf_get_socket_uid, bpf_sk_fullsock},
    programs::SkBuffContext,
};
use enforcer_common::{
    EVENT_NO_PROCESS, EVENT_PROCESS_FROM_SOCKET, IDENTITY_SEGMENTED, VERDICT_DENY, counter,
    decide::{Decision, PolicyView as _, decide, fold_protocol},
    hook, ipv4_mapped, is_ipv4_mapped, protocol, reason,
};

use crate::{
    cgroup::{CgroupSource as _, SkbCgroup, source_identity},
    ctx::{field, ipv6_bytes, sock},
    local::{LocalQuery, Owner, Place, owner_from_kernel, place},
    maps::{SOCKET_OWNERS, SOCKET_VERDICTS, count, runtime},
    report::{Actor, Flow, conclude, port_of, remember},
    view::MapView,
};

/// Return values of `cgroup_skb` programs.
const PASS: i32 = 1;
const DROP: i32 = 0;

/// `__sk_buff.protocol` holds the ethertype in network byte order.
const ETH_P_IP: u32 = 0x0800_u16.to_be() as u32;
const ETH_P_IPV6: u32 = 0x86dd_u16.to_be() as u32;
const SOCK_STREAM: u32 = 1;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_DCCP: u8 = 33;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked before giving up (fail closed).
const MAX_EXTENSION_HEADERS: u32 = 4;

/// What the headers say.
#[derive(Default)]
struct Packet {
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    /// An IPv6 routing header or an IPv4 source route option.
    source_routed: bool,
    /// A fragment other than the first: no transport header to judge.
    later_fragment: bool,
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: usize) -> Option<T> {
    ctx.load::<T>(offset).ok()
}

/// Whether `protocol` carries 16-bit source and destination ports first in its header.
#[inline(always)]
const fn has_ports(protocol: u8) -> bool {
    matches!(
        protocol,
        protocol::TCP | protocol::UDP | IPPROTO_UDPLITE | IPPROTO_SCTP | IPPROTO_DCCP
    )
}

#[inline(always)]
fn parse_ipv4(ctx: &SkBuffContext, packet: &mut Packet) -> Option<()> {
    let version_ihl: u8 = load(ctx, 0)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    let fragment: u16 = u16::from_be(load(ctx, 6)?);
    let protocol: u8 = load(ctx, 9)?;
    let src: [u8; 4] = load(ctx, 12)?;
    let dst: [u8; 4] = load(ctx, 16)?;
    // Any IPv4 option counts as a possible source route (LSRR, SSRR): applications do not set
    // options otherwise, and walking them would cost every packet a loop.
    let source_routed = header_len > 20;
    let later_fragment = fragment & 0x1fff != 0;
    packet.src_addr = ipv4_mapped(src);
    packet.dst_addr = ipv4_mapped(dst);
    packet.protocol = protocol;
    packet.source_routed = source_routed;
    packet.later_fragment = later_fragment;
    if !later_fragment {
        transport(ctx, header_len, packet)?;
    }
    Some(())
}

#[inline(always)]
fn parse_ipv6(ctx: &SkBuffContext, packet: &mut Packet) -> Option<()> {
    let mut next: u8 = load(ctx, 6)?;
    packet.src_addr = load::<[u8; 16]>(ctx, 8)?;
    packet.dst_addr = load::<[u8; 16]>(ctx, 24)?;
    let mut offset = 40;
    let mut source_routed = false;
    let mut later_fragment = false;
    let mut step = 0;
    while step < MAX_EXTENSION_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING => {
                if next == IPPROTO_ROUTING {
                    source_routed = true;
                }
                let len: u8 = load(ctx, offset + 1)?;
                next = load(ctx, offset)?;
                offset += (usize::from(len) + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let fragment: u16 = u16::from_be(load(ctx, offset + 2)?);
                later_fragment = fragment & 0xfff8 != 0;
                next = load(ctx, offset)?;
                offset += 8;
            }
            IPPROTO_AH => {
                let len: u8 = load(ctx, offset + 1)?;
                next = load(ctx, offset)?;
                offset += (usize::from(len) + 2) * 4;
            }
            _ => break,
        }
        step += 1;
    }
    if matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH
    ) {
        // Still inside extension headers: more than the walk reads. Fail closed.
        return None;
    }
    packet.protocol = next;
    packet.source_routed = source_routed;
    packet.later_fragment = later_fragment;
    if !later_fragment {
        transport(ctx, offset, packet)?;
    }
    Some(())
}

/// Whether a stream socket's packet is a TCP segment of its established flow: anything but a
/// bare SYN, sent to the peer the socket is connected to, or a listening socket's answer to an
/// arriving SYN (inbound, for the inbound layer to judge). A segment to any other address or port
/// has been rewritten after the socket was judged (DNAT of a connection that never sent a SYN
/// here: `TCP_REPAIR`, or one picked up mid-stream) and takes the full path. Read with as few
/// loads as possible: this is the cost of every established packet. Anything unusual (IPv6
/// extension headers, another protocol) takes the full path too. Its own BPF function, so its
/// stack frame is not added to the judging one.
#[inline(never)]
fn established_segment(ctx: &SkBuffContext, sk: *const bpf_sock) -> bool {
    let Some(first) = load::<u8>(ctx, 0) else {
        return false;
    };
    let (transport, v6) = match first >> 4 {
        4 if load::<u8>(ctx, 9) == Some(protocol::TCP) => (usize::from(first & 0x0f) * 4, false),
        6 if load::<u8>(ctx, 6) == Some(protocol::TCP) => (40, true),
        _ => return false,
    };
    let Some(flags) = load::<u8>(ctx, transport + 13) else {
        return false;
    };
    if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        return false;
    }
    let Some(port) = load::<u16>(ctx, transport + 2) else {
        return false;
    };
    let dst = if v6 {
        load::<[u8; 16]>(ctx, 24)
    } else {
        load::<[u8; 4]>(ctx, 16).map(ipv4_mapped)
    };
    dst.is_some_and(|dst| to_peer(sk, &dst, u16::from_be(port)))
}

/// Whether `dst:port` (host byte order) is the peer the socket is connected to, or the socket
/// listens (its SYN-ACKs go to whoever sent a SYN).
#[inline(always)]
fn to_peer(sk: *const bpf_sock, dst: &[u8; 16], port: u16) -> bool {
    // SAFETY: as below.
    if unsafe { field::<_, { sock::STATE }>(sk) } == sock::TCP_LISTEN {
        return true;
    }
    // SAFETY (every `field` call): `sk` is the packet's full socket and every offset a field of
    // `bpf_sock`; `dst_port` is a network-order port in the low 16 bits of its word.
    if u16::from_be(unsafe { field::<_, { sock::DST_PORT }>(sk) } as u16) != port {
        return false;
    }
    if is_ipv4_mapped(dst) {
        unsafe { field::<_, { sock::DST_IP4 }>(sk) }.to_ne_bytes()
            == [dst[12], dst[13], dst[14], dst[15]]
    } else {
        ipv6_bytes(unsafe {
            [
                field::<_, { sock::DST_IP6 }>(sk),
                field::<_, { sock::DST_IP6_1 }>(sk),
                field::<_, { sock::DST_IP6_2 }>(sk),
                field::<_, { sock::DST_IP6_3 }>(sk),
            ]
        }) == *dst
    }
}

/// Parses the network and transport headers into `packet`; `false` when they are not
/// parseable. Its own BPF function, so its stack frame is not added to the judging one.
#[inline(never)]
fn parse(ctx: &SkBuffContext, packet: &mut Packet) -> bool {
    let parsed = match ctx.skb.protocol() {
        ETH_P_IP => parse_ipv4(ctx, packet),
        ETH_P_IPV6 => parse_ipv6(ctx, packet),
        _ => None,
    };
    parsed.is_some()
}

#[inline(always)]
fn transport(ctx: &SkBuffContext, offset: usize, packet: &mut Packet) -> Option<()> {
    if has_ports(packet.protocol) {
        packet.src_port = u16::from_be(load(ctx, offset)?);
        packet.dst_port = u16::from_be(load(ctx, offset + 2)?);
        if packet.protocol == protocol::TCP {
            packet.tcp_flags = load(ctx, offset + 13)?;
        }
    }
    Some(())
}

/// Judges one outgoing packet.
#[inline(always)]
pub(crate) fn egress(ctx: &SkBuffContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `sk` is a field of the context; cgroup_skb egress only runs for full sockets, and
    // the pointer is checked anyway.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        count(counter::ERR_PACKET);
        return DROP;
    }
    // SAFETY: `sk` is a non-null socket pointer of the context.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        count(counter::ERR_PACKET);
        return DROP;
    }
    // SAFETY: `sk` is a non-null full socket and `type_` one of its fields.
    let stream = unsafe { field::<_, { sock::TYPE }>(sk) } == SOCK_STREAM;
    // A stream's flow is judged at its SYN; what follows to the same peer (and an accepted
    // socket's replies) is the established flow.
    if stream && established_segment(ctx, sk) {
        count(counter::ESTABLISHED);
        return PASS;
    }
    let cgroup_id = SkbCgroup(skb).id();
    let daemon = runtime().daemon_cgroup_id;
    if daemon != 0 && cgroup_id == daemon {
        count(counter::SELF_EXEMPT);
        return PASS;
    }
    let mut packet = Packet::default();
    if !parse(ctx, &mut packet) {
        count(counter::ERR_PACKET);
        return DROP;
    }
    if stream
        && packet.protocol == protocol::TCP
        && (packet.tcp_flags & TCP_SYN == 0 || packet.tcp_flags & TCP_ACK != 0)
        && to_peer(sk, &packet.dst_addr, packet.dst_port)
    {
        // Behind IPv6 extension headers: still an established segment.
        count(counter::ESTABLISHED);
        return PASS;
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(view) = MapView::active() {
        // SAFETY: hash map values are read-only copies for us.
        if let Some(memory) = unsafe { SOCKET_VERDICTS.get(cookie) }
            && memory.generation == view.config.generation
            && memory.protocol == fold_protocol(packet.protocol)
            && memory.dst_port == port_of(packet.protocol, packet.dst_port)
            && memory.dst_addr == packet.dst_addr
        {
            count(counter::REMEMBERED);
            return if memory.verdict == VERDICT_DENY {
                DROP
            } else {
                PASS
            };
        }
        if packet.later_fragment {
            count(counter::ERR_PACKET);
            return DROP;
        }
    }
    judge(ctx, &packet, cookie)
}

/// Judges a packet no memory covers: a new flow, or another destination. Its own BPF function,
/// so its stack frame is not added to the parsing one.
#[inline(never)]
fn judge(ctx: &SkBuffContext, packet: &Packet, cookie: u64) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: hash map values are read-only copies for us.
    let netns = unsafe { SOCKET_OWNERS.get(cookie) }.map_or(0, |owner| owner.netns_cookie);
    let mut flow = Flow {
        hook: hook::SKB_EGRESS,
        protocol: packet.protocol,
        src_addr: packet.src_addr,
        dst_addr: packet.dst_addr,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        generation: 0,
    };
    let Some(view) = MapView::active() else {
        let decision = Decision::fail_closed(0, reason::UNRESOLVED, counter::COUNT);
        return finish(ctx, cookie, &flow, &decision, false);
    };
    flow.generation = view.config.generation;
    let src = match source_identity(&SkbCgroup(skb), view.slot) {
        Ok(identity) => identity,
        Err(why) => {
            let decision = Decision::fail_closed(0, why, counter::COUNT);
            return finish(ctx, cookie, &flow, &decision, false);
        }
    };
    let runtime = runtime();
    let dst = match place(&view, &runtime, netns, &packet.dst_addr) {
        Place::Remote(identity) => identity,
        Place::Local => match owner_from_kernel(
            ctx.as_ptr(),
            &LocalQuery {
                slot: view.slot,
                local_identity: view.config.local_identity,
                netns,
                dst_addr: packet.dst_addr,
                dst_port: packet.dst_port,
                protocol: fold_protocol(packet.protocol),
            },
            &runtime,
        ) {
            Owner::Identity(identity) => identity,
            Owner::Defer | Owner::Unresolved => {
                count(counter::ERR_UNRESOLVED_LOCAL);
                let decision = Decision::fail_closed(src, reason::UNRESOLVED_LOCAL, counter::COUNT);
                return finish(ctx, cookie, &flow, &decision, true);
            }
        },
        Place::ElsewhereOnNode => {
            let decision = Decision::fail_closed(src, reason::UNRESOLVED_LOCAL, counter::COUNT);
            return finish(ctx, cookie, &flow, &decision, false);
        }
    };
    if packet.source_routed
        && view
            .identity_info(src)
            .is_none_or(|info| info.flags & IDENTITY_SEGMENTED != 0)
    {
        count(counter::SOURCE_ROUTE_REFUSED);
        let decision = Decision {
            dst_identity: dst,
            ..Decision::fail_closed(src, reason::SOURCE_ROUTE, counter::COUNT)
        };
        return finish(ctx, cookie, &flow, &decision, false);
    }
    let decision = decide(
        &view,
        &view.config,
        src,
        dst,
        packet.protocol,
        packet.dst_port,
    );
    finish(ctx, cookie, &flow, &decision, true)
}

/// Counts, reports and (when the policy decided) remembers the verdict on the socket. Its own
/// BPF function, so its stack frame is not added to the judging one.
#[inline(never)]
fn finish(
    ctx: &SkBuffContext,
    cookie: u64,
    flow: &Flow,
    decision: &Decision,
    memorable: bool,
) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    let actor = || {
        let cgroup_id = SkbCgroup(skb).id();
        // SAFETY: hash map values are read-only copies for us.
        match unsafe { SOCKET_OWNERS.get(cookie) } {
            Some(owner) => Actor {
                pid: owner.pid,
                uid: owner.uid,
                cgroup_id,
                comm: owner.comm,
                flags: EVENT_PROCESS_FROM_SOCKET,
            },
            None => Actor {
                pid: 0,
                // SAFETY: a helper call on the program's own context.
                uid: unsafe { bpf_get_socket_uid(skb) },
                cgroup_id,
                comm: [0; 16],
                flags: EVENT_NO_PROCESS,
            },
        }
    };
    let proceed = conclude(flow, decision, actor);
    if memorable {
        remember(cookie, flow, decision.verdict);
    }
    if proceed { PASS } else { DROP }
}
