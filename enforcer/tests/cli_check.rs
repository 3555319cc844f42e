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
