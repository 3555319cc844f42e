//! Lateral-movement alerts in OCSF: Network Activity like the denials behind them (so one SIEM
//! query sees both), refused, of severity 4, with the ATT&CK technique under `attacks`.
//!
//! An alert stands for many connections, and the class holds one: `src_endpoint` is the source
//! (without the port of any one connection), `dst_endpoint` what the targets have in common (the
//! address of a port scan, the port of a sweep), `count` the attempts, `start_time`/`end_time`
//! the first denial and the one that crossed the threshold, and the targets themselves are under
//! `unmapped` with the pattern's kind, counts and window.

use enforcer_common::protocol;
use serde_json::{Map, Value, json};

use super::{
    CATEGORY_UID, CLASS_UID, PROFILES, Product, device, metadata, millis, process_object,
    workload_object,
};
use crate::events::{AlertTarget, LateralMovementAlert, PatternKind};

/// Refuse, Denied, Blocked: only denials make a pattern (see `events::detect`).
const ACTIVITY_ID: u32 = 5;
const ACTION_ID: u32 = 2;
const DISPOSITION_ID: u32 = 2;
/// High: POLICY.md's severity of a suspected lateral-movement pattern.
const SEVERITY_ID: u32 = 4;
/// The ATT&CK release whose ids and names the techniques follow (T1046 has been "Network Service
/// Discovery" since release 11).
const ATTACK_VERSION: &str = "14";
/// OCSF observable type 2: IP Address.
const OBSERVABLE_IP: u32 = 2;
/// `dst_endpoint` is required and must carry an address or a name: the name of one whose targets
/// share neither. It starts with `@`, which no identity name may, like the entities `@world` and
/// `@host`.
const MANY_DESTINATIONS: &str = "@multiple";

/// Renders one alert as an OCSF Network Activity event of severity 4.
#[must_use]
pub fn render_alert(alert: &LateralMovementAlert, product: &Product) -> Value {
    let destination = destination(alert);
    let mut observables = vec![json!({
        "name": "src_endpoint.ip",
        "type_id": OBSERVABLE_IP,
        "value": alert.src.ip.to_string(),
    })];
    if let Some(ip) = destination.get("ip") {
        observables.push(json!({
            "name": "dst_endpoint.ip",
            "type_id": OBSERVABLE_IP,
            "value": ip,
        }));
    }
    let mut unmapped = Map::new();
    unmapped.insert("kind".to_owned(), json!(kind_name(alert.kind)));
    unmapped.insert("targets".to_owned(), targets(&alert.targets));
    unmapped.insert("distinct_targets".to_owned(), json!(alert.distinct_targets));
    unmapped.insert(
        "distinct_destinations".to_owned(),
        json!(alert.distinct_destinations),
    );
    unmapped.insert("distinct_ports".to_owned(), json!(alert.distinct_ports));
    unmapped.insert(
        "window_ms".to_owned(),
        json!(u64::try_from(alert.window.as_millis()).unwrap_or(u64::MAX)),
    );
    unmapped.insert("src_labels".to_owned(), json!(alert.src.labels));
    unmapped.insert("policy_version".to_owned(), json!(alert.policy_version));
    if let Some(workload) = &alert.workload {
        unmapped.insert("workload".to_owned(), workload_object(workload));
    }
    let mut source = Map::new();
    source.insert("ip".to_owned(), json!(alert.src.ip.to_string()));
    source.insert("name".to_owned(), json!(alert.src.name));
    let mut event = json!({
        "class_uid": CLASS_UID,
        "category_uid": CATEGORY_UID,
        "activity_id": ACTIVITY_ID,
        "type_uid": CLASS_UID * 100 + ACTIVITY_ID,
        "time": millis(alert.time),
        "start_time": millis(alert.first_seen),
        "end_time": millis(alert.time),
        "action_id": ACTION_ID,
        "disposition_id": DISPOSITION_ID,
        "severity_id": SEVERITY_ID,
        "message": message(alert),
        "connection_info": connection_info(alert),
        "src_endpoint": Value::Object(source),
        "dst_endpoint": Value::Object(destination),
        "device": device(&alert.node),
        "metadata": metadata(product, &PROFILES),
        "attacks": [{
            "technique": { "uid": alert.technique.uid, "name": alert.technique.name },
            "tactic": { "uid": alert.technique.tactic_uid, "name": alert.technique.tactic_name },
            "version": ATTACK_VERSION,
        }],
        "observables": observables,
        "count": alert.attempts,
        "unmapped": Value::Object(unmapped),
    });
    if let Some(process) = &alert.process {
        event["actor"] = json!({ "process": process_object(process) });
    }
    event
}

const fn kind_name(kind: PatternKind) -> &'static str {
    match kind {
        PatternKind::PortScan => "port_scan",
        PatternKind::Sweep => "sweep",
        PatternKind::FanOut => "fan_out",
    }
}

/// The value all targets share, judged on the listed ones only when every target is listed.
fn shared<T: PartialEq>(alert: &LateralMovementAlert, field: fn(&AlertTarget) -> T) -> Option<T> {
    let listed_all =
        usize::try_from(alert.distinct_targets).is_ok_and(|n| n == alert.targets.len());
    let mut values = alert.targets.iter().map(field);
    let first = values.next()?;
    (listed_all && values.all(|value| value == first)).then_some(first)
}

/// What the targets have in common: the address when there was one destination, the port when
/// there was one (protocol, port), the identity name when all share it.
fn destination(alert: &LateralMovementAlert) -> Map<String, Value> {
    let first = alert.targets.first();
    let mut object = Map::new();
    if alert.distinct_destinations == 1
        && let Some(target) = first
    {
        object.insert("ip".to_owned(), json!(target.ip.to_string()));
    }
    if alert.distinct_ports == 1
        && let Some(port) = first.and_then(|target| target.port)
    {
        object.insert("port".to_owned(), json!(port));
    }
    let name = shared(alert, |target| target.name.clone());
    object.insert(
        "name".to_owned(),
        json!(name.as_deref().unwrap_or(MANY_DESTINATIONS)),
    );
    object
}

/// The IP version and direction; the protocol where all targets share one.
fn connection_info(alert: &LateralMovementAlert) -> Value {
    let to_world = alert.targets.iter().any(|target| target.name == "@world");
    let direction_id = if !alert.src.is_world && !to_world {
        3
    } else if alert.outbound {
        2
    } else {
        1
    };
    let mut object = Map::new();
    if let Some(number) = shared(alert, |target| target.protocol) {
        object.insert("protocol_name".to_owned(), json!(protocol::name(number)));
        object.insert("protocol_num".to_owned(), json!(number));
    }
    object.insert("protocol_ver_id".to_owned(), json!(alert.ip_version));
    object.insert("direction_id".to_owned(), json!(direction_id));
    Value::Object(object)
}

fn targets(targets: &[AlertTarget]) -> Value {
    targets
        .iter()
        .map(|target| {
            let mut object = Map::new();
            object.insert("ip".to_owned(), json!(target.ip.to_string()));
            if let Some(port) = target.port {
                object.insert("port".to_owned(), json!(port));
            }
            object.insert(
                "protocol_name".to_owned(),
                json!(protocol::name(target.protocol)),
            );
            object.insert("protocol_num".to_owned(), json!(target.protocol));
            object.insert("name".to_owned(), json!(target.name));
            Value::Object(object)
        })
        .collect()
}

/// One line for people: `port scan from web (10.0.0.1): 10 ports of db (10.0.0.2) denied
/// within 1m, 12 attempts`.
fn message(alert: &LateralMovementAlert) -> String {
    let window = humantime::format_duration(alert.window);
    let source = format!("{} ({})", alert.src.name, alert.src.ip);
    let pattern = match (alert.kind, alert.targets.first()) {
        (PatternKind::PortScan, Some(target)) => format!(
            "port scan from {source}: {} ports of {} ({})",
            alert.distinct_ports, target.name, target.ip
        ),
        (PatternKind::Sweep, Some(target)) => format!(
            "sweep from {source}: {} on {} destinations",
            service(target),
            alert.distinct_destinations
        ),
        (_, _) => format!(
            "fan-out from {source}: {} targets on {} destinations",
            alert.distinct_targets, alert.distinct_destinations
        ),
    };
    let attempts = if alert.attempts == 1 {
        "attempt"
    } else {
        "attempts"
    };
    format!(
        "{pattern} denied within {window}, {} {attempts}",
        alert.attempts
    )
}

/// `tcp/22`, or `icmp` for a protocol without ports.
fn service(target: &AlertTarget) -> String {
    let name = protocol::name(target.protocol);
    target
        .port
        .map_or_else(|| name.to_owned(), |port| format!("{name}/{port}"))
}

#[cfg(test)]
mod tests;
