//! The tasks around the reconciler: watchers that turn kernel and filesystem changes into its
//! inputs, signals, and the control socket. Each keeps going through errors (logged, retried
//! after a pause) until the cancellation token fires: a watcher that gave up would leave
//! enforcement silently stale.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{
    reconciler::{Command, Origin},
    watch_policy::PolicyWatcher,
};
use crate::{
    control::{Handler, Request, Response},
    host::AddressWatcher,
    identity::{CgroupTree, CgroupWatcher},
};

/// A full rescan however quiet inotify is: a safety net for a lost or overflowed event queue.
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// The pause before a failed watcher tries again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How long a control request may wait for the reconciler.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// Rescans the cgroup tree on inotify events (and every [`RESCAN_INTERVAL`]) and publishes it
/// when it changed. The scan happens here, not in the reconciler, so a burst of cgroup churn
/// costs the reconciler one relabel of the latest tree.
pub async fn watch_cgroups(
    root: PathBuf,
    mut watcher: CgroupWatcher,
    trees: watch::Sender<Arc<CgroupTree>>,
    cancel: CancellationToken,
) {
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            changed = watcher.changed() => {
                if let Err(error) = changed {
                    error!(%error, "watching cgroups failed; the periodic rescan continues");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            _ = rescan.tick() => {}
        }
        match CgroupTree::scan(&root) {
            Ok(tree) => {
                watcher.watch_tree(&tree);
                trees.send_if_modified(|current| {
                    let modified = **current != tree;
                    if modified {
                        *current = Arc::new(tree);
                    }
                    modified
                });
            }
            // The root vanished or is unreadable: keep the labels we have (still enforcing).
            Err(error) => error!(%error, "rescanning cgroups failed"),
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
