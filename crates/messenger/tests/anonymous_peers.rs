//! Anonymous peers (READY without an Identity) come and go: each gets a
//! generated routing id `[0, n]` whose state (routing entry, duplicate
//! window, msg_id counter, unacknowledged replies) must go with its
//! session. 100,000 of them over ipc (no TIME_WAIT), 64 at a time: each
//! connects, does the handshake, sends one ECHO, reads its ACK and the
//! reply, ACKs the reply (every other peer leaves without ACKing it, so
//! its unacknowledged reply must be dropped with the session) and closes.
//!
//! The resident set after they are all gone must be within 16 MiB of where
//! it was after a warm-up of 5,000 peers (a state of ~170 bytes kept per
//! peer would exceed it), and the listener must still serve.
//!
//! `MESSENGER_TEST_ANON=N` changes the number of peers (default 100,000).

use messenger_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::memory::{mib, rss};
use common::raw_zmtp::{self, FrameReader};
use common::{connect_as, eventually, no_slc, round_trip, serve, within};
use messenger::{Config, Endpoint};
use messenger_proto::wire;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const DEFAULT_PEERS: u64 = 100_000;
const WARM_UP: u64 = 5_000;
const CONCURRENCY: u64 = 64;
/// Most the resident set may differ from its level after the warm-up.
const MAX_DRIFT: u64 = 16 << 20;

/// One anonymous peer's life. `ack`: whether it ACKs the ECHO reply.
async fn one_peer(path: &std::path::Path, hello: &[u8], ack: bool) {
    let mut s = UnixStream::connect(path).await.expect("connect");
    s.write_all(hello).await.expect("hello");
    let mut r = FrameReader::new(s);
    r.greeting().await.expect("the listener's greeting");
    r.expect_ready().await;
    let (mut got_ack, mut reply_id) = (false, None);
    while !got_ack || reply_id.is_none() {
        let mut frames: Vec<bytes::Bytes> = r
            .message()
            .await
            .expect("read")
            .expect("the listener closed early")
            .into_iter()
            .map(bytes::Bytes::from)
            .collect();
        let payload = wire::from_router(&mut frames).expect("a listener's frames");
        let p = wire::parse(&payload).expect("a listener's payload");
        match p.dst_cb {
            wire::ACK => {
                assert_eq!(p.msg_id, 0, "the ACK of our ECHO");
                got_ack = true;
            }
            5 => {
                assert_eq!(&p.body[..], b"anon");
                reply_id = Some(p.msg_id);
            }
            other => panic!("unexpected message to callback {other}: {p:?}"),
        }
    }
    if ack {
        let ack = wire::ack(reply_id.unwrap_or_default());
        r.inner
            .write_all(&raw_zmtp::message(&[b"", &ack]))
            .await
            .expect("ACK");
    }
}

/// Runs peers `from..to`, `CONCURRENCY` at a time.
async fn run_peers(path: &std::path::Path, hello: &Arc<Vec<u8>>, from: u64, to: u64) {
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (next, hello, path) = (Arc::clone(&next), Arc::clone(hello), path.to_owned());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return;
                }
                within(
                    10,
                    "one anonymous peer",
                    one_peer(&path, &hello, n.is_multiple_of(2)),
                )
                .await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("peer task");
    }
}

/// The module's scenario: 100,000 anonymous peers leave the resident set
/// within `MAX_DRIFT` of its level after the warm-up, and the listener
/// still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_peers_leave_nothing_behind() {
    let total = common::env_number("MESSENGER_TEST_ANON", DEFAULT_PEERS);
    let warm_up = WARM_UP.min(total / 2);
    let (server, bound, _p) = serve("ipc", Config::default(), no_slc).await;
    let Endpoint::Ipc(path) = bound.endpoint.clone() else {
        unreachable!("bound on ipc")
    };
    // Greeting, READY without an Identity, and one ECHO, in one write.
    let mut hello = raw_zmtp::hello(1, "DEALER", b"");
    hello.extend(raw_zmtp::message(&[b"", b"0-5-1-anon"]));
    let hello = Arc::new(hello);
    // All sessions over: every unacknowledged reply is dropped with its
    // session, so none is pending once every peer's session has ended.
    let settled = |n: u64| {
        let s = server.stats();
        s.echoes_answered == n && s.pending_messages == 0
    };

    let started = Instant::now();
    within(600, "the warm-up", run_peers(&path, &hello, 0, warm_up)).await;
    eventually(30, "the warm-up's sessions end", || settled(warm_up)).await;
    let warm = rss();
    let warm_at = started.elapsed();
    within(3600, "the peers", run_peers(&path, &hello, warm_up, total)).await;
    let ran = started.elapsed();
    eventually(30, "every session ends", || settled(total)).await;
    let end = rss();

    let rate = total as f64 / ran.as_secs_f64();
    let drift = end.abs_diff(warm);
    eprintln!(
        "{total} anonymous peers in {ran:.1?} ({rate:.0}/s, {CONCURRENCY} at a time); \
         RSS after {warm_up} (at {warm_at:.1?}): {:.1} MiB, after {total}: {:.1} MiB, \
         {} {:.0} KiB (bound {} KiB)",
        mib(warm),
        mib(end),
        if end >= warm { "growth" } else { "shrink" },
        drift as f64 / 1024.0,
        MAX_DRIFT / 1024,
    );
    let stats = server.stats();
    assert_eq!(stats.echoes_answered, total, "{stats:?}");
    assert_eq!(stats.acks_received, total.div_ceil(2), "{stats:?}");
    assert_eq!(stats.routing_id_conflicts, 0, "{stats:?}");
    assert_eq!(stats.guard_rejections, 0, "{stats:?}");
    assert_eq!(stats.malformed_dropped, 0, "{stats:?}");
    assert!(
        drift < MAX_DRIFT,
        "the resident set moved by {drift} bytes over {} anonymous peers",
        total - warm_up
    );

    // The listener still serves.
    let (client, conn) = connect_as("client", Config::default(), &bound.endpoint, 10).await;
    round_trip(10, &client, conn, wire::ECHO, b"still here", "echo").await;
    client.shutdown().await;
    server.shutdown().await;
}
