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
    /// the privileged kernel tests, and the kernel matrix in VMs.
    Test {
        /// Skip the kernel matrix in VMs, for local iteration.
        #[arg(long)]
        quick: bool,
    },
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
    /// Run the privileged kernel suite inside VMs on other kernels (Debian's 6.1 and newest 6.12
    /// by default), after building it here.
    VmTest {
        /// A Debian kernel package to boot instead of the defaults (repeatable), such as
        /// `linux-image-6.1.0-57-amd64`.
        #[arg(long, value_name = "PKG")]
        kernel: Vec<String>,
        /// Every privileged test, not one per layer and kernel feature (an hour or more per
        /// kernel under emulation; minutes with KVM).
        #[arg(long)]
        full: bool,
    },
    /// Bring the Vagrant lab (vagrant/) up from nothing, run its cross-VM checks, tear it down.
    VagrantTest,
    /// The bench's load server and clients, run by the bench inside its lab.
    #[command(subcommand, hide = true)]
    BenchLoad(xtask::bench::load::Load),
}

fn main() -> anyhow::Result<()> {
    let workspace = xtask::workspace();
    match Cli::parse().command {
        Command::Setup => xtask::setup::run(&workspace),
        Command::Test { quick } => xtask::test::run(&workspace, quick),
        Command::Demo => xtask::demo::run(&workspace),
        Command::Bench { quick, only } => xtask::bench::run(&workspace, quick, &only),
        Command::VmTest { kernel, full } => xtask::vm::run(&workspace, &kernel, full),
        Command::VagrantTest => xtask::vagrant::run(&workspace),
        Command::BenchLoad(load) => xtask::bench::load::run(&load),
    }
}
