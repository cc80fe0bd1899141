//! Relays between a peer and the `zeromq` crate through the frame guard.
//!
//! The crate never touches a peer's socket. For a listener we accept on the
//! public tcp or ipc socket ourselves and connect each peer, through a relay,
//! to the crate's ROUTER bound on a private Unix socket in a 0700 temp dir.
//! For a connection we dial the peer ourselves and let the crate's DEALER
//! connect to a private socket whose one accepted stream is relayed to it.
//! In both cases bytes from the peer pass [`FrameGuard::feed`] before they
//! are forwarded; bytes towards the peer are copied unchanged. A listener's
//! relay stops reading a peer while a write towards it cannot complete
//! (per-peer back-pressure: see [`relay`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::guard::{FrameGuard, GuardError};
use super::{RateLimit, SocketCtx};
use crate::auth::{AuthError, Verifier};
use crate::stats::bump;

/// Read size of a relay; a frame larger than this is forwarded in pieces.
const CHUNK: usize = 16 * 1024;

/// A private directory (mode 0700) holding the crate's side of relays;
/// removed when dropped.
pub(crate) struct PrivateSocket {
    dir: tempfile::TempDir,
}

impl PrivateSocket {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(PrivateSocket {
            dir: tempfile::Builder::new().prefix("messenger-").tempdir()?,
        })
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join("z.sock")
    }
}

/// Limits and counters a relay needs.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) max_message: u64,
    pub(crate) handshake_timeout: Duration,
    pub(crate) ctx: Arc<SocketCtx>,
    /// A listener's relay: each connection is a session of the peer's
    /// routing id, begun before its first message is forwarded.
    pub(crate) sessions: bool,
    /// A listener that requires authentication: the first data message must
    /// be a valid proof, checked before anything after it is forwarded.
    pub(crate) auth: Option<Arc<std::sync::Mutex<Verifier>>>,
}

/// Checks a peer's first message as an authentication proof.
fn authenticate(
    frames: &[Vec<u8>],
    verifier: &std::sync::Mutex<Verifier>,
) -> Result<(), AuthError> {
    let [delimiter, payload] = frames else {
        return Err(AuthError::Missing);
    };
    if !delimiter.is_empty() {
        return Err(AuthError::Missing);
    }
    let header = crate::wire::parse_header(payload).map_err(|_| AuthError::Missing)?;
    if header.dst_cb != crate::auth::AUTH {
        return Err(AuthError::Missing);
    }
    let body = payload.get(header.body_start..).unwrap_or(&[]);
    verifier
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .verify(body, crate::auth::now_ms())
}

#[derive(Debug)]
enum RelayEnd {
    Closed,
    /// The peer closed its side; we half-closed ours towards the crate.
    PeerClosed,
    Io(io::Error),
    Guard(GuardError),
    HandshakeTimeout,
    Auth(AuthError),
}

/// Relays `peer` to the crate's side `inner`. The streams are split by
/// reference (no lock per read and write, unlike `tokio::io::split`).
async fn relay(peer: &mut Stream, inner: &mut UnixStream, s: &Settings, warn: &mut RateLimit) {
    let (inner_rd, inner_wr) = inner.split();
    match peer {
        Stream::Tcp(p) => {
            let (rd, wr) = p.split();
            relay_halves((rd, wr), (inner_rd, inner_wr), s, warn).await;
        }
        Stream::Unix(p) => {
            let (rd, wr) = p.split();
            relay_halves((rd, wr), (inner_rd, inner_wr), s, warn).await;
        }
    }
}

/// Moves bytes both ways until either side closes or the guard refuses.
async fn relay_halves<PR, PW, IR, IW>(
    peer: (PR, PW),
    inner: (IR, IW),
    s: &Settings,
    warn: &mut RateLimit,
) where
    PR: AsyncRead + Unpin,
    PW: AsyncWrite + Unpin,
    IR: AsyncRead + Unpin,
    IW: AsyncWrite + Unpin,
{
    let (mut peer_rd, mut peer_wr) = peer;
    let (mut inner_rd, mut inner_wr) = inner;
    let mut session: Option<(Vec<u8>, u64)> = None;
    // Set while a write towards the peer cannot complete (its receive
    // window is full: it is not reading what it is sent).
    let blocked = AtomicBool::new(false);
    let unblocked = tokio::sync::Notify::new();
    let inbound = async {
        let mut guard = FrameGuard::new(s.max_message);
        if s.auth.is_some() {
            guard = guard.capture_first_message(crate::auth::MAX_PROOF_LEN + 64);
        }
        let mut authenticated = s.auth.is_none();
        let mut buf = vec![0u8; CHUNK];
        let handshake_deadline = tokio::time::Instant::now() + s.handshake_timeout;
        loop {
            if s.sessions {
                // A listener reads nothing more from a peer that is not
                // reading: everything it sent would be answered with ACKs
                // and replies queued in front of it, without bound across
                // peers. Only listeners do this, and a connection always
                // reads, so two messengers cannot wait on each other.
                while blocked.load(Ordering::Acquire) {
                    let woken = unblocked.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    if blocked.load(Ordering::Acquire) {
                        woken.await;
                    }
                }
            }
            let read = peer_rd.read(&mut buf);
            let n = if guard.handshake_done() && authenticated {
                read.await
            } else {
                match tokio::time::timeout_at(handshake_deadline, read).await {
                    Ok(r) => r,
                    Err(_) => return RelayEnd::HandshakeTimeout,
                }
            };
            let n = match n {
                // The peer closed (FIN), or reset the connection (RST, e.g.
                // it closed with unread data): either way, half-close towards
                // the crate. It reads everything we forwarded, then sees EOF
                // and closes its side, which ends `outbound` below. Ending the
                // session only then keeps a peer's last ACK or reply from
                // losing the race against its own disconnect.
                Ok(0) | Err(_) => {
                    let _ = inner_wr.shutdown().await;
                    return RelayEnd::PeerClosed;
                }
                Ok(n) => n,
            };
            let Some(chunk) = buf.get(..n) else {
                return RelayEnd::Closed;
            };
            if let Err(e) = guard.feed(chunk) {
                return RelayEnd::Guard(e);
            }
            if !authenticated
                && let (Some(frames), Some(verifier)) = (guard.first_message(), &s.auth)
            {
                // Checked before this chunk (which may hold more messages
                // after the proof) is forwarded.
                if let Err(e) = authenticate(frames, verifier) {
                    return RelayEnd::Auth(e);
                }
                authenticated = true;
            }
            if s.sessions
                && session.is_none()
                && let Some(id) = guard.peer_identity()
            {
                session = Some((id.to_vec(), s.ctx.begin_session(id)));
            }
            if let Err(e) = inner_wr.write_all(chunk).await {
                return RelayEnd::Io(e);
            }
        }
    };
    let outbound = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = inner_rd.read(&mut buf).await?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                return peer_wr.flush().await;
            };
            let write = peer_wr.write_all(chunk);
            tokio::pin!(write);
            if let std::task::Poll::Ready(r) = futures::poll!(write.as_mut()) {
                r?;
                continue;
            }
            blocked.store(true, Ordering::Release);
            let r = write.await;
            blocked.store(false, Ordering::Release);
            unblocked.notify_waiters();
            r?;
        }
    };
    tokio::pin!(outbound);
    let mut end = tokio::select! {
        end = inbound => end,
        r = &mut outbound => r.map_or_else(RelayEnd::Io, |_| RelayEnd::Closed),
    };
    if matches!(end, RelayEnd::PeerClosed) {
        // Bounded: a crate that never closes does not keep the relay.
        let _ = tokio::time::timeout(s.handshake_timeout, &mut outbound).await;
        end = RelayEnd::Closed;
    }
    if let Some((peer, n)) = session {
        s.ctx.end_session(&peer, n);
    }
    let stats = &s.ctx.stats;
    match end {
        RelayEnd::Closed | RelayEnd::PeerClosed => {}
        RelayEnd::Io(e) => tracing::debug!(endpoint = %s.ctx.endpoint, error = %e, "relay ends"),
        RelayEnd::Guard(e) => {
            bump(&stats.guard_rejections);
            if warn.allow() {
                tracing::warn!(endpoint = %s.ctx.endpoint, error = %e, "dropping peer: frame guard");
            }
        }
        RelayEnd::Auth(e) => {
            bump(&stats.auth_failures);
            if warn.allow() {
                tracing::warn!(endpoint = %s.ctx.endpoint, error = %e, "dropping peer: authentication failed");
            }
        }
        RelayEnd::HandshakeTimeout => {
            bump(&stats.handshake_timeouts);
            if warn.allow() {
                tracing::warn!(endpoint = %s.ctx.endpoint, timeout = ?s.handshake_timeout, "dropping peer: no handshake in time");
            }
        }
    }
}

/// The public side of a listener.
pub(crate) enum Public {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Accepts peers on `public` (at most `limit` at once) and relays each to
/// the crate's ROUTER at `private`. Runs until aborted; aborting it ends
/// every relay it started.
pub(crate) async fn accept_loop(
    public: Public,
    private: PathBuf,
    limit: Arc<Semaphore>,
    s: Settings,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut relays = JoinSet::new();
    let mut warn = RateLimit::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        while relays.try_join_next().is_some() {}
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                bump(&s.ctx.stats.connection_limit_hits);
                if warn.allow() {
                    tracing::warn!(endpoint = %s.ctx.endpoint, "connection limit reached; accepting again when one closes");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    Some(_) = relays.join_next() => continue,
                }
            }
        };
        let accept = async {
            match &public {
                Public::Tcp(l) => l.accept().await.map(|(s, _)| {
                    // Small ACKs and replies must not wait for Nagle plus
                    // the peer's delayed ACK (about 40 ms a stall).
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
                Public::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
            }
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = accept => a,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                if warn.allow() {
                    tracing::warn!(endpoint = %s.ctx.endpoint, error = %e, ?backoff, "accept failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let s = s.clone();
        let private = private.clone();
        let span = tracing::debug_span!("peer");
        relays.spawn(tracing::Instrument::instrument(
            async move {
                let _permit = permit;
                let mut warn = RateLimit::new();
                let mut stream = stream;
                match UnixStream::connect(&private).await {
                    Ok(mut inner) => relay(&mut stream, &mut inner, &s, &mut warn).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the listener's private socket")
                    }
                }
            },
            span,
        ));
    }
    // Closing: no new peers; relays end once the ROUTER is gone and what it
    // wrote has reached the peers (the caller aborts us after the linger).
    drop(public);
    while relays.join_next().await.is_some() {}
}

pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(UnixStream),
}

/// Accepts the crate's one connection on `private` and relays it to `peer`.
pub(crate) async fn relay_outgoing(private: UnixListener, peer: Stream, s: Settings) {
    let Ok(Ok((inner, _))) = tokio::time::timeout(s.handshake_timeout, private.accept()).await
    else {
        tracing::warn!(endpoint = %s.ctx.endpoint, "the DEALER never reached its relay");
        return;
    };
    drop(private);
    let mut warn = RateLimit::new();
    let (mut peer, mut inner) = (peer, inner);
    relay(&mut peer, &mut inner, &s, &mut warn).await;
}

/// Binds the private socket for one relay target.
pub(crate) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    UnixListener::bind(path)
}
