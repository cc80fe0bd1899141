//! Server-loop replies under a peer that ACKs slowly (issue 19, fault 1):
//! none may be lost.
//!
//! `messenger serve --slc echo` answers each request to its server loop
//! with the request's body. A pyzmq DEALER (tests/py/backpressure_client.py,
//! a correct protocol peer: it ACKs what it gets, drops duplicate replies,
//! resends what is not ACKed) pipelines 10,000 requests and holds back its
//! ACKs until it has read 4,096 replies: the server's window towards it
//! (`send_queue_capacity`, 4,096) is then full while the rest of the
//! requests reach the server loop. The server ACKs each request at once,
//! so the client never resends one: a reply the server does not send is
//! lost for good. Every request must be answered, with its own body, on its
//! own callback, and the server must not print a warning per reply it
//! could not send at once.
//!
//! The Python environment comes from tests/common/python.rs (without it
//! the tests print `SKIPPED` and pass, unless `CI` is set). Every wait is
//! bounded: the Python client gives up after its deadline, is killed past
//! `CLIENT_LIMIT`, and serve is killed when the test ends.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::python::python;
use common::serve::ServeProcess;
use serde_json::Value;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Requests the client pipelines.
const REQUESTS: u64 = 10_000;
/// The server's window towards one peer (`Config::send_queue_capacity`):
/// the client holds its ACKs until this many replies are in.
const WINDOW: u64 = 4_096;
/// The client's own deadline, in seconds: all must be answered by then.
const DEADLINE_SECS: u64 = 60;
/// The client gives up once no new reply came for this long, in seconds
/// (a server that dropped replies sends nothing more).
const STALL_SECS: u64 = 10;
/// Bound on the client process, start to exit.
const CLIENT_LIMIT: Duration = Duration::from_secs(DEADLINE_SECS + 30);
/// The most WARN lines serve may print per second of the run (the
/// library's per-listener rate limit is 10 a second), plus `WARN_SLACK`.
const WARN_PER_SEC: u64 = 10;
const WARN_SLACK: u64 = 40;

/// Runs the client against `endpoint` (bounded); its JSON summary.
async fn run_client(py: &Path, endpoint: String) -> Value {
    let script = Path::new(MANIFEST_DIR).join("tests/py/backpressure_client.py");
    let mut cmd = Command::new(py);
    cmd.arg(script)
        .arg(&endpoint)
        .args(["--count", &REQUESTS.to_string()])
        .args(["--hold-acks", &WINDOW.to_string()])
        .args(["--resend", "0.5"])
        .args(["--deadline", &DEADLINE_SECS.to_string()])
        .args(["--stall", &STALL_SECS.to_string()]);
    let ran = tokio::task::spawn_blocking(move || common::run_bounded(cmd, CLIENT_LIMIT))
        .await
        .expect("client thread")
        .expect("cannot start the Python client");
    let context = format!(
        "client after {:?}, status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        ran.elapsed, ran.status, ran.stdout, ran.stderr
    );
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "client failed or was killed: {context}"
    );
    let line = ran
        .stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no summary: {context}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary not JSON ({e}): {context}"))
}

/// The counters of serve's final stats that tell what became of the
/// replies, as one line.
fn counters(stats: &Value) -> String {
    [
        "slc_delivered",
        "slc_busy",
        "sent",
        "acks_received",
        "resends",
        "replies_dropped",
        "replies_untracked",
        "send_failures",
        "warnings_suppressed",
    ]
    .iter()
    .map(|k| format!("{k}={}", stats[k]))
    .collect::<Vec<_>>()
    .join(" ")
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// 10,000 pipelined requests to `messenger serve --slc echo` on
/// `transport` from a client that lets 4,096 replies wait for their ACK:
/// every request is answered exactly once with `req-<i>` on callback
/// `4 + i` within the deadline, and serve's stderr holds no flood of
/// warnings. Before the fix the server loop's `try_reply` failed with
/// "send queue is full" once 4,096 replies were unACKed, and each of the
/// other 5,904 replies was dropped (never resent: the request was already
/// ACKed) with a WARN line of its own.
async fn slow_acker_gets_every_reply(transport: &str) {
    let Some(py) = python() else { return };
    let mut server = ServeProcess::start(&["--slc", "echo"]).await;
    let endpoint = match transport {
        "tcp" => server.tcp.to_string(),
        "ipc" => server.ipc.to_string(),
        other => panic!("unknown transport {other}"),
    };
    let started = std::time::Instant::now();
    let summary = run_client(&py, endpoint).await;
    let run_secs = started.elapsed().as_secs() + 1;
    let exit = server.terminate(Duration::from_secs(10)).await;
    let stderr = server.stderr();
    let stats = server
        .final_stats()
        .map(|s| counters(&s))
        .unwrap_or_default();
    let warns = stderr.lines().filter(|l| l.contains("WARN")).count() as u64;
    let cannot_reply = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("reply"))
        .count();
    let figures = format!(
        "{transport}: {} of {REQUESTS} answered ({} right, {} missing, first {}), \
         {warns} WARN lines ({cannot_reply} about replies); client {summary}; \
         serve's final stats {stats}; serve's last stderr:\n{}",
        n(&summary, "answered"),
        n(&summary, "right"),
        n(&summary, "missing"),
        summary["first_missing"],
        server.stderr_tail(5),
    );
    eprintln!("{figures}");
    // The premise: the client did let a full window of replies wait.
    assert!(
        n(&summary, "max_held_acks") >= WINDOW,
        "the client never held {WINDOW} unACKed replies: {figures}"
    );
    assert_eq!(n(&summary, "unexpected"), 0, "{figures}");
    assert_eq!(n(&summary, "wrong_bodies"), 0, "wrong bodies: {figures}");
    assert_eq!(n(&summary, "answered_twice"), 0, "{figures}");
    assert_eq!(
        (n(&summary, "answered"), n(&summary, "right")),
        (REQUESTS, REQUESTS),
        "replies lost: {figures}"
    );
    let allowed = WARN_PER_SEC * run_secs + WARN_SLACK;
    assert!(
        warns <= allowed,
        "{warns} WARN lines in {run_secs} s (at most {allowed}): warnings are not \
         rate-limited: {figures}"
    );
    assert!(
        matches!(exit, Some(Ok(status)) if status.success()),
        "serve did not exit 0 on SIGTERM: {exit:?}: {figures}"
    );
}

/// [`slow_acker_gets_every_reply`] on tcp.
#[tokio::test]
async fn slow_acker_gets_every_reply_on_tcp() {
    slow_acker_gets_every_reply("tcp").await;
}

/// [`slow_acker_gets_every_reply`] on ipc.
#[tokio::test]
async fn slow_acker_gets_every_reply_on_ipc() {
    slow_acker_gets_every_reply("ipc").await;
}
