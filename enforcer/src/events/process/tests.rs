use std::{
    process::{Command, Stdio},
    time::Duration,
};

use nix::time::{ClockId, clock_gettime};

use super::*;

const ID: &str = "4f3c5a0e9b8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

fn boot_ns_now() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
    u64::try_from(now.tv_sec()).expect("after boot") * 1_000_000_000
        + u64::try_from(now.tv_nsec()).expect("nanoseconds")
}

/// A `sleep 30` child, once its exec is complete: `spawn` returns part-way through `execve`,
/// when the new command line may not be set up yet.
fn sleeping_child() -> std::process::Child {
    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let cmdline = format!("/proc/{}/cmdline", child.id());
    let started = (0..500).any(|_| {
        let done = fs::read(&cmdline).is_ok_and(|raw| raw == b"sleep\x0030\x00");
        if !done {
            std::thread::sleep(Duration::from_millis(10));
        }
        done
    });
    if !started {
        child.kill().expect("kill");
        child.wait().expect("reap");
        panic!("sleep never started");
    }
    child
}

#[test]
fn stat_fields_are_counted_after_the_last_parenthesis() {
    let text = "4242 (my (odd) name) S 4200 4242 4200 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
    assert_eq!(
        parse_stat(text),
        Some(Stat {
            comm: "my (odd) name".to_owned(),
            parent_pid: 4200,
            start_ticks: 987_654,
        })
    );
    assert_eq!(parse_stat("4242 (truncated) S 4200"), None);
    assert_eq!(parse_stat(""), None);
}

#[test]
fn a_command_line_joins_its_arguments() {
    assert_eq!(
        cmd_line(b"curl\0-s\0db:5432\0"),
        Some("curl -s db:5432".to_owned())
    );
    assert_eq!(cmd_line(b""), None, "a zombie or kernel thread");
    assert_eq!(cmd_line(b"\0"), None);
}

#[test]
fn the_v2_line_gives_the_cgroup_path() {
    assert_eq!(
        cgroup_v2_path("0::/system.slice/web.service\n"),
        Some("/system.slice/web.service")
    );
    let hybrid = "12:pids:/system.slice/web.service\n1:name=systemd:/system.slice/web.service\n0::/system.slice/web.service\n";
    assert_eq!(cgroup_v2_path(hybrid), Some("/system.slice/web.service"));
    assert_eq!(
        cgroup_v2_path("0::/system.slice/gone.service (deleted)\n"),
        Some("/system.slice/gone.service")
    );
    assert_eq!(cgroup_v2_path("0::/\n"), Some("/"));
    assert_eq!(cgroup_v2_path("4:memory:/user.slice\n"), None, "v1 only");
}

#[test]
fn systemd_units_are_the_deepest_service_or_scope() {
    let cases = [
        ("/system.slice/web.service", Some("web.service")),
        ("/system.slice/web.service/worker", Some("web.service")),
        (
            "/user.slice/user-1000.slice/session-3.scope",
            Some("session-3.scope"),
        ),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1d2c.scope",
            Some("vte-spawn-1d2c.scope"),
        ),
        (
            "/user.slice/user-1000.slice/user@1000.service/init.scope",
            Some("init.scope"),
        ),
        ("/init.scope", Some("init.scope")),
        ("/kubepods.slice/kubepods-besteffort.slice", None),
        ("/", None),
    ];
    for (path, unit) in cases {
        assert_eq!(systemd_unit(path).as_deref(), unit, "{path}");
    }
}

#[test]
fn container_ids_of_every_runtime() {
    let cases = [
        format!("/system.slice/docker-{ID}.scope"),
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{ID}.scope"
        ),
        format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice/crio-{ID}.scope"
        ),
        format!("/machine.slice/libpod-{ID}.scope/container"),
        format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
        format!("/docker/{ID}"),
        format!("/kubepods/besteffort/pod0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9/{ID}"),
        format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod0a1b2c3d_4e5f_6071_8293_a4b5c6d7e8f9.slice:cri-containerd:{ID}"
        ),
    ];
    for path in &cases {
        assert_eq!(container_id(path).as_deref(), Some(ID), "{path}");
    }
    let none = [
        "/system.slice/sshd.service".to_owned(),
        format!("/machine.slice/libpod-conmon-{ID}.scope"),
        format!("/system.slice/crio-conmon-{ID}.scope"),
        // One digit short, and upper case: not a runtime's id.
        format!("/docker/{}", &ID[1..]),
        format!("/docker/{}", ID.to_uppercase()),
        "/".to_owned(),
    ];
    for path in &none {
        assert_eq!(container_id(path), None, "{path}");
    }
}

#[test]
fn a_workload_has_its_path_unit_and_container() {
    let path = format!("/system.slice/docker-{ID}.scope");
    assert_eq!(
        workload(&path),
        FlowWorkload {
            cgroup_path: path.clone(),
            systemd_unit: Some(format!("docker-{ID}.scope")),
            container_id: Some(ID.to_owned()),
        }
    );
}

#[test]
fn a_live_process_is_read_and_cached() {
    let mut child = sleeping_child();
    let pid = child.id();
    let mut cache = ProcessCache::default();
    let details = cache.details(pid, boot_ns_now()).expect("a live child");
    assert_eq!(details.cmd_line.as_deref(), Some("sleep 30"));
    assert!(
        details
            .executable
            .as_deref()
            .is_some_and(|exe| exe.ends_with("/sleep")),
        "{details:?}"
    );
    assert_eq!(details.parent_pid, Some(std::process::id()));
    let own_cgroup = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    assert_eq!(
        details.workload.as_ref().map(|w| w.cgroup_path.as_str()),
        cgroup_v2_path(&own_cgroup),
        "a child starts in its parent's cgroup"
    );
    assert_eq!(cache.processes.len(), 1);
    assert_eq!(cache.details(pid, boot_ns_now()), Some(details));
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[test]
fn an_exited_process_has_no_details() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("reap");
    let mut cache = ProcessCache::default();
    assert_eq!(cache.details(pid, boot_ns_now()), None);
}

#[test]
fn a_process_started_after_the_decision_is_not_asked() {
    let decided = boot_ns_now();
    // A tick (10 ms at the usual USER_HZ) and more, so that the start time cannot round down to
    // the decision.
    std::thread::sleep(Duration::from_millis(50));
    let mut child = sleeping_child();
    let mut cache = ProcessCache::default();
    assert_eq!(
        cache.details(child.id(), decided),
        None,
        "a later holder of the pid"
    );
    assert!(cache.details(child.id(), boot_ns_now()).is_some());
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[test]
fn user_names_come_from_the_user_database() {
    let mut cache = ProcessCache::default();
    assert_eq!(cache.user_name(0).as_deref(), Some("root"));
    // Far above any range a user database hands out.
    assert_eq!(cache.user_name(4_000_000_000), None);
    assert_eq!(cache.users.len(), 2, "unknown uids are remembered too");
}

#[test]
fn the_cache_is_bounded() {
    let mut cache = ProcessCache::new(NonZeroUsize::MIN);
    let own = std::process::id();
    let parent = cache
        .details(own, boot_ns_now())
        .and_then(|d| d.parent_pid)
        .expect("this test's parent");
    assert!(cache.details(parent, boot_ns_now()).is_some());
    assert_eq!(cache.processes.len(), 1);
    assert!(cache.processes.contains(&parent));
}

/// A socket-layer denial by `pid` (`comm`, `uid`), decided now.
fn event_of(pid: u32, comm: &str, uid: u32) -> enforcer_common::FlowEvent {
    let mut name = [0_u8; 16];
    name[..comm.len()].copy_from_slice(comm.as_bytes());
    enforcer_common::FlowEvent {
        version: enforcer_common::FLOW_EVENT_VERSION,
        hook: enforcer_common::hook::CONNECT4,
        protocol: enforcer_common::protocol::TCP,
        ip_version: 4,
        pid,
        uid,
        comm: name,
        dst_port: 5432,
        src_addr: enforcer_common::ipv4_mapped([10, 0, 0, 1]),
        dst_addr: enforcer_common::ipv4_mapped([10, 0, 0, 2]),
        boot_ns: boot_ns_now(),
        ..enforcer_common::FlowEvent::default()
    }
}

fn enricher() -> crate::events::Enricher {
    crate::events::Enricher::new(
        crate::events::FlowNode {
            hostname: "app-1".to_owned(),
            is_virtual: false,
        },
        Vec::new(),
        None,
    )
}

#[test]
fn the_enricher_adds_what_proc_tells_of_a_live_process() {
    let mut child = sleeping_child();
    let record = enricher().enrich(
        &event_of(child.id(), "sleep", 0),
        std::time::SystemTime::now(),
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
    let process = record.process.expect("a process");
    assert_eq!((process.pid, process.name.as_str()), (child.id(), "sleep"));
    assert_eq!(process.cmd_line.as_deref(), Some("sleep 30"));
    assert!(
        process
            .executable
            .is_some_and(|exe| exe.ends_with("/sleep"))
    );
    assert_eq!(process.parent_pid, Some(std::process::id()));
    assert_eq!(process.user_name.as_deref(), Some("root"));
    let own_cgroup = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    assert_eq!(
        record.workload.map(|w| w.cgroup_path),
        cgroup_v2_path(&own_cgroup).map(str::to_owned)
    );
}

#[test]
fn an_exited_process_keeps_what_the_kernel_gave() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("reap");
    let record = enricher().enrich(&event_of(pid, "true", 0), std::time::SystemTime::now());
    let process = record.process.expect("a process");
    assert_eq!(
        (process.pid, process.name.as_str(), process.uid),
        (pid, "true", 0)
    );
    assert_eq!(
        (process.cmd_line, process.executable, process.parent_pid),
        (None, None, None)
    );
    assert_eq!(
        process.user_name.as_deref(),
        Some("root"),
        "the uid's name needs no process"
    );
    assert_eq!(record.workload, None);
}
