//! inproc: sessions between messengers of one process, at memory speed.
//!
//! Nothing between two messengers of one process can be lost, reordered
//! or duplicated, so inproc skips everything only a network needs: no
//! wire format (a message is a [`Payload`] whose body is a `Bytes`, never
//! copied again), no ACKs, no resends, no duplicate windows. A send lands
//! the message in the peer's messenger from the sender's own task
//! ([`Pair::land`]), through the same ProcessMessage as every transport
//! (`runtime::process::Landing`): a reply completes the waiting callback,
//! an ECHO is answered in place, a server-loop message enters the loop's
//! bounded queue (full: the sender waits, or gets `Full`). None of that
//! runs user code in the sender's task: callbacks run on their own tasks
//! and server loops on theirs, as on tcp.
//!
//! A process-wide registry maps names to bound listeners. Dialling one
//! makes a [`Pair`]: a session on each side whose way out leads to the
//! other side. A routing id that a live session holds is refused, as on
//! tcp. When either side's session ends the pair is closed: the other
//! side's task sees it and ends its session, failing what waited on it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::driver::{End, Who};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::events::PeerAddr;
use crate::proto::wire::{self, ACK, Payload};
use crate::runtime::process::{self, Landing, Refused};
use crate::runtime::shared::Shared;
use crate::runtime::socket::{InprocLink, Out, RouteError, Session, SocketCtx};
use crate::stats::bump;
use crate::transport::outbox::Push;
use zmtp::ZmtpError;

/// Which side of a pair a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SideId {
    Connection,
    Listener,
}

/// One side of a pair: where a message for it lands.
struct Side {
    /// The socket messages for this side land on.
    socket: Arc<SocketCtx>,
    /// That socket's messenger (callbacks, counters).
    shared: Arc<Shared>,
    /// Its session while the pair is open. Held, not weakly: a landing
    /// borrows it through arc-swap's per-thread slots and moves no
    /// reference count (upgrading a `Weak` wrote the session's count from
    /// both worker threads on every message). Cleared when the pair closes
    /// ([`Pair::close`]), which breaks the cycle session -> link -> pair ->
    /// session.
    session: ArcSwapOption<Session>,
}

/// Two sessions joined in one process.
pub(crate) struct Pair {
    /// The dialling side.
    connection: Side,
    /// The listening side.
    listener: Side,
    /// Cancelled when either session ends.
    closed: CancellationToken,
}

impl Pair {
    /// Ends the pair: both tasks see it, and it lets its sessions go.
    /// Called when either session ends, and when a side's task is dropped
    /// without ending its session (its runtime went away).
    fn close(&self) {
        self.closed.cancel();
        self.connection.session.store(None);
        self.listener.session.store(None);
    }

    fn side(&self, id: SideId) -> &Side {
        match id {
            SideId::Connection => &self.connection,
            SideId::Listener => &self.listener,
        }
    }

    fn other(&self, id: SideId) -> &Side {
        match id {
            SideId::Connection => &self.listener,
            SideId::Listener => &self.connection,
        }
    }

    /// Lands `msg`, sent from side `from` (whose session is `ours`), on
    /// the other side, without waiting: ProcessMessage there
    /// ([`Landing`]); an ECHO's answer lands back on `from`.
    fn land(
        &self,
        from: SideId,
        ours: &Session,
        msg: Payload,
        now: Instant,
    ) -> Result<(), Refused> {
        let (to, back) = (self.other(from), self.side(from));
        let theirs = to.session.load();
        let Some(theirs) = theirs
            .as_ref()
            .filter(|s| !s.is_closed() && !ours.is_closed())
        else {
            return Err(Refused::Gone);
        };
        Landing {
            to: process::Side {
                socket: &to.socket,
                shared: &to.shared,
                session: theirs,
            },
            from: Some(process::Side {
                socket: &back.socket,
                shared: &back.shared,
                session: ours,
            }),
            refused: None,
        }
        .land(msg, now)
    }
}

/// The way out of one inproc session: the pair it belongs to.
pub(crate) struct Tx {
    /// Which side of the pair this session is.
    side: SideId,
    /// Set once both sessions exist. The pair holds both sockets; it goes
    /// with the sessions, which go when their owners (routing table, link)
    /// let them go at their end. Sends check the sessions' `closed` flags,
    /// so reading it takes no lock.
    pair: OnceLock<Arc<Pair>>,
}

impl Tx {
    fn new(side: SideId) -> Arc<Self> {
        Arc::new(Tx {
            side,
            pair: OnceLock::new(),
        })
    }

    fn pair(&self) -> Option<&Arc<Pair>> {
        self.pair.get()
    }
}

impl InprocLink for Tx {
    fn land(&self, ours: &Session, msg: Payload, now: Instant) -> Result<(), Refused> {
        match self.pair() {
            Some(pair) => pair.land(self.side, ours, msg, now),
            None => Err(Refused::Gone),
        }
    }

    fn send(&self, ours: &Session, payload: &Bytes) -> Result<(), Push> {
        // Our own bytes: they parse (and an ACK needs no delivery).
        let Ok(msg) = wire::parse(payload) else {
            return Ok(());
        };
        if msg.dst_cb == ACK {
            return Ok(());
        }
        let msg_id = msg.msg_id;
        match self.land(ours, msg, crate::clock::now()) {
            Ok(()) => {
                // In-process delivery is its ACK.
                ours.unacked.ack(msg_id);
                Ok(())
            }
            Err(Refused::Full(_)) => Err(Push::Full),
            Err(Refused::Gone) => Err(Push::Closed),
        }
    }

    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let Some(pair) = self.pair() else {
                return;
            };
            if let Some(slc) = &pair.other(self.side).socket.slc {
                let _ = slc.reserve().await;
            }
        })
    }

    fn close(&self) {
        if let Some(pair) = self.pair() {
            pair.close();
        }
    }
}

/// A bound inproc name: where dialling it leads.
struct Binding {
    /// Names this binding, so a later one of the same name is not
    /// removed by an old registration's drop.
    token: u64,
    /// The listener's socket: dialled sessions join it.
    socket: Arc<SocketCtx>,
    /// Its messenger.
    shared: Arc<Shared>,
    /// Fired when the listener closes: dialling it then fails.
    stop: CancellationToken,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Binding>>> = LazyLock::new(Default::default);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, HashMap<String, Binding>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A name held in the registry; dropping it frees the name.
pub(crate) struct Registration {
    /// The name held.
    name: String,
    /// Which binding of that name: only ours is removed.
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
) -> Result<Registration, Error> {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let mut reg = registry();
    if reg.contains_key(name) {
        return Err(Error::InUse(Endpoint::Inproc(name.to_owned())));
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

/// A connection's inproc session, as its driver holds it. Dropped, it
/// closes the pair (see [`Pair::close`]).
pub(crate) struct Conn {
    /// Fires when the pair ends, from either side.
    closed: CancellationToken,
    /// The pair, closed when the driver lets go of it.
    pair: Arc<Pair>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.pair.close();
    }
}

/// Closes the pair when the listener side's task ends, however it ends.
struct CloseOnDrop(Arc<Pair>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Conn {
    /// Lasts until the listener's side ends or `stop`. Messages need no
    /// task of ours: they land from their senders' tasks. What is left is
    /// the timer of what the connection sent while it had no link (resent
    /// when the link came up, and refused then by a full server loop):
    /// its resends and deadlines.
    pub(crate) async fn traffic(
        &mut self,
        socket: &SocketCtx,
        session: &Session,
        stop: &CancellationToken,
    ) -> End {
        loop {
            let next = socket.poll_timeout(session);
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(crate::clock::tokio_at(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return End::Stopped,
                _ = self.closed.cancelled() => return End::PeerClosed,
                () = socket.timers.notified() => {}
                () = due => {
                    socket.handle_timeout(Some(session), &session.unacked, crate::clock::now());
                }
            }
        }
    }
}

/// Connects `socket` (a connection of the messenger `shared`) to
/// `inproc://name`.
pub(crate) fn dial(
    name: &str,
    socket: &Arc<SocketCtx>,
    shared: &Arc<Shared>,
) -> Result<(Conn, Arc<Session>), Error> {
    let endpoint = || Endpoint::Inproc(name.to_owned());
    let (listener, listener_shared, stop) = {
        let reg = registry();
        let b = reg.get(name).ok_or_else(|| Error::NotBound(endpoint()))?;
        (Arc::clone(&b.socket), Arc::clone(&b.shared), b.stop.clone())
    };
    let head = listener.identity.clone();
    let unacked = listener.session_unacked();
    let (their_tx, our_tx) = (Tx::new(SideId::Listener), Tx::new(SideId::Connection));
    let their_out = Out::Inproc(Arc::clone(&their_tx) as Arc<dyn InprocLink>);
    let theirs = listener
        .add_route(socket.identity.clone(), |id| {
            Session::new(id, head, their_out, unacked).at(PeerAddr::Inproc)
        })
        .map_err(|e| {
            if e == RouteError::InUse {
                bump(&listener.stats.local().routing_id_conflicts);
            }
            Error::Handshake {
                endpoint: endpoint(),
                source: ZmtpError::Refused(match e {
                    RouteError::InUse => crate::runtime::socket::ROUTING_ID_IN_USE,
                    RouteError::Full | RouteError::Closed => "the listener takes no new peers",
                }),
            }
        })?;
    listener_shared.begin_session(&listener, &theirs);
    let ours = Arc::new(
        Session::new(
            Bytes::new(),
            Bytes::new(),
            Out::Inproc(Arc::clone(&our_tx) as Arc<dyn InprocLink>),
            socket.session_unacked(),
        )
        .at(PeerAddr::Inproc),
    );
    let closed = CancellationToken::new();
    let pair = Arc::new(Pair {
        connection: Side {
            socket: Arc::clone(socket),
            shared: Arc::clone(shared),
            session: ArcSwapOption::from(Some(Arc::clone(&ours))),
        },
        listener: Side {
            socket: Arc::clone(&listener),
            shared: Arc::clone(&listener_shared),
            session: ArcSwapOption::from(Some(Arc::clone(&theirs))),
        },
        closed: closed.clone(),
    });
    for tx in [&our_tx, &their_tx] {
        let _ = tx.pair.set(Arc::clone(&pair));
    }
    // The listener's side ends with the pair or the listener.
    let their_end = closed.clone();
    let closer = CloseOnDrop(Arc::clone(&pair));
    tokio::spawn(async move {
        let _closer = closer;
        let end = tokio::select! {
            biased;
            _ = stop.cancelled() => End::Stopped,
            _ = their_end.cancelled() => End::PeerClosed,
        };
        listener_shared.end_session(&listener, &theirs, &end);
        let who = Who {
            remote: &PeerAddr::Inproc,
            peer: &theirs.peer,
        };
        end.report(&listener, who);
    });
    Ok((Conn { closed, pair }, ours))
}
