//! Metrics read at scrape time from figures kept elsewhere: nothing is copied on the hot path.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use enforcer_common::counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::sinks::SinkStats;

const COUNTERS: usize = counter::COUNT as usize;

/// The kernel's verdict counters as the daemon last read them.
#[derive(Debug)]
pub(super) struct KernelCollector {
    values: [AtomicU64; COUNTERS],
}

impl Default for KernelCollector {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl KernelCollector {
    pub fn set(&self, values: &[u64]) {
        for (index, slot) in self.values.iter().enumerate() {
            let value = values.get(index).copied().unwrap_or(0);
            slot.store(value, Ordering::Relaxed);
        }
    }

    fn get(&self, index: u32) -> u64 {
        self.values
            .get(index as usize)
            .map_or(0, |value| value.load(Ordering::Relaxed))
    }
}

/// Each verdict's total and the part of it decided on arrival; the kernel counts both, so that
/// the allowed path pays one increment when it leaves and two when it arrives.
const VERDICTS: [(&str, u32, u32); 3] = [
    ("allowed", counter::ALLOWED, counter::INGRESS_ALLOWED),
    ("denied", counter::DENIED, counter::INGRESS_DENIED),
    ("audited", counter::AUDITED, counter::INGRESS_AUDITED),
];

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut verdicts = encoder.encode_descriptor(
            "enforcer_verdicts",
            "Connections the kernel judged, by direction (egress: leaving, ingress: arriving) and verdict",
            None,
            MetricType::Counter,
        )?;
        for (verdict, total, arriving) in VERDICTS {
            // Read apart from the total: a verdict between the two reads may make the arriving
            // part briefly the larger.
            let ingress = self.get(arriving);
            let egress = self.get(total).saturating_sub(ingress);
            for (direction, value) in [("egress", egress), ("ingress", ingress)] {
                let labels = [("direction", direction), ("verdict", verdict)];
                ConstCounter::new(value).encode(verdicts.encode_family(&labels)?)?;
            }
        }
        let mut all = encoder.encode_descriptor(
            "enforcer_kernel_counter",
            "Every counter of the kernel programs, by its name in enforcer-common",
            None,
            MetricType::Counter,
        )?;
        for (index, name) in (0..counter::COUNT).zip(counter::NAMES) {
            let labels = [("name", name)];
            ConstCounter::new(self.get(index)).encode(all.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Every sink's [`SinkStats`], labelled by [`super::sink_label`].
#[derive(Debug)]
pub(super) struct SinkCollector {
    sinks: Vec<(String, Arc<SinkStats>)>,
}

impl SinkCollector {
    pub fn new(sinks: Vec<(String, Arc<SinkStats>)>) -> Self {
        Self { sinks }
    }
}

type StatField = fn(&SinkStats) -> &AtomicU64;

/// Name (without `_total`), help and field of each counter a sink keeps.
const SINK_COUNTERS: [(&str, &str, StatField); 9] = [
    (
        "enforcer_sink_delivered",
        "Reports the sink's destination accepted",
        |stats| &stats.delivered,
    ),
    (
        "enforcer_sink_delivered_attempts",
        "Attempts the delivered reports stand for",
        |stats| &stats.delivered_attempts,
    ),
    (
        "enforcer_sink_dropped",
        "Reports lost because the sink's queue was full",
        |stats| &stats.dropped,
    ),
    (
        "enforcer_sink_dropped_attempts",
        "Attempts the dropped reports stand for",
        |stats| &stats.dropped_attempts,
    ),
    (
        "enforcer_sink_failed",
        "Reports lost because delivery failed for good",
        |stats| &stats.failed,
    ),
    (
        "enforcer_sink_failed_attempts",
        "Attempts the failed reports stand for",
        |stats| &stats.failed_attempts,
    ),
    (
        "enforcer_sink_offered",
        "Reports handed to the sink's queue",
        |stats| &stats.offered,
    ),
    (
        "enforcer_sink_offered_attempts",
        "Attempts the offered reports stand for",
        |stats| &stats.offered_attempts,
    ),
    (
        "enforcer_sink_retries",
        "Deliveries that failed and were retried",
        |stats| &stats.retries,
    ),
];

const SINK_GAUGES: [(&str, &str, StatField); 2] = [
    (
        "enforcer_sink_queue_depth",
        "Reports waiting in the sink's queue or in the batch being delivered",
        |stats| &stats.queued,
    ),
    (
        "enforcer_sink_connected",
        "1 while the sink's last delivery succeeded, else 0",
        |stats| &stats.connected,
    ),
];

impl Collector for SinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, field) in SINK_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (label, stats) in &self.sinks {
                let value = field(stats).load(Ordering::Relaxed);
                let labels = [("sink", label.as_str())];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, field) in SINK_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (label, stats) in &self.sinks {
                let value = field(stats).load(Ordering::Relaxed);
                let labels = [("sink", label.as_str())];
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The policy in force, as an info metric: one series, replaced when the policy changes.
#[derive(Debug, Default)]
pub(super) struct PolicyCollector {
    current: Mutex<Option<(String, String)>>,
}

impl PolicyCollector {
    pub fn set(&self, version: &str, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *current = Some((version.to_owned(), generation.to_string()));
    }
}

impl Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((version, generation)) = current.as_ref() else {
            return Ok(());
        };
        let mut info = encoder.encode_descriptor(
            "enforcer_policy",
            "The policy in force: its content hash and generation",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[
            ("version", version.as_str()),
            ("generation", generation.as_str()),
        ])
    }
}
