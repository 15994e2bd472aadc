"""The kill and full-disk harness of restores, shared by tests/test_restore_kill.py and
bench/bench_restore_kill.py.

A source store of either driver is backed up once; each trial restores that archive
into a fresh installation with a fault (tests/faults.py) injected before one on-disk
step, runs the same command again (maybe killed once more), and judges the target:
exit statuses, what a client sees (UIDVALIDITY, UIDNEXT, UIDs, bytes, flags, keywords,
INTERNALDATE, subscriptions), single-copy links, no duplicate file, nothing left in
tmp/, the spool or as a lock or temporary file.
"""
from __future__ import annotations

import io
import os
import random
import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from asm.config import Config
from asm.store import open_store
from tests.faults import count_steps, run_with_fault
from tests.helpers import inode_groups, make_home, run, state

FOLDERS = ["Sent", "Work", "Work/2023", "Work/2023/Q4", "Réunions/Été", "日本語", "Bulk Mail"]


def build_source(store, users: int = 3, messages: int = 60, big: int = (1 << 20) + 4321,
                 seed: int = 1) -> None:
    """``users`` users with nested and non-ASCII folders, flags and keywords, messages
    delivered to several users as one inode, one message over 1 MiB, a folder whose
    UIDNEXT is far above its last UID, one unsubscribed folder."""
    rng = random.Random(seed)
    names = [f"u{i}" for i in range(users - 1)] + ["zoë"]
    for u in names:
        store.create_user(u)
        for f in FOLDERS:
            store.create_folder(u, f, subscribed=(f != "Bulk Mail"))
    kw = ["$Label1", "Important", "$Junk"]
    flags = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"]
    for n in range(messages):
        folder = "INBOX" if n % 3 == 0 else rng.choice(FOLDERS)
        rcpts = rng.sample(names, 2) if n % 5 == 0 else [rng.choice(names)]
        body = (f"From: a@example.com\r\nSubject: message {n}\r\n\r\n".encode()
                + b"line of text\r\n" * rng.randint(1, 200))
        out = store.deliver(rcpts, io.BytesIO(body), folder=folder,
                            internaldate=1_600_000_000 + n * 3600)
        for user, info in out.items():
            fl = rng.sample(flags, rng.randint(0, 2))
            kws = rng.sample(kw, rng.randint(0, 2)) if n % 4 == 0 else []
            if fl or kws:
                store.set_flags(user, folder, info.uid, fl, kws)
    store.append(names[0], "Work", io.BytesIO(b"Subject: big\r\n\r\n" + b"B" * big),
                 flags=["\\Seen"], internaldate=1_650_000_000)
    store.set_folder(names[1], "Sent", uidnext=store.folder(names[1], "Sent").uidnext + 5000)


def backup(home, archive) -> str:
    run(home, "imsbackup", "-f", archive, "/", check=0)
    return str(archive)


def leftovers(home) -> list[str]:
    """Files a finished run must not leave: anything in a Maildir tmp/ or the spool,
    lock files, temporary and stale names."""
    out = []
    for d, dirs, files in os.walk(str(home)):
        base = os.path.basename(d)
        for f in files:
            p = os.path.join(d, f)
            if f == ".msg.conf.lock" or (f == "restore.lock" and base == "data"):
                continue                 # flock / record-lock files, kept by design
            if base in ("tmp", ".ims-tmp") or "/data/spool" in d or f.endswith(".lock") or ".stale." in f \
                    or f.endswith(".tmp") or f.startswith(".tmp-") or ".tmp." in f or f.startswith(".temp."):
                out.append(p)
        for sub in dirs:
            if sub.startswith(".ims-new"):
                out.append(os.path.join(d, sub))
    return sorted(out)


def message_files(home, driver: str) -> int:
    """How many message files the store holds (a duplicate shows as one too many)."""
    n = 0
    for d, _, files in os.walk(str(home)):
        if driver == "maildir":
            if os.path.basename(d) in ("cur", "new"):
                n += len(files)
        elif os.path.basename(os.path.dirname(d)) != "queue":
            n += sum(1 for f in files if f.endswith(".msg"))
    return n


@dataclass
class Outcome:
    point: int
    first: int                        # exit status of the faulted run (-9: killed)
    second: int | None = None         # of a second faulted run, if any
    final: int | None = None          # of the clean rerun
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Harness:
    """One archive, restored again and again into fresh installations of ``driver``."""

    rerun_completed = True      # run the command once more after a faulted run that completed
                                # (False where a completed command run again does more: -n)

    def __init__(self, workdir, source_store, archive: str, driver: str, stream: bool = False,
                 users: list | None = None):
        """``users``: restore only these (paths /primary/user/NAME), the rest of the
        archive passing by; from a stream their links to others' first copies go
        through the spool."""
        self.work = str(workdir)
        self.archive = archive
        self.driver = driver
        self.stream = stream
        self.want = state(source_store, users=set(users) if users else None)
        groups = [[x for x in g if users is None or x[0] in users] for g in inode_groups(source_store)]
        self.want_links = sorted(g for g in groups if len(g) > 1)
        self.want_files = sum(1 for k in self.want if len(k) == 3)   # one name per message
        self.argv = ["imsrestore", "-c", "y", "-f", "-" if stream else archive] + \
            [f"/primary/user/{u}" for u in users or []]
        self.trial = 0
        self._mutex = threading.Lock()

    def _input(self):
        if not self.stream:
            return None
        with open(self.archive, "rb") as f:
            return f.read()

    def fresh(self) -> str:
        with self._mutex:
            self.trial += 1
            n = self.trial
        home = os.path.join(self.work, f"t{n}")
        shutil.rmtree(home, ignore_errors=True)
        make_home(home, self.driver)
        return home

    def count(self) -> int:
        home = self.fresh()
        n, p = count_steps(self.argv, home, self.work, env={"IMS_HOME": home}, input=self._input())
        assert p.returncode == 0, p.stderr
        problems = self.judge(home)
        assert not problems, problems
        shutil.rmtree(home, ignore_errors=True)
        return n

    def run_fault(self, home: str, spec: str):
        return run_with_fault(self.argv, home, spec, env={"IMS_HOME": home}, input=self._input())

    def judge(self, home: str) -> list[str]:
        problems = []
        target = open_store(Config(home), create=False)
        got = state(target)
        if got != self.want:
            missing = [k for k in self.want if k not in got]
            extra = [k for k in got if k not in self.want]
            differ = [k for k in self.want if k in got and got[k] != self.want[k]]
            problems.append(f"state differs: {len(missing)} missing {missing[:3]}, {len(extra)} extra "
                            f"{extra[:3]}, {len(differ)} differ {[(k, got[k], self.want[k]) for k in differ[:2]]}")
        links = inode_groups(target)
        if links != self.want_links:
            problems.append(f"single-copy links differ: {len(links)} groups, want {len(self.want_links)}")
        files = message_files(home, self.driver)
        if files != self.want_files:
            problems.append(f"{files} message files, want {self.want_files}")
        left = leftovers(home)
        if left:
            problems.append(f"left behind: {left[:5]}")
        return problems

    def kill_trial(self, point: int, second: int | None = None, mode: str = "kill") -> Outcome:
        """Fault at ``point``; then, if ``second``, the same command killed at that
        point of its own run; then the same command clean."""
        home = self.fresh()
        p = self.run_fault(home, f"{mode}:{point}")
        out = Outcome(point, p.returncode)
        want_first = -signal.SIGKILL if mode == "kill" else 13
        if p.returncode not in (want_first, 0):
            out.problems.append(f"faulted run: exit {p.returncode}: {p.stderr[-400:]!r}")
        if mode == "enospc" and p.returncode == 13 and p.stderr.count(b"\n") != 1:
            out.problems.append(f"full disk: not one line: {p.stderr[-400:]!r}")
        if second is not None and (self.rerun_completed or p.returncode != 0):
            # (a point past the run's last step lets it complete: where a completed command
            # run again does more (-i: one more copy), it is not run again)
            p2 = self.run_fault(home, f"kill:{second}")
            out.second = p2.returncode
            if p2.returncode not in (-signal.SIGKILL, 0):
                out.problems.append(f"second run: exit {p2.returncode}: {p2.stderr[-400:]!r}")
        if self.rerun_completed or (p.returncode, out.second) not in ((0, None), (-signal.SIGKILL, 0)):
            p3 = run(home, *self.argv, env={"IMS_HOME": home}, input=self._input())
            out.final = p3.returncode
            if p3.returncode != 0:
                out.problems.append(f"rerun: exit {p3.returncode}: {p3.stderr[-600:]!r}")
        out.problems += self.judge(home)
        if out.ok:
            shutil.rmtree(home, ignore_errors=True)
        return out

    def trials(self, specs: list, workers: int = 2) -> list[Outcome]:
        """Run ``kill_trial(**spec)`` for each spec, ``workers`` at a time (each trial is
        its own installation and its own processes)."""
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(lambda spec: self.kill_trial(**spec), specs))
