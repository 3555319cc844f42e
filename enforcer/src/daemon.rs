//! The daemon: loads the policy, labels cgroups, writes the maps, attaches the programs, then
//! keeps cgroup labels and the node's local addresses current and streams events until SIGINT or
//! SIGTERM.
//!
//! The daemon never judges itself: the kernel exempts its own cgroup by id, it learns routes and
//! addresses over netlink (no inet socket), and each loop turn handles a bounded number of events
//! so signals and relabelling always get their turn.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use enforcer_common::{Runtime, counter};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::MissedTickBehavior,
};
use tracing::{error, info, warn};

use crate::{
    compile::{self, CompileError, CompiledPolicy},
    datapath::{Datapath, DatapathError, LoadOptions, bpf_lsm_active},
    events::{Enricher, FlowNode, PolicyContext, decode, ocsf::Product},
    host::{AddressWatcher, HostError, NetNs, SourceResolver, local_addresses, netns_cookie},
    identity::{
        CgroupError, CgroupTree, CgroupWatcher, Identities, IdentityError, WatchError,
        find_cgroup2_mount,
    },
    policy::{self, Policy, PolicyErrors},
    sinks::{JsonLines, SinkError},
};

/// A full rescan however quiet inotify is: a safety net for a lost or overflowed event queue.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// How often the lost-event counter is checked; a growing count is logged as a warning.
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Events handled per loop turn before signals, relabelling and address changes get a turn.
const EVENTS_PER_TURN: usize = 512;

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTarget {
    Stdout,
    File(PathBuf),
}

/// What `enforcer run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub policy_dir: PathBuf,
    pub node: String,
    /// `None`: the cgroup2 mount point.
    pub cgroup_root: Option<PathBuf>,
    pub events: EventsTarget,
    /// Created once the policy is enforced, for supervisors and tests.
    pub ready_file: Option<PathBuf>,
    /// Size of the kernel's event ring buffer; a burst larger than it loses events (counted).
    pub event_buffer_bytes: u32,
    /// The node's network namespace; `None`: the daemon's own.
    pub netns: Option<PathBuf>,
    /// Entries of the kernel's cgroup label map (both policy slots).
    pub max_cgroups: u32,
}

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the policy is invalid")]
    Policy(#[source] PolicyErrors),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A policy compiled for this node, with what explains its decisions.
pub struct Prepared {
    pub policy: Policy,
    pub identities: Identities,
    pub compiled: CompiledPolicy,
}

/// Parses, validates and compiles the policy in `dir` for `node`.
///
/// # Errors
/// When the policy is invalid or does not fit the maps.
pub fn prepare(dir: &Path, node: &str) -> Result<Prepared, DaemonError> {
    let policy = policy::load_dir(dir).map_err(DaemonError::Policy)?;
    let identities = Identities::build(&policy, node)?;
    let compiled = compile::compile(&policy, &identities)?;
    Ok(Prepared {
        policy,
        identities,
        compiled,
    })
}

/// The daemon's own cgroup v2 id, which the kernel exempts from judging.
fn own_cgroup_id(cgroup_mount: &Path) -> Result<u64, DaemonError> {
    let io_error = |what: String| move |source| DaemonError::Io { what, source };
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(io_error("reading /proc/self/cgroup".to_owned()))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    let path = cgroup_mount.join(relative);
    fs::metadata(&path)
        .map(|meta| meta.ino())
        .map_err(io_error(format!(
            "reading the daemon's own cgroup {}",
            path.display()
        )))
}

fn cgroup_id(path: &Path) -> Result<u64, DaemonError> {
    fs::metadata(path)
        .map(|meta| meta.ino())
        .map_err(|source| DaemonError::Io {
            what: format!("reading cgroup {}", path.display()),
            source,
        })
}

/// The absolute level of `root` in the cgroup hierarchy (the mount point is level 0; inside a
/// cgroup namespace, the namespace's root).
fn cgroup_level(mount: &Path, root: &Path) -> u32 {
    root.strip_prefix(mount).map_or(0, |rel| {
        u32::try_from(rel.components().count()).unwrap_or(u32::MAX)
    })
}

fn mapped(addrs: &BTreeSet<IpAddr>) -> BTreeSet<[u8; 16]> {
    addrs.iter().copied().map(compile::mapped).collect()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Says once, at start, what stays unjudged without BPF LSM.
fn announce_lsm(active: bool) {
    if active {
        info!(
            "BPF LSM is active: sockets passed in from outside the managed subtree and packet sockets are judged"
        );
    } else {
        warn!(
            "no BPF LSM programs (the kernel does not run BPF LSM, or refused them): sockets created outside the managed subtree and passed in, and AF_PACKET sockets, are not judged; see docs/coverage.md"
        );
    }
}

/// Runs until SIGINT or SIGTERM. Once enforcing, failures (a cgroup sync, an event write) are
/// logged and counted but never end the run: exiting would detach the programs.
///
/// # Errors
/// When the policy, the cgroup root, the kernel or the events target fails at start.
pub async fn run(config: RunConfig) -> Result<(), DaemonError> {
    let Prepared {
        policy,
        identities,
        compiled,
    } = prepare(&config.policy_dir, &config.node)?;
    for warning in &compiled.warnings {
        warn!(%warning, "policy warning");
    }
    let cgroup_mount = find_cgroup2_mount()?;
    let cgroup_root = config
        .cgroup_root
        .clone()
        .unwrap_or_else(|| cgroup_mount.clone());
    let mut sink = match &config.events {
        EventsTarget::Stdout => JsonLines::stdout(Product::default()),
        EventsTarget::File(path) => JsonLines::file(path, Product::default())?,
    };
    let node_netns = match &config.netns {
        Some(path) => NetNs::open(path.clone())?,
        None => NetNs::own()?,
    };
    let lsm_active = bpf_lsm_active().unwrap_or_else(|error| {
        warn!(%error, "cannot tell whether BPF LSM is active; assuming it is not");
        false
    });
    let options = LoadOptions {
        event_buffer_bytes: config.event_buffer_bytes,
        cgroup_entries: config.max_cgroups,
        lsm: lsm_active,
    };
    let mut datapath = Datapath::load(options)?;
    if let Some(error) = datapath.lsm_refused() {
        warn!(error = %error_chain(error), "the kernel runs BPF LSM but refused to load the enforcer's LSM programs");
    }
    let lsm = datapath.lsm();
    announce_lsm(lsm);
    let node_cookie = netns_cookie(&node_netns)?;
    datapath.set_runtime(Runtime {
        node_netns_cookie: node_cookie,
        daemon_cgroup_id: own_cgroup_id(&cgroup_mount)?,
        root_cgroup_id: cgroup_id(&cgroup_root)?,
        root_level: cgroup_level(&cgroup_mount, &cgroup_root),
        _pad: 0,
    })?;
    let mut addresses = AddressWatcher::new(&node_netns)?;
    sync_addresses(&mut datapath, node_cookie, &local_addresses(&node_netns)?);

    let tree = CgroupTree::scan(&cgroup_root)?;
    let mut watcher = CgroupWatcher::new(&cgroup_root)?;
    watcher.watch_tree(&tree);
    let generation = datapath.apply(&compiled.state, &identities.label(&tree))?;
    datapath.attach(&cgroup_root)?;
    // Labels that did not fit are reported now, with the limit and how to raise it.
    let mut synced_tree = CgroupTree::default();
    relabel(
        &mut datapath,
        &identities,
        &cgroup_root,
        &mut watcher,
        &mut synced_tree,
    );
    let counters = datapath.counters()?;

    let node_addresses = policy
        .nodes
        .iter()
        .find(|n| n.name == config.node)
        .map(|n| n.addresses.clone())
        .unwrap_or_default();
    let version = policy.version.clone();
    let rescan_identities = identities.clone();
    let mut enricher = match SourceResolver::spawn() {
        Ok(resolver) => Enricher::with_resolver(resolver),
        Err(error) => {
            warn!(%error, "no route lookups for events: source addresses of unbound sockets fall back to the node's");
            Enricher::default()
        }
    };
    enricher.insert(
        generation,
        Arc::new(PolicyContext {
            compiled,
            identities,
            node: FlowNode {
                hostname: config.node.clone(),
                is_virtual: runs_in_vm(),
            },
            node_addresses,
        }),
    );
    let ring = datapath
        .take_events()
        .ok_or(DatapathError::MissingMap(enforcer_common::maps::EVENTS))?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the ring buffer) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
        .map_err(|source| DaemonError::Io {
            what: "watching the event ring buffer".to_owned(),
            source,
        })?;

    info!(
        policy = %config.policy_dir.display(),
        %version,
        node = %config.node,
        cgroup_root = %cgroup_root.display(),
        cgroups = synced_tree.len(),
        generation,
        lsm,
        "enforcing"
    );
    if let Some(ready) = &config.ready_file {
        fs::write(ready, format!("{}\n", std::process::id())).map_err(|source| {
            DaemonError::Io {
                what: format!("writing the ready file {}", ready.display()),
                source,
            }
        })?;
    }

    let signal_error = |source| DaemonError::Io {
        what: "installing signal handlers".to_owned(),
        source,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut loss_check = tokio::time::interval(LOSS_CHECK_INTERVAL);
    let mut events_lost = 0;
    let mut undelivered = 0_u64;

    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            changed = watcher.changed() => {
                if let Err(error) = changed {
                    error!(%error, "watching cgroups failed; the periodic rescan continues");
                }
                relabel(&mut datapath, &rescan_identities, &cgroup_root, &mut watcher, &mut synced_tree);
            }
            _ = rescan.tick() => {
                relabel(&mut datapath, &rescan_identities, &cgroup_root, &mut watcher, &mut synced_tree);
            }
            changed = addresses.changed() => match changed {
                Ok(addrs) => sync_addresses(&mut datapath, node_cookie, &addrs),
                Err(error) => error!(%error, "watching the node's addresses failed"),
            },
            _ = loss_check.tick() => {
                let lost = counters.read().ok().and_then(|v| v.get(counter::EVENTS_LOST as usize).copied());
                if let Some(lost) = lost.filter(|lost| *lost > events_lost) {
                    warn!(lost_since_last_check = lost - events_lost, total = lost,
                        "the event ring buffer was full: events were lost (verdicts still applied)");
                    events_lost = lost;
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|source| DaemonError::Io {
                    what: "waiting for events".to_owned(),
                    source,
                })?;
                let drained = drain(guard.get_inner_mut(), &enricher, &mut sink, &mut undelivered, EVENTS_PER_TURN);
                // A full turn may have left events behind: stay ready so the next turn reads on.
                if drained < EVENTS_PER_TURN {
                    guard.clear_ready();
                }
            }
        }
    }
    drain(
        ring.get_mut(),
        &enricher,
        &mut sink,
        &mut undelivered,
        usize::MAX,
    );
    if undelivered > 0 {
        warn!(undelivered, "events the sink failed to write");
    }
    match counters.read() {
        Ok(values) => {
            let summary: BTreeMap<&str, u64> = counter::NAMES.iter().copied().zip(values).collect();
            info!(?summary, "verdict counters at shutdown");
        }
        Err(error) => warn!(%error, "reading counters"),
    }
    info!("programs detached; enforcement removed");
    Ok(())
}

/// Rescans the tree, watches its new directories and syncs the labels of what changed. Failures
/// keep the daemon (and so enforcement) running: unsynced cgroups inherit their ancestors' labels
/// or are held, and the next event or tick retries.
fn relabel(
    datapath: &mut Datapath,
    identities: &Identities,
    root: &Path,
    watcher: &mut CgroupWatcher,
    synced: &mut CgroupTree,
) {
    let tree = match CgroupTree::scan(root) {
        Ok(tree) => tree,
        // The root vanished or is unreadable: keep the labels we have (still enforcing).
        Err(error) => {
            error!(%error, "rescanning cgroups failed");
            return;
        }
    };
    watcher.watch_tree(&tree);
    if tree == *synced {
        return;
    }
    match datapath.sync_cgroups(&identities.label(&tree)) {
        Ok((changed, removed)) => {
            if changed + removed > 0 {
                info!(changed, removed, "cgroup labels synced");
            }
            *synced = tree;
        }
        Err(error @ DatapathError::Full { .. }) => {
            error!(%error, cgroups = tree.len(), "not every cgroup could be labelled: the unlabelled ones inherit their parent's label or are refused until there is room");
            *synced = tree;
        }
        Err(error) => error!(%error, "syncing cgroup labels failed; retrying"),
    }
}

fn sync_addresses(datapath: &mut Datapath, netns_cookie: u64, addrs: &BTreeSet<IpAddr>) {
    match datapath.sync_local_addresses(netns_cookie, &mapped(addrs)) {
        Ok((added, removed)) if added + removed > 0 => {
            info!(
                added,
                removed,
                total = addrs.len(),
                "local addresses synced"
            );
        }
        Ok(_) => {}
        Err(error) => error!(%error, "syncing the node's local addresses failed"),
    }
}

/// Reads up to `limit` pending events into the sink and returns how many it read. A sink failure
/// (disk full, closed pipe) is counted and logged, never fatal: stopping here would detach the
/// programs and end enforcement.
fn drain(
    ring: &mut RingBuf<MapData>,
    enricher: &Enricher,
    sink: &mut JsonLines,
    undelivered: &mut u64,
    limit: usize,
) -> usize {
    let mut read = 0;
    while read < limit {
        let Some(item) = ring.next() else {
            break;
        };
        read += 1;
        match decode(&item) {
            Ok(event) => {
                if let Some(record) = enricher.enrich(&event, SystemTime::now())
                    && let Err(error) = sink.send(&record)
                {
                    *undelivered += 1;
                    error!(%error, undelivered = *undelivered, "an event could not be written");
                }
            }
            Err(error) => warn!(%error, "undecodable event"),
        }
    }
    read
}

/// The CPU says it runs under a hypervisor (`hypervisor` flag in /proc/cpuinfo).
fn runs_in_vm() -> bool {
    fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    })
}
