//! Our sans-IO ZMTP engine speaking CURVE with real libzmq (pyzmq's bundled
//! libzmq 4.3), over TCP on loopback, with a driver of a few lines: write
//! `transmit()`, read into a buffer, `decode` events.
//!
//! - Our CURVE client (DEALER) against a pyzmq CURVE ROUTER that echoes
//!   and authenticates through ZAP: the handshake, multi-frame messages
//!   both ways, libzmq's boxed PINGs answered and ours answered, and
//!   libzmq seeing our permanent public key as the peer's User-Id.
//! - Our CURVE server (ROUTER) against a pyzmq CURVE DEALER: the same, our
//!   engine reporting the DEALER's key; a DEALER with the wrong server key
//!   is refused; our refusal reaches libzmq as an ERROR it reports.
//!
//! Keys cross in Z85 both ways, so the codecs are checked against libzmq's
//! too. Every wait is bounded; the Python peer is killed when dropped.
//! Without python3 and pyzmq the tests say SKIPPED and pass (unless `CI` is
//! set, see `common/python.rs`).

use messenger_testkit as common;

use common::python;

use std::process::Stdio;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;
use zmtp::{
    CurveKeyPair, CurvePublicKey, Encoder, Engine, EngineConfig, Event, Heartbeat, Limits,
    MechanismConfig, MechanismName, PeerInfo, Role, SocketType, ZmtpError,
};

/// Bound on any single wait.
const WAIT: Duration = Duration::from_secs(10);

/// A ROUTER with CURVE server keys made by libzmq; ZAP (allow any key)
/// gives each message the client's key as User-Id, which it appends to
/// the echo. PINGs every 50 ms. Ends on a message "bye".
const ROUTER: &str = r#"
import json, sys, zmq
from zmq.auth.thread import ThreadAuthenticator
ctx = zmq.Context()
auth = ThreadAuthenticator(ctx)
auth.start()
class AnyKey:
    def callback(self, domain, key):
        return True
auth.configure_curve_callback(domain='*', credentials_provider=AnyKey())
public, secret = zmq.curve_keypair()
s = ctx.socket(zmq.ROUTER)
s.curve_server = True
s.curve_secretkey = secret
s.curve_publickey = public
s.heartbeat_ivl = 50
s.heartbeat_timeout = 2000
s.rcvtimeo = 10000
s.linger = 2000
port = s.bind_to_random_port('tcp://127.0.0.1')
print(json.dumps({"port": port, "public": public.decode()}), flush=True)
while True:
    frames = s.recv_multipart(copy=False)
    user = frames[-1].get('User-Id')
    body = [f.bytes for f in frames]
    if body[-1] == b'bye':
        break
    s.send_multipart(body + [user.encode()])
s.close()
auth.stop()
ctx.term()
print(json.dumps({"done": True}), flush=True)
"#;

/// A DEALER with CURVE client keys made by libzmq, connecting to the port
/// and server key given; sends `count` messages of two frames and expects
/// each echoed, then reports. With `monitor`, reports the handshake
/// failure event instead (our refusal).
const DEALER: &str = r#"
import json, sys, time, zmq
from zmq.utils.monitor import recv_monitor_message
port, server_key, count, mode = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = zmq.Context()
public, secret = zmq.curve_keypair()
print(json.dumps({"public": public.decode()}), flush=True)
s = ctx.socket(zmq.DEALER)
s.curve_serverkey = server_key.encode()
s.curve_publickey = public
s.curve_secretkey = secret
s.identity = b'py-dealer'
s.heartbeat_ivl = 50
s.heartbeat_timeout = 2000
s.rcvtimeo = 10000
s.linger = 2000
mon = s.get_monitor_socket()
s.connect('tcp://127.0.0.1:%d' % port)
if mode == 'monitor':
    # Every event up to the first that ends the connection.
    mon.rcvtimeo = 10000
    while True:
        ev = recv_monitor_message(mon)
        print(json.dumps({"event": ev['event'], "value": ev['value']}), flush=True)
        if ev['event'] in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_DISCONNECTED):
            break
else:
    for i in range(count):
        s.send_multipart([b'', b'%d' % i, b'x' * (i * 1000)])
        reply = s.recv_multipart()
        assert reply == [b'', b'%d' % i, b'x' * (i * 1000), b'echo'], reply
        # Time for heartbeats between messages.
        time.sleep(0.06)
    print(json.dumps({"ok": count}), flush=True)
s.disable_monitor()
mon.close()
s.close()
ctx.term()
"#;

/// A Python peer, killed when dropped; its stdout read line by line.
struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    fn spawn(script: &str, args: &[&str]) -> Option<Peer> {
        let py = python::python()?;
        let mut child = Command::new(py)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("run python");
        let stdout = child.stdout.take().expect("piped");
        Some(Peer {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next stdout line as JSON.
    async fn line(&mut self) -> serde_json::Value {
        let line = timeout(WAIT, self.lines.next_line())
            .await
            .expect("the Python peer said nothing in time")
            .expect("read the Python peer's stdout")
            .expect("the Python peer ended early (its stderr is above)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    async fn exits_cleanly(mut self) {
        let status = timeout(WAIT, self.child.wait())
            .await
            .expect("the Python peer did not exit in time")
            .expect("wait for python");
        assert!(status.success(), "the Python peer failed: {status}");
    }
}

/// Our engine on a TCP stream: the whole driver.
struct Driven {
    stream: TcpStream,
    engine: Engine,
    encoder: Option<Encoder>,
    rbuf: BytesMut,
    /// PINGs we sent after the handshake.
    pings_sent: usize,
    /// PONGs we sent: answers to the peer's PINGs, which under CURVE
    /// arrive boxed.
    pongs_sent: usize,
}

impl Driven {
    fn new(stream: TcpStream, config: EngineConfig) -> Self {
        Driven {
            stream,
            engine: Engine::new(config, Instant::now()),
            encoder: None,
            rbuf: BytesMut::with_capacity(4096),
            pings_sent: 0,
            pongs_sent: 0,
        }
    }

    /// Writes what the engine and the encoder have to send.
    async fn flush(&mut self) {
        let mut out = self.engine.transmit().split();
        if let Some(enc) = self.encoder.as_mut() {
            while let Some(cmd) = self.engine.poll_command() {
                enc.command(&mut out, &cmd);
                match cmd.get(..5) {
                    Some(b"\x04PING") => self.pings_sent += 1,
                    Some(b"\x04PONG") => self.pongs_sent += 1,
                    _ => panic!("we sent {cmd:?}"),
                }
            }
        }
        if !out.is_empty() {
            self.stream.write_all(&out).await.expect("write");
        }
    }

    /// Reads more bytes (or runs the engine's timers); false at EOF.
    async fn read(&mut self) -> bool {
        let wants = self.engine.wants(&self.rbuf);
        self.rbuf.reserve(wants);
        let deadline = self.engine.poll_timeout();
        let read = self.stream.read_buf(&mut self.rbuf);
        let n = match deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), read).await {
                Ok(n) => n,
                Err(_) => {
                    self.engine.handle_timeout(Instant::now()).expect("timers");
                    return true;
                }
            },
            None => read.await,
        };
        let n = n.expect("read");
        if n > 0 {
            self.engine.received(Instant::now());
        }
        n > 0
    }

    /// Runs to the peer's decision; `decide` says accept (None) or refuse.
    async fn handshake(
        &mut self,
        decide: impl Fn(&PeerInfo) -> Option<&'static str>,
    ) -> Result<PeerInfo, ZmtpError> {
        timeout(WAIT, async {
            loop {
                let event = self.engine.decode(&mut self.rbuf, Instant::now());
                self.flush().await;
                match event? {
                    Some(Event::PeerReady(info)) => {
                        if let Some(reason) = decide(&info) {
                            let e = self.engine.refuse(reason);
                            self.flush().await;
                            return Err(e);
                        }
                        self.engine.accept(Instant::now());
                        self.encoder = self.engine.take_encoder();
                        assert!(self.encoder.is_some());
                        self.flush().await;
                        return Ok(info);
                    }
                    Some(Event::Message) => unreachable!("no message before the handshake"),
                    None => {
                        if !self.read().await {
                            return Err(ZmtpError::Closed);
                        }
                    }
                }
            }
        })
        .await
        .expect("the handshake did not end in time")
    }

    async fn send(&mut self, frames: &[&[u8]]) {
        let mut out = BytesMut::new();
        self.encoder
            .as_mut()
            .expect("handshake done")
            .message(&mut out, frames);
        self.stream.write_all(&out).await.expect("write");
    }

    async fn recv(&mut self) -> Vec<Bytes> {
        timeout(WAIT, async {
            loop {
                let event = self.engine.decode(&mut self.rbuf, Instant::now());
                self.flush().await;
                match event.expect("decode") {
                    Some(Event::Message) => return std::mem::take(self.engine.frames()),
                    Some(Event::PeerReady(_)) => unreachable!(),
                    None => assert!(self.read().await, "the peer closed"),
                }
            }
        })
        .await
        .expect("no message in time")
    }

    /// Keeps decoding (answering PINGs, sending ours) for `d`.
    async fn idle(&mut self, d: Duration) {
        let _ = timeout(d, async {
            loop {
                let event = self.engine.decode(&mut self.rbuf, Instant::now());
                self.flush().await;
                match event.expect("decode") {
                    Some(_) => panic!("unexpected event while idle"),
                    None => assert!(self.read().await, "the peer closed"),
                }
            }
        })
        .await;
    }
}

fn config(role: Role, socket_type: SocketType, mechanism: MechanismConfig) -> EngineConfig {
    EngineConfig {
        role,
        socket_type,
        identity: Bytes::from_static(b"rust"),
        properties: Vec::new(),
        limits: Limits::default(),
        handshake_timeout: WAIT,
        heartbeat: Some(Heartbeat {
            interval: Duration::from_millis(50),
            // An unanswered PING of ours fails the test within 300 ms.
            timeout: Duration::from_millis(300),
            ttl: Duration::ZERO,
        }),
        pace: None,
        mechanism,
    }
}

#[tokio::test]
async fn our_curve_client_talks_to_a_libzmq_curve_router() {
    let Some(mut py) = Peer::spawn(ROUTER, &[]) else {
        return;
    };
    let hello = py.line().await;
    let port = hello["port"].as_u64().expect("port") as u16;
    let server_key = CurvePublicKey::from_z85(hello["public"].as_str().expect("public"))
        .expect("libzmq's Z85 key parses");
    let keys = CurveKeyPair::generate().expect("OS RNG");
    let stream = timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut ours = Driven::new(
        stream,
        config(
            Role::Client,
            SocketType::Dealer,
            MechanismConfig::CurveClient {
                keys: keys.clone(),
                server_key,
            },
        ),
    );
    let info = ours.handshake(|_| None).await.expect("handshake");
    assert_eq!(info.mechanism, MechanismName::CURVE);
    assert_eq!(info.socket_type, SocketType::Router);
    assert_eq!(info.curve_public_key, Some(server_key));

    let big = vec![b'z'; 100_000];
    for i in 0..5u8 {
        let n = [b'0' + i];
        ours.send(&[b"", &n, &big[..usize::from(i) * 20_000]]).await;
        let echo = ours.recv().await;
        assert_eq!(echo.len(), 4, "{echo:?}");
        assert_eq!(&echo[1][..], &n);
        assert_eq!(echo[2].len(), usize::from(i) * 20_000);
        // libzmq (through ZAP) saw our permanent key.
        assert_eq!(&echo[3][..], keys.public().to_z85().as_bytes());
    }
    // Both sides PING every 50 ms: libzmq's boxed PINGs get our boxed
    // PONGs, and ours get answers (else our heartbeat times out, and
    // `handle_timeout` fails the test).
    ours.idle(Duration::from_millis(700)).await;
    assert!(ours.pongs_sent >= 3, "{} PONGs", ours.pongs_sent);
    assert!(ours.pings_sent >= 3, "{} PINGs", ours.pings_sent);
    ours.send(&[b"", b"bye"]).await;
    assert_eq!(py.line().await["done"], true);
    py.exits_cleanly().await;
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    (listener, port)
}

async fn accept(listener: &TcpListener) -> TcpStream {
    timeout(WAIT, listener.accept())
        .await
        .expect("libzmq connects in time")
        .expect("accept")
        .0
}

fn server_config(keys: &CurveKeyPair) -> EngineConfig {
    config(
        Role::Server,
        SocketType::Router,
        MechanismConfig::CurveServer { keys: keys.clone() },
    )
}

#[tokio::test]
async fn a_libzmq_curve_dealer_talks_to_our_curve_server() {
    let keys = CurveKeyPair::generate().expect("OS RNG");
    let (listener, port) = listen().await;
    let count = 4;
    let Some(mut py) = Peer::spawn(
        DEALER,
        &[&port, &keys.public().to_z85(), &count.to_string(), "echo"],
    ) else {
        return;
    };
    let dealer_key = CurvePublicKey::from_z85(py.line().await["public"].as_str().expect("public"))
        .expect("libzmq's Z85 key parses");
    let mut ours = Driven::new(accept(&listener).await, server_config(&keys));
    let info = ours.handshake(|_| None).await.expect("handshake");
    assert_eq!(info.socket_type, SocketType::Dealer);
    assert_eq!(&info.identity[..], b"py-dealer");
    assert_eq!(info.curve_public_key, Some(dealer_key));
    for i in 0..count {
        let m = ours.recv().await;
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[1], format!("{i}").as_bytes());
        assert_eq!(m[2].len(), i * 1000);
        ours.send(&[&m[0], &m[1], &m[2], b"echo"]).await;
    }
    assert_eq!(py.line().await["ok"], count as u64);
    assert!(ours.pongs_sent >= 1, "{} PONGs", ours.pongs_sent);
    assert!(ours.pings_sent >= 1, "{} PINGs", ours.pings_sent);
    py.exits_cleanly().await;
}

#[tokio::test]
async fn a_libzmq_dealer_with_the_wrong_server_key_is_refused() {
    let keys = CurveKeyPair::generate().expect("OS RNG");
    let wrong = CurveKeyPair::generate().expect("OS RNG");
    let (listener, port) = listen().await;
    let Some(mut py) = Peer::spawn(DEALER, &[&port, &wrong.public().to_z85(), "1", "monitor"])
    else {
        return;
    };
    let _ = py.line().await;
    let mut ours = Driven::new(accept(&listener).await, server_config(&keys));
    assert_eq!(
        ours.handshake(|_| None).await.err(),
        Some(ZmtpError::BadBox("HELLO"))
    );
    // libzmq reads an ERROR that is no ZAP status code without a word to
    // its application: it sees the connection close, never succeed.
    drop(ours);
    loop {
        let ev = py.line().await;
        let event = ev["event"].as_u64().expect("event");
        assert_ne!(event, 0x1000, "ZMQ_EVENT_HANDSHAKE_SUCCEEDED: {ev}");
        if event == 0x0200 || event >= 0x0800 {
            break;
        }
    }
    py.exits_cleanly().await;
}

#[tokio::test]
async fn our_refusal_reaches_libzmq_as_an_error() {
    let keys = CurveKeyPair::generate().expect("OS RNG");
    let (listener, port) = listen().await;
    let Some(mut py) = Peer::spawn(DEALER, &[&port, &keys.public().to_z85(), "1", "monitor"])
    else {
        return;
    };
    let dealer_key =
        CurvePublicKey::from_z85(py.line().await["public"].as_str().expect("public")).expect("key");
    let mut ours = Driven::new(accept(&listener).await, server_config(&keys));
    // The socket layer's decision, on the key the handshake proved. libzmq
    // reports a 3-digit reason as a ZAP-style status code.
    let r = ours
        .handshake(|info| (info.curve_public_key == Some(dealer_key)).then_some("400"))
        .await;
    assert_eq!(r.err(), Some(ZmtpError::Refused("400")));
    let ev = loop {
        let ev = py.line().await;
        // Skip CONNECT_DELAYED and CONNECTED.
        if ev["event"]
            .as_u64()
            .is_some_and(|e| e > 0x0001 && e != 0x0002)
        {
            break ev;
        }
    };
    assert_eq!(
        ev["event"].as_u64(),
        Some(0x4000),
        "ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: {ev}"
    );
    assert_eq!(ev["value"].as_u64(), Some(400), "{ev}");
    py.exits_cleanly().await;
}
