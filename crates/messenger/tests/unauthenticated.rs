//! With a secret set, a peer that never proves itself receives no byte
//! beyond the handshake (the listener's greeting and READY) while an
//! authenticated client is served next to it, and nothing it sends reaches
//! a callback. A listener that began a session before the proof would ACK
//! or answer what such a peer sends, or let replies and resends reach it.
//!
//! Raw DEALERs, byte-exact, on tcp and ipc:
//! - a talker: handshake, then ordinary messages (ECHO, server loop)
//!   without a proof; cut off at its first message;
//! - a pipeliner: the same messages in the same write as its handshake;
//! - a silent one: handshake, then nothing; cut at the handshake timeout.
//!
//! Each reads until its stream ends or goes quiet, and must have read
//! exactly the greeting (64 bytes) and the READY frame.

use messenger_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::raw_zmtp::{self, GREETING_LEN};
use common::{Answer, connect_as, eventually, round_trip, serve_seen, within};
use messenger::Secret;
use messenger::{Config, ListenerInfo};
use messenger_proto::wire;
use tokio::io::AsyncWriteExt;

const SECRET: &str = "only-for-friends";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Silence that counts as "nothing more is coming".
const QUIET: Duration = Duration::from_millis(1500);

fn config() -> Config {
    Config {
        auth: Some(Secret::new(SECRET)),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        ..Config::default()
    }
}

/// Ordinary messages as a DEALER frames them, no proof among them.
fn unproven_messages() -> Vec<u8> {
    let mut m = Vec::new();
    for payload in [
        "0-5-1-raw-echo",
        "1-6-0-raw-server-loop",
        "2-0-0-raw-no-reply",
        "3-7-1-raw-echo-again",
    ] {
        m.extend(raw_zmtp::message(&[b"", payload.as_bytes()]));
    }
    m
}

/// What a raw peer read, in total and past the handshake.
struct Heard {
    total: u64,
    handshake: u64,
    ended: bool,
    after: Duration,
}

/// Connects, sends its handshake (and `pipelined` right behind it), reads
/// the listener's greeting and READY, sends `then`, and reads until the
/// stream ends or is quiet for `QUIET`.
async fn raw_peer(listener: &ListenerInfo, pipelined: &[u8], then: &[u8]) -> Heard {
    let started = Instant::now();
    let mut r = raw_zmtp::dealer(&listener.endpoint, b"", pipelined).await;
    let ready = within(5, "the listener's READY", r.expect_ready()).await;
    let handshake = (GREETING_LEN + ready.wire_len) as u64;
    if !then.is_empty() {
        // The listener may already have cut us off.
        let _ = r.inner.write_all(then).await;
    }
    let (_, ended) = within(30, "the raw peer's reading", r.drain(QUIET)).await;
    Heard {
        total: r.total,
        handshake,
        ended,
        after: started.elapsed(),
    }
}

/// The module's scenario on `transport`: the talker, the pipeliner and the
/// silent peer each read exactly the handshake and are cut off (counted),
/// while an authenticated client is served and nothing of theirs reaches
/// the server loop.
async fn unproven_peers_hear_nothing(transport: &str) {
    let (server, bound, _p, seen) = serve_seen(transport, config(), Answer::Body).await;

    // An authenticated client, busy with ECHOs and server-loop requests
    // for as long as the raw peers run.
    let (client, conn) = connect_as("client", config(), &bound.endpoint, 10).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (echoes, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let busy = {
        let (client, stop) = (client.clone(), Arc::clone(&stop));
        let (echoes, requests) = (Arc::clone(&echoes), Arc::clone(&requests));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("client-{i}");
                let (cb, counter) = if i.is_multiple_of(2) {
                    (wire::ECHO, &echoes)
                } else {
                    (wire::NOOP, &requests)
                };
                let what = format!("the client's request {body}");
                round_trip(10, &client, conn, cb, body.as_bytes(), &what).await;
                counter.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    let messages = unproven_messages();
    let (talker, pipeliner, silent) = within(30, "the raw peers", async {
        tokio::join!(
            Box::pin(raw_peer(&bound, b"", &messages)),
            Box::pin(raw_peer(&bound, &messages, b"")),
            Box::pin(raw_peer(&bound, b"", b"")),
        )
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    within(15, "the client's last request", busy).await.unwrap();

    for (name, h) in [
        ("talker", &talker),
        ("pipeliner", &pipeliner),
        ("silent", &silent),
    ] {
        eprintln!(
            "{transport}: {name} read {} bytes (greeting + READY: {}); the stream {} after {:.2?}",
            h.total,
            h.handshake,
            if h.ended { "ended" } else { "went quiet" },
            h.after
        );
        assert_eq!(
            h.total, h.handshake,
            "{transport}: the {name} peer read bytes beyond the handshake"
        );
    }
    // The silent one is cut at the handshake timeout, not left open.
    assert!(
        silent.ended,
        "{transport}: the silent peer was never cut off"
    );

    eventually(5, "the cuts are counted", || {
        let s = server.stats();
        s.auth_failures >= 2 && s.handshake_timeouts >= 1
    })
    .await;
    let stats = server.stats();
    let (echoes, requests) = (
        echoes.load(Ordering::Relaxed),
        requests.load(Ordering::Relaxed),
    );
    eprintln!(
        "{transport}: the client got {echoes} ECHOs and {requests} server-loop replies meanwhile; \
         auth_failures {}, handshake_timeouts {}",
        stats.auth_failures, stats.handshake_timeouts
    );
    assert!(
        echoes > 0 && requests > 0,
        "{transport}: the client was not served"
    );
    assert_eq!(stats.auth_failures, 2, "{transport}: {stats:?}");
    assert_eq!(stats.handshake_timeouts, 1, "{transport}: {stats:?}");
    assert_eq!(stats.echoes_answered, echoes, "{transport}: {stats:?}");
    let seen = seen.bodies();
    assert_eq!(seen.len() as u64, requests, "{transport}: {seen:?}");
    assert!(
        seen.iter().all(|b| b.starts_with(b"client-")),
        "{transport}: a raw peer's message reached the server loop: {seen:?}"
    );
    client.shutdown().await;
    server.shutdown().await;
}

/// [`unproven_peers_hear_nothing`] on tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_peers_read_only_the_handshake_on_tcp() {
    unproven_peers_hear_nothing("tcp").await;
}

/// [`unproven_peers_hear_nothing`] on ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_peers_read_only_the_handshake_on_ipc() {
    unproven_peers_hear_nothing("ipc").await;
}
