//! The reconciler: the one task that owns the datapath. Everything that changes what the kernel
//! holds (a policy reload, a rollback, new cgroups, new local addresses, drift repair) is a
//! command or a watch update it takes in turn, so writes never interleave and a slow sink or an
//! event flood never delays them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use enforcer_common::counter;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use super::generation::{Candidate, Loaded, candidate, now_seconds};
use super::{
    DaemonError, OnExit, RunConfig, error_chain,
    state::{GenerationRecord, Rejection, StateDir, Status},
};
use crate::{
    compile,
    control::Response,
    datapath::{DatapathError, KernelDatapath, select_interfaces},
    events::{FlowNode, PolicyContext, PolicyRejection},
    host::{NetNs, interfaces},
    identity::{CgroupTree, IdentityAllocator},
    metrics::ReloadResult,
    policy,
};

/// Who asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Start,
    Directory,
    Sighup,
    Control,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Directory => "directory",
            Self::Sighup => "SIGHUP",
            Self::Control => "control",
        }
    }
}

/// What the reconciler is asked to do.
#[derive(Debug)]
pub enum Command {
    Reload {
        origin: Origin,
        reply: Option<oneshot::Sender<Response>>,
    },
    Rollback {
        reply: oneshot::Sender<Response>,
    },
    Reconcile {
        reply: oneshot::Sender<Response>,
    },
    Status {
        reply: oneshot::Sender<Response>,
    },
}

/// The reconciler's inputs besides commands.
pub struct Inputs {
    pub commands: mpsc::Receiver<Command>,
    pub trees: watch::Receiver<Arc<CgroupTree>>,
    pub addresses: watch::Receiver<BTreeSet<IpAddr>>,
    /// The sinks, for policy-rejected events.
    pub rejections: Arc<crate::sinks::Fanout>,
    pub contexts: watch::Sender<BTreeMap<u32, Arc<PolicyContext>>>,
    pub unknown_generations: watch::Receiver<u64>,
}

pub struct Reconciler {
    pub datapath: KernelDatapath,
    pub config: Arc<RunConfig>,
    pub state: StateDir,
    pub allocator: IdentityAllocator,
    pub active: Option<Arc<Loaded>>,
    pub standby: Option<Arc<Loaded>>,
    pub node: FlowNode,
    pub node_cookie: u64,
    pub status: Status,
    /// The tree the labels were last synced from.
    pub synced: Arc<CgroupTree>,
    pub events_lost: u64,
    /// Verdict counters and reload results for the metrics endpoint.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The node's network namespace, whose interfaces the interface layer covers.
    pub node_netns: NetNs,
    /// The interfaces covered now.
    pub interfaces: Vec<String>,
}

/// How often the lost-event counter is checked; a growing count is logged as a warning.
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl Reconciler {
    /// Takes commands and updates until `cancel`, then leaves the datapath as `--on-exit` says.
    pub async fn run(mut self, mut inputs: Inputs, cancel: CancellationToken) {
        let mut reconcile = tokio::time::interval(self.config.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.reset();
        let mut loss_check = tokio::time::interval(LOSS_CHECK_INTERVAL);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                command = inputs.commands.recv() => match command {
                    Some(command) => self.handle(command, &inputs),
                    None => break,
                },
                changed = inputs.trees.changed() => {
                    if changed.is_err() { break; }
                    let tree = inputs.trees.borrow_and_update().clone();
                    self.relabel(&tree);
                }
                changed = inputs.addresses.changed() => {
                    if changed.is_err() { break; }
                    let addrs = inputs.addresses.borrow_and_update().clone();
                    self.sync_addresses(&addrs);
                }
                _ = reconcile.tick() => { self.reconcile(); }
                _ = loss_check.tick() => {
                    self.check_losses();
                    self.status.unknown_generation_events = *inputs.unknown_generations.borrow();
                }
            }
        }
        self.exit();
    }

    fn handle(&mut self, command: Command, inputs: &Inputs) {
        match command {
            Command::Reload { origin, reply } => {
                let response = self.reload(origin, inputs);
                if let Some(reply) = reply {
                    let _ = reply.send(response);
                }
            }
            Command::Rollback { reply } => {
                let response = self.rollback(inputs);
                let _ = reply.send(response);
            }
            Command::Reconcile { reply } => {
                let response = match self.reconcile() {
                    Some(repaired) => Response::ok(
                        format!("{repaired} entries repaired"),
                        json!({ "repaired": repaired }),
                    ),
                    None => Response::failed("reconciling failed; see the log", json!({})),
                };
                let _ = reply.send(response);
            }
            Command::Status { reply } => {
                let _ = reply.send(Response::ok("status", self.status_detail()));
            }
        }
    }

    fn status_detail(&self) -> serde_json::Value {
        let counters = self
            .datapath_counters()
            .map(|values| {
                counter::NAMES
                    .iter()
                    .copied()
                    .zip(values)
                    .collect::<BTreeMap<&str, u64>>()
            })
            .unwrap_or_default();
        json!({ "status": self.status, "counters": counters })
    }

    fn datapath_counters(&self) -> Option<Vec<u64>> {
        use crate::datapath::Datapath as _;
        self.datapath.slots().store().counters().ok()
    }

    /// Reads, validates and compiles the policy directory, then applies it as one step. Anything
    /// wrong is rejected whole, with every error, and the policy in force stays.
    fn reload(&mut self, origin: Origin, inputs: &Inputs) -> Response {
        let started = Instant::now();
        let (policy, sources) = match policy::load_dir_with_sources(&self.config.policy_dir) {
            Ok(loaded) => loaded,
            Err(errors) => {
                let errors = errors.iter().map(ToString::to_string).collect();
                return self.reject(origin, errors, inputs);
            }
        };
        let unchanged = self
            .active
            .as_ref()
            .is_some_and(|active| active.context.compiled.version == policy.version);
        if unchanged {
            self.metrics
                .record_reload(ReloadResult::Unchanged, SystemTime::now());
            return Response::ok(
                "the policy in force is unchanged",
                json!({ "generation": self.status.generation, "written": 0 }),
            );
        }
        let candidate = match candidate(&policy, sources, &self.config, &self.allocator) {
            Ok(candidate) => candidate,
            Err(error) => return self.reject(origin, vec![error_chain(&error)], inputs),
        };
        // Rules the failsafe inbound ports override: the operator meant to close something that
        // stays open.
        for warning in &candidate.compiled.warnings {
            warn!(version = %policy.version, "{warning}");
        }
        match self.apply(candidate, inputs) {
            Ok((generation, written)) => {
                let elapsed = started.elapsed();
                info!(
                    origin = origin.as_str(),
                    version = %policy.version,
                    generation,
                    written,
                    elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                    "policy applied"
                );
                Response::ok(
                    format!("generation {generation} in force"),
                    json!({
                        "generation": generation,
                        "written": written,
                        "version": policy.version,
                        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
                    }),
                )
            }
            Err(error) => self.reject(origin, vec![error_chain(&error)], inputs),
        }
    }

    /// Applies a compiled policy: the identity numbers and the generation's record are saved
    /// first, so that whatever the kernel holds can always be explained after a crash.
    ///
    /// # Errors
    /// When the state cannot be saved or the datapath refuses; the policy in force then stays.
    pub fn apply(
        &mut self,
        candidate: Candidate,
        inputs: &Inputs,
    ) -> Result<(u32, usize), DaemonError> {
        if candidate.allocator != self.allocator {
            self.state.save_identities(&candidate.allocator)?;
            self.allocator = candidate.allocator.clone();
        }
        let generation = self.datapath.slots_mut().next_generation();
        let applied_at = now_seconds();
        self.state.save_generation(&GenerationRecord {
            generation,
            version: candidate.compiled.version.clone(),
            applied_at,
            sources: candidate.sources.clone(),
        })?;
        let labels = candidate.identities.label(&self.synced);
        let applied = match self
            .datapath
            .slots_mut()
            .apply(&candidate.compiled.state, &labels)
        {
            Ok(applied) => applied,
            Err(error) => {
                let keep = self.kept_generations();
                if let Err(prune) = self.state.prune_generations(&keep) {
                    warn!(error = %prune, "removing the record of a generation that was not applied");
                }
                return Err(error.into());
            }
        };
        if applied.cgroups_unwritten > 0 {
            error!(
                unwritten = applied.cgroups_unwritten,
                "not every cgroup could be labelled: the unlabelled ones inherit their parent's label or are refused until there is room; raise --max-cgroups"
            );
        }
        let loaded = Arc::new(candidate.loaded(applied.generation, applied_at));
        self.standby = self.active.replace(loaded);
        self.after_flip(inputs, applied.written);
        Ok((applied.generation, applied.written))
    }

    fn rollback(&mut self, inputs: &Inputs) -> Response {
        let Some(standby) = self.standby.clone() else {
            return Response::failed(
                "there is no previous policy on record to roll back to",
                json!({}),
            );
        };
        // The standby slot's labels follow the tree too, but only from the last sync: bring them
        // up to date first, so that the flip lands on current labels.
        if let Err(error) = self
            .datapath
            .slots_mut()
            .label_cgroups(true, &standby.context.identities.label(&self.synced))
            && !matches!(error, DatapathError::Full { .. })
        {
            return Response::failed(
                format!("rollback refused: {}", error_chain(&error)),
                json!({}),
            );
        }
        match self.datapath.slots_mut().rollback() {
            Ok(applied) => {
                self.standby = self.active.replace(standby);
                self.after_flip(inputs, applied.written);
                info!(generation = applied.generation, "rolled back");
                Response::ok(
                    format!("rolled back to generation {}", applied.generation),
                    json!({ "generation": applied.generation, "written": applied.written }),
                )
            }
            Err(error) => Response::failed(
                format!("rollback refused: {}", error_chain(&error)),
                json!({}),
            ),
        }
    }

    /// After the active slot changed: publish the explanations, prune old records, save status.
    fn after_flip(&mut self, inputs: &Inputs, written: usize) {
        let contexts = [&self.active, &self.standby]
            .into_iter()
            .flatten()
            .map(|loaded| (loaded.generation, loaded.context.clone()))
            .collect();
        inputs.contexts.send_replace(contexts);
        if let Err(error) = self.state.prune_generations(&self.kept_generations()) {
            warn!(%error, "pruning old generation records");
        }
        self.status.generation = self.datapath.slots().generation();
        let active = self
            .active
            .as_ref()
            .filter(|active| active.generation == self.status.generation);
        self.status.version = active.map(|active| active.context.compiled.version.clone());
        self.status.applied_at = active.map(|active| active.applied_at);
        self.status.standby_generation = self.datapath.slots().standby_generation();
        self.status.last_written = written;
        self.save_status();
        self.metrics
            .record_reload(ReloadResult::Applied, SystemTime::now());
        self.metrics.set_policy(
            self.status.version.as_deref().unwrap_or("unknown"),
            u64::from(self.status.generation),
        );
    }

    fn kept_generations(&self) -> BTreeSet<u32> {
        let slots = self.datapath.slots();
        [slots.generation(), slots.standby_generation()]
            .into_iter()
            .collect()
    }

    fn reject(&mut self, origin: Origin, errors: Vec<String>, inputs: &Inputs) -> Response {
        for error in &errors {
            error!(origin = origin.as_str(), %error, "policy rejected");
        }
        warn!(
            origin = origin.as_str(),
            errors = errors.len(),
            in_force = self.status.generation,
            "the new policy was rejected; the last good policy stays in force"
        );
        let rejection = Rejection {
            at: now_seconds(),
            origin: origin.as_str().to_owned(),
            errors: errors.clone(),
        };
        self.status.last_rejected = Some(rejection);
        self.save_status();
        let event = PolicyRejection {
            time: SystemTime::now(),
            node: self.node.clone(),
            policy_dir: self.config.policy_dir.display().to_string(),
            origin: origin.as_str().to_owned(),
            errors: errors.clone(),
            in_force_version: self.status.version.clone(),
            in_force_generation: self.status.generation,
        };
        // Sinks never wait: a sink whose queue is full counts this report as lost.
        inputs
            .rejections
            .publish(Arc::new(crate::events::Report::Rejection(event)));
        self.metrics
            .record_reload(ReloadResult::Rejected, SystemTime::now());
        Response::failed(
            format!(
                "policy rejected ({} errors); generation {} stays in force",
                errors.len(),
                self.status.generation
            ),
            json!({ "errors": serde_json::Value::from(errors), "generation": self.status.generation }),
        )
    }

    /// Brings the kernel to the policy on disk at start. Pins adopted with the same policy stay
    /// exactly as they are; an invalid policy on disk leaves an adopted one in force.
    ///
    /// # Errors
    /// When there is no valid policy to enforce at all.
    pub fn first_policy(&mut self, inputs: &Inputs) -> Result<(), DaemonError> {
        if self.active.is_some() {
            self.after_flip(inputs, 0);
        }
        let response = self.reload(Origin::Start, inputs);
        if response.ok || self.active.is_some() {
            return Ok(());
        }
        Err(DaemonError::Rejected {
            errors: self
                .status
                .last_rejected
                .as_ref()
                .map(|rejection| rejection.errors.clone())
                .unwrap_or_default(),
        })
    }

    /// Syncs both slots' labels with `tree` when it differs from the last synced one.
    pub fn relabel(&mut self, tree: &Arc<CgroupTree>) {
        if *tree != self.synced {
            self.relabel_all(tree);
        }
    }

    /// Syncs both slots' labels with `tree` (the standby one too, so that a rollback lands on
    /// current labels).
    pub fn relabel_all(&mut self, tree: &Arc<CgroupTree>) {
        let mut all_written = true;
        for (standby, loaded) in [(false, self.active.clone()), (true, self.standby.clone())] {
            let Some(loaded) = loaded else { continue };
            match self
                .datapath
                .slots_mut()
                .label_cgroups(standby, &loaded.context.identities.label(tree))
            {
                Ok((changed, removed)) => {
                    if !standby && changed + removed > 0 {
                        info!(changed, removed, "cgroup labels synced");
                    }
                }
                Err(error @ DatapathError::Full { .. }) => {
                    if !standby {
                        error!(%error, cgroups = tree.len(), "not every cgroup could be labelled: the unlabelled ones inherit their parent's label or are refused until there is room");
                    }
                }
                Err(error) => {
                    error!(%error, "syncing cgroup labels failed; retrying at the next change");
                    all_written = false;
                }
            }
        }
        if all_written {
            self.synced = tree.clone();
        }
    }

    pub fn sync_addresses(&mut self, addrs: &BTreeSet<IpAddr>) {
        let mapped = addrs.iter().copied().map(compile::mapped).collect();
        match self
            .datapath
            .sync_local_addresses(self.node_cookie, &mapped)
        {
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
        // An interface that came up usually brings an address: look for new ones then.
        if self.config.interfaces.is_empty()
            && let Err(error) = self.cover_interfaces()
        {
            error!(error = %error_chain(&error), "covering the node's interfaces failed");
        }
    }

    /// Puts the interface layer on every interface it should cover and does not yet (all named
    /// by `--interface`, else every one that is up but loopback), and off those that are gone;
    /// nothing on kernels without tcx links.
    ///
    /// # Errors
    /// When the interfaces cannot be listed or the kernel refuses a link.
    pub fn cover_interfaces(&mut self) -> Result<(), DatapathError> {
        if !self.datapath.interface_layer() {
            // Said once at start (`announce_interface_layer`).
            return Ok(());
        }
        let all = interfaces(&self.node_netns).map_err(DatapathError::ListInterfaces)?;
        let chosen = select_interfaces(&all, &self.config.interfaces)?;
        let names: Vec<String> = chosen.iter().map(|i| i.name.clone()).collect();
        if names == self.interfaces {
            return Ok(());
        }
        self.datapath
            .attach_interfaces(&self.node_netns, &chosen, &self.interfaces)?;
        info!(interfaces = ?names, "arrivals judged on these interfaces");
        self.interfaces = names;
        Ok(())
    }

    /// Puts right whatever drifted; returns how many entries, or `None` when it failed.
    fn reconcile(&mut self) -> Option<usize> {
        match self.datapath.slots_mut().reconcile() {
            Ok(repairs) => {
                let total = repairs.total();
                if total > 0 {
                    warn!(
                        total,
                        configs = repairs.configs,
                        by_map = ?repairs.entries,
                        "the kernel's maps had drifted from the policy; repaired"
                    );
                    self.status.repaired += total as u64;
                    self.save_status();
                }
                Some(total)
            }
            Err(error) => {
                error!(error = %error_chain(&error), "comparing the kernel's maps with the policy failed");
                None
            }
        }
    }

    fn check_losses(&mut self) {
        let counters = self.datapath_counters();
        if let Some(values) = &counters {
            self.metrics.set_kernel_counters(values);
        }
        let lost = counters.and_then(|values| values.get(counter::EVENTS_LOST as usize).copied());
        if let Some(lost) = lost.filter(|lost| *lost > self.events_lost) {
            warn!(
                lost_since_last_check = lost - self.events_lost,
                total = lost,
                "the event ring buffer was full: events were lost (verdicts still applied)"
            );
            self.events_lost = lost;
        }
    }

    pub fn save_status(&self) {
        if let Err(error) = self.state.save_status(&self.status) {
            warn!(%error, "saving the status file");
        }
    }

    /// Leaves the kernel as `--on-exit` says: enforcing the last policy (the pins keep it), or
    /// with every pin of the instance removed.
    fn exit(mut self) {
        if let Some(values) = self.datapath_counters() {
            let summary: BTreeMap<&str, u64> = counter::NAMES.iter().copied().zip(values).collect();
            info!(?summary, "verdict counters at shutdown");
        }
        self.status.pid = None;
        match self.config.on_exit {
            OnExit::Keep => {
                self.save_status();
                info!(
                    generation = self.status.generation,
                    "exiting; the pinned programs keep enforcing the last policy"
                );
            }
            OnExit::Detach => match self.datapath.unpin() {
                Ok(()) => {
                    if let Err(error) = self.state.forget_policies() {
                        warn!(%error, "clearing the state directory");
                    }
                    info!("programs detached; enforcement removed");
                }
                Err(error) => {
                    self.save_status();
                    error!(%error, "removing the pins failed: enforcement stays");
                }
            },
        }
    }
}
