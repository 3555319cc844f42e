//! The syslog sink against a real rsyslogd (Debian's `rsyslog` and `rsyslog-gnutls`, which
//! `cargo xtask setup` installs; the tests fail, never skip, without them): reports go through a
//! [`Fanout`] over TCP and over TLS, and what rsyslog wrote is parsed back — the RFC 5424 header
//! and structured data, the CEF fields, and the OCSF JSON checked against the OCSF schema. A sink
//! whose server is down fills its queue, counts its drops, and delivers again once it is up.
//! Needs no root.

#[path = "support/parse.rs"]
mod parse;
#[path = "support/rsyslog.rs"]
mod rsyslog;

#[allow(
    dead_code,
    reason = "the fixtures serve several tests; this one uses some"
)]
mod reports {
    use enforcer::{
        events::{
            AlertTarget, FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowRule, FlowWorkload,
            LateralMovementAlert, Layer, NETWORK_SERVICE_DISCOVERY, PatternKind, PolicyRejection,
            Report, Verdict,
        },
        policy::{Labels, Mode},
    };

    include!("support/reports.rs");
}

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use enforcer::{
    events::{FlowRecord, Report, ocsf, ocsf::Product},
    sinks::{Fanout, SinkKind, SinkSpec, SinkStats, SyslogFormat, SyslogTransport},
};
use serde_json::Value;

use self::{
    parse::{ParsedElement, parse_cef, parse_structured_data},
    reports::all_reports,
    rsyslog::{Rsyslog, TlsFiles, free_port},
};

fn spec(address: SocketAddr, transport: SyslogTransport, format: SyslogFormat) -> SinkSpec {
    SinkSpec {
        name: format!("syslog:{address}"),
        kind: SinkKind::Syslog {
            address,
            transport,
            format,
        },
        queue: 4,
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

async fn wait_until(what: &str, stats: &SinkStats, condition: impl Fn(&SinkStats) -> bool) {
    let start = Instant::now();
    while !condition(stats) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message as rsyslog wrote it (`RSYSLOG_SyslogProtocol23Format`).
struct Received {
    pri: u8,
    header: Vec<String>,
    element: ParsedElement,
    msg: String,
}

fn parse_received(line: &str) -> Received {
    let rest = line
        .strip_prefix('<')
        .unwrap_or_else(|| panic!("no PRI: {line}"));
    let (pri, rest) = rest.split_once('>').expect("PRI end");
    let mut fields = rest.splitn(7, ' ');
    let header: Vec<String> = fields.by_ref().take(6).map(str::to_owned).collect();
    let rest = fields.next().unwrap_or_else(|| panic!("no SD: {line}"));
    let (mut elements, msg) =
        parse_structured_data(rest).unwrap_or_else(|error| panic!("{error}: {line}"));
    assert_eq!(elements.len(), 1, "{line}");
    let msg = msg
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no MSG: {line}"));
    Received {
        pri: pri.parse().expect("PRI number"),
        header,
        element: elements.remove(0),
        msg: msg.to_owned(),
    }
}

/// PRI (local0 × 8 + severity) and MSGID per report of [`all_reports`].
const EXPECTED_HEADERS: [(u8, &str); 4] = [
    (132, "DENY"),
    (134, "AUDIT"),
    (130, "ALERT"),
    (131, "POLICY"),
];

fn check_header(received: &Received, (pri, msgid): (u8, &str)) {
    assert_eq!(received.pri, pri);
    let pid = std::process::id().to_string();
    assert_eq!(
        received.header,
        [
            "1",
            "2024-05-06T07:08:09.123Z",
            "app-1",
            "enforcer",
            &pid,
            msgid
        ]
    );
    assert_eq!(received.element.id, "enforcer@32473");
}

/// Sends every report through a fan-out with one syslog sink, and returns what rsyslog wrote.
async fn send_all(spec: SinkSpec, server: &Rsyslog) -> Vec<Received> {
    let fanout = Fanout::start(vec![spec], Product::default()).expect("start the fan-out");
    let stats = Arc::clone(&fanout.stats()[0].1);
    for report in all_reports() {
        fanout.publish(Arc::new(report));
    }
    let lines = server.wait_for(4).await;
    fanout.shutdown(Duration::from_secs(5)).await;
    assert_eq!(get(&stats.delivered), 4, "{stats:?}");
    assert_eq!(get(&stats.delivered_attempts), 1 + 17);
    assert_eq!(get(&stats.connected), 1);
    assert!(stats.balanced(), "{stats:?}");
    assert_eq!(lines.len(), 4, "{lines:#?}");
    lines.iter().map(|line| parse_received(line)).collect()
}

#[tokio::test]
async fn tcp_delivers_rfc_5424_messages_with_cef() {
    let address = free_port();
    let server = Rsyslog::start(address, None);
    let received = send_all(
        spec(address, SyslogTransport::Tcp, SyslogFormat::Cef),
        &server,
    )
    .await;
    for (message, expected) in received.iter().zip(EXPECTED_HEADERS) {
        check_header(message, expected);
    }

    let [denial, aggregated, alert, rejection] = &received[..] else {
        unreachable!("four messages")
    };
    assert_eq!(denial.element.param("count"), Some("1"));
    assert_eq!(
        denial.element.param("ruleName"),
        Some(r#"web-never-"finance" [v2] \ a|b=c"#),
        "PARAM-VALUE escaping survives rsyslog"
    );
    assert_eq!(denial.element.param("dpt"), Some("5432"));
    let cef = parse_cef(&denial.msg).expect("CEF");
    assert_eq!(cef.header[4], "rules/20-finance.toml:31");
    assert_eq!(
        cef.header[5],
        r#"connection denied by web-never-"finance" [v2] \ a|b=c"#
    );
    assert_eq!(cef.header[6], "5");
    assert_eq!(cef.get("dst"), Some("10.0.0.2"));
    assert_eq!(cef.get("dpt"), Some("5432"));
    assert_eq!(cef.get("suser"), Some("alice"));
    assert_eq!(
        cef.get("msg"),
        Some("the web tier never talks to the database\nsee ticket=42 | ops")
    );

    assert_eq!(aggregated.element.param("count"), Some("17"));
    assert_eq!(aggregated.element.param("revoked"), Some("1"));
    let cef = parse_cef(&aggregated.msg).expect("CEF");
    assert_eq!(cef.get("cnt"), Some("17"));
    assert_eq!(cef.get("act"), Some("audit"));
    assert_eq!(cef.get("cs6"), Some("22,80,443"));

    assert_eq!(alert.element.param("technique"), Some("T1046"));
    assert_eq!(alert.element.param("attempts"), Some("30"));
    let cef = parse_cef(&alert.msg).expect("CEF");
    assert_eq!(
        cef.header[4..],
        ["T1046", "suspected lateral movement: port scan", "8"]
    );

    assert_eq!(rejection.element.param("errors"), Some("2"));
    let cef = parse_cef(&rejection.msg).expect("CEF");
    assert_eq!(cef.header[4], "policy-rejected");
    assert_eq!(cef.get("filePath"), Some("/etc/enforcer/policy"));
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("enforcer/ sits in the workspace")
        .to_owned()
}

/// Runs `tests/ocsf/validate.py` (as `tests/ocsf_schema.rs` does) on `events`, one a line.
fn validate_ocsf(events: &[String]) {
    let python = std::env::var_os("ENFORCER_OCSF_PYTHON").map_or_else(
        || workspace().join("target/ocsf-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`, which installs the OCSF validator",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("received.jsonl");
    std::fs::write(&file, events.join("\n") + "\n").expect("write events");
    let output = Command::new(&python)
        .arg(workspace().join("tests/ocsf/validate.py"))
        .arg(&file)
        .output()
        .unwrap_or_else(|error| panic!("run {}: {error}", python.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains(&format!("{} events valid", events.len())),
        "{report}"
    );
}

#[tokio::test]
async fn tls_delivers_ocsf_that_the_schema_accepts() {
    let address = free_port();
    let certificates = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::generate(certificates.path());
    let server = Rsyslog::start(address, Some(&tls));
    let transport = SyslogTransport::Tls {
        ca_file: tls.ca.clone(),
        server_name: None,
    };
    let received = send_all(spec(address, transport, SyslogFormat::Ocsf), &server).await;
    let reports = all_reports();
    for ((message, expected), report) in received.iter().zip(EXPECTED_HEADERS).zip(&reports) {
        check_header(message, expected);
        let event: Value = serde_json::from_str(&message.msg)
            .unwrap_or_else(|error| panic!("{error}: {}", message.msg));
        assert_eq!(event, ocsf::render_report(report, &Product::default()));
    }
    assert_eq!(received[1].element.param("count"), Some("17"));
    let events: Vec<String> = received.iter().map(|message| message.msg.clone()).collect();
    validate_ocsf(&events);
}

#[tokio::test]
async fn tls_refuses_a_server_its_ca_did_not_sign() {
    let address = free_port();
    let certificates = tempfile::tempdir().expect("tempdir");
    let server_tls = TlsFiles::generate(certificates.path());
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = TlsFiles::generate(other.path());
    let server = Rsyslog::start(address, Some(&server_tls));
    let transport = SyslogTransport::Tls {
        ca_file: other_ca.ca.clone(),
        server_name: None,
    };
    let fanout = Fanout::start(
        vec![spec(address, transport, SyslogFormat::Ocsf)],
        Product::default(),
    )
    .expect("start");
    let stats = Arc::clone(&fanout.stats()[0].1);
    fanout.publish(Arc::new(all_reports().remove(0)));
    wait_until("the handshake failed twice", &stats, |stats| {
        get(&stats.retries) >= 2
    })
    .await;
    assert_eq!(get(&stats.delivered), 0);
    assert_eq!(get(&stats.connected), 0);
    fanout.shutdown(Duration::from_millis(100)).await;
    assert_eq!(get(&stats.failed), 1);
    assert!(stats.balanced(), "{stats:?}");
    assert!(server.received().is_empty());
}

/// A flow report standing for `count` attempts, so the order of delivery shows.
fn flow(count: u32) -> Arc<Report> {
    Arc::new(Report::Flow(FlowRecord {
        count,
        ..reports::flow_denial()
    }))
}

#[tokio::test]
async fn a_sink_whose_server_is_down_queues_drops_and_resumes() {
    let address = free_port();
    let fanout = Fanout::start(
        vec![spec(address, SyslogTransport::Tcp, SyslogFormat::Cef)],
        Product::default(),
    )
    .expect("start");
    let stats = Arc::clone(&fanout.stats()[0].1);
    let down_since = Instant::now();

    fanout.publish(flow(1));
    wait_until("the first delivery failed twice", &stats, |stats| {
        get(&stats.retries) >= 2
    })
    .await;
    assert_eq!(get(&stats.connected), 0);
    // The worker retries the first report; the queue (4) takes four more, the rest are lost.
    for count in 2..=11 {
        fanout.publish(flow(count));
    }
    assert_eq!(get(&stats.queued), 5, "{stats:?}");
    assert_eq!(get(&stats.dropped), 6);
    assert_eq!(get(&stats.dropped_attempts), (6..=11).sum::<u64>());
    assert_eq!(get(&stats.delivered), 0);
    assert!(stats.balanced(), "{stats:?}");

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_since.elapsed())).await;
    let retries_while_down = get(&stats.retries);
    assert!(retries_while_down >= 4, "{stats:?}");
    assert!(stats.balanced(), "{stats:?}");

    let server = Rsyslog::start(address, None);
    wait_until("the queue is delivered", &stats, |stats| {
        get(&stats.delivered) == 5
    })
    .await;
    assert_eq!(get(&stats.delivered_attempts), 1 + 2 + 3 + 4 + 5);
    assert_eq!(get(&stats.connected), 1);
    assert_eq!(get(&stats.queued), 0);
    assert!(stats.balanced(), "{stats:?}");
    let counts: Vec<String> = server
        .wait_for(5)
        .await
        .iter()
        .map(|line| {
            parse_received(line)
                .element
                .param("count")
                .expect("count")
                .to_owned()
        })
        .collect();
    assert_eq!(counts, ["1", "2", "3", "4", "5"], "in order, none twice");

    fanout.publish(flow(12));
    server.wait_for(6).await;
    fanout.shutdown(Duration::from_secs(5)).await;
    assert_eq!(get(&stats.delivered), 6);
    assert_eq!(get(&stats.failed), 0);
    assert!(stats.balanced(), "{stats:?}");
}
