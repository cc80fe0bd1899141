//! Three components in one process (parser, planner, executor) talking
//! only through inproc endpoints with typed MessagePack bodies: the planner
//! serves the parser (plan requests) and the executor (feedback) through
//! one server loop; the parser fans each plan's fragments out to the
//! executor's partitions and gathers the partial results. Prints what
//! flowed and exits 0 if every result is right.
//!
//! ```sh
//! cargo run --example inproc_components -- --queries 100 --partitions 8
//! ```

use std::process::ExitCode;

use clap::Parser;
use messenger_scenarios::components::{self, ComponentsOptions};

/// Run queries through parser, planner and executor components over inproc.
#[derive(Debug, Parser)]
struct Args {
    /// Queries to run.
    #[arg(long, default_value_t = 60)]
    queries: u64,
    /// Executor partitions (the fan-out width).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Rows in the table.
    #[arg(long, default_value_t = 20_000)]
    rows: u64,
    /// Queries in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// How many queries' message flows to print.
    #[arg(long, default_value_t = 3)]
    show: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    messenger_scenarios::init_logging();
    let opts = ComponentsOptions {
        queries: args.queries,
        partitions: args.partitions,
        rows: args.rows,
        concurrency: args.concurrency,
        show: args.show,
        ..ComponentsOptions::default()
    };
    match components::run(opts).await {
        Ok(report) => {
            println!("{report}");
            println!("OK: {} queries checked", report.queries);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inproc_components: error: {e}");
            ExitCode::FAILURE
        }
    }
}
