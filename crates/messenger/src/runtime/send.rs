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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::Error;
use crate::proto::deadlines::deadline_after;
use crate::proto::wire::{self, NOOP, Payload};
use crate::runtime::callbacks::{Awaited, Completion};
use crate::runtime::process::Refused;
use crate::runtime::shared::Shared;
use crate::runtime::socket::{InprocLink, Out, ReplyTicket, Route, Session, SocketCtx};
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

impl Shared {
    /// The one send path (see the module documentation).
    ///
    /// Not an `async fn`: the checks and the route are taken now, and the
    /// future returned is the landing's or the transmission's alone, not
    /// one more state machine around them holding `out` a second time
    /// (every `request` carries this future; its size is moved and kept
    /// per request in flight).
    pub(crate) fn send<'a>(
        &'a self,
        out: Outgoing<'a>,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'a {
        use futures::future::{Either, ready};
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
        if let Route::Session(session) = &route
            && let Out::Inproc(link) = &session.out
        {
            let link = Arc::clone(link);
            let session = Arc::clone(session);
            return Either::Right(Either::Left(self.land(out, session, link)));
        }
        Either::Right(Either::Right(self.transmit(out, route)))
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

    /// tcp and ipc: a place in the peer's window, a msg_id, the payload
    /// recorded for resending, then the session's outbox (or a redialling
    /// connection's next session).
    async fn transmit(&self, mut out: Outgoing<'_>, mut route: Route) -> Result<Sent, Error> {
        let socket = out.socket;
        let mut waits = Waits {
            timeout: out.timeout,
            since: None,
        };
        // A place in the peer's own window, before a msg_id is taken.
        // A connection's own set is borrowed (no reference count moves per
        // request); a listener's peer's is its session's.
        let session_unacked;
        let unacked = match socket.connection_unacked() {
            Some(u) => u,
            None => {
                session_unacked = socket.unacked_for(&route);
                &*session_unacked
            }
        };
        let max_pending = self.config.max_pending_messages;
        // At most what is formatted below (the ids are not known yet).
        let len = wire::encoded_len(u64::MAX, u64::MAX, out.dst_cb, out.body.len());
        let place = loop {
            match unacked.reserve(max_pending, len, socket.peek_msg_id(&route)) {
                Ok(place) => break place,
                Err(Error::Full) if out.mode == Mode::Wait => {
                    waits
                        .wait(unacked.wait(len, || socket.peek_msg_id(&route)))
                        .await?;
                    // It may have closed meanwhile (the peer left).
                    route = socket.route(out.peer)?;
                }
                Err(e) => return Err(e),
            }
        };
        // One clock read for the deadline and the resend timer.
        let now = self.now();
        let deadline = waits.deadline(now);
        let mut sending = Sending::new(self, Some(unacked));
        let (msg_id, cb_id) = self.number(&mut out, deadline, || socket.next_msg_id(&route))?;
        sending.numbered(msg_id, cb_id);
        let payload = payloads::encode(msg_id, cb_id.unwrap_or(NOOP), out.dst_cb, out.body);
        let max = self.config.max_message_size;
        if payload.len() > max {
            return Err(Error::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let ack = match std::mem::replace(&mut out.notify, Notify::Nothing) {
            Notify::Ack(waiter) => Some(waiter),
            _ => None,
        };
        if self.config.resend_interval.is_some() {
            let moved = place
                .insert(msg_id, payload.clone(), now, deadline, ack)
                .map_err(|full| Error::TooManyUnacked(full.0))?;
            sending.tracked = true;
            if moved {
                socket.wake_timers(&route);
            }
        } else if let Some(ack) = ack {
            // Nobody will report an ACK: say so rather than wait forever.
            let _ = ack.send(Ok(()));
        }
        loop {
            match socket.transmit(&route, &payload) {
                Ok(()) => return Ok(sending.sent(socket.transport)),
                Err(Push::Full) => match out.mode {
                    Mode::Try => return Err(Error::Full),
                    Mode::Wait => waits.wait(socket.route_room(&route)).await?,
                },
                // A connection's session is ending: its next one takes it.
                Err(Push::Closed) if !socket.is_listener() && !socket.is_closed() => {
                    if let Route::Session(s) = &route {
                        socket.unlink(s);
                    }
                    route = socket.route(out.peer)?;
                }
                Err(Push::Closed) => return Err(Error::Disconnected),
            }
        }
    }

    /// inproc: numbered the same way, then landed in the peer's messenger
    /// from this task (`Landing`: ProcessMessage there). No format, no
    /// window, no ACK: landing is the acknowledgement. A full server loop
    /// on the other side makes a waiting send wait (where a tcp peer would
    /// resend).
    async fn land(
        &self,
        mut out: Outgoing<'_>,
        session: Arc<Session>,
        link: Arc<dyn InprocLink>,
    ) -> Result<Sent, Error> {
        let session = &session;
        let socket = out.socket;
        let mut waits = Waits {
            timeout: out.timeout,
            since: None,
        };
        let deadline = waits.deadline(self.now());
        let mut sending = Sending::new(self, None);
        let (msg_id, cb_id) =
            self.number(&mut out, deadline, || socket.next_msg_id_for(session))?;
        sending.numbered(msg_id, cb_id);
        let mut msg = Payload {
            msg_id,
            src_cb: cb_id.unwrap_or(NOOP),
            dst_cb: out.dst_cb,
            body: Bytes::copy_from_slice(out.body),
        };
        loop {
            match link.land(session, msg) {
                Ok(()) => break,
                Err(Refused::Gone) => return Err(Error::Disconnected),
                Err(Refused::Full(_)) if out.mode == Mode::Try => return Err(Error::Full),
                Err(Refused::Full(back)) => {
                    msg = back;
                    waits.wait(link.room()).await?;
                }
            }
        }
        if let Notify::Ack(waiter) = out.notify {
            let _ = waiter.send(Ok(()));
        }
        Ok(sending.sent(Transport::Inproc))
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

/// A message on its way to a socket. Dropped before [`sent`](Self::sent),
/// it unregisters its callback and its unacknowledged entry, so a failed or
/// cancelled send leaves nothing behind.
struct Sending<'a> {
    /// Where its callback is registered.
    shared: &'a Shared,
    /// The set it is recorded in, with resending on (never on inproc):
    /// borrowed, so a send moves no reference count of it.
    unacked: Option<&'a Unacked>,
    /// Its msg_id (0 until numbered).
    msg_id: u64,
    /// Its callback's wire id, if it registered one.
    cb_id: Option<u64>,
    /// Whether it is recorded in `unacked`.
    tracked: bool,
}

impl<'a> Sending<'a> {
    fn new(shared: &'a Shared, unacked: Option<&'a Unacked>) -> Self {
        Sending {
            shared,
            unacked,
            msg_id: 0,
            cb_id: None,
            tracked: false,
        }
    }

    fn numbered(&mut self, msg_id: u64, cb_id: Option<u64>) {
        self.msg_id = msg_id;
        self.cb_id = cb_id;
    }

    /// The message is handed over: keep its records (bytes are counted
    /// as they are written, on tcp and ipc; inproc writes none).
    fn sent(mut self, transport: Transport) -> Sent {
        self.shared.stats.traffic(transport).messages_sent.add(1);
        self.tracked = false;
        Sent {
            msg_id: self.msg_id,
            cb_id: self.cb_id.take(),
            transport,
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.cb_id {
            self.shared.callbacks.unregister(id);
        }
        if let Some(unacked) = self.unacked.filter(|_| self.tracked) {
            unacked.ack(self.msg_id);
        }
    }
}
