//! Destinations on this node resolve by the kernel's own truth: the socket a connection will
//! actually reach and the workload that owns it, whichever address family bound the port, whether
//! the socket was bound before the daemon started, and whatever local address (declared in a
//! `[[node]]` table or not) the connection names. An unresolvable local destination fails closed,
//! never to a more permissive identity (POLICY.md, "Identities").

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, LabBuilder, Listener, Proto, require_privileges,
    scenarios::{PolicyText, assert_denial, assert_nothing_delivered},
};

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const LOOPBACK4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOOPBACK6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// How long a connection that is silently dropped rather than refused gets to show up at the
/// listener anyway before the test concludes it did not.
const SETTLE: Duration = Duration::from_millis(300);

/// The workloads `names`, each the only member of its segment (`{name}-seg`).
fn members(names: &[&str]) -> PolicyText {
    let text = names
        .iter()
        .fold(PolicyText::new(), |p, name| p.member(name));
    names.iter().fold(text, |p, name| p.segment(name))
}

/// A lab with the workloads `client` and `db`.
fn client_and_db() -> LabBuilder {
    Lab::builder().workload("client").workload("db")
}

/// The denial event to `ip:port`, from `client` to `dst`.
#[track_caller]
fn denial(lab: &Lab, ip: IpAddr, port: u16, dst: &str) {
    assert_denial(lab, &[ip], Some(port), None, "client", dst);
}

#[test]
fn a_v6only_bind_on_the_same_port_does_not_take_over_the_listener_identity() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7101;
    // Three segmented workloads; `client` may reach `db` on `tcp/PORT` and nothing else.
    let policy = members(&["client", "db", "intruder"]).allow(
        "client-seg",
        "db-seg",
        &[&format!("tcp/{PORT}")],
    );
    let lab = client_and_db()
        .workload("intruder")
        .policy("main.toml", policy.as_str())
        .start();
    let db = lab.listen_local("db", Proto::Tcp, ANY4, PORT);
    // Binds after db: a table keyed by (netns, port, protocol) would now say "intruder" for every
    // local address on the port, although the kernel delivers IPv4 to db.
    let intruder = Listener::start_in_v6only(
        Some(&lab.cgroup_root().join("intruder")),
        lab.client_ns().name(),
        Proto::Tcp,
        LOOPBACK6,
        PORT,
    );

    lab.probe("client").tcp_connect(LOOPBACK4, PORT).assert_ok();
    db.wait_for_peers(1, EVENT_TIMEOUT);
    lab.probe("client")
        .tcp_connect(lab.client4(), PORT)
        .assert_ok();
    db.wait_for_peers(2, EVENT_TIMEOUT);

    // [::1]:PORT is the intruder's socket: no rule lets client reach it.
    lab.probe("client")
        .tcp_connect(LOOPBACK6, PORT)
        .assert_denied();
    denial(&lab, LOOPBACK6, PORT, "intruder");
    assert_nothing_delivered(&intruder, "a denied connection to the intruder");
    assert_eq!(db.peers().len(), 2, "db saw {:?}", db.peers());
}

#[test]
fn a_listener_bound_before_the_daemon_started_is_judged_as_its_workload() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7102;
    // The node is open to the client on the port; db is not. A listener the daemon does not know
    // must not fall back to the node.
    let policy = PolicyText::new()
        .member("client")
        .member("db")
        .segment("node")
        .segment("client")
        .segment("db")
        .allow("client-seg", "node-seg", &[&format!("tcp/{PORT}")]);
    let mut lab = client_and_db()
        .workload("misc")
        .node_labels(r#"{ role = "client", segment = "node" }"#)
        .policy("main.toml", policy.as_str())
        .no_daemon()
        .start();
    let db = lab.listen_local("db", Proto::Tcp, ANY4, PORT);
    lab.start_daemon();

    // Control: a socket of the node itself (a cgroup no workload claims) is reachable.
    let client6 = lab.client6();
    let node = lab.listen_local("misc", Proto::Tcp, client6, PORT);
    lab.probe("client").tcp_connect(client6, PORT).assert_ok();
    node.wait_for_peers(1, EVENT_TIMEOUT);

    let client4 = lab.client4();
    let outcome = lab.probe("client").tcp_connect(client4, PORT);
    // Refused by the connect hook (EPERM) or dropped by a later layer (the connect times out).
    assert!(
        matches!(outcome.result(), "EPERM" | "ETIMEDOUT"),
        "client -> db (bound before the daemon started) must not connect: {outcome}"
    );
    thread::sleep(SETTLE);
    assert_nothing_delivered(&db, "a connection to db through the node's identity");
    denial(&lab, client4, PORT, "db");
}

/// `client` may reach `@world` on the port, db (segmented) not at all.
fn world_open(port: u16) -> PolicyText {
    members(&["client", "db"]).allow("client-seg", "@world", &[&format!("tcp/{port}")])
}

/// The address no `[[node]]` table declares, on the client host's `lo`.
const UNDECLARED: &str = "${NET4}.77.7";

/// A lab with `client`, `db` and [`world_open`] on `port`, from `builder`.
fn world_open_lab(builder: LabBuilder, port: u16) -> Lab {
    builder
        .server_addr("${WORLD4}")
        .policy("main.toml", world_open(port).as_str())
        .start()
}

/// Control first (`@world` is open), then the undeclared local address, which must resolve to the
/// local listener's workload rather than to `@world`.
fn assert_undeclared_address_is_local(lab: &Lab, port: u16) {
    let world = lab.ip("${WORLD4}");
    let _remote = lab.listen(Proto::Tcp, world, port);
    let db = lab.listen_local("db", Proto::Tcp, ANY4, port);
    lab.probe("client").tcp_connect(world, port).assert_ok();

    let local = lab.ip(UNDECLARED);
    lab.probe("client").tcp_connect(local, port).assert_denied();
    denial(lab, local, port, "db");
    assert_nothing_delivered(
        &db,
        "a connection to db through an undeclared local address",
    );
}

#[test]
fn an_undeclared_local_address_present_at_start_is_local() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7103;
    let lab = world_open_lab(client_and_db().client_addr(UNDECLARED), PORT);
    assert_undeclared_address_is_local(&lab, PORT);
}

#[test]
fn an_undeclared_local_address_added_while_running_is_local_within_a_second() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7104;
    let lab = world_open_lab(client_and_db(), PORT);
    lab.add_client_addr(UNDECLARED);
    // The daemon learns it from the kernel (netlink address events).
    thread::sleep(Duration::from_secs(1));
    assert_undeclared_address_is_local(&lab, PORT);
}
