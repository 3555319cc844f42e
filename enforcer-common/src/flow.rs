//! Connection tracking: flows by the direction that opened them.
//!
//! A socket remembers one flow ([`SocketVerdict`](crate::SocketVerdict)); [`FLOWS`](crate::maps::FLOWS)
//! remembers every flow the programs judged, so that a reply is recognised whichever socket it
//! reaches and however many peers a socket talks to, and a flow between two local workloads is
//! judged once, where it starts, with both real identities.

use core::mem::size_of;

/// Key of [`FLOWS`](crate::maps::FLOWS): the flow as its first packet had it. A reply is looked up
/// with addresses and ports swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    /// Network byte order, IPv4-mapped.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order; 0 for protocols without ports.
    pub src_port: u16,
    pub dst_port: u16,
    /// Folded protocol (see [`decide::fold_protocol`](crate::decide::fold_protocol)).
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key a reply to this flow carries: both ends swapped.
    #[must_use]
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

/// Value of [`FLOWS`](crate::maps::FLOWS): how the flow was judged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowState {
    /// The generation of the policy that judged it.
    pub generation: u32,
    /// The identity of the end that opened the flow.
    pub src_identity: u32,
    pub dst_identity: u32,
    /// [`VERDICT_ALLOW`](crate::VERDICT_ALLOW) or [`VERDICT_AUDIT`](crate::VERDICT_AUDIT): denied
    /// flows are not tracked, their packets never pass.
    pub verdict: u8,
    /// [`FLOW_OUTBOUND`](crate::FLOW_OUTBOUND) when a socket of this node opened it (recorded at
    /// egress), [`FLOW_INBOUND`](crate::FLOW_INBOUND) when it arrived (recorded at ingress).
    pub direction: u8,
    /// [`ORIGIN_JUDGED`], [`ORIGIN_NODE`] or [`ORIGIN_SENT`].
    pub origin: u8,
    pub _pad: u8,
}

/// [`FlowState::origin`]: a program judged the flow; a new generation judges it again.
pub const ORIGIN_JUDGED: u8 = 0;
/// [`FlowState::origin`]: a process of the node outside the managed subtree opened it, seen
/// leaving an interface. Nothing judges such flows; they are tracked only so that their replies
/// are not taken for arrivals.
pub const ORIGIN_NODE: u8 = 1;
/// [`FlowState::origin`]: a socket of the subtree in another network namespace of this node
/// sent the flow to one of the node's addresses, where its receiver is not visible. Only
/// `src_identity` and `generation` are set: the receiver judges the flow from that identity, and
/// nothing passes on such a record.
pub const ORIGIN_SENT: u8 = 2;

/// Key of [`ARRIVED`](crate::maps::ARRIVED): a peer that opened a datagram flow to a local port,
/// whatever local address it reached. The socket hooks see a server's reply before its source
/// address is chosen, so they cannot look the flow up in [`FLOWS`](crate::maps::FLOWS); this
/// tells them to leave the reply to the packet layer, which can.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArrivedKey {
    /// Network byte order, IPv4-mapped.
    pub peer_addr: [u8; 16],
    /// Host byte order.
    pub peer_port: u16,
    pub local_port: u16,
    /// Folded protocol.
    pub protocol: u8,
    pub _pad: [u8; 3],
}

const _: () = {
    assert!(size_of::<ArrivedKey>() == 24);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<FlowState>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::{ArrivedKey, FlowKey, FlowState};

    // SAFETY: as below.
    unsafe impl aya::Pod for ArrivedKey {}

    // SAFETY: `#[repr(C)]`, `Copy`, only integers and byte arrays, padding spelled out as fields
    // (checked by the size asserts above), so any bit pattern is valid.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowState {}
}
