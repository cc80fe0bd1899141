//! One error type for everything the messenger does, so an application can
//! `?` any call into it; its variants do not overlap (one condition, one
//! variant, whichever call met it), and [`Error::kind`] sorts them into the
//! few kinds a caller usually decides on.

use std::io;
use std::sync::Arc;

use crate::address::Destination;
use crate::endpoint::Endpoint;

/// Why a call failed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), messenger::Error> {
/// use std::time::Duration;
/// use messenger::{Error, ErrorKind, Messenger};
///
/// let m = Messenger::new()?;
/// let at = "inproc://error-doc".parse()?;
/// m.listen_for_connection(&at, |_, _| {}).await?;
/// let conn = m.make_connection(&at).await?;
/// // Nothing answers callback 99: the deadline does.
/// let e = m.request_with_timeout(conn, 99, b"?", Duration::from_millis(20)).await.unwrap_err();
/// assert_eq!(e, Error::Timeout);
/// assert_eq!(e.kind(), ErrorKind::Timeout);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No reply (or ACK) arrived before the deadline, or no room to send
    /// was found before it.
    #[error("no reply before the deadline")]
    Timeout,
    /// The connection or listener session closed before the message could
    /// be sent or its answer arrived.
    #[error("the connection closed")]
    Disconnected,
    /// The messenger has been shut down.
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
    /// The peer's window, the socket's send buffer or an inproc peer's
    /// server-loop queue is full (forms that do not wait).
    #[error("send queue is full")]
    Full,
    /// Too many callbacks are waiting for replies
    /// (`Config::max_pending_callbacks`).
    #[error("too many pending callbacks (limit {0})")]
    TooManyPending(usize),
    /// Too many messages to one peer wait for their ACK
    /// (`Config::max_pending_messages`).
    #[error("too many unacknowledged messages (limit {0})")]
    TooManyUnacked(usize),
    /// No open connection or listener has this id.
    #[error("no such connection or listener: {0}")]
    UnknownDestination(Destination),
    /// The endpoint is already bound, by this process or another.
    #[error("{0} is already in use")]
    InUse(Endpoint),
    /// An ipc path exists and is not a socket: it is never deleted.
    #[error("ipc path of {0} exists and is not a socket; refusing to remove it")]
    NotASocket(Endpoint),
    /// A tcp host name did not resolve.
    #[error("cannot resolve host of {endpoint}: {source}")]
    Resolve {
        /// The endpoint whose host failed.
        endpoint: Endpoint,
        /// The resolver's error.
        source: Arc<io::Error>,
    },
    /// Binding failed for another operating-system reason.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: Endpoint,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// Nothing is bound to that inproc name.
    #[error("nothing is bound to {0}")]
    NotBound(Endpoint),
    /// The connection could not be made, or broke before its handshake
    /// finished (after retrying what may pass, until `connect_timeout`).
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: Endpoint,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The ZMTP handshake failed: the peer refused us (its ERROR), broke
    /// the protocol, or is not a ROUTER or DEALER (the `zmtp` crate's
    /// error says which).
    #[error("handshake with {endpoint} failed: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: Endpoint,
        /// What went wrong.
        source: zmtp::ZmtpError,
    },
    /// The connection and its handshake did not finish within
    /// `connect_timeout`.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(Endpoint),
    /// A server loop was asked for on a connection that already exists
    /// (connections are pooled: give it with the first one).
    #[error("already connected to {0}; a server loop must come with the first connection")]
    AlreadyConnected(Endpoint),
    /// A destination callback id the protocol keeps for itself: 2 (ACK),
    /// which the peer would take for the ACK of one of its own messages
    /// (and stop resending it), or 3 (reserved: authentication).
    #[error(
        "callback {0} is the protocol's own (2: ACK, 3: authentication); send to NOOP (0), ECHO (1) or a callback from 4"
    )]
    ReservedCallback(u64),
    /// An endpoint string that does not parse.
    #[error("{0}")]
    InvalidEndpoint(String),
    /// A [`Config`](crate::Config) that cannot work: which field, and why.
    #[error("invalid configuration: Config::{field} {why}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A routing id no listener would take (ZMTP: 1 to 255 bytes, the
    /// first not zero); says which rule it breaks.
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
    /// A CURVE key or certificate that does not parse.
    #[error("invalid CURVE key: {0}")]
    InvalidKey(#[from] zmtp::CurveKeyError),
    /// A typed body that could not be encoded.
    #[error("cannot encode the body: {0}")]
    Encode(String),
    /// A typed body that could not be decoded as the type asked for.
    #[error("cannot decode the body: {0}")]
    Decode(String),
    /// A messenger must be made inside a tokio runtime.
    #[error("a messenger must be created inside a tokio runtime")]
    NoRuntime,
}

/// What kind of failure an [`Error`] is: what a caller usually decides on
/// (retry later, give up, fix the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A deadline passed ([`Error::Timeout`], [`Error::ConnectTimeout`]).
    Timeout,
    /// The peer went away ([`Error::Disconnected`]).
    Disconnected,
    /// The peer could not be reached or refused us ([`Error::Connect`],
    /// [`Error::Handshake`], [`Error::NotBound`]).
    Refused,
    /// The messenger is shut down.
    Shutdown,
    /// A message over `max_message_size`.
    TooLarge,
    /// A bound was reached: a full window or queue, too many callbacks or
    /// unacknowledged messages. Waiting (or the waiting form) may help.
    Full,
    /// An endpoint is taken, or cannot be bound ([`Error::InUse`],
    /// [`Error::NotASocket`], [`Error::Resolve`], [`Error::Bind`]).
    Bind,
    /// The call itself is wrong: an unknown destination, an invalid
    /// endpoint, configuration, identity or key, a body that does not
    /// encode or decode, a second server loop for one connection, no
    /// runtime.
    Invalid,
}

impl Error {
    /// The kind of failure, for matching on what to do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Timeout | Error::ConnectTimeout(_) => ErrorKind::Timeout,
            Error::Disconnected => ErrorKind::Disconnected,
            Error::Connect { .. } | Error::Handshake { .. } | Error::NotBound(_) => {
                ErrorKind::Refused
            }
            Error::Shutdown => ErrorKind::Shutdown,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Full | Error::TooManyPending(_) | Error::TooManyUnacked(_) => ErrorKind::Full,
            Error::InUse(_) | Error::NotASocket(_) | Error::Resolve { .. } | Error::Bind { .. } => {
                ErrorKind::Bind
            }
            Error::UnknownDestination(_)
            | Error::ReservedCallback(_)
            | Error::AlreadyConnected(_)
            | Error::InvalidEndpoint(_)
            | Error::InvalidConfig { .. }
            | Error::InvalidIdentity(_)
            | Error::InvalidKey(_)
            | Error::Encode(_)
            | Error::Decode(_)
            | Error::NoRuntime => ErrorKind::Invalid,
        }
    }

    /// An operating-system error as a `Connect` error.
    pub(crate) fn connect(endpoint: &Endpoint, source: io::Error) -> Self {
        Error::Connect {
            endpoint: endpoint.clone(),
            source: Arc::new(source),
        }
    }

    /// An operating-system error as a `Bind` error.
    pub(crate) fn bind(endpoint: &Endpoint, source: io::Error) -> Self {
        Error::Bind {
            endpoint: endpoint.clone(),
            source: Arc::new(source),
        }
    }
}

/// Errors compare by what they say: variant and data, operating-system
/// errors by their kind (an `io::Error` has no equality of its own).
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        use Error::*;
        let io = |a: &io::Error, b: &io::Error| a.kind() == b.kind();
        match (self, other) {
            (Timeout, Timeout)
            | (Disconnected, Disconnected)
            | (Shutdown, Shutdown)
            | (Full, Full)
            | (NoRuntime, NoRuntime) => true,
            (TooLarge { len: a, max: b }, TooLarge { len: c, max: d }) => a == c && b == d,
            (TooManyPending(a), TooManyPending(b)) | (TooManyUnacked(a), TooManyUnacked(b)) => {
                a == b
            }
            (ReservedCallback(a), ReservedCallback(b)) => a == b,
            (InvalidIdentity(a), InvalidIdentity(b)) => a == b,
            (UnknownDestination(a), UnknownDestination(b)) => a == b,
            (InUse(a), InUse(b))
            | (NotASocket(a), NotASocket(b))
            | (NotBound(a), NotBound(b))
            | (ConnectTimeout(a), ConnectTimeout(b))
            | (AlreadyConnected(a), AlreadyConnected(b)) => a == b,
            (
                Resolve {
                    endpoint: a,
                    source: s,
                },
                Resolve {
                    endpoint: b,
                    source: t,
                },
            )
            | (
                Bind {
                    endpoint: a,
                    source: s,
                },
                Bind {
                    endpoint: b,
                    source: t,
                },
            )
            | (
                Connect {
                    endpoint: a,
                    source: s,
                },
                Connect {
                    endpoint: b,
                    source: t,
                },
            ) => a == b && io(s, t),
            (
                Handshake {
                    endpoint: a,
                    source: s,
                },
                Handshake {
                    endpoint: b,
                    source: t,
                },
            ) => a == b && s == t,
            (InvalidEndpoint(a), InvalidEndpoint(b))
            | (Encode(a), Encode(b))
            | (Decode(a), Decode(b)) => a == b,
            (InvalidConfig { field: a, why: s }, InvalidConfig { field: b, why: t }) => {
                a == b && s == t
            }
            (InvalidKey(a), InvalidKey(b)) => a == b,
            _ => false,
        }
    }
}
