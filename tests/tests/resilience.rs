//! Runtime failures never end enforcement: the daemon logs and counts them and keeps judging.

use std::{
    fs,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{Lab, daemon::enforcer_bin, require_privileges};

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }
"#;

/// Kills the daemon started by hand even when the test panics.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_events_sink_that_fails_every_write_does_not_stop_enforcement() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    let scratch = tempfile::tempdir().expect("tempdir");
    let ready = scratch.path().join("ready");
    let log = scratch.path().join("daemon.log");
    let args = lab.daemon_args();
    // /dev/full accepts the open and fails every write with ENOSPC.
    let mut daemon = Running(
        Command::new(enforcer_bin())
            .arg("run")
            .arg("--policy")
            .arg(args.policy)
            .args(["--node", args.node, "--events", "/dev/full", "--ready-file"])
            .arg(&ready)
            .arg("--cgroup-root")
            .arg(args.cgroup_root)
            .arg("--netns")
            .arg(lab.client_netns_path())
            .args(lab.instance().flags())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start enforcer"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            daemon.0.try_wait().expect("try_wait").is_none(),
            "exited early"
        );
        thread::sleep(Duration::from_millis(20));
    }

    let server = lab.server4();
    lab.probe("web").tcp_connect(server, 7000).assert_denied();
    thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.0.try_wait().expect("try_wait").is_none(),
        "the daemon exited when its sink failed:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // Still enforcing after the failed write.
    lab.probe("web").tcp_connect(server, 7001).assert_denied();
    let text = fs::read_to_string(&log).expect("daemon log");
    assert!(
        text.contains("delivery failed; retrying the batch"),
        "the failure was not logged:\n{text}"
    );
}
