#!/usr/bin/env python3
"""A small model server in the manner of NoisePage's, for testing the
model-server manager (examples/model_server_manager.rs).

Usage: model_server.py [--duplicate-connected N] [--die-before-reply]
                       [--hang-on-print] [--never-reply] IPC_PATH | ENDPOINT

It connects a DEALER with identity b"model" to ipc://IPC_PATH (the last
argument), or to ENDPOINT when the last argument is one (tcp://HOST:PORT,
for a manager on another host), and speaks the messenger protocol with
JSON bodies:

- payloads are ``{msg_id}-{src_cb}-{dst_cb}-{body}``; it receives frames
  ``[router_identity, "", payload]`` and sends ``["", payload]``;
- first it sends CONNECTED, ``{"action": 1, "result": "", "success": true,
  "err": ""}``, to callback 0;
- it resends every message it sent, once per poll cycle (100 ms), until an
  ACK (``{msg_id}-0-2-``) for it arrives; it never ACKs what it receives and
  does not deduplicate;
- ``{"cmd": "PRINT", "data": {"message": TEXT}}`` is answered with
  ``{"action": 0, "result": "MODEL_REPLY_" + TEXT, "success": true,
  "err": ""}`` addressed to the command's src_cb;
- ``{"cmd": "TRAIN", "data": {"methods": [...], "seq_files": ...,
  "save_path": PATH}}`` (NoisePage's arguments) trains nothing and is
  answered ``{"action": 0, "result": "", "success": true, "err": ""}``;
- ``{"cmd": "INFER", "data": {"features": [[x, ...], ...], ...}}`` is
  answered with one prediction per row of features, the row's sum:
  ``{"action": 0, "result": [sum, ...], "success": true, "err": ""}``
  (``"success": false, "err": "FAIL_DATA_FORMAT_ERROR"`` when the features
  are not rows of numbers);
- ``{"cmd": "QUIT", "data": {}}`` makes it exit (status 0) without a reply.

Test modes:

--duplicate-connected N  send N extra copies of CONNECTED (same msg_id) at
                         once, as if the ACKs of earlier sends had been lost
--die-before-reply       exit with status 3 on the first command it would
                         answer (PRINT, TRAIN or INFER), unanswered
--hang-on-print          never answer PRINT (keep running until killed)
--never-reply            never answer any command (keep running until killed)

It exits with status 4 after 60 s whatever happens, so a test that fails to
kill it does not leave it running for long.
"""

import json
import os
import sys
import time

import zmq

POLL_MS = 100
LIFETIME_S = 60
NOOP, ACK = 0, 2


def log(*args):
    print("model_server.py:", *args, file=sys.stderr, flush=True)


def parse(payload):
    """Splits a payload into (msg_id, src_cb, dst_cb, body), or None."""
    parts = payload.split(b"-", 3)
    if len(parts) != 4:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2]), parts[3]
    except ValueError:
        return None


def infer(data):
    """INFER's (result, err): each row of features' sum, the toy model."""
    try:
        rows = data["features"]
        return [float(sum(float(x) for x in row)) for row in rows], ""
    except (KeyError, TypeError, ValueError):
        return [], "FAIL_DATA_FORMAT_ERROR"


def main(argv):
    if not argv or argv[-1].startswith("--"):
        print(__doc__, file=sys.stderr)
        return 2
    target = argv[-1]
    endpoint = target if "://" in target else "ipc://" + target
    flags = argv[:-1]
    duplicates = 0
    if "--duplicate-connected" in flags:
        duplicates = int(flags[flags.index("--duplicate-connected") + 1])
    die_before_reply = "--die-before-reply" in flags
    hang_on_print = "--hang-on-print" in flags
    never_reply = "--never-reply" in flags

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"model")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    next_id = 0
    unacked = {}  # msg_id -> [payload, last sent]

    def send(dst_cb, obj):
        nonlocal next_id
        payload = b"%d-%d-%d-" % (next_id, NOOP, dst_cb) + json.dumps(obj).encode()
        unacked[next_id] = [payload, time.monotonic()]
        next_id += 1
        sock.send_multipart([b"", payload])
        return payload

    connected = send(NOOP, {"action": 1, "result": "", "success": True, "err": ""})
    for _ in range(duplicates):
        sock.send_multipart([b"", connected])

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    give_up = time.monotonic() + LIFETIME_S
    status = 0
    while True:
        if time.monotonic() > give_up:
            log("lived too long; exiting")
            status = 4
            break
        if poller.poll(POLL_MS):
            frames = sock.recv_multipart()
            parsed = parse(frames[-1]) if len(frames) >= 2 else None
            if parsed is None:
                log("ignoring malformed message", frames)
            else:
                msg_id, src_cb, dst_cb, body = parsed
                if dst_cb == ACK:
                    unacked.pop(msg_id, None)
                else:
                    try:
                        cmd = json.loads(body)
                        name = cmd["cmd"]
                        data = cmd["data"]
                    except (ValueError, KeyError, TypeError):
                        log("ignoring undecodable command", body)
                        name = None
                    if name == "QUIT":
                        break
                    answer = None  # (result, err) of a command answered
                    if name == "PRINT":
                        text = data.get("message", "") if isinstance(data, dict) else ""
                        answer = ("MODEL_REPLY_" + str(text), "")
                    elif name == "TRAIN":
                        answer = ("", "")
                    elif name == "INFER":
                        answer = infer(data)
                    if answer is not None and die_before_reply:
                        log("dying before answering", name)
                        os._exit(3)
                    if name == "PRINT" and hang_on_print:
                        answer = None
                    if answer is not None and not never_reply:
                        result, err = answer
                        send(src_cb, {"action": 0, "result": result,
                                      "success": not err, "err": err})
        # Resend what is still unACKed, once per poll cycle.
        now = time.monotonic()
        for entry in unacked.values():
            if now - entry[1] >= POLL_MS / 1000:
                sock.send_multipart([b"", entry[0]])
                entry[1] = now
    sock.close(0)
    ctx.term()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
