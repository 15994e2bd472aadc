"""A power cut during a restore, then the same command: exact (docs/restore-design.md §2-3).

A power cut is a kill that also loses what was not synced.  The journal
($IMS_HOME/data/restore-journal.db, SQLite in WAL mode, synchronous=NORMAL) is synced by
nothing but the store's syncs (`Restorer._record_done`, the batch's end): a power cut
loses every journal change since the last of them, the `running` records of the folders
the run began (Journal.start) and the completion records of the last batch.  The tests
kill a restore under the fault harness (tests/fault/sitecustomize.py), which copies the
journal's committed state aside at the start and after every sync (IMS_FAULT_DURABLE),
and put that copy back in place of the journal: the store's files are kept (the worst
case for a rerun: files there that the journal knows nothing of).  The same command run
again must then end as an uninterrupted run: the store as archived, as a client sees it
(UIDs, bytes, flags, keywords, dates, UIDVALIDITY, UIDNEXT), links, no duplicate file,
nothing left behind, and the journal rows as the uninterrupted run left them (each
folder a mirror of the archive), so the next link of the chain, restored after it,
restores as a chain: the store as at the incremental.

The points are spread over the run from seeds that change from run to run
(IMS_KILL_SEED repeats one), as in tests/test_restore_kill.py.
"""
from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess

import pytest

from asm.config import Config
from asm.store import open_store
from tests.dovecot_lab import lab_fixture
from tests.faults import count_steps, run_with_fault, spread
from tests.helpers import DRIVERS, in_home, inode_groups, make_home, run, state
from tests.restore_faults import Harness, Outcome, backup, build_source

SEED = int(os.environ.get("IMS_KILL_SEED") or __import__("time").time_ns() % 1_000_000)
POINTS = 8               # per driver, test and seed
SEEDS = 2
JOURNAL = os.path.join("data", "restore-journal.db")


def _rows(home) -> dict:
    path = os.path.join(str(home), JOURNAL)
    if not os.path.exists(path):
        return {}
    con = sqlite3.connect(path)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'restored'").fetchone() is None:
            return {}        # cut before the journal's first commit made its tables: no rows
        return {(u, f): rest for u, f, *rest in con.execute(
            "SELECT user, folder, archive_id, mirror, running, uidvalidity, uidnext, count, gaps "
            "FROM restored")}
    finally:
        con.close()


class PowerCutHarness(Harness):
    """``argv`` (a restore into an installation made by ``prepare``) killed at a point,
    the journal then put back as the last sync left it; the same command run again; then
    ``after`` (the next link of the chain) restored, which must give ``want_after``."""

    def __init__(self, workdir, source_store, archive: str, driver: str, after: str, want_after: dict,
                 prepare=None):
        super().__init__(workdir, source_store, archive, driver)
        self.after, self.want_after, self.prepare = after, want_after, prepare
        self.want_rows = None
        self.lost = 0               # trials whose journal lost records
        self.judged = 0
        self.template = None

    def fresh(self) -> str:
        home = super().fresh()
        if self.prepare is not None:
            with self._mutex:
                if self.template is None:
                    self.template = os.path.join(self.work, "prepared")
                    make_home(self.template, self.driver)
                    run(self.template, *self.prepare, env={"IMS_HOME": self.template}, check=0)
            shutil.rmtree(home)
            # (copied, hard links kept: a restore per trial would double the test's time;
            # its paths are all under IMS_HOME, the configuration names none)
            subprocess.run(["cp", "-a", self.template, home], check=True)
        return home

    def count(self) -> int:
        home = self.fresh()
        n, p = count_steps(self.argv, home, self.work, env={"IMS_HOME": home})
        assert p.returncode == 0, p.stderr
        self.want_rows = _rows(home)
        assert self.want_rows and all(r[1] == 1 and r[2] is None for r in self.want_rows.values()), \
            self.want_rows
        assert not self.judge(home)
        shutil.rmtree(home, ignore_errors=True)
        return n

    def run_fault(self, home: str, spec: str):
        durable = os.path.join(self.work, f"durable-{os.path.basename(home)}.db")
        p = run_with_fault(self.argv, home, spec, env={"IMS_HOME": home, "IMS_FAULT_DURABLE": durable})
        if p.returncode != 0:
            before = _rows(home)
            for ext in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(os.path.join(home, JOURNAL + ext)):
                    os.unlink(os.path.join(home, JOURNAL + ext))
            if os.path.exists(durable):
                shutil.copyfile(durable, os.path.join(home, JOURNAL))
            if _rows(home) != before:
                with self._mutex:
                    self.lost += 1
        return p

    def judge(self, home: str) -> list[str]:
        problems = super().judge(home)
        rows = _rows(home)
        if self.want_rows is not None and rows != self.want_rows:
            differ = sorted(k for k in set(rows) | set(self.want_rows) if rows.get(k) != self.want_rows.get(k))
            problems.append(f"journal rows differ for {len(differ)} folders, e.g. "
                            + "; ".join(f"{k}: {rows.get(k)} want {self.want_rows.get(k)}" for k in differ[:2]))
        with self._mutex:
            self.judged += 1
            check_after = self.judged % 4 == 1
        if not problems and self.want_rows is not None and self.after is not None and check_after:
            # (one trial in four: the rows compared above are what the next link reads)
            run(home, "imsrestore", "-c", "y", "-f", self.after, env={"IMS_HOME": home}, check=0)
            got = state(open_store(Config(home), create=False))
            if got != self.want_after:
                differ = sorted(k for k in set(got) | set(self.want_after) if got.get(k) != self.want_after.get(k))
                problems.append(f"the next link then: {len(differ)} differ from the incremental: {differ[:3]}")
        return problems


def _source(tmp_path, driver):
    """A store, its full backup, changes (flags, expunges, new mail, a new folder), and
    the incremental by base; the store as at the full and as at the incremental, each
    as (state, single-copy link groups)."""
    home = tmp_path / "src"
    cfg = make_home(home, driver)
    with in_home(home):
        store = open_store(cfg)
        build_source(store, users=2, messages=20, big=1000)
        full = backup(home, tmp_path / "full.ims")
        at_full = state(store), _links(store)
        for u in store.users("primary"):
            for f in store.folder_names(u):
                msgs = store.messages(u, f)
                if msgs:
                    store.set_flags(u, f, msgs[-1].uid, ["\\Seen", "\\Flagged"], ["$Later"])
                if len(msgs) > 1:
                    store.expunge(u, f, [msgs[0].uid])
            put_msg = b"Subject: after the full\r\n\r\nnew\r\n"
            store.append(u, "INBOX", io.BytesIO(put_msg), flags=["\\Answered"])
            store.create_folder(u, "New since", subscribed=True)
            store.append(u, "New since", io.BytesIO(b"Subject: in a new folder\r\n\r\nnew\r\n"))
        incr = tmp_path / "incr.ims"
        run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
        at_incr = state(store), _links(store)
    return store, str(full), str(incr), at_full, at_incr


def _links(store) -> list:
    return sorted(g for g in inode_groups(store) if len(g) > 1)


def _want(h: PowerCutHarness, at) -> None:
    h.want, h.want_links = at
    h.want_files = sum(1 for k in h.want if len(k) == 3)


def _trials(h: PowerCutHarness, salt: int, driver: str) -> None:
    total = h.count()
    outcomes: list[Outcome] = []
    for s in range(SEEDS):
        seed = SEED * 100 + DRIVERS.index(driver) * 10 + salt * 3 + s
        outcomes += h.trials([dict(point=p) for p in spread(total, POINTS, seed)])
    bad = [o for o in outcomes if not o.ok]
    assert not bad, (f"IMS_KILL_SEED={SEED}: {len(bad)} of {len(outcomes)} trials wrong:\n"
                     + "\n".join(f"  point {o.point}: exits {o.first}/{o.final}: {o.problems}" for o in bad[:5]))
    assert sum(o.first == -9 for o in outcomes) >= len(outcomes) - SEEDS
    assert h.lost >= len(outcomes) // 2, f"only {h.lost} trials lost journal records: the cut is not simulated"


@pytest.mark.parametrize("driver", DRIVERS)
def test_power_cut_in_a_restore_then_the_same_command_is_exact(tmp_path, driver):
    """The full restored into an empty installation, cut at POINTS points per seed: the
    rerun gives the full exactly, every folder a mirror in the journal, and the
    incremental restored after it gives the store as at the incremental.  (Before, a
    folder whose files were there without its 'under way' record was merged into: exit
    0, the journal calling it no mirror, and the incremental then merged too, keeping
    the mail deleted since the full and the flags as they were.)"""
    store, full, incr, at_full, at_incr = _source(tmp_path, driver)
    h = PowerCutHarness(tmp_path, store, full, driver, incr, at_incr[0])
    _want(h, at_full)
    _trials(h, 0, driver)


@pytest.mark.parametrize("driver", DRIVERS)
def test_power_cut_in_the_next_link_then_the_same_command_is_exact(tmp_path, driver):
    """The incremental restored as its own command after the full, cut at POINTS points
    per seed: the rerun continues each folder as the chain it was (expunges, flags,
    UIDNEXT), never merges into it."""
    store, full, incr, at_full, at_incr = _source(tmp_path, driver)
    h = PowerCutHarness(tmp_path, store, incr, driver, None, None,
                        prepare=["imsrestore", "-c", "y", "-f", full])
    _want(h, at_incr)
    _trials(h, 1, driver)


marked_lab = lab_fixture(params=["plain", "fs"])


def test_dovecot_takes_a_restore_mark_for_neither_mail_nor_a_folder(marked_lab, tmp_path):
    """The maildir driver's mark (an empty ``ims-restoring.<mark>`` beside cur/) in INBOX
    (the Maildir++ root, where a folder is a dot directory) and in a folder and a
    subfolder (LAYOUT=fs: a folder is any directory): a client sees the same folders,
    messages, UIDs and UIDNEXT, also after doveadm force-resync, and can still delete
    a folder that holds one (a killed restore's)."""
    from tests.test_dovecot_chain_kill import configure
    lab = marked_lab
    login = lab.logins[0]
    with lab.imap(login) as c:
        for name in ("Work", "Work/Sub", "Gone"):
            c.create(name)
            c.append(name, b"Subject: in %s\r\n\r\nbody\r\n" % name.encode(), flags=["\\Seen"])
    lab.deliver([login], b"Subject: hello\r\n\r\nbody\r\n")
    before = lab.client_state(login)
    with lab.imap(login) as c:
        listed = c.list()
    home = tmp_path / "home"
    configure(lab, home)
    with in_home(home):
        store = open_store(Config(str(home)))
        mark = "0e9d0c55-3f0c-4b8e-9e59-8c6f7b8a1d2e.exact.-"
        for f in ("INBOX", "Work", "Work/Sub", "Gone"):
            store.mark_restoring(login, f, mark)
            assert store.restoring_marks(login, f) == [mark]
        ours = state(store)
    assert lab.client_state(login) == before
    with lab.imap(login) as c:
        assert c.list() == listed
    lab.doveadm("force-resync", "-u", login, "*")
    assert lab.client_state(login) == before
    with lab.imap(login) as c:
        c.delete("Gone")
        assert "Gone" not in c.list()
    with in_home(home):
        store = open_store(Config(str(home)))
        assert {k: v for k, v in state(store).items() if "Gone" not in k[1]} == \
            {k: v for k, v in ours.items() if "Gone" not in k[1]}
        for f in ("INBOX", "Work", "Work/Sub"):
            store.unmark_restoring(login, f, mark)
            assert store.restoring_marks(login, f) == []
