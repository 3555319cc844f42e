//! The two policy slots and how a policy moves through them, over any [`Datapath`]: the kernel's
//! maps or [`MemoryDatapath`](super::MemoryDatapath).
//!
//! A new policy is written by diff into the standby slot, what was written is read back and
//! compared, and only then is the slot made active by one store to `ACTIVE_SLOT`. The slot that
//! was active stays intact as the last-known-good policy: [`PolicySlots::rollback`] flips back to
//! it. So no decision ever sees a mix of two policies, an emptied slot, or a half-written one.
//!
//! The slot that a flip leaves behind is written again only by the next apply. Kernel programs
//! read the slot number and its entries within one run (microseconds, under RCU), while the next
//! apply starts no sooner than the next command the reconciler takes.

use std::collections::BTreeMap;

use enforcer_common::{CgroupLabel, SlotConfig, maps as names};

use super::{
    DatapathError,
    image::{EntryKey, EntryValue, SlotImage, diff},
};
use crate::compile::DesiredState;

/// Entries to put, borrowed from the images they were diffed from.
type Puts<'a> = Vec<(&'a EntryKey, &'a EntryValue)>;

/// A store of the two policy slots: the kernel's maps, or memory.
pub trait Datapath {
    /// The slot decisions read.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn active_slot(&self) -> Result<u32, DatapathError>;
    /// Makes every later decision read `slot`: one store.
    ///
    /// # Errors
    /// When the store cannot be written.
    fn set_active_slot(&mut self, slot: u32) -> Result<(), DatapathError>;
    /// Everything `slot` holds now.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn read_slot(&self, slot: u32) -> Result<SlotImage, DatapathError>;
    /// Everything both slots hold now. A store whose tables hold both slots together overrides
    /// this to read each table once.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn read_slots(&self) -> Result<[SlotImage; 2], DatapathError> {
        Ok([self.read_slot(0)?, self.read_slot(1)?])
    }
    /// # Errors
    /// When the store cannot be written.
    fn set_config(&mut self, slot: u32, config: SlotConfig) -> Result<(), DatapathError>;
    /// Adds or replaces one entry.
    ///
    /// # Errors
    /// When the store refuses it (full, say).
    fn put(&mut self, slot: u32, key: &EntryKey, value: &EntryValue) -> Result<(), DatapathError>;
    /// The value of one entry, `None` when it is absent. Only meaningful for an
    /// [exact](EntryKey::is_exact) key: in a prefix map the lookup finds the longest prefix
    /// covering the key's first address.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn get(&self, slot: u32, key: &EntryKey) -> Result<Option<EntryValue>, DatapathError>;
    /// Removes one entry; an entry already gone is not an error.
    ///
    /// # Errors
    /// When the store refuses.
    fn delete(&mut self, slot: u32, key: &EntryKey) -> Result<(), DatapathError>;
    /// The verdict counters, summed over CPUs, in `enforcer_common::counter` order.
    ///
    /// # Errors
    /// When they cannot be read.
    fn counters(&self) -> Result<Vec<u64>, DatapathError>;
}

/// What an apply or rollback did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The generation in force now.
    pub generation: u32,
    /// Entries written or deleted (0 when the policy was already in force).
    pub written: usize,
    /// Cgroup labels that did not fit the slot.
    pub cgroups_unwritten: usize,
}

/// What a reconcile found and put right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Entries restored, changed back or removed, by map.
    pub entries: BTreeMap<&'static str, usize>,
    /// `ACTIVE_SLOT` or a slot's config had been changed.
    pub configs: usize,
}

impl Repairs {
    #[must_use]
    pub fn total(&self) -> usize {
        self.entries.values().sum::<usize>() + self.configs
    }
}

/// The two slots of a [`Datapath`], and what each is meant to hold.
#[derive(Debug)]
pub struct PolicySlots<D> {
    store: D,
    active: u32,
    intended: [SlotImage; 2],
    /// Cgroup labels one slot may hold.
    cgroup_capacity: usize,
}

impl<D: Datapath> PolicySlots<D> {
    /// Takes over whatever `store` holds now: a fresh store is empty, a pinned one holds the
    /// policies an earlier daemon wrote, and both stay exactly as they are.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn adopt(store: D, cgroup_capacity: usize) -> Result<Self, DatapathError> {
        let active = store.active_slot()? & 1;
        let intended = store.read_slots()?;
        Ok(Self {
            store,
            active,
            intended,
            cgroup_capacity,
        })
    }

    /// The generation in force; 0 when no policy was ever applied.
    #[must_use]
    pub const fn generation(&self) -> u32 {
        self.intended[self.active as usize].config.generation
    }

    /// The generation kept for rollback; 0 when there is none.
    #[must_use]
    pub const fn standby_generation(&self) -> u32 {
        self.intended[self.standby() as usize].config.generation
    }

    /// What the active slot is meant to hold.
    #[must_use]
    pub const fn active_image(&self) -> &SlotImage {
        &self.intended[self.active as usize]
    }

    #[cfg(test)]
    pub(crate) const fn store_mut_for_tests(&mut self) -> &mut D {
        &mut self.store
    }

    const fn standby(&self) -> u32 {
        1 - self.active
    }

    /// The store, for what is not slot-wise (counters, say).
    #[must_use]
    pub const fn store(&self) -> &D {
        &self.store
    }

    /// Makes `state`, with `cgroups` labelled, the policy in force, as a new generation: the
    /// standby slot is brought to it by diff, what was written is read back and compared, and
    /// then the slot is made active; the slot that was active is kept as it is, for rollback.
    /// Writing by diff against the standby slot means a policy that alternates with the one
    /// before costs no writes at all, and the cost of an apply follows the size of the change.
    ///
    /// # Errors
    /// When a write fails or the read-back differs; the policy in force is then unchanged, and the
    /// standby slot is put back to what it held.
    pub fn apply(
        &mut self,
        state: &DesiredState,
        cgroups: &BTreeMap<u64, CgroupLabel>,
    ) -> Result<Applied, DatapathError> {
        let (fitting, cgroups_unwritten) = self.fit(cgroups);
        let mut want = SlotImage::new(state, &fitting);
        want.config.generation = self.next_generation();
        let target = self.standby();
        let written = match self.write_checked(target, &want) {
            Ok(written) => written,
            Err(error) => {
                // Best effort: the slot keeps what it held before (the policy before last), so
                // that it is still a policy and not a mix; reconcile retries what this misses.
                let previous = self.intended[target as usize].clone();
                let _ = self.write_verified(target, &previous);
                return Err(error);
            }
        };
        self.store.set_active_slot(target)?;
        self.active = target;
        self.intended[target as usize] = want;
        Ok(Applied {
            generation: self.generation(),
            written,
            cgroups_unwritten,
        })
    }

    /// Flips back to the standby slot's policy, first putting right anything in it that drifted.
    ///
    /// # Errors
    /// [`DatapathError::NoStandby`] when the standby slot holds no policy; a store error.
    pub fn rollback(&mut self) -> Result<Applied, DatapathError> {
        let target = self.standby();
        let want = self.intended[target as usize].clone();
        if !want.holds_policy() {
            return Err(DatapathError::NoStandby);
        }
        let written = self.write_verified(target, &want)?;
        self.store.set_active_slot(target)?;
        self.active = target;
        Ok(Applied {
            generation: want.config.generation,
            written,
            cgroups_unwritten: 0,
        })
    }

    /// Brings the labels of the active slot (`standby == false`) or the standby slot in line with
    /// `cgroups`, by diff. Returns (added or changed, removed).
    ///
    /// # Errors
    /// A store error, or [`DatapathError::Full`] when some labels did not fit (the rest are
    /// written; the unlabelled cgroups inherit or are held, never let out).
    pub fn label_cgroups(
        &mut self,
        standby: bool,
        cgroups: &BTreeMap<u64, CgroupLabel>,
    ) -> Result<(usize, usize), DatapathError> {
        let slot = if standby { self.standby() } else { self.active };
        if !self.intended[slot as usize].holds_policy() {
            return Ok((0, 0));
        }
        let (fitting, unwritten) = self.fit(cgroups);
        let mut want = self.intended[slot as usize].clone();
        want.set_cgroups(&fitting);
        let (put, delete) = diff(&self.intended[slot as usize], &want);
        let counts = (put.len(), delete.len());
        write_entries(&mut self.store, slot, &put, &delete)?;
        self.intended[slot as usize] = want;
        if unwritten > 0 {
            return Err(DatapathError::Full {
                map: names::CGROUP_IDENTITY,
                capacity: u32::try_from(self.cgroup_capacity).unwrap_or(u32::MAX),
                unwritten,
                flag: "--max-cgroups",
            });
        }
        Ok(counts)
    }

    /// Compares what the store holds with what it should and puts right every difference: an
    /// entry deleted, changed or added behind the reconciler's back, a slot's config, the active
    /// slot.
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub fn reconcile(&mut self) -> Result<Repairs, DatapathError> {
        let mut repairs = Repairs::default();
        if self.store.active_slot()? != self.active {
            self.store.set_active_slot(self.active)?;
            repairs.configs += 1;
        }
        let held = self.store.read_slots()?;
        for slot in [self.active, self.standby()] {
            let current = &held[slot as usize];
            let want = &self.intended[slot as usize];
            if current.config != want.config {
                self.store.set_config(slot, want.config)?;
                repairs.configs += 1;
            }
            let (put, delete) = diff(current, want);
            for key in delete
                .iter()
                .copied()
                .chain(put.iter().map(|(key, _)| *key))
            {
                *repairs.entries.entry(key.map()).or_default() += 1;
            }
            write_entries(&mut self.store, slot, &put, &delete)?;
        }
        Ok(repairs)
    }

    /// [`PolicySlots::write_checked`], then reads the slot back whole and compares; a difference
    /// (drift since the last reconcile) is written again from what was read, and read back once
    /// more. Returns how many entries were written or deleted. For a rollback, and for the restore
    /// after a failed apply, where what the slot holds is not what it was meant to.
    fn write_verified(&mut self, slot: u32, want: &SlotImage) -> Result<usize, DatapathError> {
        let mut written = self.write_checked(slot, want)?;
        let mut check = self.store.read_slot(slot)?;
        if check != *want {
            written += self.write_diff(slot, &check, want)?.0;
            check = self.store.read_slot(slot)?;
        }
        if check != *want {
            let (wrong, unexpected) = diff(&check, want);
            return Err(DatapathError::Verify {
                slot,
                wrong: wrong.len(),
                unexpected: unexpected.len(),
            });
        }
        Ok(written)
    }

    /// Brings `slot` to `want` by diff against what it is meant to hold, then reads back every
    /// entry put in a hash map and compares; one that reads differently is put again and read
    /// once more. Returns how many entries were written or deleted. (A prefix map cannot be
    /// read back key by key; its writes rest on the kernel's answer to each.)
    ///
    /// Only what was written is read back, so that an apply costs what the change costs: reading
    /// both slots whole is two system calls per entry of the largest maps (at 10 000 rules, most
    /// of an apply). Drift elsewhere in the slot (a write made behind the daemon's back) is the
    /// periodic reconcile's to find, which compares both slots whole, as a rollback does.
    fn write_checked(&mut self, slot: u32, want: &SlotImage) -> Result<usize, DatapathError> {
        // Taken out for the diff rather than cloned: at 100k entries a copy is megabytes.
        let believed = std::mem::take(&mut self.intended[slot as usize]);
        let result = self.write_and_check(slot, &believed, want);
        self.intended[slot as usize] = believed;
        result
    }

    fn write_and_check(
        &mut self,
        slot: u32,
        current: &SlotImage,
        want: &SlotImage,
    ) -> Result<usize, DatapathError> {
        let (written, put) = self.write_diff(slot, current, want)?;
        let astray = self.misread(slot, &put)?;
        if !astray.is_empty() {
            write_entries(&mut self.store, slot, &astray, &[])?;
            let still = self.misread(slot, &astray)?;
            if !still.is_empty() {
                return Err(DatapathError::Verify {
                    slot,
                    wrong: still.len(),
                    unexpected: 0,
                });
            }
        }
        Ok(written)
    }

    /// The entries of `put` that `slot` does not hold as they should be.
    fn misread<'a>(
        &self,
        slot: u32,
        put: &[(&'a EntryKey, &'a EntryValue)],
    ) -> Result<Puts<'a>, DatapathError> {
        let mut wrong = Vec::new();
        for &(key, value) in put.iter().filter(|(key, _)| key.is_exact()) {
            if self.store.get(slot, key)?.as_ref() != Some(value) {
                wrong.push((key, value));
            }
        }
        Ok(wrong)
    }

    /// Writes the diff from `current` to `want` into `slot`; returns how many entries were
    /// written or deleted, and the entries put.
    fn write_diff<'a>(
        &mut self,
        slot: u32,
        current: &'a SlotImage,
        want: &'a SlotImage,
    ) -> Result<(usize, Puts<'a>), DatapathError> {
        let (put, delete) = diff(current, want);
        let written = put.len() + delete.len();
        write_entries(&mut self.store, slot, &put, &delete)?;
        if current.config != want.config {
            self.store.set_config(slot, want.config)?;
        }
        Ok((written, put))
    }

    /// The labels that fit one slot (in cgroup id order), and how many did not.
    fn fit(&self, cgroups: &BTreeMap<u64, CgroupLabel>) -> (BTreeMap<u64, CgroupLabel>, usize) {
        let fitting: BTreeMap<u64, CgroupLabel> = cgroups
            .iter()
            .take(self.cgroup_capacity)
            .map(|(id, label)| (*id, *label))
            .collect();
        let unwritten = cgroups.len() - fitting.len();
        (fitting, unwritten)
    }

    /// The generation the next apply will stamp. Generations only grow, across restarts too
    /// (they are read back from the store), and skip 0, which means "no policy".
    #[must_use]
    pub fn next_generation(&self) -> u32 {
        let newest = self.intended[0]
            .config
            .generation
            .max(self.intended[1].config.generation);
        match newest.wrapping_add(1) {
            0 => 1,
            next => next,
        }
    }
}

/// Writes one slot's diff, deletions first: both slots share each kernel map, sized for two full
/// slots, so a slot replaced wholesale must give up its stale entries before it takes new ones.
fn write_entries<D: Datapath>(
    store: &mut D,
    slot: u32,
    put: &[(&EntryKey, &EntryValue)],
    delete: &[&EntryKey],
) -> Result<(), DatapathError> {
    for key in delete {
        store.delete(slot, key)?;
    }
    for (key, value) in put {
        store.put(slot, key, value)?;
    }
    Ok(())
}
