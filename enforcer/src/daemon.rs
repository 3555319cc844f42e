//! The daemon: loads the policy, labels cgroups, writes the maps, attaches the programs, then
//! keeps cgroup labels current and streams events until SIGINT or SIGTERM.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use enforcer_common::counter;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::MissedTickBehavior,
};
use tracing::{error, info, warn};

use crate::{
    compile::{self, CompileError, CompiledPolicy},
    datapath::{Datapath, DatapathError},
    events::{Enricher, FlowNode, PolicyContext, decode, ocsf::Product},
    identity::{CgroupError, CgroupTree, Identities, IdentityError, find_cgroup2_mount},
    policy::{self, Policy, PolicyErrors},
    sinks::{JsonLines, SinkError},
};

/// How often the cgroup tree is rescanned; new cgroups get their identity within this time (and
/// inherit their parent's until then).
const RESCAN_INTERVAL: Duration = Duration::from_millis(200);

/// How often the lost-event counter is checked; a growing count is logged as a warning.
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

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
    Datapath(#[from] DatapathError),
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
    let cgroup_root = match &config.cgroup_root {
        Some(root) => root.clone(),
        None => find_cgroup2_mount()?,
    };
    let mut sink = match &config.events {
        EventsTarget::Stdout => JsonLines::stdout(Product::default()),
        EventsTarget::File(path) => JsonLines::file(path, Product::default())?,
    };

    let mut datapath = Datapath::load(config.event_buffer_bytes)?;
    let tree = CgroupTree::scan(&cgroup_root)?;
    let generation = datapath.apply(&compiled.state, &identities.label(&tree))?;
    datapath.attach(&cgroup_root)?;
    let counters = datapath.counters()?;

    let node_addresses = policy
        .nodes
        .iter()
        .find(|n| n.name == config.node)
        .map(|n| n.addresses.clone())
        .unwrap_or_default();
    // The rescan loop labels new cgroups with the same identities the policy was compiled with.
    let rescan_identities = identities.clone();
    let mut enricher = Enricher::default();
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
        version = %policy.version,
        node = %config.node,
        cgroup_root = %cgroup_root.display(),
        cgroups = tree.len(),
        generation,
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

    let mut synced_tree = tree;
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
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = rescan.tick() => {
                match CgroupTree::scan(&cgroup_root) {
                    // Labelling matches every glob against every cgroup: only when the tree
                    // changed since the last successful sync.
                    Ok(tree) if tree != synced_tree => {
                        let desired = rescan_identities.label(&tree);
                        // A failed write keeps the daemon (and so enforcement) running: the
                        // unsynced cgroups inherit their ancestors' identities, and the next
                        // tick retries.
                        match datapath.sync_cgroups(&desired) {
                            Ok((changed, removed)) => {
                                if changed + removed > 0 {
                                    info!(changed, removed, "cgroup labels synced");
                                }
                                synced_tree = tree;
                            }
                            Err(error) => error!(%error, "syncing cgroup labels failed; retrying"),
                        }
                    }
                    Ok(_) => {}
                    // The root vanished or is unreadable: keep the labels we have (still
                    // enforcing) and say so.
                    Err(error) => error!(%error, "rescanning cgroups failed"),
                }
            }
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
                drain(guard.get_inner_mut(), &enricher, &mut sink, &mut undelivered);
                guard.clear_ready();
            }
        }
    }
    drain(ring.get_mut(), &enricher, &mut sink, &mut undelivered);
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

/// Reads every pending event into the sink. A sink failure (disk full, closed pipe) is counted and
/// logged, never fatal: stopping here would detach the programs and end enforcement.
fn drain(
    ring: &mut RingBuf<MapData>,
    enricher: &Enricher,
    sink: &mut JsonLines,
    undelivered: &mut u64,
) {
    while let Some(item) = ring.next() {
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
}

/// The CPU says it runs under a hypervisor (`hypervisor` flag in /proc/cpuinfo).
fn runs_in_vm() -> bool {
    fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    })
}
