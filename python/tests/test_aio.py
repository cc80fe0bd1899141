"""The asyncio API: 10,000 pipelined requests against ``messenger serve``
with every reply checked, 1,000 concurrent requests through a Python
server loop, callbacks and handlers on the loop's thread, errors, and a
server loop that raises."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import List, Sequence

import pytest

import messenger
from messenger import aio

#: Bound on each test's asyncio work.
LIMIT_S = 60


def run(coro):
    """Runs ``coro`` on a fresh loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, LIMIT_S))


def mismatches(replies: Sequence[messenger.Incoming], expected: Sequence[bytes]) -> List[int]:
    """The indexes whose reply body is not the expected one."""
    assert len(replies) == len(expected)
    return [i for i, (r, want) in enumerate(zip(replies, expected)) if r.body != want]


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_ten_thousand_pipelined_requests_against_messenger_serve(serve, transport):
    s = serve("--slc", "echo", "--quiet")
    n = 10_000

    async def main():
        async with aio.Messenger() as m:
            conn = await m.make_connection(s.endpoint(transport))
            bodies = [b"request %d of %d" % (i, n) for i in range(n)]
            # All sent at once: the library's window (4,096 per peer) makes
            # the rest wait their turn, nothing is dropped.
            replies = await asyncio.gather(
                *(m.request(conn, messenger.NOOP, body) for body in bodies)
            )
            assert mismatches(replies, bodies) == []
            # The check above would catch a wrong body: one expected body
            # altered is found, at its index and nowhere else.
            wrong = list(bodies)
            wrong[4321] = b"not what was sent"
            assert mismatches(replies, wrong) == [4321]
            # Each reply came to its own request's callback, once.
            assert len({r.dst_cb for r in replies}) == n
            stats = m.stats()
            assert stats["pending_callbacks"] == 0
            assert stats["msc_delivered"] >= n

    run(main())


def test_a_thousand_concurrent_requests_through_a_python_server_loop(place):
    async def main():
        async with aio.Messenger() as server, aio.Messenger() as client:
            loop_thread = threading.get_ident()
            threads = set()
            running = 0
            most = 0

            async def double(incoming, responder):
                nonlocal running, most
                threads.add(threading.get_ident())
                running += 1
                most = max(most, running)
                await asyncio.sleep(0)  # other handlers run meanwhile
                running -= 1
                await responder.reply(incoming.body * 2)

            bound = await server.listen_for_connection(place("tcp"), double)
            conn = await client.make_connection(bound)
            bodies = [b"%d" % i for i in range(1000)]
            replies = await asyncio.gather(*(client.request(conn, messenger.NOOP, b) for b in bodies))
            assert mismatches(replies, [b * 2 for b in bodies]) == []
            assert threads == {loop_thread}, "handlers run on the loop's thread"
            # Concurrent, and within the messenger's handler limit (64).
            assert 1 < most <= 64, most

    run(main())


def test_callbacks_and_plain_handlers_run_on_the_loop(place):
    async def main():
        async with aio.Messenger() as server, aio.Messenger() as client:
            loop_thread = threading.get_ident()
            seen = []

            def plain(incoming, responder):  # not a coroutine function
                seen.append(threading.get_ident())
                responder.try_reply(b"plain " + incoming.body)

            bound = await server.listen_for_connection(place("ipc"), plain)
            conn = await client.make_connection(bound)
            assert (await client.request(conn, messenger.NOOP, b"x")).body == b"plain x"
            done = asyncio.get_running_loop().create_future()

            def callback(reply):
                seen.append(threading.get_ident())
                done.set_result(reply)

            await client.send_message(conn, messenger.ECHO, b"cb", callback=callback)
            assert (await done).body == b"cb"

            async def coroutine_callback(reply):
                seen.append(threading.get_ident())
                done2.set_result(reply)

            done2 = asyncio.get_running_loop().create_future()
            await client.send_message(conn, messenger.ECHO, b"cb2", callback=coroutine_callback)
            assert (await done2).body == b"cb2"
            assert seen == [loop_thread] * 3

    run(main())


def test_close_awaited_in_its_own_server_loop_returns_at_once(place):
    """A QUIT handler awaits its messenger's close(): the loop waits for
    that handler, so the close must not wait for the loop (it took the
    whole shutdown_grace). It resolves at once and the shutdown goes on."""

    async def main():
        server = aio.Messenger(shutdown_grace=60)
        loop = asyncio.get_running_loop()
        took = loop.create_future()

        async def on_quit(incoming, responder):
            start = loop.time()
            await server.close()
            took.set_result(loop.time() - start)

        bound = await server.listen_for_connection(place("tcp"), on_quit)
        async with aio.Messenger() as client:
            conn = await client.make_connection(bound)
            await client.send_message(conn, messenger.NOOP, b"QUIT")
            assert await asyncio.wait_for(took, 30) < 5
            with pytest.raises(messenger.Shutdown):
                await server.listen_for_connection(place("tcp"), on_quit)
        # The shutdown behind it completes: closing again waits for it.
        await asyncio.wait_for(server.close(), 10)

    run(main())


def test_a_server_loop_that_raises_goes_on(place, caplog):
    async def main():
        async with aio.Messenger() as server, aio.Messenger() as client:

            async def answer(incoming, responder):
                if incoming.body == b"boom":
                    raise RuntimeError("async handler broke")
                await responder.reply(b"ok")

            bound = await server.listen_for_connection(place("tcp"), answer)
            conn = await client.make_connection(bound)
            with pytest.raises(messenger.Timeout):
                await client.request(conn, messenger.NOOP, b"boom", timeout=0.5)
            assert (await client.request(conn, messenger.NOOP, b"fine")).body == b"ok"
            assert server.stats()["server_loop_errors"] == 1

    with caplog.at_level(logging.ERROR, logger="messenger"):
        run(main())
    errors = [r for r in caplog.records if r.name == "messenger"]
    assert len(errors) == 1 and "async handler broke" in str(errors[0].exc_info[1])


def test_errors_and_cancellation(place):
    async def main():
        async with aio.Messenger() as server, aio.Messenger() as client:
            bound = await server.listen_for_connection(place("inproc"), lambda i, r: None)
            conn = await client.make_connection(bound)
            with pytest.raises(messenger.Timeout):
                await client.request(conn, 99, b"?", timeout=0.05)
            with pytest.raises(ValueError, match="has no port"):
                await client.make_connection("tcp://localhost")
            # A cancelled request frees its callback at once.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.request(conn, 99, b"?"), 0.05)
            for _ in range(100):
                if client.stats()["pending_callbacks"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert client.stats()["pending_callbacks"] == 0
            assert await client.send_confirmed(conn, messenger.NOOP, b"landed") >= 0
        with pytest.raises(messenger.Shutdown):
            await client.request(conn, messenger.ECHO, b"after close")

    run(main())


def test_a_messenger_belongs_to_one_loop(place):
    m = aio.Messenger()

    async def use():
        await m.make_connection(place("inproc").replace("inproc://", "inproc://nobody-"))

    with pytest.raises(messenger.Refused):
        asyncio.run(use())
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(use())
    m._close_blocking()


def test_what_a_dropped_messenger_started_still_ends(place):
    """An aio.Messenger dropped without close() while calls of its are
    pending (a temporary one, a messenger whose owner went away): each
    still ends as it would have (its reply, its own Timeout, its result),
    and then the messenger closes. They waited for ever before."""

    async def main():
        server = aio.Messenger()

        async def slow_echo(incoming, responder):
            await asyncio.sleep(0.2)
            await responder.reply(incoming.body)

        bound = await server.listen_for_connection(place("inproc"), slow_echo)

        client = aio.Messenger()
        conn = await client.make_connection(bound)
        answered = client.request(conn, messenger.NOOP, b"answered", timeout=10)
        unanswered = client.request(conn, 99, b"nobody", timeout=0.5)
        called = asyncio.get_running_loop().create_future()
        await client.send_message(conn, messenger.NOOP, b"cb", callback=called.set_result)
        del client  # the last reference: dropped here, its calls pending
        assert (await asyncio.wait_for(answered, 5)).body == b"answered"
        with pytest.raises(messenger.Timeout):
            await asyncio.wait_for(unanswered, 5)
        assert (await asyncio.wait_for(called, 5)).body == b"cb"

        # Calls of a messenger no one holds, from the start.
        assert await asyncio.wait_for(aio.Messenger().make_connection(bound), 5) is not None
        await asyncio.wait_for(aio.Messenger().close(), 5)

        # Once nothing of theirs is pending, the dropped messengers close:
        # the server sees their connections go.
        deadline = asyncio.get_running_loop().time() + 10
        while server.stats()["connections"] and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert server.stats()["connections"] == 0, server.stats()
        await server.close()

    run(main())
