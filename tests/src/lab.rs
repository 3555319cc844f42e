//! The common topology: a client host and a server host joined by a veth, a managed cgroup root
//! with workload directories, a policy written from a template, and the daemon enforcing it.
//!
//! ```text
//!  netns client (the node "client-host")           netns server
//!  ${CLIENT4} = 10.X.0.1/24, ${CLIENT6} = fd65:6e66:X::1/64  ── veth ──  ${SERVER4} = 10.X.0.2/24, ${SERVER6} = fd65:6e66:X::2/64
//!  route 10.X.0.0/16, fd65:6e66:X::/48 on-link      + every `server_addr` (also routed from the client)
//!  probes run here, in cgroups below the root        listeners run here, outside the managed root
//! ```
//!
//! Each lab takes its own X, so a leftover of a crashed run can never answer for a later one.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::{
    cgroup::CgroupDir,
    daemon::{Daemon, DaemonArgs},
    instance::Instance,
    netns::{
        NetNs, VethEnd, VethPair, add_address, add_local_address, add_onlink_route, next_counter,
    },
    policy::PolicyDir,
    probe::{Listener, Probe, Proto},
};

/// The node name the lab's daemon is told it runs as (`--node`).
pub const CLIENT_NODE: &str = "client-host";

/// Template variables a lab substitutes in policies and addresses.
#[derive(Clone, Debug)]
struct Net {
    index: u32,
}

impl Net {
    fn next() -> Self {
        // Mix in the pid: every test binary counts from 0.
        Self {
            index: (std::process::id()
                .wrapping_mul(7)
                .wrapping_add(next_counter()))
                % 150,
        }
    }

    fn vars(&self) -> [(&'static str, String); 9] {
        let net4 = format!("10.{}", 100 + self.index);
        let net6 = format!("fd65:6e66:{:x}", self.index);
        [
            ("${CLIENT4}", format!("{net4}.0.1")),
            ("${SERVER4}", format!("{net4}.0.2")),
            ("${CLIENT6}", format!("{net6}::1")),
            ("${SERVER6}", format!("{net6}::2")),
            // RFC 2544 benchmarking and RFC 3849 documentation ranges: claimed by no lab table
            // unless a test says so.
            ("${WORLD4}", format!("198.18.{}.9", self.index)),
            ("${WORLD6}", format!("2001:db8:{:x}::9", self.index)),
            ("${NODE}", CLIENT_NODE.to_owned()),
            ("${NET4}", net4),
            ("${NET6}", net6),
        ]
    }

    fn expand(&self, template: &str) -> String {
        let mut out = template.to_owned();
        for (var, value) in self.vars() {
            out = out.replace(var, &value);
        }
        assert!(
            !out.contains("${"),
            "unknown template variable in {template:?}"
        );
        out
    }
}

/// The file the lab writes the client's `[[node]]` table to.
pub const NODE_FILE: &str = "00-node.toml";

/// Builds a [`Lab`]; see the module docs for the topology and the template variables.
///
/// Unless told otherwise the policy gets [`NODE_FILE`], declaring the client host as the node
/// [`CLIENT_NODE`] with its two addresses and the labels `{ role = "client" }` (in no segment).
#[derive(Debug)]
#[must_use]
pub struct LabBuilder {
    workloads: Vec<String>,
    server_addrs: Vec<String>,
    files: Vec<(String, String)>,
    node_labels: Option<String>,
    no_daemon: bool,
    client_addrs: Vec<String>,
    daemon_cgroup: Option<String>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        Self {
            workloads: Vec::new(),
            server_addrs: Vec::new(),
            files: Vec::new(),
            node_labels: Some(r#"{ role = "client" }"#.to_owned()),
            no_daemon: false,
            client_addrs: Vec::new(),
            daemon_cgroup: None,
        }
    }
}

impl LabBuilder {
    /// A cgroup (path relative to the managed root, e.g. `apps/web`) to create before the daemon
    /// starts.
    pub fn workload(mut self, rel: &str) -> Self {
        self.workloads.push(rel.to_owned());
        self
    }

    /// An extra address (template) on the server, routed from the client.
    pub fn server_addr(mut self, template: &str) -> Self {
        self.server_addrs.push(template.to_owned());
        self
    }

    /// A policy file (relative path, template content).
    pub fn policy(mut self, rel: &str, template: &str) -> Self {
        self.files.push((rel.to_owned(), template.to_owned()));
        self
    }

    /// The labels (an inline TOML table) of the client's `[[node]]` table.
    pub fn node_labels(mut self, labels: &str) -> Self {
        self.node_labels = Some(labels.to_owned());
        self
    }

    /// Write no `[[node]]` table for the client: local processes no workload claims are `@host`.
    pub fn without_node(mut self) -> Self {
        self.node_labels = None;
        self
    }

    /// Leave the daemon to the test (e.g. to watch it refuse to start, or to bind sockets before
    /// it starts: [`Lab::start_daemon`]).
    pub fn no_daemon(mut self) -> Self {
        self.no_daemon = true;
        self
    }

    /// An extra local address (template) of the client host, on its `lo` and so in no `[[node]]`
    /// table: a real address of the node the policy does not declare. Added before the daemon
    /// starts; [`Lab::add_client_addr`] adds one later.
    pub fn client_addr(mut self, template: &str) -> Self {
        self.client_addrs.push(template.to_owned());
        self
    }

    /// Run the lab's daemon as a process in the cgroup `rel` below the managed root (created
    /// before the daemon starts), as a daemon started by systemd inside the managed tree would.
    pub fn daemon_cgroup(mut self, rel: &str) -> Self {
        self.daemon_cgroup = Some(rel.to_owned());
        self
    }

    /// Sets everything up and, unless told otherwise, starts the daemon and waits until it
    /// enforces.
    #[must_use]
    pub fn start(self) -> Lab {
        let net = Net::next();
        let ip = |t: &str| -> IpAddr {
            let s = net.expand(t);
            s.parse()
                .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
        };
        let client = NetNs::new();
        let server = NetNs::new();
        let veth = VethPair::new(
            &VethEnd {
                netns: &client,
                addresses: vec![(ip("${CLIENT4}"), 24), (ip("${CLIENT6}"), 64)],
            },
            &VethEnd {
                netns: &server,
                addresses: vec![(ip("${SERVER4}"), 24), (ip("${SERVER6}"), 64)],
            },
        );
        add_onlink_route(&client, &net.expand("${NET4}.0.0/16"));
        add_onlink_route(&client, &net.expand("${NET6}::/48"));
        for template in &self.server_addrs {
            let addr = ip(template);
            let host_len = if addr.is_ipv4() { 32 } else { 128 };
            add_address(&server, addr, host_len);
            add_onlink_route(&client, &format!("{addr}/{host_len}"));
        }
        for template in &self.client_addrs {
            let addr = ip(template);
            add_local_address(&client, addr, if addr.is_ipv4() { 32 } else { 128 });
        }
        client.allow_ping_sockets();

        let cgroups = CgroupDir::new();
        for rel in &self.workloads {
            cgroups.create(rel);
        }
        let daemon_cgroup = self.daemon_cgroup.as_deref().map(|rel| cgroups.create(rel));
        let policy = PolicyDir::new();
        if let Some(labels) = &self.node_labels {
            let table = format!(
                "[[node]]\nname = \"${{NODE}}\"\naddresses = [\"${{CLIENT4}}\", \"${{CLIENT6}}\"]\nlabels = {labels}\n"
            );
            policy.write(NODE_FILE, &net.expand(&table));
        }
        for (rel, template) in &self.files {
            policy.write(rel, &net.expand(template));
        }
        let client_netns_path = Path::new("/run/netns").join(client.name());
        let mut lab = Lab {
            daemon: None,
            instance: Instance::new(),
            cgroups,
            _veth: veth,
            server,
            client,
            policy,
            net,
            client_netns_path,
            daemon_cgroup,
        };
        if !self.no_daemon {
            lab.start_daemon();
        }
        lab
    }
}

/// A running lab. Fields drop in order: the daemon stops first, then the cgroups (and any process
/// left in them), the veth and the namespaces go, and the policy directory last.
#[derive(Debug)]
pub struct Lab {
    daemon: Option<Daemon>,
    /// The lab's enforcer instance: restarted daemons adopt its pins; dropped (unmounted) after
    /// the daemon stopped, which detaches whatever it left attached.
    instance: Instance,
    cgroups: CgroupDir,
    _veth: VethPair,
    server: NetNs,
    client: NetNs,
    policy: PolicyDir,
    net: Net,
    /// `/run/netns/<client>`, what the daemon is told is this node's network namespace.
    client_netns_path: PathBuf,
    /// Absolute path of the cgroup the daemon runs in, when told to run inside the managed tree.
    daemon_cgroup: Option<PathBuf>,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// `template` with the lab's variables substituted.
    #[must_use]
    pub fn expand(&self, template: &str) -> String {
        self.net.expand(template)
    }

    /// The address `template` names in this lab, e.g. `lab.ip("${NET4}.20.9")`.
    #[must_use]
    pub fn ip(&self, template: &str) -> IpAddr {
        let s = self.expand(template);
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
    }

    #[must_use]
    pub fn server4(&self) -> IpAddr {
        self.ip("${SERVER4}")
    }

    #[must_use]
    pub fn server6(&self) -> IpAddr {
        self.ip("${SERVER6}")
    }

    #[must_use]
    pub fn client4(&self) -> IpAddr {
        self.ip("${CLIENT4}")
    }

    #[must_use]
    pub fn client6(&self) -> IpAddr {
        self.ip("${CLIENT6}")
    }

    #[must_use]
    pub fn client_ns(&self) -> &NetNs {
        &self.client
    }

    #[must_use]
    pub fn server_ns(&self) -> &NetNs {
        &self.server
    }

    /// The path the daemon gets as `--netns`: `/run/netns/<client namespace>`.
    #[must_use]
    pub fn client_netns_path(&self) -> &Path {
        &self.client_netns_path
    }

    /// Adds a local address (template, `/32` or `/128`) to the client host's `lo` now, while the
    /// daemon may be running; it is in no `[[node]]` table. Returns the address.
    pub fn add_client_addr(&self, template: &str) -> IpAddr {
        let addr = self.ip(template);
        add_local_address(&self.client, addr, if addr.is_ipv4() { 32 } else { 128 });
        addr
    }

    #[must_use]
    pub fn cgroup_root(&self) -> &Path {
        self.cgroups.path()
    }

    /// The managed root, for its helpers ([`CgroupDir::create_chain`], [`CgroupDir::create_many`]).
    #[must_use]
    pub fn cgroups(&self) -> &CgroupDir {
        &self.cgroups
    }

    /// The cgroup the daemon runs in ([`LabBuilder::daemon_cgroup`]), if any.
    #[must_use]
    pub fn daemon_cgroup(&self) -> Option<&Path> {
        self.daemon_cgroup.as_deref()
    }

    /// Creates a cgroup below the managed root now (after the daemon started, if it did).
    pub fn create_cgroup(&self, rel: &str) -> PathBuf {
        self.cgroups.create(rel)
    }

    #[must_use]
    pub fn policy_dir(&self) -> &PolicyDir {
        &self.policy
    }

    /// What a rule's events carry as `firewall_rule.uid`: `file:line` of the `nth` line of `file`
    /// that starts with `header` (e.g. `[[deny]]`).
    #[must_use]
    pub fn rule_uid(&self, file: &str, header: &str, nth: usize) -> String {
        format!("{file}:{}", self.policy.line_of(file, header, nth))
    }

    /// The arguments the lab's daemon runs with (for tests that start it themselves).
    /// The daemon always learns this node's addresses from the client namespace (`--netns`), and
    /// runs in [`LabBuilder::daemon_cgroup`] when one was given.
    #[must_use]
    pub fn daemon_args(&self) -> DaemonArgs<'_> {
        DaemonArgs {
            policy: self.policy.path(),
            node: CLIENT_NODE,
            cgroup_root: self.cgroups.path(),
            netns: Some(&self.client_netns_path),
            cgroup: self.daemon_cgroup.as_deref(),
            extra: &[],
            instance: Some(&self.instance),
        }
    }

    /// The lab's enforcer instance.
    #[must_use]
    pub const fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Starts the lab's daemon with [`Lab::daemon_args`] and waits until it enforces (for a lab
    /// built with [`LabBuilder::no_daemon`], or after [`Lab::stop_daemon`]).
    pub fn start_daemon(&mut self) -> &Daemon {
        assert!(self.daemon.is_none(), "the lab's daemon is already running");
        let daemon = Daemon::start(&self.daemon_args());
        self.daemon.insert(daemon)
    }

    /// The running daemon, mutably (e.g. to [`Daemon::stop`] it and look at how it exited).
    #[must_use]
    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("this lab has no daemon")
    }

    /// The running daemon; panics for a lab built with [`LabBuilder::no_daemon`].
    #[must_use]
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("this lab has no daemon")
    }

    /// Stops the daemon now (validating its events as its drop always does).
    pub fn stop_daemon(&mut self) {
        drop(self.daemon.take());
    }

    /// A probe on the client host in the cgroup `rel` below the managed root (`""` for the root).
    #[must_use]
    pub fn probe(&self, rel: &str) -> Probe {
        let cgroup = self.cgroups.path().join(rel);
        assert!(cgroup.is_dir(), "no cgroup {rel:?} in this lab");
        Probe::new(Some(&cgroup), Some(self.client.name()))
    }

    /// A listener on the client host (this node), served by a process in the cgroup `rel` below
    /// the managed root: a local workload.
    #[must_use]
    pub fn listen_local(&self, rel: &str, proto: Proto, addr: IpAddr, port: u16) -> Listener {
        let cgroup = self.cgroups.path().join(rel);
        assert!(cgroup.is_dir(), "no cgroup {rel:?} in this lab");
        Listener::start_in(Some(&cgroup), self.client.name(), proto, addr, port)
    }

    /// A listener on the server host.
    #[must_use]
    pub fn listen(&self, proto: Proto, addr: IpAddr, port: u16) -> Listener {
        Listener::start(self.server.name(), proto, addr, port)
    }

    /// `count` UDP datagrams from the workload `rel` to the server's IPv4 address, round robin
    /// over `ports` ports from `port`, as fast as one socket sends; asserts the kernel refused
    /// every one (`EPERM`), which is what the accounting and reporting tests flood with.
    pub fn refused_udp_burst(&self, rel: &str, port: u16, count: u32, ports: u16) {
        let out = std::process::Command::new(crate::probe::probe_bin())
            .arg("--cgroup")
            .arg(self.cgroups.path().join(rel))
            .args(["--netns", self.client.name()])
            .args(["udp-burst", &self.server4().to_string(), &port.to_string()])
            .arg(count.to_string())
            .arg(ports.to_string())
            .output()
            .expect("run the probe");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(out.status.success(), "probe failed: {line}");
        assert!(
            line.starts_with(&format!("sent={count} refused={count} ")),
            "every datagram must be refused: {line}"
        );
    }
}
