//! Identities: every table of the policy, and the entities, get a small numeric id; local processes
//! get theirs from the cgroup they run in.
//!
//! A table keeps its id for as long as the [`IdentityAllocator`] lives, whatever is added or
//! removed around it, so a reload never relabels a running workload or the flows of one. New
//! tables are numbered in policy order (nodes, then workloads, then peers) from
//! [`identity::FIRST_TABLE`], so nodes that start fresh from the same policy agree on the ids.

mod allocator;
mod cgroups;
mod hold;
mod watch;

use std::collections::BTreeMap;

use enforcer_common::{CGROUP_HOLD, CgroupLabel, identity};
use globset::GlobMatcher;

use self::hold::SegmentGlob;
pub(crate) use self::watch::InotifyFd;
pub use self::{
    allocator::IdentityAllocator,
    cgroups::{CgroupError, CgroupTree, find_cgroup2_mount},
    watch::{CgroupWatcher, WatchError},
};
use crate::policy::{GlobError, Labels, Policy, TableKind};

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
    /// Ids are never reused, so the limit counts every table since numbering started.
    #[error(
        "no identity left for {kind} {name:?}: {limit} tables were numbered and ids are never \
         reused; `enforcer detach` then a fresh start resets the numbering"
    )]
    Exhausted {
        kind: TableKind,
        name: String,
        limit: u32,
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
    /// Numbers the policy's tables from `allocator`, which learns the new ones, and picks out what
    /// is local to `node`.
    ///
    /// # Errors
    /// When a workload glob does not compile (the parser has already rejected those), or when
    /// `allocator` has no id left for a new table.
    pub fn build(
        policy: &Policy,
        node: &str,
        allocator: &mut IdentityAllocator,
    ) -> Result<Self, IdentityError> {
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
        let mut local_default = identity::HOST;
        for table in &policy.nodes {
            let id = allocator.id_for(TableKind::Node, &table.name)?;
            let local = table.name == node;
            if local {
                local_default = id;
            }
            all.push(Identity {
                id,
                name: table.name.clone(),
                kind: IdentityKind::Node { local },
                labels: table.labels.clone(),
            });
        }
        let mut workload_globs = Vec::new();
        let mut segment_globs = Vec::new();
        for table in &policy.workloads {
            let id = allocator.id_for(TableKind::Workload, &table.name)?;
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
                workload_globs.push((matcher, id));
                segment_globs.push((SegmentGlob::new(&table.cgroup), id));
            }
            all.push(Identity {
                id,
                name: table.name.clone(),
                kind: IdentityKind::Workload { active },
                labels: table.labels.clone(),
            });
        }
        for table in &policy.peers {
            all.push(Identity {
                id: allocator.id_for(TableKind::Peer, &table.name)?,
                name: table.name.clone(),
                kind: IdentityKind::Peer,
                labels: table.labels.clone(),
            });
        }
        // Tables kept from earlier policies hold lower ids than those added since; `get` searches
        // by id.
        all.sort_unstable_by_key(|i| i.id);
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

    fn fresh(text: &str, node: &str) -> Identities {
        Identities::build(&policy(text), node, &mut IdentityAllocator::default())
            .expect("identities")
    }

    fn ids_by_name(ids: &Identities) -> BTreeMap<String, u32> {
        ids.iter().map(|i| (i.name.clone(), i.id)).collect()
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
        let ids = fresh(TEXT, "n1");
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
        let ids = fresh(TEXT, "n1");
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
        let ids = fresh(TEXT, "n1");
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
        let ids = fresh(TEXT, "not-in-policy");
        assert_eq!(ids.local_default(), identity::HOST);
        assert_eq!(
            ids.get(identity::WORLD).map(|i| i.kind),
            Some(IdentityKind::World)
        );
    }

    /// TEXT with a node added in front and a workload in the middle.
    const GROWN: &str = r#"
[[node]]
name = "n0"
addresses = ["10.0.0.9"]

[[node]]
name = "n1"
addresses = ["10.0.0.1"]
labels = { role = "app" }

[[workload]]
name = "svc"
cgroup = "system.slice/*.service"
labels = { app = "svc" }

[[workload]]
name = "batch"
cgroup = "batch.slice/**"

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
    fn a_reload_renumbers_no_existing_table() {
        let mut allocator = IdentityAllocator::default();
        let old = Identities::build(&policy(TEXT), "n1", &mut allocator).expect("identities");
        let new = Identities::build(&policy(GROWN), "n1", &mut allocator).expect("identities");
        let (old, new) = (ids_by_name(&old), ids_by_name(&new));
        for (name, id) in &old {
            assert_eq!(new.get(name), Some(id), "{name} was renumbered");
        }
        // The new tables come after every old one, in policy order.
        assert_eq!(new.get("n0"), Some(&261));
        assert_eq!(new.get("batch"), Some(&262));
        assert_eq!(allocator.len(), 7);
    }

    #[test]
    fn a_removed_tables_id_stays_reserved() {
        let mut allocator = IdentityAllocator::default();
        Identities::build(&policy(TEXT), "n1", &mut allocator).expect("identities");
        let without_ledger = TEXT.replace("ledger", "billing");
        let ids =
            Identities::build(&policy(&without_ledger), "n1", &mut allocator).expect("identities");
        let ids = ids_by_name(&ids);
        assert_eq!(ids.get("ledger"), None);
        assert_eq!(ids.get("billing"), Some(&261));
        // Coming back under its own name, the table is the one it was.
        let ids = Identities::build(&policy(TEXT), "n1", &mut allocator).expect("identities");
        assert_eq!(ids_by_name(&ids).get("ledger"), Some(&259));
    }

    #[test]
    fn numbering_survives_a_serde_round_trip() {
        let mut allocator = IdentityAllocator::default();
        Identities::build(&policy(TEXT), "n1", &mut allocator).expect("identities");
        let json = serde_json::to_string(&allocator).expect("serializes");
        let mut restored: IdentityAllocator = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(restored, allocator);
        let before = Identities::build(&policy(GROWN), "n1", &mut allocator).expect("identities");
        let after = Identities::build(&policy(GROWN), "n1", &mut restored).expect("identities");
        assert_eq!(ids_by_name(&after), ids_by_name(&before));
    }

    #[test]
    fn a_node_and_a_workload_of_one_name_get_different_ids() {
        // The parser refuses a shared name within one policy, but a name can change kind across
        // reloads; the allocator keys by kind either way.
        let mut shared = policy(TEXT);
        shared
            .workloads
            .extend(policy("[[workload]]\nname = \"n2\"\ncgroup = \"db.slice/**\"\n").workloads);
        let ids = Identities::build(&shared, "n1", &mut IdentityAllocator::default())
            .expect("identities");
        let n2: Vec<(u32, IdentityKind)> = ids
            .iter()
            .filter(|i| i.name == "n2")
            .map(|i| (i.id, i.kind))
            .collect();
        assert_eq!(
            n2,
            [
                (257, IdentityKind::Node { local: false }),
                (261, IdentityKind::Workload { active: true }),
            ]
        );
        assert_eq!(ids.for_cgroup("db.slice/x"), 261);
    }

    #[test]
    fn exhaustion_is_an_error_and_known_tables_keep_their_ids() {
        let mut allocator = IdentityAllocator::default();
        for n in 0..enforcer_common::capacity::IDENTITIES {
            allocator
                .id_for(TableKind::Peer, &format!("p{n}"))
                .expect("room left");
        }
        assert_eq!(allocator.id_for(TableKind::Peer, "p0").ok(), Some(256));
        let err =
            Identities::build(&policy(TEXT), "n1", &mut allocator).expect_err("no id left for n1");
        assert!(
            matches!(
                &err,
                IdentityError::Exhausted { kind: TableKind::Node, name, limit: 8_192 } if name == "n1"
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("`enforcer detach`"), "{err}");

        // The number space ends too, however few tables were numbered.
        let mut at_end: IdentityAllocator =
            serde_json::from_str(r#"{"ids":{},"next":4294967295}"#).expect("deserializes");
        assert!(matches!(
            at_end.id_for(TableKind::Workload, "w"),
            Err(IdentityError::Exhausted { .. })
        ));
        assert!(at_end.is_empty());
    }
}
