//! The files' tables → one policy, with the checks that need all of them: one `[settings]`, unique
//! names, one owner per address and CIDR, and references to segments and nodes that exist.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    hash::Hash,
};

use super::{
    Endpoint, Location, Policy, PolicyError, PolicyErrorKind, TableKind,
    parse::{Claim, FileTables, PendingEndpoint},
};

/// `complete` is false when some file could not be read or parsed: a name it would have defined is
/// then unknown, so references are not reported as undefined (the real error is reported already).
pub(super) fn assemble(
    files: Vec<FileTables>,
    complete: bool,
    errors: &mut Vec<PolicyError>,
) -> Policy {
    let mut policy = Policy::default();
    let mut settings_at: Option<Location> = None;
    // POLICY.md: names are unique across the whole policy, whatever table defines them. One map
    // for every table; the first definition of a name holds it.
    let mut names: HashMap<String, (TableKind, Location)> = HashMap::new();
    // Every definition of a node or segment, duplicates included: a duplicate is reported once, as
    // a duplicate, and references to it are not reported as undefined on top.
    let mut defined_nodes: HashSet<String> = HashSet::new();
    let mut defined_segments: HashSet<String> = HashSet::new();
    let mut addresses = HashMap::new();
    let mut cidrs = HashMap::new();
    let mut node_refs = Vec::new();
    let mut rules = Vec::new();

    for file in files {
        for settings in file.settings {
            match (&settings_at, &settings.location) {
                (Some(first), Some(again)) => errors.push(PolicyError::new(
                    Some(again.clone()),
                    PolicyErrorKind::DuplicateSettings {
                        first: first.clone(),
                    },
                )),
                _ => {
                    settings_at.clone_from(&settings.location);
                    policy.settings = settings;
                }
            }
        }
        for def in file.names {
            match def.table {
                TableKind::Node => {
                    defined_nodes.insert(def.name.clone());
                }
                TableKind::Segment => {
                    defined_segments.insert(def.name.clone());
                }
                _ => {}
            }
            match names.entry(def.name.clone()) {
                Entry::Occupied(first) => {
                    let (first_table, first) = first.get().clone();
                    let duplicate = PolicyErrorKind::DuplicateName {
                        name: def.name,
                        table: def.table,
                        first_table,
                        first,
                    };
                    errors.push(PolicyError::new(Some(def.location), duplicate));
                }
                Entry::Vacant(slot) => {
                    slot.insert((def.table, def.location));
                }
            }
        }
        claim(&mut addresses, file.addresses, errors, |claim, first| {
            PolicyErrorKind::DuplicateAddress {
                address: claim.value,
                first_node: first.owner.clone(),
                first: first.location.clone(),
            }
        });
        claim(&mut cidrs, file.cidrs, errors, |claim, first| {
            PolicyErrorKind::DuplicateCidr {
                cidr: claim.value,
                first_peer: first.owner.clone(),
                first: first.location.clone(),
            }
        });
        policy.nodes.extend(file.nodes);
        policy.workloads.extend(file.workloads);
        policy.peers.extend(file.peers);
        policy.segments.extend(file.segments);
        node_refs.extend(file.node_refs);
        rules.extend(file.rules);
    }

    for (name, location) in node_refs {
        if !defined_nodes.contains(&name) && complete {
            errors.push(PolicyError::new(
                Some(location),
                PolicyErrorKind::UndefinedNode { name },
            ));
        }
    }

    let mut segments: HashMap<&str, usize> = HashMap::new();
    for (index, segment) in policy.segments.iter().enumerate() {
        segments.entry(segment.name.as_str()).or_insert(index);
    }
    let mut resolve = |key: &'static str, pending: PendingEndpoint| match pending {
        PendingEndpoint::Resolved(endpoint) => Some(endpoint),
        PendingEndpoint::Invalid => None,
        PendingEndpoint::Segment { name, location } => {
            if let Some(&index) = segments.get(name.as_str()) {
                return Some(Endpoint::Segment(index));
            }
            // A segment table with errors of its own still defines its name.
            if !defined_segments.contains(&name) && complete {
                let defined_as = names.get(&name).map(|(table, _)| *table);
                let undefined = PolicyErrorKind::UndefinedSegment {
                    key,
                    name,
                    defined_as,
                };
                errors.push(PolicyError::new(Some(location), undefined));
            }
            None
        }
    };
    for pending in rules {
        let from = resolve("from", pending.from);
        let to = resolve("to", pending.to);
        if let (Some(from), Some(to)) = (from, to) {
            let mut rule = pending.rule;
            rule.from = from;
            rule.to = to;
            policy.rules.push(rule);
        }
    }
    policy
}

/// Records each claim, reporting any value an earlier claim already holds.
fn claim<T: Copy + Eq + Hash>(
    held: &mut HashMap<T, Claim<T>>,
    claims: Vec<Claim<T>>,
    errors: &mut Vec<PolicyError>,
    duplicate: impl Fn(&Claim<T>, &Claim<T>) -> PolicyErrorKind,
) {
    for claim in claims {
        match held.entry(claim.value) {
            Entry::Occupied(first) => {
                let kind = duplicate(&claim, first.get());
                errors.push(PolicyError::new(Some(claim.location), kind));
            }
            Entry::Vacant(slot) => {
                slot.insert(claim);
            }
        }
    }
}
