//! Shared fixtures for the integration tests, so each test says only what
//! it checks. Submodules: `python` finds (or builds) the interpreter for
//! pyzmq peers; `raw_zmtp` speaks ZMTP by hand for raw peers (well-behaved
//! or hostile) and counts every byte they receive; `memory` measures the
//! resident set; `serve` runs `messenger serve` as a child process.
//!
//! Here:
//! - transports: [`TRANSPORTS`] (behavioural tests loop over all three),
//!   [`RAW_TRANSPORTS`] (tests with raw peers), [`place`] (a fresh
//!   endpoint);
//! - bounded waits, so a bug fails a test instead of hanging CI: [`within`],
//!   [`wait_until`], [`eventually`], [`eventually_real`], [`retry`], and for
//!   plain threads and child processes [`wait_until_blocking`],
//!   [`wait_child`], [`run_bounded`], [`run_bounded_group`], and
//!   [`example`] (an example binary to run);
//! - server loops: [`no_slc`], [`Seen`] (records, answers `re:`, the body or
//!   nothing), [`forwarding`] (hands each message to the test);
//! - our side: [`serve`], [`serve_seen`], [`connect`], [`connect_as`],
//!   [`pair`] and [`forwarding_pair`] (a server and a connected client),
//!   [`spawn_request`], [`expect_reply`], [`round_trip`], [`assert_stats!`];
//! - [`Rng`] (seeded), [`env_number`] (size knobs);
//! - raw peers on the `zeromq` crate: [`raw_router`], [`raw_dealer`],
//!   [`raw_send`], [`raw_recv`], [`raw_payload`].
#![allow(dead_code, missing_docs, clippy::should_implement_trait)]

pub mod memory;
pub mod python;
pub mod raw_zmtp;

use std::future::Future;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{
    Config, ConnectionId, Endpoint, Error, Incoming, ListenerInfo, Messenger, Responder,
};
use messenger_proto::wire;
use tokio::sync::mpsc;
use zeromq::prelude::*;
use zeromq::util::PeerIdentity;
use zeromq::{DealerSocket, RouterSocket, SocketOptions};

/// The transports every capability is tested on: a behavioural test loops
/// `for t in TRANSPORTS` and says `{t}` in each assertion.
pub const TRANSPORTS: [&str; 3] = ["tcp", "ipc", "inproc"];

/// The transports a raw peer (the `zeromq` crate, ZMTP by hand, pyzmq)
/// can use: inproc is ours alone. Tests of the wire loop over these.
pub const RAW_TRANSPORTS: [&str; 2] = ["tcp", "ipc"];

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

/// Polls `cond` every 5 ms until it holds or `limit` passes; whether it
/// held. For a test that reports the failure itself.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

/// Polls `cond` until it holds, for at most `secs` seconds.
pub async fn eventually(secs: u64, what: &str, cond: impl FnMut() -> bool) {
    if !wait_until(Duration::from_secs(secs), cond).await {
        panic!("timed out after {secs}s: {what}");
    }
}

/// Like [`eventually`], but the `secs` are real (wall-clock) seconds,
/// checked between polls: under a paused clock, or a runtime too busy for
/// a timer to fire on time.
pub async fn eventually_real(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not within {secs} s of real time: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `attempt` until it gives `Some`, `every` apart, for at most `secs`
/// seconds: for a condition that takes a dial or a bind to check (a place
/// or a routing id that frees up, an endpoint a listener let go of).
pub async fn retry<T>(
    secs: u64,
    what: &str,
    every: Duration,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    within(secs, what, async {
        loop {
            if let Some(t) = attempt().await {
                return t;
            }
            tokio::time::sleep(every).await;
        }
    })
    .await
}

/// [`wait_until`] for a plain thread: polls `cond` every `every` until it
/// holds or `limit` passes, blocking; whether it held.
pub fn wait_until_blocking(
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Waits up to `limit` for `child` to exit. One that does not is killed
/// and reaped, and the answer is `None`.
pub fn wait_child(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let mut status = None;
    let mut error = None;
    wait_until_blocking(limit, Duration::from_millis(10), || {
        match child.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                true
            }
            Ok(None) => false,
            Err(e) => {
                error = Some(e);
                true
            }
        }
    });
    if let Some(e) = error {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(status)
}

/// What a process run by [`run_bounded`] or [`run_bounded_group`] left.
#[derive(Debug)]
pub struct Ran {
    /// `None`: still running at the limit, and killed.
    pub status: Option<ExitStatus>,
    /// All it wrote to stdout (lossy UTF-8), for assertions on its output.
    pub stdout: String,
    /// All it wrote to stderr, for assertions and failure messages.
    pub stderr: String,
    /// From its start until it exited or was killed, for time bounds.
    pub elapsed: Duration,
}

impl Ran {
    /// Whether it exited, successfully.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Its status, time and output, for a failure message.
    pub fn context(&self) -> String {
        format!(
            "status {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (stdin closed, stdout and stderr drained on threads so a
/// chatty child never blocks on a full pipe) until it exits or `limit`
/// passes, when it is killed.
pub fn run_bounded(cmd: std::process::Command, limit: Duration) -> std::io::Result<Ran> {
    run_child(cmd, limit, false)
}

/// Runs `cmd` as [`run_bounded`] does, in a process group of its own:
/// at the limit the whole group is killed (its own children too, such as
/// pip's maturin and cargo or pytest's `messenger serve`), so nothing
/// outlives the test.
pub fn run_bounded_group(mut cmd: std::process::Command, limit: Duration) -> std::io::Result<Ran> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    run_child(cmd, limit, true)
}

fn run_child(mut cmd: std::process::Command, limit: Duration, group: bool) -> std::io::Result<Ran> {
    use std::io::Read;
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_child(&mut child, limit);
    if group && !matches!(status, Ok(Some(_))) {
        // Before the pipes are read to their end: a grandchild left
        // running would hold them open.
        kill_group(child.id());
    }
    let elapsed = start.elapsed();
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    Ok(Ran {
        status: status?,
        stdout,
        stderr,
        elapsed,
    })
}

/// Kills process group `pgid` (a child started with `process_group(0)`
/// leads one of that number).
fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // SAFETY: kill(2) with a negative pid signals that process group;
        // it is ours (the child leads it).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// An example binary built by cargo next to the running test's own
/// binary (`target/<profile>/deps/NAME-HASH` ->
/// `target/<profile>/examples/NAME`). Panics, saying how to build it,
/// when it is not there.
pub fn example(name: &str) -> std::process::Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|p| p.join("examples"))
        .unwrap_or_else(|| panic!("cannot locate target dir from {}", exe.display()));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "example binary {} not found: build the examples first \
         (`cargo test` builds them; `cargo test --test NAME` alone does not: \
         run `cargo build --examples`)",
        path.display()
    );
    std::process::Command::new(path)
}

// ---------------------------------------------------------------------------
// Server loops

/// A server loop that takes every message and does nothing with it.
pub fn no_slc(_: Incoming, _: Responder) {}

/// Replies `body` through `r`; a full send queue is not an error for a server
/// loop: the reply goes to a task that waits for room.
pub fn reply_or_wait(r: Responder, body: Vec<u8>) {
    if let Err(Error::Full) = r.try_reply(&body) {
        tokio::spawn(async move { r.reply(body).await });
    }
}

/// A message as a server loop saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub msg_id: u64,
    pub src_cb: u64,
    pub peer: Bytes,
    pub body: Bytes,
    /// The sender's CURVE key, when its session proved one.
    pub peer_key: Option<messenger::curve::PublicKey>,
}

/// Every message a server loop saw, in order. [`Seen::slc`] answers those
/// that ask for a reply with `re:{body}`, [`Seen::echo_slc`] with the body,
/// [`Seen::quiet_slc`] answers nothing.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<Got>>>);

impl Seen {
    /// Records `m`, for a server loop of the test's own.
    pub fn record(&self, m: &Incoming) {
        self.0.lock().unwrap().push(Got {
            msg_id: m.msg_id,
            src_cb: m.src_cb,
            peer: m.peer.clone(),
            body: m.body.clone(),
            peer_key: m.peer_key(),
        });
    }

    fn recorder(
        &self,
        answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> impl Fn(Incoming, Responder) + Send + Sync + 'static {
        let seen = self.clone();
        move |m: Incoming, r: Responder| {
            seen.record(&m);
            if m.src_cb != wire::NOOP
                && let Some(body) = answer(&m.body)
            {
                reply_or_wait(r, body);
            }
        }
    }

    /// Records, and answers `re:{body}`.
    pub fn slc(&self) -> impl Fn(Incoming, Responder) + Send + Sync + 'static {
        self.recorder(|b| Some([b"re:".as_slice(), b].concat()))
    }

    /// Records, and answers with the body.
    pub fn echo_slc(&self) -> impl Fn(Incoming, Responder) + Send + Sync + 'static {
        self.recorder(|b| Some(b.to_vec()))
    }

    /// Records, and answers nothing.
    pub fn quiet_slc(&self) -> impl Fn(Incoming, Responder) + Send + Sync + 'static {
        self.recorder(|_| None)
    }

    pub fn all(&self) -> Vec<Got> {
        self.0.lock().unwrap().clone()
    }

    pub fn bodies(&self) -> Vec<Bytes> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.body.clone())
            .collect()
    }

    /// The bodies as text.
    pub fn texts(&self) -> Vec<String> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .map(|g| String::from_utf8_lossy(&g.body).into_owned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times `body` was seen.
    pub fn count(&self, body: &str) -> usize {
        let seen = self.0.lock().unwrap();
        seen.iter().filter(|g| g.body == body.as_bytes()).count()
    }
}

/// Opens a gate (a semaphore server loops wait at) for good when dropped,
/// so a failing test does not leave a loop blocked (and the runtime
/// waiting for it).
pub struct OpenOnDrop(pub Arc<tokio::sync::Semaphore>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.add_permits(1 << 20);
    }
}

/// What a recording server loop ([`serve_seen`]) answers to a message that
/// asks for a reply.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// `re:{body}` ([`Seen::slc`]).
    Re,
    /// The body ([`Seen::echo_slc`]).
    Body,
    /// Nothing ([`Seen::quiet_slc`]).
    Nothing,
}

/// A listener ([`serve`]) whose server loop records what it sees and
/// answers as `answer` says; with what it saw.
pub async fn serve_seen(
    t: &str,
    config: Config,
    answer: Answer,
) -> (Messenger, ListenerInfo, Place, Seen) {
    let seen = Seen::default();
    let (server, bound, place) = match answer {
        Answer::Re => serve(t, config, seen.slc()).await,
        Answer::Body => serve(t, config, seen.echo_slc()).await,
        Answer::Nothing => serve(t, config, seen.quiet_slc()).await,
    };
    (server, bound, place, seen)
}

/// `Bytes` of each string, for comparing with [`Seen::bodies`].
pub fn bytes_vec(items: &[&str]) -> Vec<Bytes> {
    items
        .iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

/// A server loop that hands every message and its responder to the test.
pub fn forwarding() -> (
    impl Fn(Incoming, Responder) + Send + Sync + 'static,
    mpsc::UnboundedReceiver<(Incoming, Responder)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let slc = move |m, r| {
        let _ = tx.send((m, r));
    };
    (slc, rx)
}

/// A server messenger (identity "server") with `config`, listening as
/// "server" on a fresh endpoint of `t` with server loop `slc`.
pub async fn serve(
    t: &str,
    config: Config,
    slc: impl Fn(Incoming, Responder) + Send + Sync + 'static,
) -> (Messenger, ListenerInfo, Place) {
    let p = place(t);
    let server = Messenger::builder()
        .identity("server")
        .config(config)
        .build()
        .unwrap();
    let bound = within(5, "listen", server.listen_for_connection(&p.endpoint, slc))
        .await
        .unwrap_or_else(|e| panic!("{t}: listen: {e}"));
    (server, bound, p)
}

/// A server ([`serve`]) and a client ([`connect`]) connected to it.
pub struct Pair {
    pub server: Messenger,
    pub bound: ListenerInfo,
    pub client: Messenger,
    pub conn: ConnectionId,
    /// Keeps an ipc path alive.
    pub place: Place,
}

impl Pair {
    /// Shuts the client down, then the server.
    pub async fn shutdown(&self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

/// A server with `server_config` and server loop `slc` listening on a
/// fresh endpoint of `t`, and a client with `client_config` connected to
/// it.
pub async fn pair(
    t: &str,
    server_config: Config,
    client_config: Config,
    slc: impl Fn(Incoming, Responder) + Send + Sync + 'static,
) -> Pair {
    let (server, bound, place) = serve(t, server_config, slc).await;
    let (client, conn) = connect(client_config, &bound.endpoint).await;
    Pair {
        server,
        bound,
        client,
        conn,
        place,
    }
}

/// A [`pair`] with default configs whose server loop hands every message
/// and its responder to the test ([`forwarding`]).
pub async fn forwarding_pair(t: &str) -> (Pair, mpsc::UnboundedReceiver<(Incoming, Responder)>) {
    let (slc, rx) = forwarding();
    (pair(t, Config::default(), Config::default(), slc).await, rx)
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
    let m = Messenger::builder()
        .identity(name.to_string())
        .config(config)
        .build()
        .unwrap();
    let conn = within(
        secs,
        &format!("{name} connects"),
        m.make_connection(endpoint),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: connect to {endpoint}: {e}"));
    (m, conn)
}

/// `m.request(dest, dst_cb, body)` on a task of its own, for a test that
/// does something else while it waits.
pub fn spawn_request(
    m: &Messenger,
    dest: impl Into<messenger::Destination>,
    dst_cb: u64,
    body: impl AsRef<[u8]>,
) -> tokio::task::JoinHandle<Result<Incoming, messenger::Error>> {
    let (m, dest, body) = (m.clone(), dest.into(), body.as_ref().to_vec());
    tokio::spawn(async move { m.request(dest, dst_cb, body).await })
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

/// A seeded xorshift64* generator: enough randomness for a mix of cases,
/// the same run to run for one seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0 ..= n-1
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred, about.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True about once in `n` calls.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// The number in environment variable `name` (a test's size knob), or
/// `default` when it is not set; panics on anything that is not a number.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

/// Checks counters of a [`messenger::StatsSnapshot`], each by name:
/// `assert_stats!(s, "{t}", acks_sent == 3, resends == 0)` (any `==`, `<=`
/// or `>=`); a failure names the counter, the context and the snapshot.
#[macro_export]
macro_rules! assert_stats {
    ($stats:expr, $ctx:expr, $($field:ident $op:tt $want:expr),+ $(,)?) => {{
        let s = &$stats;
        $(
            assert!(
                s.$field $op $want,
                "{}: {} is {}, expected {} {}: {:?}",
                $ctx,
                stringify!($field),
                s.$field,
                stringify!($op),
                $want,
                s
            );
        )+
    }};
}

/// Awaits a request running on a task of its own ([`spawn_request`]) for
/// at most 5 s, and checks that it was answered with `body`; the reply.
pub async fn expect_reply(
    req: tokio::task::JoinHandle<Result<Incoming, messenger::Error>>,
    body: &[u8],
    what: &str,
) -> Incoming {
    let reply = within(5, what, req)
        .await
        .expect("request task")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(reply.body.as_ref(), body, "{what}");
    reply
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

/// The next message on a raw zeromq socket (within 5 s), checked to be
/// `[peer, "", payload]` as a ROUTER gets it from `peer` or a DEALER from
/// the listener `peer`; its payload, parsed.
pub async fn raw_payload<S: zeromq::SocketRecv + Send>(
    socket: &mut S,
    peer: &str,
    what: &str,
) -> wire::Payload {
    let f = raw_recv(socket, 5, what).await;
    assert_eq!(f.len(), 3, "{what}: {f:?}");
    assert_eq!(f[0], peer.as_bytes(), "{what}: {f:?}");
    assert!(f[1].is_empty(), "{what}: {f:?}");
    wire::parse(&f[2]).unwrap_or_else(|e| panic!("{what}: malformed payload {f:?}: {e}"))
}

/// Sends `parts` as one multipart message on a raw zeromq socket.
pub async fn raw_send<S: zeromq::SocketSend + Send>(socket: &mut S, parts: &[&[u8]]) {
    within(5, "raw send", socket.send(frames(parts)))
        .await
        .expect("raw send");
}
