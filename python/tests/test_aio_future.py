"""What ``aio.Messenger.request`` returns, as asyncio uses it: a future to
``asyncio.isfuture``, awaited by tasks, taken by ``gather``, ``wait_for``,
``shield`` and ``wait``; its waiters run once, in their contexts, a raising
one reported to the loop; cancelling it frees the request at once."""

from __future__ import annotations

import asyncio
import contextvars
import traceback

import pytest

import messenger
from messenger import aio

from test_aio import run

#: A callback nothing answers: requests to it wait for their deadline.
NOBODY = 99


async def pair(place):
    """A server whose loop echoes, and a client connected to it."""
    server = aio.Messenger()
    client = aio.Messenger()

    async def echo(incoming, responder):
        await responder.reply(incoming.body)

    bound = await server.listen_for_connection(place("inproc"), echo)
    conn = await client.make_connection(bound)
    return server, client, conn


async def close(*ms):
    for m in ms:
        await m.close()


def test_it_is_a_future_of_its_loop(place):
    async def main():
        server, client, conn = await pair(place)
        fut = client.request(conn, messenger.NOOP, b"one")
        assert asyncio.isfuture(fut)
        assert fut.get_loop() is asyncio.get_running_loop()
        assert not fut.done() and not fut.cancelled()
        with pytest.raises(asyncio.InvalidStateError):
            fut.result()
        with pytest.raises(asyncio.InvalidStateError):
            fut.exception()
        reply = await fut
        assert reply.body == b"one"
        assert fut.done() and fut.result() is reply and fut.exception() is None
        # Awaited again once done: the same reply at once.
        assert (await fut) is reply
        assert "replied" in repr(fut)
        await close(client, server)

    run(main())


def test_gather_wait_for_shield_and_wait_take_it(place):
    async def main():
        server, client, conn = await pair(place)
        bodies = [b"%d" % i for i in range(50)]
        replies = await asyncio.gather(*(client.request(conn, messenger.NOOP, b) for b in bodies))
        assert [r.body for r in replies] == bodies
        assert (await asyncio.wait_for(client.request(conn, messenger.NOOP, b"w"), 5)).body == b"w"
        assert (await asyncio.shield(client.request(conn, messenger.NOOP, b"s"))).body == b"s"
        futs = {client.request(conn, messenger.NOOP, b"%d" % i) for i in range(5)}
        done, pending = await asyncio.wait(futs, timeout=5)
        assert done == futs and not pending
        # gather with one that fails: its error, as asyncio's futures give it.
        with pytest.raises(messenger.Timeout):
            await asyncio.gather(
                client.request(conn, messenger.NOOP, b"ok"),
                client.request(conn, NOBODY, b"?", timeout=0.05),
            )
        await close(client, server)

    run(main())


def test_errors_are_raised_and_kept(place):
    async def main():
        server, client, conn = await pair(place)
        fut = client.request(conn, NOBODY, b"?", timeout=0.05)
        with pytest.raises(messenger.Timeout):
            await fut
        assert isinstance(fut.exception(), messenger.Timeout)
        with pytest.raises(messenger.Timeout):
            fut.result()
        assert "failed" in repr(fut)
        await close(client, server)

    run(main())


def test_waiters_run_once_in_their_context_and_a_raising_one_is_reported(place):
    var = contextvars.ContextVar("var", default="unset")

    async def main():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        server, client, conn = await pair(place)
        seen = []
        fut = client.request(conn, messenger.NOOP, b"cb")

        def broken(f):
            raise RuntimeError("a waiter broke")

        def first(f):
            seen.append(("first", f.result().body, var.get()))

        def removed(f):
            seen.append("removed")

        var.set("at add")
        fut.add_done_callback(broken)
        fut.add_done_callback(first)
        fut.add_done_callback(removed)
        var.set("later")
        assert fut.remove_done_callback(removed) == 1
        assert fut.remove_done_callback(removed) == 0
        await fut
        # Added once done: runs soon, on the loop.
        late = loop.create_future()
        fut.add_done_callback(lambda f: late.set_result(f.result().body))
        assert await asyncio.wait_for(late, 5) == b"cb"
        assert seen == [("first", b"cb", "at add")]
        assert len(reported) == 1
        assert isinstance(reported[0]["exception"], RuntimeError)
        # With its traceback, down to the waiter that raised.
        assert "broken" in "".join(traceback.format_exception(reported[0]["exception"]))
        assert reported[0]["future"] is fut
        await close(client, server)

    run(main())


def test_a_task_keeps_its_context_across_the_await(place):
    var = contextvars.ContextVar("var", default="unset")

    async def worker(client, conn, name):
        var.set(name)
        await client.request(conn, messenger.NOOP, name.encode())
        return var.get()

    async def main():
        server, client, conn = await pair(place)
        names = ["task %d" % i for i in range(20)]
        got = await asyncio.gather(*(worker(client, conn, n) for n in names))
        assert got == names
        await close(client, server)

    run(main())


def test_cancelling_frees_the_request_at_once(place):
    async def main():
        server, client, conn = await pair(place)
        fut = client.request(conn, NOBODY, b"?")
        await asyncio.sleep(0.01)  # sent: its callback waits in the library
        assert client.stats()["pending_callbacks"] == 1
        called = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: called.set_result(f.cancelled()))
        assert fut.cancel("no longer wanted")
        assert client.stats()["pending_callbacks"] == 0
        assert fut.cancelled() and fut.done() and not fut.cancel()
        assert await asyncio.wait_for(called, 5) is True
        with pytest.raises(asyncio.CancelledError, match="no longer wanted"):
            fut.result()
        with pytest.raises(asyncio.CancelledError):
            await fut
        # A task waiting on one, cancelled: the request goes with it.
        async def waits():
            return await client.request(conn, NOBODY, b"?")

        task = asyncio.ensure_future(waits())
        await asyncio.sleep(0.01)
        assert client.stats()["pending_callbacks"] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.stats()["pending_callbacks"] == 0
        await close(client, server)

    run(main())
