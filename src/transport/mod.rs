//! One abstraction over tcp, ipc and inproc: bind a ROUTER-like listener,
//! connect a DEALER-like connection, move multipart messages.
//!
//! Every socket is owned by tasks of its own: a reader that validates frames,
//! parses the payload and forwards an [`Inbound`] to the ProcessMessage loop,
//! and a writer that drains a bounded queue of [`Outbound`] into the socket.
//! Nobody else touches the socket, so `zeromq`'s non-cancel-safe `recv` is
//! only ever awaited to completion by its reader.

pub(crate) mod inproc;
pub(crate) mod zmq;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::endpoint::Endpoint;
use crate::error::FrameError;
use crate::server_loop::SlcQueue;
use crate::stats::{bump, Stats};
use crate::wire::{self, Payload};
use crate::{ConnectionId, ListenerId};

/// A message for a socket's writer. `peer` is the routing id on a
/// listener and empty on a connection.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) peer: Bytes,
    pub(crate) payload: Bytes,
}

/// A parsed message from a socket's reader.
pub(crate) struct Inbound {
    pub(crate) socket: Arc<SocketCtx>,
    /// Routing id of the sender (listeners) or empty (connections).
    pub(crate) peer: Bytes,
    pub(crate) payload: Payload,
}

/// Which side of the protocol a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    Listener(ListenerId),
    Connection(ConnectionId),
}

/// Bounds a map keyed by peer routing ids: a peer can only add an entry by
/// opening a connection, and entries go when it disconnects; the cap is a
/// backstop against a listener flooded with connections.
const MAX_PEER_COUNTERS: usize = 1 << 16;

/// What every part of the messenger needs to know about one socket.
pub(crate) struct SocketCtx {
    pub(crate) kind: SocketKind,
    /// The endpoint as bound (port 0 resolved) or connected.
    pub(crate) endpoint: Endpoint,
    pub(crate) out_tx: mpsc::Sender<Outbound>,
    /// The server-loop callback's queue (listeners only).
    pub(crate) slc: Option<SlcQueue>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) max_message_size: usize,
    closed: AtomicBool,
    /// Next msg_id on a connection.
    next_id: AtomicU64,
    /// Next msg_id per peer on a listener.
    peer_ids: Mutex<HashMap<Bytes, u64>>,
}

impl SocketCtx {
    pub(crate) fn new(
        kind: SocketKind,
        endpoint: Endpoint,
        out_tx: mpsc::Sender<Outbound>,
        slc: Option<SlcQueue>,
        stats: Arc<Stats>,
        max_message_size: usize,
    ) -> Self {
        SocketCtx {
            kind,
            endpoint,
            out_tx,
            slc,
            stats,
            max_message_size,
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            peer_ids: Mutex::new(HashMap::new()),
        }
    }

    /// The next msg_id towards `peer`: gap-free per (this socket, peer).
    pub(crate) fn next_msg_id(&self, peer: &Bytes) -> u64 {
        match self.kind {
            SocketKind::Connection(_) => self.next_id.fetch_add(1, Ordering::Relaxed),
            SocketKind::Listener(_) => {
                let mut ids = self.peer_ids.lock().unwrap_or_else(|p| p.into_inner());
                if ids.len() >= MAX_PEER_COUNTERS && !ids.contains_key(peer) {
                    ids.clear();
                }
                let next = ids.entry(peer.clone()).or_insert(0);
                let id = *next;
                *next += 1;
                id
            }
        }
    }

    /// Forgets a peer's msg_id counter when it disconnects, so the next
    /// session from the same routing id starts at 0 as the peer expects.
    pub(crate) fn forget_peer(&self, peer: &[u8]) {
        self.peer_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.out_tx.is_closed()
    }

    /// Validates one received multipart message and forwards it to the loop.
    /// Returns false when the loop has gone (the messenger is shutting down).
    pub(crate) async fn deliver<I>(
        self: &Arc<Self>,
        frames: I,
        inbound: &mpsc::Sender<Inbound>,
        warn: &mut RateLimit,
    ) -> bool
    where
        I: IntoIterator<Item = Bytes>,
        I::IntoIter: ExactSizeIterator,
    {
        match self.parse_frames(frames) {
            Ok((peer, payload)) => {
                bump(&self.stats.received);
                inbound
                    .send(Inbound {
                        socket: Arc::clone(self),
                        peer,
                        payload,
                    })
                    .await
                    .is_ok()
            }
            Err(e) => {
                bump(&self.stats.malformed_dropped);
                if warn.allow() {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "dropping malformed message");
                }
                true
            }
        }
    }

    fn parse_frames<I>(&self, frames: I) -> Result<(Bytes, Payload), FrameError>
    where
        I: IntoIterator<Item = Bytes>,
        I::IntoIter: ExactSizeIterator,
    {
        let (peer, payload) = match self.kind {
            SocketKind::Listener(_) => wire::router_frames(frames)?,
            SocketKind::Connection(_) => (Bytes::new(), wire::dealer_frames(frames)?),
        };
        if payload.len() > self.max_message_size {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: self.max_message_size,
            });
        }
        Ok((peer, wire::parse(&payload)?))
    }
}

/// Lets through at most a burst of warnings per second, so a peer sending
/// garbage cannot flood the log.
pub(crate) struct RateLimit {
    window_start: Instant,
    in_window: u32,
}

impl RateLimit {
    const BURST: u32 = 10;

    pub(crate) fn new() -> Self {
        RateLimit {
            window_start: Instant::now(),
            in_window: 0,
        }
    }

    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        self.in_window += 1;
        self.in_window <= Self::BURST
    }
}

/// The tasks and files that make up one open socket; dropping or closing it
/// stops them.
pub(crate) struct SocketTasks {
    pub(crate) tasks: Vec<JoinHandle<()>>,
    /// An ipc socket file this process created, removed on close.
    pub(crate) created_file: Option<std::path::PathBuf>,
    /// An inproc name this socket registered, released on close.
    pub(crate) inproc: Option<inproc::InprocHandle>,
}

impl SocketTasks {
    pub(crate) fn close(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(path) = self.created_file.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove ipc socket file"),
            }
        }
        self.inproc.take();
    }
}

impl Drop for SocketTasks {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a transport needs to open a socket.
pub(crate) struct OpenArgs {
    pub(crate) identity: Bytes,
    pub(crate) ctx: Arc<SocketCtx>,
    pub(crate) out_rx: mpsc::Receiver<Outbound>,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Tells the messenger a connection's peer went away.
    pub(crate) on_disconnect: mpsc::UnboundedSender<Arc<SocketCtx>>,
}
