#!/usr/bin/env python3
"""CURVE throughput: `messenger serve --curve-cert` against a minimal libzmq
CURVE server, under the same libzmq CURVE client, and what CURVE costs over
plaintext for each server. Alternating rounds; every ratio is taken inside
one round, then the median over rounds is reported.

    python3 benches/curve/run.py                    # 64 B and 1 KiB, 1000 in flight, 3 rounds
    python3 benches/curve/run.py --sizes 64 --rounds 5 --seconds 3

    # Another build of messenger in the same rounds, e.g. an older commit:
    git worktree add --detach /tmp/old COMMIT
    (cd /tmp/old && cargo build --release -p messenger-cli)
    python3 benches/curve/run.py --other /tmp/old/target/release/messenger

    # Several, labelled (the ratios are this build's over each):
    python3 benches/curve/run.py --other before=/tmp/old/target/release/messenger --other fresh=/tmp/freshapp/target/release/freshapp

    # An application embedding the library (a fresh Cargo project, no
    # build configuration) against this build: benches/curve/fresh_app.sh

    # Several client processes at once (each with --in-flight), so that the
    # server, not one client, is what runs out: see --clients below.
    python3 benches/curve/run.py --sizes 1024 --clients 3 --in-flight 333

One libzmq client does all its CURVE work on its single I/O thread; with
1000 in flight over one connection that thread, not the server, sets the
pace (perf: about 94 % of a core, 60 % of it in libsodium, at 1 KiB). So
each cell also reports the server's CPU per round trip (its process's
user + system time over the client's run, from /proc/PID/stat), which the
client does not bound, and --clients N runs N clients at once.

Needs python3, a C compiler and the Rust toolchain. The client and the
reference server are benches/curve/zmq_curve.c, linked against the libzmq
that pyzmq ships (4.3 with libsodium: CURVE on); pyzmq is installed in
target/pyenv if it is not there. The messenger side is the release build of
the `messenger` command, built here.
"""

import argparse
import glob
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(ROOT, "target")
VENV = os.path.join(TARGET, "pyenv")


def sh(*cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


def pyzmq_libzmq():
    """The venv's python and the libzmq shared object pyzmq ships."""
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        sh(sys.executable, "-m", "venv", VENV)
    if subprocess.run([python, "-c", "import zmq"], capture_output=True).returncode != 0:
        sh(python, "-m", "pip", "install", "--quiet", "pyzmq")
    libs = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages", "pyzmq.libs", "libzmq*.so*"))
    if not libs:
        sys.exit("pyzmq ships no libzmq shared object here (built from source?)")
    return python, libs[0]


def build(python, libzmq):
    exe = os.path.join(TARGET, "zmq_curve")
    src = os.path.join(ROOT, "benches", "curve", "zmq_curve.c")
    sh("cc", "-O2", "-o", exe, src, libzmq, "-Wl,-rpath," + os.path.dirname(libzmq))
    sh("cargo", "build", "--release", "--quiet", "-p", "messenger-cli", "--bin", "messenger", cwd=ROOT)
    return exe, os.path.join(TARGET, "release", "messenger")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keys(messenger, workdir):
    """A server certificate from `messenger keygen`, and its public key."""
    cert = os.path.join(workdir, "server.cert")
    public = subprocess.run([messenger, "keygen", "--out", cert], check=True,
                            capture_output=True, text=True).stdout.strip().split()[-1]
    secret = None
    with open(cert) as f:
        for line in f:
            line = line.strip()
            if line.startswith("secret-key"):
                secret = line.split("=", 1)[1].strip().strip('"')
    assert secret and len(public) == 40, "keygen wrote no usable certificate"
    return cert, public, secret


class Server:
    def __init__(self, argv, wait_for):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if wait_for(line):
                return
        self.stop()
        raise SystemExit(f"server did not start: {argv}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_seconds(pid):
    """User + system time of process `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listening(line):
    try:
        return "listening" in json.loads(line)
    except ValueError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,1024")
    ap.add_argument("--in-flight", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=1,
                    help="client processes run at once against each server, each with --in-flight "
                         "requests; their round trips per second are summed")
    ap.add_argument("--other", action="append", default=[], metavar="[LABEL=]PATH",
                    help="another `messenger` binary (or a program taking the same `serve --bind "
                         "--curve-cert` arguments), run with --curve-cert in the same rounds; repeatable")
    args = ap.parse_args()
    others = {}
    for i, spec in enumerate(args.other):
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = ("other" if len(args.other) == 1 else f"other{i + 1}"), spec
        if not label.replace("-", "").replace("_", "").isalnum() or f"{label}-curve" in others:
            sys.exit(f"--other {spec}: give each a distinct LABEL of letters, digits, - or _")
        others[f"{label}-curve"] = path
    python, libzmq = pyzmq_libzmq()
    zmq_curve, messenger = build(python, libzmq)
    with tempfile.TemporaryDirectory(prefix="curve-bench-") as work:
        cert, public, secret = keys(messenger, work)
        ports = {name: free_port() for name in ("libzmq-curve", "libzmq-plain", "messenger-curve", "messenger-plain", *others)}
        servers = {}
        try:
            # Started inside the try: one that does not start stops the others.
            servers["libzmq-curve"] = Server([zmq_curve, "server", f"tcp://127.0.0.1:{ports['libzmq-curve']}", secret], lambda l: l.startswith("READY"))
            servers["libzmq-plain"] = Server([zmq_curve, "server", f"tcp://127.0.0.1:{ports['libzmq-plain']}", "-"], lambda l: l.startswith("READY"))
            servers["messenger-curve"] = Server([messenger, "serve", "--bind", f"tcp://127.0.0.1:{ports['messenger-curve']}", "--curve-cert", cert], listening)
            servers["messenger-plain"] = Server([messenger, "serve", "--bind", f"tcp://127.0.0.1:{ports['messenger-plain']}"], listening)
            for name, path in others.items():
                servers[name] = Server([os.path.abspath(path), "serve", "--bind", f"tcp://127.0.0.1:{ports[name]}", "--curve-cert", cert], listening)
            print(f"libzmq client ({os.path.basename(libzmq)}) x{args.clients}, {args.in_flight} in flight "
                  f"each, tcp, {args.rounds} alternating rounds of {args.seconds} s; rt/s per cell")
            for size in [int(s) for s in args.sizes.split(",")]:
                rps = {name: [] for name in servers}
                cpu = {name: [] for name in servers}
                for r in range(args.rounds):
                    order = list(servers)
                    order = order[r % len(order):] + order[:r % len(order)]
                    for name in order:
                        key = public if name.endswith("curve") else "-"
                        argv = [zmq_curve, "client", f"tcp://127.0.0.1:{ports[name]}", key, str(size),
                                str(args.in_flight), str(args.warmup), str(args.seconds)]
                        before = cpu_seconds(servers[name].proc.pid)
                        clients = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
                                   for _ in range(args.clients)]
                        outs = []
                        for c in clients:
                            out, _ = c.communicate(timeout=60)
                            if c.returncode != 0:
                                sys.exit(f"the client against {name} failed")
                            outs.append(float(out.strip()))
                        spent = cpu_seconds(servers[name].proc.pid) - before
                        total = sum(outs)
                        rps[name].append(total)
                        # The clients ran warm-up and measurement at about
                        # the measured rate.
                        cpu[name].append(spent / (total * (args.warmup + args.seconds)) * 1e6)
                ratio = lambda a, b: statistics.median(x / y for x, y in zip(rps[a], rps[b]))
                print(f"\n== {size} B")
                for name, v in rps.items():
                    print(f"  {name:<20} {statistics.median(v):>10.0f} rt/s   server CPU {statistics.median(cpu[name]):5.2f} µs/rt"
                          f"   rounds: {', '.join(f'{x:.0f}' for x in v)}")
                print(f"  messenger serve / libzmq, both CURVE:      {ratio('messenger-curve', 'libzmq-curve'):.2f}x")
                cpu_ratio = statistics.median(x / y for x, y in zip(cpu["messenger-curve"], cpu["libzmq-curve"]))
                print(f"  server CPU per round trip, messenger serve / libzmq, both CURVE: {cpu_ratio:.2f}x")
                print(f"  messenger serve / libzmq, both plaintext:  {ratio('messenger-plain', 'libzmq-plain'):.2f}x")
                print(f"  CURVE / plaintext, messenger serve:        {ratio('messenger-curve', 'messenger-plain'):.2f}x")
                print(f"  CURVE / plaintext, libzmq server:          {ratio('libzmq-curve', 'libzmq-plain'):.2f}x")
                for name in others:
                    what = "--other" if name == "other-curve" else name.removesuffix("-curve")
                    print(f"  messenger serve / {what}, both CURVE:".ljust(44) + f" {ratio('messenger-curve', name):.2f}x")
                    print(f"  {what} / libzmq, both CURVE:".ljust(44) + f" {ratio(name, 'libzmq-curve'):.2f}x")
        finally:
            for s in servers.values():
                s.stop()


if __name__ == "__main__":
    main()
