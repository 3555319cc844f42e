use std::{path::Path, sync::Arc, time::Duration};

use serde_json::Value;

use super::{FileSink, numbered};
use crate::{
    events::{Report, ecs, ocsf, ocsf::Product},
    sinks::{
        Fanout, JsonFormat, Rotation, Sink, SinkError, SinkKind, SinkSpec,
        test_support::reports::all_reports,
    },
};

fn batch() -> Vec<Arc<Report>> {
    all_reports().into_iter().map(Arc::new).collect()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[tokio::test]
async fn writes_one_ocsf_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let mut sink =
        FileSink::open(path.clone(), JsonFormat::Ocsf, None, Product::default()).expect("open");
    let reports = batch();
    sink.deliver(&reports).await.expect("deliver");
    sink.deliver(&reports[..1]).await.expect("deliver");
    let written = lines(&path);
    let mut expected: Vec<Value> = reports
        .iter()
        .map(|report| ocsf::render_report(report, &Product::default()))
        .collect();
    expected.push(expected[0].clone());
    assert_eq!(written, expected);
}

#[tokio::test]
async fn writes_ecs_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let mut sink =
        FileSink::open(path.clone(), JsonFormat::Ecs, None, Product::default()).expect("open");
    let reports = batch();
    sink.deliver(&reports).await.expect("deliver");
    let expected: Vec<Value> = reports
        .iter()
        .map(|report| ecs::render_report(report, &Product::default()))
        .collect();
    assert_eq!(lines(&path), expected);
}

#[tokio::test]
async fn rotates_before_a_write_would_pass_the_limit_and_keeps_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let reports = batch();
    let line_len = ocsf::render_report(&reports[0], &Product::default())
        .to_string()
        .len() as u64
        + 1;
    // Two lines of the first report fit, a third does not.
    let rotation = Rotation {
        bytes: line_len * 2 + line_len / 2,
        keep: 2,
    };
    let mut sink = FileSink::open(
        path.clone(),
        JsonFormat::Ocsf,
        Some(rotation),
        Product::default(),
    )
    .expect("open");
    let same: Vec<Arc<Report>> = (0..7).map(|_| Arc::clone(&reports[0])).collect();
    sink.deliver(&same[..3]).await.expect("deliver");
    sink.deliver(&same[3..]).await.expect("deliver");
    // 7 lines, 2 a file: the newest file has 1, the two kept have 2 each, the oldest 2 are gone.
    assert_eq!(lines(&path).len(), 1);
    assert_eq!(lines(&numbered(&path, 1)).len(), 2);
    assert_eq!(lines(&numbered(&path, 2)).len(), 2);
    assert!(!numbered(&path, 3).exists());
    for file in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
        let size = std::fs::metadata(&file).expect("metadata").len();
        assert!(
            size <= rotation.bytes,
            "{} has {size} bytes",
            file.display()
        );
    }
}

#[tokio::test]
async fn rotation_with_nothing_kept_starts_the_file_anew() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let rotation = Rotation { bytes: 10, keep: 0 };
    let mut sink = FileSink::open(
        path.clone(),
        JsonFormat::Ocsf,
        Some(rotation),
        Product::default(),
    )
    .expect("open");
    let reports = batch();
    sink.deliver(&reports).await.expect("deliver");
    // Each line is longer than the limit: each goes alone into a new file.
    assert_eq!(
        lines(&path),
        [ocsf::render_report(&reports[3], &Product::default())]
    );
    assert!(!numbered(&path, 1).exists());
}

#[tokio::test]
async fn a_reset_reopens_a_file_removed_underneath() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let mut sink =
        FileSink::open(path.clone(), JsonFormat::Ocsf, None, Product::default()).expect("open");
    let reports = batch();
    sink.deliver(&reports).await.expect("deliver");
    std::fs::remove_file(&path).expect("remove");
    sink.reset().await;
    sink.deliver(&reports[..1]).await.expect("deliver");
    assert_eq!(lines(&path).len(), 1);
}

#[test]
fn a_file_that_cannot_be_opened_fails_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing-dir/events.jsonl");
    let spec = SinkSpec {
        name: "file".to_owned(),
        kind: SinkKind::File {
            path: path.clone(),
            format: JsonFormat::Ocsf,
            rotation: None,
        },
        queue: 10,
    };
    let error = Fanout::start(vec![spec], Product::default()).expect_err("refused");
    assert!(
        matches!(&error, SinkError::Open { path: failed, .. } if *failed == path),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_fanout_file_sink_delivers_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let spec = SinkSpec {
        name: "file".to_owned(),
        kind: SinkKind::File {
            path: path.clone(),
            format: JsonFormat::Ocsf,
            rotation: None,
        },
        queue: 10,
    };
    let fanout = Fanout::start(vec![spec], Product::default()).expect("start");
    let (name, stats) = fanout.stats().remove(0);
    assert_eq!(name, "file");
    for report in batch() {
        fanout.publish(report);
    }
    fanout.shutdown(Duration::from_secs(5)).await;
    assert_eq!(lines(&path).len(), 4);
    let get =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&stats.delivered), 4);
    assert_eq!(get(&stats.delivered_attempts), 1 + 17);
    assert_eq!(get(&stats.connected), 1);
    assert!(stats.balanced());
}
