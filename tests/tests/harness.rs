//! The harness itself: guards leave nothing behind, on success and on panic, and the probe speaks
//! the result format the tests and the demo parse.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    process::Command,
    sync::Mutex,
};

use enforcer_tests::{
    CgroupDir, Lab, NetNs, Probe, Proto, netns::list_netns, probe::probe_bin, require_privileges,
};

/// What a lab made, to look for after it is gone.
#[derive(Default)]
struct Traces {
    netns: Vec<String>,
    cgroup: Option<PathBuf>,
}

fn assert_gone(traces: &Traces) {
    let left = list_netns();
    for ns in &traces.netns {
        assert!(!left.contains(ns), "netns {ns} leaked: {left:?}");
    }
    let cgroup = traces.cgroup.as_ref().expect("the lab had a cgroup root");
    assert!(!cgroup.exists(), "cgroup {} leaked", cgroup.display());
}

fn busy_lab(traces: &Mutex<Traces>) -> Lab {
    let lab = Lab::builder()
        .workload("web/inner")
        .policy("main.toml", "")
        .no_daemon()
        .start();
    let mut t = traces.lock().expect("traces");
    t.netns = vec![
        lab.client_ns().name().to_owned(),
        lab.server_ns().name().to_owned(),
    ];
    t.cgroup = Some(lab.cgroup_root().to_path_buf());
    lab
}

#[test]
fn lab_leaves_nothing_behind() {
    if !require_privileges() {
        return;
    }
    let traces = Mutex::new(Traces::default());
    {
        let lab = busy_lab(&traces);
        let _l = lab.listen(Proto::Tcp, lab.server4(), 80);
        lab.probe("web/inner")
            .tcp_connect(lab.server4(), 80)
            .assert_ok();
        for ns in &traces.lock().expect("traces").netns {
            assert!(list_netns().contains(ns), "netns {ns} was never created");
        }
    }
    assert_gone(&traces.lock().expect("traces"));
}

#[test]
fn lab_leaves_nothing_behind_when_the_test_panics() {
    if !require_privileges() {
        return;
    }
    let traces = Mutex::new(Traces::default());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = busy_lab(&traces);
        let _l = lab.listen(Proto::Udp, lab.server6(), 53);
        panic!("deliberate failure inside a lab");
    }));
    assert!(result.is_err(), "the closure was meant to panic");
    assert_gone(&traces.lock().expect("traces"));
}

#[test]
fn cgroup_guard_kills_what_is_left_inside() {
    if !require_privileges() {
        return;
    }
    let cgroups = CgroupDir::new();
    let dir = cgroups.create("a/b");
    let ns = NetNs::new();
    // A listener that joined the cgroup serves until killed: only the guard can end it.
    let mut child = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(&dir)
        .args(["--netns", ns.name(), "udp-listen", "127.0.0.1", "5353"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn listener");
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cgroups.pids("a/b").contains(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "listener never joined {}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let root = cgroups.path().to_path_buf();
    drop(cgroups);
    assert!(
        !root.exists(),
        "cgroup {} survived its guard",
        root.display()
    );
    let status = child.wait().expect("reap listener");
    assert!(
        !status.success(),
        "the listener should have been killed, got {status}"
    );
}

/// Needs nothing privileged: loopback in the test's own namespace.
#[test]
fn probe_reports_ok_and_errno_with_its_pid() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
    let port = listener.local_addr().expect("local addr").port();
    let probe = Probe::default();
    let ok = probe.tcp_connect(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    ok.assert_ok();
    assert_ne!(ok.pid, std::process::id());

    drop(listener);
    let refused = probe.tcp_connect(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    refused.assert_errno("ECONNREFUSED");
    assert_eq!(
        refused.errno.as_ref().map(|(_, n)| *n),
        Some(libc::ECONNREFUSED)
    );
}

#[test]
fn probe_rejects_bad_usage() {
    for args in [
        &["bogus"][..],
        &["tcp-connect", "10.0.0.1"],
        &["ping", "not-an-ip"],
    ] {
        let out = Command::new(probe_bin())
            .args(args)
            .output()
            .expect("run probe");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

/// The baseline every other test relies on: without a daemon, every lab address answers, over
/// TCP, UDP and ICMP, from inside a managed cgroup. A failure here is the harness's, not the
/// product's.
#[test]
fn lab_addresses_are_reachable_without_enforcement() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("app")
        .server_addr("${NET4}.20.7")
        .server_addr("${NET6}:20::7")
        .server_addr("${WORLD4}")
        .server_addr("${WORLD6}")
        .policy("main.toml", "")
        .no_daemon()
        .start();
    for addr in [
        "${SERVER4}",
        "${SERVER6}",
        "${NET4}.20.7",
        "${NET6}:20::7",
        "${WORLD4}",
        "${WORLD6}",
    ] {
        let ip = lab.ip(addr);
        let tcp = lab.listen(Proto::Tcp, ip, 80);
        let udp = lab.listen(Proto::Udp, ip, 53);
        lab.probe("app").tcp_connect(ip, 80).assert_ok();
        lab.probe("app").udp_sendto(ip, 53).assert_ok();
        lab.probe("app").udp_connect(ip, 53).assert_ok();
        lab.probe("app").ping(ip).assert_ok();
        tcp.wait_for_peers(1, enforcer_tests::EVENT_TIMEOUT);
        udp.wait_for_peers(2, enforcer_tests::EVENT_TIMEOUT);
    }
}
