"""The nightly backup and a restore leave Dovecot's log without an error.

An administrator greps Dovecot's log for ``Error:`` after the 2 AM backup.  Every run of
ims-asm against a Dovecot configured as docs/dovecot.md documents it used to put
``auth-worker: Error:`` lines there: the userdb listing each command asks for (to name
logins the userdb keeps elsewhere) made Dovecot list the delivery hold's passwd-file,
whose ``hold.%s`` path cannot be listed ("User iteration isn't currently supported with
%variable paths"); and with the hold out of the way a static userdb alone cannot be
listed at all ("Trying to iterate users, but userdbs don't support it").

Here a Dovecot with exactly the documented userdbs (the layout's static or passwd-file
userdb, and the hold in ``protocol lmtp``; no test-only userdb) is filled over LMTP and
IMAP, backed up full and ``--base`` incremental, wiped, and the chain restored with
``dovecot.holdfile`` set: every login comes back as its client saw it,
deliveries are held while a login is restored, logins are still listed from a userdb
that can list them, and Dovecot logs no ``Error:``, ``Panic:`` or ``Fatal:`` line.
"""
from __future__ import annotations

import os
import re

import pytest

from asm.store import layout as L
from tests.dovecot_lab import dovecot_lab, message
from tests.helpers import run
from tests.test_dovecot_layouts import configure, seen, wipe

BAD = re.compile(r"\b(Error|Panic|Fatal):")


@pytest.fixture(params=["plain", "home", "sdbox"])
def documented_lab(request):
    # two logins: a restore holds each one's deliveries, and a hold waits 1.1 s for auth
    with dovecot_lab(request.param, logins=["alice", "bob"], override_userdb=False) as lab:
        yield lab


def bad_lines(lab, start: int) -> list[str]:
    with open(os.path.join(lab.dir, "dovecot.log"), errors="replace") as f:
        f.seek(start)
        return [ln for ln in f.read().splitlines() if BAD.search(ln)]


def test_backups_and_restores_with_the_documented_setup_log_no_error(documented_lab, tmp_path):
    from asm.config import Config
    from asm.store import open_store
    lab = documented_lab
    start = os.path.getsize(os.path.join(lab.dir, "dovecot.log"))
    home = tmp_path / "ims"
    configure(lab, home)
    hold = os.path.join(lab.dir, "hold.lmtp")
    run(home, "msconfig", "set", "dovecot.holdfile", hold, check=0)
    # listing: a passwd-file userdb is listed in full; a static one cannot be, and is not asked
    sl = L.from_doveconf(lab.conf)
    if lab.layout.userdb == "passwd-file":
        users, complete = L.userdb_users(sl.userdb_socket)
        assert complete and sorted(users) == sorted(lab.logins)
    else:
        assert sl.userdb_socket is None

    lab.deliver(lab.logins, message("to everyone", size=2000))
    for u in lab.logins:
        with lab.imap(u) as c:
            c.create("Work")
            c.subscribe("Work")
            c.append("Work", message(f"w {u}"), [r"\Seen", "$Label1"], "05-Mar-2024 12:00:00 +0100")
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    res = run(home, "imsbackup", "-f", full, "/", text=True)
    assert res.returncode == 0, res.stderr
    u = lab.logins[0]
    lab.deliver([u, lab.logins[1]], message("after the full"))
    with lab.imap(u) as c:
        c.append("Work", message("later"), ["Project"])
        c.select("INBOX")
        c.uid_store([1], "+FLAGS", [r"\Flagged"])
        c.unselect()
    before = {x: lab.client_state(x) for x in lab.logins}
    res = run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", text=True)
    assert res.returncode == 0, res.stderr

    # the documented hold holds LMTP deliveries, and only LMTP's
    store = open_store(Config(home=str(home)))
    store.hold_deliveries(u, "test@hold")
    try:
        assert lab.deliver([u], message("held"), check=False)[u][0] == 451
        with lab.imap(u) as c:
            c.select("INBOX", readonly=True)
    finally:
        store.release_deliveries(u, "test@hold")

    wipe(lab)
    # the chain in one command (each login held once: a hold waits 1.1 s for auth)
    res = run(home, "imsrestore", "-f", full, "-f", incr, text=True)
    assert res.returncode == 0, res.stderr
    for x in lab.logins:
        assert seen(lab.client_state(x)) == seen(before[x]), x
    assert "ims-asm" not in open(hold).read()        # every hold released
    # the only error: the delivery this test sent to a held login (Dovecot's LMTP logs
    # every userdb tempfail as one, lmtp-local.c; docs/dovecot.md "Holding deliveries")
    held = f"lmtp-server: conn .*: rcpt {u}: Failed to lookup user {u}: delivery_held_by_ims-asm$"
    bad = bad_lines(lab, start)
    assert len([ln for ln in bad if re.search(held, ln)]) == 1, bad
    assert not [ln for ln in bad if not re.search(held, ln)], "\n".join(bad)


def test_userdbs_listable_from_doveconf_output():
    """A listing is asked for only when some global userdb can list its users."""
    def conf(*sections):
        return "".join(f"userdb {{\n  args = {a}\n  driver = {d}\n}}\n" for d, a in sections)
    static = ("static", "uid=vmail gid=vmail home=/var/vmail/%u")
    assert not L.userdbs_listable(conf(static))
    assert not L.userdbs_listable("")
    assert not L.userdbs_listable(conf(("passwd-file", "username_format=%u /etc/dovecot/hold.%s"), static))
    assert not L.userdbs_listable(conf(("prefetch", ""), ("checkpassword", "/bin/cp")))
    assert L.userdbs_listable(conf(static, ("passwd-file", "/etc/dovecot/users")))
    assert L.userdbs_listable(conf(("passwd-file", "username_format=%n /etc/dovecot/100%%")))
    assert L.userdbs_listable(conf(("sql", "/etc/dovecot/sql.conf.ext")))
    assert not L.userdbs_listable(conf(("passwd-file", "/etc/dovecot/%d/passwd")))
