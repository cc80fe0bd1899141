//! Writes held back for a batch of sends from one thread
//! ([`Messenger::batch`](crate::Messenger::batch)).
//!
//! A send on tcp or ipc writes at once when nobody holds its connection's
//! write role (`transport/outbox.rs`): the lowest latency for one message,
//! but one `write` per message for a thread that sends many in a row (a
//! binding that polls a loop's queued requests one after another; each
//! write finishes before the next send, so nothing gathers). Inside a
//! batch, such a send takes the role without writing and leaves its
//! session here; the batch's end writes each session's buffer once.
//!
//! Sends on runtime threads need none of this: a connection's task holds
//! the role while the tasks it woke send (`driver.rs`, `read_batch`).

use std::cell::RefCell;
use std::sync::Arc;

use super::socket::Session;

thread_local! {
    /// The sessions whose write role this thread's batch holds; `None`
    /// outside a batch.
    static HELD: RefCell<Option<Vec<Arc<Session>>>> = const { RefCell::new(None) };
}

/// Runs `f` as a batch: this thread's sends hold their writes until it
/// returns (or unwinds). A batch inside a batch is part of the outer one.
///
/// A thread whose locals are being destroyed (a batch in a thread-local's
/// destructor) runs `f` as no batch: each send writes at once.
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    let outer = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if held.is_some() {
            return false;
        }
        *held = Some(Vec::new());
        true
    });
    if outer != Ok(true) {
        return f();
    }
    let _end = End;
    f()
}

/// Whether this thread is in a batch (never while its locals are being
/// destroyed: see [`run`]).
pub(crate) fn active() -> bool {
    HELD.try_with(|held| held.borrow().is_some())
        .unwrap_or(false)
}

/// Records `session`, whose write role this thread's batch took.
pub(crate) fn hold(session: &Arc<Session>) {
    let held = HELD.try_with(|held| match &mut *held.borrow_mut() {
        Some(held) => {
            held.push(Arc::clone(session));
            true
        }
        None => false,
    });
    // Not in a batch (cannot happen: the role is taken only in one);
    // write at once rather than keep the role.
    if held != Ok(true) {
        session.uncork();
    }
}

/// Ends the batch: writes what each held session buffered. A guard, so a
/// panic in the batch cannot leave a connection's write role taken.
struct End;

impl Drop for End {
    fn drop(&mut self) {
        // `run` set it on this thread just before making this guard.
        let held = HELD.try_with(|held| held.borrow_mut().take());
        for session in held.ok().flatten().into_iter().flatten() {
            session.uncork();
        }
    }
}
