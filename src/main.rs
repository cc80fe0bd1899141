//! The `messenger` command: serve, send, request, ping, bench and demo.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Flushes exported spans (the `otel` feature) when main returns.
    let _logs = cli::logging::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("messenger: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        // Nobody reads the output any more (`| head -1`): done.
        Err(e) if e == cli::STDOUT_CLOSED => ExitCode::SUCCESS,
        Err(e) => {
            cli::fatal(&e);
            ExitCode::FAILURE
        }
    }
}
