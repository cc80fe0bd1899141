//! Helpers shared by the `zmtp_*` and `curve_*` targets: reading the
//! input, a reproducible chunking RNG, builders for greetings and frames,
//! and the honest end of a fuzzed connection.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use zmtp::{Encoder, Engine, Event, GREETING_LEN, Limits, ZmtpError};
use std::time::Instant;

/// Checks that `bytes` go on with our `greeting` from where `seen` left
/// it (an engine's output, cut anywhere), and skips what matched.
pub fn expect_greeting(greeting: &[u8], seen: &mut usize, bytes: &mut &[u8]) {
    if *seen < greeting.len() {
        let n = bytes.len().min(greeting.len() - *seen);
        assert_eq!(bytes[..n], greeting[*seen..*seen + n], "our greeting");
        *seen += n;
        *bytes = &bytes[n..];
    }
}

/// An engine that accepts its peer, keeps the messages it receives, and
/// frames its queued commands (PONGs) once it has an encoder: the side of a
/// fuzzed connection that follows the rules.
pub struct Honest {
    pub engine: Engine,
    /// Taken from the engine once the handshake is done.
    pub encoder: Option<Encoder>,
    /// What the other side sent, not decoded yet.
    pub inbox: BytesMut,
    /// Why the engine gave up, if it did.
    pub error: Option<ZmtpError>,
    /// Messages received, in order.
    pub messages: Vec<Vec<Bytes>>,
}

impl Honest {
    pub fn new(engine: Engine) -> Self {
        Honest {
            engine,
            encoder: None,
            inbox: BytesMut::new(),
            error: None,
            messages: Vec::new(),
        }
    }

    /// Decodes what is in the inbox and returns what it sends.
    pub fn step(&mut self, now: Instant) -> BytesMut {
        while self.error.is_none() {
            match self.engine.decode(&mut self.inbox, now) {
                Ok(None) => break,
                Ok(Some(Event::PeerReady(_))) => {
                    self.engine.accept(now);
                    self.encoder = self.engine.take_encoder();
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
}

/// Reads the input front to back; zeros once it runs out.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.take(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// xorshift64: chunk sizes, reproducible from the input.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// 1..=max.
    pub fn below(&mut self, max: usize) -> usize {
        1 + (self.next() % max.max(1) as u64) as usize
    }
}

pub const MORE: u8 = 0b001;
pub const LONG: u8 = 0b010;
pub const COMMAND: u8 = 0b100;

/// A ZMTP 3.x greeting with the given fields (mechanism null padded).
pub fn greeting(major: u8, minor: u8, mechanism: &[u8], as_server: bool, padding: u8) -> Vec<u8> {
    let mut g = vec![0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[1..9].fill(padding);
    g[9] = 0x7F;
    g[10] = major;
    g[11] = minor;
    g[12..12 + mechanism.len()].copy_from_slice(mechanism);
    g[32] = u8::from(as_server);
    g
}

/// A frame header declaring `len` bytes: the short form when it fits,
/// unless `long` asks for the (valid, non-canonical) long form.
pub fn header(flags: u8, long: bool, len: u64) -> Vec<u8> {
    let long = long || len > 255;
    let mut h = vec![flags | if long { LONG } else { 0 }];
    if long {
        h.extend_from_slice(&len.to_be_bytes());
    } else {
        h.push(len as u8);
    }
    h
}

/// One whole frame.
pub fn frame(flags: u8, long: bool, body: &[u8]) -> Vec<u8> {
    let mut f = header(flags, long, body.len() as u64);
    f.extend_from_slice(body);
    f
}

/// READY's body with the given properties, in order.
pub fn ready_body(props: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = b"\x05READY".to_vec();
    for (name, value) in props {
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        b.extend_from_slice(&(value.len() as u32).to_be_bytes());
        b.extend_from_slice(value);
    }
    b
}

/// PING's body: TTL in deciseconds, context of at most 16 bytes.
pub fn ping_body(ttl: u16, context: &[u8]) -> Vec<u8> {
    let mut b = b"\x04PING".to_vec();
    b.extend_from_slice(&ttl.to_be_bytes());
    b.extend_from_slice(context);
    b
}

/// The 19 socket type names of RFC 37, and two that are not.
pub const SOCKET_TYPE_NAMES: [&[u8]; 21] = [
    b"REQ", b"REP", b"DEALER", b"ROUTER", b"PUB", b"XPUB", b"SUB", b"XSUB", b"PUSH", b"PULL",
    b"PAIR", b"CLIENT", b"SERVER", b"RADIO", b"DISH", b"SCATTER", b"GATHER", b"PEER", b"CHANNEL",
    b"dealer", b"",
];

/// Limits from five input bytes: `max_frames` 0..=8 (unlimited from 0xF0),
/// `max_message` below 8 KiB and `max_command` below 2 KiB (each unlimited
/// when its two bytes are 0xFF), so that every limit is within reach of a
/// short input.
pub fn small_limits(data: &mut Cursor<'_>) -> Limits {
    let frames = data.byte();
    let message = data.u16();
    let command = data.u16();
    Limits {
        max_frames: if frames >= 0xF0 {
            usize::MAX
        } else {
            usize::from(frames % 9)
        },
        max_message: if message == 0xFFFF {
            u64::MAX
        } else {
            u64::from(message % 8192)
        },
        max_command: if command == 0xFFFF {
            usize::MAX
        } else {
            usize::from(command % 2048)
        },
    }
}
