//! Aborting one TCP socket through the kernel's sock_diag interface (`SOCK_DESTROY`), as `ss -K`
//! does: a netlink request that names the socket, so the daemon needs no handle on it and opens no
//! inet socket of its own.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use netlink_packet_core::{ErrorBuffer, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use super::{HostError, NetNs, netlink, socket_in};

/// `SOCK_DESTROY` from `linux/sock_diag.h`.
const SOCK_DESTROY: u16 = 21;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
/// `idiag_states`: any state; the 4-tuple and cookie pick the socket.
const ALL_STATES: u32 = u32::MAX;
/// `struct nlmsghdr` (16 bytes) and `struct inet_diag_req_v2` (56 bytes).
const MESSAGE_LEN: usize = 16 + 56;
const OP: &str = "SOCK_DESTROY";
/// The kernel handles the request inside `send`, so its answer is queued before `send` returns; a
/// missing answer is a lost one, not a slow one.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Matches an answer to its request, so a late answer to an earlier request is never taken for it.
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// `idiag_src` and `idiag_dst`, as the request spells them.
type Ends = [[u8; 16]; 2];

/// One TCP socket as the kernel's socket table knows it: local and remote end, and its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpSocketId {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `SO_COOKIE` / `bpf_get_socket_cookie`: tells this socket from a later one that reuses the
    /// 4-tuple.
    pub cookie: u64,
}

/// What [`abort_tcp`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aborted {
    /// The socket was aborted: its owner's next call fails with `ECONNABORTED`, and the peer got
    /// a reset if the connection was still synchronised.
    Aborted,
    /// No socket has that 4-tuple and cookie (`ENOENT`): it closed already, or the 4-tuple now
    /// belongs to a newer socket that is left alone.
    Gone,
}

/// Aborts the TCP socket `socket` of namespace `ns`, as `ss -K` does.
///
/// Both ends IPv4, or IPv4-mapped IPv6 (`::ffff:a.b.c.d`, how an `AF_INET6` socket shows an IPv4
/// peer): the request is `AF_INET` with the plain IPv4 addresses, because TCP hashes an `AF_INET6`
/// socket with an IPv4 peer by its IPv4 addresses, where an `AF_INET` lookup finds it. Should that
/// find nothing, the request is repeated as `AF_INET6` with the mapped addresses. Current kernels
/// look that up the IPv4 way too, so the retry costs a round trip and guards only against a kernel
/// that would not. Any other pair of ends is an `AF_INET6` request (an IPv4 end written mapped).
///
/// # Errors
///
/// [`HostError::Kernel`] with `EPERM` without `CAP_NET_ADMIN` over `ns`, and with `EOPNOTSUPP` on a
/// kernel built without `CONFIG_INET_DIAG_DESTROY`. A kernel without TCP sock_diag support at all
/// answers `ENOENT`, which reads as [`Aborted::Gone`].
///
/// # Minimum kernel version
///
/// 4.5 (`SOCK_DESTROY`).
pub fn abort_tcp(ns: &NetNs, socket: &TcpSocketId) -> Result<Aborted, HostError> {
    let mut diag = socket_in(ns, NETLINK_SOCK_DIAG)?;
    netlink::bind(&mut diag, 0)?;
    netlink::set_receive_timeout(&diag, ACK_TIMEOUT)?;
    let (local, remote) = (socket.local.ip(), socket.remote.ip());
    // `to_canonical` turns an IPv4-mapped address into the IPv4 address it carries.
    if let (IpAddr::V4(l), IpAddr::V4(r)) = (local.to_canonical(), remote.to_canonical())
        && destroy(&diag, AF_INET, [v4_field(l), v4_field(r)], socket)? == Aborted::Aborted
    {
        return Ok(Aborted::Aborted);
    }
    // An IPv4 end is written mapped, as the retry wants it.
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    destroy(&diag, AF_INET6, [v6(local), v6(remote)], socket)
}

/// An `idiag_src`/`idiag_dst` field (four `__be32` words) holding an IPv4 address: the first word.
fn v4_field(ip: Ipv4Addr) -> [u8; 16] {
    let mut field = [0; 16];
    field[..4].copy_from_slice(&ip.octets());
    field
}

/// `idiag_cookie`: low 32 bits first, as `sock_diag_check_cookie` compares them.
fn cookie_words(cookie: u64) -> [u32; 2] {
    [cookie as u32, (cookie >> 32) as u32]
}

/// `struct nlmsghdr` then `struct inet_diag_req_v2`: header, state mask and cookie words in host
/// order, ports and addresses (`ends`: local, remote) in network order.
fn request(sequence: u32, family: u8, ends: Ends, socket: &TcpSocketId) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_LEN);
    out.extend((MESSAGE_LEN as u32).to_ne_bytes());
    out.extend(SOCK_DESTROY.to_ne_bytes());
    out.extend((NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out.extend(sequence.to_ne_bytes());
    out.extend(0u32.to_ne_bytes()); // nlmsg_pid: the kernel knows the sender
    out.extend([family, IPPROTO_TCP, 0, 0]); // idiag_ext: no extensions; pad
    out.extend(ALL_STATES.to_ne_bytes());
    out.extend(socket.local.port().to_be_bytes());
    out.extend(socket.remote.port().to_be_bytes());
    out.extend(ends.as_flattened());
    out.extend(0u32.to_ne_bytes()); // idiag_if: any interface
    let [low, high] = cookie_words(socket.cookie);
    out.extend(low.to_ne_bytes());
    out.extend(high.to_ne_bytes());
    out
}

/// Sends one request and reads answers until the `NLMSG_ERROR` for it (the kernel sends each in a
/// datagram of its own): code 0 acknowledges, `ENOENT` means no such socket, else a refusal.
fn destroy(diag: &Socket, family: u8, ends: Ends, id: &TcpSocketId) -> Result<Aborted, HostError> {
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    diag.send(&request(sequence, family, ends, id), 0)
        .map_err(|source| HostError::Netlink { op: OP, source })?;
    let decode = |source| HostError::Decode { op: OP, source };
    let mut buffer = Vec::with_capacity(netlink::RECV_BUFFER);
    loop {
        netlink::recv(diag, &mut buffer, OP)?;
        let message = NetlinkBuffer::new_checked(buffer.as_slice()).map_err(decode)?;
        if message.message_type() != NLMSG_ERROR || message.sequence_number() != sequence {
            continue; // the late answer to an earlier request: not ours
        }
        let error = ErrorBuffer::new_checked(message.payload()).map_err(decode)?;
        return match error.code().map_or(0, |code| code.get().saturating_neg()) {
            0 => Ok(Aborted::Aborted),
            libc::ENOENT => Ok(Aborted::Gone),
            errno => Err(HostError::Kernel {
                op: OP,
                source: io::Error::from_raw_os_error(errno),
            }),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{Ipv6Addr, TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    use super::*;

    /// The test's own namespace if it may run: it needs root (`CAP_NET_ADMIN`), and under CI a
    /// skip would hide a regression, so it fails instead.
    fn privileged(test: &str) -> Option<NetNs> {
        if nix::unistd::geteuid().is_root() {
            return Some(NetNs::own().expect("own namespace"));
        }
        let ci = std::env::var("CI").is_ok_and(|ci| ci == "true");
        assert!(!ci, "{test} needs root, and CI=true forbids a skip");
        eprintln!("skipping {test}: needs root (CAP_NET_ADMIN)");
        None
    }

    /// A loopback connection from a client socket of `to`'s family: (client, accepted end).
    fn connection(listen: IpAddr, to: IpAddr) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind((listen, 0)).expect("bind listener");
        let port = listener.local_addr().expect("listener address").port();
        let client = TcpStream::connect((to, port)).expect("connect");
        (client, listener.accept().expect("accept").0)
    }

    fn id_of(stream: &TcpStream) -> TcpSocketId {
        let (mut cookie, mut len) = (0u64, size_of::<u64>() as libc::socklen_t);
        let (level, option, out) = (libc::SOL_SOCKET, libc::SO_COOKIE, (&raw mut cookie).cast());
        // SAFETY: a live socket; the kernel writes at most `len` bytes into `cookie`.
        let rc = unsafe { libc::getsockopt(stream.as_raw_fd(), level, option, out, &raw mut len) };
        assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        TcpSocketId {
            local: stream.local_addr().expect("local address"),
            remote: stream.peer_addr().expect("peer address"),
            cookie,
        }
    }

    /// Loopback over IPv4, IPv6, and an `AF_INET6` client talking to an IPv4 listener (mapped).
    fn connections() -> [(TcpStream, TcpStream); 3] {
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        [(v4, v4), (v6, v6), (v4, mapped)].map(|(listen, to)| connection(listen, to))
    }

    #[test]
    fn request_layout() {
        let id = TcpSocketId {
            local: "10.0.0.1:443".parse().expect("address"),
            remote: "10.0.0.2:50000".parse().expect("address"),
            cookie: 0x1122_3344_5566_7788,
        };
        let ends = [[10, 0, 0, 1], [10, 0, 0, 2]].map(|ip| v4_field(ip.into()));
        let message = request(7, AF_INET, ends, &id);
        assert_eq!(message.len(), MESSAGE_LEN);
        assert_eq!(message[..4], 72u32.to_ne_bytes());
        assert_eq!(message[16..18], [AF_INET, IPPROTO_TCP]);
        assert_eq!(message[24..28], [0x01, 0xbb, 0xc3, 0x50]);
        assert_eq!(message[28..32], [10, 0, 0, 1]);
        assert_eq!(message[44..48], [10, 0, 0, 2]);
        assert_eq!(message[64..68], 0x5566_7788u32.to_ne_bytes());
        assert_eq!(message[68..72], 0x1122_3344u32.to_ne_bytes());
    }

    /// Per family: a wrong cookie misses and leaves the socket working, the right one aborts it,
    /// and a second abort finds it gone.
    #[test]
    fn aborts_only_the_socket_with_that_cookie() {
        let Some(ns) = privileged("aborts_only_the_socket_with_that_cookie") else {
            return;
        };
        let abort = |id: &TcpSocketId| abort_tcp(&ns, id).expect("abort");
        for (mut client, mut server) in connections() {
            let id = id_of(&client);
            let mut wrong = id;
            wrong.cookie = !id.cookie;
            assert_eq!(abort(&wrong), Aborted::Gone, "{wrong:?}");
            client.write_all(b"x").expect("write after the miss");
            server.read_exact(&mut [0; 1]).expect("read after the miss");
            assert_eq!(abort(&id), Aborted::Aborted, "{id:?}");
            let error = client.read(&mut [0; 1]).expect_err("read after the abort");
            assert_eq!(error.raw_os_error(), Some(libc::ECONNABORTED), "{id:?}");
            assert_eq!(abort(&id), Aborted::Gone, "{id:?}");
        }
    }
}
