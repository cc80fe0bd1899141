//! Server-loop callbacks (SLCs): the persistent handler of a listener.
//!
//! Each listener runs its SLC on a task of its own, fed by a bounded queue,
//! so a slow handler delays only its own listener's messages (and, once its
//! queue is full, makes the ProcessMessage loop refuse new ones unACKed so
//! peers resend later) and never the loop or other listeners.
//!
//! Two kinds: a sequential loop ([`Messenger::listen_for_connection`])
//! handles one message at a time, in arrival order (so per-peer order is
//! kept); a concurrent one
//! ([`Messenger::listen_for_connection_concurrent`]) runs each
//! message as its own task, concurrently up to the messenger's
//! [`Config::max_concurrent_handlers`](crate::Config::max_concurrent_handlers),
//! a limit counted only while a handler runs.
//!
//! [`Messenger::listen_for_connection`]: crate::Messenger::listen_for_connection
//! [`Messenger::listen_for_connection_concurrent`]: crate::Messenger::listen_for_connection_concurrent

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::address::Destination;
use crate::error::Error;
use crate::runtime::send::{Mode, Notify, Outgoing};
use crate::runtime::shared::Shared;
use crate::runtime::socket::{Delivered, ReplyTicket, SocketCtx};
use crate::telemetry;
use crate::types::Incoming;

/// A sequential server loop: one message at a time, in arrival order, on
/// the loop's own task.
pub(crate) type Sequential = dyn Fn(Incoming, Responder) + Send + Sync;

/// A concurrent server loop: each message's work is a future of its own.
pub(crate) type Concurrent =
    dyn Fn(Incoming, Responder) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

tokio::task_local! {
    /// The messenger (its [`Shared`], by address) whose server loop this
    /// task runs: a loop's own task (where a sequential handler is
    /// called) and each concurrent handler's. Set once per task, not per
    /// call: a marker set and reset around each sequential call measured
    /// 6 % fewer round trips through an inproc server loop at 1000 in
    /// flight, with the same instruction count.
    static CALL_OF: usize;
}

/// Whether the caller runs inside a server-loop call of `shared`'s
/// messenger: its loop waits for the call to return, so the call must not
/// wait for the loop (`Messenger::shutdown` from a handler).
pub(crate) fn in_call_of(shared: &Arc<Shared>) -> bool {
    CALL_OF
        .try_with(|&of| of == Arc::as_ptr(shared) as usize)
        .unwrap_or(false)
}

/// Which kind of handler a listener runs.
pub(crate) enum Handler {
    Sequential(Arc<Sequential>),
    /// With the messenger-wide limit on handlers running at once.
    Concurrent(Arc<Concurrent>, Arc<Semaphore>),
}

/// Answers the sender of one message, from inside an SLC or later: it may
/// be moved to another task and used when the answer is ready.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use messenger::{Incoming, Messenger, NOOP, Responder};
///
/// let server = Messenger::new()?;
/// let train = |job: Incoming, r: Responder| {
///     // Answer later, from a task of its own, without holding the loop.
///     tokio::spawn(async move {
///         let _ = r.reply([&b"trained on "[..], &job.body[..]].concat()).await;
///     });
/// };
/// let at = "inproc://responder-doc".parse()?;
/// server.listen_for_connection(&at, train).await?;
/// let db = Messenger::new()?;
/// let conn = db.make_connection(&at).await?;
/// let done = db.request(conn, NOOP, b"batch 1").await?;
/// assert_eq!(&done.body[..], b"trained on batch 1");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Responder {
    /// The messenger the reply leaves from.
    shared: Arc<Shared>,
    /// The socket the request came in on.
    socket: Arc<SocketCtx>,
    /// The requester's routing id (empty on a connection).
    peer: Bytes,
    /// The requester's callback: the reply's dst_cb.
    src_cb: u64,
    /// The place in the peer's window held for the reply (a request over
    /// tcp or ipc that asks for one): where `try_reply` keeps an answer
    /// that finds no room now.
    ticket: Option<Arc<ReplyTicket>>,
}

impl Responder {
    /// Replies to the message's `src_cb` without waiting, so it never
    /// blocks the calling SLC. The first reply to a request never fails
    /// for want of room: the request was admitted with a place for it in
    /// the window towards the peer, and a reply that finds the window or
    /// the buffer full waits there, in order, until the peer's ACKs make
    /// room (it is dropped, counted and logged only if its deadline passes
    /// first: a peer that never ACKs). A further reply to the same request
    /// gets [`Error::Full`] where there is no room.
    pub fn try_reply(&self, body: impl AsRef<[u8]>) -> Result<(), Error> {
        let body = body.as_ref();
        let send = self.send(body, Mode::Try);
        // Mode::Try never waits: the first poll completes it.
        let sent = futures::FutureExt::now_or_never(send).unwrap_or_else(|| Err(Error::Full));
        match (sent, &self.ticket) {
            (Err(Error::Full), Some(ticket)) if ticket.unspent() => {
                self.shared.defer_reply(ticket, self.src_cb, body)
            }
            (sent, ticket) => {
                if let (Ok(_), Some(t)) = (&sent, ticket) {
                    t.spend();
                }
                sent.map(|_| ())
            }
        }
    }

    /// Replies to the message's `src_cb`, waiting for room within
    /// `request_timeout` ([`Error::Timeout`] after it).
    pub async fn reply(&self, body: impl AsRef<[u8]>) -> Result<(), Error> {
        let sent = self.send(body.as_ref(), Mode::Wait).await;
        if let (Ok(_), Some(t)) = (&sent, &self.ticket) {
            t.spend();
        }
        sent.map(|_| ())
    }

    /// The one send path of both replies.
    async fn send(&self, body: &[u8], mode: Mode) -> Result<u64, Error> {
        let out = Outgoing {
            socket: &self.socket,
            peer: &self.peer,
            dst_cb: self.src_cb,
            body,
            notify: Notify::Nothing,
            timeout: self.shared.config.request_timeout,
            mode,
        };
        Ok(self.shared.send(out).await?.msg_id)
    }

    /// The sender's routing id.
    pub fn peer(&self) -> &Bytes {
        &self.peer
    }

    /// The callback id the sender asked replies to go to.
    pub fn src_cb(&self) -> u64 {
        self.src_cb
    }

    /// Where to send further messages to this peer with
    /// [`Messenger::send_message`](crate::Messenger::send_message).
    pub fn destination(&self) -> Destination {
        Destination::of(self.socket.origin.kind, &self.peer)
    }
}

fn responder_for(
    shared: Arc<Shared>,
    socket: Arc<SocketCtx>,
    msg: &Incoming,
    ticket: Option<ReplyTicket>,
) -> Responder {
    Responder {
        shared,
        socket,
        peer: msg.peer.clone(),
        src_cb: msg.src_cb,
        ticket: ticket.map(Arc::new),
    }
}

/// What tells a server loop to finish, and what waits for it.
pub(crate) struct LoopControl {
    /// Shutdown began: close the queue and drain it to its end.
    pub(crate) stop: CancellationToken,
    /// The grace period is over: drop what still runs and return.
    pub(crate) abandon: CancellationToken,
    /// Where the loop's task is tracked; shutdown waits on it.
    pub(crate) tracker: TaskTracker,
}

/// Runs a listener's handler on every message its queue delivers, until
/// `stop`; then closes the queue, finishes everything it owns (and, for a
/// concurrent handler, what is running) and returns, or returns at once
/// on `abandon` (the shutdown grace period is over). A panicking handler
/// is logged and the loop goes on.
pub(crate) fn spawn(
    handler: Handler,
    queue: mpsc::Receiver<Delivered>,
    shared: Weak<Shared>,
    socket: Weak<SocketCtx>,
    control: &LoopControl,
) {
    let span = tracing::Span::current();
    let (stop, abandon) = (control.stop.clone(), control.abandon.clone());
    let of = Weak::as_ptr(&shared) as usize;
    let work = CALL_OF.scope(of, serve(handler, queue, shared, socket, stop, of));
    control.tracker.spawn(tracing::Instrument::instrument(
        async move {
            if abandon.run_until_cancelled(work).await.is_none() {
                tracing::warn!("server-loop work outlived the shutdown grace period; dropped");
            }
        },
        span,
    ));
}

/// The loop [`spawn`] runs; `of` is its messenger's mark ([`CALL_OF`]),
/// which each concurrent handler's task carries too.
async fn serve(
    handler: Handler,
    mut queue: mpsc::Receiver<Delivered>,
    shared: Weak<Shared>,
    socket: Weak<SocketCtx>,
    stop: CancellationToken,
    of: usize,
) {
    let mut running = JoinSet::new();
    let mut closed = false;
    loop {
        let msg = tokio::select! {
            biased;
            msg = queue.recv() => msg,
            // Shutdown: nothing new is taken (a message offered now
            // is refused unACKed), and what the queue already owns
            // (ACKed, or about to be) is drained to its end.
            _ = stop.cancelled(), if !closed => {
                queue.close();
                closed = true;
                continue;
            }
        };
        let Some(Delivered {
            message: msg,
            ticket,
        }) = msg
        else {
            break;
        };
        let (Some(shared), Some(socket)) = (shared.upgrade(), socket.upgrade()) else {
            break;
        };
        let responder = responder_for(shared, Arc::clone(&socket), &msg, ticket);
        // The call's span: the listener, the sender's routing id (escaped)
        // and the message's ids, never its body. `Span::none()` while debug
        // is off everywhere: a disabled span still records its fields (for
        // `log`) on every call.
        let span = if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!(
                "server_loop_call",
                endpoint = %socket.origin.endpoint,
                peer = %msg.peer.escape_ascii(),
                msg_id = msg.msg_id,
                src_cb = msg.src_cb,
            )
        } else {
            tracing::Span::none()
        };
        let transport = socket.transport;
        let since = telemetry::start();
        match &handler {
            Handler::Sequential(slc) => {
                let _in = span.enter();
                if catch_unwind(AssertUnwindSafe(|| slc(msg, responder))).is_err() {
                    tracing::error!(endpoint = %socket.origin.endpoint, "server-loop callback panicked; continuing");
                }
                telemetry::server_loop_done(transport, since);
            }
            Handler::Concurrent(slc, limit) => {
                // Waits here (and the queue backs up) while the limit is
                // reached; the permit is held only while the handler runs.
                let Ok(permit) = Arc::clone(limit).acquire_owned().await else {
                    break;
                };
                let work = slc(msg, responder);
                let work: Pin<Box<dyn Future<Output = ()> + Send>> = if span.is_disabled() {
                    work
                } else {
                    Box::pin(tracing::Instrument::instrument(work, span))
                };
                running.spawn(CALL_OF.scope(of, async move {
                    work.await;
                    telemetry::server_loop_done(transport, since);
                    drop(permit);
                }));
                // Reap finished handlers so the set stays small.
                while let Some(done) = running.try_join_next() {
                    if done.is_err() {
                        tracing::error!("server-loop handler panicked; continuing");
                    }
                }
            }
        }
    }
    while running.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::address::SocketKind;
    use crate::{Config, ListenerId};

    /// A message whose place in the queue was taken before shutdown began
    /// (a session that will ACK it once it is in) is still handled: the
    /// loop closes its queue and drains it to the end instead of stopping
    /// at its first empty look. And nothing new is taken after the close
    /// (the session refuses it unACKed).
    #[tokio::test]
    async fn a_message_handed_over_as_shutdown_begins_is_still_handled() {
        let config = Arc::new(Config::default());
        let runtime = tokio::runtime::Handle::current();
        let shared = Arc::new(Shared::new(
            Arc::clone(&config),
            runtime,
            CancellationToken::new(),
        ));
        let endpoint = "inproc://slc-test".parse().expect("endpoint");
        let kind = SocketKind::Listener(ListenerId(1));
        let stats = Arc::clone(&shared.stats);
        let socket = Arc::new(SocketCtx::new(
            kind,
            endpoint,
            Bytes::new(),
            None,
            stats,
            config,
        ));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let slc = move |m: Incoming, _: Responder| s.lock().expect("seen").push(m.body);
        let (tx, rx) = mpsc::channel(4);
        let control = LoopControl {
            stop: CancellationToken::new(),
            abandon: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        spawn(
            Handler::Sequential(Arc::new(slc)),
            rx,
            Arc::downgrade(&shared),
            Arc::downgrade(&socket),
            &control,
        );
        control.tracker.close();
        let permit = tx.try_reserve().expect("room");
        control.stop.cancel();
        // The loop closes its queue: from then on nothing new is taken.
        let mut refused = false;
        for _ in 0..1000 {
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_reserve() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "the queue was never closed");
        permit.send(Delivered {
            message: Incoming {
                msg_id: 0,
                src_cb: 0,
                dst_cb: 0,
                body: Bytes::from_static(b"late"),
                peer: Bytes::from_static(b"peer"),
                peer_key: None,
                origin: Arc::clone(&socket.origin),
            },
            ticket: None,
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), control.tracker.wait())
            .await
            .expect("the loop ends once its queue is drained");
        assert_eq!(*seen.lock().expect("seen"), [Bytes::from_static(b"late")]);
    }
}
