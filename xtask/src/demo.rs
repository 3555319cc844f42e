//! `cargo xtask demo`: the example policy enforced on a lab of two hosts on this machine.
//!
//! `app-1` and `db-1` of `policies/` become two network namespaces joined by a veth pair; the
//! workloads of app-1 are processes in cgroups below a fresh cgroup root, which is all the daemon
//! is attached to. Nothing outside the lab is touched.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    command, exec,
    lab::{Lab, catch_interrupt, check_interrupt},
    say, setup,
};

const APP: &str = "10.10.1.11";
const DB: &str = "10.10.3.11";
const DB6: &str = "fd00:10:3::11";

/// One attempt of the demo and what the policy says about it.
struct Attempt {
    who: &'static str,
    cgroup: &'static str,
    addr: &'static str,
    port: u16,
    expect_ok: bool,
    why: &'static str,
}

const ATTEMPTS: [Attempt; 6] = [
    Attempt {
        who: "api",
        cgroup: "system.slice/api.service",
        addr: DB,
        port: 5432,
        expect_ok: true,
        why: "the api tier may query the ledger database (rule api-tier → finance tcp/5432)",
    },
    Attempt {
        who: "web",
        cgroup: "system.slice/nginx.service",
        addr: DB,
        port: 5432,
        expect_ok: false,
        why: "a web server reaching straight for the database is a lateral move; an explicit deny forbids it",
    },
    Attempt {
        who: "web",
        cgroup: "system.slice/nginx.service",
        addr: DB6,
        port: 5432,
        expect_ok: false,
        why: "the same attempt over IPv6 meets the same policy",
    },
    Attempt {
        who: "dev-shell",
        cgroup: "user.slice/user-1000.slice/session-1.scope",
        addr: DB,
        port: 5432,
        expect_ok: false,
        why: "developers never touch production finance data (deny dev → finance beats every allow)",
    },
    Attempt {
        who: "api",
        cgroup: "system.slice/api.service",
        addr: DB,
        port: 22,
        expect_ok: false,
        why: "no rule lets the api tier SSH into the database host: finance members are isolated by default",
    },
    Attempt {
        who: "node-exporter",
        cgroup: "system.slice/node-exporter.service",
        addr: DB,
        port: 5432,
        expect_ok: true,
        why: "monitoring is in audit mode: the connection goes through, and is reported as what would have been denied",
    },
];

/// Runs the demo.
///
/// # Errors
/// When set-up, the build or the lab fails, or enforcement does not behave as the policy says.
pub fn run(workspace: &Path) -> anyhow::Result<()> {
    setup::run(workspace)?;
    say("building the daemon and the probe");
    exec(
        "cargo build",
        command("cargo").current_dir(workspace).args([
            "build",
            "--quiet",
            "-p",
            "enforcer",
            "-p",
            "enforcer-tests",
            "--bins",
        ]),
    )?;
    catch_interrupt();
    let bin = workspace.join("target/debug");
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let tag = format!("enforcer-demo-{}", std::process::id());
    let app_ns = format!("{tag}-app");
    let db_ns = format!("{tag}-db");
    let pid = std::process::id();
    let (veth_app, veth_db) = (format!("edm{pid}a"), format!("edm{pid}b"));

    say(
        "building the lab: hosts app-1 and db-1 as network namespaces, app-1's workloads as cgroups",
    );
    let mut lab = Lab::new(&tag)?;
    for attempt in &ATTEMPTS {
        lab.cgroup(attempt.cgroup)?;
    }
    lab.netns(&app_ns)?;
    lab.netns(&db_ns)?;
    lab.link(
        (
            &app_ns,
            &veth_app,
            &[&format!("{APP}/24"), "fd00:10:1::11/64"],
        ),
        (
            &db_ns,
            &veth_db,
            &[&format!("{DB}/24"), &format!("{DB6}/64")],
        ),
    )?;
    for (addr, port) in [(DB, 5432), (DB6, 5432), (DB, 22)] {
        let name = format!("listener {addr} {port}");
        let log = scratch
            .path()
            .join(format!("listen-{port}-{}.log", addr.len()));
        lab.spawn(
            &name,
            Command::new(bin.join("enforcer-probe"))
                .args(["--netns", &db_ns, "tcp-listen", addr])
                .arg(port.to_string()),
            &log,
        )?;
        wait_for(&log, "listening", Duration::from_secs(5))
            .with_context(|| format!("{name} did not start"))?;
    }

    let events = scratch.path().join("events.jsonl");
    let ready = scratch.path().join("ready");
    let daemon_log = scratch.path().join("daemon.log");
    let bpffs = scratch.path().join("bpffs");
    say(
        "starting: enforcer run --policy policies --node app-1 --cgroup-root <lab cgroup> --events <file>",
    );
    lab.spawn(
        "enforcer",
        Command::new(bin.join("enforcer"))
            .current_dir(workspace)
            .args([
                "run",
                "--policy",
                "policies",
                "--node",
                "app-1",
                "--cgroup-root",
            ])
            .arg(&lab.cgroup_root)
            .arg("--events")
            .arg(&events)
            .arg("--ready-file")
            .arg(&ready)
            // An instance of the demo's own, gone with it: nothing stays pinned on this machine.
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--state-dir")
            .arg(scratch.path().join("state"))
            .args(["--on-exit", "detach"]),
        &daemon_log,
    )?;
    if wait_for(&ready, "", Duration::from_secs(15)).is_err() {
        bail!(
            "the daemon did not become ready:\n{}",
            fs::read_to_string(&daemon_log).unwrap_or_default()
        );
    }
    println!();

    let mut surprises = Vec::new();
    for attempt in &ATTEMPTS {
        check_interrupt()?;
        let cgroup = lab.cgroup_root.join(attempt.cgroup);
        let out = Command::new(bin.join("enforcer-probe"))
            .arg("--cgroup")
            .arg(&cgroup)
            .args(["--netns", &app_ns, "tcp-connect", attempt.addr])
            .arg(attempt.port.to_string())
            .output()
            .context("running the probe")?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let ok = out.status.success();
        let target = if attempt.addr.contains(':') {
            format!("[{}]:{}", attempt.addr, attempt.port)
        } else {
            format!("{}:{}", attempt.addr, attempt.port)
        };
        println!(
            "  {:<14} → db-1 {target:<24} {}",
            attempt.who,
            if ok { "CONNECTED" } else { "BLOCKED" }
        );
        println!("      {}", attempt.why);
        println!("      probe said: {line}");
        if ok != attempt.expect_ok {
            surprises.push(format!("{} → {target}: {line}", attempt.who));
        }
    }
    thread::sleep(Duration::from_millis(500));
    lab.stop("enforcer")?;
    println!();
    explain(&events)?;
    println!(
        "\nThe daemon's last words (verdict counters):\n{}",
        fs::read_to_string(&daemon_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("counters"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(lab);
    // The daemon mounted bpffs there (and removed its pins on exit); the scratch directory goes
    // only once it is unmounted.
    let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
    if !surprises.is_empty() {
        bail!(
            "enforcement differed from the policy: {}",
            surprises.join("; ")
        );
    }
    say("demo complete: every verdict matched the policy");
    Ok(())
}

/// Prints each event as a sentence, then one in full.
fn explain(events: &PathBuf) -> anyhow::Result<()> {
    let text = fs::read_to_string(events).context("reading the events file")?;
    let parsed: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    println!(
        "The enforcer reported {} event(s), one OCSF 1.1.0 Network Activity object per line:",
        parsed.len()
    );
    for event in &parsed {
        let verdict = if event["disposition_id"] == 17 {
            "AUDIT "
        } else {
            "DENIED"
        };
        let dst_ip = event["dst_endpoint"]["ip"].as_str().unwrap_or("?");
        let dst = if dst_ip.contains(':') {
            format!("[{dst_ip}]:{}", event["dst_endpoint"]["port"])
        } else {
            format!("{dst_ip}:{}", event["dst_endpoint"]["port"])
        };
        println!(
            "  {verdict} {} ({}, pid {} {}) → {} {dst}  rule {} \"{}\"",
            event["src_endpoint"]["name"].as_str().unwrap_or("?"),
            event["src_endpoint"]["ip"].as_str().unwrap_or("?"),
            event["actor"]["process"]["pid"],
            event["actor"]["process"]["name"].as_str().unwrap_or("?"),
            event["dst_endpoint"]["name"].as_str().unwrap_or("?"),
            event["firewall_rule"]["uid"].as_str().unwrap_or("?"),
            event["firewall_rule"]["name"].as_str().unwrap_or("?"),
        );
    }
    if let Some(first) = parsed.first() {
        println!("\nThe first one in full, as a SIEM receives it:");
        println!(
            "{}",
            serde_json::to_string_pretty(first).unwrap_or_default()
        );
        println!(
            "\nclass_uid 4001 is OCSF Network Activity; activity 5 / disposition 2 mean the kernel refused the\n\
             connection (activity 1 / disposition 17: audit, allowed and logged). firewall_rule.uid points at\n\
             the rule's file:line in policies/ (or default-deny:<segment> when isolation decided), and\n\
             firewall_rule.version is the content hash of the policy in force."
        );
    }
    Ok(())
}

/// Waits until `path` exists and contains `needle`.
fn wait_for(path: &Path, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        check_interrupt()?;
        if fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {}", path.display())
}
