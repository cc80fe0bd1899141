//! `messenger bench`: request/reply round-trip latency (1 in flight) and
//! pipelined throughput (N in flight) over tcp, ipc and inproc.
//!
//! Every request is `Messenger::request(conn, ECHO, body)` (the
//! builtin ECHO, with resending and duplicate suppression on, as users run
//! it), or with `--via slc` a NOOP-addressed request that the server's
//! server loop answers (`messenger serve --slc echo`). N in flight means N
//! tasks, each sending its next request as soon as its reply arrives (a
//! closed loop); every completion inside the measured window counts, after
//! a warm-up whose completions do not.
//!
//! The `messenger bench` command (src/cli/bench.rs) and the bench harness
//! (benches/benches/roundtrip) both measure with this code, so their
//! figures mean the same thing.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use messenger::{ConnectionId, ECHO, Endpoint, Incoming, Messenger, NOOP, Responder};
use serde::Serialize;

/// Which callback the requests address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The builtin ECHO (callback 1), answered by the receiver's
    /// ProcessMessage loop.
    Echo,
    /// NOOP (callback 0) with a reply callback: the listener's server loop
    /// answers (`messenger serve --slc echo`, which also prints each message).
    Slc,
}

/// A transport to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// tcp://127.0.0.1.
    Tcp,
    /// ipc:// in a temporary directory.
    Ipc,
    /// inproc:// (in-process channels; only without --connect).
    Inproc,
}

/// Parses `64`, `1k`, `64K`, `1m` (binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1024),
        Some((i, 'm' | 'M')) => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s:?} (try 64, 1k, 64k)"))
}

/// One measured cell.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Round trips completed inside the window.
    pub round_trips: u64,
    /// Requests that failed inside the window (timeouts, disconnects, wrong replies).
    pub errors: u64,
    /// The window, in seconds.
    pub seconds: f64,
    /// `round_trips / seconds`.
    pub round_trips_per_s: f64,
    /// Round-trip latency percentiles of the completions in the window, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// What the client process spent per round trip in the window, when
    /// the bench harness samples it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cost: Option<Cost>,
    /// The same for the server process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cost: Option<Cost>,
}

/// Per round trip costs of one process over a measured window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cost {
    /// User CPU µs per round trip.
    pub user_us: f64,
    /// System CPU µs per round trip.
    pub sys_us: f64,
    /// Context switches (voluntary + involuntary) per round trip.
    pub switches: f64,
}

/// When a closed loop stops measuring.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Measured time (unless `count` ends it first).
    pub duration: Duration,
    /// Measured round trips that end the window.
    pub count: Option<u64>,
    /// Called with `true` as the measured window opens and `false` as it
    /// closes (the bench harness samples CPU time there).
    pub probe: Option<fn(bool)>,
}

/// The latency percentile `p` (0..=1) of sorted nanoseconds, nearest rank.
pub fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    crate::nearest_rank(sorted_ns, p).map_or(f64::NAN, |ns| ns as f64 / 1e3)
}

/// Builds a sample from the window, counts and latencies (any order).
pub fn sample(seconds: f64, round_trips: u64, errors: u64, mut lat_ns: Vec<u64>) -> Sample {
    lat_ns.sort_unstable();
    Sample {
        round_trips,
        errors,
        seconds,
        round_trips_per_s: if seconds > 0.0 {
            round_trips as f64 / seconds
        } else {
            0.0
        },
        p50_us: percentile_us(&lat_ns, 0.50),
        p99_us: percentile_us(&lat_ns, 0.99),
        p999_us: percentile_us(&lat_ns, 0.999),
        max_us: lat_ns.last().map_or(f64::NAN, |&n| n as f64 / 1e3),
        client_cost: None,
        server_cost: None,
    }
}

/// Phases of a closed loop, shared by the controller and the workers.
pub const WARMUP: u8 = 0;
/// Completions now are measured.
pub const MEASURE: u8 = 1;
/// Workers stop issuing requests.
pub const STOP: u8 = 2;

/// Drives the phases of a closed loop whose workers count every successful
/// completion in `done`: the warm-up lasts `window.warmup` and at least until
/// `in_flight` round trips completed (each request slot went round once, up
/// to 10 s more), then the window runs for `window.duration` or until
/// `window.count` more round trips. `progress` gets the round trips measured
/// so far about every 50 ms. Returns the window's length in seconds.
pub async fn control(
    phase: &AtomicU8,
    done: &AtomicU64,
    in_flight: usize,
    window: Window,
    mut progress: impl FnMut(u64),
) -> f64 {
    tokio::time::sleep(window.warmup).await;
    let patience = Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::Relaxed) < in_flight as u64 && Instant::now() < patience {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Some(probe) = window.probe {
        probe(true);
    }
    phase.store(MEASURE, Ordering::Relaxed);
    let start = Instant::now();
    let base = done.load(Ordering::Relaxed);
    let mut last_report = start;
    loop {
        let elapsed = start.elapsed();
        let n = done.load(Ordering::Relaxed) - base;
        let finished = match window.count {
            Some(c) => n >= c,
            None => elapsed >= window.duration,
        };
        if finished {
            break;
        }
        if last_report.elapsed() >= Duration::from_millis(50) {
            progress(n);
            last_report = Instant::now();
        }
        let nap = match window.count {
            Some(_) => Duration::from_millis(1),
            None => Duration::from_millis(20).min(window.duration - elapsed),
        };
        tokio::time::sleep(nap).await;
    }
    phase.store(STOP, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    if let Some(probe) = window.probe {
        probe(false);
    }
    seconds
}

/// What one task of a closed loop does, again and again: one round trip.
/// Any `Fn() -> impl Future` is one; [`Requester`] is the messenger's,
/// which borrows its messenger and body instead of cloning them (and
/// boxing a future) per request, so the figures carry the messenger's cost
/// and not the harness's.
pub trait Worker: Send + 'static {
    /// One round trip; `Err` describes what went wrong.
    fn one(&self) -> impl Future<Output = Result<(), String>> + Send + '_;
}

impl<F, Fut> Worker for F
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn one(&self) -> impl Future<Output = Result<(), String>> + Send + '_ {
        self()
    }
}

/// Runs `in_flight` tasks, each awaiting `one.one()` in a loop, through the
/// warm-up and the measured window (see [`control`]). A round trip counts
/// if it completes inside the window; its latency is from its request's
/// start.
pub async fn closed_loop<W: Worker + Clone>(
    in_flight: usize,
    window: Window,
    one: W,
    progress: impl FnMut(u64),
) -> Sample {
    closed_loop_each(vec![one; in_flight.max(1)], window, progress).await
}

/// [`closed_loop`] with one task per element of `workers`, each awaiting
/// its own `one()` in a loop (e.g. spread over several connections).
pub async fn closed_loop_each<W: Worker>(
    workers: Vec<W>,
    window: Window,
    progress: impl FnMut(u64),
) -> Sample {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let done = Arc::new(AtomicU64::new(0));
    let in_flight = workers.len();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in workers {
        let (phase, done) = (Arc::clone(&phase), Arc::clone(&done));
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while phase.load(Ordering::Relaxed) != STOP {
                let start = Instant::now();
                let r = worker.one().await;
                tally.record(r, start.elapsed(), &phase, &done);
            }
            tally
        });
    }
    let seconds = control(&phase, &done, in_flight, window, progress).await;
    let mut all = Tally::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(t) = r {
            all.join(t);
        }
    }
    all.sample(seconds)
}

/// What a closed loop's requests came to: latencies measured, errors.
#[derive(Default)]
struct Tally {
    /// Latency of each round trip in the measurement window, in ns.
    lat: Vec<u64>,
    /// Requests that failed in the window.
    errors: u64,
    /// The first of those failures, to report.
    first_error: Option<String>,
}

impl Tally {
    /// Counts one round trip that took `took`; kept if the window is on.
    fn record(
        &mut self,
        r: Result<(), String>,
        took: Duration,
        phase: &AtomicU8,
        done: &AtomicU64,
    ) {
        let measuring = phase.load(Ordering::Relaxed) == MEASURE;
        match r {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
                if measuring {
                    self.lat.push(took.as_nanos() as u64);
                }
            }
            Err(e) if measuring => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
            Err(_) => {}
        }
    }

    /// Adds another loop's tally.
    fn join(&mut self, other: Tally) {
        self.lat.extend(other.lat);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The sample of a window of `seconds`.
    fn sample(self, seconds: f64) -> Sample {
        if let Some(e) = &self.first_error {
            tracing::warn!(error = %e, errors = self.errors, "requests failed during the measurement");
        }
        let round_trips = self.lat.len() as u64;
        sample(seconds, round_trips, self.errors, self.lat)
    }
}

/// [`closed_loop`] from one task: `in_flight` calls of `worker.one()` kept
/// going in a `FuturesUnordered`, each replaced as it ends, as a
/// single-threaded libzmq client keeps its requests in flight from one
/// loop. The same `one()` as a task per request; only who polls it
/// differs (no task woken, and no worker woken to steal, per reply).
pub async fn closed_loop_pipelined<W: Worker + Sync>(
    worker: W,
    in_flight: usize,
    window: Window,
    progress: impl FnMut(u64),
) -> Sample {
    use futures::StreamExt;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let done = Arc::new(AtomicU64::new(0));
    let in_flight = in_flight.max(1);
    let loop_task = {
        let (phase, done) = (Arc::clone(&phase), Arc::clone(&done));
        tokio::spawn(async move {
            fn timed<W: Worker>(
                w: &W,
            ) -> impl Future<Output = (Result<(), String>, Duration)> + '_ {
                let start = Instant::now();
                let one = w.one();
                async move { (one.await, start.elapsed()) }
            }
            let mut running = futures::stream::FuturesUnordered::new();
            for _ in 0..in_flight {
                running.push(timed(&worker));
            }
            let mut tally = Tally::default();
            while let Some((r, took)) = running.next().await {
                tally.record(r, took, &phase, &done);
                if phase.load(Ordering::Relaxed) != STOP {
                    running.push(timed(&worker));
                }
            }
            tally
        })
    };
    let seconds = control(&phase, &done, in_flight, window, progress).await;
    let tally = loop_task.await.unwrap_or_else(|_| Tally {
        first_error: Some("the request loop panicked".into()),
        ..Tally::default()
    });
    tally.sample(seconds)
}

/// One request through the messenger at a time (a [`Worker`]), checking
/// the reply's length.
#[derive(Clone)]
pub struct Requester {
    /// The client.
    m: Messenger,
    /// Its connection to the server.
    conn: ConnectionId,
    /// The callback addressed: ECHO or NOOP (see [`Via`]).
    dst: u64,
    /// What every request carries.
    body: Bytes,
}

impl Worker for Requester {
    async fn one(&self) -> Result<(), String> {
        let reply = self
            .m
            .request(self.conn, self.dst, &self.body)
            .await
            .map_err(|e| e.to_string())?;
        if reply.body.len() == self.body.len() {
            Ok(())
        } else {
            Err(format!(
                "reply of {} bytes to {} bytes",
                reply.body.len(),
                self.body.len()
            ))
        }
    }
}

/// One request through the messenger, checking the reply's length.
pub fn request_fn(m: &Messenger, conn: ConnectionId, via: Via, body: Bytes) -> Requester {
    Requester {
        m: m.clone(),
        conn,
        dst: match via {
            Via::Echo => ECHO,
            Via::Slc => NOOP,
        },
        body,
    }
}

/// The server loop of the in-process server: answers what asks for a reply.
pub fn echo_slc(msg: Incoming, r: Responder) {
    if msg.src_cb != NOOP {
        let _ = r.try_reply(&msg.body);
    }
}

/// A body of `size` bytes.
pub fn body(size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// One row of the results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// tcp, ipc or inproc.
    pub transport: &'static str,
    /// The endpoint measured.
    pub endpoint: String,
    /// Body size in bytes.
    pub size: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// The measurement.
    #[serde(flatten)]
    pub sample: Sample,
    /// Body bytes per second each way, in MiB/s.
    pub body_mib_per_s: f64,
}

/// A body size as the tables print it: 64 B, 1 KiB, 16 MiB.
pub fn human_size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// An in-process server on every requested transport.
pub struct LocalServer {
    /// The server; shut it down when done.
    pub messenger: Messenger,
    /// Where it listens, one per requested transport.
    pub endpoints: Vec<(Transport, Endpoint)>,
    /// Holds the ipc socket's directory until the server goes.
    _dir: tempfile::TempDir,
}

pub async fn local_server(transports: &[Transport]) -> Result<LocalServer, String> {
    let messenger = Messenger::builder()
        .identity("bench-server")
        .build()
        .map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("messenger-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut endpoints = Vec::new();
    for &t in transports {
        let ep: Endpoint = match t {
            Transport::Tcp => "tcp://127.0.0.1:0".parse(),
            Transport::Ipc => format!("ipc://{}", dir.path().join("bench.sock").display()).parse(),
            Transport::Inproc => format!("inproc://bench-{}", std::process::id()).parse(),
        }
        .map_err(|e: messenger::Error| e.to_string())?;
        let info = messenger
            .listen_for_connection(&ep, echo_slc)
            .await
            .map_err(|e| e.to_string())?;
        endpoints.push((t, info.endpoint));
    }
    Ok(LocalServer {
        messenger,
        endpoints,
        _dir: dir,
    })
}

pub fn transport_of(ep: &Endpoint) -> Transport {
    match ep {
        Endpoint::Tcp { .. } => Transport::Tcp,
        Endpoint::Ipc(_) => Transport::Ipc,
        Endpoint::Inproc(_) => Transport::Inproc,
    }
}

pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Ipc => "ipc",
        Transport::Inproc => "inproc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("k").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1g").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ns: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&ns, 0.5), 500.0);
        assert_eq!(percentile_us(&ns, 0.99), 990.0);
        assert_eq!(percentile_us(&ns, 0.999), 999.0);
        assert_eq!(percentile_us(&[7000], 0.999), 7.0);
        assert!(percentile_us(&[], 0.5).is_nan());
        let s = sample(2.0, 1000, 3, ns.iter().rev().copied().collect());
        assert_eq!(s.round_trips_per_s, 500.0);
        assert_eq!(s.p50_us, 500.0);
        assert_eq!(s.max_us, 1000.0);
        assert_eq!(s.errors, 3);
    }

    #[tokio::test]
    async fn a_short_in_process_run_completes_round_trips() {
        let server = local_server(&[Transport::Inproc]).await.expect("server");
        let client = Messenger::builder()
            .identity("bench-test")
            .build()
            .expect("client");
        let (_, ep) = &server.endpoints[0];
        let conn = client.make_connection(ep).await.expect("connect");
        let window = Window {
            warmup: Duration::from_millis(10),
            duration: Duration::from_millis(50),
            count: None,
            probe: None,
        };
        for via in [Via::Echo, Via::Slc] {
            let one = request_fn(&client, conn, via, body(100));
            let s = closed_loop(4, window, one, |_| {}).await;
            assert!(s.round_trips > 0, "{via:?}: {s:?}");
            assert_eq!(s.errors, 0, "{via:?}: {s:?}");
        }
        client.shutdown().await;
        server.messenger.shutdown().await;
    }
}
