//! Duplicate suppression per sender: a sliding window of the ids recorded
//! below the highest one, as IPsec's and DTLS's anti-replay windows keep,
//! plus the run of ids that arrived without a gap. Pure data structure.
//!
//! Our senders number their messages 0, 1, 2, ... per (sender, receiver)
//! pair; NoisePage's C++ Messenger numbers them with one counter across all
//! its connections, so each of its receivers sees ids with gaps that never
//! fill (0, 3, 6, ...). The window takes both without waiting for holes:
//!
//! - `dense`: every id below it was recorded (in-order traffic moves only
//!   this, and stores nothing else);
//! - a bitmap of the `width` ids below `high` (one past the largest id
//!   recorded), allocated the first time an id arrives out of order.
//!
//! An id below `dense`, or inside the window with its bit set, is a
//! duplicate. An id at or above `high` is new. An id in the window without
//! its bit is new (a gap being filled). What is left is an id below the
//! window that is not below `dense`: a gap so old that `width` later ids
//! have arrived since. Whether it arrived is forgotten, so it is
//! [`Verdict::Stale`]: neither delivered (it may have been) nor ACKed (it
//! may not have been), so its sender keeps it and learns at its deadline.
//! Our own senders never produce one: a sender's window spans at most
//! `send_queue_capacity` (4,096) ids from its oldest unacknowledged message
//! (`transport::unacked`), far inside the default width of 65,536 ids.
//! design/WIRE.md, "Duplicates".
//!
//! Memory is fixed per session: `width / 8` bytes (8 KiB by default), and
//! none for a sender whose ids arrive in order.

/// What the window says about an arriving id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: deliver it (then [`DedupWindow::record`] it).
    New,
    /// Seen before: ACK it again, do not deliver it.
    Duplicate,
    /// Older than the window and not known to have arrived: refuse it
    /// unACKed (see the module documentation).
    Stale,
}

/// What ProcessMessage asks of a sender's duplicate memory: whether an id
/// is new, and to remember one it delivered.
pub trait Window {
    /// Classifies `id` without changing anything.
    fn check(&self, id: u64) -> Verdict;
    /// Records `id` as delivered.
    fn record(&mut self, id: u64);
}

/// The window of a sender that cannot repeat itself: messages between two
/// messengers of one process are handed over once and never lost, so every
/// id is new and nothing needs remembering.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDuplicates;

impl Window for NoDuplicates {
    fn check(&self, _: u64) -> Verdict {
        Verdict::New
    }

    fn record(&mut self, _: u64) {}
}

impl Window for DedupWindow {
    fn check(&self, id: u64) -> Verdict {
        DedupWindow::check(self, id)
    }

    fn record(&mut self, id: u64) {
        DedupWindow::record(self, id)
    }
}

/// The receive-side memory of one sender.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    /// Every id below this was recorded. A u128 so a peer's u64::MAX fits.
    dense: u128,
    /// One past the largest id recorded.
    high: u128,
    /// Bit `id % width` tells whether `id` was recorded, for the ids in
    /// `[high - width, high)` at or above `dense`; empty until an id
    /// arrives out of order.
    bits: Vec<u64>,
    /// Ids the bitmap covers below `high`: a multiple of 64.
    width: u128,
}

impl DedupWindow {
    /// A window remembering the `width` ids below the highest recorded
    /// (rounded up to a multiple of 64, at least 64).
    pub fn new(width: u64) -> Self {
        DedupWindow {
            dense: 0,
            high: 0,
            bits: Vec::new(),
            width: u128::from(width.max(1).div_ceil(64) * 64),
        }
    }

    /// The bitmap's word and mask for `id`.
    fn slot(&self, id: u128) -> (usize, u64) {
        let bit = (id % self.width) as usize;
        (bit / 64, 1u64 << (bit % 64))
    }

    fn bit(&self, id: u128) -> bool {
        let (word, mask) = self.slot(id);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    /// Classifies `id` without changing the window, so a message that is
    /// then refused for another reason can be recorded later.
    pub fn check(&self, id: u64) -> Verdict {
        let id = u128::from(id);
        if id < self.dense {
            Verdict::Duplicate
        } else if id >= self.high {
            Verdict::New
        } else if id + self.width < self.high {
            Verdict::Stale
        } else if self.bit(id) {
            Verdict::Duplicate
        } else {
            Verdict::New
        }
    }

    /// Whether `id` is known to have been recorded.
    pub fn is_duplicate(&self, id: u64) -> bool {
        self.check(id) == Verdict::Duplicate
    }

    /// Records `id` as delivered (after [`check`](Self::check) said New).
    pub fn record(&mut self, id: u64) {
        let id = u128::from(id);
        if id == self.dense && id == self.high {
            // In order: nothing to remember but the two edges.
            self.dense += 1;
            self.high += 1;
            return;
        }
        if id < self.dense || (id < self.high && id + self.width < self.high) {
            return;
        }
        if self.bits.is_empty() {
            self.bits = vec![0; (self.width / 64) as usize];
        }
        if id >= self.high {
            // The slots of the ids now entering the window held ids that
            // are leaving it.
            self.clear(self.high, id + 1);
            self.high = id + 1;
        }
        let (word, mask) = self.slot(id);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= mask;
        }
        // A filled gap may join the dense run (only inside the window:
        // below it the bits belong to later ids).
        while self.dense < self.high && self.dense + self.width >= self.high && self.bit(self.dense)
        {
            self.dense += 1;
        }
    }

    /// Clears the bits of the ids in `[from, to)`.
    fn clear(&mut self, from: u128, to: u128) {
        if to - from >= self.width {
            self.bits.fill(0);
            return;
        }
        let mut id = from;
        while id < to {
            let (word, _) = self.slot(id);
            let offset = id % 64;
            let n = (64 - offset).min(to - id);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << offset
            };
            if let Some(w) = self.bits.get_mut(word) {
                *w &= !mask;
            }
            id += n;
        }
    }

    /// Forgets everything: the sender's next id starts a new session.
    pub fn reset(&mut self) {
        self.dense = 0;
        self.high = 0;
        self.bits.clear();
    }

    /// Bytes of bitmap held (0 while ids arrive in order).
    pub fn memory(&self) -> usize {
        self.bits.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_then_duplicates() {
        let mut w = DedupWindow::new(64);
        for id in 0..500 {
            assert_eq!(w.check(id), Verdict::New);
            w.record(id);
        }
        for id in 0..500 {
            assert_eq!(w.check(id), Verdict::Duplicate, "{id}");
        }
        assert_eq!(w.memory(), 0, "in-order traffic stores nothing");
    }

    #[test]
    fn gaps_are_not_duplicates_until_filled() {
        let mut w = DedupWindow::new(64);
        w.record(0);
        w.record(4);
        assert!(!w.is_duplicate(1) && !w.is_duplicate(2) && !w.is_duplicate(3));
        assert!(w.is_duplicate(4) && w.is_duplicate(0));
        w.record(2);
        assert!(w.is_duplicate(2) && !w.is_duplicate(1) && !w.is_duplicate(3));
        w.record(1);
        w.record(3);
        assert_eq!(w.dense, 5, "the filled gaps joined the dense run");
    }

    #[test]
    fn sparse_ids_never_wait_for_their_holes() {
        // NoisePage's one counter over three connections: every third id.
        let mut w = DedupWindow::new(1024);
        for id in (0..300_000).step_by(3) {
            assert_eq!(w.check(id), Verdict::New, "{id}");
            w.record(id);
            assert_eq!(w.check(id), Verdict::Duplicate, "{id} again");
        }
        // Inside the window the holes are still holes.
        let last = 299_997;
        assert_eq!(w.check(last), Verdict::Duplicate);
        assert_eq!(w.check(last - 1), Verdict::New);
        assert_eq!(w.check(last - 3), Verdict::Duplicate);
        assert_eq!(w.memory(), 1024 / 8);
    }

    #[test]
    fn below_the_window_is_stale_unless_known() {
        let mut w = DedupWindow::new(64);
        w.record(0);
        w.record(2);
        w.record(1000);
        assert_eq!(w.check(0), Verdict::Duplicate, "below the dense run");
        assert_eq!(w.check(1), Verdict::Stale, "a forgotten hole");
        assert_eq!(w.check(2), Verdict::Stale, "recorded, but forgotten");
        assert_eq!(w.check(999), Verdict::New, "a hole inside the window");
        // The window is the 64 ids below 1001.
        assert_eq!(w.check(1001 - 64), Verdict::New, "the window's oldest id");
        assert_eq!(w.check(1000 - 64), Verdict::Stale);
        // A stale id is never recorded (nor does it change anything).
        w.record(1);
        assert_eq!(w.check(1), Verdict::Stale);
    }

    #[test]
    fn a_huge_jump_clears_the_window() {
        let mut w = DedupWindow::new(128);
        for id in [0, 5, 7, 9] {
            w.record(id);
        }
        w.record(u64::MAX - 1);
        assert_eq!(w.check(u64::MAX - 1), Verdict::Duplicate);
        assert_eq!(w.check(u64::MAX - 2), Verdict::New);
        assert_eq!(w.check(u64::MAX - 128), Verdict::New);
        assert_eq!(w.check(9), Verdict::Stale);
        assert_eq!(w.check(0), Verdict::Duplicate);
    }

    #[test]
    fn the_largest_id_does_not_overflow() {
        let mut w = DedupWindow::new(64);
        assert_eq!(w.check(u64::MAX), Verdict::New);
        w.record(u64::MAX);
        assert_eq!(w.check(u64::MAX), Verdict::Duplicate);
        w.record(u64::MAX);
        assert_eq!(w.check(u64::MAX - 1), Verdict::New);
    }

    #[test]
    fn slots_reused_by_later_ids_start_clear() {
        let mut w = DedupWindow::new(64);
        w.record(1);
        for id in (3..200).step_by(2) {
            w.record(id);
        }
        // Every even id in the window is a hole, every odd one recorded.
        for id in 200 - 64..200 {
            let want = if id % 2 == 1 {
                Verdict::Duplicate
            } else {
                Verdict::New
            };
            assert_eq!(w.check(id), want, "{id}");
        }
    }

    #[test]
    fn reset_forgets() {
        let mut w = DedupWindow::new(64);
        w.record(0);
        w.record(7);
        w.reset();
        assert_eq!(w.check(0), Verdict::New);
        assert_eq!(w.check(7), Verdict::New);
        assert_eq!(w.memory(), 0);
    }
}
