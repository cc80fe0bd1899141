//! Request deadlines: when each waiting callback times out. Pure data
//! structure: the caller passes the time in and says which ids are still
//! live, so tests need no clock and no runtime.
//!
//! Almost every request uses the messenger's one default timeout, so
//! deadlines arrive in order: they go to the back of a FIFO, 16 bytes each,
//! O(1). A deadline earlier than the FIFO's last one (a shorter per-request
//! timeout) goes to a min-heap instead. Entries are never removed when a
//! reply arrives: they are dropped lazily, when they fall due and the
//! caller's table no longer holds their id (the id carries a generation, so
//! a reused slot does not match), and by [`Deadlines::compact`], which the
//! caller runs when stale entries outnumber live ones. This replaced a
//! `DelayQueue` entry per request (about 56 bytes, and a timer-wheel removal
//! on every reply).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use std::time::{Duration, Instant};

/// A deadline as nanoseconds since the structure's base instant: 8 bytes
/// instead of 16, good for 584 years.
type Nanos = u64;

/// The deadlines of waiting callbacks, keyed by the callback's id.
#[derive(Debug)]
pub struct Deadlines {
    /// Deadlines are kept as nanoseconds after it (see `Nanos`).
    base: Instant,
    /// Non-decreasing deadlines, oldest first.
    fifo: VecDeque<(Nanos, u64)>,
    /// Deadlines that arrived out of order.
    heap: BinaryHeap<Reverse<(Nanos, u64)>>,
}

impl Deadlines {
    /// Empty; deadlines are measured from `base` (any instant not after them).
    pub fn new(base: Instant) -> Self {
        Deadlines {
            base,
            fifo: VecDeque::new(),
            heap: BinaryHeap::new(),
        }
    }

    fn nanos(&self, at: Instant) -> Nanos {
        let d = at.saturating_duration_since(self.base);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records that `id` times out at `at`. Returns true when this is now
    /// the earliest deadline, i.e. a timer armed for the old earliest must
    /// be moved earlier.
    pub fn insert(&mut self, id: u64, at: Instant) -> bool {
        let at = self.nanos(at);
        let earliest = self.earliest_nanos().is_none_or(|e| at < e);
        match self.fifo.back() {
            Some(&(last, _)) if at < last => self.heap.push(Reverse((at, id))),
            _ => self.fifo.push_back((at, id)),
        }
        earliest
    }

    fn earliest_nanos(&self) -> Option<Nanos> {
        let f = self.fifo.front().map(|&(at, _)| at);
        let h = self.heap.peek().map(|Reverse((at, _))| *at);
        match (f, h) {
            (Some(f), Some(h)) => Some(f.min(h)),
            (f, h) => f.or(h),
        }
    }

    /// The earliest recorded deadline (its id may no longer be live).
    pub fn next(&self) -> Option<Instant> {
        self.earliest_nanos()
            .map(|n| self.base + std::time::Duration::from_nanos(n))
    }

    /// Removes and returns one id whose deadline is at or before `now`;
    /// `None` when nothing is due. The caller checks whether it is live.
    pub fn pop_expired(&mut self, now: Instant) -> Option<u64> {
        let now = self.nanos(now);
        let f = self.fifo.front().copied().filter(|&(at, _)| at <= now);
        let h = self.heap.peek().map(|r| r.0).filter(|&(at, _)| at <= now);
        match (f, h) {
            (Some(f), Some(h)) if h.0 < f.0 => self.heap.pop().map(|r| r.0.1),
            (Some(_), _) => self.fifo.pop_front().map(|(_, id)| id),
            (None, Some(_)) => self.heap.pop().map(|r| r.0.1),
            (None, None) => None,
        }
    }

    /// Entries held, live or stale.
    pub fn len(&self) -> usize {
        self.fifo.len() + self.heap.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry whose id `live` rejects. O(n): run it when stale
    /// entries are at least as many as live ones, so it costs O(1) per
    /// insert amortised and memory stays within twice the live count.
    pub fn compact(&mut self, live: impl Fn(u64) -> bool) {
        self.fifo.retain(|&(_, id)| live(id));
        self.heap.retain(|Reverse((_, id))| live(*id));
        self.fifo.shrink_to(self.fifo.len() * 2);
        self.heap.shrink_to(self.heap.len() * 2);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.fifo.clear();
        self.heap.clear();
    }
}

/// `now + timeout`; a timeout too large to add is as good as none (about
/// a century), never a panic: `Duration::MAX` means "no deadline".
pub fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn drain(d: &mut Deadlines, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| d.pop_expired(now)).collect()
    }

    #[test]
    fn in_order_deadlines_expire_in_order() {
        let base = Instant::now();
        let mut d = Deadlines::new(base);
        assert!(d.insert(1, at(base, 10)));
        assert!(!d.insert(2, at(base, 20)));
        assert!(!d.insert(3, at(base, 20)));
        assert_eq!(d.next(), Some(at(base, 10)));
        assert_eq!(drain(&mut d, at(base, 9)), Vec::<u64>::new());
        assert_eq!(drain(&mut d, at(base, 10)), vec![1]);
        assert_eq!(drain(&mut d, at(base, 30)), vec![2, 3]);
        assert!(d.is_empty());
        assert_eq!(d.next(), None);
    }

    #[test]
    fn an_earlier_deadline_out_of_order_goes_first() {
        let base = Instant::now();
        let mut d = Deadlines::new(base);
        d.insert(1, at(base, 100));
        // Shorter timeout than the one before: the heap, and now the earliest.
        assert!(d.insert(2, at(base, 5)));
        assert!(!d.insert(3, at(base, 50)));
        assert_eq!(d.next(), Some(at(base, 5)));
        assert_eq!(drain(&mut d, at(base, 60)), vec![2, 3]);
        assert_eq!(drain(&mut d, at(base, 100)), vec![1]);
    }

    #[test]
    fn compact_keeps_only_live_ids_in_order() {
        let base = Instant::now();
        let mut d = Deadlines::new(base);
        for id in 0..1000u64 {
            d.insert(id, at(base, 1000 - (id % 3) * 10 + id));
        }
        let live: HashSet<u64> = (0..1000).filter(|id| id % 7 == 0).collect();
        d.compact(|id| live.contains(&id));
        assert_eq!(d.len(), live.len());
        let mut got = drain(&mut d, at(base, 10_000));
        let sorted = {
            let mut s = got.clone();
            s.sort_by_key(|id| 1000 - (id % 3) * 10 + id);
            s
        };
        assert_eq!(got, sorted, "expiry order is deadline order");
        got.sort_unstable();
        let mut want: Vec<u64> = live.into_iter().collect();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn deadlines_before_the_base_are_due_at_once() {
        let base = Instant::now() + Duration::from_secs(1);
        let mut d = Deadlines::new(base);
        d.insert(7, Instant::now());
        assert_eq!(d.pop_expired(base), Some(7));
    }

    #[test]
    fn entry_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<(Nanos, u64)>(), 16);
    }
}
