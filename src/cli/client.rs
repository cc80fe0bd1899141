//! `messenger send`, `request` and `ping`.

use std::io::Write;
use std::time::{Duration, Instant};

use messenger::{Curve, Secret};

use super::MessageArgs;
use messenger::{Config, ConnectionId, ECHO, Endpoint, Error, Messenger};

async fn connect(
    endpoint: &Endpoint,
    identity: String,
    timeout: Duration,
    secret: Option<Secret>,
    curve: Option<Curve>,
) -> Result<(Messenger, ConnectionId), String> {
    if let Some(c) = &curve {
        if matches!(endpoint, Endpoint::Inproc(_)) {
            tracing::warn!(%endpoint, "inproc does not speak CURVE; --curve-* flags are ignored");
        }
        tracing::info!(public_key = %c.keys.public(), "our CURVE public key");
    }
    let config = Config {
        request_timeout: timeout,
        connect_timeout: timeout,
        auth: secret,
        curve,
        ..Config::default()
    };
    let m = Messenger::builder()
        .identity(identity)
        .config(config)
        .build()
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(timeout, m.make_connection(endpoint))
        .await
        .map_err(|_| {
            format!(
                "cannot connect to {endpoint} within {}",
                humantime::format_duration(timeout)
            )
        })?
        .map_err(|e| e.to_string())?;
    Ok((m, conn))
}

fn explain(e: Error, what: &str, timeout: Duration) -> String {
    match e {
        Error::Timeout => {
            format!("no {what} within {}", humantime::format_duration(timeout))
        }
        other => other.to_string(),
    }
}

/// Connects as `args` say, or fails with a one-line reason.
async fn connect_for(args: &MessageArgs) -> Result<(Messenger, ConnectionId), String> {
    let secret = args.secret.load()?;
    let curve = args.curve.load()?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    connect(&args.endpoint, identity, args.timeout, secret, curve).await
}

/// A routing id no other run shares: the process id, and random bits for
/// a process id used again.
fn default_identity() -> String {
    let mut salt = [0u8; 4];
    // Without randomness the pid alone still separates concurrent runs.
    let _ = getrandom::fill(&mut salt);
    format!(
        "messenger-cli-{}-{:08x}",
        std::process::id(),
        u32::from_be_bytes(salt)
    )
}

pub async fn send(args: MessageArgs) -> Result<(), String> {
    let (m, conn) = connect_for(&args).await?;
    let result = m
        .send_confirmed(conn, args.callback, args.body.as_bytes())
        .await;
    m.shutdown().await;
    result
        .map(|_| ())
        .map_err(|e| explain(e, "ACK", args.timeout))
}

pub async fn request(args: MessageArgs) -> Result<(), String> {
    let (m, conn) = connect_for(&args).await?;
    let result = m
        .request_with_timeout(conn, args.callback, args.body.as_bytes(), args.timeout)
        .await;
    m.shutdown().await;
    let reply = result.map_err(|e| explain(e, "reply", args.timeout))?;
    let mut out = std::io::stdout().lock();
    // The body is the peer's: on a terminal its control bytes would be
    // the terminal's commands (an OSC sequence sets its title, CSI clears
    // it, a newline or a carriage return forges a line of ours). Into a
    // pipe or a file it goes as it is: a script wants the bytes.
    let written = if std::io::IsTerminal::is_terminal(&out) {
        out.write_all(shown_on_a_terminal(&reply.body).as_bytes())
    } else {
        out.write_all(&reply.body)
    };
    written
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())
}

/// `body` as one line a terminal shows and does not obey: UTF-8 text as it
/// is, but control characters (newlines too) and backslashes escaped as
/// Rust writes them (`\n`, `\u{1b}`, `\\`), and bytes that are not
/// UTF-8 as `\xNN`.
fn shown_on_a_terminal(body: &[u8]) -> String {
    let mut shown = String::with_capacity(body.len());
    for chunk in body.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                shown.extend(c.escape_default());
            } else {
                shown.push(c);
            }
        }
        for b in chunk.invalid() {
            shown.push_str(&format!("\\x{b:02x}"));
        }
    }
    shown
}

pub async fn ping(
    endpoint: Endpoint,
    count: u32,
    interval: Duration,
    timeout: Duration,
    secret: Option<Secret>,
    curve: Option<Curve>,
) -> Result<(), String> {
    let identity = format!("ping-{}", std::process::id());
    let (m, conn) = connect(&endpoint, identity, timeout, secret, curve).await?;
    // Ctrl-C (or SIGTERM) ends the pings, as it ends ping(8)'s: the
    // statistics of what was sent so far follow.
    let stop = super::serve::Signals::catch()?;
    say!("PING {endpoint}")?;
    let mut rtts = Vec::new();
    let mut sent = 0u32;
    let pings = async {
        for seq in 0..count {
            if seq > 0 {
                tokio::time::sleep(interval).await;
            }
            let start = Instant::now();
            sent += 1;
            match m.request_with_timeout(conn, ECHO, b"", timeout).await {
                Ok(_) => {
                    let rtt = start.elapsed();
                    say!("reply from {endpoint}: seq={seq} time={:.3} ms", ms(rtt))?;
                    rtts.push(rtt);
                }
                Err(e) => say!(
                    "no reply from {endpoint}: seq={seq}: {}",
                    explain(e, "reply", timeout)
                )?,
            }
        }
        Ok::<(), String>(())
    };
    tokio::select! {
        done = pings => done?,
        () = stop.wait() => {}
    }
    m.shutdown().await;
    // A ping cut short by the signal before its reply counts as sent and
    // lost, as ping(8) counts it.
    let count = sent;
    say!("--- {endpoint} ping statistics ---")?;
    let lost = count as usize - rtts.len();
    say!(
        "{count} sent, {} received, {:.1}% loss",
        rtts.len(),
        if count == 0 {
            0.0
        } else {
            100.0 * lost as f64 / count as f64
        }
    )?;
    if rtts.is_empty() {
        return Err(format!("no replies from {endpoint}"));
    }
    rtts.sort();
    let sum: Duration = rtts.iter().sum();
    let p99 = rtts[((rtts.len() * 99).div_ceil(100)).saturating_sub(1)];
    say!(
        "rtt min/avg/max/p99 = {:.3}/{:.3}/{:.3}/{:.3} ms",
        ms(rtts[0]),
        ms(sum / rtts.len() as u32),
        ms(rtts[rtts.len() - 1]),
        ms(p99)
    )?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::shown_on_a_terminal;

    #[test]
    fn a_terminal_is_shown_text_and_never_obeys_it() {
        assert_eq!(
            shown_on_a_terminal(b"plain text, caf\xc3\xa9"),
            "plain text, café"
        );
        assert_eq!(
            shown_on_a_terminal(b"a\nb\r\x1b]0;t\x07\x1b[2J\\n\xff"),
            "a\\nb\\r\\u{1b}]0;t\\u{7}\\u{1b}[2J\\\\n\\xff"
        );
        // C1 controls (U+0080-U+009F) too: some terminals obey them.
        assert_eq!(shown_on_a_terminal("\u{9b}2J".as_bytes()), "\\u{9b}2J");
    }
}
