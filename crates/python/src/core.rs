//! What both APIs share: one library messenger with the process it was
//! made in, the binding's own counters, the threads that run blocking
//! callbacks, and the logging of a callback's exception.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString};
use tokio::runtime::Runtime;

use crate::convert;
use crate::errors::{OrRaise, raise};
use crate::runtime::runtime;
use crate::threads::{self, Work};

/// Counts messengers, so each destination object knows its own.
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// What the binding counts beyond the library's counters (each shared
/// with the package threads' calls that count into it).
#[derive(Default)]
pub(crate) struct Counters {
    /// Exceptions raised by server loops (logged, never fatal).
    pub(crate) server_loop_errors: Arc<AtomicU64>,
    /// Exceptions raised by message-specific callbacks (logged).
    pub(crate) callback_errors: Arc<AtomicU64>,
}

/// A library messenger as the binding holds it.
pub(crate) struct Core {
    /// Not dropped in a forked child: its tasks and sockets belong to the
    /// parent's runtime, which does not run there.
    messenger: ManuallyDrop<messenger::Messenger>,
    /// The process it was made in.
    pub(crate) pid: u32,
    /// Names this messenger to its destinations and threads.
    pub(crate) serial: u64,
    /// The runtime its tasks run on.
    pub(crate) runtime: &'static Runtime,
    /// The binding's own counters.
    pub(crate) counters: Arc<Counters>,
    /// The thread that runs blocking message-specific callbacks, started
    /// at the first one, and let go when the messenger is closed.
    callbacks: Mutex<CallbackThread>,
    /// Numbers the server-loop threads.
    next_loop: AtomicU64,
}

impl Core {
    /// A messenger with routing id `identity` (str or bytes; `None`: a
    /// unique one) and the configuration `keywords`.
    pub(crate) fn new(
        py: Python<'_>,
        identity: Option<&Bound<'_, PyAny>>,
        keywords: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Arc<Core>> {
        let config = convert::config(py, keywords)?;
        let identity = identity.map(identity_bytes).transpose()?;
        let runtime = runtime()?;
        let mut builder = messenger::Messenger::builder().config(config);
        if let Some(id) = identity {
            builder = builder.identity(id);
        }
        let built = {
            let _inside = runtime.enter();
            builder.build()
        };
        let messenger = built.or_raise(py)?;
        Ok(Arc::new(Core {
            messenger: ManuallyDrop::new(messenger),
            pid: crate::runtime::pid(),
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            runtime,
            counters: Arc::default(),
            callbacks: Mutex::new(CallbackThread::NotYet),
            next_loop: AtomicU64::new(1),
        }))
    }

    /// The library messenger, unless this is a forked child of the process
    /// that made it: there the messenger's threads and sockets do not
    /// exist, and using it would hang, so it is an error that says so.
    pub(crate) fn messenger(&self, py: Python<'_>) -> PyResult<&messenger::Messenger> {
        let now = crate::runtime::pid();
        if now != self.pid {
            return Err(raise(
                py,
                "ForkError",
                format!(
                    "this Messenger was made in process {}, and this is process {now}, \
                     forked from it: a forked child has none of its threads or \
                     connections. Make a new Messenger in the child.",
                    self.pid
                ),
            ));
        }
        Ok(&self.messenger)
    }

    /// The library's counters and the binding's, as a dict.
    pub(crate) fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = self.messenger(py)?.stats();
        let c = &self.counters;
        convert::stats(
            py,
            &snapshot,
            &[
                (
                    "server_loop_errors",
                    c.server_loop_errors.load(Ordering::Relaxed),
                ),
                ("callback_errors", c.callback_errors.load(Ordering::Relaxed)),
            ],
        )
    }

    /// A name for the next server-loop thread of this messenger.
    pub(crate) fn loop_thread_name(&self) -> String {
        let n = self.next_loop.fetch_add(1, Ordering::Relaxed);
        format!("messenger-{}-server-loop-{n}", self.serial)
    }

    /// Where a message-specific callback of this messenger is sent to
    /// run: its callback thread, started now if it is not running. After
    /// close, a thread of its own, which ends once it has run it.
    pub(crate) fn callback_thread(&self, py: Python<'_>) -> PyResult<mpsc::Sender<Work>> {
        let slot = || self.callbacks.lock().unwrap_or_else(|p| p.into_inner());
        let keep = match &*slot() {
            CallbackThread::Running(tx) => return Ok(tx.clone()),
            CallbackThread::NotYet => true,
            CallbackThread::LetGo => false,
        };
        // Started with the slot's lock let go: `Thread.start` waits for the
        // new thread with the GIL released, and another Python thread
        // blocked on this lock while holding the GIL would keep the new
        // thread from ever starting.
        let tx = threads::start(py, format!("messenger-{}-callbacks", self.serial))?;
        if !keep {
            return Ok(tx);
        }
        let mut slot = slot();
        match &*slot {
            // Another caller started one meanwhile: theirs serves, and
            // ours, given nothing, ends as its sender goes.
            CallbackThread::Running(theirs) => Ok(theirs.clone()),
            CallbackThread::NotYet => {
                *slot = CallbackThread::Running(tx.clone());
                Ok(tx)
            }
            CallbackThread::LetGo => Ok(tx),
        }
    }

    /// Lets the callback thread go (the messenger is shut down): it ends
    /// once it has run the callbacks it was given.
    pub(crate) fn release_callback_thread(&self) {
        *self.callbacks.lock().unwrap_or_else(|p| p.into_inner()) = CallbackThread::LetGo;
    }
}

/// A messenger's callback thread (see `Core::callbacks`).
enum CallbackThread {
    /// No callback yet.
    NotYet,
    /// Started: where its calls go.
    Running(mpsc::Sender<Work>),
    /// The messenger is closed: the thread ends once every callback given
    /// to it has run (each holds a sender).
    LetGo,
}

impl Drop for Core {
    fn drop(&mut self) {
        if crate::runtime::pid() != self.pid {
            // A forked child: the parent's runtime is not running here, so
            // nothing of the messenger may be touched (leaked instead).
            return;
        }
        // SAFETY: dropped once, here, and never used after. Dropping the
        // last handle closes the messenger: it cancels its tasks' token and
        // returns (no waiting, nothing of Python's).
        unsafe { ManuallyDrop::drop(&mut self.messenger) };
    }
}

/// A routing id from a str (UTF-8) or bytes.
fn identity_bytes(identity: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(s) = identity.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_cow()?.as_bytes()));
    }
    if let Ok(b) = identity.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    Err(PyTypeError::new_err("identity must be str, bytes or None"))
}

/// What a server loop hands the library for each message: a future that
/// ends once Python is done with it (its slot in the messenger's handler
/// limit is held until then).
pub(crate) type HandlerWork = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What a server loop that cannot be called is told.
pub(crate) const SERVER_LOOP: &str =
    "server_loop must be callable as server_loop(incoming, responder)";

/// What a message's callback that cannot be called is told.
pub(crate) const CALLBACK: &str = "callback must be callable as callback(reply_or_exception)";

/// `f`, kept to be called later; a `TypeError` saying `how` (`SERVER_LOOP`,
/// `CALLBACK`) now when it cannot be called.
pub(crate) fn callable(f: Bound<'_, PyAny>, how: &str) -> PyResult<Arc<Py<PyAny>>> {
    if !f.is_callable() {
        return Err(PyTypeError::new_err(how.to_owned()));
    }
    Ok(Arc::new(f.unbind()))
}

/// The `messenger` logger, fetched once.
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Logs `err` (with its traceback) on the `messenger` logger at ERROR,
/// after `message`, and counts it in `counter`. A callback's exception is
/// the application's bug: it is reported and the messenger goes on.
pub(crate) fn log_exception(py: Python<'_>, message: &str, err: &PyErr, counter: &AtomicU64) {
    let logged = LOGGER
        .get_or_try_init(py, || {
            py.import("logging")?
                .call_method1("getLogger", ("messenger",))
                .map(Bound::unbind)
        })
        .and_then(|logger| {
            let kwargs = PyDict::new(py);
            // The value with its traceback attached: `value` leaves
            // `__traceback__` unset before Python 3.12.
            kwargs.set_item("exc_info", err.clone_ref(py).into_value(py))?;
            logger
                .bind(py)
                .call_method("error", ("%s", message), Some(&kwargs))
                .map(drop)
        });
    if logged.is_err() {
        // The logging machinery failed: stderr at least.
        err.print(py);
    }
    // Counted once logged: a count seen means a record to find.
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the blocking ``messenger.Messenger`` and ``messenger.aio.Messenger``
/// share: the library messenger, and the calls that never wait (the
/// identity, the link state, the counters). Each API's class extends it
/// with the calls that do.
#[pyclass(
    frozen,
    subclass,
    weakref,
    module = "messenger._messenger",
    name = "_MessengerBase"
)]
pub(crate) struct MessengerBase {
    /// The library messenger and what the binding keeps with it.
    pub(crate) core: Arc<Core>,
}

impl MessengerBase {
    /// A messenger as each API's constructor makes it: the base to extend,
    /// and the core for the subclass's own calls.
    pub(crate) fn make(
        py: Python<'_>,
        identity: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(PyClassInitializer<MessengerBase>, Arc<Core>)> {
        let core = Core::new(py, identity, config)?;
        let base = MessengerBase {
            core: Arc::clone(&core),
        };
        Ok((PyClassInitializer::from(base), core))
    }

    /// The repr of a messenger whose class Python calls `class`.
    pub(crate) fn describe(&self, py: Python<'_>, class: &str) -> String {
        match self.core.messenger(py) {
            Ok(m) => format!(
                "{class}(identity={:?})",
                String::from_utf8_lossy(m.identity())
            ),
            Err(_) => format!("{class}(<made in process {}>)", self.core.pid),
        }
    }

    /// The connection `conn` names, for the calls that take one.
    fn connection(
        &self,
        py: Python<'_>,
        conn: &Bound<'_, PyAny>,
        call: &str,
    ) -> PyResult<(&messenger::Messenger, messenger::ConnectionId)> {
        let m = self.core.messenger(py)?;
        match crate::types::destination(py, conn, self.core.serial)? {
            messenger::Destination::Connection(id) => Ok((m, id)),
            _ => Err(PyTypeError::new_err(format!("{call} takes a Connection"))),
        }
    }
}

#[pymethods]
impl MessengerBase {
    /// The routing id it announces on every connection and sends as its
    /// listeners' first frame.
    #[getter]
    fn identity<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let m = self.core.messenger(py)?;
        Ok(PyBytes::new(py, m.identity()))
    }

    /// Whether ``connection``'s link is up now (false while it redials).
    fn is_connected(&self, py: Python<'_>, connection: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (m, id) = self.connection(py, connection, "is_connected")?;
        Ok(m.is_connected(id))
    }

    /// The last heartbeat round trip on ``connection``, in seconds (None
    /// before one was answered).
    fn rtt(&self, py: Python<'_>, connection: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let (m, id) = self.connection(py, connection, "rtt")?;
        Ok(m.rtt(id).map(|d| d.as_secs_f64()))
    }

    /// The counters, as a dict of ints: the library's (``sent``,
    /// ``received``, ``resends``, ``duplicates_dropped``, ...) and the
    /// binding's (``server_loop_errors``, ``callback_errors``).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.core.stats(py)
    }
}
