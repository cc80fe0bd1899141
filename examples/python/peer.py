#!/usr/bin/env python3
"""A PeerConnect-style asyncio peer on the `messenger` package: typed
messages dispatched to handlers by type, bounded concurrency, ping, and
requests that expect a reply.

    python3 examples/python/peer.py listen tcp://127.0.0.1:0      # prints {"listening": ENDPOINT}
    python3 examples/python/peer.py talk ENDPOINT                 # pings, asks, prints a JSON summary
    python3 examples/python/peer.py ping ENDPOINT [-c 5]          # any messenger listener (messenger serve)

Messages are MessagePack maps ``{"type": TYPE, "data": DATA}`` sent to the
peer's server loop (callback 0). A handler, registered with
``@peer.handler(TYPE)``, is a coroutine function ``(data, sender)``; what
it returns is the reply (when the sender expects one). At most
``max_concurrent`` handlers run at once across the peer (the messenger's
``max_concurrent_handlers``: beyond it messages wait in the listener's
queue, and once that is full senders are refused and resend later), and
every request carries a deadline. A handler that raises is answered with
``{"type": "error", ...}`` and the peer goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any, Awaitable, Callable, Dict, Optional

import messenger
from messenger import aio

Handler = Callable[[Any, Any], Awaitable[Any]]


class Peer:
    """One peer: listens, connects, and handles messages by type."""

    def __init__(self, name: str, max_concurrent: int = 16, timeout: float = 5.0) -> None:
        self.name = name
        self.timeout = timeout
        # A routing id of its own (unique per run): two runs of one peer
        # never collide at a listener.
        self.m = aio.Messenger(
            max_concurrent_handlers=max_concurrent,
            request_timeout=timeout,
        )
        self.handlers: Dict[str, Handler] = {}
        self.handled = 0

    def handler(self, msg_type: str) -> Callable[[Handler], Handler]:
        """Registers the coroutine function for messages of ``msg_type``."""

        def register(f: Handler) -> Handler:
            self.handlers[msg_type] = f
            return f

        return register

    async def listen(self, endpoint: str) -> str:
        """Serves ``endpoint``; returns it bound (tcp port 0 resolved)."""
        return await self.m.listen_for_connection(endpoint, self._dispatch)

    async def connect(self, endpoint: str) -> messenger.Connection:
        """A connection to another peer (pooled, redials by itself)."""
        return await self.m.make_connection(endpoint)

    async def send(
        self,
        dest: Any,
        msg_type: str,
        data: Any = None,
        expect_reply: bool = False,
        timeout: Optional[float] = None,
    ) -> Any:
        """Sends a typed message; with ``expect_reply``, returns the reply's
        data (raising ``RemoteError`` for an error reply), else returns once
        the peer has acknowledged it."""
        body = messenger.pack({"type": msg_type, "data": data})
        if not expect_reply:
            await self.m.send_confirmed(dest, messenger.NOOP, body)
            return None
        reply = await self.m.request(dest, messenger.NOOP, body, timeout=timeout or self.timeout)
        msg = messenger.unpack(reply)
        if msg.get("type") == "error":
            raise RemoteError(msg.get("data"))
        return msg.get("data")

    async def ping(self, dest: Any) -> float:
        """A round trip through the peer's builtin ECHO, in seconds."""
        started = time.perf_counter()
        token = b"ping %f" % started
        reply = await self.m.request(dest, messenger.ECHO, token, timeout=self.timeout)
        if reply.body != token:
            raise RemoteError("ECHO answered with another body")
        return time.perf_counter() - started

    async def close(self) -> None:
        await self.m.close()

    async def _dispatch(self, incoming: messenger.Incoming, responder: aio.Responder) -> None:
        try:
            msg = messenger.unpack(incoming)
            msg_type, data = msg["type"], msg.get("data")
            handler = self.handlers[msg_type]
        except (ValueError, KeyError, TypeError) as e:
            if responder.wants_reply:
                await responder.reply(messenger.pack({"type": "error", "data": f"cannot handle: {e!r}"}))
            return
        try:
            result = await handler(data, responder.destination)
        except Exception as e:  # the handler's bug: answered, and the peer goes on
            if responder.wants_reply:
                await responder.reply(messenger.pack({"type": "error", "data": repr(e)}))
            return
        self.handled += 1
        if responder.wants_reply:
            await responder.reply(messenger.pack({"type": msg_type + ".reply", "data": result}))


class RemoteError(Exception):
    """The other peer could not handle the message."""


def demo_peer(name: str) -> Peer:
    """A peer with a few handlers, for the command line."""
    peer = Peer(name)
    running = {"now": 0, "most": 0}

    @peer.handler("add")
    async def add(data, sender):
        return sum(data)

    @peer.handler("greet")
    async def greet(data, sender):
        return f"hello {data}, from {peer.name}"

    @peer.handler("slow")
    async def slow(data, sender):
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(float(data))
        running["now"] -= 1
        return running["most"]

    @peer.handler("note")
    async def note(data, sender):
        return None

    @peer.handler("fail")
    async def fail(data, sender):
        raise RuntimeError("asked to fail")

    return peer


async def listen(endpoint: str) -> int:
    peer = demo_peer("listener")
    bound = await peer.listen(endpoint)
    print(json.dumps({"listening": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await peer.close()
    print(json.dumps({"handled": peer.handled}), flush=True)
    return 0


async def talk(endpoint: str) -> int:
    peer = demo_peer("talker")
    try:
        conn = await peer.connect(endpoint)
        rtts = [await peer.ping(conn) for _ in range(3)]
        total = await peer.send(conn, "add", [1, 2, 3, 4], expect_reply=True)
        greeting = await peer.send(conn, "greet", "talker", expect_reply=True)
        await peer.send(conn, "note", "no reply wanted")
        # 40 slow requests at once: the listener runs at most 16 at a time.
        most = max(await asyncio.gather(*(peer.send(conn, "slow", 0.05, expect_reply=True) for _ in range(40))))
        try:
            await peer.send(conn, "fail", None, expect_reply=True)
            failed = None
        except RemoteError as e:
            failed = str(e)
        summary = {
            "ok": total == 10 and greeting.startswith("hello talker") and 1 < most <= 16 and bool(failed),
            "ping_ms": [round(r * 1000, 3) for r in rtts],
            "add": total,
            "greet": greeting,
            "most_concurrent": most,
            "fail": failed,
        }
    finally:
        await peer.close()
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


async def ping(endpoint: str, count: int) -> int:
    peer = Peer("pinger")
    try:
        conn = await peer.connect(endpoint)
        for _ in range(count):
            print(json.dumps({"rtt_ms": round(await peer.ping(conn) * 1000, 3)}), flush=True)
    finally:
        await peer.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("listen").add_argument("endpoint")
    sub.add_parser("talk").add_argument("endpoint")
    pp = sub.add_parser("ping")
    pp.add_argument("endpoint")
    pp.add_argument("-c", "--count", type=int, default=3)
    args = p.parse_args()
    if args.mode == "listen":
        return asyncio.run(listen(args.endpoint))
    if args.mode == "talk":
        return asyncio.run(asyncio.wait_for(talk(args.endpoint), 60))
    return asyncio.run(asyncio.wait_for(ping(args.endpoint, args.count), 60))


if __name__ == "__main__":
    sys.exit(main())
