//! Bytes a peer chooses, on their way to a log or a terminal: a ZMTP ERROR
//! reason (up to 255 bytes of anything) and a routing id or body that is
//! not UTF-8.
//!
//! - An ERROR reason with newlines, a carriage return and escape sequences
//!   (OSC: set the terminal's title; CSI: colours) must reach neither the
//!   terminal of `messenger request`/`ping` nor `messenger serve`'s log as
//!   it is: no ESC (0x1b) or BEL (0x07) byte, and no line that begins
//!   with the text the peer forged (its newlines escaped, not written).
//! - `messenger serve` prints each message its server loop sees as a JSON
//!   line; a routing id is `"peer": "<text>"` when it is UTF-8 and
//!   `"peer_hex": "<lowercase hex>"` otherwise, a body `"body"` or
//!   `"body_base64"` (standard, padded): two ids that differ must print
//!   differently (a lossy decoding prints `\xff\x01` and `\xfe\x01` alike).

mod common;

use std::io::{BufRead, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw_zmtp::{self, FrameReader, RawListener, Stream, dial};
use common::{eventually_real, run_bounded, wait_child, within};
use messenger::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET_VAR: &str = "MESSENGER_PEER_STRINGS_SECRET";

/// What the forged lines begin with.
const FORGED: &str = "ERROR messenger: forged";

/// An ERROR reason (under 255 bytes) made to break out of a log line and
/// take over a terminal: newlines and a carriage return, an OSC sequence
/// (sets the window title, ends in BEL), CSI colours, and forged log lines.
fn hostile_reason() -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(b"nope\n");
    r.extend_from_slice(FORGED.as_bytes());
    r.extend_from_slice(b" line one\r\n");
    r.extend_from_slice(b"\x1b]0;pwned\x07");
    r.extend_from_slice(b"\x1b[31mred\x1b[0m\x1b[2K\r");
    r.extend_from_slice(FORGED.as_bytes());
    r.extend_from_slice(b" after a carriage return\n");
    r.extend_from_slice(FORGED.as_bytes());
    r.extend_from_slice(b" at the end");
    assert!(r.len() <= 255, "an ERROR reason is at most 255 bytes");
    r
}

/// ZMTP ERROR with `reason`.
fn error_command(reason: &[u8]) -> Vec<u8> {
    let mut data = vec![u8::try_from(reason.len()).unwrap()];
    data.extend_from_slice(reason);
    raw_zmtp::command("ERROR", &data)
}

/// What is wrong with `out` (a process's stdout or stderr) as something
/// shown on a terminal or kept in a log: an ESC or BEL byte, or a line
/// (split at `\n` or `\r`) that begins with the forged text.
fn injected(out: &[u8]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (byte, name) in [(0x1b, "ESC (0x1b)"), (0x07, "BEL (0x07)")] {
        let n = out.iter().filter(|&&b| b == byte).count();
        if n > 0 {
            wrong.push(format!("{n} {name} byte(s)"));
        }
    }
    for line in out.split(|&b| b == b'\n' || b == b'\r') {
        if line.starts_with(FORGED.as_bytes()) {
            wrong.push(format!(
                "a forged line: {:?}",
                String::from_utf8_lossy(line)
            ));
        }
    }
    wrong
}

// ---------------------------------------------------------------------------
// `messenger serve`, with an environment and its stdout

/// `messenger serve --bind tcp://127.0.0.1:0` with `flags` and `env` in
/// its environment, printing what its server loop sees (no `--quiet`,
/// which [`common::serve::ServeProcess`] always passes; nor can that set
/// the child's environment): stdout lines and stderr bytes kept.
struct Serve {
    child: Child,
    pid: u32,
    endpoint: Endpoint,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

impl Serve {
    async fn start(flags: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger"));
        cmd.args(["serve", "--bind", "tcp://127.0.0.1:0"])
            .args(flags)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start messenger serve");
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let out_pipe = child.stdout.take().unwrap();
        let (e, o) = (Arc::clone(&stderr), Arc::clone(&stdout));
        let drains = vec![
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = err_pipe.read(&mut buf) {
                    e.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }),
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out_pipe).lines() {
                    let Ok(line) = line else { break };
                    o.lock().unwrap().push(line);
                }
            }),
        ];
        let listening = common::wait_until(Duration::from_secs(10), || {
            !stdout.lock().unwrap().is_empty()
        })
        .await;
        if !listening {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve printed no listening line within 10 s; stderr:\n{}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            );
        }
        let line = stdout.lock().unwrap()[0].clone();
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        let endpoint = v["listening"]
            .as_str()
            .unwrap_or_else(|| panic!("expected {{\"listening\": ...}}, got {line}"))
            .parse()
            .unwrap();
        Serve {
            child,
            pid,
            endpoint,
            stdout,
            stderr,
            drains,
        }
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The JSON lines it printed for messages (the listening line aside).
    fn messages(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// SIGTERM; waits (10 s at most) for it to exit and for all it wrote
    /// to be read. Returns everything it wrote to stderr.
    fn terminate(mut self) -> Vec<u8> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
        let exit = wait_child(&mut self.child, Duration::from_secs(10)).expect("wait for serve");
        assert!(exit.is_some(), "serve did not exit within 10 s of SIGTERM");
        // Its pipes are closed now: the drains end.
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        std::mem::take(&mut *self.stderr.lock().unwrap())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Fault: ERROR reasons on a client's terminal

/// A raw ROUTER (tcp) that answers every connection's greeting, reads its
/// READY and then, instead of READY, sends ERROR with [`hostile_reason`]
/// and closes; counts the ERRORs it sent.
async fn refusing_router() -> (Endpoint, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (listener, endpoint, _place) = RawListener::bind("tcp").await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let task = tokio::spawn(async move {
        loop {
            let stream = listener.accept().await;
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), refuse(stream, &counter)).await;
            });
        }
    });
    (endpoint, sent, task)
}

async fn refuse(stream: Stream, sent: &AtomicUsize) {
    let mut r = FrameReader::new(stream);
    if r.inner.write_all(&raw_zmtp::greeting(1)).await.is_err() {
        return;
    }
    if r.greeting().await.is_err() {
        return;
    }
    // The client (NULL) sends READY first.
    if !matches!(r.command().await, Ok(f) if f.command_name() == Some(&b"READY"[..])) {
        return;
    }
    if r.inner
        .write_all(&error_command(&hostile_reason()))
        .await
        .is_ok()
    {
        sent.fetch_add(1, Ordering::Relaxed);
    }
    // Our side closes after the ERROR; what the client sends is read to
    // its end, so the close resets nothing still on its way.
    let _ = r.inner.shutdown().await;
    let mut sink = [0u8; 1024];
    while let Ok(1..) = r.inner.read(&mut sink).await {}
}

/// A raw ROUTER answers `messenger request <it> hi --timeout 2s` and
/// `messenger ping <it> -c 1 --timeout 2s` with a ZMTP ERROR whose reason
/// holds newlines, a carriage return, OSC and CSI escape sequences and
/// forged log lines. Each command must fail, and neither its stdout nor
/// its stderr (RUST_LOG=debug: every log line it has) may carry an ESC or
/// BEL byte or a line that begins with the forged text: the reason is
/// the peer's, and shown escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reason_reaches_a_client_terminal_escaped() {
    let (endpoint, sent, router) = refusing_router().await;
    let ep = endpoint.to_string();
    let runs: [(&str, Vec<&str>); 2] = [
        ("request", vec!["request", &ep, "hi", "--timeout", "2s"]),
        ("ping", vec!["ping", &ep, "-c", "1", "--timeout", "2s"]),
    ];
    let mut wrong = Vec::new();
    for (what, args) in runs {
        let before = sent.load(Ordering::Relaxed);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger"));
        cmd.args(&args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "debug");
        let ran = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(15)))
            .await
            .unwrap()
            .expect("run the command");
        let errors = sent.load(Ordering::Relaxed) - before;
        eprintln!(
            "{what}: exit {:?} after {:.2?}, {errors} ERROR(s) sent to it\n  stdout: {:?}\n  stderr: {:?}",
            ran.status, ran.elapsed, ran.stdout, ran.stderr
        );
        assert!(
            errors >= 1,
            "{what}: the raw ROUTER sent no ERROR: the check would be vacuous"
        );
        assert!(
            ran.status.is_some_and(|s| !s.success()),
            "{what}: should fail when the listener refuses it: exit {:?}",
            ran.status
        );
        for (stream, out) in [("stdout", &ran.stdout), ("stderr", &ran.stderr)] {
            for w in injected(out.as_bytes()) {
                wrong.push(format!("{what} {stream}: {w}"));
            }
        }
    }
    router.abort();
    assert!(
        wrong.is_empty(),
        "the peer's ERROR reason reached the terminal raw:\n  {}",
        wrong.join("\n  ")
    );
}

/// Runs `messenger ARGS` with its stdout on a pseudo-terminal (what a
/// user's shell gives it); returns what reached the terminal and whether
/// it succeeded, within `limit`.
fn run_on_a_terminal(args: &[&str], limit: Duration) -> (Vec<u8>, bool) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors it opened into the two ints;
    // the name, termios and winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both are open descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = Command::new(env!("CARGO_BIN_EXE_messenger"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(slave))
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn messenger");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        // EIO once the child (the slave's last holder) has gone.
        let _ = std::fs::File::from(master).read_to_end(&mut out);
        out
    });
    let status = wait_child(&mut child, limit).expect("wait for messenger");
    let out = reader.join().expect("the reader");
    (out, status.is_some_and(|s| s.success()))
}

/// A reply's body is the peer's too: `messenger request` shows it on a
/// terminal with its control bytes escaped (an OSC sequence set the
/// terminal's title, CSI cleared the screen), and writes it as it is into
/// a pipe, where a script wants the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_body_reaches_a_terminal_escaped() {
    let p = common::place("tcp");
    let server = messenger::Messenger::new().unwrap();
    let bound = server
        .listen_for_connection(
            &p.endpoint,
            |_: messenger::Incoming, r: messenger::Responder| {
                let _ = r.try_reply(hostile_reason());
            },
        )
        .await
        .unwrap();
    let ep = bound.endpoint.to_string();
    let args = ["request", ep.as_str(), "hi", "--timeout", "5s"];
    let (shown, ok) = tokio::task::spawn_blocking({
        let args = args.map(str::to_owned);
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_on_a_terminal(&args, Duration::from_secs(15))
        }
    })
    .await
    .unwrap();
    eprintln!("on a terminal: {:?}", String::from_utf8_lossy(&shown));
    assert!(ok, "request failed: {:?}", String::from_utf8_lossy(&shown));
    assert!(
        shown.windows(4).any(|w| w == b"nope"),
        "the reply did not reach the terminal: the check would be vacuous"
    );
    let wrong = injected(&shown);
    assert!(
        wrong.is_empty(),
        "the reply reached the terminal raw: {wrong:?}"
    );

    let piped = Command::new(env!("CARGO_BIN_EXE_messenger"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run request");
    assert!(piped.status.success(), "{piped:?}");
    let mut want = hostile_reason();
    want.push(b'\n');
    assert_eq!(piped.stdout, want, "into a pipe the body goes as it is");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Fault: ERROR reasons in serve's log

/// A greeting for `mechanism` (ZMTP 3.1, as-server 0).
fn greeting_for(mechanism: &[u8]) -> Vec<u8> {
    let mut g = raw_zmtp::greeting(1);
    g[12..32].fill(0);
    g[12..12 + mechanism.len()].copy_from_slice(mechanism);
    g.to_vec()
}

/// Sends `greeting` and then ERROR with [`hostile_reason`] to `endpoint`
/// (in place of READY, or of CURVE's HELLO), and waits until the listener
/// closes the connection.
async fn greet_and_err(endpoint: &Endpoint, greeting: &[u8]) {
    let mut s = dial(endpoint).await;
    let mut bytes = greeting.to_vec();
    bytes.extend(error_command(&hostile_reason()));
    s.write_all(&bytes).await.expect("write greeting and ERROR");
    within(10, "the listener closes the connection", async {
        let mut sink = [0u8; 1024];
        while let Ok(1..) = s.read(&mut sink).await {}
    })
    .await;
}

/// `messenger keygen --out <dir>/<name>`: the secret certificate's path
/// (the public one is beside it, `.pub`).
fn keygen(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger"));
    cmd.arg("keygen").arg("--out").arg(&path);
    let ran = run_bounded(cmd, Duration::from_secs(10)).expect("run keygen");
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "keygen failed: {}",
        ran.stderr
    );
    path.display().to_string()
}

/// `messenger serve` (RUST_LOG=debug, so every log line it has is
/// written) gets, from a raw peer, a greeting and then a ZMTP ERROR whose
/// reason holds newlines, a carriage return, escape sequences and forged
/// log lines, in place of READY: with a secret (`--secret-env`; the peer
/// is refused before any proof), without one, and under CURVE with an
/// allow-list (`--curve-cert`, `--curve-allow`; the ERROR comes before
/// HELLO). serve must close the connection, and its log (stderr, read to
/// the end after SIGTERM) must carry no ESC or BEL byte and no line that
/// begins with the forged text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reason_reaches_the_server_log_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, other_cert) = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || (keygen(&dir, "server"), keygen(&dir, "other"))
    })
    .await
    .unwrap();
    let other_pub = format!("{other_cert}.pub");
    let log_env = [("RUST_LOG", "debug"), (SECRET_VAR, "peer-strings-secret")];
    let cases: [(&str, Vec<&str>, &[u8]); 3] = [
        (
            "NULL with a secret",
            vec!["--secret-env", SECRET_VAR],
            b"NULL",
        ),
        ("NULL without a secret", vec![], b"NULL"),
        (
            "CURVE with an allow-list, before HELLO",
            vec!["--curve-cert", &server_cert, "--curve-allow", &other_pub],
            b"CURVE",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, flags, mechanism) in cases {
        let serve = Serve::start(&flags, &log_env).await;
        greet_and_err(&serve.endpoint, &greeting_for(mechanism)).await;
        let log = tokio::task::spawn_blocking(move || serve.terminate())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&log);
        let mentions: Vec<&str> = text.lines().filter(|l| l.contains("nope")).collect();
        eprintln!("{what}: log lines with the reason: {mentions:#?}");
        for w in injected(&log) {
            wrong.push(format!("{what}: {w}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the peer's ERROR reason reached serve's log raw:\n  {}",
        wrong.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Fault: routing ids and bodies printed lossily

/// A raw DEALER with routing id `identity` sends one message to the server
/// loop (`["", "0-0-0-{body}"]`, no reply asked) and reads its ACK.
async fn send_one(endpoint: &Endpoint, identity: &[u8], body: &[u8]) {
    let mut payload = b"0-0-0-".to_vec();
    payload.extend_from_slice(body);
    let msg = raw_zmtp::message(&[b"", &payload]);
    let mut r = raw_zmtp::dealer(endpoint, identity, &msg).await;
    within(5, "the listener's READY", r.expect_ready()).await;
    let ack = r.next_message(5, "the ACK").await;
    assert_eq!(ack.last().map(String::as_str), Some("0-0-2-"), "{ack:?}");
}

/// `messenger serve --slc log` prints each message its server loop sees.
/// Three raw DEALERs send one message each: routing ids `\xff\x01` and
/// `\xfe\x01` (not UTF-8; decoded lossily both print as U+FFFD U+0001)
/// and `plain-id`; bodies `hello`, `\xff\xfe\x00a` (not UTF-8) and
/// `plain`. The lines must tell the peers apart, losslessly: a UTF-8 id
/// as `"peer"`, any other as `"peer_hex"` (lowercase, and then no
/// `"peer"`), a UTF-8 body as `"body"`, any other as `"body_base64"`
/// (standard, padded; and then no `"body"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_ids_and_bodies_are_printed_losslessly() {
    let serve = Serve::start(&["--slc", "log"], &[]).await;
    let sent: [(&[u8], &[u8]); 3] = [
        (b"\xff\x01", b"hello"),
        (b"\xfe\x01", b"\xff\xfe\x00a"),
        (b"plain-id", b"plain"),
    ];
    for (id, body) in sent {
        send_one(&serve.endpoint, id, body).await;
    }
    let stdout = Arc::clone(&serve.stdout);
    eventually_real(10, "serve prints three messages", || {
        stdout.lock().unwrap().len() > sent.len()
    })
    .await;
    let lines = serve.messages();
    eprintln!("serve printed: {lines:#?}");
    assert_eq!(lines.len(), 3, "{lines:#?}");

    // What each peer's line must hold (field, value), and must not hold.
    type Expect = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    let expected: [Expect; 3] = [
        (
            "id ff01 (not UTF-8), body \"hello\"",
            &[("peer_hex", "ff01"), ("body", "hello")],
            &["peer", "body_base64"],
        ),
        (
            "id fe01 (not UTF-8), body ff fe 00 61 (not UTF-8)",
            &[("peer_hex", "fe01"), ("body_base64", "//4AYQ==")],
            &["peer", "body"],
        ),
        (
            "id \"plain-id\", body \"plain\"",
            &[("peer", "plain-id"), ("body", "plain")],
            &["peer_hex", "body_base64"],
        ),
    ];
    let mut wrong = Vec::new();
    for (what, has, lacks) in expected {
        let found = lines.iter().find(|l| {
            has.iter().all(|(k, v)| l[*k].as_str() == Some(*v))
                && lacks.iter().all(|k| l.get(*k).is_none())
        });
        if found.is_none() {
            wrong.push(format!(
                "{what}: no line with {has:?} and without {lacks:?}"
            ));
        }
    }
    // However printed, the two ids that are not UTF-8 must differ.
    let shown: Vec<String> = lines
        .iter()
        .map(|l| format!("peer={} peer_hex={}", l["peer"], l["peer_hex"]))
        .collect();
    let mut distinct = shown.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != shown.len() {
        wrong.push(format!("two peers print the same id: {shown:?}"));
    }
    assert!(
        wrong.is_empty(),
        "serve's lines do not tell the peers apart losslessly:\n  {}\nlines: {lines:#?}\n\
         stderr:\n{}",
        wrong.join("\n  "),
        serve.stderr_text()
    );
    let _ = serve.terminate();
}
