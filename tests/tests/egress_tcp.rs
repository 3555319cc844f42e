//! TCP egress through `cgroup/connect4` and `cgroup/connect6`: the decision steps of POLICY.md
//! (deny beats allow, allow, default deny for segment members, unsegmented traffic passes) and port
//! ranges at their boundaries.

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Proto,
    events::{self, Verdict},
    require_privileges,
};

/// Two segmented workloads, one unsegmented, and the server as the peer `db` in segment `db`.
const BASE: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { app = "web", segment = "web" }

[[workload]]
name = "batch"
cgroup = "batch"
labels = { app = "batch" }

[[peer]]
name = "db"
cidrs = ["${SERVER4}/32", "${SERVER6}/128"]
labels = { segment = "db" }

[[peer]]
name = "other"
cidrs = ["${NET4}.30.0/24", "${NET6}:30::/64"]
labels = { zone = "other" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "db-seg"
select = { segment = "db" }
"#;

fn lab(rules: &str) -> Lab {
    Lab::builder()
        .workload("web")
        .workload("batch")
        .server_addr("${NET4}.30.9")
        .server_addr("${NET6}:30::9")
        .policy("main.toml", &format!("{BASE}{rules}"))
        .start()
}

#[test]
fn allowed_connect_succeeds_and_denied_fails_with_eperm_at_once() {
    if !require_privileges() {
        return;
    }
    let lab = lab(r#"
[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/5432"]
"#);
    let server = lab.server4();
    let pg = lab.listen(Proto::Tcp, server, 5432);
    let other = lab.listen(Proto::Tcp, server, 5433);

    lab.probe("web").tcp_connect(server, 5432).assert_ok();
    pg.wait_for_peers(1, EVENT_TIMEOUT);

    let denied = lab.probe("web").tcp_connect(server, 5433);
    denied.assert_denied();
    assert!(other.peers().is_empty(), "a denied SYN reached the server");
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, server, Some(5433)));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "web", "db");
    // Both ends are members; either segment's default may be the one named.
    let uid = events::str_at(&ev, "firewall_rule.uid");
    assert!(
        ["default-deny:web-seg", "default-deny:db-seg"].contains(&uid),
        "firewall_rule.uid {uid:?}"
    );
}

#[test]
fn deny_beats_allow() {
    if !require_privileges() {
        return;
    }
    let lab = lab(r#"
[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["any"]

[[deny]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/6379"]
description = "not the cache port"
"#);
    let server = lab.server4();
    let _cache = lab.listen(Proto::Tcp, server, 6379);
    let _pg = lab.listen(Proto::Tcp, server, 5432);

    lab.probe("web").tcp_connect(server, 5432).assert_ok();
    lab.probe("web").tcp_connect(server, 6379).assert_denied();
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, server, Some(6379)));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_rule(&ev, &lab.rule_uid("main.toml", "[[deny]]", 0));
}

#[test]
fn segment_members_are_denied_by_default_and_unsegmented_traffic_passes() {
    if !require_privileges() {
        return;
    }
    // No rules at all: only step 4 (default deny for members) and step 5 (out of scope) decide.
    let lab = lab("");
    let db = lab.server4();
    let other = lab.ip("${NET4}.30.9");
    let _l1 = lab.listen(Proto::Tcp, db, 80);
    let _l2 = lab.listen(Proto::Tcp, other, 80);

    // Source is a member.
    lab.probe("web").tcp_connect(other, 80).assert_denied();
    // Destination is a member.
    lab.probe("batch").tcp_connect(db, 80).assert_denied();
    // Neither end is a member.
    lab.probe("batch").tcp_connect(other, 80).assert_ok();

    let evs = lab.daemon().wait_for_events(2, EVENT_TIMEOUT);
    let from_web = evs
        .iter()
        .find(|e| events::is_to(e, other, Some(80)))
        .expect("event for web -> other");
    events::assert_names(from_web, "web", "other");
    events::assert_rule(from_web, "default-deny:web-seg");
    let to_db = evs
        .iter()
        .find(|e| events::is_to(e, db, Some(80)))
        .expect("event for batch -> db");
    events::assert_names(to_db, "batch", "db");
    events::assert_rule(to_db, "default-deny:db-seg");
}

#[test]
fn ipv6_connect_is_judged_like_ipv4() {
    if !require_privileges() {
        return;
    }
    let lab = lab(r#"
[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/443"]
"#);
    let server = lab.server6();
    let _https = lab.listen(Proto::Tcp, server, 443);
    let _alt = lab.listen(Proto::Tcp, server, 8443);

    lab.probe("web").tcp_connect(server, 443).assert_ok();
    lab.probe("web").tcp_connect(server, 8443).assert_denied();
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, server, Some(8443)));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "web", "db");
    assert_eq!(events::u64_at(&ev, "connection_info.protocol_ver_id"), 6);
    assert_eq!(events::str_at(&ev, "connection_info.protocol_name"), "tcp");
}

#[test]
fn port_range_includes_both_ends_and_nothing_beyond() {
    if !require_privileges() {
        return;
    }
    let lab = lab(r#"
[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/9000-9100"]
"#);
    let server = lab.server4();
    // Listeners on every port: a refusal can then only come from the policy, never from a closed
    // port (which would be ECONNREFUSED).
    let ports = [8999u16, 9000, 9100, 9101];
    let _listeners: Vec<_> = ports
        .iter()
        .map(|&p| lab.listen(Proto::Tcp, server, p))
        .collect();

    let results: Vec<(u16, String)> = ports
        .iter()
        .map(|&p| {
            (
                p,
                lab.probe("web").tcp_connect(server, p).result().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u16, String)> =
        [(8999, "EPERM"), (9000, "ok"), (9100, "ok"), (9101, "EPERM")]
            .iter()
            .map(|&(p, r)| (p, r.to_owned()))
            .collect();
    assert_eq!(
        results, expected,
        "verdicts at the boundaries of tcp/9000-9100"
    );

    // The same ports over UDP are outside a tcp/ range.
    lab.probe("web").udp_sendto(server, 9000).assert_denied();
}

#[test]
fn ipv6_range_boundaries() {
    if !require_privileges() {
        return;
    }
    let lab = lab(r#"
[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/1-1024"]
"#);
    let server = lab.server6();
    let _listeners: Vec<_> = [1u16, 1024, 1025]
        .iter()
        .map(|&p| lab.listen(Proto::Tcp, server, p))
        .collect();
    lab.probe("web").tcp_connect(server, 1).assert_ok();
    lab.probe("web").tcp_connect(server, 1024).assert_ok();
    lab.probe("web").tcp_connect(server, 1025).assert_denied();
}
