//! Reports for the sink and schema tests, every field of the record types set: one of each kind
//! (`denial`, `aggregated_denial`, `alert`, `rejection`) and `variations()`, which covers every
//! shape a renderer has to handle.

#![allow(
    dead_code,
    reason = "each test binary that includes this module uses part of it"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer::{
    events::{
        AlertTarget, FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowRule, FlowWorkload,
        LateralMovementAlert, Layer, NETWORK_SERVICE_DISCOVERY, PatternKind, PolicyRejection,
        Report, Verdict,
    },
    policy::{Labels, Mode},
};

/// 2023-11-14T22:13:20.123Z.
pub const EVENT_MILLIS: u64 = 1_700_000_000_123;
pub const CONTAINER_ID: &str = "4f66ad9a0b2b9a3c3e4c8b7a1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6";

pub fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

pub fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

pub fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
}

pub fn endpoint(name: &str, ip: IpAddr, port: Option<u16>) -> FlowEndpoint {
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

pub fn process() -> FlowProcess {
    FlowProcess {
        pid: 4242,
        name: "curl".to_owned(),
        cmd_line: Some("curl http://10.0.0.2:5432/".to_owned()),
        uid: 1000,
        user_name: Some("alice".to_owned()),
        executable: Some("/usr/bin/curl".to_owned()),
        parent_pid: Some(4241),
    }
}

pub fn workload() -> FlowWorkload {
    FlowWorkload {
        cgroup_path: format!("/system.slice/docker-{CONTAINER_ID}.scope"),
        systemd_unit: Some(format!("docker-{CONTAINER_ID}.scope")),
        container_id: Some(CONTAINER_ID.to_owned()),
    }
}

pub fn node() -> FlowNode {
    FlowNode {
        hostname: "app-1".to_owned(),
        is_virtual: true,
    }
}

/// An egress TCP denial over IPv4 between two segment members, by a rule, with the process and
/// its container.
pub fn denial() -> FlowRecord {
    FlowRecord {
        time: at(EVENT_MILLIS),
        verdict: Verdict::Denied,
        protocol: 6,
        ip_version: 4,
        outbound: true,
        revoked: false,
        src: endpoint("web", v4(1), Some(40000)),
        dst: endpoint("db", v4(2), Some(5432)),
        process: Some(process()),
        process_from_socket: false,
        workload: Some(workload()),
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

/// The same denial, 17 times within 4.5 s.
pub fn aggregated_denial() -> FlowRecord {
    FlowRecord {
        time: at(EVENT_MILLIS + 5_000),
        count: 17,
        span: Some((at(EVENT_MILLIS), at(EVENT_MILLIS + 4_500))),
        ..denial()
    }
}

/// A port scan of `db` from `web`, the process known.
pub fn alert() -> LateralMovementAlert {
    LateralMovementAlert {
        time: at(EVENT_MILLIS + 9_000),
        first_seen: at(EVENT_MILLIS),
        kind: PatternKind::PortScan,
        technique: NETWORK_SERVICE_DISCOVERY,
        src: endpoint("web", v4(1), Some(40000)),
        process: Some(process()),
        workload: Some(workload()),
        targets: (5430..5433)
            .map(|port| AlertTarget {
                ip: v4(2),
                port: Some(port),
                protocol: 6,
                name: "db".to_owned(),
            })
            .collect(),
        distinct_targets: 3,
        distinct_destinations: 1,
        distinct_ports: 3,
        attempts: 25,
        window: Duration::from_secs(10),
        policy_version: "abc123".to_owned(),
        outbound: true,
        ip_version: 4,
        node: node(),
    }
}

/// A sweep of port 22 over three hosts, TCP and UDP mixed, over IPv6, without a process.
pub fn sweep_alert() -> LateralMovementAlert {
    LateralMovementAlert {
        kind: PatternKind::Sweep,
        src: endpoint("web", v6(1), Some(40000)),
        process: None,
        workload: None,
        targets: (2..5)
            .map(|host| AlertTarget {
                ip: v6(host),
                port: Some(22),
                protocol: if host == 4 { 17 } else { 6 },
                name: format!("host-{host}"),
            })
            .collect(),
        distinct_destinations: 3,
        distinct_ports: 1,
        ip_version: 6,
        ..alert()
    }
}

/// A rejected reload: two errors, the last good policy stays.
pub fn rejection() -> PolicyRejection {
    PolicyRejection {
        time: at(EVENT_MILLIS + 1_000),
        node: node(),
        policy_dir: "/etc/enforcer/policy.d".to_owned(),
        origin: "SIGHUP".to_owned(),
        errors: vec![
            "web.toml:3:1: unknown field `prots`".to_owned(),
            "db.toml:9:12: port 70000 is out of range".to_owned(),
        ],
        in_force_version: Some("abc123".to_owned()),
        in_force_generation: 4,
    }
}

/// Every shape a renderer must handle, named for failure messages.
pub fn variations() -> Vec<(String, Report)> {
    let flows = [
        ("denial tcp v4 egress", denial()),
        ("aggregated denial", aggregated_denial()),
        (
            "audit",
            FlowRecord {
                verdict: Verdict::Audited,
                mode: Mode::Audit,
                ..denial()
            },
        ),
        (
            "revoked ingress at the packet layer",
            FlowRecord {
                revoked: true,
                outbound: false,
                layer: Layer::Packet,
                process_from_socket: true,
                ..denial()
            },
        ),
        (
            "udp v6 to the world, default deny, no process or workload",
            FlowRecord {
                protocol: 17,
                ip_version: 6,
                src: endpoint("web", v6(1), Some(40000)),
                dst: endpoint("@world", v6(0x99), Some(53)),
                process: None,
                workload: None,
                rule: FlowRule {
                    uid: "default-deny:web".to_owned(),
                    name: "default-deny:web".to_owned(),
                    description: None,
                },
                ..denial()
            },
        ),
        (
            "icmp v4 ingress from the world, interface layer",
            FlowRecord {
                protocol: 1,
                outbound: false,
                src: endpoint("@world", IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), None),
                dst: endpoint("@host", v4(2), None),
                process: None,
                layer: Layer::Interface,
                ..denial()
            },
        ),
        (
            "icmpv6 egress by a process with partial details, lsm layer",
            FlowRecord {
                protocol: 58,
                ip_version: 6,
                src: endpoint("web", v6(1), None),
                dst: endpoint("db", v6(2), None),
                process: Some(FlowProcess {
                    cmd_line: None,
                    user_name: None,
                    executable: None,
                    parent_pid: None,
                    ..process()
                }),
                workload: Some(FlowWorkload {
                    cgroup_path: "/user.slice".to_owned(),
                    systemd_unit: None,
                    container_id: None,
                }),
                layer: Layer::Lsm,
                ..denial()
            },
        ),
        (
            "another protocol (sctp)",
            FlowRecord {
                protocol: 132,
                src: endpoint("web", v4(1), None),
                dst: endpoint("db", v4(2), None),
                ..denial()
            },
        ),
        (
            "aggregated sweep of ports",
            FlowRecord {
                dst: endpoint("db", v4(2), None),
                swept_ports: vec![22, 80, 443],
                ..aggregated_denial()
            },
        ),
    ];
    let mut reports: Vec<(String, Report)> = flows
        .into_iter()
        .map(|(name, record)| (name.to_owned(), Report::Flow(record)))
        .collect();
    reports.push(("port-scan alert".to_owned(), Report::Alert(alert())));
    reports.push(("sweep alert v6".to_owned(), Report::Alert(sweep_alert())));
    reports.push((
        "fan-out alert".to_owned(),
        Report::Alert(LateralMovementAlert {
            kind: PatternKind::FanOut,
            distinct_destinations: 2,
            ..alert()
        }),
    ));
    reports.push(("rejection".to_owned(), Report::Rejection(rejection())));
    reports.push((
        "rejection at start".to_owned(),
        Report::Rejection(PolicyRejection {
            origin: "start".to_owned(),
            errors: vec!["cannot read /etc/enforcer/policy.d".to_owned()],
            in_force_version: None,
            in_force_generation: 0,
            ..rejection()
        }),
    ));
    reports
}
