use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant, SystemTime},
};

use super::*;
use crate::{
    events::{FlowEndpoint, FlowNode, FlowProcess, FlowRule, Layer},
    policy::{Labels, Mode},
};

fn endpoint(name: &str, ip: IpAddr, port: Option<u16>) -> FlowEndpoint {
    FlowEndpoint {
        ip,
        port,
        name: name.to_owned(),
        labels: Labels::new(),
        is_world: name == "@world",
        segmented: true,
    }
}

fn host(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// A TCP denial of `web` (10.0.0.1, pid 42) to `dst_last:port`.
fn denial(dst_last: u8, port: u16) -> FlowRecord {
    FlowRecord {
        time: SystemTime::now(),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        revoked: false,
        src: endpoint("web", host(1), Some(40000)),
        dst: endpoint("db", host(dst_last), Some(port)),
        process: Some(FlowProcess {
            pid: 42,
            name: "nmap".to_owned(),
            cmd_line: None,
            uid: 0,
            user_name: None,
            executable: None,
            parent_pid: None,
        }),
        process_from_socket: false,
        workload: None,
        layer: Layer::Socket,
        rule: FlowRule {
            uid: "default-deny:db".to_owned(),
            name: "default-deny:db".to_owned(),
            description: None,
        },
        policy_version: "abc123".to_owned(),
        mode: Mode::Enforce,
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        },
        count: 1,
        span: None,
        swept_ports: Vec::new(),
    }
}

/// Feeds `records` at `now`, returning every alert raised.
fn feed(
    detector: &mut Detector,
    records: impl IntoIterator<Item = FlowRecord>,
    now: Instant,
) -> Vec<LateralMovementAlert> {
    records
        .into_iter()
        .filter_map(|record| detector.observe(&record, now))
        .collect()
}

#[test]
fn a_port_scan_is_one_alert_at_the_threshold() {
    let mut detector = Detector::new(DetectorConfig::default());
    let now = Instant::now();
    let scan: Vec<FlowRecord> = (1..=50).map(|port| denial(2, port)).collect();
    let alerts = feed(&mut detector, scan.clone(), now);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert.kind, PatternKind::PortScan);
    assert_eq!(alert.technique, NETWORK_SERVICE_DISCOVERY);
    assert_eq!(
        (
            alert.distinct_targets,
            alert.distinct_destinations,
            alert.distinct_ports
        ),
        (10, 1, 10),
        "raised when the 10th distinct port is tried"
    );
    assert_eq!(alert.attempts, 10);
    assert_eq!(
        alert.targets.iter().map(|t| t.port).collect::<Vec<_>>(),
        (1..=10).map(Some).collect::<Vec<_>>(),
        "in the order tried"
    );
    assert!(
        alert
            .targets
            .iter()
            .all(|t| t.name == "db" && t.ip == host(2))
    );
    assert_eq!(alert.src.name, "web");
    assert_eq!(alert.process.as_ref().map(|p| p.pid), Some(42));
    assert_eq!(alert.first_seen, scan[0].time);
    assert_eq!(alert.time, scan[9].time);
    assert_eq!(alert.window, Duration::from_secs(60));
    assert_eq!(alert.policy_version, "abc123");
    // The scan going on does not alert again.
    assert!(feed(&mut detector, scan, now + Duration::from_secs(30)).is_empty());
}

#[test]
fn a_high_threshold_counts_every_port_and_lists_up_to_the_cap() {
    let mut detector = Detector::new(DetectorConfig {
        distinct_targets: 50,
        max_listed_targets: 8,
        ..DetectorConfig::default()
    });
    let now = Instant::now();
    let mut alerts = feed(&mut detector, (1..=49).map(|port| denial(2, port)), now);
    assert!(alerts.is_empty());
    // Repeats add attempts, never targets.
    alerts.extend(feed(
        &mut detector,
        (1..=5).map(|port| denial(2, port)),
        now,
    ));
    assert!(alerts.is_empty());
    alerts.extend(feed(&mut detector, [denial(2, 50)], now));
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert.kind, PatternKind::PortScan);
    assert_eq!((alert.distinct_targets, alert.distinct_ports), (50, 50));
    assert_eq!(alert.attempts, 55, "repeats included");
    assert_eq!(alert.targets.len(), 8);
    assert_eq!(alert.targets[7].port, Some(8));
}

#[test]
fn a_sweep_of_one_port_over_many_hosts() {
    let mut detector = Detector::new(DetectorConfig::default());
    let alerts = feed(
        &mut detector,
        (2..22).map(|last| denial(last, 22)),
        Instant::now(),
    );
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert.kind, PatternKind::Sweep);
    assert_eq!((alert.distinct_destinations, alert.distinct_ports), (10, 1));
}

#[test]
fn an_icmp_sweep_is_a_sweep_of_one_service() {
    let mut detector = Detector::new(DetectorConfig::default());
    let ping = |last| FlowRecord {
        protocol: 1,
        dst: endpoint("db", host(last), None),
        ..denial(last, 0)
    };
    let alerts = feed(&mut detector, (2..12).map(ping), Instant::now());
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, PatternKind::Sweep);
    assert!(alerts[0].targets.iter().all(|t| t.port.is_none()));
}

#[test]
fn many_ports_on_many_hosts_is_a_fan_out() {
    let mut detector = Detector::new(DetectorConfig::default());
    let alerts = feed(
        &mut detector,
        (0..10).map(|i| denial(2 + i % 3, 1000 + u16::from(i))),
        Instant::now(),
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, PatternKind::FanOut);
    assert_eq!(
        (alerts[0].distinct_destinations, alerts[0].distinct_ports),
        (3, 10)
    );
}

#[test]
fn the_same_port_over_two_protocols_is_two_targets() {
    let mut detector = Detector::new(DetectorConfig {
        distinct_targets: 2,
        ..DetectorConfig::default()
    });
    let udp = FlowRecord {
        protocol: 17,
        ..denial(2, 53)
    };
    let alerts = feed(&mut detector, [denial(2, 53), udp], Instant::now());
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].distinct_ports, 2);
}

#[test]
fn repeats_of_one_target_never_alert() {
    let mut detector = Detector::new(DetectorConfig::default());
    let start = Instant::now();
    for second in 0..600 {
        let retry = FlowRecord {
            count: 1000,
            ..denial(2, 5432)
        };
        let now = start + Duration::from_secs(second);
        assert!(detector.observe(&retry, now).is_none());
    }
}

#[test]
fn audits_and_revoked_flows_do_not_count() {
    let mut detector = Detector::new(DetectorConfig::default());
    let now = Instant::now();
    let audits = (1..=50).map(|port| FlowRecord {
        verdict: Verdict::Audited,
        mode: Mode::Audit,
        ..denial(2, port)
    });
    assert!(feed(&mut detector, audits, now).is_empty());
    let revoked = (1..=50).map(|port| FlowRecord {
        revoked: true,
        ..denial(2, port)
    });
    assert!(feed(&mut detector, revoked, now).is_empty());
    assert_eq!(detector.tracked_sources(), 0);
}

#[test]
fn two_interleaved_sources_each_alert_once() {
    let mut detector = Detector::new(DetectorConfig::default());
    let other = |port| FlowRecord {
        src: endpoint("batch", host(9), Some(40000)),
        ..denial(2, port)
    };
    let records = (1..=30).flat_map(|port| [denial(2, port), other(port)]);
    let alerts = feed(&mut detector, records, Instant::now());
    let sources: Vec<&str> = alerts.iter().map(|a| a.src.name.as_str()).collect();
    assert_eq!(sources, ["web", "batch"]);
    assert!(alerts.iter().all(|a| a.distinct_targets == 10));
}

#[test]
fn processes_of_one_workload_are_one_source() {
    let mut detector = Detector::new(DetectorConfig::default());
    let probe = |port: u16| {
        let mut record = denial(2, port);
        if let Some(process) = &mut record.process {
            process.pid = 1000 + u32::from(port);
        }
        record
    };
    let alerts = feed(&mut detector, (1..=10).map(probe), Instant::now());
    assert_eq!(alerts.len(), 1, "a loop forking one probe per port");
    assert_eq!(alerts[0].process.as_ref().map(|p| p.pid), Some(1010));
}

#[test]
fn the_window_slides() {
    let mut detector = Detector::new(DetectorConfig::default());
    let start = Instant::now();
    // Five targets early in one minute, five early in the next: never ten within a minute.
    assert!(feed(&mut detector, (1..=5).map(|p| denial(2, p)), start).is_empty());
    let next = start + Duration::from_secs(60);
    assert!(feed(&mut detector, (6..=10).map(|p| denial(2, p)), next).is_empty());
    // Five more 50 s later: the second five and these are within the last minute.
    let alerts = feed(
        &mut detector,
        (11..=15).map(|p| denial(2, p)),
        next + Duration::from_secs(50),
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].targets[0].port, Some(6), "the first five expired");
    assert_eq!(alerts[0].attempts, 10);
}

#[test]
fn a_source_re_arms_after_a_quiet_window() {
    let mut detector = Detector::new(DetectorConfig::default());
    let start = Instant::now();
    assert_eq!(
        feed(&mut detector, (1..=10).map(|p| denial(2, p)), start).len(),
        1
    );
    // Still active 59 s later: the same pattern.
    let later = start + Duration::from_secs(59);
    assert!(feed(&mut detector, (11..=30).map(|p| denial(2, p)), later).is_empty());
    // Quiet for a whole window after that: a new pattern alerts again.
    let again = later + Duration::from_secs(60);
    let alerts = feed(&mut detector, (31..=40).map(|p| denial(2, p)), again);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].targets[0].port, Some(31));
}

#[test]
fn expire_forgets_idle_sources_and_re_arms_them() {
    let mut detector = Detector::new(DetectorConfig::default());
    let start = Instant::now();
    assert_eq!(
        feed(&mut detector, (1..=10).map(|p| denial(2, p)), start).len(),
        1
    );
    let other = FlowRecord {
        src: endpoint("batch", host(9), Some(40000)),
        ..denial(2, 1)
    };
    let later = start + Duration::from_secs(30);
    assert!(detector.observe(&other, later).is_none());
    assert_eq!(detector.tracked_sources(), 2);
    detector.expire(start + Duration::from_secs(60));
    assert_eq!(detector.tracked_sources(), 1, "only the quiet one");
    detector.expire(later + Duration::from_secs(60));
    assert_eq!(detector.tracked_sources(), 0);
    let alerts = feed(
        &mut detector,
        (1..=10).map(|p| denial(2, p)),
        later + Duration::from_secs(61),
    );
    assert_eq!(alerts.len(), 1, "re-armed");
}

#[test]
fn an_aggregated_sweep_counts_each_port_and_its_attempts_once() {
    let mut detector = Detector::new(DetectorConfig::default());
    let summary = FlowRecord {
        outbound: false,
        process: None,
        src: endpoint("@world", IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), None),
        dst: endpoint("db", host(2), None),
        count: 99,
        swept_ports: (2..=100).collect(),
        ..denial(2, 0)
    };
    let alerts = feed(&mut detector, [summary], Instant::now());
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert.kind, PatternKind::PortScan);
    assert_eq!(alert.distinct_targets, 10);
    assert_eq!(alert.attempts, 99);
    assert!(!alert.outbound);
    assert!(alert.process.is_none());
}

#[test]
fn memory_is_bounded_and_a_flood_of_one_off_sources_evicts_its_own_kind() {
    let mut detector = Detector::new(DetectorConfig {
        max_sources: 4,
        ..DetectorConfig::default()
    });
    let start = Instant::now();
    let spoofed = |n: u8| FlowRecord {
        src: endpoint("@world", IpAddr::V4(Ipv4Addr::new(203, 0, 113, n)), Some(1)),
        outbound: false,
        ..denial(2, 22)
    };
    // A scanner half-way to the threshold, then a flood of one-off sources between its probes.
    assert!(feed(&mut detector, (1..=5).map(|p| denial(2, p)), start).is_empty());
    let mut alerts = Vec::new();
    let mut n = 0_u8;
    for port in 6..=10 {
        for _ in 0..10 {
            n += 1;
            assert!(detector.observe(&spoofed(n), start).is_none());
            assert!(detector.tracked_sources() <= 4);
        }
        alerts.extend(detector.observe(&denial(2, port), start));
    }
    assert_eq!(alerts.len(), 1, "the scanner kept its state");
    assert_eq!(alerts[0].src.name, "web");
    assert_eq!(detector.tracked_sources(), 4);
}

#[test]
fn among_equals_the_least_recently_active_source_is_evicted() {
    let mut detector = Detector::new(DetectorConfig {
        max_sources: 2,
        distinct_targets: 2,
        ..DetectorConfig::default()
    });
    let start = Instant::now();
    let from = |last: u8, port: u16| FlowRecord {
        src: endpoint("web", host(last), Some(40000)),
        ..denial(2, port)
    };
    assert!(detector.observe(&from(100, 1), start).is_none());
    assert!(detector.observe(&from(101, 1), start).is_none());
    // A third source pushes out the first; the second stays and alerts on its second target.
    assert!(detector.observe(&from(102, 1), start).is_none());
    assert!(detector.observe(&from(101, 2), start).is_some());
    assert!(
        detector.observe(&from(100, 2), start).is_none(),
        "evicted: starts over"
    );
    assert_eq!(detector.tracked_sources(), 2);
}

#[test]
fn a_source_holds_at_most_the_threshold_of_targets() {
    let mut detector = Detector::new(DetectorConfig::default());
    let now = Instant::now();
    assert_eq!(
        feed(&mut detector, (1..=10_000).map(|p| denial(2, p)), now).len(),
        1
    );
    let state = detector.sources.iter().next().map(|(_, state)| state);
    assert_eq!(
        state.map(|s| (s.targets.len(), s.order.len())),
        Some((10, 10))
    );
}
