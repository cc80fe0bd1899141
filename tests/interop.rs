//! Interop with real libzmq peers: pyzmq scripts (tests/py/peer.py) against
//! `messenger serve`, and the `messenger` CLI against a pyzmq ROUTER.
//!
//! The Python environment is set up by the tests themselves
//! (tests/common/python.rs): a venv at `target/pyenv` with pyzmq and
//! msgpack, created on first use and reused after. Without python3 (or when
//! pip fails) the tests print `SKIPPED: ...` and pass, unless `CI` is set,
//! in which case they fail. Set `MESSENGER_TEST_PYTHON` to an interpreter
//! that already has pyzmq and msgpack to skip the venv (e.g. offline).
//!
//! Every wait is bounded and every child process is killed when its guard
//! drops, so a hung peer fails a test instead of hanging it.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::python::python;
use serde_json::{Value, json};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_messenger");

/// Bound on one scripted Python scenario, start to exit.
const PEER_LIMIT: Duration = Duration::from_secs(30);
/// Bound on a process reaching a point it should reach at once.
const SHORT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Child processes

/// A child process with its stdout read line by line and its stderr kept;
/// killed when dropped.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line taken so far.
    seen: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        // Keep the children's logs readable in failure messages.
        cmd.env("NO_COLOR", "1");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]),
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        let bytes = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Describes the process for a failure message.
    fn context(&self) -> String {
        format!(
            "{}: stdout so far:\n{}\nstderr:\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr()
        )
    }

    /// The next stdout line, or `None` after `limit` or at end of output.
    fn line(&mut self, limit: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(limit).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// The next stdout line as JSON; panics after `limit`.
    fn json(&mut self, limit: Duration, what: &str) -> Value {
        let Some(line) = self.line(limit) else {
            panic!("{what}: nothing within {limit:?}; {}", self.context());
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line}; {}", self.context()))
    }

    /// Reads JSON lines until one satisfies `pred`; panics after `limit`.
    fn json_until(&mut self, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.json(left, what);
            if pred(&v) {
                return v;
            }
        }
    }

    /// Waits up to `limit` for the process to exit; kills it and returns
    /// `None` if it does not.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        common::wait_child(&mut self.child, limit)
            .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.name))
    }

    /// Takes the remaining stdout lines once the process has exited; returns
    /// every line of the run.
    fn drain_lines(&mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("stdout of {} still open; {}", self.name, self.context())
                }
            }
        }
        self.seen.clone()
    }

    /// Closes stdin, waits for the exit (bounded) and returns the status and
    /// every stdout line.
    fn finish(&mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        self.stdin.take();
        let Some(status) = self.wait_exit(limit) else {
            panic!(
                "{} did not exit within {limit:?}; {}",
                self.name,
                self.context()
            );
        };
        (status, self.drain_lines(SHORT))
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

// ---------------------------------------------------------------------------
// `messenger serve`

/// A `messenger serve` on a fresh tcp port and a fresh ipc path.
struct Serve {
    proc: Proc,
    tcp: String,
    ipc: String,
    ipc_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(slc: &str, identity: &str) -> Serve {
        Serve::start_with(slc, identity, |_| {})
    }

    /// Like `start`, with more flags or environment from `extra`.
    fn start_with(slc: &str, identity: &str, extra: impl FnOnce(&mut Command)) -> Serve {
        let dir = tempfile::tempdir().expect("temp dir");
        let ipc_path = dir.path().join("serve.sock");
        let ipc_bind = format!("ipc://{}", ipc_path.display());
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--bind", "tcp://127.0.0.1:0", "--bind", &ipc_bind])
            .args(["--identity", identity, "--slc", slc])
            .stdin(Stdio::null());
        extra(&mut cmd);
        let mut proc = Proc::spawn("messenger serve", cmd);
        let mut listening = |what| {
            let v = proc.json(SHORT, what);
            v["listening"]
                .as_str()
                .unwrap_or_else(|| panic!("expected {{\"listening\": ...}}, got {v}"))
                .to_string()
        };
        let tcp = listening("tcp listening line");
        let ipc = listening("ipc listening line");
        assert!(
            tcp.starts_with("tcp://127.0.0.1:") && !tcp.ends_with(":0"),
            "port 0 not resolved: {tcp}"
        );
        assert_eq!(ipc, ipc_bind);
        Serve {
            proc,
            tcp,
            ipc,
            ipc_path,
            _dir: dir,
        }
    }

    /// A Python DEALER (`identity`) running `scenario` with `args` against
    /// its tcp endpoint; its result, checked to be a success.
    fn tcp_dealer(&self, py: &Path, scenario: &str, identity: &str, args: &[&str]) -> Value {
        dealer(py, &self.tcp, scenario, identity, args)
    }

    /// Waits for the server-loop line with `body` from `peer`.
    fn wait_for(&mut self, peer: &str, body: &str) -> Value {
        self.proc.json_until(SHORT, "server-loop line", |v| {
            v["peer"] == peer && v["body"] == body
        })
    }

    /// Stops it with `signal`, checks it exits 0 and removes its ipc file,
    /// and returns every server-loop line it printed.
    fn stop_with(mut self, signal: &str) -> Vec<Value> {
        self.proc.signal(signal);
        let (status, lines) = self.proc.finish(SHORT);
        assert!(
            status.success(),
            "serve exited with {status} on SIG{signal}; {}",
            self.proc.context()
        );
        assert!(
            !self.ipc_path.exists(),
            "serve left its ipc socket file {} behind",
            self.ipc_path.display()
        );
        let all = parse_lines(&lines);
        assert_eq!(
            all.iter().filter(|v| v.get("listening").is_some()).count(),
            2
        );
        all.into_iter()
            .filter(|v| v.get("listening").is_none())
            .collect()
    }

    fn stop(self) -> Vec<Value> {
        self.stop_with("TERM")
    }

    /// Like `stop`, with the counters it printed as it shut down.
    fn stop_with_stats(mut self) -> (Vec<Value>, Value) {
        self.proc.signal("TERM");
        let (status, lines) = self.proc.finish(SHORT);
        assert!(status.success(), "serve exited with {status}");
        let stderr = self.proc.stderr();
        let stats = stderr
            .lines()
            .find_map(|l| l.split_once("shut down; ").map(|(_, s)| s.to_string()))
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| panic!("no final counters in: {stderr}"));
        let lines = parse_lines(&lines)
            .into_iter()
            .filter(|v| v.get("listening").is_none())
            .collect();
        (lines, stats)
    }
}

/// Python and a `messenger serve` ("messenger-serve") with server loop
/// `slc`; `None` (the test is skipped) without Python.
fn python_and_serve(slc: &str) -> Option<(PathBuf, Serve)> {
    let py = python()?;
    Some((py, Serve::start(slc, "messenger-serve")))
}

/// The server-loop lines of one peer.
fn from_peer<'a>(lines: &'a [Value], peer: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["peer"] == peer).collect()
}

// ---------------------------------------------------------------------------
// Python peers

fn script(name: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(name)
}

/// Starts tests/py/peer.py as a DEALER running `scenario`.
fn spawn_dealer(py: &Path, endpoint: &str, scenario: &str, identity: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(py);
    cmd.arg(script("tests/py/peer.py"))
        .args([
            "dealer",
            endpoint,
            "--scenario",
            scenario,
            "--identity",
            identity,
        ])
        .args(args)
        .stdin(Stdio::null());
    Proc::spawn(&format!("peer.py {scenario} ({identity})"), cmd)
}

/// Waits for a dealer's result and checks it succeeded.
fn dealer_result(mut p: Proc) -> Value {
    let (status, lines) = p.finish(PEER_LIMIT);
    let last = lines.last().map(String::as_str).unwrap_or("");
    let v: Value = serde_json::from_str(last).unwrap_or(Value::Null);
    assert!(
        status.success() && v["ok"] == true,
        "{} failed ({status}): {v}; {}",
        p.name,
        p.context()
    );
    v
}

fn dealer(py: &Path, endpoint: &str, scenario: &str, identity: &str, args: &[&str]) -> Value {
    dealer_result(spawn_dealer(py, endpoint, scenario, identity, args))
}

/// tests/py/peer.py as a protocol-speaking ROUTER.
struct PyRouter {
    proc: Proc,
    endpoint: String,
}

impl PyRouter {
    fn start(py: &Path, args: &[&str]) -> PyRouter {
        let mut cmd = Command::new(py);
        cmd.arg(script("tests/py/peer.py"))
            .args(["router", "--identity", "py-router", "--lifetime", "60"])
            .args(args)
            .stdin(Stdio::piped());
        let mut proc = Proc::spawn("peer.py router", cmd);
        let v = proc.json(SHORT, "listening line");
        let endpoint = v["listening"]
            .as_str()
            .unwrap_or_else(|| panic!("expected {{\"listening\": ...}}, got {v}"))
            .to_string();
        PyRouter { proc, endpoint }
    }

    /// Waits for a received-message event matching `pred`.
    fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.proc.json_until(SHORT, what, pred)
    }

    /// Stops it (closing its stdin) and returns every event it printed.
    fn stop(mut self) -> Vec<Value> {
        let (status, lines) = self.proc.finish(SHORT);
        assert!(
            status.success(),
            "router: {status}; {}",
            self.proc.context()
        );
        let events = parse_lines(&lines);
        assert!(
            events.last().is_some_and(|v| v["reason"] == "stdin closed"),
            "router did not stop cleanly; {}",
            self.proc.context()
        );
        events
    }
}

/// Runs the messenger CLI; returns its status, stdout and stderr.
fn cli(args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    let mut p = Proc::spawn(&format!("messenger {}", args.join(" ")), cmd);
    let (status, lines) = p.finish(limit);
    (status, lines.join("\n"), p.stderr())
}

/// `messenger VERB ENDPOINT BODY --identity IDENTITY` with `flags`, within
/// `SHORT`; its status, stdout and stderr.
fn cli_as(
    verb: &str,
    endpoint: &str,
    body: &str,
    identity: &str,
    flags: &[&str],
) -> (ExitStatus, String, String) {
    let args = [verb, endpoint, body, "--identity", identity];
    cli(&[&args[..], flags].concat(), SHORT)
}

fn seconds(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

// ---------------------------------------------------------------------------
// A Python DEALER against `messenger serve`

/// pyzmq DEALERs get `serve`'s ACK and ECHO reply (msg_id 0 each, to their
/// callback) over tcp and ipc, and no resend after their ACK.
#[test]
fn python_echo_over_tcp_and_ipc() {
    let Some(py) = python() else { return };
    let serve = Serve::start("log", "interop-serve");
    let ident = ["--expect-router-identity", "interop-serve"];
    // Listening on after its ACK shows the reply is not resent.
    let tcp = spawn_dealer(
        &py,
        &serve.tcp,
        "echo",
        "py-echo-tcp",
        &[&ident[..], &["--body", "hello over tcp", "--quiet", "1.5"]].concat(),
    );
    let ipc = spawn_dealer(
        &py,
        &serve.ipc,
        "echo",
        "py-echo-ipc",
        &[&ident[..], &["--binary", "--src-cb", "12"]].concat(),
    );
    let tcp = dealer_result(tcp);
    let ipc = dealer_result(ipc);
    for (r, src_cb) in [(&tcp, 7), (&ipc, 12)] {
        assert_eq!(r["sent_msg_id"], 0, "{r}");
        assert_eq!(r["ack"]["msg_id"], 0, "{r}");
        assert_eq!(r["ack"]["src_cb"], 0, "{r}");
        // The first message the serve sends this peer: msg_id 0.
        assert_eq!(r["reply"]["msg_id"], 0, "{r}");
        assert_eq!(r["reply"]["src_cb"], 0, "{r}");
        assert_eq!(r["reply"]["dst_cb"], src_cb, "{r}");
    }
    assert_eq!(tcp["reply"]["body"], "hello over tcp");
    assert_eq!(tcp["after"], json!([]), "reply resent after its ACK");
    assert_eq!(ipc["body_len"], 1024);
    let lines = serve.stop();
    assert!(lines.is_empty(), "ECHO reached the server loop: {lines:?}");
}

/// A pyzmq DEALER's messages reach `serve`'s server loop once each, in
/// order, with their msg_ids, bodies and endpoint.
#[test]
fn python_messages_reach_the_server_loop_once_each() {
    let Some((py, serve)) = python_and_serve("log") else {
        return;
    };
    let bodies = ["first", "a-b-c", "1-2-3-", "", "héllo wörld ✓"];
    let mut args = vec!["--quiet", "0.3", "--bodies"];
    args.extend(bodies);
    let tcp = spawn_dealer(&py, &serve.tcp, "slc", "py-slc-tcp", &args);
    let ipc = spawn_dealer(
        &py,
        &serve.ipc,
        "slc",
        "py-slc-ipc",
        &["--bodies", "over ipc"],
    );
    let tcp = dealer_result(tcp);
    dealer_result(ipc);
    assert_eq!(tcp["sent_msg_ids"], json!([0, 1, 2, 3, 4]));
    // With --slc log only ACKs come back.
    assert_eq!(tcp["after"], json!([]), "{tcp}");
    let (tcp_ep, ipc_ep) = (serve.tcp.clone(), serve.ipc.clone());
    let lines = serve.stop();
    let got = from_peer(&lines, "py-slc-tcp");
    assert_eq!(got.len(), bodies.len(), "{lines:?}");
    for (i, (v, body)) in got.iter().zip(bodies).enumerate() {
        assert_eq!(v["msg_id"], i, "{v}");
        assert_eq!(v["body"], body, "{v}");
        assert_eq!(v["src_cb"], 0, "{v}");
        assert_eq!(v["dst_cb"], 0, "{v}");
        assert_eq!(v["endpoint"], tcp_ep.as_str(), "{v}");
    }
    let got = from_peer(&lines, "py-slc-ipc");
    assert_eq!(got.len(), 1, "{lines:?}");
    assert_eq!(got[0]["body"], "over ipc");
    assert_eq!(got[0]["endpoint"], ipc_ep.as_str());
    assert_eq!(lines.len(), bodies.len() + 1, "{lines:?}");
}

/// `serve --slc echo` answers a pyzmq DEALER's message to the server loop
/// at the sender's callback.
#[test]
fn slc_echo_replies_to_the_senders_callback() {
    let Some((py, serve)) = python_and_serve("echo") else {
        return;
    };
    let r = serve.tcp_dealer(
        &py,
        "slc-reply",
        "py-slc-reply",
        &[
            "--src-cb",
            "7",
            "--body",
            "to the server loop",
            "--expect-router-identity",
            "messenger-serve",
        ],
    );
    assert_eq!(r["ack"]["msg_id"], 0, "{r}");
    assert_eq!(
        (
            &r["reply"]["msg_id"],
            &r["reply"]["src_cb"],
            &r["reply"]["dst_cb"]
        ),
        (&json!(0), &json!(0), &json!(7)),
        "{r}"
    );
    assert_eq!(r["reply"]["body"], "to the server loop");
    let lines = serve.stop();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    assert_eq!(v["peer"], "py-slc-reply");
    assert_eq!(v["src_cb"], 7);
    assert_eq!(v["dst_cb"], 0);
    assert_eq!(v["msg_id"], 0);
    assert_eq!(v["body"], "to the server loop");
}

/// A pyzmq DEALER's duplicate is ACKed again but delivered once.
#[test]
fn duplicate_is_acked_again_but_delivered_once() {
    let Some((py, serve)) = python_and_serve("log") else {
        return;
    };
    let r = serve.tcp_dealer(&py, "duplicate", "py-dup", &["--body", "only once"]);
    assert_eq!(r["acks_of_dup"], 2, "{r}");
    let lines = serve.stop();
    let got = from_peer(&lines, "py-dup");
    let seen: Vec<_> = got.iter().map(|v| (&v["msg_id"], &v["body"])).collect();
    assert_eq!(
        seen,
        [
            (&json!(0), &json!("only once")),
            (&json!(1), &json!("barrier"))
        ],
        "{lines:?}"
    );
}

/// Replies (ECHO and server loop) a pyzmq DEALER leaves unACKed are resent
/// after about the resend interval, and not after its ACK.
#[test]
fn unacked_replies_are_resent_until_acked() {
    let Some((py, serve)) = python_and_serve("echo") else {
        return;
    };
    // The ECHO reply and a server-loop reply, both left unACKed for a while.
    let quiet = ["--quiet", "1.6", "--body", "resend me"];
    let echo = spawn_dealer(
        &py,
        &serve.tcp,
        "resend",
        "py-resend-echo",
        &[&quiet[..], &["--dst", "1"]].concat(),
    );
    let slc = spawn_dealer(
        &py,
        &serve.ipc,
        "resend",
        "py-resend-slc",
        &[&quiet[..], &["--dst", "0"]].concat(),
    );
    for r in [dealer_result(echo), dealer_result(slc)] {
        assert_eq!(r["resent"]["msg_id"], r["reply"]["msg_id"], "{r}");
        assert_eq!(r["resent"]["body"], "resend me", "{r}");
        let after = seconds(&r["resend_after"]);
        assert!(
            (0.7..=2.6).contains(&after),
            "resent after {after}s, expected about 1s: {r}"
        );
        assert_eq!(r["copies_after_ack"], 0, "resent after its ACK: {r}");
    }
    let lines = serve.stop();
    assert_eq!(from_peer(&lines, "py-resend-slc").len(), 1, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
}

/// 300 ECHOs in flight at once from a pyzmq DEALER are all answered.
#[test]
fn burst_of_echoes_in_flight() {
    let Some((py, serve)) = python_and_serve("log") else {
        return;
    };
    let r = serve.tcp_dealer(
        &py,
        "burst",
        "py-burst",
        &["--count", "300", "--timeout", "10"],
    );
    let want: Vec<u64> = (0..300).collect();
    assert_eq!(r["reply_ids"], json!(want));
    assert!(serve.stop().is_empty());
}

/// Malformed input from a pyzmq DEALER is dropped unACKed, the valid
/// message is delivered, and SIGINT stops `serve` cleanly.
#[test]
fn malformed_input_is_dropped_and_sigint_stops_serve() {
    let Some((py, serve)) = python_and_serve("log") else {
        return;
    };
    let r = serve.tcp_dealer(&py, "malformed", "py-bad", &["--body", "still fine"]);
    // Only the valid message was ACKed.
    assert_eq!(r["acked_ids"], json!([0]), "{r}");
    let lines = serve.stop_with("INT");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["body"], "still fine");
    assert_eq!(lines[0]["msg_id"], 0);
}

/// A pyzmq peer that reconnects with the same identity and msg_id 0 starts
/// a new session: each run's message is delivered.
#[test]
fn restarted_peer_starts_a_new_session() {
    let Some((py, mut serve)) = python_and_serve("log") else {
        return;
    };
    // The same identity reconnects and counts from msg_id 0 again: each
    // session's message is new, not a duplicate of the last one.
    for i in 0..3 {
        let body = format!("session {i}");
        serve.tcp_dealer(&py, "slc", "py-restart", &["--body", &body]);
        serve.wait_for("py-restart", &body);
    }
    let lines = serve.stop();
    let got: Vec<_> = from_peer(&lines, "py-restart")
        .iter()
        .map(|v| (v["msg_id"].clone(), v["body"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!(0), json!("session 0")),
            (json!(0), json!("session 1")),
            (json!(0), json!("session 2"))
        ]
    );
}

// ---------------------------------------------------------------------------
// The library in this process against a Python peer, with MessagePack bodies

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct Batch {
    term: u64,
    first_lsn: u64,
    records: Vec<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Applied {
    term: u64,
    count: usize,
    joined: String,
}

/// MessagePack bodies typed on our side and written by Python decode both
/// ways (u64::MAX and non-ASCII included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_bodies_interoperate_with_python() {
    let Some(py) = python() else { return };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = messenger::Messenger::builder()
        .identity("rust-lib")
        .build()
        .expect("messenger");
    let sink = Arc::clone(&seen);
    let slc = move |m: messenger::Incoming, r: messenger::Responder| match m.decode::<Batch>() {
        Ok(b) => {
            let reply = Applied {
                term: b.term,
                count: b.records.len(),
                joined: b.records.join(","),
            };
            sink.lock().unwrap().push(b);
            r.try_reply_typed(&reply).expect("reply");
        }
        // Answer anyway, so the failure shows in the peer's result.
        Err(e) => {
            let _ = r.try_reply(format!("not a Batch: {e}"));
        }
    };
    let bound = server
        .listen_for_connection(&"tcp://127.0.0.1:0".parse().unwrap(), slc)
        .await
        .expect("listen");
    let endpoint = bound.endpoint.to_string();
    let batch = r#"{"term": 3, "first_lsn": 18446744073709551615, "records": ["a-1", "b-2", "ü"]}"#;
    let r = tokio::task::spawn_blocking(move || {
        dealer(
            &py,
            &endpoint,
            "msgpack",
            "py-msgpack",
            &["--dst", "0", "--body", batch],
        )
    })
    .await
    .expect("peer thread");
    assert_eq!(
        r["reply_value"],
        json!({"term": 3, "count": 3, "joined": "a-1,b-2,ü"}),
        "{r}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [Batch {
            term: 3,
            first_lsn: u64::MAX,
            records: vec!["a-1".into(), "b-2".into(), "ü".into()],
        }]
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// The messenger CLI (a Rust DEALER) against a Python ROUTER

/// `messenger request` to callback 1 gets a pyzmq ROUTER's ECHO over tcp
/// and ipc; the router sees our framing and msg_id 0.
#[test]
fn cli_request_echo_to_python_router_over_tcp_and_ipc() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let ipc = format!("ipc://{}", dir.path().join("router.sock").display());
    for bind in ["tcp://127.0.0.1:*", ipc.as_str()] {
        let mut router = PyRouter::start(&py, &["--bind", bind]);
        let ep = router.endpoint.clone();
        let callback = ["--callback", "1"];
        let (status, out, err) = cli_as("request", &ep, "hello router", "rq-echo", &callback);
        assert!(status.success(), "{ep}: {status}: {err}");
        assert_eq!(out, "hello router", "{ep}");
        let ev = router.wait_event("the ECHO", |v| v["kind"] == "echo");
        assert_eq!(ev["frames"], 3, "{ev}");
        assert_eq!(ev["peer"], "rq-echo", "{ev}");
        assert_eq!(ev["msg_id"], 0, "{ev}");
        assert_eq!(ev["body"], "hello router", "{ev}");
        assert!(ev["src_cb"].as_u64().is_some_and(|cb| cb >= 4), "{ev}");
        router.stop();
    }
}

/// `messenger request` to a pyzmq ROUTER's server loop gets its reply.
#[test]
fn cli_request_to_python_server_loop() {
    let Some(py) = python() else { return };
    let mut router = PyRouter::start(&py, &[]);
    let (status, out, err) = cli_as("request", &router.endpoint, "work", "rq-slc", &[]);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, "py:work");
    let ev = router.wait_event("the request", |v| v["kind"] == "slc");
    assert_eq!((&ev["peer"], &ev["dst_cb"]), (&json!("rq-slc"), &json!(0)));
    router.stop();
}

/// `messenger request` accepts replies without the router's identity
/// frame (two frames).
#[test]
fn cli_dealer_accepts_replies_without_router_identity() {
    let Some(py) = python() else { return };
    let router = PyRouter::start(&py, &["--two-frame-replies"]);
    let callback = ["--callback", "1"];
    let (status, out, err) = cli_as(
        "request",
        &router.endpoint,
        "two frames",
        "rq-two",
        &callback,
    );
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, "two frames");
    router.stop();
}

/// `messenger send` succeeds once a pyzmq ROUTER ACKs, and delivers once.
#[test]
fn cli_send_succeeds_once_python_acks() {
    let Some(py) = python() else { return };
    let router = PyRouter::start(&py, &["--no-reply"]);
    let callback = ["--callback", "0"];
    let (status, _, err) = cli_as("send", &router.endpoint, "confirmed", "snd-ok", &callback);
    assert!(status.success(), "{status}: {err}");
    let events = router.stop();
    let got: Vec<_> = events.iter().filter(|v| v["peer"] == "snd-ok").collect();
    assert_eq!(got.len(), 1, "{events:?}");
    assert_eq!(got[0]["kind"], "slc");
    assert_eq!(got[0]["body"], "confirmed");
    assert_eq!(got[0]["frames"], 3);
}

/// `messenger send` to a ROUTER that never ACKs resends (same msg_id,
/// about a second apart) and fails with "no ACK" at its timeout.
#[test]
fn cli_send_resends_then_fails_without_ack() {
    let Some(py) = python() else { return };
    let router = PyRouter::start(&py, &["--no-ack"]);
    let start = Instant::now();
    let timeout = ["--timeout", "2500ms"];
    let (status, _, err) = cli_as(
        "send",
        &router.endpoint,
        "never acked",
        "snd-noack",
        &timeout,
    );
    let took = start.elapsed();
    let events = router.stop();
    assert_eq!(status.code(), Some(1), "{err}\nrouter saw: {events:?}");
    assert!(err.contains("no ACK"), "unclear error: {err}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let copies: Vec<_> = events
        .iter()
        .filter(|v| v["peer"] == "snd-noack" && v["body"] == "never acked")
        .collect();
    assert!(copies.len() >= 2, "not resent: {events:?}");
    assert!(copies.iter().all(|v| v["msg_id"] == 0), "{copies:?}");
    assert_eq!(copies[0]["kind"], "slc");
    assert_eq!(copies[1]["kind"], "duplicate");
    let gap = seconds(&copies[1]["t"]) - seconds(&copies[0]["t"]);
    assert!(
        (0.7..=2.4).contains(&gap),
        "resent after {gap}s: {copies:?}"
    );
}

/// `messenger ping` gets three ECHOs answered by a pyzmq ROUTER.
#[test]
fn cli_ping_python_router() {
    let Some(py) = python() else { return };
    let router = PyRouter::start(&py, &[]);
    let (status, out, err) = cli(&["ping", &router.endpoint, "-c", "3", "-i", "20ms"], SHORT);
    assert!(status.success(), "{status}: {out}\n{err}");
    assert!(out.contains("3 sent, 3 received"), "{out}");
    let events = router.stop();
    assert_eq!(
        events.iter().filter(|v| v["kind"] == "echo").count(),
        3,
        "{events:?}"
    );
}

/// `messenger request` must ACK the reply before it exits, or the peer
/// resends it to a process that is gone.
#[test]
fn cli_request_acks_the_reply_before_exiting() {
    let Some(py) = python() else { return };
    let mut router = PyRouter::start(&py, &[]);
    let ep = router.endpoint.clone();
    for i in 0..10 {
        let id = format!("rq-ack-{i}");
        let (status, _, err) = cli_as("request", &ep, "x", &id, &["--callback", "1"]);
        assert!(status.success(), "{err}");
    }
    for i in 0..10 {
        let id = format!("rq-ack-{i}");
        router.wait_event(&format!("ACK of {id}'s reply"), |v| {
            v["peer"] == id.as_str() && v["kind"] == "ack"
        });
    }
    router.stop();
}

// ---------------------------------------------------------------------------
// The example for users

/// examples/python_peer.py runs against `serve` as its users would run it.
#[test]
fn example_python_peer_runs_against_serve() {
    let Some((py, serve)) = python_and_serve("echo") else {
        return;
    };
    let mut cmd = Command::new(&py);
    cmd.arg(script("examples/python_peer.py"))
        .arg(&serve.tcp)
        .stdin(Stdio::null());
    let mut p = Proc::spawn("examples/python_peer.py", cmd);
    let (status, out) = p.finish(PEER_LIMIT);
    assert!(status.success(), "{status}; {}", p.context());
    assert!(
        out.iter().any(|l| l.contains("hello, messenger")),
        "{out:?}"
    );
    let lines = serve.stop();
    let got = from_peer(&lines, "python-example");
    assert_eq!(got.len(), 1, "{lines:?}");
    assert_eq!(got[0]["body"], "work item 1");
}

// ---------------------------------------------------------------------------
// Authentication from Python (examples/python_auth.py)

/// `serve` requiring the secret `secret`, read from MESSENGER_SECRET.
fn serve_with_secret(secret: &str) -> Serve {
    Serve::start_with("log", "messenger-serve", |cmd| {
        cmd.args(["--secret-env", "MESSENGER_SECRET"])
            .env("MESSENGER_SECRET", secret);
    })
}

/// Runs examples/python_auth.py against `endpoint` with `secret`.
fn python_auth(py: &Path, endpoint: &str, secret: &str, timeout: &str) -> (ExitStatus, Proc) {
    let mut cmd = Command::new(py);
    cmd.arg(script("examples/python_auth.py"))
        .args([endpoint, "--timeout", timeout])
        .env("MESSENGER_SECRET", secret)
        .stdin(Stdio::null());
    let mut p = Proc::spawn("examples/python_auth.py", cmd);
    let (status, _) = p.finish(PEER_LIMIT);
    (status, p)
}

/// examples/python_auth.py computes the same proofs as `auth::proof_with`.
#[test]
fn python_auth_proof_matches_rust() {
    let Some(py) = python() else { return };
    let now = messenger_proto::auth::now_ms();
    for (secret, nonce, unix_ms) in [
        ("secret", [0u8; 16], 1),
        ("", [0xff; 16], 0),
        ("héllo wörld: with colons", *b"0123456789abcdef", now),
        ("s", [7; 16], u64::MAX),
    ] {
        let want = messenger_proto::auth::proof_with(
            &messenger::Secret::new(secret.as_bytes()),
            &nonce,
            unix_ms,
        );
        let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = Command::new(&py);
        cmd.arg(script("examples/python_auth.py"))
            .args(["--proof", secret, &hex, &unix_ms.to_string()])
            .stdin(Stdio::null());
        let mut p = Proc::spawn("python_auth.py --proof", cmd);
        let (status, out) = p.finish(SHORT);
        assert!(status.success(), "{status}; {}", p.context());
        assert_eq!(
            out,
            [want],
            "secret {secret:?}, nonce {hex}, unix_ms {unix_ms}"
        );
    }
}

/// examples/python_auth.py authenticates to `serve` over tcp and ipc; no
/// proof or ECHO reaches the server loop.
#[test]
fn python_auth_example_authenticates_to_serve() {
    let Some(py) = python() else { return };
    let serve = serve_with_secret("correct horse battery staple");
    for endpoint in [&serve.tcp, &serve.ipc] {
        let (status, p) = python_auth(&py, endpoint, "correct horse battery staple", "10");
        assert!(status.success(), "{endpoint}: {status}; {}", p.context());
        assert_eq!(
            p.seen,
            ["ECHO -> hello, authenticated"],
            "{endpoint}: {}",
            p.context()
        );
    }
    // Neither the proof nor the ECHO reaches the server loop.
    let lines = serve.stop();
    assert!(lines.is_empty(), "{lines:?}");
}

/// examples/python_auth.py with a wrong secret gets no reply, `serve` logs
/// why, and still takes the right secret after.
#[test]
fn python_auth_with_a_wrong_secret_is_refused() {
    let Some(py) = python() else { return };
    let serve = serve_with_secret("the right one");
    let (status, p) = python_auth(&py, &serve.tcp, "a wrong one", "2");
    assert_eq!(status.code(), Some(1), "{}", p.context());
    assert!(p.seen.is_empty(), "{}", p.context());
    assert!(p.stderr().contains("no ECHO reply"), "{}", p.context());
    // The listener said why it dropped the peer.
    let logged = common::wait_until_blocking(SHORT, Duration::from_millis(20), || {
        serve
            .proc
            .stderr()
            .contains("authentication MAC does not match")
    });
    assert!(
        logged,
        "serve did not log the refusal; {}",
        serve.proc.context()
    );
    // The same listener still takes the right secret.
    let (status, p) = python_auth(&py, &serve.tcp, "the right one", "10");
    assert!(status.success(), "{status}; {}", p.context());
    let lines = serve.stop();
    assert!(lines.is_empty(), "{lines:?}");
}

// ---------------------------------------------------------------------------
// ZMTP heartbeats (PING/PONG) with libzmq

/// libzmq's heartbeat settings for the steady scenario: a PING every 100 ms
/// and the peer dropped after 300 ms without traffic following one. Requests
/// go every 500 ms, so between them the connection lives on PONGs alone: a
/// peer that did not answer PINGs would be dropped before each next request
/// (`libzmq_drops_a_peer_that_does_not_answer_pings` shows it is).
const LIBZMQ_HEARTBEATS: [&str; 6] = [
    "--heartbeat-ivl",
    "100",
    "--heartbeat-timeout",
    "300",
    "--heartbeat-ttl",
    "1000",
];

/// Arguments of the steady scenario: ECHO requests every 500 ms for
/// `duration` seconds, counting the socket monitor's events.
fn steady_args(duration: &str, heartbeats: bool) -> Vec<&str> {
    let mut args = vec![
        "--duration",
        duration,
        "--interval",
        "0.5",
        "--src-cb",
        "9",
        "--timeout",
        "2",
        "--monitor",
    ];
    if heartbeats {
        args.extend(LIBZMQ_HEARTBEATS);
    }
    args
}

/// A steady run stayed on one connection and got every ACK and reply.
fn assert_steady(r: &Value, requests: u64) {
    assert_eq!(r["requests"], requests, "{r}");
    assert_eq!(r["replies"], requests, "{r}");
    assert_eq!(r["missing_replies"], json!([]), "{r}");
    assert_eq!(r["missing_acks"], json!([]), "{r}");
    let events = &r["events"];
    assert_eq!(events["connected"], 1, "{r}");
    assert_eq!(events["handshake_succeeded"], 1, "{r}");
    for gone in [
        "disconnected",
        "closed",
        "connect_retried",
        "handshake_failed_protocol",
        "handshake_failed_no_detail",
    ] {
        assert!(events.get(gone).is_none(), "{gone}: {r}");
    }
}

/// pyzmq DEALERs with HEARTBEAT_IVL 100 ms (TIMEOUT 300 ms, TTL 1 s) stay
/// connected to `serve` for 10 s on tcp and ipc while ECHOs flow every
/// 500 ms: serve answers every PING with a PONG (the implementation before
/// the ZMTP engine closed the connection of any peer that sent one), and
/// libzmq's own PINGs satisfy the TTL it asks serve to apply.
#[test]
fn python_dealer_with_heartbeats_stays_connected() {
    let Some((py, serve)) = python_and_serve("log") else {
        return;
    };
    let mut args = steady_args("10", true);
    args.extend(["--expect-router-identity", "messenger-serve"]);
    let tcp = spawn_dealer(&py, &serve.tcp, "steady", "py-hb-tcp", &args);
    let ipc = spawn_dealer(&py, &serve.ipc, "steady", "py-hb-ipc", &args);
    for r in [dealer_result(tcp), dealer_result(ipc)] {
        assert_steady(&r, 20);
        assert!(seconds(&r["elapsed"]) >= 10.0, "{r}");
        eprintln!(
            "{}: {} replies, max latency {}s, late {}",
            r["endpoint"], r["replies"], r["max_latency"], r["late"]
        );
    }
    let lines = serve.stop();
    assert!(lines.is_empty(), "ECHO reached the server loop: {lines:?}");
}

/// The control for the test above: the same DEALER against a raw ROUTER
/// that completes the handshake and then never sends anything (no PONG) is
/// dropped by libzmq, and reconnects. So the settings there are tight
/// enough that unanswered PINGs would show as disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_drops_a_peer_that_does_not_answer_pings() {
    use common::raw_zmtp::{RawListener, RawPeer};
    let Some(py) = python() else { return };
    let (listener, endpoint, _p) = RawListener::bind("tcp").await;
    let seen = Arc::new(Mutex::new((0usize, 0usize))); // (connections, PINGs)
    let s = Arc::clone(&seen);
    let raw = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let stream = listener.accept().await;
            s.lock().unwrap().0 += 1;
            let s = Arc::clone(&s);
            conns.spawn(async move {
                let mut peer = RawPeer::handshake(stream, 1, "ROUTER", b"mute").await;
                while let Some(f) = peer.next().await {
                    if f.ping().is_some() {
                        s.lock().unwrap().1 += 1;
                    }
                }
            });
        }
    });
    let ep = endpoint.to_string();
    let r = tokio::task::spawn_blocking(move || {
        let mut args = steady_args("2", true);
        // No reply ever comes: do not wait for one after the 2 s.
        args.extend(["--timeout", "0.1"]);
        dealer(&py, &ep, "steady", "py-hb-mute", &args)
    })
    .await
    .expect("peer thread");
    raw.abort();
    let (connections, pings) = *seen.lock().unwrap();
    let events = &r["events"];
    assert!(
        events["disconnected"].as_u64().is_some_and(|n| n >= 1),
        "libzmq kept a peer that never answers its PINGs: {r}"
    );
    // Dropped after a successful handshake, not refused in it.
    assert!(
        events["handshake_succeeded"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{r}"
    );
    assert!(connections >= 2, "no reconnect: {connections}; {r}");
    eprintln!("{connections} connections, {pings} PINGs: {events}");
    assert!(pings >= 2, "libzmq sent {pings} PINGs; {r}");
    assert_eq!(r["replies"], 0, "{r}");
}

/// Our listener's own PINGs (Config::heartbeat, 100 ms) are answered
/// by libzmq: a pyzmq DEALER (no heartbeats of its own) stays connected for
/// 3 s while ECHOs flow every 500 ms, and nothing is dropped. On tcp a
/// counting proxy shows the PINGs going out and the PONGs coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_peer_answers_our_zmtp_pings() {
    use common::raw_zmtp::Proxy;
    let Some(py) = python() else { return };
    let config = messenger::Config {
        heartbeat: Some(messenger::Heartbeat {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            ttl: Duration::ZERO,
        }),
        ..messenger::Config::default()
    };
    let server = messenger::Messenger::builder()
        .identity("rust-hb")
        .config(config)
        .build()
        .expect("messenger");
    let ipc = common::place("ipc");
    let mut endpoints = Vec::new();
    for at in [&"tcp://127.0.0.1:0".parse().unwrap(), &ipc.endpoint] {
        let bound = server
            .listen_for_connection(at, |_: messenger::Incoming, _| {})
            .await
            .expect("listen");
        endpoints.push(bound.endpoint);
    }
    let proxy = Proxy::start(&endpoints[0]).await;
    let peers = [
        (proxy.endpoint.to_string(), "py-pong-tcp"),
        (endpoints[1].to_string(), "py-pong-ipc"),
    ]
    .map(|(ep, id)| {
        let py = py.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = steady_args("3", false);
            args.extend(["--expect-router-identity", "rust-hb"]);
            dealer(&py, &ep, "steady", id, &args)
        })
    });
    for peer in peers {
        let r = peer.await.expect("peer thread");
        assert_steady(&r, 6);
    }
    let s = server.stats();
    assert_eq!(s.ping_timeouts, 0, "{s:?}");
    assert_eq!(s.guard_rejections, 0, "{s:?}");
    let p = proxy.stats();
    assert_eq!(p.connections, 1, "{p:?}");
    assert_eq!((p.up.minor, p.down.minor), (Some(1), Some(1)), "{p:?}");
    // A PING every 100 ms for 3 s; each answered (the last may have been
    // in flight when the peer closed).
    assert!(p.down.pings >= 15, "{p:?}");
    assert!(p.up.pongs + 2 >= p.down.pings, "{p:?}");
    assert_eq!(p.up.pings, 0, "{p:?}");
    eprintln!("through the proxy: {p:?}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// The command line run many times at once

/// Twenty `messenger send` runs at once against one `serve`, none given an
/// `--identity`: each gets its own default routing id, so none is refused
/// as a live peer's twin and every one is ACKed and reaches the server loop.
/// (With one shared default, `messenger-cli`, 5 to 8 of 20 failed.)
#[test]
fn parallel_cli_runs_do_not_collide() {
    const RUNS: usize = 20;
    let serve = Serve::start("log", "parallel-serve");
    let ep = serve.tcp.clone();
    let runs: Vec<_> = (0..RUNS)
        .map(|i| {
            let ep = ep.clone();
            std::thread::spawn(move || cli(&["send", &ep, &format!("run-{i}")], SHORT))
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let (status, _, err) = run.join().expect("cli thread");
        assert!(status.success(), "run {i}: {status}: {err}");
    }
    let lines = serve.stop();
    let mut bodies: Vec<&str> = lines.iter().filter_map(|v| v["body"].as_str()).collect();
    bodies.sort_unstable();
    let mut want: Vec<String> = (0..RUNS).map(|i| format!("run-{i}")).collect();
    want.sort_unstable();
    assert_eq!(bodies, want, "each run reached the server loop once");
    let peers: std::collections::HashSet<&str> =
        lines.iter().filter_map(|v| v["peer"].as_str()).collect();
    assert_eq!(peers.len(), RUNS, "one routing id per run: {peers:?}");
}

/// NoisePage's DEALER ACKs with routing frames in front: a ROUTER reads
/// `[peer, remote_id, own_id, "", "N-0-2-"]`. `serve` settles such an ACK
/// (it was dropped as malformed, and the reply resent until its
/// deadline): after the ACK, no copy of the reply comes again within two
/// resend intervals, and nothing was counted malformed.
#[test]
fn noisepage_shaped_acks_settle_replies() {
    let Some((py, serve)) = python_and_serve("echo") else {
        return;
    };
    let r = serve.tcp_dealer(
        &py,
        "slc-reply",
        "py-noisepage",
        &[
            "--src-cb",
            "7",
            "--body",
            "acked the NoisePage way",
            "--noisepage-acks",
            "--quiet",
            "2.5",
        ],
    );
    assert_eq!(r["reply"]["body"], "acked the NoisePage way", "{r}");
    assert_eq!(r["after"], json!([]), "the reply came again: {r}");
    let (lines, stats) = serve.stop_with_stats();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(stats["malformed_dropped"], 0, "{stats}");
    assert_eq!(stats["resends"], 0, "{stats}");
    assert_eq!(stats["acks_received"], 1, "{stats}");
}
