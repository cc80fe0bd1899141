"""The blocking API against the Rust side both ways (``messenger serve`` and
the ``messenger`` client commands, on the Rust library), over tcp and ipc;
between Python messengers over every transport; errors, threads, the GIL,
and a server loop that raises."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import traceback
import time

import pytest

import messenger
from conftest import run

TRANSPORTS = ["tcp", "ipc"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requests_to_messenger_serve(serve, transport):
    s = serve("--slc", "echo", "--quiet")
    with messenger.Messenger() as m:
        conn = m.make_connection(s.endpoint(transport))
        # The builtin ECHO, and the server loop (which echoes requests).
        assert m.request(conn, messenger.ECHO, b"ping").body == b"ping"
        reply = m.request(conn, messenger.NOOP, b"to the loop")
        assert reply.body == b"to the loop"
        assert reply.dst_cb >= messenger.FIRST_USER
        # Confirmed: returns once ACKed.
        msg_id = m.send_confirmed(conn, messenger.NOOP, b"logged")
        assert isinstance(msg_id, int)
        # Bodies are bytes, any bytes, dashes included.
        odd = bytes(range(256)) + b"--1-2-3-"
        assert m.request(conn, messenger.ECHO, odd).body == odd
        # A callback runs on the messenger's own thread with the reply.
        got = threading.Event()
        seen = {}

        def on_reply(reply):
            seen["reply"] = reply
            seen["thread"] = threading.current_thread().name
            got.set()

        m.send_message(conn, messenger.ECHO, b"with a callback", callback=on_reply)
        assert got.wait(10)
        assert seen["reply"].body == b"with a callback"
        assert seen["thread"].startswith("messenger-") and "callbacks" in seen["thread"]
        stats = m.stats()
        assert stats["sent"] > 0 and stats["acks_received"] > 0
        assert stats["server_loop_errors"] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_rust_client_reaches_a_python_server(bin_path, place, transport):
    seen = []

    def answer(incoming, responder):
        seen.append((incoming.body, threading.current_thread().name))
        responder.reply(b"py:" + incoming.body)

    with messenger.Messenger(identity="python-server") as m:
        bound = m.listen_for_connection(place(transport), answer)
        r = run([str(bin_path), "request", bound, "hello", "--timeout", "10s"])
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "py:hello"
        # ECHO answered by the library itself.
        r = run([str(bin_path), "request", bound, "echo me", "--callback", "1"])
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "echo me"
        # `messenger send` waits for the ACK.
        r = run([str(bin_path), "send", bound, "fire and forget"])
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [b for b, _ in seen] == [b"hello", b"fire and forget"]
        # Server loops run on a thread the package owns and names.
        assert all("server-loop" in t for _, t in seen), seen


@pytest.mark.parametrize("transport", ["tcp", "ipc", "inproc"])
def test_python_to_python(place, transport):
    with messenger.Messenger() as server, messenger.Messenger() as client:
        peers = []

        def answer(incoming, responder):
            peers.append(incoming.reply_destination())
            if responder.wants_reply:
                responder.reply(incoming.body.upper())

        bound = server.listen_for_connection(place(transport), answer)
        if transport == "tcp":
            assert not bound.endswith(":0")
        conn = client.make_connection(bound)
        assert client.make_connection(bound) == conn, "connections are pooled"
        assert client.request(conn, messenger.NOOP, b"abc").body == b"ABC"
        # The server can reach the client back through its peer.
        assert isinstance(peers[0], messenger.Peer)
        assert peers[0].peer == client.identity
        assert server.request(peers[0], messenger.ECHO, b"back").body == b"back"


def test_a_server_loop_that_raises_is_logged_counted_and_survives(place, caplog):
    with messenger.Messenger() as server, messenger.Messenger() as client:

        def answer(incoming, responder):
            if incoming.body == b"boom":
                raise RuntimeError("the handler broke")
            responder.reply(b"ok " + incoming.body)

        bound = server.listen_for_connection(place("tcp"), answer)
        conn = client.make_connection(bound)
        with caplog.at_level(logging.ERROR, logger="messenger"):
            with pytest.raises(messenger.Timeout):
                client.request(conn, messenger.NOOP, b"boom", timeout=0.5)
            assert client.request(conn, messenger.NOOP, b"after").body == b"ok after"
        assert server.stats()["server_loop_errors"] == 1
        records = [r for r in caplog.records if r.name == "messenger"]
        assert len(records) == 1, records
        assert records[0].exc_info and "the handler broke" in str(records[0].exc_info[1])
        # With its traceback, down to the handler's own frame.
        assert "in answer" in "".join(traceback.format_exception(*records[0].exc_info))
        assert "server-loop" in records[0].threadName


@pytest.mark.parametrize("transport", ["tcp", "inproc"])
def test_close_from_its_own_server_loop_returns_at_once(place, transport):
    """A model server's QUIT: its server loop closes the messenger. The
    loop waits for that very call, so close() there must not wait for the
    loops (it took the whole shutdown_grace); it returns at once, and the
    shutdown completes behind it."""
    server = messenger.Messenger(shutdown_grace=60)
    took = []
    done = threading.Event()

    def on_quit(incoming, responder):
        start = time.monotonic()
        server.close()
        took.append(time.monotonic() - start)
        try:
            server.listen_for_connection(place(transport), on_quit)
        except messenger.Shutdown:
            took.append("refused")
        done.set()

    bound = server.listen_for_connection(place(transport), on_quit)
    with messenger.Messenger() as client:
        conn = client.make_connection(bound)
        client.send_message(conn, messenger.NOOP, b"QUIT")
        assert done.wait(30), "the server loop never went on after close()"
        assert took[0] < 5, took
        assert took[1] == "refused", took
    # The shutdown behind it completes: closing again waits for it.
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 10


def test_a_callback_that_raises_is_logged_and_counted(place, caplog):
    with messenger.Messenger() as server, messenger.Messenger() as client:
        bound = server.listen_for_connection(place("tcp"), lambda i, r: None)
        conn = client.make_connection(bound)
        done = threading.Event()

        def bad(reply):
            done.set()
            raise ValueError("callback bug")

        with caplog.at_level(logging.ERROR, logger="messenger"):
            client.send_message(conn, messenger.ECHO, b"x", callback=bad)
            assert done.wait(10)
            deadline = time.monotonic() + 5
            while client.stats()["callback_errors"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert client.stats()["callback_errors"] == 1
        records = [r for r in caplog.records if r.name == "messenger"]
        assert len(records) == 1, records
        assert "in bad" in "".join(traceback.format_exception(*records[0].exc_info))
        # Still usable.
        assert client.request(conn, messenger.ECHO, b"y").body == b"y"


def test_errors_are_one_hierarchy_with_the_command_lines_messages(bin_path, place):
    # A bad endpoint: ValueError with the message the command line prints.
    r = run([str(bin_path), "request", "tcp://localhost", "x"])
    assert r.returncode != 0
    with messenger.Messenger() as m:
        with pytest.raises(ValueError) as e:
            m.make_connection("tcp://localhost")
        assert isinstance(e.value, messenger.MessengerError)
        assert str(e.value) == 'tcp endpoint "tcp://localhost" has no port: expected tcp://HOST:PORT'
        assert str(e.value) in r.stderr
        # Nothing answers callback 99: a Timeout, which is a TimeoutError.
        bound = m.listen_for_connection(place("ipc"), lambda i, r: None)
        conn = m.make_connection(bound)
        with pytest.raises(TimeoutError) as t:
            m.request(conn, 99, b"?", timeout=0.1)
        assert isinstance(t.value, messenger.Timeout)
        with pytest.raises(messenger.TooLarge):
            m.request(conn, messenger.ECHO, b"x" * (17 << 20))
        with pytest.raises(TypeError):
            m.request(conn, messenger.ECHO, "not bytes")
        with pytest.raises(messenger.BindError, match="already in use") as b:
            m.listen_for_connection(bound, lambda i, r: None)  # ipc path in use: ours
        assert isinstance(b.value, OSError)
    # A bad configuration: ValueError naming the field, as the library says it.
    with pytest.raises(ValueError, match=r"^invalid configuration: Config::slc_queue_capacity must not be zero$"):
        messenger.Messenger(slc_queue_capacity=0)
    with pytest.raises(ValueError, match="request_timeout"):
        messenger.Messenger(request_timeout=-1)
    with pytest.raises(TypeError, match="no_such_setting"):
        messenger.Messenger(no_such_setting=1)
    # A bool is an int to Python, never a count or a number of seconds here.
    with pytest.raises(TypeError, match="max_message_size must be an int"):
        messenger.Messenger(max_message_size=True)
    with pytest.raises(TypeError, match="request_timeout must be a number of seconds"):
        messenger.Messenger(request_timeout=True)
    # Counts too large for the runtime to hold: named, not a PanicException
    # (a BaseException) from a runtime thread.
    for name, value in [("max_concurrent_handlers", 2**62), ("slc_queue_capacity", 2**62),
                        ("max_connections_per_listener", 2**62), ("dedup_window", 2**64 - 1)]:
        with pytest.raises(messenger.InvalidArgument, match=f"Config::{name} must be at most"):
            messenger.Messenger(**{name: value})
    # Used after close: Shutdown.
    m = messenger.Messenger()
    m.close()
    m.close()  # again: nothing
    with pytest.raises(messenger.Shutdown):
        m.make_connection("tcp://127.0.0.1:1")


def test_a_refused_connection_raises_refused(place):
    with messenger.Messenger(connect_timeout=0.5) as m:
        with pytest.raises((messenger.Refused, messenger.Timeout)):
            m.make_connection(place("ipc"))  # nothing bound there
        with pytest.raises(messenger.Refused):
            m.make_connection("inproc://nobody-here")


def test_waiting_releases_the_gil(place):
    """While one thread waits in request(), another runs Python code."""
    with messenger.Messenger() as server, messenger.Messenger() as client:
        gate = threading.Event()

        def slow(incoming, responder):
            gate.wait(5)
            responder.reply(b"late")

        bound = server.listen_for_connection(place("tcp"), slow)
        conn = client.make_connection(bound)
        counted = [0]

        def count():
            while not gate.is_set():
                counted[0] += 1
            gate.set()

        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", client.request(conn, messenger.NOOP, b"?")))
        t.start()
        time.sleep(0.2)
        counter = threading.Thread(target=count)
        counter.start()
        time.sleep(0.3)
        gate.set()
        counter.join(10)
        t.join(10)
        assert result["r"].body == b"late"
        assert counted[0] > 1000, counted


def test_identity_and_config_keywords(place):
    with messenger.Messenger(
        identity=b"named",
        request_timeout=2.5,
        heartbeat=None,
        resend_interval=0.2,
        evict_idle_after=None,
        max_concurrent_handlers=8,
    ) as m:
        assert m.identity == b"named"
    with messenger.Messenger() as a, messenger.Messenger() as b:
        assert a.identity != b.identity and a.identity.startswith(b"messenger-")
    with pytest.raises(messenger.InvalidArgument):
        messenger.Messenger(identity=b"")


def test_destinations_belong_to_their_messenger(place):
    with messenger.Messenger() as a, messenger.Messenger() as b:
        bound = a.listen_for_connection(place("inproc"), lambda i, r: None)
        conn = b.make_connection(bound)
        with pytest.raises(messenger.InvalidArgument, match="another messenger"):
            a.request(conn, messenger.ECHO, b"x")
        with pytest.raises(TypeError):
            b.request("not a destination", messenger.ECHO, b"x")


def test_msgpack_bodies(place):
    with messenger.Messenger() as server, messenger.Messenger() as client:

        def add(incoming, responder):
            job = messenger.unpack(incoming)
            responder.reply(messenger.pack({"sum": sum(job["xs"]), "tag": job["tag"]}))

        bound = server.listen_for_connection(place("inproc"), add)
        conn = client.make_connection(bound)
        reply = client.request(conn, messenger.NOOP, messenger.pack({"xs": [1, 2, 3], "tag": "t"}))
        assert messenger.unpack(reply) == {"sum": 6, "tag": "t"}
        with pytest.raises(ValueError) as bad:
            messenger.unpack(b"\xc1")
        # Says why, even where msgpack's own exception has no message.
        assert not str(bad.value).rstrip().endswith(":"), str(bad.value)



def _os_threads():
    """This process's OS threads: id -> name (Linux keeps 15 bytes)."""
    threads = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                threads[task] = f.read().strip()
        except FileNotFoundError:
            pass  # ended meanwhile
    return threads


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_close_ends_the_callback_thread(place):
    """A closed messenger the program still holds keeps no thread: its
    callback thread ends once the callbacks it was given have run."""
    m = messenger.Messenger()
    bound = m.listen_for_connection(place("inproc"), lambda i, r: None)
    conn = m.make_connection(bound)
    before = _os_threads()
    got = threading.Event()
    m.send_message(conn, messenger.ECHO, b"x", callback=lambda reply: got.set())
    assert got.wait(10)
    started = {t: n for t, n in _os_threads().items() if t not in before and "-ca" in n}
    assert len(started) == 1, (before, _os_threads())
    m.close()
    deadline = time.monotonic() + 10
    while started.keys() & _os_threads().keys() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not started.keys() & _os_threads().keys(), f"{started} outlived close()"


_EXIT_WHILE_BUSY = r"""
import sys, threading, time
import messenger

kind = sys.argv[1]
server = messenger.Messenger(shutdown_grace=0.2)
client = messenger.Messenger(shutdown_grace=0.2)
started = threading.Event()

def busy(*_):
    # A long job in small steps: the thread gives up the GIL and takes it
    # again, as a model server's training does.
    started.set()
    end = time.monotonic() + 20
    while time.monotonic() < end:
        time.sleep(0.002) if kind != "compute" else sum(range(2000))

bound = server.listen_for_connection("inproc://exit-while-busy", busy if kind != "callback" else (lambda i, r: r.reply(b"ok")))
conn = client.make_connection(bound)
if kind == "callback":
    client.send_message(conn, messenger.NOOP, b"x", callback=busy)
else:
    client.send_message(conn, messenger.NOOP, b"x")
assert started.wait(10)
print("exiting", flush=True)
"""


@pytest.mark.parametrize("kind", ["sleep", "compute", "callback"])
def test_the_interpreter_exits_cleanly_while_a_handler_runs(kind):
    """A program that ends while a server loop or a callback still runs
    Python code exits like one whose daemon thread does: cleanly, once
    close's grace is over. It crashed (SIGSEGV, or an abort with 'Fatal
    Python error: PyGILState_Release') when the interpreter ended the
    thread under the package's Rust frames."""
    r = subprocess.run([sys.executable, "-c", _EXIT_WHILE_BUSY, kind],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "exiting" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "Fatal Python error" not in r.stderr, r.stderr[-2000:]
