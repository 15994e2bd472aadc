"""Dovecot configurations beyond the lab's eleven layouts, each its own small dovecot.conf
(tests/dovecot_lab.py's LabLayout): what ims-asm cannot read faithfully is named, never
archived or restored wrong with exit 0."""
from __future__ import annotations

import glob
import os

import pytest

from tests.dovecot_lab import MAIL_USER, LabLayout, dovecot_lab, message
from tests.helpers import run

PLAIN_LOC = "maildir:{store}/%u/Maildir"


@pytest.fixture
def shaped_lab(request):
    """A running Dovecot with the LabLayout the test is parametrized with (indirect)."""
    with dovecot_lab(request.param) as lab:
        yield lab


def shaped(layout: LabLayout):
    return pytest.mark.parametrize("shaped_lab", [layout], ids=[layout.name], indirect=True)


def configure(lab, home, location: str = "doveconf") -> None:
    run(home, "msconfig", "set", "store.driver", "maildir", check=0)
    run(home, "msconfig", "set", "store.owner", MAIL_USER, check=0)
    run(home, "msconfig", "set", "dovecot.config", lab.conf, check=0)
    run(home, "msconfig", "set", "store.mail_location", location, check=0)


def stored_files(lab, login: str) -> list[str]:
    return sorted(glob.glob(os.path.join(lab.store, login, "Maildir", "cur", "*"))
                  + glob.glob(os.path.join(lab.store, login, "Maildir", "new", "*")))


LZ4 = LabLayout("lz4", PLAIN_LOC, "{store}/%u", ("alice",), mail_plugins="zlib",
                plugin=(("zlib_save", "lz4"),))


@shaped(LZ4)
def test_dovecot_lz4_files_are_named_never_archived_compressed(shaped_lab, tmp_path):
    """zlib_save = lz4: Dovecot's own LZ4 stream ("Dovecot-LZ4" magic, not the LZ4
    frame format) is recognised like zstd: the backup names each message (exit 1), the
    archive holds none of the compressed bytes, imsverify says so, and a restore writes
    nothing Dovecot cannot read.  (Before, the compressed bytes were archived as the
    message and restored under S= their compressed size; Dovecot then failed every
    FETCH of it, "Cached message size smaller than expected (379 < 428)", and imsbackup,
    imsverify and imsrestore all exited 0.)"""
    lab = shaped_lab
    lab.deliver(["alice"], message("lz4 by lmtp"))
    with lab.imap("alice") as c:
        c.create("Work")
        c.append("Work", message("lz4 appended", size=2000), [r"\Seen"])
    files = stored_files(lab, "alice") + glob.glob(os.path.join(lab.store, "alice/Maildir/.Work/cur/*"))
    assert len(files) == 2 and all(open(f, "rb").read(11) == b"Dovecot-LZ4" for f in files)
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    b = run(home, "imsbackup", "-f", a, "/", check=1, text=True)
    for f in files:
        assert os.path.basename(f) in b.stderr and "lz4" in b.stderr, b.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=None, text=True).stdout
    assert "/primary/alice/INBOX/1\t" not in listing and "/primary/alice/Work/1\t" not in listing, listing
    run(home, "imsverify", "-f", a, check=1)          # the backup's errors, counted
    # the account emptied and restored: what comes back is readable (nothing came back)
    for f in files:
        os.unlink(f)
    run(home, "imsrestore", "-f", a, check=None)
    state = lab.client_state("alice")
    assert all(not f.messages for f in state.folders.values())
