//! Rendered events validate against the OCSF 1.1.0 schema (flow events as network_activity with the
//! security_control + host profiles, policy rejections as device_config_state_change with the host
//! profile), and the validator really rejects what is outside it. Needs the venv that
//! `cargo xtask test` (through `cargo xtask setup`) makes; fails, never skips, without it.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, SystemTime},
};

use enforcer::{
    events::{
        AlertTarget, FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowRule, FlowWorkload,
        LateralMovementAlert, Layer, NETWORK_SERVICE_DISCOVERY, PatternKind, PolicyRejection,
        Report, Verdict,
        ocsf::{Product, render, render_alert, render_rejection, render_report, to_json_line},
    },
    policy::{Labels, Mode},
};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("enforcer/ sits in the workspace")
        .to_owned()
}

/// Runs `tests/ocsf/validate.py` on `lines` written as one JSON-lines file.
fn validate(lines: &[String]) -> Output {
    run_validator(lines, &[workspace().join("tests/ocsf/validate.py").into()])
}

/// Runs the venv's python with `args`, then `lines` written as one JSON-lines file.
fn run_validator(lines: &[String], args: &[std::ffi::OsString]) -> Output {
    let python = std::env::var_os("ENFORCER_OCSF_PYTHON").map_or_else(
        || workspace().join("target/ocsf-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask test` (or `cargo xtask setup`), which installs the OCSF validator",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    fs::write(&file, text).expect("write events");
    Command::new(&python)
        .args(args)
        .arg(&file)
        .output()
        .unwrap_or_else(|error| panic!("run {}: {error}", python.display()))
}

fn report(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn endpoint(name: &str, ip: IpAddr, port: Option<u16>) -> FlowEndpoint {
    let entity = name.starts_with('@');
    FlowEndpoint {
        ip,
        port,
        name: name.to_owned(),
        labels: if entity {
            Labels::new()
        } else {
            Labels::from([
                ("segment".to_owned(), name.to_owned()),
                ("env".to_owned(), "prod".to_owned()),
            ])
        },
        is_world: name == "@world",
        segmented: !entity,
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
}

fn default_deny(segment: &str) -> FlowRule {
    FlowRule {
        uid: format!("default-deny:{segment}"),
        name: format!("default-deny:{segment}"),
        description: None,
    }
}

/// A lateral egress TCP denial over IPv4 between segment members, by a rule, with the process.
fn base() -> FlowRecord {
    FlowRecord {
        time: SystemTime::now(),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        revoked: false,
        swept_ports: Vec::new(),
        src: endpoint("web", v4(1), Some(40000)),
        dst: endpoint("db", v4(2), Some(5432)),
        process: Some(FlowProcess {
            pid: 4242,
            name: "enforcer-probe".to_owned(),
            cmd_line: Some("enforcer-probe tcp-connect 10.0.0.2 5432".to_owned()),
            uid: 0,
            user_name: Some("root".to_owned()),
            executable: Some("/usr/local/bin/enforcer-probe".to_owned()),
            parent_pid: Some(4200),
        }),
        process_from_socket: false,
        workload: None,
        layer: Layer::Socket,
        rule: FlowRule {
            uid: "rules/20-finance.toml:31".to_owned(),
            name: "web-never-finance".to_owned(),
            description: Some("the web tier never talks to the database".to_owned()),
        },
        policy_version: "40103edb9c3cae46".to_owned(),
        mode: Mode::Enforce,
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        },
        count: 1,
        span: None,
    }
}

/// Every variation the renderer knows: deny/audit, tcp/udp/icmp/icmpv6, v4/v6,
/// lateral/outbound/inbound, with and without process (and cmd_line), rule and default-deny,
/// physical and virtual node, aggregated count, unknown generation, a revoked flow, a sweep.
fn samples() -> Vec<FlowRecord> {
    let base = base();
    vec![
        base.clone(),
        FlowRecord {
            layer: Layer::Packet,
            process_from_socket: true,
            protocol: 136,
            rule: FlowRule {
                uid: "fail-closed:source-route".to_owned(),
                name: "fail-closed:source-route".to_owned(),
                description: None,
            },
            ..base.clone()
        },
        FlowRecord {
            layer: Layer::Lsm,
            ..base.clone()
        },
        FlowRecord {
            layer: Layer::Packet,
            outbound: false,
            revoked: true,
            ..base.clone()
        },
        FlowRecord {
            layer: Layer::Interface,
            outbound: false,
            process: None,
            count: 250,
            swept_ports: vec![22, 23, 80, 443],
            dst: endpoint("db", v4(2), None),
            ..base.clone()
        },
        FlowRecord {
            verdict: Verdict::Audited,
            mode: Mode::Audit,
            protocol: 17,
            dst: endpoint("db", v4(2), Some(53)),
            ..base.clone()
        },
        FlowRecord {
            protocol: 58,
            ip_version: 6,
            src: endpoint("web", v6(1), None),
            dst: endpoint("@world", v6(2), None),
            process: None,
            rule: default_deny("web"),
            node: FlowNode {
                hostname: "app-1".to_owned(),
                is_virtual: true,
            },
            ..base.clone()
        },
        FlowRecord {
            protocol: 1,
            outbound: false,
            src: endpoint("@world", IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), None),
            dst: endpoint("db", v4(2), None),
            process: None,
            rule: default_deny("db"),
            count: 7,
            ..base.clone()
        },
        FlowRecord {
            ip_version: 6,
            outbound: false,
            src: endpoint("@world", v6(9), Some(51000)),
            dst: endpoint("db", v6(2), Some(5432)),
            process: Some(FlowProcess {
                pid: 1,
                name: "postgres".to_owned(),
                cmd_line: None,
                uid: 70,
                user_name: None,
                executable: None,
                parent_pid: None,
            }),
            ..base.clone()
        },
        FlowRecord {
            verdict: Verdict::Audited,
            mode: Mode::Audit,
            src: endpoint("@host", v4(1), Some(40000)),
            rule: default_deny("db"),
            ..base.clone()
        },
        // Decided by a generation the daemon has no context for.
        FlowRecord {
            src: endpoint("@unknown", v4(1), Some(40000)),
            dst: endpoint("@unknown", v4(2), Some(5432)),
            rule: FlowRule {
                uid: "generation:7".to_owned(),
                name: "unknown-generation".to_owned(),
                description: Some(
                    "decided by policy generation 7, which is not on record: the rule cannot be named"
                        .to_owned(),
                ),
            },
            policy_version: "unknown".to_owned(),
            ..base
        },
    ]
}

#[test]
fn rendered_events_validate() {
    let lines: Vec<String> = samples()
        .iter()
        .map(|record| to_json_line(record, &Product::default()))
        .collect();
    let output = validate(&lines);
    let report = report(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains(&format!("{} events valid", lines.len())),
        "{report}"
    );
}

/// A way to break a valid event, named for the report.
type Mutation = (&'static str, fn(&mut Value));

/// Every mutation of a valid event must be rejected: exit code 1 and a violation reported on its
/// own line of the file (one file, so that the schema is built once).
#[test]
fn the_validator_rejects_what_is_outside_the_schema() {
    let good = render(&base(), &Product::default());
    let mutations: [Mutation; 9] = [
        ("unknown top-level attribute", |e| {
            e["not_an_ocsf_attribute"] = json!(1);
        }),
        ("attribute of a later OCSF version", |e| {
            e["is_alert"] = json!(true);
        }),
        ("unknown nested attribute", |e| {
            e["connection_info"]["flow_label"] = json!(7);
        }),
        ("enum value out of range", |e| e["severity_id"] = json!(42)),
        ("nested enum value out of range", |e| {
            e["connection_info"]["direction_id"] = json!(7);
        }),
        ("enum given by name", |e| {
            e["connection_info"]["direction_id"] = json!("lateral");
        }),
        ("missing required attribute", |e| {
            if let Some(event) = e.as_object_mut() {
                event.remove("src_endpoint");
            }
        }),
        ("type_uid disagrees with activity_id", |e| {
            e["type_uid"] = json!(400_101);
        }),
        ("claims another OCSF version", |e| {
            e["metadata"]["version"] = json!("1.2.0");
        }),
    ];
    let lines: Vec<String> = mutations
        .iter()
        .map(|(what, mutate)| {
            let mut event = good.clone();
            mutate(&mut event);
            assert_ne!(event, good, "{what}: the mutation did not apply");
            event.to_string()
        })
        .collect();
    let output = validate(&lines);
    let report = report(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    for (number, (what, _)) in (1..).zip(mutations) {
        assert!(
            report.contains(&format!("events.jsonl:{number}: ")),
            "{what} (line {number}) accepted: {report}"
        );
    }
    assert!(report.contains("; 0 events valid"), "{report}");
}

#[test]
fn the_validator_refuses_an_empty_file() {
    let output = validate(&[]);
    assert_eq!(output.status.code(), Some(2), "{}", report(&output));
}

/// A reload rejected with the last good policy in force, and a start with nothing in force.
fn rejections() -> Vec<PolicyRejection> {
    let reload = PolicyRejection {
        time: SystemTime::now(),
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        },
        policy_dir: "/etc/enforcer/policy".to_owned(),
        origin: "directory".to_owned(),
        errors: vec![
            "rules/20-finance.toml:31:1: unknown key `prots` in [[deny]]".to_owned(),
            "nodes.toml:4:13: invalid address".to_owned(),
        ],
        in_force_version: Some("40103edb9c3cae46".to_owned()),
        in_force_generation: 3,
    };
    vec![
        reload.clone(),
        PolicyRejection {
            node: FlowNode {
                hostname: "app-1".to_owned(),
                is_virtual: true,
            },
            origin: "start".to_owned(),
            errors: vec!["p.toml:1:1: invalid TOML: expected a table".to_owned()],
            in_force_version: None,
            in_force_generation: 0,
            ..reload
        },
    ]
}

#[test]
fn rendered_rejections_validate() {
    let lines: Vec<String> = rejections()
        .iter()
        .map(|rejection| render_rejection(rejection, &Product::default()).to_string())
        .collect();
    let output = validate(&lines);
    let report = report(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains(&format!("{} events valid", lines.len())),
        "{report}"
    );
}

/// Rejections are checked as their own class: a flow event's attribute, an enum value outside the
/// class, and the flow events' profiles are each rejected; a class the enforcer does not emit is
/// refused outright.
#[test]
fn the_rejection_validator_holds_them_to_their_class() {
    let good = render_rejection(&rejections()[0], &Product::default());
    let mutations: [Mutation; 5] = [
        ("network activity attribute", |e| {
            e["connection_info"] = json!({ "protocol_num": 6 });
        }),
        ("status out of range", |e| e["status_id"] = json!(7)),
        ("activity of another class", |e| {
            e["activity_id"] = json!(5);
            e["type_uid"] = json!(501_905);
        }),
        ("the flow events' profiles", |e| {
            e["metadata"]["profiles"] = json!(["security_control", "host"]);
        }),
        ("a class the enforcer does not emit", |e| {
            e["class_uid"] = json!(6002);
            e["type_uid"] = json!(600_201);
        }),
    ];
    let lines: Vec<String> = mutations
        .iter()
        .map(|(what, mutate)| {
            let mut event = good.clone();
            mutate(&mut event);
            assert_ne!(event, good, "{what}: the mutation did not apply");
            event.to_string()
        })
        .collect();
    let output = validate(&lines);
    let report = report(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    for (number, (what, _)) in (1..).zip(mutations) {
        assert!(
            report.contains(&format!("events.jsonl:{number}: ")),
            "{what} (line {number}) accepted: {report}"
        );
    }
}

/// A flow record with everything `/proc` can add: the workload of a container and the span of an
/// aggregated record.
#[test]
fn a_flow_with_its_workload_and_span_validates() {
    let id = "4f3c5a0e9b8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
    let now = SystemTime::now();
    let record = FlowRecord {
        workload: Some(FlowWorkload {
            cgroup_path: format!("/system.slice/docker-{id}.scope"),
            systemd_unit: Some(format!("docker-{id}.scope")),
            container_id: Some(id.to_owned()),
        }),
        count: 3,
        span: Some((now - Duration::from_secs(2), now)),
        ..base()
    };
    let lines = [to_json_line(&record, &Product::default())];
    let output = validate(&lines);
    let report = report(&output);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("1 events valid"), "{report}");
}

fn alert_target(ip: IpAddr, port: Option<u16>, protocol: u8, name: &str) -> AlertTarget {
    AlertTarget {
        ip,
        port,
        protocol,
        name: name.to_owned(),
    }
}

/// A port scan by a known process, a sweep of one port, an ICMP sweep over IPv6, an inbound
/// fan-out from the world without a process, and one with more targets than listed.
fn alerts() -> Vec<LateralMovementAlert> {
    let now = SystemTime::now();
    let scan = LateralMovementAlert {
        time: now,
        first_seen: now - Duration::from_millis(800),
        kind: PatternKind::PortScan,
        technique: NETWORK_SERVICE_DISCOVERY,
        src: endpoint("web", v4(1), Some(40000)),
        process: base().process,
        workload: Some(FlowWorkload {
            cgroup_path: "/system.slice/web.service".to_owned(),
            systemd_unit: Some("web.service".to_owned()),
            container_id: None,
        }),
        targets: (1..=10)
            .map(|port| alert_target(v4(2), Some(port), 6, "db"))
            .collect(),
        distinct_targets: 10,
        distinct_destinations: 1,
        distinct_ports: 10,
        attempts: 14,
        window: Duration::from_secs(60),
        policy_version: "40103edb9c3cae46".to_owned(),
        outbound: true,
        ip_version: 4,
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        },
    };
    vec![
        scan.clone(),
        LateralMovementAlert {
            kind: PatternKind::Sweep,
            targets: (2..12)
                .map(|last| alert_target(v4(last), Some(22), 6, "db"))
                .collect(),
            distinct_destinations: 10,
            distinct_ports: 1,
            ..scan.clone()
        },
        LateralMovementAlert {
            kind: PatternKind::Sweep,
            src: endpoint("web", v6(1), None),
            targets: (2..12)
                .map(|last| alert_target(v6(last), None, 58, "@world"))
                .collect(),
            distinct_destinations: 10,
            distinct_ports: 1,
            ip_version: 6,
            process: None,
            workload: None,
            ..scan.clone()
        },
        LateralMovementAlert {
            kind: PatternKind::FanOut,
            src: endpoint("@world", IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), None),
            targets: (0..10_u8)
                .map(|i| {
                    alert_target(
                        v4(2 + i % 3),
                        Some(1000 + u16::from(i)),
                        6 + (i % 2) * 11,
                        "db",
                    )
                })
                .collect(),
            distinct_destinations: 3,
            distinct_ports: 10,
            outbound: false,
            process: None,
            workload: None,
            node: FlowNode {
                hostname: "app-1".to_owned(),
                is_virtual: true,
            },
            ..scan.clone()
        },
        LateralMovementAlert {
            kind: PatternKind::FanOut,
            targets: (0..16_u8)
                .map(|i| {
                    alert_target(
                        v4(2 + i % 5),
                        Some(2000 + u16::from(i)),
                        6,
                        &format!("n{i}"),
                    )
                })
                .collect(),
            distinct_targets: 300,
            distinct_destinations: 5,
            distinct_ports: 60,
            attempts: 1200,
            ..scan
        },
    ]
}

#[test]
fn rendered_alerts_validate() {
    let product = Product::default();
    let lines: Vec<String> = alerts()
        .iter()
        .map(|alert| render_alert(alert, &product).to_string())
        .chain(
            alerts()
                .into_iter()
                .map(|alert| render_report(&Report::Alert(alert), &product).to_string()),
        )
        .collect();
    let output = validate(&lines);
    let report = report(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains(&format!("{} events valid", lines.len())),
        "{report}"
    );
}

/// What an alert adds to a flow event is held to the schema too: an attack, an observable and the
/// process's file each reject an attribute or value outside it.
#[test]
fn the_validator_holds_alerts_to_the_schema() {
    let good = render_alert(&alerts()[0], &Product::default());
    let mutations: [Mutation; 4] = [
        ("unknown attack attribute", |e| {
            e["attacks"][0]["score"] = json!(9);
        }),
        ("observable type out of range", |e| {
            e["observables"][0]["type_id"] = json!(1234);
        }),
        ("file without its required type", |e| {
            if let Some(file) = e["actor"]["process"]["file"].as_object_mut() {
                file.remove("type_id");
            }
        }),
        ("container outside the declared profiles", |e| {
            e["actor"]["process"]["container"] = json!({ "uid": "abc" });
        }),
    ];
    let lines: Vec<String> = mutations
        .iter()
        .map(|(what, mutate)| {
            let mut event = good.clone();
            mutate(&mut event);
            assert_ne!(event, good, "{what}: the mutation did not apply");
            event.to_string()
        })
        .collect();
    let output = validate(&lines);
    let report = report(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    for (number, (what, _)) in (1..).zip(mutations) {
        assert!(
            report.contains(&format!("events.jsonl:{number}: ")),
            "{what} (line {number}) accepted: {report}"
        );
    }
}
