//! `cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6`: egress judged when a socket connects or
//! sends a datagram to an explicit address, with the opening process as context.

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_ktime_get_boot_ns,
    },
    programs::SockAddrContext,
};
use enforcer_common::{
    FLOW_EVENT_VERSION, FlowEvent, VERDICT_ALLOW, VERDICT_AUDIT, counter, ipv4_mapped,
    is_ipv4_mapped,
};

use crate::{
    ctx::field,
    decide::{Connection, Decision, decide},
    maps::{EVENTS, count},
};

/// Return values of `cgroup_sock_addr` programs: 0 makes the syscall fail with `EPERM`.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

const AF_INET6: u32 = 10;

const USER_IP4: usize = offset_of!(bpf_sock_addr, user_ip4);
const USER_IP6: usize = offset_of!(bpf_sock_addr, user_ip6);
const USER_IP6_1: usize = USER_IP6 + 4;
const USER_IP6_2: usize = USER_IP6 + 8;
const USER_IP6_3: usize = USER_IP6 + 12;
const USER_PORT: usize = offset_of!(bpf_sock_addr, user_port);
const PROTOCOL: usize = offset_of!(bpf_sock_addr, protocol);
const SK_FAMILY: usize = offset_of!(bpf_sock, family);
const SK_SRC_IP4: usize = offset_of!(bpf_sock, src_ip4);
const SK_SRC_IP6: usize = offset_of!(bpf_sock, src_ip6);
const SK_SRC_IP6_1: usize = SK_SRC_IP6 + 4;
const SK_SRC_IP6_2: usize = SK_SRC_IP6 + 8;
const SK_SRC_IP6_3: usize = SK_SRC_IP6 + 12;
const SK_SRC_PORT: usize = offset_of!(bpf_sock, src_port);

/// Judges one hook invocation; `V6` selects the address fields, which the verifier only lets each
/// hook family read for its own family. Every path ends in `PROCEED` or `REFUSE` and bumps one
/// verdict counter.
#[inline(always)]
pub(crate) fn judge<const V6: bool>(ctx: &SockAddrContext, hook: u8) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY (all `field` calls here): `sa` is the program's context and every offset one of its
    // fields.
    let dst_addr = if V6 {
        ipv6_bytes(unsafe {
            [
                field::<_, USER_IP6>(sa),
                field::<_, USER_IP6_1>(sa),
                field::<_, USER_IP6_2>(sa),
                field::<_, USER_IP6_3>(sa),
            ]
        })
    } else {
        ipv4_mapped(unsafe { field::<_, USER_IP4>(sa) }.to_ne_bytes())
    };
    // `user_port` holds the port in network byte order in its low 16 bits.
    let dst_port = u16::from_be(unsafe { field::<_, USER_PORT>(sa) } as u16);
    let conn = Connection {
        dst_addr,
        dst_port,
        protocol: unsafe { field::<_, PROTOCOL>(sa) } as u8,
        // SAFETY: a helper call on the program's own context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
    };
    let decision = decide(&conn);
    match decision.verdict {
        VERDICT_ALLOW => {
            count(counter::ALLOWED);
            PROCEED
        }
        VERDICT_AUDIT => {
            count(counter::AUDITED);
            report(ctx, hook, &conn, &decision);
            PROCEED
        }
        _ => {
            count(counter::DENIED);
            report(ctx, hook, &conn, &decision);
            REFUSE
        }
    }
}

#[inline(always)]
fn ipv6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let word = words[i].to_ne_bytes();
        bytes[i * 4] = word[0];
        bytes[i * 4 + 1] = word[1];
        bytes[i * 4 + 2] = word[2];
        bytes[i * 4 + 3] = word[3];
        i += 1;
    }
    bytes
}

/// The socket's own address and port, when the kernel has bound them already (zeros otherwise;
/// user space then asks the routing table).
#[inline(always)]
fn source(ctx: &SockAddrContext) -> ([u8; 16], u16) {
    // SAFETY: `sk` is a field of the context; it is always set for cgroup_sock_addr programs, and
    // checked anyway.
    let sk: *const bpf_sock = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return ([0; 16], 0);
    }
    // SAFETY (all `field` calls here): `sk` is a non-null `bpf_sock` and every offset one of its
    // fields.
    let addr = if unsafe { field::<_, SK_FAMILY>(sk) } == AF_INET6 {
        ipv6_bytes(unsafe {
            [
                field::<_, SK_SRC_IP6>(sk),
                field::<_, SK_SRC_IP6_1>(sk),
                field::<_, SK_SRC_IP6_2>(sk),
                field::<_, SK_SRC_IP6_3>(sk),
            ]
        })
    } else {
        ipv4_mapped(unsafe { field::<_, SK_SRC_IP4>(sk) }.to_ne_bytes())
    };
    (addr, unsafe { field::<_, SK_SRC_PORT>(sk) } as u16)
}

/// Writes a denial or audit to the ring buffer; a full buffer is counted, never silent.
#[inline(always)]
fn report(ctx: &SockAddrContext, hook: u8, conn: &Connection, decision: &Decision) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let (src_addr, src_port) = source(ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(FlowEvent {
        version: FLOW_EVENT_VERSION,
        hook,
        verdict: decision.verdict,
        reason: decision.reason,
        protocol: conn.protocol,
        ip_version: if is_ipv4_mapped(&conn.dst_addr) { 4 } else { 6 },
        _pad0: 0,
        generation: decision.generation,
        rule_id: decision.rule_id,
        src_identity: decision.src_identity,
        dst_identity: decision.dst_identity,
        pid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        src_port,
        dst_port: conn.dst_port,
        _pad1: 0,
        // SAFETY: plain helper calls without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        // SAFETY: as above.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        src_addr,
        dst_addr: conn.dst_addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}
