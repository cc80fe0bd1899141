//! The CURVE mechanism (RFC 25, CurveZMQ RFC 26) as libzmq 4.3 speaks it:
//! the handshake's four commands, and the MESSAGE boxes that carry every
//! frame and command after it.
//!
//! ```text
//! C: HELLO    200  %d5 "HELLO" 1 0  72 zeros  C'  nonce8  Box[64 zeros](C'->S)
//! S: WELCOME  168  %d7 "WELCOME"  nonce16  Box[S' cookie](S->C')
//!                  cookie = nonce16 SecretBox[C' s'](K), K fresh per connection
//! C: INITIATE 257+ %d8 "INITIATE"  cookie  nonce8  Box[C vouch metadata](C'->S')
//!                  vouch = nonce16 Box[C' S](C->S')
//! S: READY    30+  %d5 "READY"  nonce8  Box[metadata](S'->C')
//! then both:  33+  %d7 "MESSAGE"  nonce8  Box[flags body](S'<->C')
//! ```
//!
//! Boxes are NaCl's `crypto_box` (X25519, XSalsa20-Poly1305) and the cookie
//! is `crypto_secretbox`, as libzmq's (libsodium's there, dryoc's port of
//! them here: see `crypto.rs`);
//! every box between two keys uses the key precomputed once for them
//! (`crypto_box_beforenm`), and MESSAGE boxes are sealed and opened where
//! they lie. On the wire a box is its 16-octet tag followed by the
//! ciphertext, as libsodium's `crypto_box_easy` writes it.
//!
//! Nonces: long ones (WELCOME, cookie, vouch) are 16 random octets behind an
//! 8-octet prefix; short ones (HELLO, INITIATE, READY, MESSAGE) are a
//! per-direction counter behind a 16-octet prefix, which the receiver checks
//! strictly increases. As libzmq, the client numbers HELLO 1, INITIATE 2 and
//! its messages from 3; the server numbers READY 1 and its messages from 2.
//!
//! Where libzmq is more specific than the RFC we follow libzmq:
//!
//! - MESSAGE travels in a ZMTP frame with flags 0 (libzmq replaces the
//!   message it boxes, dropping the command flag), not a command frame as
//!   RFC 37 asks. We send it so, because libzmq ORs the outer frame's
//!   command flag into the unboxed message and would take our data for a
//!   command; we accept both.
//! - The box's flags octet: 0x01 MORE, 0x02 COMMAND. libzmq 4.3 boxes the
//!   commands it sends after the handshake (PING, PONG, SUBSCRIBE) as
//!   MESSAGEs with 0x02.
//! - ERROR stays a plaintext command, sent only by the server. libzmq
//!   reports only a 3-digit reason from 300 to 599 (ZAP's status codes,
//!   e.g. "400") to its application, as a handshake authentication
//!   failure; any other reason just closes the connection there.
//! - libzmq never sets the greeting's as-server flag (RFC 25 says the
//!   CURVE server sets it). We set it as a server, and refuse only a peer
//!   that claims to be a server when we are one.
//!
//! Every field is checked before anything is acted on: exact sizes, names,
//! the HELLO padding and signature, boxes, the cookie (only the one this
//! connection issued opens), the vouch (it must name this connection's C'
//! and our S), short nonces, metadata, and that no peer key is of small
//! order (`crypto_box_beforenm` refuses those, as libsodium's does: the
//! shared secret would be zero).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::ZmtpError;
use super::command::{Command, Metadata, error_body};
use super::crypto::{self, BoxKey, Cipher, Nonce, SecretBoxKey, TAG_LEN};
use super::header::put_header;
use super::keys::{CURVE_KEY_LEN, CurveKeyError, CurveKeyPair, CurvePublicKey};

const HELLO: &[u8] = b"\x05HELLO";
const WELCOME: &[u8] = b"\x07WELCOME";
const INITIATE: &[u8] = b"\x08INITIATE";
const READY: &[u8] = b"\x05READY";
const ERROR: &[u8] = b"\x05ERROR";
/// The name of the command that carries every frame after the handshake.
pub(crate) const MESSAGE: &[u8] = b"\x07MESSAGE";

const HELLO_LEN: usize = 200;
const WELCOME_LEN: usize = 168;
const INITIATE_MIN: usize = 257;
const READY_MIN: usize = 30;
/// A MESSAGE's octets beyond the frame it carries: name 8, nonce 8, tag
/// 16, flags 1.
pub(crate) const MESSAGE_OVERHEAD: usize = 33;

/// The flags octet inside a MESSAGE box (libzmq's `msg_t` flags).
pub(crate) const BOX_MORE: u8 = 0x01;
/// The boxed frame is a command (PING, PONG, ...).
pub(crate) const BOX_COMMAND: u8 = 0x02;

const COOKIE_LEN: usize = 96;
const VOUCH_LEN: usize = 96;
/// Where the metadata starts in INITIATE's plaintext: C, then the vouch.
const INITIATE_META: usize = CURVE_KEY_LEN + VOUCH_LEN;

const HELLO_PREFIX: &[u8; 16] = b"CurveZMQHELLO---";
const WELCOME_PREFIX: &[u8; 8] = b"WELCOME-";
const COOKIE_PREFIX: &[u8; 8] = b"COOKIE--";
const INITIATE_PREFIX: &[u8; 16] = b"CurveZMQINITIATE";
const VOUCH_PREFIX: &[u8; 8] = b"VOUCH---";
const READY_PREFIX: &[u8; 16] = b"CurveZMQREADY---";
const MESSAGE_C: &[u8; 16] = b"CurveZMQMESSAGEC";
const MESSAGE_S: &[u8; 16] = b"CurveZMQMESSAGES";

/// A short nonce: a 16-octet prefix and a counter.
fn short_nonce(prefix: &[u8; 16], n: u64) -> Nonce {
    let mut nonce = [0u8; crypto::NONCE_LEN];
    nonce[..16].copy_from_slice(prefix);
    nonce[16..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// A long nonce: an 8-octet prefix and 16 octets (random when we make one).
fn long_nonce(prefix: &[u8; 8], tail: &[u8; 16]) -> Nonce {
    let mut nonce = [0u8; crypto::NONCE_LEN];
    nonce[..8].copy_from_slice(prefix);
    nonce[8..].copy_from_slice(tail);
    nonce
}

fn random<const N: usize>() -> Result<[u8; N], ZmtpError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| ZmtpError::Rng)?;
    Ok(bytes)
}

/// A fresh cookie key K: 32 random octets, drawn where they are kept and
/// wiped when dropped.
fn cookie_key() -> Result<SecretBoxKey, ZmtpError> {
    let mut key = Zeroizing::new([0u8; crypto::KEY_LEN]);
    getrandom::fill(key.as_mut_slice()).map_err(|_| ZmtpError::Rng)?;
    Ok(SecretBoxKey::new(key))
}

/// `N` octets of `bytes` from `at`, or the error.
fn field<const N: usize>(bytes: &[u8], at: usize, err: ZmtpError) -> Result<[u8; N], ZmtpError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(err)
}

/// The precomputed box key between the peer's `public` key and our
/// `secret` one. A peer key of small order (on the curve or its twist:
/// the shared secret would be zero) is refused.
fn box_key(
    public: &[u8; CURVE_KEY_LEN],
    secret: &[u8; CURVE_KEY_LEN],
) -> Result<BoxKey, ZmtpError> {
    BoxKey::new(public, secret).map_err(|crypto::WeakKey| ZmtpError::WeakKey)
}

/// Boxes `plaintext` into `out` as NaCl lays a box out: tag, then
/// ciphertext. On failure nothing is left in `out` (never plaintext).
fn seal(
    cipher: &impl Cipher,
    nonce: &Nonce,
    plaintext: &[u8],
    out: &mut BytesMut,
) -> Result<(), ZmtpError> {
    let start = out.len();
    out.put_bytes(0, TAG_LEN);
    out.put_slice(plaintext);
    if seal_in_place(cipher, nonce, out, start).is_none() {
        out.truncate(start);
        return Err(ZmtpError::Crypto);
    }
    Ok(())
}

/// Encrypts `buf[start + 16..]` in place and writes its tag at
/// `buf[start..start + 16]`.
fn seal_in_place(
    cipher: &impl Cipher,
    nonce: &Nonce,
    buf: &mut BytesMut,
    start: usize,
) -> Option<()> {
    let ct = buf.get_mut(start.checked_add(TAG_LEN)?..)?;
    let tag = cipher.seal(nonce, ct);
    buf.get_mut(start..start.checked_add(TAG_LEN)?)?
        .copy_from_slice(&tag);
    Some(())
}

/// Opens a box (tag, then ciphertext) into a buffer that is wiped when
/// dropped: handshake plaintexts hold keys.
fn open(
    cipher: &impl Cipher,
    nonce: &Nonce,
    boxed: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, ZmtpError> {
    let (tag, ct) = boxed
        .split_at_checked(TAG_LEN)
        .ok_or(ZmtpError::MalformedCommand(what))?;
    let tag = <[u8; TAG_LEN]>::try_from(tag).map_err(|_| ZmtpError::MalformedCommand(what))?;
    let mut plain = Zeroizing::new(ct.to_vec());
    if !cipher.open(nonce, &mut plain, &tag) {
        return Err(ZmtpError::BadBox(what));
    }
    Ok(plain)
}

/// A fresh transient key pair (s', S' or c', C'): 32 random octets and
/// their public key; the secret half is wiped when dropped.
fn transient() -> Result<CurveKeyPair, ZmtpError> {
    CurveKeyPair::generate().map_err(|e| match e {
        CurveKeyError::Rng(_) => ZmtpError::Rng,
        _ => ZmtpError::Crypto,
    })
}

/// The sending half of an established CURVE session: boxes every frame
/// and command into a MESSAGE. Lives in the [`Encoder`](super::Encoder),
/// which owns the send-side nonce counter.
pub(crate) struct CurveTx {
    /// The precomputed session key (of the two transient keys), shared
    /// with the receiving half: one copy, wiped when both halves are gone.
    cipher: Arc<BoxKey>,
    /// "CurveZMQMESSAGEC" from a client, "...S" from a server.
    prefix: &'static [u8; 16],
    /// The next short nonce; `u64::MAX` means spent (never reused).
    next: u64,
}

impl std::fmt::Debug for CurveTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveTx")
            .field("next_nonce", &self.next)
            .finish_non_exhaustive()
    }
}

impl CurveTx {
    /// Appends one MESSAGE carrying a frame of `len` octets with box flags
    /// `flags`, the frame's body written by `write`, then encrypted in
    /// place: no buffer of its own per frame.
    ///
    /// The short nonce is a 64-bit counter; after 2^64-1 frames (not
    /// reachable in practice) nothing more is written rather than reuse a
    /// nonce, and the peer, seeing nothing, times the connection out.
    pub(crate) fn frame(
        &mut self,
        buf: &mut BytesMut,
        flags: u8,
        len: usize,
        write: impl FnOnce(&mut BytesMut),
    ) {
        if self.next == u64::MAX {
            return;
        }
        let nonce = self.next;
        self.next += 1;
        buf.reserve(9 + MESSAGE_OVERHEAD + len);
        let start = buf.len();
        // Flags 0: a data frame, as libzmq sends MESSAGE (see the module).
        put_header(buf, 0, MESSAGE_OVERHEAD + len);
        buf.put_slice(MESSAGE);
        buf.put_u64(nonce);
        let tag_at = buf.len();
        buf.put_bytes(0, TAG_LEN);
        buf.put_u8(flags);
        let before = buf.len();
        write(buf);
        let written = buf.len().checked_sub(before);
        debug_assert_eq!(written, Some(len), "CURVE frame: length mismatch");
        let nonce = short_nonce(self.prefix, nonce);
        if written != Some(len) || seal_in_place(&*self.cipher, &nonce, buf, tag_at).is_none() {
            // Never send plaintext; the frame is dropped.
            buf.truncate(start);
        }
    }
}

/// The receiving half of an established CURVE session: opens MESSAGEs in
/// place. Lives in the [`FrameDecoder`](super::FrameDecoder).
pub(crate) struct CurveRx {
    /// The precomputed session key.
    cipher: Arc<BoxKey>,
    /// The peer's MESSAGE nonce prefix.
    prefix: &'static [u8; 16],
    /// The peer's last short nonce (of its READY or INITIATE, then of its
    /// last MESSAGE): the next must be greater.
    last: u64,
}

impl std::fmt::Debug for CurveRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveRx")
            .field("last_nonce", &self.last)
            .finish_non_exhaustive()
    }
}

impl CurveRx {
    /// Opens one MESSAGE (the whole frame body, owned, so it is decrypted
    /// where it lies): returns the box's flags octet and the frame it
    /// carries, a slice of the same buffer.
    pub(crate) fn open(&mut self, mut body: BytesMut) -> Result<(u8, Bytes), ZmtpError> {
        const BAD: ZmtpError = ZmtpError::MalformedCommand("MESSAGE");
        if body.get(..MESSAGE.len()) != Some(MESSAGE) {
            return Err(BAD);
        }
        let n = u64::from_be_bytes(field::<8>(&body, 8, BAD)?);
        if n <= self.last {
            return Err(ZmtpError::Nonce("MESSAGE"));
        }
        let tag = field::<TAG_LEN>(&body, 16, BAD)?;
        let nonce = short_nonce(self.prefix, n);
        let ct = body.get_mut(32..).ok_or(BAD)?;
        if ct.is_empty() {
            return Err(BAD);
        }
        if !self.cipher.open(&nonce, ct, &tag) {
            return Err(ZmtpError::BadBox("MESSAGE"));
        }
        self.last = n;
        let flags = *ct.first().ok_or(BAD)?;
        // Bits 7-2 are reserved (RFC 26 reserves 7-1; libzmq uses bit 1
        // for commands), and a command has no MORE.
        if flags & !(BOX_MORE | BOX_COMMAND) != 0 || flags == BOX_MORE | BOX_COMMAND {
            return Err(ZmtpError::Flags(flags));
        }
        body.advance(MESSAGE_OVERHEAD);
        Ok((flags, body.freeze()))
    }
}

/// A CURVE session's traffic halves, handed out once the handshake is done.
pub(crate) struct Session {
    /// For the encoder.
    pub(crate) tx: CurveTx,
    /// For the decoder.
    pub(crate) rx: CurveRx,
}

/// What a handshake command did.
pub(crate) enum Progress {
    /// More commands are to come.
    Continue,
    /// The peer's metadata and its permanent key are in and proven.
    PeerReady(Metadata, CurvePublicKey),
}

/// Reads an ERROR (the peer gives up) or names what was unexpected.
fn error_or_unexpected(body: &Bytes) -> ZmtpError {
    if body.starts_with(ERROR) {
        match Command::parse(body.clone()) {
            Ok(Command::Error(reason)) => ZmtpError::peer_error(&reason),
            Ok(_) | Err(_) => ZmtpError::MalformedCommand("ERROR"),
        }
    } else {
        ZmtpError::UnexpectedCommand
    }
}

/// Where a CURVE server's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    /// Waiting for the client's HELLO.
    AwaitHello,
    /// WELCOME sent; waiting for INITIATE with our cookie.
    AwaitInitiate,
    /// INITIATE is valid; the socket layer accepts or refuses.
    Deciding,
    /// READY sent; the session belongs to the encoder and decoder.
    Done,
    /// Refused or broken; every key of the connection is forgotten.
    Failed,
}

/// A CURVE server's side of the handshake.
pub(crate) struct CurveServer {
    /// Our permanent key pair (S, s).
    keys: CurveKeyPair,
    /// Which command is next.
    state: ServerState,
    /// The client's transient key C', from HELLO.
    client_transient: Option<[u8; CURVE_KEY_LEN]>,
    /// Our transient key pair (s', S'), made for this connection on HELLO;
    /// dropped (wiped) once the session key is computed.
    transient: Option<CurveKeyPair>,
    /// The cookie key K: fresh for this connection, forgotten (wiped) as
    /// soon as INITIATE arrives.
    cookie_key: Option<SecretBoxKey>,
    /// The session key, box(C', s'), once INITIATE opened.
    session: Option<BoxKey>,
    /// The client's last short nonce (HELLO's, then INITIATE's).
    peer_nonce: u64,
    /// Our next short nonce (READY is 1).
    next_nonce: u64,
}

impl std::fmt::Debug for CurveServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveServer")
            .field("public", self.keys.public())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CurveServer {
    /// A server proving `keys`, waiting for HELLO.
    pub(crate) fn new(keys: CurveKeyPair) -> Self {
        CurveServer {
            keys,
            state: ServerState::AwaitHello,
            client_transient: None,
            transient: None,
            cookie_key: None,
            session: None,
            peer_nonce: 0,
            next_nonce: 1,
        }
    }

    /// A handshake command from the client. A failure after which the
    /// RFC lets us speak sends ERROR.
    pub(crate) fn on_command(
        &mut self,
        body: Bytes,
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, ZmtpError> {
        let r = match self.state {
            ServerState::AwaitHello if body.starts_with(HELLO) => {
                self.on_hello(&body, send).map(|()| Progress::Continue)
            }
            ServerState::AwaitInitiate if body.starts_with(INITIATE) => self.on_initiate(&body),
            _ => Err(error_or_unexpected(&body)),
        };
        if let Err(e) = &r {
            if !matches!(e, ZmtpError::PeerError { .. }) {
                send(&error_body(match self.state {
                    ServerState::AwaitHello => "invalid HELLO",
                    _ => "invalid INITIATE",
                }));
            }
            self.fail();
        }
        r
    }

    fn on_hello(&mut self, hello: &[u8], send: &mut dyn FnMut(&[u8])) -> Result<(), ZmtpError> {
        const BAD: ZmtpError = ZmtpError::MalformedCommand("HELLO");
        if hello.len() != HELLO_LEN {
            return Err(BAD);
        }
        if field::<2>(hello, 6, BAD)? != [1, 0] {
            return Err(ZmtpError::CurveVersion);
        }
        if field::<72>(hello, 8, BAD)? != [0; 72] {
            return Err(BAD);
        }
        let c_transient = field::<32>(hello, 80, BAD)?;
        // box(C', s): opens HELLO's signature and seals WELCOME. A C' of
        // small order is refused here, before anything is opened with it.
        let permanent = box_key(&c_transient, self.keys.secret().expose_bytes())?;
        let n = u64::from_be_bytes(field::<8>(hello, 112, BAD)?);
        let signature = hello.get(120..).ok_or(BAD)?;
        let zeros = open(
            &permanent,
            &short_nonce(HELLO_PREFIX, n),
            signature,
            "HELLO",
        )?;
        if zeros.iter().any(|&b| b != 0) {
            return Err(BAD);
        }

        let s_transient = transient()?;
        let cookie_key = cookie_key()?;
        let cookie_nonce = random::<16>()?;
        let welcome_nonce = random::<16>()?;
        // The cookie: SecretBox[C' s'](K).
        let mut cookie_plain = Zeroizing::new([0u8; 64]);
        cookie_plain[..32].copy_from_slice(&c_transient);
        cookie_plain[32..].copy_from_slice(s_transient.secret().expose_bytes());
        let mut welcome_plain = BytesMut::with_capacity(128);
        welcome_plain.put_slice(s_transient.public().as_bytes());
        welcome_plain.put_slice(&cookie_nonce);
        seal(
            &cookie_key,
            &long_nonce(COOKIE_PREFIX, &cookie_nonce),
            &cookie_plain[..],
            &mut welcome_plain,
        )?;
        let mut welcome = BytesMut::with_capacity(WELCOME_LEN);
        welcome.put_slice(WELCOME);
        welcome.put_slice(&welcome_nonce);
        seal(
            &permanent,
            &long_nonce(WELCOME_PREFIX, &welcome_nonce),
            &welcome_plain,
            &mut welcome,
        )?;
        if welcome.len() != WELCOME_LEN {
            return Err(ZmtpError::Crypto);
        }
        self.client_transient = Some(c_transient);
        self.transient = Some(s_transient);
        self.cookie_key = Some(cookie_key);
        self.peer_nonce = n;
        self.state = ServerState::AwaitInitiate;
        send(&welcome);
        Ok(())
    }

    fn on_initiate(&mut self, initiate: &[u8]) -> Result<Progress, ZmtpError> {
        const BAD: ZmtpError = ZmtpError::MalformedCommand("INITIATE");
        // K is used for this cookie only: forgotten whatever comes of it.
        let cookie_key = self.cookie_key.take().ok_or(ZmtpError::UnexpectedCommand)?;
        if initiate.len() < INITIATE_MIN {
            return Err(BAD);
        }
        let (Some(c_transient), Some(s_transient)) = (&self.client_transient, &self.transient)
        else {
            return Err(ZmtpError::UnexpectedCommand);
        };
        let s_secret = s_transient.secret().expose_bytes();
        // The cookie must be the one we issued: it opens with K and holds
        // this connection's C' and s'.
        let cookie_nonce = field::<16>(initiate, 9, BAD)?;
        let cookie_box = initiate.get(25..9 + COOKIE_LEN).ok_or(BAD)?;
        let cookie = open(
            &cookie_key,
            &long_nonce(COOKIE_PREFIX, &cookie_nonce),
            cookie_box,
            "cookie",
        );
        drop(cookie_key);
        let cookie = cookie?;
        let mut expected = Zeroizing::new([0u8; 64]);
        expected[..32].copy_from_slice(c_transient);
        expected[32..].copy_from_slice(s_secret);
        if cookie.as_slice() != &expected[..] {
            return Err(ZmtpError::BadBox("cookie"));
        }

        let n = u64::from_be_bytes(field::<8>(initiate, 105, BAD)?);
        if n <= self.peer_nonce {
            return Err(ZmtpError::Nonce("INITIATE"));
        }
        let session = box_key(c_transient, s_secret)?;
        let boxed = initiate.get(113..).ok_or(BAD)?;
        let plain = open(
            &session,
            &short_nonce(INITIATE_PREFIX, n),
            boxed,
            "INITIATE",
        )?;

        // The client's permanent key C, and its vouch Box[C' S](C->S').
        let client_key = field::<32>(&plain, 0, BAD)?;
        // A C of small order is refused here.
        let vouch_cipher = box_key(&client_key, s_secret)?;
        let vouch_nonce = field::<16>(&plain, 32, BAD)?;
        let vouch_box = plain.get(48..INITIATE_META).ok_or(BAD)?;
        let vouch = open(
            &vouch_cipher,
            &long_nonce(VOUCH_PREFIX, &vouch_nonce),
            vouch_box,
            "vouch",
        )?;
        if vouch.get(..32) != Some(&c_transient[..]) {
            return Err(ZmtpError::Vouch);
        }
        if vouch.get(32..) != Some(self.keys.public().as_bytes()) {
            return Err(ZmtpError::Vouch);
        }
        let metadata = plain.get(INITIATE_META..).ok_or(BAD)?;
        let metadata = Metadata::parse(&Bytes::copy_from_slice(metadata))?;

        self.peer_nonce = n;
        self.session = Some(session);
        // s' lives on only in the session key.
        self.transient = None;
        self.state = ServerState::Deciding;
        Ok(Progress::PeerReady(
            metadata,
            CurvePublicKey::from_bytes(client_key),
        ))
    }

    /// The socket layer accepts: READY with our metadata goes out, and the
    /// session is handed to the encoder and decoder.
    pub(crate) fn accept(
        &mut self,
        metadata: &[u8],
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<Option<Session>, ZmtpError> {
        if self.state != ServerState::Deciding {
            return Ok(None);
        }
        let Some(session) = self.session.take() else {
            self.fail();
            return Err(ZmtpError::Closed);
        };
        let n = self.next_nonce;
        let mut ready = BytesMut::with_capacity(READY_MIN + metadata.len());
        ready.put_slice(READY);
        ready.put_u64(n);
        if let Err(e) = seal(
            &session,
            &short_nonce(READY_PREFIX, n),
            metadata,
            &mut ready,
        ) {
            self.fail();
            return Err(e);
        }
        send(&ready);
        self.state = ServerState::Done;
        let session = Arc::new(session);
        Ok(Some(Session {
            tx: CurveTx {
                cipher: session.clone(),
                prefix: MESSAGE_S,
                next: n + 1,
            },
            rx: CurveRx {
                cipher: session,
                prefix: MESSAGE_C,
                last: self.peer_nonce,
            },
        }))
    }

    /// Refuses the client: a plaintext ERROR, as RFC 26 asks of a server,
    /// while the handshake is on.
    pub(crate) fn refuse(&mut self, reason: &str, send: &mut dyn FnMut(&[u8])) {
        if matches!(
            self.state,
            ServerState::AwaitHello | ServerState::AwaitInitiate | ServerState::Deciding
        ) {
            send(&error_body(reason));
        }
        self.fail();
    }

    /// Forgets every key of the connection.
    fn fail(&mut self) {
        self.state = ServerState::Failed;
        self.cookie_key = None;
        self.transient = None;
        self.session = None;
    }
}

/// Where a CURVE client's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    /// The greetings are not exchanged yet.
    Start,
    /// HELLO sent; waiting for WELCOME.
    AwaitWelcome,
    /// INITIATE sent; waiting for READY (or ERROR).
    AwaitReady,
    /// READY is valid; the socket layer accepts or refuses.
    Deciding,
    /// The session belongs to the encoder and decoder.
    Done,
    /// Refused or broken; every key of the connection is forgotten.
    Failed,
}

/// A CURVE client's side of the handshake.
pub(crate) struct CurveClient {
    /// Our permanent key pair (C, c).
    keys: CurveKeyPair,
    /// The server's permanent key S, which we must know beforehand.
    server_key: CurvePublicKey,
    /// Which command is next.
    state: ClientState,
    /// Our transient key pair (c', C'), made when HELLO goes out, dropped
    /// (wiped) once the session key is computed.
    transient: Option<CurveKeyPair>,
    /// The session key, box(S', c'), from WELCOME on.
    session: Option<BoxKey>,
    /// Our next short nonce (HELLO is 1).
    next_nonce: u64,
    /// The server's last short nonce (READY's).
    peer_nonce: u64,
}

impl std::fmt::Debug for CurveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveClient")
            .field("public", self.keys.public())
            .field("server_key", &self.server_key)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CurveClient {
    /// A client proving `keys` to the holder of `server_key`.
    pub(crate) fn new(keys: CurveKeyPair, server_key: CurvePublicKey) -> Self {
        CurveClient {
            keys,
            server_key,
            state: ClientState::Start,
            transient: None,
            session: None,
            next_nonce: 1,
            peer_nonce: 0,
        }
    }

    fn take_nonce(&mut self) -> u64 {
        let n = self.next_nonce;
        self.next_nonce += 1;
        n
    }

    /// After the greetings: HELLO.
    pub(crate) fn start(&mut self, send: &mut dyn FnMut(&[u8])) -> Result<(), ZmtpError> {
        if self.state != ClientState::Start {
            return Ok(());
        }
        let r = self.hello(send);
        if r.is_err() {
            self.fail();
        }
        r
    }

    fn hello(&mut self, send: &mut dyn FnMut(&[u8])) -> Result<(), ZmtpError> {
        let c_transient = transient()?;
        // box(S, c'): a server key of small order is refused here, before
        // anything is sent.
        let signature = box_key(
            self.server_key.as_bytes(),
            c_transient.secret().expose_bytes(),
        )?;
        let n = self.take_nonce();
        let mut hello = BytesMut::with_capacity(HELLO_LEN);
        hello.put_slice(HELLO);
        hello.put_slice(&[1, 0]);
        hello.put_bytes(0, 72);
        hello.put_slice(c_transient.public().as_bytes());
        hello.put_u64(n);
        seal(
            &signature,
            &short_nonce(HELLO_PREFIX, n),
            &[0; 64],
            &mut hello,
        )?;
        if hello.len() != HELLO_LEN {
            return Err(ZmtpError::Crypto);
        }
        self.transient = Some(c_transient);
        self.state = ClientState::AwaitWelcome;
        send(&hello);
        Ok(())
    }

    /// A handshake command from the server. A client never sends ERROR
    /// (RFC 26): failures just close.
    pub(crate) fn on_command(
        &mut self,
        body: Bytes,
        metadata: &[u8],
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, ZmtpError> {
        let r = match self.state {
            ClientState::AwaitWelcome if body.starts_with(WELCOME) => self
                .on_welcome(&body, metadata, send)
                .map(|()| Progress::Continue),
            ClientState::AwaitReady if body.starts_with(READY) => self.on_ready(&body),
            _ => Err(error_or_unexpected(&body)),
        };
        if r.is_err() {
            self.fail();
        }
        r
    }

    fn on_welcome(
        &mut self,
        welcome: &[u8],
        metadata: &[u8],
        send: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ZmtpError> {
        const BAD: ZmtpError = ZmtpError::MalformedCommand("WELCOME");
        if welcome.len() != WELCOME_LEN {
            return Err(BAD);
        }
        let Some(c_transient) = &self.transient else {
            return Err(ZmtpError::UnexpectedCommand);
        };
        let c_secret = c_transient.secret().expose_bytes();
        let welcome_nonce = field::<16>(welcome, 8, BAD)?;
        let boxed = welcome.get(24..).ok_or(BAD)?;
        let permanent = box_key(self.server_key.as_bytes(), c_secret)?;
        let plain = open(
            &permanent,
            &long_nonce(WELCOME_PREFIX, &welcome_nonce),
            boxed,
            "WELCOME",
        )?;
        let s_transient = field::<32>(&plain, 0, BAD)?;
        // box(S', c'): an S' of small order is refused here.
        let session = box_key(&s_transient, c_secret)?;
        let cookie = plain.get(32..32 + COOKIE_LEN).ok_or(BAD)?;

        // The vouch: Box[C' S](C->S') with a random long nonce.
        let vouch_nonce = random::<16>()?;
        let mut vouch_plain = [0u8; 64];
        vouch_plain[..32].copy_from_slice(c_transient.public().as_bytes());
        vouch_plain[32..].copy_from_slice(self.server_key.as_bytes());
        let vouch_cipher = box_key(&s_transient, self.keys.secret().expose_bytes())?;
        let mut plain = BytesMut::with_capacity(INITIATE_META + metadata.len());
        plain.put_slice(self.keys.public().as_bytes());
        plain.put_slice(&vouch_nonce);
        seal(
            &vouch_cipher,
            &long_nonce(VOUCH_PREFIX, &vouch_nonce),
            &vouch_plain,
            &mut plain,
        )?;
        plain.put_slice(metadata);

        let n = self.take_nonce();
        let mut initiate = BytesMut::with_capacity(INITIATE_MIN + metadata.len());
        initiate.put_slice(INITIATE);
        initiate.put_slice(cookie);
        initiate.put_u64(n);
        seal(
            &session,
            &short_nonce(INITIATE_PREFIX, n),
            &plain,
            &mut initiate,
        )?;
        self.session = Some(session);
        // c' lives on only in the session key.
        self.transient = None;
        self.state = ClientState::AwaitReady;
        send(&initiate);
        Ok(())
    }

    fn on_ready(&mut self, ready: &[u8]) -> Result<Progress, ZmtpError> {
        const BAD: ZmtpError = ZmtpError::MalformedCommand("READY");
        if ready.len() < READY_MIN {
            return Err(BAD);
        }
        let session = self.session.as_ref().ok_or(ZmtpError::UnexpectedCommand)?;
        let n = u64::from_be_bytes(field::<8>(ready, 6, BAD)?);
        let boxed = ready.get(14..).ok_or(BAD)?;
        let plain = open(session, &short_nonce(READY_PREFIX, n), boxed, "READY")?;
        let metadata = Metadata::parse(&Bytes::copy_from_slice(&plain))?;
        self.peer_nonce = n;
        self.state = ClientState::Deciding;
        Ok(Progress::PeerReady(metadata, self.server_key))
    }

    /// The socket layer accepts the server: the session goes to the
    /// encoder and decoder (nothing is sent).
    pub(crate) fn accept(&mut self) -> Result<Option<Session>, ZmtpError> {
        if self.state != ClientState::Deciding {
            return Ok(None);
        }
        let Some(session) = self.session.take() else {
            self.fail();
            return Err(ZmtpError::Closed);
        };
        self.state = ClientState::Done;
        let session = Arc::new(session);
        Ok(Some(Session {
            tx: CurveTx {
                cipher: session.clone(),
                prefix: MESSAGE_C,
                next: self.next_nonce,
            },
            rx: CurveRx {
                cipher: session,
                prefix: MESSAGE_S,
                last: self.peer_nonce,
            },
        }))
    }

    /// Refuses the server: RFC 26 forbids a client's ERROR, so this only
    /// closes.
    pub(crate) fn refuse(&mut self) {
        self.fail();
    }

    fn fail(&mut self) {
        self.state = ClientState::Failed;
        self.transient = None;
        self.session = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SocketType, encode_ready_body};

    fn metadata() -> Bytes {
        encode_ready_body(SocketType::Dealer, b"c").slice(6..)
    }

    /// Runs `client` and `server` up to INITIATE: the client's HELLO and
    /// INITIATE, the server's WELCOME.
    fn up_to_initiate(client: &mut CurveClient, server: &mut CurveServer) -> (Bytes, Bytes) {
        let mut out = Vec::new();
        client
            .start(&mut |b| out.push(Bytes::copy_from_slice(b)))
            .unwrap();
        let hello = out.pop().unwrap();
        let mut welcome = None;
        assert!(matches!(
            server.on_command(hello.clone(), &mut |b| welcome =
                Some(Bytes::copy_from_slice(b))),
            Ok(Progress::Continue)
        ));
        let mut initiate = None;
        let p = client.on_command(welcome.unwrap(), &metadata(), &mut |b| {
            initiate = Some(Bytes::copy_from_slice(b))
        });
        assert!(matches!(p, Ok(Progress::Continue)));
        (hello, initiate.unwrap())
    }

    fn pair(sk: &CurveKeyPair) -> (CurveClient, CurveServer) {
        let ck = CurveKeyPair::generate().unwrap();
        (
            CurveClient::new(ck, *sk.public()),
            CurveServer::new(sk.clone()),
        )
    }

    fn ignore(_: &[u8]) {}

    #[test]
    fn sizes_match_libzmq_and_keys_are_forgotten() {
        let sk = CurveKeyPair::generate().unwrap();
        let (mut c, mut s) = pair(&sk);
        let (hello, initiate) = up_to_initiate(&mut c, &mut s);
        assert_eq!(hello.len(), 200);
        assert_eq!(initiate.len(), 257 + metadata().len());
        assert!(c.transient.is_none(), "c' is gone once the session key is");
        let r = s.on_command(initiate, &mut ignore);
        assert!(matches!(r, Ok(Progress::PeerReady(..))));
        assert!(s.cookie_key.is_none(), "K is forgotten after INITIATE");
        assert!(s.transient.is_none(), "s' is gone once the session key is");
        let mut ready = None;
        let session = s
            .accept(&metadata(), &mut |b| {
                ready = Some(Bytes::copy_from_slice(b))
            })
            .unwrap()
            .unwrap();
        assert_eq!(session.tx.next, 2, "READY was 1");
        assert_eq!(session.rx.last, 2, "INITIATE was 2");
        let ready = ready.unwrap();
        assert_eq!(ready.len(), 30 + metadata().len());
        assert!(matches!(
            c.on_command(ready, &metadata(), &mut ignore),
            Ok(Progress::PeerReady(..))
        ));
        let session = c.accept().unwrap().unwrap();
        assert_eq!((session.tx.next, session.rx.last), (3, 1));
    }

    #[test]
    fn a_cookie_opens_only_on_its_own_connection() {
        // Two connections to the same server key: INITIATE of the first
        // is replayed on the second.
        let sk = CurveKeyPair::generate().unwrap();
        let (mut c1, mut s1) = pair(&sk);
        let (mut c2, mut s2) = pair(&sk);
        let (_, initiate1) = up_to_initiate(&mut c1, &mut s1);
        let _ = up_to_initiate(&mut c2, &mut s2);
        let mut sent = Vec::new();
        let r = s2.on_command(initiate1, &mut |b| sent.extend_from_slice(b));
        assert_eq!(r.err(), Some(ZmtpError::BadBox("cookie")));
        assert!(sent.starts_with(ERROR), "the server says ERROR");
        assert!(s2.cookie_key.is_none());
        // And a second INITIATE on a connection is refused.
        let (mut c3, mut s3) = pair(&sk);
        let (_, initiate3) = up_to_initiate(&mut c3, &mut s3);
        assert!(s3.on_command(initiate3.clone(), &mut ignore).is_ok());
        assert!(s3.on_command(initiate3, &mut ignore).is_err());
    }

    /// Builds an INITIATE as a client would, with `vouch_plain` in the
    /// vouch, for the server `s` that answered `hello`'s WELCOME.
    fn initiate_with_vouch(
        c_secret: &[u8; 32],
        ck: &CurveKeyPair,
        server_key: &CurvePublicKey,
        welcome: &[u8],
        vouch_plain: &[u8; 64],
        n: u64,
    ) -> Bytes {
        let permanent = box_key(server_key.as_bytes(), c_secret).unwrap();
        let wn: [u8; 16] = welcome[8..24].try_into().unwrap();
        let plain = open(
            &permanent,
            &long_nonce(WELCOME_PREFIX, &wn),
            &welcome[24..],
            "W",
        )
        .unwrap();
        let s_t = <[u8; 32]>::try_from(&plain[..32]).unwrap();
        let session = box_key(&s_t, c_secret).unwrap();
        let vn = [5u8; 16];
        let mut inner = BytesMut::new();
        inner.put_slice(ck.public().as_bytes());
        inner.put_slice(&vn);
        let vouch = box_key(&s_t, ck.secret().expose_bytes()).unwrap();
        seal(
            &vouch,
            &long_nonce(VOUCH_PREFIX, &vn),
            vouch_plain,
            &mut inner,
        )
        .unwrap();
        inner.put_slice(&metadata());
        let mut initiate = BytesMut::new();
        initiate.put_slice(INITIATE);
        initiate.put_slice(&plain[32..128]);
        initiate.put_u64(n);
        seal(
            &session,
            &short_nonce(INITIATE_PREFIX, n),
            &inner,
            &mut initiate,
        )
        .unwrap();
        initiate.freeze()
    }

    #[test]
    fn the_vouch_must_name_this_connection_and_this_server() {
        let sk = CurveKeyPair::generate().unwrap();
        let ck = CurveKeyPair::generate().unwrap();
        let other = CurveKeyPair::generate().unwrap();
        for case in 0..4 {
            let mut s = CurveServer::new(sk.clone());
            let c_t = transient().unwrap();
            let (c_secret, c_public) = (c_t.secret().expose_bytes(), c_t.public());
            // A HELLO by hand, so we hold c'.
            let mut hello = BytesMut::new();
            hello.put_slice(HELLO);
            hello.put_slice(&[1, 0]);
            hello.put_bytes(0, 72);
            hello.put_slice(c_public.as_bytes());
            hello.put_u64(1);
            let sig = box_key(sk.public().as_bytes(), c_secret).unwrap();
            seal(&sig, &short_nonce(HELLO_PREFIX, 1), &[0; 64], &mut hello).unwrap();
            let mut welcome = Vec::new();
            s.on_command(hello.freeze(), &mut |b| welcome = b.to_vec())
                .unwrap();
            let mut vouch = [0u8; 64];
            vouch[..32].copy_from_slice(c_public.as_bytes());
            vouch[32..].copy_from_slice(sk.public().as_bytes());
            let mut n = 2;
            let want = match case {
                0 => None,
                1 => {
                    vouch[32..].copy_from_slice(other.public().as_bytes());
                    Some(ZmtpError::Vouch)
                }
                2 => {
                    vouch[..32].copy_from_slice(other.public().as_bytes());
                    Some(ZmtpError::Vouch)
                }
                _ => {
                    n = 1;
                    Some(ZmtpError::Nonce("INITIATE"))
                }
            };
            let initiate = initiate_with_vouch(c_secret, &ck, sk.public(), &welcome, &vouch, n);
            let r = s.on_command(initiate, &mut ignore);
            match want {
                None => {
                    let Ok(Progress::PeerReady(m, key)) = r else {
                        panic!("{:?}", r.err())
                    };
                    assert_eq!(key, *ck.public());
                    assert_eq!(m.socket_type, SocketType::Dealer);
                }
                Some(e) => assert_eq!(r.err(), Some(e), "case {case}"),
            }
        }
    }

    #[test]
    fn small_order_keys_are_refused() {
        let sk = CurveKeyPair::generate().unwrap();
        // The all-zero key and 1 are of small order; a real key is not.
        let secret = sk.secret().expose_bytes();
        assert_eq!(box_key(&[0; 32], secret).err(), Some(ZmtpError::WeakKey));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(box_key(&one, secret).err(), Some(ZmtpError::WeakKey));
        assert!(box_key(sk.public().as_bytes(), secret).is_ok());
        // A HELLO whose C' is zero: its signature would open with a known
        // key, so it is refused before that.
        let mut s = CurveServer::new(sk.clone());
        let mut hello = BytesMut::new();
        hello.put_slice(HELLO);
        hello.put_slice(&[1, 0]);
        hello.put_bytes(0, 72 + 32);
        hello.put_u64(1);
        hello.put_bytes(0, 80);
        assert_eq!(
            s.on_command(hello.freeze(), &mut ignore).err(),
            Some(ZmtpError::WeakKey)
        );
        // A client configured with a zero server key sends nothing.
        let mut c = CurveClient::new(sk, CurvePublicKey::from_bytes([0; 32]));
        let mut sent = false;
        assert_eq!(c.start(&mut |_| sent = true), Err(ZmtpError::WeakKey));
        assert!(!sent);
    }

    #[test]
    fn message_boxes_round_trip_in_place() {
        let a = CurveKeyPair::generate().unwrap();
        let b = CurveKeyPair::generate().unwrap();
        let k = Arc::new(box_key(b.public().as_bytes(), a.secret().expose_bytes()).unwrap());
        let mut tx = CurveTx {
            cipher: k.clone(),
            prefix: MESSAGE_C,
            next: 3,
        };
        let mut rx = CurveRx {
            cipher: k,
            prefix: MESSAGE_C,
            last: 2,
        };
        for (flags, body) in [
            (0u8, &b""[..]),
            (BOX_MORE, b"abc"),
            (BOX_COMMAND, &[9; 300]),
        ] {
            let mut buf = BytesMut::new();
            tx.frame(&mut buf, flags, body.len(), |b| b.put_slice(body));
            let header = if body.len() + 33 > 255 { 9 } else { 2 };
            assert_eq!(buf.len(), header + 33 + body.len());
            buf.advance(header);
            let (f, got) = rx.open(buf).unwrap();
            assert_eq!((f, &got[..]), (flags, body));
        }
        // Reserved flags in a valid box are refused.
        for bad in [0x04u8, 0x80, BOX_MORE | BOX_COMMAND] {
            let mut buf = BytesMut::new();
            tx.frame(&mut buf, bad, 0, |_| {});
            buf.advance(2);
            assert_eq!(rx.open(buf).err(), Some(ZmtpError::Flags(bad)));
        }
        // A spent counter writes nothing rather than reuse a nonce.
        tx.next = u64::MAX;
        let mut buf = BytesMut::new();
        tx.frame(&mut buf, 0, 1, |b| b.put_u8(1));
        assert!(buf.is_empty());
    }
}
