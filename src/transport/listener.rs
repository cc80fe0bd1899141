//! A tcp or ipc listener: the accept loop (connection limit, backoff on
//! accept errors) and each peer's life as our ROUTER sees it: handshake,
//! routing id, proof, session, traffic, end.
//!
//! Nothing is sent to a peer and no session begins before its handshake,
//! and its proof when a secret is set, is complete: until then it is in
//! no routing table, so no reply, ACK or resend can reach it. A routing
//! id that a live session holds is refused with ERROR, and the live
//! session is untouched (libzmq's ROUTER without ROUTER_HANDOVER).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::driver::{Conn, End};
use super::stream::{Listener, Stream};
use super::{Out, RouteError, Session, SocketCtx};
use crate::auth::{AuthError, Verifier};
use crate::dispatch::Shared;
use crate::stats::bump;
use crate::wire;
use crate::zmtp::{EngineConfig, Role, SocketType};

/// What a listener's peers need beyond their socket.
pub(crate) struct PeerSettings {
    /// Checks each peer's proof when a secret is set.
    pub(crate) auth: Option<std::sync::Mutex<Verifier>>,
}

/// The ZMTP side of a socket of ours, from its configuration.
pub(crate) fn engine_config(socket: &SocketCtx, role: Role) -> EngineConfig {
    let cfg = &socket.config;
    EngineConfig {
        role,
        socket_type: if socket.is_listener() {
            SocketType::Router
        } else {
            SocketType::Dealer
        },
        identity: socket.identity.clone(),
        limits: cfg.zmtp_limits(),
        handshake_timeout: cfg.handshake_timeout,
        heartbeat: cfg.zmtp_heartbeat,
    }
}

/// Accepts peers (at most `max_connections` at once) until `stop`, then
/// waits for their sessions to wind down (they watch `stop` too).
pub(crate) async fn accept_loop(
    listener: Listener,
    socket: Arc<SocketCtx>,
    shared: Arc<Shared>,
    settings: Arc<PeerSettings>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(
        socket.config.max_connections_per_listener.max(1),
    ));
    let mut peers = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        while peers.try_join_next().is_some() {}
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                bump(&socket.stats.connection_limit_hits);
                if socket.warn_allowed() {
                    tracing::warn!(endpoint = %socket.endpoint, "connection limit reached; accepting again when one closes");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    Some(_) = peers.join_next() => continue,
                }
            }
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                if socket.warn_allowed() {
                    tracing::warn!(endpoint = %socket.endpoint, error = %e, ?backoff, "accept failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (socket, shared, settings, stop) = (
            Arc::clone(&socket),
            Arc::clone(&shared),
            Arc::clone(&settings),
            stop.clone(),
        );
        let span = tracing::debug_span!("peer");
        peers.spawn(tracing::Instrument::instrument(
            async move {
                let _permit = permit;
                serve_peer(stream, &socket, &shared, &settings, &stop).await;
            },
            span,
        ));
    }
    drop(listener);
    while peers.join_next().await.is_some() {}
}

/// One peer, from accept to close.
async fn serve_peer(
    stream: Stream,
    socket: &Arc<SocketCtx>,
    shared: &Shared,
    settings: &PeerSettings,
    stop: &CancellationToken,
) {
    let accepted_at = Instant::now();
    let cfg = &socket.config;
    let mut conn = Conn::new(stream, engine_config(socket, Role::Server));
    let handshake = async {
        let peer = conn
            .handshake(|peer| {
                if socket.route_in_use(&peer.identity) {
                    Err(super::ROUTING_ID_IN_USE)
                } else {
                    Ok(())
                }
            })
            .await?;
        let proof = match &settings.auth {
            None => None,
            Some(verifier) => {
                let deadline = crate::deadlines::deadline_after(accepted_at, cfg.handshake_timeout);
                let mut frames = conn.first_message(deadline).await?;
                Some(check_proof(socket, &mut frames, verifier).map_err(End::Auth)?)
            }
        };
        Ok::<_, End>((peer, proof))
    };
    let started = tokio::select! {
        _ = stop.cancelled() => Err(End::Stopped),
        r = handshake => r,
    };
    let (peer, proof) = match started {
        Ok(s) => s,
        Err(end) => {
            if matches!(&end, End::Zmtp(crate::zmtp::ZmtpError::Refused(_))) {
                bump(&socket.stats.routing_id_conflicts);
            }
            end.report(socket);
            conn.close(None, Duration::ZERO).await;
            return;
        }
    };
    let outbox = conn.outbox(cfg.send_buffer_size);
    let head = socket.identity.clone();
    let unacked = socket.session_unacked();
    let added = socket.add_route(peer.identity, |id| {
        Session::new(id, head, Out::Wire(outbox), unacked)
    });
    let session = match added {
        Ok(s) => s,
        Err(e) => {
            if e == RouteError::InUse {
                // Taken while this peer proved itself: the live one stays.
                bump(&socket.stats.routing_id_conflicts);
            }
            conn.close(None, Duration::ZERO).await;
            return;
        }
    };
    tracing::debug!(peer = ?session.peer, "session begins");
    // The proof is recorded and ACKed like any message (callback 3
    // delivers nothing).
    let end = conn.traffic(socket, &session, shared, stop, proof).await;
    socket.end_session(&session, shared);
    end.report(socket);
    // Shutdown: what is queued gets the linger. A peer that left gets a
    // moment for our last replies. A peer cut off for what it did gets
    // nothing more: no flush, and its unread bytes reset the connection.
    let linger = match end {
        End::Stopped => cfg.linger,
        End::PeerClosed => Duration::from_millis(100).min(cfg.linger),
        _ => Duration::ZERO,
    };
    let outbox = match &session.out {
        Out::Wire(o) => Some(o),
        Out::Inproc(_) => None,
    };
    conn.close(outbox, linger).await;
}

/// Checks a peer's first message as an authentication proof.
fn check_proof(
    socket: &SocketCtx,
    frames: &mut [bytes::Bytes],
    verifier: &std::sync::Mutex<Verifier>,
) -> Result<wire::Payload, AuthError> {
    let payload = socket
        .parse_frames(frames)
        .map_err(|_| AuthError::Missing)?;
    if payload.dst_cb != crate::auth::AUTH {
        return Err(AuthError::Missing);
    }
    verifier
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .verify(&payload.body, crate::auth::now_ms())?;
    Ok(payload)
}
