//! ECHO and request/reply round trips on every transport.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Place, TRANSPORTS, place, within};
use messenger::internals::wire;
use messenger::{ConnectionId, Incoming, Messenger, Responder};

fn no_slc(_: Incoming, _: Responder) {}

/// A server (with `config`) listening on a fresh endpoint of `t` with
/// `slc`, and a client connected to it. The place keeps an ipc path alive.
async fn pair(
    t: &str,
    config: messenger::Config,
    slc: impl messenger::ServerLoop,
) -> (Messenger, Messenger, ConnectionId, Place) {
    let p = place(t);
    let server = Messenger::with_config("server", config).unwrap();
    let bound = server
        .listen_for_connection(&p.endpoint, "server", slc)
        .await
        .unwrap();
    let client = Messenger::new("client").unwrap();
    let conn = within(5, "connect", client.make_connection(&bound.endpoint))
        .await
        .unwrap();
    (server, client, conn, p)
}

#[tokio::test]
async fn echo_round_trips_every_byte_value() {
    for t in TRANSPORTS {
        let (server, client, conn, _p) = pair(t, Default::default(), no_slc).await;
        let body: Vec<u8> = (0..=255u8).collect();
        let reply = within(5, "echo", client.request(conn, wire::ECHO, &body))
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), &body[..], "{t}");
        assert_eq!(client.stats().pending_callbacks, 0, "{t}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn slc_sees_noop_message_once_and_replies() {
    for t in TRANSPORTS {
        let seen = Arc::new(Mutex::new(Vec::<Bytes>::new()));
        let seen2 = Arc::clone(&seen);
        let slc = move |m: Incoming, r: Responder| {
            seen2.lock().unwrap().push(m.body.clone());
            if m.src_cb != wire::NOOP {
                r.try_reply([b"re:".as_slice(), &m.body].concat()).unwrap();
            }
        };
        let (server, client, conn, _p) = pair(t, Default::default(), slc).await;
        client
            .send_message(conn, wire::NOOP, b"fire", None)
            .await
            .unwrap();
        let reply = within(5, "request", client.request(conn, wire::NOOP, b"ask"))
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), b"re:ask", "{t}");
        common::eventually(5, "slc saw both", || seen.lock().unwrap().len() == 2).await;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Bytes::from("fire"), Bytes::from("ask")],
            "{t}"
        );
        server.shutdown().await;
        client.shutdown().await;
    }
}

/// Replies `re:{body}` to every message that asks for a reply. A full send
/// queue is not an error for the SLC: it hands the reply to a task that
/// waits for room instead of dropping it.
fn re_slc(m: Incoming, r: Responder) {
    if m.src_cb == wire::NOOP {
        return;
    }
    let body = [b"re:".as_slice(), &m.body].concat();
    match r.try_reply(&body) {
        Ok(_) => {}
        Err(messenger::SendError::Full) => {
            tokio::spawn(async move { r.reply(body).await.expect("reply after Full") });
        }
        Err(e) => panic!("reply failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_requests_on_one_connection() {
    const N: usize = 10_000;
    for t in TRANSPORTS {
        let (server, client, conn, _p) = pair(t, Default::default(), re_slc).await;

        // Even i: ECHO, answered by the builtin. Odd i: NOOP, answered by the SLC.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let client = client.clone();
            set.spawn(async move {
                let body = format!("body-{i}-{}", "x".repeat(i % 7));
                let dst = if i % 2 == 0 { wire::ECHO } else { wire::NOOP };
                let reply = client.request(conn, dst, &body).await;
                (i, body, reply)
            });
        }
        let done = AtomicUsize::new(0);
        let all = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(r) = set.join_next().await {
                let (i, body, reply) = r.expect("request task");
                let reply = reply.unwrap_or_else(|e| panic!("{t}: request {i} failed: {e}"));
                let want = if i % 2 == 0 {
                    body.into_bytes()
                } else {
                    format!("re:{body}").into_bytes()
                };
                assert_eq!(reply.body.as_ref(), &want[..], "{t}: request {i}");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
        let done = done.into_inner();
        assert!(
            all.is_ok(),
            "{t}: only {done} of {N} replies in 20 s\nclient {:?}\nserver {:?}",
            client.stats(),
            server.stats()
        );
        assert_eq!(done, N, "{t}");
        let cs = client.stats();
        assert_eq!(cs.pending_callbacks, 0, "{t}: {cs:?}");
        assert_eq!(cs.msc_delivered, N as u64, "{t}: {cs:?}");
        let ss = server.stats();
        assert_eq!(ss.slc_delivered, (N / 2) as u64, "{t}: {ss:?}");
        // Each ECHO is answered once at most: duplicates are only re-ACKed.
        assert!(ss.echoes_answered <= (N / 2) as u64, "{t}: {ss:?}");
        assert_eq!(ss.malformed_dropped + cs.malformed_dropped, 0, "{t}");
        server.shutdown().await;
        client.shutdown().await;
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
        let config = messenger::Config {
            send_queue_capacity: 64,
            ..messenger::Config::default()
        };
        let (server, client, conn, _p) = pair(t, config, no_slc).await;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let client = client.clone();
            set.spawn(async move {
                let body = format!("burst-{i}");
                (body.clone(), client.request(conn, wire::ECHO, &body).await)
            });
        }
        let done = AtomicUsize::new(0);
        let all = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(r) = set.join_next().await {
                let (body, reply) = r.expect("request task");
                let reply = reply.unwrap_or_else(|e| panic!("{t}: {body}: {e}"));
                assert_eq!(reply.body, Bytes::from(body), "{t}");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
        let done = done.into_inner();
        assert!(
            all.is_ok(),
            "{t}: only {done} of {N} replies in 10 s\nclient {:?}\nserver {:?}",
            client.stats(),
            server.stats()
        );
        assert_eq!(client.stats().pending_callbacks, 0, "{t}");
        server.shutdown().await;
        client.shutdown().await;
    }
}

/// A caller may pass any timeout, however large: it means "no deadline",
/// not an overflow.
#[tokio::test]
async fn an_unbounded_timeout_is_accepted() {
    let (server, client, conn, _p) = pair("inproc", Default::default(), no_slc).await;
    let reply = within(
        5,
        "echo",
        client.request_with_timeout(conn, wire::ECHO, b"x", Duration::MAX),
    )
    .await
    .unwrap();
    assert_eq!(reply.body.as_ref(), b"x");
    client.shutdown().await;
    server.shutdown().await;
}
