//! The `enforcer` binary: parses the command line, sets up logging, dispatches.

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use enforcer::{
    cli::{Cli, Command, RunArgs, summary},
    daemon::{self, DaemonError, EventsTarget, RunConfig},
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
            ExitCode::FAILURE
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
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = RunConfig {
        policy_dir: args.policy,
        node: node_name(args.node)?,
        cgroup_root: args.cgroup_root,
        events: match args.events.as_str() {
            "-" => EventsTarget::Stdout,
            path => EventsTarget::File(path.into()),
        },
        ready_file: args.ready_file,
        event_buffer_bytes: args.event_buffer_kib * 1024,
        netns: args.netns,
        max_cgroups: args.max_cgroups,
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

/// Policy errors are listed one per line (each names file:line:column); anything else prints its
/// chain of causes.
fn report(error: &anyhow::Error) {
    if let Some(DaemonError::Policy(errors)) = error.downcast_ref::<DaemonError>() {
        eprintln!("{errors}");
        eprintln!("error: the policy is invalid; nothing was loaded");
        return;
    }
    eprintln!("error: {error:#}");
}
