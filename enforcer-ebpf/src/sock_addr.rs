//! `cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6`: the fast path. Egress is judged when a
//! socket connects or sends a datagram to an explicit address, with the opening process as
//! context, and refused with `EPERM` before any packet leaves. What it allows is remembered on the
//! socket, so the packet layer (`skb`) passes the flow's packets with one lookup and judges again
//! only a packet whose real destination differs (DNAT, another `msg_name`).

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use enforcer_common::{
    RUNTIME_HAND_OFF, Runtime, VERDICT_ALLOW, counter,
    decide::{Decision, decide, fold_protocol},
    ipv4_mapped, protocol, reason,
};

use crate::{
    cgroup::{TaskCgroup, source_identity},
    ctx::{bound_address, field, ipv6_bytes, sock},
    local::{LocalQuery, Owner, Place, owner_from_bind, place},
    maps::{count, runtime},
    report::{Flow, VERDICT_DEFER, conclude, outbound_memory, remember},
    view::MapView,
};

/// Return values of `cgroup_sock_addr` programs: 0 makes the syscall fail with `EPERM`.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

const USER_IP4: usize = offset_of!(bpf_sock_addr, user_ip4);
const USER_IP6: usize = offset_of!(bpf_sock_addr, user_ip6);
const USER_IP6_1: usize = USER_IP6 + 4;
const USER_IP6_2: usize = USER_IP6 + 8;
const USER_IP6_3: usize = USER_IP6 + 12;
const USER_PORT: usize = offset_of!(bpf_sock_addr, user_port);
const PROTOCOL: usize = offset_of!(bpf_sock_addr, protocol);

/// Judges one hook invocation; `V6` selects the address fields, which the verifier only lets each
/// hook family read for its own family. Every path ends in `PROCEED` or `REFUSE` and bumps one
/// counter that says why.
#[inline(always)]
pub(crate) fn judge<const V6: bool>(ctx: &SockAddrContext, hook: u8) -> i32 {
    let runtime = runtime();
    // SAFETY: a plain helper call without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if runtime.daemon_cgroup_id != 0 && cgroup_id == runtime.daemon_cgroup_id {
        count(counter::SELF_EXEMPT);
        return PROCEED;
    }
    let mut flow = read_flow::<V6>(ctx, hook);
    // The query lives in this frame so that the owner lookup is a sibling of the resolving call,
    // not nested in it: kernels before 6.5 round every frame up to 32 bytes and refuse a chain
    // of frames over 512 bytes (6.1 counted 544 when it was nested).
    let mut query = LocalQuery {
        slot: 0,
        local_identity: 0,
        netns: 0,
        dst_addr: [0; 16],
        dst_port: 0,
        protocol: 0,
    };
    let mut decision = Decision::fail_closed(0, reason::UNRESOLVED, counter::COUNT);
    if resolve_flow(&mut flow, &runtime, &mut query, &mut decision) == LOCAL {
        let owner = owner_from_bind(ctx.as_ptr(), &query);
        decision = decide_local(&flow, decision.src_identity, &owner);
    }
    if decision.verdict != VERDICT_ALLOW
        && fold_protocol(flow.protocol) == protocol::UDP
        && flow.src_port != 0
        && crate::skb::track::has_arrived(&flow.dst_addr, flow.dst_port, flow.src_port)
    {
        // Perhaps a server's reply to a peer that wrote to it: the packet layer knows the source
        // address and finds the flow, or judges the datagram as opened here.
        count(counter::TRACKED);
        decision.verdict = VERDICT_DEFER;
    }
    verdict(&flow, &decision, cgroup_id)
}

/// What the hook was asked to do. Its own BPF function, so its stack frame is not added to the
/// deciding one.
#[inline(never)]
fn read_flow<const V6: bool>(ctx: &SockAddrContext, hook: u8) -> Flow {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY (all `field` calls here): `sa` is the program's context and every offset one of its
    // fields.
    let dst_addr = if V6 {
        ipv6_bytes(unsafe {
            [
                field::<_, USER_IP6>(sa),
                field::<_, USER_IP6_1>(sa),
                field::<_, USER_IP6_2>(sa),
                field::<_, USER_IP6_3>(sa),
            ]
        })
    } else {
        ipv4_mapped(unsafe { field::<_, USER_IP4>(sa) }.to_ne_bytes())
    };
    // `user_port` holds the port in network byte order in its low 16 bits.
    let dst_port = u16::from_be(unsafe { field::<_, USER_PORT>(sa) } as u16);
    let raw_protocol = unsafe { field::<_, PROTOCOL>(sa) } as u8;
    let (src_addr, src_port) = source(ctx);
    Flow {
        hook,
        protocol: raw_protocol,
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        generation: 0,
        // SAFETY: helper calls on the program's own context.
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
    }
}

/// [`resolve_flow`] decided.
const DECIDED: u32 = 0;
/// [`resolve_flow`] found a socket of this node: the query is filled in, the decision holds only
/// the source identity, and the hook looks up the owner next.
const LOCAL: u32 = 1;

/// Resolves both ends and decides into `decision`, unless the destination is a socket of this
/// node. Its own BPF function, so that its stack frame and the reporting one are siblings, not
/// added up.
///
/// It returns a scalar and writes its result through a pointer: returned as an aggregate, the
/// result left whatever LLVM last put in R0 there, once a pointer into this frame, which every
/// kernel refuses ("cannot return stack pointer to the caller").
#[inline(never)]
fn resolve_flow(
    flow: &mut Flow,
    runtime: &Runtime,
    query: &mut LocalQuery,
    decision: &mut Decision,
) -> u32 {
    let Some(view) = MapView::active() else {
        *decision = Decision::fail_closed(0, reason::UNRESOLVED, counter::COUNT);
        return DECIDED;
    };
    // The event and the verdict memory name the generation that decided.
    flow.generation = view.config.generation;
    let src = match source_identity(&TaskCgroup, view.slot) {
        Ok(identity) => identity,
        Err(why) => {
            *decision = Decision::fail_closed(0, why, counter::COUNT);
            return DECIDED;
        }
    };
    let netns = flow.netns_cookie;
    let dst = match place(&view, runtime, netns, &flow.dst_addr) {
        Place::Remote(identity) => identity,
        Place::Local => {
            *query = LocalQuery {
                slot: view.slot,
                local_identity: view.config.local_identity,
                netns,
                dst_addr: flow.dst_addr,
                dst_port: flow.dst_port,
                protocol: fold_protocol(flow.protocol),
            };
            decision.src_identity = src;
            return LOCAL;
        }
        // The packet layer hands it off to its receiver, which judges it where it arrives.
        Place::ElsewhereOnNode if runtime.flags & RUNTIME_HAND_OFF != 0 => {
            *decision = Decision {
                verdict: VERDICT_DEFER,
                ..Decision::fail_closed(src, reason::UNRESOLVED_LOCAL, counter::COUNT)
            };
            return DECIDED;
        }
        Place::ElsewhereOnNode => {
            *decision =
                Decision::fail_closed(src, reason::UNRESOLVED_LOCAL, counter::ERR_UNRESOLVED_LOCAL);
            return DECIDED;
        }
    };
    *decision = decide(&view, &view.config, src, dst, flow.protocol, flow.dst_port);
    DECIDED
}

/// Decides a flow to a socket of this node once its owner is known. Its own BPF function, a
/// sibling of the owner lookup.
#[inline(never)]
fn decide_local(flow: &Flow, src: u32, owner: &Owner) -> Decision {
    let Some(view) = MapView::active() else {
        return Decision::fail_closed(src, reason::UNRESOLVED, counter::COUNT);
    };
    match *owner {
        Owner::Identity(dst) => decide(&view, &view.config, src, dst, flow.protocol, flow.dst_port),
        // Nothing remembered: the packet layer judges the first packet with the kernel's record
        // of the receiving socket's cgroup.
        Owner::Defer => Decision {
            verdict: VERDICT_DEFER,
            ..Decision::fail_closed(src, reason::UNRESOLVED_LOCAL, counter::COUNT)
        },
        Owner::Unresolved => {
            Decision::fail_closed(src, reason::UNRESOLVED_LOCAL, counter::ERR_UNRESOLVED_LOCAL)
        }
    }
}

/// Counts and reports the decision, remembers what proceeds, and returns the hook's verdict.
/// Its own BPF function, so its stack frame is not added to the judging one.
#[inline(never)]
fn verdict(flow: &Flow, decision: &Decision, cgroup_id: u64) -> i32 {
    if decision.verdict == VERDICT_DEFER {
        return PROCEED;
    }
    if conclude(flow, decision, || crate::report::current_task(cgroup_id)) {
        remember(flow.socket_cookie, &outbound_memory(flow, decision));
        PROCEED
    } else {
        REFUSE
    }
}

/// The socket's own address and port, when the kernel has bound them already (zeros otherwise;
/// user space then asks the routing table).
#[inline(always)]
fn source(ctx: &SockAddrContext) -> ([u8; 16], u16) {
    // SAFETY: `sk` is a field of the context; it is always set for cgroup_sock_addr programs, and
    // checked anyway.
    let sk: *const bpf_sock = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return ([0; 16], 0);
    }
    // SAFETY: `sk` is a non-null `bpf_sock` of the context; the offsets are its fields.
    let addr = unsafe { bound_address(sk, field::<_, { sock::FAMILY }>(sk) == sock::AF_INET6) };
    (addr, unsafe { field::<_, { sock::SRC_PORT }>(sk) } as u16)
}
