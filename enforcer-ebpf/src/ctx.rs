//! Reading kernel context structures the way the verifier accepts.

/// Reads the `u32` at `OFFSET` of a context or socket. The verifier accepts such reads only as one
/// load at a constant offset from the unmodified pointer; inlined, LLVM is free to hoist a
/// `base + offset` into a register, which the verifier rejects. A call of its own cannot be
/// rearranged that way.
///
/// # Safety
/// `base` must be the program's context or a socket pointer the verifier lets us read, and
/// `OFFSET` a field of it.
#[inline(never)]
pub(crate) unsafe fn field<T, const OFFSET: usize>(base: *const T) -> u32 {
    // SAFETY: upheld by the caller.
    unsafe { core::ptr::read_volatile(base.cast::<u8>().add(OFFSET).cast::<u32>()) }
}

/// Four `u32` words as the kernel stores an IPv6 address (network order in memory) → bytes.
#[inline(always)]
pub(crate) fn ipv6_bytes(words: [u32; 4]) -> [u8; 16] {
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
