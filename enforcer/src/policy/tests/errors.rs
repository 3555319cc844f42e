//! Broken policies: each error kind, where it points, and that one run reports them all.

use super::*;

const ANY_RULE: &str = "from = \"@any\"\nto = \"@any\"\nports = [\"any\"]\n";

#[test]
fn bad_toml_reports_the_first_syntax_error_only() {
    assert_one_error(
        "[[node]]\nname = \"a\"\nlabels = { a = }\nx = [\n",
        "3:16",
        "invalid TOML",
    );
    assert_one_error(
        "[[node]\nname = \"a\"\n",
        "1:8",
        "invalid TOML: unclosed array table",
    );
    // TOML's own rules: a key defined twice.
    assert_one_error(
        "[[node]]\nname = \"a\"\nname = \"b\"\n",
        "3:1",
        "invalid TOML",
    );
}

#[test]
fn unknown_keys_name_the_key_and_the_table() {
    assert_one_error(
        "[[node]]\nname = \"a\"\nadresses = [\"10.0.0.1\"]\n",
        "3:1",
        "unknown key `adresses` in [[node]]; expected one of: name, addresses, labels",
    );
    assert_one_error(
        "\n[[nodes]]\nname = \"a\"\n",
        "2:3",
        "unknown key `nodes` at the top level; expected one of: settings, node, workload",
    );
    assert_one_error(
        &format!("[[deny]]\n{ANY_RULE}descripton = \"typo\"\n"),
        "5:1",
        "unknown key `descripton` in [[deny]]",
    );
    assert_one_error(
        "[settings]\nfailsafe = []\n",
        "2:1",
        "unknown key `failsafe` in [settings]",
    );
}

#[test]
fn one_run_reports_every_error_of_every_table() {
    let errors = errors_of(
        "[[node]]\nname = \"a\"\nadresses = []\nlabels = { role = 1 }\n\n[[peer]]\nname = \"p\"\ncidrs = [\"10.0.0.1/8\", \"x\"]\nzone = \"z\"\n",
    );
    assert_eq!(
        errors.len(),
        5,
        "unknown key, wrong type, host bits, bad CIDR, unknown key: {errors:#?}"
    );
    assert!(errors[0].starts_with("p.toml:3:1: unknown key `adresses`"));
    assert!(errors[1].starts_with("p.toml:4:19: [[node]] `labels`: invalid type"));
    assert!(errors[2].starts_with("p.toml:8:10: CIDR 10.0.0.1/8 has host bits set"));
    assert!(errors[3].starts_with("p.toml:8:24: bad CIDR \"x\""));
    assert!(errors[4].starts_with("p.toml:9:1: unknown key `zone` in [[peer]]"));
}

#[test]
fn missing_required_keys() {
    assert_one_error(
        "\n[[allow]]\nfrom = \"@any\"\nto = \"@any\"\n",
        "2:1",
        "[[allow]] is missing the required key `ports`",
    );
    let errors = errors_of("[[workload]]\nlabels = {}\n");
    assert_eq!(
        errors,
        [
            "p.toml:1:1: [[workload]] is missing the required key `name`",
            "p.toml:1:1: [[workload]] is missing the required key `cgroup`",
        ]
    );
    assert_one_error(
        "[[segment]]\nname = \"s\"\n",
        "1:1",
        "missing the required key `select`",
    );
    assert_one_error(
        "[[peer]]\nname = \"p\"\n",
        "1:1",
        "missing the required key `cidrs`",
    );
}

#[test]
fn tables_of_the_wrong_shape() {
    assert_one_error(
        "[node]\nname = \"a\"\n",
        "1:1",
        "`node` must be written as [[node]]",
    );
    assert_one_error(
        "[[settings]]\nmode = \"audit\"\n",
        "1:1",
        "must be written as [settings]",
    );
    assert_one_error(
        "segment = \"web\"\n",
        "1:11",
        "must be written as [[segment]]",
    );
    assert_one_error("allow = [1]\n", "1:10", "must be written as [[allow]]");
}

#[test]
fn values_of_the_wrong_type() {
    assert_one_error(
        "[[node]]\nname = 5\n",
        "2:8",
        "[[node]] `name`: invalid type: integer `5`",
    );
    assert_one_error(
        "[[node]]\nname = \"n\"\naddresses = \"10.0.0.1\"\n",
        "3:13",
        "[[node]] `addresses`: invalid type",
    );
    assert_one_error(
        &format!("[[allow]]\n{ANY_RULE}description = 3\n"),
        "5:15",
        "[[allow]] `description`",
    );
}

#[test]
fn duplicate_names_name_both_places() {
    let segment = "[[segment]]\nname = \"web\"\nselect = { segment = \"web\" }\n";
    let errors = error_lines(&[("b.toml", segment), ("a.toml", &format!("\n{segment}"))]);
    assert_eq!(
        errors,
        [
            "b.toml:2:8: duplicate name `web`: this [[segment]] has the same name as the [[segment]] \
          at a.toml:3:8 (names are unique across the whole policy)"
        ]
    );
    // One set of names for every table: nodes, workloads and peers...
    let errors = errors_of(
        "[[node]]\nname = \"db\"\n[[peer]]\nname = \"db\"\ncidrs = [\"10.0.0.0/8\"]\n[[workload]]\nname = \"db\"\ncgroup = \"db\"\n",
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("p.toml:4:8: duplicate name `db`: this [[peer]] has the same name as the [[node]] at p.toml:2:8 (names are unique across the whole policy)"));
    assert!(errors[1].starts_with("p.toml:7:8: duplicate name `db`: this [[workload]] has the same name as the [[node]] at p.toml:2:8"));
    // Rule names too, allow and deny alike.
    let errors = errors_of(&format!(
        "[[allow]]\nname = \"x\"\n{ANY_RULE}[[deny]]\nname = \"x\"\n{ANY_RULE}"
    ));
    assert_eq!(
        errors,
        [
            "p.toml:7:8: duplicate name `x`: this [[deny]] has the same name as the [[allow]] at \
          p.toml:2:8 (names are unique across the whole policy)"
        ]
    );
    // ...and across tables: a segment, a workload, a peer and a rule cannot share a name either.
    let errors = error_lines(&[
        (
            "segments.toml",
            "[[segment]]\nname = \"web\"\nselect = { segment = \"web\" }\n",
        ),
        (
            "inventory.toml",
            "[[workload]]\nname = \"web\"\ncgroup = \"web\"\n[[peer]]\nname = \"db\"\ncidrs = [\"10.0.0.0/8\"]\n",
        ),
        (
            "rules.toml",
            &format!("[[allow]]\nname = \"db\"\n{ANY_RULE}[[deny]]\nname = \"web\"\n{ANY_RULE}"),
        ),
    ]);
    assert_eq!(
        errors,
        [
            "rules.toml:2:8: duplicate name `db`: this [[allow]] has the same name as the [[peer]] \
          at inventory.toml:5:8 (names are unique across the whole policy)",
            "rules.toml:7:8: duplicate name `web`: this [[deny]] has the same name as the [[workload]] \
          at inventory.toml:2:8 (names are unique across the whole policy)",
            "segments.toml:2:8: duplicate name `web`: this [[segment]] has the same name as the \
          [[workload]] at inventory.toml:2:8 (names are unique across the whole policy)",
        ]
    );
}

#[test]
fn a_workload_on_a_duplicated_node_name_is_not_also_undefined() {
    // The node is the duplicate (a segment holds the name first), but it is still a node.
    let errors = errors_of(
        "[[segment]]\nname = \"db-1\"\nselect = { segment = \"finance\" }\n[[node]]\nname = \"db-1\"\n[[workload]]\nname = \"ledger\"\ncgroup = \"ledger\"\nnodes = [\"db-1\"]\n",
    );
    assert_eq!(
        errors,
        [
            "p.toml:5:8: duplicate name `db-1`: this [[node]] has the same name as the [[segment]] \
          at p.toml:2:8 (names are unique across the whole policy)"
        ]
    );
    // A name that only a segment holds is still no node.
    assert_one_error(
        "[[segment]]\nname = \"db-1\"\nselect = { segment = \"finance\" }\n[[workload]]\nname = \"ledger\"\ncgroup = \"ledger\"\nnodes = [\"db-1\"]\n",
        "7:10",
        "`nodes` names node `db-1`, but no [[node]] has that name",
    );
}

#[test]
fn a_rule_naming_a_duplicated_segment_name_is_not_also_undefined() {
    // The segment comes second and is the duplicate, but it still defines the segment: the rule
    // resolves, and the only error is the duplicate, which names both places.
    let errors = error_lines(&[
        (
            "a.toml",
            "[[workload]]\nname = \"web\"\ncgroup = \"web\"\nlabels = { segment = \"web\" }\n",
        ),
        (
            "b.toml",
            "[[segment]]\nname = \"web\"\nselect = { segment = \"web\" }\n[[allow]]\nfrom = \"web\"\nto = \"@world\"\nports = [\"tcp/443\"]\n",
        ),
    ]);
    assert_eq!(
        errors,
        [
            "b.toml:2:8: duplicate name `web`: this [[segment]] has the same name as the [[workload]] \
          at a.toml:2:8 (names are unique across the whole policy)"
        ]
    );
}

#[test]
fn settings_at_most_once() {
    let errors = error_lines(&[
        ("a.toml", "[settings]\nmode = \"audit\"\n"),
        ("z/b.toml", "\n\n[settings]\n"),
    ]);
    assert_eq!(
        errors,
        [
            "z/b.toml:3:1: [settings] appears more than once in the policy; the first one is at a.toml:1:1"
        ]
    );
}

#[test]
fn bad_names_and_label_keys() {
    for (name, column) in [
        ("\"@web\"", 8),
        ("\"\"", 8),
        ("\"a b\"", 8),
        ("\"tab\\there\"", 8),
    ] {
        assert_one_error(
            &format!("[[node]]\nname = {name}\n"),
            &format!("2:{column}"),
            "invalid name",
        );
    }
    assert_one_error(
        "[[node]]\nname = \"n\"\nlabels = { ok = \"1\", \"not ok\" = \"2\" }\n",
        "3:22",
        "invalid label key \"not ok\"",
    );
}

#[test]
fn dates_are_not_selectors() {
    // toml hands a date to serde as a map with a private key: it must not pass as a selector.
    assert_one_error(
        "[[allow]]\nfrom = 1979-05-27\nto = \"@any\"\nports = [\"any\"]\n",
        "2:8",
        "not a date-time",
    );
    let errors = errors_of("[[segment]]\nname = \"s\"\nselect = 1979-05-27T07:32:00Z\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("p.toml:3:10: [[segment]] `select`"),
        "{errors:?}"
    );
    let errors = errors_of("[[node]]\nname = \"n\"\nlabels = { a = 1979-05-27 }\n");
    assert!(
        errors[0].starts_with("p.toml:3:16: [[node]] `labels`: invalid type"),
        "{errors:?}"
    );
}

#[test]
fn undefined_segments() {
    assert_one_error(
        "[[allow]]\nfrom = \"@world\"\nto = \"fnance\"\nports = [\"tcp/443\"]\n",
        "3:6",
        "`to` names segment `fnance`, but no [[segment]] has that name",
    );
    assert_one_error(
        "[[workload]]\nname = \"ledger\"\ncgroup = \"l\"\n[[deny]]\nfrom = \"ledger\"\nto = \"@any\"\nports = [\"any\"]\n",
        "5:8",
        "(`ledger` is a [[workload]]: select it with an inline selector on its labels)",
    );
    assert_one_error(
        &format!(
            "[[allow]]\nname = \"r\"\n{ANY_RULE}[[deny]]\nfrom = \"r\"\nto = \"@any\"\nports = [\"any\"]\n"
        ),
        "7:8",
        "(`r` is the name of a [[allow]])",
    );
}

#[test]
fn unknown_entities() {
    assert_one_error(
        "[[allow]]\nfrom = \"@foo\"\nto = \"@any\"\nports = [\"any\"]\n",
        "2:8",
        "unknown entity `@foo`; the entities are @host, @world and @any",
    );
    assert_one_error(
        "[[allow]]\nfrom = \"@any\"\nto = \"@World\"\nports = [\"any\"]\n",
        "3:6",
        "unknown entity `@World`",
    );
}

#[test]
fn empty_selectors() {
    assert_one_error(
        "[[allow]]\nfrom = {}\nto = \"@any\"\nports = [\"any\"]\n",
        "2:8",
        "`from` is an empty selector",
    );
    assert_one_error(
        "[[segment]]\nname = \"s\"\nselect = {}\n",
        "3:10",
        "`select` is an empty selector",
    );
}

#[test]
fn bad_selector_values() {
    for (value, column) in [
        ("[]", 18),
        ("1", 18),
        ("[\"prod\", 2]", 18),
        ("{ a = \"b\" }", 18),
    ] {
        assert_one_error(
            &format!("[[segment]]\nname = \"s\"\nselect = {{ env = {value} }}\n"),
            &format!("3:{column}"),
            "the selector value for label `env` must be a string or a non-empty list of strings",
        );
    }
}

#[test]
fn endpoints_of_the_wrong_type() {
    assert_one_error(
        "[[allow]]\nfrom = [\"web\"]\nto = \"@any\"\nports = [\"any\"]\n",
        "2:8",
        "`from` must be a segment name, an entity (@host, @world, @any) or an inline selector table such as { app = \"web\" }, not an array",
    );
    assert_one_error(
        "[[allow]]\nfrom = \"@any\"\nto = 3\nports = [\"any\"]\n",
        "3:6",
        "not an integer",
    );
}

#[test]
fn bad_port_terms() {
    let cases = [
        ("tcp/0", "port 0 is not a port"),
        ("tcp/65536", "port 65536 is out of range"),
        (
            "udp/99999999999999999999",
            "port 99999999999999999999 is out of range",
        ),
        ("tcp/90-80", "the range 90-80 runs backwards; write 80-90"),
        ("sctp/1", "unknown protocol `sctp`"),
        ("TCP/80", "unknown protocol `TCP`"),
        ("http", "unknown protocol `http`"),
        ("icmp/8", "`icmp` takes no port"),
        ("any/1", "`any` takes no port"),
        ("tcp/", "expected tcp/N"),
        ("tcp/+80", "expected tcp/N"),
        ("tcp/ 80", "expected tcp/N"),
        ("tcp/1-2-3", "expected tcp/N"),
        ("tcp:80", "expected tcp/N"),
        ("", "expected tcp/N"),
    ];
    for (term, phrase) in cases {
        let text =
            format!("[[allow]]\nfrom = \"@any\"\nto = \"@any\"\nports = [\"tcp/1\", {term:?}]\n");
        assert_one_error(&text, "4:19", &format!("bad port term {term:?}: {phrase}"));
    }
    assert_one_error(
        "[settings]\nfailsafe_inbound = [\"ssh\"]\n",
        "2:21",
        "bad port term \"ssh\": unknown protocol `ssh`",
    );
}

#[test]
fn empty_lists() {
    assert_one_error(
        "[[allow]]\nfrom = \"@any\"\nto = \"@any\"\nports = []\n",
        "4:9",
        "`ports` in [[allow]] must not be empty: a rule without ports would match nothing",
    );
    assert_one_error(
        "[[peer]]\nname = \"p\"\ncidrs = []\n",
        "3:9",
        "`cidrs` in [[peer]] must not be empty",
    );
    assert_one_error(
        "[[workload]]\nname = \"w\"\ncgroup = \"w\"\nnodes = []\n",
        "4:9",
        "leave `nodes` out to run the workload on every node",
    );
}

#[test]
fn bad_addresses_and_cidrs() {
    assert_one_error(
        "[[node]]\nname = \"n\"\naddresses = [\"10.0.0.1\", \"10.0.0.300\"]\n",
        "3:26",
        "bad address \"10.0.0.300\": expected an IPv4 or IPv6 address",
    );
    assert_one_error(
        "[[node]]\nname = \"n\"\naddresses = [\"10.0.0.1/32\"]\n",
        "3:14",
        "bad address \"10.0.0.1/32\"",
    );
    assert_one_error(
        "[[peer]]\nname = \"p\"\ncidrs = [\"10.8.0.0/33\"]\n",
        "3:10",
        "bad CIDR \"10.8.0.0/33\"",
    );
    assert_one_error(
        "[[peer]]\nname = \"p\"\ncidrs = [\"10.8.4.1/24\"]\n",
        "3:10",
        "CIDR 10.8.4.1/24 has host bits set; did you mean 10.8.4.0/24?",
    );
    assert_one_error(
        "[[peer]]\nname = \"p\"\ncidrs = [\"fd00:8::1/48\"]\n",
        "3:10",
        "did you mean fd00:8::/48?",
    );
}

#[test]
fn ipv4_mapped_cidrs_are_refused_with_their_ipv4_form() {
    for (cidr, ipv4) in [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("::ffff:a00:0/104", "10.0.0.0/8"),
        ("0:0:0:0:0:ffff:c000:200/120", "192.0.2.0/24"),
        // A bare address is a /128.
        ("::ffff:192.0.2.7", "192.0.2.7/32"),
    ] {
        assert_one_error(
            &format!("[[peer]]\nname = \"p\"\ncidrs = [\"10.1.0.0/16\", \"{cidr}\"]\n"),
            "3:25",
            &format!(
                "CIDR {cidr} is an IPv4-mapped IPv6 prefix, and an IPv6 prefix never claims an \
                 IPv4 address; write the IPv4 CIDR {ipv4} instead"
            ),
        );
    }
    // Host bits are reported first, as for any CIDR; the network it suggests is then refused
    // for what it is.
    assert_one_error(
        "[[peer]]\nname = \"p\"\ncidrs = [\"::ffff:10.0.0.1/104\"]\n",
        "3:10",
        "has host bits set; did you mean ::ffff:10.0.0.0/104?",
    );
}

#[test]
fn ipv4_mapped_node_addresses_are_refused_with_their_ipv4_form() {
    assert_one_error(
        "[[node]]\nname = \"n\"\naddresses = [\"fd00::1\", \"::ffff:10.0.0.1\"]\n",
        "3:25",
        "address ::ffff:10.0.0.1 is an IPv4-mapped IPv6 address, and IPv4 and IPv6 are separate \
         spaces; write the IPv4 address 10.0.0.1 instead",
    );
    // Any spelling of it.
    assert_one_error(
        "[[node]]\nname = \"n\"\naddresses = [\"0:0:0:0:0:FFFF:0A00:0001\"]\n",
        "3:14",
        "write the IPv4 address 10.0.0.1 instead",
    );
    // The refused address claims nothing: the IPv4 one may still be a node's.
    let policy = parse_ok("[[node]]\nname = \"n\"\naddresses = [\"::10.0.0.1\", \"10.0.0.1\"]\n");
    assert_eq!(
        policy.nodes[0].addresses.len(),
        2,
        "::10.0.0.1 is not mapped"
    );
}

#[test]
fn an_address_or_cidr_has_one_owner() {
    let errors = error_lines(&[
        (
            "a.toml",
            "[[node]]\nname = \"a\"\naddresses = [\"10.0.0.1\"]\n",
        ),
        (
            "b.toml",
            "[[node]]\nname = \"b\"\naddresses = [\"fd00::1\", \"10.0.0.1\"]\n",
        ),
    ]);
    assert_eq!(
        errors,
        [
            "b.toml:3:25: address 10.0.0.1 is already an address of node `a` at a.toml:3:14; an address identifies a single node"
        ]
    );
    let errors = errors_of(
        "[[peer]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\n[[peer]]\nname = \"b\"\ncidrs = [\"10.0.0.0/8\", \"10.0.0.0/9\"]\n",
    );
    assert_eq!(
        errors,
        [
            "p.toml:6:10: CIDR 10.0.0.0/8 is already a CIDR of peer `a` at p.toml:3:10; the longest match would be ambiguous"
        ]
    );
}

#[test]
fn bad_modes() {
    assert_one_error(
        "[settings]\nmode = \"Audit\"\n",
        "2:8",
        "unknown mode \"Audit\"; expected \"enforce\" or \"audit\"",
    );
    assert_one_error(
        "[[segment]]\nname = \"s\"\nselect = { a = \"b\" }\nmode = \"warn\"\n",
        "4:8",
        "unknown mode \"warn\"",
    );
}

#[test]
fn bad_packet_sockets() {
    for value in ["Allow", "yes", ""] {
        assert_one_error(
            &format!(
                "[[segment]]\nname = \"s\"\nselect = {{ a = \"b\" }}\npacket_sockets = \"{value}\"\n"
            ),
            "4:18",
            &format!("unknown packet_sockets value {value:?}; expected \"deny\" or \"allow\""),
        );
    }
    assert_one_error(
        "[[segment]]\nname = \"s\"\nselect = { a = \"b\" }\npacket_sockets = true\n",
        "4:18",
        "[[segment]] `packet_sockets`: invalid type: boolean `true`",
    );
}

#[test]
fn bad_cgroup_globs() {
    let cases = [
        (
            "/system.slice/x.service",
            "it must be relative to the managed cgroup root: remove the leading `/`",
        ),
        ("system.slice//x.service", "it has an empty path segment"),
        ("system.slice/", "it has an empty path segment"),
        ("", "it is empty"),
        (
            "system.slice/../x",
            "path segment `..` is not allowed: cgroup paths have no `.` or `..`",
        ),
        ("./x", "path segment `.` is not allowed"),
        (
            "system.slice/[ab",
            "it does not compile: unclosed character class",
        ),
        (
            "system.slice/{a,b",
            "it does not compile: unclosed alternate group",
        ),
    ];
    for (glob, phrase) in cases {
        assert_one_error(
            &format!("[[workload]]\nname = \"w\"\ncgroup = {glob:?}\n"),
            "3:10",
            &format!("bad cgroup glob {glob:?}: {phrase}"),
        );
    }
}

#[test]
fn undefined_nodes() {
    assert_one_error(
        "[[node]]\nname = \"db-1\"\n[[workload]]\nname = \"w\"\ncgroup = \"w\"\nnodes = [\"db-1\", \"db-2\"]\n",
        "6:18",
        "`nodes` names node `db-2`, but no [[node]] has that name",
    );
}

#[test]
fn no_cascade_from_a_broken_definition() {
    // The segment's file is not TOML: the rule's reference to it is not reported on top.
    let errors = error_lines(&[
        (
            "a.toml",
            "[[allow]]\nfrom = \"web\"\nto = \"@any\"\nports = [\"any\"]\n",
        ),
        ("b.toml", "[[segment]\nname = \"web\"\n"),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("b.toml:1:11: invalid TOML"));
    // The segment is TOML but invalid: it still defines its name.
    let errors = errors_of(
        "[[segment]]\nname = \"web\"\nselect = {}\n[[allow]]\nfrom = \"web\"\nto = \"@any\"\nports = [\"any\"]\n[[workload]]\nname = \"w\"\ncgroup = \"/w\"\nnodes = [\"db-1\"]\n",
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("p.toml:3:10: `select` is an empty selector"));
    assert!(errors[1].starts_with("p.toml:10:10: bad cgroup glob"));
    assert!(errors[2].starts_with("p.toml:11:10: `nodes` names node `db-1`"));
}

#[test]
fn errors_come_in_policy_order_one_per_line() {
    let sources = [
        source("b.toml", "[[node]]\nname = \"@b\"\n"),
        source(
            "a.toml",
            "[[node]]\nname = 1\n\n[[peer]]\nname = \"@a\"\ncidrs = [\"x\"]\n",
        ),
    ];
    let errors = parse_sources(&sources).unwrap_err();
    let text = errors.to_string();
    let files: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(files, ["a.toml", "a.toml", "a.toml", "b.toml"], "{text}");
    assert_eq!(errors.len(), 4);
    let first = errors.iter().next().unwrap();
    assert_eq!(first.location().map(|l| (l.line, l.column)), Some((2, 8)));
    assert!(matches!(
        first.kind(),
        PolicyErrorKind::WrongType {
            table: TableKind::Node,
            ..
        }
    ));
    assert_eq!(first.file(), Some(std::path::Path::new("a.toml")));
}

#[test]
fn no_sources_is_an_error() {
    let errors = parse_sources(&[]).unwrap_err();
    assert!(matches!(
        errors.as_slice()[0].kind(),
        PolicyErrorKind::NoPolicyFiles { .. }
    ));
    assert!(errors.as_slice()[0].location().is_none());
}
