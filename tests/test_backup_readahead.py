"""The cold-cache read-ahead of a full backup (asm/backupwarm.py, issue 17): a forked
child that asks the kernel for the files the backup will read, a bounded window ahead
of it.  What a user relies on: the archive is the same bytes with it and without it;
the child keeps none of the backup's descriptors and ends with the backup, however
the backup ends; the window holds; incrementals and ``backup.readahead no`` leave it
out.  (tests/conftest.py makes every full backup of the suite read ahead from its first
folder, so every other test checks it too.)"""
from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import tarfile
import time

import pytest

from asm import backupwarm
from asm.backup import BackupOptions, _warmer
from asm.backupstate import BaseState
from asm.logical import Target
from asm.store import open_store
from tests.dovecot_lab import dovecot_lab, message
from tests.helpers import DRIVERS, command, command_env, make_home, put, run


# -- the walk, as a property -----------------------------------------------------------

class Backup:
    """A simulated backup going through ``plans`` (its position as the child hears it);
    each look may move it on by a random number of bytes, each wait always does."""

    def __init__(self, sizes: list, rng: random.Random, moves: float):
        self.sizes, self.rng, self.moves = sizes, rng, moves
        self.i, self.taken, self.done = 0, 0, False
        self.start = [None] * len(sizes)

    def step(self) -> None:
        if self.done:
            return
        self.taken += self.rng.randint(1, 40_000)
        while self.taken >= self.sizes[self.i]:
            self.taken = 0
            self.i += 1
            if self.i == len(self.sizes):
                self.done = True         # the backup ended: its pipe closed
                self.i -= 1
                return

    def read(self) -> None:
        if self.rng.random() < self.moves:
            self.step()

    def wait(self) -> None:
        self.waits += 1
        self.step()

    waits = 0

    def ahead(self, asked: int) -> int:
        start = self.start[self.i]
        return 0 if start is None else asked - start - self.taken


def _tree(root, rng: random.Random, n: int) -> tuple[list, list, dict]:
    """``n`` folders on disk: Maildir-like (files, dirs) and classic-like (hash
    subdirectories to descend into, a subfolder not to); plans, listings, sizes."""
    plans, listing, sizes = [], [], {}
    for k in range(n):
        d = root / f"f{k}"
        if rng.random() < 0.15:
            plans.append(None)
            listing.append([])
            continue
        if rng.random() < 0.5:
            for sub in ("tmp", "new", "cur"):
                (d / sub).mkdir(parents=True)
            (d / "dovecot-uidlist").write_bytes(b"3 V1 N1\n")
            names = []
            for j in range(rng.randint(0, 30)):
                sub = rng.choice(["new", "cur", "cur"])
                name = f"{1700000000 + rng.randint(0, 10**6)}.M{j}P1.host,S=1"
                size = rng.choice([0, 300, 5000, 70_000, 300_000])
                (d / sub / name).write_bytes(b"x" * size)
                sizes[str(d / sub / name)] = size
                names.append((sub, name))
            plan = backupwarm.Plan([str(d / "dovecot-uidlist")], [str(d / s) for s in ("tmp", "new", "cur")])
            want = [str(d / s / nm) for s in ("tmp", "new", "cur")
                    for nm in sorted((nm for sb, nm in names if sb == s), key=lambda x: (len(x.split(".")[0]), x))]
        else:
            d.mkdir(parents=True)
            (d / "=Sub").mkdir()
            (d / "=Sub" / "1.msg").write_bytes(b"not this folder's")
            (d / "store.idx").write_bytes(b"i" * 100)
            sizes[str(d / "store.idx")] = 100
            uids = sorted(rng.sample(range(1, 2000), rng.randint(0, 25)))
            for uid in uids:
                h = d / f"{uid >> 8:02x}"
                h.mkdir(exist_ok=True)
                size = rng.choice([10, 4000, 90_000])
                (h / f"{uid}.msg").write_bytes(b"m" * size)
                sizes[str(h / f"{uid}.msg")] = size
            plan = backupwarm.Plan([], [str(d)], "[0-9a-f]{2,}")
            hashes = sorted({f"{uid >> 8:02x}" for uid in uids}, key=lambda x: (len(x), x))
            entries = sorted([("f", "store.idx")] + [("d", h) for h in hashes], key=lambda e: (len(e[1].split(".")[0]), e[1]))
            want = []
            for kind, name in entries:
                if kind == "f":
                    want.append(str(d / name))
                else:
                    want += [str(d / name / f"{u}.msg") for u in uids if f"{u >> 8:02x}" == name]
        plans.append(plan)
        listing.append(want)
    return plans, listing, sizes


@pytest.mark.parametrize("seed, sort_max", [(s, backupwarm.SORT_MAX) for s in range(12)] +
                         [(s, 4) for s in range(12, 18)])
def test_the_walk_asks_in_order_within_the_window_and_skips_what_the_backup_passed(
        tmp_path, seed, sort_max, monkeypatch):
    """(sort_max 4: directories too big to sort are walked as listed, never held whole;
    then the order inside a directory is the file system's.)"""
    monkeypatch.setattr(backupwarm, "SORT_MAX", sort_max)
    rng = random.Random(seed)
    plans, listing, sizes = _tree(tmp_path, rng, rng.randint(5, 40))
    if sort_max == 4:
        # the order inside a directory is not known: compare each folder as a set
        listing = [sorted(paths) for paths in listing]
    plan_of = {p: k for k, paths in enumerate(listing) for p in paths}
    extra = {p for plan in plans if plan for p in plan.files}

    # 1. a backup that never moves and a window without end: every file, once, in order
    asked: list = []
    still = Backup([sum(sizes.get(p, 0) for p in paths) + 1 for paths in listing], rng, 0.0)
    backupwarm.walk(plans, 1 << 60, still, lambda p: asked.append(p) or sizes.get(p, 0))
    got_all = [p for p in asked if p not in extra]
    if sort_max == 4:
        got_all = [p for k in range(len(listing)) for p in sorted(q for q in got_all if plan_of[q] == k)]
    assert got_all == [p for paths in listing for p in paths]
    assert still.waits == 0

    # 2. a backup on the move and a small window: never more than the window ahead (one
    # file past it at most), never a file of a folder the backup has passed, in order
    for window, moves in ((0, 0.3), (50_000, 0.05), (400_000, 0.5)):
        b = Backup([sum(sizes.get(p, 0) for p in paths) + 1 for paths in listing], rng, moves)
        got: list = []
        total = [0]

        def ask(p):
            if p in extra:
                return 0
            assert plan_of[p] >= b.i, f"asked {p} of folder {plan_of[p]} after the backup passed it"
            assert b.ahead(total[0]) <= window, (window, b.ahead(total[0]))
            got.append(p)
            total[0] += sizes.get(p, 0)
            return sizes.get(p, 0)
        backupwarm.walk(plans, window, b, ask)
        order = [(plan_of[p], listing[plan_of[p]].index(p) if sort_max != 4 else 0) for p in got]
        assert order == sorted(order) and len(set(got)) == len(got)
        if window == 0 and any(sizes.get(p) for p in got):
            assert b.waits > 0                   # the window made it wait for the backup


def test_the_walk_stops_when_the_backup_is_done(tmp_path):
    rng = random.Random(5)
    plans, listing, sizes = _tree(tmp_path, rng, 10)
    b = Backup([1] * len(plans), rng, 0.0)
    b.done = True
    asked: list = []
    backupwarm.walk(plans, 1 << 60, b, lambda p: asked.append(p) or 0)
    assert asked == []


# -- when it is used -------------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
def test_only_a_full_backup_reads_ahead(tmp_path, driver):
    cfg = make_home(tmp_path / "home", driver)
    store = open_store(cfg)
    store.create_user("ann")
    store.create_folder("ann", "Work")
    targets = [Target("primary", "ann", "", ["INBOX", "Work"], set())]
    w = _warmer(store, targets, BackupOptions())
    assert isinstance(w, backupwarm.Warmer)
    w.close()
    assert _warmer(store, targets, BackupOptions(since=time.time() - 60)) is None
    assert _warmer(store, targets, BackupOptions(base=BaseState.__new__(BaseState))) is None
    cfg.set("backup.readahead", "no")
    assert _warmer(open_store(cfg), targets, BackupOptions()) is None


def test_the_child_is_forked_only_past_its_start(tmp_path, monkeypatch):
    """Below 16 MiB taken (by default) a backup does not fork: the fork, its pages
    copied as the backup writes them, would cost a small backup more than it wins."""
    monkeypatch.delenv("IMS_READAHEAD_AFTER", raising=False)
    (tmp_path / "d").mkdir()
    w = backupwarm.Warmer([backupwarm.Plan([], [str(tmp_path / "d")])] * 40)
    try:
        for i in range(20):
            w.enter(i)
            for _ in range(100):
                w.took(8000)                      # 16 MB in all: just below 16 MiB
        assert w._pid is None
        w.enter(20)
        w.took(2 << 20)
        assert w._pid is not None and not _ended(w._pid)
        pid = w._pid
    finally:
        w.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)               # reaped by close()


# -- the same archive ------------------------------------------------------------------

def members(path) -> list:
    """Every member as a restore reads it: name, type, link, size, pax records (the
    digest of a directory member chains the archive id, which differs per run), data."""
    out = []
    with tarfile.open(path) as t:
        for m in t:
            if m.name.startswith("ims-asm."):
                continue
            f = t.extractfile(m)
            pax = tuple(sorted((k, v) for k, v in m.pax_headers.items()
                               if not (m.isdir() and k.endswith("imsasm.digest"))))
            out.append((m.name, m.type, m.linkname, m.size, pax,
                        hashlib.sha256(f.read()).hexdigest() if f else None))
    return out


def _both_ways(home, tmp_path) -> tuple[list, list]:
    with_ra = tmp_path / "with.ims"
    run(home, "imsbackup", "-f", with_ra, "/", check=0, env={"IMS_READAHEAD_AFTER": "0"})
    run(home, "msconfig", "set", "backup.readahead", "no", check=0)
    without = tmp_path / "without.ims"
    run(home, "imsbackup", "-f", without, "/", check=0)
    run(home, "msconfig", "set", "backup.readahead", "yes", check=0)
    return members(with_ra), members(without)


def test_a_dovecot_store_gives_the_same_archive_with_and_without_read_ahead(tmp_path):
    with dovecot_lab("plain") as lab:
        home = tmp_path / "ims"
        make_home(home, "maildir", **{"partition:primary.path": lab.store, "store.owner": lab.mail_user})
        rng = random.Random(3)
        for n in range(60):
            rcpts = rng.sample(lab.logins[:3], rng.randint(1, 3))      # one inode, many names
            lab.deliver(rcpts, message(f"m{n}", size=rng.choice([400, 9000, 80_000, (1 << 20) + 7])))
        with lab.imap(lab.logins[0]) as imap:
            imap.create("Archive/2026")
            imap.select("INBOX")
            uids = imap.uids()
            imap.uid_copy(uids[:5], "Archive/2026")
            imap.uid_move(uids[5:9], "Archive/2026")
            imap.uid_store(uids[10:15], "+FLAGS", ["\\Seen", "$Label1"])
            imap.unselect()
            imap.rename("Archive/2026", "Archive/2026 Q4")
        a, b = _both_ways(home, tmp_path)
    assert len(a) > 60 and a == b


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_same_archive_with_and_without_read_ahead(tmp_path, driver):
    from tests.restore_faults import build_source
    home = tmp_path / "home"
    store = open_store(make_home(home, driver))
    build_source(store)
    a, b = _both_ways(home, tmp_path)
    assert len(a) > 60 and a == b


# -- the child -------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("driver, how", [("maildir", "kill"), ("classic", "kill"), ("classic", "term"),
                                         ("maildir", "finish"), ("classic", "stuck")])
def test_the_child_keeps_nothing_of_the_backup_and_ends_with_it(tmp_path, driver, how):
    """(classic keeps its mailbox list open: the child must not hold it too.)  A child
    that does not end (stuck: stopped here, in life blocked on a hung mount) does not
    hold the backup: the read-ahead is only advice."""
    home = tmp_path / "home"
    store = open_store(make_home(home, driver))
    store.create_user("ann")
    for n in range(48):
        put(store, "ann", "INBOX", n, size=1 << 20)
    env = command_env(home, {"IMS_READAHEAD_AFTER": str(4 << 20)})
    p = subprocess.Popen([command("imsbackup"), "-f", "-", "/"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    try:
        got = 0
        while got < 8 << 20:                        # past 4 MiB taken: the child is forked
            chunk = p.stdout.read(1 << 16)
            assert chunk, p.stderr.read()
            got += len(chunk)
        deadline = time.monotonic() + 10
        kids = _children(p.pid)
        while not kids and time.monotonic() < deadline:
            time.sleep(0.05)
            kids = _children(p.pid)
        assert len(kids) == 1, kids
        kid = kids[0]
        fds = {int(fd): os.readlink(f"/proc/{kid}/fd/{fd}") for fd in os.listdir(f"/proc/{kid}/fd")}
        assert all(fds[fd] == "/dev/null" for fd in (0, 1, 2)), fds
        rest = {fd: t for fd, t in fds.items() if fd > 2}
        assert len(rest) == 1 and next(iter(rest.values())).startswith("pipe:"), fds
        if how == "kill":
            p.kill()
        elif how == "term":
            p.terminate()
        else:
            if how == "stuck":
                os.kill(kid, signal.SIGSTOP)
            deadline = time.monotonic() + 60
            while True:                             # to the end of the output, or fail
                ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"the backup did not end while its read-ahead child was {how}"
                if not os.read(p.stdout.fileno(), 1 << 16):
                    break
        p.wait(30)
        deadline = time.monotonic() + 10
        while not _ended(kid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ended(kid), f"the read-ahead child {kid} outlived the backup ({how})"
        if how in ("finish", "stuck"):
            assert p.returncode == 0, p.stderr.read()
        elif how == "term":
            assert p.returncode != 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
