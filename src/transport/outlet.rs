//! Hands messages to a live zeromq link from the task that produced them.
//!
//! Without this every outgoing message (a request, an ACK, an ECHO reply)
//! crossed a queue to the socket's writer task before the crate's own
//! per-peer queue: one more task wake per message, on both sides of every
//! round trip. The crate's send half only pushes onto that per-peer queue
//! (100,000 messages deep) and finishes on its first poll unless the queue
//! is full, so a sender can hand the message over under a short lock and
//! never await the crate.
//!
//! Order: a sender goes direct only when nothing waits in the writer's queue
//! (`queued` is zero, read under the same lock the writer sends under), so
//! one sender's messages stay in order even when some of them had to queue.
//!
//! Only with resending on: a message the crate cannot take at once (its
//! queue towards the peer is full: the peer stopped reading) is dropped and
//! counted, and the unacknowledged set resends it. Without resending the
//! writer task awaits the crate instead, which is the back-pressure those
//! users get.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::FutureExt;
use zeromq::{SocketSend, ZmqMessage};

use super::Outbound;

/// The send half of a live zeromq link.
pub(crate) enum LinkTx {
    /// A connection's DEALER.
    Dealer(zeromq::DealerSendHalf),
    /// A listener's ROUTER, with the identity frame its messages carry.
    Router {
        tx: zeromq::RouterSendHalf,
        identity: Bytes,
    },
}

impl LinkTx {
    fn message(&self, out: Outbound) -> Result<ZmqMessage, String> {
        let frames = match self {
            LinkTx::Dealer(_) => vec![Bytes::new(), out.payload],
            LinkTx::Router { identity, .. } => {
                vec![out.peer, identity.clone(), Bytes::new(), out.payload]
            }
        };
        ZmqMessage::try_from(frames).map_err(|e| e.to_string())
    }

    /// Hands one message to the crate without waiting.
    pub(crate) fn send_now(&mut self, out: Outbound) -> Result<(), String> {
        let msg = self.message(out)?;
        let sent = match self {
            LinkTx::Dealer(tx) => tx.send(msg).now_or_never(),
            LinkTx::Router { tx, .. } => tx.send(msg).now_or_never(),
        };
        match sent {
            Some(result) => result.map_err(|e| e.to_string()),
            None => Err("the link's queue towards the peer is full".into()),
        }
    }

    /// Hands one message to the crate, waiting while its queue is full.
    pub(crate) async fn send(&mut self, out: Outbound) -> Result<(), String> {
        let msg = self.message(out)?;
        match self {
            LinkTx::Dealer(tx) => tx.send(msg).await,
            LinkTx::Router { tx, .. } => tx.send(msg).await,
        }
        .map_err(|e| e.to_string())
    }
}

/// Where senders hand messages to a socket's live link.
pub(crate) struct Outlet {
    /// Off without resending (see the module docs).
    enabled: bool,
    tx: Mutex<Option<LinkTx>>,
    /// Messages in the writer's queue that it has not handed on yet.
    queued: AtomicUsize,
}

/// What [`Outlet::try_send`] did.
pub(crate) enum Direct {
    /// Handed to the link.
    Sent,
    /// The link refused it (gone, or its queue is full): lost unless resent.
    Failed(String),
    /// Not now (no link, direct sends off, or messages queued before it):
    /// queue it for the writer, after [`Outlet::will_queue`].
    Queue(Outbound),
}

impl Outlet {
    pub(crate) fn new(enabled: bool) -> Self {
        Outlet {
            enabled,
            tx: Mutex::new(None),
            queued: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LinkTx>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether senders may hand messages to the link themselves.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The link is up: senders may use `tx` until the returned lease is
    /// dropped (the link goes down, or its writer task ends or is aborted),
    /// which drops `tx` and so lets the crate close its socket.
    pub(crate) fn install(&self, tx: LinkTx) -> Lease<'_> {
        *self.lock() = Some(tx);
        Lease(self)
    }

    /// Sends `out` directly if nothing is queued before it.
    pub(crate) fn try_send(&self, out: Outbound) -> Direct {
        if !self.enabled {
            return Direct::Queue(out);
        }
        let mut tx = self.lock();
        match tx.as_mut() {
            Some(tx) if self.queued.load(Ordering::Acquire) == 0 => match tx.send_now(out) {
                Ok(()) => Direct::Sent,
                Err(e) => Direct::Failed(e),
            },
            _ => Direct::Queue(out),
        }
    }

    /// A message is about to enter the writer's queue: direct sends wait
    /// behind it. Undo with [`unqueued`](Self::unqueued) if it does not.
    pub(crate) fn will_queue(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// `n` messages left the writer's queue (handed on, or never entered).
    pub(crate) fn unqueued(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// The writer's side: hands `batch` (taken from its queue, in order)
    /// to the link under the senders' lock, so no direct send overtakes it.
    /// Returns the errors of the messages the link refused.
    pub(crate) fn send_queued(&self, batch: &mut Vec<Outbound>) -> Vec<String> {
        let n = batch.len();
        let mut errors = Vec::new();
        {
            let mut tx = self.lock();
            for out in batch.drain(..) {
                let result = match tx.as_mut() {
                    Some(tx) => tx.send_now(out),
                    None => Err("the link is down".into()),
                };
                if let Err(e) = result {
                    errors.push(e);
                }
            }
            self.unqueued(n);
        }
        errors
    }
}

/// Keeps a link's send half in its [`Outlet`]; dropping it takes it out.
pub(crate) struct Lease<'a>(&'a Outlet);

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Dropped outside the lock: closing a half may do work of its own.
        let tx = self.0.lock().take();
        drop(tx);
    }
}
