//! Driving `enforcer-probe`: one connection attempt per process, so that each attempt has its own
//! pid, cgroup and namespace exactly as a real workload would.

use std::{
    fmt,
    io::{BufRead, BufReader, Read as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

/// A denial must be immediate: far below the probe's 2 s connect timeout, with room for a loaded
/// 2-core machine to spawn the process.
pub const IMMEDIATE: Duration = Duration::from_millis(1000);

/// The probe binary: `$ENFORCER_PROBE_BIN`, else `enforcer-probe` in the target directory that holds
/// the running test executable (cargo builds a package's binaries before its integration tests).
#[must_use]
pub fn probe_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENFORCER_PROBE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test>-<hash> → target/debug/enforcer-probe
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join("enforcer-probe"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no enforcer-probe above {}", exe.display()))
}

/// Transport of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    /// UDP-Lite (`IPPROTO_UDPLITE`, 136): a plain UDP socket never receives it.
    UdpLite,
}

/// Where a probe runs: an optional cgroup to join, then an optional network namespace.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    cgroup: Option<PathBuf>,
    netns: Option<String>,
}

impl Probe {
    #[must_use]
    pub fn new(cgroup: Option<&Path>, netns: Option<&str>) -> Self {
        Self {
            cgroup: cgroup.map(Path::to_path_buf),
            netns: netns.map(str::to_owned),
        }
    }

    /// Runs one client action (`["tcp-connect", "10.0.0.2", "80"]`) and parses its result line.
    #[must_use]
    pub fn run(&self, action: &[&str]) -> ProbeOutcome {
        let mut cmd = Command::new(probe_bin());
        if let Some(cg) = &self.cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        if let Some(ns) = &self.netns {
            cmd.arg("--netns").arg(ns);
        }
        cmd.args(action);
        let started = Instant::now();
        let out = cmd.output().expect("spawn enforcer-probe");
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let what = action.join(" ");
        let outcome = ProbeOutcome::parse(&stdout, elapsed, what, stderr)
            .unwrap_or_else(|e| panic!("enforcer-probe {action:?} ({}): {e}", out.status));
        assert_eq!(
            out.status.success(),
            outcome.errno.is_none(),
            "exit status {} disagrees with {outcome}",
            out.status
        );
        outcome
    }

    pub fn tcp_connect(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["tcp-connect", &addr.to_string(), &port.to_string()])
    }

    /// `sendto` on an unconnected socket (the kernel's sendmsg hooks).
    pub fn udp_sendto(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["udp-sendto", &addr.to_string(), &port.to_string()])
    }

    /// `connect` then `send` (the kernel's connect hooks).
    pub fn udp_connect(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["udp-connect", &addr.to_string(), &port.to_string()])
    }

    /// `sendto`, then the server's answer; ok only once the answer arrived (within 2 s).
    pub fn udp_request(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["udp-request", &addr.to_string(), &port.to_string()])
    }

    /// An ICMP echo through a ping socket; ok only once the reply arrived.
    pub fn ping(&self, addr: IpAddr) -> ProbeOutcome {
        self.run(&["ping", &addr.to_string()])
    }
}

/// The parsed result line of a client action.
#[derive(Clone, Debug)]
pub struct ProbeOutcome {
    /// What was attempted, for messages.
    pub action: String,
    pub pid: u32,
    /// `(name, number)`, e.g. `("EPERM", 1)`; `None` on success.
    pub errno: Option<(String, i32)>,
    /// Wall time of the whole probe process, spawn included.
    pub elapsed: Duration,
    pub stderr: String,
}

impl ProbeOutcome {
    fn parse(
        stdout: &str,
        elapsed: Duration,
        action: String,
        stderr: String,
    ) -> Result<Self, String> {
        let bad = || format!("unexpected output {stdout:?}, stderr {stderr:?}");
        let line = stdout.lines().last().ok_or_else(bad)?;
        let mut words = line.split_whitespace();
        let errno = match words.next() {
            Some("ok") => None,
            Some("error") => {
                let name = words.next().ok_or_else(bad)?.to_owned();
                let num = words
                    .next()
                    .and_then(|w| w.strip_prefix("errno="))
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?;
                Some((name, num))
            }
            _ => return Err(bad()),
        };
        let pid = words
            .next()
            .and_then(|w| w.strip_prefix("pid="))
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        Ok(Self {
            action,
            pid,
            errno,
            elapsed,
            stderr,
        })
    }

    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.errno.is_none()
    }

    /// The errno name, or `"ok"`.
    #[must_use]
    pub fn result(&self) -> &str {
        self.errno.as_ref().map_or("ok", |(name, _)| name)
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.is_ok(), "expected {} to succeed: {self}", self.action);
        self
    }

    #[track_caller]
    pub fn assert_errno(&self, name: &str) -> &Self {
        assert_eq!(self.result(), name, "{}: {self}", self.action);
        self
    }

    /// Refused by the enforcer: EPERM, and at once rather than after a timeout.
    #[track_caller]
    pub fn assert_denied(&self) -> &Self {
        self.assert_errno("EPERM");
        assert!(
            self.elapsed < IMMEDIATE,
            "{} took {:?} to be refused; a policy denial must be immediate",
            self.action,
            self.elapsed
        );
        self
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.errno {
            None => write!(f, "ok pid={}", self.pid)?,
            Some((name, n)) => write!(f, "error {name} errno={n} pid={}", self.pid)?,
        }
        write!(f, " after {:?}", self.elapsed)?;
        if !self.stderr.is_empty() {
            write!(f, " ({})", self.stderr)?;
        }
        Ok(())
    }
}

/// A probe serving in listen mode inside a namespace; killed on drop. Each accepted connection or
/// received datagram is recorded, so a test can tell delivery from a mere successful send.
#[derive(Debug)]
pub struct Listener {
    running: Running,
}

impl Listener {
    /// Starts `tcp-listen`/`udp-listen` on `addr:port` in `netns` and waits until it is bound.
    #[must_use]
    pub fn start(netns: &str, proto: Proto, addr: IpAddr, port: u16) -> Self {
        Self::start_in(None, netns, proto, addr, port)
    }

    /// Like [`Listener::start`], from inside `cgroup` (a workload serving).
    #[must_use]
    pub fn start_in(
        cgroup: Option<&Path>,
        netns: &str,
        proto: Proto,
        addr: IpAddr,
        port: u16,
    ) -> Self {
        Self::start_with(cgroup, netns, proto, addr, port, &[])
    }

    /// Like [`Listener::start_in`] on an IPv6 `addr`, with `IPV6_V6ONLY` set before the bind: the
    /// socket takes no IPv4 traffic, so it can share its port with an IPv4 listener.
    #[must_use]
    pub fn start_in_v6only(
        cgroup: Option<&Path>,
        netns: &str,
        proto: Proto,
        addr: IpAddr,
        port: u16,
    ) -> Self {
        Self::start_with(cgroup, netns, proto, addr, port, &["--v6only"])
    }

    /// Like [`Listener::start_in`], with listener options (`opts`, e.g. `["--v6only"]`) passed
    /// between the action and its address.
    #[must_use]
    pub fn start_with(
        cgroup: Option<&Path>,
        netns: &str,
        proto: Proto,
        addr: IpAddr,
        port: u16,
        opts: &[&str],
    ) -> Self {
        let verb = match proto {
            Proto::Tcp => "tcp-listen",
            Proto::Udp => "udp-listen",
            Proto::UdpLite => "udplite-listen",
        };
        Self::start_verb(cgroup, netns, verb, addr, port, opts)
    }

    /// `tcp-echo-listen` on `addr:port` in `netns`, from inside `cgroup` (None: outside the
    /// managed tree): a TCP listener that echoes every byte of each connection back, the server
    /// of [`Stream`]. Waits until it is bound.
    #[must_use]
    pub fn start_echo(cgroup: Option<&Path>, netns: &str, addr: IpAddr, port: u16) -> Self {
        Self::start_verb(cgroup, netns, "tcp-echo-listen", addr, port, &[])
    }

    /// A UDP server in netns `netns` on `addr:port` that answers each datagram a second late
    /// (outside the managed tree): for a policy change between a request and its answer.
    #[must_use]
    pub fn start_late_udp(netns: &str, addr: IpAddr, port: u16) -> Self {
        Self::start_verb(None, netns, "udp-late-listen", addr, port, &[])
    }

    fn start_verb(
        cgroup: Option<&Path>,
        netns: &str,
        verb: &str,
        addr: IpAddr,
        port: u16,
        opts: &[&str],
    ) -> Self {
        let mut args = vec![verb.to_owned()];
        args.extend(opts.iter().map(|&o| o.to_owned()));
        args.extend([addr.to_string(), port.to_string()]);
        let running = Running::spawn(cgroup, netns, &args);
        running.wait_for("listening pid=", Duration::from_secs(5));
        Self { running }
    }

    fn lines(&self) -> Vec<String> {
        self.running.lines().into_iter().map(|(_, l)| l).collect()
    }

    /// The `ip:port` of every connection accepted or datagram received so far.
    #[must_use]
    pub fn peers(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("peer ").map(str::to_owned))
            .collect()
    }

    /// Polls until at least `n` peers were seen; panics after `timeout`.
    pub fn wait_for_peers(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + crate::patience::patient(timeout);
        loop {
            let peers = self.peers();
            if peers.len() >= n {
                return peers;
            }
            assert!(
                Instant::now() < deadline,
                "{}: expected {n} peer(s) within {timeout:?}, saw {peers:?}",
                self.running.desc
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A long-running client or server probe whose stdout lines are read as they come, each stamped
/// with the Instant it was read; killed on drop.
#[derive(Debug)]
pub struct Stream {
    running: Running,
    local: SocketAddr,
    pid: u32,
}

impl Stream {
    /// `tcp-stream` from inside `cgroup` (None: outside the managed tree) in netns `netns`: one
    /// connection to `addr:port` (an echo server: [`Listener::start_echo`]) that carries a byte
    /// out and back every 10 ms for `length`. Waits (up to 5 s) for the `connected` line and
    /// panics with the probe's output if it exits first (a refused connect, say).
    #[must_use]
    pub fn start(
        cgroup: Option<&Path>,
        netns: &str,
        addr: IpAddr,
        port: u16,
        length: Duration,
    ) -> Self {
        let args = [
            "tcp-stream".to_owned(),
            addr.to_string(),
            port.to_string(),
            length.as_millis().to_string(),
        ];
        let running = Running::spawn(cgroup, netns, &args);
        let (_, line) = running.wait_for("connected ", Duration::from_secs(5));
        let mut words = line.split_whitespace().skip(1);
        let (Some(local), Some(pid)) = (field(&mut words, "local="), field(&mut words, "pid="))
        else {
            panic!("{}: unexpected line {line:?}", running.desc);
        };
        Self {
            running,
            local,
            pid,
        }
    }

    /// The connection's local address, from the `connected` line.
    #[must_use]
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The probe's pid, from the `connected` line.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits up to `timeout` for the `ended` line; returns (RESULT, exchanged, the Instant the
    /// line was read). RESULT is `ok` (the time ran out), an errno name (`ECONNABORTED`,
    /// `ECONNRESET`, `EPIPE`, `ETIMEDOUT` for a 3 s read timeout, …) or `EOF` (the peer closed
    /// the connection). Panics on timeout with the lines seen.
    #[must_use]
    pub fn wait_ended(&self, timeout: Duration) -> (String, u64, Instant) {
        let (at, line) = self.running.wait_for("ended ", timeout);
        let mut words = line.split_whitespace().skip(1);
        let (Some(result), Some(exchanged)) = (words.next(), field(&mut words, "exchanged="))
        else {
            panic!("{}: unexpected line {line:?}", self.running.desc);
        };
        (result.to_owned(), exchanged, at)
    }

    /// Whether the `ended` line was printed yet.
    #[must_use]
    pub fn ended(&self) -> bool {
        self.running
            .lines()
            .iter()
            .any(|(_, l)| l.starts_with("ended "))
    }
}

/// The next word of a result line as `KEY=VALUE`, parsed; `None` if it is missing or malformed.
fn field<'a, T: FromStr>(words: &mut impl Iterator<Item = &'a str>, key: &str) -> Option<T> {
    words.next()?.strip_prefix(key)?.parse().ok()
}

/// What a running probe has printed so far, filled by its reader threads.
#[derive(Debug, Default)]
struct Output {
    /// Each stdout line with the Instant it was read.
    lines: Vec<(Instant, String)>,
    stderr: String,
    /// Each reader sets its flag at EOF, when the probe has exited.
    stdout_done: bool,
    stderr_done: bool,
}

/// A probe process spawned in a cgroup and namespace, its output read as it comes; killed on drop.
#[derive(Debug)]
struct Running {
    child: Mutex<Child>,
    output: Arc<Mutex<Output>>,
    desc: String,
}

impl Running {
    fn spawn(cgroup: Option<&Path>, netns: &str, args: &[String]) -> Self {
        let desc = format!("{} in {netns}", args.join(" "));
        let mut cmd = Command::new(probe_bin());
        if let Some(cgroup) = cgroup {
            cmd.arg("--cgroup").arg(cgroup);
        }
        let mut child = cmd
            .args(["--netns", netns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn enforcer-probe {desc}: {e}"));
        let output = Arc::new(Mutex::new(Output::default()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // The readers end by themselves at EOF, when the probe dies.
        let sink = Arc::clone(&output);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = Instant::now();
                lock(&sink).lines.push((at, line));
            }
            lock(&sink).stdout_done = true;
        });
        let sink = Arc::clone(&output);
        thread::spawn(move || {
            let mut err = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut err);
            let mut out = lock(&sink);
            out.stderr = err;
            out.stderr_done = true;
        });
        Self {
            child: Mutex::new(child),
            output,
            desc,
        }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        lock(&self.output).lines.clone()
    }

    /// The first stdout line that starts with `prefix`, with the Instant it was read. Panics with
    /// the probe's output if it exits without printing one or `timeout` passes first.
    fn wait_for(&self, prefix: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + crate::patience::patient(timeout);
        loop {
            let out = lock(&self.output);
            if let Some(found) = out.lines.iter().find(|(_, l)| l.starts_with(prefix)) {
                return found.clone();
            }
            // Stdout read to its end: the line will never come. Give stderr a moment to follow.
            let exited = out.stdout_done && (out.stderr_done || Instant::now() >= deadline);
            let seen = out.lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>();
            let stderr = out.stderr.trim().to_owned();
            // Not held across a panic: the readers still need it.
            drop(out);
            if exited {
                let status = match lock(&self.child).wait() {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("wait: {e}"),
                };
                panic!(
                    "{} exited ({status}) without {prefix:?}: {seen:?} {stderr}",
                    self.desc
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {prefix:?} line within {timeout:?}: {seen:?}",
                self.desc
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `m`'s guard, poisoned or not: a panic elsewhere (a failed assertion) leaves the output and the
/// child as they were, and the probe must still be read and killed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Running {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The probe's socket-kind actions (`src/bin/enforcer-probe/socket_kinds.rs`): the paths that a
/// workload could take past the plain connect and sendmsg hooks.
impl Probe {
    /// UDP-Lite, unconnected: `sendto`.
    pub fn udplite_sendto(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["udplite-sendto", &addr.to_string(), &port.to_string()])
    }

    /// UDP-Lite: `connect`, then `send` without an address.
    pub fn udplite_connect(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["udplite-connect", &addr.to_string(), &port.to_string()])
    }

    /// An ICMP echo by `sendto` on an unconnected ping socket; ok only once the reply arrived.
    pub fn ping_sendto(&self, addr: IpAddr) -> ProbeOutcome {
        self.run(&["ping-sendto", &addr.to_string()])
    }

    /// A hand-built TCP SYN through `SOCK_RAW`/`IPPROTO_TCP`; ok only once the server answered it
    /// (SYN-ACK, or RST from a closed port): proof that the SYN arrived.
    pub fn raw_tcp_syn(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["raw-tcp-syn", &addr.to_string(), &port.to_string()])
    }

    /// `setsockopt(IPV6_RTHDR)` with a routing header of `kind` (0, 2 or 4) through `via`, then
    /// `sendto(addr, port)`.
    pub fn udp_rthdr(&self, kind: u8, via: IpAddr, addr: IpAddr, port: u16) -> ProbeOutcome {
        let (kind, via) = (kind.to_string(), via.to_string());
        self.run(&[
            "udp-rthdr",
            &kind,
            &via,
            &addr.to_string(),
            &port.to_string(),
        ])
    }

    /// The routing header of [`Probe::udp_rthdr`] as an `IPV6_RTHDR` control message of one
    /// `sendmsg`.
    pub fn udp_rthdr_cmsg(&self, kind: u8, via: IpAddr, addr: IpAddr, port: u16) -> ProbeOutcome {
        let (kind, via) = (kind.to_string(), via.to_string());
        self.run(&[
            "udp-rthdr-cmsg",
            &kind,
            &via,
            &addr.to_string(),
            &port.to_string(),
        ])
    }

    /// `setsockopt(IP_OPTIONS)` with an IPv4 source route (`kind`: `lsrr` or `ssrr`) through
    /// `via`, then `sendto(addr, port)`.
    pub fn udp_srr(&self, kind: &str, via: IpAddr, addr: IpAddr, port: u16) -> ProbeOutcome {
        let via = via.to_string();
        self.run(&["udp-srr", kind, &via, &addr.to_string(), &port.to_string()])
    }

    /// The source route of [`Probe::udp_srr`] as an `IP_RETOPTS` control message of one
    /// `sendmsg`.
    pub fn udp_srr_cmsg(&self, kind: &str, via: IpAddr, addr: IpAddr, port: u16) -> ProbeOutcome {
        let via = via.to_string();
        self.run(&[
            "udp-srr-cmsg",
            kind,
            &via,
            &addr.to_string(),
            &port.to_string(),
        ])
    }

    /// A TCP socket made by this probe (run it without a cgroup), passed with SCM_RIGHTS to a child
    /// probe in `cgroup`, which connects it. The outcome (and its pid) is the child's.
    pub fn passed_tcp_connect(&self, cgroup: &Path, addr: IpAddr, port: u16) -> ProbeOutcome {
        let cgroup = cgroup.to_string_lossy();
        self.run(&[
            "passed-tcp-connect",
            &cgroup,
            &addr.to_string(),
            &port.to_string(),
        ])
    }

    /// Like [`Probe::passed_tcp_connect`] with a UDP socket and `sendto`.
    pub fn passed_udp_sendto(&self, cgroup: &Path, addr: IpAddr, port: u16) -> ProbeOutcome {
        let cgroup = cgroup.to_string_lossy();
        self.run(&[
            "passed-udp-sendto",
            &cgroup,
            &addr.to_string(),
            &port.to_string(),
        ])
    }

    /// Opens a packet socket: `kind` is `packet-raw` (`AF_PACKET`, `SOCK_RAW`), `packet-dgram`
    /// or `inet-packet` (`AF_INET`, `SOCK_PACKET`), all for `ETH_P_ALL`.
    pub fn packet_socket(&self, kind: &str) -> ProbeOutcome {
        self.run(&["packet-socket", kind])
    }

    /// One UDP socket: `connect(addr)`, `send`, then `sendto(other)`.
    pub fn udp_connected_sendto(
        &self,
        addr: IpAddr,
        port: u16,
        other: IpAddr,
        oport: u16,
    ) -> ProbeOutcome {
        let args = [
            addr.to_string(),
            port.to_string(),
            other.to_string(),
            oport.to_string(),
        ];
        self.run(&[
            "udp-connected-sendto",
            &args[0],
            &args[1],
            &args[2],
            &args[3],
        ])
    }

    /// One UDP socket: `connect(addr)`, `send`, `connect(AF_UNSPEC)`, then `sendto(other)`.
    pub fn udp_unspec_sendto(
        &self,
        addr: IpAddr,
        port: u16,
        other: IpAddr,
        oport: u16,
    ) -> ProbeOutcome {
        let args = [
            addr.to_string(),
            port.to_string(),
            other.to_string(),
            oport.to_string(),
        ];
        self.run(&["udp-unspec-sendto", &args[0], &args[1], &args[2], &args[3]])
    }

    /// One `sendmmsg` of two datagrams, to `addr` then `other`; ok only if both went out.
    pub fn udp_sendmmsg(&self, addr: IpAddr, port: u16, other: IpAddr, oport: u16) -> ProbeOutcome {
        let args = [
            addr.to_string(),
            port.to_string(),
            other.to_string(),
            oport.to_string(),
        ];
        self.run(&["udp-sendmmsg", &args[0], &args[1], &args[2], &args[3]])
    }

    /// TCP Fast Open: `sendto(MSG_FASTOPEN)` on a fresh socket.
    pub fn tcp_fastopen(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["tcp-fastopen", &addr.to_string(), &port.to_string()])
    }

    /// `connect` on an `IPPROTO_MPTCP` socket.
    pub fn mptcp_connect(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["mptcp-connect", &addr.to_string(), &port.to_string()])
    }

    /// `IORING_OP_CONNECT` of a TCP socket.
    pub fn io_uring_connect(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["io-uring-connect", &addr.to_string(), &port.to_string()])
    }

    /// A TCP connection made in `TCP_REPAIR` mode (no SYN), then data sent on it.
    pub fn tcp_repair_send(&self, addr: IpAddr, port: u16) -> ProbeOutcome {
        self.run(&["tcp-repair-send", &addr.to_string(), &port.to_string()])
    }
}
