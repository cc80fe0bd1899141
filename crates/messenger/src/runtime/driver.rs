//! One tcp or ipc connection, start to end, in one task: the ZMTP handshake
//! (and the proof, when a secret is set), then traffic: read, decode and
//! run ProcessMessage on each message where it lands, with the ACKs and
//! replies that produces leaving in one write per read.
//!
//! The [`Engine`] decides everything about ZMTP; this file only moves
//! bytes between it and the socket and keeps its timers.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::time::Instant;
use tokio::io::Interest;
use tokio_util::sync::CancellationToken;

use crate::events::PeerAddr;
use crate::proto::dedup::DedupWindow;
use crate::runtime::process::{Settled, woke_a_task};
use crate::runtime::shared::Shared;
use crate::runtime::socket::{Out, Session, SocketCtx};
use crate::stats::{CloseReason, Stats, Transport};
use crate::transport::outbox::Outbox;
use crate::transport::stream::Stream;
use zmtp::{Engine, EngineConfig, Event, PeerInfo, ZmtpError};

/// Bytes read at a time at least (more when a large frame is being read).
const READ_CHUNK: usize = 16 * 1024;
/// A read goes into the buffer's spare room while that holds at least
/// this much (and what the engine waits for): small reads share one
/// buffer instead of taking [`READ_CHUNK`] each. The bodies read are views
/// of it, so a body kept (a replica's log batch) holds its share of a
/// buffer, not a buffer of its own (tests/kept_bodies.rs).
const READ_SPARE: usize = READ_CHUNK / 2;
/// At most this much is reserved for one read while the buffer holds less
/// (a frame's declared size is not reserved up front: memory follows the
/// bytes that actually arrive). A large frame's buffer grows by doubling
/// what has arrived, so reading it copies each byte a bounded number of
/// times.
const READ_MAX: usize = 256 * 1024;

/// Rounds a driver lets the tasks it woke run before it writes what they
/// sent meanwhile.
const MAX_GATHER: usize = 4;

/// Bytes a connection's task reads (and processes) before it gives its
/// worker back: a peer whose bytes never stop coming (a flood of PINGs or
/// forged ACKs) gets its turn, not the worker. tokio's readiness and
/// `try_read` spend no cooperative budget, so without this a fast peer
/// held a worker, and every task and timer queued behind it, for good.
/// 64 KiB is a few thousand small messages, well under a millisecond.
const YIELD_AFTER: usize = 64 * 1024;

/// Read-buffer bytes of a peer not charged to its listener's
/// [`PartialBudget`]: what ordinary traffic uses.
const UNCHARGED: usize = 64 * 1024;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed its side.
    PeerClosed,
    /// We stopped it (shutdown).
    Stopped,
    /// It gave way to a newcomer at the connection limit, being idle.
    Evicted,
    /// Reading or writing failed.
    Io(io::Error),
    /// The peer broke ZMTP, a limit, or was refused.
    Zmtp(ZmtpError),
    /// Its read buffer would have taken its listener past
    /// `Config::max_partial_bytes`.
    PartialBudget,
    /// The peer's first message was not a valid proof.
    Auth(crate::proto::auth::AuthError),
    /// The handshake (with the proof) did not finish in time.
    HandshakeTimeout,
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

impl From<ZmtpError> for End {
    fn from(e: ZmtpError) -> Self {
        match e {
            ZmtpError::HandshakeTimeout => End::HandshakeTimeout,
            e => End::Zmtp(e),
        }
    }
}

/// Whom a connection-level log line or event is about: the remote end as
/// the OS tells it, and the peer's routing id once known (empty before
/// its READY, and on connections).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    /// The remote end: a tcp address, or an ipc peer's credentials.
    pub(crate) remote: &'a PeerAddr,
    /// The peer's routing id (escaped when written), empty until known.
    pub(crate) peer: &'a [u8],
}

impl End {
    /// Counts and logs how a connection ended: every line names the
    /// endpoint, the remote end and the routing id (escaped: the peer's
    /// bytes never reach a log raw).
    pub(crate) fn report(&self, socket: &SocketCtx, who: Who<'_>) {
        let stats = &socket.stats;
        let bump = crate::stats::bump;
        let (endpoint, remote, peer) =
            (&socket.origin.endpoint, who.remote, who.peer.escape_ascii());
        let what = match self {
            // Evictions are counted when they are decided.
            End::PeerClosed | End::Stopped | End::Evicted => return,
            End::Io(e) => {
                tracing::debug!(%endpoint, %remote, %peer, error = %e, "connection ends");
                return;
            }
            End::HandshakeTimeout => {
                bump(&stats.local().handshake_timeouts);
                "no handshake in time"
            }
            End::Auth(_) => {
                bump(&stats.local().auth_failures);
                "authentication failed"
            }
            End::Zmtp(ZmtpError::HeartbeatTimeout) => {
                bump(&stats.local().ping_timeouts);
                "no traffic within the heartbeat timeout"
            }
            End::Zmtp(ZmtpError::SlowMessage { .. }) => {
                bump(&stats.local().slow_messages);
                "a message did not arrive within its deadline"
            }
            End::PartialBudget => {
                bump(&stats.local().partial_budget_cuts);
                "the listener's budget for messages still arriving is spent"
            }
            End::Zmtp(ZmtpError::Refused(_)) => "refused",
            End::Zmtp(ZmtpError::PeerError { .. }) => "the peer refused us",
            End::Zmtp(_) => {
                bump(&stats.local().guard_rejections);
                "protocol violation"
            }
        };
        if socket.warn_allowed() {
            match self {
                End::Zmtp(e) => {
                    tracing::warn!(%endpoint, %remote, %peer, error = %e, "dropping peer: {what}")
                }
                End::Auth(e) => {
                    tracing::warn!(%endpoint, %remote, %peer, error = %e, "dropping peer: {what}")
                }
                _ => tracing::warn!(%endpoint, %remote, %peer, "dropping peer: {what}"),
            }
        }
    }

    /// Why a session that ended this way ended: the `reason` label of
    /// `messenger_connections_closed_total`.
    pub(crate) fn close_reason(&self) -> CloseReason {
        match self {
            End::PeerClosed => CloseReason::PeerClosed,
            End::Stopped => CloseReason::Shutdown,
            End::Evicted => CloseReason::Evicted,
            End::Io(_) => CloseReason::IoError,
            End::Zmtp(ZmtpError::HeartbeatTimeout) => CloseReason::HeartbeatTimeout,
            End::Zmtp(_) | End::PartialBudget | End::Auth(_) | End::HandshakeTimeout => {
                CloseReason::ProtocolError
            }
        }
    }

    /// Whether a connection that ended this way before its session began
    /// was refused for cause (not merely failed).
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            End::Auth(_) | End::Zmtp(ZmtpError::Refused(_) | ZmtpError::PeerError { .. })
        )
    }

    /// The reason, for an event: printable ASCII (an ERROR reason from the
    /// peer is escaped where it is parsed).
    pub(crate) fn describe(&self) -> String {
        let text = match self {
            End::PeerClosed => "the peer closed the connection".into(),
            End::Stopped => "shut down".into(),
            End::Evicted => "idle, gave way to a newcomer at the connection limit".into(),
            End::Io(e) => format!("i/o error: {e}"),
            End::Zmtp(e) => e.to_string(),
            End::PartialBudget => {
                "the listener's budget for messages still arriving is spent".into()
            }
            End::Auth(e) => format!("authentication failed: {e}"),
            End::HandshakeTimeout => "no handshake in time".into(),
        };
        crate::events::printable(&text)
    }
}

/// What a listener's peers may hold together in read buffers for
/// messages still arriving (`Config::max_partial_bytes`): each peer's
/// buffer beyond its first [`UNCHARGED`] bytes is charged here.
#[derive(Debug)]
pub(crate) struct PartialBudget {
    /// Bytes charged now, across the listener's peers.
    used: AtomicUsize,
    /// `Config::max_partial_bytes`.
    max: usize,
}

impl PartialBudget {
    pub(crate) fn new(max: usize) -> Self {
        PartialBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }
}

/// A tcp or ipc connection and its ZMTP engine.
pub(crate) struct Conn {
    /// The socket, shared with the outbox that writes to it.
    stream: Arc<Stream>,
    /// The ZMTP state machine the driver feeds and obeys.
    engine: Engine,
    /// Bytes read and not yet decoded; decoded frames are split off it
    /// without copying.
    rbuf: BytesMut,
    /// The listener's budget this connection's read buffer is charged to
    /// (none on a connection of ours: it has one peer).
    budget: Option<Arc<PartialBudget>>,
    /// What is charged to `budget` now.
    charged: usize,
    /// Bytes read since the task last gave its worker back.
    unyielded: usize,
    /// Where the bytes read and written are counted (per transport).
    stats: Arc<Stats>,
    /// tcp or ipc: the `transport` label of those counts.
    transport: Transport,
    /// The engine's last heartbeat round trip seen: a different one is a
    /// new sample for `messenger_peer_rtt_seconds`.
    last_rtt: Option<Duration>,
    /// What one read's ACKs and replies settle in the peer's
    /// unacknowledged set, applied at the read's end under one lock; kept
    /// here so its buffers are reused.
    settled: Settled,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.used.fetch_sub(self.charged, Ordering::Relaxed);
        }
    }
}

impl Conn {
    pub(crate) fn new(
        stream: Stream,
        config: EngineConfig,
        budget: Option<Arc<PartialBudget>>,
        socket: &SocketCtx,
    ) -> Self {
        Conn {
            stats: Arc::clone(&socket.stats),
            transport: socket.transport,
            last_rtt: None,
            settled: Settled::default(),
            stream: Arc::new(stream),
            engine: Engine::new(config, crate::clock::now()),
            rbuf: BytesMut::new(),
            budget,
            charged: 0,
            unyielded: 0,
        }
    }

    /// Tightens or restores the limits on what the peer's frames may make
    /// us hold (see [`Engine::set_limits`]).
    pub(crate) fn set_limits(&mut self, limits: zmtp::Limits) {
        self.engine.set_limits(limits);
    }

    /// Charges the read buffer's size (beyond [`UNCHARGED`]) to the
    /// listener's budget; `Err` if that would take it past its limit.
    fn charge(&mut self) -> Result<(), End> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let want = self.rbuf.capacity().saturating_sub(UNCHARGED);
        if want > self.charged {
            let more = want - self.charged;
            let before = budget.used.fetch_add(more, Ordering::Relaxed);
            if before + more > budget.max {
                budget.used.fetch_sub(more, Ordering::Relaxed);
                return Err(End::PartialBudget);
            }
        } else {
            budget
                .used
                .fetch_sub(self.charged - want, Ordering::Relaxed);
        }
        self.charged = want;
        Ok(())
    }

    /// Gives the worker back once [`YIELD_AFTER`] bytes have been read
    /// since the last time.
    async fn take_turns(&mut self) {
        if self.unyielded >= YIELD_AFTER {
            self.unyielded = 0;
            tokio::task::yield_now().await;
        }
    }

    /// After a read's messages were taken: a buffer left empty but large
    /// (a big message went through) is let go, so an idle peer holds
    /// nothing of it.
    fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_MAX {
            self.rbuf = BytesMut::new();
            let _ = self.charge();
        }
    }

    /// Writes what the engine queued (handshake only: the task owns the
    /// stream until a session's outbox takes over).
    async fn write_transmit(&mut self) -> io::Result<()> {
        while !self.engine.transmit().is_empty() {
            self.stream.ready(Interest::WRITABLE).await?;
            match self.stream.try_write(self.engine.transmit()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.engine.transmit().split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads once, waiting for the socket. `Ok(false)`: the peer closed.
    async fn read_some(&mut self) -> Result<bool, End> {
        self.take_turns().await;
        loop {
            self.stream.ready(Interest::READABLE).await?;
            match self.try_read() {
                Ok(n) => return Ok(n > 0),
                Err(End::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what the socket has, into a buffer grown (and charged) for
    /// it. `Ok(0)`: the peer closed.
    fn try_read(&mut self) -> Result<usize, End> {
        let wants = self.engine.wants(&self.rbuf);
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if spare < wants.max(READ_SPARE) {
            let most = READ_MAX.max(self.rbuf.len());
            self.rbuf.reserve(wants.clamp(READ_CHUNK, most));
        }
        self.charge()?;
        let n = self.stream.try_read_buf(&mut self.rbuf)?;
        if n > 0 {
            self.stats
                .local()
                .traffic(self.transport)
                .bytes_received
                .add(n as u64);
            self.unyielded += n;
            self.engine.received(crate::clock::now());
        }
        Ok(n)
    }

    /// Greeting and READY both ways. `decide` sees the peer's metadata and
    /// may refuse it (an ERROR goes out, then the connection closes).
    pub(crate) async fn handshake(
        &mut self,
        mut decide: impl FnMut(&PeerInfo) -> Result<(), &'static str>,
    ) -> Result<PeerInfo, End> {
        let deadline = self
            .engine
            .poll_timeout()
            .unwrap_or_else(|| crate::clock::now() + Duration::from_secs(5));
        let run = async {
            loop {
                let decoded = self.engine.decode(&mut self.rbuf, crate::clock::now());
                // What decoding queued (our greeting, READY, an ERROR) goes
                // out before we wait for the peer again.
                let written = self.write_transmit().await;
                match decoded {
                    Ok(Some(Event::PeerReady(info))) => {
                        written?;
                        match decide(&info) {
                            Ok(()) => {
                                self.engine.accept(crate::clock::now());
                                self.write_transmit().await?;
                                return Ok(info);
                            }
                            Err(reason) => {
                                let e = self.engine.refuse(reason);
                                self.write_transmit().await?;
                                return Err(End::Zmtp(e));
                            }
                        }
                    }
                    Ok(Some(Event::Message)) => written?,
                    Ok(None) => {
                        written?;
                        if !self.read_some().await? {
                            return Err(End::PeerClosed);
                        }
                    }
                    Err(e) => return Err(End::from(e)),
                }
            }
        };
        match tokio::time::timeout_at(crate::clock::tokio_at(deadline), run).await {
            Ok(r) => r,
            Err(_) => Err(End::HandshakeTimeout),
        }
    }

    /// The next message after the handshake (a listener reads the proof
    /// this way, before any session exists), until `deadline`.
    pub(crate) async fn first_message(&mut self, deadline: Instant) -> Result<Vec<Bytes>, End> {
        let run = async {
            loop {
                match self.engine.decode(&mut self.rbuf, crate::clock::now())? {
                    Some(Event::Message) => return Ok(std::mem::take(self.engine.frames())),
                    Some(Event::PeerReady(_)) => {}
                    None => {
                        if !self.read_some().await? {
                            return Err(End::PeerClosed);
                        }
                    }
                }
            }
        };
        match tokio::time::timeout_at(crate::clock::tokio_at(deadline), run).await {
            Ok(r) => r,
            Err(_) => Err(End::HandshakeTimeout),
        }
    }

    /// Builds the session's outbox once the handshake is done: the
    /// engine's encoder (which, under CURVE, boxes every frame) moves into
    /// it, so any task can send. There is none before the handshake ends;
    /// never a clear-text stand-in.
    pub(crate) fn outbox(&mut self, limit: usize) -> Result<Outbox, End> {
        let encoder = self
            .engine
            .take_encoder()
            .ok_or(End::Zmtp(zmtp::ZmtpError::Closed))?;
        let written = (Arc::clone(&self.stats), self.transport);
        Ok(Outbox::new(
            Arc::clone(&self.stream),
            encoder,
            limit,
            written,
        ))
    }

    /// Traffic until the peer leaves, a rule is broken, or `stop` fires:
    /// read, decode, ProcessMessage in place; write what senders handed
    /// over when the socket was full; keep the heartbeat timers.
    /// `first` is a message already read (a listener's proof).
    pub(crate) async fn traffic(
        &mut self,
        socket: &Arc<SocketCtx>,
        session: &Arc<Session>,
        shared: &Shared,
        stop: &CancellationToken,
        first: Option<crate::proto::wire::Payload>,
        dedup: &mut DedupWindow,
    ) -> End {
        let Out::Wire(outbox) = &session.out else {
            return End::Stopped;
        };
        let mut first = first;
        // Messages pipelined behind the handshake are already here.
        if let Err(end) = self
            .read_batch(socket, session, shared, outbox, dedup, first.take())
            .await
        {
            return end;
        }
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed = None;
        loop {
            // One timer for everything the session's task keeps: the
            // engine's (handshake, heartbeats, a slow message) and what was
            // sent on the session (resends, deadlines, replies waiting for
            // room). It sleeps while none of them needs it.
            let next = [self.engine.poll_timeout(), socket.poll_timeout(session)]
                .into_iter()
                .flatten()
                .min();
            if next != armed {
                if let Some(at) = next {
                    timer.as_mut().reset(crate::clock::tokio_at(at));
                }
                armed = next;
            }
            // A listener reads nothing more from a peer that is not reading
            // what it is sent: everything it sends would be answered with
            // ACKs and replies queued in front of it. Connections always
            // read (their outbox drops ACKs when full), so two messengers
            // never wait on each other.
            let read = !(socket.is_listener() && outbox.over_limit());
            let write = outbox.driver_writes();
            let interest = match (read, write) {
                (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
                (true, false) => Some(Interest::READABLE),
                (false, true) => Some(Interest::WRITABLE),
                (false, false) => None,
            };
            let ready = async {
                match interest {
                    Some(i) => self.stream.ready(i).await,
                    None => std::future::pending().await,
                }
            };
            // The timer before the socket: a peer whose bytes never stop
            // must not keep its deadlines (a slow message's, a PING's TTL)
            // from firing.
            let step = tokio::select! {
                biased;
                _ = stop.cancelled() => Step::End(End::Stopped),
                () = &mut timer, if armed.is_some() => Step::Timer,
                r = ready => match r {
                    Ok(r) => Step::Ready(r.is_readable(), r.is_writable() || r.is_write_closed()),
                    Err(e) => Step::End(End::Io(e)),
                },
                _ = outbox.driver.notified() => Step::Ready(false, false),
            };
            match step {
                Step::End(end) => return end,
                Step::Timer => {
                    armed = None;
                    let now = crate::clock::now();
                    // Bytes that arrived before the timer fired, but that
                    // this task has not read yet (it was busy, or the
                    // machine is), are a sign of life all the same: a
                    // PONG among them must not lose the race. (They do not
                    // move a slow message's deadline.)
                    if self.stream.has_input() {
                        self.engine.received(now);
                    }
                    if let Err(e) = self.engine.handle_timeout(now) {
                        return End::from(e);
                    }
                    send_commands(&mut self.engine, outbox);
                    socket.handle_timeout(Some(session), &session.unacked, now);
                }
                Step::Ready(readable, writable) => {
                    if writable {
                        outbox.resume();
                    }
                    if readable {
                        match self.try_read() {
                            Ok(0) => return End::PeerClosed,
                            Ok(_) => {
                                if let Err(end) = self
                                    .read_batch(socket, session, shared, outbox, dedup, None)
                                    .await
                                {
                                    return end;
                                }
                                self.shrink();
                                if let Some(rtt) = self.engine.rtt()
                                    && self.last_rtt != Some(rtt)
                                {
                                    // A new heartbeat round trip.
                                    self.last_rtt = Some(rtt);
                                    socket.set_rtt(rtt);
                                    crate::telemetry::peer_rtt(self.transport, rtt);
                                }
                                self.take_turns().await;
                            }
                            Err(End::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(end) => return end,
                        }
                    }
                }
            }
            if outbox.is_broken() {
                return End::Io(io::ErrorKind::BrokenPipe.into());
            }
            // ACKs read, or room in the buffer: replies waiting for room
            // may go now.
            if session.replies.any_waiting() {
                socket.flush_replies(session, crate::clock::now());
            }
        }
    }

    /// Processes what the read buffer holds (after `first`, a message
    /// already read), holding the write role meanwhile so that what it
    /// produces leaves in one write. When it completed a request or fed a
    /// server loop, it first lets the tasks it woke run once: their next
    /// requests and replies join the same write, as a libzmq I/O thread
    /// batches what its application threads queue.
    async fn read_batch(
        &mut self,
        socket: &Arc<SocketCtx>,
        session: &Arc<Session>,
        shared: &Shared,
        outbox: &Outbox,
        dedup: &mut DedupWindow,
        first: Option<crate::proto::wire::Payload>,
    ) -> Result<(), End> {
        let held = outbox.hold();
        let now = crate::clock::now();
        let mut settled = std::mem::take(&mut self.settled);
        let mut woke = first.is_some_and(|m| {
            woke_a_task(shared.process(socket, session, dedup, &mut settled, m, now))
        });
        let result = self.process_buffered(socket, session, shared, dedup, &mut settled, now);
        if let Ok(w) = result {
            woke |= w;
        }
        // Before the woken tasks run: the window they send into is open.
        settled.apply(&shared.stats, socket.transport, &session.unacked, now);
        self.settled = settled;
        send_commands(&mut self.engine, outbox);
        if held {
            if woke {
                // Until they stop adding (or a few rounds: the batch's own
                // ACKs must not wait long), so tasks that ran on another
                // worker join the write too.
                for _ in 0..MAX_GATHER {
                    let before = outbox.buffered();
                    tokio::task::yield_now().await;
                    if outbox.buffered() == before {
                        break;
                    }
                }
            }
            outbox.release();
        }
        result.map(|_| ())
    }

    /// Decodes and processes every complete message in the read buffer.
    /// Returns whether a task was woken (a request completed, a server
    /// loop fed).
    fn process_buffered(
        &mut self,
        socket: &Arc<SocketCtx>,
        session: &Arc<Session>,
        shared: &Shared,
        dedup: &mut DedupWindow,
        settled: &mut Settled,
        now: Instant,
    ) -> Result<bool, End> {
        let mut woke = false;
        let mut heard = false;
        loop {
            match self.engine.decode(&mut self.rbuf, now)? {
                Some(Event::Message) => {
                    if !heard {
                        session.heard(|| socket.millis(now));
                        heard = true;
                    }
                    match socket.parse_frames(self.engine.frames()) {
                        Ok(payload) => {
                            let outcome =
                                shared.process(socket, session, dedup, settled, payload, now);
                            woke |= woke_a_task(outcome);
                        }
                        Err(e) => socket.malformed(session, &e),
                    }
                }
                Some(Event::PeerReady(_)) => {}
                None => return Ok(woke),
            }
        }
    }

    /// Closes the connection: what the outbox holds is written for up to
    /// `linger`, then our side is shut and the peer's close awaited (so
    /// our close does not reset data still on its way to the peer).
    pub(crate) async fn close(self, outbox: Option<&Outbox>, linger: Duration) {
        let deadline = crate::clock::now() + linger;
        if let Some(outbox) = outbox {
            outbox.close();
            let flush = async {
                loop {
                    outbox.flush_by_driver();
                    if outbox.flushed() {
                        return;
                    }
                    if outbox.driver_writes() {
                        if self.stream.ready(Interest::WRITABLE).await.is_err() {
                            return;
                        }
                    } else {
                        // A sender is writing: wait for it to finish.
                        outbox.progress().await;
                    }
                }
            };
            let _ = tokio::time::timeout_at(crate::clock::tokio_at(deadline), flush).await;
        }
        self.stream.shutdown_write();
        let mut sink = BytesMut::new();
        let drain = async {
            loop {
                if self.stream.ready(Interest::READABLE).await.is_err() {
                    return;
                }
                sink.clear();
                sink.reserve(READ_CHUNK);
                match self.stream.try_read_buf(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout_at(crate::clock::tokio_at(deadline), drain).await;
    }
}

enum Step {
    End(End),
    Timer,
    Ready(bool, bool),
}

/// Frames the commands the engine wants sent (PONG, PING). A full outbox
/// drops them: a peer that does not read gets no PONG.
fn send_commands(engine: &mut Engine, outbox: &Outbox) {
    while let Some(cmd) = engine.poll_command() {
        let _ = outbox.push_control(cmd.len() + 9, |enc, buf| enc.command(buf, &cmd));
    }
}
