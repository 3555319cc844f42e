use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, UdpSocket},
};

use super::{SyslogSink, transport::truncate};
use crate::{
    events::{Report, ocsf, ocsf::Product},
    sinks::{
        Sink, SinkError, SyslogFormat, SyslogTransport,
        test_support::{
            parse::{parse_cef, parse_structured_data},
            reports::all_reports,
        },
    },
};

fn sink(address: SocketAddr, transport: &SyslogTransport, format: SyslogFormat) -> SyslogSink {
    SyslogSink::new(address, transport, format, Product::default()).expect("sink")
}

fn batch() -> Vec<Arc<Report>> {
    all_reports().into_iter().map(Arc::new).collect()
}

/// PRI, the six header fields after it, and the rest (SD and MSG).
fn split_header(message: &str) -> (u8, Vec<&str>, &str) {
    let rest = message.strip_prefix('<').expect("PRI");
    let (pri, rest) = rest.split_once('>').expect("PRI end");
    let mut fields = rest.splitn(7, ' ');
    let header: Vec<&str> = fields.by_ref().take(6).collect();
    (
        pri.parse().expect("PRI number"),
        header,
        fields.next().expect("SD"),
    )
}

#[test]
fn each_report_has_its_severity_msgid_and_structured_data() {
    let sink = sink(
        SocketAddr::from(([127, 0, 0, 1], 514)),
        &SyslogTransport::Udp,
        SyslogFormat::Ocsf,
    );
    let pid = std::process::id().to_string();
    // local0 (16) × 8 + severity: warning, informational, critical, error.
    let expected = [
        (132, "DENY"),
        (134, "AUDIT"),
        (130, "ALERT"),
        (131, "POLICY"),
    ];
    for (report, (pri, msgid)) in batch().iter().zip(expected) {
        let message = sink.message(report);
        let (found_pri, header, rest) = split_header(&message);
        assert_eq!(found_pri, pri, "{message}");
        assert_eq!(
            header,
            [
                "1",
                "2024-05-06T07:08:09.123Z",
                "app-1",
                "enforcer",
                &pid,
                msgid
            ]
        );
        let (elements, msg) = parse_structured_data(rest).expect("structured data");
        assert_eq!(elements.len(), 1);
        assert_eq!(elements[0].id, "enforcer@32473");
        let event: Value = serde_json::from_str(msg.strip_prefix(' ').expect("MSG")).expect("JSON");
        assert_eq!(event, ocsf::render_report(report, &Product::default()));
        let params = &elements[0];
        match &**report {
            Report::Flow(record) => {
                assert_eq!(
                    params.param("count"),
                    Some(record.count.to_string().as_str())
                );
                assert_eq!(params.param("ruleName"), Some(record.rule.name.as_str()));
                assert_eq!(params.param("rule"), Some(record.rule.uid.as_str()));
            }
            Report::Alert(_) => {
                assert_eq!(params.param("technique"), Some("T1046"));
                assert_eq!(params.param("targets"), Some("12"));
            }
            Report::Rejection(_) => {
                assert_eq!(params.param("errors"), Some("2"));
                assert_eq!(params.param("origin"), Some("directory"));
            }
        }
    }
}

#[test]
fn the_cef_format_puts_a_cef_line_in_msg() {
    let sink = sink(
        SocketAddr::from(([127, 0, 0, 1], 514)),
        &SyslogTransport::Udp,
        SyslogFormat::Cef,
    );
    let message = sink.message(&batch()[0]);
    let (_, _, rest) = split_header(&message);
    let (_, msg) = parse_structured_data(rest).expect("structured data");
    let cef = parse_cef(msg.strip_prefix(' ').expect("MSG")).expect("CEF");
    assert_eq!(cef.get("dpt"), Some("5432"));
}

#[tokio::test]
async fn tcp_frames_are_octet_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let mut sink = sink(address, &SyslogTransport::Tcp, SyslogFormat::Cef);
    let reports = batch();
    let expected: String = reports
        .iter()
        .map(|report| {
            let message = sink.message(report);
            format!("{} {message}", message.len())
        })
        .collect();
    sink.deliver(&reports).await.expect("deliver");
    let (mut stream, _) = listener.accept().await.expect("accept");
    let mut received = vec![0; expected.len()];
    stream.read_exact(&mut received).await.expect("read");
    assert_eq!(String::from_utf8(received).expect("UTF-8"), expected);
}

#[tokio::test]
async fn a_connection_the_server_closed_fails_and_the_next_delivery_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let mut sink = sink(address, &SyslogTransport::Tcp, SyslogFormat::Cef);
    let reports = batch();
    sink.deliver(&reports[..1]).await.expect("deliver");
    drop(listener.accept().await.expect("accept"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let error = sink.deliver(&reports[..1]).await.expect_err("closed");
    assert!(matches!(error, SinkError::Closed { .. }), "{error:?}");
    sink.deliver(&reports[1..2]).await.expect("reconnects");
    let (mut stream, _) = listener.accept().await.expect("accept again");
    let mut buffer = vec![0; 65536];
    let length = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("the batch arrives")
        .expect("read");
    let received = String::from_utf8_lossy(&buffer[..length]);
    assert!(received.contains(" AUDIT "), "{received}");
}

#[tokio::test]
async fn a_server_that_stops_reading_is_a_timeout_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let mut sink = sink(address, &SyslogTransport::Tcp, SyslogFormat::Ocsf);
    let big: Vec<Arc<Report>> = (0..256).flat_map(|_| batch()).collect();
    let start = Instant::now();
    let _held = loop {
        match sink.deliver(&big).await {
            Ok(()) => {}
            Err(SinkError::SendTimeout { .. }) => break listener.accept().await,
            Err(error) => panic!("{error:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never timed out");
    };
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let mut sink = sink(address, &SyslogTransport::Tcp, SyslogFormat::Ocsf);
    let error = sink.deliver(&batch()).await.expect_err("refused");
    assert!(matches!(error, SinkError::Connect { .. }), "{error:?}");
}

#[tokio::test]
async fn udp_sends_one_datagram_per_message() {
    let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let address = server.local_addr().expect("address");
    let mut sink = sink(address, &SyslogTransport::Udp, SyslogFormat::Ocsf);
    let reports = batch();
    sink.deliver(&reports).await.expect("deliver");
    let mut buffer = vec![0; 65536];
    for report in &reports {
        let length = server.recv(&mut buffer).await.expect("recv");
        assert_eq!(
            std::str::from_utf8(&buffer[..length]).expect("UTF-8"),
            sink.message(report)
        );
    }
}

#[test]
fn datagrams_are_cut_at_a_character_boundary() {
    assert_eq!(truncate("abcdef", 10), "abcdef");
    assert_eq!(truncate("abcdef", 3), "abc");
    // 'é' is two bytes: cutting inside it keeps the character out.
    assert_eq!(truncate("aé", 2), "a");
    assert_eq!(truncate("aé", 3), "aé");
}

#[test]
fn a_tls_sink_needs_a_readable_ca_file_with_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = SocketAddr::from(([127, 0, 0, 1], 6514));
    let tls = |ca_file| SyslogTransport::Tls {
        ca_file,
        server_name: None,
    };
    let missing = dir.path().join("missing.pem");
    let error = SyslogSink::new(
        address,
        &tls(missing),
        SyslogFormat::Ocsf,
        Product::default(),
    )
    .expect_err("missing");
    assert!(matches!(error, SinkError::CaFile { .. }), "{error:?}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").expect("write");
    let error = SyslogSink::new(address, &tls(empty), SyslogFormat::Ocsf, Product::default())
        .expect_err("empty");
    assert!(
        matches!(error, SinkError::NoCaCertificate { .. }),
        "{error:?}"
    );
    let bad_name = SyslogTransport::Tls {
        ca_file: dir.path().join("missing.pem"),
        server_name: Some("not a name".to_owned()),
    };
    assert!(SyslogSink::new(address, &bad_name, SyslogFormat::Ocsf, Product::default()).is_err());
}
