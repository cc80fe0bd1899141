//! A connection's driver: the one task that owns a DEALER-like link and its
//! send queue across the link's lifetimes.
//!
//! While the link is up it moves messages from the queue to the link. When
//! the link goes down (the peer closed, its process died, or a heartbeat
//! declared it dead) it tells the messenger, which fails the requests
//! waiting on it with `Disconnected`, then redials with capped exponential
//! backoff. Messages sent meanwhile wait in the bounded queue (senders block
//! at the high-water mark, try-senders get `Full`); unacknowledged ones are
//! resent once the link is back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Inbound, Outbound, SocketCtx, inproc, zmq};
use crate::endpoint::Endpoint;
use crate::error::ConnectError;
use crate::stats::bump;

/// How a connection redials after losing its peer.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay after a loss.
    pub initial: Duration,
    /// The delay doubles per failed attempt up to this.
    pub max: Duration,
}

pub(crate) enum Link {
    Zmq(zmq::ZmqLink),
    Inproc(inproc::InprocLink),
}

impl Link {
    async fn send(&mut self, payload: Bytes) -> Result<(), String> {
        match self {
            Link::Zmq(l) => l.send(payload).await,
            Link::Inproc(l) => l.send(payload).await,
        }
    }

    /// Closes the link, letting what was sent reach the peer for up to `linger`.
    async fn close(self, linger: Duration) {
        match self {
            Link::Zmq(l) => l.close(linger).await,
            Link::Inproc(l) => drop(l),
        }
    }
}

/// Everything needed to dial the same peer again.
pub(crate) struct Dialer {
    pub(crate) endpoint: Endpoint,
    pub(crate) identity: Bytes,
    pub(crate) connect_timeout: Duration,
    pub(crate) capacity: usize,
    pub(crate) ctx: Arc<SocketCtx>,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Limits for the frame guard in front of tcp and ipc links.
    pub(crate) max_message: u64,
    /// Whether tcp and ipc links go through the frame guard at all.
    pub(crate) guarded: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) linger: Duration,
    /// Proves our knowledge of the listener's secret on every new link.
    pub(crate) auth: Option<crate::auth::Secret>,
}

impl Dialer {
    pub(crate) async fn dial(&self) -> Result<(Link, oneshot::Receiver<()>), ConnectError> {
        let (down_tx, down_rx) = oneshot::channel();
        let link = match &self.endpoint {
            Endpoint::Inproc(name) => Link::Inproc(inproc::dial(
                name,
                &self.identity,
                self.capacity,
                &self.ctx,
                &self.inbound,
                down_tx,
            )?),
            other => Link::Zmq(
                zmq::dial(
                    other,
                    &self.identity,
                    self.connect_timeout,
                    self.guarded,
                    super::relay::Settings {
                        max_message: self.max_message,
                        handshake_timeout: self.handshake_timeout,
                        ctx: Arc::clone(&self.ctx),
                        sessions: false,
                        auth: None,
                    },
                    &self.inbound,
                    down_tx,
                )
                .await?,
            ),
        };
        let mut link = link;
        if let Some(secret) = &self.auth
            && matches!(link, Link::Zmq(_))
        {
            // The proof goes first, before anything queued.
            let proof = crate::auth::proof(secret).map_err(|e| ConnectError::Refused {
                endpoint: self.endpoint.clone(),
                message: format!("cannot make an authentication nonce: {e}"),
            })?;
            let id = self.ctx.next_msg_id(&Bytes::new());
            let payload =
                crate::wire::encode(id, crate::wire::NOOP, crate::auth::AUTH, proof.as_bytes());
            link.send(payload)
                .await
                .map_err(|message| ConnectError::Refused {
                    endpoint: self.endpoint.clone(),
                    message,
                })?;
        }
        Ok((link, down_rx))
    }
}

/// Messages the driver takes from its queue per wake-up.
const BATCH: usize = 64;

/// Runs a connection until `stop` (then closes the link, lingering) or
/// until its queue closes. `lost` tells the messenger each time the link
/// goes down.
pub(crate) async fn drive(
    dialer: Dialer,
    first: (Link, oneshot::Receiver<()>),
    mut queue: mpsc::Receiver<Outbound>,
    backoff: Backoff,
    stop: tokio_util::sync::CancellationToken,
) {
    let ctx = Arc::clone(&dialer.ctx);
    let (mut link, mut down) = first;
    // Built once, not per message: each select! below polls the same ones.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Up: drain the queue into the link until it goes down.
        let dead = ctx.link_dead.notified();
        tokio::pin!(dead);
        // While the link is up, senders hand messages to it themselves; this
        // task only writes what had to queue (link down, or queued behind).
        let lease = match &mut link {
            Link::Zmq(l) if ctx.outlet.enabled() => l.lend_tx().map(|tx| ctx.outlet.install(tx)),
            _ => None,
        };
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    drop(lease);
                    link.close(dialer.linger).await;
                    return;
                }
                _ = &mut down => break,
                _ = &mut dead => break,
                n = queue.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    if lease.is_some() {
                        for e in ctx.outlet.send_queued(&mut batch) {
                            ctx.send_failed(&e);
                        }
                        continue;
                    }
                    ctx.outlet.unqueued(n);
                    for out in batch.drain(..) {
                        if let Err(e) = link.send(out.payload).await {
                            // Kept in the unacknowledged set: resent later.
                            ctx.send_failed(&e);
                        }
                    }
                }
            }
        }
        drop(lease);
        drop(link);
        ctx.set_up(false);
        tracing::warn!(endpoint = %ctx.endpoint, "connection lost; reconnecting");
        ctx.report_link_lost().await;
        let mut delay = backoff.initial;
        (link, down) = loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(delay) => {}
            }
            if queue.is_closed() || ctx.is_closed() {
                return;
            }
            match dialer.dial().await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(endpoint = %ctx.endpoint, error = %e, ?delay, "reconnect failed");
                    delay = (delay * 2).min(backoff.max);
                }
            }
        };
        ctx.new_session();
        ctx.set_up(true);
        bump(&ctx.stats.reconnects);
        tracing::info!(endpoint = %ctx.endpoint, "reconnected");
    }
}
