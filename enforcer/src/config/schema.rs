//! Which keys each table takes, checked on toml's spanned tree before anything is deserialized:
//! serde's `deny_unknown_fields` would name an unknown key too, but only the tree knows where a
//! key (not its value) is written, and whether it belongs to the sink's kind.

use std::ops::Range;

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::ConfigProblem;

/// A problem and the byte span it is about.
pub(super) type Found = (Range<usize>, ConfigProblem);

const TOP_LEVEL: &str = "the top level";
const TOP_KEYS: &[&str] = &["events", "sink", "metrics"];
pub(super) const EVENTS_KEYS: &[&str] = &["aggregate_window", "queue", "lateral_movement"];
pub(super) const LATERAL_KEYS: &[&str] = &["enabled", "distinct_targets", "window"];
pub(super) const METRICS_KEYS: &[&str] = &["listen"];

/// Every key some sink kind takes: a key outside it is unknown, a key inside it but not in the
/// sink's own kind is misplaced.
pub(super) const SINK_KEYS: &[&str] = &[
    "kind",
    "path",
    "format",
    "rotate_bytes",
    "keep",
    "address",
    "transport",
    "ca_file",
    "server_name",
    "endpoint",
    "queue",
];

/// The keys of one sink kind.
#[derive(Clone, Copy, Debug)]
pub(super) struct KindSchema {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub required: &'static [&'static str],
}

pub(super) const SINK_KINDS: [KindSchema; 4] = [
    KindSchema {
        name: "file",
        keys: &["kind", "path", "format", "rotate_bytes", "keep", "queue"],
        required: &["path"],
    },
    KindSchema {
        name: "stdout",
        keys: &["kind", "format", "queue"],
        required: &[],
    },
    KindSchema {
        name: "syslog",
        keys: &[
            "kind",
            "address",
            "transport",
            "format",
            "ca_file",
            "server_name",
            "queue",
        ],
        required: &["address", "transport"],
    },
    KindSchema {
        name: "otlp",
        keys: &["kind", "endpoint", "queue"],
        required: &["endpoint"],
    },
];

/// Syslog keys that only a TLS transport takes.
const TLS_ONLY_KEYS: &[&str] = &["ca_file", "server_name"];

/// Every key problem of the document, in no particular order.
pub(super) fn check(root: &DeTable<'_>) -> Vec<Found> {
    let mut found = Vec::new();
    for (key, value) in root {
        match &**key.get_ref() {
            "events" => {
                let Some(events) = table(value, "events", "[events]", &mut found) else {
                    continue;
                };
                keys(events, "[events]", EVENTS_KEYS, &mut found);
                if let Some(lateral) = events.get("lateral_movement") {
                    let header = "[events.lateral_movement]";
                    if let Some(lateral) = table(lateral, "lateral_movement", header, &mut found) {
                        keys(lateral, header, LATERAL_KEYS, &mut found);
                    }
                }
            }
            "sink" => match value.get_ref() {
                DeValue::Array(sinks) => {
                    for sink in sinks {
                        match sink.get_ref() {
                            DeValue::Table(table) => check_sink(table, &sink.span(), &mut found),
                            _ => found.push((sink.span(), sink_shape())),
                        }
                    }
                }
                _ => found.push((value.span(), sink_shape())),
            },
            "metrics" => {
                if let Some(metrics) = table(value, "metrics", "[metrics]", &mut found) {
                    keys(metrics, "[metrics]", METRICS_KEYS, &mut found);
                    required(metrics, &value.span(), "[metrics]", &["listen"], &mut found);
                }
            }
            other => found.push((
                key.span(),
                ConfigProblem::UnknownKey {
                    key: other.to_owned(),
                    table: TOP_LEVEL,
                    allowed: TOP_KEYS,
                },
            )),
        }
    }
    found
}

fn sink_shape() -> ConfigProblem {
    ConfigProblem::TableShape {
        key: "sink",
        header: "[[sink]]",
    }
}

fn table<'a, 'i>(
    value: &'a Spanned<DeValue<'i>>,
    key: &'static str,
    header: &'static str,
    found: &mut Vec<Found>,
) -> Option<&'a DeTable<'i>> {
    match value.get_ref() {
        DeValue::Table(table) => Some(table),
        _ => {
            found.push((value.span(), ConfigProblem::TableShape { key, header }));
            None
        }
    }
}

fn keys(
    table: &DeTable<'_>,
    header: &'static str,
    allowed: &'static [&'static str],
    found: &mut Vec<Found>,
) {
    for key in table.keys() {
        if !allowed.contains(&&**key.get_ref()) {
            let problem = ConfigProblem::UnknownKey {
                key: key.get_ref().to_string(),
                table: header,
                allowed,
            };
            found.push((key.span(), problem));
        }
    }
}

fn required(
    table: &DeTable<'_>,
    span: &Range<usize>,
    header: &'static str,
    keys: &[&'static str],
    found: &mut Vec<Found>,
) {
    for &key in keys {
        if !table.contains_key(key) {
            let problem = ConfigProblem::MissingKey { key, table: header };
            found.push((span.clone(), problem));
        }
    }
}

/// One `[[sink]]`, whose span is its header.
fn check_sink(sink: &DeTable<'_>, span: &Range<usize>, found: &mut Vec<Found>) {
    let header = "[[sink]]";
    // A `kind` that is not a string is left to deserialization, which names the type.
    let schema = match sink.get("kind") {
        None => {
            required(sink, span, header, &["kind"], found);
            None
        }
        Some(kind) => kind.get_ref().as_str().and_then(|name| {
            let schema = SINK_KINDS.iter().find(|schema| schema.name == name);
            if schema.is_none() {
                let value = name.to_owned();
                found.push((kind.span(), ConfigProblem::UnknownSinkKind { value }));
            }
            schema
        }),
    };
    let transport = sink
        .get("transport")
        .and_then(|value| value.get_ref().as_str());
    for key in sink.keys() {
        let name = &**key.get_ref();
        let problem = if !SINK_KEYS.contains(&name) {
            ConfigProblem::UnknownKey {
                key: name.to_owned(),
                table: header,
                allowed: schema.map_or(SINK_KEYS, |schema| schema.keys),
            }
        } else if let Some(schema) = schema.filter(|schema| !schema.keys.contains(&name)) {
            ConfigProblem::KeyNotForKind {
                key: name.to_owned(),
                kind: schema.name,
                allowed: schema.keys,
            }
        } else if let Some(transport) = transport.filter(|&transport| {
            TLS_ONLY_KEYS.contains(&name) && matches!(transport, "udp" | "tcp")
        }) {
            ConfigProblem::KeyNotForTransport {
                key: name.to_owned(),
                transport: transport.to_owned(),
            }
        } else {
            continue;
        };
        found.push((key.span(), problem));
    }
    if let Some(schema) = schema {
        required(sink, span, header, schema.required, found);
    }
}
