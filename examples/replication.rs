//! Log replication over tcp: a primary streams batches of log records
//! (MessagePack) to two replicas, each its own messenger; a batch commits
//! once both replicas have applied it. Prints batches/s and the commit
//! latency, and exits 0 only if both replicas end up holding exactly the
//! primary's log.
//!
//! ```sh
//! cargo run --example replication -- --batches 1000 --batch-size 64
//! cargo run --example replication -- --kill-replica-after 200   # replica-2 dies and restarts empty
//! ```
//!
//! With `--kill-replica-after N`, replica-2's messenger shuts down once N
//! batches have committed and a new, empty replica-2 starts on the same
//! port. Commits need both replicas, so they pause (the primary keeps
//! streaming to replica-1 up to its window of uncommitted batches) until
//! the restarted replica, which reports applied LSN 0, has been resent the
//! log from LSN 1 and caught up. See `messenger_scenarios::replication`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use messenger_scenarios::replication::{self, ReplicationOptions};

/// Replicate a log from a primary to two replicas over tcp on 127.0.0.1.
#[derive(Debug, Parser)]
struct Args {
    /// Batches the primary writes.
    #[arg(long, default_value_t = 500)]
    batches: u64,
    /// Records per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Kill replica-2 after this many commits and restart it on its port.
    #[arg(long)]
    kill_replica_after: Option<u64>,
    /// tcp port of replica-1 (0: chosen by the OS).
    #[arg(long, default_value_t = 0)]
    replica1_port: u16,
    /// tcp port of replica-2 (0: chosen by the OS).
    #[arg(long, default_value_t = 0)]
    replica2_port: u16,
    /// Most batches written beyond the last commit.
    #[arg(long, default_value_t = 16)]
    max_uncommitted: usize,
    /// How long the killed replica stays down.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    restart_delay: Duration,
    /// Bound on the whole run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    messenger_scenarios::init_logging();
    let opts = ReplicationOptions {
        batches: args.batches,
        batch_size: args.batch_size,
        kill_replica_after: args.kill_replica_after,
        replica_ports: [args.replica1_port, args.replica2_port],
        max_uncommitted: args.max_uncommitted,
        restart_delay: args.restart_delay,
        deadline: args.deadline,
        ..ReplicationOptions::default()
    };
    match replication::run(opts).await {
        Ok(report) => {
            println!("{report}");
            println!(
                "OK: {:.0} batches/s, commit latency p50 {} us p99 {} us",
                report.batches_per_sec(),
                report.commit_latency.p50.as_micros(),
                report.commit_latency.p99.as_micros()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("replication: error: {e}");
            ExitCode::FAILURE
        }
    }
}
