"""A folder's dovecot-uidlist lost while Dovecot's index of it is still there (or never
written yet: Dovecot's CREATE of a name a RENAME just freed writes the index only).

Dovecot alone, at the next SELECT, keeps the folder's UIDVALIDITY (its index holds
it) and numbers the messages again from the index's UIDNEXT.  imsverify
--against-store (read-only!) and imsbackup wrote a new dovecot-uidlist with a new
UIDVALIDITY instead, so every client had to drop its cache.  Now the driver numbers
such a folder as Dovecot would, from its index (read with doveadm dump): the backup
writes the uidlist Dovecot would have written, and imsverify --against-store writes
nothing at all (it numbers in memory, or names a folder it could not read without a
write)."""
from __future__ import annotations

import hashlib
import os
import re

from asm.errors import EXIT_DIFFERS, EXIT_OK
from tests.dovecot_lab import MAIL_USER, dovecot_lab, message
from tests.helpers import make_home, run


def _tree(root: str) -> dict:
    """Every file and directory below ``root``: path -> (kind, SHA-256 of a file's bytes)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.join(d, n)] = ("dir", None)
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[p] = ("file", hashlib.sha256(f.read()).hexdigest())
    return out


def _lab_with_lost_uidlist(tmp_path, lab):
    home = str(tmp_path / "ims")
    make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                  "store.mail_location": "doveconf"})
    for i in range(5):
        lab.deliver(["alice"], message(f"message {i}"))
    with lab.imap("alice") as c:
        before = c.select("INBOX")             # Dovecot indexes the folder
    assert before["exists"] == 5
    root = lab.mailbox_path("alice")
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=EXIT_OK)
    os.unlink(os.path.join(root, "dovecot-uidlist"))
    assert any(os.path.exists(os.path.join(root, n)) for n in ("dovecot.index", "dovecot.index.log"))
    return home, root, full, before


def test_verify_against_the_store_leaves_a_folder_without_its_uidlist_untouched(tmp_path):
    with dovecot_lab("plain", logins=["alice"]) as lab:
        home, root, full, before = _lab_with_lost_uidlist(tmp_path, lab)
        tree = _tree(os.path.dirname(root))
        # read as Dovecot will number it (the index's UIDVALIDITY, UIDs from its UIDNEXT),
        # in memory only: the archive's 5 expunged, 5 new under the same UIDVALIDITY
        for extra, status in (([], EXIT_OK), (["--exact"], EXIT_DIFFERS)):
            v = run(home, "imsverify", "-v", "-f", full, "--against-store", *extra, text=True)
            assert _tree(os.path.dirname(root)) == tree, extra    # byte for byte, no new file
            assert not os.path.exists(os.path.join(root, "dovecot-uidlist"))
            assert v.returncode == status, (extra, v.stdout, v.stderr)
        assert "since the backup 5 new, 5 expunged" in run(
            home, "imsverify", "-f", full, "--against-store", text=True).stdout
        with lab.imap("alice") as c:
            after = c.select("INBOX")          # Dovecot alone
        assert after["uidvalidity"] == before["uidvalidity"]
        assert after["exists"] == 5


def test_a_backup_numbers_the_folder_as_dovecot_would_under_its_uidvalidity(tmp_path):
    with dovecot_lab("plain", logins=["alice"]) as lab:
        home, root, full, before = _lab_with_lost_uidlist(tmp_path, lab)
        x = tmp_path / "x.ims"
        run(home, "imsbackup", "-f", x, "/", check=EXIT_OK)
        with open(os.path.join(root, "dovecot-uidlist")) as f:
            header = f.readline().split()
        assert header[1] == f"V{before['uidvalidity']}", header
        assert header[2] == f"N{before['uidnext'] + 5}", header    # above every UID Dovecot gave
        state = lab.client_state("alice").folders["INBOX"]    # as Dovecot alone: same UIDVALIDITY
        assert state.uidvalidity == before["uidvalidity"], (before, state)
        assert state.uidnext == before["uidnext"] + 5, (before, state)
        toc = run(home, "imsrestore", "-t", "-f", x, text=True).stdout
        assert f"uidvalidity={before['uidvalidity']}" in toc, toc
        # the archive holds the UIDs Dovecot serves now, each with its message
        archived = {int(m.group(1)) for m in re.finditer(r"^/primary/alice/INBOX/(\d+)\t", toc, re.M)}
        assert archived == {m.uid for m in state.messages} == set(range(6, 11)), (archived, state)
        y = tmp_path / "y.ims"
        run(home, "imsbackup", "-f", y, "/", check=EXIT_OK)
        run(home, "imsverify", "-f", x, "--against-store", "--exact", check=EXIT_OK)


def test_verify_against_the_store_numbers_no_folder_and_the_backup_does(tmp_path):
    """A folder another tool made (no dovecot-uidlist, no index), and a file Dovecot has
    not numbered yet: imsverify --against-store writes nothing (no uidlist, no lock, no
    dovecot-uidvalidity) and finds the folder's mail, older than the backup, in no
    archive; the backup numbers both, as Dovecot would."""
    with dovecot_lab("plain", logins=["alice"]) as lab:
        home = str(tmp_path / "ims")
        make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                      "store.mail_location": "doveconf"})
        lab.deliver(["alice"], message("one"))
        with lab.imap("alice") as c:
            c.select("INBOX")
        root = lab.mailbox_path("alice")
        full = tmp_path / "full.ims"
        run(home, "imsbackup", "-f", full, "/", check=EXIT_OK)
        other = os.path.join(root, ".Other")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(other, sub))
        with open(os.path.join(other, "cur", "1700000000.M1P1.other,S=9:2,S"), "wb") as f:
            f.write(b"\r\nother\r\n")
        with open(os.path.join(root, "new", "1700000001.M2P2.other,S=9"), "wb") as f:
            f.write(b"\r\nnewer\r\n")
        lab.fix_owner()
        tree = _tree(os.path.dirname(root))
        v = run(home, "imsverify", "-v", "-f", full, "--against-store", text=True)
        assert _tree(os.path.dirname(root)) == tree, v.stderr
        assert v.returncode == EXIT_DIFFERS, v.stdout + v.stderr
        assert "/primary/alice/Other: 1 message" in v.stderr, v.stderr
        x = tmp_path / "x.ims"
        run(home, "imsbackup", "-f", x, "/", check=EXIT_OK)
        assert os.path.exists(os.path.join(other, "dovecot-uidlist"))
        with open(os.path.join(root, "dovecot-uidlist")) as f:
            assert "1700000001.M2P2.other" in f.read()


def test_an_index_that_cannot_be_read_leaves_the_numbering_to_dovecot(tmp_path, monkeypatch):
    """No doveadm to read the UIDVALIDITY in Dovecot's index: nothing is written, the
    folder is named (NotNumbered), and Dovecot's next SELECT keeps the UIDVALIDITY."""
    import pytest

    from asm.reconstruct import dovecot as rd
    from asm.store import open_store
    from asm.store.base import NotNumbered
    with dovecot_lab("plain", logins=["alice"]) as lab:
        home, root, full, before = _lab_with_lost_uidlist(tmp_path, lab)
        cfg = make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                            "store.mail_location": "doveconf"})
        monkeypatch.setattr(rd, "find_doveadm", lambda: None)
        tree = _tree(os.path.dirname(root))
        store = open_store(cfg, create=False)
        with pytest.raises(NotNumbered, match="could not be read .no doveadm is installed"):
            store.snapshot("alice", "INBOX")
        with pytest.raises(NotNumbered):
            store.folder("alice", "INBOX")
        assert _tree(os.path.dirname(root)) == tree
        with lab.imap("alice") as c:
            assert c.select("INBOX")["uidvalidity"] == before["uidvalidity"]
