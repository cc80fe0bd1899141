//! The public handle: listeners, pooled connections, sends and requests.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::dispatch::{self, Completion, Mode, Reply, Shared};
use crate::endpoint::Endpoint;
use crate::error::{BindError, ConnectError, RequestError, SendError};
use crate::server_loop::{self, AsyncServerLoop, Handler, ServerLoop};
use crate::stats::StatsSnapshot;
use crate::transport::{SocketCtx, SocketKind, SocketTasks, connection, inproc, listener, stream};
use crate::wire::Payload;

/// Identifies a connection made with [`Messenger::make_connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Identifies a listener made with [`Messenger::listen_for_connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u64);

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// The peer at the other end of a connection (our DEALER).
    Connection(ConnectionId),
    /// A peer connected to one of our listeners (our ROUTER), by routing id.
    Peer {
        /// The listener the peer is connected to.
        listener: ListenerId,
        /// The peer's routing id.
        peer: Bytes,
    },
}

impl Destination {
    pub(crate) fn of(socket: &SocketCtx, peer: &Bytes) -> Self {
        match socket.kind {
            SocketKind::Connection(id) => Destination::Connection(id),
            SocketKind::Listener(listener) => Destination::Peer {
                listener,
                peer: peer.clone(),
            },
        }
    }
}

impl From<ConnectionId> for Destination {
    fn from(id: ConnectionId) -> Self {
        Destination::Connection(id)
    }
}

/// A message handed to a callback. `body` shares the received buffer.
#[derive(Clone)]
pub struct Incoming {
    /// The sender's id for this message.
    pub msg_id: u64,
    /// The sender's callback for replies (0 when it expects none).
    pub src_cb: u64,
    /// The callback this message was addressed to.
    pub dst_cb: u64,
    /// The body, everything after the third `-`.
    pub body: Bytes,
    /// The sender's routing id on a listener; empty on a connection.
    pub peer: Bytes,
    pub(crate) socket: Arc<SocketCtx>,
}

impl Incoming {
    pub(crate) fn new(socket: Arc<SocketCtx>, peer: Bytes, p: Payload) -> Self {
        Incoming {
            msg_id: p.msg_id,
            src_cb: p.src_cb,
            dst_cb: p.dst_cb,
            body: p.body,
            peer,
            socket,
        }
    }

    /// The endpoint it arrived on (a listener's bound address, or the
    /// endpoint a connection connected to).
    pub fn endpoint(&self) -> &Endpoint {
        &self.socket.endpoint
    }

    /// Where to send messages back to its sender.
    pub fn reply_destination(&self) -> Destination {
        Destination::of(&self.socket, &self.peer)
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("endpoint", &self.socket.endpoint)
            .field("peer", &self.peer)
            .field("msg_id", &self.msg_id)
            .field("src_cb", &self.src_cb)
            .field("dst_cb", &self.dst_cb)
            .field("body", &self.body)
            .finish()
    }
}

/// A message-specific callback: runs once, with the first reply addressed
/// to it or with the reason none came (timeout, disconnect, shutdown).
pub struct Callback(Box<dyn FnOnce(Reply) + Send>);

impl Callback {
    /// Wraps a closure. It runs on a task of its own, so it may block
    /// briefly without holding up other messages.
    pub fn new(f: impl FnOnce(Reply) + Send + 'static) -> Self {
        Callback(Box::new(f))
    }
}

/// A listener that is open: its id and the endpoint it actually bound
/// (a tcp port 0 is resolved to the port the OS chose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Use in [`Destination::Peer`].
    pub id: ListenerId,
    /// The bound endpoint, connectable as written.
    pub endpoint: Endpoint,
}

/// Why a messenger could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewError {
    /// Routing ids are 1 to 255 bytes in ZMTP.
    #[error("identity must be 1 to 255 bytes, got {0}")]
    Identity(usize),
    /// Created outside a tokio runtime.
    #[error("a messenger must be created inside a tokio runtime")]
    NoRuntime,
}

struct Open {
    ctx: Arc<SocketCtx>,
    tasks: SocketTasks,
}

#[derive(Default)]
struct Registry {
    listeners: HashMap<ListenerId, Open>,
    connections: HashMap<ConnectionId, Open>,
    pool: HashMap<Endpoint, ConnectionId>,
    slc_tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    identity: Bytes,
    shared: Arc<Shared>,
    registry: Mutex<Registry>,
    /// Serialises connects so two callers for one endpoint share one DEALER.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    shut: AtomicBool,
    /// Tells server loops to finish up (shutdown).
    stop: tokio_util::sync::CancellationToken,
    /// Limit of concurrent server-loop handlers, shared by all listeners.
    handler_limit: Arc<tokio::sync::Semaphore>,
    /// Fails requests at their deadlines.
    deadline_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close_everything();
        self.deadline_task.abort();
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes every socket out of the registry, marked closed.
    fn take_everything(&self) -> Vec<Open> {
        let mut reg = self.registry();
        let reg = &mut *reg;
        let listeners = reg.listeners.drain().map(|(_, o)| o);
        let connections = reg.connections.drain().map(|(_, o)| o);
        let open: Vec<Open> = listeners.chain(connections).collect();
        for o in &open {
            o.ctx.mark_closed();
        }
        reg.pool.clear();
        for t in reg.slc_tasks.drain(..) {
            t.abort();
        }
        open
    }

    /// Closes every socket at once.
    fn close_everything(&self) {
        for mut open in self.take_everything() {
            open.tasks.close();
        }
    }
}

/// One messenger: listeners with server-loop callbacks, pooled connections,
/// and a ProcessMessage loop. Cheap to clone; every clone is the same
/// messenger. It closes when the last clone is dropped or on
/// [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct Messenger {
    inner: Arc<Inner>,
}

impl Messenger {
    /// A messenger with default [`Config`]. `identity` is its routing id on
    /// every connection it makes.
    pub fn new(identity: impl Into<Bytes>) -> Result<Self, NewError> {
        Self::with_config(identity, Config::default())
    }

    /// A messenger with the given configuration.
    pub fn with_config(identity: impl Into<Bytes>, config: Config) -> Result<Self, NewError> {
        let identity = identity.into();
        if identity.is_empty() || identity.len() > 255 {
            return Err(NewError::Identity(identity.len()));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NewError::NoRuntime)?;
        let limit = config.max_concurrent_handlers.max(1);
        let shared = Arc::new(Shared::new(Arc::new(config), runtime));
        let deadline_task = tokio::spawn(dispatch::deadline_loop(Arc::clone(&shared)));
        Ok(Messenger {
            inner: Arc::new(Inner {
                identity,
                shared,
                registry: Mutex::default(),
                connecting: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                shut: AtomicBool::new(false),
                stop: tokio_util::sync::CancellationToken::new(),
                handler_limit: Arc::new(tokio::sync::Semaphore::new(limit)),
                deadline_task,
            }),
        })
    }

    /// This messenger's routing id.
    pub fn identity(&self) -> &Bytes {
        &self.inner.identity
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    fn start_resending(&self, ctx: &Arc<SocketCtx>, tasks: &mut SocketTasks) {
        if let Some(interval) = self.inner.shared.config.resend_interval {
            tasks.tasks.push(tokio::spawn(dispatch::resend_loop(
                Arc::clone(ctx),
                interval,
            )));
        }
    }

    /// Binds a ROUTER on `endpoint` whose messages, after the builtins and
    /// MSCs have taken theirs, go to `slc`, one at a time in arrival order.
    /// `identity` is the listener's own routing id, sent as the first frame
    /// of everything it sends.
    pub async fn listen_for_connection(
        &self,
        endpoint: &Endpoint,
        identity: impl Into<Bytes>,
        slc: impl ServerLoop,
    ) -> Result<ListenerInfo, BindError> {
        self.listen(
            endpoint,
            identity.into(),
            Handler::Sequential(Arc::new(slc)),
        )
        .await
    }

    /// Like [`listen_for_connection`](Self::listen_for_connection), but each
    /// message runs as its own task, concurrently up to
    /// [`Config::max_concurrent_handlers`] across the messenger. Order is
    /// not kept; use the sequential form where it matters.
    pub async fn listen_for_connection_concurrent(
        &self,
        endpoint: &Endpoint,
        identity: impl Into<Bytes>,
        slc: impl AsyncServerLoop,
    ) -> Result<ListenerInfo, BindError> {
        let limit = Arc::clone(&self.inner.handler_limit);
        self.listen(
            endpoint,
            identity.into(),
            Handler::Concurrent(Arc::new(slc), limit),
        )
        .await
    }

    async fn listen(
        &self,
        endpoint: &Endpoint,
        identity: Bytes,
        handler: Handler,
    ) -> Result<ListenerInfo, BindError> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(BindError::Shutdown);
        }
        let shared = &self.inner.shared;
        let cfg = &shared.config;
        let id = ListenerId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (slc_tx, slc_rx) = mpsc::channel(cfg.slc_queue_capacity.max(1));
        // tcp and ipc bind the OS listener first so the context can carry
        // the resolved endpoint (port 0 becomes the real port).
        let (bound_socket, bound, created_file) = match endpoint {
            Endpoint::Inproc(_) => (None, endpoint.clone(), None),
            _ => {
                let (l, resolved, file) = stream::bind(endpoint).await?;
                (Some(l), resolved, file)
            }
        };
        let ctx = Arc::new(SocketCtx::new(
            SocketKind::Listener(id),
            bound.clone(),
            identity,
            Some(slc_tx),
            Arc::clone(&shared.stats),
            Arc::clone(cfg),
        ));
        let mut tasks = SocketTasks::new(CancellationToken::new());
        tasks.created_file = created_file;
        match (endpoint, bound_socket) {
            (Endpoint::Inproc(name), _) => {
                tasks.inproc = Some(inproc::bind(name, &ctx, shared, &tasks.stop)?);
            }
            (_, Some(l)) => {
                let settings = Arc::new(listener::PeerSettings {
                    auth: cfg
                        .auth
                        .clone()
                        .map(|s| std::sync::Mutex::new(crate::auth::Verifier::new(s))),
                });
                let span = tracing::info_span!("listener", endpoint = %bound);
                let accept = listener::accept_loop(
                    l,
                    Arc::clone(&ctx),
                    Arc::clone(shared),
                    settings,
                    tasks.stop.clone(),
                );
                tasks.flushing.push(tokio::spawn(accept.instrument(span)));
            }
            (_, None) => return Err(BindError::Unsupported(endpoint.clone())),
        }
        let span = tracing::info_span!("listener", id = id.0, endpoint = %bound);
        let _entered = span.enter();
        let slc_task = server_loop::spawn(
            handler,
            slc_rx,
            Arc::downgrade(&self.inner.shared),
            self.inner.stop.clone(),
        );
        self.start_resending(&ctx, &mut tasks);
        let mut reg = self.inner.registry();
        reg.listeners.insert(id, Open { ctx, tasks });
        reg.slc_tasks.push(slc_task);
        tracing::info!(endpoint = %bound, "listening");
        Ok(ListenerInfo {
            id,
            endpoint: bound,
        })
    }

    /// Opens a DEALER to `endpoint`, or returns the one already pooled for
    /// it. The connection redials by itself if its peer goes away (see
    /// [`Config::reconnect_initial`]); its id stays valid until shutdown.
    ///
    /// A listener refuses our identity while a session of its own still
    /// holds it; when that is our previous run (this process restarted),
    /// the refusal is retried until [`Config::connect_timeout`], since the
    /// listener lets the old session go once it has read its end.
    pub async fn make_connection(&self, endpoint: &Endpoint) -> Result<ConnectionId, ConnectError> {
        self.connect(endpoint, None).await
    }

    /// [`make_connection`](Self::make_connection) with a server loop for
    /// the messages the peer sends to callback 0 over this connection (a
    /// listener's server loop, but on the connecting side: a model server
    /// that dials its database, say). Replies go back over the connection.
    /// The connection is pooled like any other: later `make_connection`
    /// calls to the same endpoint share it and its server loop, and asking
    /// for a server loop on an endpoint already connected is
    /// [`ConnectError::AlreadyConnected`].
    pub async fn make_connection_with_server_loop(
        &self,
        endpoint: &Endpoint,
        slc: impl ServerLoop,
    ) -> Result<ConnectionId, ConnectError> {
        self.connect(endpoint, Some(Handler::Sequential(Arc::new(slc))))
            .await
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        handler: Option<Handler>,
    ) -> Result<ConnectionId, ConnectError> {
        let _one_at_a_time = self.inner.connecting.lock().await;
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(ConnectError::Shutdown);
        }
        if let Some(&id) = self.inner.registry().pool.get(endpoint) {
            return match handler {
                None => Ok(id),
                Some(_) => Err(ConnectError::AlreadyConnected(endpoint.clone())),
            };
        }
        let shared = &self.inner.shared;
        let cfg = &shared.config;
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (slc_tx, slc_rx) = match handler {
            Some(_) => {
                let (tx, rx) = mpsc::channel(cfg.slc_queue_capacity.max(1));
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let ctx = Arc::new(SocketCtx::new(
            SocketKind::Connection(id),
            endpoint.clone(),
            self.inner.identity.clone(),
            slc_tx,
            Arc::clone(&shared.stats),
            Arc::clone(cfg),
        ));
        let first = connection::dial_first(endpoint, &ctx, shared).await?;
        // Up before make_connection returns: sends go straight to it.
        ctx.link_up(&first.1);
        let backoff = connection::Backoff {
            initial: cfg.reconnect_initial,
            max: cfg.reconnect_max.max(cfg.reconnect_initial),
        };
        let mut tasks = SocketTasks::new(CancellationToken::new());
        let span = tracing::info_span!("connection", id = id.0, %endpoint);
        let driver = connection::drive(
            endpoint.clone(),
            first,
            Arc::clone(&ctx),
            Arc::clone(shared),
            backoff,
            tasks.stop.clone(),
        );
        tasks.flushing.push(tokio::spawn(driver.instrument(span)));
        self.start_resending(&ctx, &mut tasks);
        if let Some(hb) = cfg.heartbeat {
            let shared = Arc::downgrade(shared);
            let beat = dispatch::heartbeat_loop(shared, Arc::clone(&ctx), hb);
            tasks.tasks.push(tokio::spawn(beat));
        }
        let slc_task = match (handler, slc_rx) {
            (Some(handler), Some(rx)) => Some(server_loop::spawn(
                handler,
                rx,
                Arc::downgrade(&self.inner.shared),
                self.inner.stop.clone(),
            )),
            _ => None,
        };
        let mut reg = self.inner.registry();
        reg.connections.insert(id, Open { ctx, tasks });
        reg.pool.insert(endpoint.clone(), id);
        reg.slc_tasks.extend(slc_task);
        tracing::debug!(%endpoint, "connected");
        Ok(id)
    }

    /// Whether the connection's link is up now (false while it redials).
    pub fn is_connected(&self, conn: ConnectionId) -> bool {
        self.inner
            .registry()
            .connections
            .get(&conn)
            .is_some_and(|o| o.ctx.is_up())
    }

    /// The last heartbeat round trip on a connection, if heartbeats are on
    /// and one was answered.
    pub fn rtt(&self, conn: ConnectionId) -> Option<Duration> {
        self.inner
            .registry()
            .connections
            .get(&conn)
            .and_then(|o| o.ctx.rtt())
    }

    fn socket_for(&self, dest: &Destination) -> Result<(Arc<SocketCtx>, Bytes), SendError> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(SendError::Shutdown);
        }
        let reg = self.inner.registry();
        match dest {
            Destination::Connection(id) => reg
                .connections
                .get(id)
                .map(|o| (Arc::clone(&o.ctx), Bytes::new()))
                .ok_or_else(|| SendError::UnknownDestination(format!("connection {}", id.0))),
            Destination::Peer { listener, peer } => reg
                .listeners
                .get(listener)
                .map(|o| (Arc::clone(&o.ctx), peer.clone()))
                .ok_or_else(|| SendError::UnknownDestination(format!("listener {}", listener.0))),
        }
    }

    /// Sends `body` to callback `dst_cb` at `dest`, waiting while the
    /// socket is at its high-water mark. With a `callback`, the message
    /// carries the callback's id as src_cb and the callback runs once with
    /// the reply, or with an error at the deadline
    /// ([`Config::request_timeout`]). Returns the message's msg_id.
    pub async fn send_message(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
        callback: Option<Callback>,
    ) -> Result<u64, SendError> {
        let timeout = self.inner.shared.config.request_timeout;
        let completion = callback.map(|c| (Completion::Callback(c.0), timeout));
        let (socket, peer) = self.socket_for(&dest.into())?;
        let shared = &self.inner.shared;
        let body = body.as_ref();
        let sent = shared.send(&socket, &peer, dst_cb, body, completion, None, Mode::Wait);
        Ok(sent.await?.msg_id)
    }

    /// Like [`send_message`](Self::send_message), but fails with
    /// [`SendError::Full`] instead of waiting. Usable from synchronous code.
    pub fn try_send_message(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
        callback: Option<Callback>,
    ) -> Result<u64, SendError> {
        let timeout = self.inner.shared.config.request_timeout;
        let completion = callback.map(|c| (Completion::Callback(c.0), timeout));
        let (socket, peer) = self.socket_for(&dest.into())?;
        let shared = &self.inner.shared;
        shared.try_send(&socket, &peer, dst_cb, body.as_ref(), completion)
    }

    /// Sends `body` to `dst_cb` at `dest` and waits until the peer
    /// acknowledges it (resending meanwhile), up to
    /// [`Config::request_timeout`]. On inproc, where nothing is lost and
    /// no ACK is sent, it returns once the message has landed (its server
    /// loop's queue owns it, or its callback has it).
    pub async fn send_confirmed(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
    ) -> Result<u64, RequestError> {
        let (tx, rx) = oneshot::channel();
        let (socket, peer) = self.socket_for(&dest.into())?;
        let shared = &self.inner.shared;
        let body = body.as_ref();
        let sent = shared.send(&socket, &peer, dst_cb, body, None, Some(tx), Mode::Wait);
        let msg_id = sent.await?.msg_id;
        rx.await.unwrap_or(Err(RequestError::Shutdown))?;
        Ok(msg_id)
    }

    /// Sends `body` to `dst_cb` at `dest` and waits for the reply, up to
    /// [`Config::request_timeout`]. Dropping the future frees its callback.
    pub async fn request(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
    ) -> Result<Incoming, RequestError> {
        let timeout = self.inner.shared.config.request_timeout;
        self.request_with_timeout(dest, dst_cb, body, timeout).await
    }

    /// [`request`](Self::request) with its own deadline.
    pub async fn request_with_timeout(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Incoming, RequestError> {
        {
            let (tx, rx) = oneshot::channel();
            let (socket, peer) = self.socket_for(&dest.into())?;
            let shared = &self.inner.shared;
            let body = body.as_ref();
            let completion = Some((Completion::Future(tx), timeout));
            // Without waiting first: the common case needs no timer (each
            // costs a clock read).
            let first = {
                use futures::FutureExt;
                let send = shared.send(&socket, &peer, dst_cb, body, completion, None, Mode::Try);
                send.now_or_never().unwrap_or(Err(SendError::Full))
            };
            let (sent, rx) = match first {
                Ok(sent) => (sent, rx),
                Err(SendError::Full) => {
                    // Waiting for room counts against the request's deadline.
                    let (tx, rx) = oneshot::channel();
                    let completion = Some((Completion::Future(tx), timeout));
                    let wait =
                        shared.send(&socket, &peer, dst_cb, body, completion, None, Mode::Wait);
                    let sent = tokio::time::timeout(timeout, wait)
                        .await
                        .map_err(|_| RequestError::Timeout)??;
                    (sent, rx)
                }
                Err(e) => return Err(e.into()),
            };
            // Removes the callback if this future is dropped while it waits.
            let guard = Unregister {
                shared,
                id: sent.cb_id,
            };
            let reply = rx.await.unwrap_or(Err(RequestError::Shutdown));
            guard.disarm();
            if let Err(e) = &reply {
                tracing::debug!(error = %e, "request failed");
            }
            reply
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = self.inner.shared.stats.snapshot();
        s.pending_callbacks = self.inner.shared.pending_callbacks() as u64;
        let reg = self.inner.registry();
        s.pending_messages = reg
            .listeners
            .values()
            .chain(reg.connections.values())
            .flat_map(|o| o.ctx.all_unacked())
            .map(|u| u.len() as u64)
            .sum();
        s.connections = reg
            .connections
            .values()
            .filter(|o| !o.ctx.is_closed())
            .count() as u64;
        s.listeners = reg.listeners.len() as u64;
        s
    }

    /// Shuts down cleanly: stops taking new messages for server loops
    /// (they are left unACKed, so peers keep them), lets queued and running
    /// server-loop work finish within [`Config::shutdown_grace`] (replies
    /// still go out), then fails every waiting callback with
    /// [`RequestError::Shutdown`], closes every socket and removes the ipc
    /// files it created.
    pub async fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
        self.inner.shared.stop_accepting();
        self.inner.stop.cancel();
        let slc_tasks = std::mem::take(&mut self.inner.registry().slc_tasks);
        let deadline = tokio::time::Instant::now() + self.inner.shared.config.shutdown_grace;
        for mut task in slc_tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("server-loop work outlived the shutdown grace period; cancelled");
                task.abort();
            }
        }
        // What is queued (replies, the ACKs of replies we just got) reaches
        // the wire as each session closes: its task flushes for at most
        // the linger period.
        let linger = self.inner.shared.config.linger;
        let closing = self.inner.take_everything();
        for open in &closing {
            self.inner
                .shared
                .fail_socket(&open.ctx, RequestError::Shutdown);
            for unacked in open.ctx.all_unacked() {
                unacked.close(&RequestError::Shutdown);
            }
        }
        self.inner.shared.fail_all(RequestError::Shutdown);
        futures::future::join_all(closing.into_iter().map(|mut open| async move {
            open.tasks.close_gracefully(linger).await;
        }))
        .await;
        // Let callbacks spawned by fail_all run before the caller goes on.
        tokio::task::yield_now().await;
    }
}

/// Unregisters a request's callback unless disarmed: covers a future
/// dropped while it waits for the reply.
struct Unregister<'a> {
    shared: &'a Shared,
    id: Option<u64>,
}

impl Unregister<'_> {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.unregister(id);
        }
    }
}
