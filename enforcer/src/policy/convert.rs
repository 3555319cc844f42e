//! Raw tables → model values, checking each value on its own. Checks that need the whole policy
//! (unique names, references, overlaps) happen later, in `assemble`.

use std::{net::IpAddr, str::FromStr};

use ipnet::{IpNet, Ipv4Net};
use toml::Spanned;

use super::{
    Action, Endpoint, Entity, Labels, Location, Mode, Node, PacketSockets, Peer, PolicyErrorKind,
    PortTerm, Rule, Segment, Selector, Settings, TableKind, Workload,
    glob::cgroup_glob,
    parse::{Claim, Cx, FileTables, PendingEndpoint, PendingRule},
    raw::{
        RawEndpoint, RawLabels, RawNode, RawPeer, RawRule, RawSegment, RawSelector, RawSettings,
        RawStrings, RawWorkload,
    },
};

pub(super) fn settings(cx: &mut Cx<'_>, raw: RawSettings, location: Location) -> Settings {
    let defaults = Settings::default();
    Settings {
        mode: raw
            .mode
            .and_then(|mode| parse_mode(cx, &mode))
            .unwrap_or(defaults.mode),
        failsafe_inbound: raw
            .failsafe_inbound
            .map_or(defaults.failsafe_inbound, |terms| {
                port_terms(cx, &terms.into_inner())
            }),
        location: Some(location),
    }
}

pub(super) fn node(cx: &mut Cx<'_>, raw: RawNode, location: Location, out: &mut FileTables) {
    let name = raw.name.and_then(|name| check_name(cx, name));
    let labels = labels(cx, raw.labels);
    let mut addresses = Vec::new();
    for address in raw.addresses.unwrap_or_default() {
        match IpAddr::from_str(address.get_ref()) {
            // The kernel shows IPv4 to IPv6 sockets in this form; the node's address is the IPv4
            // one, and the policy says so in one way only.
            Ok(IpAddr::V6(v6)) if let Some(ipv4) = v6.to_ipv4_mapped() => {
                let mapped = PolicyErrorKind::MappedAddress { address: v6, ipv4 };
                cx.error(&address.span(), mapped);
            }
            Ok(ip) => {
                addresses.push(ip);
                out.addresses.push(Claim {
                    value: ip,
                    owner: name.clone().unwrap_or_default(),
                    location: cx.location(&address.span()),
                });
            }
            Err(source) => cx.error(
                &address.span(),
                PolicyErrorKind::BadAddress {
                    address: address.into_inner(),
                    source,
                },
            ),
        }
    }
    if let Some(name) = name {
        out.nodes.push(Node {
            name,
            addresses,
            labels,
            location,
        });
    }
}

pub(super) fn workload(
    cx: &mut Cx<'_>,
    raw: RawWorkload,
    location: Location,
    out: &mut FileTables,
) {
    let name = raw.name.and_then(|name| check_name(cx, name));
    let labels = labels(cx, raw.labels);
    let cgroup = raw
        .cgroup
        .and_then(|glob| match cgroup_glob(glob.get_ref()) {
            Ok(_) => Some(glob.into_inner()),
            Err(reason) => {
                let span = glob.span();
                let glob = glob.into_inner();
                cx.error(&span, PolicyErrorKind::BadGlob { glob, reason });
                None
            }
        });
    let nodes = raw.nodes.map(|nodes| {
        if nodes.get_ref().is_empty() {
            let empty = PolicyErrorKind::EmptyList {
                table: TableKind::Workload,
                key: "nodes",
            };
            cx.error(&nodes.span(), empty);
        }
        nodes
            .into_inner()
            .into_iter()
            .map(|node| {
                let location = cx.location(&node.span());
                let node = node.into_inner();
                out.node_refs.push((node.clone(), location));
                node
            })
            .collect()
    });
    if let (Some(name), Some(cgroup)) = (name, cgroup) {
        out.workloads.push(Workload {
            name,
            cgroup,
            labels,
            nodes,
            location,
        });
    }
}

pub(super) fn peer(cx: &mut Cx<'_>, raw: RawPeer, location: Location, out: &mut FileTables) {
    let name = raw.name.and_then(|name| check_name(cx, name));
    let labels = labels(cx, raw.labels);
    let mut cidrs = Vec::new();
    if let Some(written) = raw.cidrs {
        if written.get_ref().is_empty() {
            let empty = PolicyErrorKind::EmptyList {
                table: TableKind::Peer,
                key: "cidrs",
            };
            cx.error(&written.span(), empty);
        }
        for cidr in written.into_inner() {
            if let Some(net) = parse_cidr(cx, &cidr) {
                cidrs.push(net);
                out.cidrs.push(Claim {
                    value: net,
                    owner: name.clone().unwrap_or_default(),
                    location: cx.location(&cidr.span()),
                });
            }
        }
    }
    if let Some(name) = name {
        out.peers.push(Peer {
            name,
            cidrs,
            labels,
            location,
        });
    }
}

/// A bare address is taken as the one-address network (`/32` or `/128`): it cannot mean anything
/// else. Host bits are refused rather than cleared, since `10.8.4.1/24` is as likely a typo for a
/// `/32` as a sloppy `/24`.
fn parse_cidr(cx: &mut Cx<'_>, cidr: &Spanned<String>) -> Option<IpNet> {
    let text = cidr.get_ref();
    let net = match IpNet::from_str(text) {
        Ok(net) => net,
        Err(source) => match IpAddr::from_str(text) {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                let cidr_text = text.clone();
                let bad = PolicyErrorKind::BadCidr {
                    cidr: cidr_text,
                    source,
                };
                cx.error(&cidr.span(), bad);
                return None;
            }
        },
    };
    if net.trunc() != net {
        let host_bits = PolicyErrorKind::CidrHostBits {
            cidr: text.clone(),
            network: net.trunc(),
        };
        cx.error(&cidr.span(), host_bits);
        return None;
    }
    if let Some(ipv4) = mapped_ipv4(net) {
        let mapped = PolicyErrorKind::MappedCidr {
            cidr: text.clone(),
            ipv4,
        };
        cx.error(&cidr.span(), mapped);
        return None;
    }
    Some(net)
}

/// The IPv4 CIDR an IPv6 prefix inside `::ffff:0:0/96` stands for, or `None` for any other prefix.
/// A prefix shorter than /96 that merely contains the mapped block is a real IPv6 prefix: compile
/// keeps it out of IPv4 space instead.
fn mapped_ipv4(net: IpNet) -> Option<Ipv4Net> {
    let IpNet::V6(v6) = net else {
        return None;
    };
    let bits = v6.prefix_len().checked_sub(96)?;
    Ipv4Net::new(v6.network().to_ipv4_mapped()?, bits).ok()
}

pub(super) fn segment(cx: &mut Cx<'_>, raw: RawSegment, location: Location, out: &mut FileTables) {
    let name = raw.name.and_then(|name| check_name(cx, name));
    let select = raw
        .select
        .and_then(|select| selector(cx, "select", select.span(), select.into_inner()));
    // `Err` marks a mode that was written but is invalid (already reported).
    let mode = match raw.mode {
        None => Ok(None),
        Some(mode) => parse_mode(cx, &mode).map(Some).ok_or(()),
    };
    let packet_sockets = match raw.packet_sockets {
        None => Some(PacketSockets::default()),
        Some(value) => parse_packet_sockets(cx, &value),
    };
    if let (Some(name), Some(select), Ok(mode), Some(packet_sockets)) =
        (name, select, mode, packet_sockets)
    {
        out.segments.push(Segment {
            name,
            select,
            mode,
            packet_sockets,
            location,
        });
    }
}

pub(super) fn rule(
    cx: &mut Cx<'_>,
    kind: TableKind,
    raw: RawRule,
    location: Location,
    out: &mut FileTables,
) {
    let action = if kind == TableKind::Deny {
        Action::Deny
    } else {
        Action::Allow
    };
    let name = raw.name.map(|name| check_name(cx, name));
    let from = raw.from.map(|from| endpoint(cx, "from", from));
    let to = raw.to.map(|to| endpoint(cx, "to", to));
    let ports = raw.ports.map(|ports| {
        if ports.get_ref().is_empty() {
            let empty = PolicyErrorKind::EmptyList {
                table: kind,
                key: "ports",
            };
            cx.error(&ports.span(), empty);
        }
        port_terms(cx, ports.get_ref())
    });
    // Kept even when incomplete (the missing key is reported already) so that its segment
    // references are still checked; the policy is rejected anyway.
    out.rules.push(PendingRule {
        rule: Rule {
            action,
            name: name.flatten(),
            // Placeholders until `assemble` resolves the pending endpoints.
            from: Endpoint::Entity(Entity::Any),
            to: Endpoint::Entity(Entity::Any),
            ports: ports.unwrap_or_default(),
            description: raw.description.map(Spanned::into_inner),
            location,
        },
        from: from.unwrap_or(PendingEndpoint::Invalid),
        to: to.unwrap_or(PendingEndpoint::Invalid),
    });
}

fn endpoint(cx: &mut Cx<'_>, key: &'static str, raw: Spanned<RawEndpoint>) -> PendingEndpoint {
    let span = raw.span();
    match raw.into_inner() {
        RawEndpoint::Text(text) if text.starts_with('@') => match text.as_str() {
            "@host" => PendingEndpoint::Resolved(Endpoint::Entity(Entity::Host)),
            "@world" => PendingEndpoint::Resolved(Endpoint::Entity(Entity::World)),
            "@any" => PendingEndpoint::Resolved(Endpoint::Entity(Entity::Any)),
            _ => {
                cx.error(&span, PolicyErrorKind::UnknownEntity { entity: text });
                PendingEndpoint::Invalid
            }
        },
        RawEndpoint::Text(name) => PendingEndpoint::Segment {
            name,
            location: cx.location(&span),
        },
        RawEndpoint::Selector(raw) => selector(cx, key, span, raw)
            .map_or(PendingEndpoint::Invalid, |selector| {
                PendingEndpoint::Resolved(Endpoint::Selector(selector))
            }),
        RawEndpoint::Other(found) => {
            cx.error(&span, PolicyErrorKind::BadEndpoint { key, found });
            PendingEndpoint::Invalid
        }
    }
}

fn selector(
    cx: &mut Cx<'_>,
    key: &'static str,
    span: std::ops::Range<usize>,
    raw: RawSelector,
) -> Option<Selector> {
    if raw.is_empty() {
        cx.error(&span, PolicyErrorKind::EmptySelector { key });
        return None;
    }
    let mut terms = std::collections::BTreeMap::new();
    let mut valid = true;
    for (label, value) in raw {
        valid &= check_label_key(cx, &label);
        let values = match value.get_ref() {
            toml::Value::String(one) => Some(vec![one.clone()]),
            toml::Value::Array(many) if !many.is_empty() => many
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        };
        match values {
            Some(values) => {
                terms.insert(label.into_inner(), values);
            }
            None => {
                let bad = PolicyErrorKind::BadSelectorValue {
                    label: label.into_inner(),
                };
                cx.error(&value.span(), bad);
                valid = false;
            }
        }
    }
    valid.then_some(Selector(terms))
}

fn labels(cx: &mut Cx<'_>, raw: Option<RawLabels>) -> Labels {
    let mut labels = Labels::new();
    for (key, value) in raw.unwrap_or_default() {
        if check_label_key(cx, &key) {
            labels.insert(key.into_inner(), value);
        }
    }
    labels
}

/// Label keys are kept to a plain alphabet so that they survive being shown in events and passed on
/// a command line, and so that a misplaced TOML date (a map with a private key) cannot pass as one.
fn check_label_key(cx: &mut Cx<'_>, key: &Spanned<String>) -> bool {
    let text = key.get_ref();
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !valid {
        let bad = PolicyErrorKind::BadLabelKey { key: text.clone() };
        cx.error(&key.span(), bad);
    }
    valid
}

/// Names show up in events, on command lines and in `from`/`to`, where a leading `@` would read as
/// an entity.
fn check_name(cx: &mut Cx<'_>, name: Spanned<String>) -> Option<String> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && !text.starts_with('@')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Some(name.into_inner())
    } else {
        let span = name.span();
        let name = name.into_inner();
        cx.error(&span, PolicyErrorKind::BadName { name });
        None
    }
}

fn parse_mode(cx: &mut Cx<'_>, mode: &Spanned<String>) -> Option<Mode> {
    match Mode::from_str(mode.get_ref()) {
        Ok(mode) => Some(mode),
        Err(unknown) => {
            cx.error(
                &mode.span(),
                PolicyErrorKind::BadMode {
                    value: unknown.value,
                },
            );
            None
        }
    }
}

fn parse_packet_sockets(cx: &mut Cx<'_>, value: &Spanned<String>) -> Option<PacketSockets> {
    match PacketSockets::from_str(value.get_ref()) {
        Ok(parsed) => Some(parsed),
        Err(unknown) => {
            cx.error(
                &value.span(),
                PolicyErrorKind::BadPacketSockets {
                    value: unknown.value,
                },
            );
            None
        }
    }
}

fn port_terms(cx: &mut Cx<'_>, terms: &RawStrings) -> Vec<PortTerm> {
    terms
        .iter()
        .filter_map(|term| match PortTerm::from_str(term.get_ref()) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                let bad = PolicyErrorKind::BadPortTerm {
                    term: term.get_ref().clone(),
                    reason,
                };
                cx.error(&term.span(), bad);
                None
            }
        })
        .collect()
}
