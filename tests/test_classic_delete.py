"""A classic folder's deletion survives a kill at every step (docs/classic-store.md,
"Deleting"): the folder goes from the mailbox list with a record of its remains in one
commit, then its files; killed anywhere, the store holds the whole folder or no folder
(never one listed without its messages or index), and the same command run again exits
0 and leaves nothing of it: no orphan message file, no index nobody lists.  Killed at
every on-disk step (tests/fault/sitecustomize.py counts each file an rmtree removes
too): mboxutil -d, and a restore's removal of a folder its archive no longer lists."""
from __future__ import annotations

import io
import os
import shutil

from asm.config import Config
from asm.store import open_store
from tests.faults import killed_at_each, run_with_fault, signalled_copy
from tests.helpers import in_home, make_home, run, state

OLD = ("alice", "Old")


def _store(home):
    cfg = make_home(home, "classic")
    with in_home(home):
        store = open_store(cfg)
        for u in ("alice",):
            store.create_user(u)
            for f, n in (("INBOX", 1), ("Old", 3), ("Old/Sub", 1), ("Keep", 1)):
                if f != "INBOX":
                    store.create_folder(u, f, subscribed=True)
                for i in range(n):
                    store.append(u, f, io.BytesIO(f"Subject: {u} {f} {i}\r\n\r\nbody\r\n".encode()),
                                 flags=["\\Seen"] if i else [])
        store.set_folder("alice", "Old", uidnext=40)
        return store


def _steps(argv, home, tmp, input=None) -> list[tuple[int, str]]:
    log = tmp / "steps"
    p = run_with_fault(argv, home, "count:/dev/null", env={"IMS_HOME": str(home), "IMS_FAULT_LOG": str(log)},
                       input=input)
    assert p.returncode == 0, p.stderr
    out = []
    for line in log.read_text().splitlines():
        n, _, what = line.partition(" ")
        if n.isdigit():             # (a statement over several lines continues the one before)
            out.append((int(n), what))
    return out


def _files_of(store, user, folder) -> list[str]:
    """What is left in the folder's own directory but its subfolders and lock file."""
    fdir = store._folder_dir(user, folder)
    out = []
    for d, dirs, files in os.walk(fdir):
        if d == fdir:
            dirs[:] = [x for x in dirs if not x.startswith("=")]
            files = [f for f in files if f != "store.lck"]
        out += [os.path.join(d, f) for f in files]
    return sorted(out)


def _judge_killed(home, want, gone) -> list[str]:
    """The store after the kill, before the rerun: every folder as it was, or (one of
    ``gone``) not listed, what is left of its files known as its remains."""
    store = open_store(Config(str(home)), create=False)
    got = state(store)
    problems = []
    for key, value in want.items():
        if key[:2] not in gone and got.get(key) != value:
            problems.append(f"{key} changed: {got.get(key)} != {value}")
    for folder in gone:
        if store.exists(*folder):
            if {k: v for k, v in got.items() if k[:2] == folder} != {k: v for k, v in want.items() if k[:2] == folder}:
                problems.append(f"{folder} listed without all of its messages")
        elif not store.folder_remains(*folder) and _files_of(store, *folder):
            problems.append(f"{folder}: unlisted, its files left unknown: {_files_of(store, *folder)}")
    store.close()
    return problems


def _judge_done(home, want, gone, files: int) -> list[str]:
    """After the rerun: the store as wanted, nothing left of the folders ``gone``."""
    store = open_store(Config(str(home)), create=False)
    problems = []
    if state(store) != want:
        problems.append("the store is not as wanted")
    for folder in gone:
        if store.exists(*folder) or store.folder_remains(*folder):
            problems.append(f"{folder} still there")
        left = _files_of(store, *folder)
        if left:
            problems.append(f"left of {folder}: {left}")
    msgs = sum(1 for d, _, fs in os.walk(str(home)) for f in fs if f.endswith(".msg") and "/queue/" not in d)
    if msgs != files:
        problems.append(f"{msgs} message files, want {files}")
    if store.unlisted_folders(gone[0][0]):
        problems.append(f"unlisted folders: {store.unlisted_folders(gone[0][0])}")
    store.close()
    return problems


def test_mboxutil_d_killed_at_every_step_then_run_again(tmp_path):
    base = tmp_path / "base"
    source = _store(base)
    want = state(source)
    source.close()
    after = {k: v for k, v in want.items() if k[:2] != OLD}
    files = sum(1 for k in after if len(k) == 3)
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    argv = ["mboxutil", "-d", "user/alice/Old"]
    steps = _steps(argv, probe, tmp_path)
    assert _judge_done(probe, after, [OLD], files) == []
    # (before the list's change nothing of the deletion happened: one point is enough)
    first = next(n for n, what in steps if what.startswith("sqlite: DELETE FROM folders"))
    bad = killed_at_each(argv, base, [n for n, _ in steps if n >= first - 1], tmp_path,
                         lambda home: _judge_killed(home, want, [OLD]),
                         lambda home: _judge_done(home, after, [OLD], files), steps)
    assert bad == [], bad[:3]
    assert len(steps) - first >= 8          # (each message file one step)


def test_a_restore_removing_a_folder_killed_at_every_step_of_the_removal(tmp_path):
    """The incremental no longer lists alice/Old (but Old/Sub): its restore removes it.  Killed before
    each on-disk step of that removal, the store holds the folder whole or no folder,
    and the same command run again leaves the store as at the incremental, nothing of
    the folder left."""
    src = tmp_path / "src"
    source = _store(src)
    with in_home(src):
        full = tmp_path / "full.ims"
        run(src, "imsbackup", "-f", full, "/", check=0)
        source.delete_folder("alice", "Old")      # (Old/Sub stays)
        source.append("alice", "INBOX", io.BytesIO(b"Subject: after the full\r\n\r\nnew\r\n"))
        incr = tmp_path / "incr.ims"
        run(src, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
        want = state(source)
    base = tmp_path / "base"
    make_home(base, "classic")
    run(base, "imsrestore", "-f", full, check=0)
    before = state(open_store(Config(str(base)), create=False))
    files = sum(1 for k in want if len(k) == 3)
    argv = ["imsrestore", "-f", str(incr)]
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    fdir = open_store(Config(str(probe)), create=False)._folder_dir(*OLD)
    steps = _steps(argv, probe, tmp_path)
    gone = [OLD]
    assert _judge_done(probe, want, gone, files) == []
    # the steps of the removals: from the list's change to the folder's directory gone
    first = next(n for n, what in steps if what.startswith("sqlite: DELETE FROM folders"))
    last = max(n for n, what in steps if what.startswith(os.path.dirname(fdir) + "/=Old"))
    points = list(range(first, last + 2))
    assert len(points) >= 6
    bad = killed_at_each(argv, base, points, tmp_path,
                         lambda home: _judge_killed(home, {k: v for k, v in before.items() if k[:2] in gone}, gone),
                         lambda home: _judge_done(home, want, gone, files), steps)
    assert bad == [], bad[:3]


def _user_files(home, user_dir) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(user_dir) for f in fs)


def _user_deletion(base, tmp, with_bob: bool = False):
    """alice with 45 messages (and bob with one) at ``base``; what ``mboxutil -d
    user/alice`` does there, counted in a copy: (state, alice's directory relative to
    base, argv, its steps, the step that unlists her)."""
    source = _store(base)
    for i in range(40):
        source.append("alice", "Keep", io.BytesIO(f"Subject: more {i}\r\n\r\nbody\r\n".encode()))
    if with_bob:
        source.create_user("bob")
        source.append("bob", "INBOX", io.BytesIO(b"Subject: bob\r\n\r\nbody\r\n"))
    want = state(source)
    user_dir = os.path.relpath(source._user_path("alice"), base)
    source.close()
    probe = tmp / "probe"
    shutil.copytree(base, probe)
    argv = ["mboxutil", "-d", "user/alice"]
    steps = _steps(argv, probe, tmp)
    assert not os.path.exists(probe / user_dir)
    first = next(n for n, what in steps if what.startswith("sqlite: DELETE FROM folders"))
    return want, user_dir, argv, steps, first


def test_mboxutil_d_of_a_user_stopped_by_a_signal_at_every_step(tmp_path):
    """mboxutil -d user/alice SIGTERM'd (or Ctrl-C'd) before each of its steps on disk:
    exit 130 with alice whole (listed, every message), or exit 0 with alice gone and no
    file of hers left; after a 130 the same command exits 0 and leaves nothing of her.
    (A signal while her files were removed, after the mailbox list no longer had her,
    exited 130 and left them, unlisted; run again: "no such user", exit 2.)"""
    from tests.faults import spread
    base = tmp_path / "base"
    want, user_dir, argv, steps, first = _user_deletion(base, tmp_path)
    assert len(steps) - first >= 40          # (each file rmtree removes one step)
    bad, outcomes = [], []
    for i, point in enumerate([first - 1] + spread(len(steps) - first, 15, 7)):
        point = point if i == 0 else first + point - 1
        mode = "int" if i % 4 == 3 else "term"
        home = tmp_path / f"k{point}"
        p = signalled_copy(argv, base, home, mode, point)
        outcomes.append(p.returncode)
        store = open_store(Config(str(home)), create=False)
        got, listed = state(store), store.exists("alice")
        store.close()
        if p.returncode == 130:
            if p.stderr.decode().strip() != "mboxutil: interrupted" or got != want or not listed:
                bad.append((point, mode, "130 but alice not whole", p.stderr))
            p = run(home, *argv, env={"IMS_HOME": str(home)})
            if p.returncode != 0:
                bad.append((point, mode, f"rerun exits {p.returncode}", p.stderr))
        elif p.returncode != 0 or p.stderr:
            bad.append((point, mode, p.returncode, p.stderr))
        store = open_store(Config(str(home)), create=False)
        if store.exists("alice") or _user_files(home, home / user_dir):
            bad.append((point, mode, "left of alice", _user_files(home, home / user_dir)[:3]))
        store.close()
    assert bad == [], bad[:3]
    assert outcomes.count(0) >= 10, outcomes        # (the points fell in the removal)


def test_mboxutil_d_of_a_user_killed_at_any_step_leaves_no_user_to_find_again(tmp_path):
    """mboxutil -d user/alice SIGKILLed (or the power cut) at points spread over the
    whole run, most while her files are removed: alice is whole and listed, or gone;
    what a kill left of her files is never "a user directory the mailbox list does not
    know" (every backup of / exited 1 naming it, and its advice, reconstruct -m, listed
    her again: the deleted mail back).  After the kill: the next backup exits 0 without
    a word of her; then, in turn, the same command run again (exit 0), reconstruct -m
    -r /, or a new user alice removes what was left, and a new alice is empty."""
    from tests.faults import spread
    base = tmp_path / "base"
    whole, user_dir, argv, steps, first = _user_deletion(base, tmp_path, with_bob=True)
    bob = {k: v for k, v in whole.items() if k[0] == "bob"}
    points = spread(first - 1, 4, 3) + [first + p - 1 for p in spread(len(steps) - first, 16, 5)]
    bad = []
    for i, point in enumerate(points):
        home = tmp_path / f"k{point}"
        shutil.copytree(base, home)
        env = {"IMS_HOME": str(home)}
        p = run_with_fault(argv, home, f"kill:{point}", env=env)
        if p.returncode != -9:
            bad.append((point, "not killed", p.returncode, p.stderr))
            continue
        store = open_store(Config(str(home)), create=False)
        got, listed = state(store), store.exists("alice")
        store.close()
        if got not in (whole, bob) or listed != (got == whole):
            bad.append((point, "neither whole nor gone", listed))
        b = run(home, "imsbackup", "-f", tmp_path / f"b{point}.ims", "/", env=env)
        if b.returncode != 0 or b.stderr:
            bad.append((point, "backup after the kill", b.returncode, b.stderr[-300:]))
        how = ("again", "reconstruct", "new user")[i % 3]
        if how == "again" or listed:
            r = run(home, *argv, env=env)
        elif how == "reconstruct":
            r = run(home, "reconstruct", "-m", "-r", "/", env=env)
        else:
            r = run(home, "mboxutil", "-c", "user/alice", env=env)
        if r.returncode != 0:
            bad.append((point, how, r.returncode, r.stderr[-300:]))
        store = open_store(Config(str(home)), create=False)
        got = state(store)
        store.close()
        want = dict(bob)
        if how == "new user" and not listed:
            want.update({k: v for k, v in got.items() if k[0] == "alice"})
            if [k for k in got if k[0] == "alice"] != [("alice", "INBOX")]:
                bad.append((point, how, "the new alice is not empty", sorted(k for k in got if k[0] == "alice")))
        if got != want:
            bad.append((point, how, "state", sorted(set(got) ^ set(want))))
        left = _user_files(home, home / user_dir)
        if how != "new user" and left:
            bad.append((point, how, "left of alice", left[:3]))
        if how == "new user" and any(f.endswith(".msg") for f in left):
            bad.append((point, how, "old messages under the new alice", left[:3]))
        b = run(home, "imsbackup", "-f", tmp_path / f"c{point}.ims", "/", env=env)
        if b.returncode != 0:
            bad.append((point, how, "backup after", b.returncode, b.stderr[-300:]))
    assert bad == [], bad[:4]
