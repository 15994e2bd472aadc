"""A classic expunge survives a kill at every step (docs/classic-store.md, "Message
files"): the rows go, and their UIDs are recorded in the index's ``expunged`` table, in
one commit before the files are unlinked.  Killed anywhere, the store lists no message
without its file, and every message file nobody lists is one the index records as
expunged (or one the killed run was writing); the same command run again exits 0 with
every message's bytes, UID and flags as an uninterrupted run leaves them, and no message
file nobody lists.  (Before, a kill between the rows' commit and the unlinks left
message files nobody listed for good.)  Killed at every on-disk step of the expunge a
restore of an incremental chain link makes (tests/fault/sitecustomize.py), and
reconstruct finishing such an expunge."""
from __future__ import annotations

import io
import os
import shutil
import sqlite3

from asm.config import Config
from asm.store import open_store
from tests.faults import killed_at_each, run_with_fault
from tests.helpers import in_home, make_home, run, state

WORK = ("alice", "Work")


def _source(tmp_path):
    """alice's store at the full and at the incremental, and both archives: the
    incremental expunges three messages of Work, flags another and adds one."""
    src = tmp_path / "src"
    cfg = make_home(src, "classic")
    with in_home(src):
        store = open_store(cfg)
        store.create_user("alice")
        for f, n in (("INBOX", 2), ("Work", 5), ("Other", 1)):
            if f != "INBOX":
                store.create_folder("alice", f, subscribed=True)
            for i in range(n):
                store.append("alice", f, io.BytesIO(f"Subject: {f} {i}\r\n\r\nbody {i}\r\n".encode()),
                             flags=["\\Seen"] if i % 2 else [])
        full = tmp_path / "full.ims"
        run(src, "imsbackup", "-f", full, "/", check=0)
        at_full = state(store)
        store.expunge("alice", "Work", [1, 3, 4])
        store.set_flags("alice", "Work", 2, ["\\Flagged"], ["$Later"])
        store.append("alice", "Work", io.BytesIO(b"Subject: after the full\r\n\r\nnew\r\n"))
        incr = tmp_path / "incr.ims"
        run(src, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
        at_incr = state(store)
        store.close()
    return str(full), str(incr), at_full, at_incr


def _msg_files(store, user, folder) -> dict:
    """uid -> path of every <uid>.msg in the folder's own hash directories."""
    fdir = store._folder_dir(user, folder)
    out = {}
    for sub in os.listdir(fdir):
        d = os.path.join(fdir, sub)
        if len(sub) >= 2 and not sub.startswith("=") and os.path.isdir(d):
            out.update({int(f[:-4]): os.path.join(d, f) for f in os.listdir(d) if f.endswith(".msg")})
    return out


def _recorded(store, user, folder) -> set:
    con = sqlite3.connect(os.path.join(store._folder_dir(user, folder), "store.idx"))
    try:
        return {r[0] for r in con.execute("SELECT uid FROM expunged")}
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()


def _orphans(store) -> dict:
    """(user, folder) -> UIDs of message files the folder's index does not list."""
    out = {}
    for part in store.partitions():
        for user in store.users(part):
            for folder in store.folder_names(user):
                listed = {m.uid for m in store.messages(user, folder)}
                left = sorted(set(_msg_files(store, user, folder)) - listed)
                if left:
                    out[(user, folder)] = left
    return out


def _judge_killed(home, before, want) -> list[str]:
    """After the kill: every listed message has its file, with the bytes it had or is
    to have; a file nobody lists is recorded as expunged or is one the run was writing
    (a UID the incremental carries)."""
    store = open_store(Config(str(home)), create=False)
    problems = []
    try:
        got = state(store)
    except FileNotFoundError as exc:
        store.close()
        return [f"a listed message without its file: {exc}"]
    for key, value in got.items():
        if len(key) == 3 and value[0] not in (before.get(key, (None,))[0], want.get(key, (None,))[0]):
            problems.append(f"{key}: bytes neither as before nor as wanted")
    for (user, folder), uids in _orphans(store).items():
        carried = {k[2] for k in want if len(k) == 3 and k[:2] == (user, folder) and k not in before}
        unknown = set(uids) - _recorded(store, user, folder) - carried
        if unknown:
            problems.append(f"{user}/{folder}: message files nobody lists or records: {sorted(unknown)}")
    store.close()
    return problems


def _judge_done(home, want) -> list[str]:
    store = open_store(Config(str(home)), create=False)
    problems = []
    got = state(store)
    if got != want:
        problems.append(f"the store differs: {sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))}")
    if _orphans(store):
        problems.append(f"message files nobody lists: {_orphans(store)}")
    store.close()
    return problems


def _steps(argv, home, tmp) -> list[tuple[int, str]]:
    log = tmp / "steps"
    p = run_with_fault(argv, home, "count:/dev/null", env={"IMS_HOME": str(home), "IMS_FAULT_LOG": str(log)})
    assert p.returncode == 0, p.stderr
    return [(int(n), what) for n, _, what in (line.partition(" ") for line in log.read_text().splitlines())
            if n.isdigit()]


def test_a_chain_link_killed_at_every_step_of_its_expunge_then_run_again(tmp_path):
    full, incr, at_full, at_incr = _source(tmp_path)
    base = tmp_path / "base"
    make_home(base, "classic")
    run(base, "imsrestore", "-f", full, check=0)
    assert state(open_store(Config(str(base)), create=False)) == at_full
    argv = ["imsrestore", "-f", incr]
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    fdir = open_store(Config(str(probe)), create=False)._folder_dir(*WORK)
    steps = _steps(argv, probe, tmp_path)
    assert _judge_done(probe, at_incr) == []
    # the expunge's steps: from its first statement to the last file it unlinks
    first = next(n for n, what in steps if "expunged" in what or what.startswith("sqlite: DELETE FROM msgs"))
    last = max(n for n, what in steps if what.startswith(fdir + "/00/") and what[len(fdir) + 4:] in
               ("1.msg", "3.msg", "4.msg"))
    points = list(range(first - 1, last + 2))
    assert len(points) >= 7
    bad = killed_at_each(argv, base, points, tmp_path, lambda home: _judge_killed(home, at_full, at_incr),
                         lambda home: _judge_done(home, at_incr), steps)
    assert bad == [], bad[:3]


def test_reconstruct_finishes_an_expunge_cut_short(tmp_path):
    """Killed after the expunge's commit, before its unlinks: reconstruct of the folder
    removes the files the index records as expunged, and does not take them for
    messages the index lost (before, it listed them again, flags unknown, exit 1)."""
    full, incr, at_full, at_incr = _source(tmp_path)
    home = tmp_path / "home"
    make_home(home, "classic")
    run(home, "imsrestore", "-f", full, check=0)
    argv = ["imsrestore", "-f", incr]
    probe = tmp_path / "probe"
    shutil.copytree(home, probe)
    fdir = open_store(Config(str(probe)), create=False)._folder_dir(*WORK)
    steps = _steps(argv, probe, tmp_path)
    point = next(n for n, what in steps if what == os.path.join(fdir, "00", "1.msg") and n > 1)
    p = run_with_fault(argv, home, f"kill:{point}", env={"IMS_HOME": str(home)})
    assert p.returncode == -9, p.stderr
    store = open_store(Config(str(home)), create=False)
    assert _orphans(store) == {WORK: [1, 3, 4]}
    store.close()
    p = run(home, "reconstruct", "-r", "/primary/alice/Work", env={"IMS_HOME": str(home)})
    assert p.returncode == 0, p.stderr
    store = open_store(Config(str(home)), create=False)
    assert _orphans(store) == {}
    assert _recorded(store, *WORK) == set()
    assert [m.uid for m in store.messages(*WORK)] == [2, 5, 6]     # (6: committed with the expunge)
    store.close()
    p = run(home, *argv, env={"IMS_HOME": str(home)})
    assert p.returncode == 0, p.stderr
    assert _judge_done(home, at_incr) == []
