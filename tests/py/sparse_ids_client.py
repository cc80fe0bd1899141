#!/usr/bin/env python3
"""A pyzmq sender whose msg_ids skip: the reference peer of
tests/sparse_ids.rs.

NoisePage's C++ Messenger numbers its messages with ONE counter across all
its connections, so each of its peers sees ids with gaps. This client does
the same: message k (k = 0 .. --count - 1) gets msg_id k * --stride and
goes to endpoint k % (number of --endpoint), each endpoint through a DEALER
of its own. So one endpoint with --stride 3 sees 0, 3, 6, ...; two
endpoints with --stride 1 see 0, 2, 4, ... and 1, 3, 5, ...

Message k is ``id-src-dst-m-k`` with dst = --dst-cb: 0 (the server loop,
src 0: no reply wanted) or 1 (ECHO, src 4+k: a callback of ours that names
the message). It is sent --copies times in a row (the copies after the
first are duplicates), at most --window messages unACKed at once, and
resent every --resend seconds until ACKed, as a correct peer does. Every
message received that is not an ACK (an ECHO's answer) is ACKed,
duplicates included; answers are told apart by the server's msg_id.

It stops when every message is ACKed (and, for ECHO, answered), after
--deadline seconds, or when nothing new came for --stall seconds, and
prints ONE JSON line. Every wait is bounded.
"""

import argparse
import json
import os
import sys
import time

import zmq

NOOP, ECHO, ACK = 0, 1, 2
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
    ap.add_argument("--endpoint", action="append", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--dst-cb", type=int, choices=(NOOP, ECHO), default=NOOP)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--resend", type=float, default=0.5)
    ap.add_argument("--deadline", type=float, default=40.0)
    ap.add_argument("--stall", type=float, default=15.0)
    a = ap.parse_args()
    echo = a.dst_cb == ECHO

    ctx = zmq.Context()
    socks = []
    poller = zmq.Poller()
    for j, ep in enumerate(a.endpoint):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, b"sparse-%d-%d" % (os.getpid(), j))
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(ep)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    n = len(socks)

    def message(k):
        msg_id = k * a.stride
        src_cb = FIRST_CB + k if echo else NOOP
        return msg_id, encode(msg_id, src_cb, a.dst_cb, b"m-%d" % k)

    t0 = time.monotonic()
    deadline = t0 + a.deadline
    next_k = 0
    unacked = {}  # k -> (socket index, payload, last sent)
    acked = set()  # k of the messages ACKed
    acked_per_endpoint = [0] * n
    answers = {}  # k -> number of distinct answers
    answer_ids = [set() for _ in range(n)]  # server msg_ids seen, per endpoint
    wrong = []  # answers that do not match their message
    unexpected = []
    resends = 0
    repeated_acks = 0
    duplicate_answers = 0
    last_new = t0
    stalled = False

    def done():
        return next_k == a.count and len(acked) == a.count and (
            not echo or len(answers) == a.count
        )

    while not done():
        now = time.monotonic()
        if now >= deadline:
            break
        if now - last_new > a.stall:
            stalled = True
            break
        # New messages, while the window has room.
        while next_k < a.count and len(unacked) < a.window:
            j = next_k % n
            msg_id, p = message(next_k)
            for _ in range(a.copies):
                socks[j].send_multipart([b"", p])
            unacked[next_k] = (j, p, time.monotonic())
            next_k += 1
        for s, _ in poller.poll(20):
            j = socks.index(s)
            for _ in range(2000):
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
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
                    if msg_id % a.stride or (msg_id // a.stride) % n != j:
                        unexpected.append("ACK of %d, never sent on %d" % (msg_id, j))
                        continue
                    k = msg_id // a.stride
                    unacked.pop(k, None)
                    if k in acked:
                        repeated_acks += 1
                    else:
                        acked.add(k)
                        acked_per_endpoint[j] += 1
                        last_new = time.monotonic()
                    continue
                s.send_multipart([b"", encode(msg_id, NOOP, ACK, b"")])
                if msg_id in answer_ids[j]:
                    duplicate_answers += 1
                    continue
                answer_ids[j].add(msg_id)
                k = dst_cb - FIRST_CB
                if not echo or src_cb != 0 or not 0 <= k < a.count or k % n != j:
                    unexpected.append(frames[-1][:80].decode("utf-8", "backslashreplace"))
                    continue
                answers[k] = answers.get(k, 0) + 1
                if body != b"m-%d" % k:
                    wrong.append({"message": k, "body": body.decode("utf-8", "backslashreplace")})
                unacked.pop(k, None)  # an answer proves receipt
                last_new = time.monotonic()
        now = time.monotonic()
        for k, (j, p, sent) in list(unacked.items()):
            if now - sent >= a.resend:
                socks[j].send_multipart([b"", p])
                unacked[k] = (j, p, now)
                resends += 1

    never_acked = [k * a.stride for k in range(a.count) if k not in acked]
    print(
        json.dumps(
            {
                "count": a.count,
                "sent": next_k,
                "acked": len(acked),
                "acked_per_endpoint": acked_per_endpoint,
                "first_unacked_ids": never_acked[:10],
                "answered": len(answers),
                "answered_twice": sum(1 for c in answers.values() if c > 1),
                "wrong_bodies": len(wrong),
                "wrong_examples": wrong[:10],
                "unexpected": len(unexpected),
                "unexpected_examples": unexpected[:10],
                "resends": resends,
                "repeated_acks": repeated_acks,
                "duplicate_answers": duplicate_answers,
                "stalled": stalled,
                "elapsed": round(time.monotonic() - t0, 3),
            }
        )
    )
    sys.stdout.flush()
    for s in socks:
        s.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
