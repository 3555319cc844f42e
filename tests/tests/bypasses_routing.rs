//! The destination that is judged is the one the packet reaches (issue 5, class 2): DNAT in the
//! workload's own namespace, IPv6 routing headers and IPv4 source routes cannot carry a packet
//! judged for an allowed destination on to a denied one. And the other ways of naming a destination on one socket stay
//! judged: IPv4-mapped addresses, `sendto` on a connected socket, `connect(AF_UNSPEC)`, sendmmsg.

use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Listener, Probe, ProbeOutcome, Proto,
    events::{self, Verdict},
    require_privileges,
    scenarios::{
        TCP, UDP, app_and_free_lab, app_free_and_db, assert_denial, assert_nothing_delivered,
    },
};
use serde_json::Value;

/// `app` (a segment member) may reach `db` (the server) on tcp/8080, udp/8080 and udp/53 only.
/// `via` is a segmented server address nobody may reach; `plain` and `plain-via` are addresses in
/// no segment, and `free` is a workload in none.
fn lab() -> Lab {
    let plain = [
        "${NET4}.60.9/32",
        "${NET4}.61.9/32",
        "${NET6}:60::9/128",
        "${NET6}:61::9/128",
    ];
    let policy = app_free_and_db()
        .member_peer("via", &["${NET4}.40.9/32", "${NET6}:40::9/128"])
        .peer("plain", &plain, r#"{ zone = "plain" }"#)
        .segment("via")
        .allow("app-seg", "db-seg", &["tcp/8080", "udp/8080", "udp/53"]);
    let servers = [
        "${NET4}.40.9",
        "${NET4}.60.9",
        "${NET4}.61.9",
        "${NET6}:40::9",
        "${NET6}:60::9",
        "${NET6}:61::9",
    ];
    app_and_free_lab(&servers, &policy)
}

/// The denial event to `ip:port` over `protocol`, from `app` to `dst`.
#[track_caller]
fn denial(lab: &Lab, ip: IpAddr, port: u16, protocol: u64, dst: &str) -> Value {
    denial_to(lab, &[ip], port, protocol, dst)
}

/// Like [`denial`], for an event to any of `ips` (one destination written in several forms).
#[track_caller]
fn denial_to(lab: &Lab, ips: &[IpAddr], port: u16, protocol: u64, dst: &str) -> Value {
    assert_denial(lab, ips, Some(port), Some(protocol), "app", dst)
}

/// The denial of a datagram from `app` to `db:53` sent by way of `via`: reported for whichever
/// of the two the packet was addressed to when it was dropped.
#[track_caller]
fn denial_via(lab: &Lab, via: IpAddr, db: IpAddr) {
    let ev = lab.daemon().wait_for_event(EVENT_TIMEOUT, |e| {
        events::is_to(e, via, Some(53)) || events::is_to(e, db, Some(53))
    });
    events::assert_verdict(&ev, Verdict::Denied);
    let dst = if events::is_to(&ev, via, None) {
        "via"
    } else {
        "db"
    };
    events::assert_names(&ev, "app", dst);
}

/// Control: `app` reaches `db:53` over plain UDP, which `dns` receives.
fn udp_to_dns_is_delivered(lab: &Lab, db: IpAddr, dns: &Listener) {
    lab.probe("app").udp_sendto(db, 53).assert_ok();
    dns.wait_for_peers(1, EVENT_TIMEOUT);
}

/// Loads `ruleset` into the lab's client namespace with `nft -f -`: the workload's own netns,
/// where a workload with `CAP_NET_ADMIN` there could do the same. Goes with the namespace.
fn nft(lab: &Lab, ruleset: &str) {
    nft_in(lab.client_ns().name(), ruleset);
}

/// Runs `nft -f -` with `ruleset` in the network namespace `netns`.
fn nft_in(netns: &str, ruleset: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "run ip netns exec ... nft (is nftables installed? `cargo xtask setup` installs it)",
        );
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(ruleset.as_bytes())
        .expect("write the ruleset to nft");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft -f - failed ({}): {}\n{ruleset}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An `output` nat chain in the client namespace rewriting `db:8080` to `db:22` for `l4`.
fn dnat_8080_to_22(lab: &Lab, l4: &str) {
    nft(
        lab,
        &lab.expand(&format!(
            "table inet enf_dnat {{
  chain out {{
    type nat hook output priority -100; policy accept;
    ip daddr ${{SERVER4}} {l4} dport 8080 dnat ip to ${{SERVER4}}:22
    ip6 daddr ${{SERVER6}} {l4} dport 8080 dnat ip6 to [${{SERVER6}}]:22
  }}
}}
"
        )),
    );
}

/// Packets the server host received for tcp/`port` (named nft counters in the server's input
/// hook, set up by [`count_server_ports`]).
fn server_packets(lab: &Lab, port: u16) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.server_ns().name(),
            "nft",
            "list",
            "counter",
            "inet",
        ])
        .args(["enf_count", &format!("tcp{port}")])
        .output()
        .expect("run nft list counter");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|word| *word != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {text:?}"))
}

/// `app` sends on a repaired connection to `server:port`; the send itself may be reset.
fn repaired_send(lab: &Lab, server: IpAddr, port: u16) {
    let outcome = lab.probe("app").tcp_repair_send(server, port);
    assert!(
        outcome.is_ok() || outcome.result() == "ECONNRESET",
        "a repaired connection could not send: {outcome}"
    );
}

/// Counts what the server host receives on tcp/8080 and tcp/22, whatever answers it.
fn count_server_ports(lab: &Lab) {
    nft_in(
        lab.server_ns().name(),
        "table inet enf_count {
  counter tcp8080 {}
  counter tcp22 {}
  chain in {
    type filter hook input priority 0; policy accept;
    tcp dport 8080 counter name tcp8080
    tcp dport 22 counter name tcp22
  }
}
",
    );
}

#[test]
fn dnat_of_a_connection_that_never_sent_a_syn_is_judged() {
    // `TCP_REPAIR` makes a socket established without a SYN: its first packet here is data, which
    // a DNAT rule picked up mid-stream rewrites. The packet layer judges any segment that is not
    // to the socket's own peer.
    if !require_privileges() {
        return;
    }
    let lab = lab();
    count_server_ports(&lab);
    for server in [lab.server4(), lab.server6()] {
        // The connect is judged even in repair mode: a denied port is refused at once.
        lab.probe("app")
            .tcp_repair_send(server, 9090)
            .assert_denied();
        denial(&lab, server, 9090, TCP, "db");
    }
    // Control: a repaired connection's first packet (the window probe leaving repair mode)
    // reaches the server. The server resets a connection it never saw, so the probe's own send
    // may fail with ECONNRESET: the counter is what tells.
    let before = server_packets(&lab, 8080);
    repaired_send(&lab, lab.server4(), 8080);
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    while server_packets(&lab, 8080) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no packet of a repaired connection reached the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    dnat_8080_to_22(&lab, "tcp");
    for server in [lab.server4(), lab.server6()] {
        repaired_send(&lab, server, 8080);
        denial(&lab, server, 22, TCP, "db");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        server_packets(&lab, 22),
        0,
        "a segment DNAT'd to the denied tcp/22 reached the server"
    );
}

/// A probe action towards one address and port.
type Attempt = fn(&Probe, IpAddr, u16) -> ProbeOutcome;

/// `send` reaches `db:8080` over `proto` until a DNAT rule in the workload's netns rewrites it to
/// port 22: then `refused` holds of the outcome, and the packet is dropped and reported for the
/// port it reaches.
fn dnat_cannot_redirect(proto: Proto, send: Attempt, refused: fn(&ProbeOutcome), what: &str) {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let servers = [lab.server4(), lab.server6()];
    let listeners: Vec<(Listener, Listener)> = servers
        .iter()
        .map(|&s| (lab.listen(proto, s, 8080), lab.listen(proto, s, 22)))
        .collect();
    // Without the rule, port 8080 is allowed and reaches its listener.
    for (&server, (allowed, _)) in servers.iter().zip(&listeners) {
        send(&lab.probe("app"), server, 8080).assert_ok();
        allowed.wait_for_peers(1, EVENT_TIMEOUT);
    }
    let (l4, number) = if matches!(proto, Proto::Tcp) {
        ("tcp", TCP)
    } else {
        ("udp", UDP)
    };
    dnat_8080_to_22(&lab, l4);
    for (&server, (_, ssh)) in servers.iter().zip(&listeners) {
        refused(&send(&lab.probe("app"), server, 8080));
        denial(&lab, server, 22, number, "db");
        assert_nothing_delivered(ssh, what);
    }
}

#[test]
fn dnat_in_the_workloads_netns_cannot_redirect_tcp_to_a_denied_port() {
    // The SYN, rewritten to port 22 after the connect hook, is dropped: a timeout (or EPERM),
    // never a connection.
    let refused = |outcome: &ProbeOutcome| {
        assert!(
            !outcome.is_ok(),
            "a connection DNAT'd to the denied tcp/22 got through: {outcome}"
        );
    };
    dnat_cannot_redirect(
        Proto::Tcp,
        Probe::tcp_connect,
        refused,
        "a SYN DNAT'd to tcp/22",
    );
}

#[test]
fn dnat_in_the_workloads_netns_cannot_redirect_udp_to_a_denied_port() {
    dnat_cannot_redirect(
        Proto::Udp,
        Probe::udp_sendto,
        |outcome| {
            outcome.assert_denied();
        },
        "a datagram DNAT'd to udp/22",
    );
}

/// `outcome` is a refusal, by the setsockopt that would set `what`.
#[track_caller]
fn assert_refused_at_setsockopt(outcome: &ProbeOutcome, what: &str) {
    outcome.assert_denied();
    assert!(
        outcome.stderr.contains("setsockopt"),
        "{what} must be refused at setsockopt: {outcome}"
    );
}

/// IPv6 routing header types: 4 (segment routing) is the one this kernel takes by setsockopt;
/// 0 is obsolete and 2 (Mobile IPv6) needs CONFIG_IPV6_MIP6.
const SEGMENT_ROUTING: u8 = 4;
const MOBILE_IPV6: u8 = 2;

#[test]
fn ipv6_routing_header_is_refused_to_segment_members() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let (db, via) = (lab.server6(), lab.ip("${NET6}:40::9"));
    let dns = lab.listen(Proto::Udp, db, 53);

    // The socket kind itself is fine: the member reaches udp/53 without a routing header.
    udp_to_dns_is_delivered(&lab, db, &dns);

    // Judged for db:53, a segment routing header would send the packet to `via` first.
    let outcome = lab.probe("app").udp_rthdr(SEGMENT_ROUTING, via, db, 53);
    assert_refused_at_setsockopt(&outcome, "the routing header");
    // Whatever header type: a member gets none (this kernel refuses type 2 itself, EINVAL).
    let mip6 = lab.probe("app").udp_rthdr(MOBILE_IPV6, via, db, 53);
    assert!(
        !mip6.is_ok(),
        "a type-2 routing header was accepted for a member: {mip6}"
    );

    // A workload in no segment, between addresses in none, may set it.
    let (plain, plain_via) = (lab.ip("${NET6}:60::9"), lab.ip("${NET6}:61::9"));
    lab.probe("free")
        .udp_rthdr(SEGMENT_ROUTING, plain_via, plain, 53)
        .assert_ok();
}

#[test]
fn ipv6_routing_header_as_a_control_message_does_not_pass() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let (db, via) = (lab.server6(), lab.ip("${NET6}:40::9"));
    let dns = lab.listen(Proto::Udp, db, 53);
    let at_via = lab.listen(Proto::Udp, via, 53);

    for kind in [MOBILE_IPV6, SEGMENT_ROUTING] {
        let outcome = lab.probe("app").udp_rthdr_cmsg(kind, via, db, 53);
        match outcome.result() {
            // Sent with the header, the packet goes to `via` first: dropped there and reported.
            "EPERM" => {
                outcome.assert_denied();
                denial_via(&lab, via, db);
            }
            // Kernels without CONFIG_IPV6_MIP6 take no routing header as a control message.
            "EINVAL" => println!("type-{kind} IPV6_RTHDR control message: EINVAL from this kernel"),
            _ => panic!("a type-{kind} routing header in a control message was sent: {outcome}"),
        }
    }
    assert_nothing_delivered(&dns, "a datagram with a routing header");
    assert_nothing_delivered(&at_via, "a datagram with a routing header");
    // Control: the same sendmsg path without the header.
    udp_to_dns_is_delivered(&lab, db, &dns);
}

#[test]
fn ipv4_source_route_is_refused_to_segment_members() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let (db, via) = (lab.server4(), lab.ip("${NET4}.40.9"));
    let dns = lab.listen(Proto::Udp, db, 53);
    udp_to_dns_is_delivered(&lab, db, &dns);

    // Judged for db:53, the datagram would go to `via` first.
    for kind in ["lsrr", "ssrr"] {
        let outcome = lab.probe("app").udp_srr(kind, via, db, 53);
        assert_refused_at_setsockopt(&outcome, "the source route");
    }
    let (plain, plain_via) = (lab.ip("${NET4}.60.9"), lab.ip("${NET4}.61.9"));
    lab.probe("free")
        .udp_srr("lsrr", plain_via, plain, 53)
        .assert_ok();
}

#[test]
fn ipv4_source_route_as_a_control_message_is_dropped() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let (db, via) = (lab.server4(), lab.ip("${NET4}.40.9"));
    let dns = lab.listen(Proto::Udp, db, 53);

    // An IP_RETOPTS control message sets the route for one datagram, past any setsockopt hook:
    // the packet itself, addressed to `via`, is what is judged.
    let outcome = lab.probe("app").udp_srr_cmsg("lsrr", via, db, 53);
    outcome.assert_denied();
    denial_via(&lab, via, db);
    assert_nothing_delivered(&dns, "a datagram with a source route");

    // Control: the same path without the option, and the option between unsegmented ends.
    udp_to_dns_is_delivered(&lab, db, &dns);
    let (plain, plain_via) = (lab.ip("${NET4}.60.9"), lab.ip("${NET4}.61.9"));
    lab.probe("free")
        .udp_srr_cmsg("lsrr", plain_via, plain, 53)
        .assert_ok();
}

/// `::ffff:a.b.c.d`: an IPv4 destination through an AF_INET6 socket.
fn mapped(v4: IpAddr) -> IpAddr {
    match v4 {
        IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
        IpAddr::V6(_) => unreachable!("mapped() takes an IPv4 address"),
    }
}

#[test]
fn ipv4_mapped_destinations_are_judged_as_ipv4() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let db = lab.server4();
    let via_v6 = mapped(db);
    let web = lab.listen(Proto::Tcp, db, 8080);
    let admin = lab.listen(Proto::Tcp, db, 9090);
    let dns = lab.listen(Proto::Udp, db, 53);
    let ntp = lab.listen(Proto::Udp, db, 123);

    lab.probe("app").tcp_connect(via_v6, 8080).assert_ok();
    web.wait_for_peers(1, EVENT_TIMEOUT);
    udp_to_dns_is_delivered(&lab, via_v6, &dns);

    lab.probe("app").tcp_connect(via_v6, 9090).assert_denied();
    let ev = denial_to(&lab, &[db, via_v6], 9090, TCP, "db");
    assert_eq!(
        events::u64_at(&ev, "connection_info.protocol_ver_id"),
        4,
        "{ev:#}"
    );
    lab.probe("app").udp_sendto(via_v6, 123).assert_denied();
    denial_to(&lab, &[db, via_v6], 123, UDP, "db");
    lab.probe("app").udp_connect(via_v6, 123).assert_denied();
    assert_nothing_delivered(&admin, "a denied connection to an IPv4-mapped address");
    assert_nothing_delivered(&ntp, "a denied datagram to an IPv4-mapped address");
}

/// A probe action sending a first datagram to one address and port and a second to another.
type SendTwo = fn(&Probe, IpAddr, u16, IpAddr, u16) -> ProbeOutcome;

/// `send` to `db`, over both families: udp/53 then udp/8080 both arrive; udp/53 then udp/123 is
/// refused and reported, and udp/123 receives nothing. Where `first_arrives`, the udp/53 datagram
/// of the second attempt arrives too.
fn second_destination_is_judged(send: SendTwo, first_arrives: bool, what: &str) {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    for db in [lab.server4(), lab.server6()] {
        let dns = lab.listen(Proto::Udp, db, 53);
        let alt = lab.listen(Proto::Udp, db, 8080);
        let ntp = lab.listen(Proto::Udp, db, 123);

        send(&lab.probe("app"), db, 53, db, 8080).assert_ok();
        dns.wait_for_peers(1, EVENT_TIMEOUT);
        alt.wait_for_peers(1, EVENT_TIMEOUT);

        send(&lab.probe("app"), db, 53, db, 123).assert_denied();
        denial(&lab, db, 123, UDP, "db");
        if first_arrives {
            dns.wait_for_peers(2, EVENT_TIMEOUT);
        }
        assert_nothing_delivered(&ntp, what);
    }
}

#[test]
fn sendto_another_address_on_a_connected_udp_socket_is_judged() {
    // Connected to udp/53, sending to another port: the connected send of each attempt arrives.
    second_destination_is_judged(
        Probe::udp_connected_sendto,
        true,
        "a sendto past the connected address",
    );
}

#[test]
fn sendto_after_connect_af_unspec_is_judged() {
    // The verdict for the connected udp/53 does not outlive the disconnect.
    second_destination_is_judged(
        Probe::udp_unspec_sendto,
        false,
        "a sendto after connect(AF_UNSPEC)",
    );
}

#[test]
fn sendmmsg_judges_each_datagram() {
    // The first datagram (allowed) goes, the second (denied) does not.
    second_destination_is_judged(
        Probe::udp_sendmmsg,
        true,
        "the denied datagram of a sendmmsg",
    );
}
