//! Lateral-movement detection: one source denied against many distinct targets within a window
//! raises one [`LateralMovementAlert`] beside the denials themselves. Pure: the caller supplies
//! the records and the clock, so that the rules below are tested without a kernel or a timer.
//!
//! # What counts
//!
//! - Only [`Verdict::Denied`] records. An audited attempt went through, so a pattern of them is
//!   not a refused one; and the alert carries no verdict or mode a sink could tell it apart by
//!   (rendered, it is a refusal). Audit mode still shows every attempt as its own audit event.
//! - Never a revoked flow: a policy change that cuts a workload's established connections to many
//!   services is the operator's doing, not the source trying targets.
//! - A target is a distinct (destination address, port, protocol), the port `None` for ICMP.
//!   Repeats of a target add to the attempts but never to the targets: a legitimate client that
//!   is refused retries the same service, a scanner tries new ones. An aggregated record counts
//!   `count` attempts, and each of its `swept_ports` is a target.
//!
//! # One source
//!
//! The source is the identity at its address (identity name, source IP) in one direction, not a
//! process: a loop that forks one probe per target (`for p in …; do nc -z db $p; done`,
//! `xargs -P`) would otherwise be as many sources that each try one target and never alert. An
//! inbound arrival has no process anyway. The process (and workload) of the denial that crossed
//! the threshold is reported in the alert for attribution.
//!
//! # Window and re-arming
//!
//! The window slides: a target counts while its first attempt lies within the last `window`, so a
//! scan straddling a window boundary is not split. When the distinct targets reach the threshold
//! the source raises one alert, then none until it has been quiet (no counted denial) for a whole
//! window: a scan of 50 ports, or one that goes on for an hour, is one alert; the same source
//! starting again after a quiet window is a new pattern.
//!
//! # Memory
//!
//! At most `max_sources` sources are tracked. A new one evicts, of the few least recently active,
//! the one that tried the fewest targets: a flood of (possibly spoofed) one-off sources pushes
//! out its own kind, not a source half-way through a scan. A source holds at most
//! `distinct_targets` targets: counting stops at the alert.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant, SystemTime},
};

use lru::LruCache;

use super::{
    AlertTarget, FlowRecord, LateralMovementAlert, NETWORK_SERVICE_DISCOVERY, PatternKind, Verdict,
};

/// Thresholds and bounds of a [`Detector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// How far back a target counts.
    pub window: Duration,
    /// Distinct targets within `window` that raise an alert.
    pub distinct_targets: u32,
    /// At most this many targets are listed in an alert (the counts stay exact).
    pub max_listed_targets: usize,
    /// At most this many sources are tracked at once (at least one is).
    pub max_sources: usize,
}

impl Default for DetectorConfig {
    /// 10 distinct targets within 60 s. A misconfigured client refused by one service retries
    /// that one service and never crosses it, nor does a client whose few allowed peers include
    /// one denied; nmap's default scan (the top 1000 ports) crosses it within its first second,
    /// and even a slow scan at one probe every 5 s does within the minute. 16 targets listed is
    /// enough for a person to see the pattern and keeps an alert a few kilobytes. 4096 sources
    /// covers every workload of a node and the active scanners beyond, in about a megabyte.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            distinct_targets: 10,
            max_listed_targets: 16,
            max_sources: 4096,
        }
    }
}

/// How many of the least recently active sources an eviction chooses from: enough that a scanner
/// outlives a flood of one-off sources, few enough that an eviction costs nothing to speak of.
const EVICTION_CANDIDATES: usize = 8;

/// One source: the identity at its address, in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SourceKey {
    identity: String,
    ip: IpAddr,
    outbound: bool,
}

/// A target by what makes it distinct.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TargetKey {
    ip: IpAddr,
    port: Option<u16>,
    protocol: u8,
}

/// A target within the window: its identity name and the attempts against it so far.
#[derive(Debug)]
struct Tried {
    name: String,
    attempts: u64,
}

/// What is known of one source.
#[derive(Debug, Default)]
struct SourceState {
    /// Targets by the first attempt within the window (monotonic time, wall time), oldest first.
    order: VecDeque<(Instant, SystemTime, TargetKey)>,
    targets: HashMap<TargetKey, Tried>,
    /// Sum of `targets`' attempts.
    attempts: u64,
    last_seen: Option<Instant>,
    alerted: bool,
}

/// Watches denials for scans, sweeps and fan-out (see the module docs for the rules).
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    sources: LruCache<SourceKey, SourceState>,
}

impl Detector {
    #[must_use]
    pub fn new(config: DetectorConfig) -> Self {
        let capacity = NonZeroUsize::new(config.max_sources).unwrap_or(NonZeroUsize::MIN);
        Self {
            config,
            sources: LruCache::new(capacity),
        }
    }

    /// Counts `record` (decided at `now`) against its source; returns the alert when it makes the
    /// source's distinct targets reach the threshold.
    pub fn observe(&mut self, record: &FlowRecord, now: Instant) -> Option<LateralMovementAlert> {
        if record.verdict != Verdict::Denied || record.revoked {
            return None;
        }
        let key = SourceKey {
            identity: record.src.name.clone(),
            ip: record.src.ip,
            outbound: record.outbound,
        };
        let config = self.config;
        let window = config.window;
        if !self.sources.contains(&key) && self.sources.len() >= self.sources.cap().get() {
            self.evict();
        }
        let state = self.sources.get_or_insert_mut(key, SourceState::default);
        if state
            .last_seen
            .is_some_and(|last| now.saturating_duration_since(last) >= window)
        {
            *state = SourceState::default();
        }
        state.last_seen = Some(now);
        if state.alerted {
            return None;
        }
        state.forget_before(now, window);
        let threshold = usize::try_from(config.distinct_targets).unwrap_or(usize::MAX);
        let ports: Vec<Option<u16>> = if record.swept_ports.is_empty() {
            vec![record.dst.port]
        } else {
            record.swept_ports.iter().copied().map(Some).collect()
        };
        let mut attempts = u64::from(record.count);
        for (index, port) in ports.iter().enumerate() {
            let target = TargetKey {
                ip: record.dst.ip,
                port: *port,
                protocol: record.protocol,
            };
            // An aggregated record's attempts go to its first target, so that they are counted
            // once however many ports it swept.
            let share = if index == 0 {
                std::mem::take(&mut attempts)
            } else {
                0
            };
            state.attempt(target, &record.dst.name, share, now, record.time);
            if state.targets.len() >= threshold {
                state.alerted = true;
                return Some(state.alert(record, &config));
            }
        }
        None
    }

    /// Forgets the sources that have been quiet for a whole window: their patterns are over, and
    /// an alerted source is re-armed.
    pub fn expire(&mut self, now: Instant) {
        let window = self.config.window;
        while let Some((_, state)) = self.sources.peek_lru() {
            let idle = state
                .last_seen
                .is_none_or(|last| now.saturating_duration_since(last) >= window);
            if !idle {
                break;
            }
            self.sources.pop_lru();
        }
    }

    /// Makes room for a new source: of the least recently active, the one with the fewest
    /// targets (the least recent of those).
    fn evict(&mut self) {
        let victim = self
            .sources
            .iter()
            .rev()
            .take(EVICTION_CANDIDATES)
            .min_by_key(|(_, state)| state.targets.len())
            .map(|(key, _)| key.clone());
        if let Some(victim) = victim {
            self.sources.pop(&victim);
        }
    }

    /// How many sources are tracked now.
    #[must_use]
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

impl SourceState {
    /// Drops the targets first tried a whole window before `now`, with their attempts.
    fn forget_before(&mut self, now: Instant, window: Duration) {
        while let Some((first, _, target)) = self.order.front() {
            if now.saturating_duration_since(*first) < window {
                break;
            }
            if let Some(tried) = self.targets.remove(target) {
                self.attempts = self.attempts.saturating_sub(tried.attempts);
            }
            self.order.pop_front();
        }
    }

    fn attempt(
        &mut self,
        target: TargetKey,
        name: &str,
        attempts: u64,
        now: Instant,
        time: SystemTime,
    ) {
        let tried = self.targets.entry(target).or_insert_with(|| {
            self.order.push_back((now, time, target));
            Tried {
                name: name.to_owned(),
                attempts: 0,
            }
        });
        tried.attempts = tried.attempts.saturating_add(attempts);
        self.attempts = self.attempts.saturating_add(attempts);
    }

    /// The alert of this source, which `record` has just brought to the threshold.
    fn alert(&self, record: &FlowRecord, config: &DetectorConfig) -> LateralMovementAlert {
        let destinations: HashSet<IpAddr> = self.targets.keys().map(|t| t.ip).collect();
        // A service is a port of a protocol; ICMP is one service without a port.
        let services: HashSet<(u8, Option<u16>)> =
            self.targets.keys().map(|t| (t.protocol, t.port)).collect();
        let kind = if destinations.len() == 1 {
            PatternKind::PortScan
        } else if services.len() == 1 {
            PatternKind::Sweep
        } else {
            PatternKind::FanOut
        };
        let targets = self
            .order
            .iter()
            .take(config.max_listed_targets)
            .map(|(_, _, target)| AlertTarget {
                ip: target.ip,
                port: target.port,
                protocol: target.protocol,
                name: self
                    .targets
                    .get(target)
                    .map(|tried| tried.name.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        LateralMovementAlert {
            time: record.time,
            first_seen: self.order.front().map_or(record.time, |(_, wall, _)| *wall),
            kind,
            technique: NETWORK_SERVICE_DISCOVERY,
            src: record.src.clone(),
            process: record.process.clone(),
            workload: record.workload.clone(),
            targets,
            distinct_targets: count(self.targets.len()),
            distinct_destinations: count(destinations.len()),
            distinct_ports: count(services.len()),
            attempts: self.attempts,
            window: config.window,
            policy_version: record.policy_version.clone(),
            outbound: record.outbound,
            ip_version: record.ip_version,
            node: record.node.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
