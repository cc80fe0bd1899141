//! Our own ZMTP heartbeats (`Config::heartbeat`) against peers that
//! speak ZMTP by hand (tests/common/raw_zmtp.rs), so each can do what a ZMQ
//! library would not: go silent right after the handshake, answer PINGs or
//! not, announce ZMTP 3.0.
//!
//! - a connection's PINGs find a ROUTER that stopped answering: the link
//!   drops within about timeout + interval, the waiting request fails
//!   with `Disconnected`, `ping_timeouts` counts it, and it redials;
//! - a listener's PINGs find a silent DEALER (it sees EOF) while a DEALER
//!   that answers them stays;
//! - a ZMTP 3.0 peer is never sent a PING (it would not understand one):
//!   the `zeromq` crate's DEALER stays connected and working, a silent
//!   3.0 peer is not dropped, and a connection to the crate's ROUTER
//!   sends none either;
//! - without heartbeats of our own, peers' PINGs are answered with PONGs
//!   echoing their context (listener and connection), and a PING's TTL
//!   drops a peer that then goes silent.
//!
//! pyzmq peers answering our PINGs are in tests/interop.rs
//! (`python_peer_answers_our_zmtp_pings`). Every wait is bounded.

use messenger_testkit as common;
use messenger_testkit::assert_stats;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::raw_zmtp::{Proxy, RawListener, RawPeer, Received, command, dial, pong};
use common::{
    Place, RAW_TRANSPORTS, connect, eventually, no_slc, raw_dealer, raw_recv, raw_router, raw_send,
    serve, spawn_request, within,
};
use messenger::Heartbeat;
use messenger::{Config, Endpoint, Error};
use messenger_proto::wire;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A PING every 100 ms; 300 ms of silence after one drops the peer.
fn heartbeat(ttl: Duration) -> Heartbeat {
    Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        ttl,
    }
}

fn with_heartbeat(ttl: Duration) -> Config {
    Config {
        heartbeat: Some(heartbeat(ttl)),
        ..Config::default()
    }
}

/// What one connection to a [`mute_router`] saw.
#[derive(Debug, Default, Clone)]
struct ConnLog {
    /// Each PING's TTL (deciseconds) and when it came (since the handshake).
    pings: Vec<(u16, Duration)>,
    /// Messages, as text parts.
    messages: Vec<Vec<String>>,
    /// The other side closed.
    eof: bool,
}

type Logs = Arc<Mutex<Vec<ConnLog>>>;

/// A raw ROUTER ("mute") that accepts every connection, completes the
/// handshake as ZMTP 3.1, and from then on reads (and logs) without ever
/// sending anything: a process that hung. Stop it with the returned
/// handle's `abort`.
async fn mute_router(t: &str) -> (Endpoint, Place, Logs, JoinHandle<()>) {
    let (listener, endpoint, p) = RawListener::bind(t).await;
    let logs: Logs = Arc::default();
    let l = Arc::clone(&logs);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let stream = listener.accept().await;
            let l = Arc::clone(&l);
            conns.spawn(async move {
                let mut peer = RawPeer::handshake(stream, 1, "ROUTER", b"mute").await;
                let start = Instant::now();
                let i = {
                    let mut logs = l.lock().unwrap();
                    logs.push(ConnLog::default());
                    logs.len() - 1
                };
                loop {
                    let f = peer.next().await;
                    let mut logs = l.lock().unwrap();
                    let log = &mut logs[i];
                    match f {
                        None => {
                            log.eof = true;
                            return;
                        }
                        Some(f) => {
                            if let Some((ttl, _)) = f.ping() {
                                log.pings.push((ttl, start.elapsed()));
                            } else if let Some(parts) = f.parts() {
                                log.messages.push(parts);
                            }
                        }
                    }
                }
            });
        }
    });
    (endpoint, p, logs, task)
}

/// Our connection (ZMTP heartbeat 100 ms / 300 ms) to a ROUTER that
/// completes the handshake and then never sends a byte: the connection
/// notices within about timeout + interval, fails the request waiting on
/// it with Disconnected, counts a ping timeout, and redials.
#[tokio::test]
async fn our_pings_find_a_router_that_stopped_answering() {
    for t in RAW_TRANSPORTS {
        let (endpoint, _p, logs, router) = mute_router(t).await;
        let config = Config {
            reconnect_initial: Duration::from_millis(200),
            ..with_heartbeat(Duration::ZERO)
        };
        let (client, conn) = connect(config, &endpoint).await;
        // (make_connection returns before the driver marks the link up:
        // see zeromq_crate.rs, a_connection_is_up_when_make_connection_returns.)
        let what = format!("{t}: the link is up");
        eventually(1, &what, || client.is_connected(conn)).await;
        let up_at = Instant::now();
        let req = spawn_request(&client, conn, wire::ECHO, "anyone there?");

        let what = format!("{t}: the connection notices the silent peer");
        eventually(2, &what, || !client.is_connected(conn)).await;
        let took = up_at.elapsed();
        // First PING at +100 ms, unanswered by +400 ms.
        assert!(
            took >= Duration::from_millis(250),
            "{t}: dropped after {took:?}"
        );
        let r = within(2, "the request fails", req).await.unwrap();
        assert_eq!(r.unwrap_err(), Error::Disconnected, "{t}");
        assert_stats!(
            client.stats(),
            t,
            ping_timeouts >= 1,
            pending_callbacks == 0
        );
        eprintln!("{t}: dropped after {took:?}");

        // The router saw the request, then PINGs about every 100 ms (TTL
        // 0: none asked), then our close.
        let what = format!("{t}: the router sees our side close");
        eventually(2, &what, || logs.lock().unwrap()[0].eof).await;
        let first = logs.lock().unwrap()[0].clone();
        assert_eq!(first.messages.len(), 1, "{t}: {first:?}");
        let m = &first.messages[0];
        assert_eq!(m.len(), 2, "{t}: {first:?}");
        assert_eq!(m[0], "", "{t}: {first:?}");
        assert!(
            m[1].starts_with("0-") && m[1].ends_with("-1-anyone there?"),
            "{t}: {first:?}"
        );
        assert!((2..=6).contains(&first.pings.len()), "{t}: {first:?}");
        assert!(
            first.pings.iter().all(|&(ttl, _)| ttl == 0),
            "{t}: {first:?}"
        );
        let at = first.pings[0].1;
        assert!(
            at >= Duration::from_millis(50) && at < Duration::from_millis(600),
            "{t}: first PING at {at:?}"
        );

        // A connection then redials; the new link is up (and, as silent,
        // dropped again later).
        let what = format!("{t}: redialled");
        eventually(5, &what, || {
            client.stats().reconnects >= 1 && logs.lock().unwrap().len() >= 2
        })
        .await;
        router.abort();
        client.shutdown().await;
    }
}

/// Expects the ACK of `msg_id` and the ECHO reply `{id}-0-{src_cb}-{body}`
/// from the listener ("server"), in either order; ACKs the reply.
async fn echo_round_trip(peer: &mut RawPeer, msg_id: u64, src_cb: u64, body: &str, what: &str) {
    let payload = format!("{msg_id}-{src_cb}-1-{body}");
    peer.send_message(&[b"", payload.as_bytes()]).await;
    let mut acked = false;
    let mut replied = false;
    while !(acked && replied) {
        let m = peer.next_message(5, what).await;
        assert_eq!(m.len(), 3, "{what}: {m:?}");
        assert_eq!((&m[0][..], &m[1][..]), ("server", ""), "{what}: {m:?}");
        let p = wire::parse(&Bytes::from(m[2].clone())).unwrap();
        if p.dst_cb == wire::ACK {
            assert_eq!(p.msg_id, msg_id, "{what}: {m:?}");
            acked = true;
        } else {
            assert_eq!((p.src_cb, p.dst_cb), (0, src_cb), "{what}: {m:?}");
            assert_eq!(p.body, Bytes::from(body.to_string()), "{what}: {m:?}");
            let ack = format!("{}-0-2-", p.msg_id);
            peer.send_message(&[b"", ack.as_bytes()]).await;
            replied = true;
        }
    }
}

/// Answers PINGs with PONGs (echoing the context) until `until`; returns
/// the peer, the PINGs it answered and whether it is still connected.
async fn answer_pings(mut peer: RawPeer, until: Instant) -> (RawPeer, usize, bool) {
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, peer.next()).await {
            Err(_) => return (peer, pings, true),
            Ok(None) => return (peer, pings, false),
            Ok(Some(f)) => {
                if let Some((_, context)) = f.ping() {
                    pings += 1;
                    peer.send(&pong(&context)).await;
                }
            }
        }
    }
}

/// A listener with ZMTP heartbeats (100 ms / 300 ms, TTL 1 s) and two raw
/// DEALERs that announce ZMTP 3.1: after one ECHO each, "silent" never
/// sends another byte and "live" answers every PING. The listener drops
/// the silent one (it sees EOF) within about timeout + interval and counts
/// one ping timeout; the live one stays and still gets answers.
#[tokio::test]
async fn listener_pings_find_a_silent_dealer_and_keep_a_live_one() {
    for t in RAW_TRANSPORTS {
        let (server, bound, _p) = serve(t, with_heartbeat(Duration::from_secs(1)), no_slc).await;
        let mut silent =
            RawPeer::handshake(dial(&bound.endpoint).await, 1, "DEALER", b"silent").await;
        let mut live = RawPeer::handshake(dial(&bound.endpoint).await, 1, "DEALER", b"live").await;
        // The listener speaks 3.1, NULL, as a ROUTER named "server".
        assert_eq!(&silent.greeting[10..12], &[3, 1], "{t}");
        assert_eq!(&silent.greeting[12..17], b"NULL\0", "{t}");
        let ready = String::from_utf8_lossy(&silent.ready).into_owned();
        assert!(
            ready.contains("Socket-Type") && ready.contains("ROUTER"),
            "{t}: {ready:?}"
        );
        echo_round_trip(&mut silent, 0, 9, "before silence", "silent's ECHO").await;
        echo_round_trip(&mut live, 0, 9, "hello", "live's ECHO").await;

        let quiet_at = Instant::now();
        let live = tokio::spawn(answer_pings(live, quiet_at + Duration::from_millis(1500)));
        let mut pings = Vec::new();
        let what = format!("{t}: the listener drops the silent peer");
        within(3, &what, async {
            while let Some(f) = silent.next().await {
                if let Some(p) = f.ping() {
                    pings.push(p);
                }
            }
        })
        .await;
        let took = quiet_at.elapsed();
        eprintln!(
            "{t}: silent peer dropped after {took:?}, {} PINGs",
            pings.len()
        );
        assert!(
            took >= Duration::from_millis(250),
            "{t}: dropped after {took:?}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{t}: dropped after {took:?}"
        );
        assert!(pings.len() >= 2, "{t}: {pings:?}");
        // TTL 1 s, in deciseconds.
        assert!(pings.iter().all(|(ttl, _)| *ttl == 10), "{t}: {pings:?}");
        assert!(
            pings.iter().all(|(_, ctx)| ctx.len() <= 16),
            "{t}: {pings:?}"
        );

        let (mut live, answered, open) = within(5, "live peer", live).await.unwrap();
        assert!(
            open,
            "{t}: the listener dropped a peer that answers its PINGs"
        );
        assert!(answered >= 10, "{t}: {answered} PINGs in 1.5 s");
        echo_round_trip(&mut live, 1, 9, "still here", "live's second ECHO").await;
        assert_stats!(server.stats(), t, ping_timeouts == 1, guard_rejections == 0);
        drop(live);
        server.shutdown().await;
    }
}

/// A ZMTP 3.0 peer is never sent a PING (3.0 has no PING; the `zeromq`
/// crate, which speaks 3.0, fails on an unknown command). Against a
/// listener with heartbeats on: the `zeromq` crate's DEALER, through a
/// counting proxy, stays connected and gets ECHO answers for a second with
/// no PING crossing; a raw 3.0 DEALER that goes silent after the handshake
/// is not dropped (no PING, so no ping deadline).
#[tokio::test]
async fn a_zmtp_3_0_peer_is_never_pinged() {
    for t in RAW_TRANSPORTS {
        let (server, bound, _p) = serve(t, with_heartbeat(Duration::ZERO), no_slc).await;
        let proxy = Proxy::start(&bound.endpoint).await;
        let mut zq = raw_dealer(&proxy.endpoint, "zq-3.0").await;
        let mut mute =
            RawPeer::handshake(dial(&bound.endpoint).await, 0, "DEALER", b"mute-3.0").await;

        let start = Instant::now();
        let mut i = 0u64;
        while start.elapsed() < Duration::from_millis(1200) {
            let body = format!("{t}-{i}");
            let payload = format!("{i}-5-1-{body}");
            raw_send(&mut zq, &[b"", payload.as_bytes()]).await;
            let mut got = Vec::new();
            for _ in 0..2 {
                let f = raw_recv(&mut zq, 5, "ACK or reply").await;
                assert_eq!(f.len(), 3, "{t}: {f:?}");
                got.push(wire::parse(&f[2]).unwrap());
            }
            // The reply first, then the ACK.
            got.sort_by_key(|p| p.dst_cb == wire::ACK);
            assert_eq!((got[0].dst_cb, got[0].msg_id), (5, i), "{t}: {got:?}");
            assert_eq!(got[0].body, Bytes::from(body), "{t}: {got:?}");
            assert_eq!(
                (got[1].dst_cb, got[1].msg_id),
                (wire::ACK, i),
                "{t}: {got:?}"
            );
            let ack = format!("{}-0-2-", got[0].msg_id);
            raw_send(&mut zq, &[b"", ack.as_bytes()]).await;
            i += 1;
            // ECHOs spread over the 1.2 s of wall time PINGs would need.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The silent 3.0 peer: nothing at all came in 1.2 s, and it is
        // still connected.
        let quiet = tokio::time::timeout(Duration::from_millis(100), mute.next()).await;
        assert!(quiet.is_err(), "{t}: the silent 3.0 peer got {quiet:?}");
        echo_round_trip(&mut mute, 0, 6, "still here", "3.0 peer's ECHO").await;

        let p = proxy.stats();
        eprintln!("{t}: {i} ECHOs through the proxy: {p:?}");
        assert_eq!(p.connections, 1, "{t}: {p:?}");
        assert_eq!(p.closed, 0, "{t}: {p:?}");
        assert_eq!(
            p.up.minor,
            Some(0),
            "{t}: the zeromq crate speaks 3.0: {p:?}"
        );
        assert_eq!(p.down.pings, 0, "{t}: {p:?}");
        assert!(p.up.messages as u64 >= 2 * i, "{t}: {p:?}");
        assert_stats!(server.stats(), t, ping_timeouts == 0, guard_rejections == 0);
        drop((zq, mute));
        server.shutdown().await;
    }
}

/// Our connection with heartbeats on, to the `zeromq` crate's ROUTER (ZMTP
/// 3.0) through a counting proxy: no PING crosses, the link stays up for
/// a second and a request is answered.
#[tokio::test]
async fn a_connection_never_pings_a_zmtp_3_0_router() {
    for t in RAW_TRANSPORTS {
        let (mut router, target, _p) = raw_router(t).await;
        let proxy = Proxy::start(&target).await;
        let (client, conn) = connect(with_heartbeat(Duration::ZERO), &proxy.endpoint).await;
        // A second of wall time: ten PINGs' worth, had we sent any.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(client.is_connected(conn), "{t}");

        let req = spawn_request(&client, conn, wire::ECHO, "still there?");
        let f = raw_recv(&mut router, 5, "the request").await;
        let m = wire::parse(&f[2]).unwrap();
        let reply = format!("0-0-{}-yes", m.src_cb);
        raw_send(&mut router, &[b"client", b"zq", b"", reply.as_bytes()]).await;
        let r = within(5, "the request completes", req).await.unwrap();
        assert_eq!(r.unwrap().body, Bytes::from("yes"), "{t}");

        let p = proxy.stats();
        assert_eq!(p.down.minor, Some(0), "{t}: {p:?}");
        assert_eq!(p.up.pings, 0, "{t}: {p:?}");
        assert_eq!((p.connections, p.closed), (1, 0), "{t}: {p:?}");
        assert_stats!(client.stats(), t, ping_timeouts == 0, reconnects == 0);
        client.shutdown().await;
    }
}

/// Without heartbeats of our own, peers' PINGs are still answered, on a
/// listener and on a connection: each PING gets a PONG echoing its context,
/// and the session goes on. A PING's TTL is honoured: a DEALER that sends
/// PING with TTL 300 ms and then nothing is dropped after about 300 ms
/// (counted in ping_timeouts); one that asked no TTL stays.
#[tokio::test]
async fn peers_pings_are_answered_and_their_ttl_honoured() {
    for t in RAW_TRANSPORTS {
        // Listener side.
        let (server, bound, _p) = serve(t, Config::default(), no_slc).await;
        let mut keeps = RawPeer::handshake(dial(&bound.endpoint).await, 1, "DEALER", b"k").await;
        let mut ttl = RawPeer::handshake(dial(&bound.endpoint).await, 1, "DEALER", b"t").await;
        for (peer, context) in [(&mut keeps, &b"0123456789abcdef"[..]), (&mut ttl, b"")] {
            peer.send(&command("PING", &[&[0, 0], context].concat()))
                .await;
            let f = within(5, "PONG", peer.next()).await;
            assert_eq!(
                f,
                Some(Received::Command {
                    name: b"PONG".to_vec(),
                    data: context.to_vec()
                }),
                "{t}"
            );
        }
        echo_round_trip(&mut keeps, 0, 9, "after PING", "ECHO after PING").await;
        // TTL 3 deciseconds, then silence.
        ttl.send(&command("PING", &[0, 3, b'x'])).await;
        let start = Instant::now();
        let what = format!("{t}: dropped after its TTL");
        within(3, &what, async {
            while let Some(f) = ttl.next().await {
                assert!(f.is_command("PONG"), "{t}: {f:?}");
            }
        })
        .await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
            "{t}: dropped after {took:?}"
        );
        let quiet = tokio::time::timeout(Duration::from_millis(300), keeps.next()).await;
        assert!(quiet.is_err(), "{t}: the peer without a TTL got {quiet:?}");
        echo_round_trip(
            &mut keeps,
            1,
            9,
            "still here",
            "ECHO after the other's drop",
        )
        .await;
        let s = server.stats();
        assert_eq!(s.ping_timeouts, 1, "{t}: {s:?}");
        // Gone first, or closing would linger for its close.
        drop(keeps);
        server.shutdown().await;

        // Connection side: a raw ROUTER PINGs our connection.
        let (listener, endpoint, _p) = RawListener::bind(t).await;
        let raw = tokio::spawn(async move {
            RawPeer::handshake(listener.accept().await, 1, "ROUTER", b"raw").await
        });
        let (client, _conn) = connect(Config::default(), &endpoint).await;
        let mut router = within(5, "raw handshake", raw).await.unwrap();
        let ready = String::from_utf8_lossy(&router.ready).into_owned();
        assert!(
            ready.contains("DEALER") && ready.contains("client"),
            "{t}: {ready:?}"
        );
        router.send(&command("PING", b"\x00\x00ctx")).await;
        let f = within(5, "PONG from our connection", router.next()).await;
        assert_eq!(
            f,
            Some(Received::Command {
                name: b"PONG".to_vec(),
                data: b"ctx".to_vec()
            }),
            "{t}"
        );
        assert_eq!(client.stats().ping_timeouts, 0, "{t}");
        drop(router);
        client.shutdown().await;
    }
}
