//! A [`Datapath`] in memory: the same two slots, with no kernel, so that swaps, label syncs,
//! adoption and drift repair can be exercised (and explained) without root.

use enforcer_common::{SlotConfig, counter};

use super::{
    Datapath, DatapathError,
    image::{EntryKey, EntryValue, SlotImage},
};

/// The two slots, an active-slot word and counters, in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryDatapath {
    pub active: u32,
    pub slots: [SlotImage; 2],
    pub counters: Vec<u64>,
    /// Puts left before every further put fails as a full map would: a write that breaks off
    /// half-way. `None`: no limit.
    pub puts_left: Option<usize>,
    /// Puts that report success but store nothing (a write gone astray), before puts store
    /// again.
    pub puts_lost: usize,
}

impl MemoryDatapath {
    fn slot_mut(&mut self, slot: u32) -> &mut SlotImage {
        &mut self.slots[slot as usize & 1]
    }
}

impl Datapath for MemoryDatapath {
    fn active_slot(&self) -> Result<u32, DatapathError> {
        Ok(self.active)
    }

    fn set_active_slot(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.active = slot;
        Ok(())
    }

    fn read_slot(&self, slot: u32) -> Result<SlotImage, DatapathError> {
        Ok(self.slots[slot as usize & 1].clone())
    }

    fn set_config(&mut self, slot: u32, config: SlotConfig) -> Result<(), DatapathError> {
        self.slot_mut(slot).config = config;
        Ok(())
    }

    fn put(&mut self, slot: u32, key: &EntryKey, value: &EntryValue) -> Result<(), DatapathError> {
        if let Some(left) = self.puts_left.as_mut() {
            if *left == 0 {
                return Err(DatapathError::Full {
                    map: key.map(),
                    capacity: 0,
                    unwritten: 1,
                    flag: "(the in-memory datapath's put limit)",
                });
            }
            *left -= 1;
        }
        if self.puts_lost > 0 {
            self.puts_lost -= 1;
            return Ok(());
        }
        self.slot_mut(slot).entries.insert(*key, *value);
        Ok(())
    }

    fn get(&self, slot: u32, key: &EntryKey) -> Result<Option<EntryValue>, DatapathError> {
        Ok(self.slots[slot as usize & 1].entries.get(key).copied())
    }

    fn delete(&mut self, slot: u32, key: &EntryKey) -> Result<(), DatapathError> {
        self.slot_mut(slot).entries.remove(key);
        Ok(())
    }

    fn counters(&self) -> Result<Vec<u64>, DatapathError> {
        let mut counters = self.counters.clone();
        counters.resize(counter::COUNT as usize, 0);
        Ok(counters)
    }
}
