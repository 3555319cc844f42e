//! What can be wrong with a policy directory. Every error names the file, line and column it is about
//! (or the file alone when it could not be read), so an operator can fix a whole policy in one pass.

use std::{
    fmt, io,
    net::{AddrParseError, IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    slice,
};

use ipnet::{IpNet, Ipv4Net};

use super::{Location, TableKind, glob::GlobError, ports::PortTermError};

/// One problem in a policy, and where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}{kind}", LocationPrefix(.location.as_ref()))]
pub struct PolicyError {
    location: Option<Location>,
    kind: PolicyErrorKind,
}

impl PolicyError {
    pub(super) fn new(location: Option<Location>, kind: PolicyErrorKind) -> Self {
        Self { location, kind }
    }

    /// Where the problem was written; `None` for errors about a whole file or directory.
    #[must_use]
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    #[must_use]
    pub fn kind(&self) -> &PolicyErrorKind {
        &self.kind
    }

    /// The file the error is about, relative to the policy directory where it has a location.
    #[must_use]
    pub fn file(&self) -> Option<&Path> {
        match (&self.location, &self.kind) {
            (Some(location), _) => Some(&location.file),
            (
                None,
                PolicyErrorKind::Read { path, .. } | PolicyErrorKind::DirectoryLoop { path },
            ) => Some(path),
            (None, _) => None,
        }
    }
}

struct LocationPrefix<'a>(Option<&'a Location>);

impl fmt::Display for LocationPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(location) => write!(f, "{location}: "),
            None => Ok(()),
        }
    }
}

/// Every problem found in one load, in policy order. Never empty.
#[derive(Debug, thiserror::Error)]
#[error("{}", Lines(&.0))]
pub struct PolicyErrors(Vec<PolicyError>);

impl PolicyErrors {
    /// `None` when there is nothing to report.
    pub(super) fn from_vec(errors: Vec<PolicyError>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self(errors))
    }

    #[must_use]
    pub fn as_slice(&self) -> &[PolicyError] {
        &self.0
    }

    pub fn iter(&self) -> slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false; present because clippy pairs it with `len`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[must_use]
    pub fn into_vec(self) -> Vec<PolicyError> {
        self.0
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for PolicyErrors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

struct Lines<'a>(&'a [PolicyError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// The problem itself. Messages are written for the person editing the policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// `dir` is empty when [`parse_sources`](super::parse_sources) was given no file at all.
    #[error("{}", NoFiles(.dir))]
    NoPolicyFiles { dir: PathBuf },

    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{}: symbolic link back into its own parent directory", .path.display())]
    DirectoryLoop { path: PathBuf },

    /// The message is toml's own, without its multi-line source excerpt.
    #[error("invalid TOML: {message}")]
    Syntax { message: String },

    /// `table` is `None` for a key at the top level of a file.
    #[error(
        "unknown key `{key}` {}; expected one of: {}",
        TableName(*.table),
        ExpectedKeys(*.table)
    )]
    UnknownKey {
        key: String,
        table: Option<TableKind>,
    },

    #[error("{table} is missing the required key `{key}`")]
    MissingKey { key: &'static str, table: TableKind },

    /// `[node]` where `[[node]]` is meant, `[[settings]]`, `node = "x"`, ...
    #[error("`{}` must be written as {table}", .table.key())]
    TableShape { table: TableKind },

    /// A value of the wrong TOML type; the message is toml's.
    #[error("{table}{}: {message}", KeySuffix(.key.as_deref()))]
    WrongType {
        table: TableKind,
        key: Option<String>,
        message: String,
    },

    #[error(
        "duplicate name `{name}`: this {table} has the same name as the {first_table} at {first} \
         (names are unique across the whole policy)"
    )]
    DuplicateName {
        name: String,
        table: TableKind,
        first_table: TableKind,
        first: Location,
    },

    #[error("[settings] appears more than once in the policy; the first one is at {first}")]
    DuplicateSettings { first: Location },

    #[error(
        "invalid name {name:?}: a name must be non-empty, must not start with `@` (reserved for \
         entities) and must not contain whitespace or control characters"
    )]
    BadName { name: String },

    #[error(
        "invalid label key {key:?}: label keys use only ASCII letters, digits, `.`, `_`, `-` and `/`"
    )]
    BadLabelKey { key: String },

    /// `defined_as`: the kind of table that does carry this name, if any.
    #[error(
        "`{key}` names segment `{name}`, but no [[segment]] has that name{}",
        DefinedAs(.name, *.defined_as)
    )]
    UndefinedSegment {
        key: &'static str,
        name: String,
        defined_as: Option<TableKind>,
    },

    #[error("unknown entity `{entity}`; the entities are @host, @world and @any")]
    UnknownEntity { entity: String },

    #[error(
        "`{key}` is an empty selector, which would select every labelled identity; name at least \
         one label (a rule can say \"@any\" for every identity)"
    )]
    EmptySelector { key: &'static str },

    #[error(
        "the selector value for label `{label}` must be a string or a non-empty list of strings"
    )]
    BadSelectorValue { label: String },

    /// `found` is the TOML type that was written instead.
    #[error(
        "`{key}` must be a segment name, an entity (@host, @world, @any) or an inline selector \
         table such as {{ app = \"web\" }}, not {found}"
    )]
    BadEndpoint {
        key: &'static str,
        found: &'static str,
    },

    #[error("bad port term {term:?}: {reason}")]
    BadPortTerm {
        term: String,
        #[source]
        reason: PortTermError,
    },

    #[error("`{key}` in {table} must not be empty{}", EmptyHint(.key))]
    EmptyList { table: TableKind, key: &'static str },

    #[error("bad address {address:?}: expected an IPv4 or IPv6 address without a prefix length")]
    BadAddress {
        address: String,
        #[source]
        source: AddrParseError,
    },

    #[error("bad CIDR {cidr:?}: expected an address and a prefix length, such as 10.0.0.0/8")]
    BadCidr {
        cidr: String,
        #[source]
        source: ipnet::AddrParseError,
    },

    #[error("CIDR {cidr} has host bits set; did you mean {network}?")]
    CidrHostBits { cidr: String, network: IpNet },

    /// An IPv6 prefix inside `::ffff:0:0/96`: those addresses are how the kernel shows IPv4 to an
    /// IPv6 socket, and an IPv6 prefix never claims IPv4 (POLICY.md), so the only thing it could
    /// mean is the IPv4 CIDR, which must be written as such.
    #[error(
        "CIDR {cidr} is an IPv4-mapped IPv6 prefix, and an IPv6 prefix never claims an IPv4 \
         address; write the IPv4 CIDR {ipv4} instead"
    )]
    MappedCidr { cidr: String, ipv4: Ipv4Net },

    /// The same for a node address written as `::ffff:a.b.c.d`.
    #[error(
        "address {address} is an IPv4-mapped IPv6 address, and IPv4 and IPv6 are separate \
         spaces; write the IPv4 address {ipv4} instead"
    )]
    MappedAddress { address: Ipv6Addr, ipv4: Ipv4Addr },

    #[error(
        "address {address} is already an address of node `{first_node}` at {first}; an address \
         identifies a single node"
    )]
    DuplicateAddress {
        address: IpAddr,
        first_node: String,
        first: Location,
    },

    #[error(
        "CIDR {cidr} is already a CIDR of peer `{first_peer}` at {first}; the longest match would \
         be ambiguous"
    )]
    DuplicateCidr {
        cidr: IpNet,
        first_peer: String,
        first: Location,
    },

    #[error("unknown mode {value:?}; expected \"enforce\" or \"audit\"")]
    BadMode { value: String },

    #[error("unknown packet_sockets value {value:?}; expected \"deny\" or \"allow\"")]
    BadPacketSockets { value: String },

    #[error("bad cgroup glob {glob:?}: {reason}")]
    BadGlob {
        glob: String,
        #[source]
        reason: GlobError,
    },

    #[error("`nodes` names node `{name}`, but no [[node]] has that name")]
    UndefinedNode { name: String },
}

struct NoFiles<'a>(&'a Path);

impl fmt::Display for NoFiles<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.as_os_str().is_empty() {
            f.write_str("no policy file: a policy needs at least one *.toml file")
        } else {
            write!(
                f,
                "{}: no *.toml file below this directory",
                self.0.display()
            )
        }
    }
}

struct TableName(Option<TableKind>);

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(table) => write!(f, "in {table}"),
            None => f.write_str("at the top level"),
        }
    }
}

struct ExpectedKeys(Option<TableKind>);

impl fmt::Display for ExpectedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = match self.0 {
            Some(table) => table.keys().to_vec(),
            None => TableKind::ALL.iter().map(|t| t.key()).collect(),
        };
        f.write_str(&keys.join(", "))
    }
}

struct KeySuffix<'a>(Option<&'a str>);

impl fmt::Display for KeySuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, " `{key}`"),
            None => Ok(()),
        }
    }
}

struct DefinedAs<'a>(&'a str, Option<TableKind>);

impl fmt::Display for DefinedAs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(table @ (TableKind::Node | TableKind::Workload | TableKind::Peer)) => write!(
                f,
                " (`{}` is a {table}: select it with an inline selector on its labels)",
                self.0
            ),
            Some(table) => write!(f, " (`{}` is the name of a {table})", self.0),
            None => Ok(()),
        }
    }
}

struct EmptyHint<'a>(&'a str);

impl fmt::Display for EmptyHint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "ports" => f.write_str(
                ": a rule without ports would match nothing; write [\"any\"] for every port",
            ),
            "nodes" => f.write_str(": leave `nodes` out to run the workload on every node"),
            "cidrs" => f.write_str(": a peer without CIDRs would never match an address"),
            _ => Ok(()),
        }
    }
}
