//! A stable, human-readable rendering of a compiled policy: what `enforcer compile` prints and what
//! the golden test pins down.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

use enforcer_common::{
    ADDR_LOCAL, IDENTITY_MODE_AUDIT, IDENTITY_MODE_ENFORCE, IDENTITY_PACKET_SOCKETS,
    IDENTITY_SEGMENTED, RULE_AUDIT, RULE_FAILSAFE, VERDICT_ALLOW, is_ipv4_mapped, protocol,
};

use super::{AddrPrefix, CompiledPolicy};
use crate::identity::Identities;

impl CompiledPolicy {
    /// Renders every map entry, one per line, in key order.
    #[must_use]
    pub fn render(&self, identities: &Identities) -> String {
        let name = |id: u32| identities.get(id).map_or("?", |i| i.name.as_str());
        let mut out = String::new();
        let state = &self.state;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# policy version {}", self.version);
        let _ = writeln!(
            out,
            "config audit={} local_identity={} ({})",
            state.config.flags & enforcer_common::CONFIG_AUDIT != 0,
            state.config.local_identity,
            name(state.config.local_identity)
        );
        for (id, info) in &state.identity_info {
            let segment = if info.flags & IDENTITY_SEGMENTED != 0 {
                self.segments
                    .get(info.segment as usize)
                    .map_or("?", String::as_str)
            } else {
                "-"
            };
            let mode = if info.flags & IDENTITY_MODE_AUDIT != 0 {
                "audit"
            } else if info.flags & IDENTITY_MODE_ENFORCE != 0 {
                "enforce"
            } else {
                "default"
            };
            // Only when set, so that images of policies without the key read as before.
            let packet_sockets = if info.flags & IDENTITY_PACKET_SOCKETS != 0 {
                " packet_sockets=allow"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "identity {id} {} segment={segment} mode={mode}{packet_sockets}",
                name(*id)
            );
        }
        for (addr, value) in &state.addr_exact {
            let prefix = AddrPrefix {
                addr: *addr,
                bits: 128,
            };
            let local = if value.flags & ADDR_LOCAL != 0 {
                " local"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "addr {} -> {} ({}){local}",
                show_prefix(prefix),
                value.identity,
                name(value.identity)
            );
        }
        for (prefix, value) in &state.addr_cidr {
            let local = if value.flags & ADDR_LOCAL != 0 {
                " local"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "cidr {} -> {} ({}){local}",
                show_prefix(*prefix),
                value.identity,
                name(value.identity)
            );
        }
        for (key, value) in &state.rules {
            let proto = protocol::name(key.protocol);
            let verdict = if value.verdict == VERDICT_ALLOW {
                "allow"
            } else {
                "deny"
            };
            let mut flags = String::new();
            if value.flags & RULE_AUDIT != 0 {
                flags.push_str(" audit");
            }
            if value.flags & RULE_FAILSAFE != 0 {
                flags.push_str(" failsafe");
            }
            let uid = self
                .rules
                .get(value.rule_id as usize)
                .map_or("?", |r| r.uid.as_str());
            let _ = writeln!(
                out,
                "rule {} -> {} {proto} {}-{} => {verdict} {uid}{flags}",
                name(key.src_identity),
                name(key.dst_identity),
                key.ports.first,
                key.ports.last(),
            );
        }
        out
    }
}

fn show_prefix(prefix: AddrPrefix) -> String {
    let a = prefix.addr;
    if is_ipv4_mapped(&a) && prefix.bits >= 96 {
        format!(
            "{}/{}",
            Ipv4Addr::new(a[12], a[13], a[14], a[15]),
            prefix.bits - 96
        )
    } else {
        format!("{}/{}", Ipv6Addr::from(a), prefix.bits)
    }
}
