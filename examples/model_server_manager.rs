//! The Rust counterpart of NoisePage's ModelServerManager: start a model
//! server, wait for its CONNECTED, send it PRINT, print the reply's JSON on
//! one stdout line, send QUIT and wait for it to exit.
//!
//! ```sh
//! cargo run --example model_server_manager -- \
//!     --model-server "python3 tests/py/model_server.py" --message hello    # pyzmq, as NoisePage's
//! cargo run --example model_server_manager -- \
//!     --model-server "python3 examples/python/model_server.py"             # on the Python package
//! cargo run --example model_server_manager     # the in-process stand-in model server
//! cargo run --example model_server_manager -- --endpoint tcp://10.0.0.1:7000 \
//!     --model-server "ssh other-host python3 model_server.py"   # the model server elsewhere
//! ```
//!
//! The model server is started with the manager's ipc socket path (without
//! `ipc://`), or with `--endpoint` the endpoint, as its last argument; it
//! connects as a DEALER with identity `model` to the listener
//! `model-server-conn` and speaks JSON (see
//! `messenger_scenarios::model_server`, which also explains why resending
//! is off on the manager's side). Progress and diagnostics go to stderr,
//! including the child's pid and how many times the server loop saw
//! CONNECTED. On any failure: one line `model_server_manager: error: ...`
//! on stderr, exit status 1, and the model server is killed.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use messenger_scenarios::model_server::{self, ManagerOptions, ModelServerSpec};

/// Drive a model server over ipc.
#[derive(Debug, Parser)]
struct Args {
    /// The model server's command line ("PROGRAM ARGS..."; quotes group
    /// words). Without it, the in-process stand-in model server runs.
    #[arg(long)]
    model_server: Option<String>,
    /// The text to PRINT.
    #[arg(long, default_value = "hello")]
    message: String,
    /// The ipc socket path (default: a fresh one in the temp directory).
    #[arg(long)]
    ipc_path: Option<std::path::PathBuf>,
    /// Listen on this endpoint instead (e.g. tcp://10.0.0.1:7000, for a
    /// model server on another host; it gets the endpoint as its last
    /// argument).
    #[arg(long, conflicts_with = "ipc_path")]
    endpoint: Option<messenger::Endpoint>,
    /// Bound on waiting for CONNECTED.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Bound on waiting for PRINT's reply.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reply_timeout: Duration,
    /// Bound on waiting for the model server to exit after QUIT.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    exit_timeout: Duration,
}

const NAME: &str = "model_server_manager";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    messenger_scenarios::init_logging();
    let server = match &args.model_server {
        Some(line) => match model_server::split_command(line) {
            Ok(words) => ModelServerSpec::Command(words),
            Err(e) => {
                eprintln!("{NAME}: error: --model-server {line:?}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => ModelServerSpec::StandIn(Default::default()),
    };
    let opts = ManagerOptions {
        server,
        messages: vec![args.message.clone()],
        socket_path: args.ipc_path,
        endpoint: args.endpoint,
        connect_timeout: args.connect_timeout,
        reply_timeout: args.reply_timeout,
        exit_timeout: args.exit_timeout,
    };
    let on_start = |pid: Option<u32>| match pid {
        Some(pid) => eprintln!("{NAME}: started model server pid {pid}"),
        None => eprintln!("{NAME}: started the in-process stand-in model server"),
    };
    match model_server::run(opts, on_start).await {
        Ok(report) => {
            if let Some(reply) = report.replies.first() {
                println!("{}", reply.json);
            }
            eprintln!(
                "{NAME}: CONNECTED delivered to the server loop {} time(s); {} resent copies suppressed",
                report.connected_seen, report.duplicates_suppressed
            );
            eprintln!(
                "{NAME}: PRINT answered in {} us; model server exited ({})",
                report.print_latency.p50.as_micros(),
                report.exit
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
