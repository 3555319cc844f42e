//! Where reports go: any number of sinks, each behind a bounded queue of its own, so that a sink
//! that is slow or down never holds up enforcement, the event pipeline or the other sinks. What a
//! sink could not deliver is counted, per sink, in attempts as well as in reports, so that the
//! event accounting (Σ count delivered + lost = attempts) holds at every sink.
//!
//! The contract every sink kind implements is [`Sink`]; [`SinkSpec`] says which sinks to run
//! (from `[[sink]]` in the daemon's config file, or `--events`), and [`SinkStats`] is what each
//! one counts, read by the metrics endpoint and the daemon's status. [`Fanout`] runs the sinks,
//! on a runtime of their own.

pub mod cef;
mod fanout;
mod file;
pub mod otlp;
pub mod rfc5424;
mod syslog;
#[cfg(test)]
mod test_support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

pub use self::{
    fanout::{Fanout, NamedSink},
    file::{FileSink, StdoutSink},
    syslog::SyslogSink,
};
use crate::events::Report;

/// Errors building or running a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing an event")]
    Write(#[source] std::io::Error),
    #[error("writing to {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rotating {path}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing to standard output")]
    Stdout(#[source] std::io::Error),
    #[error("sink {sink}: a queue must hold at least one report")]
    EmptyQueue { sink: String },
    #[error("starting the sink runtime")]
    Runtime(#[source] std::io::Error),
    #[error("reading the CA certificates in {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no CA certificate")]
    NoCaCertificate { path: PathBuf },
    #[error("a CA certificate in {path} is unusable")]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS client configuration")]
    TlsConfig(#[source] rustls::Error),
    #[error("{name:?} is not a valid TLS server name")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("connecting to {address}")]
    Connect {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {address}: no answer within {timeout:?}")]
    ConnectTimeout {
        address: SocketAddr,
        timeout: std::time::Duration,
    },
    #[error("TLS handshake with {address}")]
    Handshake {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("sending to {address}")]
    Send {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("sending to {address}: not accepted within {timeout:?}")]
    SendTimeout {
        address: SocketAddr,
        timeout: std::time::Duration,
    },
    #[error("{address} closed the connection")]
    Closed { address: SocketAddr },
    #[error("OTLP collector at {endpoint}")]
    Otlp {
        endpoint: String,
        #[source]
        source: otlp::OtlpError,
    },
}

/// The schema a JSON sink (file, stdout) writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JsonFormat {
    /// OCSF 1.1.0, as POLICY.md defines the event contract.
    #[default]
    Ocsf,
    /// Elastic Common Schema, for Elastic users.
    Ecs,
}

/// What a syslog message carries after its RFC 5424 header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyslogFormat {
    /// The OCSF JSON object as the message.
    #[default]
    Ocsf,
    /// ArcSight Common Event Format.
    Cef,
}

/// How syslog messages travel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One datagram per message (RFC 5426): no delivery is confirmed.
    Udp,
    /// Octet-counted frames (RFC 6587) over TCP.
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425), the server checked against `ca_file`.
    Tls {
        ca_file: PathBuf,
        /// The name the server's certificate must carry (default: the address's host).
        server_name: Option<String>,
    },
}

/// Size-based rotation of a file sink: at `bytes`, `path` becomes `path.1` (and so on up to
/// `keep`, the oldest removed) and a new `path` is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub bytes: u64,
    pub keep: u32,
}

/// One kind of sink and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkKind {
    File {
        path: PathBuf,
        format: JsonFormat,
        rotation: Option<Rotation>,
    },
    Stdout {
        format: JsonFormat,
    },
    Syslog {
        address: SocketAddr,
        transport: SyslogTransport,
        format: SyslogFormat,
    },
    /// OTLP logs over gRPC.
    Otlp {
        /// `http://host:port` (or `https://`).
        endpoint: String,
    },
}

/// A sink to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    /// A name for logs and metrics: `file:/var/log/…`, `syslog:127.0.0.1:6514`, …
    pub name: String,
    pub kind: SinkKind,
    /// Reports the sink's queue holds while it is slow or down; beyond it reports are lost
    /// (counted).
    pub queue: usize,
}

/// What one sink counts. Reports and the attempts they stand for ([`Report::attempts`]) are
/// counted apart: a SIEM's figures are attempts, a queue's are reports.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Reports handed to the sink's queue (or lost at it).
    pub offered: AtomicU64,
    pub offered_attempts: AtomicU64,
    /// Reports the sink's destination accepted.
    pub delivered: AtomicU64,
    pub delivered_attempts: AtomicU64,
    /// Reports lost because the queue was full.
    pub dropped: AtomicU64,
    pub dropped_attempts: AtomicU64,
    /// Reports lost because delivery failed for good (an unrenderable report, a rejected
    /// write after every retry, a queue left undelivered at shutdown).
    pub failed: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// Delivery attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Reports waiting in the queue now, or in the batch being delivered.
    pub queued: AtomicU64,
    pub queued_attempts: AtomicU64,
    /// 1 since the last delivery succeeded, 0 since one failed (and before the first): a sink
    /// that works shows 1 once it has delivered, files and stdout included.
    pub connected: AtomicU64,
}

impl SinkStats {
    /// `offered == delivered + dropped + failed + queued`, in reports and in attempts: what the
    /// accounting tests and the status check. The counters are read one by one, so a report
    /// moving between two of them at that instant can make a single reading off by it; the
    /// fan-out counts a report into its new place before out of its old.
    #[must_use]
    pub fn balanced(&self) -> bool {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        get(&self.offered)
            == get(&self.delivered) + get(&self.dropped) + get(&self.failed) + get(&self.queued)
            && get(&self.offered_attempts)
                == get(&self.delivered_attempts)
                    + get(&self.dropped_attempts)
                    + get(&self.failed_attempts)
                    + get(&self.queued_attempts)
    }
}

/// A destination for reports. The fan-out owns each sink on a task of its own: it hands the
/// sink batches from the sink's queue, and on an error backs off, calls [`Sink::reset`], and
/// retries the same batch, so that a sink only has to deliver or say that it did not.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Delivers every report of `batch`, in order, or fails as a whole (the fan-out retries it).
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> Result<(), SinkError>;

    /// Drops whatever connection the sink holds, so that the next delivery reconnects.
    async fn reset(&mut self) {}
}
