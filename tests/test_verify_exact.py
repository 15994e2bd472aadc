"""imsverify --against-store --exact on a restored store with a folder it cannot read as
it is: named as plain --against-store names it, with its status, and the rest compared.

Before: a folder the store lists but cannot read (a garbage store.idx, a dovecot-uidlist
with a damaged header, a cur/ that is a symbolic link) was said to be "not restored"
(exit 19: the runbook's advice is to restore it again, which changes nothing); and a
Maildir folder holding two message files with one base name, which a check that writes
nothing cannot number, ended the whole run with exit 17 and the store's own error, no
summary line, the other folders not compared (docs/operations.md: "not compared", 19).
"""
from __future__ import annotations

import io
import os
import random

import pytest

from asm.errors import EXIT_DIFFERS, EXIT_OK, EXIT_STORE
from asm.store import open_store
from tests.helpers import make_home, put, run


def _restored(tmp_path, driver):
    """(installation, its store, the archive) of a store just restored from a full backup."""
    src = str(tmp_path / "src")
    store = open_store(make_home(src, driver))
    for i in range(8):
        put(store, ["joe", "ann"][i % 2], ["INBOX", "Work"][i % 3 == 0], i, flags=["\\Seen"] if i % 2 else [])
    store.deliver(["joe", "ann"], io.BytesIO(b"Subject: both\r\n\r\nx\r\n"))
    full = tmp_path / "full.ims"
    run(src, "imsbackup", "-f", full, "/", check=EXIT_OK)
    home = str(tmp_path / "dst")
    restored = open_store(make_home(home, driver))
    run(home, "imsrestore", "-f", full, check=EXIT_OK)
    run(home, "imsverify", "-f", full, "--against-store", "--exact", check=EXIT_OK)
    return home, restored, full


@pytest.mark.parametrize("driver,how", [("classic", "garbage-index"), ("maildir", "bad-uidlist"),
                                        ("maildir", "cur-symlink"), ("maildir", "two-files-one-name")])
def test_exact_names_a_folder_it_cannot_read_and_compares_the_rest(tmp_path, driver, how):
    home, store, full = _restored(tmp_path, driver)
    first = store.messages("ann", "INBOX")[0]
    inbox = os.path.dirname(first.path)
    status, line = EXIT_STORE, "exact: /primary/ann/INBOX: cannot be read in the store, so it was not compared"
    if how == "garbage-index":
        with open(os.path.join(os.path.dirname(inbox), "store.idx"), "r+b") as f:
            f.write(random.Random(1).randbytes(100))
    elif how == "bad-uidlist":
        ul = os.path.join(os.path.dirname(inbox), "dovecot-uidlist")
        with open(ul, "rb") as f:
            head, rest = f.read().split(b"\n", 1)
        with open(ul, "wb") as f:
            f.write(b" ".join([head.split(b" ")[0], b"V0"] + head.split(b" ")[2:]) + b"\n" + rest)
    elif how == "cur-symlink":
        os.rename(inbox, tmp_path / "cur-aside")
        os.symlink(tmp_path / "cur-aside", inbox)
    else:
        # a second file under the first one's base name (another tool's copy)
        base = os.path.basename(first.path).split(":2,")[0]
        with open(first.path, "rb") as f, open(os.path.join(inbox, base + ":2,F"), "wb") as out:
            out.write(f.read())
        status, line = EXIT_DIFFERS, "exact: /primary/ann/INBOX: not compared: "
    # and a difference elsewhere, which the run still finds
    joe = store.messages("joe", "INBOX")[0]
    store.set_flags("joe", "INBOX", joe.uid, ["\\Draft"], [])
    p = run(home, "imsverify", "-v", "-f", full, "--against-store", "--exact", text=True)
    assert p.returncode == status, (p.returncode, p.stderr)
    assert f"imsverify: {line}" in p.stderr, p.stderr
    assert "/primary/ann/INBOX was not restored" not in p.stderr, p.stderr
    assert f"exact: /primary/joe/INBOX: message {joe.uid} has flags '\\\\Draft'" in p.stderr, p.stderr
    assert "live store: " in p.stderr.splitlines()[-1] and "FAILED, 2 problems" in p.stderr.splitlines()[-1], \
        p.stderr
