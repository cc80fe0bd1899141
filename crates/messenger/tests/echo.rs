//! ECHO and request/reply round trips on every transport.

use messenger_testkit as common;
use messenger_testkit::assert_stats;

use std::time::Duration;

use bytes::Bytes;
use common::{Pair, Seen, TRANSPORTS, bytes_vec, no_slc, pair, within};
use messenger::{Config, Error, Incoming};
use messenger_proto::wire;
use tokio::task::JoinSet;

/// Awaits every task of `set` within `secs` seconds, checking each
/// outcome with `check`; on a timeout, fails saying how many were done and
/// both sides' counters.
async fn all_replies<T: 'static>(
    p: &Pair,
    t: &str,
    secs: u64,
    mut set: JoinSet<T>,
    mut check: impl FnMut(T),
) {
    let total = set.len();
    let mut done = 0;
    let all = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(r) = set.join_next().await {
            check(r.expect("request task"));
            done += 1;
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "{t}: only {done} of {total} replies in {secs} s\nclient {:?}\nserver {:?}",
        p.client.stats(),
        p.server.stats()
    );
    assert_eq!(done, total, "{t}");
}

/// `n` requests in flight at once on `p`'s connection: request `i` goes
/// to `dst(i)` with body `body(i)`; each task yields `(i, body, reply)`.
fn requests(
    p: &Pair,
    n: usize,
    dst: fn(usize) -> u64,
    body: fn(usize) -> String,
) -> JoinSet<(usize, String, Result<Incoming, Error>)> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let (client, conn) = (p.client.clone(), p.conn);
        set.spawn(async move {
            let body = body(i);
            let reply = client.request(conn, dst(i), &body).await;
            (i, body, reply)
        });
    }
    set
}

/// ECHO returns a body of every byte value unchanged, and frees its
/// callback.
#[tokio::test]
async fn echo_round_trips_every_byte_value() {
    for t in TRANSPORTS {
        let p = pair(t, Config::default(), Config::default(), no_slc).await;
        let body: Vec<u8> = (0..=255u8).collect();
        let reply = within(5, "echo", p.client.request(p.conn, wire::ECHO, &body))
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), &body[..], "{t}");
        assert_eq!(p.client.stats().pending_callbacks, 0, "{t}");
        p.shutdown().await;
    }
}

/// A server loop sees a NOOP message (no reply wanted) and a request once
/// each, in order, and its reply to the request comes back.
#[tokio::test]
async fn slc_sees_noop_message_once_and_replies() {
    for t in TRANSPORTS {
        let seen = Seen::default();
        let p = pair(t, Config::default(), Config::default(), seen.slc()).await;
        p.client
            .send_message(p.conn, wire::NOOP, b"fire", None)
            .await
            .unwrap();
        let reply = within(5, "request", p.client.request(p.conn, wire::NOOP, b"ask"))
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), b"re:ask", "{t}");
        common::eventually(5, "slc saw both", || seen.len() == 2).await;
        assert_eq!(seen.bodies(), bytes_vec(&["fire", "ask"]), "{t}");
        p.shutdown().await;
    }
}

/// 10,000 requests in flight at once on one connection, half answered by
/// the builtin ECHO and half by a server loop: each gets its own reply,
/// each is delivered once, and nothing is left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_requests_on_one_connection() {
    const N: usize = 10_000;
    for t in TRANSPORTS {
        let p = pair(
            t,
            Config::default(),
            Config::default(),
            Seen::default().slc(),
        )
        .await;
        // Even i: ECHO, answered by the builtin. Odd i: NOOP, answered by the SLC.
        let dst = |i: usize| {
            if i.is_multiple_of(2) {
                wire::ECHO
            } else {
                wire::NOOP
            }
        };
        let body = |i: usize| format!("body-{i}-{}", "x".repeat(i % 7));
        all_replies(&p, t, 20, requests(&p, N, dst, body), |(i, body, reply)| {
            let reply = reply.unwrap_or_else(|e| panic!("{t}: request {i} failed: {e}"));
            let want = if i.is_multiple_of(2) {
                body.into_bytes()
            } else {
                format!("re:{body}").into_bytes()
            };
            assert_eq!(reply.body.as_ref(), &want[..], "{t}: request {i}");
        })
        .await;
        let (cs, ss) = (p.client.stats(), p.server.stats());
        assert_stats!(cs, t, pending_callbacks == 0, msc_delivered == N as u64);
        assert_stats!(ss, t, slc_delivered == (N / 2) as u64);
        // Each ECHO is answered once at most: duplicates are only re-ACKed.
        assert_stats!(ss, t, echoes_answered <= (N / 2) as u64);
        assert_eq!(ss.malformed_dropped + cs.malformed_dropped, 0, "{t}");
        p.shutdown().await;
    }
}

/// A burst larger than the listener's send queue: ECHO replies and ACKs
/// that do not fit are dropped and resent later, so every request still
/// gets its reply, and soon: recovering from the burst must not be limited
/// to one queue's worth of resends per resend interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_beyond_the_send_queue_loses_no_reply() {
    const N: usize = 2000;
    for t in TRANSPORTS {
        let config = Config {
            send_queue_capacity: 64,
            ..Config::default()
        };
        let p = pair(t, config, Config::default(), no_slc).await;
        let body = |i: usize| format!("burst-{i}");
        all_replies(
            &p,
            t,
            10,
            requests(&p, N, |_| wire::ECHO, body),
            |(_, body, reply)| {
                let reply = reply.unwrap_or_else(|e| panic!("{t}: {body}: {e}"));
                assert_eq!(reply.body, Bytes::from(body), "{t}");
            },
        )
        .await;
        assert_eq!(p.client.stats().pending_callbacks, 0, "{t}");
        p.shutdown().await;
    }
}

/// A caller may pass any timeout, however large: it means "no deadline",
/// not an overflow.
#[tokio::test]
async fn an_unbounded_timeout_is_accepted() {
    for t in TRANSPORTS {
        let p = pair(t, Config::default(), Config::default(), no_slc).await;
        let reply = within(
            5,
            "echo",
            p.client
                .request_with_timeout(p.conn, wire::ECHO, b"x", Duration::MAX),
        )
        .await
        .unwrap();
        assert_eq!(reply.body.as_ref(), b"x", "{t}");
        p.shutdown().await;
    }
}
