//! ZMTP commands (RFC 37, "Commands"): a command frame's body is a name
//! (1 to 255 ALPHA octets, length-prefixed) and data. Parsing takes the
//! body as `Bytes` and never indexes past what is there.
//!
//! ```text
//! ready    = %d5 "READY" metadata
//! error    = %d5 "ERROR" error-reason        ; short-size 0*255VCHAR
//! ping     = %d4 "PING" ping-ttl ping-context ; 2 octets, 0*16 octets
//! pong     = %d4 "PONG" ping-context
//! metadata = *(name value)                    ; name: short-size 1*255name-char
//!                                             ; value: 4-octet size, then data
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::{SocketType, ZmtpError};

/// Longest PING context RFC 37 allows (and the most a PONG echoes).
pub(crate) const MAX_PING_CONTEXT: usize = 16;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// READY: the sender's metadata (NULL mechanism; CURVE's READY is
    /// encrypted and read by its mechanism).
    Ready(Bytes),
    /// ERROR: the peer refuses the connection; the reason is for logs.
    Error(Bytes),
    /// PING: answer with PONG echoing `context`. `ttl` is in tenths of a
    /// second (0: none): the peer asks to be dropped if silent that long.
    Ping {
        /// Time-to-live in deciseconds.
        ttl: u16,
        /// Echoed back in the PONG (at most 16 octets).
        context: Bytes,
    },
    /// PONG: a sign of life (as is any traffic).
    Pong,
    /// Any other command (SUBSCRIBE, CANCEL, JOIN, LEAVE, a mechanism's
    /// handshake commands, or one we do not know): its name and data.
    Other {
        /// The command name.
        name: Bytes,
        /// What follows the name.
        data: Bytes,
    },
}

impl Command {
    /// Parses a command frame's body.
    pub fn parse(body: Bytes) -> Result<Command, ZmtpError> {
        let (&name_len, _) = body
            .split_first()
            .ok_or(ZmtpError::MalformedCommand("empty"))?;
        let name_end = 1 + usize::from(name_len);
        if name_len == 0 || body.len() < name_end {
            return Err(ZmtpError::MalformedCommand("name"));
        }
        let name = body.slice(1..name_end);
        if !name.iter().all(u8::is_ascii_alphabetic) {
            return Err(ZmtpError::MalformedCommand("name"));
        }
        let data = body.slice(name_end..);
        Ok(match &name[..] {
            b"READY" => Command::Ready(data),
            b"ERROR" => {
                let (&len, reason) = data
                    .split_first()
                    .ok_or(ZmtpError::MalformedCommand("ERROR"))?;
                if reason.len() != usize::from(len) {
                    return Err(ZmtpError::MalformedCommand("ERROR"));
                }
                Command::Error(data.slice(1..))
            }
            b"PING" => {
                let ttl = data
                    .get(..2)
                    .and_then(|t| <[u8; 2]>::try_from(t).ok())
                    .ok_or(ZmtpError::MalformedCommand("PING"))?;
                let context = data.slice(2..);
                if context.len() > MAX_PING_CONTEXT {
                    return Err(ZmtpError::MalformedCommand("PING"));
                }
                Command::Ping {
                    ttl: u16::from_be_bytes(ttl),
                    context,
                }
            }
            b"PONG" => {
                if data.len() > MAX_PING_CONTEXT {
                    return Err(ZmtpError::MalformedCommand("PONG"));
                }
                Command::Pong
            }
            _ => Command::Other { name, data },
        })
    }
}

/// Why READY's metadata was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A property name or value runs past the end of the command.
    #[error("a property runs past the end of the command")]
    Truncated,
    /// A property name is empty.
    #[error("a property name is empty")]
    EmptyName,
    /// A property name holds an octet outside ALPHA, DIGIT and `-_.+`.
    #[error("a property name holds an octet RFC 37 does not allow")]
    NameChar,
    /// A value is longer than 2^31-1 octets.
    #[error("a property value is longer than 2^31-1 octets")]
    ValueTooLong,
    /// `Socket-Type` or `Identity` appears twice (names are
    /// case-insensitive): which one counts would depend on the reader.
    #[error("the {0} property appears twice")]
    Duplicate(&'static str),
    /// No `Socket-Type` property.
    #[error("no Socket-Type property")]
    NoSocketType,
    /// `Socket-Type` is not one of RFC 37's types.
    #[error("unknown Socket-Type")]
    UnknownSocketType,
    /// `Identity` is longer than 255 octets.
    #[error("Identity is longer than 255 octets")]
    IdentityTooLong,
    /// `Identity` starts with a zero octet, which RFC 37 reserves for
    /// implementations (we give anonymous peers such ids).
    #[error("Identity starts with a zero octet")]
    IdentityReserved,
}

impl MetadataError {
    /// The reason an ERROR gives the peer for it.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            MetadataError::Truncated
            | MetadataError::EmptyName
            | MetadataError::NameChar
            | MetadataError::ValueTooLong => "malformed metadata",
            MetadataError::Duplicate(_) => "a property appears twice",
            MetadataError::NoSocketType | MetadataError::UnknownSocketType => {
                "no known Socket-Type"
            }
            MetadataError::IdentityTooLong | MetadataError::IdentityReserved => "invalid Identity",
        }
    }
}

/// The properties of a READY we act on, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The peer's socket type.
    pub socket_type: SocketType,
    /// The peer's routing id; empty when it announced none.
    pub identity: Bytes,
    /// Application properties (ZMTP 3.1's `X-` names), as given: for the
    /// socket layer above to read. Names keep their case; their values
    /// share the command's buffer.
    pub properties: Vec<(Bytes, Bytes)>,
}

impl Metadata {
    /// The first application property named `name` (compared without
    /// regard to case, as every property name is).
    pub fn property(&self, name: &[u8]) -> Option<&Bytes> {
        self.properties
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

const SOCKET_TYPE: &[u8] = b"Socket-Type";
const IDENTITY: &[u8] = b"Identity";

fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+')
}

impl Metadata {
    /// Parses READY's metadata exactly as RFC 37 gives it: every property
    /// is checked, names are case-insensitive, `Socket-Type` is required
    /// and neither it nor `Identity` may appear twice. Application
    /// properties (`X-` names) are kept; others are read past and ignored.
    pub fn parse(data: &Bytes) -> Result<Metadata, MetadataError> {
        let mut socket_type = None;
        let mut identity: Option<Bytes> = None;
        let mut properties = Vec::new();
        let mut at = 0usize;
        while at < data.len() {
            let name_len = usize::from(*data.get(at).ok_or(MetadataError::Truncated)?);
            at += 1;
            if name_len == 0 {
                return Err(MetadataError::EmptyName);
            }
            let name_at = at..at + name_len;
            let name = data.get(name_at.clone()).ok_or(MetadataError::Truncated)?;
            if !name.iter().copied().all(name_char) {
                return Err(MetadataError::NameChar);
            }
            at += name_len;
            let size: [u8; 4] = data
                .get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .ok_or(MetadataError::Truncated)?;
            at += 4;
            let value_len = u32::from_be_bytes(size);
            if value_len > i32::MAX as u32 {
                return Err(MetadataError::ValueTooLong);
            }
            let value_len = value_len as usize;
            let end = at
                .checked_add(value_len)
                .filter(|&e| e <= data.len())
                .ok_or(MetadataError::Truncated)?;
            if name.eq_ignore_ascii_case(SOCKET_TYPE) {
                if socket_type.is_some() {
                    return Err(MetadataError::Duplicate("Socket-Type"));
                }
                let value = data.get(at..end).ok_or(MetadataError::Truncated)?;
                socket_type =
                    Some(SocketType::parse(value).ok_or(MetadataError::UnknownSocketType)?);
            } else if name.eq_ignore_ascii_case(IDENTITY) {
                if identity.is_some() {
                    return Err(MetadataError::Duplicate("Identity"));
                }
                if value_len > 255 {
                    return Err(MetadataError::IdentityTooLong);
                }
                let value = data.slice(at..end);
                if value.first() == Some(&0) {
                    return Err(MetadataError::IdentityReserved);
                }
                identity = Some(value);
            } else if name.get(..2).is_some_and(|x| x.eq_ignore_ascii_case(b"X-")) {
                // Both ranges were read above: they are in the buffer.
                properties.push((data.slice(name_at), data.slice(at..end)));
            }
            at = end;
        }
        Ok(Metadata {
            socket_type: socket_type.ok_or(MetadataError::NoSocketType)?,
            identity: identity.unwrap_or_default(),
            properties,
        })
    }
}

/// READY's body: `Socket-Type` and, when not empty, `Identity`.
pub fn encode_ready_body(socket_type: SocketType, identity: &[u8]) -> Bytes {
    encode_ready_body_with(socket_type, identity, &[])
}

/// [`encode_ready_body`] with application properties after the two (names
/// 1-255 bytes of `A-Za-z0-9-_.+`, conventionally `X-...`).
pub fn encode_ready_body_with(
    socket_type: SocketType,
    identity: &[u8],
    properties: &[(Bytes, Bytes)],
) -> Bytes {
    let extra: usize = properties.iter().map(|(n, v)| 5 + n.len() + v.len()).sum();
    let mut b = BytesMut::with_capacity(64 + identity.len() + extra);
    b.put_u8(5);
    b.put_slice(b"READY");
    put_property(&mut b, SOCKET_TYPE, socket_type.as_str().as_bytes());
    if !identity.is_empty() {
        put_property(&mut b, IDENTITY, identity);
    }
    for (name, value) in properties {
        put_property(&mut b, name, value);
    }
    b.freeze()
}

fn put_property(b: &mut BytesMut, name: &[u8], value: &[u8]) {
    b.put_u8(name.len() as u8);
    b.put_slice(name);
    b.put_u32(value.len() as u32);
    b.put_slice(value);
}

/// ERROR's body; `reason` is cut to 255 octets.
pub(crate) fn error_body(reason: &str) -> Bytes {
    let reason = reason.as_bytes();
    let reason = &reason[..reason.len().min(255)];
    let mut b = BytesMut::with_capacity(7 + reason.len());
    b.put_u8(5);
    b.put_slice(b"ERROR");
    b.put_u8(reason.len() as u8);
    b.put_slice(reason);
    b.freeze()
}

/// PING's body with our TTL (deciseconds) and an empty context.
pub(crate) fn ping_body(ttl: u16) -> Bytes {
    let mut b = BytesMut::with_capacity(7);
    b.put_u8(4);
    b.put_slice(b"PING");
    b.put_u16(ttl);
    b.freeze()
}

/// PONG's body, echoing a PING's context.
pub(crate) fn pong_body(context: &[u8]) -> Bytes {
    let context = &context[..context.len().min(MAX_PING_CONTEXT)];
    let mut b = BytesMut::with_capacity(5 + context.len());
    b.put_u8(4);
    b.put_slice(b"PONG");
    b.put_slice(context);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(props: &[(&[u8], &[u8])]) -> Bytes {
        let mut b = BytesMut::new();
        for (n, v) in props {
            put_property(&mut b, n, v);
        }
        b.freeze()
    }

    #[test]
    fn ours_parses_back() {
        let body = encode_ready_body(SocketType::Dealer, b"alice");
        let Command::Ready(data) = Command::parse(body).unwrap() else {
            panic!("not READY")
        };
        let m = Metadata::parse(&data).unwrap();
        assert_eq!(m.socket_type, SocketType::Dealer);
        assert_eq!(&m.identity[..], b"alice");
        let anon = encode_ready_body(SocketType::Router, b"");
        let Command::Ready(data) = Command::parse(anon).unwrap() else {
            panic!()
        };
        assert!(Metadata::parse(&data).unwrap().identity.is_empty());
    }

    #[test]
    fn names_are_case_insensitive_and_duplicates_refused() {
        let m =
            Metadata::parse(&ready(&[(b"socket-TYPE", b"DEALER"), (b"IDENTITY", b"x")])).unwrap();
        assert_eq!(&m.identity[..], b"x");
        assert_eq!(
            Metadata::parse(&ready(&[
                (b"Socket-Type", b"DEALER"),
                (b"Identity", b"victim"),
                (b"identity", b"")
            ])),
            Err(MetadataError::Duplicate("Identity"))
        );
        assert_eq!(
            Metadata::parse(&ready(&[
                (b"Socket-Type", b"DEALER"),
                (b"socket-type", b"PUB")
            ])),
            Err(MetadataError::Duplicate("Socket-Type"))
        );
    }

    #[test]
    fn every_rule_is_checked() {
        let st: (&[u8], &[u8]) = (b"Socket-Type", b"DEALER");
        assert_eq!(
            Metadata::parse(&ready(&[])),
            Err(MetadataError::NoSocketType)
        );
        assert_eq!(
            Metadata::parse(&ready(&[(b"Socket-Type", b"dealer")])),
            Err(MetadataError::UnknownSocketType)
        );
        assert_eq!(
            Metadata::parse(&ready(&[st, (b"Identity", &[0, 1])])),
            Err(MetadataError::IdentityReserved)
        );
        assert_eq!(
            Metadata::parse(&ready(&[st, (b"Identity", &[7; 256])])),
            Err(MetadataError::IdentityTooLong)
        );
        assert_eq!(
            Metadata::parse(&ready(&[st, (b"X y", b"")])),
            Err(MetadataError::NameChar)
        );
        assert!(Metadata::parse(&ready(&[st, (b"X-App", b"anything")])).is_ok());
        let mut empty_name = ready(&[st]).to_vec();
        empty_name.push(0);
        assert_eq!(
            Metadata::parse(&Bytes::from(empty_name)),
            Err(MetadataError::EmptyName)
        );
        let mut huge = ready(&[st]).to_vec();
        huge.extend_from_slice(b"\x01X\xff\xff\xff\xff");
        assert_eq!(
            Metadata::parse(&Bytes::from(huge)),
            Err(MetadataError::ValueTooLong)
        );
        // Every truncation is an error, never a panic.
        let full = ready(&[st, (b"Identity", b"alice")]);
        let boundary = ready(&[st]).len();
        for cut in (1..full.len()).filter(|&c| c != boundary) {
            assert!(Metadata::parse(&full.slice(..cut)).is_err(), "{cut}");
        }
    }

    #[test]
    fn commands_parse_and_refuse_garbage() {
        let ping = Command::parse(Bytes::from_static(b"\x04PING\x00\x0actx")).unwrap();
        assert_eq!(
            ping,
            Command::Ping {
                ttl: 10,
                context: Bytes::from_static(b"ctx")
            }
        );
        assert!(Command::parse(Bytes::from_static(b"\x04PING\x00")).is_err());
        assert!(Command::parse(Bytes::from_static(b"\x04PING\x00\x00012345678901234567")).is_err());
        assert_eq!(Command::parse(pong_body(b"ctx")).unwrap(), Command::Pong);
        assert_eq!(
            Command::parse(error_body("no")).unwrap(),
            Command::Error(Bytes::from_static(b"no"))
        );
        assert!(Command::parse(Bytes::from_static(b"\x05ERROR\x05no")).is_err());
        assert!(Command::parse(Bytes::new()).is_err());
        assert!(Command::parse(Bytes::from_static(b"\x00")).is_err());
        assert!(Command::parse(Bytes::from_static(b"\x09SUBSC")).is_err());
        assert!(Command::parse(Bytes::from_static(b"\x02A1")).is_err());
        assert!(matches!(
            Command::parse(Bytes::from_static(b"\x09SUBSCRIBEtopic")).unwrap(),
            Command::Other { .. }
        ));
        assert_eq!(
            Command::parse(ping_body(300)).unwrap(),
            Command::Ping {
                ttl: 300,
                context: Bytes::new()
            }
        );
    }
}
