//! OCSF 1.1.0 Network Activity (class 4001) rendering of [`FlowRecord`]s, with the
//! `security_control` and `host` profiles: the event contract of POLICY.md, ready for a SIEM.
//!
//! # Examples
//!
//! ```
//! # use enforcer::events::ocsf::{Product, render};
//! # fn show(record: &enforcer::events::FlowRecord) {
//! let event = render(record, &Product::default());
//! assert_eq!(event["class_uid"], 4001);
//! # }
//! ```

use std::time::UNIX_EPOCH;

use enforcer_common::protocol;
use serde_json::{Map, Value, json};

use super::{FlowEndpoint, FlowRecord, Verdict};

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

const CLASS_UID: u32 = 4001;
const CATEGORY_UID: u32 = 4;

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

/// Renders one record as an OCSF event object.
#[must_use]
pub fn render(record: &FlowRecord, product: &Product) -> Value {
    let (activity_id, action_id, disposition_id) = verdict_ids(record.verdict);
    // `time` is required: a clock set before 1970 still yields a valid event (at 0) rather than
    // losing the denial.
    let time = record.time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    });
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
        "time": time,
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
        "device": {
            "hostname": record.node.hostname,
            "type_id": if record.node.is_virtual { 6 } else { 1 },
        },
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": product.name,
                "vendor_name": product.vendor_name,
                "version": product.version,
            },
            "profiles": ["security_control", "host"],
        },
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
    if let Some(process) = &record.process {
        if let Some(unmapped) = event.get_mut("unmapped").and_then(Value::as_object_mut) {
            unmapped.insert(
                "process_from_socket".to_owned(),
                json!(record.process_from_socket),
            );
        }
        let mut object = Map::new();
        object.insert("pid".to_owned(), json!(process.pid));
        object.insert("name".to_owned(), json!(process.name));
        if let Some(cmd_line) = &process.cmd_line {
            object.insert("cmd_line".to_owned(), json!(cmd_line));
        }
        // OCSF types `user.uid` as a string.
        object.insert("user".to_owned(), json!({ "uid": process.uid.to_string() }));
        event["actor"] = json!({ "process": Value::Object(object) });
    }
    event
}

/// Renders one record as a single JSON line (no trailing newline).
#[must_use]
pub fn to_json_line(record: &FlowRecord, product: &Product) -> String {
    render(record, product).to_string()
}

#[cfg(test)]
mod tests;
