//! `messenger replicate`: the replication scenario's replica and primary
//! as processes of their own, so they can run on different hosts (the
//! network test bed, tests/netns.rs). The scenario is
//! `messenger_scenarios::replication`; this is the command around it.

use std::time::Duration;

use messenger::Endpoint;
use messenger_scenarios::replication::{self, ReplicaServer, ReplicationOptions};
use serde_json::json;

/// `messenger replicate` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// A replica: listen, apply batches, answer digest queries, until
    /// SIGINT or SIGTERM. Prints `{"listening": EP, "replica": NAME,
    /// "incarnation": N}`, and when stopped, what its log holds as one JSON
    /// object (`applied_lsn`, `digest`, `batches_applied`,
    /// `duplicates_ignored`, `gaps_reported`).
    Replica {
        /// Where to listen (tcp).
        #[arg(long)]
        bind: Endpoint,
        /// Its name: messenger and listener identity.
        #[arg(long, default_value = "replica")]
        identity: String,
        /// Which life this is; must grow from one start to the next.
        /// Default: microseconds since the Unix epoch.
        #[arg(long)]
        incarnation: Option<u64>,
    },
    /// The primary: stream batches to the replicas until every batch has
    /// committed on all of them (a batch commits once every replica has
    /// applied it), check that each holds exactly its log, and print a
    /// summary. Exits 1 if a replica's log differs or the deadline passes.
    Primary {
        /// A replica's endpoint (repeatable).
        #[arg(long = "replica", required = true)]
        replicas: Vec<Endpoint>,
        /// Batches to write.
        #[arg(long, default_value_t = 500)]
        batches: u64,
        /// Records per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Write at most this many batches a second (default: as fast as
        /// commits allow).
        #[arg(long)]
        rate: Option<f64>,
        /// Most batches written beyond the last commit: a deep window
        /// keeps a live replica streaming while another is away.
        #[arg(long, default_value_t = 16)]
        max_uncommitted: usize,
        /// Most batches awaiting one replica's answer.
        #[arg(long, default_value_t = 16)]
        max_in_flight: usize,
        /// How long to wait for one batch's answer before resending from
        /// the replica's last confirmed LSN.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        request_timeout: Duration,
        /// Bound on the whole run.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        deadline: Duration,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `messenger replicate ROLE`.
pub async fn run(role: Role) -> Result<(), String> {
    match role {
        Role::Replica {
            bind,
            identity,
            incarnation,
        } => replica(bind, identity, incarnation).await,
        Role::Primary {
            replicas,
            batches,
            batch_size,
            rate,
            max_uncommitted,
            max_in_flight,
            request_timeout,
            deadline,
            json,
        } => {
            let opts = ReplicationOptions {
                batches,
                batch_size,
                rate,
                max_uncommitted,
                max_in_flight,
                request_timeout,
                deadline,
                ..ReplicationOptions::default()
            };
            primary(opts, &replicas, json).await
        }
    }
}

async fn replica(bind: Endpoint, name: String, incarnation: Option<u64>) -> Result<(), String> {
    let incarnation = incarnation.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64)
    });
    let signals = super::serve::Signals::catch()?;
    let server = ReplicaServer::start(&name, incarnation, &bind)
        .await
        .map_err(|e| e.to_string())?;
    super::serve::print_line(&json!({
        "listening": server.endpoint().to_string(),
        "replica": name,
        "incarnation": incarnation,
    }));
    signals.wait().await;
    server.shutdown().await;
    let d = server.digest();
    super::serve::print_line(&json!({
        "replica": d.replica,
        "incarnation": d.incarnation,
        "applied_lsn": d.applied_lsn,
        "digest": format!("{:016x}", d.digest),
        "batches_applied": d.batches_applied,
        "duplicates_ignored": d.duplicates_ignored,
        "gaps_reported": d.gaps_reported,
    }));
    Ok(())
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn latency(l: &messenger_scenarios::Latency) -> serde_json::Value {
    json!({
        "count": l.count,
        "p50_ms": millis(l.p50),
        "p99_ms": millis(l.p99),
        "max_ms": millis(l.max),
    })
}

async fn primary(
    opts: ReplicationOptions,
    replicas: &[Endpoint],
    as_json: bool,
) -> Result<(), String> {
    let report = match replication::run_primary(opts, replicas).await {
        Ok(r) => r,
        Err(e) => {
            if as_json {
                super::serve::print_line(&json!({ "error": e.to_string() }));
            }
            return Err(e.to_string());
        }
    };
    if !as_json {
        say!("{report}")?;
        return Ok(());
    }
    let s = &report.primary_stats;
    let replicas: Vec<serde_json::Value> = report
        .replicas
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "endpoint": r.endpoint.to_string(),
                "lives": r.incarnations,
                "applied_lsn": r.applied_lsn,
                "digest": format!("{:016x}", r.digest),
                "batches_sent": r.batches_sent,
                "batches_resent": r.batches_resent,
                "failed_requests": r.failed_requests,
                "batches_applied": r.batches_applied,
                "duplicates_ignored": r.duplicates_ignored,
                "gaps_reported": r.gaps_reported,
                "confirm_latency": latency(&r.confirm_latency),
                "max_lag_batches": r.max_lag,
                "caught_up_after_ms": r.caught_up_after.map(millis),
            })
        })
        .collect();
    super::serve::print_line(&json!({
        "batches": report.batches,
        "records": report.records,
        "elapsed_ms": millis(report.elapsed),
        "batches_per_s": report.batches_per_sec(),
        "commit_latency": latency(&report.commit_latency),
        "longest_commit_gap_ms": millis(report.longest_commit_gap),
        "digest": format!("{:016x}", report.digest),
        "replicas": replicas,
        "primary": {
            "sent": s.sent,
            "resends": s.resends,
            "reconnects": s.reconnects,
            "timeouts": s.timeouts,
        },
        "check": "every replica holds exactly the primary's log",
    }));
    Ok(())
}
