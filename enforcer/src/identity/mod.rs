//! Identities: every table of the policy, and the entities, get a small numeric id; local processes
//! get theirs from the cgroup they run in.
//!
//! Ids are assigned in policy order (nodes, then workloads, then peers) from
//! [`identity::FIRST_TABLE`], so every node compiling the same policy agrees on them.

mod cgroups;
mod hold;
mod watch;

use std::collections::BTreeMap;

use enforcer_common::{CGROUP_HOLD, CgroupLabel, identity};
use globset::GlobMatcher;

use self::hold::SegmentGlob;
pub use self::{
    cgroups::{CgroupError, CgroupTree, find_cgroup2_mount},
    watch::{CgroupWatcher, WatchError},
};
use crate::policy::{GlobError, Labels, Policy};

/// What kind of table (or entity) an identity stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    /// `@host`.
    Host,
    /// `@world`.
    World,
    /// A `[[node]]`; `local` when it is the node this enforcer runs on.
    Node { local: bool },
    /// A `[[workload]]`; `active` when it may run on this node.
    Workload { active: bool },
    /// A `[[peer]]`.
    Peer,
}

/// Errors building the identities of a policy.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Only for a policy built by hand: the parser refuses such globs.
    #[error("workload {workload}: cgroup glob {glob:?} is invalid")]
    Glob {
        workload: String,
        glob: String,
        #[source]
        source: GlobError,
    },
}

/// One numeric identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: u32,
    /// The table's name, or the entity (`@host`, `@world`).
    pub name: String,
    pub kind: IdentityKind,
    pub labels: Labels,
}

impl Identity {
    /// Whether the identity stands for processes on this node (the failsafe protects these).
    #[must_use]
    pub fn is_local(&self) -> bool {
        matches!(
            self.kind,
            IdentityKind::Host
                | IdentityKind::Node { local: true }
                | IdentityKind::Workload { active: true }
        )
    }
}

/// All identities of a policy, as seen from one node.
#[derive(Clone, Debug)]
pub struct Identities {
    all: Vec<Identity>,
    /// Identity of local processes no workload claims: this node's table, else `@host`.
    local_default: u32,
    /// Workloads that may run here, in policy order.
    workload_globs: Vec<(GlobMatcher, u32)>,
    /// The same globs by segment, to tell which cgroups must hold their new children.
    segment_globs: Vec<(SegmentGlob, u32)>,
}

impl Identities {
    /// Numbers the policy's tables and picks out what is local to `node`.
    ///
    /// # Errors
    /// When a workload glob does not compile (the parser has already rejected those).
    pub fn build(policy: &Policy, node: &str) -> Result<Self, IdentityError> {
        let mut all = vec![
            Identity {
                id: identity::HOST,
                name: "@host".to_owned(),
                kind: IdentityKind::Host,
                labels: Labels::new(),
            },
            Identity {
                id: identity::WORLD,
                name: "@world".to_owned(),
                kind: IdentityKind::World,
                labels: Labels::new(),
            },
        ];
        let mut next = identity::FIRST_TABLE;
        let mut local_default = identity::HOST;
        for table in &policy.nodes {
            let local = table.name == node;
            if local {
                local_default = next;
            }
            all.push(Identity {
                id: next,
                name: table.name.clone(),
                kind: IdentityKind::Node { local },
                labels: table.labels.clone(),
            });
            next += 1;
        }
        let mut workload_globs = Vec::new();
        let mut segment_globs = Vec::new();
        for table in &policy.workloads {
            let active = table
                .nodes
                .as_ref()
                .is_none_or(|nodes| nodes.iter().any(|n| n == node));
            if active {
                let matcher = table
                    .cgroup_matcher()
                    .map_err(|source| IdentityError::Glob {
                        workload: table.name.clone(),
                        glob: table.cgroup.clone(),
                        source,
                    })?;
                workload_globs.push((matcher, next));
                segment_globs.push((SegmentGlob::new(&table.cgroup), next));
            }
            all.push(Identity {
                id: next,
                name: table.name.clone(),
                kind: IdentityKind::Workload { active },
                labels: table.labels.clone(),
            });
            next += 1;
        }
        for table in &policy.peers {
            all.push(Identity {
                id: next,
                name: table.name.clone(),
                kind: IdentityKind::Peer,
                labels: table.labels.clone(),
            });
            next += 1;
        }
        Ok(Self {
            all,
            local_default,
            workload_globs,
            segment_globs,
        })
    }

    /// Every identity, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.all.iter()
    }

    #[must_use]
    pub fn get(&self, id: u32) -> Option<&Identity> {
        self.all
            .binary_search_by_key(&id, |i| i.id)
            .ok()
            .and_then(|index| self.all.get(index))
    }

    /// Identity of local processes that no workload claims.
    #[must_use]
    pub const fn local_default(&self) -> u32 {
        self.local_default
    }

    /// The identity of a process in the cgroup at `path` (relative to the managed root, `/`-separated,
    /// empty for the root itself): the workload whose glob matches the path or its deepest
    /// ancestor, the first in policy order among equals; else the local default.
    #[must_use]
    pub fn for_cgroup(&self, path: &str) -> u32 {
        let mut candidate = path.trim_matches('/');
        loop {
            if !candidate.is_empty()
                && let Some((_, id)) = self
                    .workload_globs
                    .iter()
                    .find(|(glob, _)| glob.is_match(candidate))
            {
                return *id;
            }
            match candidate.rfind('/') {
                Some(cut) => candidate = &candidate[..cut],
                None if candidate.is_empty() => return self.local_default,
                None => candidate = "",
            }
        }
    }

    /// The label of the cgroup at `path`: its identity, and whether a cgroup made below it
    /// later must be held until labelled because a workload glob of another identity could
    /// claim it.
    #[must_use]
    pub fn label_for(&self, path: &str) -> CgroupLabel {
        let identity = self.for_cgroup(path);
        let path = path.trim_matches('/');
        let hold = self
            .segment_globs
            .iter()
            .any(|(glob, id)| *id != identity && glob.could_match_below(path));
        CgroupLabel {
            identity,
            flags: if hold { CGROUP_HOLD } else { 0 },
        }
    }

    /// Labels every cgroup of a scanned tree.
    #[must_use]
    pub fn label(&self, tree: &CgroupTree) -> BTreeMap<u64, CgroupLabel> {
        tree.iter()
            .map(|(cgroup_id, path)| (cgroup_id, self.label_for(path)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Source, parse_sources};

    fn policy(text: &str) -> Policy {
        parse_sources(&[Source {
            path: "p.toml".into(),
            text: text.to_owned(),
        }])
        .expect("valid policy")
    }

    const TEXT: &str = r#"
[[node]]
name = "n1"
addresses = ["10.0.0.1"]
labels = { role = "app" }

[[workload]]
name = "svc"
cgroup = "system.slice/*.service"
labels = { app = "svc" }

[[workload]]
name = "ledger"
cgroup = "system.slice/ledger.service"
labels = { app = "ledger" }

[[workload]]
name = "elsewhere"
cgroup = "other/**"
labels = { app = "x" }
nodes = ["n2"]

[[node]]
name = "n2"
addresses = ["10.0.0.2"]
labels = { role = "db" }
"#;

    #[test]
    fn numbering_follows_policy_order() {
        let ids = Identities::build(&policy(TEXT), "n1").expect("identities");
        let names: Vec<(u32, &str)> = ids.iter().map(|i| (i.id, i.name.as_str())).collect();
        assert_eq!(
            names,
            [
                (1, "@host"),
                (2, "@world"),
                (256, "n1"),
                (257, "n2"),
                (258, "svc"),
                (259, "ledger"),
                (260, "elsewhere"),
            ]
        );
        assert_eq!(ids.local_default(), 256);
    }

    #[test]
    fn deepest_match_wins_then_policy_order() {
        let ids = Identities::build(&policy(TEXT), "n1").expect("identities");
        // Both globs match: the first in policy order wins.
        assert_eq!(ids.for_cgroup("system.slice/ledger.service"), 258);
        // A child cgroup inherits the match of its ancestor.
        assert_eq!(ids.for_cgroup("system.slice/api.service/worker"), 258);
        assert_eq!(ids.for_cgroup("system.slice"), 256);
        assert_eq!(ids.for_cgroup(""), 256);
        // Workloads pinned to another node never claim cgroups here.
        assert_eq!(ids.for_cgroup("other/thing"), 256);
    }

    #[test]
    fn parents_of_deeper_globs_hold_their_new_children() {
        let ids = Identities::build(&policy(TEXT), "n1").expect("identities");
        // `system.slice/ledger.service` (another identity than svc's) is below system.slice.
        assert_eq!(ids.label_for("system.slice").flags, CGROUP_HOLD);
        // Below a service nothing deeper is claimed: children inherit safely.
        assert_eq!(ids.label_for("system.slice/api.service").flags, 0);
        assert_eq!(ids.label_for("system.slice/api.service").identity, 258);
        // The root holds: a child named system.slice would be claimed by svc's glob only below.
        assert_eq!(ids.label_for("").flags, CGROUP_HOLD);
        // Workloads of other nodes never hold anything here.
        assert_eq!(ids.label_for("other").flags, 0);
    }

    #[test]
    fn unknown_node_falls_back_to_host() {
        let ids = Identities::build(&policy(TEXT), "not-in-policy").expect("identities");
        assert_eq!(ids.local_default(), identity::HOST);
        assert_eq!(
            ids.get(identity::WORLD).map(|i| i.kind),
            Some(IdentityKind::World)
        );
    }
}
