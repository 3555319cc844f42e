//! The validated policy: what `parse` produces and `compile` consumes. Plain data, no I/O.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use ipnet::IpNet;

/// Where something was written: a file relative to the policy directory, 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Enforce or only report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

/// Whether the members of a segment may open packet sockets (`AF_PACKET`, `SOCK_PACKET`).
///
/// A packet socket sends and receives whole link-layer frames, below every IP-layer hook that
/// judges a flow, so a segment member may not open one unless its segment says so. An identity is
/// exempt only when every segment it is a member of allows them: one segment that does not is
/// enough to keep the ban (fail closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PacketSockets {
    /// `"deny"` (the default): socket creation is refused for members.
    #[default]
    Deny,
    /// `"allow"`: members may open packet sockets (tcpdump-style capture tools need them).
    Allow,
}

impl PacketSockets {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// Label key → value. Values of identities are single strings.
pub type Labels = BTreeMap<String, String>;

/// A label selector: every key must be present and equal to one of its values. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector(pub BTreeMap<String, Vec<String>>);

impl Selector {
    /// Whether `labels` satisfy every term.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0
            .iter()
            .all(|(key, values)| labels.get(key).is_some_and(|v| values.contains(v)))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={}", v.join("|")))
            .collect();
        write!(f, "{{{}}}", terms.join(","))
    }
}

/// The entities POLICY.md names in `from`/`to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// `@host`: local processes no table claims.
    Host,
    /// `@world`: addresses no table claims.
    World,
    /// `@any`: every identity.
    Any,
}

impl Entity {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Host => "@host",
            Self::World => "@world",
            Self::Any => "@any",
        }
    }
}

/// One side of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// Index into [`Policy::segments`].
    Segment(usize),
    Entity(Entity),
    Selector(Selector),
}

/// Transport protocols a port term can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6 echo.
    Icmp,
}

impl Protocol {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }
}

/// One entry of `ports` (or of `failsafe_inbound`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortTerm {
    /// `any`: every protocol and port.
    Any,
    /// `icmp`.
    Icmp,
    /// `tcp/N-M`, `udp/N`, and `tcp`/`udp` alone (1-65535). `first <= last`, both ≥ 1.
    Range {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
}

impl fmt::Display for PortTerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Any => f.write_str("any"),
            Self::Icmp => f.write_str("icmp"),
            Self::Range {
                protocol,
                first: 1,
                last: u16::MAX,
            } => f.write_str(protocol.as_str()),
            Self::Range {
                protocol,
                first,
                last,
            } if first == last => write!(f, "{}/{first}", protocol.as_str()),
            Self::Range {
                protocol,
                first,
                last,
            } => write!(f, "{}/{first}-{last}", protocol.as_str()),
        }
    }
}

/// `[settings]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// Default `["tcp/22"]`; empty turns the failsafe off.
    pub failsafe_inbound: Vec<PortTerm>,
    /// Where `[settings]` was written, if anywhere.
    pub location: Option<Location>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            failsafe_inbound: vec![PortTerm::Range {
                protocol: Protocol::Tcp,
                first: 22,
                last: 22,
            }],
            location: None,
        }
    }
}

/// `[[node]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: Labels,
    pub location: Location,
}

/// `[[workload]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    /// The glob as written (validated), relative to the managed cgroup root, no leading `/`.
    pub cgroup: String,
    pub labels: Labels,
    /// `None`: every node.
    pub nodes: Option<Vec<String>>,
    pub location: Location,
}

/// `[[peer]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Normalised (host bits cleared).
    pub cidrs: Vec<IpNet>,
    pub labels: Labels,
    pub location: Location,
}

/// `[[segment]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub select: Selector,
    /// `None`: follows `settings.mode`.
    pub mode: Option<Mode>,
    /// `packet_sockets`; [`PacketSockets::Deny`] when absent.
    pub packet_sockets: PacketSockets,
    pub location: Location,
}

/// `[[allow]]` or `[[deny]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// One `[[allow]]` or `[[deny]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// The optional `name` key (an extension of POLICY.md: unique like every name); when absent,
    /// events and explanations call the rule `"<action> <from> -> <to>"`.
    pub name: Option<String>,
    pub from: Endpoint,
    pub to: Endpoint,
    pub ports: Vec<PortTerm>,
    pub description: Option<String>,
    /// Where the table starts (`[[allow]]` header): the rule's `file:line` uid.
    pub location: Location,
}

/// A whole, validated policy directory.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    pub settings: Settings,
    pub nodes: Vec<Node>,
    pub workloads: Vec<Workload>,
    pub peers: Vec<Peer>,
    pub segments: Vec<Segment>,
    /// Allow and deny rules in policy order (files in byte order of path, tables in file order).
    pub rules: Vec<Rule>,
    /// Hex SHA-256 over every file's relative path and contents: the policy version on events.
    pub version: String,
}
