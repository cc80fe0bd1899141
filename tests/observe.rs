//! What an operator sees of `messenger serve` (issue 22): Prometheus
//! metrics over real HTTP while traffic flows, parsed by a real parser
//! (and checked by `promtool` where it is installed); JSON logs in which
//! no peer byte arrives raw; one timestamped stats line of rates per
//! tick; a clear error for a metrics port in use; `bench --plot`.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw_zmtp::{self, FrameReader};
use common::serve::{ServeProcess, http_get, metric};
use common::{RAW_TRANSPORTS, eventually, run_bounded, within};
use messenger::{ECHO, Endpoint, Messenger, NOOP};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Runs `promtool check metrics` on `text` where promtool is installed
/// (Debian's `prometheus` package); says SKIPPED otherwise.
fn promtool_check(text: &str) {
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "SKIPPED: promtool check metrics: promtool not runnable ({e}); apt-get install prometheus"
            );
            return;
        }
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("feed promtool");
    }
    let out = common::wait_child(&mut child, Duration::from_secs(30)).expect("promtool runs");
    let mut report = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut report);
    }
    assert!(
        out.is_some_and(|s| s.success()),
        "promtool check metrics failed:\n{report}\n--- the page:\n{text}"
    );
    eprintln!("promtool check metrics: ok");
}

/// Prometheus text of `serve`, with the series of `name` summed.
fn m(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

/// The count of a histogram's observations (its `_count` series).
fn observations(text: &str, name: &str) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_over_http_while_traffic_flows() {
    let serve = ServeProcess::start(&["--slc", "echo", "--metrics-addr", "127.0.0.1:0"]).await;
    let page = |serve: &ServeProcess| {
        let url = serve.metrics.clone().expect("a metrics URL");
        async move {
            tokio::task::spawn_blocking(move || http_get(&url))
                .await
                .expect("scrape task")
                .unwrap_or_else(|e| panic!("scrape: {e}"))
        }
    };
    let quiet = page(&serve).await;
    promtool_check(&quiet);
    for t in RAW_TRANSPORTS {
        let dir = [("direction", "inbound"), ("transport", t)];
        assert_eq!(m(&quiet, "messenger_connections", &dir), 0.0, "{t}");
    }

    // Traffic flows from two clients, one per transport, while we scrape.
    let mut clients = Vec::new();
    let mut traffic = Vec::new();
    for ep in [serve.tcp.clone(), serve.ipc.clone()] {
        let c = Messenger::new().unwrap();
        let conn = c.make_connection(&ep).await.unwrap();
        let cc = c.clone();
        traffic.push(tokio::spawn(async move {
            for i in 0u64.. {
                let to = if i % 2 == 0 { ECHO } else { NOOP };
                if cc.request(conn, to, b"traffic").await.is_err() {
                    break;
                }
            }
        }));
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = page(&serve).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = page(&serve).await;
    promtool_check(&second);
    for t in RAW_TRANSPORTS {
        let tr = [("transport", t)];
        let dir = [("direction", "inbound"), ("transport", t)];
        assert_eq!(m(&first, "messenger_connections", &dir), 1.0, "{t}");
        for name in [
            "messenger_messages_received_total",
            "messenger_messages_sent_total",
            "messenger_bytes_received_total",
            "messenger_bytes_sent_total",
        ] {
            let (a, b) = (m(&first, name, &tr), m(&second, name, &tr));
            assert!(
                a > 0.0 && b > a,
                "{name}{{{t}}}: {a} then {b}: counters move"
            );
        }
    }
    assert!(m(&second, "messenger_connections_opened_total", &[]) >= 2.0);
    assert!(
        observations(&second, "messenger_server_loop_duration_seconds") > 0.0,
        "the server loop's histogram has observations"
    );
    assert!(m(&second, "messenger_echoes_answered_total", &[]) > 0.0);

    for c in &clients {
        c.shutdown().await;
    }
    for t in traffic {
        let _ = within(5, "the traffic stops", t).await;
    }
    let mut last = String::new();
    let all_gone = common::wait_until(Duration::from_secs(5), || {
        last = http_get(serve.metrics.as_deref().unwrap()).unwrap_or_default();
        metric(&last, "messenger_connections", &[("direction", "inbound")]) == Some(0.0)
    })
    .await;
    assert!(
        all_gone,
        "connections go back down once the peers left:\n{last}"
    );
    let closed = m(&last, "messenger_connections_closed_total", &[]);
    assert!(closed >= 2.0, "{closed} sessions closed");
}

#[tokio::test]
async fn a_metrics_port_in_use_stops_serve_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_messenger"));
    cmd.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--metrics-addr",
        &addr,
    ]);
    let ran = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(15)))
        .await
        .unwrap()
        .unwrap();
    assert!(ran.status.is_some_and(|s| !s.success()), "{ran:?}");
    assert!(
        ran.stderr.contains("address in use") && ran.stderr.contains("--metrics-addr"),
        "{}",
        ran.stderr
    );
    assert!(
        !ran.stdout.contains("listening"),
        "it listened anyway: {}",
        ran.stdout
    );
    drop(taken);
}

/// A child process whose stdout and stderr are kept whole.
struct Child {
    child: tokio::process::Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Child {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_messenger"));
        cmd.args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start messenger");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (o, e) = (Arc::clone(&stdout), Arc::clone(&stderr));
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                o.lock().unwrap().push(l);
            }
        });
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = err.read(&mut buf).await {
                e.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Child {
            child,
            stdout,
            stderr,
        }
    }

    /// The endpoint of its first `{"listening": ...}` line (10 s at most).
    async fn listening(&self) -> Endpoint {
        eventually(10, "a listening line", || {
            !self.stdout.lock().unwrap().is_empty()
        })
        .await;
        let line = self.stdout.lock().unwrap()[0].clone();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["listening"].as_str().unwrap().parse().unwrap()
    }

    /// SIGTERM, its exit (10 s at most), and all it wrote to stderr.
    async fn stop(mut self) -> Vec<u8> {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        within(10, "exit after SIGTERM", self.child.wait())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::mem::take(&mut *self.stderr.lock().unwrap())
    }
}

/// What must not be in a log: control bytes other than the line ends.
fn raw_control_bytes(log: &[u8]) -> Vec<u8> {
    log.iter()
        .copied()
        .filter(|&b| b < 0x20 && b != b'\n' || b == 0x7f)
        .collect()
}

/// A routing id and an ERROR reason with newlines and escape sequences.
const HOSTILE_ID: &[u8] = b"evil\n\x1b[31mFORGED\x1b[0m\r\x07";
const HOSTILE_REASON: &[u8] = b"no\nERROR forged line\x1b]0;title\x07\x1b[2K\r";

/// Every line a JSON object, and no raw control byte, in `log`.
fn check_json_log(what: &str, log: &[u8]) {
    let text = String::from_utf8_lossy(log);
    assert!(!text.trim().is_empty(), "{what}: nothing logged");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{what}: not one JSON object ({e}): {line:?}"));
        assert!(v.is_object(), "{what}: {line}");
    }
    let raw = raw_control_bytes(log);
    assert!(
        raw.is_empty(),
        "{what}: raw control bytes {raw:?} in:\n{text}"
    );
}

/// `serve --log-format json` with RUST_LOG=debug sees a peer whose
/// routing id holds a newline, ESC and BEL (it sends a malformed message,
/// which is warned about with its id), and a peer that sends an ERROR
/// with such a reason instead of READY: every stderr line is one JSON
/// object, none holds a raw control byte, and the id is there, escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_peer_bytes_escaped() {
    for t in RAW_TRANSPORTS {
        let dir = tempfile::tempdir().unwrap();
        let bind = match t {
            "tcp" => "tcp://127.0.0.1:0".to_owned(),
            _ => format!("ipc://{}", dir.path().join("s.sock").display()),
        };
        let serve = Child::spawn(
            &["serve", "--bind", &bind, "--log-format", "json", "--quiet"],
            &[("RUST_LOG", "debug")],
        );
        let ep = serve.listening().await;
        let mut peer = raw_zmtp::dealer(&ep, HOSTILE_ID, &[]).await;
        within(5, "READY", peer.expect_ready()).await;
        peer.send_message(&[b"", b"not-a-payload"]).await;
        // Another peer greets and, instead of READY, sends ERROR.
        let mut s = raw_zmtp::dial(&ep).await;
        let mut bytes = raw_zmtp::greeting(1).to_vec();
        let mut data = vec![HOSTILE_REASON.len() as u8];
        data.extend_from_slice(HOSTILE_REASON);
        bytes.extend(raw_zmtp::command("ERROR", &data));
        s.write_all(&bytes).await.unwrap();
        within(10, "the listener closes", async {
            let mut sink = [0u8; 512];
            while let Ok(1..) = s.read(&mut sink).await {}
        })
        .await;
        eventually(10, "the malformed message is warned about", || {
            String::from_utf8_lossy(&serve.stderr.lock().unwrap()).contains("malformed")
        })
        .await;
        drop(peer);
        let log = serve.stop().await;
        check_json_log(&format!("serve over {t}"), &log);
        let text = String::from_utf8_lossy(&log);
        let warned = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["fields"]["message"] == "dropping malformed message")
            .unwrap_or_else(|| panic!("{t}: no malformed warning in:\n{text}"));
        let f = &warned["fields"];
        assert_eq!(
            f["peer"], r"evil\n\x1b[31mFORGED\x1b[0m\r\x07",
            "{t}: {warned}"
        );
        assert!(
            f["remote"].as_str().is_some_and(|r| !r.is_empty()),
            "{t}: {warned}"
        );
        assert!(f["endpoint"].as_str().is_some(), "{t}: {warned}");
        if t == "ipc" {
            let pid = format!("pid={}", std::process::id());
            assert!(
                f["remote"].as_str().unwrap().contains(&pid),
                "{t}: {warned}"
            );
        }
    }
}

/// `messenger request --log-format json` refused with an ERROR whose
/// reason holds newlines and escapes: its stderr is JSON lines, no raw
/// control byte, and the failure itself is one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refused_with_a_hostile_reason_logs_json_escaped() {
    let (listener, ep, _place) = raw_zmtp::RawListener::bind("tcp").await;
    let router = tokio::spawn(async move {
        loop {
            let stream = listener.accept().await;
            tokio::spawn(async move {
                let mut r = FrameReader::new(stream);
                let _ = r.inner.write_all(&raw_zmtp::greeting(1)).await;
                if r.greeting().await.is_err() {
                    return;
                }
                let _ = r.command().await;
                let mut data = vec![HOSTILE_REASON.len() as u8];
                data.extend_from_slice(HOSTILE_REASON);
                let _ = r.inner.write_all(&raw_zmtp::command("ERROR", &data)).await;
                let _ = r.inner.shutdown().await;
            });
        }
    });
    let ep = ep.to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_messenger"));
    cmd.args([
        "request",
        &ep,
        "hi",
        "--timeout",
        "2s",
        "--log-format",
        "json",
    ])
    .env("RUST_LOG", "debug");
    let ran = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(15)))
        .await
        .unwrap()
        .unwrap();
    router.abort();
    assert!(ran.status.is_some_and(|s| !s.success()), "{ran:?}");
    check_json_log("request", ran.stderr.as_bytes());
    assert!(ran.stderr.contains(r#""level":"ERROR""#), "{}", ran.stderr);
}

/// `--stats-interval` writes one line per tick, timestamped, of rates and
/// gauges, and only once even with RUST_LOG=info (it was written twice:
/// as a log event and as a line of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_line_is_timestamped_rates_written_once() {
    for format in ["text", "json"] {
        let serve = Child::spawn(
            &[
                "serve",
                "--bind",
                "tcp://127.0.0.1:0",
                "--slc",
                "echo",
                "--quiet",
                "--stats-interval",
                "300ms",
                "--log-format",
                format,
            ],
            &[("RUST_LOG", "info")],
        );
        let ep = serve.listening().await;
        let client = Messenger::new().unwrap();
        let conn = client.make_connection(&ep).await.unwrap();
        for _ in 0..50 {
            client.request(conn, NOOP, b"tick").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        client.shutdown().await;
        let log = serve.stop().await;
        let text = String::from_utf8_lossy(&log).into_owned();
        let stats: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| l.contains("stats"))
            .filter(|l| !l.contains("shut down"))
            .map(|l| match format {
                "text" => {
                    let (stamp, rest) = l.split_once(" stats ").unwrap_or_else(|| {
                        panic!("{format}: a line about stats that is not the stats line: {l}")
                    });
                    humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{stamp}: {e}"));
                    serde_json::from_str(rest).unwrap()
                }
                _ => {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    assert_eq!(v["fields"]["message"], "stats", "{l}");
                    humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
                    v["fields"].clone()
                }
            })
            .collect();
        assert!(stats.len() >= 2, "{format}: {text}");
        assert!(
            stats.len() <= 6,
            "{format}: one line per tick, not two: {text}"
        );
        let busy = stats
            .iter()
            .find(|s| s["messages_received_per_s"].as_f64() > Some(0.0))
            .unwrap_or_else(|| panic!("{format}: no tick saw the traffic: {text}"));
        for key in [
            "interval_s",
            "messages_sent_per_s",
            "bytes_received_per_s",
            "bytes_sent_per_s",
            "resends_per_s",
            "server_loop_p50_ms",
            "server_loop_p99_ms",
            "connections",
            "unacked_messages",
        ] {
            assert!(busy.get(key).is_some(), "{format}: {key} missing: {busy}");
        }
        assert!(
            busy["server_loop_p99_ms"].as_f64().is_some(),
            "{format}: {busy}"
        );
        // Rates, not the cumulative dump.
        assert!(busy.get("acks_sent").is_none(), "{format}: {busy}");
    }
}

#[tokio::test]
async fn bench_draws_its_plot_and_prints_its_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_messenger"));
    cmd.args([
        "bench",
        "--transports",
        "inproc,tcp",
        "--sizes",
        "64",
        "--in-flight",
        "1,8",
        "--duration",
        "30ms",
        "--warmup",
        "10ms",
        "--metrics",
        "--plot",
    ])
    .arg(&svg);
    let ran = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert!(ran.status.is_some_and(|s| s.success()), "{ran:?}");
    let drawn = std::fs::read_to_string(&svg).expect("the plot is written");
    assert!(
        drawn.starts_with("<svg"),
        "{}",
        &drawn[..drawn.len().min(200)]
    );
    for cell in ["tcp 64 B ×1", "inproc 64 B ×8"] {
        assert!(drawn.contains(cell), "{cell} not labelled");
    }
    assert!(
        ran.stdout
            .contains("messenger_request_duration_seconds_bucket{transport=\"tcp\""),
        "{}",
        ran.stdout
    );
}
