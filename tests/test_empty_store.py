"""A backup never writes an empty archive with exit 0 for a store that should have
mail: no user on a partition it covers is exit 18 unless the administrator says an
empty store is expected; a classic store whose mailbox list is lost while message
files remain is exit 17 (rebuild the list); mail on disk that the store does not list
(user or folder directories) is named, exit 1, on both drivers."""
from __future__ import annotations

import io
import os
import sqlite3

import pytest

from asm.archive.reader import ArchiveReader
from asm.errors import EXIT_EMPTY, EXIT_PARTIAL, EXIT_STORE
from asm.store import open_store
from tests.helpers import make_home, msg, run


def read(archive):
    with open(archive, "rb") as f:
        r = ArchiveReader(f)
        members = list(r.members())
    assert r.complete
    return members, r.trailer


def one_line(p) -> str:
    err = p.stderr.decode()
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_an_empty_store_is_exit_18_unless_expected(tmp_path, driver):
    home = tmp_path / "ims"
    run(home, "msconfig", "set", "store.driver", driver, check=0)
    for path in ("/", "/primary", "/primary/user"):
        p = run(home, "imsbackup", "-f", tmp_path / "a.ims", path)
        assert p.returncode == EXIT_EMPTY, p.stderr
        line = one_line(p)
        assert line.startswith("imsbackup: the store holds no users (primary: ") and "--allow-empty" in line
        assert not (tmp_path / "a.ims").exists()
    assert sorted(os.listdir(home)) == ["config"], "the backup made no store"
    p = run(home, "imsbackup", "--allow-empty", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == 0 and p.stderr == b""
    members, trailer = read(tmp_path / "a.ims")
    assert members == [] and trailer["counts"]["users"] == 0
    run(home, "msconfig", "set", "backup.allowempty", "yes", check=0)
    assert run(home, "imsbackup", "-f", tmp_path / "b.ims", "/").returncode == 0


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_an_empty_partition_among_full_ones(tmp_path, driver):
    home = tmp_path / "ims"
    (tmp_path / "second").mkdir()
    store = open_store(make_home(home, driver, **{"partition:second.path": str(tmp_path / "second")}))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == EXIT_EMPTY
    assert f"partition 'second' holds no users (second: {tmp_path}/second)" in one_line(p)
    run(home, "imsbackup", "-f", tmp_path / "a.ims", "/primary", check=0)
    run(home, "imsbackup", "--allow-empty", "-f", tmp_path / "b.ims", "/", check=0)
    assert [m.user for m in read(tmp_path / "b.ims")[0] if m.kind == "user"] == ["joe"]


def _classic_with_seven_messages(home):
    store = open_store(make_home(home, "classic"))
    n = 0
    for user, folder, count in (("joe", "INBOX", 2), ("joe", "Work", 2), ("ann", "INBOX", 2), ("kim", "INBOX", 1)):
        if not store.exists(user):
            store.create_user(user)
        if not store.exists(user, folder):
            store.create_folder(user, folder)
        for _ in range(count):
            n += 1
            store.append(user, folder, io.BytesIO(msg(n)))
    assert n == 7                       # the case: 7 message files remain
    store.close()
    return os.path.join(str(home), "data", "store", "mboxlist", "mailboxes.db")


def test_a_lost_classic_mailbox_list(tmp_path):
    home = tmp_path / "ims"
    db = _classic_with_seven_messages(home)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    for argv in (["imsbackup", "-f", tmp_path / "a.ims", "/"],
                 ["imsbackup", "--allow-empty", "-f", tmp_path / "a.ims", "/"],
                 ["mboxutil", "-l"]):
        p = run(home, *argv)
        assert p.returncode == EXIT_STORE, p.stderr
        line = one_line(p)
        assert f"mailbox list {db} is missing, but partition 'primary'" in line
        assert "reconstruct -m" in line
    assert not os.path.exists(db), "a reader made a new, empty mailbox list"
    assert not (tmp_path / "a.ims").exists()


def _tree(top) -> dict:
    """Every file under ``top`` with its bytes' digest."""
    import hashlib
    out = {}
    for d, _dirs, files in os.walk(top):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), top)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_a_lost_classic_mailbox_list_is_refused_by_every_writer(tmp_path):
    """A command that writes a classic store whose list is lost stops as a reader does
    (exit 17, the same line): a restore, mboxutil -c or a delivery made a new list
    holding only what it touched, reset folders to the archive and reused UIDs."""
    home = tmp_path / "ims"
    db = _classic_with_seven_messages(home)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    (tmp_path / "map").write_text("joe=zed\n")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    part = home / "data" / "store" / "partition"
    before = _tree(part)
    lines = set()
    full = ["imsrestore", "-f", tmp_path / "full.ims"]
    for argv in (full + ["/primary/joe"], full, full + ["/primary/joe/INBOX"], full + ["-n", "/primary/joe"],
                 full + ["-m", tmp_path / "map", "/primary/joe"], full + ["-n"],
                 ["mboxutil", "-c", "user/zoe"], ["mboxutil", "-c", "user/joe"], ["mboxutil", "-c", "user/joe/New"],
                 ["mboxutil", "-d", "user/joe"], ["mboxutil", "-d", "user/joe/Work"], ["imsdeliver", "joe"]):
        p = run(home, *argv, input=msg(99))
        assert p.returncode == EXIT_STORE, (argv, p.stderr)
        line = one_line(p)
        assert f"mailbox list {db} is missing, but partition 'primary'" in line, line
        assert "reconstruct -m" in line and "backing up" not in line, line
        lines.add(line.split(": ", 1)[1])
        assert not os.path.exists(db), f"{argv}: made a new mailbox list"
        assert _tree(part) == before, f"{argv} wrote into the store"
    assert len(lines) == 1, lines


def test_leftover_user_directories_without_mail_are_no_lost_list(tmp_path):
    """A new installation whose partition keeps an empty leftover user directory (no
    index, no message file at any depth) has lost no list: the restore makes the list
    and brings the archive back with its UIDVALIDITY and UIDs (it stopped with exit 17,
    and the advised reconstruct -m left a folder no command could read).  A leftover
    directory that holds a message file, however deep, still counts as a lost list."""
    from asm.store.classic import _user_dir
    from tests.helpers import state
    src = tmp_path / "src"
    _classic_with_seven_messages(src)
    run(src, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    want = state(open_store(make_home(src, "classic")))
    home = tmp_path / "dst"
    make_home(home, "classic")
    part = home / "data" / "store" / "partition" / "primary"
    (part / _user_dir("joe") / "=Work" / "00").mkdir(parents=True)   # no index, no message
    (part / _user_dir("ann")).mkdir(parents=True)
    (part / _user_dir("ann") / "store.lck").write_bytes(b"")
    p = run(home, "imsrestore", "-f", tmp_path / "full.ims")
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    assert state(open_store(make_home(home, "classic"))) == want
    run(home, "mboxutil", "-l", check=0)

    other = tmp_path / "other"
    make_home(other, "classic")
    deep = other / "data" / "store" / "partition" / "primary" / _user_dir("zed") / "=Work" / "00"
    deep.mkdir(parents=True)
    (deep / "1.msg").write_bytes(msg(1))
    p = run(other, "imsrestore", "-f", tmp_path / "full.ims")
    assert p.returncode == EXIT_STORE and "holds user directories ('zed')" in one_line(p)
    assert not (other / "data" / "store" / "mboxlist" / "mailboxes.db").exists()


def test_a_replaced_classic_mailbox_list(tmp_path):
    """The list was replaced by an empty one (or an old copy): users it does not know are
    named, the ones it knows are backed up; a list that knows nobody is exit 17."""
    home = tmp_path / "ims"
    db = _classic_with_seven_messages(home)
    con = sqlite3.connect(db)
    con.execute("DELETE FROM folders WHERE user IN ('ann', 'kim') OR name='Work'")
    con.execute("DELETE FROM users WHERE user IN ('ann', 'kim')")
    con.commit()
    con.close()
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == EXIT_PARTIAL, p.stderr
    err = p.stderr.decode()
    for name in ("/primary/ann: a user directory the mailbox list does not know",
                 "/primary/kim: a user directory the mailbox list does not know",
                 "/primary/joe/Work: a folder directory the mailbox list does not know"):
        assert f"imsbackup: could not back up {name}" in err, err
    members, trailer = read(tmp_path / "a.ims")
    assert sorted(e["mailbox"] for e in trailer["errors"]) == ["/primary/ann", "/primary/joe/Work", "/primary/kim"]
    assert all("reconstruct -m" in e["error"] for e in trailer["errors"])
    assert [m.user for m in members if m.kind == "user"] == ["joe"]
    # a user path names only what it covers
    p = run(home, "imsbackup", "-f", tmp_path / "b.ims", "/primary/joe/INBOX")
    assert p.returncode == 0, p.stderr
    con = sqlite3.connect(db)
    con.execute("DELETE FROM folders")
    con.execute("DELETE FROM users")
    con.commit()
    con.close()
    p = run(home, "imsbackup", "--allow-empty", "-f", tmp_path / "c.ims", "/")
    assert p.returncode == EXIT_STORE
    assert "partition 'primary'" in one_line(p) and "lists no user but holds 3 user directories" in one_line(p)


def test_maildir_directories_that_are_not_read_as_users_or_folders(tmp_path):
    home = tmp_path / "ims"
    cfg = make_home(home, "maildir")
    store = open_store(cfg)
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    part = cfg.partitions()["primary"]
    # a home whose Maildir sits at its top (another mail_location), and a dangling Maildir
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(part, "ann", sub))
    with open(os.path.join(part, "ann", "cur", "1700000000.M1P1.h,S=3:2,S"), "wb") as f:
        f.write(b"abc")
    os.makedirs(os.path.join(part, "kim"))
    os.symlink("/nonexistent/kim", os.path.join(part, "kim", "Maildir"))
    os.makedirs(os.path.join(part, "lost+found"))
    os.makedirs(os.path.join(part, "bob", "sieve"))          # a home without mail yet: fine
    # folder directories holding mail that are no folders
    root = os.path.join(part, "joe", "Maildir")
    for bad in (".Bad..Name", ".NoCur"):
        os.makedirs(os.path.join(root, bad, "new"))
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == EXIT_PARTIAL, p.stderr
    _, trailer = read(tmp_path / "a.ims")
    got = {e["mailbox"]: e["error"] for e in trailer["errors"]}
    assert sorted(got) == ["/primary/ann", "/primary/joe/.Bad..Name", "/primary/joe/NoCur", "/primary/kim"]
    assert got["/primary/ann"].startswith("a Maildir (cur/, new/) directly in the home")
    assert got["/primary/kim"].startswith("its Maildir is not a directory")
    assert got["/primary/joe/NoCur"].startswith("it has new/ but no cur/")
    assert got["/primary/joe/.Bad..Name"].startswith("its name is no Maildir++ folder name")
    # only ann-like directories and nobody else: the partition is not read as a store
    import shutil
    shutil.rmtree(os.path.join(part, "joe"))
    p = run(home, "imsbackup", "--allow-empty", "-f", tmp_path / "b.ims", "/")
    assert p.returncode == EXIT_STORE
    assert "lists no user but holds 2 user directories ('ann', 'kim')" in one_line(p)


def test_unlisted_users_follow_the_group_scope(tmp_path):
    home = tmp_path / "ims"
    cfg = make_home(home, "maildir")
    store = open_store(cfg)
    for u in ("alice", "mike"):
        store.create_user(u)
    (home / "config" / "backup-groups.conf").write_text("groupA=[a-l].*\ngroupB=[m-z].*\n")
    os.makedirs(os.path.join(cfg.partitions()["primary"], "zed", "cur"))
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/primary/groupA")
    assert p.returncode == 0, p.stderr
    p = run(home, "imsbackup", "-f", tmp_path / "b.ims", "/primary/groupB")
    assert p.returncode == EXIT_PARTIAL and b"could not back up /primary/zed: " in p.stderr


def test_imsstage_does_not_skip_an_empty_partition(tmp_path):
    """imsstage dumps one archive per group with users: an empty partition (its disk not
    mounted) would just have no group.  A whole-store run refuses it, as imsbackup / does."""
    home = tmp_path / "ims"
    (tmp_path / "second").mkdir()
    store = open_store(make_home(home, "maildir", **{"partition:second.path": str(tmp_path / "second")}))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    stage = ["imsstage", "-D", tmp_path / "stage", "-j", "1"]
    p = run(home, *stage)
    assert p.returncode == EXIT_EMPTY, p.stderr
    assert "partition 'second' holds no users" in one_line(p)
    run(home, "msconfig", "set", "backup.allowempty", "yes", check=0)
    p = run(home, *stage)
    assert p.returncode == 0, p.stderr
