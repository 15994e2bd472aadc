"""ims-demo: the main job on the embedded default, end to end.

Builds a demo classic store, backs it up with ``imsbackup`` (full), changes it (new
mail, expunges, flag changes), takes an incremental, restores full + incremental with
``imsrestore`` into an empty store, proves the chain with ``imsverify --restore-test
--against-store`` and the restored store with ``imsverify --against-store --exact``,
and checks that every message is back byte for
byte with the same UIDs, flags, dates, folders and single-copy links.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import subprocess
import sys
import tempfile
import time

from asm.cli.common import ArgParser, human, run_command
from asm.config import Config
from asm.demo import build_demo, make_message
from asm.errors import EXIT_OK, EXIT_PARTIAL
from asm.store import open_store
from asm.trees import remove_tree


def _cmd(home: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, IMS_HOME=home)
    return subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True)


def fingerprint(store) -> dict:
    """Everything a client sees, per message, plus which messages share an inode."""
    out = {}
    inode_groups: dict = {}
    for part in store.partitions():
        for user in store.users(part):
            for f in store.folders(user):
                out[(user, f.name)] = ("folder", f.uidvalidity, f.uidnext, f.subscribed)
                for m in store.messages(user, f.name):
                    h = hashlib.sha256()
                    with open(m.path, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
                    out[(user, f.name, m.uid)] = (h.hexdigest(), tuple(sorted(m.flags)),
                                                  tuple(sorted(m.keywords)), int(m.internaldate))
                    inode_groups.setdefault((m.dev, m.ino), []).append((user, f.name, m.uid))
    out["links"] = sorted(sorted(g) for g in inode_groups.values() if len(g) > 1)
    return out


def _at_least(lo: int):
    def check(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = lo - 1
        if n < lo:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least {lo}")
        return n
    return check


def main(argv: list[str] | None = None) -> int:
    return run_command("ims-demo", _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog="ims-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=_at_least(1), default=40)
    p.add_argument("--messages", type=_at_least(0), default=3000)
    p.add_argument("--driver", choices=["classic", "maildir"], default="classic")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = p.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="ims-demo-")
    os.makedirs(work, exist_ok=True)
    src_home, dst_home = os.path.join(work, "source"), os.path.join(work, "restored")
    for h in (src_home, dst_home):
        remove_tree(h)
        Config(h).set("store.driver", args.driver)
    full, incr = os.path.join(work, "full.ims"), os.path.join(work, "incr.ims")
    say = lambda s: print(f"ims-demo: {s}", flush=True)  # noqa: E731
    try:
        t = time.monotonic()
        src = open_store(Config(src_home))
        counts = build_demo(src, users=args.users, messages=args.messages)
        say(f"built a {args.driver} store in {src_home}: {counts['users']} users, {counts['messages']} messages "
            f"({counts['shared']} delivered to several users as one inode) in {time.monotonic() - t:.1f}s")

        # the incremental takes what was stored since the full backup *started* (the policy of
        # docs/operations.md): a chain without a gap, which imsverify checks below
        since = time.strftime("%Y%m%d:%H%M%S")
        time.sleep(1.1)
        r = _cmd(src_home, "asm.cli.imsbackup", "-v", "-f", full, "/")
        if r.returncode != EXIT_OK:
            say(f"imsbackup failed ({r.returncode}): {r.stderr.strip()}")
            return EXIT_PARTIAL
        say("full backup:  " + r.stderr.strip().splitlines()[-1].removeprefix("imsbackup: "))

        # a day of mail: new deliveries, expunges and flag changes, then an incremental
        time.sleep(1.1)
        rng = random.Random(99)
        users = src.users("primary")
        for i in range(50):
            rcpts = rng.sample(users, min(len(users), rng.choice([1, 1, 3])))
            src.deliver(rcpts, io.BytesIO(make_message(rng, 10_000 + i, rng.randint(500, 20_000), "news",
                                                       rcpts, time.time())))
        expunged = 0
        for u in users[:10]:
            msgs = src.messages(u, "INBOX")
            expunged += src.expunge(u, "INBOX", [m.uid for m in msgs[:2]])
            if len(msgs) > 3:
                src.set_flags(u, "INBOX", msgs[3].uid, ["\\Seen", "\\Flagged"], ["$Label2"])
        r = _cmd(src_home, "asm.cli.imsbackup", "-v", "-f", incr, "-d", since, "/")
        if r.returncode != EXIT_OK:
            say(f"incremental imsbackup failed ({r.returncode}): {r.stderr.strip()}")
            return EXIT_PARTIAL
        say(f"store changed: 50 new deliveries, {expunged} expunged, 10 flag changes")
        say("incremental:  " + r.stderr.strip().splitlines()[-1].removeprefix("imsbackup: "))

        for label, archive, extra in (("full", full, ["-H"]), ("incremental", incr, [])):
            r = _cmd(dst_home, "asm.cli.imsrestore", "-v", *extra, "-f", archive)
            if r.returncode != EXIT_OK:
                say(f"imsrestore of the {label} archive failed ({r.returncode}): {r.stderr.strip()}")
                return EXIT_PARTIAL
            say(f"restore {label}: " + r.stderr.strip().splitlines()[-1].removeprefix("imsrestore: "))

        # prove the chain as cron would: every digest, the chain's continuity, a test restore
        # into a scratch store compared with the archives, and the live store against them
        r = _cmd(src_home, "asm.cli.imsverify", "-f", full, "-f", incr, "--restore-test", "--against-store")
        verified = r.returncode == EXIT_OK
        say("imsverify:    " + ((r.stdout or r.stderr).strip().splitlines() or ["(no output)"])[-1]
            .removeprefix("imsverify: ") + ("" if verified else f" (exit {r.returncode})"))
        # and the restored store is the chain, exactly (what a disaster recovery proves
        # before clients come back)
        r = _cmd(dst_home, "asm.cli.imsverify", "-f", full, "-f", incr, "--against-store", "--exact")
        verified = verified and r.returncode == EXIT_OK
        say("imsverify of the restored store: " + ((r.stdout or r.stderr).strip().splitlines() or ["(no output)"])[-1]
            .removeprefix("imsverify: ") + ("" if r.returncode == EXIT_OK else f" (exit {r.returncode})"))

        a, b = fingerprint(src), fingerprint(open_store(Config(dst_home)))
        msgs = [k for k in a if isinstance(k, tuple) and len(k) == 3]
        same = sum(1 for k in msgs if a.get(k) == b.get(k))
        folders = [k for k in a if isinstance(k, tuple) and len(k) == 2]
        fsame = sum(1 for k in folders if a.get(k) == b.get(k))
        extra = [k for k in b if k not in a]
        size = sum(os.path.getsize(x) for x in (full, incr))
        say(f"checked {len(msgs)} messages: {same} identical (bytes, UID, flags, keywords, INTERNALDATE); "
            f"{fsame}/{len(folders)} folders with the same UIDVALIDITY, UIDNEXT and subscription; "
            f"{len(a['links'])} single-copy groups, {'all' if a['links'] == b['links'] else 'NOT all'} "
            f"hard-linked again; archives {human(size)}")
        ok = same == len(msgs) and fsame == len(folders) and not extra and a["links"] == b["links"] and verified
        say("RESULT: " + ("the restored store is identical to the source" if ok
                          else f"DIFFERENCES found ({len(msgs) - same} messages, {len(folders) - fsame} folders, "
                               f"{len(extra)} extra{'' if verified else ', imsverify failed'})"))
        return EXIT_OK if ok else EXIT_PARTIAL
    finally:
        if not args.keep:
            remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
