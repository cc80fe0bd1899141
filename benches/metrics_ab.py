#!/usr/bin/env python3
"""The cost of metrics: `messenger serve` with --metrics-addr against the
same binary without, side by side in one run.

    python3 benches/metrics_ab.py [--binary target/release/messenger]
        [--rounds 7] [--scrape-every 1.0] -- [messenger bench args]

Two servers run at once (`serve --slc echo --quiet` on tcp and ipc), one
with `--metrics-addr 127.0.0.1:0` and scraped every --scrape-every seconds
(a Prometheus scraping far more often than its usual 15 s) while the
bench runs. Each round runs `messenger bench --connect` against the
plain server and the one with metrics, in alternating order, for each
endpoint; the report gives, per (transport, size, in flight) cell, each
side's median round trips/s and p50 and the median of the per-round
ratios on/off (a ratio taken within one round cancels most of what the
machine's other tenants do). Default bench arguments: 64 B, 1000 in
flight, 1 s per cell.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def start_serve(binary, ipc, metrics):
    cmd = [binary, "serve", "--bind", "tcp://127.0.0.1:0", "--bind", f"ipc://{ipc}",
           "--slc", "echo", "--quiet"]
    if metrics:
        cmd += ["--metrics-addr", "127.0.0.1:0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoints, url = [], None
    while len(endpoints) < 2 or (metrics and url is None):
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"serve exited: {cmd}")
        v = json.loads(line)
        if "listening" in v:
            endpoints.append(v["listening"])
        if "metrics" in v:
            url = v["metrics"]
    return p, endpoints, url


def scraper(url, every, stop, counts):
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
            counts[0] += 1
        except OSError as e:
            print(f"scrape failed: {e}", file=sys.stderr)
        stop.wait(every)


def bench(binary, endpoint, bench_args):
    out = subprocess.run([binary, "bench", "--connect", endpoint, *bench_args, "--json"],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    return {(r["transport"], r["size"], r["in_flight"]): r for r in json.loads(out)["results"]}


def main():
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1:]
    if not bench_args:
        bench_args = ["--sizes", "64", "--in-flight", "1000", "--duration", "1s"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/messenger")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scrape-every", type=float, default=1.0)
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="metrics-ab-")
    off, off_eps, _ = start_serve(args.binary, os.path.join(tmp, "off.sock"), False)
    on, on_eps, url = start_serve(args.binary, os.path.join(tmp, "on.sock"), True)
    stop, scrapes = threading.Event(), [0]
    t = threading.Thread(target=scraper, args=(url, args.scrape_every, stop, scrapes), daemon=True)
    t.start()
    rounds = []
    try:
        for i in range(args.rounds):
            got = {"off": {}, "on": {}}
            order = [("off", off_eps), ("on", on_eps)]
            if i % 2:
                order.reverse()
            for k in range(2):  # tcp, ipc
                for side, eps in order:
                    got[side].update(bench(args.binary, eps[k], bench_args))
            rounds.append(got)
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        stop.set()
        for p in (off, on):
            p.terminate()
            p.wait(timeout=10)

    cells = sorted(rounds[0]["off"].keys())
    print(f"messenger serve --metrics-addr (scraped every {args.scrape_every} s, "
          f"{scrapes[0]} scrapes) vs without; messenger bench --connect "
          f"{' '.join(bench_args)}; {args.rounds} alternating rounds")
    print(f"{'transport':<9} {'size':>5} {'in flight':>9} {'off rt/s':>10} {'on rt/s':>10} "
          f"{'on/off rt/s':>11} {'off p50 µs':>10} {'on p50 µs':>10} {'on/off p50':>10}")
    for cell in cells:
        def med(side, key):
            return statistics.median(r[side][cell][key] for r in rounds)

        def ratios(key):
            return [r["on"][cell][key] / r["off"][cell][key] for r in rounds if r["off"][cell][key] > 0]

        rt, p50 = ratios("round_trips_per_s"), ratios("p50_us")
        tr, size, n = cell
        print(f"{tr:<9} {size:>5} {n:>9} {med('off', 'round_trips_per_s'):>10.0f} "
              f"{med('on', 'round_trips_per_s'):>10.0f} {statistics.median(rt):>10.3f}x "
              f"{med('off', 'p50_us'):>10.1f} {med('on', 'p50_us'):>10.1f} "
              f"{statistics.median(p50):>9.3f}x   (rt/s ratios {min(rt):.3f}-{max(rt):.3f})")


if __name__ == "__main__":
    main()
