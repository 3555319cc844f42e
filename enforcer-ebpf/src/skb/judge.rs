//! Judging a packet's flow in the direction that opened it: outbound with the socket's owner as
//! the source, inbound with it as the destination. Each step is its own BPF function, so that
//! their stack frames are siblings rather than added up.

use aya_ebpf::{
    EbpfContext as _, bindings::__sk_buff, helpers::bpf_get_socket_uid, programs::SkBuffContext,
};
use enforcer_common::{
    EVENT_NO_PROCESS, EVENT_PROCESS_FROM_SOCKET, EVENT_REVOKED, FLOW_INBOUND, FLOW_OUTBOUND,
    IDENTITY_SEGMENTED, RUNTIME_HAND_OFF, SocketVerdict, VERDICT_ALLOW, VERDICT_DENY, counter,
    decide::{Decision, PolicyView as _, decide, fold_protocol},
    hook, protocol, reason,
};

use super::{DROP, PASS, track};
use crate::{
    cgroup::{CgroupSource as _, SkbCgroup, source_identity},
    local::{Ends, LocalQuery, Owner, Place, Sender, owner_from_kernel, place, sender},
    maps::{SOCKET_OWNERS, count, runtime, runtime_ref},
    report::{Actor, Flow, VERDICT_DEFER, conclude, port_of, remember},
    view::MapView,
};

/// Set in `judge`'s `how` when the flow was let through by an older policy: denying it now is a
/// revocation.
pub(super) const AGAIN: u8 = 0x80;

/// A decision and whether the socket and the flow table may remember it (not when it only
/// failed for a reason that passes: an unlabelled cgroup, an unknown namespace).
struct Judged {
    decision: Decision,
    memorable: bool,
}

impl Judged {
    #[inline(always)]
    const fn failed(src: u32, dst: u32, why: u8, memorable: bool) -> Self {
        Self {
            decision: Decision {
                dst_identity: dst,
                ..Decision::fail_closed(src, why, counter::COUNT)
            },
            memorable,
        }
    }
}

/// The flow of `ends` as it was opened (`direction`), for the event and the flow table.
#[inline(always)]
fn flow_of(ends: &Ends, direction: u8, cookie: u64) -> Flow {
    // SAFETY: hash map values are read-only copies for us.
    let netns = unsafe { SOCKET_OWNERS.get(cookie) }.map_or(0, |owner| owner.netns_cookie);
    let inbound = direction == FLOW_INBOUND;
    let (src_addr, dst_addr, src_port, dst_port) = if inbound {
        (
            ends.remote_addr,
            ends.local_addr,
            ends.remote_port,
            ends.local_port,
        )
    } else {
        (
            ends.local_addr,
            ends.remote_addr,
            ends.local_port,
            ends.remote_port,
        )
    };
    Flow {
        hook: if inbound {
            hook::SKB_INGRESS
        } else {
            hook::SKB_EGRESS
        },
        protocol: ends.protocol,
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        generation: 0,
        socket_cookie: cookie,
        netns_cookie: netns,
    }
}

/// Judges the flow of `ends`, opened in the direction `how` names (`FLOW_OUTBOUND` or
/// `FLOW_INBOUND`, with [`AGAIN`] for a flow an older policy let through).
#[inline(never)]
pub(super) fn judge(ctx: &SkBuffContext, ends: &Ends, cookie: u64, how: u8, listener: bool) -> i32 {
    let direction = how & !AGAIN;
    let mut flow = flow_of(ends, direction, cookie);
    let mut judged = Judged::failed(0, 0, reason::UNRESOLVED, false);
    let mut verdict = VERDICT_DENY;
    if let Some(view) = MapView::active() {
        flow.generation = view.config.generation;
        // The deciding functions write `judged` and return its verdict rather than return it:
        // LLVM leaves a struct's address in the return register, which the verifier refuses to
        // see leave a frame (and a return value nobody reads is dropped).
        verdict = if direction == FLOW_OUTBOUND {
            let destination = outbound_destination(ctx, ends, &view, flow.netns_cookie);
            outbound(ctx, ends, &view, &destination, &mut judged)
        } else {
            let source = inbound_source(ctx, ends, &view, flow.netns_cookie);
            inbound(ctx, ends, &view, &source, &mut judged)
        };
    }
    let revoked = how & AGAIN != 0 && verdict == VERDICT_DENY;
    // One call site: the verifier checks a static BPF function once per call.
    let outcome = finish(
        ctx,
        &flow,
        &judged,
        direction | if revoked { AGAIN } else { 0 },
    );
    // Called here, not from `finish`: kernels before 6.5 round every frame up to 32 bytes and
    // refuse a chain over 512 bytes, which hook → judge → finish → memorise → arrived was on 6.1.
    if judged.memorable && judged.decision.verdict != VERDICT_DEFER {
        memorise(&flow, &judged.decision, direction, listener);
    }
    outcome
}

/// Where a flow the socket opens goes, as `outbound_destination` returns it: an identity in the
/// low 32 bits, or one of the two markers below. A plain integer, because LLVM packs an enum's
/// payload into the return register with whatever that register held on paths that leave the
/// payload undefined, which the verifier refuses when it held a pointer.
type Destination = u64;
/// A local destination whose receiving socket could not be resolved (remembered).
const UNRESOLVED_HERE: Destination = 1 << 32;
/// The node's address reached from another namespace: not resolvable here (not remembered;
/// handed off to the receiver when every interface is covered, else failed closed).
const UNRESOLVED_ELSEWHERE: Destination = 2 << 32;

/// A local destination in the socket's own namespace: resolve its receiving socket. Only
/// between [`placed`] and [`outbound_destination`].
const LOCAL_HERE: Destination = 3 << 32;

/// Where the remote end of `ends` is: an identity, [`LOCAL_HERE`] or [`UNRESOLVED_ELSEWHERE`].
/// Its own BPF function, so that the address lookups' keys stay off the frame that resolves a
/// local receiver.
#[inline(never)]
fn placed(view: &MapView, netns: u64, addr: &[u8; 16]) -> Destination {
    match place(view, runtime_ref(), netns, addr) {
        Place::Remote(identity) => Destination::from(identity),
        Place::Local => LOCAL_HERE,
        Place::ElsewhereOnNode => UNRESOLVED_ELSEWHERE,
    }
}

/// Resolves the destination of a flow the socket opens. Its own BPF function, a sibling of the
/// deciding one.
#[inline(never)]
fn outbound_destination(
    ctx: &SkBuffContext,
    ends: &Ends,
    view: &MapView,
    netns: u64,
) -> Destination {
    let destination = placed(view, netns, &ends.remote_addr);
    if destination != LOCAL_HERE {
        return destination;
    }
    match owner_from_kernel(
        ctx.as_ptr(),
        &LocalQuery {
            slot: view.slot,
            local_identity: view.config.local_identity,
            netns,
            dst_addr: ends.remote_addr,
            dst_port: ends.remote_port,
            protocol: ends.folded,
        },
        runtime_ref(),
    ) {
        Owner::Identity(identity) => Destination::from(identity),
        Owner::Defer | Owner::Unresolved => UNRESOLVED_HERE,
    }
}

/// A flow the socket opens: from its owner to its destination.
#[inline(never)]
fn outbound(
    ctx: &SkBuffContext,
    ends: &Ends,
    view: &MapView,
    destination: &Destination,
    judged: &mut Judged,
) -> u8 {
    *judged = outbound_decision(ctx, ends, view, destination);
    if judged.decision.verdict == VERDICT_DEFER {
        // Its receiver judges it, with the identity recorded here.
        count(counter::HANDED_OFF);
        track::hand_off(ends, judged.decision.src_identity, view.config.generation);
    }
    judged.decision.verdict
}

/// The decision of [`outbound`].
#[inline(always)]
fn outbound_decision(
    ctx: &SkBuffContext,
    ends: &Ends,
    view: &MapView,
    destination: &Destination,
) -> Judged {
    let src = match source_identity(&SkbCgroup(ctx.skb.skb), view.slot) {
        Ok(identity) => identity,
        Err(why) => return Judged::failed(0, 0, why, false),
    };
    if *destination == UNRESOLVED_ELSEWHERE && runtime().flags & RUNTIME_HAND_OFF != 0 {
        return Judged {
            decision: Decision {
                verdict: VERDICT_DEFER,
                ..Decision::fail_closed(src, reason::UNRESOLVED_LOCAL, counter::COUNT)
            },
            memorable: false,
        };
    }
    if *destination > u64::from(u32::MAX) {
        count(counter::ERR_UNRESOLVED_LOCAL);
        let memorable = *destination == UNRESOLVED_HERE;
        return Judged::failed(src, 0, reason::UNRESOLVED_LOCAL, memorable);
    }
    let dst = *destination as u32;
    if ends.source_routed
        && view
            .identity_info(src)
            .is_none_or(|info| info.flags & IDENTITY_SEGMENTED != 0)
    {
        count(counter::SOURCE_ROUTE_REFUSED);
        return Judged::failed(src, dst, reason::SOURCE_ROUTE, false);
    }
    Judged {
        decision: decide(
            view,
            &view.config,
            src,
            dst,
            ends.protocol,
            ends.remote_port,
        ),
        memorable: true,
    }
}

/// Who sent a flow arriving at the socket, as `inbound_source` returns it: the identity to judge
/// from in the low 32 bits, with [`JUDGED_AT_ORIGIN`] set when the sender is a socket of the
/// subtree on this node whose own egress judged the flow with both real identities (its verdict
/// stands: a denied flow never arrives). An integer for the reason given at [`Destination`].
type Source = u64;
const JUDGED_AT_ORIGIN: Source = 1 << 32;

/// Resolves the source of an arriving flow. Its own BPF function, a sibling of the deciding one.
#[inline(never)]
fn inbound_source(ctx: &SkBuffContext, ends: &Ends, view: &MapView, netns: u64) -> Source {
    let (placed, from_node) = match place(view, &runtime(), netns, &ends.remote_addr) {
        Place::Local => {
            return match sender(ctx.as_ptr(), ends, view.slot) {
                Sender::Managed(identity) => JUDGED_AT_ORIGIN | Source::from(identity),
                Sender::Node => Source::from(view.config.local_identity),
            };
        }
        // A remote end, or a container of this node whose sender handed the flow off.
        Place::Remote(identity) => (identity, false),
        // The node's address seen from another namespace: a socket of the node's namespace sent
        // it, a workload's if its egress recorded it, else a process of the node.
        Place::ElsewhereOnNode => (view.config.local_identity, true),
    };
    // One call site: the verifier checks a static BPF function once per call.
    match track::sender_identity(ends, view.config.generation, from_node) {
        0 => Source::from(placed),
        sent => Source::from(sent),
    }
}

/// A flow arriving at the socket: from its source to the socket's owner.
#[inline(never)]
fn inbound(
    ctx: &SkBuffContext,
    ends: &Ends,
    view: &MapView,
    source: &Source,
    judged: &mut Judged,
) -> u8 {
    *judged = inbound_decision(ctx, ends, view, source);
    judged.decision.verdict
}

/// The decision of [`inbound`].
#[inline(always)]
fn inbound_decision(ctx: &SkBuffContext, ends: &Ends, view: &MapView, source: &Source) -> Judged {
    let dst = match source_identity(&SkbCgroup(ctx.skb.skb), view.slot) {
        Ok(identity) => identity,
        Err(why) => return Judged::failed(0, 0, why, false),
    };
    let src = *source as u32;
    if *source & JUDGED_AT_ORIGIN != 0 {
        return Judged {
            decision: Decision {
                verdict: VERDICT_ALLOW,
                reason: reason::RULE,
                rule_id: 0,
                src_identity: src,
                dst_identity: dst,
                extra_counter: counter::JUDGED_AT_ORIGIN,
            },
            memorable: true,
        };
    }
    Judged {
        decision: decide(view, &view.config, src, dst, ends.protocol, ends.local_port),
        memorable: true,
    }
}

/// Counts and reports the decision (a revocation when `how` carries [`AGAIN`]).
#[inline(never)]
fn finish(ctx: &SkBuffContext, flow: &Flow, judged: &Judged, how: u8) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    let decision = &judged.decision;
    if decision.verdict == VERDICT_DEFER {
        // Handed off (see `outbound`): its receiver judges it.
        return PASS;
    }
    let revoked = how & AGAIN != 0;
    if revoked {
        count(counter::REVOKED);
    }
    let cookie = flow.socket_cookie;
    let actor = || {
        let cgroup_id = SkbCgroup(skb).id();
        let revoked = if revoked { EVENT_REVOKED } else { 0 };
        // SAFETY: hash map values are read-only copies for us.
        match unsafe { SOCKET_OWNERS.get(cookie) } {
            Some(owner) => Actor {
                pid: owner.pid,
                uid: owner.uid,
                cgroup_id,
                comm: owner.comm,
                flags: EVENT_PROCESS_FROM_SOCKET | revoked,
            },
            None => Actor {
                pid: 0,
                // SAFETY: a helper call on the program's own context.
                uid: unsafe { bpf_get_socket_uid(skb) },
                cgroup_id,
                comm: [0; 16],
                flags: EVENT_NO_PROCESS | revoked,
            },
        }
    };
    if conclude(flow, decision, actor) {
        PASS
    } else {
        DROP
    }
}

/// Writes the socket's memory (not on a listener: its next packet is another peer's) and tracks
/// what the policy lets through.
#[inline(never)]
fn memorise(flow: &Flow, decision: &Decision, direction: u8, listener: bool) {
    let inbound = direction == FLOW_INBOUND;
    if !listener {
        remember(
            flow.socket_cookie,
            &SocketVerdict {
                peer_addr: if inbound {
                    flow.src_addr
                } else {
                    flow.dst_addr
                },
                generation: flow.generation,
                port: port_of(flow.protocol, flow.dst_port),
                protocol: enforcer_common::decide::fold_protocol(flow.protocol),
                verdict: decision.verdict,
                direction,
                tracked: 0,
                _pad: [0; 2],
                peer_identity: if inbound {
                    decision.src_identity
                } else {
                    decision.dst_identity
                },
                local_identity: if inbound {
                    decision.dst_identity
                } else {
                    decision.src_identity
                },
            },
        );
    }
    if inbound && decision.verdict != VERDICT_DENY && fold_protocol(flow.protocol) == protocol::UDP
    {
        track::arrived(flow);
    }
    if decision.verdict != VERDICT_DENY {
        track::track_judged(
            flow,
            decision.src_identity,
            decision.dst_identity,
            decision.verdict,
            direction,
        );
    }
}
