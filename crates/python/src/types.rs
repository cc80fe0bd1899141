//! What callbacks receive and where messages go: `Incoming`, what both
//! APIs' responders share, `Connection`, `Peer`. Each destination
//! remembers the messenger it belongs to, so one handed to another
//! messenger is refused instead of naming a socket of the same number
//! there.

use bytes::Bytes;
use messenger::{ConnectionId, Destination, Error, ListenerId, NOOP};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::runtime::Runtime;

use crate::errors::invalid;

/// A message handed to a server loop, a callback or a request's caller.
///
/// ``body`` is the bytes after the payload's third ``-``; ``peer`` the
/// sender's routing id on a listener (empty on a connection); ``peer_key``
/// the sender's CURVE public key (Z85) if its session proved one.
#[pyclass(frozen, module = "messenger", name = "Incoming")]
pub(crate) struct Incoming {
    /// The library's message (its body shares the received buffer).
    pub(crate) inner: messenger::Incoming,
    /// The messenger it arrived at.
    pub(crate) owner: u64,
}

#[pymethods]
impl Incoming {
    /// The sender's id for this message.
    #[getter]
    fn msg_id(&self) -> u64 {
        self.inner.msg_id
    }

    /// The sender's callback for replies (0, ``NOOP``, when it expects none).
    #[getter]
    fn src_cb(&self) -> u64 {
        self.inner.src_cb
    }

    /// The callback this message was addressed to.
    #[getter]
    fn dst_cb(&self) -> u64 {
        self.inner.dst_cb
    }

    /// The body (a new ``bytes`` on each access).
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.body)
    }

    /// The sender's routing id on a listener; empty on a connection.
    #[getter]
    fn peer<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.peer)
    }

    /// The sender's permanent CURVE public key (Z85), proven by its
    /// session's handshake; ``None`` over NULL and inproc.
    #[getter]
    fn peer_key(&self) -> Option<String> {
        self.inner.peer_key().map(|k| k.to_z85())
    }

    /// The endpoint it arrived on (a listener's bound address, or the
    /// endpoint a connection dialled).
    #[getter]
    fn endpoint(&self) -> String {
        self.inner.endpoint().to_string()
    }

    /// Where to send further messages to its sender: a ``Peer`` (it came
    /// to a listener) or a ``Connection``.
    fn reply_destination(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let endpoint = self.inner.endpoint().to_string();
        destination_object(py, self.inner.reply_destination(), endpoint, self.owner)
    }

    fn __repr__(&self) -> String {
        format!(
            "Incoming(msg_id={}, src_cb={}, dst_cb={}, peer={:?}, body={} bytes)",
            self.inner.msg_id,
            self.inner.src_cb,
            self.inner.dst_cb,
            String::from_utf8_lossy(&self.inner.peer),
            self.inner.body.len()
        )
    }
}

/// What the blocking ``messenger.Responder`` and ``messenger.aio.Responder``
/// share: who sent the message and where it came in. Each API's class
/// extends it with its own ``reply`` and ``try_reply``.
#[pyclass(
    frozen,
    subclass,
    module = "messenger._messenger",
    name = "_ResponderBase"
)]
pub(crate) struct ResponderBase {
    /// The library's responder.
    pub(crate) inner: messenger::Responder,
    /// The messenger it belongs to: the destination it gives out carries it.
    pub(crate) owner: u64,
    /// The endpoint the message came in on: a ``Connection`` destination
    /// names it.
    pub(crate) endpoint: String,
}

impl ResponderBase {
    /// A reply that never waits (inside `runtime`, which the library's
    /// send path needs): `Full` where a further reply would wait for room.
    pub(crate) fn try_reply(&self, runtime: &Runtime, body: &[u8]) -> Result<(), Error> {
        let _inside = runtime.enter();
        self.inner.try_reply(body)
    }

    /// The repr of a responder whose class Python calls `class`.
    pub(crate) fn describe(&self, class: &str) -> String {
        format!(
            "{class}(peer={:?}, src_cb={})",
            String::from_utf8_lossy(self.inner.peer()),
            self.inner.src_cb()
        )
    }
}

#[pymethods]
impl ResponderBase {
    /// The sender's routing id.
    #[getter]
    fn peer<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.peer())
    }

    /// The callback id the sender asked replies to go to (0, ``NOOP``: it
    /// wants none).
    #[getter]
    fn src_cb(&self) -> u64 {
        self.inner.src_cb()
    }

    /// Whether the sender asked for a reply.
    #[getter]
    fn wants_reply(&self) -> bool {
        self.inner.src_cb() != NOOP
    }

    /// Where to send further messages to the sender.
    #[getter]
    fn destination(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        destination_object(
            py,
            self.inner.destination(),
            self.endpoint.clone(),
            self.owner,
        )
    }
}

/// A connection made with ``make_connection``: pooled per endpoint, it
/// redials by itself and stays valid until the messenger closes.
#[pyclass(frozen, eq, hash, module = "messenger", name = "Connection")]
#[derive(PartialEq, Hash)]
pub(crate) struct Connection {
    /// The library's id.
    pub(crate) id: u64,
    /// The endpoint it dials.
    pub(crate) endpoint: String,
    /// The messenger it belongs to.
    pub(crate) owner: u64,
}

#[pymethods]
impl Connection {
    /// The connection's number within its messenger.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// The endpoint it dials.
    #[getter]
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn __repr__(&self) -> String {
        format!("Connection(id={}, endpoint={:?})", self.id, self.endpoint)
    }
}

/// A peer connected to one of our listeners, by its routing id: where a
/// listener's messenger sends to it (``Incoming.reply_destination()``,
/// ``Responder.destination``).
#[pyclass(frozen, eq, hash, module = "messenger", name = "Peer")]
#[derive(PartialEq, Hash)]
pub(crate) struct Peer {
    /// The listener it is connected to.
    pub(crate) listener: u64,
    /// Its routing id.
    pub(crate) peer: Vec<u8>,
    /// The messenger the listener belongs to.
    pub(crate) owner: u64,
}

#[pymethods]
impl Peer {
    /// The listener's number within its messenger.
    #[getter]
    fn listener(&self) -> u64 {
        self.listener
    }

    /// The peer's routing id.
    #[getter]
    fn peer<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.peer)
    }

    fn __repr__(&self) -> String {
        format!(
            "Peer(listener={}, peer={:?})",
            self.listener,
            String::from_utf8_lossy(&self.peer)
        )
    }
}

/// A library destination as a Python object.
pub(crate) fn destination_object(
    py: Python<'_>,
    dest: Destination,
    endpoint: String,
    owner: u64,
) -> PyResult<Py<PyAny>> {
    Ok(match dest {
        Destination::Connection(id) => Py::new(
            py,
            Connection {
                id: id.0,
                endpoint,
                owner,
            },
        )?
        .into_any(),
        Destination::Peer { listener, peer } => Py::new(
            py,
            Peer {
                listener: listener.0,
                peer: peer.to_vec(),
                owner,
            },
        )?
        .into_any(),
        // Destination is exhaustive today; a new kind would need a class.
        #[allow(unreachable_patterns)]
        other => {
            return Err(PyTypeError::new_err(format!(
                "unsupported destination {other}"
            )));
        }
    })
}

/// A `Connection` or `Peer` of messenger `owner` as the library's
/// destination.
pub(crate) fn destination(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    owner: u64,
) -> PyResult<Destination> {
    let (dest, of) = if let Ok(c) = obj.cast::<Connection>() {
        let c = c.get();
        (Destination::Connection(ConnectionId(c.id)), c.owner)
    } else if let Ok(p) = obj.cast::<Peer>() {
        let p = p.get();
        let dest = Destination::Peer {
            listener: ListenerId(p.listener),
            peer: Bytes::copy_from_slice(&p.peer),
        };
        (dest, p.owner)
    } else {
        return Err(PyTypeError::new_err(
            "a destination is a Connection (from make_connection) or a Peer \
             (from Incoming.reply_destination() or Responder.destination)",
        ));
    };
    if of != owner {
        return Err(invalid(py, format!("{dest} belongs to another messenger")));
    }
    Ok(dest)
}
