//! Command-line front end. Each subcommand is a thin layer over the library.

mod client;
mod demo;
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
        /// Log a stats snapshot to stderr this often (e.g. 10s).
        #[arg(long, value_parser = humantime::parse_duration)]
        stats_interval: Option<Duration>,
    },
    /// Send BODY to callback N at ENDPOINT and wait for its ACK.
    Send {
        /// Where to send.
        endpoint: Endpoint,
        /// The body, sent as UTF-8 bytes.
        body: String,
        /// The remote callback id to address (0 = the server loop).
        #[arg(long, default_value_t = 0)]
        callback: u64,
        /// Our routing id.
        #[arg(long, default_value = "messenger-cli")]
        identity: String,
        /// How long to wait for the connection and the ACK.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Send BODY with a callback and print the reply's body.
    Request {
        /// Where to send.
        endpoint: Endpoint,
        /// The body, sent as UTF-8 bytes.
        body: String,
        /// The remote callback id to address (1 = ECHO, 0 = the server loop).
        #[arg(long, default_value_t = 0)]
        callback: u64,
        /// Our routing id.
        #[arg(long, default_value = "messenger-cli")]
        identity: String,
        /// How long to wait for the connection and the reply.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// ECHO round trips, like ping(8).
    Ping {
        /// Where to ping.
        endpoint: Endpoint,
        /// Number of pings.
        #[arg(short = 'c', long, default_value_t = 4)]
        count: u32,
        /// Time between pings.
        #[arg(short = 'i', long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// How long to wait for each reply.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run the showcase in one process and exit: see README.md.
    Demo,
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            binds,
            identity,
            slc,
            stats_interval,
        } => serve::run(binds, identity, slc, stats_interval).await,
        Command::Send {
            endpoint,
            body,
            callback,
            identity,
            timeout,
        } => client::send(endpoint, body, callback, identity, timeout).await,
        Command::Request {
            endpoint,
            body,
            callback,
            identity,
            timeout,
        } => client::request(endpoint, body, callback, identity, timeout).await,
        Command::Ping {
            endpoint,
            count,
            interval,
            timeout,
        } => client::ping(endpoint, count, interval, timeout).await,
        Command::Demo => demo::run().await,
    }
}
