//! Cgroup creation and removal, as inotify events on every directory of the managed subtree, so
//! that a new cgroup is labelled as soon as it appears rather than at the next poll. Until then
//! the kernel holds it fail-closed where inheriting could be too broad (see `hold`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::{Interest, unix::AsyncFd};

use super::CgroupTree;

/// Errors watching the cgroup tree.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("creating an inotify instance")]
    Init(#[source] io::Error),
    #[error("watching {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading inotify events")]
    Read(#[source] io::Error),
}

/// The inotify instance, as tokio's reactor registers it (the policy directory watcher uses it
/// too).
pub(crate) struct InotifyFd(pub(crate) Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches every directory below a cgroup root for subdirectories coming and going.
pub struct CgroupWatcher {
    root: PathBuf,
    inotify: AsyncFd<InotifyFd>,
    watched: BTreeMap<PathBuf, WatchDescriptor>,
}

impl std::fmt::Debug for CgroupWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupWatcher")
            .field("root", &self.root)
            .field("watched", &self.watched.len())
            .finish_non_exhaustive()
    }
}

const FLAGS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_ONLYDIR);

impl CgroupWatcher {
    /// Starts watching `root`; call [`CgroupWatcher::watch_tree`] with each scan so that new
    /// directories are watched too.
    ///
    /// # Errors
    /// When inotify cannot be set up on the root.
    pub fn new(root: &Path) -> Result<Self, WatchError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|errno| WatchError::Init(errno.into()))?;
        // SAFETY: `InotifyFd` owns the descriptor, which stays open and unchanged until the
        // AsyncFd (which owns it) is dropped.
        let inotify =
            unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
                .map_err(|error| WatchError::Init(error.into_parts().1))?;
        let mut watcher = Self {
            root: root.to_owned(),
            inotify,
            watched: BTreeMap::new(),
        };
        watcher.add(root.to_owned())?;
        Ok(watcher)
    }

    fn add(&mut self, path: PathBuf) -> Result<(), WatchError> {
        let descriptor = self
            .inotify
            .get_ref()
            .0
            .add_watch(&path, FLAGS)
            .map_err(|errno| WatchError::Watch {
                path: path.clone(),
                source: errno.into(),
            })?;
        self.watched.insert(path, descriptor);
        Ok(())
    }

    /// Watches every directory of `tree` not watched yet and forgets the ones gone (the kernel
    /// drops their watches itself). A directory that vanished in between is skipped.
    pub fn watch_tree(&mut self, tree: &CgroupTree) {
        let present: BTreeSet<PathBuf> = tree
            .iter()
            .map(|(_, rel)| {
                if rel.is_empty() {
                    self.root.clone()
                } else {
                    self.root.join(rel)
                }
            })
            .collect();
        self.watched.retain(|path, _| present.contains(path));
        for path in present {
            if !self.watched.contains_key(&path) {
                // Gone already, or not a directory any more: nothing to watch.
                let _ = self.add(path);
            }
        }
    }

    /// How many directories are watched.
    #[must_use]
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether nothing is watched (the root itself is gone).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Waits until a directory was created, removed or moved below the root (or the event queue
    /// overflowed, which means the same: scan again).
    ///
    /// # Errors
    /// When the inotify descriptor cannot be read.
    pub async fn changed(&mut self) -> Result<(), WatchError> {
        loop {
            let mut guard = self.inotify.readable().await.map_err(WatchError::Read)?;
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(errno) => return Err(WatchError::Read(errno.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_can_be_watched() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        runtime.block_on(async {
            let mut watcher = CgroupWatcher::new(dir.path()).expect("watch");
            std::fs::create_dir(dir.path().join("child")).expect("mkdir");
            tokio::time::timeout(std::time::Duration::from_secs(2), watcher.changed())
                .await
                .expect("an event within 2 s")
                .expect("read events");
        });
    }
}
