//! Connection events for library users: what libzmq's socket monitor
//! gives (connected, handshake failed, disconnected, evicted, refused),
//! each with the endpoint, the remote address and the reason.
//!
//! One bounded channel per messenger (a tokio broadcast channel of
//! [`CAPACITY`]): the runtime never waits for a consumer. A
//! consumer that falls further behind than that loses the oldest events,
//! and learns how many from [`Events::missed`]. Nothing is made or sent
//! while nobody listens.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::ReusableBoxFuture;

use crate::address::{ConnectionId, ListenerId};
use crate::endpoint::Endpoint;

/// Events a consumer may fall behind by before the oldest are dropped:
/// a few seconds of a listener's worst churn (thousands of connections a
/// second), about 200 KiB at most per messenger while someone listens.
pub const CAPACITY: usize = 1024;

/// Who is at the other end of a connection, as the operating system tells
/// it: for logs and events. Never a metrics label (unbounded values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A tcp peer's address and port.
    Tcp(SocketAddr),
    /// An ipc peer's credentials, where the OS gives them (`SO_PEERCRED`
    /// on Linux): its process id when known, and its user id.
    Ipc {
        /// The peer's process id (at connect time).
        pid: Option<u32>,
        /// The peer's user id.
        uid: Option<u32>,
    },
    /// Another messenger of this process.
    Inproc,
    /// The OS would not say.
    Unknown,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_unknown = |v: Option<u32>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        match self {
            PeerAddr::Tcp(addr) => write!(f, "{addr}"),
            PeerAddr::Ipc { pid, uid } => {
                write!(f, "pid={} uid={}", or_unknown(*pid), or_unknown(*uid))
            }
            PeerAddr::Inproc => f.write_str("inproc"),
            PeerAddr::Unknown => f.write_str("unknown"),
        }
    }
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A session began: a peer finished its handshake (and proof) on one
    /// of our listeners, or one of our connections' links came up (first
    /// dial and every redial).
    Connected,
    /// A peer's handshake failed before a session began: a bad greeting,
    /// a handshake that did not finish in time, a peer that left half-way.
    HandshakeFailed,
    /// A session ended: the peer left, broke a rule, stopped answering
    /// heartbeats, or we shut down. A connection redials after this.
    Disconnected,
    /// A listener's idle session gave way to a newcomer at a connection
    /// limit.
    Evicted,
    /// A peer was refused for cause: its routing id is live on this
    /// listener, its CURVE key is not on the allow-list, its proof was
    /// wrong, or its address is over its share; or a listener refused one
    /// of our connections.
    Refused,
}

/// One connection event (see [`Messenger::events`](crate::Messenger::events)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The listener's bound endpoint, or the endpoint a connection dials.
    pub endpoint: Endpoint,
    /// The listener it happened on, if on one.
    pub listener: Option<ListenerId>,
    /// The connection it happened on, if on one.
    pub connection: Option<ConnectionId>,
    /// The remote end, as far as the OS tells it.
    pub remote: PeerAddr,
    /// The peer's routing id on a listener once its READY was read (a
    /// generated `00...` id for an anonymous peer); empty otherwise. The
    /// peer's bytes: escape them before printing.
    pub peer: Bytes,
    /// Why, for everything but `Connected`: printable ASCII, with the
    /// peer's bytes in it (an ERROR reason) already escaped.
    pub reason: Option<String>,
    /// When it happened.
    pub at: SystemTime,
}

/// A messenger's events, in order, from the moment this was made
/// ([`Messenger::events`](crate::Messenger::events)). Also a
/// [`futures::Stream`] of [`Event`]s.
pub struct Events {
    /// The next `recv`, kept across polls for the `Stream` form.
    next: ReusableBoxFuture<'static, (Received, broadcast::Receiver<Event>)>,
    /// Events this consumer was too slow for and lost.
    missed: u64,
}

/// What one receive on the channel gave.
type Received = Result<Event, broadcast::error::RecvError>;

async fn receive(mut rx: broadcast::Receiver<Event>) -> (Received, broadcast::Receiver<Event>) {
    let got = rx.recv().await;
    (got, rx)
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Events {
            next: ReusableBoxFuture::new(receive(rx)),
            missed: 0,
        }
    }

    /// The next event; `None` once the messenger is gone. Events dropped
    /// because this consumer fell more than [`CAPACITY`] behind are
    /// skipped and counted in [`missed`](Self::missed).
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Events this consumer lost by falling behind (the oldest go first,
    /// as with a tokio broadcast channel).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            let (got, rx) = std::task::ready!(self.next.poll(cx));
            self.next.set(receive(rx));
            match got {
                Ok(event) => return Poll::Ready(Some(event)),
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::RecvError::Closed) => return Poll::Ready(None),
            }
        }
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

/// Where a messenger's events go: sends nothing, and builds nothing,
/// while nobody listens.
#[derive(Debug)]
pub(crate) struct Emitter {
    /// The bounded channel (`CAPACITY`); its receiver count says whether
    /// anyone listens.
    tx: broadcast::Sender<Event>,
}

impl Emitter {
    pub(crate) fn new() -> Self {
        Emitter {
            tx: broadcast::Sender::new(CAPACITY),
        }
    }

    /// A new consumer, from now on.
    pub(crate) fn subscribe(&self) -> Events {
        Events::new(self.tx.subscribe())
    }

    /// Sends the event `make` builds, if anyone listens. Never waits: a
    /// full channel drops its oldest event.
    pub(crate) fn emit(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(make());
        }
    }
}

/// `text` with every control character (newlines, ESC, ...) escaped as
/// Rust would write it (`\n`, `\u{1b}`): what a reason made of the
/// peer's bytes may be once it reaches a log line, an event or a terminal.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Event {
    /// An event on the socket `origin` names.
    pub(crate) fn new(
        kind: EventKind,
        origin: &crate::address::Origin,
        remote: PeerAddr,
        peer: &Bytes,
        reason: Option<String>,
    ) -> Self {
        use crate::address::SocketKind;
        let (listener, connection) = match origin.kind {
            SocketKind::Listener(id) => (Some(id), None),
            SocketKind::Connection(id) => (None, Some(id)),
        };
        Event {
            kind,
            endpoint: origin.endpoint.clone(),
            listener,
            connection,
            remote,
            peer: peer.clone(),
            reason,
            at: SystemTime::now(),
        }
    }
}
