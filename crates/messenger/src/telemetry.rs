//! Metrics through the `metrics` facade, recorded where they are cheapest.
//!
//! - **Counters and gauges are read, not pushed.** The runtime keeps its
//!   counters in a block per thread (`stats.rs`: a plain store per event,
//!   no locked instruction), and [`publish_metrics`] reads every live
//!   messenger's (plus what messengers already dropped had counted) and
//!   hands the sums to the installed recorder as absolute values, with the
//!   gauges (connections by direction and transport, unacknowledged
//!   messages, waiting callbacks, listeners) counted from the live state
//!   at that moment: a Prometheus collector. An exporter calls it on each
//!   scrape. No `counter!()` per message.
//! - **Histograms are observed**: a request's time to its reply, a
//!   server-loop call's time, a heartbeat's round trip. The first two
//!   cost two clock reads each (about 60 ns here, a tenth of an inproc
//!   round trip), so they are taken only once [`publish_metrics`] has been
//!   called in the process: an exporter calls it at start, and a process
//!   that exports nothing pays one relaxed load per request.
//!
//! No label carries a routing id, a key or an address (their values are
//! unbounded): `transport`, `direction` and `reason` only. Those go to the
//! logs and to [`Messenger::events`](crate::Messenger::events).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, Weak};
use std::time::Instant;

use ::metrics::{
    Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};

use crate::stats::{CloseReason, Stats, Transport};

/// Whether histograms that cost clock reads are taken: set by the first
/// [`publish_metrics`].
static TIMING: AtomicBool = AtomicBool::new(false);

/// Whether the per-request and per-call histograms are being taken.
pub(crate) fn timing() -> bool {
    TIMING.load(Ordering::Relaxed)
}

/// The start of something a histogram times, when histograms are on.
pub(crate) fn start() -> Option<Instant> {
    timing().then(Instant::now)
}

/// The live state of one messenger that metrics read: its counters and
/// its gauges, counted when asked.
pub(crate) trait Source: Send + Sync {
    /// Its counters.
    fn stats(&self) -> &Stats;
    /// Its gauges now.
    fn gauges(&self) -> Gauges;
}

/// Gauges of one messenger, counted at a scrape.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Gauges {
    /// Sessions now, `[direction][transport]`: inbound (on our listeners)
    /// and outbound (our connections whose link is up).
    pub(crate) connections: [[u64; 3]; 2],
    /// Sent messages waiting for their ACK.
    pub(crate) unacked: u64,
    /// Callbacks waiting for a reply.
    pub(crate) pending_callbacks: u64,
    /// Open listeners.
    pub(crate) listeners: u64,
}

/// Index of the inbound row of [`Gauges::connections`].
pub(crate) const INBOUND: usize = 0;
/// Index of the outbound row.
pub(crate) const OUTBOUND: usize = 1;

/// Counters summed over messengers: the snapshot's plus the breakdowns
/// it does not carry.
#[derive(Debug, Default, Clone)]
struct Totals {
    /// Every counter of `StatsSnapshot`, by its field name.
    fields: BTreeMap<String, u64>,
    /// `[transport][messages sent, received, bytes sent, received]`.
    traffic: [[u64; 4]; 3],
    /// Sessions ended, per `CloseReason`.
    closed: [u64; 6],
}

impl Totals {
    fn add(&mut self, stats: &Stats) {
        // Every counter of the snapshot, by name: a new counter is summed
        // (and exported) without a line here.
        let fields = serde_json::to_value(stats.snapshot()).unwrap_or_default();
        for (k, v) in fields.as_object().into_iter().flatten() {
            *self.fields.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        for tr in Transport::ALL {
            let row = &mut self.traffic[tr as usize];
            row[0] += stats.total(|c| &c.traffic(tr).messages_sent);
            row[1] += stats.total(|c| &c.traffic(tr).messages_received);
            row[2] += stats.total(|c| &c.traffic(tr).bytes_sent);
            row[3] += stats.total(|c| &c.traffic(tr).bytes_received);
        }
        for r in CloseReason::ALL {
            self.closed[r as usize] += stats.total(|c| c.closed_for(r));
        }
    }
}

/// Every messenger of the process that is alive, and what the dropped
/// ones had counted (so the counters never go down).
#[derive(Default)]
struct Registry {
    /// The messengers alive, read at each scrape (weak: a registry never
    /// keeps a messenger alive).
    live: Vec<Weak<dyn Source>>,
    /// What dropped messengers had counted, so totals never go down.
    retired: Totals,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A new messenger: counted by [`publish_metrics`] from now on.
pub(crate) fn register(source: Weak<dyn Source>) {
    let mut reg = registry();
    reg.live.retain(|w| w.strong_count() > 0);
    reg.live.push(source);
}

/// A messenger is going: what it counted stays in the totals.
pub(crate) fn retire(stats: &Stats) {
    registry().retired.add(stats);
}

/// One histogram per transport, registered with the recorder once, on
/// first use (after the recorder was installed, since timing is on).
pub(crate) struct Histograms {
    /// `messenger_request_duration_seconds`, by transport.
    request: [Histogram; 3],
    /// `messenger_server_loop_duration_seconds`, by transport.
    server_loop: [Histogram; 3],
    /// `messenger_peer_rtt_seconds` (heartbeat round trips), by transport.
    rtt: [Histogram; 3],
}

static HISTOGRAMS: OnceLock<Histograms> = OnceLock::new();

fn histograms() -> &'static Histograms {
    HISTOGRAMS.get_or_init(|| {
        let each =
            |name: &'static str| Transport::ALL.map(|t| histogram!(name, "transport" => t.name()));
        Histograms {
            request: each(REQUEST_DURATION),
            server_loop: each(SERVER_LOOP_DURATION),
            rtt: each(PEER_RTT),
        }
    })
}

/// A request over `transport` got its reply, `since` it was sent.
pub(crate) fn request_done(transport: Transport, since: Option<Instant>) {
    if let Some(at) = since {
        histograms().request[transport as usize].record(at.elapsed().as_secs_f64());
    }
}

/// A server-loop call for a message over `transport` returned (or its
/// future finished).
pub(crate) fn server_loop_done(transport: Transport, since: Option<Instant>) {
    if let Some(at) = since {
        histograms().server_loop[transport as usize].record(at.elapsed().as_secs_f64());
    }
}

/// A heartbeat (ZMTP PING to PONG) round trip to a peer.
pub(crate) fn peer_rtt(transport: Transport, rtt: std::time::Duration) {
    if timing() {
        histograms().rtt[transport as usize].record(rtt.as_secs_f64());
    }
}

/// The request-duration histogram's name.
pub(crate) const REQUEST_DURATION: &str = "messenger_request_duration_seconds";
/// The server-loop call histogram's name.
pub(crate) const SERVER_LOOP_DURATION: &str = "messenger_server_loop_duration_seconds";
/// The heartbeat round-trip histogram's name.
pub(crate) const PEER_RTT: &str = "messenger_peer_rtt_seconds";

/// Counters exported under a name of their own (the rest are
/// `messenger_<field>_total`), and the four the handshake-failure reasons
/// are made of.
const RENAMED: &[(&str, &str)] = &[
    ("idle_evictions", "messenger_evictions_total"),
    ("timeouts", "messenger_request_timeouts_total"),
];

/// Snapshot fields that are not exported as counters of their own: the
/// gauges, what the labelled families carry, and the handshake failures.
const NOT_COUNTERS: &[&str] = &[
    "sent",
    "received",
    "bytes_sent",
    "bytes_received",
    "connections_closed",
    "pending_callbacks",
    "pending_messages",
    "connections",
    "listeners",
    "handshake_timeouts",
    "auth_failures",
    "curve_refused",
    "routing_id_conflicts",
];

/// `messenger_handshake_failures_total`'s reasons, from the counters.
const HANDSHAKE_FAILURES: &[(&str, &str)] = &[
    ("handshake_timeouts", "timeout"),
    ("auth_failures", "auth"),
    ("curve_refused", "curve_not_allowed"),
    ("routing_id_conflicts", "routing_id_in_use"),
];

/// Hands every messenger's counters and gauges in this process to the
/// installed `metrics` recorder, and from the first call on, takes the
/// histograms that cost clock reads (request and server-loop times).
///
/// An exporter calls it once when it installs its recorder and then on
/// every scrape (`messenger serve --metrics-addr` does). Counters are
/// sums over every messenger the process made, including those already
/// dropped, so they only go up; gauges are counted from the live state
/// now. Without a recorder it costs a little time and records nothing.
///
/// ```
/// // With a recorder installed (metrics-exporter-prometheus, say):
/// messenger::publish_metrics();
/// // ... and then on every scrape, before rendering.
/// ```
pub fn publish_metrics() {
    TIMING.store(true, Ordering::Relaxed);
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(describe);
    let (mut totals, gauges) = {
        let reg = registry();
        let live: Vec<Arc<dyn Source>> = reg.live.iter().filter_map(Weak::upgrade).collect();
        (reg.retired.clone(), live)
    };
    let mut now = Gauges::default();
    for source in &gauges {
        totals.add(source.stats());
        let g = source.gauges();
        for d in 0..2 {
            for t in 0..3 {
                now.connections[d][t] += g.connections[d][t];
            }
        }
        now.unacked += g.unacked;
        now.pending_callbacks += g.pending_callbacks;
        now.listeners += g.listeners;
    }
    drop(gauges);
    for t in Transport::ALL {
        let row = totals.traffic[t as usize];
        let tn = t.name();
        counter!("messenger_messages_sent_total", "transport" => tn).absolute(row[0]);
        counter!("messenger_messages_received_total", "transport" => tn).absolute(row[1]);
        counter!("messenger_bytes_sent_total", "transport" => tn).absolute(row[2]);
        counter!("messenger_bytes_received_total", "transport" => tn).absolute(row[3]);
        for (d, dn) in [(INBOUND, "inbound"), (OUTBOUND, "outbound")] {
            gauge!("messenger_connections", "direction" => dn, "transport" => tn)
                .set(now.connections[d][t as usize] as f64);
        }
    }
    for r in CloseReason::ALL {
        counter!("messenger_connections_closed_total", "reason" => r.name())
            .absolute(totals.closed[r as usize]);
    }
    let value = |k: &str| totals.fields.get(k).copied().unwrap_or(0);
    for &(field, reason) in HANDSHAKE_FAILURES {
        counter!("messenger_handshake_failures_total", "reason" => reason).absolute(value(field));
    }
    for (field, &v) in &totals.fields {
        if !NOT_COUNTERS.contains(&field.as_str()) {
            counter!(counter_name(field)).absolute(v);
        }
    }
    gauge!("messenger_unacked_messages").set(now.unacked as f64);
    gauge!("messenger_pending_callbacks").set(now.pending_callbacks as f64);
    gauge!("messenger_listeners").set(now.listeners as f64);
}

/// The metric a snapshot counter is exported as.
fn counter_name(field: &str) -> String {
    RENAMED.iter().find(|(f, _)| *f == field).map_or_else(
        || format!("messenger_{field}_total"),
        |(_, n)| (*n).to_owned(),
    )
}

/// One line about every metric: what `# HELP` says, once per process.
fn describe() {
    use Unit::{Bytes, Count, Seconds};
    let labelled: &[(&str, Unit, &str)] = &[
        (
            "messenger_messages_sent_total",
            Count,
            "Messages handed to a socket (ACKs included), by transport.",
        ),
        (
            "messenger_messages_received_total",
            Count,
            "Well-formed messages received (ACKs included), by transport.",
        ),
        (
            "messenger_bytes_sent_total",
            Bytes,
            "Bytes written to tcp and ipc sockets (ZMTP framing included); inproc writes none.",
        ),
        (
            "messenger_bytes_received_total",
            Bytes,
            "Bytes read from tcp and ipc sockets.",
        ),
        (
            "messenger_connections_closed_total",
            Count,
            "Sessions ended, by reason.",
        ),
        (
            "messenger_handshake_failures_total",
            Count,
            "Peers refused or cut before their session began, by reason.",
        ),
    ];
    for &(name, unit, help) in labelled {
        describe_counter!(name, unit, help);
    }
    describe_gauge!(
        "messenger_connections",
        Count,
        "Peers connected now: inbound (on our listeners) and outbound (our connections whose link is up), by transport."
    );
    describe_gauge!(
        "messenger_unacked_messages",
        Count,
        "Sent messages waiting for their ACK now."
    );
    describe_gauge!(
        "messenger_pending_callbacks",
        Count,
        "Callbacks (requests) waiting for a reply now."
    );
    describe_gauge!("messenger_listeners", Count, "Open listeners now.");
    describe_histogram!(
        REQUEST_DURATION,
        Seconds,
        "Time from a request to its reply (replies only; timeouts are messenger_request_timeouts_total), by transport."
    );
    describe_histogram!(
        SERVER_LOOP_DURATION,
        Seconds,
        "Time a server-loop callback took per message (a concurrent one: until its future finished), by transport."
    );
    describe_histogram!(
        PEER_RTT,
        Seconds,
        "ZMTP heartbeat round trips (PING to PONG), by transport."
    );
    for &(field, help) in COUNTER_HELP {
        describe_counter!(counter_name(field), Count, help);
    }
}

/// `# HELP` of the counters exported one to one from `StatsSnapshot`.
const COUNTER_HELP: &[(&str, &str)] = &[
    (
        "connections_opened",
        "Sessions begun: peers that finished their handshake on a listener, and each link up of a connection.",
    ),
    ("acks_sent", "ACKs sent."),
    ("acks_received", "ACKs received."),
    ("echoes_answered", "ECHO requests answered."),
    (
        "echoes_refused",
        "ECHOs ACKed and not answered because their answer would go to ECHO or ACK.",
    ),
    (
        "msc_delivered",
        "Messages handed to a message-specific callback.",
    ),
    (
        "slc_delivered",
        "Messages handed to a server-loop callback.",
    ),
    (
        "resends",
        "Messages sent again because no ACK came in time.",
    ),
    (
        "duplicates_dropped",
        "Messages received again and not delivered again (still ACKed).",
    ),
    (
        "unknown_acks",
        "ACKs for messages not (or no longer) waiting for one.",
    ),
    (
        "malformed_dropped",
        "Messages dropped because their frames or payload were malformed.",
    ),
    (
        "late_replies_dropped",
        "Replies to callback ids never issued, already used or expired.",
    ),
    (
        "unroutable_dropped",
        "Messages that arrived on a connection, addressed to no callback.",
    ),
    (
        "slc_busy",
        "Messages refused unACKed because a server loop's queue was full.",
    ),
    (
        "reply_window_busy",
        "Requests refused unACKed because the window towards their sender was full of replies.",
    ),
    (
        "dedup_stale",
        "Messages refused unACKed because their id is older than the duplicate window.",
    ),
    (
        "acks_dropped",
        "ACKs dropped because the peer's send buffer held twice its limit.",
    ),
    (
        "replies_dropped",
        "Server-loop replies dropped at their deadline for want of room in the peer's window.",
    ),
    (
        "buffer_busy",
        "ECHOs refused unACKed because their sender's send buffer was full.",
    ),
    (
        "replies_untracked",
        "ECHO answers sent once and not kept for resending (the peer's window was full).",
    ),
    (
        "send_failures",
        "Messages a socket could not deliver to its peer.",
    ),
    (
        "timeouts",
        "Requests that reached their deadline without a reply.",
    ),
    (
        "unacked_expired",
        "Messages without a waiter that reached their deadline unacknowledged.",
    ),
    (
        "reconnects",
        "Times a connection's link came back after a loss.",
    ),
    (
        "guard_rejections",
        "Peers cut off for breaking ZMTP or its limits.",
    ),
    (
        "slow_messages",
        "Peers cut off because a message they began did not arrive in time.",
    ),
    (
        "partial_budget_cuts",
        "Peers cut off because their read buffer would pass the listener's budget.",
    ),
    (
        "ping_timeouts",
        "Sessions dropped because the peer answered no heartbeat in time.",
    ),
    (
        "connection_limit_hits",
        "Times a listener was at its connection limit when a peer knocked.",
    ),
    (
        "idle_evictions",
        "Idle peers closed to make room for a newcomer at a connection limit.",
    ),
    (
        "address_limit_hits",
        "tcp peers closed on arrival because their address was over its share.",
    ),
    (
        "warnings_suppressed",
        "Warnings about peers not logged (more than 10 a second per socket).",
    ),
];
