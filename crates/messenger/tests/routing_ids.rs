//! Routing ids on a listener: a connection announcing the Identity of a
//! live peer is refused (ZMTP ERROR, then the end of the stream), counted
//! in `routing_id_conflicts`, and the live peer keeps its session and gets
//! every reply. A ROUTER that handed the id over to the newcomer (libzmq's
//! ROUTER_HANDOVER) would send the live peer's replies to the intruder.
//!
//! tcp and ipc with raw intruders (byte-exact: greeting, then ERROR, then
//! nothing) and intruders on our own API; inproc through the API only.

use messenger_testkit as common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    Got, Place, Seen, connect_as, eventually, raw_zmtp, retry, round_trip, serve_seen, wait_until,
    within,
};
use messenger::{Config, ConnectionId, Error, ListenerInfo, Messenger};
use messenger_proto::wire;

/// Intruder rounds; each runs a raw intruder and an API intruder while a
/// batch of the live peer's requests is in flight.
const ROUNDS: usize = 10;
/// Requests of the live peer per round.
const PER_ROUND: usize = 10;

/// A listener whose server loop records what it sees and replies with the
/// body.
async fn server(transport: &str) -> (Messenger, ListenerInfo, Place, Seen) {
    serve_seen(transport, Config::default(), common::Answer::Body).await
}

/// Every message the server loop saw came from alice.
fn all_from_alice(seen: &[Got]) -> bool {
    seen.iter().all(|g| g.peer.as_ref() == b"alice")
}

/// Alice, the live peer, connected to `listener`.
async fn connect_alice(listener: &ListenerInfo) -> (Messenger, ConnectionId) {
    connect_as("alice", Config::default(), &listener.endpoint, 10).await
}

/// A second messenger "alice" trying to connect to `listener`. Its
/// `make_connection` retries a refusal for a live id until its connect
/// timeout (in case the live one is its own previous run, about to go), so
/// that is kept short here.
async fn twin_connects(listener: &ListenerInfo) -> (Messenger, Result<ConnectionId, Error>) {
    let config = Config {
        connect_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let twin = Messenger::builder()
        .identity("alice")
        .config(config)
        .build()
        .unwrap();
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

/// While alice's requests flow, a raw DEALER and a messenger announcing
/// "alice" are refused each round (and counted); alice keeps her session
/// and gets every reply; once she leaves, her id is free again.
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
    // The raw intruder once a round, the API one once per retry.
    let stats = server.stats();
    assert!(
        stats.routing_id_conflicts >= 2 * ROUNDS as u64,
        "{transport}: {stats:?}"
    );
    let astats = alice.stats();
    assert_eq!(
        astats.reconnects, 0,
        "{transport}: alice lost her session: {astats:?}"
    );
    assert!(alice.is_connected(conn), "{transport}");
    let got = seen.all();
    assert_eq!(got.len(), sent, "{transport}: the server loop saw {got:?}");
    assert!(all_from_alice(&got), "{transport}: {got:?}");
    eprintln!(
        "{transport}: {sent} requests answered, {} intruders refused",
        stats.routing_id_conflicts
    );

    // Once alice is gone her id is free again.
    alice.shutdown().await;
    let what = "the id is free after alice left";
    retry(10, what, Duration::from_millis(20), async || {
        matches!(raw_hello(&bound, b"alice").await, Answer::Ready).then_some(())
    })
    .await;
    server.shutdown().await;
}

/// [`live_peer_keeps_its_id`] on tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peers_identity_is_refused_on_tcp() {
    live_peer_keeps_its_id("tcp").await;
}

/// [`live_peer_keeps_its_id`] on ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peers_identity_is_refused_on_ipc() {
    live_peer_keeps_its_id("ipc").await;
}

/// On inproc (the API only): a second "alice" is refused while alice is
/// live, alice keeps her session and replies, and the twin gets in once
/// she left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peers_identity_is_refused_on_inproc() {
    let (server, bound, _p, seen) = server("inproc").await;
    let (alice, conn) = connect_alice(&bound).await;
    round_trip(10, &alice, conn, wire::NOOP, b"before", "alice before").await;

    let (twin, r) = twin_connects(&bound).await;
    match r {
        Err(e) => {
            eprintln!("inproc: the twin's make_connection: {e}");
            assert!(e.to_string().contains("routing id in use"), "{e}");
        }
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
    let got = seen.all();
    assert_eq!(got.len(), PER_ROUND + 1, "{got:?}");
    assert!(all_from_alice(&got), "{got:?}");

    // Once alice is gone the twin gets in.
    alice.shutdown().await;
    let what = "the twin connects after alice left";
    let c = retry(10, what, Duration::from_millis(20), async || {
        twin.make_connection(&bound.endpoint).await.ok()
    })
    .await;
    round_trip(10, &twin, c, wire::NOOP, b"twin", "the twin is served").await;
    twin.shutdown().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Restarts with the same identity

/// Messages per run of the restarting client.
const RESTART_N: usize = 20_000;
/// The second run sends this many at a time.
const RESTART_BATCH: usize = 500;

/// Messages `ids` for the server loop, as one write.
fn pipelined_run(tag: &str, ids: impl IntoIterator<Item = usize>) -> Vec<u8> {
    ids.into_iter()
        .flat_map(|i| {
            let payload = format!("{i}-0-0-{tag}-{i}");
            raw_zmtp::message(&[b"", payload.as_bytes()])
        })
        .collect()
}

/// Checks that no body reached the server loop twice; returns how many
/// start with `prefix`.
fn each_once(seen: &Seen, transport: &str, prefix: &str) -> usize {
    let seen = seen.bodies();
    let mut bodies: Vec<&[u8]> = seen.iter().map(|b| b.as_ref()).collect();
    bodies.sort_unstable();
    let before = bodies.len();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        before,
        "{transport}: a message reached the server loop twice"
    );
    bodies
        .iter()
        .filter(|b| b.starts_with(prefix.as_bytes()))
        .count()
}

/// The msg_id of an ACK among what a listener sends a DEALER.
fn ack_id(parts: &[Vec<u8>]) -> Option<u64> {
    let p = wire::parse(&Bytes::copy_from_slice(parts.last()?)).ok()?;
    (p.dst_cb == wire::ACK).then_some(p.msg_id)
}

/// Issue 11: a client that restarted with the same identity and msg_ids
/// from 0 lost 23-35 of about 196 messages that were ACKed, because the old
/// connection's messages still in flight were recorded in the new
/// session's duplicate window. Here the first run pipelines its messages
/// and closes its sending side at once, so the listener is still working
/// through them when the second run, with the same identity and ids from
/// 0, dials (and is refused while the first is live there, then taken).
/// Every message either run saw ACKed reaches the server loop, exactly
/// once.
async fn a_restart_loses_nothing_acked(transport: &str) {
    use tokio::io::AsyncWriteExt;
    let (server, bound, _p, seen) = server(transport).await;
    let mut first = raw_zmtp::dealer(
        &bound.endpoint,
        b"restarter",
        &pipelined_run("one", 0..RESTART_N),
    )
    .await;
    first.inner.shutdown().await.unwrap();
    let first_run = async {
        first.expect_ready().await;
        let mut acked = std::collections::BTreeSet::new();
        // Until the listener ends the session (it read our end).
        while let Ok(Some(parts)) = first.message().await {
            acked.extend(ack_id(&parts));
        }
        acked
    };
    let second_run = async {
        let mut refusals = 0;
        let what = "the second run is taken";
        // Boxed: debug builds lay these large futures out on the stack.
        let mut second = Box::pin(retry(30, what, Duration::from_millis(1), async || {
            let mut r = raw_zmtp::dealer(&bound.endpoint, b"restarter", b"").await;
            let answer = r.command().await.unwrap();
            if answer.command_name() == Some(&b"READY"[..]) {
                return Some(r);
            }
            refusals += 1;
            None
        }))
        .await;
        // In batches, each ACKed before the next, resending what is not
        // ACKed within 500 ms as any sender does (the listener refuses
        // messages unACKed while its server loop's queue is full, which
        // the first run's burst can make it).
        let mut acked = std::collections::BTreeSet::new();
        let mut resent = 0;
        for batch in (0..RESTART_N).step_by(RESTART_BATCH) {
            let ids = batch..batch + RESTART_BATCH;
            second.send(&pipelined_run("two", ids.clone())).await;
            loop {
                let missing: Vec<usize> = ids
                    .clone()
                    .filter(|&i| !acked.contains(&(i as u64)))
                    .collect();
                if missing.is_empty() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(500), second.message()).await {
                    Ok(parts) => {
                        let parts = parts.unwrap().expect("the listener closed");
                        acked.extend(ack_id(&parts));
                    }
                    Err(_) => {
                        resent += missing.len();
                        second.send(&pipelined_run("two", missing)).await;
                    }
                }
            }
        }
        if resent > 0 {
            eprintln!("{transport}: the second run resent {resent}");
        }
        (refusals, second)
    };
    let (acked_one, (refusals, second)) = within(30, "both runs", async {
        tokio::join!(Box::pin(first_run), Box::pin(second_run))
    })
    .await;
    let wanted: Vec<String> = acked_one
        .iter()
        .map(|i| format!("one-{i}"))
        .chain((0..RESTART_N).map(|i| format!("two-{i}")))
        .collect();
    let missing = || -> Vec<String> {
        let bodies = seen.bodies();
        let bodies: std::collections::HashSet<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
        wanted
            .iter()
            .filter(|w| !bodies.contains(w.as_bytes()))
            .cloned()
            .collect()
    };
    if !wait_until(Duration::from_secs(10), || missing().is_empty()).await {
        let gone = missing();
        panic!(
            "{transport}: {} ACKed messages never reached the server loop: {:?}",
            gone.len(),
            &gone[..gone.len().min(20)]
        );
    }
    let delivered_one = each_once(&seen, transport, "one-");
    eprintln!(
        "{transport}: first run {} ACKed of {RESTART_N} ({delivered_one} delivered), second run refused {refusals} times, then all {RESTART_N} delivered",
        acked_one.len(),
    );
    drop(second);
    server.shutdown().await;
}

/// [`a_restart_loses_nothing_acked`] on tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_nothing_acked_on_tcp() {
    a_restart_loses_nothing_acked("tcp").await;
}

/// [`a_restart_loses_nothing_acked`] on ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_nothing_acked_on_ipc() {
    a_restart_loses_nothing_acked("ipc").await;
}

/// The same through the API on every transport: a messenger that shuts
/// down mid-stream and one with the same identity started at once (its
/// `make_connection` waits out the listener's last moments with the old
/// one). Every message confirmed to either reaches the server loop once.
async fn a_restarted_messenger_loses_nothing_confirmed(transport: &str) {
    const N: usize = 400;
    let (server, bound, _p, seen) = server(transport).await;
    let run = |tag: &'static str, stop_after: usize| {
        let endpoint = bound.endpoint.clone();
        async move {
            let m = Messenger::builder().identity("restarter").build().unwrap();
            let conn = within(10, "make_connection", m.make_connection(&endpoint))
                .await
                .unwrap_or_else(|e| panic!("{transport}: {tag}: {e}"));
            let mut sends: futures::stream::FuturesUnordered<_> = (0..N)
                .map(|i| {
                    let m = &m;
                    async move {
                        let body = format!("{tag}-{i}");
                        m.send_confirmed(conn, wire::NOOP, body.as_bytes())
                            .await
                            .ok()
                            .map(|_| body)
                    }
                })
                .collect();
            let mut confirmed = Vec::new();
            within(20, "confirmations", async {
                use futures::StreamExt;
                while let Some(r) = sends.next().await {
                    confirmed.extend(r);
                    if confirmed.len() >= stop_after {
                        break;
                    }
                }
            })
            .await;
            drop(sends);
            m.shutdown().await;
            confirmed
        }
    };
    let mut wanted = run("one", N / 4).await;
    wanted.extend(run("two", N).await);
    assert!(wanted.len() >= N + N / 4, "{transport}: {}", wanted.len());
    eventually(10, "every confirmed message at the server loop", || {
        let bodies = seen.bodies();
        let bodies: std::collections::HashSet<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
        wanted.iter().all(|w| bodies.contains(w.as_bytes()))
    })
    .await;
    each_once(&seen, transport, "one-");
    server.shutdown().await;
}

/// [`a_restarted_messenger_loses_nothing_confirmed`] on tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_messenger_loses_nothing_confirmed_on_tcp() {
    a_restarted_messenger_loses_nothing_confirmed("tcp").await;
}

/// [`a_restarted_messenger_loses_nothing_confirmed`] on ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_messenger_loses_nothing_confirmed_on_ipc() {
    a_restarted_messenger_loses_nothing_confirmed("ipc").await;
}

/// [`a_restarted_messenger_loses_nothing_confirmed`] on inproc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_messenger_loses_nothing_confirmed_on_inproc() {
    a_restarted_messenger_loses_nothing_confirmed("inproc").await;
}

/// The ids a messenger may announce: 1 to 255 bytes, not beginning with a
/// zero byte (ZMTP keeps those for the ids a listener makes up for
/// anonymous peers, and every listener refuses them). An id that no
/// listener would take is refused when the messenger is made, named; one
/// beginning with a zero byte was taken, and then every connection it
/// made failed its handshake ("invalid Identity").
#[tokio::test]
async fn an_identity_no_listener_takes_is_refused_at_build() {
    for bad in [&b""[..], &b"\0a"[..], &[b'x'; 256][..]] {
        let built = Messenger::builder().identity(bad.to_vec()).build();
        assert!(
            matches!(&built, Err(Error::InvalidIdentity(_))),
            "{bad:?}: {:?}",
            built.as_ref().map(|m| m.identity().to_vec())
        );
    }
    for good in [&b"a"[..], &b"a\0"[..], &[b'x'; 255][..]] {
        assert!(Messenger::builder().identity(good.to_vec()).build().is_ok());
    }
}
