//! One peer's unacknowledged messages and the window over them: a
//! listener's session has its own, a connection keeps one across its
//! sessions (what was unacknowledged is resent after a redial). Per peer, so
//! a peer that never ACKs fills only its own window and no other peer's
//! sends wait for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use std::time::Instant;

use super::room::Room;
use crate::error::Error;
use crate::proto::pending::{Entry, PendingSet, SetFull, Tick};

/// Told when a message is acknowledged (or given up on): what
/// `send_confirmed` waits for.
pub(crate) type AckWaiter = tokio::sync::oneshot::Sender<Result<(), crate::error::Error>>;

/// The set, and the places in the window taken by senders that have not
/// inserted their message yet.
struct Inner {
    /// The messages held, their resend times and deadlines.
    set: PendingSet<AckWaiter>,
    /// Places taken but not yet filled: counted against the window.
    reserved: usize,
    /// Bytes promised to the reserved places (upper bounds of their
    /// encodings).
    reserved_bytes: usize,
}

impl Inner {
    /// Whether one more message of `len` bytes, to be numbered `next_id`,
    /// fits the window: a place in the count, ids spanning less than the
    /// window from the oldest unacknowledged one (as TCP's window spans
    /// sequence numbers, so one message whose ACKs keep getting lost holds
    /// the window back instead of falling behind the receiver's duplicate
    /// window), and room in the bytes unless nothing else is held (a
    /// message larger than the byte window still goes, alone).
    fn fits(&mut self, window: usize, window_bytes: usize, len: usize, next_id: u64) -> bool {
        let n = self.set.len() + self.reserved;
        let bytes = self.set.bytes() + self.reserved_bytes;
        let span = self.set.oldest().map_or(0, |o| next_id.saturating_sub(o));
        n < window && span < window as u64 && (n == 0 || bytes.saturating_add(len) <= window_bytes)
    }
}

/// See the module documentation.
pub(crate) struct Unacked {
    /// Behind a short lock: senders, the ACK path and the timer all touch it.
    inner: Mutex<Inner>,
    /// Most messages in flight without an ACK before senders wait (the
    /// high-water mark applied to what is in flight); `usize::MAX` without
    /// resending, when nothing is tracked.
    window: usize,
    /// Most payload bytes in flight without an ACK before senders wait, so
    /// a peer that never ACKs large replies holds a bounded amount of
    /// memory, not `window` times the largest message.
    window_bytes: usize,
    /// Senders waiting for the window to open.
    room: Room,
    /// The peer's session ended: waiting senders give up.
    closed: AtomicBool,
}

impl Unacked {
    pub(crate) fn new(config: &crate::Config) -> Self {
        let interval = config.resend_interval.unwrap_or(std::time::Duration::MAX);
        Unacked {
            inner: Mutex::new(Inner {
                set: PendingSet::new(config.max_pending_messages, interval)
                    .with_transfer_rate(config.min_receive_rate),
                reserved: 0,
                reserved_bytes: 0,
            }),
            window: if config.resend_interval.is_some() {
                config.send_queue_capacity
            } else {
                usize::MAX
            },
            window_bytes: config.send_window_bytes,
            room: Room::default(),
            closed: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages waiting for their ACK.
    pub(crate) fn len(&self) -> usize {
        self.inner().set.len()
    }

    /// Takes a place in the window for one message of at most `len`
    /// bytes, to be numbered `next_id` (at the least), atomically: `Full` at the window, in messages or in bytes
    /// (senders may wait for it to open), `TooManyUnacked` at `limit`. The
    /// place is the message's once [`Reserved::insert`] records it, and is
    /// given back if the reservation is dropped. (A check followed by an
    /// insert let every sender woken together pass the check: the window
    /// overshot twentyfold under a burst.)
    pub(crate) fn reserve(
        &self,
        limit: usize,
        len: usize,
        next_id: u64,
    ) -> Result<Reserved<'_>, Error> {
        let counted = self.window != usize::MAX;
        if counted {
            let mut inner = self.inner();
            if !inner.fits(self.window, self.window_bytes, len, next_id) {
                return Err(Error::Full);
            }
            if inner.set.len() + inner.reserved >= limit {
                return Err(Error::TooManyUnacked(limit));
            }
            inner.reserved += 1;
            inner.reserved_bytes += len;
        }
        Ok(Reserved {
            unacked: self,
            len: if counted { len } else { 0 },
            counted,
        })
    }

    /// Waits until the window has room for `len` bytes and the id
    /// `next_id()` gives then (or the peer's session ended).
    pub(crate) async fn wait(&self, len: usize, next_id: impl Fn() -> u64) {
        self.room
            .wait(|| {
                self.closed.load(Ordering::Acquire)
                    || self
                        .inner()
                        .fits(self.window, self.window_bytes, len, next_id())
            })
            .await
    }

    /// The message is acknowledged (or answered, or abandoned): forget it.
    pub(crate) fn ack(&self, msg_id: u64) -> Option<Entry<AckWaiter>> {
        let entry = self.inner().set.ack(&msg_id);
        if entry.is_some() {
            self.room.wake();
        }
        entry
    }

    /// ACKs that arrived at `now` (`acked`: each message is forgotten, its
    /// round trip sampled, its waiter told) and requests a reply answered
    /// (`answered`: forgotten, as [`ack`](Self::ack) does), under one
    /// lock; both are emptied. Returns how many ACKs were for messages
    /// held.
    pub(crate) fn settle_all(
        &self,
        acked: &mut Vec<u64>,
        answered: &mut Vec<u64>,
        now: Instant,
    ) -> u64 {
        let mut known = 0;
        let mut waiters = Vec::new();
        let mut freed = false;
        {
            let mut inner = self.inner();
            for id in acked.drain(..) {
                if let Some(entry) = inner.set.ack_at(&id, now) {
                    known += 1;
                    freed = true;
                    waiters.extend(entry.waiter);
                }
            }
            for id in answered.drain(..) {
                freed |= inner.set.ack(&id).is_some();
            }
        }
        if freed {
            self.room.wake();
        }
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        known
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run; `None`
    /// while nothing is held.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.inner().set.poll_timeout()
    }

    /// The timer fired: what is past its deadline is removed (and its
    /// waiters returned), and with `resending` (the link is up) what is due
    /// for a resend is marked and returned.
    pub(crate) fn handle_timeout(&self, now: Instant, resending: bool) -> Tick<AckWaiter> {
        let tick = self.inner().set.handle_timeout(now, resending);
        if !tick.expired.is_empty() {
            self.room.wake();
        }
        tick
    }

    /// Every message held, in the order first sent, marked resent now (see
    /// [`PendingSet::resend_all`]).
    pub(crate) fn resend_all(&self, now: Instant) -> Vec<Bytes> {
        self.inner().set.resend_all(now)
    }

    /// Messages someone waits on are failed with `err`; the others stay to
    /// be resent (a connection redials).
    pub(crate) fn fail_waiters(&self, err: &Error) {
        let waiters = self.inner().set.drain_waiters();
        self.room.wake();
        for w in waiters {
            let _ = w.send(Err(err.clone()));
        }
    }

    /// The peer is gone for good (a listener's session ended, or shutdown):
    /// everything is forgotten, its waiters are told, waiting senders stop.
    pub(crate) fn close(&self, err: &Error) {
        self.closed.store(true, Ordering::Release);
        let waiters = self.inner().set.drain();
        self.room.wake();
        for w in waiters {
            let _ = w.send(Err(err.clone()));
        }
    }
}

/// A place in an [`Unacked`] window (see [`Unacked::reserve`]).
pub(crate) struct Reserved<'a> {
    /// The window the place is in; given back on drop unless filled.
    /// Borrowed: a send moves no reference count of it.
    unacked: &'a Unacked,
    /// The bytes promised to it.
    len: usize,
    /// Whether the window counts it (resending on).
    counted: bool,
}

impl Inner {
    /// Gives a reserved place's promise back (once: `counted` turns false).
    fn release(&mut self, counted: &mut bool, len: usize) {
        if *counted {
            self.reserved -= 1;
            self.reserved_bytes -= len;
            *counted = false;
        }
    }
}

impl Reserved<'_> {
    /// Records the message in its place. `Ok(true)`: the set's timer is
    /// due earlier than before (or was not running): whoever drives it must
    /// re-arm.
    pub(crate) fn insert(
        mut self,
        msg_id: u64,
        payload: Bytes,
        now: Instant,
        deadline: Instant,
        waiter: Option<AckWaiter>,
    ) -> Result<bool, SetFull> {
        let mut inner = self.unacked.inner();
        inner.release(&mut self.counted, self.len);
        let before = inner.set.poll_timeout();
        inner.set.insert(msg_id, payload, now, deadline, waiter)?;
        Ok(before.is_none_or(|b| inner.set.poll_timeout().is_some_and(|a| a < b)))
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.unacked.inner().release(&mut self.counted, self.len);
            self.unacked.room.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn window_of(n: usize) -> Arc<Unacked> {
        Arc::new(Unacked::new(&crate::Config {
            send_queue_capacity: n,
            ..crate::Config::default()
        }))
    }

    /// One message whose ACK never comes holds the window back once the
    /// ids sent after it span the window, however many of them were
    /// ACKed: otherwise it could fall behind the receiver's duplicate
    /// window (and be refused there as stale for good).
    #[test]
    fn the_window_spans_ids_from_the_oldest_unacknowledged() {
        let now = crate::clock::now();
        let later = now + Duration::from_secs(30);
        let u = window_of(4);
        for id in 0..4 {
            let place = u.reserve(usize::MAX, 10, id).expect("room");
            place
                .insert(id, Bytes::from_static(b"x"), now, later, None)
                .expect("inserted");
        }
        assert!(matches!(u.reserve(usize::MAX, 10, 4), Err(Error::Full)));
        // 1, 2 and 3 are ACKed: three places free, but 0 is still out.
        assert_eq!(u.settle_all(&mut vec![1, 2, 3], &mut Vec::new(), now), 3);
        assert_eq!(u.len(), 1);
        assert!(
            matches!(u.reserve(usize::MAX, 10, 4), Err(Error::Full)),
            "ids 0..=4 span more than the window"
        );
        assert_eq!(u.settle_all(&mut vec![0], &mut Vec::new(), now), 1);
        assert!(u.reserve(usize::MAX, 10, 4).is_ok());
    }

    /// One read's ACKs and answered requests settle under one lock: known
    /// ACKs are counted, unknown ones are not, an answered request is
    /// forgotten, and both lists are left empty for the next read.
    #[test]
    fn a_read_settles_at_once() {
        let now = crate::clock::now();
        let later = now + Duration::from_secs(30);
        let u = window_of(8);
        for id in 0..4 {
            let place = u.reserve(usize::MAX, 10, id).expect("room");
            place
                .insert(id, Bytes::from_static(b"x"), now, later, None)
                .expect("inserted");
        }
        let (mut acked, mut answered) = (vec![0, 1, 9], vec![2, 1]);
        assert_eq!(u.settle_all(&mut acked, &mut answered, now), 2);
        assert!(acked.is_empty() && answered.is_empty());
        assert_eq!(u.len(), 1, "only 3 is still unacknowledged");
    }
}
