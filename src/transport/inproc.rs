//! inproc: sessions between messengers of one process, over channels.
//!
//! A process-wide registry maps names to bound listeners. Dialling one
//! makes a pair of bounded channels of payloads (`Bytes`, never copied), a
//! session on each side, and a task on each side that reads its channel
//! and runs ProcessMessage in place, as a tcp or ipc driver does. A routing
//! id that a live session holds is refused, as on tcp. When one side's
//! session ends its sender is dropped, so the other side reads what was
//! already sent and then sees the end: a peer's last reply is never lost
//! to its disconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::driver::End;
use super::outbox::Push;
use super::{Out, RouteError, Session, SocketCtx};
use crate::dedup::DedupWindow;
use crate::dispatch::Shared;
use crate::endpoint::Endpoint;
use crate::error::{BindError, ConnectError};
use crate::zmtp::ZmtpError;

/// Payloads a session task takes per wake-up.
const BATCH: usize = 64;

/// The sending half of one inproc session.
pub(crate) struct Tx {
    /// Dropped on close, which ends the peer's reader once it has read
    /// what was sent.
    tx: Mutex<Option<mpsc::Sender<Bytes>>>,
}

impl Tx {
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Tx {
            tx: Mutex::new(Some(tx)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<mpsc::Sender<Bytes>>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn send(&self, payload: Bytes) -> Result<(), Push> {
        match self.lock().as_ref() {
            None => Err(Push::Closed),
            Some(tx) => tx.try_send(payload).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Push::Full,
                mpsc::error::TrySendError::Closed(_) => Push::Closed,
            }),
        }
    }

    /// Whether the channel has room now.
    pub(crate) fn has_room(&self) -> bool {
        self.lock().as_ref().is_some_and(|tx| tx.capacity() > 0)
    }

    /// Waits until the channel has room (or is closed).
    pub(crate) async fn room(&self) {
        let tx = self.lock().clone();
        if let Some(tx) = tx {
            let _ = tx.reserve().await;
        }
    }

    pub(crate) fn close(&self) {
        self.lock().take();
    }
}

struct Binding {
    token: u64,
    socket: Arc<SocketCtx>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Binding>>> = LazyLock::new(Default::default);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, HashMap<String, Binding>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A name held in the registry; dropping it frees the name.
pub(crate) struct Registration {
    name: String,
    token: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut reg = registry();
        if reg.get(&self.name).is_some_and(|b| b.token == self.token) {
            reg.remove(&self.name);
        }
    }
}

/// Binds `inproc://name` for `socket`; its sessions stop on `stop`.
pub(crate) fn bind(
    name: &str,
    socket: &Arc<SocketCtx>,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> Result<Registration, BindError> {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let mut reg = registry();
    if reg.contains_key(name) {
        return Err(BindError::InUse(Endpoint::Inproc(name.to_owned())));
    }
    reg.insert(
        name.to_owned(),
        Binding {
            token,
            socket: Arc::clone(socket),
            shared: Arc::clone(shared),
            stop: stop.clone(),
        },
    );
    Ok(Registration {
        name: name.to_owned(),
        token,
    })
}

/// The reading half of a connection's inproc session.
pub(crate) struct Conn {
    rx: mpsc::Receiver<Bytes>,
}

impl Conn {
    /// Reads and processes until the listener's side ends or `stop`.
    pub(crate) async fn traffic(
        &mut self,
        socket: &Arc<SocketCtx>,
        session: &Arc<Session>,
        shared: &Shared,
        stop: &CancellationToken,
    ) -> End {
        run(&mut self.rx, socket, session, shared, stop).await
    }
}

/// Reads a session's channel and processes each payload in place.
async fn run(
    rx: &mut mpsc::Receiver<Bytes>,
    socket: &Arc<SocketCtx>,
    session: &Arc<Session>,
    shared: &Shared,
    stop: &CancellationToken,
) -> End {
    let cfg = &socket.config;
    let mut dedup = DedupWindow::new(cfg.dedup_max_gaps, cfg.dedup_gap_ttl);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.cancelled() => return End::Stopped,
            _ = socket.link_dead.notified(), if !socket.is_listener() => return End::Dead,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return End::PeerClosed;
        }
        let now = tokio::time::Instant::now();
        for payload in batch.drain(..) {
            match socket.parse_payload(payload) {
                Ok(p) => {
                    shared.process(socket, session, &mut dedup, p, now);
                }
                Err(e) => socket.malformed(&e),
            }
        }
    }
}

/// Connects `socket` (a connection) to `inproc://name`.
pub(crate) fn dial(
    name: &str,
    socket: &Arc<SocketCtx>,
) -> Result<(Conn, Arc<Session>), ConnectError> {
    let endpoint = || Endpoint::Inproc(name.to_owned());
    let (listener, shared, stop) = {
        let reg = registry();
        let b = reg
            .get(name)
            .ok_or_else(|| ConnectError::NotBound(endpoint()))?;
        (Arc::clone(&b.socket), Arc::clone(&b.shared), b.stop.clone())
    };
    let capacity = socket.config.send_queue_capacity.max(1);
    let (to_listener, from_conn) = mpsc::channel(capacity);
    let (to_conn, from_listener) = mpsc::channel(capacity);
    let head = listener.identity.clone();
    let unacked = listener.session_unacked();
    let theirs = listener
        .add_route(socket.identity.clone(), |id| {
            Session::new(id, head, Out::Inproc(Tx::new(to_conn)), unacked)
        })
        .map_err(|e| {
            if e == RouteError::InUse {
                crate::stats::bump(&listener.stats.routing_id_conflicts);
            }
            ConnectError::Handshake {
                endpoint: endpoint(),
                source: ZmtpError::Refused(match e {
                    RouteError::InUse => super::ROUTING_ID_IN_USE,
                    RouteError::Full | RouteError::Closed => "the listener takes no new peers",
                }),
            }
        })?;
    tokio::spawn(async move {
        let mut rx = from_conn;
        let end = run(&mut rx, &listener, &theirs, &shared, &stop).await;
        listener.end_session(&theirs, &shared);
        end.report(&listener);
    });
    let ours = Arc::new(Session::new(
        Bytes::new(),
        Bytes::new(),
        Out::Inproc(Tx::new(to_listener)),
        socket.session_unacked(),
    ));
    Ok((Conn { rx: from_listener }, ours))
}
