//! The ProcessMessage loop and the state it shares with senders.
//!
//! One task per messenger runs [`run`]. For each parsed message it decides,
//! in this order: ACK bookkeeping, the builtins (ECHO), the message-specific
//! callback named by `dst_cb`, then the listener's server-loop callback. It
//! never awaits a peer or user code: replies go out with `try_send` (a full
//! queue drops the ACK or ECHO reply and the peer resends), MSCs written as
//! closures run on tasks of their own, futures are completed through a
//! oneshot, and SLCs run on their listener's task behind a bounded queue.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::time::delay_queue::{self, DelayQueue};

use crate::callbacks::CallbackTable;
use crate::config::Config;
use crate::error::{RequestError, SendError};
use crate::messenger::Incoming;
use crate::stats::{bump, Stats};
use crate::transport::{Inbound, Outbound, SocketCtx, SocketKind};
use crate::wire::{self, ACK, ECHO, NOOP};

/// A reply, or why none came.
pub type Reply = Result<Incoming, RequestError>;

/// How a waiting request learns its outcome.
pub(crate) enum Completion {
    /// A closure (an MSC): runs once, on a task of its own.
    Callback(Box<dyn FnOnce(Reply) + Send>),
    /// A `request` future waiting on the other end.
    Future(oneshot::Sender<Reply>),
}

impl Completion {
    fn complete(self, reply: Reply) {
        match self {
            Completion::Callback(f) => {
                tokio::spawn(async move { f(reply) });
            }
            Completion::Future(tx) => {
                let _ = tx.send(reply);
            }
        }
    }
}

pub(crate) struct Waiter {
    completion: Completion,
    deadline: delay_queue::Key,
    socket: SocketKind,
}

pub(crate) struct Pending {
    table: CallbackTable<Waiter>,
    deadlines: DelayQueue<u64>,
}

/// State shared by the loop, the senders and the server loops.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stats: Arc<Stats>,
    runtime: Handle,
    pending: Mutex<Pending>,
}

impl Shared {
    pub(crate) fn new(config: Config, runtime: Handle) -> Self {
        let limit = config.max_pending_callbacks;
        Shared {
            config,
            stats: Arc::default(),
            runtime,
            pending: Mutex::new(Pending {
                table: CallbackTable::new(limit),
                deadlines: DelayQueue::new(),
            }),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pending_callbacks(&self) -> usize {
        self.pending().table.len()
    }

    /// Registers a callback with a deadline; returns its wire id.
    fn register(
        &self,
        completion: Completion,
        timeout: Duration,
        socket: SocketKind,
    ) -> Result<u64, SendError> {
        // The delay queue arms a tokio timer: make sure one is reachable even
        // when the caller is a plain thread.
        let _rt = self.runtime.enter();
        let mut p = self.pending();
        let Pending { table, deadlines } = &mut *p;
        table
            .insert_with(|id| Waiter {
                completion,
                deadline: deadlines.insert(id, timeout),
                socket,
            })
            .map_err(|full| SendError::TooManyPending(full.0))
    }

    /// Removes a callback without running it (send failed, future dropped).
    pub(crate) fn unregister(&self, id: u64) {
        let mut p = self.pending();
        if let Some(w) = p.table.take(id) {
            p.deadlines.remove(&w.deadline);
        }
    }

    /// Takes the waiter for `id` out of the table, if it is still live.
    fn take(&self, id: u64) -> Option<Completion> {
        let mut p = self.pending();
        let w = p.table.take(id)?;
        p.deadlines.remove(&w.deadline);
        Some(w.completion)
    }

    /// Formats a message, registering its callback first so its wire id can
    /// be the message's src_cb. Returns the outbound message, its msg_id and
    /// the callback id (to unregister if the send fails).
    pub(crate) fn prepare(
        &self,
        socket: &SocketCtx,
        peer: Bytes,
        dst_cb: u64,
        body: &[u8],
        completion: Option<(Completion, Duration)>,
    ) -> Result<(Outbound, u64, Option<u64>), SendError> {
        if socket.is_closed() {
            return Err(SendError::Disconnected);
        }
        let max = self.config.max_message_size;
        // Reject what cannot fit before registering or formatting anything;
        // the exact length is checked once the payload exists.
        let shortest = wire::encoded_len(0, 0, dst_cb, body.len());
        if shortest > max {
            return Err(SendError::TooLarge { len: shortest, max });
        }
        let cb_id = match completion {
            Some((c, timeout)) => Some(self.register(c, timeout, socket.kind)?),
            None => None,
        };
        let msg_id = socket.next_msg_id(&peer);
        let payload = wire::encode(msg_id, cb_id.unwrap_or(NOOP), dst_cb, body);
        if payload.len() > max {
            if let Some(id) = cb_id {
                self.unregister(id);
            }
            return Err(SendError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        Ok((Outbound { peer, payload }, msg_id, cb_id))
    }

    /// Fails every callback waiting on a connection that went away.
    fn fail_socket(&self, kind: SocketKind) {
        let failed = {
            let mut p = self.pending();
            let Pending { table, deadlines } = &mut *p;
            let failed = table.take_matching(|w| w.socket == kind);
            for w in &failed {
                deadlines.remove(&w.deadline);
            }
            failed
        };
        for w in failed {
            w.completion.complete(Err(RequestError::Disconnected));
        }
    }

    /// Fails every waiting callback (shutdown).
    pub(crate) fn fail_all(&self, err: RequestError) {
        let failed = {
            let mut p = self.pending();
            p.deadlines.clear();
            p.table.drain()
        };
        for w in failed {
            w.completion.complete(Err(err.clone()));
        }
    }

    /// Next expired deadline; pending (not finished) while none is due.
    fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<u64> {
        match self.pending().deadlines.poll_expired(cx) {
            Poll::Ready(Some(expired)) => Poll::Ready(expired.into_inner()),
            // Empty: the queue keeps our waker and wakes it on the next insert.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn expire(&self, id: u64) {
        // The delay entry is already gone; only the table entry remains.
        let w = self.pending().table.take(id);
        if let Some(w) = w {
            bump(&self.stats.timeouts);
            w.completion.complete(Err(RequestError::Timeout));
        }
    }

    /// Sends an ACK or builtin reply without waiting: a full queue drops it.
    fn reply_now(&self, socket: &SocketCtx, peer: Bytes, payload: Bytes) -> bool {
        match socket.out_tx.try_send(Outbound { peer, payload }) {
            Ok(()) => {
                bump(&self.stats.sent);
                true
            }
            Err(_) => {
                bump(&self.stats.replies_dropped);
                false
            }
        }
    }

    fn ack(&self, socket: &SocketCtx, peer: &Bytes, msg_id: u64) {
        if self.reply_now(socket, peer.clone(), wire::ack(msg_id)) {
            bump(&self.stats.acks_sent);
        }
    }

    /// ProcessMessage: decides what one message is and hands it on.
    fn process(&self, m: Inbound) {
        let Inbound {
            socket,
            peer,
            payload,
        } = m;
        let dst = payload.dst_cb;
        if dst == ACK {
            bump(&self.stats.acks_received);
            return;
        }
        if dst == ECHO {
            self.ack(&socket, &peer, payload.msg_id);
            let id = socket.next_msg_id(&peer);
            let reply = wire::encode(id, NOOP, payload.src_cb, &payload.body);
            if self.reply_now(&socket, peer, reply) {
                bump(&self.stats.echoes_answered);
            }
            return;
        }
        let incoming = Incoming::new(socket, peer, payload);
        if dst >= wire::FIRST_USER {
            match self.take(dst) {
                Some(c) => {
                    self.ack(&incoming.socket, &incoming.peer, incoming.msg_id);
                    bump(&self.stats.msc_delivered);
                    c.complete(Ok(incoming));
                }
                None => {
                    // Never issued, already used or expired: acknowledged so
                    // the peer stops resending, then dropped.
                    self.ack(&incoming.socket, &incoming.peer, incoming.msg_id);
                    bump(&self.stats.late_replies_dropped);
                }
            }
            return;
        }
        // NOOP (and the reserved id): the listener's server loop.
        let Some(slc) = incoming.socket.slc.clone() else {
            self.ack(&incoming.socket, &incoming.peer, incoming.msg_id);
            bump(&self.stats.unroutable_dropped);
            return;
        };
        let socket = Arc::clone(&incoming.socket);
        let (peer, msg_id) = (incoming.peer.clone(), incoming.msg_id);
        match slc.try_send(incoming) {
            Ok(()) => {
                self.ack(&socket, &peer, msg_id);
                bump(&self.stats.slc_delivered);
            }
            // Not ACKed: the peer keeps it and resends it later.
            Err(mpsc::error::TrySendError::Full(_)) => bump(&self.stats.slc_busy),
            Err(mpsc::error::TrySendError::Closed(_)) => bump(&self.stats.unroutable_dropped),
        }
    }
}

/// Messages the loop takes from its queue before it looks at timers again.
const BATCH: usize = 64;

/// The ProcessMessage loop. Ends when every socket reader has gone.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut disconnects: mpsc::UnboundedReceiver<Arc<SocketCtx>>,
) {
    loop {
        tokio::select! {
            biased;
            m = inbound.recv() => {
                let Some(m) = m else { break };
                shared.process(m);
                for _ in 1..BATCH {
                    match inbound.try_recv() {
                        Ok(m) => shared.process(m),
                        Err(_) => break,
                    }
                }
            }
            Some(ctx) = disconnects.recv() => shared.fail_socket(ctx.kind),
            id = poll_fn(|cx| shared.poll_expired(cx)) => shared.expire(id),
        }
    }
}
