//! Every denied attempt is accounted for exactly: repeats are counted in the kernel's aggregation
//! map and reported as one event with a `count`, first attempts go through the ring buffer, and a
//! full ring buffer is counted, never silent. For any burst, Σ count over the events written plus
//! the kernel's counted losses equals the attempts, and the kernel's own counters agree.

use serde_json::Value;

use enforcer_tests::{Daemon, Lab, require_privileges};

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

/// Attempts the daemon's sinks lost (a full queue, a failed delivery), summed over the sinks'
/// totals it logs at shutdown.
fn sink_losses(stderr: &str) -> u64 {
    let field = |line: &str, key: &str| -> u64 {
        let start = line
            .find(&format!("{key}="))
            .map_or(line.len(), |i| i + key.len() + 1);
        line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    let totals: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sink totals at shutdown"))
        .collect();
    assert!(
        !totals.is_empty(),
        "no sink totals in the daemon's log:\n{stderr}"
    );
    totals
        .iter()
        .map(|l| field(l, "dropped_attempts") + field(l, "failed_attempts"))
        .sum()
}

/// Σ `count` over the flow events (class 4001, severity below 4: alerts count no attempts).
fn attempts_reported(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|e| e["class_uid"] == 4001 && e["severity_id"].as_u64() != Some(4))
        .map(|e| e["count"].as_u64().expect("every flow event has a count"))
        .sum()
}

#[test]
fn a_burst_of_150000_denied_attempts_is_reported_in_full_as_a_few_aggregated_events() {
    if !require_privileges() {
        return;
    }
    const ATTEMPTS: u32 = 150_000;
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    let mut args = lab.daemon_args();
    let extra = ["--aggregate-window", "1s"];
    args.extra = &extra;
    let mut daemon = Daemon::start(&args);
    lab.refused_udp_burst("web", 5300, ATTEMPTS, 1);
    // Two windows: the one the burst ended in has closed and been drained.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let during = daemon.events();
    let status = daemon.stop().expect("the daemon was running");
    assert!(status.success(), "daemon exited with {status}");
    let stderr = daemon.stderr();
    let events = daemon.events();
    let reported = attempts_reported(&events);
    let lost = counter(&stderr, "events_lost");
    assert_eq!(counter(&stderr, "denied"), u64::from(ATTEMPTS));
    assert_eq!(
        reported + lost,
        u64::from(ATTEMPTS),
        "Σ count ({reported}) + lost ({lost}) must be every attempt; events: {}",
        events.len()
    );
    assert!(
        lost * 100 < u64::from(ATTEMPTS),
        "{lost} of {ATTEMPTS} lost: at least 1 %"
    );
    assert_eq!(sink_losses(&stderr), 0, "the sink lost nothing");
    assert_eq!(
        attempts_reported(&during),
        reported,
        "the aggregated count was reported when its window closed, not only at shutdown"
    );
    assert!(
        events.len() < 100,
        "one attempt repeated must become a few events, not {}",
        events.len()
    );
    let aggregated = events
        .iter()
        .find(|e| e["count"].as_u64().is_some_and(|c| c > 1))
        .expect("an aggregated event");
    assert_eq!(aggregated["dst_endpoint"]["port"], 5300);
    assert!(
        aggregated["start_time"].as_u64() <= aggregated["end_time"].as_u64(),
        "an aggregated event spans its attempts: {aggregated}"
    );
    // The kernel's side: each attempt went to the ring buffer (an event of its own), to the
    // aggregation map (a repeat, drained into an event that spans its attempts), or was lost.
    let (spanning, single): (Vec<&Value>, Vec<&Value>) =
        events.iter().partition(|e| e.get("start_time").is_some());
    let drained: u64 = spanning.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert_eq!(drained, counter(&stderr, "aggregated"));
    assert_eq!(
        u64::try_from(single.len()).expect("fits") + drained + lost,
        u64::from(ATTEMPTS)
    );
}

#[test]
fn a_burst_beyond_the_ring_buffer_is_counted_as_lost_and_nothing_else_goes_missing() {
    if !require_privileges() {
        return;
    }
    const ATTEMPTS: u32 = 6000;
    // Distinct destinations: each port's first attempt needs a ring-buffer record of its own.
    const PORTS: u16 = 2000;
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    // One page of ring buffer holds a few dozen events: 2000 first attempts must overflow it.
    let mut args = lab.daemon_args();
    let extra = ["--event-buffer-kib", "4", "--aggregate-window", "1s"];
    args.extra = &extra;
    let mut daemon = Daemon::start(&args);
    lab.refused_udp_burst("web", 5300, ATTEMPTS, PORTS);
    let status = daemon.stop().expect("the daemon was running");
    assert!(status.success(), "daemon exited with {status}");
    let stderr = daemon.stderr();
    let events = daemon.events();
    let reported = attempts_reported(&events);
    let lost = counter(&stderr, "events_lost");
    assert_eq!(counter(&stderr, "denied"), u64::from(ATTEMPTS));
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

#[test]
fn a_scan_wider_than_the_aggregation_map_is_reported_attempt_by_attempt_and_still_adds_up() {
    if !require_privileges() {
        return;
    }
    // More distinct attempts than the aggregation map holds (32 768 keys, both halves), each
    // tried twice: beyond the map, every attempt goes to the ring buffer on its own.
    const PORTS: u16 = 40_000;
    const ATTEMPTS: u32 = 2 * PORTS as u32;
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    let mut args = lab.daemon_args();
    // One window for the whole scan, and room in the ring buffer for what the map cannot hold.
    let extra = ["--event-buffer-kib", "16384", "--aggregate-window", "1m"];
    args.extra = &extra;
    let mut daemon = Daemon::start(&args);
    lab.refused_udp_burst("web", 5000, ATTEMPTS, PORTS);
    let status = daemon.stop().expect("the daemon was running");
    assert!(status.success(), "daemon exited with {status}");
    let stderr = daemon.stderr();
    let events = daemon.events();
    let reported = attempts_reported(&events);
    let lost = counter(&stderr, "events_lost");
    assert_eq!(counter(&stderr, "denied"), u64::from(ATTEMPTS));
    assert!(
        counter(&stderr, "aggregation_full") > 0,
        "the scan did not fill the aggregation map"
    );
    // Tens of thousands of reports at once may overflow the file sink's queue: that sink then
    // counts what it dropped, in attempts, and says so at exit.
    let sink_lost = sink_losses(&stderr);
    assert_eq!(
        reported + lost + sink_lost,
        u64::from(ATTEMPTS),
        "reported ({reported}) + lost in the kernel ({lost}) + lost at the sink ({sink_lost}) \
         must account for every denied attempt"
    );
}
