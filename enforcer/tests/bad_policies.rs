//! Broken policy directories under `tests/bad-policies/`, one directory per mistake. Each must be
//! rejected by `load_dir` with exactly the listed errors: the `file:line:column` they point at and a
//! phrase of their message. Adding a directory without a case here fails `every_fixture_has_a_case`.

use std::{fs, path::PathBuf};

use enforcer::policy::{PolicyErrorKind, load_dir};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bad-policies")
}

/// Loads `tests/bad-policies/<dir>` and compares its errors, in order, with `expected`: pairs of
/// `file:line:column` (empty for an error about a whole directory) and a phrase of the message.
#[track_caller]
fn assert_rejected(dir: &str, expected: &[(&str, &str)]) {
    let errors = match load_dir(&fixtures().join(dir)) {
        Ok(_) => panic!("{dir}: the policy loaded, expected it to be rejected"),
        Err(errors) => errors,
    };
    let got: Vec<(String, String)> = errors
        .iter()
        .map(|e| {
            let at = e.location().map(ToString::to_string).unwrap_or_default();
            (at, e.to_string())
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "{dir}: expected {} error(s), got:\n{errors}",
        expected.len()
    );
    for ((at, line), (want_at, phrase)) in got.iter().zip(expected) {
        assert_eq!(at, want_at, "{dir}: wrong location for {line:?}");
        assert!(
            line.contains(phrase),
            "{dir}: {line:?} does not say {phrase:?}"
        );
        if !at.is_empty() {
            assert!(line.starts_with(&format!("{at}: ")), "{dir}: {line:?}");
        }
    }
}

macro_rules! bad_policy {
    ($($test:ident: $dir:literal => [$(($at:literal, $phrase:literal $(,)?)),+ $(,)?];)+) => {
        const CASES: &[&str] = &[$($dir),+];
        $(
            #[test]
            fn $test() {
                assert_rejected($dir, &[$(($at, $phrase)),+]);
            }
        )+
    };
}

bad_policy! {
    bad_toml: "bad-toml" => [("policy.toml:2:11", "invalid TOML: unclosed array table")];
    unknown_key: "unknown-key" => [
        ("rules.toml:9:1", "unknown key `descripton` in [[allow]]; expected one of: name, from, to, ports, description"),
    ];
    duplicate_name_across_files: "duplicate-name" => [(
        "segments.toml:2:8",
        "duplicate name `web`: this [[segment]] has the same name as the [[segment]] at rules/web.toml:3:8",
    )];
    duplicate_across_tables: "duplicate-across-tables" => [(
        "workloads.toml:2:8",
        "duplicate name `web`: this [[workload]] has the same name as the [[segment]] at segments.toml:3:8",
    )];
    segment_named_like_a_workload: "segment-named-like-a-workload" => [(
        "segments.toml:5:8",
        "duplicate name `web`: this [[segment]] has the same name as the [[workload]] at inventory/workloads.toml:2:8",
    )];
    duplicate_identity_name: "duplicate-identity-name" => [(
        "peers.toml:3:8",
        "duplicate name `db-1`: this [[peer]] has the same name as the [[node]] at nodes.toml:2:8",
    )];
    undefined_segment: "undefined-segment" => [
        ("policy.toml:6:8", "`from` names segment `dev`, but no [[segment]] has that name"),
    ];
    bad_port_term: "bad-port-term" => [
        ("policy.toml:4:20", "bad port term \"tcp/http\": expected tcp/N, tcp/N-M, udp/N, udp/N-M, tcp, udp, icmp or any"),
    ];
    reversed_port_range: "reversed-range" => [
        ("policy.toml:4:10", "the range 9100-9000 runs backwards; write 9000-9100"),
    ];
    port_out_of_range: "port-out-of-range" => [
        ("policy.toml:2:31", "bad port term \"tcp/65536\": port 65536 is out of range; ports are 1 to 65535"),
    ];
    bad_cidr: "bad-cidr" => [("peers.toml:3:25", "bad CIDR \"10.8.0.0/33\"")];
    ipv4_mapped_cidr: "ipv4-mapped-cidr" => [(
        "peers.toml:3:25",
        "CIDR ::ffff:10.8.0.0/112 is an IPv4-mapped IPv6 prefix, and an IPv6 prefix never claims an IPv4 address; write the IPv4 CIDR 10.8.0.0/16 instead",
    )];
    cidr_with_host_bits: "cidr-host-bits" => [
        ("peers.toml:3:10", "CIDR 10.8.4.1/24 has host bits set; did you mean 10.8.4.0/24?"),
    ];
    empty_selector: "empty-selector" => [("policy.toml:2:8", "`from` is an empty selector")];
    bad_selector_value: "bad-selector-value" => [(
        "segments.toml:3:18",
        "the selector value for label `env` must be a string or a non-empty list of strings",
    )];
    glob_with_dot_dot: "bad-glob" => [(
        "workloads.toml:3:10",
        "bad cgroup glob \"user.slice/../system.slice\": path segment `..` is not allowed",
    )];
    absolute_glob: "absolute-glob" => [
        ("workloads.toml:3:10", "it must be relative to the managed cgroup root: remove the leading `/`"),
    ];
    two_settings_in_different_files: "two-settings" => [(
        "b/settings.toml:2:1",
        "[settings] appears more than once in the policy; the first one is at a/settings.toml:1:1",
    )];
    unknown_entity: "unknown-entity" => [
        ("policy.toml:2:8", "unknown entity `@hosts`; the entities are @host, @world and @any"),
    ];
    bad_address: "bad-address" => [("nodes.toml:3:28", "bad address \"10.10.1.300\"")];
    ipv4_mapped_address: "ipv4-mapped-address" => [(
        "nodes.toml:3:31",
        "address ::ffff:10.10.1.11 is an IPv4-mapped IPv6 address, and IPv4 and IPv6 are separate spaces; write the IPv4 address 10.10.1.11 instead",
    )];
    undefined_node: "undefined-node" => [
        ("inventory.toml:7:18", "`nodes` names node `db-2`, but no [[node]] has that name"),
    ];
    bad_mode: "bad-mode" => [
        ("segments.toml:4:8", "unknown mode \"Audit\"; expected \"enforce\" or \"audit\""),
    ];
    bad_packet_sockets: "bad-packet-sockets" => [
        ("segments.toml:4:18", "unknown packet_sockets value \"permit\"; expected \"deny\" or \"allow\""),
    ];
    missing_ports: "missing-ports" => [("policy.toml:1:1", "[[deny]] is missing the required key `ports`")];
    empty_ports: "empty-ports" => [("policy.toml:4:9", "`ports` in [[allow]] must not be empty")];
    wrong_table_shape: "wrong-table-shape" => [("nodes.toml:1:1", "`node` must be written as [[node]]")];
    wrong_value_type: "wrong-type" => [
        ("nodes.toml:3:13", "[[node]] `addresses`: invalid type: string \"10.10.1.11\""),
    ];
    duplicate_address: "duplicate-address" => [(
        "nodes.toml:7:14",
        "address 10.10.1.11 is already an address of node `app-1` at nodes.toml:3:14",
    )];
    no_policy_files: "no-policy-files" => [("", "no *.toml file below this directory")];
    many_errors_in_one_run: "many-errors" => [
        ("a.toml:2:8", "unknown mode \"strict\""),
        ("b.toml:3:6", "`to` names segment `api`, but no [[segment]] has that name"),
        ("b.toml:4:10", "bad port term \"tcp/0\": port 0 is not a port"),
        ("b.toml:8:6", "unknown entity `@word`"),
    ];
}

#[test]
fn every_fixture_has_a_case() {
    let mut dirs: Vec<String> = fs::read_dir(fixtures())
        .expect("tests/bad-policies")
        .map(|entry| {
            entry
                .expect("fixture entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut cases: Vec<&str> = CASES.to_vec();
    cases.sort_unstable();
    assert_eq!(
        dirs, cases,
        "every directory in tests/bad-policies needs a case, and vice versa"
    );
}

#[test]
fn whole_directory_errors_carry_no_location() {
    let errors = load_dir(&fixtures().join("no-policy-files")).expect_err("no policy files");
    let [error] = errors.as_slice() else {
        panic!("{errors}")
    };
    assert!(error.location().is_none());
    assert!(matches!(
        error.kind(),
        PolicyErrorKind::NoPolicyFiles { .. }
    ));
}
