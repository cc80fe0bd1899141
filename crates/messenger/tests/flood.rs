//! Floods of unwanted traffic from a raw zeromq DEALER over tcp: 50,000
//! replies to callback ids that were never issued, and 50,000 malformed
//! messages. The listener must drop and count every one, keep no state for
//! them (resident memory stays flat) and still answer an ECHO afterwards.
//!
//! The messenger runs in this test process, so the process's resident set
//! (`/proc/self/statm`) is its memory. Each flood goes out in batches of
//! 5,000, each counted by the listener (and its ACKs received) before the
//! next; the resident set is read after the first batch, the warm-up
//! (queues, buffers and allocator pools are at their working size by
//! then), and after the last. The two floods run one after the other (a
//! lock), so neither measures the other.

use messenger_testkit as common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::memory::{mib, rss};
use common::{Rng, eventually, frames, no_slc, raw_dealer, serve, within};
use messenger::{Config, Messenger, StatsSnapshot};
use messenger_proto::wire;
use tokio::sync::{Mutex, mpsc};
use zeromq::DealerSendHalf;
use zeromq::prelude::*;

const FLOOD: u64 = 50_000;
const WARM_UP: u64 = 5_000;

/// Allowed growth of the resident set between the warm-up and the end,
/// over the 45,000 messages in between. Without a leak the growth is
/// allocator and queue noise that does not scale with the message count:
/// 0.03 to 1.7 MiB over 45,000 messages, 0.6 to 1.0 MiB over 295,000 (the
/// numbers are printed on every run). Anything the listener kept per
/// message would scale: 6 MiB over 45,000 messages is 140 bytes each, about
/// one map entry or boxed id with its allocation overhead; keeping a
/// received payload alive keeps its read buffer, which is far more.
const MAX_GROWTH: u64 = 6 << 20;

/// One flood at a time: the resident set is the whole process's.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A listener and a raw DEALER connected to it; a task drains what the
/// listener sends back, counting ACKs and passing on everything else.
struct Flood {
    server: Messenger,
    send: DealerSendHalf,
    acks: Arc<AtomicU64>,
    others: mpsc::UnboundedReceiver<wire::Payload>,
}

impl Flood {
    async fn start() -> Flood {
        let (server, bound, _p) = serve("tcp", Config::default(), no_slc).await;
        let socket = raw_dealer(&bound.endpoint, "flooder").await;
        let (send, mut recv) = socket.split();
        let acks = Arc::new(AtomicU64::new(0));
        let (tx, others) = mpsc::unbounded_channel();
        let counted = Arc::clone(&acks);
        tokio::spawn(async move {
            while let Ok(m) = recv.recv().await {
                let payload = wire::from_router(&mut m.into_vec()).expect("listener's frames");
                let p = wire::parse(&payload).expect("listener's payload");
                if p.dst_cb == wire::ACK {
                    counted.fetch_add(1, Ordering::Relaxed);
                } else if tx.send(p).is_err() {
                    break;
                }
            }
        });
        Flood {
            server,
            send,
            acks,
            others,
        }
    }

    fn stats(&self) -> StatsSnapshot {
        self.server.stats()
    }

    async fn send(&mut self, parts: &[&[u8]]) {
        self.send.send(frames(parts)).await.expect("raw send");
    }

    /// Waits until the listener has counted `n` messages with `counter`
    /// and every ACK it sent has arrived here.
    async fn settle(&self, n: u64, what: &str, counter: fn(&StatsSnapshot) -> u64) {
        eventually(120, what, || counter(&self.stats()) >= n).await;
        eventually(30, "every ACK arrives", || {
            self.acks.load(Ordering::Relaxed) >= self.stats().acks_sent
        })
        .await;
        assert_eq!(counter(&self.stats()), n, "{what}: {:?}", self.stats());
    }

    /// Sends the flood in batches of `WARM_UP`, message `k` made by
    /// `message(k)`, each batch counted by the listener with `counter` (and
    /// its ACKs received) before the next: every batch has the same peak
    /// of messages in flight, so the queues and buffers of the first leave
    /// room for the others and only what stays behind can grow the
    /// resident set. Returns the resident set after the first batch (the
    /// warm-up) and after the last, and how long it all took.
    async fn in_batches(
        &mut self,
        what: &str,
        counter: fn(&StatsSnapshot) -> u64,
        mut message: impl FnMut(u64) -> Vec<Vec<u8>>,
    ) -> (u64, u64, Duration) {
        let started = Instant::now();
        let mut warm = 0;
        for (i, n) in batches() {
            for k in i..n {
                let parts = message(k);
                let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                self.send(&parts).await;
            }
            self.settle(n, what, counter).await;
            if n == WARM_UP {
                warm = rss();
            }
        }
        (warm, rss(), started.elapsed())
    }

    /// Sends an ECHO with `msg_id`, expects its ACK and the reply, and
    /// returns the listener's stats as they were then (before our ACK of
    /// the reply, which would count as received).
    async fn echo(&mut self, msg_id: u64) -> StatsSnapshot {
        let payload = format!("{msg_id}-7-1-still here");
        let acks_before = self.stats().acks_sent;
        self.send(&[b"", payload.as_bytes()]).await;
        let reply = within(10, "the ECHO reply", self.others.recv())
            .await
            .expect("drain task alive");
        assert_eq!(
            (reply.src_cb, reply.dst_cb, &reply.body[..]),
            (wire::NOOP, 7, &b"still here"[..])
        );
        let stats = self.stats();
        assert_eq!(stats.echoes_answered, 1, "{stats:?}");
        assert_eq!(stats.acks_sent, acks_before + 1, "{stats:?}");
        let ack = wire::ack(reply.msg_id);
        self.send(&[b"", &ack]).await;
        stats
    }
}

/// Prints and checks the resident set growth between the two readings.
fn check_growth(what: &str, warm: u64, end: u64, took: Duration) {
    let growth = end.saturating_sub(warm);
    // Straight to the stderr handle, so the numbers show without --nocapture.
    let _ = writeln!(
        std::io::stderr(),
        "flood ({what}): {FLOOD} messages in {took:.2?}; RSS after {WARM_UP}: {:.1} MiB, \
         after {FLOOD}: {:.1} MiB, growth {:.0} KiB (bound {} KiB)",
        mib(warm),
        mib(end),
        growth as f64 / 1024.0,
        MAX_GROWTH / 1024,
    );
    assert!(
        growth < MAX_GROWTH,
        "{what}: resident set grew by {growth} bytes over {} messages",
        FLOOD - WARM_UP
    );
}

/// The flood's batches of `WARM_UP` messages, as ranges of message numbers.
fn batches() -> impl Iterator<Item = (u64, u64)> {
    (0..FLOOD)
        .step_by(WARM_UP as usize)
        .map(|i| (i, (i + WARM_UP).min(FLOOD)))
}

/// An id that names no callback: >= 4, nothing was ever issued.
fn never_issued(rng: &mut Rng) -> u64 {
    rng.next().max(wire::FIRST_USER)
}

/// 50,000 replies to callback ids never issued: each ACKed, dropped and
/// counted, the resident set flat, ECHO still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_callbacks_never_issued_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let mut f = Flood::start().await;
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let counter = |s: &StatsSnapshot| s.late_replies_dropped;
    let (warm, end, took) = f
        .in_batches("late replies counted", counter, |msg_id| {
            let payload = format!("{msg_id}-0-{}-x", never_issued(&mut rng));
            vec![Vec::new(), payload.into_bytes()]
        })
        .await;
    let stats = f.echo(FLOOD).await;
    assert_eq!(stats.late_replies_dropped, FLOOD, "{stats:?}");
    assert_eq!(stats.pending_callbacks, 0, "{stats:?}");
    assert_eq!(stats.malformed_dropped, 0, "{stats:?}");
    assert_eq!(stats.slc_delivered + stats.msc_delivered, 0, "{stats:?}");
    // Every one was ACKed (so a real sender would stop resending it).
    assert_eq!(stats.acks_sent, FLOOD + 1, "{stats:?}");
    check_growth("callbacks never issued", warm, end, took);
    f.server.shutdown().await;
}

/// 50,000 malformed messages (bad payloads, bad frame shapes): each
/// dropped unACKed and counted, the resident set flat, ECHO still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let mut f = Flood::start().await;
    let too_long = format!("{}0-0-1-x", u64::MAX);
    let counter = |s: &StatsSnapshot| s.malformed_dropped;
    let (warm, end, took) = f
        .in_batches("malformed messages counted", counter, |k| {
            // Bad payloads, and good payloads in bad frame shapes.
            let bad = match k % 10 {
                0 => String::new(),
                1 => format!("{k}"),
                2 => format!("{k}-0-"),
                3 => format!("{k}--1-x"),
                4 => format!("-{k}-0-1-x"),
                5 => format!("{k}-+0-1-x"),
                6 => format!("{k} -0-1-x"),
                7 => too_long.clone(),
                _ => format!("{k}-0-1-x"),
            }
            .into_bytes();
            match k % 10 {
                8 => vec![bad],
                9 => vec![b"x".to_vec(), Vec::new(), bad],
                _ => vec![Vec::new(), bad],
            }
        })
        .await;
    // Nothing was ACKed or delivered; the window is untouched: msg_id 0.
    assert_eq!(f.stats().acks_sent, 0, "{:?}", f.stats());
    let stats = f.echo(0).await;
    assert_eq!(stats.malformed_dropped, FLOOD, "{stats:?}");
    assert_eq!(
        stats.received, 1,
        "only the ECHO was well-formed: {stats:?}"
    );
    assert_eq!(stats.pending_callbacks, 0, "{stats:?}");
    assert_eq!(stats.late_replies_dropped, 0, "{stats:?}");
    check_growth("malformed", warm, end, took);
    f.server.shutdown().await;
}
