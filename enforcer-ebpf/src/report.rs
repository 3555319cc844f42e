//! Denials and audits to the ring buffer, and the verdict memory every judging hook shares.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg};

use enforcer_common::{
    EVENT_REVOKED, FLOW_EVENT_VERSION, FLOW_OUTBOUND, FlowEvent, ReportKey, ReportRepeats,
    SocketVerdict, VERDICT_ALLOW, VERDICT_AUDIT, counter,
    decide::{Decision, fold_protocol},
    hook, is_ipv4_mapped,
};

use crate::maps::{EVENTS, REPORT_SCRATCH, REPORT_WINDOW, REPORTS, SOCKET_VERDICTS, count};

/// What a hook knows of the flow besides the decision.
pub(crate) struct Flow {
    pub hook: u8,
    /// IANA protocol number as the socket or packet has it.
    pub protocol: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub generation: u32,
    /// The local socket and its network namespace, for user space to act on (0 when unknown).
    pub socket_cookie: u64,
    pub netns_cookie: u64,
}

/// Who acted, as far as the hook knows.
pub(crate) struct Actor {
    pub pid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// `EVENT_PROCESS_FROM_SOCKET`, `EVENT_NO_PROCESS` or 0 (the current task).
    pub flags: u8,
}

/// The current task as the actor (the socket hooks and LSM run in its context).
#[inline(always)]
pub(crate) fn current_task(cgroup_id: u64) -> Actor {
    let pid_tgid = bpf_get_current_pid_tgid();
    Actor {
        pid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        cgroup_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        flags: 0,
    }
}

/// Bumps the verdict counter (and the decision's extra counter) and reports denials and
/// audits; `actor` is only asked for a report, so allowed flows pay nothing for it. Returns
/// whether the flow may proceed.
#[inline(always)]
pub(crate) fn conclude<F: FnOnce() -> Actor>(flow: &Flow, decision: &Decision, actor: F) -> bool {
    if decision.extra_counter != counter::COUNT {
        count(decision.extra_counter);
    }
    let arrival = matches!(flow.hook, hook::SKB_INGRESS | hook::TC_INGRESS);
    match decision.verdict {
        VERDICT_ALLOW => {
            count(counter::ALLOWED);
            if arrival {
                count(counter::INGRESS_ALLOWED);
            }
            true
        }
        VERDICT_AUDIT => {
            count(counter::AUDITED);
            if arrival {
                count(counter::INGRESS_AUDITED);
            }
            submit(flow, decision, &actor());
            true
        }
        _ => {
            count(counter::DENIED);
            if arrival {
                count(counter::INGRESS_DENIED);
            }
            submit(flow, decision, &actor());
            false
        }
    }
}

/// Reports one attempt: a repeat of an attempt already reported in this window is only counted
/// in the aggregation map; a first attempt (or any, while that map is full or the scratch is in
/// use) is written to the ring buffer. A full ring buffer is counted, never silent.
#[inline(never)]
fn submit(flow: &Flow, decision: &Decision, actor: &Actor) {
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some(scratch) = REPORT_SCRATCH.get_ptr_mut(0) else {
        write_event(flow, decision, actor, now);
        return;
    };
    // The key is built in per-CPU scratch, not on the stack, which the deepest hooks have no
    // room left on. A program that interrupts another on this CPU (a softirq's packet hook
    // during a connect, or a task that preempted another in its hook) finds the scratch busy
    // and reports its attempt on its own: unaggregated, never miscounted. The flag is taken with
    // an atomic exchange, so that no two programs can both find it free, and cleared after the
    // key's last use with a volatile store, which the compiler does not move.
    // SAFETY: `scratch` points to this CPU's live map value.
    unsafe {
        if atomic_xchg::<u64, { AtomicOrdering::Acquire }>(&raw mut (*scratch).busy, 1) != 0 {
            write_event(flow, decision, actor, now);
            return;
        }
        fill_key(&mut (*scratch).key, flow, decision, actor);
        let aggregated = aggregate(&(*scratch).key, flow, actor, now);
        core::ptr::write_volatile(&raw mut (*scratch).busy, 0);
        if !aggregated {
            write_event(flow, decision, actor, now);
        }
    }
}

/// Per-CPU room for one [`ReportKey`], and whether a program on this CPU is using it.
#[repr(C)]
pub(crate) struct ReportScratch {
    busy: u64,
    key: ReportKey,
}

#[inline(always)]
fn fill_key(key: &mut ReportKey, flow: &Flow, decision: &Decision, actor: &Actor) {
    key.half = REPORT_WINDOW.get(0).map_or(0, |half| (*half & 1) as u8);
    key.hook = flow.hook;
    key.verdict = decision.verdict;
    key.reason = decision.reason;
    key.protocol = flow.protocol;
    key.ip_version = if is_ipv4_mapped(&flow.dst_addr) { 4 } else { 6 };
    key.flags = actor.flags;
    key._pad0 = 0;
    key.generation = flow.generation;
    key.rule_id = decision.rule_id;
    key.src_identity = decision.src_identity;
    key.dst_identity = decision.dst_identity;
    key.pid = actor.pid;
    key.uid = actor.uid;
    key.dst_port = flow.dst_port;
    key._pad1 = [0; 6];
    key.cgroup_id = actor.cgroup_id;
    key.src_addr = flow.src_addr;
    key.dst_addr = flow.dst_addr;
    key.socket_cookie = if actor.flags & EVENT_REVOKED != 0 {
        flow.socket_cookie
    } else {
        0
    };
}

/// Counts the attempt of `key` as a repeat, or records it as the first of its window; `false`
/// when it must go to the ring buffer: a first attempt, or any while the map is full (counted).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the zeroed record would be copied onto the BPF stack"
)]
fn aggregate(key: &ReportKey, flow: &Flow, actor: &Actor, now: u64) -> bool {
    if let Some(repeats) = REPORTS.get_ptr_mut(key) {
        add_repeat(repeats, now);
        return true;
    }
    // Inserted zeroed from read-only data and filled in place, so that no second record needs
    // room on the stack. BPF_NOEXIST: another CPU may have inserted the key since the lookup;
    // then this attempt is its repeat.
    if REPORTS.insert(key, &NO_REPEATS, BPF_NOEXIST).is_err() {
        if let Some(repeats) = REPORTS.get_ptr_mut(key) {
            add_repeat(repeats, now);
            return true;
        }
        count(counter::AGGREGATION_FULL);
    } else if let Some(repeats) = REPORTS.get_ptr_mut(key) {
        // SAFETY: a live map value; no other CPU writes these fields (only `count` and the
        // times of repeats, which a racing repeat may set first and which stay valid).
        unsafe {
            (*repeats).last_ns = now;
            (*repeats).netns_cookie = flow.netns_cookie;
            (*repeats).comm = actor.comm;
            (*repeats).src_port = flow.src_port;
        }
    }
    false
}

const BPF_NOEXIST: u64 = 1;

static NO_REPEATS: ReportRepeats = ReportRepeats {
    count: 0,
    first_ns: 0,
    last_ns: 0,
    netns_cookie: 0,
    comm: [0; 16],
    src_port: 0,
    _pad: [0; 6],
};

#[inline(always)]
fn add_repeat(repeats: *mut ReportRepeats, now: u64) {
    // SAFETY: `repeats` points to a live map value; the count is shared by every CPU and only
    // ever added to atomically; the times are plain stores, whichever CPU writes last wins.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*repeats).count, 1);
        if (*repeats).first_ns == 0 {
            (*repeats).first_ns = now;
        }
        (*repeats).last_ns = now;
    }
    count(counter::AGGREGATED);
}

/// Writes one event to the ring buffer. A call of its own, so that its temporaries do not add
/// to the frame of [`submit`] on the deepest hooks.
#[inline(never)]
fn write_event(flow: &Flow, decision: &Decision, actor: &Actor, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, writable ring-buffer record of `FlowEvent`'s size;
    // every field is written before submit, field by field so that no copy of the whole record
    // needs room on the BPF stack.
    unsafe {
        (*event).version = FLOW_EVENT_VERSION;
        (*event).hook = flow.hook;
        (*event).verdict = decision.verdict;
        (*event).reason = decision.reason;
        (*event).protocol = flow.protocol;
        (*event).ip_version = if is_ipv4_mapped(&flow.dst_addr) { 4 } else { 6 };
        (*event).flags = actor.flags;
        (*event).generation = flow.generation;
        (*event).rule_id = decision.rule_id;
        (*event).src_identity = decision.src_identity;
        (*event).dst_identity = decision.dst_identity;
        (*event).pid = actor.pid;
        (*event).uid = actor.uid;
        (*event).src_port = flow.src_port;
        (*event).dst_port = flow.dst_port;
        (*event)._pad1 = 0;
        (*event).cgroup_id = actor.cgroup_id;
        (*event).boot_ns = now;
        (*event).src_addr = flow.src_addr;
        (*event).dst_addr = flow.dst_addr;
        (*event).comm = actor.comm;
        (*event).socket_cookie = flow.socket_cookie;
        (*event).netns_cookie = flow.netns_cookie;
    }
    entry.submit(0);
}

/// Not a verdict: the layer leaves the flow to another (the fast path to the packet layer, the
/// packet layer to the receiver), which judges it.
pub(crate) const VERDICT_DEFER: u8 = 0;

/// Remembers a flow just judged on a socket, so that its packets cost one lookup and a packet
/// of another flow is judged again.
#[inline(always)]
pub(crate) fn remember(cookie: u64, memory: &SocketVerdict) {
    // SAFETY: hash map values are read-only copies for us.
    if unsafe { SOCKET_VERDICTS.get(cookie) }.is_some_and(|old| old.same_judgement(memory)) {
        // A repeat (datagrams to the same destination): a lookup is cheaper than an update, and
        // keeps the note that the flow table has the flow.
        return;
    }
    if SOCKET_VERDICTS.insert(cookie, memory, 0).is_err() {
        count(counter::ERR_SOCKET_UPDATE);
    }
}

/// The memory of an outbound flow the socket hooks judged.
#[inline(always)]
pub(crate) fn outbound_memory(flow: &Flow, decision: &Decision) -> SocketVerdict {
    SocketVerdict {
        peer_addr: flow.dst_addr,
        generation: flow.generation,
        port: port_of(flow.protocol, flow.dst_port),
        protocol: fold_protocol(flow.protocol),
        verdict: decision.verdict,
        direction: FLOW_OUTBOUND,
        tracked: 0,
        _pad: [0; 2],
        peer_identity: decision.dst_identity,
        local_identity: decision.src_identity,
    }
}

/// The port as the verdict memory compares it: none for ICMP.
#[inline(always)]
pub(crate) const fn port_of(raw_protocol: u8, port: u16) -> u16 {
    if fold_protocol(raw_protocol) == enforcer_common::protocol::ICMP {
        0
    } else {
        port
    }
}
