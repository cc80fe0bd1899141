#!/usr/bin/env python3
"""Before and after in one run, for the comparison harness: two builds of
the roundtrip bench binary alternated, each run's figures read as ratios to
libzmq *in that run*.

    python3 benches/harness_ab.py OLD NEW [--runs 4] -- [roundtrip args]

OLD and NEW are paths to built `roundtrip` bench binaries, each beside the
`messenger` command of its own build (`target/release/deps/roundtrip-HASH`
runs `target/release/messenger serve`; copy both into a `release/deps`,
`release/` layout of their own to keep a build). Each run passes the
roundtrip args plus `--json FILE`; runs alternate OLD, NEW, NEW, OLD, ...
For every (transport, size, in flight, implementation) cell the report
gives, per build, the median over its runs of: round trips/s against
libzmq's, p50 against libzmq's, and client CPU per round trip against
libzmq's client (all from the same round, so a slow patch of the machine
hits both sides of each ratio).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(binary, args):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        subprocess.run(
            [binary, *args, "--json", path],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=3600,
        )
        with open(path) as f:
            report = json.load(f)
    finally:
        os.unlink(path)
    out = {}
    for cell in report["compare"]:
        key = (cell["transport"], cell["size"], cell["in_flight"])
        cpu = cell["median_client_cpu_us"]
        base_cpu = cpu.get("libzmq")
        for name, r in cell["rps_vs_libzmq"].items():
            out[key + (name,)] = {
                "rps": r,
                "p50": cell["p50_vs_libzmq"].get(name, float("nan")),
                "cpu": (cpu.get(name, float("nan")) / base_cpu) if base_cpu else float("nan"),
            }
    return out


def main():
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--runs", type=int, default=4, help="runs of each build")
    args = p.parse_args(argv)

    got = {"old": [], "new": []}
    for i in range(args.runs):
        order = [("old", args.old), ("new", args.new)]
        if i % 2:
            order.reverse()
        for name, binary in order:
            got[name].append(run(binary, bench_args))
        print(f"run {i + 1}/{args.runs} done", file=sys.stderr)

    print(f"roundtrip {' '.join(bench_args)}: {args.runs} runs of each, alternating")
    print(f"old: {args.old}\nnew: {args.new}")
    print("ratios to libzmq in the same round; median over runs (old -> new)")
    keys = sorted(set.intersection(*(set(r) for r in got["old"] + got["new"])))
    for key in keys:
        if key[3] == "libzmq":
            continue

        def med(side, field):
            return statistics.median(r[key][field] for r in got[side])

        t, size, n, name = key
        print(
            f"{t} {size:>5} B x{n:<5} {name:<22}"
            f" rt/s {med('old', 'rps'):.2f}x -> {med('new', 'rps'):.2f}x"
            f"   p50 {med('old', 'p50'):.2f}x -> {med('new', 'p50'):.2f}x"
            f"   client CPU {med('old', 'cpu'):.2f}x -> {med('new', 'cpu'):.2f}x"
        )


if __name__ == "__main__":
    main()
