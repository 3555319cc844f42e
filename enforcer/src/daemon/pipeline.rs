//! The event pipeline: one task reads the kernel's ring buffer and enriches what it reads, one
//! writes records to the sink. They are joined by a bounded channel, so a slow sink makes the
//! reader wait and the ring buffer fill (the kernel then counts what it cannot write), and
//! neither ever waits on the reconciler.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::revoke::{Revocation, Revoker};
use crate::{
    events::{Aggregator, Enricher, FlowRecord, PolicyContext, PolicyRejection, decode},
    sinks::JsonLines,
};

/// Events handled per turn before the reader looks at its other inputs.
const EVENTS_PER_TURN: usize = 512;

/// Records waiting for the sink.
pub const SINK_QUEUE: usize = 4096;

/// How long arrivals from one source to one destination are collapsed into one record.
const SWEEP_WINDOW: Duration = Duration::from_secs(1);

/// What the sink task writes.
#[derive(Debug)]
pub enum Outgoing {
    Flow(Box<FlowRecord>),
    Rejection(Box<PolicyRejection>),
}

/// Reads the ring buffer until `cancel`, then drains what is left and returns. Revoked flows'
/// sockets go to `revoker` as they are read.
pub async fn read_events(
    mut ring: AsyncFd<RingBuf<MapData>>,
    mut enricher: Enricher,
    mut revoker: Revoker,
    mut contexts: watch::Receiver<BTreeMap<u32, Arc<PolicyContext>>>,
    unknown: watch::Sender<u64>,
    out: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
) {
    enricher.set_generations(contexts.borrow_and_update().clone());
    let mut sweeps = Aggregator::new(SWEEP_WINDOW);
    let mut sweep_check = tokio::time::interval(SWEEP_WINDOW / 4);
    sweep_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let records = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            changed = contexts.changed() => {
                if changed.is_err() { break; }
                enricher.set_generations(contexts.borrow_and_update().clone());
                continue;
            }
            _ = sweep_check.tick() => sweeps.expire(Instant::now()),
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(error) => {
                        error!(%error, "waiting for events failed; the event reader stops");
                        break;
                    }
                };
                let records = drain(guard.get_inner_mut(), &mut enricher, &mut revoker, EVENTS_PER_TURN);
                // A full turn may have left events behind: stay ready so the next turn reads on.
                if records.read < EVENTS_PER_TURN {
                    guard.clear_ready();
                }
                unknown.send_replace(enricher.unknown_generations());
                let now = Instant::now();
                records
                    .records
                    .into_iter()
                    .filter_map(|record| sweeps.admit(record, now))
                    .collect()
            }
        };
        if !send_all(&out, records).await {
            return;
        }
    }
    let records = drain(ring.get_mut(), &mut enricher, &mut revoker, usize::MAX);
    unknown.send_replace(enricher.unknown_generations());
    let now = Instant::now();
    let mut last: Vec<FlowRecord> = records
        .records
        .into_iter()
        .filter_map(|record| sweeps.admit(record, now))
        .collect();
    last.extend(sweeps.flush());
    send_all(&out, last).await;
}

/// Hands `records` to the sink; `false` when the sink is gone.
async fn send_all(out: &mpsc::Sender<Outgoing>, records: Vec<FlowRecord>) -> bool {
    for record in records {
        if out.send(Outgoing::Flow(Box::new(record))).await.is_err() {
            return false;
        }
    }
    true
}

struct Drained {
    read: usize,
    records: Vec<FlowRecord>,
}

fn drain(
    ring: &mut RingBuf<MapData>,
    enricher: &mut Enricher,
    revoker: &mut Revoker,
    limit: usize,
) -> Drained {
    let mut drained = Drained {
        read: 0,
        records: Vec::new(),
    };
    let clock = Clock::read();
    while drained.read < limit {
        let Some(item) = ring.next() else {
            break;
        };
        drained.read += 1;
        match decode(&item) {
            Ok(event) => {
                if let Some(revocation) = Revocation::of(&event) {
                    revoker.revoke(revocation);
                }
                drained
                    .records
                    .push(enricher.enrich(&event, clock.decided_at(event.boot_ns)));
            }
            Err(error) => warn!(%error, "undecodable event"),
        }
    }
    drained
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

/// Writes records until every sender is gone, on a thread of its own: sink writes block (a full
/// pipe, a slow disk), and must not hold up the async tasks. A failed write is counted and
/// logged, never fatal: the daemon's exit is not the sink's to decide.
pub fn write_events(mut sink: JsonLines, mut incoming: mpsc::Receiver<Outgoing>) {
    let mut undelivered = 0_u64;
    while let Some(outgoing) = incoming.blocking_recv() {
        let sent = match &outgoing {
            Outgoing::Flow(record) => sink.send(record),
            Outgoing::Rejection(rejection) => sink.send_rejection(rejection),
        };
        if let Err(error) = sent {
            undelivered += 1;
            error!(%error, undelivered, "an event could not be written");
        }
    }
    if undelivered > 0 {
        warn!(undelivered, "events the sink failed to write");
    }
}
