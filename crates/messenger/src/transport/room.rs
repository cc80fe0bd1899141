//! Waiting for room: senders park until something opens (a window, a
//! buffer, a backlog) and whoever opens it wakes them, at the cost of one
//! atomic load when nobody waits.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Senders waiting for something to open, and their wake-up: one atomic
/// load when nobody waits.
#[derive(Default)]
pub(crate) struct Room {
    /// How many wait: opening costs one load when nobody does.
    waiters: AtomicUsize,
    /// Wakes them.
    opened: Notify,
}

impl Room {
    /// Waits until `ready()` holds.
    pub(crate) async fn wait(&self, ready: impl Fn() -> bool) {
        while !ready() {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !ready() {
                opened.await;
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Something opened: wake whoever waits.
    pub(crate) fn wake(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.opened.notify_waiters();
        }
    }
}
