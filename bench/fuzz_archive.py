#!/usr/bin/env python3
"""The archive fuzzer of the test suite (tests/archive_fuzz.py), run longer.

    python3 bench/fuzz_archive.py --count 2000 --seed 1          # per driver, both drivers
    python3 bench/fuzz_archive.py --driver maildir --count 500 --class truncate --class reorder

Builds the corpus (a source store per driver, a full and an incremental archive made by
imsbackup), mutates the archives ``--count`` times per driver in every class (or the
``--class`` ones, in turn), restores each into a fresh installation in a sandbox and
lists it with -t (in-process from a file and from a pipe; every ``--subprocess-every``-th
as real processes), and prints, per class, the mutations tried, the exit statuses of
restore and -t, and how many broke a property (traceback, hang, memory, a write outside
the installation, wrong bytes under a UID, exit 0 with a store that differs from the
source, damage undetected or given the status of another kind).  Every broken one is
listed with what it was; the exit status is 1 if there is any.  ``--markdown`` prints
a table for bench/RESULTS.md.  Run it from the repository with the venv's python
(``.venv/bin/python bench/fuzz_archive.py``): the restores run in-process.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import archive_fuzz as af  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000, help="mutations per driver (default 1000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--driver", action="append", choices=["classic", "maildir"])
    p.add_argument("--class", dest="classes", action="append", choices=sorted(af.CLASSES))
    p.add_argument("--subprocess-every", type=int, default=15, metavar="N",
                   help="every Nth mutation runs as real processes through a pipe (0: never)")
    p.add_argument("--dir", default=None, help="work directory (default: a new temporary one, removed)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    drivers = args.driver or ["classic", "maildir"]
    work = args.dir or tempfile.mkdtemp(prefix="ims-fuzz-")
    broken = []
    tables = {}
    t0 = time.monotonic()
    try:
        for di, driver in enumerate(drivers):
            corpus = af.build_corpus(os.path.join(work, f"corpus-{driver}"), driver)
            af.self_test(corpus)
            run_dir = os.path.join(work, f"run-{driver}")
            os.makedirs(run_dir)
            outcomes = []
            for n, m in enumerate(af.mutations(corpus, args.count, args.seed + di, args.classes, base=run_dir)):
                every = args.subprocess_every
                mode = "subprocess" if every and n % every == every - 1 else ("pipe" if n % 2 else "file")
                o = af.check(corpus, m, run_dir, n, mode)
                outcomes.append(o)
                if o.problems:
                    broken.append((driver, o))
                if (n + 1) % 100 == 0:
                    print(f"{driver}: {n + 1}/{args.count} mutations, {sum(bool(x.problems) for x in outcomes)} "
                          f"broke a property ({time.monotonic() - t0:.0f}s)", file=sys.stderr, flush=True)
            tables[driver] = af.summary(outcomes)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    secs = time.monotonic() - t0
    for driver, table in tables.items():
        print(f"\n{driver}: {sum(c['tried'] for c in table.values())} mutations, seed {args.seed + drivers.index(driver)}")
        if args.markdown:
            print("\n| class | tried | restore exits | -t exits | broke a property |\n|---|---|---|---|---|")
        for cls in af.CLASSES:
            c = table.get(cls)
            if not c:
                continue
            r = ", ".join(f"{k}: {v}" for k, v in sorted(c["restore"].items(), key=lambda kv: str(kv[0])))
            t = ", ".join(f"{k}: {v}" for k, v in sorted(c["-t"].items(), key=lambda kv: str(kv[0])))
            if args.markdown:
                print(f"| {cls} | {c['tried']} | {r} | {t} | {c['problems']} |")
            else:
                print(f"  {cls:15} tried {c['tried']:5}  restore {{{r}}}  -t {{{t}}}  broke {c['problems']}")
    print(f"\n{sum(sum(c['tried'] for c in t.values()) for t in tables.values())} mutations in {secs:.0f}s, "
          f"{len(broken)} broke a property")
    for driver, o in broken[:50]:
        print(f"  {driver} [{o.mutation.cls}] {o.mutation.what} ({o.mode}, {o.mutation.source}): "
              + "; ".join(o.problems))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
