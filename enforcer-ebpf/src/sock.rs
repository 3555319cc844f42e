//! `cgroup/sock_create`, `post_bind4`, `post_bind6`, `sock_release`: what the judging hooks need
//! to know about sockets of the managed subtree. `sock_create` records who made each inet socket
//! (the packet layer runs where the current task may be anyone); `post_bind` records the exact
//! address each socket is bound to, so a local connection resolves to the workload whose socket
//! the kernel will deliver it to. These hooks never refuse anything.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie,
    },
    programs::SockContext,
};
use enforcer_common::{
    ListenerKey, ListenerValue, SocketOwner, counter, decide::fold_protocol, protocol,
};

use crate::{
    ctx::{bound_address, field, sock},
    maps::{LISTENER_KEYS, LISTENERS, SOCKET_OWNERS, count},
};

/// Return value that lets the creation, bind or release proceed.
const PROCEED: i32 = 1;

/// Records the creator of a new inet socket.
#[inline(always)]
pub(crate) fn record_owner(ctx: &SockContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let owner = SocketOwner {
        // SAFETY: plain helper calls.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        // SAFETY: a helper call on the program's own context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        pid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if SOCKET_OWNERS.insert(cookie, owner, 0).is_err() {
        count(counter::ERR_SOCKET_UPDATE);
    }
    PROCEED
}

/// The listener-map key of a bound TCP or UDP socket; `None` for other protocols or no port.
/// Only `post_bind` may read the bound address and port, and each only of its own family (`V6`).
#[inline(always)]
fn key<const V6: bool>(ctx: &SockContext) -> Option<ListenerKey> {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY (all `field` calls): `sk` is the program's context and every offset a field of it.
    let (raw_protocol, port) = unsafe {
        (
            field::<_, { sock::PROTOCOL }>(sk) as u8,
            field::<_, { sock::SRC_PORT }>(sk) as u16,
        )
    };
    let folded = fold_protocol(raw_protocol);
    if port == 0 || (folded != protocol::TCP && folded != protocol::UDP) {
        return None;
    }
    // SAFETY: as above.
    let addr = unsafe { bound_address(sk, V6) };
    Some(ListenerKey {
        // SAFETY: a helper call on the program's own context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr,
        port,
        protocol: folded,
        family: if V6 { 6 } else { 4 },
        _pad: 0,
    })
}

/// Records who bound the address. A full map is counted; connections to that socket are then
/// left to the packet layer, which asks the kernel for the socket's cgroup.
#[inline(always)]
pub(crate) fn record_bind<const V6: bool>(ctx: &SockContext) -> i32 {
    if let Some(key) = key::<V6>(ctx) {
        let value = ListenerValue {
            // SAFETY: plain helper calls.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            // SAFETY: a helper call on the program's own context.
            socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        };
        if LISTENERS.insert(key, value, 0).is_err()
            || LISTENER_KEYS.insert(value.socket_cookie, key, 0).is_err()
        {
            count(counter::ERR_LISTENER_UPDATE);
        }
    }
    PROCEED
}

/// Forgets a socket's bound address when it goes away (only if the entry is still its own:
/// another socket may have bound the same address since, with SO_REUSEPORT). Its owner and
/// verdict memory are left to age out of their LRU maps: socket cookies are never reused, so a
/// dead entry can never answer for another socket, and every close skips two map updates.
#[inline(always)]
pub(crate) fn forget(ctx: &SockContext) -> i32 {
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the key is copied out before the entry is removed. Entries already gone are as
    // good as removed.
    if let Some(key) = unsafe { LISTENER_KEYS.get(cookie) }.copied() {
        // SAFETY: as above.
        let ours = unsafe { LISTENERS.get(key) }.is_some_and(|v| v.socket_cookie == cookie);
        if ours {
            let _ = LISTENERS.remove(key);
        }
        let _ = LISTENER_KEYS.remove(cookie);
    }
    PROCEED
}
