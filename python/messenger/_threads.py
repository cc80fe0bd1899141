"""The package's own threads, where blocking server loops and message
callbacks run, one call at a time (``crates/python/src/threads.rs``).

Each is a daemon thread whose loop is this Python code: it takes the next
call from its queue (waiting there with the GIL released), makes the call
itself, and reports how it went. So a call still running when the
interpreter exits has no frame of the extension beneath it, and the thread
ends as any daemon thread does.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_log = logging.getLogger("messenger")


def start(name: str, queue: Any) -> None:
    """Starts a thread called ``name`` that runs the calls of ``queue``
    until it is let go."""
    threading.Thread(target=_run, args=(queue,), name=name, daemon=True).start()


def _run(queue: Any) -> None:
    while True:
        # Ends the last call (what waits on it is told), takes the next.
        call = queue.next()
        if call is None:
            return
        fn, args = call
        call = None
        try:
            fn(*args)
        except BaseException as e:  # the application's bug: reported, and on
            _log.error("%s", queue.what(), exc_info=e)
            queue.raised()  # counted once logged: a count seen means a record
            del e
        # Nothing of the call is kept while the thread waits.
        fn = args = None
