"""Fixtures of the package's tests: the `messenger` command as a child
process (``messenger serve`` and the client commands), fresh endpoints
(tcp port 0, unique ipc paths), and a bound on every test.

``tests/python_package.rs`` runs this suite from ``cargo test`` with
``MESSENGER_BIN`` set to the command it built; run by hand, it looks for
``target/debug/messenger`` beside the repository.
"""

from __future__ import annotations

import faulthandler
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Longest any one test may take before it is stopped with a traceback of
#: every thread (a hang fails the suite instead of stalling it).
TEST_LIMIT_S = 120

#: Bound on a child process reaching a point it should reach at once.
SHORT_S = 15


def messenger_bin() -> Path:
    path = os.environ.get("MESSENGER_BIN")
    if path:
        return Path(path)
    return REPO / "target" / "debug" / "messenger"


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    """Every test is bounded: past the limit, all threads' tracebacks are
    printed and the run exits (the Rust side reports the failure)."""
    faulthandler.dump_traceback_later(TEST_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def bin_path() -> Path:
    path = messenger_bin()
    if not path.exists():
        pytest.skip(f"the messenger command is not built at {path} (cargo build)")
    return path


class Lines:
    """A child's stdout, line by line, read by a thread so every wait on
    it is bounded."""

    def __init__(self, pipe) -> None:
        self.q: "queue.Queue[Optional[str]]" = queue.Queue()
        self.seen: List[str] = []

        def pump() -> None:
            for line in pipe:
                self.q.put(line.rstrip("\n"))
            self.q.put(None)

        threading.Thread(target=pump, name="stdout-pump", daemon=True).start()

    def next(self, timeout: float) -> Optional[str]:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is not None:
            self.seen.append(line)
        return line

    def drain(self, timeout: float) -> List[str]:
        """Every line until the pipe closes (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("stdout still open after %.0f s" % timeout)
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                return self.seen
            self.seen.append(line)


class Serve:
    """A running ``messenger serve``, bound on tcp port 0 and an ipc path
    of its own; killed at the end of the test."""

    def __init__(self, bin_path: Path, workdir: Path, args: List[str], tcp_port: int = 0) -> None:
        self.bin_path = bin_path
        self.workdir = workdir
        self.args = args
        self.ipc_path = workdir / "serve.sock"
        self.tcp_port = tcp_port
        self.start()

    def start(self) -> None:
        cmd = [
            str(self.bin_path),
            "serve",
            "--bind",
            f"tcp://127.0.0.1:{self.tcp_port}",
            "--bind",
            f"ipc://{self.ipc_path}",
            *self.args,
        ]
        self.stderr_path = self.workdir / f"serve-{time.monotonic_ns()}.err"
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "w"),
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.lines = Lines(self.proc.stdout)
        endpoints = []
        for _ in range(2):
            line = self.lines.next(SHORT_S)
            assert line is not None, f"serve said nothing; stderr: {self.stderr()}"
            endpoints.append(json.loads(line)["listening"])
        self.tcp, self.ipc = endpoints
        self.tcp_port = int(self.tcp.rsplit(":", 1)[1])

    def endpoint(self, transport: str) -> str:
        return {"tcp": self.tcp, "ipc": self.ipc}[transport]

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = SHORT_S) -> List[str]:
        """Stops it with ``sig`` and returns every stdout line it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            raise AssertionError(f"serve did not stop on {sig}; stderr: {self.stderr()}")
        return self.lines.drain(timeout)

    def messages(self) -> List[Dict]:
        """The per-message lines printed so far (not --quiet)."""
        return [json.loads(l) for l in self.lines.seen if '"msg_id"' in l]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=SHORT_S)


@pytest.fixture
def serve(bin_path: Path, tmp_path: Path) -> Iterator:
    """``serve(*args)`` starts ``messenger serve ARGS`` (tcp and ipc)."""
    started: List[Serve] = []

    def start(*args: str) -> Serve:
        s = Serve(bin_path, tmp_path, list(args))
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture
def ipc(tmp_path: Path) -> Iterator:
    """``ipc()`` is a fresh ipc endpoint in this test's temp directory."""
    n = [0]

    def fresh() -> str:
        n[0] += 1
        return f"ipc://{tmp_path}/t{n[0]}.sock"

    yield fresh


@pytest.fixture
def place(ipc) -> Iterator:
    """``place(transport)``: an endpoint to bind on (tcp port 0, a fresh
    ipc path, or a unique inproc name)."""
    n = [0]

    def fresh(transport: str) -> str:
        n[0] += 1
        if transport == "tcp":
            return "tcp://127.0.0.1:0"
        if transport == "ipc":
            return ipc()
        return f"inproc://test-{os.getpid()}-{time.monotonic_ns()}-{n[0]}"

    yield fresh


def run(args: List[str], timeout: float = SHORT_S, **kw) -> subprocess.CompletedProcess:
    """Runs a command to completion within ``timeout`` (killed after)."""
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_COLOR": "1"},
        **kw,
    )


def python_script(code: str, tmp_path: Path, name: str = "script.py") -> List[str]:
    """A command that runs ``code`` with this interpreter."""
    path = tmp_path / name
    path.write_text(code)
    return [sys.executable, str(path)]
