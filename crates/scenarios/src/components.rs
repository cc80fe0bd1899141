//! In-process components: a parser, a planner and an executor in one
//! process, each its own [`Messenger`], talking only through `inproc://`
//! endpoints with typed MessagePack bodies.
//!
//! - The **planner** serves the other two through one sequential server
//!   loop on `inproc://…/planner`: the parser's [`PlannerRequest::Plan`]
//!   requests (answered with a [`Plan`]) and the executor's
//!   [`PlannerRequest::Feedback`] reports (fire-and-forget, ACKed; the
//!   planner uses them for its row estimates).
//! - The **executor** owns a table split into partitions, one listener per
//!   partition (`inproc://…/executor/pN`) with a concurrent server loop that
//!   scans its partition for a [`Fragment`] and answers a [`Partial`].
//! - The **parser** parses each query text, asks the planner for a plan
//!   (request/reply), fans the plan's fragments out to every partition at
//!   once and combines the partial results (fan-out / gather).
//!
//! Every result is checked against a direct computation over the same data.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Latency, SetupError, per_second, unique};
use messenger::Error;
use messenger::{ConnectionId, Endpoint, Incoming, Messenger, NOOP, Responder, StatsSnapshot};

/// An aggregate over the table's one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregate {
    /// `SUM(v)`.
    Sum,
    /// `COUNT(v)`.
    Count,
    /// `MAX(v)` (0 over no rows).
    Max,
}

impl Aggregate {
    fn name(self) -> &'static str {
        match self {
            Aggregate::Sum => "SUM",
            Aggregate::Count => "COUNT",
            Aggregate::Max => "MAX",
        }
    }

    fn combine(self, values: impl Iterator<Item = i64>) -> i64 {
        match self {
            Aggregate::Sum | Aggregate::Count => values.sum(),
            Aggregate::Max => values.max().unwrap_or(0),
        }
    }
}

/// A parsed query: `SELECT AGG(v) FROM table WHERE v > min_value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedQuery {
    /// The query's id.
    pub id: u64,
    /// The table.
    pub table: String,
    /// The aggregate.
    pub agg: Aggregate,
    /// Rows with `v > min_value` are aggregated.
    pub min_value: i64,
}

/// What the planner serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlannerRequest {
    /// Plan this query (request; the reply is a [`Plan`]).
    Plan(ParsedQuery),
    /// What executing one fragment cost (fire-and-forget).
    Feedback(ExecFeedback),
}

/// One partition's share of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// The query.
    pub query_id: u64,
    /// The partition to scan.
    pub partition: u32,
    /// The aggregate to compute over it.
    pub agg: Aggregate,
    /// The filter.
    pub min_value: i64,
}

/// The planner's answer: one fragment per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The query.
    pub query_id: u64,
    /// How to combine the partials.
    pub agg: Aggregate,
    /// Rows the planner expects to scan, from earlier feedback.
    pub estimated_rows: u64,
    /// The fragments.
    pub fragments: Vec<Fragment>,
}

/// A partition's result for a fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The query.
    pub query_id: u64,
    /// The partition.
    pub partition: u32,
    /// Rows scanned.
    pub rows_scanned: u64,
    /// Rows that passed the filter.
    pub rows_matched: u64,
    /// The aggregate over the matched rows.
    pub value: i64,
}

/// The executor's report to the planner after a fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFeedback {
    /// The query.
    pub query_id: u64,
    /// The partition.
    pub partition: u32,
    /// Rows scanned.
    pub rows_scanned: u64,
    /// Time spent scanning.
    pub micros: u64,
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct ComponentsOptions {
    /// Queries to run. Default 60.
    pub queries: u64,
    /// Executor partitions (fan-out width). Default 4.
    pub partitions: u32,
    /// Rows in the table (values 1 ..= rows). Default 20 000.
    pub rows: u64,
    /// Queries in flight at once. Default 4.
    pub concurrency: usize,
    /// How many queries' message flows to describe in the report. Default 2.
    pub show: usize,
    /// Bound on each request. Default 5 s.
    pub request_timeout: Duration,
}

impl Default for ComponentsOptions {
    fn default() -> Self {
        ComponentsOptions {
            queries: 60,
            partitions: 4,
            rows: 20_000,
            concurrency: 4,
            show: 2,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The outcome of a run in which every result was right.
#[derive(Debug, Clone)]
pub struct ComponentsReport {
    /// The endpoints: planner first, then the executor's partitions.
    pub endpoints: Vec<Endpoint>,
    /// Queries run (all checked).
    pub queries: u64,
    /// Plan requests the planner answered.
    pub plans: u64,
    /// Fragments fanned out to the executor.
    pub fragments: u64,
    /// Partials gathered back.
    pub partials: u64,
    /// Feedback reports the planner received.
    pub feedback: u64,
    /// From a query's text to its combined result.
    pub query_latency: Latency,
    /// Wall time of all queries.
    pub elapsed: Duration,
    /// Descriptions of the first few queries' message flows.
    pub flows: Vec<String>,
    /// Counters of parser, planner and executor.
    pub stats: [StatsSnapshot; 3],
}

impl ComponentsReport {
    /// Queries per second.
    pub fn queries_per_sec(&self) -> f64 {
        per_second(self.queries, self.elapsed)
    }
}

impl fmt::Display for ComponentsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.endpoints.iter().map(|e| e.to_string()).collect();
        writeln!(f, "endpoints: {}", names.join(", "))?;
        for flow in &self.flows {
            writeln!(f, "{flow}")?;
        }
        writeln!(
            f,
            "{} queries: {} plans (request/reply), {} fragments fanned out, {} partials gathered, {} feedback reports",
            self.queries, self.plans, self.fragments, self.partials, self.feedback
        )?;
        writeln!(
            f,
            "{:.0} queries/s, query latency {}",
            self.queries_per_sec(),
            self.query_latency
        )?;
        let [p, l, e] = &self.stats;
        writeln!(
            f,
            "messages sent / ACKs received: parser {} / {}, planner {} / {}, executor {} / {}",
            p.sent, p.acks_received, l.sent, l.acks_received, e.sent, e.acks_received
        )?;
        write!(f, "check: every result equals a direct scan of the table")
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    /// The options make no sense.
    #[error("invalid options: {0}")]
    Options(String),
    /// A messenger, listener, connection or process could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A query text did not parse.
    #[error("cannot parse {text:?}: {why}")]
    Parse {
        /// The text.
        text: String,
        /// Why.
        why: String,
    },
    /// A request between components failed.
    #[error("{what}: {source}")]
    Request {
        /// Which request.
        what: String,
        /// Why.
        source: Error,
    },
    /// A result differs from the direct computation.
    #[error("query {query:?} returned {got}, expected {expected}")]
    Wrong {
        /// The query.
        query: String,
        /// Its result.
        got: i64,
        /// The right result.
        expected: i64,
    },
}

fn setup(what: impl Into<String>, why: impl fmt::Display) -> ComponentsError {
    SetupError::new(what, why.to_string()).into()
}

/// Parses `SELECT AGG(v) FROM table WHERE v > N` (case-insensitive
/// keywords, whitespace-separated).
pub fn parse_query(id: u64, text: &str) -> Result<ParsedQuery, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [select, agg, from, table, where_, column, op, value] = words[..] else {
        return Err("expected SELECT AGG(v) FROM table WHERE v > N".into());
    };
    let keyword = |w: &str, k: &str| {
        if w.eq_ignore_ascii_case(k) {
            Ok(())
        } else {
            Err(format!("expected {k}, found {w:?}"))
        }
    };
    keyword(select, "SELECT")?;
    keyword(from, "FROM")?;
    keyword(where_, "WHERE")?;
    let agg = match agg.to_ascii_uppercase().as_str() {
        "SUM(V)" => Aggregate::Sum,
        "COUNT(V)" => Aggregate::Count,
        "MAX(V)" => Aggregate::Max,
        other => return Err(format!("unknown aggregate {other:?}")),
    };
    if !column.eq_ignore_ascii_case("v") || op != ">" {
        return Err(format!(
            "only `v > N` filters are supported, found {column} {op}"
        ));
    }
    let min_value = value
        .parse()
        .map_err(|e| format!("bad number {value:?}: {e}"))?;
    Ok(ParsedQuery {
        id,
        table: table.to_string(),
        agg,
        min_value,
    })
}

/// Scans `values` for a fragment.
fn scan(values: &[i64], agg: Aggregate, min_value: i64) -> (u64, i64) {
    let matched = values.iter().copied().filter(|&v| v > min_value);
    match agg {
        Aggregate::Sum => matched.fold((0, 0), |(n, s), v| (n + 1, s + v)),
        Aggregate::Count => {
            let n = matched.count() as u64;
            (n, n as i64)
        }
        Aggregate::Max => matched.fold((0, 0), |(n, m), v| (n + 1, m.max(v))),
    }
}

#[derive(Default)]
struct PlannerState {
    plans: AtomicU64,
    feedback: AtomicU64,
    rows_per_partition: Mutex<Vec<u64>>,
}

struct Components {
    parser: Messenger,
    planner: Messenger,
    executor: Messenger,
    endpoints: Vec<Endpoint>,
    to_planner: ConnectionId,
    to_partitions: Vec<ConnectionId>,
    planner_state: Arc<PlannerState>,
}

impl Components {
    async fn shutdown(&self) {
        self.parser.shutdown().await;
        self.executor.shutdown().await;
        self.planner.shutdown().await;
    }
}

async fn start(opts: &ComponentsOptions) -> Result<Components, ComponentsError> {
    let base = unique("components");
    let new = |name: &str| {
        Messenger::builder()
            .identity(name.to_string())
            .build()
            .map_err(|e| setup(name, e))
    };
    let (parser, planner, executor) = (new("parser")?, new("planner")?, new("executor")?);
    let c = Components {
        parser,
        planner,
        executor,
        endpoints: Vec::new(),
        to_planner: ConnectionId(0),
        to_partitions: Vec::new(),
        planner_state: Arc::new(PlannerState::default()),
    };
    match wire_up(c, &base, opts).await {
        Ok(c) => Ok(c),
        Err((c, e)) => {
            c.shutdown().await;
            Err(e)
        }
    }
}

async fn wire_up(
    mut c: Components,
    base: &str,
    opts: &ComponentsOptions,
) -> Result<Components, (Components, ComponentsError)> {
    macro_rules! tried {
        ($e:expr, $what:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((c, setup($what, e))),
            }
        };
    }
    // The planner: one sequential server loop for both of its clients.
    let state = Arc::clone(&c.planner_state);
    *state
        .rows_per_partition
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = vec![0; opts.partitions as usize];
    let partitions = opts.partitions;
    let planner_slc = move |m: Incoming, r: Responder| match m.decode::<PlannerRequest>() {
        Ok(PlannerRequest::Plan(q)) => {
            state.plans.fetch_add(1, Ordering::Relaxed);
            let estimated_rows = state
                .rows_per_partition
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .sum();
            let plan = Plan {
                query_id: q.id,
                agg: q.agg,
                estimated_rows,
                fragments: (0..partitions)
                    .map(|partition| Fragment {
                        query_id: q.id,
                        partition,
                        agg: q.agg,
                        min_value: q.min_value,
                    })
                    .collect(),
            };
            if let Err(e) = r.try_reply_typed(&plan) {
                tracing::warn!(error = %e, "planner cannot answer");
            }
        }
        Ok(PlannerRequest::Feedback(fb)) => {
            state.feedback.fetch_add(1, Ordering::Relaxed);
            let mut rows = state
                .rows_per_partition
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = rows.get_mut(fb.partition as usize) {
                *slot = fb.rows_scanned;
            }
        }
        Err(e) => tracing::warn!(error = %e, "planner got an undecodable request"),
    };
    let planner_ep = Endpoint::Inproc(format!("{base}/planner"));
    let bound = tried!(
        c.planner
            .listen_for_connection(&planner_ep, planner_slc)
            .await,
        "planner: listen"
    );
    c.endpoints.push(bound.endpoint.clone());
    c.to_planner = tried!(
        c.parser.make_connection(&bound.endpoint).await,
        "parser: connect to the planner"
    );
    let exec_to_planner = tried!(
        c.executor.make_connection(&bound.endpoint).await,
        "executor: connect to the planner"
    );

    // The executor: a partition of the table behind each listener.
    for p in 0..opts.partitions {
        let values: Arc<Vec<i64>> = Arc::new(
            (1..=opts.rows as i64)
                .filter(|v| (*v as u64) % opts.partitions as u64 == p as u64)
                .collect(),
        );
        let executor = c.executor.clone();
        let slc = move |m: Incoming, r: Responder| {
            let values = Arc::clone(&values);
            let executor = executor.clone();
            async move {
                let Ok(f) = m.decode::<Fragment>() else {
                    tracing::warn!("executor got an undecodable fragment");
                    return;
                };
                let t = Instant::now();
                let (rows_matched, value) = scan(&values, f.agg, f.min_value);
                let micros = t.elapsed().as_micros() as u64;
                let partial = Partial {
                    query_id: f.query_id,
                    partition: f.partition,
                    rows_scanned: values.len() as u64,
                    rows_matched,
                    value,
                };
                // Waits for room in the send queue, but not for ever.
                match tokio::time::timeout(SEND_LIMIT, r.reply_typed(&partial)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "executor cannot answer"),
                    Err(_) => tracing::warn!("executor's answer found no room in time"),
                }
                let fb = PlannerRequest::Feedback(ExecFeedback {
                    query_id: f.query_id,
                    partition: f.partition,
                    rows_scanned: values.len() as u64,
                    micros,
                });
                let report = executor.send_typed(exec_to_planner, NOOP, &fb, None);
                match tokio::time::timeout(SEND_LIMIT, report).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "executor cannot report to the planner")
                    }
                    Err(_) => tracing::warn!("executor's report found no room in time"),
                }
            }
        };
        let ep = Endpoint::Inproc(format!("{base}/executor/p{p}"));
        let bound = tried!(
            c.executor.listen_for_connection_concurrent(&ep, slc).await,
            format!("executor: listen on {ep}")
        );
        c.endpoints.push(bound.endpoint.clone());
        let conn = tried!(
            c.parser.make_connection(&bound.endpoint).await,
            format!("parser: connect to {}", bound.endpoint)
        );
        c.to_partitions.push(conn);
    }
    Ok(c)
}

/// Bound on waiting for room in a send queue inside a server loop.
const SEND_LIMIT: Duration = Duration::from_secs(5);

/// What one query did.
struct Outcome {
    latency: Duration,
    partials: u64,
    flow: String,
}

/// The parser's work for one query: parse, plan, fan out, gather, combine.
async fn run_query(
    c: &Components,
    id: u64,
    text: &str,
    expected: i64,
    timeout: Duration,
) -> Result<Outcome, ComponentsError> {
    let start = Instant::now();
    let q = parse_query(id, text).map_err(|why| ComponentsError::Parse {
        text: text.to_string(),
        why,
    })?;
    let failed = |what: String| move |source| ComponentsError::Request { what, source };
    let plan: Plan = tokio::time::timeout(
        timeout,
        c.parser
            .request_typed(c.to_planner, NOOP, &PlannerRequest::Plan(q.clone())),
    )
    .await
    .map_err(|_| setup(format!("plan query {id}"), "timed out"))?
    .map_err(failed(format!("plan query {id}")))?;
    // Fan out: every fragment to its partition at once, then gather.
    let gathers = plan.fragments.iter().map(|f| {
        let conn = c.to_partitions.get(f.partition as usize).copied();
        async move {
            let what = format!("query {id} fragment {}", f.partition);
            let Some(conn) = conn else {
                return Err(setup(what, "the plan names an unknown partition"));
            };
            let request = c.parser.request_typed::<_, Partial>(conn, NOOP, f);
            tokio::time::timeout(timeout, request)
                .await
                .map_err(|_| setup(what.clone(), "timed out"))?
                .map_err(failed(what))
        }
    });
    let partials: Vec<Partial> = futures::future::try_join_all(gathers).await?;
    let result = plan.agg.combine(partials.iter().map(|p| p.value));
    let latency = start.elapsed();
    if result != expected {
        return Err(ComponentsError::Wrong {
            query: text.to_string(),
            got: result,
            expected,
        });
    }
    let values: Vec<String> = partials
        .iter()
        .map(|p| format!("p{}={}", p.partition, p.value))
        .collect();
    let flow = format!(
        "q{id} {text:?}: parser -> planner: plan of {} fragments (est. {} rows); \
         parser -> executor p0..p{} (fan-out) -> partials [{}]; {}(v) = {result} (checked)",
        plan.fragments.len(),
        plan.estimated_rows,
        plan.fragments.len().saturating_sub(1),
        values.join(", "),
        q.agg.name(),
    );
    Ok(Outcome {
        latency,
        partials: partials.len() as u64,
        flow,
    })
}

/// The query text and its right answer, for query `i`.
fn query(i: u64, rows: u64) -> (String, Aggregate, i64) {
    let agg = [Aggregate::Sum, Aggregate::Count, Aggregate::Max][(i % 3) as usize];
    let min_value = ((i * 7919) % rows.max(1)) as i64;
    let text = format!("SELECT {}(v) FROM orders WHERE v > {min_value}", agg.name());
    (text, agg, min_value)
}

/// Starts the three components, runs the queries (`concurrency` at a time)
/// and checks every result.
pub async fn run(opts: ComponentsOptions) -> Result<ComponentsReport, ComponentsError> {
    if opts.partitions == 0 || opts.concurrency == 0 || opts.rows == 0 {
        return Err(ComponentsError::Options(
            "partitions, concurrency and rows must be at least 1".into(),
        ));
    }
    let c = start(&opts).await?;
    let result = drive(&c, &opts).await;
    c.shutdown().await;
    result
}

async fn drive(
    c: &Components,
    opts: &ComponentsOptions,
) -> Result<ComponentsReport, ComponentsError> {
    let table: Vec<i64> = (1..=opts.rows as i64).collect();
    let started = Instant::now();
    let outcomes: Vec<Result<Outcome, ComponentsError>> = stream::iter(0..opts.queries)
        .map(|i| {
            let (text, agg, min_value) = query(i, opts.rows);
            let expected = scan(&table, agg, min_value).1;
            async move { run_query(c, i, &text, expected, opts.request_timeout).await }
        })
        .buffered(opts.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut latencies = Vec::with_capacity(outcomes.len());
    let mut flows = Vec::new();
    let mut partials = 0;
    for o in outcomes {
        let o = o?;
        latencies.push(o.latency);
        partials += o.partials;
        if flows.len() < opts.show {
            flows.push(o.flow);
        }
    }
    // Feedback is fire-and-forget: give the last reports a moment to land.
    let want = opts.queries * opts.partitions as u64;
    let until = Instant::now() + Duration::from_secs(2);
    while c.planner_state.feedback.load(Ordering::Relaxed) < want && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let [p, l, e] = [&c.parser, &c.planner, &c.executor].map(|m| m.stats());
    Ok(ComponentsReport {
        endpoints: c.endpoints.clone(),
        queries: opts.queries,
        plans: c.planner_state.plans.load(Ordering::Relaxed),
        fragments: e.slc_delivered,
        partials,
        feedback: c.planner_state.feedback.load(Ordering::Relaxed),
        query_latency: Latency::from_samples(latencies),
        elapsed,
        flows,
        stats: [p, l, e],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_one_query_shape() {
        let q = parse_query(3, "select max(v) from orders where v > 42").unwrap();
        assert_eq!(
            q,
            ParsedQuery {
                id: 3,
                table: "orders".into(),
                agg: Aggregate::Max,
                min_value: 42
            }
        );
        assert!(parse_query(0, "SELECT AVG(v) FROM t WHERE v > 1").is_err());
        assert!(parse_query(0, "SELECT SUM(v) FROM t WHERE v < 1").is_err());
        assert!(parse_query(0, "SELECT SUM(v) FROM t").is_err());
        assert!(parse_query(0, "SELECT SUM(v) FROM t WHERE v > x").is_err());
    }

    #[test]
    fn scans_and_combines() {
        let t: Vec<i64> = (1..=10).collect();
        assert_eq!(scan(&t, Aggregate::Sum, 7), (3, 27));
        assert_eq!(scan(&t, Aggregate::Count, 7), (3, 3));
        assert_eq!(scan(&t, Aggregate::Max, 7), (3, 10));
        assert_eq!(scan(&t, Aggregate::Max, 10), (0, 0));
        assert_eq!(Aggregate::Max.combine([1, 5, 2].into_iter()), 5);
        assert_eq!(Aggregate::Count.combine([1, 5, 2].into_iter()), 8);
    }
}
