//! Shared helpers of the xtask subcommands.

pub mod bench;
pub mod demo;
pub mod lab;
pub mod setup;
pub mod test;
pub mod vagrant;
pub mod vm;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The workspace root (the parent of this crate).
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// `~/.cargo/bin`, where rustup and `cargo install` put their tools.
#[must_use]
pub fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// `PATH` with `dirs` in front, for child processes.
#[must_use]
pub fn path_with(dirs: &[&Path]) -> OsString {
    let mut parts: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    if let Some(path) = env::var_os("PATH") {
        parts.extend(env::split_paths(&path));
    }
    env::join_paths(parts).unwrap_or_default()
}

/// A command whose `PATH` includes `~/.cargo/bin` (bpf-linker lives there).
#[must_use]
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", path_with(&[&cargo_bin_dir()]));
    cmd
}

/// Runs `cmd`, failing with `what` and the exit status when it does not succeed.
///
/// # Errors
/// When the command cannot start or exits unsuccessfully.
pub fn exec(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output when it succeeds, `None` otherwise.
#[must_use]
pub fn output(cmd: &mut Command) -> Option<String> {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Prints a step of the set-up or of a run, so the user sees what happens.
pub fn say(message: &str) {
    println!("xtask: {message}");
}

/// Fails unless running as root (the kernel work needs it).
///
/// # Errors
/// When the effective user is not root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root (it installs packages and loads eBPF programs); run it with sudo -E"
        );
    }
    Ok(())
}

/// The cgroup2 mount point, from /proc/self/mountinfo (hybrid layouts put it below
/// /sys/fs/cgroup; never assumed).
///
/// # Errors
/// When no cgroup2 file system is mounted.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 file system is mounted")
}
