use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Fanout, NamedSink};
use crate::{
    events::{FlowRecord, Report},
    sinks::{
        Sink, SinkError, SinkStats,
        test_support::reports::{alert, flow_denial},
    },
};

/// What a fake sink does and saw, shared with the test.
#[derive(Default)]
struct Script {
    down: AtomicBool,
    /// Never returns from `deliver`: a black-holed peer without timeouts.
    hang: AtomicBool,
    delay: Mutex<Duration>,
    delivered: Mutex<Vec<Arc<Report>>>,
    calls: AtomicU64,
    resets: AtomicU64,
}

struct FakeSink(Arc<Script>);

#[async_trait::async_trait]
impl Sink for FakeSink {
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> Result<(), SinkError> {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        if self.0.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let delay = *self.0.delay.lock().expect("lock");
        tokio::time::sleep(delay).await;
        if self.0.down.load(Ordering::Relaxed) {
            return Err(SinkError::Closed {
                address: SocketAddr::from(([127, 0, 0, 1], 9)),
            });
        }
        self.0
            .delivered
            .lock()
            .expect("lock")
            .extend(batch.iter().cloned());
        Ok(())
    }

    async fn reset(&mut self) {
        self.0.resets.fetch_add(1, Ordering::Relaxed);
    }
}

fn fake(name: &str, queue: usize, script: &Arc<Script>) -> NamedSink {
    NamedSink {
        name: name.to_owned(),
        sink: Box::new(FakeSink(Arc::clone(script))),
        queue,
    }
}

/// A flow report standing for `count` attempts.
fn flow(count: u32) -> Arc<Report> {
    Arc::new(Report::Flow(FlowRecord {
        count,
        ..flow_denial()
    }))
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_balanced(stats: &SinkStats) {
    assert!(stats.balanced(), "{stats:?}");
}

#[tokio::test]
async fn a_failing_sink_fills_its_queue_drops_the_overflow_and_recovers_in_order() {
    let script = Arc::new(Script::default());
    script.down.store(true, Ordering::Relaxed);
    let fanout = Fanout::from_sinks(vec![fake("fake", 4, &script)]).expect("start");
    let stats = Arc::clone(&fanout.stats()[0].1);

    fanout.publish(flow(1));
    wait_until("the first delivery failed twice", || {
        get(&stats.retries) >= 2
    })
    .await;
    assert_eq!(get(&stats.connected), 0);
    assert_balanced(&stats);

    // The worker holds the first report and retries it; four more fit the queue.
    let counts: Vec<u32> = (2..=11).collect();
    for &count in &counts {
        fanout.publish(flow(count));
    }
    fanout.publish(Arc::new(Report::Alert(alert())));
    assert_eq!(get(&stats.offered), 12);
    assert_eq!(get(&stats.offered_attempts), (1..=11).sum::<u64>());
    assert_eq!(get(&stats.queued), 5);
    assert_eq!(get(&stats.queued_attempts), 1 + 2 + 3 + 4 + 5);
    assert_eq!(get(&stats.dropped), 7);
    assert_eq!(get(&stats.dropped_attempts), (6..=11).sum::<u64>());
    assert_eq!(get(&stats.delivered), 0);
    assert_balanced(&stats);

    script.down.store(false, Ordering::Relaxed);
    wait_until("the queue is delivered", || get(&stats.delivered) == 5).await;
    let delivered: Vec<u64> = script
        .delivered
        .lock()
        .expect("lock")
        .iter()
        .map(|report| report.attempts())
        .collect();
    assert_eq!(delivered, [1, 2, 3, 4, 5], "in order, none twice");
    assert_eq!(get(&stats.delivered_attempts), 15);
    assert_eq!(get(&stats.queued), 0);
    assert_eq!(get(&stats.failed), 0);
    assert_eq!(get(&stats.connected), 1);
    assert_eq!(
        get(&script.resets),
        get(&stats.retries),
        "reset before each retry"
    );
    assert_balanced(&stats);

    fanout.publish(flow(100));
    wait_until("a new report goes straight through", || {
        get(&stats.delivered) == 6
    })
    .await;
    assert_balanced(&stats);
    fanout.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_hung_sink_holds_up_neither_publishing_nor_the_other_sinks() {
    let hung = Arc::new(Script::default());
    hung.hang.store(true, Ordering::Relaxed);
    let healthy = Arc::new(Script::default());
    let fanout = Fanout::from_sinks(vec![
        fake("hung", 2, &hung),
        fake("healthy", 1000, &healthy),
    ])
    .expect("start");
    let stats = fanout.stats();
    let (hung_stats, healthy_stats) = (Arc::clone(&stats[0].1), Arc::clone(&stats[1].1));

    let start = Instant::now();
    for _ in 0..500 {
        fanout.publish(flow(2));
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "publishing waited"
    );
    wait_until("the healthy sink has all", || {
        get(&healthy_stats.delivered) == 500
    })
    .await;
    wait_until("the hung sink holds a batch", || get(&hung.calls) == 1).await;
    assert!(get(&hung_stats.dropped) >= 496, "{hung_stats:?}");
    assert_balanced(&hung_stats);
    assert_balanced(&healthy_stats);

    let start = Instant::now();
    fanout.shutdown(Duration::from_millis(200)).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?}",
        start.elapsed()
    );
    assert_eq!(get(&hung_stats.delivered), 0);
    assert_eq!(
        get(&hung_stats.failed) + get(&hung_stats.dropped),
        500,
        "{hung_stats:?}"
    );
    assert_eq!(get(&hung_stats.queued), 0);
    assert_balanced(&hung_stats);
    assert_eq!(get(&healthy_stats.failed), 0);
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued_within_the_deadline() {
    let script = Arc::new(Script::default());
    *script.delay.lock().expect("lock") = Duration::from_millis(20);
    let fanout = Fanout::from_sinks(vec![fake("slow", 1000, &script)]).expect("start");
    let stats = Arc::clone(&fanout.stats()[0].1);
    for count in 1..=300 {
        fanout.publish(flow(count));
    }
    fanout.shutdown(Duration::from_secs(5)).await;
    assert_eq!(get(&stats.delivered), 300, "{stats:?}");
    assert_eq!(get(&stats.delivered_attempts), (1..=300).sum::<u64>());
    assert_eq!(get(&stats.failed), 0);
    assert_balanced(&stats);
}

#[tokio::test]
async fn shutdown_counts_what_a_down_sink_could_not_deliver_as_failed() {
    let script = Arc::new(Script::default());
    script.down.store(true, Ordering::Relaxed);
    let fanout = Fanout::from_sinks(vec![fake("down", 100, &script)]).expect("start");
    let stats = Arc::clone(&fanout.stats()[0].1);
    for count in 1..=5 {
        fanout.publish(flow(count));
    }
    let start = Instant::now();
    fanout.shutdown(Duration::from_millis(300)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "gave up early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "waited past the deadline: {took:?}"
    );
    assert_eq!(get(&stats.failed), 5);
    assert_eq!(get(&stats.failed_attempts), 15);
    assert_eq!(get(&stats.delivered), 0);
    assert_eq!(get(&stats.queued), 0);
    assert_balanced(&stats);
}

#[tokio::test]
async fn dropping_the_fanout_gives_up_at_once() {
    let script = Arc::new(Script::default());
    script.down.store(true, Ordering::Relaxed);
    let fanout = Fanout::from_sinks(vec![fake("down", 100, &script)]).expect("start");
    let stats = Arc::clone(&fanout.stats()[0].1);
    fanout.publish(flow(3));
    drop(fanout);
    wait_until("the report counts as failed", || get(&stats.failed) == 1).await;
    assert_eq!(get(&stats.failed_attempts), 3);
    assert_balanced(&stats);
}

#[test]
fn a_queue_of_zero_is_refused() {
    let script = Arc::new(Script::default());
    let error = Fanout::from_sinks(vec![fake("empty", 0, &script)]).expect_err("refused");
    assert!(
        matches!(&error, SinkError::EmptyQueue { sink } if sink == "empty"),
        "{error:?}"
    );
}
