//! The daemon never judges or feeds itself: run inside the managed tree, in the segmented identity
//! of its own node, it reports exactly the denials of the workloads (no event of its own, no storm),
//! logs no error loop, and still honours SIGTERM at once.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Proto,
    events::{self, Verdict},
    require_privileges,
};
use serde_json::Value;

/// An orderly shutdown on SIGTERM must take no longer than this.
const SIGTERM_WITHIN: Duration = Duration::from_secs(1);
/// Time for a self-feeding event loop, if there is one, to show.
const STORM_WINDOW: Duration = Duration::from_secs(1);
/// Four events are well below this; a storm is far above it.
const MAX_EVENTS_BYTES: u64 = 64 * 1024;

const PORT: u16 = 7301;

#[test]
fn the_daemon_inside_the_managed_tree_with_a_segmented_node_reports_only_the_workloads() {
    if !require_privileges() {
        return;
    }
    // The node's identity (which the daemon's own cgroup has: no workload claims it) is in a
    // segment with no allow rule, as in `policies/`.
    let mut lab = Lab::builder()
        .workload("app")
        .workload("free")
        .daemon_cgroup("daemon")
        .node_labels(r#"{ role = "client", segment = "nodes" }"#)
        .server_addr("${WORLD4}")
        .policy(
            "main.toml",
            r#"
[[workload]]
name = "app"
cgroup = "app"
labels = { segment = "app" }

[[workload]]
name = "free"
cgroup = "free"
labels = { app = "free" }

[[segment]]
name = "nodes-seg"
select = { segment = "nodes" }

[[segment]]
name = "app-seg"
select = { segment = "app" }
"#,
        )
        .start();
    let daemon_pid = lab.daemon().pid().expect("the daemon runs");
    // /proc/PID/cgroup names the cgroup from the mount's root: ".../<managed root>/daemon".
    let root_name = lab
        .cgroup_root()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a named managed root")
        .to_owned();
    let cgroup_line = fs::read_to_string(format!("/proc/{daemon_pid}/cgroup")).unwrap_or_default();
    assert!(
        lab.daemon_cgroup().is_some()
            && cgroup_line
                .trim()
                .ends_with(&format!("/{root_name}/daemon")),
        "the daemon does not run in <managed root>/daemon: /proc/{daemon_pid}/cgroup is {cgroup_line:?}"
    );

    let server = lab.server4();
    let _udp = lab.listen(Proto::Udp, server, PORT);
    let _tcp = lab.listen(Proto::Tcp, server, PORT);
    let world: IpAddr = lab.ip("${WORLD4}");
    let open = lab.listen(Proto::Tcp, world, PORT);

    // Control: neither end segmented, so allowed (and not reported).
    lab.probe("free").tcp_connect(world, PORT).assert_ok();
    open.wait_for_peers(1, EVENT_TIMEOUT);

    // Unbound sources: each event needs the source address looked up.
    let mut pids = Vec::new();
    for _ in 0..3 {
        let outcome = lab.probe("app").udp_sendto(server, PORT);
        outcome.assert_denied();
        pids.push(outcome.pid);
    }
    let outcome = lab.probe("app").tcp_connect(server, PORT);
    outcome.assert_denied();
    pids.push(outcome.pid);

    lab.daemon().wait_for_events(pids.len(), EVENT_TIMEOUT);
    thread::sleep(STORM_WINDOW);
    let size = fs::metadata(lab.daemon().events_path()).map_or(0, |m| m.len());
    assert!(
        size <= MAX_EVENTS_BYTES,
        "event storm: {size} bytes of events for {} denials; daemon stderr (tail):\n{}",
        pids.len(),
        tail(&lab.daemon().stderr(), 20)
    );
    let evs = lab.daemon().events();
    let actor = |ev: &Value| events::try_field(ev, "actor.process.pid").and_then(Value::as_u64);
    let own: Vec<&Value> = evs
        .iter()
        .filter(|e| actor(e) == Some(u64::from(daemon_pid)))
        .collect();
    assert!(
        own.is_empty(),
        "{} event(s) report the daemon itself: {:#}",
        own.len(),
        own[0]
    );
    let mut reported: Vec<u64> = evs.iter().filter_map(actor).collect();
    reported.sort_unstable();
    let mut expected: Vec<u64> = pids.iter().copied().map(u64::from).collect();
    expected.sort_unstable();
    assert_eq!(
        (evs.len(), reported),
        (expected.len(), expected),
        "exactly the workload's denials, each once: {evs:#?}"
    );
    for ev in &evs {
        events::assert_verdict(ev, Verdict::Denied);
        events::assert_names(ev, "app", "@world");
    }

    let asked = Instant::now();
    let status = lab.daemon_mut().stop().expect("the daemon was running");
    let took = asked.elapsed();
    assert!(
        took <= SIGTERM_WITHIN,
        "the daemon took {took:?} to stop on SIGTERM ({status})"
    );
    assert!(status.success(), "SIGTERM is an orderly shutdown: {status}");

    let stderr = lab.daemon().stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "the daemon logged errors:\n{stderr}");
    let mut repeated: BTreeMap<&str, usize> = BTreeMap::new();
    for line in stderr.lines().filter(|l| l.contains("WARN")) {
        *repeated.entry(message(line)).or_default() += 1;
    }
    repeated.retain(|_, n| *n > 1);
    assert!(
        repeated.is_empty(),
        "repeated warnings {repeated:#?} in:\n{stderr}"
    );
}

/// A log line without its timestamp (everything before the level).
fn message(line: &str) -> &str {
    line.find("WARN").map_or(line, |i| &line[i..])
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
