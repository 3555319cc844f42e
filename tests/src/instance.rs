//! An enforcer instance of a test's own: a bpffs directory and a state directory under a private
//! temporary directory, so that no test ever touches `/sys/fs/bpf` or `/run/enforcer`. Dropping it
//! unmounts the bpffs the daemon mounted there, which removes every pin and so detaches whatever
//! the instance still had attached.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use nix::mount::{MntFlags, umount2};
use tempfile::TempDir;

use crate::daemon::enforcer_bin;

/// A private instance; see the module docs.
#[derive(Debug)]
pub struct Instance {
    dir: TempDir,
}

impl Default for Instance {
    fn default() -> Self {
        Self::new()
    }
}

impl Instance {
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-t-instance-")
            .tempdir()
            .expect("create instance tempdir");
        Self { dir }
    }

    /// The bpffs directory (not on bpffs until a daemon mounts it).
    #[must_use]
    pub fn bpffs(&self) -> PathBuf {
        self.dir.path().join("bpffs")
    }

    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `--bpffs DIR --state-dir DIR`.
    #[must_use]
    pub fn flags(&self) -> Vec<OsString> {
        vec![
            "--bpffs".into(),
            self.bpffs().into(),
            "--state-dir".into(),
            self.state_dir().into(),
        ]
    }

    /// Runs `enforcer <command> --bpffs .. --state-dir ..` and returns its output.
    #[must_use]
    pub fn command(&self, command: &str) -> Output {
        Command::new(enforcer_bin())
            .arg(command)
            .args(self.flags())
            .output()
            .unwrap_or_else(|e| panic!("run enforcer {command}: {e}"))
    }

    /// `enforcer status` as JSON; panics if it fails.
    #[must_use]
    pub fn status(&self) -> serde_json::Value {
        let output = self.command("status");
        assert!(
            output.status.success(),
            "enforcer status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status is JSON")
    }

    /// Whether a bpffs is mounted at [`Instance::bpffs`].
    #[must_use]
    pub fn bpffs_mounted(&self) -> bool {
        is_mount_point(&self.bpffs())
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .any(|mount| mount == wanted)
}

impl Drop for Instance {
    fn drop(&mut self) {
        let bpffs = self.bpffs();
        while is_mount_point(&bpffs) {
            if umount2(&bpffs, MntFlags::MNT_DETACH).is_err() {
                eprintln!("could not unmount {}", bpffs.display());
                break;
            }
        }
    }
}
