//! Revocation: a policy that no longer allows an established flow takes it back. Its next packets
//! are dropped and it is reported as revoked within a second of the policy change, and the local
//! socket is aborted so the application learns at once. A reload that leaves the flow allowed does
//! not touch it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use enforcer_tests::{Lab, Listener, Stream, events, require_privileges};
use serde_json::Value;

/// `web` may open `tcp/7000` to the peer and accept `tcp/8080` from it, as long as `open` says so;
/// `tcp/7001` is the unrelated rule a reload adds.
fn policy(open: bool, unrelated: bool) -> String {
    let mut policy = String::from(
        r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }
"#,
    );
    if open {
        policy.push_str(
            r#"
[[allow]]
from = "web-seg"
to = "@world"
ports = ["tcp/7000"]

[[allow]]
from = "@world"
to = "web-seg"
ports = ["tcp/8080"]
"#,
        );
    }
    if unrelated {
        policy.push_str(
            r#"
[[allow]]
from = "web-seg"
to = "@world"
ports = ["tcp/7001"]
"#,
        );
    }
    policy
}

/// How long a stream runs unless something ends it.
const LENGTH: Duration = Duration::from_secs(30);
/// The issue's bound between a policy change and the flow being stopped and reported.
const WITHIN: Duration = Duration::from_secs(1);

fn reload(lab: &Lab, open: bool, unrelated: bool) -> (Instant, SystemTime) {
    lab.policy_dir()
        .write("main.toml", &policy(open, unrelated));
    let output = lab.instance().command("reload");
    assert!(
        output.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (Instant::now(), SystemTime::now())
}

fn millis(time: SystemTime) -> u64 {
    u64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The revoked-flow event of the flow to `port`, and how long after `since` it was decided.
fn revoked_event(lab: &Lab, port: u16, since: SystemTime) -> (Value, Duration) {
    let ev = lab.daemon().wait_for_event(WITHIN * 3, |e| {
        events::try_field(e, "unmapped.revoked") == Some(&Value::Bool(true))
            && events::try_field(e, "dst_endpoint.port").and_then(Value::as_u64)
                == Some(u64::from(port))
    });
    let decided = events::u64_at(&ev, "time");
    let after = Duration::from_millis(decided.saturating_sub(millis(since)));
    (ev, after)
}

#[test]
fn an_outbound_flow_survives_an_unrelated_reload_and_a_revoked_one_is_aborted_within_a_second() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", &policy(true, false))
        .start();
    let _echo = Listener::start_echo(None, lab.server_ns().name(), lab.server4(), 7000);
    let web = lab.cgroup_root().join("web");
    let stream = Stream::start(
        Some(&web),
        lab.client_ns().name(),
        lab.server4(),
        7000,
        LENGTH,
    );

    reload(&lab, true, true);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !stream.ended(),
        "an unrelated reload ended the stream: {:?}",
        stream.wait_ended(Duration::ZERO)
    );

    let (changed, changed_wall) = reload(&lab, false, true);
    let (result, exchanged, ended) = stream.wait_ended(WITHIN * 3);
    assert_eq!(
        result, "ECONNABORTED",
        "the revoked socket was not aborted (exchanged {exchanged})"
    );
    assert!(
        ended.duration_since(changed) < WITHIN,
        "the stream stopped {:?} after the policy changed",
        ended.duration_since(changed)
    );
    let (ev, after) = revoked_event(&lab, 7000, changed_wall);
    assert!(after < WITHIN, "reported {after:?} after the change");
    events::assert_names(&ev, "web", "@world");
    assert_eq!(events::u64_at(&ev, "connection_info.direction_id"), 2);
    assert_eq!(events::str_at(&ev, "unmapped.layer"), "packet");
    assert_aborted(&lab);
}

/// The daemon aborted a revoked flow's socket (sock_diag `SOCK_DESTROY`).
fn assert_aborted(lab: &Lab) {
    let deadline = Instant::now() + WITHIN;
    while !lab
        .daemon()
        .stderr()
        .contains("aborted the socket of a revoked flow")
    {
        assert!(
            Instant::now() < deadline,
            "no socket aborted:\n{}",
            lab.daemon().stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_inbound_flow_is_revoked_where_it_arrives() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", &policy(true, false))
        .start();
    let web = lab.cgroup_root().join("web");
    let _echo = Listener::start_echo(Some(&web), lab.client_ns().name(), lab.client4(), 8080);
    // The peer runs no enforcer: only the node's ingress can take the flow back.
    let stream = Stream::start(None, lab.server_ns().name(), lab.client4(), 8080, LENGTH);
    std::thread::sleep(Duration::from_millis(200));
    let (_, changed_wall) = reload(&lab, false, false);
    let (ev, after) = revoked_event(&lab, 8080, changed_wall);
    assert!(after < WITHIN, "reported {after:?} after the change");
    events::assert_names(&ev, "@world", "web");
    assert_eq!(events::u64_at(&ev, "connection_info.direction_id"), 1);
    // The peer's bytes are no longer answered: its read times out (or the aborted socket's
    // reset reaches it first).
    assert_aborted(&lab);
    let (result, _, _) = stream.wait_ended(Duration::from_secs(5));
    assert_ne!(result, "ok", "the revoked inbound flow kept flowing");
}

/// `web` may open `tcp/7000` to `db`, a segment of its own at the server's address; `tcp/7001`
/// is the unrelated rule a reload adds.
fn segmented_server_policy(unrelated: bool) -> String {
    let mut policy = String::from(
        r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[peer]]
name = "db"
cidrs = ["${SERVER4}/32"]
labels = { segment = "db" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "db-seg"
select = { segment = "db" }

[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/7000", "udp/7000"]
"#,
    );
    if unrelated {
        policy
            .push_str("\n[[allow]]\nfrom = \"web-seg\"\nto = \"db-seg\"\nports = [\"tcp/7001\"]\n");
    }
    policy
}

/// The answer to a request the workload sent reaches the node's interface before its socket: an
/// interface layer that took an answer of a replaced generation for a new arrival would judge it
/// from the server to the node, which a segmented server may not reach, and drop it.
#[test]
fn an_answer_that_crosses_a_reload_reaches_the_workload() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", &segmented_server_policy(false))
        .start();
    let _late = Listener::start_late_udp(lab.server_ns().name(), lab.server4(), 7000);
    std::thread::scope(|scope| {
        let request = scope.spawn(|| lab.probe("web").udp_request(lab.server4(), 7000));
        // The request is out; its answer comes a second later, after the reload.
        std::thread::sleep(Duration::from_millis(300));
        lab.policy_dir()
            .write("main.toml", &lab.expand(&segmented_server_policy(true)));
        let output = lab.instance().command("reload");
        assert!(
            output.status.success(),
            "reload failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let outcome = request.join().expect("the probe thread");
        assert!(
            outcome.is_ok(),
            "the answer was dropped after the reload: {outcome}\n{}",
            lab.daemon().stderr()
        );
    });
}
