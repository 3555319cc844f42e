//! Rendered events validate against the OCSF 1.1.0 schema (network_activity, security_control +
//! host profiles), and the validator really rejects what is outside it. Needs the venv that
//! `cargo xtask setup` makes; fails (never skips) without it.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::SystemTime,
};

use enforcer::{
    events::{
        FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowRule, Verdict,
        ocsf::{Product, to_json_line},
    },
    policy::{Labels, Mode},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

fn validate(lines: &[String]) -> Output {
    let python = std::env::var_os("ENFORCER_OCSF_PYTHON").map_or_else(
        || workspace().join("target/ocsf-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup`",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    fs::write(&file, lines.join("\n") + "\n").expect("write events");
    Command::new(python)
        .arg(workspace().join("tests/ocsf/validate.py"))
        .arg(&file)
        .output()
        .expect("run validator")
}

fn endpoint(name: &str, ip: IpAddr, port: Option<u16>) -> FlowEndpoint {
    FlowEndpoint {
        ip,
        port,
        name: name.to_owned(),
        labels: Labels::from([("segment".to_owned(), name.to_owned())]),
        is_world: name == "@world",
        segmented: name != "@world",
    }
}

/// One record per variation: deny/audit, tcp/udp/icmp/icmpv6, v4/v6, lateral/outbound/inbound,
/// with and without process, rule and default-deny attribution.
fn samples() -> Vec<FlowRecord> {
    let v4 = |last| IpAddr::V4(Ipv4Addr::new(10, 0, 0, last));
    let v6 = |last| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last));
    let base = FlowRecord {
        time: SystemTime::now(),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        src: endpoint("web", v4(1), Some(0)),
        dst: endpoint("db", v4(2), Some(5432)),
        process: Some(FlowProcess {
            pid: 4242,
            name: "enforcer-probe".to_owned(),
            cmd_line: Some("enforcer-probe tcp-connect 10.0.0.2 5432".to_owned()),
            uid: 0,
        }),
        rule: FlowRule {
            uid: "rules/20-finance.toml:31".to_owned(),
            name: "web-never-finance".to_owned(),
            description: Some("the web tier never talks to the database".to_owned()),
        },
        policy_version: "40103edb9c3cae46".to_owned(),
        mode: Mode::Enforce,
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: true,
        },
        count: 1,
    };
    let mut out = vec![base.clone()];
    out.push(FlowRecord {
        verdict: Verdict::Audited,
        mode: Mode::Audit,
        protocol: 17,
        ..base.clone()
    });
    out.push(FlowRecord {
        protocol: 58,
        ip_version: 6,
        src: endpoint("web", v6(1), None),
        dst: endpoint("@world", v6(2), None),
        process: None,
        rule: FlowRule {
            uid: "default-deny:web".to_owned(),
            name: "default-deny:web".to_owned(),
            description: None,
        },
        ..base.clone()
    });
    out.push(FlowRecord {
        protocol: 1,
        outbound: false,
        src: endpoint("@world", v4(9), None),
        dst: endpoint("db", v4(2), None),
        count: 7,
        ..base.clone()
    });
    out
}

#[test]
fn rendered_events_validate() {
    let lines: Vec<String> = samples()
        .iter()
        .map(|r| to_json_line(r, &Product::default()))
        .collect();
    let output = validate(&lines);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("4 events valid"));
}

#[test]
fn the_validator_rejects_what_is_outside_the_schema() {
    let good = to_json_line(&samples()[0], &Product::default());
    let broken = [
        good.replacen('{', "{\"not_an_ocsf_attribute\":1,", 1),
        good.replace("\"severity_id\":3", "\"severity_id\":42"),
        good.replace("\"direction_id\":3", "\"direction_id\":\"lateral\""),
    ];
    for line in broken {
        assert_ne!(line, good, "the mutation did not apply");
        let output = validate(std::slice::from_ref(&line));
        assert_eq!(output.status.code(), Some(1), "accepted: {line}");
    }
}

#[test]
fn the_validator_refuses_an_empty_file() {
    assert_eq!(validate(&[]).status.code(), Some(2));
}
