//! Inbound: a flow is judged where it arrives, at the receiving socket of a workload
//! (`cgroup_skb/ingress`), so a peer that runs no enforcer is stopped at the destination; a flow
//! between two local processes is judged with both real identities; the failsafe port stays open
//! under a policy that denies everything; and replies to what a workload opened are never judged
//! as connections of their own.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Listener, NetNs, Probe, Proto,
    events::{self, Verdict},
    netns::ip,
    require_privileges,
};
use serde_json::Value;

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[workload]]
name = "db"
cgroup = "db"
labels = { segment = "db" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "db-seg"
select = { segment = "db" }

[[allow]]
from = "@world"
to = "web-seg"
ports = ["tcp/8080", "udp/5353"]

[[allow]]
from = "web-seg"
to = "db-seg"
ports = ["tcp/5432"]

[[allow]]
from = "web-seg"
to = "@world"
ports = ["tcp/80", "icmp"]
"#;

const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
const LOOPBACK4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOOPBACK6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn lab() -> Lab {
    Lab::builder()
        .workload("web")
        .workload("db")
        .policy("main.toml", POLICY)
        .start()
}

/// A process on the peer host, which runs no enforcer.
fn peer(lab: &Lab) -> Probe {
    Probe::new(None, Some(lab.server_ns().name()))
}

/// A process on this node outside the managed cgroup tree.
fn host_process(lab: &Lab) -> Probe {
    Probe::new(None, Some(lab.client_ns().name()))
}

/// A dual-stack listener of workload `rel` on this node.
fn serve(lab: &Lab, rel: &str, proto: Proto, port: u16) -> Listener {
    lab.listen_local(rel, proto, ANY6, port)
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.instance().status()["daemon"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in status"))
}

/// The inbound denial of a flow to `ip:port`.
fn inbound_denial(lab: &Lab, ip: IpAddr, port: u16) -> Value {
    lab.daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, ip, Some(port)))
}

#[test]
fn a_peer_without_an_enforcer_is_judged_where_it_arrives() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let allowed_tcp = serve(&lab, "web", Proto::Tcp, 8080);
    let denied_tcp = serve(&lab, "web", Proto::Tcp, 8081);
    let allowed_udp = serve(&lab, "web", Proto::Udp, 5353);
    let denied_udp = serve(&lab, "web", Proto::Udp, 5354);
    let peer = peer(&lab);
    for (round, node) in [lab.client4(), lab.client6()].into_iter().enumerate() {
        peer.tcp_connect(node, 8080).assert_ok();
        // Dropped where it arrives: the peer's SYN is never answered.
        peer.tcp_connect(node, 8081).assert_errno("ETIMEDOUT");
        let ev = inbound_denial(&lab, node, 8081);
        events::assert_verdict(&ev, Verdict::Denied);
        events::assert_names(&ev, "@world", "web");
        events::assert_rule(&ev, "default-deny:web-seg");
        assert_eq!(events::u64_at(&ev, "connection_info.direction_id"), 1);
        assert_eq!(events::str_at(&ev, "unmapped.layer"), "packet");
        assert_eq!(
            events::str_at(&ev, "src_endpoint.ip")
                .parse::<IpAddr>()
                .ok(),
            Some(if node.is_ipv4() {
                lab.server4()
            } else {
                lab.server6()
            })
        );
        // The receiving workload's process, recorded when its socket was made.
        assert_eq!(events::str_at(&ev, "actor.process.name"), "enforcer-probe");

        // The workload's echo (a `sendto()` back to the peer) is a reply, not a flow of its own.
        peer.run(&["udp-request", &node.to_string(), "5353"])
            .assert_ok();
        allowed_udp.wait_for_peers(round + 1, EVENT_TIMEOUT);
        peer.udp_sendto(node, 5354).assert_ok();
        let ev = inbound_denial(&lab, node, 5354);
        assert_eq!(events::str_at(&ev, "connection_info.protocol_name"), "udp");
        events::assert_names(&ev, "@world", "web");
    }
    assert_eq!(allowed_tcp.peers().len(), 2);
    assert!(denied_tcp.peers().is_empty(), "a denied SYN was accepted");
    assert!(
        denied_udp.peers().is_empty(),
        "a denied datagram was delivered"
    );
}

#[test]
fn flows_between_local_processes_are_judged_with_both_identities() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let db = serve(&lab, "db", Proto::Tcp, 5432);
    let _web = serve(&lab, "web", Proto::Tcp, 8080);
    let before = counter(&lab, "judged_at_origin");
    // web -> db is allowed, over loopback and the node's own addresses: the sender's egress
    // judged it with both identities, and its verdict stands where it arrives.
    for addr in [LOOPBACK4, LOOPBACK6, lab.client4(), lab.client6()] {
        lab.probe("web").tcp_connect(addr, 5432).assert_ok();
    }
    db.wait_for_peers(4, EVENT_TIMEOUT);
    assert!(
        counter(&lab, "judged_at_origin") >= before + 4,
        "arrivals from a managed sender were judged a second time"
    );
    // db -> web is not: db's own egress refuses it at once.
    lab.probe("db").tcp_connect(LOOPBACK4, 8080).assert_denied();
    // A process of the node outside the managed tree has no egress of its own to judge it: the
    // arrival at db is judged, from the node's identity.
    host_process(&lab)
        .tcp_connect(lab.client4(), 5432)
        .assert_errno("ETIMEDOUT");
    let ev = inbound_denial(&lab, lab.client4(), 5432);
    events::assert_names(&ev, enforcer_tests::CLIENT_NODE, "db");
    events::assert_rule(&ev, "default-deny:db-seg");
    assert_eq!(events::str_at(&ev, "unmapped.layer"), "packet");
    assert_eq!(db.peers().len(), 4, "the node's process reached db");
}

/// A container of this node: its own network namespace, joined to the node's by a veth pair
/// whose node end is `ctrh0`, routed through it. Gone with the namespace.
fn container(lab: &Lab) -> NetNs {
    let ctr = NetNs::new();
    let (inside, node_end) = (lab.expand("${NET4}.203.2/24"), lab.expand("${NET4}.203.1"));
    ip(&[
        "link",
        "add",
        "ctr0",
        "netns",
        ctr.name(),
        "type",
        "veth",
        "peer",
        "name",
        "ctrh0",
        "netns",
        lab.client_ns().name(),
    ]);
    ip(&["-n", ctr.name(), "addr", "add", &inside, "dev", "ctr0"]);
    ip(&[
        "-n",
        lab.client_ns().name(),
        "addr",
        "add",
        &format!("{node_end}/24"),
        "dev",
        "ctrh0",
    ]);
    ip(&["-n", ctr.name(), "link", "set", "ctr0", "up"]);
    ip(&["-n", lab.client_ns().name(), "link", "set", "ctrh0", "up"]);
    ip(&[
        "-n",
        ctr.name(),
        "route",
        "add",
        "default",
        "via",
        &node_end,
    ]);
    // The daemon covers the new interface once it sees it: wait for that.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !lab.daemon().stderr().contains("ctrh0") {
        assert!(
            Instant::now() < deadline,
            "the container's veth was never covered"
        );
        thread::sleep(Duration::from_millis(50));
    }
    ctr
}

#[test]
fn a_container_reaching_the_node_address_is_judged_with_its_workload_identity() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let db = serve(&lab, "db", Proto::Tcp, 5432);
    let web = serve(&lab, "web", Proto::Tcp, 8080);
    let node_process = Listener::start(lab.client_ns().name(), Proto::Tcp, ANY6, 9000);
    let ctr = container(&lab);
    let in_container = |rel: &str| Probe::new(Some(&lab.cgroup_root().join(rel)), Some(ctr.name()));
    let node = lab.client4();
    let before = counter(&lab, "handed_off");

    // web -> db is allowed: the container's sender hands the flow to db's socket, which judges
    // it from web (not from the container's address, which no table claims).
    in_container("web").tcp_connect(node, 5432).assert_ok();
    db.wait_for_peers(1, EVENT_TIMEOUT);
    assert!(
        counter(&lab, "handed_off") > before,
        "the flow was not handed off"
    );

    // db -> web is not: dropped where it arrives, reported with both workloads.
    in_container("db")
        .tcp_connect(node, 8080)
        .assert_errno("ETIMEDOUT");
    let ev = inbound_denial(&lab, node, 8080);
    events::assert_names(&ev, "db", "web");
    events::assert_rule(&ev, "default-deny:db-seg");
    assert_eq!(events::str_at(&ev, "unmapped.layer"), "packet");
    assert!(web.peers().is_empty(), "db reached web from its container");

    // A process of the node outside the tree has no socket layer: the interface layer judges
    // the arrival, from web, and web's isolation denies it.
    in_container("web")
        .tcp_connect(node, 9000)
        .assert_errno("ETIMEDOUT");
    let ev = inbound_denial(&lab, node, 9000);
    events::assert_names(&ev, "web", enforcer_tests::CLIENT_NODE);
    events::assert_rule(&ev, "default-deny:web-seg");
    assert_eq!(events::str_at(&ev, "unmapped.layer"), "interface");
    assert!(
        node_process.peers().is_empty(),
        "web reached a node process"
    );
}

#[test]
fn the_failsafe_port_accepts_connections_under_a_policy_that_denies_everything() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("sshd")
        .policy(
            "main.toml",
            r#"
[[workload]]
name = "sshd"
cgroup = "sshd"
labels = { segment = "ops" }

[[segment]]
name = "ops"
select = { segment = "ops" }

[[deny]]
from = "@any"
to = "@any"
ports = ["any"]
"#,
        )
        .start();
    let ssh = serve(&lab, "sshd", Proto::Tcp, 22);
    let _other = serve(&lab, "sshd", Proto::Tcp, 2222);
    let peer = peer(&lab);
    for node in [lab.client4(), lab.client6()] {
        peer.tcp_connect(node, 22).assert_ok();
        peer.tcp_connect(node, 2222).assert_errno("ETIMEDOUT");
    }
    ssh.wait_for_peers(2, EVENT_TIMEOUT);
    assert!(
        lab.daemon()
            .stderr()
            .contains("the failsafe inbound port tcp/22 overrides this deny rule"),
        "the daemon did not warn about the rule the failsafe overrides:\n{}",
        lab.daemon().stderr()
    );
    assert!(counter(&lab, "failsafe") >= 2);
    // Every verdict here was taken on arrival, and the kernel counts them as such.
    assert!(counter(&lab, "ingress_allowed") >= 2);
    assert!(counter(&lab, "ingress_denied") >= 2);
    assert_eq!(counter(&lab, "ingress_denied"), counter(&lab, "denied"));
}

#[test]
fn replies_to_what_a_workload_opened_are_never_judged_as_arrivals() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let _http4 = lab.listen(Proto::Tcp, lab.server4(), 80);
    let _http6 = lab.listen(Proto::Tcp, lab.server6(), 80);
    let web = lab.probe("web");
    for server in [lab.server4(), lab.server6()] {
        web.tcp_connect(server, 80).assert_ok();
        // The echo reply arrives at the ping socket: a reply, not an inbound echo request.
        web.ping(server).assert_ok();
    }
    // Whatever the daemon reported, nothing was an arrival: give stray events time to come.
    thread::sleep(Duration::from_millis(300));
    let inbound: Vec<Value> = lab
        .daemon()
        .events()
        .into_iter()
        .filter(|e| events::u64_at(e, "connection_info.direction_id") != 2)
        .collect();
    assert!(
        inbound.is_empty(),
        "replies judged as arrivals: {inbound:#?}"
    );
    assert_eq!(counter(&lab, "denied"), 0);
}

#[test]
fn with_the_flow_table_full_new_flows_are_still_judged() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .workload("db")
        .policy("main.toml", POLICY)
        .no_daemon()
        .start();
    // Sixteen flows fit; the fifty below evict each other all along.
    let daemon = enforcer_tests::Daemon::start(&enforcer_tests::DaemonArgs {
        extra: &["--max-flows", "16"],
        ..lab.daemon_args()
    });
    let allowed_udp = serve(&lab, "web", Proto::Udp, 5353);
    let denied_udp = serve(&lab, "web", Proto::Udp, 5354);
    let allowed_tcp = serve(&lab, "web", Proto::Tcp, 8080);
    let denied_tcp = serve(&lab, "web", Proto::Tcp, 8081);
    let peer = peer(&lab);
    for round in 1..=50 {
        // A new socket each time: a new source port, a new flow.
        peer.udp_sendto(lab.client4(), 5353).assert_ok();
        peer.udp_sendto(lab.client4(), 5354).assert_ok();
        if round % 10 == 0 {
            peer.tcp_connect(lab.client4(), 8080).assert_ok();
            peer.tcp_connect(lab.client4(), 8081)
                .assert_errno("ETIMEDOUT");
        }
    }
    allowed_udp.wait_for_peers(50, EVENT_TIMEOUT);
    allowed_tcp.wait_for_peers(5, EVENT_TIMEOUT);
    assert!(
        denied_udp.peers().is_empty(),
        "a full table let a flow through"
    );
    assert!(
        denied_tcp.peers().is_empty(),
        "a full table let a connection through"
    );
    let denials = daemon
        .events()
        .iter()
        .filter(|e| events::is_to(e, lab.client4(), Some(5354)))
        .count();
    assert!(denials >= 1, "the denied flows were not reported");
}
