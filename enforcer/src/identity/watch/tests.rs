use std::{fs, time::Duration};

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("runtime")
}

/// A plain directory that `CgroupTree::scan` takes for a cgroup root.
fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("cgroup.procs"), "").expect("cgroup.procs");
    dir
}

fn started(root: &Path) -> CgroupWatcher {
    let mut watcher = CgroupWatcher::new(root).expect("watch");
    watcher.watch_tree(&CgroupTree::scan(root).expect("scan"));
    watcher
}

/// Applies events until none came for a while; whether any changed the tree.
async fn settle(watcher: &mut CgroupWatcher) -> bool {
    let mut changed = false;
    while let Ok(result) = tokio::time::timeout(Duration::from_millis(300), watcher.changed()).await
    {
        changed |= result.expect("read events");
    }
    changed
}

fn assert_matches_scan(watcher: &CgroupWatcher, root: &Path) {
    let scanned = CgroupTree::scan(root).expect("scan");
    assert_eq!(watcher.tree(), scanned);
    assert_eq!(watcher.len(), scanned.len(), "one watch per directory");
    assert!(watcher.retired.is_empty(), "{:?}", watcher.retired);
    assert!(!watcher.resync_needed);
}

#[test]
fn a_plain_directory_can_be_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let mut watcher = CgroupWatcher::new(dir.path()).expect("watch");
        fs::create_dir(dir.path().join("child")).expect("mkdir");
        let changed = tokio::time::timeout(Duration::from_secs(2), watcher.changed())
            .await
            .expect("an event within 2 s")
            .expect("read events");
        assert!(changed);
        let paths: Vec<String> = watcher.tree().iter().map(|(_, p)| p.to_owned()).collect();
        assert_eq!(paths.len(), 2);
        assert!(paths.contains(&"child".to_owned()), "{paths:?}");
    });
}

#[test]
fn creates_and_removals_match_a_scan() {
    let dir = root();
    let root = dir.path();
    runtime().block_on(async {
        let mut watcher = started(root);
        for path in ["a/b", "a/c", "a-b", "d"] {
            fs::create_dir_all(root.join(path)).expect("mkdir");
        }
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);

        fs::remove_dir(root.join("a/b")).expect("rmdir");
        fs::write(root.join("a/c/memory.max"), "max").expect("a file is no cgroup");
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);

        // A removal takes exactly its subtree: `a-b` sorts between `a` and `a/c`.
        fs::remove_dir_all(root.join("a")).expect("rm -r");
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);
        assert!(watcher.tree().iter().any(|(_, p)| p == "a-b"));

        // Nothing changed since: nothing to publish, nothing for a resync to find.
        fs::write(root.join("d/cgroup.events"), "").expect("a file is no cgroup");
        assert!(!settle(&mut watcher).await);
        assert!(!watcher.resync().expect("resync"));
    });
}

#[test]
fn mkdir_p_outruns_no_watcher() {
    let dir = root();
    let root = dir.path().to_owned();
    runtime().block_on(async {
        let mut watcher = started(&root);
        // Made before the watcher reads a single event: each new top directory already
        // holds the rest of its chain, which no watch saw being made.
        for n in 0..20 {
            fs::create_dir_all(root.join(format!("p{n}/a/b/c/d"))).expect("mkdir -p");
        }
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, &root);

        // And while it reads them: every interleaving of watch, read and mkdir.
        let maker = {
            let root = root.clone();
            std::thread::spawn(move || {
                for n in 0..200 {
                    fs::create_dir_all(root.join(format!("q{}/x{n}/y/z", n % 7)))
                        .expect("mkdir -p");
                }
            })
        };
        while !maker.is_finished() {
            let _ = tokio::time::timeout(Duration::from_millis(1), watcher.changed()).await;
        }
        maker.join().expect("maker");
        settle(&mut watcher).await;
        assert_matches_scan(&watcher, &root);
    });
}

#[test]
fn moves_in_out_and_within_match_a_scan() {
    let dir = root();
    let root = dir.path();
    let outside = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let mut watcher = started(root);
        fs::create_dir_all(root.join("x/y/z")).expect("mkdir");
        fs::create_dir(root.join("a")).expect("mkdir");
        settle(&mut watcher).await;

        fs::rename(root.join("x"), root.join("a/x2")).expect("move within");
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);

        fs::rename(root.join("a/x2"), outside.path().join("x2")).expect("move out");
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);
        // What happens to it out there is none of the watcher's business.
        fs::create_dir(outside.path().join("x2/y/new")).expect("mkdir outside");
        assert!(!settle(&mut watcher).await);

        fs::rename(outside.path().join("x2"), root.join("back")).expect("move in");
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);
        assert!(watcher.tree().iter().any(|(_, p)| p == "back/y/new"));

        // Moved over an empty directory, which it replaces.
        fs::create_dir(root.join("a/empty")).expect("mkdir");
        settle(&mut watcher).await;
        fs::rename(root.join("back"), root.join("a/empty")).expect("move over");
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);
    });
}

#[test]
fn the_startup_tree_is_read_again_once_watched() {
    let dir = root();
    let root = dir.path();
    runtime().block_on(async {
        let before = CgroupTree::scan(root).expect("scan");
        // Made between the startup scan and the watches.
        fs::create_dir_all(root.join("late/child")).expect("mkdir");
        let mut watcher = CgroupWatcher::new(root).expect("watch");
        watcher.watch_tree(&before);
        let changed = tokio::time::timeout(Duration::from_millis(10), watcher.changed())
            .await
            .expect("reported at once")
            .expect("no error");
        assert!(changed);
        assert_matches_scan(&watcher, root);
    });
}

#[test]
fn a_lost_event_or_an_unknown_watch_is_repaired_by_a_resync() {
    let dir = root();
    let root = dir.path();
    runtime().block_on(async {
        let mut watcher = started(root);
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        settle(&mut watcher).await;

        // As if the creation of a/b had been lost.
        watcher.remove_subtree("a/b");
        settle(&mut watcher).await;
        assert!(watcher.resync().expect("resync"));
        assert_matches_scan(&watcher, root);

        // An event on a descriptor the watcher does not know.
        let wd = watcher
            .dirs
            .get("a")
            .and_then(|dir| dir.wd)
            .expect("watched");
        watcher.by_wd.remove(&wd);
        fs::create_dir(root.join("a/c")).expect("mkdir");
        assert!(settle(&mut watcher).await);
        assert_matches_scan(&watcher, root);
    });
}
