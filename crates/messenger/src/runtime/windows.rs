//! A listener's duplicate windows, kept across a peer's sessions.
//!
//! A connection of ours keeps its msg_ids and its unacknowledged messages
//! across redials: what a cut swallowed the ACKs of is resent on the next
//! session under the same ids. If the listener started that session with
//! an empty duplicate window, the server loop would get those messages a
//! second time. So each connection says, in its READY, which run of it
//! this is (`X-Incarnation`: 8 random bytes, fixed for the connection's
//! life, new for a new process or a new connection), and a listener keeps
//! the window of a peer whose session ended for a while, keyed by its
//! routing id; a new session of the same routing id and incarnation takes
//! it back. A peer that restarted (a new incarnation, ids from 0 again), or
//! one that announces none (libzmq, pyzmq), starts with an empty window,
//! as design/WIRE.md says.
//!
//! Bounded: at most `max_connections_per_listener` windows are kept (the
//! oldest go first), each for `request_timeout` at most (a sender stops
//! resending at its messages' deadlines), at most 8 KiB each.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proto::dedup::DedupWindow;

/// The READY property a connection of ours announces its incarnation in.
pub(crate) const INCARNATION: &[u8] = b"X-Incarnation";

/// The incarnation a peer announced in its READY, if it announced one of
/// the right size.
pub(crate) fn incarnation_of(properties: &[(Bytes, Bytes)]) -> Option<u64> {
    properties
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(INCARNATION))
        .and_then(|(_, value)| <[u8; 8]>::try_from(&value[..]).ok())
        .map(u64::from_be_bytes)
}

/// A window kept after its session ended.
struct Kept {
    /// The peer's connection incarnation: another incarnation starts afresh.
    incarnation: u64,
    /// Its duplicate memory when its session ended.
    window: DedupWindow,
    /// When it was kept: it is dropped after `Config::request_timeout`.
    at: Instant,
}

/// The windows kept, by routing id, and the order they were kept in (an
/// entry may be stale: its peer came back, or left again since).
#[derive(Default)]
struct Shelf {
    /// The latest window of each routing id.
    by_peer: HashMap<Bytes, Kept>,
    /// Oldest first, for dropping by age or count.
    order: VecDeque<(Bytes, Instant)>,
}

/// See the module documentation.
pub(crate) struct Windows {
    /// Behind a short lock: touched only when a session ends or begins.
    kept: Mutex<Shelf>,
    /// Most windows kept.
    max: usize,
    /// How long one is kept.
    ttl: Duration,
}

impl Windows {
    pub(crate) fn new(max: usize, ttl: Duration) -> Self {
        Windows {
            kept: Mutex::default(),
            max,
            ttl,
        }
    }

    /// The window `peer` left with `incarnation`, if it is still kept:
    /// taken out (the peer's new session owns it now).
    pub(crate) fn reclaim(
        &self,
        peer: &Bytes,
        incarnation: u64,
        now: Instant,
    ) -> Option<DedupWindow> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let k = kept.by_peer.remove(peer)?;
        (k.incarnation == incarnation && now.saturating_duration_since(k.at) < self.ttl)
            .then_some(k.window)
    }

    /// Keeps the window of `peer`'s session that is ending.
    pub(crate) fn keep(&self, peer: Bytes, incarnation: u64, window: DedupWindow, now: Instant) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Shelf {
            by_peer: map,
            order,
        } = &mut *kept;
        // The oldest go first: past their time, or past the count.
        while let Some((front, at)) = order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !expired && map.len() < self.max {
                break;
            }
            // The entry may have been taken back, or kept again since.
            if map.get(front).is_some_and(|k| k.at == *at) {
                map.remove(front);
            }
            order.pop_front();
        }
        order.push_back((peer.clone(), now));
        map.insert(
            peer,
            Kept {
                incarnation,
                window,
                at: now,
            },
        );
    }

    /// Windows kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.lock().map(|k| k.by_peer.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window_with(ids: &[u64]) -> DedupWindow {
        let mut w = DedupWindow::new(64);
        for &id in ids {
            w.record(id);
        }
        w
    }

    #[test]
    fn a_peer_back_with_the_same_incarnation_gets_its_window() {
        let t0 = Instant::now();
        let w = Windows::new(4, Duration::from_secs(30));
        let peer = Bytes::from_static(b"primary");
        w.keep(peer.clone(), 7, window_with(&[0, 1, 2]), t0);
        assert!(w.reclaim(&peer, 8, t0).is_none(), "another run of it");
        w.keep(peer.clone(), 7, window_with(&[0, 1, 2]), t0);
        let back = w
            .reclaim(&peer, 7, t0 + Duration::from_secs(1))
            .expect("kept");
        assert!(back.is_duplicate(2) && !back.is_duplicate(3));
        assert!(w.reclaim(&peer, 7, t0).is_none(), "taken once");
    }

    #[test]
    fn kept_windows_are_bounded_in_number_and_time() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let w = Windows::new(2, ttl);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            w.keep(
                Bytes::from(name),
                1,
                window_with(&[0]),
                t0 + Duration::from_secs(i as u64),
            );
        }
        assert_eq!(w.len(), 2);
        assert!(
            w.reclaim(&Bytes::from("a"), 1, t0).is_none(),
            "the oldest went"
        );
        assert!(
            w.reclaim(&Bytes::from("b"), 1, t0 + ttl + Duration::from_secs(1))
                .is_none(),
            "past its time"
        );
    }

    #[test]
    fn the_incarnation_is_read_from_ready() {
        let props = vec![(
            Bytes::from_static(b"x-incarnation"),
            Bytes::copy_from_slice(&9u64.to_be_bytes()),
        )];
        assert_eq!(incarnation_of(&props), Some(9));
        let short = vec![(Bytes::from_static(INCARNATION), Bytes::from_static(b"abc"))];
        assert_eq!(incarnation_of(&short), None);
        assert_eq!(incarnation_of(&[]), None);
    }
}
