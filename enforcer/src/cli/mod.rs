//! Command-line interface: `enforcer check`, `enforcer compile`, `enforcer run`.

mod check;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use self::check::summary;

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
    /// Enforce a policy on this node until SIGINT/SIGTERM.
    Run(RunArgs),
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
    /// Where OCSF JSON lines go: a file (appended) or `-` for standard output.
    #[arg(long, default_value = "-")]
    pub events: String,
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
    /// Cgroup labels the kernel can hold (two policy slots share them during a swap, so one
    /// policy may label half). Cgroups beyond it inherit or are held, never let out, and are
    /// reported.
    #[arg(long, default_value_t = enforcer_common::capacity::CGROUPS, value_parser = clap::value_parser!(u32).range(2..=1 << 24))]
    pub max_cgroups: u32,
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
