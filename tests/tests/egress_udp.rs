//! Datagram egress: unconnected `sendto` (the `sendmsg4`/`sendmsg6` hooks), connected UDP (the
//! connect hooks) and ICMP echo through ping sockets.

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Proto,
    events::{self, Verdict},
    require_privileges,
};

const POLICY: &str = r#"
[[workload]]
name = "resolver"
cgroup = "resolver"
labels = { segment = "infra" }

[[peer]]
name = "dns"
cidrs = ["${SERVER4}/32", "${SERVER6}/128"]
labels = { segment = "dns" }

[[segment]]
name = "infra"
select = { segment = "infra" }

[[segment]]
name = "dns-seg"
select = { segment = "dns" }

[[allow]]
from = "infra"
to = "dns-seg"
ports = ["udp/53", "icmp"]
"#;

fn lab() -> Lab {
    Lab::builder()
        .workload("resolver")
        .policy("main.toml", POLICY)
        .start()
}

#[test]
fn unconnected_udp_sendto_v4_and_v6() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    for server in [lab.server4(), lab.server6()] {
        let dns = lab.listen(Proto::Udp, server, 53);
        let ntp = lab.listen(Proto::Udp, server, 123);

        lab.probe("resolver").udp_sendto(server, 53).assert_ok();
        dns.wait_for_peers(1, EVENT_TIMEOUT);

        lab.probe("resolver")
            .udp_sendto(server, 123)
            .assert_denied();
        let ev = lab
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, server, Some(123)));
        events::assert_verdict(&ev, Verdict::Denied);
        events::assert_names(&ev, "resolver", "dns");
        assert_eq!(events::str_at(&ev, "connection_info.protocol_name"), "udp");
        assert_eq!(events::u64_at(&ev, "connection_info.protocol_num"), 17);
        let version = if server.is_ipv4() { 4 } else { 6 };
        assert_eq!(
            events::u64_at(&ev, "connection_info.protocol_ver_id"),
            version
        );
        assert!(
            ntp.peers().is_empty(),
            "a denied datagram was delivered: {:?}",
            ntp.peers()
        );
    }
}

#[test]
fn connected_udp_v4_and_v6() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    for server in [lab.server4(), lab.server6()] {
        let dns = lab.listen(Proto::Udp, server, 53);
        let ntp = lab.listen(Proto::Udp, server, 123);

        lab.probe("resolver").udp_connect(server, 53).assert_ok();
        dns.wait_for_peers(1, EVENT_TIMEOUT);

        lab.probe("resolver")
            .udp_connect(server, 123)
            .assert_denied();
        let ev = lab
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, server, Some(123)));
        events::assert_verdict(&ev, Verdict::Denied);
        assert_eq!(events::str_at(&ev, "connection_info.protocol_name"), "udp");
        assert!(
            ntp.peers().is_empty(),
            "a denied datagram was delivered: {:?}",
            ntp.peers()
        );
    }
}

#[test]
fn udp_rule_does_not_open_tcp() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let server = lab.server4();
    let _tcp = lab.listen(Proto::Tcp, server, 53);
    lab.probe("resolver")
        .tcp_connect(server, 53)
        .assert_denied();
}

#[test]
fn icmp_echo_allowed_by_icmp_term() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    lab.probe("resolver").ping(lab.server4()).assert_ok();
    lab.probe("resolver").ping(lab.server6()).assert_ok();
}

#[test]
fn icmp_echo_denied_without_icmp_term() {
    if !require_privileges() {
        return;
    }
    let policy = POLICY.replace(r#", "icmp""#, "");
    assert_ne!(
        policy, POLICY,
        "the icmp term to remove is gone from POLICY"
    );
    let lab = Lab::builder()
        .workload("resolver")
        .policy("main.toml", &policy)
        .start();
    for server in [lab.server4(), lab.server6()] {
        lab.probe("resolver").ping(server).assert_denied();
        let ev = lab
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, server, None));
        events::assert_verdict(&ev, Verdict::Denied);
        events::assert_names(&ev, "resolver", "dns");
        assert_eq!(events::str_at(&ev, "connection_info.protocol_name"), "icmp");
        let num = if server.is_ipv4() { 1 } else { 58 };
        assert_eq!(events::u64_at(&ev, "connection_info.protocol_num"), num);
        assert!(
            events::try_field(&ev, "dst_endpoint.port").is_none(),
            "an ICMP event carries no port: {ev:#}"
        );
    }
}
