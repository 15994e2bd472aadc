"""Staging throughput: imsstage -j 1 vs -j 2 vs -j <cores> on a store of many groups.

    python3 bench/bench_staging.py [--users 48] [--messages 2400] [--groups 8] [--driver classic]

Builds one store, then stages every group into a fresh directory with each -j value
(best of --repeat runs) and prints seconds, MiB/s and the ratio to -j 1 measured in the
same run.  Ratios, not absolute times, are what to compare between machines.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from asm.config import Config  # noqa: E402
from asm.demo import build_demo, user_names  # noqa: E402
from asm.store import open_store  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=48)
    p.add_argument("--messages", type=int, default=2400)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--driver", default="classic")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench-staging-")
    try:
        home = os.path.join(work, "ims")
        cfg = Config(home)
        cfg.set("store.driver", args.driver)
        names = user_names(args.users)
        per = max(1, len(names) // args.groups)
        with open(cfg.groups_path, "w") as f:
            for g in range(args.groups):
                members = names[g * per:(g + 1) * per] if g < args.groups - 1 else names[g * per:]
                f.write(f"g{g}=(" + "|".join(members) + ")\n")
        t = time.monotonic()
        counts = build_demo(open_store(Config(home)), users=args.users, messages=args.messages)
        print(f"store: {args.driver}, {counts['users']} users in {args.groups} groups, "
              f"{counts['messages']} messages (built in {time.monotonic() - t:.1f}s); "
              f"{os.cpu_count()} cores")
        env = dict(os.environ, IMS_HOME=home)
        cores = os.cpu_count() or 1
        results = {}
        for j in sorted({1, 2, cores}):
            best = None
            for _ in range(args.repeat):
                d = os.path.join(work, f"stage-{j}")
                shutil.rmtree(d, ignore_errors=True)
                t = time.monotonic()
                r = subprocess.run([sys.executable, "-m", "staging.cli", "-D", d, "-j", str(j)], env=env,
                                   capture_output=True, text=True)
                el = time.monotonic() - t
                if r.returncode != 0:
                    print(f"-j {j} failed: {r.stderr}")
                    return 1
                size = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.endswith(".ims"))
                best = el if best is None else min(best, el)
            results[j] = (best, size)
        base = results[1][0]
        for j, (el, size) in results.items():
            print(f"-j {j}: {el:6.2f}s  {size / el / 2**20:7.1f} MiB/s  ratio to -j 1: {base / el:4.2f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
