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

use super::{OpenArgs, RateLimit, SocketTasks};
use crate::endpoint::Endpoint;
use crate::error::{BindError, ConnectError};
use crate::stats::bump;

type Frames = Vec<Bytes>;
/// Routing id -> (connection token, channel towards that connection).
type PeerTable = Arc<Mutex<HashMap<Bytes, (u64, mpsc::Sender<Frames>)>>>;

struct Binding {
    token: u64,
    to_router: mpsc::Sender<Frames>,
    peers: PeerTable,
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
        on_disconnect: _,
    } = args;
    let (to_router, mut from_peers) = mpsc::channel::<Frames>(capacity);
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
        while let Some(frames) = from_peers.recv().await {
            if !reader_ctx.deliver(frames, &inbound, &mut warn).await {
                break;
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
        inproc: Some(InprocHandle::Listener(registration)),
    })
}

/// Connects to `inproc://name`.
pub(crate) fn connect(
    name: &str,
    capacity: usize,
    args: OpenArgs,
) -> Result<SocketTasks, ConnectError> {
    let OpenArgs {
        identity,
        ctx,
        mut out_rx,
        inbound,
        on_disconnect,
    } = args;
    let (to_me, mut from_router) = mpsc::channel::<Frames>(capacity);
    let identity_for_guard = identity.clone();
    let (to_router, peers) = {
        let reg = lock(&REGISTRY);
        let b = reg.get(name).ok_or_else(|| ConnectError::Refused {
            endpoint: Endpoint::Inproc(name.to_owned()),
            message: "nothing is bound to this name".into(),
        })?;
        (b.to_router.clone(), Arc::clone(&b.peers))
    };
    // A routing id seen again replaces the old peer, as a zeromq ROUTER does.
    let conn_token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    lock(&peers).insert(identity.clone(), (conn_token, to_me));

    let reader_ctx = Arc::clone(&ctx);
    let reader = tokio::spawn(async move {
        let mut warn = RateLimit::new();
        while let Some(frames) = from_router.recv().await {
            if !reader_ctx.deliver(frames, &inbound, &mut warn).await {
                return;
            }
        }
        // Every sender is gone: the listener closed.
        reader_ctx.mark_closed();
        let _ = on_disconnect.send(Arc::clone(&reader_ctx));
    });

    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let frames = vec![identity.clone(), Bytes::new(), out.payload];
            if to_router.send(frames).await.is_err() {
                // The listener closed; the reader reports it.
                bump(&ctx.stats.send_failures);
                break;
            }
        }
    });
    let unregister = ConnectionGuard {
        peers,
        identity: identity_for_guard,
        token: conn_token,
    };

    Ok(SocketTasks {
        tasks: vec![reader, writer],
        created_file: None,
        inproc: Some(InprocHandle::Connection(unregister)),
    })
}

/// Removes a connection from its listener's peer table when it closes,
/// unless a newer connection with the same routing id replaced it.
pub(crate) struct ConnectionGuard {
    peers: PeerTable,
    identity: Bytes,
    token: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut peers = lock(&self.peers);
        if peers
            .get(&self.identity)
            .is_some_and(|(token, _)| *token == self.token)
        {
            peers.remove(&self.identity);
        }
    }
}

/// What an inproc socket holds in the registry while it is open.
pub(crate) enum InprocHandle {
    /// A bound name.
    Listener(#[allow(dead_code)] Registration),
    /// A place in a listener's peer table.
    Connection(#[allow(dead_code)] ConnectionGuard),
}
