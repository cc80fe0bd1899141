//! A CURVE engine (server or client) from its first byte, against an
//! honest CURVE peer whose bytes the input may pass on, cut, corrupt or
//! replay, and interleave with arbitrary bytes of its own.
//!
//! Input layout, in order:
//!
//! - a byte: bit 0 the engine under test is the CURVE server (ROUTER; the
//!   honest peer a CURVE client DEALER) or the client (DEALER, against an
//!   honest CURVE server ROUTER), bit 1 it refuses on PeerReady, bit 2 its
//!   heartbeats are on, bit 3 its limits are small (`common::small_limits`,
//!   five more bytes), bit 4 the honest peer's greeting is passed on first;
//! - then ops, each a byte and its data: feed 1..=32 arbitrary bytes; pass
//!   on all the honest peer has sent; pass it on with one byte flipped; pass
//!   on only its first bytes; replay the last chunk passed on; let time pass;
//!   have the honest peer send a message or a PING (once it can).
//!
//! Checked, beyond "no panic":
//!
//! - no forgery: a PeerReady names the honest peer's permanent key, socket
//!   type and identity, and every message decoded is one the honest peer
//!   sent, in order, each at most once;
//! - what the engine sends: our greeting (CURVE, as-server 1 for the
//!   server), then only the handshake commands of its role with their
//!   exact sizes (HELLO 200, WELCOME 168, INITIATE 257+, READY 30+), ERROR
//!   only from the server and only plaintext, and after the handshake only
//!   MESSAGEs (never a plaintext PING, PONG or message);
//! - `wants()` is at least 1 and within the limits (a MESSAGE's 33 octets
//!   over); once failed the engine stays closed and silent.
#![no_main]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Cursor, Honest, small_limits};
use libfuzzer_sys::fuzz_target;
use zmtp::{
    Command, CurveKeyPair, CurveSecretKey, Decoded, Encoder, Engine, EngineConfig, Event,
    FrameDecoder, GREETING_LEN, Greeting, Heartbeat, Limits, MechanismConfig, MechanismName, Role,
    SocketType, ZmtpError,
};
use std::time::Instant;

/// libzmq's documented test keys (doc/zmq_curve.adoc): fixed, so a run is
/// reproducible as far as the engines' own random numbers allow.
struct Keys {
    client: CurveKeyPair,
    server: CurveKeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pair = |z85| {
            CurveKeyPair::from_secret(CurveSecretKey::from_z85(z85).expect("libzmq's test key"))
        };
        Keys {
            client: pair("D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"),
            server: pair("JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"),
        }
    })
}

/// Reads the engine's output as a strict peer would.
struct Checker {
    server: bool,
    greeting: [u8; GREETING_LEN],
    greeting_seen: usize,
    stream: BytesMut,
    decoder: FrameDecoder,
    commands: Vec<Vec<u8>>,
    errors: usize,
}

impl Checker {
    fn feed(&mut self, mut bytes: &[u8], ready: bool) {
        common::expect_greeting(&self.greeting, &mut self.greeting_seen, &mut bytes);
        self.stream.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.stream) {
                Ok(None) => break,
                Ok(Some(Decoded::Message)) => {
                    assert!(ready, "a message frame before our handshake was done");
                    assert_eq!(self.errors, 0, "traffic after ERROR");
                    let frames = self.decoder.frames();
                    assert_eq!(frames.len(), 1, "MESSAGE with MORE outside");
                    let m = &frames[0];
                    assert!(m.len() >= 33 && m.starts_with(b"\x07MESSAGE"), "{m:02x?}");
                }
                Ok(Some(Decoded::Command(body))) => {
                    assert_eq!(self.errors, 0, "{body:02x?} after ERROR");
                    let name_len = usize::from(body[0]);
                    let name = body[1..1 + name_len].to_vec();
                    match (&name[..], self.server) {
                        (b"HELLO", false) => assert_eq!(body.len(), 200),
                        (b"INITIATE", false) => assert!(body.len() >= 257),
                        (b"WELCOME", true) => assert_eq!(body.len(), 168),
                        (b"READY", true) => assert!(body.len() >= 30),
                        (b"ERROR", true) => {
                            assert!(matches!(
                                Command::parse(body.clone()),
                                Ok(Command::Error(_))
                            ));
                            self.errors += 1;
                        }
                        _ => panic!("we sent {body:02x?} in clear"),
                    }
                    assert!(!self.commands.contains(&name), "we sent {name:?} twice");
                    self.commands.push(name);
                }
                Err(e) => panic!("our output is not valid ZMTP: {e}"),
            }
        }
    }
}

fn ms(b: u8, unit: u64) -> Duration {
    Duration::from_millis(u64::from(b) * unit)
}

fuzz_target!(|input: &[u8]| {
    let mut data = Cursor(input);
    let b0 = data.byte();
    let server = b0 & 1 != 0;
    let refuse = b0 & 2 != 0;
    let limits = if b0 & 8 != 0 {
        small_limits(&mut data)
    } else {
        Limits::default()
    };
    let k = keys();
    let (ours, theirs) = if server {
        (
            MechanismConfig::CurveServer {
                keys: k.server.clone(),
            },
            MechanismConfig::CurveClient {
                keys: k.client.clone(),
                server_key: *k.server.public(),
            },
        )
    } else {
        (
            MechanismConfig::CurveClient {
                keys: k.client.clone(),
                server_key: *k.server.public(),
            },
            MechanismConfig::CurveServer {
                keys: k.server.clone(),
            },
        )
    };
    let (our_type, their_type) = if server {
        (SocketType::Router, SocketType::Dealer)
    } else {
        (SocketType::Dealer, SocketType::Router)
    };
    let their_key = if server {
        *k.client.public()
    } else {
        *k.server.public()
    };
    let mut now = Instant::now();
    let handshake_timeout = Duration::from_secs(5);
    let mut engine = Engine::new(
        EngineConfig {
            role: if server { Role::Server } else { Role::Client },
            socket_type: our_type,
            identity: Bytes::from_static(b"us"),
            properties: Vec::new(),
            limits,
            handshake_timeout,
            heartbeat: (b0 & 4 != 0).then_some(Heartbeat {
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(300),
                ttl: Duration::from_secs(1),
            }),
            pace: None,
            mechanism: ours,
        },
        now,
    );
    // The honest peer: accepts, sends what it is told. `pending`: what it
    // sent, not yet passed on; `sent`: the messages it sent, in order.
    let (mut pending, mut sent) = (BytesMut::new(), Vec::<Vec<Bytes>>::new());
    let mut honest = Honest::new(Engine::new(
        EngineConfig {
            role: if server { Role::Client } else { Role::Server },
            socket_type: their_type,
            identity: Bytes::from_static(b"them"),
            properties: Vec::new(),
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(3600),
            heartbeat: None,
            pace: None,
            mechanism: theirs,
        },
        now,
    ));
    let mut checker = Checker {
        server,
        greeting: Greeting::encode(MechanismName::CURVE, server),
        greeting_seen: 0,
        stream: BytesMut::new(),
        decoder: FrameDecoder::new(Limits::default()),
        commands: Vec::new(),
        errors: 0,
    };
    let bound = (GREETING_LEN as u64)
        .max(limits.max_command as u64)
        .max(limits.max_message)
        .saturating_add(33 + 9);

    let mut inbox = BytesMut::new();
    let mut closed = false;
    let mut flushed_closed = false;
    let mut encoder: Option<Encoder> = None;
    let mut deciding = false;
    let mut ready = false;
    let mut received = 0usize;
    let mut last_chunk = Bytes::new();

    // The honest peer's greeting (and a client's HELLO) are pending.
    pending.extend_from_slice(&honest.step(now));
    if b0 & 16 != 0 {
        let g = pending.split_to(GREETING_LEN.min(pending.len()));
        inbox.extend_from_slice(&g);
    }

    let mut ops = 0;
    loop {
        // Decode what the engine has, then let the honest peer answer.
        if !closed {
            if !inbox.is_empty() {
                engine.received(now);
            }
            loop {
                match engine.decode(&mut inbox, now) {
                    Ok(None) => break,
                    Ok(Some(Event::PeerReady(info))) => {
                        assert!(!deciding && !ready, "PeerReady twice");
                        assert_eq!(info.curve_public_key, Some(their_key), "forged key");
                        assert_eq!(info.socket_type, their_type);
                        assert_eq!(&info.identity[..], b"them");
                        assert_eq!(info.mechanism, MechanismName::CURVE);
                        deciding = true;
                        if refuse {
                            assert_eq!(engine.refuse("no"), ZmtpError::Refused("no"));
                            closed = true;
                            break;
                        }
                        engine.accept(now);
                        deciding = false;
                        ready = engine.is_ready();
                        encoder = engine.take_encoder();
                        assert!(encoder.is_some(), "no encoder after accept");
                    }
                    Ok(Some(Event::Message)) => {
                        assert!(ready, "a message before the handshake");
                        let frames = std::mem::take(engine.frames());
                        // In order, at most once, and only what was sent.
                        let at = sent[received..]
                            .iter()
                            .position(|m| *m == frames)
                            .unwrap_or_else(|| panic!("forged message {frames:?}"));
                        received += at + 1;
                    }
                    Err(e) => {
                        assert_ne!(e, ZmtpError::Closed, "closed before it failed");
                        closed = true;
                        break;
                    }
                }
            }
        }
        let mut out = engine.transmit().split();
        if let Some(enc) = encoder.as_mut() {
            while let Some(cmd) = engine.poll_command() {
                assert!(!flushed_closed, "closed, yet it queues {cmd:02x?}");
                enc.command(&mut out, &cmd);
            }
        } else {
            assert!(engine.poll_command().is_none(), "a command with no encoder");
        }
        if flushed_closed {
            assert!(out.is_empty(), "closed, yet it sends {out:02x?}");
        }
        checker.feed(&out, ready);
        honest.inbox.extend_from_slice(&out);
        pending.extend_from_slice(&honest.step(now));
        if closed {
            flushed_closed = true;
            assert!(!engine.is_ready());
            assert_eq!(engine.poll_timeout(), None, "timers after closing");
            assert!(engine.take_encoder().is_none());
            assert_eq!(
                engine.decode(&mut BytesMut::new(), now),
                Err(ZmtpError::Closed)
            );
        } else {
            let w = engine.wants(&inbox);
            assert!(w >= 1 && w as u64 <= bound, "wants() {w} (bound {bound})");
        }

        if data.is_empty() || ops >= 256 {
            break;
        }
        ops += 1;
        let op = data.byte();
        match op & 7 {
            0 | 1 => {
                let n = usize::from(op >> 3) + 1;
                inbox.extend_from_slice(data.take(n));
            }
            2 => {
                last_chunk = pending.split().freeze();
                inbox.extend_from_slice(&last_chunk);
            }
            3 => {
                let mut chunk = pending.split();
                if !chunk.is_empty() {
                    let at = usize::from(data.u16()) % chunk.len();
                    chunk[at] ^= data.byte() | 1;
                }
                last_chunk = chunk.freeze();
                inbox.extend_from_slice(&last_chunk);
            }
            4 => {
                let n = usize::from(data.u16()) % (pending.len() + 1);
                last_chunk = pending.split_to(n).freeze();
                inbox.extend_from_slice(&last_chunk);
            }
            5 => inbox.extend_from_slice(&last_chunk),
            6 => {
                now += ms(data.byte(), 1 + u64::from(op >> 3) * 10);
                if !closed && let Err(err) = engine.handle_timeout(now) {
                    assert!(matches!(
                        err,
                        ZmtpError::HandshakeTimeout | ZmtpError::HeartbeatTimeout
                    ));
                    closed = true;
                }
                if !closed && let Some(t) = engine.poll_timeout() {
                    assert!(t > now, "a timer due at once would spin");
                }
                if honest.error.is_none()
                    && let Err(e) = honest.engine.handle_timeout(now)
                {
                    honest.error = Some(e);
                }
                pending.extend_from_slice(&honest.step(now));
            }
            _ => {
                if let Some(enc) = honest.encoder.as_mut() {
                    if op & 8 != 0 {
                        enc.command(&mut pending, b"\x04PING\x00\x00ctx");
                    } else {
                        let n = usize::from(data.byte() % 4) + 1;
                        let frames: Vec<Bytes> = (0..n)
                            .map(|i| {
                                let len = usize::from(data.byte() % 40);
                                Bytes::from(vec![i as u8; len])
                            })
                            .collect();
                        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                        enc.message(&mut pending, &refs);
                        sent.push(frames);
                    }
                }
            }
        }
    }
});
