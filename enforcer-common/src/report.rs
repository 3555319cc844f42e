//! In-kernel aggregation of reports: repeats of one attempt are counted in a map instead of
//! written to the ring buffer one by one, so that a flood (a scan, a retry loop) costs map
//! updates, and user space turns each window's repeats into one event with a `count`.
//!
//! The first attempt of a [`ReportKey`] in a window goes to the ring buffer at once; the kernel
//! then inserts the key into [`REPORTS`](crate::maps::REPORTS) under the current window half
//! ([`REPORT_WINDOW`](crate::maps::REPORT_WINDOW)), and later attempts only add to its
//! [`ReportRepeats::count`]. User space closes a window by flipping the half, waiting until no
//! program can still be counting into the old one, and draining (reading and deleting) every
//! entry of the old half. Each attempt is therefore counted exactly once: in a ring-buffer record,
//! in a drained count, or in a loss counter (`events_lost` when the ring buffer was full for a
//! first attempt; a full aggregation map sends every attempt to the ring buffer instead,
//! counted `aggregation_full`).

/// Entries of [`REPORTS`](crate::maps::REPORTS), both halves together. Beyond it, attempts go to
/// the ring buffer one by one (counted), never uncounted.
pub const REPORT_ENTRIES: u32 = 32_768;

/// What makes two attempts "the same" (POLICY.md: source identity and process, destination,
/// port, protocol, verdict), plus what decided them: the hook, reason, rule and generation, so
/// that an aggregated event names the rule that decided every attempt it counts. The source
/// port is not part of it (each retry picks a new one); the socket cookie only for revoked
/// flows, whose every socket user space must abort.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReportKey {
    /// The window half, 0 or 1.
    pub half: u8,
    pub hook: u8,
    pub verdict: u8,
    pub reason: u8,
    pub protocol: u8,
    pub ip_version: u8,
    /// The event flags ([`EVENT_PROCESS_FROM_SOCKET`](crate::EVENT_PROCESS_FROM_SOCKET), …).
    pub flags: u8,
    pub _pad0: u8,
    pub generation: u32,
    pub rule_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub pid: u32,
    pub uid: u32,
    /// Host byte order.
    pub dst_port: u16,
    pub _pad1: [u8; 6],
    pub cgroup_id: u64,
    /// Network byte order, IPv4-mapped.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Only for revoked flows; 0 otherwise.
    pub socket_cookie: u64,
}

/// The repeats of one [`ReportKey`] in one window, after the first attempt (which went to the
/// ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportRepeats {
    /// Attempts after the first; added to atomically, by every CPU.
    pub count: u64,
    /// `bpf_ktime_get_boot_ns` of the first repeat (0 while there is none).
    pub first_ns: u64,
    /// `bpf_ktime_get_boot_ns` of the latest repeat.
    pub last_ns: u64,
    /// As on the first attempt.
    pub netns_cookie: u64,
    /// The task's `comm` at the first attempt, for a first attempt the ring buffer lost.
    pub comm: [u8; 16],
    /// The source port of the first attempt.
    pub src_port: u16,
    pub _pad: [u8; 6],
}

const _: () = {
    assert!(size_of::<ReportKey>() == 88);
    assert!(core::mem::offset_of!(ReportKey, generation) == 8);
    assert!(core::mem::offset_of!(ReportKey, dst_port) == 32);
    assert!(core::mem::offset_of!(ReportKey, cgroup_id) == 40);
    assert!(core::mem::offset_of!(ReportKey, src_addr) == 48);
    assert!(size_of::<ReportRepeats>() == 56);
};

#[cfg(feature = "user")]
mod pod {
    use super::{ReportKey, ReportRepeats};

    // SAFETY: both are `#[repr(C)]`, `Copy`, made only of integers and byte arrays, with their
    // padding spelled out as fields (checked by the size asserts above).
    unsafe impl aya::Pod for ReportKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReportRepeats {}
}
