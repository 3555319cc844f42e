use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use enforcer_common::counter;

use super::{LossStage, Metrics, ReloadResult, sink_label};
use crate::{
    events::PatternKind,
    sinks::{JsonFormat, SinkKind, SinkStats, SyslogFormat, SyslogTransport},
};

fn scrape(metrics: &Metrics) -> Vec<String> {
    metrics
        .render()
        .expect("render")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn has(lines: &[String], line: &str) {
    assert!(
        lines.iter().any(|l| l == line),
        "no line {line:?} in:\n{}",
        lines.join("\n")
    );
}

#[test]
fn sink_labels_are_index_and_kind() {
    let syslog = SinkKind::Syslog {
        address: "10.0.0.1:6514".parse().expect("address"),
        transport: SyslogTransport::Udp,
        format: SyslogFormat::Ocsf,
    };
    assert_eq!(sink_label(0, &syslog), "0-syslog");
    let stdout = SinkKind::Stdout {
        format: JsonFormat::Ecs,
    };
    assert_eq!(sink_label(3, &stdout), "3-stdout");
}

#[test]
fn every_series_exists_before_anything_is_counted() {
    let lines = scrape(&Metrics::new(Vec::new()));
    has(&lines, "enforcer_attempts_reported_total 0");
    has(&lines, "enforcer_events_lost_total{stage=\"pipeline\"} 0");
    has(&lines, "enforcer_alerts_total{kind=\"fan_out\"} 0");
    has(&lines, "enforcer_reloads_total{result=\"unchanged\"} 0");
    has(
        &lines,
        "enforcer_verdicts_total{direction=\"ingress\",verdict=\"audited\"} 0",
    );
    has(
        &lines,
        "enforcer_kernel_counter_total{name=\"handed_off\"} 0",
    );
    has(
        &lines,
        "# TYPE enforcer_reload_last_timestamp_seconds gauge",
    );
    assert_eq!(lines.last().map(String::as_str), Some("# EOF"));
    assert!(
        !lines.iter().any(|l| l.starts_with("enforcer_policy_info")),
        "no policy yet, no series"
    );
}

#[test]
fn kernel_counters_feed_verdicts_and_ring_losses() {
    let metrics = Metrics::new(Vec::new());
    let mut values = vec![0; counter::COUNT as usize];
    values[counter::ALLOWED as usize] = 10;
    values[counter::INGRESS_ALLOWED as usize] = 3;
    values[counter::DENIED as usize] = 4;
    values[counter::EVENTS_LOST as usize] = 2;
    values[counter::REVOKED as usize] = 1;
    metrics.set_kernel_counters(&values);
    let lines = scrape(&metrics);
    has(
        &lines,
        "enforcer_verdicts_total{direction=\"egress\",verdict=\"allowed\"} 7",
    );
    has(
        &lines,
        "enforcer_verdicts_total{direction=\"ingress\",verdict=\"allowed\"} 3",
    );
    has(
        &lines,
        "enforcer_verdicts_total{direction=\"egress\",verdict=\"denied\"} 4",
    );
    has(&lines, "enforcer_kernel_counter_total{name=\"revoked\"} 1");
    has(
        &lines,
        "enforcer_events_lost_total{stage=\"kernel_ring\"} 2",
    );
    // A shorter read leaves the rest at 0 rather than stale.
    metrics.set_kernel_counters(&[5]);
    let lines = scrape(&metrics);
    has(
        &lines,
        "enforcer_verdicts_total{direction=\"egress\",verdict=\"allowed\"} 5",
    );
    has(
        &lines,
        "enforcer_verdicts_total{direction=\"egress\",verdict=\"denied\"} 0",
    );
}

#[test]
fn handles_share_the_registered_counters() {
    let metrics = Metrics::new(Vec::new());
    let reported = metrics.attempts_reported();
    reported.inc_by(7);
    metrics.attempts_aggregated().inc_by(3);
    metrics.events_lost(LossStage::Pipeline).inc();
    metrics.alerts(PatternKind::PortScan).inc();
    metrics.record_reload(
        ReloadResult::Rejected,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let lines = scrape(&metrics);
    has(&lines, "enforcer_attempts_reported_total 7");
    has(&lines, "enforcer_attempts_aggregated_total 3");
    has(&lines, "enforcer_events_lost_total{stage=\"pipeline\"} 1");
    has(&lines, "enforcer_alerts_total{kind=\"port_scan\"} 1");
    has(&lines, "enforcer_reloads_total{result=\"rejected\"} 1");
    has(
        &lines,
        "enforcer_reload_last_timestamp_seconds 1700000000.0",
    );
}

#[test]
fn policy_info_is_one_series_replaced_on_change() {
    let metrics = Metrics::new(Vec::new());
    metrics.set_policy("abc123", 1);
    metrics.set_policy("def456", 2);
    let lines = scrape(&metrics);
    let series: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("enforcer_policy_info"))
        .collect();
    assert_eq!(
        series,
        ["enforcer_policy_info{version=\"def456\",generation=\"2\"} 1"]
    );
}

#[test]
fn sink_stats_are_read_at_scrape_time() {
    let stats = Arc::new(SinkStats::default());
    let metrics = Metrics::new(vec![("0-syslog".into(), Arc::clone(&stats))]);
    stats.delivered.store(9, Ordering::Relaxed);
    stats.delivered_attempts.store(12, Ordering::Relaxed);
    stats.queued.store(3, Ordering::Relaxed);
    stats.connected.store(1, Ordering::Relaxed);
    let lines = scrape(&metrics);
    has(&lines, "enforcer_sink_delivered_total{sink=\"0-syslog\"} 9");
    has(
        &lines,
        "enforcer_sink_delivered_attempts_total{sink=\"0-syslog\"} 12",
    );
    has(&lines, "enforcer_sink_dropped_total{sink=\"0-syslog\"} 0");
    has(&lines, "enforcer_sink_queue_depth{sink=\"0-syslog\"} 3");
    has(&lines, "enforcer_sink_connected{sink=\"0-syslog\"} 1");
}
