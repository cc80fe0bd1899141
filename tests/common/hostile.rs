//! Hostile and churning peers, byte by byte (independent of the library's
//! engine), and the test process's resident set size:
//!
//! - builders for the greeting, READY and data frames;
//! - [`RawStream`]: a tcp or ipc stream that can be split for a flood;
//! - [`FrameReader`]: frames out, counting every byte that arrived, so a
//!   test can check that nothing beyond the handshake reached a peer;
//! - [`rss`] and [`RssSampler`]: the resident set now, and its peak over
//!   a stretch of time, sampled from a thread of its own.
//!
//! `raw_zmtp` has the well-behaved hand-written peer (PINGs, a proxy); this
//! one counts bytes and misbehaves. NULL mechanism only.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use messenger::Endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Length of a ZMTP 3.x greeting.
pub const GREETING_LEN: usize = 64;

/// Frame flags (RFC 37).
pub const MORE: u8 = 0b001;
pub const LONG: u8 = 0b010;
pub const COMMAND: u8 = 0b100;

/// A ZMTP 3.1 greeting, NULL mechanism, as-server 0.
pub fn greeting() -> Vec<u8> {
    let mut g = vec![0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// One frame's header and body.
pub fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 9);
    if body.len() > 255 {
        f.push(flags | LONG);
        f.extend((body.len() as u64).to_be_bytes());
    } else {
        f.push(flags);
        f.push(body.len() as u8);
    }
    f.extend_from_slice(body);
    f
}

/// A READY command frame with Socket-Type `socket_type` and, unless
/// empty, Identity `identity`.
pub fn ready(socket_type: &str, identity: &[u8]) -> Vec<u8> {
    let mut body = b"\x05READY".to_vec();
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend((socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    if !identity.is_empty() {
        body.push(8);
        body.extend_from_slice(b"Identity");
        body.extend((identity.len() as u32).to_be_bytes());
        body.extend_from_slice(identity);
    }
    frame(COMMAND, &body)
}

/// A multipart message of `parts`.
pub fn message(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let flags = if i + 1 < parts.len() { MORE } else { 0 };
        out.extend(frame(flags, p));
    }
    out
}

/// Greeting and READY of a DEALER (`identity` empty: anonymous).
pub fn dealer_hello(identity: &[u8]) -> Vec<u8> {
    let mut h = greeting();
    h.extend(ready("DEALER", identity));
    h
}

/// A tcp or unix stream to a listener of ours.
pub enum RawStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl RawStream {
    /// Connects to a tcp or ipc endpoint.
    pub async fn connect(endpoint: &Endpoint) -> io::Result<RawStream> {
        match endpoint {
            Endpoint::Tcp { port, .. } => {
                let s = TcpStream::connect(("127.0.0.1", *port)).await?;
                s.set_nodelay(true)?;
                Ok(RawStream::Tcp(s))
            }
            Endpoint::Ipc(path) => Ok(RawStream::Unix(UnixStream::connect(path).await?)),
            Endpoint::Inproc(_) => Err(io::Error::other("inproc has no raw stream")),
        }
    }
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RawStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            RawStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            RawStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RawStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

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

/// Reads greetings and frames from a stream, counting every byte read.
pub struct FrameReader<R> {
    pub inner: R,
    buf: Vec<u8>,
    /// Every byte read from the stream so far (consumed or buffered).
    pub total: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            total: 0,
        }
    }

    /// Bytes read but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads until `n` bytes are buffered; false if the stream ended first.
    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        while self.buf.len() < n {
            let got = self.inner.read(&mut chunk).await?;
            if got == 0 {
                return Ok(false);
            }
            self.total += got as u64;
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(true)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// The peer's greeting.
    pub async fn greeting(&mut self) -> io::Result<Vec<u8>> {
        if !self.fill(GREETING_LEN).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let g = self.take(GREETING_LEN);
        if g[0] != 0xFF || g[9] != 0x7F || g[10] < 3 {
            return Err(io::Error::other(format!("not a ZMTP 3 greeting: {g:?}")));
        }
        Ok(g)
    }

    /// The next frame; `None` if the stream ended cleanly before one began.
    pub async fn frame(&mut self) -> io::Result<Option<Frame>> {
        if !self.fill(1).await? {
            return Ok(None);
        }
        let flags = self.buf[0];
        let header = if flags & LONG != 0 { 9 } else { 2 };
        if !self.fill(header).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let len = if flags & LONG != 0 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.buf[1..9]);
            u64::from_be_bytes(b)
        } else {
            u64::from(self.buf[1])
        };
        if len > 64 << 20 {
            return Err(io::Error::other(format!("frame of {len} bytes")));
        }
        let len = len as usize;
        if !self.fill(header + len).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let raw = self.take(header + len);
        Ok(Some(Frame {
            flags,
            body: raw[header..].to_vec(),
            wire_len: header + len,
        }))
    }

    /// The next command frame; errors on a data frame or the end.
    pub async fn command(&mut self) -> io::Result<Frame> {
        match self.frame().await? {
            Some(f) if f.is_command() => Ok(f),
            Some(f) => Err(io::Error::other(format!("expected a command, got {f:?}"))),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// The next message's frames (commands in between are skipped);
    /// `None` at a clean end.
    pub async fn message(&mut self) -> io::Result<Option<Vec<Vec<u8>>>> {
        let mut parts = Vec::new();
        loop {
            match self.frame().await? {
                None if parts.is_empty() => return Ok(None),
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
                Some(f) if f.is_command() => continue,
                Some(f) => {
                    let more = f.more();
                    parts.push(f.body);
                    if !more {
                        return Ok(Some(parts));
                    }
                }
            }
        }
    }

    /// Reads and counts whatever else arrives until the stream ends (EOF or
    /// an error such as a reset) or nothing arrives for `quiet`. Returns
    /// the bytes that arrived (including any already buffered) and whether
    /// the stream ended.
    pub async fn drain(&mut self, quiet: Duration) -> (u64, bool) {
        let mut extra = self.buf.len() as u64;
        self.buf.clear();
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

fn page_size() -> u64 {
    std::process::Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Resident set size of this process, in bytes.
pub fn rss() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let page = *PAGE.get_or_init(page_size);
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in statm");
    pages * page
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Samples the resident set on a thread of its own (so a busy runtime
/// does not delay it) every millisecond until dropped; `peak` is the
/// highest reading.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start() -> RssSampler {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss()));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the highest reading (including one taken now).
    pub fn finish(mut self) -> u64 {
        self.stop_thread();
        let now = rss();
        self.peak
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed)
            .max(now)
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
