//! The fan-out: every sink on a task of its own, behind a bounded queue of its own, on a tokio
//! runtime of its own (on threads of its own), so that nothing a sink does (a black-holed TCP
//! peer, a full disk, a slow collector) can stall the daemon's runtime, the event pipeline or
//! the other sinks. Publishing never waits: a report that finds a sink's queue full is lost for
//! that sink only, and counted there.

mod worker;

#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};

use self::worker::Worker;
use super::{
    FileSink, Sink, SinkError, SinkKind, SinkSpec, SinkStats, StdoutSink, SyslogSink,
    otlp::OtlpSink,
};
use crate::events::{Report, ocsf::Product};

/// Threads of the sink runtime: two, so that a sink that blocks a thread by mistake still
/// leaves one for the others (the daemon itself runs elsewhere).
const WORKER_THREADS: usize = 2;
const THREAD_NAME: &str = "enforcer-sinks";
/// How long the runtime waits for blocking file writes at the very end, after the deadline.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// A sink ready to run: what [`Fanout::start`] builds from a [`SinkSpec`], or any other
/// [`Sink`] (a test's, a future kind's).
pub struct NamedSink {
    pub name: String,
    pub sink: Box<dyn Sink>,
    /// Reports the sink's queue holds (at least 1).
    pub queue: usize,
}

impl std::fmt::Debug for NamedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedSink")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// The running sinks. Dropping it without [`Fanout::shutdown`] gives up on what is queued at
/// once (counted as failed) and does not wait for the sink thread.
#[derive(Debug)]
pub struct Fanout {
    senders: Vec<mpsc::Sender<Arc<Report>>>,
    stats: Vec<(String, Arc<SinkStats>)>,
    control: Option<Control>,
}

/// What stops the sink thread: the deadline for the last deliveries (none until shutdown), and
/// the thread's word that its runtime is gone.
#[derive(Debug)]
struct Control {
    deadline: watch::Sender<Option<Instant>>,
    finished: oneshot::Receiver<()>,
    thread: JoinHandle<()>,
}

impl Fanout {
    /// Builds every sink of `specs` and starts them.
    ///
    /// # Errors
    /// When a sink cannot be built (a file that cannot be opened, an unreadable CA file, a bad
    /// endpoint), a queue of size 0, or when the sink thread cannot start.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the fan-out owns its configuration, as the daemon hands it over; each sink keeps a copy"
    )]
    pub fn start(specs: Vec<SinkSpec>, product: Product) -> Result<Self, SinkError> {
        let sinks = specs
            .into_iter()
            .map(|spec| build(spec, &product))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_sinks(sinks)
    }

    /// Starts sinks that are already built.
    ///
    /// # Errors
    /// A queue of size 0, or a sink thread that cannot start.
    pub fn from_sinks(sinks: Vec<NamedSink>) -> Result<Self, SinkError> {
        if let Some(sink) = sinks.iter().find(|sink| sink.queue == 0) {
            return Err(SinkError::EmptyQueue {
                sink: sink.name.clone(),
            });
        }
        let (deadline, deadline_seen) = watch::channel(None);
        let mut senders = Vec::with_capacity(sinks.len());
        let mut stats = Vec::with_capacity(sinks.len());
        let mut workers = Vec::with_capacity(sinks.len());
        for NamedSink { name, sink, queue } in sinks {
            let (sender, receiver) = mpsc::channel(queue);
            let counters = Arc::new(SinkStats::default());
            workers.push(Worker::new(
                name.clone(),
                sink,
                receiver,
                Arc::clone(&counters),
                deadline_seen.clone(),
            ));
            senders.push(sender);
            stats.push((name, counters));
        }
        let (finished_sender, finished) = oneshot::channel();
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                // Built (and dropped) on this thread, never in the caller's async context, where
                // dropping a runtime panics.
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKER_THREADS)
                    .thread_name(THREAD_NAME)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_sender.send(Err(error));
                        return;
                    }
                };
                let _ = ready_sender.send(Ok(()));
                runtime.block_on(run_all(workers));
                runtime.shutdown_timeout(BLOCKING_GRACE);
                let _ = finished_sender.send(());
            })
            .map_err(SinkError::Runtime)?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(SinkError::Runtime(error)),
            Err(_) => {
                return Err(SinkError::Runtime(std::io::Error::other(
                    "the sink thread ended before its runtime started",
                )));
            }
        }
        Ok(Self {
            senders,
            stats,
            control: Some(Control {
                deadline,
                finished,
                thread,
            }),
        })
    }

    /// Hands `report` to every sink's queue. Never waits and never fails: a sink whose queue is
    /// full loses the report (counted in its `dropped`), the others still get it.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the pipeline hands the report over: publishing is the end of its path there"
    )]
    pub fn publish(&self, report: Arc<Report>) {
        let attempts = report.attempts();
        for (sender, (_, stats)) in self.senders.iter().zip(&self.stats) {
            // Queued before it is sent, so the worker never takes out what is not yet counted in.
            stats.queued.fetch_add(1, Ordering::Relaxed);
            stats.queued_attempts.fetch_add(attempts, Ordering::Relaxed);
            stats.offered.fetch_add(1, Ordering::Relaxed);
            stats
                .offered_attempts
                .fetch_add(attempts, Ordering::Relaxed);
            let lost = match sender.try_send(Arc::clone(&report)) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    (&stats.dropped, &stats.dropped_attempts)
                }
                // The sink's task is gone (it panicked): nothing will deliver it.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    (&stats.failed, &stats.failed_attempts)
                }
            };
            lost.0.fetch_add(1, Ordering::Relaxed);
            lost.1.fetch_add(attempts, Ordering::Relaxed);
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            stats.queued_attempts.fetch_sub(attempts, Ordering::Relaxed);
        }
    }

    /// Each sink's name and counters, in the order of the specs.
    #[must_use]
    pub fn stats(&self) -> Vec<(String, Arc<SinkStats>)> {
        self.stats.clone()
    }

    /// Stops taking reports, lets every sink deliver what it has queued until `deadline` from
    /// now, counts what is left as failed, and waits for the sink thread to end.
    pub async fn shutdown(mut self, deadline: Duration) {
        let Some(control) = self.control.take() else {
            return;
        };
        // Closing the queues lets each worker drain its own and end.
        self.senders.clear();
        control
            .deadline
            .send_replace(Some(Instant::now() + deadline));
        let _ = control.finished.await;
        if control.thread.join().is_err() {
            tracing::error!("the sink thread panicked");
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            control.deadline.send_replace(Some(Instant::now()));
        }
    }
}

/// Runs every worker to its end: its queue closed and drained, or the deadline passed.
async fn run_all(workers: Vec<Worker>) {
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            let name = worker.name().to_owned();
            (name, tokio::spawn(worker.run()))
        })
        .collect();
    for (name, task) in tasks {
        if let Err(error) = task.await {
            tracing::error!(sink = %name, %error, "sink task ended abnormally");
        }
    }
}

/// The sink a spec describes.
fn build(spec: SinkSpec, product: &Product) -> Result<NamedSink, SinkError> {
    let product = product.clone();
    let sink: Box<dyn Sink> = match spec.kind {
        SinkKind::File {
            path,
            format,
            rotation,
        } => Box::new(FileSink::open(path, format, rotation, product)?),
        SinkKind::Stdout { format } => Box::new(StdoutSink::new(format, product)),
        SinkKind::Syslog {
            address,
            transport,
            format,
        } => Box::new(SyslogSink::new(address, &transport, format, product)?),
        SinkKind::Otlp { endpoint } => Box::new(OtlpSink::new(&endpoint, product)?),
    };
    Ok(NamedSink {
        name: spec.name,
        sink,
        queue: spec.queue,
    })
}
