//! Sockets and their sessions over tcp, ipc and inproc.
//!
//! A *socket* is a listener (our ROUTER) or a connection (our DEALER): a
//! [`SocketCtx`] holds what its senders and sessions share (the
//! unacknowledged set, the routing table or live link, counters). A
//! *session* is one live connection of a socket to one peer: a ZMTP
//! connection after its handshake (and its proof, when a secret is set),
//! or an inproc pairing. Each tcp or ipc session is driven by one task that
//! reads, decodes, and runs ProcessMessage on what it reads, in place
//! ([`driver`](super::driver)); an inproc message lands in the peer's messenger from the
//! sender's task ([`inproc`](super::inproc)). Anything may send through a session's
//! [`Out`].
//!
//! ```text
//! stream.rs      tcp/ipc streams; bind and dial
//! outbox.rs      a connection's send buffer and its write role
//! unacked.rs     a peer's unacknowledged messages and its window
//! room.rs        senders waiting for room, and their wake-up
//! driver.rs      one tcp/ipc connection: handshake, then read -> process
//! listener.rs    accept loop, connection limits, idle eviction, routing ids
//! connection.rs  dial, redial with backoff
//! inproc.rs      in-process pairs: messages land from the sender's task
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address::{Origin, SocketKind};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::events::PeerAddr;
use crate::proto::FrameError;
use crate::proto::wire::{self, Payload};
use crate::runtime::batch;
use crate::runtime::process::Refused;
use crate::runtime::replies::Replies;
use crate::stats::{Stats, Transport, bump};
use crate::transport::outbox::{Outbox, Push};
use crate::transport::room::Room;
use crate::transport::unacked::Unacked;
use zmtp::{CurvePublicKey, Encoder};

/// A server loop's bounded queue: what the listener's sessions hand
/// messages to, and the loop's task takes them from.
pub(crate) type SlcQueue = tokio::sync::mpsc::Sender<Delivered>;

/// A message handed to a server loop, with the place in its sender's
/// window its reply may take (when it asks for one, over tcp or ipc).
pub(crate) struct Delivered {
    /// What the server loop gets.
    pub(crate) message: crate::types::Incoming,
    /// The place its reply may take; `None`: no reply wanted, or inproc.
    pub(crate) ticket: Option<ReplyTicket>,
}

/// The way out of an inproc session, to the session paired with it
/// (implemented in [`inproc`](crate::runtime::inproc); a trait so that
/// sessions need not name the pair, which names sessions).
pub(crate) trait InprocLink: Send + Sync {
    /// Lands `msg`, sent from `ours`, on the other side now, or says why
    /// not: the send path's inproc branch.
    /// `now`: the send's own clock read (inproc reads no clock of its
    /// own per message).
    fn land(&self, ours: &Session, msg: Payload, now: Instant) -> Result<(), Refused>;
    /// Lands a message already formatted: one sent while a connection was
    /// redialling, resent when its link is up.
    fn send(&self, ours: &Session, payload: &Bytes) -> Result<(), Push>;
    /// Waits until the other side's server loop may have room (what
    /// `land` and `send` can be refused for).
    fn room(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
    /// Ends the pair (its session has just been marked closed).
    fn close(&self);
}

/// How messages leave one session. One per session, inside its `Arc`, made
/// once per connection: the wire variant's size costs nothing per message,
/// and boxing it would add a pointer chase to every send.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Out {
    /// tcp or ipc: frames into the connection's outbox.
    Wire(Outbox),
    /// inproc: messages land in the peer's messenger from the sender's task.
    Inproc(Arc<dyn InprocLink>),
}

/// One live connection of a socket to one peer.
pub(crate) struct Session {
    /// The peer's routing id on a listener (generated for an anonymous
    /// peer); empty on a connection.
    pub(crate) peer: Bytes,
    /// The frame a listener puts before the delimiter of every message
    /// (its own identity, as NoisePage's ROUTER does); empty on a
    /// connection, whose messages are `["", payload]`.
    head: Bytes,
    /// Next msg_id towards the peer on a listener (each session counts
    /// from 0); connections count on the socket, across sessions.
    next_id: AtomicU64,
    /// Set when the session ends: sends to it fail from then on.
    closed: AtomicBool,
    /// Where anything sent to this peer goes: an outbox or an inproc pair.
    pub(crate) out: Out,
    /// What we sent the peer that it has not acknowledged: the session's
    /// own on a listener, the connection's (kept across its sessions) on a
    /// connection.
    pub(crate) unacked: Arc<Unacked>,
    /// Replies owed to requests from the peer that a server loop holds, and
    /// replies waiting for room in the window (see `replies.rs`).
    pub(crate) replies: Replies,
    /// When the peer last sent a message (or the session began), in ms
    /// since its socket's epoch: how long it has been idle, should a
    /// newcomer need its place. Commands (PING) do not count: they cost a
    /// squatter nothing.
    last_message: AtomicU64,
    /// Cancelled to make the session give way to a newcomer: set on a
    /// listener's tcp and ipc sessions, which its driver watches.
    give_way: Option<CancellationToken>,
    /// The peer's permanent CURVE public key, proven by the handshake: what
    /// a server loop sees as `Incoming::peer_key`. None on NULL.
    pub(crate) peer_key: Option<CurvePublicKey>,
    /// A tcp peer's source (its address; an IPv6 /64), which its
    /// listener's per-address limit counts: a newcomer from the same
    /// source over that limit asks this source's idlest session to give
    /// way. None on ipc, inproc and connections.
    pub(crate) source: Option<std::net::IpAddr>,
    /// Who is at the other end, as the OS tells it: for logs and events.
    pub(crate) remote: PeerAddr,
}

impl Session {
    pub(crate) fn new(peer: Bytes, head: Bytes, out: Out, unacked: Arc<Unacked>) -> Self {
        Session {
            peer,
            head,
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            out,
            unacked,
            replies: Replies::default(),
            last_message: AtomicU64::new(0),
            give_way: None,
            peer_key: None,
            source: None,
            remote: PeerAddr::Unknown,
        }
    }

    /// Who is at the other end (tcp address, ipc credentials, inproc).
    pub(crate) fn at(mut self, remote: PeerAddr) -> Self {
        self.remote = remote;
        self
    }

    /// The tcp source the session counts against (listener sessions).
    pub(crate) fn counted_under(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source;
        self
    }

    /// The peer's CURVE key, proven by the handshake (listener sessions).
    pub(crate) fn with_peer_key(mut self, key: Option<CurvePublicKey>) -> Self {
        self.peer_key = key;
        self
    }

    /// Whether the session has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes the session one that can give way (see
    /// [`SocketCtx::evict_idle`]), idle from `now_ms` on.
    pub(crate) fn evictable(mut self, token: CancellationToken, now_ms: u64) -> Self {
        self.give_way = Some(token);
        self.last_message = AtomicU64::new(now_ms);
        self
    }

    /// The peer sent a message at `now_ms` (the time is asked for only by a
    /// session that can give way: no other reads it).
    pub(crate) fn heard(&self, now_ms: impl FnOnce() -> u64) {
        if self.give_way.is_some() {
            self.last_message.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether nothing is in flight between us and the peer: nothing it
    /// has not acknowledged, nothing waiting to be written to it.
    fn is_quiet(&self) -> bool {
        let unwritten = match &self.out {
            Out::Wire(ob) => ob.buffered(),
            Out::Inproc(_) => 0,
        };
        unwritten == 0 && self.unacked.len() == 0
    }

    /// Its inproc link, if it is an inproc session.
    pub(crate) fn inproc(&self) -> Option<&dyn InprocLink> {
        match &self.out {
            Out::Inproc(link) => Some(&**link),
            Out::Wire(_) => None,
        }
    }

    /// Hands one payload to the peer without waiting.
    pub(crate) fn send(&self, payload: &Bytes) -> Result<(), Push> {
        self.hand_over(payload, None)
    }

    /// [`send`](Self::send) for the send path, which may run inside a
    /// batch (`batch.rs`): there a tcp or ipc write waits for the batch's
    /// end.
    pub(crate) fn send_batched(self: &Arc<Self>, payload: &Bytes) -> Result<(), Push> {
        // inproc has no writes to hold: no look at the thread's batch.
        let batch = matches!(self.out, Out::Wire(_)) && batch::active();
        self.hand_over(payload, batch.then_some(self))
    }

    /// Frames `payload` into the outbox (or lands it inproc); with
    /// `batch`, a write role taken is left to the batch.
    fn hand_over(&self, payload: &Bytes, batch: Option<&Arc<Session>>) -> Result<(), Push> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Push::Closed);
        }
        match &self.out {
            Out::Wire(ob) => {
                let head = &self.head;
                let len = head.len() + payload.len() + 20;
                let encode = |enc: &mut Encoder, buf: &mut BytesMut| {
                    if head.is_empty() {
                        enc.message(buf, &[b"", payload]);
                    } else {
                        enc.message(buf, &[head, b"", payload]);
                    }
                };
                match batch {
                    None => ob.push(len, encode),
                    Some(me) => {
                        if ob.push_corked(len, encode)? {
                            batch::hold(me);
                        }
                        Ok(())
                    }
                }
            }
            Out::Inproc(tx) => tx.send(self, payload),
        }
    }

    /// Writes what a batch held back (`batch.rs`).
    pub(crate) fn uncork(&self) {
        if let Out::Wire(ob) = &self.out {
            ob.uncork();
        }
    }

    /// Sends the ACK of `msg_id`; formatted straight into the outbox on
    /// tcp and ipc (no allocation of its own).
    pub(crate) fn ack(&self, msg_id: u64) -> Result<(), Push> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Push::Closed);
        }
        match &self.out {
            Out::Wire(ob) => {
                let head = &self.head;
                let len = wire::encoded_len(msg_id, wire::NOOP, wire::ACK, 0);
                ob.push_control(head.len() + len + 20, |enc, buf| {
                    let write =
                        |b: &mut BytesMut| wire::encode_into(b, msg_id, wire::NOOP, wire::ACK, b"");
                    if head.is_empty() {
                        enc.message_with(buf, &[b""], len, write);
                    } else {
                        enc.message_with(buf, &[head, b""], len, write);
                    }
                })
            }
            // In-process delivery needs no ACK.
            Out::Inproc(_) => Ok(()),
        }
    }

    /// Whether a payload could be handed over now (of any size: the
    /// outbox takes a push whole while it is below its limit).
    pub(crate) fn has_room(&self) -> bool {
        match &self.out {
            Out::Wire(ob) => ob.has_room(),
            Out::Inproc(_) => true,
        }
    }

    /// Waits until a payload could be handed over.
    pub(crate) async fn room(&self) {
        match &self.out {
            Out::Wire(ob) => ob.room().await,
            Out::Inproc(tx) => tx.room().await,
        }
    }

    /// Wakes the session's task for a turn (a reply is waiting for room).
    pub(crate) fn wake(&self) {
        if let Out::Wire(ob) = &self.out {
            ob.driver.notify_one();
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        match &self.out {
            Out::Wire(ob) => ob.close(),
            Out::Inproc(tx) => tx.close(),
        }
    }
}

/// A place for one reply in a session's window, given with a request that
/// asks for one: spent when the reply is made (sent or deferred), or given
/// back when every handle to the request's responder is dropped unused.
pub(crate) struct ReplyTicket {
    /// The session whose window holds the place.
    session: Arc<Session>,
    /// Set once the reply is made, so dropping the last handle gives
    /// back only an unused place.
    spent: AtomicBool,
}

impl ReplyTicket {
    /// Takes a place in `session`'s window for a reply.
    pub(crate) fn new(session: &Arc<Session>) -> Self {
        session.replies.owe();
        ReplyTicket {
            session: Arc::clone(session),
            spent: AtomicBool::new(false),
        }
    }

    /// The session it was given by: where a deferred reply waits.
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Whether it can still be spent.
    pub(crate) fn unspent(&self) -> bool {
        !self.spent.load(Ordering::Acquire)
    }

    /// The reply was made: its place is now the reply's own (in the window,
    /// or deferred). Once only.
    pub(crate) fn spend(&self) {
        if !self.spent.swap(true, Ordering::AcqRel) {
            self.session.replies.settle_one();
        }
    }
}

impl Drop for ReplyTicket {
    fn drop(&mut self) {
        self.spend();
    }
}

/// Where a message for a peer of a socket goes now.
pub(crate) enum Route {
    /// A live session (a listener's peer, or a connection's as its link
    /// held it).
    Session(Arc<Session>),
    /// A connection's live session as loaded from `SocketCtx::up`:
    /// borrowed through arc-swap's per-thread slots, so a send moves no
    /// reference count of it (one cache line every sender on the
    /// connection would write). Always `Some` when made.
    Linked(arc_swap::Guard<Option<Arc<Session>>>),
    /// A connection that is redialling: its backlog.
    Backlog,
}

impl Route {
    /// The same route, owning its session: for a send about to wait, since
    /// an arc-swap guard held for long takes one of its thread's few fast
    /// slots.
    pub(crate) fn owned(self) -> Route {
        match self {
            Route::Linked(up) => match arc_swap::Guard::into_inner(up) {
                Some(s) => Route::Session(s),
                None => Route::Backlog,
            },
            route => route,
        }
    }

    /// The session it leads to; `None`: a redialling connection's backlog.
    pub(crate) fn session(&self) -> Option<&Arc<Session>> {
        match self {
            Route::Session(s) => Some(s),
            Route::Linked(up) => up.as_ref(),
            Route::Backlog => None,
        }
    }
}

/// A connection's link: the live session, or what waits for the next one.
enum Link {
    Up(Arc<Session>),
    /// Redialling: payloads sent meanwhile, in order, bounded by
    /// `send_queue_capacity`; they go first on the next session.
    Down(VecDeque<Bytes>),
}

/// Bounds a listener's routing table: a peer adds an entry only by
/// completing a handshake (within the connection limit), and its entry
/// goes when its session ends; this is a backstop.
const MAX_ROUTES: usize = 1 << 20;

/// What every part of the messenger needs to know about one socket.
pub(crate) struct SocketCtx {
    /// Listener or connection (and its id), and the endpoint as bound
    /// (port 0 resolved) or connected; shared with every message received
    /// here.
    pub(crate) origin: Arc<Origin>,
    /// Our routing id: sent in READY, and as the first frame of everything
    /// a listener sends.
    pub(crate) identity: Bytes,
    /// A connection's run, sent in READY (`X-Incarnation`): random, fixed
    /// for its life, so a listener keeps its duplicate window across the
    /// connection's sessions (`runtime::windows`). None on a listener.
    pub(crate) incarnation: Option<[u8; 8]>,
    /// The server-loop callback's queue (listeners, and connections made
    /// with one).
    pub(crate) slc: Option<SlcQueue>,
    /// The messenger's counters, for the socket's tasks.
    pub(crate) stats: Arc<Stats>,
    /// tcp, ipc or inproc: the `transport` label of what it counts.
    pub(crate) transport: Transport,
    /// The messenger's configuration, for the socket's tasks.
    pub(crate) config: Arc<crate::Config>,
    /// Set once the socket is closed: sends fail instead of queueing.
    closed: AtomicBool,
    /// A listener's live sessions by routing id.
    routes: Mutex<HashMap<Bytes, Arc<Session>, foldhash::fast::RandomState>>,
    /// A connection's link.
    link: Mutex<Link>,
    /// A connection's live session, as senders read it (`route`): set
    /// and cleared with `link`, under its lock; read without it.
    up: ArcSwapOption<Session>,
    /// Wakes a connection's task to re-arm its timer: a message was
    /// recorded for resending where its session's task does not see it
    /// (while the link is down, or on inproc).
    pub(crate) timers: tokio::sync::Notify,
    /// Last heartbeat round trip (PING to PONG), in microseconds (0: none
    /// yet).
    rtt_micros: AtomicU64,
    /// Next msg_id on a connection (kept across its sessions).
    next_id: AtomicU64,
    /// Numbers anonymous peers' routing ids.
    anonymous: AtomicU64,
    /// A connection's unacknowledged messages, kept across its sessions
    /// (listener sessions have their own).
    unacked: Option<Arc<Unacked>>,
    /// Senders waiting for room in a redialling connection's backlog.
    room: Room,
    /// Warnings about bad peers, rate-limited per socket.
    warn: Mutex<RateLimit>,
    /// Where sessions' idle times are counted from (tokio's clock, so
    /// tests can pause it).
    epoch: std::time::Instant,
}

/// A new connection's incarnation: random, so no two runs share one. Should
/// the system's generator fail, the time stands in (a run that starts in
/// the same nanosecond as another of the same routing id is the only
/// clash).
fn incarnation() -> [u8; 8] {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    bytes
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SocketCtx {
    pub(crate) fn new(
        kind: SocketKind,
        endpoint: Endpoint,
        identity: Bytes,
        slc: Option<SlcQueue>,
        stats: Arc<Stats>,
        config: Arc<crate::Config>,
    ) -> Self {
        let dialled = matches!(kind, SocketKind::Connection(_));
        let unacked = dialled.then(|| Arc::new(Unacked::new(&config)));
        SocketCtx {
            transport: Transport::of(&endpoint),
            origin: Arc::new(Origin { endpoint, kind }),
            identity,
            incarnation: dialled.then(incarnation),
            slc,
            stats,
            closed: AtomicBool::new(false),
            routes: Mutex::new(HashMap::default()),
            link: Mutex::new(Link::Down(VecDeque::new())),
            up: ArcSwapOption::empty(),
            timers: tokio::sync::Notify::new(),
            rtt_micros: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            anonymous: AtomicU64::new(0),
            unacked,
            room: Room::default(),
            warn: Mutex::new(RateLimit::new()),
            epoch: crate::clock::now(),
            config,
        }
    }

    /// `at` in ms since the socket's epoch (what sessions' idle stamps use).
    pub(crate) fn millis(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn is_listener(&self) -> bool {
        matches!(self.origin.kind, SocketKind::Listener(_))
    }

    /// Whether a warning about a peer may be logged now: at most a burst
    /// per second per socket. What is held back is counted
    /// (`warnings_suppressed`) and said in one line when the next second's
    /// first warning comes.
    pub(crate) fn warn_allowed(&self) -> bool {
        let (allowed, held_back) = lock(&self.warn).allow();
        if held_back > 0 {
            tracing::warn!(endpoint = %self.origin.endpoint, count = held_back, "warnings about peers held back in the last second");
        }
        if !allowed {
            bump(&self.stats.local().warnings_suppressed);
        }
        allowed
    }

    // ---- Routes ----------------------------------------------------------

    /// Where a message to `peer` goes now.
    pub(crate) fn route(&self, peer: &Bytes) -> Result<Route, Error> {
        if self.is_closed() {
            return Err(Error::Disconnected);
        }
        match self.origin.kind {
            SocketKind::Listener(_) => lock(&self.routes)
                .get(peer)
                .map(|s| Route::Session(Arc::clone(s)))
                .ok_or_else(|| Error::Disconnected),
            SocketKind::Connection(_) => {
                let up = self.up.load();
                if up.as_ref().is_some_and(|s| !s.is_closed()) {
                    return Ok(Route::Linked(up));
                }
                Ok(match &*lock(&self.link) {
                    Link::Up(s) => Route::Session(Arc::clone(s)),
                    Link::Down(_) => Route::Backlog,
                })
            }
        }
    }

    /// The next msg_id towards the peer `route` leads to: gap-free per
    /// (socket, peer session).
    pub(crate) fn next_msg_id(&self, route: &Route) -> u64 {
        match route.session() {
            Some(s) => self.next_msg_id_for(s),
            None => self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The msg_id the next message on `route` will take, without taking
    /// it (what a window's span is checked against).
    pub(crate) fn peek_msg_id(&self, route: &Route) -> u64 {
        match (route.session(), self.origin.kind) {
            (Some(s), SocketKind::Listener(_)) => s.next_id.load(Ordering::Relaxed),
            _ => self.next_id.load(Ordering::Relaxed),
        }
    }

    /// The msg_id the next message to `session`'s peer will take.
    pub(crate) fn peek_msg_id_for(&self, session: &Session) -> u64 {
        match self.origin.kind {
            SocketKind::Listener(_) => session.next_id.load(Ordering::Relaxed),
            SocketKind::Connection(_) => self.next_id.load(Ordering::Relaxed),
        }
    }

    /// The next msg_id towards `session`'s peer.
    pub(crate) fn next_msg_id_for(&self, session: &Session) -> u64 {
        match self.origin.kind {
            SocketKind::Listener(_) => session.next_id.fetch_add(1, Ordering::Relaxed),
            SocketKind::Connection(_) => self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Hands a payload over without waiting: to the session, or to a
    /// redialling connection's backlog.
    pub(crate) fn transmit(&self, route: &Route, payload: &Bytes) -> Result<(), Push> {
        match route.session() {
            Some(s) => s.send_batched(payload),
            None => {
                let mut link = lock(&self.link);
                match &mut *link {
                    Link::Up(s) => {
                        let s = Arc::clone(s);
                        drop(link);
                        s.send_batched(payload)
                    }
                    Link::Down(_) if self.is_closed() => Err(Push::Closed),
                    // With resending on, the message is in the connection's
                    // unacknowledged set already: the next session takes
                    // all of those at once, in order (`link_up`).
                    Link::Down(_) if self.config.resend_interval.is_some() => Ok(()),
                    Link::Down(backlog) => {
                        if backlog.len() >= self.config.send_queue_capacity {
                            Err(Push::Full)
                        } else {
                            backlog.push_back(payload.clone());
                            Ok(())
                        }
                    }
                }
            }
        }
    }

    /// Waits for room for a payload on `route`.
    pub(crate) async fn route_room(&self, route: &Route) {
        match route.session() {
            Some(s) => s.room().await,
            None => {
                self.room
                    .wait(|| {
                        self.is_closed()
                            || match &*lock(&self.link) {
                                Link::Up(_) => true,
                                Link::Down(b) => b.len() < self.config.send_queue_capacity,
                            }
                    })
                    .await
            }
        }
    }

    /// A connection's own unacknowledged set (kept across its sessions),
    /// borrowed; `None` on a listener, whose sessions each have one.
    pub(crate) fn connection_unacked(&self) -> Option<&Unacked> {
        self.unacked.as_deref()
    }

    /// The unacknowledged set a message on `route` goes into.
    pub(crate) fn unacked_for(&self, route: &Route) -> Arc<Unacked> {
        match (route.session(), &self.unacked) {
            (_, Some(u)) => Arc::clone(u),
            (Some(s), None) => Arc::clone(&s.unacked),
            // A listener has no backlog; a fresh set is never used.
            (None, None) => Arc::new(Unacked::new(&self.config)),
        }
    }

    /// The unacknowledged set for a new session: a listener's peer gets its
    /// own, a connection's sessions share the connection's.
    pub(crate) fn session_unacked(&self) -> Arc<Unacked> {
        match &self.unacked {
            Some(u) => Arc::clone(u),
            None => Arc::new(Unacked::new(&self.config)),
        }
    }

    /// Every unacknowledged set of this socket: the connection's, or each
    /// live session's.
    pub(crate) fn all_unacked(&self) -> Vec<Arc<Unacked>> {
        match &self.unacked {
            Some(u) => vec![Arc::clone(u)],
            None => lock(&self.routes)
                .values()
                .map(|s| Arc::clone(&s.unacked))
                .collect(),
        }
    }

    /// How many live sessions a listener has now.
    pub(crate) fn session_count(&self) -> usize {
        lock(&self.routes).len()
    }

    /// A listener's new session for `identity` (empty: anonymous, given a
    /// generated id). Refused if the id belongs to a live session: the live
    /// one is left untouched (libzmq's ROUTER without ROUTER_HANDOVER).
    pub(crate) fn add_route(
        &self,
        identity: Bytes,
        make: impl FnOnce(Bytes) -> Session,
    ) -> Result<Arc<Session>, RouteError> {
        let mut routes = lock(&self.routes);
        if self.is_closed() {
            return Err(RouteError::Closed);
        }
        if routes.len() >= MAX_ROUTES {
            return Err(RouteError::Full);
        }
        let id = if identity.is_empty() {
            loop {
                // RFC 37 reserves ids starting with a zero octet for us.
                let n = self.anonymous.fetch_add(1, Ordering::Relaxed);
                let mut id = [0u8; 9];
                id[1..].copy_from_slice(&n.to_be_bytes());
                let id = Bytes::copy_from_slice(&id);
                if !routes.contains_key(&id) {
                    break id;
                }
            }
        } else if routes.contains_key(&identity) {
            return Err(RouteError::InUse);
        } else {
            identity
        };
        let session = Arc::new(make(id.clone()));
        routes.insert(id, Arc::clone(&session));
        Ok(session)
    }

    /// At a connection limit: asks the listener session idle longest (at
    /// least `idle_after` without a message, nothing in flight) to give
    /// way to a newcomer; only among the sessions from `source` when one
    /// is named (the per-address limit). Nobody is asked while an earlier
    /// one (from that source) is still leaving, so one newcomer costs at
    /// most one session. Returns whether a session was asked now or is
    /// still leaving.
    pub(crate) fn evict_idle(
        &self,
        idle_after: Duration,
        now: std::time::Instant,
        source: Option<std::net::IpAddr>,
    ) -> bool {
        let now_ms = self.millis(now);
        let idle_after = u64::try_from(idle_after.as_millis()).unwrap_or(u64::MAX);
        // Candidates under the routing table's lock; whether they are quiet
        // (other locks) after it.
        let mut idle: Vec<(u64, Arc<Session>)> = Vec::new();
        for session in lock(&self.routes).values() {
            let Some(token) = &session.give_way else {
                continue;
            };
            if source.is_some() && session.source != source {
                continue;
            }
            if token.is_cancelled() {
                return true;
            }
            let for_ms = now_ms.saturating_sub(session.last_message.load(Ordering::Relaxed));
            if for_ms >= idle_after {
                idle.push((for_ms, Arc::clone(session)));
            }
        }
        let quiet = idle.into_iter().filter(|(_, s)| s.is_quiet());
        let Some((idle, session)) = quiet.max_by_key(|(for_ms, _)| *for_ms) else {
            return false;
        };
        bump(&self.stats.local().idle_evictions);
        tracing::debug!(endpoint = %self.origin.endpoint, remote = %session.remote, peer = %session.peer.escape_ascii(), idle_ms = idle, "an idle peer gives way to a newcomer");
        if let Some(token) = &session.give_way {
            token.cancel();
        }
        true
    }

    /// Whether a live session holds `identity`.
    pub(crate) fn route_in_use(&self, identity: &[u8]) -> bool {
        !identity.is_empty() && lock(&self.routes).contains_key(identity)
    }

    /// A session ended: out of the routing table (if it is still the one
    /// there) or off the connection's link, then closed; what it had in
    /// flight is failed. The caller
    /// ([`Shared::end_session`](crate::runtime::shared::Shared::end_session))
    /// then tells the callbacks that waited on it.
    pub(crate) fn detach(&self, session: &Arc<Session>) {
        // Off the routing table or link first, then closed: a sender that
        // finds it closed routes again and never finds it again.
        match self.origin.kind {
            SocketKind::Listener(_) => {
                {
                    let mut routes = lock(&self.routes);
                    if routes
                        .get(&session.peer)
                        .is_some_and(|s| Arc::ptr_eq(s, session))
                    {
                        routes.remove(&session.peer);
                    }
                }
                session.close();
                // Its next session starts over: nothing is resent to it.
                session.unacked.close(&Error::Disconnected);
            }
            SocketKind::Connection(_) => {
                self.unlink(session);
                session.close();
            }
        }
    }

    /// Wakes senders waiting for room in a redialling connection's backlog
    /// (the session they waited on has ended).
    pub(crate) fn wake_room(&self) {
        self.room.wake();
    }

    /// Takes a connection's session off its link, if it is still the one
    /// there: from then on sends go to the backlog for the next session.
    /// A sender whose send found the session's way out closed (its peer
    /// went first: an inproc listener that stopped) does this itself, since
    /// re-routing to the same session would spin until the session's own
    /// task noticed.
    pub(crate) fn unlink(&self, session: &Arc<Session>) {
        let mut link = lock(&self.link);
        if matches!(&*link, Link::Up(s) if Arc::ptr_eq(s, session)) {
            *link = Link::Down(VecDeque::new());
            self.up.store(None);
        }
    }

    /// A connection's new session is up: everything unacknowledged goes
    /// first, at once and in order (with resending on: what was sent while
    /// the link was down is among it), or what queued in the backlog
    /// (without); then senders use the session directly.
    pub(crate) fn link_up(&self, session: &Arc<Session>) {
        let mut link = lock(&self.link);
        let mut pending = Vec::new();
        if let Link::Down(backlog) = &mut *link {
            pending.extend(backlog.drain(..));
        }
        if let (Some(unacked), Some(_)) = (&self.unacked, self.config.resend_interval) {
            pending.extend(unacked.resend_all(crate::clock::now()));
        }
        for payload in pending {
            // Full: a resend recovers it (or, without resending, the
            // backlog was bounded by the same capacity as the outbox).
            if session.send(&payload).is_err() {
                bump(&self.stats.local().send_failures);
            }
        }
        *link = Link::Up(Arc::clone(session));
        self.up.store(Some(Arc::clone(session)));
        drop(link);
        self.room.wake();
    }

    /// Whether a connection's link is up now.
    pub(crate) fn is_up(&self) -> bool {
        match self.origin.kind {
            SocketKind::Listener(_) => !self.is_closed(),
            SocketKind::Connection(_) => {
                !self.is_closed() && matches!(&*lock(&self.link), Link::Up(_))
            }
        }
    }

    // ---- State --------------------------------------------------------------

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

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        if let Link::Down(backlog) = &mut *lock(&self.link) {
            backlog.clear();
        }
        self.room.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends the replies waiting for room towards `session`'s peer while
    /// there is room; drops (and counts, and says) those past their
    /// deadline. Run by the session's task on each turn and by the resend
    /// timer (`SocketCtx::handle_timeout`).
    pub(crate) fn flush_replies(&self, session: &Session, now: std::time::Instant) {
        if !session.replies.any_waiting() {
            return;
        }
        let resend = self.config.resend_interval.is_some();
        let max = self.config.max_pending_messages;
        let flushed = session.replies.flush(now, |dst_cb, body, deadline| {
            if !session.has_room() {
                return false;
            }
            let len = wire::encoded_len(u64::MAX, wire::NOOP, dst_cb, body.len());
            let next = self.peek_msg_id_for(session);
            let Ok(place) = session.unacked.reserve(max, len, next) else {
                return false;
            };
            // The id is taken only now, in order with everything else sent
            // to the peer, so a reply that waited stays inside the peer's
            // duplicate window.
            let msg_id = self.next_msg_id_for(session);
            let payload = wire::encode(msg_id, wire::NOOP, dst_cb, body);
            if resend {
                // At the hard limit this reply only loses its resends.
                let _ = place.insert(msg_id, payload.clone(), now, deadline, None);
            }
            if session.send(&payload).is_ok() {
                self.stats
                    .local()
                    .traffic(self.transport)
                    .messages_sent
                    .add(1);
            }
            true
        });
        if flushed.expired > 0 {
            self.stats
                .local()
                .replies_dropped
                .add(flushed.expired as u64);
            if self.warn_allowed() {
                tracing::warn!(endpoint = %self.origin.endpoint, remote = %session.remote, peer = %session.peer.escape_ascii(), count = flushed.expired, "replies dropped: the peer did not ACK enough before their deadline to make room for them");
            }
        }
    }

    /// A message was recorded for resending on `route` and the set's
    /// timer is due earlier: wake whoever drives it (the session's task on
    /// tcp and ipc, the connection's otherwise) to re-arm.
    pub(crate) fn wake_timers(&self, route: &Route) {
        match route.session() {
            Some(s) if matches!(s.out, Out::Wire(_)) => s.wake(),
            _ => self.timers.notify_one(),
        }
    }

    /// When a session's task must next run for what was sent on it: a
    /// resend or deadline of its unacknowledged set, or a reply waiting
    /// for room meeting its deadline.
    pub(crate) fn poll_timeout(&self, session: &Session) -> Option<std::time::Instant> {
        [
            session.unacked.poll_timeout(),
            session.replies.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The session's timer fired at `now`: resends what is due (over
    /// `session`, or nowhere while a connection's link is down), fails what
    /// is past its deadline, and sends or drops the replies waiting for
    /// room.
    pub(crate) fn handle_timeout(
        &self,
        session: Option<&Session>,
        unacked: &Unacked,
        now: std::time::Instant,
    ) {
        let tick = unacked.handle_timeout(now, session.is_some());
        if let Some(session) = session {
            for payload in tick.resend {
                if session.send(&payload).is_ok() {
                    bump(&self.stats.local().resends);
                } else {
                    bump(&self.stats.local().send_failures);
                }
            }
            self.flush_replies(session, now);
        }
        let mut unwaited = 0u64;
        for (_, payload, waiter) in tick.expired {
            match waiter {
                Some(w) => {
                    let _ = w.send(Err(Error::Timeout));
                }
                // A request's callback learns of its own deadline.
                None if wire::parse(&payload).is_ok_and(|p| p.src_cb != wire::NOOP) => {}
                None => unwaited += 1,
            }
        }
        if unwaited > 0 {
            // Sent without a callback or an ACK waiter, never acknowledged:
            // the caller cannot learn it any other way, so count and say it.
            self.stats.local().unacked_expired.add(unwaited);
            if self.warn_allowed() {
                let remote = session.map_or(PeerAddr::Unknown, |s| s.remote);
                let peer = session.map(|s| s.peer.escape_ascii().to_string());
                tracing::warn!(endpoint = %self.origin.endpoint, %remote, peer = peer.as_deref().unwrap_or(""), count = unwaited, "messages expired without an ACK");
            }
        }
    }

    /// Checks one received message's frames (as they came off the wire)
    /// and parses its payload.
    pub(crate) fn parse_frames(&self, frames: &mut [Bytes]) -> Result<Payload, FrameError> {
        let payload = match self.origin.kind {
            SocketKind::Listener(_) => match wire::from_dealer(frames) {
                Ok(payload) => payload,
                Err(e) => return wire::noisepage_ack(frames).ok_or(e),
            },
            SocketKind::Connection(_) => wire::from_router(frames)?,
        };
        self.parse_payload(payload)
    }

    /// Checks a payload's size and parses it (its body shares `payload`).
    pub(crate) fn parse_payload(&self, payload: Bytes) -> Result<Payload, FrameError> {
        let max = self.config.max_message_size;
        if payload.len() > max {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        Ok(wire::parse(&payload)?)
    }

    /// A malformed message from `session`'s peer: counted, and logged
    /// (rate-limited) with who sent it.
    pub(crate) fn malformed(&self, session: &Session, error: &FrameError) {
        bump(&self.stats.local().malformed_dropped);
        if self.warn_allowed() {
            tracing::warn!(endpoint = %self.origin.endpoint, remote = %session.remote, peer = %session.peer.escape_ascii(), %error, "dropping malformed message");
        }
    }
}

/// The reason a listener gives (ZMTP ERROR) for refusing a routing id
/// that a live session holds.
pub(crate) const ROUTING_ID_IN_USE: &str = "routing id in use";

/// Why a listener did not take a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// A live session holds the routing id.
    InUse,
    /// The routing table is at its backstop.
    Full,
    /// The listener is closing.
    Closed,
}

/// Lets through at most a burst of warnings per second per socket (a
/// listener's warnings about all its peers together), so peers sending
/// garbage cannot flood the log; how many were held back is said once the
/// second is over.
pub(crate) struct RateLimit {
    /// When the current second began.
    window_start: Instant,
    /// Warnings let through in it.
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

    /// Whether one more warning may be logged now; when a new second
    /// begins, also how many the last one held back.
    pub(crate) fn allow(&mut self) -> (bool, u32) {
        let now = Instant::now();
        let mut held_back = 0;
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            held_back = self.in_window.saturating_sub(Self::BURST);
            self.window_start = now;
            self.in_window = 0;
        }
        self.in_window = self.in_window.saturating_add(1);
        (self.in_window <= Self::BURST, held_back)
    }
}

/// What a socket needs from the messenger that opens it.
pub(crate) struct Opening<'a> {
    /// The messenger opening it.
    pub(crate) shared: &'a Arc<crate::runtime::shared::Shared>,
    /// Where server loops are tracked, and what stops them.
    pub(crate) loops: &'a crate::runtime::server_loop::LoopControl,
    /// The messenger's shutdown token: the socket's `stop` is its child.
    pub(crate) shutdown: &'a CancellationToken,
    /// Our routing id on the socket.
    pub(crate) identity: Bytes,
}

/// An open listener or connection: what its senders share, and its tasks.
pub(crate) struct Open {
    /// What senders and sessions share.
    pub(crate) ctx: Arc<SocketCtx>,
    /// Its tasks, stopped and awaited on close.
    pub(crate) tasks: SocketTasks,
}

/// The tasks and files that make up one open socket. Closing it (or
/// dropping it) cancels `stop`; every task watches that token and ends by
/// itself, a session after flushing for at most the linger period, so
/// closing only has to wait for the tracker to say they are all gone.
pub(crate) struct SocketTasks {
    /// Every task of the socket: the accept loop or dialler (and through
    /// them the sessions), resending, heartbeats.
    tracker: TaskTracker,
    /// Tells the socket's tasks to stop: a child of the messenger's
    /// shutdown token, so dropping the messenger stops them all.
    pub(crate) stop: CancellationToken,
    /// An ipc socket file this process created, removed on close.
    pub(crate) created_file: Option<std::path::PathBuf>,
    /// An inproc name this socket registered, released on close.
    pub(crate) inproc: Option<Box<dyn Send + Sync>>,
}

/// How much longer than the linger period closing a socket waits for its
/// tasks: each bounds its own flush by the linger, so this only keeps a
/// bug from hanging shutdown.
const LINGER_SLACK: Duration = Duration::from_secs(1);

impl SocketTasks {
    pub(crate) fn new(stop: CancellationToken) -> Self {
        SocketTasks {
            tracker: TaskTracker::new(),
            stop,
            created_file: None,
            inproc: None,
        }
    }

    /// Runs a task that watches `stop` itself (and flushes before it ends).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Stops the socket without waiting (it is dropped, or the messenger
    /// is): its tasks end by themselves.
    pub(crate) fn close(&mut self) {
        self.stop.cancel();
        self.tracker.close();
        self.release_files();
    }

    /// Stops the socket, giving what was already handed to it up to
    /// `linger` to reach the peer (libzmq's ZMQ_LINGER), and returns once
    /// its tasks have ended.
    pub(crate) async fn close_gracefully(&mut self, linger: Duration) {
        self.stop.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(linger + LINGER_SLACK, self.tracker.wait()).await;
        if ended.is_err() {
            tracing::warn!(
                tasks = self.tracker.len(),
                "socket tasks outlived the linger period"
            );
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
    }
}

impl Drop for SocketTasks {
    fn drop(&mut self) {
        self.close();
    }
}
