//! Peers whose msg_ids skip (issue 19, fault 8): every message is still
//! ACKed and delivered exactly once.
//!
//! NoisePage's C++ Messenger numbers its messages with one counter across
//! all its connections, so a NoisePage primary replicating to two of our
//! listeners gives each of them ids with gaps (0, 2, 4, ... and 1, 3,
//! 5, ...). Our duplicate window used to keep the ids below the highest
//! that had not arrived, as gaps; such a sender opens a gap per message,
//! gaps it will never fill. Once 1,024 were open (`dedup_max_gaps`) every
//! new id from that connection was refused unACKed (`dedup_busy`), resends
//! included: the sender stalled after about 1,024 messages for as long as
//! its connection lived. Now the window is a bitmap below the highest id
//! (design/WIRE.md, "Duplicates"), and holes cost nothing.
//!
//! A pyzmq sender (tests/py/sparse_ids_client.py, a correct protocol peer:
//! at most 1,000 messages unACKed, each resent every 500 ms until ACKed,
//! every answer ACKed) talks to `messenger serve` on tcp; the checks read
//! its JSON summary and serve's final stats, so the server's side is
//! counted too: exactly one delivery (or one ECHO answer) per id.
//!
//! The Python environment comes from tests/common/python.rs (without it
//! the tests print `SKIPPED` and pass, unless `CI` is set). Every wait is
//! bounded: the client gives up after its deadline or once nothing new
//! came for `STALL_SECS`, is killed past `CLIENT_LIMIT`, and serve is
//! killed when the test ends.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::python::python;
use common::serve::ServeProcess;
use serde_json::Value;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The client's deadline, in seconds: below `dedup_gap_ttl` (60 s), so
/// gaps that merely age out cannot pass for a fix.
const DEADLINE_SECS: u64 = 40;
/// The client gives up once nothing new (an ACK or an answer) came for
/// this long, in seconds: a stalled sender.
const STALL_SECS: u64 = 10;
/// Bound on the client process, start to exit.
const CLIENT_LIMIT: Duration = Duration::from_secs(DEADLINE_SECS + 30);
/// Bound on serve's exit after SIGTERM.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// How the client numbers and sends its messages.
struct Plan<'a> {
    endpoints: Vec<String>,
    count: u64,
    /// msg_id of message k is `k * stride`.
    stride: u64,
    /// Each message sent this many times in a row.
    copies: u64,
    /// 0: the server loop; 1: ECHO.
    dst_cb: u64,
    what: &'a str,
}

/// Runs the client (bounded); its JSON summary.
async fn run_client(py: &Path, plan: &Plan<'_>) -> Value {
    let script = Path::new(MANIFEST_DIR).join("tests/py/sparse_ids_client.py");
    let mut cmd = Command::new(py);
    cmd.arg(script);
    for ep in &plan.endpoints {
        cmd.args(["--endpoint", ep]);
    }
    cmd.args(["--count", &plan.count.to_string()])
        .args(["--stride", &plan.stride.to_string()])
        .args(["--copies", &plan.copies.to_string()])
        .args(["--dst-cb", &plan.dst_cb.to_string()])
        .args(["--window", "1000", "--resend", "0.5"])
        .args(["--deadline", &DEADLINE_SECS.to_string()])
        .args(["--stall", &STALL_SECS.to_string()]);
    let what = plan.what.to_string();
    let ran = tokio::task::spawn_blocking(move || common::run_bounded(cmd, CLIENT_LIMIT))
        .await
        .expect("client thread")
        .expect("cannot start the Python client");
    let context = format!(
        "{what}: client after {:?}, status {:?}\n--- stdout\n{}\n--- stderr\n{}",
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

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// Stops serve (SIGTERM, bounded) and returns its final stats; checks it
/// exited 0.
async fn final_stats(mut server: ServeProcess, what: &str) -> Value {
    let exit = server.terminate(EXIT_LIMIT).await;
    let stats = server.final_stats().unwrap_or_else(|| {
        panic!(
            "{what}: no shutdown stats (exit {exit:?}); stderr:\n{}",
            server.stderr_tail(20)
        )
    });
    assert!(
        matches!(exit, Some(Ok(status)) if status.success()),
        "{what}: serve did not exit 0 on SIGTERM: {exit:?}"
    );
    stats
}

/// The counters that tell what the server did with the ids, as one line.
fn counters(stats: &Value) -> String {
    [
        "received",
        "acks_sent",
        "slc_delivered",
        "echoes_answered",
        "duplicates_dropped",
        "dedup_stale",
        "slc_busy",
        "buffer_busy",
    ]
    .iter()
    .map(|k| format!("{k}={}", stats[k]))
    .collect::<Vec<_>>()
    .join(" ")
}

/// Checks what the client says: every message ACKed, nothing unexpected.
fn assert_all_acked(summary: &Value, count: u64, figures: &str) {
    assert_eq!(n(summary, "unexpected"), 0, "{figures}");
    assert_eq!(n(summary, "acked"), count, "not all ACKed: {figures}");
    assert_eq!(n(summary, "sent"), count, "not all sent: {figures}");
}

/// Each delivered exactly once on the server: `count` deliveries (or
/// answers, `field`) for `count` ids that were all ACKed, so none twice;
/// and the extra copies recognised as duplicates: at least one per id,
/// less the ids whose first copy was refused (`slc_busy`: then a later
/// copy is the first to count); and no id taken for one older than the
/// duplicate window (`dedup_stale`).
fn assert_once(stats: &Value, field: &str, count: u64, copies: u64, figures: &str) {
    assert_eq!(
        n(stats, field),
        count,
        "{field} is not one per id: {figures}"
    );
    if copies > 1 {
        assert_eq!(
            n(stats, "dedup_stale"),
            0,
            "ids refused as stale: {figures}"
        );
        let refused = n(stats, "slc_busy");
        let want = (copies - 1) * count;
        assert!(
            n(stats, "duplicates_dropped") + refused >= want,
            "duplicates not dropped: {figures}"
        );
    }
}

/// 10,000 messages to the server loop with ids 0, 3, 6, ..., each sent
/// twice (the second copy is a duplicate): all 10,000 ids are ACKed within
/// the deadline, and serve delivers each exactly once (`slc_delivered`
/// 10,000) and drops the copies. Before the fix the 1,026th id and every
/// later one were refused as `dedup_busy` for good.
#[tokio::test]
async fn skipping_ids_to_the_server_loop_are_each_delivered_once() {
    let Some(py) = python() else { return };
    const COUNT: u64 = 10_000;
    let server = ServeProcess::start(&["--slc", "log"]).await;
    let plan = Plan {
        endpoints: vec![server.tcp.to_string()],
        count: COUNT,
        stride: 3,
        copies: 2,
        dst_cb: 0,
        what: "server loop, ids 0, 3, 6, ...",
    };
    let summary = run_client(&py, &plan).await;
    let stats = final_stats(server, plan.what).await;
    let figures = format!(
        "{}: {} of {COUNT} ids ACKed; client {summary}; serve {}",
        plan.what,
        n(&summary, "acked"),
        counters(&stats)
    );
    eprintln!("{figures}");
    assert_all_acked(&summary, COUNT, &figures);
    assert_once(&stats, "slc_delivered", COUNT, plan.copies, &figures);
}

/// The same with ECHO: 10,000 ECHOs with ids 0, 3, 6, ..., each sent
/// twice, each on a callback of its own (4 + k): all ACKed, each answered
/// exactly once with its own body (the client counts the distinct answers
/// per callback and checks the bodies; serve's `echoes_answered` is
/// 10,000). Before the fix about 1,025 were answered and the rest refused.
#[tokio::test]
async fn skipping_ids_to_echo_are_each_answered_once() {
    let Some(py) = python() else { return };
    const COUNT: u64 = 10_000;
    let server = ServeProcess::start(&["--slc", "log"]).await;
    let plan = Plan {
        endpoints: vec![server.tcp.to_string()],
        count: COUNT,
        stride: 3,
        copies: 2,
        dst_cb: 1,
        what: "ECHO, ids 0, 3, 6, ...",
    };
    let summary = run_client(&py, &plan).await;
    let stats = final_stats(server, plan.what).await;
    let figures = format!(
        "{}: {} of {COUNT} ids ACKed, {} answered; client {summary}; serve {}",
        plan.what,
        n(&summary, "acked"),
        n(&summary, "answered"),
        counters(&stats)
    );
    eprintln!("{figures}");
    assert_all_acked(&summary, COUNT, &figures);
    assert_eq!(n(&summary, "wrong_bodies"), 0, "wrong bodies: {figures}");
    assert_eq!(n(&summary, "answered_twice"), 0, "{figures}");
    assert_eq!(
        n(&summary, "answered"),
        COUNT,
        "not all answered: {figures}"
    );
    assert_once(&stats, "echoes_answered", COUNT, plan.copies, &figures);
}

/// A NoisePage-style primary: one process, ONE msg_id counter, two
/// DEALERs to two `messenger serve --slc log` replicas, messages
/// alternating between them, 4,000 in all, so one replica sees ids 0, 2,
/// 4, ... and the other 1, 3, 5, ...: every message is ACKed (unACKed ones
/// resent) and each replica delivers its 2,000 exactly once. Before the
/// fix each replica stopped taking new ids after about 1,024.
#[tokio::test]
async fn a_primary_with_one_counter_reaches_both_replicas() {
    let Some(py) = python() else { return };
    const COUNT: u64 = 4_000;
    let (a, b) = (
        ServeProcess::start(&["--slc", "log"]).await,
        ServeProcess::start(&["--slc", "log"]).await,
    );
    let plan = Plan {
        endpoints: vec![a.tcp.to_string(), b.tcp.to_string()],
        count: COUNT,
        stride: 1,
        copies: 1,
        dst_cb: 0,
        what: "primary to two replicas, one counter",
    };
    let summary = run_client(&py, &plan).await;
    let (a, b) = (
        final_stats(a, "replica 0").await,
        final_stats(b, "replica 1").await,
    );
    let figures = format!(
        "{}: {} of {COUNT} ACKed (per replica {}); client {summary}; \
         replica 0 (even ids): {}; replica 1 (odd ids): {}",
        plan.what,
        n(&summary, "acked"),
        summary["acked_per_endpoint"],
        counters(&a),
        counters(&b)
    );
    eprintln!("{figures}");
    assert_all_acked(&summary, COUNT, &figures);
    assert_eq!(
        summary["acked_per_endpoint"],
        serde_json::json!([COUNT / 2, COUNT / 2]),
        "{figures}"
    );
    assert_once(&a, "slc_delivered", COUNT / 2, plan.copies, &figures);
    assert_once(&b, "slc_delivered", COUNT / 2, plan.copies, &figures);
}
