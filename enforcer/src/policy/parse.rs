//! One file: TOML document → the tables it defines, with every problem found on the way.
//!
//! The document is first parsed into toml's spanned tree. Unknown and missing keys are checked on
//! that tree (so all of them are reported, not serde's first), unknown keys are dropped, and each
//! table is then deserialized on its own into its raw struct: a type error in one table does not hide
//! the errors of the others.

use std::{net::IpAddr, ops::Range, path::Path};

use ipnet::IpNet;
use serde::Deserialize;
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};

use super::{
    Endpoint, Location, Node, Peer, PolicyError, PolicyErrorKind, Rule, Segment, Settings,
    TableKind, Workload, convert,
};

/// A rule whose segment names are not resolved yet: segments may be defined in later files.
#[derive(Debug)]
pub(super) struct PendingRule {
    pub rule: Rule,
    pub from: PendingEndpoint,
    pub to: PendingEndpoint,
}

#[derive(Debug)]
pub(super) enum PendingEndpoint {
    Segment {
        name: String,
        location: Location,
    },
    Resolved(Endpoint),
    /// Already reported as invalid.
    Invalid,
}

/// A `name` as written, for the policy-wide uniqueness check and for references to it.
#[derive(Debug)]
pub(super) struct NameDef {
    pub name: String,
    pub table: TableKind,
    pub location: Location,
}

/// Where an address or CIDR was claimed, for the policy-wide overlap checks.
#[derive(Debug)]
pub(super) struct Claim<T> {
    pub value: T,
    pub owner: String,
    pub location: Location,
}

/// Everything one file defines, each list in the file's textual order.
#[derive(Debug, Default)]
pub(super) struct FileTables {
    pub settings: Vec<Settings>,
    pub nodes: Vec<Node>,
    pub workloads: Vec<Workload>,
    pub peers: Vec<Peer>,
    pub segments: Vec<Segment>,
    pub rules: Vec<PendingRule>,
    pub names: Vec<NameDef>,
    pub addresses: Vec<Claim<IpAddr>>,
    pub cidrs: Vec<Claim<IpNet>>,
    /// Workload `nodes` entries.
    pub node_refs: Vec<(String, Location)>,
}

/// Byte offsets → 1-based line and column (in characters) for one file.
pub(super) struct LineIndex<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Self {
            file,
            text,
            line_starts,
        }
    }

    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        // `line >= 1` because the first start is 0.
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |prefix| prefix.chars().count());
        Location {
            file: self.file.to_owned(),
            line: saturate(line),
            column: saturate(column + 1),
        }
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The file being parsed and the errors found so far.
pub(super) struct Cx<'a> {
    index: LineIndex<'a>,
    errors: &'a mut Vec<PolicyError>,
}

impl Cx<'_> {
    pub fn location(&self, span: &Range<usize>) -> Location {
        self.index.location(span.start)
    }

    pub fn error(&mut self, span: &Range<usize>, kind: PolicyErrorKind) {
        let location = self.location(span);
        self.errors.push(PolicyError::new(Some(location), kind));
    }
}

/// Parses `text` (the file `file`, relative to the policy directory) into `out`. Returns false when
/// the file is not valid TOML, in which case nothing of it is known.
pub(super) fn parse_file(
    file: &Path,
    text: &str,
    out: &mut FileTables,
    errors: &mut Vec<PolicyError>,
) -> bool {
    let mut cx = Cx {
        index: LineIndex::new(file, text),
        errors,
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    // Recovery after the first syntax error mostly produces echoes of it: report only the earliest.
    if let Some(first) = syntax
        .iter()
        .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))
    {
        let span = first.span().unwrap_or(0..0);
        let message = first.message().trim().to_owned();
        cx.error(&span, PolicyErrorKind::Syntax { message });
        return false;
    }
    for (key, value) in root.into_inner() {
        let Some(kind) = TableKind::from_key(key.get_ref()) else {
            let unknown = PolicyErrorKind::UnknownKey {
                key: key.get_ref().to_string(),
                table: None,
            };
            cx.error(&key.span(), unknown);
            continue;
        };
        let span = value.span();
        match (kind, value.into_inner()) {
            (TableKind::Settings, DeValue::Table(table)) => {
                table_element(&mut cx, kind, Spanned::new(span, table), out);
            }
            (TableKind::Settings, _) => {
                cx.error(&span, PolicyErrorKind::TableShape { table: kind });
            }
            (_, DeValue::Array(items)) => {
                for item in items {
                    let span = item.span();
                    match item.into_inner() {
                        DeValue::Table(table) => {
                            table_element(&mut cx, kind, Spanned::new(span, table), out);
                        }
                        _ => cx.error(&span, PolicyErrorKind::TableShape { table: kind }),
                    }
                }
            }
            (_, _) => cx.error(&span, PolicyErrorKind::TableShape { table: kind }),
        }
    }
    // Allow and deny tables live in two arrays; the policy keeps them in textual order.
    out.rules
        .sort_by(|a, b| a.rule.location.cmp(&b.rule.location));
    out.names.sort_by(|a, b| a.location.cmp(&b.location));
    true
}

/// One table. Its span is the `[[allow]]` header (or `[settings]`, or the `{` of an inline table in
/// an array), which is exactly where a rule's `file:line` uid must point.
fn table_element(
    cx: &mut Cx<'_>,
    kind: TableKind,
    table: Spanned<DeTable<'_>>,
    out: &mut FileTables,
) {
    let span = table.span();
    let location = cx.location(&span);
    let mut table = table.into_inner();

    // Recorded even if the rest of the table is invalid, so that references to it are not
    // reported as undefined on top of the table's own errors.
    if let Some((_, value)) = table.get_key_value("name")
        && let DeValue::String(name) = value.get_ref()
    {
        out.names.push(NameDef {
            name: name.to_string(),
            table: kind,
            location: cx.location(&value.span()),
        });
    }

    let unknown: Vec<Spanned<String>> = table
        .keys()
        .filter(|key| !kind.keys().contains(&&**key.get_ref()))
        .map(|key| Spanned::new(key.span(), key.get_ref().to_string()))
        .collect();
    for key in unknown {
        table.remove(key.get_ref().as_str());
        let span = key.span();
        let unknown = PolicyErrorKind::UnknownKey {
            key: key.into_inner(),
            table: Some(kind),
        };
        cx.error(&span, unknown);
    }
    for &key in kind.required() {
        if !table.contains_key(key) {
            cx.error(&span, PolicyErrorKind::MissingKey { key, table: kind });
        }
    }

    let keys: Vec<(String, Range<usize>)> = table
        .iter()
        .map(|(key, value)| (key.get_ref().to_string(), value.span()))
        .collect();
    let value = Spanned::new(span.clone(), DeValue::Table(table));
    let wrong_type = |cx: &mut Cx<'_>, error: &toml::de::Error| {
        let at = error.span().unwrap_or_else(|| span.clone());
        let key = keys
            .iter()
            .find(|(_, value)| value.start <= at.start && at.end <= value.end)
            .map(|(key, _)| key.clone());
        let message = error.message().trim().to_owned();
        cx.error(
            &at,
            PolicyErrorKind::WrongType {
                table: kind,
                key,
                message,
            },
        );
    };
    match kind {
        TableKind::Settings => match deserialize(value) {
            Ok(raw) => out.settings.push(convert::settings(cx, raw, location)),
            Err(error) => wrong_type(cx, &error),
        },
        TableKind::Node => match deserialize(value) {
            Ok(raw) => convert::node(cx, raw, location, out),
            Err(error) => wrong_type(cx, &error),
        },
        TableKind::Workload => match deserialize(value) {
            Ok(raw) => convert::workload(cx, raw, location, out),
            Err(error) => wrong_type(cx, &error),
        },
        TableKind::Peer => match deserialize(value) {
            Ok(raw) => convert::peer(cx, raw, location, out),
            Err(error) => wrong_type(cx, &error),
        },
        TableKind::Segment => match deserialize(value) {
            Ok(raw) => convert::segment(cx, raw, location, out),
            Err(error) => wrong_type(cx, &error),
        },
        TableKind::Allow | TableKind::Deny => match deserialize(value) {
            Ok(raw) => convert::rule(cx, kind, raw, location, out),
            Err(error) => wrong_type(cx, &error),
        },
    }
}

fn deserialize<'i, T: Deserialize<'i>>(value: Spanned<DeValue<'i>>) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value))
}
