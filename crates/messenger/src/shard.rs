//! Keeping threads off each other's cache lines: state that every worker
//! thread of a messenger touches per message (the callback table) is
//! split in shards, each on lines of its own, and a thread works
//! in its own shard. One line shared by two cores bounces between them on
//! every write; at 1000 inproc requests in flight that cost more than the
//! work itself. [`thread_slot`] names the thread: its shard (`% shards`),
//! and its block of counters, with ids reused as threads end.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A value alone on its cache lines (two, for the adjacent-line
/// prefetcher).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// The ids [`thread_slot`] gives out.
#[derive(Debug)]
struct Slots {
    /// Ids of threads that have ended, for the next threads to take.
    free: BinaryHeap<Reverse<usize>>,
    /// The next id never given out.
    next: usize,
}

impl Slots {
    /// The lowest free id.
    fn take(&mut self) -> usize {
        match self.free.pop() {
            Some(Reverse(id)) => id,
            None => {
                self.next += 1;
                self.next - 1
            }
        }
    }

    /// `id`'s thread has ended.
    fn give_back(&mut self, id: usize) {
        self.free.push(Reverse(id));
    }
}

/// Every thread's slot id comes from here.
static SLOTS: Mutex<Slots> = Mutex::new(Slots {
    free: BinaryHeap::new(),
    next: 0,
});

/// [`SLOTS`], locked (a panic while it was held changed nothing half-way).
fn slots() -> MutexGuard<'static, Slots> {
    SLOTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`thread_slot`]'s value for a thread that has not asked yet.
const FRESH: usize = usize::MAX;

/// [`thread_slot`]'s value for a thread whose id went back (it is ending).
const GONE: usize = usize::MAX - 1;

thread_local! {
    /// The thread's slot id, [`FRESH`] or [`GONE`]. No destructor, so it
    /// can be read however far the thread's teardown has gone.
    static SLOT: Cell<usize> = const { Cell::new(FRESH) };
    /// Gives the id back as the thread's locals are destroyed.
    static RELEASE: Release = const { Release };
}

/// Puts the thread's id back in [`SLOTS`] when its locals are
/// destroyed; from then on the thread has none.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        // First marked gone, so this thread never uses the id again once
        // another thread may have it.
        let id = SLOT.replace(GONE);
        if id < GONE {
            slots().give_back(id);
        }
    }
}

/// A small id that the calling thread alone holds while it lives: what
/// state kept per thread (a block of counters) is indexed by, and what
/// picks its shard (`% shards`), so the workers of a runtime, numbered in
/// the order they first ask, get distinct shards while there are enough.
/// An ended thread's id goes to the next thread that asks (the lowest free
/// one first), so the ids stay about as many as the threads alive at once.
///
/// `None` once the thread's locals are being destroyed (a message sent
/// from a thread-local's destructor): its id may be another thread's by
/// then. Unlike the `thread_local` crate's id, asking never panics, at
/// any point of a thread's teardown.
#[inline]
pub(crate) fn thread_slot() -> Option<usize> {
    match SLOT.get() {
        GONE => None,
        FRESH => take_slot(),
        id => Some(id),
    }
}

/// The first [`thread_slot`] of a thread: an id, held until its locals
/// are destroyed.
#[cold]
fn take_slot() -> Option<usize> {
    let id = slots().take();
    SLOT.set(id);
    // Arms the release. Fails only if this thread's `RELEASE` was
    // destroyed already, which happens only after it held an id: not here.
    if RELEASE.try_with(|_| ()).is_err() {
        SLOT.set(GONE);
        slots().give_back(id);
        return None;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lowest free id first: ids stay as few as the threads alive.
    #[test]
    fn an_ended_threads_id_is_given_again_lowest_first() {
        let mut slots = Slots {
            free: BinaryHeap::new(),
            next: 0,
        };
        let [a, b, c] = [slots.take(), slots.take(), slots.take()];
        assert_eq!([a, b, c], [0, 1, 2]);
        slots.give_back(c);
        slots.give_back(a);
        assert_eq!([slots.take(), slots.take(), slots.take()], [0, 2, 3]);
    }

    /// Threads alive at once hold distinct ids; a thread's teardown sees
    /// none once it gave its id back, and asking then does not panic.
    #[test]
    fn slots_are_distinct_and_gone_in_teardown() {
        let barrier = std::sync::Barrier::new(8);
        let held: Vec<usize> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let id = thread_slot().unwrap();
                        // All eight alive at once.
                        barrier.wait();
                        assert_eq!(thread_slot(), Some(id));
                        id
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut distinct = held.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "{held:?}");
        /// Asks for its thread's id as the thread's locals are destroyed.
        struct AskOnDrop(std::sync::mpsc::Sender<Option<usize>>);
        impl Drop for AskOnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(thread_slot());
            }
        }
        thread_local! {
            static ASK: std::cell::RefCell<Option<AskOnDrop>> = const { std::cell::RefCell::new(None) };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Set before the id is taken: destroyed after it went back.
            ASK.with(|a| *a.borrow_mut() = Some(AskOnDrop(tx)));
            assert!(thread_slot().is_some());
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), None);
    }
}
