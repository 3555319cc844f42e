//! The summary `enforcer check` prints.

use std::fmt::Write as _;

use enforcer_common::{IDENTITY_PACKET_SOCKETS, IDENTITY_SEGMENTED};

use crate::{
    daemon::Prepared,
    identity::IdentityKind,
    policy::{Action, PacketSockets},
};

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
        // (name, flags) of each member.
        let members: Vec<(&str, u32)> = identities
            .iter()
            .filter_map(|i| {
                let info = state.identity_info.get(&i.id)?;
                (info.flags & IDENTITY_SEGMENTED != 0 && compiled_member(compiled, i.id, index))
                    .then_some((i.name.as_str(), info.flags))
            })
            .collect();
        let mut notes = Vec::new();
        if let Some(mode) = segment.mode {
            notes.push(format!("mode {}", mode.as_str()));
        }
        if segment.packet_sockets == PacketSockets::Allow {
            // The exemption needs every segment of a member to agree: say who does not get it.
            let banned: Vec<&str> = members
                .iter()
                .filter(|(_, flags)| flags & IDENTITY_PACKET_SOCKETS == 0)
                .map(|(name, _)| *name)
                .collect();
            if banned.is_empty() {
                notes.push("packet sockets allowed".to_owned());
            } else {
                notes.push(format!(
                    "packet sockets allowed, but not for {}: another of their segments denies them",
                    banned.join(", ")
                ));
            }
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        let names: Vec<&str> = members.iter().map(|(name, _)| *name).collect();
        let _ = writeln!(out, "  {}{notes}: {}", segment.name, names.join(", "));
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
