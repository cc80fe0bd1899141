#!/usr/bin/env python3
"""A real libzmq peer (pyzmq) for the messenger interop tests.

Two roles:

``dealer``  connects a DEALER to a messenger listener (``messenger serve``)
            and runs one scripted scenario, then prints ONE JSON object on
            stdout: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``
            (exit status 0 or 1).

``router``  binds a ROUTER that speaks the protocol (ACKs, answers ECHO,
            answers server-loop messages) for the Rust side to connect to.
            It prints ``{"listening": ENDPOINT}`` first, then one JSON line
            per message it receives, and ``{"summary": ...}`` when it stops
            (stdin closed, or --lifetime elapsed).

Wire format: payload ``{msg_id}-{src_cb}-{dst_cb}-{body}``; a DEALER sends
``["", payload]``; a NoisePage ROUTER sends ``[peer, own_identity, "",
payload]`` so a DEALER receives ``[router_identity, "", payload]``.

Every wait here is bounded: nothing blocks longer than its timeout.
"""

import argparse
import json
import os
import sys
import time

import zmq

NOOP, ECHO, ACK = 0, 1, 2


class ProtocolError(Exception):
    pass


def text(b):
    return b.decode("utf-8", errors="backslashreplace")


def encode(msg_id, src_cb, dst_cb, body):
    if isinstance(body, str):
        body = body.encode()
    return b"%d-%d-%d-" % (msg_id, src_cb, dst_cb) + body


def parse(payload):
    """Returns (msg_id, src_cb, dst_cb, body) or raises ProtocolError."""
    parts = payload.split(b"-", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        raise ProtocolError("malformed payload %r" % payload[:80])
    return int(parts[0]), int(parts[1]), int(parts[2]), parts[3]


def msg_json(m):
    return {
        "msg_id": m["msg_id"],
        "src_cb": m["src_cb"],
        "dst_cb": m["dst_cb"],
        "body": text(m["body"]),
        "t": round(m["t"], 4),
    }


class Dealer:
    """A DEALER speaking the protocol, with a bounded receive helper."""

    def __init__(self, ctx, endpoint, identity, expect_router_identity, options=(), monitor=False):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())
        for opt, value in options:
            self.sock.setsockopt(opt, value)
        # Opened before connecting, so the first CONNECTED is seen too.
        self.monitor = self.sock.get_monitor_socket() if monitor else None
        self.events = []  # (time, event name) from the monitor, in order
        self.sock.connect(endpoint)
        self.expect_router_identity = expect_router_identity
        self.next_id = 0
        self.t0 = time.monotonic()
        self.received = []  # every message received, in order
        self.acks_sent = 0
        self.identity = identity.encode()
        self.router_id = None  # the ROUTER's identity, once seen
        self.noisepage_acks = False

    def now(self):
        return time.monotonic() - self.t0

    def poll_events(self):
        """Takes the socket monitor's pending events into `events`."""
        if self.monitor is None:
            return
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0, zmq.POLLIN):
            ev = recv_monitor_message(self.monitor)
            self.events.append((round(self.now(), 4), EVENT_NAMES.get(ev["event"], str(ev["event"]))))

    def send_raw(self, payload):
        self.sock.send_multipart([b"", payload])

    def send(self, src_cb, dst_cb, body, msg_id=None):
        if msg_id is None:
            msg_id = self.next_id
            self.next_id += 1
        self.send_raw(encode(msg_id, src_cb, dst_cb, body))
        return msg_id

    def ack(self, msg_id):
        payload = encode(msg_id, NOOP, ACK, b"")
        if self.noisepage_acks and self.router_id is not None:
            # NoisePage's DEALER puts routing frames in front of its ACKs:
            # the ROUTER reads [peer, remote_id, own_id, "", payload].
            self.sock.send_multipart([self.router_id, self.identity, b"", payload])
        else:
            self.send_raw(payload)
        self.acks_sent += 1

    def recv(self, timeout):
        """One message within `timeout` seconds, or None."""
        if not self.sock.poll(int(max(timeout, 0) * 1000), zmq.POLLIN):
            return None
        frames = self.sock.recv_multipart()
        if len(frames) != 3 or frames[1] != b"":
            raise ProtocolError(
                "expected [router_identity, '', payload], got %d frames %r"
                % (len(frames), [f[:40] for f in frames])
            )
        self.router_id = frames[0]
        rid = text(frames[0])
        if self.expect_router_identity is not None and rid != self.expect_router_identity:
            raise ProtocolError(
                "router identity %r, expected %r" % (rid, self.expect_router_identity)
            )
        msg_id, src_cb, dst_cb, body = parse(frames[2])
        m = {
            "msg_id": msg_id,
            "src_cb": src_cb,
            "dst_cb": dst_cb,
            "body": body,
            "t": self.now(),
            "router_identity": rid,
        }
        self.received.append(m)
        return m

    def collect(self, want, timeout, auto_ack=True):
        """Receives until every predicate in `want` (name -> fn(m)) matched
        a message, or `timeout` elapses. Non-ACK messages are ACKed when
        `auto_ack`. Returns name -> first matching message; raises on
        timeout."""
        found = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(want):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(want) - set(found))
                raise ProtocolError(
                    "timed out after %.1fs waiting for %s; received %s"
                    % (timeout, missing, [msg_json(m) for m in self.received])
                )
            m = self.recv(left)
            if m is None:
                continue
            if auto_ack and m["dst_cb"] != ACK:
                self.ack(m["msg_id"])
            for name, pred in want.items():
                if name not in found and pred(m):
                    found[name] = m
                    break
        return found

    def quiet(self, seconds, auto_ack=True):
        """Receives for `seconds`; returns what arrived."""
        got = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            m = self.recv(left)
            if m is None:
                continue
            if auto_ack and m["dst_cb"] != ACK:
                self.ack(m["msg_id"])
            got.append(m)


EVENT_NAMES = {
    getattr(zmq, name): name[len("EVENT_"):].lower()
    for name in dir(zmq)
    if name.startswith("EVENT_") and name not in ("EVENT_ALL", "EVENT_ALL_V1", "EVENT_ALL_V2")
    and isinstance(getattr(zmq, name), int)
}


def is_ack(msg_id):
    return lambda m: m["dst_cb"] == ACK and m["msg_id"] == msg_id and m["body"] == b""


def is_reply(dst_cb, body):
    return lambda m: m["dst_cb"] == dst_cb and m["src_cb"] == NOOP and m["body"] == body


# ---- dealer scenarios ------------------------------------------------------
# Each returns a dict merged into the JSON result.


def scenario_echo(d, a):
    """ECHO: ACK of our msg_id and the reply `{id}-0-{src_cb}-{body}`,
    which we ACK; then nothing more (our ACK stopped its resends)."""
    # --binary: every byte value, '-' and digits included, must come back.
    body = bytes(range(256)) * 4 if a.binary else a.body.encode()
    mid = d.send(a.src_cb, ECHO, body)
    got = d.collect({"ack": is_ack(mid), "reply": is_reply(a.src_cb, body)}, a.timeout)
    extra = d.quiet(a.quiet) if a.quiet > 0 else []
    return {
        "body_len": len(body),
        "sent_msg_id": mid,
        "ack": msg_json(got["ack"]),
        "reply": msg_json(got["reply"]),
        "after": [msg_json(m) for m in extra],
    }


def scenario_slc(d, a):
    """Messages addressed to NOOP go to the listener's server loop: each
    gets its ACK; with `--slc log` nothing else comes back."""
    bodies = [b.encode() for b in a.bodies] if a.bodies else [a.body.encode()]
    ids = [d.send(NOOP, NOOP, b) for b in bodies]
    want = {"ack%d" % i: is_ack(i) for i in ids}
    d.collect(want, a.timeout)
    extra = d.quiet(a.quiet) if a.quiet > 0 else []
    return {"sent_msg_ids": ids, "after": [msg_json(m) for m in extra]}


def scenario_slc_reply(d, a):
    """With `--slc echo`: `{id}-{src_cb}-0-{body}` comes back as
    `{rid}-0-{src_cb}-{body}`; we ACK it."""
    body = a.body.encode()
    mid = d.send(a.src_cb, NOOP, body)
    got = d.collect({"ack": is_ack(mid), "reply": is_reply(a.src_cb, body)}, a.timeout)
    extra = d.quiet(a.quiet) if a.quiet > 0 else []
    return {
        "sent_msg_id": mid,
        "ack": msg_json(got["ack"]),
        "reply": msg_json(got["reply"]),
        "after": [msg_json(m) for m in extra],
    }


def scenario_duplicate(d, a):
    """The same msg_id twice: ACKed both times. Then a later message as a
    barrier: once the serve prints it, the duplicate would have been printed
    before it (the server loop runs in order)."""
    body = a.body.encode()
    first = d.send(NOOP, NOOP, body)
    d.collect({"ack": is_ack(first)}, a.timeout)
    d.send(NOOP, NOOP, body, msg_id=first)
    d.collect({"ack again": is_ack(first)}, a.timeout)
    barrier = d.send(NOOP, NOOP, b"barrier")
    d.collect({"barrier ack": is_ack(barrier)}, a.timeout)
    acks = [m for m in d.received if m["dst_cb"] == ACK and m["msg_id"] == first]
    return {"dup_msg_id": first, "acks_of_dup": len(acks), "barrier_msg_id": barrier}


def scenario_resend(d, a):
    """Do not ACK a reply: it must come again with the same msg_id and body
    about one resend interval later. Then ACK it: no further copies."""
    body = a.body.encode()
    mid = d.send(a.src_cb, a.dst, body)
    want = {"ack": is_ack(mid), "reply": is_reply(a.src_cb, body)}
    got = d.collect(want, a.timeout, auto_ack=False)
    first = got["reply"]
    again = d.collect(
        {
            "resent": lambda m: m is not first
            and m["msg_id"] == first["msg_id"]
            and is_reply(a.src_cb, body)(m)
        },
        a.timeout,
        auto_ack=False,
    )["resent"]
    d.ack(first["msg_id"])
    acked_at = d.now()
    extra = d.quiet(a.quiet, auto_ack=False) if a.quiet > 0 else []
    copies = [m for m in d.received if m["msg_id"] == first["msg_id"] and m["dst_cb"] == a.src_cb]
    return {
        "reply": msg_json(first),
        "resent": msg_json(again),
        "resend_after": round(again["t"] - first["t"], 4),
        "copies_before_ack": len([m for m in copies if m["t"] <= acked_at]),
        "copies_after_ack": len([m for m in copies if m["t"] > acked_at]),
        "after": [msg_json(m) for m in extra],
    }


def scenario_burst(d, a):
    """Many ECHOs in flight at once: every one ACKed and answered once
    (ACKed by us), with the reply ids 0..n-1."""
    n = a.count
    bodies = [("burst-%d" % i).encode() for i in range(n)]
    ids = [d.send(a.src_cb, ECHO, b) for b in bodies]
    want = {}
    for i, b in zip(ids, bodies):
        want["ack%d" % i] = is_ack(i)
        want["reply%d" % i] = is_reply(a.src_cb, b)
    got = d.collect(want, a.timeout)
    reply_ids = sorted(got["reply%d" % i]["msg_id"] for i in ids)
    return {"count": n, "reply_ids": reply_ids}


def scenario_malformed(d, a):
    """Garbage must be dropped (never ACKed, never delivered) without
    disturbing the session: a valid message afterwards is ACKed."""
    bad = [
        b"",
        b"not a payload",
        b"1-2",
        b"1--3-x",
        b"x-0-0-body",
        b"18446744073709551616-0-0-overflow",
    ]
    for p in bad:
        d.send_raw(p)
    # Wrong frame shapes too: no delimiter, and an extra frame.
    d.sock.send_multipart([b"0-0-0-no delimiter"])
    d.sock.send_multipart([b"", b"0-0-0-x", b"extra"])
    mid = d.send(NOOP, NOOP, a.body.encode())
    d.collect({"ack": is_ack(mid)}, a.timeout)
    acks = [m["msg_id"] for m in d.received if m["dst_cb"] == ACK]
    return {"valid_msg_id": mid, "acked_ids": acks}


def scenario_msgpack(d, a):
    """A MessagePack request (the --body JSON, packed) to the server loop;
    the reply is unpacked and returned as `reply_value`."""
    import msgpack

    body = msgpack.packb(json.loads(a.body), use_bin_type=True)
    mid = d.send(a.src_cb, a.dst, body)
    got = d.collect(
        {"ack": is_ack(mid), "reply": lambda m: m["dst_cb"] == a.src_cb and m["src_cb"] == NOOP},
        a.timeout,
    )
    value = msgpack.unpackb(got["reply"]["body"], raw=False)
    return {"sent_msg_id": mid, "reply_msg_id": got["reply"]["msg_id"], "reply_value": value}


def scenario_steady(d, a):
    """ECHO requests at a steady rate for `--duration` seconds, one every
    `--interval` seconds (slower than libzmq's HEARTBEAT_TIMEOUT when the
    caller wants the connection to live on PINGs and PONGs alone between
    them). Each request's ACK and reply must come before the next request
    is due; late ones are still awaited up to `--timeout` at the end and
    reported. With `--monitor`, the socket monitor's events are counted.
    Never raises for missing replies: the caller judges the counts."""
    start = time.monotonic()
    sent = {}  # body -> (msg_id, send time)
    replies = {}  # body -> latency
    acks = set()
    late = []
    i = 0

    def take(m):
        if m["dst_cb"] == ACK:
            acks.add(m["msg_id"])
        elif m["dst_cb"] == a.src_cb and m["body"] in sent:
            body = m["body"]
            if body not in replies:
                replies[body] = round(time.monotonic() - sent[body][1], 4)

    def wait_until(deadline, body=None):
        while True:
            d.poll_events()
            if body is not None and body in replies and sent[body][0] in acks:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            m = d.recv(min(left, 0.05))
            if m is None:
                continue
            if m["dst_cb"] != ACK:
                d.ack(m["msg_id"])
            take(m)

    while True:
        due = start + i * a.interval
        if due >= start + a.duration:
            break
        wait_until(due)
        body = b"steady-%d" % i
        sent[body] = (d.send(a.src_cb, ECHO, body), time.monotonic())
        if not wait_until(start + (i + 1) * a.interval, body):
            late.append(i)
        i += 1
    # The connection must live through the whole duration.
    wait_until(start + a.duration)
    end = time.monotonic() + a.timeout

    def done():
        return len(replies) == len(sent) and all(mid in acks for mid, _ in sent.values())

    while not done() and time.monotonic() < end:
        wait_until(min(end, time.monotonic() + 0.05))
    d.poll_events()
    counts = {}
    for _, name in d.events:
        counts[name] = counts.get(name, 0) + 1
    missing = sorted(int(b.split(b"-")[1]) for b in sent if b not in replies)
    unacked = sorted(mid for mid, _ in sent.values() if mid not in acks)
    return {
        "requests": len(sent),
        "replies": len(replies),
        "missing_replies": missing,
        "missing_acks": unacked,
        "late": late,
        "max_latency": max(replies.values(), default=None),
        "events": counts,
        "event_log": d.events,
        "elapsed": round(time.monotonic() - start, 3),
    }


SCENARIOS = {
    "echo": scenario_echo,
    "slc": scenario_slc,
    "slc-reply": scenario_slc_reply,
    "duplicate": scenario_duplicate,
    "resend": scenario_resend,
    "burst": scenario_burst,
    "malformed": scenario_malformed,
    "msgpack": scenario_msgpack,
    "steady": scenario_steady,
}


def run_dealer(a):
    ctx = zmq.Context()
    options = [
        (opt, value)
        for opt, value in (
            (zmq.HEARTBEAT_IVL, a.heartbeat_ivl),
            (zmq.HEARTBEAT_TIMEOUT, a.heartbeat_timeout),
            (zmq.HEARTBEAT_TTL, a.heartbeat_ttl),
        )
        if value is not None
    ]
    d = Dealer(ctx, a.endpoint, a.identity, a.expect_router_identity, options, a.monitor)
    d.noisepage_acks = a.noisepage_acks
    out = {"scenario": a.scenario, "identity": a.identity, "endpoint": a.endpoint}
    status = 0
    try:
        out.update(SCENARIOS[a.scenario](d, a))
        out["ok"] = True
    except ProtocolError as e:
        out["ok"] = False
        out["error"] = str(e)
        status = 1
    out["received"] = [msg_json(m) for m in d.received]
    out["acks_sent"] = d.acks_sent
    if d.monitor is not None:
        d.sock.disable_monitor()
        d.monitor.close(0)
    d.sock.close(0)
    ctx.term()
    print(json.dumps(out), flush=True)
    return status


# ---- router ----------------------------------------------------------------


def run_router(a):
    """A protocol-speaking ROUTER for the Rust DEALER side."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(a.bind)
    endpoint = text(sock.getsockopt(zmq.LAST_ENDPOINT))
    print(json.dumps({"listening": endpoint}), flush=True)

    ident = a.identity.encode()
    next_id = {}  # peer -> our next msg_id towards it
    seen = {}  # peer -> msg_ids received
    counts = {"received": 0, "acks_sent": 0, "acks_received": 0, "duplicates": 0}

    def emit(obj):
        print(json.dumps(obj), flush=True)

    def send_to(peer, payload):
        if a.two_frame_replies:
            sock.send_multipart([peer, b"", payload])
        else:
            sock.send_multipart([peer, ident, b"", payload])

    def reply(peer, dst_cb, body):
        mid = next_id.get(peer, 0)
        next_id[peer] = mid + 1
        send_to(peer, encode(mid, NOOP, dst_cb, body))
        return mid

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    stdin_fd = sys.stdin.fileno()
    poller.register(stdin_fd, zmq.POLLIN)
    deadline = time.monotonic() + a.lifetime
    t0 = time.monotonic()
    reason = "lifetime"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        events = dict(poller.poll(int(min(left, 0.5) * 1000)))
        if stdin_fd in events:
            if not os.read(stdin_fd, 4096):
                reason = "stdin closed"
                break
        if sock not in events:
            continue
        frames = sock.recv_multipart()
        ev = {"t": round(time.monotonic() - t0, 4), "frames": len(frames)}
        if len(frames) != 3 or frames[1] != b"":
            ev["error"] = "bad frame shape %r" % [f[:40] for f in frames]
            emit(ev)
            continue
        peer, payload = frames[0], frames[2]
        ev["peer"] = text(peer)
        try:
            msg_id, src_cb, dst_cb, body = parse(payload)
        except ProtocolError as e:
            ev["error"] = str(e)
            emit(ev)
            continue
        counts["received"] += 1
        ev.update({"msg_id": msg_id, "src_cb": src_cb, "dst_cb": dst_cb, "body": text(body)})
        if dst_cb == ACK:
            counts["acks_received"] += 1
            ev["kind"] = "ack"
            emit(ev)
            continue
        if not a.no_ack:
            send_to(peer, encode(msg_id, NOOP, ACK, b""))
            counts["acks_sent"] += 1
        peer_seen = seen.setdefault(peer, set())
        if msg_id in peer_seen:
            counts["duplicates"] += 1
            ev["kind"] = "duplicate"
            emit(ev)
            continue
        peer_seen.add(msg_id)
        if dst_cb == ECHO:
            ev["kind"] = "echo"
            ev["reply_msg_id"] = reply(peer, src_cb, body)
        elif dst_cb == NOOP:
            ev["kind"] = "slc"
            if src_cb != NOOP and not a.no_reply:
                ev["reply_msg_id"] = reply(peer, src_cb, b"py:" + body)
        else:
            ev["kind"] = "callback"
        emit(ev)
    emit({"summary": counts, "reason": reason})
    sock.close(0)
    ctx.term()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)

    d = sub.add_parser("dealer", help="connect and run one scenario")
    d.add_argument("endpoint")
    d.add_argument("--identity", default="py-dealer")
    d.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    d.add_argument("--body", default="hello from python")
    d.add_argument("--bodies", nargs="*", help="several bodies (scenario slc)")
    d.add_argument("--binary", action="store_true", help="echo every byte value (scenario echo)")
    d.add_argument("--src-cb", type=int, default=7, help="our callback for replies")
    d.add_argument("--dst", type=int, default=ECHO, help="destination (scenario resend)")
    d.add_argument("--count", type=int, default=100, help="messages (scenario burst)")
    d.add_argument("--timeout", type=float, default=5.0, help="bound on each wait, seconds")
    d.add_argument("--quiet", type=float, default=0.0,
                   help="afterwards, listen this long and report what else arrives")
    d.add_argument("--expect-router-identity", default=None)
    d.add_argument("--duration", type=float, default=10.0, help="seconds (scenario steady)")
    d.add_argument("--interval", type=float, default=0.5,
                   help="seconds between requests (scenario steady)")
    d.add_argument("--heartbeat-ivl", type=int, default=None, help="ZMQ_HEARTBEAT_IVL, ms")
    d.add_argument("--heartbeat-timeout", type=int, default=None,
                   help="ZMQ_HEARTBEAT_TIMEOUT, ms")
    d.add_argument("--heartbeat-ttl", type=int, default=None, help="ZMQ_HEARTBEAT_TTL, ms")
    d.add_argument("--noisepage-acks", action="store_true",
                   help="ACK as NoisePage's DEALER does: [remote_id, own_id, '', payload]")
    d.add_argument("--monitor", action="store_true",
                   help="count the socket monitor's events (scenario steady)")

    r = sub.add_parser("router", help="bind a protocol-speaking ROUTER")
    r.add_argument("--bind", default="tcp://127.0.0.1:*")
    r.add_argument("--identity", default="py-router")
    r.add_argument("--lifetime", type=float, default=30.0, help="seconds before exiting")
    r.add_argument("--no-ack", action="store_true", help="never ACK (to observe resends)")
    r.add_argument("--no-reply", action="store_true", help="ACK server-loop messages only")
    r.add_argument("--two-frame-replies", action="store_true",
                   help="send [peer, '', payload], without our identity frame")

    a = p.parse_args()
    return run_dealer(a) if a.role == "dealer" else run_router(a)


if __name__ == "__main__":
    sys.exit(main())
