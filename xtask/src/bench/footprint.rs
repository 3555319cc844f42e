//! Footprint and idle cost: the daemon's memory (resident set, and the BPF maps it holds) at three
//! policy sizes; its CPU time while nothing happens, with the lab's few cgroups and with 10 000
//! more; and the time from a cgroup's creation to its label in the kernel's map.
//!
//! Idle CPU is the daemon's user + system time (all threads, from `/proc/PID/stat`) over a window
//! that, in a full run, covers its periodic work: a cgroup rescan every 30 s and a drift check of
//! every map entry every 60 s.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Bench, Daemon, Section, Table, fixed, grouped,
    policy::{self, Size, Summary},
};
use crate::{lab::check_interrupt, say};

/// The sizes whose memory is measured; the second is the 10k entries and 1k identities.
const SIZES: [Size; 3] = [
    Size {
        peers: 10,
        ports: 1,
    },
    Size {
        peers: 1000,
        ports: 10,
    },
    Size {
        peers: 1000,
        ports: 100,
    },
];

/// 10 000 idle cgroups, as a host of pods with containers would have them.
const PODS: usize = 100;
const CONTAINERS: usize = 100;

/// The target of the issue: idle with 10 000 cgroups under 1 % of a core.
const TARGET_IDLE: f64 = 0.01;

/// How long a cgroup may wait for its label before the bench gives up.
const LABEL_TIMEOUT: Duration = Duration::from_secs(60);

/// Memory of one daemon at one size.
struct Memory {
    summary: Summary,
    ready_ms: f64,
    rss_kib: u64,
    peak_kib: u64,
    maps_kib: u64,
}

/// Measures memory at every size, then idle CPU and labelling with the 10 000 cgroups.
///
/// # Errors
/// When the daemon does not start or a cgroup is never labelled.
pub fn run(bench: &mut Bench) -> anyhow::Result<Section> {
    let window = Duration::from_secs(if bench.settings.rounds > 1 { 65 } else { 15 });
    say(&format!(
        "footprint: memory at {} sizes; idle CPU over {} s with and without {} cgroups",
        SIZES.len(),
        window.as_secs(),
        grouped((PODS * CONTAINERS) as u64)
    ));
    let mut memory = Vec::new();
    for (k, size) in SIZES.into_iter().enumerate() {
        let dir = bench.scratch(&format!("footprint-policy-{k}"));
        policy::generate(&dir, size)?;
        let summary = policy::summary(&bench.enforcer, &dir)?;
        memory.push(bench.with_enforcer(&dir, |_, daemon| {
            // Settled: the first apply's buffers are freed or reused by now.
            thread::sleep(Duration::from_secs(2));
            let (rss_kib, peak_kib) = rss(daemon.pid)?;
            Ok(Memory {
                summary,
                ready_ms: daemon.ready.as_secs_f64() * 1000.0,
                rss_kib,
                peak_kib,
                maps_kib: map_memory(daemon.pid)? / 1024,
            })
        })?);
    }
    let dir = bench.scratch("footprint-policy-1");
    let idle = bench.with_enforcer(&dir, |bench, daemon| idle(bench, daemon, window))?;

    let mut table = Table::new(&[
        "rule entries",
        "identities",
        "start to enforcing ms",
        "RSS MiB",
        "peak RSS MiB",
        "BPF maps MiB",
    ]);
    for m in &memory {
        table.row(vec![
            grouped(m.summary.entries),
            grouped(m.summary.identities),
            format!("{:.0}", m.ready_ms),
            mib(m.rss_kib),
            mib(m.peak_kib),
            mib(m.maps_kib),
        ]);
    }
    let mut idle_table = Table::new(&["cgroups in the subtree", "idle CPU, % of a core"]);
    idle_table.row(vec![
        grouped(idle.few_cgroups as u64),
        format!("{:.2}", 100.0 * idle.few),
    ]);
    idle_table.row(vec![
        grouped(idle.many_cgroups as u64),
        format!("{:.2}", 100.0 * idle.many),
    ]);
    let label_ms: Vec<f64> = idle
        .label_times
        .iter()
        .map(|t| t.as_secs_f64() * 1000.0)
        .collect();
    let body = format!(
        "Memory after the daemon has enforced for 2 s (identities: the policy's tables and \
         the entities); BPF maps is the kernel's `memlock` account of every map the \
         daemon holds.\n\n{}\n\nIdle CPU over {} s (user + system time of every thread), with the \
         10 000-entry policy:\n\n{}\n\n**Target** (idle with 10 000 cgroups under {:.0} % of a \
         core): {}.\n\nLabelling: {} cgroups made at once were all labelled {:.1} s after the \
         first; a cgroup made on the idle host was labelled {} ms after its `mkdir` (median of \
         {}; min {:.1}, max {:.1}; polled with `bpftool`, which adds a few ms).\n",
        table.markdown(),
        window.as_secs(),
        idle_table.markdown(),
        TARGET_IDLE * 100.0,
        if idle.many < TARGET_IDLE {
            "met"
        } else {
            "**missed**"
        },
        grouped((PODS * CONTAINERS) as u64),
        idle.bulk_label.as_secs_f64(),
        fixed(&label_ms, 1),
        label_ms.len(),
        label_ms.iter().copied().fold(f64::INFINITY, f64::min),
        label_ms.iter().copied().fold(0.0, f64::max),
    );
    Ok(Section {
        title: "Footprint and idle cost".to_owned(),
        body,
        files: Vec::new(),
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// What the daemon cost at rest, and how fast it labels.
struct Idle {
    few_cgroups: usize,
    few: f64,
    many_cgroups: usize,
    many: f64,
    bulk_label: Duration,
    label_times: Vec<Duration>,
}

fn idle(bench: &Bench, daemon: &Daemon, window: Duration) -> anyhow::Result<Idle> {
    let root = &bench.lab.cgroup_root;
    let few_cgroups = count_cgroups(root)?;
    let few = cpu_share(daemon.pid, window)?;
    let map = label_map(bench, daemon)?;
    let mut made = Cgroups::default();
    let started = Instant::now();
    let mut last = PathBuf::new();
    for pod in 0..PODS {
        let pod = made.create(&root.join(format!("idle-pod-{pod}")))?;
        for container in 0..CONTAINERS {
            last = made.create(&pod.join(format!("c-{container}")))?;
        }
    }
    wait_labelled(&map, &last)?;
    let bulk_label = started.elapsed();
    // Settled: the burst's rescans are over before the window starts.
    thread::sleep(Duration::from_secs(2));
    let many_cgroups = count_cgroups(root)?;
    let many = cpu_share(daemon.pid, window)?;
    let mut label_times = Vec::new();
    for k in 0..bench.settings.samples {
        let started = Instant::now();
        let cgroup = made.create(&root.join(format!("idle-late-{k}")))?;
        wait_labelled(&map, &cgroup)?;
        label_times.push(started.elapsed());
        // Apart, so each finds the daemon idle.
        thread::sleep(Duration::from_millis(500));
    }
    Ok(Idle {
        few_cgroups,
        few,
        many_cgroups,
        many,
        bulk_label,
        label_times,
    })
}

/// Cgroups the bench made, removed (deepest first) when dropped, on error paths too.
#[derive(Default)]
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn create(&mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        self.0.push(dir.to_owned());
        Ok(dir.to_owned())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn count_cgroups(root: &Path) -> anyhow::Result<usize> {
    let mut count = 1;
    for entry in fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            count += count_cgroups(&entry.path())?;
        }
    }
    Ok(count)
}

/// The daemon's share of one core over `window`.
fn cpu_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_ticks(pid)?;
    let started = Instant::now();
    while started.elapsed() < window {
        check_interrupt()?;
        thread::sleep(Duration::from_millis(200));
    }
    let ticks = cpu_ticks(pid)? - before;
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / per_second / started.elapsed().as_secs_f64())
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat =
        fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the daemon's stat")?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {i} of {stat}"))
    };
    Ok(field(11)? + field(12)?)
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).context("reading the daemon's status")?;
    let read = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((read("VmRSS:")?, read("VmHWM:")?))
}

/// The `memlock` bytes of every distinct BPF map the process holds a descriptor of.
fn map_memory(pid: u32) -> anyhow::Result<u64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = 0;
    let fds = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&fds).with_context(|| format!("reading {fds}"))? {
        let entry = entry?;
        let is_map = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |key: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:"))
            && seen.insert(id)
        {
            bytes += memlock;
        }
    }
    Ok(bytes)
}

/// The pinned cgroup label map of the daemon's active slot.
struct LabelMap {
    path: PathBuf,
    slot: u32,
}

fn label_map(bench: &Bench, daemon: &Daemon) -> anyhow::Result<LabelMap> {
    let status = bench.control(daemon, "status")?;
    let layout = status["pinned"]["layout"]
        .as_str()
        .with_context(|| format!("no pinned layout in the status: {status}"))?;
    let slot = status["pinned"]["active_slot"]
        .as_u64()
        .and_then(|s| u32::try_from(s).ok())
        .with_context(|| format!("no active slot in the status: {status}"))?;
    Ok(LabelMap {
        path: daemon.bpffs.join(layout).join("CGROUP_IDENTITY"),
        slot,
    })
}

/// Polls the label map until `cgroup` has a label in the active slot.
fn wait_labelled(map: &LabelMap, cgroup: &Path) -> anyhow::Result<()> {
    let id = fs::metadata(cgroup)
        .with_context(|| format!("reading {}", cgroup.display()))?
        .ino();
    // The key: cgroup id, slot, padding (enforcer-common's CgroupKey).
    let mut key = id.to_le_bytes().to_vec();
    key.extend(map.slot.to_le_bytes());
    key.extend([0; 4]);
    let key: Vec<String> = key.iter().map(|b| format!("{b:02x}")).collect();
    let deadline = Instant::now() + LABEL_TIMEOUT;
    loop {
        check_interrupt()?;
        let found = Command::new("bpftool")
            .args(["map", "lookup", "pinned"])
            .arg(&map.path)
            .args(["key", "hex"])
            .args(&key)
            .output()
            .context("running bpftool")?
            .status
            .success();
        if found {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} had no label {} s after it was made",
                cgroup.display(),
                LABEL_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
}
