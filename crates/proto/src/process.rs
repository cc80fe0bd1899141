//! ProcessMessage: what one arriving message means, decided by a pure
//! function over the receiving session's duplicate window ([`decide`]),
//! and carried out through the few [`Effects`] it needs ([`process`]).
//! The session's task runs it where the message landed, with the
//! messenger's state behind `Effects`
//! (the `messenger` crate's runtime); the tests
//! below run the same code between two in-memory cores on a virtual clock.
//!
//! The order is NoisePage's: an ACK settles what it acknowledges; a
//! duplicate is ACKed again and dropped; then the builtins (ECHO), then the
//! message-specific callback named by `dst_cb`, then the socket's
//! server-loop callback. A callback reply or a proof is recorded as
//! delivered at once; an ECHO only once its answer is on its way, and a
//! server-loop message only once its queue owns it ([`accepted`]), so a
//! full window towards the sender or a full queue refuses it unACKed and
//! the peer resends it later.

use std::time::Instant;

use crate::dedup::{Verdict, Window};
use crate::wire::{self, ACK, ECHO, NOOP, Payload, RESERVED};

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An ACK: settle the message it acknowledges.
    SettleAck,
    /// Seen before: ACK it again (our ACK was lost), deliver nothing.
    Duplicate,
    /// Older than the sender's duplicate window and not known to have
    /// arrived: refuse it unACKed (see `dedup`), deliver nothing.
    Stale,
    /// ECHO: ACK (and call [`accepted`]), and answer the sender's callback
    /// with the body; with no room for the answer, refuse it unACKed.
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
pub fn decide(dedup: &mut impl Window, msg_id: u64, dst_cb: u64) -> Decision {
    if dst_cb == ACK {
        return Decision::SettleAck;
    }
    match dedup.check(msg_id) {
        Verdict::Duplicate => return Decision::Duplicate,
        Verdict::Stale => return Decision::Stale,
        Verdict::New => {}
    }
    match dst_cb {
        NOOP => return Decision::ServerLoop,
        ECHO => return Decision::Echo,
        _ => {}
    }
    dedup.record(msg_id);
    match dst_cb {
        RESERVED => Decision::Proof,
        _ => {
            debug_assert!(dst_cb >= wire::FIRST_USER);
            Decision::Callback
        }
    }
}

/// An ECHO answered or a server-loop message handed over: record it, so
/// a resend of it is a duplicate (the caller ACKs it).
pub fn accepted(dedup: &mut impl Window, msg_id: u64) {
    dedup.record(msg_id);
}

/// Whether the server loop took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Its queue owns it now.
    Delivered,
    /// No room (or shutting down): refuse it unACKed, the peer resends.
    Busy,
    /// It asks for a reply, and the window towards its sender is full of
    /// replies (sent and unACKed, or owed): refuse it unACKed, the peer
    /// resends it once it has ACKed some.
    NoReplyRoom,
    /// The socket has no server loop: ACK it (a resend would not help)
    /// and drop it.
    NoServerLoop,
    /// The server loop has gone: drop it unACKed.
    Gone,
}

/// What processing one message did (the caller counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An ACK, settled (true) or for nothing we wait on (false).
    Ack(bool),
    /// A duplicate, ACKed again.
    Duplicate,
    /// Refused unACKed: older than the duplicate window.
    Stale,
    /// An ECHO, answered.
    Echo,
    /// An ECHO refused unACKed: no room towards its sender (it does not
    /// read what we send it).
    EchoBusy,
    /// An ECHO whose answer would go to ECHO or ACK: ACKed, not answered.
    EchoRefused,
    /// A reply, to a waiting callback (true) or a late one (false).
    Reply(bool),
    /// A proof, ACKed.
    Proof,
    /// The server loop took it.
    Delivered,
    /// The server loop had no room.
    ServerLoopBusy,
    /// No room towards its sender for the reply it asks for.
    ReplyWindowBusy,
    /// Nothing could take it.
    Unroutable,
}

/// What ProcessMessage needs from the messenger to carry a decision out.
pub trait Effects {
    /// Sends the ACK of `msg_id`, best effort (the peer resends what is
    /// not ACKed).
    fn ack(&mut self, msg_id: u64);
    /// The peer ACKed our message `msg_id`: forget it, tell its waiter.
    /// False if nothing waited for that ACK.
    fn settle(&mut self, msg_id: u64, now: Instant) -> bool;
    /// Whether an answer to this ECHO can go out now (the peer's buffer
    /// has room).
    fn can_echo(&mut self, request: &Payload) -> bool;
    /// Answers an ECHO with its body (after [`can_echo`](Self::can_echo)).
    /// Takes the request: its body becomes the answer's without a copy.
    fn echo(&mut self, request: Payload, now: Instant);
    /// Completes the callback `reply.dst_cb` (and stops resending the
    /// request it answers). False if none waits.
    fn complete(&mut self, reply: Payload) -> bool;
    /// Offers a message to the server loop.
    fn deliver(&mut self, message: Payload) -> Delivery;
}

/// ProcessMessage for one message, with the sender's duplicate window:
/// ACK bookkeeping first, then duplicates, builtins, the callback named by
/// `dst_cb`, and the server loop. A server-loop message is ACKed only once
/// its queue owns it.
pub fn process(
    fx: &mut impl Effects,
    dedup: &mut impl Window,
    message: Payload,
    now: Instant,
) -> Outcome {
    let msg_id = message.msg_id;
    match decide(dedup, msg_id, message.dst_cb) {
        Decision::SettleAck => Outcome::Ack(fx.settle(msg_id, now)),
        Decision::Duplicate => {
            fx.ack(msg_id);
            Outcome::Duplicate
        }
        Decision::Stale => Outcome::Stale,
        Decision::Echo => {
            // An answer to ACK would read as an ACK of one of the peer's
            // own messages, and one to ECHO would be answered in turn,
            // for ever: neither is sent. ACKed, since a resend would not
            // change that.
            if matches!(message.src_cb, ACK | ECHO) {
                accepted(dedup, msg_id);
                fx.ack(msg_id);
                return Outcome::EchoRefused;
            }
            if !fx.can_echo(&message) {
                return Outcome::EchoBusy;
            }
            accepted(dedup, msg_id);
            fx.ack(msg_id);
            fx.echo(message, now);
            Outcome::Echo
        }
        Decision::Callback => {
            fx.ack(msg_id);
            Outcome::Reply(fx.complete(message))
        }
        Decision::Proof => {
            fx.ack(msg_id);
            Outcome::Proof
        }
        Decision::ServerLoop => match fx.deliver(message) {
            Delivery::Delivered => {
                accepted(dedup, msg_id);
                fx.ack(msg_id);
                Outcome::Delivered
            }
            Delivery::Busy => Outcome::ServerLoopBusy,
            Delivery::NoReplyRoom => Outcome::ReplyWindowBusy,
            Delivery::NoServerLoop => {
                accepted(dedup, msg_id);
                fx.ack(msg_id);
                Outcome::Unroutable
            }
            Delivery::Gone => Outcome::Unroutable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, VecDeque};
    use std::time::Duration;

    use bytes::Bytes;

    use crate::callbacks::CallbackTable;
    use crate::dedup::DedupWindow;
    use crate::pending::PendingSet;

    fn window() -> DedupWindow {
        DedupWindow::new(64)
    }

    #[test]
    fn builtins_first_then_callbacks_then_the_server_loop() {
        let mut w = window();
        assert_eq!(decide(&mut w, 7, ACK), Decision::SettleAck);
        assert_eq!(decide(&mut w, 0, ECHO), Decision::Echo);
        accepted(&mut w, 0);
        assert_eq!(decide(&mut w, 1, RESERVED), Decision::Proof);
        assert_eq!(decide(&mut w, 2, wire::FIRST_USER), Decision::Callback);
        assert_eq!(decide(&mut w, 3, u64::MAX), Decision::Callback);
        assert_eq!(decide(&mut w, 4, NOOP), Decision::ServerLoop);
    }

    #[test]
    fn acks_are_never_recorded_and_duplicates_are_caught() {
        let mut w = window();
        assert_eq!(decide(&mut w, 0, ACK), Decision::SettleAck);
        assert_eq!(
            decide(&mut w, 0, wire::FIRST_USER),
            Decision::Callback,
            "an ACK's id is not the sender's"
        );
        assert_eq!(decide(&mut w, 0, wire::FIRST_USER), Decision::Duplicate);
        assert_eq!(decide(&mut w, 0, ECHO), Decision::Duplicate);
    }

    #[test]
    fn echo_and_server_loop_messages_count_only_once_accepted() {
        let mut w = window();
        for (id, dst, decision) in [(0, NOOP, Decision::ServerLoop), (1, ECHO, Decision::Echo)] {
            assert_eq!(decide(&mut w, id, dst), decision);
            // No room (queue or window): not accepted, so the resend is
            // new again.
            assert_eq!(decide(&mut w, id, dst), decision);
            accepted(&mut w, id);
            assert_eq!(decide(&mut w, id, dst), Decision::Duplicate);
        }
    }

    /// Records what `process` asks of the messenger.
    #[derive(Default)]
    struct Recorder {
        acked: Vec<u64>,
        echoed: Vec<u64>,
    }

    impl Effects for Recorder {
        fn ack(&mut self, msg_id: u64) {
            self.acked.push(msg_id);
        }
        fn settle(&mut self, _: u64, _: Instant) -> bool {
            false
        }
        fn can_echo(&mut self, _: &Payload) -> bool {
            true
        }
        fn echo(&mut self, request: Payload, _: Instant) {
            self.echoed.push(request.msg_id);
        }
        fn complete(&mut self, _: Payload) -> bool {
            false
        }
        fn deliver(&mut self, _: Payload) -> Delivery {
            Delivery::Delivered
        }
    }

    #[test]
    fn an_echo_asking_for_its_answer_at_ack_or_echo_is_acked_not_answered() {
        let mut fx = Recorder::default();
        let mut w = window();
        let now = Instant::now();
        for (id, src_cb) in [(0, ACK), (1, ECHO), (2, wire::FIRST_USER)] {
            let m = Payload {
                msg_id: id,
                src_cb,
                dst_cb: ECHO,
                body: Bytes::from_static(b"x"),
            };
            let want = if src_cb == wire::FIRST_USER {
                Outcome::Echo
            } else {
                Outcome::EchoRefused
            };
            assert_eq!(process(&mut fx, &mut w, m, now), want, "src_cb {src_cb}");
        }
        assert_eq!(fx.acked, [0, 1, 2]);
        assert_eq!(fx.echoed, [2], "only the answer to a user callback");
    }

    #[test]
    fn sparse_ids_pass_and_ids_older_than_the_window_are_refused() {
        let mut w = window();
        let user = wire::FIRST_USER;
        for id in (0..10_000).step_by(3) {
            assert_eq!(decide(&mut w, id, user), Decision::Callback, "{id}");
            assert_eq!(decide(&mut w, id, user), Decision::Duplicate, "{id}");
        }
        assert_eq!(decide(&mut w, 1, user), Decision::Stale);
        assert_eq!(decide(&mut w, 9_998, user), Decision::Callback);
    }

    // ------------------------------------------------------------------
    // A Pair: two cores joined by lossy queues on a virtual clock, running
    // `process` with the same pending set, duplicate window and callback
    // table the messenger uses (quinn-proto's `Pair`).

    /// One side: what a session and its messenger hold, in memory.
    struct Core {
        next_id: u64,
        /// Our messages not yet ACKed (or answered), to resend.
        pending: PendingSet<()>,
        /// Our requests' callbacks -> the msg_id of the request.
        callbacks: CallbackTable<u64>,
        /// The peer's ids seen.
        dedup: DedupWindow,
        /// Payloads to put on the wire.
        out: Vec<Bytes>,
        /// What our server loop was handed and has not run yet.
        server_loop: VecDeque<Payload>,
        slc_capacity: usize,
        /// Every body the server loop was handed, in order.
        handed: Vec<Bytes>,
        /// Replies that completed a callback: callback id -> body.
        replies: BTreeMap<u64, Bytes>,
        late: usize,
        outcomes: Vec<Outcome>,
    }

    const DEADLINE: Duration = Duration::from_secs(3600);
    /// The cores' resend interval.
    const RESEND: Duration = Duration::from_millis(50);

    impl Core {
        fn new(slc_capacity: usize) -> Self {
            Core {
                next_id: 0,
                pending: PendingSet::new(1 << 20, RESEND),
                callbacks: CallbackTable::new(1 << 20),
                dedup: DedupWindow::new(1 << 16),
                out: Vec::new(),
                server_loop: VecDeque::new(),
                slc_capacity,
                handed: Vec::new(),
                replies: BTreeMap::new(),
                late: 0,
                outcomes: Vec::new(),
            }
        }

        /// Sends `body` to `dst_cb`, with a callback when `request`;
        /// returns the callback's id.
        fn send(&mut self, dst_cb: u64, body: &[u8], request: bool, now: Instant) -> Option<u64> {
            let id = self.next_id;
            self.next_id += 1;
            let cb = request.then(|| self.callbacks.insert(id).expect("room"));
            let payload = wire::encode(id, cb.unwrap_or(NOOP), dst_cb, body);
            self.pending
                .insert(id, payload.clone(), now, now + DEADLINE, None)
                .expect("room");
            self.out.push(payload);
            cb
        }

        fn receive(&mut self, payload: &Bytes, now: Instant) {
            let p = wire::parse(payload).expect("well-formed");
            let mut dedup = std::mem::replace(&mut self.dedup, DedupWindow::new(1));
            let outcome = process(self, &mut dedup, p, now);
            self.dedup = dedup;
            self.outcomes.push(outcome);
        }

        /// The server loop answers what it was handed (its reply goes to
        /// the sender's callback), as `messenger serve --slc echo` does.
        fn run_server_loop(&mut self, now: Instant) {
            while let Some(m) = self.server_loop.pop_front() {
                let mut body = b"re:".to_vec();
                body.extend_from_slice(&m.body);
                self.send(m.src_cb, &body, false, now);
            }
        }

        fn resend(&mut self, now: Instant) {
            let tick = self.pending.handle_timeout(now, true);
            self.out.extend(tick.resend);
        }
    }

    impl Effects for Core {
        fn ack(&mut self, msg_id: u64) {
            self.out.push(wire::ack(msg_id));
        }

        fn settle(&mut self, msg_id: u64, now: Instant) -> bool {
            self.pending.ack_at(&msg_id, now).is_some()
        }

        fn can_echo(&mut self, _: &Payload) -> bool {
            true
        }

        fn echo(&mut self, request: Payload, now: Instant) {
            self.send(request.src_cb, &request.body, false, now);
        }

        fn complete(&mut self, reply: Payload) -> bool {
            let Some(request_id) = self.callbacks.take(reply.dst_cb) else {
                self.late += 1;
                return false;
            };
            self.pending.ack(&request_id);
            self.replies.insert(reply.dst_cb, reply.body);
            true
        }

        fn deliver(&mut self, message: Payload) -> Delivery {
            if self.server_loop.len() >= self.slc_capacity {
                return Delivery::Busy;
            }
            self.handed.push(message.body.clone());
            self.server_loop.push_back(message);
            Delivery::Delivered
        }
    }

    /// A deterministic xorshift, so a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn chance(&mut self, percent: u64) -> bool {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % 100 < percent
        }
    }

    struct Pair {
        now: Instant,
        client: Core,
        server: Core,
        /// In flight: (arrival time, to the server?, payload).
        wire: Vec<(Instant, bool, Bytes)>,
        rng: Rng,
        loss: u64,
        duplication: u64,
        latency: Duration,
    }

    impl Pair {
        fn new(seed: u64, loss: u64, duplication: u64) -> Self {
            Pair {
                now: Instant::now(),
                client: Core::new(usize::MAX),
                server: Core::new(8),
                wire: Vec::new(),
                rng: Rng(seed | 1),
                loss,
                duplication,
                latency: Duration::from_millis(5),
            }
        }

        /// Puts what each side wrote on the wire, losing and duplicating
        /// some of it.
        fn transmit(&mut self) {
            let at = self.now + self.latency;
            for (to_server, out) in [(true, &mut self.client.out), (false, &mut self.server.out)] {
                for payload in out.drain(..) {
                    if self.rng.chance(self.loss) {
                        continue;
                    }
                    if self.rng.chance(self.duplication) {
                        self.wire.push((at, to_server, payload.clone()));
                    }
                    self.wire.push((at, to_server, payload));
                }
            }
        }

        /// One step of 5 ms: deliver what arrived, run the server loop,
        /// resend what is due.
        fn step(&mut self) {
            self.transmit();
            self.now += Duration::from_millis(5);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.wire.drain(..).partition(|(at, _, _)| *at <= now);
            self.wire = later;
            for (_, to_server, payload) in due {
                let side = if to_server {
                    &mut self.server
                } else {
                    &mut self.client
                };
                side.receive(&payload, now);
            }
            self.server.run_server_loop(now);
            self.client.resend(now);
            self.server.resend(now);
        }

        fn settled(&self) -> bool {
            self.wire.is_empty()
                && self.client.pending.is_empty()
                && self.server.pending.is_empty()
                && self.client.out.is_empty()
                && self.server.out.is_empty()
        }
    }

    /// Requests to the server loop and ECHOs across a link that loses 30%
    /// and duplicates 20% of what it carries, each way: every request is
    /// answered exactly once, the server loop sees each message once,
    /// every late copy of a reply is dropped, and nothing stays unACKed.
    #[test]
    fn a_lossy_duplicating_link_delivers_everything_exactly_once() {
        let mut busy = 0;
        for seed in [1, 7, 42, 1234, 99_999] {
            let mut p = Pair::new(seed, 30, 20);
            let mut want = BTreeMap::new();
            for i in 0..200u32 {
                let (dst, body) = if i % 3 == 0 {
                    (ECHO, format!("echo-{i}"))
                } else {
                    (NOOP, format!("work-{i}"))
                };
                let cb = p.client.send(dst, body.as_bytes(), true, p.now).unwrap();
                let reply = if dst == ECHO {
                    body
                } else {
                    format!("re:{body}")
                };
                want.insert(cb, Bytes::from(reply));
                if i % 10 == 0 {
                    p.step();
                }
            }
            for _ in 0..100_000 {
                if p.settled() && p.client.replies.len() == want.len() {
                    break;
                }
                p.step();
            }
            assert_eq!(p.client.replies, want, "seed {seed}");
            assert_eq!(
                p.client.late, 0,
                "seed {seed}: a request was answered twice"
            );
            assert!(p.settled(), "seed {seed}: something stays unACKed");
            // 133 messages to the server loop, 67 ECHOs: each once.
            let mut handed = p.server.handed.clone();
            handed.sort();
            handed.dedup();
            assert_eq!(handed.len(), 133, "seed {seed}");
            assert_eq!(
                p.server.handed.len(),
                133,
                "seed {seed}: a copy was handed twice"
            );
            let echoed = p
                .server
                .outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Echo))
                .count();
            assert_eq!(echoed, 67, "seed {seed}: an ECHO was answered twice");
            assert!(
                p.server.outcomes.contains(&Outcome::Duplicate)
                    && p.client.outcomes.contains(&Outcome::Duplicate),
                "seed {seed}: duplication never exercised"
            );
            busy += p
                .server
                .outcomes
                .iter()
                .filter(|o| **o == Outcome::ServerLoopBusy)
                .count();
        }
        assert!(busy > 0, "a full server loop was never exercised");
    }

    /// A full server-loop queue refuses messages unACKed; the sender's
    /// resends deliver them once it has room, in order of resending.
    #[test]
    fn a_full_server_loop_pushes_back_through_resends() {
        let mut p = Pair::new(3, 0, 0);
        p.server.slc_capacity = 2;
        for i in 0..10 {
            p.client
                .send(NOOP, format!("m{i}").as_bytes(), false, p.now);
        }
        // The first step delivers two and refuses eight, unACKed.
        p.transmit();
        p.now += p.latency;
        let now = p.now;
        let due: Vec<_> = p.wire.drain(..).map(|(_, _, b)| b).collect();
        for b in &due {
            p.server.receive(b, now);
        }
        let busy = p
            .server
            .outcomes
            .iter()
            .filter(|o| **o == Outcome::ServerLoopBusy)
            .count();
        assert_eq!((p.server.server_loop.len(), busy), (2, 8));
        assert_eq!(p.server.out.len(), 2, "only what was delivered is ACKed");
        // The server loop drains as resends arrive; all ten get through once.
        for _ in 0..1000 {
            p.step();
            if p.settled() {
                break;
            }
        }
        let mut handed = p.server.handed.clone();
        handed.sort();
        let want: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("m{i}"))).collect();
        assert_eq!(handed, want);
        assert!(p.settled());
    }

    /// A reply to a callback that is no longer waiting (answered already,
    /// or never issued) is ACKed and dropped, and reaches nothing else.
    #[test]
    fn late_and_forged_replies_are_acked_and_dropped() {
        let now = Instant::now();
        let mut c = Core::new(8);
        let cb = c.send(NOOP, b"q", true, now).unwrap();
        c.out.clear();
        let reply = wire::encode(0, NOOP, cb, b"a");
        c.receive(&reply, now);
        assert_eq!(c.outcomes, [Outcome::Reply(true)]);
        // The same reply again is a duplicate (same msg_id) ...
        c.receive(&reply, now);
        // ... and another message to the same, now free, callback is late.
        c.receive(&wire::encode(1, NOOP, cb, b"again"), now);
        c.receive(
            &wire::encode(2, NOOP, wire::FIRST_USER + 12_345, b"forged"),
            now,
        );
        assert_eq!(
            c.outcomes,
            [
                Outcome::Reply(true),
                Outcome::Duplicate,
                Outcome::Reply(false),
                Outcome::Reply(false)
            ]
        );
        assert_eq!(c.late, 2);
        assert_eq!(c.out.len(), 4, "each is ACKed");
        assert!(c.server_loop.is_empty());
        assert_eq!(c.replies.len(), 1);
    }
}
