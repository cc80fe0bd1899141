//! The package's own threads, where blocking server loops and message
//! callbacks run: one [`Work`] at a time, handed over a queue
//! ([`WorkQueue`]) from the runtime's tasks, which never take the GIL.
//!
//! Each is a daemon `threading.Thread` whose loop is Python
//! (`messenger/_threads.py`): it takes the next call here, makes it
//! itself, and reports how it went. So a call still running when the
//! interpreter exits (a long job, once `close`'s grace is over) has no Rust
//! frame beneath it. CPython ends such a thread by unwinding its stack
//! (`pthread_exit`, on 3.9 to 3.13), which its own frames take; under the
//! extension's frames it crashed the process (SIGSEGV, or "Fatal Python
//! error: PyGILState_Release"). The one wait in Rust, for the next call,
//! is counted ([`crate::runtime::detached`]), so the exit hook can let it
//! end before the interpreter does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::runtime::detached;

/// Builds a call on the package's thread, under the GIL: the callable and
/// its arguments.
pub(crate) type Call = Box<dyn FnOnce(Python<'_>) -> PyResult<(Py<PyAny>, Py<PyTuple>)> + Send>;

/// One call for a package thread. Dropped unrun (the thread is gone, the
/// interpreter exits), it lets go of what waits for it all the same.
pub(crate) struct Work {
    /// The call, until the thread takes it ([`begin`](Self::begin)).
    call: Option<Call>,
    /// What is logged, with the exception, if the call raises: shared by
    /// every call of its server loop (or every callback), not made per call.
    what: Arc<str>,
    /// Counts the calls that raised.
    errors: Arc<AtomicU64>,
    /// The messenger (its serial) whose server loop this call is, for
    /// `close` to know it is called from inside one; 0 for a callback.
    owner: u64,
    /// Dropped when the call is over: what the library waits on (a server
    /// loop's handler future); `None` for a callback.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Work {
    /// A call that logs `what` and counts `errors` if it raises; `owner`
    /// and `done` as their fields say.
    pub(crate) fn new(
        call: Call,
        what: Arc<str>,
        errors: Arc<AtomicU64>,
        owner: u64,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Self {
        Work {
            call: Some(call),
            what,
            errors,
            owner,
            done,
        }
    }

    /// The callable and its arguments, once; marks the thread as in this
    /// messenger's server loop until [`end`](Self::end).
    fn begin(&mut self, py: Python<'_>) -> Option<PyResult<(Py<PyAny>, Py<PyTuple>)>> {
        let call = self.call.take()?;
        if self.owner != 0 {
            crate::blocking::enter_server_loop(self.owner);
        }
        Some(call(py))
    }

    /// The call is over, however it went: what waits on it is told.
    fn end(self) {
        if self.owner != 0 {
            crate::blocking::leave_server_loop();
        }
        drop(self.done);
    }
}

/// The calls waiting for one package thread, taken by its Python loop,
/// and the one it is making.
#[pyclass(frozen, module = "messenger._messenger")]
pub(crate) struct WorkQueue {
    /// Filled by the runtime's tasks; disconnected when the messenger lets
    /// the thread go, which ends it.
    rx: Mutex<mpsc::Receiver<Work>>,
    /// The call being made: ended when the thread asks for the next.
    current: Mutex<Option<Work>>,
    /// The thread's name, given to the OS thread at its first call.
    name: String,
    /// Whether the OS thread has its name.
    named: AtomicBool,
}

#[pymethods]
impl WorkQueue {
    /// Ends the call the thread made last (what waits on it is told), and
    /// begins the next (the thread is marked as in its server loop until
    /// it ends): its callable and arguments, waited for with the GIL
    /// released; `None` once the thread is let go and nothing is left for
    /// it. A call whose arguments cannot be made (no memory) is logged,
    /// counted and ended here.
    fn next(&self, py: Python<'_>) -> PyResult<Option<(Py<PyAny>, Py<PyTuple>)>> {
        if let Some(done) = lock(&self.current).take() {
            done.end();
        }
        if !self.named.swap(true, Ordering::Relaxed) {
            name_os_thread(&self.name);
        }
        loop {
            // Only this queue's thread takes from it: the lock is never
            // contended.
            let ready = lock(&self.rx).try_recv();
            let mut work = match ready {
                Ok(work) => work,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(None),
                Err(mpsc::TryRecvError::Empty) => {
                    match detached(py, || lock(&self.rx).recv().ok()) {
                        Some(work) => work,
                        None => return Ok(None),
                    }
                }
            };
            match work.begin(py) {
                Some(Ok(call)) => {
                    *lock(&self.current) = Some(work);
                    return Ok(Some(call));
                }
                Some(Err(e)) => {
                    crate::core::log_exception(py, &work.what, &e, &work.errors);
                    work.end();
                }
                None => work.end(),
            }
        }
    }

    /// What to log if the call being made raised.
    fn what(&self) -> String {
        match &*lock(&self.current) {
            Some(work) => work.what.to_string(),
            None => "a call of the package's raised".into(),
        }
    }

    /// The call being made raised (and was logged): counted.
    fn raised(&self) {
        if let Some(work) = &*lock(&self.current) {
            work.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a raising message callback logs (see [`Work`]'s `what`).
pub(crate) fn callback_raised() -> Arc<str> {
    static WHAT: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from("message callback raised"));
    Arc::clone(&WHAT)
}

/// Starts a package thread called `name` (a daemon `threading.Thread`,
/// see the module documentation); it runs the calls sent on the returned
/// sender, and ends once every sender is gone.
pub(crate) fn start(py: Python<'_>, name: String) -> PyResult<mpsc::Sender<Work>> {
    let (tx, rx) = mpsc::channel();
    let queue = WorkQueue {
        rx: Mutex::new(rx),
        current: Mutex::new(None),
        name: name.clone(),
        named: AtomicBool::new(false),
    };
    py.import("messenger._threads")?
        .call_method1("start", (name, queue))?;
    Ok(tx)
}

/// Gives the calling OS thread `name` (what `top -H` and `/proc` show;
/// Linux keeps its first 15 bytes).
fn name_os_thread(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let short: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
        if let Ok(c) = std::ffi::CString::new(short) {
            // SAFETY: names the calling thread with a NUL-terminated
            // string of at most 16 bytes, as the call requires.
            unsafe { libc::pthread_setname_np(libc::pthread_self(), c.as_ptr()) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
