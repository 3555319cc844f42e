//! OCSF 1.1.0 rendering, the event contract of POLICY.md ready for a SIEM:
//!
//! - [`FlowRecord`]s as Network Activity (class 4001), with the `security_control` and `host`
//!   profiles;
//! - [`LateralMovementAlert`](super::LateralMovementAlert)s as Network Activity too, refused, of
//!   severity 4, with the ATT&CK technique under `attacks` ([`render_alert`]);
//! - [`PolicyRejection`]s as Device Config State Change (class 5019, category Discovery), with the
//!   `host` profile (`security_control` is not defined for that class): the node's intended
//!   configuration, the policy on disk, failed to take effect.
//!
//! Both share `metadata` (version, product) and `device` (the node), so a SIEM correlates a
//! rejection with the denials that follow it.
//!
//! # Examples
//!
//! ```
//! # use enforcer::events::ocsf::{Product, render, render_rejection};
//! # fn show(record: &enforcer::events::FlowRecord, rejection: &enforcer::events::PolicyRejection) {
//! let event = render(record, &Product::default());
//! assert_eq!(event["class_uid"], 4001);
//! let event = render_rejection(rejection, &Product::default());
//! assert_eq!(event["class_uid"], 5019);
//! # }
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use enforcer_common::protocol;
use serde_json::{Map, Value, json};

use super::{
    FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowWorkload, PolicyRejection, Report, Verdict,
};

/// OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.1.0";
/// Fields a process can choose itself, so a SIEM must not trust them for attribution: the source
/// address (`IP_FREEBIND`, a raw header), the source port, the name (`PR_SET_NAME`) and the
/// command line (its own argv).
const PROCESS_CONTROLLED: [&str; 4] = [
    "src_endpoint.ip",
    "src_endpoint.port",
    "actor.process.name",
    "actor.process.cmd_line",
];
/// Fields the kernel established: identities from cgroups and addresses the kernel routes to,
/// the pid and uid of the task (or of the socket's creator).
const KERNEL_ESTABLISHED: [&str; 6] = [
    "src_endpoint.name",
    "dst_endpoint.ip",
    "dst_endpoint.port",
    "dst_endpoint.name",
    "actor.process.pid",
    "actor.process.user.uid",
];

/// Network Activity, in category Network Activity.
const CLASS_UID: u32 = 4001;
const CATEGORY_UID: u32 = 4;
const PROFILES: [&str; 2] = ["security_control", "host"];

/// Device Config State Change, in category Discovery.
const REJECTION_CLASS_UID: u32 = 5019;
const REJECTION_CATEGORY_UID: u32 = 5;
/// The class's only activity that fits a daemon reporting on itself: Log (2 is Collect, a
/// scanner gathering state).
const REJECTION_ACTIVITY_ID: u32 = 1;
/// Medium: the node keeps enforcing, but not the policy its operator wrote.
const REJECTION_SEVERITY_ID: u32 = 3;
/// Failure: the change of configuration did not happen.
const STATUS_FAILURE: u32 = 2;
const REJECTION_PROFILES: [&str; 1] = ["host"];

/// `metadata.product`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub name: String,
    pub vendor_name: String,
    pub version: String,
}

impl Default for Product {
    fn default() -> Self {
        Self {
            name: "enforcer".to_owned(),
            vendor_name: "enforcer project".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// OCSF `activity_id`, `action_id` and `disposition_id` for a verdict: a denial is a refused
/// connection that was blocked; an audit is an opened connection that was allowed and logged.
const fn verdict_ids(verdict: Verdict) -> (u32, u32, u32) {
    match verdict {
        Verdict::Denied => (5, 2, 2),
        Verdict::Audited => (1, 1, 17),
    }
}

/// OCSF `severity_id`: 3 (Medium) for a denial between two segment members, 2 (Low) otherwise.
/// 4 (High) is kept for suspected lateral-movement patterns, which detection will raise.
const fn severity_id(record: &FlowRecord) -> u32 {
    if record.src.segmented && record.dst.segmented {
        3
    } else {
        2
    }
}

/// OCSF `direction_id`: 3 (Lateral) when neither end is `@world`, else 2 (Outbound) when this
/// node opened the connection, 1 (Inbound) when it arrived here.
const fn direction_id(record: &FlowRecord) -> u32 {
    if !record.src.is_world && !record.dst.is_world {
        3
    } else if record.outbound {
        2
    } else {
        1
    }
}

fn endpoint(endpoint: &FlowEndpoint) -> Value {
    let mut object = Map::new();
    object.insert("ip".to_owned(), json!(endpoint.ip.to_string()));
    if let Some(port) = endpoint.port {
        object.insert("port".to_owned(), json!(port));
    }
    object.insert("name".to_owned(), json!(endpoint.name));
    Value::Object(object)
}

/// OCSF `time`: milliseconds since the epoch. `time` is required, so a clock set before 1970
/// still yields a valid event (at 0) rather than losing it.
fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    })
}

/// OCSF `device`: the enforcing node; `type_id` 6 (Virtual) or 1 (Server).
fn device(node: &FlowNode) -> Value {
    json!({
        "hostname": node.hostname,
        "type_id": if node.is_virtual { 6 } else { 1 },
    })
}

fn metadata(product: &Product, profiles: &[&str]) -> Value {
    json!({
        "version": OCSF_VERSION,
        "product": {
            "name": product.name,
            "vendor_name": product.vendor_name,
            "version": product.version,
        },
        "profiles": profiles,
    })
}

/// Renders one record as an OCSF event object.
#[must_use]
pub fn render(record: &FlowRecord, product: &Product) -> Value {
    let (activity_id, action_id, disposition_id) = verdict_ids(record.verdict);
    let mut rule = Map::new();
    rule.insert("uid".to_owned(), json!(record.rule.uid));
    rule.insert("name".to_owned(), json!(record.rule.name));
    if let Some(description) = &record.rule.description {
        rule.insert("desc".to_owned(), json!(description));
    }
    rule.insert("version".to_owned(), json!(record.policy_version));

    let mut event = json!({
        "class_uid": CLASS_UID,
        "category_uid": CATEGORY_UID,
        "activity_id": activity_id,
        "type_uid": CLASS_UID * 100 + activity_id,
        "time": millis(record.time),
        "action_id": action_id,
        "disposition_id": disposition_id,
        "severity_id": severity_id(record),
        "connection_info": {
            "protocol_name": // The policy's own protocol terms; only the `any` port term reaches other
            // protocols, whose events say "other" and keep the number in `protocol_num`.
            protocol::name(record.protocol),
            "protocol_num": record.protocol,
            "protocol_ver_id": record.ip_version,
            "direction_id": direction_id(record),
        },
        "src_endpoint": endpoint(&record.src),
        "dst_endpoint": endpoint(&record.dst),
        "device": device(&record.node),
        "metadata": metadata(product, &PROFILES),
        "firewall_rule": Value::Object(rule),
        "count": record.count,
        "unmapped": {
            "src_labels": record.src.labels,
            "dst_labels": record.dst.labels,
            "mode": record.mode.as_str(),
            "layer": record.layer.as_str(),
            "provenance": {
                "process_controlled": PROCESS_CONTROLLED,
                "kernel_established": KERNEL_ESTABLISHED,
            },
        },
    });
    if let Some(unmapped) = event.get_mut("unmapped").and_then(Value::as_object_mut) {
        if record.revoked {
            unmapped.insert("revoked".to_owned(), json!(true));
        }
        if !record.swept_ports.is_empty() {
            unmapped.insert("swept_ports".to_owned(), json!(record.swept_ports));
        }
        if let Some(workload) = &record.workload {
            unmapped.insert("workload".to_owned(), workload_object(workload));
        }
    }
    if let (Some((first, last)), Some(event)) = (record.span, event.as_object_mut()) {
        event.insert("start_time".to_owned(), json!(millis(first)));
        event.insert("end_time".to_owned(), json!(millis(last)));
    }
    if let Some(process) = &record.process {
        if let Some(unmapped) = event.get_mut("unmapped").and_then(Value::as_object_mut) {
            unmapped.insert(
                "process_from_socket".to_owned(),
                json!(record.process_from_socket),
            );
        }
        event["actor"] = json!({ "process": process_object(process) });
    }
    event
}

/// OCSF `actor.process`: the kernel's pid, name and uid, and what `/proc` told of the process
/// where it could (`cmd_line`, `file` from the executable, `parent_process`, `user.name`).
fn process_object(process: &FlowProcess) -> Value {
    let mut object = Map::new();
    object.insert("pid".to_owned(), json!(process.pid));
    object.insert("name".to_owned(), json!(process.name));
    if let Some(cmd_line) = &process.cmd_line {
        object.insert("cmd_line".to_owned(), json!(cmd_line));
    }
    if let Some(executable) = &process.executable {
        let name = executable.rsplit('/').next().unwrap_or(executable);
        // type_id 1: Regular File.
        object.insert(
            "file".to_owned(),
            json!({ "path": executable, "name": name, "type_id": 1 }),
        );
    }
    if let Some(parent_pid) = process.parent_pid {
        object.insert("parent_process".to_owned(), json!({ "pid": parent_pid }));
    }
    // OCSF types `user.uid` as a string.
    let mut user = Map::new();
    user.insert("uid".to_owned(), json!(process.uid.to_string()));
    if let Some(user_name) = &process.user_name {
        user.insert("name".to_owned(), json!(user_name));
    }
    object.insert("user".to_owned(), Value::Object(user));
    Value::Object(object)
}

/// `unmapped.workload`: OCSF's `container` object belongs to the `container` profile, which these
/// events do not claim, and the process object has no cgroup attribute.
fn workload_object(workload: &FlowWorkload) -> Value {
    let mut object = Map::new();
    object.insert("cgroup_path".to_owned(), json!(workload.cgroup_path));
    if let Some(unit) = &workload.systemd_unit {
        object.insert("systemd_unit".to_owned(), json!(unit));
    }
    if let Some(id) = &workload.container_id {
        object.insert("container_id".to_owned(), json!(id));
    }
    Value::Object(object)
}

/// Renders any report: a flow record, a lateral-movement alert or a policy rejection.
#[must_use]
pub fn render_report(report: &Report, product: &Product) -> Value {
    match report {
        Report::Flow(record) => render(record, product),
        Report::Alert(alert) => alert::render_alert(alert, product),
        Report::Rejection(rejection) => render_rejection(rejection, product),
    }
}

/// Renders one record as a single JSON line (no trailing newline).
#[must_use]
pub fn to_json_line(record: &FlowRecord, product: &Product) -> String {
    render(record, product).to_string()
}

/// Renders a policy rejection as an OCSF Device Config State Change event: `status_id` 2
/// (Failure), a one-line `message` for people, and the details under `unmapped` next to the flow
/// events' own (`policy_dir`, `origin`, `policy_errors`, `in_force_version` when a policy is in
/// force, `in_force_generation`): the class has no attribute for a list of errors.
#[must_use]
pub fn render_rejection(rejection: &PolicyRejection, product: &Product) -> Value {
    let mut unmapped = Map::new();
    unmapped.insert("policy_dir".to_owned(), json!(rejection.policy_dir));
    unmapped.insert("origin".to_owned(), json!(rejection.origin));
    unmapped.insert("policy_errors".to_owned(), json!(rejection.errors));
    if let Some(version) = &rejection.in_force_version {
        unmapped.insert("in_force_version".to_owned(), json!(version));
    }
    unmapped.insert(
        "in_force_generation".to_owned(),
        json!(rejection.in_force_generation),
    );
    json!({
        "class_uid": REJECTION_CLASS_UID,
        "category_uid": REJECTION_CATEGORY_UID,
        "activity_id": REJECTION_ACTIVITY_ID,
        "type_uid": REJECTION_CLASS_UID * 100 + REJECTION_ACTIVITY_ID,
        "time": millis(rejection.time),
        "severity_id": REJECTION_SEVERITY_ID,
        "status_id": STATUS_FAILURE,
        "message": rejection_message(rejection),
        "device": device(&rejection.node),
        "metadata": metadata(product, &REJECTION_PROFILES),
        "unmapped": Value::Object(unmapped),
    })
}

/// `policy in DIR rejected (ORIGIN): N errors; ` and what stays in force.
fn rejection_message(rejection: &PolicyRejection) -> String {
    let count = rejection.errors.len();
    let errors = if count == 1 { "error" } else { "errors" };
    let in_force = match (&rejection.in_force_version, rejection.in_force_generation) {
        (Some(version), generation) => {
            format!("version {version} (generation {generation}) stays in force")
        }
        (None, 0) => "no policy is in force".to_owned(),
        (None, generation) => format!("generation {generation} stays in force, version unknown"),
    };
    format!(
        "policy in {} rejected ({}): {count} {errors}; {in_force}",
        rejection.policy_dir, rejection.origin
    )
}

mod alert;
#[cfg(test)]
mod tests;

pub use self::alert::render_alert;
