//! tcp and ipc, on the `zeromq` crate's ROUTER and DEALER sockets.
//!
//! We bind the OS listener ourselves and hand it to `bind_listener`, so
//! "address in use", stale ipc files and host names get clear errors and
//! decisions here rather than inside the crate.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use zeromq::prelude::*;
use zeromq::{DealerSocket, RouterSocket, SocketEvent, SocketOptions};

use super::outlet::LinkTx;
use super::relay::{self, PrivateSocket};
use super::{Inbound, OpenArgs, RateLimit, SocketCtx, SocketTasks};
use crate::endpoint::Endpoint;
use crate::error::{BindError, ConnectError};

fn options(identity: &Bytes, connect_timeout: std::time::Duration) -> SocketOptions {
    let mut opts = SocketOptions::default();
    if let Ok(id) = zeromq::util::PeerIdentity::try_from(identity.clone()) {
        opts.peer_identity(id);
    }
    opts.connect_timeout(connect_timeout);
    opts
}

/// Resolves a tcp host for binding: `*` is every interface.
async fn resolve(endpoint: &Endpoint, host: &str, port: u16) -> Result<SocketAddr, BindError> {
    if host == "*" {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolve_err = |source| BindError::Resolve {
        endpoint: endpoint.clone(),
        source,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(resolve_err)?
        .next()
        .ok_or_else(|| resolve_err(std::io::Error::other("no addresses")))
}

/// Removes an ipc socket file left by a dead process; refuses a live one or
/// a file that is not a socket.
fn clear_stale_ipc(endpoint: &Endpoint, path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                endpoint: endpoint.clone(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(endpoint.clone()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse(endpoint.clone())),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing stale ipc socket file");
            std::fs::remove_file(path).map_err(|source| BindError::Io {
                endpoint: endpoint.clone(),
                source,
            })
        }
    }
}

fn io_bind_err(endpoint: &Endpoint, source: std::io::Error) -> BindError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        BindError::InUse(endpoint.clone())
    } else {
        BindError::Io {
            endpoint: endpoint.clone(),
            source,
        }
    }
}

/// An OS listener bound by us, before it is handed to the accept loop.
pub(crate) enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds the OS listener for `endpoint`; returns it with the resolved endpoint.
pub(crate) async fn prepare_bind(
    endpoint: &Endpoint,
) -> Result<(Bound, Endpoint, Option<std::path::PathBuf>), BindError> {
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let addr = resolve(endpoint, host, *port).await?;
            let l = TcpListener::bind(addr).map_err(|e| io_bind_err(endpoint, e))?;
            let local = l.local_addr().map_err(|e| io_bind_err(endpoint, e))?;
            let resolved = Endpoint::Tcp {
                host: local.ip().to_string(),
                port: local.port(),
            };
            Ok((Bound::Tcp(l), resolved, None))
        }
        Endpoint::Ipc(path) => {
            clear_stale_ipc(endpoint, path)?;
            let l = UnixListener::bind(path).map_err(|e| io_bind_err(endpoint, e))?;
            Ok((Bound::Unix(l), endpoint.clone(), Some(path.clone())))
        }
        Endpoint::Inproc(_) => Err(BindError::Transport {
            endpoint: endpoint.clone(),
            message: "inproc is not a zeromq transport".into(),
        }),
    }
}

/// Starts a ROUTER behind the frame guard: the crate binds a private Unix
/// socket; our accept loop takes peers on `listener` and relays them to it.
pub(crate) async fn bind(
    listener: Bound,
    created_file: Option<std::path::PathBuf>,
    guard: relay::Settings,
    max_connections: usize,
    args: OpenArgs,
) -> Result<SocketTasks, BindError> {
    let OpenArgs {
        identity,
        ctx,
        mut out_rx,
        inbound,
    } = args;
    let io_err = |source| BindError::Io {
        endpoint: ctx.endpoint.clone(),
        source,
    };
    let private = PrivateSocket::new().map_err(io_err)?;
    let private_path = private.path();
    let private_listener = UnixListener::bind(&private_path).map_err(io_err)?;
    let public = match listener {
        Bound::Tcp(l) => {
            l.set_nonblocking(true).map_err(io_err)?;
            relay::Public::Tcp(tokio::net::TcpListener::from_std(l).map_err(io_err)?)
        }
        Bound::Unix(l) => {
            l.set_nonblocking(true).map_err(io_err)?;
            relay::Public::Unix(tokio::net::UnixListener::from_std(l).map_err(io_err)?)
        }
    };
    // Sessions begin and end in the relay, which sees each connection start
    // before any of its messages: the crate's monitor events come too late.
    let mut socket = RouterSocket::with_options(options(&identity, std::time::Duration::ZERO));
    socket
        .bind_listener(private_listener)
        .await
        .map_err(|e| BindError::Transport {
            endpoint: ctx.endpoint.clone(),
            message: e.to_string(),
        })?;
    let limit = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let stop = tokio_util::sync::CancellationToken::new();
    let span = tracing::info_span!("listener", endpoint = %ctx.endpoint);
    let acceptor = tokio::spawn(tracing::Instrument::instrument(
        relay::accept_loop(public, private_path, limit, guard, stop.clone()),
        span,
    ));
    let (tx, rx) = socket.split();

    let reader_ctx = Arc::clone(&ctx);
    let reader = tokio::spawn(async move {
        read_loop(rx, reader_ctx, inbound, "router").await;
    });

    let writer_ctx = Arc::clone(&ctx);
    let writer = tokio::spawn(async move {
        let ctx = writer_ctx;
        let mut link = LinkTx::Router { tx, identity };
        if !ctx.outlet.enabled() {
            // No resending: wait for the crate, so nothing is dropped.
            while let Some(out) = out_rx.recv().await {
                ctx.outlet.unqueued(1);
                if let Err(e) = link.send(out).await {
                    ctx.send_failed(&e);
                }
            }
            return;
        }
        let _lease = ctx.outlet.install(link);
        let mut batch = Vec::with_capacity(super::WRITE_BATCH);
        while out_rx.recv_many(&mut batch, super::WRITE_BATCH).await > 0 {
            for e in ctx.outlet.send_queued(&mut batch) {
                ctx.send_failed(&e);
            }
        }
    });

    Ok(SocketTasks {
        tasks: vec![reader, writer],
        created_file,
        inproc: None,
        private: Some(private),
        flushing: vec![acceptor],
        stop: Some(stop),
    })
}

/// The one task that awaits a socket's (non-cancel-safe) `recv`, always to
/// completion: hands each message to the ProcessMessage loop. Returns true
/// when the socket failed (its peer is gone), false when the loop has.
async fn read_loop<R: SocketRecv>(
    mut rx: R,
    ctx: Arc<SocketCtx>,
    inbound: tokio::sync::mpsc::Sender<Inbound>,
    side: &'static str,
) -> bool {
    let mut warn = RateLimit::new();
    loop {
        match rx.recv().await {
            Ok(msg) => {
                if !ctx.deliver(msg.into_vecdeque(), &inbound, &mut warn).await {
                    return false;
                }
            }
            Err(e) => {
                tracing::debug!(endpoint = %ctx.endpoint, error = %e, side, "reader stops");
                return true;
            }
        }
    }
}

/// A live DEALER session: the send half, and the tasks reading it and
/// watching it for a disconnect.
pub(crate) struct ZmqLink {
    /// `None` while lent to the socket's outlet.
    tx: Option<LinkTx>,
    tasks: [tokio::task::JoinHandle<()>; 2],
    /// Ends by itself once the DEALER is gone and what it wrote is relayed
    /// (none when the link is not guarded).
    relay: Option<tokio::task::JoinHandle<()>>,
    _private: Option<PrivateSocket>,
}

impl ZmqLink {
    pub(crate) async fn send(&mut self, payload: Bytes) -> Result<(), String> {
        let tx = self.tx.as_mut().ok_or("the link's sender is lent out")?;
        tx.send(super::Outbound {
            peer: Bytes::new(),
            payload,
        })
        .await
    }

    /// Lends the send half out (to the socket's outlet), once.
    pub(crate) fn lend_tx(&mut self) -> Option<LinkTx> {
        self.tx.take()
    }
}

impl ZmqLink {
    /// Closes the DEALER and waits, up to `linger`, for the relay to carry
    /// what it wrote to the peer.
    pub(crate) async fn close(mut self, linger: std::time::Duration) {
        let relay = self.relay.take();
        drop(self);
        if let Some(mut relay) = relay
            && tokio::time::timeout(linger, &mut relay).await.is_err()
        {
            relay.abort();
        }
    }
}

impl Drop for ZmqLink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(relay) = self.relay.take() {
            relay.abort();
        }
    }
}

/// Connects a DEALER to `endpoint` (through the frame guard when `guarded`)
/// and starts its reader. `down` fires when the peer goes away (the crate's
/// DEALER never reconnects by itself).
pub(crate) async fn dial(
    endpoint: &Endpoint,
    identity: &Bytes,
    connect_timeout: std::time::Duration,
    guarded: bool,
    guard: relay::Settings,
    inbound: &tokio::sync::mpsc::Sender<Inbound>,
    down: tokio::sync::oneshot::Sender<()>,
) -> Result<ZmqLink, ConnectError> {
    let ctx = &guard.ctx;
    let refused = |message: String| ConnectError::Refused {
        endpoint: endpoint.clone(),
        message,
    };
    let mut socket = DealerSocket::with_options(options(identity, connect_timeout));
    let mut monitor = socket.monitor();
    let (relay_task, private) = if guarded {
        guarded_link(endpoint, &mut socket, connect_timeout, guard.clone()).await?
    } else {
        let connected = socket.connect(&endpoint.to_string()).await;
        connected.map_err(|e| match e {
            zeromq::ZmqError::ConnectTimeout(_) => ConnectError::Timeout(endpoint.clone()),
            other => refused(other.to_string()),
        })?;
        (None, None)
    };
    let (tx, rx) = socket.split();
    let down = Arc::new(std::sync::Mutex::new(Some(down)));
    let fire = |down: &Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>| {
        if let Some(d) = down.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = d.send(());
        }
    };

    let reader = tokio::spawn({
        let (ctx, inbound, down) = (Arc::clone(ctx), inbound.clone(), Arc::clone(&down));
        async move {
            if read_loop(rx, ctx, inbound, "dealer").await {
                fire(&down);
            }
        }
    });

    let monitor_task = tokio::spawn(async move {
        while let Some(event) = monitor.next().await {
            if let SocketEvent::Disconnected(_) = event {
                fire(&down);
                return;
            }
        }
    });

    Ok(ZmqLink {
        tx: Some(LinkTx::Dealer(tx)),
        tasks: [reader, monitor_task],
        relay: relay_task,
        _private: private,
    })
}

/// Dials the peer ourselves and connects `socket` to it through a relay
/// and the frame guard, over a private socket.
async fn guarded_link(
    endpoint: &Endpoint,
    socket: &mut DealerSocket,
    connect_timeout: std::time::Duration,
    guard: relay::Settings,
) -> Result<(Option<tokio::task::JoinHandle<()>>, Option<PrivateSocket>), ConnectError> {
    let refused = |message: String| ConnectError::Refused {
        endpoint: endpoint.clone(),
        message,
    };
    let peer = match endpoint {
        Endpoint::Tcp { host, port } => {
            let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
            let stream = tokio::time::timeout(connect_timeout, connect)
                .await
                .map_err(|_| ConnectError::Timeout(endpoint.clone()))?
                .map_err(|e| refused(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            relay::Stream::Tcp(stream)
        }
        Endpoint::Ipc(path) => {
            let connect = tokio::net::UnixStream::connect(path);
            let stream = tokio::time::timeout(connect_timeout, connect)
                .await
                .map_err(|_| ConnectError::Timeout(endpoint.clone()))?
                .map_err(|e| refused(e.to_string()))?;
            relay::Stream::Unix(stream)
        }
        Endpoint::Inproc(_) => return Err(refused("inproc is not a zeromq transport".into())),
    };
    let private = PrivateSocket::new().map_err(|e| refused(e.to_string()))?;
    let private_path = private.path();
    let private_listener =
        relay::bind_private(&private_path).map_err(|e| refused(e.to_string()))?;
    let relay_task = tokio::spawn(relay::relay_outgoing(private_listener, peer, guard));
    let url = format!("ipc://{}", private_path.display());
    if let Err(e) = socket.connect(&url).await {
        relay_task.abort();
        return Err(match e {
            zeromq::ZmqError::ConnectTimeout(_) => ConnectError::Timeout(endpoint.clone()),
            other => refused(other.to_string()),
        });
    }
    Ok((Some(relay_task), Some(private)))
}
