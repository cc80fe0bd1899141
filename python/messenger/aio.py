"""The asyncio API: the blocking API's calls as awaitables of the running
event loop::

    import asyncio
    import messenger
    from messenger import aio

    async def main():
        async with aio.Messenger() as server, aio.Messenger() as client:
            async def answer(incoming, responder):
                await responder.reply(b"seen " + incoming.body)

            bound = await server.listen_for_connection("tcp://127.0.0.1:0", answer)
            conn = await client.make_connection(bound)
            replies = await asyncio.gather(
                *(client.request(conn, messenger.NOOP, b"%d" % i) for i in range(1000))
            )

    asyncio.run(main())

A messenger belongs to the loop it is first used on: its futures are that
loop's, and its server loops and callbacks run on that loop's thread (a
coroutine function's coroutine as a task). The tokio runtime underneath
never takes the GIL; it wakes the loop once per batch of results.
``request`` returns a ``RequestFuture``: a future to asyncio (``gather``,
``wait_for``, ``shield`` and ``wait`` take it) whose cancellation frees
the request at once.
"""

from __future__ import annotations

from typing import Any

from . import _open
from ._messenger import AsyncMessenger as _NativeMessenger
from ._messenger import AsyncResponder as Responder
from ._messenger import RequestFuture

__all__ = ["Messenger", "RequestFuture", "Responder"]


class Messenger(_NativeMessenger):
    __doc__ = _NativeMessenger.__doc__
    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Remembered for the exit hook (see messenger/__init__.py).
        _open.add(self)
