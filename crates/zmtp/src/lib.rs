#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

mod command;
mod crypto;
mod curve;
mod engine;
mod frame;
mod greeting;
mod header;
mod keys;
mod mechanism;

pub use command::{Command, Metadata, MetadataError, encode_ready_body, encode_ready_body_with};
pub use engine::{Engine, EngineConfig, Event, Heartbeat, PeerInfo, ReceivePace, Role};
pub use frame::{Decoded, Encoder, FrameDecoder};
pub use greeting::{GREETING_LEN, Greeting};
pub use keys::{
    CURVE_KEY_LEN, CURVE_KEY_Z85_LEN, CurveKeyError, CurveKeyPair, CurvePublicKey, CurveSecretKey,
};
pub use mechanism::{MechanismConfig, MechanismName};

use std::fmt;

/// The ZMQ socket types RFC 37 names, for the `Socket-Type` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketType {
    /// REQ
    Req,
    /// REP
    Rep,
    /// DEALER: what our connections are.
    Dealer,
    /// ROUTER: what our listeners are.
    Router,
    /// PUB
    Pub,
    /// XPUB
    Xpub,
    /// SUB
    Sub,
    /// XSUB
    Xsub,
    /// PUSH
    Push,
    /// PULL
    Pull,
    /// PAIR
    Pair,
    /// CLIENT
    Client,
    /// SERVER
    Server,
    /// RADIO
    Radio,
    /// DISH
    Dish,
    /// SCATTER
    Scatter,
    /// GATHER
    Gather,
    /// PEER
    Peer,
    /// CHANNEL
    Channel,
}

const SOCKET_TYPES: [(SocketType, &str); 19] = [
    (SocketType::Req, "REQ"),
    (SocketType::Rep, "REP"),
    (SocketType::Dealer, "DEALER"),
    (SocketType::Router, "ROUTER"),
    (SocketType::Pub, "PUB"),
    (SocketType::Xpub, "XPUB"),
    (SocketType::Sub, "SUB"),
    (SocketType::Xsub, "XSUB"),
    (SocketType::Push, "PUSH"),
    (SocketType::Pull, "PULL"),
    (SocketType::Pair, "PAIR"),
    (SocketType::Client, "CLIENT"),
    (SocketType::Server, "SERVER"),
    (SocketType::Radio, "RADIO"),
    (SocketType::Dish, "DISH"),
    (SocketType::Scatter, "SCATTER"),
    (SocketType::Gather, "GATHER"),
    (SocketType::Peer, "PEER"),
    (SocketType::Channel, "CHANNEL"),
];

impl SocketType {
    /// The name as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        SOCKET_TYPES
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("", |(_, s)| s)
    }

    /// Parses a `Socket-Type` value. RFC 37 spells the types in upper case
    /// and libzmq compares them exactly, so we do too.
    pub fn parse(value: &[u8]) -> Option<SocketType> {
        SOCKET_TYPES
            .iter()
            .find(|(_, s)| s.as_bytes() == value)
            .map(|(t, _)| *t)
    }

    /// Whether a peer of type `peer` may talk to a socket of this type
    /// (RFC 37, "The Socket-Type Property").
    pub fn accepts(self, peer: SocketType) -> bool {
        use SocketType::*;
        match self {
            Req => matches!(peer, Rep | Router),
            Rep => matches!(peer, Req | Dealer),
            Dealer => matches!(peer, Rep | Dealer | Router),
            Router => matches!(peer, Req | Dealer | Router),
            Pub | Xpub => matches!(peer, Sub | Xsub),
            Sub | Xsub => matches!(peer, Pub | Xpub),
            Push => peer == Pull,
            Pull => peer == Push,
            Pair => peer == Pair,
            Client => peer == Server,
            Server => peer == Client,
            Radio => peer == Dish,
            Dish => peer == Radio,
            Scatter => peer == Gather,
            Gather => peer == Scatter,
            Peer => peer == Peer,
            Channel => peer == Channel,
        }
    }
}

impl fmt::Display for SocketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ZmtpError {
    /// The error for an ERROR command from the peer, its reason escaped.
    pub(crate) fn peer_error(reason: &[u8]) -> ZmtpError {
        ZmtpError::PeerError {
            reason: reason.escape_ascii().to_string(),
        }
    }
}

/// What one connection may make us hold. Every limit is checked against a
/// frame's header, before a byte of its body is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one multipart message as it crossed the wire, every
    /// frame's flags and size octets included, so a stream of empty frames
    /// costs as much as its bytes. Default 16 MiB plus 4 KiB for routing
    /// frames and headers.
    pub max_message: u64,
    /// Frames in one multipart message. Our protocol uses at most five
    /// (NoisePage's ACKs with routing frames in front); each frame held
    /// costs a `Bytes` handle. Default 32.
    pub max_frames: usize,
    /// Body of one command frame. READY carries a routing id of at most
    /// 255 bytes and a few properties; CURVE's INITIATE about 300 bytes
    /// plus metadata. Default 64 KiB.
    pub max_command: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: (16 << 20) + 4096,
            max_frames: 32,
            max_command: 64 << 10,
        }
    }
}

/// Why a ZMTP connection must end. Each names a rule of RFC 37 (or a limit
/// of ours) the peer broke, or the event that ended it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZmtpError {
    /// The greeting is not ZMTP 3.x.
    #[error("bad greeting: {0}")]
    Greeting(&'static str),
    /// The peer announced another security mechanism than ours.
    #[error("the peer's mechanism {theirs} is not ours ({ours})")]
    MechanismMismatch {
        /// Ours.
        ours: MechanismName,
        /// The peer's.
        theirs: MechanismName,
    },
    /// A frame's flags octet has reserved bits set, or a command has MORE.
    #[error("frame flags {0:#04x} are not valid")]
    Flags(u8),
    /// A message's frames and their headers add up to more than allowed.
    #[error("message of at least {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Bytes so far, the offending frame's declared size included.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A message has more frames than allowed.
    #[error("message of more than {max} frames")]
    TooManyFrames {
        /// The limit.
        max: usize,
    },
    /// A command frame is larger than allowed.
    #[error("command of {len} bytes exceeds the limit of {max}")]
    CommandTooLarge {
        /// Declared size.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A command's body does not follow its grammar.
    #[error("malformed {0} command")]
    MalformedCommand(&'static str),
    /// READY's metadata does not follow RFC 37.
    #[error("malformed READY metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// A command the handshake does not allow at this point.
    #[error("unexpected command during the handshake")]
    UnexpectedCommand,
    /// A message frame before the handshake finished.
    #[error("message frame before the handshake finished")]
    MessageBeforeReady,
    /// The peer's socket type cannot talk to ours.
    #[error("peer socket type {theirs} cannot talk to {ours}")]
    SocketType {
        /// Ours.
        ours: SocketType,
        /// The peer's.
        theirs: SocketType,
    },
    /// The peer sent an ERROR command.
    #[error("the peer refused the connection: {reason}")]
    PeerError {
        /// Its reason (at most 255 bytes of the peer's choosing), escaped
        /// as Rust escapes a byte string: printable ASCII as is, anything
        /// else (newlines, ESC, non-ASCII) as `\n`, `\x1b`, ..., so it can
        /// reach a log or a terminal without forging lines or sequences.
        reason: String,
    },
    /// We refused the peer (an ERROR command was queued for it).
    #[error("refused: {0}")]
    Refused(&'static str),
    /// The handshake did not finish in time.
    #[error("no handshake within the time allowed")]
    HandshakeTimeout,
    /// A message (or command) begun did not finish within its deadline:
    /// [`ReceivePace::timeout`] plus its declared size at
    /// [`ReceivePace::min_rate`].
    #[error("a message of {len} bytes did not arrive within its deadline")]
    SlowMessage {
        /// Its declared size so far.
        len: u64,
    },
    /// Nothing arrived within the heartbeat timeout after a PING, or within
    /// the TTL the peer's PING asked for.
    #[error("heartbeat timed out: no traffic from the peer")]
    HeartbeatTimeout,
    /// The engine was used after it failed or was refused.
    #[error("the connection is closed")]
    Closed,
    /// A CURVE box did not open: forged, tampered with, or sealed with
    /// other keys (a client with the wrong server key gets this for
    /// WELCOME). Names the box: HELLO, WELCOME, cookie, INITIATE, vouch,
    /// READY, MESSAGE.
    #[error("the CURVE {0} box does not open: tampered with or the wrong key")]
    BadBox(&'static str),
    /// A CURVE short nonce did not increase: a replayed or reordered
    /// command.
    #[error("the CURVE {0} nonce does not increase (replayed or reordered)")]
    Nonce(&'static str),
    /// The vouch in INITIATE does not name this connection's transient
    /// key and our permanent key: a vouch lifted from another connection.
    #[error("the CURVE vouch does not name this connection's keys")]
    Vouch,
    /// The peer's HELLO is of another CurveZMQ version than 1.0.
    #[error("the CURVE HELLO is not version 1.0")]
    CurveVersion,
    /// The peer sent a key of small order, whose shared secret would be
    /// zero (`crypto_box_beforenm` refuses it, as libsodium's does).
    #[error("the peer's CURVE key is of small order")]
    WeakKey,
    /// The operating system's random number generator failed (keys and
    /// long nonces cannot be made).
    #[error("the system random number generator failed")]
    Rng,
    /// A box could not be sealed (not seen in practice).
    #[error("a CURVE box could not be sealed")]
    Crypto,
}
