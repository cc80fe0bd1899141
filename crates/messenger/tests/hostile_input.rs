//! Hostile peers: raw zeromq sockets that send malformed payloads, wrong
//! frame shapes and unexpected (but well-formed) messages. Each bad message
//! is dropped and counted, nothing panics, and the next good message from
//! the same peer is handled normally. tcp and ipc only: an inproc peer is
//! always one of our own connections, which cannot send garbage.

use messenger_testkit as common;
use messenger_testkit::assert_stats;

use std::collections::HashSet;

use bytes::Bytes;
use common::{
    Answer, Place, RAW_TRANSPORTS, Seen, connect, eventually, expect_reply, raw_dealer, raw_recv,
    raw_router, raw_send, round_trip, serve_seen, within,
};
use messenger::{Config, Endpoint, Messenger};
use messenger_proto::wire;
use zeromq::DealerSocket;

const MAX_MESSAGE: usize = 4096;

/// A config whose largest message is `MAX_MESSAGE`.
fn small() -> Config {
    Config {
        max_message_size: MAX_MESSAGE,
        ..Config::default()
    }
}

/// A raw DEALER talking to one of our listeners, numbering its messages.
struct RawPeer {
    socket: DealerSocket,
    next_id: u64,
    /// msg_ids of the listener's messages already seen (resends repeat them).
    seen: HashSet<u64>,
}

impl RawPeer {
    async fn connect(endpoint: &Endpoint, identity: &str) -> Self {
        RawPeer {
            socket: raw_dealer(endpoint, identity).await,
            next_id: 0,
            seen: HashSet::new(),
        }
    }

    async fn send(&mut self, parts: &[&[u8]]) {
        raw_send(&mut self.socket, parts).await;
    }

    /// The listener's next message that is not a resend, as [identity, "",
    /// payload] checked and parsed. Messages that are not ACKs are ACKed.
    async fn next(&mut self, what: &str) -> wire::Payload {
        loop {
            let f = raw_recv(&mut self.socket, 5, what).await;
            assert_eq!(f.len(), 3, "{what}: frames {f:?}");
            assert_eq!(f[0], Bytes::from("server"), "{what}: {f:?}");
            assert!(f[1].is_empty(), "{what}: {f:?}");
            let p = wire::parse(&f[2]).unwrap_or_else(|e| panic!("{what}: {e}: {f:?}"));
            if p.dst_cb == wire::ACK {
                assert_eq!(f[2], Bytes::from(format!("{}-0-2-", p.msg_id)), "{what}");
                return p;
            }
            let ack = format!("{}-0-2-", p.msg_id);
            self.send(&[b"", ack.as_bytes()]).await;
            if self.seen.insert(p.msg_id) {
                return p;
            }
        }
    }

    /// Expects the ACK of `msg_id` next.
    async fn expect_ack(&mut self, msg_id: u64, what: &str) {
        let p = self.next(what).await;
        assert_eq!(p.dst_cb, wire::ACK, "{what}: wanted the ACK, got {p:?}");
        assert_eq!(p.msg_id, msg_id, "{what}: ACK of the wrong message");
    }

    /// Sends an ECHO with a fresh msg_id; expects its ACK and the echo.
    async fn echo(&mut self, body: &str) {
        let id = self.next_id;
        self.next_id += 1;
        self.echo_with_id(id, body).await;
    }

    async fn echo_with_id(&mut self, id: u64, body: &str) {
        let payload = format!("{id}-0-1-{body}");
        self.send(&[b"", payload.as_bytes()]).await;
        self.expect_ack(id, body).await;
        let p = self.next(body).await;
        assert_eq!(p.dst_cb, wire::NOOP, "{body}: the echo goes to src_cb 0");
        assert_eq!(p.src_cb, wire::NOOP, "{body}: {p:?}");
        assert_eq!(p.body, Bytes::from(body.to_owned()), "{body}");
    }
}

/// A listener whose SLC records what reaches it.
async fn start_server(t: &str) -> (Messenger, Endpoint, Seen, Place) {
    let (server, bound, p, seen) = serve_seen(t, small(), Answer::Nothing).await;
    (server, bound.endpoint, seen, p)
}

/// Each malformed payload or frame shape is dropped and counted once,
/// never delivered, and the same peer's next ECHO is served as usual.
#[tokio::test]
async fn malformed_messages_are_dropped_counted_and_survived() {
    let too_big = format!("1-0-1-{}", "x".repeat(MAX_MESSAGE));
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("non-numeric msg_id", vec![b"", b"a-0-1-x"]),
        ("non-numeric src_cb", vec![b"", b"1-b-1-x"]),
        ("non-numeric dst_cb", vec![b"", b"1-0-c-x"]),
        ("hex id", vec![b"", b"0x1-0-1-x"]),
        ("missing fields", vec![b"", b"1-2"]),
        ("missing dst_cb", vec![b"", b"1-2-3"]),
        ("no dashes", vec![b"", b"123"]),
        ("empty field", vec![b"", b"1--1-x"]),
        ("id beyond u64", vec![b"", b"18446744073709551616-0-0-x"]),
        (
            "dst_cb beyond u64",
            vec![b"", b"1-0-99999999999999999999-x"],
        ),
        ("leading plus", vec![b"", b"+1-0-1-x"]),
        ("negative id", vec![b"", b"-1-0-1-x"]),
        ("leading space", vec![b"", b" 1-0-1-x"]),
        ("inner space", vec![b"", b"1- 0-1-x"]),
        ("trailing space", vec![b"", b"1-0-1 -x"]),
        ("non-ascii digit", vec![b"", "١-0-1-x".as_bytes()]),
        ("empty payload", vec![b"", b""]),
        (
            "payload over max_message_size",
            vec![b"", too_big.as_bytes()],
        ),
        ("one frame", vec![b"1-0-1-x"]),
        ("one empty frame", vec![b""]),
        ("three frames", vec![b"", b"1-0-1-x", b"extra"]),
        ("four frames", vec![b"", b"", b"", b"1-0-1-x"]),
        ("non-empty delimiter", vec![b"x", b"1-0-1-x"]),
        ("payload then delimiter", vec![b"1-0-1-x", b""]),
    ];
    for t in RAW_TRANSPORTS {
        let (server, endpoint, slc_seen, _place) = start_server(t).await;
        let mut raw = RawPeer::connect(&endpoint, "raw").await;
        raw.echo("first").await;
        for (name, parts) in &cases {
            let before = server.stats();
            raw.send(parts).await;
            eventually(5, &format!("{t}: {name} counted"), || {
                server.stats().malformed_dropped > before.malformed_dropped
            })
            .await;
            // The same peer's next good message is served as usual.
            raw.echo(&format!("after {name}")).await;
            let after = server.stats();
            assert_eq!(
                after.malformed_dropped,
                before.malformed_dropped + 1,
                "{t}: {name} counted once"
            );
            assert_eq!(after.slc_delivered, 0, "{t}: {name}");
            assert_eq!(after.late_replies_dropped, 0, "{t}: {name}");
            assert_eq!(after.unroutable_dropped, 0, "{t}: {name}");
        }
        // A good NOOP still reaches the SLC; nothing malformed ever did.
        let id = raw.next_id;
        raw.send(&[b"", format!("{id}-0-0-fine").as_bytes()]).await;
        raw.expect_ack(id, "fine").await;
        eventually(5, "slc got fine", || !slc_seen.is_empty()).await;
        assert_eq!(slc_seen.bodies(), vec![Bytes::from("fine")], "{t}");
        assert_stats!(server.stats(), t, malformed_dropped == cases.len() as u64);
        server.shutdown().await;
    }
}

/// The brief's exchange: after garbage, `5-0-1-ok` is ACKed with `5-0-2-`
/// and echoed.
#[tokio::test]
async fn spec_example_echo_after_garbage() {
    // The exact exchange from the brief: garbage, then `5-0-1-ok` is ACKed
    // with `5-0-2-` and echoed.
    for t in RAW_TRANSPORTS {
        let (server, endpoint, _seen, _place) = start_server(t).await;
        let mut raw = RawPeer::connect(&endpoint, "raw").await;
        raw.send(&[b"", b"garbage"]).await;
        raw.send(&[b"1-2"]).await;
        eventually(5, "garbage counted", || {
            server.stats().malformed_dropped == 2
        })
        .await;
        raw.send(&[b"", b"5-0-1-ok"]).await;
        let f = raw_recv(&mut raw.socket, 5, "ACK").await;
        assert_eq!(
            f,
            vec![Bytes::from("server"), Bytes::new(), Bytes::from("5-0-2-")],
            "{t}"
        );
        let p = raw.next("echo").await;
        assert_eq!((p.src_cb, p.dst_cb), (wire::NOOP, wire::NOOP), "{t}");
        assert_eq!(p.body, Bytes::from("ok"), "{t}");
        server.shutdown().await;
    }
}

/// Well-formed but unexpected messages (an ACK of nothing, replies to
/// callbacks never issued, a duplicate ECHO, a body of dashes and binary)
/// are ACKed or counted as they should be and never reach the server loop.
#[tokio::test]
async fn unexpected_but_well_formed_messages() {
    for t in RAW_TRANSPORTS {
        let (server, endpoint, slc_seen, _place) = start_server(t).await;
        let mut raw = RawPeer::connect(&endpoint, "raw").await;
        raw.echo("hello").await;

        // An ACK for a message never sent: counted, nothing else happens.
        let before = server.stats();
        raw.send(&[b"", b"900-0-2-"]).await;
        eventually(5, "unknown ACK counted", || {
            server.stats().unknown_acks == before.unknown_acks + 1
        })
        .await;

        // A reply to a callback id never issued: ACKed, dropped, never
        // given to the SLC.
        let before = server.stats();
        let id = raw.next_id;
        raw.next_id += 1;
        raw.send(&[b"", format!("{id}-0-123456-nobody").as_bytes()])
            .await;
        raw.expect_ack(id, "reply to unknown MSC").await;
        eventually(5, "late reply counted", || {
            server.stats().late_replies_dropped == before.late_replies_dropped + 1
        })
        .await;
        // The smallest MSC id, and the largest id (whose generation bits
        // are out of range).
        for dst in [wire::FIRST_USER, u64::MAX] {
            let id = raw.next_id;
            raw.next_id += 1;
            raw.send(&[b"", format!("{id}-0-{dst}-nobody").as_bytes()])
                .await;
            raw.expect_ack(id, "reply to unknown MSC").await;
        }

        // A duplicate ECHO is ACKed again but answered once.
        let before = server.stats();
        let id = raw.next_id;
        raw.next_id += 1;
        raw.echo_with_id(id, "dup").await;
        raw.send(&[b"", format!("{id}-0-1-dup").as_bytes()]).await;
        raw.expect_ack(id, "duplicate ACKed again").await;
        // Had the duplicate been echoed, that echo would come before this one.
        raw.echo("after dup").await;
        let after = server.stats();
        assert_eq!(
            after.duplicates_dropped,
            before.duplicates_dropped + 1,
            "{t}"
        );
        assert_eq!(
            after.echoes_answered,
            before.echoes_answered + 2,
            "{t}: {after:?}"
        );

        // A well-formed message with a body full of dashes and binary bytes.
        let body = "-0-1-2-\u{0}\u{ff}-";
        raw.echo(body).await;

        assert!(slc_seen.is_empty(), "{t}");
        let s = server.stats();
        assert_stats!(
            s,
            t,
            malformed_dropped == 0,
            slc_delivered == 0,
            late_replies_dropped == 3
        );
        server.shutdown().await;
    }
}

/// msg_id u64::MAX is a valid id. Handling it must not overflow anything:
/// the message is ACKed and echoed, and the messenger goes on serving.
#[tokio::test]
async fn largest_msg_id_is_handled() {
    for t in RAW_TRANSPORTS {
        let (server, endpoint, _seen, _place) = start_server(t).await;
        let mut raw = RawPeer::connect(&endpoint, "raw").await;
        raw.echo_with_id(u64::MAX, "max").await;
        // Its resend is a duplicate: ACKed again, not echoed again.
        let before = server.stats();
        raw.send(&[b"", format!("{}-0-1-max", u64::MAX).as_bytes()])
            .await;
        raw.expect_ack(u64::MAX, "duplicate of max").await;
        assert_eq!(
            server.stats().duplicates_dropped,
            before.duplicates_dropped + 1,
            "{t}"
        );
        // Ids inside the window below it are still new; one far below it
        // is stale: refused unACKed, never taken for new (design/WIRE.md,
        // "Duplicates").
        raw.echo_with_id(u64::MAX - 1, "below max").await;
        let stale = server.stats().dedup_stale;
        raw.send(&[b"", b"0-0-1-far below"]).await;
        common::eventually(5, "the far id refused", || {
            server.stats().dedup_stale == stale + 1
        })
        .await;
        // Another peer is still served: the ProcessMessage loop is alive.
        let mut other = RawPeer::connect(&endpoint, "other").await;
        other.echo("still alive").await;
        let (client, conn) = connect(Config::default(), &endpoint).await;
        round_trip(5, &client, conn, wire::ECHO, b"alive", t).await;
        client.shutdown().await;
        server.shutdown().await;
    }
}

/// A raw ROUTER peer that answers our connection with garbage: each bad
/// message is dropped and counted, and a good reply still completes the
/// request.
#[tokio::test]
async fn garbage_from_a_raw_router_is_dropped_by_our_connection() {
    for t in RAW_TRANSPORTS {
        let (mut router, endpoint, _p) = raw_router(t).await;
        let (client, conn) = connect(small(), &endpoint).await;

        let req = common::spawn_request(&client, conn, wire::NOOP, "question");
        let m = common::raw_payload(&mut router, "client", "request").await;
        assert_eq!(m.body, Bytes::from("question"), "{t}");
        let peer = Bytes::from("client");
        let ack = format!("{}-0-2-", m.msg_id);
        raw_send(&mut router, &[&peer, b"raw", b"", ack.as_bytes()]).await;

        let cb = m.src_cb;
        let bad_reply = format!("x-0-{cb}-bad");
        let overflow = format!("18446744073709551616-0-{cb}-bad");
        let too_big = format!("0-0-{cb}-{}", "x".repeat(MAX_MESSAGE));
        // What our DEALER receives is everything after the routing id.
        let cases: Vec<(&str, Vec<&[u8]>)> = vec![
            ("one frame", vec![b"0-0-4-x"]),
            (
                "non-numeric msg_id",
                vec![b"raw", b"", bad_reply.as_bytes()],
            ),
            ("id beyond u64", vec![b"raw", b"", overflow.as_bytes()]),
            ("empty payload", vec![b"raw", b"", b""]),
            ("missing fields", vec![b"raw", b"", b"1-2"]),
            ("non-empty delimiter", vec![b"raw", b"d", b"0-0-4-x"]),
            ("four frames", vec![b"raw", b"", b"0-0-4-x", b"y"]),
            (
                "over max_message_size",
                vec![b"raw", b"", too_big.as_bytes()],
            ),
        ];
        for (name, parts) in &cases {
            let before = client.stats().malformed_dropped;
            let mut frames: Vec<&[u8]> = vec![&peer];
            frames.extend(parts.iter().copied());
            raw_send(&mut router, &frames).await;
            eventually(5, &format!("{t}: {name} counted"), || {
                client.stats().malformed_dropped == before + 1
            })
            .await;
        }
        assert!(!req.is_finished(), "{t}: completed by garbage");

        let good = format!("0-0-{cb}-answer");
        raw_send(&mut router, &[&peer, b"raw", b"", good.as_bytes()]).await;
        expect_reply(req, b"answer", &format!("{t}: request completes")).await;
        // Our connection ACKs the good reply.
        let f = within(5, "ACK of the answer", async {
            loop {
                let f = raw_recv(&mut router, 5, "ACK").await;
                if f.get(2).is_some_and(|p| p.as_ref() == b"0-0-2-") {
                    return f;
                }
            }
        })
        .await;
        assert_eq!(f[0], peer, "{t}");
        let s = client.stats();
        assert_stats!(
            s,
            t,
            malformed_dropped == cases.len() as u64,
            msc_delivered == 1,
            pending_callbacks == 0
        );
        client.shutdown().await;
    }
}
