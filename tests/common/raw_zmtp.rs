//! ZMTP 3.x written and read by hand (RFC 37), for raw peers that must do
//! what no ZMQ library lets them: announce a given version, go silent after
//! the handshake, answer or ignore PINGs on purpose. Nothing here uses the
//! crate's own ZMTP code, so the tests check it against an independent
//! reading of the RFC.
//!
//! - byte builders: [`greeting`], [`command`], [`ready`], [`pong`],
//!   [`message`];
//! - [`Reader`]: bytes in, the peer's greeting and then whole frames out
//!   ([`Frame::Command`] or a [`Frame::Message`] of all its parts);
//! - [`RawListener`], [`dial`] and [`RawPeer`]: tokio tcp/ipc streams with
//!   the handshake done by hand;
//! - [`Proxy`]: a tcp proxy that counts PINGs, PONGs and messages each way.

use std::sync::{Arc, Mutex};

use messenger::Endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

use super::{Place, place, within};

/// Length of a ZMTP 3.x greeting.
pub const GREETING_LEN: usize = 64;

const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

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

fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    match u8::try_from(body.len()) {
        Ok(len) => out.extend_from_slice(&[flags, len]),
        Err(_) => {
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

/// READY with `Socket-Type` and `Identity` properties.
pub fn ready(socket_type: &str, identity: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for (name, value) in [
        ("Socket-Type", socket_type.as_bytes()),
        ("Identity", identity),
    ] {
        data.push(u8::try_from(name.len()).unwrap());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&u32::try_from(value.len()).unwrap().to_be_bytes());
        data.extend_from_slice(value);
    }
    command("READY", &data)
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

/// What a ZMTP peer sent after its greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A command: its name and what follows the name.
    Command { name: Vec<u8>, data: Vec<u8> },
    /// A whole message, every part.
    Message(Vec<Vec<u8>>),
}

impl Frame {
    /// Whether this is the command `name`.
    pub fn is_command(&self, name: &str) -> bool {
        matches!(self, Frame::Command { name: n, .. } if n == name.as_bytes())
    }

    /// A PING's TTL (deciseconds) and context.
    pub fn ping(&self) -> Option<(u16, Vec<u8>)> {
        match self {
            Frame::Command { name, data } if name == b"PING" => {
                assert!(data.len() >= 2, "PING without its TTL: {data:?}");
                Some((u16::from_be_bytes([data[0], data[1]]), data[2..].to_vec()))
            }
            _ => None,
        }
    }

    /// A message's parts as text, for assertions.
    pub fn parts(&self) -> Option<Vec<String>> {
        match self {
            Frame::Message(parts) => Some(
                parts
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect(),
            ),
            Frame::Command { .. } => None,
        }
    }
}

/// Parses what one side of a ZMTP connection sends: its greeting, then
/// frames. Panics on what RFC 37 does not allow (a test peer's bug).
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    greeting: Option<[u8; GREETING_LEN]>,
    parts: Vec<Vec<u8>>,
}

impl Reader {
    /// Bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The peer's greeting, once all of it is in.
    pub fn greeting(&mut self) -> Option<[u8; GREETING_LEN]> {
        if self.greeting.is_none() && self.buf.len() >= GREETING_LEN {
            let g: [u8; GREETING_LEN] = self.buf[..GREETING_LEN].try_into().unwrap();
            assert_eq!((g[0], g[9]), (0xFF, 0x7F), "not a ZMTP greeting: {g:?}");
            self.buf.drain(..GREETING_LEN);
            self.greeting = Some(g);
        }
        self.greeting
    }

    /// The next whole command or message, if it is all in.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.greeting()?;
        loop {
            let flags = *self.buf.first()?;
            assert_eq!(flags & !(MORE | LONG | COMMAND), 0, "bad flags {flags:#x}");
            let (len, head) = if flags & LONG != 0 {
                let size: [u8; 8] = self.buf.get(1..9)?.try_into().unwrap();
                (usize::try_from(u64::from_be_bytes(size)).unwrap(), 9)
            } else {
                (usize::from(*self.buf.get(1)?), 2)
            };
            if self.buf.len() < head + len {
                return None;
            }
            let body = self.buf[head..head + len].to_vec();
            self.buf.drain(..head + len);
            if flags & COMMAND != 0 {
                assert!(self.parts.is_empty(), "a command inside a message");
                assert_eq!(flags & MORE, 0, "a command with MORE");
                let n = usize::from(*body.first().expect("command name length"));
                return Some(Frame::Command {
                    name: body[1..1 + n].to_vec(),
                    data: body[1 + n..].to_vec(),
                });
            }
            self.parts.push(body);
            if flags & MORE == 0 {
                return Some(Frame::Message(std::mem::take(&mut self.parts)));
            }
        }
    }
}

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

/// Connects to a tcp or ipc endpoint.
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

/// A peer speaking ZMTP by hand over a stream.
pub struct RawPeer {
    pub stream: Stream,
    pub reader: Reader,
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
        let mut hello = greeting(minor).to_vec();
        hello.extend(ready(socket_type, identity));
        stream.write_all(&hello).await.expect("write handshake");
        let mut peer = RawPeer {
            stream,
            reader: Reader::default(),
            greeting: [0; GREETING_LEN],
            ready: Vec::new(),
        };
        let frame = within(5, "the other side's READY", peer.next())
            .await
            .expect("closed during the handshake");
        match frame {
            Frame::Command { name, data } if name == b"READY" => peer.ready = data,
            other => panic!("expected READY, got {other:?}"),
        }
        peer.greeting = peer.reader.greeting().unwrap();
        peer
    }

    /// Writes `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) {
        within(5, "raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Sends a message of `parts`.
    pub async fn send_message(&mut self, parts: &[&[u8]]) {
        self.send(&message(parts)).await;
    }

    /// The next frame; `None` once the other side closed (or reset).
    pub async fn next(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(f) = self.reader.next_frame() {
                return Some(f);
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.reader.push(&chunk[..n]),
            }
        }
    }

    /// The next message (commands are skipped: PINGs unanswered) within
    /// `secs` seconds, as text parts.
    pub async fn next_message(&mut self, secs: u64, what: &str) -> Vec<String> {
        within(secs, what, async {
            loop {
                match self.next().await {
                    Some(Frame::Message(parts)) => {
                        return parts
                            .iter()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect();
                    }
                    Some(Frame::Command { .. }) => {}
                    None => panic!("{what}: the other side closed"),
                }
            }
        })
        .await
    }
}

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
    let mut reader = Reader::default();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        reader.push(&chunk[..n]);
        let mut s = stats.lock().unwrap();
        let c = if up { &mut s.up } else { &mut s.down };
        if c.minor.is_none() {
            c.minor = reader.greeting().map(|g| g[11]);
        }
        while let Some(f) = reader.next_frame() {
            match f {
                Frame::Message(_) => c.messages += 1,
                f if f.is_command("PING") => c.pings += 1,
                f if f.is_command("PONG") => c.pongs += 1,
                Frame::Command { .. } => c.other_commands += 1,
            }
        }
    }
    let _ = to.shutdown().await;
}
