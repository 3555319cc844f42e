//! Elastic Common Schema 8.11 rendering, for Elastic users who would rather not map OCSF:
//!
//! - [`FlowRecord`]s as network events (`event.kind` "event", `event.category` ["network"]), the
//!   enforcing node as both `host` and `observer` (a host firewall);
//! - [`LateralMovementAlert`](super::LateralMovementAlert)s as alerts (`event.kind` "alert",
//!   categories network and intrusion detection) with `threat.*` in MITRE ATT&CK terms;
//! - [`PolicyRejection`](super::PolicyRejection)s as failed configuration changes
//!   (`event.category` ["configuration"]: no traffic is involved, so "network" would be a lie).
//!
//! Only ECS fields are used outside `enforcer.*`, each with its ECS type and allowed values
//! (`tests/ecs/validate.mjs` checks that against the field definitions of the `@elastic/ecs`
//! package). What ECS has no field for (identities, labels, counts, the deciding layer and
//! mode, alert targets) sits under the custom top-level `enforcer` object, which ECS leaves to
//! its users.
//!
//! # Examples
//!
//! ```
//! # use enforcer::events::{Report, ecs::render_report, ocsf::Product};
//! # fn show(report: &Report) {
//! let document = render_report(report, &Product::default());
//! assert_eq!(document["ecs"]["version"], "8.11.0");
//! # }
//! ```

mod alert;
mod rejection;

use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer_common::protocol;
use serde_json::{Map, Value, json};

use super::{
    FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowWorkload, Report, Verdict, ocsf::Product,
};

/// The ECS version the documents follow (that of the `@elastic/ecs` package the validator pins).
pub const ECS_VERSION: &str = "8.11.0";
/// `event.module`: the source of every document, for Elastic's dataset routing.
const MODULE: &str = "enforcer";

/// Renders any report as an ECS document.
#[must_use]
pub fn render_report(report: &Report, product: &Product) -> Value {
    match report {
        Report::Flow(record) => render_flow(record, product),
        Report::Alert(alert) => alert::render_alert(alert, product),
        Report::Rejection(rejection) => rejection::render_rejection(rejection, product),
    }
}

/// Renders a denied or audited connection attempt as an ECS network event.
fn render_flow(record: &FlowRecord, product: &Product) -> Value {
    let (action, types, outcome) = flow_categorization(record);
    let mut event = json!({
        "kind": "event",
        "category": ["network"],
        "type": types,
        "action": action,
        "outcome": outcome,
        "severity": flow_severity(record),
        "dataset": "enforcer.flow",
        "module": MODULE,
    });
    if let Some((first, last)) = record.span {
        insert_span(&mut event, first, last);
    }
    let mut enforcer = json!({
        "count": record.count,
        "mode": record.mode.as_str(),
        "layer": record.layer.as_str(),
        "direction": ocsf_direction(record),
        "source": endpoint_details(&record.src),
        "destination": endpoint_details(&record.dst),
    });
    if record.revoked {
        enforcer["revoked"] = json!(true);
    }
    if !record.swept_ports.is_empty() {
        enforcer["swept_ports"] = json!(record.swept_ports);
    }
    if record.process.is_some() {
        enforcer["process_from_socket"] = json!(record.process_from_socket);
    }
    let mut rule = Map::new();
    rule.insert("id".to_owned(), json!(record.rule.uid));
    rule.insert("name".to_owned(), json!(record.rule.name));
    if let Some(description) = &record.rule.description {
        rule.insert("description".to_owned(), json!(description));
    }
    rule.insert("version".to_owned(), json!(record.policy_version));

    let mut document = base_document(record.time, flow_message(record), &record.node, product);
    document.insert("event".to_owned(), event);
    document.insert("source".to_owned(), address(&record.src));
    document.insert("destination".to_owned(), address(&record.dst));
    document.insert(
        "network".to_owned(),
        network(record.ip_version, Some(record.protocol), record.outbound),
    );
    document.insert("rule".to_owned(), Value::Object(rule));
    let mut related = Related::new(&record.node);
    related.ip(record.src.ip);
    related.ip(record.dst.ip);
    insert_actor(
        &mut document,
        &mut related,
        &mut enforcer,
        record.process.as_ref(),
        record.workload.as_ref(),
    );
    document.insert("related".to_owned(), related.into_value());
    document.insert("enforcer".to_owned(), enforcer);
    Value::Object(document)
}

/// `event.action`, `event.type` and `event.outcome` of a flow. A denial is a connection that
/// failed because it was denied; a revocation ends one that was established; an audit is a
/// connection that went through (allowed) though the policy would refuse it, which
/// `enforcer.mode` "audit" tells apart from an allowed connection.
fn flow_categorization(record: &FlowRecord) -> (&'static str, Vec<&'static str>, &'static str) {
    match (record.verdict, record.revoked) {
        (Verdict::Denied, false) => ("connection-denied", vec!["connection", "denied"], "failure"),
        (Verdict::Denied, true) => (
            "connection-revoked",
            vec!["connection", "denied", "end"],
            "failure",
        ),
        (Verdict::Audited, _) => (
            "connection-audited",
            vec!["connection", "allowed"],
            "success",
        ),
    }
}

/// `event.severity`: OCSF's `severity_id` of the same report, so both schemas rank alike: 3 for
/// a flow between two segment members, 2 otherwise (alerts are 4, rejections 3).
const fn flow_severity(record: &FlowRecord) -> u32 {
    if record.src.segmented && record.dst.segmented {
        3
    } else {
        2
    }
}

/// OCSF's direction (`lateral` when neither end is `@world`), kept beside ECS's
/// `network.direction`, which a host-based observer must give as ingress or egress.
const fn ocsf_direction(record: &FlowRecord) -> &'static str {
    if !record.src.is_world && !record.dst.is_world {
        "lateral"
    } else if record.outbound {
        "outbound"
    } else {
        "inbound"
    }
}

fn flow_message(record: &FlowRecord) -> String {
    let verb = match (record.verdict, record.revoked) {
        (Verdict::Denied, false) => "denied",
        (Verdict::Denied, true) => "revoked",
        (Verdict::Audited, _) => "audited (would deny)",
    };
    let attempts = if record.count > 1 {
        format!(" ({} attempts)", record.count)
    } else {
        String::new()
    };
    format!(
        "{verb} {} {} -> {} ({} -> {}) by {}{attempts}",
        protocol::name(record.protocol),
        socket_text(record.src.ip, record.src.port),
        socket_text(record.dst.ip, record.dst.port),
        record.src.name,
        record.dst.name,
        record.rule.uid,
    )
}

fn socket_text(ip: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(port) => std::net::SocketAddr::new(ip, port).to_string(),
        None => ip.to_string(),
    }
}

/// The fields every document has: time, message, schema version, and the enforcing node as the
/// `host` the event is about and the `observer` (a host firewall) that reported it.
fn base_document(
    time: SystemTime,
    message: String,
    node: &FlowNode,
    product: &Product,
) -> Map<String, Value> {
    let mut document = Map::new();
    document.insert("@timestamp".to_owned(), json!(timestamp(time)));
    document.insert("message".to_owned(), Value::String(message));
    document.insert("ecs".to_owned(), json!({ "version": ECS_VERSION }));
    document.insert(
        "host".to_owned(),
        json!({ "hostname": node.hostname, "name": node.hostname }),
    );
    document.insert(
        "observer".to_owned(),
        json!({
            "hostname": node.hostname,
            "product": product.name,
            "vendor": product.vendor_name,
            "version": product.version,
            "type": "firewall",
        }),
    );
    document
}

/// `event.start`, `event.end` and `event.duration` (nanoseconds) of an aggregated report.
fn insert_span(event: &mut Value, first: SystemTime, last: SystemTime) {
    event["start"] = json!(timestamp(first));
    event["end"] = json!(timestamp(last));
    let duration = last.duration_since(first).unwrap_or(Duration::ZERO);
    event["duration"] = json!(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
}

/// RFC 3339 in UTC with milliseconds, as Elasticsearch's default date format reads it. A clock
/// outside 1970..9999 is clamped: `@timestamp` is required, so the document must still carry one.
fn timestamp(time: SystemTime) -> String {
    let latest = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(time.clamp(UNIX_EPOCH, latest)).to_string()
}

/// `source`/`destination`: `ip`, `address` (the same, as ECS wants the raw form kept) and
/// `port` (absent for ICMP).
fn address(endpoint: &FlowEndpoint) -> Value {
    let mut object = Map::new();
    object.insert("ip".to_owned(), json!(endpoint.ip.to_string()));
    object.insert("address".to_owned(), json!(endpoint.ip.to_string()));
    if let Some(port) = endpoint.port {
        object.insert("port".to_owned(), json!(port));
    }
    Value::Object(object)
}

/// What ECS has no field for about an endpoint: its identity and labels.
fn endpoint_details(endpoint: &FlowEndpoint) -> Value {
    json!({
        "identity": endpoint.name,
        "labels": endpoint.labels,
        "is_world": endpoint.is_world,
        "segmented": endpoint.segmented,
    })
}

/// `network`: `type`, `iana_number`, `transport` (ECS's lowercase IANA keyword, for the
/// protocols that have one here) and `direction` from the node's point of view, as ECS asks of
/// a host-based observer.
fn network(ip_version: u8, protocol_number: Option<u8>, outbound: bool) -> Value {
    let mut object = Map::new();
    object.insert(
        "type".to_owned(),
        json!(if ip_version == 6 { "ipv6" } else { "ipv4" }),
    );
    if let Some(number) = protocol_number {
        object.insert("iana_number".to_owned(), json!(number.to_string()));
        let transport = match number {
            protocol::TCP => Some("tcp"),
            protocol::UDP => Some("udp"),
            protocol::ICMP => Some("icmp"),
            protocol::ICMPV6 => Some("ipv6-icmp"),
            _ => None,
        };
        if let Some(transport) = transport {
            object.insert("transport".to_owned(), json!(transport));
        }
    }
    object.insert(
        "direction".to_owned(),
        json!(if outbound { "egress" } else { "ingress" }),
    );
    Value::Object(object)
}

/// `process`, `user` and `container` of the acting process, and its cgroup under
/// `enforcer.workload`.
fn insert_actor(
    document: &mut Map<String, Value>,
    related: &mut Related,
    enforcer: &mut Value,
    process: Option<&FlowProcess>,
    workload: Option<&FlowWorkload>,
) {
    if let Some(process) = process {
        let mut object = Map::new();
        object.insert("pid".to_owned(), json!(process.pid));
        object.insert("name".to_owned(), json!(process.name));
        if let Some(cmd_line) = &process.cmd_line {
            object.insert("command_line".to_owned(), json!(cmd_line));
        }
        if let Some(executable) = &process.executable {
            object.insert("executable".to_owned(), json!(executable));
        }
        if let Some(parent_pid) = process.parent_pid {
            object.insert("parent".to_owned(), json!({ "pid": parent_pid }));
        }
        document.insert("process".to_owned(), Value::Object(object));
        // ECS types user ids as keywords.
        let mut user = Map::new();
        user.insert("id".to_owned(), json!(process.uid.to_string()));
        if let Some(name) = &process.user_name {
            user.insert("name".to_owned(), json!(name));
            related.user(name);
        }
        document.insert("user".to_owned(), Value::Object(user));
    }
    if let Some(workload) = workload {
        if let Some(container_id) = &workload.container_id {
            document.insert("container".to_owned(), json!({ "id": container_id }));
        }
        let mut object = Map::new();
        object.insert("cgroup_path".to_owned(), json!(workload.cgroup_path));
        if let Some(unit) = &workload.systemd_unit {
            object.insert("systemd_unit".to_owned(), json!(unit));
        }
        enforcer["workload"] = Value::Object(object);
    }
}

/// ECS `related.*`: every address, host and user of the document, so one search finds it.
struct Related {
    ips: Vec<String>,
    hosts: Vec<String>,
    users: Vec<String>,
}

impl Related {
    fn new(node: &FlowNode) -> Self {
        Self {
            ips: Vec::new(),
            hosts: vec![node.hostname.clone()],
            users: Vec::new(),
        }
    }

    fn ip(&mut self, ip: IpAddr) {
        let ip = ip.to_string();
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    fn user(&mut self, name: &str) {
        if !self.users.iter().any(|user| user == name) {
            self.users.push(name.to_owned());
        }
    }

    fn into_value(self) -> Value {
        let mut object = Map::new();
        for (key, values) in [
            ("ip", self.ips),
            ("hosts", self.hosts),
            ("user", self.users),
        ] {
            if !values.is_empty() {
                object.insert(key.to_owned(), json!(values));
            }
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests;
