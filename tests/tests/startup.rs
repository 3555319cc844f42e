//! `enforcer run` refuses a broken policy (fail closed: a typo must never start a daemon with a
//! policy other than the one written), naming the file, line and column; and it starts and stops
//! cleanly with a good one.

use std::time::Duration;

use enforcer_tests::{CgroupDir, Daemon, DaemonArgs, NetNs, PolicyDir, require_privileges};

/// A refusal is a parse-time decision; anything slower means the daemon went on to do work first.
const REFUSAL_WITHIN: Duration = Duration::from_secs(5);

/// Starts the daemon on `files`, expects it to refuse, and returns its stderr.
fn refused(files: &[(&str, &str)]) -> String {
    let policy = PolicyDir::new();
    for (name, content) in files {
        policy.write(name, content);
    }
    let cgroups = CgroupDir::new();
    // A namespace of the test's own: the daemon covers its interfaces, never the machine's.
    let ns = NetNs::new();
    let ns_path = std::path::Path::new("/run/netns").join(ns.name());
    let args = DaemonArgs {
        policy: policy.path(),
        node: "client-host",
        cgroup_root: cgroups.path(),
        netns: Some(&ns_path),
        cgroup: None,
        extra: &[],
        instance: None,
    };
    let Err(exit) = Daemon::try_start(&args) else {
        panic!("enforcer started with a broken policy: {files:#?}");
    };
    assert!(!exit.status.success(), "exit status {}", exit.status);
    assert!(
        exit.elapsed < REFUSAL_WITHIN,
        "took {:?} to refuse the policy",
        exit.elapsed
    );
    assert!(
        !exit.ready_file_created,
        "a refused daemon must not signal ready"
    );
    exit.stderr
}

/// Whether `stderr` names `file:line:` followed by a column number.
fn names_location(stderr: &str, file: &str, line: u32) -> bool {
    let needle = format!("{file}:{line}:");
    stderr.match_indices(&needle).any(|(i, _)| {
        stderr[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn unknown_key_is_refused_with_file_line_column() {
    if !require_privileges() {
        return;
    }
    let stderr = refused(&[(
        "bad.toml",
        "[[peer]]\nname = \"vpn\"\ncolour = \"red\"\ncidrs = [\"10.8.0.0/16\"]\nlabels = { zone = \"vpn\" }\n",
    )]);
    assert!(
        stderr.contains("bad.toml:3:1"),
        "stderr lacks bad.toml:3:1:\n{stderr}"
    );
}

#[test]
fn toml_syntax_error_is_refused_with_location() {
    if !require_privileges() {
        return;
    }
    let stderr = refused(&[(
        "bad.toml",
        "[[peer]]\nname = \"vpn\"\ncidrs = [\"10.8.0.0/16\"\nlabels = { zone = \"vpn\" }\n",
    )]);
    assert!(
        (3..=4).any(|line| names_location(&stderr, "bad.toml", line)),
        "stderr lacks bad.toml:3:C or bad.toml:4:C:\n{stderr}"
    );
}

#[test]
fn inverted_port_range_is_refused_with_location() {
    if !require_privileges() {
        return;
    }
    let stderr = refused(&[(
        "rules/bad.toml",
        "[[allow]]\nfrom = \"@host\"\nto = \"@world\"\nports = [\"tcp/90-80\"]\n",
    )]);
    assert!(
        names_location(&stderr, "bad.toml", 4),
        "stderr lacks bad.toml:4:C:\n{stderr}"
    );
}

#[test]
fn unknown_segment_in_rule_is_refused_with_location() {
    if !require_privileges() {
        return;
    }
    let stderr = refused(&[(
        "bad.toml",
        "[[allow]]\nfrom = \"@host\"\nto = \"no-such-segment\"\nports = [\"any\"]\n",
    )]);
    assert!(
        names_location(&stderr, "bad.toml", 3),
        "stderr lacks bad.toml:3:C:\n{stderr}"
    );
}

#[test]
fn duplicate_name_is_refused_naming_both_places() {
    if !require_privileges() {
        return;
    }
    let table =
        "\n[[peer]]\nname = \"vpn\"\ncidrs = [\"10.8.0.0/16\"]\nlabels = { zone = \"vpn\" }\n";
    let stderr = refused(&[("a.toml", table), ("b.toml", table)]);
    for file in ["a.toml", "b.toml"] {
        assert!(
            (2..=3).any(|line| names_location(&stderr, file, line)),
            "stderr does not name the {file} occurrence:\n{stderr}"
        );
    }
}

#[test]
fn good_policy_starts_and_stops_on_sigterm() {
    if !require_privileges() {
        return;
    }
    let policy = PolicyDir::new();
    policy.write(
        "good.toml",
        "[[peer]]\nname = \"vpn\"\ncidrs = [\"10.8.0.0/16\"]\nlabels = { zone = \"vpn\" }\n",
    );
    let cgroups = CgroupDir::new();
    let ns = NetNs::new();
    let ns_path = std::path::Path::new("/run/netns").join(ns.name());
    let mut daemon = Daemon::start(&DaemonArgs {
        policy: policy.path(),
        node: "client-host",
        cgroup_root: cgroups.path(),
        netns: Some(&ns_path),
        cgroup: None,
        extra: &[],
        instance: None,
    });
    assert!(daemon.pid().is_some());
    let status = daemon.stop().expect("it was running");
    assert!(
        status.success(),
        "SIGTERM is an orderly shutdown, got {status}"
    );
}
