//! `cgroup_skb`: the packet layer, both ways. Every packet a socket of the managed subtree sends
//! (`egress`, after netfilter's `OUTPUT`, so after DNAT) or receives (`ingress`, after routing
//! picked the socket) passes here, whatever made it: UDP-Lite, raw, ping, a datagram sent without
//! an address, a peer that runs no enforcer.
//!
//! A packet is seen from its socket: a local and a remote end. A flow the socket remembers (same
//! peer, protocol and port, same policy generation) costs one lookup; one the flow table knows (a
//! reply, an accepted socket's first packets) two; anything else is judged, in the direction that
//! opened it, with the socket's cgroup as the local identity. A remembered flow whose generation
//! was replaced is judged again: what the new policy denies is dropped and reported as revoked.

mod judge;
mod track;

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::{bpf_get_socket_cookie, bpf_sk_fullsock},
    programs::SkBuffContext,
};
use enforcer_common::{
    FLOW_INBOUND, FLOW_OUTBOUND, VERDICT_DENY, counter, decide::fold_protocol, ipv4_mapped,
    protocol,
};

use crate::{
    cgroup::{CgroupSource as _, SkbCgroup},
    ctx::{field, sock},
    local::Ends,
    maps::{count, runtime},
    view::MapView,
};

/// Return values of `cgroup_skb` programs.
const PASS: i32 = 1;
const DROP: i32 = 0;

/// `__sk_buff.protocol` holds the ethertype in network byte order.
const ETH_P_IP: u32 = 0x0800_u16.to_be() as u32;
const ETH_P_IPV6: u32 = 0x86dd_u16.to_be() as u32;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_DCCP: u8 = 33;
const SOCK_STREAM: u32 = 1;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked before giving up (fail closed).
const MAX_EXTENSION_HEADERS: u32 = 4;

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
fn parse_ipv4<const INGRESS: bool>(ctx: &SkBuffContext, ends: &mut Ends) -> Option<()> {
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
    addresses::<INGRESS>(ends, ipv4_mapped(src), ipv4_mapped(dst));
    ends.protocol = protocol;
    ends.source_routed = source_routed;
    ends.later_fragment = later_fragment;
    if !later_fragment {
        transport::<INGRESS>(ctx, header_len, ends)?;
    }
    Some(())
}

#[inline(always)]
fn parse_ipv6<const INGRESS: bool>(ctx: &SkBuffContext, ends: &mut Ends) -> Option<()> {
    let mut next: u8 = load(ctx, 6)?;
    addresses::<INGRESS>(ends, load::<[u8; 16]>(ctx, 8)?, load::<[u8; 16]>(ctx, 24)?);
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
    ends.protocol = next;
    ends.source_routed = source_routed;
    ends.later_fragment = later_fragment;
    if !later_fragment {
        transport::<INGRESS>(ctx, offset, ends)?;
    }
    Some(())
}

/// Parses the network and transport headers into `ends`, seen from the socket; `false` when
/// they are not parseable. Its own BPF function, so its stack frame is not added to the judging
/// one.
#[inline(never)]
fn parse<const INGRESS: bool>(ctx: &SkBuffContext, ends: &mut Ends) -> bool {
    let parsed = match ctx.skb.protocol() {
        ETH_P_IP => parse_ipv4::<INGRESS>(ctx, ends),
        ETH_P_IPV6 => parse_ipv6::<INGRESS>(ctx, ends),
        _ => None,
    };
    ends.folded = fold_protocol(ends.protocol);
    parsed.is_some()
}

/// Stores the packet's source and destination as the socket's local and remote end.
#[inline(always)]
fn addresses<const INGRESS: bool>(ends: &mut Ends, src: [u8; 16], dst: [u8; 16]) {
    if INGRESS {
        ends.remote_addr = src;
        ends.local_addr = dst;
    } else {
        ends.local_addr = src;
        ends.remote_addr = dst;
    }
}

#[inline(always)]
fn transport<const INGRESS: bool>(
    ctx: &SkBuffContext,
    offset: usize,
    ends: &mut Ends,
) -> Option<()> {
    if has_ports(ends.protocol) {
        let src: u16 = u16::from_be(load(ctx, offset)?);
        let dst: u16 = u16::from_be(load(ctx, offset + 2)?);
        if INGRESS {
            ends.remote_port = src;
            ends.local_port = dst;
        } else {
            ends.local_port = src;
            ends.remote_port = dst;
        }
        if ends.protocol == protocol::TCP {
            ends.tcp_flags = load(ctx, offset + 13)?;
        }
    }
    Some(())
}

/// A TCP segment that opens a connection: SYN without ACK.
#[inline(always)]
const fn opens_tcp(ends: &Ends) -> bool {
    ends.protocol == protocol::TCP && ends.tcp_flags & TCP_SYN != 0 && ends.tcp_flags & TCP_ACK == 0
}

/// Judges one packet a socket of the subtree sends (`INGRESS` false) or receives.
#[inline(always)]
pub(crate) fn judge_packet<const INGRESS: bool>(ctx: &SkBuffContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `sk` is a field of the context; cgroup_skb programs run with the packet's socket
    // set, and the pointer is checked anyway.
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
    let daemon = runtime().daemon_cgroup_id;
    if daemon != 0 && SkbCgroup(skb).id() == daemon {
        count(counter::SELF_EXEMPT);
        return PASS;
    }
    let mut ends = Ends::default();
    if !parse::<INGRESS>(ctx, &mut ends) {
        count(counter::ERR_PACKET);
        return DROP;
    }
    // SAFETY: `sk` is a non-null full socket and `state` one of its fields.
    let listener = unsafe { field::<_, { sock::STATE }>(sk) } == sock::TCP_LISTEN;
    if !INGRESS && listener {
        // SYN-ACKs and resets answer SYNs the ingress side judged.
        count(counter::ESTABLISHED);
        return PASS;
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: `sk` is a non-null full socket and `type_` one of its fields.
    let stream = unsafe { field::<_, { sock::TYPE }>(sk) } == SOCK_STREAM;
    let socket = Socket {
        cookie,
        listener,
        stream,
    };
    match classify::<INGRESS>(ctx, &ends, &socket) {
        Next::Pass => PASS,
        Next::Drop => DROP,
        // One call site: the verifier checks a static BPF function once per call.
        Next::Judge(how) => judge::judge(ctx, &ends, cookie, how, listener),
    }
}

/// What the hook knows of the packet's socket.
struct Socket {
    cookie: u64,
    /// A listening TCP socket: its packets are other peers' each.
    listener: bool,
    stream: bool,
}

/// What to do with a packet.
enum Next {
    Pass,
    Drop,
    /// Judge its flow, opened the way this `how` says (see `judge::judge`).
    Judge(u8),
}

/// Finds what the socket and the flow table remember of the packet's flow. Its own BPF
/// function, a sibling of the judging one.
#[inline(never)]
fn classify<const INGRESS: bool>(ctx: &SkBuffContext, ends: &Ends, socket: &Socket) -> Next {
    let opening = if INGRESS { FLOW_INBOUND } else { FLOW_OUTBOUND };
    let Some(view) = MapView::active() else {
        return Next::Judge(opening);
    };
    let generation = view.config.generation;
    match track::recall(socket.cookie, ends, generation) {
        track::Recall::Current(memory) => {
            if memory.verdict == VERDICT_DENY {
                count(counter::REMEMBERED);
                return Next::Drop;
            }
            if ends.protocol == protocol::TCP && !opens_tcp(ends) {
                count(counter::ESTABLISHED);
                return Next::Pass;
            }
            count(counter::REMEMBERED);
            if !INGRESS && memory.direction == FLOW_OUTBOUND {
                // The first packet of a flow the socket hooks judged: now its ends are known.
                track::track_remembered(ends, &memory);
            }
            return Next::Pass;
        }
        track::Recall::Stale(direction, allowed) => {
            let again = if allowed { judge::AGAIN } else { 0 };
            return Next::Judge(direction | again);
        }
        track::Recall::Unknown => {}
    }
    if ends.later_fragment {
        count(counter::ERR_PACKET);
        return Next::Drop;
    }
    if opens_tcp(ends) {
        return Next::Judge(opening);
    }
    match track::tracked(ends, generation) {
        track::Tracked::Current(memory) => {
            count(counter::TRACKED);
            if !socket.listener {
                crate::report::remember(socket.cookie, &memory);
            }
            return Next::Pass;
        }
        // Only flows let through are tracked.
        track::Tracked::Stale(direction) => return Next::Judge(direction | judge::AGAIN),
        track::Tracked::Unknown => {}
    }
    // A TCP segment of a stream socket's flow that nothing remembers (evicted, or older than
    // the programs): it was accepted here if a socket listens on its local port, else opened from
    // here. Only for stream sockets: a raw socket chooses its ports and would pick a listener's.
    Next::Judge(if ends.protocol != protocol::TCP || !socket.stream {
        opening
    } else if crate::local::listening(ctx.as_ptr(), &ends.local_addr, ends.local_port) {
        FLOW_INBOUND
    } else {
        FLOW_OUTBOUND
    })
}
