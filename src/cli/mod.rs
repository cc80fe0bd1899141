//! Command-line front end. Each subcommand is a thin layer over the library.

/// `println!` for a command's report: `Err` (ending the command) once
/// stdout is closed, where `println!` panics (`| head -1`).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::say(format_args!($($arg)*))
    };
}

mod bench;
mod client;
mod curve;
mod demo;
pub mod logging;
mod metrics;
mod plot;
mod replicate;
mod serve;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use messenger::Endpoint;

/// Callback-driven messaging over ZeroMQ endpoints (tcp://, ipc://, inproc://),
/// speaking NoisePage's messenger protocol.
#[derive(Debug, Parser)]
#[command(name = "messenger", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How to write logs to stderr: text, or one JSON object per line
    /// (for a log shipper). RUST_LOG filters them (default: warn).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    pub log_format: logging::LogFormat,
}

/// What a command returns when nobody reads its output any more (a pipe
/// closed early, `| head -1`): it ends there, quietly and successfully, as
/// Unix tools do.
pub const STDOUT_CLOSED: &str = "stdout closed";

/// Writes `line` and a newline to stdout (see [`say!`]).
pub fn say(line: std::fmt::Arguments<'_>) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => STDOUT_CLOSED.to_owned(),
            _ => format!("cannot write to stdout: {e}"),
        })
}

/// A period that must not be zero (a stats line every 0 s is no period).
fn parse_period(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must not be zero".into()),
        d => Ok(d),
    }
}

/// Says why the command failed, on stderr, in the log format chosen.
pub fn fatal(error: &str) {
    match logging::format() {
        logging::LogFormat::Text => eprintln!("messenger: {error}"),
        logging::LogFormat::Json => {
            logging::line("ERROR", "failed", serde_json::json!({ "error": error }))
        }
    }
}

/// Who a listener admits; each defaults to `messenger::Config`'s.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Peers served at once per listener [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// tcp peers served at once from one source address [default: 256].
    #[arg(long, value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// At the connection limit, a peer that sent nothing for this long
    /// gives its place to a newcomer; "off" never [default: 10s].
    #[arg(long, value_name = "DURATION|off", value_parser = parse_idle)]
    evict_idle_after: Option<IdlePolicy>,
}

/// `--evict-idle-after`: a duration, or "off".
#[derive(Debug, Clone, Copy)]
struct IdlePolicy(Option<Duration>);

fn parse_idle(s: &str) -> Result<IdlePolicy, String> {
    if s == "off" {
        return Ok(IdlePolicy(None));
    }
    humantime::parse_duration(s)
        .map(|d| IdlePolicy(Some(d)))
        .map_err(|e| e.to_string())
}

impl LimitArgs {
    /// `config` with the limits asked for.
    pub fn apply(&self, mut config: messenger::Config) -> messenger::Config {
        if let Some(n) = self.max_connections {
            config.max_connections_per_listener = n;
        }
        if let Some(n) = self.max_connections_per_address {
            config.max_connections_per_address = n;
        }
        if let Some(IdlePolicy(after)) = self.evict_idle_after {
            config.evict_idle_after = after;
        }
        config
    }
}

/// Where to read a shared secret for authentication (tcp and ipc).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecretArgs {
    /// Read the shared secret from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "secret_file")]
    secret_env: Option<String>,
    /// Read the shared secret from this file (trailing newline removed).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<std::path::PathBuf>,
}

impl SecretArgs {
    /// The secret, if one was asked for; an error names what was missing.
    pub fn load(&self) -> Result<Option<messenger::Secret>, String> {
        if let Some(var) = &self.secret_env {
            let v =
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
            return Ok(Some(messenger::Secret::new(v)));
        }
        if let Some(path) = &self.secret_file {
            let v =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let v = v.strip_suffix(b"\n").map(<[u8]>::to_vec).unwrap_or(v);
            return Ok(Some(messenger::Secret::new(v)));
        }
        Ok(None)
    }
}

/// What `send` and `request` take.
#[derive(Debug, clap::Args)]
pub struct MessageArgs {
    /// Where to send.
    pub endpoint: Endpoint,
    /// The body, sent as UTF-8 bytes.
    pub body: String,
    /// The remote callback id to address (0 = the server loop, 1 = ECHO).
    #[arg(long, default_value_t = 0)]
    pub callback: u64,
    /// Our routing id. Default: `messenger-cli-PID-RANDOM`, unique per
    /// run, so parallel runs do not collide at a listener (which refuses a
    /// live peer's id) and a peer that remembers the (routing id, msg_id)
    /// pairs it has seen, as NoisePage's Messenger does, never takes a new
    /// run's messages for old ones.
    #[arg(long)]
    pub identity: Option<String>,
    /// How long to wait for the connection and the ACK or reply.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub curve: curve::CurveClientArgs,
}

/// What a `serve` listener's server loop does with each message.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SlcMode {
    /// Print it (one JSON object per line on stdout) and do nothing else.
    Log,
    /// Print it and, if the sender asked for a reply (src_cb is not 0),
    /// reply to its callback with the same body.
    Echo,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Listen on one or more endpoints until SIGINT or SIGTERM, answering ACK
    /// and ECHO, and print each message handed to the server loop as JSON.
    Serve {
        /// Endpoint to bind (repeatable), e.g. tcp://127.0.0.1:5555, ipc:///tmp/m.sock, inproc://x.
        #[arg(long = "bind", required = true)]
        binds: Vec<Endpoint>,
        /// Routing id of the listeners.
        #[arg(long, default_value = "messenger-serve")]
        identity: String,
        /// What the server loop does with each message.
        #[arg(long, value_enum, default_value_t = SlcMode::Log)]
        slc: SlcMode,
        /// Print nothing per message (for `messenger bench --via slc`, which
        /// would otherwise measure JSON printing).
        #[arg(long)]
        quiet: bool,
        /// Write one line to stderr this often (e.g. 10s): rates since the
        /// last line (messages/s, bytes/s, resends/s), the server loop's
        /// p50/p99 time, and the gauges now, with a timestamp.
        #[arg(long, value_parser = parse_period)]
        stats_interval: Option<Duration>,
        /// Serve Prometheus metrics over HTTP at ADDR/metrics (e.g.
        /// 127.0.0.1:9464; port 0 picks one, printed as {"metrics": URL}).
        /// Fails to start if the address is in use.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        curve: curve::CurveServerArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Send BODY to callback N at ENDPOINT and wait for its ACK.
    Send(MessageArgs),
    /// Send BODY with a callback and print the reply's body (on a
    /// terminal as one line, its control bytes escaped; into a pipe or a
    /// file as it is).
    Request(MessageArgs),
    /// ECHO round trips, like ping(8).
    Ping {
        /// Where to ping.
        endpoint: Endpoint,
        /// Number of pings (at least 1).
        #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// Time between pings.
        #[arg(short = 'i', long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// How long to wait for each reply.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        curve: curve::CurveClientArgs,
    },
    /// Measure request/reply latency (1 in flight) and throughput (N in
    /// flight) over tcp, ipc and inproc, in this process or against
    /// `messenger serve --slc echo` with --connect.
    Bench(bench::Args),
    /// Run the showcase in one process and exit: see README.md.
    Demo,
    /// The replication scenario's replica or primary as a process of its
    /// own (on different hosts, say).
    #[command(subcommand)]
    Replicate(replicate::Role),
    /// Make a CURVE key pair: print it as a secret certificate (CZMQ's
    /// format), or write it to FILE (mode 0600) and FILE.pub (its public
    /// certificate) and print the public key.
    Keygen {
        /// Write the secret certificate here and the public one to
        /// FILE.pub; existing files are never overwritten.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            binds,
            identity,
            slc,
            quiet,
            stats_interval,
            metrics_addr,
            secret,
            curve,
            limits,
        } => {
            let config = limits.apply(messenger::Config {
                auth: secret.load()?,
                curve: curve.load()?,
                ..messenger::Config::default()
            });
            let observe = serve::Observe {
                stats_interval,
                metrics_addr,
            };
            serve::run(binds, identity, slc, quiet, observe, config).await
        }
        Command::Send(args) => client::send(args).await,
        Command::Request(args) => client::request(args).await,
        Command::Ping {
            endpoint,
            count,
            interval,
            timeout,
            secret,
            curve,
        } => {
            let (secret, curve) = (secret.load()?, curve.load()?);
            client::ping(endpoint, count, interval, timeout, secret, curve).await
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Demo => demo::run().await,
        Command::Replicate(role) => replicate::run(role).await,
        Command::Keygen { out } => curve::keygen(out),
    }
}
