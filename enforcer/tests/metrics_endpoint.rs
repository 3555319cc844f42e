//! The metrics endpoint over a real socket: what a Prometheus scrape sees.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use enforcer::{
    events::PatternKind,
    metrics::{LossStage, Metrics, MetricsError, serve, sink_label},
    sinks::{SinkKind, SinkStats, SyslogFormat, SyslogTransport},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// One HTTP/1.1 request on a fresh connection: the status code, the headers (lower-cased
/// names) and the body.
async fn get(address: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("response within 10 s")
    .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Every label value of every sample line.
fn label_values(body: &str) -> Vec<String> {
    let mut values = Vec::new();
    for line in body.lines().filter(|line| !line.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = labels.split('}').next().unwrap_or_default();
        for pair in labels.split(',') {
            if let Some((_, value)) = pair.split_once('=') {
                values.push(value.trim_matches('"').to_owned());
            }
        }
    }
    values
}

fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Whether `value` holds `:` followed by a digit, as an address with a port does.
fn has_port(value: &str) -> bool {
    value
        .as_bytes()
        .windows(2)
        .any(|pair| pair[0] == b':' && pair[1].is_ascii_digit())
}

#[tokio::test]
async fn scrape_shows_counters_without_addresses_in_labels() {
    let syslog = SinkKind::Syslog {
        address: "192.0.2.7:6514".parse().expect("address"),
        transport: SyslogTransport::Tcp,
        format: SyslogFormat::Cef,
    };
    let stats = Arc::new(SinkStats::default());
    let metrics = Arc::new(Metrics::new(vec![(
        sink_label(0, &syslog),
        Arc::clone(&stats),
    )]));
    let cancel = CancellationToken::new();
    let server = serve(
        "127.0.0.1:0".parse().expect("address"),
        Arc::clone(&metrics),
        cancel.clone(),
    )
    .await
    .expect("serve");

    metrics.attempts_reported().inc_by(41);
    metrics.events_lost(LossStage::Pipeline).inc_by(2);
    metrics.alerts(PatternKind::Sweep).inc();
    metrics.set_policy("0123abcd", 3);
    let mut kernel = vec![0; enforcer_common::counter::COUNT as usize];
    kernel[enforcer_common::counter::DENIED as usize] = 17;
    metrics.set_kernel_counters(&kernel);
    stats.delivered_attempts.store(40, Ordering::Relaxed);
    stats.retries.store(5, Ordering::Relaxed);

    let (status, headers, body) = get(server.local_addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let content_type = headers
        .iter()
        .find(|(name, _)| name == "content-type")
        .map(|(_, value)| value.as_str());
    assert_eq!(
        content_type,
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert_eq!(
        sample(&body, "enforcer_attempts_reported_total"),
        Some(41.0)
    );
    assert_eq!(
        sample(&body, "enforcer_events_lost_total{stage=\"pipeline\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, "enforcer_alerts_total{kind=\"sweep\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "enforcer_verdicts_total{direction=\"egress\",verdict=\"denied\"}"
        ),
        Some(17.0)
    );
    assert_eq!(
        sample(
            &body,
            "enforcer_sink_delivered_attempts_total{sink=\"0-syslog\"}"
        ),
        Some(40.0)
    );
    assert_eq!(
        sample(&body, "enforcer_sink_retries_total{sink=\"0-syslog\"}"),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &body,
            "enforcer_policy_info{version=\"0123abcd\",generation=\"3\"}"
        ),
        Some(1.0)
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    let values = label_values(&body);
    assert!(values.contains(&"0-syslog".to_owned()), "{values:?}");
    for value in &values {
        assert!(value.parse::<IpAddr>().is_err(), "IP as label: {value}");
        assert!(
            value.parse::<SocketAddr>().is_err(),
            "address as label: {value}"
        );
        assert!(!has_port(value), "port-like label value: {value}");
    }

    let (status, _, _) = get(server.local_addr, "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = get(server.local_addr, "/metrics/extra").await;
    assert_eq!(status, 404);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("stops when cancelled")
        .expect("task");
}

#[tokio::test]
async fn a_taken_port_is_a_typed_error_naming_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = taken.local_addr().expect("address");
    let metrics = Arc::new(Metrics::new(Vec::new()));
    let error = serve(address, metrics, CancellationToken::new())
        .await
        .expect_err("port taken");
    assert!(
        matches!(&error, MetricsError::Bind { address: a, .. } if *a == address),
        "{error}"
    );
    assert!(error.to_string().contains(&address.to_string()));
}
