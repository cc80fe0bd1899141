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
//!
//! **Across processes and hosts**: [`ReplicaServer`] is one replica on its
//! own (any tcp endpoint), and [`run_primary`] the primary driving
//! replicas it reaches by endpoint (`messenger replicate replica` and
//! `messenger replicate primary`). A replica there is a process whose
//! log dies with it; it answers with a new incarnation when started again.
//! At the end the primary asks each replica for its log's length and
//! [digest](log_digest) ([`LogQuery`] → [`LogDigest`]) and fails unless
//! both match its own log. With [`ReplicationOptions::rate`] the primary
//! writes at a steady pace (so a run spans a fault), and with a deep
//! [`ReplicationOptions::max_uncommitted`] it keeps streaming to a live
//! replica while the other is cut off: commits wait for both, the live
//! replica does not.

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
    Config, ConnectionId, Endpoint, Error, Incoming, Messenger, NOOP, Responder, StatsSnapshot,
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

/// Asks a replica for its log's length and digest (a request to its
/// server loop, like a batch; answered with [`LogDigest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Always `"digest"`; a body a batch can never be mistaken for.
    pub query: DigestTag,
}

/// The one kind of [`LogQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestTag {
    /// The log's length and digest.
    Digest,
}

/// A replica's answer to a [`LogQuery`]: what its log holds and what it
/// did in this life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDigest {
    /// The replica's name.
    pub replica: String,
    /// Which life of the replica answered.
    pub incarnation: u64,
    /// Its log holds LSNs 1 ..= `applied_lsn`.
    pub applied_lsn: u64,
    /// [`log_digest`] of its log.
    pub digest: u64,
    /// Batches this life appended records from.
    pub batches_applied: u64,
    /// Batches this life ignored as already held.
    pub duplicates_ignored: u64,
    /// Batches this life refused as beyond its log's end.
    pub gaps_reported: u64,
}

/// A digest of a log (FNV-1a, 64 bits, over each record's fields): two
/// logs with the same length and digest hold the same records, for the
/// purposes of a test.
pub fn log_digest(records: &[LogRecord]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for r in records {
        eat(&r.lsn.to_le_bytes());
        eat(&r.txn.to_le_bytes());
        eat(&(r.key.len() as u64).to_le_bytes());
        eat(r.key.as_bytes());
        eat(&(r.value.len() as u64).to_le_bytes());
        eat(r.value.as_bytes());
    }
    h
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
    /// Write at most this many batches a second (a steady stream, so that
    /// a run spans a fault); none: as fast as commits allow. Default none.
    pub rate: Option<f64>,
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
            rate: None,
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
    /// [`log_digest`] of its (last incarnation's) log.
    pub digest: u64,
    /// From writing each batch to this replica first confirming it: how
    /// far it fell behind (its max is its longest wait, e.g. a cut).
    pub confirm_latency: Latency,
    /// Most batches written and not yet confirmed by this replica, at any
    /// time.
    pub max_lag: u64,
    /// From the first answer of its newest life (after a restart) to its
    /// having confirmed everything written by then; none if it never
    /// restarted (or never caught up).
    pub caught_up_after: Option<Duration>,
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
    /// The longest time between two commits (or from the start to the
    /// first): how long the slowest replica held commits up.
    pub longest_commit_gap: Duration,
    /// [`log_digest`] of the primary's log.
    pub digest: u64,
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

impl ReplicaState {
    fn digest(&self, name: &str, incarnation: u64) -> LogDigest {
        LogDigest {
            replica: name.to_string(),
            incarnation,
            applied_lsn: self.log.applied_lsn(),
            digest: log_digest(&self.log.records),
            batches_applied: self.batches_applied,
            duplicates_ignored: self.duplicates,
            gaps_reported: self.gaps,
        }
    }
}

impl Replica {
    /// Starts a replica with an empty log on 127.0.0.1:`port`.
    async fn start(name: &str, incarnation: u64, port: u16) -> Result<Replica, ReplicationError> {
        let endpoint = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        Replica::start_at(name, incarnation, &endpoint).await
    }

    /// Starts a replica with an empty log listening on `endpoint`. A port
    /// that is still in use (its previous life's socket closing) is
    /// retried for up to 3 s.
    async fn start_at(
        name: &str,
        incarnation: u64,
        endpoint: &Endpoint,
    ) -> Result<Replica, ReplicationError> {
        let config = Config {
            shutdown_grace: Duration::from_secs(1),
            ..Config::default()
        };
        let messenger = Messenger::builder()
            .identity(name.to_string())
            .config(config)
            .build()
            .map_err(|e| setup(format!("{name}: messenger"))(e.to_string()))?;
        let state = Arc::new(Mutex::new(ReplicaState::default()));
        let slc = {
            let state = Arc::clone(&state);
            let name = name.to_string();
            move |m: Incoming, r: Responder| {
                let mut s = lock(&state);
                let outcome = match m.decode::<AppendBatch>() {
                    Ok(batch) => s.log.apply(&batch),
                    Err(_) if m.decode::<LogQuery>().is_ok() => {
                        let digest = s.digest(&name, incarnation);
                        drop(s);
                        if let Err(e) = r.try_reply_typed(&digest) {
                            tracing::warn!(replica = %name, error = %e, "cannot answer a query");
                        }
                        return;
                    }
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
        let port = match endpoint {
            Endpoint::Tcp { port, .. } => *port,
            _ => 0,
        };
        let give_up = Instant::now() + Duration::from_secs(3);
        let bound = loop {
            match messenger.listen_for_connection(endpoint, slc.clone()).await {
                Ok(b) => break b,
                Err(Error::InUse(_)) if port != 0 && Instant::now() < give_up => {
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

/// One replica on its own, for a primary in another process or on another
/// host ([`run_primary`], `messenger replicate replica`): it listens on a
/// tcp endpoint, applies batches in its server loop and answers
/// [`LogQuery`]. Its log lives in memory and dies with it.
pub struct ReplicaServer(Replica);

impl ReplicaServer {
    /// Starts replica `name` with an empty log on `endpoint` (its messenger
    /// and listener identity are `name`). `incarnation` tells its lives
    /// apart and must grow from one to the next (the time it started will
    /// do): a primary that sees a newer one knows its log was lost.
    pub async fn start(
        name: &str,
        incarnation: u64,
        endpoint: &Endpoint,
    ) -> Result<ReplicaServer, ReplicationError> {
        Replica::start_at(name, incarnation, endpoint)
            .await
            .map(ReplicaServer)
    }

    /// Where it listens (port 0 resolved).
    pub fn endpoint(&self) -> &Endpoint {
        &self.0.endpoint
    }

    /// What its log holds now.
    pub fn digest(&self) -> LogDigest {
        lock(&self.0.state).digest(&self.0.name, self.0.incarnation)
    }

    /// Its messenger's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.0.messenger.stats()
    }

    /// Shuts its messenger down.
    pub async fn shutdown(&self) {
        self.0.messenger.shutdown().await;
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
    /// Its newest incarnation (0: none answered yet).
    incarnation: u64,
    /// Incarnations seen.
    lives: u64,
    /// Bumped on every rewind; answers to older sends do not rewind again.
    epoch: u64,
    in_flight: usize,
    retry_at: Option<Instant>,
    sent: u64,
    resent: u64,
    failed: u64,
    /// Batches before this index have been confirmed at least once.
    first_confirmed: usize,
    /// Write to first confirmation, per batch.
    confirm_samples: Vec<Duration>,
    max_lag: u64,
    /// When a newer life first answered, and the LSN written by then.
    rejoined: Option<(Instant, u64)>,
    caught_up_after: Option<Duration>,
}

impl Follower {
    fn new(conn: ConnectionId, incarnation: u64) -> Follower {
        Follower {
            conn,
            next: 0,
            high: 0,
            confirmed: 0,
            incarnation,
            lives: incarnation.min(1),
            epoch: 0,
            in_flight: 0,
            retry_at: None,
            sent: 0,
            resent: 0,
            failed: 0,
            first_confirmed: 0,
            confirm_samples: Vec::new(),
            max_lag: 0,
            rejoined: None,
            caught_up_after: None,
        }
    }

    /// Takes in an answer's incarnation and applied LSN.
    fn answered(&mut self, incarnation: u64, applied_lsn: u64, written_lsn: u64) {
        if incarnation > self.incarnation {
            if self.incarnation != 0 {
                // A new life: its log is gone; see how long it takes to
                // catch up with what is written now.
                self.rejoined = Some((Instant::now(), written_lsn));
                self.caught_up_after = None;
            }
            self.incarnation = incarnation;
            self.lives += 1;
            self.confirmed = applied_lsn;
        } else if incarnation == self.incarnation {
            self.confirmed = self.confirmed.max(applied_lsn);
        }
    }

    /// Records what the replica has confirmed, as of now.
    fn progress(&mut self, written: &[Written]) {
        let now = Instant::now();
        while self.first_confirmed < written.len()
            && written[self.first_confirmed].last_lsn <= self.confirmed
        {
            self.confirm_samples
                .push(now - written[self.first_confirmed].written_at);
            self.first_confirmed += 1;
        }
        if let Some((at, target)) = self.rejoined
            && self.confirmed >= target
        {
            self.caught_up_after = Some(now - at);
            self.rejoined = None;
        }
        let held = written.partition_point(|w| w.last_lsn <= self.confirmed);
        self.max_lag = self.max_lag.max((written.len() - held) as u64);
    }
}

struct Written {
    last_lsn: u64,
    body: Bytes,
    written_at: Instant,
}

struct Done {
    replica: usize,
    epoch: u64,
    result: Result<Incoming, Error>,
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

fn check_options(opts: &ReplicationOptions) -> Result<(), ReplicationError> {
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
    if let Some(r) = opts.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err(ReplicationError::Options(format!(
            "the rate must be a positive number of batches a second, not {r}"
        )));
    }
    if let Some(k) = opts.kill_replica_after
        && k >= opts.batches
    {
        return Err(ReplicationError::Options(format!(
            "--kill-replica-after {k} must be below --batches {}",
            opts.batches
        )));
    }
    Ok(())
}

fn primary_messenger(opts: &ReplicationOptions) -> Result<Messenger, ReplicationError> {
    let config = Config {
        request_timeout: opts.request_timeout,
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    Messenger::builder()
        .identity("primary")
        .config(config)
        .build()
        .map_err(|e| setup("primary: messenger")(e.to_string()))
}

/// Runs the primary and two replicas until every batch has committed, then
/// checks both replicas hold exactly the primary's log.
pub async fn run(opts: ReplicationOptions) -> Result<ReplicationReport, ReplicationError> {
    check_options(&opts)?;
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
    let primary = match primary_messenger(&opts) {
        Ok(m) => m,
        Err(e) => {
            for r in &replicas {
                r.messenger.shutdown().await;
            }
            return Err(e);
        }
    };
    let endpoints: Vec<Endpoint> = replicas.iter().map(|r| r.endpoint.clone()).collect();
    let result = drive(&opts, &primary, &endpoints, Some(&mut replicas)).await;
    primary.shutdown().await;
    for r in &replicas {
        r.messenger.shutdown().await;
    }
    result
}

/// Runs the primary alone against replicas that run elsewhere
/// ([`ReplicaServer`], `messenger replicate replica`), reached at
/// `replicas`, until every batch has committed on all of them; then asks
/// each for its log's length and digest and fails unless each holds
/// exactly the primary's log. `kill_replica_after` and `replica_ports`
/// are for [`run`]'s own replicas and are refused here.
pub async fn run_primary(
    opts: ReplicationOptions,
    replicas: &[Endpoint],
) -> Result<ReplicationReport, ReplicationError> {
    check_options(&opts)?;
    if opts.kill_replica_after.is_some() {
        return Err(ReplicationError::Options(
            "kill_replica_after needs replicas of the primary's own (run)".into(),
        ));
    }
    if replicas.is_empty() {
        return Err(ReplicationError::Options("no replicas".into()));
    }
    let primary = primary_messenger(&opts)?;
    let result = drive(&opts, &primary, replicas, None).await;
    primary.shutdown().await;
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

/// Asks the replica at `conn` what its log holds, trying until `deadline`.
async fn query_digest(
    primary: &Messenger,
    conn: ConnectionId,
    timeout: Duration,
    deadline: Instant,
) -> Result<LogDigest, String> {
    let body = to_msgpack(&LogQuery {
        query: DigestTag::Digest,
    })
    .map_err(|e| e.to_string())?;
    loop {
        let why = match primary
            .request_with_timeout(conn, NOOP, &body, timeout)
            .await
        {
            Ok(reply) => match from_msgpack::<LogDigest>(&reply.body) {
                Ok(d) => return Ok(d),
                Err(e) => format!("undecodable answer to the digest query: {e}"),
            },
            Err(e) => format!("digest query: {e}"),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(why);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The primary's loop, over replicas at `endpoints`; `local` are those
/// replicas when they run in this process ([`run`]: the kill and restart,
/// and the final check reads their logs), none when they run elsewhere
/// (the final check asks them).
async fn drive(
    opts: &ReplicationOptions,
    primary: &Messenger,
    endpoints: &[Endpoint],
    mut local: Option<&mut Vec<Replica>>,
) -> Result<ReplicationReport, ReplicationError> {
    let mut followers = Vec::with_capacity(endpoints.len());
    for (i, endpoint) in endpoints.iter().enumerate() {
        let conn = primary
            .make_connection(endpoint)
            .await
            .map_err(|e| setup(format!("primary: connect to {endpoint}"))(e.to_string()))?;
        let incarnation = local.as_ref().map_or(0, |rs| rs[i].incarnation);
        followers.push(Follower::new(conn, incarnation));
    }
    let started = Instant::now();
    let deadline = started + opts.deadline;
    let mut log: Vec<LogRecord> = Vec::new();
    let mut written: Vec<Written> = Vec::new();
    let mut committed = 0usize;
    let mut latencies = Vec::with_capacity(opts.batches as usize);
    let mut last_commit_at = started;
    let mut longest_commit_gap = Duration::ZERO;
    let mut in_flight = FuturesUnordered::new();
    let mut kill = match (&local, opts.kill_replica_after) {
        (Some(_), Some(after)) => Kill::Waiting(after),
        _ => Kill::Never,
    };
    let total = opts.batches as usize;
    let victim = endpoints.len() - 1;
    // When batch `n` may be written, at the rate asked for.
    let write_at = |n: usize| {
        opts.rate
            .map(|r| started + Duration::from_secs_f64(n as f64 / r))
    };

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
        // Write new batches while the uncommitted window (and the rate)
        // allows.
        while written.len() < total
            && written.len() - committed < opts.max_uncommitted
            && write_at(written.len()).is_none_or(|t| t <= now)
        {
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
        for f in followers.iter_mut() {
            f.progress(&written);
        }
        // Kill and restart the last replica when it is time.
        match kill {
            Kill::Waiting(after) if committed as u64 >= after => {
                let since = Instant::now();
                if let Some(rs) = local.as_deref_mut() {
                    rs[victim].messenger.shutdown().await;
                }
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
                let rs = local.as_deref_mut().expect("a kill needs local replicas");
                let old = &rs[victim];
                let next = Replica::start(&old.name, old.incarnation + 1, old.port()).await?;
                rs[victim] = next;
                let at = Instant::now();
                kill = Kill::Restarted {
                    at,
                    report: KillReport {
                        replica: rs[victim].name.clone(),
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
        if written.len() < total
            && written.len() - committed < opts.max_uncommitted
            && let Some(t) = write_at(written.len())
        {
            wake = wake.min(t);
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
                f.answered(a.incarnation, a.applied_lsn, log.len() as u64);
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
                f.progress(&written);
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
            longest_commit_gap = longest_commit_gap.max(now - last_commit_at);
            last_commit_at = now;
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

    let digest = log_digest(&log);
    let mut reports = Vec::with_capacity(followers.len());
    for (i, f) in followers.into_iter().enumerate() {
        let (name, incarnations, held) = match local.as_deref() {
            Some(rs) => {
                let r = &rs[i];
                let s = lock(&r.state);
                if let Some(detail) = first_difference(&log, &s.log.records) {
                    return Err(ReplicationError::Diverged {
                        replica: r.name.clone(),
                        detail,
                    });
                }
                (
                    r.name.clone(),
                    r.incarnation,
                    s.digest(&r.name, r.incarnation),
                )
            }
            None => {
                let d = query_digest(primary, f.conn, opts.request_timeout, deadline)
                    .await
                    .map_err(|why| setup(format!("ask {} for its log", endpoints[i]))(why))?;
                if d.applied_lsn != log.len() as u64 || d.digest != digest {
                    return Err(ReplicationError::Diverged {
                        replica: d.replica,
                        detail: format!(
                            "it holds {} records, digest {:016x}; the primary {} records, digest {digest:016x}",
                            d.applied_lsn,
                            d.digest,
                            log.len()
                        ),
                    });
                }
                (d.replica.clone(), f.lives, d)
            }
        };
        reports.push(ReplicaReport {
            name,
            endpoint: endpoints[i].clone(),
            incarnations,
            applied_lsn: held.applied_lsn,
            batches_applied: held.batches_applied,
            duplicates_ignored: held.duplicates_ignored,
            gaps_reported: held.gaps_reported,
            batches_sent: f.sent,
            batches_resent: f.resent,
            failed_requests: f.failed,
            digest: held.digest,
            confirm_latency: Latency::from_samples(f.confirm_samples),
            max_lag: f.max_lag,
            caught_up_after: f.caught_up_after,
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
        longest_commit_gap,
        digest,
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
    fn a_query_is_never_taken_for_a_batch_and_digests_tell_logs_apart() {
        let query = to_msgpack(&LogQuery {
            query: DigestTag::Digest,
        })
        .unwrap();
        assert!(from_msgpack::<AppendBatch>(&query).is_err());
        assert!(from_msgpack::<LogQuery>(&to_msgpack(&batch(1, 2)).unwrap()).is_err());
        assert!(from_msgpack::<LogQuery>(&query).is_ok());
        let a: Vec<_> = (1..=3).map(|l| record(l, 0)).collect();
        let mut b = a.clone();
        b[2].value = "v4".into();
        assert_eq!(log_digest(&a), log_digest(&a.clone()));
        assert_ne!(log_digest(&a), log_digest(&b));
        assert_ne!(log_digest(&a), log_digest(&a[..2]));
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
