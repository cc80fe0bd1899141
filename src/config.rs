//! Tunables. Every field states its default and why it is that.

use std::time::Duration;

/// Configuration of one [`Messenger`](crate::Messenger).
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a request waits for its reply before its callback gets
    /// [`RequestError::Timeout`](crate::RequestError::Timeout). Default 30 s:
    /// long enough for a model-server training step, short enough that a
    /// lost peer is noticed within a human's patience.
    pub request_timeout: Duration,
    /// Most callbacks waiting for replies at once; past it sends fail fast
    /// with `TooManyPending` instead of growing memory. Default 2^20
    /// (about 100 MiB of bookkeeping at the worst).
    pub max_pending_callbacks: usize,
    /// High-water mark of each socket, in messages: the capacity of its send
    /// queue and, with resending on, the most messages in flight without an
    /// ACK (a window, as in TCP). When either is reached, `send_message`,
    /// `request` and `Responder::reply` wait and the try-forms fail with
    /// `Full`; ACKs and ECHO replies that cannot go straight to the link are
    /// dropped (the peer resends).
    /// Default 4096.
    pub send_queue_capacity: usize,
    /// Capacity of the queue from all sockets into the ProcessMessage loop.
    /// When full, socket readers stop reading, pushing back on peers.
    /// Default 8192.
    pub inbound_queue_capacity: usize,
    /// Messages queued for one listener's server-loop callback. When full,
    /// new messages for it are neither ACKed nor delivered, so the peer
    /// resends them later instead of us buffering without bound. Default 4096.
    pub slc_queue_capacity: usize,
    /// Largest payload sent or accepted, in bytes. Default 16 MiB. On tcp
    /// and ipc the frame guard enforces it on every frame header before the
    /// bytes reach the zeromq decoder (which would otherwise reserve whatever
    /// length a peer declares).
    pub max_message_size: usize,
    /// How long a tcp or ipc peer has to finish the ZMTP greeting and READY
    /// before it is dropped. Default 5 s.
    pub handshake_timeout: Duration,
    /// Peers one listener serves at once; more wait in the OS backlog until
    /// one leaves. Default 1024.
    pub max_connections_per_listener: usize,
    /// How long `make_connection` waits for the handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a sent message may go unacknowledged before it is sent
    /// again, at the least: when the round trips measured from ACKs are
    /// longer (a loaded or distant peer), the socket waits its smoothed
    /// round trip plus four deviations instead (capped at 60 s). `None`
    /// turns resending off (for peers that never ACK and cannot take
    /// duplicates). Default 1 s: loopback and LAN round trips are far
    /// shorter, so a resend almost always means a lost message, not a slow
    /// peer, and a busy peer is not flooded with copies.
    pub resend_interval: Option<Duration>,
    /// Most unacknowledged messages per socket; past it sends fail fast
    /// with `TooManyUnacked`. Default 2^20.
    pub max_pending_messages: usize,
    /// Runs of missing msg_ids remembered per sender for duplicate
    /// suppression (bounds the complement set, about 56 bytes each).
    /// In-order traffic uses none. A sender with this many gaps younger than
    /// `dedup_gap_ttl` gets its new messages refused unACKed (it resends
    /// them) until its resends fill the gaps. Default 1024.
    pub dedup_max_gaps: usize,
    /// How long a gap is kept for resends to fill it before it may be
    /// forgotten. Default 60 s: twice the default request deadline, after
    /// which a sender stops resending.
    pub dedup_gap_ttl: Duration,
    /// First redial delay after a connection loses its peer; it doubles per
    /// failed attempt. Default 100 ms: a restarted listener is usually back
    /// within a few hundred milliseconds.
    pub reconnect_initial: Duration,
    /// Cap on the redial delay. Default 5 s, so a peer that comes back is
    /// found within 5 s without a dead one costing more than a dial per 5 s.
    pub reconnect_max: Duration,
    /// Handlers of concurrent server loops
    /// ([`Messenger::listen_for_connection_concurrent`](crate::Messenger::listen_for_connection_concurrent))
    /// running at once, across the messenger; counted only while a handler
    /// runs. Default 64 (PeerConnect's MAX_CONCURRENT_MSG_PROCESSING idea).
    pub max_concurrent_handlers: usize,
    /// How long `shutdown` lets queued and running server-loop work finish
    /// before it cancels it. Default 5 s.
    pub shutdown_grace: Duration,
    /// How long closing a socket lets messages already queued reach the
    /// peer (libzmq's ZMQ_LINGER), e.g. the ACK of a reply that just
    /// arrived. Default 1 s.
    pub linger: Duration,
    /// Shared-secret authentication on tcp and ipc (inproc stays inside the
    /// process and needs none): listeners require a valid proof as each
    /// peer's first message, and connections send one. See `auth`. Default
    /// off.
    pub auth: Option<crate::auth::Secret>,
    /// Liveness checks on each connection: ECHO with an empty body every
    /// `interval`; `misses` unanswered in a row declare the peer dead (its
    /// waiters fail with `Disconnected` and the connection redials).
    /// Default off.
    pub heartbeat: Option<Heartbeat>,
    /// Whether outgoing tcp and ipc connections relay what the peer sends
    /// through the frame guard. Default true. Turning it off saves one
    /// local hop each way (about 10 µs per round trip at 1 in flight; see
    /// design/PERFORMANCE.md) but lets the listener we connect to make the
    /// `zeromq` crate reserve any frame length it declares, which can abort
    /// the process (design/THREATS.md, threat 1): only for listeners you
    /// trust as much as your own code. Listeners always keep their guard.
    pub guard_connections: bool,
}

/// Heartbeat settings; see [`Config::heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Time between heartbeats, and each one's deadline.
    pub interval: Duration,
    /// Consecutive misses that declare the peer dead (at least 1).
    pub misses: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            request_timeout: Duration::from_secs(30),
            max_pending_callbacks: 1 << 20,
            send_queue_capacity: 4096,
            inbound_queue_capacity: 8192,
            slc_queue_capacity: 4096,
            max_message_size: 16 << 20,
            handshake_timeout: Duration::from_secs(5),
            max_connections_per_listener: 1024,
            connect_timeout: Duration::from_secs(5),
            resend_interval: Some(Duration::from_secs(1)),
            max_pending_messages: 1 << 20,
            dedup_max_gaps: 1024,
            dedup_gap_ttl: Duration::from_secs(60),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            heartbeat: None,
            auth: None,
            max_concurrent_handlers: 64,
            shutdown_grace: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            guard_connections: true,
        }
    }
}
