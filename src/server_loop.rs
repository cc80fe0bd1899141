//! Server-loop callbacks (SLCs): the persistent handler of a listener.
//!
//! Each listener runs its SLC on a task of its own, fed by a bounded queue,
//! so a slow handler delays only its own listener's messages (and, once its
//! queue is full, makes the ProcessMessage loop refuse new ones unACKed so
//! peers resend later) and never the loop or other listeners.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::dispatch::Shared;
use crate::error::SendError;
use crate::messenger::{Destination, Incoming, enqueue, try_enqueue};
use crate::transport::SocketCtx;

/// A listener's persistent message handler.
///
/// It runs on the listener's own task, one message at a time, in arrival
/// order. It may reply at once with [`Responder::try_reply`]; long work
/// should be spawned so the next message is not held up.
pub trait ServerLoop: Send + Sync + 'static {
    /// Handles one message that no builtin or MSC claimed.
    fn handle(&self, message: Incoming, responder: Responder);
}

impl<F> ServerLoop for F
where
    F: Fn(Incoming, Responder) + Send + Sync + 'static,
{
    fn handle(&self, message: Incoming, responder: Responder) {
        self(message, responder)
    }
}

pub(crate) type SlcQueue = mpsc::Sender<Incoming>;

/// Answers the sender of one message, from inside an SLC or later.
#[derive(Clone)]
pub struct Responder {
    shared: Arc<Shared>,
    socket: Arc<SocketCtx>,
    peer: Bytes,
    src_cb: u64,
}

impl Responder {
    /// Replies to the message's `src_cb` without waiting. Fails with
    /// [`SendError::Full`] when the listener's send queue is at its
    /// high-water mark, which never blocks the calling SLC.
    pub fn try_reply(&self, body: impl AsRef<[u8]>) -> Result<u64, SendError> {
        let sending = self.shared.prepare(
            &self.socket,
            self.peer.clone(),
            self.src_cb,
            body.as_ref(),
            None,
            None,
        )?;
        try_enqueue(sending)
    }

    /// Replies to the message's `src_cb`, waiting for room in the queue.
    pub async fn reply(&self, body: impl AsRef<[u8]>) -> Result<u64, SendError> {
        let sending = self.shared.prepare(
            &self.socket,
            self.peer.clone(),
            self.src_cb,
            body.as_ref(),
            None,
            None,
        )?;
        enqueue(sending).await
    }

    /// The sender's routing id.
    pub fn peer(&self) -> &Bytes {
        &self.peer
    }

    /// The callback id the sender asked replies to go to.
    pub fn src_cb(&self) -> u64 {
        self.src_cb
    }

    /// Where to send further messages to this peer with
    /// [`Messenger::send_message`](crate::Messenger::send_message).
    pub fn destination(&self) -> Destination {
        Destination::of(&self.socket, &self.peer)
    }
}

/// Runs `slc` on every message its listener's queue delivers. A panicking
/// handler is logged and the loop goes on with the next message.
pub(crate) fn spawn(
    slc: Arc<dyn ServerLoop>,
    mut queue: mpsc::Receiver<Incoming>,
    shared: Weak<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = queue.recv().await {
            let Some(shared) = shared.upgrade() else {
                break;
            };
            let responder = Responder {
                shared,
                socket: Arc::clone(&msg.socket),
                peer: msg.peer.clone(),
                src_cb: msg.src_cb,
            };
            let socket = Arc::clone(&msg.socket);
            if catch_unwind(AssertUnwindSafe(|| slc.handle(msg, responder))).is_err() {
                tracing::error!(endpoint = %socket.endpoint, "server-loop callback panicked; continuing");
            }
        }
    })
}
