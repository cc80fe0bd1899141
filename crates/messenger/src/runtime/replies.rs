//! Replies a session owes its peer: nothing ACKed is lost for want of room.
//!
//! A request that asks for a reply (its `src_cb` is not NOOP) and goes to a
//! server loop is ACKed as soon as the loop's queue owns it, so the peer
//! never resends it: if the loop's reply then found the window towards the
//! peer full (a peer that ACKs slowly) and were dropped, it would be lost
//! for good. So each such request is admitted with a [`ReplyTicket`](crate::runtime::socket::ReplyTicket): a
//! place for its reply, counted against the peer's window
//! (`send_queue_capacity`) together with what is unacknowledged and what is
//! deferred (the ticket lives with the session, in `socket.rs`). At the window, new requests that want a reply are refused
//! unACKed (the peer resends them) while ACKs keep being read, and a reply
//! that finds no room now (`Responder::try_reply`) waits here, in order,
//! until ACKs open the window. The queue is bounded by the tickets: one
//! reply per admitted request.
//!
//! A deferred reply takes its msg_id when it leaves, in order with
//! everything else sent to the peer (so it never falls behind the peer's
//! duplicate window), when the session's task next finds room
//! ([`Replies::flush`]); it is dropped (counted, logged per peer at most
//! once a second) only if its deadline passes first: a peer that never
//! ACKs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use std::time::Instant;

/// One reply waiting for room.
struct Deferred {
    /// The callback it answers.
    dst_cb: u64,
    /// The answer, kept until it fits or its deadline passes.
    body: Bytes,
    /// Past it the reply is dropped: the request's sender has given up.
    deadline: Instant,
}

/// A session's owed and deferred replies.
#[derive(Default)]
pub(crate) struct Replies {
    /// Requests in (or past) the server loop whose reply has not been
    /// made: a [`ReplyTicket`](crate::runtime::socket::ReplyTicket) each.
    owed: AtomicUsize,
    /// Replies made that found no room, oldest first.
    deferred: Mutex<VecDeque<Deferred>>,
    /// `deferred.len()`, read without the lock on every turn of the
    /// session's task.
    waiting: AtomicUsize,
}

/// What [`Replies::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// Replies that left.
    pub(crate) sent: usize,
    /// Replies past their deadline, dropped.
    pub(crate) expired: usize,
}

impl Replies {
    fn deferred(&self) -> MutexGuard<'_, VecDeque<Deferred>> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Places taken in the peer's window by replies not yet sent: owed,
    /// and deferred.
    pub(crate) fn held(&self) -> usize {
        self.owed.load(Ordering::Relaxed) + self.waiting.load(Ordering::Relaxed)
    }

    /// When the oldest reply waiting for room meets its deadline (the
    /// session's timer drops it then, should no room come first).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if !self.any_waiting() {
            return None;
        }
        self.deferred().front().map(|d| d.deadline)
    }

    /// Whether replies wait for room.
    pub(crate) fn any_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// One more reply is owed (a ticket was given).
    pub(crate) fn owe(&self) {
        self.owed.fetch_add(1, Ordering::Relaxed);
    }

    /// One reply less is owed (its ticket was spent or given back).
    pub(crate) fn settle_one(&self) {
        self.owed.fetch_sub(1, Ordering::Relaxed);
    }

    /// Keeps a reply until there is room. The caller spends the ticket it
    /// was owed on: its place is now this reply's.
    pub(crate) fn defer(&self, dst_cb: u64, body: Bytes, deadline: Instant) {
        let mut q = self.deferred();
        q.push_back(Deferred {
            dst_cb,
            body,
            deadline,
        });
        self.waiting.store(q.len(), Ordering::Relaxed);
    }

    /// Sends deferred replies (callback, body, deadline), oldest first,
    /// while `send` finds room for them (it returns false when it does
    /// not); drops those past their deadline at `now`.
    pub(crate) fn flush(
        &self,
        now: Instant,
        mut send: impl FnMut(u64, &Bytes, Instant) -> bool,
    ) -> Flushed {
        let mut done = Flushed::default();
        let mut q = self.deferred();
        while let Some(front) = q.front() {
            if front.deadline <= now {
                q.pop_front();
                done.expired += 1;
                continue;
            }
            if !send(front.dst_cb, &front.body, front.deadline) {
                break;
            }
            q.pop_front();
            done.sent += 1;
        }
        self.waiting.store(q.len(), Ordering::Relaxed);
        done
    }
}
