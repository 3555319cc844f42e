use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, UNIX_EPOCH},
};

use super::*;
use crate::{
    events::{FlowNode, FlowProcess, FlowRule, FlowWorkload, Layer, PolicyRejection},
    policy::{Labels, Mode},
};

const WEB: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const DB: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

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

/// An egress TCP denial between two segment members, with every optional field filled.
fn denial() -> FlowRecord {
    FlowRecord {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        revoked: false,
        swept_ports: Vec::new(),
        src: endpoint("web", WEB, Some(40000)),
        dst: endpoint("db", DB, Some(5432)),
        process: Some(FlowProcess {
            pid: 42,
            name: "curl".to_owned(),
            cmd_line: Some("curl db:5432".to_owned()),
            uid: 1000,
            user_name: Some("alice".to_owned()),
            executable: Some("/usr/bin/curl".to_owned()),
            parent_pid: Some(41),
        }),
        process_from_socket: false,
        workload: Some(FlowWorkload {
            cgroup_path: "/system.slice/web.service".to_owned(),
            systemd_unit: Some("web.service".to_owned()),
            container_id: None,
        }),
        layer: Layer::Socket,
        rule: FlowRule {
            uid: "rules/web.toml:12".to_owned(),
            name: "web-never-db".to_owned(),
            description: Some("web never reaches the database".to_owned()),
        },
        policy_version: "abc123".to_owned(),
        mode: Mode::Enforce,
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        },
        count: 1,
        span: None,
    }
}

fn rendered(record: &FlowRecord) -> Value {
    render(record, &Product::default())
}

#[test]
fn denial_renders_exactly_the_contract() {
    let expected = json!({
        "class_uid": 4001,
        "category_uid": 4,
        "activity_id": 5,
        "type_uid": 400_105,
        "time": 1_700_000_000_123_u64,
        "action_id": 2,
        "disposition_id": 2,
        "severity_id": 3,
        "connection_info": {
            "protocol_name": "tcp",
            "protocol_num": 6,
            "protocol_ver_id": 4,
            "direction_id": 3,
        },
        "src_endpoint": { "ip": "10.0.0.1", "port": 40000, "name": "web" },
        "dst_endpoint": { "ip": "10.0.0.2", "port": 5432, "name": "db" },
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
        "firewall_rule": {
            "uid": "rules/web.toml:12",
            "name": "web-never-db",
            "desc": "web never reaches the database",
            "version": "abc123",
        },
        "count": 1,
        "unmapped": {
            "src_labels": { "app": "web" },
            "dst_labels": { "app": "db" },
            "mode": "enforce",
            "layer": "socket",
            "process_from_socket": false,
            "workload": {
                "cgroup_path": "/system.slice/web.service",
                "systemd_unit": "web.service",
            },
            "provenance": {
                "process_controlled": [
                    "src_endpoint.ip",
                    "src_endpoint.port",
                    "actor.process.name",
                    "actor.process.cmd_line",
                ],
                "kernel_established": [
                    "src_endpoint.name",
                    "dst_endpoint.ip",
                    "dst_endpoint.port",
                    "dst_endpoint.name",
                    "actor.process.pid",
                    "actor.process.user.uid",
                ],
            },
        },
        "actor": {
            "process": {
                "pid": 42,
                "name": "curl",
                "cmd_line": "curl db:5432",
                "file": { "path": "/usr/bin/curl", "name": "curl", "type_id": 1 },
                "parent_process": { "pid": 41 },
                "user": { "uid": "1000", "name": "alice" },
            },
        },
    });
    assert_eq!(rendered(&denial()), expected);
}

#[test]
fn audit_is_an_allowed_logged_open() {
    let event = rendered(&FlowRecord {
        verdict: Verdict::Audited,
        mode: Mode::Audit,
        ..denial()
    });
    assert_eq!(event["activity_id"], 1);
    assert_eq!(event["type_uid"], 400_101);
    assert_eq!(event["action_id"], 1);
    assert_eq!(event["disposition_id"], 17);
    assert_eq!(event["unmapped"]["mode"], "audit");
    assert_eq!(
        event["severity_id"], 3,
        "an audit is as severe as the denial"
    );
}

#[test]
fn udp_keeps_its_ports() {
    let event = rendered(&FlowRecord {
        protocol: 17,
        src: endpoint("web", WEB, Some(53000)),
        dst: endpoint("db", DB, Some(53)),
        ..denial()
    });
    assert_eq!(event["connection_info"]["protocol_name"], "udp");
    assert_eq!(event["connection_info"]["protocol_num"], 17);
    assert_eq!(event["src_endpoint"]["port"], 53000);
    assert_eq!(event["dst_endpoint"]["port"], 53);
}

#[test]
fn icmp_has_no_ports() {
    let event = rendered(&FlowRecord {
        protocol: 1,
        src: endpoint("web", WEB, None),
        dst: endpoint("db", DB, None),
        ..denial()
    });
    assert_eq!(event["connection_info"]["protocol_name"], "icmp");
    assert_eq!(event["connection_info"]["protocol_num"], 1);
    assert_eq!(
        event["src_endpoint"],
        json!({ "ip": "10.0.0.1", "name": "web" })
    );
    assert_eq!(
        event["dst_endpoint"],
        json!({ "ip": "10.0.0.2", "name": "db" })
    );
}

#[test]
fn icmpv6_is_icmp_over_ipv6() {
    let src = IpAddr::V6(Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x10));
    let dst = IpAddr::V6(Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x11));
    let event = rendered(&FlowRecord {
        protocol: 58,
        ip_version: 6,
        src: endpoint("web", src, None),
        dst: endpoint("db", dst, None),
        ..denial()
    });
    assert_eq!(event["connection_info"]["protocol_name"], "icmp");
    assert_eq!(event["connection_info"]["protocol_num"], 58);
    assert_eq!(event["connection_info"]["protocol_ver_id"], 6);
    assert_eq!(
        event["src_endpoint"],
        json!({ "ip": "fd00:3::10", "name": "web" })
    );
    assert_eq!(
        event["dst_endpoint"],
        json!({ "ip": "fd00:3::11", "name": "db" })
    );
}

#[test]
fn tcp_over_ipv6_renders_canonical_addresses() {
    let event = rendered(&FlowRecord {
        ip_version: 6,
        src: endpoint("web", IpAddr::V6(Ipv6Addr::LOCALHOST), Some(40000)),
        dst: endpoint("db", "fd00:3::11".parse().unwrap(), Some(5432)),
        ..denial()
    });
    assert_eq!(event["connection_info"]["protocol_ver_id"], 6);
    assert_eq!(event["src_endpoint"]["ip"], "::1");
    assert_eq!(event["dst_endpoint"]["ip"], "fd00:3::11");
}

#[test]
fn an_unknown_protocol_keeps_its_number() {
    let event = rendered(&FlowRecord {
        protocol: 132,
        src: endpoint("web", WEB, None),
        dst: endpoint("db", DB, None),
        ..denial()
    });
    assert_eq!(event["connection_info"]["protocol_name"], "other");
    assert_eq!(event["connection_info"]["protocol_num"], 132);
}

#[test]
fn lateral_when_neither_end_is_world_whatever_the_origin() {
    for outbound in [true, false] {
        let event = rendered(&FlowRecord {
            outbound,
            ..denial()
        });
        assert_eq!(event["connection_info"]["direction_id"], 3, "{outbound}");
    }
    // @host is not @world: a local process talking to a workload stays lateral.
    let event = rendered(&FlowRecord {
        src: endpoint("@host", WEB, Some(40000)),
        ..denial()
    });
    assert_eq!(event["connection_info"]["direction_id"], 3);
}

#[test]
fn outbound_to_world() {
    let event = rendered(&FlowRecord {
        dst: endpoint("@world", OUTSIDE, Some(443)),
        ..denial()
    });
    assert_eq!(event["connection_info"]["direction_id"], 2);
    assert_eq!(event["dst_endpoint"]["name"], "@world");
    assert_eq!(event["unmapped"]["dst_labels"], json!({}));
    assert_eq!(event["severity_id"], 2, "only one end is a segment member");
}

#[test]
fn inbound_from_world() {
    let event = rendered(&FlowRecord {
        outbound: false,
        src: endpoint("@world", OUTSIDE, Some(51000)),
        process: None,
        ..denial()
    });
    assert_eq!(event["connection_info"]["direction_id"], 1);
    assert_eq!(event["src_endpoint"]["name"], "@world");
    assert_eq!(event["severity_id"], 2);
}

#[test]
fn severity_is_medium_only_between_segment_members() {
    let mut record = denial();
    assert_eq!(rendered(&record)["severity_id"], 3);
    record.dst.segmented = false;
    assert_eq!(rendered(&record)["severity_id"], 2);
    record.src.segmented = false;
    record.dst.segmented = true;
    assert_eq!(rendered(&record)["severity_id"], 2);
}

#[test]
fn without_a_process_there_is_no_actor() {
    let event = rendered(&FlowRecord {
        process: None,
        ..denial()
    });
    assert!(event.get("actor").is_none());
}

#[test]
fn what_proc_no_longer_told_is_left_out() {
    let mut record = denial();
    if let Some(process) = &mut record.process {
        process.cmd_line = None;
        process.executable = None;
        process.parent_pid = None;
        process.user_name = None;
    }
    record.workload = None;
    let event = rendered(&record);
    assert_eq!(
        event["actor"],
        json!({ "process": { "pid": 42, "name": "curl", "user": { "uid": "1000" } } })
    );
    assert!(event["unmapped"].get("workload").is_none());
}

#[test]
fn a_container_workload_names_its_id() {
    let id = "4f3c5a0e9b8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
    let event = rendered(&FlowRecord {
        workload: Some(FlowWorkload {
            cgroup_path: format!("/system.slice/docker-{id}.scope"),
            systemd_unit: Some(format!("docker-{id}.scope")),
            container_id: Some(id.to_owned()),
        }),
        ..denial()
    });
    assert_eq!(event["unmapped"]["workload"]["container_id"], id);
}

#[test]
fn an_aggregated_span_is_start_and_end_time() {
    let first = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
    let last = UNIX_EPOCH + Duration::from_millis(1_700_000_000_900);
    let event = rendered(&FlowRecord {
        count: 3,
        span: Some((first, last)),
        ..denial()
    });
    assert_eq!(event["start_time"], 1_700_000_000_000_u64);
    assert_eq!(event["end_time"], 1_700_000_000_900_u64);
    assert!(rendered(&denial()).get("start_time").is_none());
}

#[test]
fn default_deny_names_the_segment_and_has_no_description() {
    let event = rendered(&FlowRecord {
        rule: FlowRule {
            uid: "default-deny:finance".to_owned(),
            name: "default-deny:finance".to_owned(),
            description: None,
        },
        ..denial()
    });
    assert_eq!(
        event["firewall_rule"],
        json!({
            "uid": "default-deny:finance",
            "name": "default-deny:finance",
            "version": "abc123",
        })
    );
}

#[test]
fn a_virtual_node_is_a_virtual_device() {
    let mut record = denial();
    record.node.is_virtual = true;
    assert_eq!(
        rendered(&record)["device"],
        json!({ "hostname": "app-1", "type_id": 6 })
    );
}

#[test]
fn an_aggregated_record_carries_its_count() {
    let event = rendered(&FlowRecord {
        count: 17,
        ..denial()
    });
    assert_eq!(event["count"], 17);
}

#[test]
fn a_clock_before_the_epoch_renders_time_zero() {
    let event = rendered(&FlowRecord {
        time: UNIX_EPOCH - Duration::from_secs(1),
        ..denial()
    });
    assert_eq!(event["time"], 0);
}

#[test]
fn the_product_is_passed_through() {
    let product = Product {
        name: "enforcer".to_owned(),
        vendor_name: "Example Corp".to_owned(),
        version: "9.9.9".to_owned(),
    };
    assert_eq!(
        render(&denial(), &product)["metadata"]["product"],
        json!({ "name": "enforcer", "vendor_name": "Example Corp", "version": "9.9.9" })
    );
}

#[test]
fn a_json_line_is_one_line_of_the_same_event() {
    let mut record = denial();
    record.rule.description = Some("first line\nsecond line".to_owned());
    let line = to_json_line(&record, &Product::default());
    assert!(!line.contains('\n'), "{line}");
    let parsed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed, rendered(&record));
}

/// A SIGHUP reload with two errors, the last good policy staying in force.
fn rejection() -> PolicyRejection {
    PolicyRejection {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_456),
        node: FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: true,
        },
        policy_dir: "/etc/enforcer/policy".to_owned(),
        origin: "SIGHUP".to_owned(),
        errors: vec![
            "rules/web.toml:12:1: unknown key `prots` in [[deny]]".to_owned(),
            "segments.toml:3:10: unknown selector label".to_owned(),
        ],
        in_force_version: Some("abc123".to_owned()),
        in_force_generation: 4,
    }
}

#[test]
fn a_rejection_renders_as_a_failed_config_change() {
    let expected = json!({
        "class_uid": 5019,
        "category_uid": 5,
        "activity_id": 1,
        "type_uid": 501_901,
        "time": 1_700_000_000_456_u64,
        "severity_id": 3,
        "status_id": 2,
        "message": "policy in /etc/enforcer/policy rejected (SIGHUP): 2 errors; version abc123 (generation 4) stays in force",
        "device": { "hostname": "app-1", "type_id": 6 },
        "metadata": {
            "version": "1.1.0",
            "product": {
                "name": "enforcer",
                "vendor_name": "enforcer project",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "profiles": ["host"],
        },
        "unmapped": {
            "policy_dir": "/etc/enforcer/policy",
            "origin": "SIGHUP",
            "policy_errors": [
                "rules/web.toml:12:1: unknown key `prots` in [[deny]]",
                "segments.toml:3:10: unknown selector label",
            ],
            "in_force_version": "abc123",
            "in_force_generation": 4,
        },
    });
    assert_eq!(
        render_rejection(&rejection(), &Product::default()),
        expected
    );
}

#[test]
fn a_rejection_says_what_stays_in_force() {
    let message = |rejection: &PolicyRejection| {
        render_rejection(rejection, &Product::default())["message"].clone()
    };
    let at_start = PolicyRejection {
        origin: "start".to_owned(),
        errors: vec!["p.toml:1:1: invalid TOML: expected a table".to_owned()],
        in_force_version: None,
        in_force_generation: 0,
        ..rejection()
    };
    assert_eq!(
        message(&at_start),
        "policy in /etc/enforcer/policy rejected (start): 1 error; no policy is in force"
    );
    let event = render_rejection(&at_start, &Product::default());
    assert!(event["unmapped"].get("in_force_version").is_none());
    assert_eq!(event["unmapped"]["in_force_generation"], 0);
    // Restarted over a kernel policy the daemon did not load itself.
    let adopted = PolicyRejection {
        in_force_generation: 9,
        ..at_start
    };
    assert_eq!(
        message(&adopted),
        "policy in /etc/enforcer/policy rejected (start): 1 error; generation 9 stays in force, version unknown"
    );
}

/// A closed-port arrival from the peer, as the interface layer reports it.
fn arrival(port: u16) -> FlowRecord {
    FlowRecord {
        outbound: false,
        layer: Layer::Interface,
        src: endpoint("@world", OUTSIDE, Some(51000)),
        dst: endpoint("db", DB, Some(port)),
        process: None,
        ..denial()
    }
}

#[test]
fn a_sweep_is_reported_once_at_once_then_once_per_window_with_its_ports() {
    let mut sweeps = crate::events::Aggregator::new(Duration::from_secs(1));
    let start = std::time::Instant::now();
    assert!(
        sweeps.admit(arrival(1), start).is_some(),
        "the first attempt waits"
    );
    for port in 2..=100 {
        assert!(sweeps.admit(arrival(port), start).is_none());
    }
    // Another source is another sweep; another layer is never held back.
    let other = FlowRecord {
        src: endpoint("@world", WEB, Some(51000)),
        ..arrival(7)
    };
    assert!(sweeps.admit(other, start).is_some());
    assert!(sweeps.admit(denial(), start).is_some());
    assert!(sweeps.expire(start + Duration::from_millis(999)).is_empty());
    let closed = sweeps.expire(start + Duration::from_secs(1));
    assert_eq!(
        closed.len(),
        1,
        "only the window with more attempts reports"
    );
    let summary = &closed[0];
    assert_eq!(summary.count, 99);
    assert_eq!(summary.dst.port, None);
    assert_eq!(summary.swept_ports, (2..=100).collect::<Vec<u16>>());
    let event = rendered(summary);
    assert_eq!(event["count"], 99);
    assert_eq!(event["unmapped"]["swept_ports"][0], 2);
    assert_eq!(event["unmapped"]["layer"], "interface");
    assert!(event["dst_endpoint"].get("port").is_none());
    // A new window opens with a report at once.
    assert!(
        sweeps
            .admit(arrival(5), start + Duration::from_secs(2))
            .is_some()
    );
    assert!(
        sweeps
            .admit(arrival(5), start + Duration::from_secs(2))
            .is_none()
    );
    let flushed = sweeps.flush();
    assert_eq!(flushed.len(), 1);
    assert_eq!(
        flushed[0].dst.port,
        Some(5),
        "one port swept is still named"
    );
    assert!(flushed[0].swept_ports.is_empty());
}
