"""Backup-group matching: the POSIX ERE automaton (asm/posix_ere.py) against Python's re.

    python3 bench/bench_groups.py [--users 100000]

Times Groups.group_of over random user IDs with the groups of docs/configuration.md
plus a class-based one, first pass and memoized second pass, next to the same
expressions in Python's backtracking re; then one catastrophic expression on a very
long user ID (which re would never finish).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import string
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asm.groups import Groups  # noqa: E402

CONF = "groupA=[a-l].*\ngroupB=[m-r].*\ngroupC=[0-9].*\nstaff=[[:alpha:]]+\\.[[:alpha:]]+\n"
PYTHON = (("groupA", "[a-l].*"), ("groupB", "[m-r].*"), ("groupC", "[0-9].*"),
          ("staff", "[A-Za-z]+\\.[A-Za-z]+"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    a = ap.parse_args()
    r = random.Random(1)
    ids = ["".join(r.choice(string.ascii_lowercase + string.digits + "._") for _ in range(r.randint(3, 24)))
           for _ in range(a.users)]
    g = Groups.parse(CONF)
    t = time.perf_counter()
    got = [g.group_of(u) for u in ids]
    first = time.perf_counter() - t
    t = time.perf_counter()
    [g.group_of(u) for u in ids]
    again = time.perf_counter() - t
    py = [(n, re.compile(e)) for n, e in PYTHON]
    t = time.perf_counter()
    want = [next((n for n, x in py if x.fullmatch(u)), "user") for u in ids]
    pyre = time.perf_counter() - t
    assert got == want
    print(f"{a.users} user IDs, 4 groups: posix_ere {first:.2f} s (memoized again {again:.3f} s), "
          f"Python re {pyre:.2f} s")
    slow = Groups.parse("slow=(a|aa)*c\n")
    t = time.perf_counter()
    slow.group_of("a" * 100_000)
    print(f"(a|aa)*c on a 100,000-character user ID: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
