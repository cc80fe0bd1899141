//! The waiting callbacks: message-specific callbacks and `request`
//! futures, by wire id, with their deadlines. A state machine with one
//! timer ([`Callbacks::poll_timeout`] / [`Callbacks::handle_timeout`]),
//! driven by one task per messenger ([`run`]), which sleeps while nothing
//! waits.
//!
//! The table is sharded by worker thread (`proto::callbacks::SHARDS`, the
//! shard named in the callback's wire id), each shard with the deadlines of
//! its callbacks: an inproc request, registered and completed on one
//! thread, never waits for another's lock.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::clock;
use crate::error::Error;
use crate::proto::callbacks::{CallbackTable, SHARDS, shard_of};
use crate::proto::deadlines::Deadlines;
use crate::shard::{Padded, thread_index};
use crate::stats::{Stats, bump};
use crate::types::{Incoming, Reply};

/// How a waiting request learns its outcome.
pub(crate) enum Completion {
    /// A closure (an MSC): runs once, on a task of its own.
    Callback(Box<dyn FnOnce(Reply) + Send>),
    /// A `request` future waiting on the other end.
    Future(oneshot::Sender<Reply>),
}

impl Completion {
    /// Completes on `runtime` (the messenger's): an inproc reply may land
    /// from any thread.
    fn complete(self, reply: Reply, runtime: &Handle) {
        match self {
            Completion::Callback(f) => {
                runtime.spawn(async move { f(reply) });
            }
            Completion::Future(tx) => {
                let _ = tx.send(reply);
            }
        }
    }
}

/// One waiting callback. Kept small (40 bytes): a million pending requests
/// are a million of these.
pub(crate) struct Waiter {
    /// How the reply reaches its waiter: a closure, a future's oneshot.
    completion: Completion,
    /// The socket the request went out on (`SocketKind::tag`).
    socket: u64,
    /// The peer the request went to: `None` on a connection (its only
    /// peer), boxed on a listener so the common case costs 8 bytes.
    peer: Option<Box<Bytes>>,
    /// The request's msg_id: a reply proves that message arrived.
    pub(crate) msg_id: u64,
}

impl Waiter {
    fn sent_to(&self, socket: u64, peer: &[u8]) -> bool {
        self.socket == socket
            && match &self.peer {
                // A connection's request (its only peer): no call to
                // compare two empty slices on every reply.
                None => peer.is_empty(),
                Some(p) => p.as_ref() == peer,
            }
    }
}

/// One shard: the callbacks registered from one worker thread (mostly),
/// with their deadlines.
struct Shard {
    /// The callbacks, by wire id.
    table: CallbackTable<Waiter>,
    /// When each times out.
    deadlines: Deadlines,
}

/// Stale deadline entries (of callbacks already answered) tolerated beyond
/// the live ones before they are swept.
const DEADLINE_SLACK: usize = 1024;

/// Callbacks timed out per lock taken, so senders are not held up.
const EXPIRE_BATCH: usize = 64;

/// Who a callback waits on, for [`Callbacks::register`].
pub(crate) struct Awaited<'a> {
    /// The socket the request goes out on (`SocketKind::tag`).
    pub(crate) socket: u64,
    /// The peer of a listener it goes to (empty on a connection).
    pub(crate) peer: &'a Bytes,
    /// When it gives up.
    pub(crate) deadline: Instant,
}

/// See the module documentation.
pub(crate) struct Callbacks {
    /// One per worker thread (see the module documentation), each on
    /// cache lines of its own.
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Most waiting callbacks (`Config::max_pending_callbacks`).
    limit: usize,
    /// A new deadline is earlier than every other: the timer re-arms.
    moved: tokio::sync::Notify,
    /// Where closure callbacks run.
    runtime: Handle,
    /// Timeouts are counted.
    stats: Arc<Stats>,
}

impl Callbacks {
    pub(crate) fn new(limit: usize, runtime: Handle, stats: Arc<Stats>) -> Self {
        // Each shard takes its share; a full one sends callbacks to the next.
        let per_shard = limit.div_ceil(SHARDS);
        let now = clock::now();
        Callbacks {
            shards: (0..SHARDS)
                .map(|i| {
                    Padded(Mutex::new(Shard {
                        table: CallbackTable::shard(per_shard, i),
                        deadlines: Deadlines::new(now),
                    }))
                })
                .collect(),
            limit,
            moved: tokio::sync::Notify::new(),
            runtime,
            stats,
        }
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i % SHARDS]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Callbacks waiting now.
    pub(crate) fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).table.len()).sum()
    }

    /// Registers a callback and gives its request a msg_id (from `msg_id`,
    /// called only once the callback has a slot, so a refused request
    /// leaves no gap in the ids). Returns the callback's wire id and the
    /// msg_id.
    pub(crate) fn register(
        &self,
        completion: Completion,
        awaited: Awaited<'_>,
        msg_id: impl FnOnce() -> u64,
    ) -> Result<(u64, u64), Error> {
        let mut id_out = 0;
        // The thread's own shard, or the next with room.
        let home = thread_index();
        let mut shard = (0..SHARDS)
            .map(|i| self.shard(home + i))
            .find(|s| s.table.len() < s.table.limit())
            .ok_or_else(|| Error::TooManyPending(self.limit))?;
        let Shard { table, deadlines } = &mut *shard;
        let id = table
            .insert_with(|_| {
                id_out = msg_id();
                Waiter {
                    completion,
                    socket: awaited.socket,
                    peer: (!awaited.peer.is_empty()).then(|| Box::new(awaited.peer.clone())),
                    msg_id: id_out,
                }
            })
            .map_err(|_| Error::TooManyPending(self.limit))?;
        let moved = deadlines.insert(id, awaited.deadline);
        if deadlines.len() > 2 * table.len() + DEADLINE_SLACK {
            deadlines.compact(|id| table.contains(id));
        }
        drop(shard);
        if moved {
            self.moved.notify_one();
        }
        Ok((id, id_out))
    }

    /// Removes a callback without running it (send failed, future dropped).
    /// Its deadline entry goes stale and is dropped later.
    pub(crate) fn unregister(&self, id: u64) {
        if let Some(i) = shard_of(id) {
            self.shard(i).table.take(id);
        }
    }

    /// Takes the callback `id` if it waits for a reply from `peer` on
    /// `socket`: only the peer a request went to, on the socket it went
    /// out on, can answer it (callback ids are messenger-wide, and another
    /// peer must not complete, or probe, someone else's request).
    pub(crate) fn take_for(&self, id: u64, socket: u64, peer: &[u8]) -> Option<Waiter> {
        let mut shard = self.shard(shard_of(id)?);
        let ours = shard
            .table
            .get_mut(id)
            .is_some_and(|w| w.sent_to(socket, peer));
        if ours { shard.table.take(id) } else { None }
    }

    /// Completes `w` with `reply` (on the messenger's runtime).
    pub(crate) fn complete(&self, w: Waiter, reply: Incoming) {
        w.completion.complete(Ok(reply), &self.runtime);
    }

    /// Fails the callbacks `pred` picks with `err`; returns the msg_ids of
    /// the requests they waited on.
    pub(crate) fn fail_matching(
        &self,
        err: &Error,
        mut pred: impl FnMut(u64, &[u8]) -> bool,
    ) -> Vec<u64> {
        let mut failed = Vec::new();
        for i in 0..SHARDS {
            failed.extend(self.shard(i).table.take_matching(|w| {
                let peer = w.peer.as_deref().map_or(&b""[..], |p| &p[..]);
                pred(w.socket, peer)
            }));
        }
        failed
            .into_iter()
            .map(|w| {
                let id = w.msg_id;
                w.completion.complete(Err(err.clone()), &self.runtime);
                id
            })
            .collect()
    }

    /// Fails every waiting callback (shutdown).
    pub(crate) fn fail_all(&self, err: &Error) {
        let mut failed = Vec::new();
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            shard.deadlines.clear();
            failed.extend(shard.table.drain());
        }
        for w in failed {
            w.completion.complete(Err(err.clone()), &self.runtime);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run: the
    /// earliest recorded deadline (it may belong to a callback answered
    /// since: then running only drops the stale entry). `None`: nothing
    /// waits.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        (0..SHARDS)
            .filter_map(|i| self.shard(i).deadlines.next())
            .min()
    }

    /// Fails every callback whose deadline has passed at `now` with
    /// `Timeout`, a batch per lock taken.
    pub(crate) fn handle_timeout(&self, now: Instant) {
        for i in 0..SHARDS {
            loop {
                let mut due = Vec::new();
                let more = {
                    let mut shard = self.shard(i);
                    let Shard { table, deadlines } = &mut *shard;
                    while due.len() < EXPIRE_BATCH {
                        let Some(id) = deadlines.pop_expired(now) else {
                            break;
                        };
                        due.extend(table.take(id));
                    }
                    deadlines.next().is_some_and(|next| next <= now)
                };
                for w in due {
                    bump(&self.stats.timeouts);
                    w.completion.complete(Err(Error::Timeout), &self.runtime);
                }
                if !more {
                    break;
                }
            }
        }
    }
}

/// Drives the callbacks' timer: one, armed for the earliest deadline, and
/// re-armed when a new deadline comes before it. One task per messenger;
/// idle while nothing waits.
pub(crate) async fn run(callbacks: Arc<Callbacks>) {
    let timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let moved = callbacks.moved.notified();
    tokio::pin!(moved);
    loop {
        tokio::select! {
            () = &mut timer, if armed.is_some() => {
                armed = None;
                callbacks.handle_timeout(clock::now());
            }
            () = &mut moved => moved.set(callbacks.moved.notified()),
        }
        let next = callbacks.poll_timeout();
        if next != armed {
            if let Some(at) = next {
                timer.as_mut().reset(clock::tokio_at(at));
            }
            armed = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-request bookkeeping budget is 100 bytes (design/PERFORMANCE.md,
    /// "Memory per pending request"): the table slot holds a `Waiter`, the
    /// deadline FIFO 16 bytes more.
    #[test]
    fn a_waiter_stays_small() {
        assert_eq!(std::mem::size_of::<Completion>(), 16);
        assert_eq!(std::mem::size_of::<Waiter>(), 40);
    }
}
