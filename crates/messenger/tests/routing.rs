//! Who gets what: replies reach the client that asked, MSCs take their
//! messages before the SLC, reused callback slots never see their previous
//! owner's replies, connections are pooled, and endpoints are bound once.

use messenger_testkit as common;
use messenger_testkit::assert_stats;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::{
    Answer, RAW_TRANSPORTS, Seen, TRANSPORTS, connect, connect_as, eventually, expect_reply,
    forwarding_pair, no_slc, place, raw_recv, raw_router, raw_send, retry, round_trip, serve,
    serve_seen, spawn_request, within,
};
use messenger::{Config, Destination, Endpoint, Error, Incoming, Messenger, Responder};
use messenger_proto::wire;

/// The slab index a callback's wire id names (layout documented in
/// `messenger_proto::callbacks`).
fn slot_of(wire_id: u64) -> u64 {
    (wire_id - wire::FIRST_USER) & 0xffff_ffff
}

/// Two clients send the same bodies at once: each gets only the replies
/// to its own requests, each message reaches the server loop once, and
/// the server reaches each client by its routing id.
#[tokio::test]
async fn two_clients_get_only_their_own_replies() {
    const M: usize = 200;
    for t in TRANSPORTS {
        let seen = Seen::default();
        let recorder = seen.clone();
        let slc = move |m: Incoming, r: Responder| {
            recorder.record(&m);
            assert_eq!(r.peer(), &m.peer);
            let body = [&m.peer[..], b":", &m.body].concat();
            r.try_reply(body).unwrap();
        };
        let (server, bound, _p) = serve(t, Config::default(), slc).await;
        let (alice, ca) = connect_as("alice", Config::default(), &bound.endpoint, 5).await;
        let (bob, cb) = connect_as("bob", Config::default(), &bound.endpoint, 5).await;

        // Both clients use the same bodies, interleaved, so a reply routed to
        // the wrong client would carry the other's name.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..M {
            for (who, m, conn) in [("alice", &alice, ca), ("bob", &bob, cb)] {
                let m = m.clone();
                set.spawn(async move {
                    let body = format!("m{i}");
                    let reply = m.request(conn, wire::NOOP, &body).await;
                    (who, body, reply)
                });
            }
        }
        within(10, "all replies", async {
            while let Some(r) = set.join_next().await {
                let (who, body, reply) = r.unwrap();
                let reply = reply.unwrap_or_else(|e| panic!("{t}: {who} {body}: {e}"));
                assert_eq!(
                    reply.body,
                    Bytes::from(format!("{who}:{body}")),
                    "{t}: {who} got someone else's reply"
                );
            }
        })
        .await;
        let seen = seen.all();
        assert_eq!(seen.len(), 2 * M, "{t}: each message reached the SLC once");
        for who in ["alice", "bob"] {
            let bodies: HashSet<&Bytes> = seen
                .iter()
                .filter(|g| g.peer == who.as_bytes())
                .map(|g| &g.body)
                .collect();
            assert_eq!(bodies.len(), M, "{t}: {who}'s messages");
        }

        // The other way: the server addresses each client by routing id, and
        // the answer comes back from that client.
        for who in ["alice", "bob"] {
            let dest = Destination::Peer {
                listener: bound.id,
                peer: Bytes::from(who),
            };
            let reply = within(5, "server to peer", server.request(dest, wire::ECHO, who))
                .await
                .unwrap_or_else(|e| panic!("{t}: server -> {who}: {e}"));
            assert_eq!(reply.peer, Bytes::from(who), "{t}");
            assert_eq!(reply.body, Bytes::from(who), "{t}");
        }
        assert_eq!(alice.stats().late_replies_dropped, 0, "{t}");
        assert_eq!(bob.stats().late_replies_dropped, 0, "{t}");
        server.shutdown().await;
        alice.shutdown().await;
        bob.shutdown().await;
    }
}

/// The server answers a client's request with a request of its own (to
/// the client's callback); the client's answer to that goes to the
/// server's waiting request, never to its server loop.
#[tokio::test]
async fn reply_to_a_server_msc_goes_to_the_msc_not_the_slc() {
    for t in TRANSPORTS {
        let (p, mut slc_rx) = forwarding_pair(t).await;
        let (server, bound, client, conn) = (&p.server, &p.bound, &p.client, p.conn);

        // The client asks; its request reaches the server's SLC.
        let ask = spawn_request(client, conn, wire::NOOP, "hello");
        let (hello, _responder) = within(5, "slc gets hello", slc_rx.recv()).await.unwrap();
        assert_eq!(hello.body, Bytes::from("hello"), "{t}");
        assert!(hello.src_cb >= wire::FIRST_USER, "{t}: {hello:?}");

        // The server answers with a request of its own, to the client's MSC,
        // through Destination::Peer: the server now holds an MSC.
        let dest = hello.reply_destination();
        assert_eq!(
            dest,
            Destination::Peer {
                listener: bound.id,
                peer: hello.peer.clone()
            },
            "{t}"
        );
        let s = server.clone();
        let client_cb = hello.src_cb;
        let question = tokio::spawn(async move { s.request(dest, client_cb, "question").await });
        let q = expect_reply(
            ask,
            b"question",
            &format!("{t}: client's MSC gets the question"),
        )
        .await;
        assert_eq!(q.dst_cb, client_cb, "{t}");
        assert!(q.src_cb >= wire::FIRST_USER, "{t}: {q:?}");

        // The client's answer is addressed to the server's MSC: it must
        // complete the server's request and never reach the SLC.
        client
            .send_message(conn, q.src_cb, "answer", None)
            .await
            .unwrap();
        let a = expect_reply(
            question,
            b"answer",
            &format!("{t}: server's MSC gets the answer"),
        )
        .await;
        assert_eq!(a.peer, hello.peer, "{t}");

        // A barrier behind the answer on the same link: had the answer
        // gone to the SLC, the SLC would have seen it first.
        client
            .send_message(conn, wire::NOOP, "barrier", None)
            .await
            .unwrap();
        let (next, _) = within(5, "slc gets the barrier", slc_rx.recv())
            .await
            .unwrap();
        assert_eq!(
            next.body,
            Bytes::from("barrier"),
            "{t}: the SLC saw a message meant for an MSC"
        );
        // The hello and the barrier.
        assert_stats!(
            server.stats(),
            t,
            slc_delivered == 2,
            msc_delivered == 1,
            late_replies_dropped == 0,
            pending_callbacks == 0
        );
        p.shutdown().await;
    }
}

/// A reused callback slot gets a new wire id, and a late reply to the old
/// id is ACKed and dropped rather than completing the new request. The peer
/// here is another messenger whose SLC keeps the first request's responder.
#[tokio::test]
async fn reused_slot_never_gets_the_previous_owners_reply() {
    for t in TRANSPORTS {
        let (p, mut slc_rx) = forwarding_pair(t).await;
        let (client, conn) = (&p.client, p.conn);

        let req1 = spawn_request(client, conn, wire::NOOP, "one");
        let (m1, r1) = within(5, "request 1 arrives", slc_rx.recv()).await.unwrap();
        r1.try_reply("r1").unwrap();
        expect_reply(req1, b"r1", &format!("{t}: request 1 completes")).await;
        assert_eq!(client.stats().pending_callbacks, 0, "{t}");

        let req2 = spawn_request(client, conn, wire::NOOP, "two");
        let (m2, r2) = within(5, "request 2 arrives", slc_rx.recv()).await.unwrap();
        assert_ne!(m1.src_cb, m2.src_cb, "{t}: a reused slot needs a new id");
        assert_eq!(
            slot_of(m1.src_cb),
            slot_of(m2.src_cb),
            "{t}: expected the freed slot to be reused (the case under test)"
        );

        // A late duplicate reply to request 1, as a new message.
        let before = client.stats().late_replies_dropped;
        r1.try_reply("late").unwrap();
        eventually(5, "late reply dropped", || {
            client.stats().late_replies_dropped == before + 1
        })
        .await;
        assert!(!req2.is_finished(), "{t}: request 2 completed early");

        r2.try_reply("r2").unwrap();
        expect_reply(req2, b"r2", &format!("{t}: request 2 completes")).await;
        assert_stats!(
            client.stats(),
            t,
            late_replies_dropped == before + 1,
            msc_delivered == 2,
            pending_callbacks == 0
        );
        p.shutdown().await;
    }
}

/// Next message from our connection to a raw ROUTER that is not an ACK and
/// not a resend of one already seen; ACKs it as a libzmq peer would.
async fn next_message(
    router: &mut zeromq::RouterSocket,
    seen: &mut HashSet<u64>,
    what: &str,
) -> (Bytes, wire::Payload) {
    loop {
        let f = raw_recv(router, 5, what).await;
        assert_eq!(f.len(), 3, "{what}: frames {f:?}");
        assert!(f[1].is_empty(), "{what}: delimiter {f:?}");
        let p = wire::parse(&f[2]).unwrap_or_else(|e| panic!("{what}: {e}: {f:?}"));
        if p.dst_cb == wire::ACK {
            continue;
        }
        let ack = format!("{}-0-2-", p.msg_id);
        raw_send(router, &[&f[0], b"raw", b"", ack.as_bytes()]).await;
        if seen.insert(p.msg_id) {
            return (f[0].clone(), p);
        }
    }
}

/// Next ACK our connection sends a raw ROUTER.
async fn next_ack(router: &mut zeromq::RouterSocket, what: &str) -> u64 {
    loop {
        let f = raw_recv(router, 5, what).await;
        let p = wire::parse(&f[2]).unwrap_or_else(|e| panic!("{what}: {e}: {f:?}"));
        if p.dst_cb == wire::ACK {
            assert_eq!(f[2], Bytes::from(format!("{}-0-2-", p.msg_id)), "{what}");
            return p.msg_id;
        }
    }
}

/// The same with a raw zeromq ROUTER as the peer, which sends the late
/// duplicate reply to request 1's id with a fresh msg_id.
#[tokio::test]
async fn reused_slot_ignores_late_reply_from_raw_router() {
    for t in RAW_TRANSPORTS {
        let (mut router, endpoint, _p) = raw_router(t).await;
        let (client, conn) = connect(Config::default(), &endpoint).await;
        let mut seen = HashSet::new();

        let req1 = spawn_request(&client, conn, wire::NOOP, "one");
        let (peer, m1) = next_message(&mut router, &mut seen, "request 1").await;
        assert_eq!(peer, Bytes::from("client"), "{t}");
        assert_eq!(m1.body, Bytes::from("one"), "{t}");
        let c1 = m1.src_cb;
        let reply = format!("0-0-{c1}-r1");
        raw_send(&mut router, &[&peer, b"raw", b"", reply.as_bytes()]).await;
        expect_reply(req1, b"r1", &format!("{t}: request 1 completes")).await;
        assert_eq!(next_ack(&mut router, "ACK of reply 1").await, 0, "{t}");

        let req2 = spawn_request(&client, conn, wire::NOOP, "two");
        let (_, m2) = next_message(&mut router, &mut seen, "request 2").await;
        assert_eq!(m2.body, Bytes::from("two"), "{t}");
        let c2 = m2.src_cb;
        assert_ne!(c1, c2, "{t}: a reused slot needs a new id");
        assert_eq!(slot_of(c1), slot_of(c2), "{t}: expected the slot reused");

        let before = client.stats().late_replies_dropped;
        let late = format!("1-0-{c1}-late");
        raw_send(&mut router, &[&peer, b"raw", b"", late.as_bytes()]).await;
        assert_eq!(
            next_ack(&mut router, "the late reply is ACKed").await,
            1,
            "{t}"
        );
        eventually(5, "late reply counted", || {
            client.stats().late_replies_dropped == before + 1
        })
        .await;
        assert!(!req2.is_finished(), "{t}: request 2 took the late reply");

        let reply = format!("2-0-{c2}-r2");
        raw_send(&mut router, &[&peer, b"raw", b"", reply.as_bytes()]).await;
        expect_reply(req2, b"r2", &format!("{t}: request 2 completes")).await;
        assert_stats!(
            client.stats(),
            t,
            late_replies_dropped == before + 1,
            pending_callbacks == 0
        );
        client.shutdown().await;
    }
}

/// One connection per endpoint: connecting again, or from two callers at
/// once, gives the same connection; another endpoint gets its own.
#[tokio::test]
async fn make_connection_is_pooled_per_endpoint() {
    for t in TRANSPORTS {
        let (server, b1, _p1) = serve(t, Config::default(), no_slc).await;
        let p2 = place(t);
        let b2 = within(
            5,
            "listen",
            server.listen_for_connection(&p2.endpoint, no_slc),
        )
        .await
        .unwrap();
        let (client, first) = connect(Config::default(), &b1.endpoint).await;
        let again = client.make_connection(&b1.endpoint).await.unwrap();
        assert_eq!(first, again, "{t}");
        assert_eq!(client.stats().connections, 1, "{t}");

        // Concurrent callers share one connection too.
        let (x, y) = within(5, "concurrent connects", async {
            tokio::join!(
                client.make_connection(&b1.endpoint),
                client.make_connection(&b1.endpoint)
            )
        })
        .await;
        assert_eq!(x.unwrap(), first, "{t}");
        assert_eq!(y.unwrap(), first, "{t}");
        assert_eq!(client.stats().connections, 1, "{t}");

        let other = client.make_connection(&b2.endpoint).await.unwrap();
        assert_ne!(other, first, "{t}");
        assert_eq!(client.stats().connections, 2, "{t}");

        // The pooled connection works.
        round_trip(5, &client, first, wire::ECHO, b"pooled", t).await;
        // The listeners count their peers too: one on each, until the
        // client leaves.
        common::eventually(5, &format!("{t}: the server counts its peers"), || {
            server.stats().connections == 2
        })
        .await;
        client.shutdown().await;
        common::eventually(5, &format!("{t}: the peers' sessions ended"), || {
            server.stats().connections == 0
        })
        .await;
        server.shutdown().await;
    }
}

/// An endpoint already bound (by this messenger or another) cannot be
/// bound again, and the failed attempts leave the first listener working.
#[tokio::test]
async fn binding_an_endpoint_in_use_fails() {
    for t in TRANSPORTS {
        let (server, bound, _p) = serve(t, Config::default(), no_slc).await;
        // tcp: the resolved port; ipc: the same path; inproc: the same name.
        let again = server.listen_for_connection(&bound.endpoint, no_slc).await;
        assert!(
            matches!(&again, Err(Error::InUse(e)) if *e == bound.endpoint),
            "{t}: {again:?}"
        );
        let other = Messenger::builder().identity("other").build().unwrap();
        let again = other.listen_for_connection(&bound.endpoint, no_slc).await;
        assert!(matches!(&again, Err(Error::InUse(_))), "{t}: {again:?}");
        assert_eq!(server.stats().listeners, 1, "{t}");
        assert_eq!(other.stats().listeners, 0, "{t}");

        // The failed attempts left the first listener working.
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        round_trip(5, &client, conn, wire::ECHO, b"still here", t).await;
        client.shutdown().await;
        other.shutdown().await;
        server.shutdown().await;
    }
}

/// Binds `endpoint`, retrying (for 5 s) while a listener just shut down
/// still holds it.
async fn bind_when_free(m: &Messenger, endpoint: &Endpoint) -> messenger::ListenerInfo {
    let what = format!("{endpoint}: free again after shutdown");
    retry(5, &what, Duration::from_millis(50), async || {
        match m.listen_for_connection(endpoint, no_slc).await {
            Ok(b) => Some(b),
            Err(Error::InUse(_)) => None,
            Err(e) => panic!("{endpoint}: {e}"),
        }
    })
    .await
}

/// After shutdown the endpoint can be bound again and the new listener
/// works: a restarted server comes back on the same address. Several
/// rounds, since what the old listener does after shutdown returns is a
/// matter of timing.
#[tokio::test]
async fn endpoint_is_free_again_after_shutdown() {
    const ROUNDS: usize = 15;
    for t in TRANSPORTS {
        let p = place(t);
        let mut endpoint = p.endpoint.clone();
        for round in 0..ROUNDS {
            let server = Messenger::builder().identity("server").build().unwrap();
            let bound = bind_when_free(&server, &endpoint).await;
            if round > 0 {
                assert_eq!(bound.endpoint, endpoint, "{t}");
            }
            endpoint = bound.endpoint.clone();
            // Wall time for whatever the previous listener left running to
            // finish: nothing of it may delete the new listener's file.
            tokio::time::sleep(Duration::from_millis(30)).await;
            if let Endpoint::Ipc(path) = &endpoint {
                assert!(
                    path.exists(),
                    "{t} round {round}: the new listener's socket file was deleted after \
                     it bound (by the previous listener's teardown)"
                );
            }
            let (client, conn) = connect_as("client", Config::default(), &endpoint, 6).await;
            let what = format!("{t} round {round}: echo");
            round_trip(5, &client, conn, wire::ECHO, b"again", &what).await;
            client.shutdown().await;
            server.shutdown().await;
        }
    }
}

/// A stale ipc socket file does not block binding; the new listener
/// serves, and shutdown removes its file.
#[tokio::test]
async fn stale_ipc_file_is_replaced_and_removed_on_shutdown() {
    let p = place("ipc");
    let Endpoint::Ipc(path) = p.endpoint.clone() else {
        unreachable!()
    };
    // A listener that died without cleaning up: the socket file stays.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "the stale socket file should remain");

    let server = Messenger::builder().identity("server").build().unwrap();
    let bound = server
        .listen_for_connection(&p.endpoint, no_slc)
        .await
        .expect("a stale ipc file does not block binding");
    assert!(path.exists());
    let (client, conn) = connect(Config::default(), &bound.endpoint).await;
    round_trip(5, &client, conn, wire::ECHO, b"fresh", "ipc").await;
    client.shutdown().await;
    server.shutdown().await;
    assert!(!path.exists(), "shutdown removes the ipc socket file");
}

/// An ipc path that is a regular file is refused (`NotASocket`) and left
/// as it was.
#[tokio::test]
async fn ipc_path_that_is_not_a_socket_is_refused_and_kept() {
    let p = place("ipc");
    let Endpoint::Ipc(path) = p.endpoint.clone() else {
        unreachable!()
    };
    std::fs::write(&path, b"not a socket").unwrap();
    let server = Messenger::builder().identity("server").build().unwrap();
    let r = server.listen_for_connection(&p.endpoint, no_slc).await;
    assert!(matches!(r, Err(Error::NotASocket(_))), "{r:?}");
    server.shutdown().await;
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

/// A file that appears at an ipc path after its listener shut down belongs
/// to someone else: nothing of ours may delete it later.
#[tokio::test]
async fn shutdown_never_deletes_a_file_created_after_it() {
    for round in 0..15 {
        let p = place("ipc");
        let Endpoint::Ipc(path) = p.endpoint.clone() else {
            unreachable!()
        };
        let server = Messenger::builder().identity("server").build().unwrap();
        server
            .listen_for_connection(&p.endpoint, no_slc)
            .await
            .unwrap();
        server.shutdown().await;
        assert!(!path.exists(), "round {round}: shutdown removes its file");
        std::fs::write(&path, b"someone else's").unwrap();
        // Wall time for anything of the old listener's still running.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            path.exists(),
            "round {round}: a file created after shutdown was deleted"
        );
    }
}

/// A request a listener sends to one peer can be answered only by that
/// peer: callback ids are messenger-wide, and another peer sending a reply
/// to the same id is treated as a late reply (ACKed, dropped, counted),
/// leaving the request to its real answer.
#[tokio::test]
async fn only_the_asked_peer_can_answer() {
    for t in RAW_TRANSPORTS {
        let (server, bound, _p) = serve(t, Config::default(), no_slc).await;
        let mut asked = common::raw_dealer(&bound.endpoint, "asked").await;
        let mut other = common::raw_dealer(&bound.endpoint, "other").await;
        // Each says hello (an ECHO) so the listener has its session.
        for (d, name) in [(&mut asked, "asked"), (&mut other, "other")] {
            raw_send(d, &[b"", b"0-0-1-hi"]).await;
            let ack = raw_recv(d, 5, &format!("{t}: ACK of {name}'s hello")).await;
            assert_eq!(ack.last().unwrap().as_ref(), b"0-0-2-", "{t}");
            raw_recv(d, 5, &format!("{t}: echo to {name}")).await;
        }
        let dest = Destination::Peer {
            listener: bound.id,
            peer: Bytes::from_static(b"asked"),
        };
        let s = server.clone();
        let waiting = tokio::spawn(async move { s.request(dest, wire::NOOP, b"question").await });
        // What `asked` receives names the request's callback.
        let request = raw_recv(&mut asked, 5, &format!("{t}: the request")).await;
        let p = wire::parse(request.last().unwrap()).unwrap();
        assert_eq!(p.body.as_ref(), b"question", "{t}");
        let forged = format!("1-0-{}-forged", p.src_cb);
        raw_send(&mut other, &[b"", forged.as_bytes()]).await;
        let ack = raw_recv(&mut other, 5, &format!("{t}: ACK of the forgery")).await;
        assert_eq!(ack.last().unwrap().as_ref(), b"1-0-2-", "{t}");
        eventually(5, "the forgery counted as late", || {
            server.stats().late_replies_dropped == 1
        })
        .await;
        assert!(
            !waiting.is_finished(),
            "{t}: another peer answered the request"
        );
        let real = format!("1-0-{}-answer", p.src_cb);
        raw_send(&mut asked, &[b"", real.as_bytes()]).await;
        let reply = within(5, "the real answer", waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.body.as_ref(), b"answer", "{t}");
        assert_eq!(reply.peer.as_ref(), b"asked", "{t}");
        server.shutdown().await;
    }
}

/// A listener with `config` on `t` whose server loop answers, and a raw
/// DEALER "greedy" that sends `requests` (ECHOs to its callback 5), reads
/// every ACK and answer, and never ACKs anything.
async fn greedy_peer(
    t: &str,
    config: Config,
    requests: Vec<Vec<u8>>,
) -> (
    Messenger,
    messenger::ListenerInfo,
    common::Place,
    zeromq::DealerSocket,
) {
    let (server, bound, p) = serve(t, config, |m: Incoming, r: Responder| {
        let _ = r.try_reply(&m.body);
    })
    .await;
    let mut greedy = common::raw_dealer(&bound.endpoint, "greedy").await;
    for req in &requests {
        raw_send(&mut greedy, &[b"", req]).await;
    }
    let n = requests.len() as u64;
    eventually(5, "the greedy peer is answered", || {
        server.stats().echoes_answered == n
    })
    .await;
    for i in 0..requests.len() {
        raw_recv(&mut greedy, 5, &format!("{t}: ACK or answer {i}")).await;
        raw_recv(&mut greedy, 5, &format!("{t}: ACK or answer {i}")).await;
    }
    (server, bound, p, greedy)
}

/// Each peer of a listener has its own window of unacknowledged messages:
/// a peer that asks for ECHOs and never ACKs the answers fills only its
/// own (further answers to it go out once, untracked, so it cannot make
/// the listener hold them), and another peer's requests to the server
/// loop are still answered at once.
#[tokio::test]
async fn a_peer_that_never_acks_fills_only_its_own_window() {
    const WINDOW: usize = 8;
    for t in RAW_TRANSPORTS {
        let config = Config {
            send_queue_capacity: WINDOW,
            ..Config::default()
        };
        let requests = (0..2 * WINDOW).map(|i| format!("{i}-5-1-e{i}").into_bytes());
        // All are answered; WINDOW answers are kept for resending and fill
        // its window, since it never ACKs what it is sent.
        let (server, bound, _p, _greedy) = greedy_peer(t, config, requests.collect()).await;
        let s = server.stats();
        assert_eq!(s.pending_messages, WINDOW as u64, "{t}: {s:?}");
        assert_eq!(s.replies_untracked, WINDOW as u64, "{t}: {s:?}");
        let (client, conn) = connect_as("polite", Config::default(), &bound.endpoint, 5).await;
        for i in 0..3 * WINDOW {
            let body = format!("work-{i}");
            let reply = within(
                2,
                &format!("{t}: polite request {i}"),
                client.request(conn, wire::NOOP, body.as_bytes()),
            )
            .await
            .unwrap_or_else(|e| panic!("{t}: polite request {i}: {e}"));
            assert_eq!(reply.body.as_ref(), body.as_bytes(), "{t}");
        }
        // Nothing of the polite peer's went untracked.
        let s = server.stats();
        assert_eq!(s.replies_untracked, WINDOW as u64, "{t}: {s:?}");
        assert_eq!(s.buffer_busy, 0, "{t}: {s:?}");
        client.shutdown().await;
        server.shutdown().await;
    }
}

/// The per-peer window is bounded in bytes too (`send_window_bytes`): a
/// peer that never ACKs large answers makes the listener hold at most that
/// much for it; a single message larger than the window still goes (and is
/// tracked) when nothing else is held, and another peer is unaffected.
#[tokio::test]
async fn the_window_is_bounded_in_bytes() {
    const WINDOW_BYTES: usize = 64 << 10;
    const BODY: usize = 16 << 10;
    const ECHOES: usize = 16;
    for t in RAW_TRANSPORTS {
        let config = Config {
            send_window_bytes: WINDOW_BYTES,
            ..Config::default()
        };
        let requests = (0..ECHOES).map(|i| {
            let mut req = format!("{i}-5-1-").into_bytes();
            req.extend_from_slice(&[b'x'; BODY]);
            req
        });
        let (server, bound, _p, _greedy) = greedy_peer(t, config, requests.collect()).await;
        // Three answers (about 48 KiB) fit the window; a fourth would not.
        let tracked = WINDOW_BYTES / (BODY + 16);
        let s = server.stats();
        assert_eq!(s.pending_messages, tracked as u64, "{t}: {s:?}");
        assert_eq!(s.replies_untracked, (ECHOES - tracked) as u64, "{t}: {s:?}");
        // Another peer gets an answer larger than the whole window.
        let (client, conn) = connect_as("polite", Config::default(), &bound.endpoint, 5).await;
        let big = vec![b'y'; 2 * WINDOW_BYTES];
        let reply = within(
            5,
            &format!("{t}: the big request"),
            client.request(conn, wire::NOOP, &big),
        )
        .await
        .unwrap_or_else(|e| panic!("{t}: big request: {e}"));
        assert_eq!(reply.body.len(), big.len(), "{t}");
        let s = server.stats();
        assert_eq!(s.replies_untracked, (ECHOES - tracked) as u64, "{t}: {s:?}");
        client.shutdown().await;
        server.shutdown().await;
    }
}

/// Callback ids 2 (ACK) and 3 (reserved: authentication) are the
/// protocol's own: a message sent to ACK reads to the peer as the ACK of
/// one of its own messages, which it then stops resending (lost, if we
/// had not got it); one sent to 3 is ACKed and dropped. Every send face
/// refuses them (kind `Invalid`), on every transport, and the peer sees
/// nothing.
#[tokio::test]
async fn the_protocols_own_callback_ids_are_refused() {
    for t in TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Body).await;
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        for cb in [wire::ACK, wire::RESERVED] {
            let invalid = |r: Result<u64, Error>, how: &str| {
                assert!(
                    matches!(&r, Err(e) if e.kind() == messenger::ErrorKind::Invalid),
                    "{t}: {how} to callback {cb}: {r:?}"
                );
            };
            invalid(
                client.send_message(conn, cb, b"x", None).await,
                "send_message",
            );
            invalid(
                client.try_send_message(conn, cb, b"x", None),
                "try_send_message",
            );
            invalid(
                client.send_confirmed(conn, cb, b"x").await,
                "send_confirmed",
            );
            let asked = client
                .request_with_timeout(conn, cb, b"x", Duration::from_secs(5))
                .await;
            invalid(asked.map(|_| 0), "request");
        }
        round_trip(5, &client, conn, wire::NOOP, b"after", t).await;
        let s = server.stats();
        assert_eq!((s.unknown_acks, seen.len()), (0, 1), "{t}: {s:?}");
        client.shutdown().await;
        server.shutdown().await;
    }
}
