//! Audit mode, global and per segment: the connection proceeds and the denial is reported with the
//! verdict `audit`; enforcing segments beside an audited one keep enforcing.

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Proto,
    events::{self, Verdict},
    require_privileges,
};

const SEGMENTS: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[workload]]
name = "staging"
cgroup = "staging"
labels = { segment = "staging" }

[[peer]]
name = "db"
cidrs = ["${SERVER4}/32", "${SERVER6}/128"]
labels = { segment = "db" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "db-seg"
select = { segment = "db" }

[[deny]]
from = "staging-seg"
to = "db-seg"
ports = ["tcp/5432"]
"#;

fn lab(extra: &str) -> Lab {
    Lab::builder()
        .workload("web")
        .workload("staging")
        .server_addr("${WORLD4}")
        .policy("main.toml", &format!("{SEGMENTS}{extra}"))
        .start()
}

#[test]
fn global_audit_mode_lets_denials_through_and_reports_them() {
    if !require_privileges() {
        return;
    }
    let lab = lab(r#"
[[segment]]
name = "staging-seg"
select = { segment = "staging" }

[settings]
mode = "audit"
"#);
    let db = lab.server4();
    let world = lab.ip("${WORLD4}");
    let pg = lab.listen(Proto::Tcp, db, 5432);
    let web = lab.listen(Proto::Tcp, world, 80);

    // An explicit deny rule and a default deny: both would be refused under enforce.
    lab.probe("staging").tcp_connect(db, 5432).assert_ok();
    lab.probe("web").tcp_connect(world, 80).assert_ok();
    pg.wait_for_peers(1, EVENT_TIMEOUT);
    web.wait_for_peers(1, EVENT_TIMEOUT);

    let evs = lab.daemon().wait_for_events(2, EVENT_TIMEOUT);
    let by_rule = evs
        .iter()
        .find(|e| events::is_to(e, db, Some(5432)))
        .expect("audit event for staging -> db");
    events::assert_verdict(by_rule, Verdict::Audit);
    events::assert_rule(by_rule, &lab.rule_uid("main.toml", "[[deny]]", 0));
    let by_default = evs
        .iter()
        .find(|e| events::is_to(e, world, Some(80)))
        .expect("audit event for web -> world");
    events::assert_verdict(by_default, Verdict::Audit);
    events::assert_rule(by_default, "default-deny:web-seg");
}

#[test]
fn segment_audit_mode_covers_flows_out_of_and_into_the_segment_only() {
    if !require_privileges() {
        return;
    }
    let lab = lab(r#"
[[segment]]
name = "staging-seg"
select = { segment = "staging" }
mode = "audit"
"#);
    let db = lab.server4();
    let world = lab.ip("${WORLD4}");
    let _pg = lab.listen(Proto::Tcp, db, 5432);
    let _http = lab.listen(Proto::Tcp, world, 80);

    // Out of the audited segment: explicit deny and default deny both proceed.
    lab.probe("staging").tcp_connect(db, 5432).assert_ok();
    lab.probe("staging").tcp_connect(world, 80).assert_ok();
    // An enforcing segment next to it still enforces.
    lab.probe("web").tcp_connect(world, 80).assert_denied();

    let evs = lab.daemon().wait_for_events(3, EVENT_TIMEOUT);
    let verdict_of = |src: &str, ip, port| {
        let ev = evs
            .iter()
            .find(|e| {
                events::is_to(e, ip, Some(port)) && events::str_at(e, "src_endpoint.name") == src
            })
            .unwrap_or_else(|| panic!("no event for {src} -> {ip}:{port} in {evs:#?}"));
        ev.clone()
    };
    events::assert_verdict(&verdict_of("staging", db, 5432), Verdict::Audit);
    events::assert_verdict(&verdict_of("staging", world, 80), Verdict::Audit);
    events::assert_verdict(&verdict_of("web", world, 80), Verdict::Denied);
}

#[test]
fn audit_segment_as_destination_makes_the_flow_audited() {
    if !require_privileges() {
        return;
    }
    // Here `db` is the audited segment and `web` enforces: "S or D is a member of a segment whose
    // mode is audit" makes web -> db an audit.
    let lab = Lab::builder()
        .workload("web")
        .workload("staging")
        .policy(
            "main.toml",
            &(SEGMENTS.replace(
                "[[segment]]\nname = \"db-seg\"\nselect = { segment = \"db\" }\n",
                "[[segment]]\nname = \"db-seg\"\nselect = { segment = \"db\" }\nmode = \"audit\"\n",
            ) + "\n[[segment]]\nname = \"staging-seg\"\nselect = { segment = \"staging\" }\n"),
        )
        .start();
    assert!(
        std::fs::read_to_string(lab.policy_dir().path().join("main.toml"))
            .expect("read policy")
            .contains("mode = \"audit\""),
        "the db segment was not switched to audit"
    );
    let db = lab.server6();
    let _l = lab.listen(Proto::Tcp, db, 80);
    lab.probe("web").tcp_connect(db, 80).assert_ok();
    let ev = lab.daemon().wait_for_events(1, EVENT_TIMEOUT).remove(0);
    events::assert_verdict(&ev, Verdict::Audit);
    events::assert_names(&ev, "web", "db");
}
