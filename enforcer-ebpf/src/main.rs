//! The enforcer's kernel programs, in layers, each for what the one above cannot see:
//!
//! - `sock_addr`: `connect4/6`, `sendmsg4/6` — the fast path, `EPERM` before any packet;
//! - `skb`: `cgroup_skb/egress` and `ingress` — every packet a socket in the subtree sends or
//!   receives, judged by its real (post-NAT) addresses and protocol in the direction that opened
//!   its flow, one lookup for a flow already judged, judged again when the policy changes;
//! - `tc`: tcx ingress and egress on the node's interfaces — arrivals no socket of the subtree
//!   receives (closed ports, scans, processes outside the subtree, ICMP echo), and the flows those
//!   processes open, so that their replies are known;
//! - `sockopt`: `cgroup/setsockopt` — no source routing for segment members;
//! - `lsm`: BPF LSM — sockets created outside the subtree, packet sockets;
//! - `sock`: `sock_create`, `post_bind4/6`, `sock_release` — what the judges need to know.
//!
//! The decision itself is `enforcer_common::decide`, shared with user space; maps are in `maps`.
#![no_std]
#![no_main]
// `atomic_xadd`, `atomic_xchg`: core's atomics offer neither on the BPF target (it declares no
// compare-and-swap), while the instructions (BPF_ATOMIC add and exchange) exist.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cgroup;
mod ctx;
mod local;
mod lsm;
mod maps;
mod packet;
mod report;
mod skb;
mod sock;
mod sock_addr;
mod sockopt;
mod tc;
mod view;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, classifier, lsm},
    programs::{
        LsmContext, SkBuffContext, SockAddrContext, SockContext, SockoptContext, TcContext,
    },
};
use enforcer_common::hook;

macro_rules! program {
    ($attr:meta, $name:ident, $ctx:ty, $body:expr) => {
        #[$attr]
        pub fn $name(ctx: $ctx) -> i32 {
            ($body)(&ctx)
        }
    };
}

program!(cgroup_sock_addr(connect4), connect4, SockAddrContext, |c| {
    sock_addr::judge::<false>(c, hook::CONNECT4)
});
program!(cgroup_sock_addr(connect6), connect6, SockAddrContext, |c| {
    sock_addr::judge::<true>(c, hook::CONNECT6)
});
program!(cgroup_sock_addr(sendmsg4), sendmsg4, SockAddrContext, |c| {
    sock_addr::judge::<false>(c, hook::SENDMSG4)
});
program!(cgroup_sock_addr(sendmsg6), sendmsg6, SockAddrContext, |c| {
    sock_addr::judge::<true>(c, hook::SENDMSG6)
});
program!(
    cgroup_skb(egress),
    egress,
    SkBuffContext,
    skb::judge_packet::<false>
);
program!(
    cgroup_skb(ingress),
    ingress,
    SkBuffContext,
    skb::judge_packet::<true>
);
program!(classifier, arrivals, TcContext, tc::arrivals);
program!(classifier, departures, TcContext, tc::departures);
program!(
    cgroup_sockopt(setsockopt),
    setsockopt,
    SockoptContext,
    sockopt::setsockopt
);
program!(
    cgroup_sock(sock_create),
    sock_create,
    SockContext,
    sock::record_owner
);
program!(
    cgroup_sock(post_bind4),
    post_bind4,
    SockContext,
    sock::record_bind::<false>
);
program!(
    cgroup_sock(post_bind6),
    post_bind6,
    SockContext,
    sock::record_bind::<true>
);
program!(
    cgroup_sock(sock_release),
    sock_release,
    SockContext,
    sock::forget
);
program!(
    lsm(hook = "socket_create"),
    socket_create,
    LsmContext,
    lsm::socket_create
);
program!(
    lsm(hook = "socket_connect"),
    socket_connect,
    LsmContext,
    lsm::socket_connect
);
program!(
    lsm(hook = "socket_sendmsg"),
    socket_sendmsg,
    LsmContext,
    lsm::socket_sendmsg
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
