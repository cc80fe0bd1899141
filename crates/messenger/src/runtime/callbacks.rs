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
//!
//! A `request` future's reply comes through a channel of its own on tcp
//! and ipc; on inproc it waits in the shard until the future polls for it
//! ([`ReplyFuture`]): no channel is allocated, and a request answered
//! before its first poll (an ECHO, answered in the sender's own call)
//! never arms a deadline. [`Completion`] says why the two differ.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::clock;
use crate::error::Error;
use crate::proto::callbacks::{CallbackTable, SHARDS, shard_of};
use crate::proto::deadlines::Deadlines;
use crate::shard::{Padded, thread_slot};
use crate::stats::{Stats, bump};
use crate::types::{Incoming, Reply};

/// How a waiting request learns its outcome.
pub(crate) enum Completion {
    /// A closure (an MSC): runs once, on a task of its own.
    Callback(Box<dyn FnOnce(Reply) + Send>),
    /// A `request` future on tcp or ipc, through a channel of its own: its
    /// reply is written by a connection's task, on whichever worker that
    /// runs, while the future polls from its own. A cell per request keeps
    /// the two off the shard's lock, which the shard's other requests
    /// take (measured: the slot below cost 5-10 % of the round trips at
    /// 1000 in flight on tcp; design/PERFORMANCE.md, "inproc's reply in its
    /// slot").
    Channel(oneshot::Sender<Reply>),
    /// An inproc `request` future, which polls its shard for the reply
    /// ([`ReplyFuture`]): the waker of its last poll (none before it). The
    /// reply usually lands inside the send, on the future's own thread:
    /// no channel to allocate.
    Slot(Option<Waker>),
    /// A slot's outcome, kept in its shard's `replies` under this key
    /// until the future takes it.
    Ready(usize),
}

/// What completing a waiter leaves to do once its shard's lock is let go.
enum Done {
    /// Run a closure MSC with its reply (on a task).
    Run(Box<dyn FnOnce(Reply) + Send>, Reply),
    /// Send a `request` future its reply.
    Send(oneshot::Sender<Reply>, Reply),
    /// Wake a `request` future whose reply is in its slot.
    Wake(Option<Waker>),
}

impl Done {
    /// Finishes outside the lock: a closure runs on `runtime` (an inproc
    /// reply may land from any thread); a future gets its reply by its
    /// channel, or is woken to take it from its slot.
    fn finish(self, runtime: &Handle) {
        match self {
            Done::Run(f, reply) => {
                runtime.spawn(async move { f(reply) });
            }
            Done::Send(tx, reply) => {
                let _ = tx.send(reply);
            }
            Done::Wake(waker) => {
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
        }
    }
}

/// One waiting callback. Kept small (48 bytes): a million pending requests
/// are a million of these.
pub(crate) struct Waiter {
    /// How the reply reaches its waiter: a closure, a future's channel or
    /// slot.
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
    /// The outcomes of `request` futures not yet polled, named by their
    /// waiters ([`Completion::Ready`]). Holds at most one per waiter, so
    /// the table's limit bounds it.
    replies: Slab<Reply>,
}

impl Shard {
    /// Completes the waiter `id` with `reply`, if `accept` takes it: a
    /// slot's reply goes in place (the waiter stays until its future takes
    /// it); a closure's or a channel's waiter leaves the table. `None` if
    /// `id` waits no more (already answered, timed out, or unknown) or was
    /// not accepted.
    fn complete(
        &mut self,
        id: u64,
        accept: impl FnOnce(&Waiter) -> bool,
        reply: impl FnOnce() -> Reply,
    ) -> Option<(u64, Done)> {
        let w = self.table.get_mut(id).filter(|w| accept(w))?;
        let msg_id = w.msg_id;
        let done = match &mut w.completion {
            Completion::Ready(_) => return None,
            Completion::Slot(waker) => {
                let waker = waker.take();
                w.completion = Completion::Ready(self.replies.insert(reply()));
                Done::Wake(waker)
            }
            Completion::Callback(_) | Completion::Channel(_) => {
                match self.table.take(id)?.completion {
                    Completion::Callback(f) => Done::Run(f, reply()),
                    Completion::Channel(tx) => Done::Send(tx, reply()),
                    _ => return None,
                }
            }
        };
        Some((msg_id, done))
    }

    /// Frees the waiter `id`, and its reply if one waits for it.
    fn remove(&mut self, id: u64) {
        if let Some(Waiter {
            completion: Completion::Ready(key),
            ..
        }) = self.table.take(id)
        {
            self.replies.try_remove(key);
        }
    }
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
                        replies: Slab::new(),
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
    /// msg_id. The deadline is armed now, or, for a future waiting in its
    /// slot ([`Completion::Slot`]), when it first waits ([`ReplyFuture`]),
    /// so one answered inside its send arms none.
    pub(crate) fn register(
        &self,
        completion: Completion,
        awaited: Awaited<'_>,
        msg_id: impl FnOnce() -> u64,
    ) -> Result<(u64, u64), Error> {
        let mut id_out = 0;
        // The thread's own shard, or the next with room (a thread that is
        // ending has no id: the first).
        let home = thread_slot().unwrap_or(0);
        let mut shard = (0..SHARDS)
            .map(|i| self.shard(home + i))
            .find(|s| s.table.len() < s.table.limit())
            .ok_or_else(|| Error::TooManyPending(self.limit))?;
        let later = matches!(completion, Completion::Slot(_));
        let id = shard
            .table
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
        if !later {
            self.arm(shard, id, awaited.deadline);
        }
        Ok((id, id_out))
    }

    /// Records `id`'s deadline (its shard locked as `shard`), and moves
    /// the timer if it is now the earliest.
    fn arm(&self, mut shard: MutexGuard<'_, Shard>, id: u64, deadline: Instant) {
        let Shard {
            table, deadlines, ..
        } = &mut *shard;
        let moved = deadlines.insert(id, deadline);
        if deadlines.len() > 2 * table.len() + DEADLINE_SLACK {
            deadlines.compact(|id| table.contains(id));
        }
        drop(shard);
        if moved {
            self.moved.notify_one();
        }
    }

    /// A `request` future's poll: its outcome, once there; otherwise its
    /// waker is kept and, on the first such poll, `deadline` armed.
    /// `Shutdown` if the waiter is gone (the messenger shut down).
    fn poll_reply(&self, id: u64, waker: &Waker, deadline: &mut Option<Instant>) -> Poll<Reply> {
        let Some(i) = shard_of(id) else {
            return Poll::Ready(Err(Error::Shutdown));
        };
        let mut shard = self.shard(i);
        let Some(w) = shard.table.get_mut(id) else {
            return Poll::Ready(Err(Error::Shutdown));
        };
        match &mut w.completion {
            Completion::Ready(key) => {
                let key = *key;
                shard.table.take(id);
                Poll::Ready(
                    shard
                        .replies
                        .try_remove(key)
                        .unwrap_or(Err(Error::Shutdown)),
                )
            }
            Completion::Slot(kept) => {
                if !kept.as_ref().is_some_and(|k| k.will_wake(waker)) {
                    *kept = Some(waker.clone());
                }
                match deadline.take() {
                    Some(at) => self.arm(shard, id, at),
                    None => drop(shard),
                }
                Poll::Pending
            }
            // Not a slot: never polled here (a channel's future polls its
            // channel).
            Completion::Callback(_) | Completion::Channel(_) => Poll::Ready(Err(Error::Shutdown)),
        }
    }

    /// Removes a callback without running it (send failed, future dropped),
    /// with its reply if one waited. Its deadline entry goes stale and is
    /// dropped later.
    pub(crate) fn unregister(&self, id: u64) {
        if let Some(i) = shard_of(id) {
            self.shard(i).remove(id);
        }
    }

    /// Completes the callback `id` with the reply `make` builds, if it
    /// waits for a reply from `peer` on `socket`: only the peer a request
    /// went to, on the socket it went out on, can answer it (callback ids
    /// are messenger-wide, and another peer must not complete, or probe,
    /// someone else's request). Returns the msg_id of the request it
    /// answers.
    pub(crate) fn answer(
        &self,
        id: u64,
        socket: u64,
        peer: &[u8],
        make: impl FnOnce() -> Incoming,
    ) -> Option<u64> {
        let mut shard = self.shard(shard_of(id)?);
        let (msg_id, done) = shard.complete(id, |w| w.sent_to(socket, peer), || Ok(make()))?;
        drop(shard);
        done.finish(&self.runtime);
        Some(msg_id)
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
            let mut done = Vec::new();
            {
                let mut shard = self.shard(i);
                let ids = shard.table.ids_matching(|w| {
                    let peer = w.peer.as_deref().map_or(&b""[..], |p| &p[..]);
                    pred(w.socket, peer)
                });
                for id in ids {
                    if let Some((msg_id, d)) = shard.complete(id, |_| true, || Err(err.clone())) {
                        failed.push(msg_id);
                        done.push(d);
                    }
                }
            }
            for d in done {
                d.finish(&self.runtime);
            }
        }
        failed
    }

    /// Fails every waiting callback (shutdown).
    pub(crate) fn fail_all(&self, err: &Error) {
        self.fail_matching(err, |_, _| true);
        for i in 0..SHARDS {
            self.shard(i).deadlines.clear();
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
                    while due.len() < EXPIRE_BATCH {
                        let Some(id) = shard.deadlines.pop_expired(now) else {
                            break;
                        };
                        due.extend(shard.complete(id, |_| true, || Err(Error::Timeout)));
                    }
                    shard.deadlines.next().is_some_and(|next| next <= now)
                };
                for (_, done) in due {
                    bump(&self.stats.local().timeouts);
                    done.finish(&self.runtime);
                }
                if !more {
                    break;
                }
            }
        }
    }
}

/// A `request`'s reply: from its channel (tcp, ipc) or its slot in the
/// waiter's shard (inproc; see [`Completion`]). Dropped before the reply,
/// it frees the callback (and a reply that came meanwhile).
pub(crate) struct ReplyFuture<'a> {
    /// Where the callback waits.
    callbacks: &'a Callbacks,
    /// The callback's wire id; `None` once the reply is taken.
    id: Option<u64>,
    /// The reply's channel; `None`: the reply comes to the slot.
    channel: Option<oneshot::Receiver<Reply>>,
    /// A slot's deadline, to arm at its first poll that must wait; `None`
    /// once armed.
    deadline: Option<Instant>,
}

impl<'a> ReplyFuture<'a> {
    /// The reply to the callback `id` (`None`: the request registered none,
    /// which resolves as `Shutdown`), through `channel` if the waiter is a
    /// [`Completion::Channel`]; a slot's `deadline` is armed at the first
    /// poll that must wait.
    pub(crate) fn new(
        callbacks: &'a Callbacks,
        id: Option<u64>,
        channel: Option<oneshot::Receiver<Reply>>,
        deadline: Option<Instant>,
    ) -> Self {
        ReplyFuture {
            callbacks,
            id,
            channel,
            deadline,
        }
    }
}

impl Future for ReplyFuture<'_> {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let this = &mut *self;
        let Some(id) = this.id else {
            return Poll::Ready(Err(Error::Shutdown));
        };
        let reply = match &mut this.channel {
            Some(rx) => std::task::ready!(Pin::new(rx).poll(cx)).unwrap_or(Err(Error::Shutdown)),
            None => {
                // A task that only ever finds its replies in place (inproc)
                // still yields when its budget is spent, as on a channel.
                let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                let reply = std::task::ready!(this.callbacks.poll_reply(
                    id,
                    cx.waker(),
                    &mut this.deadline
                ));
                coop.made_progress();
                reply
            }
        };
        this.id = None;
        Poll::Ready(reply)
    }
}

impl Drop for ReplyFuture<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.callbacks.unregister(id);
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
    use crate::address::{ConnectionId, Origin, SocketKind};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    /// The socket every test request goes out on (a connection's tag).
    const SOCKET: u64 = 2;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn callbacks() -> Callbacks {
        Callbacks::new(16, Handle::current(), Arc::default())
    }

    /// Registers an inproc `request` future's waiter (a slot), due
    /// `timeout` from now.
    fn request(cb: &Callbacks, timeout: Duration) -> ReplyFuture<'_> {
        register(cb, timeout, false)
    }

    /// Registers a `request` future's waiter, through a channel (tcp, ipc)
    /// or a slot (inproc).
    fn register(cb: &Callbacks, timeout: Duration, channel: bool) -> ReplyFuture<'_> {
        let deadline = clock::now() + timeout;
        let awaited = Awaited {
            socket: SOCKET,
            peer: &Bytes::new(),
            deadline,
        };
        let (completion, rx) = if channel {
            let (tx, rx) = oneshot::channel();
            (Completion::Channel(tx), Some(rx))
        } else {
            (Completion::Slot(None), None)
        };
        let (id, _) = cb.register(completion, awaited, || 7).expect("room");
        ReplyFuture::new(cb, Some(id), rx, Some(deadline))
    }

    fn reply(body: &'static [u8]) -> Incoming {
        Incoming {
            msg_id: 1,
            src_cb: 0,
            dst_cb: 0,
            body: Bytes::from_static(body),
            peer: Bytes::new(),
            origin: Arc::new(Origin {
                endpoint: "inproc://callbacks-test".parse().expect("endpoint"),
                kind: SocketKind::Connection(ConnectionId(1)),
            }),
            peer_key: None,
        }
    }

    fn poll(f: &mut ReplyFuture<'_>, waker: &Arc<Count>) -> Poll<Reply> {
        let waker = Waker::from(Arc::clone(waker));
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    fn deadlines(cb: &Callbacks) -> usize {
        (0..SHARDS).map(|i| cb.shard(i).deadlines.len()).sum()
    }

    fn replies(cb: &Callbacks) -> usize {
        (0..SHARDS).map(|i| cb.shard(i).replies.len()).sum()
    }

    /// An inproc ECHO is answered inside the send: the first poll takes
    /// the reply, and no deadline was ever armed.
    #[tokio::test]
    async fn a_reply_before_the_first_poll_is_taken_and_arms_nothing() {
        let cb = callbacks();
        let mut f = request(&cb, Duration::from_secs(5));
        let id = f.id.expect("registered");
        assert_eq!(cb.answer(id, SOCKET, b"", || reply(b"pong")), Some(7));
        assert_eq!(
            cb.answer(id, SOCKET, b"", || reply(b"again")),
            None,
            "answered once"
        );
        let waker = Arc::new(Count::default());
        match poll(&mut f, &waker) {
            Poll::Ready(Ok(r)) => assert_eq!(&r.body[..], b"pong"),
            other => panic!("not the reply: {:?}", other.map(|r| r.map(|i| i.body))),
        }
        assert_eq!((cb.len(), replies(&cb), deadlines(&cb)), (0, 0, 0));
    }

    /// A future that waits arms its deadline once, and is woken by the
    /// reply; a reply from another socket or peer does not reach it.
    #[tokio::test]
    async fn a_waiting_future_is_woken_by_its_reply_only() {
        let cb = callbacks();
        let mut f = request(&cb, Duration::from_secs(5));
        let id = f.id.expect("registered");
        let waker = Arc::new(Count::default());
        assert!(poll(&mut f, &waker).is_pending());
        assert!(poll(&mut f, &waker).is_pending());
        assert_eq!(deadlines(&cb), 1, "armed at the first wait, once");
        assert_eq!(cb.answer(id, SOCKET + 1, b"", || reply(b"x")), None);
        assert_eq!(cb.answer(id, SOCKET, b"other", || reply(b"x")), None);
        assert_eq!(waker.0.load(Ordering::SeqCst), 0);
        assert_eq!(cb.answer(id, SOCKET, b"", || reply(b"pong")), Some(7));
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(matches!(poll(&mut f, &waker), Poll::Ready(Ok(r)) if &r.body[..] == b"pong"));
        assert_eq!((cb.len(), replies(&cb)), (0, 0));
    }

    /// A tcp or ipc request's deadline is armed as it registers, and its
    /// reply comes through its channel, to it alone.
    #[tokio::test]
    async fn a_network_request_arms_its_deadline_at_registration() {
        let cb = callbacks();
        let mut f = register(&cb, Duration::from_secs(5), true);
        let id = f.id.expect("registered");
        assert_eq!(deadlines(&cb), 1);
        let waker = Arc::new(Count::default());
        assert!(poll(&mut f, &waker).is_pending());
        assert_eq!(deadlines(&cb), 1);
        assert_eq!(cb.answer(id, SOCKET, b"other", || reply(b"x")), None);
        assert_eq!(cb.answer(id, SOCKET, b"", || reply(b"pong")), Some(7));
        assert_eq!(cb.answer(id, SOCKET, b"", || reply(b"again")), None);
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(matches!(poll(&mut f, &waker), Poll::Ready(Ok(r)) if &r.body[..] == b"pong"));
        assert_eq!((cb.len(), replies(&cb)), (0, 0));
        let mut late = register(&cb, Duration::from_millis(10), true);
        assert!(poll(&mut late, &waker).is_pending());
        cb.handle_timeout(clock::now() + Duration::from_secs(1));
        assert!(matches!(
            poll(&mut late, &waker),
            Poll::Ready(Err(Error::Timeout))
        ));
        drop(register(&cb, Duration::from_secs(5), true));
        assert_eq!(cb.len(), 0, "a dropped future frees its callback");
    }

    /// The deadline, once armed, fails the future with `Timeout`; a
    /// shutdown fails the others with `Shutdown`.
    #[tokio::test]
    async fn timeouts_and_shutdown_reach_waiting_futures() {
        let cb = callbacks();
        let mut late = request(&cb, Duration::from_millis(10));
        let mut other = request(&cb, Duration::from_secs(60));
        let waker = Arc::new(Count::default());
        assert!(poll(&mut late, &waker).is_pending());
        assert!(poll(&mut other, &waker).is_pending());
        cb.handle_timeout(clock::now() + Duration::from_secs(1));
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            poll(&mut late, &waker),
            Poll::Ready(Err(Error::Timeout))
        ));
        cb.fail_all(&Error::Shutdown);
        assert!(matches!(
            poll(&mut other, &waker),
            Poll::Ready(Err(Error::Shutdown))
        ));
        assert_eq!((cb.len(), replies(&cb)), (0, 0));
    }

    /// Replies that are always in place (inproc) still let other tasks of
    /// a one-thread runtime run: the future spends tokio's budget.
    #[tokio::test(flavor = "current_thread")]
    async fn replies_in_place_still_yield_to_other_tasks() {
        let cb = callbacks();
        let other = Arc::new(AtomicUsize::new(0));
        let ran = Arc::clone(&other);
        tokio::spawn(async move { ran.store(1, Ordering::SeqCst) });
        for _ in 0..1000 {
            let f = request(&cb, Duration::from_secs(5));
            let id = f.id.expect("registered");
            cb.answer(id, SOCKET, b"", || reply(b"pong"));
            assert!(f.await.is_ok());
        }
        assert_eq!(other.load(Ordering::SeqCst), 1, "the other task never ran");
    }

    /// A future dropped with its reply in place frees both the waiter and
    /// the reply: nothing a dropped request leaves grows.
    #[tokio::test]
    async fn a_dropped_future_frees_its_waiter_and_reply() {
        let cb = callbacks();
        for _ in 0..100 {
            let f = request(&cb, Duration::from_secs(5));
            let id = f.id.expect("registered");
            assert_eq!(cb.answer(id, SOCKET, b"", || reply(b"pong")), Some(7));
            drop(f);
            drop(request(&cb, Duration::from_secs(5)));
        }
        assert_eq!((cb.len(), replies(&cb)), (0, 0));
    }

    /// The per-request bookkeeping budget is 100 bytes (design/PERFORMANCE.md,
    /// "Memory per pending request"): the table slot holds a `Waiter`, the
    /// deadline FIFO 16 bytes more. A `request` future's waker lives in its
    /// `Waiter` (no channel of its own), which takes the completion from 16
    /// bytes to 24.
    #[test]
    fn a_waiter_stays_small() {
        assert_eq!(std::mem::size_of::<Completion>(), 24);
        assert_eq!(std::mem::size_of::<Waiter>(), 48);
    }
}
