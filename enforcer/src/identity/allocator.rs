//! Identity numbers that outlive one policy. Events, flows and the kernel's cgroup labels carry
//! the number, so a table must keep it across reloads and restarts (the caller persists the
//! allocator), and a number must never be handed out twice: a table that left the policy keeps
//! its number reserved, or a later table with another meaning would inherit its flows.

use std::collections::BTreeMap;

use enforcer_common::{capacity, identity};
use serde::{Deserialize, Serialize};

use super::IdentityError;
use crate::policy::TableKind;

/// Every table ever numbered, with its number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityAllocator {
    /// `"node/NAME"`, `"workload/NAME"` or `"peer/NAME"`. Names are unique within one policy, but
    /// a name may change kind across reloads and must not keep the old kind's number.
    ids: BTreeMap<String, u32>,
    /// Above every number in `ids`; 0 (the derived default) until the first one is handed out.
    next: u32,
}

impl IdentityAllocator {
    /// The number of the `kind` table (node, workload or peer) called `name`. A table seen for the
    /// first time gets the next number, so tables first seen in the same order get the same
    /// numbers on every node.
    ///
    /// # Errors
    /// When no number is left for a new table.
    pub fn id_for(&mut self, kind: TableKind, name: &str) -> Result<u32, IdentityError> {
        let key = format!("{}/{name}", kind.key());
        if let Some(&id) = self.ids.get(&key) {
            return Ok(id);
        }
        let id = self.next.max(identity::FIRST_TABLE);
        let next = id
            .checked_add(1)
            .filter(|_| self.ids.len() < capacity::IDENTITIES as usize)
            .ok_or_else(|| IdentityError::Exhausted {
                kind,
                name: name.to_owned(),
                limit: capacity::IDENTITIES,
            })?;
        self.ids.insert(key, id);
        self.next = next;
        Ok(id)
    }

    /// How many numbers were handed out, those of tables no longer in the policy included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}
