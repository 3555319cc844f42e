//! The enforcer's kernel programs. One module per hook family; maps in `maps`; the decision, shared
//! by every hook, in `decide`.
#![no_std]
#![no_main]

mod ctx;
mod decide;
mod maps;
mod sock;
mod sock_addr;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use enforcer_common::hook;

#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr::judge::<false>(&ctx, hook::CONNECT4)
}

#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr::judge::<true>(&ctx, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr::judge::<false>(&ctx, hook::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr::judge::<true>(&ctx, hook::SENDMSG6)
}

#[cgroup_sock(post_bind4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    sock::record_bind(&ctx)
}

#[cgroup_sock(post_bind6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    sock::record_bind(&ctx)
}

#[cgroup_sock(sock_release)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro fixes the signature"
)]
pub fn sock_release(ctx: SockContext) -> i32 {
    sock::forget(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
