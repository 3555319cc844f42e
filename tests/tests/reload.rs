//! Hot reload: a new policy takes effect in one step (never a mixed, allow-all or deny-all
//! moment), an invalid one is rejected whole while the last good one stays, identity numbers never
//! move, rollback flips back, and drift made by hand in the pinned maps is repaired.

use std::{
    collections::BTreeMap, fs, os::unix::fs::MetadataExt as _, process::Command, time::Duration,
};

use enforcer_tests::{
    EVENT_TIMEOUT, Lab, Proto, events, require_privileges,
    tight_loop::{TightLoop, tally},
};
use serde_json::Value;

const BASE: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }
"#;

/// Policy A allows 80 and 82; B allows 80 only. 81 is denied by both.
fn policy(alternate_open: bool) -> String {
    let ports = if alternate_open {
        r#"["tcp/80", "tcp/82"]"#
    } else {
        r#"["tcp/80"]"#
    };
    format!(
        "{BASE}\n[[allow]]\nname = \"web-out\"\nfrom = \"web-seg\"\nto = \"@world\"\nports = {ports}\n"
    )
}

fn lab() -> Lab {
    Lab::builder()
        .workload("web")
        .policy("main.toml", &policy(true))
        .start()
}

fn reload(lab: &Lab) -> std::process::Output {
    lab.instance().command("reload")
}

/// A tight loop across reloads: the verdicts are each policy's, and every denial has its event.
#[test]
fn a_hundred_reloads_under_a_tight_loop_give_one_policy_or_the_other_and_counts_add_up() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let server = lab.server4();
    // Nothing listens: an allowed connection is answered with a reset (a listener that cannot keep
    // up with the loop would time connections out, which is no verdict).
    let web = lab.cgroups().path().join("web");
    let lost_before = counter(&lab, "events_lost");
    let probes = TightLoop::start(
        &web,
        lab.client_ns().name(),
        Duration::from_secs(6),
        server,
        &[80, 81, 82],
    );
    for round in 0..100 {
        lab.policy_dir().write("main.toml", &policy(round % 2 == 1));
        let output = reload(&lab);
        assert!(
            output.status.success(),
            "reload {round}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let attempts = probes.finish();
    let counts = tally(&attempts);
    let (open_allowed, open_denied) = counts[&80];
    let (closed_allowed, closed_denied) = counts[&81];
    let (alt_allowed, alt_denied) = counts[&82];
    assert_eq!(
        open_denied, 0,
        "an allowed port was refused (deny-all?): {counts:?}"
    );
    assert_eq!(
        closed_allowed, 0,
        "a denied port got through (allow-all?): {counts:?}"
    );
    assert!(open_allowed > 0 && closed_denied > 0, "{counts:?}");
    assert!(
        alt_allowed > 0 && alt_denied > 0,
        "both policies must have been in force during the loop: {counts:?}"
    );
    assert_eq!(
        attempts.len(),
        open_allowed + closed_denied + alt_allowed + alt_denied,
        "every attempt has exactly one verdict"
    );
    // Every refusal is reported, or counted as lost: none vanishes. A connection let out under one
    // policy may have its SYN judged under the next by the packet layer (a flip in between) and
    // dropped, then retransmitted under the one after: that is a decision of its own, reported at
    // the packet layer, and only the alternating port can see it.
    let events_of = |layer: &str| -> Vec<Value> {
        lab.daemon()
            .events()
            .into_iter()
            .filter(|e| e["unmapped"]["layer"] == layer)
            .collect()
    };
    let packet = events_of("packet");
    assert!(
        packet.iter().all(|e| events::is_to(e, server, Some(82))),
        "only the alternating port may see a packet-layer denial: {packet:#?}"
    );
    // A SYN the packet layer drops while `connect` is still sending it fails that `connect`
    // with EPERM too: such a refusal is reported at the packet layer.
    let attempts_at = |layer: &str| -> u64 {
        events_of(layer)
            .iter()
            .filter(|e| events::is_to(e, server, Some(81)) || events::is_to(e, server, Some(82)))
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum()
    };
    let denied = (closed_denied + alt_denied) as u64;
    let lost = counter(&lab, "events_lost") - lost_before;
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT * 4;
    // Repeats are aggregated: an event stands for `count` refusals.
    let (reported, packet_attempts) = loop {
        let (reported, packet_attempts) = (attempts_at("socket"), attempts_at("packet"));
        if reported + packet_attempts + lost >= denied || std::time::Instant::now() > deadline {
            break (reported, packet_attempts);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        reported + lost <= denied && denied <= reported + packet_attempts + lost,
        "denied {denied}, reported {reported} at the socket layer and {packet_attempts} at the \
         packet layer, lost {lost}"
    );
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.instance().status()["daemon"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} in status"))
}

#[test]
fn an_invalid_policy_is_rejected_whole_and_the_last_good_one_stays() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let server = lab.server4();
    let _open = lab.listen(Proto::Tcp, server, 80);
    let _closed = lab.listen(Proto::Tcp, server, 81);
    let generation = lab.instance().status()["pinned"]["generation"].clone();
    lab.policy_dir().write(
        "main.toml",
        &format!(
            "{}\n[[allow]]\nfrom = \"web-seg\"\nto = \"@any\"\nports = [\"tcp/81\"]\nbogus = 1\n",
            policy(true)
        ),
    );
    let output = reload(&lab);
    assert!(
        !output.status.success(),
        "an invalid policy must be refused"
    );
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(
        answer.contains("main.toml:"),
        "the errors name the place: {answer}"
    );
    lab.probe("web").tcp_connect(server, 80).assert_ok();
    lab.probe("web").tcp_connect(server, 81).assert_denied();

    let stderr = lab.daemon().stderr();
    assert!(
        stderr.contains("policy rejected") && stderr.contains("main.toml:"),
        "{stderr}"
    );
    let status = lab.instance().status();
    assert_eq!(status["pinned"]["generation"], generation, "{status:#}");
    let errors = &status["daemon"]["status"]["last_rejected"]["errors"];
    assert!(
        errors.as_array().is_some_and(|e| e.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.contains("main.toml:") && e.contains("bogus")))),
        "{status:#}"
    );
    let rejected = lab
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| e["class_uid"] != 4001);
    assert!(rejected.to_string().contains("bogus"), "{rejected:#}");
}

#[test]
fn a_reload_that_adds_tables_renumbers_no_identity() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let path = lab.instance().state_dir().join("identities.json");
    let read = || -> BTreeMap<String, u64> {
        let json: Value =
            serde_json::from_slice(&fs::read(&path).expect("identities.json")).expect("JSON");
        json["ids"]
            .as_object()
            .expect("ids")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("number")))
            .collect()
    };
    let before = read();
    assert!(before.contains_key("workload/web"), "{before:?}");
    // A node first in file order and a workload before web: policy order would shift web.
    lab.policy_dir().write(
        "0-first.toml",
        "[[node]]\nname = \"aaa\"\naddresses = [\"192.0.2.1\"]\n\n[[workload]]\nname = \"aaa-job\"\ncgroup = \"job\"\n",
    );
    let output = reload(&lab);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = read();
    for (name, id) in &before {
        assert_eq!(after.get(name), Some(id), "{name} was renumbered");
    }
    assert!(after.len() > before.len());
}

#[test]
fn rollback_flips_back_to_the_previous_policy() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let server = lab.server4();
    let _alt = lab.listen(Proto::Tcp, server, 82);
    lab.probe("web").tcp_connect(server, 82).assert_ok();
    lab.policy_dir().write("main.toml", &policy(false));
    assert!(reload(&lab).status.success());
    lab.probe("web").tcp_connect(server, 82).assert_denied();
    let rollback = lab.instance().command("rollback");
    assert!(
        rollback.status.success(),
        "{}",
        String::from_utf8_lossy(&rollback.stderr)
    );
    lab.probe("web").tcp_connect(server, 82).assert_ok();
    let status = lab.instance().status();
    assert_eq!(status["pinned"]["generation"], 1, "{status:#}");
    assert_eq!(status["pinned"]["standby_generation"], 2, "{status:#}");
}

/// `bpftool map ... key/value hex ..` arguments for bytes.
fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bpftool(args: &[&str]) {
    let output = Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn drift_made_with_bpftool_is_repaired_and_counted() {
    if !require_privileges() {
        return;
    }
    let lab = lab();
    let server = lab.server4();
    let _open = lab.listen(Proto::Tcp, server, 80);
    let _closed = lab.listen(Proto::Tcp, server, 81);
    let status = lab.instance().status();
    let layout = status["pinned"]["layout"].as_str().expect("layout");
    let slot = status["pinned"]["active_slot"].as_u64().expect("slot") as u32;
    let map = lab.instance().bpffs().join(layout).join("CGROUP_IDENTITY");
    let map = map.to_str().expect("utf-8 path");
    let web_id = fs::metadata(lab.cgroups().path().join("web"))
        .expect("web cgroup")
        .ino();
    let key = |cgroup: u64| {
        let mut key = cgroup.to_le_bytes().to_vec();
        key.extend(slot.to_le_bytes());
        key.extend([0; 4]);
        hex(&key)
    };
    // Relabel web as @host (1): outside every segment, so 81 gets out.
    let mut update: Vec<String> = ["map", "update", "pinned", map, "key", "hex"]
        .map(str::to_owned)
        .to_vec();
    update.extend(key(web_id));
    update.extend(["value".to_owned(), "hex".to_owned()]);
    update.extend(hex(&[1, 0, 0, 0, 0, 0, 0, 0]));
    bpftool(&update.iter().map(String::as_str).collect::<Vec<_>>());
    lab.probe("web").tcp_connect(server, 81).assert_ok();
    // An entry added for a cgroup id nothing has.
    let mut add: Vec<String> = ["map", "update", "pinned", map, "key", "hex"]
        .map(str::to_owned)
        .to_vec();
    add.extend(key(u64::MAX - 7));
    add.extend(["value".to_owned(), "hex".to_owned()]);
    add.extend(hex(&[2, 0, 0, 0, 0, 0, 0, 0]));
    bpftool(&add.iter().map(String::as_str).collect::<Vec<_>>());

    let repaired = lab.instance().command("reconcile");
    assert!(
        repaired.status.success(),
        "{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    let detail: Value = serde_json::from_slice(&repaired.stdout).expect("JSON");
    assert_eq!(detail["repaired"], 2, "{detail:#}");
    lab.probe("web").tcp_connect(server, 81).assert_denied();

    // Deleted: web then inherits the root's hold and is refused everything until repaired.
    let mut delete: Vec<String> = ["map", "delete", "pinned", map, "key", "hex"]
        .map(str::to_owned)
        .to_vec();
    delete.extend(key(web_id));
    bpftool(&delete.iter().map(String::as_str).collect::<Vec<_>>());
    let repaired = lab.instance().command("reconcile");
    let detail: Value = serde_json::from_slice(&repaired.stdout).expect("JSON");
    assert_eq!(detail["repaired"], 1, "{detail:#}");
    lab.probe("web").tcp_connect(server, 80).assert_ok();
    let status = lab.instance().status();
    assert_eq!(status["daemon"]["status"]["repaired"], 3, "{status:#}");
    assert!(
        lab.daemon()
            .stderr()
            .contains("had drifted from the policy; repaired"),
        "{}",
        lab.daemon().stderr()
    );
}

/// A policy of `RULE_PORTS` ports from web to the world, each port set unique to `version`. The
/// ports are two apart: the compiler merges adjacent ones into one entry.
fn wide_policy(version: u16) -> String {
    let ports: Vec<String> = (0..RULE_PORTS)
        .map(|i| format!("\"tcp/{}\"", wide_port(version, i)))
        .collect();
    format!(
        "{BASE}\n[[allow]]\nname = \"web-out\"\nfrom = \"web-seg\"\nto = \"@world\"\nports = [{}]\n",
        ports.join(", ")
    )
}

fn wide_port(version: u16, i: u16) -> u16 {
    2000 + 2 * (version * RULE_PORTS + i)
}

/// With `--max-rules 64` one policy may use 32 entries; 18 ports and the lab's own dozen entries
/// fill most of that, so three policies at once do not fit.
const RULE_PORTS: u16 = 18;

/// Both slots share the rule map, sized for two full policies: a slot replaced wholesale must give
/// up its stale entries before it takes the new ones, or the second replacement finds the map
/// full.
#[test]
fn a_policy_near_capacity_replaced_wholesale_again_and_again_still_fits() {
    if !require_privileges() {
        return;
    }
    let lab = Lab::builder()
        .workload("web")
        .policy("main.toml", &wide_policy(0))
        .no_daemon()
        .start();
    let daemon = enforcer_tests::Daemon::start(&enforcer_tests::DaemonArgs {
        extra: &["--max-rules", "64"],
        ..lab.daemon_args()
    });
    let server = lab.server4();
    for version in 1..=4 {
        lab.policy_dir().write("main.toml", &wide_policy(version));
        let output = reload(&lab);
        assert!(
            output.status.success(),
            "replacement {version}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            daemon.stderr()
        );
        lab.probe("web")
            .tcp_connect(server, wide_port(version, 0))
            .assert_errno("ECONNREFUSED");
        lab.probe("web")
            .tcp_connect(server, wide_port(version - 1, 0))
            .assert_denied();
    }
}
