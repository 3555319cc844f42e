//! The summary `enforcer check` prints.

use std::fmt::Write as _;

use crate::{daemon::Prepared, identity::IdentityKind, policy::Action};

/// What a valid policy holds and what it costs in the kernel, as seen from `node`.
#[must_use]
pub fn summary(prepared: &Prepared, node: &str) -> String {
    let Prepared {
        policy,
        identities,
        compiled,
    } = prepared;
    let mut out = String::new();
    let count =
        |kind: fn(&IdentityKind) -> bool| identities.iter().filter(|i| kind(&i.kind)).count();
    let nodes = count(|k| matches!(k, IdentityKind::Node { .. }));
    let workloads = count(|k| matches!(k, IdentityKind::Workload { .. }));
    let peers = count(|k| matches!(k, IdentityKind::Peer));
    let allows = policy
        .rules
        .iter()
        .filter(|r| r.action == Action::Allow)
        .count();
    let state = &compiled.state;
    let local = identities
        .get(identities.local_default())
        .map_or("@host", |i| i.name.as_str());
    // Writing to a String cannot fail.
    let _ = writeln!(out, "policy version {}", policy.version);
    let _ = writeln!(
        out,
        "identities: {nodes} nodes, {workloads} workloads, {peers} peers, plus @host and @world"
    );
    let _ = writeln!(out, "segments:   {}", policy.segments.len());
    for (index, segment) in policy.segments.iter().enumerate() {
        let members: Vec<&str> = identities
            .iter()
            .filter(|i| {
                state.identity_info.get(&i.id).is_some_and(|info| {
                    info.flags & enforcer_common::IDENTITY_SEGMENTED != 0
                        && compiled_member(compiled, i.id, index)
                })
            })
            .map(|i| i.name.as_str())
            .collect();
        let mode = segment
            .mode
            .map_or_else(String::new, |m| format!(" (mode {})", m.as_str()));
        let _ = writeln!(out, "  {}{mode}: {}", segment.name, members.join(", "));
    }
    let _ = writeln!(
        out,
        "rules:      {} ({allows} allow, {} deny); mode {}; failsafe inbound [{}]",
        policy.rules.len(),
        policy.rules.len() - allows,
        policy.settings.mode.as_str(),
        policy
            .settings
            .failsafe_inbound
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "as node {node} (local processes default to {local}), the kernel maps hold:"
    );
    let _ = writeln!(out, "  rule entries      {}", state.rules.len());
    let _ = writeln!(out, "  exact addresses   {}", state.addr_exact.len());
    let _ = writeln!(out, "  CIDR prefixes     {}", state.addr_cidr.len());
    let _ = writeln!(out, "  identities        {}", state.identity_info.len());
    for warning in &compiled.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

/// Whether identity `id` is a member of segment `index` (the map only keeps the first segment, so
/// ask the selector).
fn compiled_member(compiled: &crate::compile::CompiledPolicy, id: u32, index: usize) -> bool {
    compiled
        .members
        .get(index)
        .is_some_and(|set| set.contains(&id))
}
