//! The denied-flow event, field by field (POLICY.md, "Denied-flow events"); every events file is
//! also checked against the OCSF 1.1.0 schema when its daemon stops.

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use enforcer_tests::{
    CLIENT_NODE, EVENT_TIMEOUT, Lab, Proto,
    events::{self, Verdict, str_at, u64_at},
    require_privileges,
};
use serde_json::Value;

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { app = "web", segment = "web" }

[[peer]]
name = "db"
cidrs = ["${SERVER4}/32", "${SERVER6}/128"]
labels = { app = "postgres", segment = "db" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "db-seg"
select = { segment = "db" }

[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/5000-5500"]
description = "web reads the database"

[[deny]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/5400"]
description = "no admin port from web"
"#;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("milliseconds fit u64")
}

fn ip_at(ev: &Value, path: &str) -> IpAddr {
    str_at(ev, path)
        .parse()
        .unwrap_or_else(|e| panic!("{path} is not an IP address ({e}): {ev:#}"))
}

#[test]
fn denial_event_carries_every_contract_field() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .start();
    let db = lab.server4();
    let _allowed = lab.listen(Proto::Tcp, db, 5432);
    let _admin = lab.listen(Proto::Tcp, db, 5400);

    let before = now_ms();
    // Allowed connections are not reported: the allowed attempt comes first, so by the time the
    // denial's event is written an event for it would be there too.
    lab.probe("web").tcp_connect(db, 5432).assert_ok();
    let denied = lab.probe("web").tcp_connect(db, 5400);
    denied.assert_denied();
    let ev = lab.daemon().wait_for_events(1, EVENT_TIMEOUT).remove(0);
    let after = now_ms();
    let all = lab.daemon().events();
    assert_eq!(all.len(), 1, "only the denial is reported: {all:#?}");

    events::assert_verdict(&ev, Verdict::Denied);
    let time = u64_at(&ev, "time");
    assert!(
        (before..=after + 1000).contains(&time),
        "time {time} is not milliseconds within the attempt ({before}..{after})"
    );
    // Both ends are segment members and they are different segments.
    assert_eq!(
        u64_at(&ev, "severity_id"),
        3,
        "severity of an inter-segment denial"
    );
    assert_eq!(u64_at(&ev, "count"), 1);

    assert_eq!(str_at(&ev, "connection_info.protocol_name"), "tcp");
    assert_eq!(u64_at(&ev, "connection_info.protocol_num"), 6);
    assert_eq!(u64_at(&ev, "connection_info.protocol_ver_id"), 4);
    assert_eq!(
        u64_at(&ev, "connection_info.direction_id"),
        3,
        "neither end is @world: lateral"
    );

    events::assert_names(&ev, "web", "db");
    assert_eq!(ip_at(&ev, "dst_endpoint.ip"), db);
    assert_eq!(u64_at(&ev, "dst_endpoint.port"), 5400);
    // The source address is not chosen yet when connect() is judged; whatever is reported must be
    // an IPv4 address (the client's, or unspecified) and a port number.
    let src = ip_at(&ev, "src_endpoint.ip");
    assert!(
        src == lab.client4() || src.is_unspecified(),
        "src_endpoint.ip {src} is neither the client's address nor unspecified"
    );
    assert!(u64_at(&ev, "src_endpoint.port") <= 65535);

    assert_eq!(u64_at(&ev, "actor.process.pid"), u64::from(denied.pid));
    assert_eq!(str_at(&ev, "actor.process.name"), "enforcer-probe");
    // OCSF types user.uid as a string.
    assert_eq!(str_at(&ev, "actor.process.user.uid"), "0");
    if let Some(cmd) = events::try_field(&ev, "actor.process.cmd_line") {
        let cmd = cmd.as_str().expect("cmd_line is a string");
        assert!(
            cmd.contains("enforcer-probe") && cmd.contains("5400"),
            "cmd_line {cmd:?}"
        );
    }

    assert_eq!(str_at(&ev, "device.hostname"), CLIENT_NODE);
    let device_type = u64_at(&ev, "device.type_id");
    assert!(
        [1, 6].contains(&device_type),
        "device.type_id {device_type}"
    );

    assert_eq!(str_at(&ev, "metadata.version"), "1.1.0");
    assert!(!str_at(&ev, "metadata.product.name").is_empty());
    assert!(!str_at(&ev, "metadata.product.vendor_name").is_empty());
    assert!(!str_at(&ev, "metadata.product.version").is_empty());
    let profiles: Vec<&str> = events::field(&ev, "metadata.profiles")
        .as_array()
        .expect("profiles is an array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for p in ["security_control", "host"] {
        assert!(
            profiles.contains(&p),
            "metadata.profiles {profiles:?} lacks {p}"
        );
    }

    events::assert_rule(&ev, &lab.rule_uid("main.toml", "[[deny]]", 0));
    assert_eq!(str_at(&ev, "firewall_rule.desc"), "no admin port from web");
    assert!(!str_at(&ev, "firewall_rule.name").is_empty());
    assert!(!str_at(&ev, "firewall_rule.version").is_empty());

    assert_eq!(str_at(&ev, "unmapped.src_labels.segment"), "web");
    assert_eq!(str_at(&ev, "unmapped.src_labels.app"), "web");
    assert_eq!(str_at(&ev, "unmapped.dst_labels.segment"), "db");
    assert_eq!(str_at(&ev, "unmapped.dst_labels.app"), "postgres");
    assert_eq!(str_at(&ev, "unmapped.mode"), "enforce");
}

#[test]
fn default_deny_event_names_the_segment_and_world_is_outbound() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .server_addr("${WORLD6}")
        .policy("main.toml", POLICY)
        .start();
    let world = lab.ip("${WORLD6}");
    let _l = lab.listen(Proto::Tcp, world, 443);
    let denied = lab.probe("web").tcp_connect(world, 443);
    denied.assert_denied();
    let ev = lab.daemon().wait_for_events(1, EVENT_TIMEOUT).remove(0);
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_rule(&ev, "default-deny:web-seg");
    events::assert_names(&ev, "web", "@world");
    assert_eq!(ip_at(&ev, "dst_endpoint.ip"), world);
    assert_eq!(u64_at(&ev, "connection_info.protocol_ver_id"), 6);
    assert_eq!(
        u64_at(&ev, "connection_info.direction_id"),
        2,
        "to @world from here: outbound"
    );
    assert_eq!(u64_at(&ev, "actor.process.pid"), u64::from(denied.pid));
    assert!(!str_at(&ev, "firewall_rule.version").is_empty());
    let dst_labels = events::field(&ev, "unmapped.dst_labels");
    assert!(
        dst_labels
            .as_object()
            .is_some_and(serde_json::Map::is_empty),
        "@world has no labels: {dst_labels}"
    );
}

#[test]
fn every_attempt_is_reported() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .start();
    let db = lab.server4();
    let _l = lab.listen(Proto::Tcp, db, 5400);
    let pids: Vec<u32> = (0..3)
        .map(|_| {
            let outcome = lab.probe("web").tcp_connect(db, 5400);
            outcome.assert_denied();
            outcome.pid
        })
        .collect();
    // Aggregation may fold identical attempts into one event with a count (and hold it for a
    // while before writing); none may be lost.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let evs = lab.daemon().events();
        let counted: u64 = evs.iter().map(|e| u64_at(e, "count")).sum();
        if counted >= 3 {
            assert_eq!(counted, 3, "more attempts reported than made: {evs:#?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "3 attempts by {pids:?}, reported {counted}: {evs:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
