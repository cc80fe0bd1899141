//! The message-specific callback (MSC) table: a slab whose wire ids carry a
//! generation, so a late or duplicated reply can never reach a callback that
//! later reused the same slot. Pure data structure, no I/O.
//!
//! Wire id layout (a `u64`, always `>= wire::FIRST_USER`):
//!
//! ```text
//! wire_id - FIRST_USER = generation (31 bits) << 32 | slab index (32 bits)
//! ```
//!
//! The generation is a per-table counter bumped on every insert, so a slot
//! that is freed and reused gets a different wire id unless exactly 2^31
//! inserts happen in between while the old reply is still in flight.

use slab::Slab;

use crate::wire::FIRST_USER;

const GEN_MASK: u32 = 0x7fff_ffff;

/// A table of pending callbacks, keyed by wire id.
#[derive(Debug)]
pub struct CallbackTable<T> {
    slots: Slab<Slot<T>>,
    next_generation: u32,
    limit: usize,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: T,
}

/// The table already holds `limit` callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull(pub usize);

impl<T> CallbackTable<T> {
    /// A table that holds at most `limit` callbacks (capped at 2^32 by the id layout).
    pub fn new(limit: usize) -> Self {
        CallbackTable {
            slots: Slab::new(),
            next_generation: 0,
            limit: limit.min(u32::MAX as usize),
        }
    }

    /// Inserts a value built from its own wire id (so it can, e.g., register
    /// a deadline that names the id) and returns that id.
    pub fn insert_with(&mut self, make: impl FnOnce(u64) -> T) -> Result<u64, TableFull> {
        if self.slots.len() >= self.limit {
            return Err(TableFull(self.limit));
        }
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GEN_MASK;
        let entry = self.slots.vacant_entry();
        let id = wire_id(generation, entry.key());
        entry.insert(Slot {
            generation,
            value: make(id),
        });
        Ok(id)
    }

    /// Inserts a value and returns its wire id.
    pub fn insert(&mut self, value: T) -> Result<u64, TableFull> {
        self.insert_with(|_| value)
    }

    /// Removes and returns the callback named by `id`, if it is still there
    /// (same slot and same generation).
    pub fn take(&mut self, id: u64) -> Option<T> {
        let (generation, idx) = split(id)?;
        match self.slots.get(idx) {
            Some(slot) if slot.generation == generation => Some(self.slots.remove(idx).value),
            _ => None,
        }
    }

    /// The live callback named by `id`, to update in place.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let (generation, idx) = split(id)?;
        match self.slots.get_mut(idx) {
            Some(slot) if slot.generation == generation => Some(&mut slot.value),
            _ => None,
        }
    }

    /// Whether `id` names a live callback.
    pub fn contains(&self, id: u64) -> bool {
        split(id).is_some_and(|(generation, idx)| {
            self.slots
                .get(idx)
                .is_some_and(|s| s.generation == generation)
        })
    }

    /// Callbacks waiting.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No callbacks waiting.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Removes every callback whose value matches `pred`, returning them.
    pub fn take_matching(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let ids: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| pred(&s.value))
            .map(|(i, _)| i)
            .collect();
        ids.into_iter()
            .map(|i| self.slots.remove(i).value)
            .collect()
    }

    /// Removes every callback.
    pub fn drain(&mut self) -> Vec<T> {
        self.slots.drain().map(|s| s.value).collect()
    }

    /// The limit given at construction.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

fn wire_id(generation: u32, idx: usize) -> u64 {
    FIRST_USER + ((u64::from(generation & GEN_MASK) << 32) | idx as u64)
}

fn split(id: u64) -> Option<(u32, usize)> {
    let raw = id.checked_sub(FIRST_USER)?;
    let generation = (raw >> 32) as u32;
    if generation > GEN_MASK {
        return None;
    }
    Some((generation, (raw & 0xffff_ffff) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_first_user_and_round_trip() {
        let mut t = CallbackTable::new(10);
        let a = t.insert("a").unwrap();
        assert!(a >= FIRST_USER);
        assert!(t.contains(a));
        assert_eq!(t.take(a), Some("a"));
        assert_eq!(t.take(a), None, "an MSC runs once");
        assert!(t.is_empty());
    }

    #[test]
    fn reused_slot_gets_a_new_id() {
        let mut t = CallbackTable::new(10);
        let old = t.insert("old").unwrap();
        assert_eq!(t.take(old), Some("old"));
        let new = t.insert("new").unwrap();
        assert_ne!(old, new, "same slot, different generation");
        assert_eq!(
            t.take(old),
            None,
            "a late reply to the old id finds nothing"
        );
        assert_eq!(t.take(new), Some("new"));
    }

    #[test]
    fn builtin_and_garbage_ids_find_nothing() {
        let mut t: CallbackTable<u8> = CallbackTable::new(10);
        t.insert(1).unwrap();
        for id in [0, 1, 2, 3, u64::MAX, FIRST_USER + (1 << 32), FIRST_USER + 5] {
            assert_eq!(t.take(id), None, "{id}");
        }
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn limit_is_enforced_and_frees() {
        let mut t = CallbackTable::new(2);
        let a = t.insert(()).unwrap();
        t.insert(()).unwrap();
        assert_eq!(t.insert(()), Err(TableFull(2)));
        t.take(a);
        assert!(t.insert(()).is_ok());
    }

    #[test]
    fn generation_wraps_without_overflowing_the_id() {
        let mut t = CallbackTable::new(1);
        t.next_generation = GEN_MASK;
        let a = t.insert(()).unwrap();
        assert!(a > FIRST_USER);
        assert!(t.take(a).is_some());
        let b = t.insert(()).unwrap();
        assert_eq!(b, FIRST_USER, "generation wrapped to 0");
    }

    #[test]
    fn take_matching_and_drain() {
        let mut t = CallbackTable::new(10);
        for i in 0..6 {
            t.insert(i).unwrap();
        }
        let mut even = t.take_matching(|v| v % 2 == 0);
        even.sort();
        assert_eq!(even, vec![0, 2, 4]);
        assert_eq!(t.drain().len(), 3);
        assert!(t.is_empty());
    }
}
