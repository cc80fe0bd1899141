//! Reliable delivery: resends until ACKed, duplicate suppression, sessions
//! that restart from msg_id 0, deadlines, cancellation, disconnects and
//! redials, heartbeats, the send queue's high-water mark, shutdown with work
//! in flight, and lossy soaks that must end with exactly-once delivery.
//!
//! Deadline tests on inproc run under tokio's paused clock (exact and
//! instant); the rest use real time with short intervals. Every wait is
//! bounded, so a bug fails a test instead of hanging it.

use messenger_testkit as common;
use messenger_testkit::assert_stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    Answer, Place, RAW_TRANSPORTS, Rng, Seen, TRANSPORTS, bytes_vec, connect, eventually,
    eventually_real, expect_reply, forwarding, forwarding_pair, no_slc, pair, raw_dealer, raw_recv,
    raw_router, raw_send, serve, serve_seen, spawn_request, within,
};
use messenger::{
    Callback, Config, ConnectionId, Destination, Endpoint, Error, Heartbeat, Incoming, Messenger,
    Responder,
};
use messenger_proto::wire;
use tokio::task::JoinSet;
use tokio::time::Instant;
use zeromq::ZmqMessage;
use zeromq::prelude::*;

/// Short timers for tests on real sockets.
fn quick() -> Config {
    Config {
        resend_interval: Some(Duration::from_millis(50)),
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..Config::default()
    }
}

/// Expects `["server", "", "{msg_id}-0-2-"]` next on a raw DEALER.
async fn expect_ack(peer: &mut zeromq::DealerSocket, msg_id: u64, what: &str) {
    let f = raw_recv(peer, 5, what).await;
    let want = bytes_vec(&["server", "", &format!("{msg_id}-0-2-")]);
    assert_eq!(f, want, "{what}");
}

// ---------------------------------------------------------------------------
// 1. Resending.

/// A raw ROUTER swallows the first copy of a request (no ACK, no reply),
/// then ACKs and answers the resent copy: same payload, same msg_id.
#[tokio::test]
async fn request_is_resent_after_its_first_copy_is_dropped() {
    for t in RAW_TRANSPORTS {
        let (mut router, endpoint, _p) = raw_router(t).await;
        let (client, conn) = connect(quick(), &endpoint).await;
        let req = spawn_request(&client, conn, wire::NOOP, "question");

        let first = raw_recv(&mut router, 5, "first copy").await;
        assert_eq!(first.len(), 3, "{t}: {first:?}");
        assert_eq!(first[0], Bytes::from("client"), "{t}");
        assert!(first[1].is_empty(), "{t}");
        let m = wire::parse(&first[2]).unwrap();
        assert_eq!(m.body, Bytes::from("question"), "{t}");
        // Swallowed: no ACK, no reply.

        let second = raw_recv(&mut router, 5, "resent copy").await;
        assert_eq!(
            second, first,
            "{t}: the resend repeats the payload and msg_id"
        );
        let ack = format!("{}-0-2-", m.msg_id);
        raw_send(&mut router, &[b"client", b"raw", b"", ack.as_bytes()]).await;
        let reply = format!("0-0-{}-answer", m.src_cb);
        raw_send(&mut router, &[b"client", b"raw", b"", reply.as_bytes()]).await;

        expect_reply(req, b"answer", &format!("{t}: request completes")).await;
        assert_stats!(client.stats(), t, resends >= 1, pending_callbacks == 0);
        client.shutdown().await;
    }
}

/// A listener's reply is resent until the peer ACKs it. The raw peer loses
/// the first copy of the reply and resends its request: the duplicate is
/// re-ACKed, not handed to the SLC again, and the reply comes by resend.
#[tokio::test]
async fn lost_reply_is_resent_by_the_listener() {
    for t in RAW_TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, quick(), Answer::Re).await;
        let mut peer = raw_dealer(&bound.endpoint, "asker").await;
        raw_send(&mut peer, &[b"", b"0-7-0-q"]).await;
        expect_ack(&mut peer, 0, "ACK of the request").await;
        let reply = bytes_vec(&["server", "", "0-0-7-re:q"]);
        let f = raw_recv(&mut peer, 5, "reply").await;
        assert_eq!(f, reply, "{t}");
        // Lost: not ACKed. The peer resends its request, as it would.
        raw_send(&mut peer, &[b"", b"0-7-0-q"]).await;
        expect_ack(&mut peer, 0, "ACK of the duplicate request").await;
        let f = raw_recv(&mut peer, 5, "resent reply").await;
        assert_eq!(f, reply, "{t}: the resend repeats the reply and its msg_id");
        raw_send(&mut peer, &[b"", b"0-0-2-"]).await;
        let what = format!("{t}: the reply is ACKed");
        eventually(5, &what, || server.stats().pending_messages == 0).await;
        assert_eq!(seen.bodies(), bytes_vec(&["q"]), "{t}");
        assert_stats!(
            server.stats(),
            t,
            resends >= 1,
            duplicates_dropped == 1,
            acks_received == 1
        );
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 2. Duplicates.

/// A raw DEALER sends the same NOOP message (same msg_id) twice, as a resend
/// after a lost ACK would: the SLC sees it once, both copies are ACKed.
#[tokio::test]
async fn duplicate_of_a_delivered_message_is_acked_but_not_delivered() {
    for t in RAW_TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Re).await;
        let mut peer = raw_dealer(&bound.endpoint, "dup").await;
        raw_send(&mut peer, &[b"", b"0-0-0-once"]).await;
        raw_send(&mut peer, &[b"", b"0-0-0-once"]).await;
        expect_ack(&mut peer, 0, "ACK of the first copy").await;
        expect_ack(&mut peer, 0, "ACK of the duplicate").await;
        // The SLC takes messages in order: once the next one is there, a
        // second delivery of the duplicate would have shown up before it.
        raw_send(&mut peer, &[b"", b"1-0-0-next"]).await;
        expect_ack(&mut peer, 1, "ACK of the next message").await;
        eventually(5, "the SLC saw the next message", || seen.len() >= 2).await;
        assert_eq!(seen.bodies(), bytes_vec(&["once", "next"]), "{t}");
        let s = server.stats();
        assert_stats!(
            s,
            t,
            duplicates_dropped == 1,
            acks_sent == 3,
            slc_delivered == 2
        );
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 3. Sessions.

/// A raw DEALER "X" sends msg_ids 0, 1, 2 (and an ECHO, 3) and goes away; a
/// new DEALER with the same routing id counts from 0 again. Its messages are
/// a new session, not duplicates: all five are delivered.
#[tokio::test]
async fn restarted_raw_peer_counting_from_zero_is_delivered() {
    for t in RAW_TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Re).await;
        let mut first = raw_dealer(&bound.endpoint, "X").await;
        for i in 0..3u64 {
            let payload = format!("{i}-0-0-first-{i}");
            raw_send(&mut first, &[b"", payload.as_bytes()]).await;
            expect_ack(&mut first, i, "ACK in the first session").await;
        }
        eventually(5, "first session delivered", || seen.len() == 3).await;
        // An ECHO whose answer is left unACKed: the listener holds it for
        // resending until it forgets the session, which shows when it does.
        raw_send(&mut first, &[b"", b"3-0-1-ping"]).await;
        expect_ack(&mut first, 3, "ACK of the ECHO").await;
        let f = raw_recv(&mut first, 5, "ECHO answer").await;
        assert_eq!(f, bytes_vec(&["server", "", "0-0-0-ping"]), "{t}");
        assert_eq!(server.stats().pending_messages, 1, "{t}");
        drop(first);
        let what = format!("{t}: the listener forgets the first session");
        eventually(5, &what, || server.stats().pending_messages == 0).await;

        let mut second = raw_dealer(&bound.endpoint, "X").await;
        for i in 0..2u64 {
            let payload = format!("{i}-0-0-second-{i}");
            raw_send(&mut second, &[b"", payload.as_bytes()]).await;
            expect_ack(&mut second, i, "ACK in the second session").await;
        }
        let what = format!("{t}: second session delivered");
        eventually(5, &what, || seen.len() == 5).await;
        assert_eq!(
            seen.bodies(),
            bytes_vec(&["first-0", "first-1", "first-2", "second-0", "second-1"]),
            "{t}"
        );
        assert_stats!(
            server.stats(),
            t,
            duplicates_dropped == 0,
            slc_delivered == 5
        );
        server.shutdown().await;
    }
}

/// The same with our own messengers on every transport: a client messenger
/// "X" is shut down and a new one with the same identity starts again at
/// msg_id 0.
#[tokio::test]
async fn restarted_messenger_counting_from_zero_is_delivered() {
    for t in TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Re).await;
        let (first, conn) = common::connect_as("X", Config::default(), &bound.endpoint, 5).await;
        for i in 0..3 {
            let body = format!("first-{i}");
            within(5, "confirmed", first.send_confirmed(conn, wire::NOOP, body))
                .await
                .unwrap_or_else(|e| panic!("{t}: {e}"));
        }
        first.shutdown().await;
        drop(first);
        // Until the listener has seen the old connection go, it refuses the
        // routing id "X" as a live peer's, and `make_connection` retries
        // the refusal (within its 5 s connect timeout).
        let (second, conn) = common::connect_as("X", Config::default(), &bound.endpoint, 10).await;
        for i in 0..2 {
            let body = format!("second-{i}");
            within(
                5,
                "confirmed",
                second.send_confirmed(conn, wire::NOOP, body),
            )
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        }
        let what = format!("{t}: both sessions delivered");
        eventually(5, &what, || seen.len() == 5).await;
        assert_eq!(
            seen.bodies(),
            bytes_vec(&["first-0", "first-1", "first-2", "second-0", "second-1"]),
            "{t}"
        );
        assert_eq!(server.stats().duplicates_dropped, 0, "{t}");
        second.shutdown().await;
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 4-6. Deadlines, late replies, cancellation.

/// An SLC that never replies: the request fails with Timeout exactly at its
/// deadline, and its callback slot is freed. Paused time: the clock jumps
/// to each timer while the (inproc) runtime is idle, so this is exact and
/// instant.
#[tokio::test(start_paused = true)]
async fn deadline_fails_the_request_and_frees_its_slot() {
    let p = pair("inproc", Config::default(), Config::default(), no_slc).await;
    let (client, conn) = (&p.client, p.conn);
    let deadline = Duration::from_secs(2);
    let start = Instant::now();
    let r = within(
        10,
        "request",
        client.request_with_timeout(conn, wire::NOOP, "never answered", deadline),
    )
    .await;
    let waited = start.elapsed();
    assert_eq!(r.unwrap_err(), Error::Timeout);
    assert!(
        waited >= deadline && waited <= deadline + Duration::from_millis(10),
        "failed after {waited:?}, deadline {deadline:?}"
    );
    assert_stats!(
        client.stats(),
        "inproc",
        pending_callbacks == 0,
        timeouts == 1
    );
    assert_eq!(p.server.stats().slc_delivered, 1);
    p.shutdown().await;
}

/// Deadlines mostly arrive in order (one default timeout); a shorter one
/// behind longer ones must still fire on time, and the longer ones after it,
/// each at its own deadline.
#[tokio::test(start_paused = true)]
async fn a_shorter_deadline_behind_longer_ones_fires_first() {
    let p = pair("inproc", Config::default(), Config::default(), no_slc).await;
    let (client, conn) = (&p.client, p.conn);
    let start = Instant::now();
    let timed = |secs: u64, body: &'static str| {
        let client = client.clone();
        async move {
            let deadline = Duration::from_secs(secs);
            let r = client
                .request_with_timeout(conn, wire::NOOP, body, deadline)
                .await;
            assert_eq!(r.unwrap_err(), Error::Timeout, "{body}");
            start.elapsed()
        }
    };
    let long = tokio::spawn(timed(30, "long"));
    let longer = tokio::spawn(timed(40, "longer"));
    tokio::task::yield_now().await;
    let short = tokio::spawn(timed(3, "short"));
    let ms = Duration::from_millis;
    let short = within(60, "short", short).await.unwrap();
    assert!(
        short >= ms(3000) && short <= ms(3010),
        "short after {short:?}"
    );
    let long = within(60, "long", long).await.unwrap();
    assert!(
        long >= ms(30_000) && long <= ms(30_010),
        "long after {long:?}"
    );
    let longer = within(60, "longer", longer).await.unwrap();
    assert!(
        longer >= ms(40_000) && longer <= ms(40_010),
        "longer after {longer:?}"
    );
    assert_stats!(
        client.stats(),
        "inproc",
        pending_callbacks == 0,
        timeouts == 3
    );
    p.shutdown().await;
}

/// The server loop holds the request's responder until the request has
/// failed with Timeout on the client, then answers: the late reply is
/// ACKed (so the server stops resending it) and dropped.
async fn late_reply_is_dropped(t: &str, deadline: Duration) {
    let (slc, mut asked) = forwarding();
    let p = pair(t, quick(), quick(), slc).await;
    let r = within(
        10,
        "request",
        p.client
            .request_with_timeout(p.conn, wire::NOOP, "slow", deadline),
    )
    .await;
    assert_eq!(r.unwrap_err(), Error::Timeout, "{t}");
    let (_, responder) = within(5, "the server loop has it", asked.recv())
        .await
        .unwrap();
    responder.try_reply("too late").expect("late reply");
    let what = format!("{t}: late reply dropped");
    eventually(10, &what, || p.client.stats().late_replies_dropped == 1).await;
    // ACKed, so the server stops resending it.
    let what = format!("{t}: late reply ACKed");
    eventually(10, &what, || p.server.stats().pending_messages == 0).await;
    assert_stats!(
        p.client.stats(),
        t,
        msc_delivered == 0,
        timeouts == 1,
        pending_callbacks == 0,
        late_replies_dropped == 1
    );
    p.shutdown().await;
}

/// A reply that comes after its request's deadline is ACKed and dropped.
#[tokio::test]
async fn late_reply_after_the_deadline_is_dropped() {
    for t in TRANSPORTS {
        late_reply_is_dropped(t, Duration::from_millis(200)).await;
    }
}

/// Dropping a request's future (a timeout or a select shorter than its
/// deadline) frees its callback at once.
#[tokio::test]
async fn dropping_a_request_future_frees_its_callback() {
    for t in TRANSPORTS {
        let (p, mut asked) = forwarding_pair(t).await;
        let (client, conn) = (&p.client, p.conn);

        let short = Duration::from_millis(100);
        let r = tokio::time::timeout(short, client.request(conn, wire::NOOP, "abandoned")).await;
        assert!(r.is_err(), "{t}: completed: {r:?}");
        assert_eq!(client.stats().pending_callbacks, 0, "{t}: after a timeout");
        let (m, _) = within(5, "the first arrives", asked.recv()).await.unwrap();
        assert_eq!(m.body, "abandoned", "{t}");

        // Given up once the server loop has it.
        tokio::select! {
            r = client.request(conn, wire::NOOP, "raced") => panic!("{t}: completed: {r:?}"),
            _ = within(5, "the second arrives", asked.recv()) => {}
        }
        assert_eq!(client.stats().pending_callbacks, 0, "{t}: after a select");

        // The messages themselves were delivered and ACKed all the same.
        let what = format!("{t}: both delivered and ACKed");
        eventually(5, &what, || {
            p.server.stats().slc_delivered == 2 && client.stats().pending_messages == 0
        })
        .await;
        assert_stats!(client.stats(), t, timeouts == 0);
        p.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 7-8. Losing and regaining the listener.

/// The listener shuts down while a request waits (its SLC never replies):
/// the request fails with Disconnected long before its 30 s deadline.
#[tokio::test]
async fn listener_shutdown_fails_waiting_requests_with_disconnected() {
    for t in TRANSPORTS {
        let p = pair(t, Config::default(), quick(), no_slc).await;
        let (c, conn) = (p.client.clone(), p.conn);
        let req = tokio::spawn(async move { c.request(conn, wire::NOOP, "pending").await });
        eventually(5, "the request arrived", || {
            p.server.stats().slc_delivered == 1
        })
        .await;
        assert!(!req.is_finished(), "{t}");

        let start = Instant::now();
        p.server.shutdown().await;
        let r = within(2, &format!("{t}: request fails after the shutdown"), req)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err(), Error::Disconnected, "{t}");
        eprintln!(
            "{t}: Disconnected {:?} after the shutdown began",
            start.elapsed()
        );
        assert_stats!(p.client.stats(), t, pending_callbacks == 0, timeouts == 0);
        p.client.shutdown().await;
    }
}

/// The listener goes away and a new one binds the same endpoint (tcp: the
/// same port; ipc: the same path; inproc: the same name). The client's
/// connection redials by itself and the same ConnectionId works again; a
/// message sent while the peer was down is delivered once.
#[tokio::test]
async fn listener_restarted_on_the_same_endpoint_resumes_traffic() {
    for t in TRANSPORTS {
        resumes_after_a_restart(t, quick()).await;
    }
}

async fn resumes_after_a_restart(t: &str, client_config: Config) {
    let before = Seen::default();
    let common::Pair {
        server,
        bound,
        client,
        conn,
        place: _p,
    } = pair(t, Config::default(), client_config, before.slc()).await;
    let r = within(
        5,
        "request before",
        client.request(conn, wire::NOOP, "before"),
    )
    .await
    .unwrap_or_else(|e| panic!("{t}: {e}"));
    assert_eq!(r.body, Bytes::from("re:before"), "{t}");

    server.shutdown().await;
    drop(server);
    let what = format!("{t}: client notices the loss");
    eventually(5, &what, || !client.is_connected(conn)).await;
    within(
        5,
        "queue while down",
        client.send_message(conn, wire::NOOP, "while-down", None),
    )
    .await
    .unwrap_or_else(|e| panic!("{t}: {e}"));

    let after = Seen::default();
    let server = Messenger::builder().identity("server").build().unwrap();
    let again = within(
        5,
        "listen again",
        server.listen_for_connection(&bound.endpoint, after.slc()),
    )
    .await
    .unwrap_or_else(|e| panic!("{t}: bind {} again: {e}", bound.endpoint));
    assert_eq!(again.endpoint, bound.endpoint, "{t}");

    let what = format!("{t}: client reconnects");
    eventually(10, &what, || client.is_connected(conn)).await;
    let r = within(
        5,
        "request after",
        client.request(conn, wire::NOOP, "after"),
    )
    .await
    .unwrap_or_else(|e| panic!("{t}: {e}"));
    assert_eq!(r.body, Bytes::from("re:after"), "{t}");
    let what = format!("{t}: the queued message is delivered");
    eventually(5, &what, || after.count("while-down") == 1).await;
    // Once both are ACKed no copy of them is sent again, and one sent
    // before would reach the server loop ahead of a barrier sent now: a
    // second delivery of either would show before it.
    let what = format!("{t}: every message ACKed");
    eventually(5, &what, || client.stats().pending_messages == 0).await;
    within(
        5,
        "barrier",
        client.send_confirmed(conn, wire::NOOP, "barrier"),
    )
    .await
    .unwrap_or_else(|e| panic!("{t}: {e}"));
    let what = format!("{t}: the barrier is delivered");
    eventually(5, &what, || after.count("barrier") == 1).await;
    assert_eq!(
        after.bodies(),
        bytes_vec(&["while-down", "after", "barrier"]),
        "{t}"
    );
    let s = client.stats();
    assert!(s.reconnects >= 1, "{t}: {s:?}");
    client.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 9. Heartbeats.

/// `quick()` with a heartbeat (ZMTP PING) every 50 ms, 150 ms of silence
/// after one declaring the peer dead. A silent peer is declared dead by
/// them too: `zmtp_heartbeat.rs::our_pings_find_a_router_that_stopped_answering`.
fn with_heartbeat() -> Config {
    Config {
        heartbeat: Some(Heartbeat {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(150),
            ttl: Duration::ZERO,
        }),
        ..quick()
    }
}

/// A sender waiting for an ACK (send_confirmed) fails with Disconnected when
/// the peer, a raw ROUTER that never ACKs, goes away.
#[tokio::test]
async fn waiting_for_an_ack_fails_with_disconnected_when_the_peer_goes() {
    for t in RAW_TRANSPORTS {
        let (mut router, endpoint, _p) = raw_router(t).await;
        let (client, conn) = connect(quick(), &endpoint).await;
        let c = client.clone();
        let confirmed =
            tokio::spawn(async move { c.send_confirmed(conn, wire::NOOP, "ack me").await });
        let f = raw_recv(&mut router, 5, "the message").await;
        assert_eq!(
            wire::parse(&f[2]).unwrap().body,
            Bytes::from("ack me"),
            "{t}"
        );
        assert!(!confirmed.is_finished(), "{t}");
        drop(router);
        let r = within(2, &format!("{t}: send_confirmed fails"), confirmed)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err(), Error::Disconnected, "{t}");
        client.shutdown().await;
    }
}

/// Against a live listener, heartbeats (PING to PONG) measure the round
/// trip. inproc has no heartbeats: nothing between two messengers of one
/// process can go silent.
#[tokio::test]
async fn heartbeat_measures_rtt_of_a_live_peer() {
    for t in RAW_TRANSPORTS {
        let p = pair(t, Config::default(), with_heartbeat(), no_slc).await;
        let (client, conn) = (&p.client, p.conn);
        assert_eq!(client.rtt(conn), None, "{t}: no heartbeat answered yet");
        let what = format!("{t}: rtt measured");
        eventually(5, &what, || client.rtt(conn).is_some()).await;
        let rtt = client.rtt(conn).unwrap();
        assert!(rtt < Duration::from_secs(1), "{t}: rtt {rtt:?}");
        assert!(client.is_connected(conn), "{t}");
        p.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 10-11. The high-water mark.

/// Connects `client` to a listener on `t`, shuts the listener down and waits
/// until the connection knows: its queue is then drained by nobody.
async fn dead_peer(client: &Messenger, t: &str) -> (ConnectionId, Place) {
    let (server, bound, p) = serve(t, Config::default(), no_slc).await;
    let conn = within(5, "connect", client.make_connection(&bound.endpoint))
        .await
        .unwrap();
    server.shutdown().await;
    drop(server);
    let what = format!("{t}: the connection notices its peer is gone");
    eventually(5, &what, || !client.is_connected(conn)).await;
    (conn, p)
}

/// With the peer down and `send_queue_capacity` 4, four try-sends fit, the
/// fifth fails with Full, and an async send (or request) waits. A cancelled
/// waiting send leaves nothing behind.
#[tokio::test]
async fn send_queue_is_bounded_while_the_peer_is_down() {
    for t in TRANSPORTS {
        let config = Config {
            send_queue_capacity: 4,
            ..quick()
        };
        let client = Messenger::builder()
            .identity("client")
            .config(config)
            .build()
            .unwrap();
        let (conn, _p) = dead_peer(&client, t).await;
        for i in 0..4 {
            client
                .try_send_message(conn, wire::NOOP, format!("queued-{i}"), None)
                .unwrap_or_else(|e| panic!("{t}: try_send {i}: {e}"));
        }
        assert_eq!(
            client.try_send_message(conn, wire::NOOP, "fifth", None),
            Err(Error::Full),
            "{t}"
        );
        let with_callback = Some(Callback::new(|_| panic!("never sent")));
        assert_eq!(
            client.try_send_message(conn, wire::NOOP, "fifth", with_callback),
            Err(Error::Full),
            "{t}"
        );
        assert_eq!(client.stats().pending_callbacks, 0, "{t}");

        let short = Duration::from_millis(200);
        let r =
            tokio::time::timeout(short, client.send_message(conn, wire::NOOP, "waits", None)).await;
        assert!(r.is_err(), "{t}: send_message completed while full: {r:?}");
        let r = tokio::time::timeout(short, client.request(conn, wire::NOOP, "waits too")).await;
        assert!(r.is_err(), "{t}: request completed while full: {r:?}");
        // The request's own deadline covers its wait for room.
        let start = Instant::now();
        let r = within(
            5,
            "deadline while full",
            client.request_with_timeout(conn, wire::NOOP, "deadline", short),
        )
        .await;
        assert_eq!(r.unwrap_err(), Error::Timeout, "{t}");
        assert!(start.elapsed() >= short, "{t}: {:?}", start.elapsed());

        // Only the queued messages wait for ACKs.
        assert_stats!(
            client.stats(),
            t,
            pending_callbacks == 0,
            pending_messages == 4
        );
        client.shutdown().await;
    }
}

/// One connection's peer is down and its queue is full (a sender waits on
/// it); 100 concurrent requests on another, healthy connection still
/// complete promptly.
#[tokio::test]
async fn a_stuck_connection_does_not_slow_a_healthy_one() {
    const N: usize = 100;
    for t in TRANSPORTS {
        let config = Config {
            send_queue_capacity: 4,
            ..quick()
        };
        let client = Messenger::builder()
            .identity("client")
            .config(config)
            .build()
            .unwrap();
        let (stuck, _dead) = dead_peer(&client, t).await;
        for i in 0..4 {
            client
                .try_send_message(stuck, wire::NOOP, format!("stuck-{i}"), None)
                .unwrap();
        }
        let c = client.clone();
        let blocked =
            tokio::spawn(async move { c.send_message(stuck, wire::NOOP, "blocked", None).await });

        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Re).await;
        let healthy = within(5, "connect", client.make_connection(&bound.endpoint))
            .await
            .unwrap();
        assert_ne!(healthy, stuck);

        let start = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..N {
            let c = client.clone();
            set.spawn(async move {
                let body = format!("healthy-{i}");
                (i, c.request(healthy, wire::NOOP, body).await)
            });
        }
        within(
            5,
            &format!("{t}: {N} requests on the healthy connection"),
            async {
                while let Some(r) = set.join_next().await {
                    let (i, r) = r.unwrap();
                    let reply = r.unwrap_or_else(|e| panic!("{t}: request {i}: {e}"));
                    assert_eq!(reply.body, Bytes::from(format!("re:healthy-{i}")), "{t}");
                }
            },
        )
        .await;
        eprintln!("{t}: {N} requests in {:?}", start.elapsed());
        assert!(!blocked.is_finished(), "{t}: the stuck send completed");
        assert!(!client.is_connected(stuck), "{t}");
        assert_eq!(seen.len(), N, "{t}");
        blocked.abort();
        client.shutdown().await;
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 12-13. Nothing left hanging.

/// 1,000 requests wait for replies that never come; shutdown fails every one
/// with Shutdown promptly and leaves no callback or unACKed message.
#[tokio::test]
async fn shutdown_fails_a_thousand_waiting_requests() {
    const N: usize = 1000;
    for t in TRANSPORTS {
        let p = pair(t, Config::default(), Config::default(), no_slc).await;
        let (client, conn) = (&p.client, p.conn);
        let mut set = JoinSet::new();
        for i in 0..N {
            let c = client.clone();
            set.spawn(async move { c.request(conn, wire::NOOP, format!("q{i}")).await });
        }
        let what = format!("{t}: all {N} requests waiting");
        eventually(5, &what, || {
            client.stats().pending_callbacks == N as u64
                && p.server.stats().slc_delivered == N as u64
        })
        .await;

        let start = Instant::now();
        within(5, "client shutdown", client.shutdown()).await;
        let mut failed = 0;
        within(5, &format!("{t}: every request ends"), async {
            while let Some(r) = set.join_next().await {
                assert_eq!(r.unwrap().unwrap_err(), Error::Shutdown, "{t}");
                failed += 1;
            }
        })
        .await;
        eprintln!(
            "{t}: {N} requests failed {:?} after shutdown began",
            start.elapsed()
        );
        assert_eq!(failed, N, "{t}");
        assert_stats!(
            client.stats(),
            t,
            pending_callbacks == 0,
            pending_messages == 0
        );
        p.server.shutdown().await;
    }
}

/// Requests sent by the unanswered-requests test; override with
/// `MESSENGER_TEST_UNANSWERED`.
const UNANSWERED: usize = 1_000_000;

/// How the callbacks of the unanswered-requests test ended.
#[derive(Default)]
struct Outcomes {
    timed_out: AtomicUsize,
    replied: AtomicUsize,
    other: Mutex<Vec<Error>>,
}

impl Outcomes {
    fn record(&self, r: Result<messenger::Incoming, messenger::Error>) {
        match r {
            Err(Error::Timeout) => {
                self.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.other.lock().unwrap().push(e),
            Ok(_) => {
                self.replied.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn total(&self) -> usize {
        self.timed_out.load(Ordering::Relaxed)
            + self.replied.load(Ordering::Relaxed)
            + self.other.lock().unwrap().len()
    }
}

/// A million requests (closure callbacks) whose SLC ACKs them but never
/// replies: every callback runs once with Timeout, and afterwards the
/// callback table and the unacknowledged set are empty.
#[tokio::test(start_paused = true)]
async fn a_million_unanswered_requests_leave_nothing_behind() {
    let n = common::env_number("MESSENGER_TEST_UNANSWERED", UNANSWERED);
    let real = std::time::Instant::now();
    let (server, bound, _p) = serve("inproc", Config::default(), no_slc).await;
    let config = Config {
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let (client, conn) = connect(config, &bound.endpoint).await;
    let outcomes = Arc::new(Outcomes::default());
    for i in 0..n {
        let o = Arc::clone(&outcomes);
        let callback = Callback::new(move |r| o.record(r));
        client
            .send_message(conn, wire::NOOP, "unanswered", Some(callback))
            .await
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
        if i % 4096 == 0 {
            assert!(
                real.elapsed() < Duration::from_secs(300),
                "sending is too slow: {i} in {:?}",
                real.elapsed()
            );
        }
    }
    let sent_in = real.elapsed();
    eventually_real(300, "every callback ran", || outcomes.total() >= n).await;
    assert_eq!(*outcomes.other.lock().unwrap(), Vec::new());
    assert_eq!(outcomes.replied.load(Ordering::Relaxed), 0);
    assert_eq!(outcomes.timed_out.load(Ordering::Relaxed), n);
    eventually_real(60, "the unacknowledged set empties", || {
        client.stats().pending_messages == 0
    })
    .await;
    assert_stats!(
        client.stats(),
        "inproc",
        pending_callbacks == 0,
        pending_messages == 0,
        timeouts == n as u64
    );
    eprintln!(
        "{n} unanswered requests: sent in {sent_in:?}, all timed out after {:?}",
        real.elapsed(),
    );
    // Every callback ran exactly once: none more in the next 200 ms (of
    // the paused clock: it costs no wall time).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(outcomes.total(), n);
    client.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 14. Lossy soak.

/// Messages sent by each soak test; override with `MESSENGER_TEST_SOAK`.
const SOAK: usize = 100_000;

/// A raw ROUTER facing the client and a raw DEALER facing the server,
/// forwarding payloads both ways and dropping about 1% in each direction.
/// Seeded: the same positions in each direction's stream are dropped run
/// to run (which messages sit at those positions still depends on timing,
/// as resends interleave).
struct LossyProxy {
    endpoint: Endpoint,
    /// Dropped and forwarded, client to server.
    up: Arc<[AtomicU64; 2]>,
    /// Dropped and forwarded, server to client.
    down: Arc<[AtomicU64; 2]>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _place: Place,
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The client's identity in the soak (the proxy routes replies to it).
const SOAK_CLIENT: &str = "client";

async fn lossy_proxy(t: &str, server: &Endpoint, seed: u64) -> LossyProxy {
    let (front, endpoint, place) = raw_router(t).await;
    let back = raw_dealer(server, "proxy").await;
    let (mut front_tx, mut front_rx) = front.split();
    let (mut back_tx, mut back_rx) = back.split();
    let up: Arc<[AtomicU64; 2]> = Arc::default();
    let down: Arc<[AtomicU64; 2]> = Arc::default();

    let counts = Arc::clone(&up);
    let upward = tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        // [client id, "", payload] in; ["", payload] out.
        while let Ok(m) = front_rx.recv().await {
            let mut frames = m.into_vecdeque();
            if rng.one_in(100) {
                counts[0].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            frames.pop_front();
            let m = ZmqMessage::try_from(Vec::from(frames)).unwrap();
            if back_tx.send(m).await.is_err() {
                return;
            }
            counts[1].fetch_add(1, Ordering::Relaxed);
        }
    });
    let counts = Arc::clone(&down);
    let downward = tokio::spawn(async move {
        let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        // [server identity, "", payload] in; [client id, ...] out.
        while let Ok(m) = back_rx.recv().await {
            let mut frames = m.into_vecdeque();
            if rng.one_in(100) {
                counts[0].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            frames.push_front(Bytes::from_static(SOAK_CLIENT.as_bytes()));
            let m = ZmqMessage::try_from(Vec::from(frames)).unwrap();
            if front_tx.send(m).await.is_err() {
                return;
            }
            counts[1].fetch_add(1, Ordering::Relaxed);
        }
    });
    LossyProxy {
        endpoint,
        up,
        down,
        tasks: vec![upward, downward],
        _place: place,
    }
}

/// Sends distinct NOOP messages through a proxy losing ~1% each way: every
/// message reaches the server's SLC exactly once.
async fn lossy_soak(t: &str, seed: u64) {
    let n = common::env_number("MESSENGER_TEST_SOAK", SOAK);
    let counts = Arc::new(Mutex::new(HashMap::<Bytes, u32>::with_capacity(n)));
    let recorder = Arc::clone(&counts);
    let slc = move |m: Incoming, _: Responder| {
        *recorder.lock().unwrap().entry(m.body).or_insert(0) += 1;
    };
    let (server, bound, _p) = serve(t, quick(), slc).await;
    let proxy = lossy_proxy(t, &bound.endpoint, seed).await;
    let (client, conn) = common::connect_as(SOAK_CLIENT, quick(), &proxy.endpoint, 5).await;

    // The most messages waiting for their ACK at once, sampled.
    let most_unacked = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (client, most) = (client.clone(), Arc::clone(&most_unacked));
        tokio::spawn(async move {
            loop {
                most.fetch_max(client.stats().pending_messages, Ordering::Relaxed);
                // A sample every 10 ms of the soak.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let start = std::time::Instant::now();
    within(120, &format!("{t}: sending {n} messages"), async {
        for i in 0..n {
            client
                .send_message(conn, wire::NOOP, format!("m{i}"), None)
                .await
                .unwrap_or_else(|e| panic!("{t}: send {i}: {e}"));
        }
    })
    .await;
    let sent_in = start.elapsed();
    let delivered = || counts.lock().unwrap().len();
    let mut last_progress = (0, std::time::Instant::now());
    // Until all are delivered, or nothing is left to resend and nothing new
    // came for 2 s (the rest are lost), within 120 s of the start.
    let limit = Duration::from_secs(120).saturating_sub(start.elapsed());
    common::wait_until(limit, || {
        let now = delivered();
        if now > last_progress.0 {
            last_progress = (now, std::time::Instant::now());
        }
        let stalled = last_progress.1.elapsed() > Duration::from_secs(2);
        now >= n || (stalled && client.stats().pending_messages == 0)
    })
    .await;
    let (now, cs, ss) = (delivered(), client.stats(), server.stats());
    assert!(
        now >= n,
        "{t}: {now} of {n} delivered after {:?} (sent in {sent_in:?}); \
         {} waiting for ACKs\nclient {cs:?}\nserver {ss:?}",
        start.elapsed(),
        cs.pending_messages,
    );
    let what = format!("{t}: every message acknowledged");
    eventually_real(60, &what, || client.stats().pending_messages == 0).await;
    let total = start.elapsed();
    sampler.abort();

    let counts = std::mem::take(&mut *counts.lock().unwrap());
    let twice: Vec<_> = counts.iter().filter(|&(_, &c)| c != 1).take(10).collect();
    assert!(twice.is_empty(), "{t}: delivered more than once: {twice:?}");
    assert_eq!(
        counts.values().map(|&c| c as usize).sum::<usize>(),
        n,
        "{t}"
    );
    for i in (0..n).step_by(997) {
        assert!(counts.contains_key(format!("m{i}").as_bytes()), "{t}: m{i}");
    }
    let (cs, ss) = (client.stats(), server.stats());
    assert_eq!(ss.slc_delivered, n as u64, "{t}: {ss:?}");
    let up_dropped = proxy.up[0].load(Ordering::Relaxed);
    let down_dropped = proxy.down[0].load(Ordering::Relaxed);
    assert!(
        up_dropped > 0 && down_dropped > 0,
        "{t}: the proxy lost nothing"
    );
    assert!(cs.resends > 0, "{t}: {cs:?}");
    eprintln!(
        "{t}: {n} messages sent in {sent_in:?}, all delivered and ACKed in {total:?}; \
         proxy dropped {up_dropped} up / {down_dropped} down \
         (forwarded {} / {}); client resends {}, server duplicates dropped {}, slc_busy {}, \
         at most {} unACKed at once",
        proxy.up[1].load(Ordering::Relaxed),
        proxy.down[1].load(Ordering::Relaxed),
        cs.resends,
        ss.duplicates_dropped,
        ss.slc_busy,
        most_unacked.load(Ordering::Relaxed),
    );
    client.shutdown().await;
    server.shutdown().await;
}

/// [`lossy_soak`] on tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_soak_delivers_every_message_exactly_once_tcp() {
    lossy_soak("tcp", 0x5eed_0001).await;
}

/// [`lossy_soak`] on ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_soak_delivers_every_message_exactly_once_ipc() {
    lossy_soak("ipc", 0x5eed_0002).await;
}

// ---------------------------------------------------------------------------
// A peer's last words: an ACK or reply sent just before it disconnects must
// not lose the race against the disconnect (the relay half-closes towards
// the crate and ends the session only after the crate has read everything).

/// A raw DEALER answers the listener's message (ACK or reply) and closes
/// at once; the listener's waiter must see the answer, not `Disconnected`.
async fn last_words_from_a_listener_peer(confirm: bool) {
    let (slc, mut rx) = forwarding();
    let (server, bound, _p) = serve("tcp", Config::default(), slc).await;
    let mut failed = Vec::new();
    for i in 0..40 {
        let mut d = raw_dealer(&bound.endpoint, &format!("peer-{i}")).await;
        raw_send(&mut d, &[b"", b"0-0-0-hello"]).await;
        let dest = within(5, "slc", rx.recv())
            .await
            .unwrap()
            .0
            .reply_destination();
        let s = server.clone();
        let waiter = tokio::spawn(async move {
            if confirm {
                s.send_confirmed(dest, 0, b"question").await.map(|_| ())
            } else {
                s.request(dest, 0, b"question").await.map(|_| ())
            }
        });
        loop {
            let f = raw_recv(&mut d, 5, "question").await;
            let p = wire::parse(&f[2]).unwrap();
            if p.dst_cb == wire::ACK {
                continue;
            }
            let answer = if confirm {
                wire::ack(p.msg_id)
            } else {
                Bytes::from(format!("1-0-{}-answer", p.src_cb))
            };
            raw_send(&mut d, &[b"", &answer]).await;
            break;
        }
        drop(d);
        if let Err(e) = within(10, "waiter", waiter).await.unwrap() {
            failed.push(format!("{i}: {e}"));
        }
    }
    assert_eq!(failed, Vec::<String>::new(), "stats {:?}", server.stats());
}

/// A peer's reply sent just before it closes completes the listener's
/// request ([`last_words_from_a_listener_peer`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_last_reply_beats_its_disconnect() {
    last_words_from_a_listener_peer(false).await;
}

/// A peer's ACK sent just before it closes settles the listener's
/// `send_confirmed` ([`last_words_from_a_listener_peer`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_last_ack_beats_its_disconnect() {
    last_words_from_a_listener_peer(true).await;
}

/// A raw ROUTER's reply sent just before it closes completes our
/// connection's request, not `Disconnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routers_last_reply_beats_its_close() {
    let client = Messenger::builder().identity("client").build().unwrap();
    let mut failed = Vec::new();
    for i in 0..20 {
        let (mut r, ep, _p) = raw_router("tcp").await;
        let conn = within(5, "connect", client.make_connection(&ep))
            .await
            .unwrap();
        let c = client.clone();
        let waiter = tokio::spawn(async move { c.request(conn, 0, b"q").await.map(|_| ()) });
        loop {
            let f = raw_recv(&mut r, 5, "request").await;
            let p = wire::parse(&f[2]).unwrap();
            if p.dst_cb == wire::ACK {
                continue;
            }
            let reply = format!("0-0-{}-answer", p.src_cb);
            raw_send(&mut r, &[&f[0], b"", reply.as_bytes()]).await;
            break;
        }
        drop(r);
        if let Err(e) = within(10, "waiter", waiter).await.unwrap() {
            failed.push(format!("{i}: {e}"));
        }
    }
    assert_eq!(failed, Vec::<String>::new(), "stats {:?}", client.stats());
}

/// One sender's messages reach the server loop in the order sent, whether
/// they go straight to the link (resending on) or through the writer's queue
/// (resending off, where senders wait for the crate instead), across a
/// burst large enough to fill the 64-message queue many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_messages_arrive_in_order() {
    const N: usize = 3000;
    for t in TRANSPORTS {
        for resend in [true, false] {
            let config = Config {
                resend_interval: resend.then_some(Duration::from_secs(5)),
                send_queue_capacity: 64,
                ..quick()
            };
            let seen = Seen::default();
            let p = pair(t, Config::default(), config, seen.slc()).await;
            within(20, "burst", async {
                for i in 0..N {
                    p.client
                        .send_message(p.conn, wire::NOOP, format!("{i}"), None)
                        .await
                        .unwrap_or_else(|e| panic!("{t} resend={resend}: send {i}: {e}"));
                }
            })
            .await;
            eventually(20, "all delivered", || seen.len() >= N).await;
            let want: Vec<Bytes> = (0..N).map(|i| Bytes::from(format!("{i}"))).collect();
            assert_eq!(seen.bodies(), want, "{t} resend={resend}");
            p.shutdown().await;
        }
    }
}

/// A listener's request to one of its peers (the client, whose connection
/// has no server loop: it ACKs the request and drops it, so it is never
/// answered) fails with `Disconnected` as soon as that peer leaves, not at
/// its 20 s deadline. `by_name`: the request goes to the peer's routing id
/// (`Destination::Peer`), else to the `reply_destination` of its hello.
async fn peer_leaves_while_asked(t: &str, by_name: bool) {
    let (slc, mut rx) = forwarding();
    let (server, bound, _p) = serve(t, Config::default(), slc).await;
    let (client, conn) = common::connect_as("client-peer", quick(), &bound.endpoint, 5).await;
    within(5, "hello", client.send_confirmed(conn, wire::NOOP, "hello"))
        .await
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    let (hello, _) = within(5, "the server loop", rx.recv()).await.unwrap();
    let dest = if by_name {
        Destination::Peer {
            listener: bound.id,
            peer: Bytes::from_static(b"client-peer"),
        }
    } else {
        hello.reply_destination()
    };
    let s = server.clone();
    let waiter = tokio::spawn(async move {
        s.request_with_timeout(dest, wire::NOOP, "question", Duration::from_secs(20))
            .await
    });
    let what = format!("{t}: the question arrived");
    eventually(5, &what, || client.stats().unroutable_dropped == 1).await;
    assert!(!waiter.is_finished(), "{t}");
    let start = Instant::now();
    client.shutdown().await;
    let r = within(5, "the request fails", waiter).await.unwrap();
    assert_eq!(r.unwrap_err(), Error::Disconnected, "{t}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{t}: {:?}",
        start.elapsed()
    );
    assert_eq!(server.stats().pending_callbacks, 0, "{t}");
    server.shutdown().await;
}

/// A peer that closes its connection fails the listener's request waiting
/// on it at once, on every transport (an inproc peer is reported like a
/// tcp or ipc one).
#[tokio::test]
async fn a_peer_that_leaves_fails_the_listeners_requests() {
    for t in TRANSPORTS {
        peer_leaves_while_asked(t, false).await;
    }
}

/// The same for a request addressed to the peer by its routing id.
#[tokio::test]
async fn a_listener_peer_going_away_fails_requests_to_it() {
    for t in TRANSPORTS {
        peer_leaves_while_asked(t, true).await;
    }
}

/// Sends to a connection whose inproc listener has just gone, before the
/// connection's own task noticed, must not spin on the dead session: with
/// every worker spinning, that task never ran (a livelock seen once in
/// about 40 shutdowns under load). They go to the backlog for the next
/// session. One thread makes the race likely: senders woken by the
/// connection's task run before it learns of the listener's end.
#[test]
fn sends_racing_their_inproc_listeners_end_do_not_spin() {
    const SENDERS: usize = 4;
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (server, bound, _p) = serve("inproc", Config::default(), no_slc).await;
            let (client, conn) = connect(quick(), &bound.endpoint).await;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut senders = JoinSet::new();
            for s in 0..SENDERS {
                let (client, stop) = (client.clone(), Arc::clone(&stop));
                senders.spawn(async move {
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // Each waits for its ACK, so the senders are woken
                        // by the connection's task as it reads, and queue
                        // up behind it: one of them runs before the task
                        // learns that the listener's side has ended.
                        let body = format!("{s}-{i}");
                        let sent = client.send_confirmed(conn, wire::ECHO, body);
                        if tokio::time::timeout(Duration::from_secs(1), sent)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
            tokio::task::yield_now().await;
            server.shutdown().await;
            // The senders go on through the end of the listener's side,
            // until the connection's task has learnt of it (a spin keeps
            // it from ever running: the 15 s bound below fails the test).
            eventually(10, "the connection sees its peer gone", || {
                !client.is_connected(conn)
            })
            .await;
            stop.store(true, Ordering::Relaxed);
            while senders.join_next().await.is_some() {}
            client.shutdown().await;
        });
        let _ = done_tx.send(());
    });
    done.recv_timeout(Duration::from_secs(15))
        .expect("the senders spun on a session whose peer was gone");
}

/// A message sent from a thread-local's destructor, as a plain thread
/// ends (a pool or a guard that says goodbye on its way out), is
/// delivered, and a request made there gets its reply: by then the
/// runtime's own thread-locals on that thread, and any the library keeps
/// there, are gone. Such a send once aborted the whole process ("thread
/// local panicked on drop"): entering the runtime to read its clock
/// needs tokio's thread-local. The guard holds the last handle to its
/// messenger, so dropping a messenger there is covered too.
#[tokio::test]
async fn a_send_from_a_threads_teardown_is_delivered() {
    use std::cell::RefCell;

    /// Sends "bye" and asks for an ECHO when its thread's locals are
    /// destroyed, and reports how that went (a panic here would abort the
    /// process).
    struct Bye {
        client: Messenger,
        conn: ConnectionId,
        told: std::sync::mpsc::Sender<Result<u64, Error>>,
    }
    impl Drop for Bye {
        fn drop(&mut self) {
            let sent = self
                .client
                .try_send_message(self.conn, wire::NOOP, "bye", None);
            let _ = self.told.send(sent);
            // A request too, waited for on this thread: its reply comes
            // through the runtime's threads.
            let asked = futures::executor::block_on(self.client.request_with_timeout(
                self.conn,
                wire::ECHO,
                "still there?",
                Duration::from_secs(5),
            ));
            let _ = self.told.send(asked.map(|reply| reply.body.len() as u64));
        }
    }
    thread_local! {
        static BYE: RefCell<Option<Bye>> = const { RefCell::new(None) };
    }

    for t in TRANSPORTS {
        let (_server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        let (told, outcome) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // Set first, so destroyed last: after every thread-local the
            // send below makes the runtime and the library set up.
            BYE.with(|b| {
                *b.borrow_mut() = Some(Bye {
                    client: client.clone(),
                    conn,
                    told,
                })
            });
            client.try_send_message(conn, wire::NOOP, "hello", None)
        });
        let first = tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        assert!(matches!(first, Ok(Ok(_))), "{t}: {first:?}");
        let bye = outcome.recv_timeout(Duration::from_secs(5));
        assert!(
            matches!(bye, Ok(Ok(_))),
            "{t}: the send on teardown: {bye:?}"
        );
        eventually(5, "hello, then bye", || seen.len() == 2).await;
        assert_eq!(seen.texts(), ["hello", "bye"], "{t}");
    }
}

/// `shutdown` awaited off the runtime (a plain thread's `block_on`, as
/// `request` is): it completes, and closes the messenger. It panicked
/// there ("there is no reactor running": its grace period's timer) after
/// it had stopped taking sends, leaving the connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_awaited_off_the_runtime_completes() {
    for t in TRANSPORTS {
        let (server, bound, _p, _seen) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        eventually(5, "connected", || server.stats().connections == 1).await;
        let c = client.clone();
        let thread = std::thread::spawn(move || {
            let r = futures::executor::block_on(c.request_with_timeout(
                conn,
                wire::ECHO,
                "before",
                Duration::from_secs(5),
            ));
            futures::executor::block_on(c.shutdown());
            r.map(|reply| reply.body.len())
        });
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        assert!(matches!(joined, Ok(Ok(6))), "{t}: {joined:?}");
        assert!(
            matches!(
                client.try_send_message(conn, wire::NOOP, "after", None),
                Err(Error::Shutdown)
            ),
            "{t}"
        );
        eventually(5, "the server sees the connection go", || {
            server.stats().connections == 0
        })
        .await;
    }
}
