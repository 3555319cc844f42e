//! Every socket kind is judged (issue 5, class 1 and 3): UDP-Lite, unconnected ping, raw TCP,
//! packet sockets and sockets passed in from outside the managed tree are judged like TCP and UDP,
//! and the other ways into the connect path (TCP Fast Open, MPTCP, io_uring) stay judged.
//!
//! Each test shows the refusal (nothing delivered, or the syscall failed), the event that reports
//! it, and the same socket kind reaching an allowed destination, so that none can pass by blocking
//! everything.

use std::{net::IpAddr, path::Path};

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Probe, ProbeOutcome, Proto, events, require_privileges,
    scenarios::{
        PolicyText, TCP, UDP, UDPLITE, app_and_free_lab, app_free_and_db, assert_denial,
        assert_nothing_delivered,
    },
};
use serde_json::Value;

/// A probe action towards one address and port.
type Attempt = fn(&Probe, IpAddr, u16) -> ProbeOutcome;

/// `app` (a segment member) may reach `db` (the server) on udp/53 and tcp/8080 only, `open` on
/// `any`, `echo` on `icmp` only. `free` is in no segment.
fn lab() -> Lab {
    let policy = app_free_and_db()
        .member_peer("open", &["${NET4}.40.9/32", "${NET6}:40::9/128"])
        .member_peer("echo", &["${NET4}.50.9/32", "${NET6}:50::9/128"])
        .segment("open")
        .segment("echo")
        .allow("app-seg", "db-seg", &["udp/53", "tcp/8080"])
        .allow("app-seg", "open-seg", &["any"])
        .allow("app-seg", "echo-seg", &["icmp"]);
    let servers = [
        "${NET4}.40.9",
        "${NET6}:40::9",
        "${NET4}.50.9",
        "${NET6}:50::9",
    ];
    app_and_free_lab(&servers, &policy)
}

/// The server's address in `db`, `open` or `echo` of the family of `v4`.
fn addr(lab: &Lab, name: &str, v4: bool) -> IpAddr {
    let template = match (name, v4) {
        ("db", true) => "${SERVER4}",
        ("db", false) => "${SERVER6}",
        ("open", true) => "${NET4}.40.9",
        ("open", false) => "${NET6}:40::9",
        ("echo", true) => "${NET4}.50.9",
        ("echo", false) => "${NET6}:50::9",
        _ => unreachable!("no address {name}"),
    };
    lab.ip(template)
}

/// The denial event to `ip` (and `port`) over IP protocol `protocol`, from `app` to `dst`.
#[track_caller]
fn denial(lab: &Lab, ip: IpAddr, port: Option<u16>, protocol: u64, dst: &str) -> Value {
    let ev = assert_denial(lab, &[ip], port, Some(protocol), "app", dst);
    let version = if ip.is_ipv4() { 4 } else { 6 };
    assert_eq!(
        events::u64_at(&ev, "connection_info.protocol_ver_id"),
        version,
        "{ev:#}"
    );
    ev
}

/// UDP-Lite through `send`, over both families: `any` lets it through (the listener receives it),
/// udp/53 does not name it (POLICY.md: other protocols match only `any`).
fn udplite_is_judged(send: Attempt, what: &str) {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    for v4 in [true, false] {
        let (db, open) = (addr(&lab, "db", v4), addr(&lab, "open", v4));
        let denied = lab.listen(Proto::UdpLite, db, 53);
        let allowed = lab.listen(Proto::UdpLite, open, 53);

        send(&lab.probe("app"), open, 53).assert_ok();
        allowed.wait_for_peers(1, EVENT_TIMEOUT);

        send(&lab.probe("app"), db, 53).assert_denied();
        denial(&lab, db, Some(53), UDPLITE, "db");
        assert_nothing_delivered(&denied, what);
    }
}

#[test]
fn udplite_connect_and_send_is_judged_as_udplite() {
    udplite_is_judged(
        Probe::udplite_connect,
        "a denied UDP-Lite datagram (connect, send)",
    );
}

#[test]
fn udplite_unconnected_sendto_is_judged_as_udplite() {
    udplite_is_judged(Probe::udplite_sendto, "a denied UDP-Lite datagram (sendto)");
}

/// The passed-in socket and packet-socket layers are BPF LSM programs: they apply only where the
/// kernel lets the daemon load them. Where it does not, the daemon says so at start and
/// `docs/coverage.md` lists what stays unjudged; the test says why it does not apply.
fn lsm_applies(lab: &Lab) -> bool {
    let loaded = lab.daemon().lsm_loaded();
    if !loaded {
        eprintln!(
            "NOT APPLICABLE: this kernel runs no BPF LSM programs for the enforcer (not active, or \
             refused at load); see the daemon's warning and docs/coverage.md"
        );
    }
    loaded
}

#[test]
fn unconnected_ping_sendto_is_judged() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    for v4 in [true, false] {
        // The echo reply is the proof of delivery.
        lab.probe("app")
            .ping_sendto(addr(&lab, "echo", v4))
            .assert_ok();

        let db = addr(&lab, "db", v4);
        let outcome = lab.probe("app").ping_sendto(db);
        if v4 {
            outcome.assert_denied();
        } else {
            // IPv6 ping sockets drop the error of a refused transmit (icmpv6 pushes its pending
            // frames without returning it): no reply is the proof that nothing left.
            outcome.assert_errno("ETIMEDOUT");
        }
        let ev = denial(&lab, db, None, if v4 { 1 } else { 58 }, "db");
        assert_eq!(events::str_at(&ev, "connection_info.protocol_name"), "icmp");
    }
}

#[test]
fn raw_tcp_syn_to_a_denied_port_is_dropped() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    for v4 in [true, false] {
        let db = addr(&lab, "db", v4);
        // Listeners on both ports: the allowed SYN is answered by a SYN-ACK, and a denied one
        // that got through would be too.
        let _allowed = lab.listen(Proto::Tcp, db, 8080);
        let _denied = lab.listen(Proto::Tcp, db, 9090);

        lab.probe("app").raw_tcp_syn(db, 8080).assert_ok();

        lab.probe("app").raw_tcp_syn(db, 9090).assert_denied();
        denial(&lab, db, Some(9090), TCP, "db");
    }
}

/// A socket made by a probe in the client namespace but in no cgroup of the managed tree (the
/// test's own), used in `app`'s cgroup.
type UsePassedIn = fn(&Probe, &Path, IpAddr, u16) -> ProbeOutcome;

/// A passed-in socket, used by `app`, reaches `db` on `allowed` and not on `denied`; the event's
/// process is the one that used the socket, not the one that made it.
fn passed_in_socket_is_judged(proto: Proto, use_it: UsePassedIn, ports: (u16, u16), what: &str) {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    if !lsm_applies(&lab) {
        return;
    }
    let (db, (allowed_port, denied_port)) = (lab.server4(), ports);
    let allowed = lab.listen(proto, db, allowed_port);
    let denied = lab.listen(proto, db, denied_port);
    let outsider = Probe::new(None, Some(lab.client_ns().name()));
    let app_cgroup = lab.cgroup_root().join("app");

    use_it(&outsider, &app_cgroup, db, allowed_port).assert_ok();
    allowed.wait_for_peers(1, EVENT_TIMEOUT);

    let outcome = use_it(&outsider, &app_cgroup, db, denied_port);
    outcome.assert_denied();
    let number = if matches!(proto, Proto::Tcp) {
        TCP
    } else {
        UDP
    };
    let ev = denial(&lab, db, Some(denied_port), number, "db");
    assert_eq!(
        events::u64_at(&ev, "actor.process.pid"),
        u64::from(outcome.pid),
        "the event names the process that used the passed-in socket: {ev:#}"
    );
    assert_nothing_delivered(&denied, what);
}

#[test]
fn passed_in_tcp_socket_is_judged_for_the_workload_using_it() {
    passed_in_socket_is_judged(
        Proto::Tcp,
        Probe::passed_tcp_connect,
        (8080, 9090),
        "a connection on a passed-in socket",
    );
}

#[test]
fn passed_in_udp_socket_is_judged_for_the_workload_using_it() {
    passed_in_socket_is_judged(
        Proto::Udp,
        Probe::passed_udp_sendto,
        (53, 123),
        "a datagram on a passed-in socket",
    );
}

/// In every packet-socket kind, `refused` is refused and `allowed` is not.
fn assert_packet_sockets(lab: &Lab, refused: &str, allowed: &str) {
    for kind in ["packet-raw", "packet-dgram", "inet-packet"] {
        lab.probe(refused).packet_socket(kind).assert_denied();
        lab.probe(allowed).packet_socket(kind).assert_ok();
    }
}

#[test]
fn packet_sockets_are_refused_to_segment_members_only() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    if lsm_applies(&lab) {
        assert_packet_sockets(&lab, "app", "free");
    }
}

#[test]
fn packet_sockets_allow_exempts_a_segment() {
    if !require_privileges() {
        return;
    }
    let policy = PolicyText::new()
        .member("app")
        .workload("capture", r#"{ segment = "tap" }"#)
        .segment("app")
        .segment_with("tap", &[r#"packet_sockets = "allow""#]);
    let lab = Lab::builder()
        .workload("app")
        .workload("capture")
        .policy("main.toml", policy.as_str())
        .start();
    if lsm_applies(&lab) {
        assert_packet_sockets(&lab, "app", "capture");
    }
}

/// `connect` reaches tcp/8080 and not tcp/9090, over both families. `unsupported` looks at the
/// first outcome and says whether this kernel cannot make the socket at all (the test stops).
fn judged_like_connect(connect: Attempt, what: &str, unsupported: fn(&ProbeOutcome) -> bool) {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    for v4 in [true, false] {
        let db = addr(&lab, "db", v4);
        let allowed = lab.listen(Proto::Tcp, db, 8080);
        let denied = lab.listen(Proto::Tcp, db, 9090);

        let control = connect(&lab.probe("app"), db, 8080);
        if unsupported(&control) {
            return;
        }
        control.assert_ok();
        allowed.wait_for_peers(1, EVENT_TIMEOUT);

        connect(&lab.probe("app"), db, 9090).assert_denied();
        denial(&lab, db, Some(9090), TCP, "db");
        assert_nothing_delivered(&denied, what);
    }
}

#[test]
fn tcp_fast_open_is_judged_like_connect() {
    judged_like_connect(
        Probe::tcp_fastopen,
        "a denied TCP Fast Open connection",
        |_| false,
    );
}

/// Whether a failure to create the socket may skip the test: never in CI.
fn may_skip() -> bool {
    std::env::var("CI").as_deref() != Ok("true")
        && std::env::var("ENFORCER_REQUIRE_PRIVILEGED").as_deref() != Ok("1")
}

#[test]
fn mptcp_connect_is_judged() {
    // Plain TCP listeners: MPTCP falls back to TCP with a peer that does not speak it.
    judged_like_connect(
        Probe::mptcp_connect,
        "a denied MPTCP connection",
        |control| {
            let unsupported = matches!(
                control.result(),
                "EPROTONOSUPPORT" | "ENOPROTOOPT" | "EINVAL"
            ) && control.stderr.contains("socket");
            if unsupported {
                assert!(
                    may_skip(),
                    "this kernel cannot create MPTCP sockets: {control}"
                );
                println!("SKIPPED: this kernel cannot create MPTCP sockets ({control})");
            }
            unsupported
        },
    );
}

#[test]
fn io_uring_connect_is_judged() {
    judged_like_connect(
        Probe::io_uring_connect,
        "a denied io_uring connection",
        |_| false,
    );
}
