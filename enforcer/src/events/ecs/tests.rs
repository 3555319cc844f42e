use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::{
    events::{
        AlertTarget, FlowRule, LateralMovementAlert, Layer, NETWORK_SERVICE_DISCOVERY, PatternKind,
        PolicyRejection, ocsf,
    },
    policy::{Labels, Mode},
};

const MILLIS: u64 = 1_700_000_000_123;

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

fn endpoint(name: &str, ip: IpAddr, port: Option<u16>) -> FlowEndpoint {
    FlowEndpoint {
        ip,
        port,
        name: name.to_owned(),
        labels: if name.starts_with('@') {
            Labels::new()
        } else {
            Labels::from([("app".to_owned(), name.to_owned())])
        },
        is_world: name == "@world",
        segmented: !name.starts_with('@'),
    }
}

fn node() -> FlowNode {
    FlowNode {
        hostname: "app-1".to_owned(),
        is_virtual: false,
    }
}

fn process() -> FlowProcess {
    FlowProcess {
        pid: 42,
        name: "curl".to_owned(),
        cmd_line: Some("curl db:5432".to_owned()),
        uid: 1000,
        user_name: Some("alice".to_owned()),
        executable: Some("/usr/bin/curl".to_owned()),
        parent_pid: Some(41),
    }
}

/// An egress TCP denial between two segment members, every optional field filled.
fn denial() -> FlowRecord {
    FlowRecord {
        time: at(MILLIS),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        revoked: false,
        src: endpoint("web", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), Some(40000)),
        dst: endpoint("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), Some(5432)),
        process: Some(process()),
        process_from_socket: false,
        workload: Some(FlowWorkload {
            cgroup_path: "/system.slice/docker-abc.scope".to_owned(),
            systemd_unit: Some("docker-abc.scope".to_owned()),
            container_id: Some("abc".to_owned()),
        }),
        layer: Layer::Socket,
        rule: FlowRule {
            uid: "rules/web.toml:12".to_owned(),
            name: "web-never-db".to_owned(),
            description: Some("web never reaches the database".to_owned()),
        },
        policy_version: "abc123".to_owned(),
        mode: Mode::Enforce,
        node: node(),
        count: 1,
        span: None,
        swept_ports: Vec::new(),
    }
}

fn alert(kind: PatternKind, destinations: u32) -> LateralMovementAlert {
    LateralMovementAlert {
        time: at(MILLIS + 2_000),
        first_seen: at(MILLIS),
        kind,
        technique: NETWORK_SERVICE_DISCOVERY,
        src: endpoint("web", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), Some(40000)),
        process: None,
        workload: None,
        targets: vec![
            AlertTarget {
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                port: Some(22),
                protocol: 6,
                name: "db".to_owned(),
            },
            AlertTarget {
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                port: Some(23),
                protocol: 6,
                name: "db".to_owned(),
            },
        ],
        distinct_targets: 2,
        distinct_destinations: destinations,
        distinct_ports: 2,
        attempts: 9,
        window: Duration::from_secs(10),
        policy_version: "abc123".to_owned(),
        outbound: true,
        ip_version: 4,
        node: node(),
    }
}

fn flow(record: FlowRecord) -> Value {
    render_report(&Report::Flow(record), &Product::default())
}

#[test]
fn denial_renders_every_ecs_field_it_has() {
    let document = flow(denial());
    assert_eq!(
        document,
        json!({
            "@timestamp": "2023-11-14T22:13:20.123Z",
            "message": "denied tcp 10.0.0.1:40000 -> 10.0.0.2:5432 (web -> db) by rules/web.toml:12",
            "ecs": { "version": "8.11.0" },
            "event": {
                "kind": "event",
                "category": ["network"],
                "type": ["connection", "denied"],
                "action": "connection-denied",
                "outcome": "failure",
                "severity": 3,
                "dataset": "enforcer.flow",
                "module": "enforcer",
            },
            "host": { "hostname": "app-1", "name": "app-1" },
            "observer": {
                "hostname": "app-1",
                "product": "enforcer",
                "vendor": "enforcer project",
                "version": env!("CARGO_PKG_VERSION"),
                "type": "firewall",
            },
            "source": { "ip": "10.0.0.1", "address": "10.0.0.1", "port": 40000 },
            "destination": { "ip": "10.0.0.2", "address": "10.0.0.2", "port": 5432 },
            "network": { "type": "ipv4", "iana_number": "6", "transport": "tcp", "direction": "egress" },
            "rule": {
                "id": "rules/web.toml:12",
                "name": "web-never-db",
                "description": "web never reaches the database",
                "version": "abc123",
            },
            "process": {
                "pid": 42,
                "name": "curl",
                "command_line": "curl db:5432",
                "executable": "/usr/bin/curl",
                "parent": { "pid": 41 },
            },
            "user": { "id": "1000", "name": "alice" },
            "container": { "id": "abc" },
            "related": { "ip": ["10.0.0.1", "10.0.0.2"], "hosts": ["app-1"], "user": ["alice"] },
            "enforcer": {
                "count": 1,
                "mode": "enforce",
                "layer": "socket",
                "direction": "lateral",
                "process_from_socket": false,
                "source": { "identity": "web", "labels": { "app": "web" }, "is_world": false, "segmented": true },
                "destination": { "identity": "db", "labels": { "app": "db" }, "is_world": false, "segmented": true },
                "workload": { "cgroup_path": "/system.slice/docker-abc.scope", "systemd_unit": "docker-abc.scope" },
            },
        })
    );
}

#[test]
fn audit_is_an_allowed_connection_in_audit_mode() {
    let document = flow(FlowRecord {
        verdict: Verdict::Audited,
        mode: Mode::Audit,
        ..denial()
    });
    assert_eq!(document["event"]["type"], json!(["connection", "allowed"]));
    assert_eq!(document["event"]["outcome"], "success");
    assert_eq!(document["event"]["action"], "connection-audited");
    assert_eq!(document["enforcer"]["mode"], "audit");
}

#[test]
fn revocation_ends_the_connection() {
    let document = flow(FlowRecord {
        revoked: true,
        ..denial()
    });
    assert_eq!(
        document["event"]["type"],
        json!(["connection", "denied", "end"])
    );
    assert_eq!(document["event"]["action"], "connection-revoked");
    assert_eq!(document["enforcer"]["revoked"], true);
}

#[test]
fn an_aggregate_has_its_span_and_count() {
    let document = flow(FlowRecord {
        count: 17,
        span: Some((at(MILLIS), at(MILLIS + 4_500))),
        dst: endpoint("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), None),
        swept_ports: vec![22, 80],
        ..denial()
    });
    assert_eq!(document["event"]["start"], "2023-11-14T22:13:20.123Z");
    assert_eq!(document["event"]["end"], "2023-11-14T22:13:24.623Z");
    assert_eq!(document["event"]["duration"], 4_500_000_000_u64);
    assert_eq!(document["enforcer"]["count"], 17);
    assert_eq!(document["enforcer"]["swept_ports"], json!([22, 80]));
    assert!(document["destination"].get("port").is_none());
    assert!(
        document["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("(17 attempts)"))
    );
}

#[test]
fn icmpv6_inbound_from_the_world_without_process() {
    let document = flow(FlowRecord {
        protocol: 58,
        ip_version: 6,
        outbound: false,
        src: endpoint(
            "@world",
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
            None,
        ),
        dst: endpoint("@host", IpAddr::V6(Ipv6Addr::LOCALHOST), None),
        process: None,
        workload: None,
        ..denial()
    });
    assert_eq!(
        document["network"],
        json!({ "type": "ipv6", "iana_number": "58", "transport": "ipv6-icmp", "direction": "ingress" })
    );
    assert_eq!(document["enforcer"]["direction"], "inbound");
    assert_eq!(document["event"]["severity"], 2);
    for absent in ["process", "user", "container"] {
        assert!(document.get(absent).is_none(), "{absent} present");
    }
    assert!(document["enforcer"].get("process_from_socket").is_none());
    assert_eq!(
        document["source"],
        json!({ "ip": "2001:db8::7", "address": "2001:db8::7" })
    );
}

#[test]
fn a_protocol_without_an_ecs_transport_keeps_its_number() {
    let document = flow(FlowRecord {
        protocol: 132,
        ..denial()
    });
    assert_eq!(document["network"]["iana_number"], "132");
    assert!(document["network"].get("transport").is_none());
}

#[test]
fn a_port_scan_is_an_alert_with_its_destination_and_threat() {
    let document = render_report(
        &Report::Alert(alert(PatternKind::PortScan, 1)),
        &Product::default(),
    );
    assert_eq!(document["event"]["kind"], "alert");
    assert_eq!(
        document["event"]["category"],
        json!(["network", "intrusion_detection"])
    );
    assert_eq!(document["event"]["severity"], 4);
    assert!(document["event"].get("outcome").is_none());
    assert_eq!(document["event"]["start"], "2023-11-14T22:13:20.123Z");
    assert_eq!(document["event"]["end"], "2023-11-14T22:13:22.123Z");
    assert_eq!(
        document["threat"],
        json!({
            "framework": "MITRE ATT&CK",
            "technique": {
                "id": ["T1046"],
                "name": ["Network Service Discovery"],
                "reference": ["https://attack.mitre.org/techniques/T1046/"],
            },
            "tactic": {
                "id": ["TA0007"],
                "name": ["Discovery"],
                "reference": ["https://attack.mitre.org/tactics/TA0007/"],
            },
        })
    );
    // One destination, two ports: the destination without a port.
    assert_eq!(
        document["destination"],
        json!({ "ip": "10.0.0.2", "address": "10.0.0.2" })
    );
    assert_eq!(document["network"]["transport"], "tcp");
    assert_eq!(document["rule"]["id"], "lateral-movement:port-scan");
    assert_eq!(document["enforcer"]["alert"]["kind"], "port_scan");
    assert_eq!(document["enforcer"]["alert"]["window_ms"], 10_000);
    assert_eq!(
        document["enforcer"]["alert"]["targets"][1],
        json!({ "ip": "10.0.0.2", "port": 23, "protocol": 6, "identity": "db" })
    );
    assert_eq!(document["related"]["ip"], json!(["10.0.0.1", "10.0.0.2"]));
}

#[test]
fn a_sweep_has_no_single_destination() {
    let document = render_report(
        &Report::Alert(alert(PatternKind::Sweep, 2)),
        &Product::default(),
    );
    assert!(document.get("destination").is_none());
    assert_eq!(document["enforcer"]["alert"]["kind"], "sweep");
}

#[test]
fn a_rejection_is_a_failed_configuration_change() {
    let rejection = PolicyRejection {
        time: at(MILLIS),
        node: node(),
        policy_dir: "/etc/enforcer/policy.d".to_owned(),
        origin: "SIGHUP".to_owned(),
        errors: vec!["a.toml:1:1: bad".to_owned(), "b.toml:2:3: worse".to_owned()],
        in_force_version: None,
        in_force_generation: 0,
    };
    let document = render_report(&Report::Rejection(rejection), &Product::default());
    assert_eq!(
        document["event"],
        json!({
            "kind": "event",
            "category": ["configuration"],
            "type": ["change"],
            "action": "policy-rejected",
            "outcome": "failure",
            "severity": 3,
            "dataset": "enforcer.policy",
            "module": "enforcer",
        })
    );
    assert_eq!(
        document["message"],
        "policy in /etc/enforcer/policy.d rejected (SIGHUP): 2 errors; no policy is in force"
    );
    assert_eq!(
        document["error"]["message"],
        "a.toml:1:1: bad\nb.toml:2:3: worse"
    );
    assert_eq!(
        document["enforcer"]["policy"],
        json!({
            "dir": "/etc/enforcer/policy.d",
            "origin": "SIGHUP",
            "errors": ["a.toml:1:1: bad", "b.toml:2:3: worse"],
            "in_force_generation": 0,
        })
    );
    assert!(document.get("source").is_none());
}

#[test]
fn severity_matches_ocsf() {
    let records = [
        denial(),
        FlowRecord {
            dst: endpoint(
                "@world",
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
                Some(443),
            ),
            ..denial()
        },
    ];
    let reports = records
        .into_iter()
        .map(Report::Flow)
        .chain([Report::Alert(alert(PatternKind::FanOut, 2))]);
    for report in reports {
        let product = Product::default();
        assert_eq!(
            render_report(&report, &product)["event"]["severity"],
            ocsf::render_report(&report, &product)["severity_id"],
            "{report:?}"
        );
    }
}

#[test]
fn timestamps_outside_the_formattable_range_are_clamped() {
    assert_eq!(
        timestamp(UNIX_EPOCH - Duration::from_secs(1)),
        "1970-01-01T00:00:00.000Z"
    );
    assert_eq!(
        timestamp(UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 25)),
        "9999-12-31T23:59:59.999Z"
    );
}
