"""What a restore's speed rests on, counted in system calls (issue 17, bench/RESULTS.md,
thirteenth pass): a count does not depend on how loaded the machine is, a time does.

A restore into an empty store makes every folder it restores: on a store of many small
folders the cost of making one is a large part of the run, and syncs are the dearest part
of it (each waits for the disk)."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from asm.store import open_store

STRACE = shutil.which("strace")

_CHILD = r"""
import sys
from asm.config import Config
from asm.store import open_store
store = open_store(Config(home=sys.argv[1]))
n = int(sys.argv[2])
store.create_user("joe")
for i in range(n):
    store.create_folder("joe", f"F{i}", uidvalidity=1000 + i, uidnext=7)
"""


def _syncs(home, n: int, out) -> int:
    """fsync and fdatasync calls of a process that makes a user and ``n`` folders."""
    if STRACE is None:
        pytest.skip("strace is not installed")
    subprocess.run([STRACE, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out),
                    sys.executable, "-c", _CHILD, str(home), str(n)],
                   check=True, env={**os.environ, "IMS_HOME": str(home)})
    calls = 0
    for line in open(out):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$", line)
        if m:
            calls += int(m.group(1))
    return calls


@pytest.mark.parametrize("driver", ["classic"])
def test_a_new_classic_folder_costs_two_syncs_not_four(tmp_path, driver):
    """Its index is built aside and renamed into place: one sync of the file, one of the
    directory (made in place, its first SQLite commit synced the journal twice, the
    directory and the index); and one of its parent, so that the folder's directory is
    durable before its row (tests/test_classic_create.py)."""
    from asm.config import Config
    costs = []
    for n in (0, 12):
        home = tmp_path / f"home{n}"
        Config(home=str(home)).set("store.driver", driver)
        costs.append(_syncs(home, n, tmp_path / f"strace{n}"))
        store = open_store(Config(home=str(home)))
        for i in range(n):                  # and each folder is as asked, its index whole
            f = store.folder("joe", f"F{i}")
            assert (f.uidvalidity, f.uidnext) == (1000 + i, 7)
    assert (costs[1] - costs[0]) / 12 <= 3, costs


def test_a_new_classic_index_left_half_built_by_a_killed_process_goes(tmp_path):
    """A process killed while it built a folder's index aside left its temporary (and
    no folder: the mailbox list never got the row); making the folder removes it."""
    from asm.config import Config
    home = tmp_path / "home"
    Config(home=str(home)).set("store.driver", "classic")
    store = open_store(Config(home=str(home)))
    store.create_user("joe")
    fdir = store._folder_dir("joe", "Work")
    os.makedirs(fdir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = os.path.join(fdir, f"store.idx.new-{dead.pid}")
    with open(left, "wb") as f:
        f.write(b"SQLite format 3\0half")
    store.create_folder("joe", "Work", uidvalidity=77, uidnext=5)
    assert not os.path.exists(left)
    assert sorted(n for n in os.listdir(fdir) if n.startswith("store.idx")) == ["store.idx"]
    f = open_store(Config(home=str(home))).folder("joe", "Work")
    assert (f.uidvalidity, f.uidnext) == (77, 5)


# -- a Maildir restore's own work per folder and per message (fourteenth pass) -----------
# One restore of a user of many small folders, traced once (strace -f): what it does to
# each folder it makes and to each message it writes, by path.  Each rule below is a
# system call that was made per folder (or message) and is not needed.

_FOLDERS = [f"F{i:02d}" for i in range(12)]          # even ones subscribed


@pytest.fixture(scope="module")
def maildir_trace(tmp_path_factory):
    """(trace lines, source store, restored store) of ``imsrestore -f A`` of joe's INBOX
    and 12 folders of 2 messages each (a hard-linked copy among them) into an empty store."""
    from tests.helpers import make_home, put, run
    if STRACE is None:
        pytest.skip("strace is not installed")
    tmp = tmp_path_factory.mktemp("mdtrace")
    src_home, dst_home = tmp / "src", tmp / "dst"
    source = open_store(make_home(src_home, "maildir"))
    put(source, "joe", "INBOX", 0, internaldate=1_600_000_000)
    for i, folder in enumerate(_FOLDERS):
        source.create_folder("joe", folder, subscribed=i % 2 == 0)
        for j in range(2):
            put(source, "joe", folder, 10 * i + j, flags=["\\Seen"] if j else [],
                internaldate=1_600_000_000 + 100 * i + j)
    first = source.messages("joe", "F00")[0].path
    source.append("joe", "F01", None, link_from=first, internaldate=source.messages("joe", "F00")[0].internaldate)
    archive = tmp / "a.ims"
    run(src_home, "imsbackup", "-f", archive, "/", check=0)
    make_home(dst_home, "maildir")
    out = tmp / "trace"
    from tests.helpers import command, command_env
    subprocess.run([STRACE, "-f", "-qq", "-s", "300", "-o", str(out), command("imsrestore"), "-f", str(archive)],
                   check=True, env=command_env(dst_home), stdin=subprocess.DEVNULL, capture_output=True)
    with open(out, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    return lines, source, open_store(make_home(dst_home, "maildir"))


def _calls(lines, pattern: str) -> list:
    return [ln for ln in lines if re.search(pattern, ln)]


def test_a_maildir_restore_restores_exactly_what_was_traced(maildir_trace):
    from tests.helpers import state
    lines, source, target = maildir_trace
    assert state(target) == state(source)
    assert target.folder("joe", "F00").subscribed and not target.folder("joe", "F01").subscribed
    a, b = target.messages("joe", "F00")[0], target.messages("joe", "F01")[2]
    assert os.stat(a.path).st_ino == os.stat(b.path).st_ino        # one copy, two links


def test_a_folder_a_restore_makes_is_locked_once_and_never_read_back(maildir_trace):
    """create_folder keeps the folder's dotlock for the restore (Store.create_folder_held):
    its dovecot-uidlist, just written, is not read again, its directories not listed again
    (nothing else can be in them), and the dotlock is taken once, not twice."""
    from asm.store.maildir.store import STAGED_DIR
    lines = maildir_trace[0]
    # (a folder made under another name has its dotlock taken there, before its rename)
    staged = _calls(lines, rf'link\(".*", ".*/Maildir/\.?{re.escape(STAGED_DIR)}[^/"]*/dovecot-uidlist\.lock"\)')
    final = 0
    for folder in _FOLDERS:
        d = rf"/Maildir/\.{folder}"
        final += len(_calls(lines, rf'link\(".*", ".*{d}/dovecot-uidlist\.lock"\)'))
        assert not _calls(lines, rf'open(at)?\(.*{d}/dovecot-uidlist", O_RDONLY'), folder
        assert not _calls(lines, rf'open(at)?\(.*{d}(/(cur|new|tmp))?/?", .*O_DIRECTORY'), folder
        # a directory just made has no index files of Dovecot's to look for or remove
        assert not _calls(lines, rf'(unlink|newfstatat|lstat|stat)\(.*{d}/dovecot\.index'), folder
    assert final + len(staged) == len(_FOLDERS), (final, len(staged))


def test_a_folder_a_restore_makes_costs_no_lock_it_does_not_need(maildir_trace):
    """A folder with no ACL in the archive has no dovecot-acl to remove: its lock is not
    taken; subscriptions are not read back after our own write."""
    lines = maildir_trace[0]
    assert len(_calls(lines, r'open(at)?\(.*/Maildir/subscriptions", O_RDONLY')) <= 2
    assert not _calls(lines, r'dovecot-acl\.lock')


def test_a_users_subscriptions_are_rewritten_once_per_sync_not_once_per_folder(maildir_trace):
    """The subscriptions a restore gives the folders it makes are written at the sync
    that comes before the journal records them complete: one lock and one rewrite (a
    rename over the file, which ext4 writes out at once) per user per sync, not one per
    subscribed folder (6 here; 1,000 on the bench store, bench/RESULTS.md)."""
    lines = maildir_trace[0]
    assert len(_calls(lines, r'link\(".*", ".*/Maildir/subscriptions\.lock"\)')) == 1
    assert len(_calls(lines, r'rename\(".*", ".*/Maildir/subscriptions"\)')) == 1
    # ... before a syncfs (the one the journal's record of the folders waits for)
    rename = max(i for i, ln in enumerate(lines) if re.search(r'rename\(".*", ".*/Maildir/subscriptions"\)', ln))
    syncs = [i for i, ln in enumerate(lines) if re.search(r'\bsyncfs\(', ln)]
    assert any(rename < i for i in syncs), (rename, syncs)


def test_a_message_a_restore_writes_is_not_looked_up_again(maildir_trace):
    """Its size and mtime come from the descriptor it was written through (or the inode it
    was linked to): no stat of the file by its name in cur/ after the rename."""
    lines = maildir_trace[0]
    renamed = {re.search(r', "(.*/cur/[^"]+)"\)', ln).group(1)
               for ln in _calls(lines, r'rename\(".*/tmp/[^"]+", ".*/cur/[^"]+"\)')}
    assert len(renamed) == 1 + 2 * len(_FOLDERS) + 1
    # (the first copy of a link is looked at as what the link is made from)
    linked = {re.search(r'link\("([^"]+)"', ln).group(1) for ln in _calls(lines, r'^\d+ +link\(".*/cur/')}
    assert len(linked) == 1
    stats = _calls(lines, r'(newfstatat|stat|lstat|statx)\(AT_FDCWD, ".*/cur/[^"]+"')
    assert not [ln for ln in stats if re.search(r'AT_FDCWD, "([^"]+)"', ln).group(1) in renamed - linked]


def test_a_folder_made_with_its_control_files_elsewhere_is_recovered_as_before(tmp_path):
    """CONTROL= elsewhere: a folder's control directory may outlive its mail (a lost mail
    tree) and hold what a killed writer left there.  A folder made and held on
    (create_folder_held) has that cleaned as any lock of it does; only a mail directory
    this call made, holding the control files itself, is known to hold nothing."""
    import contextlib
    from asm.config import Config
    base = tmp_path / "mail"
    cfg = Config(home=str(tmp_path / "home"))
    cfg.set("store.driver", "maildir")
    cfg.set("store.mail_location", f"maildir:{base}/%u:CONTROL={base}/ctl/%u")
    store = open_store(cfg)
    store.create_user("joe")
    d = store._folder_dir("joe", "Work")
    ctl = store._ctl_idx("joe", "Work", d)[0]
    assert ctl != d
    os.makedirs(ctl)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = os.path.join(ctl, f"dovecot-uidlist.{dead.pid}.1.tmp")
    open(left, "wb").close()
    with contextlib.ExitStack() as locks:
        store.create_folder_held(locks, "joe", "Work", uidvalidity=9, subscribed=True)
        assert not os.path.exists(left)
        store.append("joe", "Work", __import__("io").BytesIO(b"Subject: x\r\n\r\nx\r\n"), uid=3)
    f = open_store(cfg).folder("joe", "Work")
    assert (f.uidvalidity, f.uidnext, f.subscribed) == (9, 4, True)


def _restore_syncs(tmp_path, folders: int, messages: int, calls=("fsync", "fdatasync")) -> int:
    """fsync and fdatasync calls (or ``calls``) of imsrestore of one user holding INBOX and
    ``folders`` folders of ``messages`` messages each, into an empty classic store."""
    from asm.config import Config
    if STRACE is None:
        pytest.skip("strace is not installed")
    src, dst = tmp_path / f"src{folders}", tmp_path / f"dst{folders}"
    for home in (src, dst):
        Config(home=str(home)).set("store.driver", "classic")
    store = open_store(Config(home=str(src)))
    store.create_user("joe")
    for i in range(folders):
        store.create_folder("joe", f"F{i}")
        for j in range(messages):
            store.append("joe", f"F{i}", io.BytesIO(b"Subject: %d/%d\r\n\r\nbody\r\n" % (i, j)), flags=["\\Seen"])
    store.close()
    archive = tmp_path / f"a{folders}.ims"
    env = {**os.environ, "IMS_HOME": str(src)}
    subprocess.run([sys.executable, "-m", "asm.cli.imsbackup", "-f", str(archive), "/"], check=True, env=env,
                   capture_output=True)
    out = tmp_path / f"strace-r{folders}"
    subprocess.run([STRACE, "-f", "-c", "-e", "trace=" + ",".join(calls), "-o", str(out),
                    sys.executable, "-m", "asm.cli.imsrestore", "-f", str(archive)],
                   check=True, env={**os.environ, "IMS_HOME": str(dst)}, capture_output=True)
    names = calls
    calls = 0
    for line in open(out):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) in names:
            calls += int(m.group(1))
    got = open_store(Config(home=str(dst)))        # and each folder is whole, as archived
    for i in range(folders):
        msgs = got.messages("joe", f"F{i}")
        assert [m.flags for m in msgs] == [frozenset({"\\Seen"})] * messages
        assert [got.open_message("joe", f"F{i}", m.uid).read() for m in msgs] == [
            b"Subject: %d/%d\r\n\r\nbody\r\n" % (i, j) for j in range(messages)]
        assert got.folder("joe", f"F{i}").uidnext == messages + 1
    return calls


def test_a_classic_folder_restored_new_costs_two_syncs_messages_and_all(tmp_path):
    """A folder a restore makes is built aside with its messages and renamed into place
    once: one fdatasync of its index and one fsync of its directory in all (its messages'
    commit made in place cost four more: the journal twice, the directory, the index)."""
    base = _restore_syncs(tmp_path, 0, 0)
    more = _restore_syncs(tmp_path, 10, 3)
    assert (more - base) / 10 <= 2, (base, more)


_FILLER = r"""
import io, os, signal, sys
from asm.config import Config
from asm.store import open_store
store = open_store(Config(home=sys.argv[1]))
store.create_user("joe")
store.create_folder_to_fill("joe", "Work", uidvalidity=4242)
with store.lock("joe", "Work"):
    for i in range(2):
        store.append("joe", "Work", io.BytesIO(b"Subject: %d\r\n\r\nx\r\n" % i))
    other = open_store(Config(home=sys.argv[1]))        # a reader meanwhile: an empty folder
    f = other.folder("joe", "Work")
    assert (f.uidvalidity, f.uidnext) == (4242, 1), f
    os.kill(os.getpid(), signal.SIGKILL)                 # killed before the lock is released
"""


def test_a_classic_folder_killed_while_filled_aside_reads_empty_and_is_made_again(tmp_path):
    """A process killed while it filled a new folder's index aside leaves the folder
    listed with no index in place: it reads as the empty folder it was (not as a damaged
    one), and the next writer makes its index again, at the UIDs the killed one used."""
    from asm.config import Config
    home = tmp_path / "home"
    Config(home=str(home)).set("store.driver", "classic")
    r = subprocess.run([sys.executable, "-c", _FILLER, str(home)], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    store = open_store(Config(home=str(home)))
    fdir = store._folder_dir("joe", "Work")
    assert not os.path.exists(os.path.join(fdir, "store.idx"))
    f = store.folder("joe", "Work")
    assert (f.uidvalidity, f.uidnext, store.messages("joe", "Work")) == (4242, 1, [])
    info = store.append("joe", "Work", io.BytesIO(b"again\r\n"), uid=1)
    store.close()
    store = open_store(Config(home=str(home)))
    assert [(m.uid, store.open_message("joe", "Work", m.uid).read()) for m in store.messages("joe", "Work")] \
        == [(1, b"again\r\n")]
    assert (store.folder("joe", "Work").uidnext, info.uid) == (2, 1)
    assert sorted(n for n in os.listdir(fdir) if n.startswith("store.idx")) == ["store.idx"]


def test_a_classic_restore_asks_the_kernel_its_ids_once_not_per_message(tmp_path):
    """The process ID (in a temporary's name) and whether it runs as root (to give files
    to store.owner) do not change while it runs: looked up once, not once per message
    (about 40,000 system calls of a 20,000-message restore)."""
    few = _restore_syncs(tmp_path, 1, 1, calls=("getpid", "geteuid"))
    many = _restore_syncs(tmp_path, 2, 40, calls=("getpid", "geteuid"))
    assert (many - few) / 79 < 0.5, (few, many)


def test_a_folder_a_restore_makes_does_not_look_for_its_user_again_and_again(maildir_trace):
    """Each store call checked that the user's Maildir is there (a stat), about 13 times
    per folder made and more per message (209 looks here, 17 a folder of two messages): a folder found in the Maildir where the user was last found says
    the user is there (its cur/ is looked at, not the Maildir first), and the root,
    subscriptions and quota file of a user just found are not looked for again; whether
    the process runs as root (to give files to store.owner) is asked once."""
    lines = maildir_trace[0]
    looks = _calls(lines, r'(newfstatat|stat|lstat|statx)\(AT_FDCWD, "[^"]*/joe/Maildir"')
    assert len(looks) / len(_FOLDERS) <= 10, len(looks)
    assert len(_calls(lines, r'\bgeteuid\(\)')) <= 4


def test_a_folder_a_restore_makes_costs_the_journal_five_statements(tmp_path):
    """Per folder the journal is read once (its row), told the folder is under way in
    one write transaction of one statement (a row made or its running set: it was an
    INSERT OR IGNORE and an UPDATE), and told it is complete in the batch's transaction:
    five SQLite statements, not six; what it records is unchanged."""
    from asm.restore.journal import Journal
    from tests.faults import run_with_fault
    from tests.helpers import make_home, put, run
    src, dst = tmp_path / "src", tmp_path / "dst"
    source = open_store(make_home(src, "maildir"))
    put(source, "joe", "INBOX", 0)
    for i in range(8):
        source.create_folder("joe", f"F{i}", subscribed=True)
        put(source, "joe", f"F{i}", i)
    archive = tmp_path / "a.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    make_home(dst, "maildir")
    log = tmp_path / "order"
    p = run_with_fault(["imsrestore", "-f", str(archive)], dst, f"order:{log}", env={"IMS_HOME": str(dst)})
    assert p.returncode == 0, p.stderr
    journal = os.path.join(str(dst), "data", "restore-journal.db")
    stmts = [ln.split(" ", 3)[3] for ln in open(log) if ln.split(" ", 3)[1:3] == ["sql", journal]]
    per_folder = [s for s in stmts if not s.startswith(("PRAGMA", "CREATE", "INSERT INTO users_held"))]
    assert len(per_folder) / 9 <= 5 + 2 / 9, per_folder       # (+ the batch's BEGIN and COMMIT)
    j = Journal(journal)
    for f in ["INBOX"] + [f"F{i}" for i in range(8)]:
        row = j.get("joe", f)
        info = source.folder("joe", f)
        assert (row.running, row.running_mode, row.mirror, row.uidvalidity, row.uidnext, row.count) == \
            (None, None, True, info.uidvalidity, info.uidnext, 1), f


def _inbox_syncs(tmp_path, users: int, messages: int) -> int:
    """fsync and fdatasync calls of imsrestore of ``users`` users holding only an INBOX
    of ``messages`` messages each, into an empty classic store; each INBOX checked."""
    from asm.config import Config
    if STRACE is None:
        pytest.skip("strace is not installed")
    src, dst = tmp_path / f"isrc{users}", tmp_path / f"idst{users}"
    for home in (src, dst):
        Config(home=str(home)).set("store.driver", "classic")
    store = open_store(Config(home=str(src)))
    for u in range(users):
        store.create_user(f"u{u}", uidvalidity=500 + u)
        for j in range(messages):
            store.append(f"u{u}", "INBOX", io.BytesIO(b"Subject: %d/%d\r\n\r\nbody\r\n" % (u, j)), flags=["\\Seen"])
    store.close()
    archive = tmp_path / f"i{users}.ims"
    subprocess.run([sys.executable, "-m", "asm.cli.imsbackup", "-f", str(archive), "/"], check=True,
                   env={**os.environ, "IMS_HOME": str(src)}, capture_output=True)
    out = tmp_path / f"strace-i{users}"
    subprocess.run([STRACE, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out),
                    sys.executable, "-m", "asm.cli.imsrestore", "-f", str(archive)],
                   check=True, env={**os.environ, "IMS_HOME": str(dst)}, capture_output=True)
    calls = 0
    for line in open(out):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$", line)
        if m:
            calls += int(m.group(1))
    got = open_store(Config(home=str(dst)))
    for u in range(users):
        msgs = got.messages(f"u{u}", "INBOX")
        assert [got.open_message(f"u{u}", "INBOX", m.uid).read() for m in msgs] == [
            b"Subject: %d/%d\r\n\r\nbody\r\n" % (u, j) for j in range(messages)]
        assert [m.flags for m in msgs] == [frozenset({"\\Seen"})] * messages
        f = got.folder(f"u{u}", "INBOX")
        assert (f.uidvalidity, f.uidnext, f.subscribed) == (500 + u, messages + 1, True)
        assert os.path.exists(os.path.join(got._folder_dir(f"u{u}", "INBOX"), "store.idx"))
    assert not got._db.execute("SELECT * FROM unplaced").fetchall()     # every mark dropped
    return calls


def test_a_classic_inbox_restored_new_costs_what_another_folder_does(tmp_path):
    """A user a restore makes gets its INBOX listed with the user and filled aside as
    any folder the restore makes (Store.create_user_to_fill): two syncs, messages and
    all.  (Before, INBOX was made at once, an index placed in 2 syncs, and its messages
    then committed in place: 4 more, 6 per user.)"""
    base = _inbox_syncs(tmp_path, 1, 3)
    more = _inbox_syncs(tmp_path, 11, 3)
    assert (more - base) / 10 <= 2, (base, more)
