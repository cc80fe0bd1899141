//! Idle squatters against `messenger serve` where places run short for a
//! reason other than the listener's own connection limit, and what a
//! newcomer gets. THREATS.md rows 22 (idle eviction) and 23 (per-address
//! cap) promise that silent, handshaken connections give way to a
//! newcomer once idle for `evict_idle_after`; these tests check that
//! promise at the edges it missed.
//!
//! - Fault 4, the file-descriptor limit. With the common soft
//!   RLIMIT_NOFILE of 1024, 1,024 idle handshaken sessions kept every
//!   other client out for as long as they stayed: the process runs out of
//!   descriptors before the listener reaches its 1,024 places, so accept
//!   fails with EMFILE, the accept loop backs off, and idle eviction (which
//!   runs only at the connection limit) never does. Checked with soft and
//!   hard limit 1024 (a limit the server cannot raise) and with soft 1024
//!   under a higher hard limit (one it can).
//! - Fault 5, the per-address cap. 1,100 idle sessions from 127.0.0.1 (a
//!   co-located process: the model server and its manager share a host)
//!   fill that address's 256 places; a newcomer from 127.0.0.1 was closed
//!   at once with no eviction, and `messenger ping` / `request` gave up at
//!   once on the reset ("connection reset") instead of retrying until
//!   their timeout.
//!
//! In each test `messenger serve --bind tcp://127.0.0.1:0 --evict-idle-after
//! 2s` runs as a child; the squatters are raw ZMTP 3.1 DEALERs in this
//! process (greeting and READY with an identity of their own, then
//! nothing: no message, no answer to anything), held open until the check
//! is done; then the `messenger` client command, run from 127.0.0.1, must
//! be served within `evict_idle_after` + 2 s (4 s) of its start. The
//! client may need to retry its connect meanwhile; its timeout is 5 s.
//!
//! Linux only (RLIMIT_NOFILE is set through the C library, whose numbers
//! are Linux's). This process raises its own soft limit to its hard one
//! for its own ends of the connections, and needs a hard limit of at least
//! 2,048. The tests run one at a time: each holds over a thousand
//! connections and the time limits are about eviction, not load.
#![cfg(target_os = "linux")]

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw_zmtp::{self, FrameReader};
use common::{Ran, run_bounded, within};
use messenger::Endpoint;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// One test at a time in this binary (see the module's comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `--evict-idle-after` for every server here.
const IDLE_AFTER: Duration = Duration::from_secs(2);
/// How soon after it starts a newcomer must be served: the idle time,
/// and 2 s for the eviction, its retries and the round trip.
const SERVED_WITHIN: Duration = Duration::from_secs(4);
/// The usual soft RLIMIT_NOFILE.
const USUAL_SOFT_LIMIT: u64 = 1024;

// ---------------------------------------------------------------------------
// RLIMIT_NOFILE through the C library (linked already by std).

/// `struct rlimit` on Linux (`rlim_t` is 64 bits on every 64-bit target
/// and on 32-bit ones with 64-bit file offsets; `getrlimit` is then its
/// 64-bit form).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Rlimit {
    cur: u64,
    max: u64,
}

/// `RLIMIT_NOFILE` on Linux (all but alpha, mips, sparc).
const RLIMIT_NOFILE: i32 = 7;

unsafe extern "C" {
    #[cfg_attr(target_pointer_width = "32", link_name = "getrlimit64")]
    fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
    #[cfg_attr(target_pointer_width = "32", link_name = "setrlimit64")]
    fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
}

fn nofile() -> Rlimit {
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: `r` is a valid, writable `struct rlimit`.
    let rc = unsafe { getrlimit(RLIMIT_NOFILE, &mut r) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    r
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, which must
/// be at least `need`: the squatters' ends are ours.
fn raise_own_nofile(need: u64) {
    let r = nofile();
    assert!(
        r.max >= need,
        "these tests need RLIMIT_NOFILE's hard limit to be at least {need} (it is {}): \
         this process holds one end of every squatter's connection",
        r.max
    );
    if r.cur < r.max {
        let raised = Rlimit {
            cur: r.max,
            max: r.max,
        };
        // SAFETY: `raised` is a valid `struct rlimit`.
        let rc = unsafe { setrlimit(RLIMIT_NOFILE, &raised) };
        assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    }
}

/// A child's RLIMIT_NOFILE (soft, hard), from /proc.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/limits: {e}"));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no 'Max open files' in /proc/{pid}/limits:\n{limits}"));
    let mut words = line["Max open files".len()..].split_whitespace();
    let soft = words.next().unwrap_or_default().to_string();
    let hard = words.next().unwrap_or_default().to_string();
    (soft, hard)
}

// ---------------------------------------------------------------------------
// `messenger serve` with a chosen descriptor limit.

/// A running `messenger serve --quiet --bind tcp://127.0.0.1:0
/// --evict-idle-after 2s`, killed when dropped.
struct Serve {
    child: Child,
    pid: u32,
    port: u16,
    endpoint: Endpoint,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Serve {
    /// Starts it with RLIMIT_NOFILE's soft limit at `soft` (unless `None`:
    /// inherited) and its hard limit at `hard` (unless `None`: left as
    /// is), and waits (10 s at most) until it says where it listens.
    async fn start(soft: Option<u64>, hard: Option<u64>) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger"));
        cmd.args(["serve", "--bind", "tcp://127.0.0.1:0", "--quiet"])
            .arg("--evict-idle-after")
            .arg(format!("{}s", IDLE_AFTER.as_secs()))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(soft) = soft {
            // SAFETY: between fork and exec the closure only calls
            // getrlimit and setrlimit (async-signal-safe) on its own stack.
            unsafe {
                cmd.pre_exec(move || {
                    let mut r = Rlimit { cur: 0, max: 0 };
                    if getrlimit(RLIMIT_NOFILE, &mut r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let want = Rlimit {
                        cur: soft,
                        max: hard.unwrap_or(r.max),
                    };
                    if setrlimit(RLIMIT_NOFILE, &want) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("cannot start messenger serve");
        let pid = child.id().expect("serve has a pid");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "serve printed no listening line within 10 s ({other:?}); stderr:\n{}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            ),
        };
        // --quiet: nothing more should come, but keep draining anyway.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let endpoint: Endpoint = v["listening"]
            .as_str()
            .unwrap_or_else(|| panic!("expected {{\"listening\": ...}}, got {v}"))
            .parse()
            .expect("a valid endpoint");
        let port = match &endpoint {
            Endpoint::Tcp { port, .. } if *port != 0 => *port,
            other => panic!("not a resolved tcp endpoint: {other}"),
        };
        Serve {
            child,
            pid,
            port,
            endpoint,
            stderr,
        }
    }

    /// Its last `n` lines of stderr, for failure messages.
    fn stderr_tail(&self, n: usize) -> String {
        let all = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panics (with its stderr) if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("serve exited ({status}); stderr:\n{}", self.stderr_tail(20));
        }
    }
}

// ---------------------------------------------------------------------------
// Squatters

/// What became of one squatter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The server answered its greeting and READY: a session.
    Handshaken,
    /// The server closed it (or sent ERROR) before READY.
    Closed,
    /// Connected, but no answer yet when the others had settled (left in
    /// the accept queue, or held at a limit): held open all the same.
    Pending,
    /// The connect itself failed.
    Refused,
}

/// Idle squatters, held open until dropped.
struct Squatters {
    /// The connections of those handshaken or pending.
    held: Vec<FrameReader<TcpStream>>,
    handshaken: usize,
    closed: usize,
    pending: usize,
    refused: usize,
}

impl std::fmt::Display for Squatters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} handshaken, {} closed by the server, {} pending, {} refused",
            self.handshaken, self.closed, self.pending, self.refused
        )
    }
}

/// How long the squatters' outcomes must stay unchanged, once every one
/// has connected, before the rest count as pending.
const SETTLED: Duration = Duration::from_secs(1);

/// `n` raw ZMTP 3.1 DEALERs dialled to 127.0.0.1:`port`, the i-th from
/// source address `sources[i % len]`, each with identity `squatter-{i}`:
/// each sends its greeting and READY and then nothing at all (it never
/// reads past the server's READY, so it answers nothing). Waits until
/// every one is handshaken, closed or refused, or until nothing has
/// changed for [`SETTLED`] after the last connect.
async fn squat(port: u16, sources: &[Ipv4Addr], n: usize) -> Squatters {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    // Dials in flight at once: gentle on the listen backlog.
    let dialing = Arc::new(Semaphore::new(64));
    let dialled = Arc::new(AtomicUsize::new(0));
    for i in 0..n {
        let from = sources[i % sources.len()];
        let (tx, stop, dialing, dialled) = (
            tx.clone(),
            stop.clone(),
            Arc::clone(&dialing),
            Arc::clone(&dialled),
        );
        tokio::spawn(async move {
            let permit = dialing.acquire_owned().await.unwrap();
            let dial = async {
                let socket = TcpSocket::new_v4()?;
                socket.bind((from, 0).into())?;
                let mut s = socket.connect((Ipv4Addr::LOCALHOST, port).into()).await?;
                s.set_nodelay(true)?;
                let identity = format!("squatter-{i}");
                s.write_all(&raw_zmtp::hello(1, "DEALER", identity.as_bytes()))
                    .await?;
                Ok::<_, std::io::Error>(s)
            };
            let dialled_now = tokio::time::timeout(Duration::from_secs(5), dial).await;
            dialled.fetch_add(1, Ordering::SeqCst);
            drop(permit);
            let stream = match dialled_now {
                Ok(Ok(s)) => s,
                _ => {
                    let _ = tx.send((Fate::Refused, None));
                    return;
                }
            };
            let mut r = FrameReader::new(stream);
            let handshake = async {
                r.greeting().await?;
                let f = r.command().await?;
                Ok::<_, std::io::Error>(f.command_name() == Some(&b"READY"[..]))
            };
            let fate = tokio::select! {
                h = handshake => match h {
                    Ok(true) => Fate::Handshaken,
                    Ok(false) | Err(_) => Fate::Closed,
                },
                _ = stop.cancelled() => Fate::Pending,
            };
            let keep = (fate != Fate::Closed).then_some(r);
            let _ = tx.send((fate, keep));
        });
    }
    drop(tx);
    let mut squatters = Squatters {
        held: Vec::new(),
        handshaken: 0,
        closed: 0,
        pending: 0,
        refused: 0,
    };
    let take = |(fate, kept): (Fate, Option<FrameReader<TcpStream>>), s: &mut Squatters| {
        match fate {
            Fate::Handshaken => s.handshaken += 1,
            Fate::Closed => s.closed += 1,
            Fate::Pending => s.pending += 1,
            Fate::Refused => s.refused += 1,
        }
        s.held.extend(kept);
    };
    within(120, "the squatters settle", async {
        let mut reported = 0;
        while reported < n {
            match tokio::time::timeout(SETTLED, rx.recv()).await {
                Ok(Some(outcome)) => {
                    take(outcome, &mut squatters);
                    reported += 1;
                }
                Ok(None) => break,
                // Quiet: settled, once every squatter has connected.
                Err(_) if dialled.load(Ordering::SeqCst) == n => break,
                Err(_) => {}
            }
        }
        // The rest have connected and wait for an answer: held as they are.
        stop.cancel();
        while let Some(outcome) = rx.recv().await {
            take(outcome, &mut squatters);
        }
    })
    .await;
    squatters
}

/// Runs the `messenger` command with `args` (from 127.0.0.1: it dials
/// 127.0.0.1), killed after 20 s.
async fn messenger_command(args: Vec<String>) -> Ran {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_messenger"));
    cmd.args(&args).env("NO_COLOR", "1");
    tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(20)))
        .await
        .expect("the client's thread")
        .expect("cannot run the messenger command")
}

/// Checks that a client command run while the squatters hold their places
/// succeeded within [`SERVED_WITHIN`] of its start.
fn assert_served(ran: &Ran, what: &str, server: &Serve, squatters: &Squatters) {
    let report = format!(
        "{what}: exit {:?} after {:.2?} (squatters: {squatters})\nstdout:\n{}\nstderr:\n{}\nserve's stderr (tail):\n{}",
        ran.status,
        ran.elapsed,
        ran.stdout.trim(),
        ran.stderr.trim(),
        server.stderr_tail(10)
    );
    eprintln!("{what}: exit {:?} after {:.2?}", ran.status, ran.elapsed);
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "not served: {report}"
    );
    assert!(
        ran.elapsed <= SERVED_WITHIN,
        "served only after {:.2?}, more than evict_idle_after + 2 s: {report}",
        ran.elapsed
    );
}

/// `messenger ping <endpoint> -c 1 --timeout 5s`.
fn ping(endpoint: &Endpoint) -> Vec<String> {
    ["ping", &endpoint.to_string(), "-c", "1", "--timeout", "5s"]
        .map(String::from)
        .to_vec()
}

// ---------------------------------------------------------------------------
// Fault 4: the descriptor limit

/// Squatters per source address in the descriptor tests, and the
/// addresses: 4 x 256 = 1,024 sessions, each address within the default
/// per-address cap (256). The newcomer dials from 127.0.0.1, which none
/// of them use, so only the descriptor and connection limits are in its
/// way, not the per-address cap (fault 5's).
const FD_SOURCES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
];
const FD_SQUATTERS: usize = 1_024;

/// 1,024 idle handshaken squatters from 4 addresses against `serve`
/// started with soft RLIMIT_NOFILE 1024 and hard limit `hard` (`None`:
/// this process's); then `messenger ping` from 127.0.0.1 must be
/// answered within 4 s.
async fn squatters_at_the_descriptor_limit(hard: Option<u64>) {
    let _serial = SERIAL.lock().await;
    raise_own_nofile(2 * FD_SQUATTERS as u64);
    let mut server = Serve::start(Some(USUAL_SOFT_LIMIT), hard).await;
    let (_, child_hard) = nofile_of(server.pid);
    let want_hard = hard.unwrap_or(nofile().max).to_string();
    assert_eq!(child_hard, want_hard, "serve's hard RLIMIT_NOFILE");
    let squatters = squat(server.port, &FD_SOURCES, FD_SQUATTERS).await;
    eprintln!("soft 1024, hard {want_hard}: {squatters}");
    // They hold a large share of what the server can take (whatever its
    // limits): the scenario took place.
    assert!(
        squatters.handshaken >= 256,
        "only {squatters}; serve's stderr:\n{}",
        server.stderr_tail(10)
    );
    assert_eq!(squatters.refused, 0, "{squatters}");
    server.assert_running();
    let ran = messenger_command(ping(&server.endpoint)).await;
    let what = format!("ping past 1,024 squatters at soft RLIMIT_NOFILE 1024, hard {want_hard}");
    assert_served(&ran, &what, &server, &squatters);
    server.assert_running();
    drop(squatters);
}

/// Fault 4 where the server cannot raise its limit (soft = hard = 1024):
/// 1,024 idle handshaken sessions (from 127.0.0.2-5, 256 each) must not
/// keep a newcomer out. The descriptors run out before the connection
/// limit is reached, so the server must treat that as its limit and let
/// an idle session give way: `messenger ping` from 127.0.0.1 is answered
/// within `evict_idle_after` (2 s) + 2 s of its start. On the faulty code
/// accept fails with EMFILE over and over and nobody is evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatters_at_a_fixed_descriptor_limit_give_way() {
    squatters_at_the_descriptor_limit(Some(USUAL_SOFT_LIMIT)).await;
}

/// Fault 4 where the server can raise its limit (soft 1024, the hard
/// limit left as it is, here above 1024): the same 1,024 squatters must
/// not keep `messenger ping` out either (the server may raise its soft
/// limit and reach its connection limit, where an idle session gives
/// way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatters_at_the_usual_soft_descriptor_limit_give_way() {
    squatters_at_the_descriptor_limit(None).await;
}

// ---------------------------------------------------------------------------
// Fault 5: squatters from the newcomer's own address

const SAME_ADDRESS_SQUATTERS: usize = 1_100;

/// 1,100 idle squatters from 127.0.0.1 (256 get a session, the default
/// per-address cap; the server closes the others, which are then simply
/// gone); then the client command `args(endpoint)` (from 127.0.0.1 too) must succeed
/// within 4 s and print `expect` on its stdout.
async fn same_address_with(args: impl FnOnce(&Endpoint) -> Vec<String>, expect: &str) {
    let _serial = SERIAL.lock().await;
    raise_own_nofile(2 * SAME_ADDRESS_SQUATTERS as u64);
    // The descriptor limit is this process's (raised above), so only the
    // per-address cap is in the way.
    let mut server = Serve::start(None, None).await;
    let squatters = squat(server.port, &[Ipv4Addr::LOCALHOST], SAME_ADDRESS_SQUATTERS).await;
    eprintln!("1,100 from 127.0.0.1: {squatters}");
    // 127.0.0.1's places are full: the scenario took place.
    assert!(
        squatters.handshaken >= 256,
        "only {squatters}; serve's stderr:\n{}",
        server.stderr_tail(10)
    );
    assert_eq!(squatters.refused, 0, "{squatters}");
    server.assert_running();
    let args = args(&server.endpoint);
    let what = format!(
        "`messenger {}` past 1,100 squatters from its own address",
        args.join(" ")
    );
    let ran = messenger_command(args).await;
    assert_served(&ran, &what, &server, &squatters);
    assert!(
        ran.stdout.contains(expect),
        "{what}: expected {expect:?} on stdout, got:\n{}",
        ran.stdout
    );
    server.assert_running();
    drop(squatters);
}

/// Fault 5 with `messenger ping <ep> -c 1 --timeout 5s`: squatters from
/// the client's own address (a co-located process) fill that address's
/// places; the client must still be answered within `evict_idle_after` +
/// 2 s, the server letting that address's idlest idle session give way
/// and the client retrying its reset or refused connect until its
/// timeout. On the faulty code the newcomer is reset at once and ping
/// gives up at once ("connection reset").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_past_squatters_from_its_own_address() {
    same_address_with(ping, "1 received").await;
}

/// Fault 5 with `messenger request <ep> hi --callback 1 --timeout 5s` (an
/// ECHO): as for ping, it must print the answer `hi` within
/// `evict_idle_after` + 2 s instead of giving up at once on the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_gets_past_squatters_from_its_own_address() {
    same_address_with(
        |ep| {
            [
                "request",
                &ep.to_string(),
                "hi",
                "--callback",
                "1",
                "--timeout",
                "5s",
            ]
            .map(String::from)
            .to_vec()
        },
        "hi",
    )
    .await;
}
