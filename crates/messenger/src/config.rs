//! Tunables. Every field states its default and why it is that.

use std::collections::HashSet;

use std::sync::Arc;
use std::time::Duration;

pub use messenger_proto::auth::Secret;

use crate::error::Error;
pub use zmtp::Heartbeat;
use zmtp::{CurveKeyPair, CurvePublicKey};

/// Configuration of one [`Messenger`](crate::Messenger): start from the
/// defaults and change what your deployment needs. It is checked once,
/// when the messenger is made: no count or duration may be zero, no count
/// above 2^61 - 1 (what the runtime's semaphores and channels hold), and
/// no duration longer than 100 years (which stands for "no limit").
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use messenger::{Config, Error, ErrorKind, Messenger};
///
/// let config = Config {
///     request_timeout: Duration::from_secs(5),
///     ..Config::default()
/// };
/// assert!(Messenger::builder().config(config).build().is_ok());
///
/// let broken = Config { slc_queue_capacity: 0, ..Config::default() };
/// let refused = Messenger::builder().config(broken).build().err();
/// assert!(matches!(
///     refused,
///     Some(Error::InvalidConfig { field: "slc_queue_capacity", .. })
/// ));
/// assert_eq!(refused.map(|e| e.kind()), Some(ErrorKind::Invalid));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a request waits for its reply before its callback gets
    /// [`Error::Timeout`]. Default 30 s:
    /// long enough for a model-server training step, short enough that a
    /// lost peer is noticed within a human's patience.
    pub request_timeout: Duration,
    /// Most callbacks waiting for replies at once; past it sends fail fast
    /// with `TooManyPending` instead of growing memory. Default 2^20
    /// (about 100 MiB of bookkeeping at the worst).
    pub max_pending_callbacks: usize,
    /// High-water mark per peer, in messages: with resending on, the most
    /// messages in flight to one peer without an ACK, and the most ids
    /// they may span from the oldest of them (a window, as in TCP;
    /// each peer of a listener has its own, so one that never ACKs fills
    /// only its own); on a connection that is redialling, the messages
    /// queued for its next session; on inproc, each session's channel.
    /// When reached, `send_message`, `request` and `Responder::reply` wait
    /// and the try-forms fail with `Full` (`Responder::try_reply`'s first
    /// reply to a request waits in the session instead: its place was held
    /// when the request was admitted, and requests that want a reply are
    /// refused unACKed while the window is full of replies); ECHO answers
    /// beyond it are sent once, without being kept for resending. Default
    /// 4096.
    pub send_queue_capacity: usize,
    /// The same window in bytes: with resending on, the most payload bytes
    /// in flight to one peer without an ACK; past it sends wait (or fail
    /// with `Full`) and ECHO answers are sent untracked, as at
    /// `send_queue_capacity`. A message larger than this still goes when
    /// nothing else is unacknowledged. Default 8 MiB: 4,096 messages of
    /// 2 KiB; a peer that never ACKs (NoisePage's model server) makes us
    /// hold at most this much for it until the replies' deadlines.
    pub send_window_bytes: usize,
    /// Bytes one tcp or ipc session may hold that the socket has not taken
    /// yet (its peer is slow or not reading). Below it a message of any
    /// size is taken whole (so the buffer holds at most this plus one
    /// message); at it sends wait (or fail with `Full`), server-loop
    /// replies wait for room, ECHOs are refused unACKed (the peer resends),
    /// and a listener stops reading that peer until it reads. ACKs and
    /// PONGs are taken until twice this (then dropped: the peer resends).
    /// Default 1 MiB: 16,000 small messages, and about 1 GiB across the
    /// default 1,024 peers of a listener.
    pub send_buffer_size: usize,
    /// Messages queued for one listener's server-loop callback. When full,
    /// new messages for it are neither ACKed nor delivered, so the peer
    /// resends them later instead of us buffering without bound. Default 4096.
    pub slc_queue_capacity: usize,
    /// Largest payload sent or accepted, in bytes. Default 16 MiB. On tcp
    /// and ipc the ZMTP decoder checks every frame header against it (plus
    /// 4 KiB for routing frames and frame headers) before it reserves
    /// anything, and cuts the peer off past it.
    pub max_message_size: usize,
    /// Frames one ZMTP message may have. Our protocol uses at most five;
    /// each frame held costs a handle, and empty frames cost little on the
    /// wire, so this bounds what a flood of them can make us hold.
    /// Default 32.
    pub max_frames: usize,
    /// Largest ZMTP command (READY, PING, CURVE's handshake). Default
    /// 64 KiB: READY with the longest routing id is under 300 bytes.
    pub max_command_size: usize,
    /// How long a message may take to arrive on tcp or ipc once its first
    /// byte has: this, plus its declared size at `min_receive_rate`. Past
    /// it the peer is cut off (`slow_messages`), so a peer that declares a
    /// 16 MiB frame and sends all but a byte holds the memory for about
    /// 21 s, not for as long as it likes (HTTP servers bound request
    /// bodies the same way). Default 5 s.
    pub message_timeout: Duration,
    /// The slowest rate a message may arrive at, in bytes per second; see
    /// `message_timeout`. Default 1 MiB/s (8 Mbit/s): a 16 MiB message is
    /// allowed 21 s.
    pub min_receive_rate: u64,
    /// Bytes a listener holds at once, across all its peers, for messages
    /// still arriving (beyond the first 64 KiB of each peer's read buffer).
    /// A peer whose next read would take the listener past it is cut off
    /// (`partial_budget_cuts`), so many peers each sending part of a large
    /// message cannot pin more than this. Default 256 MiB: sixteen 16 MiB
    /// messages arriving at once.
    pub max_partial_bytes: usize,
    /// ZMTP 3.1 heartbeats of our own on every tcp and ipc session (as
    /// libzmq's `ZMQ_HEARTBEAT_IVL`, `_TIMEOUT` and `_TTL`): a PING every
    /// `interval`; a peer silent for `timeout` after one is dropped (a
    /// connection then redials, failing what waited on the session with
    /// `Disconnected`; a listener frees the session). Peers' PINGs are
    /// always answered. Default on: a PING every 1 s, a peer silent for
    /// 3 s after one is dropped, and our PINGs ask the peer to drop us
    /// after 4 s of silence. A peer whose host dies or whose link is cut
    /// sends no FIN or RST, and TCP alone would notice only after minutes
    /// of retransmissions (or two hours of keepalive): this bounds the
    /// time to notice by 4 s, at the cost of a 10-byte command a second
    /// each way (design/FAULTS.md). `None` turns them off.
    pub heartbeat: Option<Heartbeat>,
    /// How long a tcp or ipc peer has to finish the ZMTP greeting and READY
    /// before it is dropped. Default 5 s.
    pub handshake_timeout: Duration,
    /// Peers one listener serves at once. At the limit a newcomer is held
    /// (the rest wait in the OS backlog) until a peer leaves or one gives
    /// way to it (`evict_idle_after`). Default 1024.
    pub max_connections_per_listener: usize,
    /// At the connection limit, the peer that has sent no message for the
    /// longest gives its place to a newcomer, if that is at least this
    /// long and nothing is in flight between us (nothing unacknowledged,
    /// nothing waiting to be written). Its connection is closed; a DEALER
    /// (ours or libzmq's) redials. Without this, peers that connect and
    /// stay silent hold every place for good. `None`: newcomers wait until
    /// a peer leaves. Default 10 s: far longer than any gap inside a
    /// conversation, far shorter than a lockout anyone would accept.
    pub evict_idle_after: Option<Duration>,
    /// tcp peers one listener serves at once from one source address (one
    /// IPv6 /64), so one host cannot take every place; more are closed as
    /// soon as they are accepted (`address_limit_hits`). ipc peers are
    /// local and not counted. Default 256: a quarter of the default
    /// listener limit, more than a host of our own processes needs (each
    /// messenger pools one connection per endpoint).
    pub max_connections_per_address: usize,
    /// How long `make_connection`, and each redial, waits for the
    /// connection and its handshake (a listener at its connection limit
    /// answers a newcomer only once a place frees). Default 5 s.
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
    /// Most unacknowledged messages per peer, a backstop above the window
    /// (`send_queue_capacity`); past it sends fail fast with
    /// `TooManyUnacked`. Default 2^20.
    pub max_pending_messages: usize,
    /// Duplicate suppression per sender: the msg_ids remembered below the
    /// highest one seen, as a bitmap of this many bits (8 KiB by default,
    /// held only once ids arrive out of order; in-order traffic needs
    /// none). Ids may skip (NoisePage numbers messages with one counter
    /// across all its connections) without anything waiting for the holes.
    /// A message older than the window that is not known to have arrived
    /// is refused unACKed (`dedup_stale`), never delivered twice. Default
    /// 65,536: sixteen times the ids a sender's window spans
    /// (`send_queue_capacity`), whose resends therefore always fall inside.
    /// At most 2^27 (a 16 MiB bitmap per sender).
    pub dedup_window: u64,
    /// First redial delay after a connection loses its peer; it doubles per
    /// failed attempt. Default 100 ms: a restarted listener is usually back
    /// within a few hundred milliseconds.
    pub reconnect_initial: Duration,
    /// Cap on the redial delay, and on each redial's own wait (at least
    /// 1 s) for the connection and its handshake: a dial started while the
    /// peer's link was cut waits out TCP's backed-off SYN retransmissions
    /// no longer than this. Default 2 s, so a peer that comes back (a link
    /// that heals) is found within about 4 s, without a dead one costing
    /// more than a dial per 2 s.
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
    pub auth: Option<Secret>,
    /// CURVE (RFC 26) on tcp and ipc: every frame after the handshake
    /// encrypted and authenticated, the server proven by its public key and
    /// clients by theirs, as libzmq's `ZMQ_CURVE_*` options. Listeners speak
    /// it whenever this is set; connections when it names the server's key
    /// (`server_key`). inproc stays inside the process and is unaffected.
    /// Default off (NULL: clear text, no authentication). The boxes are
    /// NaCl's, as libzmq's, from the pure-Rust `dryoc`, which picks its
    /// code for the CPU at run time: an application gets CURVE's full
    /// speed with no build flags (design/PERFORMANCE.md, "CURVE").
    pub curve: Option<Curve>,
}

/// CURVE settings; see [`Config::curve`]. One messenger has one key pair:
/// its listeners prove it as the server's, its connections as the client's.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), messenger::Error> {
/// use messenger::curve::KeyPair;
/// use messenger::{Curve, ECHO, Messenger};
///
/// let server_keys = KeyPair::generate()?;
/// let server_public = server_keys.public().clone();
/// let server = Messenger::builder()
///     .curve(Curve { keys: server_keys, server_key: None, allow: None })
///     .build()?;
/// let bound = server
///     .listen_for_connection(&"tcp://127.0.0.1:0".parse()?, |_, _| {})
///     .await?;
///
/// // The client proves it reaches the holder of the server's secret key.
/// let client = Messenger::builder()
///     .curve(Curve { keys: KeyPair::generate()?, server_key: Some(server_public), allow: None })
///     .build()?;
/// let conn = client.make_connection(&bound.endpoint).await?;
/// assert_eq!(&client.request(conn, ECHO, b"sealed").await?.body[..], b"sealed");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Curve {
    /// Our permanent key pair (`messenger keygen` makes one).
    pub keys: CurveKeyPair,
    /// The public key of the server our connections dial: they speak CURVE
    /// only when it is set, and reach only the holder of its secret half.
    /// (One per messenger: a messenger that dials servers with different
    /// keys uses one messenger per key.)
    pub server_key: Option<CurvePublicKey>,
    /// The clients our listeners let in, by permanent public key, in the
    /// spirit of ZAP; a client not on it is refused (ERROR "400") and
    /// counted (`curve_refused`). `None`: any client that completes the
    /// handshake, as libzmq without ZAP.
    pub allow: Option<Arc<HashSet<CurvePublicKey>>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            request_timeout: Duration::from_secs(30),
            max_pending_callbacks: 1 << 20,
            send_queue_capacity: 4096,
            send_window_bytes: 8 << 20,
            send_buffer_size: 1 << 20,
            slc_queue_capacity: 4096,
            max_message_size: 16 << 20,
            max_frames: 32,
            max_command_size: 64 << 10,
            heartbeat: Some(Heartbeat {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(3),
                ttl: Duration::from_secs(4),
            }),
            message_timeout: Duration::from_secs(5),
            min_receive_rate: 1 << 20,
            max_partial_bytes: 256 << 20,
            handshake_timeout: Duration::from_secs(5),
            max_connections_per_listener: 1024,
            evict_idle_after: Some(Duration::from_secs(10)),
            max_connections_per_address: 256,
            connect_timeout: Duration::from_secs(5),
            resend_interval: Some(Duration::from_secs(1)),
            max_pending_messages: 1 << 20,
            dedup_window: 1 << 16,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            auth: None,
            max_concurrent_handlers: 64,
            shutdown_grace: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            curve: None,
        }
    }
}

impl Config {
    /// Checks every field once, when a messenger is made with it
    /// ([`MessengerBuilder::build`](crate::MessengerBuilder::build)), so the
    /// code that uses a value never has to second-guess it: a zero
    /// capacity, limit or interval, or a redial cap below its start, is
    /// refused here ([`Error::InvalidConfig`], naming the field) rather
    /// than clamped (or spun on) later.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &'static str, why: String| Err(Error::InvalidConfig { field, why });
        let counts = [
            ("max_pending_callbacks", self.max_pending_callbacks),
            ("send_queue_capacity", self.send_queue_capacity),
            ("send_window_bytes", self.send_window_bytes),
            ("send_buffer_size", self.send_buffer_size),
            ("slc_queue_capacity", self.slc_queue_capacity),
            ("max_message_size", self.max_message_size),
            ("max_frames", self.max_frames),
            (
                "min_receive_rate",
                usize::try_from(self.min_receive_rate).unwrap_or(usize::MAX),
            ),
            ("max_partial_bytes", self.max_partial_bytes),
            (
                "max_connections_per_listener",
                self.max_connections_per_listener,
            ),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
            ),
            ("max_pending_messages", self.max_pending_messages),
            (
                "dedup_window",
                usize::try_from(self.dedup_window).unwrap_or(usize::MAX),
            ),
            ("max_concurrent_handlers", self.max_concurrent_handlers),
        ];
        if let Some((field, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return invalid(field, "must not be zero".into());
        }
        if let Some((field, v)) = counts.iter().find(|(_, v)| *v > MAX_COUNT) {
            return invalid(field, format!("must be at most {MAX_COUNT}, got {v}"));
        }
        if self.dedup_window > MAX_DEDUP_WINDOW {
            let got = self.dedup_window;
            return invalid(
                "dedup_window",
                format!(
                    "must be at most {MAX_DEDUP_WINDOW} (a 16 MiB bitmap per sender), got {got}"
                ),
            );
        }
        let mut durations = vec![
            ("request_timeout", self.request_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("message_timeout", self.message_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_initial", self.reconnect_initial),
        ];
        if let Some(d) = self.resend_interval {
            durations.push(("resend_interval", d));
        }
        if let Some(d) = self.evict_idle_after {
            durations.push(("evict_idle_after", d));
        }
        if let Some(hb) = self.heartbeat {
            durations.push(("heartbeat.interval", hb.interval));
            durations.push(("heartbeat.timeout", hb.timeout));
        }
        if let Some((field, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return invalid(field, "must not be zero".into());
        }
        // These may be zero, and none may be longer than a deadline can be.
        durations.extend([
            ("reconnect_max", self.reconnect_max),
            ("shutdown_grace", self.shutdown_grace),
            ("linger", self.linger),
        ]);
        if let Some(hb) = self.heartbeat {
            durations.push(("heartbeat.ttl", hb.ttl));
        }
        if let Some((field, d)) = durations.iter().find(|(_, d)| *d > MAX_DURATION) {
            return invalid(
                field,
                format!("must be at most 100 years (3,153,600,000 s), got {d:?}"),
            );
        }
        if self.max_command_size < MIN_COMMAND_SIZE {
            let got = self.max_command_size;
            return invalid(
                "max_command_size",
                format!("must be at least {MIN_COMMAND_SIZE}, got {got}"),
            );
        }
        if self.reconnect_max < self.reconnect_initial {
            let (max, initial) = (self.reconnect_max, self.reconnect_initial);
            return invalid(
                "reconnect_max",
                format!("({max:?}) is below reconnect_initial ({initial:?})"),
            );
        }
        Ok(())
    }

    /// How long a message may take to arrive once begun.
    pub(crate) fn receive_pace(&self) -> zmtp::ReceivePace {
        zmtp::ReceivePace {
            timeout: self.message_timeout,
            min_rate: self.min_receive_rate,
        }
    }

    /// What one ZMTP connection may make us hold.
    pub(crate) fn zmtp_limits(&self) -> zmtp::Limits {
        zmtp::Limits {
            max_message: (self.max_message_size as u64).saturating_add(4096),
            max_frames: self.max_frames,
            max_command: self.max_command_size,
        }
    }
}

/// The smallest `max_command_size`: READY with the longest routing id and
/// our properties fits, with room for CURVE's 200-byte HELLO.
pub(crate) const MIN_COMMAND_SIZE: usize = 512;

/// The largest count a field may hold: what a tokio semaphore or bounded
/// channel can hold (`Semaphore::MAX_PERMITS`, 2^61 - 1), which hold the
/// handler limit, the server loop's queue and the connection limit.
pub(crate) const MAX_COUNT: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// The longest duration a field may hold: 100 years, which stands for
/// "no limit" (a deadline further off overflows the clock).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The largest [`Config::dedup_window`]: 2^27 ids, whose bitmap is 16 MiB
/// per sender (the default's is 8 KiB). Beyond it one sender's
/// out-of-order ids would make its session allocate gigabytes.
pub(crate) const MAX_DEDUP_WINDOW: u64 = 1 << 27;

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: Result<(), Error>) -> &'static str {
        match e {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    /// The defaults with one change.
    fn with(change: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        change(&mut c);
        c
    }

    /// Counts beyond what the runtime can hold (a semaphore's or a
    /// channel's permits) or allocate (the duplicate window's bitmap) are
    /// refused here, named, instead of panicking later on a runtime thread
    /// (a listener that never accepts, a messenger that never builds).
    #[test]
    fn counts_too_large_to_hold_are_named() {
        for (name, config) in [
            (
                "max_concurrent_handlers",
                with(|c| c.max_concurrent_handlers = usize::MAX),
            ),
            (
                "slc_queue_capacity",
                with(|c| c.slc_queue_capacity = 1 << 62),
            ),
            (
                "max_connections_per_listener",
                with(|c| c.max_connections_per_listener = 1 << 62),
            ),
            ("dedup_window", with(|c| c.dedup_window = u64::MAX)),
            ("dedup_window", with(|c| c.dedup_window = 1 << 40)),
        ] {
            assert_eq!(field(config.validate()), name);
        }
        let largest = with(|c| {
            c.max_concurrent_handlers = MAX_COUNT;
            c.slc_queue_capacity = MAX_COUNT;
            c.max_connections_per_listener = MAX_COUNT;
            c.dedup_window = MAX_DEDUP_WINDOW;
        });
        assert_eq!(largest.validate(), Ok(()));
    }

    /// Durations past what a deadline can be (`Duration::MAX`, for "no
    /// limit") are refused here, named: added to the clock they panicked
    /// later (a dial, the first resend, a shutdown's linger).
    #[test]
    fn durations_too_long_for_a_deadline_are_named() {
        let long = Duration::MAX;
        for (name, config) in [
            ("connect_timeout", with(|c| c.connect_timeout = long)),
            ("linger", with(|c| c.linger = long)),
            ("resend_interval", with(|c| c.resend_interval = Some(long))),
            ("shutdown_grace", with(|c| c.shutdown_grace = long)),
            ("request_timeout", with(|c| c.request_timeout = long)),
            ("reconnect_max", with(|c| c.reconnect_max = long)),
        ] {
            assert_eq!(field(config.validate()), name);
        }
        let longest = with(|c| {
            c.connect_timeout = MAX_DURATION;
            c.linger = MAX_DURATION;
            c.resend_interval = Some(MAX_DURATION);
        });
        assert_eq!(longest.validate(), Ok(()));
    }

    #[test]
    fn the_defaults_are_valid_and_nonsense_is_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        let zero_queue = Config {
            slc_queue_capacity: 0,
            ..Config::default()
        };
        assert_eq!(
            zero_queue.validate().map_err(|e| e.to_string()),
            Err("invalid configuration: Config::slc_queue_capacity must not be zero".into())
        );
        let no_timeout = Config {
            request_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(field(no_timeout.validate()), "request_timeout");
        let backwards = Config {
            reconnect_initial: Duration::from_secs(2),
            reconnect_max: Duration::from_secs(1),
            ..Config::default()
        };
        assert_eq!(field(backwards.validate()), "reconnect_max");
        let tiny = Config {
            max_command_size: 100,
            ..Config::default()
        };
        assert_eq!(
            tiny.validate().map_err(|e| e.to_string()),
            Err(
                "invalid configuration: Config::max_command_size must be at least 512, got 100"
                    .into()
            )
        );
    }
}
