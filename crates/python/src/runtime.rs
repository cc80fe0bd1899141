//! The process's tokio runtime, and the one way Python code waits on it.
//!
//! Every messenger of a process runs on one multi-thread runtime with a few
//! workers, made at first use. Its workers never take the GIL: Python code
//! runs only on the caller's thread, on the package's own callback threads
//! and on asyncio loops (see `core.rs`, `blocking.rs` and `aio.rs`).
//!
//! After `os.fork()` the child has the parent's memory but none of its
//! threads: the parent's runtime is a husk whose workers do not exist, and
//! dropping it would wait for them for ever. The runtime is therefore kept
//! per process id: a child that makes a messenger gets a runtime of its own
//! and the parent's is left alone (leaked), never touched.

use std::future::Future;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// This process's id: every call of the API compares it with its
/// messenger's (fork), and `std::process::id()` is a system call, a few
/// percent of an asyncio request. Set when the module is imported
/// ([`watch_forks`]) and renewed in the child of every fork by a
/// `pthread_atfork` handler (`os.fork()`'s or a C library's alike).
static PID: AtomicU32 = AtomicU32::new(0);

/// Run in the child of a fork, before anything else there: only
/// async-signal-safe work (`getpid`, an atomic store).
extern "C" fn forked_child() {
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// Records this process's id and renews it in forked children; once, at
/// import (a single thread, under the GIL).
pub(crate) fn watch_forks() {
    PID.store(std::process::id(), Ordering::Relaxed);
    // SAFETY: registers a plain function with no state; an extension
    // module is never unloaded, so the handler stays valid.
    unsafe {
        libc::pthread_atfork(None, None, Some(forked_child));
    }
}

/// This process's id (see [`PID`]).
pub(crate) fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => std::process::id(),
        pid => pid,
    }
}

/// A runtime and the process that made it.
struct PerProcess {
    /// The process it belongs to: a forked child has another.
    pid: u32,
    /// Leaked, so `&'static` references to it are sound: a runtime is made
    /// once per process (twice only in a race, where the loser is dropped
    /// before anyone sees it).
    runtime: Runtime,
}

/// The current process's runtime, or a parent's (or null) until this
/// process makes its own. A pointer, not a `Mutex`: a lock another thread
/// held when the process forked would stay locked in the child for ever.
static CURRENT: AtomicPtr<PerProcess> = AtomicPtr::new(std::ptr::null_mut());

/// How long a blocking call waits before it looks for a signal (Ctrl-C):
/// short enough to feel immediate, long enough to cost nothing.
const SLICE: Duration = Duration::from_millis(50);

/// Worker threads: `MESSENGER_WORKER_THREADS` if set, else the machine's
/// cores up to 4. The messenger's work per message is a few microseconds;
/// more workers than that only add wake-ups, and the Python side needs
/// cores too.
fn workers() -> usize {
    if let Some(n) = std::env::var("MESSENGER_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(2)
}

/// This process's runtime, made on first use (and again in a forked child).
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let pid = pid();
    loop {
        let seen = CURRENT.load(Ordering::Acquire);
        // SAFETY: a non-null pointer in CURRENT came from `Box::into_raw`
        // below and is never freed, so it is valid for 'static.
        if let Some(current) = unsafe { seen.as_ref() }
            && current.pid == pid
        {
            return Ok(&current.runtime);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers())
            .thread_name("messenger-tokio")
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the runtime: {e}")))?;
        let fresh = Box::into_raw(Box::new(PerProcess { pid, runtime }));
        match CURRENT.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // What `seen` pointed to, if anything, was a parent's: leaked.
            Ok(_) => {
                // SAFETY: just stored; never freed (see above).
                return Ok(unsafe { &(*fresh).runtime });
            }
            Err(_) => {
                // Another thread of this process got there first: ours was
                // never shared, so it may go (its idle workers end).
                // SAFETY: `fresh` came from Box::into_raw and was not stored.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
    }
}

/// Runs `fut` to completion on `rt` from the calling Python thread, with
/// the GIL released, waking every [`SLICE`] to look for a signal: Ctrl-C
/// in the main thread interrupts the wait with `KeyboardInterrupt` (the
/// future is dropped, which cancels what it was doing: a request's callback
/// is freed).
pub(crate) fn wait<F>(py: Python<'_>, rt: &'static Runtime, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        // Only our workers are inside the runtime, and they never run
        // Python code; this would be a bug of ours, not the caller's.
        return Err(PyRuntimeError::new_err(
            "a blocking messenger call on a runtime thread",
        ));
    }
    let _counted = Waiting::new();
    let mut fut = std::pin::pin!(fut);
    loop {
        // The timer is made inside `block_on`, where the runtime's context is.
        let slice =
            py.detach(|| rt.block_on(async { tokio::time::timeout(SLICE, fut.as_mut()).await }));
        match slice {
            Ok(done) => return Ok(done),
            Err(_) => py.check_signals()?,
        }
    }
}

/// Threads inside one of the package's waits, which take the GIL back when
/// it ends: the exit hook waits for none to be left ([`settle_threads`]).
/// CPython ends a thread that takes the GIL while the interpreter is
/// finalizing by unwinding its stack, and a stack with the extension's
/// frames on it cannot be unwound (the process crashed).
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Counts one thread in [`WAITING`] while it lives.
struct Waiting;

impl Waiting {
    fn new() -> Self {
        WAITING.fetch_add(1, Ordering::AcqRel);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `f` with the GIL released, counted in [`WAITING`] until the GIL
/// is back.
pub(crate) fn detached<T, F>(py: Python<'_>, f: F) -> T
where
    F: pyo3::marker::Ungil + FnOnce() -> T,
    T: pyo3::marker::Ungil,
{
    let _counted = Waiting::new();
    py.detach(f)
}

/// The exit hook's last step (`messenger/__init__.py`), once every
/// messenger is closed: waits, with the GIL released and for at most
/// `timeout` seconds, until no thread is inside one of the package's waits
/// (each of them ends at once when its messenger closes, and must take the
/// GIL back before the interpreter finalizes). Whether none is left.
#[pyfunction]
pub(crate) fn settle_threads(py: Python<'_>, timeout: f64) -> bool {
    let limit = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    let end = std::time::Instant::now() + limit;
    py.detach(|| {
        loop {
            if WAITING.load(Ordering::Acquire) == 0 {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}
