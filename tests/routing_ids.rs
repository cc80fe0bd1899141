//! Routing ids on a listener: a connection announcing the Identity of a
//! live peer is refused (ZMTP ERROR, then the end of the stream), counted
//! in `routing_id_conflicts`, and the live peer keeps its session and gets
//! every reply. A ROUTER that handed the id over to the newcomer (libzmq's
//! ROUTER_HANDOVER) would send the live peer's replies to the intruder.
//!
//! tcp and ipc with raw intruders (byte-exact: greeting, then ERROR, then
//! nothing) and intruders on our own API; inproc through the API only.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Place, connect_as, eventually, raw_zmtp, round_trip, serve, within};
use messenger::{
    Config, ConnectError, ConnectionId, Incoming, ListenerInfo, Messenger, Responder, wire,
};

/// Intruder rounds; each runs a raw intruder and an API intruder while a
/// batch of the live peer's requests is in flight.
const ROUNDS: usize = 10;
/// Requests of the live peer per round.
const PER_ROUND: usize = 10;

type Seen = Arc<Mutex<Vec<(Bytes, Bytes)>>>;

/// A listener whose server loop records (peer, body) and replies with the
/// body.
async fn server(transport: &str) -> (Messenger, ListenerInfo, Place, Seen) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let slc = move |m: Incoming, r: Responder| {
        s.lock().unwrap().push((m.peer.clone(), m.body.clone()));
        let _ = r.try_reply(&m.body);
    };
    let (server, bound, p) = serve(transport, Config::default(), slc).await;
    (server, bound, p, seen)
}

/// Alice, the live peer, connected to `listener`.
async fn connect_alice(listener: &ListenerInfo) -> (Messenger, ConnectionId) {
    connect_as("alice", Config::default(), &listener.endpoint, 10).await
}

/// A second messenger "alice" trying to connect to `listener`.
async fn twin_connects(listener: &ListenerInfo) -> (Messenger, Result<ConnectionId, ConnectError>) {
    let twin = Messenger::new("alice").unwrap();
    let r = within(
        10,
        "the twin's make_connection",
        twin.make_connection(&listener.endpoint),
    )
    .await;
    (twin, r)
}

/// How the listener answered a raw DEALER announcing `identity`.
#[derive(Debug)]
enum Answer {
    /// Its READY: accepted.
    Ready,
    /// ERROR with this reason, then the stream ended with nothing more.
    Refused(String),
}

/// A raw DEALER announcing `identity`: reads the listener's greeting and
/// its answer; after an ERROR, checks that nothing follows and the stream
/// ends.
async fn raw_hello(listener: &ListenerInfo, identity: &[u8]) -> Answer {
    let mut r = raw_zmtp::dealer(&listener.endpoint, identity, b"").await;
    let answer = within(5, "the listener's answer", r.frame())
        .await
        .unwrap()
        .expect("a command after the greeting, not the end");
    match answer.command_name() {
        Some(b"READY") => Answer::Ready,
        Some(b"ERROR") => {
            // "\x05ERROR", a one-octet reason length, the reason.
            let reason = String::from_utf8_lossy(answer.body.get(7..).unwrap_or_default());
            let (more, ended) =
                within(10, "the end after ERROR", r.drain(Duration::from_secs(3))).await;
            assert_eq!(more, 0, "bytes after ERROR");
            assert!(ended, "the stream did not end after ERROR");
            Answer::Refused(reason.into_owned())
        }
        _ => panic!("expected READY or ERROR, got {answer:?}"),
    }
}

async fn live_peer_keeps_its_id(transport: &str) {
    let (server, bound, _p, seen) = server(transport).await;
    let (alice, conn) = connect_alice(&bound).await;
    let mut sent = 0;
    for round in 0..ROUNDS {
        let batch = futures::future::join_all((0..PER_ROUND).map(|i| {
            let body = format!("alice-{}", round * PER_ROUND + i);
            let alice = &alice;
            async move {
                let reply = alice
                    .request_with_timeout(
                        conn,
                        wire::NOOP,
                        body.as_bytes(),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{transport}: alice's request {body}: {e}"));
                assert_eq!(reply.body.as_ref(), body.as_bytes(), "{transport}");
            }
        }));
        let raw = raw_hello(&bound, b"alice");
        let api = async {
            let (twin, r) = twin_connects(&bound).await;
            twin.shutdown().await;
            r
        };
        // Boxed: debug builds lay these large futures out on the stack.
        let (_, raw, api) = within(30, "a round", async {
            tokio::join!(Box::pin(batch), Box::pin(raw), Box::pin(api))
        })
        .await;
        sent += PER_ROUND;
        match raw {
            Answer::Refused(reason) => {
                if round == 0 {
                    eprintln!("{transport}: the raw intruder was refused: ERROR {reason:?}");
                }
            }
            Answer::Ready => panic!("{transport}: a raw intruder took the live peer's id"),
        }
        match api {
            Err(e) => {
                if round == 0 {
                    eprintln!("{transport}: the API intruder's make_connection: {e}");
                }
            }
            Ok(_) => panic!("{transport}: a second \"alice\" connected while alice is live"),
        }
    }
    // Counted as the refused connection closes, just after its ERROR left.
    eventually(5, "every refusal counted", || {
        server.stats().routing_id_conflicts >= 2 * ROUNDS as u64
    })
    .await;
    let stats = server.stats();
    assert_eq!(
        stats.routing_id_conflicts,
        2 * ROUNDS as u64,
        "{transport}: {stats:?}"
    );
    let astats = alice.stats();
    assert_eq!(
        astats.reconnects, 0,
        "{transport}: alice lost her session: {astats:?}"
    );
    assert!(alice.is_connected(conn), "{transport}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            sent,
            "{transport}: the server loop saw {seen:?}"
        );
        assert!(
            seen.iter().all(|(peer, _)| peer.as_ref() == b"alice"),
            "{transport}: {seen:?}"
        );
    }
    eprintln!(
        "{transport}: {sent} requests answered, {} intruders refused",
        stats.routing_id_conflicts
    );

    // Once alice is gone her id is free again.
    alice.shutdown().await;
    within(10, "the id is free after alice left", async {
        loop {
            match raw_hello(&bound, b"alice").await {
                Answer::Ready => break,
                Answer::Refused(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peers_identity_is_refused_on_tcp() {
    live_peer_keeps_its_id("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peers_identity_is_refused_on_ipc() {
    live_peer_keeps_its_id("ipc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peers_identity_is_refused_on_inproc() {
    let (server, bound, _p, seen) = server("inproc").await;
    let (alice, conn) = connect_alice(&bound).await;
    round_trip(10, &alice, conn, wire::NOOP, b"before", "alice before").await;

    let (twin, r) = twin_connects(&bound).await;
    match r {
        Err(e) => eprintln!("inproc: the twin's make_connection: {e}"),
        Ok(_) => panic!("a second \"alice\" connected over inproc while alice is live"),
    }
    eprintln!(
        "inproc: routing_id_conflicts {}",
        server.stats().routing_id_conflicts
    );

    // Alice keeps her session and her replies.
    for i in 0..PER_ROUND {
        let body = format!("after-{i}");
        round_trip(10, &alice, conn, wire::NOOP, body.as_bytes(), "alice after").await;
    }
    assert!(alice.is_connected(conn));
    assert_eq!(alice.stats().reconnects, 0);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), PER_ROUND + 1, "{seen:?}");
        assert!(seen.iter().all(|(peer, _)| peer.as_ref() == b"alice"));
    }

    // Once alice is gone the twin gets in.
    alice.shutdown().await;
    let c = within(10, "the twin connects after alice left", async {
        loop {
            match twin.make_connection(&bound.endpoint).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    round_trip(10, &twin, c, wire::NOOP, b"twin", "the twin is served").await;
    twin.shutdown().await;
    server.shutdown().await;
}
