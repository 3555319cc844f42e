//! Cgroup creation and removal, as inotify events on every directory of the managed subtree, so
//! that a new cgroup is labelled as soon as it appears rather than at the next poll. Until then
//! the kernel holds it fail-closed where inheriting could be too broad (see `hold`).
//!
//! Each event is applied to the tree the watcher keeps, touching only the directory it names
//! (and the subtree below it): with 10 000 cgroups, rescanning the whole tree on every event
//! was most of the daemon's idle time and most of the delay before a new cgroup was labelled.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd, RawFd},
        unix::fs::{DirEntryExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
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

/// One directory of the tree.
#[derive(Debug)]
struct Dir {
    /// The cgroup id (the inode number).
    id: u64,
    /// The absolute path: the relative key is lossy UTF-8, which a non-UTF-8 name cannot be
    /// rebuilt from.
    path: PathBuf,
    /// `None` once the kernel dropped the watch (`IN_IGNORED`) or it could not be added.
    wd: Option<WatchDescriptor>,
}

/// Watches every directory below a cgroup root and keeps the tree up to date from the events.
pub struct CgroupWatcher {
    root: PathBuf,
    inotify: AsyncFd<InotifyFd>,
    /// Every directory by path relative to the root (`""` for the root): an event names its
    /// parent's watch and a name, and a removal takes a whole subtree, a contiguous key range.
    dirs: BTreeMap<String, Dir>,
    /// Watch descriptor → relative path of the directory it watches.
    by_wd: HashMap<WatchDescriptor, String>,
    /// Watches removed here whose `IN_IGNORED` has not been read yet: events still queued for
    /// them describe a directory that left the tree (or was watched again under a new
    /// descriptor and read afresh), so they are ignored rather than taken for a lost event.
    retired: HashSet<WatchDescriptor>,
    /// An event was lost or made no sense: rescan everything before trusting the tree.
    resync_needed: bool,
    /// The tree changed since [`CgroupWatcher::changed`] last said so.
    dirty: bool,
    /// Some directory could not be watched (`fs.inotify.max_user_watches` exhausted, say): it
    /// is in the tree, but what is made below it is only seen by a rescan.
    unwatched: bool,
}

impl std::fmt::Debug for CgroupWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupWatcher")
            .field("root", &self.root)
            .field("dirs", &self.dirs.len())
            .field("watched", &self.by_wd.len())
            .finish_non_exhaustive()
    }
}

const FLAGS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_ONLYDIR);

fn child_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

impl CgroupWatcher {
    /// Starts watching `root`; call [`CgroupWatcher::watch_tree`] once with the tree scanned at
    /// startup to watch everything below it.
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
            dirs: BTreeMap::new(),
            by_wd: HashMap::new(),
            retired: HashSet::new(),
            resync_needed: false,
            dirty: false,
            unwatched: false,
        };
        let wd = watcher.add_watch(root)?;
        let id = fs::metadata(root)
            .map_err(|source| WatchError::Watch {
                path: root.to_owned(),
                source,
            })?
            .ino();
        watcher.by_wd.insert(wd, String::new());
        watcher.dirs.insert(
            String::new(),
            Dir {
                id,
                path: root.to_owned(),
                wd: Some(wd),
            },
        );
        Ok(watcher)
    }

    fn add_watch(&self, path: &Path) -> Result<WatchDescriptor, WatchError> {
        self.inotify
            .get_ref()
            .0
            .add_watch(path, FLAGS)
            .map_err(|errno| WatchError::Watch {
                path: path.to_owned(),
                source: errno.into(),
            })
    }

    /// Watches every directory below the root, starting from `tree` (scanned before the watches
    /// existed). The directories are read again once watched, so that none made in between is
    /// missed: when that finds a difference, the next [`CgroupWatcher::changed`] reports it at
    /// once.
    pub fn watch_tree(&mut self, tree: &CgroupTree) {
        let changed = match self.rescan() {
            Ok(_) => self.tree() != *tree,
            // The next event or the periodic resync tries again; until then the startup tree
            // stands.
            Err(_) => {
                self.resync_needed = true;
                false
            }
        };
        self.dirty = changed;
    }

    /// The tree as the events built it: cgroup id → path relative to the root.
    #[must_use]
    pub fn tree(&self) -> CgroupTree {
        self.dirs
            .iter()
            .map(|(rel, dir)| (dir.id, rel.clone()))
            .collect()
    }

    /// How many directories are watched.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_wd.len()
    }

    /// Whether some directory of the tree could not be watched, so that only a rescan sees
    /// what is made below it.
    #[must_use]
    pub const fn has_unwatched(&self) -> bool {
        self.unwatched
    }

    /// Whether nothing is watched (the root itself is gone).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_wd.is_empty()
    }

    /// Waits until a directory was created, removed or moved below the root, applies every
    /// event queued by then (a burst of churn is one change), and returns whether the tree
    /// changed; [`CgroupWatcher::tree`] has the result. A lost event (queue overflow) or one
    /// that makes no sense costs a full rescan.
    ///
    /// Cancel-safe: events are applied between awaits, never across one.
    ///
    /// # Errors
    /// When the inotify descriptor cannot be read, or a rescan cannot read the root.
    pub async fn changed(&mut self) -> Result<bool, WatchError> {
        loop {
            if std::mem::take(&mut self.resync_needed) {
                self.rescan()?;
            }
            if std::mem::take(&mut self.dirty) {
                return Ok(true);
            }
            let events = self.read_queued().await?;
            for event in events {
                self.apply(&event);
            }
        }
    }

    /// Everything queued once the descriptor is readable (at least one event).
    async fn read_queued(&self) -> Result<Vec<InotifyEvent>, WatchError> {
        let mut events = Vec::new();
        loop {
            let mut guard = self.inotify.readable().await.map_err(WatchError::Read)?;
            loop {
                match guard.get_inner().0.read_events() {
                    Ok(batch) if !batch.is_empty() => events.extend(batch),
                    Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(errno) => return Err(WatchError::Read(errno.into())),
                }
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    fn apply(&mut self, event: &InotifyEvent) {
        if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            self.resync_needed = true;
            return;
        }
        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
            // The watch is gone (its directory was removed, or we removed the watch); the
            // directory's own removal arrives, or arrived, on its parent's watch.
            if !self.retired.remove(&event.wd)
                && let Some(rel) = self.by_wd.remove(&event.wd)
                && let Some(dir) = self.dirs.get_mut(&rel)
            {
                dir.wd = None;
            }
            return;
        }
        if self.retired.contains(&event.wd) {
            return;
        }
        let Some(parent) = self.by_wd.get(&event.wd) else {
            self.resync_needed = true;
            return;
        };
        // Only directories are cgroups (interface files come and go with controllers).
        let Some(name) = &event.name else {
            return;
        };
        if !event.mask.contains(AddWatchFlags::IN_ISDIR) {
            return;
        }
        let rel = child_rel(parent, &name.to_string_lossy());
        if event
            .mask
            .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
        {
            self.remove_subtree(&rel);
        } else if event
            .mask
            .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        {
            let Some(parent_path) = self.dirs.get(parent.as_str()).map(|dir| &dir.path) else {
                self.resync_needed = true;
                return;
            };
            let path = parent_path.join(name);
            self.add_new(path, rel);
        }
    }

    /// A directory appeared at `path`: watch and read it and everything below it, unless it is
    /// the directory already known there.
    fn add_new(&mut self, path: PathBuf, rel: String) {
        // Gone already: its removal is queued behind this event.
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        match self.dirs.get(&rel) {
            Some(dir) if dir.id == meta.ino() => return,
            Some(_) => self.remove_subtree(&rel),
            None => {}
        }
        self.add_subtree(path, rel, meta.ino());
    }

    /// Watches the directory at `path`, then reads it, then does the same below: each directory
    /// is watched before it is read, so a child made at any moment (`mkdir -p` outruns any
    /// watcher) is either read here or reported by the watch.
    fn add_subtree(&mut self, path: PathBuf, rel: String, id: u64) {
        let mut pending = vec![(path, rel, id)];
        while let Some((path, rel, id)) = pending.pop() {
            if self.dirs.get(&rel).is_some_and(|dir| dir.id == id) {
                continue;
            }
            let wd = self.add_watch(&path).ok();
            // Gone already, or not a directory any more: its removal is queued.
            let Ok(entries) = fs::read_dir(&path) else {
                continue;
            };
            // Still a cgroup to label, watched or not.
            self.unwatched |= wd.is_none();
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    let child = child_rel(&rel, &entry.file_name().to_string_lossy());
                    pending.push((entry.path(), child, entry.ino()));
                }
            }
            if let Some(wd) = wd {
                // Only a freed descriptor is handed out again: whatever was retired under this
                // number is over, and the watch is live now.
                self.retired.remove(&wd);
                self.by_wd.insert(wd, rel.clone());
            }
            self.dirs.insert(rel, Dir { id, path, wd });
            self.dirty = true;
        }
    }

    /// Forgets the directory at `rel` and everything below it, and their watches.
    fn remove_subtree(&mut self, rel: &str) {
        let below = format!("{rel}/");
        let mut gone: Vec<String> = self
            .dirs
            .range(below.clone()..)
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(&below))
            .cloned()
            .collect();
        gone.push(rel.to_owned());
        for key in gone {
            let Some(dir) = self.dirs.remove(&key) else {
                continue;
            };
            self.dirty = true;
            // The same inode may already be watched at its new place (a move read there
            // before its removal from here was): that watch stays.
            if let Some(wd) = dir.wd
                && self.by_wd.get(&wd) == Some(&key)
            {
                self.by_wd.remove(&wd);
                // Fails when the kernel dropped the watch already; its IN_IGNORED is queued
                // either way.
                let _ = self.inotify.get_ref().0.rm_watch(wd);
                self.retired.insert(wd);
            }
        }
    }

    /// Rescans the whole tree, watching every directory before reading it, and returns whether
    /// the tree changed since [`CgroupWatcher::changed`] last reported it. A safety net for
    /// lost events.
    ///
    /// # Errors
    /// When the root cannot be watched or read: the tree is kept as it was.
    pub fn resync(&mut self) -> Result<bool, WatchError> {
        self.rescan()?;
        Ok(std::mem::take(&mut self.dirty))
    }

    /// The rescan behind [`CgroupWatcher::resync`], also the way back after an overflow; marks
    /// the tree changed when it differed, and says whether it did.
    fn rescan(&mut self) -> Result<bool, WatchError> {
        let root = self.root.clone();
        let root_error = |source: io::Error| WatchError::Watch {
            path: root.clone(),
            source,
        };
        let id = fs::metadata(&root).map_err(root_error)?.ino();
        fs::read_dir(&root).map_err(root_error)?;
        self.add_watch(&root)?;
        let old_dirs = std::mem::take(&mut self.dirs);
        let old_wds = std::mem::take(&mut self.by_wd);
        let dirty = self.dirty;
        self.unwatched = false;
        self.add_subtree(root.clone(), String::new(), id);
        self.dirty = dirty;
        if !self.dirs.contains_key("") {
            // The root vanished between the checks and the walk.
            self.dirs = old_dirs;
            self.by_wd = old_wds;
            return Err(root_error(io::ErrorKind::NotFound.into()));
        }
        for wd in old_wds.keys() {
            if !self.by_wd.contains_key(wd) {
                let _ = self.inotify.get_ref().0.rm_watch(*wd);
                self.retired.insert(*wd);
            }
        }
        let differs = old_dirs.len() != self.dirs.len()
            || old_dirs
                .iter()
                .zip(&self.dirs)
                .any(|((old_rel, old), (rel, new))| old_rel != rel || old.id != new.id);
        self.dirty |= differs;
        Ok(differs)
    }
}

#[cfg(test)]
mod tests;
