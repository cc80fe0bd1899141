"""The exceptions of the messenger package: one hierarchy under
``MessengerError``.

Each failure of the library has a kind, and each kind one class here
(the native module maps them in one place). Where a builtin exception means
the same, the class is that too, so ``except TimeoutError`` or
``except ValueError`` catch what they should.
"""

__all__ = [
    "MessengerError",
    "Timeout",
    "Disconnected",
    "Refused",
    "Shutdown",
    "TooLarge",
    "Full",
    "BindError",
    "InvalidArgument",
    "ForkError",
]


class MessengerError(Exception):
    """Anything the messenger raises. Its message is the library's (the
    command line prints the same text)."""


class Timeout(MessengerError, TimeoutError):
    """No reply (or ACK) came before the deadline, or no room to send was
    found before it; also a connection not made within ``connect_timeout``."""


class Disconnected(MessengerError, ConnectionError):
    """The connection, or the listener's session with the peer, closed
    before the message could be sent or its answer arrived."""


class Refused(MessengerError, ConnectionError):
    """The peer could not be reached or refused us: a failed dial or
    handshake (CURVE included), or nothing bound at an inproc name."""


class Shutdown(MessengerError):
    """The messenger is closed, or closed while the call waited."""


class TooLarge(MessengerError, ValueError):
    """The body would make a payload larger than ``max_message_size``."""


class Full(MessengerError):
    """A bound was reached: the peer's window, a send buffer or a queue is
    full, or too many callbacks wait. Only the calls that never wait
    (``try_reply``) raise it; waiting again may help."""


class BindError(MessengerError, OSError):
    """An endpoint cannot be bound: it is in use, an ipc path is not a
    socket, or a host does not resolve."""


class InvalidArgument(MessengerError, ValueError):
    """The call itself is wrong: a bad endpoint, configuration, identity
    or key, or a destination no socket has."""


class ForkError(MessengerError, RuntimeError):
    """A messenger made before ``os.fork()`` was used in the child, which
    has none of its threads or connections. Make a new one in the child."""
