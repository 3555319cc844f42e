//! Destinations on this node: which socket will receive the connection, by the kernel's own
//! lookup (`bpf_sk_lookup_tcp/udp`), and whose it is.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_sk_ancestor_cgroup_id, bpf_sk_cgroup_id, bpf_sk_lookup_tcp, bpf_sk_lookup_udp,
        bpf_sk_release, bpf_skc_lookup_tcp,
    },
};
use enforcer_common::{
    CgroupKey, ListenerKey, LocalAddrKey, Runtime, counter,
    decide::{Destination, PolicyView, destination},
    is_ipv4_mapped, is_loopback_or_unspecified, protocol,
};

use crate::{
    ctx::{bound_address, field, sock},
    maps::{CGROUP_IDENTITY, LISTENERS, LOCAL_ADDRS, count},
};

/// `BPF_F_CURRENT_NETNS`: look sockets up in the namespace of the program's context.
const CURRENT_NETNS: u64 = u64::MAX;

/// What a destination address is, seen from a socket in network namespace `netns`.
pub(crate) enum Place {
    Remote(u32),
    /// On this node, in the caller's own namespace: look the receiving socket up.
    Local,
    /// One of the node's addresses, reached from another (or an unknown) namespace: the
    /// receiving socket is not in the caller's namespace and cannot be resolved here.
    ElsewhereOnNode,
}

/// Classifies `addr`: loopback and unspecified are local in every namespace; the node's addresses
/// (learnt from the kernel, or declared for this node in policy) only in the node's namespace.
#[inline(always)]
pub(crate) fn place<V: PolicyView>(
    view: &V,
    runtime: &Runtime,
    netns: u64,
    addr: &[u8; 16],
) -> Place {
    if is_loopback_or_unspecified(addr) {
        return Place::Local;
    }
    let key = LocalAddrKey {
        netns_cookie: runtime.node_netns_cookie,
        addr: *addr,
    };
    // SAFETY: hash map values are read-only copies for us.
    if unsafe { LOCAL_ADDRS.get(key) }.is_none()
        && let Destination::Remote(identity) = destination(view, addr)
    {
        return Place::Remote(identity);
    }
    if netns != 0 && netns == runtime.node_netns_cookie {
        Place::Local
    } else {
        Place::ElsewhereOnNode
    }
}

/// A local destination to resolve; one struct because BPF calls take at most five arguments.
pub(crate) struct LocalQuery {
    pub slot: u32,
    /// The node's identity: for a destination no socket receives.
    pub local_identity: u32,
    pub netns: u64,
    pub dst_addr: [u8; 16],
    pub dst_port: u16,
    /// Folded protocol.
    pub protocol: u8,
}

/// Who owns the socket a local connection reaches.
pub(crate) enum Owner {
    Identity(u32),
    /// The fast path cannot tell (the socket was bound where it could not see): leave the flow
    /// to the packet layer, which asks the kernel for the socket's cgroup.
    Defer,
    /// The owner's cgroup is held (new, unlabelled) or could not be resolved: fail closed.
    Unresolved,
}

/// Four `u32` words of a 16-byte address, as `bpf_sock_tuple` holds IPv6.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        i += 1;
    }
    words
}

/// A packet as its socket sees it: `local` is the socket's end, whichever way it travels.
/// Addresses in network byte order, IPv4-mapped; ports in host byte order.
#[derive(Default)]
pub(crate) struct Ends {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// IANA protocol number as the packet has it.
    pub protocol: u8,
    /// Folded (see `fold_protocol`).
    pub folded: u8,
    pub tcp_flags: u8,
    /// The ICMP or ICMPv6 message type.
    pub icmp_type: u8,
    /// An IPv6 routing header or an IPv4 source route.
    pub source_routed: bool,
    /// A fragment other than the first: no transport header to judge.
    pub later_fragment: bool,
}

/// Finds the socket at the remote end of `ends` (the one that would receive a packet from the
/// local end), in the context's namespace (TCP or, for any other folded protocol, UDP). Returns a
/// referenced socket the caller must release, or null.
#[inline(always)]
fn lookup_remote(ctx: *mut c_void, ends: &Ends) -> *mut bpf_sock {
    let ports = (u32::from(ends.local_port) << 16) | u32::from(ends.remote_port);
    if is_ipv4_mapped(&ends.remote_addr) {
        lookup_v4::<false>(ctx, &ends.local_addr, &ends.remote_addr, ports, ends.folded)
    } else {
        lookup_v6::<false>(ctx, &ends.local_addr, &ends.remote_addr, ports, ends.folded)
    }
}

/// Finds the socket receiving connections to `addr:port`. Inlined into its callers, which are
/// BPF functions of their own: another call level would not fit the stack.
#[inline(always)]
fn lookup_local(ctx: *mut c_void, addr: &[u8; 16], port: u16, folded: u8) -> *mut bpf_sock {
    let dport = port.to_be();
    let (mut raw, size) = if is_ipv4_mapped(addr) {
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                        saddr: 0,
                        daddr: u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
                        sport: 0,
                        dport,
                    },
                },
            },
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(),
        )
    } else {
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                        saddr: [0; 4],
                        daddr: words(addr),
                        sport: 0,
                        dport,
                    },
                },
            },
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(),
        )
    };
    call_lookup::<false>(ctx, &mut raw, size, folded)
}

/// Calls the lookup helper of `folded` on a tuple of `size` bytes; `ANY_STATE` finds TCP sockets
/// in every state (request and time-wait too), not only full ones.
#[inline(always)]
fn call_lookup<const ANY_STATE: bool>(
    ctx: *mut c_void,
    raw: &mut bpf_sock_tuple,
    size: usize,
    folded: u8,
) -> *mut bpf_sock {
    // SAFETY: the tuple lives on the caller's stack for the call; the helper copies what it
    // needs.
    unsafe {
        if ANY_STATE {
            bpf_skc_lookup_tcp(ctx, raw, size as u32, CURRENT_NETNS, 0).cast()
        } else if folded == protocol::TCP {
            bpf_sk_lookup_tcp(ctx, raw, size as u32, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(ctx, raw, size as u32, CURRENT_NETNS, 0)
        }
    }
}

/// The IPv4 lookup. Its own BPF function, apart from the IPv6 one: sharing their tail lets LLVM
/// merge stores the verifier cannot follow.
/// `ports` holds the source port in its high and the destination port in its low 16 bits (host
/// byte order), because BPF calls take at most five arguments.
#[inline(never)]
fn lookup_v4<const ANY_STATE: bool>(
    ctx: *mut c_void,
    src: &[u8; 16],
    dst: &[u8; 16],
    ports: u32,
    folded: u8,
) -> *mut bpf_sock {
    let mut raw = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: u32::from_ne_bytes([src[12], src[13], src[14], src[15]]),
                daddr: u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]),
                sport: ((ports >> 16) as u16).to_be(),
                dport: (ports as u16).to_be(),
            },
        },
    };
    call_lookup::<ANY_STATE>(
        ctx,
        &mut raw,
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(),
        folded,
    )
}

/// The IPv6 lookup (see [`lookup_v4`]).
#[inline(never)]
fn lookup_v6<const ANY_STATE: bool>(
    ctx: *mut c_void,
    src: &[u8; 16],
    dst: &[u8; 16],
    ports: u32,
    folded: u8,
) -> *mut bpf_sock {
    let mut raw = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: words(src),
                daddr: words(dst),
                sport: ((ports >> 16) as u16).to_be(),
                dport: (ports as u16).to_be(),
            },
        },
    };
    call_lookup::<ANY_STATE>(
        ctx,
        &mut raw,
        size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(),
        folded,
    )
}

/// The [`ListenerKey`] of a socket the kernel found.
#[inline(always)]
fn listener_key(sk: *mut bpf_sock, netns: u64, folded: u8) -> ListenerKey {
    // SAFETY (every `field` call): `sk` is a non-null socket returned by a lookup helper, and every
    // offset is a field of `bpf_sock`.
    let v6 = unsafe { field::<_, { sock::FAMILY }>(sk) } == sock::AF_INET6;
    // SAFETY: as above.
    let addr = unsafe { bound_address(sk, v6) };
    ListenerKey {
        netns_cookie: netns,
        addr,
        port: unsafe { field::<_, { sock::SRC_PORT }>(sk) } as u16,
        protocol: folded,
        family: if v6 { 6 } else { 4 },
        _pad: 0,
    }
}

/// The owner of the local socket reached, for the socket hooks (no socket-cgroup helper there):
/// the cgroup recorded when it was bound inside the managed subtree. No socket at all means
/// nothing will receive the connection: the node's identity.
///
/// Its own BPF function: its stack frame is not added to the hook's.
#[inline(never)]
pub(crate) fn owner_from_bind(ctx: *mut c_void, query: &LocalQuery) -> Owner {
    let folded = query.protocol;
    let slot = query.slot;
    if folded != protocol::TCP && folded != protocol::UDP {
        // Only the kernel itself answers other protocols on a local address (ping, raw).
        return Owner::Identity(query.local_identity);
    }
    let sk = lookup_local(ctx, &query.dst_addr, query.dst_port, folded);
    if sk.is_null() {
        return Owner::Identity(query.local_identity);
    }
    let key = listener_key(sk, query.netns, folded);
    // SAFETY: `sk` came from a lookup helper and is released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    // SAFETY: hash map values are read-only copies for us.
    let Some(listener) = (unsafe { LISTENERS.get(key) }).copied() else {
        count(counter::DEFERRED_LOCAL);
        return Owner::Defer;
    };
    let cgroup = CgroupKey {
        cgroup_id: listener.cgroup_id,
        slot,
        _pad: 0,
    };
    // SAFETY: as above.
    match unsafe { CGROUP_IDENTITY.get(cgroup) } {
        Some(label) => Owner::Identity(label.identity),
        None => {
            count(counter::DEFERRED_LOCAL);
            Owner::Defer
        }
    }
}

/// The owner of the local socket reached, for the packet layer: the kernel's own record of the
/// socket's cgroup. A socket outside the managed subtree belongs to the node; one inside it whose
/// cgroup is not labelled yet (brand new) fails closed until the daemon labels it.
///
/// Its own BPF function: its stack frame is not added to the hook's.
#[inline(never)]
pub(crate) fn owner_from_kernel(ctx: *mut c_void, query: &LocalQuery, runtime: &Runtime) -> Owner {
    let folded = query.protocol;
    let local_identity = query.local_identity;
    if folded != protocol::TCP && folded != protocol::UDP {
        return Owner::Identity(local_identity);
    }
    let sk = lookup_local(ctx, &query.dst_addr, query.dst_port, folded);
    if sk.is_null() {
        return Owner::Identity(local_identity);
    }
    // SAFETY: `sk` is a referenced socket from a lookup helper, released right after.
    let (cgroup_id, root_ancestor) = unsafe {
        (
            bpf_sk_cgroup_id(sk.cast()),
            bpf_sk_ancestor_cgroup_id(sk.cast(), runtime.root_level as i32),
        )
    };
    // SAFETY: as above; released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    let key = CgroupKey {
        cgroup_id,
        slot: query.slot,
        _pad: 0,
    };
    // SAFETY: hash map values are read-only copies for us.
    match unsafe { CGROUP_IDENTITY.get(key) } {
        Some(label) => Owner::Identity(label.identity),
        None if runtime.root_cgroup_id != 0 && root_ancestor == runtime.root_cgroup_id => {
            Owner::Unresolved
        }
        None => Owner::Identity(local_identity),
    }
}

/// Who sent a packet that arrived from a local address: the socket the kernel would deliver a
/// packet of the reverse direction to, in the receiving socket's namespace.
pub(crate) enum Sender {
    /// A socket of the managed subtree: its own egress judged the flow, with both identities.
    Managed(u32),
    /// Not a socket of the subtree (a process outside it, the kernel itself): the node.
    Node,
}

/// Finds the sender of a packet that arrived at `ends`' local end from a local address.
#[inline(always)]
pub(crate) fn sender(ctx: *mut c_void, ends: &Ends, slot: u32) -> Sender {
    let runtime = crate::maps::runtime();
    if ends.folded != protocol::TCP && ends.folded != protocol::UDP {
        return Sender::Node;
    }
    let sk = lookup_remote(ctx, ends);
    if sk.is_null() {
        return Sender::Node;
    }
    // SAFETY: `sk` is a referenced socket from a lookup helper, released right after.
    let (cgroup_id, root_ancestor) = unsafe {
        (
            bpf_sk_cgroup_id(sk.cast()),
            bpf_sk_ancestor_cgroup_id(sk.cast(), runtime.root_level as i32),
        )
    };
    // SAFETY: as above; released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    if runtime.root_cgroup_id == 0 || root_ancestor != runtime.root_cgroup_id {
        return Sender::Node;
    }
    let key = CgroupKey {
        cgroup_id,
        slot,
        _pad: 0,
    };
    // SAFETY: hash map values are read-only copies for us. An unlabelled new cgroup's socket was
    // judged (and held) by its own egress; the identity only names it in memory.
    Sender::Managed(unsafe { CGROUP_IDENTITY.get(key) }.map_or(0, |label| label.identity))
}

/// Whether a TCP socket listens on `addr:port` in the context's namespace: a flow on that port
/// that nothing remembers was accepted there, not opened from it. Its own BPF function: its stack
/// frame is not added to the hook's.
#[inline(never)]
pub(crate) fn listening(ctx: *mut c_void, addr: &[u8; 16], port: u16) -> bool {
    let sk = lookup_local(ctx, addr, port, protocol::TCP);
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is a referenced socket from a lookup helper; `state` is one of its fields.
    let state = unsafe { field::<_, { sock::STATE }>(sk) };
    // SAFETY: released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    state == sock::TCP_LISTEN
}

/// Whether the socket that will receive the arriving packet of `ends` (local end = destination)
/// belongs to the managed subtree, whose own ingress program judges it. TC cannot ask the kernel
/// for a socket's cgroup, so this is `LISTENERS`' answer: sockets bound inside the subtree while
/// the programs ran. TCP finds listeners and established sockets, anything else UDP sockets. Its
/// own BPF function: its stack frame is not added to the caller's.
#[inline(never)]
pub(crate) fn receiver_in_subtree(ctx: *mut c_void, ends: &Ends) -> bool {
    if ends.folded != protocol::TCP && ends.folded != protocol::UDP {
        return false;
    }
    let ports = (u32::from(ends.remote_port) << 16) | u32::from(ends.local_port);
    let sk = if is_ipv4_mapped(&ends.local_addr) {
        lookup_v4::<false>(ctx, &ends.remote_addr, &ends.local_addr, ports, ends.folded)
    } else {
        lookup_v6::<false>(ctx, &ends.remote_addr, &ends.local_addr, ports, ends.folded)
    };
    if sk.is_null() {
        return false;
    }
    let key = listener_key(sk, crate::maps::runtime().node_netns_cookie, ends.folded);
    // SAFETY: `sk` came from a lookup helper and is released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    // SAFETY: hash map values are read-only copies for us.
    unsafe { LISTENERS.get(key) }.is_some()
}

/// Whether any TCP socket (established, request or time-wait) matches the arriving segment of
/// `ends` exactly: a segment without one is stray. Its own BPF function: its stack frame is not
/// added to the caller's.
#[inline(never)]
pub(crate) fn socket_exists(ctx: *mut c_void, ends: &Ends) -> bool {
    let ports = (u32::from(ends.remote_port) << 16) | u32::from(ends.local_port);
    let sk = if is_ipv4_mapped(&ends.local_addr) {
        lookup_v4::<true>(
            ctx,
            &ends.remote_addr,
            &ends.local_addr,
            ports,
            protocol::TCP,
        )
    } else {
        lookup_v6::<true>(
            ctx,
            &ends.remote_addr,
            &ends.local_addr,
            ports,
            protocol::TCP,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` came from a lookup helper and is released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    true
}
