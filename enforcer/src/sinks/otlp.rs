//! OTLP logs over gRPC, for an OpenTelemetry Collector (or any OTLP receiver) in front of the
//! SIEM. Each report becomes one log record whose body is the report's OCSF JSON, so the
//! collector forwards the full event contract of POLICY.md untouched, and whose attributes carry
//! the fields a collector routes and filters on (OpenTelemetry semantic conventions where one
//! exists, `enforcer.*` otherwise), so that no pipeline has to parse the body to route it.
//!
//! The sink connects on its first delivery, not at start: a collector that starts after the
//! daemon (or restarts) costs retries, never the daemon's start. One batch is one export call.

mod records;

use std::{sync::Arc, time::Duration};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use tonic::{
    codegen::http::{Uri, uri::InvalidUri},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use super::{Sink, SinkError};
use crate::events::{Report, ocsf::Product};

/// How long establishing the connection (TCP, and TLS for `https`) may take: a collector that is
/// down must fail the delivery promptly, so the fan-out backs off and retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one export call may take before it fails: a collector that accepts the connection
/// but stalls must not hold the sink's queue forever.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the OTLP sink could not be set up or could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("the endpoint is not a URI")]
    Uri(#[source] InvalidUri),
    #[error("the endpoint's scheme must be http or https, not {scheme:?}")]
    Scheme { scheme: Option<String> },
    #[error("the endpoint names no host")]
    MissingHost,
    #[error("setting up TLS")]
    Tls(#[source] tonic::transport::Error),
    #[error("connecting")]
    Connect(#[source] tonic::transport::Error),
    /// The collector answered with a gRPC error (or the call timed out): the batch was not taken.
    #[error("exporting logs")]
    Export(#[source] Box<tonic::Status>),
}

/// Delivers reports as OTLP log records to a collector.
#[derive(Debug)]
pub struct OtlpSink {
    /// The endpoint as configured, for errors and logs.
    address: String,
    endpoint: Endpoint,
    product: Product,
    /// The connection, made on the first delivery and dropped by [`Sink::reset`].
    client: Option<LogsServiceClient<Channel>>,
}

impl OtlpSink {
    /// A sink for `endpoint` (`http://host:port`, or `https://` for TLS checked against the
    /// system's trust store); connects lazily, on the first delivery.
    ///
    /// # Errors
    /// When `endpoint` is not a URI, its scheme is neither `http` nor `https`, it names no host,
    /// or TLS cannot be set up.
    pub fn new(endpoint: &str, product: Product) -> Result<Self, SinkError> {
        let fail = |source| SinkError::Otlp {
            endpoint: endpoint.to_owned(),
            source,
        };
        let uri: Uri = endpoint
            .parse()
            .map_err(|error| fail(OtlpError::Uri(error)))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => {
                return Err(fail(OtlpError::Scheme {
                    scheme: other.map(str::to_owned),
                }));
            }
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(fail(OtlpError::MissingHost));
        }
        let mut channel = Endpoint::from(uri)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT);
        if tls {
            channel = channel
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|error| fail(OtlpError::Tls(error)))?;
        }
        Ok(Self {
            address: endpoint.to_owned(),
            endpoint: channel,
            product,
            client: None,
        })
    }
}

#[async_trait::async_trait]
impl Sink for OtlpSink {
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let request = records::export_request(batch, &self.product, std::time::SystemTime::now());
        let address = &self.address;
        let fail = |source| SinkError::Otlp {
            endpoint: address.clone(),
            source,
        };
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let channel = self
                    .endpoint
                    .connect()
                    .await
                    .map_err(|error| fail(OtlpError::Connect(error)))?;
                self.client.insert(LogsServiceClient::new(channel))
            }
        };
        let response = client
            .export(request)
            .await
            .map_err(|status| fail(OtlpError::Export(Box::new(status))))?
            .into_inner();
        // OTLP forbids retrying a partial success (the accepted records would be duplicated):
        // the collector keeps what it took, and what it refused is only worth a warning.
        if let Some(partial) = response.partial_success
            && (partial.rejected_log_records > 0 || !partial.error_message.is_empty())
        {
            tracing::warn!(
                endpoint = %address,
                rejected = partial.rejected_log_records,
                message = %partial.error_message,
                "the OTLP collector refused part of a batch"
            );
        }
        Ok(())
    }

    async fn reset(&mut self) {
        self.client = None;
    }
}

#[cfg(test)]
mod tests;
