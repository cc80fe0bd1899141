//! Duplicate suppression per sender: NoisePage's "max seen plus complement
//! set", with a cap. Pure data structure.
//!
//! Senders number their messages 0, 1, 2, ... per (sender, receiver) pair.
//! The window remembers `high` (one past the largest id recorded) and the ids
//! below `high` that have not arrived yet (`missing`). An id is a duplicate
//! if it is below `high`, within the window, and not missing. The window
//! spans `cap` ids below `high`; `missing` holds at most `cap` ids, the
//! oldest forgotten first.
//!
//! An id below the window is not a late duplicate (resends stop at the
//! message's deadline long before `cap` newer messages could pass it): it
//! means the sender restarted and counts from 0 again, so the window starts
//! over. Transport disconnect events reset the window too; see
//! design/WIRE.md.

use std::collections::BTreeSet;

/// The receive-side memory of one sender.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    high: u64,
    missing: BTreeSet<u64>,
    cap: u64,
}

impl DedupWindow {
    /// A window spanning `cap` ids (at least 1).
    pub fn new(cap: u64) -> Self {
        DedupWindow {
            high: 0,
            missing: BTreeSet::new(),
            cap: cap.max(1),
        }
    }

    fn below_window(&self, id: u64) -> bool {
        id < self.high.saturating_sub(self.cap)
    }

    /// Whether `id` was recorded before. Does not change the window, so a
    /// message that is then refused (not ACKed) can be recorded later.
    pub fn is_duplicate(&self, id: u64) -> bool {
        id < self.high && !self.below_window(id) && !self.missing.contains(&id)
    }

    /// Records `id` as delivered. Returns true if this started a new session.
    pub fn record(&mut self, id: u64) -> bool {
        let restarted = self.below_window(id);
        if restarted {
            self.reset();
        }
        if id >= self.high {
            // Ids skipped over are missing; only the newest `cap` are kept.
            let from = self.high.max(id.saturating_sub(self.cap));
            self.missing.extend(from..id);
            self.high = id + 1;
            let floor = self.high.saturating_sub(self.cap);
            while self.missing.first().is_some_and(|&m| m < floor) {
                self.missing.pop_first();
            }
        } else {
            self.missing.remove(&id);
        }
        restarted
    }

    /// Forgets everything: the sender's next id starts a new session.
    pub fn reset(&mut self) {
        self.high = 0;
        self.missing.clear();
    }

    /// Ids below the highest seen that have not arrived (bounded by the cap).
    pub fn missing(&self) -> usize {
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
        assert_eq!(w.missing(), 0);
    }

    #[test]
    fn gaps_are_not_duplicates_until_filled() {
        let mut w = DedupWindow::new(8);
        w.record(0);
        w.record(3);
        assert!(!w.is_duplicate(1) && !w.is_duplicate(2));
        assert!(w.is_duplicate(3));
        w.record(2);
        assert!(w.is_duplicate(2) && !w.is_duplicate(1));
        assert_eq!(w.missing(), 1);
    }

    #[test]
    fn memory_is_capped() {
        let mut w = DedupWindow::new(4);
        w.record(1_000_000);
        assert!(w.missing() <= 4);
        w.record(0);
        assert!(w.missing() <= 4);
    }

    #[test]
    fn restart_from_zero_is_a_new_session() {
        let mut w = DedupWindow::new(4);
        for id in 0..100 {
            w.record(id);
        }
        assert!(!w.is_duplicate(0), "far below the window: a new session");
        assert!(w.record(0));
        assert!(w.is_duplicate(0));
        assert!(!w.is_duplicate(1));
    }

    #[test]
    fn reset_forgets() {
        let mut w = DedupWindow::new(64);
        w.record(0);
        w.record(1);
        w.reset();
        assert!(!w.is_duplicate(0));
    }
}
