#!/usr/bin/env python3
"""Instructions per round trip from a callgrind profile of `messenger bench`.

    valgrind --tool=callgrind --callgrind-out-file=cg.out \
        target/release/messenger bench --transports inproc --in-flight 1 --sizes 64 --duration 2s
    python3 benches/callgrind_per_round_trip.py cg.out

Prints the bench loop's inclusive instructions (the closed loop's task,
`closed_loop_each`'s closure: request, reply and the loop's own clock reads
and tally) divided by the round trips, counted as calls of
`Callbacks::register` (one per request). Instruction counts repeat for the
same binary and inputs whatever else the machine runs, so two builds
compare without alternating. Used in design/PERFORMANCE.md ("inproc's
reply in its slot").
"""

import re
import subprocess
import sys


def annotate(path, *args):
    out = subprocess.run(
        ["callgrind_annotate", *args, path], check=True, capture_output=True, text=True
    ).stdout
    return out.replace(",", "")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    inclusive = annotate(path, "--inclusive=yes")
    loop = re.search(r"^\s*(\d+) .*closed_loop_each::\{\{closure\}\}::\{\{closure\}\} ", inclusive, re.M)
    # The callers of register, each with its call count, are the lines
    # just above its own: one block, so every call is counted once.
    lines = annotate(path, "--tree=caller").splitlines()
    own = next(
        (i for i, l in enumerate(lines) if re.search(r"\*\s+\S*Callbacks::register \[", l)),
        None,
    )
    if not loop or own is None:
        sys.exit("no bench loop or no Callbacks::register in this profile")
    calls = 0
    for line in reversed(lines[:own]):
        m = re.search(r"<.*\((\d+)x\)", line)
        if not m:
            break
        calls += int(m.group(1))
    if calls == 0:
        sys.exit("no calls of Callbacks::register found (a build with debug info names them differently)")
    print(f"round trips {calls}, instructions per round trip {int(loop.group(1)) / calls:.0f}")


if __name__ == "__main__":
    main()
