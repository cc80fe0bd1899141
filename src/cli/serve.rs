//! `messenger serve`: listeners that print what their server loop sees.

use std::io::Write;
use std::time::Duration;

use messenger::{Endpoint, Incoming, Messenger, Responder};
use serde_json::json;

use super::SlcMode;

fn print_line(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the server down.
    let _ = writeln!(out, "{value}").and_then(|_| out.flush());
}

pub async fn run(
    binds: Vec<Endpoint>,
    identity: String,
    mode: SlcMode,
    quiet: bool,
    stats_interval: Option<Duration>,
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
    // Caught before the first "listening" line: a supervisor may stop us
    // as soon as it reads one, and must get a clean shutdown.
    let signals = Signals::catch()?;
    let m = Messenger::with_config(identity.clone(), config).map_err(|e| e.to_string())?;
    for bind in &binds {
        let slc = move |msg: Incoming, r: Responder| {
            if !quiet {
                print_line(&json!({
                    "endpoint": msg.endpoint().to_string(),
                    "peer": String::from_utf8_lossy(&msg.peer),
                    "msg_id": msg.msg_id,
                    "src_cb": msg.src_cb,
                    "dst_cb": msg.dst_cb,
                    "body": String::from_utf8_lossy(&msg.body),
                }));
            }
            // Only messages that ask for a reply get one: answering src_cb 0
            // would land in the sender's server loop, and two echo servers
            // would bounce a message between them forever.
            if matches!(mode, SlcMode::Echo)
                && msg.src_cb != messenger::NOOP
                && let Err(e) = r.try_reply(&msg.body)
            {
                tracing::warn!(error = %e, "cannot reply");
            }
        };
        let info = m
            .listen_for_connection(bind, identity.clone(), slc)
            .await
            .map_err(|e| e.to_string())?;
        print_line(&json!({ "listening": info.endpoint.to_string() }));
    }
    let stats = {
        let m = m.clone();
        tokio::spawn(async move {
            let Some(every) = stats_interval else {
                return std::future::pending().await;
            };
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = serde_json::to_string(&m.stats()).unwrap_or_default();
                tracing::info!(stats = %s, "stats");
                eprintln!("stats {s}");
            }
        })
    };
    signals.wait().await;
    stats.abort();
    m.shutdown().await;
    eprintln!(
        "messenger: shut down; {}",
        serde_json::to_string(&m.stats()).unwrap_or_default()
    );
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment this is made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
            int: signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
        })
    }

    /// Waits for either.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
