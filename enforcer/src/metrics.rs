//! What the daemon counts, served as OpenMetrics text on `GET /metrics` ([`serve`]).
//!
//! Two kinds of source feed it. Figures that already exist elsewhere (the kernel's per-CPU
//! counters, each sink's [`SinkStats`]) are read at scrape time by collectors, so the hot path
//! pays nothing for metrics. Figures only the pipeline knows (attempts reported and aggregated,
//! losses, alerts, reloads) are counters whose cheap, clone-able handles the pipeline keeps.
//!
//! No label value carries an address or a port: sinks are labelled `<index>-<kind>` (the index
//! is the sink's position among the `[[sink]]` tables of the config file), never by their name.

mod collectors;
mod server;
#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::SystemTime,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use self::collectors::{KernelCollector, PolicyCollector, SinkCollector};
pub use self::server::{MetricsError, MetricsServer, serve};
use crate::{
    events::PatternKind,
    sinks::{SinkKind, SinkStats},
};

/// Where an attempt can be lost before it reaches the sinks. The aggregation map loses nothing
/// (a full map sends attempts to the ring buffer, counted `aggregation_full`), and what a sink
/// loses is counted per sink (`enforcer_sink_dropped_attempts_total`,
/// `enforcer_sink_failed_attempts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossStage {
    /// The ring buffer was full (the kernel's `events_lost` counter).
    KernelRing,
    /// Between the ring buffer and the sinks' queues: a record that did not decode.
    Pipeline,
}

impl LossStage {
    pub const ALL: [Self; 2] = [Self::KernelRing, Self::Pipeline];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KernelRing => "kernel_ring",
            Self::Pipeline => "pipeline",
        }
    }
}

/// How a policy reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    /// Invalid: the policy in force stays.
    Rejected,
    /// The directory's content hash did not change.
    Unchanged,
}

impl ReloadResult {
    pub const ALL: [Self; 3] = [Self::Applied, Self::Rejected, Self::Unchanged];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::Unchanged => "unchanged",
        }
    }
}

const PATTERNS: [PatternKind; 3] = [
    PatternKind::PortScan,
    PatternKind::Sweep,
    PatternKind::FanOut,
];

const fn pattern_label(kind: PatternKind) -> &'static str {
    match kind {
        PatternKind::PortScan => "port_scan",
        PatternKind::Sweep => "sweep",
        PatternKind::FanOut => "fan_out",
    }
}

type Labels = [(&'static str, &'static str); 1];

/// The label a sink's metrics carry: its position in the config file and its kind, such as
/// `0-syslog`. Sink names hold paths and addresses, which must not become label values.
#[must_use]
pub fn sink_label(index: usize, kind: &SinkKind) -> String {
    let kind = match kind {
        SinkKind::File { .. } => "file",
        SinkKind::Stdout { .. } => "stdout",
        SinkKind::Syslog { .. } => "syslog",
        SinkKind::Otlp { .. } => "otlp",
    };
    format!("{index}-{kind}")
}

/// Every metric of the daemon, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    kernel: Arc<KernelCollector>,
    policy: Arc<PolicyCollector>,
    attempts_reported: Counter,
    attempts_aggregated: Counter,
    events_lost: Family<Labels, Counter>,
    alerts: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    reload_last: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// `sinks` are the sinks' labels ([`sink_label`]) and the figures they keep.
    #[must_use]
    pub fn new(sinks: Vec<(String, Arc<SinkStats>)>) -> Self {
        let mut registry = Registry::default();
        let kernel = Arc::new(KernelCollector::default());
        let policy = Arc::new(PolicyCollector::default());
        registry.register_collector(Box::new(Arc::clone(&kernel)));
        registry.register_collector(Box::new(Arc::clone(&policy)));
        registry.register_collector(Box::new(SinkCollector::new(sinks)));

        let attempts_reported = Counter::default();
        registry.register(
            "enforcer_attempts_reported",
            "Attempts (denied or audited connections) that reached the event pipeline",
            attempts_reported.clone(),
        );
        let attempts_aggregated = Counter::default();
        registry.register(
            "enforcer_attempts_aggregated",
            "Attempts folded into another report's count instead of reported on their own",
            attempts_aggregated.clone(),
        );
        let events_lost = preset(LossStage::ALL.map(|stage| ("stage", stage.as_str())));
        registry.register(
            "enforcer_events_lost",
            "Attempts lost, by where they were lost",
            events_lost.clone(),
        );
        let alerts = preset(PATTERNS.map(|kind| ("kind", pattern_label(kind))));
        registry.register(
            "enforcer_alerts",
            "Lateral-movement alerts raised, by pattern",
            alerts.clone(),
        );
        let reloads = preset(ReloadResult::ALL.map(|result| ("result", result.as_str())));
        registry.register(
            "enforcer_reloads",
            "Policy reloads, by how they ended",
            reloads.clone(),
        );
        let reload_last = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "enforcer_reload_last_timestamp",
            "When the last policy reload ended (Unix time)",
            Unit::Seconds,
            reload_last.clone(),
        );
        Self {
            registry,
            kernel,
            policy,
            attempts_reported,
            attempts_aggregated,
            events_lost,
            alerts,
            reloads,
            reload_last,
        }
    }

    /// The kernel's counters, summed over CPUs and indexed like
    /// [`enforcer_common::counter::NAMES`]; missing entries read as 0. Also feeds
    /// `enforcer_events_lost_total{stage="kernel_ring"}`, which is the kernel's `events_lost`.
    pub fn set_kernel_counters(&self, values: &[u64]) {
        self.kernel.set(values);
        let ring_lost = values
            .get(enforcer_common::counter::EVENTS_LOST as usize)
            .copied()
            .unwrap_or(0);
        self.events_lost(LossStage::KernelRing)
            .inner()
            .store(ring_lost, std::sync::atomic::Ordering::Relaxed);
    }

    /// The handle the pipeline bumps once per attempt reported (a report's count).
    #[must_use]
    pub fn attempts_reported(&self) -> Counter {
        self.attempts_reported.clone()
    }

    #[must_use]
    pub fn attempts_aggregated(&self) -> Counter {
        self.attempts_aggregated.clone()
    }

    /// The handle for attempts lost at `stage`. [`LossStage::KernelRing`] is set from the
    /// kernel's counters by [`set_kernel_counters`](Self::set_kernel_counters).
    #[must_use]
    pub fn events_lost(&self, stage: LossStage) -> Counter {
        self.events_lost
            .get_or_create_owned(&[("stage", stage.as_str())])
    }

    #[must_use]
    pub fn alerts(&self, kind: PatternKind) -> Counter {
        self.alerts
            .get_or_create_owned(&[("kind", pattern_label(kind))])
    }

    /// Counts a reload that ended at `at`.
    pub fn record_reload(&self, result: ReloadResult, at: SystemTime) {
        self.reloads
            .get_or_create(&[("result", result.as_str())])
            .inc();
        let seconds = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        self.reload_last.set(seconds);
    }

    /// The policy in force: `version` is its content hash, `generation` the daemon's count of
    /// policies applied. Replaces the previous series.
    pub fn set_policy(&self, version: &str, generation: u64) {
        self.policy.set(version, generation);
    }

    /// The OpenMetrics text exposition of every metric, `# EOF` included.
    ///
    /// # Errors
    /// Only when a collector fails to format, which writing to a `String` never does.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A counter family with every series created at 0, so that a scrape shows what can be counted
/// before anything is.
fn preset<const N: usize>(labels: [(&'static str, &'static str); N]) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for label in labels {
        drop(family.get_or_create(&[label]));
    }
    family
}
