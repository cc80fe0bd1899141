//! The asyncio API: `messenger.aio.Messenger` and `messenger.aio.Responder`.
//!
//! Each call returns a future of the loop it was called on. A request's
//! is a [`RequestFuture`] (`future.rs`): the library's future, polled on
//! the loop's thread (the requests made since the loop last ran are sent
//! there as one `Messenger::batch`). Every other call is a task on the
//! runtime resolving an asyncio future. Runtime threads never take the
//! GIL, so they cannot resolve a future themselves: what they finish (or
//! the id of a request whose future they woke) goes into the messenger's
//! [`Hub`] (a queue behind a short lock) and one byte wakes the loop
//! through a socket it watches (`loop.add_reader`). The loop's thread then
//! takes everything queued at once, polls requests, resolves futures,
//! calls callbacks and starts server-loop tasks: one wake-up per batch,
//! not per message, and everything Python runs on the loop's thread.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use messenger::{Callback, Error};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PySet, PyTuple};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::blocking::request_timeout;
use crate::convert;
use crate::core::{
    CALLBACK, Core, HandlerWork, MessengerBase, SERVER_LOOP, callable, log_exception,
};
use crate::errors::{OrRaise, to_py, to_value};
use crate::types::{Connection, Incoming, ResponderBase, destination};

mod future;

pub(crate) use future::RequestFuture;
use future::SharedRequests;

/// Makes a Python value on the loop's thread from what a task produced.
type Make = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// What a runtime task hands to the loop's thread.
enum Event {
    /// Any other call's outcome: resolves call `id`'s future with what
    /// `make` makes.
    Resolve { id: u64, make: Make },
    /// A message-specific callback's reply (or failure), for `callback`.
    Call {
        callback: Arc<Py<PyAny>>,
        reply: Result<messenger::Incoming, Error>,
        /// Counts it among the callbacks still to run until it has.
        _pending: PendingCallback,
    },
    /// A message for a server loop; `done` is dropped when its handling
    /// ends, which frees the library's handler slot.
    Serve {
        server_loop: Arc<Py<PyAny>>,
        msg: messenger::Incoming,
        responder: messenger::Responder,
        done: oneshot::Sender<()>,
    },
}

/// What waits for the loop's thread.
#[derive(Default)]
struct Queue {
    /// Requests whose futures were woken (a reply came, a deadline
    /// passed, room freed), by call id: the loop polls them (those made
    /// on the loop's thread are `Hub::made`). The common
    /// case, kept apart from [`Event`] (whose larger variants would be
    /// copied with every id).
    woken: Vec<u64>,
    /// Everything else.
    events: Vec<Event>,
}

/// Where runtime tasks leave work for one messenger's event loop. Runtime
/// threads hold call ids, never Python objects.
struct Hub {
    /// Everything runtime threads left that the loop has not taken.
    queue: Mutex<Queue>,
    /// Requests made on the loop's thread since it last woke, to be sent
    /// at its next wake: apart from `queue`, so making one does not
    /// contend with runtime threads queueing replies (3 % of the loop's
    /// time when they shared it).
    made: Mutex<Vec<u64>>,
    /// Set once a wake-up byte is on its way and the queue not yet taken:
    /// further events need no byte of their own.
    signaled: AtomicBool,
    /// Written to wake the loop (non-blocking: one byte is ever pending).
    wake: UnixStream,
    /// Watched by the loop (`add_reader`), drained when it wakes.
    watched: UnixStream,
    /// Message-specific callbacks given and not yet run (or dropped).
    callbacks: AtomicUsize,
    /// Its messenger was dropped with calls pending: the loop's wake-up
    /// keeps serving them, and lets the hub go once none is left
    /// (`Waker::release_if_done`).
    orphaned: AtomicBool,
}

/// One message-specific callback of an `aio.Messenger` not yet run,
/// counted in its hub's `callbacks` while it lives: a messenger dropped
/// with callbacks to run stays until they have.
struct PendingCallback(Arc<Hub>);

impl PendingCallback {
    fn new(hub: &Arc<Hub>) -> Self {
        hub.callbacks.fetch_add(1, Ordering::AcqRel);
        PendingCallback(Arc::clone(hub))
    }
}

impl Drop for PendingCallback {
    fn drop(&mut self) {
        self.0.callbacks.fetch_sub(1, Ordering::AcqRel);
        if self.0.orphaned.load(Ordering::Acquire) {
            // Dropped unrun (the library let the callback go): the loop
            // looks whether anything is left.
            self.0.signal();
        }
    }
}

impl Hub {
    fn new() -> std::io::Result<Hub> {
        let (wake, watched) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        watched.set_nonblocking(true)?;
        Ok(Hub {
            queue: Mutex::new(Queue::default()),
            made: Mutex::new(Vec::new()),
            signaled: AtomicBool::new(false),
            wake,
            watched,
            callbacks: AtomicUsize::new(0),
            orphaned: AtomicBool::new(false),
        })
    }

    /// Queues `event` and wakes the loop if it is not already woken.
    /// Called from runtime threads: never takes the GIL, never blocks
    /// beyond the queue's short lock.
    fn push(&self, event: Event) {
        self.queue().events.push(event);
        self.signal();
    }

    /// Queues request `id` to be polled, as [`push`](Self::push).
    fn wake_request(&self, id: u64) {
        self.queue().woken.push(id);
        self.signal();
    }

    /// Queues request `id`, just made on the loop's thread, to be sent at
    /// the loop's next wake.
    fn made(&self, id: u64) {
        self.made.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        self.signal();
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the loop unless a wake-up is on its way already.
    fn signal(&self) {
        // Looked at before it is swapped: while the loop has not woken,
        // every push finds it set, and a read shares the cache line.
        if self.signaled.load(Ordering::Acquire) {
            return;
        }
        if !self.signaled.swap(true, Ordering::AcqRel) {
            // One byte at most is ever unread, so this cannot block; if
            // it fails the loop is gone and nobody is waiting.
            let _ = (&self.wake).write(&[1]);
        }
    }

    /// Takes everything queued (on the loop's thread). The byte is read
    /// before the flag is cleared and the flag before the queue is taken,
    /// so an event pushed at any moment is either taken now or followed
    /// by a byte of its own. Returns the requests made on the loop's
    /// thread (apart: no copy to put them before the woken ones), and the
    /// rest.
    fn take(&self) -> (Vec<u64>, Queue) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.watched).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        self.signaled.store(false, Ordering::SeqCst);
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|p| p.into_inner()));
        (made, std::mem::take(&mut *self.queue()))
    }
}

/// The calls in progress on one loop other than requests (those are
/// `future.rs`'s): each one's asyncio future and task, so the result
/// finds its future and a future its caller cancelled gets its task
/// aborted. A sweep on the loop every [`SWEEP_S`] looks for cancelled
/// futures while such calls are open: asyncio has no hook for a
/// cancellation, and these calls are few.
///
/// Touched on the loop's thread only, with the GIL held; a mutex because
/// a pyclass must be `Sync`.
#[derive(Default)]
struct Calls {
    /// Numbers the calls.
    next: u64,
    /// Call id -> its asyncio future and its task.
    open: HashMap<u64, (Py<PyAny>, AbortHandle)>,
    /// Whether a sweep is scheduled.
    sweeping: bool,
}

/// How often open calls are looked at for cancelled futures, in seconds.
const SWEEP_S: f64 = 0.1;

type SharedCalls = Arc<Mutex<Calls>>;

fn lock(calls: &Mutex<Calls>) -> std::sync::MutexGuard<'_, Calls> {
    calls.lock().unwrap_or_else(|p| p.into_inner())
}

/// Looks at the open calls for cancelled futures (on the loop), aborting
/// their tasks; runs again while calls are open.
#[pyclass(frozen, module = "messenger.aio")]
struct Sweep {
    /// The registry it sweeps.
    calls: SharedCalls,
    /// Where it is scheduled again.
    event_loop: Py<PyAny>,
    /// Woken once it took calls out (a dropped messenger's wake-up looks
    /// whether anything is left).
    hub: Arc<Hub>,
}

#[pymethods]
impl Sweep {
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let mut stopped = Vec::new();
        let again = {
            let mut calls = lock(&me.calls);
            let mut cancelled = Vec::new();
            for (id, (fut, _)) in &calls.open {
                if fut
                    .bind(py)
                    .call_method0(intern!(py, "cancelled"))?
                    .is_truthy()?
                {
                    cancelled.push(*id);
                }
            }
            for id in cancelled {
                if let Some((_, task)) = calls.open.remove(&id) {
                    stopped.push(task);
                }
            }
            calls.sweeping = !calls.open.is_empty();
            calls.sweeping
        };
        stopped.iter().for_each(AbortHandle::abort);
        if !stopped.is_empty() && me.hub.orphaned.load(Ordering::Acquire) {
            me.hub.signal();
        }
        if again {
            me.event_loop
                .bind(py)
                .call_method1(intern!(py, "call_later"), (SWEEP_S, slf))?;
        }
        Ok(())
    }
}

/// A messenger's tie to the event loop it is used on.
struct LoopTie {
    /// The loop.
    event_loop: Py<PyAny>,
    /// Its queue and wake-up socket.
    hub: Arc<Hub>,
    /// The callable the loop runs when woken (kept to remove it).
    waker: Py<Waker>,
    /// The calls in progress.
    registry: Registry,
    /// The requests in progress.
    requests: SharedRequests,
}

/// Whether a messenger's loop still has calls, requests or callbacks of
/// its to finish.
fn busy(hub: &Hub, registry: &Registry, requests: &SharedRequests) -> bool {
    !lock(&registry.calls).open.is_empty()
        || !future::is_idle(requests)
        || hub.callbacks.load(Ordering::Acquire) > 0
}

/// Where calls are registered: the calls in progress, and the sweep
/// that looks for cancelled ones on the loop.
struct Registry {
    /// The loop the sweep runs on.
    event_loop: Py<PyAny>,
    /// The calls in progress.
    calls: SharedCalls,
    /// Looks for cancelled calls.
    sweep: Py<Sweep>,
}

impl Registry {
    fn clone_ref(&self, py: Python<'_>) -> Registry {
        Registry {
            event_loop: self.event_loop.clone_ref(py),
            calls: Arc::clone(&self.calls),
            sweep: self.sweep.clone_ref(py),
        }
    }

    /// Registers call `id` (taken from `next_id` and given to its task),
    /// whose future is `fut` and whose task is `task`. The loop's thread
    /// is here, so the task's result cannot be taken before this.
    fn open(
        &self,
        py: Python<'_>,
        fut: &Bound<'_, PyAny>,
        task: AbortHandle,
        id: u64,
    ) -> PyResult<()> {
        let schedule = {
            let mut calls = lock(&self.calls);
            calls.open.insert(id, (fut.clone().unbind(), task));
            !std::mem::replace(&mut calls.sweeping, true)
        };
        if schedule {
            self.event_loop.bind(py).call_method1(
                intern!(py, "call_later"),
                (SWEEP_S, self.sweep.clone_ref(py)),
            )?;
        }
        Ok(())
    }

    /// A fresh call id.
    fn next_id(&self) -> u64 {
        let mut calls = lock(&self.calls);
        calls.next += 1;
        calls.next
    }
}

/// Run by the event loop when the hub's socket is readable: resolves
/// futures, calls callbacks and starts server-loop tasks for everything
/// queued.
#[pyclass(frozen, module = "messenger.aio")]
struct Waker {
    /// The hub it drains.
    hub: Arc<Hub>,
    /// The loop it runs on.
    event_loop: Py<PyAny>,
    /// The messenger's core: owner serial and counters.
    core: Arc<Core>,
    /// Server-loop tasks running: asyncio keeps only weak references to
    /// tasks, so these are kept here until they end.
    tasks: Py<PySet>,
    /// The calls in progress, by id.
    registry: Registry,
    /// The requests in progress, by id.
    requests: SharedRequests,
}

#[pymethods]
impl Waker {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let (made, Queue { woken, events }) = self.hub.take();
        // The woken requests first, polled as one batch: those sent now
        // (made since the loop last ran) leave in one write per
        // connection. Their waiters (the user's code) run after it.
        let mut finished = Vec::new();
        let poll_all = || {
            // The new requests first: they were made before the wake-up.
            for id in made.into_iter().chain(woken) {
                if let Some(fut) = future::find(py, &self.requests, id)
                    && fut.get().poll(py)
                {
                    finished.push(fut);
                }
            }
        };
        match self.core.messenger(py) {
            Ok(m) => m.batch(poll_all),
            // A forked child: nothing is sent there anyway.
            Err(_) => poll_all(),
        }
        for fut in finished {
            RequestFuture::run_callbacks(fut.bind(py));
        }
        for event in events {
            if let Err(e) = self.handle(py, event) {
                // A failure of ours (an object could not be made):
                // reported, and the other events still handled.
                e.print(py);
            }
        }
        self.release_if_done(py)
    }
}

impl Waker {
    /// Its messenger was dropped with calls pending (see
    /// `AsyncMessenger`'s drop), and none is left now: the loop stops
    /// watching the hub, and drops this wake-up and, with it, the last
    /// hold on the library's messenger, which closes.
    fn release_if_done(&self, py: Python<'_>) -> PyResult<()> {
        if !self.hub.orphaned.load(Ordering::Acquire)
            || busy(&self.hub, &self.registry, &self.requests)
        {
            return Ok(());
        }
        self.event_loop.bind(py).call_method1(
            intern!(py, "remove_reader"),
            (self.hub.watched.as_raw_fd(),),
        )?;
        Ok(())
    }

    /// Call `id`'s future, closed, if it is still waiting for its result
    /// (not cancelled by its caller meanwhile).
    fn finish(&self, py: Python<'_>, id: u64) -> PyResult<Option<Py<PyAny>>> {
        let Some((fut, _task)) = lock(&self.registry.calls).open.remove(&id) else {
            return Ok(None);
        };
        if fut
            .bind(py)
            .call_method0(intern!(py, "done"))?
            .is_truthy()?
        {
            return Ok(None);
        }
        Ok(Some(fut))
    }

    fn handle(&self, py: Python<'_>, event: Event) -> PyResult<()> {
        let owner = self.core.serial;
        match event {
            Event::Resolve { id, make } => {
                let Some(fut) = self.finish(py, id)? else {
                    return Ok(());
                };
                let fut = fut.bind(py);
                match make(py) {
                    Ok(v) => fut.call_method1(intern!(py, "set_result"), (v,))?,
                    Err(e) => {
                        fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?
                    }
                };
            }
            Event::Call {
                callback, reply, ..
            } => {
                let arg = match reply {
                    Ok(msg) => Py::new(py, Incoming { inner: msg, owner })?.into_any(),
                    Err(e) => to_value(py, &e),
                };
                let called = callback.bind(py).call1((arg,)).and_then(|ret| {
                    if ret.is_none() {
                        Ok(())
                    } else {
                        // A coroutine function: its coroutine runs as a task.
                        self.start(py, ret, None, "message callback")
                    }
                });
                if let Err(e) = called {
                    log_exception(
                        py,
                        "message callback raised",
                        &e,
                        &self.core.counters.callback_errors,
                    );
                }
            }
            Event::Serve {
                server_loop,
                msg,
                responder,
                done,
            } => {
                let endpoint = msg.endpoint().to_string();
                let responder = PyClassInitializer::from(ResponderBase {
                    inner: responder,
                    owner,
                    endpoint: endpoint.clone(),
                })
                .add_subclass(Responder {
                    event_loop: self.event_loop.clone_ref(py),
                    registry: self.registry.clone_ref(py),
                    hub: Arc::clone(&self.hub),
                    core: Arc::clone(&self.core),
                });
                let called = Py::new(py, Incoming { inner: msg, owner }).and_then(|incoming| {
                    let responder = Py::new(py, responder)?;
                    server_loop.bind(py).call1((incoming, responder))
                });
                let what = format!("server loop on {endpoint} raised; it goes on");
                match called {
                    // A plain function: done.
                    Ok(ret) if ret.is_none() => drop(done),
                    Ok(ret) => {
                        if let Err(e) = self.start(py, ret, Some((done, what.clone())), &what) {
                            log_exception(py, &what, &e, &self.core.counters.server_loop_errors);
                        }
                    }
                    Err(e) => {
                        log_exception(py, &what, &e, &self.core.counters.server_loop_errors);
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs awaitable `ret` as a task of the loop, kept until it ends;
    /// then its exception (if any) is logged and counted, and `done` (a
    /// server loop's slot) is released.
    fn start(
        &self,
        py: Python<'_>,
        ret: Bound<'_, PyAny>,
        done: Option<(oneshot::Sender<()>, String)>,
        what: &str,
    ) -> PyResult<()> {
        let ensure = asyncio(py)?.getattr(intern!(py, "ensure_future"))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), self.event_loop.bind(py))?;
        // A server loop's task runs in a copy of this context, marked as
        // this messenger's server-loop call (what `close` looks at).
        let marked = match &done {
            Some(_) => {
                Some(in_server_loop(py)?.call_method1(intern!(py, "set"), (self.core.serial,))?)
            }
            None => None,
        };
        let task = ensure.call((ret,), Some(&kwargs));
        if let Some(token) = marked {
            in_server_loop(py)?.call_method1(intern!(py, "reset"), (token,))?;
        }
        let task = task?;
        self.tasks.bind(py).add(&task)?;
        let server_loop = done.is_some();
        let (done, what) = match done {
            Some((d, w)) => (Some(d), w),
            None => (None, what.to_owned()),
        };
        let on_end = TaskEnd {
            done: Mutex::new(done),
            tasks: self.tasks.clone_ref(py),
            core: Arc::clone(&self.core),
            what,
            server_loop,
        };
        task.call_method1(intern!(py, "add_done_callback"), (on_end,))?;
        Ok(())
    }
}

/// Called when a task started for a server loop or a callback ends.
#[pyclass(frozen, module = "messenger.aio")]
struct TaskEnd {
    /// The server loop's slot, released now.
    done: Mutex<Option<oneshot::Sender<()>>>,
    /// Where the task was kept.
    tasks: Py<PySet>,
    /// For the counters.
    core: Arc<Core>,
    /// What to say when it raised.
    what: String,
    /// Which counter its exception goes to.
    server_loop: bool,
}

#[pymethods]
impl TaskEnd {
    fn __call__(&self, py: Python<'_>, task: Bound<'_, PyAny>) -> PyResult<()> {
        self.tasks.bind(py).discard(&task)?;
        drop(self.done.lock().unwrap_or_else(|p| p.into_inner()).take());
        if task.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            return Ok(());
        }
        let exc = task.call_method0(intern!(py, "exception"))?;
        if !exc.is_none() {
            let err = PyErr::from_value(exc);
            let c = &self.core.counters;
            let counter = if self.server_loop {
                &c.server_loop_errors
            } else {
                &c.callback_errors
            };
            log_exception(py, &self.what, &err, counter);
        }
        Ok(())
    }
}

/// The `asyncio` module, imported once.
static ASYNCIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// A `contextvars.ContextVar` holding the serial of the messenger whose
/// server-loop task runs in this context (0: none), made once.
static IN_SERVER_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn in_server_loop(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(IN_SERVER_LOOP
        .get_or_try_init(py, || {
            let var = py.import("contextvars")?.getattr("ContextVar")?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("default", 0u64)?;
            var.call(("messenger_server_loop",), Some(&kwargs))
                .map(Bound::unbind)
        })?
        .bind(py))
}

fn asyncio(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    Ok(ASYNCIO
        .get_or_try_init(py, || py.import("asyncio").map(Bound::unbind))?
        .bind(py))
}

/// A messenger whose calls are awaitables of the running asyncio loop.
///
/// ``Messenger(identity=None, **config)`` takes what the blocking
/// ``messenger.Messenger`` takes. It belongs to the loop it is first used
/// on; server loops, callbacks and every future's result run on that
/// loop's thread. Use it as ``async with``, or ``await close()``.
#[pyclass(
    frozen,
    subclass,
    extends = MessengerBase,
    module = "messenger.aio",
    name = "Messenger"
)]
pub(crate) struct AsyncMessenger {
    /// The library messenger (its base's): at hand for this class's own
    /// calls, which see only their own struct, and for its drop.
    core: Arc<Core>,
    /// The loop it is used on, from its first call.
    bound: OnceLock<LoopTie>,
}

impl AsyncMessenger {
    /// The library messenger, this loop's tie and a new future of the
    /// loop, tying the messenger to the running loop at its first call.
    fn enter<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(&messenger::Messenger, &LoopTie, Bound<'py, PyAny>)> {
        let (m, bound, running) = self.tie(py)?;
        let fut = running.call_method0(intern!(py, "create_future"))?;
        Ok((m, bound, fut))
    }

    /// The library messenger, this loop's tie and the running loop, tying
    /// the messenger to the running loop at its first call.
    fn tie<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(&messenger::Messenger, &LoopTie, Bound<'py, PyAny>)> {
        let m = self.core.messenger(py)?;
        let running = asyncio(py)?.call_method0(intern!(py, "get_running_loop"))?;
        let bound = match self.bound.get() {
            Some(b) => b,
            None => {
                let hub = Arc::new(Hub::new().map_err(|e| {
                    PyRuntimeError::new_err(format!("cannot make the loop's wake-up socket: {e}"))
                })?);
                let calls = SharedCalls::default();
                let sweep = Py::new(
                    py,
                    Sweep {
                        calls: Arc::clone(&calls),
                        event_loop: running.clone().unbind(),
                        hub: Arc::clone(&hub),
                    },
                )?;
                let registry = Registry {
                    event_loop: running.clone().unbind(),
                    calls,
                    sweep,
                };
                let requests = SharedRequests::default();
                let waker = Py::new(
                    py,
                    Waker {
                        hub: Arc::clone(&hub),
                        event_loop: running.clone().unbind(),
                        core: Arc::clone(&self.core),
                        tasks: PySet::empty(py)?.unbind(),
                        registry: registry.clone_ref(py),
                        requests: Arc::clone(&requests),
                    },
                )?;
                running.call_method1(
                    intern!(py, "add_reader"),
                    (hub.watched.as_raw_fd(), waker.clone_ref(py)),
                )?;
                let fresh = LoopTie {
                    event_loop: running.clone().unbind(),
                    hub,
                    waker,
                    registry,
                    requests,
                };
                if let Err(lost) = self.bound.set(fresh) {
                    // Another thread bound it meanwhile (a misuse that the
                    // check below reports); undo ours.
                    let _ = running.call_method1(
                        intern!(py, "remove_reader"),
                        (lost.hub.watched.as_raw_fd(),),
                    );
                }
                self.bound
                    .get()
                    .ok_or_else(|| PyRuntimeError::new_err("no loop bound"))?
            }
        };
        if !bound.event_loop.bind(py).is(&running) {
            return Err(PyRuntimeError::new_err(
                "this aio.Messenger belongs to another event loop: make one per loop",
            ));
        }
        Ok((m, bound, running))
    }

    /// What every sending call starts from: [`enter`](Self::enter), with
    /// `dest` as the library's destination.
    fn enter_to<'py>(
        &self,
        py: Python<'py>,
        dest: &Bound<'py, PyAny>,
    ) -> PyResult<(
        messenger::Messenger,
        &LoopTie,
        Bound<'py, PyAny>,
        messenger::Destination,
    )> {
        let (m, bound, fut) = self.enter(py)?;
        let dest = destination(py, dest, self.core.serial)?;
        Ok((m.clone(), bound, fut, dest))
    }

    /// Runs `work` on the runtime and resolves `fut` with what `make`
    /// makes of its output.
    fn spawn<T, W>(
        &self,
        py: Python<'_>,
        bound: &LoopTie,
        fut: &Bound<'_, PyAny>,
        work: W,
        make: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
    ) -> PyResult<()>
    where
        W: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let hub = Arc::clone(&bound.hub);
        let id = bound.registry.next_id();
        let task = self.core.runtime.spawn(async move {
            let out = work.await;
            hub.push(Event::Resolve {
                id,
                make: Box::new(move |py| make(py, out)),
            });
        });
        bound.registry.open(py, fut, task.abort_handle(), id)
    }
}

/// A library result as a Python value (or its exception).
fn value<T>(
    py: Python<'_>,
    r: Result<T, Error>,
    f: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    match r {
        Ok(v) => f(py, v),
        Err(e) => Err(to_py(py, &e)),
    }
}

/// A sent message's msg_id (or why it was not sent), as a future's result.
fn msg_id(py: Python<'_>, r: Result<u64, Error>) -> PyResult<Py<PyAny>> {
    value(py, r, |py, id| {
        Ok(id.into_pyobject(py)?.into_any().unbind())
    })
}

/// A server loop for the library that hands each message to the loop's
/// thread through the hub, in arrival order; the library's handler future
/// waits until the Python handler (and the task it started) has ended, so
/// the messenger-wide handler limit bounds how many run at once and
/// shutdown's grace covers them.
fn server_loop_on_loop(
    hub: &Arc<Hub>,
    server_loop: Bound<'_, PyAny>,
) -> PyResult<
    impl Fn(messenger::Incoming, messenger::Responder) -> HandlerWork + Send + Sync + 'static,
> {
    let server_loop = callable(server_loop, SERVER_LOOP)?;
    let hub = Arc::clone(hub);
    Ok(
        move |msg: messenger::Incoming, responder: messenger::Responder| -> HandlerWork {
            let (done, finished) = oneshot::channel();
            hub.push(Event::Serve {
                server_loop: Arc::clone(&server_loop),
                msg,
                responder,
                done,
            });
            Box::pin(async move {
                let _ = finished.await;
            })
        },
    )
}

#[pymethods]
impl AsyncMessenger {
    #[new]
    #[pyo3(signature = (identity = None, **config))]
    fn new(
        py: Python<'_>,
        identity: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let (base, core) = MessengerBase::make(py, identity, config)?;
        Ok(base.add_subclass(AsyncMessenger {
            core,
            bound: OnceLock::new(),
        }))
    }

    /// Binds a listener on ``endpoint``; resolves to the bound endpoint
    /// (tcp port 0 resolved). Each message to callback 0 there is handed
    /// to ``server_loop(incoming, responder)`` on the loop's thread; a
    /// coroutine function's coroutine runs as a task. Handlers run
    /// concurrently, up to the messenger's ``max_concurrent_handlers``
    /// (beyond it messages wait, and peers are refused unACKed, so they
    /// resend); an exception is logged and counted
    /// (``stats()["server_loop_errors"]``) and the loop goes on.
    fn listen_for_connection<'py>(
        &self,
        py: Python<'py>,
        endpoint: &str,
        server_loop: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (m, bound, fut) = self.enter(py)?;
        let m = m.clone();
        let at = convert::endpoint(py, endpoint)?;
        let slc = server_loop_on_loop(&bound.hub, server_loop)?;
        let work = async move { m.listen_for_connection_concurrent(&at, slc).await };
        self.spawn(py, bound, &fut, work, |py, r| {
            value(py, r, |py, info| {
                Ok(info
                    .endpoint
                    .to_string()
                    .into_pyobject(py)?
                    .into_any()
                    .unbind())
            })
        })?;
        Ok(fut)
    }

    /// Connects to ``endpoint`` (or returns the pooled connection);
    /// resolves to a ``Connection``. With ``server_loop``, messages the
    /// peer sends to callback 0 over it go there, as a listener's do.
    #[pyo3(signature = (endpoint, server_loop = None))]
    fn make_connection<'py>(
        &self,
        py: Python<'py>,
        endpoint: &str,
        server_loop: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (m, bound, fut) = self.enter(py)?;
        let m = m.clone();
        let at = convert::endpoint(py, endpoint)?;
        let owner = self.core.serial;
        let name = at.to_string();
        let make = move |py: Python<'_>, r: Result<messenger::ConnectionId, Error>| {
            value(py, r, |py, id| {
                Ok(Py::new(
                    py,
                    Connection {
                        id: id.0,
                        endpoint: name,
                        owner,
                    },
                )?
                .into_any())
            })
        };
        match server_loop {
            None => {
                let work = async move { m.make_connection(&at).await };
                self.spawn(py, bound, &fut, work, make)?;
            }
            Some(f) => {
                let slc = server_loop_on_loop(&bound.hub, f)?;
                let work = async move {
                    m.make_connection_with_server_loop_concurrent(&at, slc)
                        .await
                };
                self.spawn(py, bound, &fut, work, make)?;
            }
        }
        Ok(fut)
    }

    /// Sends ``body`` to ``callback_id`` at ``dest``; resolves to its
    /// msg_id once it is handed to the connection (waiting while the
    /// peer's window is full). With ``callback``, it is called once on the
    /// loop's thread with the reply (an ``Incoming``) or the exception
    /// saying why none came; a coroutine function's coroutine runs as a
    /// task.
    #[pyo3(signature = (dest, callback_id, body, callback = None))]
    fn send_message<'py>(
        &self,
        py: Python<'py>,
        dest: &Bound<'py, PyAny>,
        callback_id: u64,
        body: PyBackedBytes,
        callback: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (m, bound, fut, dest) = self.enter_to(py, dest)?;
        let callback = match callback {
            None => None,
            Some(f) => {
                let f = callable(f, CALLBACK)?;
                let hub = Arc::clone(&bound.hub);
                let pending = PendingCallback::new(&hub);
                Some(Callback::new(move |reply| {
                    hub.push(Event::Call {
                        callback: f,
                        reply,
                        _pending: pending,
                    })
                }))
            }
        };
        let work = async move { m.send_message(dest, callback_id, &body, callback).await };
        self.spawn(py, bound, &fut, work, msg_id)?;
        Ok(fut)
    }

    /// Sends ``body`` to ``callback_id`` at ``dest``; resolves to its
    /// msg_id once the peer has acknowledged it.
    fn send_confirmed<'py>(
        &self,
        py: Python<'py>,
        dest: &Bound<'py, PyAny>,
        callback_id: u64,
        body: PyBackedBytes,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (m, bound, fut, dest) = self.enter_to(py, dest)?;
        let work = async move { m.send_confirmed(dest, callback_id, &body).await };
        self.spawn(py, bound, &fut, work, msg_id)?;
        Ok(fut)
    }

    /// Sends ``body`` to ``callback_id`` at ``dest``; resolves to the
    /// reply (an ``Incoming``) within ``timeout`` seconds (default: the
    /// ``request_timeout``), or raises ``Timeout``, ``Disconnected``,
    /// ``Shutdown``. Returns a ``RequestFuture``, a future to asyncio;
    /// cancelling it frees the request at once.
    #[pyo3(signature = (dest, callback_id, body, timeout = None))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        dest: &Bound<'py, PyAny>,
        callback_id: u64,
        body: PyBackedBytes,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (m, bound, running) = self.tie(py)?;
        let dest = destination(py, dest, self.core.serial)?;
        let timeout = request_timeout(py, m, timeout)?;
        let m = m.clone();
        let work = Box::pin(async move {
            m.request_with_timeout(dest, callback_id, &body, timeout)
                .await
        });
        // Sent at the loop's next wake, with every other request made
        // before it: one write per connection for them all.
        let fut = RequestFuture::start(
            py,
            &running,
            &bound.requests,
            &bound.hub,
            self.core.serial,
            self.core.runtime,
            work,
        )?;
        Ok(fut.into_any())
    }

    /// Shuts down as the library does (see ``messenger.Messenger.close``);
    /// resolves when it is done. Awaited in one of this messenger's own
    /// server loops (a QUIT command), it resolves at once: the loop waits
    /// for that handler, so the handler cannot wait for the loop. The
    /// shutdown goes on behind it.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let own_loop = in_server_loop(py)?
            .call_method0(intern!(py, "get"))?
            .extract::<u64>()?
            == self.core.serial;
        let (m, bound, fut) = self.enter(py)?;
        let m = m.clone();
        let work = async move {
            if own_loop {
                m.begin_shutdown();
            } else {
                m.shutdown().await;
            }
        };
        self.spawn(py, bound, &fut, work, |py, ()| Ok(py.None()))?;
        Ok(fut)
    }

    /// Closes without an event loop (the interpreter's exit hook, once
    /// the loop is gone): as ``close``, waiting on this thread.
    fn _close_blocking(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.core.messenger(py)?.clone();
        crate::runtime::wait(py, self.core.runtime, async move { m.shutdown().await })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let running = asyncio(py)?.call_method0(intern!(py, "get_running_loop"))?;
        let fut = running.call_method0(intern!(py, "create_future"))?;
        fut.call_method1(intern!(py, "set_result"), (slf,))?;
        Ok(fut)
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.close(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        slf.as_super().get().describe(slf.py(), "aio.Messenger")
    }
}

impl Drop for AsyncMessenger {
    fn drop(&mut self) {
        let Some(bound) = self.bound.take() else {
            return;
        };
        if crate::runtime::pid() != self.core.pid {
            // A forked child: the loop is the parent's; leave it.
            std::mem::forget(bound);
            return;
        }
        if busy(&bound.hub, &bound.registry, &bound.requests) {
            // Dropped with calls pending (a temporary messenger, or one
            // whose owner went away): each still ends as it would have,
            // its reply, its own deadline, its result. The loop keeps its
            // wake-up, which holds the library's messenger, until none is
            // left (`Waker::release_if_done`); the rest of the tie goes.
            bound.hub.orphaned.store(true, Ordering::Release);
            bound.hub.signal();
            return;
        }
        // Open requests hold handles of the messenger: they must go for
        // the messenger to close. (Their futures' references are dropped
        // as Python allows: now under the GIL, or deferred by PyO3.)
        drop(future::drain(&bound.requests));
        // Stop watching the hub's socket (from the loop's thread; the
        // loop may be closed, which is fine).
        let _ = Python::try_attach(|py| {
            let lp = bound.event_loop.bind(py);
            let fd = bound.hub.watched.as_raw_fd();
            if let Ok(remove) = lp.getattr("remove_reader") {
                let _ = lp.call_method1("call_soon_threadsafe", (remove, fd));
            }
            drop(bound.waker);
        });
    }
}

/// Answers the sender of one message, from a server loop or later (on the
/// loop's thread). Who sent it and where it came in are its base's
/// (`ResponderBase`, shared with the blocking API).
#[pyclass(frozen, extends = ResponderBase, module = "messenger.aio", name = "Responder")]
pub(crate) struct Responder {
    /// The loop its futures belong to.
    event_loop: Py<PyAny>,
    /// Where a reply that waits for room is registered.
    registry: Registry,
    /// Where a reply that waits for room reports.
    hub: Arc<Hub>,
    /// The messenger it belongs to.
    core: Arc<Core>,
}

#[pymethods]
impl Responder {
    /// Replies with ``body`` to the message's ``src_cb``; an awaitable that
    /// is done at once for the first reply to a request (a place was kept
    /// for it), and waits for room for a further one.
    fn reply<'py>(slf: &Bound<'py, Self>, body: PyBackedBytes) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (base, me) = (slf.as_super().get(), slf.get());
        me.core.messenger(py)?;
        let fut = me
            .event_loop
            .bind(py)
            .call_method0(intern!(py, "create_future"))?;
        match base.try_reply(me.core.runtime, &body) {
            Ok(()) => {
                fut.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
            Err(Error::Full) => {
                let r = base.inner.clone();
                let hub = Arc::clone(&me.hub);
                let id = me.registry.next_id();
                let task = me.core.runtime.spawn(async move {
                    let sent = r.reply(&body).await;
                    hub.push(Event::Resolve {
                        id,
                        make: Box::new(move |py| value(py, sent, |py, ()| Ok(py.None()))),
                    });
                });
                me.registry.open(py, &fut, task.abort_handle(), id)?;
            }
            Err(e) => return Err(to_py(py, &e)),
        }
        Ok(fut)
    }

    /// Replies without waiting: raises ``Full`` where ``reply`` would wait.
    fn try_reply(slf: &Bound<'_, Self>, body: PyBackedBytes) -> PyResult<()> {
        let py = slf.py();
        let (base, me) = (slf.as_super().get(), slf.get());
        me.core.messenger(py)?;
        base.try_reply(me.core.runtime, &body).or_raise(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        slf.as_super().get().describe("aio.Responder")
    }
}
