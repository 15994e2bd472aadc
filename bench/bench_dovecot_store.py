#!/usr/bin/env python3
"""Backup speed on a store Dovecot made itself, not gen_store.py: bench_backup.py's targets.

    python3 bench/bench_dovecot_store.py                      # 20,000 messages, 200 logins
    python3 bench/bench_dovecot_store.py --users 4 --pairs 5  # few large folders

bench_backup.py times stores that ims-asm's own store API wrote.  This one lets a private
Dovecot (tests/dovecot_lab.py; its ``vdomain`` layout by default,
``maildir:<store>/%d/%n/Maildir``, as most Dovecot sites lay mail out) fill the store:

* every message arrives over LMTP, a quarter of them in one transaction to 2-4 logins
  (Dovecot links the copies: one file, several names), sizes from gen_store.py's mix;
* each login's INBOX is then spread over six more folders with IMAP UID MOVE (Sent,
  Archive/2023, Work, Bulk Mail, Trash, Réunions, gen_store.py's shares), and \\Seen is
  set on most of them with UID STORE;
* a full ``imsbackup`` writes the base state file; then --new-fraction (1%) more
  messages arrive over LMTP, some moved on to another folder, and \\Flagged is set on
  0.5% of the old ones.

Then the same timed commands as bench_backup.py, in interleaved pairs (median of
--pairs): full warm and cold against ``tar -cf - <mail store>`` (tar also reads
Dovecot's own index and cache files, which a backup of messages leaves out), ``-d``
and ``--base`` (the real state file of the full taken before the new mail) against
the full run, ``-j 2`` against ``-j 1``.  The installation sets store.mail_location to
the layout's mail_location (not ``doveconf``: that would time doveconf's start as well).
The filled store is cached under --dir (``--force`` builds it again).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_backup as bb  # noqa: E402
import gen_store as g  # noqa: E402

MANIFEST = "bench-dovecot.json"
FOLDERS = [("Sent", 0.15), ("Archive/2023", 0.10), ("Work", 0.08), ("Bulk Mail", 0.06),
           ("Trash", 0.06), ("R&AOk-unions", 0.05)]          # the rest (50%) stays in INBOX


def logins(layout: str, users: int) -> list[str]:
    domains = ("example.com", "other.org")
    if layout in ("vdomain", "login", "nhash"):
        return [f"user{i:04d}@{domains[i % 2]}" for i in range(users)]
    return [f"user{i:04d}" for i in range(users)]


def deliver(lab, rng: random.Random, body: g.Body, mix, who: list[str], n: int, start: int,
            when: float) -> dict:
    """``n`` message instances over LMTP from number ``start``; {login: count}."""
    got = {u: 0 for u in who}
    made = 0
    k = start
    while made < n:
        rcpts = [rng.choice(who)]
        if rng.random() < g.LINK_SHARE and n - made >= 2:
            rcpts = rng.sample(who, min(len(who), rng.randint(2, 4), n - made))
        size = g.pick_size(rng, mix)
        lab.deliver(rcpts, g.message(rng, body, k, size, "sender", [r.split("@")[0] for r in rcpts], when))
        for r in rcpts:
            got[r] += 1
        made += len(rcpts)
        k += 1
    return got


def spread(lab, rng: random.Random, login: str, uids: list[int] | None = None, seen: float = 0.7) -> None:
    """MOVE ``login``'s INBOX messages (``uids``: only these) to its folders by their
    shares, and set \\Seen on ``seen`` of the moved ones."""
    with lab.imap(login) as c:
        c.select("INBOX")
        pick = list(c.uids() if uids is None else uids)
        rng.shuffle(pick)
        at = 0
        for name, share in FOLDERS:
            take = pick[at:at + round(len(pick) * share)]
            at += len(take)
            if not take:
                continue
            moved = c.uid_move(take, name)
            mark = [u for u in moved.values() if rng.random() < seen]
            if mark:
                c.select(name)
                c.uid_store(mark, "+FLAGS", [r"\Seen"])
                c.select("INBOX")
        c.unselect()


def build(args, workdir: str) -> dict:
    from tests.dovecot_lab import MAIL_USER, Lab
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    os.makedirs(os.path.join(workdir, "lab"))
    who = logins(args.layout, args.users)
    lab = Lab(args.layout, os.path.join(workdir, "lab"), logins=who)
    rng, body, mix = random.Random(args.seed), g.Body(args.seed), g.parse_mix(args.size_mix)
    t0 = time.monotonic()
    lab.start()
    try:
        for u in who:
            with lab.imap(u) as c:
                for name, _ in FOLDERS:
                    c.create(name)
                for name in ("Sent", "Work", "R&AOk-unions"):
                    c.subscribe(name)
        old = round(args.messages * (1 - args.new_fraction))
        deliver(lab, rng, body, mix, who, old, 0, time.time())
        for u in who:
            spread(lab, rng, u)
        home = os.path.join(workdir, "ims")
        cfg = g.make_home(home, "maildir", MAIL_USER)
        cfg.set("store.mail_location", lab.mail_location)
        cfg.set("dovecot.config", lab.conf)
        # the base: a full backup once every folder has settled (a fingerprint counts
        # only for what was last changed 2 s before the backup looked)
        time.sleep(2.5)
        state = os.path.join(workdir, "base.state")
        g.sh(f"{bb.tool('imsbackup')} -f {shlex.quote(os.path.join(workdir, 'base.ims'))} /",
             {"IMS_HOME": home})
        os.rename(os.path.join(workdir, "base.ims.state"), state)
        os.unlink(os.path.join(workdir, "base.ims"))
        cutoff = int(time.time()) + 1
        while time.time() < cutoff:
            time.sleep(0.05)
        new = args.messages - old
        got = deliver(lab, rng, body, mix, who, new, old * 2, time.time())
        for u, n in got.items():
            if n:
                with lab.imap(u) as c:
                    c.select("INBOX")
                    fresh = c.uids()[-n:]
                spread(lab, rng, u, [x for x in fresh if rng.random() < 0.5], seen=0.0)
        flagged = 0
        for u in rng.sample(who, max(1, len(who) // 4)):
            with lab.imap(u) as c:
                for name, _ in [("INBOX", 0)] + FOLDERS:
                    c.select(name)
                    uids = c.uids()
                    mark = [x for x in uids if rng.random() < 0.02]
                    if mark:
                        c.uid_store(mark, "+FLAGS", [r"\Flagged"])
                        flagged += len(mark)
                c.unselect()
    finally:
        lab.stop()
    m = {"home": home, "partition": lab.store, "state": state, "cutoff": cutoff,
         "since": dt.datetime.fromtimestamp(cutoff).strftime("%Y%m%d:%H%M%S"),
         "layout": args.layout, "mail_location": lab.mail_location, "users": args.users,
         "messages": args.messages, "new": new, "flagged": flagged, "seed": args.seed,
         "size_mix": args.size_mix,
         "build_seconds": round(time.monotonic() - t0, 1)}
    with open(os.path.join(workdir, MANIFEST), "w") as f:
        json.dump(m, f, indent=1)
    return m


def tree(path: str) -> dict:
    """Message names and files (each inode once) and their bytes under ``path``, and
    Dovecot's other files (uidlists, indexes, keywords, subscriptions, maildirfolder)."""
    out = {"names": 0, "files": 0, "bytes": 0, "dovecot_files": 0, "dovecot_bytes": 0}
    seen = set()
    for root, _, names in os.walk(path):
        for n in names:
            st = os.lstat(os.path.join(root, n))
            if os.path.basename(root) not in ("cur", "new", "tmp"):
                out["dovecot_files"] += 1
                out["dovecot_bytes"] += st.st_size
                continue
            out["names"] += 1
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                out["files"] += 1
                out["bytes"] += st.st_size
    return out


def describe(m: dict) -> str:
    t = tree(m["partition"])
    return (f"made by Dovecot ({m['layout']}: {m['mail_location']}): {m['messages']} messages over LMTP "
            f"to {m['users']} logins x 7 folders, spread with IMAP MOVE; {t['names']} message names in "
            f"{t['files']} files ({t['bytes'] / 1e6:.0f} MB) and {t['dovecot_files']} files of Dovecot's "
            f"({t['dovecot_bytes'] / 1e6:.0f} MB: uidlists, indexes and the like); {m['new']} new and "
            f"{m['flagged']} flagged since -d {m['since']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_dovecot_store.py", description=__doc__.split("\n\n")[0],
                                epilog="Prints wall times and ratios; never run by the tests.")
    p.add_argument("--dir", default=os.environ.get("IMS_BENCH_DIR", "/var/tmp/ims-bench"),
                   help="where the Dovecot-made store is cached (default $IMS_BENCH_DIR or /var/tmp/ims-bench)")
    p.add_argument("--layout", default="vdomain", help="tests/dovecot_lab.py layout (Maildir ones; default vdomain)")
    p.add_argument("--users", type=int, default=200, help="logins (default 200)")
    p.add_argument("--messages", type=int, default=20000, help="message instances (default 20000)")
    p.add_argument("--size-mix", default="default", help="as gen_store.py's (default: default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--new-fraction", type=float, default=0.01, help="share delivered after the base (default 0.01)")
    bb.add_timing_args(p)
    p.add_argument("--force", action="store_true", help="build the store again even if cached")
    p.add_argument("--build-only", action="store_true", help="build (or find) the store, time nothing")
    args = p.parse_args(argv)
    if g.no_tar("bench_dovecot_store.py"):
        return 2
    from tests.dovecot_lab import LAYOUTS, lab_missing
    if args.layout not in LAYOUTS or not LAYOUTS[args.layout].maildir:
        print(f"bench_dovecot_store.py: --layout must be a Maildir layout of tests/dovecot_lab.py, not "
              f"{args.layout!r}", file=sys.stderr)
        return 2
    why = lab_missing()
    if why:
        print(f"bench_dovecot_store.py: {why}", file=sys.stderr)
        return 2
    g.compile_package()
    workdir = os.path.join(os.path.abspath(args.dir),
                           f"dovecot-{args.layout}-{args.messages}m-{args.users}u-{args.size_mix}-s{args.seed}")
    path = os.path.join(workdir, MANIFEST)
    m = None
    if not args.force and os.path.exists(path):
        with open(path) as f:
            m = json.load(f)
        if m.get("new") != args.messages - round(args.messages * (1 - args.new_fraction)):
            m = None
    if m is None:
        print(f"building the store with Dovecot in {workdir} ...", flush=True)
        m = build(args, workdir)
        print(f"built in {m['build_seconds']} s", flush=True)
    if args.build_only:
        print(describe(m))
        return 0
    shape = f"made by Dovecot, {args.users} logins"
    r = bb.time_store(args, "maildir", shape, m, m["state"], describe(m), incremental_target=args.users >= 200)
    print("\n== every target (median of interleaved pairs)")
    print("\n".join(bb.table([r])))
    if args.markdown:
        print("\n" + bb.markdown([[r]], args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
