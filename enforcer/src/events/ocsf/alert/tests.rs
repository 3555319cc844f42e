use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, UNIX_EPOCH},
};

use super::*;
use crate::{
    events::{FlowEndpoint, FlowNode, FlowProcess, FlowWorkload, NETWORK_SERVICE_DISCOVERY},
    policy::Labels,
};

fn host(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn target(last: u8, port: Option<u16>, name: &str) -> AlertTarget {
    AlertTarget {
        ip: host(last),
        port,
        protocol: 6,
        name: name.to_owned(),
    }
}

/// `web` scanning ports 1..=10 of `db`, by a known process in a systemd service.
fn port_scan() -> LateralMovementAlert {
    LateralMovementAlert {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_001_000),
        first_seen: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
        kind: PatternKind::PortScan,
        technique: NETWORK_SERVICE_DISCOVERY,
        src: FlowEndpoint {
            ip: host(1),
            port: Some(40000),
            name: "web".to_owned(),
            labels: Labels::from([("app".to_owned(), "web".to_owned())]),
            is_world: false,
            segmented: true,
        },
        process: Some(FlowProcess {
            pid: 42,
            name: "nmap".to_owned(),
            cmd_line: Some("nmap 10.0.0.2".to_owned()),
            uid: 1000,
            user_name: Some("alice".to_owned()),
            executable: Some("/usr/bin/nmap".to_owned()),
            parent_pid: Some(41),
        }),
        workload: Some(FlowWorkload {
            cgroup_path: "/system.slice/web.service".to_owned(),
            systemd_unit: Some("web.service".to_owned()),
            container_id: None,
        }),
        targets: (1..=10).map(|port| target(2, Some(port), "db")).collect(),
        distinct_targets: 10,
        distinct_destinations: 1,
        distinct_ports: 10,
        attempts: 12,
        window: Duration::from_secs(60),
        policy_version: "abc123".to_owned(),
        outbound: true,
        ip_version: 4,
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        },
    }
}

fn rendered(alert: &LateralMovementAlert) -> Value {
    render_alert(alert, &Product::default())
}

#[test]
fn a_port_scan_renders_exactly_the_contract() {
    let targets: Vec<Value> = (1..=10)
        .map(|port| {
            json!({
                "ip": "10.0.0.2",
                "port": port,
                "protocol_name": "tcp",
                "protocol_num": 6,
                "name": "db",
            })
        })
        .collect();
    let expected = json!({
        "class_uid": 4001,
        "category_uid": 4,
        "activity_id": 5,
        "type_uid": 400_105,
        "time": 1_700_000_001_000_u64,
        "start_time": 1_700_000_000_250_u64,
        "end_time": 1_700_000_001_000_u64,
        "action_id": 2,
        "disposition_id": 2,
        "severity_id": 4,
        "message": "port scan from web (10.0.0.1): 10 ports of db (10.0.0.2) denied within 1m, 12 attempts",
        "connection_info": {
            "protocol_name": "tcp",
            "protocol_num": 6,
            "protocol_ver_id": 4,
            "direction_id": 3,
        },
        "src_endpoint": { "ip": "10.0.0.1", "name": "web" },
        "dst_endpoint": { "ip": "10.0.0.2", "name": "db" },
        "device": { "hostname": "app-1", "type_id": 1 },
        "metadata": {
            "version": "1.1.0",
            "product": {
                "name": "enforcer",
                "vendor_name": "enforcer project",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "profiles": ["security_control", "host"],
        },
        "attacks": [{
            "technique": { "uid": "T1046", "name": "Network Service Discovery" },
            "tactic": { "uid": "TA0007", "name": "Discovery" },
            "version": "14",
        }],
        "observables": [
            { "name": "src_endpoint.ip", "type_id": 2, "value": "10.0.0.1" },
            { "name": "dst_endpoint.ip", "type_id": 2, "value": "10.0.0.2" },
        ],
        "count": 12,
        "unmapped": {
            "kind": "port_scan",
            "targets": targets,
            "distinct_targets": 10,
            "distinct_destinations": 1,
            "distinct_ports": 10,
            "window_ms": 60_000,
            "src_labels": { "app": "web" },
            "policy_version": "abc123",
            "workload": {
                "cgroup_path": "/system.slice/web.service",
                "systemd_unit": "web.service",
            },
        },
        "actor": {
            "process": {
                "pid": 42,
                "name": "nmap",
                "cmd_line": "nmap 10.0.0.2",
                "file": { "path": "/usr/bin/nmap", "name": "nmap", "type_id": 1 },
                "parent_process": { "pid": 41 },
                "user": { "uid": "1000", "name": "alice" },
            },
        },
    });
    assert_eq!(rendered(&port_scan()), expected);
}

#[test]
fn a_sweep_names_its_port_and_no_address() {
    let sweep = LateralMovementAlert {
        kind: PatternKind::Sweep,
        targets: (2..12)
            .map(|last| target(last, Some(22), &format!("node-{last}")))
            .collect(),
        distinct_destinations: 10,
        distinct_ports: 1,
        ..port_scan()
    };
    let event = rendered(&sweep);
    assert_eq!(
        event["dst_endpoint"],
        json!({ "port": 22, "name": "@multiple" })
    );
    assert_eq!(event["observables"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        event["message"],
        "sweep from web (10.0.0.1): tcp/22 on 10 destinations denied within 1m, 12 attempts"
    );
    assert_eq!(event["unmapped"]["kind"], "sweep");
    assert_eq!(event["connection_info"]["protocol_num"], 6);
}

#[test]
fn a_fan_out_shares_what_its_listed_targets_share_only_when_all_are_listed() {
    let mut targets: Vec<AlertTarget> = (0..10_u8)
        .map(|i| target(2 + i % 3, Some(1000 + u16::from(i)), "db"))
        .collect();
    targets[3].protocol = 17;
    let fan_out = LateralMovementAlert {
        kind: PatternKind::FanOut,
        targets,
        distinct_destinations: 3,
        distinct_ports: 10,
        ..port_scan()
    };
    let event = rendered(&fan_out);
    assert_eq!(event["dst_endpoint"], json!({ "name": "db" }));
    assert!(
        event["connection_info"].get("protocol_num").is_none(),
        "tcp and udp"
    );
    assert_eq!(
        event["message"],
        "fan-out from web (10.0.0.1): 10 targets on 3 destinations denied within 1m, 12 attempts"
    );
    // With only some listed, the unlisted could differ: nothing is claimed shared.
    let capped = LateralMovementAlert {
        distinct_targets: 40,
        targets: (0..10_u8)
            .map(|i| target(2 + i % 3, Some(1000 + u16::from(i)), "db"))
            .collect(),
        ..fan_out
    };
    let event = rendered(&capped);
    assert_eq!(event["dst_endpoint"], json!({ "name": "@multiple" }));
    assert!(event["connection_info"].get("protocol_num").is_none());
    assert_eq!(event["unmapped"]["distinct_targets"], 40);
    assert_eq!(
        event["unmapped"]["targets"].as_array().map(Vec::len),
        Some(10)
    );
}

#[test]
fn an_inbound_scan_from_world_without_a_process() {
    let mut alert = port_scan();
    alert.outbound = false;
    alert.src.name = "@world".to_owned();
    alert.src.is_world = true;
    alert.process = None;
    alert.workload = None;
    let event = rendered(&alert);
    assert_eq!(event["connection_info"]["direction_id"], 1);
    assert!(event.get("actor").is_none());
    assert!(event["unmapped"].get("workload").is_none());
    // Outbound to the world.
    let outward = LateralMovementAlert {
        targets: (1..=10)
            .map(|port| target(2, Some(port), "@world"))
            .collect(),
        ..port_scan()
    };
    assert_eq!(rendered(&outward)["connection_info"]["direction_id"], 2);
}

#[test]
fn an_icmp_sweep_has_no_port() {
    let sweep = LateralMovementAlert {
        kind: PatternKind::Sweep,
        targets: (2..12)
            .map(|last| AlertTarget {
                protocol: 1,
                ..target(last, None, "db")
            })
            .collect(),
        distinct_destinations: 10,
        distinct_ports: 1,
        attempts: 1,
        ..port_scan()
    };
    let event = rendered(&sweep);
    assert_eq!(event["dst_endpoint"], json!({ "name": "db" }));
    assert!(event["unmapped"]["targets"][0].get("port").is_none());
    assert_eq!(
        event["message"],
        "sweep from web (10.0.0.1): icmp on 10 destinations denied within 1m, 1 attempt"
    );
}
