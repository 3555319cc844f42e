//! The bench's own load: a server that accepts and drains, and clients that open new connections
//! as fast as one thread can. They run as `xtask bench-load ...` inside the lab's namespaces (and
//! the client in its cgroup), so the bench needs no tool that measures connects with a timer per
//! connection.
//!
//! A TCP client connects, then closes with `SO_LINGER` 0: the close sends a RST, so no socket is
//! left in `TIME_WAIT` and a long run does not run out of local ports. A UDP client opens a socket,
//! connects it, sends one datagram and closes it: every datagram is a new flow to judge.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

/// What a load process does.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Load {
    /// Accepts TCP connections and drains UDP datagrams on `addr` until killed.
    Serve { addr: SocketAddr },
    /// New TCP connections to `addr` for `secs` seconds; prints a JSON report.
    Tcp { addr: SocketAddr, secs: f64 },
    /// New UDP sockets, each connected to `addr` and sending one datagram, for `secs` seconds;
    /// prints a JSON report.
    Udp { addr: SocketAddr, secs: f64 },
}

/// What a client did: attempts, those that failed, and the connect latency of those that did
/// not, in nanoseconds.
#[derive(Debug, Default)]
struct Tally {
    attempts: u64,
    failed: u64,
    first_error: Option<String>,
    latencies_ns: Vec<u64>,
}

/// Runs `load`.
///
/// # Errors
/// When the server cannot bind, or a client cannot make a socket.
pub fn run(load: &Load) -> anyhow::Result<()> {
    match *load {
        Load::Serve { addr } => serve(addr),
        Load::Tcp { addr, secs } => report(&tcp(addr, Duration::from_secs_f64(secs))?, secs),
        Load::Udp { addr, secs } => report(&udp(addr, Duration::from_secs_f64(secs))?, secs),
    }
}

fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    listener.set_reuse_address(true)?;
    listener
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    // Deep enough that a burst of connects never meets a full queue while this thread is off CPU.
    listener.listen(4096)?;
    let listener: TcpListener = listener.into();
    let datagrams = UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
    thread::spawn(move || {
        let mut buf = [0_u8; 2048];
        while datagrams.recv(&mut buf).is_ok() {}
    });
    println!("listening on {addr}");
    // The client resets each connection once it is up: accepting and dropping is all the server
    // does, so that the accept queue never fills.
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}

fn tcp(addr: SocketAddr, length: Duration) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let deadline = Instant::now() + length;
    let target = addr.into();
    while Instant::now() < deadline {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .context("creating a TCP socket")?;
        socket.set_linger(Some(Duration::ZERO))?;
        let started = Instant::now();
        let result = socket.connect_timeout(&target, Duration::from_secs(1));
        tally.count(result, started);
    }
    Ok(tally)
}

fn udp(addr: SocketAddr, length: Duration) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let deadline = Instant::now() + length;
    let target = addr.into();
    while Instant::now() < deadline {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .context("creating a UDP socket")?;
        let started = Instant::now();
        let result = socket
            .connect(&target)
            .and_then(|()| socket.send(b"enforcer bench").map(drop));
        tally.count(result, started);
    }
    Ok(tally)
}

impl Tally {
    fn count(&mut self, result: std::io::Result<()>, started: Instant) {
        self.attempts += 1;
        match result {
            Ok(()) => self
                .latencies_ns
                .push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)),
            Err(error) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// Prints the tally as one JSON object: attempts, failed, the first error, the rate of
/// successes per second, and p50 / p99 latency in microseconds.
fn report(tally: &Tally, secs: f64) -> anyhow::Result<()> {
    let mut sorted = tally.latencies_ns.clone();
    sorted.sort_unstable();
    let percentile = |p: f64| -> Option<f64> {
        let last = sorted.len().checked_sub(1)?;
        let at = ((last as f64) * p).round() as usize;
        sorted.get(at).map(|&ns| ns as f64 / 1000.0)
    };
    let rate = sorted.len() as f64 / secs;
    println!(
        "{}",
        json!({
            "attempts": tally.attempts,
            "failed": tally.failed,
            "first_error": tally.first_error,
            "per_second": rate,
            "p50_us": percentile(0.50),
            "p99_us": percentile(0.99),
        })
    );
    Ok(())
}
