//! Interop with the `zeromq` crate, an independent ZMTP implementation
//! (it speaks ZMTP 3.0), in both directions on tcp and ipc:
//!
//! - its DEALER against our listener: ECHO answered, a server-loop message
//!   delivered once and replied to, a duplicate ACKed again but not
//!   delivered again, our ACKs and its ACKs arriving;
//! - our connection against its ROUTER playing NoisePage's ROUTER (it
//!   sends `[peer, router_identity, "", payload]`): a request answered,
//!   our ACKs arriving, its ACKs settling `send_confirmed`, its messages to
//!   callback 0 reaching the connection's server loop.
//!
//! Every wait is bounded.

use messenger_testkit as common;
use messenger_testkit::assert_stats;

use std::time::Duration;

use bytes::Bytes;
use common::{
    Answer, RAW_TRANSPORTS as TRANSPORTS, Seen, connect, eventually, expect_reply, raw_dealer,
    raw_payload, raw_router, raw_send, serve_seen, spawn_request, within,
};
use messenger::{Config, Messenger};
use messenger_proto::wire::{self, Payload};
use zeromq::prelude::*;
use zeromq::{DealerSocket, RouterSocket};

/// What a server loop saw: (msg_id, src_cb, body) of each message.
fn seen_ids(seen: &Seen) -> Vec<(u64, u64, Bytes)> {
    seen.all()
        .into_iter()
        .map(|g| (g.msg_id, g.src_cb, g.body))
        .collect()
}

fn quick() -> Config {
    Config {
        resend_interval: Some(Duration::from_millis(200)),
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Both directions: a zeromq socket facing one of our sides

/// The router's identity frame, as NoisePage's ROUTER sends it.
const ROUTER_ID: &[u8] = b"zq-router";

/// A zeromq socket facing one of our sides, with that side's framing: a
/// DEALER facing our listener ("server"), a ROUTER playing NoisePage's
/// facing our connection ("client").
trait Facing {
    /// Sends one payload.
    async fn send_payload(&mut self, payload: &str);
    /// The next `n` messages, each checked to come from our side, as
    /// payloads.
    async fn payloads(&mut self, n: usize, what: &str) -> Vec<Payload>;
}

impl Facing for DealerSocket {
    /// `["", payload]`.
    async fn send_payload(&mut self, payload: &str) {
        raw_send(self, &[b"", payload.as_bytes()]).await;
    }

    /// Each checked to be `["server", "", payload]`.
    async fn payloads(&mut self, n: usize, what: &str) -> Vec<Payload> {
        from_peer(self, "server", n, what).await
    }
}

impl Facing for RouterSocket {
    /// To our connection as NoisePage's ROUTER sends:
    /// `[peer, router_identity, "", payload]`.
    async fn send_payload(&mut self, payload: &str) {
        raw_send(self, &[b"client", ROUTER_ID, b"", payload.as_bytes()]).await;
    }

    /// Each checked to be `["client", "", payload]`.
    async fn payloads(&mut self, n: usize, what: &str) -> Vec<Payload> {
        from_peer(self, "client", n, what).await
    }
}

/// The next `n` messages on a zeromq socket, each checked to be
/// `[peer, "", payload]`, as payloads.
async fn from_peer<S: SocketRecv + Send>(
    socket: &mut S,
    peer: &str,
    n: usize,
    what: &str,
) -> Vec<Payload> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(raw_payload(socket, peer, what).await);
    }
    got
}

/// Splits ACKs (their msg_ids) from other messages.
fn acks_and_rest(got: Vec<Payload>) -> (Vec<u64>, Vec<Payload>) {
    let (acks, rest): (Vec<_>, Vec<_>) = got.into_iter().partition(|p| p.dst_cb == wire::ACK);
    for a in &acks {
        assert_eq!((a.src_cb, a.body.len()), (0, 0), "an ACK: {a:?}");
    }
    (acks.into_iter().map(|a| a.msg_id).collect(), rest)
}

/// Sends `payload` (msg_id `msg_id`); expects its ACK and one other
/// message, in either order, and returns that message.
async fn ack_and_reply(
    peer: &mut impl Facing,
    payload: &str,
    msg_id: u64,
    what: &str,
    t: &str,
) -> Payload {
    peer.send_payload(payload).await;
    let (acks, rest) = acks_and_rest(peer.payloads(2, what).await);
    assert_eq!(acks, [msg_id], "{t}");
    assert_eq!(rest.len(), 1, "{t}: {rest:?}");
    rest.into_iter().next().unwrap()
}

/// ACKs our side's message `msg_id` and waits until `ours` holds nothing
/// unACKed.
async fn ack_and_settle(peer: &mut impl Facing, msg_id: u64, ours: &Messenger, what: &str) {
    peer.send_payload(&format!("{msg_id}-0-2-")).await;
    eventually(5, what, || ours.stats().pending_messages == 0).await;
}

/// Sends `duplicate` (msg_id 1, delivered already) again and then
/// `2-0-0-barrier`: each is ACKed, nothing else comes back, and the
/// barrier reaches the server loop. The server loop runs in order: once
/// the barrier is there, a second delivery of the duplicate would have
/// shown before it.
async fn duplicate_then_barrier(peer: &mut impl Facing, duplicate: &str, seen: &Seen, t: &str) {
    peer.send_payload(duplicate).await;
    let (acks, rest) = acks_and_rest(peer.payloads(1, "ACK of the duplicate").await);
    assert_eq!((acks, rest), (vec![1], vec![]), "{t}");
    peer.send_payload("2-0-0-barrier").await;
    let (acks, rest) = acks_and_rest(peer.payloads(1, "ACK of the barrier").await);
    assert_eq!((acks, rest), (vec![2], vec![]), "{t}");
    eventually(5, "the barrier is delivered", || seen.bodies().len() >= 2).await;
}

/// Nothing else comes within 500 ms (wall time: longer than the 200 ms
/// resend interval): no resend of what was ACKed.
async fn nothing_more(socket: &mut impl SocketRecv, t: &str) {
    let extra = tokio::time::timeout(Duration::from_millis(500), socket.recv()).await;
    assert!(extra.is_err(), "{t}: unexpected {extra:?}");
}

// ---------------------------------------------------------------------------
// The zeromq crate's DEALER against our listener

/// The zeromq crate's DEALER ("zq-dealer") against our listener ("server"):
/// - ECHO `0-7-1-hello`: ACK of 0 and the reply `{id}-0-7-hello`, which
///   it ACKs: the listener holds nothing unACKed after;
/// - `1-9-0-work` to the server loop: ACKed, delivered once, answered
///   `re:work` to callback 9, which it ACKs;
/// - the same `1-9-0-work` again: ACKed again, not delivered again;
/// - `2-0-0-barrier`: ACKed and delivered after `work`, nothing between.
#[tokio::test]
async fn zeromq_dealer_against_our_listener() {
    for t in TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, quick(), Answer::Re).await;
        let mut dealer = raw_dealer(&bound.endpoint, "zq-dealer").await;

        // ECHO, answered by the listener itself.
        let what = "ECHO's ACK and reply";
        let reply = ack_and_reply(&mut dealer, "0-7-1-hello", 0, what, t).await;
        assert_eq!((reply.src_cb, reply.dst_cb), (0, 7), "{t}: {reply:?}");
        assert_eq!(reply.body, Bytes::from("hello"), "{t}");
        assert_eq!(reply.msg_id, 0, "{t}: the listener's first message to it");
        let what = format!("{t}: our ACK of the ECHO reply settles it");
        ack_and_settle(&mut dealer, reply.msg_id, &server, &what).await;
        assert!(seen.is_empty(), "{t}: ECHO reached the server loop");

        // A server-loop message with a reply.
        let reply = ack_and_reply(&mut dealer, "1-9-0-work", 1, "ACK and SLC reply", t).await;
        assert_eq!((reply.src_cb, reply.dst_cb), (0, 9), "{t}: {reply:?}");
        assert_eq!(reply.body, Bytes::from("re:work"), "{t}");
        assert_eq!(reply.msg_id, 1, "{t}");
        let what = format!("{t}: our ACK of the SLC reply settles it");
        ack_and_settle(&mut dealer, reply.msg_id, &server, &what).await;

        // Its duplicate: ACKed again, not delivered again; then a barrier.
        duplicate_then_barrier(&mut dealer, "1-9-0-work", &seen, t).await;
        assert_eq!(
            seen_ids(&seen),
            [(1, 9, Bytes::from("work")), (2, 0, Bytes::from("barrier"))],
            "{t}"
        );
        nothing_more(&mut dealer, t).await;

        assert_stats!(
            server.stats(),
            t,
            duplicates_dropped == 1,
            slc_delivered == 2,
            acks_sent == 4,
            acks_received == 2,
            echoes_answered == 1,
            resends == 0,
            malformed_dropped == 0
        );
        drop(dealer);
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Our connection against the zeromq crate's ROUTER

/// Our connection ("client", with a server loop) against the zeromq
/// crate's ROUTER playing NoisePage's:
/// - `request(conn, ECHO, "ping")` arrives as `0-{cb}-1-ping`; the router
///   ACKs it and answers `0-0-{cb}-ping`: the request completes, and our
///   ACK of the answer (`0-0-2-`) reaches the router;
/// - `send_confirmed` waits until the router's ACK, then returns its msg_id;
/// - the router's `1-5-0-to your loop` reaches the connection's server
///   loop once; our ACK and the loop's `re:` reply reach the router, whose
///   ACK settles the reply; its duplicate is ACKed again, not delivered.
#[tokio::test]
async fn our_connection_against_a_zeromq_router() {
    for t in TRANSPORTS {
        let (mut router, endpoint, _p) = raw_router(t).await;
        let seen = Seen::default();
        let client = Messenger::builder()
            .identity("client")
            .config(quick())
            .build()
            .unwrap();
        let conn = within(
            5,
            "connect",
            client.make_connection_with_server_loop(&endpoint, seen.slc()),
        )
        .await
        .unwrap_or_else(|e| panic!("{t}: connect: {e}"));

        // A request, answered by the router.
        let req = spawn_request(&client, conn, wire::ECHO, "ping");
        let got = router.payloads(1, "the request").await;
        let m = &got[0];
        assert_eq!((m.msg_id, m.dst_cb), (0, wire::ECHO), "{t}: {m:?}");
        assert!(m.src_cb >= 4, "{t}: {m:?}");
        assert_eq!(m.body, Bytes::from("ping"), "{t}");
        router.send_payload(&format!("{}-0-2-", m.msg_id)).await;
        router.send_payload(&format!("0-0-{}-ping", m.src_cb)).await;
        let reply = expect_reply(req, b"ping", &format!("{t}: the request completes")).await;
        assert_eq!((reply.msg_id, reply.src_cb), (0, 0), "{t}");
        let got = router.payloads(1, "our ACK of the answer").await;
        assert_eq!(
            (got[0].msg_id, got[0].src_cb, got[0].dst_cb),
            (0, 0, wire::ACK),
            "{t}: {got:?}"
        );

        // send_confirmed completes on the router's ACK, not before.
        let c = client.clone();
        let confirmed =
            tokio::spawn(async move { c.send_confirmed(conn, wire::NOOP, "confirm me").await });
        let got = router.payloads(1, "the confirmed send").await;
        let m = &got[0];
        assert_eq!(
            (m.msg_id, m.src_cb, m.dst_cb),
            (1, 0, wire::NOOP),
            "{t}: {m:?}"
        );
        assert_eq!(m.body, Bytes::from("confirm me"), "{t}");
        // Nothing to await for "not yet": 50 ms of wall time to confirm
        // wrongly.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!confirmed.is_finished(), "{t}: confirmed before the ACK");
        router.send_payload("1-0-2-").await;
        let r = within(5, "send_confirmed completes", confirmed)
            .await
            .unwrap();
        assert_eq!(r, Ok(1), "{t}");

        // The router to callback 0: the connection's server loop.
        let what = "our ACK and the SLC reply";
        let r = ack_and_reply(&mut router, "1-5-0-to your loop", 1, what, t).await;
        assert_eq!((r.msg_id, r.src_cb, r.dst_cb), (2, 0, 5), "{t}: {r:?}");
        assert_eq!(r.body, Bytes::from("re:to your loop"), "{t}");
        assert_eq!(
            seen_ids(&seen),
            [(1, 5, Bytes::from("to your loop"))],
            "{t}"
        );
        let what = format!("{t}: the router's ACK settles the SLC reply");
        ack_and_settle(&mut router, r.msg_id, &client, &what).await;

        // Its duplicate: ACKed again, not delivered again; then a barrier.
        duplicate_then_barrier(&mut router, "1-5-0-to your loop", &seen, t).await;
        assert_eq!(
            seen.bodies(),
            [Bytes::from("to your loop"), Bytes::from("barrier")],
            "{t}"
        );
        nothing_more(&mut router, t).await;

        assert_stats!(
            client.stats(),
            t,
            duplicates_dropped == 1,
            acks_received == 3,
            acks_sent == 4,
            resends == 0,
            pending_callbacks == 0,
            malformed_dropped == 0
        );
        drop(router);
        client.shutdown().await;
    }
}

/// `is_connected` right after `make_connection` returned: the handshake is
/// done and sends go straight to the peer, so the link is up. (With the
/// zeromq crate as the data path this held; it is checked here against the
/// crate's ROUTER, before the runtime runs anything else.)
#[tokio::test]
async fn a_connection_is_up_when_make_connection_returns() {
    for t in TRANSPORTS {
        let (_router, endpoint, _p) = raw_router(t).await;
        let (client, conn) = connect(Config::default(), &endpoint).await;
        assert!(
            client.is_connected(conn),
            "{t}: make_connection returned Ok but is_connected is false"
        );
        client.shutdown().await;
    }
}
