//! Denials delivered to real SIEM receivers by the daemon, configured as operators do it
//! (`enforcer run --config FILE`): a Debian rsyslogd over TCP (CEF) and over TLS (OCSF JSON), an
//! OTLP/gRPC collector built from the official protobufs, and the Prometheus endpoint counting
//! each. A receiver that is down for 10 s costs counted losses, never enforcement, and delivery
//! resumes when it is back.

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Daemon, Lab,
    collector::{self, Collector},
    metrics, require_privileges,
    rsyslog::{Rsyslog, TlsFiles, free_port},
};
use serde_json::Value;

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }
"#;

const DELIVERY: Duration = Duration::from_secs(20);

/// Waits until `done` holds for rsyslogd's lines.
fn wait_lines(server: &Rsyslog, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines = server.received();
        if done(&lines) {
            return lines;
        }
        assert!(
            start.elapsed() < DELIVERY,
            "rsyslogd did not receive {what}: {lines:#?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CEF extension value of `key` in a line rsyslogd wrote.
fn cef_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let extension = line.split('|').nth(7)?;
    let start = extension.find(&format!("{key}="))? + key.len() + 1;
    let rest = &extension[start..];
    // Values end where the next `key=` starts (values escape their own `=`).
    let end = rest
        .match_indices(' ')
        .find(|(i, _)| {
            rest[i + 1..]
                .split_once('=')
                .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(char::is_alphanumeric))
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[..end])
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("enforcer.toml");
    fs::write(&path, text).expect("write the config");
    path
}

#[test]
fn denials_reach_rsyslog_over_tcp_and_tls_and_an_otlp_collector() {
    if !require_privileges() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::generate(dir.path());
    let tcp_address = free_port();
    let tls_address = free_port();
    let tcp_server = Rsyslog::start(tcp_address, None);
    let tls_server = Rsyslog::start(tls_address, Some(&tls));
    let collector = Collector::start();
    let metrics_address = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[events]
aggregate_window = "1s"

[[sink]]
kind = "syslog"
address = "{tcp_address}"
transport = "tcp"
format = "cef"

[[sink]]
kind = "syslog"
address = "{tls_address}"
transport = "tls"
ca_file = "{ca}"
server_name = "localhost"
format = "ocsf"

[[sink]]
kind = "otlp"
endpoint = "{endpoint}"

[metrics]
listen = "{metrics_address}"
"#,
            ca = tls.ca.display(),
            endpoint = collector.endpoint(),
        ),
    );
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    let mut args = lab.daemon_args();
    let config_arg = config.display().to_string();
    let extra = ["--config", config_arg.as_str()];
    args.extra = &extra;
    let mut daemon = Daemon::start(&args);

    lab.refused_udp_burst("web", 7000, 300, 1);
    let server = lab.server4().to_string();

    // TCP, CEF: the first attempt at once, the 299 repeats when the window closes.
    let cef = wait_lines(&tcp_server, "the denial and its repeats in CEF", |lines| {
        lines
            .iter()
            .filter_map(|l| cef_value(l, "cnt")?.parse::<u64>().ok())
            .sum::<u64>()
            >= 300
    });
    let first = &cef[0];
    assert!(first.starts_with('<'), "RFC 5424 PRI: {first}");
    assert!(first.contains(" enforcer "), "APP-NAME enforcer: {first}");
    assert!(first.contains("CEF:0|"), "a CEF message: {first}");
    assert_eq!(cef_value(first, "dst"), Some(server.as_str()), "{first}");
    assert_eq!(cef_value(first, "dpt"), Some("7000"), "{first}");
    let counted: u64 = cef
        .iter()
        .filter_map(|l| cef_value(l, "cnt")?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, 300, "Σ cnt over CEF messages: {cef:#?}");

    // TLS, OCSF: every message's JSON is the event contract.
    let ocsf = wait_lines(&tls_server, "the denial and its repeats in OCSF", |lines| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l[l.find('{')?..]).ok())
            .filter_map(|e| e["count"].as_u64())
            .sum::<u64>()
            >= 300
    });
    let events: Vec<Value> = ocsf
        .iter()
        .map(|l| serde_json::from_str(&l[l.find('{').expect("JSON")..]).expect("OCSF JSON"))
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["class_uid"] == 4001 && e["dst_endpoint"]["port"] == 7000),
        "{events:#?}"
    );
    let received = dir.path().join("received-over-tls.jsonl");
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    fs::write(&received, lines.join("\n") + "\n").expect("write what rsyslogd received");
    enforcer_tests::ocsf::assert_valid_ocsf(&received);

    // OTLP: log records with the contract's attributes and the OCSF JSON as body.
    let records = collector.wait_for(2, DELIVERY);
    let record = &records[0];
    assert_eq!(
        collector::attribute(record, "destination.address").as_deref(),
        Some(server.as_str())
    );
    assert_eq!(
        collector::attribute(record, "destination.port").as_deref(),
        Some("7000")
    );
    assert_eq!(
        collector::attribute(record, "enforcer.src.identity").as_deref(),
        Some("web")
    );
    let body: Value = serde_json::from_str(&collector::body(record).expect("a string body"))
        .expect("the body is OCSF JSON");
    assert_eq!(body["class_uid"], 4001);
    let otlp_attempts: u64 = records
        .iter()
        .filter_map(|r| {
            collector::attribute(r, "enforcer.count")?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(otlp_attempts, 300);

    // Metrics: each sink delivered all 300 attempts and lost none; no address as a label.
    let text = metrics::scrape(metrics_address);
    for sink in ["0-syslog", "1-syslog", "2-otlp"] {
        let label = format!("sink=\"{sink}\"");
        assert_eq!(
            metrics::value(&text, "enforcer_sink_delivered_attempts_total", &[&label]),
            300.0,
            "{sink}:\n{text}"
        );
        assert_eq!(
            metrics::value(&text, "enforcer_sink_dropped_attempts_total", &[&label]),
            0.0,
            "{sink}:\n{text}"
        );
    }
    assert!(
        !text.contains("127.0.0.1"),
        "addresses never appear in metrics:\n{text}"
    );
    // The kernel's verdicts, by direction: the daemon copies them every few seconds.
    let egress = "direction=\"egress\"";
    let denied = "verdict=\"denied\"";
    let start = Instant::now();
    let text = loop {
        let text = metrics::scrape(metrics_address);
        if metrics::value(&text, "enforcer_verdicts_total", &[egress, denied]) >= 300.0
            || start.elapsed() > DELIVERY
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        metrics::value(&text, "enforcer_verdicts_total", &[egress, denied]),
        300.0,
        "{text}"
    );
    assert_eq!(
        metrics::value(
            &text,
            "enforcer_verdicts_total",
            &["direction=\"ingress\"", denied]
        ),
        0.0,
        "{text}"
    );
    daemon.stop();
}

#[test]
fn a_receiver_down_for_10_s_costs_counted_losses_not_enforcement_and_delivery_resumes() {
    if !require_privileges() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let address: SocketAddr = free_port();
    let metrics_address = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[events]
aggregate_window = "1s"

[[sink]]
kind = "syslog"
address = "{address}"
transport = "tcp"
format = "ocsf"
queue = 64

[metrics]
listen = "{metrics_address}"
"#
        ),
    );
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    let mut args = lab.daemon_args();
    let config_arg = config.display().to_string();
    let extra = ["--config", config_arg.as_str()];
    args.extra = &extra;
    let daemon = Daemon::start(&args);

    // The receiver is down: 200 distinct denials (200 first attempts) overflow the 64-report
    // queue, and every one is still refused at once.
    let down = Instant::now();
    lab.refused_udp_burst("web", 8000, 200, 200);
    let refused_in = down.elapsed();
    assert!(
        refused_in < Duration::from_secs(5),
        "enforcement waited on a sink that is down ({refused_in:?})"
    );
    // The JSON sink of the harness (--events) is unaffected by the other sink being down.
    // 200 denials and the alert their scan raised.
    let local = daemon.wait_for_events(201, DELIVERY);
    let denials = local.iter().filter(|e| e["severity_id"] != 4).count();
    assert_eq!(denials, 200, "{local:#?}");
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    let text = metrics::scrape(metrics_address);
    let label = "sink=\"0-syslog\"";
    let dropped = metrics::value(&text, "enforcer_sink_dropped_attempts_total", &[label]);
    assert!(dropped > 0.0, "a full queue is counted:\n{text}");
    assert!(
        metrics::value(&text, "enforcer_sink_retries_total", &[label]) > 0.0,
        "failed deliveries are retried:\n{text}"
    );
    assert_eq!(
        metrics::value(&text, "enforcer_sink_connected", &[label]),
        0.0,
        "{text}"
    );

    // Back: what the queue held is delivered (once the sink's backoff, at most 5 s, ends),
    // then new denials flow again.
    let server = Rsyslog::start(address, None);
    let back = Instant::now();
    while metrics::value(
        &metrics::scrape(metrics_address),
        "enforcer_sink_connected",
        &[label],
    ) != 1.0
    {
        assert!(back.elapsed() < DELIVERY, "the sink never reconnected");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.refused_udp_burst("web", 9000, 5, 1);
    let lines = wait_lines(&server, "the queued and the new denials", |lines| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l[l.find('{')?..]).ok())
            .filter(|e| e["dst_endpoint"]["port"] == 9000)
            .filter_map(|e| e["count"].as_u64())
            .sum::<u64>()
            == 5
    });
    let text = metrics::scrape(metrics_address);
    let delivered = metrics::value(&text, "enforcer_sink_delivered_attempts_total", &[label]);
    let failed = metrics::value(&text, "enforcer_sink_failed_attempts_total", &[label]);
    assert!(
        delivered >= 65.0,
        "the queue was delivered: {lines:#?}\n{text}"
    );
    assert_eq!(
        delivered + dropped + failed,
        205.0,
        "every attempt delivered, dropped or failed:\n{text}"
    );
    assert_eq!(
        metrics::value(&text, "enforcer_sink_connected", &[label]),
        1.0
    );
}
