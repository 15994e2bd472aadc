#!/usr/bin/env python3
"""The archive writer alone, CPU time: what format 2's record digests cost per member.

    python3 bench/bench_writer.py                         # this checkout
    python3 bench/bench_writer.py --compare /work/main    # and another checkout, interleaved

Writes --messages messages (300 B - 8 KB, from files under --dir) in 200 folders to a
sink that throws the bytes away, --repeat times per checkout, and prints the best CPU
time (time.process_time) of each: no store, no device, no I/O but reading the files
(page cache), so only the writer's own work is compared.  Each checkout runs in its own
process (PYTHONPATH=<checkout>).
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = r'''
import os, sys, time
from asm.archive.writer import ArchiveWriter
try:
    from asm.archive.spec import VERSION as version
except ImportError:
    from asm.archive.writer import VERSION as version
class Null:
    def write(self, b): return len(b)
d, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = n // 200
best = None
for _ in range(reps):
    w = ArchiveWriter(Null())
    t0 = time.process_time()
    w.write_header({})
    for fi in range(200):
        user = f"user{fi - fi % 7}"
        if fi % 7 == 0:
            w.add_user("primary", user, "g")
        w.add_folder("primary", user, f"F{fi}", uidvalidity=1, uidnext=per + 1, subscribed=True,
                     uids=range(1, per + 1))
        for u in range(1, per + 1):
            w.add_message("primary", user, f"F{fi}", uid=u, flags=("\\Seen",), keywords=("$Label1",),
                          internaldate=1700000000 + u, stored=1700000000 + u, nlink=1,
                          src_path=f"{d}/{fi * per + u - 1}")
    w.close()
    t = time.process_time() - t0
    best = t if best is None else min(best, t)
print(f"{best:.3f} {version}")
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per checkout")
    p.add_argument("--compare", action="append", default=[], metavar="CHECKOUT")
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ims-bench-writer"))
    args = p.parse_args()
    src = os.path.join(args.dir, f"msgs-{args.messages}")
    if not os.path.isdir(src):
        os.makedirs(src)
        rnd = random.Random(1)
        for i in range(args.messages):
            with open(os.path.join(src, str(i)), "wb") as f:
                f.write(b"Subject: %d\r\n\r\n" % i + bytes(rnd.randrange(300, 8000)))
    checkouts = [os.path.dirname(HERE)] + [os.path.abspath(c) for c in args.compare]
    best: dict = {}
    for _ in range(args.rounds):
        for c in checkouts:
            out = subprocess.run([sys.executable, "-c", _CHILD, src, str(args.messages), str(args.repeat)],
                                 env=dict(os.environ, PYTHONPATH=c), cwd=args.dir, capture_output=True,
                                 text=True, check=True)
            t, version = out.stdout.split()
            prev = best.get(c)
            best[c] = (min(prev[0], float(t)) if prev else float(t), version)
    for c, (t, version) in best.items():
        print(f"{c} (format {version}): {t:.3f} s CPU for {args.messages} messages, "
              f"{t / args.messages * 1e6:.1f} us each")
    if len(checkouts) > 1:
        base = best[checkouts[1]][0]
        print(f"this checkout / {checkouts[1]}: {best[checkouts[0]][0] / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
