//! Reading a packet's IPv4 or IPv6 header and its transport ports, as the local end of the flow
//! sees them: shared by the socket layer (`cgroup_skb`, which starts at the network header) and
//! the interface layer (TC, which starts at the link-layer header).

use aya_ebpf::programs::sk_buff::SkBuff;
use enforcer_common::{decide::fold_protocol, ipv4_mapped, protocol};

use crate::local::Ends;

/// `__sk_buff.protocol` holds the ethertype in network byte order.
pub(crate) const ETH_P_IP: u32 = 0x0800_u16.to_be() as u32;
pub(crate) const ETH_P_IPV6: u32 = 0x86dd_u16.to_be() as u32;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_DCCP: u8 = 33;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked before giving up (fail closed).
const MAX_EXTENSION_HEADERS: u32 = 4;

/// A packet read from its network header on.
pub(crate) struct At<'a> {
    skb: &'a SkBuff,
    /// Offset of the network header: 0 in `cgroup_skb`, past the link-layer header in TC.
    base: usize,
}

impl At<'_> {
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Option<T> {
        self.skb.load::<T>(self.base + offset).ok()
    }
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
fn parse_ipv4<const INGRESS: bool>(at: &At<'_>, ends: &mut Ends) -> Option<()> {
    let version_ihl: u8 = at.load(0)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    let fragment: u16 = u16::from_be(at.load(6)?);
    let protocol: u8 = at.load(9)?;
    let src: [u8; 4] = at.load(12)?;
    let dst: [u8; 4] = at.load(16)?;
    // Any IPv4 option counts as a possible source route (LSRR, SSRR): applications do not set
    // options otherwise, and walking them would cost every packet a loop.
    let source_routed = header_len > 20;
    let later_fragment = fragment & 0x1fff != 0;
    addresses::<INGRESS>(ends, ipv4_mapped(src), ipv4_mapped(dst));
    ends.protocol = protocol;
    ends.source_routed = source_routed;
    ends.later_fragment = later_fragment;
    if !later_fragment {
        transport::<INGRESS>(at, header_len, ends)?;
    }
    Some(())
}

#[inline(always)]
fn parse_ipv6<const INGRESS: bool>(at: &At<'_>, ends: &mut Ends) -> Option<()> {
    let mut next: u8 = at.load(6)?;
    addresses::<INGRESS>(ends, at.load::<[u8; 16]>(8)?, at.load::<[u8; 16]>(24)?);
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
                let len: u8 = at.load(offset + 1)?;
                next = at.load(offset)?;
                offset += (usize::from(len) + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let fragment: u16 = u16::from_be(at.load(offset + 2)?);
                later_fragment = fragment & 0xfff8 != 0;
                next = at.load(offset)?;
                offset += 8;
            }
            IPPROTO_AH => {
                let len: u8 = at.load(offset + 1)?;
                next = at.load(offset)?;
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
        transport::<INGRESS>(at, offset, ends)?;
    }
    Some(())
}

/// Parses the network and transport headers that start at `l3` (of the protocol `ethertype`
/// names, in network byte order) into `ends`, seen from the local end: the destination when
/// `INGRESS`, else the source. `false` when they are not parseable. Its own BPF function, so its
/// stack frame is not added to the judging one.
#[inline(never)]
pub(crate) fn parse<const INGRESS: bool>(
    skb: &SkBuff,
    ethertype: u32,
    l3: usize,
    ends: &mut Ends,
) -> bool {
    let at = At { skb, base: l3 };
    let parsed = match ethertype {
        ETH_P_IP => parse_ipv4::<INGRESS>(&at, ends),
        ETH_P_IPV6 => parse_ipv6::<INGRESS>(&at, ends),
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
fn transport<const INGRESS: bool>(at: &At<'_>, offset: usize, ends: &mut Ends) -> Option<()> {
    if has_ports(ends.protocol) {
        let src: u16 = u16::from_be(at.load(offset)?);
        let dst: u16 = u16::from_be(at.load(offset + 2)?);
        if INGRESS {
            ends.remote_port = src;
            ends.local_port = dst;
        } else {
            ends.local_port = src;
            ends.remote_port = dst;
        }
        if ends.protocol == protocol::TCP {
            ends.tcp_flags = at.load(offset + 13)?;
        }
    } else if ends.protocol == protocol::ICMP || ends.protocol == protocol::ICMPV6 {
        ends.icmp_type = at.load(offset)?;
    }
    Some(())
}

/// A TCP segment that opens a connection: SYN without ACK.
#[inline(always)]
pub(crate) const fn opens_tcp(ends: &Ends) -> bool {
    ends.protocol == protocol::TCP && ends.tcp_flags & TCP_SYN != 0 && ends.tcp_flags & TCP_ACK == 0
}
