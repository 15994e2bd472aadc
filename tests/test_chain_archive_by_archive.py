"""A chain restored archive by archive (``-H``) ends as the chain in one command does:
IMAP LIST with its attributes, mailbox GUIDs and what the client sees.

Levels, on the layouts that keep a directory for a level that only holds folders
(LAYOUT=fs Maildir, sdbox, mdbox): Dovecot's RENAME of ``Lists/child`` (or of a middle level ``Work/a``) removes the levels it
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
any_lab = lab_fixture(params=["plain", "fs", "sdbox", "mdbox"], scope="function")
KWS = [f"kw{i:02d}" for i in range(30)]        # more keywords than a Maildir file name holds


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


def chain_both_ways(lab, home, full, incr, want, first=None) -> None:
    """The chain restored into an emptied store in one command, then archive by archive:
    each time the store is ``want`` (view), every command exit 0."""
    wipe(lab, home)
    run(home, "imsrestore", "-f", full, "-f", incr, "/", check=0)
    assert view(lab, "alice") == want, "the chain in one command"
    wipe(lab, home)
    run(home, "imsrestore", "-H", "-f", full, "/", check=0)
    if first is not None:
        assert view(lab, "alice") == first
    run(home, "imsrestore", "-f", incr, "/", check=0)
    got = view(lab, "alice")
    assert got[0] == want[0], "LIST after the chain restored archive by archive"
    assert got == want, "the chain restored archive by archive"


def test_folders_that_swapped_or_shifted_names_keep_their_mailbox_guids_archive_by_archive(any_lab, tmp_path):
    """Between the full and the incremental a client swaps A and B (A -> T, B -> A, T -> B)
    and P (with P/k) and Q, and shifts C -> D, E -> C; the folders hold keywords beyond
    the 26th.  Restored archive
    by archive, the full makes A, B, C, E under their old names, and the incremental's
    restore found each new name taken by the folder holding the GUID it wants.  Before,
    each swapped folder kept the other's GUID (exit 0: a dsync replica or a client that
    knows folders by GUID sees them swapped); on sdbox/mdbox the give-back's dsync of one
    folder could not move a GUID from one name to another (exit 17, folders left empty)."""
    lab = any_lab
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(["alice"], message("first"))
    with lab.imap("alice") as c:
        for box in ("A", "B", "C", "E", "P", "P/k", "Q"):
            c.create(box)
            c.subscribe(box)
            c.append(box, message(f"in {box}"), ["$Label1"])
            c.append(box, message(f"in {box}, 2"), [r"\Seen", *KWS])
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    first = view(lab, "alice")
    time.sleep(1.1)
    with lab.imap("alice") as c:
        c.rename("A", "T")
        c.rename("B", "A")
        c.rename("T", "B")
        c.rename("C", "D")
        c.rename("E", "C")
        c.rename("P", "T")                     # P/k goes with it
        c.rename("Q", "P")
        c.rename("T", "Q")
        c.select("B")
        c.uid_store(c.uids(), "+FLAGS", ["$Moved"])
        c.unselect()
    want = view(lab, "alice")
    assert want[1]["A"][0] == first[1]["B"][0] and want[1]["D"][0] == first[1]["C"][0]
    assert want[1]["Q/k"][0] == first[1]["P/k"][0]
    run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
    chain_both_ways(lab, home, full, incr, want, first)


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
    chain_both_ways(lab, home, full, incr, want, first)
