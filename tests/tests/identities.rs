//! How endpoints resolve to identities: remote addresses (exact `[[node]]`, longest `[[peer]]`
//! prefix, `@world`, IPv6 prefixes that never claim IPv4), inline selectors, and local processes by cgroup (deepest match, cgroups
//! created while the daemon runs, cgroups no workload claims).

use std::{net::IpAddr, process::Command, thread, time::Duration};

use enforcer_tests::{
    CLIENT_NODE, EVENT_TIMEOUT, Lab, Proto,
    daemon::enforcer_bin,
    events::{self, Verdict},
    require_privileges,
};

const APP: &str = r#"
[[workload]]
name = "app"
cgroup = "app"
labels = { segment = "app" }

[[segment]]
name = "app-seg"
select = { segment = "app" }
"#;

#[test]
fn exact_node_beats_longest_prefix_which_beats_shorter_prefix() {
    if !require_privileges() {
        return;
    }
    let policy = format!(
        r#"{APP}
[[peer]]
name = "wide"
cidrs = ["${{NET4}}.0.0/16", "${{NET6}}::/48"]
labels = {{ zone = "wide" }}

[[peer]]
name = "narrow"
cidrs = ["${{NET4}}.20.0/24", "${{NET6}}:20::/64"]
labels = {{ zone = "narrow" }}

[[node]]
name = "db-node"
addresses = ["${{NET4}}.20.7", "${{NET6}}:20::7"]
labels = {{ role = "db" }}

# Only the /24 is open: an address that resolved to the /16 or to the node would be refused.
[[allow]]
from = "app-seg"
to = {{ zone = "narrow" }}
ports = ["tcp/80"]
"#
    );
    let lab = Lab::builder()
        .workload("app")
        .server_addr("${NET4}.17.9")
        .server_addr("${NET4}.20.9")
        .server_addr("${NET4}.20.7")
        .server_addr("${NET6}:17::9")
        .server_addr("${NET6}:20::9")
        .server_addr("${NET6}:20::7")
        .server_addr("${WORLD4}")
        .policy("main.toml", &policy)
        .start();
    let cases = [
        ("${NET4}.20.9", "narrow"),
        ("${NET4}.17.9", "wide"),
        ("${NET4}.20.7", "db-node"),
        ("${WORLD4}", "@world"),
        ("${NET6}:20::9", "narrow"),
        ("${NET6}:17::9", "wide"),
        ("${NET6}:20::7", "db-node"),
    ];
    let _listeners: Vec<_> = cases
        .iter()
        .map(|(addr, _)| lab.listen(Proto::Tcp, lab.ip(addr), 80))
        .collect();
    for (addr, identity) in cases {
        let ip = lab.ip(addr);
        let outcome = lab.probe("app").tcp_connect(ip, 80);
        if identity == "narrow" {
            outcome.assert_ok();
            continue;
        }
        outcome.assert_denied();
        let ev = lab
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, ip, Some(80)));
        events::assert_names(&ev, "app", identity);
    }
}

#[test]
fn world_is_what_no_table_claims_and_can_be_named() {
    if !require_privileges() {
        return;
    }
    let policy = format!(
        r#"{APP}
[[allow]]
from = "app-seg"
to = "@world"
ports = ["tcp/443"]
"#
    );
    let lab = Lab::builder()
        .workload("app")
        .server_addr("${WORLD4}")
        .server_addr("${WORLD6}")
        .policy("main.toml", &policy)
        .start();
    for world in [lab.ip("${WORLD4}"), lab.ip("${WORLD6}")] {
        let _https = lab.listen(Proto::Tcp, world, 443);
        let _http = lab.listen(Proto::Tcp, world, 80);
        lab.probe("app").tcp_connect(world, 443).assert_ok();
        lab.probe("app").tcp_connect(world, 80).assert_denied();
        let ev = lab
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, world, Some(80)));
        events::assert_names(&ev, "app", "@world");
        // An end is @world: the flow leaves the node, it is not lateral.
        assert_eq!(events::u64_at(&ev, "connection_info.direction_id"), 2);
    }
}

#[test]
fn inline_selectors_in_rules() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .workload("jobs")
        .server_addr("${NET4}.40.9")
        .server_addr("${NET4}.41.9")
        .policy(
            "main.toml",
            r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { app = "web", tier = "front", segment = "apps" }

[[workload]]
name = "jobs"
cgroup = "jobs"
labels = { app = "jobs", tier = "back", segment = "apps" }

[[peer]]
name = "db"
cidrs = ["${SERVER4}/32"]
labels = { zone = "db" }

[[peer]]
name = "cache"
cidrs = ["${NET4}.40.0/24"]
labels = { zone = "cache" }

[[peer]]
name = "queue"
cidrs = ["${NET4}.41.0/24"]
labels = { zone = "queue" }

[[segment]]
name = "apps"
select = { segment = "apps" }

# Every key must match: jobs (tier back) is not selected.
[[allow]]
from = { app = "web", tier = "front" }
to = { zone = ["db", "cache"] }
ports = ["tcp/80"]
"#,
        )
        .start();
    let db = lab.server4();
    let cache = lab.ip("${NET4}.40.9");
    let queue = lab.ip("${NET4}.41.9");
    let _listeners: Vec<_> = [db, cache, queue]
        .iter()
        .map(|&a| lab.listen(Proto::Tcp, a, 80))
        .collect();

    lab.probe("web").tcp_connect(db, 80).assert_ok();
    lab.probe("web").tcp_connect(cache, 80).assert_ok();
    lab.probe("web").tcp_connect(queue, 80).assert_denied();
    lab.probe("jobs").tcp_connect(db, 80).assert_denied();
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, db, Some(80)));
    events::assert_names(&ev, "jobs", "db");
    events::assert_rule(&ev, "default-deny:apps");
}

#[test]
fn deepest_matching_cgroup_wins() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("svc/inner/deeper")
        .server_addr("${WORLD4}")
        .policy(
            "main.toml",
            r#"
[[workload]]
name = "inner"
cgroup = "svc/inner"
labels = { segment = "locked" }

[[workload]]
name = "outer"
cgroup = "svc/**"
labels = { app = "outer" }

[[segment]]
name = "locked-seg"
select = { segment = "locked" }
"#,
        )
        .start();
    let world = lab.ip("${WORLD4}");
    let _l = lab.listen(Proto::Tcp, world, 80);
    // svc/inner/deeper: matched by `svc/**` itself and by `svc/inner` through an ancestor; the
    // deepest match is the cgroup's own (`outer`, unsegmented). svc/inner: only `inner`.
    lab.probe("svc/inner/deeper")
        .tcp_connect(world, 80)
        .assert_ok();
    lab.probe("svc/inner")
        .tcp_connect(world, 80)
        .assert_denied();
    let ev = lab.daemon().wait_for_events(1, EVENT_TIMEOUT).remove(0);
    events::assert_names(&ev, "inner", "@world");
}

#[test]
fn nested_cgroup_inherits_the_nearest_workload() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("svc/locked/child")
        .server_addr("${WORLD4}")
        .policy(
            "main.toml",
            r#"
[[workload]]
name = "locked"
cgroup = "svc/locked"
labels = { segment = "locked" }

[[workload]]
name = "svc"
cgroup = "svc"
labels = { app = "svc" }

[[segment]]
name = "locked-seg"
select = { segment = "locked" }
"#,
        )
        .start();
    let world = lab.ip("${WORLD4}");
    let _l = lab.listen(Proto::Tcp, world, 80);
    lab.probe("svc").tcp_connect(world, 80).assert_ok();
    lab.probe("svc/locked/child")
        .tcp_connect(world, 80)
        .assert_denied();
    let ev = lab.daemon().wait_for_events(1, EVENT_TIMEOUT).remove(0);
    events::assert_names(&ev, "locked", "@world");
}

#[test]
fn cgroup_created_after_start_is_enforced_within_a_second() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("apps")
        .server_addr("${WORLD4}")
        .policy(
            "main.toml",
            r#"
[[workload]]
name = "apps"
cgroup = "apps"
labels = { tier = "apps" }

[[workload]]
name = "late"
cgroup = "apps/late-*"
labels = { segment = "late" }

[[segment]]
name = "late-seg"
select = { segment = "late" }
"#,
        )
        .start();
    let world = lab.ip("${WORLD4}");
    let _l = lab.listen(Proto::Tcp, world, 80);
    // The parent is unsegmented: a new cgroup judged by what it inherits would be let through.
    lab.probe("apps").tcp_connect(world, 80).assert_ok();

    lab.create_cgroup("apps/late-1");
    thread::sleep(Duration::from_secs(1));
    lab.probe("apps/late-1")
        .tcp_connect(world, 80)
        .assert_denied();
    let ev = lab.daemon().wait_for_events(1, EVENT_TIMEOUT).remove(0);
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "late", "@world");
}

#[test]
fn cgroup_no_workload_claims_is_this_node() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("misc")
        .server_addr("${WORLD4}")
        .node_labels(r#"{ segment = "hosts" }"#)
        .policy(
            "main.toml",
            r#"
[[segment]]
name = "hosts"
select = { segment = "hosts" }
"#,
        )
        .start();
    let world = lab.ip("${WORLD4}");
    let _l = lab.listen(Proto::Tcp, world, 80);
    lab.probe("misc").tcp_connect(world, 80).assert_denied();
    lab.probe("").tcp_connect(world, 80).assert_denied();
    let evs = lab.daemon().wait_for_events(2, EVENT_TIMEOUT);
    for ev in &evs {
        events::assert_names(ev, CLIENT_NODE, "@world");
        events::assert_rule(ev, "default-deny:hosts");
    }
}

#[test]
fn cgroup_no_table_claims_is_host_entity() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("misc")
        .without_node()
        .policy(
            "main.toml",
            r#"
[[peer]]
name = "db"
cidrs = ["${SERVER4}/32"]
labels = { segment = "db" }

[[segment]]
name = "db-seg"
select = { segment = "db" }

[[allow]]
from = "@host"
to = "db-seg"
ports = ["tcp/80"]
"#,
        )
        .start();
    let db = lab.server4();
    let _l1 = lab.listen(Proto::Tcp, db, 80);
    let _l2 = lab.listen(Proto::Tcp, db, 81);
    lab.probe("misc").tcp_connect(db, 80).assert_ok();
    lab.probe("misc").tcp_connect(db, 81).assert_denied();
    let ev = lab.daemon().wait_for_events(1, EVENT_TIMEOUT).remove(0);
    events::assert_names(&ev, "@host", "db");
}

#[test]
fn an_ipv6_prefix_never_claims_ipv4() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7401;
    let policy = format!(
        r#"
[[workload]]
name = "client"
cgroup = "client"
labels = {{ segment = "client" }}

[[peer]]
name = "server"
cidrs = ["${{SERVER4}}/32", "${{SERVER6}}/128"]
labels = {{ segment = "server" }}

# All of IPv6, and nothing of IPv4 (POLICY.md: the spaces are separate, whatever form the kernel
# stores an IPv4 address in).
[[peer]]
name = "v6-all"
cidrs = ["::/0"]
labels = {{ segment = "v6all" }}

[[segment]]
name = "client-seg"
select = {{ segment = "client" }}

[[segment]]
name = "server-seg"
select = {{ segment = "server" }}

[[segment]]
name = "v6all-seg"
select = {{ segment = "v6all" }}

[[allow]]
from = "client-seg"
to = "server-seg"
ports = ["tcp/{PORT}"]

[[allow]]
from = "client-seg"
to = "@world"
ports = ["tcp/{PORT}"]

[[deny]]
from = "client-seg"
to = "v6all-seg"
ports = ["any"]
"#
    );
    let lab = Lab::builder()
        .workload("client")
        .server_addr("${WORLD4}")
        .server_addr("${NET6}::99")
        .policy("main.toml", &policy)
        .start();
    let v6_other = lab.ip("${NET6}::99");
    let mapped = |template: &str| -> IpAddr {
        let IpAddr::V4(v4) = lab.ip(template) else {
            panic!("{template} is not IPv4")
        };
        IpAddr::V6(v4.to_ipv6_mapped())
    };
    let addrs = [lab.server4(), lab.ip("${WORLD4}"), lab.server6(), v6_other];
    let _listeners: Vec<_> = addrs
        .iter()
        .map(|&a| lab.listen(Proto::Tcp, a, PORT))
        .collect();

    // IPv4, through an AF_INET socket and IPv4-mapped through an AF_INET6 one: the server by its
    // /32, and an address no IPv4 table claims is @world, not v6-all.
    for ip in [
        lab.server4(),
        mapped("${SERVER4}"),
        lab.ip("${WORLD4}"),
        mapped("${WORLD4}"),
    ] {
        lab.probe("client").tcp_connect(ip, PORT).assert_ok();
    }
    // IPv6: the /128 beats ::/0; any other address is v6-all, denied by the [[deny]].
    lab.probe("client")
        .tcp_connect(lab.server6(), PORT)
        .assert_ok();
    lab.probe("client")
        .tcp_connect(v6_other, PORT)
        .assert_denied();
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, v6_other, Some(PORT)));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "client", "v6-all");
    events::assert_rule(&ev, &lab.rule_uid("main.toml", "[[deny]]", 0));
    let evs = lab.daemon().events();
    assert_eq!(evs.len(), 1, "only the IPv6 attempt is denied: {evs:#?}");

    // `enforcer check` warns that an IPv6 prefix overlaps the IPv4-mapped space.
    let out = Command::new(enforcer_bin())
        .arg("check")
        .arg(lab.policy_dir().path())
        .args(["--node", CLIENT_NODE])
        .output()
        .expect("run enforcer check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check refused the policy:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.to_lowercase().contains("warn") && l.contains("::/0")),
        "check says nothing about ::/0:\n{text}"
    );
}
