//! BPF LSM programs: task-keyed hooks for what the cgroup hooks cannot see, because those run by
//! the cgroup a socket was created in. `socket_connect` and `socket_sendmsg` judge sockets used
//! by a task of the managed subtree but created outside it (passed in with `SCM_RIGHTS`, by
//! socket activation); `socket_create` refuses packet sockets (`AF_PACKET`, `SOCK_PACKET`), which
//! bypass every IP-layer hook, to segment members.
//!
//! These programs are global (an LSM program is not attached to a cgroup): each first asks
//! whether the current task is below this instance's managed root, and does nothing otherwise.
//! They only load where the kernel runs BPF LSM (`/sys/kernel/security/lsm` lists `bpf`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_probe_read_kernel},
    programs::LsmContext,
};
use enforcer_common::{
    IDENTITY_PACKET_SOCKETS, IDENTITY_SEGMENTED, counter,
    decide::{Decision, PolicyView as _, decide},
    hook, ipv4_mapped, protocol, reason,
};

use crate::{
    cgroup::{TaskCgroup, source_identity},
    local::{Place, place},
    maps::{MANAGED_ROOT, SOCKET_OWNERS, count, runtime},
    report::{Flow, conclude, current_task},
    view::MapView,
};

const ALLOW: i32 = 0;
const EPERM: i32 = -1;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_PACKET: i32 = 17;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;
const SOCK_PACKET: i32 = 10;
/// `type` carries `SOCK_NONBLOCK`/`SOCK_CLOEXEC` above these bits.
const SOCK_TYPE_MASK: i32 = 0xf;

/// Offsets in `struct socket` and `struct msghdr`; unchanged since Linux 5.3 (checked against the
/// kernel's BTF by the verifier for the pointer, by the tests for the rest).
const SOCKET_TYPE: usize = 4;
const SOCKET_SK: usize = 24;
const MSGHDR_NAME: usize = 0;

/// The start of a `sockaddr_in` / `sockaddr_in6`, as the kernel copied it from the caller.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrPrefix {
    family: u16,
    /// Network byte order.
    port: u16,
    /// `sin_addr` for IPv4; `sin6_flowinfo` for IPv6.
    word: u32,
    /// `sin6_addr` for IPv6.
    addr6: [u8; 16],
}

#[inline(always)]
fn in_managed_subtree() -> bool {
    MANAGED_ROOT.current_task_under_cgroup(0).unwrap_or(false)
}

/// `socket_create(family, type, protocol, kern)`.
#[inline(always)]
pub(crate) fn socket_create(ctx: &LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let family: i32 = ctx.arg(0);
    let kind: i32 = ctx.arg(1);
    let kern: i32 = ctx.arg(3);
    let packet = family == AF_PACKET || (kind & SOCK_TYPE_MASK) == SOCK_PACKET;
    if !packet || kern != 0 || !in_managed_subtree() {
        return ALLOW;
    }
    let runtime = runtime();
    // SAFETY: a plain helper call.
    if unsafe { bpf_get_current_cgroup_id() } == runtime.daemon_cgroup_id {
        count(counter::SELF_EXEMPT);
        return ALLOW;
    }
    let exempt = MapView::active().is_some_and(|view| {
        source_identity(&TaskCgroup, view.slot).is_ok_and(|identity| {
            view.identity_info(identity).is_some_and(|info| {
                info.flags & IDENTITY_SEGMENTED == 0 || info.flags & IDENTITY_PACKET_SOCKETS != 0
            })
        })
    });
    if exempt {
        ALLOW
    } else {
        count(counter::PACKET_SOCKET_REFUSED);
        EPERM
    }
}

/// `socket_connect(sock, address, addrlen)`.
#[inline(always)]
pub(crate) fn socket_connect(ctx: &LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let sock: *const u8 = ctx.arg(0);
    let address: *const SockaddrPrefix = ctx.arg(1);
    judge_outside_socket(sock, address, hook::LSM_CONNECT)
}

/// `socket_sendmsg(sock, msg, size)`: only sends with an explicit address; a socket connected
/// outside the subtree keeps the destination it was given there.
#[inline(always)]
pub(crate) fn socket_sendmsg(ctx: &LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    // SAFETY: `msg` is the hook's `struct msghdr *`; the helper reads kernel memory safely.
    let Ok(name) =
        (unsafe { bpf_probe_read_kernel(msg.add(MSGHDR_NAME).cast::<*const SockaddrPrefix>()) })
    else {
        return ALLOW;
    };
    if name.is_null() {
        return ALLOW;
    }
    judge_outside_socket(sock, name, hook::LSM_SENDMSG)
}

#[inline(always)]
fn judge_outside_socket(sock: *const u8, address: *const SockaddrPrefix, hook: u8) -> i32 {
    if !in_managed_subtree() {
        return ALLOW;
    }
    // SAFETY: `sock` is the hook's `struct socket *`; `sk` is a pointer field at this offset, which
    // the verifier types from the kernel's BTF.
    let sk = unsafe { core::ptr::read_volatile(sock.add(SOCKET_SK).cast::<*mut c_void>()) };
    if sk.is_null() {
        return ALLOW;
    }
    // Created inside the subtree: its own cgroup hooks judge it, with more context.
    // SAFETY: `sk` is a socket pointer typed by BTF.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // SAFETY: hash map values are read-only copies for us.
    if unsafe { SOCKET_OWNERS.get(cookie) }.is_some() {
        return ALLOW;
    }
    // SAFETY: the helper reads kernel memory safely; a failed read is a failed judgement.
    let Ok(addr) = (unsafe { bpf_probe_read_kernel(address) }) else {
        count(counter::ERR_BAD_FAMILY);
        return EPERM;
    };
    let dst_addr = match addr.family {
        AF_INET => ipv4_mapped(addr.word.to_ne_bytes()),
        AF_INET6 => addr.addr6,
        // Not an IP destination (AF_UNSPEC disconnects, AF_UNIX): nothing to judge here.
        _ => return ALLOW,
    };
    // SAFETY: as for `sk`; `type` is a `short` at this offset.
    let kind = unsafe { bpf_probe_read_kernel(sock.add(SOCKET_TYPE).cast::<u16>()) }.unwrap_or(0);
    // The socket's protocol number is not at a stable offset: judge by type, which is what a
    // socket created outside can be used for. Raw sockets match only `any`.
    let raw_protocol = match kind {
        SOCK_STREAM => protocol::TCP,
        SOCK_DGRAM => protocol::UDP,
        _ => protocol::OTHER,
    };
    let dst_port = u16::from_be(addr.port);
    let mut flow = Flow {
        hook,
        protocol: raw_protocol,
        src_addr: [0; 16],
        dst_addr,
        src_port: 0,
        dst_port,
        generation: 0,
        socket_cookie: cookie,
        netns_cookie: 0,
    };
    let runtime = runtime();
    // SAFETY: a plain helper call.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if cgroup_id == runtime.daemon_cgroup_id {
        count(counter::SELF_EXEMPT);
        return ALLOW;
    }
    let decision = match MapView::active() {
        None => Decision::fail_closed(0, reason::UNRESOLVED, counter::COUNT),
        Some(view) => {
            flow.generation = view.config.generation;
            match source_identity(&TaskCgroup, view.slot) {
                Err(why) => Decision::fail_closed(0, why, counter::COUNT),
                // The receiving socket of a local destination cannot be looked up from here.
                Ok(src) => match place(&view, &runtime, 0, &dst_addr) {
                    Place::Remote(dst) => {
                        decide(&view, &view.config, src, dst, raw_protocol, dst_port)
                    }
                    Place::Local | Place::ElsewhereOnNode => Decision::fail_closed(
                        src,
                        reason::UNRESOLVED_LOCAL,
                        counter::ERR_UNRESOLVED_LOCAL,
                    ),
                },
            }
        }
    };
    if conclude(&flow, &decision, || current_task(cgroup_id)) {
        ALLOW
    } else {
        EPERM
    }
}
