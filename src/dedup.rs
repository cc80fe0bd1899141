//! Duplicate suppression per sender: NoisePage's "max seen plus complement
//! set", with a cap. Pure data structure.
//!
//! Senders number their messages 0, 1, 2, ... per (sender, receiver) pair.
//! The window remembers `high` (one past the largest id recorded) and the
//! complement set: the ids below `high` that have not arrived, kept as
//! ranges, so in-order traffic stores nothing and a jump of any size is one
//! range. An id is a duplicate if it is below `high` and not missing.
//!
//! Memory is bounded by the number of gaps, not by how far ids jump: past
//! `max_gaps` ranges the oldest gap is forgotten (its ids then count as
//! delivered, so at-most-once delivery holds and only a message lost long
//! ago and still unresent could be refused). A sender that restarts and
//! counts from 0 again is recognised by the transport (a new connection from
//! its routing id resets the window; see design/WIRE.md), not by its ids,
//! because under overload a resend can legitimately arrive far behind.

use std::collections::BTreeMap;

/// The receive-side memory of one sender.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    /// One past the largest id recorded: a u128 so a peer's u64::MAX fits.
    high: u128,
    /// Missing ids: start -> end (exclusive), disjoint, all below `high`.
    missing: BTreeMap<u64, u64>,
    max_gaps: usize,
}

impl DedupWindow {
    /// A window remembering at most `max_gaps` (at least 1) runs of missing ids.
    pub fn new(max_gaps: usize) -> Self {
        DedupWindow {
            high: 0,
            missing: BTreeMap::new(),
            max_gaps: max_gaps.max(1),
        }
    }

    /// The missing range holding `id`, if any.
    fn gap_of(&self, id: u64) -> Option<(u64, u64)> {
        self.missing
            .range(..=id)
            .next_back()
            .filter(|&(_, &end)| id < end)
            .map(|(&s, &e)| (s, e))
    }

    /// Whether `id` was recorded before. Does not change the window, so a
    /// message that is then refused (not ACKed) can be recorded later.
    pub fn is_duplicate(&self, id: u64) -> bool {
        u128::from(id) < self.high && self.gap_of(id).is_none()
    }

    /// Records `id` as delivered.
    pub fn record(&mut self, id: u64) {
        let wide = u128::from(id);
        if wide >= self.high {
            if wide > self.high {
                // high <= id here, so it fits in a u64.
                self.missing.insert(self.high as u64, id);
            }
            self.high = wide + 1;
        } else if let Some((start, end)) = self.gap_of(id) {
            self.missing.remove(&start);
            if start < id {
                self.missing.insert(start, id);
            }
            if id + 1 < end {
                self.missing.insert(id + 1, end);
            }
        }
        while self.missing.len() > self.max_gaps {
            self.missing.pop_first();
        }
    }

    /// Forgets everything: the sender's next id starts a new session.
    pub fn reset(&mut self) {
        self.high = 0;
        self.missing.clear();
    }

    /// Runs of missing ids remembered now.
    pub fn gaps(&self) -> usize {
        self.missing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_then_duplicates() {
        let mut w = DedupWindow::new(8);
        for id in 0..5 {
            assert!(!w.is_duplicate(id));
            w.record(id);
        }
        for id in 0..5 {
            assert!(w.is_duplicate(id), "{id}");
        }
        assert_eq!(w.gaps(), 0, "in-order traffic stores nothing");
    }

    #[test]
    fn gaps_are_not_duplicates_until_filled() {
        let mut w = DedupWindow::new(8);
        w.record(0);
        w.record(4);
        assert!(!w.is_duplicate(1) && !w.is_duplicate(2) && !w.is_duplicate(3));
        assert!(w.is_duplicate(4));
        w.record(2);
        assert!(w.is_duplicate(2) && !w.is_duplicate(1) && !w.is_duplicate(3));
        assert_eq!(w.gaps(), 2, "the gap split in two");
        w.record(1);
        w.record(3);
        assert_eq!(w.gaps(), 0);
    }

    #[test]
    fn a_huge_jump_is_one_gap() {
        let mut w = DedupWindow::new(8);
        w.record(u64::MAX - 1);
        assert_eq!(w.gaps(), 1);
        assert!(!w.is_duplicate(12345));
        w.record(12345);
        assert!(w.is_duplicate(12345));
        assert_eq!(w.gaps(), 2);
    }

    #[test]
    fn far_behind_resends_still_arrive_once() {
        let mut w = DedupWindow::new(8);
        w.record(0);
        for id in 2..100_000 {
            w.record(id);
        }
        assert!(!w.is_duplicate(1), "missing long ago, still missing");
        w.record(1);
        assert!(w.is_duplicate(1));
    }

    #[test]
    fn memory_is_capped_by_gaps() {
        let mut w = DedupWindow::new(4);
        for id in (0..100).step_by(2) {
            w.record(id);
        }
        assert_eq!(w.gaps(), 4);
        assert!(w.is_duplicate(1), "the oldest gaps were forgotten");
        assert!(!w.is_duplicate(97), "the newest are kept");
    }

    #[test]
    fn the_largest_id_does_not_overflow() {
        let mut w = DedupWindow::new(8);
        assert!(!w.is_duplicate(u64::MAX));
        w.record(u64::MAX);
        assert!(w.is_duplicate(u64::MAX));
        w.record(u64::MAX);
        assert_eq!(w.gaps(), 1);
    }

    #[test]
    fn reset_forgets() {
        let mut w = DedupWindow::new(8);
        w.record(0);
        w.record(1);
        w.reset();
        assert!(!w.is_duplicate(0));
    }
}
