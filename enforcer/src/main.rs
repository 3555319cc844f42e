//! The `enforcer` binary: parses the command line, sets up logging, dispatches.

use std::{io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use enforcer::{
    cli::{self, Cli, Command, RunArgs, summary},
    compile::Limits,
    config::{ConfigError, DaemonConfig, events_flag_sink},
    control::Request,
    daemon::{self, DaemonError, RunConfig},
    events::DetectorConfig,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            // A config file the daemon refuses is a usage error, like a bad flag.
            if error.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { dir, node } => {
            let node = node_name(node)?;
            let prepared = daemon::prepare(&dir, &node)?;
            print!("{}", summary(&prepared, &node));
            println!("{}: OK", dir.display());
            Ok(())
        }
        Command::Compile { dir, node } => {
            let node = node_name(node)?;
            let prepared = daemon::prepare(&dir, &node)?;
            print!("{}", prepared.compiled.render(&prepared.identities));
            Ok(())
        }
        Command::Run(args) => run(*args),
        Command::Status(args) => {
            let status = cli::status(&args)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Reload(args) => answer(&args, &Request::Reload),
        Command::Rollback(args) => answer(&args, &Request::Rollback),
        Command::Reconcile(args) => answer(&args, &Request::Reconcile),
        Command::Detach(args) => {
            if cli::detach(&args)? {
                println!(
                    "{}: every pin removed; enforcement of this instance is gone",
                    args.bpffs.display()
                );
            } else {
                println!("{}: nothing was pinned", args.bpffs.display());
            }
            Ok(())
        }
    }
}

/// Sends a request to the daemon and prints its answer (JSON detail on standard output).
fn answer(args: &cli::InstanceArgs, request: &Request) -> anyhow::Result<()> {
    let response = cli::ask(args, request)?;
    eprintln!("{}", response.message);
    println!("{}", serde_json::to_string_pretty(&response.detail)?);
    Ok(())
}

/// The config file (if any) with the flags over it: `--aggregate-window` and `--metrics-listen`
/// replace the file's keys, `--events` adds its sink beside the file's, and a daemon left with
/// no sink at all writes OCSF to standard output.
fn daemon_config(args: &RunArgs) -> Result<DaemonConfig, ConfigError> {
    let mut config = match &args.config {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig::default(),
    };
    if let Some(window) = args.aggregate_window {
        config.events.aggregate_window = window;
    }
    if let Some(listen) = args.metrics_listen {
        config.metrics = Some(enforcer::config::MetricsConfig { listen });
    }
    if let Some(events) = &args.events {
        config
            .sinks
            .push(events_flag_sink(events, config.events.queue));
    }
    if config.sinks.is_empty() {
        config
            .sinks
            .push(events_flag_sink("-", config.events.queue));
    }
    Ok(config)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = daemon_config(&args)?;
    let lateral = &file.events.lateral_movement;
    let config = RunConfig {
        policy_dir: args.policy,
        node: node_name(args.node)?,
        cgroup_root: args.cgroup_root,
        sinks: file.sinks.clone(),
        metrics_listen: file.metrics.as_ref().map(|metrics| metrics.listen),
        ready_file: args.ready_file,
        event_buffer_bytes: args.event_buffer_kib * 1024,
        netns: args.netns,
        interfaces: args.interfaces,
        max_cgroups: args.max_cgroups,
        max_flows: args.max_flows,
        limits: Limits {
            addr_exact: args.max_addresses,
            addr_cidr: args.max_cidrs,
            identities: args.max_identities,
            rules: args.max_rules,
        },
        state_dir: args.instance.state_dir(),
        bpffs: args.instance.bpffs,
        on_exit: args.on_exit,
        reconcile_interval: Duration::from_secs(args.reconcile_interval),
        reload_debounce: Duration::from_millis(args.reload_debounce_ms),
        aggregate_window: file.events.aggregate_window,
        detection: lateral.enabled.then(|| DetectorConfig {
            window: lateral.window,
            distinct_targets: lateral.distinct_targets,
            ..DetectorConfig::default()
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon::run(config))?;
    Ok(())
}

fn node_name(node: Option<String>) -> anyhow::Result<String> {
    match node {
        Some(node) => Ok(node),
        None => Ok(nix::unistd::gethostname()
            .context("reading the hostname (pass --node)")?
            .to_string_lossy()
            .into_owned()),
    }
}

/// Policy and config errors are listed one per line (each names file:line:column); anything else
/// prints its chain of causes.
fn report(error: &anyhow::Error) {
    if let Some(config) = error.downcast_ref::<ConfigError>() {
        eprintln!("{config}");
        eprintln!("error: the daemon's config file is invalid; nothing was started");
        return;
    }
    match error.downcast_ref::<DaemonError>() {
        Some(DaemonError::Policy(errors)) => {
            eprintln!("{errors}");
            eprintln!("error: the policy is invalid; nothing was loaded");
            return;
        }
        Some(DaemonError::Rejected { errors }) => {
            for line in errors {
                eprintln!("{line}");
            }
            eprintln!("error: the policy is invalid; nothing was loaded");
            return;
        }
        _ => {}
    }
    if let Some(cli::InstanceError::Refused { message, detail }) = error.downcast_ref() {
        eprintln!("error: {message}");
        println!("{detail}");
        return;
    }
    eprintln!("error: {error:#}");
}
