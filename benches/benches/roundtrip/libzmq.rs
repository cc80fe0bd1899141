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
    let (p, d) = (Arc::clone(&phase), Arc::clone(&done));
    let driver = std::thread::spawn(move || {
        let _ctx = ctx;
        let body = cli_bench::body(size);
        let mut sent_at = vec![Instant::now(); in_flight];
        let (mut next_id, mut outstanding) = (0u64, 0usize);
        let (mut lat, mut errors) = (Vec::new(), 0u64);
        for (slot, at) in sent_at.iter_mut().enumerate() {
            *at = Instant::now();
            let req = wire::encode(next_id, FIRST_USER + slot as u64, ECHO, &body);
            next_id += 1;
            outstanding += 1;
            let _ = dealer.send_multipart([&b""[..], &req[..]], 0);
        }
        let give_up = || p.load(Ordering::Relaxed) == STOP;
        let mut stopped_at: Option<Instant> = None;
        while outstanding > 0 {
            let frames = match dealer.recv_multipart(0) {
                Ok(f) => f,
                Err(zmq::Error::EAGAIN) => {
                    if give_up()
                        && stopped_at.get_or_insert_with(Instant::now).elapsed()
                            > Duration::from_secs(5)
                    {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            };
            let Some(payload) = frames.last() else {
                continue;
            };
            let Ok(h) = wire::parse_header(payload) else {
                continue;
            };
            if h.dst_cb == ACK {
                continue;
            }
            let ack = wire::ack(h.msg_id);
            let _ = dealer.send_multipart([&b""[..], &ack[..]], 0);
            let Some(slot) = h.dst_cb.checked_sub(FIRST_USER).map(|s| s as usize) else {
                continue;
            };
            let Some(at) = sent_at.get_mut(slot) else {
                continue;
            };
            let ns = at.elapsed().as_nanos() as u64;
            outstanding -= 1;
            let ph = p.load(Ordering::Relaxed);
            let ok = payload.len() - h.body_start == size;
            if ok {
                d.fetch_add(1, Ordering::Relaxed);
            }
            if ph == MEASURE {
                if ok {
                    lat.push(ns);
                } else {
                    errors += 1;
                }
            }
            if ph == STOP {
                continue;
            }
            *at = Instant::now();
            let req = wire::encode(next_id, FIRST_USER + slot as u64, ECHO, &body);
            next_id += 1;
            outstanding += 1;
            let _ = dealer.send_multipart([&b""[..], &req[..]], 0);
        }
        (lat, errors)
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
    let (p, d) = (Arc::clone(&phase), Arc::clone(&done));
    let total = peers * in_flight;
    let driver = std::thread::spawn(move || {
        let _ctx = ctx;
        let body = cli_bench::body(size);
        // Per peer: its next msg_id and when each of its slots was sent.
        let mut next_id = vec![0u64; dealers.len()];
        let mut sent_at = vec![vec![Instant::now(); in_flight]; dealers.len()];
        let mut outstanding = 0usize;
        let (mut lat, mut errors) = (Vec::new(), 0u64);
        let send = |dealer: &zmq::Socket, id: &mut u64, slot: usize| {
            let req = wire::encode(*id, FIRST_USER + slot as u64, ECHO, &body);
            *id += 1;
            let _ = dealer.send_multipart([&b""[..], &req[..]], 0);
        };
        for ((dealer, id), slots) in dealers.iter().zip(&mut next_id).zip(&mut sent_at) {
            for (slot, at) in slots.iter_mut().enumerate() {
                *at = Instant::now();
                send(dealer, id, slot);
                outstanding += 1;
            }
        }
        let mut stopped_at: Option<Instant> = None;
        while outstanding > 0 {
            let mut items: Vec<zmq::PollItem> = dealers
                .iter()
                .map(|s| s.as_poll_item(zmq::POLLIN))
                .collect();
            if zmq::poll(&mut items, 100).is_err() {
                break;
            }
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            drop(items);
            if p.load(Ordering::Relaxed) == STOP
                && stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(5)
            {
                break;
            }
            for (i, dealer) in dealers.iter().enumerate() {
                if !ready[i] {
                    continue;
                }
                while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
                    let Some(payload) = frames.last() else {
                        continue;
                    };
                    let Ok(h) = wire::parse_header(payload) else {
                        continue;
                    };
                    if h.dst_cb == ACK {
                        continue;
                    }
                    let ack = wire::ack(h.msg_id);
                    let _ = dealer.send_multipart([&b""[..], &ack[..]], 0);
                    let Some(slot) = h.dst_cb.checked_sub(FIRST_USER).map(|s| s as usize) else {
                        continue;
                    };
                    let Some(at) = sent_at[i].get_mut(slot) else {
                        continue;
                    };
                    let ns = at.elapsed().as_nanos() as u64;
                    outstanding -= 1;
                    let ph = p.load(Ordering::Relaxed);
                    let ok = payload.len() - h.body_start == size;
                    if ok {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    if ph == MEASURE {
                        if ok {
                            lat.push(ns);
                        } else {
                            errors += 1;
                        }
                    }
                    if ph == STOP {
                        continue;
                    }
                    *at = Instant::now();
                    send(dealer, &mut next_id[i], slot);
                    outstanding += 1;
                }
            }
        }
        (lat, errors)
    });
    let seconds = cli_bench::control(&phase, &done, total, window, |_| {}).await;
    let (lat, errors) = tokio::task::spawn_blocking(move || driver.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "libzmq peers panicked".to_string())?;
    let n = lat.len() as u64;
    Ok(cli_bench::sample(seconds, n, errors, lat))
}
