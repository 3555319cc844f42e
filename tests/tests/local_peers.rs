//! Connections that stay on this node are judged with both real identities: the destination is the
//! workload that bound the port (seen by `post_bind`), not the node, and stops being it once the
//! socket is released.

use std::{
    net::{IpAddr, Ipv4Addr},
    thread,
    time::Duration,
};

use enforcer_tests::{EVENT_TIMEOUT, Lab, Listener, Proto, events, require_privileges};

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[workload]]
name = "api"
cgroup = "api"
labels = { segment = "api" }

[[workload]]
name = "batch"
cgroup = "batch"
labels = { app = "batch" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "api-seg"
select = { segment = "api" }

[[allow]]
from = "web-seg"
to = "api-seg"
ports = ["tcp/8080"]
"#;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn a_local_listener_is_judged_as_its_workload_until_it_closes() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .workload("api")
        .workload("batch")
        .policy("main.toml", POLICY)
        .start();
    let api = Listener::start_in(
        Some(&lab.cgroup_root().join("api")),
        lab.client_ns().name(),
        Proto::Tcp,
        LOOPBACK,
        8080,
    );

    // web -> api is allowed by the rule; judged as web -> the node it would be default-denied.
    lab.probe("web").tcp_connect(LOOPBACK, 8080).assert_ok();
    api.wait_for_peers(1, EVENT_TIMEOUT);

    // An unsegmented caller reaching the api segment is isolated by api's default deny.
    lab.probe("batch")
        .tcp_connect(LOOPBACK, 8080)
        .assert_denied();
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, LOOPBACK, Some(8080)));
    events::assert_names(&ev, "batch", "api");
    events::assert_rule(&ev, "default-deny:api-seg");

    // Released: the port belongs to nobody, so the node is the destination and web's own
    // isolation decides (EPERM, not the ECONNREFUSED of a closed port).
    drop(api);
    thread::sleep(Duration::from_millis(200));
    lab.probe("web").tcp_connect(LOOPBACK, 8080).assert_denied();
    let ev = lab.daemon().wait_for_event(EVENT_TIMEOUT, |e| {
        events::is_to(e, LOOPBACK, Some(8080)) && events::str_at(e, "src_endpoint.name") == "web"
    });
    events::assert_names(&ev, "web", "client-host");
    events::assert_rule(&ev, "default-deny:web-seg");
}
