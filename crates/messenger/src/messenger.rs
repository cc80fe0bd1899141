//! The public handle: listeners, pooled connections, sends and requests.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Incoming;
use crate::address::{ConnectionId, Destination, ListenerId};
use crate::config::{Config, Curve};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::runtime::callbacks::{self, Completion, ReplyFuture};
use crate::runtime::send::{Mode, Notify, Outgoing, Sent};
use crate::runtime::server_loop::{self, Handler, LoopControl, Responder};
use crate::runtime::shared::Shared;
use crate::runtime::socket::{Open, Opening, SocketCtx};
use crate::runtime::{connection, listener};
use crate::stats::{StatsSnapshot, Transport};
use crate::telemetry;
use crate::types::{Callback, ListenerInfo};

#[derive(Default)]
struct Registry {
    /// Open listeners, by id.
    listeners: HashMap<ListenerId, Open>,
    /// Open connections, by id.
    connections: HashMap<ConnectionId, Open>,
    /// One connection per endpoint: `make_connection` reuses it.
    pool: HashMap<Endpoint, ConnectionId>,
}

impl Registry {
    /// The senders' view of it (see [`Sockets`]).
    fn sockets(&self) -> Sockets {
        Sockets {
            listeners: (self.listeners.iter())
                .map(|(id, o)| (*id, Arc::clone(&o.ctx)))
                .collect(),
            connections: (self.connections.iter())
                .map(|(id, o)| (*id, Arc::clone(&o.ctx)))
                .collect(),
        }
    }
}

/// What senders look sockets up in: the registry's sockets, replaced whole
/// (under the registry's lock) when one opens or all close. A send loads
/// it through arc-swap's per-thread slots and borrows its socket from it:
/// no lock and no reference count of its own. (The registry's mutex and
/// the socket's reference count were cache lines every worker thread
/// wrote on every request.)
///
/// Hashed with foldhash, not SipHash: the keys are our own ids, never a
/// peer's bytes, and SipHash was 140 instructions of every inproc round
/// trip (callgrind).
#[derive(Default)]
struct Sockets {
    /// Open listeners, by id.
    listeners: HashMap<ListenerId, Arc<SocketCtx>, foldhash::fast::RandomState>,
    /// Open connections, by id.
    connections: HashMap<ConnectionId, Arc<SocketCtx>, foldhash::fast::RandomState>,
}

/// The peer of a message on a connection: the connection's only one.
static NO_PEER: Bytes = Bytes::new();

impl Sockets {
    /// The socket `dest` leaves on, and its peer there (empty on a
    /// connection).
    fn find<'a>(&'a self, dest: &'a Destination) -> Result<(&'a Arc<SocketCtx>, &'a Bytes), Error> {
        let found = match dest {
            Destination::Connection(id) => self.connections.get(id).map(|s| (s, &NO_PEER)),
            Destination::Peer { listener, peer } => self.listeners.get(listener).map(|s| (s, peer)),
        };
        found.ok_or_else(|| Error::UnknownDestination(dest.clone()))
    }
}

struct Inner {
    /// Our routing id, announced on every connection and listener.
    identity: Bytes,
    /// What every task of this messenger shares.
    shared: Arc<Shared>,
    /// Its sockets; locked only to open, look up or close one.
    registry: Mutex<Registry>,
    /// The registry's sockets as senders see them.
    sockets: ArcSwap<Sockets>,
    /// Dials under way, by endpoint: two callers for one endpoint take
    /// turns, so they share one DEALER; dials to other endpoints never
    /// wait for each other (one silent peer would hold up every dial for
    /// its `connect_timeout`). An entry lives while a caller holds it
    /// ([`DialTurn`]).
    dialling: Mutex<HashMap<Endpoint, Arc<tokio::sync::Mutex<()>>>>,
    /// Numbers listeners and connections.
    next_id: AtomicU64,
    /// The root of every stop signal: every socket's token and the server
    /// loops' are its children, so cancelling it (at drop, or as the last
    /// step of `shutdown`) stops every task the messenger runs, the
    /// deadline task included.
    shutdown: CancellationToken,
    /// Server loops, and what stops them: `stop` is shutdown's first step
    /// (and from then on new sends, binds and connects fail with
    /// `Shutdown`), `abandon` its grace period's end.
    loops: LoopControl,
    /// Limit of concurrent server-loop handlers, shared by all listeners.
    handler_limit: Arc<tokio::sync::Semaphore>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stop_accepting();
        self.shutdown.cancel();
        self.close_everything();
        telemetry::retire(&self.shared.stats);
    }
}

impl telemetry::Source for Inner {
    fn stats(&self) -> &crate::stats::Stats {
        &self.shared.stats
    }

    fn gauges(&self) -> telemetry::Gauges {
        let mut g = telemetry::Gauges {
            pending_callbacks: self.shared.callbacks.len() as u64,
            ..Default::default()
        };
        let reg = self.registry();
        for o in reg.listeners.values() {
            g.connections[telemetry::INBOUND][o.ctx.transport as usize] +=
                o.ctx.session_count() as u64;
        }
        for o in reg.connections.values().filter(|o| o.ctx.is_up()) {
            g.connections[telemetry::OUTBOUND][o.ctx.transport as usize] += 1;
        }
        g.unacked = reg
            .listeners
            .values()
            .chain(reg.connections.values())
            .flat_map(|o| o.ctx.all_unacked())
            .map(|u| u.len() as u64)
            .sum();
        g.listeners = reg.listeners.len() as u64;
        g
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
        self.sockets.store(Arc::default());
        open
    }

    /// What a socket this messenger opens needs of it.
    fn opening(&self, identity: Bytes) -> Opening<'_> {
        Opening {
            shared: &self.shared,
            loops: &self.loops,
            shutdown: &self.shutdown,
            identity,
        }
    }

    /// Whether shutdown has begun.
    fn is_shut(&self) -> bool {
        !self.shared.is_accepting()
    }

    /// `endpoint`'s turn to dial, shared with its other callers.
    fn dial_turn<'a>(&'a self, endpoint: &'a Endpoint) -> DialTurn<'a> {
        let mut dialling = self.dialling.lock().unwrap_or_else(|p| p.into_inner());
        let turn = Arc::clone(dialling.entry(endpoint.clone()).or_default());
        DialTurn {
            inner: self,
            endpoint,
            turn,
        }
    }

    /// Closes every socket at once.
    fn close_everything(&self) {
        for mut open in self.take_everything() {
            open.tasks.close();
        }
    }
}

/// A socket that finished opening after shutdown began (and took every
/// socket out of the registry, or is about to) never goes in: closed here,
/// its caller told `Shutdown`. Checked under the registry's lock, which
/// shutdown takes after it stops accepting.
fn shut_meanwhile(mut open: Open) -> Error {
    open.ctx.mark_closed();
    open.tasks.close();
    Error::Shutdown
}

/// One caller's hold on its endpoint's turn to dial (see
/// `Inner::dialling`); the last caller to let go removes the entry.
struct DialTurn<'a> {
    /// Whose table it is in.
    inner: &'a Inner,
    /// The endpoint dialled.
    endpoint: &'a Endpoint,
    /// Locked while this caller dials.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for DialTurn<'_> {
    fn drop(&mut self) {
        let mut dialling = self
            .inner
            .dialling
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The table's and ours: no other caller holds or waits for it.
        if Arc::strong_count(&self.turn) == 2 {
            dialling.remove(self.endpoint);
        }
    }
}

/// One messenger: listeners with server-loop callbacks, pooled connections,
/// and a ProcessMessage loop. Cheap to clone; every clone is the same
/// messenger. It closes when the last clone is dropped or on
/// [`shutdown`](Self::shutdown).
///
/// Components of one process talk over `inproc://` exactly as processes do
/// over `tcp://` and `ipc://`:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), messenger::Error> {
/// use messenger::{Messenger, NOOP};
///
/// let planner = Messenger::new()?;
/// let at = "inproc://planner-doc".parse()?;
/// planner
///     .listen_for_connection(&at, |q, r| {
///         // Never blocks the loop, and never loses the answer for want
///         // of room: it waits for the peer's ACKs if it must.
///         if let Err(e) = r.try_reply([&b"plan for "[..], &q.body[..]].concat()) {
///             eprintln!("cannot answer: {e}");
///         }
///     })
///     .await?;
///
/// let parser = Messenger::new()?;
/// let conn = parser.make_connection(&at).await?;
/// let reply = parser.request(conn, NOOP, b"SELECT 1").await?;
/// assert_eq!(&reply.body[..], b"plan for SELECT 1");
/// parser.shutdown().await;
/// planner.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Messenger {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

/// Makes a [`Messenger`] with a chosen routing id, configuration or CURVE
/// keys ([`Messenger::builder`]); what it is not told keeps its default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), messenger::Error> {
/// use std::time::Duration;
/// use messenger::{Config, Messenger};
///
/// let primary = Messenger::builder()
///     .identity("primary")
///     .config(Config {
///         request_timeout: Duration::from_secs(5),
///         ..Config::default()
///     })
///     .build()?;
/// assert_eq!(&primary.identity()[..], b"primary");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MessengerBuilder {
    /// `None` until chosen: a unique one is made at `build`.
    identity: Option<Bytes>,
    /// Every tunable, checked at `build`.
    config: Config,
    /// Kept apart from `config` so `curve()` and `config()` may come in
    /// either order.
    curve: Option<Curve>,
}

impl MessengerBuilder {
    /// The routing id the messenger announces on every connection and
    /// sends as its listeners' first frame (1 to 255 bytes, the first not
    /// zero: [`Error::InvalidIdentity`] otherwise). Default: one
    /// of its own, unique per messenger (see [`Messenger::new`]). Choose
    /// one when a peer must recognise you; two messengers with one id
    /// cannot both connect to one listener.
    pub fn identity(mut self, identity: impl Into<Bytes>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Every tunable ([`Config`]); default `Config::default()`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// CURVE keys, in place of `config.curve` whichever is given first:
    /// see [`Curve`].
    pub fn curve(mut self, curve: Curve) -> Self {
        self.curve = Some(curve);
        self
    }

    /// The messenger, on the current tokio runtime. Fails with
    /// [`Error::InvalidIdentity`], [`Error::InvalidConfig`] (checked once,
    /// here) or [`Error::NoRuntime`].
    pub fn build(self) -> Result<Messenger, Error> {
        let identity = self.identity.unwrap_or_else(unique_identity);
        let mut config = self.config;
        if let Some(curve) = self.curve {
            config.curve = Some(curve);
        }
        Messenger::start(identity, config)
    }
}

/// A routing id no other messenger has: the process and a random part,
/// so two runs of one program, or two messengers in one, never collide at
/// a listener (which refuses a live peer's id).
fn unique_identity() -> Bytes {
    let mut random = [0u8; 6];
    let _ = getrandom::fill(&mut random);
    let n = NEXT_ANONYMOUS.fetch_add(1, Ordering::Relaxed);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    Bytes::from(format!("messenger-{}-{hex}-{n}", std::process::id()))
}

/// Counts the messengers given a unique identity in this process (the
/// random part alone would do; this makes a clash impossible here).
static NEXT_ANONYMOUS: AtomicU64 = AtomicU64::new(0);

impl Messenger {
    /// A messenger with the default [`Config`] and a routing id of its own,
    /// unique to it (`messenger-PID-RANDOM-N`), on the current tokio
    /// runtime. [`builder`](Self::builder) chooses the rest.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// Chooses the routing id, the configuration or CURVE keys.
    pub fn builder() -> MessengerBuilder {
        MessengerBuilder::default()
    }

    fn start(identity: Bytes, config: Config) -> Result<Self, Error> {
        if identity.is_empty() || identity.len() > 255 {
            let n = identity.len();
            return Err(Error::InvalidIdentity(format!(
                "it must be 1 to 255 bytes, got {n}"
            )));
        }
        if identity.first() == Some(&0) {
            // Every listener refuses it at the handshake: ZMTP keeps ids
            // beginning with a zero byte for those a listener makes up.
            return Err(Error::InvalidIdentity(
                "it must not begin with a zero byte (ZMTP keeps those for the ids a \
                 listener makes up for anonymous peers)"
                    .into(),
            ));
        }
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let limit = config.max_concurrent_handlers;
        let shutdown = CancellationToken::new();
        let loops = LoopControl {
            stop: shutdown.child_token(),
            abandon: shutdown.child_token(),
            tracker: TaskTracker::new(),
        };
        let shared = Arc::new(Shared::new(Arc::new(config), runtime, loops.stop.clone()));
        let timer = callbacks::run(Arc::clone(&shared.callbacks));
        let stop = shutdown.clone();
        tokio::spawn(async move { stop.run_until_cancelled(timer).await });
        let inner = Arc::new(Inner {
            identity,
            shared,
            registry: Mutex::default(),
            sockets: ArcSwap::default(),
            dialling: Mutex::default(),
            next_id: AtomicU64::new(1),
            shutdown,
            loops,
            handler_limit: Arc::new(tokio::sync::Semaphore::new(limit)),
        });
        let source: Arc<dyn telemetry::Source> = Arc::clone(&inner) as _;
        telemetry::register(Arc::downgrade(&source));
        Ok(Messenger { inner })
    }

    /// This messenger's routing id.
    pub fn identity(&self) -> &Bytes {
        &self.inner.identity
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Binds a ROUTER on `endpoint` whose messages, after the builtins and
    /// MSCs have taken theirs, go to `slc`: its server-loop callback, run
    /// on the listener's own task, one message at a time in arrival order
    /// (long work should be spawned so the next message is not held up).
    /// A panicking callback is logged and the loop goes on. Its routing id
    /// (the first frame of everything it sends) is the messenger's.
    /// Returns the bound endpoint (tcp port 0 resolved).
    pub async fn listen_for_connection<F>(
        &self,
        endpoint: &Endpoint,
        slc: F,
    ) -> Result<ListenerInfo, Error>
    where
        F: Fn(Incoming, Responder) + Send + Sync + 'static,
    {
        self.listen(endpoint, Handler::Sequential(Arc::new(slc)))
            .await
    }

    /// Like [`listen_for_connection`](Self::listen_for_connection), but
    /// each message's work is a future of its own, run concurrently up to
    /// [`Config::max_concurrent_handlers`] across the messenger. Order is
    /// not kept; use the sequential form where it matters.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), messenger::Error> {
    /// use messenger::{Messenger, NOOP};
    ///
    /// let model_server = Messenger::new()?;
    /// let at = "inproc://concurrent-doc".parse()?;
    /// model_server
    ///     .listen_for_connection_concurrent(&at, |job, r| async move {
    ///         let answer = [&b"trained on "[..], &job.body[..]].concat();
    ///         // Waits for room rather than dropping the answer.
    ///         let _ = r.reply(answer).await;
    ///     })
    ///     .await?;
    /// let db = Messenger::new()?;
    /// let conn = db.make_connection(&at).await?;
    /// let done = db.request(conn, NOOP, b"batch 1").await?;
    /// assert_eq!(&done.body[..], b"trained on batch 1");
    /// # Ok(()) }
    /// ```
    pub async fn listen_for_connection_concurrent<F, Fut>(
        &self,
        endpoint: &Endpoint,
        slc: F,
    ) -> Result<ListenerInfo, Error>
    where
        F: Fn(Incoming, Responder) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.listen(endpoint, self.concurrent(slc)).await
    }

    async fn listen(&self, endpoint: &Endpoint, handler: Handler) -> Result<ListenerInfo, Error> {
        if self.inner.is_shut() {
            return Err(Error::Shutdown);
        }
        let id = ListenerId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let opening = self.inner.opening(self.inner.identity.clone());
        let (open, bound) = listener::open(&opening, id, endpoint, handler).await?;
        let mut reg = self.inner.registry();
        if self.inner.is_shut() {
            drop(reg);
            return Err(shut_meanwhile(open));
        }
        reg.listeners.insert(id, open);
        self.inner.sockets.store(Arc::new(reg.sockets()));
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
    pub async fn make_connection(&self, endpoint: &Endpoint) -> Result<ConnectionId, Error> {
        self.connect(endpoint, None).await
    }

    /// [`make_connection`](Self::make_connection) with a server loop for
    /// the messages the peer sends to callback 0 over this connection (a
    /// listener's server loop, but on the connecting side: a model server
    /// that dials its database, say). Replies go back over the connection.
    /// The connection is pooled like any other: later `make_connection`
    /// calls to the same endpoint share it and its server loop, and asking
    /// for a server loop on an endpoint already connected is
    /// [`Error::AlreadyConnected`].
    pub async fn make_connection_with_server_loop<F>(
        &self,
        endpoint: &Endpoint,
        slc: F,
    ) -> Result<ConnectionId, Error>
    where
        F: Fn(Incoming, Responder) + Send + Sync + 'static,
    {
        self.connect(endpoint, Some(Handler::Sequential(Arc::new(slc))))
            .await
    }

    /// [`make_connection_with_server_loop`](Self::make_connection_with_server_loop)
    /// whose handler's work is a future of its own, run concurrently up to
    /// [`Config::max_concurrent_handlers`] across the messenger, as
    /// [`listen_for_connection_concurrent`](Self::listen_for_connection_concurrent)
    /// does for a listener. The handler itself is still called in arrival
    /// order; only the futures it returns overlap. Shutdown waits for those
    /// futures within [`Config::shutdown_grace`], so work handed elsewhere
    /// (another thread, another runtime: the Python binding's server
    /// loops) and awaited in the future is drained as a listener's is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), messenger::Error> {
    /// use messenger::{Messenger, NOOP};
    ///
    /// let manager = Messenger::new()?;
    /// let at = "inproc://dialling-model-server-doc".parse()?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// manager
    ///     .listen_for_connection(&at, move |hello: messenger::Incoming, _| {
    ///         let _ = tx.send(hello.reply_destination());
    ///     })
    ///     .await?;
    /// // The model server dials in and is then driven by the manager.
    /// let model = Messenger::new()?;
    /// let conn = model
    ///     .make_connection_with_server_loop_concurrent(&at, |job, r| async move {
    ///         let _ = r.reply([&b"trained on "[..], &job.body[..]].concat()).await;
    ///     })
    ///     .await?;
    /// model.send_message(conn, NOOP, b"connected", None).await?;
    /// let model_at = rx.recv().await.expect("the model server said hello");
    /// let done = manager.request(model_at, NOOP, b"batch 1").await?;
    /// assert_eq!(&done.body[..], b"trained on batch 1");
    /// # Ok(()) }
    /// ```
    pub async fn make_connection_with_server_loop_concurrent<F, Fut>(
        &self,
        endpoint: &Endpoint,
        slc: F,
    ) -> Result<ConnectionId, Error>
    where
        F: Fn(Incoming, Responder) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.connect(endpoint, Some(self.concurrent(slc))).await
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        handler: Option<Handler>,
    ) -> Result<ConnectionId, Error> {
        let turn = self.inner.dial_turn(endpoint);
        let _ours = turn.turn.lock().await;
        if self.inner.is_shut() {
            return Err(Error::Shutdown);
        }
        if let Some(&id) = self.inner.registry().pool.get(endpoint) {
            return match handler {
                None => Ok(id),
                Some(_) => Err(Error::AlreadyConnected(endpoint.clone())),
            };
        }
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let opening = self.inner.opening(self.inner.identity.clone());
        // A shutdown ends the dial (a silent peer would hold it for
        // `connect_timeout`); dropped, it stops what it started.
        let open = tokio::select! {
            biased;
            () = self.inner.loops.stop.cancelled() => return Err(Error::Shutdown),
            open = connection::open(&opening, id, endpoint, handler) => open?,
        };
        let mut reg = self.inner.registry();
        if self.inner.is_shut() {
            drop(reg);
            return Err(shut_meanwhile(open));
        }
        reg.connections.insert(id, open);
        reg.pool.insert(endpoint.clone(), id);
        self.inner.sockets.store(Arc::new(reg.sockets()));
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

    /// The sockets to send on (see [`Sockets`]), unless shut down.
    fn sockets(&self) -> Result<arc_swap::Guard<Arc<Sockets>>, Error> {
        if self.inner.is_shut() {
            return Err(Error::Shutdown);
        }
        Ok(self.inner.sockets.load())
    }

    /// Sends `body` to callback `dst_cb` at `dest`. With a `callback`,
    /// the message carries the callback's id as src_cb and the callback
    /// runs once with the reply, or with an error at the deadline
    /// ([`Config::request_timeout`]). Waits while the peer's window or the
    /// socket's buffer is full; the wait counts against that deadline
    /// ([`Error::Timeout`] when it passes). Returns the message's msg_id.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use messenger::{Callback, ECHO, Messenger, NOOP};
    /// # let server = Messenger::new()?;
    /// # let at = "inproc://send-doc".parse()?;
    /// # server.listen_for_connection(&at, |_: messenger::Incoming, _: messenger::Responder| {}).await?;
    /// let m = Messenger::new()?;
    /// let conn = m.make_connection(&at).await?;
    /// // To the peer's server loop, no reply wanted:
    /// m.send_message(conn, NOOP, b"log batch 7", None).await?;
    /// // With a callback that runs once, on a task of its own, with the reply:
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// let cb = Callback::new(move |reply| drop(tx.send(reply)));
    /// m.send_message(conn, ECHO, b"are you there", Some(cb)).await?;
    /// assert_eq!(&rx.await?.expect("a reply").body[..], b"are you there");
    /// # Ok(()) }
    /// ```
    pub async fn send_message(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
        callback: Option<Callback>,
    ) -> Result<u64, Error> {
        let notify = reply_to(callback);
        let timeout = self.inner.shared.config.request_timeout;
        let sent = self
            .send(
                dest.into(),
                dst_cb,
                body.as_ref(),
                notify,
                timeout,
                Mode::Wait,
            )
            .await?;
        Ok(sent.msg_id)
    }

    /// [`send_message`](Self::send_message) that never waits: fails with
    /// [`Error::Full`] where that one would wait. For synchronous code
    /// (a sequential server loop runs on the listener's task and must not
    /// block it).
    pub fn try_send_message(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
        callback: Option<Callback>,
    ) -> Result<u64, Error> {
        let notify = reply_to(callback);
        let timeout = self.inner.shared.config.request_timeout;
        let send = self.send(
            dest.into(),
            dst_cb,
            body.as_ref(),
            notify,
            timeout,
            Mode::Try,
        );
        // Mode::Try never waits: the first poll completes it.
        let sent = futures::FutureExt::now_or_never(send).unwrap_or_else(|| Err(Error::Full));
        Ok(sent?.msg_id)
    }

    /// Runs `f` with this thread's sends on tcp and ipc held back, and
    /// writes them when it returns: one `write` per connection for the
    /// lot, instead of one per message. For code that sends many
    /// messages in a row from one thread: a replication primary's batch
    /// of log records through [`try_send_message`](Self::try_send_message),
    /// a binding that polls the request futures its users made since it
    /// last ran. (Sends from the messenger's own runtime threads are
    /// gathered already: a connection's task holds its writes while the
    /// tasks it woke send.)
    ///
    /// Nothing sent inside `f` leaves before `f` returns, so `f` must not
    /// wait for a reply to its own sends, nor for room: a connection's
    /// buffer ([`Config::send_buffer_size`]) drains only once the batch
    /// ends, so a send that finds it full fails with [`Error::Full`]
    /// (`try_send_message`) as it would outside a batch, and retrying
    /// inside the same batch finds it full again. It covers every
    /// messenger's sends on this thread; a batch inside a batch joins the
    /// outer one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use messenger::{Messenger, NOOP};
    /// # let server = Messenger::new()?;
    /// # let at: messenger::Endpoint = "tcp://127.0.0.1:0".parse()?;
    /// # let at = server.listen_for_connection(&at, |_: messenger::Incoming, _: messenger::Responder| {}).await?.endpoint;
    /// let m = Messenger::new()?;
    /// let conn = m.make_connection(&at).await?;
    /// let sent = m.batch(|| {
    ///     (0..100).filter(|i| m.try_send_message(conn, NOOP, format!("record {i}"), None).is_ok()).count()
    /// });
    /// assert_eq!(sent, 100);
    /// # Ok(()) }
    /// ```
    pub fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        crate::runtime::batch::run(f)
    }

    /// Sends `body` to `dst_cb` at `dest` and waits until the peer
    /// acknowledges it (resending meanwhile), all within
    /// [`Config::request_timeout`] from the call. On inproc, where nothing
    /// is lost and no ACK is sent, it returns once the message has landed
    /// (its server loop's queue owns it, or its callback has it).
    pub async fn send_confirmed(
        &self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]>,
    ) -> Result<u64, Error> {
        let (tx, rx) = oneshot::channel();
        let timeout = self.inner.shared.config.request_timeout;
        let msg_id = self
            .send(
                dest.into(),
                dst_cb,
                body.as_ref(),
                Notify::Ack(tx),
                timeout,
                Mode::Wait,
            )
            .await?
            .msg_id;
        // Resolved by the ACK, or at the message's deadline by the resender.
        rx.await.unwrap_or_else(|_| Err(Error::Shutdown))?;
        Ok(msg_id)
    }

    /// Sends `body` to `dst_cb` at `dest` and waits for the reply, all
    /// within [`Config::request_timeout`] from the call. Dropping the
    /// future frees its callback.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use messenger::{ECHO, Messenger, Error};
    /// # let server = Messenger::new()?;
    /// # let at = "inproc://request-doc".parse()?;
    /// # server.listen_for_connection(&at, |_: messenger::Incoming, _: messenger::Responder| {}).await?;
    /// let m = Messenger::new()?;
    /// let conn = m.make_connection(&at).await?;
    /// let reply = m.request(conn, ECHO, b"ping").await?;
    /// assert_eq!(&reply.body[..], b"ping");
    /// // Nothing at callback 99 answers: the deadline does.
    /// let timeout = std::time::Duration::from_millis(50);
    /// let none = m.request_with_timeout(conn, 99, b"?", timeout).await;
    /// assert_eq!(none.err(), Some(Error::Timeout));
    /// # Ok(()) }
    /// ```
    pub fn request<'a>(
        &'a self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]> + 'a,
    ) -> impl Future<Output = Result<Incoming, Error>> + 'a {
        let timeout = self.inner.shared.config.request_timeout;
        self.request_with_timeout(dest, dst_cb, body, timeout)
    }

    /// [`request`](Self::request) with its own deadline, `timeout` from
    /// the call.
    ///
    /// A plain function returning the request's future, not an `async fn`:
    /// the future is built once, in place, instead of being moved into an
    /// outer one twice its size (callers box and move it per request).
    pub fn request_with_timeout<'a>(
        &'a self,
        dest: impl Into<Destination>,
        dst_cb: u64,
        body: impl AsRef<[u8]> + 'a,
        timeout: Duration,
    ) -> impl Future<Output = Result<Incoming, Error>> + 'a {
        let dest = dest.into();
        // Its span (for a subscriber or OpenTelemetry): where it went and to
        // which callback, never the body. Not built while debug is off
        // everywhere: a disabled span still costs its fields' recording
        // (for `log`) and its drop, about 150 instructions, a twentieth of
        // an inproc round trip.
        let span = tracing::level_enabled!(tracing::Level::DEBUG)
            .then(|| tracing::debug_span!("request", destination = %dest, dst_cb))
            .filter(|span| !span.is_disabled());
        let request = async move {
            let since = telemetry::start();
            // The one send path, called from here rather than through
            // `send` below: one future fewer around it. Scoped, so the
            // socket and peer are not kept while the reply is awaited.
            let (sent, channel) = {
                // Held while a send waits for room, if it must (rare): a
                // thread whose few fast arc-swap slots are all taken gets
                // counted references instead, correct and a little slower.
                let sockets = self.sockets()?;
                let (socket, peer) = sockets.find(&dest)?;
                // A channel per request over a network, the callback's slot
                // on inproc (see `Completion`).
                let (completion, channel) = if socket.transport == Transport::Inproc {
                    (Completion::Slot(None), None)
                } else {
                    let (tx, rx) = oneshot::channel();
                    (Completion::Channel(tx), Some(rx))
                };
                let notify = Notify::Reply(completion);
                let out = Outgoing {
                    socket,
                    peer,
                    dst_cb,
                    body: body.as_ref(),
                    notify,
                    timeout,
                    mode: Mode::Wait,
                };
                let sent = match self.inner.shared.send(out) {
                    // Sent without waiting (almost always): no future to
                    // hold.
                    futures::future::Either::Left(now) => now.into_inner()?,
                    futures::future::Either::Right(waiting) => waiting.await?,
                };
                (sent, channel)
            };
            // The reply, by channel or slot; the callback is freed if this
            // future is dropped while it waits.
            let callbacks = &self.inner.shared.callbacks;
            let reply = ReplyFuture::new(callbacks, sent.cb_id, channel, sent.deadline).await;
            match &reply {
                Ok(_) => telemetry::request_done(sent.transport, since),
                Err(e) => tracing::debug!(error = %e, "request failed"),
            }
            reply
        };
        // Instrumented only when its span is on: an inproc round trip is
        // well under a microsecond, and a wrapper costs on every poll. Boxed
        // then, so the span does not widen every request's future (which
        // callers move and keep per request in flight) when it is off.
        match span {
            None => futures::future::Either::Left(request),
            Some(span) => futures::future::Either::Right(Box::pin(
                tracing::Instrument::instrument(request, span),
            )),
        }
    }

    /// A concurrent server loop's handler: each call's future boxed, all
    /// of them under the messenger's limit on calls in flight.
    fn concurrent<F, Fut>(&self, slc: F) -> Handler
    where
        F: Fn(Incoming, Responder) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let limit = Arc::clone(&self.inner.handler_limit);
        let boxed = move |m: Incoming, r: Responder| -> Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(slc(m, r))
        };
        Handler::Concurrent(Arc::new(boxed), limit)
    }

    /// Every send above, as one [`Outgoing`] to the one send path: the
    /// destination's socket, what to tell whom, the deadline from the call,
    /// and whether it may wait.
    async fn send(
        &self,
        dest: Destination,
        dst_cb: u64,
        body: &[u8],
        notify: Notify,
        timeout: Duration,
        mode: Mode,
    ) -> Result<Sent, Error> {
        let sockets = self.sockets()?;
        let (socket, peer) = sockets.find(&dest)?;
        let out = Outgoing {
            socket,
            peer,
            dst_cb,
            body,
            notify,
            timeout,
            mode,
        };
        self.inner.shared.send(out).await
    }

    /// Connection events from now on (connected, handshake failed,
    /// disconnected, evicted, refused), each with its endpoint, remote
    /// address and reason: what libzmq's socket monitor gives. Bounded:
    /// the runtime never waits for a consumer; one that falls more than
    /// [`events::CAPACITY`](crate::events::CAPACITY) behind loses the oldest
    /// ([`Events::missed`](crate::events::Events::missed) counts them). Nothing is
    /// built while no consumer exists.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), messenger::Error> {
    /// use messenger::{Messenger, events::EventKind};
    ///
    /// let server = Messenger::new()?;
    /// let mut events = server.events();
    /// let at = "inproc://events-doc".parse()?;
    /// server.listen_for_connection(&at, |_, _| {}).await?;
    /// let client = Messenger::new()?;
    /// client.make_connection(&at).await?;
    /// let event = events.recv().await.expect("an event");
    /// assert_eq!(event.kind, EventKind::Connected);
    /// assert_eq!(event.peer, client.identity());
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> crate::events::Events {
        self.inner.shared.events.subscribe()
    }

    /// A snapshot of the counters, and of the gauges now: `connections`
    /// counts both our connections whose link is up and the peers
    /// connected to our listeners (what `messenger_connections` splits by
    /// direction and transport).
    pub fn stats(&self) -> StatsSnapshot {
        use telemetry::Source as _;
        let mut s = self.inner.shared.stats.snapshot();
        let g = self.inner.gauges();
        s.pending_callbacks = g.pending_callbacks;
        s.pending_messages = g.unacked;
        s.connections = g.connections.iter().flatten().sum();
        s.listeners = g.listeners;
        s
    }

    /// Shuts down cleanly: stops taking new messages for server loops
    /// (they are left unACKed, so peers keep them), lets queued and running
    /// server-loop work finish within [`Config::shutdown_grace`] (replies
    /// still go out), then fails every waiting callback with
    /// [`Error::Shutdown`], closes every socket and removes the ipc
    /// files it created.
    ///
    /// Called from inside one of this messenger's own server-loop calls (a
    /// handler that shuts its messenger down on a QUIT), it returns at
    /// once, as [`begin_shutdown`](Self::begin_shutdown) does: the loop
    /// waits for that call, so the call cannot wait for the loop.
    pub async fn shutdown(&self) {
        if server_loop::in_call_of(&self.inner.shared) {
            return self.begin_shutdown();
        }
        if tokio::runtime::Handle::try_current().is_err() {
            // Awaited off any runtime (a plain thread's `block_on`, as
            // `request` may be): its timers need one, so it runs on the
            // messenger's, and this waits for it there.
            let me = self.clone();
            let _ = self
                .inner
                .shared
                .spawn_joined(async move { me.finish_shutdown().await })
                .await;
            return;
        }
        self.finish_shutdown().await;
    }

    /// Begins [`shutdown`](Self::shutdown) and returns without waiting:
    /// nothing new is taken from now on (sends, binds and connects fail
    /// with [`Error::Shutdown`]), and the rest runs on the messenger's
    /// runtime. For code that cannot wait for it: a server-loop call of
    /// this messenger (the loop waits for it), a plain thread, a
    /// destructor.
    pub fn begin_shutdown(&self) {
        self.inner.shared.stop_accepting();
        self.inner.loops.tracker.close();
        let me = self.clone();
        self.inner
            .shared
            .spawn(async move { me.finish_shutdown().await });
    }

    /// The whole of [`shutdown`](Self::shutdown), from the start (its
    /// first steps may have run already: each is idempotent).
    async fn finish_shutdown(&self) {
        // Server loops first: they take nothing new, drain what their
        // queues own, and may still reply, within the grace period.
        let loops = &self.inner.loops;
        self.inner.shared.stop_accepting();
        loops.tracker.close();
        let grace = self.inner.shared.config.shutdown_grace;
        if tokio::time::timeout(grace, loops.tracker.wait())
            .await
            .is_err()
        {
            loops.abandon.cancel();
            loops.tracker.wait().await;
        }
        // What is queued (replies, the ACKs of replies we just got) reaches
        // the wire as each session closes: its task flushes for at most
        // the linger period.
        let linger = self.inner.shared.config.linger;
        let closing = self.inner.take_everything();
        for open in &closing {
            self.inner.shared.fail_socket(&open.ctx, Error::Shutdown);
            for unacked in open.ctx.all_unacked() {
                unacked.close(&Error::Shutdown);
            }
        }
        self.inner.shared.callbacks.fail_all(&Error::Shutdown);
        futures::future::join_all(closing.into_iter().map(|mut open| async move {
            open.tasks.close_gracefully(linger).await;
        }))
        .await;
        self.inner.shutdown.cancel();
        // Let callbacks spawned by fail_all run before the caller goes on.
        tokio::task::yield_now().await;
    }
}

/// Who a message with this (optional) callback notifies.
fn reply_to(callback: Option<Callback>) -> Notify {
    callback.map_or(Notify::Nothing, |c| {
        Notify::Reply(Completion::Callback(c.into_inner()))
    })
}
