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
    EVENT_TIMEOUT, Lab, Listener, Proto,
    events::{self, Verdict},
    require_privileges,
};

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const LOOPBACK4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOOPBACK6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// How long a connection that is silently dropped rather than refused gets to show up at the
/// listener anyway before the test concludes it did not.
const SETTLE: Duration = Duration::from_millis(300);

/// Three segmented workloads; `client` may reach `db` on `tcp/PORT` and nothing else.
fn three_workloads(port: u16) -> String {
    format!(
        r#"
[[workload]]
name = "client"
cgroup = "client"
labels = {{ segment = "client" }}

[[workload]]
name = "db"
cgroup = "db"
labels = {{ segment = "db" }}

[[workload]]
name = "intruder"
cgroup = "intruder"
labels = {{ segment = "intruder" }}

[[segment]]
name = "client-seg"
select = {{ segment = "client" }}

[[segment]]
name = "db-seg"
select = {{ segment = "db" }}

[[segment]]
name = "intruder-seg"
select = {{ segment = "intruder" }}

[[allow]]
from = "client-seg"
to = "db-seg"
ports = ["tcp/{port}"]
"#
    )
}

#[test]
fn a_v6only_bind_on_the_same_port_does_not_take_over_the_listener_identity() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7101;
    let lab = Lab::builder()
        .workload("client")
        .workload("db")
        .workload("intruder")
        .policy("main.toml", &three_workloads(PORT))
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
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, LOOPBACK6, Some(PORT)));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "client", "intruder");
    assert!(
        intruder.peers().is_empty(),
        "a denied connection reached the intruder: {:?}",
        intruder.peers()
    );
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
    let mut lab = Lab::builder()
        .workload("client")
        .workload("db")
        .workload("misc")
        .node_labels(r#"{ role = "client", segment = "node" }"#)
        .policy(
            "main.toml",
            &format!(
                r#"
[[workload]]
name = "client"
cgroup = "client"
labels = {{ segment = "client" }}

[[workload]]
name = "db"
cgroup = "db"
labels = {{ segment = "db" }}

[[segment]]
name = "node-seg"
select = {{ segment = "node" }}

[[segment]]
name = "client-seg"
select = {{ segment = "client" }}

[[segment]]
name = "db-seg"
select = {{ segment = "db" }}

[[allow]]
from = "client-seg"
to = "node-seg"
ports = ["tcp/{PORT}"]
"#
            ),
        )
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
    assert!(
        db.peers().is_empty(),
        "client reached db through the node's identity: {:?}",
        db.peers()
    );
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, client4, Some(PORT)));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "client", "db");
}

/// `client` may reach `@world` on the port, db (segmented) not at all.
fn world_open(port: u16) -> String {
    format!(
        r#"
[[workload]]
name = "client"
cgroup = "client"
labels = {{ segment = "client" }}

[[workload]]
name = "db"
cgroup = "db"
labels = {{ segment = "db" }}

[[segment]]
name = "client-seg"
select = {{ segment = "client" }}

[[segment]]
name = "db-seg"
select = {{ segment = "db" }}

[[allow]]
from = "client-seg"
to = "@world"
ports = ["tcp/{port}"]
"#
    )
}

/// The address no `[[node]]` table declares, on the client host's `lo`.
const UNDECLARED: &str = "${NET4}.77.7";

/// Control first (`@world` is open), then the undeclared local address, which must resolve to the
/// local listener's workload rather than to `@world`.
fn assert_undeclared_address_is_local(lab: &Lab, port: u16) {
    let world = lab.ip("${WORLD4}");
    let _remote = lab.listen(Proto::Tcp, world, port);
    let db = lab.listen_local("db", Proto::Tcp, ANY4, port);
    lab.probe("client").tcp_connect(world, port).assert_ok();

    let local = lab.ip(UNDECLARED);
    lab.probe("client").tcp_connect(local, port).assert_denied();
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, local, Some(port)));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "client", "db");
    assert!(
        db.peers().is_empty(),
        "client reached db through an undeclared local address: {:?}",
        db.peers()
    );
}

#[test]
fn an_undeclared_local_address_present_at_start_is_local() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7103;
    let lab = Lab::builder()
        .workload("client")
        .workload("db")
        .client_addr(UNDECLARED)
        .server_addr("${WORLD4}")
        .policy("main.toml", &world_open(PORT))
        .start();
    assert_undeclared_address_is_local(&lab, PORT);
}

#[test]
fn an_undeclared_local_address_added_while_running_is_local_within_a_second() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7104;
    let lab = Lab::builder()
        .workload("client")
        .workload("db")
        .server_addr("${WORLD4}")
        .policy("main.toml", &world_open(PORT))
        .start();
    lab.add_client_addr(UNDECLARED);
    // The daemon learns it from the kernel (netlink address events).
    thread::sleep(Duration::from_secs(1));
    assert_undeclared_address_is_local(&lab, PORT);
}
