"""Legitimate but odd names, end to end: folder names that hold characters Python
counts as line breaks though no file or tool here does (U+0085 NEXT LINE, which a
client's cp1252 '…' read as Latin-1 gives; U+2028 LINE SEPARATOR, U+2029), and
folder names holding '*' or '%', which doveadm reads as patterns."""
from __future__ import annotations

import os

import pytest

from tests.dovecot_lab import dovecot_lab, message
from tests.helpers import run
from tests.test_dovecot_layouts import configure, seen, wipe

# IMAP (modified UTF-7) names: 'Notes\x85', 'a\u2028b', 'x\u2029y\x85z'
LINE_BREAKERS = ["Notes&AIU-", "a&ICg-b", "x&ICk-y&AIU-z"]


def _round_trip(lab, home, tmp_path):
    """imsbackup of / (exit 0, silent), every mail tree wiped, imsrestore (exit 0,
    silent): alice as her client sees her then."""
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    lab.stop(wait="sessions")
    wipe(lab)
    lab.start()
    p = run(home, "imsrestore", "-f", a, text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    return lab.client_state("alice")


@pytest.mark.parametrize("layout", ["sdbox", "plain"])
def test_names_holding_unicode_line_breaks_keep_their_subscriptions(tmp_path, layout):
    """doveadm prints one name a line; its output was split with str.splitlines(), which
    also breaks at U+0085, U+2028 and U+2029, so a dbox account's subscription to such a
    name that is no folder (Dovecot keeps it after a DELETE) was archived as subscriptions
    to the pieces ('Notes', 'a', 'b', ...): the restore gave the client those and not
    the name it had, exit 0, and imsverify --against-store agreed."""
    with dovecot_lab(layout, logins=["alice"]) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(["alice"], message("hello"))
        with lab.imap("alice") as c:
            for name in LINE_BREAKERS + ["Kept&AIU-"]:
                c.create(name)
                c.subscribe(name)
                c.append(name, message(f"in {name}"), [r"\Seen"])
            for name in LINE_BREAKERS:
                c.delete(name)                   # the subscription stays, as Dovecot keeps it
        before = lab.client_state("alice")
        assert set(LINE_BREAKERS) <= before.subscriptions and "Kept&AIU-" in before.folders
        after = _round_trip(lab, home, tmp_path)
        assert after.subscriptions == before.subscriptions
        assert seen(after) == seen(before)
        p = run(home, "imsverify", "-f", tmp_path / "a.ims", "--against-store", "--exact", text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_the_hold_file_keeps_lines_holding_unicode_line_breaks(tmp_path, monkeypatch):
    """dovecot.holdfile: the administrator's lines are kept as they are.  The file was
    read with str.splitlines(), so a line holding U+2028, U+0085 or a form feed (a
    comment, a GECOS field) was written back as two lines by every hold and release."""
    from asm.store.maildir import holdfile
    monkeypatch.setattr(holdfile, "SETTLE", 0)
    path = tmp_path / "hold.lmtp"
    mine = ("# held by hand for Ren\u00e9e\u2028(ticket 7)\n"
            "carol:::::::userdb_tempfail=yes # Jos\u00e9\x85 \x0c moved\n")
    path.write_text(mine, encoding="utf-8")
    assert holdfile.set_held(str(path), "alice", True, 5, os.getpid(), "host")
    text = path.read_text(encoding="utf-8")
    assert text.startswith(mine) and text.count("\n") == 3 and "alice:" in text.splitlines()[-1]
    assert holdfile.set_held(str(path), "alice", False, 5, os.getpid(), "host")
    assert path.read_text(encoding="utf-8") == mine


KWS = [f"kw{i:02d}" for i in range(30)]          # beyond the 26 file-name letters: Dovecot's index only


def test_keywords_of_folders_whose_names_hold_imap_wildcards_stay_their_own(tmp_path):
    """doveadm reads a search's 'mailbox NAME' as a pattern: for folder '*x' the keywords
    beyond the 26th (asked of doveadm by folder) were those of 'ax' and '*x' merged by
    UID, and restoring them added them to 'ax' too; '%y' likewise with 'by'."""
    with dovecot_lab("plain", logins=["alice"]) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(["alice"], message("hello"))
        with lab.imap("alice") as c:
            for i, name in enumerate(["*x", "ax", "%y", "by"]):
                c.create(name)
                mine = KWS[:26] + [f"only{i}a", f"only{i}b"]
                c.append(name, message(f"in {name}"), mine)
                c.append(name, message(f"second in {name}"), KWS[:26] + [f"second{i}"])
        before = lab.client_state("alice")
        after = _round_trip(lab, home, tmp_path)
        for name in ["*x", "ax", "%y", "by"]:
            assert after[name] == before[name], name
        assert seen(after) == seen(before)


def test_a_dbox_listing_by_folder_is_the_listing_when_names_hold_imap_wildcards(tmp_path):
    """The dbox account's listing by folder (taken when the whole-account one raced three
    times) asked doveadm 'mailbox status ... *x' and 'fetch ... mailbox *x', patterns
    that also take 'ax': its rows and messages were listed twice, and the listing read
    as an account a client had changed."""
    from asm.config import Config
    from asm.store import open_store
    with dovecot_lab("sdbox", logins=["alice"]) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(["alice"], message("hello"))
        with lab.imap("alice") as c:
            for name in ["*x", "ax", "%y", "by"]:
                c.create(name)
                c.subscribe(name)
                c.append(name, message(f"in {name}"), [r"\Seen", "kw"])
        store = open_store(Config(home))
        whole = store._listing("alice", modseq=True)
        assert set(whole) >= {"*x", "ax", "%y", "by"}
        assert store._listing("alice", modseq=True, by_folder=True) == whole
