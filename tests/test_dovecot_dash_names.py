"""Keywords and folder names that begin with '-' go through doveadm as names.

IMAP allows a keyword or a folder name to begin with '-' ("-Important", "--Archive--"
sort first in a client's folder list).  doveadm parses its command line with getopt,
which takes any argument beginning with '-' for an option wherever it stands
(``doveadm flags add -u alice -minus mailbox INBOX uid 1``: "add: invalid option --
'm'", exit 64) unless ``--`` ends the options.  Every doveadm run the drivers make
with such a name (keywords beyond the 26th of a Maildir folder, a dbox account's
folders listed, renamed, deleted, subscribed) once failed so: a restore of a message
whose keywords beyond the 26th began with '-' exited 17 and lost them.  Dovecot fills
the store (tests/dovecot_lab.py); a full and a ``--base`` incremental are restored into
the emptied store archive by archive and in one command, and the client sees what it
saw at each backup.
"""
from __future__ import annotations

from tests.dovecot_lab import lab_fixture, message
from tests.helpers import run
from tests.test_dovecot_layouts import configure, wipe

lab = lab_fixture(params=["plain", "sdbox", "mdbox"], scope="function", logins=["alice", "bob"])
KWS = [f"kw{i:02d}" for i in range(26)]          # every keyword letter of a Maildir folder


def _ok(p) -> None:
    assert (p.returncode, p.stderr) == (0, ""), p.stderr


def test_keywords_and_folders_that_begin_with_a_dash_round_trip(lab, tmp_path):
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(lab.logins, message("hello"))
    with lab.imap("alice") as c:
        for box in ("-Important", "--Archive--/-kid", "Plain"):
            c.create(box)
        c.subscribe("-Important")
        c.subscribe("--Archive--/-kid")
        c.append("-Important", message("tagged"), [r"\Seen", *KWS, "-minus", "-zz"])
        c.append("-Important", message("also"), ["-minus"])
        c.append("--Archive--/-kid", message("kid"), ["-k", r"\Flagged"])
        c.append("Plain", message("plain"), [*KWS, "-x"])
        c.select("INBOX")
        c.uid_store([1], "+FLAGS", ["-seen-by-me"])
        c.unselect()
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    _ok(run(home, "imsbackup", "-f", full, "/", text=True))
    first = {u: lab.client_state(u) for u in lab.logins}
    assert {"-minus", "-zz"} <= first["alice"]["-Important"].messages[0].flags
    lab.deliver(lab.logins, message("between"))
    with lab.imap("alice") as c:
        c.rename("--Archive--", "-Archived")
        c.unsubscribe("-Important")
        c.create("-New")
        c.subscribe("-New")
        c.append("-New", message("new"), ["-fresh"])
        c.select("-Important")
        c.uid_store([1], "-FLAGS", ["-zz"])
        c.uid_store([2], "+FLAGS", ["-more", *KWS[:3]])
        c.unselect()
        c.delete("Plain")
    _ok(run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", text=True))
    second = {u: lab.client_state(u) for u in lab.logins}
    assert second != first
    wipe(lab)
    _ok(run(home, "imsrestore", "-H", "-f", full, text=True))
    assert {u: lab.client_state(u) for u in lab.logins} == first
    _ok(run(home, "imsrestore", "-f", incr, text=True))
    assert {u: lab.client_state(u) for u in lab.logins} == second
    wipe(lab)
    _ok(run(home, "imsrestore", "-f", full, "-f", incr, text=True))
    assert {u: lab.client_state(u) for u in lab.logins} == second
