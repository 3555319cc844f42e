//! `cargo xtask test`: the whole suite, in the order a failure is cheapest to find.

use std::{env, fs, path::Path};

use anyhow::bail;

use crate::{command, exec, say, setup};

/// Members whose manifests must inherit the workspace lints.
const MEMBERS: [&str; 6] = [
    "enforcer",
    "enforcer-common",
    "enforcer-ebpf",
    "tests",
    "xtask",
    "xtask/reference-ebpf",
];

/// One step of the suite, run at most once.
type Stage<'a> = Box<dyn FnOnce() -> anyhow::Result<()> + 'a>;

/// Runs set-up, then every stage (without the VM stages and the lab when `quick`); stops at the first failure
/// and prints a summary either way.
///
/// # Errors
/// When set-up or any stage fails.
pub fn run(workspace: &Path, quick: bool) -> anyhow::Result<()> {
    setup::run(workspace)?;
    let ci = env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let bin = workspace.join("target/debug");
    let python = workspace.join("target/ocsf-venv/bin/python");

    let mut privileged = command("cargo");
    privileged
        .args(["test", "-p", "enforcer-tests", "--", "--test-threads=1"])
        .env("ENFORCER_BIN", bin.join("enforcer"))
        .env("ENFORCER_PROBE_BIN", bin.join("enforcer-probe"))
        .env("ENFORCER_OCSF_PYTHON", &python);
    if ci {
        // Under CI a test that cannot run is a failure, not a skip.
        privileged.env("ENFORCER_REQUIRE_PRIVILEGED", "1");
    }

    let mut stages: Vec<(&str, Stage<'_>)> = vec![
        (
            "rustfmt",
            Box::new(|| {
                exec(
                    "cargo fmt --check",
                    command("cargo").args(["fmt", "--all", "--", "--check"]),
                )
            }),
        ),
        (
            "workspace lints inherited",
            Box::new(|| lints_inherited(workspace)),
        ),
        (
            "clippy (host crates)",
            Box::new(|| {
                exec(
                    "cargo clippy",
                    command("cargo").args([
                        "clippy",
                        "--workspace",
                        "--exclude",
                        "enforcer-ebpf",
                        "--exclude",
                        "reference-ebpf",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ]),
                )
            }),
        ),
        (
            "clippy (eBPF crates, bpfel target)",
            Box::new(|| {
                exec(
                    "cargo clippy (bpfel)",
                    command("cargo").args([
                        "+nightly",
                        "clippy",
                        "-p",
                        "enforcer-ebpf",
                        "-p",
                        "reference-ebpf",
                        "--release",
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                        "--",
                        "-D",
                        "warnings",
                    ]),
                )
            }),
        ),
        (
            "unit, parser, golden and OCSF schema tests",
            Box::new(|| {
                exec(
                    "cargo test",
                    command("cargo")
                        .args([
                            "test",
                            "--workspace",
                            "--exclude",
                            "enforcer-tests",
                            "--exclude",
                            "enforcer-ebpf",
                            "--exclude",
                            "reference-ebpf",
                        ])
                        .env("ENFORCER_OCSF_PYTHON", &python),
                )
            }),
        ),
        (
            "build the daemon and the probe",
            Box::new(|| {
                exec(
                    "cargo build",
                    command("cargo").args([
                        "build",
                        "-p",
                        "enforcer",
                        "-p",
                        "enforcer-tests",
                        "--bins",
                    ]),
                )
            }),
        ),
        (
            "privileged kernel tests (one at a time)",
            Box::new(move || exec("privileged tests", &mut privileged)),
        ),
    ];
    if quick {
        say("--quick: the kernel matrix in VMs and the Vagrant lab are skipped");
    } else {
        stages.push((
            "kernel tests in VMs (Debian 6.1 and 6.12)",
            Box::new(|| crate::vm::run(workspace, &[], false)),
        ));
        stages.push((
            "Vagrant lab: three VMs, cross-VM checks, tear-down",
            Box::new(|| crate::vagrant::run(workspace)),
        ));
    }

    let mut results = Vec::new();
    let mut failed = None;
    let started = std::time::Instant::now();
    for (name, stage) in stages.drain(..) {
        say(&format!("stage: {name}"));
        let stage_started = std::time::Instant::now();
        let outcome = stage();
        let took = stage_started.elapsed();
        match outcome {
            Ok(()) => results.push((name, "ok", took)),
            Err(error) => {
                results.push((name, "FAILED", took));
                failed = Some(error);
                break;
            }
        }
    }
    say(&format!(
        "summary ({:.0} s in all):",
        started.elapsed().as_secs_f64()
    ));
    for (name, result, took) in &results {
        println!("  {result:>6}  {:>6.1} s  {name}", took.as_secs_f64());
    }
    match failed {
        Some(error) => Err(error),
        None => {
            say("all stages passed");
            Ok(())
        }
    }
}

/// Every member's manifest says `[lints] workspace = true`: lints that are not inherited do not bite.
fn lints_inherited(workspace: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for member in MEMBERS {
        let manifest = workspace.join(member).join("Cargo.toml");
        let text = fs::read_to_string(&manifest).unwrap_or_default();
        let inherits = text
            .split("[lints]")
            .nth(1)
            .is_some_and(|rest| rest.trim_start().starts_with("workspace = true"));
        if !inherits {
            missing.push(manifest.display().to_string());
        }
    }
    if !missing.is_empty() {
        bail!(
            "these manifests do not inherit the workspace lints: {}",
            missing.join(", ")
        );
    }
    Ok(())
}
