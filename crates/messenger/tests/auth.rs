//! Shared-secret authentication: only holders of the secret reach our
//! callbacks; wrong, replayed or missing proofs get the peer cut off.

use messenger_testkit as common;

use std::time::Duration;

use bytes::Bytes;
use common::{Answer, Place, RAW_TRANSPORTS, Seen, connect, eventually, round_trip, serve_seen};
use messenger::{Config, ListenerInfo, Messenger};
use messenger_proto::auth::{self, Secret};
use messenger_proto::wire;
use zeromq::prelude::*;
use zeromq::{DealerSocket, ZmqMessage};

fn with_secret(secret: &str) -> Config {
    Config {
        auth: Some(Secret::new(secret)),
        handshake_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

/// A listener requiring `secret`, recording what its server loop sees
/// (and answering with the body).
async fn server(transport: &str, secret: &str) -> (Messenger, ListenerInfo, Place, Seen) {
    serve_seen(transport, with_secret(secret), Answer::Body).await
}

fn url(info: &ListenerInfo) -> String {
    info.endpoint.to_string()
}

async fn raw_send(s: &mut DealerSocket, payload: String) {
    let m = ZmqMessage::try_from(vec![Bytes::new(), Bytes::from(payload)]).unwrap();
    s.send(m).await.unwrap();
}

/// Waits `ms` (wall time: nothing may come) for a payload on a raw DEALER;
/// None if nothing comes.
async fn raw_recv(s: &mut DealerSocket, ms: u64) -> Option<Bytes> {
    match tokio::time::timeout(Duration::from_millis(ms), s.recv()).await {
        Ok(Ok(m)) => m.into_vec().pop(),
        _ => None,
    }
}

/// A client holding the secret is served (server loop and ECHO), and its
/// proof never reaches the server loop.
#[tokio::test]
async fn the_right_secret_gets_through_on_tcp_and_ipc() {
    for t in RAW_TRANSPORTS {
        let (server, info, _p, seen) = server(t, "s3cret").await;
        let (client, conn) = connect(with_secret("s3cret"), &info.endpoint).await;
        round_trip(5, &client, conn, wire::NOOP, b"hi", t).await;
        round_trip(5, &client, conn, wire::ECHO, b"e", t).await;
        assert_eq!(seen.len(), 1, "{t}: the proof itself is not delivered");
        assert_eq!(server.stats().auth_failures, 0, "{t}");
        server.shutdown().await;
    }
}

/// A client with the wrong secret is cut off, gets no reply, and nothing
/// of its reaches the server loop.
#[tokio::test]
async fn a_wrong_secret_is_cut_off_and_delivers_nothing() {
    for t in RAW_TRANSPORTS {
        let (server, info, _p, seen) = server(t, "right").await;
        let client = Messenger::builder()
            .identity("client")
            .config(with_secret("wrong"))
            .build()
            .unwrap();
        // The cut may come during or right after the handshake.
        if let Ok(conn) = client.make_connection(&info.endpoint).await {
            let r = client
                .request_with_timeout(conn, wire::NOOP, b"x", Duration::from_millis(800))
                .await;
            assert!(r.is_err(), "{t}: a wrong secret got a reply");
        }
        eventually(5, "failure counted", || server.stats().auth_failures >= 1).await;
        assert_eq!(seen.len(), 0, "{t}");
        client.shutdown().await;
        server.shutdown().await;
    }
}

/// A peer that sends an ordinary message first is cut off unanswered, and
/// one that sends nothing at the handshake timeout; nothing of theirs
/// reaches a callback.
#[tokio::test]
async fn without_a_proof_nothing_reaches_a_callback_and_the_peer_is_dropped() {
    let (server, info, _p, seen) = server("tcp", "k").await;
    // A peer that sends an ordinary message first: cut at once.
    let mut raw = DealerSocket::new();
    raw.connect(&url(&info)).await.unwrap();
    raw_send(&mut raw, "0-0-0-sneaky".into()).await;
    raw_send(&mut raw, "1-0-1-echo?".into()).await;
    assert_eq!(
        raw_recv(&mut raw, 500).await,
        None,
        "an unauthenticated peer got an answer"
    );
    // A peer that sends nothing: cut at the handshake timeout.
    let mut quiet = DealerSocket::new();
    quiet.connect(&url(&info)).await.unwrap();
    eventually(5, "both dropped", || {
        let s = server.stats();
        s.auth_failures >= 1 && s.handshake_timeouts >= 1
    })
    .await;
    assert_eq!(seen.len(), 0);
    assert_eq!(server.stats().echoes_answered, 0);
}

/// A proof is good once: its first use is served, the same proof from
/// another connection is cut off unanswered and counted.
#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let (server, info, _p, _seen) = server("tcp", "k").await;
    let proof = auth::proof(&Secret::new("k")).unwrap();
    // First use: accepted, and the peer is served.
    let mut first = DealerSocket::new();
    first.connect(&url(&info)).await.unwrap();
    raw_send(&mut first, format!("0-0-3-{proof}")).await;
    raw_send(&mut first, "1-0-1-ping".into()).await;
    let mut got_echo = false;
    for _ in 0..4 {
        match raw_recv(&mut first, 2000).await {
            Some(p) if p.ends_with(b"-ping") => {
                got_echo = true;
                break;
            }
            Some(_) => continue, // ACKs
            None => break,
        }
    }
    assert!(got_echo, "the first use of the proof was refused");
    // Same proof again from another connection: cut off, not served.
    let mut second = DealerSocket::new();
    second.connect(&url(&info)).await.unwrap();
    raw_send(&mut second, format!("0-0-3-{proof}")).await;
    raw_send(&mut second, "1-0-1-again".into()).await;
    assert_eq!(
        raw_recv(&mut second, 800).await,
        None,
        "a replayed proof was accepted"
    );
    eventually(5, "replay counted", || server.stats().auth_failures >= 1).await;
}
