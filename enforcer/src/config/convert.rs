//! The document as written (serde structs that keep every value's span) → [`DaemonConfig`], each
//! value checked where it is written.

use std::{
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde::Deserialize;
use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::{
    ConfigError, ConfigProblem, DaemonConfig, EventsConfig, LateralMovementConfig, MetricsConfig,
    schema::{self, Found},
    sink_name,
};
use crate::sinks::{JsonFormat, Rotation, SinkKind, SinkSpec, SyslogFormat, SyslogTransport};

/// The same bounds as `--aggregate-window`.
const AGGREGATE_WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_secs(3600));
const LATERAL_WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
const QUEUE_RANGE: (i64, i64) = (1, 1 << 20);
const DISTINCT_TARGETS_RANGE: (i64, i64) = (2, 1 << 16);
/// Below a page, a file would rotate at nearly every report.
const ROTATE_BYTES_RANGE: (i64, i64) = (4096, 1 << 40);
const KEEP_RANGE: (i64, i64) = (1, 1000);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    sink: Vec<Spanned<RawSink>>,
    metrics: Option<RawMetrics>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    aggregate_window: Option<Spanned<String>>,
    queue: Option<Spanned<i64>>,
    #[serde(default)]
    lateral_movement: RawLateralMovement,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLateralMovement {
    enabled: Option<bool>,
    distinct_targets: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
}

/// Every key of every kind: [`schema::check`] has already refused the keys that do not belong to
/// the sink's kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: Spanned<String>,
    path: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    rotate_bytes: Option<Spanned<i64>>,
    keep: Option<Spanned<i64>>,
    address: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    queue: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

type Checked<T> = Result<T, Found>;

pub(super) fn parse(text: &str, path: &Path) -> Result<DaemonConfig, ConfigError> {
    let at = |(span, problem): Found| ConfigError::at(path, text, &span, problem);
    let root = DeTable::parse(text).map_err(|error| {
        let message = error.message().trim().to_owned();
        at((
            error.span().unwrap_or(0..0),
            ConfigProblem::Syntax { message },
        ))
    })?;
    let mut key_problems = schema::check(root.get_ref());
    key_problems.sort_by_key(|(span, _)| span.start);
    if let Some(first) = key_problems.into_iter().next() {
        return Err(at(first));
    }
    let leaves = leaf_keys(root.get_ref());
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(root)).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let key = leaves
            .iter()
            .filter(|(_, value)| value.start <= span.start && span.end <= value.end)
            .min_by_key(|(_, value)| value.len())
            .map(|(key, _)| key.clone());
        // serde names the Rust type the value is read into; the reader wants the TOML one.
        let message = error
            .message()
            .trim()
            .replace("expected i64", "expected an integer");
        at((span, ConfigProblem::WrongType { key, message }))
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new(""));
    convert(raw, base).map_err(at)
}

/// Every key with the span of its value, at any depth: a type error names the innermost key
/// whose value holds it.
fn leaf_keys(table: &DeTable<'_>) -> Vec<(String, Range<usize>)> {
    let mut out = Vec::new();
    let mut stack = vec![table];
    while let Some(table) = stack.pop() {
        for (key, value) in table {
            out.push((key.get_ref().to_string(), value.span()));
            match value.get_ref() {
                DeValue::Table(inner) => stack.push(inner),
                DeValue::Array(items) => {
                    stack.extend(items.iter().filter_map(|item| item.get_ref().as_table()));
                }
                _ => {}
            }
        }
    }
    out
}

fn convert(raw: RawConfig, base: &Path) -> Checked<DaemonConfig> {
    let events = events(raw.events)?;
    let mut sinks: Vec<SinkSpec> = Vec::with_capacity(raw.sink.len());
    for sink in raw.sink {
        let header = sink.span();
        let spec = self::sink(sink, base, events.queue)?;
        if let Some(problem) = duplicate(&sinks, &spec) {
            return Err((header, problem));
        }
        sinks.push(spec);
    }
    let metrics = raw
        .metrics
        .map(|metrics| -> Checked<MetricsConfig> {
            Ok(MetricsConfig {
                listen: socket_address("listen", &metrics.listen)?,
            })
        })
        .transpose()?;
    Ok(DaemonConfig {
        events,
        sinks,
        metrics,
    })
}

fn events(raw: RawEvents) -> Checked<EventsConfig> {
    let defaults = EventsConfig::default();
    let lateral = raw.lateral_movement;
    let lateral_defaults = defaults.lateral_movement;
    Ok(EventsConfig {
        aggregate_window: raw
            .aggregate_window
            .map(|value| duration("aggregate_window", &value, AGGREGATE_WINDOW_RANGE))
            .transpose()?
            .unwrap_or(defaults.aggregate_window),
        queue: raw
            .queue
            .map(|value| queue(&value))
            .transpose()?
            .unwrap_or(defaults.queue),
        lateral_movement: LateralMovementConfig {
            enabled: lateral.enabled.unwrap_or(lateral_defaults.enabled),
            distinct_targets: lateral
                .distinct_targets
                .map(|value| in_range("distinct_targets", &value, DISTINCT_TARGETS_RANGE))
                .transpose()?
                .unwrap_or(lateral_defaults.distinct_targets),
            window: lateral
                .window
                .map(|value| duration("window", &value, LATERAL_WINDOW_RANGE))
                .transpose()?
                .unwrap_or(lateral_defaults.window),
        },
    })
}

/// Two sinks writing one file would interleave their lines; two on standard output likewise.
fn duplicate(earlier: &[SinkSpec], sink: &SinkSpec) -> Option<ConfigProblem> {
    let first = earlier
        .iter()
        .position(|other| match (&other.kind, &sink.kind) {
            (SinkKind::File { path: a, .. }, SinkKind::File { path: b, .. }) => a == b,
            (SinkKind::Stdout { .. }, SinkKind::Stdout { .. }) => true,
            _ => false,
        })?;
    Some(match &sink.kind {
        SinkKind::File { path, .. } => ConfigProblem::DuplicateFile {
            path: path.clone(),
            first,
        },
        _ => ConfigProblem::DuplicateStdout { first },
    })
}

fn sink(raw: Spanned<RawSink>, base: &Path, default_queue: usize) -> Checked<SinkSpec> {
    let header = raw.span();
    let raw = raw.into_inner();
    let queue = raw
        .queue
        .as_ref()
        .map(queue)
        .transpose()?
        .unwrap_or(default_queue);
    // `schema::check` has refused unknown kinds and missing required keys.
    let required = |value: Option<Spanned<String>>, key: &'static str| {
        value.ok_or_else(|| {
            let table = "[[sink]]";
            (header.clone(), ConfigProblem::MissingKey { key, table })
        })
    };
    let kind = match raw.kind.get_ref().as_str() {
        "file" => {
            let path = required(raw.path, "path")?;
            SinkKind::File {
                path: file_path("path", &path, base)?,
                format: json_format("file", raw.format.as_ref())?,
                rotation: rotation(raw.rotate_bytes.as_ref(), raw.keep.as_ref())?,
            }
        }
        "stdout" => SinkKind::Stdout {
            format: json_format("stdout", raw.format.as_ref())?,
        },
        "syslog" => {
            let address = required(raw.address, "address")?;
            let transport = required(raw.transport, "transport")?;
            SinkKind::Syslog {
                address: socket_address("address", &address)?,
                transport: syslog_transport(&transport, raw.ca_file, raw.server_name, base)?,
                format: syslog_format(raw.format.as_ref())?,
            }
        }
        "otlp" => SinkKind::Otlp {
            endpoint: otlp_endpoint(&required(raw.endpoint, "endpoint")?)?,
        },
        other => {
            let value = other.to_owned();
            return Err((raw.kind.span(), ConfigProblem::UnknownSinkKind { value }));
        }
    };
    Ok(SinkSpec {
        name: sink_name(&kind),
        kind,
        queue,
    })
}

fn duration(
    key: &'static str,
    value: &Spanned<String>,
    (min, max): (Duration, Duration),
) -> Checked<Duration> {
    let parsed = humantime::parse_duration(value.get_ref()).map_err(|source| {
        let problem = ConfigProblem::BadDuration {
            key,
            value: value.get_ref().clone(),
            source,
        };
        (value.span(), problem)
    })?;
    if !(min..=max).contains(&parsed) {
        let problem = ConfigProblem::DurationOutOfRange {
            key,
            value: parsed,
            min,
            max,
        };
        return Err((value.span(), problem));
    }
    Ok(parsed)
}

fn queue(value: &Spanned<i64>) -> Checked<usize> {
    in_range("queue", value, QUEUE_RANGE)
}

/// `value` within `(min, max)`, converted to the type the setting has.
fn in_range<T: TryFrom<i64>>(
    key: &'static str,
    value: &Spanned<i64>,
    (min, max): (i64, i64),
) -> Checked<T> {
    let number = *value.get_ref();
    (min..=max)
        .contains(&number)
        .then(|| T::try_from(number).ok())
        .flatten()
        .ok_or_else(|| {
            let problem = ConfigProblem::OutOfRange {
                key,
                value: number,
                min,
                max,
            };
            (value.span(), problem)
        })
}

fn file_path(key: &'static str, value: &Spanned<String>, base: &Path) -> Checked<PathBuf> {
    if value.get_ref().is_empty() {
        return Err((value.span(), ConfigProblem::EmptyPath { key }));
    }
    Ok(base.join(value.get_ref()))
}

fn json_format(kind: &'static str, value: Option<&Spanned<String>>) -> Checked<JsonFormat> {
    match value.map(|value| (value.get_ref().as_str(), value)) {
        None | Some(("ocsf", _)) => Ok(JsonFormat::Ocsf),
        Some(("ecs", _)) => Ok(JsonFormat::Ecs),
        Some((other, value)) => Err(bad_format(kind, other, value, &["ocsf", "ecs"])),
    }
}

fn syslog_format(value: Option<&Spanned<String>>) -> Checked<SyslogFormat> {
    match value.map(|value| (value.get_ref().as_str(), value)) {
        None | Some(("ocsf", _)) => Ok(SyslogFormat::Ocsf),
        Some(("cef", _)) => Ok(SyslogFormat::Cef),
        Some((other, value)) => Err(bad_format("syslog", other, value, &["ocsf", "cef"])),
    }
}

fn bad_format(
    kind: &'static str,
    written: &str,
    value: &Spanned<String>,
    allowed: &'static [&'static str],
) -> Found {
    let problem = ConfigProblem::BadFormat {
        value: written.to_owned(),
        kind,
        allowed,
    };
    (value.span(), problem)
}

fn rotation(
    bytes: Option<&Spanned<i64>>,
    keep: Option<&Spanned<i64>>,
) -> Checked<Option<Rotation>> {
    let Some(bytes) = bytes else {
        return match keep {
            Some(keep) => Err((keep.span(), ConfigProblem::KeepWithoutRotation)),
            None => Ok(None),
        };
    };
    Ok(Some(Rotation {
        bytes: in_range("rotate_bytes", bytes, ROTATE_BYTES_RANGE)?,
        keep: keep
            .map(|keep| in_range("keep", keep, KEEP_RANGE))
            .transpose()?
            .unwrap_or(super::DEFAULT_KEEP),
    }))
}

fn socket_address(key: &'static str, value: &Spanned<String>) -> Checked<SocketAddr> {
    value.get_ref().parse().map_err(|source| {
        let problem = ConfigProblem::BadAddress {
            key,
            value: value.get_ref().clone(),
            source,
        };
        (value.span(), problem)
    })
}

fn syslog_transport(
    transport: &Spanned<String>,
    ca_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    base: &Path,
) -> Checked<SyslogTransport> {
    match transport.get_ref().as_str() {
        "udp" => Ok(SyslogTransport::Udp),
        "tcp" => Ok(SyslogTransport::Tcp),
        "tls" => {
            let ca_file = ca_file.ok_or((transport.span(), ConfigProblem::MissingCaFile))?;
            let server_name = server_name
                .map(|name| -> Checked<String> {
                    match ServerName::try_from(name.get_ref().as_str()) {
                        Ok(_) => Ok(name.into_inner()),
                        Err(_) => {
                            let value = name.get_ref().clone();
                            Err((name.span(), ConfigProblem::BadServerName { value }))
                        }
                    }
                })
                .transpose()?;
            Ok(SyslogTransport::Tls {
                ca_file: certificates(&ca_file, base)?,
                server_name,
            })
        }
        other => {
            let value = other.to_owned();
            Err((transport.span(), ConfigProblem::UnknownTransport { value }))
        }
    }
}

/// The CA file, resolved, once it is known to hold at least one PEM certificate.
fn certificates(value: &Spanned<String>, base: &Path) -> Checked<PathBuf> {
    let path = file_path("ca_file", value, base)?;
    let at = |problem| (value.span(), problem);
    let pem = std::fs::read(&path).map_err(|source| {
        at(ConfigProblem::CaFileUnreadable {
            path: path.clone(),
            source,
        })
    })?;
    let mut count = 0_usize;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|source| {
            at(ConfigProblem::CaFileNotPem {
                path: path.clone(),
                source,
            })
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(at(ConfigProblem::CaFileNoCertificate { path }));
    }
    Ok(path)
}

/// `http://host:port` or `https://host:port`, nothing after the authority: the OTLP client adds
/// the service path itself.
fn otlp_endpoint(value: &Spanned<String>) -> Checked<String> {
    let bad = |reason| {
        let problem = ConfigProblem::BadEndpoint {
            value: value.get_ref().clone(),
            reason,
        };
        (value.span(), problem)
    };
    let uri: hyper::Uri = value
        .get_ref()
        .parse()
        .map_err(|_| bad("not a URI; expected http://host:port or https://host:port"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("the scheme must be http or https"));
    }
    if uri
        .authority()
        .is_none_or(|authority| authority.host().is_empty())
    {
        return Err(bad("no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "a path or query is not allowed: the OTLP client adds the service path",
        ));
    }
    Ok(value.get_ref().clone())
}
