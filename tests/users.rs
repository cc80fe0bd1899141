//! The three users' examples and `messenger demo`, run as their users run
//! them: as processes, with small flags, checking the exit status and the
//! key lines of their output. (The Python examples run in tests/interop.rs.)
//!
//! The example binaries are the ones `cargo test` builds into
//! `target/<profile>/examples/` (`cargo test --test users` alone does not
//! build them: run `cargo build --examples` first). The model-server tests
//! run `tests/py/model_server.py` with pyzmq from a venv at `target/pyenv`,
//! created on first use by messenger-testkit (shared with the interop
//! tests); without python3 or PyPI they print `SKIPPED: ...` and pass,
//! unless `CI` is set. Set `MESSENGER_TEST_PYTHON` to an interpreter that
//! already has pyzmq and msgpack to skip the venv.
//!
//! Every wait is bounded and every child process is killed if a test ends
//! early.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use common::example;
use common::python::python;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// What a finished process left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Finished {
    fn context(&self) -> String {
        format!(
            "status {}, after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    fn assert_success(&self, what: &str) {
        assert!(self.status.success(), "{what} failed: {}", self.context());
    }

    fn assert_stdout_has(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}: {}",
            self.context()
        );
    }
}

/// Runs `cmd` to completion within `limit`; a process still running then
/// is killed and the test fails.
fn run(mut cmd: Command, what: &str, limit: Duration) -> Finished {
    cmd.env("NO_COLOR", "1");
    let ran =
        common::run_bounded(cmd, limit).unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let Some(status) = ran.status else {
        panic!(
            "{what} still running after {limit:?}; killed it\n--- stderr\n{}",
            ran.stderr
        );
    };
    Finished {
        status,
        stdout: ran.stdout,
        stderr: ran.stderr,
        elapsed: ran.elapsed,
    }
}

// ---------------------------------------------------------------------------
// Replication

/// How many stdout lines contain `needle`.
fn count_lines(r: &Finished, needle: &str) -> usize {
    r.stdout.lines().filter(|l| l.contains(needle)).count()
}

/// The replication example crashes replica-2 mid-stream and restarts it
/// on its port; both replicas end with the whole log and nothing acked
/// is lost.
#[test]
fn replication_survives_a_replica_crash() {
    let mut cmd = example("replication");
    cmd.args(["--batches", "200", "--kill-replica-after", "60"]);
    let r = run(cmd, "replication", Duration::from_secs(60));
    r.assert_success("replication");
    r.assert_stdout_has("replica-1 on tcp://127.0.0.1:");
    r.assert_stdout_has("killed replica-2 at LSN 60; restarted with ");
    // The restarted replica starts from its disk, not from nothing.
    let kept: usize = r
        .stdout
        .lines()
        .find_map(|l| l.split("restarted with ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restart line: {}", r.context()));
    assert!(kept >= 60, "{}", r.context());
    let whole = "applied 200 batches in LSN order";
    assert_eq!(count_lines(&r, whole), 2, "{}", r.context());
    assert_eq!(count_lines(&r, ", lost 0"), 2, "{}", r.context());
}

/// With the kill point at `--batches`, nothing crashes and both replicas
/// apply every batch once.
#[test]
fn replication_without_a_crash() {
    let mut cmd = example("replication");
    cmd.args(["--batches", "50", "--kill-replica-after", "50"]);
    let r = run(cmd, "replication", Duration::from_secs(60));
    r.assert_success("replication");
    assert!(!r.stdout.contains("killed"), "{}", r.context());
    let clean = "applied 50 batches in LSN order, 0 duplicates ignored, lost 0";
    assert_eq!(count_lines(&r, clean), 2, "{}", r.context());
}

/// A flag that is not a number is refused, not ignored.
#[test]
fn replication_rejects_a_bad_flag() {
    let mut cmd = example("replication");
    cmd.args(["--batches", "many"]);
    let r = run(cmd, "replication", Duration::from_secs(30));
    assert!(!r.status.success(), "{}", r.context());
    assert!(
        r.stderr.contains("--batches takes a number"),
        "{}",
        r.context()
    );
}

// ---------------------------------------------------------------------------
// In-process components

/// The inproc components example answers every query through the
/// parser -> planner -> executor chain, and the malformed one with the
/// parser's error.
#[test]
fn inproc_components_answer_every_query() {
    let mut cmd = example("inproc_components");
    cmd.args(["--queries", "24", "--partitions", "3"]);
    let r = run(cmd, "inproc_components", Duration::from_secs(60));
    r.assert_success("inproc_components");
    r.assert_stdout_has("SUM 1 TO 1000 -> Ok(500500)");
    r.assert_stdout_has(r#"SUM everything -> Err("cannot parse \"SUM everything\"")"#);
    r.assert_stdout_has("25 of 25 answers right");
}

// ---------------------------------------------------------------------------
// Model-server manager

/// The manager example's stdout when TRAIN and INFER are answered: the
/// stand-in and `tests/py/model_server.py` answer alike.
const MANAGER_REPLIES: [&str; 2] = [
    r#"TRAIN -> success true, result "", err """#,
    r#"INFER -> success true, result [1008.0,24.0], err """#,
];

/// The manager example driving `tests/py/model_server.py` with `flags`.
/// The command line is split on spaces, so neither path may hold one.
fn manager(py: &Path, flags: &str, extra: &[&str]) -> Finished {
    let script = Path::new(MANIFEST_DIR).join("tests/py/model_server.py");
    let line = format!("{} {} {flags}", py.display(), script.display());
    assert!(
        !py.display().to_string().contains(' ') && !script.display().to_string().contains(' '),
        "a path with a space cannot go in --model-server: {line}"
    );
    let mut cmd = example("model_server_manager");
    cmd.arg("--model-server").arg(line).args(extra);
    run(cmd, "model_server_manager", Duration::from_secs(30))
}

/// The pid the manager reported for its model server.
fn child_pid(r: &Finished) -> u32 {
    r.stderr
        .lines()
        .find_map(|l| l.split("started model server pid ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no model server pid reported: {}", r.context()))
}

/// Fails (after killing it) if process `pid` is still alive a few seconds
/// after the manager exited. A zombie has ended: it counts as gone.
fn assert_gone(pid: u32, r: &Finished) {
    let stat = format!("/proc/{pid}/stat");
    let alive = || match std::fs::read_to_string(&stat) {
        Err(_) => false,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
    };
    let every = Duration::from_millis(20);
    if !common::wait_until_blocking(Duration::from_secs(5), every, || !alive()) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("model server pid {pid} was left running: {}", r.context());
    }
}

/// The manager trains and infers with the Python model server, delivers
/// CONNECTED once despite its duplicates, and leaves no model server
/// running.
#[test]
fn model_server_manager_trains_and_infers_with_python() {
    let Some(py) = python() else { return };
    // Three extra copies of CONNECTED, as if ACKs had been lost.
    let r = manager(&py, "--duplicate-connected 3", &[]);
    r.assert_success("model_server_manager");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "three stdout lines expected: {}",
        r.context()
    );
    assert_eq!(lines[..2], MANAGER_REPLIES, "{}", r.context());
    assert_eq!(
        lines[2],
        "CONNECTED delivered 1 time(s); the model server exited: exit status: 0",
        "{}",
        r.context()
    );
    assert_gone(child_pid(&r), &r);
}

/// A model server that exits before replying fails the manager at once,
/// with the reason.
#[test]
fn model_server_that_dies_before_replying_fails_fast() {
    let Some(py) = python() else { return };
    let r = manager(&py, "--die-before-reply", &[]);
    assert!(!r.status.success(), "{}", r.context());
    assert!(r.stdout.is_empty(), "{}", r.context());
    // Whichever the manager sees first: the session closing or the exit.
    assert!(
        r.stderr
            .contains("no reply to TRAIN: the connection closed")
            || r.stderr.contains("exited (exit status: 3) before TRAIN"),
        "{}",
        r.context()
    );
    assert!(r.elapsed < Duration::from_secs(5), "{}", r.context());
    assert_gone(child_pid(&r), &r);
}

/// A model server that never replies fails the manager at its timeout,
/// and is killed.
#[test]
fn model_server_that_never_replies_is_killed() {
    let Some(py) = python() else { return };
    let r = manager(&py, "--never-reply", &["--timeout", "1"]);
    assert!(!r.status.success(), "{}", r.context());
    assert!(
        r.stderr
            .contains("no reply to TRAIN: no reply before the deadline"),
        "{}",
        r.context()
    );
    // The script would live 60 s: gone now means the manager killed it.
    assert_gone(child_pid(&r), &r);
}

/// The manager says which model server program it could not start.
#[test]
fn model_server_manager_reports_a_missing_program() {
    let mut cmd = example("model_server_manager");
    cmd.args(["--model-server", "/nonexistent/model-server --flag"]);
    let r = run(cmd, "model_server_manager", Duration::from_secs(30));
    assert!(!r.status.success(), "{}", r.context());
    assert!(
        r.stderr.contains("cannot start /nonexistent/model-server:"),
        "{}",
        r.context()
    );
}

/// Without `--model-server`, the in-process stand-in answers as the Python
/// model server does.
#[test]
fn model_server_manager_with_the_stand_in() {
    let r = run(
        example("model_server_manager"),
        "model_server_manager",
        Duration::from_secs(30),
    );
    r.assert_success("model_server_manager (stand-in)");
    for line in MANAGER_REPLIES {
        r.assert_stdout_has(line);
    }
    r.assert_stdout_has("CONNECTED delivered 1 time(s)");
}

// ---------------------------------------------------------------------------
// The demo

/// `messenger demo` runs every scenario and passes their checks.
#[test]
fn demo_runs_every_scenario() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger"));
    cmd.arg("demo");
    let r = run(cmd, "messenger demo", Duration::from_secs(60));
    r.assert_success("messenger demo");
    for needle in [
        "0. transports",
        "1. replication over tcp",
        "killed replica-2 after 100 commits",
        "2. model-server loop over ipc",
        "delivered to the server loop 1 time(s), 2 resent copies suppressed",
        "3. in-process components over inproc",
        "all scenarios passed their checks",
    ] {
        r.assert_stdout_has(needle);
    }
}
