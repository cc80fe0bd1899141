//! Shared helpers for the integration tests: a fresh endpoint per transport
//! (tcp port 0, a unique ipc path under a temp dir, a unique inproc name) and
//! bounded waits, so a bug fails a test instead of hanging CI; `python`
//! finds (or builds) the interpreter for tests that run pyzmq peers;
//! `raw_zmtp` speaks ZMTP by hand for raw peers (well-behaved or hostile)
//! and counts every byte they receive; `memory` measures the resident set.
//! Below: a listening server, a connected client and a round trip on our
//! API, and raw peers on the `zeromq` crate.
#![allow(dead_code)]

pub mod memory;
pub mod python;
pub mod raw_zmtp;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use messenger::{Config, ConnectionId, Endpoint, Incoming, ListenerInfo, Messenger, Responder};
use zeromq::prelude::*;
use zeromq::util::PeerIdentity;
use zeromq::{DealerSocket, RouterSocket, SocketOptions};

/// The transports every capability is tested on.
pub const TRANSPORTS: [&str; 3] = ["tcp", "ipc", "inproc"];

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Holds the temp dir of an ipc endpoint alive.
pub struct Place {
    pub endpoint: Endpoint,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh endpoint to bind on `transport`.
pub fn place(transport: &str) -> Place {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    match transport {
        "tcp" => Place {
            endpoint: "tcp://127.0.0.1:0".parse().unwrap(),
            _dir: None,
        },
        "ipc" => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("m{n}.sock"));
            Place {
                endpoint: Endpoint::Ipc(path),
                _dir: Some(dir),
            }
        }
        "inproc" => Place {
            endpoint: Endpoint::Inproc(format!("test-{}-{n}", std::process::id())),
            _dir: None,
        },
        other => panic!("unknown transport {other}"),
    }
}

/// Awaits `f` for at most `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

/// Polls `cond` until it holds, for at most `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A server messenger (identity "server") with `config`, listening as
/// "server" on a fresh endpoint of `t` with server loop `slc`.
pub async fn serve(
    t: &str,
    config: Config,
    slc: impl Fn(Incoming, Responder) + Send + Sync + 'static,
) -> (Messenger, ListenerInfo, Place) {
    let p = place(t);
    let server = Messenger::with_config("server", config).unwrap();
    let bound = within(
        5,
        "listen",
        server.listen_for_connection(&p.endpoint, "server", slc),
    )
    .await
    .unwrap_or_else(|e| panic!("{t}: listen: {e}"));
    (server, bound, p)
}

/// A client messenger (identity "client") with `config`, connected to
/// `endpoint` within 5 s.
pub async fn connect(config: Config, endpoint: &Endpoint) -> (Messenger, ConnectionId) {
    connect_as("client", config, endpoint, 5).await
}

/// A messenger with identity `name` and `config`, connected to `endpoint`
/// within `secs` seconds.
pub async fn connect_as(
    name: &str,
    config: Config,
    endpoint: &Endpoint,
    secs: u64,
) -> (Messenger, ConnectionId) {
    let m = Messenger::with_config(name.to_string(), config).unwrap();
    let conn = within(
        secs,
        &format!("{name} connects"),
        m.make_connection(endpoint),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: connect to {endpoint}: {e}"));
    (m, conn)
}

/// Sends `body` to callback `cb` on `conn` (ECHO, or a server loop that
/// answers with the body) and checks that it comes back within `secs`
/// seconds.
pub async fn round_trip(
    secs: u64,
    m: &Messenger,
    conn: ConnectionId,
    cb: u64,
    body: &[u8],
    what: &str,
) {
    let reply = within(secs, what, m.request(conn, cb, body))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(reply.body.as_ref(), body, "{what}");
}

/// A raw zeromq ROUTER bound on a fresh endpoint of `t`; returns it with
/// the endpoint to connect to.
pub async fn raw_router(t: &str) -> (RouterSocket, Endpoint, Place) {
    let p = place(t);
    let url = match t {
        "tcp" => "tcp://127.0.0.1:0".to_string(),
        _ => p.endpoint.to_string(),
    };
    let mut router = RouterSocket::new();
    let bound = within(5, "raw bind", router.bind(&url)).await.unwrap();
    let endpoint: Endpoint = bound.to_string().parse().unwrap();
    (router, endpoint, p)
}

/// A raw zeromq DEALER with routing id `identity`, connected to `endpoint`.
pub async fn raw_dealer(endpoint: &Endpoint, identity: &str) -> DealerSocket {
    let mut opts = SocketOptions::default();
    opts.peer_identity(PeerIdentity::try_from(identity.as_bytes().to_vec()).unwrap());
    let mut socket = DealerSocket::with_options(opts);
    within(5, "raw connect", socket.connect(&endpoint.to_string()))
        .await
        .unwrap_or_else(|e| panic!("raw connect to {endpoint}: {e}"));
    socket
}

/// A multipart zeromq message made of `parts`, for raw (scripted or
/// hostile) peers built on the `zeromq` crate.
pub fn frames(parts: &[&[u8]]) -> zeromq::ZmqMessage {
    let parts: Vec<bytes::Bytes> = parts
        .iter()
        .map(|p| bytes::Bytes::copy_from_slice(p))
        .collect();
    zeromq::ZmqMessage::try_from(parts).expect("at least one frame")
}

/// Receives one multipart message on a raw zeromq socket within `secs`
/// seconds, as its frames.
pub async fn raw_recv<S: zeromq::SocketRecv + Send>(
    socket: &mut S,
    secs: u64,
    what: &str,
) -> Vec<bytes::Bytes> {
    within(secs, what, socket.recv())
        .await
        .unwrap_or_else(|e| panic!("{what}: raw recv failed: {e}"))
        .into_vec()
}

/// Sends `parts` as one multipart message on a raw zeromq socket.
pub async fn raw_send<S: zeromq::SocketSend + Send>(socket: &mut S, parts: &[&[u8]]) {
    within(5, "raw send", socket.send(frames(parts)))
        .await
        .expect("raw send");
}
