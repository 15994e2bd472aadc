#!/usr/bin/env python3
"""Two ims-asm trees against each other on one bench store, in the same run: what a change
costs (or saves) a warm full backup and a restore, as interleaved pairs.

    python3 bench/bench_ab.py OLD_TREE NEW_TREE [--pairs 5] [--store DIR]

Each tree is a checkout with its own ``.venv`` (``python3 -m venv .venv &&
.venv/bin/pip install -e .``).  Per pair: ``imsbackup -f /dev/null /`` of the store (warm),
and ``imsrestore -f ARCHIVE`` into an empty installation under /dev/shm (no sync: the
CPU cost, not the disk's writeback), each tree's archive written by itself first.  Prints
each run, the medians and minimums, and new/old ratios.  The store is one of
bench_backup.py's (``--dir``, default /var/tmp/ims-bench)."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_ab.py", description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--store", default="/var/tmp/ims-bench/maildir-20000m-200u-default-s1",
                   help="an IMS_HOME of a bench store (bench_backup.py makes them)")
    p.add_argument("--scratch", default="/dev/shm")
    args = p.parse_args(argv)
    trees = {"old": args.old, "new": args.new}
    with open(os.path.join(args.store, "config", "msg.conf")) as f:
        conf = dict(line.split(" = ", 1) for line in f.read().splitlines() if " = " in line)
    archives = {}
    for name, tree in trees.items():
        archives[name] = os.path.join(args.scratch, f"bench-ab-{name}.ims")
        subprocess.run([f"{tree}/.venv/bin/imsbackup", "-f", archives[name], "/"],
                       env={**os.environ, "IMS_HOME": args.store}, check=True, capture_output=True)
    times: dict = {(n, w): [] for n in trees for w in ("backup", "restore")}
    try:
        for i in range(args.pairs):
            for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
                tree = trees[name]
                s = time.perf_counter()
                subprocess.run([f"{tree}/.venv/bin/imsbackup", "-f", "/dev/null", "/"],
                               env={**os.environ, "IMS_HOME": args.store}, check=True, capture_output=True)
                times[name, "backup"].append(time.perf_counter() - s)
                dst = os.path.join(args.scratch, f"bench-ab-dst-{name}")
                shutil.rmtree(dst, ignore_errors=True)
                env = {**os.environ, "IMS_HOME": dst}
                for k in ("store.driver", "store.owner"):
                    if k in conf:
                        subprocess.run([f"{tree}/.venv/bin/msconfig", "set", k, conf[k]], env=env,
                                       check=True, capture_output=True)
                s = time.perf_counter()
                subprocess.run([f"{tree}/.venv/bin/imsrestore", "-f", archives[name]], env=env,
                               check=True, capture_output=True)
                times[name, "restore"].append(time.perf_counter() - s)
                shutil.rmtree(dst, ignore_errors=True)
    finally:
        for a in archives.values():
            if os.path.exists(a):
                os.unlink(a)
    for what in ("backup", "restore"):
        old, new = times["old", what], times["new", what]
        print(f"{what}: old {' '.join(f'{x:.2f}' for x in old)} s; new {' '.join(f'{x:.2f}' for x in new)} s")
        print(f"  median new/old {statistics.median(new) / statistics.median(old):.3f}x, "
              f"minimum new/old {min(new) / min(old):.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
