//! One ZMTP connection as a state machine: greeting, security handshake,
//! metadata, then traffic with heartbeats. Time is passed in; nothing here
//! touches a socket or a clock.
//!
//! The driver's loop, in short:
//!
//! ```text
//! engine = Engine::new(config, now)           // our greeting is queued
//! loop {
//!     write engine.transmit()                 // greeting, handshake commands
//!     read into buf; engine.received(now)
//!     while let Some(event) = engine.decode(&mut buf, now)? {
//!         PeerReady(info) => engine.accept(now) or engine.refuse(reason)
//!         Message         => engine.frames() holds it
//!     }
//!     while let Some(cmd) = engine.poll_command() { encoder.command(..) }  // PONG, PING
//!     at engine.poll_timeout(): engine.handle_timeout(now)?
//! }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::time::Instant;

use super::command::{Command, encode_ready_body_with, ping_body, pong_body};
use super::frame::{Decoded, Encoder, FrameDecoder};
use super::greeting::{GREETING_LEN, Greeting};
use super::keys::CurvePublicKey;
use super::mechanism::{Mechanism, MechanismConfig, MechanismName, Step};
use super::{Limits, SocketType, ZmtpError};

/// Which end of the connection we are. For NULL it decides who sends READY
/// first; CURVE's roles come from [`MechanismConfig`] instead (a CURVE
/// server may dial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We connected.
    Client,
    /// We accepted.
    Server,
}

/// `now + timeout`; a timeout too large to add is as good as none (about
/// a century), never a panic: `Duration::MAX` means "no deadline".
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// [`deadline_after`], where a zero interval is at least 1 ms (a timer due
/// again at once would have its driver spin).
fn after(now: Instant, d: Duration) -> Instant {
    deadline_after(now, d.max(Duration::from_millis(1)))
}

/// ZMTP 3.1 heartbeats, as libzmq's `ZMQ_HEARTBEAT_*` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Time between our PINGs.
    pub interval: Duration,
    /// How long after a PING the peer may stay silent before it is
    /// declared dead.
    pub timeout: Duration,
    /// The TTL our PINGs ask the peer to apply to us (rounded down to
    /// tenths of a second; zero asks nothing).
    pub ttl: Duration,
}

/// How long a message (or command) may take to arrive once its first byte
/// has: `timeout`, plus its declared size at `min_rate` bytes a second, so
/// a large message on a slow link is allowed its time while a peer that
/// declares 16 MiB and sends all but a byte cannot hold the memory for long
/// (the slow-reader policy of HTTP servers' request-body timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivePace {
    /// The time allowed whatever the size.
    pub timeout: Duration,
    /// The least rate allowed, in bytes per second (at least 1).
    pub min_rate: u64,
}

impl ReceivePace {
    /// When a message of `len` bytes begun at `start` must be complete.
    fn deadline(&self, start: Instant, len: u64) -> Instant {
        let millis = u128::from(len) * 1000 / u128::from(self.min_rate.max(1));
        let extra = Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX));
        deadline_after(start, self.timeout.saturating_add(extra))
    }
}

/// Commands queued for the holder of the encoder (PONGs, our PINGs) at
/// most: a peer that PINGs faster than we send (or while nothing sends,
/// before it has proven itself) gets no more PONGs, not more memory.
const MAX_QUEUED_COMMANDS: usize = 4;

/// What one connection is and may do.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Client (we dialled) or server (we accepted).
    pub role: Role,
    /// Our socket type, sent in READY and checked against the peer's.
    pub socket_type: SocketType,
    /// Our routing id, sent in READY (empty: none).
    pub identity: Bytes,
    /// Application properties sent in READY after the two ZMTP's own
    /// (`X-` names; see [`Metadata::properties`](crate::Metadata)).
    pub properties: Vec<(Bytes, Bytes)>,
    /// What the peer's frames may make us hold.
    pub limits: Limits,
    /// Time allowed from [`Engine::new`] to the end of the handshake.
    pub handshake_timeout: Duration,
    /// PINGs of ours, to find dead peers (3.1 peers only).
    pub heartbeat: Option<Heartbeat>,
    /// How long a message may take to arrive once begun (after the
    /// handshake; the handshake has its own deadline). `None`: as long as
    /// it likes.
    pub pace: Option<ReceivePace>,
    /// The security mechanism, and CURVE's keys: both peers must speak the
    /// same one. [`MechanismConfig::Null`] by default.
    pub mechanism: MechanismConfig,
}

/// The peer, as its greeting and READY describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its socket type.
    pub socket_type: SocketType,
    /// Its routing id (empty: it announced none).
    pub identity: Bytes,
    /// Its ZMTP version (major, minor).
    pub version: (u8, u8),
    /// The mechanism both sides speak.
    pub mechanism: MechanismName,
    /// CURVE: the peer's permanent public key, proven by the handshake (a
    /// client's, for the socket layer to authorise; at a client, the
    /// server's). None under NULL.
    pub curve_public_key: Option<CurvePublicKey>,
    /// Its READY's application properties (`X-` names).
    pub properties: Vec<(Bytes, Bytes)>,
}

/// What [`Engine::decode`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's metadata passed the mechanism and the socket-type check:
    /// call [`Engine::accept`] or [`Engine::refuse`] before decoding on.
    PeerReady(PeerInfo),
    /// A message; its frames are in [`Engine::frames`].
    Message,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the peer's greeting.
    Greeting,
    /// The mechanism's commands.
    Handshake,
    /// The peer is ready; the socket layer decides.
    Deciding,
    /// Messages and commands flow.
    Traffic,
    /// Failed or refused.
    Closed,
}

/// One ZMTP connection's protocol state.
#[derive(Debug)]
pub struct Engine {
    /// Client or server: who speaks first in CURVE, and which timers apply.
    role: Role,
    /// Ours, announced in READY and checked against the peer's.
    socket_type: SocketType,
    /// Our PINGs (3.1 peers only): `None` sends none, though a peer's PING
    /// is still answered.
    heartbeat: Option<Heartbeat>,
    /// Where in the connection's life we are: what `decode` expects next.
    state: State,
    /// Our READY body (NULL sends it in clear; CURVE boxes what follows
    /// its name, in INITIATE or READY).
    ready: Bytes,
    /// The peer's greeting so far.
    greeting: [u8; GREETING_LEN],
    /// How much of `greeting` has arrived: a greeting may come in pieces.
    greeting_have: usize,
    /// The peer's greeting, parsed.
    peer_greeting: Option<Greeting>,
    /// NULL or CURVE: runs the handshake's commands, then boxes traffic.
    mechanism: Mechanism,
    /// Frames after the greeting, every limit checked on the header.
    decoder: FrameDecoder,
    /// Frames every command and message we send until the socket layer
    /// takes it (after the handshake).
    encoder: Option<Encoder>,
    /// Bytes to send that the engine produced: the greeting, handshake
    /// commands, ERROR.
    transmit: BytesMut,
    /// Commands to send after the handshake (PONG, PING), framed by
    /// whoever holds the encoder.
    commands: VecDeque<Bytes>,
    /// When the handshake must be over: a peer that never finishes it
    /// cannot hold the connection.
    handshake_deadline: Instant,
    /// When our next PING is due.
    next_ping: Option<Instant>,
    /// A PING of ours is unanswered: by then some traffic must arrive.
    ping_deadline: Option<Instant>,
    /// The peer's PING asked for traffic within its TTL.
    ttl_deadline: Option<Instant>,
    /// When our oldest PING not yet answered by a PONG went out: the round
    /// trip is measured from it.
    ping_sent: Option<Instant>,
    /// The last round trip measured, PING to PONG.
    rtt: Option<Duration>,
    /// See [`EngineConfig::pace`].
    pace: Option<ReceivePace>,
    /// When the message being received began to arrive.
    message_started: Option<Instant>,
    /// When it must be complete (from `pace`), and its size so far.
    message_deadline: Option<(Instant, u64)>,
}

impl Engine {
    /// A connection that has just been made at `now`; our greeting is in
    /// [`transmit`](Self::transmit).
    pub fn new(config: EngineConfig, now: Instant) -> Self {
        let mechanism = Mechanism::new(&config.mechanism, config.role);
        let mut transmit = BytesMut::with_capacity(256);
        transmit.extend_from_slice(&Greeting::encode(mechanism.name(), mechanism.as_server()));
        Engine {
            role: config.role,
            socket_type: config.socket_type,
            heartbeat: config.heartbeat,
            state: State::Greeting,
            ready: encode_ready_body_with(config.socket_type, &config.identity, &config.properties),
            greeting: [0; GREETING_LEN],
            greeting_have: 0,
            peer_greeting: None,
            mechanism,
            decoder: FrameDecoder::new(config.limits),
            encoder: Some(Encoder::null()),
            transmit,
            commands: VecDeque::new(),
            handshake_deadline: after(now, config.handshake_timeout),
            next_ping: None,
            ping_deadline: None,
            ttl_deadline: None,
            ping_sent: None,
            rtt: None,
            pace: config.pace,
            message_started: None,
            message_deadline: None,
        }
    }

    /// The last round trip measured by our heartbeats (PING to the next
    /// PONG), if one was answered.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Replaces the limits on what the peer's frames may make us hold,
    /// from the next frame header on: a listener keeps them tight until
    /// the peer has proven itself (its proof is a small message).
    pub fn set_limits(&mut self, limits: Limits) {
        self.decoder.set_limits(limits);
    }

    /// Queues a command for the holder of the encoder, unless
    /// [`MAX_QUEUED_COMMANDS`] are waiting already.
    fn queue_command(&mut self, body: Bytes) {
        if self.commands.len() < MAX_QUEUED_COMMANDS {
            self.commands.push_back(body);
        }
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes the engine wants written, in order (drain what was written).
    pub fn transmit(&mut self) -> &mut BytesMut {
        &mut self.transmit
    }

    /// Whether the handshake is over and messages flow.
    pub fn is_ready(&self) -> bool {
        self.state == State::Traffic
    }

    /// The frames of the message [`decode`](Self::decode) just returned.
    pub fn frames(&mut self) -> &mut Vec<Bytes> {
        self.decoder.frames()
    }

    /// How many more bytes `buf` needs for the next step (at least 1):
    /// reserve this before reading. Never more than a limit allows.
    pub fn wants(&self, buf: &BytesMut) -> usize {
        match self.state {
            State::Greeting => GREETING_LEN - self.greeting_have,
            _ => self.decoder.wants(buf),
        }
    }

    /// Bytes arrived from the peer at `now`: any traffic is a sign of
    /// life (RFC 37, "Connection Heartbeating").
    pub fn received(&mut self, _now: Instant) {
        self.ping_deadline = None;
        self.ttl_deadline = None;
    }

    /// Takes the encoder once the handshake is over, so the socket layer
    /// can frame messages from any task (behind its own lock). After this,
    /// commands the engine wants sent come from
    /// [`poll_command`](Self::poll_command).
    pub fn take_encoder(&mut self) -> Option<Encoder> {
        if self.state == State::Traffic {
            self.encoder.take()
        } else {
            None
        }
    }

    /// The next command to send (PONG, PING), once the encoder is taken.
    pub fn poll_command(&mut self) -> Option<Bytes> {
        self.commands.pop_front()
    }

    /// Decodes what `buf` holds, consuming it, up to the next event.
    /// `Ok(None)`: more bytes are needed (or a decision is awaited).
    /// An error ends the connection; flush [`transmit`](Self::transmit)
    /// first (it may hold an ERROR for the peer).
    pub fn decode(&mut self, buf: &mut BytesMut, now: Instant) -> Result<Option<Event>, ZmtpError> {
        let r = self.decode_inner(buf, now);
        match &r {
            Err(_) => self.state = State::Closed,
            Ok(Some(Event::Message)) => {
                self.message_started = None;
                self.track(buf, now);
            }
            Ok(_) => self.track(buf, now),
        }
        r
    }

    /// Keeps the deadline of the message under way (if any) in step with
    /// what has arrived of it: set when it begins, moved out as later
    /// frame headers declare more, cleared when nothing is under way.
    fn track(&mut self, buf: &BytesMut, now: Instant) {
        let Some(pace) = self.pace.filter(|_| self.state == State::Traffic) else {
            return;
        };
        match self.decoder.in_progress(buf) {
            Some(len) => {
                let start = *self.message_started.get_or_insert(now);
                if self.message_deadline.is_none_or(|(_, had)| had != len) {
                    self.message_deadline = Some((pace.deadline(start, len), len));
                }
            }
            None => {
                self.message_started = None;
                self.message_deadline = None;
            }
        }
    }

    fn decode_inner(
        &mut self,
        buf: &mut BytesMut,
        now: Instant,
    ) -> Result<Option<Event>, ZmtpError> {
        loop {
            match self.state {
                State::Closed => return Err(ZmtpError::Closed),
                State::Deciding => return Ok(None),
                State::Greeting => {
                    if !self.read_greeting(buf)? {
                        return Ok(None);
                    }
                }
                State::Handshake => match self.decoder.decode(buf)? {
                    None => return Ok(None),
                    Some(Decoded::Message) => return Err(ZmtpError::MessageBeforeReady),
                    Some(Decoded::Command(body)) => {
                        // Frames of a message that began before this
                        // command: they would be glued (unauthenticated,
                        // under CURVE) to the first message of the traffic.
                        if self.decoder.mid_message() {
                            return Err(ZmtpError::MessageBeforeReady);
                        }
                        match self.handshake_command(body) {
                            Ok(Some(event)) => return Ok(Some(event)),
                            Ok(None) => {}
                            // RFC 37: metadata we cannot accept is refused
                            // with ERROR (a CURVE client sends none).
                            Err(ZmtpError::Metadata(e)) => {
                                self.refuse(e.reason());
                                return Err(ZmtpError::Metadata(e));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                },
                State::Traffic => match self.decoder.decode(buf)? {
                    None => return Ok(None),
                    Some(Decoded::Message) => return Ok(Some(Event::Message)),
                    Some(Decoded::Command(body)) => self.traffic_command(body, now)?,
                },
            }
        }
    }

    /// Takes greeting bytes; true once all 64 are in and checked.
    fn read_greeting(&mut self, buf: &mut BytesMut) -> Result<bool, ZmtpError> {
        let take = (GREETING_LEN - self.greeting_have).min(buf.len());
        let chunk = buf.split_to(take);
        let end = self.greeting_have + take;
        if let Some(dst) = self.greeting.get_mut(self.greeting_have..end) {
            dst.copy_from_slice(&chunk);
        }
        self.greeting_have = end;
        Greeting::check_prefix(self.greeting.get(..end).unwrap_or_default())?;
        if end < GREETING_LEN {
            return Ok(false);
        }
        let peer = Greeting::parse(&self.greeting)?;
        if peer.mechanism != self.mechanism.name() {
            return Err(ZmtpError::MechanismMismatch {
                ours: self.mechanism.name(),
                theirs: peer.mechanism,
            });
        }
        self.mechanism.check_peer(&peer)?;
        self.peer_greeting = Some(peer);
        self.state = State::Handshake;
        self.handshake_step(|mechanism, ready, send| mechanism.start(ready, send))?;
        Ok(true)
    }

    /// Lets the mechanism take a handshake step, framing the commands it
    /// sends into [`transmit`](Self::transmit). Handshake commands are
    /// plaintext command frames under every mechanism.
    fn handshake_step<R>(
        &mut self,
        step: impl FnOnce(&mut Mechanism, &Bytes, &mut dyn FnMut(&[u8])) -> R,
    ) -> R {
        let Engine {
            mechanism,
            transmit,
            ready,
            ..
        } = self;
        step(mechanism, ready, &mut |body| {
            Encoder::null().command(transmit, body)
        })
    }

    fn handshake_command(&mut self, body: Bytes) -> Result<Option<Event>, ZmtpError> {
        match self
            .handshake_step(|mechanism, ready, send| mechanism.on_command(body, ready, send))?
        {
            Step::Continue => Ok(None),
            Step::PeerReady {
                metadata,
                curve_key,
            } => {
                if !self.socket_type.accepts(metadata.socket_type) {
                    let err = ZmtpError::SocketType {
                        ours: self.socket_type,
                        theirs: metadata.socket_type,
                    };
                    self.refuse("socket types cannot talk");
                    return Err(err);
                }
                let greeting = self.peer_greeting.unwrap_or(Greeting {
                    major: 3,
                    minor: 0,
                    mechanism: self.mechanism.name(),
                    as_server: false,
                });
                self.state = State::Deciding;
                Ok(Some(Event::PeerReady(PeerInfo {
                    socket_type: metadata.socket_type,
                    identity: metadata.identity,
                    properties: metadata.properties,
                    version: (greeting.major, greeting.minor),
                    mechanism: greeting.mechanism,
                    curve_public_key: curve_key,
                })))
            }
        }
    }

    fn traffic_command(&mut self, body: Bytes, now: Instant) -> Result<(), ZmtpError> {
        match Command::parse(body)? {
            Command::Ping { ttl, context } => {
                if ttl > 0 && self.ttl_deadline.is_none() {
                    self.ttl_deadline = Some(now + Duration::from_millis(u64::from(ttl) * 100));
                }
                self.queue_command(pong_body(&context));
            }
            Command::Error(reason) => return Err(ZmtpError::peer_error(&reason)),
            // PONG is a sign of life, like any traffic, and measures the
            // round trip of our PING.
            Command::Pong => {
                if let Some(sent) = self.ping_sent.take() {
                    self.rtt = Some(now.saturating_duration_since(sent));
                }
            }
            // SUBSCRIBE, CANCEL, JOIN and LEAVE mean nothing to a ROUTER
            // or DEALER; unknown commands are ignored, as libzmq does.
            Command::Ready(_) | Command::Other { .. } => {}
        }
        Ok(())
    }

    /// Accepts the peer after [`Event::PeerReady`]: a server's READY is
    /// queued and traffic may flow (under CURVE, boxed from now on).
    pub fn accept(&mut self, now: Instant) {
        if self.state != State::Deciding {
            return;
        }
        match self.handshake_step(|mechanism, ready, send| mechanism.accept(ready, send)) {
            Ok(None) => {}
            Ok(Some(session)) => {
                self.encoder = Some(Encoder::curve(session.tx));
                self.decoder.set_curve(session.rx);
            }
            // READY could not be boxed (not seen in practice): the next
            // decode says the connection is closed.
            Err(_) => {
                self.state = State::Closed;
                return;
            }
        }
        self.state = State::Traffic;
        let heartbeats = self.peer_greeting.is_some_and(|g| g.has_heartbeats());
        if let Some(hb) = self.heartbeat.filter(|_| heartbeats) {
            self.next_ping = Some(after(now, hb.interval));
        }
    }

    /// Refuses the peer: an ERROR with `reason` is queued in
    /// [`transmit`](Self::transmit) if the handshake still allows one (a
    /// plaintext ERROR from a CURVE server; never from a CURVE client, as
    /// RFC 26 forbids it), and the connection is closed.
    pub fn refuse(&mut self, reason: &'static str) -> ZmtpError {
        self.handshake_step(|mechanism, _, send| mechanism.refuse(reason, send));
        self.state = State::Closed;
        ZmtpError::Refused(reason)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Greeting | State::Handshake | State::Deciding => Some(self.handshake_deadline),
            State::Traffic => [
                self.next_ping,
                self.ping_deadline,
                self.ttl_deadline,
                self.message_deadline.map(|(at, _)| at),
            ]
            .into_iter()
            .flatten()
            .min(),
            State::Closed => None,
        }
    }

    /// Timers due at `now`: the handshake deadline, a PING to send, a
    /// silent peer.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ZmtpError> {
        match self.state {
            State::Greeting | State::Handshake | State::Deciding => {
                if now >= self.handshake_deadline {
                    self.state = State::Closed;
                    return Err(ZmtpError::HandshakeTimeout);
                }
            }
            State::Traffic => {
                let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
                if due(self.ping_deadline) || due(self.ttl_deadline) {
                    self.state = State::Closed;
                    return Err(ZmtpError::HeartbeatTimeout);
                }
                if let Some((at, len)) = self.message_deadline
                    && at <= now
                {
                    self.state = State::Closed;
                    return Err(ZmtpError::SlowMessage { len });
                }
                if due(self.next_ping)
                    && let Some(hb) = self.heartbeat
                {
                    let ttl = u16::try_from(hb.ttl.as_millis() / 100).unwrap_or(u16::MAX);
                    self.queue_command(ping_body(ttl));
                    self.ping_deadline.get_or_insert(after(now, hb.timeout));
                    self.ping_sent.get_or_insert(now);
                    self.next_ping = Some(after(now, hb.interval));
                }
            }
            State::Closed => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Two engines joined by byte queues, stepped until idle on a virtual
    //! clock (quinn-proto's `Pair`).
    use super::*;

    struct Side {
        engine: Engine,
        encoder: Option<Encoder>,
        /// Bytes from the other side, not yet decoded.
        inbox: BytesMut,
        events: Vec<Event>,
        messages: Vec<Vec<Bytes>>,
        error: Option<ZmtpError>,
        /// What the socket layer decides on PeerReady.
        refuse: Option<&'static str>,
    }

    impl Side {
        fn new(config: EngineConfig, now: Instant) -> Self {
            Side {
                engine: Engine::new(config, now),
                encoder: None,
                inbox: BytesMut::new(),
                events: Vec::new(),
                messages: Vec::new(),
                error: None,
                refuse: None,
            }
        }

        /// Decodes what arrived and returns the bytes to send.
        fn step(&mut self, now: Instant) -> BytesMut {
            if self.error.is_none() && !self.inbox.is_empty() {
                self.engine.received(now);
            }
            while self.error.is_none() {
                match self.engine.decode(&mut self.inbox, now) {
                    Ok(None) => break,
                    Ok(Some(Event::PeerReady(info))) => {
                        self.events.push(Event::PeerReady(info));
                        match self.refuse {
                            Some(reason) => self.error = Some(self.engine.refuse(reason)),
                            None => {
                                self.engine.accept(now);
                                self.encoder = self.engine.take_encoder();
                            }
                        }
                    }
                    Ok(Some(Event::Message)) => {
                        self.messages.push(std::mem::take(self.engine.frames()));
                    }
                    Err(e) => self.error = Some(e),
                }
            }
            let mut out = self.engine.transmit().split();
            if let Some(enc) = self.encoder.as_mut() {
                while let Some(cmd) = self.engine.poll_command() {
                    enc.command(&mut out, &cmd);
                }
            }
            out
        }

        /// Puts a command from this side's encoder in `to`'s inbox.
        fn command_to(&mut self, to: &mut Side, body: &[u8]) {
            let mut buf = BytesMut::new();
            self.encoder
                .as_mut()
                .expect("handshake done")
                .command(&mut buf, body);
            to.inbox.extend_from_slice(&buf);
        }

        fn send(&mut self, frames: &[&[u8]]) -> BytesMut {
            let mut out = BytesMut::new();
            self.encoder
                .as_mut()
                .expect("handshake done")
                .message(&mut out, frames);
            out
        }
    }

    /// Sees a chunk in flight (`true`: to the server) and may change it.
    type Tamper = Box<dyn FnMut(bool, &mut BytesMut)>;

    struct Pair {
        now: Instant,
        client: Side,
        server: Side,
        /// Bytes moved, each way.
        to_server: usize,
        to_client: usize,
        /// Sees (and may change) every chunk in flight; `true`: to the
        /// server.
        tamper: Option<Tamper>,
    }

    fn config(role: Role, socket_type: SocketType, identity: &'static [u8]) -> EngineConfig {
        EngineConfig {
            role,
            socket_type,
            identity: Bytes::from_static(identity),
            properties: Vec::new(),
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(5),
            heartbeat: None,
            pace: None,
            mechanism: MechanismConfig::Null,
        }
    }

    impl Pair {
        fn new(client: EngineConfig, server: EngineConfig) -> Self {
            let now = Instant::now();
            Pair {
                now,
                client: Side::new(client, now),
                server: Side::new(server, now),
                to_server: 0,
                to_client: 0,
                tamper: None,
            }
        }

        fn dealer_router() -> Self {
            Pair::new(
                config(Role::Client, SocketType::Dealer, b"alice"),
                config(Role::Server, SocketType::Router, b"srv"),
            )
        }

        /// Moves bytes both ways until neither side has anything to say.
        fn drive(&mut self) {
            for _ in 0..100 {
                let mut c = self.client.step(self.now);
                let mut s = self.server.step(self.now);
                if c.is_empty() && s.is_empty() {
                    return;
                }
                if let Some(tamper) = self.tamper.as_mut() {
                    if !c.is_empty() {
                        tamper(true, &mut c);
                    }
                    if !s.is_empty() {
                        tamper(false, &mut s);
                    }
                }
                self.to_server += c.len();
                self.to_client += s.len();
                self.server.inbox.extend_from_slice(&c);
                self.client.inbox.extend_from_slice(&s);
            }
            panic!("the pair never went idle");
        }

        /// Advances the clock to each side's next timer up to `until`.
        fn run_until(&mut self, until: Instant) {
            loop {
                let next = [&self.client, &self.server]
                    .into_iter()
                    .filter(|side| side.error.is_none())
                    .filter_map(|side| side.engine.poll_timeout())
                    .filter(|&t| t <= until)
                    .min();
                let Some(t) = next else {
                    self.now = until;
                    self.drive();
                    return;
                };
                self.now = t;
                for side in [&mut self.client, &mut self.server] {
                    if side.error.is_none()
                        && let Err(e) = side.engine.handle_timeout(t)
                    {
                        side.error = Some(e);
                    }
                }
                self.drive();
            }
        }
    }

    #[test]
    fn dealer_and_router_handshake_and_exchange_messages() {
        let mut p = Pair::dealer_router();
        p.drive();
        assert!(p.client.engine.is_ready() && p.server.engine.is_ready());
        let Event::PeerReady(at_server) = &p.server.events[0] else {
            panic!()
        };
        assert_eq!(at_server.socket_type, SocketType::Dealer);
        assert_eq!(&at_server.identity[..], b"alice");
        assert_eq!(at_server.version, (3, 1));
        let Event::PeerReady(at_client) = &p.client.events[0] else {
            panic!()
        };
        assert_eq!(&at_client.identity[..], b"srv");
        let m = p.client.send(&[b"", b"1-0-1-hi"]);
        p.server.inbox.extend_from_slice(&m);
        let r = p.server.send(&[b"srv", b"", b"1-0-2-"]);
        p.client.inbox.extend_from_slice(&r);
        p.drive();
        assert_eq!(
            p.server.messages,
            vec![vec![Bytes::new(), Bytes::from_static(b"1-0-1-hi")]]
        );
        assert_eq!(p.client.messages.len(), 1);
        assert_eq!(p.client.messages[0].len(), 3);
    }

    #[test]
    fn the_socket_layer_can_refuse_with_error() {
        let mut p = Pair::dealer_router();
        p.server.refuse = Some("routing id in use");
        p.drive();
        assert_eq!(
            p.server.error,
            Some(ZmtpError::Refused("routing id in use"))
        );
        assert_eq!(
            p.client.error,
            Some(ZmtpError::PeerError {
                reason: "routing id in use".into()
            })
        );
        assert!(!p.client.engine.is_ready());
    }

    #[test]
    fn incompatible_socket_types_get_an_error() {
        let mut p = Pair::new(
            config(Role::Client, SocketType::Pub, b""),
            config(Role::Server, SocketType::Router, b""),
        );
        p.drive();
        assert!(matches!(
            p.server.error,
            Some(ZmtpError::SocketType {
                theirs: SocketType::Pub,
                ..
            })
        ));
        assert!(matches!(p.client.error, Some(ZmtpError::PeerError { .. })));
    }

    #[test]
    fn ping_is_answered_with_pong_echoing_the_context() {
        let mut p = Pair::dealer_router();
        p.drive();
        p.client.command_to(&mut p.server, b"\x04PING\x00\x00ctx");
        let out = p.server.step(p.now);
        let mut want = BytesMut::new();
        Encoder::null().command(&mut want, b"\x04PONGctx");
        assert_eq!(out, want);
        assert_eq!(p.server.error, None);
    }

    #[test]
    fn heartbeats_keep_a_live_peer_and_find_a_dead_one() {
        let hb = Heartbeat {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            ttl: Duration::from_secs(1),
        };
        let mut client = config(Role::Client, SocketType::Dealer, b"a");
        client.heartbeat = Some(hb);
        let mut p = Pair::new(client, config(Role::Server, SocketType::Router, b""));
        p.drive();
        let start = p.now;
        let before = p.to_server;
        p.run_until(start + Duration::from_secs(10));
        assert_eq!(p.client.error, None, "answered PINGs keep it alive");
        assert_eq!(p.server.error, None, "PINGs are traffic within the TTL");
        // About one PING (9 bytes) per 100 ms.
        let pings = (p.to_server - before) / 9;
        assert!((95..=101).contains(&pings), "{pings} PINGs in 10 s");
        // Each PONG measured the round trip (the pair's is instant).
        assert_eq!(p.client.engine.rtt(), Some(Duration::ZERO));
        assert_eq!(p.server.engine.rtt(), None, "it sent no PING");

        // The server stops answering (its process hangs): the client gives
        // up one timeout after its first unanswered PING.
        let hung_at = p.now;
        p.server.error = Some(ZmtpError::Closed);
        p.run_until(hung_at + Duration::from_secs(1));
        assert_eq!(p.client.error, Some(ZmtpError::HeartbeatTimeout));
    }

    #[test]
    fn a_ping_ttl_drops_a_peer_that_goes_silent() {
        let mut p = Pair::dealer_router();
        p.drive();
        // TTL 5 = 500 ms.
        p.client.command_to(&mut p.server, b"\x04PING\x00\x05");
        p.drive();
        let t = p.now;
        p.run_until(t + Duration::from_millis(499));
        assert_eq!(p.server.error, None);
        p.run_until(t + Duration::from_millis(500));
        assert_eq!(p.server.error, Some(ZmtpError::HeartbeatTimeout));
    }

    #[test]
    fn no_pings_to_a_3_0_peer() {
        let mut client = config(Role::Client, SocketType::Dealer, b"a");
        client.heartbeat = Some(Heartbeat {
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
            ttl: Duration::ZERO,
        });
        let mut p = Pair::new(client, config(Role::Server, SocketType::Router, b""));
        // The server's greeting says 3.0.
        p.server.engine.transmit()[11] = 0;
        p.drive();
        assert!(p.client.engine.is_ready());
        assert_eq!(p.client.engine.poll_timeout(), None);
    }

    #[test]
    fn huge_and_zero_durations_neither_panic_nor_spin() {
        let now = Instant::now();
        let mut server = config(Role::Server, SocketType::Router, b"");
        server.handshake_timeout = Duration::MAX;
        let mut client = config(Role::Client, SocketType::Dealer, b"c");
        client.handshake_timeout = Duration::MAX;
        client.heartbeat = Some(Heartbeat {
            interval: Duration::ZERO,
            timeout: Duration::MAX,
            ttl: Duration::MAX,
        });
        let mut p = Pair::new(client, server);
        p.drive();
        assert!(p.client.engine.is_ready());
        // A zero interval still leaves a millisecond between PINGs.
        let next = p.client.engine.poll_timeout().unwrap();
        assert!(next > p.now, "a timer due at once would spin its driver");
        p.run_until(p.now + Duration::from_millis(10));
        assert_eq!(p.client.error, None);
        assert!(now < p.now);
    }

    #[test]
    fn pings_nobody_answers_queue_a_few_pongs_not_more() {
        // A listener waiting for a peer's proof sends nothing: the PONGs
        // of a PING flood must not pile up meanwhile.
        let mut p = Pair::dealer_router();
        p.drive();
        let mut flood = BytesMut::new();
        let enc = p.client.encoder.as_mut().expect("ready");
        for _ in 0..10_000 {
            enc.command(&mut flood, b"\x04PING\x00\x00ctx");
        }
        let now = p.now;
        assert_eq!(p.server.engine.decode(&mut flood, now), Ok(None));
        assert!(flood.is_empty());
        assert_eq!(p.server.engine.commands.len(), MAX_QUEUED_COMMANDS);
    }

    #[test]
    fn an_error_reason_is_escaped_for_logs_and_terminals() {
        let mut p = Pair::dealer_router();
        p.drive();
        let forged = b"ok\n2026-01-01 ERROR forged\x1b]0;pwned\x07\x1b[31m\xff";
        let mut body = vec![5];
        body.extend_from_slice(b"ERROR");
        body.push(forged.len() as u8);
        body.extend_from_slice(forged);
        p.server.command_to(&mut p.client, &body);
        p.drive();
        let Some(ZmtpError::PeerError { reason }) = &p.client.error else {
            panic!("{:?}", p.client.error)
        };
        assert_eq!(
            reason,
            "ok\\n2026-01-01 ERROR forged\\x1b]0;pwned\\x07\\x1b[31m\\xff"
        );
        let shown = p.client.error.as_ref().map(ToString::to_string);
        assert!(shown.is_some_and(|s| s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')));
    }

    #[test]
    fn metadata_we_refuse_gets_an_error() {
        // Socket-Type twice: refused with ERROR, as RFC 37 asks (and
        // design/WIRE.md promises), not just a closed connection.
        let mut e = Engine::new(
            config(Role::Server, SocketType::Router, b""),
            Instant::now(),
        );
        let mut input = BytesMut::from(&Greeting::encode(MechanismName::NULL, false)[..]);
        let mut ready = BytesMut::new();
        ready.extend_from_slice(b"\x05READY");
        for _ in 0..2 {
            ready.extend_from_slice(b"\x0bSocket-Type\x00\x00\x00\x06DEALER");
        }
        Encoder::null().command(&mut input, &ready);
        let now = Instant::now();
        assert!(matches!(
            e.decode(&mut input, now),
            Err(ZmtpError::Metadata(super::super::MetadataError::Duplicate(
                _
            )))
        ));
        let sent = e.transmit().split();
        let mut want = BytesMut::new();
        Encoder::null().command(
            &mut want,
            &super::super::command::error_body("a property appears twice"),
        );
        assert!(sent.ends_with(&want), "{sent:?}");
    }

    #[test]
    fn a_message_begun_must_finish_within_its_deadline() {
        let pace = ReceivePace {
            timeout: Duration::from_secs(5),
            min_rate: 1 << 20,
        };
        let mut p = Pair::new(
            config(Role::Client, SocketType::Dealer, b"alice"),
            EngineConfig {
                pace: Some(pace),
                ..config(Role::Server, SocketType::Router, b"srv")
            },
        );
        p.drive();
        // 16 MiB declared, all but the last byte sent: 5 s + 16 s.
        let mut m = p.client.send(&[b"", &vec![7u8; 16 << 20]]);
        let last = m.split_off(m.len() - 1);
        let start = p.now;
        p.server.inbox.extend_from_slice(&m);
        p.drive();
        assert_eq!(
            p.server.engine.poll_timeout(),
            Some(start + Duration::from_secs(21))
        );
        p.run_until(start + Duration::from_millis(20_999));
        assert_eq!(p.server.error, None);
        p.run_until(start + Duration::from_secs(21));
        assert!(matches!(
            p.server.error,
            Some(ZmtpError::SlowMessage { len }) if len > 16 << 20
        ));
        drop(last);
    }

    #[test]
    fn a_message_that_finishes_in_time_clears_its_deadline() {
        let pace = ReceivePace {
            timeout: Duration::from_secs(1),
            min_rate: 1 << 20,
        };
        let mut p = Pair::new(
            config(Role::Client, SocketType::Dealer, b"alice"),
            EngineConfig {
                pace: Some(pace),
                ..config(Role::Server, SocketType::Router, b"srv")
            },
        );
        p.drive();
        let mut m = p.client.send(&[b"", b"1-0-0-hello"]);
        let rest = m.split_off(3);
        p.server.inbox.extend_from_slice(&m);
        p.drive();
        assert!(p.server.engine.poll_timeout().is_some(), "under way");
        p.run_until(p.now + Duration::from_millis(500));
        p.server.inbox.extend_from_slice(&rest);
        p.drive();
        assert_eq!(p.server.messages.len(), 1);
        assert_eq!(p.server.engine.poll_timeout(), None, "nothing under way");
        p.run_until(p.now + Duration::from_secs(60));
        assert_eq!(p.server.error, None);
    }

    #[test]
    fn the_handshake_must_finish_in_time() {
        let now = Instant::now();
        let mut e = Engine::new(config(Role::Server, SocketType::Router, b""), now);
        let mut half = BytesMut::from(&Greeting::encode(MechanismName::NULL, false)[..30]);
        assert_eq!(e.decode(&mut half, now), Ok(None));
        assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(5)));
        assert_eq!(e.handle_timeout(now + Duration::from_millis(4999)), Ok(()));
        assert_eq!(
            e.handle_timeout(now + Duration::from_secs(5)),
            Err(ZmtpError::HandshakeTimeout)
        );
    }

    #[test]
    fn mechanism_mismatch_and_early_messages_are_refused() {
        let now = Instant::now();
        let mut e = Engine::new(config(Role::Server, SocketType::Router, b""), now);
        let mut curve = BytesMut::from(&Greeting::encode(MechanismName::CURVE, false)[..]);
        assert!(matches!(
            e.decode(&mut curve, now),
            Err(ZmtpError::MechanismMismatch { .. })
        ));
        let mut e = Engine::new(config(Role::Server, SocketType::Router, b""), now);
        let mut early = BytesMut::from(&Greeting::encode(MechanismName::NULL, false)[..]);
        Encoder::null().message(&mut early, &[b"", b"1-0-1-x"]);
        assert_eq!(
            e.decode(&mut early, now),
            Err(ZmtpError::MessageBeforeReady)
        );
        assert_eq!(e.decode(&mut early, now), Err(ZmtpError::Closed));
    }

    #[test]
    fn message_frames_begun_before_the_handshake_are_refused() {
        // Found by fuzz/curve_handshake: a plaintext MORE frame before
        // INITIATE was kept and glued to the first authenticated message.
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(true, b"\x08INITIATE", |b, at| {
            // The INITIATE frame's header starts 9 octets before its name.
            let frame = at - 9;
            let mut glued = BytesMut::from(&b[..frame]);
            glued.extend_from_slice(&[0x01, 3, 0, 0, 0]);
            glued.extend_from_slice(&b[frame..]);
            *b = glued;
        }));
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::MessageBeforeReady));
        assert!(p.server.events.is_empty());
        // The same under NULL, before READY.
        let now = Instant::now();
        let mut e = Engine::new(config(Role::Server, SocketType::Router, b""), now);
        let mut b = BytesMut::from(&Greeting::encode(MechanismName::NULL, false)[..]);
        b.extend_from_slice(&[0x01, 1, b'x']);
        Encoder::null().command(
            &mut b,
            &super::super::command::encode_ready_body(SocketType::Dealer, b"c"),
        );
        assert_eq!(e.decode(&mut b, now), Err(ZmtpError::MessageBeforeReady));
    }

    #[test]
    fn nothing_is_decoded_while_the_socket_layer_decides() {
        let now = Instant::now();
        let mut server = Engine::new(config(Role::Server, SocketType::Router, b""), now);
        let mut client = Engine::new(config(Role::Client, SocketType::Dealer, b"c"), now);
        let mut to_server = BytesMut::from(&client.transmit().split()[..]);
        let mut srv_greeting = server.transmit().split();
        assert_eq!(client.decode(&mut srv_greeting, now), Ok(None));
        to_server.extend_from_slice(&client.transmit().split());
        // A message pipelined right behind READY waits for the decision.
        Encoder::null().message(&mut to_server, &[b"", b"0-0-0-x"]);
        assert!(matches!(
            server.decode(&mut to_server, now),
            Ok(Some(Event::PeerReady(_)))
        ));
        assert_eq!(server.decode(&mut to_server, now), Ok(None));
        assert!(!to_server.is_empty(), "kept for after the decision");
        server.accept(now);
        assert_eq!(server.decode(&mut to_server, now), Ok(Some(Event::Message)));
    }

    // ---- CURVE ----

    use crate::{CurveKeyPair, CurvePublicKey};

    fn keys() -> CurveKeyPair {
        CurveKeyPair::generate().expect("OS RNG")
    }

    /// A DEALER CURVE client and a ROUTER CURVE server with fresh keys.
    fn curve_pair() -> (Pair, CurveKeyPair, CurveKeyPair) {
        let (ck, sk) = (keys(), keys());
        let p = curve_pair_with(&ck, &sk, *sk.public());
        (p, ck, sk)
    }

    fn curve_pair_with(ck: &CurveKeyPair, sk: &CurveKeyPair, server_key: CurvePublicKey) -> Pair {
        let mut client = config(Role::Client, SocketType::Dealer, b"alice");
        client.mechanism = MechanismConfig::CurveClient {
            keys: ck.clone(),
            server_key,
        };
        let mut server = config(Role::Server, SocketType::Router, b"srv");
        server.mechanism = MechanismConfig::CurveServer { keys: sk.clone() };
        Pair::new(client, server)
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn curve_handshake_and_messages_both_ways() {
        let (mut p, ck, sk) = curve_pair();
        // Everything on the wire, each way, to look for plaintext.
        let seen = std::rc::Rc::new(std::cell::RefCell::new((Vec::new(), Vec::new())));
        let log = seen.clone();
        p.tamper = Some(Box::new(move |to_server, b| {
            let mut l = log.borrow_mut();
            if to_server {
                l.0.extend_from_slice(b)
            } else {
                l.1.extend_from_slice(b)
            }
        }));
        p.drive();
        assert_eq!(p.client.error, None);
        assert_eq!(p.server.error, None);
        assert!(p.client.engine.is_ready() && p.server.engine.is_ready());
        let Event::PeerReady(at_server) = &p.server.events[0] else {
            panic!()
        };
        assert_eq!(at_server.mechanism, MechanismName::CURVE);
        assert_eq!(at_server.socket_type, SocketType::Dealer);
        assert_eq!(&at_server.identity[..], b"alice");
        assert_eq!(at_server.curve_public_key, Some(*ck.public()));
        let Event::PeerReady(at_client) = &p.client.events[0] else {
            panic!()
        };
        assert_eq!(&at_client.identity[..], b"srv");
        assert_eq!(at_client.socket_type, SocketType::Router);
        assert_eq!(at_client.curve_public_key, Some(*sk.public()));

        let big = vec![7u8; 70_000];
        let m = p.client.send(&[b"", b"1-0-1-secret-hello", &big]);
        p.server.inbox.extend_from_slice(&m);
        let r = p.server.send(&[b"alice", b"", b"1-0-2-secret-reply"]);
        p.client.inbox.extend_from_slice(&r);
        p.drive();
        assert_eq!(p.server.error, None);
        assert_eq!(
            p.server.messages,
            vec![vec![
                Bytes::new(),
                Bytes::from_static(b"1-0-1-secret-hello"),
                Bytes::from(big)
            ]]
        );
        assert_eq!(
            p.client.messages,
            vec![vec![
                Bytes::from_static(b"alice"),
                Bytes::new(),
                Bytes::from_static(b"1-0-2-secret-reply")
            ]]
        );
        // message_with boxes in place, too.
        let mut w = BytesMut::new();
        p.client
            .encoder
            .as_mut()
            .unwrap()
            .message_with(&mut w, &[b""], 5, |b| b.extend_from_slice(b"12345"));
        p.server.inbox.extend_from_slice(&w);
        p.drive();
        assert_eq!(p.server.messages[1][1], Bytes::from_static(b"12345"));

        // Nothing of the metadata or the messages crossed in clear.
        let (up, down) = &*seen.borrow();
        let (up, down) = (
            [up.as_slice(), &m, &w].concat(),
            [down.as_slice(), &r].concat(),
        );
        for (wire, secret) in [
            (&up, &b"alice"[..]),
            (&up, b"DEALER"),
            (&up, b"secret"),
            (&up, ck.public().as_bytes()),
            (&down, b"ROUTER"),
            (&down, b"secret"),
        ] {
            assert_eq!(
                find(wire, secret),
                None,
                "{:?} in clear",
                String::from_utf8_lossy(secret)
            );
        }
        // libzmq's framing: HELLO 200, WELCOME 168, MESSAGE in a data frame.
        assert_eq!(&up[64..66], &[0x04, 200]);
        assert_eq!(&up[66..72], b"\x05HELLO");
        assert_eq!(&down[64..66], &[0x04, 168]);
        assert_eq!(up[0..64][32], 0, "client: as-server 0");
        assert_eq!(down[0..64][32], 1, "server: as-server 1");
        assert_eq!(&m[..2], &[0x00, 33], "an empty frame is a 33-octet MESSAGE");
        assert_eq!(&m[2..10], b"\x07MESSAGE");
    }

    #[test]
    fn curve_ping_pong_and_heartbeats() {
        let hb = Heartbeat {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            ttl: Duration::from_secs(1),
        };
        let (ck, sk) = (keys(), keys());
        let mut p = curve_pair_with(&ck, &sk, *sk.public());
        p.client.engine.heartbeat = Some(hb);
        p.drive();
        assert!(p.client.engine.is_ready());
        // A PING boxed as MESSAGE (flags 0x02) is answered with a boxed
        // PONG that the client reads.
        let mut ping = BytesMut::new();
        p.client
            .encoder
            .as_mut()
            .unwrap()
            .command(&mut ping, b"\x04PING\x00\x00ctx");
        assert_eq!(find(&ping, b"PING"), None, "PING is boxed");
        p.server.inbox.extend_from_slice(&ping);
        let pong = p.server.step(p.now);
        assert_eq!(&pong[2..10], b"\x07MESSAGE");
        assert_eq!(find(&pong, b"PONG"), None, "PONG is boxed");
        p.client.inbox.extend_from_slice(&pong);
        p.drive();
        assert_eq!(p.client.error, None);
        assert_eq!(p.server.error, None);
        // Heartbeats over CURVE keep a live peer for 10 s.
        let start = p.now;
        p.run_until(start + Duration::from_secs(10));
        assert_eq!(p.client.error, None);
        assert_eq!(p.server.error, None);
        let hung_at = p.now;
        p.server.error = Some(ZmtpError::Closed);
        p.run_until(hung_at + Duration::from_secs(1));
        assert_eq!(p.client.error, Some(ZmtpError::HeartbeatTimeout));
    }

    #[test]
    fn curve_refusal_is_a_plaintext_error() {
        let (mut p, _, _) = curve_pair();
        p.server.refuse = Some("not authorised");
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::Refused("not authorised")));
        assert_eq!(
            p.client.error,
            Some(ZmtpError::PeerError {
                reason: "not authorised".into()
            })
        );
        // A CURVE client refusing the server says nothing (RFC 26).
        let (mut p, _, _) = curve_pair();
        p.client.refuse = Some("no");
        p.drive();
        assert_eq!(p.client.error, Some(ZmtpError::Refused("no")));
        // (The server, having sent READY, is in traffic already.)
        assert_eq!(p.server.error, None);
        assert!(!p.client.engine.is_ready());
    }

    #[test]
    fn curve_wrong_server_key_is_refused() {
        let (ck, sk, other) = (keys(), keys(), keys());
        let mut p = curve_pair_with(&ck, &sk, *other.public());
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::BadBox("HELLO")));
        assert!(
            matches!(p.client.error, Some(ZmtpError::PeerError { .. })),
            "{:?}",
            p.client.error
        );
        assert!(p.server.events.is_empty());
    }

    #[test]
    fn curve_and_null_do_not_mix() {
        let sk = keys();
        let mut server = config(Role::Server, SocketType::Router, b"");
        server.mechanism = MechanismConfig::CurveServer { keys: sk.clone() };
        let mut p = Pair::new(config(Role::Client, SocketType::Dealer, b""), server);
        p.drive();
        assert!(matches!(
            p.server.error,
            Some(ZmtpError::MechanismMismatch { .. })
        ));
        assert!(matches!(
            p.client.error,
            Some(ZmtpError::MechanismMismatch { .. })
        ));
        // Two CURVE servers (or two clients) cannot talk either.
        let mut other = config(Role::Client, SocketType::Dealer, b"");
        other.mechanism = MechanismConfig::CurveServer { keys: keys() };
        let mut server = config(Role::Server, SocketType::Router, b"");
        server.mechanism = MechanismConfig::CurveServer { keys: sk };
        let mut p = Pair::new(other, server);
        p.drive();
        assert_eq!(
            p.server.error,
            Some(ZmtpError::Greeting("both peers are CURVE servers"))
        );
    }

    #[test]
    fn curve_tampered_and_replayed_messages_are_refused() {
        let (mut p, _, _) = curve_pair();
        p.drive();
        let m = p.client.send(&[b"", b"1-0-1-hi"]);
        // A flipped bit anywhere in the box.
        for at in [10, 18, 34, m.len() - 1] {
            let (mut q, _, _) = curve_pair();
            q.drive();
            let mut bad = q.client.send(&[b"", b"1-0-1-hi"]);
            bad[at] ^= 0x20;
            q.server.inbox.extend_from_slice(&bad);
            q.drive();
            assert!(
                matches!(
                    q.server.error,
                    Some(ZmtpError::BadBox("MESSAGE") | ZmtpError::MalformedCommand("MESSAGE"))
                ),
                "byte {at}: {:?}",
                q.server.error
            );
        }
        // The same MESSAGE twice: the second's nonce does not increase.
        p.server.inbox.extend_from_slice(&m);
        p.server.inbox.extend_from_slice(&m);
        p.drive();
        assert_eq!(p.server.messages.len(), 1, "the first copy only");
        assert_eq!(p.server.error, Some(ZmtpError::Nonce("MESSAGE")));

        // Out of order: the later one first, then the earlier one.
        let (mut p, _, _) = curve_pair();
        p.drive();
        let a = p.server.send(&[b"alice", b"", b"a"]);
        let b = p.server.send(&[b"alice", b"", b"b"]);
        p.client.inbox.extend_from_slice(&b);
        p.client.inbox.extend_from_slice(&a);
        p.drive();
        assert_eq!(p.client.messages.len(), 1);
        assert_eq!(p.client.error, Some(ZmtpError::Nonce("MESSAGE")));

        // Plaintext after the handshake is refused.
        let (mut p, _, _) = curve_pair();
        p.drive();
        Encoder::null().message(&mut p.server.inbox, &[b"1-0-1-clear"]);
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::MalformedCommand("MESSAGE")));
    }

    #[test]
    fn curve_message_in_a_command_frame_is_accepted() {
        // RFC 37 puts MESSAGE in a command frame; libzmq in a data frame.
        let (mut p, _, _) = curve_pair();
        p.drive();
        let mut m = p.client.send(&[b"", b"x"]);
        assert_eq!(m[0], 0x00);
        m[0] = 0x04;
        let mut more = p.client.send(&[b"", b"y"]);
        more[0] = 0x01;
        p.server.inbox.extend_from_slice(&m);
        p.drive();
        assert_eq!(p.server.error, None);
        assert_eq!(p.server.messages.len(), 1);
        p.server.inbox.extend_from_slice(&more);
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::Flags(0x01)), "MORE outside");
    }

    #[test]
    fn curve_limits_count_plaintext_and_bound_reservations() {
        let (ck, sk) = (keys(), keys());
        let mut p = curve_pair_with(&ck, &sk, *sk.public());
        let limits = Limits {
            max_message: 1000,
            max_frames: 3,
            max_command: 400,
        };
        p.server.engine.decoder = FrameDecoder::new(limits);
        p.drive();
        assert!(p.server.engine.is_ready(), "{:?}", p.server.error);
        // 2 + 0 + 9 + 989 = 1000 plaintext octets, as NULL frames them:
        // fits.
        let ok = p.client.send(&[b"", &[1; 989]]);
        p.server.inbox.extend_from_slice(&ok);
        p.drive();
        assert_eq!(p.server.error, None);
        assert_eq!(p.server.messages.len(), 1);
        // One more octet does not, and is refused on the header, before
        // its body is waited for.
        let big = p.client.send(&[b"", &[1; 990]]);
        let header_and_first = 2 + 33 + 9;
        p.server.inbox.extend_from_slice(&big[..header_and_first]);
        p.drive();
        assert!(matches!(
            p.server.error,
            Some(ZmtpError::MessageTooLarge { max: 1000, .. })
        ));
        // A huge MESSAGE header is refused with 9 octets in hand.
        let (mut p, _, _) = curve_pair();
        p.drive();
        p.server.inbox.extend_from_slice(&[0x02]);
        p.server
            .inbox
            .extend_from_slice(&(1u64 << 40).to_be_bytes());
        p.drive();
        assert!(matches!(
            p.server.error,
            Some(ZmtpError::MessageTooLarge { .. })
        ));
        // A MESSAGE too short to hold a box.
        let (mut p, _, _) = curve_pair();
        p.drive();
        p.server.inbox.extend_from_slice(&[0x00, 32]);
        p.server.inbox.extend_from_slice(&[0; 32]);
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::MalformedCommand("MESSAGE")));
    }

    /// Rewrites the first handshake command (after the greeting) that one
    /// side sends.
    fn tamper_command(
        to_server: bool,
        name: &'static [u8],
        f: impl Fn(&mut BytesMut, usize) + 'static,
    ) -> Tamper {
        let mut done = false;
        Box::new(move |dir, b| {
            if dir == to_server
                && !done
                && let Some(at) = find(b, name)
            {
                done = true;
                f(b, at);
            }
        })
    }

    #[test]
    fn curve_tampered_handshakes_are_refused() {
        // The cookie in INITIATE (name at `at`, cookie after it).
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(true, b"\x08INITIATE", |b, at| {
            b[at + 9 + 30] ^= 1
        }));
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::BadBox("cookie")));
        assert!(matches!(p.client.error, Some(ZmtpError::PeerError { .. })));
        // The cookie's nonce.
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(true, b"\x08INITIATE", |b, at| {
            b[at + 9 + 3] ^= 1
        }));
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::BadBox("cookie")));
        // INITIATE's box (the vouch and metadata inside it).
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(true, b"\x08INITIATE", |b, at| {
            b[at + 150] ^= 1
        }));
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::BadBox("INITIATE")));
        // INITIATE's nonce, set back to HELLO's (1).
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(true, b"\x08INITIATE", |b, at| {
            b[at + 9 + 96 + 7] = 1;
        }));
        p.drive();
        assert_eq!(p.server.error, Some(ZmtpError::Nonce("INITIATE")));
        // HELLO's signature, version, padding.
        for (off, want) in [
            (150, ZmtpError::BadBox("HELLO")),
            (6, ZmtpError::CurveVersion),
            (20, ZmtpError::MalformedCommand("HELLO")),
        ] {
            let (mut p, _, _) = curve_pair();
            p.tamper = Some(tamper_command(true, b"\x05HELLO", move |b, at| {
                b[at + off] ^= 1
            }));
            p.drive();
            assert_eq!(p.server.error, Some(want));
        }
        // WELCOME's box: the client closes without a word.
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(false, b"\x07WELCOME", |b, at| {
            b[at + 100] ^= 1
        }));
        p.drive();
        assert_eq!(p.client.error, Some(ZmtpError::BadBox("WELCOME")));
        assert_eq!(p.server.error, None, "no ERROR from a client");
        // READY's box and nonce.
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(false, b"\x05READY", |b, at| b[at + 20] ^= 1));
        p.drive();
        assert_eq!(p.client.error, Some(ZmtpError::BadBox("READY")));
        let (mut p, _, _) = curve_pair();
        p.tamper = Some(tamper_command(false, b"\x05READY", |b, at| b[at + 13] ^= 1));
        p.drive();
        assert_eq!(p.client.error, Some(ZmtpError::BadBox("READY")));
    }

    #[test]
    fn curve_truncated_and_misplaced_commands_are_refused() {
        let now = Instant::now();
        let sk = keys();
        let server_cfg = || {
            let mut c = config(Role::Server, SocketType::Router, b"");
            c.mechanism = MechanismConfig::CurveServer { keys: sk.clone() };
            c
        };
        let ck = keys();
        let client_cfg = || {
            let mut c = config(Role::Client, SocketType::Dealer, b"");
            c.mechanism = MechanismConfig::CurveClient {
                keys: ck.clone(),
                server_key: *sk.public(),
            };
            c
        };
        // A real HELLO from a client engine, cut short by one octet at a
        // time, and each command in the wrong place.
        let mut client = Engine::new(client_cfg(), now);
        let mut srv_greeting = BytesMut::from(&Greeting::encode(MechanismName::CURVE, true)[..]);
        assert_eq!(client.decode(&mut srv_greeting, now), Ok(None));
        let out = client.transmit().split();
        let hello = out.freeze().slice(64 + 2..);
        assert_eq!(hello.len(), 200);
        let greeting = Greeting::encode(MechanismName::CURVE, false);
        let feed = |body: &[u8]| {
            let mut e = Engine::new(server_cfg(), now);
            let mut b = BytesMut::from(&greeting[..]);
            Encoder::null().command(&mut b, body);
            let r = e.decode(&mut b, now);
            (r, e.transmit().split())
        };
        for cut in [0, 1, 6, 8, 80, 119, 199] {
            let (r, out) = feed(&hello[..cut]);
            assert!(r.is_err(), "HELLO cut at {cut}");
            assert!(find(&out, b"\x05ERROR").is_some(), "the server says why");
        }
        let mut long = hello.to_vec();
        long.push(0);
        assert_eq!(feed(&long).0, Err(ZmtpError::MalformedCommand("HELLO")));
        assert_eq!(feed(b"\x05READY").0, Err(ZmtpError::UnexpectedCommand));
        assert_eq!(
            feed(&[b"\x08INITIATE".as_slice(), &[0; 300]].concat()).0,
            Err(ZmtpError::UnexpectedCommand)
        );
        assert_eq!(
            feed(b"\x05ERROR\x03bye").0,
            Err(ZmtpError::PeerError {
                reason: "bye".into()
            })
        );
        assert_eq!(
            feed(b"\x05ERROR\x09").0,
            Err(ZmtpError::MalformedCommand("ERROR"))
        );
        // A client: WELCOME of the wrong size, READY before WELCOME.
        for body in [
            [b"\x07WELCOME".as_slice(), &[0; 159]].concat(),
            [b"\x07WELCOME".as_slice(), &[0; 161]].concat(),
            [b"\x07WELCOME".as_slice(), &[0; 160]].concat(),
            [b"\x05READY".as_slice(), &[0; 30]].concat(),
            b"\x05HELLO".to_vec(),
        ] {
            let mut e = Engine::new(client_cfg(), now);
            let mut b = BytesMut::from(&Greeting::encode(MechanismName::CURVE, true)[..]);
            Encoder::null().command(&mut b, &body);
            assert!(e.decode(&mut b, now).is_err(), "{body:?}");
            assert_eq!(e.transmit().len(), 64 + 202, "greeting and HELLO only");
        }
        // A message frame during the handshake.
        let mut e = Engine::new(server_cfg(), now);
        let mut b = BytesMut::from(&greeting[..]);
        Encoder::null().message(&mut b, &[b"x"]);
        assert_eq!(e.decode(&mut b, now), Err(ZmtpError::MessageBeforeReady));
    }
}
