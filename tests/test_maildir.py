"""The maildir driver on its own: names on disk, flags in file names, dovecot-uidlist,
locks shared with Dovecot, delivery hold, single-copy delivery, cheap incrementals."""
from __future__ import annotations

import io
import os
import pathlib
import re
import shutil
import time

import pytest

from asm.archive.values import UidSet
from asm.config import Config
from asm.store import utf7
from asm.store.base import (BadName, FolderExists, LockTimeout, MessageGone, NoSuchFolder,
                            UidInUse, UserExists)
from asm.store.maildir import (STALE_LOCK_SECS, MaildirStore, Uidlist, ims_store_drivers,
                               stored_from_name)
from tests.helpers import unavailable

MSG = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def make(tmp_path, **options) -> MaildirStore:
    cfg = Config(home=str(tmp_path))
    cfg.set("store.driver", "maildir")
    cfg.set("partition:primary.path", str(tmp_path / "mail"))
    for k, v in options.items():
        cfg.set(k, v)
    return MaildirStore(cfg)


@pytest.fixture
def store(tmp_path):
    s = make(tmp_path)
    s.create_user("alice")
    return s


def root(store, user="alice"):
    return os.path.join(store.partition_path("primary"), user, "Maildir")


def add(store, folder="INBOX", body=MSG, **kw):
    return store.append("alice", folder, io.BytesIO(body), **kw)


# -- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, encoded", [
    ("Café", "Caf&AOk-"), ("a&b", "a&-b"), ("日本語", "&ZeVnLIqe-"), ("plain", "plain"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"), ("😀", "&2D3eAA-"),
])
def test_modified_utf7(name, encoded):
    assert utf7.encode(name) == encoded
    assert utf7.decode(encoded) == name


@pytest.mark.parametrize("bad", ["&Jjo", "&AGE-", "caf\xe9", "&!!-"])
def test_modified_utf7_refuses_bad_text(bad):
    with pytest.raises(ValueError):
        utf7.decode(bad)


def test_layout_on_disk(store):
    names = ["Work", "Work/2023", "with space", "100%", "semi;colon", "quote\"d", "it's",
             "Café/Réunions", "INBOX/Sub", "a&b"]
    for n in names:
        store.create_folder("alice", n)
    dirs = sorted(d for d in os.listdir(root(store)) if d.startswith("."))
    assert dirs == sorted([".Work", ".Work.2023", ".with space", ".100%", ".semi;colon",
                           ".quote\"d", ".it's", ".Caf&AOk-.R&AOk-unions", ".INBOX.Sub", ".a&-b"])
    assert [f.name for f in store.folders("alice")] == ["INBOX"] + sorted(names)
    for n in names:
        d = os.path.join(root(store), MaildirStore.folder_dirname(n))
        assert sorted(os.listdir(d)) == ["cur", "dovecot-uidlist", "maildirfolder", "new", "tmp"]
        info = add(store, n, body=n.encode())
        assert store.open_message("alice", n, info.uid).read() == n.encode()


def test_dot_in_a_level_is_refused_by_name(store):
    with pytest.raises(BadName, match="a.b"):
        store.create_folder("alice", "Work/a.b")


def test_folder_errors(store):
    store.create_folder("alice", "X")
    with pytest.raises(FolderExists):
        store.create_folder("alice", "X")
    with pytest.raises(FolderExists):
        store.create_folder("alice", "INBOX")
    with pytest.raises(NoSuchFolder):
        store.snapshot("alice", "Nope")
    with pytest.raises(UserExists):
        store.create_user("alice")


def test_registered_as_plugin(tmp_path):
    drivers = ims_store_drivers()
    assert list(drivers) == ["maildir"]
    # the factory gives the Maildir driver (or, for sdbox:/mdbox: locations, its dbox form)
    assert type(drivers["maildir"](make(tmp_path).config)) is MaildirStore


# -- flags, keywords, uidlist ---------------------------------------------------------------

def test_flags_and_keywords_in_file_names(store):
    m = add(store, flags=["\\Seen", "\\Answered", "\\Recent"], keywords=["$Label1", "foo"])
    name = os.path.basename(m.path)
    assert name.endswith(f",S={len(MSG)}:2,RSab") and "/cur/" in m.path
    with open(os.path.join(root(store), "dovecot-keywords")) as f:
        assert f.read() == "0 $Label1\n1 foo\n"
    m2 = store.set_flags("alice", "INBOX", m.uid, ["\\Flagged", "\\Deleted", "\\Draft"], ["bar", "foo"])
    assert os.path.basename(m2.path).endswith(":2,DFTbc")
    assert m2.flags == {"\\Flagged", "\\Deleted", "\\Draft"} and m2.keywords == ("foo", "bar")
    assert not os.path.exists(m.path)
    plain = add(store)
    assert os.path.basename(plain.path).endswith(":2,")       # cur/, so not \Recent


def test_uidlist_round_trip(store):
    store.create_folder("alice", "F", uidvalidity=4242, uidnext=10)
    a = add(store, "F", uid=12)
    b = add(store, "F")
    assert (a.uid, b.uid) == (12, 13)
    with pytest.raises(UidInUse):
        add(store, "F", uid=12)
    with pytest.raises(UidInUse):
        add(store, "F", uid=5)
    with open(os.path.join(root(store), ".F", "dovecot-uidlist")) as f:
        text = f.read()
    lines = text.splitlines()
    # records are appended as Dovecot appends them: the header keeps its N
    assert lines[0].startswith("3 V4242 N10 G")
    assert lines[1] == "12 :" + os.path.basename(a.path).split(":")[0]
    assert lines[2] == "13 :" + os.path.basename(b.path).split(":")[0]
    ul = Uidlist.parse(text)
    assert ul.uidnext == 14 and ul.header_uidnext == 10
    ul.header_uidnext = ul.uidnext
    assert ul.render() == text.replace(" N10 ", " N14 ")
    fresh = make(pathlib.Path(store.config.home))
    snap = fresh.snapshot("alice", "F")
    assert (snap.info.uidvalidity, snap.info.uidnext) == (4242, 14)
    assert [m.uid for m in snap.messages] == [12, 13]
    fresh.set_folder("alice", "F", uidnext=3)                 # never below max(UID)+1
    assert fresh.folder("alice", "F").uidnext == 14
    fresh.set_folder("alice", "F", uidnext=100, uidvalidity=7)
    assert (fresh.folder("alice", "F").uidvalidity, fresh.folder("alice", "F").uidnext) == (7, 100)


def test_reads_what_dovecot_wrote(store):
    """Lines with extension fields, names with flags, files in new/ not yet seen."""
    r = root(store)
    with open(os.path.join(r, "dovecot-uidlist"), "w") as f:
        f.write("3 V99 N5 Gabc\n"
                "2 :1600000000.M1P1.h,S=3,W=3:2,S\n"
                "4 G0123 W10 :1600000001.M2P1.h,S=3,W=3\n")
    with open(os.path.join(r, "dovecot-keywords"), "w") as f:
        f.write("0 Important\n3 $Junk\n")
    for sub, name in [("cur", "1600000000.M1P1.h,S=3,W=3:2,FS"), ("cur", "1600000001.M2P1.h,S=3,W=3:2,ad"),
                      ("new", "1600000003.M3P1.h"), ("new", "1600000002.M9P1.h")]:
        with open(os.path.join(r, sub, name), "wb") as f:
            f.write(b"abc")
        os.utime(os.path.join(r, sub, name), (1500000000, 1500000000))
    snap = store.snapshot("alice", "INBOX")
    assert snap.info.uidvalidity == 99
    got = [(m.uid, sorted(m.flags), m.keywords, m.size, m.internaldate, m.stored) for m in snap.messages]
    assert got == [
        (2, ["\\Flagged", "\\Seen"], (), 3, 1500000000, 1600000000.000001),
        (4, [], ("Important", "$Junk"), 3, 1500000000, 1600000001.000002),
        (5, [], (), 3, 1500000000, 1600000002.000009),       # new/ files get UIDs by time
        (6, [], (), 3, 1500000000, 1600000003.000003),
    ]
    assert snap.info.uidnext == 7
    with open(os.path.join(r, "dovecot-uidlist")) as f:        # and they were written down
        text = f.read()
    assert text.startswith("3 V99 N7 Gabc\n") and "4 G0123 W10 :1600000001.M2P1.h,S=3,W=3\n" in text
    assert "5 :1600000002.M9P1.h\n" in text and "6 :1600000003.M3P1.h\n" in text


def test_subscriptions_file_is_dovecot_23_format(store):
    store.create_folder("alice", "Work/2023", subscribed=True)
    store.create_folder("alice", "Café", subscribed=True)
    store.create_folder("alice", "Other")
    with open(os.path.join(root(store), "subscriptions")) as f:
        assert f.read() == "V\t2\n\nINBOX\nWork\t2023\nCaf&AOk-\n"
    assert {f.name: f.subscribed for f in store.folders("alice")} == {
        "INBOX": True, "Work/2023": True, "Café": True, "Other": False}
    store.set_folder("alice", "Café", subscribed=False)
    store.delete_folder("alice", "Work/2023")
    with open(os.path.join(root(store), "subscriptions")) as f:
        assert f.read() == "V\t2\n\nINBOX\n"


def test_old_subscriptions_format_is_read(store):
    store.create_folder("alice", "Work/2023")
    with open(os.path.join(root(store), "subscriptions"), "w") as f:
        f.write("Work.2023\nINBOX\n")
    assert store.folder("alice", "Work/2023").subscribed


def test_internaldate_and_stored_date(store):
    m = add(store, internaldate=1234567890, stored=1600000000.25)
    assert os.stat(m.path).st_mtime == 1234567890
    assert os.path.basename(m.path).startswith("1600000000.M250000P")
    got = store.message("alice", "INBOX", m.uid)
    assert (got.internaldate, got.stored) == (1234567890, 1600000000.25)
    assert stored_from_name("1795789136.M384800P24103.vm,S=18") == 1795789136.3848
    assert stored_from_name("junk") is None


def test_expunge(store):
    a, b = add(store), add(store)
    assert store.expunge("alice", "INBOX", [a.uid, 99]) == 1
    assert [m.uid for m in store.messages("alice", "INBOX")] == [b.uid]
    with pytest.raises(MessageGone):
        store.message("alice", "INBOX", a.uid)


def test_flag_change_while_reading_re_resolves(store, tmp_path):
    m = add(store, flags=["\\Seen"])
    other = make(tmp_path)
    other.set_flags("alice", "INBOX", m.uid, ["\\Seen", "\\Flagged"])
    assert not os.path.exists(m.path)
    with store.open_message("alice", "INBOX", m.uid) as f:   # re-asks message() once
        assert f.read() == MSG
    assert store.message("alice", "INBOX", m.uid).flags == {"\\Seen", "\\Flagged"}


def test_append_streams_in_chunks(store):
    class Src(io.RawIOBase):
        def __init__(self):
            self.left, self.max = 5 << 20, 0

        def readinto(self, b):
            self.max = max(self.max, len(b))
            n = min(len(b), self.left)
            b[:n] = b"x" * n
            self.left -= n
            return n

        def readable(self):
            return True

    src = Src()
    m = store.append("alice", "INBOX", src)
    assert m.size == 5 << 20 and src.max <= 1 << 20


def test_owner_is_applied(tmp_path):
    if os.geteuid() != 0:
        unavailable("chown needs root")
    s = make(tmp_path, **{"store.owner": "65534"})
    s.create_user("bob")
    m = s.append("bob", "INBOX", io.BytesIO(MSG))
    for p in (m.path, os.path.dirname(m.path), os.path.join(root(s, "bob"), "dovecot-uidlist")):
        assert os.stat(p).st_uid == 65534


# -- locks --------------------------------------------------------------------------------

def test_lock_is_reentrant_and_honoured_between_stores(store, tmp_path):
    other = make(tmp_path)
    with store.lock("alice", "INBOX"):
        with store.lock("alice", "INBOX"):
            m = add(store)                                     # no self-deadlock
            store.set_flags("alice", "INBOX", m.uid, ["\\Seen"])
        assert os.path.exists(os.path.join(root(store), "dovecot-uidlist.lock"))
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            with other.lock("alice", "INBOX", timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
    assert not os.path.exists(os.path.join(root(store), "dovecot-uidlist.lock"))
    with other.lock("alice", "INBOX", timeout=0.3):
        assert [x.uid for x in other.messages("alice", "INBOX")] == [m.uid]


def test_each_record_is_appended_before_its_file_shows(store, monkeypatch):
    """A message's record reaches dovecot-uidlist (one appended line, no rewrite) before
    its file is renamed into cur/: a kill in between never leaves a file in cur/
    without its UID."""
    path = os.path.join(root(store), "dovecot-uidlist")
    seen = []
    real_rename = os.rename

    def rename(src, dst, *a, **kw):
        if os.sep + "cur" + os.sep in str(dst):
            with open(path) as f:
                seen.append((os.path.basename(str(dst)).split(":")[0], f.read()))
        return real_rename(src, dst, *a, **kw)
    monkeypatch.setattr(os, "rename", rename)
    ino = os.stat(path).st_ino
    with store.lock("alice", "INBOX"):
        for _ in range(5):
            add(store)
    assert len(seen) == 5
    for n, (base, text) in enumerate(seen, 1):
        assert text.splitlines()[-1] == f"{n} :{base}"
    assert os.stat(path).st_ino == ino                   # appended to, never rewritten
    assert [m.uid for m in store.messages("alice", "INBOX")] == [1, 2, 3, 4, 5]


def test_a_record_whose_file_never_arrived_is_dropped(store):
    """What a writer killed between recording a message and renaming its file leaves:
    the file in tmp/ and its line; the next writer drops both and reuses the UID."""
    add(store)
    r = root(store)
    base = "1700000000.M1P999999Q1Rdeadbeef." + store._hostname
    with open(os.path.join(r, "tmp", base), "wb") as f:
        f.write(MSG)
    with open(os.path.join(r, "dovecot-uidlist"), "a") as f:
        f.write(f"2 :{base},S={len(MSG)}\n3 :{base}")          # and a torn last line
    assert store.folder("alice", "INBOX").uidnext >= 3
    b = add(store, uid=2)
    assert b.uid == 2 and os.listdir(os.path.join(r, "tmp")) == []
    assert [m.uid for m in store.messages("alice", "INBOX")] == [1, 2]
    with open(os.path.join(r, "dovecot-uidlist")) as f:
        assert base not in f.read()


def test_a_message_keeps_its_base_name_and_pop3_fields_where_the_name_is_free(store):
    """What POP3 clients know a message by (pop3_uidl_format = %f: the file's base name;
    the uidlist's P and O fields) is kept; a base name the folder already has, or one
    that is no Maildir base name, or whose S= or W= is not the size of its bytes, gives a
    new name (the GUID is kept as a G field)."""
    base = "1700000000.M5P77.mx.example,S=%d,W=%d" % (len(MSG), len(MSG))   # CRLF: W = S
    a = add(store, basename=base, guid=base, pop3_uidl="migr:1-a", pop3_order=2)
    assert os.path.basename(a.path) == base + ":2,"
    with open(os.path.join(root(store), "dovecot-uidlist")) as f:
        assert f.read().splitlines()[-1] == f"1 Pmigr:1-a O2 :{base}"
    m = store.message("alice", "INBOX", 1)
    assert (m.basename, m.guid, m.pop3_uidl, m.pop3_order) == (base, base, "migr:1-a", 2)
    assert int(m.stored) == 1700000000 and m.path == a.path
    again = add(store, basename=base, guid=base)               # taken: a live folder
    assert again.basename != base and again.guid == base
    # an S= that is not the message's size: Dovecot fails FETCH of such a file
    wrong = "1700000000.M6P77.mx.example,S=%d" % (len(MSG) + 1)
    # a W= (the size with CRLF line ends) that is not the bytes': Dovecot serves the
    # message cut to W= bytes (RFC822.SIZE and BODY[] both, seen on Dovecot 2.3.19)
    wrong_w = "1700000000.M7P77.mx.example,S=%d,W=%d" % (len(MSG), len(MSG) - 10)
    for bad in ("../x", ".hidden", "a/b", "a:2,S", "", "x" * 255, wrong, wrong_w):
        other = add(store, basename=bad)
        assert other.basename != bad and os.path.dirname(other.path) == os.path.join(root(store), "cur")
    # a bare LF counts two in W=, a CRLF split over two reads of the copy counts two
    head = b"Subject: lf\n\n"
    lf = head + b"x" * (65535 - len(head)) + b"\r\nbody\n"          # \r is byte 65,536
    lf_base = "1700000000.M8P77.mx.example,S=%d,W=%d" % (len(lf), len(lf) + 3)
    assert add(store, body=lf, basename=lf_base).basename == lf_base
    assert len(store.messages("alice", "INBOX")) == 11


def test_a_record_under_a_kept_base_name_whose_file_never_arrived_is_dropped(store):
    """A writer killed between recording a message under its archived base name and
    renaming its file there leaves its file in tmp/ under a name of ours whose R field
    is that base name's tag: the next writer drops both."""
    from asm.store.maildir.store import _base_tag
    add(store)
    r = root(store)
    kept = "1600000000.M1P5.old.example,S=%d" % len(MSG)
    tmp = f"1700000000.M1P999999Q1R{_base_tag(kept)}.{store._hostname}"
    with open(os.path.join(r, "tmp", tmp), "wb") as f:
        f.write(MSG)
    with open(os.path.join(r, "dovecot-uidlist"), "a") as f:
        f.write(f"2 :{kept}\n")
    b = add(store, basename=kept)              # UIDNEXT back to 2: UID 2 never showed
    assert b.uid == 2 and b.basename == kept and os.listdir(os.path.join(r, "tmp")) == []
    assert [m.uid for m in store.messages("alice", "INBOX")] == [1, 2]
    with open(os.path.join(r, "dovecot-uidlist")) as f:
        assert f.read().count(kept) == 1


def test_missing_tmp_and_new_are_made_again(store):
    add(store)
    r = root(store)
    os.rmdir(os.path.join(r, "tmp"))
    os.rmdir(os.path.join(r, "new"))
    add(store)
    assert os.path.isdir(os.path.join(r, "tmp")) and os.path.isdir(os.path.join(r, "new"))
    assert len(store.messages("alice", "INBOX")) == 2


def test_folder_without_cur_is_no_folder_and_is_completed(store):
    """A kill while a folder was being made leaves its directory without cur/: no
    folder yet; creating it again completes it with the UIDVALIDITY asked for."""
    d = os.path.join(root(store), ".Half")
    os.mkdir(d)
    os.mkdir(os.path.join(d, "tmp"))
    assert not store.exists("alice", "Half")
    store.create_folder("alice", "Half", uidvalidity=77)
    assert store.folder("alice", "Half").uidvalidity == 77


def test_user_maildir_is_built_aside_and_inbox_has_the_uidvalidity_asked(store):
    store.create_user("bob", uidvalidity=123456)
    assert store.folder("bob", "INBOX").uidvalidity == 123456
    assert store.folder("bob", "INBOX").subscribed
    home = os.path.dirname(root(store, "bob"))
    assert sorted(os.listdir(home)) == ["Maildir"]
    # a Maildir left without cur/ by a kill of an older version: INBOX is made again
    shutil.rmtree(os.path.join(root(store, "bob"), "cur"))
    assert store.exists("bob") and not store.exists("bob", "INBOX")
    store.create_folder("bob", "INBOX", uidvalidity=99)
    assert store.folder("bob", "INBOX").uidvalidity == 99


def test_stale_dotlock_is_broken(store):
    lock = os.path.join(root(store), "dovecot-uidlist.lock")
    with open(lock, "w") as f:
        f.write("1:elsewhere")
    old = time.time() - STALE_LOCK_SECS - 5
    os.utime(lock, (old, old))
    add(store)                                                 # takes over the old lock
    assert not os.path.exists(lock)


def test_dotlock_of_a_dead_local_process_is_broken(store):
    import socket
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    lock = os.path.join(root(store), "dovecot-uidlist.lock")
    with open(lock, "w") as f:
        f.write(f"{p.pid}:{socket.gethostname()}")
    os.utime(lock, (time.time() - 10, time.time() - 10))
    add(store)
    assert not os.path.exists(lock)


def test_dotlock_of_a_dead_process_is_broken_at_once(store):
    """A killed writer's lock is not waited for: its process is gone (even a fresh lock)."""
    import socket
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    lock = os.path.join(root(store), "dovecot-uidlist.lock")
    with open(lock, "w") as f:
        f.write(f"{p.pid}:{socket.gethostname()}")
    with store.lock("alice", "INBOX", timeout=0.2):
        with open(lock) as f:
            assert f.read() == f"{os.getpid()}:{socket.gethostname()}"
    assert not os.path.exists(lock)


def test_breaker_killed_between_rename_and_unlink_leaves_nothing_after_the_next_write(store):
    """Breaking a stale lock renames it aside before removing it; a process killed in
    between (CI found one, at one of 50 restore kill points) leaves the aside name, and
    the next writer of the folder removes it: nothing is left for an administrator."""
    import socket
    import subprocess
    import sys
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    r = root(store)
    lock = os.path.join(r, "dovecot-uidlist.lock")
    with open(lock, "w") as f:
        f.write(f"{dead.pid}:{host}")
    code = ("import os, sys\n"
            "from asm.store.maildir import dotlock\n"
            "real = os.unlink\n"
            "def unlink(p, *a, **k):\n"
            "    if str(p).endswith('.stale'):\n"
            "        os._exit(9)\n"
            "    return real(p, *a, **k)\n"
            "os.unlink = unlink\n"
            "dotlock.break_lock(sys.argv[1], sys.argv[2])\n")
    p = subprocess.run([sys.executable, "-c", code, lock, host],
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 9
    aside = [n for n in os.listdir(r) if n.endswith(".stale")]
    assert len(aside) == 1 and aside[0].startswith(f".temp.{host}.") and not os.path.exists(lock)
    add(store)                              # the next write of the folder
    assert [n for n in os.listdir(r) if n.endswith(".stale") or n.startswith(".temp.")
            or n.endswith(".lock")] == []
    assert [m.uid for m in store.snapshot("alice", "INBOX").messages] == [1]


@pytest.mark.parametrize("age, broken", [(0, False), (5, True)])
def test_empty_dotlock_is_stale_after_two_seconds(store, age, broken):
    """An empty lock (a writer killed between creating and filling it) names no owner:
    stale once it is a few seconds old, long before the lock timeout."""
    lock = os.path.join(root(store), "dovecot-uidlist.lock")
    open(lock, "w").close()
    os.utime(lock, (time.time() - age, time.time() - age))
    if broken:
        with store.lock("alice", "INBOX", timeout=0.5):
            pass
        assert not os.path.exists(lock)
    else:
        with pytest.raises(LockTimeout):
            with store.lock("alice", "INBOX", timeout=0.2):
                pass
        assert os.path.exists(lock)


def test_dotlock_is_never_empty_and_leaves_no_temporary(store, tmp_path):
    """Created as Dovecot does: a temporary file holding pid:host, linked to the lock
    name; the temporary is gone once the lock is taken."""
    r = root(store)
    with store.lock("alice", "INBOX"):
        names = os.listdir(r)
        assert "dovecot-uidlist.lock" in names
        assert not [n for n in names if n.startswith(".temp.")]
    assert not [n for n in os.listdir(r) if n.startswith(".temp.") or n.endswith(".lock")]


def test_fresh_foreign_dotlock_is_respected(store):
    lock = os.path.join(root(store), "dovecot-uidlist.lock")
    with open(lock, "w") as f:
        f.write("1:elsewhere")
    with pytest.raises(LockTimeout):
        with store.lock("alice", "INBOX", timeout=0.2):
            pass
    with pytest.raises(LockTimeout):                           # a snapshot waits too
        store.config.set("store.locktimeout", "1")
        store.snapshot("alice", "INBOX")
    os.unlink(lock)
    store.snapshot("alice", "INBOX")


def test_a_user_deleted_while_a_backup_reads_it_is_deleted_whole(tmp_path, monkeypatch):
    """mboxutil -d user/bob while a backup reads bob: the backup's snapshot runs between
    two steps of the removal (here: right after bob's Maildir/new is removed).  Before,
    its repair step made Maildir/new again inside the tree being removed: the delete
    failed (mboxutil exit 70, 'Directory not empty'), bob/Maildir/new was left, and
    mboxutil -l failed for the whole store from then on (exit 2, no such folder INBOX of
    bob).  Now the delete finishes, nothing of bob is left, the backup finds bob gone.
    A removal that fails after the Maildir went aside leaves bob deleted, says so in one
    line with the retry, and mboxutil -l and a backup of the others still work; run
    again, the delete finishes."""
    from asm.store.base import NoSuchUser, StoreError
    from tests.helpers import run
    s = make(tmp_path)
    for user in ("alice", "bob"):
        s.create_user(user)
        for _ in range(3):
            s.append(user, "INBOX", io.BytesIO(MSG))
    s.create_folder("bob", "Work")
    reader = make(tmp_path)
    bob = os.path.join(s.partition_path("primary"), "bob")
    # INBOX without new/ (as a killed creation leaves it): the backup's snapshot takes
    # the folder's lock and repairs it
    os.rmdir(os.path.join(bob, "Maildir", "new"))
    real_unlink, seen = os.unlink, []

    def unlink(path, *a, **kw):
        if not seen:                  # the removal's first file: the backup reads bob now
            seen.append(path)
            try:
                reader.snapshot("bob", "INBOX")
            except (NoSuchUser, NoSuchFolder) as exc:
                seen.append(exc)
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", unlink)
    s.delete_user("bob")
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert len(seen) == 2 and not os.path.lexists(bob), (seen, list(os.walk(bob)))
    assert not s.exists("bob") and s.users("primary") == ["alice"]
    p = run(tmp_path, "mboxutil", "-l")
    assert p.returncode == 0 and b"alice" in p.stdout and b"bob" not in p.stdout, p.stderr

    # the removal fails once the Maildir is aside: bob is deleted all the same
    s.create_user("bob")
    s.append("bob", "INBOX", io.BytesIO(MSG))
    real_rmtree = shutil.rmtree

    def refused(path, *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refused)
    with pytest.raises(StoreError) as e:
        s.delete_user("bob")
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert "user 'bob' is deleted" in str(e.value) and "run mboxutil -d user/bob again" in str(e.value)
    assert "\n" not in str(e.value)
    assert not s.exists("bob") and s.users("primary") == ["alice"]
    assert run(tmp_path, "mboxutil", "-l").returncode == 0
    p = run(tmp_path, "imsbackup", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == 0, p.stderr
    p = run(tmp_path, "mboxutil", "-d", "user/bob")
    assert p.returncode == 0 and not os.path.lexists(bob), p.stderr


# -- deliveries ----------------------------------------------------------------------------

def test_deliver_is_one_inode(store):
    store.create_user("bob")
    store.create_user("carol")
    out = store.deliver(["alice", "bob", "carol"], io.BytesIO(MSG), internaldate=1500000000)
    inos = {(i.dev, i.ino) for i in out.values()}
    assert len(inos) == 1 and out["carol"].nlink == 3
    assert all(i.internaldate == 1500000000 for i in out.values())


def test_delivery_hold_and_release(store):
    store.create_user("bob")
    store.hold_deliveries("alice")
    assert store.deliveries_held("alice") and not store.deliveries_held("bob")
    r1 = store.deliver(["alice", "bob"], io.BytesIO(b"one"), internaldate=1400000000)
    store.create_folder("alice", "Lists")
    r2 = store.deliver(["alice"], io.BytesIO(b"two"), folder="Lists")
    assert r1["alice"] is None and r2["alice"] is None and r1["bob"] is not None
    assert store.messages("alice", "INBOX") == []
    home = os.path.dirname(root(store))
    assert os.path.exists(os.path.join(home, ".ims-hold"))
    assert len([n for n in os.listdir(os.path.join(home, ".ims-queue")) if n.endswith(".eml")]) == 2
    assert store.release_deliveries("alice") == 2
    assert not store.deliveries_held("alice")
    (m,) = store.messages("alice", "INBOX")
    assert store.open_message("alice", "INBOX", m.uid).read() == b"one"
    assert m.internaldate == 1400000000 and m.ino == r1["bob"].ino    # still one copy
    (l,) = store.messages("alice", "Lists")
    assert store.open_message("alice", "Lists", l.uid).read() == b"two"
    assert os.listdir(os.path.join(home, ".ims-queue")) == []


def test_link_from_and_copy_when_dates_differ(store):
    a = add(store, internaldate=1300000000)
    store.create_folder("alice", "Copy")
    b = store.append("alice", "Copy", None, link_from=a.path, internaldate=1300000000)
    assert b.ino == a.ino and b.nlink == 2
    c = store.append("alice", "Copy", None, link_from=a.path, internaldate=1300000500)
    assert c.ino != a.ino and c.internaldate == 1300000500
    assert open(c.path, "rb").read() == MSG


# -- incrementals ------------------------------------------------------------------------

def test_known_messages_are_not_stated(store, monkeypatch):
    """An incremental by base lists the messages its base held without a stat (issue 13:
    by date, every file is stat'ed for its ctime, the time it entered the folder)."""
    old_ones = [add(store, stored=1000000000 + i, flags=["\\Seen"] if i % 2 else []) for i in range(20)]
    new = add(store, stored=2000000000)
    known = UidSet.of(m.uid for m in old_ones)
    calls = []
    real_stat, real_lstat = os.stat, os.lstat

    def counting(real):
        def f(path, *a, **kw):
            if "/cur/" in str(path) or "/new/" in str(path):
                calls.append(path)
            return real(path, *a, **kw)
        return f

    monkeypatch.setattr(os, "stat", counting(real_stat))
    monkeypatch.setattr(os, "lstat", counting(real_lstat))
    snap = store.snapshot("alice", "INBOX", known=known)
    assert calls == [new.path]
    assert [m.uid for m in snap.messages] == list(range(1, 22))
    old = snap.messages[1]
    assert old.stored == 1000000001 and old.flags == {"\\Seen"} and old.size == len(MSG)
    assert snap.messages[-1].ino == new.ino


def test_an_unchanged_folder_is_checked_without_opening_its_files(store, monkeypatch):
    """--base on Maildir: a folder its base fingerprinted is found unchanged by its file
    times alone (issue 17: its uidlist was opened for the mailbox GUID and its ACL for
    the text, two opens of each of 1,218 folders): the fingerprint records the GUID of
    the uidlist header it covers, and an ACL file is read only when there is one.  The
    answer is the one a fresh read gives, and a fingerprint from before (no GUID) is
    still taken, the GUID read from the header."""
    import builtins
    for folder in ("INBOX", "Shared"):
        if folder != "INBOX":
            store.create_folder("alice", folder)
        for i in range(3):
            add(store, folder, flags=["\\Seen"] if i else [])
    store.set_acl("alice", "Shared", "user=bob lr\n")
    time.sleep(2.1)                      # settled: the snapshots take fingerprints
    opened = []
    real_open = builtins.open

    def counting(path, *a, **kw):
        opened.append(os.path.basename(str(path)))
        return real_open(path, *a, **kw)

    for folder, acl in (("INBOX", ""), ("Shared", "user=bob lr\n")):
        snap = store.snapshot("alice", folder)
        assert snap.fingerprint is not None and snap.info.guid and snap.info.acl == acl
        fresh = snap.info
        for fp, opens in ((snap.fingerprint, [] if not acl else ["dovecot-acl"]),
                          (snap.fingerprint[:9], ["dovecot-uidlist"] + ([] if not acl else ["dovecot-acl"]))):
            opened.clear()
            monkeypatch.setattr(builtins, "open", counting)
            try:
                info = store.folder_unchanged("alice", folder, fp)
            finally:
                monkeypatch.setattr(builtins, "open", real_open)
            assert opened == opens, (folder, len(fp), opened)
            assert (info.uidvalidity, info.uidnext, info.guid, info.acl, info.subscribed) == \
                (fresh.uidvalidity, fresh.uidnext, fresh.guid, fresh.acl, fresh.subscribed), (folder, len(fp))
        if not acl:                      # an ACL where there was none: read again
            store.set_acl("alice", folder, "user=carol lr\n")
            assert store.folder_unchanged("alice", folder, snap.fingerprint) is None
            store.set_acl("alice", folder, "")
            assert store.folder_unchanged("alice", folder, snap.fingerprint) is not None
        add(store, folder)               # changed: read again
        assert store.folder_unchanged("alice", folder, snap.fingerprint) is None


def test_since_judges_by_ctime_which_copy_and_rename_set(store):
    """-d on Maildir: a message linked or renamed into a folder after the cut-off is new
    there, whatever the time in its file name (IMAP COPY and MOVE keep the name)."""
    old = add(store, stored=1000000000)
    time.sleep(1.1)
    cut = time.time()
    time.sleep(0.1)
    store.create_folder("alice", "Moved")
    moved = store.append("alice", "Moved", None, link_from=old.path, stored=1000000000)
    assert os.path.basename(moved.path).startswith("1000000000.")      # the old time in the name
    inbox = store.snapshot("alice", "INBOX", since=cut).messages
    there = store.snapshot("alice", "Moved", since=cut).messages
    assert [m.changed >= cut for m in there] == [True]
    # the link changed the inode's ctime: the INBOX copy counts as changed too (more
    # sent, never less)
    assert [m.changed >= cut for m in inbox] == [True]


def test_random_name_fields_come_from_a_pool_that_a_forked_child_does_not_share(store):
    """The R field of new file names (8 hex digits) is drawn from a pool refilled 4 KiB
    at a time; a forked child draws its own digits, not the parent's next ones."""
    draws = [store._random8() for _ in range(3000)]     # past two refills
    assert all(len(r) == 8 and int(r, 16) >= 0 for r in draws)
    assert len(set(draws)) > 2990
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, "".join(store._random8() for _ in range(8)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = f.read()
    os.waitpid(pid, 0)
    parent = "".join(store._random8() for _ in range(8))
    assert len(child) == 64 and child != parent


class _Killed(BaseException):
    """A kill, between a directory's or file's making and its chown."""


@pytest.mark.parametrize("fs", [False, True], ids=["maildir++", "LAYOUT=fs"])
def test_a_run_killed_before_any_chown_leaves_nothing_to_root_after_the_rerun(tmp_path, monkeypatch, fs):
    """Every directory and file is made, then given to the store's owner: two steps.  A
    run killed between them (at each chown of a user's creation, its folders' and its
    messages', in turn), then run again, leaves everything the mail user's: Dovecot
    cannot write into a cur/ or tmp/ root kept, nor list a LAYOUT=fs folder under a
    parent level root kept.  (Found by a fuzzer that killed chain restores: "cur uid=0"
    after the rerun.)"""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    real = MaildirStore._chown

    def work(s):
        if not s.exists("bob"):
            s.create_user("bob")
        for f in ("INBOX", "Work", "Work/2024", "Réunions", "Deep/er"):
            if not s.exists("bob", f):
                s.create_folder("bob", f, subscribed=True)
            s.append("bob", f, io.BytesIO(MSG), flags=["\\Seen"], keywords=["$Label1"])
        if not s.exists("bob", "Empty"):           # never written to after it is made
            s.create_folder("bob", "Empty")

    calls = [0]

    def opts(base):
        o = {"store.owner": "65534"}
        if fs:
            o["store.mail_location"] = f"maildir:{base}/mail/%u:LAYOUT=fs"
        return o

    def counting(path, owner):
        calls[0] += 1
        real(path, owner)
    monkeypatch.setattr(MaildirStore, "_chown", staticmethod(counting))
    work(make(tmp_path / "clean", **opts(tmp_path / "clean")))
    total = calls[0]
    assert total >= 20
    for k in range(total):
        base = tmp_path / f"k{k}"
        calls[0] = 0

        def killed(path, owner):
            calls[0] += 1
            if calls[0] == k + 1:
                raise _Killed(path)
            real(path, owner)
        monkeypatch.setattr(MaildirStore, "_chown", staticmethod(killed))
        with pytest.raises(_Killed):
            work(make(base, **opts(base)))
        monkeypatch.setattr(MaildirStore, "_chown", staticmethod(real))
        s = make(base, **opts(base))
        work(s)
        rootly = []
        for d, dirs, files in os.walk(base / "mail" / "bob"):
            rootly += [os.path.join(d, n) for n in dirs + files
                       if os.lstat(os.path.join(d, n)).st_uid != 65534 and not n.endswith(".lock")]
        assert rootly == [], (k, rootly)
        assert sorted(s.folder_names("bob")) == ["Deep/er", "Empty", "INBOX", "Réunions", "Work", "Work/2024"]


def archived_messages(path) -> dict:
    """{(user, folder): {uid: (bytes, flags)}} of an archive's messages (links too)."""
    from asm.archive.reader import ArchiveReader
    out: dict = {}
    by_name: dict = {}
    with open(path, "rb") as f:
        for m in ArchiveReader(f):
            if m.kind not in ("message", "link"):
                continue
            if m.kind == "message":
                with m.open() as src:
                    data = by_name[m.name] = src.read()
            else:
                data = by_name[m.linkname]
            out.setdefault((m.user, m.folder), {})[m.uid] = (data, frozenset(m.flags))
    return out


def test_two_message_files_with_one_base_name_are_both_backed_up(tmp_path):
    """Two files of a Maildir with one base name (new/B and cur/B:2,S; cur/C:2,S and
    cur/C:2,F), each another message: the backup listed files by base name, the later
    one won, and imsbackup exited 0 with 3 of 5 messages archived.  As Dovecot does
    (maildir_fix_duplicate), the second gets a base name and a UID of its own; the
    archive holds all five, each with its flags, and the store says the same UIDs.  Two
    hard links of one file under one base name are one message."""
    from tests.helpers import make_home, run
    home = tmp_path / "ims"
    s = MaildirStore(make_home(home, "maildir"))
    s.create_user("joe")
    s.append("joe", "INBOX", io.BytesIO(b"Subject: normal\r\n\r\n1\r\n"), flags=["\\Seen"])
    r = root(s, "joe")
    c1, c2 = b"Subject: C one\r\n\r\n1\r\n", b"Subject: C two\r\n\r\n2\r\n"
    assert len(c1) == len(c2) == 21
    files = {
        "new/1700000000.M1P1.host": (b"Subject: B new\r\n\r\nnew\r\n", frozenset()),
        "cur/1700000000.M1P1.host:2,S": (b"Subject: B cur\r\n\r\ncur\r\n", frozenset({"\\Seen"})),
        "cur/1700000100.M2P2.host,S=21:2,S": (c1, frozenset({"\\Seen"})),
        "cur/1700000100.M2P2.host,S=21:2,F": (c2, frozenset({"\\Flagged"})),
        "cur/1700000200.M3P3.host:2,S": (b"Subject: D\r\n\r\nlinked\r\n", frozenset({"\\Seen"})),
    }
    for name, (data, _flags) in files.items():
        with open(os.path.join(r, name), "wb") as f:
            f.write(data)
    os.link(os.path.join(r, "cur/1700000200.M3P3.host:2,S"), os.path.join(r, "cur/1700000200.M3P3.host:2,ST"))
    want = sorted([(b"Subject: normal\r\n\r\n1\r\n", frozenset({"\\Seen"}))] + list(files.values()))
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=0, text=True)
    assert p.stderr == ""
    got = archived_messages(tmp_path / "a.ims")[("joe", "INBOX")]
    assert sorted(got.values()) == want                 # 6 messages, none lost
    # the store (and Dovecot, which reads the same uidlist and names) agrees on the UIDs
    store = {m.uid: (open(m.path, "rb").read(), frozenset(m.flags)) for m in s.messages("joe", "INBOX")}
    assert store == got
    bases = [n.partition(":")[0] for sub in ("new", "cur") for n in os.listdir(os.path.join(r, sub))]
    assert len(bases) == 7 and len(set(bases)) == 6     # only the hard link shares a name
    assert sum(b.endswith(",S=21") for b in bases) == 2     # the new name keeps S=
    p = run(home, "imsbackup", "-f", tmp_path / "b.ims", "/", check=0, text=True)   # and stays so
    assert archived_messages(tmp_path / "b.ims")[("joe", "INBOX")] == got


@pytest.mark.parametrize("brk", ["\n", "\r", "\r\n"])
def test_a_file_name_with_a_line_break_is_named_and_never_written_into_the_uidlist(tmp_path, brk):
    """A message file whose name holds a line break: the backup gave it a UID and wrote
    the name into dovecot-uidlist as it was, a record split over two lines ('5 '), then
    exited 0; every later backup failed the folder ("bad line '5 '", exit 1).  It is
    named (exit 1: rename it), never recorded; the uidlist stays good, the other
    messages are backed up, and once renamed it is backed up too."""
    from asm.store.maildir.uidlist import read_uidlist
    from tests.helpers import make_home, run
    home = tmp_path / "ims"
    s = MaildirStore(make_home(home, "maildir"))
    s.create_user("joe")
    for n in range(2):
        s.append("joe", "INBOX", io.BytesIO(b"Subject: %d\r\n\r\nok\r\n" % n))
    r = root(s, "joe")
    with open(os.path.join(r, "dovecot-uidlist"), "rb") as f:
        before = f.read()
    bad = os.path.join(r, "cur", f"1700000000.M1P1.h{brk}x:2,S")
    with open(bad, "wb") as f:
        f.write(b"Subject: odd name\r\n\r\nodd\r\n")
    for archive in ("a.ims", "b.ims"):          # the next backup is no worse
        p = run(home, "imsbackup", "-f", tmp_path / archive, "/", check=1, text=True)
        assert "/primary/joe/INBOX" in p.stderr and repr(bad) in p.stderr and "rename it" in p.stderr
        assert "bad line" not in p.stderr
        got = archived_messages(tmp_path / archive)[("joe", "INBOX")]
        assert sorted(got) == [1, 2]
        with open(os.path.join(r, "dovecot-uidlist"), "rb") as f:
            assert f.read() == before               # nothing of it written there
    os.rename(bad, os.path.join(r, "cur", "1700000000.M1P1.hx:2,S"))
    run(home, "imsbackup", "-f", tmp_path / "c.ims", "/", check=0)
    got = archived_messages(tmp_path / "c.ims")[("joe", "INBOX")]
    assert got[3] == (b"Subject: odd name\r\n\r\nodd\r\n", frozenset({"\\Seen"}))
    assert sorted(read_uidlist(r).records) == [1, 2, 3]


def test_the_uidlist_is_read_in_lines_ended_by_newline_only(tmp_path):
    """A carriage return inside a record's name (Dovecot writes a name as it is) is part
    of the name, not the end of a line: the reader took it for one ("bad line")."""
    from asm.store.maildir.uidlist import read_uidlist, read_uidlist_header
    with open(tmp_path / "dovecot-uidlist", "wb") as f:
        f.write(b"3 V7 N3 Gabc\n1 :a\rb\n2 G1 :c\rd\n")
    ul = read_uidlist(str(tmp_path))
    assert ul.records == {1: ("", "a\rb"), 2: ("G1", "c\rd")} and ul.uidnext == 3
    assert read_uidlist_header(str(tmp_path)).uidnext == 3


def test_an_index_directory_set_aside_by_a_killed_process_is_removed_by_the_next(tmp_path):
    """INDEX= apart from the mail: a folder made where its index directory was left gets
    that directory as a new one, its files moved in through a directory set aside beside
    it (``ims-index.PID.RANDOM``, MaildirStore._renew_index_dir).  A process killed
    between those renames leaves the directory aside in the user's index tree; the next
    one that makes a folder there removes it, and never one of a process that still
    runs.  The folder made again is whole, with its index directory."""
    import subprocess
    o = {"store.mail_location": f"maildir:{tmp_path}/mail/%u:INDEX={tmp_path}/idx/%u:CONTROL={tmp_path}/ctl/%u"}
    s = make(tmp_path, **o)
    s.create_user("bob")
    s.create_folder("bob", "Work", uidvalidity=5)
    s.append("bob", "Work", io.BytesIO(MSG))
    idx = tmp_path / "idx" / "bob" / ".Work"
    idx.mkdir(parents=True)                             # as Dovecot makes it, serving the folder
    (idx / "dovecot.index.log").write_bytes(b"an index of the folder")
    p = subprocess.Popen(["true"])
    p.wait()                                            # a pid that is gone
    dead = idx.parent / f"ims-index.{p.pid}.0123abcd"
    live = idx.parent / f"ims-index.{os.getpid()}.89abcdef"
    for aside in (dead, live):
        aside.mkdir()
        (aside / "dovecot.index.log").write_bytes(b"set aside")
    shutil.rmtree(tmp_path / "mail" / "bob" / ".Work")  # the folder's mail lost, its index left
    s = make(tmp_path, **o)                             # the next process
    s.create_folder("bob", "Work", uidvalidity=6)
    assert not dead.exists()
    assert (live / "dovecot.index.log").read_bytes() == b"set aside"
    assert idx.is_dir()
    assert s.folder("bob", "Work").uidvalidity == 6
    assert s.messages("bob", "Work") == []
    assert sorted(n for n in os.listdir(idx.parent) if n.startswith("ims-")) == [live.name]


_TEMPORARY = re.compile(r"(\.tmp$|^\.temp\.|\.lock$|^\.?ims-(mkdir|deleting|cur|tmp|index)\.\d+\.[0-9a-f]{8}$)")


@pytest.mark.parametrize("fs", [False, True], ids=["maildir++", "LAYOUT=fs"])
def test_no_directory_or_file_dovecot_opens_is_ever_root_s_under_its_name(tmp_path, monkeypatch, fs):
    """Run as root with store.owner set, every directory and file appears under the name
    Dovecot opens already the owner's: made under a temporary name, given, renamed in.
    Looked at before each chown, chmod and rename, while folders are removed and made
    again at once under their names, with INDEX= and CONTROL= apart from the mail (an
    index directory a session wrote into meanwhile renewed), and written to.  Before,
    a folder's control directory was made under its name as root, 0700, then chowned: a
    client's SELECT that had found the old folder's mail directory before the removal
    and opened its dovecot-uidlist between the two was refused, "[SERVERBUG] Internal
    error", open(.../ctl/carol/.Again/dovecot-uidlist) failed: Permission denied (one CI
    run, a chain restore in one command under clients); and a renewed index directory
    likewise."""
    if os.geteuid() != 0:
        unavailable("chown needs root")
    loc = f"maildir:{tmp_path}/mail/%u:INDEX={tmp_path}/idx/%u:CONTROL={tmp_path}/ctl/%u"
    if fs:
        loc = loc.replace(":INDEX", ":LAYOUT=fs:INDEX")
    s = make(tmp_path, **{"store.owner": "65534", "store.mail_location": loc})
    s.create_user("carol")
    trees = [tmp_path / t / "carol" for t in ("mail", "ctl", "idx")]
    seen: list = []
    armed = False

    def rootly_now() -> list:
        out = []
        for top in trees:
            for d, dirs, files in os.walk(top):
                dirs[:] = [n for n in dirs if not _TEMPORARY.search(n)]
                if os.path.basename(d) == "tmp":          # (Dovecot opens nothing in tmp/)
                    continue
                for n in dirs + files:
                    p = os.path.join(d, n)
                    if not _TEMPORARY.search(n) and os.lstat(p).st_uid != 65534:
                        out.append(p)
        return out

    def looking(real):
        def call(*a, **kw):
            if armed:
                seen.extend(p for p in rootly_now() if p not in seen)
            return real(*a, **kw)
        return call
    for name in ("chown", "lchown", "fchown", "chmod", "rename", "replace"):
        monkeypatch.setattr(os, name, looking(getattr(os, name)))
    for r in range(3):
        for f in ("Again", "Work/2024"):
            if s.exists("carol", f):
                s.delete_folder("carol", f)
            idx = tmp_path / "idx" / "carol" / MaildirStore.folder_dirname(f).lstrip("/") \
                if not fs else tmp_path / "idx" / "carol" / f
            armed = False
            if r:                                   # (what a session wrote there meanwhile)
                os.makedirs(idx, exist_ok=True)
                (idx / "dovecot.index.log").write_bytes(b"x")
                for p in [idx / "dovecot.index.log", idx, *idx.parents]:
                    if p == tmp_path / "idx":
                        break
                    shutil.chown(p, 65534, 65534)
            armed = True
            s.create_folder("carol", f, uidvalidity=7000 + r)
            s.append("carol", f, io.BytesIO(MSG), flags=["\\Seen"], keywords=["$Label1"])
    assert seen == []
    assert rootly_now() == []
