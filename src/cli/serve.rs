//! `messenger serve`: listeners that print what their server loop sees.

use std::io::Write;
use std::time::Duration;

use messenger::{Endpoint, Incoming, Messenger, Responder};
use serde_json::json;

use super::SlcMode;

pub(super) fn print_line(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the server down.
    let _ = writeln!(out, "{value}").and_then(|_| out.flush());
}

/// What `serve` tells an operator besides its messages.
#[derive(Debug, Clone, Copy)]
pub struct Observe {
    /// Write a stats line this often.
    pub stats_interval: Option<Duration>,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn run(
    binds: Vec<Endpoint>,
    identity: String,
    mode: SlcMode,
    quiet: bool,
    observe: Observe,
    config: messenger::Config,
) -> Result<(), String> {
    if let Some(curve) = &config.curve {
        // The public half only: clients need it.
        tracing::info!(
            public_key = %curve.keys.public(),
            allow_list = curve.allow.as_ref().map_or(0, |a| a.len()),
            "CURVE on tcp and ipc; clients need this public key"
        );
        if curve.allow.is_none() {
            tracing::info!("no --curve-allow: any client with a key pair is admitted");
        }
        for bind in binds.iter().filter(|b| matches!(b, Endpoint::Inproc(_))) {
            tracing::warn!(endpoint = %bind, "inproc does not speak CURVE");
        }
    }
    let config = fit_to_descriptors(config, binds.len());
    // Caught before the first "listening" line: a supervisor may stop us
    // as soon as it reads one, and must get a clean shutdown.
    let signals = Signals::catch()?;
    // The metrics port first: in use, we stop before listening anywhere.
    let metrics_listener = match observe.metrics_addr {
        Some(addr) => Some(super::metrics::bind(addr).await?),
        None => None,
    };
    // The recorder before the messenger: it registers its histograms with
    // whatever recorder is installed when it first records.
    let installed = if observe.metrics_addr.is_some() || observe.stats_interval.is_some() {
        Some(super::metrics::install(observe.metrics_addr.is_some())?)
    } else {
        None
    };
    let m = Messenger::builder()
        .identity(identity.clone())
        .config(config)
        .build()
        .map_err(|e| e.to_string())?;
    let refusals = std::sync::Arc::new(Refusals::default());
    for bind in &binds {
        let refusals = std::sync::Arc::clone(&refusals);
        let slc = move |msg: Incoming, r: Responder| {
            if !quiet {
                print_line(&message_line(&msg));
            }
            // Only messages that ask for a reply get one: answering src_cb 0
            // would land in the sender's server loop, and two echo servers
            // would bounce a message between them forever. The reply never
            // waits for room here: a request that wants one was admitted
            // with a place for it, and it waits there until the peer ACKs.
            if matches!(mode, SlcMode::Echo)
                && msg.src_cb != messenger::NOOP
                && let Err(e) = r.try_reply(&msg.body)
            {
                refusals.note(&e);
            }
        };
        let info = m
            .listen_for_connection(bind, slc)
            .await
            .map_err(|e| e.to_string())?;
        print_line(&json!({ "listening": info.endpoint.to_string() }));
    }
    let exporter = match (
        metrics_listener,
        installed.as_ref().and_then(|i| i.prometheus.clone()),
    ) {
        (Some(listener), Some(handle)) => {
            let at = listener.local_addr().map_err(|e| e.to_string())?;
            print_line(&json!({ "metrics": format!("http://{at}/metrics") }));
            tracing::info!(%at, "serving Prometheus metrics at /metrics");
            Some(tokio::spawn(super::metrics::serve(listener, handle)))
        }
        _ => None,
    };
    let stats = match (observe.stats_interval, &installed) {
        (Some(every), Some(installed)) => {
            let window = std::sync::Arc::clone(&installed.window);
            Some(tokio::spawn(stats_lines(m.clone(), every, window)))
        }
        _ => None,
    };
    signals.wait().await;
    for task in [stats, exporter].into_iter().flatten() {
        task.abort();
    }
    m.shutdown().await;
    let stats = m.stats();
    match super::logging::format() {
        super::logging::LogFormat::Text => eprintln!(
            "messenger: shut down; {}",
            serde_json::to_string(&stats).unwrap_or_default()
        ),
        super::logging::LogFormat::Json => {
            super::logging::line("INFO", "shut down", json!({ "stats": stats }))
        }
    }
    Ok(())
}

/// Every `every`, one timestamped line on stderr (in the log format):
/// rates since the last line, the server loop's and requests' p50 and
/// p99 over the same span (in ms; null when there were none), and the
/// gauges now. Cumulative counts are /metrics' business (and the
/// shutdown line's).
async fn stats_lines(
    m: Messenger,
    every: Duration,
    window: std::sync::Arc<super::metrics::Window>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let (mut last, mut last_at) = (m.stats(), std::time::Instant::now());
    // What the window held before the first line is not its business.
    let _ = (window.request.take(), window.server_loop.take());
    loop {
        tick.tick().await;
        let (now, at) = (m.stats(), std::time::Instant::now());
        let secs = at.duration_since(last_at).as_secs_f64().max(1e-9);
        let rate = |f: fn(&messenger::StatsSnapshot) -> u64| {
            let per_s = f(&now).saturating_sub(f(&last)) as f64 / secs;
            (per_s * 10.0).round() / 10.0
        };
        let ms = |q: Option<(f64, f64)>, i: usize| {
            q.map(|(p50, p99)| {
                let s = if i == 0 { p50 } else { p99 };
                (s * 1e6).round() / 1e3
            })
        };
        let (slc, req) = (window.server_loop.take(), window.request.take());
        super::logging::line(
            "INFO",
            "stats",
            json!({
                "interval_s": (secs * 1000.0).round() / 1000.0,
                "messages_received_per_s": rate(|s| s.received),
                "messages_sent_per_s": rate(|s| s.sent),
                "bytes_received_per_s": rate(|s| s.bytes_received),
                "bytes_sent_per_s": rate(|s| s.bytes_sent),
                "resends_per_s": rate(|s| s.resends),
                "server_loop_p50_ms": ms(slc, 0),
                "server_loop_p99_ms": ms(slc, 1),
                "request_p50_ms": ms(req, 0),
                "request_p99_ms": ms(req, 1),
                "connections": now.connections,
                "listeners": now.listeners,
                "unacked_messages": now.pending_messages,
                "pending_callbacks": now.pending_callbacks,
            }),
        );
        (last, last_at) = (now, at);
    }
}

/// One printed line per message the server loop sees. Routing ids and
/// bodies are the peer's bytes: printed as JSON strings (control bytes
/// escaped by JSON) when they are UTF-8, and as `peer_hex` /
/// `body_base64` when they are not, so no two differ only in what a lossy
/// decoding dropped.
fn message_line(msg: &Incoming) -> serde_json::Value {
    use base64::Engine as _;
    let mut line = json!({
        "endpoint": msg.endpoint().to_string(),
        "msg_id": msg.msg_id,
        "src_cb": msg.src_cb,
        "dst_cb": msg.dst_cb,
    });
    let fields = [
        ("peer", "peer_hex", &msg.peer),
        ("body", "body_base64", &msg.body),
    ];
    for (text, binary, bytes) in fields {
        let (key, value) = match std::str::from_utf8(bytes) {
            Ok(s) => (text, s.to_owned()),
            Err(_) if binary == "peer_hex" => (binary, hex(bytes)),
            Err(_) => (
                binary,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            ),
        };
        line[key] = serde_json::Value::String(value);
    }
    line
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Replies the echo loop could not make, said at most once a second (with
/// how many) instead of once each: a peer that never ACKs must not flood
/// the log.
#[derive(Default)]
struct Refusals {
    /// When the last line was written, and refusals since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Refusals {
    fn note(&self, error: &messenger::Error) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 += 1;
        let now = std::time::Instant::now();
        if st
            .0
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(error = %error, count = st.1, "cannot reply");
            *st = (Some(now), 0);
        }
    }
}

/// Descriptors kept for everything but peers: stdio, the listeners, the
/// runtime's poller and wakers, a log file.
const RESERVED_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard limit (the usual soft
/// limit, 1024, is below the default connection limit) and, if even that
/// is too few for `binds` listeners at their connection limit, lowers the
/// limit to what the descriptors allow, saying so. Past the limit idle
/// peers give way to newcomers; past the descriptors, accepts would fail
/// (the library treats that as the limit too, but a limit of our own is
/// reached first and said).
fn fit_to_descriptors(mut config: messenger::Config, binds: usize) -> messenger::Config {
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the limit on open files");
            return config;
        }
    };
    let per_listener = nofile.saturating_sub(RESERVED_FDS) / binds.max(1) as u64;
    let fits = usize::try_from(per_listener).unwrap_or(usize::MAX).max(1);
    if fits < config.max_connections_per_listener {
        tracing::warn!(
            open_files = nofile,
            listeners = binds,
            max_connections = fits,
            "the limit on open files allows {fits} peers per listener; serving at most that many (raise the hard limit, ulimit -Hn, for more)"
        );
        config.max_connections_per_listener = fits;
        config.max_connections_per_address = config.max_connections_per_address.min(fits);
    } else {
        tracing::info!(open_files = nofile, "limit on open files");
    }
    config
}

/// SIGTERM and SIGINT, caught from the moment this is made.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn catch() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
            int: signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
        })
    }

    /// Waits for either.
    pub(super) async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
