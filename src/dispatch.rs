//! The ProcessMessage loop and the state it shares with senders.
//!
//! One task per messenger runs [`run`]. For each parsed message it decides,
//! in this order: ACK bookkeeping, the builtins (ECHO), the message-specific
//! callback named by `dst_cb`, then the listener's server-loop callback. It
//! never awaits a peer or user code: replies go out with `try_send` (a full
//! queue drops the ACK or ECHO reply and the peer resends), MSCs written as
//! closures run on tasks of their own, futures are completed through a
//! oneshot, and SLCs run on their listener's task behind a bounded queue.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::callbacks::CallbackTable;
use crate::config::Config;
use crate::deadlines::Deadlines;
use crate::dedup::Verdict;
use crate::error::{RequestError, SendError};
use crate::messenger::Incoming;
use crate::pending::MsgKey;
use crate::stats::{Stats, bump};
use crate::transport::{AckWaiter, Inbound, Outbound, SocketCtx};
use crate::wire::{self, ACK, ECHO, NOOP};

/// A reply, or why none came.
pub type Reply = Result<Incoming, RequestError>;

/// How a waiting request learns its outcome.
pub(crate) enum Completion {
    /// A closure (an MSC): runs once, on a task of its own.
    Callback(Box<dyn FnOnce(Reply) + Send>),
    /// A `request` future waiting on the other end.
    Future(oneshot::Sender<Reply>),
}

impl Completion {
    fn complete(self, reply: Reply) {
        match self {
            Completion::Callback(f) => {
                tokio::spawn(async move { f(reply) });
            }
            Completion::Future(tx) => {
                let _ = tx.send(reply);
            }
        }
    }
}

/// One waiting callback. Kept small (40 bytes): a million pending requests
/// are a million of these.
pub(crate) struct Waiter {
    completion: Completion,
    /// The socket the request went out on ([`SocketKind::tag`]).
    socket: u64,
    /// The peer the request went to: `None` on a connection (its only
    /// peer), boxed on a listener so the common case costs 8 bytes.
    peer: Option<Box<Bytes>>,
    /// The request's msg_id: a reply proves that message arrived.
    msg_id: u64,
}

impl Waiter {
    fn msg_key(&self) -> MsgKey {
        let peer = self.peer.as_deref().cloned().unwrap_or_default();
        (peer, self.msg_id)
    }

    fn sent_to(&self, peer: &[u8]) -> bool {
        self.peer.as_deref().map_or(&[][..], |p| p.as_ref()) == peer
    }
}

pub(crate) struct Pending {
    table: CallbackTable<Waiter>,
    deadlines: Deadlines,
}

/// `now + timeout`; a timeout too large to add is as good as none (and
/// must not panic).
fn deadline_after(now: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// Stale deadline entries (of callbacks already answered) tolerated beyond
/// the live ones before they are swept.
const DEADLINE_SLACK: usize = 1024;

/// State shared by the loop, the senders and the server loops.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stats: Arc<Stats>,
    runtime: Handle,
    pending: Mutex<Pending>,
    /// A new deadline is earlier than every other: the loop re-arms its timer.
    deadline_moved: tokio::sync::Notify,
    /// Cleared when shutdown begins: server loops take nothing new.
    accepting: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: Config, runtime: Handle) -> Self {
        let limit = config.max_pending_callbacks;
        Shared {
            config,
            stats: Arc::default(),
            runtime,
            pending: Mutex::new(Pending {
                table: CallbackTable::new(limit),
                deadlines: Deadlines::new(tokio::time::Instant::now()),
            }),
            deadline_moved: tokio::sync::Notify::new(),
            accepting: std::sync::atomic::AtomicBool::new(true),
        }
    }

    pub(crate) fn stop_accepting(&self) {
        self.accepting
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pending_callbacks(&self) -> usize {
        self.pending().table.len()
    }

    /// Registers a callback with its deadline `at` and gives the request its
    /// msg_id (from `msg_id`, called only once the callback has a slot, so a
    /// refused request leaves no gap in the ids). Returns the callback's
    /// wire id and the msg_id.
    fn register(
        &self,
        completion: Completion,
        socket: &SocketCtx,
        peer: &Bytes,
        at: tokio::time::Instant,
    ) -> Result<(u64, u64), SendError> {
        let mut msg_id = 0;
        let (moved, id) = {
            let mut p = self.pending();
            let Pending { table, deadlines } = &mut *p;
            let id = table
                .insert_with(|_| {
                    msg_id = socket.next_msg_id(peer);
                    Waiter {
                        completion,
                        socket: socket.kind.tag(),
                        peer: (!peer.is_empty()).then(|| Box::new(peer.clone())),
                        msg_id,
                    }
                })
                .map_err(|full| SendError::TooManyPending(full.0))?;
            let moved = deadlines.insert(id, at);
            if deadlines.len() > 2 * table.len() + DEADLINE_SLACK {
                deadlines.compact(|id| table.contains(id));
            }
            (moved, id)
        };
        if moved {
            self.deadline_moved.notify_one();
        }
        Ok((id, msg_id))
    }

    /// Removes a callback without running it (send failed, future dropped).
    /// Its deadline entry goes stale and is dropped later.
    pub(crate) fn unregister(&self, id: u64) {
        self.pending().table.take(id);
    }

    /// Takes the waiter for `id` out of the table, if it is still live.
    fn take(&self, id: u64) -> Option<Waiter> {
        self.pending().table.take(id)
    }

    /// Formats a message and records it: its callback (whose wire id
    /// becomes the message's src_cb) and, with resending on, its place in
    /// the socket's unacknowledged set. The returned [`Sending`] undoes both
    /// if it is dropped before [`Sending::sent`].
    pub(crate) fn prepare<'a>(
        &'a self,
        socket: &Arc<SocketCtx>,
        peer: Bytes,
        dst_cb: u64,
        body: &[u8],
        completion: Option<(Completion, Duration)>,
        ack: Option<AckWaiter>,
    ) -> Result<Sending<'a>, SendError> {
        if socket.is_closed() {
            return Err(SendError::Disconnected);
        }
        let max = self.config.max_message_size;
        // Reject what cannot fit before registering or formatting anything;
        // the exact length is checked once the payload exists.
        let shortest = wire::encoded_len(0, 0, dst_cb, body.len());
        if shortest > max {
            return Err(SendError::TooLarge { len: shortest, max });
        }
        let limit = self.config.max_pending_messages;
        let resend = self.config.resend_interval.is_some();
        if resend && socket.pending().len() >= limit {
            return Err(SendError::TooManyUnacked(limit));
        }
        let timeout = completion
            .as_ref()
            .map_or(self.config.request_timeout, |(_, t)| *t);
        // One clock read for the deadline and the resend timer: the clock of
        // the messenger's runtime (paused in tests), even when the caller is
        // a plain thread.
        let now = {
            let _rt = self.runtime.enter();
            tokio::time::Instant::now()
        };
        let deadline = deadline_after(now, timeout);
        let mut sending = Sending {
            shared: self,
            socket: Arc::clone(socket),
            out: None,
            msg_id: 0,
            cb_id: None,
            tracked: None,
        };
        let msg_id = match completion {
            Some((c, _)) => {
                let (cb_id, msg_id) = self.register(c, socket, &peer, deadline)?;
                sending.cb_id = Some(cb_id);
                msg_id
            }
            None => socket.next_msg_id(&peer),
        };
        let payload = wire::encode(msg_id, sending.cb_id.unwrap_or(NOOP), dst_cb, body);
        if payload.len() > max {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let key = (peer.clone(), msg_id);
        if resend {
            socket
                .pending()
                .insert(key.clone(), payload.clone(), now, deadline, ack)
                .map_err(|full| SendError::TooManyUnacked(full.0))?;
            sending.tracked = Some(key);
        } else if let Some(ack) = ack {
            // Nobody will report an ACK: say so rather than wait forever.
            let _ = ack.send(Ok(()));
        }
        sending.msg_id = msg_id;
        sending.out = Some(Outbound { peer, payload });
        Ok(sending)
    }

    /// Fails everyone waiting on a socket whose peer went away: callbacks
    /// of requests sent on it and senders waiting for its ACKs. Messages
    /// nobody waits on stay in its unacknowledged set, to be resent if the
    /// link comes back (until their deadline).
    pub(crate) fn fail_socket(&self, socket: &SocketCtx, err: RequestError) {
        let tag = socket.kind.tag();
        let failed = self.pending().table.take_matching(|w| w.socket == tag);
        let waiters = {
            let mut unacked = socket.pending();
            for w in &failed {
                unacked.ack(&w.msg_key());
            }
            unacked.drain_waiters()
        };
        socket.unacked_removed();
        for w in failed {
            w.completion.complete(Err(err.clone()));
        }
        for w in waiters {
            let _ = w.send(Err(err.clone()));
        }
    }

    /// Fails what waits on one peer of a listener that went away: requests
    /// sent to it, and sends waiting for its ACKs.
    fn fail_peer(&self, socket: &SocketCtx, peer: &[u8]) {
        socket.fail_unacked(peer);
        let tag = socket.kind.tag();
        let failed = self
            .pending()
            .table
            .take_matching(|w| w.socket == tag && w.sent_to(peer));
        for w in failed {
            w.completion.complete(Err(RequestError::Disconnected));
        }
    }

    /// Fails every waiting callback (shutdown).
    pub(crate) fn fail_all(&self, err: RequestError) {
        let failed = {
            let mut p = self.pending();
            p.deadlines.clear();
            p.table.drain()
        };
        for w in failed {
            w.completion.complete(Err(err.clone()));
        }
    }

    /// The earliest recorded deadline (it may belong to a callback already
    /// answered: then waking for it only drops the stale entry).
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.pending().deadlines.next()
    }

    /// Fails every callback whose deadline has passed with `Timeout`.
    fn expire_due(&self) {
        let now = tokio::time::Instant::now();
        loop {
            let mut due = Vec::new();
            let more = {
                let mut p = self.pending();
                let Pending { table, deadlines } = &mut *p;
                // Bounded per lock, so senders are not held up by a sweep.
                while due.len() < BATCH {
                    let Some(id) = deadlines.pop_expired(now) else {
                        break;
                    };
                    due.extend(table.take(id));
                }
                deadlines.next().is_some_and(|next| next <= now)
            };
            for w in due {
                bump(&self.stats.timeouts);
                w.completion.complete(Err(RequestError::Timeout));
            }
            if !more {
                return;
            }
        }
    }

    /// Sends an ACK or builtin reply without waiting: a full queue drops it.
    fn reply_now(&self, socket: &SocketCtx, peer: Bytes, payload: Bytes) -> bool {
        match socket.try_send_out(Outbound { peer, payload }) {
            Ok(()) => {
                bump(&self.stats.sent);
                true
            }
            Err(_) => {
                bump(&self.stats.replies_dropped);
                false
            }
        }
    }

    fn ack(&self, socket: &SocketCtx, peer: &Bytes, msg_id: u64) {
        if self.reply_now(socket, peer.clone(), wire::ack(msg_id)) {
            bump(&self.stats.acks_sent);
        }
    }

    /// Sends a builtin reply (an ECHO answer) and tracks it for resending
    /// like any other message, without ever waiting.
    fn reply_tracked(&self, socket: &SocketCtx, peer: Bytes, payload: Bytes, msg_id: u64) -> bool {
        if let Some(iv) = self.config.resend_interval {
            let now = tokio::time::Instant::now();
            let deadline = deadline_after(now, self.config.request_timeout.max(iv));
            // A full set only costs this reply its resends.
            let _ = socket.pending().insert(
                (peer.clone(), msg_id),
                payload.clone(),
                now,
                deadline,
                None,
            );
        }
        self.reply_now(socket, peer, payload)
    }

    /// Accepts a message: remembers it for duplicate suppression and ACKs it.
    fn accept(&self, socket: &SocketCtx, peer: &Bytes, msg_id: u64) {
        socket.record_delivered(peer, msg_id);
        self.ack(socket, peer, msg_id);
    }

    /// ProcessMessage: decides what one message is and hands it on.
    fn process(&self, m: Inbound) {
        let Inbound {
            socket,
            peer,
            payload,
        } = m;
        let (dst, msg_id) = (payload.dst_cb, payload.msg_id);
        if dst == ACK {
            // Socket readers settle ACKs themselves; one that reaches the
            // loop is settled the same way.
            socket.settle_ack(peer, msg_id);
            return;
        }
        // Everything but a server-loop message is delivered as soon as it is
        // new; a server-loop message only once its queue has room.
        let deliver_now = dst != NOOP;
        match socket.check_seen(&peer, msg_id, deliver_now) {
            Verdict::New => {}
            Verdict::Duplicate => {
                // Our ACK was lost or slow: ACK again, deliver nothing.
                self.ack(&socket, &peer, msg_id);
                bump(&self.stats.duplicates_dropped);
                return;
            }
            Verdict::Busy => {
                // Too many of its earlier messages still missing: not ACKed,
                // so the sender resends it once the gaps have filled.
                bump(&self.stats.dedup_busy);
                return;
            }
        }
        if dst == ECHO {
            self.ack(&socket, &peer, msg_id);
            let id = socket.next_msg_id(&peer);
            let reply = wire::encode(id, NOOP, payload.src_cb, &payload.body);
            if self.reply_tracked(&socket, peer, reply, id) {
                bump(&self.stats.echoes_answered);
            }
            return;
        }
        if dst >= wire::FIRST_USER {
            self.ack(&socket, &peer, msg_id);
            match self.take(dst) {
                Some(w) => {
                    // The reply proves our request arrived: stop resending it.
                    socket.acknowledged(&w.msg_key());
                    bump(&self.stats.msc_delivered);
                    w.completion
                        .complete(Ok(Incoming::new(socket, peer, payload)));
                }
                // Never issued, already used or expired.
                None => bump(&self.stats.late_replies_dropped),
            }
            return;
        }
        if dst == crate::auth::AUTH {
            // An authentication message: the listener's relay checked it
            // before it got here (or the listener needs none). Nothing to deliver.
            self.ack(&socket, &peer, msg_id);
            return;
        }
        // NOOP: the socket's server loop (a listener's, or the one a
        // connection was made with). While shutting down it is refused
        // unACKed: the peer keeps it.
        if !self.accepting.load(std::sync::atomic::Ordering::Acquire) {
            bump(&self.stats.slc_busy);
            return;
        }
        let Some(slc) = socket.slc.as_ref() else {
            self.accept(&socket, &peer, msg_id);
            bump(&self.stats.unroutable_dropped);
            return;
        };
        match slc.try_reserve() {
            Ok(permit) => {
                self.accept(&socket, &peer, msg_id);
                bump(&self.stats.slc_delivered);
                permit.send(Incoming::new(Arc::clone(&socket), peer, payload));
            }
            // Not ACKed: the peer keeps it and resends it later.
            Err(mpsc::error::TrySendError::Full(())) => bump(&self.stats.slc_busy),
            Err(mpsc::error::TrySendError::Closed(())) => bump(&self.stats.unroutable_dropped),
        }
    }
}

/// A message on its way to a socket. Dropped before [`sent`](Self::sent),
/// it unregisters its callback and its unacknowledged entry, so a failed or
/// cancelled send leaves nothing behind.
pub(crate) struct Sending<'a> {
    shared: &'a Shared,
    pub(crate) socket: Arc<SocketCtx>,
    out: Option<Outbound>,
    pub(crate) msg_id: u64,
    pub(crate) cb_id: Option<u64>,
    tracked: Option<MsgKey>,
}

impl Sending<'_> {
    /// Takes the message to hand to the socket's queue.
    pub(crate) fn take_out(&mut self) -> Option<Outbound> {
        self.out.take()
    }

    /// Returns a message taken with [`take_out`](Self::take_out) that could
    /// not be handed over yet.
    pub(crate) fn put_back(&mut self, out: Outbound) {
        self.out = Some(out);
    }

    /// The message is in the socket's queue: keep its records.
    pub(crate) fn sent(mut self) {
        bump(&self.shared.stats.sent);
        self.cb_id = None;
        self.tracked = None;
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.cb_id {
            self.shared.unregister(id);
        }
        if let Some(key) = &self.tracked {
            self.socket.acknowledged(key);
        }
    }
}

/// Resends what a socket's peer has not acknowledged and drops what is past
/// its deadline. One per socket, while resending is on.
pub(crate) async fn resend_loop(socket: Arc<SocketCtx>, interval: Duration) {
    let mut warn = crate::transport::RateLimit::new();
    let period = (interval / 4).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = tokio::time::Instant::now();
        // Only what fits in the queue now is resent (and marked so); the
        // rest stays due for the next tick.
        let budget = if socket.is_up() {
            socket.out_tx.capacity()
        } else {
            0
        };
        let tick = socket.pending().tick(now, interval, budget);
        for (peer, payload) in tick.resend {
            if socket.try_send_out(Outbound { peer, payload }).is_ok() {
                bump(&socket.stats.resends);
            }
        }
        if !tick.expired.is_empty() {
            socket.unacked_removed();
        }
        let mut unwaited = 0u64;
        for (_, waiter) in tick.expired {
            match waiter {
                Some(w) => {
                    let _ = w.send(Err(RequestError::Timeout));
                }
                None => unwaited += 1,
            }
        }
        if unwaited > 0 {
            // Sent without a callback or an ACK waiter, never acknowledged:
            // the caller cannot learn it any other way, so count and say it.
            socket
                .stats
                .unacked_expired
                .fetch_add(unwaited, std::sync::atomic::Ordering::Relaxed);
            if warn.allow() {
                tracing::warn!(endpoint = %socket.endpoint, count = unwaited, "messages expired without an ACK");
            }
        }
    }
}

/// Messages the loop takes from its queue before it looks at timers again.
const BATCH: usize = 64;

/// The ProcessMessage loop. Ends when every socket reader has gone.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut lost: mpsc::Receiver<crate::transport::Lost>,
) {
    // One timer for every request deadline, armed for the earliest.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<tokio::time::Instant> = None;
    let moved = shared.deadline_moved.notified();
    tokio::pin!(moved);
    loop {
        tokio::select! {
            biased;
            m = inbound.recv() => {
                let Some(m) = m else { break };
                shared.process(m);
                for _ in 1..BATCH {
                    match inbound.try_recv() {
                        Ok(m) => shared.process(m),
                        Err(_) => break,
                    }
                }
            }
            Some(l) = lost.recv() => match l.peer {
                None => shared.fail_socket(&l.socket, RequestError::Disconnected),
                Some(peer) => shared.fail_peer(&l.socket, &peer),
            },
            () = &mut timer, if armed.is_some() => {
                armed = None;
                shared.expire_due();
            }
            () = &mut moved => moved.set(shared.deadline_moved.notified()),
        }
        let next = shared.next_deadline();
        if next != armed {
            if let Some(at) = next {
                timer.as_mut().reset(at);
            }
            armed = next;
        }
    }
}

/// Checks a connection's peer with an empty ECHO every `hb.interval`; after
/// `hb.misses` unanswered in a row, tells the connection's driver to drop
/// the link (which fails its waiters and redials). Records the round trip.
pub(crate) async fn heartbeat_loop(
    shared: std::sync::Weak<Shared>,
    socket: Arc<SocketCtx>,
    hb: crate::config::Heartbeat,
) {
    let mut ticker = tokio::time::interval(hb.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut missed = 0;
    loop {
        ticker.tick().await;
        if !socket.is_up() {
            missed = 0;
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        let start = tokio::time::Instant::now();
        let completion = Some((Completion::Future(tx), hb.interval));
        let sent = shared
            .prepare(&socket, Bytes::new(), ECHO, b"", completion, None)
            .and_then(crate::messenger::try_enqueue);
        let stats = Arc::clone(&shared.stats);
        drop(shared);
        let answered = sent.is_ok() && matches!(rx.await, Ok(Ok(_)));
        if answered {
            socket.set_rtt(start.elapsed());
            missed = 0;
        } else {
            bump(&stats.heartbeats_missed);
            missed += 1;
            if missed >= hb.misses.max(1) {
                tracing::warn!(endpoint = %socket.endpoint, missed, "peer missed its heartbeats: declaring it dead");
                socket.link_dead.notify_one();
                missed = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-request bookkeeping budget is 100 bytes (design/PERFORMANCE.md,
    /// "Memory per pending request"): the table slot holds a `Waiter`, the
    /// deadline FIFO 16 bytes more.
    #[test]
    fn a_waiter_stays_small() {
        assert_eq!(std::mem::size_of::<Completion>(), 16);
        assert_eq!(std::mem::size_of::<Waiter>(), 40);
    }
}
