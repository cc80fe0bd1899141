//! Hostile peers against the ZMTP engine's limits: a peer declaring a huge
//! frame, sending garbage or stalling its handshake is cut off; a listener
//! takes no more than its connection limit and stops reading a peer that
//! does not read; the process and every other peer live on.

use messenger_testkit as common;

use std::time::Duration;

use common::raw_zmtp::{self, LONG, RawListener, dial};
use common::{RAW_TRANSPORTS, connect, connect_as, eventually, no_slc, round_trip, serve, within};
use messenger::{Config, Messenger};
use messenger_proto::wire;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Greeting (ZMTP 3.0), READY, then one long data frame header declaring
/// 2^40 bytes: 80 bytes or so on the wire.
fn one_tebibyte_attack(socket_type: &str) -> Vec<u8> {
    let mut a = raw_zmtp::hello(0, socket_type, b"");
    a.push(LONG);
    a.extend((1u64 << 40).to_be_bytes());
    a
}

/// Writes the attack and waits until the other side closes the stream.
async fn attack_and_expect_cutoff<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 1024];
    within(5, "peer cut off", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // its greeting and READY
            }
        }
    })
    .await;
}

/// A frame header declaring 1 TiB cuts its peer off at once (a guard
/// rejection); a client connected before, and a new one, are still served.
#[tokio::test]
async fn one_tebibyte_frame_header_is_refused_and_the_listener_lives_on() {
    for t in RAW_TRANSPORTS {
        let (server, bound, _p) = serve(t, Config::default(), no_slc).await;
        // A well-behaved client connected before the attack keeps working after it.
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        round_trip(5, &client, conn, wire::ECHO, b"before", t).await;

        let attack = one_tebibyte_attack("DEALER");
        attack_and_expect_cutoff(dial(&bound.endpoint).await, &attack).await;
        assert_eq!(server.stats().guard_rejections, 1, "{t}");
        let after = format!("{t}: echo after");
        round_trip(5, &client, conn, wire::ECHO, b"after", &after).await;
        // A new client can still connect, too.
        let (late, c2) = connect_as("late", Config::default(), &bound.endpoint, 5).await;
        round_trip(5, &late, c2, wire::ECHO, b"x", "new client").await;
        server.shutdown().await;
    }
}

/// The same attack from a ROUTER our connection dialled: we cut it off,
/// count it, and go on serving other peers.
#[tokio::test]
async fn a_hostile_router_cannot_abort_our_connection_side() {
    let (listener, ep, _p) = RawListener::bind("tcp").await;
    let attacker = tokio::spawn(async move {
        let mut s = listener.accept().await;
        s.write_all(&one_tebibyte_attack("ROUTER")).await.unwrap();
        // Hold the stream until the victim cuts it.
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let client = Messenger::builder().identity("victim").build().unwrap();
    // The attack may land during the handshake (connect fails) or right
    // after it (the link drops): either way we cut the peer and live on.
    let conn = client.make_connection(&ep).await;
    within(5, "attacker cut off", attacker).await.unwrap();
    eventually(5, "rejection counted", || {
        client.stats().guard_rejections == 1
    })
    .await;
    if let Ok(conn) = conn {
        eventually(5, "link down", || !client.is_connected(conn)).await;
    }
    // The process is alive and the messenger still serves other peers.
    let (_server, bound, _p) = serve("inproc", Config::default(), no_slc).await;
    let c = within(5, "connect", client.make_connection(&bound.endpoint))
        .await
        .unwrap();
    round_trip(5, &client, c, wire::ECHO, b"alive", "echo").await;
}

/// Garbage instead of a greeting is cut off at once; half a greeting and
/// then silence at the handshake timeout; each counted.
#[tokio::test]
async fn garbage_or_a_stalled_handshake_is_dropped() {
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (server, bound, _p) = serve("tcp", config, no_slc).await;
    // Garbage instead of a greeting: cut off at once.
    let s = dial(&bound.endpoint).await;
    attack_and_expect_cutoff(s, b"GET / HTTP/1.1\r\n\r\n").await;
    // Half a greeting, then silence: cut off at the handshake timeout.
    let s = dial(&bound.endpoint).await;
    attack_and_expect_cutoff(s, &raw_zmtp::greeting(0)[..20]).await;
    let st = server.stats();
    assert_eq!(st.guard_rejections, 1, "{st:?}");
    assert_eq!(st.handshake_timeouts, 1, "{st:?}");
}

/// A listener at `max_connections_per_listener` serves no third peer (and
/// counts the hit); once one leaves, the waiting peer is accepted and
/// served.
#[tokio::test]
async fn the_connection_limit_is_enforced_and_accepts_resume() {
    let config = Config {
        max_connections_per_listener: 2,
        // The limit alone (tests/admission.rs has idle peers giving way).
        evict_idle_after: None,
        ..Config::default()
    };
    let (server, bound, _p) = serve("tcp", config, no_slc).await;
    let (a, ca) = connect_as("a", Config::default(), &bound.endpoint, 5).await;
    let (b, cb) = connect_as("b", Config::default(), &bound.endpoint, 5).await;
    round_trip(5, &a, ca, wire::ECHO, b"a", "a").await;
    round_trip(5, &b, cb, wire::ECHO, b"b", "b").await;
    // A third peer waits in the backlog: its TCP connect succeeds but nobody
    // relays it, so its ZMTP handshake cannot finish while the others stay.
    let c = Messenger::builder()
        .identity("c")
        .config(Config {
            connect_timeout: Duration::from_secs(20),
            ..Config::default()
        })
        .build()
        .unwrap();
    let endpoint = bound.endpoint.clone();
    let c2 = c.clone();
    let mut third = tokio::spawn(async move { c2.make_connection(&endpoint).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "third peer served past the limit"
    );
    eventually(5, "limit reported", || {
        server.stats().connection_limit_hits >= 1
    })
    .await;
    // One leaves: the third is accepted and served.
    a.shutdown().await;
    let cc = within(10, "c accepted after a left", third)
        .await
        .unwrap()
        .unwrap();
    round_trip(10, &c, cc, wire::ECHO, b"c", "c served").await;
}

/// ECHO requests with 1 KiB bodies as a DEALER writes them: `["", payload]`.
fn echo_requests(first_id: u64, count: u64) -> Vec<u8> {
    let body = vec![b'x'; 1024];
    let mut out = Vec::new();
    for id in first_id..first_id + count {
        let payload = wire::encode(id, 5, wire::ECHO, &body);
        out.extend(raw_zmtp::message(&[b"", &payload]));
    }
    out
}

/// A peer that sends ECHO requests as fast as it can and never reads the
/// replies. Each request makes the listener queue an ACK and a reply
/// towards it; without back-pressure the listener would read it forever
/// and queue up to the crate's 100,000 messages per peer (and as many per
/// peer again for every other such peer). The listener must stop reading
/// it once writes towards it stall, so the peer's own writes block after a
/// few socket buffers' worth, while another client is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_not_read_either() {
    const BATCH: u64 = 1000; // about 1 MiB of requests
    const LIMIT: u64 = 256 << 20;
    let (server, bound, _p) = serve("tcp", Config::default(), no_slc).await;
    let mut s = dial(&bound.endpoint).await;
    s.write_all(&raw_zmtp::hello(0, "DEALER", b""))
        .await
        .unwrap();
    let mut written = 0u64;
    let mut next_id = 0;
    let stalled = loop {
        assert!(
            written < LIMIT,
            "the listener kept reading a peer that never reads: {} MiB taken",
            written >> 20
        );
        let batch = echo_requests(next_id, BATCH);
        next_id += BATCH;
        let write = tokio::time::timeout(Duration::from_secs(3), s.write_all(&batch));
        match write.await {
            Ok(r) => {
                r.unwrap();
                written += batch.len() as u64;
            }
            Err(_) => break written,
        }
    };
    eprintln!(
        "the peer's writes blocked after {} MiB; echoes answered {}",
        stalled >> 20,
        server.stats().echoes_answered
    );
    // Everyone else is still served while that peer is held off.
    let (client, conn) = connect(Config::default(), &bound.endpoint).await;
    round_trip(5, &client, conn, wire::ECHO, b"still here", "echo").await;
    drop(s);
    client.shutdown().await;
    server.shutdown().await;
}
