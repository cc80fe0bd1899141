//! inproc: our own in-process transport (the `zeromq` crate has none).
//!
//! A process-wide registry maps names to bound listeners. A connection
//! registers its routing id and a channel for frames towards it in the
//! listener's peer table, and gets the listener's inbound channel. Frames are
//! `bytes::Bytes` moved through tokio channels, never copied, and have the
//! same shapes as on tcp: the listener reads `[peer_id, "", payload]`, the
//! connection reads `[router_identity, "", payload]`. Like a libzmq ROUTER,
//! the listener drops (and counts) a message whose peer is gone or whose
//! queue is full, instead of blocking its other peers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Inbound, OpenArgs, RateLimit, SocketCtx, SocketTasks};
use crate::endpoint::Endpoint;
use crate::error::{BindError, ConnectError};
use crate::stats::bump;

type Frames = Vec<Bytes>;

/// What a connection sends its listener.
enum ToRouter {
    /// A message, `[routing id, "", payload]`.
    Frames(Frames),
    /// The connection closed: its session ends after the messages before
    /// this one have been handed on (a peer's last reply must not lose the
    /// race against its own disconnect).
    End { identity: Bytes, session: u64 },
}
/// Routing id -> (connection token, channel towards that connection).
type PeerTable = Arc<Mutex<HashMap<Bytes, (u64, mpsc::Sender<Frames>)>>>;

struct Binding {
    token: u64,
    to_router: mpsc::Sender<ToRouter>,
    peers: PeerTable,
    /// The listener's context, so a new connection can reset its session
    /// there before its first message.
    ctx: Arc<SocketCtx>,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Binding>>> = LazyLock::new(Default::default);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A name held in the registry; dropping it frees the name.
pub(crate) struct Registration {
    name: String,
    token: u64,
    peers: PeerTable,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut reg = lock(&REGISTRY);
        if reg.get(&self.name).is_some_and(|b| b.token == self.token) {
            reg.remove(&self.name);
        }
        drop(reg);
        // Dropping the senders ends every connection's reader: that is how
        // a connection learns its listener closed.
        lock(&self.peers).clear();
    }
}

/// Binds `inproc://name`.
pub(crate) fn bind(name: &str, capacity: usize, args: OpenArgs) -> Result<SocketTasks, BindError> {
    let OpenArgs {
        identity,
        ctx,
        mut out_rx,
        inbound,
    } = args;
    let (to_router, mut from_peers) = mpsc::channel::<ToRouter>(capacity);
    let peers: PeerTable = Arc::default();
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    {
        let mut reg = lock(&REGISTRY);
        if reg.contains_key(name) {
            return Err(BindError::InUse(Endpoint::Inproc(name.to_owned())));
        }
        reg.insert(
            name.to_owned(),
            Binding {
                token,
                to_router,
                peers: Arc::clone(&peers),
                ctx: Arc::clone(&ctx),
            },
        );
    }
    let registration = Registration {
        name: name.to_owned(),
        token,
        peers: Arc::clone(&peers),
    };

    let reader_ctx = Arc::clone(&ctx);
    let reader = tokio::spawn(async move {
        let mut warn = RateLimit::new();
        while let Some(m) = from_peers.recv().await {
            match m {
                ToRouter::Frames(frames) => {
                    if !reader_ctx.deliver(frames, &inbound, &mut warn).await {
                        break;
                    }
                }
                ToRouter::End { identity, session } => {
                    reader_ctx.end_session(&identity, session);
                }
            }
        }
    });

    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let target = lock(&peers).get(&out.peer).map(|(_, s)| s.clone());
            let Some(target) = target else {
                bump(&ctx.stats.send_failures);
                continue;
            };
            let frames = vec![identity.clone(), Bytes::new(), out.payload];
            match target.try_send(frames) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => bump(&ctx.stats.send_failures),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    bump(&ctx.stats.send_failures);
                    lock(&peers).remove(&out.peer);
                    ctx.forget_peer(&out.peer);
                }
            }
        }
    });

    Ok(SocketTasks {
        tasks: vec![reader, writer],
        created_file: None,
        inproc: Some(registration),
        private: None,
        flushing: Vec::new(),
        stop: None,
    })
}

/// A live inproc session: the channel into the listener, its reader task,
/// and our place in the listener's peer table.
pub(crate) struct InprocLink {
    to_router: mpsc::Sender<ToRouter>,
    identity: Bytes,
    reader: tokio::task::JoinHandle<()>,
    _guard: ConnectionGuard,
}

impl InprocLink {
    pub(crate) async fn send(&mut self, payload: Bytes) -> Result<(), String> {
        let frames = vec![self.identity.clone(), Bytes::new(), payload];
        self.to_router
            .send(ToRouter::Frames(frames))
            .await
            .map_err(|_| "the listener closed".to_owned())
    }
}

impl Drop for InprocLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Connects to `inproc://name`. `down` fires when the listener closes.
pub(crate) fn dial(
    name: &str,
    identity: &Bytes,
    capacity: usize,
    ctx: &Arc<SocketCtx>,
    inbound: &mpsc::Sender<Inbound>,
    down: tokio::sync::oneshot::Sender<()>,
) -> Result<InprocLink, ConnectError> {
    let (to_me, mut from_router) = mpsc::channel::<Frames>(capacity);
    let (to_router, peers, listener) = {
        let reg = lock(&REGISTRY);
        let b = reg.get(name).ok_or_else(|| ConnectError::Refused {
            endpoint: Endpoint::Inproc(name.to_owned()),
            message: "nothing is bound to this name".into(),
        })?;
        (
            b.to_router.clone(),
            Arc::clone(&b.peers),
            Arc::clone(&b.ctx),
        )
    };
    // A new connection is a new session, as a zeromq ROUTER sees it; it
    // ends when the connection closes (`ConnectionGuard`).
    let session = listener.begin_session(identity);
    // A routing id seen again replaces the old peer, as a zeromq ROUTER does.
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    lock(&peers).insert(identity.clone(), (token, to_me));

    let reader_ctx = Arc::clone(ctx);
    let inbound = inbound.clone();
    let reader = tokio::spawn(async move {
        let mut warn = RateLimit::new();
        while let Some(frames) = from_router.recv().await {
            if !reader_ctx.deliver(frames, &inbound, &mut warn).await {
                return;
            }
        }
        // Every sender is gone: the listener closed.
        let _ = down.send(());
    });

    Ok(InprocLink {
        to_router: to_router.clone(),
        identity: identity.clone(),
        reader,
        _guard: ConnectionGuard {
            peers,
            identity: identity.clone(),
            token,
            listener,
            session,
            to_router,
        },
    })
}

/// Removes a connection from its listener's peer table when it closes,
/// unless a newer connection with the same routing id replaced it, and ends
/// its session there, so the listener's requests waiting on it fail with
/// `Disconnected` (as a tcp or ipc peer's relay reports its end).
pub(crate) struct ConnectionGuard {
    peers: PeerTable,
    identity: Bytes,
    token: u64,
    listener: Arc<SocketCtx>,
    session: u64,
    to_router: mpsc::Sender<ToRouter>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        {
            let mut peers = lock(&self.peers);
            if peers
                .get(&self.identity)
                .is_some_and(|(token, _)| *token == self.token)
            {
                peers.remove(&self.identity);
            }
        }
        // Behind our last messages; at once if the listener's queue is full
        // or gone. A no-op if a newer connection with this id began since.
        let end = ToRouter::End {
            identity: self.identity.clone(),
            session: self.session,
        };
        if self.to_router.try_send(end).is_err() {
            self.listener.end_session(&self.identity, self.session);
        }
    }
}
