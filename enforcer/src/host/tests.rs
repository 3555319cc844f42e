//! Tests against the real kernel. Those that create network namespaces need root; they skip with a
//! reason otherwise, unless `CI=true`, where a skip would hide a regression and so fails instead.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use std::collections::BTreeSet;

use super::*;

/// Whether a test that needs root may run; panics under CI rather than skip.
fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let reason = "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} {reason}, and CI=true forbids skipping it"
    );
    eprintln!("skipping {test}: {reason}");
    false
}

/// Runs a command and panics with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace made with iproute2 (so it has a name under /run/netns), with a veth pair
/// (both ends inside; this kernel has no `dummy` driver) whose `veth0` carries `10.250.X.1/24` and `fd00:250::1/64`. Deleted on drop, even on panic.
struct TestNetns {
    name: String,
    x: u8,
}

impl TestNetns {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("enf-host-test-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        // The guard exists before the set-up that can fail, so a failure still deletes it.
        let netns = Self {
            name,
            x: u8::try_from(std::process::id() % 200 + n % 50 + 1).unwrap_or(1),
        };
        netns.ip(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/24", netns.v4(1)),
            "dev",
            "veth0",
        ]);
        // nodad: no tentative phase whose end would be one more event to wait for.
        netns.ip(&["addr", "add", "fd00:250::1/64", "dev", "veth0", "nodad"]);
        // Both ends up, or veth0 has no carrier.
        netns.ip(&["link", "set", "veth1", "up"]);
        netns.ip(&["link", "set", "veth0", "up"]);
        netns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.x, host)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process, killed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sleep` inside the namespace; returns once the process has entered it (`ip netns exec` does
/// setns and then execs, so for a moment the pid is still in ours).
fn sleeper_in(netns: &TestNetns, inode: u64) -> ChildGuard {
    let child = Command::new("ip")
        .args(["netns", "exec", &netns.name, "sleep", "5"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn ip netns exec");
    let guard = ChildGuard(child);
    let path = format!("/proc/{}/ns/net", guard.0.id());
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::fs::metadata(&path).map(|m| m.ino()).ok() != Some(inode) {
        assert!(
            Instant::now() < deadline,
            "sleeper never entered the namespace"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    guard
}

#[test]
fn own_namespace_has_loopback() {
    let own = NetNs::own().expect("own netns");
    let addresses = local_addresses(&own).expect("dump");
    assert!(
        addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "{addresses:?}"
    );
    // ::1 exists unless IPv6 is disabled; the kernel's own table says whether it is there.
    let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    if inet6
        .lines()
        .any(|l| l.starts_with("00000000000000000000000000000001 "))
    {
        assert!(
            addresses.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)),
            "{addresses:?}"
        );
    }
    assert_ne!(netns_cookie(&own).expect("cookie"), 0);
}

#[test]
fn named_namespace_rejects_paths() {
    for name in ["", "..", "a/b"] {
        assert!(matches!(
            NetNs::named(name),
            Err(HostError::OpenNamespace { .. })
        ));
    }
}

#[test]
fn resolver_in_own_namespace() {
    let resolver = SourceResolver::spawn().expect("spawn resolver");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        resolver.resolve(std::process::id(), localhost),
        Some(localhost)
    );
    // Pids are below 2^22 on Linux: this one never exists.
    assert_eq!(resolver.resolve(u32::MAX, localhost), None);
}

#[tokio::test]
async fn namespace_addresses_watcher_cookie_and_sources() {
    if !privileged("namespace_addresses_watcher_cookie_and_sources") {
        return;
    }
    let netns = TestNetns::new();
    let ns = NetNs::named(&netns.name).expect("open named netns");
    let v6: IpAddr = "fd00:250::1".parse().expect("v6");

    // A point-to-point address: its peer (IFA_ADDRESS) is not local, only IFA_LOCAL is.
    netns.ip(&[
        "addr",
        "add",
        "10.252.0.1",
        "peer",
        "10.252.0.2",
        "dev",
        "veth0",
    ]);
    let addresses = local_addresses(&ns).expect("dump in netns");
    assert!(addresses.contains(&netns.v4(1).into()), "{addresses:?}");
    assert!(addresses.contains(&v6), "{addresses:?}");
    assert!(
        addresses.contains(&Ipv4Addr::new(10, 252, 0, 1).into()),
        "{addresses:?}"
    );
    assert!(
        !addresses.contains(&Ipv4Addr::new(10, 252, 0, 2).into()),
        "{addresses:?}"
    );
    assert!(
        addresses
            .iter()
            .any(|a| matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local())),
        "IPv6 link-local addresses are local too: {addresses:?}"
    );

    let own = NetNs::own().expect("own netns");
    assert_ne!(ns.inode(), own.inode());
    assert_ne!(
        netns_cookie(&ns).expect("cookie"),
        netns_cookie(&own).expect("own cookie")
    );

    // A secondary address (same subnet as the primary) is reported, and so is its removal.
    let mut watcher = AddressWatcher::new(&ns).expect("watcher");
    assert_eq!(watcher.current(), &addresses);
    let secondary = format!("{}/24", netns.v4(2));
    netns.ip(&["addr", "add", &secondary, "dev", "veth0"]);
    let seen = tokio::time::timeout(Duration::from_secs(2), watcher.changed())
        .await
        .expect("no address event within 2 s")
        .expect("watch");
    assert!(seen.contains(&netns.v4(2).into()), "{seen:?}");
    netns.ip(&["addr", "del", &secondary, "dev", "veth0"]);
    let seen = tokio::time::timeout(Duration::from_secs(2), watcher.changed())
        .await
        .expect("no removal event within 2 s")
        .expect("watch");
    assert_eq!(seen, addresses);

    // A burst larger than the socket's receive queue: the kernel drops events (ENOBUFS), and the
    // re-read still returns every address, over a dump of several datagrams.
    let burst: String = (0..1024)
        .map(|i| format!("addr add 10.251.{}.{}/32 dev veth0\n", i / 256, i % 256))
        .collect();
    let batch = std::env::temp_dir().join(format!("{}.batch", netns.name));
    std::fs::write(&batch, burst).expect("write batch");
    netns.ip(&["-batch", batch.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&batch);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = BTreeSet::new();
    while seen.len() != addresses.len() + 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        seen = tokio::time::timeout(left, watcher.changed())
            .await
            .expect("burst not seen whole within 2 s")
            .expect("watch");
    }
    assert!(seen.contains(&Ipv4Addr::new(10, 251, 3, 255).into()));

    // The daemon's timeout is 100 ms; the test allows more, as it shares the machine with builds.
    let resolver = SourceResolver::with_config(ResolverConfig {
        timeout: Duration::from_secs(2),
        ..ResolverConfig::default()
    })
    .expect("spawn resolver");
    let sleeper = sleeper_in(&netns, ns.inode());
    let pid = sleeper.0.id();
    assert_eq!(
        resolver.resolve(pid, netns.v4(7).into()),
        Some(netns.v4(1).into())
    );
    let v6_peer: IpAddr = "fd00:250::7".parse().expect("v6");
    assert_eq!(resolver.resolve(pid, v6_peer), Some(v6));
    assert_eq!(
        resolver.resolve(pid, netns.v4(7).to_ipv6_mapped().into()),
        Some(netns.v4(1).to_ipv6_mapped().into()),
        "an IPv4-mapped destination is answered in its own form"
    );
    // No default route in the namespace: unreachable is "no source", not an error.
    assert_eq!(
        resolver.resolve(pid, Ipv4Addr::new(192, 0, 2, 1).into()),
        None
    );
    // Cached: the same answer again, without the worker.
    assert_eq!(
        resolver.resolve(pid, netns.v4(7).into()),
        Some(netns.v4(1).into())
    );
}
