//! Start and stop: load (or adopt) the datapath, bring it to the policy, start the tasks, and on
//! SIGTERM wind them down in order.

use std::{collections::BTreeMap, fs, os::unix::fs::MetadataExt as _, path::Path, sync::Arc};

use enforcer_common::{RUNTIME_HAND_OFF, Runtime};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    DaemonError, RunConfig, error_chain,
    pipeline::{self, Enrichment, RAW_QUEUE, Reader},
    reconciler::{self, Inputs, Loaded, Reconciler},
    revoke::Revoker,
    state::{StateDir, Status},
    tasks::{self, ControlHandler},
    watch_policy::PolicyWatcher,
};
use crate::{
    compile::{self, CompiledPolicy},
    control,
    datapath::{Adoption, DatapathError, KernelDatapath, LoadOptions, PinDir, bpf_lsm_active},
    events::{Detector, Enricher, FlowNode, ocsf::Product},
    host::{AddressWatcher, NetNs, SourceResolver, local_addresses, netns_cookie},
    identity::{CgroupTree, CgroupWatcher, Identities, IdentityAllocator, find_cgroup2_mount},
    metrics::{self, Metrics, sink_label},
    policy::{self, Policy},
    sinks::Fanout,
};

/// How long the sinks get at exit to deliver what they still hold; the rest is counted lost.
/// Short, so that a sink that is down does not hold up a supervisor's restart.
const SINK_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Commands waiting for the reconciler.
const COMMAND_QUEUE: usize = 64;

/// A policy compiled for this node, with what explains its decisions.
pub struct Prepared {
    pub policy: Policy,
    pub identities: Identities,
    pub compiled: CompiledPolicy,
}

/// Parses, validates and compiles the policy in `dir` for `node`, numbering identities afresh
/// (as a first start would) and checking it fits maps of the default sizes.
///
/// # Errors
/// When the policy is invalid or does not fit the maps.
pub fn prepare(dir: &Path, node: &str) -> Result<Prepared, DaemonError> {
    let policy = policy::load_dir(dir).map_err(DaemonError::Policy)?;
    let identities = Identities::build(&policy, node, &mut IdentityAllocator::default())?;
    let compiled = compile::compile(&policy, &identities)?;
    compiled.state.check_fits(&compile::Limits::default())?;
    Ok(Prepared {
        policy,
        identities,
        compiled,
    })
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

/// The daemon's own cgroup v2 id, which the kernel exempts from judging.
fn own_cgroup_id(cgroup_mount: &Path) -> Result<u64, DaemonError> {
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(io_error("reading /proc/self/cgroup".to_owned()))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    cgroup_id(&cgroup_mount.join(relative))
}

fn cgroup_id(path: &Path) -> Result<u64, DaemonError> {
    fs::metadata(path)
        .map(|meta| meta.ino())
        .map_err(io_error(format!("reading cgroup {}", path.display())))
}

/// The absolute level of `root` in the cgroup hierarchy (the mount point is level 0; inside a
/// cgroup namespace, the namespace's root).
fn cgroup_level(mount: &Path, root: &Path) -> u32 {
    root.strip_prefix(mount).map_or(0, |rel| {
        u32::try_from(rel.components().count()).unwrap_or(u32::MAX)
    })
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

/// Says once, at start, what stays unjudged on a kernel without tcx links.
fn announce_interface_layer(available: bool) {
    if !available {
        warn!(
            "the kernel has no tcx links (Linux 6.6+): the interface layer is off, so arrivals at closed ports and from outside the managed subtree's sockets, ICMP echo to the node and what processes outside the subtree open are not judged; see docs/coverage.md"
        );
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

/// Rebuilds the explanation of a generation an earlier daemon applied, from its record.
fn recall(
    state: &StateDir,
    generation: u32,
    config: &RunConfig,
    allocator: &IdentityAllocator,
) -> Option<Arc<Loaded>> {
    if generation == 0 {
        return None;
    }
    let record = match state.generation(generation) {
        Ok(Some(record)) => record,
        Ok(None) => {
            warn!(
                generation,
                "the kernel holds a policy generation with no record here: its events are reported as of an unknown generation"
            );
            return None;
        }
        Err(error) => {
            warn!(%error, generation, "reading a generation record");
            return None;
        }
    };
    let rebuilt = policy::parse_sources(&record.sources)
        .map_err(|errors| errors.to_string())
        .and_then(|policy| {
            reconciler::candidate(&policy, record.sources.clone(), config, allocator)
                .map_err(|error| error_chain(&error))
        });
    match rebuilt {
        Ok(candidate) if candidate.compiled.version == record.version => {
            Some(Arc::new(candidate.loaded(generation, record.applied_at)))
        }
        Ok(_) => {
            warn!(
                generation,
                "a generation record does not rebuild to the policy it names"
            );
            None
        }
        Err(error) => {
            warn!(generation, %error, "a generation record no longer compiles");
            None
        }
    }
}

/// Runs until SIGINT or SIGTERM. Once enforcing, failures (a cgroup sync, an event write, an
/// invalid reload) are logged and counted but never end the run.
///
/// # Errors
/// When the cgroup root, the kernel, the state or the events target fails at start, or when
/// there is no valid policy at all (neither on disk nor pinned).
pub async fn run(config: RunConfig) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    // With nothing pinned there is nothing to keep in force: a broken policy is refused before
    // any work, with its typed errors (file:line:column each).
    let pinned = PinDir::new(&config.bpffs).has_links();
    if !pinned {
        policy::load_dir(&config.policy_dir).map_err(DaemonError::Policy)?;
    }
    let state = StateDir::create(&config.state_dir)?;
    let allocator = state.identities()?;
    let cgroup_mount = find_cgroup2_mount()?;
    let cgroup_root = config
        .cgroup_root
        .clone()
        .unwrap_or_else(|| cgroup_mount.clone());
    if let Some(status) = state.status()?
        && pinned
        && status.cgroup_root != cgroup_root
        && !status.cgroup_root.as_os_str().is_empty()
    {
        return Err(DaemonError::OtherRoot {
            bpffs: config.bpffs.clone(),
            pinned: status.cgroup_root,
            asked: cgroup_root,
        });
    }
    let fanout = Arc::new(Fanout::start(config.sinks.clone(), Product::default())?);
    let metrics = Arc::new(Metrics::new(
        fanout
            .stats()
            .into_iter()
            .zip(&config.sinks)
            .enumerate()
            .map(|(index, ((_, stats), spec))| (sink_label(index, &spec.kind), stats))
            .collect(),
    ));
    let node_netns = match &config.netns {
        Some(path) => NetNs::open(path.clone())?,
        None => NetNs::own()?,
    };
    let lsm_active = bpf_lsm_active().unwrap_or_else(|error| {
        warn!(%error, "cannot tell whether BPF LSM is active; assuming it is not");
        false
    });
    let datapath = KernelDatapath::load(&LoadOptions {
        event_buffer_bytes: config.event_buffer_bytes,
        cgroup_entries: config.max_cgroups,
        flow_entries: config.max_flows,
        limits: config.limits,
        lsm: lsm_active,
        pins: config.bpffs.clone(),
    })?;
    if let Some(path) = datapath.mounted() {
        info!(path = %path.display(), "bpffs was not mounted: mounted it");
    }
    if let Some(error) = datapath.lsm_refused() {
        warn!(error = %error_chain(error), "the kernel runs BPF LSM but refused to load the enforcer's LSM programs");
    }
    announce_lsm(datapath.lsm());
    announce_interface_layer(datapath.interface_layer());
    let adoption = datapath.adoption();
    let node = FlowNode {
        hostname: config.node.clone(),
        is_virtual: runs_in_vm(),
    };
    let active = recall(&state, datapath.slots().generation(), &config, &allocator);
    let standby = recall(
        &state,
        datapath.slots().standby_generation(),
        &config,
        &allocator,
    );
    let mut reconciler = Reconciler {
        datapath,
        config: config.clone(),
        state,
        allocator,
        active,
        standby,
        node,
        node_cookie: 0,
        status: Status {
            pid: Some(std::process::id()),
            node: config.node.clone(),
            policy_dir: config.policy_dir.clone(),
            cgroup_root: cgroup_root.clone(),
            ..Status::default()
        },
        synced: Arc::new(CgroupTree::default()),
        events_lost: 0,
        metrics: metrics.clone(),
        node_netns: node_netns.try_clone()?,
        interfaces: Vec::new(),
    };
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (contexts_tx, contexts_rx) = watch::channel(BTreeMap::new());
    let (unknown_tx, unknown_rx) = watch::channel(0);
    let (trees_tx, trees) = watch::channel(Arc::new(CgroupTree::default()));
    let (addresses_tx, addresses) = watch::channel(Default::default());
    let inputs = Inputs {
        commands,
        trees,
        addresses,
        rejections: fanout.clone(),
        contexts: contexts_tx,
        unknown_generations: unknown_rx,
    };
    let watchers = match enforce(
        &mut reconciler,
        &inputs,
        &cgroup_mount,
        &cgroup_root,
        &node_netns,
    ) {
        Ok(watchers) => watchers,
        Err(error) => {
            // A first start that failed leaves nothing behind; an adopted instance keeps
            // enforcing what it enforced.
            if adoption == Adoption::Fresh
                && let Err(unpin) = reconciler.datapath.unpin()
            {
                warn!(error = %unpin, "removing the pins of a failed start");
            }
            drop(inputs);
            if let Ok(fanout) = Arc::try_unwrap(fanout) {
                fanout.shutdown(SINK_DRAIN).await;
            }
            return Err(error);
        }
    };
    let ring = reconciler
        .datapath
        .take_events()
        .ok_or(DatapathError::MissingMap(enforcer_common::maps::EVENTS))?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the ring buffer) is dropped.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
        .map_err(io_error("watching the event ring buffer".to_owned()))?;
    let enricher = Enricher::new(
        reconciler.node.clone(),
        reconciler
            .active
            .as_ref()
            .map(|active| active.node_addresses.clone())
            .unwrap_or_default(),
        SourceResolver::spawn()
            .map_err(|error| {
                warn!(%error, "no route lookups for events: source addresses of unbound sockets fall back to the node's");
            })
            .ok(),
    );
    let cancel = CancellationToken::new();
    let control = control::bind(&reconciler.state.control_socket())?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tasks::watch_cgroups(
        cgroup_root.clone(),
        watchers.cgroups,
        trees_tx,
        cancel.clone(),
    ));
    tasks.spawn(tasks::watch_addresses(
        watchers.addresses,
        addresses_tx,
        cancel.clone(),
    ));
    tasks.spawn(tasks::watch_policy(
        watchers.policy,
        commands_tx.clone(),
        cancel.clone(),
    ));
    tasks.spawn(
        tasks::signals(commands_tx.clone(), cancel.clone())
            .map_err(io_error("installing signal handlers".to_owned()))?,
    );
    tasks.spawn(control::serve(
        control,
        Arc::new(ControlHandler {
            commands: commands_tx,
        }),
        cancel.clone(),
    ));
    let (revoker, revoker_thread) = Revoker::spawn(node_netns.try_clone()?, reconciler.node_cookie)
        .map_err(io_error("starting the revoker thread".to_owned()))?;
    let windows = reconciler
        .datapath
        .take_reports()
        .ok_or(DatapathError::MissingMap(enforcer_common::maps::REPORTS))?;
    let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
    let reader = tokio::spawn(pipeline::read_events(
        Reader {
            ring,
            windows,
            window: config.aggregate_window,
            revoker,
            metrics: metrics.clone(),
        },
        raw_tx,
        cancel.clone(),
    ));
    let enricher = tokio::spawn(pipeline::enrich_events(
        Enrichment {
            enricher,
            contexts: contexts_rx,
            unknown: unknown_tx,
            detector: config.detection.map(Detector::new),
            metrics: metrics.clone(),
        },
        raw_rx,
        fanout.clone(),
    ));
    let metrics_server = match config.metrics_listen {
        Some(listen) => {
            let server = metrics::serve(listen, metrics.clone(), cancel.clone()).await?;
            info!(address = %server.local_addr, "metrics endpoint listening");
            Some(server)
        }
        None => None,
    };
    if let Some(ready) = &config.ready_file {
        fs::write(ready, format!("{}\n", std::process::id())).map_err(io_error(format!(
            "writing the ready file {}",
            ready.display()
        )))?;
    }
    reconciler.run(inputs, cancel.clone()).await;
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    if let Err(error) = reader.await {
        error!(%error, "the event reader failed");
    }
    if let Err(error) = enricher.await {
        error!(%error, "the event enricher failed");
    }
    if revoker_thread.join().is_err() {
        error!("the revoker thread panicked");
    }
    if let Some(server) = metrics_server
        && let Err(error) = server.task.await
    {
        error!(%error, "the metrics endpoint failed");
    }
    let sinks = fanout.stats();
    match Arc::try_unwrap(fanout) {
        Ok(fanout) => fanout.shutdown(SINK_DRAIN).await,
        Err(_) => error!("the sinks are still referenced at exit; what they hold is lost"),
    }
    log_sink_totals(&sinks);
    Ok(())
}

/// Each sink's account at exit, in attempts: what a sink lost (a full queue, a delivery that
/// failed for good) is said here as well as in the metrics, like the kernel's losses.
fn log_sink_totals(sinks: &[(String, Arc<crate::sinks::SinkStats>)]) {
    use std::sync::atomic::Ordering::Relaxed;
    for (sink, stats) in sinks {
        let dropped = stats.dropped_attempts.load(Relaxed);
        let failed = stats.failed_attempts.load(Relaxed);
        let totals = (
            stats.offered_attempts.load(Relaxed),
            stats.delivered_attempts.load(Relaxed),
        );
        if dropped + failed > 0 {
            warn!(%sink, offered_attempts = totals.0, delivered_attempts = totals.1, dropped_attempts = dropped, failed_attempts = failed, "sink totals at shutdown: attempts were lost");
        } else {
            info!(%sink, offered_attempts = totals.0, delivered_attempts = totals.1, dropped_attempts = dropped, failed_attempts = failed, "sink totals at shutdown");
        }
    }
}

/// What keeps the reconciler's inputs coming, made before the first policy is enforced so that
/// nothing that happens from then on is missed.
struct Watchers {
    cgroups: CgroupWatcher,
    addresses: AddressWatcher,
    policy: PolicyWatcher,
}

/// Brings the datapath to the policy on disk and makes it enforce. Adopted pins keep running
/// the whole time: their policy stays in force until the new one is written beside it, and the
/// programs are swapped into their links.
fn enforce(
    reconciler: &mut Reconciler,
    inputs: &Inputs,
    cgroup_mount: &Path,
    cgroup_root: &Path,
    node_netns: &NetNs,
) -> Result<Watchers, DaemonError> {
    let config = reconciler.config.clone();
    reconciler.node_cookie = netns_cookie(node_netns)?;
    reconciler.datapath.set_runtime(Runtime {
        node_netns_cookie: reconciler.node_cookie,
        daemon_cgroup_id: own_cgroup_id(cgroup_mount)?,
        root_cgroup_id: cgroup_id(cgroup_root)?,
        root_level: cgroup_level(cgroup_mount, cgroup_root),
        // Named interfaces leave others (a container's veth) unjudged: a flow from another
        // namespace to the node could then reach a node process no layer judges.
        flags: if config.interfaces.is_empty() {
            RUNTIME_HAND_OFF
        } else {
            0
        },
    })?;
    let addresses = AddressWatcher::new(node_netns)?;
    reconciler.sync_addresses(&local_addresses(node_netns)?);
    let policy = PolicyWatcher::new(&config.policy_dir, config.reload_debounce)?;
    let tree = CgroupTree::scan(cgroup_root)?;
    let mut cgroups = CgroupWatcher::new(cgroup_root)?;
    cgroups.watch_tree(&tree);
    let tree = Arc::new(tree);
    reconciler.synced = tree.clone();
    reconciler.first_policy(inputs)?;
    reconciler.relabel_all(&tree);
    let attached = reconciler.datapath.attach(cgroup_root)?;
    reconciler.cover_interfaces()?;
    info!(
        policy = %config.policy_dir.display(),
        version = reconciler.status.version.as_deref().unwrap_or("none"),
        node = %config.node,
        cgroup_root = %cgroup_root.display(),
        cgroups = tree.len(),
        generation = reconciler.status.generation,
        maps = ?reconciler.datapath.adoption(),
        adopted = attached.replaced,
        attached = attached.created,
        lsm = reconciler.datapath.lsm(),
        interface_layer = reconciler.datapath.interface_layer(),
        bpffs = %config.bpffs.display(),
        "enforcing"
    );
    reconciler.save_status();
    Ok(Watchers {
        cgroups,
        addresses,
        policy,
    })
}
