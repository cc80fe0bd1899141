//! Round trips across processes: the messenger against the same wire
//! protocol done minimally on its own dependency (the `zeromq` crate), with
//! and without the frame guard's relay hop, on libzmq (`--features
//! compare`), and against tarpc's echo. Every comparison of one cell runs
//! in the same process run, alternating implementations round by round;
//! figures are medians over rounds and ratios are medians of per-round
//! ratios.
//!
//! ```text
//! cargo bench --bench roundtrip                          # suite "compare"
//! cargo bench --bench roundtrip --features compare       # + libzmq
//! cargo bench --bench roundtrip -- inproc memory peers   # the other suites
//! cargo bench --bench roundtrip -- --help
//! ```
//!
//! Servers run in child processes (this binary with `__serve KIND`, or the
//! `messenger serve --slc echo` command itself); clients run here.

use messenger_scenarios::bench as cli_bench;

mod alloc;
mod cpu;
#[cfg(feature = "compare")]
mod libzmq;
mod raw;
mod rpc;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use cli_bench::{Sample, Window, human_size};
use messenger::{Config, ConnectionId, Endpoint, Messenger};
use messenger_proto::wire;
use serde::Serialize;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Suite {
    /// tcp and ipc against the comparisons, 1 and 1000 in flight.
    Compare,
    /// One process, inproc, 1000 in flight.
    Inproc,
    /// Heap bytes per pending request with 1,000,000 pending.
    Memory,
    /// 1,000 peers x 10 in flight against 8 peers x 1,250 in flight
    /// (and each layout against libzmq's, with --features compare).
    Peers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Impl {
    /// messenger client -> `messenger serve --slc echo`.
    Messenger,
    /// Minimal protocol client -> minimal server, both on the zeromq crate.
    Zeromq,
    /// messenger client -> minimal zeromq-crate server (client-side cost).
    MessengerToZeromq,
    /// Minimal zeromq-crate client -> `messenger serve` (server-side cost).
    ZeromqToMessenger,
    /// tarpc 0.38 echo (bincode over tcp or a Unix socket).
    Tarpc,
    /// Minimal zeromq-crate client -> minimal server on libzmq (--features compare).
    ZeromqToLibzmq,
    /// Minimal client and server, both on libzmq (--features compare).
    Libzmq,
    /// Minimal libzmq client -> `messenger serve` (--features compare).
    LibzmqToMessenger,
    /// messenger client -> minimal libzmq server (--features compare).
    MessengerToLibzmq,
    /// The same, its requests kept in flight from one task (a
    /// `FuturesUnordered` of `request` futures) instead of one task each:
    /// how the minimal libzmq client keeps them, from one loop.
    MessengerOneTaskToLibzmq,
    /// Minimal libzmq client -> `OTHER serve`, another build of the
    /// command given with --other (--features compare): before and after
    /// a change, in one run.
    LibzmqToOther,
    /// messenger client -> `OTHER serve` (--other).
    MessengerToOther,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Messenger => "messenger",
            Impl::Zeromq => "zeromq-crate",
            Impl::MessengerToZeromq => "messenger->zeromq-crate",
            Impl::ZeromqToMessenger => "zeromq-crate->messenger",
            Impl::Tarpc => "tarpc",
            Impl::ZeromqToLibzmq => "zeromq-crate->libzmq",
            Impl::Libzmq => "libzmq",
            Impl::LibzmqToMessenger => "libzmq->messenger",
            Impl::MessengerToLibzmq => "messenger->libzmq",
            Impl::MessengerOneTaskToLibzmq => "messenger-1task->libzmq",
            Impl::LibzmqToOther => "libzmq->other",
            Impl::MessengerToOther => "messenger->other",
        }
    }

    fn server(self) -> ServerKind {
        match self {
            Impl::Messenger | Impl::ZeromqToMessenger | Impl::LibzmqToMessenger => {
                ServerKind::Messenger
            }
            Impl::Zeromq | Impl::MessengerToZeromq => ServerKind::Raw,
            Impl::Tarpc => ServerKind::Tarpc,
            Impl::ZeromqToLibzmq
            | Impl::Libzmq
            | Impl::MessengerToLibzmq
            | Impl::MessengerOneTaskToLibzmq => ServerKind::Libzmq,
            Impl::LibzmqToOther | Impl::MessengerToOther => ServerKind::Other,
        }
    }
}

/// Round trips across processes (see the file's documentation).
#[derive(Debug, Parser)]
#[command(name = "roundtrip")]
struct Args {
    /// Suites to run (default: compare).
    #[arg(value_enum)]
    suites: Vec<Suite>,
    /// Alternating rounds per cell.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured time per run.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per run (and until every request slot went round once).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Transports for the compare suite.
    #[arg(long, value_delimiter = ',', default_value = "tcp,ipc")]
    transports: Vec<String>,
    /// Body sizes (64, 1k, 64k).
    #[arg(long, value_delimiter = ',', default_value = "64,1k", value_parser = cli_bench::parse_size)]
    sizes: Vec<usize>,
    /// Requests in flight for the compare suite.
    #[arg(long = "in-flight", value_delimiter = ',', default_value = "1,1000")]
    in_flight: Vec<usize>,
    /// Implementations for the compare suite (default: all built).
    #[arg(long, value_enum, value_delimiter = ',')]
    impls: Vec<Impl>,
    /// Another build of the `messenger` command, for the *->other
    /// implementations: its `serve --slc echo` is measured in the same
    /// rounds as this build's (a change's before and after).
    #[arg(long, value_name = "PATH")]
    other: Option<std::path::PathBuf>,
    /// Pending requests for the memory suite.
    #[arg(long, default_value_t = 1_000_000)]
    pending: usize,
    /// Peer layouts for the peers suite, PEERSxIN_FLIGHT.
    #[arg(long, value_delimiter = ',', default_value = "8x1250,1000x10")]
    layouts: Vec<String>,
    /// Write every sample and summary as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // Before anything else allocates: the memory suite's figures are
    // differences of what is live.
    if argv.iter().skip(1).any(|a| a == "memory") {
        alloc::count();
    }
    if argv.get(1).map(String::as_str) == Some("__serve") {
        let kind = argv.get(2).cloned().unwrap_or_default();
        child_main(&kind);
        return;
    }
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

// ---------------------------------------------------------------------------
// Servers in child processes.

fn child_main(kind: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::Builder::new()
        .prefix("rt-server-")
        .tempdir()
        .expect("tempdir");
    let endpoints = rt.block_on(async {
        match kind {
            "raw" | "raw-ack" | "raw-silent" => {
                let answer = match kind {
                    "raw" => raw::Answer::Echo,
                    "raw-ack" => raw::Answer::AckOnly,
                    _ => raw::Answer::Silent,
                };
                let (router, eps) = raw::bind_router(dir.path()).await;
                tokio::spawn(raw::serve(router, answer));
                eps
            }
            "tarpc" => rpc::bind(dir.path()).await,
            #[cfg(feature = "compare")]
            "libzmq" => libzmq::bind(dir.path()),
            other => panic!("unknown server kind {other:?}"),
        }
    });
    println!("READY {}", endpoints.join(" "));
    // Serve until the parent closes our stdin (or dies).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(rt);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ServerKind {
    Messenger,
    Raw,
    RawAckOnly,
    RawSilent,
    Tarpc,
    Libzmq,
    /// `messenger serve` of the build given with --other.
    Other,
}

struct Server {
    child: Child,
    /// Ends when its stdin closes (our children); else on SIGTERM.
    ends_on_eof: bool,
    /// tcp endpoint, then ipc endpoint.
    endpoints: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    /// Asks the server to end so it cleans up (and a profiler wrapping it
    /// can write its output): our children exit when their stdin closes,
    /// `messenger serve` on SIGTERM. Killed after 30 s.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let exited = |child: &mut Child, within: Duration| {
            let deadline = std::time::Instant::now() + within;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        if self.ends_on_eof && exited(&mut self.child, Duration::from_secs(5)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !exited(&mut self.child, Duration::from_secs(30)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    fn start(kind: ServerKind, other: Option<&std::path::Path>) -> Server {
        match kind {
            ServerKind::Messenger => return Self::messenger(&messenger_command()),
            ServerKind::Other => {
                let path = other.expect("the *->other implementations need --other PATH");
                return Self::messenger(path);
            }
            _ => {}
        }
        let name = match kind {
            ServerKind::Raw => "raw",
            ServerKind::RawAckOnly => "raw-ack",
            ServerKind::RawSilent => "raw-silent",
            ServerKind::Tarpc => "tarpc",
            ServerKind::Libzmq => "libzmq",
            ServerKind::Messenger | ServerKind::Other => unreachable!(),
        };
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .args(["__serve", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("server output");
        let endpoints: Vec<String> = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("server {name} did not start: {line:?}"))
            .split(' ')
            .map(str::to_owned)
            .collect();
        Server {
            child,
            ends_on_eof: true,
            endpoints,
            _dir: None,
        }
    }

    /// The real thing: `messenger serve --slc echo` on tcp and ipc, of the
    /// command at `path`.
    fn messenger(path: &std::path::Path) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("rt-messenger-")
            .tempdir()
            .expect("tempdir");
        let ipc = format!("ipc://{}", dir.path().join("m.sock").display());
        let mut child = Command::new(path)
            .args([
                "serve",
                "--bind",
                "tcp://127.0.0.1:0",
                "--bind",
                &ipc,
                "--slc",
                "echo",
                // The peers suite connects 1,000 peers, all from loopback.
                "--max-connections-per-address",
                "1024",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn messenger serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut endpoints = Vec::new();
        while endpoints.len() < 2 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("messenger serve ended before listening");
            }
            let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
            if let Some(ep) = v.get("listening").and_then(|e| e.as_str()) {
                endpoints.push(ep.to_owned());
            }
        }
        // Its server loop prints a line per NOOP message: keep draining.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Server {
            child,
            ends_on_eof: false,
            endpoints,
            _dir: Some(dir),
        }
    }

    fn endpoint(&self, transport: &str) -> &str {
        match transport {
            "tcp" => &self.endpoints[0],
            "ipc" => &self.endpoints[1],
            other => panic!("no {other} endpoint"),
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics.

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Serialize)]
struct Cell {
    transport: String,
    size: usize,
    in_flight: usize,
    /// Samples per implementation, one per round.
    samples: BTreeMap<&'static str, Vec<Sample>>,
    /// Median round trips/s per implementation.
    median_rps: BTreeMap<&'static str, f64>,
    /// Median p50 latency (µs) per implementation.
    median_p50_us: BTreeMap<&'static str, f64>,
    /// Median p99 latency (µs) per implementation.
    median_p99_us: BTreeMap<&'static str, f64>,
    /// Median client CPU µs per round trip per implementation.
    median_client_cpu_us: BTreeMap<&'static str, f64>,
    /// Median server CPU µs per round trip per implementation.
    median_server_cpu_us: BTreeMap<&'static str, f64>,
    /// Median client and server costs per round trip, field by field.
    median_costs: BTreeMap<&'static str, [cli_bench::Cost; 2]>,
    /// Median over rounds of round trips/s divided by zeromq-crate's in the same round.
    rps_vs_zeromq: BTreeMap<&'static str, f64>,
    /// The same against tarpc.
    rps_vs_tarpc: BTreeMap<&'static str, f64>,
    /// Median over rounds of p50 latency divided by zeromq-crate's in the same round.
    p50_vs_zeromq: BTreeMap<&'static str, f64>,
    /// Median over rounds of round trips/s divided by libzmq's (a minimal
    /// client and server on libzmq) in the same round.
    rps_vs_libzmq: BTreeMap<&'static str, f64>,
    /// The same for p50 latency.
    p50_vs_libzmq: BTreeMap<&'static str, f64>,
}

/// The median over rounds of `f(a) / f(b)`, each round's pair taken side
/// by side.
fn median_ratio(a: &[Sample], b: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| f(a) / f(b)).collect())
}

fn per_round_ratio(
    samples: &BTreeMap<&'static str, Vec<Sample>>,
    base: &str,
    f: impl Fn(&Sample) -> f64,
) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let Some(b) = samples.get(base) else {
        return out;
    };
    for (name, v) in samples {
        out.insert(*name, median_ratio(v, b, &f));
    }
    out
}

fn summarize(
    transport: &str,
    size: usize,
    in_flight: usize,
    samples: BTreeMap<&'static str, Vec<Sample>>,
) -> Cell {
    let med = |f: &dyn Fn(&Sample) -> f64| -> BTreeMap<&'static str, f64> {
        samples
            .iter()
            .map(|(k, v)| (*k, median(v.iter().map(f).collect())))
            .collect()
    };
    let median_rps = med(&|s| s.round_trips_per_s);
    let median_p50_us = med(&|s| s.p50_us);
    let median_p99_us = med(&|s| s.p99_us);
    let median_client_cpu_us = med(&|s| s.client_cost.map_or(f64::NAN, |c| c.user_us + c.sys_us));
    let median_server_cpu_us = med(&|s| s.server_cost.map_or(f64::NAN, |c| c.user_us + c.sys_us));
    let median_costs = samples
        .iter()
        .map(|(k, v)| {
            let side = |get: &dyn Fn(&Sample) -> Option<cli_bench::Cost>| {
                let m = |f: &dyn Fn(&cli_bench::Cost) -> f64| {
                    median(
                        v.iter()
                            .map(|s| get(s).map_or(f64::NAN, |c| f(&c)))
                            .collect(),
                    )
                };
                cli_bench::Cost {
                    user_us: m(&|c| c.user_us),
                    sys_us: m(&|c| c.sys_us),
                    switches: m(&|c| c.switches),
                }
            };
            (*k, [side(&|s| s.client_cost), side(&|s| s.server_cost)])
        })
        .collect();
    Cell {
        transport: transport.to_owned(),
        size,
        in_flight,
        rps_vs_zeromq: per_round_ratio(&samples, "zeromq-crate", |s| s.round_trips_per_s),
        rps_vs_tarpc: per_round_ratio(&samples, "tarpc", |s| s.round_trips_per_s),
        p50_vs_zeromq: per_round_ratio(&samples, "zeromq-crate", |s| s.p50_us),
        rps_vs_libzmq: per_round_ratio(&samples, "libzmq", |s| s.round_trips_per_s),
        p50_vs_libzmq: per_round_ratio(&samples, "libzmq", |s| s.p50_us),
        samples,
        median_rps,
        median_p50_us,
        median_p99_us,
        median_client_cpu_us,
        median_server_cpu_us,
        median_costs,
    }
}

fn print_cell(c: &Cell, rounds: usize) {
    println!(
        "\n== {} {} x{} in flight (median of {rounds} alternating rounds; ratios are medians of per-round ratios)",
        c.transport,
        human_size(c.size),
        c.in_flight
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>11} {:>9} {:>10} {:>12} {:>11} {:>12} {:>12} {:>6}",
        "implementation",
        "rt/s",
        "p50 µs",
        "p99 µs",
        "rt/s vs zmq",
        "vs tarpc",
        "p50 vs zmq",
        "rt/s vs libzmq",
        "p50 vs libzmq",
        "client CPU/rt",
        "server CPU/rt",
        "errors"
    );
    for (name, v) in &c.samples {
        let fmt = |m: &BTreeMap<&'static str, f64>| {
            m.get(name)
                .filter(|x| x.is_finite())
                .map_or("-".to_owned(), |x| format!("{x:.2}x"))
        };
        let us = |m: &BTreeMap<&'static str, f64>| {
            m.get(name)
                .filter(|x| x.is_finite())
                .map_or("-".to_owned(), |x| format!("{x:.1} µs"))
        };
        println!(
            "{:<26} {:>10.0} {:>10.1} {:>10.1} {:>11} {:>9} {:>10} {:>12} {:>11} {:>12} {:>12} {:>6}",
            name,
            c.median_rps[name],
            c.median_p50_us[name],
            c.median_p99_us[name],
            fmt(&c.rps_vs_zeromq),
            fmt(&c.rps_vs_tarpc),
            fmt(&c.p50_vs_zeromq),
            fmt(&c.rps_vs_libzmq),
            fmt(&c.p50_vs_libzmq),
            us(&c.median_client_cpu_us),
            us(&c.median_server_cpu_us),
            v.iter().map(|s| s.errors).sum::<u64>()
        );
    }
    println!(
        "  per round trip:          client user µs  sys µs  switches | server user µs  sys µs  switches"
    );
    for (name, [c, s]) in &c.median_costs {
        println!(
            "  {:<26} {:>12.2} {:>7.2} {:>9.2} | {:>14.2} {:>7.2} {:>9.2}",
            name, c.user_us, c.sys_us, c.switches, s.user_us, s.sys_us, s.switches
        );
    }
}

// ---------------------------------------------------------------------------
// Clients.

/// A messenger client per server endpoint, kept across rounds. One each,
/// so no two connections to one server share a routing id (a minimal
/// ROUTER bound to tcp and ipc sees both as one peer).
#[derive(Default)]
struct MessengerClients {
    conns: BTreeMap<String, (Messenger, ConnectionId)>,
}

impl MessengerClients {
    async fn conn(&mut self, endpoint: &str) -> (Messenger, ConnectionId) {
        let key = endpoint.to_string();
        if let Some((m, c)) = self.conns.get(&key) {
            return (m.clone(), *c);
        }
        let n = self.conns.len();
        let config = messenger::Config {
            ..messenger::Config::default()
        };
        let name = format!("rt-client-{}-{n}", std::process::id());
        let m = Messenger::builder()
            .identity(name)
            .config(config)
            .build()
            .expect("messenger");
        let ep: Endpoint = endpoint.parse().expect("endpoint");
        let c = m.make_connection(&ep).await.expect("connect");
        self.conns.insert(key, (m.clone(), c));
        (m, c)
    }

    async fn shutdown(self) {
        futures::future::join_all(self.conns.values().map(|(m, _)| m.shutdown())).await;
    }
}

fn window(args: &Args) -> Window {
    Window {
        warmup: args.warmup,
        duration: args.duration,
        count: None,
        probe: Some(cpu::probe),
    }
}

static NEXT_RAW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn raw_identity() -> String {
    let n = NEXT_RAW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("raw-{}-{n}", std::process::id())
}

async fn measure(
    imp: Impl,
    server: &Server,
    clients: &mut MessengerClients,
    transport: &str,
    size: usize,
    in_flight: usize,
    w: Window,
) -> Result<Sample, String> {
    let ep = server.endpoint(transport).to_owned();
    let quiet = |_: u64| {};
    match imp {
        Impl::Messenger
        | Impl::MessengerToZeromq
        | Impl::MessengerToLibzmq
        | Impl::MessengerToOther => {
            let (m, conn) = clients.conn(&ep).await;
            let one = cli_bench::request_fn(&m, conn, cli_bench::Via::Echo, cli_bench::body(size));
            Ok(cli_bench::closed_loop(in_flight, w, one, quiet).await)
        }
        Impl::MessengerOneTaskToLibzmq => {
            let (m, conn) = clients.conn(&ep).await;
            let one = cli_bench::request_fn(&m, conn, cli_bench::Via::Echo, cli_bench::body(size));
            Ok(cli_bench::closed_loop_pipelined(one, in_flight, w, quiet).await)
        }
        Impl::Zeromq | Impl::ZeromqToMessenger | Impl::ZeromqToLibzmq => {
            let c = raw::RawClient::connect(&ep, &raw_identity()).await?;
            c.closed_loop(wire::ECHO, size, in_flight, w, quiet).await
        }
        Impl::Tarpc => {
            let c = rpc::connect(&ep, in_flight).await?;
            Ok(rpc::closed_loop(c, size, in_flight, w, quiet).await)
        }
        #[cfg(feature = "compare")]
        Impl::Libzmq | Impl::LibzmqToMessenger | Impl::LibzmqToOther => {
            libzmq::closed_loop(&ep, size, in_flight, w, quiet).await
        }
        #[cfg(not(feature = "compare"))]
        Impl::Libzmq | Impl::LibzmqToMessenger | Impl::LibzmqToOther => {
            Err("build with --features compare".into())
        }
    }
}

// ---------------------------------------------------------------------------
// Suites.

#[derive(Debug, Default, Serialize)]
struct Report {
    command: String,
    compare: Vec<Cell>,
    inproc: Vec<Cell>,
    memory: Vec<serde_json::Value>,
    peers: Vec<serde_json::Value>,
}

async fn run(args: Args) {
    let mut suites = args.suites.clone();
    if suites.is_empty() {
        suites.push(Suite::Compare);
    }
    suites.sort();
    suites.dedup();
    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Report::default()
    };
    for suite in suites {
        match suite {
            Suite::Compare => report.compare = compare(&args).await,
            Suite::Inproc => report.inproc = inproc(&args).await,
            Suite::Memory => report.memory = memory(&args).await,
            Suite::Peers => report.peers = peers(&args).await,
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("json");
        std::fs::write(path, text).expect("write json");
        eprintln!("wrote {}", path.display());
    }
}

async fn compare(args: &Args) -> Vec<Cell> {
    let mut impls = if args.impls.is_empty() {
        let mut all = vec![
            Impl::Messenger,
            Impl::Zeromq,
            Impl::MessengerToZeromq,
            Impl::ZeromqToMessenger,
            Impl::Tarpc,
        ];
        if cfg!(feature = "compare") {
            all.extend([
                Impl::ZeromqToLibzmq,
                Impl::Libzmq,
                Impl::LibzmqToMessenger,
                Impl::MessengerToLibzmq,
                Impl::MessengerOneTaskToLibzmq,
            ]);
            if args.other.is_some() {
                all.push(Impl::LibzmqToOther);
            }
        } else {
            eprintln!("(libzmq comparisons skipped: build with --features compare)");
        }
        if args.other.is_some() {
            all.push(Impl::MessengerToOther);
        }
        all
    } else {
        args.impls.clone()
    };
    impls.sort();
    impls.dedup();
    let mut servers: BTreeMap<ServerKind, Server> = BTreeMap::new();
    for i in &impls {
        servers
            .entry(i.server())
            .or_insert_with(|| Server::start(i.server(), args.other.as_deref()));
    }
    let mut clients = MessengerClients::default();
    let w = window(args);
    let cells = args.transports.len() * args.sizes.len() * args.in_flight.len();
    let bar = indicatif::ProgressBar::new((cells * args.rounds * impls.len()) as u64);
    let mut out = Vec::new();
    for transport in &args.transports {
        for &size in &args.sizes {
            for &n in &args.in_flight {
                let mut samples: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
                for round in 0..args.rounds {
                    // Rotate the order each round so no implementation always
                    // runs right after the same other one.
                    let mut order = impls.clone();
                    order.rotate_left(round % impls.len());
                    for imp in order {
                        bar.set_message(format!(
                            "{transport} {} x{n} {}",
                            human_size(size),
                            imp.name()
                        ));
                        let server = &servers[&imp.server()];
                        cpu::set_server(Some(server.child.id()));
                        match measure(imp, server, &mut clients, transport, size, n, w).await {
                            Ok(mut s) => {
                                (s.client_cost, s.server_cost) = cpu::per_round_trip(s.round_trips);
                                samples.entry(imp.name()).or_default().push(s)
                            }
                            Err(e) => eprintln!("{}: {e}", imp.name()),
                        }
                        bar.inc(1);
                    }
                }
                let cell = summarize(transport, size, n, samples);
                bar.suspend(|| print_cell(&cell, args.rounds));
                out.push(cell);
            }
        }
    }
    bar.finish_and_clear();
    clients.shutdown().await;
    out
}

/// The floor of any channel-based request/reply on this runtime with one
/// task per request in flight: a server task answering each request's
/// oneshot with its body, fed by a bounded mpsc.
fn channel_echo()
-> tokio::sync::mpsc::Sender<(bytes::Bytes, tokio::sync::oneshot::Sender<bytes::Bytes>)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(
        bytes::Bytes,
        tokio::sync::oneshot::Sender<bytes::Bytes>,
    )>(4096);
    tokio::spawn(async move {
        while let Some((body, reply)) = rx.recv().await {
            let _ = reply.send(body);
        }
    });
    tx
}

/// One request through [`channel_echo`] at a time (a closed loop's
/// worker): a oneshot and the body (a reference count) per request, the
/// sender borrowed, as `Requester` borrows its messenger.
#[derive(Clone)]
struct ChannelPair {
    /// The echo task's queue.
    echo: tokio::sync::mpsc::Sender<(bytes::Bytes, tokio::sync::oneshot::Sender<bytes::Bytes>)>,
    /// What every request carries.
    body: bytes::Bytes,
}

impl cli_bench::Worker for ChannelPair {
    async fn one(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.echo
            .send((self.body.clone(), tx))
            .await
            .map_err(|e| e.to_string())?;
        rx.await.map(|_| ()).map_err(|e| e.to_string())
    }
}

async fn inproc(args: &Args) -> Vec<Cell> {
    let server = Messenger::builder()
        .identity("rt-inproc-server")
        .build()
        .expect("messenger");
    let ep: Endpoint = format!("inproc://rt-{}", std::process::id())
        .parse()
        .expect("ep");
    server
        .listen_for_connection(&ep, cli_bench::echo_slc)
        .await
        .expect("listen");
    let client = Messenger::builder()
        .identity("rt-inproc-client")
        .build()
        .expect("messenger");
    let conn = client.make_connection(&ep).await.expect("connect");
    let echo = channel_echo();
    let w = window(args);
    let mut out = Vec::new();
    for (&size, &n) in args
        .sizes
        .iter()
        .flat_map(|s| args.in_flight.iter().map(move |n| (s, n)))
    {
        let mut samples: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
        for round in 0..args.rounds {
            for which in [round % 2 == 0, round % 2 != 0] {
                if which {
                    let body = cli_bench::body(size);
                    let one = cli_bench::request_fn(&client, conn, cli_bench::Via::Echo, body);
                    cpu::set_server(None);
                    let mut s = cli_bench::closed_loop(n, w, one, |_| {}).await;
                    (s.client_cost, _) = cpu::per_round_trip(s.round_trips);
                    samples.entry("messenger-inproc").or_default().push(s);
                } else {
                    let one = ChannelPair {
                        echo: echo.clone(),
                        body: cli_bench::body(size),
                    };
                    cpu::set_server(None);
                    let mut s = cli_bench::closed_loop(n, w, one, |_| {}).await;
                    (s.client_cost, _) = cpu::per_round_trip(s.round_trips);
                    samples.entry("tokio-channels").or_default().push(s);
                }
            }
        }
        let cell = summarize("inproc", size, n, samples);
        print_cell(&cell, args.rounds);
        let per_round = |f: fn(&Sample) -> f64| {
            let ours = &cell.samples["messenger-inproc"];
            let theirs = &cell.samples["tokio-channels"];
            median_ratio(ours, theirs, f)
        };
        let ratio = per_round(|s| s.round_trips_per_s);
        let p50 = per_round(|s| s.p50_us);
        println!(
            "   messenger / tokio-channels: {ratio:.2}x round trips/s, {p50:.2}x p50; target >= 1,000,000 round trips/s: {:.2}x of target",
            cell.median_rps["messenger-inproc"] / 1e6
        );

        out.push(cell);
    }
    client.shutdown().await;
    server.shutdown().await;
    out
}

/// Waits until `f` holds or `limit` passes.
async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while !f() {
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn memory(args: &Args) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    // What `request()` adds to the callback-table entry measured below: the
    // oneshot its future waits on (the future itself is the caller's).
    let (before, _) = alloc::live();
    let channels: Vec<_> = (0..10_000)
        .map(|_| tokio::sync::oneshot::channel::<Result<messenger::Incoming, messenger::Error>>())
        .collect();
    let oneshot = (alloc::live().0 - before) as f64 / channels.len() as f64
        - std::mem::size_of_val(&channels[0]) as f64;
    drop(channels);
    println!(
        "\n== memory: request() adds a oneshot::channel::<Reply>() of {oneshot:.0} heap bytes per pending request to the figures below (measured with send_message + Callback, whose empty closure allocates nothing)"
    );
    out.push(serde_json::json!({ "case": "request() oneshot", "bytes": oneshot }));
    for (kind, label) in [
        (ServerKind::RawAckOnly, "ACKed, reply pending"),
        (ServerKind::RawSilent, "unACKed, reply pending"),
    ] {
        eprintln!("memory: {label}: starting");
        let server = Server::start(kind, None);
        let config = Config {
            request_timeout: Duration::from_secs(3600),
            // Resending stays on (the unACKed set is kept), but no resend
            // is due during the measurement.
            resend_interval: Some(Duration::from_secs(3600)),
            // With resending on, the high-water mark is also the window of
            // unACKed messages: room for all of them in the unACKed case.
            send_queue_capacity: if kind == ServerKind::RawSilent {
                args.pending + 8192
            } else {
                Config::default().send_queue_capacity
            },
            // The same window in bytes (8 MiB by default, about 94,000 of
            // these messages): room for all of them too.
            send_window_bytes: if kind == ServerKind::RawSilent {
                usize::MAX
            } else {
                Config::default().send_window_bytes
            },
            ..Config::default()
        };
        let m = Messenger::builder()
            .identity(format!("rt-mem-{}", std::process::id()))
            .config(config)
            .build()
            .expect("messenger");
        let ep: Endpoint = server.endpoint("tcp").parse().expect("ep");
        let conn = m.make_connection(&ep).await.expect("connect");
        let body = cli_bench::body(64);
        // Warm the queues and the allocator with a few thousand pending
        // requests, then count only the growth from there.
        for _ in 0..4096 {
            m.send_message(
                conn,
                wire::NOOP,
                &body,
                Some(messenger::Callback::new(|_| {})),
            )
            .await
            .expect("send");
        }
        if kind == ServerKind::RawAckOnly {
            wait_until(Duration::from_secs(10), || m.stats().pending_messages == 0).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (before, allocs_before) = alloc::live();
        let n = args.pending;
        eprintln!("memory: {label}: sending {n}");
        let started = std::time::Instant::now();
        for i in 0..n {
            let send = m.send_message(
                conn,
                wire::NOOP,
                &body,
                Some(messenger::Callback::new(|_| {})),
            );
            match tokio::time::timeout(Duration::from_secs(3), send).await {
                Ok(r) => {
                    r.expect("send");
                }
                Err(_) => {
                    eprintln!(
                        "send {i} stuck: connected={} stats={:?}",
                        m.is_connected(conn),
                        m.stats()
                    );
                    break;
                }
            }
        }
        let send_secs = started.elapsed().as_secs_f64();
        if kind == ServerKind::RawAckOnly {
            let acked =
                wait_until(Duration::from_secs(60), || m.stats().pending_messages == 0).await;
            if !acked {
                eprintln!("memory: not every message was ACKed in time");
            }
        } else {
            // Let the writer drain its queue to the socket.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (after, allocs_after) = alloc::live();
        let s = m.stats();
        let per = (after - before) as f64 / n as f64;
        let allocs_per = (allocs_after - allocs_before) as f64 / n as f64;
        println!(
            "\n== memory, {label}: {n} pending requests (64 B bodies, tcp)\n   {per:.1} heap bytes per pending request ({allocs_per:.2} allocations each); pending_callbacks={} pending_messages={}; sending took {send_secs:.1} s",
            s.pending_callbacks, s.pending_messages
        );
        if kind == ServerKind::RawAckOnly {
            println!(
                "   target <= 100 bytes of bookkeeping per pending request: {}",
                if per <= 100.0 { "met" } else { "NOT met" }
            );
        }
        out.push(serde_json::json!({
            "case": label,
            "pending": n,
            "bytes_per_pending": per,
            "allocations_per_pending": allocs_per,
            "pending_callbacks": s.pending_callbacks,
            "pending_messages": s.pending_messages,
            "send_seconds": send_secs,
        }));
        eprintln!("memory: {label}: shutting down");
        m.shutdown().await;
        drop(server);
    }
    out
}

fn parse_layout(s: &str) -> (usize, usize) {
    let (p, k) = s.split_once('x').expect("PEERSxIN_FLIGHT");
    (p.parse().expect("peers"), k.parse().expect("in flight"))
}

/// Who talks to whom in the peers suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerSeries {
    /// messenger clients -> `messenger serve`.
    Messenger,
    /// Minimal zeromq-crate clients -> minimal zeromq-crate server.
    Zeromq,
    /// Minimal libzmq DEALERs, polled by one thread -> minimal libzmq
    /// ROUTER (`--features compare`).
    #[cfg(feature = "compare")]
    Libzmq,
}

impl PeerSeries {
    fn name(self) -> &'static str {
        match self {
            PeerSeries::Messenger => "messenger",
            PeerSeries::Zeromq => "zeromq-crate",
            #[cfg(feature = "compare")]
            PeerSeries::Libzmq => "libzmq",
        }
    }
}

async fn raw_clients(endpoint: &str, n: usize) -> Vec<raw::RawClient> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(
            raw::RawClient::connect(endpoint, &raw_identity())
                .await
                .expect("raw connect"),
        );
    }
    v
}

/// Runs closed loops on the first `p` raw clients of `pool`, `k` in flight each.
async fn raw_peers(
    pool: &mut Vec<raw::RawClient>,
    p: usize,
    k: usize,
    size: usize,
    w: Window,
) -> Sample {
    let rest = pool.split_off(p);
    let used = std::mem::take(pool);
    let (s, mut back) = raw::closed_loop_many(used, wire::ECHO, size, k, w, |_| {})
        .await
        .expect("raw peers");
    back.extend(rest);
    *pool = back;
    s
}

async fn peers(args: &Args) -> Vec<serde_json::Value> {
    let layouts: Vec<(usize, usize)> = args.layouts.iter().map(|s| parse_layout(s)).collect();
    let msg_server = Server::start(ServerKind::Messenger, None);
    let raw_server = Server::start(ServerKind::Raw, None);
    let ep: Endpoint = msg_server.endpoint("tcp").parse().expect("ep");
    let most = layouts.iter().map(|l| l.0).max().unwrap_or(0);
    eprintln!("peers: connecting {most} messengers and {most} raw DEALERs ...");
    let mut peers = Vec::new();
    for i in 0..most {
        let m = Messenger::builder()
            .identity(format!("rt-peer-{}-{i}", std::process::id()))
            .build()
            .expect("messenger");
        let c = m.make_connection(&ep).await.expect("connect");
        peers.push((m, c));
    }
    let mut raws = raw_clients(raw_server.endpoint("tcp"), most).await;
    let size = args.sizes.first().copied().unwrap_or(64);
    let w = window(args);
    #[cfg(feature = "compare")]
    let zmq_server = Server::start(ServerKind::Libzmq, None);
    #[cfg(feature = "compare")]
    let series = vec![
        PeerSeries::Messenger,
        PeerSeries::Zeromq,
        PeerSeries::Libzmq,
    ];
    #[cfg(not(feature = "compare"))]
    let series = vec![PeerSeries::Messenger, PeerSeries::Zeromq];
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for round in 0..args.rounds {
        let mut order: Vec<(PeerSeries, (usize, usize))> = layouts
            .iter()
            .flat_map(|&l| series.iter().map(move |&who| (who, l)))
            .collect();
        let len = order.len();
        order.rotate_left(round % len);
        for (who, (p, k)) in order {
            let key = format!("{} {p}x{k}", who.name());
            let server = match who {
                PeerSeries::Messenger => &msg_server,
                PeerSeries::Zeromq => &raw_server,
                #[cfg(feature = "compare")]
                PeerSeries::Libzmq => &zmq_server,
            };
            cpu::set_server(Some(server.child.id()));
            let mut s = match who {
                PeerSeries::Messenger => {
                    let body = cli_bench::body(size);
                    let workers: Vec<_> = peers[..p]
                        .iter()
                        .flat_map(|(m, c)| {
                            let one =
                                cli_bench::request_fn(m, *c, cli_bench::Via::Echo, body.clone());
                            std::iter::repeat_n(one, k)
                        })
                        .collect();
                    cli_bench::closed_loop_each(workers, w, |_| {}).await
                }
                PeerSeries::Zeromq => raw_peers(&mut raws, p, k, size, w).await,
                #[cfg(feature = "compare")]
                PeerSeries::Libzmq => {
                    libzmq::closed_loop_peers(zmq_server.endpoint("tcp"), p, k, size, w)
                        .await
                        .expect("libzmq peers")
                }
            };
            (s.client_cost, s.server_cost) = cpu::per_round_trip(s.round_trips);
            eprintln!("  {key}: {:.0} rt/s", s.round_trips_per_s);
            samples.entry(key).or_default().push(s);
        }
    }
    let mut out = Vec::new();
    println!(
        "\n== peers: tcp, {} bodies (median of {} alternating rounds)",
        human_size(size),
        args.rounds
    );
    let med: BTreeMap<&String, f64> = samples
        .iter()
        .map(|(k, v)| (k, median(v.iter().map(|s| s.round_trips_per_s).collect())))
        .collect();
    for (k, v) in &samples {
        let p50 = median(v.iter().map(|s| s.p50_us).collect());
        let errors: u64 = v.iter().map(|s| s.errors).sum();
        let ccpu = median(
            v.iter()
                .map(|s| s.client_cost.map_or(f64::NAN, |c| c.user_us + c.sys_us))
                .collect(),
        );
        let scpu = median(
            v.iter()
                .map(|s| s.server_cost.map_or(f64::NAN, |c| c.user_us + c.sys_us))
                .collect(),
        );
        println!(
            "{:<36} {:>12.0} rt/s   p50 {:>9.1} µs   CPU/rt client {ccpu:>5.1} µs server {scpu:>5.1} µs   errors {errors}",
            k, med[k], p50
        );
        out.push(serde_json::json!({ "layout": k, "median_rps": med[k], "median_p50_us": p50, "samples": v }));
    }
    // Each layout, the messenger against libzmq in the same round.
    for &(p, k) in &layouts {
        let a = samples.get(&format!("messenger {p}x{k}"));
        let b = samples.get(&format!("libzmq {p}x{k}"));
        if let (Some(a), Some(b)) = (a, b) {
            let r = median_ratio(a, b, |s| s.round_trips_per_s);
            println!(
                "messenger / libzmq at {p}x{k} = {r:.2}x (median of per-round ratios; target >= 2x at 1000x10)"
            );
            out.push(serde_json::json!({ "who": "messenger / libzmq", "ratio": r, "of": format!("{p}x{k}") }));
        }
    }
    if let [(p0, k0), (p1, k1), ..] = layouts[..] {
        for &who in &series {
            let a = samples.get(&format!("{} {p1}x{k1}", who.name()));
            let b = samples.get(&format!("{} {p0}x{k0}", who.name()));
            if let (Some(a), Some(b)) = (a, b) {
                let r = median_ratio(a, b, |s| s.round_trips_per_s);
                println!(
                    "{}: {p1}x{k1} / {p0}x{k0} = {r:.2}x (median of per-round ratios; target >= 0.8x for the messenger)",
                    who.name()
                );
                out.push(serde_json::json!({ "who": who.name(), "ratio": r, "of": format!("{p1}x{k1} / {p0}x{k0}") }));
            }
        }
    }
    let (resends, timeouts) = peers.iter().fold((0, 0), |(r, t), (m, _)| {
        let s = m.stats();
        (r + s.resends, t + s.timeouts)
    });
    println!(
        "messenger clients, all rounds: {resends} resends, {timeouts} timeouts (the server's counters follow on stderr as it shuts down)"
    );
    out.push(serde_json::json!({ "client_resends": resends, "client_timeouts": timeouts }));
    futures::future::join_all(peers.iter().map(|(m, _)| m.shutdown())).await;
    out
}

/// The `messenger` command, built in release beside this bench (the command
/// is another package of the workspace, so cargo does not hand its path to
/// this one): `cargo build` is a no-op when it is up to date.
fn messenger_command() -> std::path::PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "messenger-cli",
            "--bin",
            "messenger",
        ])
        .status()
        .expect("run cargo build for the messenger command");
    assert!(status.success(), "cannot build the messenger command");
    let exe = std::env::current_exe().expect("own path");
    // target/release/deps/roundtrip-HASH -> target/release/messenger
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/release");
    dir.join(format!("messenger{}", std::env::consts::EXE_SUFFIX))
}
