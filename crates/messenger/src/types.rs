//! What the API hands to callbacks: received messages, replies, the
//! callbacks themselves, and the listeners it opened.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::address::{Destination, ListenerId, Origin};
use crate::endpoint::Endpoint;
use crate::error::Error;
use zmtp::CurvePublicKey;

/// What a message-specific callback or a request receives: the reply, or
/// why none came.
pub(crate) type Reply = Result<Incoming, Error>;

/// A message handed to a callback. `body` shares the received buffer.
#[derive(Clone)]
pub struct Incoming {
    /// The sender's id for this message.
    pub msg_id: u64,
    /// The sender's callback for replies (0 when it expects none).
    pub src_cb: u64,
    /// The callback this message was addressed to.
    pub dst_cb: u64,
    /// The body, everything after the third `-`. A view of the buffer it
    /// was read into (tcp, ipc), not a copy: keeping it keeps its share of
    /// that buffer, reads of a few messages sharing one of 16 KiB (a body
    /// of 63 bytes received one per read holds about 220 bytes). Copy a
    /// small part of a large message to keep it alone.
    pub body: Bytes,
    /// The sender's routing id on a listener; empty on a connection.
    pub peer: Bytes,
    /// The socket it arrived on: for `endpoint` and `reply_destination`.
    pub(crate) origin: Arc<Origin>,
    /// The sender's CURVE key, if its session proved one.
    pub(crate) peer_key: Option<CurvePublicKey>,
}

impl Incoming {
    /// The endpoint it arrived on (a listener's bound address, or the
    /// endpoint a connection connected to).
    pub fn endpoint(&self) -> &Endpoint {
        &self.origin.endpoint
    }

    /// The sender's permanent CURVE public key, proven by the handshake of
    /// the session it came over (a listener with [`Config::curve`](crate::Config::curve));
    /// `None` over NULL and inproc. What an application authorises on,
    /// beyond the listener's allow-list.
    pub fn peer_key(&self) -> Option<CurvePublicKey> {
        self.peer_key
    }

    /// Where to send messages back to its sender.
    pub fn reply_destination(&self) -> Destination {
        Destination::of(self.origin.kind, &self.peer)
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("endpoint", &self.origin.endpoint)
            .field("peer", &self.peer)
            .field("peer_key", &self.peer_key)
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

    pub(crate) fn into_inner(self) -> Box<dyn FnOnce(Reply) + Send> {
        self.0
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
