//! Sweeps: arrivals that no socket receives (closed ports, scans) are reported per source,
//! destination, protocol and decision once per window, with how many attempts and which ports,
//! rather than one event per packet. The first attempt is reported at once, so a single probe is
//! never delayed; what follows within the window becomes one record when the window closes.
//!
//! # Examples
//!
//! ```
//! # use std::time::{Duration, Instant};
//! # use enforcer::events::{Aggregator, FlowRecord};
//! # fn sweep(record: FlowRecord) {
//! let mut sweeps = Aggregator::new(Duration::from_secs(1));
//! let start = Instant::now();
//! assert!(sweeps.admit(record.clone(), start).is_some()); // the first: at once
//! assert!(sweeps.admit(record, start).is_none()); // the rest: counted
//! let summary = sweeps.expire(start + Duration::from_secs(1));
//! assert_eq!(summary[0].count, 1);
//! # }
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use super::{FlowRecord, Layer, Verdict};

/// Ports listed on one record at most; the count says how many attempts there were in all.
const MAX_PORTS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    audited: bool,
    rule: String,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// The last attempt: the summary carries its time and everything but count and port.
    last: FlowRecord,
    /// Attempts after the first, which was reported at once: the sum of their records' counts
    /// (the kernel may have aggregated them already).
    attempts: u32,
    /// When the earliest of those attempts was decided.
    first: Option<SystemTime>,
    ports: BTreeSet<u16>,
}

/// Collapses repeated arrivals into one record per window.
#[derive(Debug)]
pub struct Aggregator {
    window: Duration,
    open: BTreeMap<Key, Window>,
}

impl Aggregator {
    #[must_use]
    pub const fn new(window: Duration) -> Self {
        Self {
            window,
            open: BTreeMap::new(),
        }
    }

    /// The record to send now for `record`, if any: every record but an interface-layer one
    /// passes as it is; of those, the first of its window.
    pub fn admit(&mut self, record: FlowRecord, now: Instant) -> Option<FlowRecord> {
        if record.layer != Layer::Interface {
            return Some(record);
        }
        let key = Key {
            src: record.src.ip,
            dst: record.dst.ip,
            protocol: record.protocol,
            audited: record.verdict == Verdict::Audited,
            rule: record.rule.uid.clone(),
        };
        if let Some(window) = self.open.get_mut(&key) {
            window.attempts = window.attempts.saturating_add(record.count);
            let earliest = record.span.map_or(record.time, |(first, _)| first);
            window.first = Some(window.first.map_or(earliest, |first| first.min(earliest)));
            if let Some(port) = record.dst.port
                && window.ports.len() < MAX_PORTS
            {
                window.ports.insert(port);
            }
            window.last = record;
            return None;
        }
        self.open.insert(
            key,
            Window {
                opened: now,
                last: record.clone(),
                attempts: 0,
                first: None,
                ports: BTreeSet::new(),
            },
        );
        Some(record)
    }

    /// The summaries of the windows that closed by `now`: one for each that saw attempts after
    /// its first.
    pub fn expire(&mut self, now: Instant) -> Vec<FlowRecord> {
        let window = self.window;
        let closed: Vec<Key> = self
            .open
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.opened) >= window)
            .map(|(key, _)| key.clone())
            .collect();
        closed
            .into_iter()
            .filter_map(|key| self.open.remove(&key))
            .filter_map(summary)
            .collect()
    }

    /// Every open window's summary, for a daemon that stops.
    pub fn flush(&mut self) -> Vec<FlowRecord> {
        std::mem::take(&mut self.open)
            .into_values()
            .filter_map(summary)
            .collect()
    }
}

fn summary(window: Window) -> Option<FlowRecord> {
    if window.attempts == 0 {
        return None;
    }
    let mut record = window.last;
    record.count = window.attempts;
    record.span = window.first.map(|first| (first, record.time));
    if window.ports.len() > 1 {
        record.dst.port = None;
        record.swept_ports = window.ports.into_iter().collect();
    }
    Some(record)
}
