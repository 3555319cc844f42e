//! The OTLP sink against a real OTLP/gRPC logs receiver (opentelemetry-proto's generated server
//! on tonic, on loopback): what arrives is what a collector gets, and a receiver that goes away
//! and comes back costs failed deliveries (which the fan-out retries), not the sink.

mod reports;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use enforcer::{
    events::{Report, ocsf::Product},
    sinks::{
        Sink, SinkError,
        otlp::{OtlpError, OtlpSink},
    },
};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::{KeyValue, any_value::Value as Any},
    logs::v1::LogRecord,
};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Response, Status,
    transport::{Server, server::TcpIncoming},
};

/// Keeps every request; refuses them all with UNAVAILABLE when `refuse` is set.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    refuse: bool,
}

#[async_trait::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        if self.refuse {
            return Err(Status::unavailable("collector is draining"));
        }
        self.received
            .lock()
            .expect("no test thread panicked holding it")
            .push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A running receiver; [`Receiver::stop`] shuts it down and waits until it has.
struct Receiver {
    address: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Receiver {
    /// Serves `collector` on `address` (port 0: any free port).
    async fn start(address: SocketAddr, collector: Collector) -> Self {
        let listener = TcpListener::bind(address).await.expect("bind the receiver");
        let address = listener.local_addr().expect("receiver address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .add_service(LogsServiceServer::new(collector))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            address,
            shutdown,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the receiver stops within 10 s")
            .expect("the receiver task did not panic")
            .expect("the receiver served without error");
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn batch(reports: impl IntoIterator<Item = Report>) -> Vec<Arc<Report>> {
    reports.into_iter().map(Arc::new).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
}

fn string(attributes: &[KeyValue], key: &str) -> String {
    match attribute(attributes, key) {
        Some(Any::StringValue(value)) => value.clone(),
        other => panic!("{key}: not a string attribute: {other:?}"),
    }
}

fn int(attributes: &[KeyValue], key: &str) -> i64 {
    match attribute(attributes, key) {
        Some(Any::IntValue(value)) => *value,
        other => panic!("{key}: not an int attribute: {other:?}"),
    }
}

fn body(record: &LogRecord) -> Value {
    match record.body.as_ref().and_then(|body| body.value.as_ref()) {
        Some(Any::StringValue(text)) => serde_json::from_str(text).expect("the body is JSON"),
        other => panic!("body is not a string: {other:?}"),
    }
}

fn received(collector: &Collector) -> Vec<ExportLogsServiceRequest> {
    collector
        .received
        .lock()
        .expect("no test thread panicked holding it")
        .clone()
}

#[tokio::test]
async fn a_collector_receives_each_report_as_a_log_record() {
    let collector = Collector::default();
    let receiver = Receiver::start(loopback(), collector.clone()).await;
    let mut sink = OtlpSink::new(&receiver.endpoint(), Product::default()).expect("sink");
    let reports = batch([
        Report::Flow(reports::denial()),
        Report::Flow(reports::aggregated_denial()),
        Report::Alert(reports::alert()),
        Report::Rejection(reports::rejection()),
    ]);
    sink.deliver(&reports).await.expect("delivered");
    receiver.stop().await;

    let requests = received(&collector);
    assert_eq!(requests.len(), 1, "one export per batch");
    let [resource_logs] = requests[0].resource_logs.as_slice() else {
        panic!("one ResourceLogs per node: {:?}", requests[0]);
    };
    let resource = resource_logs.resource.as_ref().expect("a resource");
    assert_eq!(string(&resource.attributes, "service.name"), "enforcer");
    assert_eq!(
        string(&resource.attributes, "service.version"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(string(&resource.attributes, "host.name"), "app-1");
    let [scope_logs] = resource_logs.scope_logs.as_slice() else {
        panic!("one ScopeLogs: {resource_logs:?}");
    };
    assert_eq!(
        scope_logs.scope.as_ref().map(|scope| scope.name.as_str()),
        Some("enforcer")
    );
    let [denial, aggregated, alert, rejection] = scope_logs.log_records.as_slice() else {
        panic!("four records: {scope_logs:?}");
    };

    let event_nanos = reports::EVENT_MILLIS * 1_000_000;
    assert_eq!(denial.time_unix_nano, event_nanos);
    assert!(denial.observed_time_unix_nano > event_nanos);
    assert_eq!(denial.severity_number, 13);
    assert_eq!(denial.severity_text, "WARN");
    assert_eq!(denial.event_name, "enforcer.flow.denied");
    let attributes = &denial.attributes;
    assert_eq!(string(attributes, "event.name"), "enforcer.flow.denied");
    assert_eq!(int(attributes, "ocsf.class_uid"), 4001);
    assert_eq!(int(attributes, "ocsf.severity_id"), 3);
    assert_eq!(string(attributes, "network.transport"), "tcp");
    assert_eq!(string(attributes, "network.type"), "ipv4");
    assert_eq!(string(attributes, "source.address"), "10.0.0.1");
    assert_eq!(int(attributes, "source.port"), 40000);
    assert_eq!(string(attributes, "destination.address"), "10.0.0.2");
    assert_eq!(int(attributes, "destination.port"), 5432);
    assert_eq!(string(attributes, "enforcer.src.identity"), "web");
    assert_eq!(string(attributes, "enforcer.dst.identity"), "db");
    assert_eq!(string(attributes, "enforcer.rule.uid"), "rules/web.toml:12");
    assert_eq!(string(attributes, "enforcer.policy.version"), "abc123");
    assert_eq!(int(attributes, "enforcer.count"), 1);
    assert_eq!(int(attributes, "process.pid"), 4242);
    assert_eq!(string(attributes, "process.executable.name"), "curl");
    assert_eq!(
        string(attributes, "process.executable.path"),
        "/usr/bin/curl"
    );
    assert_eq!(int(attributes, "process.parent_pid"), 4241);
    assert_eq!(string(attributes, "process.user.name"), "alice");
    assert_eq!(string(attributes, "container.id"), reports::CONTAINER_ID);
    let ocsf = body(denial);
    assert_eq!(ocsf["class_uid"], 4001);
    assert_eq!(ocsf["dst_endpoint"]["port"], 5432);

    assert_eq!(int(&aggregated.attributes, "enforcer.count"), 17);
    assert_eq!(
        int(&aggregated.attributes, "enforcer.first_seen_unix_nano"),
        i64::try_from(event_nanos).expect("fits")
    );
    assert_eq!(body(aggregated)["count"], 17);

    assert_eq!(alert.severity_text, "ERROR");
    assert_eq!(alert.severity_number, 17);
    assert_eq!(
        string(&alert.attributes, "event.name"),
        "enforcer.alert.lateral_movement"
    );
    assert_eq!(string(&alert.attributes, "threat.technique.id"), "T1046");
    assert_eq!(string(&alert.attributes, "threat.tactic.id"), "TA0007");
    assert_eq!(
        string(&alert.attributes, "enforcer.alert.kind"),
        "port_scan"
    );
    assert_eq!(int(&alert.attributes, "enforcer.alert.distinct_targets"), 3);
    assert_eq!(int(&alert.attributes, "enforcer.alert.attempts"), 25);
    assert_eq!(int(&alert.attributes, "ocsf.severity_id"), 4);
    assert_eq!(body(alert)["class_uid"], 4001);

    assert_eq!(rejection.severity_text, "ERROR");
    assert_eq!(
        string(&rejection.attributes, "event.name"),
        "enforcer.policy.rejected"
    );
    assert_eq!(int(&rejection.attributes, "ocsf.class_uid"), 5019);
    assert_eq!(
        string(&rejection.attributes, "enforcer.policy.origin"),
        "SIGHUP"
    );
    match attribute(&rejection.attributes, "enforcer.policy.errors") {
        Some(Any::ArrayValue(errors)) => assert_eq!(errors.values.len(), 2),
        other => panic!("errors: {other:?}"),
    }
    assert!(attribute(&rejection.attributes, "source.address").is_none());
    assert_eq!(body(rejection)["class_uid"], 5019);
}

#[tokio::test]
async fn a_receiver_that_goes_away_fails_deliveries_until_it_is_back() {
    let collector = Collector::default();
    let receiver = Receiver::start(loopback(), collector.clone()).await;
    let address = receiver.address;
    let mut sink = OtlpSink::new(&receiver.endpoint(), Product::default()).expect("sink");
    let one = batch([Report::Flow(reports::denial())]);
    sink.deliver(&one).await.expect("first delivery");

    receiver.stop().await;
    for attempt in 0..2 {
        match sink.deliver(&one).await {
            Err(SinkError::Otlp {
                endpoint,
                source: OtlpError::Connect(_) | OtlpError::Export(_),
            }) => assert_eq!(endpoint, format!("http://{address}")),
            other => panic!("attempt {attempt} with the receiver down: {other:?}"),
        }
        // What the fan-out does after a failure.
        sink.reset().await;
    }

    let receiver = Receiver::start(address, collector.clone()).await;
    sink.deliver(&one)
        .await
        .expect("delivered after the receiver came back");
    receiver.stop().await;
    assert_eq!(
        received(&collector).len(),
        2,
        "the first and the last delivery"
    );
}

#[tokio::test]
async fn no_receiver_is_a_connect_error() {
    let free = std::net::TcpListener::bind(loopback()).expect("bind");
    let address = free.local_addr().expect("address");
    drop(free);
    let mut sink = OtlpSink::new(&format!("http://{address}"), Product::default()).expect("sink");
    let started = std::time::Instant::now();
    let error = sink
        .deliver(&batch([Report::Flow(reports::denial())]))
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(
            error,
            SinkError::Otlp {
                source: OtlpError::Connect(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_grpc_error_from_the_collector_fails_the_delivery() {
    let collector = Collector {
        refuse: true,
        ..Collector::default()
    };
    let receiver = Receiver::start(loopback(), collector.clone()).await;
    let mut sink = OtlpSink::new(&receiver.endpoint(), Product::default()).expect("sink");
    let error = sink
        .deliver(&batch([Report::Rejection(reports::rejection())]))
        .await
        .expect_err("the collector refuses");
    receiver.stop().await;
    match error {
        SinkError::Otlp {
            source: OtlpError::Export(status),
            ..
        } => assert_eq!(status.code(), tonic::Code::Unavailable),
        other => panic!("{other:?}"),
    }
    assert!(received(&collector).is_empty());
}
