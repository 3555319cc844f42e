//! The tables as written: serde structs that keep every value's byte span, so that validation can
//! point at the exact value it rejects. Every field is optional here; required keys are checked on
//! the parsed document before these structs are filled, which lets one table report several errors.

use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use toml::Spanned;

/// The kinds of table a policy file can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableKind {
    Settings,
    Node,
    Workload,
    Peer,
    Segment,
    Allow,
    Deny,
}

impl TableKind {
    /// In the order the documentation presents them.
    pub const ALL: [Self; 7] = [
        Self::Settings,
        Self::Node,
        Self::Workload,
        Self::Peer,
        Self::Segment,
        Self::Allow,
        Self::Deny,
    ];

    /// The top-level key that introduces the table.
    #[must_use]
    pub const fn key(self) -> &'static str {
        match self {
            Self::Settings => "settings",
            Self::Node => "node",
            Self::Workload => "workload",
            Self::Peer => "peer",
            Self::Segment => "segment",
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// How the table is written: `[settings]` once, every other kind as an array of tables.
    #[must_use]
    pub const fn header(self) -> &'static str {
        match self {
            Self::Settings => "[settings]",
            Self::Node => "[[node]]",
            Self::Workload => "[[workload]]",
            Self::Peer => "[[peer]]",
            Self::Segment => "[[segment]]",
            Self::Allow => "[[allow]]",
            Self::Deny => "[[deny]]",
        }
    }

    pub(super) fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.key() == key)
    }

    /// Every key the table accepts. Must list exactly the fields of its raw struct below; the
    /// unit tests feed each of these keys through the struct (`deny_unknown_fields`) to keep the
    /// two in step.
    #[must_use]
    pub const fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Settings => &["mode", "failsafe_inbound"],
            Self::Node => &["name", "addresses", "labels"],
            Self::Workload => &["name", "cgroup", "labels", "nodes"],
            Self::Peer => &["name", "cidrs", "labels"],
            Self::Segment => &["name", "select", "mode", "packet_sockets"],
            Self::Allow | Self::Deny => &["name", "from", "to", "ports", "description"],
        }
    }

    /// The keys that must be present.
    #[must_use]
    pub const fn required(self) -> &'static [&'static str] {
        match self {
            Self::Settings => &[],
            Self::Node => &["name"],
            Self::Workload => &["name", "cgroup"],
            Self::Peer => &["name", "cidrs"],
            Self::Segment => &["name", "select"],
            Self::Allow | Self::Deny => &["from", "to", "ports"],
        }
    }
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header())
    }
}

pub(super) type RawStrings = Vec<Spanned<String>>;
/// Keys keep their spans so a bad label key can be pointed at.
pub(super) type RawLabels = BTreeMap<Spanned<String>, String>;
/// Values stay loosely typed: "a string or a non-empty list of strings" is checked by hand so that
/// the error says exactly that.
pub(super) type RawSelector = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub mode: Option<Spanned<String>>,
    pub failsafe_inbound: Option<Spanned<RawStrings>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub name: Option<Spanned<String>>,
    pub addresses: Option<RawStrings>,
    pub labels: Option<RawLabels>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkload {
    pub name: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub labels: Option<RawLabels>,
    pub nodes: Option<Spanned<RawStrings>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub name: Option<Spanned<String>>,
    pub cidrs: Option<Spanned<RawStrings>>,
    pub labels: Option<RawLabels>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegment {
    pub name: Option<Spanned<String>>,
    pub select: Option<Spanned<RawSelector>>,
    pub mode: Option<Spanned<String>>,
    pub packet_sockets: Option<Spanned<String>>,
}

/// `[[allow]]` and `[[deny]]` share their keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub name: Option<Spanned<String>>,
    pub from: Option<Spanned<RawEndpoint>>,
    pub to: Option<Spanned<RawEndpoint>>,
    pub ports: Option<Spanned<RawStrings>>,
    pub description: Option<Spanned<String>>,
}

/// `from`/`to` before resolution. Anything else than a string or a table is kept as the name of
/// its type, so that validation reports it in the policy's own words rather than serde's.
#[derive(Debug)]
pub(super) enum RawEndpoint {
    Text(String),
    Selector(RawSelector),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EndpointVisitor)
    }
}

struct EndpointVisitor;

impl<'de> Visitor<'de> for EndpointVisitor {
    type Value = RawEndpoint;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a segment name, an entity or an inline selector table")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Text(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Other("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Other("an integer"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Other("an integer"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Other("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawEndpoint::Other("a float"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawEndpoint::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut selector = RawSelector::new();
        loop {
            let key = match map.next_key::<Spanned<String>>() {
                Ok(Some(key)) => key,
                Ok(None) => break,
                // Keys of TOML tables always come with a span. toml hands a date-time over as a
                // map whose one key has none: that is the only way to get here.
                Err(_) => return Ok(RawEndpoint::Other("a date-time")),
            };
            let value = map.next_value::<Spanned<toml::Value>>()?;
            selector.insert(key, value);
        }
        Ok(RawEndpoint::Selector(selector))
    }
}
