//! Idempotent set-up of everything the build and the tests need on a fresh Debian machine.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cargo_bin_dir, command, exec, output, path_with, require_root, say};

/// Debian packages: LLVM 22 for bpf-linker, iproute2 and nftables (the DNAT tests) for the labs,
/// bpftool (the drift tests edit pinned maps with it, as an operator would), nmap, hping3 and
/// iperf3 (traffic tools for the fleet tests), iptables (a contender in the bench), venv
/// support for Debian's own python3 (the OCSF validator), rsyslog with its TLS driver (the real
/// SIEM receiver of the syslog sink tests).
const APT_PACKAGES: [&str; 14] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "nftables",
    "bpftool",
    "nmap",
    "hping3",
    "iperf3",
    "iptables",
    "python3-venv",
    "rsyslog",
    "rsyslog-gnutls",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const NIGHTLY: &str = "nightly";

/// Installs what is missing and says what it does.
///
/// # Errors
/// When something is missing and cannot be installed; the message says what and how.
pub fn run(workspace: &Path) -> anyhow::Result<()> {
    require_root("cargo xtask setup")?;
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    ocsf_venv(workspace)?;
    ecs_definitions(workspace)?;
    say("set-up complete");
    Ok(())
}

/// Whether dpkg has `package` installed.
#[must_use]
pub fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        say(&format!("apt packages: {} present", APT_PACKAGES.join(" ")));
        return Ok(());
    }
    say(&format!("apt packages: installing {}", missing.join(" ")));
    exec(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    exec(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing Debian packages (is the package index reachable?)")
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output(command("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        say("rust: installing the nightly toolchain (the eBPF crate needs -Z build-std)");
        exec(
            "rustup toolchain install nightly",
            command("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]),
        )?;
    }
    let components = output(command("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        say("rust: nightly toolchain with rust-src present");
        return Ok(());
    }
    say("rust: adding rust-src to the nightly toolchain");
    exec(
        "rustup component add rust-src",
        command("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = output(command("bpf-linker").arg("--version")) {
        say(&format!("bpf-linker: present ({})", version.trim()));
        return Ok(());
    }
    say("bpf-linker: building it against LLVM 22 (about a minute)");
    let llvm_bin = Path::new(LLVM_PREFIX).join("bin");
    if !llvm_bin.exists() {
        bail!(
            "{} is missing: install llvm-22-dev first",
            llvm_bin.display()
        );
    }
    exec(
        "cargo install bpf-linker",
        command("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path_with(&[&llvm_bin, &cargo_bin_dir()])),
    )
}

/// The Python venv with the OCSF schemas and jsonschema that validate events offline.
fn ocsf_venv(workspace: &Path) -> anyhow::Result<()> {
    let requirements = workspace.join("tests/ocsf/requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = workspace.join("target/ocsf-venv");
    let stamp = venv.join("requirements.installed");
    let python = venv.join("bin/python");
    if python.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        say("OCSF validator venv: present (target/ocsf-venv)");
        return Ok(());
    }
    say(
        "OCSF validator venv: creating target/ocsf-venv and installing tests/ocsf/requirements.txt",
    );
    if !python.exists() {
        exec(
            "python3 -m venv",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        )
        .context("creating the venv (on Debian's own python3, install python3-venv)")?;
    }
    exec(
        "pip install",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
    )?;
    fs::write(&stamp, wanted).context("writing the venv stamp")
}

/// ECS's field definitions (npm `@elastic/ecs`, pinned by `tests/ecs/package-lock.json`), which
/// the ECS schema test checks every rendered document against. Node.js comes from Debian when
/// the machine has none.
fn ecs_definitions(workspace: &Path) -> anyhow::Result<()> {
    let dir = workspace.join("tests/ecs");
    let stamp = dir.join("node_modules/.package-lock.json");
    let lock = dir.join("package-lock.json");
    let fresh = |a: &Path, b: &Path| -> bool {
        let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((modified(a), modified(b)), (Some(a), Some(b)) if a >= b)
    };
    if fresh(&stamp, &lock) {
        say("ECS field definitions: present (tests/ecs/node_modules)");
        return Ok(());
    }
    if output(Command::new("npm").arg("--version")).is_none() {
        say("ECS field definitions: installing Debian's nodejs and npm");
        exec(
            "apt-get install nodejs npm",
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "nodejs",
                    "npm",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    say("ECS field definitions: npm ci in tests/ecs");
    exec(
        "npm ci",
        command("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir),
    )
}
