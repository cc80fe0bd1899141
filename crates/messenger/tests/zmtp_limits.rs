//! The empty-frame MORE flood: a raw peer completes the ZMTP handshake,
//! then sends `0x01 0x00` (an empty frame with MORE, two bytes) over and
//! over, up to 100 MiB. Each frame is a message part that never ends, so a
//! decoder that keeps a handle (or a buffer) per frame grows by tens of
//! bytes per two bytes received: gigabytes over the flood. Ours refuses the
//! message at `Config::max_frames` (32 frames, 64 bytes in) and cuts the
//! peer off.
//!
//! Against a listener without a secret, a listener with one (the flood
//! comes before any proof: no session exists yet), and our connection side
//! (a raw ROUTER the messenger dialled floods it), on tcp and ipc. Each
//! checks that the flooder's socket sees the end (EOF or reset) within 5 s
//! of its first flood byte, that the resident set (sampled every
//! millisecond) peaks less than 16 MiB above where it was before the
//! flood, that the cut is counted in `guard_rejections`, that nothing
//! beyond the handshake reached the flooder, and that ECHO is still
//! answered afterwards.
//!
//! How much of the flood gets written is printed, not checked: a listener
//! that cuts a session off still reads (and discards) what arrives for up
//! to 100 ms while it closes, so on loopback the whole 100 MiB may go out.
//!
//! The resident set is the whole process's, so the tests run one at a time
//! (a lock).

use messenger_testkit as common;

use std::io;
use std::time::{Duration, Instant};

use common::memory::{self, RssSampler, mib};
use common::raw_zmtp::{self, FrameReader, RawListener, Stream};
use common::{Place, RAW_TRANSPORTS, connect_as, eventually, no_slc, round_trip, serve, within};
use messenger::Secret;
use messenger::{Config, ConnectionId, Messenger, StatsSnapshot};
use messenger_proto::wire;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

/// The most one flood sends.
const FLOOD_MAX: u64 = 100 << 20;
/// Most the resident set may rise above its level before the flood.
const MAX_GROWTH: u64 = 16 << 20;
/// The flooder's stream must end (EOF or reset) this soon.
const CUT_WITHIN: Duration = Duration::from_secs(5);
const SECRET: &str = "flood-secret";

static SERIAL: Mutex<()> = Mutex::const_new(());

fn config(secret: bool) -> Config {
    Config {
        auth: secret.then(|| Secret::new(SECRET)),
        ..Config::default()
    }
}

/// Writes empty MORE frames until the stream fails or `FLOOD_MAX` bytes
/// went out, counting them in `written`. Returns the error that stopped it.
async fn flood_until_cut<W: AsyncWrite + Unpin>(w: &mut W, written: &mut u64) -> Option<io::Error> {
    let chunk = [raw_zmtp::MORE, 0].repeat(32 * 1024);
    while *written < FLOOD_MAX {
        match w.write(&chunk).await {
            Ok(0) => return Some(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n as u64,
            Err(e) => return Some(e),
        }
    }
    None
}

/// What one flood did.
struct Flood {
    written: u64,
    write_error: Option<io::Error>,
    /// Bytes the flooder received after the handshake.
    received_after_handshake: u64,
    /// Whether its stream ended (EOF or reset) rather than going quiet.
    ended: bool,
    /// From the first flood byte to the end of the stream (or 10 s of
    /// silence).
    ended_after: Duration,
    before: u64,
    peak: u64,
}

impl Flood {
    fn check(&self, what: &str) {
        let growth = self.peak.saturating_sub(self.before);
        eprintln!(
            "{what}: the stream ended {:.1?} into the flood, {} bytes written ({}); \
             received after the handshake: {} bytes; \
             RSS before {:.1} MiB, peak {:.1} MiB, growth {:.0} KiB (bound {} KiB)",
            self.ended_after,
            self.written,
            self.write_error
                .as_ref()
                .map_or("no write error".to_string(), |e| format!("then: {e}")),
            self.received_after_handshake,
            mib(self.before),
            mib(self.peak),
            growth as f64 / 1024.0,
            MAX_GROWTH / 1024,
        );
        assert!(
            self.ended && self.ended_after < CUT_WITHIN,
            "{what}: the flooder was not cut off within {CUT_WITHIN:?}: {} bytes written",
            self.written
        );
        assert_eq!(
            self.received_after_handshake, 0,
            "{what}: the flooder received bytes after the handshake"
        );
        assert!(
            growth < MAX_GROWTH,
            "{what}: the resident set grew by {growth} bytes during the flood"
        );
    }
}

/// Floods over `reader`'s stream (its handshake done; what it read past
/// the handshake counts as received) while reading it, until its stream
/// ends, and samples the resident set meanwhile.
async fn flood(reader: FrameReader<Stream>) -> Flood {
    let leftover = reader.buffered();
    let stream = reader.inner;
    let before = memory::rss();
    let sampler = RssSampler::start();
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let started = Instant::now();
    // The reader sees the end (EOF or a reset); 10 s of silence means the
    // peer was left hanging. The writer stops when its writes fail, after
    // FLOOD_MAX bytes, or once the reader saw the end.
    let reading = reader.drain(Duration::from_secs(10));
    tokio::pin!(reading);
    let mut written = 0u64;
    let (write_error, (received, ended)) = within(60, "the flood", async {
        tokio::select! {
            e = flood_until_cut(&mut w, &mut written) => (e, reading.await),
            end = &mut reading => (None, end),
        }
    })
    .await;
    let ended_after = started.elapsed();
    let peak = sampler.finish();
    Flood {
        written,
        write_error,
        received_after_handshake: received + leftover as u64,
        ended,
        ended_after,
        before,
        peak,
    }
}

/// Waits until `m` has counted the cut (a guard rejection).
async fn cut_counted(m: &Messenger) {
    eventually(5, "the cut is counted", || m.stats().guard_rejections >= 1).await;
}

/// Floods over `reader`'s stream, checks what the flood did (see
/// [`Flood::check`]) and waits until `victim` has counted the cut; returns
/// `victim`'s stats then.
async fn flood_and_cut(
    reader: FrameReader<Stream>,
    victim: &Messenger,
    what: &str,
) -> StatsSnapshot {
    flood(reader).await.check(what);
    cut_counted(victim).await;
    victim.stats()
}

/// A listener (with the secret or not) on `transport`, a normal client
/// answered before, the flood from an anonymous raw DEALER, then ECHO for
/// the old client and a fresh one.
async fn flood_a_listener(transport: &str, secret: bool) {
    let _serial = SERIAL.lock().await;
    let what = format!(
        "listener on {transport}, {}",
        if secret { "with a secret" } else { "no secret" }
    );
    let (server, bound, _p) = serve(transport, config(secret), no_slc).await;
    let (client, conn) = connect_as("client", config(secret), &bound.endpoint, 10).await;
    within(
        10,
        "echo before",
        client.request(conn, wire::ECHO, b"before"),
    )
    .await
    .unwrap();

    let mut reader = raw_zmtp::dealer(&bound.endpoint, b"", b"").await;
    within(5, "the listener's READY", reader.expect_ready()).await;
    let stats = flood_and_cut(reader, &server, &what).await;
    eprintln!(
        "{what}: guard_rejections {}, auth_failures {}, handshake_timeouts {}",
        stats.guard_rejections, stats.auth_failures, stats.handshake_timeouts
    );
    assert_eq!(stats.guard_rejections, 1, "{what}: {stats:?}");

    let after = format!("{what}: echo after");
    round_trip(10, &client, conn, wire::ECHO, b"after", &after).await;
    let (fresh, c) = connect_as("fresh", config(secret), &bound.endpoint, 10).await;
    let fresh_echo = format!("{what}: fresh echo");
    round_trip(10, &fresh, c, wire::ECHO, b"x", &fresh_echo).await;
    fresh.shutdown().await;
    client.shutdown().await;
    server.shutdown().await;
}

/// [`flood_a_listener`] without a secret, on tcp and ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frame_flood_is_cut_at_a_listener_without_a_secret() {
    for t in RAW_TRANSPORTS {
        flood_a_listener(t, false).await;
    }
}

/// [`flood_a_listener`] with a secret (the flood comes before any proof),
/// on tcp and ipc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frame_flood_is_cut_before_the_proof_at_a_listener_with_a_secret() {
    for t in RAW_TRANSPORTS {
        flood_a_listener(t, true).await;
    }
}

/// A raw ROUTER on a fresh `transport` endpoint that accepts one
/// connection (its listener is dropped then, so redials are refused) and
/// answers its handshake, and a messenger ("victim") connected to it.
/// Returns the victim, its connection and the router's stream.
async fn victim_of_a_raw_router(
    transport: &str,
) -> (Messenger, ConnectionId, FrameReader<Stream>, Place) {
    let (listener, endpoint, p) = RawListener::bind(transport).await;
    let router = tokio::spawn(async move {
        let stream = listener.accept().await;
        drop(listener);
        let mut reader = FrameReader::new(stream);
        reader
            .inner
            .write_all(&raw_zmtp::greeting(1))
            .await
            .unwrap();
        reader.greeting().await.unwrap();
        reader.expect_ready().await;
        reader
            .inner
            .write_all(&raw_zmtp::ready("ROUTER", b"raw-router"))
            .await
            .unwrap();
        reader
    });
    let victim = Messenger::builder().identity("victim").build().unwrap();
    let (conn, reader) = within(10, "handshake with the raw router", async {
        tokio::join!(victim.make_connection(&endpoint), router)
    })
    .await;
    let conn = conn.expect("make_connection to the raw router");
    let reader = reader.expect("raw router task");
    (victim, conn, reader, p)
}

/// The flood from a raw ROUTER our connection dialled: cut off, counted,
/// the link down, and the victim still talks to well-behaved peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frame_flood_is_cut_at_our_connection_side() {
    for t in RAW_TRANSPORTS {
        let _serial = SERIAL.lock().await;
        let what = format!("our connection on {t}");
        let (victim, conn, reader, _p) = victim_of_a_raw_router(t).await;
        let stats = flood_and_cut(reader, &victim, &what).await;
        eprintln!(
            "{what}: guard_rejections {}, reconnects {}",
            stats.guard_rejections, stats.reconnects
        );
        assert_eq!(stats.guard_rejections, 1, "{what}: {stats:?}");
        eventually(5, "the link is down", || !victim.is_connected(conn)).await;

        // The victim still talks to well-behaved peers.
        let (server, bound, _server_place) = serve(t, Config::default(), no_slc).await;
        let c = within(10, "connect", victim.make_connection(&bound.endpoint))
            .await
            .unwrap();
        let after = format!("{what}: echo after");
        round_trip(10, &victim, c, wire::ECHO, b"x", &after).await;
        victim.shutdown().await;
        server.shutdown().await;
    }
}

/// Once our connection cuts a peer off, its socket is really closed, not
/// only half-closed: what the peer writes next fails at once. (The cut
/// session's outbox held the stream, so until a redial succeeded the
/// socket stayed open: the peer's writes filled our receive buffer and
/// then blocked for as long as the redials failed.) The raw router accepts
/// once, so every redial is refused.
#[tokio::test]
async fn a_peer_we_cut_off_finds_our_socket_closed() {
    for t in RAW_TRANSPORTS {
        let _serial = SERIAL.lock().await;
        let what = format!("our connection on {t}");
        let (victim, conn, reader, _p) = victim_of_a_raw_router(t).await;
        let mut stream = reader.inner;
        // A frame whose flags have reserved bits set: cut at once.
        stream.write_all(&[0x80, 0]).await.unwrap();
        cut_counted(&victim).await;
        eventually(5, "the link is down", || !victim.is_connected(conn)).await;
        let mut written = 0u64;
        let failed = within(
            10,
            &format!("{what}: writes to a closed socket fail"),
            async { flood_until_cut(&mut stream, &mut written).await },
        )
        .await;
        eprintln!("{what}: the peer's writes failed after {written} bytes: {failed:?}");
        assert!(
            failed.is_some(),
            "{what}: {written} bytes written to a socket we had cut off"
        );
        victim.shutdown().await;
    }
}
