"""imsrestore on both drivers: what a restore must do, and what bad or hostile input
must not do."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest

from asm.errors import EXIT_USAGE
from asm.store import open_store
from asm.store.base import BadName
from tests.helpers import DRIVERS, inode_groups, make_home, msg, popen, put, run, small_tmpfs, state


@pytest.fixture
def source(store):
    """joe and ann with nested, odd and shared folders; 'shared' delivered to both."""
    for i, folder in enumerate(["INBOX", "Sent", "Work/2023", "Réunions; \"Q3\" 50%", "Trash"]):
        for j in range(3):
            put(store, "joe", folder, i * 10 + j, flags=["\\Seen"] if j else ["\\Flagged", "\\Answered"],
                keywords=["$Label1"] if j == 2 else [], internaldate=1_600_000_000 + i * 1000 + j)
    put(store, "ann", "INBOX", 100)
    store.deliver(["joe", "ann"], io.BytesIO(msg(200, 4000)))
    store.set_folder("joe", "Sent", uidnext=500)
    store.set_folder("joe", "Trash", subscribed=False)
    return store


@pytest.fixture
def dest(tmp_path, driver):
    home = tmp_path / "dest"
    make_home(home, driver)
    return home


def backup(home, archive):
    run(home, "imsbackup", "-f", archive, "/", check=0)
    return archive


def test_full_restore_keeps_everything(source, ims_home, dest, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    run(dest, "imsrestore", "-f", a, check=0)
    target = open_store(make_home(dest, source.name))
    assert state(target) == state(source)
    assert inode_groups(target) and len(inode_groups(target)) == len(inode_groups(source))
    assert target.folder("joe", "Sent").uidnext == 500
    assert target.folder("joe", "Trash").subscribed is False


@pytest.mark.parametrize("other", DRIVERS)
def test_cross_driver_migration_keeps_uids(source, ims_home, tmp_path, other):
    a = backup(ims_home, tmp_path / "a.ims")
    home = tmp_path / "other"
    make_home(home, other)
    run(home, "imsrestore", "-f", a, check=0)
    assert state(open_store(make_home(home, other))) == state(source)


def test_restore_twice_changes_nothing_and_merges(source, ims_home, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    before = state(source)
    p = run(ims_home, "imsrestore", "-v", "-f", a, check=0)
    assert b"0 messages, 0 links, 18 already there" in p.stderr
    assert state(source) == before
    # lose two messages, get new mail; the restore brings back only the lost ones
    inbox = source.messages("joe", "INBOX")
    assert len(inbox) == 4                         # 3 + the shared one
    lost = inbox[:2]
    lost_bytes = sorted((open(m.path, "rb").read(), m.flags) for m in lost)
    source.expunge("joe", "INBOX", [m.uid for m in lost])
    new = put(source, "joe", "INBOX", 999)
    run(ims_home, "imsrestore", "-f", a, "/primary/user/joe/INBOX", check=0)
    msgs = source.messages("joe", "INBOX")
    assert len(msgs) == 5
    restored = [m for m in msgs if m.uid > new.uid]
    assert len(restored) == 2                      # new UIDs above UIDNEXT, never reused
    assert sorted((open(m.path, "rb").read(), m.flags) for m in restored) == lost_bytes
    # -i: no duplicate check (the classic behaviour): all 4 archived come again
    run(ims_home, "imsrestore", "-i", "-f", a, "/primary/user/joe/INBOX", check=0)
    assert len(source.messages("joe", "INBOX")) == 9


def test_paths_select_and_map_users(source, ims_home, dest, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    run(dest, "imsrestore", "-f", a, "/primary/user/joe/Work", check=0)
    target = open_store(make_home(dest, source.name))
    assert target.folder_names("joe") == ["INBOX", "Work/2023"]      # INBOX exists with the user
    run(dest, "imsrestore", "-f", a, "/primary/ann", check=0)
    assert len(target.messages("ann", "INBOX")) == 2
    mapfile = tmp_path / "map"
    mapfile.write_text("# rename\njoe=josé lópez\n")
    run(dest, "imsrestore", "-m", mapfile, "-f", a, "/primary/user/joe/Sent", check=0)
    assert [m.uid for m in target.messages("josé lópez", "Sent")] == [m.uid for m in source.messages("joe", "Sent")]
    p = run(dest, "imsrestore", "-f", a, "/primary/user/nobody")
    assert p.returncode == 2 and b"/primary/user/nobody: nothing in the archive matches" in p.stderr
    # a map line that names no user of the archive (a typo: Joe for joe): the restore says
    # so and exits 1, never 0 with the mail gone to the user's own name unannounced
    mapfile.write_text("Joe=reviewer\nann=ann2\n")
    p = run(dest, "imsrestore", "-m", mapfile, "-f", a, "/primary/user/joe/Sent", "/primary/user/ann", text=True)
    assert p.returncode == 1, p.stderr
    assert "map line Joe=reviewer: no user 'Joe' in the archive: nothing was restored to 'reviewer'" in p.stderr
    assert "map line ann" not in p.stderr                # a user the archive has, not selected: fine
    assert not target.exists("reviewer") and target.exists("ann2")
    mapfile.write_text("joe=a\njoe=b\n")               # one user mapped twice: refused, nothing done
    p = run(dest, "imsrestore", "-m", mapfile, "-f", a, "/primary/user/joe/Sent", text=True)
    assert p.returncode == 2 and "'joe' is mapped a second time" in p.stderr, p.stderr
    assert not target.exists("a") and not target.exists("b")
    # two users mapped to one: restored with exit 0, ann's mail merged into joe's folders
    # (one UIDVALIDITY, ann's renumbered) without a word.  Refused, nothing done
    mapfile.write_text("joe=pat\n# both\nann=pat\n")
    p = run(dest, "imsrestore", "-m", mapfile, "-f", a, text=True)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert f"{mapfile}:3: 'ann' and 'joe' are both mapped to 'pat'" in p.stderr, p.stderr
    assert not target.exists("pat")
    # a user ID may hold '=' (joe=old): 'joe=old=joe2' was split at the first '=', so
    # joe went to a new user 'old=joe2' with exit 0.  Any line with two '=' is refused
    mapfile.write_text("ann=ann3\njoe=old=joe2\n")
    p = run(dest, "imsrestore", "-m", mapfile, "-f", a, "/primary/user/joe/Sent", "/primary/user/ann", text=True)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert f"{mapfile}:2: 'joe=old=joe2' has more than one '='" in p.stderr, p.stderr
    assert not target.exists("old=joe2") and not target.exists("ann3")
    # a name the store cannot hold: refused before anything is restored (before: ann
    # restored, joe not, exit 17, as if the store had failed)
    for bad in ("a/b", "..", "x\x01y"):
        before = state(target)
        mapfile.write_text(f"ann=ann3\njoe={bad}\n")
        p = run(dest, "imsrestore", "-m", mapfile, "-f", a, text=True)
        assert p.returncode == 2 and f"{mapfile}:2: bad user ID" in p.stderr, (bad, p.stderr)
        assert state(target) == before and not target.exists("ann3")


def test_map_onto_a_user_the_run_restores_too_is_refused(source, ims_home, dest, tmp_path):
    """-m joe=ann over an archive that holds ann too, restored under her own name in the
    same run: both landed in ann's folders (ann's INBOX kept its UIDVALIDITY, joe's
    messages renumbered into it), exit 0, nothing said.  Refused (exit 2, one line
    naming both), nothing written; a map onto a user the selection leaves out (or the
    archive does not hold) still restores."""
    a = backup(ims_home, tmp_path / "a.ims")
    target = open_store(make_home(dest, source.name))
    mapfile = tmp_path / "map"
    mapfile.write_text("joe=ann\n")
    want = "joe=ann: ann is restored too in this run; restore ann alone in a run of its own"
    before = state(target)
    for paths in ([], ["/primary/user/joe", "/primary/user/ann/INBOX"], ["/primary"]):
        p = run(dest, "imsrestore", "-m", mapfile, "-f", a, *paths, text=True)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and want in p.stderr, (paths, p.stderr)
        assert state(target) == before and not target.exists("ann")
    # a file given as stdin is looked at first, as -f FILE is
    with open(a, "rb") as f:
        p = run(dest, "imsrestore", "-m", mapfile, "-f", "-", stdin=f, text=True)
    assert p.returncode == 2 and want in p.stderr and state(target) == before, p.stderr
    # a chain: its last archive says what it restores
    inc = tmp_path / "b.ims"
    run(ims_home, "imsbackup", "-f", inc, "--base", a, "/", check=0)
    p = run(dest, "imsrestore", "-m", mapfile, "-f", a, "-f", inc, text=True)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and want in p.stderr, p.stderr
    assert state(target) == before
    # ann left out by the paths, or renamed herself: joe's mail is ann's, alone
    run(dest, "imsrestore", "-m", mapfile, "-f", a, "/primary/user/joe", check=0)
    assert state(target, {"ann"}) == {("ann",) + k[1:]: v for k, v in state(source, {"joe"}).items()}
    mapfile.write_text("joe=ann\nann=ann2\n")
    run(dest, "imsrestore", "-m", mapfile, "-f", "-", input=a.read_bytes(), check=0)
    assert state(target, {"ann2"}) == {("ann2",) + k[1:]: v for k, v in state(source, {"ann"}).items()}
    # a pipe is read once and cannot be looked at first: the restore restores whichever
    # of joe and ann it meets first into ann's folders, and none of the other's (exit
    # 1, named), never the two merged
    other = tmp_path / "other"
    fresh = open_store(make_home(other, source.name))
    mapfile.write_text("joe=ann\n")
    p = run(other, "imsrestore", "-m", mapfile, "-f", "-", input=a.read_bytes())
    err = p.stderr.decode()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and "joe=ann: ann is restored too in this run" in err, err
    got = state(fresh, {"ann"})
    assert got in ({("ann",) + k[1:]: v for k, v in state(source, {u}).items()} for u in ("joe", "ann")), got
    assert state(fresh, {"joe"}) == {}


def test_new_mailbox_beside_existing(source, ims_home, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    run(ims_home, "imsrestore", "-n", "-f", a, "/primary/user/joe/Sent", check=0)
    names = source.folder_names("joe")
    new = [n for n in names if n.startswith("Sent-")]
    assert new == [f"Sent-{time.strftime('%Y%m%d')}"]
    assert len(source.messages("joe", new[0])) == 3 and len(source.messages("joe", "Sent")) == 3



def test_map_into_a_folder_of_the_same_uidvalidity_is_a_plain_merge(store, ims_home, tmp_path, driver):
    """alice's and bob's Trash made in the same second have the same UIDVALIDITY (Dovecot
    takes the time; mass provisioning).  alice's Trash restored into bob's (-m alice=bob)
    took bob's folder for alice's own: exit 1, "3 archived UIDs (1, 2, 3) are held by other
    messages stored in the folder since its restore began", though nothing ran.  Another
    user's folder is never the archived one: bob keeps UIDs 1-3 and UIDNEXT only grows,
    alice's 10 messages come after them, exit 0."""
    for n in range(10):
        put(store, "alice", "Trash", n, flags=["\\Seen"] if n % 2 else [])
    for n in range(3):
        put(store, "bob", "Trash", 100 + n)
    v = store.folder("alice", "Trash").uidvalidity
    store.set_folder("bob", "Trash", uidvalidity=v)
    a = tmp_path / "alice.ims"
    run(ims_home, "imsbackup", "-f", a, "/primary/alice", check=0)
    bob_before = [(m.uid, m.size) for m in store.messages("bob", "Trash")]
    mapfile = tmp_path / "map"
    mapfile.write_text("alice=bob\n")
    p = run(ims_home, "imsrestore", "-m", mapfile, "-f", a, "/primary/alice/Trash", text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    got = store.messages("bob", "Trash")
    assert [(m.uid, m.size) for m in got[:3]] == bob_before
    assert [m.uid for m in got[3:]] == list(range(4, 14))
    assert sorted((m.size, tuple(m.flags)) for m in got[3:]) == \
        sorted((m.size, tuple(m.flags)) for m in store.messages("alice", "Trash"))
    assert store.folder("bob", "Trash").uidvalidity == v and store.folder("bob", "Trash").uidnext == 14

LONG_LEVELS = {"ascii": {"classic": "x" * 247, "maildir": "x" * 247},
               "two-byte": {"classic": "\u00e9" * 125, "maildir": "\u00e9" * 92},
               "nested": {"classic": "Work/" + "y" * 246, "maildir": "Work/" + "y" * 246}}


@pytest.mark.parametrize("kind", LONG_LEVELS)
def test_new_mailbox_beside_a_long_name_is_shortened_to_fit(store, ims_home, tmp_path, driver, kind):
    """-n beside a folder whose name is legal but too long for NAME-YYYYMMDD (247 bytes;
    125 or 92 two-byte characters: 251 bytes in a classic directory name, 249 once
    Dovecot's Maildir++ writes them in modified UTF-7): the restore exited 17 ("the store
    cannot be read or written") and restored nothing.  The original part is shortened, on
    a character boundary, until the name fits the store (then -2, -3 the same), exit 0."""
    level = LONG_LEVELS[kind][driver]
    put(store, "joe", level, 1, flags=["\\Seen"])
    a = backup(ims_home, tmp_path / "a.ims")
    parent, _, last = level.rpartition("/")
    made = []
    for n in ("", "-2"):
        p = run(ims_home, "imsrestore", "-n", "-f", a, f"/primary/joe/{level}", text=True)
        assert p.returncode == 0, p.stderr
        new = [f for f in store.folder_names("joe") if f not in (level, "INBOX", parent, *made)]
        assert len(new) == 1, new
        made.append(new[0])
        tail = f"-{time.strftime('%Y%m%d')}{n}"
        head, _, cut = new[0][:-len(tail)].rpartition("/")
        assert new[0].endswith(tail) and head == parent and 0 < len(cut) < len(last) and last.startswith(cut)
        longer = "/".join(filter(None, [parent, last[:len(cut) + 1] + tail]))
        with pytest.raises(BadName):            # the longest that fits
            store.check_new_folder("joe", longer)
        assert [(m.size, m.flags) for m in store.messages("joe", new[0])] == \
            [(m.size, m.flags) for m in store.messages("joe", level)]


def test_list_and_header(source, ims_home, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    toc = run(ims_home, "imsrestore", "-f", a, "-t", "/primary/user/ann", check=0).stdout.decode()
    lines = toc.splitlines()
    assert lines[0].startswith("/primary/ann/INBOX\tuidvalidity=")
    assert len(lines) == 3 and lines[1].startswith("/primary/ann/INBOX/1\t")
    hdr = run(ims_home, "imsrestore", "-f", a, "-h", check=0).stdout.decode()
    assert "format: ims-asm" in hdr and f"driver: {source.name}" in hdr and "scope: ['/']" in hdr


def test_incremental_chain_and_wrong_order(source, ims_home, dest, tmp_path):
    full = backup(ims_home, tmp_path / "full.ims")
    time.sleep(1.1)
    t1 = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    inbox = source.messages("joe", "INBOX")
    source.expunge("joe", "INBOX", [inbox[0].uid])
    source.set_flags("joe", "INBOX", inbox[1].uid, ["\\Deleted"], ["Important"])
    put(source, "joe", "INBOX", 300)
    source.deliver(["joe", "ann"], io.BytesIO(msg(301)))
    i1 = tmp_path / "i1.ims"
    run(ims_home, "imsbackup", "-f", i1, "-d", t1, "/", check=0)
    time.sleep(1.1)
    t2 = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    source.expunge("joe", "Work/2023", [source.messages("joe", "Work/2023")[0].uid])
    put(source, "joe", "Work/2023", 302)
    i2 = tmp_path / "i2.ims"
    run(ims_home, "imsbackup", "-f", i2, "-d", t2, "/", check=0)

    run(dest, "imsrestore", "-H", "-f", full, check=0)
    bad = run(dest, "imsrestore", "-c", "n", "-H", "-f", i2)      # stop at the first refused folder
    assert bad.returncode == 7 and b"restore the incremental(s) taken in between first" in bad.stderr
    assert b"user/ann/INBOX" in bad.stderr
    run(dest, "imsrestore", "-H", "-f", i1, check=0)
    # an older archive into folders as the later one's restore left them: they hold it
    # already (a chain run again); nothing changes, nothing expunged comes back (issue 13)
    before = state(open_store(make_home(dest, source.name)))
    older = run(dest, "imsrestore", "-v", "-H", "-f", full, check=0)
    assert b"folders held this archive already" in older.stderr
    assert state(open_store(make_home(dest, source.name))) == before
    run(dest, "imsrestore", "-f", i2, check=0)
    target = open_store(make_home(dest, source.name))
    assert state(target) == state(source)
    assert not target.deliveries_held("joe")
    assert len(inode_groups(target)) == len(inode_groups(source))


def test_delivery_hold_keeps_uids_free(source, ims_home, dest, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    run(dest, "imsrestore", "-H", "-f", a, "/primary/user/joe", check=0)
    target = open_store(make_home(dest, source.name))
    assert target.deliveries_held("joe")
    assert target.deliver(["joe"], io.BytesIO(msg(777)))["joe"] is None       # queued, not stored
    run(dest, "imsrestore", "-f", a, "/primary/user/joe", check=0)             # last link: releases
    assert not target.deliveries_held("joe")
    inbox = target.messages("joe", "INBOX")
    archived = [m.uid for m in source.messages("joe", "INBOX")]
    assert [m.uid for m in inbox][:len(archived)] == archived
    assert inbox[-1].uid >= source.folder("joe", "INBOX").uidnext


def _shared_setup(store):
    """'shared' lands first in amy's INBOX (the first copy), then in zed's."""
    for u in ("amy", "zed"):
        store.create_user(u)
    store.deliver(["amy", "zed"], io.BytesIO(msg(5, 20_000)))
    put(store, "zed", "INBOX", 6)


def test_partial_restore_of_link_from_seekable_file(store, ims_home, tmp_path):
    _shared_setup(store)
    a = backup(ims_home, tmp_path / "a.ims")
    want = state(store, users={"zed"})
    store.delete_user("zed")
    run(ims_home, "imsrestore", "-f", a, "/primary/user/zed", check=0)
    assert state(store, users={"zed"}) == want


def test_partial_restore_of_link_from_a_pipe(store, ims_home, tmp_path):
    _shared_setup(store)
    a = backup(ims_home, tmp_path / "a.ims")
    want = state(store, users={"zed"})
    store.delete_user("zed")
    p = run(ims_home, "imsrestore", "-f", "-", "/primary/user/zed", input=a.read_bytes())
    assert p.returncode == 0, p.stderr
    assert state(store, users={"zed"}) == want
    assert not os.listdir(ims_home / "data" / "spool")            # spool cleaned up


@pytest.mark.parametrize("path", ["/primary/user/zed", None])
def test_a_pipe_restore_names_a_damaged_first_copy_its_link_needs(store, ims_home, tmp_path, path):
    """A stream whose first copy of zed's link (under amy) is damaged: the restore names
    that member and exits 4, as a file restore and imsrestore -t do, and never advises an
    imsrestore -r from this archive (which can only meet the same damage)."""
    _shared_setup(store)
    a = backup(ims_home, tmp_path / "a.ims")
    with tarfile.open(a) as t:
        link = next(m for m in t.getmembers() if m.islnk() and m.name.startswith("primary/zed/"))
        first = t.getmember(link.linkname)
    data = bytearray(a.read_bytes())
    data[first.offset_data + 3] ^= 0x01
    home = tmp_path / "dest"
    make_home(home, store.name)
    p = run(home, "imsrestore", "-f", "-", *([path] if path else []), input=bytes(data))
    assert p.returncode == 4, p.stderr
    assert f"{first.name} is damaged".encode() in p.stderr
    assert b" -r " not in p.stderr and b"need their first copy" not in p.stderr, p.stderr
    got = open_store(make_home(home, store.name))
    assert len(got.messages("zed", "INBOX")) == 1       # its own message: the rest goes on


def _zed_lost(store, ims_home, tmp_path):
    """zed's mail (links to alice's first copies) archived, then lost, and no spool for a
    stream's first copies: (the archive, zed as he was, where his reference file goes)."""
    _shared_setup(store)
    a = backup(ims_home, tmp_path / "a.ims")
    want = state(store, users={"zed"})
    store.delete_user("zed")
    run(ims_home, "msconfig", "set", "restore.spoolmax", "0", check=0)
    return a, want, tmp_path / "zed.ref"


def test_reference_file_completes_a_pipe_restore(store, ims_home, tmp_path):
    a, want, ref = _zed_lost(store, ims_home, tmp_path)
    p = run(ims_home, "imsrestore", "-R", ref, "-f", "-", "/primary/user/zed", input=a.read_bytes())
    assert p.returncode == 1 and f"-r {ref}".encode() in p.stderr
    assert len(store.messages("zed", "INBOX")) == 1
    assert json.loads(ref.read_text())["references"][0]["user"] == "zed"
    run(ims_home, "imsrestore", "-f", a, "-r", ref, check=0)
    # every message back with its bytes, flags and date, the late one with its archived
    # UID too (the folder came from this archive's restore: issue 13)
    assert state(store, users={"zed"}) == want
    p = run(ims_home, "imsrestore", "-v", "-f", a, "-r", ref, check=0)
    assert state(store, users={"zed"}) == want          # a second -r adds nothing
    assert b"already there" in p.stderr


def test_reference_file_in_a_missing_directory_is_refused_before_the_restore(store, ims_home, tmp_path):
    """-R .../typo1/typo2/x.ref made the whole missing chain (mkdir -p) and wrote there,
    exit 1.  A mistyped path is refused as --report's is: exit 2, one line naming -R and
    the directory, nothing restored and nothing made; an existing directory is taken."""
    a, want, ref = _zed_lost(store, ims_home, tmp_path)
    typo = tmp_path / "typo1" / "typo2" / "x.ref"
    p = run(ims_home, "imsrestore", "-R", typo, "-f", "-", "/primary/user/zed", input=a.read_bytes())
    assert p.returncode == EXIT_USAGE, p.stderr
    err = p.stderr.decode()
    assert err.count("\n") == 1 and "-R" in err and str(typo.parent) in err and "does not exist" in err, err
    assert not (tmp_path / "typo1").exists()
    assert not store.exists("zed")
    p = run(ims_home, "imsrestore", "-R", tmp_path, "-f", "-", "/primary/user/zed", input=a.read_bytes())
    assert p.returncode == EXIT_USAGE and b"directory" in p.stderr, p.stderr      # -R names a directory
    assert not store.exists("zed")
    run(ims_home, "imsrestore", "-R", ref, "-f", "-", "/primary/user/zed", input=a.read_bytes(), check=1)
    run(ims_home, "imsrestore", "-f", a, "-r", ref, check=0)
    assert state(store, users={"zed"}) == want


DAMAGED_REFERENCES = [
    ("internaldate", None), ("internaldate", "yesterday"), ("internaldate", 1e300), ("internaldate", True),
    ("stored", "x"), ("uid", 0), ("uid", 2 ** 32), ("uid", True), ("uidvalidity", -1),
    ("flags", [1]), ("flags", ["\\Seen", "\\Seen"]), ("flags", ["Seen"]), ("keywords", [None]),
    ("keywords", ["a b"]), ("keywords", "$Label1"), ("sha256", "abc"), ("size", -1), ("guid", "a b"),
    ("basename", ".x"), ("pop3_uidl", 5), ("pop3_order", 0), ("user", "../joe"), ("folder", ""),
    ("partition", None), ("target", 7), ("member", None)]


def test_a_damaged_reference_in_a_reference_file_is_one_line_and_restores_nothing(store, ims_home, tmp_path):
    """imsrestore -r with a reference file one of whose fields is missing (None above),
    of another type or out of range (an edited or half-copied file): exit 2, one line
    naming the reference file and the field, nothing restored (before: KeyError,
    TypeError, OverflowError, AttributeError: exit 70, or a keyword "a b" stored); the
    file as imsrestore wrote it still completes the restore."""
    a, want, ref = _zed_lost(store, ims_home, tmp_path)
    run(ims_home, "imsrestore", "-R", ref, "-f", "-", "/primary/user/zed", input=a.read_bytes(), check=1)
    doc = json.loads(ref.read_text())
    before = state(store, users={"zed"})
    for field, value in DAMAGED_REFERENCES:
        bad = json.loads(ref.read_text())
        if value is None:
            del bad["references"][0][field]
        else:
            bad["references"][0][field] = value
        damaged = tmp_path / "bad.ref"
        damaged.write_text(json.dumps(bad))
        p = run(ims_home, "imsrestore", "-f", a, "-r", damaged, text=True)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, (field, value, p.stderr)
        assert "damaged reference file" in p.stderr and field in p.stderr and "run the restore" in p.stderr, \
            (field, value, p.stderr)
        assert state(store, users={"zed"}) == before, (field, value)
    assert json.loads(ref.read_text()) == doc
    run(ims_home, "imsrestore", "-f", a, "-r", ref, check=0)
    assert state(store, users={"zed"}) == want


def _joe_moved_on(home, driver, tmp_path):
    """ann and joe got three messages in one delivery (joe's copies are links to ann's,
    one of them \\Flagged), a full backup was taken, then joe expunged UIDs 1 and 2 and
    got new mail (UID 4, UIDNEXT 5): (his store, the archive, what joe's messages were)."""
    st = open_store(make_home(home, driver, **{"restore.spoolmax": "0"}))
    for u in ("ann", "joe"):
        st.create_user(u)
    for n in range(3):
        st.deliver(["ann", "joe"], io.BytesIO(msg(n)))
    st.set_flags("joe", "INBOX", 2, ["\\Flagged"], [])
    a = tmp_path / f"{os.path.basename(home)}.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    was = state(st, users={"joe"})
    st.expunge("joe", "INBOX", [1, 2])
    put(st, "joe", "INBOX", 9)
    assert st.folder("joe", "INBOX").uidnext == 5
    return st, a, was


def test_reference_file_never_reuses_uids_a_merge_passed(driver, tmp_path):
    """A pipe restore of joe's INBOX (moved on since the backup: UIDs 1, 2 expunged,
    UIDNEXT 5) cannot resolve its two links (no spool): exit 1 and a reference file.
    imsrestore -r then put them back at UIDs 1 and 2, below UIDNEXT 5, exit 0, "0 with
    new UIDs": a client that synced up to UIDNEXT 5 never sees them.  They get new UIDs
    (5, 6), counted as renumbered, exactly as the same restore from the file in one pass."""
    one, a1, was1 = _joe_moved_on(tmp_path / "one", driver, tmp_path)
    report1 = tmp_path / "one.json"
    run(tmp_path / "one", "imsrestore", "--report", report1, "-f", a1, "/primary/joe/INBOX", check=0)
    two, a2, was2 = _joe_moved_on(tmp_path / "two", driver, tmp_path)
    ref, report2 = tmp_path / "joe.ref", tmp_path / "two.json"
    run(tmp_path / "two", "imsrestore", "-R", ref, "-f", "-", "/primary/joe/INBOX", input=a2.read_bytes(),
        check=1)
    assert len(json.loads(ref.read_text())["references"]) == 2
    p = run(tmp_path / "two", "imsrestore", "-v", "--report", report2, "-f", a2, "-r", ref, text=True,
            check=0)

    def view(st, was):
        uv = st.folder("joe", "INBOX").uidvalidity
        got = {k[2]: v for k, v in state(st, users={"joe"}).items() if len(k) == 3}
        old = {k[2]: v for k, v in was.items() if len(k) == 3}
        assert sorted(got) == [3, 4, 5, 6], sorted(got)
        assert (got[5], got[6]) == (old[1], old[2])       # bytes, flags, date as archived
        return st.folder("joe", "INBOX").uidnext, uv == was[("joe", "INBOX")][0], \
            {u: v[:3] for u, v in got.items()}

    assert view(one, was1)[0] == 7                      # the one-pass restore
    assert view(two, was2) == view(one, was1)
    assert ", 2 with new UIDs," in p.stderr, p.stderr
    counts = json.loads(report2.read_text())["counts"], json.loads(report1.read_text())["counts"]
    assert counts[0]["renumbered"] == counts[1]["renumbered"] == 2, counts
    p = run(tmp_path / "two", "imsrestore", "-v", "-f", a2, "-r", ref, text=True, check=0)
    assert view(two, was2)[2] == view(one, was1)[2] and "already there" in p.stderr      # adds nothing


def test_user_of_a_partition_not_configured_here_is_refused(driver, tmp_path):
    """An archived user of partition 'second' restored where 'second' is not configured
    (a forgotten or mistyped partition:second.path) is not put on 'primary' without a
    word: refused in one line naming the partition and both ways on (exit 2 when nothing
    else was restored, else 1); the other users are restored.  Made first on a configured partition, the user is restored there."""
    src = tmp_path / "src"
    (tmp_path / "p2").mkdir()
    s = open_store(make_home(src, driver, **{"partition:second.path": str(tmp_path / "p2")}))
    s.create_user("ann", "second")
    put(s, "ann", "INBOX", 1)
    put(s, "joe", "INBOX", 2)
    a = backup(src, tmp_path / "a.ims")
    for paths in ((), ("/second/ann",)):
        dest = tmp_path / f"dest{len(paths)}"
        target = open_store(make_home(dest, driver))
        p = run(dest, "imsrestore", "-f", a, *paths, text=True)
        assert p.returncode == (2 if paths else 1), p.stderr     # 1: joe was restored
        err = [ln for ln in p.stderr.splitlines() if "second" in ln]
        assert len(err) == 1 and "/second/ann" in err[0] and "partition:second.path" in err[0] \
            and "mboxutil -c user/ann -p primary" in err[0], p.stderr
        assert not target.exists("ann")
        assert target.users("primary") == ([] if paths else ["joe"])
    run(dest, "mboxutil", "-c", "user/ann", "-p", "primary", check=0)
    run(dest, "imsrestore", "-f", a, "/second/ann", check=0)
    assert len(open_store(make_home(dest, driver)).messages("ann", "INBOX")) == 1


def test_group_path_names_the_archived_user_of_that_name(store, ims_home, dest, tmp_path):
    """backup-groups.conf here defines group 'sales' and the archive holds user 'sales':
    /primary/sales reads as the group and matches nothing; the one-line refusal (exit 2)
    says 'sales' is a group here and names the user's path /primary/user/sales, which
    restores it."""
    put(store, "sales", "INBOX", 1)
    put(store, "ann", "INBOX", 2)
    a = backup(ims_home, tmp_path / "a.ims")
    (dest / "config").mkdir(exist_ok=True)
    (dest / "config" / "backup-groups.conf").write_text("sales=[s-z].*\n")
    for toc in (["-t"], []):
        p = run(dest, "imsrestore", *toc, "-f", a, "/primary/sales", text=True)
        assert p.returncode == 2, p.stderr
        err = [ln for ln in p.stderr.splitlines() if "/primary/sales" in ln]
        assert len(err) == 1 and "nothing in the archive matches" in err[0] \
            and "backup group" in err[0] and "/primary/user/sales" in err[0], p.stderr
    run(dest, "imsrestore", "-f", a, "/primary/user/sales", check=0)
    assert open_store(make_home(dest, store.name)).users("primary") == ["sales"]


def test_store_owner_gets_restored_files(source, ims_home, dest, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    run(dest, "msconfig", "set", "store.owner", "nobody", check=0)
    run(dest, "imsrestore", "-f", a, "/primary/user/ann", check=0)
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    target = open_store(make_home(dest, source.name))
    for m in target.messages("ann", "INBOX"):
        st = os.stat(m.path)
        assert st.st_uid == nobody and st.st_mode & 0o077 == 0
    # the store's own files too (the classic mailbox list, its SQLite files, the folder
    # locks) and the restore lock: else the owner's mboxutil and imsdeliver fail (exit 17)
    data = dest / "data"
    not_owned = [str(p.relative_to(data)) for p in [data / "restore.lock", *(data / "store").rglob("*")]
                 if p.exists() and p.stat().st_uid != nobody]
    if source.name == "classic":
        not_owned += [str(p.relative_to(data)) for p in [data / "store"] if p.stat().st_uid != nobody]
    assert not_owned == []


def test_restore_syncs_once(source, ims_home, dest, tmp_path, monkeypatch):
    from asm.archive.reader import ArchiveReader
    from asm.groups import Groups
    from asm.restore import Journal, Restorer, RestoreOptions, Selection
    from asm.store.base import Store
    calls = []
    monkeypatch.setattr(Store, "sync", lambda self: calls.append(1))
    a = backup(ims_home, tmp_path / "a.ims")
    target = open_store(make_home(dest, source.name))
    with open(a, "rb") as f:
        Restorer(target, Groups(), ArchiveReader(f), RestoreOptions(), Selection([], Groups()),
                 Journal(str(tmp_path / "j.db"))).restore()
    # one sync before the journal records the folders complete (never ahead of the disk:
    # docs/restore-design.md section 3), one as the batch ends (what the run wrote after
    # them: folders and users the archive no longer lists removed, GUIDs given); not one
    # per folder or file, whatever the number of folders
    assert calls == [1, 1]


# -- bad and hostile input -------------------------------------------------------

def _no_temp_files(home):
    return [os.path.join(d, f) for d, _, fs in os.walk(home) for f in fs
            if ".tmp" in f or f.startswith("tmp") or f.endswith(".partial")]


def test_truncated_archive(source, ims_home, dest, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    data = a.read_bytes()
    want = state(source)
    for cut in (len(data) // 3, len(data) // 2 + 777, len(data) - 10240 - 5):
        t = tmp_path / f"cut{cut}.ims"
        t.write_bytes(data[:cut])
        home = tmp_path / f"d{cut}"
        make_home(home, source.name)
        p = run(home, "imsrestore", "-f", t)
        assert p.returncode == 4 and b"incomplete" in p.stderr
        got = state(open_store(make_home(home, source.name)))
        for k, v in got.items():
            if len(k) == 3:
                assert want[k] == v, k            # whatever was restored is whole and right
        assert sum(1 for k in got if len(k) == 3) > 0
        assert not _no_temp_files(home / "data")


def test_corrupt_member_is_named_and_skipped(source, ims_home, dest, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    data = bytearray(a.read_bytes())
    i = data.index(b"body 1\r\n")                 # inside joe/INBOX message 2's data
    data[i] ^= 0x20
    bad = tmp_path / "bad.ims"
    bad.write_bytes(bytes(data))
    p = run(dest, "imsrestore", "-f", bad)
    assert p.returncode == 4 and b"damaged" in p.stderr
    target = open_store(make_home(dest, source.name))
    assert len(target.messages("joe", "INBOX")) == 3 - 1 + 1       # the shared one + 2 good
    assert len(target.messages("ann", "INBOX")) == 2               # the rest goes on
    home2 = tmp_path / "stop"
    make_home(home2, source.name)
    p = run(home2, "imsrestore", "-c", "n", "-f", bad)
    assert p.returncode == 4
    stopped = open_store(make_home(home2, source.name))
    assert stopped.exists("ann") and not stopped.exists("joe", "Sent")   # stopped at the error
    # ... and says so: never that the rest was restored (only the damaged member missing)
    last = p.stderr.strip().splitlines()[-1]
    assert b"the rest was restored" not in last and b"the rest of the archive was not restored" in last, \
        p.stderr


@pytest.mark.parametrize("mode", ["file", "pipe"])
def test_damage_in_a_message_the_store_holds_already_is_still_found(source, ims_home, dest, tmp_path, mode):
    """A rerun (or a chain restored again) does not copy what the store holds, but exit 0
    still means the archive was whole: the skipped message's bytes are read and checked."""
    a = backup(ims_home, tmp_path / "a.ims")
    run(dest, "imsrestore", "-f", a, check=0)
    data = bytearray(a.read_bytes())
    data[data.index(b"body 1\r\n")] ^= 0x20
    bad = tmp_path / "bad.ims"
    bad.write_bytes(bytes(data))
    before = state(open_store(make_home(dest, source.name)))
    if mode == "file":
        p = run(dest, "imsrestore", "-f", bad)
    else:
        p = run(dest, "imsrestore", "-f", "-", input=bytes(data))
    assert p.returncode == 4 and b"damaged" in p.stderr, p.stderr
    assert state(open_store(make_home(dest, source.name))) == before    # nothing lost or added


def _hostile(path, kind):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        hdr = json.dumps({"format": "ims-asm", "version": 1, "archive_id": "7c3a1f0e-5b1d-4b1e-9a57-3f2d6c1e8b90",
                          "created": 1.0}).encode()
        ti = tarfile.TarInfo("ims-asm.header")
        ti.size = len(hdr)
        ti.pax_headers = {"IMSASM.kind": "header"}
        t.addfile(ti, io.BytesIO(hdr))
        body = b"evil\r\n"
        import hashlib
        recs = {"IMSASM.kind": "message", "IMSASM.uid": "1", "IMSASM.flags": "", "IMSASM.keywords": "",
                "IMSASM.internaldate": "1", "IMSASM.stored": "1", "IMSASM.nlink": "1",
                "IMSASM.sha256": hashlib.sha256(body).hexdigest()}
        ti = tarfile.TarInfo({"dotdot": "primary/joe/INBOX/../../../../escape/1.eml",
                              "abs": "/tmp/escape-ims/1.eml", "symlink": "primary/joe/INBOX/1.eml"}[kind])
        if kind == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(ti)
        else:
            ti.size = len(body)
            ti.pax_headers = recs
            t.addfile(ti, io.BytesIO(body))


@pytest.mark.parametrize("kind", ["dotdot", "abs", "symlink"])
def test_hostile_archive_writes_nothing_outside(store, ims_home, tmp_path, kind):
    h = tmp_path / "h.ims"
    _hostile(h, kind)
    p = run(ims_home, "imsrestore", "-f", h)
    assert p.returncode == 5, p.stderr
    assert b"refusing member" in p.stderr
    assert not os.path.exists("/tmp/escape-ims") and not (tmp_path / "escape").exists()
    assert store.users("primary") == []


def test_not_an_archive(store, ims_home, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(30_000))
    p = run(ims_home, "imsrestore", "-f", junk)
    assert p.returncode == 8 and len(p.stderr.splitlines()) == 1 and b"not an ims-asm archive" in p.stderr
    p = run(ims_home, "imsrestore", "-f", tmp_path / "missing.ims")
    assert p.returncode == 3 and b"does not exist" in p.stderr


def test_killed_restore_completes_when_run_again(store, ims_home, dest, tmp_path):
    for i in range(150):
        put(store, "joe", "INBOX" if i % 2 else "Work", i, size=30_000)
    a = backup(ims_home, tmp_path / "a.ims")
    target = open_store(make_home(dest, store.name))
    p = popen(dest, "imsrestore", "-f", a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        if target.exists("joe") and target.exists("joe", "Work") and len(target.messages("joe", "Work")) > 10:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    run(dest, "imsrestore", "-f", a, check=0)
    assert state(open_store(make_home(dest, store.name))) == state(store)


def test_chain_keeps_a_new_message_with_the_same_bytes_as_an_old_one(store, ims_home, dest, tmp_path):
    """Two deliveries of the same bytes in two backup periods are two messages."""
    first = put(store, "bob", "INBOX", 1)
    full = backup(ims_home, tmp_path / "full.ims")
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    again = put(store, "bob", "INBOX", 1)          # identical bytes, new UID
    incr = tmp_path / "incr.ims"
    run(ims_home, "imsbackup", "-f", incr, "-d", since, "/", check=0)
    run(dest, "imsrestore", "-H", "-f", full, check=0)
    run(dest, "imsrestore", "-f", incr, check=0)
    target = open_store(make_home(dest, store.name))
    assert [m.uid for m in target.messages("bob", "INBOX")] == [first.uid, again.uid]
    assert state(target) == state(store)


def test_incremental_after_a_merge_never_expunges_live_mail(store, ims_home, tmp_path):
    """A restore merged into a live folder renumbers what it brings back; an incremental
    restored next must add to that folder, not treat it as a chain and expunge."""
    for n in range(3):
        put(store, "joe", "INBOX", n)
    full = backup(ims_home, tmp_path / "full.ims")
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    put(store, "joe", "INBOX", 10)
    incr = tmp_path / "incr.ims"
    run(ims_home, "imsbackup", "-f", incr, "-d", since, "/", check=0)
    lost = store.messages("joe", "INBOX")[0]
    store.expunge("joe", "INBOX", [lost.uid])          # the user deletes one; then asks for it back
    run(ims_home, "imsrestore", "-f", full, "/primary/user/joe", check=0)
    back = store.messages("joe", "INBOX")
    assert len(back) == 4 and back[-1].uid > lost.uid   # renumbered above UIDNEXT
    run(ims_home, "imsrestore", "-f", incr, "/primary/user/joe", check=0)
    assert [m.uid for m in store.messages("joe", "INBOX")] == [m.uid for m in back]


@pytest.mark.parametrize("answer", ["n", "y"])
def test_asks_whether_to_continue_on_a_terminal(source, ims_home, dest, tmp_path, answer):
    import pty
    a = backup(ims_home, tmp_path / "a.ims")
    data = bytearray(a.read_bytes())
    data[data.index(b"body 1\r\n")] ^= 0x20          # a damaged message in joe/INBOX
    bad = tmp_path / "bad.ims"
    bad.write_bytes(bytes(data))
    master, slave = pty.openpty()
    os.write(master, answer.encode() + b"\n")          # typed ahead; read at the prompt
    p = run(dest, "imsrestore", "-f", bad, stdin=slave)
    os.close(slave)
    os.close(master)
    assert b"Do you want to continue? [y/n]" in p.stderr
    assert p.returncode == 4            # damage: the archive's, whatever was answered
    target = open_store(make_home(dest, source.name))
    assert target.exists("joe", "Sent") == (answer == "y")


def test_full_store_disk_stops_cleanly_and_a_rerun_finishes(store, ims_home, tmp_path, driver):
    for n in range(40):
        put(store, "joe", "INBOX" if n % 2 else "Work", n, size=60_000)
    a = backup(ims_home, tmp_path / "a.ims")
    with small_tmpfs(tmp_path / "small", "1m") as part:
        home = tmp_path / "target"
        make_home(home, driver).set("partition:primary.path", str(part / "primary"))
        p = run(home, "imsrestore", "-f", a)
        assert p.returncode == 13, p.stderr
        assert p.stderr.count(b"\n") == 1 and b"the store is full" in p.stderr
        assert not _no_temp_files(part)                      # nothing half-written
        subprocess.run(["mount", "-o", "remount,size=64m", str(part)], check=True)
        run(home, "imsrestore", "-f", a, check=0)             # freed space: the same command finishes
        assert state(open_store(make_home(home, driver))) == state(store)


def test_a_full_disk_as_a_classic_folder_is_adopted_is_13_and_the_rerun_is_exact(tmp_path):
    """imsrestore into a classic store whose disk fills up (a real tmpfs written full) just
    before it builds, under a folder's lock, the empty index of a folder it listed (the
    steps that open a store.idx.new-PID), and at points spread over the rest of the run.
    lock() is no store operation that turns SQLite errors into StoreError: "database or
    disk is full" there was "internal error", exit 70.  Now 13, one line, and the same
    command with room gives the store an uninterrupted restore gives."""
    import shutil
    from asm.config import Config
    from tests.faults import count_steps, run_with_fault, spread
    src = open_store(make_home(tmp_path / "src", "classic"))
    for u in ("joe", "ann"):
        for f in ("INBOX", "Work"):
            for i in range(6):
                put(src, u, f, i, size=3000 * i, flags=["\\Seen"] if i % 2 else [])
    src.close()
    a = backup(tmp_path / "src", tmp_path / "a.ims")
    with small_tmpfs(tmp_path / "small", "4m") as mnt:
        home, filler, log = mnt / "h", mnt / "filler", tmp_path / "steps.log"
        argv = ["imsrestore", "-f", str(a)]

        def fresh():
            shutil.rmtree(home, ignore_errors=True)
            make_home(home, "classic")

        fresh()
        total, p = count_steps(argv, mnt, tmp_path, env={"IMS_HOME": str(home), "IMS_FAULT_LOG": str(log)})
        assert p.returncode == 0, p.stderr
        s = open_store(Config(str(home)))
        want = state(s)
        s.close()
        steps = [line.split(" ", 1) for line in log.read_text().splitlines()]
        adopt = {int(n) for n, what in steps if "store.idx.new-" in what}
        assert adopt, steps
        statuses = set()
        for k in sorted(adopt | set(spread(total, 8, 4))):
            fresh()
            r = run_with_fault(argv, mnt, f"fill:{k}", env={"IMS_HOME": str(home), "IMS_FAULT_FILL": str(filler)})
            statuses.add(r.returncode)
            assert r.returncode in (0, 13), (k, r.stderr)
            if r.returncode == 13:
                assert r.stderr.count(b"\n") == 1 and b"full" in r.stderr, (k, r.stderr)
            if filler.exists():
                os.unlink(filler)
            run(home, *argv, env={"IMS_HOME": str(home)}, check=0)
            s = open_store(Config(str(home)))
            try:
                assert state(s) == want, k
            finally:
                s.close()
        assert 13 in statuses, statuses


def test_a_restore_stopped_by_a_full_disk_says_only_that(store, ims_home, tmp_path, driver):
    """imsrestore of two users with IMS_HOME (its journal) on a disk that fills, the store
    elsewhere: at every amount of free space where the run stops (exit 13), stderr is the
    one line of the full disk, never also "/primary/cid: nothing in the archive matches
    this path" (cid is in the archive; the run stopped before it)."""
    for u in ("ann", "bob", "cid"):
        for n in range(6):
            put(store, u, "INBOX", n, size=60_000)
    a = backup(ims_home, tmp_path / "a.ims")
    stopped = 0
    with small_tmpfs(tmp_path / "small", "2m") as mnt:
        for free in range(16, 132, 12):
            home = mnt / "home"
            cfg = make_home(home, driver)
            cfg.set("partition:primary.path", str(tmp_path / f"dst{free}" / "primary"))
            cfg.set("store.root", str(tmp_path / f"dst{free}" / "root"))
            st = os.statvfs(mnt)
            with open(mnt / "fill", "wb") as f:
                f.write(b"\0" * max(st.f_bavail * st.f_frsize - free * 1024, 0))
            p = run(home, "imsrestore", "-f", a, "/primary/bob", "/primary/cid")
            os.unlink(mnt / "fill")
            assert p.returncode in (0, 13), (free, p.stderr)
            if p.returncode == 13:
                stopped += 1
                assert b"nothing in the archive matches" not in p.stderr, (free, p.stderr)
                assert p.stderr.count(b"\n") == 1 and b"full" in p.stderr, (free, p.stderr)
            subprocess.run(["rm", "-rf", str(home)], check=True)
    assert stopped, "the disk never filled"



@pytest.mark.parametrize("pages", [0, 1])
def test_a_full_disk_under_the_dovecot_hold_file_is_named_as_that(tmp_path, pages):
    """dovecot.holdfile on a filesystem that is full (/etc/dovecot, not the store): the
    restore said "the store is full ... free space on the partition", sending the
    administrator to a partition with room to spare (``pages``: pages left free).  It names the hold file's
    filesystem (exit 13, one line), leaves no temporary file beside the hold file and no
    mail half-written; with room made, the same command restores everything."""
    src = open_store(make_home(tmp_path / "src", "maildir"))
    for n in range(3):
        put(src, "joe", "INBOX" if n % 2 else "Work", n, flags=["\\Seen"])
    a = backup(tmp_path / "src", tmp_path / "a.ims")
    home = tmp_path / "dest"
    cfg = make_home(home, "maildir")
    with small_tmpfs(tmp_path / "etc", "64k") as etc:
        hold = etc / "hold.lmtp"
        hold.write_text("carol:::::::userdb_tempfail=yes userdb_reason=admin\n")
        filler = etc / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:
                pass
            # one page free: its lock file is made, the new hold file cannot be written
            os.truncate(filler, max(0, os.fstat(f.fileno()).st_size - pages * 4096))
        cfg.set("dovecot.holdfile", str(hold))
        p = run(home, "imsrestore", "-f", a, text=True)
        assert p.returncode == 13, p.stderr
        assert p.stderr.count("\n") == 1 and f"Dovecot hold file {hold}" in p.stderr, p.stderr
        assert "the store is full" not in p.stderr and f"filesystem holding {hold}" in p.stderr, p.stderr
        assert sorted(os.listdir(etc)) == ["filler", "hold.lmtp"]
        assert hold.read_text() == "carol:::::::userdb_tempfail=yes userdb_reason=admin\n"
        filler.unlink()
        run(home, "imsrestore", "-f", a, check=0)
        assert state(open_store(make_home(home, "maildir"))) == state(src)
        assert hold.read_text() == "carol:::::::userdb_tempfail=yes userdb_reason=admin\n"

# -- any archive, however damaged or hostile (issue 12; tests/test_archive_fuzz.py fuzzes) --

def _client_view(store) -> dict:
    return {tuple(k): v for k, v in state(store).items()}


def test_version_1_archives_restore_and_list(store, ims_home, tmp_path, driver):
    """An archive written by ims-asm before format 2 (tests/data: imsbackup of 31e29da)."""
    import gzip
    data_dir = os.path.join(os.path.dirname(__file__), "data")
    v1 = tmp_path / "v1.ims"
    v1.write_bytes(gzip.decompress(open(os.path.join(data_dir, "v1-archive.ims.gz"), "rb").read()))
    want = {}
    for k, v in json.load(open(os.path.join(data_dir, "v1-archive.json"), encoding="utf-8"))["state"]:
        want[tuple(k)] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    assert run(ims_home, "imsrestore", "-h", "-f", v1, check=0).stdout.count(b"version: 1") == 1
    toc = run(ims_home, "imsrestore", "-t", "-f", v1, check=0).stdout.decode()
    assert "/primary/joe/Réunions 50%\tuidvalidity=" in toc and "link to primary/ann/INBOX/3.eml" in toc
    run(ims_home, "imsrestore", "-f", v1, check=0)
    assert state(store) == want
    data = bytearray(v1.read_bytes())
    data[data.index(b"body 3\r\n")] ^= 0x01          # damaged bytes: -t says so, not 0
    bad = tmp_path / "bad.ims"
    bad.write_bytes(bytes(data))
    p = run(ims_home, "imsrestore", "-t", "-f", bad)
    assert p.returncode == 4 and b".eml is damaged: SHA-256" in p.stderr


def test_listing_checks_every_digest_and_names_the_damage(source, ims_home, tmp_path):
    a = backup(ims_home, tmp_path / "a.ims")
    assert run(ims_home, "imsrestore", "-t", "-v", "-f", a, check=0).stderr.count(b"every digest matches") == 1
    data = bytearray(a.read_bytes())
    data[data.index(b"body 1\r\n")] ^= 0x20           # message bytes
    i = data.rindex(b"imsasm.flags=\\Seen")              # a record: the flags of another message
    data[i + len(b"imsasm.flags=\\")] ^= 0x20          # \Seen -> \seen
    bad = tmp_path / "bad.ims"
    bad.write_bytes(bytes(data))
    p = run(ims_home, "imsrestore", "-t", "-f", bad)
    assert p.returncode == 4, p.stderr
    lines = p.stderr.decode().splitlines()
    assert any("primary/joe/INBOX/2.eml is damaged: SHA-256" in ln for ln in lines)
    assert any("do not match their digest (IMSASM.digest)" in ln for ln in lines)
    assert p.stdout.startswith(b"/primary/")             # the listing is still printed


def test_header_fields_are_checked_before_any_use(store, ims_home, tmp_path):
    """The archive id names the default reference file: a path in it never reaches the
    filesystem, and a restore without pending links makes no refs directory at all."""
    from tests import archive_fuzz as af
    put(store, "joe", "INBOX", 1)
    a = backup(ims_home, tmp_path / "a.ims")
    dest = tmp_path / "sandbox" / "home"
    make_home(dest, store.name)
    run(dest, "imsrestore", "-f", a, check=0)
    assert not (dest / "data" / "refs").exists()
    for evil in ("../../../escape", str(tmp_path / "abs-escape"), "a\x00b"):
        ms = af.models(a.read_bytes())
        ms[0].json["archive_id"] = evil
        h = tmp_path / "h.ims"
        h.write_bytes(af.emit(ms))                   # every digest recomputed: only the check stops it
        for args in (["-f", h], ["-f", "-", "-R", tmp_path / "x.ref"], ["-t", "-f", h]):
            p = run(dest, "imsrestore", *args, input=h.read_bytes() if "-" in args else None)
            assert p.returncode == 4 and b"archive_id" in p.stderr and b"is not a UUID" in p.stderr
    assert sorted(os.listdir(tmp_path / "sandbox")) == ["home"]
    assert not list(tmp_path.glob("*escape*")) and not (dest / "data" / "refs").exists()


def test_uid_lists_stay_ranges(store, ims_home, tmp_path):
    """A 21-byte record 1:4294967295 is read as two numbers, restore and -t alike."""
    import tracemalloc
    from tests import archive_fuzz as af
    from asm.archive.reader import ArchiveReader
    put(store, "joe", "INBOX", 1)
    a = backup(ims_home, tmp_path / "a.ims")
    ms = af.models(a.read_bytes())
    folder = next(m for m in ms if m.get("IMSASM.kind") == b"folder")
    folder.set("IMSASM.uids", b"1:4294967295")
    folder.set("IMSASM.count", b"4294967295")
    data = af.emit(ms)
    tracemalloc.start()
    try:
        f = next(m for m in ArchiveReader(io.BytesIO(data)) if m.kind == "folder")
        assert len(f.uids) == 4294967295 and 4294967295 in f.uids and 0 not in f.uids
        assert tracemalloc.get_traced_memory()[1] < 20 << 20
    finally:
        tracemalloc.stop()
    h = tmp_path / "big.ims"
    h.write_bytes(data)
    before = state(store)
    store.delete_user("joe")
    run(ims_home, "imsrestore", "-f", h, check=0, timeout=60)
    assert state(store) == before
    assert b"uids=4294967295" in run(ims_home, "imsrestore", "-t", "-f", h, check=0, timeout=60).stdout


def test_a_damaged_reference_file_is_one_line(store, ims_home, tmp_path):
    put(store, "joe", "INBOX", 1)
    a = backup(ims_home, tmp_path / "a.ims")
    for doc in ({"format": "ims-asm-references", "references": "x"},
                {"format": "ims-asm-references", "references": [{"user": "joe"}]}):
        ref = tmp_path / "bad.ref"
        ref.write_text(json.dumps(doc))
        p = run(ims_home, "imsrestore", "-f", a, "-r", ref)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and b"damaged reference file" in p.stderr


def test_a_group_path_lists_and_restores_the_users_the_backup_recorded(source, ims_home, dest, tmp_path):
    """Group membership is as recorded at backup: a group redefined since does not change
    what /partition/GROUP restores, nor what -t lists for it (they agree)."""
    groups = ims_home / "config" / "backup-groups.conf"
    groups.write_text("team=(joe|ann)\n")
    a = backup(ims_home, tmp_path / "a.ims")
    groups.write_text("team=joe\n")
    (dest / "config").mkdir(parents=True, exist_ok=True)
    (dest / "config" / "backup-groups.conf").write_text("team=joe\n")
    toc = run(dest, "imsrestore", "-t", "-f", a, "/primary/team", check=0, text=True).stdout
    listed = sorted({ln.split("/")[2] for ln in toc.splitlines() if "\tuidvalidity=" in ln})
    run(dest, "imsrestore", "-f", a, "/primary/team", check=0)
    restored = sorted(open_store(make_home(dest, source.name)).users("primary"))
    assert listed == restored == ["ann", "joe"], (listed, restored)
    # a path that matches nothing: the listing says so and exits 2, as the restore does
    p = run(dest, "imsrestore", "-t", "-f", a, "/primary/user/nobody", text=True)
    assert p.returncode == 2 and "/primary/user/nobody: nothing in the archive matches" in p.stderr


def test_a_group_path_selects_the_group_the_archive_recorded_with_no_groups_file_here(
        source, ims_home, tmp_path):
    """The disaster case: a fresh installation (no backup-groups.conf), or one whose groups
    changed since the backup.  /partition/GROUP[/user[/folder]] selects by the group each
    user member of the archive records, as -t lists it; never 'nothing matches'."""
    (ims_home / "config" / "backup-groups.conf").write_text("team=joe\n")
    a = tmp_path / "team.ims"
    run(ims_home, "imsbackup", "-f", a, "/primary/team", check=0)
    want = state(source, users={"joe"})
    cases = [("fresh", None, "/primary/team", {"joe"}),
             ("fresh-user", None, "/primary/team/joe", {"joe"}),
             ("fresh-folder", None, "/primary/team/joe/Work", {("joe", "Work/2023")}),
             ("changed", "team=ann\n", "/primary/team/joe", {"joe"}),
             ("other", "other=joe\n", "/primary/team", {"joe"})]
    for name, groups, path, what in cases:
        home = tmp_path / name
        make_home(home, source.name)
        if groups is not None:
            (home / "config" / "backup-groups.conf").write_text(groups)
        toc = run(home, "imsrestore", "-t", "-f", a, path, text=True)
        p = run(home, "imsrestore", "-f", a, path)
        assert p.returncode == 0 == toc.returncode, (name, p.stderr, toc.stderr)
        got = state(open_store(make_home(home, source.name)))
        if what == {"joe"}:
            assert got == want, name
        else:
            assert {k[:2] for k in got if len(k) == 3} == what, (name, got.keys())
        # -t lists what the restore takes
        listed = {ln.split("\t")[0] for ln in toc.stdout.splitlines() if "\tuidvalidity=" in ln}
        assert {f"/primary/{k[0]}/{k[1]}" for k in got if len(k) == 3} <= listed, (name, listed)
        assert all(x.startswith(f"/primary/joe/{'Work' if 'folder' in name else ''}") for x in listed), listed
    # a group the archive does not record, nor a user of that name: still refused, exit 2
    p = run(tmp_path / "fresh", "imsrestore", "-f", a, "/primary/nobody")
    assert p.returncode == 2 and b"/primary/nobody: nothing in the archive matches" in p.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_path_that_names_a_group_and_a_user_here_means_the_user_or_is_refused(tmp_path, driver):
    """/primary/bob where bob is a user of the store restored into and also a backup
    group (configured here, or only recorded by the archive): restoring the group would
    merge other users' archived mail into their live folders (bringing back what they
    deleted), and bob's own was not restored.  A group configured here is refused as on
    backup (exit 2, naming /primary/user/bob); a group only the archive records gives
    way to the user, as the short form is documented."""
    home = tmp_path / "ims"
    store = open_store(make_home(home, driver))
    put(store, "alice", "INBOX", 1)
    put(store, "alice", "INBOX", 2)
    put(store, "bob", "INBOX", 3)
    (home / "config" / "backup-groups.conf").write_text("bob=a.*\n")
    a = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    s = open_store(make_home(home, driver))
    s.expunge("alice", "INBOX", [m.uid for m in s.messages("alice", "INBOX")][:1])   # deleted on purpose
    s.expunge("bob", "INBOX", [m.uid for m in s.messages("bob", "INBOX")])
    p = run(home, "imsrestore", "-f", a, "/primary/bob", check=2, text=True)
    assert "/primary/user/bob is the user" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    (home / "config" / "backup-groups.conf").unlink()       # a group only the archive records
    run(home, "imsrestore", "-f", a, "/primary/bob", check=0)
    s = open_store(make_home(home, driver))
    assert len(s.messages("bob", "INBOX")) == 1
    assert len(s.messages("alice", "INBOX")) == 1            # not brought back


def test_a_resumed_restore_takes_one_kept_copy_for_one_archived_message_only():
    """A folder a run cut short made, resumed: two archived messages with the same bytes
    whose UIDs it left free (a full disk, a link a stream could not keep), and one copy of
    those bytes that run stored under a new UID.  That copy stands for one of them; the
    other is restored at its archived UID, never taken for the same copy (mail lost)."""
    from types import SimpleNamespace

    from asm.archive.values import UidSet
    from asm.restore.apply import Applier
    from asm.restore.options import RestoreOptions, RestoreResult
    from asm.restore.plan import FolderPlan

    kept = SimpleNamespace(uid=9, size=5, path="/kept")
    plan = FolderPlan(partition="primary", src_user="u", user="u", folder="INBOX", src_folder="INBOX",
                      mode="exact", archive_uidvalidity=7, archive_uidnext=4, archive_uids=UidSet.of([1, 2, 3]),
                      uidvalidity=7, state=None, existing={5: [kept]}, by_uid={9: kept},
                      digests={"/kept": "d"}, uidnext=10, resumed=True)
    applier = Applier(None, None, RestoreOptions(), RestoreResult(), False, None)
    first, second = (SimpleNamespace(uid=u, size=5, sha256="d") for u in (1, 2))
    assert applier.duplicate(plan, first) is kept
    assert applier.duplicate(plan, second) is None        # restored at UID 2, not lost


def test_a_restore_that_cannot_keep_an_internaldate_names_the_message(tmp_path):
    """A classic archive's INTERNALDATEs of 1800-01-01 and 3000-01-01 (the format holds
    years 1..9999) restored into a maildir store on ext4 came back as 1901-12-13 and
    2446-05-10 with exit 0 and no word: a Maildir's INTERNALDATE is its file's mtime, and
    os.utime's result was never looked at.  Every message is restored; those whose date
    the file system could not keep are named, exit 1."""
    from tests.helpers import small_ext4
    src = open_store(make_home(tmp_path / "classic", "classic"))
    dates = {1: -5364662400.0, 2: 32503680000.0, 3: 1e9}
    for uid, t in dates.items():
        put(src, "joe", "INBOX", uid, internaldate=t)
    a = tmp_path / "a.ims"
    run(tmp_path / "classic", "imsbackup", "-f", a, "/", check=0)
    with small_ext4(tmp_path / "ext4") as mnt:
        dest = tmp_path / "maildir"
        s2 = open_store(make_home(dest, "maildir", **{"partition:primary.path": str(mnt)}))
        p = run(dest, "imsrestore", "-f", a, text=True, check=1)
        got = {m.uid: m.internaldate for m in s2.messages("joe", "INBOX")}
        assert sorted(got) == [1, 2, 3] and got[3] == 1e9
        assert got[1] != dates[1] and got[2] != dates[2]
        for uid, day in ((1, "1800-01-01 00:00:00 UTC"), (2, "3000-01-01 00:00:00 UTC")):
            assert (f"/primary/joe/INBOX: message {uid}: its INTERNALDATE {day} could not be kept: "
                    f"the store holds ") in p.stderr, p.stderr
        assert "message 3" not in p.stderr


def _held(store, user, folder) -> list:
    """(bytes, flags, keywords) of each message of a folder, sorted: what a client has,
    copies counted."""
    out = []
    for m in store.messages(user, folder):
        with open(m.path, "rb") as f:
            out.append((f.read(), tuple(sorted(m.flags)), tuple(sorted(m.keywords))))
    return sorted(out)


def _by_uid(store) -> dict:
    out = {}
    for m in store.messages("joe", "INBOX"):
        with open(m.path, "rb") as f:
            out[m.uid] = (f.read(), sorted(m.flags))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_a_restore_brings_back_each_expunged_copy_of_a_message_held_more_than_once(
        store, ims_home, tmp_path, seed):
    """A folder holds some messages several times (same bytes, 0-byte ones too), each copy
    with flags of its own; some copies are expunged, a full restore into the live folder
    (and a chain of a full and an incremental in one command) brings back exactly those:
    each message there stands for one archived message, the one at its own UID first.
    (Archived UID 1 was taken for the copy at UID 2, which archived UID 2 then matched too:
    imsrestore exited 0 having restored nothing.)"""
    import random
    rnd = random.Random(seed)
    pool = [b"", msg(1), msg(2, 10)]
    flag_sets = [[], ["\\Flagged"], ["\\Seen"], ["\\Seen", "\\Answered"]]

    def add(n):
        for _ in range(n):
            put_bytes = rnd.choice(pool)
            if not store.exists("joe"):
                store.create_user("joe")
            store.append("joe", "INBOX", io.BytesIO(put_bytes), flags=rnd.choice(flag_sets),
                         keywords=rnd.choice([[], ["$Label1"]]), internaldate=1e9 + rnd.randrange(1000))

    add(rnd.randrange(3, 8))
    full = backup(ims_home, tmp_path / "full.ims")
    archived = _held(store, "joe", "INBOX")
    uids = [m.uid for m in store.messages("joe", "INBOX")]
    gone = rnd.sample(uids, rnd.randrange(1, len(uids)))
    survivors = {u: v for u, v in _by_uid(store).items() if u not in gone}
    store.expunge("joe", "INBOX", gone)
    run(ims_home, "imsrestore", "-f", full, check=0)
    assert _held(store, "joe", "INBOX") == archived, f"expunged UIDs {gone} of {uids}"
    after = _by_uid(store)
    assert {u: after.get(u) for u in survivors} == survivors    # the copies still there kept their UIDs
    run(ims_home, "imsrestore", "-f", full, check=0)         # run again: nothing changes
    assert _held(store, "joe", "INBOX") == archived

    # a chain: more copies arrive, an incremental takes them; copies of both are expunged
    add(rnd.randrange(1, 5))
    incr = tmp_path / "incr.ims"
    run(ims_home, "imsbackup", "-f", incr, "--base", full, "/", check=0)
    archived = _held(store, "joe", "INBOX")
    uids = [m.uid for m in store.messages("joe", "INBOX")]
    store.expunge("joe", "INBOX", rnd.sample(uids, rnd.randrange(1, len(uids))))
    run(ims_home, "imsrestore", "-f", full, "-f", incr, check=0)
    assert _held(store, "joe", "INBOX") == archived


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_restore_into_a_folder_made_again_names_it_with_new_uids(tmp_path, driver):
    """A folder found under its own name with another UIDVALIDITY (deleted and made again
    since the backup, or made by a delivery into a store emptied for a restore) takes
    every archived message with a new UID: clients that cached it fetch it all again.
    The restore exited 0 without a word (only -v's count "N with new UIDs").  It still
    exits 0 -- every message is there, a merge is what the rules say -- but names each
    such folder, its count and both UIDVALIDITYs, on stderr and in --report; a folder
    merged into under its own UIDVALIDITY, whose messages keep their UIDs, is not named."""
    home = tmp_path / "ims"
    store = open_store(make_home(home, driver))
    for i in range(5):
        put(store, "joe", "Work", i)
        put(store, "joe", "INBOX", 10 + i)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    old = store.folder("joe", "Work").uidvalidity
    store.delete_folder("joe", "Work")
    time.sleep(1.1)                                 # a UIDVALIDITY is a time in seconds
    put(store, "joe", "Work", 99)
    new = store.folder("joe", "Work").uidvalidity
    assert new != old
    store.expunge("joe", "INBOX", [m.uid for m in store.messages("joe", "INBOX")][:2])
    report = tmp_path / "r.json"
    p = run(home, "imsrestore", "-f", a, "--report", report, check=0, text=True)
    notes = [ln for ln in p.stderr.splitlines() if "new UIDs" in ln]
    assert notes == [f"imsrestore: note: /primary/joe/Work: its 5 archived messages were added with new UIDs: "
                     f"the folder there has UIDVALIDITY {new}, the archived one {old} (made again since the "
                     f"backup, or by a delivery while the store was empty: hold deliveries during a restore, "
                     f"docs/dovecot.md); clients that cached the archived folder fetch its mail again"], p.stderr
    assert json.loads(report.read_text())["new_uids"] == [
        {"mailbox": "/primary/joe/Work", "messages": 5, "uidvalidity": new, "archived_uidvalidity": old}]
    assert len(store.messages("joe", "Work")) == 6 and len(store.messages("joe", "INBOX")) == 5
    p = run(home, "imsrestore", "-f", a, "--report", report, check=0, text=True)
    assert "new UIDs" not in p.stderr and json.loads(report.read_text())["new_uids"] == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_chain_restore_reports_every_folder_it_gave_new_uids(tmp_path, driver):
    """The same note from a chain given in one command, and its --report's new_uids
    names the folder (it was [] though the note was printed); one message is "was"."""
    home = tmp_path / "ims"
    store = open_store(make_home(home, driver))
    put(store, "joe", "Work", 1)
    put(store, "joe", "INBOX", 2)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    put(store, "joe", "INBOX", 3)
    run(home, "imsbackup", "-f", incr, "-d", since, "/", check=0)
    store.delete_folder("joe", "Work")
    time.sleep(1.1)
    put(store, "joe", "Work", 99)
    report = tmp_path / "r.json"
    p = run(home, "imsrestore", "-f", full, "-f", incr, "--report", report, check=0, text=True)
    assert "imsrestore: note: /primary/joe/Work: its 1 archived message was added with new UIDs" in p.stderr, p.stderr
    got = json.loads(report.read_text())["new_uids"]
    assert [(e["mailbox"], e["messages"]) for e in got] == [("/primary/joe/Work", 1)], got
