//! A scan from a workload raises one lateral-movement alert (severity 4, ATT&CK T1046) beside
//! its denials, which stay aggregated per destination port; repeats of one denied target never
//! raise one.

use enforcer_tests::{Daemon, Lab, require_privileges};
use serde_json::Value;

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }
"#;

fn alerts(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["severity_id"] == 4).collect()
}

#[test]
fn a_scan_of_50_ports_raises_one_alert_and_keeps_its_denials_aggregated() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    let mut args = lab.daemon_args();
    let extra = ["--aggregate-window", "1s"];
    args.extra = &extra;
    let mut daemon = Daemon::start(&args);
    // Each of the 50 ports ten times over.
    lab.refused_udp_burst("web", 6000, 500, 50);
    daemon.stop().expect("the daemon was running");
    let events = daemon.events();

    let alerts = alerts(&events);
    assert_eq!(alerts.len(), 1, "one alert for one scan: {alerts:#?}");
    let alert = alerts[0];
    assert_eq!(alert["class_uid"], 4001);
    assert_eq!(
        alert["attacks"][0]["technique"]["uid"], "T1046",
        "{alert:#}"
    );
    assert_eq!(alert["src_endpoint"]["name"], "web", "{alert:#}");
    assert_eq!(
        alert["dst_endpoint"]["ip"],
        lab.server4().to_string(),
        "{alert:#}"
    );

    let denials: Vec<&Value> = events.iter().filter(|e| e["severity_id"] != 4).collect();
    let mut ports: Vec<u64> = denials
        .iter()
        .filter_map(|e| e["dst_endpoint"]["port"].as_u64())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports,
        (6000..6050).collect::<Vec<u64>>(),
        "every port reported"
    );
    let attempts: u64 = denials.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert_eq!(attempts, 500, "every attempt counted");
    assert!(
        denials.len() <= 150,
        "repeats aggregated per port, not one event each: {} events",
        denials.len()
    );
}

#[test]
fn one_denied_target_retried_raises_no_alert() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    let mut args = lab.daemon_args();
    let extra = ["--aggregate-window", "1s"];
    args.extra = &extra;
    let mut daemon = Daemon::start(&args);
    lab.refused_udp_burst("web", 6000, 2000, 1);
    daemon.stop().expect("the daemon was running");
    let events = daemon.events();
    assert!(alerts(&events).is_empty(), "no alert: {events:#?}");
    let attempts: u64 = events.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert_eq!(attempts, 2000);
}
