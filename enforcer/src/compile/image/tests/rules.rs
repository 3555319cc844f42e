//! Single flows, each decided by the step of POLICY.md's "Decision" that should decide it.

use enforcer_common::{
    VERDICT_ALLOW, VERDICT_AUDIT, counter,
    decide::{Decision, Destination, PolicyView, fold_protocol},
    identity, protocol, reason,
};

use super::{Case, SCTP, UDPLITE, finance_and_web, out_of_scope};

#[test]
fn an_allow_rule_lets_the_flow_through() {
    let c = Case::example("app-1");
    // To a local workload: the owner of the receiving socket is the destination.
    let d = c.flow("web", "10.10.1.11", Some("api"), protocol::TCP, 8080);
    c.allowed_by(d, "web-to-api");
    assert_eq!((d.src_identity, d.dst_identity), (c.id("web"), c.id("api")));
    assert_eq!(d.extra_counter, counter::COUNT);
    // To remote identities: a node (a member of finance) and a peer chosen by an inline selector.
    let d = c.to("api", "10.10.3.11", protocol::TCP, 5432);
    c.allowed_by(d, "api-to-finance");
    assert_eq!(d.dst_identity, c.id("db-1"));
    let d = c.to("api", "198.51.100.7", protocol::TCP, 443);
    c.allowed_by(d, "api-to-payments");
    assert_eq!(d.dst_identity, c.id("payments-provider"));
    // Over IPv6, to the node's other address.
    let d = c.to("api", "fd00:10:3::11", protocol::TCP, 8443);
    c.allowed_by(d, "api-to-finance");
}

#[test]
fn deny_beats_allow() {
    let c = Case::example("app-1");
    // `dns` allows @any -> @any on udp/53; the later deny rules take it away from finance.
    c.allowed_by(c.to("web", "9.9.9.9", protocol::UDP, 53), "dns");
    c.denied_by(
        c.to("web", "10.10.3.11", protocol::UDP, 53),
        "web-never-finance",
    );
    let d = c.flow("dev-shell", "10.10.1.11", Some("ledger"), protocol::UDP, 53);
    c.denied_by(d, "dev-never-finance");

    let text = concat!(
        finance_and_web!(""),
        r#"
[[deny]]
name = "not-9050"
from = "web-tier"
to = "finance"
ports = ["tcp/9050"]

[[allow]]
name = "range"
from = "web-tier"
to = "finance"
ports = ["tcp/9000-9100"]
"#
    );
    // Whatever the order of the tables.
    let c = Case::inline(text, "local");
    let to_db = |port| c.to("web", "10.0.0.2", protocol::TCP, port);
    c.allowed_by(to_db(9049), "range");
    c.denied_by(to_db(9050), "not-9050");
    c.allowed_by(to_db(9051), "range");
}

#[test]
fn segment_members_are_denied_by_default_with_the_segment_id() {
    let c = Case::example("app-1");
    // The source is the member: its (first) segment decides.
    let d = c.flow("web", "10.10.1.11", Some("api"), protocol::TCP, 9999);
    c.isolated(d, "web-tier");
    assert_eq!((d.src_identity, d.dst_identity), (c.id("web"), c.id("api")));
    c.isolated(c.to("web", "1.1.1.1", protocol::TCP, 443), "web-tier");
    // Only the destination is: app-1's unclaimed processes are not segmented, db-1 is finance.
    c.isolated(c.to("app-1", "10.10.3.11", protocol::TCP, 5432), "finance");
    // From outside, to a member.
    let d = c.flow("@world", "10.10.1.11", Some("web"), protocol::TCP, 8080);
    c.isolated(d, "web-tier");
}

#[test]
fn unsegmented_traffic_is_allowed() {
    let c = Case::example("app-1");
    // Peers: the longest prefix names them (10.8.4.0/24 inside 10.8.0.0/16).
    for (addr, proto, port, dst) in [
        ("8.8.8.8", protocol::TCP, 443, identity::WORLD),
        ("10.8.5.7", protocol::TCP, 3389, c.id("corp-vpn")),
        ("10.8.4.7", protocol::UDP, 500, c.id("vpn-admins")),
        ("fd00:8::1", protocol::ICMPV6, 0, c.id("corp-vpn")),
    ] {
        let d = c.to("app-1", addr, proto, port);
        out_of_scope(d);
        assert_eq!(d.dst_identity, dst, "{addr}");
    }
    out_of_scope(c.to("@world", "10.10.1.11", UDPLITE, 7));
}

const RANGES: &str = concat!(
    finance_and_web!(""),
    r#"
[[allow]]
name = "range"
from = "web-tier"
to = "finance"
ports = ["tcp/9000-9100"]

[[allow]]
name = "high"
from = "web-tier"
to = "@world"
ports = ["tcp/1024-65535", "udp/1"]
"#
);

#[test]
fn port_ranges_hold_at_their_boundaries() {
    let c = Case::inline(RANGES, "local");
    let to_db = |proto, port| c.to("web", "10.0.0.2", proto, port);
    let out = |proto, port| c.to("web", "203.0.113.1", proto, port);
    // Another protocol does not share the range.
    for (d, allowed) in [
        (to_db(protocol::TCP, 8999), None),
        (to_db(protocol::TCP, 9000), Some("range")),
        (to_db(protocol::TCP, 9001), Some("range")),
        (to_db(protocol::TCP, 9099), Some("range")),
        (to_db(protocol::TCP, 9100), Some("range")),
        (to_db(protocol::TCP, 9101), None),
        (to_db(protocol::UDP, 9000), None),
        (out(protocol::TCP, 1023), None),
        (out(protocol::TCP, 1024), Some("high")),
        (out(protocol::TCP, 65534), Some("high")),
        (out(protocol::TCP, u16::MAX), Some("high")),
        (out(protocol::TCP, 0), None),
        (out(protocol::UDP, 1), Some("high")),
        (out(protocol::UDP, 0), None),
        (out(protocol::UDP, 2), None),
    ] {
        match allowed {
            Some(rule) => c.allowed_by(d, rule),
            None => c.isolated(d, "web-tier"),
        }
    }
}

#[test]
fn failsafe_ssh_reaches_local_identities() {
    let c = Case::example("app-1");
    let failsafe = c
        .compiled
        .rules
        .iter()
        .position(|r| r.uid == "settings:failsafe_inbound")
        .and_then(|i| u32::try_from(i).ok());
    let check = |d: Decision, dst: u32| {
        assert_eq!(
            (d.verdict, d.reason, Some(d.rule_id), d.extra_counter),
            (VERDICT_ALLOW, reason::RULE, failsafe, counter::FAILSAFE),
            "{d:?}"
        );
        assert_eq!(d.dst_identity, dst);
    };
    let dev_to = |addr, owner, proto, port| c.flow("dev-shell", addr, owner, proto, port);
    // dev -> finance is denied on every port (`dev-never-finance`), but not tcp/22 to a local
    // finance workload; nor to an unsegmented node's own processes (no socket: the node).
    let ledger = Some("ledger");
    check(
        dev_to("10.10.1.11", ledger, protocol::TCP, 22),
        c.id("ledger"),
    );
    check(dev_to("127.0.0.1", None, protocol::TCP, 22), c.id("app-1"));
    let d = c.flow("@world", "fd00:10:1::11", Some("web"), protocol::TCP, 22);
    check(d, c.id("web"));
    // Only tcp/22, and only to this node.
    for d in [
        dev_to("10.10.1.11", ledger, protocol::TCP, 23),
        dev_to("10.10.1.11", ledger, protocol::UDP, 22),
        dev_to("10.10.3.11", None, protocol::TCP, 22),
    ] {
        c.denied_by(d, "dev-never-finance");
    }
    // On db-1 its own address is local, and db-1 is finance.
    let on_db = Case::example("db-1");
    let d = on_db.to("dev-shell", "10.10.3.11", protocol::TCP, 22);
    assert_eq!(
        (d.verdict, d.extra_counter),
        (VERDICT_ALLOW, counter::FAILSAFE)
    );
    assert_eq!(d.dst_identity, on_db.id("db-1"));
}

const AUDIT: &str = concat!(
    finance_and_web!("mode = \"enforce\"\n"),
    r#"
[[node]]
name = "mon"
addresses = ["10.0.0.3"]
labels = { segment = "monitoring" }

[[segment]]
name = "monitoring"
select = { segment = "monitoring" }

[[deny]]
name = "no-9050"
from = "web-tier"
to = "finance"
ports = ["tcp/9050"]
"#
);

/// [`AUDIT`] with `settings.mode` and the modes of the segments `finance` and `web-tier`.
fn audit_policy(settings: &str, finance: Option<&str>, web: Option<&str>) -> Case {
    let mut text = AUDIT.replace("mode = \"enforce\"", &format!("mode = \"{settings}\""));
    for (segment, mode) in [
        (
            "name = \"finance\"\nselect = { segment = \"finance\" }",
            finance,
        ),
        ("name = \"web-tier\"\nselect = { segment = \"web\" }", web),
    ] {
        if let Some(mode) = mode {
            text = text.replace(segment, &format!("{segment}\nmode = \"{mode}\""));
        }
    }
    Case::inline(&text, "local")
}

#[test]
fn audit_mode_from_settings_and_segments() {
    let rule = |c: &Case| c.to("web", "10.0.0.2", protocol::TCP, 9050);
    let default = |c: &Case| c.to("web", "10.0.0.2", protocol::TCP, 9051);
    // Enforced: the rule and the default deny deny.
    let c = audit_policy("enforce", None, None);
    c.denied_by(rule(&c), "no-9050");
    c.isolated(default(&c), "web-tier");

    // settings.mode = "audit": both only audit, with the same rule ids.
    let c = audit_policy("audit", None, None);
    let d = rule(&c);
    assert_eq!(
        (d.verdict, d.reason, d.rule_id),
        (VERDICT_AUDIT, reason::RULE, c.rule("no-9050"))
    );
    c.isolated_by(default(&c), VERDICT_AUDIT, "web-tier");
    // What is allowed stays allowed.
    out_of_scope(c.to("local", "8.8.8.8", protocol::TCP, 443));

    // An explicit `enforce` segment overrides the global audit, for both ends.
    let c = audit_policy("audit", Some("enforce"), None);
    c.denied_by(rule(&c), "no-9050");
    c.isolated(default(&c), "web-tier");

    // A segment in audit audits every flow into or out of it, even with an enforce segment at
    // the other end, and leaves the others enforced.
    let c = audit_policy("enforce", Some("audit"), None);
    let d = rule(&c);
    assert_eq!((d.verdict, d.rule_id), (VERDICT_AUDIT, c.rule("no-9050")));
    c.isolated_by(default(&c), VERDICT_AUDIT, "web-tier");
    c.isolated(c.to("web", "10.0.0.3", protocol::TCP, 9100), "web-tier");
    let c = audit_policy("enforce", Some("audit"), Some("enforce"));
    c.isolated_by(default(&c), VERDICT_AUDIT, "web-tier");

    // The example's monitoring segment is in audit, finance is not.
    let c = Case::example("app-1");
    let d = c.to("node-exporter", "10.10.3.11", protocol::TCP, 5432);
    c.isolated_by(d, VERDICT_AUDIT, "monitoring");
    let d = c.to("dev-shell", "10.10.8.5", protocol::TCP, 3000);
    c.isolated_by(d, VERDICT_AUDIT, "dev");
    let d = c.to("node-exporter", "10.10.3.11", protocol::TCP, 9100);
    c.allowed_by(d, "monitoring-scrape");
    c.isolated(c.to("dev-shell", "8.8.8.8", protocol::TCP, 5432), "dev");
    let d = c.to("dev-shell", "10.10.3.11", protocol::TCP, 5432);
    c.denied_by(d, "dev-never-finance");
}

const PROTOCOLS: &str = concat!(
    finance_and_web!(""),
    r#"
[[allow]]
name = "named"
from = "web-tier"
to = "finance"
ports = ["tcp", "udp", "icmp"]

[[allow]]
name = "ping-out"
from = "web-tier"
to = "@world"
ports = ["icmp"]

[[peer]]
name = "far"
cidrs = ["198.51.100.0/24"]
labels = { zone = "far" }

[[allow]]
name = "anything"
from = "web-tier"
to = { zone = "far" }
ports = ["any"]
"#
);

#[test]
fn icmp_ignores_the_port() {
    let c = Case::inline(PROTOCOLS, "local");
    for port in [0, 8, 2048, u16::MAX] {
        c.allowed_by(c.to("web", "192.0.2.1", protocol::ICMP, port), "ping-out");
        // ICMPv6 is the `icmp` term too.
        let d = c.to("web", "2001:db8::1", protocol::ICMPV6, port);
        c.allowed_by(d, "ping-out");
    }
    c.isolated(c.to("web", "192.0.2.1", protocol::TCP, 0), "web-tier");
    // The image itself only holds port 0 for ICMP: the port is the caller's to drop.
    let (web, world) = (c.id("web"), identity::WORLD);
    assert!(c.state().rule(web, world, protocol::ICMP, 0).is_some());
    assert!(c.state().rule(web, world, protocol::ICMP, 8).is_none());
}

#[test]
fn udp_lite_and_other_protocols_match_only_any() {
    let c = Case::inline(PROTOCOLS, "local");
    // `tcp`, `udp` and `icmp` name those protocols only.
    c.allowed_by(c.to("web", "10.0.0.2", protocol::UDP, 5000), "named");
    for proto in [UDPLITE, SCTP, 0, 254, 255] {
        c.isolated(c.to("web", "10.0.0.2", proto, 5000), "web-tier");
        c.allowed_by(c.to("web", "198.51.100.1", proto, 5000), "anything");
        assert_eq!(fold_protocol(proto), protocol::OTHER);
    }
    // `any` also denies them.
    let c = Case::example("app-1");
    for proto in [UDPLITE, SCTP] {
        let d = c.to("dev-shell", "10.10.3.11", proto, 53);
        c.denied_by(d, "dev-never-finance");
        let d = c.flow("web", "10.10.1.11", Some("api"), proto, 8080);
        c.isolated(d, "web-tier");
    }
}

const V6_ALL: &str = r#"
[settings]
failsafe_inbound = []

[[node]]
name = "local"

[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-tier"
select = { segment = "web" }

[[peer]]
name = "v6-all"
cidrs = ["::/0"]
labels = { zone = "v6" }

[[allow]]
name = "to-v6"
from = "web-tier"
to = { zone = "v6" }
ports = ["tcp/443"]
"#;

#[test]
fn an_ipv6_default_route_peer_does_not_claim_ipv4() {
    let c = Case::inline(V6_ALL, "local");
    let v6 = c.id("v6-all");
    for addr in ["2001:db8::1", "::fffe:0:1", "::1:ffff:0:1", "fe80::1"] {
        assert_eq!(c.resolve(addr), Destination::Remote(v6), "{addr}");
        let d = c.to("web", addr, protocol::TCP, 443);
        c.allowed_by(d, "to-v6");
        assert_eq!(d.dst_identity, v6);
    }
    // IPv4, written either way: @world, so the allow rule does not apply.
    for addr in ["8.8.8.8", "::ffff:8.8.8.8", "0.0.0.1", "255.255.255.255"] {
        let world = Destination::Remote(identity::WORLD);
        assert_eq!(c.resolve(addr), world, "{addr}");
        let d = c.to("web", addr, protocol::TCP, 443);
        c.isolated(d, "web-tier");
        assert_eq!(d.dst_identity, identity::WORLD);
    }
}

#[test]
fn loopback_and_own_addresses_resolve_local() {
    let c = Case::example("app-1");
    for addr in [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "0.0.0.0",
        "::",
        "::ffff:127.0.0.1",
        "10.10.1.11",
        "fd00:10:1::11",
    ] {
        assert_eq!(c.resolve(addr), Destination::Local, "{addr}");
        // The receiving socket's owner, else the node itself.
        let d = c.flow("web", addr, Some("api"), protocol::TCP, 8080);
        c.allowed_by(d, "web-to-api");
        assert_eq!(d.dst_identity, c.id("api"), "{addr}");
        let d = c.to("web", addr, protocol::TCP, 8080);
        assert_eq!(d.dst_identity, c.id("app-1"), "{addr}");
        c.isolated(d, "web-tier");
    }
    // Another node's address is that node, here; on that node, it is local and ours is not.
    assert_eq!(c.resolve("10.10.3.11"), Destination::Remote(c.id("db-1")));
    let on_db = Case::example("db-1");
    assert_eq!(on_db.resolve("10.10.3.11"), Destination::Local);
    let app = Destination::Remote(on_db.id("app-1"));
    assert_eq!(on_db.resolve("10.10.1.11"), app);
    for addr in ["127.0.0.1", "::"] {
        assert_eq!(on_db.resolve(addr), Destination::Local);
        let d = on_db.to("web", addr, protocol::TCP, 8080);
        assert_eq!(d.dst_identity, on_db.id("db-1"));
        on_db.denied_by(d, "web-never-finance");
    }
    // A node that is not in the policy: its processes are @host.
    let elsewhere = Case::example("not-a-node");
    let d = elsewhere.to("web", "127.0.0.1", protocol::TCP, 8080);
    assert_eq!(d.dst_identity, identity::HOST);
    let app = Destination::Remote(elsewhere.id("app-1"));
    assert_eq!(elsewhere.resolve("10.10.1.11"), app);
}
