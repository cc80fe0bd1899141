//! ProcessMessage carried out: `messenger_proto::process` decides what a
//! message means, and the [`Effects`] here do it on the live messenger.
//! One decision for every transport: a tcp or ipc message is processed by
//! its session's task where it was read ([`Wire`]), an inproc one by the
//! sender's task where it lands ([`Landing`]); both count their outcome
//! in one place ([`count`]).
//!
//! Nothing here awaits a peer or user code: ACKs and ECHO answers are
//! handed over without waiting (a full buffer drops an ACK and refuses an
//! ECHO unACKed: the peer resends), futures are completed through a
//! oneshot, closure MSCs run on tasks of their own, and server loops on
//! theirs, behind a bounded queue.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::proto::dedup::Window;
use crate::proto::process::{self, Delivery, Effects, Outcome};
use crate::proto::wire::{NOOP, Payload};
use crate::runtime::shared::Shared;
use crate::runtime::socket::{Delivered, ReplyTicket, Session, SocketCtx};
use crate::stats::{Stats, Transport, bump};
use crate::transport::unacked::Unacked;
use crate::types::Incoming;

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

/// Counts what processing one message did: the one place outcomes become
/// counters, whatever the transport.
pub(crate) fn count(stats: &Stats, transport: Transport, outcome: Outcome) {
    let stats = stats.local();
    stats.traffic(transport).messages_received.add(1);
    let counter = match outcome {
        Outcome::Ack(true) => &stats.acks_received,
        Outcome::Ack(false) => &stats.unknown_acks,
        Outcome::Duplicate => &stats.duplicates_dropped,
        Outcome::Stale => &stats.dedup_stale,
        Outcome::Echo => &stats.echoes_answered,
        Outcome::EchoBusy => &stats.buffer_busy,
        Outcome::EchoRefused => &stats.echoes_refused,
        Outcome::Reply(true) => &stats.msc_delivered,
        Outcome::Reply(false) => &stats.late_replies_dropped,
        Outcome::Proof => return,
        Outcome::Delivered => &stats.slc_delivered,
        Outcome::ServerLoopBusy => &stats.slc_busy,
        Outcome::ReplyWindowBusy => &stats.reply_window_busy,
        Outcome::Unroutable => &stats.unroutable_dropped,
    };
    bump(counter);
}

/// Whether the outcome woke a task that may send at once (a request's
/// future, a server loop): the session's task lets it run before writing.
pub(crate) fn woke_a_task(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Reply(true) | Outcome::Delivered)
}

/// Ids a connection's [`Settled`] shrinks back to after a read that
/// held more than four times as many.
const KEPT_IDS: usize = 256;

/// What the messages of one read settle in the peer's unacknowledged
/// set: the ACKs of our messages, and our requests that replies answered
/// (a reply proves its request arrived). Applied under one lock at the
/// end of the read ([`apply`](Self::apply)), and earlier when a decision
/// in the read looks at the window (`Wire::settle_now`), instead of one
/// lock per ACK and one per reply: that set's lock is the cache line the
/// connection's senders and its driver share.
#[derive(Default)]
pub(crate) struct Settled {
    /// msg_ids the peer ACKed.
    acked: Vec<u64>,
    /// msg_ids of our requests that replies answered.
    answered: Vec<u64>,
}

impl Settled {
    /// Settles what the read held at `now` (its round-trip samples are
    /// taken then), and counts its ACKs, known and unknown (the one place
    /// tcp and ipc ACKs are counted, since `process` cannot know which
    /// are known before this).
    pub(crate) fn apply(
        &mut self,
        stats: &Stats,
        transport: Transport,
        unacked: &Unacked,
        now: Instant,
    ) {
        if self.acked.is_empty() && self.answered.is_empty() {
            return;
        }
        let acks = self.acked.len() as u64;
        let known = unacked.settle_all(&mut self.acked, &mut self.answered, now);
        let stats = stats.local();
        stats.acks_received.add(known);
        stats.unknown_acks.add(acks - known);
        stats.traffic(transport).messages_received.add(acks);
        // A read of small ACKs may hold thousands; what a connection keeps
        // between reads stays small (at most 8 KiB a list), without a
        // reallocation per read at the usual sizes.
        for ids in [&mut self.acked, &mut self.answered] {
            if ids.capacity() > 4 * KEPT_IDS {
                ids.shrink_to(KEPT_IDS);
            }
        }
    }
}

impl Shared {
    /// ProcessMessage for a message read from a tcp or ipc peer, in its
    /// session's task, with the sender's duplicate window; what it settles
    /// in our unacknowledged set goes into `settled`, for the read's end.
    pub(crate) fn process(
        &self,
        socket: &Arc<SocketCtx>,
        session: &Arc<Session>,
        window: &mut impl Window,
        settled: &mut Settled,
        payload: Payload,
        now: Instant,
    ) -> Outcome {
        let mut fx = Wire {
            shared: self,
            socket,
            session,
            settled,
            now,
        };
        let outcome = process::process(&mut fx, window, payload, now);
        // An ACK is counted when it is settled (`Settled::apply`).
        if !matches!(outcome, Outcome::Ack(_)) {
            count(&self.stats, socket.transport, outcome);
        }
        outcome
    }

    /// Completes the callback `reply.dst_cb` with `reply`, if it waits for
    /// a reply from `session`'s peer on `socket`. Returns the msg_id of the
    /// request it answers; `None` if no such callback waits.
    pub(crate) fn complete(
        &self,
        socket: &SocketCtx,
        session: &Session,
        reply: Payload,
    ) -> Option<u64> {
        let tag = socket.origin.kind.tag();
        let id = reply.dst_cb;
        self.callbacks
            .answer(id, tag, &session.peer, || incoming(socket, session, reply))
    }

    /// Offers a message to `socket`'s server loop without waiting; a full
    /// queue (or shutdown) gives it back. `ticket`: the place its reply
    /// may take, handed to the loop with it.
    pub(crate) fn offer(
        &self,
        socket: &SocketCtx,
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

    /// Whether the window towards `session`'s peer has a place for one
    /// more reply: what it has not ACKed, plus the replies owed to it and
    /// waiting for room, is below `send_queue_capacity` (always, without
    /// resending: nothing is tracked then).
    fn reply_room(&self, session: &Session) -> bool {
        self.config.resend_interval.is_none()
            || session.unacked.len() + session.replies.held() < self.config.send_queue_capacity
    }

    /// Answers an ECHO with its body, without ever waiting: tracked for
    /// resending like any other message while the window towards the peer
    /// has room; beyond it, sent once and not kept (a peer that never ACKs
    /// cannot make us hold its answers; one that does is not slowed by our
    /// window, only by its buffer).
    fn echo(&self, socket: &SocketCtx, session: &Session, request: &Payload, now: Instant) {
        let id = socket.next_msg_id_for(session);
        let reply = crate::transport::payloads::encode(id, NOOP, request.src_cb, &request.body);
        if self.config.resend_interval.is_some() {
            match session
                .unacked
                .reserve(self.config.max_pending_messages, reply.len(), id)
            {
                Ok(place) => {
                    let deadline =
                        crate::proto::deadlines::deadline_after(now, self.config.request_timeout);
                    // A set at its hard limit only costs this answer its
                    // resends.
                    if let Ok(true) = place.insert(id, reply.clone(), now, deadline, None) {
                        session.wake();
                    }
                }
                Err(_) => bump(&self.stats.local().replies_untracked),
            }
        }
        // Refused only if the buffer filled since the check: then it is
        // tracked, and resent like any message the link did not take.
        if session.send(&reply).is_ok() {
            self.stats
                .local()
                .traffic(socket.transport)
                .messages_sent
                .add(1);
        }
    }
}

/// ProcessMessage's effects for a message read from a tcp or ipc peer.
struct Wire<'a> {
    /// The messenger: callbacks, counters, configuration.
    shared: &'a Shared,
    /// The socket the message arrived on: its server loop, its unACKed set.
    socket: &'a Arc<SocketCtx>,
    /// The peer's session: where ACKs and answers go.
    session: &'a Arc<Session>,
    /// The read's ACKs and answered requests, settled at its end, or
    /// before a decision that reads the window ([`Wire::settle_now`]).
    settled: &'a mut Settled,
    /// When the read happened.
    now: Instant,
}

impl Wire<'_> {
    /// Settles what the read has ACKed so far, before a decision that
    /// depends on the window towards the peer (room for a reply, a place
    /// for an ECHO's answer): an ACK read just before must count, as it
    /// did when each was settled at once.
    fn settle_now(&mut self) {
        let unacked = &self.session.unacked;
        let stats = &self.shared.stats;
        self.settled
            .apply(stats, self.socket.transport, unacked, self.now);
    }
}

impl Effects for Wire<'_> {
    fn ack(&mut self, msg_id: u64) {
        // Without waiting: a full buffer drops the ACK (the peer resends
        // and is ACKed then).
        let stats = &self.shared.stats;
        match self.session.ack(msg_id) {
            Ok(()) => {
                let stats = stats.local();
                stats.traffic(self.socket.transport).messages_sent.add(1);
                bump(&stats.acks_sent);
            }
            Err(_) => bump(&stats.local().acks_dropped),
        }
    }

    /// Deferred to the read's end (`Settled::apply`, which counts it):
    /// whether it was known is not asked here.
    fn settle(&mut self, msg_id: u64, _now: Instant) -> bool {
        self.settled.acked.push(msg_id);
        true
    }

    fn can_echo(&mut self, _request: &Payload) -> bool {
        // Checked before the answer takes a msg_id: one refused after that
        // would leave a gap in our ids.
        self.session.has_room()
    }

    fn echo(&mut self, request: Payload, now: Instant) {
        self.settle_now();
        self.shared.echo(self.socket, self.session, &request, now)
    }

    fn complete(&mut self, reply: Payload) -> bool {
        match self.shared.complete(self.socket, self.session, reply) {
            Some(request) => {
                // The reply proves our request arrived: stop resending it
                // (at the read's end).
                self.settled.answered.push(request);
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
        } else {
            self.settle_now();
            if !self.shared.reply_room(self.session) {
                return Delivery::NoReplyRoom;
            }
            Some(ReplyTicket::new(self.session))
        };
        self.shared
            .offer(self.socket, self.session, message, ticket)
            .unwrap_or(Delivery::Busy)
    }
}

/// One side of an inproc pair: a socket, its messenger, and the session
/// there.
pub(crate) struct Side<'a> {
    /// The socket a message lands on.
    pub(crate) socket: &'a Arc<SocketCtx>,
    /// Its messenger: callbacks, counters.
    pub(crate) shared: &'a Shared,
    /// The session on that side: the peer a message came from.
    pub(crate) session: &'a Session,
}

/// Why an inproc message did not land.
pub(crate) enum Refused {
    /// The server loop's queue is full; the message comes back.
    Full(Payload),
    /// The other side has gone (or is shutting down).
    Gone,
}

/// ProcessMessage's effects for an inproc message landing on side `to`
/// from the sender's task: nothing to ACK, no duplicates; an ECHO's answer
/// lands back on `from` the same way; a full server loop gives the message
/// back to the sender, who waits (where a tcp peer would resend).
pub(crate) struct Landing<'a> {
    /// The side the message lands on.
    pub(crate) to: Side<'a>,
    /// Where an ECHO's answer lands; `None` for an answer (never answered).
    pub(crate) from: Option<Side<'a>>,
    /// Set when the server loop could not take the message.
    pub(crate) refused: Option<Refused>,
}

impl Landing<'_> {
    /// Lands `msg` at `now` (the send's time; an ECHO's answer lands at
    /// the request's: one clock read for the round trip): ProcessMessage
    /// on the receiving side, counted there.
    pub(crate) fn land(mut self, msg: Payload, now: Instant) -> Result<(), Refused> {
        let stats = &self.to.shared.stats;
        let outcome = process::process(&mut self, &mut crate::proto::dedup::NoDuplicates, msg, now);
        count(stats, Transport::Inproc, outcome);
        match self.refused {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }
}

impl Effects for Landing<'_> {
    /// Landing is the acknowledgement.
    fn ack(&mut self, _msg_id: u64) {}

    /// Our inproc senders send no ACKs.
    fn settle(&mut self, _msg_id: u64, _now: Instant) -> bool {
        false
    }

    fn can_echo(&mut self, _request: &Payload) -> bool {
        true
    }

    fn echo(&mut self, request: Payload, now: Instant) {
        let Some(back) = self.from.take() else {
            return;
        };
        let to = &self.to;
        let answer = Payload {
            msg_id: to.socket.next_msg_id_for(to.session),
            src_cb: NOOP,
            dst_cb: request.src_cb,
            // Moved, not cloned: a clone of a body made from a Vec
            // allocates (bytes promotes it to a shared buffer).
            body: request.body,
        };
        let stats = to.shared.stats.local();
        stats.traffic(Transport::Inproc).messages_sent.add(1);
        // A full server loop on the way back costs this answer (counted
        // there), as a full buffer does on tcp.
        let _ = Landing {
            to: back,
            from: None,
            refused: None,
        }
        .land(answer, now);
    }

    fn complete(&mut self, reply: Payload) -> bool {
        let to = &self.to;
        to.shared.complete(to.socket, to.session, reply).is_some()
    }

    fn deliver(&mut self, message: Payload) -> Delivery {
        let to = &self.to;
        if !to.shared.is_accepting() {
            self.refused = Some(Refused::Gone);
            return Delivery::Gone;
        }
        match to.shared.offer(to.socket, to.session, message, None) {
            Ok(Delivery::Gone) => {
                self.refused = Some(Refused::Gone);
                Delivery::Gone
            }
            Ok(d) => d,
            Err(message) => {
                self.refused = Some(Refused::Full(message));
                Delivery::Busy
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that settled thousands of ACKs counts each, known or not,
    /// and leaves its connection holding room for a few hundred ids, not
    /// thousands.
    #[test]
    fn a_big_read_is_counted_and_not_kept() {
        let stats = Stats::default();
        let unacked = Unacked::new(&crate::Config::default());
        let mut settled = Settled::default();
        settled.acked.extend(0..5000);
        settled.answered.extend(0..5000);
        settled.apply(&stats, Transport::Tcp, &unacked, crate::clock::now());
        assert_eq!(stats.total(|c| &c.unknown_acks), 5000);
        assert_eq!(stats.total(|c| &c.acks_received), 0);
        assert!(settled.acked.is_empty() && settled.answered.is_empty());
        assert!(settled.acked.capacity() <= 4 * KEPT_IDS);
        assert!(settled.answered.capacity() <= 4 * KEPT_IDS);
    }
}
