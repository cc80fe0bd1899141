//! What every task of one messenger shares: its configuration, counters,
//! runtime, waiting callbacks, and whether it still takes work; and what
//! happens when a session ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::address::SocketKind;
use crate::config::Config;
use crate::error::Error;
use crate::events::{Emitter, Event, EventKind};
use crate::runtime::callbacks::Callbacks;
use crate::runtime::driver::{End, Who};
use crate::runtime::socket::{Session, SocketCtx};
use crate::stats::{Stats, bump};

/// State shared by the sessions, the senders and the server loops.
pub(crate) struct Shared {
    /// Checked once, when the messenger was made.
    pub(crate) config: Arc<Config>,
    /// Every task counts here.
    pub(crate) stats: Arc<Stats>,
    /// The messenger's runtime: where callbacks run, and whose clock an
    /// inproc sender on a plain thread reads.
    runtime: Handle,
    /// Callbacks waiting for replies, with their deadlines.
    pub(crate) callbacks: Arc<Callbacks>,
    /// Cancelled when shutdown begins (the messenger's `loops.stop`):
    /// server loops take nothing new.
    stopping: CancellationToken,
    /// Set with `stopping` ([`stop_accepting`](Self::stop_accepting)):
    /// what every send and landing reads. A token's `is_cancelled` takes
    /// its lock, one lock for every thread on every message.
    stopped: AtomicBool,
    /// Connection events for `Messenger::events`: bounded, never waited on.
    pub(crate) events: Emitter,
}

impl Shared {
    pub(crate) fn new(config: Arc<Config>, runtime: Handle, stopping: CancellationToken) -> Self {
        let stats = Arc::<Stats>::default();
        let callbacks = Arc::new(Callbacks::new(
            config.max_pending_callbacks,
            runtime.clone(),
            Arc::clone(&stats),
        ));
        Shared {
            config,
            stats,
            runtime,
            callbacks,
            stopping,
            stopped: AtomicBool::new(false),
            events: Emitter::new(),
        }
    }

    /// The time on the messenger's clock (its runtime's, paused in tests),
    /// even when the caller is a plain thread. A caller inside a task is in
    /// a runtime already: entering ours again cost 3% of an inproc round
    /// trip.
    ///
    /// A plain thread that sends as it ends (from a thread-local's
    /// destructor) may have lost tokio's thread-local already, and with it
    /// any way into the runtime: it reads the system's clock, which is the
    /// runtime's own but in tests that pause it. Entering would panic, and
    /// a panic in a destructor aborts the process.
    pub(crate) fn now(&self) -> Instant {
        if tokio::task::try_id().is_some() {
            return crate::clock::now();
        }
        match Handle::try_current() {
            Err(e) if e.is_thread_local_destroyed() => Instant::now(),
            _ => {
                let _rt = self.runtime.enter();
                crate::clock::now()
            }
        }
    }

    /// Runs `work` on the messenger's runtime, whoever calls.
    pub(crate) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(work);
    }

    /// [`spawn`](Self::spawn), for a caller that waits for it (from any
    /// executor: the handle is a plain future).
    pub(crate) fn spawn_joined(
        &self,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.runtime.spawn(work)
    }

    /// Whether server loops take new messages (not once shutdown began).
    pub(crate) fn is_accepting(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
    }

    /// Shutdown begins (or the messenger is dropped): server loops stop
    /// taking messages, and new sends fail.
    pub(crate) fn stop_accepting(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stopping.cancel();
    }

    /// A session ended: off its socket's routing table or link and closed
    /// ([`SocketCtx::detach`]), then everything waiting on it told. Called
    /// by the session's own task after the last message it read was
    /// processed, so a peer's last ACK or reply is never lost to its
    /// disconnect.
    /// Counted (`connections_closed` by reason), logged at debug with
    /// the remote end and routing id, and told to `events()`.
    pub(crate) fn end_session(&self, socket: &SocketCtx, session: &Arc<Session>, end: &End) {
        let reason = end.close_reason();
        self.stats.local().closed(reason);
        tracing::debug!(
            endpoint = %socket.origin.endpoint,
            remote = %session.remote,
            peer = %session.peer.escape_ascii(),
            reason = reason.name(),
            "session ends"
        );
        let kind = match end {
            End::Evicted => EventKind::Evicted,
            _ => EventKind::Disconnected,
        };
        self.events.emit(|| {
            let why = Some(end.describe());
            Event::new(kind, &socket.origin, session.remote, &session.peer, why)
        });
        socket.detach(session);
        match socket.origin.kind {
            SocketKind::Listener(_) => self.fail_peer(socket, &session.peer),
            SocketKind::Connection(_) => self.fail_socket(socket, Error::Disconnected),
        }
        socket.wake_room();
    }

    /// A session began (its handshake, and proof, are done; it is on its
    /// listener's routing table or its connection's link): counted
    /// (`connections_opened`), logged at debug, told to `events()`.
    pub(crate) fn begin_session(&self, socket: &SocketCtx, session: &Session) {
        bump(&self.stats.local().connections_opened);
        tracing::debug!(
            endpoint = %socket.origin.endpoint,
            remote = %session.remote,
            peer = %session.peer.escape_ascii(),
            "session begins"
        );
        self.events.emit(|| {
            Event::new(
                EventKind::Connected,
                &socket.origin,
                session.remote,
                &session.peer,
                None,
            )
        });
    }

    /// A peer's connection ended before a session began: logged and
    /// counted by `end.report`, told to `events()` as a refusal or a
    /// failed handshake (a shutdown is neither).
    pub(crate) fn never_began(&self, socket: &SocketCtx, who: Who<'_>, end: &End) {
        end.report(socket, who);
        if matches!(end, End::Stopped) {
            return;
        }
        let kind = if end.is_refusal() {
            EventKind::Refused
        } else {
            EventKind::HandshakeFailed
        };
        self.events.emit(|| {
            let peer = bytes::Bytes::copy_from_slice(who.peer);
            Event::new(
                kind,
                &socket.origin,
                *who.remote,
                &peer,
                Some(end.describe()),
            )
        });
    }

    /// Fails everyone waiting on a socket whose peer went away: callbacks
    /// of requests sent on it and senders waiting for its ACKs. Messages
    /// nobody waits on stay in its unacknowledged set, to be resent if the
    /// link comes back (until their deadline).
    pub(crate) fn fail_socket(&self, socket: &SocketCtx, err: Error) {
        let tag = socket.origin.kind.tag();
        let failed = self.callbacks.fail_matching(&err, |s, _| s == tag);
        for unacked in socket.all_unacked() {
            // A failed request is not resent; other messages nobody waits
            // on are, once a connection is back.
            for &msg_id in &failed {
                unacked.ack(msg_id);
            }
            unacked.fail_waiters(&err);
        }
    }

    /// Fails the requests sent to one peer of a listener that went away
    /// (its session's unacknowledged set is closed with it).
    pub(crate) fn fail_peer(&self, socket: &SocketCtx, peer: &[u8]) {
        let tag = socket.origin.kind.tag();
        self.callbacks
            .fail_matching(&Error::Disconnected, |s, p| s == tag && p == peer);
    }
}
