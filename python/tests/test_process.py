"""What a process can do to a messenger: fork (the child gets a clear
error, and a messenger of its own works), Ctrl-C (interrupts a blocking
request), and a server restarted mid-stream (nothing ACKed is lost)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import messenger
from messenger import aio
from conftest import SHORT_S, Lines, python_script


def wait_pid(pid: int, timeout: float) -> int:
    """The exit status of child ``pid``, killing it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} still running after {timeout} s")


def test_a_forked_child_gets_a_clear_error_and_can_make_its_own(serve):
    s = serve("--slc", "echo", "--quiet")
    with messenger.Messenger() as m:
        conn = m.make_connection(s.tcp)
        assert m.request(conn, messenger.ECHO, b"parent").body == b"parent"
        pid = os.fork()
        if pid == 0:  # the child: report by exit status only
            code = 10
            try:
                try:
                    m.request(conn, messenger.ECHO, b"child", timeout=2)
                    code = 11  # must not work
                except messenger.ForkError as e:
                    code = 13 if "forked" in str(e) else 12
                if code == 13:
                    with messenger.Messenger() as own:
                        c = own.make_connection(s.tcp)
                        ok = own.request(c, messenger.ECHO, b"own", timeout=5).body == b"own"
                    code = 0 if ok else 14
            except BaseException:
                code = 15
            os._exit(code)
        assert wait_pid(pid, 20) == 0
        # The parent's messenger is untouched.
        assert m.request(conn, messenger.ECHO, b"still").body == b"still"


def test_ctrl_c_interrupts_a_blocking_request(serve, tmp_path):
    s = serve("--slc", "log", "--quiet")  # the server loop never answers
    code = f"""
import sys, time
import messenger
m = messenger.Messenger()
conn = m.make_connection({s.tcp!r})
print("waiting", flush=True)
started = time.monotonic()
try:
    m.request(conn, messenger.NOOP, b"never answered", timeout=60)
    print("answered?!", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {{time.monotonic() - started:.2f}} s", flush=True)
print("pending callbacks", m.stats()["pending_callbacks"], flush=True)
m.close()
"""
    proc = subprocess.Popen(
        python_script(code, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(proc.stdout)
    try:
        assert lines.next(SHORT_S) == "waiting", proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = lines.next(SHORT_S)
        assert line is not None and line.startswith("interrupted"), line
        assert time.monotonic() - sent < 2, "Ctrl-C took too long"
        assert lines.next(SHORT_S) == "pending callbacks 0"
        assert proc.wait(SHORT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(SHORT_S)


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_a_server_restarted_mid_stream_loses_nothing_acked(serve, transport):
    """Confirmed sends stream, 50 at a time, while ``messenger serve`` is
    stopped (SIGTERM: it drains its server loop) and started again on the
    same endpoint. Every message whose send_confirmed returned was printed
    by one of the two runs; the client redials by itself."""
    s = serve("--slc", "log")
    endpoint = s.endpoint(transport)
    n, window, restart_after = 1500, 50, 400
    confirmed = set()
    failed = 0
    first_run_lines = []

    async def main():
        nonlocal failed
        async with aio.Messenger(request_timeout=10, reconnect_max=0.5) as m:
            conn = await m.make_connection(endpoint)
            sem = asyncio.Semaphore(window)
            restarted = asyncio.Event()

            async def send(i):
                nonlocal failed
                body = b"m%d" % i
                async with sem:
                    for _ in range(20):
                        try:
                            await m.send_confirmed(conn, messenger.NOOP, body)
                            confirmed.add(body.decode())
                            return
                        except (messenger.Disconnected, messenger.Timeout, messenger.Refused):
                            failed += 1  # unknown: maybe delivered; send again
                            await asyncio.sleep(0.05)
                raise AssertionError(f"{body!r} never confirmed")

            async def restart():
                while len(confirmed) < restart_after:
                    await asyncio.sleep(0.005)
                loop = asyncio.get_running_loop()
                first_run_lines.extend(await loop.run_in_executor(None, s.stop))
                await loop.run_in_executor(None, s.start)
                restarted.set()

            restarting = asyncio.ensure_future(restart())
            await asyncio.gather(*(send(i) for i in range(n)))
            await restarting
            assert restarted.is_set()

    asyncio.run(asyncio.wait_for(main(), 90))
    second_run_lines = s.stop()
    assert len(confirmed) == n
    printed = set()
    for line in first_run_lines + second_run_lines:
        if '"msg_id"' in line:
            printed.add(json.loads(line)["body"])
    first = {json.loads(l)["body"] for l in first_run_lines if '"msg_id"' in l}
    assert first and len(first) < n, "the restart came mid-stream"
    lost = confirmed - printed
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
