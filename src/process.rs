//! ProcessMessage: what one arriving message means, decided by a pure
//! function over the receiving session's duplicate window. The session's
//! task carries the decision out where the message landed
//! ([`Shared::process`](crate::dispatch::Shared::process)).
//!
//! The order is NoisePage's: an ACK settles what it acknowledges; a
//! duplicate is ACKed again and dropped; then the builtins (ECHO), then the
//! message-specific callback named by `dst_cb`, then the socket's
//! server-loop callback. Everything but a server-loop message is recorded
//! as delivered at once; a server-loop message only once its queue has
//! room ([`accepted`]), so a full queue refuses it unACKed and the peer
//! resends it later.

use tokio::time::Instant;

use crate::dedup::{DedupWindow, Verdict};
use crate::wire::{self, ACK, ECHO, NOOP, RESERVED};

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// An ACK: settle the message it acknowledges.
    SettleAck,
    /// Seen before: ACK it again (our ACK was lost), deliver nothing.
    Duplicate,
    /// Too many of the sender's earlier messages are missing: refuse it
    /// unACKed; the sender resends it once the gaps have filled.
    Busy,
    /// ECHO: ACK, and answer the sender's callback with the body.
    Echo,
    /// A reply to the callback `dst_cb`: ACK, and complete the callback if
    /// it still waits (else it is a late reply).
    Callback,
    /// An authentication proof that got this far (the listener checked
    /// it, or needs none): ACK, deliver nothing.
    Proof,
    /// Callback 0: the server loop. Hand it over if its queue has room,
    /// then call [`accepted`]; otherwise refuse it unACKed.
    ServerLoop,
}

/// Decides what the message `(msg_id, dst_cb)` means, recording it in the
/// sender's duplicate window unless it goes to the server loop.
pub(crate) fn decide(dedup: &mut DedupWindow, msg_id: u64, dst_cb: u64, now: Instant) -> Decision {
    if dst_cb == ACK {
        return Decision::SettleAck;
    }
    match dedup.check(msg_id, now) {
        Verdict::Duplicate => return Decision::Duplicate,
        Verdict::Busy => return Decision::Busy,
        Verdict::New => {}
    }
    if dst_cb == NOOP {
        return Decision::ServerLoop;
    }
    dedup.record(msg_id, now);
    match dst_cb {
        ECHO => Decision::Echo,
        RESERVED => Decision::Proof,
        _ => {
            debug_assert!(dst_cb >= wire::FIRST_USER);
            Decision::Callback
        }
    }
}

/// A server-loop message was handed over: record it, so a resend of it is
/// a duplicate (the caller ACKs it).
pub(crate) fn accepted(dedup: &mut DedupWindow, msg_id: u64, now: Instant) {
    dedup.record(msg_id, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn window() -> DedupWindow {
        DedupWindow::new(4, Duration::from_secs(60))
    }

    #[test]
    fn builtins_first_then_callbacks_then_the_server_loop() {
        let now = Instant::now();
        let mut w = window();
        assert_eq!(decide(&mut w, 7, ACK, now), Decision::SettleAck);
        assert_eq!(decide(&mut w, 0, ECHO, now), Decision::Echo);
        assert_eq!(decide(&mut w, 1, RESERVED, now), Decision::Proof);
        assert_eq!(decide(&mut w, 2, wire::FIRST_USER, now), Decision::Callback);
        assert_eq!(decide(&mut w, 3, u64::MAX, now), Decision::Callback);
        assert_eq!(decide(&mut w, 4, NOOP, now), Decision::ServerLoop);
    }

    #[test]
    fn acks_are_never_recorded_and_duplicates_are_caught() {
        let now = Instant::now();
        let mut w = window();
        assert_eq!(decide(&mut w, 0, ACK, now), Decision::SettleAck);
        assert_eq!(
            decide(&mut w, 0, ECHO, now),
            Decision::Echo,
            "an ACK's id is not the sender's"
        );
        assert_eq!(decide(&mut w, 0, ECHO, now), Decision::Duplicate);
        assert_eq!(
            decide(&mut w, 0, wire::FIRST_USER, now),
            Decision::Duplicate
        );
    }

    #[test]
    fn a_server_loop_message_counts_only_once_accepted() {
        let now = Instant::now();
        let mut w = window();
        assert_eq!(decide(&mut w, 0, NOOP, now), Decision::ServerLoop);
        // Its queue was full: not accepted, so the resend is new again.
        assert_eq!(decide(&mut w, 0, NOOP, now), Decision::ServerLoop);
        accepted(&mut w, 0, now);
        assert_eq!(decide(&mut w, 0, NOOP, now), Decision::Duplicate);
    }

    #[test]
    fn too_many_gaps_refuse_new_ids_unacked() {
        let now = Instant::now();
        let mut w = window();
        for id in [1, 3, 5, 7] {
            assert_eq!(decide(&mut w, id, ECHO, now), Decision::Echo);
        }
        assert_eq!(decide(&mut w, 10, ECHO, now), Decision::Busy);
        assert_eq!(
            decide(&mut w, 0, ECHO, now),
            Decision::Echo,
            "filling a gap is fine"
        );
    }
}
