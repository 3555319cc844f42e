//! `cargo xtask`: the one door for set-up, the test suite, the demo lab and the bench.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set-up, tests, the demo lab and the bench for enforcer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: apt packages, rust-src, bpf-linker, the OCSF validator venv.
    Setup,
    /// Set up, then run the whole suite: fmt, lints, clippy (host and BPF), unit and golden tests,
    /// and the privileged kernel tests.
    Test,
    /// Set up, build, and run a lab on this machine that shows enforcement and events.
    Demo,
    /// Set up, build in release, and measure what enforcement costs; writes docs/benchmarks.md.
    Bench {
        /// One short round (2 s per test) instead of three of 5 s: a smoke test of the bench.
        #[arg(long)]
        quick: bool,
        /// Run only these measures (repeatable) and print the result instead of writing the docs.
        #[arg(long, value_name = "MEASURE")]
        only: Vec<String>,
    },
    /// The bench's load server and clients, run by the bench inside its lab.
    #[command(subcommand, hide = true)]
    BenchLoad(xtask::bench::load::Load),
}

fn main() -> anyhow::Result<()> {
    let workspace = xtask::workspace();
    match Cli::parse().command {
        Command::Setup => xtask::setup::run(&workspace),
        Command::Test => xtask::test::run(&workspace),
        Command::Demo => xtask::demo::run(&workspace),
        Command::Bench { quick, only } => xtask::bench::run(&workspace, quick, &only),
        Command::BenchLoad(load) => xtask::bench::load::run(&load),
    }
}
