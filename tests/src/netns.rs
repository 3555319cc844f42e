//! Hosts as network namespaces, wired by veth pairs. Every guard undoes itself on drop, panics
//! included, so a failed test leaves nothing behind for the next.

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process-wide unique name, `enf-t-<pid>-<n>`: leftovers of a crashed run are recognisable and
/// never collide with a later run.
#[must_use]
pub fn unique_name() -> String {
    format!("enf-t-{}-{}", std::process::id(), next_counter())
}

/// A small number unique within this process (used to pick names and address ranges).
#[must_use]
pub fn next_counter() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs `ip ARGS`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    if let Err(err) = try_ip(args) {
        panic!("{err}");
    }
}

/// Runs `ip ARGS`; the error names the command and carries its stderr.
pub fn try_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The names `ip netns list` shows.
#[must_use]
pub fn list_netns() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // Lines look like `name (id: 3)` once the namespace has an id.
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A named network namespace (`ip netns add`) with `lo` up; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    #[must_use]
    pub fn new() -> Self {
        let name = unique_name();
        ip(&["netns", "add", &name]);
        // Constructed before the next step so that a failure below still deletes the namespace.
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace (`ip netns exec`), panicking if it fails.
    pub fn exec(&self, argv: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "in netns {}: {} failed: {}",
            self.name,
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Lets every group open ICMP echo ("ping") sockets, which the kernel refuses by default; the
    /// probe pings through them so that the cgroup connect hook sees the echo.
    pub fn allow_ping_sockets(&self) {
        self.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ping_group_range=0 2147483647",
        ]);
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = try_ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {err}");
        }
    }
}

/// The interface name used at both ends: each end lives in its own namespace, so one short fixed
/// name avoids the 15-byte limit that unique names would hit.
pub const VETH_IFNAME: &str = "enf0";

/// One side of a [`VethPair`]: its namespace and its addresses with prefix lengths.
#[derive(Clone, Debug)]
pub struct VethEnd<'a> {
    pub netns: &'a NetNs,
    /// `(address, prefix length)`, e.g. `(10.1.0.1, 24)`.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A veth pair named [`VETH_IFNAME`] at both ends, between two namespaces, up and addressed.
/// Deleting either end deletes both; the namespace guards would do it too, this makes it explicit.
#[derive(Debug)]
pub struct VethPair {
    netns_a: String,
}

impl VethPair {
    #[must_use]
    pub fn new(a: &VethEnd<'_>, b: &VethEnd<'_>) -> Self {
        ip(&[
            "link",
            "add",
            VETH_IFNAME,
            "netns",
            a.netns.name(),
            "type",
            "veth",
            "peer",
            "name",
            VETH_IFNAME,
            "netns",
            b.netns.name(),
        ]);
        let pair = Self {
            netns_a: a.netns.name().to_owned(),
        };
        for end in [a, b] {
            for (addr, len) in &end.addresses {
                add_address(end.netns, *addr, *len);
            }
            ip(&["-n", end.netns.name(), "link", "set", VETH_IFNAME, "up"]);
        }
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // The namespace may already be gone (and the pair with it); that is not an error.
        let _ = try_ip(&["-n", &self.netns_a, "link", "del", VETH_IFNAME]);
    }
}

/// Adds `addr/len` to the veth in `netns`. IPv6 addresses skip duplicate address detection, which
/// would otherwise keep them unusable (tentative) for the first second or so.
pub fn add_address(netns: &NetNs, addr: IpAddr, len: u8) {
    let cidr = format!("{addr}/{len}");
    let mut args = vec!["-n", netns.name(), "addr", "add", &cidr, "dev", VETH_IFNAME];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    ip(&args);
}

/// Routes `cidr` straight out of the veth in `netns` (on-link: the peer answers ARP and neighbour
/// solicitations for every address it owns).
pub fn add_onlink_route(netns: &NetNs, cidr: &str) {
    ip(&["-n", netns.name(), "route", "add", cidr, "dev", VETH_IFNAME]);
}

/// Adds `addr/len` to `lo` in `netns`: an address the kernel holds as local (a secondary IP) that
/// no veth carries. IPv6 addresses skip duplicate address detection.
pub fn add_local_address(netns: &NetNs, addr: IpAddr, len: u8) {
    let cidr = format!("{addr}/{len}");
    let mut args = vec!["-n", netns.name(), "addr", "add", &cidr, "dev", "lo"];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    ip(&args);
}
