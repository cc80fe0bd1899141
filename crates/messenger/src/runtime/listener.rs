//! A tcp or ipc listener: the accept loop (connection limit, backoff on
//! accept errors) and each peer's life as our ROUTER sees it: handshake,
//! routing id, proof, session, traffic, end.
//!
//! Nothing is sent to a peer and no session begins before its handshake,
//! and its proof when a secret is set, is complete: until then it is in
//! no routing table, so no reply, ACK or resend can reach it. A routing
//! id that a live session holds is refused with ERROR, and the live
//! session is untouched (libzmq's ROUTER without ROUTER_HANDOVER).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::driver::{Conn, End, PartialBudget, Who};
use super::windows::{self, INCARNATION, Windows};
use crate::address::{ListenerId, SocketKind};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::events::{Event, EventKind, PeerAddr};
use crate::proto::auth::{AuthError, Verifier};
use crate::proto::dedup::DedupWindow;
use crate::proto::wire;
use crate::runtime::inproc;
use crate::runtime::server_loop::{self, Handler};
use crate::runtime::shared::Shared;
use crate::runtime::socket::{Open, Opening, SocketTasks};
use crate::runtime::socket::{Out, RouteError, Session, SocketCtx};
use crate::stats::bump;
use crate::transport::stream;
use crate::transport::stream::{Listener, Stream};
use zmtp::{EngineConfig, Limits, MechanismConfig, Role, SocketType};

/// Opens a listener: binds `endpoint` (tcp and ipc bind the OS socket
/// first, so the context carries the resolved endpoint: port 0 becomes the
/// real port), starts its accept loop (or registers its inproc name) and
/// its server loop. Returns the open socket and the bound endpoint.
pub(crate) async fn open(
    opening: &Opening<'_>,
    id: ListenerId,
    endpoint: &Endpoint,
    handler: Handler,
) -> Result<(Open, Endpoint), Error> {
    let shared = opening.shared;
    let cfg = &shared.config;
    let (slc_tx, slc_rx) = tokio::sync::mpsc::channel(cfg.slc_queue_capacity);
    // An inproc name is taken once the context exists; a tcp or ipc
    // socket is bound first, so the context carries the resolved endpoint.
    let (os_listener, bound, created_file) = match endpoint {
        Endpoint::Inproc(name) => (Err(name), endpoint.clone(), None),
        _ => {
            let (l, resolved, file) = stream::bind(endpoint).await?;
            (Ok(l), resolved, file)
        }
    };
    let ctx = Arc::new(SocketCtx::new(
        SocketKind::Listener(id),
        bound.clone(),
        opening.identity.clone(),
        Some(slc_tx),
        Arc::clone(&shared.stats),
        Arc::clone(cfg),
    ));
    let mut tasks = SocketTasks::new(opening.shutdown.child_token());
    tasks.created_file = created_file;
    match os_listener {
        Err(name) => {
            tasks.inproc = Some(Box::new(inproc::bind(name, &ctx, shared, &tasks.stop)?));
        }
        Ok(l) => {
            let settings = Arc::new(PeerSettings {
                auth: cfg
                    .auth
                    .clone()
                    .map(|s| std::sync::Mutex::new(Verifier::new(s))),
                partial: Arc::new(PartialBudget::new(cfg.max_partial_bytes)),
                windows: Windows::new(cfg.max_connections_per_listener, cfg.request_timeout),
            });
            let span = tracing::info_span!("listener", endpoint = %bound);
            let accept = accept_loop(
                l,
                Arc::clone(&ctx),
                Arc::clone(shared),
                settings,
                tasks.stop.clone(),
            );
            tasks.spawn(tracing::Instrument::instrument(accept, span));
        }
    }
    let span = tracing::info_span!("listener", id = id.0, endpoint = %bound);
    let _entered = span.enter();
    server_loop::spawn(
        handler,
        slc_rx,
        Arc::downgrade(shared),
        Arc::downgrade(&ctx),
        opening.loops,
    );
    tracing::info!(endpoint = %bound, "listening");
    Ok((Open { ctx, tasks }, bound))
}

/// What a listener's peers need beyond their socket.
pub(crate) struct PeerSettings {
    /// Checks each peer's proof when a secret is set.
    pub(crate) auth: Option<std::sync::Mutex<Verifier>>,
    /// What the peers' read buffers may hold together for messages still
    /// arriving (`Config::max_partial_bytes`).
    pub(crate) partial: Arc<PartialBudget>,
    /// Duplicate windows of peers whose session ended, for their next one.
    pub(crate) windows: Windows,
}

/// What a peer's frames may make us hold before it has proven itself (a
/// secret is set): its proof, a message of a few hundred bytes, and
/// commands no larger than a READY. Far below `max_message_size`, so an
/// unproven peer costs little.
const UNPROVEN: Limits = Limits {
    max_message: 1024,
    max_frames: 4,
    max_command: crate::config::MIN_COMMAND_SIZE,
};

/// The ERROR reason for a CURVE client not on the allow-list: ZAP's status
/// code for an authentication failure, the one libzmq reports as such.
const CURVE_NOT_ALLOWED: &str = "400";

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
        // A connection says which run of it this is, so a listener can
        // keep its duplicate window across its sessions (see `windows`).
        properties: socket
            .incarnation
            .map(|i| (Bytes::from_static(INCARNATION), Bytes::copy_from_slice(&i)))
            .into_iter()
            .collect(),
        limits: cfg.zmtp_limits(),
        // A connection's handshake is part of its dial: a listener at its
        // connection limit holds newcomers unanswered, and a dial that was
        // given longer waits for a place that long.
        handshake_timeout: if socket.is_listener() {
            cfg.handshake_timeout
        } else {
            cfg.connect_timeout
        },
        heartbeat: cfg.heartbeat,
        pace: Some(cfg.receive_pace()),
        mechanism: match (&cfg.curve, socket.is_listener()) {
            (Some(curve), true) => MechanismConfig::CurveServer {
                keys: curve.keys.clone(),
            },
            (Some(curve), false) => match curve.server_key {
                Some(server_key) => MechanismConfig::CurveClient {
                    keys: curve.keys.clone(),
                    server_key,
                },
                None => MechanismConfig::Null,
            },
            (None, _) => MechanismConfig::Null,
        },
    }
}

/// Accepts peers until `stop`, then waits for their sessions to wind down
/// (they watch `stop` too). At most `max_connections_per_listener` at
/// once, and `max_connections_per_address` from one tcp source.
///
/// A newcomer over the per-address limit asks the idlest idle session
/// from its own source to give way (`evict_idle_after`) and waits a moment
/// for its place; with none to ask it is closed at once. At the listener's
/// limit, or when the process is out of descriptors (EMFILE: the limit the
/// operating system sets, reached before ours), the newcomer is held (the
/// rest wait in the OS backlog) until a place frees, asking the idlest
/// idle peer to give way.
pub(crate) async fn accept_loop(
    listener: Listener,
    socket: Arc<SocketCtx>,
    shared: Arc<Shared>,
    settings: Arc<PeerSettings>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(socket.config.max_connections_per_listener));
    let sources = Arc::new(Sources::new(socket.config.max_connections_per_address));
    let mut peers = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        while peers.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, from) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) if out_of_descriptors(&e) => {
                // The operating system's limit on descriptors is a
                // connection limit too: an idle peer gives way, as at ours.
                bump(&socket.stats.local().connection_limit_hits);
                if socket.warn_allowed() {
                    tracing::warn!(endpoint = %socket.origin.endpoint, error = %e, "out of file descriptors; an idle peer gives way if there is one");
                }
                if let Some(after) = socket.config.evict_idle_after {
                    socket.evict_idle(after, crate::clock::now(), None);
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(EVICT_RECHECK) => {}
                }
                continue;
            }
            Err(e) => {
                // Out of memory, or a passing error: back off instead of
                // spinning.
                if socket.warn_allowed() {
                    tracing::warn!(endpoint = %socket.origin.endpoint, error = %e, ?backoff, "accept failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = match from {
            PeerAddr::Tcp(addr) => Some(addr.ip()),
            _ => None,
        };
        let source = match ip.map(|ip| Sources::admit(&sources, ip, &socket)) {
            None => None,
            Some(Some(admission)) => Some(admission),
            Some(None) => {
                bump(&socket.stats.local().address_limit_hits);
                if socket.warn_allowed() {
                    tracing::warn!(endpoint = %socket.origin.endpoint, remote = %from, "per-address connection limit reached and no idle peer from there; closing the newcomer");
                }
                refused_on_arrival(&shared, &socket, from);
                continue;
            }
        };
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                bump(&socket.stats.local().connection_limit_hits);
                if socket.warn_allowed() {
                    tracing::warn!(endpoint = %socket.origin.endpoint, "connection limit reached; the newcomer waits for a place");
                }
                match make_room(&limit, &socket, &stop).await {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let (socket, shared, settings, stop) = (
            Arc::clone(&socket),
            Arc::clone(&shared),
            Arc::clone(&settings),
            stop.clone(),
        );
        // The peer's span: what a tracing subscriber (or OpenTelemetry)
        // sees its handshake and session under. Its routing id is filled
        // in once READY is read.
        let span = tracing::info_span!(
            "peer",
            listener = %socket.origin.endpoint,
            remote = %from,
            peer = tracing::field::Empty,
        );
        peers.spawn(tracing::Instrument::instrument(
            async move {
                let slot = match source {
                    None => None,
                    Some(admission) => match admission.slot(&stop).await {
                        Some(slot) => Some(slot),
                        None => {
                            bump(&socket.stats.local().address_limit_hits);
                            refused_on_arrival(&shared, &socket, from);
                            return;
                        }
                    },
                };
                let _places = (permit, slot);
                let source = _places.1.as_ref().map(|s| s.source);
                let peer = Peer {
                    stream,
                    remote: from,
                    source,
                };
                serve_peer(peer, &socket, &shared, &settings, &stop).await;
            },
            span,
        ));
    }
    drop(listener);
    while peers.join_next().await.is_some() {}
}

/// A tcp newcomer closed on arrival (its address is over its share): told
/// to `events()`.
fn refused_on_arrival(shared: &Shared, socket: &SocketCtx, from: PeerAddr) {
    shared.events.emit(|| {
        let why = "its address already holds max_connections_per_address sessions";
        Event::new(
            EventKind::Refused,
            &socket.origin,
            from,
            &Bytes::new(),
            Some(why.into()),
        )
    });
}

/// Whether an accept failed for want of file descriptors (the process's
/// limit or the system's).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    // EMFILE and ENFILE on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// How often a newcomer held at the connection limit looks again for an
/// idle peer to give way (peers grow idle as time passes).
const EVICT_RECHECK: Duration = Duration::from_millis(100);

/// How long a newcomer over the per-address limit waits for the place of
/// the idle session from its source that was asked to give way (it closes
/// within milliseconds; this bounds a bug, not the common case).
const SOURCE_WAIT: Duration = Duration::from_secs(2);

/// Newcomers that may wait at once, per source, for a place an idle
/// session of their source gives up: one is asked per newcomer, and a
/// source that floods us gets no more parked tasks than this.
const WAITING_PER_SOURCE: usize = 4;

/// Waits for a place at the connection limit, asking the longest-idle
/// peer to give way when there is one. `None`: stopped meanwhile.
async fn make_room(
    limit: &Arc<Semaphore>,
    socket: &SocketCtx,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    loop {
        let evicting = socket.config.evict_idle_after;
        if let Some(after) = evicting {
            socket.evict_idle(after, crate::clock::now(), None);
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            p = Arc::clone(limit).acquire_owned() => return p.ok(),
            _ = tokio::time::sleep(EVICT_RECHECK), if evicting.is_some() => {}
        }
    }
}

/// tcp sessions per source address (IPv6 by /64, what one host is
/// usually given), bounded by `max_connections_per_address`.
struct Sources {
    /// `Config::max_connections_per_address`.
    max: usize,
    /// Per source with a session or a newcomer waiting: places held, and
    /// newcomers waiting for one. At most one entry per held place or
    /// waiting newcomer, so no larger than the listener's limits.
    held: std::sync::Mutex<HashMap<IpAddr, Held>>,
    /// A place was given back.
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct Held {
    /// Sessions this source holds now.
    places: usize,
    /// Newcomers from it waiting for a place (at most a few).
    waiting: usize,
}

/// A newcomer's way to a place for its source: one taken at once, or a
/// wait for the place of an idle session that was asked to give way.
enum Admission {
    Now(SourceSlot),
    Wait(Waiter),
}

/// A newcomer waiting for a place of its source (counted while it waits).
struct Waiter {
    /// The table it is counted in.
    sources: Arc<Sources>,
    /// Its source (IPv6 by /64).
    source: IpAddr,
}

/// One place of a source, given back when dropped.
struct SourceSlot {
    /// The table it is counted in.
    sources: Arc<Sources>,
    /// Its source (IPv6 by /64).
    source: IpAddr,
}

impl Sources {
    fn new(max: usize) -> Self {
        Sources {
            max,
            held: std::sync::Mutex::new(HashMap::new()),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key `ip` is counted under: itself, or its /64.
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            v4 => v4,
        }
    }

    /// A place for a peer from `ip`, or, with its source at the limit, a
    /// wait for the place of that source's idlest idle session (asked to
    /// give way now). `None`: at the limit with nobody to ask.
    fn admit(sources: &Arc<Sources>, ip: IpAddr, socket: &SocketCtx) -> Option<Admission> {
        let source = Self::key(ip);
        if let Some(slot) = Self::take(sources, source) {
            return Some(Admission::Now(slot));
        }
        let after = socket.config.evict_idle_after?;
        {
            let mut held = sources.lock();
            let h = held.entry(source).or_default();
            if h.waiting >= WAITING_PER_SOURCE {
                return None;
            }
            h.waiting += 1;
        }
        let waiter = Waiter {
            sources: Arc::clone(sources),
            source,
        };
        // Dropping the waiter (nobody to ask) uncounts it.
        socket
            .evict_idle(after, crate::clock::now(), Some(source))
            .then_some(Admission::Wait(waiter))
    }

    /// A place for `source`, unless it is at the limit.
    fn take(sources: &Arc<Sources>, source: IpAddr) -> Option<SourceSlot> {
        let mut held = sources.lock();
        let h = held.entry(source).or_default();
        if h.places >= sources.max {
            return None;
        }
        h.places += 1;
        Some(SourceSlot {
            sources: Arc::clone(sources),
            source,
        })
    }

    /// Forgets `source` once nothing is held or awaited for it.
    fn tidy(held: &mut HashMap<IpAddr, Held>, source: IpAddr) {
        if held
            .get(&source)
            .is_some_and(|h| h.places == 0 && h.waiting == 0)
        {
            held.remove(&source);
        }
    }
}

impl Admission {
    /// The place, once there is one (within [`SOURCE_WAIT`] for a
    /// waiting newcomer). `None`: none came, or stopped.
    async fn slot(self, stop: &CancellationToken) -> Option<SourceSlot> {
        let waiter = match self {
            Admission::Now(slot) => return Some(slot),
            Admission::Wait(waiter) => waiter,
        };
        let sources = Arc::clone(&waiter.sources);
        let wait = async {
            loop {
                let freed = sources.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(slot) = Sources::take(&sources, waiter.source) {
                    return slot;
                }
                freed.await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => None,
            r = tokio::time::timeout(SOURCE_WAIT, wait) => r.ok(),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut held = self.sources.lock();
        if let Some(h) = held.get_mut(&self.source) {
            h.waiting -= 1;
        }
        Sources::tidy(&mut held, self.source);
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.sources.lock();
        if let Some(h) = held.get_mut(&self.source) {
            h.places -= 1;
        }
        Sources::tidy(&mut held, self.source);
        drop(held);
        self.sources.freed.notify_waiters();
    }
}

/// A peer just accepted.
struct Peer {
    /// Its socket, handshake not yet begun.
    stream: Stream,
    /// Who it is, as the OS tells it (for logs and events).
    remote: PeerAddr,
    /// The tcp source its place is counted under.
    source: Option<IpAddr>,
}

/// One peer, from accept to close.
async fn serve_peer(
    peer: Peer,
    socket: &Arc<SocketCtx>,
    shared: &Shared,
    settings: &PeerSettings,
    stop: &CancellationToken,
) {
    let Peer {
        stream,
        remote,
        source,
    } = peer;
    let accepted_at = crate::clock::now();
    let cfg = &socket.config;
    let budget = Some(Arc::clone(&settings.partial));
    let mut conn = Conn::new(stream, engine_config(socket, Role::Server), budget, socket);
    // The routing id it announced, once its READY is read: for the logs
    // and events of a handshake that fails after that.
    let mut announced = Bytes::new();
    // The peer's span (entered by the task): its routing id is filled in
    // once READY is read.
    let peer_span = tracing::Span::current();
    let handshake = async {
        let peer = conn
            .handshake(|peer| {
                announced = peer.identity.clone();
                let shown = peer.identity.escape_ascii().to_string();
                peer_span.record("peer", shown.as_str());
                let allow = cfg.curve.as_ref().and_then(|c| c.allow.as_ref());
                if let Some(allow) = allow
                    && !peer.curve_public_key.is_some_and(|k| allow.contains(&k))
                {
                    // ZAP's "400": libzmq reports it to its application as
                    // an authentication failure.
                    bump(&socket.stats.local().curve_refused);
                    if socket.warn_allowed() {
                        // The public key is not secret: it says who was
                        // refused (z85, as `messenger keygen` prints it).
                        let key = peer
                            .curve_public_key
                            .map_or_else(|| "none".to_owned(), |k| k.to_string());
                        tracing::warn!(endpoint = %socket.origin.endpoint, %remote, peer = %shown, %key, "CURVE client not on the allow-list; refused");
                    }
                    Err(CURVE_NOT_ALLOWED)
                } else if socket.route_in_use(&peer.identity) {
                    Err(crate::runtime::socket::ROUTING_ID_IN_USE)
                } else {
                    Ok(())
                }
            })
            .await?;
        let proof = match &settings.auth {
            None => None,
            Some(verifier) => {
                let deadline =
                    crate::proto::deadlines::deadline_after(accepted_at, cfg.handshake_timeout);
                conn.set_limits(UNPROVEN);
                let mut frames = conn.first_message(deadline).await?;
                let proof = check_proof(socket, &mut frames, verifier).map_err(End::Auth)?;
                conn.set_limits(cfg.zmtp_limits());
                Some(proof)
            }
        };
        Ok::<_, End>((peer, proof))
    };
    let handshake = tracing::Instrument::instrument(handshake, tracing::info_span!("handshake"));
    let started = tokio::select! {
        _ = stop.cancelled() => Err(End::Stopped),
        r = handshake => r,
    };
    let (peer, proof) = match started {
        Ok(s) => s,
        Err(end) => {
            if matches!(&end, End::Zmtp(zmtp::ZmtpError::Refused(r)) if *r == crate::runtime::socket::ROUTING_ID_IN_USE)
            {
                bump(&socket.stats.local().routing_id_conflicts);
            }
            let who = Who {
                remote: &remote,
                peer: &announced,
            };
            shared.never_began(socket, who, &end);
            conn.close(None, Duration::ZERO).await;
            return;
        }
    };
    let outbox = match conn.outbox(cfg.send_buffer_size) {
        Ok(outbox) => outbox,
        Err(end) => {
            let who = Who {
                remote: &remote,
                peer: &announced,
            };
            shared.never_began(socket, who, &end);
            conn.close(None, Duration::ZERO).await;
            return;
        }
    };
    let head = socket.identity.clone();
    let unacked = socket.session_unacked();
    // Cancelled at shutdown, or alone when the session gives way.
    let give_way = stop.child_token();
    let named = !peer.identity.is_empty();
    let added = socket.add_route(peer.identity, |id| {
        Session::new(id, head, Out::Wire(outbox), unacked)
            .evictable(give_way.clone(), socket.millis(crate::clock::now()))
            .with_peer_key(peer.curve_public_key)
            .counted_under(source)
            .at(remote)
    });
    let session = match added {
        Ok(s) => s,
        Err(e) => {
            if e == RouteError::InUse {
                // Taken while this peer proved itself: the live one stays.
                bump(&socket.stats.local().routing_id_conflicts);
                let who = Who {
                    remote: &remote,
                    peer: &announced,
                };
                let refused = End::Zmtp(zmtp::ZmtpError::Refused(
                    crate::runtime::socket::ROUTING_ID_IN_USE,
                ));
                shared.never_began(socket, who, &refused);
            }
            conn.close(None, Duration::ZERO).await;
            return;
        }
    };
    shared.begin_session(socket, &session);
    // A peer that announced its routing id and which run of it this is may
    // have left a window with its previous session: what it resends from
    // before is then still a duplicate. Taken once the old session is off
    // the routing table (add_route succeeded), so it has been kept.
    let incarnation = windows::incarnation_of(&peer.properties).filter(|_| named);
    let mut window = incarnation
        .and_then(|i| {
            settings
                .windows
                .reclaim(&session.peer, i, crate::clock::now())
        })
        .unwrap_or_else(|| DedupWindow::new(cfg.dedup_window));
    // The proof is recorded and ACKed like any message (callback 3
    // delivers nothing).
    let end = match conn
        .traffic(socket, &session, shared, &give_way, proof, &mut window)
        .await
    {
        End::Stopped if !stop.is_cancelled() => End::Evicted,
        end => end,
    };
    // Kept before the session leaves the routing table: a new session of
    // the same peer can only begin after that.
    if let (Some(i), false) = (incarnation, matches!(end, End::Stopped)) {
        let now = crate::clock::now();
        settings.windows.keep(session.peer.clone(), i, window, now);
    }
    shared.end_session(socket, &session, &end);
    end.report(
        socket,
        Who {
            remote: &remote,
            peer: &session.peer,
        },
    );
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
    if payload.dst_cb != crate::proto::auth::AUTH {
        return Err(AuthError::Missing);
    }
    verifier
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .verify(&payload.body, crate::proto::auth::now_ms())?;
    Ok(payload)
}
