//! The minimal server (and a client) of raw.rs on libzmq, through the `zmq`
//! crate (which builds libzmq 4.3 from source). Built with `--features compare`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use messenger_proto::wire::{self, ACK, ECHO, FIRST_USER, NOOP};

use crate::cli_bench::{self, MEASURE, STOP, Sample, WARMUP, Window};

fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> zmq::Socket {
    let s = ctx.socket(kind).expect("socket");
    // libzmq's default high-water mark (1000) would make the ROUTER drop
    // replies at 1000 in flight plus their ACKs.
    s.set_sndhwm(0).expect("sndhwm");
    s.set_rcvhwm(0).expect("rcvhwm");
    s.set_linger(0).expect("linger");
    s
}

/// Binds a ROUTER on tcp and ipc (in `dir`), serving on a thread of its
/// own; returns the endpoints.
pub fn bind(dir: &std::path::Path) -> Vec<String> {
    let ctx = zmq::Context::new();
    let router = socket(&ctx, zmq::ROUTER);
    router.bind("tcp://127.0.0.1:*").expect("bind tcp");
    let tcp = router
        .get_last_endpoint()
        .expect("endpoint")
        .expect("utf-8 endpoint");
    let ipc = format!("ipc://{}", dir.join("libzmq.sock").display());
    router.bind(&ipc).expect("bind ipc");
    std::thread::spawn(move || serve(ctx, router));
    vec![tcp, ipc]
}

fn serve(_ctx: zmq::Context, router: zmq::Socket) {
    let identity: &[u8] = b"libzmq-server";
    let mut next_id: std::collections::HashMap<Vec<u8>, u64> = Default::default();
    while let Ok(frames) = router.recv_multipart(0) {
        let [peer, _delim, payload] = frames.as_slice() else {
            continue;
        };
        let Ok(h) = wire::parse_header(payload) else {
            continue;
        };
        if h.dst_cb == ACK {
            continue;
        }
        let ack = wire::ack(h.msg_id);
        let _ = router.send_multipart([&peer[..], identity, b"", &ack[..]], 0);
        if h.dst_cb == ECHO || (h.dst_cb == NOOP && h.src_cb != NOOP) {
            let n = next_id.entry(peer.clone()).or_insert(0);
            let reply = wire::encode(*n, NOOP, h.src_cb, &payload[h.body_start..]);
            *n += 1;
            let _ = router.send_multipart([&peer[..], identity, b"", &reply[..]], 0);
        }
    }
}

/// What a closed loop's driver thread counts, for one DEALER or many, and
/// what a reply does: one piece for [`closed_loop`] and
/// [`closed_loop_peers`].
struct Tally {
    /// The bench's phase (warm-up, measuring, stopping).
    phase: Arc<AtomicU8>,
    /// Round trips completed, for the bench's control loop.
    done: Arc<AtomicU64>,
    /// The body size a reply must echo.
    size: usize,
    /// Requests sent and not yet answered.
    outstanding: usize,
    /// Round trips measured, in nanoseconds.
    lat: Vec<u64>,
    /// Replies of the wrong size while measuring.
    errors: u64,
}

impl Tally {
    fn new(phase: Arc<AtomicU8>, done: Arc<AtomicU64>, size: usize) -> Self {
        Tally {
            phase,
            done,
            size,
            outstanding: 0,
            lat: Vec::new(),
            errors: 0,
        }
    }

    /// Whether the bench is stopping.
    fn stopping(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == STOP
    }

    /// Sends slot `slot`'s request on `dealer`, numbered `*id`.
    fn send(&mut self, dealer: &zmq::Socket, id: &mut u64, slot: usize, body: &[u8]) {
        let req = wire::encode(*id, FIRST_USER + slot as u64, ECHO, body);
        *id += 1;
        self.outstanding += 1;
        let _ = dealer.send_multipart([&b""[..], &req[..]], 0);
    }

    /// A message `dealer` read: ACKs it and, for the reply to one of
    /// `sent_at`'s slots, counts its round trip. Returns the slot to send
    /// on again (`None`: an ACK, not ours, or the bench is stopping).
    fn reply(
        &mut self,
        dealer: &zmq::Socket,
        frames: &[Vec<u8>],
        sent_at: &mut [Instant],
    ) -> Option<usize> {
        let payload = frames.last()?;
        let h = wire::parse_header(payload).ok()?;
        if h.dst_cb == ACK {
            return None;
        }
        let ack = wire::ack(h.msg_id);
        let _ = dealer.send_multipart([&b""[..], &ack[..]], 0);
        let slot = h.dst_cb.checked_sub(FIRST_USER)? as usize;
        let at = sent_at.get_mut(slot)?;
        let ns = at.elapsed().as_nanos() as u64;
        self.outstanding -= 1;
        let ph = self.phase.load(Ordering::Relaxed);
        let ok = payload.len() - h.body_start == self.size;
        if ok {
            self.done.fetch_add(1, Ordering::Relaxed);
        }
        if ph == MEASURE {
            if ok {
                self.lat.push(ns);
            } else {
                self.errors += 1;
            }
        }
        if ph == STOP {
            return None;
        }
        *at = Instant::now();
        Some(slot)
    }
}

/// The closed loop of raw.rs on a libzmq DEALER, on a thread of its own.
pub async fn closed_loop(
    endpoint: &str,
    size: usize,
    in_flight: usize,
    window: Window,
    progress: impl FnMut(u64),
) -> Result<Sample, String> {
    let ctx = zmq::Context::new();
    let dealer = socket(&ctx, zmq::DEALER);
    dealer.set_rcvtimeo(100).map_err(|e| e.to_string())?;
    dealer.connect(endpoint).map_err(|e| e.to_string())?;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let done = Arc::new(AtomicU64::new(0));
    let tally = Tally::new(Arc::clone(&phase), Arc::clone(&done), size);
    let driver = std::thread::spawn(move || {
        let _ctx = ctx;
        let mut tally = tally;
        let body = cli_bench::body(size);
        let mut sent_at = vec![Instant::now(); in_flight];
        let mut next_id = 0u64;
        for (slot, at) in sent_at.iter_mut().enumerate() {
            *at = Instant::now();
            tally.send(&dealer, &mut next_id, slot, &body);
        }
        let mut stopped_at: Option<Instant> = None;
        while tally.outstanding > 0 {
            let frames = match dealer.recv_multipart(0) {
                Ok(f) => f,
                Err(zmq::Error::EAGAIN) => {
                    if tally.stopping()
                        && stopped_at.get_or_insert_with(Instant::now).elapsed()
                            > Duration::from_secs(5)
                    {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            };
            if let Some(slot) = tally.reply(&dealer, &frames, &mut sent_at) {
                tally.send(&dealer, &mut next_id, slot, &body);
            }
        }
        (tally.lat, tally.errors)
    });
    let seconds = cli_bench::control(&phase, &done, in_flight, window, progress).await;
    let (lat, errors) = tokio::task::spawn_blocking(move || driver.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "libzmq client panicked".to_string())?;
    let n = lat.len() as u64;
    Ok(cli_bench::sample(seconds, n, errors, lat))
}

/// The peers suite's libzmq series: `peers` DEALERs (one context, libzmq's
/// default one I/O thread), `in_flight` requests each, driven from one
/// application thread that polls them all (`zmq_poll`) and drains every
/// readable socket before it polls again. The same protocol as
/// [`closed_loop`] (ECHO, every reply ACKed).
pub async fn closed_loop_peers(
    endpoint: &str,
    peers: usize,
    in_flight: usize,
    size: usize,
    window: Window,
) -> Result<Sample, String> {
    let ctx = zmq::Context::new();
    let mut dealers = Vec::with_capacity(peers);
    for i in 0..peers {
        let d = socket(&ctx, zmq::DEALER);
        d.set_identity(format!("libzmq-peer-{}-{i}", std::process::id()).as_bytes())
            .map_err(|e| e.to_string())?;
        d.connect(endpoint).map_err(|e| e.to_string())?;
        dealers.push(d);
    }
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let done = Arc::new(AtomicU64::new(0));
    let total = peers * in_flight;
    let tally = Tally::new(Arc::clone(&phase), Arc::clone(&done), size);
    let driver = std::thread::spawn(move || {
        let _ctx = ctx;
        let mut tally = tally;
        let body = cli_bench::body(size);
        // Per peer: its next msg_id and when each of its slots was sent.
        let mut next_id = vec![0u64; dealers.len()];
        let mut sent_at = vec![vec![Instant::now(); in_flight]; dealers.len()];
        for ((dealer, id), slots) in dealers.iter().zip(&mut next_id).zip(&mut sent_at) {
            for (slot, at) in slots.iter_mut().enumerate() {
                *at = Instant::now();
                tally.send(dealer, id, slot, &body);
            }
        }
        let mut stopped_at: Option<Instant> = None;
        while tally.outstanding > 0 {
            let mut items: Vec<zmq::PollItem> = dealers
                .iter()
                .map(|s| s.as_poll_item(zmq::POLLIN))
                .collect();
            if zmq::poll(&mut items, 100).is_err() {
                break;
            }
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            drop(items);
            if tally.stopping()
                && stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(5)
            {
                break;
            }
            for (i, dealer) in dealers.iter().enumerate() {
                if !ready[i] {
                    continue;
                }
                while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
                    if let Some(slot) = tally.reply(dealer, &frames, &mut sent_at[i]) {
                        tally.send(dealer, &mut next_id[i], slot, &body);
                    }
                }
            }
        }
        (tally.lat, tally.errors)
    });
    let seconds = cli_bench::control(&phase, &done, total, window, |_| {}).await;
    let (lat, errors) = tokio::task::spawn_blocking(move || driver.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "libzmq peers panicked".to_string())?;
    let n = lat.len() as u64;
    Ok(cli_bench::sample(seconds, n, errors, lat))
}
