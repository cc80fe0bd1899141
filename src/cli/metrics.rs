//! The command's metrics exporters: the recorder the library's `metrics`
//! facade records into, Prometheus's text format over HTTP
//! (`serve --metrics-addr`), and the histograms of the stats line.
//!
//! The HTTP side is ours, a few dozen lines over tokio: one route
//! (`GET /metrics`), a bounded request, a bounded number of scrapers at
//! once, a deadline per request. metrics-exporter-prometheus's own
//! listener would bring hyper and its stack for that one route.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Histogram buckets for every `_seconds` metric, in seconds: 10 µs (an
/// inproc round trip) to 30 s (past the default request timeout), about
/// three per decade.
const BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What `install` set up.
pub struct Installed {
    /// Renders the Prometheus text (when asked for).
    pub prometheus: Option<PrometheusHandle>,
    /// The stats line's view of the time histograms.
    pub window: Arc<Window>,
}

/// Installs the process's metrics recorder: Prometheus's (when
/// `prometheus`) and the stats line's [`Window`], side by side, then tells
/// the library to record (`publish_metrics`). Before any messenger is
/// made: the library registers its histograms on first use.
pub fn install(prometheus: bool) -> Result<Installed, String> {
    let window = Arc::new(Window::default());
    let mut fanout = metrics_util::layers::FanoutBuilder::default();
    let handle = if prometheus {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .map_err(|e| e.to_string())?
            .build_recorder();
        let handle = recorder.handle();
        fanout = fanout.add_recorder(recorder);
        Some(handle)
    } else {
        None
    };
    fanout = fanout.add_recorder(WindowRecorder(Arc::clone(&window)));
    metrics::set_global_recorder(fanout.build())
        .map_err(|_| "a metrics recorder is already installed".to_owned())?;
    messenger::publish_metrics();
    Ok(Installed {
        prometheus: handle,
        window,
    })
}

/// The Prometheus text of everything recorded now: the library's counters
/// and gauges read at this moment, the histograms as observed.
pub fn render(handle: &PrometheusHandle) -> String {
    messenger::publish_metrics();
    handle.run_upkeep();
    handle.render()
}

/// Binds the metrics address before anything else starts, so a port in
/// use stops `serve` with a clear error.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
            "address in use".to_owned()
        } else {
            e.to_string()
        };
        format!("cannot serve metrics on {addr} (--metrics-addr): {why}")
    })
}

/// Scrapers served at once; more wait in the kernel's backlog.
const SCRAPERS: usize = 8;
/// A request's head (request line and headers) may be this large.
const MAX_REQUEST: usize = 8 * 1024;
/// A scraper has this long to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let slots = Arc::new(tokio::sync::Semaphore::new(SCRAPERS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(stream, &handle)).await;
            drop(permit);
        });
    }
}

/// Reads one request and answers it, then closes.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = render(handle);
            let kind = "text/plain; version=0.0.4; charset=utf-8";
            respond(&mut stream, "200 OK", kind, &body).await
        }
        (b"GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The stats line's view of the library's time histograms: each tick
/// takes what was observed since the last one. Log-scale buckets of
/// atomics (four per power of two, about 19 % wide), so recording is one
/// relaxed add and a tick's percentiles are within a bucket of the truth.
#[derive(Default)]
pub struct Window {
    /// `messenger_request_duration_seconds` (a client's requests).
    pub request: Buckets,
    /// `messenger_server_loop_duration_seconds` (a server loop's calls).
    pub server_loop: Buckets,
}

/// Buckets per power of two.
const PER_OCTAVE: f64 = 4.0;
/// Buckets: from 1 ns to past 2^40 ns (18 minutes).
const SLOTS: usize = 41 * 4;

/// One histogram's counts since the last [`take`](Buckets::take).
pub struct Buckets([AtomicU64; SLOTS]);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Buckets {
    fn slot(seconds: f64) -> usize {
        let ns = (seconds * 1e9).max(1.0);
        ((ns.log2() * PER_OCTAVE) as usize).min(SLOTS - 1)
    }

    /// Empties it; the p50 and p99 of what it held, in seconds (the
    /// middle of their bucket), `None` if it held nothing.
    pub fn take(&self) -> Option<(f64, f64)> {
        let counts: Vec<u64> = self
            .0
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let at = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return 2f64.powf((i as f64 + 0.5) / PER_OCTAVE) / 1e9;
                }
            }
            f64::NAN
        };
        Some((at(0.50), at(0.99)))
    }
}

impl HistogramFn for Buckets {
    fn record(&self, seconds: f64) {
        self.0[Self::slot(seconds)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands the two time histograms to a [`Window`]; everything else is
/// Prometheus's business.
struct WindowRecorder(Arc<Window>);

/// A [`Buckets`] of a shared [`Window`], as a histogram handle.
struct Part(Arc<Window>, fn(&Window) -> &Buckets);

impl HistogramFn for Part {
    fn record(&self, value: f64) {
        (self.1)(&self.0).record(value);
    }
}

impl Recorder for WindowRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let part: fn(&Window) -> &Buckets = match key.name() {
            "messenger_request_duration_seconds" => |w| &w.request,
            "messenger_server_loop_duration_seconds" => |w| &w.server_loop,
            _ => return Histogram::noop(),
        };
        Histogram::from_arc(Arc::new(Part(Arc::clone(&self.0), part)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reports_percentiles_within_a_bucket_and_empties() {
        let b = Buckets::default();
        assert_eq!(b.take(), None);
        for i in 1..=1000 {
            b.record(i as f64 * 1e-6); // 1 µs .. 1 ms
        }
        let (p50, p99) = b.take().expect("observations");
        assert!((p50 / 500e-6 - 1.0).abs() < 0.2, "{p50}");
        assert!((p99 / 990e-6 - 1.0).abs() < 0.2, "{p99}");
        assert_eq!(b.take(), None, "a tick empties it");
    }
}
