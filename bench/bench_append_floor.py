#!/usr/bin/env python3
"""How far a store driver's append is from the system calls it makes.

    python3 bench/bench_append_floor.py                    # 5,000 messages of 8 KB, 3 rounds
    python3 bench/bench_append_floor.py --messages 20000 --size 2000

In one run, interleaved, each round into new directories under ``--dir``:

* **floor**: the maildir driver's system calls for one message, in a plain Python loop
  (open O_EXCL in tmp/, one write, fchown to the owner, futimens, close, one append
  to a uidlist, rename into cur/, stat), into one directory;
* **maildir, one hold**: ``MaildirStore.append`` of the same messages into one folder,
  with the folder's lock held and never let go;
* **maildir, as a restore**: the same with ``let_others_in`` after every message, as
  imsrestore calls it (the dotlock let go for 50 ms every 0.5 s or 5,000 messages);
* **classic, one hold**: ``ClassicStore.append`` with the folder's lock held.

It prints microseconds per message (wall clock and CPU) and each driver's ratio to the
floor: the share of a restore's per-message time that is Python, not the filesystem.
Nothing here is a target of its own; bench/RESULTS.md uses it to explain the restore
ratios of bench_restore.py.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_store as g  # noqa: E402


def floor(d: str, n: int, data: bytes, owner) -> tuple[float, float]:
    os.makedirs(os.path.join(d, "tmp"))
    os.makedirs(os.path.join(d, "cur"))
    ul = os.open(os.path.join(d, "uidlist"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        base = f"1700000000.M{i}P1Q{i}R0123abcd.host"
        tmp = f"{d}/tmp/{base}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        if owner:
            os.fchown(fd, *owner)
        os.utime(fd, (1.7e9, 1.7e9))
        os.close(fd)
        os.write(ul, b"%d G0123 :%s\n" % (i + 1, base.encode()))
        path = f"{d}/cur/{base},S={len(data)}:2,S"
        os.rename(tmp, path)
        os.stat(path)
    w, c = time.perf_counter() - t, time.process_time() - c
    os.close(ul)
    return w / n, c / n


def driver(home: str, kind: str, n: int, data: bytes, owner_name, let_go: bool) -> tuple[float, float]:
    g.make_home(home, kind, owner_name)
    st = g.open_store(home)
    if not let_go:
        st.BATCH_MESSAGES, st.BATCH_SECONDS = 10 ** 9, 1e9
    st.create_user("u")
    st.create_folder("u", "F")
    t, c = time.perf_counter(), time.process_time()
    with st.batch(), st.lock("u", "F"):
        for i in range(n):
            st.append("u", "F", io.BytesIO(data), uid=i + 1, flags=("\\Seen",),
                      internaldate=1.7e9, stored=1.7e9 + i)
            if let_go:
                st.let_others_in("u", "F")
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/var/tmp/ims-bench/append-floor")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", type=int, default=8000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    owner_name = "vmail" if os.geteuid() == 0 else None
    owner = None
    if owner_name:
        import pwd
        pw = pwd.getpwnam(owner_name)
        owner = (pw.pw_uid, pw.pw_gid)
    data = (b"Subject: x\r\n\r\n" + b"x" * args.size)[:args.size]
    run_dir = os.path.join(os.path.abspath(args.dir), time.strftime("%Y%m%dT%H%M%S"))
    kinds = [("floor", None, False), ("maildir, one hold", "maildir", False),
             ("maildir, as a restore", "maildir", True), ("classic, one hold", "classic", False)]
    res: dict[str, list] = {k[0]: [] for k in kinds}
    for r in range(args.rounds):
        for name, kind, let_go in kinds:
            d = os.path.join(run_dir, f"{r}-{name.replace(', ', '-').replace(' ', '_')}")
            os.sync()
            if kind is None:
                res[name].append(floor(d, args.messages, data, owner))
            else:
                res[name].append(driver(d, kind, args.messages, data, owner_name, let_go))
    base = statistics.median(w for w, _ in res["floor"])
    print(f"{args.messages} messages of {args.size} bytes, {args.rounds} rounds, medians "
          f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}); kept under {run_dir}")
    print("| what | us a message, wall | us a message, CPU | x floor (wall) |")
    print("|---|---|---|---|")
    for name, _, _ in kinds:
        w = statistics.median(x for x, _ in res[name])
        c = statistics.median(y for _, y in res[name])
        print(f"| {name} | {w * 1e6:.0f} | {c * 1e6:.0f} | {w / base:.2f}x |")


if __name__ == "__main__":
    main()
