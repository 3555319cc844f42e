//! The enforcer daemon under test, as a real child process.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::{instance::Instance, patience::patient};

/// The daemon must be enforcing this soon after it was spawned. It is about 4.5 s on a quiet
/// 2-core machine (the verifier, mostly); a loaded one doubled that and failed a 10 s limit.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default patience for an event to reach the events file.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The `enforcer` binary: `$ENFORCER_BIN` (set by `cargo xtask test`), else the workspace's debug
/// build.
#[must_use]
pub fn enforcer_bin() -> PathBuf {
    std::env::var_os("ENFORCER_BIN").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ lives in the workspace")
                .join("target/debug/enforcer")
        },
        PathBuf::from,
    )
}

/// What `enforcer run` is told, and where it runs.
#[derive(Clone, Debug)]
pub struct DaemonArgs<'a> {
    pub policy: &'a Path,
    pub node: &'a str,
    pub cgroup_root: &'a Path,
    /// `--netns PATH`: the network namespace whose addresses are this node's own (the lab passes
    /// its client namespace, `/run/netns/<name>`). Required to start a daemon: without it the
    /// daemon would cover the interfaces of the test's own namespace, the machine's.
    pub netns: Option<&'a Path>,
    /// A cgroup directory (absolute path) the daemon process is started in, e.g. one below the
    /// managed root. `None`: the test's own cgroup, outside the managed tree.
    pub cgroup: Option<&'a Path>,
    /// Appended after the standard flags.
    pub extra: &'a [&'a str],
    /// The instance (bpffs and state directories) to run as. `None`: a private one the daemon
    /// owns and removes when it is dropped.
    pub instance: Option<&'a Instance>,
}

impl<'a> DaemonArgs<'a> {
    /// The three required flags; no `--netns`, the test's own cgroup, no extra flags.
    #[must_use]
    pub fn new(policy: &'a Path, node: &'a str, cgroup_root: &'a Path) -> Self {
        Self {
            policy,
            node,
            cgroup_root,
            netns: None,
            cgroup: None,
            extra: &[],
            instance: None,
        }
    }
}

/// A daemon that exited before it became ready.
#[derive(Debug)]
pub struct EarlyExit {
    pub status: ExitStatus,
    pub stderr: String,
    pub stdout: String,
    /// From spawn to exit (as observed by polling).
    pub elapsed: Duration,
    /// The ready file existed when the daemon had exited.
    pub ready_file_created: bool,
}

/// A running `enforcer run`, with its events, ready and log files in a private temporary directory.
///
/// Drop stops it (SIGTERM, then SIGKILL after 5 s) and then, unless the test is already failing,
/// checks that every event it wrote is valid OCSF ([`crate::ocsf::assert_valid_ocsf`]): no test can
/// produce an events file that escapes that check. A failing test gets the daemon's stderr and
/// events on its own stderr instead.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    /// The private instance, when the test gave none; dropped after the daemon stopped.
    own_instance: Option<Instance>,
}

impl Daemon {
    /// Spawns the daemon and waits until it is enforcing; panics with its stderr if it exits first.
    #[must_use]
    pub fn start(args: &DaemonArgs<'_>) -> Self {
        match Self::try_start(args) {
            Ok(daemon) => daemon,
            Err(exit) => panic!(
                "enforcer exited before it was ready ({}):\n{}",
                exit.status, exit.stderr
            ),
        }
    }

    /// Spawns the daemon and waits for the ready file or for the process to exit, whichever comes
    /// first. Panics if neither happens within [`READY_TIMEOUT`].
    pub fn try_start(args: &DaemonArgs<'_>) -> Result<Self, EarlyExit> {
        let dir = tempfile::Builder::new()
            .prefix("enf-t-daemon-")
            .tempdir()
            .expect("create daemon tempdir");
        let bin = enforcer_bin();
        let stdout = File::create(dir.path().join("stdout")).expect("create stdout file");
        let stderr = File::create(dir.path().join("stderr")).expect("create stderr file");
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--policy")
            .arg(args.policy)
            .arg("--node")
            .arg(args.node)
            .arg("--cgroup-root")
            .arg(args.cgroup_root)
            .arg("--events")
            .arg(dir.path().join("events.jsonl"))
            .arg("--ready-file")
            .arg(dir.path().join("ready"));
        let netns = args
            .netns
            .expect("a test daemon needs a namespace of its own (--netns)");
        cmd.arg("--netns").arg(netns);
        let own_instance = args.instance.is_none().then(Instance::new);
        let instance = args
            .instance
            .or(own_instance.as_ref())
            .expect("one of the two is set");
        cmd.args(instance.flags());
        cmd.args(args.extra);
        // Opened here, written in the child between fork and exec: the daemon is inside the
        // cgroup from its first instruction, and the child does nothing but one write(2).
        let procs = args.cgroup.map(|cgroup| {
            let path = cgroup.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        });
        if let Some(procs) = &procs {
            let fd = procs.as_raw_fd();
            // SAFETY: the hook only calls write(2), which is async-signal-safe, on an fd that
            // stays open until after spawn returns; it allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    // "0" is the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {}: {e} (build it or set ENFORCER_BIN)",
                    bin.display()
                )
            });
        drop(procs);
        let mut daemon = Self {
            child: Some(child),
            dir,
            own_instance,
        };
        loop {
            let exited = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("poll the daemon"));
            if let Some(status) = exited {
                daemon.child = None;
                return Err(EarlyExit {
                    status,
                    stderr: daemon.stderr(),
                    stdout: fs::read_to_string(daemon.dir.path().join("stdout"))
                        .unwrap_or_default(),
                    elapsed: started.elapsed(),
                    ready_file_created: daemon.ready_path().exists(),
                });
            }
            if daemon.ready_path().exists() {
                return Ok(daemon);
            }
            assert!(
                started.elapsed() < patient(READY_TIMEOUT),
                "enforcer not ready after {:?}; stderr:\n{}",
                patient(READY_TIMEOUT),
                daemon.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn ready_path(&self) -> PathBuf {
        self.dir.path().join("ready")
    }

    #[must_use]
    pub fn events_path(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// Everything the daemon wrote to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Whether the daemon runs its interface layer (it says `interface_layer=true` when it starts
    /// enforcing): kernels before 6.6 have no tcx links, and the daemon runs without that layer.
    #[must_use]
    pub fn interface_layer_loaded(&self) -> bool {
        self.stderr()
            .lines()
            .any(|line| line.contains(" enforcing ") && line.contains("interface_layer=true"))
    }

    /// [`Self::interface_layer_loaded`], saying why the calling test does not apply when not.
    #[must_use]
    pub fn interface_layer_applies(&self) -> bool {
        let loaded = self.interface_layer_loaded();
        if !loaded {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            eprintln!(
                "NOT APPLICABLE on Linux {}: the interface layer needs tcx links (6.6+); the \
                 daemon runs without it and says so (docs/coverage.md)",
                release.trim()
            );
        }
        loaded
    }

    /// Whether the daemon runs its BPF LSM programs (it says `lsm=true` when it starts enforcing).
    /// Kernels without BPF LSM, or whose security policy refuses LSM programs, run without them,
    /// and the daemon says so.
    #[must_use]
    pub fn lsm_loaded(&self) -> bool {
        self.stderr()
            .lines()
            .any(|line| line.contains(" enforcing ") && line.contains("lsm=true"))
    }

    /// Kills the daemon with SIGKILL, as a crash would: nothing of its shutdown runs. Returns
    /// once it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's private instance, when the test gave none.
    #[must_use]
    pub fn instance(&self) -> Option<&Instance> {
        self.own_instance.as_ref()
    }

    /// The daemon's pid, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every complete event line written so far, parsed. A line that is not JSON fails the test:
    /// a SIEM would choke on it too.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.events_path()).unwrap_or_default();
        // The last line may still be half-written; only newline-terminated lines are final.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("event is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Polls until at least `n` events were written; panics with what was seen after `timeout`.
    pub fn wait_for_events(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + patient(timeout);
        loop {
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} event(s) within {timeout:?}, got {}: {events:#?}\ndaemon stderr:\n{}",
                events.len(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until an event satisfies `pred` and returns it; panics with what was seen after
    /// `timeout`.
    pub fn wait_for_event(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + patient(timeout);
        loop {
            let events = self.events();
            if let Some(ev) = events.iter().find(|e| pred(e)) {
                return ev.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching event within {timeout:?} among {}: {events:#?}\ndaemon stderr:\n{}",
                events.len(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon: SIGTERM, up to 5 s to exit, then SIGKILL. Returns how it exited (`None`
    /// if it was already stopped). Idempotent.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("enforcer ignored SIGTERM for 5 s; killing it");
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let events = self.events_path();
        if thread::panicking() {
            // A failing test may be one that caught an event storm: show its head, not megabytes.
            eprintln!(
                "--- enforcer stderr ---\n{}\n--- enforcer events ---\n{}",
                head(&self.stderr(), DUMP_LINES),
                head(&fs::read_to_string(&events).unwrap_or_default(), DUMP_LINES)
            );
            return;
        }
        if fs::metadata(&events).is_ok_and(|m| m.len() > 0) {
            crate::ocsf::assert_valid_ocsf(&events);
        }
    }
}

/// How many lines of the daemon's stderr and events a failing test shows.
const DUMP_LINES: usize = 200;

/// The first `n` lines of `text`, and how many were left out.
fn head(text: &str, n: usize) -> String {
    let total = text.lines().count();
    let mut out: Vec<&str> = text.lines().take(n).collect();
    let more = format!("[... {} more lines]", total.saturating_sub(n));
    if total > n {
        out.push(&more);
    }
    out.join("\n")
}
