"""A restore records a folder complete in its journal only after a sync of the store's
filesystem covers what it wrote for the folder (docs/restore-design.md §3).

A power cut cannot be made in a test, so the test checks the order that is the
guarantee: the restore runs under tests/fault/sitecustomize.py (IMS_FAULT=order), which
numbers every change the process makes under its installation (open for writing,
rename, link, ...; every SQLite statement, bound values in) and every syncfs(2) and
sync(2) it calls.  For every journal commit that records a folder complete, each change
made before it to that folder (its message files, its directory, its index or uidlist)
or to the store outside any folder (mailbox list, subscriptions, directory entries of
users) was followed by a syncfs of its filesystem, or a sync, before that commit.
(Before, the journal recorded a folder complete as its last message was written, before
the run's one closing syncfs: a WAL checkpoint could make that record durable while the
folder's files were still only in the page cache, and after a power cut the same command
run again took the folder as done, mail lost with exit 0.)  The folder's restore lock is
released only after that commit (another restore of it then finds it done).  And the
syncs are batched: far fewer than the folders.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import random
import re
import select
import sqlite3
import subprocess
import time

import pytest

from asm.restore import folderlock
from asm.restore.folderlock import RestoreLocks
from asm.store import open_store
from tests.faults import run_with_fault
from tests.helpers import DRIVERS, in_home, make_home, popen, run, small_tmpfs, state
from tests.restore_faults import backup, build_source, message_files

JOURNAL = os.path.join("data", "restore-journal.db")
_PUT = re.compile(r"^INSERT INTO restored \(user, folder, uidvalidity.*?VALUES \('((?:[^']|'')*)','((?:[^']|'')*)'")


def _events(path) -> list[tuple[int, str, str]]:
    out = []
    with open(path) as f:
        for line in f:
            n, kind, *rest = line.rstrip("\n").split(" ", 2)
            out.append((int(n), kind, rest[0] if rest else ""))
    return out


def _users(store) -> list[str]:
    return [u for part in store.partitions() for u in store.users(part)]


def _dev(path: str) -> int:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.stat(path).st_dev


class _Journal:
    """What an order log says of a restore's journal and restore locks: :attr:`records`,
    (n of the commit that makes it durable, (user, folder)) of each journal statement one
    of ``patterns`` matches, and the restore lock's calls (:meth:`lock_calls`)."""

    def __init__(self, home, patterns):
        self.path = os.path.join(os.path.abspath(str(home)), JOURNAL)
        self.lock_file = os.path.join(os.path.abspath(str(home)), "data", folderlock.LOCK_FILE)
        self.patterns = patterns
        self.records: list[tuple[int, tuple[str, str]]] = []
        self.locked: dict[int, list[tuple[int, int]]] = {}   # lock offset -> (n, lockf cmd)
        self._pending, self._in_tx = [], False

    def took(self, n: int, kind: str, rest: str) -> bool:
        """Whether event ``n`` was a restore lock call or a journal statement (taken)."""
        if kind == "lockf":
            cmd, offset, path = rest.split(" ", 2)
            if path == self.lock_file:
                self.locked.setdefault(int(offset), []).append((n, int(cmd)))
            return True
        db, _, stmt = rest.partition(" ")
        if kind != "sql" or db != self.path:
            return False
        word = stmt.split(" ", 1)[0].upper()
        m = next((m for m in (p.match(stmt) for p in self.patterns) if m), None)
        if word == "BEGIN":
            self._in_tx = True
        elif word in ("COMMIT", "END"):
            self.records += [(n, f) for f in self._pending]
            self._pending, self._in_tx = [], False
        elif word == "ROLLBACK":
            self._pending, self._in_tx = [], False
        elif m:
            folder = (m.group(1).replace("''", "'"), m.group(2).replace("''", "'"))
            if self._in_tx:
                self._pending.append(folder)
            else:
                self.records.append((n, folder))
        return True

    def lock_calls(self, folder) -> list[tuple[int, int]]:
        return self.locked.get(folderlock._offset(*folder), [])


def _problems(events, home, store) -> tuple[list[str], int, int]:
    """(what came in the wrong order, folders recorded complete, syncs): every change
    made before a commit recording a folder complete, to that folder or to the store
    outside any folder, must be followed by a syncfs of its filesystem (or a sync)
    before that commit."""
    store_dirs = [os.path.realpath(d) for d in store.sync_dirs()]
    dirs = {}           # folder directory -> (user, folder), as the store lays them out
    for user in _users(store):
        for folder in store.folder_names(user):
            dirs[os.path.realpath(store._folder_dir(user, folder))] = (user, folder)

    def owner(path):
        """The folder a change belongs to (the one whose directory holds it nearest),
        "" for the store outside any folder, None for what is not the store's."""
        path = os.path.realpath(path)
        if not any(path == d or path.startswith(d + "/") for d in store_dirs):
            return None
        d = path
        while d not in ("/", ""):
            if d in dirs:
                return dirs[d]
            d = os.path.dirname(d)
        return ""

    journal = _Journal(home, (_PUT,))       # records: the commits recording a folder complete
    writes = []             # (n, owner, device)
    syncs = []              # (n, device or None: every filesystem)
    for n, kind, rest in events:
        if journal.took(n, kind, rest):
            continue
        if kind == "write":
            o = owner(rest)
            if o is not None:
                writes.append((n, o, _dev(rest)))
        elif kind == "syncfs":
            syncs.append((n, int(rest)))
        elif kind == "sync":
            syncs.append((n, None))
        elif kind == "sql":
            db, _, stmt = rest.partition(" ")
            o = owner(db)
            if o is not None and stmt.split(" ", 1)[0].upper() in (
                    "INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT", "CREATE"):
                writes.append((n, o, _dev(db)))
    completes = journal.records
    problems = []
    for c, folder in completes:
        # its restore lock is held until it is recorded: another restore of it finds it done
        calls = [cmd for n, cmd in journal.lock_calls(folder) if n < c]
        if not calls or calls[-1] == fcntl.LOCK_UN:
            problems.append(f"{'/'.join(folder)}: recorded complete (event {c}) after its restore lock "
                            f"was released")
        for w, o, dev in writes:
            if w < c and o in (folder, "") and \
                    not any(w < s < c and d in (dev, None) for s, d in syncs):
                problems.append(f"{'/'.join(folder)}: recorded complete (event {c}) with no sync of "
                                f"device {dev} after its change at event {w} ({o or 'the store'})")
                break
    return problems, len(completes), len(syncs)


_FORGET = re.compile(r"^DELETE FROM restored WHERE user='((?:[^']|'')*)' AND folder='((?:[^']|'')*)'")


def lock_order_problems(log, home) -> tuple[list[str], int]:
    """(what came in the wrong order, journal records) of the order log ``log`` of a
    restore into ``home``: every journal commit that records a folder complete (or
    forgets a folder the restore removed) comes while the restore holds the folder's
    restore lock, which it releases after that commit.  Checked for any store, dbox
    too, whose files another process (doveadm) writes."""
    journal = _Journal(home, (_PUT, _FORGET))
    for n, kind, rest in _events(log):
        journal.took(n, kind, rest)
    records = journal.records
    problems = []
    for c, folder in records:
        calls = journal.lock_calls(folder)
        before = [cmd for n, cmd in calls if n < c]
        if not before or before[-1] == fcntl.LOCK_UN:
            problems.append(f"{'/'.join(folder)}: recorded (event {c}) after its restore lock was released"
                            f"{'' if before else ' (never taken)'}")
        elif not any(n > c and cmd == fcntl.LOCK_UN for n, cmd in calls):
            problems.append(f"{'/'.join(folder)}: its restore lock was not released after its record "
                            f"(event {c})")
    return problems, len(records)


def _restore(home, argv, tmp_path, driver):
    """Run ``argv`` (imsrestore ...) into ``home`` under the order log; exit 0 wanted.
    The problems, the folders recorded complete, and the syncs."""
    log = tmp_path / f"order-{random.getrandbits(32):08x}"
    with in_home(home):
        p = run_with_fault(argv, home, f"order:{log}")
        assert p.returncode == 0, p.stderr
        store = open_store(make_home(home, driver))
        problems, done, syncs = _problems(_events(log), home, store)
        return problems + lock_order_problems(log, home)[0], done, syncs


def _source(tmp_path, driver, seed, **options):
    src = tmp_path / "src"
    cfg = make_home(src, driver, **options)
    with in_home(src):
        store = open_store(cfg)
        rng = random.Random(seed)
        build_source(store, users=rng.randint(2, 4), messages=rng.randint(15, 45),
                     big=rng.choice([1000, (1 << 20) + 7]), seed=seed)
    return src, store


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_folder_is_recorded_complete_only_after_a_sync_covers_its_files(tmp_path, driver, seed):
    src, source = _source(tmp_path, driver, seed)
    archive = backup(src, tmp_path / "a.ims")
    home = tmp_path / "dst"
    make_home(home, driver)
    argv = ["imsrestore", "-f", archive]
    if seed == 3:               # a stream, some users only
        argv = ["imsrestore", "-f", "-", "/primary/user/zoë", "/primary/user/u0"]
        with open(archive, "rb") as f:
            data = f.read()
        log = tmp_path / "order-stream"
        with in_home(home):
            p = run_with_fault(argv, home, f"order:{log}", input=data)
            assert p.returncode == 0, p.stderr
            problems, done, syncs = _problems(_events(log), home, open_store(make_home(home, driver)))
    else:
        problems, done, syncs = _restore(home, argv, tmp_path, driver)
    assert problems == []
    with in_home(home):
        target = open_store(make_home(home, driver))
        assert done == sum(len(target.folder_names(u)) for u in _users(target)) >= 16
        users = {"zoë", "u0"} if seed == 3 else None
        assert state(target) == state(source, users=users)
    assert 1 <= syncs <= done // 4          # one sync serves many folders


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_chain_in_one_command_records_each_link_after_a_sync(tmp_path, driver):
    """Full and incremental restored in one command: each link records its folders
    complete after a sync covers what it wrote (the incremental's expunges, flags and
    new messages too)."""
    src, store = _source(tmp_path, driver, 4)
    full = backup(src, tmp_path / "full.ims")
    with in_home(src):
        for u in _users(store):
            for f in store.folder_names(u)[:4]:
                msgs = store.messages(u, f)
                if len(msgs) > 1:
                    store.expunge(u, f, [msgs[0].uid])
                    store.set_flags(u, f, msgs[-1].uid, ["\\Flagged"], [])
            store.append(u, "INBOX", io.BytesIO(b"Subject: after the full\r\n\r\nnew\r\n"))
            store.create_folder(u, "New since", subscribed=True)
            store.append(u, "New since", io.BytesIO(b"Subject: new folder\r\n\r\nnew\r\n"))
        # a folder deleted between the links: the incremental removes it and forgets its
        # row while it holds its restore lock (another restore making it again meanwhile
        # would have its own row forgotten)
        gone = [(u, f) for u in _users(store) for f in store.folder_names(u)
                if f not in ("INBOX", "New since") and not any(g.startswith(f + "/") for g in store.folder_names(u))][:2]
        assert gone
        for u, f in gone:
            store.delete_folder(u, f)
    incr = tmp_path / "incr.ims"
    run(src, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
    home = tmp_path / "dst"
    make_home(home, driver)
    problems, done, syncs = _restore(home, ["imsrestore", "-f", full, "-f", str(incr)], tmp_path, driver)
    assert problems == []
    with in_home(home):
        target = open_store(make_home(home, driver))
        folders = sum(len(target.folder_names(u)) for u in _users(target))
        # "New since" only in the incremental (the full skips the deleted folders)
        assert done == 2 * folders - len(_users(store))
        assert state(target) == state(store)
    # in two commands the incremental removes the folders the full made
    home = tmp_path / "dst2"
    make_home(home, driver)
    assert _restore(home, ["imsrestore", "-f", full], tmp_path, driver)[0] == []
    log = tmp_path / "order-incr"
    with in_home(home):
        p = run_with_fault(["imsrestore", "-f", incr], home, f"order:{log}")
        assert p.returncode == 0, p.stderr
        problems, records = lock_order_problems(log, home)
        assert problems == []
        assert records == folders + len(gone)          # each folder, and each removal
        assert state(open_store(make_home(home, driver))) == state(store)


@pytest.mark.parametrize("driver", DRIVERS)
def test_partitions_on_two_filesystems_are_each_synced_before_the_record(tmp_path, driver):
    """A user on a partition of its own filesystem: its folders are recorded complete
    only after a syncfs of that filesystem (the store's other filesystem is not enough)."""
    with small_tmpfs(tmp_path / "second-src", "64m") as p2, small_tmpfs(tmp_path / "second-dst", "64m") as d2:
        src = tmp_path / "src"
        cfg = make_home(src, driver, **{"partition:second.path": str(p2)})
        with in_home(src):
            store = open_store(cfg)
            for u, part in (("ann", "primary"), ("bob", "second")):
                store.create_user(u, part)
                for f in ("Sent", "Work", "Work/Old"):
                    store.create_folder(u, f, subscribed=True)
                    for i in range(5):
                        store.append(u, f, io.BytesIO(f"Subject: {u} {f} {i}\r\n\r\nbody\r\n".encode()))
        archive = backup(src, tmp_path / "a.ims")
        home = tmp_path / "dst"
        make_home(home, driver, **{"partition:second.path": str(d2)})
        problems, done, _syncs = _restore(home, ["imsrestore", "-f", archive], tmp_path, driver)
        assert problems == []
        assert done == 8
        with in_home(home):
            target = open_store(make_home(home, driver))
            assert target.user_partition("bob") == "second"
            assert state(target) == state(store)


@contextlib.contextmanager
def restore_waiting_for(home, user: str, folder: str, *argv, timeout: float = 120):
    """``imsrestore -v ARGV`` into ``home`` started while this process holds the restore
    lock of ``user``'s ``folder``; once it says it waits for that folder, every other
    folder of ``user`` the journal has is recorded complete and let go of (its restore
    lock free), and their names are yielded; after the block the lock goes and the
    restore must end with exit 0."""
    locks = RestoreLocks(str(home / "data" / "restore.lock"))
    with locks.hold(user, folder):
        p = popen(home, "imsrestore", "-v", *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            err, deadline = b"", time.monotonic() + timeout
            while f"{user}/{folder}: waiting for another restore".encode() not in err:
                assert time.monotonic() < deadline and p.poll() is None, err
                if select.select([p.stderr], [], [], 1)[0]:
                    err += os.read(p.stderr.fileno(), 65536)
            with sqlite3.connect(home / JOURNAL) as db:
                rows = dict(db.execute("SELECT folder, running FROM restored WHERE user=?", (user,)).fetchall())
            before = [f for f in rows if f != folder]
            assert all(rows[f] is None for f in before), rows                # recorded complete
            fd = folderlock._fd(locks.path)     # (closing another descriptor drops our lock)
            for f in before:                                                 # and let go of
                assert folderlock.holder(fd, folderlock._offset(user, f)) is None, f
            yield before
        except BaseException:
            p.kill()
            p.wait()
            raise
    _, rest = p.communicate(timeout=300)
    assert p.returncode == 0, rest


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_restore_waiting_for_another_holds_no_folder_it_has_not_recorded(tmp_path, driver):
    """A folder complete on disk keeps its restore lock until it is recorded complete
    (another restore of it then finds it done, never under way), but a restore that must
    wait for a folder another restore holds records first what it finished and lets go
    of those folders: two restores waiting for each other's folders would wait forever."""
    src, _source_store = _source(tmp_path, driver, 5)
    archive = backup(src, tmp_path / "a.ims")
    home = tmp_path / "dst"
    make_home(home, driver)
    with restore_waiting_for(home, "u0", "Work", "-f", archive) as before:
        assert before


@pytest.mark.parametrize("driver", DRIVERS)
def test_killed_with_folders_written_but_not_recorded_then_the_same_command_is_exact(tmp_path, driver):
    """Killed while folders complete on disk wait for their record (just before the
    journal transaction that records them, and inside it): each is still under way, and
    the same command run again resumes it: no duplicate, no renumbered message, exit 0."""
    src, source = _source(tmp_path, driver, 6)
    archive = backup(src, tmp_path / "a.ims")
    want = state(source)
    log = tmp_path / "steps"
    probe = tmp_path / "probe"
    make_home(probe, driver)
    with in_home(probe):
        p = run_with_fault(["imsrestore", "-f", archive], probe, "count:/dev/null",
                           env={"IMS_FAULT_LOG": str(log)})
        assert p.returncode == 0, p.stderr
    steps = [line.split(" ", 1) for line in log.read_text().splitlines()]
    records = [int(n) for n, what in steps if what.startswith("sqlite: INSERT INTO restored (user, folder, u")]
    assert len(records) >= 16
    for point in (records[0], records[1], records[-1]):
        home = tmp_path / f"dst-{point}"
        make_home(home, driver)
        with in_home(home):
            p = run_with_fault(["imsrestore", "-f", archive], home, f"kill:{point}")
            assert p.returncode == -9, p.stderr
            if point != records[-1]:        # (the run's only batch when it took under 30 s)
                with sqlite3.connect(home / JOURNAL) as db:
                    assert db.execute("SELECT count(*) FROM restored WHERE running IS NOT NULL").fetchone()[0]
            p = run(home, "imsrestore", "-f", archive)
            assert p.returncode == 0, p.stderr
            target = open_store(make_home(home, driver))
            assert state(target) == want
            assert message_files(home, driver) == message_files(src, driver)
            with sqlite3.connect(home / JOURNAL) as db:
                assert db.execute("SELECT count(*) FROM restored WHERE running IS NOT NULL").fetchone()[0] == 0


_LISTED = re.compile(r"^INSERT INTO folders \(user, name, uidvalidity, subscribed\) VALUES \('((?:[^']|'')*)','((?:[^']|'')*)'")
_MARKED = re.compile(r"^INSERT OR REPLACE INTO unplaced VALUES \('((?:[^']|'')*)','((?:[^']|'')*)'")
_UNMARKED = re.compile(r"^DELETE FROM unplaced WHERE user='((?:[^']|'')*)' AND name='((?:[^']|'')*)'")


def _power_cut_problems(events, store) -> list[str]:
    """Where a power cut could leave a classic folder the run made listed but read as
    damaged.  A commit of the mailbox list may reach the disk at once; anything else
    only once a sync covers it: a directory entry (a directory made, an index renamed
    into place, an index made aside) by an fsync of its directory or a syncfs/sync, an
    index's content by an fsync/fdatasync of its file (or a syncfs/sync) before it is
    renamed into place.  A folder listed without its mark (``unplaced``) needs, when its
    row commits, its directories and an index (in place, or aside: it reads as empty)
    durable; one listed with its mark needs nothing then (it reads as empty whatever is
    lost), and its index in place and its directories durable when the mark's removal
    commits."""
    lst = os.path.realpath(os.path.join(store.root, "mboxlist", "mailboxes.db"))
    tx, commits = [], []            # the list's statements, grouped by the commit that made them durable
    writes, syncs, file_syncs, aside_sql = [], [], [], []
    for n, kind, rest in events:
        if kind == "write":
            writes.append((n, os.path.realpath(rest)))
        elif kind in ("syncfs", "sync"):
            syncs.append(n)
        elif kind in ("fsync", "fdatasync"):
            file_syncs.append((n, os.path.realpath(rest)))
        elif kind == "sql":
            db, _, stmt = rest.partition(" ")
            db = os.path.realpath(db)
            if db == lst:
                word = stmt.split(" ", 1)[0].upper()
                if word == "BEGIN":
                    tx = []
                elif word in ("COMMIT", "END"):
                    commits.append((n, tx))
                    tx = None
                elif word == "ROLLBACK":
                    tx = None
                elif tx is not None:
                    tx.append(stmt)
                else:
                    commits.append((n, [stmt]))         # autocommit
            elif ".idx.new-" in os.path.basename(db):
                aside_sql.append((n, db, stmt.split(" ", 1)[0].upper()))

    def found(rx, stmts, key):
        for s in stmts:
            m = rx.match(s)
            if m and (m.group(1).replace("''", "'"), m.group(2).replace("''", "'")) == key:
                return True
        return False

    def durable(w, path, deadline):
        return any(w < s < deadline for s in syncs) or \
            any(w < s < deadline and p == os.path.dirname(path) for s, p in file_syncs)

    problems = []
    for user in _users(store):
        top = os.path.realpath(store.partition_path(store.user_partition(user)))
        for folder in store.folder_names(user):
            key = (user, folder)
            fdir = os.path.realpath(store._folder_dir(user, folder))
            idx = os.path.join(fdir, "store.idx")
            listed = [(c, stmts) for c, stmts in commits if found(_LISTED, stmts, key)]
            if not listed:
                continue                    # (not made by this run)
            listing, stmts = listed[-1]
            marked = found(_MARKED, stmts, key)
            if marked:
                dropped = [c for c, s in commits if c > listing and found(_UNMARKED, s, key)]
                if not dropped:
                    problems.append(f"{user}/{folder}: its mark is never dropped")
                    continue
                deadline = dropped[0]
            else:
                deadline = listing
            chain = {d for d in (fdir, *[fdir.rsplit("/", i)[0] for i in range(1, fdir.count("/"))])
                     if d == top or d.startswith(top + "/")}
            need = [(w, p) for w, p in writes if w < deadline and p in chain]
            placed = [(w, p) for w, p in writes if w < deadline and p == idx]
            if placed:
                need += placed
            elif marked:
                problems.append(f"{user}/{folder}: its mark dropped (event {deadline}) before its index was placed")
            else:
                asides = [(w, db) for w, db, _ in aside_sql if w < deadline and os.path.dirname(db) == fdir]
                need += asides[:1]
                if not asides:
                    problems.append(f"{user}/{folder}: listed (event {deadline}) without an index, aside or placed")
            for w, p in need:
                if not durable(w, p, deadline):
                    problems.append(f"{user}/{folder}: {'listed' if not marked else 'its mark dropped'} (event "
                                    f"{deadline}) before {p} (event {w}) was durable")
                    break
            for r, _ in [(w, p) for w, p in writes if p == idx]:
                # the index's content durable before it is renamed into place
                before = [(w, db, word) for w, db, word in aside_sql if w < r and os.path.dirname(db) == fdir]
                if not before:
                    continue
                aside = before[-1][1]
                last = max(w for w, db, word in before if db == aside)
                if not (any(last < s < r for s in syncs) or any(last < s < r and p == aside for s, p in file_syncs)):
                    problems.append(f"{user}/{folder}: its index renamed into place (event {r}) before its "
                                    f"content was synced")
    return problems


@pytest.mark.parametrize("seed", [1, 2])
def test_a_power_cut_never_leaves_a_classic_folder_listed_and_damaged(tmp_path, seed):
    """A restore into an empty classic store makes every user, INBOX and folder it
    restores (nested folders too, whose parent levels it makes).  Whatever of that run
    a power cut keeps, each folder is not listed, listed and read as the empty folder it
    was made (its mark: the rerun or reconstruct fills it), or whole: never listed
    without an index, which the store reads as damaged.  (Before, a folder was listed
    while its directory and the index it was filled in aside were not yet durable: the
    list's commit could reach the disk first, on any filesystem but ext4 with its
    ordered metadata; and a new INBOX the same, its directory made by the run.)"""
    src, source = _source(tmp_path, "classic", seed)
    archive = backup(src, tmp_path / "a.ims")
    home = tmp_path / "dst"
    make_home(home, "classic")
    log = tmp_path / "order"
    with in_home(home):
        p = run_with_fault(["imsrestore", "-f", archive], home, f"order:{log}")
        assert p.returncode == 0, p.stderr
        target = open_store(make_home(home, "classic"))
        assert state(target) == state(source)
        problems = _power_cut_problems(_events(log), target)
        assert problems == [], problems[:6]
        assert target._db.execute("SELECT * FROM unplaced").fetchall() == []
        # and the whole order is still the journal's (§3)
        assert _problems(_events(log), home, target)[0] == []
