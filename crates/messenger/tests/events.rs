//! `Messenger::events()`: connected, handshake failed, disconnected,
//! evicted and refused, each with its endpoint, remote end and reason; a
//! consumer that falls behind loses the oldest and is told how many,
//! without slowing the runtime.

use std::time::Duration;

use messenger::events::{CAPACITY as EVENTS_CAPACITY, Event, EventKind, Events, PeerAddr};
use messenger::{Config, ECHO, Messenger};
use messenger_testkit::raw_zmtp;
use messenger_testkit::{RAW_TRANSPORTS, TRANSPORTS, no_slc, place, within};
use tokio::io::AsyncWriteExt;

/// The next event, within 5 s.
async fn next(events: &mut Events, what: &str) -> Event {
    within(5, what, events.recv())
        .await
        .expect("the messenger lives")
}

#[tokio::test]
async fn a_peer_connects_and_leaves_with_its_address() {
    for t in TRANSPORTS {
        let server = Messenger::new().unwrap();
        let mut events = server.events();
        let p = place(t);
        let bound = server
            .listen_for_connection(&p.endpoint, no_slc)
            .await
            .unwrap();
        let client = Messenger::builder()
            .identity(format!("events-{t}"))
            .build()
            .unwrap();
        let mut client_events = client.events();
        let conn = client.make_connection(&bound.endpoint).await.unwrap();
        client.request(conn, ECHO, b"hi").await.unwrap();

        let up = next(&mut events, "connected").await;
        assert_eq!(up.kind, EventKind::Connected, "{t}: {up:?}");
        assert_eq!(up.endpoint, bound.endpoint, "{t}");
        assert_eq!(up.listener, Some(bound.id), "{t}");
        assert_eq!(&up.peer[..], format!("events-{t}").as_bytes(), "{t}");
        assert!(up.reason.is_none(), "{t}: {up:?}");
        match (t, up.remote) {
            ("tcp", PeerAddr::Tcp(addr)) => assert!(addr.ip().is_loopback(), "{t}: {addr}"),
            ("ipc", PeerAddr::Ipc { pid, uid }) => {
                // SO_PEERCRED: this very process dialled.
                assert_eq!(pid, Some(std::process::id()), "{t}");
                assert!(uid.is_some(), "{t}");
            }
            ("inproc", PeerAddr::Inproc) => {}
            (t, other) => panic!("{t}: remote {other:?}"),
        }
        let ours = next(&mut client_events, "the client's connected").await;
        assert_eq!(ours.kind, EventKind::Connected, "{t}");
        assert_eq!(ours.connection, Some(conn), "{t}");

        client.shutdown().await;
        let down = next(&mut events, "disconnected").await;
        assert_eq!(down.kind, EventKind::Disconnected, "{t}: {down:?}");
        assert_eq!(down.remote, up.remote, "{t}");
        assert!(down.reason.is_some(), "{t}: {down:?}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn garbage_is_a_failed_handshake_and_a_live_id_a_refusal() {
    for t in RAW_TRANSPORTS {
        let server = Messenger::new().unwrap();
        let mut events = server.events();
        let p = place(t);
        let bound = server
            .listen_for_connection(&p.endpoint, no_slc)
            .await
            .unwrap();

        let mut s = raw_zmtp::dial(&bound.endpoint).await;
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let failed = next(&mut events, "handshake failed").await;
        assert_eq!(failed.kind, EventKind::HandshakeFailed, "{t}: {failed:?}");
        let reason = failed.reason.unwrap_or_default();
        assert!(
            !reason.is_empty() && !reason.contains('\n'),
            "{t}: {reason}"
        );

        // A routing id that a live session holds is refused, and the
        // event names the id the newcomer announced.
        let _live = raw_zmtp::dealer(&bound.endpoint, b"twin\n\x1b", &[]).await;
        let up = next(&mut events, "the first twin").await;
        assert_eq!(up.kind, EventKind::Connected, "{t}: {up:?}");
        let _twin = raw_zmtp::dealer(&bound.endpoint, b"twin\n\x1b", &[]).await;
        let refused = next(&mut events, "the second twin").await;
        assert_eq!(refused.kind, EventKind::Refused, "{t}: {refused:?}");
        assert_eq!(&refused.peer[..], b"twin\n\x1b", "{t}");
        assert_eq!(server.stats().routing_id_conflicts, 1, "{t}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn an_idle_peer_that_gives_way_is_evicted() {
    let server = Messenger::builder()
        .config(Config {
            max_connections_per_listener: 1,
            evict_idle_after: Some(Duration::from_millis(50)),
            ..Config::default()
        })
        .build()
        .unwrap();
    let mut events = server.events();
    let p = place("tcp");
    let bound = server
        .listen_for_connection(&p.endpoint, no_slc)
        .await
        .unwrap();
    let _idle = raw_zmtp::dealer(&bound.endpoint, b"squatter", &[]).await;
    assert_eq!(
        next(&mut events, "squatter").await.kind,
        EventKind::Connected
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _newcomer = raw_zmtp::dealer(&bound.endpoint, b"newcomer", &[]).await;
    let gone = next(&mut events, "evicted").await;
    assert_eq!(gone.kind, EventKind::Evicted, "{gone:?}");
    assert_eq!(&gone.peer[..], b"squatter");
    let up = next(&mut events, "newcomer").await;
    assert_eq!(
        (up.kind, &up.peer[..]),
        (EventKind::Connected, &b"newcomer"[..])
    );
    server.shutdown().await;
}

/// Ten times the channel's capacity of events while nobody reads: the
/// runtime goes on at full speed (every connection is made and used),
/// and the consumer, when it looks, gets the newest events and a count of
/// those it lost.
#[tokio::test]
async fn a_consumer_that_never_reads_slows_nothing_and_learns_what_it_missed() {
    let server = Messenger::new().unwrap();
    let mut slow = server.events();
    let p = place("inproc");
    let bound = server
        .listen_for_connection(&p.endpoint, no_slc)
        .await
        .unwrap();
    let rounds = 5 * EVENTS_CAPACITY; // two events each
    let client = Messenger::new().unwrap();
    let started = std::time::Instant::now();
    for i in 0..rounds {
        let c = Messenger::builder()
            .identity(format!("churn-{i}"))
            .build()
            .unwrap();
        let conn = c.make_connection(&bound.endpoint).await.unwrap();
        c.request(conn, ECHO, b"x").await.unwrap();
        c.shutdown().await;
    }
    let took = started.elapsed();
    let mut got = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), slow.recv()).await {
        got += 1;
    }
    assert!(got <= EVENTS_CAPACITY, "kept {got}");
    assert_eq!(
        slow.missed() + got as u64,
        2 * rounds as u64,
        "every event is either received or counted as missed"
    );
    assert!(slow.missed() >= (2 * rounds - EVENTS_CAPACITY) as u64);
    eprintln!("{rounds} connections in {took:?} with an unread consumer");
    drop(client);
    server.shutdown().await;
}
