//! Duplicate suppression per sender: NoisePage's "max seen plus complement
//! set", with a cap. Pure data structure: time is passed in.
//!
//! Senders number their messages 0, 1, 2, ... per (sender, receiver) pair.
//! The window remembers `high` (one past the largest id recorded) and the
//! complement set: the ids below `high` that have not arrived, kept as
//! ranges, so in-order traffic stores nothing and a jump of any size is one
//! range. An id is a duplicate if it is below `high` and not missing.
//!
//! Memory is bounded by the number of gaps, not by how far ids jump. A gap
//! is never forgotten while its sender may still resend into it (younger
//! than `gap_ttl`): a sender that has `max_gaps` young gaps open gets its
//! *new* ids refused ([`Verdict::Busy`]: not ACKed, so it resends them
//! later) until resends fill the gaps. Filling a gap is always allowed; only
//! past twice `max_gaps` (a peer splitting gaps on purpose) is the oldest
//! forgotten regardless, its ids then counting as delivered. A sender that
//! restarts and counts from 0 again is recognised by the transport (a new
//! connection from its routing id resets the window; see design/WIRE.md),
//! not by its ids, because under overload a resend can legitimately arrive
//! far behind.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// What the window says about an arriving id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: deliver it (then [`DedupWindow::record`] it).
    New,
    /// Seen before: ACK it again, do not deliver it.
    Duplicate,
    /// New, but the sender has too many young gaps open: refuse it unACKed.
    Busy,
}

/// The receive-side memory of one sender.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    /// One past the largest id recorded: a u128 so a peer's u64::MAX fits.
    high: u128,
    /// Missing ids: start -> (end exclusive, when the gap opened); disjoint,
    /// all below `high`, so the first is also the oldest.
    missing: BTreeMap<u64, (u64, Instant)>,
    max_gaps: usize,
    gap_ttl: Duration,
}

impl DedupWindow {
    /// A window keeping up to `max_gaps` (at least 1) runs of missing ids,
    /// each for at least `gap_ttl`.
    pub fn new(max_gaps: usize, gap_ttl: Duration) -> Self {
        DedupWindow {
            high: 0,
            missing: BTreeMap::new(),
            max_gaps: max_gaps.max(1),
            gap_ttl,
        }
    }

    /// The missing range holding `id`, if any.
    fn gap_of(&self, id: u64) -> Option<(u64, u64, Instant)> {
        self.missing
            .range(..=id)
            .next_back()
            .filter(|&(_, &(end, _))| id < end)
            .map(|(&s, &(e, t))| (s, e, t))
    }

    fn oldest_is_young(&self, now: Instant) -> bool {
        self.missing
            .first_key_value()
            .is_some_and(|(_, &(_, opened))| now.duration_since(opened) < self.gap_ttl)
    }

    /// Classifies `id` without changing the window, so a message that is
    /// then refused for another reason can be recorded later.
    pub fn check(&self, id: u64, now: Instant) -> Verdict {
        let wide = u128::from(id);
        if wide < self.high {
            return if self.gap_of(id).is_some() {
                Verdict::New
            } else {
                Verdict::Duplicate
            };
        }
        if wide > self.high && self.missing.len() >= self.max_gaps && self.oldest_is_young(now) {
            return Verdict::Busy;
        }
        Verdict::New
    }

    /// Whether `id` was recorded before.
    pub fn is_duplicate(&self, id: u64) -> bool {
        u128::from(id) < self.high && self.gap_of(id).is_none()
    }

    /// Records `id` as delivered (after [`check`](Self::check) said New).
    pub fn record(&mut self, id: u64, now: Instant) {
        let wide = u128::from(id);
        if wide >= self.high {
            if wide > self.high {
                // high <= id here, so it fits in a u64.
                self.missing.insert(self.high as u64, (id, now));
            }
            self.high = wide + 1;
        } else if let Some((start, end, opened)) = self.gap_of(id) {
            self.missing.remove(&start);
            if start < id {
                self.missing.insert(start, (id, opened));
            }
            if id + 1 < end {
                self.missing.insert(id + 1, (end, opened));
            }
        }
        // Old gaps go first; young ones only past the hard cap.
        while self.missing.len() > self.max_gaps
            && (!self.oldest_is_young(now) || self.missing.len() > 2 * self.max_gaps)
        {
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

    const TTL: Duration = Duration::from_secs(60);

    fn w(max_gaps: usize) -> DedupWindow {
        DedupWindow::new(max_gaps, TTL)
    }

    #[test]
    fn in_order_then_duplicates() {
        let now = Instant::now();
        let mut w = w(8);
        for id in 0..5 {
            assert_eq!(w.check(id, now), Verdict::New);
            w.record(id, now);
        }
        for id in 0..5 {
            assert_eq!(w.check(id, now), Verdict::Duplicate, "{id}");
        }
        assert_eq!(w.gaps(), 0, "in-order traffic stores nothing");
    }

    #[test]
    fn gaps_are_not_duplicates_until_filled() {
        let now = Instant::now();
        let mut w = w(8);
        w.record(0, now);
        w.record(4, now);
        assert!(!w.is_duplicate(1) && !w.is_duplicate(2) && !w.is_duplicate(3));
        assert!(w.is_duplicate(4));
        w.record(2, now);
        assert!(w.is_duplicate(2) && !w.is_duplicate(1) && !w.is_duplicate(3));
        assert_eq!(w.gaps(), 2, "the gap split in two");
        w.record(1, now);
        w.record(3, now);
        assert_eq!(w.gaps(), 0);
    }

    #[test]
    fn a_huge_jump_is_one_gap() {
        let now = Instant::now();
        let mut w = w(8);
        w.record(u64::MAX - 1, now);
        assert_eq!(w.gaps(), 1);
        assert_eq!(w.check(12345, now), Verdict::New);
        w.record(12345, now);
        assert!(w.is_duplicate(12345));
        assert_eq!(w.gaps(), 2);
    }

    #[test]
    fn far_behind_resends_still_arrive_once() {
        let now = Instant::now();
        let mut w = w(8);
        w.record(0, now);
        for id in 2..100_000 {
            w.record(id, now);
        }
        assert_eq!(
            w.check(1, now),
            Verdict::New,
            "missing long ago, still missing"
        );
        w.record(1, now);
        assert_eq!(w.check(1, now), Verdict::Duplicate);
    }

    #[test]
    fn too_many_young_gaps_refuse_new_ids_but_fill_freely() {
        let now = Instant::now();
        let mut w = w(4);
        for id in (0..10).step_by(2) {
            w.record(id, now); // gaps at 1, 3, 5, 7
        }
        assert_eq!(w.gaps(), 4);
        assert_eq!(w.check(9, now), Verdict::New, "no new gap needed");
        assert_eq!(
            w.check(12, now),
            Verdict::Busy,
            "would open a fifth young gap"
        );
        assert_eq!(w.check(3, now), Verdict::New, "filling is always allowed");
        w.record(3, now);
        assert_eq!(w.gaps(), 3);
        assert_eq!(w.check(12, now), Verdict::New);
        // Once the gaps are old, the oldest is forgotten to make room.
        let later = now + TTL;
        assert_eq!(w.check(20, later), Verdict::New);
        w.record(20, later);
        w.record(30, later);
        assert_eq!(w.gaps(), 4);
        assert!(w.is_duplicate(1), "the oldest gap was forgotten");
    }

    #[test]
    fn splitting_on_purpose_is_capped() {
        let now = Instant::now();
        let mut w = w(4);
        w.record(1_000_000, now);
        for id in (0..1000).step_by(2) {
            w.record(id, now);
        }
        assert!(w.gaps() <= 8, "hard cap at twice max_gaps: {}", w.gaps());
    }

    #[test]
    fn the_largest_id_does_not_overflow() {
        let now = Instant::now();
        let mut w = w(8);
        assert_eq!(w.check(u64::MAX, now), Verdict::New);
        w.record(u64::MAX, now);
        assert_eq!(w.check(u64::MAX, now), Verdict::Duplicate);
        w.record(u64::MAX, now);
        assert_eq!(w.gaps(), 1);
    }

    #[test]
    fn reset_forgets() {
        let now = Instant::now();
        let mut w = w(8);
        w.record(0, now);
        w.record(1, now);
        w.reset();
        assert_eq!(w.check(0, now), Verdict::New);
    }
}
