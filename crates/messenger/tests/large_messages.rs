//! Messages of a mebibyte and more travel at once, not when a resend
//! timer pushes them. Fault 9: against `messenger serve`, 1 in flight,
//! 1000 KiB round trips took 0.59 ms (p50) but 1 MiB, 2 MiB and 8 MiB ones
//! 1.25 s each, over tcp and ipc (inproc was fine): something at 1 MiB
//! (the 1 MiB `send_buffer_size` of a socket's outbox?) held the message
//! until the 1 s resend timer sent it again.
//!
//! The signal checked is the resend counters, not the time: a resend
//! happens only once a message has gone unACKed for `resend_interval`
//! (1 s), so on a healthy link a round trip of a few MiB never causes one,
//! and a stalled one always does. Both sides are checked (a request that
//! stalls counts on the client, an answer that stalls on the server), once
//! nothing is left unACKed on either, so a resend after the reply is seen
//! too. Wall-clock times are printed, never asserted.
//!
//! tcp and ipc: inproc hands messages over without an outbox or resends.
//! In-process messengers with default configs (the server loop answers
//! with the body it got). The tests run one at a time: on a busy machine
//! two 16 MiB round trips at once could starve each other past the resend
//! interval.

use messenger_testkit as common;
use messenger_testkit::assert_stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Answer, Pair, RAW_TRANSPORTS, connect, eventually, serve_seen, within};
use messenger::{Config, Messenger};
use messenger_proto::wire;

/// One test at a time in this binary (see the module's comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1 << 20;

/// The largest body a request with the default `max_message_size` (16 MiB,
/// a bound on the whole payload `{msg_id}-{src_cb}-{dst_cb}-{body}`)
/// carries, with room for the three ids and their dashes: 16 MiB - 64 B.
const LARGEST: usize = (16 << 20) - 64;

/// Seconds one round trip may take before the test calls it lost. Far
/// above the 1.25 s a stalled one took: what fails these tests is the
/// resend counters.
const ROUND_TRIP_SECS: u64 = 20;

/// A server whose server loop answers with the body it got, and a client
/// connected to it, both with default configs, on `t`.
async fn echo_pair(t: &str) -> Pair {
    let (server, bound, place, _seen) = serve_seen(t, Config::default(), Answer::Body).await;
    let (client, conn) = connect(Config::default(), &bound.endpoint).await;
    Pair {
        server,
        bound,
        client,
        conn,
        place,
    }
}

/// A body of `len` bytes that differs from its neighbours in every
/// position a truncation, a shift or a mix-up would show: `seed` and the
/// position, mixed.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Sends `body` to callback `dst_cb` on the pair's connection and checks
/// that the answer is the same bytes; how long it took.
async fn round_trip(p: &Pair, dst_cb: u64, body: &[u8], what: &str) -> Duration {
    let started = Instant::now();
    let reply = within(
        ROUND_TRIP_SECS,
        what,
        p.client.request(p.conn, dst_cb, body),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = started.elapsed();
    assert_eq!(reply.body.len(), body.len(), "{what}: the answer's length");
    assert!(
        reply.body.as_ref() == body,
        "{what}: the answer's bytes differ"
    );
    took
}

/// Waits until neither messenger holds an unACKed message (every ACK has
/// arrived), then checks that neither resent anything.
async fn no_resends(p: &Pair, what: &str) {
    let settled = |m: &Messenger| m.stats().pending_messages == 0;
    eventually(10, &format!("{what}: every message ACKed"), || {
        settled(&p.client) && settled(&p.server)
    })
    .await;
    let (c, s) = (p.client.stats(), p.server.stats());
    assert_stats!(c, format!("{what}: client"), resends == 0);
    assert_stats!(s, format!("{what}: server"), resends == 0);
}

/// Name of a callback, for messages.
fn callee(dst_cb: u64) -> &'static str {
    match dst_cb {
        wire::NOOP => "the server loop",
        wire::ECHO => "ECHO",
        _ => "a callback",
    }
}

/// One round trip of `len` bytes to `dst_cb` on `t`, then no resends on
/// either side.
async fn one_large_round_trip(t: &str, dst_cb: u64, len: usize) {
    let _serial = SERIAL.lock().await;
    let p = echo_pair(t).await;
    let what = format!("{t}: {len} B to {}", callee(dst_cb));
    let took = round_trip(&p, dst_cb, &body(len, 7), &what).await;
    eprintln!("{what}: round trip in {took:.2?}");
    no_resends(&p, &what).await;
    p.shutdown().await;
}

/// A 4 MiB request to the server loop (callback 0), answered with the same
/// 4 MiB, completes with no resend on either side, over tcp. On the faulty
/// code the request waits in the client's outbox until its resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_request_to_the_server_loop_needs_no_resend_on_tcp() {
    one_large_round_trip("tcp", wire::NOOP, 4 * MIB).await;
}

/// [`a_4_mib_request_to_the_server_loop_needs_no_resend_on_tcp`] over ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_request_to_the_server_loop_needs_no_resend_on_ipc() {
    one_large_round_trip("ipc", wire::NOOP, 4 * MIB).await;
}

/// A 4 MiB ECHO (callback 1: the answer is made by the listener itself,
/// not a server loop) completes with no resend on either side, over tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_echo_needs_no_resend_on_tcp() {
    one_large_round_trip("tcp", wire::ECHO, 4 * MIB).await;
}

/// [`a_4_mib_echo_needs_no_resend_on_tcp`] over ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_echo_needs_no_resend_on_ipc() {
    one_large_round_trip("ipc", wire::ECHO, 4 * MIB).await;
}

/// The largest request the default `max_message_size` (16 MiB) allows,
/// 16 MiB - 64 B of body, comes back intact from the server loop and from
/// ECHO, with no resend, over tcp and ipc: the limit is usable, not only
/// enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_default_message_round_trips_without_resends() {
    for t in RAW_TRANSPORTS {
        for dst_cb in [wire::NOOP, wire::ECHO] {
            one_large_round_trip(t, dst_cb, LARGEST).await;
        }
    }
}

/// Large messages in a row on one connection, one in flight, as `messenger
/// bench` sends them: 5 round trips each of 1 MiB, 4 MiB and 16 MiB - 64 B,
/// alternately to the server loop and to ECHO, every body back intact and
/// no resend on either side, over tcp and ipc. Prints each size's slowest
/// round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_in_a_row_need_no_resends() {
    let _serial = SERIAL.lock().await;
    for t in RAW_TRANSPORTS {
        let p = echo_pair(t).await;
        for len in [MIB, 4 * MIB, LARGEST] {
            let mut slowest = Duration::ZERO;
            for i in 0..5u8 {
                let dst_cb = if i % 2 == 0 { wire::NOOP } else { wire::ECHO };
                let what = format!("{t}: {len} B to {}, #{i}", callee(dst_cb));
                let took = round_trip(&p, dst_cb, &body(len, i), &what).await;
                slowest = slowest.max(took);
            }
            eprintln!("{t}: 5 round trips of {len} B, the slowest in {slowest:.2?}");
        }
        no_resends(&p, &format!("{t}: 15 large round trips")).await;
        p.shutdown().await;
    }
}

/// What `messenger serve --slc echo` does, and what `messenger bench
/// --connect --via slc` measures against it: a server loop that answers
/// with `Responder::try_reply` (it never waits; a refusal is logged and
/// the answer dropped). Large requests to it, 1 in flight (5 each of
/// 1 MiB and 4 MiB, tcp and ipc), must each be answered intact within 5 s,
/// with no answer refused and no resend on either side. On the faulty code
/// the request's ACK still sits in the session's 1 MiB buffer when the
/// server loop answers, so the answer (1 MiB or more) is refused "send
/// queue is full" and the request is never answered (`bench --via slc`
/// against `serve` hangs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_loop_that_never_waits_can_answer_large_requests() {
    let _serial = SERIAL.lock().await;
    for t in RAW_TRANSPORTS {
        let refused = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&refused);
        let slc = move |m: messenger::Incoming, r: messenger::Responder| {
            if m.src_cb != wire::NOOP && r.try_reply(&m.body).is_err() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        };
        let p = common::pair(t, Config::default(), Config::default(), slc).await;
        for len in [MIB, 4 * MIB] {
            for i in 0..5u8 {
                let what = format!("{t}: {len} B to a try_reply server loop, #{i}");
                let sent = body(len, i);
                let answer = within(
                    10,
                    &what,
                    p.client.request_with_timeout(
                        p.conn,
                        wire::NOOP,
                        &sent,
                        Duration::from_secs(5),
                    ),
                )
                .await;
                let refusals = refused.load(Ordering::SeqCst);
                let reply = answer.unwrap_or_else(|e| {
                    panic!("{what}: {e}; answers the server loop could not send: {refusals}")
                });
                assert!(
                    reply.body.as_ref() == sent,
                    "{what}: the answer's bytes differ"
                );
                assert_eq!(refusals, 0, "{what}: answers refused");
            }
        }
        no_resends(
            &p,
            &format!("{t}: large requests to a try_reply server loop"),
        )
        .await;
        p.shutdown().await;
    }
}
