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
