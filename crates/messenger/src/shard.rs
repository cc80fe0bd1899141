//! Keeping threads off each other's cache lines: state that every worker
//! thread of a messenger touches per message (the callback table) is
//! split in shards, each on lines of its own, and a thread works
//! in its own shard. One line shared by two cores bounces between them on
//! every write; at 1000 inproc requests in flight that cost more than the
//! work itself.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A value alone on its cache lines (two, for the adjacent-line
/// prefetcher).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// The calling thread's index, for picking its shard (`% shards`):
/// threads are numbered in the order they first ask, so the workers of a
/// runtime get distinct shards while there are enough.
pub(crate) fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}
