//! A local process is judged with its own cgroup's identity (POLICY.md, "Identities": the deepest
//! matching workload glob), never with a broader one: not while a new cgroup waits to be labelled
//! (it is held fail-closed or labelled at once), and not because it sits deeper than some fixed
//! number of levels.

use std::{thread, time::Duration};

use enforcer_tests::{
    CLIENT_NODE, EVENT_TIMEOUT, Lab, ProbeOutcome, Proto,
    events::{self, Verdict},
    require_privileges,
};
use serde_json::Value;

/// How long a connection that was let through gets to show up at the listener before the test
/// concludes none was.
const SETTLE: Duration = Duration::from_millis(300);

/// `tenant` may reach the server on tcp/`port`; every cgroup directly below it is the jailed
/// `jail`, a narrower identity than the tenant's.
fn tenant_and_jail(port: u16) -> String {
    format!(
        r#"
[[workload]]
name = "tenant"
cgroup = "tenant"
labels = {{ segment = "tenant" }}

# Every container the tenant starts is jailed.
[[workload]]
name = "jail"
cgroup = "tenant/*"
labels = {{ segment = "jail" }}

[[peer]]
name = "server"
cidrs = ["${{SERVER4}}/32"]
labels = {{ zone = "server" }}

[[segment]]
name = "tenant-seg"
select = {{ segment = "tenant" }}

[[segment]]
name = "jail-seg"
select = {{ segment = "jail" }}

[[allow]]
from = "tenant-seg"
to = {{ zone = "server" }}
ports = ["tcp/{port}"]
"#
    )
}

/// Whether `ev` reports the attempt of the probe process `outcome`.
fn by(ev: &Value, outcome: &ProbeOutcome) -> bool {
    events::try_field(ev, "actor.process.pid").and_then(Value::as_u64)
        == Some(u64::from(outcome.pid))
}

#[test]
fn a_new_cgroup_below_a_broader_parent_never_gets_out() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7201;
    const STARTS: usize = 100;
    let lab = Lab::builder()
        .workload("tenant")
        .policy("main.toml", &tenant_and_jail(PORT))
        .start();
    let server = lab.server4();
    let listener = lab.listen(Proto::Tcp, server, PORT);

    // As a container runtime does: make the cgroup and run the first process in it at once.
    let escaped: Vec<String> = (0..STARTS)
        .filter_map(|n| {
            let rel = format!("tenant/c-{n}");
            lab.create_cgroup(&rel);
            let outcome = lab.probe(&rel).tcp_connect(server, PORT);
            outcome.is_ok().then(|| format!("{rel}: {outcome}"))
        })
        .collect();
    thread::sleep(SETTLE);
    let peers = listener.peers();
    assert!(
        escaped.is_empty() && peers.is_empty(),
        "{} of {STARTS} new cgroups got out through their parent's identity (first: {:#?}); \
         the listener saw {} connection(s)",
        escaped.len(),
        &escaped[..escaped.len().min(3)],
        peers.len()
    );

    // Control: the parent itself is allowed.
    lab.probe("tenant").tcp_connect(server, PORT).assert_ok();
    listener.wait_for_peers(1, EVENT_TIMEOUT);
}

/// `shallow` (the chain's top) may reach the server; `deep` (the leaf) may not.
const CHAIN_POLICY: &str = r#"
[[workload]]
name = "shallow"
cgroup = "chain"
labels = { segment = "shallow" }

[[workload]]
name = "deep"
cgroup = "chain/**/leaf"
labels = { segment = "deep" }

[[peer]]
name = "server"
cidrs = ["${SERVER4}/32"]
labels = { zone = "server" }

[[segment]]
name = "shallow-seg"
select = { segment = "shallow" }

[[segment]]
name = "deep-seg"
select = { segment = "deep" }

[[allow]]
from = "shallow-seg"
to = { zone = "server" }
ports = ["tcp/7202"]
"#;
const CHAIN_PORT: u16 = 7202;
/// Cgroups in the chain, the managed root not counted: deeper than the 32 levels an ancestor walk
/// over absolute levels covers.
const CHAIN_DEPTH: usize = 40;

/// The probe in `rel` is denied as `deep` and reported so.
fn assert_denied_as_deep(lab: &Lab, rel: &str) {
    let outcome = lab.probe(rel).tcp_connect(lab.server4(), CHAIN_PORT);
    outcome.assert_denied();
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| by(e, &outcome));
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, "deep", "server");
}

/// A probe in a cgroup that may not be labelled yet: it must not connect, and its denial (which is
/// reported) names `deep` or a fail-closed identity, never one of the broader ones above it.
fn assert_not_out_before_labelled(lab: &Lab, rel: &str) {
    let outcome = lab.probe(rel).tcp_connect(lab.server4(), CHAIN_PORT);
    assert!(
        !outcome.is_ok(),
        "{rel} got out before it was labelled: {outcome}"
    );
    let ev = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| by(e, &outcome));
    events::assert_verdict(&ev, Verdict::Denied);
    let src = events::str_at(&ev, "src_endpoint.name");
    assert!(
        !["shallow", CLIENT_NODE, "@host"].contains(&src),
        "{rel} was judged as {src:?}, an ancestor's identity: {ev:#}"
    );
}

#[test]
fn a_cgroup_forty_levels_deep_is_judged_as_itself() {
    if !require_privileges() {
        return;
    }
    let mut lab = Lab::builder()
        .policy("main.toml", CHAIN_POLICY)
        .no_daemon()
        .start();
    let leaf = lab.cgroups().create_chain("chain", CHAIN_DEPTH, "leaf");
    lab.start_daemon();
    let server = lab.server4();
    let listener = lab.listen(Proto::Tcp, server, CHAIN_PORT);

    lab.probe("chain")
        .tcp_connect(server, CHAIN_PORT)
        .assert_ok();
    listener.wait_for_peers(1, EVENT_TIMEOUT);
    assert_denied_as_deep(&lab, &leaf);

    // One level further, made now: it inherits the leaf (its nearest labelled ancestor), not an
    // ancestor 32 absolute levels down.
    let below = format!("{leaf}/late");
    lab.create_cgroup(&below);
    assert_not_out_before_labelled(&lab, &below);

    thread::sleep(SETTLE);
    assert_eq!(listener.peers().len(), 1, "saw {:?}", listener.peers());
}

#[test]
fn a_forty_level_chain_made_while_running_never_gets_out() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder().policy("main.toml", CHAIN_POLICY).start();
    let server = lab.server4();
    let listener = lab.listen(Proto::Tcp, server, CHAIN_PORT);

    let leaf = lab.cgroups().create_chain("chain", CHAIN_DEPTH, "leaf");
    assert_not_out_before_labelled(&lab, &leaf);

    // Once labelled: the leaf is itself, the top of the chain is open.
    thread::sleep(Duration::from_secs(1));
    assert_denied_as_deep(&lab, &leaf);
    lab.probe("chain")
        .tcp_connect(server, CHAIN_PORT)
        .assert_ok();
    listener.wait_for_peers(1, EVENT_TIMEOUT);
    thread::sleep(SETTLE);
    assert_eq!(listener.peers().len(), 1, "saw {:?}", listener.peers());
}

/// A tenant with more cgroups than the label map holds: the daemon still starts (it used to fail
/// with E2BIG), says the map is full with the limit and the flag that raises it, and the cgroups
/// left unlabelled are held below a parent whose children may be someone else, never let out.
#[test]
fn more_cgroups_than_the_label_map_holds_never_lets_one_out() {
    if !require_privileges() {
        return;
    }
    const PORT: u16 = 7204;
    let lab = Lab::builder()
        .workload("tenant")
        .policy("main.toml", &tenant_and_jail(PORT))
        .no_daemon()
        .start();
    let containers = lab.cgroups().create_many("tenant", "c-", 40);
    // Two slots share the map: one policy may label 8 of the 42 cgroups.
    let daemon = enforcer_tests::Daemon::start(&enforcer_tests::DaemonArgs {
        extra: &["--max-cgroups", "16"],
        instance: None,
        ..lab.daemon_args()
    });
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("is full") && stderr.contains("--max-cgroups"),
        "the daemon did not report the full label map with the flag that raises it:\n{stderr}"
    );
    let listener = lab.listen(Proto::Tcp, lab.server4(), PORT);
    // The tenant itself (made first, labelled first) gets out as its policy says.
    lab.probe("tenant")
        .tcp_connect(lab.server4(), PORT)
        .assert_ok();
    listener.wait_for_peers(1, EVENT_TIMEOUT);
    for rel in containers.iter().rev().take(5) {
        let outcome = lab.probe(rel).tcp_connect(lab.server4(), PORT);
        assert!(!outcome.is_ok(), "{rel} got out: {outcome}");
    }
    thread::sleep(SETTLE);
    assert_eq!(
        listener.peers().len(),
        1,
        "an unlabelled container reached the server: {:?}",
        listener.peers()
    );
    drop(daemon);
}
