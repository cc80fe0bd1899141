//! One abstraction over tcp, ipc and inproc: bind a ROUTER-like listener,
//! connect a DEALER-like connection, move multipart messages.
//!
//! Every socket is owned by tasks of its own: a reader that validates frames,
//! parses the payload and forwards an [`Inbound`] to the ProcessMessage loop,
//! and a writer that drains a bounded queue of [`Outbound`] into the socket.
//! Nobody else touches the socket, so `zeromq`'s non-cancel-safe `recv` is
//! only ever awaited to completion by its reader.

pub(crate) mod connection;
pub mod guard;
pub(crate) mod inproc;
pub(crate) mod outlet;
pub(crate) mod relay;
pub(crate) mod zmq;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dedup::{DedupWindow, Verdict};
use crate::endpoint::Endpoint;
use crate::error::{FrameError, RequestError};
use crate::pending::PendingSet;
use crate::server_loop::SlcQueue;
use crate::stats::{Stats, bump};
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

impl SocketKind {
    /// The kind in one word (ids are assigned far below 2^63): what a
    /// waiting callback stores to name its socket.
    pub(crate) fn tag(self) -> u64 {
        match self {
            SocketKind::Listener(id) => (id.0 << 1) | 1,
            SocketKind::Connection(id) => id.0 << 1,
        }
    }
}

/// Messages a writer takes from its queue per wake-up.
pub(crate) const WRITE_BATCH: usize = 64;

/// Bounds a map keyed by peer routing ids: a peer can only add an entry by
/// opening a connection, and entries go when it disconnects; the cap is a
/// backstop against a listener flooded with connections.
const MAX_PEERS: usize = 1 << 16;

/// Told when a sent message is acknowledged, or why it never will be.
pub(crate) type AckWaiter = tokio::sync::oneshot::Sender<Result<(), RequestError>>;

/// A peer went away: a connection's link (`peer` None) or one peer of a
/// listener. The ProcessMessage loop fails whatever waits on it.
pub(crate) struct Lost {
    pub(crate) socket: Arc<SocketCtx>,
    pub(crate) peer: Option<Bytes>,
}

/// Capacity of the queue of [`Lost`] notices. A full queue drops a
/// listener's notice (its waiters then end at their deadline instead), so a
/// peer reconnecting in a loop cannot grow it.
pub(crate) const LOST_QUEUE: usize = 1024;

/// What one socket remembers about one peer.
struct PeerState {
    /// Which connection of the peer this state belongs to (listeners).
    session: u64,
    /// Next msg_id towards the peer (listeners; connections use `next_id`).
    next_id: u64,
    /// Ids received from the peer.
    seen: DedupWindow,
}

/// What every part of the messenger needs to know about one socket.
pub(crate) struct SocketCtx {
    pub(crate) kind: SocketKind,
    /// The endpoint as bound (port 0 resolved) or connected.
    pub(crate) endpoint: Endpoint,
    /// The writer's queue: what cannot go straight to the link.
    pub(crate) out_tx: mpsc::Sender<Outbound>,
    /// The live link's send half, for senders to use directly.
    pub(crate) outlet: outlet::Outlet,
    /// The server-loop callback's queue (listeners only).
    pub(crate) slc: Option<SlcQueue>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) max_message_size: usize,
    closed: AtomicBool,
    /// A connection's link is up (listeners are always up).
    up: AtomicBool,
    /// Asks a connection's driver to drop its link and reconnect (a
    /// heartbeat declared the peer dead).
    pub(crate) link_dead: tokio::sync::Notify,
    /// Last heartbeat round trip, in microseconds (0: none yet).
    rtt_micros: AtomicU64,
    /// Next msg_id on a connection.
    next_id: AtomicU64,
    /// Numbers peer sessions (listeners).
    sessions: AtomicU64,
    /// Per peer (the empty routing id on a connection).
    peers: Mutex<HashMap<Bytes, PeerState, foldhash::fast::RandomState>>,
    dedup_max_gaps: usize,
    dedup_gap_ttl: Duration,
    /// Sent messages not yet acknowledged.
    pub(crate) pending: Mutex<PendingSet<AckWaiter>>,
    /// Where to report a peer going away.
    lost: mpsc::Sender<Lost>,
    /// Most unacknowledged messages before senders wait (the high-water
    /// mark applied to what is in flight, not only to what is queued).
    window: usize,
    /// Senders waiting for the window to open, and their wake-up.
    window_waiters: AtomicUsize,
    window_opened: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SocketCtx {
    pub(crate) fn new(
        kind: SocketKind,
        endpoint: Endpoint,
        out_tx: mpsc::Sender<Outbound>,
        slc: Option<SlcQueue>,
        stats: Arc<Stats>,
        config: &crate::Config,
        lost: mpsc::Sender<Lost>,
    ) -> Self {
        SocketCtx {
            kind,
            endpoint,
            out_tx,
            outlet: outlet::Outlet::new(config.resend_interval.is_some()),
            slc,
            stats,
            max_message_size: config.max_message_size,
            closed: AtomicBool::new(false),
            up: AtomicBool::new(true),
            link_dead: tokio::sync::Notify::new(),
            rtt_micros: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            peers: Mutex::new(HashMap::default()),
            dedup_max_gaps: config.dedup_max_gaps,
            dedup_gap_ttl: config.dedup_gap_ttl,
            pending: Mutex::new(PendingSet::new(config.max_pending_messages)),
            lost,
            window: if config.resend_interval.is_some() {
                config.send_queue_capacity.max(1)
            } else {
                usize::MAX
            },
            window_waiters: AtomicUsize::new(0),
            window_opened: tokio::sync::Notify::new(),
        }
    }

    /// Hands `out` to the link, or to the writer's queue if it cannot go
    /// directly; never waits. A message the link refuses counts as sent
    /// (it stays in the unacknowledged set, to be resent).
    pub(crate) fn try_send_out(
        &self,
        out: Outbound,
    ) -> Result<(), mpsc::error::TrySendError<Outbound>> {
        let Some(out) = self.try_direct(out) else {
            return Ok(());
        };
        self.outlet.will_queue();
        self.out_tx
            .try_send(out)
            .inspect_err(|_| self.outlet.unqueued(1))
    }

    /// [`try_send_out`](Self::try_send_out), waiting for room in the
    /// writer's queue when the message has to go there.
    pub(crate) async fn send_out(
        &self,
        out: Outbound,
    ) -> Result<(), mpsc::error::SendError<Outbound>> {
        let Some(out) = self.try_direct(out) else {
            return Ok(());
        };
        /// Takes the message back out of the count if the send is
        /// cancelled or fails (else direct sends would wait forever).
        struct Counted<'a>(Option<&'a outlet::Outlet>);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                if let Some(o) = self.0 {
                    o.unqueued(1);
                }
            }
        }
        self.outlet.will_queue();
        let mut counted = Counted(Some(&self.outlet));
        self.out_tx.send(out).await?;
        counted.0 = None;
        Ok(())
    }

    /// Hands `out` straight to the link if it can go there; gives it back
    /// when it has to be queued for the writer. A message the link refuses
    /// is counted and counts as handed over (resending recovers it).
    fn try_direct(&self, out: Outbound) -> Option<Outbound> {
        match self.outlet.try_send(out) {
            outlet::Direct::Sent => None,
            outlet::Direct::Failed(e) => {
                self.send_failed(&e);
                None
            }
            outlet::Direct::Queue(out) => Some(out),
        }
    }

    /// A link refused a message: count it; resending recovers it.
    pub(crate) fn send_failed(&self, error: &str) {
        bump(&self.stats.send_failures);
        tracing::debug!(endpoint = %self.endpoint, error, "send failed");
    }

    /// Whether as many messages as the window allows wait for their ACKs.
    pub(crate) fn window_full(&self) -> bool {
        self.window != usize::MAX && self.pending().len() >= self.window
    }

    /// Waits until fewer messages than the window wait for their ACKs.
    pub(crate) async fn wait_for_window(&self) {
        while self.window_full() {
            self.window_waiters.fetch_add(1, Ordering::SeqCst);
            let opened = self.window_opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.window_full() {
                opened.await;
            }
            self.window_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Removes an acknowledged (or answered, or abandoned) message from the
    /// unacknowledged set, waking senders that wait for room.
    pub(crate) fn acknowledged(
        &self,
        key: &crate::pending::MsgKey,
    ) -> Option<crate::pending::Entry<AckWaiter>> {
        let entry = self.pending().ack(key);
        if entry.is_some() {
            self.unacked_removed();
        }
        entry
    }

    /// An ACK arrived: forget the message and tell whoever waits for it.
    pub(crate) fn settle_ack(&self, peer: Bytes, msg_id: u64) {
        let now = tokio::time::Instant::now();
        let entry = self.pending().ack_at(&(peer, msg_id), now);
        if entry.is_some() {
            self.unacked_removed();
        }
        match entry {
            Some(entry) => {
                bump(&self.stats.acks_received);
                if let Some(w) = entry.waiter {
                    let _ = w.send(Ok(()));
                }
            }
            None => bump(&self.stats.unknown_acks),
        }
    }

    /// Messages left the unacknowledged set: wake senders waiting for room
    /// (one atomic load when nobody waits).
    pub(crate) fn unacked_removed(&self) {
        if self.window_waiters.load(Ordering::SeqCst) > 0 {
            self.window_opened.notify_waiters();
        }
    }

    /// Reports this connection's link lost (the driver can wait for room).
    pub(crate) async fn report_link_lost(self: &Arc<Self>) {
        let _ = self
            .lost
            .send(Lost {
                socket: Arc::clone(self),
                peer: None,
            })
            .await;
    }

    pub(crate) fn pending(&self) -> std::sync::MutexGuard<'_, PendingSet<AckWaiter>> {
        lock(&self.pending)
    }

    fn with_peer<R>(&self, peer: &Bytes, f: impl FnOnce(&mut PeerState) -> R) -> R {
        let mut peers = lock(&self.peers);
        if peers.len() >= MAX_PEERS && !peers.contains_key(peer) {
            peers.clear();
        }
        let state = peers.entry(peer.clone()).or_insert_with(|| PeerState {
            session: 0,
            next_id: 0,
            seen: DedupWindow::new(self.dedup_max_gaps, self.dedup_gap_ttl),
        });
        f(state)
    }

    /// What the peer's duplicate window says about `msg_id`. With `deliver`
    /// set, a new id is recorded as delivered in the same step (one lock and
    /// one lookup per message on the hot path).
    pub(crate) fn check_seen(&self, peer: &Bytes, msg_id: u64, deliver: bool) -> Verdict {
        let now = tokio::time::Instant::now();
        self.with_peer(peer, |s| {
            let verdict = s.seen.check(msg_id, now);
            if deliver && verdict == Verdict::New {
                s.seen.record(msg_id, now);
            }
            verdict
        })
    }

    /// Records `msg_id` from `peer` as delivered.
    pub(crate) fn record_delivered(&self, peer: &Bytes, msg_id: u64) {
        let now = tokio::time::Instant::now();
        self.with_peer(peer, |s| s.seen.record(msg_id, now));
    }

    /// The next msg_id towards `peer`: gap-free per (this socket, peer).
    pub(crate) fn next_msg_id(&self, peer: &Bytes) -> u64 {
        match self.kind {
            SocketKind::Connection(_) => self.next_id.fetch_add(1, Ordering::Relaxed),
            SocketKind::Listener(_) => self.with_peer(peer, |s| {
                let id = s.next_id;
                s.next_id += 1;
                id
            }),
        }
    }

    /// Forgets a peer: its next session starts at msg_id 0 both ways, and
    /// nothing waits for ACKs its old session will never send.
    pub(crate) fn forget_peer(&self, peer: &[u8]) {
        lock(&self.peers).remove(peer);
        self.fail_unacked(peer);
    }

    pub(crate) fn fail_unacked(&self, peer: &[u8]) {
        let failed = self.pending().drain_peer(peer);
        self.unacked_removed();
        for w in failed {
            let _ = w.send(Err(RequestError::Disconnected));
        }
    }

    /// A new connection from `peer` begins, before any of its messages are
    /// forwarded: a new session. Returns its number for [`end_session`].
    ///
    /// [`end_session`]: Self::end_session
    pub(crate) fn begin_session(&self, peer: &[u8]) -> u64 {
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut peers = lock(&self.peers);
            if peers.len() >= MAX_PEERS && !peers.contains_key(peer) {
                peers.clear();
            }
            peers.insert(
                Bytes::copy_from_slice(peer),
                PeerState {
                    session,
                    next_id: 0,
                    seen: DedupWindow::new(self.dedup_max_gaps, self.dedup_gap_ttl),
                },
            );
        }
        self.fail_unacked(peer);
        session
    }

    /// The connection that began `session` ended: forget the peer, unless a
    /// newer connection from it has begun since, and have the requests
    /// waiting on it failed.
    pub(crate) fn end_session(self: &Arc<Self>, peer: &[u8], session: u64) {
        let mine = {
            let mut peers = lock(&self.peers);
            let mine = peers.get(peer).is_some_and(|s| s.session == session);
            if mine {
                peers.remove(peer);
            }
            mine
        };
        if mine {
            // Failing its waiters is the loop's job, in order: messages from
            // this peer already queued (a last ACK or reply) come first.
            let _ = self.lost.try_send(Lost {
                socket: Arc::clone(self),
                peer: Some(Bytes::copy_from_slice(peer)),
            });
        }
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire) && !self.is_closed()
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.rtt_micros.store(micros, Ordering::Relaxed);
    }

    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// A new link to the peer: it starts a new session, so forget what we
    /// saw from the old one.
    pub(crate) fn new_session(&self) {
        lock(&self.peers).clear();
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
                if payload.dst_cb == wire::ACK {
                    // The first step of ProcessMessage, taken here: an ACK
                    // touches only this socket's unacknowledged set, and
                    // half of all messages are ACKs, so they skip the hop
                    // to the loop. Its order against the peer's other
                    // messages does not matter.
                    self.settle_ack(peer, payload.msg_id);
                    return true;
                }
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
    /// Tasks that end by themselves once the socket's zeromq half is gone
    /// (relays flushing towards the peer): given the linger period first.
    pub(crate) flushing: Vec<JoinHandle<()>>,
    /// Tells a listener's accept loop to stop and let its relays flush.
    pub(crate) stop: Option<tokio_util::sync::CancellationToken>,
    /// An ipc socket file this process created, removed on close.
    pub(crate) created_file: Option<std::path::PathBuf>,
    /// An inproc name this socket registered, released on close.
    pub(crate) inproc: Option<inproc::Registration>,
    /// The private socket behind the frame guard, removed on close.
    pub(crate) private: Option<relay::PrivateSocket>,
}

impl SocketTasks {
    /// Stops the socket at once (drop, or no runtime left to wait in).
    pub(crate) fn close(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        for t in self.tasks.drain(..).chain(self.flushing.drain(..)) {
            t.abort();
        }
        self.release_files();
    }

    /// Stops the socket, giving what was already handed to it up to
    /// `linger` to reach the peer (libzmq's ZMQ_LINGER): tasks that own the
    /// zeromq socket stop at once, so the crate flushes and closes its side;
    /// the relays and drivers that carry those bytes on are awaited.
    pub(crate) async fn close_gracefully(&mut self, linger: Duration) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let deadline = tokio::time::Instant::now() + linger;
        for mut t in std::mem::take(&mut self.flushing) {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
        self.release_files();
    }

    fn release_files(&mut self) {
        if let Some(path) = self.created_file.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove ipc socket file")
                }
            }
        }
        self.inproc.take();
        self.private.take();
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
}
