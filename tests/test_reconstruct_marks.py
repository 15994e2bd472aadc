"""reconstruct and the marks the classic store keeps for what a kill cut short
(docs/classic-store.md): a folder's deletion (``remains``), a folder a restore listed
before its index was placed (``unplaced``), and a restore under way in a folder (its
index's ``meta.restoring``).  Each store is left by a real kill (the fault harness,
tests/fault/sitecustomize.py) at every step of what it cuts, then reconstructed; it must
never drop mail that is there, never list a folder without its files, finish a deletion
cut short, and leave a restore's mark for the restore, which, run again, is exact."""
from __future__ import annotations

import io
import os
import random
import shutil
import sqlite3
import time

from asm.config import Config
from asm.store import open_store
from tests.faults import run_with_fault, signalled_copy
from tests.helpers import in_home, make_home, run, state

SEED = int(os.environ.get("IMS_KILL_SEED") or time.time_ns() % 1_000_000)


def _store(home):
    cfg = make_home(home, "classic")
    with in_home(home):
        store = open_store(cfg)
        store.create_user("alice")
        for f, n in (("INBOX", 1), ("Old", 3), ("Old/Sub", 1), ("Keep", 2)):
            if f != "INBOX":
                store.create_folder("alice", f, subscribed=True)
            for i in range(n):
                store.append("alice", f, io.BytesIO(f"Subject: {f} {i}\r\n\r\nbody\r\n".encode()),
                             flags=["\\Seen"] if i else [])
        return store


def _steps(argv, home, tmp, input=None) -> list[tuple[int, str]]:
    log = tmp / f"steps-{os.path.basename(str(home))}"
    p = run_with_fault(argv, home, "count:/dev/null", env={"IMS_HOME": str(home), "IMS_FAULT_LOG": str(log)})
    assert p.returncode == 0, p.stderr
    return [(int(n), what) for n, _, what in (line.partition(" ") for line in log.read_text().splitlines())
            if n.isdigit()]


def _msg_files(home) -> int:
    return sum(1 for d, _, fs in os.walk(str(home)) for f in fs if f.endswith(".msg") and "/queue/" not in d)


def test_reconstruct_finishes_a_deletion_cut_short_at_every_step(tmp_path):
    """mboxutil -d killed at every step after the folder left the list: reconstruct
    (-m, and the folder indexes) removes what is left of its files, keeps its subfolder
    and every other folder whole, does not list it again, and exits 0.  (Before, it
    listed the folder again from what was left of it, some messages gone, and the
    record of its deletion stayed: the next mboxutil -d or a folder made under that
    name removed the files of a listed folder.)"""
    base = tmp_path / "base"
    _store(base).close()
    want = {k: v for k, v in state(open_store(Config(str(base)), create=False)).items() if k[:2] != ("alice", "Old")}
    argv = ["mboxutil", "-d", "user/alice/Old"]
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    steps = _steps(argv, probe, tmp_path)
    first = next(n for n, what in steps if what.startswith("sqlite: DELETE FROM folders"))
    first = next(n for n, what in steps if n > first and what.startswith("sqlite: COMMIT"))   # (unlisted)
    bad = []
    for point in range(first + 1, len(steps) + 1):
        home = tmp_path / f"k{point}"
        shutil.copytree(base, home)
        p = run_with_fault(argv, home, f"kill:{point}", env={"IMS_HOME": str(home)})
        assert p.returncode == -9, p.stderr
        p = run(home, "reconstruct", "-m", "-r", "/", env={"IMS_HOME": str(home)})
        problems = [] if p.returncode == 0 else [f"reconstruct exits {p.returncode}: {p.stderr!r}"]
        store = open_store(Config(str(home)), create=False)
        if state(store) != want:
            problems.append(f"the store differs: {sorted(set(state(store)) ^ set(want))[:4]}")
        if store.folder_remains("alice", "Old") or store.unlisted_folders("alice"):
            problems.append("the deletion is not finished")
        if _msg_files(home) != sum(1 for k in want if len(k) == 3):
            problems.append(f"{_msg_files(home)} message files")
        store.close()
        if problems:
            bad.append((point, problems))
        else:
            shutil.rmtree(home)
    assert bad == [], bad[:3]
    assert len(steps) - first >= 6


def _source(tmp_path):
    src = tmp_path / "src"
    store = _store(src)
    archive = tmp_path / "full.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    want = state(store)
    store.close()
    return str(archive), want


def test_reconstruct_leaves_a_folder_a_restore_was_making_to_the_restore(tmp_path):
    """A restore into an empty store killed while it filled a folder it made (per
    folder: just before its index is placed, or a step drawn before that; the seed
    changes per run, IMS_KILL_SEED repeats one) (listed with its mark, its index still aside): reconstruct -m -r / exits 0, the
    folder reads as empty (never damaged, its files not listed with unknown flags), and
    the same restore run again gives the archive exactly.  With the mailbox list lost
    too, reconstruct -m lists such a folder with its mark and the UIDVALIDITY its index
    aside holds.  (Before, reconstruct listed the restore's files with flags known
    nowhere, exit 1, or, the list lost, gave the folder a new UIDVALIDITY.)"""
    archive, want = _source(tmp_path)
    base = tmp_path / "base"
    make_home(base, "classic")
    argv = ["imsrestore", "-f", archive]
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    steps = _steps(argv, probe, tmp_path)
    # while a folder is filled: from its mark to just before its index is placed
    # (its index placed: the rename of store.idx.new-<pid>, the last step naming it)
    # per folder, just before that, and one step drawn between its mark and that
    marks = [n for n, what in steps if what.startswith("sqlite: INSERT OR REPLACE INTO unplaced")]
    ends = marks[1:] + [len(steps) + 1]
    rng = random.Random(SEED)
    points = []
    for i, (m, e) in enumerate(zip(marks, ends)):
        last = max(n for n, what in steps if m < n < e and "/store.idx.new-" in what)
        points.append(last if i % 2 == 0 else rng.randrange(m + 1, last))
    assert len(points) >= 4, (SEED, points)
    bad = []
    for i, point in enumerate(points):
        home = tmp_path / f"k{point}"
        shutil.copytree(base, home)
        p = run_with_fault(argv, home, f"kill:{point}", env={"IMS_HOME": str(home)})
        assert p.returncode == -9, p.stderr
        lost = (i // 2) % 2 == 1         # (each kind of point with and without the list)
        if lost:
            for ext in ("", "-wal", "-shm"):
                with_ext = home / "data" / "store" / "mboxlist" / f"mailboxes.db{ext}"
                if with_ext.exists():
                    with_ext.unlink()
        p = run(home, "reconstruct", "-m", "-r", "/", env={"IMS_HOME": str(home)})
        problems = []
        # (the list lost, what no witness knows is named, exit 1: the subscriptions, the
        # UIDVALIDITY of a folder whose index was not begun; -a ARCHIVE would know them)
        if p.returncode not in ((0, 1) if lost else (0,)):
            problems.append(f"reconstruct exits {p.returncode}: {p.stderr!r}")
        if b"flags are known nowhere" in p.stderr or b"flags of" in p.stderr or b"Traceback" in p.stderr:
            problems.append(f"reconstruct: {p.stderr!r}")
        store = open_store(Config(str(home)), create=False)
        got = state(store)                  # (a folder read as damaged raises)
        for key, value in got.items():
            if len(key) == 3 and want.get(key) != value:
                problems.append(f"{key} listed, not as archived")
        store.close()
        p = run(home, *argv, env={"IMS_HOME": str(home)})
        if p.returncode != 0:
            problems.append(f"rerun exits {p.returncode}: {p.stderr!r}")
        if state(open_store(Config(str(home)), create=False)) != want:
            problems.append("the rerun is not the archive")
        if problems:
            bad.append((point, lost, problems))
        else:
            shutil.rmtree(home)
    assert bad == [], (SEED, bad[:3])


def test_reconstruct_keeps_a_restores_mark_when_it_rebuilds_an_index(tmp_path):
    """A folder whose index says a restore is under way in it (``meta.restoring``), the
    index then damaged (its UIDNEXT lost): reconstruct rebuilds it with the mark, which
    is the restore's to resolve.  (Before, the rebuilt index lost it, and a restore run
    again after a power cut that lost the journal's record merged into the folder.)"""
    home = tmp_path / "home"
    store = _store(home)
    mark = "0e9d0c55-3f0c-4b8e-9e59-8c6f7b8a1d2e.chain.-"
    with store.lock("alice", "Keep"):
        store.mark_restoring("alice", "Keep", mark)
    before = state(store)
    idx = os.path.join(store._folder_dir("alice", "Keep"), "store.idx")
    store.close()
    con = sqlite3.connect(idx)
    con.execute("DELETE FROM meta WHERE k='uidnext'")
    con.commit()
    con.close()
    p = run(home, "reconstruct", "/primary/alice/Keep", env={"IMS_HOME": str(home)})
    assert p.returncode == 1 and b"UIDNEXT is known nowhere" in p.stderr, p.stderr
    store = open_store(Config(str(home)), create=False)
    assert store.restoring_marks("alice", "Keep") == [mark]
    assert state(store) == before


def test_reconstruct_m_stopped_by_a_signal_at_every_step_leaves_one_list(tmp_path):
    """reconstruct -m of a store that lost its mailbox list, SIGTERM'd (or Ctrl-C'd)
    before each of its steps on disk: exit 130 ("interrupted" the last line, never an
    internal error) or its own status, and in both cases no list half-made left beside
    mailboxes.db; after a 130 the same command lists every user and folder.  (A signal
    while the rebuilt list was committed and renamed into place ended in exit 70, the
    roll-back failing on the committed list, and left mailboxes.db.new-PID, which no
    later run removes; one while the list was begun left it too.)"""
    from tests.faults import spread
    base = tmp_path / "base"
    store = _store(base)
    store.create_user("bob")
    store.create_folder("bob", "Work", subscribed=True)
    store.close()
    listed = state(open_store(Config(str(base)), create=False))
    shutil.rmtree(base / "data" / "store" / "mboxlist")
    argv = ["reconstruct", "-m"]
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    log = tmp_path / "steps-probe"
    clean = run_with_fault(argv, probe, "count:/dev/null", env={"IMS_HOME": str(probe), "IMS_FAULT_LOG": str(log)})
    steps = [line for line in log.read_text().splitlines() if line.split(" ", 1)[0].isdigit()]
    assert clean.returncode in (0, 1), clean.stderr

    def judge(home) -> list:
        problems = []
        d = home / "data" / "store" / "mboxlist"
        aside = [n for n in os.listdir(d) if ".new-" in n] if d.exists() else []
        if aside:
            problems.append(f"left: {aside}")
        return problems

    def folders(home):
        return sorted(k for k in state(open_store(Config(str(home)), create=False)) if len(k) == 2)

    assert judge(probe) == [] and folders(probe) == sorted(k for k in listed if len(k) == 2)
    bad, outcomes = [], []
    for i, point in enumerate(spread(len(steps), 18, SEED)):
        mode = "int" if i % 4 == 3 else "term"
        home = tmp_path / f"k{point}"
        p = signalled_copy(argv, base, home, mode, point)
        outcomes.append(p.returncode)
        err = p.stderr.decode()
        problems = judge(home)
        if p.returncode == 130:
            if err.strip().splitlines()[-1] != "reconstruct: interrupted":
                problems.append(f"130 says {err[-300:]!r}")
            p = run(home, *argv, env={"IMS_HOME": str(home)})
            if p.returncode not in (0, 1):
                problems.append(f"rerun exits {p.returncode}: {p.stderr[-300:]!r}")
            problems += judge(home)
        elif p.returncode != clean.returncode:
            problems.append(f"exit {p.returncode}: {err[-300:]!r}")
        if not problems and folders(home) != folders(probe):
            problems.append("the list differs")
        if problems:
            bad.append((point, mode, steps[point - 1] if point <= len(steps) else "end", problems))
    assert bad == [], (SEED, bad[:3])
    assert outcomes.count(130) >= 9, outcomes


def test_reconstruct_of_a_damaged_index_stopped_at_every_step_never_leaves_the_folder_without_one(tmp_path):
    """reconstruct -r of a folder whose index is damaged (kept aside as
    store.idx.damaged-<time>, a new one put in its place), SIGTERM'd or Ctrl-C'd before
    each of its steps: exit 130 or 0, and every listed folder has an index; run again,
    every message is there.  (A signal after the damaged index was moved aside and
    before the new one was renamed in exited 130 with the folder holding none.)"""
    base = tmp_path / "base"
    store = _store(base)
    idx = os.path.join(store._folder_dir("alice", "Keep"), "store.idx")
    store.close()
    with open(idx, "r+b") as f:
        f.write(b"this is no SQLite database" * 4)
    argv = ["reconstruct", "-r", "/primary/alice"]
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    log = tmp_path / "steps-damaged"
    p = run_with_fault(argv, probe, "count:/dev/null", env={"IMS_HOME": str(probe), "IMS_FAULT_LOG": str(log)})
    assert p.returncode == 1, p.stderr                # (repaired, with unknowns: the flags it held)
    steps = [ln for ln in log.read_text().splitlines() if ln.split(" ", 1)[0].isdigit()]
    want = state(open_store(Config(str(probe)), create=False))
    rel = os.path.relpath(idx, base)
    bad = []
    for mode in ("term", "int"):
        for point in range(1, len(steps) + 2):
            home = tmp_path / f"{mode}{point}"
            p = signalled_copy(argv, base, home, mode, point)
            problems = []
            if p.returncode not in (1, 130):
                problems.append(f"exit {p.returncode}: {p.stderr[-300:]!r}")
            if not os.path.exists(home / rel):
                problems.append(f"exit {p.returncode}, and Keep has no index")
            p = run(home, *argv, env={"IMS_HOME": str(home)})
            if p.returncode not in (0, 1) or state(open_store(Config(str(home)), create=False)) != want:
                problems.append(f"rerun: exit {p.returncode}, or the store is not as a run never stopped")
            if problems:
                bad.append((mode, point, steps[point - 1] if point <= len(steps) else "end", problems))
            else:
                shutil.rmtree(home)
    assert bad == [], bad[:3]


def test_reconstruct_of_a_lost_uidlist_stopped_at_every_step_leaves_no_copy_beside_it(tmp_path):
    """reconstruct --no-resync -r of a Maildir folder that lost its dovecot-uidlist,
    SIGTERM'd or Ctrl-C'd before each of its steps (each step of writing the new
    uidlist among them): exit 130 or its own status, and no
    dovecot-uidlist.reconstruct-PID.tmp left; run again, the folder is as a run never
    stopped leaves it.  (The copy was written with no removal on the way: a signal
    before its rename left it, under a name no later run removes.)"""
    from tests.faults import spread
    base = tmp_path / "base"
    cfg = make_home(base, "maildir")
    with in_home(base):
        store = open_store(cfg)
        store.create_user("alice")
        store.create_folder("alice", "Keep", subscribed=True)
        for i in range(3):
            store.append("alice", "Keep", io.BytesIO(f"Subject: k {i}\r\n\r\nbody\r\n".encode()))
        folder_dir = os.path.dirname(store.messages("alice", "Keep")[0].path)
    os.unlink(os.path.join(os.path.dirname(folder_dir), "dovecot-uidlist"))
    argv = ["reconstruct", "--no-resync", "-r", "/primary/alice"]
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    log = tmp_path / "steps-uidlist"
    p = run_with_fault(argv, probe, "count:/dev/null", env={"IMS_HOME": str(probe), "IMS_FAULT_LOG": str(log)})
    assert p.returncode == 1, p.stderr                # (rebuilt, with unknowns: a new UIDVALIDITY)
    steps = [ln for ln in log.read_text().splitlines() if ln.split(" ", 1)[0].isdigit()]
    writes = [i + 1 for i, ln in enumerate(steps) if ".reconstruct-" in ln]
    assert writes

    def copies(home) -> list:
        return [f for d, _, fs in os.walk(home) for f in fs if ".reconstruct-" in f]

    def picture(home) -> list:
        with in_home(home):
            s = open_store(Config(str(home)), create=False)
            return sorted((m.uid, m.size) for m in s.messages("alice", "Keep"))

    want = picture(probe)
    bad = []
    for i, point in enumerate(sorted(set(spread(len(steps), 12, SEED)) | set(writes))):
        mode = "int" if i % 3 == 2 else "term"
        home = tmp_path / f"u{point}"
        p = signalled_copy(argv, base, home, mode, point)
        problems = [] if p.returncode in (1, 130) else [f"exit {p.returncode}: {p.stderr[-300:]!r}"]
        if copies(home):
            problems.append(f"exit {p.returncode}, left: {copies(home)}")
        p = run(home, *argv, env={"IMS_HOME": str(home)})
        if p.returncode not in (0, 1) or copies(home) or picture(home) != want:
            problems.append(f"rerun: exit {p.returncode}, or the folder is not as a run never stopped")
        if problems:
            bad.append((mode, point, steps[point - 1] if point <= len(steps) else "end", problems))
        else:
            shutil.rmtree(home)
    assert bad == [], (SEED, bad[:3])
