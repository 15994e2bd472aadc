"""A chain restored archive by archive (``-H``) ends as the chain in one command does, on
the layouts that keep a directory for a level that only holds folders (LAYOUT=fs Maildir,
sdbox, mdbox): IMAP LIST, with its attributes, mailbox GUIDs and what the client sees.

Dovecot's RENAME of ``Lists/child`` (or of a middle level ``Work/a``) removes the levels it
leaves empty.  The chain in one command never makes the old names; restored archive by
archive, the full makes them and the incremental removes the folders it no longer lists.
Before, it removed the folders only: their levels stayed, and LIST showed ``Lists``,
``Work`` and ``Work/a`` as ``\\Noselect \\HasNoChildren`` folders the store never had
(exit 0).  Dovecot fills and changes the store itself (LMTP, IMAP); the store is compared
over IMAP and doveadm only.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from tests.dovecot_lab import lab_fixture, message
from tests.helpers import run
from tests.test_dovecot_layouts import configure

lab = lab_fixture(params=["fs", "sdbox", "mdbox"], scope="function")


def listing(lab, login: str) -> dict[str, list[str]]:
    """IMAP LIST "" "*": {name: attributes}, without \\Marked/\\Unmarked (new mail or not)."""
    with lab.imap(login) as c:
        return {name: sorted(a.lower() for a in attrs if a.lower() not in ("\\marked", "\\unmarked"))
                for name, attrs in c.list().items()}


def view(lab, login: str):
    guids = {row["mailbox"]: row["guid"] for row in json.loads(
        lab.doveadm("-f json mailbox status", "guid", "*", user=login).stdout)}
    st = lab.client_state(login)
    return (listing(lab, login),
            {name: (guids.get(name), f.uidvalidity, f.uidnext, f.subscribed,
                    tuple((m.uid, m.flags, m.internaldate, m.size, m.sha256, m.guid) for m in f.messages))
             for name, f in st.folders.items()},
            st.subscriptions)


def wipe(lab, home) -> None:
    shutil.rmtree(lab.store)
    os.mkdir(lab.store)
    os.chown(lab.store, lab.uid, lab.gid)
    shutil.rmtree(os.path.join(home, "data"), ignore_errors=True)     # a new installation's journal


def test_a_chain_restored_archive_by_archive_leaves_no_level_the_renames_emptied(lab, tmp_path):
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(["alice"], message("first"))
    with lab.imap("alice") as c:
        for box in ("Lists/child", "Work/a/b", "Top", "Top/kid", "Keep/one", "Keep/two"):
            c.create(box)
            c.append(box, message(f"in {box}"), [r"\Seen", "$Label1"])
        c.subscribe("Lists/child")
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    first = view(lab, "alice")
    assert first[0]["Lists"] == ["\\haschildren", "\\noselect"], first[0]
    time.sleep(1.1)
    with lab.imap("alice") as c:
        c.rename("Lists/child", "Other")       # its level goes with it (Dovecot's RENAME)
        c.rename("Work/a", "Work2")            # a middle level: Work goes too
        c.rename("Top", "Top2")                # a folder with a child
        c.rename("Keep/one", "One")            # Keep still holds Keep/two: it stays
    want = view(lab, "alice")
    assert not {"Lists", "Work", "Work/a", "Top"} & set(want[0]), want[0]
    assert want[0]["Keep"] == ["\\haschildren", "\\noselect"], want[0]
    run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)

    wipe(lab, home)
    run(home, "imsrestore", "-f", full, "-f", incr, "/", check=0)
    assert view(lab, "alice") == want

    wipe(lab, home)
    run(home, "imsrestore", "-H", "-f", full, "/", check=0)
    assert view(lab, "alice")[1:] == first[1:]
    assert listing(lab, "alice") == first[0]
    run(home, "imsrestore", "-f", incr, "/", check=0)
    got = view(lab, "alice")
    assert got[0] == want[0], "LIST after the chain restored archive by archive"
    assert got == want
