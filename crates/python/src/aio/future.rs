//! What `aio.Messenger.request` returns: the library's request future,
//! polled on the loop's thread, as an object asyncio takes for a future.
//!
//! Why not an `asyncio.Future`: making one is a Python-level
//! `loop.create_future()`, resolving one is a Python-level `call_soon` (a
//! `Handle` made and run) per waiter, and nothing tells us when one is
//! cancelled (a sweep had to look): together a sixth of the loop's time
//! per request. A `RequestFuture` runs its waiters when the loop's
//! wake-up polls it to its end (the wake-up is itself a callback of the
//! loop, so they run as the loop would run them, each in its context),
//! and frees the library's request the moment it is cancelled.
//!
//! What asyncio asks of a future-like object (`asyncio.isfuture`, a task
//! awaiting it, `gather`, `wait_for`, `shield`, `wait`, `run_until_complete`):
//! `_asyncio_future_blocking`, `get_loop`, `add_done_callback(fn, *,
//! context)`, `remove_done_callback`, `done`, `cancelled`, `result`,
//! `exception`, `cancel(msg)`, and `__await__` yielding itself until done.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use messenger::Error;
use pyo3::exceptions::PyStopIteration;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use tokio::runtime::Runtime;

use super::{Hub, asyncio};
use crate::errors::to_value;
use crate::types::Incoming;

/// The library's request future, owning what it borrows.
pub(super) type Work = Pin<Box<dyn Future<Output = Result<messenger::Incoming, Error>> + Send>>;

/// One loop's requests that are not done, by id: where a woken id finds
/// its future. Touched on the loop's thread (a mutex because a pyclass
/// must be `Sync`).
#[derive(Default)]
pub(super) struct Requests {
    /// Numbers the requests.
    next: u64,
    /// Id -> its future.
    open: HashMap<u64, Py<RequestFuture>>,
}

/// A loop's [`Requests`], shared by its messenger, its wake-up and each
/// request (which leaves it when done or cancelled).
pub(super) type SharedRequests = Arc<Mutex<Requests>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes every open request out of `requests` (a messenger going away:
/// their futures hold handles of the library's messenger).
pub(super) fn drain(requests: &SharedRequests) -> HashMap<u64, Py<RequestFuture>> {
    std::mem::take(&mut lock(requests).open)
}

/// Whether no request is open.
pub(super) fn is_idle(requests: &SharedRequests) -> bool {
    lock(requests).open.is_empty()
}

/// The future of request `id`, if it is still open.
pub(super) fn find(
    py: Python<'_>,
    requests: &SharedRequests,
    id: u64,
) -> Option<Py<RequestFuture>> {
    lock(requests).open.get(&id).map(|f| f.clone_ref(py))
}

/// Wakes the loop with a request's id: what the library's future is
/// polled with. It fires on the connection's task when the reply comes
/// (or on the timer's at the deadline), never taking the GIL.
struct RequestWaker {
    /// Where the id goes.
    hub: Arc<Hub>,
    /// The request's id.
    id: u64,
}

impl Wake for RequestWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.hub.wake_request(self.id);
    }
}

/// How a request ended, or that it has not.
enum Outcome {
    /// Not yet: the library's future and the waker it is polled with.
    Pending { work: Work, waker: Waker },
    /// Its reply (an `Incoming`).
    Replied(Py<PyAny>),
    /// Its error, as an exception instance.
    Failed(Py<PyAny>),
    /// Cancelled by its caller, with the message given (if any).
    Cancelled(Option<Py<PyAny>>),
}

/// What changes as the request goes.
struct State {
    /// Where it stands.
    outcome: Outcome,
    /// Its waiters and the contextvars context each runs in.
    callbacks: Vec<(Py<PyAny>, Py<PyAny>)>,
}

/// A request's future on the asyncio API: awaitable, and a future to
/// asyncio (``asyncio.isfuture``), so ``gather``, ``wait_for``,
/// ``shield`` and ``wait`` take it. Resolves to the reply (an
/// ``Incoming``) or raises the request's error; cancelling it frees the
/// request at once.
//
// No `__traverse__`: its waiters (an awaiting task's wake-up) make a cycle
// with that task only while it waits, and are dropped when it ends, which
// the request's deadline bounds. A traverse would take the state's lock,
// which a poll holds while it makes the reply's object, and making an
// object may start a collection.
#[pyclass(frozen, module = "messenger.aio", name = "RequestFuture")]
pub(crate) struct RequestFuture {
    /// The loop it belongs to (`get_loop`; its waiters run there).
    event_loop: Py<PyAny>,
    /// Its id among the loop's requests.
    id: u64,
    /// The loop's requests, which it leaves when done or cancelled.
    requests: SharedRequests,
    /// The messenger's serial, for the `Incoming` it makes.
    owner: u64,
    /// The runtime whose context a poll runs in (a send that waits for
    /// room sets a tokio timer).
    runtime: &'static Runtime,
    /// asyncio's flag: set when it is yielded to a task, cleared by the
    /// task as it starts waiting.
    blocking: AtomicBool,
    /// Where it stands, and its waiters.
    state: Mutex<State>,
}

impl RequestFuture {
    /// Registers request `work` (not yet polled) under a fresh id of
    /// `requests` and queues the id, so the loop's next wake-up sends it
    /// with the others made meanwhile.
    pub(super) fn start<'py>(
        py: Python<'py>,
        event_loop: &Bound<'py, PyAny>,
        requests: &SharedRequests,
        hub: &Arc<Hub>,
        owner: u64,
        runtime: &'static Runtime,
        work: Work,
    ) -> PyResult<Bound<'py, RequestFuture>> {
        let id = {
            let mut r = lock(requests);
            r.next += 1;
            r.next
        };
        let waker = Waker::from(Arc::new(RequestWaker {
            hub: Arc::clone(hub),
            id,
        }));
        let fut = Bound::new(
            py,
            RequestFuture {
                event_loop: event_loop.clone().unbind(),
                id,
                requests: Arc::clone(requests),
                owner,
                runtime,
                blocking: AtomicBool::new(false),
                state: Mutex::new(State {
                    outcome: Outcome::Pending { work, waker },
                    callbacks: Vec::new(),
                }),
            },
        )?;
        lock(requests).open.insert(id, fut.clone().unbind());
        hub.made(id);
        Ok(fut)
    }

    /// Polls the library's future (its waker fired). Returns whether it
    /// finished now: its waiters are then the caller's to run
    /// ([`run_callbacks`](Self::run_callbacks)), outside any
    /// `Messenger::batch`, since they are the user's code.
    pub(super) fn poll(&self, py: Python<'_>) -> bool {
        let mut st = lock(&self.state);
        let Outcome::Pending { work, waker } = &mut st.outcome else {
            return false;
        };
        let polled = {
            let _inside = self.runtime.enter();
            work.as_mut().poll(&mut Context::from_waker(waker))
        };
        let Poll::Ready(reply) = polled else {
            return false;
        };
        let owner = self.owner;
        let outcome = match reply.map(|inner| Py::new(py, Incoming { inner, owner })) {
            Ok(Ok(incoming)) => Outcome::Replied(incoming.into_any()),
            Ok(Err(e)) => Outcome::Failed(e.into_value(py).into_any()),
            Err(e) => Outcome::Failed(to_value(py, &e)),
        };
        let spent = std::mem::replace(&mut st.outcome, outcome);
        drop(st);
        let gone = lock(&self.requests).open.remove(&self.id);
        drop((spent, gone));
        true
    }

    /// Runs its waiters (it is done), each in its context, as the loop
    /// runs callbacks: one that raises goes to the loop's exception
    /// handler, and the others still run.
    pub(super) fn run_callbacks(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let callbacks = std::mem::take(&mut lock(&slf.get().state).callbacks);
        for (callback, context) in callbacks {
            let ran = context
                .bind(py)
                .call_method1(intern!(py, "run"), (callback, slf));
            if let Err(e) = ran {
                let context = PyDict::new(py);
                let reported = context
                    .set_item("message", "Exception in a callback of a messenger request")
                    .and_then(|()| context.set_item("exception", e.clone_ref(py).into_value(py)))
                    .and_then(|()| context.set_item("future", slf))
                    .and_then(|()| {
                        slf.get()
                            .event_loop
                            .bind(py)
                            .call_method1(intern!(py, "call_exception_handler"), (context,))
                    });
                if let Err(e) = reported {
                    e.print(py);
                }
            }
        }
    }

    /// Schedules `callback(self)` on the loop in `context`, as asyncio
    /// does for a waiter added once done or for a cancellation.
    fn call_soon(slf: &Bound<'_, Self>, callback: Py<PyAny>, context: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "context"), context)?;
        slf.get().event_loop.bind(py).call_method(
            intern!(py, "call_soon"),
            (callback, slf),
            Some(&kwargs),
        )?;
        Ok(())
    }
}

/// `asyncio.CancelledError(msg)` (or without a message).
fn cancelled_error(py: Python<'_>, msg: Option<&Py<PyAny>>) -> PyResult<PyErr> {
    let class = asyncio(py)?.getattr(intern!(py, "CancelledError"))?;
    let err = match msg {
        Some(m) => class.call1((m.clone_ref(py),))?,
        None => class.call0()?,
    };
    Ok(PyErr::from_value(err))
}

/// The `contextvars` module, imported once.
static CONTEXTVARS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// A copy of the current contextvars context: where a waiter added
/// without one runs, as asyncio's futures do.
fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let module = CONTEXTVARS.get_or_try_init(py, || py.import("contextvars").map(Bound::unbind))?;
    Ok(module
        .bind(py)
        .call_method0(intern!(py, "copy_context"))?
        .unbind())
}

#[pymethods]
impl RequestFuture {
    /// asyncio's flag for a future-like object (``asyncio.isfuture``).
    #[getter(_asyncio_future_blocking)]
    fn blocking(&self) -> bool {
        self.blocking.load(Ordering::Relaxed)
    }

    #[setter(_asyncio_future_blocking)]
    fn set_blocking(&self, value: bool) {
        self.blocking.store(value, Ordering::Relaxed);
    }

    /// The loop it belongs to.
    fn get_loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.event_loop.clone_ref(py)
    }

    /// Whether it is done: replied, failed or cancelled.
    fn done(&self) -> bool {
        !matches!(lock(&self.state).outcome, Outcome::Pending { .. })
    }

    /// Whether it was cancelled.
    fn cancelled(&self) -> bool {
        matches!(lock(&self.state).outcome, Outcome::Cancelled(_))
    }

    /// The reply; raises the request's error, ``CancelledError`` if it
    /// was cancelled, ``InvalidStateError`` if it is not done.
    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &lock(&self.state).outcome {
            Outcome::Replied(v) => Ok(v.clone_ref(py)),
            Outcome::Failed(e) => Err(PyErr::from_value(e.bind(py).clone())),
            Outcome::Cancelled(msg) => Err(cancelled_error(py, msg.as_ref())?),
            Outcome::Pending { .. } => Err(invalid_state(py, "Result is not set.")?),
        }
    }

    /// The request's error, or ``None`` if it was answered; raises
    /// ``CancelledError`` if it was cancelled, ``InvalidStateError`` if it
    /// is not done.
    fn exception(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &lock(&self.state).outcome {
            Outcome::Replied(_) => Ok(None),
            Outcome::Failed(e) => Ok(Some(e.clone_ref(py))),
            Outcome::Cancelled(msg) => Err(cancelled_error(py, msg.as_ref())?),
            Outcome::Pending { .. } => Err(invalid_state(py, "Exception is not set.")?),
        }
    }

    /// Calls ``callback(future)`` once it is done (soon, on the loop, if
    /// it is done already), in ``context`` (default: a copy of the
    /// current one).
    #[pyo3(signature = (callback, *, context = None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        callback: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            _ => copy_context(py)?,
        };
        {
            let mut st = lock(&slf.get().state);
            if matches!(st.outcome, Outcome::Pending { .. }) {
                st.callbacks.push((callback, context));
                return Ok(());
            }
        }
        Self::call_soon(slf, callback, context)
    }

    /// Removes every waiter equal to ``callback``; returns how many.
    fn remove_done_callback(&self, py: Python<'_>, callback: Bound<'_, PyAny>) -> PyResult<usize> {
        let waiters = std::mem::take(&mut lock(&self.state).callbacks);
        let mut kept = Vec::with_capacity(waiters.len());
        let mut removed = 0;
        for (f, context) in waiters {
            if f.bind(py).eq(&callback)? {
                removed += 1;
            } else {
                kept.push((f, context));
            }
        }
        // Waiters added meanwhile (by an ``__eq__``) stay, after these.
        let mut st = lock(&self.state);
        kept.append(&mut st.callbacks);
        st.callbacks = kept;
        Ok(removed)
    }

    /// Cancels the request if it is not done: its callback in the library
    /// is freed at once and its waiters are scheduled. Returns whether it
    /// was cancelled now.
    #[pyo3(signature = (msg = None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        let me = slf.get();
        let (spent, callbacks) = {
            let mut st = lock(&me.state);
            if !matches!(st.outcome, Outcome::Pending { .. }) {
                return Ok(false);
            }
            let spent = std::mem::replace(&mut st.outcome, Outcome::Cancelled(msg));
            (spent, std::mem::take(&mut st.callbacks))
        };
        let gone = lock(&me.requests).open.remove(&me.id);
        if let Outcome::Pending { waker, .. } = &spent {
            // Its id, polled and found gone: the loop's wake-up looks
            // whether its messenger, if dropped, has anything left.
            waker.wake_by_ref();
        }
        // The library's future, dropped: it unregisters its callback.
        drop((spent, gone));
        for (callback, context) in callbacks {
            Self::call_soon(slf, callback, context)?;
        }
        Ok(true)
    }

    /// The ``CancelledError`` a cancelled future raises (``asyncio.gather``
    /// asks for it).
    fn _make_cancelled_error(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let msg = match &lock(&self.state).outcome {
            Outcome::Cancelled(msg) => msg.as_ref().map(|m| m.clone_ref(py)),
            _ => None,
        };
        Ok(cancelled_error(py, msg.as_ref())?.into_value(py).into_any())
    }

    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Yields itself to the awaiting task while not done (the task waits
    /// for it through ``add_done_callback``); then ends with the reply,
    /// or raises.
    fn __next__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let py = slf.py();
        let me = slf.get();
        match &lock(&me.state).outcome {
            Outcome::Pending { .. } => {}
            Outcome::Replied(v) => return Err(PyStopIteration::new_err((v.clone_ref(py),))),
            Outcome::Failed(e) => return Err(PyErr::from_value(e.bind(py).clone())),
            Outcome::Cancelled(msg) => return Err(cancelled_error(py, msg.as_ref())?),
        }
        me.blocking.store(true, Ordering::Relaxed);
        Ok(slf)
    }

    fn __repr__(&self) -> String {
        let state = match &lock(&self.state).outcome {
            Outcome::Pending { .. } => "pending",
            Outcome::Replied(_) => "replied",
            Outcome::Failed(_) => "failed",
            Outcome::Cancelled(_) => "cancelled",
        };
        format!("<aio.RequestFuture {state}>")
    }
}

/// `asyncio.InvalidStateError(what)`.
fn invalid_state(py: Python<'_>, what: &str) -> PyResult<PyErr> {
    let class = asyncio(py)?.getattr(intern!(py, "InvalidStateError"))?;
    Ok(PyErr::from_value(class.call1((what,))?))
}
