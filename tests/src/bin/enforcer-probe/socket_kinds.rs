//! The probe's actions for socket kinds and paths beyond plain TCP, UDP and connected ping: each
//! one a way a workload could try to send past a judged destination (issue 5). They keep the
//! probe's result-line contract: `run` returns the errno of the step that failed (and names the
//! step on stderr), and the caller prints `ok pid=N` or `error <ERRNO_NAME> errno=<n> pid=N`.

use std::{
    ffi::c_void,
    io::{self, IoSlice, IoSliceMut, Write},
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::TIMEOUT;

/// The payload of every datagram the probe sends.
const PAYLOAD: &[u8] = b"enforcer-probe";
/// IANA protocol numbers the libc crate may not name on every target.
const IPPROTO_UDPLITE: i32 = 136;
const IPPROTO_MPTCP: i32 = 262;
/// `IPV6_RTHDR` (linux/in6.h): a routing header for every packet of the socket, or one sendmsg.
const IPV6_RTHDR: i32 = 57;
const ETH_P_ALL: u16 = 0x0003;
/// IPv4 option types (RFC 791): loose and strict source and record route.
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
/// `SOCK_PACKET` (linux/net.h), which the libc crate marks deprecated: the obsolete way to the
/// same packets as `AF_PACKET`, and so a way round a check of `AF_PACKET` alone.
const SOCK_PACKET: i32 = 10;

/// What `AF_PACKET`-like socket to open.
#[derive(Clone, Copy, Debug)]
pub enum PacketKind {
    /// `socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL))`
    PacketRaw,
    /// `socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL))`
    PacketDgram,
    /// `socket(AF_INET, SOCK_PACKET, htons(ETH_P_ALL))`, the obsolete interface to the same thing
    InetPacket,
}

pub enum Action {
    UdpliteSendto(SocketAddr),
    UdpliteConnect(SocketAddr),
    UdpliteListen(SocketAddr),
    PingSendto(IpAddr),
    RawTcpSyn(SocketAddr),
    /// A routing header of `kind` through `via`, by setsockopt (or as a control message of one
    /// sendmsg when `cmsg`), on a UDP socket sending to `to`.
    UdpRthdr {
        cmsg: bool,
        kind: u8,
        via: Ipv6Addr,
        to: SocketAddr,
    },
    /// An IPv4 source route option (loose, or strict when `strict`) through `via`, by setsockopt
    /// (`IP_OPTIONS`) or as an `IP_RETOPTS` control message of one sendmsg when `cmsg`.
    UdpSrr {
        cmsg: bool,
        strict: bool,
        via: Ipv4Addr,
        to: SocketAddr,
    },
    /// Made here, used by a child probe in `cgroup` after an SCM_RIGHTS pass.
    Passed {
        tcp: bool,
        cgroup: PathBuf,
        to: SocketAddr,
    },
    /// The child's half of [`Action::Passed`]: the socket arrives on stdin.
    FdUse {
        tcp: bool,
        to: SocketAddr,
    },
    PacketSocket(PacketKind),
    UdpConnectedSendto(SocketAddr, SocketAddr),
    UdpUnspecSendto(SocketAddr, SocketAddr),
    UdpSendmmsg(SocketAddr, SocketAddr),
    TcpFastopen(SocketAddr),
    MptcpConnect(SocketAddr),
    IoUringConnect(SocketAddr),
    TcpRepairSend(SocketAddr),
}

/// The verbs this module handles.
pub const VERBS: [&str; 21] = [
    "udplite-sendto",
    "udplite-connect",
    "udplite-listen",
    "ping-sendto",
    "raw-tcp-syn",
    "udp-rthdr",
    "udp-rthdr-cmsg",
    "udp-srr",
    "udp-srr-cmsg",
    "passed-tcp-connect",
    "passed-udp-sendto",
    "fd-tcp-connect",
    "fd-udp-sendto",
    "packet-socket",
    "udp-connected-sendto",
    "udp-unspec-sendto",
    "udp-sendmmsg",
    "tcp-fastopen",
    "mptcp-connect",
    "io-uring-connect",
    "tcp-repair-send",
];

/// Parses the arguments of `verb`; `None` when the verb is not one of this module's.
pub fn parse(verb: &str, argv: &mut dyn Iterator<Item = String>) -> Result<Option<Action>, String> {
    if !VERBS.contains(&verb) {
        return Ok(None);
    }
    let mut word = |what: &str| argv.next().ok_or(format!("missing {what}"));
    let ip = |s: String| -> Result<IpAddr, String> {
        s.parse().map_err(|e| format!("bad ADDR {s:?}: {e}"))
    };
    let port = |s: String| -> Result<u16, String> {
        s.parse().map_err(|e| format!("bad PORT {s:?}: {e}"))
    };
    let action = match verb {
        "packet-socket" => Action::PacketSocket(match word("KIND")?.as_str() {
            "packet-raw" => PacketKind::PacketRaw,
            "packet-dgram" => PacketKind::PacketDgram,
            "inet-packet" => PacketKind::InetPacket,
            other => {
                return Err(format!(
                    "bad KIND {other:?}: packet-raw, packet-dgram or inet-packet"
                ));
            }
        }),
        "ping-sendto" => Action::PingSendto(ip(word("ADDR")?)?),
        "udp-rthdr" | "udp-rthdr-cmsg" => {
            let kind: u8 = word("TYPE")?
                .parse()
                .map_err(|e| format!("bad TYPE: {e}"))?;
            let via = match ip(word("VIA")?)? {
                IpAddr::V6(v6) => v6,
                IpAddr::V4(_) => return Err("VIA must be an IPv6 address".to_owned()),
            };
            let to = SocketAddr::new(ip(word("ADDR")?)?, port(word("PORT")?)?);
            if !to.is_ipv6() {
                return Err("a routing header needs an IPv6 ADDR".to_owned());
            }
            Action::UdpRthdr {
                cmsg: verb == "udp-rthdr-cmsg",
                kind,
                via,
                to,
            }
        }
        "udp-srr" | "udp-srr-cmsg" => {
            let strict = match word("KIND")?.as_str() {
                "lsrr" => false,
                "ssrr" => true,
                other => return Err(format!("bad KIND {other:?}: lsrr or ssrr")),
            };
            let via = match ip(word("VIA")?)? {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => return Err("VIA must be an IPv4 address".to_owned()),
            };
            let to = SocketAddr::new(ip(word("ADDR")?)?, port(word("PORT")?)?);
            if !to.is_ipv4() {
                return Err("a source route option needs an IPv4 ADDR".to_owned());
            }
            Action::UdpSrr {
                cmsg: verb == "udp-srr-cmsg",
                strict,
                via,
                to,
            }
        }
        "passed-tcp-connect" | "passed-udp-sendto" => {
            let cgroup = PathBuf::from(word("CGROUP")?);
            let to = SocketAddr::new(ip(word("ADDR")?)?, port(word("PORT")?)?);
            Action::Passed {
                tcp: verb == "passed-tcp-connect",
                cgroup,
                to,
            }
        }
        _ => {
            let to = SocketAddr::new(ip(word("ADDR")?)?, port(word("PORT")?)?);
            let mut other = || -> Result<SocketAddr, String> {
                Ok(SocketAddr::new(ip(word("OTHER")?)?, port(word("OPORT")?)?))
            };
            match verb {
                "udplite-sendto" => Action::UdpliteSendto(to),
                "udplite-connect" => Action::UdpliteConnect(to),
                "udplite-listen" => Action::UdpliteListen(to),
                "raw-tcp-syn" => Action::RawTcpSyn(to),
                "fd-tcp-connect" => Action::FdUse { tcp: true, to },
                "fd-udp-sendto" => Action::FdUse { tcp: false, to },
                "udp-connected-sendto" => Action::UdpConnectedSendto(to, other()?),
                "udp-unspec-sendto" => Action::UdpUnspecSendto(to, other()?),
                "udp-sendmmsg" => Action::UdpSendmmsg(to, other()?),
                "tcp-fastopen" => Action::TcpFastopen(to),
                "mptcp-connect" => Action::MptcpConnect(to),
                "io-uring-connect" => Action::IoUringConnect(to),
                "tcp-repair-send" => Action::TcpRepairSend(to),
                other => return Err(format!("unknown ACTION {other:?}")),
            }
        }
    };
    Ok(Some(action))
}

/// Runs one action. Listeners and `passed-*` (which exits with its child's status, the child
/// having printed the result line) do not return on success.
pub fn run(action: &Action) -> io::Result<()> {
    match action {
        Action::UdpliteSendto(to) => {
            let sock = udplite(to)?;
            step("sendto", sock.send_to(PAYLOAD, to)).map(drop)
        }
        Action::UdpliteConnect(to) => {
            let sock = udplite(to)?;
            step("connect", sock.connect(to))?;
            step("send", sock.send(PAYLOAD)).map(drop)
        }
        Action::UdpliteListen(addr) => udplite_listen(*addr),
        Action::PingSendto(to) => ping_sendto(*to),
        Action::RawTcpSyn(to) => raw_tcp_syn(*to),
        Action::UdpRthdr {
            cmsg,
            kind,
            via,
            to,
        } => {
            let IpAddr::V6(to_ip) = to.ip() else {
                unreachable!("checked by parse")
            };
            let header = rthdr(*kind, *via, to_ip);
            let how = (!*cmsg).then_some(IPV6_RTHDR);
            let cmsg = cmsg.then_some(IPV6_RTHDR);
            udp_with_route(*to, libc::IPPROTO_IPV6, how, cmsg, &header, "IPV6_RTHDR")
        }
        Action::UdpSrr {
            cmsg,
            strict,
            via,
            to,
        } => {
            // Type, length, pointer (to the first address), the address; then end of options.
            let kind = if *strict { IPOPT_SSRR } else { IPOPT_LSRR };
            let mut option = vec![kind, 7, 4];
            option.extend_from_slice(&via.octets());
            option.push(0);
            let how = (!*cmsg).then_some(libc::IP_OPTIONS);
            let cmsg = cmsg.then_some(libc::IP_RETOPTS);
            udp_with_route(*to, libc::IPPROTO_IP, how, cmsg, &option, "source route")
        }
        Action::Passed { tcp, cgroup, to } => passed(*tcp, cgroup, *to),
        Action::FdUse { tcp, to } => fd_use(*tcp, *to),
        Action::PacketSocket(kind) => {
            let (family, ty) = match kind {
                PacketKind::PacketRaw => (libc::AF_PACKET, libc::SOCK_RAW),
                PacketKind::PacketDgram => (libc::AF_PACKET, libc::SOCK_DGRAM),
                PacketKind::InetPacket => (libc::AF_INET, SOCK_PACKET),
            };
            socket_raw(family, ty, i32::from(ETH_P_ALL.to_be())).map(drop)
        }
        Action::UdpConnectedSendto(to, other) => {
            let sock = udp(to)?;
            step("connect", sock.connect(to))?;
            step("send", sock.send(PAYLOAD))?;
            step("sendto OTHER", sock.send_to(PAYLOAD, other)).map(drop)
        }
        Action::UdpUnspecSendto(to, other) => {
            let sock = udp(to)?;
            step("connect", sock.connect(to))?;
            step("send", sock.send(PAYLOAD))?;
            let unspec = libc::sockaddr {
                sa_family: libc::AF_UNSPEC as libc::sa_family_t,
                sa_data: [0; 14],
            };
            // SAFETY: a valid sockaddr of the given length.
            step(
                "connect(AF_UNSPEC)",
                cvt(unsafe {
                    libc::connect(
                        sock.as_raw_fd(),
                        &raw const unspec,
                        socklen::<libc::sockaddr>(),
                    )
                }),
            )?;
            step("sendto OTHER", sock.send_to(PAYLOAD, other)).map(drop)
        }
        Action::UdpSendmmsg(to, other) => udp_sendmmsg(*to, *other),
        Action::TcpFastopen(to) => tcp_fastopen(*to),
        Action::MptcpConnect(to) => {
            let fd = step(
                "socket(IPPROTO_MPTCP)",
                socket_for(to.ip(), libc::SOCK_STREAM, IPPROTO_MPTCP),
            )?;
            connect_timeout(&fd, to)
        }
        Action::IoUringConnect(to) => io_uring_connect(*to),
        Action::TcpRepairSend(to) => tcp_repair_send(*to),
    }
}

/// `TCP_REPAIR` (linux/tcp.h): the socket is restored, not connected; no SYN is sent.
const TCP_REPAIR: i32 = 19;

/// A TCP connection that never sends a SYN from here: `connect` in repair mode (CAP_NET_ADMIN in
/// the namespace) makes the socket established at once; leaving repair mode sends a window probe
/// (an ACK: the first packet of the connection), then `send` queues data. A peer that never saw
/// the connection resets it, so `send` may fail with ECONNRESET once the probe got there. Ok once the data is queued; whether it left is for the other
/// end to tell.
fn tcp_repair_send(to: SocketAddr) -> io::Result<()> {
    let fd = step("socket", socket_for(to.ip(), libc::SOCK_STREAM, 0))?;
    let set = |value: i32| {
        // SAFETY: setsockopt on a descriptor we own, with an int of the right size.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_TCP,
                TCP_REPAIR,
                (&raw const value).cast(),
                socklen::<i32>(),
            )
        })
    };
    step("setsockopt(TCP_REPAIR, 1)", set(1))?;
    let (addr, len) = raw_addr(&to);
    // SAFETY: `addr` is a valid sockaddr of `len` bytes.
    step(
        "connect (repair mode)",
        cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) }),
    )?;
    step("setsockopt(TCP_REPAIR, 0)", set(0))?;
    // SAFETY: send from a buffer we own on a descriptor we own.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            PAYLOAD.as_ptr().cast(),
            PAYLOAD.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    step("send", cvt(sent as i32)).map(drop)
}

/// Names the failing step on stderr and passes the error on unchanged (its errno is the result).
fn step<T>(what: &str, res: io::Result<T>) -> io::Result<T> {
    res.inspect_err(|e| eprintln!("enforcer-probe: {what}: {e}"))
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).expect("small struct")
}

fn socket_raw(family: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd alone.
    let fd = step(
        "socket",
        cvt(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) }),
    )?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn family(ip: IpAddr) -> i32 {
    if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn socket_for(ip: IpAddr, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    socket_raw(family(ip), ty, protocol)
}

fn udp(to: &SocketAddr) -> io::Result<UdpSocket> {
    Ok(UdpSocket::from(socket_for(
        to.ip(),
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDP,
    )?))
}

/// A UDP-Lite socket; std's datagram methods work on it unchanged.
fn udplite(to: &SocketAddr) -> io::Result<UdpSocket> {
    Ok(UdpSocket::from(socket_for(
        to.ip(),
        libc::SOCK_DGRAM,
        IPPROTO_UDPLITE,
    )?))
}

/// `addr` as a `sockaddr_storage` and its length.
fn raw_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            socklen::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            socklen::<libc::sockaddr_in6>()
        }
    };
    (storage, len)
}

/// A non-blocking connect bounded by [`TIMEOUT`] (ETIMEDOUT after it), on any stream socket.
fn connect_timeout(fd: &OwnedFd, to: &SocketAddr) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    let (addr, len) = raw_addr(to);
    // SAFETY: `addr` is a valid sockaddr of `len` bytes.
    let ret = unsafe { libc::connect(raw, (&raw const addr).cast(), len) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINPROGRESS) {
        return step("connect", Err(err));
    }
    let mut pfd = libc::pollfd {
        fd: raw,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = i32::try_from(TIMEOUT.as_millis()).expect("short timeout");
    // SAFETY: one valid pollfd.
    if step("poll", cvt(unsafe { libc::poll(&raw mut pfd, 1, ms) }))? == 0 {
        return step(
            "connect",
            Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
        );
    }
    let mut so_error: libc::c_int = 0;
    let mut optlen = socklen::<libc::c_int>();
    // SAFETY: SO_ERROR writes one c_int.
    cvt(unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut so_error).cast(),
            &raw mut optlen,
        )
    })?;
    if so_error == 0 {
        Ok(())
    } else {
        step("connect", Err(io::Error::from_raw_os_error(so_error)))
    }
}

fn udplite_listen(addr: SocketAddr) -> io::Result<()> {
    let sock = udplite(&addr)?;
    step("bind", sock.bind_compat(addr))?;
    println!("listening pid={}", std::process::id());
    io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = sock.recv_from(&mut buf)?;
        println!("peer {peer}");
        io::stdout().flush()?;
        let _ = sock.send_to(&buf[..n], peer);
    }
}

/// `bind(2)` for a socket std did not create.
trait BindCompat {
    fn bind_compat(&self, addr: SocketAddr) -> io::Result<()>;
}

impl<T: AsRawFd> BindCompat for T {
    fn bind_compat(&self, addr: SocketAddr) -> io::Result<()> {
        let (raw, len) = raw_addr(&addr);
        // SAFETY: a valid sockaddr of `len` bytes.
        cvt(unsafe { libc::bind(self.as_raw_fd(), (&raw const raw).cast(), len) }).map(drop)
    }
}

/// An echo through an unconnected ping socket: sendto, then wait for the reply from `to`.
fn ping_sendto(to: IpAddr) -> io::Result<()> {
    let (protocol, request, reply) = match to {
        IpAddr::V4(_) => (libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    let sock = UdpSocket::from(socket_for(to, libc::SOCK_DGRAM, protocol)?);
    let mut echo = [0u8; 16];
    echo[0] = request;
    echo[7] = 1;
    echo[8..].copy_from_slice(b"enforcer");
    step("sendto", sock.send_to(&echo, SocketAddr::new(to, 0)))?;
    wait_for(
        || {
            let mut buf = [0u8; 512];
            let (n, from) = sock.recv_from(&mut buf)?;
            Ok(n >= 1 && buf[0] == reply && from.ip() == to)
        },
        &sock,
    )
}

/// Calls `got` on readable data until it returns true, for at most [`TIMEOUT`] (then ETIMEDOUT).
fn wait_for(mut got: impl FnMut() -> io::Result<bool>, fd: &impl AsRawFd) -> io::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return step(
                "waiting for the reply",
                Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
            );
        }
        set_rcvtimeo(fd, left.max(Duration::from_millis(1)))?;
        match got() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return step("recv", Err(e)),
        }
    }
}

fn set_rcvtimeo(fd: &impl AsRawFd, d: Duration) -> io::Result<()> {
    set_timeo(fd, libc::SO_RCVTIMEO, d)
}

fn set_timeo(fd: &impl AsRawFd, opt: i32, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(d.subsec_micros()),
    };
    // SAFETY: a timeval option of its own size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const tv).cast(),
            socklen::<libc::timeval>(),
        )
    })
    .map(drop)
}

/// The address of this host's that is nearest `to` (longest common prefix, same family, neither
/// loopback nor link-local): the source the kernel would pick on a lab's single veth.
fn source_for(to: IpAddr) -> io::Result<IpAddr> {
    fn bits(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }
    fn common(a: &[u8], b: &[u8]) -> u32 {
        let mut n = 0;
        for (x, y) in a.iter().zip(b) {
            let lz = (x ^ y).leading_zeros();
            n += lz;
            if lz < 8 {
                break;
            }
        }
        n
    }
    let target = bits(to);
    nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .filter(|ip| ip.is_ipv4() == to.is_ipv4() && !ip.is_loopback())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .max_by_key(|ip| common(&bits(*ip), &target))
        .ok_or_else(|| {
            eprintln!("enforcer-probe: no local address to send from");
            io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)
        })
}

/// The one's-complement sum of RFC 1071 over `chunks`.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let bytes: Vec<u8> = chunks.concat();
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// A 20-byte TCP SYN from `src:sport` to `to`, with its checksum over the pseudo-header.
fn tcp_syn(src: IpAddr, to: SocketAddr, sport: u16) -> [u8; 20] {
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&to.port().to_be_bytes());
    seg[4..8].copy_from_slice(&0x656e_6621u32.to_be_bytes()); // "enf!"
    seg[12] = 5 << 4; // data offset: 5 words, no options
    seg[13] = 0x02; // SYN
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let len = 20u16.to_be_bytes();
    let pseudo: Vec<u8> = match (src, to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [&s.octets()[..], &d.octets(), &[0, 6], &len].concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            [&s.octets()[..], &d.octets(), &[0, 0], &len, &[0, 0, 0, 6]].concat()
        }
        _ => unreachable!("source_for keeps the family"),
    };
    let sum = checksum(&[&pseudo, &seg]);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    seg
}

/// A hand-built SYN through `SOCK_RAW`/`IPPROTO_TCP` (no connect, so no connect hook), sent with
/// sendto; ok once the server answered it (SYN-ACK or RST to our port) within [`TIMEOUT`].
fn raw_tcp_syn(to: SocketAddr) -> io::Result<()> {
    let src = source_for(to.ip())?;
    let fd = socket_for(to.ip(), libc::SOCK_RAW, libc::IPPROTO_TCP)?;
    step("bind", fd.bind_compat(SocketAddr::new(src, 0)))?;
    let sport = 40_000 + u16::try_from(std::process::id() % 20_000).expect("< 20000");
    let seg = tcp_syn(src, to, sport);
    // Raw sockets take the protocol, not a port, in the address: 0 means the socket's own.
    let (addr, len) = raw_addr(&SocketAddr::new(to.ip(), 0));
    // SAFETY: `seg` and `addr` are valid for the lengths given.
    step(
        "sendto",
        cvt(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                seg.as_ptr().cast(),
                seg.len(),
                0,
                (&raw const addr).cast(),
                len,
            )
            .try_into()
            .unwrap_or(-1)
        }),
    )?;
    eprintln!("enforcer-probe: SYN {src}:{sport} -> {to} sent");
    // IPv4 raw sockets receive the IP header too; IPv6 ones only the payload.
    let skip_ip = to.is_ipv4();
    wait_for(
        || {
            let mut buf = [0u8; 1500];
            // SAFETY: recv into our buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            let pkt = &buf[..n];
            let (from, tcp) = if skip_ip {
                let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
                if n < ihl + 20 {
                    return Ok(false);
                }
                (
                    IpAddr::from([pkt[12], pkt[13], pkt[14], pkt[15]]),
                    &pkt[ihl..],
                )
            } else {
                // The sender is not in the payload: accept on the ports alone.
                if n < 20 {
                    return Ok(false);
                }
                (to.ip(), pkt)
            };
            let sport_seen = u16::from_be_bytes([tcp[0], tcp[1]]);
            let dport_seen = u16::from_be_bytes([tcp[2], tcp[3]]);
            let flags = tcp[13];
            let answered = flags & 0x12 == 0x12 || flags & 0x04 != 0;
            Ok(from == to.ip() && sport_seen == to.port() && dport_seen == sport && answered)
        },
        &fd,
    )
}

/// A routing header through `via`, of `kind`: 0 and 2 (one address) or 4 (segment routing,
/// RFC 8754: the segment list in reverse; the kernel writes the final destination into
/// segments[0] and sends to segments[segments_left] = `via` first).
fn rthdr(kind: u8, via: Ipv6Addr, to: Ipv6Addr) -> Vec<u8> {
    if kind == 4 {
        let mut h = vec![0, 4, 4, 1, 1, 0, 0, 0];
        h.extend_from_slice(&to.octets());
        h.extend_from_slice(&via.octets());
        h
    } else {
        let mut h = vec![0, 2, kind, 1, 0, 0, 0, 0];
        h.extend_from_slice(&via.octets());
        h
    }
}

/// A UDP datagram to `to` carrying a routing option `header` at `level`: set by
/// `setsockopt(level, opt)` and then sent by sendto, or given as the control message
/// (`level`, `cmsg_type`) of one sendmsg. `what` names it on stderr.
fn udp_with_route(
    to: SocketAddr,
    level: i32,
    opt: Option<i32>,
    cmsg_type: Option<i32>,
    header: &[u8],
    what: &str,
) -> io::Result<()> {
    let sock = udp(&to)?;
    let fd = sock.as_raw_fd();
    let hlen = libc::socklen_t::try_from(header.len()).expect("short header");
    if let Some(opt) = opt {
        // SAFETY: the option value is `header`, of `hlen` bytes.
        step(
            &format!("setsockopt({what})"),
            cvt(unsafe { libc::setsockopt(fd, level, opt, header.as_ptr().cast(), hlen) }),
        )?;
        return step("sendto", sock.send_to(PAYLOAD, to)).map(drop);
    }
    let cmsg_type = cmsg_type.expect("a setsockopt option or a control message");
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(hlen) } as usize;
    let mut control = vec![0u8; space];
    let (mut addr, alen) = raw_addr(&to);
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_namelen = alen;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one CMSG_SPACE(hlen) message.
    unsafe {
        let cm = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cm).cmsg_level = level;
        (*cm).cmsg_type = cmsg_type;
        (*cm).cmsg_len = libc::CMSG_LEN(hlen) as usize;
        std::ptr::copy_nonoverlapping(header.as_ptr(), libc::CMSG_DATA(cm), header.len());
    }
    // SAFETY: `msg` is fully initialised above.
    let sent = unsafe { libc::sendmsg(fd, &raw const msg, 0) };
    step(
        &format!("sendmsg({what} control message)"),
        cvt(sent.try_into().unwrap_or(-1)),
    )
    .map(drop)
}

/// Makes the socket here (outside whatever cgroup the child joins), starts the child probe in
/// `cgroup` with one end of a unix socket pair as its stdin, passes the socket over it with
/// SCM_RIGHTS, and exits with the child's status (the child prints the result line).
fn passed(tcp: bool, cgroup: &std::path::Path, to: SocketAddr) -> io::Result<()> {
    let (mine, theirs) = UnixStream::pair()?;
    let ty = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let inet = socket_for(to.ip(), ty, 0)?;
    let verb = if tcp {
        "fd-tcp-connect"
    } else {
        "fd-udp-sendto"
    };
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--cgroup")
        .arg(cgroup)
        .args([verb, &to.ip().to_string(), &to.port().to_string()])
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    let fds = [inet.as_raw_fd()];
    // Whatever happens here, the child's line is the result: a failed pass leaves it without a
    // descriptor (EOF on stdin), and it says so.
    let _ = step(
        "sendmsg(SCM_RIGHTS)",
        sendmsg::<()>(
            mine.as_raw_fd(),
            &[IoSlice::new(b"s")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from),
    );
    drop(inet);
    drop(mine);
    let status = child.wait()?;
    io::stdout().flush()?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Receives one descriptor by SCM_RIGHTS on `fd`.
fn recv_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&got) = fds.first()
        {
            // SAFETY: the kernel just installed `got` in this process for us alone.
            return Ok(unsafe { OwnedFd::from_raw_fd(got) });
        }
    }
    eprintln!("enforcer-probe: no descriptor arrived on stdin");
    Err(io::Error::from_raw_os_error(libc::EBADMSG))
}

/// The child of `passed-*`: uses the socket that arrives on stdin.
fn fd_use(tcp: bool, to: SocketAddr) -> io::Result<()> {
    let fd = step("recvmsg(SCM_RIGHTS)", recv_fd(libc::STDIN_FILENO))?;
    if tcp {
        connect_timeout(&fd, &to)
    } else {
        step("sendto", UdpSocket::from(fd).send_to(PAYLOAD, to)).map(drop)
    }
}

/// One sendmmsg of two datagrams, to `to` and then `other`; ok only if both went out. When the
/// kernel sent only the first, the second is sent again alone to learn its errno.
fn udp_sendmmsg(to: SocketAddr, other: SocketAddr) -> io::Result<()> {
    let sock = udp(&to)?;
    let mut addrs = [raw_addr(&to), raw_addr(&other)];
    let mut iovs = [
        libc::iovec {
            iov_base: PAYLOAD.as_ptr().cast_mut().cast(),
            iov_len: PAYLOAD.len(),
        },
        libc::iovec {
            iov_base: PAYLOAD.as_ptr().cast_mut().cast(),
            iov_len: PAYLOAD.len(),
        },
    ];
    // SAFETY: all-zero is a valid mmsghdr.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { mem::zeroed() };
    for (i, m) in msgs.iter_mut().enumerate() {
        m.msg_hdr.msg_name = (&raw mut addrs[i].0).cast();
        m.msg_hdr.msg_namelen = addrs[i].1;
        m.msg_hdr.msg_iov = &raw mut iovs[i];
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: two fully initialised messages whose buffers outlive the call.
    let sent = step(
        "sendmmsg",
        cvt(unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), 2, 0) }),
    )?;
    eprintln!("enforcer-probe: sendmmsg sent {sent} of 2");
    match sent {
        2 => Ok(()),
        1 => step(
            "sendto OTHER (the datagram sendmmsg did not send)",
            sock.send_to(PAYLOAD, other),
        )
        .map(drop),
        _ => step("sendmmsg", Err(io::Error::from_raw_os_error(libc::EIO))),
    }
}

/// `sendto(MSG_FASTOPEN)` on a fresh TCP socket: connect and first data in one call.
fn tcp_fastopen(to: SocketAddr) -> io::Result<()> {
    let fd = socket_for(to.ip(), libc::SOCK_STREAM, 0)?;
    // A blocking sendto waits for the handshake as long as SO_SNDTIMEO lets it.
    set_timeo(&fd, libc::SO_SNDTIMEO, TIMEOUT)?;
    let (addr, len) = raw_addr(&to);
    let started = Instant::now();
    // SAFETY: valid buffer and address.
    let ret = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            PAYLOAD.as_ptr().cast(),
            PAYLOAD.len(),
            libc::MSG_FASTOPEN,
            (&raw const addr).cast(),
            len,
        )
    };
    if ret >= 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    let timed_out = matches!(err.raw_os_error(), Some(libc::EINPROGRESS | libc::EAGAIN))
        && started.elapsed() >= TIMEOUT;
    step(
        "sendto(MSG_FASTOPEN)",
        Err(if timed_out {
            io::Error::from_raw_os_error(libc::ETIMEDOUT)
        } else {
            err
        }),
    )
}

/// `IORING_OP_CONNECT` linked to a [`TIMEOUT`] (cancelled: ETIMEDOUT).
fn io_uring_connect(to: SocketAddr) -> io::Result<()> {
    use io_uring::{IoUring, opcode, squeue, types};
    let fd = socket_for(to.ip(), libc::SOCK_STREAM, 0)?;
    let (addr, len) = raw_addr(&to);
    let mut ring = step("io_uring_setup", IoUring::new(4))?;
    let connect = opcode::Connect::new(types::Fd(fd.as_raw_fd()), (&raw const addr).cast(), len)
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(1);
    let ts = types::Timespec::from(TIMEOUT);
    let timeout = opcode::LinkTimeout::new(&raw const ts).build().user_data(2);
    // SAFETY: `addr` and `ts` outlive the submission, which completes before they drop.
    unsafe {
        let mut sq = ring.submission();
        sq.push(&connect)
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        sq.push(&timeout)
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
    }
    step("io_uring_enter", ring.submit_and_wait(2))?;
    let res = ring
        .completion()
        .find(|cqe| cqe.user_data() == 1)
        .map(|cqe| cqe.result())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
    match res {
        0.. => Ok(()),
        r if -r == libc::ECANCELED => step(
            "IORING_OP_CONNECT",
            Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
        ),
        r => step("IORING_OP_CONNECT", Err(io::Error::from_raw_os_error(-r))),
    }
}
