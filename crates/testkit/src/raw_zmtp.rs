//! ZMTP 3.x written and read by hand (RFC 37, NULL mechanism only), for raw
//! peers that must do what no ZMQ library lets them: announce a given
//! version, go silent after the handshake, answer or ignore PINGs on
//! purpose, flood, and count every byte they receive. Nothing here uses the
//! crate's own ZMTP code, so the tests check it against an independent
//! reading of the RFC.
//!
//! - byte builders: [`greeting`], [`frame`], [`command`], [`ready`],
//!   [`hello`], [`pong`], [`message`];
//! - [`Decoder`]: bytes in, the peer's greeting and then frames out, one
//!   by one ([`Frame`]) or as whole commands and messages ([`Received`]);
//! - [`FrameReader`]: a [`Decoder`] over a stream, counting every byte
//!   read, so a test can check that nothing beyond the handshake reached a
//!   peer;
//! - [`RawListener`], [`dial`], [`dealer`] and [`RawPeer`]: tokio tcp/ipc
//!   streams with the handshake done by hand;
//! - [`Proxy`]: a tcp proxy that counts PINGs, PONGs and messages each way.

use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger::Endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

use super::{Place, place, within};

/// Length of a ZMTP 3.x greeting.
pub const GREETING_LEN: usize = 64;

/// Frame flags (RFC 37).
pub const MORE: u8 = 0b001;
pub const LONG: u8 = 0b010;
pub const COMMAND: u8 = 0b100;

/// The largest frame a [`Decoder`] takes (a bound on what a test buffers).
const MAX_FRAME: u64 = 64 << 20;

// ---------------------------------------------------------------------------
// Byte builders

/// A NULL-mechanism greeting for ZMTP 3.`minor`, as-server 0.
pub fn greeting(minor: u8) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = minor;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// One frame's header and body: the long form when `flags` has `LONG` or
/// the body is over 255 bytes, the short form otherwise.
pub fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    match u8::try_from(body.len()) {
        Ok(len) if flags & LONG == 0 => out.extend_from_slice(&[flags, len]),
        _ => {
            out.push(flags | LONG);
            out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(body);
    out
}

/// A command frame: `name` (length-prefixed) followed by `data`.
pub fn command(name: &str, data: &[u8]) -> Vec<u8> {
    let mut body = vec![u8::try_from(name.len()).expect("short command name")];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    frame(COMMAND, &body)
}

/// READY with a `Socket-Type` property and, unless `identity` is empty
/// (anonymous), an `Identity` property.
pub fn ready(socket_type: &str, identity: &[u8]) -> Vec<u8> {
    let mut properties = vec![("Socket-Type", socket_type.as_bytes())];
    if !identity.is_empty() {
        properties.push(("Identity", identity));
    }
    let mut data = Vec::new();
    for (name, value) in properties {
        data.push(u8::try_from(name.len()).unwrap());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&u32::try_from(value.len()).unwrap().to_be_bytes());
        data.extend_from_slice(value);
    }
    command("READY", &data)
}

/// A greeting for ZMTP 3.`minor` followed by READY: a whole handshake.
pub fn hello(minor: u8, socket_type: &str, identity: &[u8]) -> Vec<u8> {
    let mut h = greeting(minor).to_vec();
    h.extend(ready(socket_type, identity));
    h
}

/// PONG echoing a PING's context.
pub fn pong(context: &[u8]) -> Vec<u8> {
    command("PONG", context)
}

/// A multipart message of `parts`.
pub fn message(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let more = if i + 1 < parts.len() { MORE } else { 0 };
        out.extend(frame(more, p));
    }
    out
}

// ---------------------------------------------------------------------------
// Reading

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub body: Vec<u8>,
    /// Header and body bytes on the wire.
    pub wire_len: usize,
}

impl Frame {
    pub fn is_command(&self) -> bool {
        self.flags & COMMAND != 0
    }

    pub fn more(&self) -> bool {
        self.flags & MORE != 0
    }

    /// The command's name (`READY`, `ERROR`, ...), if this is a command.
    pub fn command_name(&self) -> Option<&[u8]> {
        if !self.is_command() {
            return None;
        }
        let n = usize::from(*self.body.first()?);
        self.body.get(1..1 + n)
    }
}

/// What a ZMTP peer sent after its greeting: a command or a whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A command: its name and what follows the name.
    Command { name: Vec<u8>, data: Vec<u8> },
    /// A whole message, every part.
    Message(Vec<Vec<u8>>),
}

impl Received {
    /// Whether this is the command `name`.
    pub fn is_command(&self, name: &str) -> bool {
        matches!(self, Received::Command { name: n, .. } if n == name.as_bytes())
    }

    /// A PING's TTL (deciseconds) and context.
    pub fn ping(&self) -> Option<(u16, Vec<u8>)> {
        match self {
            Received::Command { name, data } if name == b"PING" => {
                assert!(data.len() >= 2, "PING without its TTL: {data:?}");
                Some((u16::from_be_bytes([data[0], data[1]]), data[2..].to_vec()))
            }
            _ => None,
        }
    }

    /// A message's parts as text, for assertions.
    pub fn parts(&self) -> Option<Vec<String>> {
        match self {
            Received::Message(parts) => Some(text(parts)),
            Received::Command { .. } => None,
        }
    }
}

fn text(parts: &[Vec<u8>]) -> Vec<String> {
    parts
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// Parses what one side of a ZMTP connection sends: its greeting, then
/// frames. Panics on what RFC 37 does not allow (a test peer's bug).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    greeting: Option<[u8; GREETING_LEN]>,
    parts: Vec<Vec<u8>>,
}

impl Decoder {
    /// Bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes that arrived but are not part of a greeting or frame taken
    /// yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is pending: no bytes buffered, no message begun.
    fn idle(&self) -> bool {
        self.buf.is_empty() && self.parts.is_empty()
    }

    /// The peer's greeting, once all of it is in.
    pub fn greeting(&mut self) -> Option<[u8; GREETING_LEN]> {
        if self.greeting.is_none() && self.buf.len() >= GREETING_LEN {
            let g: [u8; GREETING_LEN] = self.buf[..GREETING_LEN].try_into().unwrap();
            assert!(
                g[0] == 0xFF && g[9] == 0x7F && g[10] >= 3,
                "not a ZMTP 3 greeting: {g:?}"
            );
            self.buf.drain(..GREETING_LEN);
            self.greeting = Some(g);
        }
        self.greeting
    }

    /// The next whole frame after the greeting, if it is all in.
    pub fn frame(&mut self) -> Option<Frame> {
        self.greeting()?;
        let flags = *self.buf.first()?;
        assert_eq!(flags & !(MORE | LONG | COMMAND), 0, "bad flags {flags:#x}");
        let (len, head) = if flags & LONG != 0 {
            let size: [u8; 8] = self.buf.get(1..9)?.try_into().unwrap();
            (u64::from_be_bytes(size), 9)
        } else {
            (u64::from(*self.buf.get(1)?), 2)
        };
        assert!(len <= MAX_FRAME, "a frame of {len} bytes");
        let len = len as usize;
        if self.buf.len() < head + len {
            return None;
        }
        let body = self.buf[head..head + len].to_vec();
        self.buf.drain(..head + len);
        Some(Frame {
            flags,
            body,
            wire_len: head + len,
        })
    }

    /// The next whole command or message, if it is all in.
    pub fn next(&mut self) -> Option<Received> {
        loop {
            let f = self.frame()?;
            if f.is_command() {
                assert!(self.parts.is_empty(), "a command inside a message");
                assert_eq!(f.flags & MORE, 0, "a command with MORE");
                let n = usize::from(*f.body.first().expect("command name length"));
                return Some(Received::Command {
                    name: f.body[1..1 + n].to_vec(),
                    data: f.body[1 + n..].to_vec(),
                });
            }
            let more = f.more();
            self.parts.push(f.body);
            if !more {
                return Some(Received::Message(std::mem::take(&mut self.parts)));
            }
        }
    }
}

/// A [`Decoder`] reading from a stream (or a stream's read half), counting
/// every byte read.
pub struct FrameReader<R> {
    pub inner: R,
    decoder: Decoder,
    /// Every byte read from the stream so far (consumed or buffered).
    pub total: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            decoder: Decoder::default(),
            total: 0,
        }
    }

    /// Bytes read but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Reads what is there into the decoder; false if the stream ended.
    async fn read_more(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let got = self.inner.read(&mut chunk).await?;
        self.total += got as u64;
        self.decoder.push(&chunk[..got]);
        Ok(got > 0)
    }

    /// The other side's greeting.
    pub async fn greeting(&mut self) -> io::Result<[u8; GREETING_LEN]> {
        loop {
            if let Some(g) = self.decoder.greeting() {
                return Ok(g);
            }
            if !self.read_more().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The next frame; `None` if the stream ended cleanly before one began.
    pub async fn frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.decoder.frame() {
                return Ok(Some(f));
            }
            if !self.read_more().await? {
                return match self.decoder.buffered() {
                    0 => Ok(None),
                    _ => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// The next command frame; errors on a data frame or the end.
    pub async fn command(&mut self) -> io::Result<Frame> {
        match self.frame().await? {
            Some(f) if f.is_command() => Ok(f),
            Some(f) => Err(io::Error::other(format!("expected a command, got {f:?}"))),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// The other side's READY; panics on anything else.
    pub async fn expect_ready(&mut self) -> Frame {
        let f = self.command().await.expect("READY");
        assert_eq!(f.command_name(), Some(&b"READY"[..]), "{f:?}");
        f
    }

    /// The next command or whole message; `None` once the other side
    /// closed (or reset).
    pub async fn next(&mut self) -> Option<Received> {
        loop {
            if let Some(r) = self.decoder.next() {
                return Some(r);
            }
            if !self.read_more().await.unwrap_or(false) {
                return None;
            }
        }
    }

    /// The next message's parts (commands before it are skipped: PINGs
    /// unanswered); `None` at a clean end. Errors if the stream fails or
    /// ends inside a frame or message.
    pub async fn message(&mut self) -> io::Result<Option<Vec<Vec<u8>>>> {
        loop {
            match self.decoder.next() {
                Some(Received::Message(parts)) => return Ok(Some(parts)),
                Some(Received::Command { .. }) => continue,
                None => {}
            }
            if !self.read_more().await? {
                return if self.decoder.idle() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// The next message within `secs` seconds, as text parts; panics if
    /// the other side closes first.
    pub async fn next_message(&mut self, secs: u64, what: &str) -> Vec<String> {
        let parts = within(secs, what, self.message()).await;
        match parts {
            Ok(Some(parts)) => text(&parts),
            Ok(None) | Err(_) => panic!("{what}: the other side closed"),
        }
    }

    /// Reads and counts whatever else arrives until the stream ends (EOF or
    /// an error such as a reset) or nothing arrives for `quiet`. Returns
    /// the bytes that arrived (including any already buffered) and whether
    /// the stream ended.
    pub async fn drain(&mut self, quiet: Duration) -> (u64, bool) {
        let mut extra = self.decoder.buffered() as u64;
        self.decoder.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(quiet, self.inner.read(&mut chunk)).await {
                Err(_) => return (extra, false),
                Ok(Ok(0)) | Ok(Err(_)) => return (extra, true),
                Ok(Ok(n)) => {
                    self.total += n as u64;
                    extra += n as u64;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameReader<S> {
    /// Writes `bytes` within 5 s.
    pub async fn send(&mut self, bytes: &[u8]) {
        within(5, "raw write", self.inner.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Sends a message of `parts`.
    pub async fn send_message(&mut self, parts: &[&[u8]]) {
        self.send(&message(parts)).await;
    }
}

// ---------------------------------------------------------------------------
// Streams and peers

/// A tokio tcp or Unix stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// A plain tcp or Unix listener a raw peer accepts on.
pub enum RawListener {
    Tcp(tokio::net::TcpListener),
    Ipc(tokio::net::UnixListener),
}

impl RawListener {
    /// Binds a fresh endpoint of `t` ("tcp" or "ipc"); returns it with the
    /// endpoint to connect to and the place that keeps an ipc path alive.
    pub async fn bind(t: &str) -> (RawListener, Endpoint, Place) {
        let p = place(t);
        match &p.endpoint {
            Endpoint::Tcp { .. } => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = l.local_addr().unwrap().port();
                let endpoint = format!("tcp://127.0.0.1:{port}").parse().unwrap();
                (RawListener::Tcp(l), endpoint, p)
            }
            Endpoint::Ipc(path) => {
                let l = tokio::net::UnixListener::bind(path).unwrap();
                let endpoint = p.endpoint.clone();
                (RawListener::Ipc(l), endpoint, p)
            }
            other => panic!("no raw listener on {other}"),
        }
    }

    /// The next connection.
    pub async fn accept(&self) -> Stream {
        match self {
            RawListener::Tcp(l) => {
                let (s, _) = l.accept().await.expect("accept");
                s.set_nodelay(true).unwrap();
                Box::new(s)
            }
            RawListener::Ipc(l) => Box::new(l.accept().await.expect("accept").0),
        }
    }
}

/// Connects to a tcp or ipc endpoint within 5 s.
pub async fn dial(endpoint: &Endpoint) -> Stream {
    let connect = async {
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .unwrap_or_else(|e| panic!("dial {endpoint}: {e}"));
                s.set_nodelay(true).unwrap();
                Box::new(s) as Stream
            }
            Endpoint::Ipc(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .unwrap_or_else(|e| panic!("dial {endpoint}: {e}")),
            ),
            other => panic!("cannot dial {other} by hand"),
        }
    };
    within(5, "raw dial", connect).await
}

/// A raw DEALER (ZMTP 3.1; `identity` empty: anonymous) dialled to
/// `endpoint`: sends its greeting and READY in one write with `pipelined`
/// right behind them, and reads the other side's greeting within 5 s. The
/// other side's answer (READY or ERROR) is next.
pub async fn dealer(endpoint: &Endpoint, identity: &[u8], pipelined: &[u8]) -> FrameReader<Stream> {
    let mut s = dial(endpoint).await;
    let mut h = hello(1, "DEALER", identity);
    h.extend_from_slice(pipelined);
    s.write_all(&h).await.unwrap();
    let mut r = FrameReader::new(s);
    within(5, "the other side's greeting", r.greeting())
        .await
        .unwrap();
    r
}

/// A peer speaking ZMTP by hand over a stream, its handshake done; reads
/// and writes through [`FrameReader`] (`next`, `send`, ...).
pub struct RawPeer {
    pub conn: FrameReader<Stream>,
    /// The other side's greeting.
    pub greeting: [u8; GREETING_LEN],
    /// The other side's READY (its data: the metadata).
    pub ready: Vec<u8>,
}

impl RawPeer {
    /// Sends our greeting (ZMTP 3.`minor`, NULL) and READY at once, then
    /// reads the other side's greeting and READY.
    pub async fn handshake(
        mut stream: Stream,
        minor: u8,
        socket_type: &str,
        identity: &[u8],
    ) -> RawPeer {
        stream
            .write_all(&hello(minor, socket_type, identity))
            .await
            .expect("write handshake");
        let mut conn = FrameReader::new(stream);
        let ready = match within(5, "the other side's READY", conn.next()).await {
            Some(Received::Command { name, data }) if name == b"READY" => data,
            Some(other) => panic!("expected READY, got {other:?}"),
            None => panic!("closed during the handshake"),
        };
        let greeting = conn.decoder.greeting().unwrap();
        RawPeer {
            conn,
            greeting,
            ready,
        }
    }
}

impl Deref for RawPeer {
    type Target = FrameReader<Stream>;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl DerefMut for RawPeer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

// ---------------------------------------------------------------------------
// A counting proxy

/// What crossed a [`Proxy`] one way.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub pings: usize,
    pub pongs: usize,
    pub other_commands: usize,
    pub messages: usize,
    /// The ZMTP minor version of that side's greeting.
    pub minor: Option<u8>,
}

/// What a [`Proxy`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: usize,
    /// Connections that ended (either side closed).
    pub closed: usize,
    /// From the proxy's clients (the dialling peers) to the target.
    pub up: Counts,
    /// From the target to the clients.
    pub down: Counts,
}

/// A tcp proxy in front of `target` (tcp or ipc) that counts what crosses
/// it, frame by frame. Stops when dropped.
pub struct Proxy {
    /// Where to connect instead of the target.
    pub endpoint: Endpoint,
    stats: Arc<Mutex<ProxyStats>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &Endpoint) -> Proxy {
        let (listener, endpoint, _p) = RawListener::bind("tcp").await;
        let stats = Arc::new(Mutex::new(ProxyStats::default()));
        let target = target.clone();
        let s = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let client = listener.accept().await;
                s.lock().unwrap().connections += 1;
                let server = dial(&target).await;
                let s = Arc::clone(&s);
                conns.spawn(async move {
                    let (cr, cw) = tokio::io::split(client);
                    let (sr, sw) = tokio::io::split(server);
                    let up = pump(cr, sw, Arc::clone(&s), true);
                    let down = pump(sr, cw, Arc::clone(&s), false);
                    // Either side closing ends the connection both ways.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                    s.lock().unwrap().closed += 1;
                });
            }
        });
        Proxy {
            endpoint,
            stats,
            task,
        }
    }

    pub fn stats(&self) -> ProxyStats {
        self.stats.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    stats: Arc<Mutex<ProxyStats>>,
    up: bool,
) {
    let mut decoder = Decoder::default();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        decoder.push(&chunk[..n]);
        let mut s = stats.lock().unwrap();
        let c = if up { &mut s.up } else { &mut s.down };
        if c.minor.is_none() {
            c.minor = decoder.greeting().map(|g| g[11]);
        }
        while let Some(f) = decoder.next() {
            match f {
                Received::Message(_) => c.messages += 1,
                f if f.is_command("PING") => c.pings += 1,
                f if f.is_command("PONG") => c.pongs += 1,
                Received::Command { .. } => c.other_commands += 1,
            }
        }
    }
    let _ = to.shutdown().await;
}
