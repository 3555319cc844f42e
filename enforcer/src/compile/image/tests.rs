//! The shared decision over compiled images: real policies (the repository's `policies/` and
//! small inline ones), judged as the kernel judges them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use enforcer_common::{
    AddrValue, IdentityInfo, RuleValue, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, counter,
    decide::{Decision, Destination, PolicyView, decide, destination, fold_protocol},
    identity, protocol, reason,
};

use super::decide_flow;
use crate::{
    compile::{
        AddrPrefix, CompiledPolicy, DesiredState, PortBlock, RuleKey, compile, endpoint_ids,
        segment_members,
    },
    identity::Identities,
    policy::{Action, Mode, Policy, PortTerm, Protocol, Source, load_dir, parse_sources},
};

const UDPLITE: u8 = 136;
const SCTP: u8 = 132;

/// A policy compiled for one node, with what names its ids.
struct Case {
    policy: Policy,
    ids: Identities,
    compiled: CompiledPolicy,
}

impl Case {
    fn new(policy: Policy, node: &str) -> Self {
        let ids = Identities::build(&policy, node).expect("identities");
        let compiled = compile(&policy, &ids).expect("compiles");
        Self {
            policy,
            ids,
            compiled,
        }
    }

    /// The repository's example policy, `policies/`, as `node` compiles it.
    fn example(node: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let policy = load_dir(&dir).unwrap_or_else(|errors| panic!("policies/: {errors}"));
        Self::new(policy, node)
    }

    fn inline(text: &str, node: &str) -> Self {
        let policy = parse_sources(&[Source {
            path: "p.toml".into(),
            text: text.to_owned(),
        }])
        .unwrap_or_else(|errors| panic!("{errors}\n{text}"));
        Self::new(policy, node)
    }

    fn state(&self) -> &DesiredState {
        &self.compiled.state
    }

    fn id(&self, name: &str) -> u32 {
        self.ids
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no identity {name}"))
            .id
    }

    /// The `rule_id` of the rule called `name`.
    fn rule(&self, name: &str) -> u32 {
        let index = self
            .compiled
            .rules
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name}"));
        u32::try_from(index).expect("small")
    }

    /// The `rule_id` of a default deny by the segment called `name`.
    fn segment(&self, name: &str) -> u32 {
        let index = self
            .compiled
            .segments
            .iter()
            .position(|s| s == name)
            .unwrap_or_else(|| panic!("no segment {name}"));
        u32::try_from(index).expect("small")
    }

    /// A connection from the identity `src` to the address `dst`, a local destination being
    /// received by a socket of `owner`.
    fn flow(&self, src: &str, dst: &str, owner: Option<&str>, proto: u8, port: u16) -> Decision {
        let addr: IpAddr = dst.parse().expect("address");
        decide_flow(
            self.state(),
            self.id(src),
            addr,
            owner.map(|o| self.id(o)),
            proto,
            port,
        )
    }

    fn resolve(&self, addr: &str) -> Destination {
        let addr: IpAddr = addr.parse().expect("address");
        destination(self.state(), &super::mapped(addr))
    }

    fn allowed_by(&self, decision: Decision, rule: &str) {
        assert_eq!(
            (decision.verdict, decision.reason, decision.rule_id),
            (VERDICT_ALLOW, reason::RULE, self.rule(rule)),
            "{decision:?}"
        );
    }

    fn denied_by(&self, decision: Decision, rule: &str) {
        assert_eq!(
            (decision.verdict, decision.reason, decision.rule_id),
            (VERDICT_DENY, reason::RULE, self.rule(rule)),
            "{decision:?}"
        );
    }

    fn isolated_by(&self, decision: Decision, verdict: u8, segment: &str) {
        assert_eq!(
            (decision.verdict, decision.reason, decision.rule_id),
            (verdict, reason::DEFAULT_DENY, self.segment(segment)),
            "{decision:?}"
        );
    }
}

/// Allowed at step 5: neither end is segmented.
fn out_of_scope(decision: Decision) {
    assert_eq!(
        (decision.verdict, decision.reason, decision.rule_id),
        (VERDICT_ALLOW, reason::RULE, 0),
        "{decision:?}"
    );
    assert_eq!(decision.extra_counter, counter::COUNT);
}

#[test]
fn an_allow_rule_lets_the_flow_through() {
    let c = Case::example("app-1");
    // To a local workload: the owner of the receiving socket is the destination.
    let d = c.flow("web", "10.10.1.11", Some("api"), protocol::TCP, 8080);
    c.allowed_by(d, "web-to-api");
    assert_eq!((d.src_identity, d.dst_identity), (c.id("web"), c.id("api")));
    assert_eq!(d.extra_counter, counter::COUNT);
    // To remote identities: a node (a member of finance) and a peer chosen by an inline selector.
    let d = c.flow("api", "10.10.3.11", None, protocol::TCP, 5432);
    c.allowed_by(d, "api-to-finance");
    assert_eq!(d.dst_identity, c.id("db-1"));
    let d = c.flow("api", "198.51.100.7", None, protocol::TCP, 443);
    c.allowed_by(d, "api-to-payments");
    assert_eq!(d.dst_identity, c.id("payments-provider"));
    // Over IPv6, to the node's other address.
    c.allowed_by(
        c.flow("api", "fd00:10:3::11", None, protocol::TCP, 8443),
        "api-to-finance",
    );
}

#[test]
fn deny_beats_allow() {
    let c = Case::example("app-1");
    // `dns` allows @any -> @any on udp/53; the later deny rules take it away from finance.
    c.allowed_by(c.flow("web", "9.9.9.9", None, protocol::UDP, 53), "dns");
    c.denied_by(
        c.flow("web", "10.10.3.11", None, protocol::UDP, 53),
        "web-never-finance",
    );
    c.denied_by(
        c.flow("dev-shell", "10.10.1.11", Some("ledger"), protocol::UDP, 53),
        "dev-never-finance",
    );

    let text = r#"
[settings]
failsafe_inbound = []

[[node]]
name = "local"

[[node]]
name = "db"
addresses = ["10.0.0.2"]
labels = { segment = "finance" }

[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "web-tier"
select = { segment = "web" }

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
"#;
    // Whatever the order of the tables.
    let c = Case::inline(text, "local");
    c.allowed_by(
        c.flow("web", "10.0.0.2", None, protocol::TCP, 9049),
        "range",
    );
    c.denied_by(
        c.flow("web", "10.0.0.2", None, protocol::TCP, 9050),
        "not-9050",
    );
    c.allowed_by(
        c.flow("web", "10.0.0.2", None, protocol::TCP, 9051),
        "range",
    );
}

#[test]
fn segment_members_are_denied_by_default_with_the_segment_id() {
    let c = Case::example("app-1");
    // The source is the member: its (first) segment decides.
    let d = c.flow("web", "10.10.1.11", Some("api"), protocol::TCP, 9999);
    c.isolated_by(d, VERDICT_DENY, "web-tier");
    assert_eq!((d.src_identity, d.dst_identity), (c.id("web"), c.id("api")));
    c.isolated_by(
        c.flow("web", "1.1.1.1", None, protocol::TCP, 443),
        VERDICT_DENY,
        "web-tier",
    );
    // Only the destination is: app-1's unclaimed processes are not segmented, db-1 is finance.
    let d = c.flow("app-1", "10.10.3.11", None, protocol::TCP, 5432);
    c.isolated_by(d, VERDICT_DENY, "finance");
    // From outside, to a member.
    c.isolated_by(
        c.flow("@world", "10.10.1.11", Some("web"), protocol::TCP, 8080),
        VERDICT_DENY,
        "web-tier",
    );
}

#[test]
fn unsegmented_traffic_is_allowed() {
    let c = Case::example("app-1");
    let d = c.flow("app-1", "8.8.8.8", None, protocol::TCP, 443);
    out_of_scope(d);
    assert_eq!(d.dst_identity, identity::WORLD);
    // Peers: the longest prefix names them (10.8.4.0/24 inside 10.8.0.0/16).
    let d = c.flow("app-1", "10.8.5.7", None, protocol::TCP, 3389);
    out_of_scope(d);
    assert_eq!(d.dst_identity, c.id("corp-vpn"));
    let d = c.flow("app-1", "10.8.4.7", None, protocol::UDP, 500);
    out_of_scope(d);
    assert_eq!(d.dst_identity, c.id("vpn-admins"));
    let d = c.flow("app-1", "fd00:8::1", None, protocol::ICMPV6, 0);
    out_of_scope(d);
    assert_eq!(d.dst_identity, c.id("corp-vpn"));
    out_of_scope(c.flow("@world", "10.10.1.11", None, UDPLITE, 7));
}

const RANGES: &str = r#"
[settings]
failsafe_inbound = []

[[node]]
name = "local"

[[node]]
name = "db"
addresses = ["10.0.0.2"]
labels = { segment = "finance" }

[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "web-tier"
select = { segment = "web" }

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
"#;

#[test]
fn port_ranges_hold_at_their_boundaries() {
    let c = Case::inline(RANGES, "local");
    let to_db = |port| c.flow("web", "10.0.0.2", None, protocol::TCP, port);
    c.isolated_by(to_db(8999), VERDICT_DENY, "web-tier");
    c.allowed_by(to_db(9000), "range");
    c.allowed_by(to_db(9001), "range");
    c.allowed_by(to_db(9099), "range");
    c.allowed_by(to_db(9100), "range");
    c.isolated_by(to_db(9101), VERDICT_DENY, "web-tier");
    // Another protocol does not share the range.
    c.isolated_by(
        c.flow("web", "10.0.0.2", None, protocol::UDP, 9000),
        VERDICT_DENY,
        "web-tier",
    );

    let out = |proto, port| c.flow("web", "203.0.113.1", None, proto, port);
    c.isolated_by(out(protocol::TCP, 1023), VERDICT_DENY, "web-tier");
    c.allowed_by(out(protocol::TCP, 1024), "high");
    c.allowed_by(out(protocol::TCP, 65534), "high");
    c.allowed_by(out(protocol::TCP, u16::MAX), "high");
    c.isolated_by(out(protocol::TCP, 0), VERDICT_DENY, "web-tier");
    c.allowed_by(out(protocol::UDP, 1), "high");
    c.isolated_by(out(protocol::UDP, 0), VERDICT_DENY, "web-tier");
    c.isolated_by(out(protocol::UDP, 2), VERDICT_DENY, "web-tier");
}

#[test]
fn every_block_boundary_finds_the_block_that_covers_it() {
    // The trie's answer is the entry whose block covers the port: compare with a plain scan of
    // the compiled blocks, at both ends of every block and on either side, for every rule of the
    // example policy.
    let c = Case::example("app-1");
    let state = c.state();
    let mut triples: BTreeMap<(u32, u32, u8), Vec<(PortBlock, RuleValue)>> = BTreeMap::new();
    for (k, v) in &state.rules {
        triples
            .entry((k.src_identity, k.dst_identity, k.protocol))
            .or_default()
            .push((k.ports, *v));
    }
    for ((src, dst, proto), blocks) in triples {
        let mut probes = vec![0, u16::MAX];
        for (block, _) in &blocks {
            probes.extend([block.first, block.last()]);
            probes.extend(block.first.checked_sub(1));
            probes.extend(block.last().checked_add(1));
        }
        for port in probes {
            let mut scanned: Vec<RuleValue> = blocks
                .iter()
                .filter(|(b, _)| b.first <= port && port <= b.last())
                .map(|(_, v)| *v)
                .collect();
            assert!(scanned.len() <= 1, "compiled blocks are disjoint");
            assert_eq!(
                state.rule(src, dst, proto, port),
                scanned.pop(),
                "{src} -> {dst} {proto}/{port}"
            );
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
    // dev -> finance is denied on every port (`dev-never-finance`), but not tcp/22 to a local
    // finance workload; nor to an unsegmented node's own processes (no socket: the node).
    check(
        c.flow("dev-shell", "10.10.1.11", Some("ledger"), protocol::TCP, 22),
        c.id("ledger"),
    );
    check(
        c.flow("dev-shell", "127.0.0.1", None, protocol::TCP, 22),
        c.id("app-1"),
    );
    check(
        c.flow("@world", "fd00:10:1::11", Some("web"), protocol::TCP, 22),
        c.id("web"),
    );
    // Only tcp/22, and only to this node.
    c.denied_by(
        c.flow("dev-shell", "10.10.1.11", Some("ledger"), protocol::TCP, 23),
        "dev-never-finance",
    );
    c.denied_by(
        c.flow("dev-shell", "10.10.1.11", Some("ledger"), protocol::UDP, 22),
        "dev-never-finance",
    );
    c.denied_by(
        c.flow("dev-shell", "10.10.3.11", None, protocol::TCP, 22),
        "dev-never-finance",
    );
    // On db-1 its own address is local, and db-1 is finance.
    let on_db = Case::example("db-1");
    let d = on_db.flow("dev-shell", "10.10.3.11", None, protocol::TCP, 22);
    assert_eq!(
        (d.verdict, d.extra_counter),
        (VERDICT_ALLOW, counter::FAILSAFE)
    );
    assert_eq!(d.dst_identity, on_db.id("db-1"));
}

const AUDIT: &str = r#"
[settings]
failsafe_inbound = []
mode = "enforce"

[[node]]
name = "local"

[[node]]
name = "db"
addresses = ["10.0.0.2"]
labels = { segment = "finance" }

[[node]]
name = "mon"
addresses = ["10.0.0.3"]
labels = { segment = "monitoring" }

[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "web-tier"
select = { segment = "web" }

[[segment]]
name = "monitoring"
select = { segment = "monitoring" }

[[deny]]
name = "no-9050"
from = "web-tier"
to = "finance"
ports = ["tcp/9050"]
"#;

#[test]
fn audit_mode_from_settings_and_segments() {
    // Enforced: the rule and the default deny deny.
    let c = Case::inline(AUDIT, "local");
    let rule = |c: &Case| c.flow("web", "10.0.0.2", None, protocol::TCP, 9050);
    let default = |c: &Case| c.flow("web", "10.0.0.2", None, protocol::TCP, 9051);
    c.denied_by(rule(&c), "no-9050");
    c.isolated_by(default(&c), VERDICT_DENY, "web-tier");

    // settings.mode = "audit": both only audit, with the same rule ids.
    let c = Case::inline(
        &AUDIT.replace("mode = \"enforce\"", "mode = \"audit\""),
        "local",
    );
    let d = rule(&c);
    assert_eq!(
        (d.verdict, d.reason, d.rule_id),
        (VERDICT_AUDIT, reason::RULE, c.rule("no-9050"))
    );
    c.isolated_by(default(&c), VERDICT_AUDIT, "web-tier");
    // What is allowed stays allowed.
    out_of_scope(c.flow("local", "8.8.8.8", None, protocol::TCP, 443));

    // An explicit `enforce` segment overrides the global audit, for both ends.
    let finance = "name = \"finance\"\nselect = { segment = \"finance\" }";
    let c = Case::inline(
        &AUDIT
            .replace("mode = \"enforce\"", "mode = \"audit\"")
            .replace(finance, &format!("{finance}\nmode = \"enforce\"")),
        "local",
    );
    c.denied_by(rule(&c), "no-9050");
    c.isolated_by(default(&c), VERDICT_DENY, "web-tier");

    // A segment in audit audits every flow into or out of it, even with an enforce segment at
    // the other end, and leaves the others enforced.
    let c = Case::inline(
        &AUDIT.replace(finance, &format!("{finance}\nmode = \"audit\"")),
        "local",
    );
    let d = rule(&c);
    assert_eq!((d.verdict, d.rule_id), (VERDICT_AUDIT, c.rule("no-9050")));
    c.isolated_by(default(&c), VERDICT_AUDIT, "web-tier");
    c.isolated_by(
        c.flow("web", "10.0.0.3", None, protocol::TCP, 9100),
        VERDICT_DENY,
        "web-tier",
    );
    let web = "name = \"web-tier\"\nselect = { segment = \"web\" }";
    let c = Case::inline(
        &AUDIT
            .replace(finance, &format!("{finance}\nmode = \"audit\""))
            .replace(web, &format!("{web}\nmode = \"enforce\"")),
        "local",
    );
    c.isolated_by(default(&c), VERDICT_AUDIT, "web-tier");

    // The example's monitoring segment is in audit, finance is not.
    let c = Case::example("app-1");
    c.isolated_by(
        c.flow("node-exporter", "10.10.3.11", None, protocol::TCP, 5432),
        VERDICT_AUDIT,
        "monitoring",
    );
    c.isolated_by(
        c.flow("dev-shell", "10.10.8.5", None, protocol::TCP, 3000),
        VERDICT_AUDIT,
        "dev",
    );
    c.allowed_by(
        c.flow("node-exporter", "10.10.3.11", None, protocol::TCP, 9100),
        "monitoring-scrape",
    );
    c.isolated_by(
        c.flow("dev-shell", "8.8.8.8", None, protocol::TCP, 5432),
        VERDICT_DENY,
        "dev",
    );
    c.denied_by(
        c.flow("dev-shell", "10.10.3.11", None, protocol::TCP, 5432),
        "dev-never-finance",
    );
}

const PROTOCOLS: &str = r#"
[settings]
failsafe_inbound = []

[[node]]
name = "local"

[[node]]
name = "db"
addresses = ["10.0.0.2"]
labels = { segment = "finance" }

[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "web-tier"
select = { segment = "web" }

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
"#;

#[test]
fn icmp_ignores_the_port() {
    let c = Case::inline(PROTOCOLS, "local");
    for port in [0, 8, 2048, u16::MAX] {
        c.allowed_by(
            c.flow("web", "192.0.2.1", None, protocol::ICMP, port),
            "ping-out",
        );
        // ICMPv6 is the `icmp` term too.
        c.allowed_by(
            c.flow("web", "2001:db8::1", None, protocol::ICMPV6, port),
            "ping-out",
        );
    }
    c.isolated_by(
        c.flow("web", "192.0.2.1", None, protocol::TCP, 0),
        VERDICT_DENY,
        "web-tier",
    );
    // The image itself only holds port 0 for ICMP: the port is the caller's to drop.
    let (web, world) = (c.id("web"), identity::WORLD);
    assert!(c.state().rule(web, world, protocol::ICMP, 0).is_some());
    assert!(c.state().rule(web, world, protocol::ICMP, 8).is_none());
}

#[test]
fn udp_lite_and_other_protocols_match_only_any() {
    let c = Case::inline(PROTOCOLS, "local");
    // `tcp`, `udp` and `icmp` name those protocols only.
    c.allowed_by(
        c.flow("web", "10.0.0.2", None, protocol::UDP, 5000),
        "named",
    );
    for proto in [UDPLITE, SCTP, 0, 254, 255] {
        c.isolated_by(
            c.flow("web", "10.0.0.2", None, proto, 5000),
            VERDICT_DENY,
            "web-tier",
        );
        c.allowed_by(c.flow("web", "198.51.100.1", None, proto, 5000), "anything");
        assert_eq!(fold_protocol(proto), protocol::OTHER);
    }
    // `any` also denies them.
    let c = Case::example("app-1");
    for proto in [UDPLITE, SCTP] {
        c.denied_by(
            c.flow("dev-shell", "10.10.3.11", None, proto, 53),
            "dev-never-finance",
        );
        c.isolated_by(
            c.flow("web", "10.10.1.11", Some("api"), proto, 8080),
            VERDICT_DENY,
            "web-tier",
        );
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
        let d = c.flow("web", addr, None, protocol::TCP, 443);
        c.allowed_by(d, "to-v6");
        assert_eq!(d.dst_identity, v6);
    }
    // IPv4, written either way: @world, so the allow rule does not apply.
    for addr in ["8.8.8.8", "::ffff:8.8.8.8", "0.0.0.1", "255.255.255.255"] {
        assert_eq!(
            c.resolve(addr),
            Destination::Remote(identity::WORLD),
            "{addr}"
        );
        let d = c.flow("web", addr, None, protocol::TCP, 443);
        c.isolated_by(d, VERDICT_DENY, "web-tier");
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
        let d = c.flow("web", addr, None, protocol::TCP, 8080);
        assert_eq!(d.dst_identity, c.id("app-1"), "{addr}");
        c.isolated_by(d, VERDICT_DENY, "web-tier");
    }
    // Another node's address is that node, here; on that node, it is local and ours is not.
    assert_eq!(c.resolve("10.10.3.11"), Destination::Remote(c.id("db-1")));
    let on_db = Case::example("db-1");
    assert_eq!(on_db.resolve("10.10.3.11"), Destination::Local);
    assert_eq!(
        on_db.resolve("10.10.1.11"),
        Destination::Remote(on_db.id("app-1"))
    );
    for addr in ["127.0.0.1", "::"] {
        assert_eq!(on_db.resolve(addr), Destination::Local);
        let d = on_db.flow("web", addr, None, protocol::TCP, 8080);
        assert_eq!(d.dst_identity, on_db.id("db-1"));
        on_db.denied_by(d, "web-never-finance");
    }
    // A node that is not in the policy: its processes are @host.
    let elsewhere = Case::example("not-a-node");
    let d = elsewhere.flow("web", "127.0.0.1", None, protocol::TCP, 8080);
    assert_eq!(d.dst_identity, identity::HOST);
    assert_eq!(
        elsewhere.resolve("10.10.1.11"),
        Destination::Remote(elsewhere.id("app-1"))
    );
}

/// POLICY.md's "Decision", read straight off the parsed policy: no compiled rules, no port
/// blocks, no tries. Only which identities a segment or an endpoint names is compile's.
struct Reference<'a> {
    case: &'a Case,
    members: Vec<BTreeSet<u32>>,
    /// Each rule's sources and destinations.
    ends: Vec<(BTreeSet<u32>, BTreeSet<u32>)>,
}

impl<'a> Reference<'a> {
    fn new(case: &'a Case) -> Self {
        let members = segment_members(&case.policy, &case.ids);
        let ends = case
            .policy
            .rules
            .iter()
            .map(|rule| {
                (
                    endpoint_ids(&rule.from, &case.ids, &members),
                    endpoint_ids(&rule.to, &case.ids, &members),
                )
            })
            .collect();
        Self {
            case,
            members,
            ends,
        }
    }

    /// Verdict, reason, rule id and extra counter.
    fn decide(&self, src: u32, dst: u32, raw: u8, port: u16) -> (u8, u8, u32, u32) {
        let policy = &self.case.policy;
        let proto = fold_protocol(raw);
        let port = if proto == protocol::ICMP { 0 } else { port };
        let matches = |term: &PortTerm| match *term {
            PortTerm::Any => true,
            PortTerm::Icmp
            | PortTerm::Range {
                protocol: Protocol::Icmp,
                ..
            } => proto == protocol::ICMP,
            PortTerm::Range {
                protocol: p,
                first,
                last,
            } => {
                let number = if p == Protocol::Tcp {
                    protocol::TCP
                } else {
                    protocol::UDP
                };
                proto == number && first <= port && port <= last
            }
        };
        let segments_of = |id: u32| -> Vec<usize> {
            (0..self.members.len())
                .filter(|i| self.members[*i].contains(&id))
                .collect()
        };
        let (src_segments, dst_segments) = (segments_of(src), segments_of(dst));
        let modes: Vec<Option<Mode>> = src_segments
            .iter()
            .chain(&dst_segments)
            .map(|i| policy.segments[*i].mode)
            .collect();
        let audit = if modes.contains(&Some(Mode::Audit)) {
            true
        } else if modes.contains(&Some(Mode::Enforce)) {
            false
        } else {
            policy.settings.mode == Mode::Audit
        };
        let denied = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
        let index = |i: usize| u32::try_from(i).expect("small");

        // 1. The failsafe, inbound to a process on this node.
        let local = self.case.ids.get(dst).is_some_and(|i| i.is_local());
        if local && policy.settings.failsafe_inbound.iter().any(matches) {
            let id = index(policy.rules.len());
            return (VERDICT_ALLOW, reason::RULE, id, counter::FAILSAFE);
        }
        // 2 and 3. The first matching deny, else the first matching allow.
        for action in [Action::Deny, Action::Allow] {
            let found = policy
                .rules
                .iter()
                .zip(&self.ends)
                .position(|(rule, ends)| {
                    rule.action == action
                        && ends.0.contains(&src)
                        && ends.1.contains(&dst)
                        && rule.ports.iter().any(matches)
                });
            if let Some(i) = found {
                let verdict = if action == Action::Allow {
                    VERDICT_ALLOW
                } else {
                    denied
                };
                return (verdict, reason::RULE, index(i), counter::COUNT);
            }
        }
        // 4. Segment members are isolated.
        if let Some(segment) = src_segments.first().or(dst_segments.first()) {
            return (
                denied,
                reason::DEFAULT_DENY,
                index(*segment),
                counter::COUNT,
            );
        }
        // 5. Out of scope.
        (VERDICT_ALLOW, reason::RULE, 0, counter::COUNT)
    }
}

#[test]
fn the_image_agrees_with_the_policy_everywhere() {
    let protocols = [
        protocol::TCP,
        protocol::UDP,
        protocol::ICMP,
        protocol::ICMPV6,
        UDPLITE,
    ];
    let ports = [
        0, 1, 21, 22, 23, 53, 79, 80, 443, 5432, 8080, 8443, 9099, 9100, 9101, 65535,
    ];
    let mut audit = Case::example("app-1").policy;
    audit.settings.mode = Mode::Audit;
    let cases = ["app-1", "db-1", "jump-1", "mon-1", "not-a-node"]
        .into_iter()
        .map(Case::example)
        .chain([Case::new(audit, "db-1")]);
    let mut decisions = 0;
    for case in cases {
        let reference = Reference::new(&case);
        let state = case.state();
        let all: Vec<u32> = case.ids.iter().map(|i| i.id).collect();
        for &src in &all {
            for &dst in &all {
                for proto in protocols {
                    for port in ports {
                        let d = decide(state, &state.config, src, dst, proto, port);
                        assert_eq!(
                            (d.verdict, d.reason, d.rule_id, d.extra_counter),
                            reference.decide(src, dst, proto, port),
                            "{src} -> {dst} {proto}/{port}"
                        );
                        assert_eq!((d.src_identity, d.dst_identity), (src, dst));
                        decisions += 1;
                    }
                }
            }
        }
    }
    assert!(decisions > 10_000, "{decisions}");
}

#[test]
fn lookups_follow_the_tries_on_any_state() {
    // A hand-made state with what a compiled one never has: unaligned and duplicate prefixes,
    // and prefixes longer than the trie's key.
    let value = |rule_id| RuleValue {
        rule_id,
        verdict: VERDICT_ALLOW,
        flags: 0,
        _pad: 0,
    };
    let key = |first, prefix_len| RuleKey {
        src_identity: 300,
        dst_identity: 301,
        protocol: protocol::TCP,
        ports: PortBlock { first, prefix_len },
    };
    let addr = |identity| AddrValue { identity, flags: 0 };
    let v4 = |a, b, c, d| enforcer_common::ipv4_mapped([a, b, c, d]);
    let state = DesiredState {
        rules: BTreeMap::from([
            (key(0, 0), value(1)),
            // 9000-9001 twice (the host bit of 9001 is ignored): written second, 9001 wins.
            (key(9000, 15), value(2)),
            (key(9001, 15), value(3)),
            // Longer than the key: the kernel refuses it.
            (key(9000, 17), value(4)),
            // Another triple.
            (
                RuleKey {
                    protocol: protocol::UDP,
                    ..key(9000, 16)
                },
                value(5),
            ),
        ]),
        addr_cidr: BTreeMap::from([
            (
                AddrPrefix {
                    addr: v4(10, 1, 2, 3),
                    bits: 104,
                },
                addr(10),
            ),
            (
                AddrPrefix {
                    addr: v4(10, 1, 0, 0),
                    bits: 112,
                },
                addr(11),
            ),
            (
                AddrPrefix {
                    addr: v4(10, 1, 2, 3),
                    bits: 129,
                },
                addr(12),
            ),
        ]),
        addr_exact: BTreeMap::from([(v4(10, 1, 2, 3), addr(13))]),
        identity_info: BTreeMap::from([(300, IdentityInfo::default())]),
        ..DesiredState::default()
    };
    let rule = |port| state.rule(300, 301, protocol::TCP, port).map(|v| v.rule_id);
    assert_eq!(rule(8999), Some(1));
    assert_eq!(rule(9000), Some(3));
    assert_eq!(rule(9001), Some(3));
    assert_eq!(rule(9002), Some(1));
    assert_eq!(
        state.rule(300, 301, protocol::UDP, 9000).map(|v| v.rule_id),
        Some(5)
    );
    assert_eq!(state.rule(300, 301, protocol::UDP, 9001), None);
    assert_eq!(state.rule(301, 300, protocol::TCP, 9000), None);

    let cidr = |a, b, c, d| state.addr_cidr(&v4(a, b, c, d)).map(|v| v.identity);
    assert_eq!(cidr(10, 1, 2, 3), Some(11));
    assert_eq!(cidr(10, 1, 200, 1), Some(11));
    assert_eq!(cidr(10, 9, 9, 9), Some(10));
    assert_eq!(cidr(11, 0, 0, 0), None);
    assert_eq!(
        state.addr_exact(&v4(10, 1, 2, 3)).map(|v| v.identity),
        Some(13)
    );
    assert_eq!(state.addr_exact(&v4(10, 1, 2, 4)), None);
    // The exact entry comes first.
    assert_eq!(
        destination(&state, &v4(10, 1, 2, 3)),
        Destination::Remote(13)
    );
    assert_eq!(state.identity_info(300), Some(IdentityInfo::default()));
    assert_eq!(state.identity_info(301), None);
}
