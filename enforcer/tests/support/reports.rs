// One of each report, every field of the record types set, for the sink tests: included (with
// `include!`) by the crate's unit tests and by the integration tests, each of which brings
// `FlowRecord`, `LateralMovementAlert`, … and `Labels`, `Mode` into scope first.

/// 2024-05-06T07:08:09.123Z: a fixed time, with milliseconds, so rendered timestamps are known.
pub fn fixed_time() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_714_979_289_123)
}

pub fn node() -> FlowNode {
    FlowNode {
        hostname: "app-1".to_owned(),
        is_virtual: true,
    }
}

pub fn endpoint(name: &str, last: u8, port: Option<u16>) -> FlowEndpoint {
    let entity = name.starts_with('@');
    FlowEndpoint {
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, last)),
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

pub fn process() -> FlowProcess {
    FlowProcess {
        pid: 4242,
        name: "curl".to_owned(),
        cmd_line: Some("curl -s http://10.0.0.2:5432/".to_owned()),
        uid: 1000,
        user_name: Some("alice".to_owned()),
        executable: Some("/usr/bin/curl".to_owned()),
        parent_pid: Some(4200),
    }
}

pub fn workload() -> FlowWorkload {
    FlowWorkload {
        cgroup_path: "/system.slice/web.service".to_owned(),
        systemd_unit: Some("web.service".to_owned()),
        container_id: None,
    }
}

/// A single TCP denial between two segment members, by a rule whose name and description hold
/// every character the syslog and CEF encodings must escape.
pub fn flow_denial() -> FlowRecord {
    FlowRecord {
        time: fixed_time(),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        revoked: false,
        src: endpoint("web", 1, Some(40000)),
        dst: endpoint("db", 2, Some(5432)),
        process: Some(process()),
        process_from_socket: false,
        workload: Some(workload()),
        layer: Layer::Socket,
        rule: FlowRule {
            uid: "rules/20-finance.toml:31".to_owned(),
            name: r#"web-never-"finance" [v2] \ a|b=c"#.to_owned(),
            description: Some(
                "the web tier never talks to the database\nsee ticket=42 | ops".to_owned(),
            ),
        },
        policy_version: "40103edb9c3cae46".to_owned(),
        mode: Mode::Enforce,
        node: node(),
        count: 1,
        span: None,
        swept_ports: Vec::new(),
    }
}

/// Seventeen attempts aggregated into one record: a port sweep of `db` over UDP, at the packet
/// layer, inbound from a world address, decided by default-deny in audit mode.
pub fn aggregated_flow() -> FlowRecord {
    FlowRecord {
        verdict: Verdict::Audited,
        protocol: 17,
        outbound: false,
        revoked: true,
        src: endpoint("@world", 99, Some(53000)),
        dst: endpoint("db", 2, None),
        process: None,
        process_from_socket: true,
        workload: None,
        layer: Layer::Packet,
        rule: FlowRule {
            uid: "default-deny:db".to_owned(),
            name: "default-deny:db".to_owned(),
            description: None,
        },
        mode: Mode::Audit,
        count: 17,
        span: Some((
            fixed_time() - std::time::Duration::from_secs(10),
            fixed_time(),
        )),
        swept_ports: vec![22, 80, 443],
        ..flow_denial()
    }
}

pub fn alert() -> LateralMovementAlert {
    LateralMovementAlert {
        time: fixed_time(),
        first_seen: fixed_time() - std::time::Duration::from_secs(20),
        kind: PatternKind::PortScan,
        technique: NETWORK_SERVICE_DISCOVERY,
        src: endpoint("web", 1, Some(40000)),
        process: Some(process()),
        workload: Some(workload()),
        targets: vec![
            AlertTarget {
                ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
                port: Some(22),
                protocol: 6,
                name: "db".to_owned(),
            },
            AlertTarget {
                ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
                port: Some(23),
                protocol: 6,
                name: "db".to_owned(),
            },
        ],
        distinct_targets: 12,
        distinct_destinations: 1,
        distinct_ports: 12,
        attempts: 30,
        window: std::time::Duration::from_secs(60),
        policy_version: "40103edb9c3cae46".to_owned(),
        outbound: true,
        ip_version: 4,
        node: node(),
    }
}

pub fn rejection() -> PolicyRejection {
    PolicyRejection {
        time: fixed_time(),
        node: node(),
        policy_dir: "/etc/enforcer/policy".to_owned(),
        origin: "directory".to_owned(),
        errors: vec![
            "rules/20-finance.toml:31:1: unknown key `prots` in [[deny]]".to_owned(),
            "nodes.toml:4:13: invalid address".to_owned(),
        ],
        in_force_version: Some("40103edb9c3cae46".to_owned()),
        in_force_generation: 3,
    }
}

/// The four reports the sink tests send, in order.
pub fn all_reports() -> Vec<Report> {
    vec![
        Report::Flow(flow_denial()),
        Report::Flow(aggregated_flow()),
        Report::Alert(alert()),
        Report::Rejection(rejection()),
    ]
}
