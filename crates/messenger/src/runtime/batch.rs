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
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    let outer = HELD.with_borrow_mut(|held| {
        if held.is_some() {
            return false;
        }
        *held = Some(Vec::new());
        true
    });
    if !outer {
        return f();
    }
    let _end = End;
    f()
}

/// Whether this thread is in a batch.
pub(crate) fn active() -> bool {
    HELD.with_borrow(Option::is_some)
}

/// Records `session`, whose write role this thread's batch took.
pub(crate) fn hold(session: &Arc<Session>) {
    HELD.with_borrow_mut(|held| match held {
        Some(held) => held.push(Arc::clone(session)),
        // Not in a batch (cannot happen: the role is taken only in one);
        // write at once rather than keep the role.
        None => session.uncork(),
    });
}

/// Ends the batch: writes what each held session buffered. A guard, so a
/// panic in the batch cannot leave a connection's write role taken.
struct End;

impl Drop for End {
    fn drop(&mut self) {
        let held = HELD.with_borrow_mut(Option::take);
        for session in held.into_iter().flatten() {
            session.uncork();
        }
    }
}
