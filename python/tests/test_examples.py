"""The Python examples, run as their users run them: examples/python/peer.py
(two peers, and a peer against ``messenger serve``). The model server,
examples/python/model_server.py, is driven by the Rust manager in
tests/python_package.rs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import REPO, SHORT_S, Lines, run

PEER = REPO / "examples" / "python" / "peer.py"


def test_two_peers_talk(place):
    listener = subprocess.Popen(
        [sys.executable, str(PEER), "listen", place("tcp")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = Lines(listener.stdout)
        first = lines.next(SHORT_S)
        assert first is not None, listener.stderr.read() if listener.poll() is not None else "no output"
        bound = json.loads(first)["listening"]
        r = run([sys.executable, str(PEER), "talk", bound], timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["ok"], summary
        assert summary["add"] == 10
        assert 1 < summary["most_concurrent"] <= 16, summary
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(SHORT_S) == 0
        assert json.loads(lines.drain(SHORT_S)[-1])["handled"] >= 43
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(SHORT_S)


def test_a_peer_pings_messenger_serve(serve):
    s = serve("--quiet")
    for endpoint in (s.tcp, s.ipc):
        r = run([sys.executable, str(PEER), "ping", endpoint, "-c", "2"], timeout=60)
        assert r.returncode == 0, r.stderr
        rtts = [json.loads(l)["rtt_ms"] for l in r.stdout.splitlines()]
        assert len(rtts) == 2 and all(t > 0 for t in rtts)
