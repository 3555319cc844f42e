//! What the packet layer remembers: the last flow of each socket (`SOCKET_VERDICTS`) and every
//! flow judged (`FLOWS`), by the direction that opened it.

use enforcer_common::{
    ArrivedKey, FLOW_INBOUND, FLOW_OUTBOUND, FlowKey, FlowState, SocketVerdict, VERDICT_DENY,
    counter,
    decide::fold_protocol,
    flow::{ORIGIN_JUDGED, ORIGIN_NODE, ORIGIN_SENT},
    protocol,
};

use crate::{
    local::Ends,
    maps::{ARRIVED, FLOWS, SOCKET_VERDICTS, count},
    report::{Flow, port_of},
};

/// What the socket's own memory says of a packet.
pub(crate) enum Recall {
    /// Its flow, judged by the policy in force.
    Current(SocketVerdict),
    /// Its flow, judged by an older policy; `FLOW_OUTBOUND` or `FLOW_INBOUND`, and whether it was
    /// let through.
    Stale(u8, bool),
    /// Another flow, or nothing remembered.
    Unknown,
}

/// The port a flow in `direction` is judged on.
#[inline(always)]
const fn flow_port(ends: &Ends, direction: u8) -> u16 {
    let port = if direction == FLOW_OUTBOUND {
        ends.remote_port
    } else {
        ends.local_port
    };
    port_of(ends.protocol, port)
}

/// Looks the packet up in its socket's memory.
#[inline(always)]
pub(crate) fn recall(cookie: u64, ends: &Ends, generation: u32) -> Recall {
    // SAFETY: hash map values are read-only copies for us.
    let Some(memory) = (unsafe { SOCKET_VERDICTS.get(cookie) }) else {
        return Recall::Unknown;
    };
    if memory.peer_addr != ends.remote_addr
        || memory.protocol != ends.folded
        || memory.port != flow_port(ends, memory.direction)
    {
        return Recall::Unknown;
    }
    if memory.generation == generation {
        Recall::Current(*memory)
    } else {
        Recall::Stale(memory.direction, memory.verdict != VERDICT_DENY)
    }
}

/// The flow-table key of the packet's flow if it was opened in `direction`.
#[inline(always)]
pub(crate) fn key(ends: &Ends, direction: u8) -> FlowKey {
    let (local_port, remote_port) = (
        port_of(ends.protocol, ends.local_port),
        port_of(ends.protocol, ends.remote_port),
    );
    let outbound = FlowKey {
        src_addr: ends.local_addr,
        dst_addr: ends.remote_addr,
        src_port: local_port,
        dst_port: remote_port,
        protocol: ends.folded,
        _pad: [0; 3],
    };
    if direction == FLOW_OUTBOUND {
        outbound
    } else {
        outbound.reversed()
    }
}

/// What the flow table says of a packet the socket does not remember.
pub(crate) enum Tracked {
    /// A flow judged by the policy in force: what the socket should remember of it.
    Current(SocketVerdict),
    /// A flow let through by an older policy, opened in this direction.
    Stale(u8),
    Unknown,
}

/// Looks the packet's flow up, opened either way.
#[inline(never)]
pub(crate) fn tracked(ends: &Ends, generation: u32) -> Tracked {
    let mut direction = FLOW_OUTBOUND;
    // A flow handed off to its receiver was not judged yet: nothing passes on it.
    // SAFETY: hash map values are read-only copies for us.
    let mut state =
        unsafe { FLOWS.get(key(ends, FLOW_OUTBOUND)) }.filter(|s| s.origin != ORIGIN_SENT);
    if state.is_none() {
        direction = FLOW_INBOUND;
        // SAFETY: as above.
        state = unsafe { FLOWS.get(key(ends, FLOW_INBOUND)) }.filter(|s| s.origin != ORIGIN_SENT);
    }
    let Some(state) = state else {
        return Tracked::Unknown;
    };
    // A flow of the node outside the subtree was never judged, so no policy change revokes it.
    if state.generation != generation && state.origin != ORIGIN_NODE {
        return Tracked::Stale(direction);
    }
    Tracked::Current(SocketVerdict {
        peer_addr: ends.remote_addr,
        generation,
        port: flow_port(ends, direction),
        protocol: ends.folded,
        verdict: state.verdict,
        direction,
        // Found in the flow table: there already.
        tracked: 1,
        _pad: [0; 2],
        peer_identity: if direction == FLOW_OUTBOUND {
            state.dst_identity
        } else {
            state.src_identity
        },
        local_identity: if direction == FLOW_OUTBOUND {
            state.src_identity
        } else {
            state.dst_identity
        },
    })
}

/// Records a flow let through, so that its replies (on any socket) are known.
#[inline(always)]
pub(crate) fn track(key: &FlowKey, state: &FlowState) {
    // SAFETY: as above.
    if unsafe { FLOWS.get(key) } == Some(state) {
        return;
    }
    if FLOWS.insert(key, state, 0).is_err() {
        count(counter::ERR_SOCKET_UPDATE);
    }
}

/// Records a flow a program just let through (`flow` as it was opened, in `direction`).
#[inline(always)]
pub(crate) fn track_judged(
    flow: &Flow,
    src_identity: u32,
    dst_identity: u32,
    verdict: u8,
    direction: u8,
) {
    track(
        &FlowKey {
            src_addr: flow.src_addr,
            dst_addr: flow.dst_addr,
            src_port: port_of(flow.protocol, flow.src_port),
            dst_port: port_of(flow.protocol, flow.dst_port),
            protocol: fold_protocol(flow.protocol),
            _pad: [0; 3],
        },
        &FlowState {
            generation: flow.generation,
            src_identity,
            dst_identity,
            verdict,
            direction,
            origin: ORIGIN_JUDGED,
            _pad: 0,
        },
    );
}

/// Records a flow the socket hooks judged (they cannot: its source address and port are chosen
/// after them), when its first packet leaves, and notes on the socket that it did, so that the
/// flow's next packets cost no flow-table lookup.
#[inline(never)]
pub(crate) fn track_remembered(cookie: u64, ends: &Ends, memory: &SocketVerdict) {
    if let Some(slot) = SOCKET_VERDICTS.get_ptr_mut(cookie) {
        // SAFETY: a value of the map; a racing writer can only make a later packet track again.
        unsafe { (*slot).tracked = 1 };
    }
    track(
        &key(ends, FLOW_OUTBOUND),
        &FlowState {
            generation: memory.generation,
            src_identity: memory.local_identity,
            dst_identity: memory.peer_identity,
            verdict: memory.verdict,
            direction: FLOW_OUTBOUND,
            origin: ORIGIN_JUDGED,
            _pad: 0,
        },
    );
}

/// Records that the peer of an arriving datagram flow (`flow`, opened by it) reached this local
/// port, so that the socket hooks leave the server's replies to the packet layer.
#[inline(never)]
pub(crate) fn arrived(flow: &Flow) {
    let key = ArrivedKey {
        peer_addr: flow.src_addr,
        peer_port: flow.src_port,
        local_port: flow.dst_port,
        protocol: protocol::UDP,
        _pad: [0; 3],
    };
    // SAFETY: hash map values are read-only copies for us.
    if unsafe { ARRIVED.get(key) } == Some(&flow.generation) {
        return;
    }
    if ARRIVED.insert(key, flow.generation, 0).is_err() {
        count(counter::ERR_SOCKET_UPDATE);
    }
}

/// Whether the peer `addr:port` opened a datagram flow to `local_port`: a send to it from that
/// port may be a reply, which only the packet layer (knowing the source address) can tell.
#[inline(always)]
pub(crate) fn has_arrived(addr: &[u8; 16], port: u16, local_port: u16) -> bool {
    let key = ArrivedKey {
        peer_addr: *addr,
        peer_port: port,
        local_port,
        protocol: protocol::UDP,
        _pad: [0; 3],
    };
    // SAFETY: as above.
    unsafe { ARRIVED.get(key) }.is_some()
}

/// Hands a flow from a socket of the subtree in another network namespace to one of the node's
/// addresses over to its receiver (`ends` as the sender sees them): records the sender's identity
/// for whichever layer judges the arrival. A record of the receiver's own verdict under the
/// policy in force stays: the flow is let through on it.
#[inline(never)]
pub(crate) fn hand_off(ends: &Ends, src_identity: u32, generation: u32) {
    let key = key(ends, FLOW_OUTBOUND);
    // SAFETY: hash map values are read-only copies for us.
    if let Some(state) = unsafe { FLOWS.get(key) }
        && state.origin == ORIGIN_JUDGED
        && state.generation == generation
    {
        return;
    }
    track(
        &key,
        &FlowState {
            generation,
            src_identity,
            dst_identity: 0,
            verdict: VERDICT_DENY,
            direction: FLOW_OUTBOUND,
            origin: ORIGIN_SENT,
            _pad: 0,
        },
    );
}

/// The identity that sent an arriving flow (`ends` as its receiver sees them), when its sender's
/// own programs recorded it under the policy in force: a socket of the subtree in another network
/// namespace of this node that handed it off ([`ORIGIN_SENT`]), or, for a flow from one of the
/// node's addresses, the socket of the node's namespace that opened it ([`ORIGIN_JUDGED`]).
/// 0 when neither. Its own BPF function, so its key is not on the judging frame.
#[inline(never)]
pub(crate) fn sender_identity(ends: &Ends, generation: u32, from_node: bool) -> u32 {
    // SAFETY: hash map values are read-only copies for us.
    match unsafe { FLOWS.get(key(ends, FLOW_INBOUND)) } {
        Some(state)
            if state.generation == generation
                && state.direction == FLOW_OUTBOUND
                && (state.origin == ORIGIN_SENT
                    || (from_node && state.origin == ORIGIN_JUDGED)) =>
        {
            state.src_identity
        }
        _ => 0,
    }
}
