//! The source address of a connection refused before the kernel bound one: the address the
//! process's own network namespace would have routed from.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    thread,
};

use nix::sched::{CloneFlags, setns};

/// Asks the routing table of `pid`'s network namespace which local address reaches `dst`.
/// `None` when the process is gone or the namespace cannot be entered.
pub(super) fn source_address(pid: u32, dst: IpAddr) -> Option<IpAddr> {
    let netns = File::open(format!("/proc/{pid}/ns/net")).ok()?;
    // A scratch thread enters the namespace so the daemon's own threads never change namespace.
    thread::spawn(move || {
        setns(&netns, CloneFlags::CLONE_NEWNET).ok()?;
        let bind: SocketAddr = if dst.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(bind).ok()?;
        // A UDP connect sends nothing: it only asks the kernel for a route.
        socket.connect((dst, 9)).ok()?;
        socket.local_addr().ok().map(|a| a.ip())
    })
    .join()
    .ok()
    .flatten()
}
