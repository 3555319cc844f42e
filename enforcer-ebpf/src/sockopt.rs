//! `cgroup/setsockopt`: refuses, to segment members, the socket options that route a packet past
//! the destination it was judged for: an IPv6 routing header and IPv4 options (loose and strict
//! source routes travel there). The packet layer drops such packets too, whatever set them (an
//! ancillary message, a raw header); refusing the option gives the application `EPERM` at once.

use core::mem::offset_of;

use aya_ebpf::{bindings::bpf_sockopt, programs::SockoptContext};
use enforcer_common::{IDENTITY_SEGMENTED, counter, decide::PolicyView as _};

use crate::{
    cgroup::{TaskCgroup, source_identity},
    ctx::field,
    maps::count,
    view::MapView,
};

const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

const SOL_IP: u32 = 0;
const IP_OPTIONS: u32 = 4;
const SOL_IPV6: u32 = 41;
const IPV6_2292RTHDR: u32 = 5;
const IPV6_RTHDR: u32 = 57;

const LEVEL: usize = offset_of!(bpf_sockopt, level);
const OPTNAME: usize = offset_of!(bpf_sockopt, optname);
const OPTLEN: usize = offset_of!(bpf_sockopt, optlen);

#[inline(always)]
pub(crate) fn setsockopt(ctx: &SockoptContext) -> i32 {
    let so: *const bpf_sockopt = ctx.sockopt;
    // SAFETY (all `field` calls): `so` is the program's context and every offset a field of it.
    let (level, name, len) = unsafe {
        (
            field::<_, LEVEL>(so),
            field::<_, OPTNAME>(so),
            field::<_, OPTLEN>(so) as i32,
        )
    };
    let routes = (level == SOL_IP && name == IP_OPTIONS)
        || (level == SOL_IPV6 && (name == IPV6_RTHDR || name == IPV6_2292RTHDR));
    // Clearing the option (an empty value) is always fine.
    if !routes || len <= 0 {
        return PROCEED;
    }
    let segmented = MapView::active().is_none_or(|view| {
        source_identity(&TaskCgroup, view.slot).map_or(true, |identity| {
            view.identity_info(identity)
                .is_none_or(|info| info.flags & IDENTITY_SEGMENTED != 0)
        })
    });
    if segmented {
        count(counter::SOURCE_ROUTE_REFUSED);
        REFUSE
    } else {
        PROCEED
    }
}
