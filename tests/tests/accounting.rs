//! A full event ring buffer is counted, never silent: every denied attempt is either an event in
//! the file or a lost event in the kernel's counter, and the verdict applied either way.

use std::process::Command;

use enforcer_tests::{Daemon, Lab, probe::probe_bin, require_privileges};

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }
"#;

/// The value of `"name": N` in the daemon's shutdown counter summary.
fn counter(stderr: &str, name: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("verdict counters at shutdown"))
        .unwrap_or_else(|| panic!("no counter summary in the daemon's log:\n{stderr}"));
    let key = format!("\"{name}\": ");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no counter {name} in {line}"))
        + key.len();
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|e| panic!("counter {name} in {line}: {e}"))
}

#[test]
fn a_burst_beyond_the_ring_buffer_is_counted_as_lost_and_nothing_else_goes_missing() {
    if !require_privileges() {
        return;
    }
    const ATTEMPTS: u32 = 3000;
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    // One page of ring buffer holds a few dozen events: a burst of thousands must overflow it.
    let mut args = lab.daemon_args();
    let extra = ["--event-buffer-kib", "4"];
    args.extra = &extra;
    let mut daemon = Daemon::start(&args);

    // The probe's burst mode prints counts, not the one-attempt result `Probe::run` parses.
    let out = Command::new(probe_bin())
        .arg("--cgroup")
        .arg(lab.cgroup_root().join("web"))
        .args(["--netns", lab.client_ns().name()])
        .args(["udp-burst", &lab.server4().to_string(), "5300"])
        .arg(ATTEMPTS.to_string())
        .output()
        .expect("run the probe");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "probe failed: {line}");
    assert!(
        line.starts_with(&format!("sent={ATTEMPTS} refused={ATTEMPTS} ")),
        "every datagram must be refused: {line}"
    );

    let status = daemon.stop().expect("the daemon was running");
    assert!(status.success(), "daemon exited with {status}");
    let stderr = daemon.stderr();
    let reported = u64::try_from(daemon.events().len()).expect("count fits");
    let lost = counter(&stderr, "events_lost");
    let denied = counter(&stderr, "denied");
    assert_eq!(
        denied,
        u64::from(ATTEMPTS),
        "every attempt got a counted verdict"
    );
    assert!(
        lost > 0,
        "the burst did not overflow a 4 KiB ring buffer ({reported} reported)"
    );
    assert!(reported > 0, "nothing was reported at all");
    assert_eq!(
        reported + lost,
        u64::from(ATTEMPTS),
        "reported ({reported}) + lost ({lost}) must account for every denied attempt"
    );
}
