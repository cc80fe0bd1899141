//! Two `zmtp::Engine`s talking, a client DEALER and a server ROUTER, as
//! the engine's unit tests pair them; the fuzzer is the network and the
//! application: how many bytes each pipe delivers and when, what messages
//! each side sends (short and long frames, through `message` or
//! `message_with`), PINGs with TTLs and contexts, late decisions, and time
//! passing with heartbeats on either side.
//!
//! Input layout: byte 0 options (bit 0 client heartbeats, bit 1 server
//! heartbeats, bit 2 the client decides late, bit 3 the server decides late,
//! bit 4 hand-shake at once), bytes 1-6 heartbeat settings (interval,
//! timeout, TTL for each side), byte 7 the handshake timeout, byte 8 the
//! identities; then ops: deliver 1..=31 bytes or all of one pipe, send a
//! message from one side, inject a PING, accept a pending decision, let
//! time pass, deliver everything.
//!
//! Checked:
//!
//! - no decode error ever (neither side does anything wrong), and the only
//!   timer errors are justified: a handshake timeout before traffic and at
//!   or after the deadline, a heartbeat timeout after at least the
//!   heartbeat timeout or the shortest TTL the peer asked for of silence;
//! - messages arrive intact and in order (at every moment what a side has
//!   received is a prefix of what the other sent); both sides see the
//!   other's socket type and identity;
//! - the bytes on each pipe are valid ZMTP (read by a third decoder), carry
//!   exactly the messages sent, and every PONG echoes a PING of the other
//!   side, in order;
//! - at the end, if neither side failed, everything is delivered: both are
//!   ready, every message sent has arrived, every PING is answered.
#![no_main]

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{Cursor, ping_body};
use libfuzzer_sys::fuzz_target;
use zmtp::{
    Command, Decoded, Encoder, Engine, EngineConfig, Event, FrameDecoder, GREETING_LEN, Heartbeat,
    Limits, MechanismConfig, Role, SocketType, ZmtpError,
};
use std::time::Instant;

/// Reads one pipe as a third party.
#[derive(Default)]
struct Tap {
    greeting: usize,
    stream: BytesMut,
    decoder: Option<FrameDecoder>,
    messages: Vec<Vec<Bytes>>,
    pings: Vec<Bytes>,
    pongs: Vec<Bytes>,
}

impl Tap {
    fn feed(&mut self, mut bytes: &[u8]) {
        if self.greeting < GREETING_LEN {
            let n = bytes.len().min(GREETING_LEN - self.greeting);
            self.greeting += n;
            bytes = &bytes[n..];
        }
        self.stream.extend_from_slice(bytes);
        let decoder = self
            .decoder
            .get_or_insert_with(|| FrameDecoder::new(Limits::default()));
        loop {
            match decoder.decode(&mut self.stream) {
                Ok(None) => break,
                Ok(Some(Decoded::Message)) => self.messages.push(std::mem::take(decoder.frames())),
                Ok(Some(Decoded::Command(body))) => {
                    match Command::parse(body.clone()).expect("a malformed command on the wire") {
                        Command::Ping { context, .. } => self.pings.push(context),
                        Command::Pong => self.pongs.push(body.slice(5..)),
                        Command::Ready(_) => {}
                        other => panic!("unexpected command on the wire: {other:?}"),
                    }
                }
                Err(e) => panic!("invalid ZMTP on the wire: {e}"),
            }
        }
    }
}

struct Side {
    name: &'static str,
    engine: Engine,
    encoder: Option<Encoder>,
    inbox: BytesMut,
    closed: bool,
    received: Vec<Vec<Bytes>>,
    decide_late: bool,
    deciding: bool,
    accepted: bool,
    last_rx: Instant,
    heartbeat: Option<Heartbeat>,
    handshake_deadline: Instant,
    /// What the other side is and calls itself.
    peer_type: SocketType,
    peer_identity: Bytes,
}

impl Side {
    /// Its encoder, once its handshake is done and while it is open.
    fn open_encoder(&mut self) -> Option<&mut Encoder> {
        if self.closed {
            return None;
        }
        self.encoder.as_mut()
    }
}

struct World {
    now: Instant,
    sides: [Side; 2],
    /// `pipes[i]`: bytes from side i, not yet delivered.
    pipes: [BytesMut; 2],
    taps: [Tap; 2],
    sent: [Vec<Vec<Bytes>>; 2],
    /// The shortest TTL side i's PINGs asked for.
    min_ttl: [Option<Duration>; 2],
    serial: u32,
}

impl World {
    fn emit(&mut self, i: usize, bytes: &[u8]) {
        self.pipes[i].extend_from_slice(bytes);
        self.taps[i].feed(bytes);
    }

    /// Writes what side i has to send onto its pipe.
    fn pump(&mut self, i: usize) {
        let out = self.sides[i].engine.transmit().split();
        self.emit(i, &out);
        let mut b = BytesMut::new();
        let side = &mut self.sides[i];
        if let Some(enc) = side.encoder.as_mut() {
            while let Some(cmd) = side.engine.poll_command() {
                if let Ok(Command::Ping { ttl, .. }) = Command::parse(cmd.clone())
                    && ttl > 0
                {
                    let ttl = Duration::from_millis(u64::from(ttl) * 100);
                    self.min_ttl[i] = Some(self.min_ttl[i].map_or(ttl, |t| t.min(ttl)));
                }
                enc.command(&mut b, &cmd);
            }
        }
        self.emit(i, &b);
    }

    fn accept(&mut self, j: usize) {
        let now = self.now;
        let side = &mut self.sides[j];
        assert!(side.deciding && !side.closed);
        side.engine.accept(now);
        side.deciding = false;
        side.accepted = true;
        assert!(
            side.engine.is_ready(),
            "{}: not ready after accept",
            side.name
        );
        side.encoder = side.engine.take_encoder();
        assert!(side.encoder.is_some());
    }

    fn decode(&mut self, j: usize) {
        let now = self.now;
        loop {
            let side = &mut self.sides[j];
            if side.closed {
                break;
            }
            match side.engine.decode(&mut side.inbox, now) {
                Ok(None) => break,
                Ok(Some(Event::PeerReady(info))) => {
                    assert_eq!(info.socket_type, side.peer_type, "{}", side.name);
                    assert_eq!(info.identity, side.peer_identity, "{}", side.name);
                    assert_eq!(info.version, (3, 1));
                    side.deciding = true;
                    if !side.decide_late {
                        self.accept(j);
                    }
                }
                Ok(Some(Event::Message)) => {
                    let frames = std::mem::take(side.engine.frames());
                    let k = side.received.len();
                    let name = side.name;
                    assert!(
                        self.sent[1 - j].get(k) == Some(&frames),
                        "{name} got message {k}: {frames:02x?}, but it was sent as {:02x?}",
                        self.sent[1 - j].get(k)
                    );
                    self.sides[j].received.push(frames);
                }
                Err(e) => panic!("{}: decode error {e}", side.name),
            }
        }
        self.pump(j);
    }

    /// Delivers up to `n` bytes of side i's pipe to the other side.
    fn deliver(&mut self, i: usize, n: usize) {
        let j = 1 - i;
        let n = n.min(self.pipes[i].len());
        if n == 0 {
            return;
        }
        let bytes = self.pipes[i].split_to(n);
        let now = self.now;
        let side = &mut self.sides[j];
        if side.closed {
            return;
        }
        side.inbox.extend_from_slice(&bytes);
        side.engine.received(now);
        side.last_rx = now;
        self.decode(j);
    }

    /// Lets time pass to `to`, running each side's timers when due.
    fn advance(&mut self, to: Instant) {
        loop {
            let next = self
                .sides
                .iter()
                .filter(|s| !s.closed)
                .filter_map(|s| s.engine.poll_timeout())
                .filter(|&t| t <= to)
                .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            let now = self.now;
            for j in 0..2 {
                let other_ttl = self.min_ttl[1 - j];
                let side = &mut self.sides[j];
                if side.closed || side.engine.poll_timeout().is_none_or(|t| t > now) {
                    continue;
                }
                match side.engine.handle_timeout(now) {
                    Ok(()) => {
                        if let Some(t) = side.engine.poll_timeout() {
                            assert!(t > now, "{}: a timer is still due", side.name);
                        }
                    }
                    Err(ZmtpError::HandshakeTimeout) => {
                        assert!(
                            !side.accepted,
                            "{}: handshake timeout in traffic",
                            side.name
                        );
                        assert!(now >= side.handshake_deadline);
                        side.closed = true;
                        side.deciding = false;
                    }
                    Err(ZmtpError::HeartbeatTimeout) => {
                        assert!(
                            side.accepted,
                            "{}: heartbeat timeout before traffic",
                            side.name
                        );
                        let allowed = [side.heartbeat.map(|h| h.timeout), other_ttl]
                            .into_iter()
                            .flatten()
                            .min()
                            .unwrap_or_else(|| {
                                panic!("{}: heartbeat timeout without heartbeats", side.name)
                            });
                        assert!(
                            now >= side.last_rx + allowed,
                            "{}: heartbeat timeout after {:?} of silence (allowed {allowed:?})",
                            side.name,
                            now - side.last_rx
                        );
                        side.closed = true;
                        side.deciding = false;
                    }
                    Err(e) => panic!("{}: handle_timeout gave {e}", side.name),
                }
                self.pump(j);
            }
        }
        self.now = self.now.max(to);
    }

    fn send(&mut self, i: usize, data: &mut Cursor<'_>, op: u8) {
        let n = 1 + usize::from(data.byte() % 4);
        self.serial += 1;
        let serial = self.serial;
        let mut frames = Vec::new();
        for f in 0..n {
            let b = data.byte();
            let len = if b & 0x80 != 0 {
                usize::from(b & 0x7F) * 37
            } else {
                usize::from(b)
            };
            let seed = (serial as u8).wrapping_mul(31).wrapping_add(f as u8);
            frames.push(Bytes::from_iter(
                (0..len).map(|k| seed.wrapping_add(k as u8)),
            ));
        }
        let Some(enc) = self.sides[i].open_encoder() else {
            return;
        };
        let mut b = BytesMut::new();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        if op & 8 != 0 {
            let (last, head) = refs.split_last().unwrap();
            enc.message_with(&mut b, head, last.len(), |buf| buf.put_slice(last));
        } else {
            enc.message(&mut b, &refs);
        }
        self.sent[i].push(frames);
        self.emit(i, &b);
    }

    fn ping(&mut self, i: usize, data: &mut Cursor<'_>) {
        let ttl = u16::from(data.byte() % 32);
        let n = usize::from(data.byte() % 17);
        let ctx = data.take(n).to_vec();
        let Some(enc) = self.sides[i].open_encoder() else {
            return;
        };
        let mut b = BytesMut::new();
        enc.command(&mut b, &ping_body(ttl, &ctx));
        if ttl > 0 {
            let ttl = Duration::from_millis(u64::from(ttl) * 100);
            self.min_ttl[i] = Some(self.min_ttl[i].map_or(ttl, |t| t.min(ttl)));
        }
        self.emit(i, &b);
    }

    fn flush(&mut self) {
        for _ in 0..64 {
            if self.pipes.iter().all(|p| p.is_empty()) {
                return;
            }
            self.deliver(0, usize::MAX);
            self.deliver(1, usize::MAX);
        }
        panic!("the pair never went quiet");
    }
}

fn heartbeat(on: bool, a: u8, b: u8, c: u8) -> Option<Heartbeat> {
    on.then(|| Heartbeat {
        interval: Duration::from_millis(10 + u64::from(a) * 10),
        timeout: Duration::from_millis(10 + u64::from(b) * 10),
        ttl: Duration::from_millis(u64::from(c % 16) * 100),
    })
}

fuzz_target!(|input: &[u8]| {
    let mut data = Cursor(input);
    let opts = data.byte();
    let hb_client = heartbeat(opts & 1 != 0, data.byte(), data.byte(), data.byte());
    let hb_server = heartbeat(opts & 2 != 0, data.byte(), data.byte(), data.byte());
    let handshake_timeout = Duration::from_millis(50 + u64::from(data.byte()) * 20);
    let ids = data.byte();
    let client_id = Bytes::from(&b"alice"[..usize::from(ids & 7).min(5)]);
    let server_id = Bytes::from(&b"srv"[..usize::from(ids >> 3 & 3)]);

    let now = Instant::now();
    let config = |role, socket_type, identity: &Bytes, heartbeat| EngineConfig {
        role,
        socket_type,
        identity: identity.clone(),
        properties: Vec::new(),
        limits: Limits::default(),
        handshake_timeout,
        heartbeat,
        pace: None,
        mechanism: MechanismConfig::Null,
    };
    let side = |name, config: EngineConfig, late: bool, peer_type, peer_identity: &Bytes| Side {
        name,
        heartbeat: config.heartbeat,
        engine: Engine::new(config, now),
        encoder: None,
        inbox: BytesMut::new(),
        closed: false,
        received: Vec::new(),
        decide_late: late,
        deciding: false,
        accepted: false,
        last_rx: now,
        handshake_deadline: now + handshake_timeout,
        peer_type,
        peer_identity: peer_identity.clone(),
    };
    let mut w = World {
        now,
        sides: [
            side(
                "client",
                config(Role::Client, SocketType::Dealer, &client_id, hb_client),
                opts & 4 != 0,
                SocketType::Router,
                &server_id,
            ),
            side(
                "server",
                config(Role::Server, SocketType::Router, &server_id, hb_server),
                opts & 8 != 0,
                SocketType::Dealer,
                &client_id,
            ),
        ],
        pipes: [BytesMut::new(), BytesMut::new()],
        taps: [Tap::default(), Tap::default()],
        sent: [Vec::new(), Vec::new()],
        min_ttl: [None, None],
        serial: 0,
    };
    w.pump(0);
    w.pump(1);
    if opts & 16 != 0 {
        w.flush();
        for j in 0..2 {
            if w.sides[j].deciding {
                w.accept(j);
                w.decode(j);
            }
        }
        w.flush();
    }

    let mut ops = 0;
    while !data.is_empty() && ops < 256 {
        ops += 1;
        let op = data.byte();
        let arg = usize::from(op >> 3);
        match op & 7 {
            0 | 1 => {
                let n = if arg == 31 { usize::MAX } else { arg + 1 };
                w.deliver(usize::from(op & 1), n);
            }
            2 | 3 => w.send(usize::from(op & 1), &mut data, op),
            4 => {
                let to = w.now + Duration::from_millis(u64::from(data.byte()) * (1 + arg as u64));
                w.advance(to);
            }
            5 => w.ping(arg & 1, &mut data),
            6 => {
                let j = arg & 1;
                if w.sides[j].deciding {
                    w.accept(j);
                    w.decode(j);
                }
            }
            _ => w.flush(),
        }
    }

    // Every PONG answers a PING of the other side, in order; each pipe
    // carries exactly the messages sent on it.
    for i in 0..2 {
        let (pongs, pings) = (&w.taps[i].pongs, &w.taps[1 - i].pings);
        assert!(
            pongs.len() <= pings.len() && pongs[..] == pings[..pongs.len()],
            "{} PONGs {pongs:02x?} for PINGs {pings:02x?}",
            w.sides[i].name
        );
        assert_eq!(w.taps[i].messages, w.sent[i], "{} wrote", w.sides[i].name);
    }

    if w.sides.iter().any(|s| s.closed) {
        return;
    }
    // Both alive: with time standing still, and both sides accepting at
    // once from now on, everything gets through.
    for j in 0..2 {
        w.sides[j].decide_late = false;
        if w.sides[j].deciding {
            w.accept(j);
            w.decode(j);
        }
    }
    w.flush();
    for i in 0..2 {
        let s = &w.sides[i];
        assert!(
            s.engine.is_ready(),
            "{} is not ready after all was delivered",
            s.name
        );
        assert_eq!(
            w.sides[1 - i].received.len(),
            w.sent[i].len(),
            "messages from {} lost",
            s.name
        );
        assert_eq!(w.taps[i].pongs, w.taps[1 - i].pings, "{}'s PONGs", s.name);
    }
});
