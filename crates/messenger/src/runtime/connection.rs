//! A connection's life (our DEALER): dial, run the session, and when it
//! ends (the peer closed, its process died, a heartbeat declared it dead)
//! tell everything waiting on it, then redial with capped exponential
//! backoff. Messages sent meanwhile wait in the connection's bounded
//! backlog and go first on the next session; unacknowledged ones are
//! resent once it is up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::driver::{Conn, End, Who};
use super::listener::engine_config;
use crate::address::{ConnectionId, SocketKind};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::events::{Event, EventKind, PeerAddr};
use crate::proto::dedup::DedupWindow;
use crate::runtime::inproc;
use crate::runtime::server_loop::{self, Handler};
use crate::runtime::shared::Shared;
use crate::runtime::socket::{Open, Opening, SocketTasks};
use crate::runtime::socket::{Out, Session, SocketCtx};
use crate::stats::bump;
use crate::transport::stream;
use crate::transport::unacked::Unacked;
use zmtp::Role;

/// Opens a connection (our DEALER) to `endpoint`: dials it (retrying what
/// may pass, until `connect_timeout`), puts its first session up before
/// returning, and starts the task that drives it and redials, and its
/// server loop when it has one.
pub(crate) async fn open(
    opening: &Opening<'_>,
    id: ConnectionId,
    endpoint: &Endpoint,
    handler: Option<Handler>,
) -> Result<Open, Error> {
    let shared = opening.shared;
    let cfg = &shared.config;
    let (slc_tx, slc_rx) = match handler {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(cfg.slc_queue_capacity);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let ctx = Arc::new(SocketCtx::new(
        SocketKind::Connection(id),
        endpoint.clone(),
        opening.identity.clone(),
        slc_tx,
        Arc::clone(&shared.stats),
        Arc::clone(cfg),
    ));
    let connect = tracing::info_span!("connect", id = id.0, %endpoint);
    let first =
        tracing::Instrument::instrument(dial_first(endpoint, &ctx, shared), connect).await?;
    // Up before make_connection returns: sends go straight to it.
    ctx.link_up(&first.1);
    shared.begin_session(&ctx, &first.1);
    let backoff = Backoff {
        initial: cfg.reconnect_initial,
        max: cfg.reconnect_max,
    };
    let tasks = SocketTasks::new(opening.shutdown.child_token());
    let span = tracing::info_span!("connection", id = id.0, %endpoint);
    let driver = drive(
        endpoint.clone(),
        first,
        Arc::clone(&ctx),
        Arc::clone(shared),
        backoff,
        tasks.stop.clone(),
    );
    tasks.spawn(tracing::Instrument::instrument(driver, span));
    if let (Some(handler), Some(rx)) = (handler, slc_rx) {
        server_loop::spawn(
            handler,
            rx,
            Arc::downgrade(shared),
            Arc::downgrade(&ctx),
            opening.loops,
        );
    }
    tracing::debug!(%endpoint, "connected");
    Ok(Open { ctx, tasks })
}

/// How a connection redials after losing its peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// First delay after a loss.
    pub(crate) initial: Duration,
    /// The delay doubles per failed attempt up to this.
    pub(crate) max: Duration,
}

/// One session's transport.
pub(crate) enum Link {
    /// Boxed: an engine is a few hundred bytes, a channel end one pointer.
    Wire(Box<Conn>),
    Inproc(inproc::Conn),
}

/// Dials `endpoint` once and makes a session of it: the ZMTP handshake,
/// then our proof first when a secret is set; all within `limit`.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    socket: &Arc<SocketCtx>,
    shared: &Arc<Shared>,
    limit: Duration,
) -> Result<(Link, Arc<Session>), Error> {
    let cfg = &socket.config;
    if let Endpoint::Inproc(name) = endpoint {
        let (conn, session) = inproc::dial(name, socket, shared)?;
        return Ok((Link::Inproc(conn), session));
    }
    let give_up = crate::clock::now() + limit;
    let stream = stream::dial(endpoint, limit).await?;
    let remote = stream.peer_addr();
    let mut conn = Conn::new(stream, engine_config(socket, Role::Client), None, socket);
    let span = tracing::info_span!("handshake", endpoint = %endpoint, %remote);
    let handshake = tracing::Instrument::instrument(conn.handshake(|_| Ok(())), span);
    match tokio::time::timeout_at(crate::clock::tokio_at(give_up), handshake).await {
        Err(_) | Ok(Err(End::HandshakeTimeout)) => {
            return Err(Error::ConnectTimeout(endpoint.clone()));
        }
        Ok(Err(end)) => return Err(connect_error(endpoint, end)),
        Ok(Ok(_)) => {}
    }
    let outbox = conn
        .outbox(cfg.send_buffer_size)
        .map_err(|end| connect_error(endpoint, end))?;
    let session = Arc::new(
        Session::new(
            Bytes::new(),
            Bytes::new(),
            Out::Wire(outbox),
            socket.session_unacked(),
        )
        .at(remote),
    );
    if let Some(secret) = &cfg.auth {
        // The proof goes first, before anything queued.
        let proof = crate::proto::auth::proof(secret).map_err(|e| {
            let why = format!("cannot make an authentication nonce: {e}");
            Error::connect(endpoint, std::io::Error::other(why))
        })?;
        let id = socket.next_msg_id(&crate::runtime::socket::Route::Session(Arc::clone(
            &session,
        )));
        let payload = crate::proto::wire::encode(
            id,
            crate::proto::wire::NOOP,
            crate::proto::auth::AUTH,
            proof.as_bytes(),
        );
        if session.send(&payload).is_err() {
            return Err(connect_error(endpoint, End::PeerClosed));
        }
    }
    Ok((Link::Wire(Box::new(conn)), session))
}

/// `make_connection`'s dial, retried until `connect_timeout` (backing off
/// from 10 ms to 250 ms) while the failure may pass: nothing listens yet
/// (a server still starting), the connection was reset or closed during
/// the handshake (a listener at its per-address limit makes room by asking
/// an idle peer to give way, then takes the next newcomer), or the
/// listener refused our routing id because a session of our own previous
/// run still holds it (it lets that one go once it has read its close).
/// What cannot pass (a refusal for cause, a bad endpoint) fails at once.
pub(crate) async fn dial_first(
    endpoint: &Endpoint,
    socket: &Arc<SocketCtx>,
    shared: &Arc<Shared>,
) -> Result<(Link, Arc<Session>), Error> {
    let give_up = crate::clock::now() + socket.config.connect_timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        let left = give_up.saturating_duration_since(crate::clock::now());
        match dial(endpoint, socket, shared, left).await {
            Err(e) if may_pass(&e) && crate::clock::now() + delay < give_up => {
                tracing::debug!(endpoint = %endpoint, error = %e, ?delay, "connect failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
            dialled => return dialled,
        }
    }
}

/// Whether a failed dial may succeed if tried again soon.
fn may_pass(e: &Error) -> bool {
    use std::io::ErrorKind;
    match e {
        Error::Connect { source, .. } => matches!(
            source.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                | ErrorKind::NotFound
        ),
        e => id_in_use(e),
    }
}

/// Whether a listener refused us because our routing id is live there.
fn id_in_use(e: &Error) -> bool {
    use zmtp::ZmtpError;
    match e {
        Error::Handshake { source, .. } => match source {
            ZmtpError::PeerError { reason } => reason == crate::runtime::socket::ROUTING_ID_IN_USE,
            ZmtpError::Refused(reason) => *reason == crate::runtime::socket::ROUTING_ID_IN_USE,
            _ => false,
        },
        _ => false,
    }
}

/// Why a dial failed, from how its connection ended.
fn connect_error(endpoint: &Endpoint, end: End) -> Error {
    let endpoint = endpoint.clone();
    match end {
        End::HandshakeTimeout => Error::ConnectTimeout(endpoint),
        End::Zmtp(source) => Error::Handshake { endpoint, source },
        End::Io(source) => Error::connect(&endpoint, source),
        End::PeerClosed | End::Stopped | End::Evicted | End::Auth(_) | End::PartialBudget => {
            Error::connect(&endpoint, std::io::ErrorKind::ConnectionReset.into())
        }
    }
}

/// A redial reached the listener but got no session: told to `events()`
/// (refused by the listener, or a failed handshake). Dials that found
/// nobody listening are not events, as in libzmq's monitor.
fn redial_failed(shared: &Shared, socket: &SocketCtx, e: &Error) {
    let kind = match e {
        Error::Handshake { .. } if id_in_use(e) => EventKind::Refused,
        Error::Handshake {
            source: zmtp::ZmtpError::PeerError { .. },
            ..
        } => EventKind::Refused,
        Error::Handshake { .. } => EventKind::HandshakeFailed,
        _ => return,
    };
    shared.events.emit(|| {
        let why = Some(crate::events::printable(&e.to_string()));
        Event::new(kind, &socket.origin, PeerAddr::Unknown, &Bytes::new(), why)
    });
}

/// Waits `delay` before the next dial, keeping the connection's timer
/// meanwhile: what it sent and is still unacknowledged meets its deadline
/// while the link is down (a dial in progress delays that by at most
/// [`redial_limit`]). `false`: stopped.
async fn pause(
    socket: &SocketCtx,
    unacked: &Unacked,
    delay: Duration,
    stop: &CancellationToken,
) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        let next = unacked.poll_timeout();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(crate::clock::tokio_at(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return false,
            () = tokio::time::sleep_until(until) => return true,
            () = socket.timers.notified() => {}
            () = due => socket.handle_timeout(None, unacked, crate::clock::now()),
        }
    }
}

/// How long one redial waits for its connection and handshake: no longer
/// than `reconnect_max` (at least 1 s), so a dial begun while the peer's
/// link was cut does not wait out TCP's backed-off SYN retransmissions
/// after the link has healed.
fn redial_limit(config: &crate::Config) -> Duration {
    config
        .connect_timeout
        .min(config.reconnect_max.max(Duration::from_secs(1)))
}

/// Runs a connection until `stop`: each session until it ends, then a
/// redial, for as long as the messenger lives. The first session is
/// already up (`make_connection` returns with its link up).
pub(crate) async fn drive(
    endpoint: Endpoint,
    first: (Link, Arc<Session>),
    socket: Arc<SocketCtx>,
    shared: Arc<Shared>,
    backoff: Backoff,
    stop: CancellationToken,
) {
    let (mut link, mut session) = first;
    loop {
        let end = match &mut link {
            Link::Wire(conn) => {
                // The listener numbers its messages to us afresh on every
                // session: a fresh window for them.
                let mut window = DedupWindow::new(socket.config.dedup_window);
                conn.traffic(&socket, &session, &shared, &stop, None, &mut window)
                    .await
            }
            Link::Inproc(conn) => conn.traffic(&socket, &session, &stop).await,
        };
        shared.end_session(&socket, &session, &end);
        let who = Who {
            remote: &session.remote,
            peer: b"",
        };
        end.report(&socket, who);
        let stopping = matches!(end, End::Stopped);
        if let Link::Wire(conn) = link {
            let outbox = match &session.out {
                Out::Wire(o) => Some(o),
                Out::Inproc(_) => None,
            };
            let linger = if stopping {
                socket.config.linger
            } else {
                Duration::ZERO
            };
            conn.close(outbox, linger).await;
        }
        // The session's outbox holds the stream too: drop it now, so the
        // peer sees our close at once and not when a redial succeeds.
        let who_was = session.remote;
        drop(session);
        if stopping || socket.is_closed() {
            return;
        }
        tracing::warn!(endpoint = %socket.origin.endpoint, remote = %who_was, reason = end.close_reason().name(), "connection lost; reconnecting");
        let unacked = socket.session_unacked();
        let mut delay = backoff.initial;
        (link, session) = loop {
            if !pause(&socket, &unacked, delay, &stop).await || socket.is_closed() {
                return;
            }
            let dialled = tokio::select! {
                _ = stop.cancelled() => return,
                d = dial(&endpoint, &socket, &shared, redial_limit(&socket.config)) => d,
            };
            match dialled {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(endpoint = %socket.origin.endpoint, error = %e, ?delay, "reconnect failed");
                    redial_failed(&shared, &socket, &e);
                    delay = (delay * 2).min(backoff.max);
                }
            }
        };
        socket.link_up(&session);
        bump(&socket.stats.local().reconnects);
        shared.begin_session(&socket, &session);
        tracing::info!(endpoint = %socket.origin.endpoint, remote = %session.remote, "reconnected");
    }
}
