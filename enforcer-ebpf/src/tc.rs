//! tcx on the node's interfaces: the interface layer, for what reaches no socket of the subtree.
//!
//! `arrivals` (ingress) judges new flows to the node's own addresses that no socket of the
//! managed subtree will receive (those are judged by `cgroup_skb/ingress`, with the receiving
//! workload): connections to closed ports and the sweeps that probe them, connections to processes
//! of the node outside the subtree, ICMP echo to the node. The destination is the node's identity.
//! Replies to flows of this node, and flows already let through, pass on the flow table.
//!
//! `departures` (egress) records the flows processes of the node outside the subtree open, so
//! that their replies are not taken for arrivals. It judges nothing.
//!
//! VLAN tags are read past, whether the kernel moved the outer one into the packet's metadata or
//! left it in the frame: a tagged packet is judged like an untagged one.

use aya_ebpf::{EbpfContext as _, programs::TcContext};
use enforcer_common::{
    EVENT_NO_PROCESS, FLOW_INBOUND, FLOW_OUTBOUND, FlowState, LocalAddrKey, VERDICT_DENY, counter,
    decide::{Decision, decide},
    flow::ORIGIN_NODE,
    hook, is_loopback_or_unspecified, protocol, reason,
};

use crate::{
    local::{Ends, Place, place, receiver_in_subtree, socket_exists},
    maps::{FLOWS, LOCAL_ADDRS, count, runtime},
    packet::{ETH_P_IP, ETH_P_IPV6, opens_tcp, parse},
    report::{Actor, Flow, conclude},
    skb::track::{self, Tracked},
    view::MapView,
};

/// `TC_ACT_UNSPEC`: the next program in the tcx chain (or the stack) decides.
const NEXT: i32 = -1;
/// `TC_ACT_SHOT`.
const SHOT: i32 = 2;

const ETH_P_8021Q: u32 = 0x8100_u16.to_be() as u32;
const ETH_P_8021AD: u32 = 0x88a8_u16.to_be() as u32;
/// VLAN tags read past inside the frame (QinQ): more is not IP the node receives.
const MAX_VLAN_TAGS: usize = 2;

/// ICMP and ICMPv6 types the interface layer reads.
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// ICMP errors (destination unreachable, source quench, time exceeded, parameter problem), and
/// for ICMPv6 its errors (1 to 4), multicast listener discovery (130 to 132, 143) and neighbour
/// discovery (133 to 137).
#[inline(always)]
const fn is_error_or_discovery(kind: u8, v6: bool) -> bool {
    if v6 {
        matches!(kind, 1..=4 | 130..=137 | 143)
    } else {
        matches!(kind, 3 | 4 | 11 | 12)
    }
}

/// The network protocol (network byte order) and where its header starts, past any VLAN tags;
/// `None` for a frame that is not IPv4 or IPv6 (ARP, LLDP, …), which no IP rule speaks to.
#[inline(always)]
fn link_layer(ctx: &TcContext) -> Option<(u32, usize)> {
    let mut offset = 12;
    let mut tags = 0;
    loop {
        let ethertype = u32::from(ctx.load::<u16>(offset).ok()?);
        match ethertype {
            ETH_P_IP | ETH_P_IPV6 => return Some((ethertype, offset + 2)),
            ETH_P_8021Q | ETH_P_8021AD if tags < MAX_VLAN_TAGS => {
                offset += 4;
                tags += 1;
            }
            _ => return None,
        }
    }
}

/// Whether `addr` is one of the node's own addresses (or loopback, which no wire carries but a
/// crafted frame may name).
#[inline(always)]
fn is_local(addr: &[u8; 16]) -> bool {
    if is_loopback_or_unspecified(addr) {
        return true;
    }
    let key = LocalAddrKey {
        netns_cookie: runtime().node_netns_cookie,
        addr: *addr,
    };
    // SAFETY: hash map values are read-only copies for us.
    unsafe { LOCAL_ADDRS.get(key) }.is_some()
}

/// What the interface layer does with an arriving packet.
enum Arrival {
    Pass,
    /// Judge it as a new flow to the node; `AGAIN` when an older policy let it through.
    Judge(bool),
}

/// Judges one packet arriving on an interface of the node.
#[inline(always)]
pub(crate) fn arrivals(ctx: &TcContext) -> i32 {
    let Some((ethertype, l3)) = link_layer(ctx) else {
        return NEXT;
    };
    let mut ends = Ends::default();
    if !parse::<true>(&ctx.skb, ethertype, l3, &mut ends) {
        // Only what would be delivered here is this layer's: a forwarded packet is not.
        if is_local(&ends.local_addr) {
            count(counter::ERR_PACKET);
            return SHOT;
        }
        return NEXT;
    }
    if !is_local(&ends.local_addr) || ends.later_fragment {
        // A later fragment carries no ports; the socket layer sees the reassembled datagram.
        return NEXT;
    }
    match classify(ctx, &ends) {
        Arrival::Pass => NEXT,
        Arrival::Judge(again) => judge(&ends, again),
    }
}

/// Decides whether an arriving packet to the node opens a flow to judge. Its own BPF function, a
/// sibling of the judging one.
#[inline(never)]
fn classify(ctx: &TcContext, ends: &Ends) -> Arrival {
    let Some(view) = MapView::active() else {
        return Arrival::Judge(false);
    };
    if ends.protocol == protocol::ICMP || ends.protocol == protocol::ICMPV6 {
        let v6 = ends.protocol == protocol::ICMPV6;
        match ends.icmp_type {
            ICMP_ECHO_REPLY if !v6 => {}
            ICMPV6_ECHO_REPLY if v6 => {}
            // Errors belong to flows already let through and neighbour discovery to the link;
            // dropping them would break what the policy allowed.
            kind if is_error_or_discovery(kind, v6) => return Arrival::Pass,
            // Echo, timestamp, information and the rest ask the node something: a new flow.
            _ => return Arrival::Judge(false),
        }
    } else if opens_tcp(ends) {
        return if receiver_in_subtree(ctx.as_ptr(), ends) {
            Arrival::Pass
        } else {
            Arrival::Judge(false)
        };
    }
    match track::tracked(ends, view.config.generation) {
        Tracked::Current(_) => {
            count(counter::TRACKED);
            return Arrival::Pass;
        }
        // A flow a socket of the subtree opened (this packet is a reply) is judged again by the
        // socket layer, in the direction that opened it and with the workload's identity; judged
        // here, the reply would be taken for a new flow to the node. (The connecting socket of
        // such a flow is not in `LISTENERS`, so the receiver cannot be asked.)
        Tracked::Stale(FLOW_OUTBOUND) => {
            count(counter::TRACKED);
            return Arrival::Pass;
        }
        Tracked::Stale(_) => return Arrival::Judge(true),
        Tracked::Unknown => {}
    }
    let receiver = if ends.protocol == protocol::TCP {
        // A segment of a connection the flow table does not know (older than the programs, or
        // evicted) has a socket; a stray one (an ACK, FIN or Xmas scan) has none.
        socket_exists(ctx.as_ptr(), ends)
    } else {
        receiver_in_subtree(ctx.as_ptr(), ends)
    };
    if receiver {
        Arrival::Pass
    } else {
        Arrival::Judge(false)
    }
}

/// Judges an arrival no socket of the subtree receives: from its source address to the node.
/// Its own BPF function, a sibling of the classifying one.
#[inline(never)]
fn judge(ends: &Ends, again: bool) -> i32 {
    let runtime = runtime();
    let mut flow = Flow {
        hook: hook::TC_INGRESS,
        protocol: ends.protocol,
        src_addr: ends.remote_addr,
        dst_addr: ends.local_addr,
        src_port: ends.remote_port,
        dst_port: ends.local_port,
        generation: 0,
        socket_cookie: 0,
        netns_cookie: runtime.node_netns_cookie,
    };
    let decision = match MapView::active() {
        None => Decision::fail_closed(0, reason::UNRESOLVED, counter::COUNT),
        Some(view) => {
            flow.generation = view.config.generation;
            // A local source arriving on a wire is a martian the stack drops; judge it as the
            // node it claims to be.
            let src = match place(
                &view,
                &runtime,
                runtime.node_netns_cookie,
                &ends.remote_addr,
            ) {
                // A container of this node whose sender handed the flow off, or a remote end.
                Place::Remote(identity) => {
                    match track::sender_identity(ends, view.config.generation, false) {
                        0 => identity,
                        sent => sent,
                    }
                }
                Place::Local | Place::ElsewhereOnNode => view.config.local_identity,
            };
            decide(
                &view,
                &view.config,
                src,
                view.config.local_identity,
                ends.protocol,
                ends.local_port,
            )
        }
    };
    conclude_arrival(&flow, &decision, again)
}

/// Counts, reports and tracks an arrival's decision.
#[inline(never)]
fn conclude_arrival(flow: &Flow, decision: &Decision, again: bool) -> i32 {
    let revoked = again && decision.verdict == VERDICT_DENY;
    if revoked {
        count(counter::REVOKED);
    }
    let proceed = conclude(flow, decision, || Actor {
        pid: 0,
        uid: 0,
        cgroup_id: 0,
        comm: [0; 16],
        flags: EVENT_NO_PROCESS
            | if revoked {
                enforcer_common::EVENT_REVOKED
            } else {
                0
            },
    });
    if !proceed {
        return SHOT;
    }
    if decision.reason != reason::UNRESOLVED {
        track::track_judged(
            flow,
            decision.src_identity,
            decision.dst_identity,
            decision.verdict,
            FLOW_INBOUND,
        );
    }
    NEXT
}

/// `BPF_NOEXIST`: a flow the socket layer already judged keeps its record.
const NOEXIST: u64 = 1;

/// Records a flow a process of the node opens, leaving on an interface; judges nothing.
#[inline(always)]
pub(crate) fn departures(ctx: &TcContext) -> i32 {
    let Some((ethertype, l3)) = link_layer(ctx) else {
        return NEXT;
    };
    let mut ends = Ends::default();
    if !parse::<false>(&ctx.skb, ethertype, l3, &mut ends) || ends.later_fragment {
        return NEXT;
    }
    let opens = match ends.protocol {
        protocol::TCP => opens_tcp(&ends),
        protocol::ICMP | protocol::ICMPV6 => {
            matches!(ends.icmp_type, ICMP_ECHO_REQUEST | ICMPV6_ECHO_REQUEST)
        }
        _ => true,
    };
    // The segments of established TCP, most of what leaves, stop before any lookup.
    if opens && is_local(&ends.local_addr) {
        record_departure(&ends);
    }
    NEXT
}

#[inline(never)]
fn record_departure(ends: &Ends) {
    // SAFETY: hash map values are read-only copies for us.
    if unsafe { FLOWS.get(track::key(ends, FLOW_INBOUND)) }.is_some() {
        // A reply (a datagram answering an arrival): recording it as opened here would let the
        // arrival's flow outlive a policy that revokes it.
        return;
    }
    let state = FlowState {
        generation: 0,
        src_identity: 0,
        dst_identity: 0,
        verdict: enforcer_common::VERDICT_ALLOW,
        direction: FLOW_OUTBOUND,
        origin: ORIGIN_NODE,
        _pad: 0,
    };
    // An existing record (the socket layer's, or this flow's own) stays: a failed insert is the
    // expected outcome for every datagram after the first.
    let _ = FLOWS.insert(track::key(ends, FLOW_OUTBOUND), state, NOEXIST);
}
