#!/usr/bin/env python3
"""NoisePage's model-server loop, written on the `messenger` package.

Usage: model_server.py [--die-before-reply] [--hang-on-print] IPC_PATH | ENDPOINT

The model server is the process NoisePage's ModelServerManager starts and
drives. It dials the manager (ipc://IPC_PATH, or ENDPOINT when the last
argument is one, e.g. tcp://HOST:PORT) with the routing id ``model``, says
CONNECTED to the manager's server loop, and then serves the manager's
commands (JSON bodies) in its own server loop, on the same connection:

- ``{"cmd": "TRAIN", "data": {"methods": [...], "seq_files": ...,
  "save_path": PATH}}`` (NoisePage's arguments) trains nothing and is
  answered ``{"action": 0, "result": "", "success": true, "err": ""}``;
- ``{"cmd": "INFER", "data": {"features": [[x, ...], ...], ...}}`` is
  answered with one prediction per row of features, the row's sum (a toy
  model): ``{"action": 0, "result": [sum, ...], "success": true, "err": ""}``
  (``"success": false, "err": "FAIL_DATA_FORMAT_ERROR"`` when the features
  are not rows of numbers);
- ``{"cmd": "PRINT", "data": {"message": TEXT}}`` is answered with
  ``{"action": 0, "result": "MODEL_REPLY_" + TEXT, "success": true, "err": ""}``;
- ``{"cmd": "QUIT", "data": {}}`` makes it close its messenger and exit 0;
- any other command is answered with ``success: false`` and the reason.

Unlike NoisePage's Python model server (and tests/py/model_server.py, its
pyzmq stand-in), this one is a full peer of the protocol: the package ACKs
what it receives, drops duplicates and resends what is not ACKed, so the
manager may resend too. The Rust manager drives either:

    cargo run --example model_server_manager -- \\
        --model-server "python3 examples/python/model_server.py"

Test modes (as the stand-in's): --die-before-reply exits with status 3 on
the first command it would answer (PRINT, TRAIN or INFER), unanswered; --hang-on-print never answers PRINT. It exits
with status 4 after 60 s whatever happens, so a manager that fails to stop
it does not leave it running.
"""

import json
import os
import sys
import threading

import messenger

LIFETIME_S = 60
MODEL_IDENTITY = b"model"
ACTION_NOOP, ACTION_CONNECTED = 0, 1


def log(*args):
    print("model_server.py:", *args, file=sys.stderr, flush=True)


def reply(result, success=True, err=""):
    return json.dumps(
        {"action": ACTION_NOOP, "result": result, "success": success, "err": err}
    ).encode()


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
    flags = set(argv[:-1])
    die_before_reply = "--die-before-reply" in flags
    hang_on_print = "--hang-on-print" in flags
    quit_requested = threading.Event()

    def serve(incoming, responder):
        """The model server's loop: one command at a time, in order."""
        try:
            command = json.loads(incoming.body)
            name, data = command["cmd"], command["data"]
        except (ValueError, KeyError, TypeError):
            log("undecodable command", incoming.body[:80])
            if responder.wants_reply:
                responder.reply(reply("", False, "undecodable command"))
            return
        if name == "QUIT":
            quit_requested.set()
            return
        if name in ("PRINT", "TRAIN", "INFER") and die_before_reply:
            log("dying before answering", name)
            os._exit(3)
        if name == "PRINT":
            if not hang_on_print:
                text = data.get("message", "") if isinstance(data, dict) else ""
                responder.reply(reply("MODEL_REPLY_" + str(text)))
        elif name == "TRAIN":
            responder.reply(reply(""))
        elif name == "INFER":
            result, err = infer(data)
            responder.reply(reply(result, not err, err))
        elif responder.wants_reply:
            responder.reply(reply("", False, f"unknown command {name!r}"))

    # The manager does not resend (NoisePage's model server never ACKs);
    # ours does, so the CONNECTED below survives a lost packet.
    with messenger.Messenger(identity=MODEL_IDENTITY) as m:
        conn = m.make_connection(endpoint, server_loop=serve)
        connected = {"action": ACTION_CONNECTED, "result": "", "success": True, "err": ""}
        m.send_confirmed(conn, messenger.NOOP, json.dumps(connected).encode())
        if not quit_requested.wait(LIFETIME_S):
            log("lived too long; exiting")
            return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
