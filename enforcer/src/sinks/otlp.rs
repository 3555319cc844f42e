//! OTLP logs over gRPC (placeholder until the OTLP sink lands).

use std::sync::Arc;

use super::{Sink, SinkError};
use crate::events::{Report, ocsf::Product};

/// Delivers reports as OTLP log records to a collector.
#[derive(Debug)]
pub struct OtlpSink {
    endpoint: String,
    product: Product,
}

impl OtlpSink {
    /// A sink for `endpoint`; connects lazily, on the first delivery.
    ///
    /// # Errors
    /// When `endpoint` is not a valid URI.
    pub fn new(endpoint: &str, product: Product) -> Result<Self, SinkError> {
        Ok(Self {
            endpoint: endpoint.to_owned(),
            product,
        })
    }
}

#[async_trait::async_trait]
impl Sink for OtlpSink {
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> Result<(), SinkError> {
        let _ = (batch, &self.endpoint, &self.product);
        Ok(())
    }
}
