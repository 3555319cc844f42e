//! One sink's task: batches from its queue, delivered in order, each retried (with backoff and a
//! fresh connection) until it goes through or the shutdown deadline passes.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use crate::{
    daemon::error_chain,
    events::Report,
    sinks::{Sink, SinkError, SinkStats},
};

/// Reports handed to one `deliver`: enough to amortise a write or a round trip, few enough
/// that a retried batch is cheap.
const BATCH: usize = 256;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A sink that stays down is logged about once per interval, not once per retry.
const LOG_INTERVAL: Duration = Duration::from_secs(30);

pub(super) struct Worker {
    name: String,
    sink: Box<dyn Sink>,
    queue: mpsc::Receiver<Arc<Report>>,
    stats: Arc<SinkStats>,
    deadline: watch::Receiver<Option<Instant>>,
    outage: Option<Outage>,
}

/// A run of failed deliveries, for the rate-limited log.
struct Outage {
    since: Instant,
    retries: u64,
    logged: Instant,
}

impl Worker {
    pub(super) fn new(
        name: String,
        sink: Box<dyn Sink>,
        queue: mpsc::Receiver<Arc<Report>>,
        stats: Arc<SinkStats>,
        deadline: watch::Receiver<Option<Instant>>,
    ) -> Self {
        Self {
            name,
            sink,
            queue,
            stats,
            deadline,
            outage: None,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Delivers batch after batch until the queue is closed and empty, or the deadline passes;
    /// then counts what is left as failed.
    pub(super) async fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let received = tokio::select! {
                biased;
                () = deadline_passed(&mut self.deadline) => break,
                received = self.queue.recv_many(&mut batch, BATCH) => received,
            };
            if received == 0 || !self.deliver(&batch).await {
                break;
            }
            batch.clear();
        }
        self.queue.close();
        while let Ok(report) = self.queue.try_recv() {
            batch.push(report);
        }
        if !batch.is_empty() {
            tracing::warn!(
                sink = %self.name,
                reports = batch.len(),
                "shutdown deadline passed: reports left undelivered"
            );
        }
        self.settle(&batch, &self.stats.failed, &self.stats.failed_attempts);
    }

    /// Delivers `batch`, retrying until it goes through (true) or the deadline passes (false).
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> bool {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let outcome = tokio::select! {
                biased;
                () = deadline_passed(&mut self.deadline) => return false,
                outcome = self.sink.deliver(batch) => outcome,
            };
            match outcome {
                Ok(()) => {
                    self.stats.connected.store(1, Ordering::Relaxed);
                    self.settle(batch, &self.stats.delivered, &self.stats.delivered_attempts);
                    self.recovered();
                    return true;
                }
                Err(error) => {
                    self.stats.connected.store(0, Ordering::Relaxed);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.failed(&error, backoff);
                }
            }
            tokio::select! {
                biased;
                () = deadline_passed(&mut self.deadline) => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                biased;
                () = deadline_passed(&mut self.deadline) => return false,
                () = self.sink.reset() => {}
            }
        }
    }

    /// Moves `batch` out of `queued` into the given pair of counters (the outcome first, so that
    /// a reader never sees the reports nowhere).
    fn settle(
        &self,
        batch: &[Arc<Report>],
        reports: &std::sync::atomic::AtomicU64,
        attempts: &std::sync::atomic::AtomicU64,
    ) {
        let count = batch.len() as u64;
        let batch_attempts: u64 = batch.iter().map(|report| report.attempts()).sum();
        reports.fetch_add(count, Ordering::Relaxed);
        attempts.fetch_add(batch_attempts, Ordering::Relaxed);
        self.stats.queued.fetch_sub(count, Ordering::Relaxed);
        self.stats
            .queued_attempts
            .fetch_sub(batch_attempts, Ordering::Relaxed);
    }

    fn failed(&mut self, error: &SinkError, backoff: Duration) {
        let now = Instant::now();
        match &mut self.outage {
            None => {
                tracing::warn!(
                    sink = %self.name,
                    error = %error_chain(error),
                    retry_in = ?backoff,
                    "delivery failed; retrying the batch"
                );
                self.outage = Some(Outage {
                    since: now,
                    retries: 1,
                    logged: now,
                });
            }
            Some(outage) => {
                outage.retries += 1;
                if now.duration_since(outage.logged) >= LOG_INTERVAL {
                    outage.logged = now;
                    tracing::warn!(
                        sink = %self.name,
                        error = %error_chain(error),
                        retries = outage.retries,
                        down_for = ?now.duration_since(outage.since),
                        queued = self.stats.queued.load(Ordering::Relaxed),
                        dropped = self.stats.dropped.load(Ordering::Relaxed),
                        "delivery still failing"
                    );
                }
            }
        }
    }

    fn recovered(&mut self) {
        if let Some(outage) = self.outage.take() {
            tracing::info!(
                sink = %self.name,
                retries = outage.retries,
                down_for = ?outage.since.elapsed(),
                "delivering again"
            );
        }
    }
}

/// Resolves once a deadline is set and has passed; never while there is none. A fan-out gone
/// without setting one counts as a deadline passed.
async fn deadline_passed(deadline: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let current = *deadline.borrow_and_update();
        if let Some(at) = current {
            tokio::time::sleep_until(at.into()).await;
            return;
        }
        if deadline.changed().await.is_err() {
            return;
        }
    }
}
