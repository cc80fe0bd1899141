//! `messenger serve` as a child process, for tests of the binary: bound on
//! tcp port 0 and an ipc path in a temp dir, its stdout and stderr drained
//! for the whole run (so it never blocks on a full pipe), killed when
//! dropped.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger::Endpoint;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::process::{Child, Command};

/// A running `messenger serve --quiet`.
pub struct ServeProcess {
    pub child: Child,
    pub pid: u32,
    pub tcp: Endpoint,
    pub ipc: Endpoint,
    /// Its `/metrics` URL, when started with `--metrics-addr`.
    pub metrics: Option<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Ends when the server's stderr closes.
    stderr_drain: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `messenger serve --quiet` with `flags`, and waits (10 s at
    /// most) until it says it listens on both endpoints.
    pub async fn start(flags: &[&str]) -> ServeProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let ipc_bind = format!("ipc://{}", dir.path().join("s.sock").display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_messenger"))
            .args(["serve", "--bind", "tcp://127.0.0.1:0", "--bind", &ipc_bind])
            .arg("--quiet")
            .args(flags)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start messenger serve");
        let pid = child.id().expect("serve has a pid");
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        let stderr_drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut listening = Vec::new();
        for what in ["tcp", "ipc"] {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.recv()).await;
            let line = match line {
                Ok(Some(line)) => line,
                _ => panic!(
                    "serve printed no {what} listening line within 10 s; stderr:\n{}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                ),
            };
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let ep = v["listening"]
                .as_str()
                .unwrap_or_else(|| panic!("expected {{\"listening\": ...}}, got {v}"));
            listening.push(ep.parse::<Endpoint>().expect("a valid endpoint"));
        }
        // With --metrics-addr, its URL comes next.
        let mut metrics = None;
        if flags.contains(&"--metrics-addr") {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.recv()).await;
            let line = line.ok().flatten().unwrap_or_default();
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            metrics = v["metrics"].as_str().map(str::to_owned);
            assert!(metrics.is_some(), "expected {{\"metrics\": URL}}, got {v}");
        }
        // --quiet: nothing more should come, but keep draining anyway.
        tokio::spawn(async move { while lines.recv().await.is_some() {} });
        let ipc = listening.pop().unwrap();
        let tcp = listening.pop().unwrap();
        assert!(
            matches!(&tcp, Endpoint::Tcp { port, .. } if *port != 0),
            "tcp endpoint not resolved: {tcp}"
        );
        assert_eq!(ipc.to_string(), ipc_bind);
        ServeProcess {
            child,
            pid,
            tcp,
            ipc,
            metrics,
            stderr,
            stderr_drain: Some(stderr_drain),
            _dir: dir,
        }
    }

    /// Its tcp port.
    pub fn tcp_port(&self) -> u16 {
        match &self.tcp {
            Endpoint::Tcp { port, .. } => *port,
            other => panic!("not tcp: {other}"),
        }
    }

    /// Its ipc socket's path.
    pub fn ipc_path(&self) -> std::path::PathBuf {
        match &self.ipc {
            Endpoint::Ipc(path) => path.clone(),
            other => panic!("not ipc: {other}"),
        }
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Its last lines of stderr, for failure messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let stderr = self.stderr();
        let all: Vec<&str> = stderr.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The fields of the last `TIMESTAMP stats {...}` line on its stderr,
    /// if any (`--stats-interval`: rates and gauges).
    pub fn last_stats(&self) -> Option<serde_json::Value> {
        stats_line(&self.stderr())
    }

    /// Its `/metrics` page now (`--metrics-addr`), over real HTTP.
    pub fn scrape(&self) -> String {
        let url = self
            .metrics
            .as_deref()
            .expect("started with --metrics-addr");
        http_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The sum of every series named `name` on its `/metrics` page whose
    /// labels include `labels` (`None`: no such series).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.scrape(), name, labels)
    }

    /// The counters it printed as it shut down, if it did.
    pub fn final_stats(&self) -> Option<serde_json::Value> {
        let stderr = self.stderr();
        let json = stderr
            .lines()
            .rev()
            .find_map(|l| l.split_once("shut down; ").map(|(_, json)| json))?;
        serde_json::from_str(json).ok()
    }

    /// Sends `signal` (e.g. "TERM").
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }

    /// SIGTERM, and its exit within `limit` (`None`: still running then),
    /// with all it wrote to stderr drained (2 s at most) once it exited.
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::io::Result<ExitStatus>> {
        self.signal("TERM");
        let exit = tokio::time::timeout(limit, self.child.wait()).await.ok();
        if exit.is_some()
            && let Some(drain) = self.stderr_drain.take()
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
        exit
    }
}

/// The fields of the last `TIMESTAMP stats {...}` line of `stderr`.
pub fn stats_line(stderr: &str) -> Option<serde_json::Value> {
    let json = stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once(" stats {").map(|(_, rest)| rest))?;
    serde_json::from_str(&format!("{{{json}")).ok()
}

/// `GET` of an `http://HOST:PORT/PATH` URL on this machine, within 5 s:
/// the body of a 200 answer.
pub fn http_get(url: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("answered {head:?}")));
    }
    Ok(body.to_owned())
}

/// The sum of every sample of `name` in Prometheus text `text` whose
/// labels include `labels`, parsed with a real parser (`None`: none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the Prometheus text parses");
    let mut found = None;
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
            let v = match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                _ => continue,
            };
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
