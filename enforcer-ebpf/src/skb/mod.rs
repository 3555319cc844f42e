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
pub(crate) mod track;

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::{bpf_get_socket_cookie, bpf_sk_fullsock},
    programs::SkBuffContext,
};
use enforcer_common::{FLOW_INBOUND, FLOW_OUTBOUND, VERDICT_DENY, counter, protocol};

use crate::{
    cgroup::{CgroupSource as _, SkbCgroup},
    ctx::{field, sock},
    local::Ends,
    maps::{count, runtime},
    packet::{opens_tcp, parse},
    view::MapView,
};

/// Return values of `cgroup_skb` programs.
const PASS: i32 = 1;
const DROP: i32 = 0;

const SOCK_STREAM: u32 = 1;

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
    let mut ends = Ends::default();
    if !parse::<INGRESS>(&ctx.skb, ctx.skb.protocol(), 0, &mut ends) {
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
        Next::Judge(_) if is_daemon(skb) => {
            // Checked only where a flow would be judged: remembered flows never cost it. The
            // daemon's own flows are never remembered, so each of its packets gets here.
            count(counter::SELF_EXEMPT);
            PASS
        }
        // One call site: the verifier checks a static BPF function once per call.
        Next::Judge(how) => judge::judge(ctx, &ends, cookie, how, listener),
    }
}

/// Whether the packet's socket belongs to the daemon's own cgroup.
#[inline(always)]
fn is_daemon(skb: *mut __sk_buff) -> bool {
    let daemon = runtime().daemon_cgroup_id;
    daemon != 0 && SkbCgroup(skb).id() == daemon
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
            if !INGRESS && memory.direction == FLOW_OUTBOUND && memory.tracked == 0 {
                // The first packet of a flow the socket hooks judged: now its ends are known.
                track::track_remembered(socket.cookie, ends, &memory);
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
