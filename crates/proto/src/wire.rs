//! The NoisePage messenger wire protocol: payload parsing and formatting, and
//! the frame shapes around the payload. Pure functions, no I/O.
//!
//! A payload is `{msg_id}-{src_cb}-{dst_cb}-{body}`: three unsigned 64-bit
//! decimal numbers (ASCII digits only), each followed by `-`, then the body as
//! raw bytes. See `design/WIRE.md` for the byte-level description.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{FrameError, ParseError};

/// Builtin callback id: no reply expected.
pub const NOOP: u64 = 0;
/// Builtin callback id: the receiver answers with the same body.
pub const ECHO: u64 = 1;
/// Builtin callback id: an acknowledgement of `msg_id`.
pub const ACK: u64 = 2;
/// Reserved by the protocol; never issued.
pub const RESERVED: u64 = 3;
/// The first id that names a message-specific callback.
pub const FIRST_USER: u64 = 4;

/// Longest decimal rendering of a u64 (`18446744073709551615`).
const MAX_ID_DIGITS: usize = 20;
/// Bytes of header a formatted payload can need beyond its body.
pub const MAX_HEADER_LEN: usize = 3 * (MAX_ID_DIGITS + 1);

/// One parsed payload. `body` shares the received buffer: no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Sender-assigned id, counting up per (sender, destination) pair.
    pub msg_id: u64,
    /// The sender's callback for a reply (NOOP when none).
    pub src_cb: u64,
    /// The receiver's callback this message is addressed to.
    pub dst_cb: u64,
    /// Everything after the third `-`.
    pub body: Bytes,
}

/// The three ids of a payload and where its body starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sender-assigned id.
    pub msg_id: u64,
    /// The sender's callback for a reply.
    pub src_cb: u64,
    /// The receiver's callback addressed.
    pub dst_cb: u64,
    /// Offset of the body within the payload.
    pub body_start: usize,
}

/// Parses the header of a payload without touching the body.
pub fn parse_header(payload: &[u8]) -> Result<Header, ParseError> {
    if payload.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut pos = 0;
    let msg_id = parse_id(payload, &mut pos, "msg_id")?;
    let src_cb = parse_id(payload, &mut pos, "src_cb")?;
    let dst_cb = parse_id(payload, &mut pos, "dst_cb")?;
    Ok(Header {
        msg_id,
        src_cb,
        dst_cb,
        body_start: pos,
    })
}

/// Parses a whole payload; the body is a zero-copy slice of `payload`.
pub fn parse(payload: &Bytes) -> Result<Payload, ParseError> {
    let h = parse_header(payload)?;
    Ok(Payload {
        msg_id: h.msg_id,
        src_cb: h.src_cb,
        dst_cb: h.dst_cb,
        body: payload.slice(h.body_start..),
    })
}

/// Reads digits up to a `-` starting at `*pos`, leaving `*pos` after the `-`.
///
/// One pass, and no overflow check for the first [`MAX_ID_DIGITS`] - 1
/// digits (no such number overflows): every message read passes here
/// three times, and a checked multiply and add per digit made it the
/// largest entry of a tcp round trip (callgrind).
fn parse_id(buf: &[u8], pos: &mut usize, field: &'static str) -> Result<u64, ParseError> {
    let rest = buf.get(*pos..).unwrap_or_default();
    let mut value: u64 = 0;
    let mut digits = 0;
    while let Some(&b) = rest.get(digits) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        value = if digits < MAX_ID_DIGITS - 1 {
            value * 10 + u64::from(d)
        } else {
            value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d)))
                .ok_or(ParseError::Overflow(field))?
        };
        digits += 1;
    }
    match rest.get(digits) {
        None => Err(ParseError::Truncated(field)),
        Some(b'-') if digits == 0 => Err(ParseError::EmptyField(field)),
        Some(b'-') => {
            *pos += digits + 1;
            Ok(value)
        }
        Some(_) => Err(ParseError::NotDigit(field)),
    }
}

/// Formats `{msg_id}-{src_cb}-{dst_cb}-{body}` into one buffer, sized once.
pub fn encode(msg_id: u64, src_cb: u64, dst_cb: u64, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN + body.len());
    encode_into(&mut buf, msg_id, src_cb, dst_cb, body);
    buf.freeze()
}

/// Appends a formatted payload to `buf`: the header formatted on the
/// stack, then two copies into `buf` (header, body). Every message sent on
/// tcp and ipc passes here; seven small appends (each a capacity check
/// and a call to memcpy, even for one `-`) were about 7 % of a tcp round
/// trip's instructions (callgrind).
pub fn encode_into(buf: &mut BytesMut, msg_id: u64, src_cb: u64, dst_cb: u64, body: &[u8]) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let mut at = 0;
    for id in [msg_id, src_cb, dst_cb] {
        at = put_id(&mut head, at, id);
    }
    buf.reserve(at + body.len());
    buf.put_slice(&head[..at]);
    buf.put_slice(body);
}

/// Writes `id` in decimal and a `-` at `head[at..]`; returns where the
/// next one goes. Three ids of at most [`MAX_ID_DIGITS`] digits and their
/// dashes fill at most [`MAX_HEADER_LEN`] bytes. Two digits per division,
/// from a table, as `itoa` does: a callback's wire id has ten digits or
/// more (its shard and generation are in its high bits).
fn put_id(head: &mut [u8; MAX_HEADER_LEN], at: usize, id: u64) -> usize {
    const PAIRS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let digits = digits(id);
    let mut end = at + digits;
    let mut rest = id;
    while rest >= 10 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        end -= 2;
        head[end..end + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if end > at {
        head[at] = b'0' + rest as u8;
    }
    head[at + digits] = b'-';
    at + digits + 1
}

/// The ACK of `msg_id`: `{msg_id}-0-2-`.
pub fn ack(msg_id: u64) -> Bytes {
    encode(msg_id, NOOP, ACK, b"")
}

/// Decimal digits of `v`: what `put_id` writes and `encoded_len` counts.
fn digits(v: u64) -> usize {
    v.checked_ilog10().unwrap_or(0) as usize + 1
}

/// Length a payload will have, to check limits before formatting it.
pub fn encoded_len(msg_id: u64, src_cb: u64, dst_cb: u64, body_len: usize) -> usize {
    digits(msg_id) + digits(src_cb) + digits(dst_cb) + 3 + body_len
}

/// What a ROUTER reads from a DEALER peer: `["", payload]` (the ROUTER
/// knows the peer from its connection). Returns the payload frame.
pub fn from_dealer(frames: &mut [Bytes]) -> Result<Bytes, FrameError> {
    match frames {
        [delim, payload] => delimited(delim, payload),
        _ => Err(FrameError::Count {
            expected: "2 ([\"\", payload])",
            got: frames.len(),
        }),
    }
}

/// What a DEALER reads from a ROUTER. NoisePage's ROUTER sends its own
/// identity first, so the DEALER sees `[router_identity, "", payload]`; a
/// plain ROUTER that omits it gives `["", payload]`, which we also accept
/// (design/WIRE.md, "Leniency"). Returns the payload frame.
pub fn from_router(frames: &mut [Bytes]) -> Result<Bytes, FrameError> {
    match frames {
        [_, delim, payload] | [delim, payload] => delimited(delim, payload),
        _ => Err(FrameError::Count {
            expected: "3 ([router_identity, \"\", payload]) or 2",
            got: frames.len(),
        }),
    }
}

/// An ACK as NoisePage's DEALER sends it: with routing frames in front,
/// `[remote_id, own_id, "", "{msg_id}-0-2-"]` on the wire (design/WIRE.md,
/// "Talking to NoisePage"). Taken for ACKs only: anything else in this
/// shape is malformed.
pub fn noisepage_ack(frames: &mut [Bytes]) -> Option<Payload> {
    let [_, _, delim, payload] = frames else {
        return None;
    };
    let p = parse(&delimited(delim, payload).ok()?).ok()?;
    (p.dst_cb == ACK).then_some(p)
}

/// The payload behind an empty delimiter frame, taken without a copy.
fn delimited(delim: &Bytes, payload: &mut Bytes) -> Result<Bytes, FrameError> {
    if !delim.is_empty() {
        return Err(FrameError::Delimiter(delim.len()));
    }
    Ok(std::mem::take(payload))
}

/// What a ROUTER's application sees from a DEALER peer,
/// `[peer_routing_id, "", payload]` (the shape the shared wire vectors
/// list). Returns the routing id and the payload frame.
pub fn router_frames(mut frames: Vec<Bytes>) -> Result<(Bytes, Bytes), FrameError> {
    if frames.is_empty() {
        return Err(FrameError::Count {
            expected: "3 ([peer, \"\", payload])",
            got: 0,
        });
    }
    let peer = frames.remove(0);
    from_dealer(&mut frames)
        .map(|payload| (peer, payload))
        .map_err(|e| match e {
            FrameError::Count { got, .. } => FrameError::Count {
                expected: "3 ([peer, \"\", payload])",
                got: got + 1,
            },
            other => other,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex in vectors"))
            .collect()
    }

    /// The shared vectors keep this parser byte-exact with other implementations.
    #[test]
    fn shared_wire_vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/wire-vectors.json");
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let doc: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
        let payloads = doc["payloads"].as_array().expect("payloads array");
        let (mut valid, mut invalid) = (0, 0);
        for v in payloads {
            let raw = Bytes::from(unhex(v["payload_hex"].as_str().expect("payload_hex")));
            let got = parse(&raw);
            if v["valid"].as_bool() == Some(true) {
                valid += 1;
                let p = got.unwrap_or_else(|e| panic!("{v}: rejected: {e}"));
                let id = |k: &str| v[k].as_str().and_then(|s| s.parse::<u64>().ok());
                assert_eq!(Some(p.msg_id), id("msg_id"), "{v}");
                assert_eq!(Some(p.src_cb), id("src_cb"), "{v}");
                assert_eq!(Some(p.dst_cb), id("dst_cb"), "{v}");
                assert_eq!(
                    p.body.as_ref(),
                    unhex(v["body_hex"].as_str().expect("body"))
                );
                // Formatting the parsed fields gives the canonical form, which parses back.
                let again = parse(&encode(p.msg_id, p.src_cb, p.dst_cb, &p.body));
                assert_eq!(again.as_ref(), Ok(&p));
            } else {
                invalid += 1;
                assert!(got.is_err(), "{v}: accepted as {got:?}");
            }
        }
        assert!(valid >= 5 && invalid >= 5, "vectors look truncated");
        let f = &doc["frames"];
        assert_eq!(f["builtin_callbacks"]["NOOP"], NOOP);
        assert_eq!(f["builtin_callbacks"]["ECHO"], ECHO);
        assert_eq!(f["builtin_callbacks"]["ACK"], ACK);
        assert_eq!(f["builtin_callbacks"]["reserved"], RESERVED);
        assert_eq!(f["builtin_callbacks"]["first_user_callback"], FIRST_USER);
        assert_eq!(f["ack_of"], "{msg_id}-0-2-");
        // Every invalid frame shape listed is rejected at the router.
        for shape in f["invalid_frame_shapes_at_router"]
            .as_array()
            .expect("shapes")
        {
            let frames: Vec<Bytes> = shape
                .as_array()
                .expect("shape")
                .iter()
                .map(|fr| match fr.as_str() {
                    Some("<peer>") => Bytes::from_static(b"peer"),
                    Some("<payload>") => Bytes::from_static(b"1-0-0-x"),
                    Some(s) => Bytes::copy_from_slice(s.as_bytes()),
                    None => Bytes::new(),
                })
                .collect();
            assert!(router_frames(frames).is_err(), "{shape} accepted");
        }
    }

    #[test]
    fn ack_is_byte_exact() {
        assert_eq!(ack(5).as_ref(), b"5-0-2-");
        assert_eq!(ack(u64::MAX).as_ref(), b"18446744073709551615-0-2-");
    }

    /// Every id is written as `format!` writes it, at each digit count
    /// and at both ends of the range.
    #[test]
    fn ids_are_written_in_decimal() {
        let mut ids = vec![0, u64::MAX, u64::MAX - 1];
        for p in 0..20 {
            let ten = 10u64.pow(p);
            ids.extend([ten - 1, ten, ten + 1]);
        }
        for &id in &ids {
            let got = encode(id, id / 7, id % 1000, b"b-o-d-y");
            assert_eq!(
                got,
                format!("{id}-{}-{}-b-o-d-y", id / 7, id % 1000).as_bytes()
            );
        }
    }

    #[test]
    fn encoded_len_matches_encode() {
        for (m, s, d, n) in [(0, 0, 0, 0), (9, 10, 99, 3), (u64::MAX, 1, 100, 7)] {
            let body = vec![b'x'; n];
            assert_eq!(encoded_len(m, s, d, n), encode(m, s, d, &body).len());
        }
    }

    /// The parser before it folded digits unchecked: what `parse_id` must
    /// still answer, error for error.
    fn parse_id_reference(
        buf: &[u8],
        pos: &mut usize,
        field: &'static str,
    ) -> Result<u64, ParseError> {
        let start = *pos;
        let mut value: u64 = 0;
        for (i, &b) in buf.iter().enumerate().skip(start) {
            match b {
                b'-' if i == start => return Err(ParseError::EmptyField(field)),
                b'-' => {
                    *pos = i + 1;
                    return Ok(value);
                }
                b'0'..=b'9' => {
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        .ok_or(ParseError::Overflow(field))?;
                }
                _ => return Err(ParseError::NotDigit(field)),
            }
        }
        Err(ParseError::Truncated(field))
    }

    /// Random strings of digits, dashes and one other byte, up to 50
    /// long, from every start: the same ids, errors and positions.
    #[test]
    fn ids_parse_as_before() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 50) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| match next() % 16 {
                    0..=11 => b'0' + (next() % 10) as u8,
                    12 | 13 => b'-',
                    14 => b'9',
                    _ => b'x',
                })
                .collect();
            for start in 0..=len + 1 {
                let (mut a, mut b) = (start, start);
                assert_eq!(
                    parse_id(&buf, &mut a, "f"),
                    parse_id_reference(&buf, &mut b, "f"),
                    "{buf:?} from {start}"
                );
                assert_eq!(a, b);
            }
        }
        for s in [
            "18446744073709551615-",
            "18446744073709551616-",
            "99999999999999999999",
        ] {
            let (mut a, mut b) = (0, 0);
            assert_eq!(
                parse_id(s.as_bytes(), &mut a, "f"),
                parse_id_reference(s.as_bytes(), &mut b, "f")
            );
        }
    }

    #[test]
    fn names_the_failing_field() {
        assert_eq!(parse_header(b""), Err(ParseError::Empty));
        assert_eq!(parse_header(b"1-2"), Err(ParseError::Truncated("src_cb")));
        assert_eq!(parse_header(b"1-2-3"), Err(ParseError::Truncated("dst_cb")));
        assert_eq!(
            parse_header(b"1--3-x"),
            Err(ParseError::EmptyField("src_cb"))
        );
        assert_eq!(parse_header(b"1-2-x-"), Err(ParseError::NotDigit("dst_cb")));
        assert_eq!(
            parse_header(b"18446744073709551616-0-0-"),
            Err(ParseError::Overflow("msg_id"))
        );
    }

    #[test]
    fn frame_shapes() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(
            router_frames(vec![b("p"), b(""), b("1-0-0-")]),
            Ok((b("p"), b("1-0-0-")))
        );
        assert_eq!(from_router(&mut [b("r"), b(""), b("x")]), Ok(b("x")));
        assert_eq!(from_router(&mut [b(""), b("x")]), Ok(b("x")));
        assert!(from_router(&mut [b("x")]).is_err());
        assert!(from_router(&mut [b("r"), b("d"), b("x")]).is_err());
        assert!(from_router(&mut [b("r"), b(""), b("x"), b("y")]).is_err());
        assert_eq!(from_dealer(&mut [b(""), b("x")]), Ok(b("x")));
        // NoisePage's ACK shape, for ACKs only.
        let ack = noisepage_ack(&mut [b("srv"), b("np"), b(""), b("7-0-2-")]).unwrap();
        assert_eq!((ack.msg_id, ack.dst_cb), (7, ACK));
        assert_eq!(
            noisepage_ack(&mut [b("srv"), b("np"), b(""), b("7-0-1-x")]),
            None
        );
        assert_eq!(
            noisepage_ack(&mut [b("srv"), b("np"), b("d"), b("7-0-2-")]),
            None
        );
        assert_eq!(noisepage_ack(&mut [b("np"), b(""), b("7-0-2-")]), None);
        assert!(from_dealer(&mut [b("p"), b(""), b("x")]).is_err());
        assert_eq!(
            from_dealer(&mut [b("d"), b("x")]),
            Err(FrameError::Delimiter(1))
        );
    }
}
