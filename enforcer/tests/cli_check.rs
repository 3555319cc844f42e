//! `enforcer check`: a summary and exit 0 for a valid policy; every error as file:line:column and
//! exit 1 for a broken one.

use std::{path::PathBuf, process::Command};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

fn check(dir: &PathBuf) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(["check", "--node", "app-1"])
        .arg(dir)
        .output()
        .expect("run enforcer check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_policy_is_summarised() {
    let (ok, stdout, stderr) = check(&workspace().join("policies"));
    assert!(ok, "{stderr}");
    for expected in [
        "identities: 4 nodes, 5 workloads, 3 peers",
        "finance: db-1, ledger",
        "monitoring (mode audit): mon-1, node-exporter",
        "rules:      10 (8 allow, 2 deny); mode enforce; failsafe inbound [tcp/22]",
        "as node app-1 (local processes default to app-1)",
        "rule entries",
        ": OK",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn a_broken_policy_lists_every_error_and_fails() {
    let dir = workspace().join("enforcer/tests/bad-policies/many-errors");
    let (ok, stdout, stderr) = check(&dir);
    assert!(!ok, "accepted:\n{stdout}");
    let located = stderr
        .lines()
        .filter(|l| {
            l.split(':')
                .nth(1)
                .zip(l.split(':').nth(2))
                .is_some_and(|(line, col)| {
                    line.parse::<u32>().is_ok() && col.parse::<u32>().is_ok()
                })
        })
        .count();
    assert!(
        located >= 2,
        "expected several file:line:column errors:\n{stderr}"
    );
    assert!(
        stderr.contains("the policy is invalid; nothing was loaded"),
        "{stderr}"
    );
}

/// A segment that exempts its members from the packet-socket ban, and an IPv6 prefix that would
/// cover the IPv4-mapped block.
const EXEMPT_AND_V6: &str = r#"
[[node]]
name = "app-1"

[[workload]]
name = "sniffer"
cgroup = "sniffer"
labels = { capture = "yes" }

[[workload]]
name = "ledger"
cgroup = "ledger"
labels = { capture = "yes", segment = "finance" }

[[workload]]
name = "debugger"
cgroup = "debugger"
labels = { debug = "yes" }

[[peer]]
name = "anywhere-v6"
cidrs = ["::/0", "2001:db8::/32"]

[[segment]]
name = "capture"
select = { capture = "yes" }
packet_sockets = "allow"

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "debug"
select = { debug = "yes" }
mode = "audit"
packet_sockets = "allow"
"#;

#[test]
fn exempt_segments_and_ipv6_prefixes_over_ipv4_space_are_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("policy.toml"), EXEMPT_AND_V6).expect("write policy");
    let (ok, stdout, stderr) = check(&dir.path().to_owned());
    assert!(ok, "{stderr}");
    for expected in [
        // `ledger` is also in `finance`, which keeps the ban: it is not exempt.
        "  capture (packet sockets allowed, but not for ledger: another of their segments denies them): sniffer, ledger\n",
        "  finance: ledger\n",
        "  debug (mode audit; packet sockets allowed): debugger\n",
        "warning: policy.toml:20:1: peer `anywhere-v6`: the IPv6 prefix ::/0 does not claim IPv4 \
         addresses (IPv4 and IPv6 are separate spaces), which need their own IPv4 CIDR in \
         `cidrs`; it is compiled as 96 prefixes around ::ffff:0:0/96\n",
        ": OK",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert_eq!(stdout.matches("warning:").count(), 1, "{stdout}");
}
