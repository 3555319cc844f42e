//! A real OTLP/gRPC logs receiver for the daemon's OTLP sink: opentelemetry-proto's generated
//! server on tonic, on 127.0.0.1, on a runtime of its own (the tests are synchronous). It keeps
//! every log record it receives; dropping it shuts the server down.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    logs::v1::LogRecord,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, transport::Server};

#[derive(Clone, Default)]
struct Keep(Arc<Mutex<Vec<LogRecord>>>);

#[tonic::async_trait]
impl LogsService for Keep {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let records = request
            .into_inner()
            .resource_logs
            .into_iter()
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records);
        self.0.lock().expect("not poisoned").extend(records);
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The running receiver.
pub struct Collector {
    address: SocketAddr,
    records: Keep,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Serves on a free port of 127.0.0.1.
    #[must_use]
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("collector address");
        let records = Keep::default();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let service = records.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("collector runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                Server::builder()
                    .add_service(LogsServiceServer::new(service))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .expect("the collector serves");
            });
        });
        Self {
            address,
            records,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, as the sink's `endpoint`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Waits until `count` records arrived (panics after `timeout`) and returns them all.
    #[must_use]
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<LogRecord> {
        let start = Instant::now();
        loop {
            let records = self.snapshot();
            if records.len() >= count || start.elapsed() > crate::patience::patient(timeout) {
                assert!(
                    records.len() >= count,
                    "the collector received {} of {count} log records",
                    records.len()
                );
                return records;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn snapshot(&self) -> Vec<LogRecord> {
        self.records.0.lock().expect("not poisoned").clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The string or integer value of attribute `key` of `record`, as text.
#[must_use]
pub fn attribute(record: &LogRecord, key: &str) -> Option<String> {
    record
        .attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
        .map(|value| match value {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            Any::BoolValue(b) => b.to_string(),
            Any::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

/// The record's body as text (the sink sends the OCSF JSON there).
#[must_use]
pub fn body(record: &LogRecord) -> Option<String> {
    match record.body.as_ref()?.value.as_ref()? {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}
