//! tcp and ipc byte streams, and binding and dialling them.
//!
//! A [`Stream`] is shared by reference between its connection's driver (the
//! only reader) and any task that sends (writes are serialised by the
//! connection's [`Outbox`](super::outbox::Outbox)): tokio's `try_read` and
//! `try_write` take `&self`, so a sender can write without waking the
//! driver when the socket has room.
//!
//! We bind the OS listener ourselves, so "address in use", stale ipc files
//! and host names get clear errors and decisions here.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{Interest, Ready};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::events::PeerAddr;

/// A connected tcp or ipc socket.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Waits until the socket is ready for any of `interest`.
    pub(crate) async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        match self {
            Stream::Tcp(s) => s.ready(interest).await,
            Stream::Unix(s) => s.ready(interest).await,
        }
    }

    /// Reads what is there without waiting (`WouldBlock` if nothing).
    ///
    /// A read that does not fill the buffer's spare room has drained the
    /// socket, so its readiness is cleared at once, as tokio's own
    /// `poll_read` does: otherwise the next `ready()` would return at once
    /// and cost a second `read` that finds nothing (one wasted syscall per
    /// batch; the socket is edge-triggered, so bytes that arrive later wake
    /// us again).
    pub(crate) fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let mut got = 0;
        let read = match self {
            Stream::Tcp(s) => s.try_io(Interest::READABLE, || {
                got = s.try_read_buf(buf)?;
                drained(got, room)
            }),
            Stream::Unix(s) => s.try_io(Interest::READABLE, || {
                got = s.try_read_buf(buf)?;
                drained(got, room)
            }),
        };
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            other => other,
        }
    }

    /// Writes what fits without waiting (`WouldBlock` if nothing).
    pub(crate) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(bytes),
            Stream::Unix(s) => s.try_write(bytes),
        }
    }

    /// Half-closes our side, so the peer reads EOF after what we wrote.
    /// Whether bytes (or the peer's close) wait in the kernel to be read,
    /// asked of the socket itself: tokio's readiness is only as fresh as
    /// its reactor's last turn, and a task whose timer fires on a loaded
    /// machine may not have seen the PONG that arrived just before.
    pub(crate) fn has_input(&self) -> bool {
        let sock = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
        };
        let mut one = [std::mem::MaybeUninit::<u8>::uninit()];
        // Non-blocking (tokio's sockets are): WouldBlock when nothing waits.
        sock.peek(&mut one).is_ok()
    }

    /// Who is at the other end: the tcp peer's address, or the ipc peer's
    /// credentials (`SO_PEERCRED`), for logs and events.
    pub(crate) fn peer_addr(&self) -> PeerAddr {
        match self {
            Stream::Tcp(s) => s.peer_addr().map_or(PeerAddr::Unknown, PeerAddr::Tcp),
            Stream::Unix(s) => match s.peer_cred() {
                Ok(cred) => PeerAddr::Ipc {
                    pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
                    uid: Some(cred.uid()),
                },
                Err(_) => PeerAddr::Ipc {
                    pid: None,
                    uid: None,
                },
            },
        }
    }

    pub(crate) fn shutdown_write(&self) {
        let sock = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
        };
        let _ = sock.shutdown(std::net::Shutdown::Write);
    }
}

/// A read of `got` bytes into `room`: a short one reports `WouldBlock` to
/// `try_io`, which then clears the socket's readiness.
fn drained(got: usize, room: usize) -> io::Result<usize> {
    if got > 0 && got < room {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(got)
    }
}

/// Resolves a tcp host for binding: `*` is every interface.
async fn resolve(endpoint: &Endpoint, host: &str, port: u16) -> Result<SocketAddr, Error> {
    if host == "*" {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolve_err = |source| Error::Resolve {
        endpoint: endpoint.clone(),
        source: std::sync::Arc::new(source),
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(resolve_err)?
        .next()
        .ok_or_else(|| resolve_err(io::Error::other("no addresses")))
}

/// Removes an ipc socket file left by a dead process; refuses a live one or
/// a file that is not a socket.
fn clear_stale_ipc(endpoint: &Endpoint, path: &Path) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::bind(endpoint, source)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotASocket(endpoint.clone()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::InUse(endpoint.clone())),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing stale ipc socket file");
            std::fs::remove_file(path).map_err(|source| Error::bind(endpoint, source))
        }
    }
}

fn io_bind_err(endpoint: &Endpoint, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::AddrInUse {
        Error::InUse(endpoint.clone())
    } else {
        Error::bind(endpoint, source)
    }
}

/// A bound tcp or ipc listener.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Accepts one peer, with who it is: its address on tcp, its
    /// credentials on ipc. tcp peers get TCP_NODELAY: small ACKs and
    /// replies must not wait for Nagle plus the peer's delayed ACK (about
    /// 40 ms).
    pub(crate) async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (s, from) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), PeerAddr::Tcp(from)))
            }
            Listener::Unix(l) => {
                let s = Stream::Unix(l.accept().await?.0);
                let from = s.peer_addr();
                Ok((s, from))
            }
        }
    }
}

/// Binds `endpoint` (tcp or ipc). Returns the listener, the endpoint as
/// bound (port 0 resolved) and the ipc file we created, if any.
pub(crate) async fn bind(
    endpoint: &Endpoint,
) -> Result<(Listener, Endpoint, Option<PathBuf>), Error> {
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let addr = resolve(endpoint, host, *port).await?;
            let l = std::net::TcpListener::bind(addr).map_err(|e| io_bind_err(endpoint, e))?;
            let local = l.local_addr().map_err(|e| io_bind_err(endpoint, e))?;
            l.set_nonblocking(true)
                .map_err(|e| io_bind_err(endpoint, e))?;
            let l = TcpListener::from_std(l).map_err(|e| io_bind_err(endpoint, e))?;
            let resolved = Endpoint::Tcp {
                host: local.ip().to_string(),
                port: local.port(),
            };
            Ok((Listener::Tcp(l), resolved, None))
        }
        Endpoint::Ipc(path) => {
            clear_stale_ipc(endpoint, path)?;
            let l = UnixListener::bind(path).map_err(|e| io_bind_err(endpoint, e))?;
            Ok((Listener::Unix(l), endpoint.clone(), Some(path.clone())))
        }
        Endpoint::Inproc(_) => Err(Error::bind(
            endpoint,
            io::Error::other("inproc is bound by name, not as a socket"),
        )),
    }
}

/// Dials `endpoint` (tcp or ipc) within `timeout`.
pub(crate) async fn dial(endpoint: &Endpoint, timeout: Duration) -> Result<Stream, Error> {
    let refused = |source: io::Error| Error::connect(endpoint, source);
    let timed_out = |_| Error::ConnectTimeout(endpoint.clone());
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let connect = TcpStream::connect((host.as_str(), *port));
            let s = tokio::time::timeout(timeout, connect)
                .await
                .map_err(timed_out)?
                .map_err(refused)?;
            let _ = s.set_nodelay(true);
            Ok(Stream::Tcp(s))
        }
        Endpoint::Ipc(path) => {
            let connect = UnixStream::connect(path);
            let s = tokio::time::timeout(timeout, connect)
                .await
                .map_err(timed_out)?
                .map_err(refused)?;
            Ok(Stream::Unix(s))
        }
        Endpoint::Inproc(_) => Err(Error::connect(
            endpoint,
            io::Error::other("inproc is not a byte stream"),
        )),
    }
}
