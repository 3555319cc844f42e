//! What sinks receive: the enriched form of a kernel [`FlowEvent`](enforcer_common::FlowEvent)
//! (everything a sink needs, resolved against the policy that decided), and the report of a
//! policy the daemon refused to put in force.

use std::{net::IpAddr, time::SystemTime};

use crate::policy::{Labels, Mode};

/// What happened to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Refused by the kernel.
    Denied,
    /// Would have been refused; let through because the effective mode is audit.
    Audited,
}

/// One end of the connection, resolved to its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowEndpoint {
    pub ip: IpAddr,
    /// `None` for ICMP.
    pub port: Option<u16>,
    /// The identity's table name, or an entity (`@host`, `@world`).
    pub name: String,
    pub labels: Labels,
    /// The identity is `@world`.
    pub is_world: bool,
    /// The identity is a member of at least one segment.
    pub segmented: bool,
}

/// Which layer of the datapath decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// `connect`/`sendmsg` hooks: refused with `EPERM` before any packet.
    Socket,
    /// `cgroup_skb` egress or ingress: the packet, after NAT, dropped.
    Packet,
    /// BPF LSM: a socket created outside the managed subtree.
    Lsm,
    /// tcx ingress on an interface: an arrival no socket of the subtree receives, dropped.
    Interface,
}

impl Layer {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Packet => "packet",
            Self::Lsm => "lsm",
            Self::Interface => "interface",
        }
    }
}

/// The process that opened the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowProcess {
    pub pid: u32,
    /// The kernel's `comm`.
    pub name: String,
    /// `/proc/PID/cmdline` joined by spaces, when still readable.
    pub cmd_line: Option<String>,
    pub uid: u32,
    /// The user name of `uid`, when the node's user database knows it.
    pub user_name: Option<String>,
    /// `/proc/PID/exe`, when still readable.
    pub executable: Option<String>,
    /// The parent's pid, when the process was still there to ask.
    pub parent_pid: Option<u32>,
}

/// Where the acting process runs, from its cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowWorkload {
    /// The cgroup's path below the cgroup2 mount (`/system.slice/web.service`).
    pub cgroup_path: String,
    /// The systemd unit the cgroup belongs to (`web.service`), where the path shows one.
    pub systemd_unit: Option<String>,
    /// The container's id (64 hex digits) where the path shows one (docker, containerd, CRI-O,
    /// podman, Kubernetes pods).
    pub container_id: Option<String>,
}

/// The rule (or default) that decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRule {
    /// `file:line` of the rule, or `default-deny:<segment>`.
    pub uid: String,
    pub name: String,
    pub description: Option<String>,
}

/// The enforcing node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowNode {
    pub hostname: String,
    /// The node knows it runs in a virtual machine.
    pub is_virtual: bool,
}

/// A denied or audited connection attempt, ready for a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub time: SystemTime,
    pub verdict: Verdict,
    /// IANA protocol number as the socket had it (6, 17, 1, 58, …).
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// This node opened the connection (egress); `false` when it arrived here.
    pub outbound: bool,
    /// An established flow that a new policy denies: its packets are dropped from now on and its
    /// socket is aborted.
    pub revoked: bool,
    pub src: FlowEndpoint,
    pub dst: FlowEndpoint,
    pub process: Option<FlowProcess>,
    /// `process` is the socket's creator, recorded when the socket was made (the packet layer
    /// does not run in the sender's context).
    pub process_from_socket: bool,
    /// The acting process's cgroup, when the kernel named one.
    pub workload: Option<FlowWorkload>,
    pub layer: Layer,
    pub rule: FlowRule,
    /// Content hash of the policy in force.
    pub policy_version: String,
    /// The effective mode of the decision.
    pub mode: Mode,
    pub node: FlowNode,
    /// How many identical attempts this record stands for.
    pub count: u32,
    /// For an aggregated record (`count` > 1 or a flushed repeat): when the first and the last
    /// of the attempts it stands for were decided. `None` for a single attempt reported at once.
    pub span: Option<(SystemTime, SystemTime)>,
    /// The destination ports an aggregated record stands for, when there were several (then
    /// `dst.port` is `None`); empty otherwise.
    pub swept_ports: Vec<u16>,
}

/// A policy the daemon refused to put in force: the last good policy (if any) stays, and the
/// SIEM learns that the policy on disk is not the one enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRejection {
    pub time: SystemTime,
    pub node: FlowNode,
    /// The policy directory that was read.
    pub policy_dir: String,
    /// What asked for the load: `directory` (a change seen in it), `SIGHUP`, `control` (the API)
    /// or `start`.
    pub origin: String,
    /// Every problem found, as the policy error's `Display` gives it: `file:line:column: message`,
    /// or the message alone for a problem without a place (an unreadable directory).
    pub errors: Vec<String>,
    /// Content hash of the policy that stays in force; `None` when none is (a rejection at start).
    pub in_force_version: Option<String>,
    /// The kernel generation of the policy that stays in force (0: none loaded).
    pub in_force_generation: u32,
}

/// ATT&CK technique for scans, sweeps and fan-out from one source: Network Service Discovery.
pub const NETWORK_SERVICE_DISCOVERY: Technique = Technique {
    uid: "T1046",
    name: "Network Service Discovery",
    tactic_uid: "TA0007",
    tactic_name: "Discovery",
};

/// A MITRE ATT&CK technique, as OCSF's `attacks` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Technique {
    pub uid: &'static str,
    pub name: &'static str,
    pub tactic_uid: &'static str,
    pub tactic_name: &'static str,
}

/// The shape of a lateral-movement pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternKind {
    /// Many ports on one destination.
    PortScan,
    /// One port on many destinations.
    Sweep,
    /// Many ports on many destinations.
    FanOut,
}

/// One destination a suspected lateral movement tried.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlertTarget {
    pub ip: IpAddr,
    /// `None` for ICMP.
    pub port: Option<u16>,
    pub protocol: u8,
    /// The destination identity's name.
    pub name: String,
}

/// A source denied against many distinct destinations or ports within a window: one alert
/// (severity 4 in POLICY.md) beside the aggregated denials, which are reported as usual.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateralMovementAlert {
    /// When the threshold was crossed.
    pub time: SystemTime,
    /// The first denial of the pattern.
    pub first_seen: SystemTime,
    pub kind: PatternKind,
    pub technique: Technique,
    /// The source as the last denial had it.
    pub src: FlowEndpoint,
    pub process: Option<FlowProcess>,
    pub workload: Option<FlowWorkload>,
    /// Distinct targets seen until the alert, in order; at most a bounded number are listed,
    /// `distinct_targets` says how many there were.
    pub targets: Vec<AlertTarget>,
    pub distinct_targets: u32,
    pub distinct_destinations: u32,
    pub distinct_ports: u32,
    /// Denied attempts of the source within the window, repeats included.
    pub attempts: u64,
    /// The detection window the pattern fit in.
    pub window: std::time::Duration,
    /// The policy in force at the last denial.
    pub policy_version: String,
    pub outbound: bool,
    pub ip_version: u8,
    pub node: FlowNode,
}

/// Everything the event pipeline hands to sinks, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    Flow(FlowRecord),
    Alert(LateralMovementAlert),
    Rejection(PolicyRejection),
}

impl Report {
    /// The attempts this report stands for, the unit of event accounting: a flow record's
    /// `count`; an alert or a rejection stands for none (the denials behind an alert are
    /// reported and counted on their own).
    #[must_use]
    pub const fn attempts(&self) -> u64 {
        match self {
            Self::Flow(record) => record.count as u64,
            Self::Alert(_) | Self::Rejection(_) => 0,
        }
    }
}
