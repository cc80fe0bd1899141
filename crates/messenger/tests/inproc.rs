//! inproc's own path: no wire format, no ACKs, no resends, no duplicate
//! windows (issue 12). What a user sees is what tcp gives (the behavioural
//! suites run on all three transports); these tests pin what is inproc's
//! own: a full server loop makes a sender wait or fail with `Full` instead
//! of a resend, a peer that leaves fails what waits on it at once, and no
//! ACK is ever counted.

use messenger_testkit as common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OpenOnDrop, Seen, connect, no_slc, pair, serve, within};
use messenger::{Config, Error, Incoming, Responder};
use messenger_proto::wire;

/// A server loop that records each body in order, then holds the
/// message until `gate` lets it go.
fn gated(
    gate: Arc<tokio::sync::Semaphore>,
    seen: Arc<Mutex<Vec<String>>>,
) -> impl Fn(Incoming, Responder) + Send + Sync + 'static {
    move |m: Incoming, _r: Responder| {
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&m.body).into_owned());
        // The loop's own task: blocking it fills the queue behind it.
        let permit = futures::executor::block_on(gate.acquire());
        permit.expect("gate").forget();
    }
}

/// A full server-loop queue: `try_send_message` fails with `Full` (tcp
/// would refuse the message unACKed and resend it), `send_message` waits
/// for room; nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_loop_makes_senders_wait_or_fail_full() {
    const QUEUE: usize = 4;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config = Config {
        slc_queue_capacity: QUEUE,
        ..Config::default()
    };
    let (server, bound, _p) = serve("inproc", config, gated(gate.clone(), seen.clone())).await;
    let _open = OpenOnDrop(gate.clone());
    let (client, conn) = connect(Config::default(), &bound.endpoint).await;
    // One message in the loop's hands, QUEUE behind it, then Full.
    client
        .try_send_message(conn, wire::NOOP, "0", None)
        .unwrap();
    common::eventually(5, "the loop holds the first", || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    let mut sent = 1;
    let full = loop {
        match client.try_send_message(conn, wire::NOOP, format!("{sent}"), None) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= QUEUE + 1, "the queue took {sent} messages");
    };
    assert!(matches!(full, Error::Full), "{full:?}");
    assert_eq!(sent, QUEUE + 1, "the loop's one and a full queue");
    // A waiting send completes once the loop makes room.
    let waiting = {
        let client = client.clone();
        let body = format!("{sent}");
        tokio::spawn(async move { client.send_message(conn, wire::NOOP, body, None).await })
    };
    // Nothing can be awaited for "still waiting": give it 50 ms of wall
    // time to complete wrongly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "the send did not wait for room");
    gate.add_permits(sent + 1);
    within(5, "the waiting send", waiting)
        .await
        .unwrap()
        .unwrap();
    common::eventually(5, "all delivered", || {
        seen.lock().unwrap().len() == sent + 1
    })
    .await;
    let want: Vec<String> = (0..=sent).map(|i| i.to_string()).collect();
    assert_eq!(*seen.lock().unwrap(), want, "in order, each once");
    let (c, s) = (client.stats(), server.stats());
    assert_eq!(s.slc_delivered, sent as u64 + 1, "{s:?}");
    assert!(s.slc_busy >= 1, "the full queue is counted: {s:?}");
    assert_eq!(
        c.acks_received + s.acks_sent + c.resends,
        0,
        "no ACK, no resend"
    );
    client.shutdown().await;
    server.shutdown().await;
}

/// Requests in flight when the listener's messenger shuts down fail at
/// once with `Disconnected` (their pair is gone: no task of the listener's
/// is left to answer them); a send after it is queued for the connection's
/// redial, as on tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_leaves_fails_what_waits_on_it() {
    let p = pair("inproc", Config::default(), Config::default(), no_slc).await;
    let (server, client, conn) = (&p.server, &p.client, p.conn);
    // The server loop never answers: these wait.
    let waiting: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.request(conn, wire::NOOP, format!("{i}")).await })
        })
        .collect();
    common::eventually(5, "requests pending", || {
        client.stats().pending_callbacks == 10
    })
    .await;
    server.shutdown().await;
    for w in waiting {
        let r = within(5, "a pending request", w).await.unwrap();
        assert!(
            matches!(r, Err(Error::Disconnected)),
            "{:?}",
            r.map(|m| m.body)
        );
    }
    let after = client.try_send_message(conn, wire::NOOP, "after", None);
    assert!(after.is_ok(), "queued for the redial: {after:?}");
    assert!(!client.is_connected(conn), "the link is down");
    client.shutdown().await;
}

/// Round trips through the builtin ECHO and a server loop: each counted
/// once on each side, with no ACK, no duplicate and no resend.
#[tokio::test]
async fn round_trips_are_counted_without_acks() {
    const N: u64 = 200;
    let p = pair(
        "inproc",
        Config::default(),
        Config::default(),
        Seen::default().echo_slc(),
    )
    .await;
    let (server, client, conn) = (&p.server, &p.client, p.conn);
    for i in 0..N {
        for cb in [wire::ECHO, wire::NOOP] {
            let body = format!("{cb}-{i}");
            let reply = within(5, "round trip", client.request(conn, cb, &body))
                .await
                .unwrap();
            assert_eq!(reply.body, body.as_bytes());
        }
    }
    let (c, s) = (client.stats(), server.stats());
    assert_eq!(
        (c.sent, c.received, c.msc_delivered),
        (2 * N, 2 * N, 2 * N),
        "{c:?}"
    );
    assert_eq!(
        (s.received, s.echoes_answered, s.slc_delivered),
        (2 * N, N, N),
        "{s:?}"
    );
    assert_eq!(s.sent, 2 * N, "{s:?}");
    for (name, n) in [
        (
            "acks",
            c.acks_sent + c.acks_received + s.acks_sent + s.acks_received,
        ),
        ("duplicates", c.duplicates_dropped + s.duplicates_dropped),
        ("resends", c.resends + s.resends),
        ("pending", c.pending_messages + s.pending_messages),
    ] {
        assert_eq!(n, 0, "{name}: {c:?} {s:?}");
    }
    client.shutdown().await;
    server.shutdown().await;
}

/// inproc requests answered inside their own send (ECHO) never wait, so
/// nothing but tokio's budget makes their task yield: on a one-thread
/// runtime, a task that only sends them must still let the others run.
#[tokio::test(flavor = "current_thread")]
async fn requests_answered_in_place_still_let_other_tasks_run() {
    let p = pair("inproc", Config::default(), Config::default(), no_slc).await;
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
    for _ in 0..1000 {
        let reply = p.client.request(p.conn, wire::ECHO, b"x").await;
        assert_eq!(reply.expect("echo").body, &b"x"[..]);
    }
    assert!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        "1000 requests answered in place and the other task never ran"
    );
    p.client.shutdown().await;
    p.server.shutdown().await;
}

/// A waiting send to a server loop that takes nothing gives up with
/// `Full` at the sender's `request_timeout`, as a tcp send's window frees
/// at the deadlines of what fills it: two loops that wait for room in each
/// other's full queue cannot wait for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_send_gives_up_at_the_request_timeout() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let _open = OpenOnDrop(gate.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config = Config {
        slc_queue_capacity: 1,
        ..Config::default()
    };
    let (server, bound, _p) = serve("inproc", config, gated(gate.clone(), seen.clone())).await;
    let client_config = Config {
        request_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let (client, conn) = connect(client_config, &bound.endpoint).await;
    client
        .try_send_message(conn, wire::NOOP, "held", None)
        .unwrap();
    common::eventually(5, "the loop holds it", || seen.lock().unwrap().len() == 1).await;
    client
        .try_send_message(conn, wire::NOOP, "queued", None)
        .unwrap();
    let started = std::time::Instant::now();
    let r = within(
        5,
        "the waiting send",
        client.send_message(conn, wire::NOOP, "waits", None),
    )
    .await;
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    gate.add_permits(2);
    client.shutdown().await;
    server.shutdown().await;
}

/// An inproc request whose reply does not land inside its send (a server
/// loop answers it later, or never) waits in its callback's slot: its
/// reply wakes it from another task, its deadline (armed once it waits)
/// fails it, and a request dropped while it waits frees its callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_are_answered_timed_out_or_freed() {
    let (p, mut loop_rx) = common::forwarding_pair("inproc").await;
    let (client, conn) = (&p.client, p.conn);
    let timeout = Duration::from_millis(200);

    // Answered later, from the test's task.
    let later = tokio::spawn({
        let client = client.clone();
        async move { client.request(conn, wire::NOOP, "later").await }
    });
    let (m, r) = within(5, "the server loop's message", loop_rx.recv())
        .await
        .expect("a message");
    r.try_reply(&m.body).expect("reply");
    let reply = within(5, "the later reply", later).await.unwrap();
    assert_eq!(&reply.expect("the reply").body[..], b"later");

    // Never answered: its deadline fails it.
    let started = std::time::Instant::now();
    let never = client.request_with_timeout(conn, wire::NOOP, "never", timeout);
    let r = within(5, "the unanswered request", never).await;
    assert!(matches!(r, Err(Error::Timeout)), "{:?}", r.map(|m| m.body));
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());

    // Dropped while it waits: nothing is left pending.
    let dropped = tokio::time::timeout(
        Duration::from_millis(20),
        client.request(conn, wire::NOOP, "dropped"),
    )
    .await;
    assert!(dropped.is_err(), "no reply was due");
    assert_eq!(client.stats().pending_callbacks, 0);
    drop(loop_rx);
    client.shutdown().await;
    p.server.shutdown().await;
}
