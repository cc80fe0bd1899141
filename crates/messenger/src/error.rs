//! Error types, one enum per operation, so a caller can match on exactly what
//! can go wrong with the call it made.

use std::io;

pub use messenger_proto::{FrameError, ParseError};

use crate::address::Destination;
use crate::endpoint::Endpoint;
pub use crate::endpoint::EndpointError;

/// Why `listen_for_connection` failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The endpoint is already bound, by this process or another.
    #[error("{0} is already in use")]
    InUse(Endpoint),
    /// A tcp host name did not resolve.
    #[error("cannot resolve host of {endpoint}: {source}")]
    Resolve {
        /// The endpoint whose host failed.
        endpoint: Endpoint,
        /// The resolver's error.
        source: io::Error,
    },
    /// An ipc path exists and is not a socket: we never delete it.
    #[error("ipc path of {0} exists and is not a socket; refusing to remove it")]
    NotASocket(Endpoint),
    /// Any other operating-system error.
    #[error("cannot bind {endpoint}: {source}")]
    Io {
        /// The endpoint.
        endpoint: Endpoint,
        /// The OS error.
        source: io::Error,
    },
    /// The endpoint's transport cannot be bound this way (inproc is
    /// bound by name, never as a socket).
    #[error("cannot bind {0} as a socket")]
    Unsupported(Endpoint),
    /// The messenger has been shut down.
    #[error("the messenger is shut down")]
    Shutdown,
}

/// Why `make_connection` failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection could not be made, or broke during the handshake.
    #[error("cannot connect to {endpoint}: {source}")]
    Refused {
        /// The endpoint.
        endpoint: Endpoint,
        /// The operating system's error.
        source: io::Error,
    },
    /// Nothing is bound to that inproc name.
    #[error("nothing is bound to {0}")]
    NotBound(Endpoint),
    /// The ZMTP handshake failed: the peer refused us (its ERROR), broke
    /// the protocol, or is not a ROUTER or DEALER.
    #[error("handshake with {endpoint} failed: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: Endpoint,
        /// What went wrong.
        source: zmtp::ZmtpError,
    },
    /// The handshake did not finish within the connect timeout.
    #[error("connecting to {0} timed out")]
    Timeout(Endpoint),
    /// A server loop was asked for on a connection that already exists
    /// (connections are pooled: give it with the first one).
    #[error("already connected to {0}; a server loop must come with the first connection")]
    AlreadyConnected(Endpoint),
    /// The messenger has been shut down.
    #[error("the messenger is shut down")]
    Shutdown,
}

/// Why a message could not be handed to its socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The body would make the payload larger than `max_message_size`.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The peer's window or the socket's send buffer is full (try-forms,
    /// which never wait), or an inproc peer's server-loop queue is.
    #[error("send queue is full")]
    Full,
    /// A waiting send found no room before its deadline (the request's
    /// timeout, else `request_timeout`).
    #[error("no room to send before the deadline")]
    Timeout,
    /// Too many callbacks are waiting for replies.
    #[error("too many pending callbacks (limit {0})")]
    TooManyPending(usize),
    /// Too many messages on this socket wait for their ACK.
    #[error("too many unacknowledged messages on this socket (limit {0})")]
    TooManyUnacked(usize),
    /// The connection or listener is closed.
    #[error("the connection is closed")]
    Disconnected,
    /// No open connection or listener has this id.
    #[error("no such connection or listener: {0}")]
    UnknownDestination(Destination),
    /// The messenger has been shut down.
    #[error("the messenger is shut down")]
    Shutdown,
}

/// Why a request (a message with a callback, or one waiting for its ACK)
/// ended without its answer. Each condition has one variant, whether it
/// struck while sending or while waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No reply (or ACK) arrived before the deadline, or no room to send
    /// was found before it.
    #[error("no reply before the deadline")]
    Timeout,
    /// The connection closed before the answer arrived (or before the
    /// message could be sent).
    #[error("the connection closed before a reply arrived")]
    Disconnected,
    /// The messenger shut down.
    #[error("the messenger is shut down")]
    Shutdown,
    /// The body would make the payload larger than `max_message_size`.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// An inproc peer's server-loop queue is full (try-forms).
    #[error("send queue is full")]
    Full,
    /// Too many callbacks are waiting for replies.
    #[error("too many pending callbacks (limit {0})")]
    TooManyPending(usize),
    /// Too many messages on this socket wait for their ACK.
    #[error("too many unacknowledged messages on this socket (limit {0})")]
    TooManyUnacked(usize),
    /// No open connection or listener has this id.
    #[error("no such connection or listener: {0}")]
    UnknownDestination(Destination),
}

impl From<SendError> for RequestError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::TooLarge { len, max } => RequestError::TooLarge { len, max },
            SendError::Full => RequestError::Full,
            SendError::Timeout => RequestError::Timeout,
            SendError::TooManyPending(n) => RequestError::TooManyPending(n),
            SendError::TooManyUnacked(n) => RequestError::TooManyUnacked(n),
            SendError::Disconnected => RequestError::Disconnected,
            SendError::UnknownDestination(d) => RequestError::UnknownDestination(d),
            SendError::Shutdown => RequestError::Shutdown,
        }
    }
}

/// Why a messenger could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewError {
    /// Routing ids are 1 to 255 bytes in ZMTP.
    #[error("identity must be 1 to 255 bytes, got {0}")]
    Identity(usize),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Created outside a tokio runtime.
    #[error("a messenger must be created inside a tokio runtime")]
    NoRuntime,
}
