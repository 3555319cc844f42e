//! `cgroup/post_bind4`, `post_bind6`, `sock_release`: keep the listener map, so that a connection
//! to a local address is judged against the workload that bound the port, not the node.
//! These hooks never refuse anything: they only observe.

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockContext,
};
use enforcer_common::{ListenerKey, ListenerValue, counter, protocol};

use crate::{
    ctx::field,
    decide::fold_protocol,
    maps::{LISTENER_KEYS, LISTENERS, count},
};

/// Return value that lets the bind (or release) proceed.
const PROCEED: i32 = 1;

const SK_PROTOCOL: usize = offset_of!(bpf_sock, protocol);
const SK_SRC_PORT: usize = offset_of!(bpf_sock, src_port);

/// The listener-map key of a bound TCP or UDP socket; `None` for other protocols or no port.
/// Only `post_bind` may read the port.
#[inline(always)]
fn key(ctx: &SockContext) -> Option<ListenerKey> {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: `sk` is the program's context and both offsets are fields of it.
    let (raw_protocol, port) = unsafe {
        (
            field::<_, SK_PROTOCOL>(sk) as u8,
            field::<_, SK_SRC_PORT>(sk) as u16,
        )
    };
    let folded = fold_protocol(raw_protocol);
    if port == 0 || (folded != protocol::TCP && folded != protocol::UDP) {
        return None;
    }
    Some(ListenerKey {
        // SAFETY: a helper call on the program's own context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        port,
        protocol: folded,
        _pad: [0; 5],
    })
}

/// Records who bound the port. A full map cannot happen (LRU); any other failure is counted and
/// the connection to this socket is later judged with the node's identity.
#[inline(always)]
pub(crate) fn record_bind(ctx: &SockContext) -> i32 {
    if let Some(key) = key(ctx) {
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

/// Forgets the port when the socket that bound it goes away (and only that socket: another may
/// have bound the port since, with SO_REUSEPORT). Release may not read the socket's port, so the
/// key comes from `LISTENER_KEYS`.
#[inline(always)]
pub(crate) fn forget(ctx: &SockContext) -> i32 {
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the key is copied out before the entry is removed.
    if let Some(key) = unsafe { LISTENER_KEYS.get(cookie) }.copied() {
        // SAFETY: as above.
        let ours = unsafe { LISTENERS.get(key) }.is_some_and(|v| v.socket_cookie == cookie);
        // Entries already gone are as good as removed.
        if ours {
            let _ = LISTENERS.remove(key);
        }
        let _ = LISTENER_KEYS.remove(cookie);
    }
    PROCEED
}
