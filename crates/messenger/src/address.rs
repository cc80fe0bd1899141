//! Where messages go and come from: connection and listener ids, and the
//! destinations they name. The errors name destinations too, so these sit
//! below them.

use std::fmt;

use bytes::Bytes;

use crate::endpoint::Endpoint;

/// Which socket something belongs to: a listener (our ROUTER) or a
/// connection (our DEALER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    /// A listener, by id.
    Listener(ListenerId),
    /// A connection, by id.
    Connection(ConnectionId),
}

impl SocketKind {
    /// The kind in one word (ids are assigned far below 2^63): what a
    /// waiting callback stores to name its socket.
    pub(crate) fn tag(self) -> u64 {
        match self {
            SocketKind::Listener(id) => (id.0 << 1) | 1,
            SocketKind::Connection(id) => id.0 << 1,
        }
    }
}

/// Where a received message came in: shared by every message of a socket
/// (one reference count per message, no copy of the endpoint).
#[derive(Debug)]
pub(crate) struct Origin {
    /// The listener's bound endpoint, or the endpoint a connection dialled.
    pub(crate) endpoint: Endpoint,
    /// Which socket: names the reply's destination.
    pub(crate) kind: SocketKind,
}

/// Identifies a connection made with [`Messenger::make_connection`](crate::Messenger::make_connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Identifies a listener made with [`Messenger::listen_for_connection`](crate::Messenger::listen_for_connection).
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
    pub(crate) fn of(kind: SocketKind, peer: &Bytes) -> Self {
        match kind {
            SocketKind::Connection(id) => Destination::Connection(id),
            SocketKind::Listener(listener) => Destination::Peer {
                listener,
                peer: peer.clone(),
            },
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Connection(id) => write!(f, "connection {}", id.0),
            Destination::Peer { listener, peer } => {
                write!(f, "peer {:?} of listener {}", peer, listener.0)
            }
        }
    }
}

impl From<ConnectionId> for Destination {
    fn from(id: ConnectionId) -> Self {
        Destination::Connection(id)
    }
}
