//! Replies a session owes its peer: nothing ACKed is lost for want of room.
//!
//! A request that asks for a reply (its `src_cb` is not NOOP) and goes to a
//! server loop is ACKed as soon as the loop's queue owns it, so the peer
//! never resends it: if the loop's reply then found the window towards the
//! peer full (a peer that ACKs slowly) and were dropped, it would be lost
//! for good. So each such request is admitted with a [`ReplyTicket`]: a
//! place for its reply, counted against the peer's window
//! (`send_queue_capacity`) together with what is unacknowledged and what is
//! deferred. At the window, new requests that want a reply are refused
//! unACKed (the peer resends them) while ACKs keep being read, and a reply
//! that finds no room now (`Responder::try_reply`) waits here, in order,
//! until ACKs open the window. The queue is bounded by the tickets: one
//! reply per admitted request.
//!
//! A deferred reply has its msg_id and is formatted when deferred; it
//! leaves when the session's task next finds room ([`Replies::flush`]),
//! and is dropped (counted, logged per peer at most once a second) only if
//! its deadline passes first: a peer that never ACKs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::time::Instant;

use crate::runtime::socket::Session;

/// One formatted reply waiting for room.
struct Deferred {
    msg_id: u64,
    payload: Bytes,
    /// Past it the reply is dropped: the request's sender has given up.
    deadline: Instant,
}

/// A session's owed and deferred replies.
#[derive(Default)]
pub(crate) struct Replies {
    /// Requests in (or past) the server loop whose reply has not been
    /// made: a [`ReplyTicket`] each.
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

    /// Whether replies wait for room.
    pub(crate) fn any_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Keeps a formatted reply until there is room, spending `ticket`.
    pub(crate) fn defer(
        &self,
        ticket: &ReplyTicket,
        msg_id: u64,
        payload: Bytes,
        deadline: Instant,
    ) {
        let mut q = self.deferred();
        q.push_back(Deferred {
            msg_id,
            payload,
            deadline,
        });
        self.waiting.store(q.len(), Ordering::Relaxed);
        drop(q);
        ticket.spend();
    }

    /// Sends deferred replies, oldest first, while `send` finds room for
    /// them (it returns false when it does not); drops those past their
    /// deadline at `now`.
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
            if !send(front.msg_id, &front.payload, front.deadline) {
                break;
            }
            q.pop_front();
            done.sent += 1;
        }
        self.waiting.store(q.len(), Ordering::Relaxed);
        done
    }
}

/// A place for one reply in a session's window, given with a request that
/// asks for one: spent when the reply is made (sent or deferred), or given
/// back when every handle to the request's responder is dropped unused.
pub(crate) struct ReplyTicket {
    session: Arc<Session>,
    spent: AtomicBool,
}

impl ReplyTicket {
    /// Takes a place in `session`'s window for a reply.
    pub(crate) fn new(session: &Arc<Session>) -> Self {
        session.replies.owed.fetch_add(1, Ordering::Relaxed);
        ReplyTicket {
            session: Arc::clone(session),
            spent: AtomicBool::new(false),
        }
    }

    /// The session it was given by: where a deferred reply waits.
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Whether it can still be spent.
    pub(crate) fn unspent(&self) -> bool {
        !self.spent.load(Ordering::Acquire)
    }

    /// The reply was made: its place is now the reply's own (in the window,
    /// or deferred). Once only.
    pub(crate) fn spend(&self) {
        if !self.spent.swap(true, Ordering::AcqRel) {
            self.session.replies.owed.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ReplyTicket {
    fn drop(&mut self) {
        self.spend();
    }
}
