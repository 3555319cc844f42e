//! The cgroup v2 tree below the managed root: ids (inode numbers) and paths.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

/// Errors finding or reading the cgroup tree.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
}

/// The mount point of the cgroup2 file system, from `/proc/self/mountinfo` (hybrid layouts mount it
/// somewhere below `/sys/fs/cgroup`, so the path is never assumed).
///
/// # Errors
/// When mountinfo cannot be read or lists no cgroup2 mount.
pub fn find_cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .find_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional...] - fstype source super
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or(CgroupError::NoCgroup2)
}

/// A snapshot of the cgroups below a root: id → path relative to the root (`""` for the root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupTree(BTreeMap<u64, String>);

impl CgroupTree {
    /// Walks the tree below `root`. Cgroups that vanish during the walk are skipped: they are gone.
    ///
    /// # Errors
    /// When the root itself cannot be read or is not a cgroup v2 directory.
    pub fn scan(root: &Path) -> Result<Self, CgroupError> {
        if !root.join("cgroup.procs").exists() {
            return Err(CgroupError::NotCgroup2 {
                path: root.to_owned(),
            });
        }
        let meta = fs::metadata(root).map_err(|source| CgroupError::Read {
            path: root.to_owned(),
            source,
        })?;
        let mut tree = BTreeMap::from([(meta.ino(), String::new())]);
        let mut pending = vec![(root.to_owned(), String::new())];
        while let Some((dir, rel)) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            // The type and inode come with the directory entry: no stat of the dozens of
            // interface files each cgroup holds (with 10 000 cgroups, that was most of the daemon's
            // idle time).
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let child_rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                tree.insert(entry.ino(), child_rel.clone());
                pending.push((entry.path(), child_rel));
            }
        }
        Ok(Self(tree))
    }

    /// `(cgroup id, relative path)` pairs in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.0.iter().map(|(id, path)| (*id, path.as_str()))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A tree from `(cgroup id, relative path)` pairs, as the watcher keeps them.
impl FromIterator<(u64, String)> for CgroupTree {
    fn from_iter<I: IntoIterator<Item = (u64, String)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collecting_pairs_builds_the_same_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cgroup.procs"), "").expect("cgroup.procs");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        let tree = CgroupTree::scan(dir.path()).expect("scan");
        let rebuilt: CgroupTree = tree.iter().map(|(id, p)| (id, p.to_owned())).collect();
        assert_eq!(rebuilt, tree);
        let paths: Vec<&str> = tree.iter().map(|(_, p)| p).collect();
        assert_eq!(paths.len(), 3);
        assert!(paths.contains(&"a/b"), "{paths:?}");
    }

    #[test]
    fn scan_rejects_a_plain_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            CgroupTree::scan(dir.path()),
            Err(CgroupError::NotCgroup2 { .. })
        ));
    }
}
