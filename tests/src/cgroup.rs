//! Workloads as processes in cgroup v2 directories.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::{netns::unique_name, privileges::cgroup2_mount};

/// A uniquely named cgroup directory directly under the cgroup v2 mount, used as a managed root.
///
/// Drop kills every process left anywhere below it (`cgroup.kill`) and removes the whole subtree,
/// deepest first: a cgroup cannot be removed while it has children or members.
#[derive(Debug)]
pub struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    #[must_use]
    pub fn new() -> Self {
        let mount = cgroup2_mount().expect("a cgroup2 mount (checked by require_privileges)");
        let path = mount.join(unique_name());
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `rel` (and its parents) below this cgroup and returns its path. Removal is left to
    /// this guard's drop.
    pub fn create(&self, rel: &str) -> PathBuf {
        let path = self.path.join(rel);
        assert!(
            path.starts_with(&self.path) && !rel.split('/').any(|c| c == ".."),
            "{rel:?} escapes the cgroup"
        );
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        path
    }

    /// Creates a chain of `depth` nested cgroups below this one: `first`, then `d2`, `d3`, … and
    /// `leaf` as the `depth`-th, e.g. `create_chain("chain", 4, "leaf")` makes
    /// `chain/d2/d3/leaf`. Returns the leaf's path relative to this cgroup. `first` may itself be
    /// a path (`a/b`); its components count towards `depth` as one.
    pub fn create_chain(&self, first: &str, depth: usize, leaf: &str) -> String {
        assert!(depth >= 2, "a chain has a first cgroup and a leaf");
        let mut rel = first.to_owned();
        for level in 2..depth {
            rel.push_str(&format!("/d{level}"));
        }
        rel.push('/');
        rel.push_str(leaf);
        self.create(&rel);
        rel
    }

    /// Creates `count` sibling cgroups `parent/prefix-0` … `parent/prefix-<count-1>` (and `parent`
    /// if needed) with one mkdir(2) each, and returns their paths relative to this cgroup.
    pub fn create_many(&self, parent: &str, prefix: &str, count: usize) -> Vec<String> {
        let base = self.create(parent);
        (0..count)
            .map(|n| {
                let name = format!("{prefix}-{n}");
                let path = base.join(&name);
                fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
                if parent.is_empty() {
                    name
                } else {
                    format!("{parent}/{name}")
                }
            })
            .collect()
    }

    /// The pids currently in `rel` itself (not its children).
    #[must_use]
    pub fn pids(&self, rel: &str) -> Vec<u32> {
        read_pids(&self.path.join(rel))
    }
}

impl Default for CgroupDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        if let Err(err) = kill_and_remove(&self.path) {
            eprintln!("cleanup of cgroup {}: {err}", self.path.display());
        }
    }
}

fn read_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|ev| ev.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

fn kill_and_remove(root: &Path) -> io::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14) reaches the whole subtree at once, including processes forked while
    // we walk it; per-pid SIGKILL is the fallback for older kernels.
    if fs::write(root.join("cgroup.kill"), "1").is_err() {
        for dir in subtree_deepest_first(root)? {
            for pid in read_pids(&dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid.try_into().unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // Killed processes leave the cgroup asynchronously (once reaped by their parent).
    let deadline = Instant::now() + Duration::from_secs(5);
    while populated(root) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    for dir in subtree_deepest_first(root)? {
        fs::remove_dir(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("rmdir {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// `root` and every directory below it, children before their parents.
fn subtree_deepest_first(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        for entry in fs::read_dir(&dirs[i])? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        i += 1;
    }
    // Breadth-first order reversed puts every child before its parent.
    dirs.reverse();
    Ok(dirs)
}
