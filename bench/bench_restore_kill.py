#!/usr/bin/env python3
"""The long run of tests/test_restore_kill.py's property: a restore killed (SIGKILL) or
given a full disk at many points spread over the run, then the same command again;
each trial is judged as the tests judge it (exit 0, the store equal to the source as a
client sees it, single-copy links, no duplicate file, nothing left behind).

    .venv/bin/python bench/bench_restore_kill.py --points 200 --seeds 1 2 3 --markdown
    .venv/bin/python bench/bench_restore_kill.py --modes kill --second 3 --points 300 --seeds 4 5

Prints one row per driver, mode and seed: trials, wrong, and the first wrong points.
Exit 1 if any trial was wrong.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from asm.store import open_store  # noqa: E402
from tests.faults import spread  # noqa: E402
from tests.helpers import make_home  # noqa: E402
from tests.restore_faults import Harness, backup, build_source  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drivers", nargs="+", default=["classic", "maildir"])
    ap.add_argument("--modes", nargs="+", default=["kill", "enospc"], choices=["kill", "enospc"])
    ap.add_argument("--points", type=int, default=100, help="fault points per driver, mode and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--second", type=int, default=0, metavar="N",
                    help="kill every Nth rerun once more, at a random point of its own, before "
                         "the last clean run (as the test does with N=3); 0: never")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = []
    bad_total = 0
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as work:
        for driver in args.drivers:
            src = os.path.join(work, f"src-{driver}")
            home = os.path.join(src, "home")
            cfg = make_home(home, driver)
            os.environ["IMS_HOME"] = home
            store = open_store(cfg)
            build_source(store)
            archive = backup(home, os.path.join(src, "a.ims"))
            for mode in args.modes:
                for seed in args.seeds:
                    t0 = time.time()
                    trial_dir = tempfile.mkdtemp(dir=work)
                    from pathlib import Path
                    h = Harness(Path(trial_dir), store, archive, driver)
                    total = h.count()
                    points = spread(total, args.points, seed)
                    rng = random.Random(seed)
                    outcomes = h.trials([dict(point=p, mode=mode,
                                              second=rng.randint(1, total)
                                              if mode == "kill" and args.second and i % args.second == args.second - 1
                                              else None)
                                         for i, p in enumerate(points)])
                    bad = [o for o in outcomes if not o.ok]
                    bad_total += len(bad)
                    rows.append((driver, mode, seed, total, len(outcomes), len(bad),
                                 ", ".join(str(o.point) for o in bad[:5]) or "-", time.time() - t0))
    head = ("driver", "fault", "seed", "steps in a run", "trials", "wrong", "first wrong points", "seconds")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(f"{x:.0f}" if isinstance(x, float) else str(x) for x in r) + " |")
    else:
        for r in rows:
            print(dict(zip(head, r)))
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
