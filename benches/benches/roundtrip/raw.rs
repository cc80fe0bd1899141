//! The same wire protocol, minimally, directly on the `zeromq` crate: the
//! ceiling for anything built on that dependency.
//!
//! - Server: one ROUTER; every message but an ACK is ACKed
//!   (`{msg_id}-0-2-`); ECHO, and NOOP with a reply callback, are answered
//!   `{n}-0-{src_cb}-{body}` with `n` counting per peer, sent as
//!   `[peer, identity, "", payload]` like the messenger's listener. No
//!   duplicate window, no resending, no callback table.
//! - Client: one DEALER; N requests `{id}-{4+slot}-1-{body}` in flight; each
//!   reply is ACKed and its slot's next request sent at once (closed loop).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger_proto::wire::{self, ACK, ECHO, FIRST_USER, NOOP};
use tokio::sync::mpsc;
use zeromq::prelude::*;
use zeromq::{DealerSocket, RouterSocket, SocketOptions, ZmqMessage};

use crate::cli_bench::{self, MEASURE, STOP, Sample, WARMUP, Window};

/// What the raw server does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// ACK it and answer ECHO (and NOOP with a reply callback).
    Echo,
    /// ACK it, answer nothing (the memory suite: callbacks stay pending).
    AckOnly,
    /// Read it, do nothing (the memory suite: messages stay unacknowledged).
    Silent,
}

fn options(identity: &str) -> SocketOptions {
    let mut opts = SocketOptions::default();
    if let Ok(id) = zeromq::util::PeerIdentity::try_from(Bytes::from(identity.to_owned())) {
        opts.peer_identity(id);
    }
    opts
}

fn msg(frames: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(frames).expect("at least one frame")
}

/// Serves on `endpoints` (zeromq endpoint strings) until the process ends.
pub async fn serve(router: RouterSocket, answer: Answer) {
    let identity = Bytes::from_static(b"raw-server");
    let (mut tx, mut rx) = router.split();
    let mut next_id: HashMap<Bytes, u64> = HashMap::new();
    while let Ok(m) = rx.recv().await {
        let mut frames = m.into_vecdeque();
        if frames.len() != 3 || answer == Answer::Silent {
            continue;
        }
        let (Some(peer), Some(payload)) = (frames.pop_front(), frames.pop_back()) else {
            continue;
        };
        let Ok(h) = wire::parse_header(&payload) else {
            continue;
        };
        if h.dst_cb == ACK {
            continue;
        }
        let ack = wire::ack(h.msg_id);
        let _ = tx
            .send(msg(vec![peer.clone(), identity.clone(), Bytes::new(), ack]))
            .await;
        let wants_reply = h.dst_cb == ECHO || (h.dst_cb == NOOP && h.src_cb != NOOP);
        if answer == Answer::Echo && wants_reply {
            let n = next_id.entry(peer.clone()).or_insert(0);
            let reply = wire::encode(*n, NOOP, h.src_cb, &payload[h.body_start..]);
            *n += 1;
            let _ = tx
                .send(msg(vec![peer, identity.clone(), Bytes::new(), reply]))
                .await;
        }
    }
}

/// Binds a raw ROUTER on tcp and ipc (in `dir`); returns it and the endpoints.
pub async fn bind_router(dir: &std::path::Path) -> (RouterSocket, Vec<String>) {
    let mut router = RouterSocket::with_options(options("raw-server"));
    let tcp = router.bind("tcp://127.0.0.1:0").await.expect("bind tcp");
    let ipc_path = dir.join("raw.sock");
    let ipc = format!("ipc://{}", ipc_path.display());
    router.bind(&ipc).await.expect("bind ipc");
    (router, vec![tcp.to_string(), ipc])
}

/// A connected raw DEALER: the writer's queue and the receive half.
pub struct RawClient {
    out: mpsc::UnboundedSender<Bytes>,
    rx: zeromq::DealerRecvHalf,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl RawClient {
    /// Connects to `endpoint`.
    pub async fn connect(endpoint: &str, identity: &str) -> Result<Self, String> {
        let mut dealer = DealerSocket::with_options(options(identity));
        dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
        let (mut tx, rx) = dealer.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
        let writer = tokio::spawn(async move {
            while let Some(p) = out_rx.recv().await {
                if tx.send(msg(vec![Bytes::new(), p])).await.is_err() {
                    break;
                }
            }
        });
        Ok(RawClient { out, rx, writer })
    }

    /// The closed loop with `in_flight` requests of `size` bytes to `dst_cb`
    /// (ECHO, or NOOP for a server loop), measured over `window`.
    pub async fn closed_loop(
        self,
        dst_cb: u64,
        size: usize,
        in_flight: usize,
        window: Window,
        progress: impl FnMut(u64),
    ) -> Result<Sample, String> {
        let (s, _) =
            closed_loop_many(vec![self], dst_cb, size, in_flight, window, progress).await?;
        Ok(s)
    }

    /// Starts this client's closed loop of `in_flight` requests; it counts
    /// completions in `done`, measures while `phase` is MEASURE and ends once
    /// it is STOP and every reply is in.
    fn spawn_driver(
        mut self,
        dst_cb: u64,
        size: usize,
        in_flight: usize,
        phase: Arc<AtomicU8>,
        done: Arc<AtomicU64>,
    ) -> tokio::task::JoinHandle<(Self, Vec<u64>, u64)> {
        tokio::spawn(async move {
            let body = cli_bench::body(size);
            let mut sent_at = vec![Instant::now(); in_flight];
            let mut next_id = 0u64;
            let mut outstanding = 0usize;
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            for (slot, at) in sent_at.iter_mut().enumerate() {
                *at = Instant::now();
                let req = wire::encode(next_id, FIRST_USER + slot as u64, dst_cb, &body);
                next_id += 1;
                outstanding += 1;
                if self.out.send(req).is_err() {
                    return (self, lat, errors);
                }
            }
            while outstanding > 0 {
                let Ok(m) = self.rx.recv().await else { break };
                let Some(payload) = m.into_vecdeque().pop_back() else {
                    continue;
                };
                let Ok(h) = wire::parse_header(&payload) else {
                    continue;
                };
                if h.dst_cb == ACK {
                    continue;
                }
                let _ = self.out.send(wire::ack(h.msg_id));
                let Some(slot) = h.dst_cb.checked_sub(FIRST_USER).map(|s| s as usize) else {
                    continue;
                };
                let Some(at) = sent_at.get_mut(slot) else {
                    continue;
                };
                let ns = at.elapsed().as_nanos() as u64;
                outstanding -= 1;
                let ph = phase.load(Ordering::Relaxed);
                let ok = payload.len() - h.body_start == size;
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
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
                let req = wire::encode(next_id, FIRST_USER + slot as u64, dst_cb, &body);
                next_id += 1;
                outstanding += 1;
                let _ = self.out.send(req);
            }
            (self, lat, errors)
        })
    }
}

/// Closed loops on several raw clients at once, `in_flight` requests each,
/// measured together; returns the clients for the next run.
pub async fn closed_loop_many(
    clients: Vec<RawClient>,
    dst_cb: u64,
    size: usize,
    in_flight: usize,
    window: Window,
    progress: impl FnMut(u64),
) -> Result<(Sample, Vec<RawClient>), String> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let done = Arc::new(AtomicU64::new(0));
    let total = clients.len() * in_flight;
    let drivers: Vec<_> = clients
        .into_iter()
        .map(|c| {
            c.spawn_driver(
                dst_cb,
                size,
                in_flight,
                Arc::clone(&phase),
                Arc::clone(&done),
            )
        })
        .collect();
    let seconds = cli_bench::control(&phase, &done, total, window, progress).await;
    let (mut lat, mut errors, mut back) = (Vec::new(), 0, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for d in drivers {
        let (client, l, e) = tokio::time::timeout_at(deadline, d)
            .await
            .map_err(|_| "raw client: replies missing after the window".to_string())?
            .map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
        back.push(client);
    }
    let n = lat.len() as u64;
    Ok((cli_bench::sample(seconds, n, errors, lat), back))
}
