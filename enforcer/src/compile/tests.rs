use enforcer_common::{RULE_AUDIT, RULE_FAILSAFE, VERDICT_ALLOW, VERDICT_DENY, identity, protocol};

use super::*;
use crate::policy::{Source, parse_sources};

fn compiled(text: &str, node: &str) -> (CompiledPolicy, Identities) {
    let policy = parse_sources(&[Source {
        path: "p.toml".into(),
        text: text.to_owned(),
    }])
    .expect("valid policy");
    let ids = Identities::build(&policy, node).expect("identities");
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
