//! Rendered ECS documents use only ECS 8.11 fields (or the custom `enforcer.*` object), each of
//! its ECS type, with allowed categorization values, as `tests/ecs/validate.mjs` checks against
//! the field definitions of the pinned `@elastic/ecs` package; and the validator really rejects
//! what is outside ECS. Needs node and `npm ci --prefix tests/ecs` (run by `cargo xtask setup`);
//! fails, never skips, without them.

mod reports;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use enforcer::events::{Report, ecs::render_report, ocsf::Product};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("enforcer/ sits in the workspace")
        .to_owned()
}

/// Runs `tests/ecs/validate.mjs` on `documents`, written as one JSON-lines file.
fn validate(documents: &[Value]) -> Output {
    let ecs = workspace().join("tests/ecs");
    let package = ecs.join("node_modules/@elastic/ecs/package.json");
    assert!(
        package.exists(),
        "{} is missing: run `cargo xtask setup` (it runs `npm ci --prefix tests/ecs`), which installs the ECS validator",
        package.display()
    );
    let node = std::env::var_os("ENFORCER_NODE").unwrap_or_else(|| "node".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("documents.jsonl");
    let text: String = documents
        .iter()
        .map(|document| format!("{document}\n"))
        .collect();
    fs::write(&file, text).expect("write documents");
    Command::new(&node)
        .arg(ecs.join("validate.mjs"))
        .arg(&file)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "running {}: {error}: install Node.js and run `cargo xtask setup`",
                node.display()
            )
        })
}

fn report(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn rendered(report: &Report) -> Value {
    render_report(report, &Product::default())
}

#[test]
fn every_variation_is_valid_ecs() {
    let variations = reports::variations();
    let documents: Vec<Value> = variations
        .iter()
        .map(|(_, report)| rendered(report))
        .collect();
    let output = validate(&documents);
    let text = report(&output);
    assert!(output.status.success(), "ECS validation failed:\n{text}");
    assert!(
        text.contains(&format!(
            "{} of {} documents valid",
            documents.len(),
            documents.len()
        )),
        "{text}"
    );
}

#[test]
fn the_variations_cover_every_kind_and_shape() {
    let documents: Vec<Value> = reports::variations()
        .iter()
        .map(|(_, report)| rendered(report))
        .collect();
    let values = |pointer: &str| -> Vec<Value> {
        let mut seen: Vec<Value> = documents
            .iter()
            .filter_map(|document| document.pointer(pointer).cloned())
            .collect();
        seen.sort_by_key(ToString::to_string);
        seen.dedup();
        seen
    };
    assert_eq!(values("/event/kind"), [json!("alert"), json!("event")]);
    assert_eq!(
        values("/event/action"),
        [
            json!("connection-audited"),
            json!("connection-denied"),
            json!("connection-revoked"),
            json!("lateral-movement-detected"),
            json!("policy-rejected"),
        ]
    );
    assert_eq!(
        values("/network/transport"),
        [
            json!("icmp"),
            json!("ipv6-icmp"),
            json!("tcp"),
            json!("udp")
        ]
    );
    assert_eq!(values("/network/type"), [json!("ipv4"), json!("ipv6")]);
    assert_eq!(
        values("/network/direction"),
        [json!("egress"), json!("ingress")]
    );
    assert!(
        documents
            .iter()
            .any(|document| document.get("process").is_none()
                && document["event"]["category"] == json!(["network"]))
    );
    assert!(
        documents
            .iter()
            .any(|document| document["enforcer"]["count"] == 17)
    );
}

#[test]
fn the_validator_rejects_an_unknown_field() {
    let mut document = rendered(&Report::Flow(reports::denial()));
    // `event.count` is a tempting name, but not an ECS field.
    document["event"]["count"] = json!(17);
    let output = validate(&[document]);
    let text = report(&output);
    assert!(!output.status.success(), "accepted:\n{text}");
    assert!(
        text.contains("event.count is not an ECS 8.11.0 field"),
        "{text}"
    );
}

#[test]
fn the_validator_rejects_a_value_ecs_does_not_allow() {
    let mut document = rendered(&Report::Flow(reports::denial()));
    document["event"]["kind"] = json!("flow");
    document["network"]["direction"] = json!("lateral");
    let output = validate(&[document]);
    let text = report(&output);
    assert!(!output.status.success(), "accepted:\n{text}");
    assert!(
        text.contains(r#"event.kind value "flow" is not one of ECS's"#),
        "{text}"
    );
    assert!(
        text.contains(r#"network.direction value "lateral" is not one of ECS's"#),
        "{text}"
    );
}

#[test]
fn the_validator_rejects_wrong_types_and_unexpected_event_types() {
    let mut document = rendered(&Report::Flow(reports::denial()));
    document["source"]["port"] = json!("40000");
    document["source"]["ip"] = json!("web");
    document["@timestamp"] = json!(1_700_000_000_123_u64);
    document["event"]["type"] = json!(["connection", "creation"]);
    let mut missing_version = rendered(&Report::Rejection(reports::rejection()));
    missing_version
        .as_object_mut()
        .expect("a document is an object")
        .remove("ecs");
    let output = validate(&[document, missing_version]);
    let text = report(&output);
    assert!(!output.status.success(), "accepted:\n{text}");
    for expected in [
        "source.port is not an integer",
        "source.ip is not an IP address",
        "@timestamp is not an RFC 3339 date",
        r#"event.type "creation" is not expected for event.category ["network"]"#,
        "documents.jsonl:2: ecs.version is required",
        "0 of 2 documents valid",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
