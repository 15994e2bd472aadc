#!/usr/bin/env python3
"""The cold-cache read-ahead of a full backup (asm/backupwarm.py), on and off, against
GNU tar, in the same run.

    python3 bench/bench_readahead.py                    # both drivers, both store shapes
    python3 bench/bench_readahead.py --driver maildir --shape 200 --pairs 5

For each store (gen_store.py's, cached under --dir as bench_backup.py's), each round
runs, with the caches dropped before every run (root only): ``imsbackup -f - / | cat``
with ``backup.readahead yes``, the same with ``no``, and ``tar -cf - <partition> | cat``.
It prints each round and the medians of the two ratios to tar, and, with --warm, the
same two imsbackup runs on a warm cache (what the read-ahead costs when there is
nothing to wait for).  The store's ``backup.readahead`` is set back to what it was.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_store as g  # noqa: E402
from bench_backup import SHAPES, drop_caches, median, tool  # noqa: E402


def _set(home: str, value: str | None) -> None:
    msconfig = tool("msconfig")
    cmd = f"{msconfig} {'set backup.readahead ' + value if value else 'unset backup.readahead'}"
    subprocess.run(["bash", "-c", cmd], env=dict(os.environ, IMS_HOME=home), check=True,
                   capture_output=True)


def _get(home: str) -> str | None:
    p = subprocess.run(["bash", "-c", f"{tool('msconfig')} show backup.readahead"],
                       env=dict(os.environ, IMS_HOME=home), capture_output=True, text=True)
    return "no" if p.stdout.strip().endswith("= no") else None


def bench(args, driver: str, users: int) -> list[str]:
    m = g.ensure_store(args.dir, driver, args.messages, users, seed=args.seed)
    home, part = m["home"], m["partition"]
    env = {"IMS_HOME": home}
    full = f"{tool('imsbackup')} -f - / | cat >/dev/null"
    tar = f"tar -cf - -C {shlex.quote(os.path.dirname(part))} {shlex.quote(os.path.basename(part))} | cat >/dev/null"
    shape = SHAPES.get(users, f"{users} users")
    print(f"\n== {driver}, {shape}: {home}", flush=True)
    was = _get(home)
    on, off, ref, won, woff = [], [], [], [], []
    try:
        for i in range(args.pairs):
            for value, out in (("yes", on), ("no", off)):
                _set(home, value)
                drop_caches()
                out.append(g.sh(full, env))
            drop_caches()
            ref.append(g.sh(tar))
            print(f"   cold round {i + 1}: read-ahead {on[-1]:.2f} s, none {off[-1]:.2f} s, tar {ref[-1]:.2f} s"
                  f" -> {on[-1] / ref[-1]:.2f}x / {off[-1] / ref[-1]:.2f}x", flush=True)
        for i in range(args.pairs if args.warm else 0):
            for value, out in (("yes", won), ("no", woff)):
                _set(home, value)
                out.append(g.sh(full, env))
            print(f"   warm round {i + 1}: read-ahead {won[-1]:.2f} s, none {woff[-1]:.2f} s", flush=True)
    finally:
        _set(home, was)
    r_on = median([a / b for a, b in zip(on, ref)])
    r_off = median([a / b for a, b in zip(off, ref)])
    line = f"| {driver} | {shape} | {r_on:.2f}x | {r_off:.2f}x |"
    if args.warm:
        line += f" {median([a / b for a, b in zip(won, woff)]):.2f}x |"
    print(f"   cold, median of {args.pairs} rounds: read-ahead {r_on:.2f}x tar, none {r_off:.2f}x tar", flush=True)
    return [line]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=os.environ.get("IMS_BENCH_DIR", "/var/tmp/ims-bench"))
    p.add_argument("--driver", action="append", choices=["maildir", "classic"])
    p.add_argument("--shape", action="append", type=int, help="users (200: many small folders, 4: few large)")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pairs", type=int, default=5, help="rounds per store (default 5)")
    p.add_argument("--warm", action="store_true", help="also time both on a warm cache")
    args = p.parse_args()
    if not drop_caches():
        raise SystemExit("bench_readahead.py: cannot drop the caches (/proc/sys/vm/drop_caches): run it as root")
    rows = []
    for driver in args.driver or ["maildir", "classic"]:
        for users in args.shape or [200, 4]:
            rows += bench(args, driver, users)
    mach = g.machine()
    print(f"\nMeasured {mach['date']} with `{g.cmdline()}` ({mach['nproc']} cores): median of "
          f"{args.pairs} rounds, caches dropped before every cold run.\n")
    print("| driver | store | cold, read-ahead (x tar) | cold, none (x tar) |" + (" warm, read-ahead (x none) |" if args.warm else ""))
    print("|---|---|---|---|" + ("---|" if args.warm else ""))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
