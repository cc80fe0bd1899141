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

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Place, eventually, place, raw_recv, raw_send, within};
use messenger::wire::{self, Payload};
use messenger::{Config, Endpoint, Incoming, Messenger, Responder, SendError};
use zeromq::prelude::*;
use zeromq::util::PeerIdentity;
use zeromq::{DealerSocket, RouterSocket, SocketOptions};

/// Transports the `zeromq` crate shares with us (inproc is ours alone).
const TRANSPORTS: [&str; 2] = ["tcp", "ipc"];

/// Every message a server loop saw; it answers those that ask for a reply
/// with `re:{body}`.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(u64, u64, Bytes)>>>);

impl Seen {
    fn slc(&self) -> impl Fn(Incoming, Responder) + Send + Sync + 'static {
        let seen = self.clone();
        move |m: Incoming, r: Responder| {
            seen.0
                .lock()
                .unwrap()
                .push((m.msg_id, m.src_cb, m.body.clone()));
            if m.src_cb != wire::NOOP {
                let body = [b"re:".as_slice(), &m.body].concat();
                if let Err(SendError::Full) = r.try_reply(&body) {
                    tokio::spawn(async move { r.reply(body).await });
                }
            }
        }
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.0.lock().unwrap().iter().map(|m| m.2.clone()).collect()
    }

    fn all(&self) -> Vec<(u64, u64, Bytes)> {
        self.0.lock().unwrap().clone()
    }
}

fn quick() -> Config {
    Config {
        resend_interval: Some(Duration::from_millis(200)),
        ..Config::default()
    }
}

fn parse(frame: &Bytes) -> Payload {
    wire::parse(frame).unwrap_or_else(|e| panic!("malformed payload {frame:?}: {e}"))
}

// ---------------------------------------------------------------------------
// The zeromq crate's DEALER against our listener

/// A zeromq DEALER with routing id `identity`, connected to `endpoint`.
async fn zq_dealer(endpoint: &Endpoint, identity: &str) -> DealerSocket {
    let mut opts = SocketOptions::default();
    opts.peer_identity(PeerIdentity::try_from(identity.as_bytes().to_vec()).unwrap());
    let mut socket = DealerSocket::with_options(opts);
    within(5, "zeromq connect", socket.connect(&endpoint.to_string()))
        .await
        .unwrap_or_else(|e| panic!("zeromq connect to {endpoint}: {e}"));
    socket
}

/// The next `n` messages on the DEALER, each checked to be
/// `["server", "", payload]`, as payloads.
async fn from_listener(dealer: &mut DealerSocket, n: usize, what: &str) -> Vec<Payload> {
    let mut got = Vec::new();
    for _ in 0..n {
        let f = raw_recv(dealer, 5, what).await;
        assert_eq!(f.len(), 3, "{what}: {f:?}");
        assert_eq!(f[0], Bytes::from("server"), "{what}: {f:?}");
        assert!(f[1].is_empty(), "{what}: {f:?}");
        got.push(parse(&f[2]));
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
        let seen = Seen::default();
        let p = place(t);
        let server = Messenger::with_config("server", quick()).unwrap();
        let bound = within(
            5,
            "listen",
            server.listen_for_connection(&p.endpoint, "server", seen.slc()),
        )
        .await
        .unwrap_or_else(|e| panic!("{t}: listen: {e}"));
        let mut dealer = zq_dealer(&bound.endpoint, "zq-dealer").await;

        // ECHO, answered by the listener itself.
        raw_send(&mut dealer, &[b"", b"0-7-1-hello"]).await;
        let (acks, rest) =
            acks_and_rest(from_listener(&mut dealer, 2, "ECHO's ACK and reply").await);
        assert_eq!(acks, [0], "{t}");
        assert_eq!(rest.len(), 1, "{t}: {rest:?}");
        let reply = &rest[0];
        assert_eq!((reply.src_cb, reply.dst_cb), (0, 7), "{t}: {reply:?}");
        assert_eq!(reply.body, Bytes::from("hello"), "{t}");
        assert_eq!(reply.msg_id, 0, "{t}: the listener's first message to it");
        let ack = format!("{}-0-2-", reply.msg_id);
        raw_send(&mut dealer, &[b"", ack.as_bytes()]).await;
        let what = format!("{t}: our ACK of the ECHO reply settles it");
        eventually(5, &what, || server.stats().pending_messages == 0).await;
        assert!(seen.all().is_empty(), "{t}: ECHO reached the server loop");

        // A server-loop message with a reply.
        raw_send(&mut dealer, &[b"", b"1-9-0-work"]).await;
        let (acks, rest) = acks_and_rest(from_listener(&mut dealer, 2, "ACK and SLC reply").await);
        assert_eq!(acks, [1], "{t}");
        assert_eq!(rest.len(), 1, "{t}: {rest:?}");
        let reply = &rest[0];
        assert_eq!((reply.src_cb, reply.dst_cb), (0, 9), "{t}: {reply:?}");
        assert_eq!(reply.body, Bytes::from("re:work"), "{t}");
        assert_eq!(reply.msg_id, 1, "{t}");
        let ack = format!("{}-0-2-", reply.msg_id);
        raw_send(&mut dealer, &[b"", ack.as_bytes()]).await;
        let what = format!("{t}: our ACK of the SLC reply settles it");
        eventually(5, &what, || server.stats().pending_messages == 0).await;

        // Its duplicate: ACKed again, not delivered again.
        raw_send(&mut dealer, &[b"", b"1-9-0-work"]).await;
        let (acks, rest) =
            acks_and_rest(from_listener(&mut dealer, 1, "ACK of the duplicate").await);
        assert_eq!((acks, rest), (vec![1], vec![]), "{t}");
        // The server loop runs in order: once the barrier is there, a
        // second delivery of the duplicate would have shown before it.
        raw_send(&mut dealer, &[b"", b"2-0-0-barrier"]).await;
        let (acks, rest) = acks_and_rest(from_listener(&mut dealer, 1, "ACK of the barrier").await);
        assert_eq!((acks, rest), (vec![2], vec![]), "{t}");
        eventually(5, "the barrier is delivered", || seen.bodies().len() >= 2).await;
        assert_eq!(
            seen.all(),
            [(1, 9, Bytes::from("work")), (2, 0, Bytes::from("barrier"))],
            "{t}"
        );
        // Nothing else comes: no resend of what it ACKed.
        let extra = tokio::time::timeout(Duration::from_millis(500), dealer.recv()).await;
        assert!(extra.is_err(), "{t}: unexpected {extra:?}");

        let s = server.stats();
        assert_eq!(s.duplicates_dropped, 1, "{t}: {s:?}");
        assert_eq!(s.slc_delivered, 2, "{t}: {s:?}");
        assert_eq!(s.acks_sent, 4, "{t}: {s:?}");
        assert_eq!(s.acks_received, 2, "{t}: {s:?}");
        assert_eq!(s.echoes_answered, 1, "{t}: {s:?}");
        assert_eq!(s.resends, 0, "{t}: {s:?}");
        assert_eq!(s.malformed_dropped, 0, "{t}: {s:?}");
        drop(dealer);
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Our connection against the zeromq crate's ROUTER

/// A zeromq ROUTER bound on a fresh endpoint of `t`.
async fn zq_router(t: &str) -> (RouterSocket, Endpoint, Place) {
    let p = place(t);
    let url = match t {
        "tcp" => "tcp://127.0.0.1:0".to_string(),
        _ => p.endpoint.to_string(),
    };
    let mut router = RouterSocket::new();
    let bound = within(5, "zeromq bind", router.bind(&url)).await.unwrap();
    let endpoint: Endpoint = bound.to_string().parse().unwrap();
    (router, endpoint, p)
}

/// The router's identity frame, as NoisePage's ROUTER sends it.
const ROUTER_ID: &[u8] = b"zq-router";

/// Sends `payload` to our connection ("client") as NoisePage's ROUTER
/// does: `[peer, router_identity, "", payload]`.
async fn to_client(router: &mut RouterSocket, payload: &str) {
    raw_send(router, &[b"client", ROUTER_ID, b"", payload.as_bytes()]).await;
}

/// The next `n` messages at the ROUTER, each checked to be
/// `["client", "", payload]`, as payloads.
async fn from_client(router: &mut RouterSocket, n: usize, what: &str) -> Vec<Payload> {
    let mut got = Vec::new();
    for _ in 0..n {
        let f = raw_recv(router, 5, what).await;
        assert_eq!(f.len(), 3, "{what}: {f:?}");
        assert_eq!(f[0], Bytes::from("client"), "{what}: {f:?}");
        assert!(f[1].is_empty(), "{what}: {f:?}");
        got.push(parse(&f[2]));
    }
    got
}

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
        let (mut router, endpoint, _p) = zq_router(t).await;
        let seen = Seen::default();
        let client = Messenger::with_config("client", quick()).unwrap();
        let conn = within(
            5,
            "connect",
            client.make_connection_with_server_loop(&endpoint, seen.slc()),
        )
        .await
        .unwrap_or_else(|e| panic!("{t}: connect: {e}"));

        // A request, answered by the router.
        let c = client.clone();
        let req = tokio::spawn(async move { c.request(conn, wire::ECHO, "ping").await });
        let got = from_client(&mut router, 1, "the request").await;
        let m = &got[0];
        assert_eq!((m.msg_id, m.dst_cb), (0, wire::ECHO), "{t}: {m:?}");
        assert!(m.src_cb >= 4, "{t}: {m:?}");
        assert_eq!(m.body, Bytes::from("ping"), "{t}");
        to_client(&mut router, &format!("{}-0-2-", m.msg_id)).await;
        to_client(&mut router, &format!("0-0-{}-ping", m.src_cb)).await;
        let reply = within(5, "the request completes", req)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(reply.body, Bytes::from("ping"), "{t}");
        assert_eq!((reply.msg_id, reply.src_cb), (0, 0), "{t}");
        let got = from_client(&mut router, 1, "our ACK of the answer").await;
        assert_eq!(
            (got[0].msg_id, got[0].src_cb, got[0].dst_cb),
            (0, 0, wire::ACK),
            "{t}: {got:?}"
        );

        // send_confirmed completes on the router's ACK, not before.
        let c = client.clone();
        let confirmed =
            tokio::spawn(async move { c.send_confirmed(conn, wire::NOOP, "confirm me").await });
        let got = from_client(&mut router, 1, "the confirmed send").await;
        let m = &got[0];
        assert_eq!(
            (m.msg_id, m.src_cb, m.dst_cb),
            (1, 0, wire::NOOP),
            "{t}: {m:?}"
        );
        assert_eq!(m.body, Bytes::from("confirm me"), "{t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!confirmed.is_finished(), "{t}: confirmed before the ACK");
        to_client(&mut router, "1-0-2-").await;
        let r = within(5, "send_confirmed completes", confirmed)
            .await
            .unwrap();
        assert_eq!(r, Ok(1), "{t}");

        // The router to callback 0: the connection's server loop.
        to_client(&mut router, "1-5-0-to your loop").await;
        let (acks, rest) =
            acks_and_rest(from_client(&mut router, 2, "our ACK and the SLC reply").await);
        assert_eq!(acks, [1], "{t}");
        assert_eq!(rest.len(), 1, "{t}: {rest:?}");
        let r = &rest[0];
        assert_eq!((r.msg_id, r.src_cb, r.dst_cb), (2, 0, 5), "{t}: {r:?}");
        assert_eq!(r.body, Bytes::from("re:to your loop"), "{t}");
        assert_eq!(seen.all(), [(1, 5, Bytes::from("to your loop"))], "{t}");
        to_client(&mut router, "2-0-2-").await;
        let what = format!("{t}: the router's ACK settles the SLC reply");
        eventually(5, &what, || client.stats().pending_messages == 0).await;

        // Its duplicate: ACKed again, not delivered again; then a barrier.
        to_client(&mut router, "1-5-0-to your loop").await;
        let (acks, rest) = acks_and_rest(from_client(&mut router, 1, "ACK of the duplicate").await);
        assert_eq!((acks, rest), (vec![1], vec![]), "{t}");
        to_client(&mut router, "2-0-0-barrier").await;
        let (acks, rest) = acks_and_rest(from_client(&mut router, 1, "ACK of the barrier").await);
        assert_eq!((acks, rest), (vec![2], vec![]), "{t}");
        eventually(5, "the barrier is delivered", || seen.bodies().len() >= 2).await;
        assert_eq!(
            seen.bodies(),
            [Bytes::from("to your loop"), Bytes::from("barrier")],
            "{t}"
        );
        let extra = tokio::time::timeout(Duration::from_millis(500), router.recv()).await;
        assert!(extra.is_err(), "{t}: unexpected {extra:?}");

        let s = client.stats();
        assert_eq!(s.duplicates_dropped, 1, "{t}: {s:?}");
        assert_eq!(s.acks_received, 3, "{t}: {s:?}");
        assert_eq!(s.acks_sent, 4, "{t}: {s:?}");
        assert_eq!(s.resends, 0, "{t}: {s:?}");
        assert_eq!(s.pending_callbacks, 0, "{t}: {s:?}");
        assert_eq!(s.malformed_dropped, 0, "{t}: {s:?}");
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
        let (_router, endpoint, _p) = zq_router(t).await;
        let client = Messenger::new("client").unwrap();
        let conn = within(5, "connect", client.make_connection(&endpoint))
            .await
            .unwrap_or_else(|e| panic!("{t}: connect: {e}"));
        assert!(
            client.is_connected(conn),
            "{t}: make_connection returned Ok but is_connected is false"
        );
        client.shutdown().await;
    }
}
