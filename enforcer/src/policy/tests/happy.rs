//! Valid policies: every table, every value form, and how files merge.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selector(terms: &[(&str, &[&str])]) -> Selector {
    Selector(
        terms
            .iter()
            .map(|(k, vs)| {
                (
                    (*k).to_owned(),
                    vs.iter().map(|v| (*v).to_owned()).collect(),
                )
            })
            .collect::<BTreeMap<_, _>>(),
    )
}

fn loc(file: &str, line: u32, column: u32) -> Location {
    Location {
        file: file.into(),
        line,
        column,
    }
}

#[test]
fn settings_default_when_absent() {
    let policy = parse_ok("");
    assert_eq!(policy.settings, Settings::default());
    assert_eq!(policy.settings.mode, Mode::Enforce);
    assert_eq!(policy.settings.failsafe_inbound, [tcp(22, 22)]);
    assert_eq!(policy.settings.location, None);
}

#[test]
fn settings_keys_are_each_optional() {
    let policy = parse_ok("[settings]\nmode = \"audit\"\n");
    assert_eq!(policy.settings.mode, Mode::Audit);
    assert_eq!(policy.settings.failsafe_inbound, [tcp(22, 22)]);
    assert_eq!(policy.settings.location, Some(loc("p.toml", 1, 1)));

    let policy = parse_ok("\n[settings]\nfailsafe_inbound = []\n");
    assert_eq!(policy.settings.mode, Mode::Enforce);
    assert!(
        policy.settings.failsafe_inbound.is_empty(),
        "[] turns it off"
    );

    let policy =
        parse_ok("[settings]\nfailsafe_inbound = [\"tcp/22\", \"tcp/2222-2223\", \"icmp\"]");
    assert_eq!(
        policy.settings.failsafe_inbound,
        [tcp(22, 22), tcp(2222, 2223), PortTerm::Icmp]
    );
}

#[test]
fn node_table() {
    let policy = parse_ok(
        r#"
[[node]]
name = "db-1"
addresses = ["10.0.3.11", "fd00:3::11"]
labels = { role = "db", env = "prod" }

[[node]]
name = "bare"
"#,
    );
    let addresses: Vec<IpAddr> = vec!["10.0.3.11".parse().unwrap(), "fd00:3::11".parse().unwrap()];
    assert_eq!(
        policy.nodes,
        [
            Node {
                name: "db-1".into(),
                addresses,
                labels: labels(&[("role", "db"), ("env", "prod")]),
                location: loc("p.toml", 2, 1),
            },
            Node {
                name: "bare".into(),
                addresses: vec![],
                labels: Labels::new(),
                location: loc("p.toml", 7, 1),
            },
        ]
    );
}

#[test]
fn workload_table_and_glob_matching() {
    let policy = parse_ok(
        r#"
[[node]]
name = "db-1"

[[workload]]
name = "ledger"
cgroup = "system.slice/ledger.service"
labels = { app = "ledger", segment = "finance" }
nodes = ["db-1"]

[[workload]]
name = "units"
cgroup = "system.slice/*.service"

[[workload]]
name = "sessions"
cgroup = "user.slice/**"
"#,
    );
    let [ledger, units, sessions] = &policy.workloads[..] else {
        panic!("three workloads: {:?}", policy.workloads)
    };
    assert_eq!(
        *ledger,
        Workload {
            name: "ledger".into(),
            cgroup: "system.slice/ledger.service".into(),
            labels: labels(&[("app", "ledger"), ("segment", "finance")]),
            nodes: Some(vec!["db-1".into()]),
            location: loc("p.toml", 5, 1),
        }
    );
    assert_eq!(units.nodes, None, "no `nodes`: every node");
    assert!(units.labels.is_empty());

    let units = units.cgroup_matcher().unwrap();
    assert!(units.is_match("system.slice/nginx.service"));
    assert!(
        !units.is_match("system.slice/a/b.service"),
        "`*` stays in one segment"
    );
    let sessions = sessions.cgroup_matcher().unwrap();
    assert!(
        sessions.is_match("user.slice/user-1000.slice/session-3.scope"),
        "`**` crosses"
    );
    assert!(!sessions.is_match("system.slice/x.service"));
}

#[test]
fn peer_table() {
    let policy = parse_ok(
        r#"
[[peer]]
name = "corp-vpn"
cidrs = ["10.8.0.0/16", "fd00:8::/48", "192.0.2.7", "2001:db8::7"]
labels = { zone = "vpn" }
"#,
    );
    let cidrs: Vec<IpNet> = [
        "10.8.0.0/16",
        "fd00:8::/48",
        "192.0.2.7/32",
        "2001:db8::7/128",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect();
    assert_eq!(
        policy.peers,
        [Peer {
            name: "corp-vpn".into(),
            cidrs,
            labels: labels(&[("zone", "vpn")]),
            location: loc("p.toml", 2, 1),
        }]
    );
}

#[test]
fn ipv6_prefixes_around_the_mapped_block_are_kept_as_written() {
    // Compile keeps them out of IPv4 space; the parser takes them as they are. `::/96` is the old
    // IPv4-compatible block, not the mapped one.
    let policy = parse_ok(
        "[[peer]]\nname = \"v6\"\ncidrs = [\"::/0\", \"::/8\", \"::fffe:0:0/95\", \"::/96\", \"::1:0:0:0/96\"]\n",
    );
    let written: Vec<String> = policy.peers[0]
        .cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        written,
        ["::/0", "::/8", "::fffe:0:0/95", "::/96", "::1:0:0:0/96"]
    );
}

#[test]
fn segment_table() {
    let policy = parse_ok(
        r#"
[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "prod-web"
select = { app = "web", env = ["prod", "stage"] }
mode = "audit"

[[segment]]
name = "enforced"
select = { segment = "x" }
mode = "enforce"
packet_sockets = "deny"

[[segment]]
name = "capture"
select = { role = "capture" }
packet_sockets = "allow"
"#,
    );
    assert_eq!(
        policy.segments,
        [
            Segment {
                name: "finance".into(),
                select: selector(&[("segment", &["finance"])]),
                mode: None,
                packet_sockets: PacketSockets::Deny,
                location: loc("p.toml", 2, 1),
            },
            Segment {
                name: "prod-web".into(),
                select: selector(&[("app", &["web"]), ("env", &["prod", "stage"])]),
                mode: Some(Mode::Audit),
                packet_sockets: PacketSockets::Deny,
                location: loc("p.toml", 6, 1),
            },
            Segment {
                name: "enforced".into(),
                select: selector(&[("segment", &["x"])]),
                mode: Some(Mode::Enforce),
                packet_sockets: PacketSockets::Deny,
                location: loc("p.toml", 11, 1),
            },
            Segment {
                name: "capture".into(),
                select: selector(&[("role", &["capture"])]),
                mode: None,
                packet_sockets: PacketSockets::Allow,
                location: loc("p.toml", 17, 1),
            },
        ]
    );
}

#[test]
fn rule_tables_and_every_endpoint_form() {
    let policy = parse_ok(
        r#"
[[segment]]
name = "web"
select = { segment = "web" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[allow]]
from = "web"
to = "finance"
ports = ["tcp/8443"]
description = "web tier calls the ledger API"

[[deny]]
name = "no-dev"
from = { team = "dev" }
to = { env = ["prod", "stage"] }
ports = ["any"]

[[allow]]
from = "@world"
to = "@host"
ports = ["icmp"]

[[allow]]
from = "@any"
to = "@any"
ports = ["udp/53"]
"#,
    );
    let rules = &policy.rules;
    assert_eq!(rules.len(), 4);
    assert_eq!(
        rules[0],
        Rule {
            action: Action::Allow,
            name: None,
            from: Endpoint::Segment(0),
            to: Endpoint::Segment(1),
            ports: vec![tcp(8443, 8443)],
            description: Some("web tier calls the ledger API".into()),
            location: loc("p.toml", 10, 1),
        }
    );
    assert_eq!(
        rules[1],
        Rule {
            action: Action::Deny,
            name: Some("no-dev".into()),
            from: Endpoint::Selector(selector(&[("team", &["dev"])])),
            to: Endpoint::Selector(selector(&[("env", &["prod", "stage"])])),
            ports: vec![PortTerm::Any],
            description: None,
            location: loc("p.toml", 16, 1),
        }
    );
    assert_eq!(rules[2].from, Endpoint::Entity(Entity::World));
    assert_eq!(rules[2].to, Endpoint::Entity(Entity::Host));
    assert_eq!(rules[2].ports, [PortTerm::Icmp]);
    assert_eq!(rules[3].from, Endpoint::Entity(Entity::Any));
    assert_eq!(rules[3].ports, [udp(53, 53)]);
}

#[test]
fn names_are_unique_across_every_table() {
    // POLICY.md: one namespace for the whole policy, so a name never means two things.
    assert_one_error(
        r#"
[[workload]]
name = "web"
cgroup = "system.slice/nginx.service"
labels = { segment = "web" }

[[segment]]
name = "web"
select = { segment = "web" }
"#,
        "8:8",
        "p.toml:3:8",
    );
}

#[test]
fn every_port_term() {
    let cases = [
        ("tcp/443", tcp(443, 443)),
        ("tcp/9000-9100", tcp(9000, 9100)),
        ("tcp/1-65535", tcp(1, 65535)),
        ("tcp/7-7", tcp(7, 7)),
        ("udp/53", udp(53, 53)),
        ("udp/60000-61000", udp(60000, 61000)),
        ("tcp", tcp(1, 65535)),
        ("udp", udp(1, 65535)),
        ("icmp", PortTerm::Icmp),
        ("any", PortTerm::Any),
    ];
    for (text, term) in cases {
        assert_eq!(text.parse::<PortTerm>(), Ok(term), "{text}");
    }
    // Through a policy too, in the order written.
    let terms: Vec<&str> = cases.iter().map(|(text, _)| *text).collect();
    let policy = parse_ok(&format!(
        "[[allow]]\nfrom = \"@any\"\nto = \"@any\"\nports = {terms:?}\n"
    ));
    let parsed: Vec<PortTerm> = cases.iter().map(|(_, term)| *term).collect();
    assert_eq!(policy.rules[0].ports, parsed);
    // Display writes the canonical spelling back.
    for (text, canonical) in [
        ("tcp/443", "tcp/443"),
        ("tcp/7-7", "tcp/7"),
        ("tcp/1-65535", "tcp"),
    ] {
        assert_eq!(text.parse::<PortTerm>().unwrap().to_string(), canonical);
    }
}

#[test]
fn modes_parse_case_sensitively() {
    assert_eq!("enforce".parse::<Mode>(), Ok(Mode::Enforce));
    assert_eq!("audit".parse::<Mode>(), Ok(Mode::Audit));
    assert!("Audit".parse::<Mode>().is_err());
}

#[test]
fn packet_sockets_parse_case_sensitively() {
    assert_eq!("deny".parse::<PacketSockets>(), Ok(PacketSockets::Deny));
    assert_eq!("allow".parse::<PacketSockets>(), Ok(PacketSockets::Allow));
    assert!("Allow".parse::<PacketSockets>().is_err());
    assert_eq!(PacketSockets::default(), PacketSockets::Deny);
    assert_eq!(PacketSockets::Allow.as_str(), "allow");
}

#[test]
fn rule_location_is_its_header_line() {
    let text = "# rules\n\n[[allow]]   # the header\n\n# a comment before the first key\n\nfrom = \"@any\"\nto = \"@any\"\nports = [\"udp/53\"]\n\n  [[deny]]\n  from = \"@world\"\n  ports = [\"any\"]\n\n  [deny.to]\n  app = \"x\"\n";
    let policy = parse_ok(text);
    assert_eq!(policy.rules[0].location, loc("p.toml", 3, 1));
    // Indented, and with part of the table in a later sub-table: still the header.
    assert_eq!(policy.rules[1].location, loc("p.toml", 11, 3));
    assert_eq!(
        policy.rules[1].to,
        Endpoint::Selector(selector(&[("app", &["x"])]))
    );
}

#[test]
fn rule_location_of_inline_tables_is_their_brace() {
    let text = "allow = [\n  { from = \"@any\", to = \"@any\", ports = [\"udp/53\"] },\n    { from = \"@world\", to = \"@host\", ports = [\"icmp\"] },\n]\n";
    let policy = parse_ok(text);
    let at: Vec<(u32, u32)> = policy
        .rules
        .iter()
        .map(|r| (r.location.line, r.location.column))
        .collect();
    assert_eq!(at, [(2, 3), (3, 5)]);
}

#[test]
fn columns_count_characters_not_bytes() {
    // `ü` is two bytes: a byte count would say column 26.
    assert_one_error(
        "[[segment]]\nname = \"s\"\nselect = { a = \"ü\", b = 1 }\n",
        "3:25",
        "selector value for label `b`",
    );
}

#[test]
fn allow_and_deny_keep_their_textual_order() {
    let text = "[[deny]]\nfrom = \"@any\"\nto = \"@any\"\nports = [\"tcp/1\"]\n[[allow]]\nfrom = \"@any\"\nto = \"@any\"\nports = [\"tcp/2\"]\n[[deny]]\nfrom = \"@any\"\nto = \"@any\"\nports = [\"tcp/3\"]\n";
    let policy = parse_ok(text);
    let order: Vec<(Action, u32)> = policy
        .rules
        .iter()
        .map(|r| (r.action, r.location.line))
        .collect();
    assert_eq!(
        order,
        [(Action::Deny, 1), (Action::Allow, 5), (Action::Deny, 9)]
    );
}

const SEGMENTS: &str = "[[segment]]\nname = \"web\"\nselect = { segment = \"web\" }\n";
const RULES: &str = "[[allow]]\nname = \"web-out\"\nfrom = \"web\"\nto = \"@world\"\nports = [\"tcp/443\"]\n[[segment]]\nname = \"api\"\nselect = { segment = \"api\" }\n";

#[test]
fn files_merge_in_byte_order_of_their_paths() {
    // Given out of order: `rules/a.toml` sorts before `segments.toml`, and `rules.toml` ('.' is
    // 0x2e) before `rules/a.toml` ('/' is 0x2f).
    let sources = [
        source("segments.toml", SEGMENTS),
        source("rules/a.toml", RULES),
        source("rules.toml", "[settings]\nmode = \"audit\"\n"),
    ];
    let policy = parse_sources(&sources).unwrap();
    let names: Vec<&str> = policy.segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    // A rule may name a segment defined in a later file.
    assert_eq!(policy.rules[0].from, Endpoint::Segment(1));
    assert_eq!(policy.rules[0].location, loc("rules/a.toml", 1, 1));
    assert_eq!(policy.settings.mode, Mode::Audit);
    assert_eq!(policy.settings.location, Some(loc("rules.toml", 1, 1)));

    let mut reversed = sources.clone();
    reversed.reverse();
    assert_eq!(parse_sources(&reversed).unwrap(), policy);
}

#[test]
fn version_hashes_paths_and_contents_in_order() {
    let sources = [source("b.toml", RULES), source("a.toml", SEGMENTS)];
    let policy = parse_sources(&sources).unwrap();
    let mut hash = Sha256::new();
    for (path, text) in [("a.toml", SEGMENTS), ("b.toml", RULES)] {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    assert_eq!(policy.version, hex::encode(hash.finalize()));
    assert_eq!(policy.version.len(), 64);

    // Renaming a file changes the version, since rule uids name the file.
    let renamed = [source("c.toml", RULES), source("a.toml", SEGMENTS)];
    assert_ne!(parse_sources(&renamed).unwrap().version, policy.version);
    // So does any change of content, a comment included.
    let commented = [
        source("b.toml", &format!("# x\n{RULES}")),
        source("a.toml", SEGMENTS),
    ];
    assert_ne!(parse_sources(&commented).unwrap().version, policy.version);
}

#[test]
fn table_keys_match_the_raw_structs() {
    use serde::Deserialize;
    use toml::de::ValueDeserializer;

    use crate::policy::raw::{RawNode, RawPeer, RawRule, RawSegment, RawSettings, RawWorkload};

    // serde lists the fields it expects in its unknown-field message.
    fn expected<T: for<'de> Deserialize<'de> + std::fmt::Debug>() -> Vec<String> {
        let value = ValueDeserializer::parse("{ no_such_key = 1 }").unwrap();
        let error = T::deserialize(value).unwrap_err().message().to_owned();
        // "expected `a` or `b`", or "expected one of `a`, `b`, `c`".
        let list = error.split("expected ").nth(1).unwrap_or_default();
        let list = list.trim_start_matches("one of ").replace(" or ", ", ");
        let mut keys: Vec<String> = list
            .split(", ")
            .map(|k| k.trim_matches('`').to_owned())
            .collect();
        keys.sort();
        keys
    }
    let sorted = |kind: TableKind| {
        let mut keys: Vec<String> = kind.keys().iter().map(|k| (*k).to_owned()).collect();
        keys.sort();
        keys
    };
    assert_eq!(expected::<RawSettings>(), sorted(TableKind::Settings));
    assert_eq!(expected::<RawNode>(), sorted(TableKind::Node));
    assert_eq!(expected::<RawWorkload>(), sorted(TableKind::Workload));
    assert_eq!(expected::<RawPeer>(), sorted(TableKind::Peer));
    assert_eq!(expected::<RawSegment>(), sorted(TableKind::Segment));
    assert_eq!(expected::<RawRule>(), sorted(TableKind::Allow));
    assert_eq!(expected::<RawRule>(), sorted(TableKind::Deny));
    for kind in TableKind::ALL {
        for required in kind.required() {
            assert!(kind.keys().contains(required), "{kind}: {required}");
        }
    }
}
