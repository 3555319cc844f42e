//! The cross-VM checks, on the example policy (`policies/`): db-1 is a member of `finance` and
//! isolated by default, app-1 belongs to no segment, peer (10.10.7.7) is `@world` and runs no
//! enforcer. Every probe on an enforcing node first moves itself into a cgroup that existed
//! before the daemon (so the verdict is the policy's, never the hold of a cgroup not yet
//! labelled): `lab-probe.service` (the node itself), `nginx.service` (the `web` workload, which
//! listens on tcp/80) or `api.service` (the `api` workload).
//!
//! Each node judges with what it can see: db-1 knows a connection from app-1 only by its address,
//! so it judges node `app-1`, whichever workload opened it there.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde_json::Value;

use super::lab::Lab;
use crate::say;

const APP: &str = "10.10.1.11";
const DB: &str = "10.10.3.11";
const PEER: &str = "10.10.7.7";
const EVENTS: &str = "/var/log/enforcer/events.jsonl";
const SIEM_LOG: &str = "/var/log/siem.log";
/// Events reach their file within the 1 s aggregation window of the lab's config; emulated guests
/// are slow, so the checks wait longer than that.
const EVENT_WAIT: Duration = Duration::from_secs(45);

#[derive(Clone, Copy)]
enum Cgroup {
    Node,
    Web,
    Api,
    /// peer has no enforcer: its probes run as they are.
    Unmanaged,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Denied,
}

/// Runs every check, reporting each; fails if any failed.
pub fn run(lab: &Lab) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut record = |name: &str, result: anyhow::Result<()>| match result {
        Ok(()) => say(&format!("PASS {name}")),
        Err(error) => {
            say(&format!("FAIL {name}: {error:#}"));
            failed.push(name.to_owned());
        }
    };

    record(
        "db-1 listens on tcp/5432 (the database stand-in)",
        listening(lab, "db-1", 5432),
    );
    record(
        "app-1 listens on tcp/80 (the web stand-in)",
        listening(lab, "app-1", 80),
    );
    record(
        "peer (@world) -> db-1 tcp/22 allowed (failsafe_inbound)",
        connect(lab, "peer", Cgroup::Unmanaged, DB, 22, Expect::Allowed),
    );
    record(
        "peer (@world) -> web on app-1 tcp/80 allowed (rule world-to-web, judged on arrival)",
        connect(lab, "peer", Cgroup::Unmanaged, APP, 80, Expect::Allowed),
    );
    record(
        "app-1 -> peer tcp/514 allowed (neither end segmented: outside the policy)",
        connect(lab, "app-1", Cgroup::Node, PEER, 514, Expect::Allowed),
    );
    record(
        "app-1 -> db-1 tcp/22 denied by app-1 (finance's default deny; the failsafe is inbound only), reported by app-1",
        connect(lab, "app-1", Cgroup::Node, DB, 22, Expect::Denied)
            .and_then(|()| event(lab, "app-1", &|e| denial_to(e, DB, 22))),
    );
    record(
        "api on app-1 -> db-1 tcp/5432: let out by app-1 (api-to-finance), refused by db-1 (it sees node app-1, not api-tier), reported by db-1",
        connect(lab, "app-1", Cgroup::Api, DB, 5432, Expect::Denied).and_then(|()| {
            event(lab, "db-1", &|e| {
                denial_to(e, DB, 5432) && field(e, "src_endpoint", "ip") == Some(APP)
            })
        }),
    );
    record(
        "db-1 -> app-1 tcp/22 denied by db-1 (finance's default deny, egress), reported by db-1",
        connect(lab, "db-1", Cgroup::Node, APP, 22, Expect::Denied)
            .and_then(|()| event(lab, "db-1", &|e| denial_to(e, APP, 22))),
    );
    record(
        "web on app-1 -> db-1 tcp/5432 denied by app-1 (deny web-never-finance), reported by app-1",
        connect(lab, "app-1", Cgroup::Web, DB, 5432, Expect::Denied).and_then(|()| {
            event(lab, "app-1", &|e| {
                denial_to(e, DB, 5432)
                    && field(e, "firewall_rule", "name") == Some("web-never-finance")
            })
        }),
    );
    record(
        "peer (@world) -> db-1 tcp/5432 denied, reported by db-1",
        connect(lab, "peer", Cgroup::Unmanaged, DB, 5432, Expect::Denied).and_then(|()| {
            event(lab, "db-1", &|e| {
                denial_to(e, DB, 5432) && field(e, "src_endpoint", "ip") == Some(PEER)
            })
        }),
    );
    record(
        "port scan peer -> db-1 (30 closed ports): lateral-movement alert (4001, severity 4, T1046) on db-1",
        scan(lab),
    );
    record(
        "SIEM: rsyslog on peer received app-1's denial (syslog sink over tcp)",
        siem(lab),
    );
    record(
        "daemon on db-1 killed with SIGKILL: peer -> db-1 tcp/5432 still denied, tcp/22 still allowed",
        killed(lab),
    );

    if failed.is_empty() {
        say("every cross-VM check passed");
        Ok(())
    } else {
        bail!("{} check(s) failed: {}", failed.len(), failed.join("; "))
    }
}

fn listening(lab: &Lab, machine: &str, port: u16) -> anyhow::Result<()> {
    let (code, out) = lab.ssh(machine, &format!("ss -Hltn 'sport = :{port}'"))?;
    if code != 0 || out.trim().is_empty() {
        bail!("nothing listens on tcp/{port} on {machine}");
    }
    Ok(())
}

/// One TCP connection attempt with `nc -z`; allowed flows get three tries (a slow emulated guest
/// can miss one), denied flows one.
fn connect(
    lab: &Lab,
    machine: &str,
    cgroup: Cgroup,
    address: &str,
    port: u16,
    expect: Expect,
) -> anyhow::Result<()> {
    let probe = format!("nc -z -w 5 {address} {port}");
    let script = match cgroup {
        Cgroup::Unmanaged => probe,
        Cgroup::Node => in_cgroup("lab-probe.service", &probe),
        Cgroup::Web => in_cgroup("nginx.service", &probe),
        Cgroup::Api => in_cgroup("api.service", &probe),
    };
    let tries = if expect == Expect::Allowed { 3 } else { 1 };
    let mut connected = false;
    for _ in 0..tries {
        connected = lab.ssh(machine, &script)?.0 == 0;
        if connected {
            break;
        }
    }
    match (expect, connected) {
        (Expect::Allowed, true) | (Expect::Denied, false) => Ok(()),
        (Expect::Allowed, false) => bail!("{machine} could not connect to {address}:{port}"),
        (Expect::Denied, true) => bail!("{machine} connected to {address}:{port}"),
    }
}

fn in_cgroup(service: &str, probe: &str) -> String {
    format!(
        "sudo sh -c 'echo $$ > /sys/fs/cgroup/system.slice/{service}/cgroup.procs && exec {probe}'"
    )
}

fn field<'a>(event: &'a Value, object: &str, key: &str) -> Option<&'a str> {
    event.get(object)?.get(key)?.as_str()
}

fn denial_to(event: &Value, address: &str, port: u16) -> bool {
    event.get("class_uid").and_then(Value::as_u64) == Some(4001)
        && field(event, "dst_endpoint", "ip") == Some(address)
        && event
            .get("dst_endpoint")
            .and_then(|d| d.get("port"))
            .and_then(Value::as_u64)
            == Some(u64::from(port))
}

/// Waits for an event matching `wanted` in `machine`'s events file.
fn event(lab: &Lab, machine: &str, wanted: &dyn Fn(&Value) -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let (_, text) = lab.ssh(machine, &format!("sudo cat {EVENTS}"))?;
        if text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|event| wanted(&event))
        {
            return Ok(());
        }
        if start.elapsed() > EVENT_WAIT {
            bail!("no such event in {machine}:{EVENTS} after {EVENT_WAIT:?}");
        }
        thread::sleep(Duration::from_secs(2));
    }
}

fn scan(lab: &Lab) -> anyhow::Result<()> {
    let (_, _) = lab.ssh(
        "peer",
        &format!("for port in $(seq 6000 6029); do nc -z -w 1 {DB} $port; done; true"),
    )?;
    event(lab, "db-1", &|e| {
        e.get("severity_id").and_then(Value::as_u64) == Some(4) && e.to_string().contains("T1046")
    })
}

fn siem(lab: &Lab) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let (_, text) = lab.ssh("peer", &format!("sudo cat {SIEM_LOG} 2>/dev/null; true"))?;
        if text
            .lines()
            .any(|line| line.contains("web-never-finance") && line.contains("app-1"))
        {
            return Ok(());
        }
        if start.elapsed() > EVENT_WAIT {
            bail!(
                "no report of app-1 naming web-never-finance in peer:{SIEM_LOG} after {EVENT_WAIT:?}"
            );
        }
        thread::sleep(Duration::from_secs(2));
    }
}

/// SIGKILL leaves no chance to clean up; the pinned programs and maps keep enforcing. systemd's
/// restart is cancelled first so that no new daemon takes over during the probe.
fn killed(lab: &Lab) -> anyhow::Result<()> {
    let (code, _) = lab.ssh(
        "db-1",
        "sudo systemctl kill -s KILL enforcer && sleep 1 && sudo systemctl stop enforcer && ! pgrep -x enforcer",
    )?;
    if code != 0 {
        bail!("the daemon on db-1 did not die or is still running");
    }
    connect(lab, "peer", Cgroup::Unmanaged, DB, 5432, Expect::Denied)?;
    connect(lab, "peer", Cgroup::Unmanaged, DB, 22, Expect::Allowed)
}
