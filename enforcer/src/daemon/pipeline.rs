//! The event pipeline, three stages joined by bounded channels:
//!
//! 1. the reader ([`read_events`]) takes what the kernel reported: first attempts from the ring
//!    buffer (revoked flows' sockets go to the revoker as they are read), and each window's
//!    repeats from the aggregation map, drained when the window closes;
//! 2. the enricher ([`enrich_events`]) resolves each to a [`FlowRecord`] (identities, rule,
//!    process, workload), collapses interface-layer sweeps, and runs lateral-movement detection;
//! 3. the sinks (`crate::sinks`), each with a bounded queue of its own.
//!
//! Neither of the first two ever waits on the reconciler. A slow enricher makes the reader wait
//! (the ring buffer then fills, and the kernel counts what it cannot write); sinks never make the
//! enricher wait: what a sink's queue cannot hold is counted as that sink's loss.
//!
//! Accounting: every attempt the kernel reported leaves the enricher in exactly one flow report,
//! counted in the metrics (`enforcer_attempts_reported_total`, of which the repeats drained from
//! the aggregation map are `enforcer_attempts_aggregated_total`); each sink counts what it
//! delivered and lost.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use enforcer_common::{FLOW_EVENT_VERSION, FlowEvent, ReportKey, ReportRepeats};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::revoke::{Revocation, Revoker};
use crate::{
    datapath::{Drained, FLIP_GRACE, ReportWindows},
    events::{Aggregator, Detector, Enricher, FlowRecord, PolicyContext, Report, decode},
    metrics::{LossStage, Metrics},
    sinks::Fanout,
};

/// Events handled per turn before the reader looks at its other inputs.
const EVENTS_PER_TURN: usize = 512;

/// Attempts waiting between the reader and the enricher.
pub const RAW_QUEUE: usize = 8192;

/// How long arrivals from one source to one destination are collapsed into one record.
const SWEEP_WINDOW: Duration = Duration::from_secs(1);

/// One kernel report on its way to the enricher, stamped with wall-clock times.
#[derive(Debug)]
pub enum Raw {
    /// An attempt from the ring buffer.
    Attempt { event: FlowEvent, time: SystemTime },
    /// The repeats of one attempt in a window that closed.
    Repeats {
        event: FlowEvent,
        count: u64,
        first: SystemTime,
        last: SystemTime,
    },
}

/// The reader's inputs.
pub struct Reader {
    pub ring: AsyncFd<RingBuf<MapData>>,
    pub windows: ReportWindows,
    /// How long a window lasts: repeats are reported once per window.
    pub window: Duration,
    pub revoker: Revoker,
    pub metrics: Arc<Metrics>,
}

/// Reads the ring buffer and closes aggregation windows until `cancel`; then closes the window
/// in progress and drains what is left, and returns.
pub async fn read_events(mut reader: Reader, out: mpsc::Sender<Raw>, cancel: CancellationToken) {
    // The first tick is at once: what the kernel counted before this daemon (while none ran, or
    // after an earlier one's last flip) is reported now, not a window later.
    let mut windows = tokio::time::interval(reader.window);
    windows.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The half closed at the last flip and when it may be drained.
    let mut closing: Option<(u8, tokio::time::Instant)> = None;
    loop {
        let drain_at = closing.map(|(_, at)| at);
        let raw = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = sleep_until(drain_at) => match closing.take() {
                Some((half, _)) => drain_window(&mut reader, half),
                None => continue,
            },
            _ = windows.tick(), if closing.is_none() => {
                match reader.windows.flip() {
                    Ok(half) => closing = Some((half, tokio::time::Instant::now() + FLIP_GRACE)),
                    Err(error) => {
                        warn!(%error, "closing an aggregation window failed; its repeats stay counted in the kernel");
                    }
                }
                continue;
            }
            guard = reader.ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(error) => {
                        error!(%error, "waiting for events failed; the event reader stops");
                        break;
                    }
                };
                let raw = read_ring(guard.get_inner_mut(), &mut reader.revoker, &reader.metrics, EVENTS_PER_TURN);
                // A full turn may have left events behind: stay ready so the next turn reads on.
                if raw.len() < EVENTS_PER_TURN {
                    guard.clear_ready();
                }
                raw
            }
        };
        if !send_all(&out, raw).await {
            return;
        }
    }
    let mut last = read_ring(
        reader.ring.get_mut(),
        &mut reader.revoker,
        &reader.metrics,
        usize::MAX,
    );
    if let Some((half, _)) = closing.take() {
        tokio::time::sleep(FLIP_GRACE).await;
        last.extend(drain_window(&mut reader, half));
    }
    // The window in progress: its repeats so far, so that a daemon that stops reports them.
    // Repeats counted after the flip stay in the kernel for the next daemon.
    match reader.windows.flip() {
        Ok(half) => {
            tokio::time::sleep(FLIP_GRACE).await;
            last.extend(drain_window(&mut reader, half));
        }
        Err(error) => warn!(%error, "closing the last aggregation window failed"),
    }
    last.extend(read_ring(
        reader.ring.get_mut(),
        &mut reader.revoker,
        &reader.metrics,
        usize::MAX,
    ));
    send_all(&out, last).await;
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands `raw` to the enricher; `false` when it is gone.
async fn send_all(out: &mpsc::Sender<Raw>, raw: Vec<Raw>) -> bool {
    for item in raw {
        if out.send(item).await.is_err() {
            return false;
        }
    }
    true
}

fn read_ring(
    ring: &mut RingBuf<MapData>,
    revoker: &mut Revoker,
    metrics: &Metrics,
    limit: usize,
) -> Vec<Raw> {
    let mut raw = Vec::new();
    let clock = Clock::read();
    let mut read = 0;
    while read < limit {
        let Some(item) = ring.next() else {
            break;
        };
        read += 1;
        match decode(&item) {
            Ok(event) => {
                if let Some(revocation) = Revocation::of(&event) {
                    revoker.revoke(revocation);
                }
                raw.push(Raw::Attempt {
                    event,
                    time: clock.decided_at(event.boot_ns),
                });
            }
            Err(error) => {
                metrics.events_lost(LossStage::Pipeline).inc();
                warn!(%error, "undecodable event");
            }
        }
    }
    raw
}

fn drain_window(reader: &mut Reader, half: u8) -> Vec<Raw> {
    let drained = match reader.windows.drain(half) {
        Ok(drained) => drained,
        Err(error) => {
            warn!(%error, "draining an aggregation window failed; its repeats are drained when it closes again");
            return Vec::new();
        }
    };
    let clock = Clock::read();
    let aggregated = reader.metrics.attempts_aggregated();
    drained
        .into_iter()
        .map(|(key, repeats): Drained| {
            aggregated.inc_by(repeats.count);
            let event = event_of(&key, &repeats);
            // The first attempt's record may have been lost to a full ring buffer: a revoked
            // socket is aborted all the same (aborting one already gone does nothing).
            if let Some(revocation) = Revocation::of(&event) {
                reader.revoker.revoke(revocation);
            }
            Raw::Repeats {
                event,
                count: repeats.count,
                first: clock.decided_at(repeats.first_ns),
                last: clock.decided_at(repeats.last_ns),
            }
        })
        .collect()
}

/// The attempt an aggregation entry counts, as the ring buffer would have carried it (the time
/// of its latest repeat).
const fn event_of(key: &ReportKey, repeats: &ReportRepeats) -> FlowEvent {
    FlowEvent {
        version: FLOW_EVENT_VERSION,
        hook: key.hook,
        verdict: key.verdict,
        reason: key.reason,
        protocol: key.protocol,
        ip_version: key.ip_version,
        flags: key.flags,
        generation: key.generation,
        rule_id: key.rule_id,
        src_identity: key.src_identity,
        dst_identity: key.dst_identity,
        pid: key.pid,
        uid: key.uid,
        src_port: repeats.src_port,
        dst_port: key.dst_port,
        _pad1: 0,
        cgroup_id: key.cgroup_id,
        boot_ns: repeats.last_ns,
        src_addr: key.src_addr,
        dst_addr: key.dst_addr,
        comm: repeats.comm,
        socket_cookie: key.socket_cookie,
        netns_cookie: repeats.netns_cookie,
    }
}

/// The enricher's inputs.
pub struct Enrichment {
    pub enricher: Enricher,
    pub contexts: watch::Receiver<BTreeMap<u32, Arc<PolicyContext>>>,
    pub unknown: watch::Sender<u64>,
    /// `None`: lateral-movement detection is off.
    pub detector: Option<Detector>,
    pub metrics: Arc<Metrics>,
}

/// Enriches what the reader sends until it is gone, then flushes open sweeps and returns.
pub async fn enrich_events(
    mut enrichment: Enrichment,
    mut incoming: mpsc::Receiver<Raw>,
    out: Arc<Fanout>,
) {
    let mut contexts = enrichment.contexts.clone();
    enrichment
        .enricher
        .set_generations(contexts.borrow_and_update().clone());
    let mut contexts_open = true;
    let mut sweeps = Aggregator::new(SWEEP_WINDOW);
    let mut housekeeping = tokio::time::interval(SWEEP_WINDOW / 4);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let records: Vec<FlowRecord> = tokio::select! {
            biased;
            changed = contexts.changed(), if contexts_open => {
                if changed.is_ok() {
                    enrichment.enricher.set_generations(contexts.borrow_and_update().clone());
                } else {
                    contexts_open = false;
                }
                continue;
            }
            _ = housekeeping.tick() => {
                let now = Instant::now();
                if let Some(detector) = &mut enrichment.detector {
                    detector.expire(now);
                }
                sweeps.expire(now)
            }
            raw = incoming.recv() => {
                let Some(raw) = raw else { break };
                let record = enrich(&mut enrichment.enricher, &raw);
                enrichment.unknown.send_replace(enrichment.enricher.unknown_generations());
                sweeps.admit(record, Instant::now()).into_iter().collect()
            }
        };
        publish(&mut enrichment, records, &out);
    }
    let rest = sweeps.flush();
    publish(&mut enrichment, rest, &out);
}

fn enrich(enricher: &mut Enricher, raw: &Raw) -> FlowRecord {
    match raw {
        Raw::Attempt { event, time } => enricher.enrich(event, *time),
        Raw::Repeats {
            event,
            count,
            first,
            last,
        } => {
            let mut record = enricher.enrich(event, *last);
            // Beyond u32::MAX repeats in one window (400 million a second for 10 s) the count
            // saturates.
            record.count = u32::try_from(*count).unwrap_or(u32::MAX);
            record.span = Some((*first, *last));
            record
        }
    }
}

/// Runs detection over `records` and hands them, and any alert, to the sinks (which never
/// wait: a sink's full queue is that sink's counted loss).
fn publish(enrichment: &mut Enrichment, records: Vec<FlowRecord>, out: &Fanout) {
    let now = Instant::now();
    let reported = enrichment.metrics.attempts_reported();
    for record in records {
        let alert = enrichment
            .detector
            .as_mut()
            .and_then(|detector| detector.observe(&record, now));
        reported.inc_by(u64::from(record.count));
        out.publish(Arc::new(Report::Flow(record)));
        if let Some(alert) = alert {
            enrichment.metrics.alerts(alert.kind).inc();
            out.publish(Arc::new(Report::Alert(alert)));
        }
    }
}

/// Turns the kernel's decision stamps (`CLOCK_BOOTTIME`) into wall-clock times, so that events
/// read late (a burst, or a daemon restarted after a crash) keep the time they were decided at.
/// Both clocks are read once per batch.
struct Clock {
    now: SystemTime,
    boot_now: Option<Duration>,
}

impl Clock {
    fn read() -> Self {
        let boot_now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .ok()
            .map(|ts| {
                Duration::new(
                    u64::try_from(ts.tv_sec()).unwrap_or_default(),
                    u32::try_from(ts.tv_nsec()).unwrap_or_default(),
                )
            });
        Self {
            now: SystemTime::now(),
            boot_now,
        }
    }

    fn decided_at(&self, boot_ns: u64) -> SystemTime {
        let Some(boot_now) = self.boot_now else {
            return self.now;
        };
        let age = boot_now.saturating_sub(Duration::from_nanos(boot_ns));
        self.now.checked_sub(age).unwrap_or(self.now)
    }
}
