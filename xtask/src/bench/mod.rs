//! `cargo xtask bench`: what enforcement costs, measured on a lab on this machine and written to
//! `docs/benchmarks.md`.
//!
//! A client and a server network namespace are joined by veth; the client process runs in a cgroup
//! below the lab's cgroup root and in the client namespace, which is all a daemon started here
//! covers. Each measure compares contenders (no filter, the enforcer with policies of several
//! sizes, ...) in interleaved rounds, so that a change in the machine's load during the run hits
//! every contender alike, and reports min / median / max over the rounds. A measure is a function
//! from the [`Bench`] to a [`Section`] of the document; the document is regenerated whole from the
//! list of sections.

mod apply;
mod churn;
mod connect;
mod established;
mod events;
pub mod firewall;
mod footprint;
pub mod load;
pub mod plot;
pub mod policy;
mod programs;
mod reference;
mod stats;

use std::{
    collections::BTreeMap,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use self::{policy::LOAD_PORT, programs::BpfStats};
pub use self::{
    programs::{ProgCounters, program_cost, programs_of},
    stats::{Spread, Table, fixed, grouped, median},
};
use crate::{
    command, exec,
    lab::{Lab, catch_interrupt, check_interrupt},
    output, require_root, say, setup,
};

/// The client's addresses, the daemon's node name and the server's addresses.
pub const CLIENT: &str = "10.77.0.1";
pub const CLIENT6: &str = "fd00:77::1";
pub const NODE: &str = "bench-client";
pub const SERVER: &str = "10.77.0.2";
pub const SERVER6: &str = "fd00:77::2";

/// How long and how often each contender is measured.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub rounds: usize,
    pub secs: u64,
    /// Samples of measures that take one figure per action (a policy applied, a cgroup made).
    pub samples: usize,
}

/// Runs the bench and writes `docs/benchmarks.md`.
///
/// # Errors
/// When set-up, the build, the lab or a measurement fails.
pub fn run(workspace: &Path, quick: bool, only: &[String]) -> anyhow::Result<()> {
    let measures: Vec<&Measure> = if only.is_empty() {
        MEASURES.iter().collect()
    } else {
        only.iter()
            .map(|name| {
                MEASURES.iter().find(|m| m.name == name).with_context(|| {
                    let names: Vec<&str> = MEASURES.iter().map(|m| m.name).collect();
                    format!("no measure {name:?}; there are {}", names.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    setup::run(workspace)?;
    require_root("cargo xtask bench")?;
    say("building the daemon in release (what users run)");
    exec(
        "cargo build --release",
        command("cargo").current_dir(workspace).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "enforcer",
        ]),
    )?;
    let enforcer = target_dir(workspace).join("release/enforcer");
    catch_interrupt();
    let settings = if quick {
        Settings {
            rounds: 1,
            secs: 2,
            samples: 3,
        }
    } else {
        Settings {
            rounds: 3,
            secs: 5,
            samples: 10,
        }
    };
    let machine = machine();
    // Enabled for the whole run so every contender pays the same (small) timing overhead.
    let stats = BpfStats::enable()?;
    let mut bench = Bench::new(workspace, enforcer, settings)?;
    let mut sections = Vec::new();
    for measure in measures {
        say(&format!("measuring {}", measure.name));
        sections.push((measure.run)(&mut bench)?);
    }
    drop(bench);
    drop(stats);
    if !only.is_empty() {
        // A partial run must not overwrite the whole document: show it instead.
        println!("{}", document(&machine, settings, quick, &sections));
        return Ok(());
    }
    let docs = workspace.join("docs");
    for (name, content) in sections.iter().flat_map(|s| &s.files) {
        let path = docs.join(name);
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        say(&format!("wrote {}", path.display()));
    }
    let doc = document(&machine, settings, quick, &sections);
    let path = docs.join("benchmarks.md");
    fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    say(&format!("wrote {}", path.display()));
    Ok(())
}

/// One measure of the bench: its name for `--only`, and what runs it.
struct Measure {
    name: &'static str,
    run: fn(&mut Bench) -> anyhow::Result<Section>,
}

/// Every measure, in the order of the document.
const MEASURES: &[Measure] = &[
    Measure {
        name: "connect",
        run: connect::run,
    },
    Measure {
        name: "programs",
        run: reference::run,
    },
    Measure {
        name: "established",
        run: established::run,
    },
    Measure {
        name: "apply",
        run: apply::run,
    },
    Measure {
        name: "events",
        run: events::run,
    },
    Measure {
        name: "footprint",
        run: footprint::run,
    },
    Measure {
        name: "churn",
        run: churn::run,
    },
];

/// Where cargo puts its output: `CARGO_TARGET_DIR` (relative to the workspace, where cargo runs)
/// or the workspace's `target/`.
fn target_dir(workspace: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir))
}

/// A part of the document: a `##` heading, its markdown, and files it links to (name in
/// `docs/`, content).
pub struct Section {
    pub title: String,
    pub body: String,
    pub files: Vec<(String, String)>,
}

fn document(machine: &str, settings: Settings, quick: bool, sections: &[Section]) -> String {
    let mode = if quick { " --quick" } else { "" };
    let mut doc = format!(
        "# Benchmarks\n\n\
         Produced by `sudo -E cargo xtask bench{mode}` and regenerated whole by every run: change\n\
         `xtask/src/bench/`, not this file.\n\n\
         - Machine: {machine}\n\
         - Method: {} round(s) of {} s per test. In each round every contender runs once, in the\n  \
           same order, so a change in the machine's load hits them all alike; tables give min /\n  \
           median / max over the rounds. The lab is two network namespaces joined by veth on this\n  \
           machine (client {CLIENT} / {CLIENT6}, server {SERVER} / {SERVER6}); the client runs in a\n  \
           cgroup below the lab's cgroup root, which is all the daemon covers, together with the\n  \
           interfaces of the client's namespace.\n\
         - `kernel.bpf_stats_enabled` is on during the whole run (for the per-program costs), so the\n  \
           enforcer's figures include the kernel's timing of each program run.\n",
        settings.rounds, settings.secs
    );
    for section in sections {
        doc.push_str(&format!("\n## {}\n\n{}", section.title, section.body));
    }
    doc
}

/// CPUs, CPU model, kernel, date and load, in one line.
fn machine() -> String {
    let cpus =
        output(&mut Command::new("nproc")).map_or_else(|| "?".into(), |n| n.trim().to_owned());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs ({model}), Linux {}, {}; load average {} at the start",
        kernel.trim(),
        date.trim(),
        load.join(" ")
    )
}

/// The lab and what runs in it. Fields drop in order: the lab (its processes, cgroups and
/// namespaces), then the daemons' bpffs mounts, then the scratch directory holding them.
pub struct Bench {
    pub lab: Lab,
    mounts: Mounts,
    scratch: tempfile::TempDir,
    pub enforcer: PathBuf,
    /// The workspace, for what a measure builds.
    pub workspace: PathBuf,
    pub settings: Settings,
    pub client_ns: String,
    pub client_cgroup: PathBuf,
    starts: usize,
}

/// A daemon started by [`Bench::start_enforcer`].
pub struct Daemon {
    name: String,
    pub pid: u32,
    pub log: PathBuf,
    /// From the spawn to the ready file.
    pub ready: Duration,
    /// The instance's pins and state, for `enforcer reload` and `status`.
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    /// Its JSON event sink.
    pub events: PathBuf,
}

impl Bench {
    /// Builds the lab and starts the iperf3 server in it.
    ///
    /// # Errors
    /// When a part of the lab cannot be made or the server does not start.
    pub fn new(workspace: &Path, enforcer: PathBuf, settings: Settings) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let tag = format!("ebench-{pid}");
        let (client_ns, server_ns) = (format!("{tag}-c"), format!("{tag}-s"));
        say("building the lab: client and server namespaces joined by veth, the client's cgroup");
        let mut lab = Lab::new(&tag)?;
        let client_cgroup = lab.cgroup("client")?;
        lab.netns(&client_ns)?;
        lab.netns(&server_ns)?;
        // One subnet for both ends, so the kernel's connected routes are all the lab needs (the
        // lab's own `link` routes between subnets). The veth goes with the namespaces.
        let (veth_c, veth_s) = (format!("ebc{pid}a"), format!("ebc{pid}b"));
        exec(
            "ip link add veth",
            Command::new("ip").args([
                "link", "add", &veth_c, "netns", &client_ns, "type", "veth", "peer", "name",
                &veth_s, "netns", &server_ns,
            ]),
        )?;
        for (ns, veth, v4, v6) in [
            (&client_ns, &veth_c, CLIENT, CLIENT6),
            (&server_ns, &veth_s, SERVER, SERVER6),
        ] {
            for args in [
                vec!["addr", "add", &format!("{v4}/24"), "dev", veth],
                vec!["addr", "add", &format!("{v6}/64"), "dev", veth, "nodad"],
                vec!["link", "set", veth, "up"],
            ] {
                exec(
                    &format!("ip -n {ns} {}", args.join(" ")),
                    Command::new("ip").args(["-n", ns]).args(&args),
                )?;
            }
        }
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let server_log = scratch.path().join("iperf3-server.log");
        lab.spawn(
            "iperf3 server",
            Command::new("ip")
                .args(["netns", "exec", &server_ns])
                .args(["iperf3", "-s", "-B", SERVER, "--forceflush"]),
            &server_log,
        )?;
        wait_for(&server_log, "listening", Duration::from_secs(10))
            .context("the iperf3 server did not start")?;
        let load_log = scratch.path().join("load-server.log");
        lab.spawn(
            "load server",
            Command::new("ip")
                .args(["netns", "exec", &server_ns])
                .arg(env::current_exe().context("finding this program")?)
                .args(["bench-load", "serve", &format!("{SERVER}:{LOAD_PORT}")]),
            &load_log,
        )?;
        wait_for(&load_log, "listening", Duration::from_secs(10))
            .context("the load server did not start")?;
        Ok(Self {
            lab,
            mounts: Mounts(Vec::new()),
            scratch,
            enforcer,
            workspace: workspace.to_owned(),
            settings,
            client_ns,
            client_cgroup,
            starts: 0,
        })
    }

    /// A file in the scratch directory.
    #[must_use]
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Starts `enforcer run` on `policy` for the client node, and waits until it enforces.
    ///
    /// # Errors
    /// When it cannot start, exits, or is not ready within 60 s (with its log).
    pub fn start_enforcer(&mut self, policy: &Path) -> anyhow::Result<Daemon> {
        let k = self.starts;
        self.starts += 1;
        let name = format!("enforcer-{k}");
        let ready_file = self.scratch(&format!("ready-{k}"));
        let log = self.scratch(&format!("enforcer-{k}.log"));
        let bpffs = self.scratch(&format!("bpffs-{k}"));
        self.mounts.0.push(bpffs.clone());
        let state_dir = self.scratch(&format!("state-{k}"));
        let events = self.scratch(&format!("events-{k}.jsonl"));
        let started = Instant::now();
        let pid = self.lab.spawn(
            &name,
            Command::new(&self.enforcer)
                .arg("run")
                .arg("--policy")
                .arg(policy)
                .args(["--node", NODE, "--cgroup-root"])
                .arg(&self.lab.cgroup_root)
                .arg("--events")
                .arg(&events)
                .arg("--ready-file")
                .arg(&ready_file)
                // An instance of its own, gone with it: nothing stays pinned on this machine.
                .arg("--bpffs")
                .arg(&bpffs)
                .arg("--state-dir")
                .arg(&state_dir)
                .arg("--netns")
                .arg(format!("/run/netns/{}", self.client_ns))
                .args(["--on-exit", "detach"]),
            &log,
        )?;
        let deadline = started + Duration::from_secs(60);
        while !ready_file.exists() {
            check_interrupt()?;
            if exited(pid) || Instant::now() > deadline {
                let log = fs::read_to_string(&log).unwrap_or_default();
                bail!("the daemon did not become ready within 60 s:\n{log}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Daemon {
            name,
            pid,
            log,
            ready: started.elapsed(),
            bpffs,
            state_dir,
            events,
        })
    }

    /// Stops the daemon: SIGTERM, and `--on-exit detach` removes all its programs.
    ///
    /// # Errors
    /// When it does not stop within 5 s.
    pub fn stop_enforcer(&mut self, daemon: &Daemon) -> anyhow::Result<()> {
        self.lab.stop(&daemon.name).with_context(|| {
            format!(
                "stopping the daemon; its log:\n{}",
                fs::read_to_string(&daemon.log).unwrap_or_default()
            )
        })
    }

    /// Runs `enforcer VERB` (`reload`, `status`, ...) against the running `daemon` and returns
    /// its JSON answer.
    ///
    /// # Errors
    /// When the command fails or does not answer JSON.
    pub fn control(&self, daemon: &Daemon, verb: &str) -> anyhow::Result<Value> {
        let out = Command::new(&self.enforcer)
            .arg(verb)
            .arg("--bpffs")
            .arg(&daemon.bpffs)
            .arg("--state-dir")
            .arg(&daemon.state_dir)
            .output()
            .with_context(|| format!("running enforcer {verb}"))?;
        if !out.status.success() {
            bail!(
                "enforcer {verb} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "enforcer {verb} answered: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The daemon's verdict counters by name, from `enforcer status`.
    ///
    /// # Errors
    /// When the daemon does not answer or its status has no counters.
    pub fn counters(&self, daemon: &Daemon) -> anyhow::Result<BTreeMap<String, u64>> {
        let status = self.control(daemon, "status")?;
        let counters = status["daemon"]["counters"]
            .as_object()
            .with_context(|| format!("no counters in the status: {status}"))?;
        Ok(counters
            .iter()
            .filter_map(|(name, n)| Some((name.clone(), n.as_u64()?)))
            .collect())
    }

    /// `program` with `args`, to run as the client: in the client's cgroup and namespace.
    #[must_use]
    pub fn client_command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#,
            "sh",
        ])
        .arg(&self.client_cgroup)
        .arg(&self.client_ns)
        .arg(program)
        .args(args);
        cmd
    }

    /// Runs the bench's own client load (`kind` is `tcp` or `udp`) against the load server for
    /// `secs` seconds, and returns its report.
    ///
    /// # Errors
    /// When the client fails or its report is not the JSON expected.
    pub fn load(&self, kind: &str, secs: f64) -> anyhow::Result<LoadReport> {
        self.load_at(kind, LOAD_PORT, secs)
    }

    /// [`Bench::load`] against `port` of the server (one the policy denies, say).
    ///
    /// # Errors
    /// When the client fails or its report is not the JSON expected.
    pub fn load_at(&self, kind: &str, port: u16, secs: f64) -> anyhow::Result<LoadReport> {
        check_interrupt()?;
        let program = env::current_exe().context("finding this program")?;
        let out = self
            .client_command(
                &program,
                &[
                    "bench-load",
                    kind,
                    &format!("{SERVER}:{port}"),
                    &secs.to_string(),
                ],
            )
            .output()
            .context("running the load client")?;
        if !out.status.success() {
            bail!(
                "the {kind} load client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the {kind} load client's report: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Starts the enforcer on `policy`, runs `measure` with it, and stops it; an error of
    /// `measure` carries the daemon's log.
    ///
    /// # Errors
    /// When the daemon does not start or stop, or `measure` fails.
    pub fn with_enforcer<R>(
        &mut self,
        policy: &Path,
        measure: impl FnOnce(&mut Self, &Daemon) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let daemon = self.start_enforcer(policy)?;
        let result = measure(self, &daemon);
        let stopped = self.stop_enforcer(&daemon);
        let result = result.with_context(|| {
            format!(
                "the daemon's log:\n{}",
                fs::read_to_string(&daemon.log).unwrap_or_default()
            )
        })?;
        stopped?;
        Ok(result)
    }

    /// Runs iperf3 as the client (in the client's cgroup and namespace) against the server with
    /// `args`, and returns its JSON report; waits and retries while the server is still busy
    /// with the previous test.
    ///
    /// # Errors
    /// When iperf3 fails or reports an error.
    pub fn iperf3(&self, args: &[&str]) -> anyhow::Result<Value> {
        for _ in 0..10 {
            check_interrupt()?;
            let out = Command::new("sh")
                .args([
                    "-c",
                    r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" iperf3 "$@""#,
                    "sh",
                ])
                .arg(&self.client_cgroup)
                .arg(&self.client_ns)
                .args(["-c", SERVER, "-J", "--connect-timeout", "5000"])
                .args(args)
                .output()
                .context("running the iperf3 client")?;
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            match report.get("error").and_then(Value::as_str) {
                Some(error) if error.contains("busy") => thread::sleep(Duration::from_millis(500)),
                Some(error) => bail!("iperf3 {}: {error}", args.join(" ")),
                None if out.status.success() && report.is_object() => return Ok(report),
                None => bail!(
                    "iperf3 {} failed ({}): {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        bail!("the iperf3 server stayed busy")
    }
}

/// What a load client reports (see `load`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LoadReport {
    pub attempts: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Successful connections (or datagrams sent) per second.
    pub per_second: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// Unmounts the bpffs instances the daemons mounted (they remove their pins on exit, and the
/// scratch directory can only go once nothing is mounted in it).
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(dir).output();
        }
    }
}

/// Whether process `pid` (our child) has exited: gone, or a zombie not yet reaped.
fn exited(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // The state follows the command name in parentheses, which may itself hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// Waits until `path` exists and contains `needle`.
fn wait_for(path: &Path, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        check_interrupt()?;
        if fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {}", path.display())
}

/// Runs `measure` for every contender in every round, the contenders in the same order each
/// round, and returns the results by contender, then round (round numbers start at 1).
///
/// # Errors
/// The first error of `measure`.
pub fn interleaved<C, R>(
    bench: &mut Bench,
    contenders: &[C],
    mut measure: impl FnMut(&mut Bench, usize, &C) -> anyhow::Result<R>,
) -> anyhow::Result<Vec<Vec<R>>> {
    let mut results: Vec<Vec<R>> = contenders.iter().map(|_| Vec::new()).collect();
    for round in 1..=bench.settings.rounds {
        for (contender, results) in contenders.iter().zip(&mut results) {
            results.push(measure(bench, round, contender)?);
        }
    }
    Ok(results)
}
