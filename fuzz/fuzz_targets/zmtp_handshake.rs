//! `zmtp::Engine` from the first byte of a connection: greeting, NULL
//! handshake, the socket layer's decision, traffic, PING/PONG and timers,
//! fed arbitrary bytes as a hostile or broken peer would send them.
//!
//! Input layout, in order:
//!
//! - a byte: bit 0 our role (0: server ROUTER, 1: client DEALER), bit 1
//!   heartbeats on, bits 2-3 what the stream starts with (nothing; a valid
//!   greeting; a greeting and a READY; the same and a message), bits 4-5
//!   the decision on PeerReady (accept at once, refuse at once, later: an
//!   op decides), bit 6 accept a pending decision at the end;
//! - our identity: a length byte (0..=3) and its bytes;
//! - the peer's READY: a socket type byte (RFC 37's 19 and two invalid
//!   names) and an identity (a length byte, 0..=7, and its bytes);
//! - the peer's greeting: a byte (bit 0 minor 1, bit 1 major 4, bit 2 CURVE,
//!   bit 3 as-server, bit 4 zero padding, bit 5 an extra READY property,
//!   bit 6 READY in a long frame);
//! - limits, five bytes (`common::small_limits`);
//! - handshake timeout, heartbeat interval, timeout and TTL, a byte each;
//! - then ops, each a byte and its data: feed 1..=31 raw bytes (or all the
//!   rest), let time pass (timers fire as a driver would run them), decide
//!   (accept or refuse; an accept before PeerReady must do nothing), decode
//!   again with nothing new, feed a well-formed frame (PING, PONG, a
//!   message, ERROR, READY, an unknown command, half a message, a header
//!   over the limits).
//!
//! Checked, beyond "no panic":
//!
//! - what we transmit is our exact greeting, then only valid command frames,
//!   read by a strict peer: at most one READY with our socket type and
//!   identity (a server's only once accepted; before any PING or PONG),
//!   PING and PONG only once in traffic, ERROR exactly when we refuse (or
//!   the socket types cannot talk) before traffic, and nothing after ERROR;
//! - PeerReady comes once, before traffic, with a socket type ours accepts;
//!   messages only in traffic and within the limits; nothing is decoded while
//!   the decision is awaited; `take_encoder` gives the encoder once, and only
//!   in traffic; commands are only queued once someone can send them;
//! - `wants()` is at least 1 and within the limits;
//! - once failed (decode or timer error) or refused, the engine stays
//!   closed: never ready again, decode gives `Closed`, no timers, nothing
//!   more to transmit, `accept` does nothing;
//! - timers: the handshake deadline is `new()` + the timeout and fails an
//!   unfinished handshake exactly then; a heartbeat timeout comes only in
//!   traffic and after some silence; after `handle_timeout(now)` no timer is
//!   due at `now` (a driver would spin); two hours of silence at the end
//!   close any connection that PINGs or is still in its handshake.
#![no_main]

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{
    COMMAND, Cursor, MORE, SOCKET_TYPE_NAMES, frame, greeting, header, ping_body, ready_body,
    small_limits,
};
use libfuzzer_sys::fuzz_target;
use zmtp::{
    Command, Decoded, Encoder, Engine, EngineConfig, Event, FrameDecoder, GREETING_LEN, Greeting,
    Heartbeat, Limits, MechanismConfig, MechanismName, Metadata, Role, SocketType, ZmtpError,
};
use std::time::Instant;

/// Reads our transmitted bytes as a strict peer would.
struct Checker {
    greeting: [u8; GREETING_LEN],
    greeting_seen: usize,
    stream: BytesMut,
    decoder: FrameDecoder,
    socket_type: SocketType,
    identity: Bytes,
    readies: usize,
    errors: usize,
    pings_pongs: usize,
}

impl Checker {
    fn new(socket_type: SocketType, identity: Bytes) -> Self {
        Checker {
            greeting: Greeting::encode(MechanismName::NULL, false),
            greeting_seen: 0,
            stream: BytesMut::new(),
            decoder: FrameDecoder::new(Limits::default()),
            socket_type,
            identity,
            readies: 0,
            errors: 0,
            pings_pongs: 0,
        }
    }

    /// `in_traffic`: the engine has reached traffic (it may have failed
    /// since).
    fn feed(&mut self, mut bytes: &[u8], in_traffic: bool) {
        common::expect_greeting(&self.greeting, &mut self.greeting_seen, &mut bytes);
        self.stream.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.stream) {
                Ok(None) => break,
                Ok(Some(Decoded::Message)) => {
                    panic!("we sent a message: {:?}", self.decoder.frames())
                }
                Ok(Some(Decoded::Command(body))) => {
                    assert_eq!(self.errors, 0, "we sent {body:02x?} after ERROR");
                    let cmd = Command::parse(body.clone())
                        .unwrap_or_else(|e| panic!("we sent a malformed command {body:02x?}: {e}"));
                    match cmd {
                        Command::Ready(data) => {
                            assert_eq!(self.readies, 0, "we sent READY twice");
                            assert_eq!(self.pings_pongs, 0, "we sent PING or PONG before READY");
                            let m = Metadata::parse(&data).unwrap_or_else(|e| {
                                panic!("our READY {body:02x?} has bad metadata: {e}")
                            });
                            assert_eq!(m.socket_type, self.socket_type);
                            assert_eq!(m.identity, self.identity);
                            self.readies += 1;
                        }
                        Command::Error(_) => self.errors += 1,
                        Command::Ping { .. } | Command::Pong => {
                            assert!(in_traffic, "we sent PING or PONG before traffic");
                            assert_eq!(self.readies, 1, "we sent PING or PONG without READY");
                            self.pings_pongs += 1;
                        }
                        Command::Other { .. } => panic!("we sent an unknown command {body:02x?}"),
                    }
                }
                Err(e) => panic!("our output is not valid ZMTP: {e}"),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Accept,
    Refuse,
    Later,
}

struct Run {
    role: Role,
    socket_type: SocketType,
    limits: Limits,
    heartbeat: Option<Heartbeat>,
    engine: Engine,
    encoder: Option<Encoder>,
    checker: Checker,
    inbox: BytesMut,
    now: Instant,
    handshake_deadline: Instant,
    last_rx: Instant,
    decision: Decision,
    deciding: bool,
    peer_ready: Option<(u8, u8)>,
    ever_ready: bool,
    accepted: bool,
    closed: bool,
    /// Pumped once since it closed: nothing more may come.
    flushed_closed: bool,
    errors_expected: usize,
}

impl Run {
    fn bound(&self) -> u64 {
        (GREETING_LEN as u64)
            .max(self.limits.max_command as u64)
            .max(self.limits.max_message)
    }

    /// Writes what the engine has to send to the strict peer.
    fn pump(&mut self) {
        let out = self.engine.transmit().split();
        if self.flushed_closed {
            assert!(out.is_empty(), "closed, yet it transmits {out:02x?}");
        }
        self.checker.feed(&out, self.ever_ready);
        match self.encoder.as_mut() {
            Some(enc) => {
                while let Some(cmd) = self.engine.poll_command() {
                    assert!(!self.flushed_closed, "closed, yet it queues {cmd:02x?}");
                    let mut b = BytesMut::new();
                    enc.command(&mut b, &cmd);
                    self.checker.feed(&b, self.ever_ready);
                }
            }
            None => {
                let cmd = self.engine.poll_command();
                assert!(cmd.is_none(), "{cmd:?} queued before anyone can send it");
            }
        }
        assert!(
            self.checker.errors <= self.errors_expected,
            "an ERROR we did not ask for"
        );
        if self.closed {
            self.flushed_closed = true;
        }
        self.check_state();
    }

    fn check_state(&mut self) {
        if self.closed {
            assert!(!self.engine.is_ready(), "ready after closing");
            assert_eq!(self.engine.poll_timeout(), None, "timers after closing");
            assert!(self.engine.take_encoder().is_none());
            let mut empty = BytesMut::new();
            assert_eq!(
                self.engine.decode(&mut empty, self.now),
                Err(ZmtpError::Closed)
            );
        } else if !self.accepted {
            assert!(!self.engine.is_ready());
            assert_eq!(
                self.engine.poll_timeout(),
                Some(self.handshake_deadline),
                "the handshake deadline moved"
            );
        } else {
            assert!(self.engine.is_ready());
        }
        if !self.closed {
            let w = self.engine.wants(&self.inbox);
            assert!(w >= 1, "wants() is 0");
            assert!(w as u64 <= self.bound(), "wants() {w} is over the limits");
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.deciding = false;
    }

    fn accept(&mut self) {
        assert!(self.deciding && !self.closed);
        self.engine.accept(self.now);
        self.deciding = false;
        self.accepted = true;
        self.ever_ready = true;
        assert!(self.engine.is_ready(), "not ready after accept");
        self.encoder = self.engine.take_encoder();
        assert!(self.encoder.is_some(), "no encoder after accept");
        assert!(self.engine.take_encoder().is_none(), "a second encoder");
    }

    fn refuse(&mut self) {
        assert!(!self.closed);
        if !self.accepted {
            // The handshake still allows an ERROR.
            self.errors_expected += 1;
        }
        let r = self.engine.refuse("fuzz says no");
        assert_eq!(r, ZmtpError::Refused("fuzz says no"));
        self.close();
    }

    /// A decision op: on PeerReady, `accept` decides; otherwise an accept
    /// must do nothing, and a refusal (the driver shuts down) may come any time.
    fn decide(&mut self, accept: bool) {
        if self.closed {
            let before = self.engine.transmit().len();
            self.engine.accept(self.now);
            assert!(!self.engine.is_ready() && self.engine.transmit().len() == before);
        } else if self.deciding {
            if accept {
                self.accept();
                // What was pipelined behind READY.
                self.decode();
            } else {
                self.refuse();
            }
        } else if accept {
            let before = self.engine.transmit().len();
            let ready = self.engine.is_ready();
            self.engine.accept(self.now);
            assert_eq!(self.engine.is_ready(), ready, "accept() before PeerReady");
            assert_eq!(
                self.engine.transmit().len(),
                before,
                "accept() before PeerReady sent"
            );
        } else {
            self.refuse();
        }
        self.pump();
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.inbox.extend_from_slice(bytes);
        if self.closed {
            return;
        }
        self.engine.received(self.now);
        self.last_rx = self.now;
        self.decode();
    }

    fn decode(&mut self) {
        while !self.closed {
            let before = self.inbox.len();
            let r = self.engine.decode(&mut self.inbox, self.now);
            if self.deciding {
                assert_eq!(r, Ok(None), "decoded while the decision is awaited");
                assert_eq!(
                    self.inbox.len(),
                    before,
                    "consumed while the decision is awaited"
                );
            }
            match r {
                Ok(None) => break,
                Ok(Some(Event::PeerReady(info))) => {
                    assert!(self.peer_ready.is_none(), "PeerReady twice");
                    assert!(!self.engine.is_ready(), "PeerReady in traffic");
                    assert!(
                        self.socket_type.accepts(info.socket_type),
                        "{} accepted {}",
                        self.socket_type,
                        info.socket_type
                    );
                    assert!(info.identity.len() <= 255 && info.identity.first() != Some(&0));
                    assert!(info.version.0 >= 3);
                    assert_eq!(info.mechanism, MechanismName::NULL);
                    self.peer_ready = Some(info.version);
                    self.deciding = true;
                    match self.decision {
                        Decision::Accept => self.accept(),
                        Decision::Refuse => self.refuse(),
                        Decision::Later => {}
                    }
                }
                Ok(Some(Event::Message)) => {
                    assert!(self.engine.is_ready(), "a message before traffic");
                    let frames = std::mem::take(self.engine.frames());
                    assert!(!frames.is_empty() && frames.len() <= self.limits.max_frames);
                    let wire: u64 = frames.iter().map(|f| f.len() as u64 + 2).sum();
                    assert!(wire <= self.limits.max_message);
                }
                Err(e) => {
                    match e {
                        ZmtpError::SocketType { .. } => {
                            assert!(!self.accepted);
                            self.errors_expected += 1;
                        }
                        ZmtpError::Closed
                        | ZmtpError::Refused(_)
                        | ZmtpError::HandshakeTimeout
                        | ZmtpError::HeartbeatTimeout => panic!("decode gave {e:?}"),
                        ZmtpError::MessageBeforeReady
                        | ZmtpError::UnexpectedCommand
                        | ZmtpError::Greeting(_)
                        | ZmtpError::MechanismMismatch { .. }
                        | ZmtpError::Metadata(_) => {
                            assert!(!self.accepted, "{e:?} in traffic")
                        }
                        _ => {}
                    }
                    self.close();
                }
            }
        }
        self.pump();
    }

    /// Lets time pass to `to`, running each timer when due.
    fn advance(&mut self, to: Instant) {
        while let Some(t) = self.engine.poll_timeout().filter(|&t| t <= to) {
            assert!(!self.closed);
            self.now = self.now.max(t);
            match self.engine.handle_timeout(self.now) {
                Ok(()) => {
                    if let Some(next) = self.engine.poll_timeout() {
                        assert!(next > self.now, "a timer is still due after handle_timeout");
                    }
                }
                Err(ZmtpError::HandshakeTimeout) => {
                    assert!(!self.accepted, "handshake timeout in traffic");
                    assert!(
                        self.now >= self.handshake_deadline,
                        "handshake timeout too early"
                    );
                    self.close();
                }
                Err(ZmtpError::HeartbeatTimeout) => {
                    assert!(self.accepted, "heartbeat timeout before traffic");
                    assert!(
                        self.now > self.last_rx,
                        "heartbeat timeout right after traffic"
                    );
                    self.close();
                }
                Err(e) => panic!("handle_timeout gave {e:?}"),
            }
            self.pump();
        }
        if !self.closed && !self.accepted && to >= self.handshake_deadline {
            panic!("the handshake deadline passed and nothing happened");
        }
        self.now = self.now.max(to);
        self.pump();
    }
}

fn ms(b: u8, unit: u64) -> Duration {
    Duration::from_millis(u64::from(b) * unit)
}

fn peer_stream_prefix(
    data: &mut Cursor<'_>,
    prefix: u8,
    peer_type: &[u8],
    peer_id: &[u8],
) -> Vec<u8> {
    let g = data.byte();
    let mut s = Vec::new();
    if prefix == 0 {
        return s;
    }
    s.extend(greeting(
        3 + (g >> 1 & 1),
        g & 1,
        if g & 4 != 0 { b"CURVE" } else { b"NULL" },
        g & 8 != 0,
        if g & 16 != 0 { 0 } else { 7 },
    ));
    if prefix >= 2 {
        let mut props: Vec<(&[u8], &[u8])> = vec![(b"Socket-Type", peer_type)];
        if !peer_id.is_empty() {
            props.push((b"Identity", peer_id));
        }
        if g & 32 != 0 {
            props.push((b"X-Extra", b"1"));
        }
        s.extend(frame(COMMAND, g & 64 != 0, &ready_body(&props)));
    }
    if prefix >= 3 {
        s.extend(frame(MORE, false, b""));
        s.extend(frame(0, false, b"1-0-1-hello"));
    }
    s
}

fuzz_target!(|input: &[u8]| {
    let mut data = Cursor(input);
    let b0 = data.byte();
    let (role, socket_type) = if b0 & 1 == 0 {
        (Role::Server, SocketType::Router)
    } else {
        (Role::Client, SocketType::Dealer)
    };
    let prefix = (b0 >> 2) & 3;
    let decision = match (b0 >> 4) & 3 {
        0 => Decision::Accept,
        1 => Decision::Refuse,
        _ => Decision::Later,
    };
    let identity = {
        let n = usize::from(data.byte() % 4);
        Bytes::copy_from_slice(data.take(n))
    };
    // A zero first octet is reserved; ours never has one.
    let identity = if identity.first() == Some(&0) {
        Bytes::from_static(b"z")
    } else {
        identity
    };
    let stream_prefix = {
        let t = data.byte();
        let idn = data.byte();
        let peer_type = SOCKET_TYPE_NAMES[usize::from(t) % SOCKET_TYPE_NAMES.len()];
        let peer_id = data.take(usize::from(idn % 8));
        peer_stream_prefix(&mut data, prefix, peer_type, peer_id)
    };
    let limits = small_limits(&mut data);
    let handshake_timeout = ms(data.byte(), 10) + Duration::from_millis(1);
    let heartbeat = {
        let (i, t, l) = (data.byte(), data.byte(), data.byte());
        (b0 & 2 != 0).then(|| Heartbeat {
            interval: ms(i, 10) + Duration::from_millis(10),
            timeout: ms(t, 10) + Duration::from_millis(10),
            ttl: ms(l, 100),
        })
    };

    let start = Instant::now();
    let engine = Engine::new(
        EngineConfig {
            role,
            socket_type,
            identity: identity.clone(),
            properties: Vec::new(),
            limits,
            handshake_timeout,
            heartbeat,
            pace: None,
            mechanism: MechanismConfig::Null,
        },
        start,
    );
    assert_eq!(engine.role(), role);
    let mut run = Run {
        role,
        socket_type,
        limits,
        heartbeat,
        engine,
        encoder: None,
        checker: Checker::new(socket_type, identity),
        inbox: BytesMut::new(),
        now: start,
        handshake_deadline: start + handshake_timeout,
        last_rx: start,
        decision,
        deciding: false,
        peer_ready: None,
        ever_ready: false,
        accepted: false,
        closed: false,
        flushed_closed: false,
        errors_expected: 0,
    };
    run.check_state();
    run.pump();
    assert_eq!(
        run.checker.greeting_seen, GREETING_LEN,
        "no greeting at once"
    );
    if !stream_prefix.is_empty() {
        run.feed(&stream_prefix);
    }

    let mut ops = 0;
    while !data.is_empty() && ops < 512 {
        ops += 1;
        let op = data.byte();
        match op & 7 {
            0..=3 => {
                let n = usize::from(op >> 3);
                let bytes = if n == 31 {
                    data.rest()
                } else {
                    data.take(n + 1)
                };
                run.feed(bytes);
            }
            4 => {
                let to = run.now + ms(data.byte(), 1 + u64::from(op >> 3));
                run.advance(to);
            }
            5 => run.decide(op & 8 == 0 || op & 16 == 0),
            6 => {
                // Decode again without new bytes: must change nothing.
                if !run.closed && !run.deciding {
                    let before = run.inbox.len();
                    run.decode();
                    if !run.closed {
                        assert_eq!(run.inbox.len(), before, "a second decode consumed bytes");
                    }
                }
            }
            _ => {
                let b = data.byte();
                let f: Vec<u8> = match op >> 3 {
                    0 | 1 => {
                        let ttl = u16::from(b) * if op & 8 != 0 { 1 } else { 257 };
                        let n = usize::from(data.byte() % 18);
                        let ctx = data.take(n);
                        frame(COMMAND, false, &ping_body(ttl, ctx))
                    }
                    2 => {
                        let mut body = b"\x04PONG".to_vec();
                        body.extend_from_slice(data.take(usize::from(b % 18)));
                        frame(COMMAND, false, &body)
                    }
                    3 | 4 => {
                        let mut m = Vec::new();
                        let n = 1 + usize::from(b % 4);
                        for i in 0..n {
                            let len = usize::from(data.byte() % 16);
                            let body = data.take(len);
                            m.extend(frame(if i + 1 < n { MORE } else { 0 }, false, body));
                        }
                        m
                    }
                    5 => {
                        let reason = data.take(usize::from(b % 8));
                        let mut body = b"\x05ERROR".to_vec();
                        body.push(reason.len() as u8);
                        body.extend_from_slice(reason);
                        frame(COMMAND, false, &body)
                    }
                    6 => {
                        let t = SOCKET_TYPE_NAMES[usize::from(b) % SOCKET_TYPE_NAMES.len()];
                        frame(COMMAND, false, &ready_body(&[(b"Socket-Type", t)]))
                    }
                    7 => frame(COMMAND, false, b"\x09SUBSCRIBEtopic"),
                    8 => frame(MORE, b & 1 != 0, data.take(usize::from(b % 8))),
                    _ => {
                        let over = if b & 1 != 0 {
                            limits.max_message.saturating_add(1)
                        } else {
                            (limits.max_command as u64).saturating_add(1)
                        };
                        header(if b & 1 != 0 { 0 } else { COMMAND }, b & 2 != 0, over)
                    }
                };
                run.feed(&f);
            }
        }
    }

    // Two hours of silence: every timer that can fire does.
    if run.deciding && b0 & 64 != 0 {
        run.decide(true);
    }
    let to = run.now + Duration::from_secs(7200);
    run.advance(to);
    if !run.closed {
        assert!(
            run.accepted,
            "alive and still in its handshake after two hours"
        );
        let pings = run.heartbeat.is_some()
            && run
                .peer_ready
                .is_some_and(|(major, minor)| major > 3 || minor >= 1);
        assert!(
            !pings,
            "two hours without an answer to its PINGs, and alive"
        );
        assert_eq!(run.engine.poll_timeout(), None);
    }
    assert_eq!(
        run.checker.errors, run.errors_expected,
        "ERROR sent {} times",
        run.checker.errors
    );
    match run.role {
        Role::Server => assert_eq!(run.checker.readies, usize::from(run.accepted), "our READY"),
        Role::Client => {
            if run.ever_ready {
                assert_eq!(run.checker.readies, 1);
            }
        }
    }
});
