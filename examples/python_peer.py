#!/usr/bin/env python3
"""Talk to `messenger serve` from Python with pyzmq.

Start a server whose server loop echoes, then run this script against it:

    messenger serve --bind tcp://127.0.0.1:5555 --slc echo
    python3 examples/python_peer.py tcp://127.0.0.1:5555

(needs `pip install pyzmq`). It connects a DEALER, sends an ECHO and a request
to the server loop, prints both replies and exits 0; on a timeout it exits 1.

The protocol in brief (design/WIRE.md has the details):

* A payload is `{msg_id}-{src_cb}-{dst_cb}-{body}`: three decimal numbers,
  each followed by '-', then the body as raw bytes.
* A DEALER sends two frames `["", payload]` and receives three,
  `[router_identity, "", payload]`.
* Callback ids: 0 = NOOP (the listener's server loop), 1 = ECHO, 2 = ACK,
  3 reserved; ids from 4 up name your own callbacks. A reply is addressed
  to the `src_cb` of the message it answers.
* msg_ids count up from 0 per (sender, receiver). Every message except an
  ACK must be acknowledged with `{msg_id}-0-2-`, including duplicates;
  the sender resends what is not ACKed within about a second, so a
  receiver also has to ignore a msg_id it has already handled.
"""

import sys
import time

import zmq

NOOP, ECHO, ACK = 0, 1, 2
RESEND_AFTER = 1.0  # seconds without an ACK before we send again


class Peer:
    def __init__(self, endpoint, identity):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.next_id = 0
        self.seen = set()  # msg_ids received: a resent copy is ACKed, not handled again

    def _send(self, msg_id, src_cb, dst_cb, body):
        self.sock.send_multipart([b"", b"%d-%d-%d-" % (msg_id, src_cb, dst_cb) + body])

    def _recv(self, timeout):
        """The next (msg_id, src_cb, dst_cb, body), ACKing it; None on timeout."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        _router_identity, _empty, payload = self.sock.recv_multipart()
        msg_id, src_cb, dst_cb, body = payload.split(b"-", 3)
        msg_id, src_cb, dst_cb = int(msg_id), int(src_cb), int(dst_cb)
        if dst_cb != ACK:
            self._send(msg_id, NOOP, ACK, b"")
        return msg_id, src_cb, dst_cb, body

    def request(self, dst_cb, body, reply_cb, timeout=5.0):
        """Sends `body` to `dst_cb` asking for the reply at `reply_cb`;
        resends until ACKed and returns the reply body (None on timeout)."""
        msg_id = self.next_id
        self.next_id += 1
        self._send(msg_id, reply_cb, dst_cb, body)
        acked, reply = False, None
        sent_at = time.monotonic()
        deadline = sent_at + timeout
        while not (acked and reply is not None):
            now = time.monotonic()
            if now >= deadline:
                return None
            if not acked and now - sent_at >= RESEND_AFTER:
                self._send(msg_id, reply_cb, dst_cb, body)  # same msg_id: a resend
                sent_at = now
            m = self._recv(min(deadline - now, 0.1))
            if m is None:
                continue
            r_id, _src, r_dst, r_body = m
            if r_dst == ACK and r_id == msg_id:
                acked = True
            elif r_dst == reply_cb and r_id not in self.seen:
                self.seen.add(r_id)
                reply = r_body
                acked = True  # a reply proves the request arrived
        return reply


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    peer = Peer(sys.argv[1], "python-example")

    echoed = peer.request(ECHO, b"hello, messenger", reply_cb=4)
    print("ECHO ->", echoed)
    handled = peer.request(NOOP, b"work item 1", reply_cb=5)
    print("server loop ->", handled)

    if echoed != b"hello, messenger":
        print("no ECHO reply", file=sys.stderr)
        return 1
    if handled is None:
        print("no reply from the server loop (is serve running with --slc echo?)", file=sys.stderr)
        return 1
    # Linger briefly so a reply resent before our ACK landed is ACKed too.
    while peer._recv(0.2) is not None:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
