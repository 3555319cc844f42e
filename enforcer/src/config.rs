//! The daemon's own settings file (`enforcer run --config FILE`): where reports go, how they are
//! aggregated, when lateral movement is suspected, where metrics are served.
//!
//! A config is validated whole before the daemon touches anything privileged, and fails closed:
//! any unknown key, any key that does not belong to its sink kind, any value out of range is an
//! error naming `FILE:LINE:COLUMN` ([`ConfigError`]), never a silent default. Command-line flags
//! override the file (`main` applies them; `--events` adds [`events_flag_sink`] beside the
//! file's sinks). `docs/configuration.md` lists every key.
#![forbid(unsafe_code)]

mod convert;
mod error;
mod schema;
#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use self::error::{ConfigError, ConfigProblem};
use crate::sinks::{JsonFormat, SinkKind, SinkSpec, SyslogTransport};

/// Reports a sink's queue holds by default while the sink is slow or down.
pub const DEFAULT_QUEUE: usize = 4096;

/// How long repeated attempts are collapsed into one report by default.
pub const DEFAULT_AGGREGATE_WINDOW: Duration = Duration::from_secs(10);

/// Distinct destinations (or ports) one source must be denied against within
/// [`DEFAULT_LATERAL_WINDOW`] before a lateral-movement alert is raised.
pub const DEFAULT_DISTINCT_TARGETS: u32 = 10;

pub const DEFAULT_LATERAL_WINDOW: Duration = Duration::from_secs(60);

/// Rotated files a file sink keeps when `rotate_bytes` is set and `keep` is not.
pub const DEFAULT_KEEP: u32 = 5;

/// The validated daemon configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub events: EventsConfig,
    /// In file order (a sink's index here is the one its metrics carry). Empty when the file
    /// has no `[[sink]]`: the daemon then writes OCSF to standard output unless `--events`
    /// names a sink.
    pub sinks: Vec<SinkSpec>,
    /// `None`: no metrics endpoint.
    pub metrics: Option<MetricsConfig>,
}

/// `[events]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    pub aggregate_window: Duration,
    /// The queue of every sink that does not set its own.
    pub queue: usize,
    pub lateral_movement: LateralMovementConfig,
}

/// `[events.lateral_movement]`: one source denied against many distinct destinations or ports
/// within `window` raises one alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LateralMovementConfig {
    pub enabled: bool,
    pub distinct_targets: u32,
    pub window: Duration,
}

/// `[metrics]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (plain HTTP: keep it on loopback or a management network).
    pub listen: SocketAddr,
}

impl Default for DaemonConfig {
    /// What the daemon runs with when no `--config` is given.
    fn default() -> Self {
        Self {
            events: EventsConfig::default(),
            sinks: Vec::new(),
            metrics: None,
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            aggregate_window: DEFAULT_AGGREGATE_WINDOW,
            queue: DEFAULT_QUEUE,
            lateral_movement: LateralMovementConfig::default(),
        }
    }
}

impl Default for LateralMovementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            distinct_targets: DEFAULT_DISTINCT_TARGETS,
            window: DEFAULT_LATERAL_WINDOW,
        }
    }
}

impl DaemonConfig {
    /// Reads and validates the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read; otherwise the first problem found,
    /// with its line and column.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text`, the contents of the config file `path`. Not pure: a TLS sink's
    /// `ca_file` is read and must hold PEM certificates, so that a bad CA stops the daemon at
    /// startup rather than at its first report. Relative paths in the file (`path`, `ca_file`)
    /// are taken relative to the directory of `path`.
    ///
    /// # Errors
    /// The first problem found, with its line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        convert::parse(text, path)
    }
}

/// The sink `--events` names: `-` is standard output, anything else a file appended to.
#[must_use]
pub fn events_flag_sink(events: &str, queue: usize) -> SinkSpec {
    let kind = if events == "-" {
        SinkKind::Stdout {
            format: JsonFormat::Ocsf,
        }
    } else {
        SinkKind::File {
            path: PathBuf::from(events),
            format: JsonFormat::Ocsf,
            rotation: None,
        }
    };
    SinkSpec {
        name: sink_name(&kind),
        kind,
        queue,
    }
}

/// The name logs and the status show for a sink: `file:/var/log/…`, `stdout`,
/// `syslog+tls://127.0.0.1:6514`, `otlp:http://…`. It carries addresses, so metrics label sinks
/// by position and kind instead ([`crate::metrics::sink_label`]).
#[must_use]
pub fn sink_name(kind: &SinkKind) -> String {
    match kind {
        SinkKind::File { path, .. } => format!("file:{}", path.display()),
        SinkKind::Stdout { .. } => "stdout".to_owned(),
        SinkKind::Syslog {
            address, transport, ..
        } => {
            let scheme = match transport {
                SyslogTransport::Udp => "udp",
                SyslogTransport::Tcp => "tcp",
                SyslogTransport::Tls { .. } => "tls",
            };
            format!("syslog+{scheme}://{address}")
        }
        SinkKind::Otlp { endpoint } => format!("otlp:{endpoint}"),
    }
}
