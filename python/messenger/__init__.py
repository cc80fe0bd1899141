"""Callback-driven messaging over ZeroMQ endpoints (``tcp://``, ``ipc://``,
``inproc://``), speaking NoisePage's messenger protocol: Python bindings of
the Rust library, with the same engine, delivery guarantees and CURVE.

A server answers through its server loop; a client connects, sends and
asks::

    import messenger

    with messenger.Messenger() as server, messenger.Messenger() as client:
        def answer(incoming, responder):
            responder.reply(b"seen " + incoming.body)

        bound = server.listen_for_connection("tcp://127.0.0.1:0", answer)
        conn = client.make_connection(bound)
        assert client.request(conn, messenger.NOOP, b"hi").body == b"seen hi"
        assert client.request(conn, messenger.ECHO, b"hi").body == b"hi"

This module is the blocking API: every call that waits releases the GIL and
can be interrupted with Ctrl-C; server loops and callbacks run on threads
the package starts and names. ``messenger.aio`` has the same calls as
awaitables of the running asyncio loop.

Bodies are bytes; ``pack`` and ``unpack`` turn values into MessagePack
bodies and back (as the Rust library's typed bodies: maps for structs).
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Union

from . import _errors
from ._certs import keygen, load_certificate, load_public_keys
from ._errors import (
    BindError,
    Disconnected,
    ForkError,
    Full,
    InvalidArgument,
    MessengerError,
    Refused,
    Shutdown,
    Timeout,
    TooLarge,
)
from ._messenger import (
    ACK,
    ECHO,
    FIRST_USER,
    NOOP,
    Connection,
    Curve,
    Incoming,
    KeyPair,
    Peer,
    Responder,
)
from ._messenger import Messenger as _NativeMessenger
from ._messenger import settle_threads as _settle_threads

__all__ = [
    "ACK",
    "ECHO",
    "FIRST_USER",
    "NOOP",
    "BindError",
    "Connection",
    "Curve",
    "Disconnected",
    "ForkError",
    "Full",
    "Incoming",
    "InvalidArgument",
    "KeyPair",
    "Messenger",
    "MessengerError",
    "Peer",
    "Refused",
    "Responder",
    "Shutdown",
    "Timeout",
    "TooLarge",
    "keygen",
    "load_certificate",
    "load_public_keys",
    "pack",
    "unpack",
]

#: Messengers not yet closed: closed at interpreter exit, so their last
#: replies and ACKs leave and their ipc files go.
_open: "weakref.WeakSet[Messenger]" = weakref.WeakSet()


class Messenger(_NativeMessenger):
    __doc__ = _NativeMessenger.__doc__
    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The native constructor did the work; this only remembers it for
        # the exit hook.
        _open.add(self)


@atexit.register
def _close_at_exit() -> None:
    for m in list(_open):
        try:
            # An aio.Messenger's loop is gone by now: it closes blocking.
            getattr(m, "_close_blocking", m.close)()
        except MessengerError:
            pass
    # Every wait of the package's ends as its messenger closes, and takes
    # the GIL back: let each do so before the interpreter finalizes (a
    # thread that takes it after that is ended under the extension's
    # frames, which crashed the process).
    _settle_threads(2.0)


def pack(value: Any) -> bytes:
    """``value`` as a MessagePack body (``msgpack.packb``, binary and text
    kept apart), as the Rust library's ``typed::to_msgpack`` writes them."""
    import msgpack

    return msgpack.packb(value, use_bin_type=True)


def unpack(body: Union[bytes, bytearray, memoryview, Incoming]) -> Any:
    """The value of a MessagePack body (or of an ``Incoming``'s body).
    Raises ``InvalidArgument`` (a ``ValueError``) when the bytes are not
    MessagePack."""
    import msgpack

    data = body.body if isinstance(body, Incoming) else body
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        # Some of msgpack's exceptions carry no message: their name, then.
        why = str(e) or type(e).__name__
        raise InvalidArgument(f"cannot decode the body: not MessagePack: {why}") from None


del _errors
