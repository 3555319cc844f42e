use enforcer_common::{RULE_AUDIT, RULE_FAILSAFE, VERDICT_ALLOW, VERDICT_DENY, identity, protocol};

use super::*;
use crate::{
    identity::IdentityAllocator,
    policy::{Source, parse_sources},
};

fn compiled(text: &str, node: &str) -> (CompiledPolicy, Identities) {
    let policy = parse_sources(&[Source {
        path: "p.toml".into(),
        text: text.to_owned(),
    }])
    .expect("valid policy");
    let ids =
        Identities::build(&policy, node, &mut IdentityAllocator::default()).expect("identities");
    (compile(&policy, &ids).expect("compiles"), ids)
}

fn id(ids: &Identities, name: &str) -> u32 {
    ids.iter()
        .find(|i| i.name == name)
        .map(|i| i.id)
        .expect("identity")
}

/// The verdict the kernel would find for one port: the longest matching block.
fn lookup(c: &CompiledPolicy, src: u32, dst: u32, proto: u8, port: u16) -> Option<RuleValue> {
    c.state
        .rules
        .iter()
        .filter(|(k, _)| {
            k.src_identity == src
                && k.dst_identity == dst
                && k.protocol == proto
                && k.ports.first <= port
                && port <= k.ports.last()
        })
        .max_by_key(|(k, _)| k.ports.prefix_len)
        .map(|(_, v)| *v)
}

const BASE: &str = r#"
[settings]
failsafe_inbound = []

[[node]]
name = "local"
addresses = ["10.0.0.1"]
labels = { role = "app" }

[[node]]
name = "db"
addresses = ["10.0.0.2"]
labels = { role = "db", segment = "finance" }

[[workload]]
name = "web"
cgroup = "web"
labels = { app = "web", segment = "web" }

[[workload]]
name = "dev"
cgroup = "dev"
labels = { team = "dev" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "web-tier"
select = { segment = "web" }

[[allow]]
from = "web-tier"
to = "finance"
ports = ["tcp/9000-9100"]

[[deny]]
from = "web-tier"
to = "finance"
ports = ["tcp/9050"]

[[allow]]
from = { team = "dev" }
to = "@world"
ports = ["any"]
"#;

#[test]
fn deny_beats_allow_inside_a_range() {
    let (c, ids) = compiled(BASE, "local");
    let (web, db) = (id(&ids, "web"), id(&ids, "db"));
    let at = |port| lookup(&c, web, db, protocol::TCP, port).map(|v| v.verdict);
    assert_eq!(at(8999), None);
    assert_eq!(at(9000), Some(VERDICT_ALLOW));
    assert_eq!(at(9049), Some(VERDICT_ALLOW));
    assert_eq!(at(9050), Some(VERDICT_DENY));
    assert_eq!(at(9051), Some(VERDICT_ALLOW));
    assert_eq!(at(9100), Some(VERDICT_ALLOW));
    assert_eq!(at(9101), None);
    assert_eq!(
        lookup(&c, web, db, protocol::TCP, 9050).map(|v| v.rule_id),
        Some(1)
    );
}

#[test]
fn ranges_cost_bounded_entries() {
    let (c, ids) = compiled(BASE, "local");
    let (web, db) = (id(&ids, "web"), id(&ids, "db"));
    let entries = c
        .state
        .rules
        .keys()
        .filter(|k| k.src_identity == web && k.dst_identity == db)
        .count();
    // 9000-9049, 9050, 9051-9100: a handful of blocks each, never one per port.
    assert!(entries < 20, "{entries} entries");
}

#[test]
fn any_covers_every_protocol_and_inline_selectors_resolve() {
    let (c, ids) = compiled(BASE, "local");
    let dev = id(&ids, "dev");
    for (proto, port) in [
        (protocol::TCP, 1),
        (protocol::UDP, 53),
        (protocol::ICMP, 0),
        (protocol::OTHER, 7),
    ] {
        let v = lookup(&c, dev, identity::WORLD, proto, port).expect("allowed");
        assert_eq!(v.verdict, VERDICT_ALLOW);
    }
}

#[test]
fn segment_membership_and_addresses() {
    let (c, ids) = compiled(BASE, "local");
    let info = |name| c.state.identity_info[&id(&ids, name)];
    assert_eq!(info("db").flags & IDENTITY_SEGMENTED, IDENTITY_SEGMENTED);
    assert_eq!(c.segments[info("db").segment as usize], "finance");
    assert_eq!(info("dev").flags, 0);
    assert_eq!(c.state.identity_info[&identity::WORLD].flags, 0);
    let local = c.state.addr_exact[&ipv4_mapped([10, 0, 0, 1])];
    assert_eq!(local.flags, ADDR_LOCAL);
    assert_eq!(
        c.state.addr_exact[&ipv4_mapped([10, 0, 0, 2])].identity,
        id(&ids, "db")
    );
    assert_eq!(c.state.config.local_identity, id(&ids, "local"));
}

#[test]
fn audit_modes() {
    let global = BASE.replace(
        "failsafe_inbound = []",
        "failsafe_inbound = []\nmode = \"audit\"",
    );
    let (c, ids) = compiled(&global, "local");
    let v = lookup(&c, id(&ids, "web"), id(&ids, "db"), protocol::TCP, 9050).expect("entry");
    assert_eq!(v.flags & RULE_AUDIT, RULE_AUDIT);
    assert_eq!(c.state.config.flags, CONFIG_AUDIT);

    // An explicit enforce segment overrides the global audit.
    let enforced = global.replace(
        "name = \"finance\"\nselect = { segment = \"finance\" }",
        "name = \"finance\"\nselect = { segment = \"finance\" }\nmode = \"enforce\"",
    );
    let (c, ids) = compiled(&enforced, "local");
    let v = lookup(&c, id(&ids, "web"), id(&ids, "db"), protocol::TCP, 9050).expect("entry");
    assert_eq!(v.flags & RULE_AUDIT, 0);

    let per_segment = BASE.replace(
        "name = \"web-tier\"\nselect = { segment = \"web\" }",
        "name = \"web-tier\"\nselect = { segment = \"web\" }\nmode = \"audit\"",
    );
    let (c, ids) = compiled(&per_segment, "local");
    let v = lookup(&c, id(&ids, "web"), id(&ids, "db"), protocol::TCP, 9050).expect("entry");
    assert_eq!(v.flags & RULE_AUDIT, RULE_AUDIT);
}

#[test]
fn failsafe_wins_over_deny_for_local_destinations_only() {
    let text = BASE.replace("failsafe_inbound = []", "failsafe_inbound = [\"tcp/22\"]")
        + "\n[[deny]]\nfrom = \"@any\"\nto = \"@any\"\nports = [\"tcp/22\"]\n";
    let (c, ids) = compiled(&text, "local");
    let to_local =
        lookup(&c, id(&ids, "web"), id(&ids, "local"), protocol::TCP, 22).expect("entry");
    assert_eq!(to_local.verdict, VERDICT_ALLOW);
    assert_eq!(to_local.flags & RULE_FAILSAFE, RULE_FAILSAFE);
    let to_remote = lookup(&c, id(&ids, "web"), id(&ids, "db"), protocol::TCP, 22).expect("entry");
    assert_eq!(to_remote.verdict, VERDICT_DENY);
    assert!(!c.warnings.is_empty());
}

/// What the kernel's LPM lookup in `ADDR_CIDR` finds for `addr`: the longest covering prefix.
fn cidr_owner(c: &CompiledPolicy, addr: &str) -> Option<AddrValue> {
    let addr: IpAddr = addr.parse().expect("address");
    let key = AddrPrefix {
        addr: mapped(addr),
        bits: 128,
    };
    c.state
        .addr_cidr
        .iter()
        .filter(|(prefix, _)| covers(**prefix, key))
        .max_by_key(|(prefix, _)| prefix.bits)
        .map(|(_, value)| *value)
}

fn owner_name<'a>(c: &CompiledPolicy, ids: &'a Identities, addr: &str) -> Option<&'a str> {
    cidr_owner(c, addr)
        .and_then(|value| ids.get(value.identity))
        .map(|i| i.name.as_str())
}

const PEERS: &str = r#"
[[node]]
name = "local"

[[peer]]
name = "v6-all"
cidrs = ["::/0"]

[[peer]]
name = "v4"
cidrs = ["10.9.0.0/16"]
"#;

/// IPv6 addresses outside the mapped block, close to it and far from it.
const IPV6: [&str; 7] = [
    "2001:db8::1",
    "fe80::1",
    "::fffe:0:1",
    "::1:0:0:1",
    "::fffe:ffff:ffff",
    "::1:ffff:0:1",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
];

#[test]
fn an_ipv6_prefix_never_claims_ipv4_addresses() {
    let (c, ids) = compiled(PEERS, "local");
    for addr in IPV6 {
        assert_eq!(owner_name(&c, &ids, addr), Some("v6-all"), "{addr}");
    }
    for addr in ["::ffff:8.8.8.8", "::ffff:0.0.0.1", "::ffff:255.255.255.255"] {
        assert_eq!(cidr_owner(&c, addr), None, "{addr} is @world");
    }
    assert_eq!(owner_name(&c, &ids, "::ffff:10.9.1.1"), Some("v4"));
    // The always-local entries are untouched.
    for addr in ["::1", "::", "::ffff:127.0.0.1"] {
        assert_eq!(
            cidr_owner(&c, addr).map(|v| v.flags),
            Some(ADDR_LOCAL),
            "{addr}"
        );
    }
}

#[test]
fn the_split_is_exactly_the_ipv6_space() {
    let (c, ids) = compiled(PEERS, "local");
    let v6 = id(&ids, "v6-all");
    let pieces: Vec<AddrPrefix> = c
        .state
        .addr_cidr
        .iter()
        .filter(|(_, value)| value.identity == v6)
        .map(|(prefix, _)| *prefix)
        .collect();
    assert_eq!(pieces.len(), 96, "one sibling per level from /1 to /96");
    for (i, a) in pieces.iter().enumerate() {
        assert!(
            !covers(*a, MAPPED_BLOCK) && !covers(MAPPED_BLOCK, *a),
            "{a:?}"
        );
        for b in &pieces[i + 1..] {
            assert!(
                !covers(*a, *b) && !covers(*b, *a),
                "{a:?} and {b:?} overlap"
            );
        }
    }
    // Disjoint, and their sizes (in units of the mapped block's 2^32 addresses) add up to the
    // whole space but that block: an exact cover of ::/0 minus ::ffff:0:0/96.
    let size: u128 = pieces.iter().map(|p| 1u128 << (96 - p.bits)).sum();
    assert_eq!(size, (1u128 << 96) - 1);
}

#[test]
fn shorter_splits_around_the_mapped_block() {
    for (cidr, entries) in [("::/8", 88), ("::/80", 16), ("::fffe:0:0/95", 1)] {
        let (c, ids) = compiled(&PEERS.replace("::/0", cidr), "local");
        let v6 = id(&ids, "v6-all");
        let count = c
            .state
            .addr_cidr
            .values()
            .filter(|v| v.identity == v6)
            .count();
        assert_eq!(count, entries, "{cidr}");
        assert_eq!(cidr_owner(&c, "::ffff:8.8.8.8"), None, "{cidr}");
        assert_eq!(owner_name(&c, &ids, "::fffe:0:1"), Some("v6-all"), "{cidr}");
        assert_eq!(cidr_owner(&c, "2001:db8::1"), None, "{cidr}");
    }
    // A prefix next to the block, or the IPv4-compatible ::/96, is not split.
    for cidr in ["::/96", "::1:0:0:0/96", "fd00::/8"] {
        let (c, ids) = compiled(&PEERS.replace("::/0", cidr), "local");
        let v6 = id(&ids, "v6-all");
        let count = c
            .state
            .addr_cidr
            .values()
            .filter(|v| v.identity == v6)
            .count();
        assert_eq!(count, 1, "{cidr}");
        assert!(c.warnings.is_empty(), "{cidr}: {:?}", c.warnings);
    }
}

#[test]
fn the_longer_cidr_written_keeps_a_key_the_split_also_makes() {
    // `::/8` and `8000::/1` are also pieces of `::/0`; in either policy order they stay the
    // longest match for their addresses.
    let narrow = "\n[[peer]]\nname = \"narrow\"\ncidrs = [\"::/8\", \"8000::/1\"]\n";
    let (node, peers) = PEERS
        .split_once("\n[[peer]]")
        .expect("PEERS starts with its node");
    for text in [
        format!("{PEERS}{narrow}"),
        format!("{node}{narrow}\n[[peer]]{peers}"),
    ] {
        let (c, ids) = compiled(&text, "local");
        for addr in ["::fffe:0:1", "::1:0:0:1", "8000::1", "fe80::1"] {
            assert_eq!(
                owner_name(&c, &ids, addr),
                Some("narrow"),
                "{addr} in\n{text}"
            );
        }
        assert_eq!(owner_name(&c, &ids, "2001:db8::1"), Some("v6-all"));
        assert_eq!(cidr_owner(&c, "::ffff:8.8.8.8"), None);
    }
}

#[test]
fn every_split_prefix_is_warned_about() {
    let text = PEERS.replace("[\"::/0\"]", "[\"::/0\", \"fd00::/8\", \"::/80\"]");
    let (c, _) = compiled(&text, "local");
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "p.toml:5:1: peer `v6-all`: the IPv6 prefix ::/0 does not claim IPv4 addresses (IPv4 \
             and IPv6 are separate spaces), which need their own IPv4 CIDR in `cidrs`; it is \
             compiled as 96 prefixes around ::ffff:0:0/96",
            "p.toml:5:1: peer `v6-all`: the IPv6 prefix ::/80 does not claim IPv4 addresses (IPv4 \
             and IPv6 are separate spaces), which need their own IPv4 CIDR in `cidrs`; it is \
             compiled as 16 prefixes around ::ffff:0:0/96",
        ]
    );
}

#[test]
fn split_entries_count_against_capacity() {
    // Fill ADDR_CIDR to ten entries below what a policy may use (half the map; four entries are
    // always local), then add `::/0`, whose 96 pieces no longer fit.
    let room = capacity::ADDR_CIDR as usize / 2 - 4 - 10;
    let cidrs: Vec<String> = (0..room)
        .map(|n| format!("\"10.{}.{}.0/24\"", n / 256, n % 256))
        .collect();
    let fits = format!(
        "[[node]]\nname = \"local\"\n\n[[peer]]\nname = \"many\"\ncidrs = [{}]\n",
        cidrs.join(", ")
    );
    let (c, _) = compiled(&fits, "local");
    assert_eq!(c.state.addr_cidr.len(), room + 4);

    let text = format!("{fits}\n[[peer]]\nname = \"v6-all\"\ncidrs = [\"::/0\"]\n");
    let policy = parse_sources(&[Source {
        path: "p.toml".into(),
        text,
    }])
    .expect("valid policy");
    let ids =
        Identities::build(&policy, "local", &mut IdentityAllocator::default()).expect("identities");
    let compiled = compile(&policy, &ids).expect("compiles");
    match compiled.state.check_fits(&Limits::default()) {
        Err(CompileError::TooLarge {
            map, needed, flag, ..
        }) => {
            assert_eq!(flag, "--max-cidrs");
            assert_eq!(map, "ADDR_CIDR");
            assert_eq!(needed, room + 4 + 96);
        }
        other => panic!("expected ADDR_CIDR to overflow, got {other:?}"),
    }
}

const CAPTURE: &str = r#"
[[node]]
name = "local"

[[workload]]
name = "sniffer"
cgroup = "sniffer"
labels = { capture = "yes" }

[[workload]]
name = "both-allow"
cgroup = "both-allow"
labels = { capture = "yes", debug = "yes" }

[[workload]]
name = "also-finance"
cgroup = "also-finance"
labels = { capture = "yes", segment = "finance" }

[[workload]]
name = "finance-only"
cgroup = "finance-only"
labels = { segment = "finance" }

[[workload]]
name = "outside"
cgroup = "outside"
labels = { team = "x" }

[[segment]]
name = "capture"
select = { capture = "yes" }
packet_sockets = "allow"

[[segment]]
name = "debug"
select = { debug = "yes" }
packet_sockets = "allow"

[[segment]]
name = "finance"
select = { segment = "finance" }
"#;

#[test]
fn packet_sockets_are_exempt_only_when_every_segment_allows_them() {
    let (c, ids) = compiled(CAPTURE, "local");
    let exempt = |name| c.state.identity_info[&id(&ids, name)].flags & IDENTITY_PACKET_SOCKETS != 0;
    assert!(exempt("sniffer"));
    assert!(exempt("both-allow"));
    assert!(!exempt("also-finance"), "one segment that denies is enough");
    assert!(!exempt("finance-only"));
    // Not a member of any segment: never banned, so never marked.
    assert!(!exempt("outside"));
    for entity in [identity::HOST, identity::WORLD] {
        assert_eq!(
            c.state.identity_info[&entity].flags & IDENTITY_PACKET_SOCKETS,
            0
        );
    }
    // An explicit "deny" is the default.
    let (c, ids) = compiled(
        &CAPTURE.replace(
            "name = \"debug\"\nselect = { debug = \"yes\" }\npacket_sockets = \"allow\"",
            "name = \"debug\"\nselect = { debug = \"yes\" }\npacket_sockets = \"deny\"",
        ),
        "local",
    );
    let flags = c.state.identity_info[&id(&ids, "both-allow")].flags;
    assert_eq!(flags & IDENTITY_PACKET_SOCKETS, 0);
    assert_eq!(flags & IDENTITY_SEGMENTED, IDENTITY_SEGMENTED);
}

#[test]
fn the_image_shows_the_exemption() {
    let (c, ids) = compiled(CAPTURE, "local");
    let image = c.render(&ids);
    let line = |name: &str| {
        image
            .lines()
            .find(|l| l.starts_with("identity ") && l.split(' ').nth(2) == Some(name))
            .unwrap_or_else(|| panic!("no identity line for {name} in\n{image}"))
            .to_owned()
    };
    assert!(line("sniffer").ends_with("segment=capture mode=default packet_sockets=allow"));
    assert!(line("also-finance").ends_with("segment=capture mode=default"));
}
