//! CURVE (RFC 26) end to end, through the command and against real libzmq
//! (pyzmq's bundled libzmq 4.3):
//!
//! - `messenger keygen` writes certificates pyzmq's `zmq.auth` reads, and
//!   `--curve-cert` / `--curve-allow` read the ones pyzmq writes; bad files
//!   are refused by line without a key character in the error;
//! - a pyzmq CURVE DEALER gets ECHO, a server-loop reply and the ACKs from
//!   `messenger serve --curve-cert` (tcp and ipc);
//! - `messenger request|send|ping --curve-server-key` and the library's
//!   `Config::curve` reach a pyzmq CURVE ROUTER, which sees our key;
//! - clear text, a client expecting another server key, and a client not
//!   on `--curve-allow` are refused with nothing delivered (pyzmq and the
//!   command), and `curve_refused` counts the allow-list's refusals;
//! - a MESSAGE with one byte flipped on the way (a TCP relay) cuts the
//!   connection with nothing delivered;
//! - a distinctive body never crosses the wire in clear (it does without
//!   CURVE: the control).
//!
//! The pyzmq tests say SKIPPED and pass without python3 and pyzmq (unless
//! `CI` is set; see `common/python.rs`); the others always run. Every wait
//! is bounded, ports are 0, files live in temp dirs, and every child
//! process is killed when dropped.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::serve::ServeProcess;
use common::{Answer, eventually, serve_seen, within};
use messenger::curve::{KeyPair, PublicKey};
use messenger::{Config, Curve, ECHO, Endpoint, Messenger, NOOP};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_messenger");

/// Bound on any single wait.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The command

/// Runs `messenger ARGS` to its exit within `WAIT` (killed past it).
async fn cli(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run messenger");
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("messenger {args:?}: still running after {WAIT:?}"))
        .expect("wait for messenger")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Says what a run of the command left, for failure messages.
fn ran(args: &[&str], out: &Output) -> String {
    format!(
        "messenger {}: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs `messenger ARGS` and checks it succeeded; its stdout.
async fn cli_ok(args: &[&str]) -> String {
    let out = cli(args).await;
    assert!(out.status.success(), "{}", ran(args, &out));
    text(&out.stdout)
}

/// Runs `messenger ARGS` and checks it failed; its stderr.
async fn cli_fails(args: &[&str]) -> String {
    let out = cli(args).await;
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        ran(args, &out)
    );
    text(&out.stderr)
}

/// A key pair made by `messenger keygen --out DIR/NAME`: the secret
/// certificate's path and the public key it printed.
async fn keygen(dir: &Path, name: &str) -> (PathBuf, PublicKey) {
    let cert = dir.join(name);
    let stdout = cli_ok(&["keygen", "--out", path(&cert)]).await;
    let key = stdout
        .trim_end()
        .parse()
        .unwrap_or_else(|e| panic!("keygen printed {stdout:?}, not a public key: {e}"));
    (cert, key)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// `FILE.pub` for `FILE`.
fn pub_of(cert: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", cert.display()))
}

/// The secret key's Z85 text in a certificate, to check it is shown
/// nowhere else.
fn secret_in(cert: &Path) -> String {
    let text = std::fs::read_to_string(cert).expect("read cert");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret-key = "))
        .unwrap_or_else(|| panic!("no secret-key in {text}"));
    line.trim_matches('"').to_string()
}

fn tcp_addr(e: &Endpoint) -> SocketAddr {
    match e {
        Endpoint::Tcp { host, port } => format!("{host}:{port}").parse().expect("an address"),
        other => panic!("not tcp: {other}"),
    }
}

fn curve_client(keys: KeyPair, server_key: PublicKey) -> Config {
    Config {
        curve: Some(Curve {
            keys,
            server_key: Some(server_key),
            allow: None,
        }),
        ..Config::default()
    }
}

fn curve_server(keys: KeyPair) -> Config {
    Config {
        curve: Some(Curve {
            keys,
            server_key: None,
            allow: None,
        }),
        ..Config::default()
    }
}

fn u64_of(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// Stops `serve` (SIGTERM) and returns the counters it printed as it
/// shut down.
async fn final_stats(mut serve: ServeProcess) -> Value {
    let exit = serve.terminate(WAIT).await;
    assert!(
        matches!(exit, Some(Ok(s)) if s.success()),
        "serve did not exit cleanly: {exit:?}; {}",
        serve.stderr_tail(20)
    );
    serve
        .final_stats()
        .unwrap_or_else(|| panic!("no final counters; {}", serve.stderr_tail(20)))
}

// ---------------------------------------------------------------------------
// pyzmq peers

/// A pyzmq DEALER, configured by a JSON argument: `endpoint`, `identity`,
/// `send` (payloads, sent at once), `wait` (seconds), `want` (regular
/// expressions: it stops once every one matched a received payload), and
/// for CURVE `server_key` (or `server_cert`, a public certificate) and
/// `client_cert` (else a fresh key pair). It ACKs whatever is not an ACK,
/// watches its socket monitor, and prints one JSON line: its public key,
/// every payload received, the routing ids they came from, and the monitor
/// events.
const DEALER: &str = r#"
import json, re, sys, time, zmq, zmq.auth
from zmq.utils.monitor import recv_monitor_message
cfg = json.loads(sys.argv[1])
names = {getattr(zmq, n): n[6:].lower() for n in dir(zmq)
         if n.startswith('EVENT_') and isinstance(getattr(zmq, n), int)
         and n not in ('EVENT_ALL', 'EVENT_ALL_V1', 'EVENT_ALL_V2')}
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.identity = cfg['identity'].encode()
public = None
if cfg.get('server_cert'):
    cfg['server_key'] = zmq.auth.load_certificate(cfg['server_cert'])[0].decode()
if cfg.get('server_key'):
    if cfg.get('client_cert'):
        public, secret = zmq.auth.load_certificate(cfg['client_cert'])
    else:
        public, secret = zmq.curve_keypair()
    s.curve_serverkey = cfg['server_key'].encode()
    s.curve_publickey = public
    s.curve_secretkey = secret
mon = s.get_monitor_socket()
s.connect(cfg['endpoint'])
for payload in cfg['send']:
    s.send_multipart([b'', payload.encode()])
want = [re.compile(w) for w in cfg.get('want', [])]
received, routers, events = [], [], []
deadline = time.monotonic() + cfg['wait']
def done():
    return want and all(any(w.fullmatch(r) for r in received) for w in want)
while True:
    while mon.poll(0):
        ev = recv_monitor_message(mon)
        events.append(names.get(ev['event'], str(ev['event'])))
    left = deadline - time.monotonic()
    if left <= 0 or done():
        break
    if not s.poll(int(min(left, 0.05) * 1000) + 1):
        continue
    frames = s.recv_multipart()
    payload = frames[-1].decode('utf-8', 'backslashreplace')
    received.append(payload)
    if len(frames) == 3 and frames[1] == b'':
        routers.append(frames[0].decode('utf-8', 'backslashreplace'))
    else:
        routers.append(None)
    parts = payload.split('-', 3)
    if len(parts) == 4 and parts[2] != '2':
        s.send_multipart([b'', ('%s-0-2-' % parts[0]).encode()])
s.disable_monitor()
mon.close(0)
# Time for our last ACKs to leave, when we were let in.
s.close(linger=500 if want else 0)
ctx.term()
print(json.dumps({'public': public.decode() if public else None, 'received': received,
                  'routers': routers, 'events': events}), flush=True)
"#;

/// A pyzmq CURVE ROUTER speaking the protocol as NoisePage does: its key
/// pair read from a certificate (`cert`) with `zmq.auth`; ZAP admits any
/// key and gives each message the client's key as User-Id. It prints
/// `{"port": N}`, then one line per message received (peer, payload,
/// user); ACKs each non-ACK with `[peer, "", "N-0-2-"]` and answers ECHO
/// with the body and server-loop messages that ask for a reply with
/// `py:{body}`. Stops when its stdin closes.
const ROUTER: &str = r#"
import json, os, sys, time, zmq, zmq.auth
from zmq.auth.thread import ThreadAuthenticator
cfg = json.loads(sys.argv[1])
public, secret = zmq.auth.load_certificate(cfg['cert'])
ctx = zmq.Context()
auth = ThreadAuthenticator(ctx)
auth.start()
class AnyKey:
    def callback(self, domain, key):
        return True
auth.configure_curve_callback(domain='*', credentials_provider=AnyKey())
s = ctx.socket(zmq.ROUTER)
s.curve_server = True
s.curve_publickey = public
s.curve_secretkey = secret
s.linger = 1000
port = s.bind_to_random_port('tcp://127.0.0.1')
print(json.dumps({'port': port, 'public': public.decode()}), flush=True)
poller = zmq.Poller()
poller.register(s, zmq.POLLIN)
stdin = sys.stdin.fileno()
poller.register(stdin, zmq.POLLIN)
next_id = {}
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    ready = dict(poller.poll(200))
    if stdin in ready and not os.read(stdin, 4096):
        break
    if s not in ready:
        continue
    frames = s.recv_multipart(copy=False)
    user = frames[-1].get('User-Id')
    parts = [f.bytes for f in frames]
    peer, payload = parts[0], parts[-1]
    print(json.dumps({'peer': peer.decode('utf-8', 'backslashreplace'), 'frames': len(parts),
                      'payload': payload.decode('utf-8', 'backslashreplace'), 'user': user}),
          flush=True)
    fields = payload.split(b'-', 3)
    if len(fields) != 4 or fields[2] == b'2':
        continue
    mid, src, dst, body = fields
    s.send_multipart([peer, b'', b'%s-0-2-' % mid])
    if src == b'0':
        continue
    out = body if dst == b'1' else b'py:' + body
    n = next_id.get(peer, 0)
    next_id[peer] = n + 1
    s.send_multipart([peer, b'', b'%d-0-%s-' % (n, src) + out])
s.close()
auth.stop()
ctx.term()
print(json.dumps({'done': True}), flush=True)
"#;

/// A Python peer, killed when dropped; its stdout read line by line.
struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    name: String,
}

impl Py {
    fn spawn(py: &Path, name: &str, script: &str, cfg: &Value) -> Py {
        let mut child = Command::new(py)
            .arg("-c")
            .arg(script)
            .arg(cfg.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python for {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        Py {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            name: name.to_string(),
        }
    }

    /// The next line, as JSON, within `limit`.
    async fn json_within(&mut self, limit: Duration, what: &str) -> Value {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no {what} within {limit:?}", self.name))
            .expect("read python's stdout")
            .unwrap_or_else(|| panic!("{}: stdout closed before {what}", self.name));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.name))
    }

    async fn json(&mut self, what: &str) -> Value {
        self.json_within(WAIT, what).await
    }

    /// Closes its stdin, takes every line left, and checks it exits 0.
    async fn finish(mut self) -> Vec<Value> {
        self.stdin.take();
        let mut rest = Vec::new();
        within(WAIT.as_secs(), "python's last lines", async {
            while let Some(line) = self.lines.next_line().await.expect("read") {
                rest.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.name)),
                );
            }
        })
        .await;
        let status = within(WAIT.as_secs(), "python exits", self.child.wait())
            .await
            .expect("wait for python");
        assert!(status.success(), "{}: {status}", self.name);
        rest
    }
}

/// A DEALER run ([`DEALER`]) with `cfg`: its report.
async fn dealer(py: &Path, name: &str, cfg: Value) -> Value {
    let wait = cfg["wait"].as_f64().expect("cfg has wait");
    let mut p = Py::spawn(py, name, DEALER, &cfg);
    let limit = WAIT + Duration::from_secs_f64(wait);
    let report = p.json_within(limit, "the dealer's report").await;
    p.finish().await;
    report
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or("").to_string())
        .collect()
}

/// A pyzmq CURVE ROUTER ([`ROUTER`]) with the key pair of `cert`; it and
/// its port.
async fn py_router(py: &Path, cert: &Path) -> (Py, u16) {
    let mut r = Py::spawn(py, "pyzmq ROUTER", ROUTER, &json!({ "cert": path(cert) }));
    let first = r.json("the port").await;
    let port = first["port"].as_u64().expect("a port") as u16;
    (r, port)
}

// ---------------------------------------------------------------------------
// A TCP relay that records what crosses it, and may flip a byte

#[derive(Debug, PartialEq, Eq)]
enum RelayEvent {
    /// A byte of this connection's first client MESSAGE was flipped.
    Flipped(usize),
    /// The server closed (or reset) this connection.
    ServerClosed(usize),
}

/// Listens on loopback and relays each connection to `target`, keeping
/// every byte each way. With `flip`, the last byte (inside the box) of the
/// first CURVE MESSAGE a client sends on each connection is flipped.
struct Relay {
    addr: SocketAddr,
    to_server: Arc<Mutex<Vec<u8>>>,
    to_client: Arc<Mutex<Vec<u8>>>,
    events: mpsc::UnboundedReceiver<RelayEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Its connections are in a JoinSet the task owns: they go too.
        self.task.abort();
    }
}

/// A ZMTP greeting's length; frames follow it.
const GREETING: usize = 64;

/// The header and body lengths of the frame at the start of `buf`, once
/// all of it is there.
fn whole_frame(buf: &[u8]) -> Option<(usize, usize)> {
    let flags = *buf.first()?;
    let (header, len) = if flags & 0x02 != 0 {
        let size: [u8; 8] = buf.get(1..9)?.try_into().ok()?;
        (9, u64::from_be_bytes(size) as usize)
    } else {
        (2, *buf.get(1)? as usize)
    };
    (buf.len() >= header + len).then_some((header, len))
}

impl Relay {
    async fn start(target: SocketAddr, flip: bool) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let addr = listener.local_addr().expect("relay address");
        let to_server = Arc::new(Mutex::new(Vec::new()));
        let to_client = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::unbounded_channel();
        let (up_log, down_log) = (Arc::clone(&to_server), Arc::clone(&to_client));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            for n in 0.. {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                conns.spawn(relay_one(
                    n,
                    client,
                    server,
                    flip,
                    Arc::clone(&up_log),
                    Arc::clone(&down_log),
                    tx.clone(),
                ));
            }
        });
        Relay {
            addr,
            to_server,
            to_client,
            events,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Waits for `want` (other events are passed over).
    async fn expect(&mut self, want: RelayEvent) {
        within(WAIT.as_secs(), &format!("relay: {want:?}"), async {
            while let Some(e) = self.events.recv().await {
                if e == want {
                    return;
                }
            }
            panic!("the relay stopped before {want:?}");
        })
        .await
    }

    /// Whether `needle` crossed, either way.
    fn carried(&self, needle: &[u8]) -> bool {
        [&self.to_server, &self.to_client].iter().any(|log| {
            log.lock()
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
    }

    fn bytes(&self) -> (usize, usize) {
        (
            self.to_server.lock().unwrap().len(),
            self.to_client.lock().unwrap().len(),
        )
    }
}

async fn relay_one(
    n: usize,
    client: TcpStream,
    server: TcpStream,
    flip: bool,
    up_log: Arc<Mutex<Vec<u8>>>,
    down_log: Arc<Mutex<Vec<u8>>>,
    events: mpsc::UnboundedSender<RelayEvent>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    down_log.lock().unwrap().extend_from_slice(&buf[..k]);
                    if cw.write_all(&buf[..k]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = events.send(RelayEvent::ServerClosed(n));
        let _ = cw.shutdown().await;
    };
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        // The greeting goes on as it comes (libzmq sends it in two parts
        // and waits for the other side's between them); frames go on
        // whole, so one can be changed.
        let mut greeting_left = GREETING;
        let mut pending = Vec::new();
        let mut flipped = false;
        loop {
            let k = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
            up_log.lock().unwrap().extend_from_slice(&buf[..k]);
            let g = greeting_left.min(k);
            if g > 0 && sw.write_all(&buf[..g]).await.is_err() {
                break;
            }
            greeting_left -= g;
            pending.extend_from_slice(&buf[g..k]);
            let mut at = 0;
            while let Some((header, len)) = whole_frame(&pending[at..]) {
                let frame = &mut pending[at..at + header + len];
                if flip && !flipped && frame[header..].starts_with(b"\x07MESSAGE") {
                    *frame.last_mut().expect("a MESSAGE is not empty") ^= 0x20;
                    flipped = true;
                    let _ = events.send(RelayEvent::Flipped(n));
                }
                at += header + len;
            }
            if sw.write_all(&pending[..at]).await.is_err() {
                break;
            }
            pending.drain(..at);
        }
        let _ = sw.shutdown().await;
    };
    tokio::join!(up, down);
}

// ---------------------------------------------------------------------------
// Certificates

/// `keygen --out` writes the secret certificate (0600) and FILE.pub, prints
/// only the public key, refuses to overwrite, and without --out prints a
/// certificate `serve --curve-cert` takes.
#[tokio::test]
async fn keygen_writes_certificates_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (cert, public) = keygen(dir.path(), "server.cert").await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cert), 0o600, "the secret certificate's mode");
    assert_eq!(
        mode(&pub_of(&cert)) & 0o022,
        0,
        "nobody else may write FILE.pub"
    );
    let secret = secret_in(&cert);
    assert_eq!(secret.len(), 40);
    let text = std::fs::read_to_string(&cert).unwrap();
    assert!(
        text.starts_with("#   ****  Generated by messenger keygen  ****\n"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "\ncurve\n    public-key = \"{public}\"\n    secret-key = \""
    )));
    let public_text = std::fs::read_to_string(pub_of(&cert)).unwrap();
    assert!(public_text.contains(&format!("    public-key = \"{public}\"\n")));
    assert!(!public_text.contains("secret-key") && !public_text.contains(&secret));

    let again = cli_fails(&["keygen", "--out", path(&cert)]).await;
    assert!(again.contains("exists; not overwriting"), "{again}");
    assert_eq!(secret_in(&cert), secret, "the certificate was overwritten");

    // Without --out, the certificate goes to stdout: serve reads it.
    let printed = cli_ok(&["keygen"]).await;
    let stdout_cert = dir.path().join("stdout.cert");
    std::fs::write(&stdout_cert, &printed).unwrap();
    std::fs::set_permissions(&stdout_cert, std::fs::Permissions::from_mode(0o600)).unwrap();
    let serve = ServeProcess::start(&["--curve-cert", path(&stdout_cert)]).await;
    final_stats(serve).await;
}

/// Damaged certificates and allow-lists are refused by file and line, with
/// no key character in the message; the flags that need another say so.
#[tokio::test]
async fn bad_curve_files_are_refused_by_line_without_showing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = keygen(dir.path(), "a.cert").await;
    let (other, other_public) = keygen(dir.path(), "b.cert").await;
    let secret = secret_in(&cert);
    let bind = ["serve", "--bind", "tcp://127.0.0.1:0"];
    let no_key = |e: &str| {
        for part in [&secret[..8], &secret[16..24], &secret[32..]] {
            assert!(!e.contains(part), "the error shows the secret key: {e}");
        }
    };

    // The halves of two pairs.
    let mixed = dir.path().join("mixed.cert");
    let text = std::fs::read_to_string(&cert).unwrap();
    let public_line = text.lines().position(|l| l.contains("public-key")).unwrap() + 1;
    let own_public = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("public-key = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    std::fs::write(&mixed, text.replace(&own_public, &other_public.to_string())).unwrap();
    let e = cli_fails(&[&bind[..], &["--curve-cert", path(&mixed)]].concat()).await;
    assert!(
        e.contains(&format!(
            "{}:{public_line}: public-key does not match",
            mixed.display()
        )),
        "{e}"
    );
    no_key(&e);
    assert!(!e.contains(&other_public.to_string()), "{e}");

    // A secret key one character short.
    let short = dir.path().join("short.cert");
    std::fs::write(&short, text.replace(&secret, &secret[1..])).unwrap();
    let e = cli_fails(&[&bind[..], &["--curve-cert", path(&short)]].concat()).await;
    assert!(
        e.contains(&format!(
            "{}:{}: secret-key",
            short.display(),
            public_line + 1
        )),
        "{e}"
    );
    no_key(&e);

    // A public certificate where the secret one is needed.
    let e = cli_fails(&[&bind[..], &["--curve-cert", path(&pub_of(&cert))]].concat()).await;
    assert!(e.contains("no secret-key"), "{e}");

    // An allow-list with a bad line 3, and one holding a secret key.
    let allow = dir.path().join("allow");
    std::fs::write(&allow, format!("# friends\n{other_public}\nnot-a-key\n")).unwrap();
    let flags = ["--curve-cert", path(&cert), "--curve-allow", path(&allow)];
    let e = cli_fails(&[&bind[..], &flags].concat()).await;
    assert!(
        e.contains(&format!("{}:3: not a Z85 public key", allow.display())),
        "{e}"
    );
    let flags = ["--curve-cert", path(&cert), "--curve-allow", path(&other)];
    let e = cli_fails(&[&bind[..], &flags].concat()).await;
    assert!(
        e.contains("a secret-key has no place in an allow-list"),
        "{e}"
    );
    assert!(!e.contains(&secret_in(&other)[..10]), "{e}");

    // A missing file is named.
    let missing = dir.path().join("missing.cert");
    let e = cli_fails(&[&bind[..], &["--curve-cert", path(&missing)]].concat()).await;
    assert!(e.contains(&missing.display().to_string()), "{e}");

    // Flags that make sense only with another.
    let e = cli_fails(&[&bind[..], &["--curve-allow", path(&allow)]].concat()).await;
    assert!(e.contains("--curve-cert"), "{e}");
    let e = cli_fails(&[
        "request",
        "tcp://127.0.0.1:1",
        "x",
        "--curve-cert",
        path(&cert),
    ])
    .await;
    assert!(e.contains("--curve-server-key"), "{e}");
    let e = cli_fails(&["ping", "tcp://127.0.0.1:1", "--curve-server-key", "short"]).await;
    assert!(e.contains("not a Z85 public key"), "{e}");
}

/// pyzmq reads `messenger keygen`'s certificates (the ROUTER test below),
/// and serve reads pyzmq's: its secret certificate for --curve-cert and
/// a client's public certificate for --curve-allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_certificates_pyzmq_wrote() {
    let Some(py) = common::python::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut make = Py::spawn(
        &py,
        "zmq.auth.create_certificates",
        r#"
import json, sys, zmq.auth
d = json.loads(sys.argv[1])['dir']
made = [zmq.auth.create_certificates(d, name, metadata={'name': 'a b c'}) for name in ('server', 'client')]
print(json.dumps(made), flush=True)
"#,
        &json!({ "dir": path(dir.path()) }),
    );
    let made = make.json("the certificates").await;
    make.finish().await;
    let file = |i: usize, j: usize| made[i][j].as_str().expect("a path").to_string();
    let (server_public, server_secret) = (file(0, 0), file(0, 1));
    let (client_public, client_secret) = (file(1, 0), file(1, 1));
    let serve = ServeProcess::start(&[
        "--curve-cert",
        &server_secret,
        "--curve-allow",
        &client_public,
    ])
    .await;
    let report = dealer(
        &py,
        "pyzmq DEALER with pyzmq's certificates",
        json!({
            "endpoint": serve.tcp.to_string(), "identity": "py-certs",
            "server_cert": server_public, "client_cert": client_secret,
            "send": ["0-7-1-made by pyzmq"], "want": ["0-0-2-", r"\d+-0-7-made by pyzmq"],
            "wait": 10,
        }),
    )
    .await;
    let got = strings(&report["received"]);
    assert!(got.contains(&"0-0-2-".to_string()), "{report}");
    let stats = final_stats(serve).await;
    assert_eq!(u64_of(&stats, "echoes_answered"), 1, "{stats}");
    assert_eq!(u64_of(&stats, "curve_refused"), 0, "{stats}");
}

// ---------------------------------------------------------------------------
// Against libzmq

/// A pyzmq CURVE DEALER gets, from `messenger serve --curve-cert --slc
/// echo` on tcp and ipc: the ACK of each message, ECHO's answer, and the
/// server loop's reply; all from the serve's routing id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzmq_curve_dealer_gets_echo_server_loop_and_acks_from_serve() {
    let Some(py) = common::python::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, public) = keygen(dir.path(), "server.cert").await;
    let serve = ServeProcess::start(&["--curve-cert", path(&cert), "--slc", "echo"]).await;
    for (t, endpoint) in [("tcp", &serve.tcp), ("ipc", &serve.ipc)] {
        let report = dealer(
            &py,
            &format!("pyzmq CURVE DEALER on {t}"),
            json!({
                "endpoint": endpoint.to_string(), "identity": format!("py-curve-{t}"),
                "server_key": public.to_string(),
                "send": ["0-7-1-echo over curve", "1-8-0-to the server loop"],
                "want": ["0-0-2-", "1-0-2-", r"\d+-0-7-echo over curve",
                         r"\d+-0-8-to the server loop"],
                "wait": 10,
            }),
        )
        .await;
        let got = strings(&report["received"]);
        for want in ["0-0-2-", "1-0-2-"] {
            assert!(got.iter().any(|p| p == want), "{t}: no {want}: {report}");
        }
        for body in ["-0-7-echo over curve", "-0-8-to the server loop"] {
            assert_eq!(
                got.iter().filter(|p| p.ends_with(body)).count(),
                1,
                "{t}: {body}: {report}"
            );
        }
        assert!(
            strings(&report["routers"])
                .iter()
                .all(|r| r == "messenger-serve"),
            "{t}: {report}"
        );
        let events = strings(&report["events"]);
        assert!(
            events.iter().any(|e| e == "handshake_succeeded"),
            "{t}: {events:?}"
        );
    }
    let stats = final_stats(serve).await;
    assert_eq!(u64_of(&stats, "echoes_answered"), 2, "{stats}");
    assert_eq!(u64_of(&stats, "slc_delivered"), 2, "{stats}");
}

/// `messenger request`, `send` and `ping` with --curve-server-key, and the
/// library with `Config::curve`, reach a pyzmq CURVE ROUTER whose keys
/// come from `messenger keygen` (read by pyzmq's `zmq.auth`); libzmq sees
/// the key of --curve-cert, or a fresh one per run without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_and_library_reach_a_pyzmq_curve_router() {
    let Some(py) = common::python::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, server_public) = keygen(dir.path(), "router.cert").await;
    let (client_cert, client_public) = keygen(dir.path(), "client.cert").await;
    let (mut router, port) = py_router(&py, &server_cert).await;
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let key = server_public.to_string();

    let out = cli_ok(&[
        "request",
        &endpoint,
        "over curve",
        "--identity",
        "cli-cert",
        "--curve-server-key",
        &key,
        "--curve-cert",
        path(&client_cert),
    ])
    .await;
    assert_eq!(out, "py:over curve\n");
    let seen = router.json("the CLI's request").await;
    assert_eq!(seen["peer"], "cli-cert", "{seen}");
    assert_eq!(seen["user"], client_public.to_string(), "{seen}");
    assert!(
        seen["payload"]
            .as_str()
            .is_some_and(|p| p.ends_with("-0-over curve")),
        "{seen}"
    );
    let ack = router.json("the CLI's ACK of the reply").await;
    assert_eq!(ack["payload"], "0-0-2-", "{ack}");

    // Without --curve-cert: a key pair of its own.
    let out = cli_ok(&[
        "request",
        &endpoint,
        "ephemeral",
        "--identity",
        "cli-ephemeral",
        "--curve-server-key",
        &key,
    ])
    .await;
    assert_eq!(out, "py:ephemeral\n");
    let seen = router.json("the second request").await;
    let user = seen["user"].as_str().unwrap_or("");
    assert_eq!(user.len(), 40, "{seen}");
    assert_ne!(user, client_public.to_string(), "{seen}");
    router.json("its ACK").await;

    cli_ok(&[
        "send",
        &endpoint,
        "sent",
        "--identity",
        "cli-send",
        "--curve-server-key",
        &key,
    ])
    .await;
    let seen = router.json("the send").await;
    assert_eq!(seen["peer"], "cli-send", "{seen}");
    let out = cli_ok(&[
        "ping",
        &endpoint,
        "-c",
        "2",
        "-i",
        "10ms",
        "--curve-server-key",
        &key,
    ])
    .await;
    assert!(out.contains("2 sent, 2 received"), "{out}");
    for _ in 0..4 {
        router.json("a ping or its ACK").await;
    }

    // The library, in this process.
    let keys = KeyPair::generate().unwrap();
    let lib_key = *keys.public();
    let m = Messenger::builder()
        .identity("lib-curve")
        .config(curve_client(keys, server_public))
        .build()
        .unwrap();
    let conn = within(
        10,
        "library connects",
        m.make_connection(&endpoint.parse().unwrap()),
    )
    .await
    .expect("connect");
    let reply = within(
        10,
        "library request",
        m.request(conn, NOOP, b"from the library"),
    )
    .await
    .expect("reply");
    assert_eq!(&reply.body[..], b"py:from the library");
    let echo = within(10, "library echo", m.request(conn, ECHO, b"echoed"))
        .await
        .expect("echo");
    assert_eq!(&echo.body[..], b"echoed");
    m.shutdown().await;
    let rest = router.finish().await;
    let lib: Vec<&Value> = rest.iter().filter(|v| v["peer"] == "lib-curve").collect();
    assert!(lib.len() >= 2, "{rest:?}");
    assert!(
        lib.iter().all(|v| v["user"] == lib_key.to_string()),
        "{rest:?}"
    );
    assert_eq!(rest.last(), Some(&json!({ "done": true })));
}

/// Against `serve --curve-cert --curve-allow`: a clear-text pyzmq DEALER,
/// a CURVE one expecting another server's key and one not on the list get
/// nothing and deliver nothing; the one on the list is served. Only its
/// messages reach the server loop, and the stranger is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzmq_clients_without_the_right_keys_are_refused() {
    let Some(py) = common::python::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, server_public) = keygen(dir.path(), "server.cert").await;
    let (friend_cert, friend_public) = keygen(dir.path(), "friend.cert").await;
    let (_, elsewhere) = keygen(dir.path(), "elsewhere.cert").await;
    let serve = ServeProcess::start(&[
        "--curve-cert",
        path(&server_cert),
        "--curve-allow",
        path(&pub_of(&friend_cert)),
        "--slc",
        "echo",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .await;
    let endpoint = serve.tcp.to_string();
    let refused = |identity: &'static str, curve: Value| {
        let mut cfg = json!({
            "endpoint": endpoint, "identity": identity,
            "send": [format!("0-7-1-{identity}"), format!("1-8-0-{identity}")],
            "wait": 2,
        });
        cfg.as_object_mut()
            .unwrap()
            .extend(curve.as_object().unwrap().clone());
        dealer(&py, identity, cfg)
    };
    let (null, wrong, stranger, friend) = tokio::join!(
        refused("null", json!({})),
        refused(
            "wrong-server-key",
            json!({ "server_key": elsewhere.to_string(), "client_cert": path(&friend_cert) })
        ),
        refused(
            "stranger",
            json!({ "server_key": server_public.to_string() })
        ),
        dealer(
            &py,
            "friend",
            json!({
                "endpoint": endpoint, "identity": "friend",
                "server_key": server_public.to_string(), "client_cert": path(&friend_cert),
                "send": ["0-7-1-friend", "1-8-0-friend"],
                "want": ["0-0-2-", "1-0-2-", r"\d+-0-7-friend", r"\d+-0-8-friend"],
                "wait": 10,
            }),
        ),
    );
    assert_eq!(friend["public"], friend_public.to_string(), "{friend}");
    assert_eq!(strings(&friend["received"]).len(), 4, "{friend}");
    for report in [&null, &wrong, &stranger] {
        assert_eq!(
            strings(&report["received"]),
            Vec::<String>::new(),
            "{report}"
        );
        let events = strings(&report["events"]);
        assert!(
            !events.iter().any(|e| e == "handshake_succeeded"),
            "{report}"
        );
    }
    // The allow-list's refusal reaches libzmq as an authentication failure.
    assert!(
        strings(&stranger["events"])
            .iter()
            .any(|e| e == "handshake_failed_auth"),
        "{stranger}"
    );
    eventually(10, "CURVE refusals on serve's /metrics", || {
        let reason = [("reason", "curve_not_allowed")];
        serve
            .metric("messenger_handshake_failures_total", &reason)
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    let stats = final_stats(serve).await;
    assert_eq!(
        u64_of(&stats, "slc_delivered"),
        1,
        "only the friend's: {stats}"
    );
    assert_eq!(
        u64_of(&stats, "echoes_answered"),
        1,
        "only the friend's: {stats}"
    );
    assert!(u64_of(&stats, "curve_refused") >= 1, "{stats}");
}

// ---------------------------------------------------------------------------
// The command against the command

/// `messenger request` against `serve --curve-cert --curve-allow`: without
/// --curve-server-key, with another server's key, or with a key not on the
/// list it fails; with the friend's certificate it is served. Only the
/// friend's message reaches the server loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_clients_without_the_right_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, server_public) = keygen(dir.path(), "server.cert").await;
    let (friend_cert, _) = keygen(dir.path(), "friend.cert").await;
    let (stranger_cert, elsewhere) = keygen(dir.path(), "stranger.cert").await;
    let serve = ServeProcess::start(&[
        "--curve-cert",
        path(&server_cert),
        "--curve-allow",
        path(&pub_of(&friend_cert)),
        "--slc",
        "echo",
    ])
    .await;
    let endpoint = serve.tcp.to_string();
    let key = server_public.to_string();
    let request = |extra: &[&str]| {
        let args: Vec<String> = ["request", &endpoint, "to the loop", "--timeout", "2s"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args).await
        }
    };
    let null = request(&[]).await;
    let wrong_key = elsewhere.to_string();
    let wrong = request(&[
        "--curve-server-key",
        &wrong_key,
        "--curve-cert",
        path(&friend_cert),
    ])
    .await;
    let stranger = request(&[
        "--curve-server-key",
        &key,
        "--curve-cert",
        path(&stranger_cert),
    ])
    .await;
    for (what, out) in [
        ("null", &null),
        ("wrong key", &wrong),
        ("stranger", &stranger),
    ] {
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "{what}: {}",
            ran(&["request"], out)
        );
    }
    let friend = request(&[
        "--curve-server-key",
        &key,
        "--curve-cert",
        path(&friend_cert),
    ])
    .await;
    assert!(friend.status.success(), "{}", ran(&["request"], &friend));
    assert_eq!(text(&friend.stdout), "to the loop\n");
    let stats = final_stats(serve).await;
    assert_eq!(u64_of(&stats, "slc_delivered"), 1, "{stats}");
    assert!(u64_of(&stats, "curve_refused") >= 1, "{stats}");
}

// ---------------------------------------------------------------------------
// On the wire

/// One byte flipped inside a client's MESSAGE box (after a good handshake)
/// makes the server cut the connection, and nothing is delivered, however
/// often the client redials and resends; the same relay without the flip
/// carries the request (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_message_cuts_the_connection() {
    let server_keys = KeyPair::generate().unwrap();
    let server_public = *server_keys.public();
    let (server, bound, _place, seen) =
        serve_seen("tcp", curve_server(server_keys), Answer::Body).await;
    let target = tcp_addr(&bound.endpoint);

    let relay = Relay::start(target, false).await;
    let config = curve_client(KeyPair::generate().unwrap(), server_public);
    let honest = Messenger::builder()
        .identity("honest")
        .config(config)
        .build()
        .unwrap();
    let conn = within(10, "connect through the relay", async {
        honest
            .make_connection(&relay.endpoint().parse().unwrap())
            .await
    })
    .await
    .expect("connect");
    let reply = within(
        10,
        "request through the relay",
        honest.request(conn, NOOP, b"intact"),
    )
    .await
    .expect("reply");
    assert_eq!(&reply.body[..], b"intact");
    honest.shutdown().await;
    drop(relay);

    let mut relay = Relay::start(target, true).await;
    let config = Config {
        request_timeout: Duration::from_secs(3),
        ..curve_client(KeyPair::generate().unwrap(), server_public)
    };
    let victim = Messenger::builder()
        .identity("victim")
        .config(config)
        .build()
        .unwrap();
    let conn = within(10, "connect through the flipping relay", async {
        victim
            .make_connection(&relay.endpoint().parse().unwrap())
            .await
    })
    .await
    .expect("the handshake is untouched");
    let request = common::spawn_request(&victim, conn, NOOP, b"tampered");
    relay.expect(RelayEvent::Flipped(0)).await;
    relay.expect(RelayEvent::ServerClosed(0)).await;
    let r = within(10, "the request ends", request).await.expect("task");
    assert!(r.is_err(), "a tampered request was answered: {r:?}");
    assert_eq!(seen.texts(), vec!["intact".to_string()]);
    let stats = server.stats();
    assert_eq!(stats.slc_delivered, 1, "{stats:?}");
    victim.shutdown().await;
    server.shutdown().await;
}

/// A distinctive body, sent by `messenger request` and echoed by `messenger
/// serve --slc echo`, crosses the wire only in CURVE boxes; without CURVE
/// (the control) it is there in clear both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_is_not_on_the_wire() {
    const BODY: &str = "CONFIDENTIAL-PAYLOAD-1234";
    let dir = tempfile::tempdir().unwrap();
    let (cert, public) = keygen(dir.path(), "server.cert").await;
    let key = public.to_string();
    for curve in [true, false] {
        let serve = if curve {
            ServeProcess::start(&["--curve-cert", path(&cert), "--slc", "echo"]).await
        } else {
            ServeProcess::start(&["--slc", "echo"]).await
        };
        let relay = Relay::start(tcp_addr(&serve.tcp), false).await;
        let endpoint = relay.endpoint();
        let mut args = vec!["request", &endpoint, BODY];
        if curve {
            args.extend(["--curve-server-key", &key]);
        }
        assert_eq!(cli_ok(&args).await, format!("{BODY}\n"), "curve {curve}");
        let (up, down) = relay.bytes();
        assert!(
            up > 0 && down > 0,
            "curve {curve}: nothing crossed the relay"
        );
        assert_eq!(
            relay.carried(BODY.as_bytes()),
            !curve,
            "curve {curve}: the body in clear on the wire"
        );
        assert_eq!(relay.carried(b"CONFIDENTIAL"), !curve, "curve {curve}");
        assert_eq!(relay.carried(b"\x07MESSAGE"), curve, "curve {curve}");
        let stats = final_stats(serve).await;
        assert_eq!(u64_of(&stats, "slc_delivered"), 1, "curve {curve}: {stats}");
    }
}
