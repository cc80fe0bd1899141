//! The ZMTP frame guard: a byte-stream inspector that sits in front of the
//! `zeromq` crate's decoder. Pure state machine, no I/O.
//!
//! The crate trusts the length in every frame header and reserves that much
//! memory before reading the body, so one 80-byte header declaring 2^40
//! bytes aborts the process. Every byte a peer sends passes through
//! [`FrameGuard::feed`] first; the relay forwards it only if the guard
//! accepts it, and drops the connection otherwise.
//!
//! ZMTP 3.x, as the guard checks it:
//!
//! ```text
//! greeting = 0xFF 8*OCTET 0x7F      ; signature (10 bytes)
//!            major minor            ; version, major >= 3
//!            mechanism              ; 20 bytes, "NULL" padded with 0x00
//!            as-server 31*0x00      ; 1 + 31 bytes
//! frame    = flags size body
//! flags    = 0b00000CLM             ; C: command, L: long size, M: more; bits 3-7 zero
//! size     = OCTET | 8OCTET         ; 8 bytes big-endian when L is set
//! ```

/// Largest command frame accepted (READY carries a socket type and an
/// identity of at most 255 bytes; 64 KiB is generous).
pub const MAX_COMMAND: u64 = 64 * 1024;

const GREETING_LEN: usize = 64;

/// Why the guard refused a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The first 64 bytes are not a ZMTP 3 NULL-mechanism greeting.
    #[error("bad greeting: {0}")]
    Greeting(&'static str),
    /// Reserved flag bits set.
    #[error("bad frame flags {0:#04x}")]
    Flags(u8),
    /// A frame, or a multipart message, declared more bytes than allowed.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared length (a message's running total for multipart).
        len: u64,
        /// The limit.
        max: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Greeting {
        have: usize,
    },
    Flags,
    Size {
        long: bool,
        command: bool,
        more: bool,
        have: usize,
        acc: u64,
    },
    Body {
        remaining: u64,
        command: bool,
        more: bool,
    },
}

/// Checks one direction of one ZMTP connection.
#[derive(Debug, Clone)]
pub struct FrameGuard {
    state: State,
    greeting: [u8; GREETING_LEN],
    max_message: u64,
    /// Bytes of the multipart message in progress.
    message_total: u64,
    /// Command frames completed: READY is the first.
    commands_seen: u64,
    /// Collects the first data message (for authentication), if asked.
    capture: Option<Capture>,
    /// The first command's body (READY), kept up to [`READY_LIMIT`] bytes.
    ready: Vec<u8>,
}

/// Bytes of the READY command kept to read the peer's identity from.
const READY_LIMIT: usize = 1024;

/// The `Identity` property of a ZMTP READY command body, if present and
/// non-empty. Bounds-checked throughout: the body comes from a peer.
pub fn ready_identity(body: &[u8]) -> Option<&[u8]> {
    let rest = body.strip_prefix(b"\x05READY")?;
    let mut rest = rest;
    while let Some((&name_len, after)) = rest.split_first() {
        let name = after.get(..usize::from(name_len))?;
        let after = after.get(usize::from(name_len)..)?;
        let len_bytes: [u8; 4] = after.get(..4)?.try_into().ok()?;
        let value_len = u32::from_be_bytes(len_bytes) as usize;
        let value = after.get(4..4usize.checked_add(value_len)?)?;
        if name.eq_ignore_ascii_case(b"Identity") {
            return (!value.is_empty()).then_some(value);
        }
        rest = after.get(4 + value_len..)?;
    }
    None
}

#[derive(Debug, Clone, Default)]
struct Capture {
    limit: usize,
    frames: Vec<Vec<u8>>,
    current: Vec<u8>,
    done: bool,
}

impl FrameGuard {
    /// A guard allowing data messages of up to `max_message` bytes in all
    /// frames together (the protocol's payload plus its routing frames).
    pub fn new(max_message: u64) -> Self {
        FrameGuard {
            state: State::Greeting { have: 0 },
            greeting: [0; GREETING_LEN],
            max_message,
            message_total: 0,
            commands_seen: 0,
            capture: None,
            ready: Vec::new(),
        }
    }

    /// The routing id the peer announced in its READY, once the handshake
    /// is done (None for an anonymous peer).
    pub fn peer_identity(&self) -> Option<&[u8]> {
        if self.handshake_done() {
            ready_identity(&self.ready)
        } else {
            None
        }
    }

    /// Also collects the first data message, up to `limit` bytes in all its
    /// frames (larger is refused), for [`first_message`](Self::first_message).
    pub fn capture_first_message(mut self, limit: usize) -> Self {
        self.capture = Some(Capture {
            limit,
            ..Capture::default()
        });
        self
    }

    /// The frames of the first data message, once it is complete.
    pub fn first_message(&self) -> Option<&[Vec<u8>]> {
        self.capture
            .as_ref()
            .filter(|c| c.done)
            .map(|c| c.frames.as_slice())
    }

    /// Whether the greeting and the first command (READY) have passed: the
    /// handshake, as far as this side of it goes.
    pub fn handshake_done(&self) -> bool {
        self.commands_seen > 0
    }

    /// Inspects the next bytes of the stream. An error means the stream
    /// must be cut before these bytes go anywhere.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), GuardError> {
        while !bytes.is_empty() {
            match self.state {
                State::Greeting { have } => {
                    let take = (GREETING_LEN - have).min(bytes.len());
                    let (chunk, rest) = bytes.split_at(take);
                    if let Some(dst) = self.greeting.get_mut(have..have + take) {
                        dst.copy_from_slice(chunk);
                    }
                    bytes = rest;
                    let have = have + take;
                    // Check the signature as soon as it is there, so garbage
                    // is refused without waiting for 64 bytes.
                    if have >= 1 && self.greeting[0] != 0xFF {
                        return Err(GuardError::Greeting("first byte is not 0xFF"));
                    }
                    if have >= 10 && self.greeting[9] != 0x7F {
                        return Err(GuardError::Greeting("signature does not end with 0x7F"));
                    }
                    if have >= 11 && self.greeting[10] < 3 {
                        return Err(GuardError::Greeting("ZMTP version below 3"));
                    }
                    self.state = if have == GREETING_LEN {
                        if !self.greeting[12..32].starts_with(b"NULL")
                            || self.greeting[16..32].iter().any(|&b| b != 0)
                        {
                            return Err(GuardError::Greeting("mechanism is not NULL"));
                        }
                        State::Flags
                    } else {
                        State::Greeting { have }
                    };
                }
                State::Flags => {
                    let (&flags, rest) = bytes.split_first().unwrap_or((&0, &[]));
                    bytes = rest;
                    if flags & !0b111 != 0 {
                        return Err(GuardError::Flags(flags));
                    }
                    self.state = State::Size {
                        long: flags & 0b010 != 0,
                        command: flags & 0b100 != 0,
                        more: flags & 0b001 != 0,
                        have: 0,
                        acc: 0,
                    };
                }
                State::Size {
                    long,
                    command,
                    more,
                    have,
                    acc,
                } => {
                    let need = if long { 8 } else { 1 };
                    let take = (need - have).min(bytes.len());
                    let mut acc = acc;
                    for &b in bytes.iter().take(take) {
                        acc = (acc << 8) | u64::from(b);
                    }
                    bytes = bytes.get(take..).unwrap_or(&[]);
                    let have = have + take;
                    if have < need {
                        self.state = State::Size {
                            long,
                            command,
                            more,
                            have,
                            acc,
                        };
                        continue;
                    }
                    self.check_size(acc, command)?;
                    self.state = State::Body {
                        remaining: acc,
                        command,
                        more,
                    };
                    self.end_frame_if_empty();
                }
                State::Body {
                    remaining,
                    command,
                    more,
                } => {
                    let take = remaining.min(bytes.len() as u64);
                    let body = bytes.get(..take as usize).unwrap_or(&[]);
                    if !command {
                        self.collect(body)?;
                    } else if self.commands_seen == 0 {
                        let room = READY_LIMIT.saturating_sub(self.ready.len());
                        self.ready
                            .extend_from_slice(body.get(..room.min(body.len())).unwrap_or(&[]));
                    }
                    bytes = bytes.get(take as usize..).unwrap_or(&[]);
                    self.state = State::Body {
                        remaining: remaining - take,
                        command,
                        more,
                    };
                    self.end_frame_if_empty();
                }
            }
        }
        Ok(())
    }

    fn check_size(&mut self, len: u64, command: bool) -> Result<(), GuardError> {
        if command {
            if len > MAX_COMMAND {
                return Err(GuardError::TooLarge {
                    len,
                    max: MAX_COMMAND,
                });
            }
            return Ok(());
        }
        let total = self.message_total.saturating_add(len);
        if total > self.max_message {
            return Err(GuardError::TooLarge {
                len: total,
                max: self.max_message,
            });
        }
        self.message_total = total;
        Ok(())
    }

    fn collect(&mut self, body: &[u8]) -> Result<(), GuardError> {
        let Some(c) = self.capture.as_mut().filter(|c| !c.done) else {
            return Ok(());
        };
        let so_far = c.frames.iter().map(Vec::len).sum::<usize>() + c.current.len();
        if so_far + body.len() > c.limit {
            return Err(GuardError::TooLarge {
                len: (so_far + body.len()) as u64,
                max: c.limit as u64,
            });
        }
        c.current.extend_from_slice(body);
        Ok(())
    }

    fn end_frame_if_empty(&mut self) {
        let State::Body {
            remaining: 0,
            command,
            more,
        } = self.state
        else {
            return;
        };
        if command {
            self.commands_seen += 1;
        } else {
            if let Some(c) = self.capture.as_mut().filter(|c| !c.done) {
                c.frames.push(std::mem::take(&mut c.current));
                c.done = !more;
            }
            if !more {
                self.message_total = 0;
            }
        }
        self.state = State::Flags;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting() -> Vec<u8> {
        let mut g = vec![0u8; 64];
        g[0] = 0xFF;
        g[9] = 0x7F;
        g[10] = 3;
        g[12..16].copy_from_slice(b"NULL");
        g
    }

    fn ready() -> Vec<u8> {
        let body = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER";
        let mut f = vec![0b100, body.len() as u8];
        f.extend_from_slice(body);
        f
    }

    fn short(more: bool, body: &[u8]) -> Vec<u8> {
        let mut f = vec![u8::from(more), body.len() as u8];
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_normal_stream_passes_byte_by_byte_and_whole() {
        let mut stream = greeting();
        stream.extend(ready());
        stream.extend(short(true, b""));
        stream.extend(short(false, b"1-0-1-hello"));
        let mut whole = FrameGuard::new(1024);
        assert_eq!(whole.feed(&stream), Ok(()));
        assert!(whole.handshake_done());
        let mut bytewise = FrameGuard::new(1024);
        for b in &stream {
            assert_eq!(bytewise.feed(std::slice::from_ref(b)), Ok(()));
        }
        assert!(bytewise.handshake_done());
    }

    #[test]
    fn the_one_tebibyte_header_is_refused() {
        let mut stream = greeting();
        stream.extend(ready());
        stream.push(0b010); // long data frame
        stream.extend((1u64 << 40).to_be_bytes());
        let mut g = FrameGuard::new(16 << 20);
        assert_eq!(
            g.feed(&stream),
            Err(GuardError::TooLarge {
                len: 1 << 40,
                max: 16 << 20
            })
        );
    }

    #[test]
    fn multipart_totals_count() {
        let mut g = FrameGuard::new(10);
        let mut stream = greeting();
        stream.extend(ready());
        stream.extend(short(true, b"123456"));
        assert_eq!(g.feed(&stream), Ok(()));
        assert!(matches!(
            g.feed(&short(false, b"123456")),
            Err(GuardError::TooLarge { len: 12, .. })
        ));
        // A new message starts from zero.
        let mut g = FrameGuard::new(10);
        g.feed(&stream).unwrap();
        let mut g2 = FrameGuard::new(10);
        let mut s2 = greeting();
        s2.extend(short(false, b"123456"));
        s2.extend(short(false, b"123456"));
        assert_eq!(g2.feed(&s2), Ok(()));
    }

    #[test]
    fn reads_the_identity_from_ready() {
        let mut body = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER".to_vec();
        body.extend(b"\x08Identity\x00\x00\x00\x05alice");
        assert_eq!(ready_identity(&body), Some(&b"alice"[..]));
        assert_eq!(
            ready_identity(b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"),
            None
        );
        // Truncated or lying lengths give None, never a panic.
        for cut in 0..body.len() {
            let _ = ready_identity(&body[..cut]);
        }
        assert_eq!(
            ready_identity(b"\x05READY\x08Identity\xff\xff\xff\xffx"),
            None
        );
        let mut stream = greeting();
        let mut f = vec![0b100, body.len() as u8];
        f.extend(&body);
        stream.extend(f);
        let mut g = FrameGuard::new(64);
        g.feed(&stream).unwrap();
        assert_eq!(g.peer_identity(), Some(&b"alice"[..]));
    }

    #[test]
    fn captures_the_first_message_only() {
        let mut s = greeting();
        s.extend(ready());
        s.extend(short(true, b""));
        s.extend(short(false, b"0-0-3-proof"));
        s.extend(short(true, b""));
        s.extend(short(false, b"1-0-0-next"));
        let mut g = FrameGuard::new(1024).capture_first_message(64);
        for b in &s {
            g.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(
            g.first_message(),
            Some(&[b"".to_vec(), b"0-0-3-proof".to_vec()][..])
        );
        let mut big = greeting();
        big.extend(short(false, &[b'x'; 100]));
        let mut g = FrameGuard::new(1024).capture_first_message(64);
        assert!(matches!(
            g.feed(&big),
            Err(GuardError::TooLarge { max: 64, .. })
        ));
    }

    #[test]
    fn garbage_and_big_commands_are_refused() {
        assert!(matches!(
            FrameGuard::new(9).feed(b"GET / HTTP/1.1\r\n"),
            Err(GuardError::Greeting(_))
        ));
        let mut old = greeting();
        old[10] = 2;
        assert!(matches!(
            FrameGuard::new(9).feed(&old),
            Err(GuardError::Greeting(_))
        ));
        let mut curve = greeting();
        curve[12..17].copy_from_slice(b"CURVE");
        assert!(matches!(
            FrameGuard::new(9).feed(&curve),
            Err(GuardError::Greeting(_))
        ));
        let mut s = greeting();
        s.push(0b110);
        s.extend((MAX_COMMAND + 1).to_be_bytes());
        assert!(matches!(
            FrameGuard::new(9).feed(&s),
            Err(GuardError::TooLarge { .. })
        ));
        let mut s = greeting();
        s.push(0x80);
        assert_eq!(FrameGuard::new(9).feed(&s), Err(GuardError::Flags(0x80)));
    }
}
