#!/usr/bin/env python3
"""Authenticate to a `messenger serve` that requires a shared secret, then ECHO.

    export MESSENGER_SECRET='correct horse battery staple'
    messenger serve --bind tcp://127.0.0.1:5555 --secret-env MESSENGER_SECRET
    python3 examples/python_auth.py tcp://127.0.0.1:5555 [--timeout 5]

(needs `pip install pyzmq`; the secret comes from $MESSENGER_SECRET). It
prints the ECHO reply and exits 0, or exits 1 when no reply comes in time,
which is what a wrong secret looks like: the server drops the connection.

The proof (src/auth.rs) is the connection's first message, msg_id 0,
addressed to the reserved callback 3, with the body

    v1:{nonce}:{unix_ms}:{mac}
    nonce   = 32 lowercase hex digits (16 random bytes, new per connection)
    unix_ms = milliseconds since the Unix epoch (within 30 s of the server's clock)
    mac     = lowercase hex of HMAC-SHA256(secret, "messenger-auth-v1:{nonce}:{unix_ms}")

The server checks it before anything after it is let through. It proves
knowledge of the secret; it does not encrypt or sign later messages.
`python_auth.py --proof SECRET NONCE_HEX UNIX_MS` prints the proof for those
inputs (the tests compare it with the Rust implementation).

See examples/python_peer.py for the protocol in general (ACKs, resends).
"""

import hashlib
import hmac
import os
import sys
import time

AUTH, ECHO, ACK = 3, 1, 2
REPLY_CB = 4  # our own callback id for the ECHO reply


def proof(secret: bytes, nonce: bytes, unix_ms: int) -> str:
    """The authentication body for `secret`, a 16-byte `nonce` and a time."""
    n = nonce.hex()
    msg = f"messenger-auth-v1:{n}:{unix_ms}".encode()
    return f"v1:{n}:{unix_ms}:{hmac.new(secret, msg, hashlib.sha256).hexdigest()}"


def authenticated_echo(endpoint: str, secret: bytes, body: bytes, timeout: float):
    """Connects, proves the secret, ECHOes `body`; the reply body or None."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"python-auth")
    sock.connect(endpoint)
    p = proof(secret, os.urandom(16), int(time.time() * 1000))
    sock.send_multipart([b"", f"0-0-{AUTH}-{p}".encode()])  # first, always
    sock.send_multipart([b"", b"1-%d-%d-" % (REPLY_CB, ECHO) + body])
    deadline = time.monotonic() + timeout
    try:
        while sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            *_, payload = sock.recv_multipart()
            msg_id, _src_cb, dst_cb, reply = payload.split(b"-", 3)
            if int(dst_cb) != ACK:  # ACK everything but ACKs, or it is resent
                sock.send_multipart([b"", b"%s-0-%d-" % (msg_id, ACK)])
            if int(dst_cb) == REPLY_CB:
                return reply
        return None
    finally:
        sock.close(linger=500)  # give our last ACK time to leave


def main(argv):
    if len(argv) == 5 and argv[1] == "--proof":
        print(proof(argv[2].encode(), bytes.fromhex(argv[3]), int(argv[4])))
        return 0
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--timeout"):
        print(__doc__, file=sys.stderr)
        return 2
    secret = os.environ.get("MESSENGER_SECRET")
    if not secret:
        print("python_auth.py: set MESSENGER_SECRET", file=sys.stderr)
        return 2
    timeout = float(argv[3]) if len(argv) == 4 else 5.0
    reply = authenticated_echo(argv[1], secret.encode(), b"hello, authenticated", timeout)
    if reply is None:
        print(f"no ECHO reply within {timeout}s (wrong secret?)", file=sys.stderr)
        return 1
    print("ECHO ->", reply.decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
