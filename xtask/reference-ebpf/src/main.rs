//! The floor the enforcer's programs are measured against (`cargo xtask bench`, measure
//! `programs`): `cgroup/connect4` programs that do nothing but allow, or one hash lookup, or one
//! hash and one LPM trie lookup, each keyed by the connection's destination so that the lookups
//! cannot be folded away. The bench fills the maps to the entry count of the policy it compares
//! with.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each program its context by value"
)]

use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::SockAddrContext,
};

/// As large as the enforcer's rule map, so that both hash the same way.
const ENTRIES: u32 = 262_144;

#[map]
static REFERENCE_HASH: HashMap<u64, u64> = HashMap::with_max_entries(ENTRIES, 0);

#[map]
static REFERENCE_TRIE: LpmTrie<[u32; 4], u64> = LpmTrie::with_max_entries(ENTRIES, 0);

/// Allows: the cost of running a program at all.
#[cgroup_sock_addr(connect4)]
pub fn reference_empty(_ctx: SockAddrContext) -> i32 {
    1
}

/// One hash lookup, then allows.
#[cgroup_sock_addr(connect4)]
pub fn reference_hash(ctx: SockAddrContext) -> i32 {
    let (addr, port) = destination(&ctx);
    let key = (u64::from(addr) << 32) | u64::from(port);
    // SAFETY: the value is only tested for presence, never read.
    let hit = unsafe { REFERENCE_HASH.get(key) }.is_some();
    core::hint::black_box(hit);
    1
}

/// One hash lookup and one LPM trie lookup (what judging a rule by identities costs at least),
/// then allows.
#[cgroup_sock_addr(connect4)]
pub fn reference_hash_lpm(ctx: SockAddrContext) -> i32 {
    let (addr, port) = destination(&ctx);
    let key = (u64::from(addr) << 32) | u64::from(port);
    // SAFETY: as in `reference_hash`.
    let hit = unsafe { REFERENCE_HASH.get(key) }.is_some();
    let found = REFERENCE_TRIE
        .get(Key::new(128, [addr, port, 0, 0]))
        .is_some();
    core::hint::black_box((hit, found));
    1
}

fn destination(ctx: &SockAddrContext) -> (u32, u32) {
    // SAFETY: the kernel hands every sock_addr program a valid `bpf_sock_addr`.
    let sock_addr = unsafe { &*ctx.sock_addr };
    (sock_addr.user_ip4, sock_addr.user_port)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never executed.
    loop {}
}
