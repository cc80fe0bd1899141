//! `guard::FrameGuard::feed`, the first code every byte from a tcp or ipc
//! peer reaches.
//!
//! Input layout: byte 0 picks the mode and options, bytes 1-2 the
//! `max_message` limit, bytes 3-10 the seed of the chunking; the rest is
//! the stream (raw mode) or the recipe for one (structured mode).
//!
//! - Raw mode: arbitrary bytes (optionally after a valid greeting and
//!   READY, so the fuzzer starts past the handshake) are fed whole, byte by
//!   byte, and in random chunks. All three must agree: refused or not, with
//!   the same error, at the same byte, with the same identity and captured
//!   first message.
//! - Structured mode: a valid stream (greeting, READY with an identity, data
//!   and command frames within the limits) must be accepted in random
//!   chunks; then a frame header declaring more than the maximum must be
//!   refused with `TooLarge`, for data (against `max_message`, counting the
//!   multipart message so far) and for commands (against `MAX_COMMAND`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger::guard::{FrameGuard, GuardError, MAX_COMMAND, ready_identity};

/// xorshift64: the chunk sizes, reproducible from the input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Reads the input front to back; zeros once it runs out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let take = n.min(self.0.len());
        let (head, rest) = self.0.split_at(take);
        self.0 = rest;
        let mut v = head.to_vec();
        v.resize(n, b'.');
        v
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn greeting(minor: u8, as_server: bool, filler: u8) -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xFF;
    // The 8 padding bytes of the signature are not checked by ZMTP 3 peers.
    g[1..9].fill(filler);
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = minor;
    g[12..16].copy_from_slice(b"NULL");
    g[32] = u8::from(as_server);
    g
}

fn ready_body(identity: &[u8]) -> Vec<u8> {
    let mut body = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER".to_vec();
    body.push(8);
    body.extend_from_slice(b"Identity");
    body.extend_from_slice(&(identity.len() as u32).to_be_bytes());
    body.extend_from_slice(identity);
    body
}

/// One frame: flags, short or long size, body.
fn frame(command: bool, more: bool, long: bool, body: &[u8]) -> Vec<u8> {
    let long = long || body.len() > 255;
    let flags = u8::from(more) | (u8::from(long) << 1) | (u8::from(command) << 2);
    let mut f = vec![flags];
    if long {
        f.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        f.push(body.len() as u8);
    }
    f.extend_from_slice(body);
    f
}

/// A frame header declaring `len` bytes, in the short form when it fits
/// unless `long` is asked for.
fn header(command: bool, more: bool, long: bool, len: u64) -> Vec<u8> {
    let long = long || len > 255;
    let flags = u8::from(more) | (u8::from(long) << 1) | (u8::from(command) << 2);
    let mut f = vec![flags];
    if long {
        f.extend_from_slice(&len.to_be_bytes());
    } else {
        f.push(len as u8);
    }
    f
}

/// Feeds `stream` in random chunks; returns the first error and the offset
/// of the chunk it came from (start, end).
fn feed_chunked(
    g: &mut FrameGuard,
    stream: &[u8],
    rng: &mut Rng,
) -> Option<(GuardError, usize, usize)> {
    let max_chunk = [1u64, 2, 3, 7, 64, 1500, 1 << 16][(rng.next() % 7) as usize];
    let mut at = 0;
    while at < stream.len() {
        let n = (1 + rng.next() % max_chunk) as usize;
        let end = (at + n).min(stream.len());
        if let Err(e) = g.feed(&stream[at..end]) {
            return Some((e, at, end));
        }
        at = end;
    }
    None
}

type Observed = (bool, Option<Vec<u8>>, Option<Vec<Vec<u8>>>);

fn observe(g: &FrameGuard) -> Observed {
    (
        g.handshake_done(),
        g.peer_identity().map(<[u8]>::to_vec),
        g.first_message().map(<[Vec<u8>]>::to_vec),
    )
}

fn raw(options: u8, max: u64, rng: &mut Rng, rest: &[u8]) {
    let make = || {
        let g = FrameGuard::new(max);
        if options & 0b100 != 0 {
            g.capture_first_message(usize::from(options >> 3) * 16)
        } else {
            g
        }
    };
    let mut stream = Vec::new();
    if options & 0b10 != 0 {
        stream.extend(greeting(0, false, 0));
        stream.extend(frame(true, false, false, &ready_body(b"peer")));
    }
    stream.extend_from_slice(rest);

    let mut whole = make();
    let whole_result = whole.feed(&stream);

    // Byte by byte: where exactly the stream is refused, if it is.
    let mut bytewise = make();
    let mut refused_at = None;
    for (i, b) in stream.iter().enumerate() {
        if let Err(e) = bytewise.feed(std::slice::from_ref(b)) {
            refused_at = Some((e, i));
            break;
        }
    }

    let mut chunked = make();
    let chunked_result = feed_chunked(&mut chunked, &stream, rng);

    match (&whole_result, &refused_at, &chunked_result) {
        (Ok(()), None, None) => {
            assert_eq!(observe(&whole), observe(&bytewise));
            assert_eq!(observe(&whole), observe(&chunked));
        }
        (Err(w), Some((b, at)), Some((c, start, end))) => {
            assert!(
                (*start..*end).contains(at),
                "refused in chunk {start}..{end}, but byte by byte at {at}"
            );
            // A capture overflow reports the bytes collected so far, which
            // depend on the chunking; everything else is exact.
            let same = |x: &GuardError, y: &GuardError| match (x, y) {
                (GuardError::TooLarge { max: a, .. }, GuardError::TooLarge { max: b, .. }) => {
                    a == b
                }
                _ => x == y,
            };
            assert!(
                same(w, b) && same(b, c),
                "whole {w:?}, bytewise {b:?}, chunked {c:?}"
            );
            if let GuardError::TooLarge { len, max } = b {
                assert!(len > max, "{b:?}");
            }
        }
        other => panic!("feeds disagree: {other:?}"),
    }
}

fn structured(options: u8, max: u64, rng: &mut Rng, data: &mut Cursor<'_>) {
    let identity = {
        let n = usize::from(data.byte());
        data.bytes(n)
    };
    let capture = options & 0b100 != 0;
    let mut stream = greeting(data.byte(), options & 0b1000 != 0, data.byte());
    stream.extend(frame(true, false, false, &ready_body(&identity)));

    // Data and command frames, every multipart message within `max`.
    let mut message_total = 0u64;
    let mut in_message = false;
    let mut first_message: Vec<Vec<u8>> = Vec::new();
    let mut first_done = false;
    let mut frames = 0;
    while !data.is_empty() && frames < 64 {
        frames += 1;
        let op = data.byte();
        let (command, more, long) = (op & 1 != 0, op & 2 != 0, op & 4 != 0);
        let wanted = u64::from(data.byte()) | (u64::from(op >> 6) << 8);
        if command {
            let len = wanted.min(MAX_COMMAND);
            stream.extend(frame(true, false, long, &data.bytes(len as usize)));
            continue;
        }
        let len = wanted.min(max - message_total);
        let body = data.bytes(len as usize);
        stream.extend(frame(false, more, long, &body));
        if !first_done {
            first_message.push(body);
            first_done = !more;
        }
        message_total = if more { message_total + len } else { 0 };
        in_message = more;
    }

    let mut g = FrameGuard::new(max);
    if capture {
        g = g.capture_first_message(max as usize);
    }
    if let Some((e, start, end)) = feed_chunked(&mut g, &stream, rng) {
        panic!("a valid stream was refused in chunk {start}..{end}: {e:?}");
    }
    assert!(g.handshake_done());
    let want_identity = (!identity.is_empty()).then_some(&identity[..]);
    assert_eq!(g.peer_identity(), want_identity);
    assert_eq!(ready_identity(&ready_body(&identity)), want_identity);
    if capture {
        let want = first_done.then_some(&first_message[..]);
        assert_eq!(g.first_message(), want);
    }

    // One byte over the limit, or far over it: refused at the header.
    let extra = match data.byte() % 4 {
        0 => 0,
        1 => u64::from(data.byte()),
        2 => 1 << 40,
        _ => u64::MAX - max,
    };
    let mut over = g.clone();
    let declared = (max - message_total)
        .saturating_add(1)
        .saturating_add(extra);
    match over.feed(&header(
        false,
        options & 1 != 0,
        options & 0b10000 != 0,
        declared,
    )) {
        Err(GuardError::TooLarge { len, max: m }) => {
            assert_eq!(m, max);
            assert!(len > max);
            assert_eq!(len, message_total.saturating_add(declared));
        }
        other => panic!(
            "data header of {declared} bytes (message so far {message_total}, in one: \
             {in_message}, max {max}) gave {other:?}"
        ),
    }
    let mut over = g;
    let declared = MAX_COMMAND.saturating_add(1).saturating_add(extra);
    assert_eq!(
        over.feed(&header(true, false, false, declared)),
        Err(GuardError::TooLarge {
            len: declared,
            max: MAX_COMMAND
        })
    );
}

fuzz_target!(|input: &[u8]| {
    let mut data = Cursor(input);
    let options = data.byte();
    let max = u64::from(u16::from_le_bytes([data.byte(), data.byte()]));
    let seed = u64::from_le_bytes(data.bytes(8).try_into().unwrap_or([1; 8]));
    let mut rng = Rng(seed | 1);
    if options & 1 == 0 {
        raw(options, max, &mut rng, data.0);
    } else {
        structured(options >> 1, max, &mut rng, &mut data);
    }
});
