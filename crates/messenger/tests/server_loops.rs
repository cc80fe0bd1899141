//! Server loops: the concurrency limit (counted only while a handler runs),
//! per-peer order in the sequential form, and work finishing within the
//! shutdown grace period.

use messenger_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Answer, TRANSPORTS, connect, eventually, forwarding, place, serve, serve_seen, spawn_request,
    within,
};
use messenger::{Config, ConnectionId, Endpoint, Error, Incoming, Messenger, Responder};
use messenger_proto::wire;
use tokio::sync::{Semaphore, mpsc};

/// At most `max_concurrent_handlers` handlers run at once, and idle
/// connections hold no permit: with ten idle peers and 20 requests whose
/// handlers wait at a gate, exactly three run until the gate opens, then
/// all 20 complete.
#[tokio::test]
async fn concurrent_handlers_stay_within_the_limit() {
    for t in TRANSPORTS {
        let p = place(t);
        let config = Config {
            max_concurrent_handlers: 3,
            ..Config::default()
        };
        let server = Messenger::builder()
            .identity("server")
            .config(config)
            .build()
            .unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let _open = common::OpenOnDrop(Arc::clone(&gate));
        let (r2, p2, g2) = (Arc::clone(&running), Arc::clone(&peak), Arc::clone(&gate));
        let bound = server
            .listen_for_connection_concurrent(&p.endpoint, move |m: Incoming, r: Responder| {
                let (running, peak, gate) = (Arc::clone(&r2), Arc::clone(&p2), Arc::clone(&g2));
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    gate.acquire().await.expect("gate").forget();
                    running.fetch_sub(1, Ordering::SeqCst);
                    let _ = r.reply(&m.body).await;
                }
            })
            .await
            .unwrap();
        // Idle connections hold no permit: ten of them, then work on one.
        let mut clients = Vec::new();
        for i in 0..10 {
            let name = format!("idle-{i}");
            clients.push(common::connect_as(&name, Config::default(), &bound.endpoint, 5).await);
        }
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        let requests: Vec<_> = (0..20)
            .map(|i| spawn_request(&client, conn, wire::NOOP, format!("{i}")))
            .collect();
        let what = format!("{t}: handlers up to the limit");
        eventually(10, &what, || running.load(Ordering::SeqCst) == 3).await;
        // Every request is in; none runs past the limit while they wait.
        let what = format!("{t}: all 20 delivered");
        eventually(10, &what, || server.stats().slc_delivered == 20).await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            3,
            "{t}: the limit was passed"
        );
        gate.add_permits(20);
        within(10, "20 requests", async {
            for r in requests {
                r.await.unwrap().unwrap();
            }
        })
        .await;
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "{t}: the limit was reached, never passed"
        );
        client.shutdown().await;
        server.shutdown().await;
    }
}

/// The sequential form hands one peer's messages to the server loop in
/// the order sent.
#[tokio::test]
async fn the_sequential_form_keeps_per_peer_order() {
    for t in TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        for i in 0..500 {
            client
                .send_message(conn, wire::NOOP, format!("{i}"), None)
                .await
                .unwrap();
        }
        eventually(10, "all 500 seen", || seen.len() == 500).await;
        let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
        assert_eq!(seen.texts(), want, "{t}");
        server.shutdown().await;
    }
}

/// A server on `t` whose concurrent server loop tells the test (through
/// the returned receiver) when a handler starts, then runs `work`; a client
/// connected to it, and its request, already started (handed to a task).
async fn server_at_work<W>(
    t: &str,
    config: Config,
    work: fn() -> W,
) -> (
    Messenger,
    Messenger,
    tokio::task::JoinHandle<Result<Incoming, Error>>,
    common::Place,
)
where
    W: std::future::Future<Output = ()> + Send + 'static,
{
    let p = place(t);
    let server = Messenger::builder()
        .identity("server")
        .config(config)
        .build()
        .unwrap();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let bound = server
        .listen_for_connection_concurrent(&p.endpoint, move |m: Incoming, r: Responder| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                work().await;
                let _ = r.reply(&m.body).await;
            }
        })
        .await
        .unwrap();
    let (client, conn) = connect(Config::default(), &bound.endpoint).await;
    let waiting = spawn_request(&client, conn, wire::NOOP, "work");
    within(5, "the handler starts", started.recv())
        .await
        .unwrap();
    (server, client, waiting, p)
}

/// Whether `m`'s shutdown has begun: sends fail with `Shutdown` from then.
fn shutting_down(m: &Messenger) -> bool {
    let nowhere = ConnectionId(u64::MAX);
    matches!(
        m.try_send_message(nowhere, wire::NOOP, "", None),
        Err(Error::Shutdown)
    )
}

/// Starts `m`'s shutdown while its work waits at `gate`, checks that the
/// shutdown waits for it, opens the gate, and sees the shutdown finish.
async fn shutdown_waits_for_the_gate(m: &Messenger, gate: &'static Semaphore, t: &str) {
    let shutdown = {
        let m = m.clone();
        tokio::spawn(async move { m.shutdown().await })
    };
    eventually(5, "shutdown begins", || shutting_down(m)).await;
    assert!(
        !shutdown.is_finished(),
        "{t}: shutdown did not wait for the work"
    );
    gate.add_permits(1);
    within(10, "shutdown", shutdown).await.unwrap();
}

/// Work running when shutdown begins finishes within the grace period and
/// its reply reaches the client: the handler waits at a gate that opens
/// only once shutdown has begun.
#[tokio::test]
async fn shutdown_lets_running_work_finish_and_reply_within_the_grace() {
    static GATE: Semaphore = Semaphore::const_new(0);
    for t in TRANSPORTS {
        let work = || async { GATE.acquire().await.expect("gate").forget() };
        let (server, client, waiting, _p) = server_at_work(t, Config::default(), work).await;
        shutdown_waits_for_the_gate(&server, &GATE, t).await;
        let reply = within(5, "reply", waiting).await.unwrap().unwrap();
        assert_eq!(
            reply.body.as_ref(),
            b"work",
            "{t}: the in-flight handler's reply went out"
        );
        client.shutdown().await;
    }
}

/// Work that would outlast the grace period (it never ends) is cancelled:
/// shutdown returns soon after the grace, and the client's request fails
/// with `Disconnected`.
#[tokio::test]
async fn work_past_the_grace_is_cancelled_and_shutdown_returns() {
    for t in TRANSPORTS {
        let config = Config {
            shutdown_grace: Duration::from_millis(100),
            ..Config::default()
        };
        let (server, client, waiting, _p) = server_at_work(t, config, std::future::pending).await;
        let started = std::time::Instant::now();
        within(5, "shutdown", server.shutdown()).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{t}: {:?}",
            started.elapsed()
        );
        let r = within(5, "client learns", waiting).await.unwrap();
        assert_eq!(r.err(), Some(Error::Disconnected), "{t}");
        client.shutdown().await;
    }
}

/// A connection can have a server loop of its own: the listener's messages
/// to callback 0 reach it, and its replies go back over the connection to
/// the listener's callback. Asking for one on an endpoint already connected
/// is refused (connections are pooled).
#[tokio::test]
async fn a_connection_can_host_a_server_loop() {
    for t in TRANSPORTS {
        let (slc, mut rx) = forwarding();
        let (server, bound, _p) = serve(t, Config::default(), slc).await;
        let client = Messenger::builder().identity("client").build().unwrap();
        let conn = client
            .make_connection_with_server_loop(&bound.endpoint, |m: Incoming, r: Responder| {
                let _ = r.try_reply([b"re:".as_slice(), &m.body].concat());
            })
            .await
            .unwrap();
        assert_eq!(
            client.make_connection(&bound.endpoint).await.unwrap(),
            conn,
            "{t}: pooled"
        );
        let again = client
            .make_connection_with_server_loop(&bound.endpoint, |_: Incoming, _: Responder| {})
            .await;
        assert!(
            matches!(again, Err(messenger::Error::AlreadyConnected(_))),
            "{t}: {again:?}"
        );
        // The server learns the client's routing id from a first message.
        client
            .send_message(conn, wire::NOOP, "hello", None)
            .await
            .unwrap();
        let dest = within(5, "hello", rx.recv())
            .await
            .unwrap()
            .0
            .reply_destination();
        let reply = within(5, "request", server.request(dest, wire::NOOP, "question"))
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(reply.body.as_ref(), b"re:question", "{t}");
        assert_eq!(client.stats().slc_delivered, 1, "{t}");
        assert_eq!(client.stats().unroutable_dropped, 0, "{t}");
        client.shutdown().await;
        server.shutdown().await;
    }
}

/// A connection's concurrent server loop answers the listener's requests,
/// and the connecting side's shutdown waits (within the grace) for the
/// work it is running, whose reply still reaches the listener: the handler
/// waits at a gate that opens only once shutdown has begun.
#[tokio::test]
async fn a_connection_hosts_a_concurrent_server_loop_drained_at_shutdown() {
    static GATE: Semaphore = Semaphore::const_new(0);
    for t in TRANSPORTS {
        let (slc, mut rx) = forwarding();
        let (server, bound, _p) = serve(t, Config::default(), slc).await;
        let client = Messenger::builder().identity("client").build().unwrap();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let conn = client
            .make_connection_with_server_loop_concurrent(
                &bound.endpoint,
                move |m: Incoming, r: Responder| {
                    let started = started_tx.clone();
                    async move {
                        let _ = started.send(());
                        if m.body.as_ref() == b"slow" {
                            GATE.acquire().await.expect("gate").forget();
                        }
                        let _ = r.reply([b"re:".as_slice(), &m.body].concat()).await;
                    }
                },
            )
            .await
            .unwrap();
        let again = client
            .make_connection_with_server_loop_concurrent(&bound.endpoint, |_, _| async {})
            .await;
        assert!(
            matches!(again, Err(Error::AlreadyConnected(_))),
            "{t}: {again:?}"
        );
        client
            .send_message(conn, wire::NOOP, "hello", None)
            .await
            .unwrap();
        let dest = within(5, "hello", rx.recv())
            .await
            .unwrap()
            .0
            .reply_destination();
        let reply = within(
            5,
            "quick",
            server.request(dest.clone(), wire::NOOP, "quick"),
        )
        .await
        .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(reply.body.as_ref(), b"re:quick", "{t}");
        within(5, "quick started", started.recv()).await.unwrap();
        let waiting = {
            let server = server.clone();
            tokio::spawn(async move { server.request(dest, wire::NOOP, "slow").await })
        };
        within(5, "slow started", started.recv()).await.unwrap();
        shutdown_waits_for_the_gate(&client, &GATE, t).await;
        let reply = within(5, "slow reply", waiting).await.unwrap().unwrap();
        assert_eq!(reply.body.as_ref(), b"re:slow", "{t}");
        server.shutdown().await;
    }
}

/// Shutdown in the middle of traffic loses nothing it ACKed: a message is
/// ACKed only once the server loop's queue owns it, and on shutdown the
/// queue is closed and drained to its end (within the grace), so every
/// message a client saw ACKed was handled, on every transport. The race
/// itself (a message handed over just after the loop found its queue
/// empty, lost about once in 15 shutdowns of `serve`) is too narrow to hit
/// on demand; `server_loop::tests` pins the drain deterministically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_traffic_loses_nothing_it_acked() {
    const ROUNDS: usize = 6;
    const SENDERS: usize = 8;
    for round in 0..ROUNDS {
        let t = TRANSPORTS[round % TRANSPORTS.len()];
        let (server, bound, _p, handled) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let config = Config {
            // Sends queued for a redial after the shutdown end at this.
            request_timeout: Duration::from_millis(500),
            ..Config::default()
        };
        let (client, conn) = connect(config, &bound.endpoint).await;
        let acked = Arc::new(std::sync::Mutex::new(Vec::<bytes::Bytes>::new()));
        let mut senders = tokio::task::JoinSet::new();
        for s in 0..SENDERS {
            let (client, acked) = (client.clone(), Arc::clone(&acked));
            senders.spawn(async move {
                for i in 0.. {
                    let body = bytes::Bytes::from(format!("{s}-{i}"));
                    match client.send_confirmed(conn, wire::NOOP, &body).await {
                        Ok(_) => acked.lock().unwrap().push(body),
                        Err(_) => return,
                    }
                }
            });
        }
        // Some traffic first, then shut down in the middle of it.
        eventually(5, "traffic flows", || acked.lock().unwrap().len() >= 50).await;
        within(10, "shutdown", server.shutdown()).await;
        within(10, "senders stop", async {
            while senders.join_next().await.is_some() {}
        })
        .await;
        client.shutdown().await;
        let handled: std::collections::HashSet<_> = handled.bodies().into_iter().collect();
        let acked = acked.lock().unwrap();
        let lost: Vec<_> = acked.iter().filter(|b| !handled.contains(*b)).collect();
        assert!(
            lost.is_empty(),
            "{t}, round {round}: {} of {} ACKed messages never reached the server loop: {lost:?}",
            lost.len(),
            acked.len()
        );
    }
}

/// A peer whose window for replies is full sends the ACK that frees it
/// and its next request in one write: the request reaches the server loop
/// at once. The read's ACKs are settled before the window is checked, so
/// the request is not refused unACKed (`reply_window_busy`) and left to a
/// resend, which this raw peer never makes.
#[tokio::test]
async fn an_ack_and_a_request_in_one_write_find_the_window_open() {
    use common::RAW_TRANSPORTS;
    use common::raw_zmtp::{self, RawPeer, dial};
    for t in RAW_TRANSPORTS {
        // Room for one unACKed reply towards a peer; no heartbeats (this
        // peer answers no PINGs).
        let config = Config {
            send_queue_capacity: 1,
            heartbeat: None,
            ..Config::default()
        };
        let (server, bound, _p) = serve(t, config, |m: Incoming, r: Responder| {
            let _ = r.try_reply(&m.body);
        })
        .await;
        let mut peer = RawPeer::handshake(dial(&bound.endpoint).await, 1, "DEALER", b"p").await;
        // The reply to a request from callback 5, unACKed: its msg_id.
        async fn reply_to(peer: &mut RawPeer, cb: u64, what: &str) -> u64 {
            within(5, what, async {
                loop {
                    let parts = peer.message().await.unwrap().expect("the server closed");
                    let payload = bytes::Bytes::from(parts.last().cloned().unwrap_or_default());
                    let msg = wire::parse(&payload).expect("a well-formed message");
                    if msg.dst_cb == cb {
                        return msg.msg_id;
                    }
                }
            })
            .await
        }
        peer.send_message(&[b"", &wire::encode(0, 5, wire::NOOP, b"one")])
            .await;
        let first = reply_to(&mut peer, 5, "the first reply").await;
        // The window is full now. Its ACK and the next request, at once.
        let both = [
            raw_zmtp::message(&[b"", &wire::ack(first)]),
            raw_zmtp::message(&[b"", &wire::encode(1, 6, wire::NOOP, b"two")]),
        ]
        .concat();
        peer.send(&both).await;
        reply_to(
            &mut peer,
            6,
            &format!("{t}: the second reply, without a resend"),
        )
        .await;
        assert_eq!(server.stats().reply_window_busy, 0, "{t}");
        server.shutdown().await;
    }
}

/// A server whose shutdown grace is far past the tests' bounds (waiting
/// it out fails the test), and the handle its handler takes: let go once
/// the handler has shut down (a handler holding its own messenger forever
/// would keep it alive).
fn quitting_server() -> (Messenger, Arc<std::sync::Mutex<Option<Messenger>>>) {
    let server = Messenger::builder()
        .identity("server")
        .config(Config {
            shutdown_grace: Duration::from_secs(60),
            ..Config::default()
        })
        .build()
        .unwrap();
    let me = Arc::new(std::sync::Mutex::new(Some(server.clone())));
    (server, me)
}

/// Sends QUIT to `server`'s listener at `bound` from a new client; what
/// its handler reported once its shutdown call returned, after the
/// listener has closed (the shutdown completed behind the handler).
async fn quit<T>(
    server: &Messenger,
    bound: &Endpoint,
    said: &mut mpsc::UnboundedReceiver<T>,
) -> Option<T> {
    let (client, conn) = connect(Config::default(), bound).await;
    client
        .try_send_message(conn, wire::NOOP, "QUIT", None)
        .unwrap();
    let seen = within(10, "the handler goes on after its shutdown", said.recv()).await;
    eventually(10, "the listener closes", || server.stats().listeners == 0).await;
    client.shutdown().await;
    seen
}

/// A handler that shuts its own messenger down (a model server's QUIT)
/// gets its `shutdown` back at once and goes on: the loop waits for that
/// very handler, so waiting there for the loops would wait out the whole
/// grace period for itself, and then be dropped with the handler, leaving
/// the messenger half shut. The shutdown still completes.
#[tokio::test]
async fn shutdown_from_a_handler_of_its_own_returns_at_once_and_completes() {
    for t in TRANSPORTS {
        let p = place(t);
        let (server, me) = quitting_server();
        let (said, mut heard) = mpsc::unbounded_channel();
        let bound = server
            .listen_for_connection_concurrent(&p.endpoint, move |_m: Incoming, _r: Responder| {
                let (me, said) = (me.lock().unwrap().take(), said.clone());
                async move {
                    if let Some(me) = me {
                        me.shutdown().await;
                        let _ = said.send(shutting_down(&me));
                    }
                }
            })
            .await
            .unwrap();
        let stopped = quit(&server, &bound.endpoint, &mut heard).await;
        assert_eq!(
            stopped,
            Some(true),
            "{t}: sends fail with Shutdown from then"
        );
    }
}

/// The same from a sequential server loop, whose call cannot await: its
/// `shutdown` completes in its first poll there, and `begin_shutdown`
/// (what a plain function calls) shuts down the same way.
#[tokio::test]
async fn shutdown_from_a_sequential_handler_of_its_own_completes() {
    for (t, begin) in TRANSPORTS.iter().flat_map(|t| [(*t, false), (*t, true)]) {
        let p = place(t);
        let (server, me) = quitting_server();
        let (said, mut heard) = mpsc::unbounded_channel();
        let bound = server
            .listen_for_connection(&p.endpoint, move |_m: Incoming, _r: Responder| {
                let Some(me) = me.lock().unwrap().take() else {
                    return;
                };
                let returned = if begin {
                    me.begin_shutdown();
                    true
                } else {
                    futures::FutureExt::now_or_never(me.shutdown()).is_some()
                };
                let _ = said.send((returned, shutting_down(&me)));
            })
            .await
            .unwrap();
        let seen = quit(&server, &bound.endpoint, &mut heard).await;
        assert_eq!(seen, Some((true, true)), "{t} (begin_shutdown: {begin})");
    }
}
