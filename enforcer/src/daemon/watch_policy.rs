//! Telling the daemon that the policy directory may have changed, however the change was made.
//!
//! Three ways of updating a directory matter, and each shows up somewhere else:
//!
//! - **Plain edits** (editors writing a temporary file and renaming it, `cp` truncating and
//!   writing, `chmod`) are events in the directory holding the file, or a subdirectory the loader
//!   walks into.
//! - **Kubernetes ConfigMap volumes** keep the real files in a timestamped hidden directory, point
//!   `..data` at it and expose `a.toml -> ..data/a.toml`; an update renames a fresh `..data_tmp`
//!   link over `..data`, which is an event in the watched directory itself.
//! - **git-sync** swaps the configured path itself, a symlink, by renaming a new link over it. The
//!   directory the old link pointed to sees nothing, so each ancestor of the configured path is
//!   watched for the one entry leading to it, and every wake-up re-resolves the path.
//!
//! Files reached through a symlink are also watched where the link points, since a write to
//! the target is reported only in the directory that holds it.
//!
//! The daemon reloads on every wake-up and compares the content hash itself, so a spurious
//! wake-up costs a re-read; a missed change would leave a stale policy enforced. Every choice
//! below errs towards waking up.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use crate::identity::InotifyFd;

/// Errors watching the policy directory.
#[derive(Debug, thiserror::Error)]
pub enum PolicyWatchError {
    #[error("making {path} absolute")]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating an inotify instance")]
    Init {
        #[source]
        source: io::Error,
    },
    #[error("watching {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading inotify events")]
    Read {
        #[source]
        source: io::Error,
    },
}

/// Every watch asks for the same events. `IN_CLOSE_WRITE` rather than `IN_MODIFY`, so that a file
/// is reread once its writer is done rather than halfway through; the `_SELF` events report a
/// watched directory itself going away.
const FLAGS: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// Which events of one watched directory mean the policy may have changed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    /// Everything: a directory the loader reads.
    all: bool,
    /// Only these entries: the next component of the configured path in an ancestor, or link
    /// targets in the directory holding them.
    names: BTreeSet<OsString>,
}

impl Wanted {
    fn everything() -> Self {
        Self {
            all: true,
            names: BTreeSet::new(),
        }
    }

    fn only(name: &OsStr) -> Self {
        Self {
            all: false,
            names: BTreeSet::from([name.to_owned()]),
        }
    }

    /// Two paths can be the same directory (a link and its target), and inotify then hands out
    /// one watch for both: it must want what either wanted.
    fn merge(&mut self, other: Self) {
        self.all |= other.all;
        self.names.extend(other.names);
    }
}

/// Whether an event with `mask` and `name`, on a watch wanting `wanted` (`None`: not one of the
/// current watches), may mean the policy changed.
fn relevant(mask: AddWatchFlags, wanted: Option<&Wanted>, name: Option<&OsStr>) -> bool {
    // Events were lost, any of which may have mattered.
    if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return true;
    }
    let Some(wanted) = wanted else {
        // A watch dropped at the last re-arm: the directory it watched is no longer read.
        return false;
    };
    // The kernel dropped the watch: its directory was deleted or unmounted, so what we watch is
    // no longer what the loader reads.
    if mask.contains(AddWatchFlags::IN_IGNORED) {
        return true;
    }
    wanted.all || name.is_some_and(|name| wanted.names.contains(name))
}

/// Watches a policy directory, its subdirectories, the targets of its links and the ancestors
/// of its path; see the module docs for why each.
///
/// Create it before the policy is first loaded: a change between the load and the first watch
/// would otherwise go unseen.
pub struct PolicyWatcher {
    /// The configured path, absolute but with symlinks unresolved: they are what gets swapped.
    dir: PathBuf,
    debounce: Duration,
    inotify: AsyncFd<InotifyFd>,
    watches: BTreeMap<WatchDescriptor, Wanted>,
    /// A relevant event was read and not yet reported: kept across a cancelled
    /// [`PolicyWatcher::changed`] so the change is reported by the next call.
    pending: bool,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("dir", &self.dir)
            .field("debounce", &self.debounce)
            .field("watches", &self.watches.len())
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl PolicyWatcher {
    /// Starts watching `dir`. A missing `dir` is not an error (loading it will say so): its
    /// ancestors are watched, so its appearance is a change.
    ///
    /// # Errors
    /// When inotify cannot be set up, or a directory that exists cannot be watched (for example
    /// `fs.inotify.max_user_watches` is exhausted).
    ///
    /// # Panics
    /// Outside a tokio runtime (the descriptor registers with its reactor).
    pub fn new(dir: &Path, debounce: Duration) -> Result<Self, PolicyWatchError> {
        let dir = std::path::absolute(dir).map_err(|source| PolicyWatchError::Resolve {
            path: dir.to_owned(),
            source,
        })?;
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|errno| {
                PolicyWatchError::Init {
                    source: errno.into(),
                }
            })?;
        // SAFETY: `InotifyFd` owns the descriptor, which stays open and unchanged until the
        // AsyncFd (which owns it) is dropped.
        let inotify =
            unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
                .map_err(|error| PolicyWatchError::Init {
                    source: error.into_parts().1,
                })?;
        let mut watcher = Self {
            dir,
            debounce,
            inotify,
            watches: BTreeMap::new(),
            pending: false,
        };
        watcher.arm()?;
        Ok(watcher)
    }

    /// Waits until the policy may have changed and the directory has then been quiet for the
    /// debounce time, re-arms the watches onto whatever the path now resolves to, and returns.
    ///
    /// Cancellation-safe: a change seen by a call that is dropped is reported by the next one.
    ///
    /// # Errors
    /// When the events cannot be read, or re-arming failed for a directory that exists. The
    /// policy may have changed all the same, and watching is degraded until a later call
    /// re-arms successfully: the caller should reload anyway.
    pub async fn changed(&mut self) -> Result<(), PolicyWatchError> {
        while !self.pending {
            self.read().await?;
        }
        let mut quiet_at = Instant::now() + self.debounce;
        // Only relevant events extend the wait, so churn next to the directory (in an ancestor)
        // cannot postpone a reload forever.
        while let Ok(read) = tokio::time::timeout_at(quiet_at, self.read()).await {
            if read? {
                quiet_at = Instant::now() + self.debounce;
            }
        }
        // No await from here on: the re-arm and clearing `pending` cannot be torn apart by a
        // cancellation.
        let armed = self.arm();
        self.pending = false;
        armed
    }

    /// Reads one batch of events; returns whether any was relevant (and then marks a change
    /// pending). Cancellation-safe: the only await comes before the events are read.
    async fn read(&mut self) -> Result<bool, PolicyWatchError> {
        let events = loop {
            let mut guard = self
                .inotify
                .readable()
                .await
                .map_err(|source| PolicyWatchError::Read { source })?;
            if let Ok(read) =
                guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from))
            {
                break read.map_err(|source| PolicyWatchError::Read { source })?;
            }
        };
        let mut any = false;
        for event in events {
            any |= self.classify(&event);
        }
        self.pending |= any;
        Ok(any)
    }

    fn classify(&mut self, event: &InotifyEvent) -> bool {
        let relevant = relevant(
            event.mask,
            self.watches.get(&event.wd),
            event.name.as_deref(),
        );
        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
            self.watches.remove(&event.wd);
        }
        relevant
    }

    /// Watches what the configured path resolves to now, then drops the watches not needed any
    /// more (after a swap the old directories are different inodes). New watches are added
    /// before old ones go, so a directory watched before and after is never unwatched in
    /// between. Directories that do not exist are skipped; the first other failure is returned
    /// after everything else was armed.
    fn arm(&mut self) -> Result<(), PolicyWatchError> {
        let mut plan: BTreeMap<PathBuf, Wanted> = BTreeMap::new();
        let mut child = self.dir.as_path();
        for ancestor in self.dir.ancestors().skip(1) {
            if let Some(name) = child.file_name() {
                plan.entry(ancestor.to_owned())
                    .or_default()
                    .merge(Wanted::only(name));
            }
            child = ancestor;
        }
        plan_tree(&self.dir, &mut BTreeSet::new(), &mut plan);

        let inotify = &self.inotify.get_ref().0;
        let mut watches: BTreeMap<WatchDescriptor, Wanted> = BTreeMap::new();
        let mut failed = None;
        for (path, wanted) in plan {
            match inotify.add_watch(&path, FLAGS) {
                Ok(descriptor) => watches.entry(descriptor).or_default().merge(wanted),
                // Gone, or not a directory any more: the reload reports it, and the watches on
                // its ancestors see it come back.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
                Err(errno) => {
                    failed.get_or_insert(PolicyWatchError::Watch {
                        path,
                        source: errno.into(),
                    });
                }
            }
        }
        for stale in self.watches.keys().filter(|wd| !watches.contains_key(wd)) {
            // EINVAL when the kernel dropped it already (its directory was deleted).
            let _ = inotify.rm_watch(*stale);
        }
        self.watches = watches;
        failed.map_or(Ok(()), Err)
    }
}

/// Adds to `plan` every directory the loader would read below `dir` (following links, skipping
/// hidden entries, like `policy::load_dir`), and for each linked `*.toml` file the directory
/// holding its target. `seen` holds canonical paths, so a directory reached twice or through a
/// link loop is planned once.
fn plan_tree(dir: &Path, seen: &mut BTreeSet<PathBuf>, plan: &mut BTreeMap<PathBuf, Wanted>) {
    let Ok(canonical) = fs::canonicalize(dir) else {
        return;
    };
    if !seen.insert(canonical) {
        return;
    }
    plan.entry(dir.to_owned())
        .or_default()
        .merge(Wanted::everything());
    // Unreadable: the reload reports it; the watch above still sees it change.
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        // Dangling links and vanished entries are skipped: this directory's watch sees them
        // being fixed.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let linked = entry.file_type().is_ok_and(|kind| kind.is_symlink());
        let is_toml = Path::new(&name)
            .extension()
            .is_some_and(|ext| ext == "toml");
        if meta.is_dir() {
            plan_tree(&path, seen, plan);
        } else if linked
            && is_toml
            && let Ok(target) = fs::canonicalize(&path)
            && let (Some(parent), Some(file)) = (target.parent(), target.file_name())
        {
            plan.entry(parent.to_owned())
                .or_default()
                .merge(Wanted::only(file));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd as _, unix::fs::symlink};

    use super::*;

    /// Long enough for a burst of writes to fall inside, short enough to keep the tests quick.
    const DEBOUNCE: Duration = Duration::from_millis(200);

    /// How long a change may take to be reported.
    const SEEN_WITHIN: Duration = Duration::from_secs(3);

    /// How long we wait to be sure nothing more is reported: several debounce periods.
    const QUIET_FOR: Duration = Duration::from_millis(800);

    async fn seen(watcher: &mut PolicyWatcher, what: &str) {
        tokio::time::timeout(SEEN_WITHIN, watcher.changed())
            .await
            .unwrap_or_else(|_| panic!("{what}: no wake-up within {SEEN_WITHIN:?}"))
            .expect("read events");
    }

    async fn quiet(watcher: &mut PolicyWatcher, what: &str) {
        let woke = tokio::time::timeout(QUIET_FOR, watcher.changed()).await;
        assert!(woke.is_err(), "{what}: unexpected wake-up");
    }

    /// The watches the kernel holds for this instance, as `/proc` lists them: one line each.
    fn kernel_watches(watcher: &PolicyWatcher) -> usize {
        let fd = watcher.inotify.as_raw_fd();
        fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .expect("fdinfo")
            .lines()
            .filter(|line| line.starts_with("inotify wd:"))
            .count()
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
    }

    #[tokio::test]
    async fn a_file_write_is_seen() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("policies");
        fs::create_dir(&dir).expect("mkdir");
        write(&dir.join("a.toml"), "one");
        let mut watcher = PolicyWatcher::new(&dir, DEBOUNCE).expect("watch");
        quiet(&mut watcher, "before any change").await;

        write(&dir.join("a.toml"), "two");
        seen(&mut watcher, "rewriting a.toml").await;

        // An editor's save: write a temporary file, rename it over the original.
        write(&dir.join(".a.toml.tmp"), "three");
        fs::rename(dir.join(".a.toml.tmp"), dir.join("a.toml")).expect("rename");
        seen(&mut watcher, "renaming over a.toml").await;

        fs::remove_file(dir.join("a.toml")).expect("rm");
        seen(&mut watcher, "removing a.toml").await;
    }

    #[tokio::test]
    async fn a_burst_of_writes_is_one_wake_up() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().to_owned();
        let mut watcher = PolicyWatcher::new(&dir, DEBOUNCE).expect("watch");
        let writer = tokio::spawn(async move {
            for i in 0..20 {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                write(&dir.join(format!("{i}.toml")), "x");
            }
            Instant::now()
        });
        seen(&mut watcher, "the burst").await;
        let returned = Instant::now();
        let last_write = writer.await.expect("writer");
        assert!(
            returned >= last_write + DEBOUNCE,
            "reported {:?} after the last write, before the burst was quiet for {DEBOUNCE:?}",
            returned.saturating_duration_since(last_write)
        );
        quiet(&mut watcher, "after the burst").await;
    }

    #[tokio::test]
    async fn a_change_survives_a_cancelled_wait() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut watcher = PolicyWatcher::new(root.path(), DEBOUNCE).expect("watch");
        write(&root.path().join("a.toml"), "x");
        // Dropped mid-debounce, as a `select!` with a faster branch does.
        let cancelled = tokio::time::timeout(DEBOUNCE / 4, watcher.changed()).await;
        assert!(cancelled.is_err(), "the debounce cannot have passed yet");
        seen(&mut watcher, "the change read by the cancelled call").await;
    }

    #[tokio::test]
    async fn edits_in_subdirectories_are_seen() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path();
        fs::create_dir(dir.join("team")).expect("mkdir");
        let mut watcher = PolicyWatcher::new(dir, DEBOUNCE).expect("watch");

        write(&dir.join("team/a.toml"), "x");
        seen(&mut watcher, "a write in an existing subdirectory").await;

        fs::create_dir_all(dir.join("new/deeper")).expect("mkdir");
        seen(&mut watcher, "creating a subdirectory").await;
        write(&dir.join("new/deeper/b.toml"), "x");
        seen(&mut watcher, "a write in the new subdirectory").await;
    }

    #[tokio::test]
    async fn a_config_map_swap_is_seen() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path();
        let old = dir.join("..2026_12_01_10_00_00.123");
        fs::create_dir(&old).expect("mkdir");
        write(&old.join("a.toml"), "one");
        symlink("..2026_12_01_10_00_00.123", dir.join("..data")).expect("symlink");
        symlink("..data/a.toml", dir.join("a.toml")).expect("symlink");
        let mut watcher = PolicyWatcher::new(dir, DEBOUNCE).expect("watch");

        // What the kubelet does: new timestamped directory, new link renamed over `..data`, old
        // directory removed.
        let new = dir.join("..2026_12_01_10_05_00.456");
        fs::create_dir(&new).expect("mkdir");
        write(&new.join("a.toml"), "two");
        symlink("..2026_12_01_10_05_00.456", dir.join("..data_tmp")).expect("symlink");
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("rename");
        fs::remove_dir_all(&old).expect("rm");
        seen(&mut watcher, "the ..data swap").await;
        assert_eq!(fs::read_to_string(dir.join("a.toml")).expect("read"), "two");

        // Edited in place where the link points: only the target's directory hears of it.
        write(&new.join("a.toml"), "three");
        seen(&mut watcher, "an in-place edit of the linked file").await;
    }

    #[tokio::test]
    async fn a_git_sync_swap_is_seen_and_followed() {
        let root = tempfile::tempdir().expect("tempdir");
        let root = root.path();
        let old = root.join(".worktrees/abc123");
        let new = root.join(".worktrees/def456");
        for worktree in [&old, &new] {
            fs::create_dir_all(worktree).expect("mkdir");
            write(&worktree.join("a.toml"), "x");
        }
        let dir = root.join("policies");
        symlink(".worktrees/abc123", &dir).expect("symlink");
        let mut watcher = PolicyWatcher::new(&dir, DEBOUNCE).expect("watch");

        // git-sync: a new link, renamed over the configured path.
        symlink(".worktrees/def456", root.join("tmp-link")).expect("symlink");
        fs::rename(root.join("tmp-link"), &dir).expect("rename");
        seen(&mut watcher, "swapping the directory link").await;
        assert_eq!(
            kernel_watches(&watcher),
            watcher.watches.len(),
            "the old worktree's watch is removed from the kernel too"
        );

        write(&new.join("b.toml"), "x");
        seen(&mut watcher, "a write in the new worktree").await;

        // The old worktree is no longer read: its watch was dropped.
        write(&old.join("b.toml"), "x");
        quiet(&mut watcher, "a write in the old worktree").await;
    }

    #[tokio::test]
    async fn a_missing_directory_is_watched_for() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("not/yet");
        let mut watcher = PolicyWatcher::new(&dir, DEBOUNCE).expect("watch");

        fs::create_dir_all(&dir).expect("mkdir");
        seen(&mut watcher, "the directory appearing").await;
        write(&dir.join("a.toml"), "x");
        seen(&mut watcher, "a write in it").await;

        fs::remove_dir_all(root.path().join("not")).expect("rm");
        seen(&mut watcher, "the directory vanishing").await;
        fs::create_dir_all(&dir).expect("mkdir");
        seen(&mut watcher, "the directory coming back").await;
    }

    #[tokio::test]
    async fn neighbours_of_the_directory_are_ignored() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("policies");
        fs::create_dir(&dir).expect("mkdir");
        let mut watcher = PolicyWatcher::new(&dir, DEBOUNCE).expect("watch");
        write(&root.path().join("unrelated.toml"), "x");
        quiet(&mut watcher, "a file next to the directory").await;
    }

    #[test]
    fn relevance() {
        let all = Wanted::everything();
        let named = Wanted::only(OsStr::new("policies"));
        let overflow = AddWatchFlags::IN_Q_OVERFLOW;
        let create = AddWatchFlags::IN_CREATE;
        assert!(relevant(overflow, None, None), "an overflow is a change");
        assert!(
            !relevant(create, None, Some(OsStr::new("a.toml"))),
            "a stale watch"
        );
        assert!(relevant(create, Some(&all), Some(OsStr::new("..data"))));
        assert!(relevant(AddWatchFlags::IN_DELETE_SELF, Some(&all), None));
        assert!(relevant(create, Some(&named), Some(OsStr::new("policies"))));
        assert!(!relevant(create, Some(&named), Some(OsStr::new("other"))));
        assert!(relevant(AddWatchFlags::IN_IGNORED, Some(&named), None));
        assert!(!relevant(AddWatchFlags::IN_IGNORED, None, None));
    }
}
