//! What the kernel does not put in an event about the acting process: its command line,
//! executable, parent, user name and workload (cgroup, systemd unit, container), read from
//! `/proc` and the node's user database while the process is still there, and cached.
//!
//! A process is known by its pid and its start time (`/proc/PID/stat` field 22), so a pid reused
//! by a newer process is never mistaken for the old one: a process that started after the
//! decision cannot have made it, and is not asked. A process that exited before it could be read
//! keeps what the kernel gave (pid, `comm`, uid) and nothing more.

use std::{fs, num::NonZeroUsize, path::Path};

use lru::LruCache;
use nix::unistd::{SysconfVar, Uid, User, sysconf};

use super::FlowWorkload;

/// What `/proc` told about one process. Each field is `None` when it could not be read (a
/// kernel thread has no executable, a zombie no command line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessDetails {
    /// `/proc/PID/cmdline`, its arguments joined by spaces.
    pub cmd_line: Option<String>,
    /// `/proc/PID/exe`.
    pub executable: Option<String>,
    pub parent_pid: Option<u32>,
    /// From the process's cgroup v2 path.
    pub workload: Option<FlowWorkload>,
}

/// A cached process, with what tells it apart from a later holder of its pid.
#[derive(Debug)]
struct Known {
    start_ticks: u64,
    /// The main thread's name when read: an `execve` renames it, and then the command line and
    /// executable are read again.
    main_comm: String,
    details: ProcessDetails,
}

/// The fields of `/proc/PID/stat` that identify a process.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    parent_pid: u32,
    /// Field 22: clock ticks after boot.
    start_ticks: u64,
}

/// Processes and user names seen recently, bounded: the least recently used entry goes first.
#[derive(Debug)]
pub struct ProcessCache {
    processes: LruCache<u32, Known>,
    users: LruCache<u32, Option<String>>,
    /// `/proc`'s clock tick (`USER_HZ`); `None` if the system would not tell, and then no
    /// process is asked, since none can be told apart from a later holder of its pid.
    ticks_per_second: Option<u64>,
}

/// Enough processes for every workload of a busy node; an entry is a few hundred bytes.
const DEFAULT_PROCESSES: NonZeroUsize = nonzero(4096);
/// Distinct uids acting on a node are few.
const USERS: NonZeroUsize = nonzero(1024);

/// `n` if it is not zero, else 1.
const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

impl Default for ProcessCache {
    fn default() -> Self {
        Self::new(DEFAULT_PROCESSES)
    }
}

impl ProcessCache {
    /// A cache of at most `capacity` processes.
    #[must_use]
    pub fn new(capacity: NonZeroUsize) -> Self {
        let ticks_per_second = sysconf(SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|ticks| u64::try_from(ticks).ok())
            .filter(|ticks| *ticks > 0);
        Self {
            processes: LruCache::new(capacity),
            users: LruCache::new(USERS),
            ticks_per_second,
        }
    }

    /// The details of process `pid`, which made a decision at `decided_boot_ns`
    /// (`CLOCK_BOOTTIME`); `None` when it is gone, or when its pid now belongs to a process that
    /// started after that decision.
    pub fn details(&mut self, pid: u32, decided_boot_ns: u64) -> Option<ProcessDetails> {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        let stat = read_stat(&proc_dir)?;
        if self.started_after(&stat, decided_boot_ns) {
            return None;
        }
        if let Some(known) = self.processes.get(&pid)
            && known.start_ticks == stat.start_ticks
            && known.main_comm == stat.comm
        {
            return Some(known.details.clone());
        }
        let details = ProcessDetails {
            cmd_line: fs::read(proc_dir.join("cmdline"))
                .ok()
                .and_then(|raw| cmd_line(&raw)),
            executable: fs::read_link(proc_dir.join("exe"))
                .ok()
                .map(|path| path.to_string_lossy().into_owned()),
            // The idle task is the parent of init and kthreadd: no parent to name.
            parent_pid: (stat.parent_pid != 0).then_some(stat.parent_pid),
            workload: fs::read_to_string(proc_dir.join("cgroup"))
                .ok()
                .and_then(|text| cgroup_v2_path(&text).map(workload)),
        };
        // The files above belong to this process only if it is still the one holding the pid.
        if read_stat(&proc_dir).map(|after| after.start_ticks) != Some(stat.start_ticks) {
            return None;
        }
        self.processes.put(
            pid,
            Known {
                start_ticks: stat.start_ticks,
                main_comm: stat.comm,
                details: details.clone(),
            },
        );
        Some(details)
    }

    /// The name of `uid` in the node's user database (files, LDAP, whatever NSS is set to).
    /// A uid it does not know is remembered as such; a failed lookup is tried again next time.
    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.users.get(&uid) {
            return name.clone();
        }
        let name = User::from_uid(Uid::from_raw(uid))
            .ok()?
            .map(|user| user.name);
        self.users.put(uid, name.clone());
        name
    }

    /// `stat`'s process started after `decided_boot_ns` (or the clock tick is unknown, so it
    /// cannot be told): it is a later holder of the pid.
    fn started_after(&self, stat: &Stat, decided_boot_ns: u64) -> bool {
        self.ticks_per_second.is_none_or(|ticks| {
            // Ticks round down, so a process started after the decision is never taken for
            // one started before.
            u128::from(stat.start_ticks) * 1_000_000_000 / u128::from(ticks)
                > u128::from(decided_boot_ns)
        })
    }
}

fn read_stat(proc_dir: &Path) -> Option<Stat> {
    fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|text| parse_stat(&text))
}

/// `/proc/PID/stat`: `pid (comm) state ppid …`, where `comm` may itself hold spaces and
/// parentheses, so the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields 3 (state) onwards.
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    Some(Stat {
        comm,
        parent_pid: fields.get(4 - 3)?.parse().ok()?,
        start_ticks: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// `/proc/PID/cmdline` (NUL-separated arguments) joined by spaces; `None` when empty (a zombie,
/// a kernel thread).
fn cmd_line(raw: &[u8]) -> Option<String> {
    let arguments: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|argument| !argument.is_empty())
        .map(|argument| String::from_utf8_lossy(argument).into_owned())
        .collect();
    (!arguments.is_empty()).then(|| arguments.join(" "))
}

/// The cgroup v2 path in `/proc/PID/cgroup` (the `0::/path` line, present in hybrid layouts
/// too), without the ` (deleted)` the kernel appends once the cgroup is removed.
fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.strip_suffix(" (deleted)").unwrap_or(path))
        .filter(|path| path.starts_with('/'))
}

/// The workload a cgroup v2 path shows.
fn workload(cgroup_path: &str) -> FlowWorkload {
    FlowWorkload {
        cgroup_path: cgroup_path.to_owned(),
        systemd_unit: systemd_unit(cgroup_path),
        container_id: container_id(cgroup_path),
    }
}

/// The deepest `.service` or `.scope` in the path: the unit the process itself runs in (in a
/// user's manager, `user@1000.service/app.slice/app-firefox.scope` is the scope, the service
/// being the manager), which `systemctl status PID` also names. Slices group units and are no
/// unit of their own here.
fn systemd_unit(cgroup_path: &str) -> Option<String> {
    cgroup_path
        .split('/')
        .rfind(|component| component.ends_with(".service") || component.ends_with(".scope"))
        .map(str::to_owned)
}

/// The deepest 64-hex-digit container id in the path, in the forms the runtimes give it:
/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope` (systemd
/// driver), `/docker/ID`, `/kubepods/…/podUID/ID` (cgroupfs driver),
/// `kubepods-…-podUID.slice:cri-containerd:ID` (containerd's systemd-style path under its own
/// service). A `conmon` scope holds the runtime's monitor, not the container.
fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path
        .split('/')
        .rev()
        .filter(|component| !component.contains("conmon"))
        .find_map(|component| {
            let name = component.strip_suffix(".scope").unwrap_or(component);
            [
                Some(name),
                name.rsplit_once('-').map(|(_, id)| id),
                name.rsplit_once(':').map(|(_, id)| id),
            ]
            .into_iter()
            .flatten()
            .find(|id| is_container_id(id))
            .map(str::to_owned)
        })
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests;
