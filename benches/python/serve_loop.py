#!/usr/bin/env python3
"""A blocking ``messenger.Messenger`` whose server loop replies with each
body, for ``messenger bench --connect ... --via slc`` to drive: what the
package's server-loop thread costs per message.

    python benches/python/serve_loop.py [SECONDS]    # prints its endpoint

Run it with an interpreter that has the package (a release build), then
``target/release/messenger bench --connect ENDPOINT --via slc --in-flight
100 --sizes 64 --duration 2s``. Not a test: nothing here is timed by
``cargo test``.
"""

import sys
import time

import messenger


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 12.0
    with messenger.Messenger() as m:
        endpoint = m.listen_for_connection("tcp://127.0.0.1:0", lambda i, r: r.reply(i.body))
        print(endpoint, flush=True)
        time.sleep(seconds)


if __name__ == "__main__":
    main()
