#!/usr/bin/env python3
"""A pyzmq DEALER that pipelines requests to `messenger serve --slc echo`
and is slow to ACK the replies: the reference client of tests/backpressure.rs.

It speaks the NoisePage messenger protocol (design/WIRE.md) as a correct
peer must:

- request i is ``i-(4+i)-0-req-i``: msg_ids 0, 1, 2, ...; src_cb 4+i is a
  callback of ours that names the request; dst_cb 0 is the server loop;
- every message it receives that is not an ACK is ACKed (``id-0-2-``),
  duplicates included;
- a reply is recognised by the server's msg_id: a second copy is a
  duplicate, ACKed and not counted again;
- a request that is neither ACKed nor answered is resent, the same bytes,
  every --resend seconds.

The slow part: all requests are sent first, without reading (pipelined).
Then the client reads replies but holds back its ACKs until it has read
--hold-acks distinct replies (or read nothing new for 5 s), so that
many replies are unACKed at the server at once; from then on it ACKs each
message as it reads it.

It stops when every request is answered, after --deadline seconds, or when
no new reply came for --stall seconds, and prints ONE JSON line: what it
got, per request, checked against what it sent. Every wait is bounded.
"""

import argparse
import json
import os
import sys
import time

import zmq

ACK = 2
FIRST_CB = 4


def encode(msg_id, src_cb, dst_cb, body):
    return b"%d-%d-%d-" % (msg_id, src_cb, dst_cb) + body


def parse(payload):
    parts = payload.split(b"-", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        raise ValueError("malformed payload %r" % payload[:80])
    return int(parts[0]), int(parts[1]), int(parts[2]), parts[3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--hold-acks", type=int, default=4096)
    ap.add_argument("--resend", type=float, default=0.5)
    ap.add_argument("--deadline", type=float, default=60.0)
    ap.add_argument("--stall", type=float, default=10.0)
    a = ap.parse_args()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"backpressure-%d" % os.getpid())
    # Unbounded queues: the whole pipeline goes out at once, and what the
    # server sends waits here for us to read it.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(a.endpoint)

    requests = [encode(i, FIRST_CB + i, 0, b"req-%d" % i) for i in range(a.count)]
    t0 = time.monotonic()
    deadline = t0 + a.deadline

    # Pipelined: every request before reading anything.
    for p in requests:
        sock.send_multipart([b"", p])
    last_send = [time.monotonic()] * a.count
    sent_all = time.monotonic() - t0

    unacked = set(range(a.count))  # requests neither ACKed nor answered
    answered = {}  # request index -> reply body
    reply_ids = set()  # the server's msg_ids of the replies seen
    held = []  # msg_ids whose ACK we hold back
    holding = a.hold_acks > 0
    max_held = 0
    hold_released_at = None
    answered_twice = 0
    duplicate_replies = 0
    unexpected = []  # messages that are neither an ACK nor a reply to us
    resends = 0
    acks_sent = 0
    last_new = time.monotonic()  # when a new reply last came in
    stalled = False

    def ack(msg_id):
        nonlocal acks_sent
        sock.send_multipart([b"", encode(msg_id, 0, ACK, b"")])
        acks_sent += 1

    while len(answered) < a.count:
        now = time.monotonic()
        if now >= deadline:
            break
        if now - last_new > a.stall:
            stalled = True
            break
        if sock.poll(50, zmq.POLLIN):
            # A bounded batch, so resends are never starved.
            for _ in range(2000):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) not in (2, 3) or frames[-2] != b"":
                    unexpected.append("frames %r" % [f[:40] for f in frames])
                    continue
                try:
                    msg_id, src_cb, dst_cb, body = parse(frames[-1])
                except ValueError as e:
                    unexpected.append(str(e))
                    continue
                if dst_cb == ACK:
                    unacked.discard(msg_id)
                    continue
                if holding:
                    held.append(msg_id)
                    max_held = max(max_held, len(held))
                else:
                    ack(msg_id)
                if msg_id in reply_ids:
                    duplicate_replies += 1
                    continue
                reply_ids.add(msg_id)
                i = dst_cb - FIRST_CB
                if src_cb != 0 or not 0 <= i < a.count:
                    unexpected.append(frames[-1][:80].decode("utf-8", "backslashreplace"))
                    continue
                if i in answered:
                    answered_twice += 1
                    continue
                answered[i] = body
                unacked.discard(i)  # a reply proves receipt
                last_new = time.monotonic()
        now = time.monotonic()
        if holding and (len(reply_ids) >= a.hold_acks or now - last_new > 5.0):
            holding = False
            hold_released_at = round(now - t0, 3)
            for msg_id in held:
                ack(msg_id)
            held = []
        for i in list(unacked):
            if now - last_send[i] >= a.resend:
                sock.send_multipart([b"", requests[i]])
                last_send[i] = now
                resends += 1

    for msg_id in held:
        ack(msg_id)
    wrong = [
        {"request": i, "callback": FIRST_CB + i, "body": b.decode("utf-8", "backslashreplace")}
        for i, b in sorted(answered.items())
        if b != b"req-%d" % i
    ]
    missing = [i for i in range(a.count) if i not in answered]
    print(
        json.dumps(
            {
                "count": a.count,
                "answered": len(answered),
                "right": len(answered) - len(wrong),
                "wrong_bodies": len(wrong),
                "wrong_examples": wrong[:10],
                "answered_twice": answered_twice,
                "duplicate_replies": duplicate_replies,
                "unexpected": len(unexpected),
                "unexpected_examples": unexpected[:10],
                "missing": len(missing),
                "first_missing": missing[:10],
                "unacked_requests": len(unacked),
                "resends": resends,
                "acks_sent": acks_sent,
                "max_held_acks": max_held,
                "hold_released_at": hold_released_at,
                "sent_all_after": round(sent_all, 3),
                "stalled": stalled,
                "elapsed": round(time.monotonic() - t0, 3),
            }
        )
    )
    sys.stdout.flush()
    sock.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
