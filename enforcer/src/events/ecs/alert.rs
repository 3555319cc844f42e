//! Lateral-movement alerts as ECS alerts, in MITRE ATT&CK terms.

use serde_json::{Map, Value, json};

use super::{
    MODULE, Product, Related, address, base_document, endpoint_details, insert_actor, insert_span,
    network,
};
use crate::events::{LateralMovementAlert, PatternKind, Technique};

/// OCSF's severity of an alert (High), so both schemas rank alike.
const ALERT_SEVERITY: u32 = 4;

/// The detection that fired, as `rule.id` and `rule.name`, so a SIEM tells the patterns apart.
const fn detection(kind: PatternKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        PatternKind::PortScan => ("lateral-movement:port-scan", "port scan", "port_scan"),
        PatternKind::Sweep => ("lateral-movement:sweep", "sweep", "sweep"),
        PatternKind::FanOut => ("lateral-movement:fan-out", "fan-out", "fan_out"),
    }
}

/// Renders an alert: `event.kind` "alert" in the network and intrusion-detection categories.
/// `event.type` is "denied" because every attempt behind the alert was blocked (as an IPS
/// reports a blocked intrusion); there is no `event.outcome`, since a detection succeeds or
/// fails at nothing. When the attempts went to a single destination (a port scan), it is the
/// document's `destination`; every target is listed under `enforcer.alert.targets`.
pub(super) fn render_alert(alert: &LateralMovementAlert, product: &Product) -> Value {
    let (rule_id, pattern, kind) = detection(alert.kind);
    let mut event = json!({
        "kind": "alert",
        "category": ["network", "intrusion_detection"],
        "type": ["denied"],
        "action": "lateral-movement-detected",
        "severity": ALERT_SEVERITY,
        "dataset": "enforcer.alert",
        "module": MODULE,
    });
    insert_span(&mut event, alert.first_seen, alert.time);

    let mut related = Related::new(&alert.node);
    related.ip(alert.src.ip);
    let targets: Vec<Value> = alert
        .targets
        .iter()
        .map(|target| {
            related.ip(target.ip);
            let mut object = Map::new();
            object.insert("ip".to_owned(), json!(target.ip.to_string()));
            if let Some(port) = target.port {
                object.insert("port".to_owned(), json!(port));
            }
            object.insert("protocol".to_owned(), json!(target.protocol));
            object.insert("identity".to_owned(), json!(target.name));
            Value::Object(object)
        })
        .collect();
    let mut enforcer = json!({
        "alert": {
            "kind": kind,
            "distinct_targets": alert.distinct_targets,
            "distinct_destinations": alert.distinct_destinations,
            "distinct_ports": alert.distinct_ports,
            "attempts": alert.attempts,
            "window_ms": u64::try_from(alert.window.as_millis()).unwrap_or(u64::MAX),
            "targets": targets,
        },
        "source": endpoint_details(&alert.src),
        "policy_version": alert.policy_version,
    });

    let message = format!(
        "suspected lateral movement ({pattern}, {} {}) from {} {}: {} targets \
         ({} destinations, {} ports) in {} denied attempts",
        alert.technique.uid,
        alert.technique.name,
        alert.src.name,
        alert.src.ip,
        alert.distinct_targets,
        alert.distinct_destinations,
        alert.distinct_ports,
        alert.attempts,
    );
    let mut document = base_document(alert.time, message, &alert.node, product);
    document.insert("event".to_owned(), event);
    document.insert("source".to_owned(), address(&alert.src));
    if let Some(destination) = single_destination(alert) {
        document.insert("destination".to_owned(), destination);
    }
    document.insert(
        "network".to_owned(),
        network(alert.ip_version, single_protocol(alert), alert.outbound),
    );
    document.insert(
        "rule".to_owned(),
        json!({ "id": rule_id, "name": format!("lateral movement: {pattern}") }),
    );
    document.insert("threat".to_owned(), threat(&alert.technique));
    insert_actor(
        &mut document,
        &mut related,
        &mut enforcer,
        alert.process.as_ref(),
        alert.workload.as_ref(),
    );
    document.insert("related".to_owned(), related.into_value());
    document.insert("enforcer".to_owned(), enforcer);
    Value::Object(document)
}

/// The one destination of the pattern (with its port when there was one port), if there was
/// one; `None` for sweeps and fan-outs.
fn single_destination(alert: &LateralMovementAlert) -> Option<Value> {
    let first = alert.targets.first()?;
    if alert.distinct_destinations != 1 {
        return None;
    }
    let mut object = Map::new();
    object.insert("ip".to_owned(), json!(first.ip.to_string()));
    object.insert("address".to_owned(), json!(first.ip.to_string()));
    if let (1, Some(port)) = (alert.distinct_ports, first.port) {
        object.insert("port".to_owned(), json!(port));
    }
    Some(Value::Object(object))
}

/// The protocol every listed target shares, if they share one.
fn single_protocol(alert: &LateralMovementAlert) -> Option<u8> {
    let first = alert.targets.first()?.protocol;
    alert
        .targets
        .iter()
        .all(|target| target.protocol == first)
        .then_some(first)
}

/// ECS `threat`: the framework, the technique and its tactic, with their ATT&CK pages (a
/// sub-technique `T1046.001` lives at `techniques/T1046/001/`). ECS declares these as arrays.
fn threat(technique: &Technique) -> Value {
    json!({
        "framework": "MITRE ATT&CK",
        "technique": {
            "id": [technique.uid],
            "name": [technique.name],
            "reference": [format!(
                "https://attack.mitre.org/techniques/{}/",
                technique.uid.replace('.', "/")
            )],
        },
        "tactic": {
            "id": [technique.tactic_uid],
            "name": [technique.tactic_name],
            "reference": [format!("https://attack.mitre.org/tactics/{}/", technique.tactic_uid)],
        },
    })
}
