"""reconstruct: the store's own records lost or out of date, the messages still there.

Each case is a partial loss an administrator meets (the classic mailbox list lost, one
folder's index or dovecot-uidlist lost, indexes captured earlier than the messages, a
damaged index, crash leftovers) on stores filled with several seeds.  Every case
checks what clients rely on: every message back, byte for byte, with its UID, and
UIDVALIDITY, flags and subscriptions as far as a witness knew them; what no witness
knew is named (exit 1), and a store that is consistent is left alone (exit 0)."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import time

import pytest

import tests.archive_fuzz as af

from asm.cli.demo import fingerprint
from asm.config import Config
from asm.demo import build_demo
from asm.store import open_store
from tests.helpers import change_mail, make_home, msg, require, run

EXIT_PARTIAL, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_HOSTILE, EXIT_NOT_ARCHIVE, EXIT_STORE = 1, 2, 4, 5, 8, 17
SEEDS = [1, 2, 3]


def fresh(home):
    return open_store(Config(str(home)))


def fill(home, driver, seed, users=4, messages=70):
    store = open_store(make_home(home, driver))
    build_demo(store, users=users, messages=messages, seed=seed)
    names = sorted(store.users("primary"))
    change_mail(store, names)
    return fresh(home), names


def lines(p) -> list[str]:
    err = p.stderr.decode() if isinstance(p.stderr, bytes) else p.stderr
    assert "Traceback" not in err
    return [x for x in err.splitlines() if x]


def tree(path) -> dict:
    """Every file under path with its digest (to prove -n wrote nothing); SQLite
    databases by their content (a reader's close may checkpoint the WAL into the file)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for n in files:
            p = os.path.join(root, n)
            if n.endswith(("-wal", "-shm")):
                continue
            if n.endswith((".db", ".idx")):
                con = sqlite3.connect(p)
                try:
                    text = "\n".join(con.iterdump())
                except sqlite3.DatabaseError:
                    text = "damaged"
                finally:
                    con.close()
                out[os.path.relpath(p, path)] = hashlib.sha256(text.encode()).hexdigest()
                continue
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = hashlib.sha256(f.read()).hexdigest()
        out.update({os.path.relpath(os.path.join(root, d), path): "dir" for d in dirs})
    return out


def messages_only(fp: dict) -> dict:
    """What cannot be lost whatever the witnesses: every message's bytes under its UID."""
    return {k: v[0] for k, v in fp.items() if isinstance(k, tuple) and len(k) == 3}


def biggest_folder(store, users):
    best = None
    for u in users:
        for f in store.folders(u):
            n = len(store.messages(u, f.name))
            if best is None or n > best[2]:
                best = (u, f.name, n)
    return best[0], best[1]


# -- the classic mailbox list ------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_mailbox_list_lost_is_rebuilt_from_the_partitions(tmp_path, seed):
    home = tmp_path / "ims"
    store, users = fill(home, "classic", seed)
    before = fingerprint(store)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    root = home / "data" / "store" / "mboxlist"

    shutil.rmtree(root)
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "/", check=EXIT_STORE)
    assert "reconstruct -m" in p.stderr.decode()
    snap = tree(home / "data")
    p = run(home, "reconstruct", "-r", f"/primary/{users[0]}", check=EXIT_STORE)
    assert len(lines(p)) == 1 and "reconstruct -m" in p.stderr.decode()
    p = run(home, "reconstruct", "-n", "-m", check=EXIT_PARTIAL)
    assert any("the mailbox list is missing: would be rebuilt" in x for x in lines(p)), lines(p)
    assert not any("rebuilt from the partitions" in x and "would be" not in x for x in lines(p)), lines(p)
    assert tree(home / "data") == snap, "-n changed nothing"

    # the partitions alone: every user, folder, UIDVALIDITY (from each index) and message;
    # only subscriptions are known nowhere (named) and come back subscribed
    p = run(home, "reconstruct", "-m", check=EXIT_PARTIAL)
    said = lines(p)
    assert any("the subscription of" in x and "known nowhere" in x for x in said), said
    after = fingerprint(fresh(home))
    assert messages_only(after) == messages_only(before)
    assert after["links"] == before["links"]
    for k, v in before.items():
        if isinstance(k, tuple) and len(k) == 2:
            assert after[k][:3] == v[:3], k                 # UIDVALIDITY and UIDNEXT kept
            assert after[k][3] is True
    run(home, "reconstruct", "-n", "-r", "/", check=0)
    run(home, "imsbackup", "-f", tmp_path / "y.ims", "/", check=0)

    # with the archive as a witness, the subscriptions too: exactly as before
    shutil.rmtree(root)
    p = run(home, "reconstruct", "-m", "-a", tmp_path / "full.ims", check=0)
    assert fingerprint(fresh(home)) == before
    run(home, "reconstruct", "-n", "-m", "-r", "/", check=0)


def test_a_mailbox_list_without_uidvalidity_in_the_indexes(tmp_path):
    """Indexes written before they kept their UIDVALIDITY: the archive (or the journal)
    knows it; without any witness the folder gets a new one, named."""
    home = tmp_path / "ims"
    store, users = fill(home, "classic", 5, users=3, messages=40)
    before = fingerprint(store)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    for dirpath, _, files in os.walk(home / "data" / "store" / "partition"):
        if "store.idx" in files:
            con = sqlite3.connect(os.path.join(dirpath, "store.idx"))
            con.execute("DELETE FROM meta WHERE k='uidvalidity'")
            con.commit()
            con.close()
    shutil.rmtree(home / "data" / "store" / "mboxlist")
    run(home, "reconstruct", "-m", "-a", tmp_path / "full.ims", check=0)
    assert fingerprint(fresh(home)) == before

    shutil.rmtree(home / "data" / "store" / "mboxlist")
    p = run(home, "reconstruct", "-m", "--no-journal", check=EXIT_PARTIAL)
    assert sum("UIDVALIDITY is known nowhere" in x for x in lines(p)) == sum(
        1 for k in before if isinstance(k, tuple) and len(k) == 2)
    after = fingerprint(fresh(home))
    # every message is back under its UID; only UIDVALIDITY changed
    assert {(k[0], k[1], k[2]): v for k, v in after.items() if isinstance(k, tuple) and len(k) == 3} == \
        {(k[0], k[1], k[2]): v for k, v in before.items() if isinstance(k, tuple) and len(k) == 3}


def test_the_list_moves_a_user_and_drops_what_is_gone(tmp_path):
    home = tmp_path / "ims"
    store, users = fill(home, "classic", 4, users=3, messages=30)
    gone = users[0]
    udir = store._user_path(gone)
    work = store._folder_dir(users[1], "Work/2023")
    shutil.rmtree(udir)
    shutil.rmtree(work)
    p = run(home, "reconstruct", "-m", check=EXIT_PARTIAL)
    said = lines(p)
    assert any(f"/primary/{gone}: lost: the user's directory" in x for x in said), said
    assert any(f"/primary/{users[1]}/Work/2023: lost: the folder's directory" in x for x in said), said
    s = fresh(home)
    assert gone not in s.users("primary")
    assert "Work/2023" not in s.folder_names(users[1])
    assert "Work" in s.folder_names(users[1])              # its parent stays
    run(home, "reconstruct", "-n", "-m", "-r", "/", check=0)


def test_a_leftover_user_directory_without_mail_is_not_listed(tmp_path):
    """reconstruct -m found an empty leftover user directory (no index, no message file)
    and listed it as a user whose INBOX had no index: mboxutil -l, imsbackup and
    imsrestore then called the store damaged (exit 17).  It is named and left out, as the
    store's writers leave it out; the user can then be created or restored into it."""
    from asm.store.classic import _user_dir
    home = tmp_path / "ims"
    store, users = fill(home, "classic", 5, users=2, messages=20)
    listing = run(home, "mboxutil", "-l", check=0).stdout
    (tmp_path / "backup").mkdir()
    run(home, "imsbackup", "-f", tmp_path / "backup" / "full.ims", "/", check=0)
    part = home / "data" / "store" / "partition" / "primary"
    (part / _user_dir("zoe")).mkdir(parents=True)
    (part / _user_dir("ann") / "=Work" / "00").mkdir(parents=True)
    (part / _user_dir("ann") / "store.lck").write_bytes(b"")
    (home / "data" / "store" / "mboxlist" / "mailboxes.db").unlink()
    p = run(home, "reconstruct", "-v", "-m", "-a", tmp_path / "backup", check=0)
    said = lines(p)
    for u in ("zoe", "ann"):
        assert any(x.startswith(f"reconstruct: /primary/{u}: ") and "holds no mail" in x for x in said), said
    assert run(home, "mboxutil", "-l", check=0).stdout == listing
    run(home, "imsbackup", "-f", tmp_path / "again.ims", "/", check=0)
    run(home, "mboxutil", "-c", "user/zoe", check=0)
    assert run(home, "imsdeliver", "-v", "zoe", input=msg(1), check=0).stdout.strip().endswith(b"UID 1")
    assert "zoe" in fresh(home).users("primary")
    run(home, "reconstruct", "-n", "-m", "-r", "/", check=0)


def test_folders_with_children_inbox_too_are_a_healthy_store(tmp_path):
    """INBOX/sub lives in <user>/=INBOX/=sub, beside INBOX's own files in <user>: the
    =INBOX directory holding it was reported as a misplaced INBOX ("rename the
    directory", exit 1) by the README's reconstruct -m -r -a on a healthy store."""
    home = tmp_path / "ims"
    run(home.parent, "msconfig", "set", "store.driver", "classic", env={"IMS_HOME": str(home)}, check=0)
    names = ["INBOX/sub", "INBOX/sub/deeper", "Work", "Work/2023", "Archive/2023/Q1"]
    for name in names:
        run(home, "mboxutil", "-c", f"user/joe/{name}", check=0)
    for n, name in enumerate(["INBOX"] + names):
        run(home, "imsdeliver", "-d", name, "joe", input=msg(n), check=0)
    (tmp_path / "backup").mkdir()
    run(home, "imsbackup", "-f", tmp_path / "backup" / "full.ims", "/", check=0)
    listing = run(home, "mboxutil", "-l", check=0).stdout
    snap = tree(home / "data")
    for argv in (["-n", "-r", "/"], ["-n", "-m", "-r", "-a", tmp_path / "backup", "/"],
                 ["-m", "-r", "-a", tmp_path / "backup", "/"]):
        p = run(home, "reconstruct", *argv)
        assert p.returncode == 0 and lines(p) == [], (argv, p.stderr)
    assert tree(home / "data") == snap
    # the list lost: rebuilt with every folder, INBOX's children among them
    db = home / "data" / "store" / "mboxlist" / "mailboxes.db"
    db.unlink()
    p = run(home, "reconstruct", "-m", "-r", "-a", tmp_path / "backup", "/")
    assert p.returncode == 0, p.stderr
    assert run(home, "mboxutil", "-l", check=0).stdout == listing
    # mail put in =INBOX itself is still named: the folder INBOX is not there
    s = fresh(home)
    shutil.copy(os.path.join(s._user_path("joe"), "store.idx"), os.path.join(s._user_path("joe"), "=INBOX"))
    p = run(home, "reconstruct", "-n", "-r", "/", check=EXIT_PARTIAL)
    assert any("=INBOX holds mail but the folder 'INBOX' would be" in x for x in lines(p)), lines(p)


def test_an_unmounted_partition_is_refused(tmp_path):
    home = tmp_path / "ims"
    second = tmp_path / "second"
    second.mkdir()
    store = open_store(make_home(home, "classic", **{"partition:second.path": str(second)}))
    store.create_user("kim", "second")
    store.append("kim", "INBOX", io.BytesIO(msg(1)))
    shutil.move(str(second), str(tmp_path / "elsewhere"))
    second.mkdir()                                       # the empty mount point
    snap = tree(home / "data")
    p = run(home, "reconstruct", "-m", check=EXIT_STORE)
    assert "is its disk mounted?" in p.stderr.decode() and len(lines(p)) == 1
    assert tree(home / "data") == snap
    second.rmdir()                                       # no directory at all
    p = run(home, "reconstruct", "-m", check=EXIT_STORE)
    assert str(second) in p.stderr.decode() and len(lines(p)) == 1
    assert tree(home / "data") == snap


# -- one folder's index -------------------------------------------------------------------

def guids(store, user: str, folder: str) -> dict:
    return {m.uid: m.guid for m in store.messages(user, folder)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_one_folder_index_lost(tmp_path, driver, seed):
    home = tmp_path / "ims"
    store, users = fill(home, driver, seed)
    user, folder = biggest_folder(store, users)
    before = fingerprint(store)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    fdir = store._folder_dir(user, folder)
    index = os.path.join(fdir, "store.idx" if driver == "classic" else "dovecot-uidlist")
    path = f"/primary/{user}/{folder}"
    want_guids = guids(store, user, folder)

    os.unlink(index)
    snap = tree(home / "data")
    run(home, "reconstruct", "-n", path, check=EXIT_PARTIAL)
    assert tree(home / "data") == snap
    p = run(home, "reconstruct", path, check=EXIT_PARTIAL)     # no witness: flags or UIDs unknown, named
    assert lines(p)
    after = fingerprint(fresh(home))
    if driver == "classic":
        # file names are UIDs: every message is back under its UID
        assert messages_only(after) == messages_only(before)
    else:
        # the uidlist was the only record of UIDs: every message is back, numbered anew
        got = sorted(v for k, v in messages_only(after).items() if k[:2] == (user, folder))
        assert got == sorted(v for k, v in messages_only(before).items() if k[:2] == (user, folder))
    run(home, "reconstruct", "-n", path, check=0)

    # with the archive as a witness: exactly as before, the messages' GUIDs too (dsync,
    # POP3 UIDLs and search indexes key on them)
    os.unlink(index)
    run(home, "reconstruct", "-a", tmp_path / "full.ims", path, check=0)
    assert fingerprint(fresh(home)) == before
    assert guids(fresh(home), user, folder) == want_guids and all(want_guids.values())
    run(home, "imsbackup", "-f", tmp_path / "again.ims", "/", check=0)


def test_the_restore_journal_knows_uidnext(tmp_path):
    """After a restore the journal holds each folder's UIDVALIDITY and UIDNEXT: a lost
    index gets its UIDNEXT back without any archive named (UIDs above the last message
    that were expunged are not given again)."""
    home = tmp_path / "ims"
    store, users = fill(home, "classic", 8, users=2, messages=30)
    u = users[0]
    msgs = store.messages(u, "INBOX")
    store.expunge(u, "INBOX", [msgs[-1].uid])                 # UIDNEXT is now above the last UID
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    home2 = tmp_path / "ims2"
    make_home(home2, "classic")
    run(home2, "imsrestore", "-f", tmp_path / "full.ims", check=0)
    s2 = fresh(home2)
    want = s2.folder(u, "INBOX")
    os.unlink(os.path.join(s2._folder_dir(u, "INBOX"), "store.idx"))
    p = run(home2, "reconstruct", f"/primary/{u}", check=EXIT_PARTIAL)      # flags unknown, UIDNEXT known
    assert not any("UIDNEXT is known nowhere" in x for x in lines(p))
    assert fresh(home2).folder(u, "INBOX").uidnext == want.uidnext > msgs[-2].uid + 1


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_damaged_index_is_rebuilt_and_kept_aside(tmp_path, driver):
    home = tmp_path / "ims"
    store, users = fill(home, driver, 6, users=2, messages=30)
    before = fingerprint(store)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    u = users[0]
    want_guids = guids(store, u, "INBOX")
    fdir = store._folder_dir(u, "INBOX")
    name = "store.idx" if driver == "classic" else "dovecot-uidlist"
    with open(os.path.join(fdir, name), "r+b") as f:
        f.seek(0)
        f.write(b"\x00garbage\x01" * 50)
    run(home, "reconstruct", "-a", tmp_path / "full.ims", "-r", f"/primary/{u}", check=0)
    assert fingerprint(fresh(home)) == before
    assert guids(fresh(home), u, "INBOX") == want_guids
    if driver == "classic":
        assert any(n.startswith("store.idx.damaged-") for n in os.listdir(fdir))


def test_crash_leftovers_and_orphans(tmp_path):
    """A killed write leaves .tmp-* files and message files without an index row: -n
    names them and changes nothing; reconstruct removes the temporary files and lists
    the orphans under their UIDs, files in the wrong hash directory are moved."""
    home = tmp_path / "ims"
    store = open_store(make_home(home, "classic"))
    store.create_user("joe")
    for n in range(1, 6):
        store.append("joe", "INBOX", io.BytesIO(msg(n)), flags=["\\Seen"])
    fdir = store._folder_dir("joe", "INBOX")
    with open(os.path.join(fdir, "00", ".tmp-9-123-abcd"), "wb") as f:
        f.write(b"half a mess")
    with open(os.path.join(fdir, "00", "6.msg"), "wb") as f:       # renamed, row never inserted
        f.write(msg(6))
    os.makedirs(os.path.join(fdir, "01"))
    os.rename(os.path.join(fdir, "00", "3.msg"), os.path.join(fdir, "01", "3.msg"))
    snap = tree(home / "data")
    p = run(home, "reconstruct", "-n", "-v", "/primary/joe", check=EXIT_PARTIAL)
    said = "\n".join(lines(p))
    assert "1 temporary files" in said and "message 3 was in the wrong directory" in said
    assert "1 messages were not in the index" in said
    assert tree(home / "data") == snap
    run(home, "reconstruct", "/primary/joe", check=EXIT_PARTIAL)         # flags of 6 unknown
    s = fresh(home)
    assert [m.uid for m in s.messages("joe", "INBOX")] == [1, 2, 3, 4, 5, 6]
    assert s.folder("joe", "INBOX").uidnext == 7
    assert not os.path.exists(os.path.join(fdir, "00", ".tmp-9-123-abcd"))
    assert os.path.exists(os.path.join(fdir, "00", "3.msg"))
    run(home, "reconstruct", "-n", "/primary/joe", check=0)


@pytest.mark.parametrize("fraction", [0.15, 0.35, 0.55, 0.75, 0.9])
def test_a_killed_reconstruct_run_again_finishes(tmp_path, fraction):
    """SIGKILL anywhere in a reconstruct of the whole store (list and every index lost):
    the same command run again gives the same store as an uninterrupted run."""
    home = tmp_path / "ims"
    store, users = fill(home, "classic", 9, users=6, messages=120)
    before = fingerprint(store)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    shutil.rmtree(home / "data" / "store" / "mboxlist")
    for dirpath, _, files in os.walk(home / "data" / "store" / "partition"):
        if "store.idx" in files:
            os.unlink(os.path.join(dirpath, "store.idx"))
    argv = ("reconstruct", "-m", "-r", "-a", tmp_path / "full.ims", "/")
    timing = tmp_path / "timing"
    shutil.copytree(home, timing, symlinks=True)
    t0 = time.monotonic()
    run(timing, *argv, check=0)
    whole = time.monotonic() - t0
    from tests.helpers import popen
    p = popen(home, *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(whole * fraction)
    p.kill()
    p.wait()
    run(home, *argv, check=0)
    assert fingerprint(fresh(home)) == before


def test_bad_input(tmp_path):
    home = tmp_path / "ims"
    fill(home, "classic", 1, users=2, messages=10)
    for argv, status, words in [
        ((), EXIT_USAGE, "say what to reconstruct"),
        (("/primary",), EXIT_USAGE, "add -r"),
        (("/primary/nobody",), EXIT_USAGE, "no user 'nobody'"),
        (("-a", tmp_path / "missing.ims", "-m"), EXIT_USAGE, "does not exist"),
    ]:
        p = run(home, "reconstruct", *argv, check=status)
        assert len(lines(p)) == 1 and words in p.stderr.decode(), p.stderr
    (tmp_path / "junk.ims").write_bytes(b"not an archive at all" * 100)
    p = run(home, "reconstruct", "-a", tmp_path / "junk.ims", "-m", check=EXIT_NOT_ARCHIVE)
    assert "not an ims-asm archive" in p.stderr.decode() and len(lines(p)) == 1



def _lose_indexes(home) -> None:
    for root, _dirs, files in os.walk(home / "data" / "store"):
        if "store.idx" in files:
            os.unlink(os.path.join(root, "store.idx"))


def test_compressed_and_encrypted_archives_are_witnesses(tmp_path):
    """A site with store.compress or store.encrypt keeps its archives layered (imsbackup -z,
    --recipient): reconstruct reads them through the same layers as imsrestore, named alone
    or in the directory the disaster-recovery runbook names; an archive of that directory
    that nothing opens (no identity) is named, and the status says the witnesses were not
    all heard."""
    keygen = require("age-keygen", "to make an identity")
    key = tmp_path / "key.txt"
    subprocess.run([keygen, "-o", str(key)], check=True, capture_output=True)
    rcpt = subprocess.run([keygen, "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    home = tmp_path / "ims"
    store, users = fill(home, "classic", 2, users=2, messages=20)
    before = fingerprint(store)
    backups = tmp_path / "backup"
    backups.mkdir()
    run(home, "imsbackup", "-z", "-f", backups / "full-z.ims", "/", check=0)
    time.sleep(1.1)
    run(home, "imsbackup", "--recipient", rcpt, "-f", backups / "full-age.ims", "/", check=0)
    (backups / "dr-1.tar").write_bytes(b"a file backup, no archive" * 100)

    for argv in (("-a", backups / "full-z.ims"), ("--identity", key, "-a", backups / "full-age.ims"),
                 ("--identity", key, "-a", backups)):
        _lose_indexes(home)
        p = run(home, "reconstruct", "-r", *argv, "/", check=0)
        assert all(": repaired: " in x for x in lines(p)), lines(p)
        assert fingerprint(fresh(home)) == before, argv
    # store.encrypt.identities, as imsrestore reads it
    run(home, "msconfig", "set", "store.encrypt.identities", key, check=0)
    _lose_indexes(home)
    run(home, "reconstruct", "-r", "-a", backups, "/", check=0)
    assert fingerprint(fresh(home)) == before
    run(home, "msconfig", "unset", "store.encrypt.identities", check=0)

    # named alone, an archive nothing opens is refused before anything is done
    _lose_indexes(home)
    snap = tree(home / "data")
    p = run(home, "reconstruct", "-r", "-a", backups / "full-age.ims", "/", check=EXIT_USAGE)
    assert len(lines(p)) == 1 and "full-age.ims" in p.stderr.decode() and "identity" in p.stderr.decode()
    assert tree(home / "data") == snap
    # in the directory: named in one line; the repair goes on from the rest; not 0
    p = run(home, "reconstruct", "-r", "-a", backups, "/", check=EXIT_INCOMPLETE)
    said = [x for x in lines(p) if ": repaired: " not in x]
    assert len(said) == 1 and "full-age.ims" in said[0] and "identity" in said[0], said
    assert fingerprint(fresh(home)) == before


def _forged(data: bytes, user: str, how: str) -> bytes:
    """The archive with one of ``user``'s messages made a symbolic link (its digests
    recomputed: intact, but hostile) or with a bit of its header flipped (damaged)."""
    ms = af.models(data)
    i = next(i for i, m in enumerate(ms) if m.typeflag == b"0" and m.name.endswith(b".eml")
             and m.name.split(b"/")[1] == user.encode())
    if how == "hostile":
        ms[i].typeflag, ms[i].link_f, ms[i].data, ms[i].size_f = b"2", b"/etc/passwd", b"", 0
        return af.emit(ms)
    out = bytearray(data)
    if how == "data":
        out[af.layout(data)[0][i].data_at + 7] ^= 1             # a bit of its bytes
    else:
        out[af.layout(data)[0][i].ustar_at + 20] ^= 1           # a bit of its name
    return bytes(out)


@pytest.mark.parametrize("how, status", [("hostile", EXIT_HOSTILE), ("damaged", EXIT_INCOMPLETE),
                                         ("data", EXIT_INCOMPLETE)])
def test_a_hostile_or_damaged_witness_is_not_exit_0(tmp_path, how, status):
    """An archive whose members are hostile or damaged (as imsrestore -t says, 5 or 4) is
    still a witness for what is intact in it: the repair goes on from those members, the
    bad one is named, and the status is imsrestore's, never 0.  A message whose bytes
    are damaged (its records intact) too: reconstruct reads only records, but the
    admin may restore from that witness next (before: exit 0, not a word)."""
    home = tmp_path / "ims"
    store, users = fill(home, "classic", 3, users=2, messages=20)
    before = fingerprint(store)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    bad = tmp_path / "bad.ims"
    bad.write_bytes(_forged((tmp_path / "full.ims").read_bytes(), users[1], how))
    assert run(home, "imsrestore", "-t", "-f", bad).returncode == status
    os.unlink(os.path.join(store._folder_dir(users[0], "INBOX"), "store.idx"))
    for argv in (("-n", "-r"), ("-r",)):
        p = run(home, "reconstruct", *argv, "-a", bad, f"/primary/{users[0]}", check=status)
        assert any(str(bad) in x for x in lines(p))
    assert fingerprint(fresh(home)) == before
    p = run(home, "reconstruct", "-n", "-r", "-a", tmp_path / "full.ims", "/", check=0)


# -- records captured earlier than the messages ------------------------------------------

def _capture_then_change(tmp_path, home, driver, seed):
    """Indexes (imsdr backup) at T1, then a day of mail, an incremental, and the message
    files copied at T2 as a file-level backup would (cp -a keeps hard links)."""
    store, users = fill(home, driver, seed)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    run(home, "imsdr", "backup", "-f", tmp_path / "dr.tar", check=0)
    change_mail(fresh(home), users, n=8)
    store = fresh(home)
    u = users[1]
    msgs = store.messages(u, "INBOX")
    store.set_flags(u, "INBOX", msgs[0].uid, ["\\Answered"], ["$Done"])
    store.expunge(u, "INBOX", [msgs[-1].uid])
    run(home, "imsbackup", "-f", tmp_path / "incr.ims", "-d", since, "/", check=0)
    part = Config(str(home)).partitions()["primary"]
    subprocess.run(["cp", "-a", part, str(tmp_path / "files")], check=True)
    return fingerprint(fresh(home)), part


def _recover(tmp_path, home, part):
    """The whole installation is gone; back come the configuration, the message files
    (T2) and, over them, the mailbox list and indexes of T1."""
    shutil.rmtree(home)
    run(home, "imsdr", "restore", "-f", tmp_path / "dr.tar", check=0)
    os.makedirs(os.path.dirname(part), exist_ok=True)
    subprocess.run(["cp", "-a", str(tmp_path / "files"), part], check=True)
    run(home, "imsdr", "restore", "-f", tmp_path / "dr.tar", "--only", "mboxlist,indexes", "--force", check=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_indexes_older_than_the_messages(tmp_path, driver, seed):
    home = tmp_path / "ims"
    want, part = _capture_then_change(tmp_path, home, driver, seed)
    _recover(tmp_path, home, part)
    if driver == "classic":
        # as put back, the indexes lack the new mail and list the expunged messages
        with pytest.raises(FileNotFoundError):
            fingerprint(fresh(home))
    p = run(home, "reconstruct", "-m", "-r", "-a", tmp_path / "full.ims", "-a", tmp_path / "incr.ims", "/",
            check=0)
    assert not [x for x in lines(p) if ": lost:" in x]
    assert fingerprint(fresh(home)) == want
    run(home, "reconstruct", "-n", "-m", "-r", "/", check=0)

    # no archive at all: every message is still found; for the classic store under its
    # UID (its file name), what only an archive knew is named
    _recover(tmp_path, home, part)
    p = run(home, "reconstruct", "-m", "-r", "--no-journal", "/")
    assert p.returncode in (0, EXIT_PARTIAL)
    got = fingerprint(fresh(home))
    if driver == "classic":
        assert p.returncode == EXIT_PARTIAL
        assert messages_only(got) == messages_only(want)
    else:
        by_folder = lambda fp: sorted((k[0], k[1], v) for k, v in messages_only(fp).items())  # noqa: E731
        assert by_folder(got) == by_folder(want)
    assert got["links"] == want["links"] or driver == "maildir"


def test_a_message_file_name_with_a_line_break_is_named_not_written_into_the_uidlist(tmp_path):
    """reconstruct gives a message file no dovecot-uidlist record names a UID: one whose
    name holds a line break split its record over two lines, and the rebuilt uidlist
    could not be read again.  It is named (rename it), the uidlist stays readable."""
    from asm.store.maildir.uidlist import read_uidlist
    home = tmp_path / "ims"
    store = open_store(make_home(home, "maildir"))
    store.create_user("joe")
    for n in range(1, 3):
        store.append("joe", "INBOX", io.BytesIO(msg(n)), flags=["\\Seen"])
    d = os.path.dirname(os.path.dirname(store.messages("joe", "INBOX")[0].path))
    bad = os.path.join(d, "cur", "1700000000.M1P1.h\nx:2,S")
    with open(bad, "wb") as f:
        f.write(msg(3))
    p = run(home, "reconstruct", "/primary/joe", check=EXIT_PARTIAL)
    said = "\n".join(lines(p))
    assert repr(bad) in said and "rename it" in said
    assert sorted(read_uidlist(d).records) == [1, 2]
    assert [m.uid for m in fresh(home).messages("joe", "INBOX")] == [1, 2]
    os.rename(bad, os.path.join(d, "cur", "1700000000.M1P1.hx:2,S"))
    run(home, "reconstruct", "/primary/joe", check=0)                    # a new UID above UIDNEXT
    assert [m.uid for m in fresh(home).messages("joe", "INBOX")] == [1, 2, 3]


def _lost_records(home, driver) -> None:
    """The classic mailbox list and every index, or every dovecot-uidlist, gone."""
    if driver == "classic":
        shutil.rmtree(home / "data" / "store" / "mboxlist")
    for dirpath, _, files in os.walk(home / "data"):
        for n in files:
            if n in ("store.idx", "dovecot-uidlist"):
                os.unlink(os.path.join(dirpath, n))


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_full_disk_anywhere_in_reconstruct_is_13_and_the_rerun_is_exact(tmp_path, driver):
    """The store's disk fills up (a real tmpfs written full) before each of reconstruct's
    own steps in turn: the mailbox list rebuilt beside the old one, an index built aside,
    a dovecot-uidlist written.  Before, SQLite's "database or disk is full" of the classic
    list or an index reached the user as an internal error (exit 70, a crash file), and
    the list's rollback after a failed COMMIT ("cannot rollback") hid it the same way; the
    list's mailboxes.db.new-PID or a dovecot-uidlist.reconstruct-PID.tmp cut short stayed
    for good, the rerun did not remove it.  Now: exit 13 naming what was written, nothing
    of the kind left, and the same command with room again gives the store an
    uninterrupted run gives."""
    from tests.faults import count_steps, run_with_fault, spread
    from tests.helpers import small_tmpfs, state
    base = tmp_path / "base"
    store = open_store(make_home(base, driver))
    for u in ("ann", "joe"):
        for f in ("INBOX", "Work", "Work/Sub"):
            if not store.exists(u):
                store.create_user(u)
            if not store.exists(u, f):
                store.create_folder(u, f, subscribed=True)
            for i in range(5):
                store.append(u, f, io.BytesIO(msg(i, 1500 * i)), flags=["\\Seen"] if i % 2 else [])
    getattr(store, "close", lambda: None)()
    run(base, "imsbackup", "-f", base / "a.ims", "/", check=0)
    _lost_records(base, driver)
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "8m"):
        home, filler = mnt / "h", mnt / "filler"

        def argv():
            return (["reconstruct", "-r", "-a", str(home / "a.ims"), "/"]
                    + (["-m"] if driver == "classic" else []))

        def snapshot():
            s = open_store(Config(str(home)))
            try:
                view = state(s)
            finally:
                getattr(s, "close", lambda: None)()     # (the classic store's list, open in this process)
            files = sorted(os.path.relpath(os.path.join(d, n), home) for d, _, fs in os.walk(home) for n in fs
                           if not n.endswith(("-wal", "-shm", ".lck", ".lock")) and "/cur/" not in d + "/")
            return view, files

        shutil.copytree(base, home, symlinks=True)
        total, p = count_steps(argv(), mnt, tmp_path, env={"IMS_HOME": str(home)})
        assert p.returncode in (0, 1), p.stderr
        want = snapshot()
        shutil.rmtree(home)
        statuses = set()
        for k in spread(total, 12, 7):
            shutil.copytree(base, home, symlinks=True)
            r = run_with_fault(argv(), mnt, f"fill:{k}", env={"IMS_HOME": str(home), "IMS_FAULT_FILL": str(filler)})
            out = r.stderr.decode()
            statuses.add(r.returncode)
            assert r.returncode in (0, 1, 13), (k, out)
            if r.returncode == 13:
                last = out.splitlines()[-1]
                assert "internal error" not in out and ("is full" in last or "No space" in last), (k, out)
                assert str(home) in last or "/primary/" in last, (k, out)      # what could not be written
                # (the lines before it are the repairs reported as they were made)
                assert [x for x in out.splitlines()[:-1] if "No space" in x or "is full" in x] == [], (k, out)
                if "the mailbox list" in last:
                    # rolled back with it: the "repaired" lines above are said not to hold
                    claimed = [x for x in out.splitlines()[:-1]
                               if ": repaired: " in x or ": rebuilt with unknowns: " in x]
                    if claimed:
                        n = len(claimed)
                        said = f"the {n} repairs of the mailbox list listed above were" if n > 1 else \
                            "the repair of the mailbox list listed above was"
                        assert f"{said} not kept" in last, (k, out)
            left = [os.path.join(d, n) for d, _, fs in os.walk(home) for n in fs
                    if ".new-" in n or ".reconstruct-" in n]
            assert left == [], (k, left)
            os.unlink(filler)
            p = run(home, *argv())
            assert p.returncode in (0, 1), (k, p.stderr)
            assert snapshot() == want, k
            shutil.rmtree(home)
        assert 13 in statuses, statuses
