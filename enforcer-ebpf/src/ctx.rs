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

/// `bpf_sock` field offsets the hooks read.
pub(crate) mod sock {
    use core::mem::offset_of;

    use aya_ebpf::bindings::bpf_sock;

    pub(crate) const FAMILY: usize = offset_of!(bpf_sock, family);
    pub(crate) const PROTOCOL: usize = offset_of!(bpf_sock, protocol);
    pub(crate) const TYPE: usize = offset_of!(bpf_sock, type_);
    pub(crate) const SRC_IP4: usize = offset_of!(bpf_sock, src_ip4);
    pub(crate) const SRC_IP6: usize = offset_of!(bpf_sock, src_ip6);
    pub(crate) const SRC_IP6_1: usize = SRC_IP6 + 4;
    pub(crate) const SRC_IP6_2: usize = SRC_IP6 + 8;
    pub(crate) const SRC_IP6_3: usize = SRC_IP6 + 12;
    pub(crate) const SRC_PORT: usize = offset_of!(bpf_sock, src_port);
    pub(crate) const STATE: usize = offset_of!(bpf_sock, state);
    /// `BPF_TCP_LISTEN`.
    pub(crate) const TCP_LISTEN: u32 = 10;
    pub(crate) const AF_INET6: u32 = 10;
}

/// A socket's own (bound) address, IPv4-mapped for `AF_INET`. `v6` picks the field: `post_bind4`
/// may not even read `src_ip6`, so callers that know the family pass it as a constant.
///
/// # Safety
/// `sk` must be a socket pointer the verifier lets the program read.
#[inline(always)]
pub(crate) unsafe fn bound_address(sk: *const aya_ebpf::bindings::bpf_sock, v6: bool) -> [u8; 16] {
    // SAFETY (every `field` call): upheld by the caller; the offsets are fields of `bpf_sock`.
    if v6 {
        ipv6_bytes(unsafe {
            [
                field::<_, { sock::SRC_IP6 }>(sk),
                field::<_, { sock::SRC_IP6_1 }>(sk),
                field::<_, { sock::SRC_IP6_2 }>(sk),
                field::<_, { sock::SRC_IP6_3 }>(sk),
            ]
        })
    } else {
        enforcer_common::ipv4_mapped(unsafe { field::<_, { sock::SRC_IP4 }>(sk) }.to_ne_bytes())
    }
}
