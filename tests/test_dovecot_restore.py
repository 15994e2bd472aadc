"""Restores checked by a real IMAP client against a real Dovecot: what clients cache
(UIDVALIDITY, UIDNEXT, UIDs, flags, INTERNALDATE, bytes) is what it was before the
backup, for a full restore, a partial one and a full + incremental chain."""
from __future__ import annotations

import imaplib
import os
import re
import shutil
import time

import pytest

from tests.dovecot import maildir_config
from tests.helpers import run

FOLDERS = ["INBOX", "Work/2023", "Réunions", "Bulk Mail"]
_FETCH = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE \"([^\"]+)\"")


def _utf7(name: str) -> str:
    from asm.store.utf7 import encode as enc  # the driver's modified UTF-7 codec
    return '"' + enc(name).replace("\\", "\\\\").replace('"', '\\"') + '"'


def snapshot(server, user: str) -> dict:
    """Everything an IMAP client caches, per folder."""
    c = server.imap(user)
    out = {}
    try:
        typ, boxes = c.list()
        assert typ == "OK"
        for f in FOLDERS:
            typ, _ = c.select(_utf7(f), readonly=True)
            if typ != "OK":
                continue
            uv = int(c.response("UIDVALIDITY")[1][0])
            typ, data = c.status(_utf7(f), "(UIDNEXT MESSAGES)")
            uidnext = int(re.search(rb"UIDNEXT (\d+)", data[0]).group(1))
            msgs = {}
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            for item in data:
                if isinstance(item, tuple):
                    m = _FETCH.search(item[0])
                    flags = tuple(sorted(x for x in m.group(2).decode().split() if x != "\\Recent"))
                    msgs[int(m.group(1))] = (flags, m.group(3).decode(), item[1])
            out[f] = (uv, uidnext, msgs)
            c.close()
    finally:
        c.logout()
    return out


def _append(c, folder, n, flags="", date=None):
    body = (f"From: x@example.com\r\nSubject: {folder} {n}\r\n\r\nbody {n} äö\r\n").encode()
    date = date or time.time() - 86400 * (n % 30)
    typ, _ = c.append(_utf7(folder), f"({flags})" if flags else None, imaplib.Time2Internaldate(date), body)
    assert typ == "OK"


@pytest.fixture
def setup(dovecot, tmp_path):  # noqa: F811
    home = tmp_path / "ims"
    maildir_config(str(home), dovecot.store)
    dovecot.add_user("alice", "pw")
    c = dovecot.imap("alice")
    for f in FOLDERS[1:]:
        assert c.create(_utf7(f))[0] == "OK"
        c.subscribe(_utf7(f))
    n = 0
    for f in FOLDERS:
        for i in range(6):
            n += 1
            _append(c, f, n, ["", "\\Seen", "\\Seen \\Flagged", "\\Answered $Label1", "\\Draft", "Important"][i])
    c.select(_utf7("INBOX"))
    c.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.logout()
    return home


def _wipe(dovecot, user):  # noqa: F811
    shutil.rmtree(os.path.join(dovecot.store, user))


def test_full_restore_seen_by_imap(dovecot, setup, tmp_path):  # noqa: F811
    home = setup
    before = snapshot(dovecot, "alice")
    assert len(before) == 4 and len(before["INBOX"][2]) == 5
    a = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    _wipe(dovecot, "alice")
    run(home, "imsrestore", "-f", a, check=0)
    assert snapshot(dovecot, "alice") == before


def test_partial_restore_of_one_folder(dovecot, setup, tmp_path):  # noqa: F811
    home = setup
    before = snapshot(dovecot, "alice")
    a = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", a, "/primary/user/alice", check=0)
    c = dovecot.imap("alice")
    assert c.delete(_utf7("Work/2023"))[0] == "OK"
    c.logout()
    assert "Work/2023" not in snapshot(dovecot, "alice")
    run(home, "imsrestore", "-f", a, "/primary/alice/Work/2023", check=0)
    assert snapshot(dovecot, "alice") == before


def test_full_plus_incremental_chain(dovecot, setup, tmp_path):  # noqa: F811
    home = setup
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    c = dovecot.imap("alice")
    _append(c, "INBOX", 100, "\\Seen", date=time.time())
    _append(c, "Work/2023", 101, date=time.time())
    c.select(_utf7("INBOX"))
    c.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.uid("STORE", "3", "FLAGS", "(\\Answered $Label2)")
    c.logout()
    after = snapshot(dovecot, "alice")
    incr = tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", incr, "-d", since, "/", check=0)
    _wipe(dovecot, "alice")
    run(home, "imsrestore", "-H", "-f", full, check=0)
    run(home, "imsrestore", "-f", incr, check=0)
    assert snapshot(dovecot, "alice") == after


@pytest.mark.parametrize("free_kib", [64, 100, 300])
def test_pipe_restore_with_the_home_on_a_full_disk_then_the_same_command_keeps_every_uid(tmp_path, free_kib):
    """``imsrestore -f - /primary/bob /primary/carol`` (LMTP stored each message once for
    three logins: bob's and carol's are links to alice's first copies, which go through
    the spool) with IMS_HOME (spool, reference files, journal) on a disk with little
    room: the run stops or ends; space freed, the same command exits 0 and an IMAP
    client sees every message at its UID and UIDNEXT as before.  (Before: exit 13, then
    exit 0 with UIDs 21-40, UIDNEXT 41.)"""
    from tests.dovecot_lab import dovecot_lab, message
    from tests.helpers import small_tmpfs
    from tests.test_dovecot_layouts import configure
    with dovecot_lab("plain") as lab:
        for i in range(20):
            lab.deliver(lab.logins, message(f"m{i}", size=50000))
        src = tmp_path / "src"
        configure(lab, src)
        archive = tmp_path / "full.ims"
        run(src, "imsbackup", "-f", archive, "/", check=0)
        before = {u: lab.client_state(u).folders for u in ("bob", "carol")}
        for top in (lab.store, lab.homes):          # the mail is lost
            shutil.rmtree(top)
            os.mkdir(top)
            os.chown(top, lab.uid, lab.gid)
        data = archive.read_bytes()
        argv = ["imsrestore", "-f", "-", "/primary/bob", "/primary/carol"]
        with small_tmpfs(tmp_path / "small", "2m") as home:
            configure(lab, home)
            st = os.statvfs(home)
            with open(home / "fill", "wb") as f:
                f.write(b"\0" * max(st.f_bavail * st.f_frsize - free_kib * 1024, 0))
            first = run(home, *argv, input=data)
            os.unlink(home / "fill")
            run(home, *argv, input=data, check=0)
            after = {u: lab.client_state(u).folders for u in ("bob", "carol")}
        for u in before:
            assert after[u] == before[u], (
                f"first run exit {first.returncode} {first.stderr[-300:]!r}; {u}'s INBOX UIDs "
                f"{[m.uid for m in after[u]['INBOX'].messages][:4]}... UIDNEXT {after[u]['INBOX'].uidnext}")
