//! A network test bed: a few hosts as Linux network namespaces on one
//! bridge, for tests of what happens across a real (if virtual) network,
//! where a peer that goes away sends no FIN or RST.
//!
//! ```text
//!   host 0 (ns mnb<pid>n<k>h0)   host 1 ...                 every host: lo up, eth0 10.23.0.<i+1>/24,
//!        eth0 ─┐                    eth0 ─┐                 no default route: nothing leaves the bed
//!              │ veth                     │ veth
//!        p0 ───┴──────── br0 ─────────────┴─── p1            the bridge in a namespace of its own
//!                 (ns mnb<pid>n<k>br)                        (the root namespace is never touched)
//! ```
//!
//! - [`NetBed::new`] makes it, or says `SKIPPED: <why>` (straight to stderr,
//!   as tests/common/python.rs does) and gives `None` when the machine
//!   cannot (not root, no `ip`, no namespaces, veth or bridges); with `CI`
//!   set it panics instead.
//! - [`NetBed::spawn`] runs a process on a host (`ip netns exec`), its
//!   output drained for the whole run; [`NsProcess::kill9`] kills it.
//! - [`NetBed::run_on`] runs async test code with every socket it opens on
//!   a host (its threads enter the host's namespace), for checks that need
//!   the library's API (a request's error, its exact timing).
//! - [`NetBed::cut`] takes both ends of a host's link down: nothing of its
//!   traffic goes anywhere, silently, both ways (a powered-off host, a
//!   pulled cable); [`NetBed::heal`] brings them back.
//! - Dropping the bed (also while a test panics) kills every process it
//!   started and every process still inside its namespaces, then deletes
//!   the namespaces (and with them the links and the bridge). A bed left
//!   behind by a test binary that was killed is swept by the next one.
//!
//! Beds are serialised within a test binary (a bed holds a process-wide
//! lock while it lives): their timings must not compete with each other.
//! Names carry the process id, so parallel test binaries never collide.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Prefix of every namespace a bed makes: `mnb<pid>n<k>h<i>`, `mnb<pid>n<k>br`.
const PREFIX: &str = "mnb";

/// The bed's subnet: host `i` is 10.23.0.(i+1). Never routed anywhere.
const SUBNET: [u8; 3] = [10, 23, 0];

/// One bed at a time per test binary.
static BED_LOCK: Mutex<()> = Mutex::new(());
static NEXT_BED: AtomicU64 = AtomicU64::new(0);

/// A host of the bed.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address on the bed.
    pub addr: Ipv4Addr,
    /// Its link's end on the bridge (in the bridge's namespace).
    port: String,
}

/// Hosts on a bridge, each a network namespace; see the module docs.
pub struct NetBed {
    pub hosts: Vec<Host>,
    bridge_ns: String,
    procs: Mutex<Vec<Arc<Proc>>>,
    /// Held while the bed lives; dropped last.
    _serial: MutexGuard<'static, ()>,
}

/// Why the bed cannot be made on this machine, or `None` when it can.
fn unavailable() -> Option<String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => return Some(format!("not root (effective uid {uid})")),
        None => return Some("cannot read the effective uid from /proc/self/status".into()),
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip -V` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("iproute2's `ip` is not usable: {e}")),
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `SKIPPED: ...` for a test that cannot run, or a panic when `CI` is set.
fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root, iproute2 and network namespaces (CI is set): {why}");
    }
    // Straight to the stderr handle: libtest captures eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: needs root, iproute2 and network namespaces: {why}"
    );
}

/// Runs `ip ARGS`, or says why it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`'s stdout, or "" when it fails.
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The namespaces whose names start with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    ip_output(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Kills every process in namespace `ns` and deletes it.
fn destroy_ns(ns: &str) {
    for pid in ip_output(&["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) with a pid read from the namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // A process being killed may hold the namespace a moment longer; the
    // name goes at once either way.
    let _ = ip(&["netns", "del", ns]);
}

/// Deletes the namespaces of beds whose test binary is gone (killed before
/// its beds could clean up). Once per process.
fn sweep_stale() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        for ns in namespaces(PREFIX) {
            let pid = ns[PREFIX.len()..]
                .split('n')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                destroy_ns(&ns);
            }
        }
    });
}

impl NetBed {
    /// A bed of `hosts` hosts for the test `test`, or `None` (having said
    /// `SKIPPED: <why>`) when this machine cannot make one. Panics when
    /// `CI` is set and it cannot.
    pub fn new(test: &str, hosts: usize) -> Option<NetBed> {
        assert!((1..=200).contains(&hosts), "1 to 200 hosts");
        let serial = BED_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = unavailable() {
            skip(test, &why);
            return None;
        }
        sweep_stale();
        let k = NEXT_BED.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}n{k}", std::process::id());
        let mut bed = NetBed {
            hosts: Vec::new(),
            bridge_ns: format!("{base}br"),
            procs: Mutex::new(Vec::new()),
            _serial: serial,
        };
        // On failure `bed` is dropped, which deletes what was made.
        if let Err(why) = bed.build(&base, hosts) {
            skip(test, &why);
            return None;
        }
        Some(bed)
    }

    fn build(&mut self, base: &str, hosts: usize) -> Result<(), String> {
        let br = self.bridge_ns.clone();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = format!("{base}h{i}");
            let port = format!("p{i}");
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1);
            ip(&["netns", "add", &ns])?;
            self.hosts.push(Host {
                ns: ns.clone(),
                addr,
                port: port.clone(),
            });
            // Both ends made where they live: nothing passes through the
            // root namespace.
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].addr
    }

    /// `tcp://ADDR:PORT` on host `i`.
    pub fn tcp(&self, i: usize, port: u16) -> String {
        format!("tcp://{}:{port}", self.addr(i))
    }

    /// Takes host `i`'s link down at both ends (its `eth0`, and its port on
    /// the bridge): from now on its packets go nowhere and nobody's reach
    /// it, and no one is told. Its processes keep running.
    pub fn cut(&self, i: usize) {
        let h = &self.hosts[i];
        ip(&["-n", &self.bridge_ns, "link", "set", &h.port, "down"]).unwrap();
        ip(&["-n", &h.ns, "link", "set", "eth0", "down"]).unwrap();
    }

    /// Brings host `i`'s link back up at both ends (its address and route
    /// come back with it).
    pub fn heal(&self, i: usize) {
        let h = &self.hosts[i];
        ip(&["-n", &h.ns, "link", "set", "eth0", "up"]).unwrap();
        ip(&["-n", &self.bridge_ns, "link", "set", &h.port, "up"]).unwrap();
    }

    /// `program ARGS` to run on host `i` (through `ip netns exec`, which
    /// execs it: the child's pid is the program's).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].ns])
            .arg(program)
            .env("NO_COLOR", "1");
        cmd
    }

    /// Starts `cmd` (made by [`command`](Self::command)) with its stdout and
    /// stderr drained for the whole run; the bed kills it when dropped.
    /// `name` is for messages.
    pub fn spawn(&self, name: &str, mut cmd: Command) -> Arc<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let drain = |pipe: Option<Box<dyn Read + Send>>, sink: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let Some(mut pipe) = pipe else { return };
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lock(&sink).extend_from_slice(&buf[..n]);
                }
            });
        };
        drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Arc::clone(&out),
        );
        drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Arc::clone(&err),
        );
        let proc = Arc::new(Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            status: Mutex::new(None),
            stdout: out,
            stderr: err,
        });
        lock(&self.procs).push(Arc::clone(&proc));
        proc
    }

    /// Runs `body`'s future to completion on host `i`: on a thread of its
    /// own with a tokio runtime all of whose threads are in the host's
    /// namespace, so every socket the future (and the library under it)
    /// opens is on that host. The bed and everything else can be borrowed.
    pub fn run_on<F, Fut, T>(&self, i: usize, body: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.hosts[i].ns);
        let ns = Arc::new(
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}")),
        );
        let enter = move || {
            // SAFETY: setns(2) on a namespace file we hold open; it moves
            // only the calling thread.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                enter();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .on_thread_start(enter.clone())
                    .build()
                    .expect("a runtime");
                let out = rt.block_on(body());
                rt.shutdown_timeout(Duration::from_secs(5));
                out
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetBed {
    fn drop(&mut self) {
        for p in lock(&self.procs).drain(..) {
            p.kill9();
        }
        for h in &self.hosts {
            destroy_ns(&h.ns);
        }
        destroy_ns(&self.bridge_ns);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process the bed started on one of its hosts.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Proc {
    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Its last `n` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let s = self.stderr();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its stdout lines that parse as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The fields of the last `TIMESTAMP stats {...}` line on its stderr
    /// (`messenger serve --stats-interval`: rates and gauges).
    pub fn last_stats(&self) -> Option<serde_json::Value> {
        super::serve::stats_line(&self.stderr())
    }

    /// Its exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut status = lock(&self.status);
        if status.is_none() {
            *status = lock(&self.child).try_wait().ok().flatten();
        }
        *status
    }

    /// Its state as `/proc/PID/stat` says (`R`, `S`, `T` for stopped, ...),
    /// while it runs.
    pub fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // "pid (comm) S ...": the comm may hold spaces and parentheses.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// Sends `signal` (libc's number).
    pub fn signal(&self, signal: i32) {
        if self.exited().is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&self) {
        if self.exited().is_some() {
            return;
        }
        let mut child = lock(&self.child);
        let _ = child.kill();
        if let Ok(s) = child.wait() {
            *lock(&self.status) = Some(s);
        }
    }

    /// Waits up to `limit` for it to exit (polling: callable from async
    /// code on a runtime with other workers).
    pub fn wait(&self, limit: Duration) -> Option<ExitStatus> {
        let give_up = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                // Let the drain threads take the last bytes.
                std::thread::sleep(Duration::from_millis(50));
                return Some(s);
            }
            if Instant::now() >= give_up {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls (every 10 ms, up to `limit`) until `cond` holds of it; when it
    /// held.
    pub async fn until(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&Proc) -> bool,
    ) -> Option<Instant> {
        let give_up = Instant::now() + limit;
        loop {
            if cond(self) {
                return Some(Instant::now());
            }
            if Instant::now() >= give_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`until`](Self::until) for a plain thread.
    pub fn until_blocking(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&Proc) -> bool,
    ) -> Option<Instant> {
        let give_up = Instant::now() + limit;
        loop {
            if cond(self) {
                return Some(Instant::now());
            }
            if Instant::now() >= give_up {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it wrote, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "{} (pid {}, {:?})\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
            self.name,
            self.pid,
            self.exited(),
            tail(&self.stdout(), 20),
            self.stderr_tail(30)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
