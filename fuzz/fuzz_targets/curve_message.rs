//! A handshaken CURVE pair: the receiving engine is fed the sender's
//! MESSAGEs as the input passes them on, whole, cut, corrupted, replayed,
//! reordered, reframed, or mixed with arbitrary bytes.
//!
//! Input layout, in order:
//!
//! - a byte: bit 0 the server receives (else the client), bit 1 the
//!   receiver's limits are small (`common::small_limits`, five more bytes;
//!   commands may stay 512 octets so INITIATE fits);
//! - then ops, each a byte and its data: the sender sends a message (1..=4
//!   frames of 0..=300 octets) or a PING; the next chunk is passed on
//!   whole, cut in two, with one byte flipped, twice (replay), after the
//!   one behind it (reorder), or with its first frame's flags octet
//!   replaced; arbitrary bytes are fed.
//!
//! Checked, beyond "no panic":
//!
//! - every message the receiver yields is one the sender sent, in order,
//!   each at most once (a replay, reorder or flipped bit never gets
//!   through as data: it fails the connection);
//! - while every chunk has been passed on whole and in order, the receiver
//!   yields exactly the messages sent, and never fails unless a limit says
//!   so;
//! - the receiver's answers (PONGs) always decode at the sender;
//! - once failed, the receiver stays closed.
#![no_main]

mod common;

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Cursor, Honest, small_limits};
use libfuzzer_sys::fuzz_target;
use zmtp::{
    CurveKeyPair, CurveSecretKey, Engine, EngineConfig, Limits, MechanismConfig, Role, SocketType,
    ZmtpError,
};
use std::time::Instant;

fn keys() -> &'static (CurveKeyPair, CurveKeyPair) {
    static KEYS: OnceLock<(CurveKeyPair, CurveKeyPair)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pair = |z85| {
            CurveKeyPair::from_secret(CurveSecretKey::from_z85(z85).expect("libzmq's test key"))
        };
        (
            pair("D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"),
            pair("JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"),
        )
    })
}

fn side(config: EngineConfig, now: Instant) -> Honest {
    Honest::new(Engine::new(config, now))
}

/// A chunk the sender produced: a message (its index in `sent`) or a PING.
struct Chunk {
    bytes: BytesMut,
    message: Option<usize>,
}

fuzz_target!(|input: &[u8]| {
    let mut data = Cursor(input);
    let b0 = data.byte();
    let server_receives = b0 & 1 != 0;
    let mut limits = Limits::default();
    if b0 & 2 != 0 {
        limits = small_limits(&mut data);
        limits.max_command = limits.max_command.max(512);
    }
    let (ck, sk) = keys();
    let now = Instant::now();
    let config = |role, socket_type, mechanism, limits| EngineConfig {
        role,
        socket_type,
        identity: Bytes::new(),
        properties: Vec::new(),
        limits,
        handshake_timeout: Duration::from_secs(5),
        heartbeat: None,
        pace: None,
        mechanism,
    };
    let client_mech = MechanismConfig::CurveClient {
        keys: ck.clone(),
        server_key: *sk.public(),
    };
    let server_mech = MechanismConfig::CurveServer { keys: sk.clone() };
    let (client_limits, server_limits) = if server_receives {
        (Limits::default(), limits)
    } else {
        (limits, Limits::default())
    };
    let mut client = side(
        config(Role::Client, SocketType::Dealer, client_mech, client_limits),
        now,
    );
    let mut server = side(
        config(Role::Server, SocketType::Router, server_mech, server_limits),
        now,
    );
    for _ in 0..10 {
        let c = client.step(now);
        let s = server.step(now);
        if c.is_empty() && s.is_empty() {
            break;
        }
        server.inbox.extend_from_slice(&c);
        client.inbox.extend_from_slice(&s);
    }
    assert!(
        client.engine.is_ready() && server.engine.is_ready(),
        "handshake"
    );
    let (sender, receiver) = if server_receives {
        (&mut client, &mut server)
    } else {
        (&mut server, &mut client)
    };

    let mut sent: Vec<Vec<Bytes>> = Vec::new();
    let mut chunks: VecDeque<Chunk> = VecDeque::new();
    // Messages passed on whole and in order while `clean`.
    let mut delivered: Vec<usize> = Vec::new();
    let mut clean = true;
    let mut ops = 0;
    while !data.is_empty() && ops < 256 {
        ops += 1;
        let op = data.byte();
        let enc = sender.encoder.as_mut().expect("sender's encoder");
        match op & 7 {
            0 => {
                let n = usize::from(op >> 3 & 3) + 1;
                let frames: Vec<Bytes> = (0..n)
                    .map(|_| {
                        let len = usize::from(data.u16() % 301);
                        let fill = data.byte();
                        Bytes::from(vec![fill; len])
                    })
                    .collect();
                let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                let mut bytes = BytesMut::new();
                if op & 32 != 0 {
                    // The last frame written in place, as the socket does.
                    let (last, head) = refs.split_last().expect("n >= 1");
                    enc.message_with(&mut bytes, head, last.len(), |b| b.extend_from_slice(last));
                } else {
                    enc.message(&mut bytes, &refs);
                }
                chunks.push_back(Chunk {
                    bytes,
                    message: Some(sent.len()),
                });
                sent.push(frames);
            }
            1 => {
                let mut bytes = BytesMut::new();
                enc.command(&mut bytes, b"\x04PING\x00\x00ctx");
                chunks.push_back(Chunk {
                    bytes,
                    message: None,
                });
            }
            2 => {
                if let Some(c) = chunks.pop_front() {
                    if let Some(i) = c.message {
                        delivered.push(i);
                    }
                    receiver.inbox.extend_from_slice(&c.bytes);
                }
            }
            3 => {
                // Cut: the first part now, the rest stays next.
                if let Some(c) = chunks.front_mut() {
                    let at = usize::from(data.u16()) % (c.bytes.len() + 1);
                    let head = c.bytes.split_to(at);
                    receiver.inbox.extend_from_slice(&head);
                    if c.bytes.is_empty() {
                        if let Some(i) = c.message {
                            delivered.push(i);
                        }
                        chunks.pop_front();
                    }
                }
            }
            4 => {
                if let Some(mut c) = chunks.pop_front() {
                    if !c.bytes.is_empty() {
                        let at = usize::from(data.u16()) % c.bytes.len();
                        c.bytes[at] ^= data.byte() | 1;
                        clean = false;
                    }
                    receiver.inbox.extend_from_slice(&c.bytes);
                }
            }
            5 => {
                // Replay (bit 3) or reorder.
                if op & 8 != 0 {
                    if let Some(c) = chunks.pop_front() {
                        receiver.inbox.extend_from_slice(&c.bytes);
                        receiver.inbox.extend_from_slice(&c.bytes);
                        clean = false;
                    }
                } else if chunks.len() >= 2 {
                    chunks.swap(0, 1);
                    clean = false;
                }
            }
            6 => {
                if let Some(c) = chunks.pop_front() {
                    let mut bytes = c.bytes;
                    if let Some(first) = bytes.first_mut() {
                        *first = data.byte() & 0x07;
                    }
                    clean = false;
                    receiver.inbox.extend_from_slice(&bytes);
                }
            }
            _ => {
                let n = usize::from(op >> 3) + 1;
                receiver.inbox.extend_from_slice(data.take(n));
                clean = false;
            }
        }

        let had_error = receiver.error.is_some();
        let answer = receiver.step(now);
        if had_error {
            assert_eq!(
                receiver
                    .engine
                    .decode(&mut BytesMut::from(&b"\x00"[..]), now),
                Err(ZmtpError::Closed)
            );
        }
        // The receiver's own output (PONGs) is honest: it decodes cleanly.
        if receiver.error.is_none() {
            sender.inbox.extend_from_slice(&answer);
            let _ = sender.step(now);
            assert_eq!(sender.error, None, "the receiver's answer");
            assert!(sender.messages.is_empty());
        }
        // No forgery, no replay, no reordering.
        let mut next = 0usize;
        for m in &receiver.messages {
            let at = sent[next..]
                .iter()
                .position(|s| s == m)
                .unwrap_or_else(|| panic!("forged, replayed or reordered {m:?}"));
            next += at + 1;
        }
        if clean {
            let want: Vec<&Vec<Bytes>> = delivered.iter().map(|&i| &sent[i]).collect();
            match &receiver.error {
                None => {
                    let got: Vec<&Vec<Bytes>> = receiver.messages.iter().collect();
                    assert_eq!(got, want, "clean deliveries must all arrive");
                }
                Some(
                    ZmtpError::MessageTooLarge { .. }
                    | ZmtpError::TooManyFrames { .. }
                    | ZmtpError::CommandTooLarge { .. },
                ) => {}
                Some(e) => panic!("clean traffic failed: {e}"),
            }
        }
    }
});
