"""Type stubs of the native module ``messenger._messenger`` (crates/python).
Users import these names from ``messenger`` and ``messenger.aio``."""

import asyncio
import contextvars
from typing import Any, Awaitable, Callable, Dict, Generator, Iterable, Optional, Tuple, Union

Buffer = Union[bytes, bytearray]
Destination = Union["Connection", "Peer"]
Seconds = float

NOOP: int
"""Callback 0: the listener's server loop; a message to it expects no reply
unless it carries a callback."""
ECHO: int
"""Callback 1: the receiver answers with the same body (builtin)."""
ACK: int
"""Callback 2: acknowledgements (the library sends and reads them)."""
FIRST_USER: int
"""The first callback id a messenger issues for replies (4)."""

class Incoming:
    """A message handed to a server loop, a callback or a request's caller."""

    @property
    def msg_id(self) -> int:
        """The sender's id for this message."""
    @property
    def src_cb(self) -> int:
        """The sender's callback for replies (0, ``NOOP``: it expects none)."""
    @property
    def dst_cb(self) -> int:
        """The callback this message was addressed to."""
    @property
    def body(self) -> bytes:
        """The body: everything after the payload's third ``-``."""
    @property
    def peer(self) -> bytes:
        """The sender's routing id on a listener; empty on a connection."""
    @property
    def peer_key(self) -> Optional[str]:
        """The sender's CURVE public key (Z85), proven by its session; None
        over NULL and inproc."""
    @property
    def endpoint(self) -> str:
        """The endpoint it arrived on."""
    def reply_destination(self) -> Destination:
        """Where to send further messages to its sender."""

class Connection:
    """A connection made with ``make_connection``: pooled per endpoint,
    redials by itself, valid until its messenger closes. Hashable."""

    @property
    def id(self) -> int:
        """Its number within its messenger."""
    @property
    def endpoint(self) -> str:
        """The endpoint it dials."""

class Peer:
    """A peer connected to one of our listeners, by routing id. Hashable."""

    @property
    def listener(self) -> int:
        """The listener's number within its messenger."""
    @property
    def peer(self) -> bytes:
        """The peer's routing id."""

class KeyPair:
    """A CURVE key pair; its repr shows the public key only."""

    @staticmethod
    def generate() -> "KeyPair":
        """A new random pair."""
    @staticmethod
    def from_secret(secret: str) -> "KeyPair":
        """The pair of a secret key (40 Z85 characters)."""
    @property
    def public(self) -> str:
        """The public key, 40 Z85 characters."""
    def secret_z85(self) -> str:
        """The secret key, 40 Z85 characters. Keep it out of logs."""

class Curve:
    """CURVE settings for ``Messenger(curve=...)``."""

    def __init__(
        self,
        keys: KeyPair,
        server_key: Optional[str] = None,
        allow: Optional[Iterable[str]] = None,
    ) -> None:
        """``keys``: our pair. ``server_key``: the server's public key, for
        connections (CURVE is spoken to servers only when given).
        ``allow``: the clients' public keys a listener admits (None: any)."""
    @property
    def keys(self) -> KeyPair: ...
    @property
    def server_key(self) -> Optional[str]: ...
    @property
    def allow(self) -> Optional[list[str]]: ...

ServerLoop = Callable[[Incoming, "Responder"], Any]
AsyncServerLoop = Callable[[Incoming, "AsyncResponder"], Any]
ReplyCallback = Callable[[Union[Incoming, BaseException]], Any]

class _ResponderBase:
    """What both APIs' responders share: who sent the message and where it
    came in (``Responder`` and ``AsyncResponder`` extend it)."""

    @property
    def peer(self) -> bytes:
        """The sender's routing id."""
    @property
    def src_cb(self) -> int:
        """The callback id the sender asked replies to go to."""
    @property
    def wants_reply(self) -> bool:
        """Whether the sender asked for a reply (``src_cb != NOOP``)."""
    @property
    def destination(self) -> Destination:
        """Where to send further messages to the sender."""

class Responder(_ResponderBase):
    """Answers the sender of one message (blocking API); usable later,
    from any thread."""

    def reply(self, body: Buffer) -> None:
        """Replies to the message's ``src_cb``. The first reply never waits
        or fails for want of room; a further one waits (GIL released)."""
    def try_reply(self, body: Buffer) -> None:
        """Replies without ever waiting; raises ``Full`` where ``reply``
        would wait."""

class _MessengerBase:
    """What both APIs' messengers share: the calls that never wait
    (``Messenger`` and ``AsyncMessenger`` extend it)."""

    @property
    def identity(self) -> bytes:
        """The routing id it announces."""
    def is_connected(self, connection: Connection) -> bool:
        """Whether the connection's link is up now."""
    def rtt(self, connection: Connection) -> Optional[float]:
        """The last heartbeat round trip, in seconds."""
    def stats(self) -> Dict[str, int]:
        """The library's counters and the binding's (``server_loop_errors``,
        ``callback_errors``)."""

class Messenger(_MessengerBase):
    """The blocking API: every call that waits releases the GIL and can be
    interrupted with Ctrl-C; server loops and callbacks run on threads the
    package starts and names. A context manager; ``close()`` drains as the
    library's shutdown does.

    ``Messenger(identity=None, **config)``: ``identity`` (str or bytes) is
    the routing id it announces (None: one unique to it). The keywords are
    the library's ``Config`` fields (durations in seconds; ``heartbeat`` is
    ``(interval, timeout, ttl)`` or None; ``resend_interval`` and
    ``evict_idle_after`` may be None), plus ``secret`` (bytes) and
    ``curve`` (a ``Curve``). A bad value raises ``ValueError`` (as
    ``InvalidArgument``) naming the field."""

    def __init__(
        self,
        identity: Union[str, bytes, None] = None,
        *,
        request_timeout: Seconds = ...,
        max_pending_callbacks: int = ...,
        send_queue_capacity: int = ...,
        send_window_bytes: int = ...,
        send_buffer_size: int = ...,
        slc_queue_capacity: int = ...,
        max_message_size: int = ...,
        max_frames: int = ...,
        max_command_size: int = ...,
        message_timeout: Seconds = ...,
        min_receive_rate: int = ...,
        max_partial_bytes: int = ...,
        heartbeat: Optional[Tuple[Seconds, Seconds, Seconds]] = ...,
        handshake_timeout: Seconds = ...,
        max_connections_per_listener: int = ...,
        evict_idle_after: Optional[Seconds] = ...,
        max_connections_per_address: int = ...,
        connect_timeout: Seconds = ...,
        resend_interval: Optional[Seconds] = ...,
        max_pending_messages: int = ...,
        dedup_window: int = ...,
        reconnect_initial: Seconds = ...,
        reconnect_max: Seconds = ...,
        max_concurrent_handlers: int = ...,
        shutdown_grace: Seconds = ...,
        linger: Seconds = ...,
        secret: Optional[bytes] = ...,
        curve: Optional[Curve] = ...,
    ) -> None: ...
    def listen_for_connection(self, endpoint: str, server_loop: ServerLoop) -> str:
        """Binds ``endpoint`` and returns it bound (tcp port 0 resolved).
        ``server_loop(incoming, responder)`` gets every message to callback
        0, on a thread of this listener's own, one at a time, in order; its
        exceptions are logged (logger ``messenger``) and counted. Listeners
        announce the messenger's identity."""
    def make_connection(self, endpoint: str, server_loop: Optional[ServerLoop] = None) -> Connection:
        """Connects (or returns the pooled connection). With
        ``server_loop``, the peer's messages to callback 0 over it go there."""
    def send_message(
        self,
        dest: Destination,
        callback_id: int,
        body: Buffer,
        callback: Optional[ReplyCallback] = None,
    ) -> int:
        """Sends; returns the msg_id once handed to the connection. With
        ``callback``, it is called once, on the messenger's callback thread,
        with the reply or the exception saying why none came."""
    def send_confirmed(self, dest: Destination, callback_id: int, body: Buffer) -> int:
        """Sends; returns the msg_id once the peer has ACKed it."""
    def request(
        self,
        dest: Destination,
        callback_id: int,
        body: Buffer,
        timeout: Optional[Seconds] = None,
    ) -> Incoming:
        """Sends and returns the reply, within ``timeout`` seconds (default
        ``request_timeout``)."""
    def close(self) -> None:
        """Shuts down as the library does; again does nothing. From one of
        this messenger's own server loops (a QUIT command) it returns at
        once, and the shutdown goes on behind it."""
    def __enter__(self) -> "Messenger": ...
    def __exit__(self, *exc: Any) -> bool: ...

class AsyncResponder(_ResponderBase):
    """Answers the sender of one message (asyncio API, ``aio.Responder``)."""

    def reply(self, body: Buffer) -> "asyncio.Future[None]":
        """Replies; done at once for the first reply to a request, waits for
        room for a further one."""
    def try_reply(self, body: Buffer) -> None:
        """Replies without waiting; raises ``Full`` where ``reply`` would wait."""

class RequestFuture(Awaitable[Incoming]):
    """What ``aio.Messenger.request`` returns: a future of the loop to
    asyncio (``asyncio.isfuture``), so ``gather``, ``wait_for``, ``shield``
    and ``wait`` take it. Resolves to the reply or raises the request's
    error; cancelling it frees the request at once. Its waiters run on
    the loop's thread, each in its contextvars context."""

    _asyncio_future_blocking: bool
    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop it belongs to."""
    def done(self) -> bool:
        """Whether it is done: replied, failed or cancelled."""
    def cancelled(self) -> bool:
        """Whether it was cancelled."""
    def result(self) -> Incoming:
        """The reply; raises the request's error, ``CancelledError``, or
        ``InvalidStateError`` if it is not done."""
    def exception(self) -> Optional[BaseException]:
        """The request's error, or None if it was answered."""
    def add_done_callback(
        self,
        callback: Callable[["RequestFuture"], object],
        *,
        context: Optional[contextvars.Context] = None,
    ) -> None:
        """Calls ``callback(future)`` once it is done, in ``context``."""
    def remove_done_callback(self, callback: Callable[["RequestFuture"], object]) -> int:
        """Removes every waiter equal to ``callback``; returns how many."""
    def cancel(self, msg: Optional[Any] = None) -> bool:
        """Cancels it if it is not done, freeing the request at once."""
    def __await__(self) -> Generator[Any, None, Incoming]: ...
    def __iter__(self) -> Generator[Any, None, Incoming]: ...

class AsyncMessenger(_MessengerBase):
    """The asyncio API (``aio.Messenger``): the blocking API's calls as
    futures of the loop it is first used on, whose thread runs its server
    loops and callbacks. ``async with``, or ``await close()``."""

    def __init__(self, identity: Union[str, bytes, None] = None, **config: Any) -> None: ...
    def listen_for_connection(self, endpoint: str, server_loop: AsyncServerLoop) -> "asyncio.Future[str]":
        """Binds ``endpoint``; ``server_loop`` (a coroutine function, or a
        plain one) handles each message on the loop's thread, concurrently
        up to ``max_concurrent_handlers``."""
    def make_connection(
        self, endpoint: str, server_loop: Optional[AsyncServerLoop] = None
    ) -> "asyncio.Future[Connection]": ...
    def send_message(
        self,
        dest: Destination,
        callback_id: int,
        body: Buffer,
        callback: Optional[ReplyCallback] = None,
    ) -> "asyncio.Future[int]": ...
    def send_confirmed(self, dest: Destination, callback_id: int, body: Buffer) -> "asyncio.Future[int]": ...
    def request(
        self,
        dest: Destination,
        callback_id: int,
        body: Buffer,
        timeout: Optional[Seconds] = None,
    ) -> "RequestFuture":
        """Resolves to the reply; cancelling the future frees the request."""
    def close(self) -> "asyncio.Future[None]":
        """Shuts down as the library does; resolves when done. Awaited in
        one of this messenger's own server loops (a QUIT command) it
        resolves at once, and the shutdown goes on behind it."""
    def _close_blocking(self) -> None: ...
    def __aenter__(self) -> Awaitable["AsyncMessenger"]: ...
    def __aexit__(self, *exc: Any) -> Awaitable[None]: ...

# The package's own threads (messenger/_threads.py): not for applications.

class WorkQueue:
    """The calls waiting for one package thread."""

    def next(self) -> Optional[Tuple[Callable[..., Any], Tuple[Any, ...]]]: ...
    def what(self) -> str: ...
    def raised(self) -> None: ...

def settle_threads(timeout: float) -> bool:
    """The exit hook's last step: waits for the package's waits to end."""
