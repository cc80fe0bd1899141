//! The blocking API: `messenger.Messenger` and `messenger.Responder`.
//! Every call that waits releases the GIL and waits in slices, so other
//! Python threads run and Ctrl-C interrupts it (`runtime::wait`). Server
//! loops and callbacks run on threads the package starts and names.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use messenger::{Callback, Error};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyDict, PyTuple};
use tokio::runtime::Runtime;

use crate::convert;
use crate::core::{CALLBACK, Core, HandlerWork, MessengerBase, SERVER_LOOP, callable};
use crate::errors::{OrRaise, to_py, to_value};
use crate::runtime::wait;
use crate::threads::{self, Call, Work};
use crate::types::{Connection, Incoming, ResponderBase, destination};

/// A messenger: listeners with server loops, pooled connections, sends
/// and requests, with the library's delivery guarantees (ACKs, resends,
/// duplicate suppression, deadlines, reconnects).
///
/// ``Messenger(identity=None, **config)``: ``identity`` (str or bytes) is
/// the routing id it announces; ``None`` picks one unique to it. The
/// keywords are the library's ``Config`` fields (durations in seconds;
/// ``None`` turns off ``heartbeat``, ``resend_interval`` and
/// ``evict_idle_after``), plus ``secret`` (bytes: shared-secret
/// authentication) and ``curve`` (a ``Curve``). A bad value is a
/// ``ValueError`` naming the field.
///
/// Every method that waits releases the GIL while it waits, and Ctrl-C
/// interrupts it. Use it as a context manager, or call ``close()``.
#[pyclass(
    frozen,
    subclass,
    extends = MessengerBase,
    module = "messenger",
    name = "Messenger"
)]
pub(crate) struct Messenger {
    /// The library messenger (its base's): at hand for this class's own
    /// calls, which see only their own struct.
    core: Arc<Core>,
}

impl Messenger {
    /// Waits for the library call `work` (GIL released, Ctrl-C heard):
    /// its value, or its error as the Python exception.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        work: impl std::future::Future<Output = Result<T, Error>> + Send,
    ) -> PyResult<T> {
        wait(py, self.core.runtime, work)?.or_raise(py)
    }

    /// What every sending call starts from: the library messenger and
    /// `dest` as its destination.
    fn sender(
        &self,
        py: Python<'_>,
        dest: &Bound<'_, PyAny>,
    ) -> PyResult<(messenger::Messenger, messenger::Destination)> {
        let m = self.core.messenger(py)?.clone();
        Ok((m, destination(py, dest, self.core.serial)?))
    }
}

#[pymethods]
impl Messenger {
    #[new]
    #[pyo3(signature = (identity = None, **config))]
    fn new(
        py: Python<'_>,
        identity: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let (base, core) = MessengerBase::make(py, identity, config)?;
        Ok(base.add_subclass(Messenger { core }))
    }

    /// Binds a listener on ``endpoint`` (``tcp://HOST:PORT``,
    /// ``ipc://PATH``, ``inproc://NAME``) and returns the bound endpoint
    /// (a tcp port 0 resolved). Every message to callback 0 that arrives
    /// there goes to ``server_loop(incoming, responder)``, called on a
    /// thread of this listener's own, one message at a time in arrival
    /// order. An exception it raises is logged (logger ``messenger``) and
    /// counted (``stats()["server_loop_errors"]``); the loop goes on.
    ///
    /// The listener announces the messenger's identity (the library has
    /// no per-listener identity).
    fn listen_for_connection(
        &self,
        py: Python<'_>,
        endpoint: &str,
        server_loop: Bound<'_, PyAny>,
    ) -> PyResult<String> {
        let m = self.core.messenger(py)?.clone();
        let at = convert::endpoint(py, endpoint)?;
        let slc = server_loop_on_thread(&self.core, server_loop)?;
        let bound = self.run(py, m.listen_for_connection_concurrent(&at, slc))?;
        Ok(bound.endpoint.to_string())
    }

    /// Connects to ``endpoint`` (or returns the connection already pooled
    /// for it). It redials by itself when its peer goes away. With
    /// ``server_loop``, messages the peer sends to callback 0 over it go
    /// there, as a listener's do (a model server that dials its manager).
    #[pyo3(signature = (endpoint, server_loop = None))]
    fn make_connection(
        &self,
        py: Python<'_>,
        endpoint: &str,
        server_loop: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Connection> {
        let m = self.core.messenger(py)?.clone();
        let at = convert::endpoint(py, endpoint)?;
        let id = match server_loop {
            None => self.run(py, m.make_connection(&at))?,
            Some(f) => {
                let slc = server_loop_on_thread(&self.core, f)?;
                self.run(py, m.make_connection_with_server_loop_concurrent(&at, slc))?
            }
        };
        Ok(Connection {
            id: id.0,
            endpoint: at.to_string(),
            owner: self.core.serial,
        })
    }

    /// Sends ``body`` to callback ``callback_id`` at ``dest`` (a
    /// ``Connection`` or a ``Peer``) and returns its msg_id once it is
    /// handed to the connection (waiting while the peer's window is full).
    /// With ``callback``, the message asks for a reply: ``callback`` is
    /// called once, on this messenger's callback thread, with the reply
    /// (an ``Incoming``) or with the exception saying why none came
    /// (``Timeout``, ``Disconnected``, ``Shutdown``).
    #[pyo3(signature = (dest, callback_id, body, callback = None))]
    fn send_message(
        &self,
        py: Python<'_>,
        dest: &Bound<'_, PyAny>,
        callback_id: u64,
        body: PyBackedBytes,
        callback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let (m, dest) = self.sender(py, dest)?;
        let callback = callback
            .map(|f| blocking_callback(&self.core, f))
            .transpose()?;
        self.run(py, m.send_message(dest, callback_id, &body, callback))
    }

    /// Sends ``body`` to ``callback_id`` at ``dest`` and returns its msg_id
    /// once the peer has acknowledged it (resending meanwhile), within the
    /// request timeout.
    fn send_confirmed(
        &self,
        py: Python<'_>,
        dest: &Bound<'_, PyAny>,
        callback_id: u64,
        body: PyBackedBytes,
    ) -> PyResult<u64> {
        let (m, dest) = self.sender(py, dest)?;
        self.run(py, m.send_confirmed(dest, callback_id, &body))
    }

    /// Sends ``body`` to ``callback_id`` at ``dest`` and returns the reply
    /// (an ``Incoming``), within ``timeout`` seconds (default: the
    /// messenger's ``request_timeout``). Raises ``Timeout``,
    /// ``Disconnected``, ``Shutdown``; Ctrl-C interrupts the wait.
    #[pyo3(signature = (dest, callback_id, body, timeout = None))]
    fn request(
        &self,
        py: Python<'_>,
        dest: &Bound<'_, PyAny>,
        callback_id: u64,
        body: PyBackedBytes,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Incoming> {
        let (m, dest) = self.sender(py, dest)?;
        let timeout = request_timeout(py, &m, timeout)?;
        let reply = self.run(
            py,
            m.request_with_timeout(dest, callback_id, &body, timeout),
        )?;
        Ok(Incoming {
            inner: reply,
            owner: self.core.serial,
        })
    }

    /// Shuts down as the library does: server loops take nothing new and
    /// finish what they hold within ``shutdown_grace`` (their replies still
    /// go out), then every waiting request fails with ``Shutdown``, every
    /// socket flushes for up to ``linger`` and closes, and ipc files are
    /// removed. Calling it again does nothing.
    ///
    /// Called from one of this messenger's own server loops (a QUIT
    /// command), it returns at once: the loop waits for that call, so the
    /// call cannot wait for the loop. The shutdown goes on behind it.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.core.messenger(py)?.clone();
        if IN_SERVER_LOOP.get() == self.core.serial {
            m.begin_shutdown();
            return Ok(());
        }
        wait(py, self.core.runtime, async move { m.shutdown().await })?;
        // Every callback has its outcome now (a reply, or Shutdown).
        self.core.release_callback_thread();
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        slf.as_super().get().describe(slf.py(), "Messenger")
    }
}

/// A request's deadline: `timeout` seconds, or the messenger's default.
pub(crate) fn request_timeout(
    py: Python<'_>,
    m: &messenger::Messenger,
    timeout: Option<&Bound<'_, PyAny>>,
) -> PyResult<Duration> {
    match timeout {
        Some(t) if !t.is_none() => convert::seconds(py, "timeout", t),
        _ => Ok(m.config().request_timeout),
    }
}

thread_local! {
    /// The messenger (its serial) whose server loop this thread is calling
    /// now; 0 (no messenger's) outside a call. What `close` looks at.
    static IN_SERVER_LOOP: Cell<u64> = const { Cell::new(0) };
}

/// Marks the calling thread as in messenger `owner`'s server loop (what
/// `close` looks at), until [`leave_server_loop`].
pub(crate) fn enter_server_loop(owner: u64) {
    IN_SERVER_LOOP.set(owner);
}

/// The end of [`enter_server_loop`]'s mark.
pub(crate) fn leave_server_loop() {
    IN_SERVER_LOOP.set(0);
}

/// A server loop for the library that hands each message to `server_loop`
/// on a thread of its own (named after the messenger), in arrival order.
/// The library's handler future waits until Python is done with the
/// message: the messenger-wide handler limit bounds what waits for the
/// thread (beyond it the library's queue fills and peers are refused
/// unACKed, so they resend), and shutdown's grace covers the Python work.
fn server_loop_on_thread(
    core: &Arc<Core>,
    server_loop: Bound<'_, PyAny>,
) -> PyResult<
    impl Fn(messenger::Incoming, messenger::Responder) -> HandlerWork + Send + Sync + 'static,
> {
    let py = server_loop.py();
    let handler = callable(server_loop, SERVER_LOOP)?;
    let thread = threads::start(py, core.loop_thread_name())?;
    let (owner, runtime) = (core.serial, core.runtime);
    let errors = Arc::clone(&core.counters.server_loop_errors);
    // What a raising call logs: one endpoint per server loop, so written
    // once, at its first message, not per message.
    let what: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Ok(
        move |msg: messenger::Incoming, r: messenger::Responder| -> HandlerWork {
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            let handler = Arc::clone(&handler);
            let endpoint = msg.endpoint().to_string();
            let what =
                Arc::clone(what.get_or_init(|| {
                    format!("server loop on {endpoint} raised; it goes on").into()
                }));
            let call: Call = Box::new(move |py| {
                let incoming = Py::new(py, Incoming { inner: msg, owner })?;
                let responder = Py::new(py, Responder::new(r, runtime, owner, endpoint))?;
                let args = PyTuple::new(py, [incoming.into_any(), responder.into_any()])?;
                Ok((handler.clone_ref(py), args.unbind()))
            });
            let work = Work::new(call, what, Arc::clone(&errors), owner, Some(done));
            let queued = thread.send(work).is_ok();
            Box::pin(async move {
                if queued {
                    // Resolved (closed) when the call is over or was dropped.
                    let _ = finished.await;
                }
            })
        },
    )
}

/// A library callback that calls `f(reply_or_exception)` on the
/// messenger's callback thread.
fn blocking_callback(core: &Arc<Core>, f: Bound<'_, PyAny>) -> PyResult<Callback> {
    let py = f.py();
    let f = callable(f, CALLBACK)?;
    let thread = core.callback_thread(py)?;
    let owner = core.serial;
    let errors = Arc::clone(&core.counters.callback_errors);
    Ok(Callback::new(move |reply| {
        let call: Call = Box::new(move |py| {
            let arg = match reply {
                Ok(msg) => Py::new(py, Incoming { inner: msg, owner })?.into_any(),
                Err(e) => to_value(py, &e),
            };
            Ok((f.clone_ref(py), PyTuple::new(py, [arg])?.unbind()))
        });
        let work = Work::new(call, threads::callback_raised(), errors, 0, None);
        // Refused only once the thread is gone (the interpreter exits).
        let _ = thread.send(work);
    }))
}

/// Answers the sender of one message: given to a server loop with it, and
/// usable later, from any thread. Who sent it and where it came in are
/// its base's (`ResponderBase`, shared with the asyncio API).
#[pyclass(frozen, extends = ResponderBase, module = "messenger", name = "Responder")]
pub(crate) struct Responder {
    /// Where a reply that must wait for room waits.
    runtime: &'static Runtime,
}

impl Responder {
    /// A responder of messenger `owner` for a message that came in on
    /// `endpoint`, as Python makes it (with its base).
    pub(crate) fn new(
        inner: messenger::Responder,
        runtime: &'static Runtime,
        owner: u64,
        endpoint: String,
    ) -> PyClassInitializer<Self> {
        PyClassInitializer::from(ResponderBase {
            inner,
            owner,
            endpoint,
        })
        .add_subclass(Responder { runtime })
    }
}

#[pymethods]
impl Responder {
    /// Replies with ``body`` to the message's ``src_cb``. The first reply
    /// to a request never waits and never fails for want of room (a place
    /// was kept for it); a further reply waits for room (GIL released)
    /// within the request timeout.
    fn reply(slf: &Bound<'_, Self>, body: PyBackedBytes) -> PyResult<()> {
        let py = slf.py();
        let (base, runtime) = (slf.as_super().get(), slf.get().runtime);
        match base.try_reply(runtime, &body) {
            Ok(()) => Ok(()),
            Err(Error::Full) => {
                let r = base.inner.clone();
                wait(py, runtime, async move { r.reply(&body).await })?.or_raise(py)
            }
            Err(e) => Err(to_py(py, &e)),
        }
    }

    /// Replies without ever waiting: raises ``Full`` where ``reply`` would
    /// wait (only a further reply to the same request can).
    fn try_reply(slf: &Bound<'_, Self>, body: PyBackedBytes) -> PyResult<()> {
        let (base, runtime) = (slf.as_super().get(), slf.get().runtime);
        base.try_reply(runtime, &body).or_raise(slf.py())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        slf.as_super().get().describe("Responder")
    }
}
