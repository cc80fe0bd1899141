#!/usr/bin/env python3
"""CPU time per round trip, by thread, of one client of roundtrip.py and of
the server it runs against: what design/PERFORMANCE.md's "where the time
goes" tables report.

    messenger serve --bind tcp://127.0.0.1:5996 --slc echo --quiet &
    python benches/python/cpu.py --server-pid $! --endpoint tcp://127.0.0.1:5996 --kind aio
    python benches/python/cpu.py --server-pid $! --endpoint tcp://127.0.0.1:5996 --kind pyzmq

Run it with the interpreter roundtrip.py needs (the package and pyzmq).
It starts ``roundtrip.py --one KIND`` for 6 s at 1,000 in flight, 64 B,
reads every thread's user + system time (``/proc/PID/task/*/stat``) 2.5 s
in and 2 s later, and divides by the round trips of those 2 s (the
client's measured rate times 2 s). Threads are summed by name; the
client's main thread is "python". Not side by side: alternate the kinds
and run each more than once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def threads(pid: int) -> dict:
    """Thread id -> (name, user + system ticks) of process `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--kind", choices=["aio", "pyzmq"], required=True)
    p.add_argument("--in-flight", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    tick = os.sysconf("SC_CLK_TCK")
    client = subprocess.Popen(
        [sys.executable, str(HERE / "roundtrip.py"), "--one", args.kind, "--endpoint", args.endpoint,
         "--in-flight", str(args.in_flight), "--size", str(args.size), "--seconds", "6"],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(2.5)
    c0, s0 = threads(client.pid), threads(args.server_pid)
    time.sleep(2.0)
    c1, s1 = threads(client.pid), threads(args.server_pid)
    out, _ = client.communicate(timeout=60)
    rate = json.loads(out.strip().splitlines()[-1])["round_trips_per_s"]
    round_trips = rate * 2.0
    by_name: dict = {}
    for tid, (name, ticks) in c1.items():
        if tid in c0:
            key = "python" if name.startswith("python") else name
            by_name[key] = by_name.get(key, 0) + ticks - c0[tid][1]
    server = sum(ticks - s0[tid][1] for tid, (_, ticks) in s1.items() if tid in s0)
    per_rt = lambda ticks: f"{ticks / tick / round_trips * 1e6:.2f} µs"
    print(f"{args.kind}: {rate:.0f} round trips/s; client "
          + ", ".join(f"{k} {per_rt(v)}" for k, v in by_name.items())
          + f"; server {per_rt(server)}")


if __name__ == "__main__":
    main()
