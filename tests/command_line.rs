//! The command line as a shell uses it: output into a pipe that closes
//! early (`| head -1`) ends a command quietly, as it ends any Unix tool,
//! and a nonsense argument is refused before anything runs.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{no_slc, serve, wait_child};

/// `ping | head -1`: the pipe closes after the first line; ping stops
/// there, without a panic (it printed "failed printing to stdout: Broken
/// pipe" with a backtrace, exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_into_a_pipe_closed_early_ends_quietly() {
    let (server, bound, _p) = serve("tcp", messenger::Config::default(), no_slc).await;
    let ep = bound.endpoint.to_string();
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = spawn(&["ping", &ep, "-c", "50", "-i", "10ms"], Stdio::piped());
        let mut first = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("a line");
        // The reader is gone: the pipe is closed, as `head -1` closes it.
        assert!(first.starts_with("PING"), "{first:?}");
        finish(&mut child)
    })
    .await
    .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {stderr}");
    server.shutdown().await;
}

/// Ctrl-C stops `ping` as it stops ping(8): with its statistics for what
/// was sent so far, and success if any reply came. It died without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_stopped_with_ctrl_c_says_its_statistics() {
    let (server, bound, _p) = serve("tcp", messenger::Config::default(), no_slc).await;
    let ep = bound.endpoint.to_string();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = spawn(&["ping", &ep, "-c", "1000", "-i", "10ms"], Stdio::piped());
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = String::new();
        // The first reply: ping is under way.
        while !lines.contains("reply from") {
            let mut line = String::new();
            if out.read_line(&mut line).expect("a line") == 0 {
                break;
            }
            lines.push_str(&line);
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let _ = out.read_to_string(&mut lines);
        let (status, stderr) = finish(&mut child);
        (status, lines, stderr)
    })
    .await
    .unwrap();
    assert!(stdout.contains("ping statistics"), "{stdout}\n{stderr}");
    assert!(stdout.contains("rtt min/avg/max/p99"), "{stdout}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {stderr}");
    server.shutdown().await;
}

/// `serve --stats-interval 0s` started and then panicked on a runtime
/// thread, serving on without its stats; `ping -c 0` connected to say
/// nothing was sent and fail. Both are refused as arguments (exit 2). A
/// bench body no message can carry is said at once (it was measured as
/// 10 s of failed requests, then exited 0: "0 round trips/s", NaN).
#[test]
fn nonsense_arguments_are_refused_before_anything_runs() {
    let serve = [
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--stats-interval",
        "0s",
    ];
    refused(&serve, Some(2));
    refused(&["ping", "tcp://127.0.0.1:1", "-c", "0"], Some(2));
    let bench = [
        "bench",
        "--transports",
        "inproc",
        "--sizes",
        "20m",
        "--duration",
        "10ms",
    ];
    refused(&bench, None);
}

/// Runs `messenger ARGS`, which must fail within 5 s (with `code`, if
/// given), without a panic.
fn refused(args: &[&str], code: Option<i32>) {
    let started = std::time::Instant::now();
    let mut child = spawn(args, Stdio::null());
    let (status, stderr) = finish(&mut child);
    let took = started.elapsed();
    let exited = status.and_then(|s| s.code());
    match code {
        Some(code) => assert_eq!(exited, Some(code), "{args:?}: {stderr}"),
        None => assert!(
            exited.is_some_and(|c| c != 0),
            "{args:?}: {exited:?} {stderr}"
        ),
    }
    assert!(took < Duration::from_secs(5), "{args:?}: took {took:?}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

/// Starts `messenger ARGS` with no stdin, its stdout to `stdout` and its
/// stderr piped (for [`finish`]).
fn spawn(args: &[&str], stdout: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_messenger"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn messenger")
}

/// Waits (up to 20 s) for `child`, whose stderr is piped; its exit status
/// (`None`: killed at the limit) and what it wrote there.
fn finish(child: &mut Child) -> (Option<std::process::ExitStatus>, String) {
    let status = wait_child(child, Duration::from_secs(20)).expect("wait");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    (status, stderr)
}
