//! The state every task of a messenger shares, ProcessMessage carried out,
//! the send path, and the timers (deadlines, resends, heartbeats).
//!
//! ProcessMessage runs in the task that read the message (a session's
//! driver): [`process::decide`] says what the message is, and
//! [`Shared::process`] does it. It never awaits a peer or user code: ACKs
//! and ECHO replies are handed over without waiting (a full buffer drops
//! them and the peer resends), futures are completed through a oneshot,
//! closure MSCs run on tasks of their own, and SLCs run on their own task
//! behind a bounded queue.
//!
//! inproc takes its own branch of the send path ([`Shared::send`] hands an
//! inproc route to `send_inproc`): no format, no window, no ACK; the
//! message lands in the peer's messenger from the sender's task through
//! [`complete`](Shared::complete) and [`offer`](Shared::offer), the same
//! steps ProcessMessage takes (see `transport::inproc`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::address::SocketKind;
use crate::config::Config;
use crate::error::{RequestError, SendError};
use crate::proto::callbacks::{CallbackTable, SHARDS, shard_of};
use crate::proto::deadlines::{Deadlines, deadline_after};
use crate::proto::dedup::DedupWindow;
use crate::proto::process::{self, Delivery, Outcome};
use crate::proto::wire::{self, ECHO, NOOP, Payload};
use crate::runtime::socket::{
    Delivered, InprocLink, Out, Refused, ReplyTicket, Route, Session, SocketCtx,
};
use crate::shard::{Padded, thread_index};
use crate::stats::{Stats, bump};
use crate::transport::outbox::Push;
use crate::transport::unacked::AckWaiter;
use crate::transport::unacked::{Reserved, Unacked};
use crate::types::{Incoming, Reply};

/// A received message as the API hands it out: its socket's origin is
/// shared, its body is the received buffer's.
pub(crate) fn incoming(socket: &SocketCtx, session: &Session, p: Payload) -> Incoming {
    Incoming {
        peer: session.peer.clone(),
        peer_key: session.peer_key,
        msg_id: p.msg_id,
        src_cb: p.src_cb,
        dst_cb: p.dst_cb,
        body: p.body,
        origin: Arc::clone(&socket.origin),
    }
}

/// How a waiting request learns its outcome.
pub(crate) enum Completion {
    /// A closure (an MSC): runs once, on a task of its own.
    Callback(Box<dyn FnOnce(Reply) + Send>),
    /// A `request` future waiting on the other end.
    Future(oneshot::Sender<Reply>),
}

impl Completion {
    /// Completes on `runtime` (the messenger's): an inproc reply may land
    /// from any thread.
    fn complete(self, reply: Reply, runtime: &Handle) {
        match self {
            Completion::Callback(f) => {
                runtime.spawn(async move { f(reply) });
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
    ///
    /// [`SocketKind::tag`]: crate::runtime::socket::SocketKind::tag
    socket: u64,
    /// The peer the request went to: `None` on a connection (its only
    /// peer), boxed on a listener so the common case costs 8 bytes.
    peer: Option<Box<Bytes>>,
    /// The request's msg_id: a reply proves that message arrived.
    msg_id: u64,
}

impl Waiter {
    fn sent_to(&self, peer: &[u8]) -> bool {
        match &self.peer {
            // A connection's request (its only peer): no call to compare
            // two empty slices on every reply.
            None => peer.is_empty(),
            Some(p) => p.as_ref() == peer,
        }
    }
}

/// One shard of the waiting callbacks: the callbacks registered from one
/// worker thread (mostly), with their deadlines.
pub(crate) struct Pending {
    table: CallbackTable<Waiter>,
    deadlines: Deadlines,
}

/// Stale deadline entries (of callbacks already answered) tolerated beyond
/// the live ones before they are swept.
const DEADLINE_SLACK: usize = 1024;

/// Callbacks timed out per lock taken, so senders are not held up.
const EXPIRE_BATCH: usize = 64;

/// A message handed over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// Its msg_id.
    pub(crate) msg_id: u64,
    /// The wire id of its callback, if it has one.
    pub(crate) cb_id: Option<u64>,
}

/// What an inproc send carries: dst_cb, body, callback, ACK waiter.
type InprocMessage<'a> = (
    u64,
    &'a [u8],
    Option<(Completion, Duration)>,
    Option<AckWaiter>,
);

/// How a send treats a full window or buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait for room.
    Wait,
    /// Fail with [`SendError::Full`].
    Try,
}

/// State shared by the sessions, the senders and the server loops.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) stats: Arc<Stats>,
    runtime: Handle,
    /// Waiting callbacks, in [`SHARDS`] shards; a callback's wire id names
    /// its shard.
    pending: Box<[Padded<Mutex<Pending>>]>,
    /// A new deadline is earlier than every other: the deadline task
    /// re-arms its timer.
    deadline_moved: tokio::sync::Notify,
    /// Cancelled when shutdown begins (the messenger's `stopping` token):
    /// server loops take nothing new.
    stopping: CancellationToken,
}

impl Shared {
    pub(crate) fn new(config: Arc<Config>, runtime: Handle, stopping: CancellationToken) -> Self {
        // Each shard takes its share; a full one sends callbacks to the next.
        let limit = config.max_pending_callbacks.div_ceil(SHARDS);
        let now = crate::clock::now();
        Shared {
            config,
            stats: Arc::default(),
            runtime,
            pending: (0..SHARDS)
                .map(|shard| {
                    Padded(Mutex::new(Pending {
                        table: CallbackTable::shard(limit, shard),
                        deadlines: Deadlines::new(now),
                    }))
                })
                .collect(),
            deadline_moved: tokio::sync::Notify::new(),
            stopping,
        }
    }

    /// Shard `i` of the waiting callbacks.
    fn pending(&self, i: usize) -> MutexGuard<'_, Pending> {
        let shard = &self.pending[i % SHARDS].0;
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shard that holds callback `id`, if it is one.
    fn pending_of(&self, id: u64) -> Option<MutexGuard<'_, Pending>> {
        shard_of(id).map(|i| self.pending(i))
    }

    pub(crate) fn pending_callbacks(&self) -> usize {
        (0..SHARDS).map(|i| self.pending(i).table.len()).sum()
    }

    /// Takes the callbacks `pred` picks, from every shard.
    fn take_matching(&self, mut pred: impl FnMut(&Waiter) -> bool) -> Vec<Waiter> {
        let mut taken = Vec::new();
        for i in 0..SHARDS {
            taken.extend(self.pending(i).table.take_matching(&mut pred));
        }
        taken
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
        at: std::time::Instant,
        msg_id: impl FnOnce() -> u64,
    ) -> Result<(u64, u64), SendError> {
        let mut id_out = 0;
        // The thread's own shard first: each worker of a runtime (up to
        // SHARDS) has its own lock, and an inproc request, registered and
        // completed on one thread, never waits for another.
        let home = thread_index();
        // The thread's own shard, or the next with room.
        let mut shard = (0..SHARDS)
            .map(|i| self.pending((home + i) % SHARDS))
            .find(|p| p.table.len() < p.table.limit())
            .ok_or(SendError::TooManyPending(self.config.max_pending_callbacks))?;
        let (moved, id) = {
            let Pending { table, deadlines } = &mut *shard;
            let id = table
                .insert_with(|_| {
                    id_out = msg_id();
                    Waiter {
                        completion,
                        socket: socket.origin.kind.tag(),
                        peer: (!peer.is_empty()).then(|| Box::new(peer.clone())),
                        msg_id: id_out,
                    }
                })
                .map_err(|_| SendError::TooManyPending(self.config.max_pending_callbacks))?;
            let moved = deadlines.insert(id, at);
            if deadlines.len() > 2 * table.len() + DEADLINE_SLACK {
                deadlines.compact(|id| table.contains(id));
            }
            (moved, id)
        };
        drop(shard);
        if moved {
            self.deadline_moved.notify_one();
        }
        Ok((id, id_out))
    }

    /// Removes a callback without running it (send failed, future dropped).
    /// Its deadline entry goes stale and is dropped later.
    pub(crate) fn unregister(&self, id: u64) {
        if let Some(mut p) = self.pending_of(id) {
            p.table.take(id);
        }
    }

    /// Formats a message and records it: its callback (whose wire id
    /// becomes the message's src_cb) and, with resending on, its place in
    /// the socket's unacknowledged set. The returned [`Sending`] undoes both
    /// if it is dropped before [`Sending::sent`].
    #[allow(clippy::too_many_arguments)]
    fn prepare<'a>(
        &'a self,
        socket: &Arc<SocketCtx>,
        route: &Route,
        place: Reserved,
        peer: &Bytes,
        dst_cb: u64,
        body: &[u8],
        completion: Option<(Completion, Duration)>,
        ack: Option<AckWaiter>,
        waited: Duration,
    ) -> Result<Sending<'a>, SendError> {
        let max = self.config.max_message_size;
        // Reject what cannot fit before registering or formatting anything;
        // the exact length is checked once the payload exists.
        let shortest = wire::encoded_len(0, 0, dst_cb, body.len());
        if shortest > max {
            return Err(SendError::TooLarge { len: shortest, max });
        }
        let resend = self.config.resend_interval.is_some();
        // What the sender waited for room already counts against it.
        let timeout = completion
            .as_ref()
            .map_or(self.config.request_timeout, |(_, t)| *t)
            .saturating_sub(waited);
        // One clock read for the deadline and the resend timer.
        let now = self.now();
        let deadline = deadline_after(now, timeout);
        let mut sending = Sending {
            shared: self,
            unacked: Some(Arc::clone(place.unacked())),
            payload: Bytes::new(),
            msg_id: 0,
            cb_id: None,
            tracked: false,
        };
        let msg_id = match completion {
            Some((c, _)) => {
                let (cb_id, msg_id) =
                    self.register(c, socket, peer, deadline, || socket.next_msg_id(route))?;
                sending.cb_id = Some(cb_id);
                msg_id
            }
            None => socket.next_msg_id(route),
        };
        let payload = wire::encode(msg_id, sending.cb_id.unwrap_or(NOOP), dst_cb, body);
        if payload.len() > max {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        if resend {
            place
                .insert(msg_id, payload.clone(), now, deadline, ack)
                .map_err(|full| SendError::TooManyUnacked(full.0))?;
            sending.tracked = true;
        } else if let Some(ack) = ack {
            // Nobody will report an ACK: say so rather than wait forever.
            let _ = ack.send(Ok(()));
        }
        sending.msg_id = msg_id;
        sending.payload = payload;
        Ok(sending)
    }

    /// Sends `body` to `dst_cb` at `peer` of `socket` (empty on a
    /// connection), with a callback or an ACK waiter. `Mode::Wait` waits
    /// for room in the window and then in the session's buffer (or a
    /// redialling connection's backlog); `Mode::Try` fails with `Full`
    /// instead.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        socket: &Arc<SocketCtx>,
        peer: &Bytes,
        dst_cb: u64,
        body: &[u8],
        completion: Option<(Completion, Duration)>,
        ack: Option<AckWaiter>,
        mode: Mode,
    ) -> Result<Sent, SendError> {
        let mut route = socket.route(peer)?;
        if let Route::Session(session) = &route
            && let Out::Inproc(tx) = &session.out
        {
            let msg = (dst_cb, body, completion, ack);
            return self
                .send_inproc(socket, session, &**tx, peer, msg, mode)
                .await;
        }
        // A place in the peer's own window, before a msg_id is taken (a
        // refused message must leave no gap in them).
        let unacked = socket.unacked_for(&route);
        let max_pending = self.config.max_pending_messages;
        // At most what `prepare` encodes (the ids are not known yet).
        let len = wire::encoded_len(u64::MAX, u64::MAX, dst_cb, body.len());
        // Every wait of one send counts against one deadline, which starts
        // when the first wait does (no clock is read when none is needed):
        // the request's own timeout, else `request_timeout`.
        let limit = completion
            .as_ref()
            .map_or(self.config.request_timeout, |(_, t)| *t);
        let mut waiting_since = None;
        let place = loop {
            match unacked.reserve(max_pending, len, socket.peek_msg_id(&route)) {
                Ok(place) => break place,
                Err(SendError::Full) if mode == Mode::Wait => {
                    let since = *waiting_since.get_or_insert_with(crate::clock::now);
                    let room = unacked.wait(len, || socket.peek_msg_id(&route));
                    if tokio::time::timeout_at(
                        crate::clock::tokio_at(deadline_after(since, limit)),
                        room,
                    )
                    .await
                    .is_err()
                    {
                        return Err(SendError::Timeout);
                    }
                    // It may have closed meanwhile (the peer left).
                    route = socket.route(peer)?;
                }
                Err(e) => return Err(e),
            }
        };
        let waited = waiting_since.map_or(Duration::ZERO, |t| t.elapsed());
        let sending = self.prepare(
            socket, &route, place, peer, dst_cb, body, completion, ack, waited,
        )?;
        loop {
            match socket.transmit(&route, &sending.payload) {
                Ok(()) => return Ok(sending.sent()),
                Err(Push::Full) => match mode {
                    Mode::Try => return Err(SendError::Full),
                    Mode::Wait => {
                        let since = *waiting_since.get_or_insert_with(crate::clock::now);
                        let room = socket.route_room(&route);
                        if tokio::time::timeout_at(
                            crate::clock::tokio_at(deadline_after(since, limit)),
                            room,
                        )
                        .await
                        .is_err()
                        {
                            return Err(SendError::Timeout);
                        }
                    }
                },
                // A connection's session is ending: its backlog takes it.
                Err(Push::Closed) if !socket.is_listener() && !socket.is_closed() => {
                    if let Route::Session(s) = &route {
                        socket.unlink(s);
                    }
                    route = socket.route(peer)?;
                }
                Err(Push::Closed) => return Err(SendError::Disconnected),
            }
        }
    }

    /// [`send`](Self::send) on inproc: no wire format, no window, no
    /// unacknowledged set; the message lands in the peer's messenger from
    /// this task (see [`inproc`](crate::runtime::inproc)). Landing is
    /// its acknowledgement.
    async fn send_inproc(
        &self,
        socket: &Arc<SocketCtx>,
        session: &Session,
        tx: &dyn InprocLink,
        peer: &Bytes,
        (dst_cb, body, completion, ack): InprocMessage<'_>,
        mode: Mode,
    ) -> Result<Sent, SendError> {
        let max = self.config.max_message_size;
        let len = wire::encoded_len(0, 0, dst_cb, body.len());
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        let mut sending = Sending {
            shared: self,
            unacked: None,
            payload: Bytes::new(),
            msg_id: 0,
            cb_id: None,
            tracked: false,
        };
        sending.msg_id = match completion {
            Some((c, timeout)) => {
                let at = deadline_after(self.now(), timeout);
                let next = || socket.next_msg_id_for(session);
                let (cb_id, msg_id) = self.register(c, socket, peer, at, next)?;
                sending.cb_id = Some(cb_id);
                msg_id
            }
            None => socket.next_msg_id_for(session),
        };
        let msg = Payload {
            msg_id: sending.msg_id,
            src_cb: sending.cb_id.unwrap_or(NOOP),
            dst_cb,
            body: Bytes::copy_from_slice(body),
        };
        match tx.land(session, msg) {
            Ok(()) => {}
            Err(Refused::Gone) => return Err(SendError::Disconnected),
            Err(Refused::Full(_)) if mode == Mode::Try => return Err(SendError::Full),
            Err(Refused::Full(msg)) => tx.land_when_there_is_room(msg).await?,
        }
        if let Some(ack) = ack {
            let _ = ack.send(Ok(()));
        }
        Ok(sending.sent())
    }

    /// A session ended: off its socket's routing table or link and closed
    /// ([`SocketCtx::detach`]), then everything waiting on it told. Called
    /// by the session's own task after the last message it read was
    /// processed, so a peer's last ACK or reply is never lost to its
    /// disconnect.
    pub(crate) fn end_session(&self, socket: &SocketCtx, session: &Arc<Session>) {
        socket.detach(session);
        match socket.origin.kind {
            SocketKind::Listener(_) => self.fail_peer(socket, &session.peer),
            SocketKind::Connection(_) => self.fail_socket(socket, RequestError::Disconnected),
        }
        socket.wake_room();
    }

    /// Fails everyone waiting on a socket whose peer went away: callbacks
    /// of requests sent on it and senders waiting for its ACKs. Messages
    /// nobody waits on stay in its unacknowledged set, to be resent if the
    /// link comes back (until their deadline).
    pub(crate) fn fail_socket(&self, socket: &SocketCtx, err: RequestError) {
        let tag = socket.origin.kind.tag();
        let failed = self.take_matching(|w| w.socket == tag);
        for unacked in socket.all_unacked() {
            // A failed request is not resent; other messages nobody waits
            // on are, once a connection is back.
            for w in &failed {
                unacked.ack(w.msg_id);
            }
            unacked.fail_waiters(&err);
        }
        for w in failed {
            w.completion.complete(Err(err.clone()), &self.runtime);
        }
    }

    /// Fails the requests sent to one peer of a listener that went away
    /// (its session's unacknowledged set is closed with it).
    pub(crate) fn fail_peer(&self, socket: &SocketCtx, peer: &[u8]) {
        let tag = socket.origin.kind.tag();
        let failed = self.take_matching(|w| w.socket == tag && w.sent_to(peer));
        for w in failed {
            w.completion
                .complete(Err(RequestError::Disconnected), &self.runtime);
        }
    }

    /// Fails every waiting callback (shutdown).
    pub(crate) fn fail_all(&self, err: RequestError) {
        let mut failed = Vec::new();
        for i in 0..SHARDS {
            let mut p = self.pending(i);
            p.deadlines.clear();
            failed.extend(p.table.drain());
        }
        for w in failed {
            w.completion.complete(Err(err.clone()), &self.runtime);
        }
    }

    /// The earliest recorded deadline (it may belong to a callback already
    /// answered: then waking for it only drops the stale entry).
    fn next_deadline(&self) -> Option<std::time::Instant> {
        (0..SHARDS)
            .filter_map(|i| self.pending(i).deadlines.next())
            .min()
    }

    /// Fails every callback whose deadline has passed with `Timeout`.
    fn expire_due(&self) {
        let now = crate::clock::now();
        for i in 0..SHARDS {
            self.expire_shard(i, now);
        }
    }

    /// Fails the callbacks of shard `i` whose deadline has passed.
    fn expire_shard(&self, i: usize, now: std::time::Instant) {
        loop {
            let mut due = Vec::new();
            let more = {
                let mut p = self.pending(i);
                let Pending { table, deadlines } = &mut *p;
                while due.len() < EXPIRE_BATCH {
                    let Some(id) = deadlines.pop_expired(now) else {
                        break;
                    };
                    due.extend(table.take(id));
                }
                deadlines.next().is_some_and(|next| next <= now)
            };
            for w in due {
                bump(&self.stats.timeouts);
                w.completion
                    .complete(Err(RequestError::Timeout), &self.runtime);
            }
            if !more {
                return;
            }
        }
    }

    /// ACKs `msg_id` without waiting: a full buffer drops the ACK (the
    /// peer resends and is ACKed then).
    fn ack(&self, session: &Session, msg_id: u64) {
        match session.ack(msg_id) {
            Ok(()) => {
                bump(&self.stats.sent);
                bump(&self.stats.acks_sent);
            }
            Err(_) => bump(&self.stats.acks_dropped),
        }
    }

    /// ProcessMessage, carried out where the message landed: `session`'s
    /// task, with the sender's duplicate window `dedup`. Returns whether it
    /// woke a task that may send at once (a request's, a server loop).
    pub(crate) fn process(
        &self,
        socket: &Arc<SocketCtx>,
        session: &Arc<Session>,
        dedup: &mut DedupWindow,
        payload: Payload,
        now: std::time::Instant,
    ) -> bool {
        bump(&self.stats.received);
        let mut fx = Live {
            shared: self,
            socket,
            session,
        };
        let outcome = process::process(&mut fx, dedup, payload, now);
        let counter = match outcome {
            Outcome::Ack(true) => &self.stats.acks_received,
            Outcome::Ack(false) => &self.stats.unknown_acks,
            Outcome::Duplicate => &self.stats.duplicates_dropped,
            Outcome::Stale => &self.stats.dedup_stale,
            Outcome::Echo => &self.stats.echoes_answered,
            Outcome::EchoBusy => &self.stats.buffer_busy,
            Outcome::EchoRefused => &self.stats.echoes_refused,
            Outcome::Reply(true) => &self.stats.msc_delivered,
            Outcome::Reply(false) => &self.stats.late_replies_dropped,
            Outcome::Proof => return false,
            Outcome::Delivered => &self.stats.slc_delivered,
            Outcome::ServerLoopBusy => &self.stats.slc_busy,
            Outcome::ReplyWindowBusy => &self.stats.reply_window_busy,
            Outcome::Unroutable => &self.stats.unroutable_dropped,
        };
        bump(counter);
        matches!(outcome, Outcome::Reply(true) | Outcome::Delivered)
    }

    /// The time on the messenger's clock (its runtime's, paused in tests),
    /// even when the caller is a plain thread. A caller inside a task is in
    /// a runtime already: entering ours again cost 3% of an inproc round
    /// trip.
    fn now(&self) -> std::time::Instant {
        if tokio::task::try_id().is_some() {
            return crate::clock::now();
        }
        let _rt = self.runtime.enter();
        crate::clock::now()
    }

    /// Whether server loops take new messages (not once shutdown began).
    pub(crate) fn is_accepting(&self) -> bool {
        !self.stopping.is_cancelled()
    }

    /// Completes the callback `reply.dst_cb` with `reply`, if it waits for
    /// a reply from `session`'s peer on `socket`. Returns the msg_id of the
    /// request it answers; `None` if no such callback waits.
    pub(crate) fn complete(
        &self,
        socket: &Arc<SocketCtx>,
        session: &Session,
        reply: Payload,
    ) -> Option<u64> {
        // Only the peer the request went to, on the socket it went out on,
        // can answer it: callback ids are messenger-wide, and another peer
        // must not complete (or probe) someone else's request.
        let (tag, peer) = (socket.origin.kind.tag(), &session.peer);
        let w = {
            let mut p = self.pending_of(reply.dst_cb)?;
            let ours = p
                .table
                .get_mut(reply.dst_cb)
                .is_some_and(|w| w.socket == tag && w.sent_to(peer));
            if ours {
                p.table.take(reply.dst_cb)
            } else {
                None
            }
        }?;
        let request = w.msg_id;
        let incoming = incoming(socket, session, reply);
        w.completion.complete(Ok(incoming), &self.runtime);
        Some(request)
    }

    /// Offers a message to `socket`'s server loop without waiting; a full
    /// queue (or shutdown) gives it back. `ticket`: the place its reply
    /// may take, handed to the loop with it.
    pub(crate) fn offer(
        &self,
        socket: &Arc<SocketCtx>,
        session: &Session,
        message: Payload,
        ticket: Option<ReplyTicket>,
    ) -> Result<Delivery, Payload> {
        // While shutting down it is refused: on tcp the peer keeps it.
        if !self.is_accepting() {
            return Err(message);
        }
        let Some(slc) = socket.slc.as_ref() else {
            return Ok(Delivery::NoServerLoop);
        };
        match slc.try_reserve() {
            Ok(permit) => {
                permit.send(Delivered {
                    message: incoming(socket, session, message),
                    ticket,
                });
                Ok(Delivery::Delivered)
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(message),
            Err(mpsc::error::TrySendError::Closed(())) => Ok(Delivery::Gone),
        }
    }

    /// [`offer`](Self::offer), waiting for room in the queue (inproc, whose
    /// senders wait where a tcp peer would resend).
    pub(crate) async fn offer_waiting(
        &self,
        socket: &Arc<SocketCtx>,
        session: &Session,
        message: Payload,
    ) -> Delivery {
        let Some(slc) = socket.slc.as_ref() else {
            return Delivery::NoServerLoop;
        };
        match slc.reserve().await {
            Ok(_) if !self.is_accepting() => Delivery::Busy,
            Ok(permit) => {
                permit.send(Delivered {
                    message: incoming(socket, session, message),
                    ticket: None,
                });
                Delivery::Delivered
            }
            Err(_) => Delivery::Gone,
        }
    }

    /// Whether the window towards `session`'s peer has a place for one
    /// more reply: what it has not ACKed, plus the replies owed to it and
    /// waiting for room, is below `send_queue_capacity` (always, without
    /// resending: nothing is tracked then).
    fn reply_room(&self, session: &Session) -> bool {
        self.config.resend_interval.is_none()
            || session.unacked.len() + session.replies.held() < self.config.send_queue_capacity
    }

    /// Keeps a reply that found no room (the window or the buffer towards
    /// its peer is full) until there is, in the place `ticket` holds for
    /// it; the session's task sends it
    /// ([`SocketCtx::flush_replies`]).
    pub(crate) fn defer_reply(
        &self,
        ticket: &ReplyTicket,
        dst_cb: u64,
        body: &[u8],
    ) -> Result<(), SendError> {
        let session = ticket.session();
        if session.is_closed() {
            return Err(SendError::Disconnected);
        }
        let max = self.config.max_message_size;
        let len = wire::encoded_len(u64::MAX, NOOP, dst_cb, body.len());
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        let deadline = deadline_after(self.now(), self.config.request_timeout);
        session
            .replies
            .defer(dst_cb, Bytes::copy_from_slice(body), deadline);
        ticket.spend();
        // The session's task may be waiting on its socket alone.
        session.wake();
        Ok(())
    }

    /// Whether an ECHO's answer can go out now: the peer's buffer has
    /// room. Checked before the answer takes a msg_id: one refused after
    /// that would leave a gap in our ids that the peer's window keeps.
    fn can_echo(&self, session: &Session) -> bool {
        session.has_room()
    }

    /// Answers an ECHO with its body, without ever waiting: tracked for
    /// resending like any other message while the window towards the peer
    /// has room; beyond it, sent once and not kept (a peer that never ACKs
    /// cannot make us hold its answers; one that does is not slowed by our
    /// window, only by its buffer).
    fn echo(
        &self,
        socket: &SocketCtx,
        session: &Session,
        request: &Payload,
        now: std::time::Instant,
    ) {
        let id = socket.next_msg_id_for(session);
        let reply = wire::encode(id, NOOP, request.src_cb, &request.body);
        if let Some(iv) = self.config.resend_interval {
            match session
                .unacked
                .reserve(self.config.max_pending_messages, reply.len(), id)
            {
                Ok(place) => {
                    let deadline = deadline_after(now, self.config.request_timeout.max(iv));
                    // A set at its hard limit only costs this answer its
                    // resends.
                    let _ = place.insert(id, reply.clone(), now, deadline, None);
                }
                Err(_) => bump(&self.stats.replies_untracked),
            }
        }
        // Refused only if the buffer filled since the check: then it is
        // tracked, and resent like any message the link did not take.
        if session.send(&reply).is_ok() {
            bump(&self.stats.sent);
        }
    }
}

/// ProcessMessage's effects on the live messenger.
struct Live<'a> {
    shared: &'a Shared,
    socket: &'a Arc<SocketCtx>,
    session: &'a Arc<Session>,
}

impl process::Effects for Live<'_> {
    fn ack(&mut self, msg_id: u64) {
        self.shared.ack(self.session, msg_id);
    }

    fn settle(&mut self, msg_id: u64, now: std::time::Instant) -> bool {
        self.session.unacked.settle(msg_id, now)
    }

    fn can_echo(&mut self, _request: &Payload) -> bool {
        self.shared.can_echo(self.session)
    }

    fn echo(&mut self, request: &Payload, now: std::time::Instant) {
        self.shared.echo(self.socket, self.session, request, now)
    }

    fn complete(&mut self, reply: Payload) -> bool {
        match self.shared.complete(self.socket, self.session, reply) {
            Some(request) => {
                // The reply proves our request arrived: stop resending it.
                self.session.unacked.ack(request);
                true
            }
            None => false,
        }
    }

    fn deliver(&mut self, message: Payload) -> Delivery {
        // A request that wants a reply takes a place in the window towards
        // its sender for it, or waits (unACKed) until there is one.
        let ticket = if message.src_cb == NOOP {
            None
        } else if self.shared.reply_room(self.session) {
            Some(ReplyTicket::new(self.session))
        } else {
            return Delivery::NoReplyRoom;
        };
        self.shared
            .offer(self.socket, self.session, message, ticket)
            .unwrap_or(Delivery::Busy)
    }
}

/// A message on its way to a socket. Dropped before [`sent`](Self::sent),
/// it unregisters its callback and its unacknowledged entry, so a failed or
/// cancelled send leaves nothing behind.
pub(crate) struct Sending<'a> {
    shared: &'a Shared,
    /// The set it is recorded in, with resending on (never on inproc).
    unacked: Option<Arc<Unacked>>,
    payload: Bytes,
    msg_id: u64,
    cb_id: Option<u64>,
    /// Whether it is recorded in `unacked`.
    tracked: bool,
}

impl Sending<'_> {
    /// The message is handed over: keep its records.
    fn sent(mut self) -> Sent {
        bump(&self.shared.stats.sent);
        let sent = Sent {
            msg_id: self.msg_id,
            cb_id: self.cb_id.take(),
        };
        self.tracked = false;
        sent
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.cb_id {
            self.shared.unregister(id);
        }
        if let Some(unacked) = self.unacked.as_ref().filter(|_| self.tracked) {
            unacked.ack(self.msg_id);
        }
    }
}

/// Fails callbacks at their deadlines: one timer, armed for the earliest.
/// One per messenger.
pub(crate) async fn deadline_loop(shared: Arc<Shared>) {
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<std::time::Instant> = None;
    let moved = shared.deadline_moved.notified();
    tokio::pin!(moved);
    loop {
        tokio::select! {
            () = &mut timer, if armed.is_some() => {
                armed = None;
                shared.expire_due();
            }
            () = &mut moved => moved.set(shared.deadline_moved.notified()),
        }
        let next = shared.next_deadline();
        if next != armed {
            if let Some(at) = next {
                timer.as_mut().reset(crate::clock::tokio_at(at));
            }
            armed = next;
        }
    }
}

/// Resends what a socket's peers have not acknowledged and drops what is
/// past its deadline. One per socket, while resending is on.
pub(crate) async fn resend_loop(socket: Arc<SocketCtx>, interval: Duration) {
    let period = (interval / 4).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let empty = Bytes::new();
    loop {
        ticker.tick().await;
        let now = crate::clock::now();
        // Each set with the route its resends take: a connection's one (a
        // redialling connection resends nothing, and marks nothing resent,
        // so what is due goes out as soon as it is back), or each session
        // of a listener.
        let targets: Vec<(Arc<Unacked>, Option<Route>)> = if socket.is_listener() {
            socket
                .sessions()
                .into_iter()
                .map(|s| (Arc::clone(&s.unacked), Some(Route::Session(s))))
                .collect()
        } else {
            let route = socket.route(&empty).ok().filter(|_| socket.is_up());
            socket
                .all_unacked()
                .into_iter()
                .map(|u| (u, route.clone()))
                .collect()
        };
        // Replies waiting for room towards a peer that sends nothing (no
        // ACK to wake its session's task) still meet their deadlines.
        for (_, route) in &targets {
            if let Some(Route::Session(session)) = route {
                socket.flush_replies(session, now);
            }
        }
        let mut unwaited = 0u64;
        for (unacked, route) in targets {
            let budget = if route.is_some() { usize::MAX } else { 0 };
            let tick = unacked.tick(now, interval, budget);
            if let Some(route) = &route {
                for payload in tick.resend {
                    if socket.transmit(route, &payload).is_ok() {
                        bump(&socket.stats.resends);
                    } else {
                        bump(&socket.stats.send_failures);
                    }
                }
            }
            for (_, waiter) in tick.expired {
                match waiter {
                    Some(w) => {
                        let _ = w.send(Err(RequestError::Timeout));
                    }
                    None => unwaited += 1,
                }
            }
        }
        if unwaited > 0 {
            // Sent without a callback or an ACK waiter, never acknowledged:
            // the caller cannot learn it any other way, so count and say it.
            socket.stats.unacked_expired.add(unwaited);
            if socket.warn_allowed() {
                tracing::warn!(endpoint = %socket.origin.endpoint, count = unwaited, "messages expired without an ACK");
            }
        }
    }
}

/// Checks a connection's peer with an empty ECHO every `hb.interval`; after
/// `hb.misses` unanswered in a row, tells the connection's session to end
/// (which fails its waiters and redials). Records the round trip.
pub(crate) async fn heartbeat_loop(
    shared: std::sync::Weak<Shared>,
    socket: Arc<SocketCtx>,
    hb: crate::config::Heartbeat,
) {
    let mut ticker = tokio::time::interval(hb.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut missed = 0;
    let empty = Bytes::new();
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
        let start = crate::clock::now();
        let completion = Some((Completion::Future(tx), hb.interval));
        let send = shared.send(&socket, &empty, ECHO, b"", completion, None, Mode::Try);
        let sent = futures::FutureExt::now_or_never(send).expect("Mode::Try never waits");
        let stats = Arc::clone(&shared.stats);
        drop(shared);
        let answered = sent.is_ok() && matches!(rx.await, Ok(Ok(_)));
        if answered {
            socket.set_rtt(start.elapsed());
            missed = 0;
        } else {
            bump(&stats.heartbeats_missed);
            missed += 1;
            if missed >= hb.misses {
                tracing::warn!(endpoint = %socket.origin.endpoint, missed, "peer missed its heartbeats: declaring it dead");
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
