//! The daemon: supervised tasks joined by bounded channels and one cancellation token.
//!
//! ```text
//! cgroup watcher ──(watch: tree)──────┐
//! address watcher ─(watch: addresses)─┤
//! policy dir watcher ─┐               ▼
//! SIGHUP ─────────────┼─(commands)─► reconciler ── sole owner of the datapath (pinned maps,
//! control socket ─────┘               │              links, programs)
//!                                     └─(watch: generations it can explain)─┐
//! kernel ring buffer ─► event reader (decode, enrich) ─(bounded)─► sink writer (own thread)
//! ```
//!
//! Enforcement outlives the daemon: programs, links and maps are pinned, so `kill -9` leaves the
//! last policy enforcing, and a restarted daemon adopts the pins with no window (see
//! `datapath::pins`). The daemon never judges itself: the kernel exempts its own cgroup by id,
//! and it learns routes and addresses over netlink (no inet socket).

mod generation;
mod pipeline;
mod reconciler;
mod revoke;
mod startup;
pub mod state;
mod tasks;
mod watch_policy;

use std::{io, path::PathBuf, time::Duration};

pub use self::{
    reconciler::Origin,
    startup::{Prepared, prepare, run},
    state::{StateDir, StateError, Status},
};
use crate::{
    compile::{CompileError, Limits},
    control::ControlError,
    datapath::DatapathError,
    host::HostError,
    identity::{CgroupError, IdentityError, WatchError},
    policy::PolicyErrors,
    sinks::SinkError,
};

/// What happens to enforcement when the daemon exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// The pins keep the last policy enforcing until a new daemon adopts them.
    Keep,
    /// Every pin of the instance is removed: its programs are detached.
    Detach,
}

/// What `enforcer run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub policy_dir: PathBuf,
    pub node: String,
    /// `None`: the cgroup2 mount point.
    pub cgroup_root: Option<PathBuf>,
    /// Where reports go; each sink has its own bounded queue.
    pub sinks: Vec<crate::sinks::SinkSpec>,
    /// Where the Prometheus endpoint listens; `None`: no endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Created once the policy is enforced, for supervisors and tests.
    pub ready_file: Option<PathBuf>,
    /// Size of the kernel's event ring buffer; a burst larger than it loses events (counted).
    pub event_buffer_bytes: u32,
    /// The node's network namespace; `None`: the daemon's own.
    pub netns: Option<PathBuf>,
    /// The interfaces of the node's namespace the interface layer covers; empty: every one that
    /// is up, loopback excepted, including those that come up later.
    pub interfaces: Vec<String>,
    /// Entries of the kernel's cgroup label map (both policy slots).
    pub max_cgroups: u32,
    /// Entries of the kernel's connection-tracking table.
    pub max_flows: u32,
    /// Sizes of the other policy maps (both slots).
    pub limits: Limits,
    /// The instance's bpffs directory.
    pub bpffs: PathBuf,
    /// The instance's state directory.
    pub state_dir: PathBuf,
    pub on_exit: OnExit,
    /// How often the kernel's maps are compared with the policy and drift repaired.
    pub reconcile_interval: Duration,
    /// How long the policy directory must be quiet before a change is reloaded.
    pub reload_debounce: Duration,
    /// Identical attempts within this window are reported as one event with a count (the first
    /// at once).
    pub aggregate_window: Duration,
    /// Lateral-movement detection; `None`: off.
    pub detection: Option<crate::events::DetectorConfig>,
}

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the policy is invalid")]
    Policy(#[source] PolicyErrors),
    #[error("the policy was rejected and no earlier policy is in force")]
    Rejected { errors: Vec<String> },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    PolicyWatch(#[from] watch_policy::PolicyWatchError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(
        "instance {bpffs} already enforces on cgroup {pinned}, not {asked}: run `enforcer detach --bpffs {bpffs}` first"
    )]
    OtherRoot {
        bpffs: PathBuf,
        pinned: PathBuf,
        asked: PathBuf,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// The error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
