//! `enforcer-probe`: one network action from a chosen cgroup and network namespace, with a result
//! line a test (or the demo) can parse.
//!
//! ```text
//! enforcer-probe [--cgroup DIR] [--netns NAME] ACTION
//!   tcp-connect ADDR PORT | udp-sendto ADDR PORT | udp-connect ADDR PORT | ping ADDR
//!   udp-request ADDR PORT        sendto, then wait for the server's answer (ok only if it comes)
//!   tcp-listen [--v6only] ADDR PORT | udp-listen [--v6only] ADDR PORT
//!   udp-burst ADDR PORT COUNT [PORTS]
//!   tcp-loop MILLIS ADDR PORT...   connect to each PORT in turn, 1 ms apart, for MILLIS
//!   tcp-echo-listen [--v6only] ADDR PORT   tcp-listen, echoing each connection on its own thread
//!   udp-late-listen ADDR PORT      udp-listen, answering each datagram a second late
//!   tcp-stream ADDR PORT MILLIS    one connection: a byte out and back every 10 ms for MILLIS
//! socket kinds and paths past the plain hooks (socket_kinds.rs):
//!   udplite-sendto ADDR PORT | udplite-connect ADDR PORT | udplite-listen ADDR PORT
//!   ping-sendto ADDR          unconnected ping socket: sendto, wait ≤ 2 s for the reply
//!   raw-tcp-syn ADDR PORT     SOCK_RAW/IPPROTO_TCP hand-built SYN by sendto; ok once answered
//!   udp-rthdr TYPE VIA ADDR PORT        IPV6_RTHDR (type 0, 2 or 4) through VIA by setsockopt, sendto
//!   udp-rthdr-cmsg TYPE VIA ADDR PORT   the same header as an IPV6_RTHDR control message of sendmsg
//!   udp-srr lsrr|ssrr VIA ADDR PORT     IPv4 source route through VIA by setsockopt(IP_OPTIONS), sendto
//!   udp-srr-cmsg lsrr|ssrr VIA ADDR PORT  the same option as an IP_RETOPTS control message of sendmsg
//!   passed-tcp-connect CGROUP ADDR PORT a socket made here (run it without --cgroup), passed by
//!   passed-udp-sendto CGROUP ADDR PORT  SCM_RIGHTS to a child probe in CGROUP that connects/sendto's
//!                                       it (the child's fd-tcp-connect/fd-udp-sendto: fd on stdin)
//!   packet-socket packet-raw|packet-dgram|inet-packet   AF_PACKET (or AF_INET SOCK_PACKET) socket
//!   udp-connected-sendto ADDR PORT OTHER OPORT   connect, send, then sendto OTHER on the same socket
//!   udp-unspec-sendto ADDR PORT OTHER OPORT      connect, send, connect(AF_UNSPEC), sendto OTHER
//!   udp-sendmmsg ADDR PORT OTHER OPORT           one sendmmsg of two datagrams; ok if both went
//!   tcp-fastopen ADDR PORT | mptcp-connect ADDR PORT | io-uring-connect ADDR PORT  (2 s timeout)
//!   tcp-repair-send ADDR PORT    connect in TCP_REPAIR mode (no SYN), leave it, send data
//! ```
//!
//! Client actions print `ok pid=N` (exit 0) or `error <ERRNO_NAME> errno=<n> pid=N` (exit 1).
//! `udp-burst` sends COUNT datagrams from one socket as fast as it can (round robin over PORTS
//! consecutive ports from PORT, default 1) and prints
//! `sent=S refused=R pid=N` (exit 0 whatever the verdicts; 1 on any error but EPERM).
//! `tcp-loop` prints `attempt T_MS PORT RESULT` per connection (RESULT `ok`, or the errno name;
//! `ECONNREFUSED` means the kernel let the SYN out and the server answered), then `attempts=N
//! pid=N` (exit 0 unless setup failed). `tcp-stream` prints `connected local=IP:PORT pid=N` once
//! connected (2 s timeout), then writes one byte and reads it back (3 s read timeout) every 10 ms
//! until MILLIS have passed since the connect or an exchange failed, then prints one line `ended
//! RESULT exchanged=N pid=N` (exit 0): RESULT is `ok` when the time ran out, else the errno name
//! (`ECONNABORTED`, `ECONNRESET`, `EPIPE`, `ETIMEDOUT` for the read timeout, …) or `EOF` when the
//! peer closed the connection; a failed connect prints the usual `error` line (exit 1).
//! Listeners print `listening pid=N` once bound, then one `peer ADDR` line per connection or
//! datagram, and serve until killed; `tcp-echo-listen` echoes every byte of a connection back
//! until EOF or an error, and closes it with an RST (`SO_LINGER` 0), so that killing it aborts
//! its connections (`ECONNRESET` at a `tcp-stream`) instead of ending them (`EOF`). `--v6only`
//! sets `IPV6_V6ONLY` before an IPv6 bind. Usage errors exit 2.
//!
//! The cgroup is joined before the namespace so that the whole life of every socket is spent inside
//! the managed cgroup: the enforcer judges a socket by the cgroup of the process that opens it.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

// In a directory of its own so that cargo does not take it for another binary.
#[path = "enforcer-probe/socket_kinds.rs"]
mod socket_kinds;

use nix::{
    errno::Errno,
    sched::{CloneFlags, setns},
    sys::socket::{
        AddressFamily, Backlog, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6, bind,
        send, setsockopt, socket, sockopt,
    },
};

/// Long enough for a real handshake on a veth, short enough that a silently dropped SYN cannot be
/// mistaken for an immediate refusal.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How late `udp-late-listen` answers: within a client's [`TIMEOUT`], long enough for a test to
/// change the policy between a request and its answer.
const LATE_ANSWER: Duration = Duration::from_secs(1);

enum Action {
    TcpConnect(SocketAddr),
    UdpSendto(SocketAddr),
    UdpConnect(SocketAddr),
    UdpRequest(SocketAddr),
    Ping(IpAddr),
    TcpListen(SocketAddr),
    TcpEchoListen(SocketAddr),
    /// Answers each datagram after the delay.
    UdpListen(SocketAddr, Duration),
    UdpBurst(SocketAddr, u32, u16),
    TcpLoop(Duration, IpAddr, Vec<u16>),
    TcpStream(SocketAddr, Duration),
    /// One of `socket_kinds`'s actions.
    Kind(socket_kinds::Action),
}

struct Args {
    cgroup: Option<PathBuf>,
    netns: Option<String>,
    action: Action,
    /// Listeners only: `IPV6_V6ONLY` before bind.
    v6only: bool,
}

fn usage(why: &str) -> ExitCode {
    eprintln!("enforcer-probe: {why}");
    eprintln!(
        "usage: enforcer-probe [--cgroup DIR] [--netns NAME] \
         (tcp-connect|udp-sendto|udp-connect|tcp-listen|udp-listen ADDR PORT | ping ADDR)"
    );
    ExitCode::from(2)
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut cgroup = None;
    let mut netns = None;
    let verb = loop {
        match argv.next().as_deref() {
            Some("--cgroup") => {
                cgroup = Some(PathBuf::from(argv.next().ok_or("--cgroup needs DIR")?))
            }
            Some("--netns") => netns = Some(argv.next().ok_or("--netns needs NAME")?),
            Some(verb) => break verb.to_owned(),
            None => return Err("missing ACTION".to_owned()),
        }
    };
    const VERBS: [&str; 11] = [
        "udp-burst",
        "tcp-connect",
        "udp-sendto",
        "udp-connect",
        "udp-request",
        "ping",
        "tcp-listen",
        "tcp-echo-listen",
        "udp-listen",
        "udp-late-listen",
        "tcp-stream",
    ];
    if let Some(kind) = socket_kinds::parse(&verb, &mut argv)? {
        if let Some(extra) = argv.next() {
            return Err(format!("unexpected argument {extra:?}"));
        }
        return Ok(Args {
            cgroup,
            netns,
            action: Action::Kind(kind),
            v6only: false,
        });
    }
    if verb == "tcp-loop" {
        let millis: u64 = argv
            .next()
            .ok_or("missing MILLIS")?
            .parse()
            .map_err(|e| format!("bad MILLIS: {e}"))?;
        let addr: IpAddr = argv
            .next()
            .ok_or("missing ADDR")?
            .parse()
            .map_err(|e| format!("bad ADDR: {e}"))?;
        let ports = argv
            .map(|p| p.parse().map_err(|e| format!("bad PORT {p:?}: {e}")))
            .collect::<Result<Vec<u16>, String>>()?;
        if ports.is_empty() {
            return Err("missing PORT".to_owned());
        }
        return Ok(Args {
            cgroup,
            netns,
            action: Action::TcpLoop(Duration::from_millis(millis), addr, ports),
            v6only: false,
        });
    }
    if !VERBS.contains(&verb.as_str()) {
        return Err(format!("unknown ACTION {verb:?}"));
    }
    let mut first = argv.next().ok_or("missing ADDR")?;
    let v6only = first == "--v6only" && verb.ends_with("-listen");
    if v6only {
        first = argv.next().ok_or("missing ADDR")?;
    }
    let addr: IpAddr = first.parse().map_err(|e| format!("bad ADDR: {e}"))?;
    let mut sock = || -> Result<SocketAddr, String> {
        let port: u16 = argv
            .next()
            .ok_or("missing PORT")?
            .parse()
            .map_err(|e| format!("bad PORT: {e}"))?;
        Ok(SocketAddr::new(addr, port))
    };
    let action = match verb.as_str() {
        "tcp-connect" => Action::TcpConnect(sock()?),
        "udp-sendto" => Action::UdpSendto(sock()?),
        "udp-connect" => Action::UdpConnect(sock()?),
        "udp-request" => Action::UdpRequest(sock()?),
        "tcp-listen" => Action::TcpListen(sock()?),
        "tcp-echo-listen" => Action::TcpEchoListen(sock()?),
        "udp-listen" => Action::UdpListen(sock()?, Duration::ZERO),
        "udp-late-listen" => Action::UdpListen(sock()?, LATE_ANSWER),
        "ping" => Action::Ping(addr),
        "udp-burst" => {
            let target = sock()?;
            let count = argv
                .next()
                .ok_or("missing COUNT")?
                .parse()
                .map_err(|e| format!("bad COUNT: {e}"))?;
            let ports = argv
                .next()
                .map_or(Ok(1), |ports| ports.parse())
                .map_err(|e| format!("bad PORTS: {e}"))?;
            Action::UdpBurst(target, count, ports)
        }
        "tcp-stream" => {
            let target = sock()?;
            let millis = argv
                .next()
                .ok_or("missing MILLIS")?
                .parse()
                .map_err(|e| format!("bad MILLIS: {e}"))?;
            Action::TcpStream(target, Duration::from_millis(millis))
        }
        other => return Err(format!("unknown ACTION {other:?}")),
    };
    if let Some(extra) = argv.next() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    Ok(Args {
        cgroup,
        netns,
        action,
        v6only,
    })
}

fn join_cgroup(dir: &Path) -> io::Result<()> {
    let mut procs = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    // One write(2) with the whole pid: the kernel parses each write on its own.
    procs.write_all(std::process::id().to_string().as_bytes())
}

fn join_netns(name: &str) -> io::Result<()> {
    let ns = File::open(PathBuf::from("/run/netns").join(name))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

fn unspecified(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse(),
        SocketAddr::V6(_) => "[::]:0".parse(),
    }
    .expect("literal socket address")
}

fn tcp_connect(addr: SocketAddr) -> io::Result<()> {
    TcpStream::connect_timeout(&addr, TIMEOUT).map(drop)
}

/// Connects to each port in turn until `length` has passed; returns the number of attempts.
fn tcp_loop(length: Duration, addr: IpAddr, ports: &[u16]) -> usize {
    let started = std::time::Instant::now();
    let mut attempts = 0;
    let mut out = io::BufWriter::new(io::stdout().lock());
    while started.elapsed() < length {
        for port in ports {
            let result = TcpStream::connect_timeout(
                &SocketAddr::new(addr, *port),
                // Long enough for a SYN retransmit: a busy listener's full backlog drops the
                // first SYN, which is no verdict.
                Duration::from_secs(3),
            )
            .map_or_else(|err| errno_name(&err), |_| "ok".to_owned());
            let _ = writeln!(
                out,
                "attempt {} {port} {result}",
                started.elapsed().as_millis()
            );
            attempts += 1;
            // Paced, so that the denials' events fit the ring buffer over a whole test.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    attempts
}

/// `send` with `MSG_NOSIGNAL`, all of `buf`: a write to a connection the peer (or the enforcer)
/// aborted returns `EPIPE` instead of killing the probe with `SIGPIPE`.
fn send_all(conn: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match send(conn.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How a `tcp-stream` exchange failed.
enum StreamEnd {
    /// The peer closed its side: a read returned 0.
    Eof,
    Error(io::Error),
}

/// One byte out and the same byte back every 10 ms on `conn` until `length` has passed since
/// `connected`; returns the number of round trips and how they ended (`None`: time ran out).
fn tcp_stream(conn: &TcpStream, connected: Instant, length: Duration) -> (u64, Option<StreamEnd>) {
    let mut exchanged = 0u64;
    let exchange = |byte: u8| -> Result<(), StreamEnd> {
        send_all(conn, &[byte]).map_err(StreamEnd::Error)?;
        let mut back = [0u8; 1];
        loop {
            match (&*conn).read(&mut back) {
                Ok(0) => return Err(StreamEnd::Eof),
                Ok(_) if back[0] == byte => return Ok(()),
                // An echo server cannot answer with another byte: the stream is corrupt.
                Ok(_) => {
                    return Err(StreamEnd::Error(io::Error::from_raw_os_error(
                        libc::EBADMSG,
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The read timeout shows as EAGAIN; the contract names it ETIMEDOUT.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(StreamEnd::Error(io::Error::from_raw_os_error(
                        libc::ETIMEDOUT,
                    )));
                }
                Err(e) => return Err(StreamEnd::Error(e)),
            }
        }
    };
    while connected.elapsed() < length {
        // The low byte of the count: it only has to differ from one exchange to the next.
        if let Err(end) = exchange(exchanged.to_le_bytes()[0]) {
            return (exchanged, Some(end));
        }
        exchanged += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    (exchanged, None)
}

fn udp_sendto(addr: SocketAddr) -> io::Result<()> {
    let sock = UdpSocket::bind(unspecified(&addr))?;
    sock.send_to(b"enforcer-probe", addr).map(drop)
}

/// Sends `count` datagrams from one socket; returns how many the kernel refused with EPERM.
fn udp_burst(addr: SocketAddr, count: u32, ports: u16) -> io::Result<u32> {
    let sock = UdpSocket::bind(unspecified(&addr))?;
    let mut refused = 0;
    for sent in 0..count {
        let offset = u16::try_from(sent % u32::from(ports.max(1))).unwrap_or(0);
        let target = SocketAddr::new(addr.ip(), addr.port().wrapping_add(offset));
        match sock.send_to(b"enforcer-probe", target) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => refused += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

fn udp_connect(addr: SocketAddr) -> io::Result<()> {
    let sock = UdpSocket::bind(unspecified(&addr))?;
    sock.connect(addr)?;
    sock.send(b"enforcer-probe").map(drop)
}

/// Sends one datagram and waits for the answer, from whatever address the server answers.
fn udp_request(addr: SocketAddr) -> io::Result<()> {
    let sock = UdpSocket::bind(unspecified(&addr))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.send_to(b"enforcer-probe", addr)?;
    let mut buf = [0u8; 64];
    sock.recv_from(&mut buf).map(drop)
}

/// An echo through an unprivileged ping socket, so that the kernel's cgroup connect hook sees it
/// (a raw socket would bypass `connect`). Success needs the echo reply, not just the send.
fn ping(addr: IpAddr) -> io::Result<()> {
    let (family, protocol, request, reply) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8, 0u8),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128u8, 129u8),
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, protocol)?;
    let sock = UdpSocket::from(fd);
    sock.connect(SocketAddr::new(addr, 0))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    // Type, code, checksum, identifier, sequence: the kernel fills in the checksum and identifier.
    let mut echo = [0u8; 16];
    echo[0] = request;
    echo[7] = 1;
    echo[8..].copy_from_slice(b"enforcer");
    sock.send(&echo)?;
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::from_raw_os_error(libc::ETIMEDOUT)
            }
            _ => e,
        })?;
        if n >= 1 && buf[0] == reply {
            return Ok(());
        }
    }
}

/// An IPv6 socket with `IPV6_V6ONLY` (and, like std's listeners, `SO_REUSEADDR`) set before it is
/// bound to `addr`.
fn bind_v6only(addr: SocketAddr, ty: SockType) -> io::Result<OwnedFd> {
    let SocketAddr::V6(v6) = addr else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--v6only needs an IPv6 ADDR",
        ));
    };
    let fd = socket(AddressFamily::Inet6, ty, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn6::from(v6))?;
    Ok(fd)
}

fn listen(action: &Action, v6only: bool) -> io::Result<()> {
    let announce = || {
        println!("listening pid={}", std::process::id());
        io::stdout().flush()
    };
    match *action {
        Action::TcpListen(addr) | Action::TcpEchoListen(addr) => {
            let echo = matches!(action, Action::TcpEchoListen(_));
            let listener = if v6only {
                let fd = bind_v6only(addr, SockType::Stream)?;
                nix::sys::socket::listen(&fd, Backlog::new(128)?)?;
                TcpListener::from(fd)
            } else {
                TcpListener::bind(addr)?
            };
            announce()?;
            loop {
                let (conn, peer) = listener.accept()?;
                println!("peer {peer}");
                io::stdout().flush()?;
                if echo {
                    // Closed with an RST, not a FIN (SO_LINGER 0): a killed echo server aborts its
                    // connections, and its clients see ECONNRESET rather than a clean EOF. Best
                    // effort: without it the echo still works.
                    let abort = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    let _ = setsockopt(&conn, sockopt::Linger, &abort);
                    // Detached: the thread ends with its connection, or with the process.
                    std::thread::spawn(move || echo_conn(&conn));
                }
            }
        }
        Action::UdpListen(addr, delay) => {
            let sock = if v6only {
                UdpSocket::from(bind_v6only(addr, SockType::Datagram)?)
            } else {
                UdpSocket::bind(addr)?
            };
            announce()?;
            let mut buf = [0u8; 2048];
            loop {
                let (n, peer) = sock.recv_from(&mut buf)?;
                println!("peer {peer}");
                io::stdout().flush()?;
                std::thread::sleep(delay);
                // Echo back so that a client can tell delivery from a silent drop; a refused reply
                // must not stop the server.
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
        _ => unreachable!("listen called with a client action"),
    }
}

/// Writes every byte read from `conn` back to it until EOF or an error (which ends only this
/// connection).
fn echo_conn(conn: &TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match (&*conn).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if send_all(conn, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The errno name of `err` (`EPERM`, `ETIMEDOUT`, …), as result lines print it.
fn errno_name(err: &io::Error) -> String {
    format!("{:?}", Errno::from_raw(errno_of(err)))
}

/// Std maps a connect timeout to an error without an OS code; the contract wants a name for it.
fn errno_of(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => libc::ETIMEDOUT,
        _ => libc::EIO,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => return usage(&why),
    };
    let pid = std::process::id();
    let setup = args
        .cgroup
        .as_deref()
        .map_or(Ok(()), join_cgroup)
        .and_then(|()| args.netns.as_deref().map_or(Ok(()), join_netns));
    if let Action::UdpBurst(addr, count, ports) = args.action {
        return match setup.and_then(|()| udp_burst(addr, count, ports)) {
            Ok(refused) => {
                println!("sent={count} refused={refused} pid={pid}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                println!("error errno={} pid={pid}", errno_of(&err));
                ExitCode::FAILURE
            }
        };
    }
    if let Action::TcpLoop(length, addr, ports) = &args.action {
        return match setup {
            Ok(()) => {
                let attempts = tcp_loop(*length, *addr, ports);
                println!("attempts={attempts} pid={pid}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                println!("error errno={} pid={pid}", errno_of(&err));
                ExitCode::FAILURE
            }
        };
    }
    if let Action::TcpStream(addr, length) = args.action {
        return match setup.and_then(|()| TcpStream::connect_timeout(&addr, TIMEOUT)) {
            Ok(conn) => stream_main(&conn, length),
            Err(err) => {
                let errno = errno_of(&err);
                println!("error {:?} errno={errno} pid={pid}", Errno::from_raw(errno));
                eprintln!("enforcer-probe: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let result = setup.and_then(|()| match args.action {
        Action::UdpBurst(..) | Action::TcpLoop(..) | Action::TcpStream(..) => {
            unreachable!("handled above")
        }
        Action::Kind(ref kind) => socket_kinds::run(kind),
        Action::TcpConnect(addr) => tcp_connect(addr),
        Action::UdpSendto(addr) => udp_sendto(addr),
        Action::UdpConnect(addr) => udp_connect(addr),
        Action::UdpRequest(addr) => udp_request(addr),
        Action::Ping(addr) => ping(addr),
        Action::TcpListen(_) | Action::TcpEchoListen(_) | Action::UdpListen(..) => {
            listen(&args.action, args.v6only)
        }
    });
    match result {
        Ok(()) => {
            println!("ok pid={pid}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let errno = errno_of(&err);
            println!("error {:?} errno={errno} pid={pid}", Errno::from_raw(errno));
            eprintln!("enforcer-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `tcp-stream` once connected: the `connected` line, the exchanges, the `ended` line.
fn stream_main(conn: &TcpStream, length: Duration) -> ExitCode {
    let connected = Instant::now();
    let pid = std::process::id();
    let setup = conn
        .set_read_timeout(Some(Duration::from_secs(3)))
        .and_then(|()| conn.local_addr())
        .and_then(|local| {
            println!("connected local={local} pid={pid}");
            io::stdout().flush()
        });
    if let Err(err) = setup {
        let errno = errno_of(&err);
        println!("error {:?} errno={errno} pid={pid}", Errno::from_raw(errno));
        eprintln!("enforcer-probe: {err}");
        return ExitCode::FAILURE;
    }
    let (exchanged, end) = tcp_stream(conn, connected, length);
    let result = match &end {
        None => "ok".to_owned(),
        Some(StreamEnd::Eof) => "EOF".to_owned(),
        Some(StreamEnd::Error(err)) => errno_name(err),
    };
    println!("ended {result} exchanged={exchanged} pid={pid}");
    if let Some(StreamEnd::Error(err)) = &end {
        eprintln!("enforcer-probe: {err}");
    }
    // The line is the result: a closed stdout at this point changes nothing.
    let _ = io::stdout().flush();
    ExitCode::SUCCESS
}
