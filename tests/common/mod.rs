//! Shared helpers for the integration tests: a fresh endpoint per transport
//! (tcp port 0, a unique ipc path under a temp dir, a unique inproc name) and
//! bounded waits, so a bug fails a test instead of hanging CI; `python`
//! finds (or builds) the interpreter for tests that run pyzmq peers;
//! `raw_zmtp` speaks ZMTP by hand for raw peers; `hostile` floods, counts
//! every byte a raw peer receives and measures the resident set.
#![allow(dead_code)]

pub mod hostile;
pub mod python;
pub mod raw_zmtp;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use messenger::Endpoint;

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
