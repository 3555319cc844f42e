use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    ConfigError, ConfigProblem, DaemonConfig, EventsConfig, LateralMovementConfig, MetricsConfig,
    events_flag_sink,
};
use crate::sinks::{JsonFormat, Rotation, SinkKind, SinkSpec, SyslogFormat, SyslogTransport};

/// Base64 of a few bytes between certificate markers: PEM-valid, which is all the config checks
/// (the syslog sink parses the DER when it builds its TLS client).
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";

fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
    DaemonConfig::parse(text, Path::new("/etc/enforcer/daemon.toml"))
}

/// The error's line, column and problem; panics when `text` is accepted.
fn error(text: &str) -> (u32, u32, ConfigProblem) {
    error_in(text, Path::new("/etc/enforcer/daemon.toml"))
}

fn error_in(text: &str, path: &Path) -> (u32, u32, ConfigProblem) {
    match DaemonConfig::parse(text, path) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(ConfigError::Invalid {
            line,
            column,
            problem,
            ..
        }) => (line, column, problem),
        Err(other) => panic!("not a positioned error: {other}"),
    }
}

/// A directory holding `ca.pem` with `contents`, and the config path inside it.
fn with_ca(contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("ca.pem"), contents).expect("write CA");
    let config = dir.path().join("daemon.toml");
    (dir, config)
}

#[test]
fn empty_file_is_the_default() {
    let config = parse("").expect("valid");
    assert_eq!(config, DaemonConfig::default());
    assert!(
        config.sinks.is_empty(),
        "the daemon picks stdout: {config:?}"
    );
    assert_eq!(config.events.queue, 4096);
    assert_eq!(config.events.aggregate_window, Duration::from_secs(10));
    assert_eq!(
        config.events.lateral_movement,
        LateralMovementConfig {
            enabled: true,
            distinct_targets: 10,
            window: Duration::from_secs(60),
        }
    );
    assert!(config.metrics.is_none());
}

#[test]
fn every_key_is_read() {
    let (dir, path) = with_ca(PEM);
    let text = r#"
[events]
aggregate_window = "500ms"
queue = 100

[events.lateral_movement]
enabled = false
distinct_targets = 3
window = "2m"

[[sink]]
kind = "file"
path = "events.jsonl"
format = "ecs"
rotate_bytes = 1048576
keep = 3
queue = 50

[[sink]]
kind = "stdout"

[[sink]]
kind = "syslog"
address = "127.0.0.1:6514"
transport = "tls"
ca_file = "ca.pem"
server_name = "siem.example"
format = "cef"

[[sink]]
kind = "syslog"
address = "[::1]:514"
transport = "udp"

[[sink]]
kind = "otlp"
endpoint = "http://127.0.0.1:4317"

[metrics]
listen = "127.0.0.1:9464"
"#;
    let config = DaemonConfig::parse(text, &path).expect("valid");
    assert_eq!(
        config.events,
        EventsConfig {
            aggregate_window: Duration::from_millis(500),
            queue: 100,
            lateral_movement: LateralMovementConfig {
                enabled: false,
                distinct_targets: 3,
                window: Duration::from_secs(120),
            },
        }
    );
    let file = dir.path().join("events.jsonl");
    let ca_file = dir.path().join("ca.pem");
    let address: SocketAddr = "127.0.0.1:6514".parse().expect("address");
    let v6: SocketAddr = "[::1]:514".parse().expect("address");
    assert_eq!(
        config.sinks,
        vec![
            SinkSpec {
                name: format!("file:{}", file.display()),
                kind: SinkKind::File {
                    path: file,
                    format: JsonFormat::Ecs,
                    rotation: Some(Rotation {
                        bytes: 1 << 20,
                        keep: 3
                    }),
                },
                queue: 50,
            },
            SinkSpec {
                name: "stdout".into(),
                kind: SinkKind::Stdout {
                    format: JsonFormat::Ocsf
                },
                queue: 100,
            },
            SinkSpec {
                name: "syslog+tls://127.0.0.1:6514".into(),
                kind: SinkKind::Syslog {
                    address,
                    transport: SyslogTransport::Tls {
                        ca_file,
                        server_name: Some("siem.example".into()),
                    },
                    format: SyslogFormat::Cef,
                },
                queue: 100,
            },
            SinkSpec {
                name: "syslog+udp://[::1]:514".into(),
                kind: SinkKind::Syslog {
                    address: v6,
                    transport: SyslogTransport::Udp,
                    format: SyslogFormat::Ocsf,
                },
                queue: 100,
            },
            SinkSpec {
                name: "otlp:http://127.0.0.1:4317".into(),
                kind: SinkKind::Otlp {
                    endpoint: "http://127.0.0.1:4317".into()
                },
                queue: 100,
            },
        ]
    );
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            listen: "127.0.0.1:9464".parse().expect("address")
        })
    );
}

#[test]
fn rotation_keeps_five_by_default() {
    let text = "[[sink]]\nkind = \"file\"\npath = \"/var/log/e.jsonl\"\nrotate_bytes = 4096\n";
    let config = parse(text).expect("valid");
    let SinkKind::File { rotation, .. } = &config.sinks[0].kind else {
        panic!("not a file sink: {config:?}");
    };
    assert_eq!(
        *rotation,
        Some(Rotation {
            bytes: 4096,
            keep: 5
        })
    );
}

#[test]
fn events_flag_names_stdout_or_a_file() {
    assert_eq!(
        events_flag_sink("-", 7),
        SinkSpec {
            name: "stdout".into(),
            kind: SinkKind::Stdout {
                format: JsonFormat::Ocsf
            },
            queue: 7,
        }
    );
    assert_eq!(
        events_flag_sink("/tmp/e.jsonl", 9),
        SinkSpec {
            name: "file:/tmp/e.jsonl".into(),
            kind: SinkKind::File {
                path: "/tmp/e.jsonl".into(),
                format: JsonFormat::Ocsf,
                rotation: None,
            },
            queue: 9,
        }
    );
}

#[test]
fn errors_render_as_file_line_column() {
    let error = parse("[events]\nqueue = 0\n").expect_err("out of range");
    assert_eq!(
        error.to_string(),
        "/etc/enforcer/daemon.toml:2:9: `queue` = 0 is out of range; it must be between 1 and \
         1048576"
    );
    assert_eq!(error.position(), Some((2, 9)));
}

#[test]
fn unreadable_file_names_the_path() {
    let error = DaemonConfig::load(Path::new("/nonexistent/daemon.toml")).expect_err("missing");
    assert!(
        matches!(&error, ConfigError::Read { path, .. } if path == Path::new("/nonexistent/daemon.toml"))
    );
    assert!(error.position().is_none());
}

#[test]
fn syntax_error() {
    let (line, column, problem) = error("[events]\nqueue = \n");
    assert_eq!((line, column), (2, 9));
    assert!(matches!(problem, ConfigProblem::Syntax { .. }), "{problem}");
}

#[test]
fn unknown_top_level_key_lists_the_tables() {
    let (line, column, problem) = error("[events]\n\n[sinks]\nkind = \"file\"\n");
    assert_eq!((line, column), (3, 2));
    assert_eq!(
        problem.to_string(),
        "unknown key `sinks` in the top level; expected one of: events, sink, metrics"
    );
}

#[test]
fn unknown_keys_in_events_and_lateral_movement() {
    let (line, column, problem) = error("[events]\nqueue = 5\n  windoww = \"1s\"\n");
    assert_eq!((line, column), (3, 3));
    assert!(
        matches!(&problem, ConfigProblem::UnknownKey { key, table: "[events]", .. } if key == "windoww"),
        "{problem}"
    );
    let (line, column, problem) =
        error("[events.lateral_movement]\nenabled = true\nthreshold = 3\n");
    assert_eq!((line, column), (3, 1));
    assert_eq!(
        problem.to_string(),
        "unknown key `threshold` in [events.lateral_movement]; expected one of: enabled, \
         distinct_targets, window"
    );
}

#[test]
fn the_earliest_key_problem_is_reported() {
    let (line, column, _) = error("zzz = 1\n[events]\naaa = 2\n");
    assert_eq!((line, column), (1, 1));
}

#[test]
fn unknown_sink_key_lists_the_kinds_keys() {
    let (line, column, problem) = error("[[sink]]\nkind = \"stdout\"\ncolour = true\n");
    assert_eq!((line, column), (3, 1));
    assert_eq!(
        problem.to_string(),
        "unknown key `colour` in [[sink]]; expected one of: kind, format, queue"
    );
}

#[test]
fn key_of_another_kind_is_refused_at_the_key() {
    let text = "[[sink]]\nkind = \"syslog\"\naddress = \"127.0.0.1:514\"\ntransport = \"tcp\"\n\
                path = \"/x\"\n";
    let (line, column, problem) = error(text);
    assert_eq!((line, column), (5, 1));
    assert!(
        matches!(&problem, ConfigProblem::KeyNotForKind { key, kind: "syslog", .. } if key == "path"),
        "{problem}"
    );
    let (line, column, problem) =
        error("[[sink]]\nkind = \"file\"\npath = \"/x\"\n   endpoint = \"http://a:1\"\n");
    assert_eq!((line, column), (4, 4));
    assert!(matches!(
        problem,
        ConfigProblem::KeyNotForKind { kind: "file", .. }
    ));
}

#[test]
fn tls_keys_are_refused_on_plain_transports() {
    let text = "[[sink]]\nkind = \"syslog\"\naddress = \"127.0.0.1:514\"\ntransport = \"udp\"\n\
                server_name = \"siem\"\nca_file = \"/ca.pem\"\n";
    let (line, column, problem) = error(text);
    assert_eq!((line, column), (5, 1));
    assert_eq!(
        problem.to_string(),
        "`server_name` applies only to transport = \"tls\", not \"udp\""
    );
}

#[test]
fn format_of_another_kind_is_refused_at_the_value() {
    let (line, column, problem) =
        error("[[sink]]\nkind = \"file\"\npath = \"/x\"\nformat = \"cef\"\n");
    assert_eq!((line, column), (4, 10));
    assert_eq!(
        problem.to_string(),
        "format \"cef\" is not for a file sink; a file sink writes \"ocsf\" or \"ecs\""
    );
    let text = "[[sink]]\nkind = \"syslog\"\naddress = \"127.0.0.1:514\"\ntransport = \"tcp\"\n\
                format = \"ecs\"\n";
    let (line, column, problem) = error(text);
    assert_eq!((line, column), (5, 10));
    assert!(matches!(
        problem,
        ConfigProblem::BadFormat { kind: "syslog", .. }
    ));
}

#[test]
fn unknown_and_missing_kind() {
    let (line, column, problem) = error("[[sink]]\nkind = \"kafka\"\n");
    assert_eq!((line, column), (2, 8));
    assert!(matches!(&problem, ConfigProblem::UnknownSinkKind { value } if value == "kafka"));
    let (line, column, problem) = error("\n\n[[sink]]\npath = \"/x\"\n");
    assert_eq!((line, column), (3, 1));
    assert!(matches!(
        problem,
        ConfigProblem::MissingKey {
            key: "kind",
            table: "[[sink]]"
        }
    ));
}

#[test]
fn missing_required_keys_point_at_the_header() {
    let (line, column, problem) = error("[[sink]]\nkind = \"stdout\"\n[[sink]]\nkind = \"file\"\n");
    assert_eq!((line, column), (3, 1));
    assert!(matches!(
        problem,
        ConfigProblem::MissingKey { key: "path", .. }
    ));
    let (line, column, problem) = error("[metrics]\n");
    assert_eq!((line, column), (1, 1));
    assert!(matches!(
        problem,
        ConfigProblem::MissingKey { key: "listen", .. }
    ));
}

#[test]
fn table_shapes() {
    let (line, column, problem) = error("[sink]\nkind = \"stdout\"\n");
    assert_eq!((line, column), (1, 1));
    assert_eq!(problem.to_string(), "`sink` must be written as [[sink]]");
    let (line, column, problem) = error("events = 3\n");
    assert_eq!((line, column), (1, 10));
    assert!(matches!(
        problem,
        ConfigProblem::TableShape { key: "events", .. }
    ));
}

#[test]
fn wrong_type_names_the_key() {
    let (line, column, problem) = error("[events]\nqueue = \"big\"\n");
    assert_eq!((line, column), (2, 9));
    assert!(
        matches!(&problem, ConfigProblem::WrongType { key: Some(key), .. } if key == "queue"),
        "{problem}"
    );
    let (line, column, problem) = error("[events.lateral_movement]\nenabled = \"yes\"\n");
    assert_eq!((line, column), (2, 11));
    assert!(
        matches!(&problem, ConfigProblem::WrongType { key: Some(key), .. } if key == "enabled")
    );
}

#[test]
fn bad_durations() {
    let (line, column, problem) = error("[events]\naggregate_window = \"10 parsecs\"\n");
    assert_eq!((line, column), (2, 20));
    assert!(matches!(
        problem,
        ConfigProblem::BadDuration {
            key: "aggregate_window",
            ..
        }
    ));
    let (line, column, problem) = error("[events]\naggregate_window = \"100ms\"\n");
    assert_eq!((line, column), (2, 20));
    assert_eq!(
        problem.to_string(),
        "`aggregate_window` = 100ms is out of range; it must be between 200ms and 1h"
    );
    let (line, column, problem) = error("[events.lateral_movement]\nwindow = \"2h\"\n");
    assert_eq!((line, column), (2, 10));
    assert_eq!(
        problem.to_string(),
        "`window` = 2h is out of range; it must be between 1s and 1h"
    );
}

#[test]
fn numbers_out_of_range() {
    let (line, column, problem) = error("[events.lateral_movement]\ndistinct_targets = 1\n");
    assert_eq!((line, column), (2, 20));
    assert!(matches!(
        problem,
        ConfigProblem::OutOfRange {
            key: "distinct_targets",
            value: 1,
            min: 2,
            ..
        }
    ));
    let (line, column, problem) =
        error("[[sink]]\nkind = \"file\"\npath = \"/x\"\nrotate_bytes = 10\n");
    assert_eq!((line, column), (4, 16));
    assert!(matches!(
        problem,
        ConfigProblem::OutOfRange {
            key: "rotate_bytes",
            ..
        }
    ));
    let (line, column, problem) = error("[[sink]]\nkind = \"stdout\"\nqueue = -1\n");
    assert_eq!((line, column), (3, 9));
    assert!(matches!(
        problem,
        ConfigProblem::OutOfRange { key: "queue", .. }
    ));
}

#[test]
fn keep_needs_rotate_bytes() {
    let (line, column, problem) = error("[[sink]]\nkind = \"file\"\npath = \"/x\"\nkeep = 5\n");
    assert_eq!((line, column), (4, 8));
    assert!(matches!(problem, ConfigProblem::KeepWithoutRotation));
}

#[test]
fn addresses_must_be_ip_and_port() {
    let text =
        "[[sink]]\nkind = \"syslog\"\naddress = \"siem.example:6514\"\ntransport = \"tcp\"\n";
    let (line, column, problem) = error(text);
    assert_eq!((line, column), (3, 11));
    assert!(matches!(
        problem,
        ConfigProblem::BadAddress { key: "address", .. }
    ));
    let (line, column, problem) = error("[metrics]\nlisten = \"127.0.0.1\"\n");
    assert_eq!((line, column), (2, 10));
    assert!(matches!(
        problem,
        ConfigProblem::BadAddress { key: "listen", .. }
    ));
}

#[test]
fn unknown_transport() {
    let text = "[[sink]]\nkind = \"syslog\"\naddress = \"127.0.0.1:1\"\ntransport = \"ssl\"\n";
    let (line, column, problem) = error(text);
    assert_eq!((line, column), (4, 13));
    assert!(matches!(&problem, ConfigProblem::UnknownTransport { value } if value == "ssl"));
}

const TLS_SINK: &str = "[[sink]]\nkind = \"syslog\"\naddress = \"127.0.0.1:6514\"\n\
                        transport = \"tls\"\n";

#[test]
fn tls_needs_a_ca_file() {
    let (line, column, problem) = error(TLS_SINK);
    assert_eq!((line, column), (4, 13));
    assert!(matches!(problem, ConfigProblem::MissingCaFile));
}

#[test]
fn missing_ca_file_points_at_the_value() {
    let (dir, path) = with_ca(PEM);
    let text = format!("{TLS_SINK}ca_file = \"absent.pem\"\n");
    let (line, column, problem) = error_in(&text, &path);
    assert_eq!((line, column), (5, 11));
    assert!(
        matches!(&problem, ConfigProblem::CaFileUnreadable { path, .. } if *path == dir.path().join("absent.pem")),
        "{problem}"
    );
}

#[test]
fn ca_file_without_certificates_is_refused() {
    let (_dir, path) =
        with_ca("-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n");
    let text = format!("{TLS_SINK}ca_file = \"ca.pem\"\n");
    let (line, column, problem) = error_in(&text, &path);
    assert_eq!((line, column), (5, 11));
    assert!(
        matches!(problem, ConfigProblem::CaFileNoCertificate { .. }),
        "{problem}"
    );

    let (_dir, path) = with_ca("-----BEGIN CERTIFICATE-----\nMIIBAA==\n");
    let (_, _, problem) = error_in(&text, &path);
    assert!(
        matches!(problem, ConfigProblem::CaFileNotPem { .. }),
        "{problem}"
    );
}

#[test]
fn bad_server_name() {
    let (_dir, path) = with_ca(PEM);
    let text = format!("{TLS_SINK}ca_file = \"ca.pem\"\nserver_name = \"not a name\"\n");
    let (line, column, problem) = error_in(&text, &path);
    assert_eq!((line, column), (6, 15));
    assert!(matches!(problem, ConfigProblem::BadServerName { .. }));
}

#[test]
fn bad_otlp_endpoints() {
    for (endpoint, reason) in [
        ("127.0.0.1:4317", "the scheme must be http or https"),
        ("grpc://collector:4317", "the scheme must be http or https"),
        (
            "http://collector:4317/v1/logs",
            "a path or query is not allowed: the OTLP client adds the service path",
        ),
    ] {
        let text = format!("[[sink]]\nkind = \"otlp\"\nendpoint = \"{endpoint}\"\n");
        let (line, column, problem) = error(&text);
        assert_eq!((line, column), (3, 12), "{endpoint}");
        assert!(
            matches!(&problem, ConfigProblem::BadEndpoint { reason: r, .. } if *r == reason),
            "{endpoint}: {problem}"
        );
    }
}

#[test]
fn two_sinks_on_one_destination() {
    let text = "[[sink]]\nkind = \"file\"\npath = \"/x\"\n\n[[sink]]\nkind = \"file\"\n\
                path = \"/x\"\n";
    let (line, column, problem) = error(text);
    assert_eq!((line, column), (5, 1));
    assert!(matches!(
        problem,
        ConfigProblem::DuplicateFile { first: 0, .. }
    ));
    let (_, _, problem) = error("[[sink]]\nkind = \"stdout\"\n[[sink]]\nkind = \"stdout\"\n");
    assert!(matches!(
        problem,
        ConfigProblem::DuplicateStdout { first: 0 }
    ));
}

#[test]
fn empty_path_is_refused() {
    let (line, column, problem) = error("[[sink]]\nkind = \"file\"\npath = \"\"\n");
    assert_eq!((line, column), (3, 8));
    assert!(matches!(problem, ConfigProblem::EmptyPath { key: "path" }));
}
