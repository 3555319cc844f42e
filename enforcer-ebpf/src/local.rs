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
        bpf_sk_release,
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
        count(counter::ERR_UNRESOLVED_LOCAL);
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

/// Finds the socket that would receive `dst_addr:dst_port` in the context's namespace.
/// Returns a referenced socket the caller must release, or null.
#[inline(always)]
fn lookup(ctx: *mut c_void, dst_addr: &[u8; 16], dst_port: u16, folded: u8) -> *mut bpf_sock {
    let port_be = dst_port.to_be();
    let (mut tuple, size) = if is_ipv4_mapped(dst_addr) {
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                        saddr: 0,
                        daddr: u32::from_ne_bytes([
                            dst_addr[12],
                            dst_addr[13],
                            dst_addr[14],
                            dst_addr[15],
                        ]),
                        sport: 0,
                        dport: port_be,
                    },
                },
            },
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(),
        )
    } else {
        let mut daddr = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            daddr[i] = u32::from_ne_bytes([
                dst_addr[i * 4],
                dst_addr[i * 4 + 1],
                dst_addr[i * 4 + 2],
                dst_addr[i * 4 + 3],
            ]);
            i += 1;
        }
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                        saddr: [0; 4],
                        daddr,
                        sport: 0,
                        dport: port_be,
                    },
                },
            },
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(),
        )
    };
    // SAFETY: the tuple lives on our stack for the call; the helper copies what it needs.
    unsafe {
        if folded == protocol::TCP {
            bpf_sk_lookup_tcp(ctx, &raw mut tuple, size as u32, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(ctx, &raw mut tuple, size as u32, CURRENT_NETNS, 0)
        }
    }
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
    let sk = lookup(ctx, &query.dst_addr, query.dst_port, folded);
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
    let sk = lookup(ctx, &query.dst_addr, query.dst_port, folded);
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
