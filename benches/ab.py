#!/usr/bin/env python3
"""Before and after in one run: `messenger bench` of two builds, alternated.

    python3 benches/ab.py OLD NEW [--rounds 5] -- [messenger bench args]

OLD and NEW are paths to `messenger` binaries (e.g. one built from the
commit before a change into another target directory, and
target/release/messenger). Each round runs `OLD bench ... --json` and
`NEW bench ... --json` (the order alternating per round, so neither always
runs second), and the report gives, per (transport, size, in flight) cell,
each side's median round trips/s and p50, and the median of the per-round
ratios NEW/OLD: the machine is shared and noisy, and a ratio taken within
one round cancels most of what the other tenants do.
"""

import argparse
import json
import statistics
import subprocess
import sys


def run(binary, bench_args):
    out = subprocess.run(
        [binary, "bench", *bench_args, "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    ).stdout
    report = json.loads(out)
    return {
        (r["transport"], r["size"], r["in_flight"]): r for r in report["results"]
    }


def main():
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    rounds = []
    for i in range(args.rounds):
        order = [("old", args.old), ("new", args.new)]
        if i % 2:
            order.reverse()
        got = {name: run(binary, bench_args) for name, binary in order}
        rounds.append(got)
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)

    cells = sorted(rounds[0]["old"].keys() & rounds[0]["new"].keys())
    print(f"messenger bench {' '.join(bench_args)}: {args.rounds} alternating rounds")
    print(f"old: {args.old}\nnew: {args.new}")
    header = f"{'transport':<9} {'size':>7} {'in flight':>9} {'old rt/s':>10} {'new rt/s':>10} {'new/old rt/s':>12} {'old p50 µs':>10} {'new p50 µs':>10} {'new/old p50':>11}"
    print(header)
    for cell in cells:
        def med(side, key):
            return statistics.median(r[side][cell][key] for r in rounds)

        def ratio(key):
            return statistics.median(
                r["new"][cell][key] / r["old"][cell][key]
                for r in rounds
                if r["old"][cell][key] > 0
            )

        t, size, n = cell
        print(
            f"{t:<9} {size:>7} {n:>9} {med('old', 'round_trips_per_s'):>10.0f} "
            f"{med('new', 'round_trips_per_s'):>10.0f} {ratio('round_trips_per_s'):>11.2f}x "
            f"{med('old', 'p50_us'):>10.1f} {med('new', 'p50_us'):>10.1f} {ratio('p50_us'):>10.2f}x"
        )


if __name__ == "__main__":
    main()
