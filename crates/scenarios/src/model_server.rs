//! The model-server loop: the Rust counterpart of NoisePage's
//! ModelServerManager.
//!
//! The manager listens on an ipc socket with listener identity
//! [`LISTENER_IDENTITY`] and starts a model server (a child process given
//! the socket path, without `ipc://`, as its last argument, or the
//! in-process [stand-in](StandInOptions)). The model server connects as a
//! DEALER with identity [`MODEL_IDENTITY`] and speaks JSON:
//!
//! - first it sends [`ModelServerMessage`] `{"action": 1, "result": "",
//!   "success": true, "err": ""}` (CONNECTED) to callback 0, which the
//!   manager's server loop receives;
//! - it resends every message it sent until it is ACKed, once per poll
//!   cycle; it never ACKs what it receives and does not deduplicate;
//! - it answers `{"cmd": "PRINT", "data": {"message": TEXT}}` with
//!   `{"action": 0, "result": "MODEL_REPLY_" + TEXT, "success": true, "err": ""}`
//!   addressed to the command's src_cb;
//! - `{"cmd": "QUIT", "data": {}}` makes it exit without a reply.
//!
//! Two such model servers are in the repository: `tests/py/model_server.py`
//! (pyzmq, following NoisePage's Python model server, which never ACKs)
//! and `examples/python/model_server.py` (NoisePage's loop written on the
//! `messenger` Python package, a full peer that ACKs, deduplicates and
//! resends); [`ModelServerSpec::Command`] runs either, unchanged.
//!
//! The manager may listen on tcp instead
//! ([`ModelServerManager::start_at`]), for a model server on another host;
//! a child process is then given the endpoint (`tcp://HOST:PORT`) as its
//! last argument, or the model server is started by someone else
//! ([`ModelServerSpec::External`]) and the manager waits for it to dial in.
//!
//! Commands go from the listener to the peer `model`
//! ([`Destination::Peer`]); PRINT is a request whose reply comes back to a
//! message-specific callback.
//!
//! **Resending is off on the manager's messenger** (`resend_interval:
//! None`). The model server never ACKs, so every command would otherwise be
//! resent each interval until its reply (or, for QUIT, forever until the
//! deadline), and the model server does not deduplicate: a resent PRINT
//! would be answered twice and, for a real model server, a resent TRAIN
//! would train twice. The link is a local ipc socket, which loses nothing
//! while both ends live; a model server that dies is noticed by watching
//! its process (or task) and by the reply timeout instead. Our side still
//! ACKs everything the model server sends and suppresses its resends, so
//! the server loop sees CONNECTED exactly once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Latency, Micros, SetupError, per_second, unique};
use messenger::typed::{from_json, to_json};
use messenger::{
    Config, Destination, Endpoint, Error, Incoming, ListenerInfo, Messenger, Responder,
    StatsSnapshot,
};
use messenger_proto::wire;

/// The manager's listener identity, as in NoisePage.
pub const LISTENER_IDENTITY: &str = "model-server-conn";
/// The model server's DEALER identity, as in NoisePage.
pub const MODEL_IDENTITY: &str = "model";
/// `action` of a reply to a command.
pub const ACTION_NOOP: i64 = 0;
/// `action` of the model server's first message.
pub const ACTION_CONNECTED: i64 = 1;

/// What the model server sends: CONNECTED, or a command's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelServerMessage {
    /// [`ACTION_CONNECTED`] or [`ACTION_NOOP`].
    pub action: i64,
    /// The command's result (a string for PRINT).
    pub result: serde_json::Value,
    /// Whether the command succeeded.
    pub success: bool,
    /// Why it failed, when it did.
    pub err: String,
}

impl ModelServerMessage {
    /// The CONNECTED message.
    pub fn connected() -> Self {
        ModelServerMessage {
            action: ACTION_CONNECTED,
            result: serde_json::Value::String(String::new()),
            success: true,
            err: String::new(),
        }
    }
}

/// A command to the model server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCommand {
    /// `PRINT` or `QUIT` (NoisePage also has TRAIN, INFER, ...).
    pub cmd: String,
    /// The command's arguments.
    pub data: serde_json::Value,
}

impl ModelCommand {
    /// `{"cmd": "PRINT", "data": {"message": text}}`.
    pub fn print(text: &str) -> Self {
        ModelCommand {
            cmd: "PRINT".into(),
            data: serde_json::json!({ "message": text }),
        }
    }

    /// `{"cmd": "QUIT", "data": {}}`.
    pub fn quit() -> Self {
        ModelCommand {
            cmd: "QUIT".into(),
            data: serde_json::json!({}),
        }
    }
}

/// Which model server the manager drives.
#[derive(Debug, Clone)]
pub enum ModelServerSpec {
    /// A child process: program and arguments; the socket path (or, on
    /// tcp, the endpoint) is appended.
    Command(Vec<String>),
    /// The in-process stand-in (ipc only).
    StandIn(StandInOptions),
    /// Started by someone else (on another host, say): the manager only
    /// listens and waits for it to connect. Its exit cannot be watched:
    /// only deadlines and disconnects tell.
    External,
}

/// Behaviour of the in-process stand-in model server, which follows the
/// Python model server's rules on a bare ZMTP DEALER (not a [`Messenger`]:
/// it must resend without deduplicating and never ACK, as the Python model
/// server does).
#[derive(Debug, Clone)]
pub struct StandInOptions {
    /// Poll cycle: unACKed messages older than this are resent. Default 100 ms.
    pub poll_interval: Duration,
    /// Extra copies of CONNECTED (same msg_id) sent at once, as if the
    /// ACKs of earlier sends had been lost. Default 0.
    pub extra_connected_copies: u32,
    /// Exit without answering the first PRINT. Default false.
    pub die_before_reply: bool,
    /// Longest the stand-in lives. Default 60 s.
    pub max_lifetime: Duration,
}

impl Default for StandInOptions {
    fn default() -> Self {
        StandInOptions {
            poll_interval: Duration::from_millis(100),
            extra_connected_copies: 0,
            die_before_reply: false,
            max_lifetime: Duration::from_secs(60),
        }
    }
}

/// Settings of one manager run.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// The model server to start.
    pub server: ModelServerSpec,
    /// Texts to PRINT, one request each, in order. Default `["hello"]`.
    pub messages: Vec<String>,
    /// The ipc socket path; default a fresh path in the temp directory.
    pub socket_path: Option<PathBuf>,
    /// Listen here instead (tcp, for a model server on another host);
    /// `socket_path` is then ignored. Default none.
    pub endpoint: Option<Endpoint>,
    /// Bound on waiting for CONNECTED. Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on waiting for each PRINT's reply. Default 10 s.
    pub reply_timeout: Duration,
    /// Bound on waiting for the model server to exit after QUIT. Default 5 s.
    pub exit_timeout: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            server: ModelServerSpec::StandIn(StandInOptions::default()),
            messages: vec!["hello".into()],
            socket_path: None,
            endpoint: None,
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(10),
            exit_timeout: Duration::from_secs(5),
        }
    }
}

/// One answered PRINT.
#[derive(Debug, Clone)]
pub struct PrintReply {
    /// The text sent.
    pub message: String,
    /// The reply's body exactly as received (JSON).
    pub json: String,
    /// The reply, decoded.
    pub reply: ModelServerMessage,
    /// Request to reply.
    pub latency: Duration,
}

/// What a successful run saw.
#[derive(Debug, Clone)]
pub struct ManagerReport {
    /// The ipc endpoint the manager listened on.
    pub endpoint: Endpoint,
    /// How the model server was started (command line, or "in-process stand-in").
    pub server: String,
    /// The child's process id, for a command.
    pub pid: Option<u32>,
    /// From starting the model server to its CONNECTED.
    pub connected_after: Duration,
    /// CONNECTED messages the server loop received (1 unless duplicates leaked).
    pub connected_seen: u64,
    /// Messages from the model server our messenger recognised as resends
    /// and did not deliver again.
    pub duplicates_suppressed: u64,
    /// The PRINT replies, in order.
    pub replies: Vec<PrintReply>,
    /// From the first PRINT to the last reply.
    pub print_elapsed: Duration,
    /// PRINT round trips.
    pub print_latency: Latency,
    /// How the model server ended after QUIT.
    pub exit: String,
    /// The manager messenger's counters at the end.
    pub stats: StatsSnapshot,
}

impl ManagerReport {
    /// PRINT round trips per second.
    pub fn prints_per_sec(&self) -> f64 {
        per_second(self.replies.len() as u64, self.print_elapsed)
    }
}

impl fmt::Display for ManagerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "started: {} on {} (listener {LISTENER_IDENTITY:?}, peer {MODEL_IDENTITY:?})",
            self.server, self.endpoint
        )?;
        writeln!(
            f,
            "CONNECTED after {}: delivered to the server loop {} time(s), {} resent copies suppressed",
            Micros(self.connected_after),
            self.connected_seen,
            self.duplicates_suppressed
        )?;
        if let Some(first) = self.replies.first() {
            writeln!(f, "PRINT {:?} -> {}", first.message, first.json)?;
        }
        writeln!(
            f,
            "{} PRINT requests answered: {:.0}/s, latency {}",
            self.replies.len(),
            self.prints_per_sec(),
            self.print_latency
        )?;
        let s = &self.stats;
        writeln!(
            f,
            "manager: {} messages received, {} ACKs sent, {} resends (resending is off: the model server never ACKs)",
            s.received, s.acks_sent, s.resends
        )?;
        write!(f, "QUIT -> model server exited ({})", self.exit)
    }
}

/// Why the manager failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelServerError {
    /// The options make no sense.
    #[error("invalid options: {0}")]
    Options(String),
    /// A messenger, listener, connection or process could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The model server's process could not be started.
    #[error("cannot start the model server {command:?}: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No CONNECTED within the bound.
    #[error("the model server did not send CONNECTED within {0:?}")]
    NotConnected(Duration),
    /// The model server ended while we waited for it.
    #[error("the model server exited ({status}) before {during}")]
    Exited {
        /// What we were waiting for.
        during: String,
        /// How it ended.
        status: String,
    },
    /// A command got no reply within the bound.
    #[error("no reply to {command} within {after:?}")]
    NoReply {
        /// The command.
        command: String,
        /// The bound.
        after: Duration,
    },
    /// A command failed on our side.
    #[error("{command}: {source}")]
    Request {
        /// The command.
        command: String,
        /// What went wrong.
        source: Error,
    },
    /// The reply is not what the protocol says.
    #[error("unexpected reply to {command}: {why}: {body}")]
    BadReply {
        /// The command.
        command: String,
        /// What is wrong with it.
        why: String,
        /// The reply's body.
        body: String,
    },
    /// The model server did not exit after QUIT (it was killed).
    #[error("the model server did not exit within {0:?} of QUIT; killed it")]
    DidNotExit(Duration),
}

fn setup(what: &str, why: impl fmt::Display) -> ModelServerError {
    SetupError::new(what, why.to_string()).into()
}

/// Splits a command line into words: whitespace separates words, single
/// quotes keep everything literally, double quotes keep everything but
/// backslash escapes, and a backslash outside single quotes escapes the
/// next character. No variables, globs or other shell features.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The running model server.
enum Server {
    Child(tokio::process::Child),
    StandIn(JoinHandle<Result<(), String>>),
    External,
}

/// Describes how a model server ended.
struct Ended(Option<String>);

impl Server {
    /// Waits for the server to end; cancel-safe and repeatable.
    async fn wait(&mut self, ended: &mut Ended) -> String {
        if let Some(s) = &ended.0 {
            return s.clone();
        }
        let s = match self {
            Server::Child(c) => match c.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            },
            Server::StandIn(task) => match task.await {
                Ok(Ok(())) => "stand-in finished".into(),
                Ok(Err(e)) => format!("stand-in failed: {e}"),
                Err(e) => format!("stand-in task ended: {e}"),
            },
            Server::External => std::future::pending().await,
        };
        ended.0 = Some(s.clone());
        s
    }
}

/// A manager with its model server running: start it, wait for CONNECTED,
/// send commands, QUIT. Dropping it kills a child process that is still
/// running; [`kill`](Self::kill) does so and waits for it.
pub struct ModelServerManager {
    messenger: Messenger,
    listener: ListenerInfo,
    server: Server,
    ended: Ended,
    describe: String,
    pid: Option<u32>,
    started: Instant,
    connected: mpsc::UnboundedReceiver<ModelServerMessage>,
    connected_seen: Arc<AtomicU64>,
    dir: Option<PathBuf>,
}

impl ModelServerManager {
    /// Binds the ipc listener and starts the model server.
    pub async fn start(
        spec: &ModelServerSpec,
        socket_path: Option<PathBuf>,
    ) -> Result<Self, ModelServerError> {
        let (path, dir) = match socket_path {
            Some(p) => (p, None),
            None => {
                let dir = std::env::temp_dir().join(unique("messenger-msm"));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| setup(&format!("create {}", dir.display()), e))?;
                (dir.join("model.sock"), Some(dir))
            }
        };
        Self::start_on(spec, Endpoint::Ipc(path), dir).await
    }

    /// Listens on `endpoint` (tcp, for a model server on another host; or
    /// ipc) and starts the model server: a command gets the endpoint as
    /// its last argument (`tcp://HOST:PORT` as bound, port 0 resolved; an
    /// ipc socket's path without `ipc://`, as [`start`](Self::start) gives
    /// it).
    pub async fn start_at(
        spec: &ModelServerSpec,
        endpoint: &Endpoint,
    ) -> Result<Self, ModelServerError> {
        Self::start_on(spec, endpoint.clone(), None).await
    }

    async fn start_on(
        spec: &ModelServerSpec,
        endpoint: Endpoint,
        dir: Option<PathBuf>,
    ) -> Result<Self, ModelServerError> {
        let refuse = |why: &str| {
            if let Some(d) = &dir {
                let _ = std::fs::remove_dir_all(d);
            }
            Err(ModelServerError::Options(why.into()))
        };
        match (spec, &endpoint) {
            (ModelServerSpec::Command(args), _) if args.is_empty() => {
                return refuse("the model-server command is empty");
            }
            (ModelServerSpec::StandIn(_), e) if !matches!(e, Endpoint::Ipc(_)) => {
                return refuse("the stand-in model server speaks ipc only");
            }
            (_, Endpoint::Inproc(_)) => return refuse("a model server needs tcp or ipc"),
            _ => {}
        }
        let remove_dir = |dir: &Option<PathBuf>| {
            if let Some(d) = dir {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        // Resending off: the model server never ACKs and does not
        // deduplicate (see the module documentation).
        let config = Config {
            resend_interval: None,
            shutdown_grace: Duration::from_secs(1),
            ..Config::default()
        };
        let messenger = match Messenger::builder()
            .identity(LISTENER_IDENTITY)
            .config(config)
            .build()
        {
            Ok(m) => m,
            Err(e) => {
                remove_dir(&dir);
                return Err(setup("manager messenger", e));
            }
        };
        let (tx, connected) = mpsc::unbounded_channel();
        let connected_seen = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&connected_seen);
        let slc = move |m: Incoming, _r: Responder| match m.decode_json::<ModelServerMessage>() {
            Ok(msg) if msg.action == ACTION_CONNECTED => {
                seen.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(msg);
            }
            Ok(msg) => tracing::warn!(?msg, "model server message nobody asked for"),
            Err(e) => tracing::warn!(error = %e, "undecodable model server message"),
        };
        let listener = match messenger.listen_for_connection(&endpoint, slc).await {
            Ok(l) => l,
            Err(e) => {
                messenger.shutdown().await;
                remove_dir(&dir);
                return Err(setup(&format!("listen on {endpoint}"), e));
            }
        };
        let started = Instant::now();
        let spawned = match (spec, &listener.endpoint) {
            (ModelServerSpec::Command(args), bound) => {
                let target = match bound {
                    Endpoint::Ipc(path) => path.clone().into_os_string(),
                    other => other.to_string().into(),
                };
                spawn_child(args, &target).map(|c| (c.id(), args.join(" "), Server::Child(c)))
            }
            (ModelServerSpec::StandIn(o), Endpoint::Ipc(path)) => {
                let task = tokio::spawn(stand_in(path.clone(), o.clone()));
                Ok((None, "in-process stand-in".into(), Server::StandIn(task)))
            }
            (ModelServerSpec::StandIn(_), _) => unreachable!("refused above"),
            (ModelServerSpec::External, bound) => Ok((
                None,
                format!("a model server started elsewhere, dialling {bound}"),
                Server::External,
            )),
        };
        let (pid, describe, server) = match spawned {
            Ok(s) => s,
            Err(e) => {
                messenger.shutdown().await;
                remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(ModelServerManager {
            messenger,
            listener,
            server,
            ended: Ended(None),
            describe,
            pid,
            started,
            connected,
            connected_seen,
            dir,
        })
    }

    /// The child's process id (none for the stand-in).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The endpoint the manager listens on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.listener.endpoint
    }

    /// CONNECTED messages the server loop has received so far.
    pub fn connected_seen(&self) -> u64 {
        self.connected_seen.load(Ordering::Relaxed)
    }

    /// The manager messenger's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.messenger.stats()
    }

    fn model(&self) -> Destination {
        Destination::Peer {
            listener: self.listener.id,
            peer: Bytes::from_static(MODEL_IDENTITY.as_bytes()),
        }
    }

    /// Waits up to `timeout` for CONNECTED; returns the time since start.
    pub async fn wait_connected(
        &mut self,
        timeout: Duration,
    ) -> Result<Duration, ModelServerError> {
        tokio::select! {
            m = self.connected.recv() => match m {
                Some(_) => Ok(self.started.elapsed()),
                None => Err(setup("wait for CONNECTED", "the listener stopped")),
            },
            status = self.server.wait(&mut self.ended) => Err(ModelServerError::Exited {
                during: "sending CONNECTED".into(),
                status,
            }),
            _ = tokio::time::sleep(timeout) => Err(ModelServerError::NotConnected(timeout)),
        }
    }

    /// Sends PRINT `text` as a request and waits up to `timeout` for the reply.
    pub async fn print(
        &mut self,
        text: &str,
        timeout: Duration,
    ) -> Result<PrintReply, ModelServerError> {
        let command = format!("PRINT {text:?}");
        let body = to_json(&ModelCommand::print(text)).map_err(|e| setup("encode PRINT", e))?;
        let dest = self.model();
        let sent = Instant::now();
        let reply = tokio::select! {
            // A reply that is already there wins over an exit just after it.
            biased;
            r = self.messenger.request_with_timeout(dest, wire::NOOP, &body, timeout) => r,
            status = self.server.wait(&mut self.ended) => {
                return Err(ModelServerError::Exited { during: format!("answering {command}"), status });
            }
        };
        let latency = sent.elapsed();
        let reply = match reply {
            Ok(r) => r,
            // The model server's connection closed: most likely it exited.
            // Say so (with its status) if it did, rather than only that the
            // connection went away.
            Err(Error::Disconnected) => {
                let exit = tokio::time::timeout(
                    Duration::from_millis(500),
                    self.server.wait(&mut self.ended),
                );
                return Err(match exit.await {
                    Ok(status) => ModelServerError::Exited {
                        during: format!("answering {command}"),
                        status,
                    },
                    Err(_) => ModelServerError::Request {
                        command,
                        source: Error::Disconnected,
                    },
                });
            }
            Err(Error::Timeout) => {
                return Err(ModelServerError::NoReply {
                    command,
                    after: timeout,
                });
            }
            Err(source) => return Err(ModelServerError::Request { command, source }),
        };
        let json = String::from_utf8_lossy(&reply.body).into_owned();
        let bad = |why: String| ModelServerError::BadReply {
            command: command.clone(),
            why,
            body: json.clone(),
        };
        let decoded: ModelServerMessage = from_json(&reply.body).map_err(|e| bad(e.to_string()))?;
        if !decoded.success {
            return Err(bad(format!("it reports failure: {}", decoded.err)));
        }
        let expected = format!("MODEL_REPLY_{text}");
        if decoded.result.as_str() != Some(expected.as_str()) {
            return Err(bad(format!("expected result {expected:?}")));
        }
        Ok(PrintReply {
            message: text.to_string(),
            json,
            reply: decoded,
            latency,
        })
    }

    /// Sends QUIT and waits up to `timeout` for the model server to exit;
    /// kills it if it does not.
    pub async fn quit(&mut self, timeout: Duration) -> Result<String, ModelServerError> {
        let body = to_json(&ModelCommand::quit()).map_err(|e| setup("encode QUIT", e))?;
        let dest = self.model();
        let send = self.messenger.send_message(dest, wire::NOOP, &body, None);
        match tokio::time::timeout(timeout, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return Err(ModelServerError::Request {
                    command: "QUIT".into(),
                    source,
                });
            }
            Err(_) => {
                return Err(ModelServerError::Request {
                    command: "QUIT".into(),
                    source: Error::Timeout,
                });
            }
        }
        if let Server::External = self.server {
            return Ok("QUIT sent; it runs elsewhere, its exit is not watched".into());
        }
        match tokio::time::timeout(timeout, self.server.wait(&mut self.ended)).await {
            Ok(status) => Ok(status),
            Err(_) => {
                self.kill().await;
                Err(ModelServerError::DidNotExit(timeout))
            }
        }
    }

    /// Kills the model server (if it still runs) and waits up to 2 s for it.
    pub async fn kill(&mut self) {
        if self.ended.0.is_some() {
            return;
        }
        match &mut self.server {
            Server::Child(c) => {
                let _ = c.start_kill();
            }
            Server::StandIn(t) => t.abort(),
            Server::External => return,
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.server.wait(&mut self.ended)).await;
    }

    /// Kills the model server if it still runs, shuts the messenger down and
    /// removes the socket's temporary directory.
    pub async fn shutdown(mut self) {
        self.kill().await;
        self.messenger.shutdown().await;
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Drop for ModelServerManager {
    fn drop(&mut self) {
        if let Server::StandIn(t) = &self.server {
            t.abort();
        }
        // A child is killed by kill_on_drop.
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn spawn_child(
    args: &[String],
    target: &std::ffi::OsStr,
) -> Result<tokio::process::Child, ModelServerError> {
    let mut cmd = tokio::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .arg(target)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // The child's stdout goes to our stderr: our stdout is for results.
    if let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
        cmd.stdout(Stdio::from(fd));
    }
    cmd.spawn().map_err(|source| ModelServerError::Spawn {
        command: args[0].clone(),
        source,
    })
}

/// Runs the whole loop: start the model server, wait for CONNECTED, PRINT
/// each message, QUIT, wait for the exit. On any failure the model server
/// is killed before the error is returned. `on_start` is called once the
/// model server has been started (with its pid, for a child process).
pub async fn run(
    opts: ManagerOptions,
    on_start: impl FnOnce(Option<u32>),
) -> Result<ManagerReport, ModelServerError> {
    let mut m = match &opts.endpoint {
        Some(endpoint) => ModelServerManager::start_at(&opts.server, endpoint).await?,
        None => ModelServerManager::start(&opts.server, opts.socket_path.clone()).await?,
    };
    on_start(m.pid());
    let result = drive(&opts, &mut m).await;
    m.shutdown().await;
    result
}

async fn drive(
    opts: &ManagerOptions,
    m: &mut ModelServerManager,
) -> Result<ManagerReport, ModelServerError> {
    let connected_after = m.wait_connected(opts.connect_timeout).await?;
    let mut replies = Vec::with_capacity(opts.messages.len());
    let first = Instant::now();
    for text in &opts.messages {
        replies.push(m.print(text, opts.reply_timeout).await?);
    }
    let print_elapsed = first.elapsed();
    let exit = m.quit(opts.exit_timeout).await?;
    let stats = m.stats();
    Ok(ManagerReport {
        endpoint: m.endpoint().clone(),
        server: m.describe.clone(),
        pid: m.pid(),
        connected_after,
        connected_seen: m.connected_seen(),
        duplicates_suppressed: stats.duplicates_dropped,
        print_latency: Latency::from_samples(replies.iter().map(|r| r.latency).collect()),
        replies,
        print_elapsed,
        exit,
        stats,
    })
}

/// A bare ZMTP DEALER on our own engine, for the stand-in: it sends and
/// receives raw frames and keeps none of the messenger's rules.
struct RawDealer {
    stream: tokio::net::UnixStream,
    engine: zmtp::Engine,
    encoder: zmtp::Encoder,
    rbuf: bytes::BytesMut,
}

impl RawDealer {
    async fn connect(path: &Path, identity: &'static [u8]) -> Result<Self, String> {
        use zmtp::{Engine, EngineConfig, Event, Limits, Role, SocketType};
        let mut stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        let config = EngineConfig {
            role: Role::Client,
            socket_type: SocketType::Dealer,
            identity: Bytes::from_static(identity),
            properties: Vec::new(),
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(5),
            heartbeat: None,
            pace: None,
            mechanism: zmtp::MechanismConfig::Null,
        };
        let mut engine = Engine::new(config, std::time::Instant::now());
        let mut rbuf = bytes::BytesMut::new();
        while !engine.is_ready() {
            let decoded = engine.decode(&mut rbuf, std::time::Instant::now());
            // What decoding queued (our greeting, our READY) goes out first.
            let out = engine.transmit().split();
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            match decoded {
                Ok(Some(Event::PeerReady(_))) => engine.accept(std::time::Instant::now()),
                Ok(_) => {
                    if stream
                        .read_buf(&mut rbuf)
                        .await
                        .map_err(|e| e.to_string())?
                        == 0
                    {
                        return Err("closed during the handshake".into());
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let encoder = engine
            .take_encoder()
            .ok_or("no encoder after the handshake")?;
        Ok(RawDealer {
            stream,
            engine,
            encoder,
            rbuf,
        })
    }

    async fn send(&mut self, payload: &Bytes) -> Result<(), String> {
        let mut buf = bytes::BytesMut::new();
        self.encoder.message(&mut buf, &[b"", payload]);
        tokio::time::timeout(Duration::from_secs(5), self.stream.write_all(&buf))
            .await
            .map_err(|_| "send timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    /// The next message's frames. Cancel-safe: what was read stays in
    /// `rbuf`.
    async fn recv(&mut self) -> Result<Vec<Bytes>, String> {
        use zmtp::Event;
        loop {
            match self
                .engine
                .decode(&mut self.rbuf, std::time::Instant::now())
            {
                Ok(Some(Event::Message)) => return Ok(std::mem::take(self.engine.frames())),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            while let Some(cmd) = self.engine.poll_command() {
                let mut buf = bytes::BytesMut::new();
                self.encoder.command(&mut buf, &cmd);
                self.stream
                    .write_all(&buf)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("the connection closed".into());
            }
        }
    }
}

/// The in-process stand-in model server: a bare ZMTP DEALER with identity
/// `model` that follows the Python model server's rules.
async fn stand_in(path: PathBuf, opts: StandInOptions) -> Result<(), String> {
    let give_up = Instant::now() + opts.max_lifetime;
    let mut dealer = tokio::time::timeout(
        Duration::from_secs(5),
        RawDealer::connect(&path, MODEL_IDENTITY.as_bytes()),
    )
    .await
    .map_err(|_| format!("connecting to {} timed out", path.display()))??;

    let mut next_id = 0u64;
    // msg_id -> (payload, last sent)
    let mut unacked: BTreeMap<u64, (Bytes, Instant)> = BTreeMap::new();
    let connected = to_json(&ModelServerMessage::connected()).map_err(|e| e.to_string())?;
    let payload = wire::encode(next_id, wire::NOOP, wire::NOOP, &connected);
    unacked.insert(next_id, (payload.clone(), Instant::now()));
    next_id += 1;
    for _ in 0..=opts.extra_connected_copies {
        dealer.send(&payload).await?;
    }
    let mut ticker = tokio::time::interval(opts.poll_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frames = tokio::select! {
            f = dealer.recv() => f?,
            _ = ticker.tick() => {
                let now = Instant::now();
                let due: Vec<Bytes> = unacked
                    .values_mut()
                    .filter(|(_, last)| now.duration_since(*last) >= opts.poll_interval)
                    .map(|(payload, last)| {
                        *last = now;
                        payload.clone()
                    })
                    .collect();
                for payload in &due {
                    dealer.send(payload).await?;
                }
                continue;
            }
            _ = tokio::time::sleep_until(give_up) => return Err("lived too long".into()),
        };
        // [router_identity, "", payload]; only the payload matters here.
        let Some(raw) = frames.last() else { continue };
        let Ok(p) = wire::parse(raw) else { continue };
        if p.dst_cb == wire::ACK {
            unacked.remove(&p.msg_id);
            continue;
        }
        let Ok(cmd) = from_json::<ModelCommand>(&p.body) else {
            continue;
        };
        match cmd.cmd.as_str() {
            "QUIT" => return Ok(()),
            "PRINT" if opts.die_before_reply => return Err("died before replying".into()),
            "PRINT" => {
                let text = cmd
                    .data
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default();
                let reply = ModelServerMessage {
                    action: ACTION_NOOP,
                    result: serde_json::Value::String(format!("MODEL_REPLY_{text}")),
                    success: true,
                    err: String::new(),
                };
                let body = to_json(&reply).map_err(|e| e.to_string())?;
                let payload = wire::encode(next_id, wire::NOOP, p.src_cb, &body);
                unacked.insert(next_id, (payload.clone(), Instant::now()));
                next_id += 1;
                dealer.send(&payload).await?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(
            split_command("  python3 'my dir/ms.py'  --x \"a \\\"b\\\"\" c\\ d ").unwrap(),
            ["python3", "my dir/ms.py", "--x", "a \"b\"", "c d"]
        );
        assert_eq!(split_command("").unwrap(), Vec::<String>::new());
        assert_eq!(split_command("''").unwrap(), [""]);
        assert!(split_command("'open").is_err());
        assert!(split_command("x\\").is_err());
    }

    #[test]
    fn json_shapes_match_the_python_model_server() {
        let c = serde_json::to_value(ModelServerMessage::connected()).unwrap();
        assert_eq!(
            c,
            serde_json::json!({"action": 1, "result": "", "success": true, "err": ""})
        );
        let p = serde_json::to_value(ModelCommand::print("hi")).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"cmd": "PRINT", "data": {"message": "hi"}})
        );
        let q = serde_json::to_value(ModelCommand::quit()).unwrap();
        assert_eq!(q, serde_json::json!({"cmd": "QUIT", "data": {}}));
    }
}
