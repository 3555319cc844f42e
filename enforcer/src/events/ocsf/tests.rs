use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, UNIX_EPOCH},
};

use super::*;
use crate::{
    events::{FlowNode, FlowProcess, FlowRule},
    policy::{Labels, Mode},
};

fn endpoint(name: &str, ip: IpAddr, port: Option<u16>, segmented: bool) -> FlowEndpoint {
    FlowEndpoint {
        ip,
        port,
        name: name.to_owned(),
        labels: Labels::from([("app".to_owned(), name.to_owned())]),
        is_world: name == "@world",
        segmented,
    }
}

fn denial() -> FlowRecord {
    FlowRecord {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        src: endpoint(
            "web",
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            Some(40000),
            true,
        ),
        dst: endpoint(
            "db",
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            Some(5432),
            true,
        ),
        process: Some(FlowProcess {
            pid: 42,
            name: "curl".to_owned(),
            cmd_line: Some("curl db:5432".to_owned()),
            uid: 1000,
        }),
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
    }
}

#[test]
fn denial_carries_the_contract_fields() {
    let event = render(&denial(), &Product::default());
    assert_eq!(event["class_uid"], 4001);
    assert_eq!(event["category_uid"], 4);
    assert_eq!(event["activity_id"], 5);
    assert_eq!(event["type_uid"], 400_105);
    assert_eq!(event["time"], 1_700_000_000_123_u64);
    assert_eq!(event["action_id"], 2);
    assert_eq!(event["disposition_id"], 2);
    assert_eq!(event["severity_id"], 3);
    assert_eq!(event["connection_info"]["protocol_name"], "tcp");
    assert_eq!(event["connection_info"]["protocol_num"], 6);
    assert_eq!(event["connection_info"]["protocol_ver_id"], 4);
    assert_eq!(event["connection_info"]["direction_id"], 3);
    assert_eq!(event["src_endpoint"]["ip"], "10.0.0.1");
    assert_eq!(event["dst_endpoint"]["port"], 5432);
    assert_eq!(event["dst_endpoint"]["name"], "db");
    assert_eq!(event["device"]["hostname"], "app-1");
    assert_eq!(event["device"]["type_id"], 1);
    assert_eq!(event["metadata"]["version"], "1.1.0");
    assert_eq!(event["metadata"]["product"]["name"], "enforcer");
    assert_eq!(
        event["metadata"]["profiles"],
        json!(["security_control", "host"])
    );
    assert_eq!(event["firewall_rule"]["uid"], "rules/web.toml:12");
    assert_eq!(
        event["firewall_rule"]["desc"],
        "web never reaches the database"
    );
    assert_eq!(event["firewall_rule"]["version"], "abc123");
    assert_eq!(event["count"], 1);
    assert_eq!(event["unmapped"]["mode"], "enforce");
    assert_eq!(event["unmapped"]["dst_labels"]["app"], "db");
    assert_eq!(event["actor"]["process"]["pid"], 42);
    assert_eq!(event["actor"]["process"]["user"]["uid"], "1000");
}

#[test]
fn audit_is_an_allowed_logged_open() {
    let record = FlowRecord {
        verdict: Verdict::Audited,
        mode: Mode::Audit,
        ..denial()
    };
    let event = render(&record, &Product::default());
    assert_eq!(
        (
            &event["activity_id"],
            &event["type_uid"],
            &event["action_id"],
            &event["disposition_id"]
        ),
        (&json!(1), &json!(400_101), &json!(1), &json!(17))
    );
    assert_eq!(event["unmapped"]["mode"], "audit");
}

#[test]
fn icmp_has_no_ports_and_icmpv6_is_icmp() {
    let mut record = denial();
    record.protocol = 58;
    record.ip_version = 6;
    record.src = endpoint("web", IpAddr::V6(Ipv6Addr::LOCALHOST), None, true);
    record.dst = endpoint("db", IpAddr::V6(Ipv6Addr::LOCALHOST), None, false);
    let event = render(&record, &Product::default());
    assert_eq!(event["connection_info"]["protocol_name"], "icmp");
    assert_eq!(event["connection_info"]["protocol_ver_id"], 6);
    assert!(event["src_endpoint"].get("port").is_none());
    assert!(event["dst_endpoint"].get("port").is_none());
    assert_eq!(event["severity_id"], 2, "only one end is segmented");
}

#[test]
fn direction_follows_world_and_origin() {
    let mut record = denial();
    record.dst = endpoint(
        "@world",
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
        Some(443),
        false,
    );
    assert_eq!(
        render(&record, &Product::default())["connection_info"]["direction_id"],
        2
    );
    record.outbound = false;
    assert_eq!(
        render(&record, &Product::default())["connection_info"]["direction_id"],
        1
    );
}

#[test]
fn optional_fields_are_left_out_not_nulled() {
    let mut record = denial();
    record.process = None;
    record.rule.description = None;
    record.node.is_virtual = true;
    let event = render(&record, &Product::default());
    assert!(event.get("actor").is_none());
    assert!(event["firewall_rule"].get("desc").is_none());
    assert_eq!(event["device"]["type_id"], 6);
    let line = to_json_line(&record, &Product::default());
    assert!(!line.contains('\n') && !line.contains("null"));
}
