//! `cargo xtask vm-test`: the privileged kernel suite inside VMs on Debian's other kernels.
//!
//! The test binaries are built here and run in a virtme-ng guest that boots a Debian kernel
//! package (unpacked, never installed) over this machine's root file system, read-only. KVM is
//! used where it works; elsewhere (this machine kind's paravirtual `/dev/kvm` cannot run stock
//! kernels) qemu emulates the CPU (TCG), and the harness's waits are stretched to match.

mod guest;
pub(crate) mod kernels;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{command, exec, output, require_root, say};

/// One test of each layer the daemon runs: the fast path, the packet layer (DNAT, raw sockets),
/// BPF LSM, arrivals at sockets and at interfaces, local listeners, pinning, revocation and
/// aggregated reports. Under emulation a test takes one to two minutes (the verifier alone costs
/// about 30 s per daemon start), so the whole suite (about 110 tests) would take hours per
/// kernel. `--full` runs every test.
pub const SELECTION: [(&str, &str); 11] = [
    (
        "egress_tcp",
        "allowed_connect_succeeds_and_denied_fails_with_eperm_at_once",
    ),
    ("egress_udp", "unconnected_udp_sendto_v4_and_v6"),
    (
        "bypasses_routing",
        "dnat_in_the_workloads_netns_cannot_redirect_tcp_to_a_denied_port",
    ),
    (
        "bypasses_sockets",
        "raw_tcp_syn_to_a_denied_port_is_dropped",
    ),
    (
        "bypasses_sockets",
        "packet_sockets_are_refused_to_segment_members_only",
    ),
    (
        "inbound",
        "a_peer_without_an_enforcer_is_judged_where_it_arrives",
    ),
    (
        "arrivals",
        "closed_ports_and_processes_outside_the_subtree_are_judged_at_the_interface",
    ),
    (
        "local_peers",
        "a_local_listener_is_judged_as_its_workload_until_it_closes",
    ),
    (
        "pinning",
        "kill_9_keeps_the_policy_and_a_restart_adopts_it_with_no_gap",
    ),
    (
        "revocation",
        "an_outbound_flow_survives_an_unrelated_reload_and_a_revoked_one_is_aborted_within_a_second",
    ),
    (
        "lateral_movement",
        "a_scan_of_50_ports_raises_one_alert_and_keeps_its_denials_aggregated",
    ),
];

/// Where everything the VMs need is kept, below the workspace's `target/`.
fn vm_dir(workspace: &Path) -> PathBuf {
    workspace.join("target/vm")
}

/// Sets up, builds, and runs the suite in one VM per kernel; fails if any test fails in any VM.
///
/// # Errors
/// When set-up, the build, a VM or a test fails.
pub fn run(workspace: &Path, kernels: &[String], full: bool) -> anyhow::Result<()> {
    require_root("cargo xtask vm-test")?;
    let dir = vm_dir(workspace);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    kernels::host_packages()?;
    let vng = kernels::virtme_ng(&dir)?;
    // virtme-ng runs its own helpers (virtme-run) from PATH.
    let vng_dir = vng.parent().context("vng has no directory")?;
    let packages = if kernels.is_empty() {
        kernels::defaults()?
    } else {
        kernels.to_vec()
    };
    let booted: Vec<kernels::Kernel> = packages
        .iter()
        .map(|package| kernels::unpack(&dir, package))
        .collect::<anyhow::Result<_>>()?;
    let tests = build_tests(workspace)?;
    let first = booted.first().context("no kernel to boot")?;
    let emulated = !kernels::kvm_works(&vng, first);
    say(if emulated {
        "accelerator: KVM cannot boot these kernels here; qemu emulates the CPU (TCG)"
    } else {
        "accelerator: KVM"
    });
    let mut results = Vec::new();
    for kernel in &booted {
        let script = guest::script(workspace, &dir, kernel, &tests, full, emulated)?;
        say(&format!(
            "vm: booting {} ({}) with the {} suite",
            kernel.package,
            kernel.release,
            if full { "full" } else { "selected" }
        ));
        let started = Instant::now();
        let mut vm = Command::new(&vng);
        vm.env("PATH", crate::path_with(&[vng_dir]))
            .args(["--run"])
            .arg(&kernel.image)
            .args(["--memory", "2G", "--cpus", "2", "--exec"])
            .arg(&script)
            .current_dir(workspace);
        if emulated {
            vm.arg("--disable-kvm");
        }
        let log = dir.join(format!("{}.log", kernel.package));
        let passed = run_logged(&mut vm, &log)?;
        results.push((kernel.release.clone(), passed, started.elapsed()));
    }
    say("vm-test summary:");
    for (release, ok, took) in &results {
        println!(
            "  {:>6}  {:>6.0} s  {release}",
            if *ok { "ok" } else { "FAILED" },
            took.as_secs_f64()
        );
    }
    if results.iter().any(|(_, ok, _)| !ok) {
        bail!("the kernel suite failed in a VM (see above)");
    }
    Ok(())
}

/// Runs the VM with its output shown and kept in `log`; whether the suite passed. qemu opens the
/// guest's output as a file path and truncates it, so it gets a pipe, never our file.
fn run_logged(vm: &mut Command, log: &Path) -> anyhow::Result<bool> {
    let mut child = vm
        .stdout(Stdio::piped())
        .spawn()
        .context("starting virtme-ng")?;
    let mut kept = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the guest's output")?;
            println!("{line}");
            writeln!(kept, "{line}").context("writing the VM log")?;
        }
    }
    let status = child.wait().context("waiting for virtme-ng")?;
    say(&format!("vm: output kept in {}", log.display()));
    Ok(status.success())
}

/// Builds the daemon, the probe and the privileged test binaries; returns each test target's
/// executable by name.
fn build_tests(workspace: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    say("vm: building the daemon, the probe and the kernel tests on this machine");
    exec(
        "cargo build",
        command("cargo")
            .args(["build", "-p", "enforcer", "-p", "enforcer-tests", "--bins"])
            .current_dir(workspace),
    )?;
    let listing = output(
        command("cargo")
            .args([
                "test",
                "-p",
                "enforcer-tests",
                "--no-run",
                "--message-format=json",
            ])
            .current_dir(workspace),
    )
    .context("building the kernel tests (cargo test --no-run) failed")?;
    let mut tests = BTreeMap::new();
    for line in listing.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(executable)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            tests.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    if tests.is_empty() {
        bail!("cargo listed no test executables of enforcer-tests");
    }
    Ok(tests)
}
