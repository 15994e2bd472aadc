"""Restores at once, with real processes (issue 12): restores of different users or
groups run in parallel and all succeed; restores that touch the same folder take turns
on its restore lock; never a duplicate, never a traceback, every one exits 0."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from asm.config import Config
from asm.restore.folderlock import RestoreLocks
from asm.store import open_store
from tests.helpers import DRIVERS, build, in_home, inode_groups, make_home, popen, run, state
from tests.restore_faults import leftovers, message_files

ROUNDS = 10
GROUPS = "gA=[ab].*\ngB=[cd].*\ngC=[ef].*\ngD=[gh].*\n"      # alice bob | carol dave | ...
GROUP_PATHS = ["/primary/gA", "/primary/gB", "/primary/gC", "/primary/gD"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Per driver: a demo store of 8 users, two in each of the groups gA..gD (a third of
    the messages delivered to several users as one inode), an archive per group, one of
    the whole store."""
    out = {}
    for driver in DRIVERS:
        work = tmp_path_factory.mktemp(f"conc-{driver}")
        home = work / "home"
        with in_home(home):
            store = build(home, driver, users=8, messages=40, groups=GROUPS)
            archives = {}
            for i, path in enumerate(GROUP_PATHS):
                archives[path] = work / f"g{i}.ims"
                run(home, "imsbackup", "-f", archives[path], path, check=0)
            archives["/"] = work / "all.ims"
            run(home, "imsbackup", "-f", archives["/"], "/", check=0)
        out[driver] = (home, store, archives)
    return out


def _target(tmp_path, name, driver, src_home):
    home = tmp_path / name
    make_home(home, driver)
    shutil.copy(src_home / "config" / "backup-groups.conf", home / "config" / "backup-groups.conf")
    return home


def _all_at_once(home, argvs) -> list[tuple[int, str]]:
    procs = [popen(home, "imsrestore", *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        out.append((p.returncode, err.decode("utf-8", "replace")))
    return out


def _group_of(user: str) -> str:
    """Which archive of GROUP_PATHS holds ``user`` (GROUPS)."""
    return {"a": "gA", "b": "gA", "c": "gB", "d": "gB", "e": "gC", "f": "gC"}.get(user[0], "gD")


def _check(home, driver, store, results, what, per_group=False, links_exact=True):
    for rc, err in results:
        assert "Traceback" not in err and "internal error" not in err, f"{what}: {err}"
        assert rc == 0, f"{what}: exit {rc}: {err}"
    target = open_store(Config(str(home)), create=False)
    want = state(store)
    got = state(target)
    assert got == want, f"{what}: {len(got)} entries, want {len(want)}; differ: " \
        f"{[k for k in set(got) | set(want) if got.get(k) != want.get(k)][:5]}"
    want_links = inode_groups(store)
    if per_group:
        # separate archives cannot share an inode: a copy shared across groups is one
        # inode per group's archive
        want_links = sorted(sorted(x for x in g if _group_of(x[0]) == grp)
                            for g in want_links for grp in {_group_of(x[0]) for x in g})
        want_links = [g for g in want_links if len(g) > 1]
    got_links = inode_groups(target)
    if links_exact:
        assert got_links == want_links, what
    else:
        # who wrote a shared message first decides which copies share its inode; a
        # shared inode is always one the source shares too
        source_sets = [set(g) for g in inode_groups(store)]
        assert all(any(set(g) <= s for s in source_sets) for g in got_links), what
    assert message_files(home, driver) == sum(1 for k in want if len(k) == 3), f"{what}: a duplicate file"
    assert leftovers(home) == [], what
    assert not any(target.deliveries_held(u) for u in target.users("primary")), f"{what}: deliveries still held"


@pytest.mark.parametrize("driver", DRIVERS)
def test_group_archives_restored_in_parallel(sources, tmp_path, driver):
    """The documented parallel restore: one imsrestore per group archive, all at once,
    into an empty store, ROUNDS times."""
    src_home, store, archives = sources[driver]
    for r in range(ROUNDS):
        home = _target(tmp_path, f"r{r}", driver, src_home)
        results = _all_at_once(home, [["-f", archives[p]] for p in GROUP_PATHS])
        _check(home, driver, store, results, f"round {r}", per_group=True)
        shutil.rmtree(home)


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_same_archive_three_times_at_once(sources, tmp_path, driver):
    """Three restores of the whole archive at once (and, every other round, a fourth of
    one group from it): they take turns folder by folder, the later ones find every
    message there; no duplicate, no traceback, all exit 0."""
    src_home, store, archives = sources[driver]
    for r in range(ROUNDS):
        home = _target(tmp_path, f"r{r}", driver, src_home)
        argvs = [["-f", archives["/"]]] * 3 + ([["-f", archives["/"], "/primary/gB"]] if r % 2 else [])
        results = _all_at_once(home, argvs)
        _check(home, driver, store, results, f"round {r}", links_exact=not r % 2)
        shutil.rmtree(home)


def test_a_restore_waits_for_the_folder_another_restore_holds(sources, tmp_path):
    """The second restore of a folder waits on its restore lock (and says so with -v)
    for as long as the lock is held, then finds it restored."""
    driver = "maildir"
    src_home, store, archives = sources[driver]
    home = _target(tmp_path, "wait", driver, src_home)
    run(home, "imsrestore", "-f", archives["/primary/gD"], check=0)
    locks = RestoreLocks(str(home / "data" / "restore.lock"))
    waiting = f"/primary/grace/INBOX: waiting for another restore of it to finish (process {os.getpid()})"
    lines: list[str] = []
    said = threading.Event()

    def read(stream) -> None:
        for line in stream:
            lines.append(line.decode(errors="replace"))
            if waiting in lines[-1]:
                said.set()

    with locks.hold("grace", "INBOX"):
        p = popen(home, "imsrestore", "-v", "-f", archives["/primary/gD"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = threading.Thread(target=read, args=(p.stderr,), daemon=True)
        reader.start()
        # (however slowly it starts under load: it says it waits, and then still waits)
        assert said.wait(120), "".join(lines)
        time.sleep(0.5)
        assert p.poll() is None, "".join(lines)
    assert p.wait(timeout=120) == 0, "".join(lines)
    reader.join(timeout=60)
    users = {"grace", "heidi"}
    assert state(open_store(Config(str(home)), create=False), users=users) == state(store, users=users)


def test_a_store_another_command_makes_as_this_one_opens_is_no_lost_list(tmp_path, monkeypatch):
    """Restores of group archives started together into an empty classic store: one
    looked for the mailbox list, found none, and meanwhile another made the store, list
    first, then its users; the first then found users in the partition and refused the
    list as lost (exit 17, 1 start in 80 of test_group_archives_restored_in_parallel).
    The list is looked for again then: it is there, the store opens with its user."""
    import io
    import asm.store.classic as classic
    home = tmp_path / "ims"
    cfg = make_home(home, "classic")
    other = open_store(cfg)                        # the other command: its list, its user
    other.create_user("alice")
    other.append("alice", "INBOX", io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))
    real, looks = classic.mailbox_list_exists, []

    def not_yet(root):                             # this command's first look came before
        looks.append(root)
        return False if len(looks) == 1 else real(root)
    monkeypatch.setattr(classic, "mailbox_list_exists", not_yet)
    store = open_store(Config(str(home)))
    assert store.users("primary") == ["alice"] and len(looks) >= 2
    monkeypatch.undo()
    os.unlink(os.path.join(cfg.store_root, "mboxlist", "mailboxes.db"))   # now truly lost
    with pytest.raises(classic.MailboxListLost):
        open_store(Config(str(home)))
