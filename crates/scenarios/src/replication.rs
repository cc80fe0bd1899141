//! Log replication: a primary streams batches of log records to two
//! replicas over tcp on 127.0.0.1, each party its own [`Messenger`] with its
//! own identity.
//!
//! - The primary sends each batch ([`AppendBatch`], MessagePack) to each
//!   replica's listener as a request addressed to the replica's server loop
//!   (NOOP), pipelined up to [`ReplicationOptions::max_in_flight`] batches
//!   per replica.
//! - A replica applies a batch to its in-memory log in its server loop
//!   (checking LSN order: a batch it already holds is ignored as a
//!   duplicate, a batch beyond its end is refused as a gap, an overlapping
//!   one contributes its new tail) and replies [`Applied`] ("applied up to
//!   LSN n") to the request's callback.
//! - **Commit policy: a batch commits once both replicas have applied it.**
//!   The primary never has more than
//!   [`ReplicationOptions::max_uncommitted`] batches beyond the last
//!   commit, so while a replica is away the primary keeps streaming to the
//!   live one up to that bound and then waits; the whole run is bounded by
//!   [`ReplicationOptions::deadline`], so nothing waits forever.
//! - **Restart policy: a restarted replica has lost its log** (it models a
//!   crashed process; nothing survives in memory). It answers the first
//!   batch it sees with [`AppendOutcome::Gap`] and applied LSN 0, and the
//!   primary resends from LSN 1 until it has caught up. A failed request
//!   (disconnect, timeout) makes the primary resend from the last LSN that
//!   replica confirmed, after a short pause.
//!
//! With [`ReplicationOptions::kill_replica_after`] the second replica's
//! messenger shuts down once that many batches have committed and a new
//! one starts on the same port after [`ReplicationOptions::restart_delay`];
//! the primary's pooled connection redials it by itself.
//!
//! [`run`] returns an error unless, at the end, both replicas hold exactly
//! the primary's log.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Latency, Micros, SetupError, per_second};
use messenger::typed::{from_msgpack, to_msgpack};
use messenger::{
    BindError, Config, ConnectionId, Endpoint, Incoming, Messenger, NOOP, RequestError, Responder,
    StatsSnapshot,
};

/// One record of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Log sequence number, counting from 1 with no gaps.
    pub lsn: u64,
    /// The transaction that wrote it.
    pub txn: u64,
    /// The key written.
    pub key: String,
    /// The value written.
    pub value: String,
}

/// What the primary sends: consecutive records starting at `first_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendBatch {
    /// The primary's term; a replica refuses batches from an older term.
    pub term: u64,
    /// LSN of `records[0]`.
    pub first_lsn: u64,
    /// The records, LSNs `first_lsn`, `first_lsn + 1`, ...
    pub records: Vec<LogRecord>,
}

/// What a replica did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// New records were appended.
    Applied,
    /// The replica already held every record of the batch; nothing changed.
    Duplicate,
    /// The batch starts beyond the replica's log: the primary must resend
    /// from `applied_lsn + 1`.
    Gap,
    /// The batch is from an older term than the replica has seen.
    StaleTerm,
    /// The body was not a well-formed batch (undecodable, or LSNs not
    /// consecutive).
    Malformed,
}

/// A replica's answer to a batch: "applied up to LSN `applied_lsn`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The replica's name.
    pub replica: String,
    /// Which life of the replica answered (1, then 2 after a restart...):
    /// lets the primary tell a replica that lost its log from a late reply.
    pub incarnation: u64,
    /// The highest term the replica has seen.
    pub term: u64,
    /// The replica's log holds LSNs 1 ..= `applied_lsn`.
    pub applied_lsn: u64,
    /// What it did with this batch.
    pub outcome: AppendOutcome,
}

/// A replica's in-memory log and the rules for applying batches to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaLog {
    /// Highest term seen.
    pub term: u64,
    /// The records, `records[i].lsn == i + 1`.
    pub records: Vec<LogRecord>,
}

impl ReplicaLog {
    /// The last LSN held (0 when empty).
    pub fn applied_lsn(&self) -> u64 {
        self.records.len() as u64
    }

    /// Applies `batch` if it continues or overlaps the log's end.
    pub fn apply(&mut self, batch: &AppendBatch) -> AppendOutcome {
        if batch.term < self.term {
            return AppendOutcome::StaleTerm;
        }
        let consecutive = batch
            .records
            .iter()
            .enumerate()
            .all(|(i, r)| batch.first_lsn.checked_add(i as u64) == Some(r.lsn));
        if batch.first_lsn == 0 || !consecutive {
            return AppendOutcome::Malformed;
        }
        self.term = batch.term;
        let applied = self.applied_lsn();
        let last = batch.first_lsn + batch.records.len() as u64 - 1;
        if batch.records.is_empty() || last <= applied {
            return AppendOutcome::Duplicate;
        }
        if batch.first_lsn > applied + 1 {
            return AppendOutcome::Gap;
        }
        let skip = (applied + 1 - batch.first_lsn) as usize;
        self.records.extend_from_slice(&batch.records[skip..]);
        AppendOutcome::Applied
    }
}

/// Settings of one replication run.
#[derive(Debug, Clone)]
pub struct ReplicationOptions {
    /// Batches the primary writes. Default 500.
    pub batches: u64,
    /// Records per batch. Default 32.
    pub batch_size: usize,
    /// Shut the second replica down once this many batches have committed,
    /// then restart it on the same port. Default none.
    pub kill_replica_after: Option<u64>,
    /// tcp ports of the two replicas on 127.0.0.1; 0 lets the OS choose.
    pub replica_ports: [u16; 2],
    /// Most batches written beyond the last commit. Default 16: on loopback
    /// a deeper window adds queueing latency without adding throughput.
    pub max_uncommitted: usize,
    /// Most batches awaiting a replica's answer, per replica. Default 16.
    pub max_in_flight: usize,
    /// How long the killed replica stays down. Default 200 ms.
    pub restart_delay: Duration,
    /// How long the primary waits for one batch's answer before resending
    /// from the replica's last confirmed LSN. Default 2 s.
    pub request_timeout: Duration,
    /// Bound on the whole run. Default 30 s.
    pub deadline: Duration,
    /// The primary's term. Default 1.
    pub term: u64,
}

impl Default for ReplicationOptions {
    fn default() -> Self {
        ReplicationOptions {
            batches: 500,
            batch_size: 32,
            kill_replica_after: None,
            replica_ports: [0, 0],
            max_uncommitted: 16,
            max_in_flight: 16,
            restart_delay: Duration::from_millis(200),
            request_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
            term: 1,
        }
    }
}

/// How one replica ended up.
#[derive(Debug, Clone)]
pub struct ReplicaReport {
    /// Its name (also its messenger's identity).
    pub name: String,
    /// Where it listened.
    pub endpoint: Endpoint,
    /// How many times it was started (2 after a restart).
    pub incarnations: u64,
    /// The last LSN its (last incarnation's) log holds.
    pub applied_lsn: u64,
    /// Batches its last incarnation appended records from.
    pub batches_applied: u64,
    /// Batches its last incarnation ignored as already held.
    pub duplicates_ignored: u64,
    /// Batches its last incarnation refused as beyond its log's end.
    pub gaps_reported: u64,
    /// Batch sends the primary made to it, resends included.
    pub batches_sent: u64,
    /// Of those, sends of a batch it had been sent before.
    pub batches_resent: u64,
    /// Requests to it that failed (disconnect, timeout).
    pub failed_requests: u64,
}

/// What happened around the killed replica.
#[derive(Debug, Clone)]
pub struct KillReport {
    /// The replica that was killed.
    pub replica: String,
    /// Batches committed when it was shut down.
    pub after_batch: u64,
    /// From the start of its shutdown to its restart.
    pub down_for: Duration,
    /// From its restart to the next commit (it had to catch up from LSN 1).
    pub commits_resumed_after: Option<Duration>,
}

/// The outcome of a successful run: both replicas hold the primary's log.
#[derive(Debug, Clone)]
pub struct ReplicationReport {
    /// The primary's term.
    pub term: u64,
    /// Batches written and committed.
    pub batches: u64,
    /// Records written and committed.
    pub records: u64,
    /// From the first write to the last commit.
    pub elapsed: Duration,
    /// From writing a batch to both replicas having applied it.
    pub commit_latency: Latency,
    /// Per replica.
    pub replicas: Vec<ReplicaReport>,
    /// Present when a replica was killed and restarted.
    pub kill: Option<KillReport>,
    /// The primary messenger's counters at the end.
    pub primary_stats: StatsSnapshot,
}

impl ReplicationReport {
    /// Committed batches per second.
    pub fn batches_per_sec(&self) -> f64 {
        per_second(self.batches, self.elapsed)
    }

    /// Committed records per second.
    pub fn records_per_sec(&self) -> f64 {
        per_second(self.records, self.elapsed)
    }
}

impl fmt::Display for ReplicationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_batch = self.records / self.batches.max(1);
        writeln!(
            f,
            "sent: {} batches x {} records (LSN 1..={}, term {}) to {} replicas as MessagePack requests",
            self.batches,
            per_batch,
            self.records,
            self.term,
            self.replicas.len()
        )?;
        writeln!(
            f,
            "committed: {} batches in {:.2} s: {:.0} batches/s, {:.0} records/s",
            self.batches,
            self.elapsed.as_secs_f64(),
            self.batches_per_sec(),
            self.records_per_sec()
        )?;
        writeln!(f, "commit latency: {}", self.commit_latency)?;
        for r in &self.replicas {
            writeln!(
                f,
                "{} ({}): applied up to LSN {}; {} batches sent, {} resent, {} failed requests; \
                 last life applied {}, ignored {} duplicates, reported {} gaps{}",
                r.name,
                r.endpoint,
                r.applied_lsn,
                r.batches_sent,
                r.batches_resent,
                r.failed_requests,
                r.batches_applied,
                r.duplicates_ignored,
                r.gaps_reported,
                if r.incarnations > 1 {
                    format!(" ({} lives)", r.incarnations)
                } else {
                    String::new()
                }
            )?;
        }
        if let Some(k) = &self.kill {
            writeln!(
                f,
                "killed {} after {} commits; down {}, commits resumed {} after its restart",
                k.replica,
                k.after_batch,
                Micros(k.down_for),
                k.commits_resumed_after
                    .map_or("never".to_string(), |d| Micros(d).to_string())
            )?;
        }
        let s = &self.primary_stats;
        writeln!(
            f,
            "primary: {} messages sent, {} ACKs and {} replies received, {} resends, {} reconnects",
            s.sent, s.acks_received, s.msc_delivered, s.resends, s.reconnects
        )?;
        write!(f, "check: both replicas hold exactly the primary's log")
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The options make no sense.
    #[error("invalid options: {0}")]
    Options(String),
    /// A messenger, listener, connection or process could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The deadline passed before everything committed.
    #[error(
        "timed out after {after:?}: {committed} of {total} batches committed; replicas confirmed LSNs {confirmed:?}"
    )]
    Timeout {
        /// The deadline.
        after: Duration,
        /// Batches committed.
        committed: u64,
        /// Batches to commit.
        total: u64,
        /// The LSN each replica last confirmed.
        confirmed: Vec<u64>,
    },
    /// A replica refused a batch in a way resending cannot fix.
    #[error("{replica} answered {outcome:?} (applied LSN {applied_lsn})")]
    Refused {
        /// The replica.
        replica: String,
        /// Its answer.
        outcome: AppendOutcome,
        /// Its applied LSN.
        applied_lsn: u64,
    },
    /// A replica's final log is not the primary's.
    #[error("{replica}'s log differs from the primary's: {detail}")]
    Diverged {
        /// The replica.
        replica: String,
        /// The first difference.
        detail: String,
    },
}

fn setup(what: impl Into<String>) -> impl FnOnce(String) -> ReplicationError {
    let what = what.into();
    move |why| SetupError::new(what, why).into()
}

#[derive(Debug, Default)]
struct ReplicaState {
    log: ReplicaLog,
    batches_applied: u64,
    duplicates: u64,
    gaps: u64,
}

/// A running replica: a messenger listening on tcp, applying batches in
/// its server loop.
struct Replica {
    name: String,
    incarnation: u64,
    messenger: Messenger,
    endpoint: Endpoint,
    state: Arc<Mutex<ReplicaState>>,
}

fn lock(state: &Mutex<ReplicaState>) -> std::sync::MutexGuard<'_, ReplicaState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replica {
    /// Starts a replica with an empty log on 127.0.0.1:`port`. A port that
    /// is still in use (its previous life's socket closing) is retried for
    /// up to 3 s.
    async fn start(name: &str, incarnation: u64, port: u16) -> Result<Replica, ReplicationError> {
        let config = Config {
            shutdown_grace: Duration::from_secs(1),
            ..Config::default()
        };
        let messenger = Messenger::with_config(name.to_string(), config)
            .map_err(|e| setup(format!("{name}: messenger"))(e.to_string()))?;
        let state = Arc::new(Mutex::new(ReplicaState::default()));
        let slc = {
            let state = Arc::clone(&state);
            let name = name.to_string();
            move |m: Incoming, r: Responder| {
                let mut s = lock(&state);
                let outcome = match m.decode::<AppendBatch>() {
                    Ok(batch) => s.log.apply(&batch),
                    Err(_) => AppendOutcome::Malformed,
                };
                match outcome {
                    AppendOutcome::Applied => s.batches_applied += 1,
                    AppendOutcome::Duplicate => s.duplicates += 1,
                    AppendOutcome::Gap => s.gaps += 1,
                    AppendOutcome::StaleTerm | AppendOutcome::Malformed => {}
                }
                let reply = Applied {
                    replica: name.clone(),
                    incarnation,
                    term: s.log.term,
                    applied_lsn: s.log.applied_lsn(),
                    outcome,
                };
                drop(s);
                // A full send queue loses this answer; the primary's request
                // times out and it resends from the last confirmed LSN.
                if let Err(e) = r.try_reply_typed(&reply) {
                    tracing::warn!(replica = %name, error = %e, "cannot answer a batch");
                }
            }
        };
        let endpoint = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        let give_up = Instant::now() + Duration::from_secs(3);
        let bound = loop {
            match messenger
                .listen_for_connection(&endpoint, name.to_string(), slc.clone())
                .await
            {
                Ok(b) => break b,
                Err(BindError::InUse(_)) if port != 0 && Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => {
                    messenger.shutdown().await;
                    return Err(setup(format!("{name}: listen on {endpoint}"))(
                        e.to_string(),
                    ));
                }
            }
        };
        Ok(Replica {
            name: name.to_string(),
            incarnation,
            messenger,
            endpoint: bound.endpoint,
            state,
        })
    }

    fn port(&self) -> u16 {
        match &self.endpoint {
            Endpoint::Tcp { port, .. } => *port,
            _ => 0,
        }
    }
}

/// The primary's view of one replica.
#[derive(Debug)]
struct Follower {
    conn: ConnectionId,
    /// Index of the next batch to send.
    next: usize,
    /// Highest batch index sent so far, plus one.
    high: usize,
    /// The LSN the replica last confirmed, from its newest incarnation.
    confirmed: u64,
    incarnation: u64,
    /// Bumped on every rewind; answers to older sends do not rewind again.
    epoch: u64,
    in_flight: usize,
    retry_at: Option<Instant>,
    sent: u64,
    resent: u64,
    failed: u64,
}

struct Written {
    last_lsn: u64,
    body: Bytes,
    written_at: Instant,
}

struct Done {
    replica: usize,
    epoch: u64,
    result: Result<Incoming, RequestError>,
}

enum Kill {
    Waiting(u64),
    Down {
        since: Instant,
        restart_at: Instant,
        after: u64,
    },
    Restarted {
        at: Instant,
        report: KillReport,
    },
    Finished(KillReport),
    Never,
}

/// Pause before resending to a replica whose request failed.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Runs the primary and two replicas until every batch has committed, then
/// checks both replicas hold exactly the primary's log.
pub async fn run(opts: ReplicationOptions) -> Result<ReplicationReport, ReplicationError> {
    if opts.batches == 0 || opts.batch_size == 0 {
        return Err(ReplicationError::Options(
            "--batches and --batch-size must be at least 1".into(),
        ));
    }
    if opts.max_uncommitted == 0 || opts.max_in_flight == 0 {
        return Err(ReplicationError::Options(
            "the uncommitted and in-flight windows must be at least 1".into(),
        ));
    }
    if let Some(k) = opts.kill_replica_after
        && k >= opts.batches
    {
        return Err(ReplicationError::Options(format!(
            "--kill-replica-after {k} must be below --batches {}",
            opts.batches
        )));
    }
    let mut replicas = Vec::with_capacity(2);
    for (i, port) in opts.replica_ports.iter().enumerate() {
        match Replica::start(&format!("replica-{}", i + 1), 1, *port).await {
            Ok(r) => replicas.push(r),
            Err(e) => {
                for r in &replicas {
                    r.messenger.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    let primary_config = Config {
        request_timeout: opts.request_timeout,
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    let primary = match Messenger::with_config("primary", primary_config) {
        Ok(m) => m,
        Err(e) => {
            for r in &replicas {
                r.messenger.shutdown().await;
            }
            return Err(setup("primary: messenger")(e.to_string()));
        }
    };
    let result = drive(&opts, &primary, &mut replicas).await;
    primary.shutdown().await;
    for r in &replicas {
        r.messenger.shutdown().await;
    }
    result
}

fn record(lsn: u64, batch: u64) -> LogRecord {
    LogRecord {
        lsn,
        txn: batch + 1,
        key: format!("k{}", lsn % 97),
        value: format!("v{lsn}"),
    }
}

async fn drive(
    opts: &ReplicationOptions,
    primary: &Messenger,
    replicas: &mut [Replica],
) -> Result<ReplicationReport, ReplicationError> {
    let mut followers = Vec::with_capacity(replicas.len());
    for r in replicas.iter() {
        let conn = primary
            .make_connection(&r.endpoint)
            .await
            .map_err(|e| setup(format!("primary: connect to {}", r.endpoint))(e.to_string()))?;
        followers.push(Follower {
            conn,
            next: 0,
            high: 0,
            confirmed: 0,
            incarnation: r.incarnation,
            epoch: 0,
            in_flight: 0,
            retry_at: None,
            sent: 0,
            resent: 0,
            failed: 0,
        });
    }
    let started = Instant::now();
    let deadline = started + opts.deadline;
    let mut log: Vec<LogRecord> = Vec::new();
    let mut written: Vec<Written> = Vec::new();
    let mut committed = 0usize;
    let mut latencies = Vec::with_capacity(opts.batches as usize);
    let mut in_flight = FuturesUnordered::new();
    let mut kill = opts.kill_replica_after.map_or(Kill::Never, Kill::Waiting);
    let total = opts.batches as usize;
    let victim = replicas.len() - 1;

    while committed < total {
        let now = Instant::now();
        if now >= deadline {
            return Err(ReplicationError::Timeout {
                after: opts.deadline,
                committed: committed as u64,
                total: opts.batches,
                confirmed: followers.iter().map(|f| f.confirmed).collect(),
            });
        }
        // Write new batches while the uncommitted window allows.
        while written.len() < total && written.len() - committed < opts.max_uncommitted {
            let first_lsn = log.len() as u64 + 1;
            let n = written.len() as u64;
            let records: Vec<LogRecord> = (0..opts.batch_size as u64)
                .map(|i| record(first_lsn + i, n))
                .collect();
            let batch = AppendBatch {
                term: opts.term,
                first_lsn,
                records,
            };
            let body = to_msgpack(&batch).map_err(|e| setup("encode a batch")(e.to_string()))?;
            log.extend(batch.records);
            written.push(Written {
                last_lsn: log.len() as u64,
                body,
                written_at: Instant::now(),
            });
        }
        // Kill and restart the last replica when it is time.
        match kill {
            Kill::Waiting(after) if committed as u64 >= after => {
                let since = Instant::now();
                replicas[victim].messenger.shutdown().await;
                kill = Kill::Down {
                    since,
                    restart_at: Instant::now() + opts.restart_delay,
                    after,
                };
            }
            Kill::Down {
                since,
                restart_at,
                after,
            } if now >= restart_at => {
                let old = &replicas[victim];
                let next = Replica::start(&old.name, old.incarnation + 1, old.port()).await?;
                replicas[victim] = next;
                let at = Instant::now();
                kill = Kill::Restarted {
                    at,
                    report: KillReport {
                        replica: replicas[victim].name.clone(),
                        after_batch: after,
                        down_for: at - since,
                        commits_resumed_after: None,
                    },
                };
            }
            _ => {}
        }
        // Send what each replica still needs.
        for (i, f) in followers.iter_mut().enumerate() {
            if f.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            f.retry_at = None;
            while f.in_flight < opts.max_in_flight && f.next < written.len() {
                let idx = f.next;
                f.next += 1;
                f.in_flight += 1;
                f.sent += 1;
                if idx < f.high {
                    f.resent += 1;
                }
                f.high = f.high.max(idx + 1);
                let (m, conn, epoch) = (primary.clone(), f.conn, f.epoch);
                let body = written[idx].body.clone();
                let timeout = opts.request_timeout;
                in_flight.push(async move {
                    let result = m.request_with_timeout(conn, NOOP, &body, timeout).await;
                    Done {
                        replica: i,
                        epoch,
                        result,
                    }
                });
            }
        }
        // Wait for an answer or the next timer.
        let mut wake = deadline;
        for f in &followers {
            if let Some(t) = f.retry_at {
                wake = wake.min(t);
            }
        }
        if let Kill::Down { restart_at, .. } = kill {
            wake = wake.min(restart_at);
        }
        let done = tokio::select! {
            Some(done) = in_flight.next() => done,
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let f = &mut followers[done.replica];
        f.in_flight -= 1;
        let answer = done.result.map_err(|e| e.to_string()).and_then(|m| {
            from_msgpack::<Applied>(&m.body).map_err(|e| format!("undecodable answer: {e}"))
        });
        match answer {
            Ok(a) => {
                if a.incarnation > f.incarnation {
                    f.incarnation = a.incarnation;
                    f.confirmed = a.applied_lsn;
                } else if a.incarnation == f.incarnation {
                    f.confirmed = f.confirmed.max(a.applied_lsn);
                }
                match a.outcome {
                    AppendOutcome::Applied | AppendOutcome::Duplicate => {}
                    AppendOutcome::Gap if done.epoch == f.epoch => {
                        f.epoch += 1;
                        f.next = written.partition_point(|w| w.last_lsn <= f.confirmed);
                    }
                    AppendOutcome::Gap => {}
                    AppendOutcome::StaleTerm | AppendOutcome::Malformed => {
                        return Err(ReplicationError::Refused {
                            replica: a.replica,
                            outcome: a.outcome,
                            applied_lsn: a.applied_lsn,
                        });
                    }
                }
            }
            Err(why) => {
                f.failed += 1;
                if done.epoch == f.epoch {
                    tracing::debug!(replica = done.replica, %why, "batch failed; resending from the last confirmed LSN");
                    f.epoch += 1;
                    f.next = written.partition_point(|w| w.last_lsn <= f.confirmed);
                    f.retry_at = Some(Instant::now() + RETRY_PAUSE);
                }
            }
        }
        // Commit what every replica has applied.
        let everyone = followers.iter().map(|f| f.confirmed).min().unwrap_or(0);
        let now = Instant::now();
        let before = committed;
        while committed < written.len() && written[committed].last_lsn <= everyone {
            latencies.push(now - written[committed].written_at);
            committed += 1;
        }
        if committed > before {
            kill = match kill {
                Kill::Restarted { at, mut report } => {
                    report.commits_resumed_after = Some(now - at);
                    Kill::Finished(report)
                }
                other => other,
            };
        }
    }
    let elapsed = started.elapsed();
    // Let the last ACKs land so the counters are complete.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let mut reports = Vec::with_capacity(replicas.len());
    for (r, f) in replicas.iter().zip(&followers) {
        let s = lock(&r.state);
        if let Some(detail) = first_difference(&log, &s.log.records) {
            return Err(ReplicationError::Diverged {
                replica: r.name.clone(),
                detail,
            });
        }
        reports.push(ReplicaReport {
            name: r.name.clone(),
            endpoint: r.endpoint.clone(),
            incarnations: r.incarnation,
            applied_lsn: s.log.applied_lsn(),
            batches_applied: s.batches_applied,
            duplicates_ignored: s.duplicates,
            gaps_reported: s.gaps,
            batches_sent: f.sent,
            batches_resent: f.resent,
            failed_requests: f.failed,
        });
    }
    let kill = match kill {
        Kill::Finished(k) => Some(k),
        Kill::Restarted { report, .. } => Some(report),
        _ => None,
    };
    Ok(ReplicationReport {
        term: opts.term,
        batches: opts.batches,
        records: log.len() as u64,
        elapsed,
        commit_latency: Latency::from_samples(latencies),
        replicas: reports,
        kill,
        primary_stats: primary.stats(),
    })
}

/// Describes the first place two logs differ, if they do.
fn first_difference(primary: &[LogRecord], replica: &[LogRecord]) -> Option<String> {
    if let Some(i) = primary.iter().zip(replica).position(|(a, b)| a != b) {
        return Some(format!(
            "LSN {}: primary has {:?}, replica has {:?}",
            i + 1,
            primary[i],
            replica[i]
        ));
    }
    if primary.len() != replica.len() {
        return Some(format!(
            "primary holds {} records, replica {}",
            primary.len(),
            replica.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first_lsn: u64, n: u64) -> AppendBatch {
        AppendBatch {
            term: 1,
            first_lsn,
            records: (first_lsn..first_lsn + n).map(|l| record(l, 0)).collect(),
        }
    }

    #[test]
    fn apply_checks_lsn_order() {
        let mut log = ReplicaLog::default();
        assert_eq!(log.apply(&batch(1, 3)), AppendOutcome::Applied);
        assert_eq!(log.apply(&batch(1, 3)), AppendOutcome::Duplicate);
        assert_eq!(log.apply(&batch(2, 2)), AppendOutcome::Duplicate);
        assert_eq!(log.apply(&batch(6, 2)), AppendOutcome::Gap);
        assert_eq!(log.apply(&batch(3, 3)), AppendOutcome::Applied);
        assert_eq!(log.applied_lsn(), 5);
        assert!(
            log.records
                .iter()
                .enumerate()
                .all(|(i, r)| r.lsn == i as u64 + 1)
        );
        let mut bad = batch(6, 2);
        bad.records[1].lsn = 9;
        assert_eq!(log.apply(&bad), AppendOutcome::Malformed);
        assert_eq!(log.apply(&batch(0, 1)), AppendOutcome::Malformed);
        let mut old = batch(6, 1);
        log.term = 2;
        old.term = 1;
        assert_eq!(log.apply(&old), AppendOutcome::StaleTerm);
        assert_eq!(log.applied_lsn(), 5);
    }

    #[test]
    fn differences_are_described() {
        let a: Vec<_> = (1..=3).map(|l| record(l, 0)).collect();
        assert_eq!(first_difference(&a, &a), None);
        assert!(first_difference(&a, &a[..2]).is_some());
        let mut b = a.clone();
        b[1].value = "x".into();
        assert!(first_difference(&a, &b).unwrap().starts_with("LSN 2"));
    }
}
