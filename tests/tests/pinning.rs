//! Enforcement outlives the daemon: pinned programs, links and maps keep the last policy in force
//! through `kill -9`; a restarted daemon adopts them with no window, swaps in its own programs
//! and reports what the kernel decided while no daemon ran; `--on-exit detach` and `enforcer
//! detach` remove enforcement, explicitly.

use std::{
    thread,
    time::{Duration, Instant, SystemTime},
};

use enforcer_tests::{
    Daemon, DaemonArgs, EVENT_TIMEOUT, Lab, Proto, events, require_privileges,
    tight_loop::{Attempt, TightLoop, tally},
};
use serde_json::Value;

/// Port 80 is allowed, 81 denied (default deny of the web segment).
const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[allow]]
name = "web-out"
from = "web-seg"
to = "@world"
ports = ["tcp/80"]
"#;

fn lab() -> Lab {
    Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start()
}

/// Every attempt got the policy's verdict: 80 reached the server host (nothing listens there, so
/// its kernel answers with a reset: `ECONNREFUSED`), 81 was refused with `EPERM`. No listener:
/// one that cannot keep up with the loop would time connections out, which is no verdict.
fn assert_policy_held(attempts: &[Attempt]) {
    let wrong: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| (a.port == 80 && !a.allowed()) || (a.port == 81 && !a.denied()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} attempts got a wrong verdict, first: {:?}",
        wrong.len(),
        attempts.len(),
        &wrong[..wrong.len().min(5)]
    );
    let counts = tally(attempts);
    assert!(
        counts.get(&80).is_some_and(|c| c.0 > 0) && counts.get(&81).is_some_and(|c| c.1 > 0),
        "the loop made too few attempts: {counts:?}"
    );
}

fn links(status: &Value) -> Vec<(String, u64, u64)> {
    status["pinned"]["links"]
        .as_array()
        .map(|links| {
            links
                .iter()
                .map(|l| {
                    (
                        l["program"].as_str().unwrap_or_default().to_owned(),
                        l["link_id"].as_u64().unwrap_or_default(),
                        l["program_id"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The milliseconds an event covers: its attempt's time, or for an aggregated event the span
/// from its first to its last repeat.
fn covered_millis(ev: &Value) -> std::ops::RangeInclusive<u64> {
    let time = events::u64_at(ev, "time");
    let start = ev["start_time"].as_u64().unwrap_or(time);
    let end = ev["end_time"].as_u64().unwrap_or(time);
    start..=end
}

#[test]
fn kill_9_keeps_the_policy_and_a_restart_adopts_it_with_no_gap() {
    if !require_privileges() {
        return;
    }
    let mut lab = lab();
    let server = lab.server4();
    lab.start_daemon();
    lab.probe("web")
        .tcp_connect(server, 80)
        .assert_errno("ECONNREFUSED");
    lab.probe("web").tcp_connect(server, 81).assert_denied();
    let before = lab.instance().status();
    let links_before = links(&before);
    // Eleven cgroup programs, the three BPF LSM ones where the kernel runs them, and the
    // interface layer's two on the lab's one interface where the kernel has tcx links.
    let daemon = lab.daemon();
    let expected = 11
        + if daemon.lsm_loaded() { 3 } else { 0 }
        + if daemon.interface_layer_loaded() {
            2
        } else {
            0
        };
    assert_eq!(links_before.len(), expected, "{before:#}");

    let web = lab.cgroups().path().join("web");
    let probes = TightLoop::start(
        &web,
        lab.client_ns().name(),
        Duration::from_secs(14),
        server,
        &[80, 81],
    );
    thread::sleep(Duration::from_secs(1));
    lab.daemon_mut().kill9();
    let killed_at = SystemTime::now();
    let killed = Instant::now();
    // No daemon for 10 s: the pins alone enforce, and say so.
    let down = lab.instance().status();
    assert_eq!(down["daemon_attached"], false, "{down:#}");
    assert_eq!(down["enforcing"], true, "{down:#}");
    thread::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed()));
    let restarted_at = SystemTime::now();
    lab.stop_daemon();
    lab.start_daemon();
    let attempts = probes.finish();
    assert_policy_held(&attempts);

    let stderr = lab.daemon().stderr();
    // The cgroup and LSM links; the interface layer's are counted apart.
    let adopted = 11 + if lab.daemon().lsm_loaded() { 3 } else { 0 };
    assert!(
        stderr.contains(&format!("adopted={adopted} ")) && stderr.contains("attached=0"),
        "the restarted daemon must swap its programs into the pinned links:\n{stderr}"
    );
    let after = lab.instance().status();
    let links_after = links(&after);
    for ((name, link, program), (name_after, link_after, program_after)) in
        links_before.iter().zip(&links_after)
    {
        assert_eq!(name, name_after);
        // An LSM link cannot swap its program: the kernel gets a new link, made before the old
        // one goes. Every other link stays and swaps.
        if !name.starts_with("socket_") {
            assert_eq!(link, link_after, "{name}: the link itself stays");
        }
        assert_ne!(
            program, program_after,
            "{name}: runs the new daemon's program"
        );
    }
    assert_eq!(
        before["pinned"]["generation"], after["pinned"]["generation"],
        "the same policy on disk is adopted, not rewritten"
    );

    // What the kernel refused while no daemon ran is reported now (the repeats it counted, drained
    // at start), naming the rule that decided.
    let killed_ms = killed_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let restarted_ms = restarted_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let ev = lab.daemon().wait_for_event(EVENT_TIMEOUT * 3, |e| {
        let covered = covered_millis(e);
        events::is_to(e, server, Some(81))
            && *covered.start() < restarted_ms
            && *covered.end() > killed_ms
    });
    events::assert_rule(&ev, "default-deny:web-seg");
}

#[test]
fn on_exit_keep_leaves_enforcement_and_detach_removes_it() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let server = lab.server4();
    let _open = lab.listen(Proto::Tcp, server, 80);
    let _closed = lab.listen(Proto::Tcp, server, 81);

    let mut keep = Daemon::start(&lab.daemon_args());
    lab.probe("web").tcp_connect(server, 81).assert_denied();
    keep.stop().expect("it ran");
    lab.probe("web").tcp_connect(server, 81).assert_denied();
    let status = lab.instance().status();
    assert_eq!(status["daemon_attached"], false, "{status:#}");
    assert_eq!(status["enforcing"], true, "{status:#}");
    assert_eq!(status["recorded"]["pid"], Value::Null, "{status:#}");

    let detach = lab.instance().command("detach");
    assert!(
        detach.status.success(),
        "{}",
        String::from_utf8_lossy(&detach.stderr)
    );
    lab.probe("web").tcp_connect(server, 81).assert_ok();
    assert_eq!(lab.instance().status()["enforcing"], false);

    let mut detaching = Daemon::start(&DaemonArgs {
        extra: &["--on-exit", "detach"],
        ..lab.daemon_args()
    });
    lab.probe("web").tcp_connect(server, 81).assert_denied();
    // `enforcer detach` refuses while a daemon runs the instance.
    let refused = lab.instance().command("detach");
    assert!(!refused.status.success());
    detaching.stop().expect("it ran");
    lab.probe("web").tcp_connect(server, 81).assert_ok();
    assert_eq!(lab.instance().status()["pinned"], Value::Null);
}

#[test]
fn an_unmounted_bpffs_is_mounted() {
    if !require_privileges() {
        return;
    }
    let mut lab = lab();
    assert!(!lab.instance().bpffs_mounted());
    lab.start_daemon();
    assert!(lab.instance().bpffs_mounted());
    assert!(
        lab.daemon()
            .stderr()
            .contains("bpffs was not mounted: mounted it"),
        "{}",
        lab.daemon().stderr()
    );
}

#[test]
fn a_daemon_with_another_map_layout_moves_enforcement_to_fresh_maps_with_no_gap() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let server = lab.server4();
    let mut first = Daemon::start(&lab.daemon_args());
    let before = lab.instance().status();
    let old_layout = before["pinned"]["layout"]
        .as_str()
        .expect("layout")
        .to_owned();
    let web = lab.cgroups().path().join("web");
    let probes = TightLoop::start(
        &web,
        lab.client_ns().name(),
        Duration::from_secs(5),
        server,
        &[80, 81],
    );
    thread::sleep(Duration::from_secs(1));
    first.stop().expect("it ran");
    // Other map sizes are another layout: the pinned maps cannot be adopted as they are.
    let second = Daemon::start(&DaemonArgs {
        extra: &["--max-rules", "131072"],
        ..lab.daemon_args()
    });
    let attempts = probes.finish();
    assert_policy_held(&attempts);
    let stderr = second.stderr();
    assert!(
        stderr.contains("maps=NewLayout") && stderr.contains("adopted=11"),
        "{stderr}"
    );
    let after = lab.instance().status();
    let new_layout = after["pinned"]["layout"].as_str().expect("layout");
    assert_ne!(new_layout, old_layout);
    assert!(
        !lab.instance().bpffs().join(&old_layout).exists(),
        "the old maps are removed once no program reads them"
    );
    lab.probe("web")
        .tcp_connect(server, 80)
        .assert_errno("ECONNREFUSED");
    lab.probe("web").tcp_connect(server, 81).assert_denied();
}
