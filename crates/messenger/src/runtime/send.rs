//! The one send path. Every public face (`send_message`, `try_send_message`,
//! `send_confirmed`, `request`, `Responder::reply` and `try_reply`) builds
//! one [`Outgoing`] and hands it to [`Shared::send`]: where it goes, to which
//! callback, what it carries, who learns what became of it, its deadline,
//! and whether it may wait.
//!
//! On tcp and ipc a message takes a place in its peer's window, a msg_id
//! (and its callback a slot), is formatted once, recorded for resending,
//! and handed to the session's outbox (or, while a connection redials, to
//! its next session). On inproc it is numbered the same way and lands in
//! the peer's messenger from this task, through the same ProcessMessage
//! (`runtime::process::Landing`). Every wait of one send (for room in the
//! window, the buffer, or the peer's server loop) counts against one
//! deadline, which starts when the first wait does.
//!
//! A send is a plain value ([`Transmission`], [`Landing`]) that goes as
//! far as it can in the caller's poll; only one that must wait becomes a
//! boxed future ([`drive`]). Almost every send waits for nothing, and a
//! `request` then holds no send state at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::Error;
use crate::proto::deadlines::deadline_after;
use crate::proto::wire::{self, NOOP, Payload};
use crate::runtime::callbacks::{Awaited, Completion};
use crate::runtime::process::Refused;
use crate::runtime::shared::Shared;
use crate::runtime::socket::{ReplyTicket, Route, SocketCtx};
use crate::stats::Transport;
use crate::transport::outbox::Push;
use crate::transport::payloads;
use crate::transport::unacked::{AckWaiter, Unacked};

/// How a send treats a full window, buffer or server loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait for room, within the deadline.
    Wait,
    /// Fail with [`Error::Full`].
    Try,
}

/// Who learns what became of a message.
pub(crate) enum Notify {
    /// Nobody: it is resent until ACKed (or its deadline), and that is all.
    Nothing,
    /// A callback or a `request` future gets the reply: the message
    /// carries its wire id as src_cb.
    Reply(Completion),
    /// A `send_confirmed` caller learns when it is ACKed.
    Ack(AckWaiter),
}

/// One message to send, from any public face.
pub(crate) struct Outgoing<'a> {
    /// The socket it leaves on.
    pub(crate) socket: &'a Arc<SocketCtx>,
    /// The peer of a listener it goes to (empty on a connection).
    pub(crate) peer: &'a Bytes,
    /// The callback it is addressed to.
    pub(crate) dst_cb: u64,
    /// What it carries.
    pub(crate) body: &'a [u8],
    /// Who learns what became of it.
    pub(crate) notify: Notify,
    /// From the call: every wait of the send, and then the reply or ACK,
    /// count against it.
    pub(crate) timeout: Duration,
    /// Whether it may wait for room.
    pub(crate) mode: Mode,
}

/// A message handed over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// Its msg_id.
    pub(crate) msg_id: u64,
    /// The wire id of its callback, if it has one.
    pub(crate) cb_id: Option<u64>,
    /// The transport it left on (what its request's time is labelled by).
    pub(crate) transport: Transport,
    /// When its reply is due: what an inproc `request` future arms if it
    /// has to wait (a callback's or a channel's deadline was armed as it
    /// registered). Set for every numbered message, so for every `Sent`.
    pub(crate) deadline: Option<Instant>,
}

/// The deadline shared by every wait of one send: started when the first
/// wait begins, so a send that never waits never reads the clock for it.
struct Waits {
    /// The send's whole allowance.
    timeout: Duration,
    /// When the first wait began (`None`: no wait yet).
    since: Option<Instant>,
}

impl Waits {
    /// Waits for `room` until the deadline; `Timeout` after it.
    ///
    /// Boxed: a wait (a timer and the room's future) is the rare path, and
    /// kept inline it would triple the size of every send's future, which
    /// each `request` then moves and allocates (past the allocator's
    /// small-size cache) whether it waits or not.
    fn wait<'a>(
        &mut self,
        room: impl Future<Output = ()> + Send + 'a,
    ) -> futures::future::BoxFuture<'a, Result<(), Error>> {
        let since = *self.since.get_or_insert_with(crate::clock::now);
        let at = crate::clock::tokio_at(deadline_after(since, self.timeout));
        Box::pin(async move {
            tokio::time::timeout_at(at, room)
                .await
                .map_err(|_| Error::Timeout)
        })
    }

    /// The deadline of what the send leads to (the reply, the ACK), at
    /// `now`: what the waits used is spent.
    fn deadline(&self, now: Instant) -> Instant {
        let waited = self
            .since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        deadline_after(now, self.timeout.saturating_sub(waited))
    }
}

/// What [`Shared::send`] returns: the outcome, when the send did not
/// have to wait (almost always), or the boxed rest of a send that waits
/// for room. Every `request` holds this while it sends: kept to a few
/// words, it is cheap to move and keep per request in flight (a send's
/// whole state machine inline made each `request` future 700 bytes,
/// copied several times per round trip).
pub(crate) type SendFuture<'a> = futures::future::Either<
    futures::future::Ready<Result<Sent, Error>>,
    futures::future::BoxFuture<'a, Result<Sent, Error>>,
>;

/// One send's progress, as far as it can go without waiting (see
/// [`drive`]).
trait Attempt<'a>: Send + 'a {
    /// Goes as far as it can now: the outcome, or `None` when it must wait
    /// for room (then [`wait`](Self::wait), then try again).
    fn attempt(&mut self) -> Option<Result<Sent, Error>>;
    /// Waits for what the last attempt lacked, within the send's deadline.
    fn wait(&mut self) -> futures::future::BoxFuture<'_, Result<(), Error>>;
    /// About to wait: its route owns its session (see [`Route::owned`]).
    fn own_route(&mut self);
}

/// Runs `send` to its outcome: at once, or boxed when it must wait.
#[inline]
fn drive<'a>(mut send: impl Attempt<'a>) -> SendFuture<'a> {
    use futures::future::{Either, ready};
    match send.attempt() {
        Some(outcome) => Either::Left(ready(outcome)),
        None => Either::Right(Box::pin(async move {
            loop {
                // Before every wait: a route taken again since may be a
                // guard.
                send.own_route();
                send.wait().await?;
                if let Some(outcome) = send.attempt() {
                    return outcome;
                }
            }
        })),
    }
}

impl Shared {
    /// The one send path (see the module documentation).
    ///
    /// The checks, the route and the send itself run now, in the caller's
    /// poll; only a send that must wait for room becomes a future of its
    /// own ([`SendFuture`]).
    pub(crate) fn send<'a>(&'a self, out: Outgoing<'a>) -> SendFuture<'a> {
        use futures::future::{Either, ready};
        // The protocol's own ids (a reply's too: a peer's src_cb).
        if matches!(out.dst_cb, wire::ACK | wire::RESERVED) {
            return Either::Left(ready(Err(Error::ReservedCallback(out.dst_cb))));
        }
        let max = self.config.max_message_size;
        // Refuse what cannot fit before anything is registered or formatted;
        // the exact length is checked once the payload exists.
        let shortest = wire::encoded_len(0, 0, out.dst_cb, out.body.len());
        if shortest > max {
            return Either::Left(ready(Err(Error::TooLarge { len: shortest, max })));
        }
        let route = match out.socket.route(out.peer) {
            Ok(route) => route,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        // The route moves into the send, which borrows its link from it:
        // no reference count of the session or link moves per send (every
        // sender on this connection touches those counts).
        if route.session().is_some_and(|s| s.inproc().is_some()) {
            return match Landing::new(self, out, route) {
                Ok(landing) => drive(landing),
                Err(e) => Either::Left(ready(Err(e))),
            };
        }
        drive(Transmission::new(self, out, route))
    }

    /// The message's msg_id, and its callback's wire id when a reply is
    /// wanted (registered now, with `deadline`): `next_id` is asked only
    /// once everything else is in place, so a refused send leaves no gap
    /// in the peer's ids.
    fn number(
        &self,
        out: &mut Outgoing<'_>,
        deadline: Instant,
        next_id: impl FnOnce() -> u64,
    ) -> Result<(u64, Option<u64>), Error> {
        match std::mem::replace(&mut out.notify, Notify::Nothing) {
            Notify::Reply(completion) => {
                let awaited = Awaited {
                    socket: out.socket.origin.kind.tag(),
                    peer: out.peer,
                    deadline,
                };
                let (cb_id, msg_id) = self.callbacks.register(completion, awaited, next_id)?;
                Ok((msg_id, Some(cb_id)))
            }
            other => {
                out.notify = other;
                Ok((next_id(), None))
            }
        }
    }

    /// Keeps a reply that found no room (the window or the buffer towards
    /// its peer is full) until there is, in the place `ticket` holds for
    /// it; the session's task sends it ([`SocketCtx::flush_replies`]).
    pub(crate) fn defer_reply(
        &self,
        ticket: &ReplyTicket,
        dst_cb: u64,
        body: &[u8],
    ) -> Result<(), Error> {
        let session = ticket.session();
        if session.is_closed() {
            return Err(Error::Disconnected);
        }
        let max = self.config.max_message_size;
        let len = wire::encoded_len(u64::MAX, NOOP, dst_cb, body.len());
        if len > max {
            return Err(Error::TooLarge { len, max });
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
}

/// The unacknowledged set a transmission records its message in: a
/// connection's own, borrowed (no reference count moves per request), or
/// a listener's peer's session's.
enum Set<'a> {
    /// A connection's.
    Borrowed(&'a Unacked),
    /// A listener peer's session's.
    Owned(Arc<Unacked>),
}

impl std::ops::Deref for Set<'_> {
    type Target = Unacked;
    fn deref(&self) -> &Unacked {
        match self {
            Set::Borrowed(u) => u,
            Set::Owned(u) => u,
        }
    }
}

/// tcp and ipc: a place in the peer's window, a msg_id, the payload
/// recorded for resending, then the session's outbox (or a redialling
/// connection's next session).
struct Transmission<'a> {
    /// The messenger.
    shared: &'a Shared,
    /// The message.
    out: Outgoing<'a>,
    /// Where it goes: re-taken after a wait for the window (the peer may
    /// have gone) and when a connection's session ends under it.
    route: Route,
    /// Its callback and its place in the unacknowledged set, undone if
    /// the send fails or is dropped.
    sending: Sending<'a>,
    /// Its waits' one deadline.
    waits: Waits,
    /// The formatted message, once numbered; `None` while it waits for a
    /// place in the window.
    payload: Option<Bytes>,
}

impl<'a> Transmission<'a> {
    fn new(shared: &'a Shared, out: Outgoing<'a>, route: Route) -> Self {
        let set = match out.socket.connection_unacked() {
            Some(u) => Set::Borrowed(u),
            None => Set::Owned(out.socket.unacked_for(&route)),
        };
        let waits = Waits {
            timeout: out.timeout,
            since: None,
        };
        Transmission {
            shared,
            out,
            route,
            sending: Sending::new(shared, Some(set)),
            waits,
            payload: None,
        }
    }

    /// At most what is formatted (the ids are not known yet).
    fn longest(&self) -> usize {
        wire::encoded_len(u64::MAX, u64::MAX, self.out.dst_cb, self.out.body.len())
    }

    /// A place in the window, a msg_id (and callback), the payload
    /// recorded for resending. `Ok(None)`: the window is full.
    fn number(&mut self) -> Result<Option<Bytes>, Error> {
        let (shared, socket) = (self.shared, self.out.socket);
        let longest = self.longest();
        let sending = &mut self.sending;
        let Some(unacked) = sending.unacked.as_deref() else {
            return Err(Error::Disconnected);
        };
        let max_pending = shared.config.max_pending_messages;
        let place = match unacked.reserve(max_pending, longest, socket.peek_msg_id(&self.route)) {
            Ok(place) => place,
            Err(Error::Full) if self.out.mode == Mode::Wait => return Ok(None),
            Err(e) => return Err(e),
        };
        // One clock read for the deadline and the resend timer.
        let now = shared.now();
        let deadline = self.waits.deadline(now);
        let route = &self.route;
        let (msg_id, cb_id) =
            shared.number(&mut self.out, deadline, || socket.next_msg_id(route))?;
        // Fields, not `numbered`: `unacked` stays borrowed by `place`.
        (sending.msg_id, sending.cb_id, sending.deadline) = (msg_id, cb_id, Some(deadline));
        let payload = payloads::encode(
            msg_id,
            cb_id.unwrap_or(NOOP),
            self.out.dst_cb,
            self.out.body,
        );
        let max = shared.config.max_message_size;
        if payload.len() > max {
            return Err(Error::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let ack = match std::mem::replace(&mut self.out.notify, Notify::Nothing) {
            Notify::Ack(waiter) => Some(waiter),
            _ => None,
        };
        if shared.config.resend_interval.is_some() {
            let moved = place
                .insert(msg_id, payload.clone(), now, deadline, ack)
                .map_err(|full| Error::TooManyUnacked(full.0))?;
            sending.tracked = true;
            if moved {
                socket.wake_timers(&self.route);
            }
        } else if let Some(ack) = ack {
            // Nobody will report an ACK: say so rather than wait forever.
            let _ = ack.send(Ok(()));
        }
        Ok(Some(payload))
    }

    fn try_attempt(&mut self) -> Result<Option<Sent>, Error> {
        let socket = self.out.socket;
        let payload = match self.payload.take() {
            Some(payload) => payload,
            None => match self.number()? {
                Some(payload) => payload,
                None => return Ok(None),
            },
        };
        loop {
            match socket.transmit(&self.route, &payload) {
                Ok(()) => return Ok(Some(self.sending.sent(socket.transport))),
                Err(Push::Full) => match self.out.mode {
                    Mode::Try => return Err(Error::Full),
                    Mode::Wait => {
                        self.payload = Some(payload);
                        return Ok(None);
                    }
                },
                // A connection's session is ending: its next one takes it.
                Err(Push::Closed) if !socket.is_listener() && !socket.is_closed() => {
                    if let Some(s) = self.route.session() {
                        socket.unlink(s);
                    }
                    self.route = socket.route(self.out.peer)?;
                }
                Err(Push::Closed) => return Err(Error::Disconnected),
            }
        }
    }
}

impl<'a> Attempt<'a> for Transmission<'a> {
    fn own_route(&mut self) {
        self.route = std::mem::replace(&mut self.route, Route::Backlog).owned();
    }

    fn attempt(&mut self) -> Option<Result<Sent, Error>> {
        self.try_attempt().transpose()
    }

    fn wait(&mut self) -> futures::future::BoxFuture<'_, Result<(), Error>> {
        let len = self.longest();
        let Transmission {
            out,
            route,
            sending,
            waits,
            payload,
            ..
        } = self;
        let socket = out.socket;
        match (payload, sending.unacked.as_deref()) {
            // Numbered: room in the session's buffer (or the backlog).
            (Some(_), _) | (None, None) => waits.wait(socket.route_room(route)),
            // Room in the window; then the route again (the peer may have
            // left meanwhile).
            (None, Some(unacked)) => {
                let peer = out.peer;
                Box::pin(async move {
                    waits
                        .wait(unacked.wait(len, || socket.peek_msg_id(route)))
                        .await?;
                    *route = socket.route(peer)?;
                    Ok(())
                })
            }
        }
    }
}

/// inproc: numbered the same way, then landed in the peer's messenger
/// from this task (`process::Landing`: ProcessMessage there). No format,
/// no window, no ACK: landing is the acknowledgement. A full server loop
/// on the other side makes a waiting send wait (where a tcp peer would
/// resend).
struct Landing<'a> {
    /// The message: its mode, and its ACK waiter (told once it lands).
    out: Outgoing<'a>,
    /// The session it lands through (its link to the other side), as
    /// routed: borrowed, on a connection, with no reference count moved.
    route: Route,
    /// The message to land; back in place while the server loop is full.
    msg: Option<Payload>,
    /// When it was sent (or last waited): the time it lands at.
    now: Instant,
    /// Its callback, unregistered if the send fails or is dropped.
    sending: Sending<'a>,
    /// Its waits' one deadline.
    waits: Waits,
}

impl<'a> Landing<'a> {
    /// Numbers the message and registers its callback.
    #[inline]
    fn new(shared: &'a Shared, mut out: Outgoing<'a>, route: Route) -> Result<Self, Error> {
        let socket = out.socket;
        let Some(session) = route.session() else {
            return Err(Error::Disconnected);
        };
        let waits = Waits {
            timeout: out.timeout,
            since: None,
        };
        // One clock read: the callback's deadline, and the landing's time.
        let now = shared.now();
        let deadline = waits.deadline(now);
        let mut sending = Sending::new(shared, None);
        let (msg_id, cb_id) =
            shared.number(&mut out, deadline, || socket.next_msg_id_for(session))?;
        sending.numbered(msg_id, cb_id, deadline);
        let msg = Payload {
            msg_id,
            src_cb: cb_id.unwrap_or(NOOP),
            dst_cb: out.dst_cb,
            body: Bytes::copy_from_slice(out.body),
        };
        Ok(Landing {
            out,
            route,
            msg: Some(msg),
            now,
            sending,
            waits,
        })
    }
}

impl<'a> Attempt<'a> for Landing<'a> {
    fn own_route(&mut self) {
        self.route = std::mem::replace(&mut self.route, Route::Backlog).owned();
    }

    fn attempt(&mut self) -> Option<Result<Sent, Error>> {
        // `send` routes only inproc sessions here.
        let session = self.route.session();
        let (Some(session), Some(link), Some(msg)) =
            (session, session.and_then(|s| s.inproc()), self.msg.take())
        else {
            return Some(Err(Error::Disconnected));
        };
        match link.land(session, msg, self.now) {
            Ok(()) => {
                if let Notify::Ack(waiter) =
                    std::mem::replace(&mut self.out.notify, Notify::Nothing)
                {
                    let _ = waiter.send(Ok(()));
                }
                Some(Ok(self.sending.sent(Transport::Inproc)))
            }
            Err(Refused::Gone) => Some(Err(Error::Disconnected)),
            Err(Refused::Full(_)) if self.out.mode == Mode::Try => Some(Err(Error::Full)),
            Err(Refused::Full(back)) => {
                self.msg = Some(back);
                None
            }
        }
    }

    fn wait(&mut self) -> futures::future::BoxFuture<'_, Result<(), Error>> {
        let Landing {
            route,
            waits,
            now,
            sending,
            ..
        } = self;
        let Some(link) = route.session().and_then(|s| s.inproc()) else {
            return Box::pin(futures::future::ready(Err(Error::Disconnected)));
        };
        let shared = sending.shared;
        let room = waits.wait(link.room());
        Box::pin(async move {
            room.await?;
            *now = shared.now();
            Ok(())
        })
    }
}

/// A message on its way to a socket. Dropped before [`sent`](Self::sent),
/// it unregisters its callback and its unacknowledged entry, so a failed or
/// cancelled send leaves nothing behind.
struct Sending<'a> {
    /// Where its callback is registered.
    shared: &'a Shared,
    /// The set it is recorded in, with resending on (never on inproc).
    unacked: Option<Set<'a>>,
    /// Its msg_id (0 until numbered).
    msg_id: u64,
    /// Its callback's wire id, if it registered one.
    cb_id: Option<u64>,
    /// Whether it is recorded in `unacked`.
    tracked: bool,
    /// When its reply or ACK is due (set when numbered).
    deadline: Option<Instant>,
}

impl<'a> Sending<'a> {
    fn new(shared: &'a Shared, unacked: Option<Set<'a>>) -> Self {
        Sending {
            shared,
            unacked,
            msg_id: 0,
            cb_id: None,
            tracked: false,
            deadline: None,
        }
    }

    fn numbered(&mut self, msg_id: u64, cb_id: Option<u64>, deadline: Instant) {
        self.msg_id = msg_id;
        self.cb_id = cb_id;
        self.deadline = Some(deadline);
    }

    /// The message is handed over: keep its records (bytes are counted
    /// as they are written, on tcp and ipc; inproc writes none).
    fn sent(&mut self, transport: Transport) -> Sent {
        self.shared
            .stats
            .local()
            .traffic(transport)
            .messages_sent
            .add(1);
        self.tracked = false;
        Sent {
            msg_id: self.msg_id,
            cb_id: self.cb_id.take(),
            transport,
            deadline: self.deadline,
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.cb_id {
            self.shared.callbacks.unregister(id);
        }
        if let Some(unacked) = self.unacked.as_deref().filter(|_| self.tracked) {
            unacked.ack(self.msg_id);
        }
    }
}
