#!/usr/bin/env python3
"""The Python package against its anchors, side by side in one run.

    python benches/python/roundtrip.py [--rounds 5] [--seconds 2] [--transport tcp]
        [--messenger target/release/messenger] [--in-flight 1000] [--size 64]

Run it with an interpreter that has the package (``pip install ./python``,
a release build) and pyzmq. It starts one ``messenger serve --slc echo
--quiet`` and measures, each in a fresh process, against that server:

``aio``       the asyncio API, N requests in flight (closed loop: N
              coroutines, each awaiting ``request`` and sending the next);
``pyzmq``     the anchor: a hand-rolled asyncio client on pyzmq that does
              what the protocol needs (``zmq_client.py``: ACKs, resends,
              duplicate suppression), the same N coroutines;
``blocking``  the blocking API, 1 in flight: the p50 of its round trips;
``rust``      ``messenger bench --connect ... --in-flight 1 --via slc``, the
              Rust client at 1 in flight: its p50.

Every request goes to the server loop (NOOP, which ``--slc echo``
answers) with a SIZE-byte body, and every reply is checked. Rounds
alternate the order of the four; the report gives each one's median and
the median of the per-round ratios (aio / pyzmq round trips per second,
blocking / rust p50), since the machine is shared and a ratio taken within
one round cancels most of what its other tenants do.

Not a test: nothing here is timed by ``cargo test``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# ---------------------------------------------------------------------------
# One measurement, in a process of its own


async def closed_loop(ask, body_of, body: bytes, in_flight: int, seconds: float) -> dict:
    """``in_flight`` coroutines, each awaiting ``ask(body)`` and asking again
    as soon as it is answered, for ``seconds`` (after one warm-up round):
    round trips per second, how many, and how many replies (``body_of``
    gives a reply's body) were not ``body``."""
    await asyncio.gather(*(ask(body) for _ in range(in_flight)))
    done = 0
    wrong = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, wrong
        while time.monotonic() < end:
            reply = await ask(body)
            if body_of(reply) != body:
                wrong += 1
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.monotonic() - started
    return {"round_trips_per_s": done / elapsed, "round_trips": done, "wrong": wrong}


def measure_aio(endpoint: str, in_flight: int, size: int, seconds: float) -> dict:
    import messenger
    from messenger import aio

    async def main() -> dict:
        async with aio.Messenger() as m:
            conn = await m.make_connection(endpoint)
            ask = functools.partial(m.request, conn, messenger.NOOP)
            return await closed_loop(ask, lambda reply: reply.body, b"x" * size, in_flight, seconds)

    return asyncio.run(main())


def measure_pyzmq(endpoint: str, in_flight: int, size: int, seconds: float) -> dict:
    sys.path.insert(0, str(HERE))
    from zmq_client import Client

    async def main() -> dict:
        client = Client(endpoint)
        try:
            ask = functools.partial(client.request, 0)
            result = await closed_loop(ask, lambda reply: reply, b"x" * size, in_flight, seconds)
            return {**result, "resends": client.resends}
        finally:
            client.close()

    return asyncio.run(main())


def measure_blocking(endpoint: str, size: int, seconds: float) -> dict:
    import messenger

    with messenger.Messenger() as m:
        conn = m.make_connection(endpoint)
        body = b"x" * size
        for _ in range(200):
            m.request(conn, messenger.NOOP, body)
        samples = []
        wrong = 0
        end = time.monotonic() + seconds
        clock = time.perf_counter
        while time.monotonic() < end:
            t = clock()
            reply = m.request(conn, messenger.NOOP, body)
            samples.append(clock() - t)
            if reply.body != body:
                wrong += 1
        samples.sort()
        return {
            "p50_us": samples[len(samples) // 2] * 1e6,
            "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
            "round_trips": len(samples),
            "wrong": wrong,
        }


def measure_rust(binary: str, endpoint: str, size: int, seconds: float) -> dict:
    out = subprocess.run(
        [
            binary, "bench", "--connect", endpoint, "--sizes", str(size),
            "--in-flight", "1", "--via", "slc", "--duration", f"{seconds}s",
            "--warmup", "200ms", "--json",
        ],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    row = json.loads(out)["results"][0]
    return {"p50_us": row["p50_us"], "p99_us": row["p99_us"], "round_trips": row["round_trips"],
            "wrong": row["errors"]}


def one(args: argparse.Namespace) -> None:
    if args.one == "aio":
        r = measure_aio(args.endpoint, args.in_flight, args.size, args.seconds)
    elif args.one == "pyzmq":
        r = measure_pyzmq(args.endpoint, args.in_flight, args.size, args.seconds)
    elif args.one == "blocking":
        r = measure_blocking(args.endpoint, args.size, args.seconds)
    else:
        raise SystemExit(f"unknown measurement {args.one}")
    print(json.dumps(r))


# ---------------------------------------------------------------------------
# The run


def serve(binary: str, transport: str, tmp: str) -> tuple:
    bind = "tcp://127.0.0.1:0" if transport == "tcp" else f"ipc://{tmp}/bench.sock"
    proc = subprocess.Popen(
        [binary, "serve", "--bind", bind, "--slc", "echo", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    return proc, json.loads(line)["listening"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    p.add_argument("--messenger", default=str(REPO / "target" / "release" / "messenger"))
    p.add_argument("--in-flight", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        server, endpoint = serve(args.messenger, args.transport, tmp)
        try:
            rounds = []
            kinds = ["aio", "pyzmq", "blocking", "rust"]
            for i in range(args.rounds):
                order = kinds if i % 2 == 0 else list(reversed(kinds))
                got = {}
                for kind in order:
                    if kind == "rust":
                        got[kind] = measure_rust(args.messenger, endpoint, args.size, args.seconds)
                    else:
                        out = subprocess.run(
                            [sys.executable, __file__, "--one", kind, "--endpoint", endpoint,
                             "--seconds", str(args.seconds), "--in-flight", str(args.in_flight),
                             "--size", str(args.size)],
                            check=True, capture_output=True, text=True, timeout=300,
                        ).stdout
                        got[kind] = json.loads(out)
                    if got[kind].get("wrong"):
                        raise SystemExit(f"{kind}: {got[kind]['wrong']} wrong replies")
                rounds.append(got)
                print(
                    f"round {i + 1}/{args.rounds}: aio {got['aio']['round_trips_per_s']:.0f}/s, "
                    f"pyzmq {got['pyzmq']['round_trips_per_s']:.0f}/s, "
                    f"blocking p50 {got['blocking']['p50_us']:.1f} µs, rust p50 {got['rust']['p50_us']:.1f} µs",
                    file=sys.stderr,
                )
        finally:
            server.terminate()
            server.wait(timeout=30)

    def med(kind, key):
        return statistics.median(r[kind][key] for r in rounds)

    def ratio(a, b, key):
        return [r[a][key] / r[b][key] for r in rounds]

    rt = ratio("aio", "pyzmq", "round_trips_per_s")
    lat = ratio("blocking", "rust", "p50_us")
    print(f"python benches/python/roundtrip.py --rounds {args.rounds} --seconds {args.seconds} "
          f"--transport {args.transport} --in-flight {args.in_flight} --size {args.size}")
    print(f"against {args.messenger} serve --slc echo --quiet ({args.transport}); "
          f"{args.size} B bodies to the server loop; {args.rounds} alternating rounds")
    print(f"{args.in_flight} in flight, round trips/s: aio {med('aio', 'round_trips_per_s'):.0f}, "
          f"pyzmq {med('pyzmq', 'round_trips_per_s'):.0f} (medians)")
    print(f"  aio / pyzmq per round: {', '.join(f'{x:.2f}x' for x in rt)}; median {statistics.median(rt):.2f}x")
    print(f"1 in flight, p50: blocking {med('blocking', 'p50_us'):.1f} µs, rust {med('rust', 'p50_us'):.1f} µs (medians)")
    print(f"  blocking / rust per round: {', '.join(f'{x:.2f}x' for x in lat)}; median {statistics.median(lat):.2f}x")


if __name__ == "__main__":
    main()
