//! The interface layer: arrivals that reach no socket of the managed subtree are judged on the
//! node's interfaces (tcx ingress), from their source to the node itself. Closed ports and sweeps
//! of them are stopped and reported, aggregated rather than one event per packet; processes of the
//! node outside the subtree are protected; ICMP echo follows the `icmp` term; and what processes of
//! the node open is never taken for an arrival when its replies come back.

use std::{
    net::IpAddr,
    process::{Command, Output},
    thread,
    time::Duration,
};

use enforcer_tests::{CLIENT_NODE, EVENT_TIMEOUT, Lab, Listener, Probe, Proto, events};
use serde_json::Value;

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "hosts"
select = { zone = "hosts" }

[[allow]]
from = "@world"
to = "hosts"
ports = ["tcp/8443"]

[[allow]]
from = "web-seg"
to = "@world"
ports = ["tcp/80"]
"#;

const ICMP_ALLOWED: &str = r#"
[[allow]]
from = "@world"
to = "hosts"
ports = ["icmp"]
"#;

fn lab() -> Lab {
    let lab = Lab::builder()
        .workload("web")
        .node_labels(r#"{ role = "client", zone = "hosts" }"#)
        .policy("main.toml", POLICY)
        .start();
    lab.server_ns().allow_ping_sockets();
    lab
}

fn peer(lab: &Lab) -> Probe {
    Probe::new(None, Some(lab.server_ns().name()))
}

/// Runs `argv` in the peer's namespace (a host that runs no enforcer).
fn on_peer(lab: &Lab, argv: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", lab.server_ns().name()])
        .args(argv)
        .output()
        .unwrap_or_else(|e| panic!("run {argv:?} on the peer: {e}"))
}

/// The interface-layer events about arrivals at `node` over `protocol`.
fn arrivals_at(lab: &Lab, node: IpAddr, protocol: &str) -> Vec<Value> {
    lab.daemon()
        .events()
        .into_iter()
        .filter(|e| {
            events::try_field(e, "unmapped.layer").and_then(Value::as_str) == Some("interface")
                && events::is_to(e, node, None)
                && events::try_field(e, "connection_info.protocol_name").and_then(Value::as_str)
                    == Some(protocol)
        })
        .collect()
}

/// Attempts the events stand for, in all.
fn attempts(events: &[Value]) -> u64 {
    events.iter().map(|e| events::u64_at(e, "count")).sum()
}

#[test]
fn closed_ports_and_processes_outside_the_subtree_are_judged_at_the_interface() {
    if !enforcer_tests::require_privileges() {
        return;
    }
    let lab = lab();
    if !lab.daemon().interface_layer_applies() {
        return;
    }
    let outside = |port| Listener::start(lab.client_ns().name(), Proto::Tcp, lab.client4(), port);
    let allowed = outside(8443);
    let _denied = outside(8444);
    let peer = peer(&lab);
    peer.tcp_connect(lab.client4(), 8443).assert_ok();
    allowed.wait_for_peers(1, EVENT_TIMEOUT);
    peer.tcp_connect(lab.client4(), 8444)
        .assert_errno("ETIMEDOUT");
    for node in [lab.client4(), lab.client6()] {
        // Nothing listens: without the interface layer the kernel would answer with a reset.
        peer.tcp_connect(node, 9999).assert_errno("ETIMEDOUT");
        let ev = lab
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, node, Some(9999)));
        events::assert_names(&ev, "@world", CLIENT_NODE);
        events::assert_rule(&ev, "default-deny:hosts");
        assert_eq!(events::str_at(&ev, "unmapped.layer"), "interface");
        assert_eq!(events::u64_at(&ev, "connection_info.direction_id"), 1);
        assert!(events::try_field(&ev, "actor.process").is_none());
    }
    let ev = lab.daemon().wait_for_event(EVENT_TIMEOUT, |e| {
        events::is_to(e, lab.client4(), Some(8444))
    });
    events::assert_names(&ev, "@world", CLIENT_NODE);
}

#[test]
fn icmp_echo_to_the_node_follows_the_icmp_term_both_ways() {
    if !enforcer_tests::require_privileges() {
        return;
    }
    let lab = lab();
    if !lab.daemon().interface_layer_applies() {
        return;
    }
    let peer = peer(&lab);
    for node in [lab.client4(), lab.client6()] {
        peer.ping(node).assert_errno("ETIMEDOUT");
    }
    assert!(!arrivals_at(&lab, lab.client4(), "icmp").is_empty());
    assert!(!arrivals_at(&lab, lab.client6(), "icmp").is_empty());
    lab.policy_dir().write("icmp.toml", ICMP_ALLOWED);
    let output = lab.instance().command("reload");
    assert!(output.status.success(), "{output:?}");
    for node in [lab.client4(), lab.client6()] {
        peer.ping(node).assert_ok();
    }
}

#[test]
fn what_processes_of_the_node_open_is_not_taken_for_an_arrival() {
    if !enforcer_tests::require_privileges() {
        return;
    }
    let lab = lab();
    if !lab.daemon().interface_layer_applies() {
        return;
    }
    let _http = lab.listen(Proto::Tcp, lab.server4(), 80);
    let host = Probe::new(None, Some(lab.client_ns().name()));
    // The node's own processes are outside the subtree: nothing judges what they open, and
    // the replies (a SYN-ACK, an echo reply) pass the interface layer on the flow it recorded.
    host.tcp_connect(lab.server4(), 80).assert_ok();
    for server in [lab.server4(), lab.server6()] {
        host.ping(server).assert_ok();
    }
    thread::sleep(Duration::from_millis(300));
    let events = lab.daemon().events();
    assert!(events.is_empty(), "replies judged as arrivals: {events:#?}");
}

#[test]
fn sweeps_of_closed_ports_are_stopped_and_reported_in_aggregate() {
    if !enforcer_tests::require_privileges() {
        return;
    }
    let lab = lab();
    if !lab.daemon().interface_layer_applies() {
        return;
    }
    let node = lab.client4().to_string();
    let nmap = |args: &[&str]| {
        let mut argv = vec!["nmap", "-n", "-Pn", "-T5", "--max-retries", "0"];
        argv.extend_from_slice(args);
        argv.push(&node);
        let output = on_peer(&lab, &argv);
        assert!(output.status.success(), "nmap {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let scans: [(&[&str], &str, u64); 3] = [
        (&["-sS", "-p", "1000-1099"], "tcp", 100),
        (&["-sT", "-p", "2000-2049"], "tcp", 50),
        (&["-sU", "-p", "3000-3019"], "udp", 20),
    ];
    let mut expected_tcp = 0;
    for (args, protocol, ports) in scans {
        let report = nmap(args);
        assert!(
            !report.contains(" open ") && !report.contains("closed"),
            "a port answered the sweep {args:?}:\n{report}"
        );
        if protocol == "tcp" {
            expected_tcp += ports;
        }
        let seen = wait_for_attempts(
            &lab,
            protocol,
            if protocol == "tcp" {
                expected_tcp
            } else {
                ports
            },
        );
        let events = arrivals_at(&lab, lab.client4(), protocol);
        assert!(
            events.len() as u64 * 5 <= seen,
            "{seen} attempts took {} events: not aggregated",
            events.len()
        );
    }
    let before = attempts(&arrivals_at(&lab, lab.client4(), "icmp"));
    // Host discovery only, by ICMP echo and timestamp requests: no `-Pn` here, and IP rather
    // than the ARP a local segment would use (ARP is below every IP rule).
    let output = on_peer(
        &lab,
        &[
            "nmap",
            "-n",
            "-sn",
            "-T5",
            "--disable-arp-ping",
            "--reason",
            "-PE",
            "-PP",
            &node,
        ],
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0 hosts up"),
        "the ping sweep found the node: {output:?}"
    );
    let output = on_peer(
        &lab,
        &[
            "hping3", "-S", "-p", "++4000", "-c", "30", "-i", "u2000", &node,
        ],
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("flags=SA"),
        "hping3 got an answer: {output:?}"
    );
    wait_for_attempts(&lab, "tcp", expected_tcp + 30);
    assert!(
        attempts(&arrivals_at(&lab, lab.client4(), "icmp")) > before,
        "the ping sweep was not reported"
    );
}

/// Waits until the interface-layer events over `protocol` stand for at least `n` attempts;
/// returns how many they stand for.
fn wait_for_attempts(lab: &Lab, protocol: &str, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = attempts(&arrivals_at(lab, lab.client4(), protocol));
        if seen >= n {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{seen} of {n} {protocol} attempts reported"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
