//! `cargo xtask vagrant-test`: the multi-VM lab of `vagrant/`, brought up, checked and torn down.
//!
//! Everything the lab makes lives in a network namespace of its own (libvirtd runs inside it), so
//! the VMs' addresses, bridges and DHCP servers never touch this machine's real network. The box is
//! built here with debootstrap when `vagrant box list` lacks it, and stays cached afterwards.

mod checks;
mod image;
mod lab;
mod packages;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{command, exec, say};

/// The box the Vagrantfile boots unless `ENFORCER_LAB_BOX` names another.
const BOX_NAME: &str = "enforcer/debian12";

/// Brings the lab up from nothing, runs the cross-VM checks and tears everything down.
///
/// # Errors
/// When set-up, the lab or a check fails, or when tear-down leaves something behind.
pub fn run(workspace: &Path) -> anyhow::Result<()> {
    crate::require_root("cargo xtask vagrant-test")?;
    let mut phases = Phases::default();
    let outcome = run_phases(workspace, &mut phases);
    phases.report();
    if outcome.is_ok() {
        say("vagrant lab: every check passed and nothing is left running");
    }
    outcome
}

fn run_phases(workspace: &Path, phases: &mut Phases) -> anyhow::Result<()> {
    phases.time("packages", packages::install)?;
    let binary = phases.time("release build", || build_release(workspace))?;
    let driver = phases.time("accelerator probe", packages::libvirt_driver)?;
    let kernel = image::kernel_package();
    phases.time("box", || image::ensure_box(BOX_NAME, &kernel))?;

    let mut lab = phases.time("libvirtd in its namespace", || {
        lab::Lab::start(workspace, &binary, driver)
    })?;
    let tested = phases
        .time("vagrant up", || lab.up())
        .and_then(|()| phases.time("checks", || checks::run(&lab)));
    if let Err(error) = &tested {
        say(&format!("vagrant lab failed: {error:#}; tearing down"));
    }
    let torn_down = phases.time("tear-down", || lab.tear_down());
    tested.and(torn_down)
}

/// `cargo build --release -p enforcer --bins` with the eBPF programs, as the VMs run it.
fn build_release(workspace: &Path) -> anyhow::Result<PathBuf> {
    say("building the enforcer in release (with its eBPF programs) for the VMs");
    exec(
        "cargo build --release -p enforcer --bins",
        command("cargo")
            .args(["build", "--release", "-p", "enforcer", "--bins"])
            .env_remove("AYA_BUILD_SKIP")
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(workspace),
    )?;
    Ok(workspace.join("target/release/enforcer"))
}

/// How long each phase took, reported at the end whatever the outcome.
#[derive(Default)]
struct Phases {
    done: Vec<(&'static str, Duration, bool)>,
}

impl Phases {
    fn time<T>(
        &mut self,
        name: &'static str,
        phase: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        say(&format!("phase {name}"));
        let start = Instant::now();
        let result = phase();
        self.done.push((name, start.elapsed(), result.is_ok()));
        result
    }

    fn report(&self) {
        say("phase times:");
        for (name, took, ok) in &self.done {
            let status = if *ok { "ok" } else { "FAILED" };
            say(&format!(
                "  {name:<28} {:>7.1} s  {status}",
                took.as_secs_f64()
            ));
        }
    }
}
