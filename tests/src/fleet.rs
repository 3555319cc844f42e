//! Several enforcing nodes and one peer without an enforcer, all on one bridge.
//!
//! ```text
//!  netns switch: bridge br0, one port per host
//!  node i (1..=N): netns, veth enf0 to the bridge, ${NODEi_4} = 10.X.0.(10+i)/24,
//!                  ${NODEi_6} = fd65:6f66:X::(10+i)/64; its own managed cgroup root (with every
//!                  workload of the builder), instance, policy directory and daemon (--node node-i)
//!  peer:           netns, veth enf0 to the bridge, ${PEER4} = 10.X.0.100/24,
//!                  ${PEER6} = fd65:6f66:X::100/64; runs no enforcer
//! ```
//!
//! Each fleet takes its own X (`10.50`–`10.99`, `fd65:6f66:0`–`fd65:6f66:31`), a range no
//! [`crate::Lab`] uses. Every node's policy directory holds the same files: [`NODES_FILE`] with
//! one `[[node]]` table per node (`node-i`, both addresses, labels `{ role = "node" }`), then the
//! test's own files. Template variables: `${NODEi_4}`, `${NODEi_6}`, `${NODEi}` (the name
//! `node-i`) for each node, `${PEER4}`, `${PEER6}`, `${NET4}` (`10.X`) and `${NET6}`
//! (`fd65:6f66:X`).
//!
//! ```no_run
//! use enforcer_tests::{Fleet, Proto, require_privileges};
//!
//! if !require_privileges() {
//!     return;
//! }
//! let fleet = Fleet::builder()
//!     .nodes(2)
//!     .workload("web")
//!     .policy("main.toml", "[[workload]]\nname = \"web\"\ncgroup = \"web\"\n")
//!     .start();
//! let (one, two) = (fleet.node(1), fleet.node(2));
//! let _server = two.listen("web", Proto::Tcp, two.ip4(), 8080);
//! one.probe("web").tcp_connect(two.ip4(), 8080).assert_ok();
//! ```

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::{
    cgroup::CgroupDir,
    daemon::{Daemon, DaemonArgs},
    instance::Instance,
    netns::{NetNs, VETH_IFNAME, add_address, ip, next_counter, try_ip},
    policy::PolicyDir,
    probe::{Listener, Probe, Proto},
};

/// The file the builder writes every node's `[[node]]` table to.
pub const NODES_FILE: &str = "00-nodes.toml";

/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";

/// Host part of the peer's addresses; node `i` is `10 + i`, so a fleet has fewer nodes than this.
const PEER_HOST: u32 = 100;
const MAX_NODES: usize = 50;

/// The fleet's address space and template variables.
#[derive(Clone, Debug)]
struct FleetNet {
    index: u32,
    nodes: usize,
}

impl FleetNet {
    fn next(nodes: usize) -> Self {
        // Mix in the pid as lab.rs does: every test binary counts from 0.
        Self {
            index: (std::process::id()
                .wrapping_mul(7)
                .wrapping_add(next_counter()))
                % 50,
            nodes,
        }
    }

    fn net4(&self) -> String {
        format!("10.{}", 50 + self.index)
    }

    fn net6(&self) -> String {
        format!("fd65:6f66:{:x}", self.index)
    }

    fn host4(&self, host: u32) -> IpAddr {
        parse(&format!("{}.0.{host}", self.net4()))
    }

    fn host6(&self, host: u32) -> IpAddr {
        parse(&format!("{}::{host:x}", self.net6()))
    }

    fn node_host(i: usize) -> u32 {
        10 + u32::try_from(i).expect("a small node number")
    }

    fn vars(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        for i in 1..=self.nodes {
            let host = Self::node_host(i);
            vars.push((format!("${{NODE{i}_4}}"), self.host4(host).to_string()));
            vars.push((format!("${{NODE{i}_6}}"), self.host6(host).to_string()));
            vars.push((format!("${{NODE{i}}}"), node_name(i)));
        }
        vars.push(("${PEER4}".to_owned(), self.host4(PEER_HOST).to_string()));
        vars.push(("${PEER6}".to_owned(), self.host6(PEER_HOST).to_string()));
        vars.push(("${NET4}".to_owned(), self.net4()));
        vars.push(("${NET6}".to_owned(), self.net6()));
        vars
    }

    fn expand(&self, template: &str) -> String {
        let mut out = template.to_owned();
        for (var, value) in self.vars() {
            out = out.replace(&var, &value);
        }
        assert!(
            !out.contains("${"),
            "unknown template variable in {template:?}"
        );
        out
    }

    /// [`NODES_FILE`]: every node as a `[[node]]` table.
    fn nodes_file(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.nodes {
            let _ = writeln!(
                out,
                "[[node]]\nname = \"${{NODE{i}}}\"\naddresses = [\"${{NODE{i}_4}}\", \"${{NODE{i}_6}}\"]\nlabels = {{ role = \"node\" }}\n"
            );
        }
        self.expand(&out)
    }
}

fn parse(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
}

/// `node-i`, what node `i`'s daemon is told it runs as.
#[must_use]
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Turns duplicate address detection off for every interface made from now on in `netns`, so that
/// no IPv6 address ever waits as tentative.
fn no_dad(netns: &NetNs) {
    netns.exec(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ]);
}

/// The bridge [`BRIDGE`] in the switch namespace, up; deleted on drop.
#[derive(Debug)]
struct Bridge {
    switch: String,
}

impl Bridge {
    fn new(switch: &NetNs) -> Self {
        ip(&["-n", switch.name(), "link", "add", BRIDGE, "type", "bridge"]);
        let bridge = Self {
            switch: switch.name().to_owned(),
        };
        ip(&["-n", switch.name(), "link", "set", BRIDGE, "up"]);
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = try_ip(&["-n", &self.switch, "link", "del", BRIDGE]);
    }
}

/// A veth from a host (its end [`VETH_IFNAME`], up, addressed) to a port `port` of the bridge;
/// deleting the host end deletes both, on drop.
#[derive(Debug)]
struct BridgePort {
    host: String,
}

impl BridgePort {
    fn new(switch: &NetNs, port: &str, host: &NetNs, addresses: &[(IpAddr, u8)]) -> Self {
        ip(&[
            "link",
            "add",
            VETH_IFNAME,
            "netns",
            host.name(),
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            switch.name(),
        ]);
        let guard = Self {
            host: host.name().to_owned(),
        };
        ip(&["-n", switch.name(), "link", "set", port, "master", BRIDGE]);
        ip(&["-n", switch.name(), "link", "set", port, "up"]);
        for (addr, len) in addresses {
            add_address(host, *addr, *len);
        }
        ip(&["-n", host.name(), "link", "set", VETH_IFNAME, "up"]);
        guard
    }
}

impl Drop for BridgePort {
    fn drop(&mut self) {
        // The namespace may already be gone (and the pair with it); that is not an error.
        let _ = try_ip(&["-n", &self.host, "link", "del", VETH_IFNAME]);
    }
}

/// Builds a [`Fleet`]; see the module docs for the topology and the template variables.
#[derive(Debug)]
#[must_use]
pub struct FleetBuilder {
    nodes: usize,
    workloads: Vec<String>,
    files: Vec<(String, String)>,
}

impl Default for FleetBuilder {
    fn default() -> Self {
        Self {
            nodes: 2,
            workloads: Vec::new(),
            files: Vec::new(),
        }
    }
}

impl FleetBuilder {
    /// How many enforcing nodes (default 2, at most 50).
    pub fn nodes(mut self, n: usize) -> Self {
        assert!(
            (1..=MAX_NODES).contains(&n),
            "a fleet has 1 to {MAX_NODES} nodes"
        );
        self.nodes = n;
        self
    }

    /// A cgroup (path relative to each node's managed root) to create on every node before the
    /// daemons start.
    pub fn workload(mut self, rel: &str) -> Self {
        self.workloads.push(rel.to_owned());
        self
    }

    /// A policy file (relative path, template content), written on every node.
    pub fn policy(mut self, rel: &str, template: &str) -> Self {
        self.files.push((rel.to_owned(), template.to_owned()));
        self
    }

    /// Sets everything up, starts every node's daemon and waits until each enforces.
    #[must_use]
    pub fn start(self) -> Fleet {
        let net = FleetNet::next(self.nodes);
        let switch = NetNs::new();
        no_dad(&switch);
        let bridge = Bridge::new(&switch);
        let peer = NetNs::new();
        no_dad(&peer);
        let peer_port = BridgePort::new(
            &switch,
            "peer",
            &peer,
            &[(net.host4(PEER_HOST), 24), (net.host6(PEER_HOST), 64)],
        );
        peer.allow_ping_sockets();
        let mut fleet = Fleet {
            nodes: Vec::new(),
            switch: Some(Switch {
                _peer_port: peer_port,
                _bridge: bridge,
                peer,
                switch,
            }),
            net,
        };
        let nodes_file = fleet.net.nodes_file();
        let files: Vec<(&str, String)> = self
            .files
            .iter()
            .map(|(rel, template)| (rel.as_str(), fleet.net.expand(template)))
            .collect();
        for i in 1..=self.nodes {
            let host = FleetNet::node_host(i);
            let (ip4, ip6) = (fleet.net.host4(host), fleet.net.host6(host));
            let netns = NetNs::new();
            no_dad(&netns);
            let port = BridgePort::new(
                &fleet.switch().switch,
                &format!("n{i}"),
                &netns,
                &[(ip4, 24), (ip6, 64)],
            );
            netns.allow_ping_sockets();
            let cgroups = CgroupDir::new();
            for rel in &self.workloads {
                cgroups.create(rel);
            }
            let policy = PolicyDir::new();
            policy.write(NODES_FILE, &nodes_file);
            for (rel, content) in &files {
                policy.write(rel, content);
            }
            let netns_path = Path::new("/run/netns").join(netns.name());
            fleet.nodes.push(FleetNode {
                daemon: None,
                instance: Instance::new(),
                cgroups,
                port,
                netns,
                policy,
                name: node_name(i),
                ip4,
                ip6,
                netns_path,
            });
        }
        // Pushed first and started after, so that a daemon that fails to start still finds every
        // guard in place to undo.
        for node in &mut fleet.nodes {
            let daemon = Daemon::start(&node.daemon_args());
            node.daemon = Some(daemon);
        }
        fleet
    }
}

/// The peer and the switch: everything of a fleet that is no node. Fields drop in order.
#[derive(Debug)]
struct Switch {
    _peer_port: BridgePort,
    _bridge: Bridge,
    peer: NetNs,
    switch: NetNs,
}

/// One enforcing node of a [`Fleet`].
#[derive(Debug)]
pub struct FleetNode {
    daemon: Option<Daemon>,
    instance: Instance,
    cgroups: CgroupDir,
    port: BridgePort,
    netns: NetNs,
    policy: PolicyDir,
    name: String,
    ip4: IpAddr,
    ip6: IpAddr,
    /// `/run/netns/<netns>`, the daemon's `--netns`.
    netns_path: PathBuf,
}

impl FleetNode {
    /// `node-i`: its `[[node]]` table and its daemon's `--node`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub const fn netns(&self) -> &NetNs {
        &self.netns
    }

    #[must_use]
    pub const fn ip4(&self) -> IpAddr {
        self.ip4
    }

    #[must_use]
    pub const fn ip6(&self) -> IpAddr {
        self.ip6
    }

    /// The node's managed cgroup root.
    #[must_use]
    pub const fn cgroups(&self) -> &CgroupDir {
        &self.cgroups
    }

    /// The node's enforcer instance (`status()`, `command("reload")`).
    #[must_use]
    pub const fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The node's running daemon.
    #[must_use]
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the node's daemon runs")
    }

    #[must_use]
    pub const fn policy_dir(&self) -> &PolicyDir {
        &self.policy
    }

    /// What the node's daemon runs with.
    #[must_use]
    pub fn daemon_args(&self) -> DaemonArgs<'_> {
        DaemonArgs {
            policy: self.policy.path(),
            node: &self.name,
            cgroup_root: self.cgroups.path(),
            netns: Some(&self.netns_path),
            cgroup: None,
            extra: &[],
            instance: Some(&self.instance),
        }
    }

    fn workload_cgroup(&self, rel: &str) -> PathBuf {
        let cgroup = self.cgroups.path().join(rel);
        assert!(cgroup.is_dir(), "no cgroup {rel:?} on {}", self.name);
        cgroup
    }

    /// A probe on this node in the cgroup `rel` below its managed root (`""` for the root).
    #[must_use]
    pub fn probe(&self, rel: &str) -> Probe {
        Probe::new(Some(&self.workload_cgroup(rel)), Some(self.netns.name()))
    }

    /// A listener on this node served from the cgroup `rel` below its managed root: a workload.
    #[must_use]
    pub fn listen(&self, rel: &str, proto: Proto, addr: IpAddr, port: u16) -> Listener {
        Listener::start_in(
            Some(&self.workload_cgroup(rel)),
            self.netns.name(),
            proto,
            addr,
            port,
        )
    }

    /// A probe on this node outside its managed subtree: the node itself.
    #[must_use]
    pub fn host_probe(&self) -> Probe {
        Probe::new(None, Some(self.netns.name()))
    }
}

/// A running fleet. Dropping it stops every daemon first, then unmounts the instances, removes
/// the cgroups (and any process left in them), the veths and the bridge, the namespaces, and the
/// policy directories last.
#[derive(Debug)]
pub struct Fleet {
    nodes: Vec<FleetNode>,
    /// `None` only while the fleet is dropped.
    switch: Option<Switch>,
    net: FleetNet,
}

impl Fleet {
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    fn switch(&self) -> &Switch {
        self.switch.as_ref().expect("the fleet is not dropped")
    }

    /// Node `i`, 1-based.
    #[must_use]
    pub fn node(&self, i: usize) -> &FleetNode {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "node {i} of a fleet of {}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    #[must_use]
    pub fn nodes(&self) -> &[FleetNode] {
        &self.nodes
    }

    /// The peer's namespace (it runs no enforcer).
    #[must_use]
    pub fn peer_ns(&self) -> &NetNs {
        &self.switch().peer
    }

    #[must_use]
    pub fn peer4(&self) -> IpAddr {
        self.net.host4(PEER_HOST)
    }

    #[must_use]
    pub fn peer6(&self) -> IpAddr {
        self.net.host6(PEER_HOST)
    }

    /// A process on the peer.
    #[must_use]
    pub fn peer_probe(&self) -> Probe {
        Probe::new(None, Some(self.peer_ns().name()))
    }

    /// A listener on the peer.
    #[must_use]
    pub fn peer_listen(&self, proto: Proto, addr: IpAddr, port: u16) -> Listener {
        Listener::start(self.peer_ns().name(), proto, addr, port)
    }

    /// `template` with the fleet's variables substituted.
    #[must_use]
    pub fn expand(&self, template: &str) -> String {
        self.net.expand(template)
    }

    /// Writes the policy file `rel` (template) on every node. Nothing is reloaded here: the
    /// daemons' policy watchers pick it up, or `node.instance().command("reload")` asks.
    pub fn write_policy(&self, rel: &str, template: &str) {
        let content = self.expand(template);
        for node in &self.nodes {
            node.policy.write(rel, &content);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Every daemon stops before anything it enforces goes away.
        for node in &mut self.nodes {
            drop(node.daemon.take());
        }
        let mut instances = Vec::new();
        let mut cgroups = Vec::new();
        let mut ports = Vec::new();
        let mut namespaces = Vec::new();
        let mut policies = Vec::new();
        for node in self.nodes.drain(..) {
            let FleetNode {
                instance,
                cgroups: cgroup,
                port,
                netns,
                policy,
                ..
            } = node;
            instances.push(instance);
            cgroups.push(cgroup);
            ports.push(port);
            namespaces.push(netns);
            policies.push(policy);
        }
        drop(instances);
        drop(cgroups);
        drop(ports);
        // The peer's veth, the bridge, then the peer's and the switch's namespaces.
        drop(self.switch.take());
        drop(namespaces);
        drop(policies);
    }
}
