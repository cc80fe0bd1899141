//! `zmtp::FrameDecoder`: the first code every byte after a peer's greeting
//! reaches, with small limits so that each one is within the fuzzer's reach.
//!
//! Input layout: byte 0 `max_frames`, bytes 1-2 `max_message`, bytes 3-4
//! `max_command` (see `common::small_limits`: 0..=8 frames, < 8 KiB, < 2 KiB,
//! or unlimited), byte 5 the mode, bytes 6-13 the chunking seed; the rest is
//! the stream (raw mode) or a recipe for one (structured mode: frame
//! headers near the limits, long bodies from a few input bytes).
//!
//! The stream is fed in chunks (exactly what `wants()` asks, byte by byte,
//! random, or whole) and decoded after each chunk until `Ok(None)` or an
//! error. Checked:
//!
//! - no panic;
//! - `wants()` is at least 1, never more than a limit allows (9 for a header,
//!   else the body of a frame that passed the limits), and exact: the bytes
//!   up to the end of the current header or body;
//! - every message has at most `max_frames` frames and its frames and their
//!   headers fit in `max_message`; every command body fits in `max_command`;
//! - what is decoded is exactly what a simple independent model of RFC 37's
//!   framing finds in the whole stream (same messages, commands, error, and
//!   each one as soon as its last byte is in, no sooner or later);
//! - after an error nothing more is decoded (decoding again, even with more
//!   bytes, gives an error).
#![no_main]

mod common;

use bytes::{Bytes, BytesMut};
use common::{COMMAND, Cursor, LONG, MORE, Rng, header, small_limits};
use libfuzzer_sys::fuzz_target;
use zmtp::{Decoded, FrameDecoder, Limits, ZmtpError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Message(Vec<Bytes>),
    Command(Bytes),
    Error(ZmtpError),
}

/// One frame the model reached: where it starts, where its header ends,
/// where its body ends (None: refused at the header).
struct Span {
    start: usize,
    header_end: usize,
    end: Option<u128>,
}

/// RFC 37 framing with the limits, written for clarity: each event with the
/// stream offset at which its last byte is in.
fn model(stream: &[u8], limits: Limits) -> (Vec<(usize, Ev)>, Vec<Span>) {
    let mut events = Vec::new();
    let mut spans = Vec::new();
    let mut p = 0usize;
    let mut message: Vec<Bytes> = Vec::new();
    let mut message_wire = 0u64;
    while p < stream.len() {
        let flags = stream[p];
        if flags & 0xF8 != 0 || flags & (COMMAND | MORE) == COMMAND | MORE {
            events.push((p + 1, Ev::Error(ZmtpError::Flags(flags))));
            spans.push(Span {
                start: p,
                header_end: p + 1,
                end: None,
            });
            break;
        }
        let header_len = if flags & LONG != 0 { 9 } else { 2 };
        let header_end = p + header_len;
        let mut span = Span {
            start: p,
            header_end,
            end: None,
        };
        if header_end > stream.len() {
            spans.push(span);
            break;
        }
        let len = if flags & LONG != 0 {
            u64::from_be_bytes(stream[p + 1..p + 9].try_into().unwrap())
        } else {
            u64::from(stream[p + 1])
        };
        let command = flags & COMMAND != 0;
        let refused = if command {
            (len > limits.max_command as u64).then_some(ZmtpError::CommandTooLarge {
                len,
                max: limits.max_command,
            })
        } else if message.len() >= limits.max_frames {
            Some(ZmtpError::TooManyFrames {
                max: limits.max_frames,
            })
        } else {
            let total = message_wire
                .saturating_add(header_len as u64)
                .saturating_add(len);
            message_wire = total;
            (total > limits.max_message).then_some(ZmtpError::MessageTooLarge {
                len: total,
                max: limits.max_message,
            })
        };
        if let Some(e) = refused {
            events.push((header_end, Ev::Error(e)));
            spans.push(span);
            break;
        }
        // u128: with unlimited limits a body may end past 2^64.
        let end = header_end as u128 + u128::from(len);
        span.end = Some(end);
        spans.push(span);
        if end > stream.len() as u128 {
            break;
        }
        let end = end as usize;
        let body = Bytes::copy_from_slice(&stream[header_end..end]);
        if command {
            events.push((end, Ev::Command(body)));
        } else {
            message.push(body);
            if flags & MORE == 0 {
                events.push((end, Ev::Message(std::mem::take(&mut message))));
                message_wire = 0;
            }
        }
        p = end;
    }
    (events, spans)
}

/// What `wants()` must say when the decoder has seen `fed` bytes of the
/// stream and decoded all it could. `from`: the first span not yet behind
/// (`fed` only grows).
fn model_wants(spans: &[Span], from: &mut usize, fed: usize) -> u128 {
    while let Some(s) = spans.get(*from) {
        if fed <= s.start {
            // The decoder has no byte of this frame: a short header at least.
            return 2;
        }
        if fed < s.header_end {
            return (s.header_end - fed) as u128;
        }
        match s.end {
            Some(end) if (fed as u128) < end => return end - fed as u128,
            Some(_) => *from += 1,
            None => break,
        }
    }
    2
}

/// Builds a stream from a recipe: headers near the limits, bodies of a
/// pattern (so a few input bytes make a long frame).
fn structured(data: &mut Cursor<'_>, limits: Limits) -> Vec<u8> {
    const CAP: usize = 1 << 14;
    let mut stream = Vec::new();
    let mut message_wire = 0u64;
    let mut n = 0u8;
    while !data.is_empty() && stream.len() < CAP {
        let op = data.byte();
        if op >> 5 == 7 {
            // A flags octet with reserved bits or COMMAND|MORE, now and then.
            stream.push(op | if op & 1 != 0 { 0x08 } else { COMMAND | MORE });
            continue;
        }
        let flags = op & (COMMAND | MORE);
        let command = flags & COMMAND != 0;
        let long = op & LONG != 0;
        let b = data.byte();
        let delta = i64::from(b % 5) - 2;
        let header_len = if long { 9 } else { 2 };
        let len: u64 = match (op >> 3) & 3 {
            0 => u64::from(b),
            1 => u64::from(b) * 17,
            // At a limit, give or take two bytes.
            2 if command => (limits.max_command as u64).saturating_add_signed(delta),
            2 => limits
                .max_message
                .saturating_sub(message_wire.saturating_add(header_len))
                .saturating_add_signed(delta),
            _ => data.u64() >> (b % 64),
        };
        stream.extend(header(flags, long, len));
        let header_len = if len > 255 { 9 } else { header_len };
        if !command {
            message_wire = if flags & MORE != 0 {
                message_wire.saturating_add(header_len).saturating_add(len)
            } else {
                0
            };
        }
        let body = len.min((CAP - stream.len().min(CAP)) as u64) as usize;
        n = n.wrapping_add(1);
        stream.extend((0..body).map(|i| n.wrapping_add(i as u8)));
    }
    stream
}

fuzz_target!(|input: &[u8]| {
    let mut data = Cursor(input);
    let limits = small_limits(&mut data);
    let mode = data.byte();
    let mut rng = Rng::new(data.u64());
    let stream = if mode & 1 != 0 {
        structured(&mut data, limits)
    } else {
        data.rest().to_vec()
    };
    let (want, spans) = model(&stream, limits);

    // The most a limit allows the decoder to ask for at once.
    let bound = 9u64.max(limits.max_command as u64).max(limits.max_message);

    let mut d = FrameDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut got: Vec<Ev> = Vec::new();
    let mut span_at = 0;
    let mut checked = 0;
    let mut failed = false;
    let chunking = (mode >> 1) & 3;
    let take_mode = (mode >> 3) & 3;
    let max_chunk = [1usize, 3, 64, 1500][usize::from(mode >> 5) & 3];
    while fed < stream.len() && !failed {
        let wants = d.wants(&buf);
        assert!(wants >= 1, "wants() is 0 with {fed} bytes fed");
        assert!(
            wants as u64 <= bound,
            "wants() {wants} is more than the limits allow ({limits:?})"
        );
        assert_eq!(
            wants as u128,
            model_wants(&spans, &mut span_at, fed),
            "wants() after {fed} bytes ({limits:?})"
        );
        let left = stream.len() - fed;
        let n = match chunking {
            0 => wants,
            1 => 1,
            2 => rng.below(max_chunk),
            _ => left,
        }
        .min(left);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let r = d.decode(&mut buf);
            match r {
                Ok(None) => break,
                Ok(Some(Decoded::Message)) => {
                    let frames = match take_mode {
                        0 => std::mem::take(d.frames()),
                        // Left in place: the next call must drop them.
                        1 => d.frames().clone(),
                        // Partly taken.
                        _ => {
                            let all = d.frames().clone();
                            d.frames().truncate(all.len() / 2);
                            all
                        }
                    };
                    assert!(
                        !frames.is_empty() && frames.len() <= limits.max_frames,
                        "a message of {} frames (max {})",
                        frames.len(),
                        limits.max_frames
                    );
                    let wire: u64 = frames.iter().map(|f| f.len() as u64 + 2).sum();
                    assert!(
                        wire <= limits.max_message,
                        "a message of at least {wire} bytes (max {})",
                        limits.max_message
                    );
                    got.push(Ev::Message(frames));
                }
                Ok(Some(Decoded::Command(body))) => {
                    assert!(
                        body.len() <= limits.max_command,
                        "a command of {} bytes (max {})",
                        body.len(),
                        limits.max_command
                    );
                    got.push(Ev::Command(body));
                }
                Err(e) => {
                    got.push(Ev::Error(e));
                    failed = true;
                    break;
                }
            }
        }
        // Everything the model completes within the bytes fed so far, and
        // nothing more; each event in the chunk that completed it.
        let due = want.partition_point(|(at, _)| *at <= fed);
        for (k, (_, e)) in want.iter().enumerate().take(due).skip(checked) {
            assert_eq!(
                got.get(k),
                Some(e),
                "event {k} after {fed} bytes ({limits:?})"
            );
        }
        assert_eq!(
            got.len(),
            due,
            "events after {fed} bytes: {got:?} ({limits:?})"
        );
        checked = due;
    }
    if failed {
        // Refused: it stays refused, whatever comes next.
        buf.extend_from_slice(&[0, 0, 4, 0, 1, 0]);
        for _ in 0..2 {
            let r = d.decode(&mut buf);
            assert!(r.is_err(), "decoded {r:?} after an error");
        }
    }
});
