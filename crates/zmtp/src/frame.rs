//! ZMTP framing (RFC 37, "Framing"): decoding with every limit checked
//! before anything is reserved, and encoding many messages into one buffer.
//!
//! ```text
//! frame = flags size body
//! flags = %b00000CLM      ; C: command, L: long size, M: more; bits 7-3 zero
//! size  = OCTET | 8OCTET  ; 8 octets, network order, when L is set
//! ```
//!
//! A message is one or more frames, all but the last with MORE. Commands
//! are single frames without MORE; libzmq may send one (a PING) between the
//! frames of a message, which the grammar does not show, so the decoder
//! takes commands at any point.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::curve::{BOX_COMMAND, BOX_MORE, CurveRx, CurveTx, MESSAGE_OVERHEAD};
use super::{Limits, ZmtpError};

use super::header::{COMMAND, LONG, MORE, put_header};

/// What [`FrameDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete message: its frames are in [`FrameDecoder::frames`]
    /// until the next call.
    Message,
    /// A command frame's body.
    Command(Bytes),
}

/// A frame header read and checked, waiting for its body.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// A command frame (READY, PING, ...) rather than a message frame.
    command: bool,
    /// More frames of this message follow.
    more: bool,
    /// The body's declared size, already within the limits.
    len: usize,
}

/// Turns a byte stream (after the greeting) into messages and commands.
///
/// Bodies are split off the caller's buffer without copying. Before a
/// frame's body is waited for, its declared size has passed the limits, so
/// [`wants`](Self::wants) never asks for more than a limit allows.
#[derive(Debug)]
pub struct FrameDecoder {
    /// What a frame, message or command may make us hold.
    limits: Limits,
    /// The header of the frame whose body is awaited.
    header: Option<Header>,
    /// Frames of the message being assembled (the caller takes them after
    /// [`Decoded::Message`]; cleared when the next message begins).
    frames: Vec<Bytes>,
    /// The previous call returned a complete message in `frames`.
    complete: bool,
    /// Wire bytes of the message being assembled, headers included (under
    /// CURVE: of its frames as NULL would frame them, the plaintext).
    message_len: u64,
    /// A CURVE session's receiving half, once its handshake is done: every
    /// frame is then a MESSAGE to open (None: NULL, or still handshaking).
    curve: Option<CurveRx>,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            limits,
            header: None,
            frames: Vec::new(),
            complete: false,
            message_len: 0,
            curve: None,
        }
    }

    /// Whether a message's first frames are in and its last is awaited. A
    /// command may come between the frames of a message, so only the
    /// engine can tell whether that is allowed: during the handshake it is
    /// not (those frames came before the handshake ended, in clear).
    pub(crate) fn mid_message(&self) -> bool {
        !self.complete && !self.frames.is_empty()
    }

    /// The declared size of what is being received and not yet complete
    /// (a frame whose body is awaited, a message whose last frame is, or
    /// a header cut short in `buf`), or `None` when nothing is under way.
    /// What a slow-message deadline is sized by.
    pub(crate) fn in_progress(&self, buf: &BytesMut) -> Option<u64> {
        match self.header {
            Some(h) => Some(self.message_len.max(h.len as u64)),
            None if !buf.is_empty() || self.mid_message() => {
                Some(self.message_len.max(buf.len() as u64))
            }
            None => None,
        }
    }

    /// Replaces the limits (a listener tightens them until a peer has
    /// proven itself). Takes effect from the next frame header.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// From now on every frame is a CURVE MESSAGE, opened with `rx`.
    pub(crate) fn set_curve(&mut self, rx: CurveRx) {
        self.curve = Some(rx);
    }

    /// The frames of the message [`decode`](Self::decode) just returned.
    /// Take them (`drain(..)`, `mem::take` of an element); what is left is
    /// dropped when the next message begins.
    pub fn frames(&mut self) -> &mut Vec<Bytes> {
        &mut self.frames
    }

    /// How many more bytes `buf` needs before the next frame can complete
    /// (at least 1): a driver reserves this much before reading. Bounded by
    /// the limits, since a header is checked before its body is awaited.
    pub fn wants(&self, buf: &BytesMut) -> usize {
        let need = match self.header {
            Some(h) => h.len,
            None => match buf.first() {
                Some(&flags) if flags & LONG != 0 => 9,
                _ => 2,
            },
        };
        need.saturating_sub(buf.len()).max(1)
    }

    /// Decodes the next message or command from the front of `buf`,
    /// consuming what it uses. `Ok(None)`: more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ZmtpError> {
        if self.complete {
            self.frames.clear();
            self.complete = false;
        }
        loop {
            let header = match self.header {
                Some(h) => h,
                None => match self.read_header(buf)? {
                    Some(h) => h,
                    None => return Ok(None),
                },
            };
            if buf.len() < header.len {
                self.header = Some(header);
                return Ok(None);
            }
            self.header = None;
            if let Some(rx) = self.curve.as_mut() {
                // Owned bytes: the box opens where it lies.
                let (flags, body) = rx.open(buf.split_to(header.len))?;
                if flags & BOX_COMMAND != 0 {
                    self.check_command(body.len() as u64)?;
                    return Ok(Some(Decoded::Command(body)));
                }
                self.message_len = self.check_part(body.len() as u64)?;
                self.frames.push(body);
                if flags & BOX_MORE == 0 {
                    self.complete = true;
                    self.message_len = 0;
                    return Ok(Some(Decoded::Message));
                }
                continue;
            }
            let body = if header.len == 0 {
                Bytes::new()
            } else {
                buf.split_to(header.len).freeze()
            };
            if header.command {
                return Ok(Some(Decoded::Command(body)));
            }
            self.frames.push(body);
            if !header.more {
                self.complete = true;
                self.message_len = 0;
                return Ok(Some(Decoded::Message));
            }
        }
    }

    /// Reads and checks the next frame header, if all of it is there.
    fn read_header(&mut self, buf: &mut BytesMut) -> Result<Option<Header>, ZmtpError> {
        let Some(&flags) = buf.first() else {
            return Ok(None);
        };
        if flags & !(MORE | LONG | COMMAND) != 0 || flags & (COMMAND | MORE) == COMMAND | MORE {
            return Err(ZmtpError::Flags(flags));
        }
        let (header_len, len) = if flags & LONG != 0 {
            match buf.get(1..9).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
                Some(size) => (9u64, u64::from_be_bytes(size)),
                None => return Ok(None),
            }
        } else {
            match buf.get(1) {
                Some(&size) => (2u64, u64::from(size)),
                None => return Ok(None),
            }
        };
        let command = flags & COMMAND != 0;
        if self.curve.is_some() {
            // A MESSAGE, in a data frame (libzmq) or a command frame (RFC
            // 37), never with MORE: the box carries the real flags.
            if flags & MORE != 0 {
                return Err(ZmtpError::Flags(flags));
            }
            let inner = len
                .checked_sub(MESSAGE_OVERHEAD as u64)
                .ok_or(ZmtpError::MalformedCommand("MESSAGE"))?;
            // Whether it holds a command or a message frame is sealed in
            // the box: before waiting for it, it must fit one of them (and
            // exactly its own kind once open).
            if self.check_command(inner).is_err() {
                self.check_part(inner)?;
            }
        } else if command {
            self.check_command(len)?;
        } else {
            self.message_len = self.check_part_with_header(header_len, len)?;
        }
        buf.advance(header_len as usize);
        // Fits: it is at most a limit, and limits are usize.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Ok(Some(Header {
            command,
            more: flags & MORE != 0,
            len,
        }))
    }
}

impl FrameDecoder {
    /// Whether a command body of `len` is within the limit.
    fn check_command(&self, len: u64) -> Result<(), ZmtpError> {
        if len > self.limits.max_command as u64 {
            return Err(ZmtpError::CommandTooLarge {
                len,
                max: self.limits.max_command,
            });
        }
        Ok(())
    }

    /// Whether one more message frame of `len` octets after a header of
    /// `header_len` fits the limits: the message's new size if so.
    fn check_part_with_header(&self, header_len: u64, len: u64) -> Result<u64, ZmtpError> {
        if self.frames.len() >= self.limits.max_frames {
            return Err(ZmtpError::TooManyFrames {
                max: self.limits.max_frames,
            });
        }
        let total = self
            .message_len
            .saturating_add(header_len)
            .saturating_add(len);
        if total > self.limits.max_message {
            return Err(ZmtpError::MessageTooLarge {
                len: total,
                max: self.limits.max_message,
            });
        }
        Ok(total)
    }

    /// [`check_part_with_header`](Self::check_part_with_header) for a
    /// CURVE frame's plaintext, counted as NULL would frame it.
    fn check_part(&self, len: u64) -> Result<u64, ZmtpError> {
        self.check_part_with_header(if len > 255 { 9 } else { 2 }, len)
    }
}

/// Frames outgoing messages and commands into a buffer. Stateless for
/// NULL; for CURVE it holds the session key and the send-side nonce
/// counter and boxes every frame and command into a MESSAGE (encrypted in
/// place in `buf`), which is why every frame of a connection goes through
/// one encoder, in order.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The CURVE session's sending half (None: NULL, in clear); boxed so
    /// a NULL encoder stays one pointer wide.
    curve: Option<Box<CurveTx>>,
}

impl Encoder {
    /// The encoder of a NULL-mechanism connection.
    pub fn null() -> Self {
        Encoder { curve: None }
    }

    /// The encoder of an established CURVE session.
    pub(crate) fn curve(tx: CurveTx) -> Self {
        Encoder {
            curve: Some(Box::new(tx)),
        }
    }

    /// Appends a message of `frames`.
    pub fn message(&mut self, buf: &mut BytesMut, frames: &[&[u8]]) {
        let Some((last, first)) = frames.split_last() else {
            return;
        };
        if let Some(tx) = self.curve.as_mut() {
            for f in first {
                tx.frame(buf, BOX_MORE, f.len(), |b| b.put_slice(f));
            }
            tx.frame(buf, 0, last.len(), |b| b.put_slice(last));
            return;
        }
        let total: usize = frames.iter().map(|f| f.len() + 9).sum();
        buf.reserve(total);
        for f in first {
            put_header(buf, MORE, f.len());
            buf.put_slice(f);
        }
        put_header(buf, 0, last.len());
        buf.put_slice(last);
    }

    /// Appends a message of `head` frames and a last frame of exactly
    /// `len` bytes, which `write` puts into the buffer itself: a payload
    /// is formatted straight into the socket's buffer, without a copy of
    /// its own (under CURVE it is then encrypted where it was written).
    pub fn message_with(
        &mut self,
        buf: &mut BytesMut,
        head: &[&[u8]],
        len: usize,
        write: impl FnOnce(&mut BytesMut),
    ) {
        if let Some(tx) = self.curve.as_mut() {
            for f in head {
                tx.frame(buf, BOX_MORE, f.len(), |b| b.put_slice(f));
            }
            tx.frame(buf, 0, len, write);
            return;
        }
        let head_len: usize = head.iter().map(|f| f.len() + 9).sum();
        buf.reserve(head_len + len + 9);
        for f in head {
            put_header(buf, MORE, f.len());
            buf.put_slice(f);
        }
        put_header(buf, 0, len);
        let before = buf.len();
        write(buf);
        debug_assert_eq!(buf.len() - before, len, "message_with: length mismatch");
    }

    /// Appends a command frame with `body` (name and data); under CURVE a
    /// MESSAGE whose box flags say command, as libzmq 4.3 sends PING/PONG.
    pub fn command(&mut self, buf: &mut BytesMut, body: &[u8]) {
        if let Some(tx) = self.curve.as_mut() {
            tx.frame(buf, BOX_COMMAND, body.len(), |b| b.put_slice(body));
            return;
        }
        buf.reserve(body.len() + 9);
        put_header(buf, COMMAND, body.len());
        buf.put_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_message: 1000,
            max_frames: 4,
            max_command: 300,
        }
    }

    fn encode(frames: &[&[u8]]) -> BytesMut {
        let mut b = BytesMut::new();
        Encoder::null().message(&mut b, frames);
        b
    }

    #[test]
    fn round_trip_whole_and_byte_by_byte() {
        let mut stream = encode(&[b"", b"1-0-1-hello"]);
        Encoder::null().command(&mut stream, b"\x04PING\x00\x00");
        stream.extend_from_slice(&encode(&[&[7u8; 300]]));
        let whole = {
            let mut d = FrameDecoder::new(limits());
            let mut buf = stream.clone();
            let mut got = Vec::new();
            while let Some(x) = d.decode(&mut buf).unwrap() {
                got.push((x, d.frames().clone()));
            }
            assert!(buf.is_empty());
            got
        };
        assert_eq!(whole.len(), 3);
        assert_eq!(
            whole[0].1,
            vec![Bytes::new(), Bytes::from_static(b"1-0-1-hello")]
        );
        assert!(matches!(whole[1].0, Decoded::Command(_)));
        assert_eq!(whole[2].1[0].len(), 300);
        let mut d = FrameDecoder::new(limits());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in stream.iter() {
            assert!(d.wants(&buf) >= 1);
            buf.put_u8(b);
            while let Some(x) = d.decode(&mut buf).unwrap() {
                got.push((x, d.frames().clone()));
            }
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn limits_are_checked_on_the_header() {
        // A 2^40 header is refused with 9 bytes in hand.
        let mut buf = BytesMut::from(&[LONG][..]);
        buf.put_u64(1 << 40);
        let mut d = FrameDecoder::new(limits());
        assert_eq!(
            d.decode(&mut buf),
            Err(ZmtpError::MessageTooLarge {
                len: 9 + (1 << 40),
                max: 1000
            })
        );
        // Headers count: 600 empty MORE frames are 1200 bytes, over 1000,
        // but the frame limit (4) comes first.
        let mut flood = BytesMut::new();
        for _ in 0..600 {
            flood.put_slice(&[MORE, 0]);
        }
        let mut d = FrameDecoder::new(limits());
        assert_eq!(
            d.decode(&mut flood),
            Err(ZmtpError::TooManyFrames { max: 4 })
        );
        let mut d = FrameDecoder::new(Limits {
            max_frames: 10_000,
            ..limits()
        });
        let mut flood2 = BytesMut::new();
        for _ in 0..600 {
            flood2.put_slice(&[MORE, 0]);
        }
        assert!(matches!(
            d.decode(&mut flood2),
            Err(ZmtpError::MessageTooLarge {
                len: 1002,
                max: 1000
            })
        ));
        let mut cmd = BytesMut::from(&[COMMAND | LONG][..]);
        cmd.put_u64(301);
        assert_eq!(
            FrameDecoder::new(limits()).decode(&mut cmd),
            Err(ZmtpError::CommandTooLarge { len: 301, max: 300 })
        );
        for bad in [0x08u8, 0x80, COMMAND | MORE] {
            let mut b = BytesMut::from(&[bad, 0][..]);
            assert_eq!(
                FrameDecoder::new(limits()).decode(&mut b),
                Err(ZmtpError::Flags(bad))
            );
        }
    }

    #[test]
    fn a_new_message_starts_from_zero() {
        let mut d = FrameDecoder::new(limits());
        let mut buf = BytesMut::new();
        for _ in 0..10 {
            buf.extend_from_slice(&encode(&[&[1u8; 400], &[2u8; 400]]));
        }
        for _ in 0..10 {
            assert_eq!(d.decode(&mut buf).unwrap(), Some(Decoded::Message));
            assert_eq!(d.frames().len(), 2);
        }
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn wants_is_exact_and_bounded() {
        let mut d = FrameDecoder::new(limits());
        let mut buf = BytesMut::from(&[LONG][..]);
        assert_eq!(d.wants(&buf), 8);
        buf.put_u64(900);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.wants(&buf), 900);
        buf.put_slice(&[0; 100]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.wants(&buf), 800);
    }

    #[test]
    fn message_with_writes_in_place() {
        let mut a = BytesMut::new();
        Encoder::null().message_with(&mut a, &[b"id", b""], 300, |b| b.put_slice(&[9; 300]));
        assert_eq!(a, encode(&[b"id", b"", &[9; 300]]));
    }
}
