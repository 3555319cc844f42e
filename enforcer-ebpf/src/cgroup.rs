//! The local identity of a cgroup: its own label, else its nearest labelled ancestor's — unless
//! that ancestor says its children may belong to someone else, in which case the cgroup is held
//! fail-closed until the daemon labels it.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
};
use enforcer_common::{CGROUP_HOLD, CgroupKey, counter, reason};

use crate::maps::{CGROUP_IDENTITY, count};

/// Deepest cgroup level the ancestor walk reaches. Only cgroups made since the daemon last
/// labelled are looked up this way; one deeper than this fails closed (counted), it is never
/// judged as a more distant ancestor.
const MAX_LEVEL: i32 = 32;

/// Where a cgroup id and its ancestors come from.
pub(crate) trait CgroupSource {
    fn id(&self) -> u64;
    /// The ancestor at absolute `level`; 0 when `level` is deeper than the cgroup itself.
    fn ancestor(&self, level: i32) -> u64;
}

/// The current task's cgroup (connect, sendmsg, socket creation, LSM).
pub(crate) struct TaskCgroup;

impl CgroupSource for TaskCgroup {
    #[inline(always)]
    fn id(&self) -> u64 {
        // SAFETY: a plain helper call without arguments.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: a plain helper call; it returns 0 for levels below the task's cgroup.
        unsafe { bpf_get_current_ancestor_cgroup_id(level) }
    }
}

/// The cgroup of the socket a packet belongs to (cgroup_skb runs wherever the packet is sent
/// from, so the current task says nothing).
pub(crate) struct SkbCgroup(pub *mut __sk_buff);

impl CgroupSource for SkbCgroup {
    #[inline(always)]
    fn id(&self) -> u64 {
        // SAFETY: a helper call on the program's own context.
        unsafe { bpf_skb_cgroup_id(self.0) }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_skb_ancestor_cgroup_id(self.0, level) }
    }
}

/// The local end, as far as the kernel can tell.
pub(crate) enum Local {
    Identity(u32),
    /// New, not labelled, and its ancestor's identity may be broader: fail closed.
    Held,
    /// No labelled cgroup on the way up: outside the managed subtree (a socket's owner), or an
    /// inconsistent map (a task inside it).
    Unknown,
    /// More unlabelled levels than the walk searches: fail closed.
    TooDeep,
}

/// Resolves the identity of the source's cgroup in `slot`. Counting is the caller's: what fails
/// closed for a task is normal for a socket owner outside the subtree.
///
/// An unlabelled cgroup takes its deepest labelled ancestor's identity, found by walking down from
/// the root level: the walk keeps no level-dependent state, so the verifier checks it once.
#[inline(always)]
pub(crate) fn resolve<C: CgroupSource>(source: &C, slot: u32) -> Local {
    let mut key = CgroupKey {
        cgroup_id: source.id(),
        slot,
        _pad: 0,
    };
    // SAFETY: hash map values are read-only copies for us.
    if let Some(label) = unsafe { CGROUP_IDENTITY.get(key) } {
        return Local::Identity(label.identity);
    }
    // The nearest labelled ancestor so far, in scalars that every path writes. As an
    // `Option<Local>` its identity was undefined until found, and LLVM reloads it from the stack on
    // every path: 6.1 kernels before the uninitialised-stack fix (Debian's 6.1.176 among them)
    // refuse that read ("invalid read from stack").
    let mut found = false;
    let mut held = false;
    let mut identity = 0;
    let mut level = 0;
    while level <= MAX_LEVEL {
        let ancestor = source.ancestor(level);
        if ancestor == 0 {
            // Below the cgroup itself: the walk is complete.
            return match (found, held) {
                (false, _) => Local::Unknown,
                (true, true) => Local::Held,
                (true, false) => Local::Identity(identity),
            };
        }
        key.cgroup_id = ancestor;
        // SAFETY: as above.
        if let Some(label) = unsafe { CGROUP_IDENTITY.get(key) } {
            found = true;
            held = label.flags & CGROUP_HOLD != 0;
            identity = label.identity;
        }
        level += 1;
    }
    Local::TooDeep
}

/// The local identity of the task or packet being judged; what fails closed is counted and
/// returned as the event's reason.
#[inline(always)]
pub(crate) fn source_identity<C: CgroupSource>(source: &C, slot: u32) -> Result<u32, u8> {
    match resolve(source, slot) {
        Local::Identity(identity) => Ok(identity),
        Local::Held => {
            count(counter::HELD_UNLABELLED);
            Err(reason::UNLABELLED_CGROUP)
        }
        Local::Unknown => {
            count(counter::ERR_NO_CGROUP_IDENTITY);
            Err(reason::UNRESOLVED)
        }
        Local::TooDeep => {
            count(counter::ERR_CGROUP_TOO_DEEP);
            Err(reason::UNRESOLVED)
        }
    }
}
