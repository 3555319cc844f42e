//! The tasks around the reconciler: watchers that turn kernel and filesystem changes into its
//! inputs, signals, and the control socket. Each keeps going through errors (logged, retried
//! after a pause) until the cancellation token fires: a watcher that gave up would leave
//! enforcement silently stale.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    reconciler::{Command, Origin},
    watch_policy::PolicyWatcher,
};
use crate::{
    control::{Handler, Request, Response},
    host::AddressWatcher,
    identity::{CgroupTree, CgroupWatcher},
};

/// A full rescan however quiet inotify is: a safety net for an event the kernel lost or the
/// watcher misread. Events are applied one by one and an overflowed queue already triggers a
/// rescan, so this is rare insurance; with 10 000 cgroups a rescan costs tens of milliseconds,
/// too much to spend every few seconds on an idle node.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// The next rescan after one failed, while the root's own watch is gone (the root was removed
/// or replaced), or while some directory could not be watched (inotify's watch limit): soon
/// enough to pick a recreated root or a new cgroup up again, rare enough not to flood the log.
const RESYNC_RETRY: Duration = Duration::from_secs(30);

/// The pause before a failed watcher tries again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How long a control request may wait for the reconciler.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// Keeps the cgroup tree from inotify events (and a rescan every [`RESYNC_INTERVAL`]) and
/// publishes it when it changed. The tree is kept here, not in the reconciler, so a burst of
/// cgroup churn costs the reconciler one relabel of the latest tree.
pub async fn watch_cgroups(
    root: PathBuf,
    mut watcher: CgroupWatcher,
    trees: watch::Sender<Arc<CgroupTree>>,
    cancel: CancellationToken,
) {
    let mut next_resync = Instant::now() + RESYNC_INTERVAL;
    loop {
        let changed = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            changed = watcher.changed() => match changed {
                Ok(changed) => changed,
                Err(error) => {
                    error!(%error, cgroup_root = %root.display(), "watching cgroups failed; rescanning");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    next_resync = Instant::now();
                    false
                }
            },
            () = tokio::time::sleep_until(next_resync) => false,
        };
        let mut resynced = false;
        if Instant::now() >= next_resync {
            match watcher.resync() {
                Ok(differs) => {
                    if differs {
                        warn!(cgroup_root = %root.display(), "the cgroup rescan found changes the events had missed");
                    }
                    resynced = differs;
                    next_resync = Instant::now()
                        + if watcher.is_empty() || watcher.has_unwatched() {
                            RESYNC_RETRY
                        } else {
                            RESYNC_INTERVAL
                        };
                }
                // The root vanished or is unreadable: keep the labels we have (still enforcing).
                Err(error) => {
                    error!(%error, "rescanning cgroups failed");
                    next_resync = Instant::now() + RESYNC_RETRY;
                }
            }
        }
        if changed || resynced {
            let tree = watcher.tree();
            trees.send_if_modified(|current| {
                let modified = **current != tree;
                if modified {
                    *current = Arc::new(tree);
                }
                modified
            });
        }
    }
}

/// Publishes the node's local addresses as netlink reports them.
pub async fn watch_addresses(
    mut watcher: AddressWatcher,
    addresses: watch::Sender<BTreeSet<IpAddr>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = watcher.changed() => match changed {
                Ok(addrs) => { addresses.send_replace(addrs); }
                Err(error) => {
                    error!(%error, "watching the node's addresses failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            },
        }
    }
}

/// Asks for a reload whenever the policy directory changed (after it has been quiet for the
/// debounce time).
pub async fn watch_policy(
    mut watcher: PolicyWatcher,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = watcher.changed() => {
                // A failed watch may have missed a change: reload anyway (an unchanged policy is
                // not applied again).
                if let Err(error) = changed {
                    error!(%error, "watching the policy directory failed; reloading in case a change was missed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                let command = Command::Reload { origin: Origin::Directory, reply: None };
                if commands.send(command).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// SIGHUP reloads; SIGTERM and SIGINT stop the daemon.
///
/// # Errors
/// When the handlers cannot be installed.
pub fn signals(
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) -> std::io::Result<impl Future<Output = ()>> {
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    Ok(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); cancel.cancel(); return; }
                _ = sigint.recv() => { info!("SIGINT: stopping"); cancel.cancel(); return; }
                _ = sighup.recv() => {
                    info!("SIGHUP: reloading the policy");
                    let command = Command::Reload { origin: Origin::Sighup, reply: None };
                    if commands.send(command).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Control requests, forwarded to the reconciler.
pub struct ControlHandler {
    pub commands: mpsc::Sender<Command>,
}

impl Handler for ControlHandler {
    async fn handle(&self, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        let command = match request {
            Request::Reload => Command::Reload {
                origin: Origin::Control,
                reply: Some(reply),
            },
            Request::Rollback => Command::Rollback { reply },
            Request::Reconcile => Command::Reconcile { reply },
            Request::Status => Command::Status { reply },
        };
        if self.commands.send(command).await.is_err() {
            return Response::failed("the daemon is stopping", serde_json::Value::Null);
        }
        match tokio::time::timeout(CONTROL_TIMEOUT, answer).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => Response::failed("the daemon is stopping", serde_json::Value::Null),
            Err(_) => {
                Response::failed("the daemon did not answer in time", serde_json::Value::Null)
            }
        }
    }
}
