//! Reports as OTLP log records: the OCSF JSON as the body, the routing fields as attributes.

use std::time::{SystemTime, UNIX_EPOCH};

use enforcer_common::protocol;
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};

use crate::events::{
    FlowEndpoint, FlowProcess, FlowRecord, FlowWorkload, LateralMovementAlert, PatternKind,
    PolicyRejection, Report, Verdict,
    ocsf::{self, Product},
};

/// The instrumentation scope every record is reported under.
const SCOPE: &str = "enforcer";

/// One export request for `batch`, in order: one `ResourceLogs` per run of reports from the same
/// node (in practice one, since a daemon reports for its own node), each with one `ScopeLogs`.
pub(super) fn export_request(
    batch: &[std::sync::Arc<Report>],
    product: &Product,
    observed: SystemTime,
) -> ExportLogsServiceRequest {
    let observed = unix_nanos(observed);
    let mut resource_logs: Vec<(String, Vec<LogRecord>)> = Vec::new();
    for report in batch {
        let hostname = node_hostname(report);
        let record = log_record(report, product, observed);
        match resource_logs.last_mut() {
            Some((host, records)) if host == hostname => records.push(record),
            _ => resource_logs.push((hostname.to_owned(), vec![record])),
        }
    }
    ExportLogsServiceRequest {
        resource_logs: resource_logs
            .into_iter()
            .map(|(hostname, log_records)| ResourceLogs {
                resource: Some(resource(product, hostname)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.to_owned(),
                        version: product.version.clone(),
                        ..InstrumentationScope::default()
                    }),
                    log_records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            })
            .collect(),
    }
}

fn node_hostname(report: &Report) -> &str {
    match report {
        Report::Flow(record) => &record.node.hostname,
        Report::Alert(alert) => &alert.node.hostname,
        Report::Rejection(rejection) => &rejection.node.hostname,
    }
}

fn resource(product: &Product, hostname: String) -> Resource {
    let mut attributes = Attributes::default();
    attributes.string("service.name", product.name.clone());
    attributes.string("service.version", product.version.clone());
    attributes.string("host.name", hostname);
    Resource {
        attributes: attributes.0,
        ..Resource::default()
    }
}

/// OTLP times: nanoseconds since the epoch, where 0 means unknown (a clock before 1970).
fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    })
}

/// The OpenTelemetry severity of a report. A denial is WARN: the policy worked, but something
/// tried what it must not. An audit is INFO: nothing was refused. An alert is ERROR, not FATAL:
/// FATAL means the reporting program is failing, while here the enforcer works and has blocked
/// every attempt, yet the pattern calls for someone to act, above any single denial. A rejection
/// is ERROR: the operator's policy did not take effect.
const fn severity(report: &Report) -> (SeverityNumber, &'static str) {
    match report {
        Report::Flow(record) => match record.verdict {
            Verdict::Denied => (SeverityNumber::Warn, "WARN"),
            Verdict::Audited => (SeverityNumber::Info, "INFO"),
        },
        Report::Alert(_) | Report::Rejection(_) => (SeverityNumber::Error, "ERROR"),
    }
}

/// The event's name, both in the record's `event_name` and the `event.name` attribute (which
/// older collectors still read).
const fn event_name(report: &Report) -> &'static str {
    match report {
        Report::Flow(record) => match record.verdict {
            Verdict::Denied => "enforcer.flow.denied",
            Verdict::Audited => "enforcer.flow.audited",
        },
        Report::Alert(_) => "enforcer.alert.lateral_movement",
        Report::Rejection(_) => "enforcer.policy.rejected",
    }
}

const fn report_time(report: &Report) -> SystemTime {
    match report {
        Report::Flow(record) => record.time,
        Report::Alert(alert) => alert.time,
        Report::Rejection(rejection) => rejection.time,
    }
}

fn log_record(report: &Report, product: &Product, observed_unix_nanos: u64) -> LogRecord {
    let body = ocsf::render_report(report, product);
    let (severity_number, severity_text) = severity(report);
    let mut attributes = Attributes::default();
    attributes.string("event.name", event_name(report));
    for (attribute, field) in [
        ("ocsf.class_uid", "class_uid"),
        ("ocsf.severity_id", "severity_id"),
    ] {
        if let Some(value) = body.get(field).and_then(serde_json::Value::as_i64) {
            attributes.int(attribute, value);
        }
    }
    match report {
        Report::Flow(record) => flow_attributes(&mut attributes, record),
        Report::Alert(alert) => alert_attributes(&mut attributes, alert),
        Report::Rejection(rejection) => rejection_attributes(&mut attributes, rejection),
    }
    LogRecord {
        time_unix_nano: unix_nanos(report_time(report)),
        observed_time_unix_nano: observed_unix_nanos,
        severity_number: severity_number.into(),
        severity_text: severity_text.to_owned(),
        body: Some(string_value(body.to_string())),
        attributes: attributes.0,
        event_name: event_name(report).to_owned(),
        ..LogRecord::default()
    }
}

fn flow_attributes(attributes: &mut Attributes, record: &FlowRecord) {
    network_attributes(attributes, record.ip_version, Some(record.protocol));
    endpoint_attributes(attributes, "source", "enforcer.src", &record.src);
    endpoint_attributes(attributes, "destination", "enforcer.dst", &record.dst);
    attributes.string("enforcer.rule.uid", record.rule.uid.clone());
    attributes.string("enforcer.rule.name", record.rule.name.clone());
    attributes.string("enforcer.policy.version", record.policy_version.clone());
    attributes.string("enforcer.mode", record.mode.as_str());
    attributes.string("enforcer.layer", record.layer.as_str());
    attributes.int("enforcer.count", i64::from(record.count));
    if record.revoked {
        attributes.bool("enforcer.revoked", true);
    }
    if !record.swept_ports.is_empty() {
        attributes.ints(
            "enforcer.swept_ports",
            record.swept_ports.iter().map(|&port| i64::from(port)),
        );
    }
    if let Some((first, last)) = record.span {
        attributes.int("enforcer.first_seen_unix_nano", nanos_attribute(first));
        attributes.int("enforcer.last_seen_unix_nano", nanos_attribute(last));
    }
    process_attributes(
        attributes,
        record.process.as_ref(),
        record.workload.as_ref(),
    );
}

fn alert_attributes(attributes: &mut Attributes, alert: &LateralMovementAlert) {
    network_attributes(attributes, alert.ip_version, None);
    endpoint_attributes(attributes, "source", "enforcer.src", &alert.src);
    attributes.string("threat.technique.id", alert.technique.uid);
    attributes.string("threat.technique.name", alert.technique.name);
    attributes.string("threat.tactic.id", alert.technique.tactic_uid);
    attributes.string("threat.tactic.name", alert.technique.tactic_name);
    attributes.string(
        "enforcer.alert.kind",
        match alert.kind {
            PatternKind::PortScan => "port_scan",
            PatternKind::Sweep => "sweep",
            PatternKind::FanOut => "fan_out",
        },
    );
    attributes.int(
        "enforcer.alert.distinct_targets",
        i64::from(alert.distinct_targets),
    );
    attributes.int(
        "enforcer.alert.distinct_destinations",
        i64::from(alert.distinct_destinations),
    );
    attributes.int(
        "enforcer.alert.distinct_ports",
        i64::from(alert.distinct_ports),
    );
    attributes.int(
        "enforcer.alert.attempts",
        i64::try_from(alert.attempts).unwrap_or(i64::MAX),
    );
    attributes.int(
        "enforcer.alert.window_ms",
        i64::try_from(alert.window.as_millis()).unwrap_or(i64::MAX),
    );
    attributes.int(
        "enforcer.first_seen_unix_nano",
        nanos_attribute(alert.first_seen),
    );
    attributes.string("enforcer.policy.version", alert.policy_version.clone());
    process_attributes(attributes, alert.process.as_ref(), alert.workload.as_ref());
}

fn rejection_attributes(attributes: &mut Attributes, rejection: &PolicyRejection) {
    attributes.string("enforcer.policy.dir", rejection.policy_dir.clone());
    attributes.string("enforcer.policy.origin", rejection.origin.clone());
    attributes.strings("enforcer.policy.errors", &rejection.errors);
    if let Some(version) = &rejection.in_force_version {
        attributes.string("enforcer.policy.version", version.clone());
    }
    attributes.int(
        "enforcer.policy.generation",
        i64::from(rejection.in_force_generation),
    );
}

/// `network.type`, and `network.transport` for the protocols the semantic conventions (or the
/// policy's own terms, for ICMP) name; another protocol is left to the body's `protocol_num`.
fn network_attributes(attributes: &mut Attributes, ip_version: u8, protocol_number: Option<u8>) {
    attributes.string(
        "network.type",
        if ip_version == 6 { "ipv6" } else { "ipv4" },
    );
    if let Some(number) = protocol_number {
        let name = protocol::name(number);
        if name != "other" {
            attributes.string("network.transport", name);
        }
    }
}

fn endpoint_attributes(
    attributes: &mut Attributes,
    semantic_prefix: &str,
    enforcer_prefix: &str,
    endpoint: &FlowEndpoint,
) {
    attributes.string(
        &format!("{semantic_prefix}.address"),
        endpoint.ip.to_string(),
    );
    if let Some(port) = endpoint.port {
        attributes.int(&format!("{semantic_prefix}.port"), i64::from(port));
    }
    attributes.string(
        &format!("{enforcer_prefix}.identity"),
        endpoint.name.clone(),
    );
}

fn process_attributes(
    attributes: &mut Attributes,
    process: Option<&FlowProcess>,
    workload: Option<&FlowWorkload>,
) {
    if let Some(process) = process {
        attributes.int("process.pid", i64::from(process.pid));
        attributes.string("process.executable.name", process.name.clone());
        if let Some(executable) = &process.executable {
            attributes.string("process.executable.path", executable.clone());
        }
        if let Some(cmd_line) = &process.cmd_line {
            attributes.string("process.command_line", cmd_line.clone());
        }
        if let Some(parent_pid) = process.parent_pid {
            attributes.int("process.parent_pid", i64::from(parent_pid));
        }
        attributes.int("process.user.id", i64::from(process.uid));
        if let Some(user_name) = &process.user_name {
            attributes.string("process.user.name", user_name.clone());
        }
    }
    if let Some(workload) = workload {
        attributes.string("enforcer.cgroup.path", workload.cgroup_path.clone());
        if let Some(unit) = &workload.systemd_unit {
            attributes.string("enforcer.systemd.unit", unit.clone());
        }
        if let Some(container_id) = &workload.container_id {
            attributes.string("container.id", container_id.clone());
        }
    }
}

/// A time as an int attribute (OTLP has no time type for attributes).
fn nanos_attribute(time: SystemTime) -> i64 {
    i64::try_from(unix_nanos(time)).unwrap_or(i64::MAX)
}

fn string_value(value: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value)),
    }
}

/// A record's attributes, in the order they are added.
#[derive(Default)]
struct Attributes(Vec<KeyValue>);

impl Attributes {
    fn push(&mut self, key: &str, value: any_value::Value) {
        self.0.push(KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        });
    }

    fn string(&mut self, key: &str, value: impl Into<String>) {
        self.push(key, any_value::Value::StringValue(value.into()));
    }

    fn int(&mut self, key: &str, value: i64) {
        self.push(key, any_value::Value::IntValue(value));
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.push(key, any_value::Value::BoolValue(value));
    }

    fn strings(&mut self, key: &str, values: &[String]) {
        self.array(key, values.iter().cloned().map(string_value));
    }

    fn ints(&mut self, key: &str, values: impl Iterator<Item = i64>) {
        self.array(
            key,
            values.map(|value| AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
        );
    }

    fn array(&mut self, key: &str, values: impl Iterator<Item = AnyValue>) {
        self.push(
            key,
            any_value::Value::ArrayValue(ArrayValue {
                values: values.collect(),
            }),
        );
    }
}
