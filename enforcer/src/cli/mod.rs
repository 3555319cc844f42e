//! Command-line interface: `enforcer check`, `compile`, `run`, and the instance commands
//! (`status`, `reload`, `rollback`, `reconcile`, `detach`).

mod check;
mod instance;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

pub use self::{
    check::summary,
    instance::{InstanceError, ask, detach, status},
};

/// eBPF host microsegmentation enforcer.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a policy directory and summarise what it compiles to.
    Check {
        /// The policy directory (every *.toml below it).
        dir: PathBuf,
        /// Compile as this node (default: the hostname).
        #[arg(long)]
        node: Option<String>,
    },
    /// Print every map entry the policy compiles to on a node.
    Compile {
        dir: PathBuf,
        #[arg(long)]
        node: Option<String>,
    },
    /// Enforce a policy on this node until SIGINT/SIGTERM (the pins keep enforcing after).
    Run(Box<RunArgs>),
    /// What the instance enforces: works with the daemon down (reads the pins).
    Status(InstanceArgs),
    /// Ask the running daemon to reload its policy directory.
    Reload(InstanceArgs),
    /// Ask the running daemon to flip back to the previous policy (kept intact in the kernel).
    Rollback(InstanceArgs),
    /// Ask the running daemon to compare the kernel's maps with the policy now and repair drift.
    Reconcile(InstanceArgs),
    /// Remove all enforcement of the instance: its links, programs and maps.
    Detach(InstanceArgs),
}

/// Default bpffs directory of the default instance.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/enforcer/default";

/// Where an instance keeps its pins and its state.
#[derive(Clone, Debug, clap::Args)]
pub struct InstanceArgs {
    /// The instance's bpffs directory (bpffs is mounted if it is not).
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// The instance's state directory (default: /run/enforcer/<last part of --bpffs>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl InstanceArgs {
    /// The state directory, explicit or derived from the bpffs directory.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            let name = self.bpffs.file_name().map_or_else(
                || "default".into(),
                |name| name.to_string_lossy().into_owned(),
            );
            PathBuf::from("/run/enforcer").join(name)
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The policy directory.
    #[arg(long)]
    pub policy: PathBuf,
    /// Which `[[node]]` this machine is (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// The cgroup v2 directory to enforce below; workload globs are relative to it (default: the
    /// cgroup2 mount point).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// The daemon's config file (TOML: `[events]`, `[[sink]]`, `[metrics]`; see
    /// docs/configuration.md). Flags given on the command line override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An OCSF JSON-lines sink to add beside the config file's: a file (appended) or `-` for
    /// standard output. With neither this nor a `[[sink]]`, events go to standard output.
    #[arg(long)]
    pub events: Option<String>,
    /// Where the Prometheus endpoint listens (`127.0.0.1:9464`); overrides `[metrics] listen`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A file to create once the policy is enforced (for supervisors and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Size of the kernel's event ring buffer in KiB: a power of two, at least 4. Bursts beyond
    /// it lose events, which are counted and logged, never silently dropped.
    #[arg(long, default_value_t = enforcer_common::capacity::EVENTS_BYTES / 1024, value_parser = event_buffer_kib)]
    pub event_buffer_kib: u32,
    /// The network namespace whose addresses are this node's own (a path such as
    /// `/run/netns/NAME` or `/proc/PID/ns/net`; default: the daemon's own). Its addresses are
    /// learnt from the kernel and kept current, declared in `[[node]]` or not.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// An interface of the node's namespace to judge arrivals on (closed ports, scans, processes
    /// outside the managed tree, ICMP echo); repeatable. Default: every interface that is up,
    /// loopback excepted, and those that come up later.
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Cgroup labels the kernel can hold (two policy slots share them during a swap, so one
    /// policy may label half). Cgroups beyond it inherit or are held, never let out, and are
    /// reported.
    #[arg(long, default_value_t = enforcer_common::capacity::CGROUPS, value_parser = clap::value_parser!(u32).range(2..=1 << 24))]
    pub max_cgroups: u32,
    /// Flows the connection-tracking table remembers. Beyond it the oldest are forgotten and
    /// judged again at their next packet, never let through unjudged.
    #[arg(long, default_value_t = enforcer_common::capacity::FLOWS, value_parser = clap::value_parser!(u32).range(16..=1 << 24))]
    pub max_flows: u32,
    /// Entries of the rule map (both slots; one policy may use half).
    #[arg(long, default_value_t = enforcer_common::capacity::RULES, value_parser = clap::value_parser!(u32).range(2..=1 << 24))]
    pub max_rules: u32,
    /// Entries of the exact-address map (both slots; one policy may use half).
    #[arg(long, default_value_t = enforcer_common::capacity::ADDR_EXACT, value_parser = clap::value_parser!(u32).range(2..=1 << 24))]
    pub max_addresses: u32,
    /// Entries of the CIDR map (both slots; one policy may use half).
    #[arg(long, default_value_t = enforcer_common::capacity::ADDR_CIDR, value_parser = clap::value_parser!(u32).range(2..=1 << 24))]
    pub max_cidrs: u32,
    /// Entries of the identity map (both slots; one policy may use half).
    #[arg(long, default_value_t = enforcer_common::capacity::IDENTITIES, value_parser = clap::value_parser!(u32).range(2..=1 << 20))]
    pub max_identities: u32,
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// What happens to enforcement when the daemon exits: `keep` leaves the pinned programs
    /// enforcing the last policy, `detach` removes them.
    #[arg(long, value_enum, default_value = "keep")]
    pub on_exit: crate::daemon::OnExit,
    /// Seconds between comparisons of the kernel's maps with the policy (drift repair).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval: u64,
    /// Milliseconds the policy directory must stay quiet before a change is reloaded.
    #[arg(long, default_value_t = 300)]
    pub reload_debounce_ms: u64,
    /// Identical denied attempts within this window are reported as one event with a count; the
    /// first goes out at once (`10s`, `500ms`, `1m`).
    /// Overrides `[events] aggregate_window` (default 10s).
    #[arg(long, value_parser = aggregate_window)]
    pub aggregate_window: Option<Duration>,
}

fn aggregate_window(text: &str) -> Result<Duration, String> {
    let window = humantime::parse_duration(text).map_err(|error| format!("{text:?}: {error}"))?;
    if window < Duration::from_millis(200) || window > Duration::from_secs(3600) {
        return Err(format!(
            "{text}: the aggregation window must be between 200ms and 1h"
        ));
    }
    Ok(window)
}

fn event_buffer_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: the ring buffer must be a power of two between 4 KiB and 1 GiB"
        ));
    }
    Ok(kib)
}
