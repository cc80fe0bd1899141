//! The message-specific callback (MSC) table: a slab whose wire ids carry a
//! generation, so a late or duplicated reply can never reach a callback that
//! later reused the same slot. Pure data structure, no I/O.
//!
//! Wire id layout (a `u64`, always `>= wire::FIRST_USER`, below 2^63):
//!
//! ```text
//! wire_id - FIRST_USER = generation (28 bits) << 35 | shard (3 bits) << 32 | slab index (32 bits)
//! ```
//!
//! The generation is a per-table counter bumped on every insert, so a slot
//! that is freed and reused gets a different wire id unless exactly 2^28
//! inserts happen in between while the old reply is still in flight. The
//! shard names which of up to [`SHARDS`] tables issued the id: a messenger
//! keeps one per worker thread, so threads do not contend for one lock.

use slab::Slab;

use crate::wire::FIRST_USER;

const GEN_MASK: u32 = 0x0fff_ffff;

/// Tables one id space can name.
pub const SHARDS: usize = 8;

/// A table of pending callbacks, keyed by wire id.
#[derive(Debug)]
pub struct CallbackTable<T> {
    /// The callbacks, by slot; a slot is reused once freed.
    slots: Slab<Slot<T>>,
    /// Stamped into the next callback's wire id, so a late reply to a
    /// freed slot's old callback cannot reach its new one.
    next_generation: u32,
    /// Most callbacks at once (`Config::max_pending_callbacks`).
    limit: usize,
    /// Which shard this table is (in its ids).
    shard: u8,
}

#[derive(Debug)]
struct Slot<T> {
    /// The generation its wire id carries; a reply naming another misses.
    generation: u32,
    /// What waits for the reply.
    value: T,
}

/// The table already holds `limit` callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull(pub usize);

impl<T> CallbackTable<T> {
    /// A table that holds at most `limit` callbacks (capped at 2^32 by the id layout).
    pub fn new(limit: usize) -> Self {
        Self::shard(limit, 0)
    }

    /// Shard `shard` (below [`SHARDS`]) of a sharded table: its ids name it
    /// ([`shard_of`]), and it takes no id of another shard.
    pub fn shard(limit: usize, shard: usize) -> Self {
        CallbackTable {
            slots: Slab::new(),
            next_generation: 0,
            limit: limit.min(u32::MAX as usize),
            shard: (shard % SHARDS) as u8,
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
        let id = wire_id(generation, self.shard, entry.key());
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
        let (generation, idx) = self.split(id)?;
        match self.slots.get(idx) {
            Some(slot) if slot.generation == generation => Some(self.slots.remove(idx).value),
            _ => None,
        }
    }

    /// The live callback named by `id`, to update in place.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let (generation, idx) = self.split(id)?;
        match self.slots.get_mut(idx) {
            Some(slot) if slot.generation == generation => Some(&mut slot.value),
            _ => None,
        }
    }

    /// Whether `id` names a live callback.
    pub fn contains(&self, id: u64) -> bool {
        self.split(id).is_some_and(|(generation, idx)| {
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

    /// The wire ids of every callback whose value matches `pred` (to
    /// complete each in place, or take it).
    pub fn ids_matching(&self, mut pred: impl FnMut(&T) -> bool) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| pred(&s.value))
            .map(|(i, s)| wire_id(s.generation, self.shard, i))
            .collect()
    }

    /// The limit given at construction.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The generation and slot `id` names, if it is one of this table's.
    fn split(&self, id: u64) -> Option<(u32, usize)> {
        let raw = id.checked_sub(FIRST_USER)?;
        let generation = (raw >> 35) as u32;
        if generation > GEN_MASK || shard_of(id) != Some(usize::from(self.shard)) {
            return None;
        }
        Some((generation, (raw & 0xffff_ffff) as usize))
    }
}

fn wire_id(generation: u32, shard: u8, idx: usize) -> u64 {
    let generation = u64::from(generation & GEN_MASK) << 35;
    FIRST_USER + (generation | u64::from(shard) << 32 | idx as u64)
}

/// Which shard issued `id` (`None`: not a callback id).
pub fn shard_of(id: u64) -> Option<usize> {
    let raw = id.checked_sub(FIRST_USER)?;
    Some(((raw >> 32) & (SHARDS as u64 - 1)) as usize)
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
    fn a_shard_takes_only_its_own_ids() {
        let mut a = CallbackTable::shard(10, 3);
        let mut b = CallbackTable::shard(10, 5);
        let ia = a.insert("a").unwrap();
        let ib = b.insert("b").unwrap();
        assert_eq!((shard_of(ia), shard_of(ib)), (Some(3), Some(5)));
        assert_eq!(b.take(ia), None, "another shard's id");
        assert_eq!(a.take(ib), None);
        assert_eq!(a.take(ia), Some("a"));
        assert_eq!(b.take(ib), Some("b"));
        assert_eq!(shard_of(2), None, "ACK is no callback id");
    }

    #[test]
    fn the_largest_id_stays_below_2_63() {
        let mut t = CallbackTable::shard(1, SHARDS - 1);
        t.next_generation = GEN_MASK;
        let id = t.insert(()).unwrap();
        assert!(id < 1 << 63, "{id:#x}");
        assert_eq!(shard_of(id), Some(SHARDS - 1));
    }

    #[test]
    fn ids_matching_names_live_callbacks() {
        let mut t = CallbackTable::shard(10, 3);
        let ids: Vec<u64> = (0..6).map(|i| t.insert(i).unwrap()).collect();
        let even = t.ids_matching(|v| v % 2 == 0);
        assert_eq!(even, vec![ids[0], ids[2], ids[4]]);
        for id in even {
            assert!(t.take(id).is_some_and(|v| v % 2 == 0));
        }
        assert_eq!(t.len(), 3);
        assert!(t.ids_matching(|v| v % 2 == 0).is_empty());
    }
}
