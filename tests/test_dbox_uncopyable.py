"""A dbox login (or folder) that ``doveadm backup`` (dsync) cannot copy, against a real
Dovecot (one sdbox lab for the module).

ims-asm reads an sdbox/mdbox account through a Maildir copy dsync makes
(asm/store/maildir/dbox.py).  When dsync cannot copy one login, that login's folder (or,
failing that, the login) is named as not backed up, every other login is in the archive
and the backup exits 1, as for a Maildir folder it cannot read.  The next incremental
carries what the full left out once dsync can copy it, and the chain restores it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

from asm.errors import EXIT_PARTIAL, EXIT_STORE
from tests.dovecot_lab import lab_fixture, message
from tests.helpers import run
from tests.test_dbox_chain import configure, view, wipe

lab = lab_fixture("sdbox")
USERS = ("alice", "bob", "carol")


def failing_doveadm(tmp_path, args: str, error: str) -> dict:
    """The environment of a run whose doveadm fails (exit 75, ``error`` on stderr) when
    its arguments hold ``args``, as dsync does; any other doveadm run is the real one."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "doveadm").write_text(
        f"#!/bin/sh\ncase \" $* \" in *\"{args}\"*)\n  echo '{error}' >&2; exit 75;;\nesac\n"
        f"exec {shutil.which('doveadm') or '/usr/bin/doveadm'} \"$@\"\n")
    (fake / "doveadm").chmod(0o755)
    return {"PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def views(lab):
    return {u: view(lab, u) for u in USERS}


def fill(lab) -> None:
    wipe(lab)
    lab.deliver(list(USERS), message("hello", size=900))
    for login in USERS:
        with lab.imap(login) as c:
            c.create("Work")
            c.append("Work", message(f"work of {login}"), [r"\Seen", "$Label1"], "05-Mar-2024 12:00:00 +0100")


def listing(home, archive) -> list[str]:
    """The folders an archive holds, and its messages (its table of contents)."""
    toc = run(home, "imsrestore", "-t", "-f", archive, check=0, text=True).stdout
    return sorted(ln.split("\t")[0] for ln in toc.splitlines() if ln.startswith("/"))


def trailer(archive) -> str:
    return subprocess.run(["tar", "-xOf", str(archive), "ims-asm.trailer"],
                          capture_output=True, text=True, check=True).stdout


def errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "could not back up" in ln]


def since() -> str:
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(time.time() - 1))


def test_a_dbox_folder_dsync_stops_on_is_named_and_the_rest_backed_up(lab, tmp_path):
    """A '%XX' that dsync decodes to what the Maildir++ copy cannot hold ("v%2e" becomes
    "v.", a hierarchy) stops doveadm backup of the whole login.  It stopped the backup
    of every login: exit 17, no archive.  Now that folder (and one below it) is left out
    of the copy (``-x`` with its '%' written '%25'), named with the rename to do, listed
    in the trailer, exit 1; every other folder of every login is in the archive.  After
    the user renames the folders, a --base incremental and a -d one carry them, and the
    chain restores into an emptied store what the client saw."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    with lab.imap("bob") as c:
        for box in ("v%2e", "x/v%2e/y"):
            c.create(box)
            c.append(box, message(f"in {box}"), [r"\Flagged"])
    full = tmp_path / "full.ims"
    p = run(home, "imsbackup", "-f", full, "--state-out", tmp_path / "full.state", "/",
            check=EXIT_PARTIAL, text=True)
    assert "Traceback" not in p.stderr
    named = errors(p.stderr)
    assert len(named) == 2, p.stderr
    for line, box in zip(named, ("v%2e", "x/v%2e/y")):
        assert line.startswith(f"imsbackup: could not back up /primary/bob/{box}: doveadm backup (dsync)"), line
        assert f"rename it without '%' (doveadm mailbox rename -u bob {box} NEW-NAME)" in line, line
    assert listing(home, full) == sorted(
        [f"/primary/{u}/{f}{m}" for u in USERS for f in ("INBOX", "Work") for m in ("", "/1")])
    t = trailer(full)
    assert "/primary/bob/v%2e" in t and "/primary/bob/x/v%2e/y" in t, t
    # the user renames them; the next incrementals bring them in
    with lab.imap("bob") as c:
        c.rename("v%2e", "v2e")
        c.rename("x/v%2e/y", "x/y")
    want = views(lab)
    assert set(want["bob"][0]) == {"INBOX", "Work", "v2e", "x/y"}
    incr, by_date = tmp_path / "incr.ims", tmp_path / "date.ims"
    for archive, how in ((incr, ["--base", tmp_path / "full.state"]), (by_date, ["-d", since()])):
        p = run(home, "imsbackup", "-f", archive, *how, "/", check=None, text=True)
        assert (p.returncode, p.stderr) == (0, ""), p.stderr
        assert {"/primary/bob/v2e/1", "/primary/bob/x/y/1"} <= set(listing(home, archive))
        # (-d: each run's copy of a login is new, so all of its files are changed after
        # the date: a -d incremental of a dbox store carries every message)
        assert ("/primary/alice/INBOX/1" in listing(home, archive)) == (archive == by_date)
    for chain in ([full, incr], [full, by_date]):
        wipe(lab)
        run(home, "imsrestore", *sum((["-f", a] for a in chain), []), check=0)
        assert views(lab) == want, chain


def test_a_dbox_login_dsync_cannot_copy_is_named_and_the_others_backed_up(lab, tmp_path):
    """When doveadm backup of a login fails for a reason no folder name explains (here
    a doveadm that fails carol's copy), the login is named as not backed up in one line
    with dsync's error and what to do, in the trailer, exit 1; the other logins are in
    the archive.  (Before: exit 17, no archive.)  The full's state file does not hold
    carol: the next incremental carries her whole, and the chain restores her."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    failing = failing_doveadm(tmp_path, " backup -u carol ", "dsync(carol): Error: Mailbox Work: simulated failure")
    full = tmp_path / "full.ims"
    p = run(home, "imsbackup", "-f", full, "--state-out", tmp_path / "full.state", "/",
            env=failing, check=EXIT_PARTIAL, text=True)
    assert "Traceback" not in p.stderr
    named = errors(p.stderr)
    assert len(named) == 1, p.stderr
    assert named[0].startswith("imsbackup: could not back up /primary/carol: doveadm backup (dsync) "
                               "cannot copy this login"), named[0]
    assert "simulated failure" in named[0] and "doveadm mailbox rename" in named[0], named[0]
    assert listing(home, full) == sorted(
        [f"/primary/{u}/{f}{m}" for u in ("alice", "bob") for f in ("INBOX", "Work") for m in ("", "/1")])
    assert "/primary/carol" in trailer(full)
    p = run(home, "imsverify", "-f", full, check=EXIT_PARTIAL, text=True)
    assert "1 backup errors" in p.stdout + p.stderr, p.stdout + p.stderr
    want = views(lab)
    incr, by_date = tmp_path / "incr.ims", tmp_path / "date.ims"
    for archive, how in ((incr, ["--base", tmp_path / "full.state"]), (by_date, ["-d", since()])):
        p = run(home, "imsbackup", "-f", archive, *how, "/", check=None, text=True)
        assert (p.returncode, p.stderr) == (0, ""), p.stderr
        assert {"/primary/carol/INBOX/1", "/primary/carol/Work/1"} <= set(listing(home, archive))
    for chain in ([full, incr], [full, by_date]):
        wipe(lab)
        run(home, "imsrestore", *sum((["-f", a] for a in chain), []), check=0)
        assert views(lab) == want, chain


DESYNC = ("dsync(carol): Warning: Mailbox changes caused a desync. You may want to run dsync again: "
          "Remote lost mailbox GUID 0123456789abcdef0123456789abcdef (maybe it was just deleted?)")


def desyncing_doveadm(tmp_path, times: int) -> dict:
    """A doveadm whose first ``times`` copies of carol (of the whole login or, ``-m``, of
    one folder) end as dsync's do when her IMAP client changed her folders meanwhile (the
    desync warning, exit 2); then the real one."""
    fake = tmp_path / "bin"
    fake.mkdir()
    count = tmp_path / "copies"
    (fake / "doveadm").write_text(
        f"#!/bin/sh\ncase \" $* \" in *\" backup -u carol \"*maildir:*)\n"
        f"  n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}\n"
        f"  if [ $n -le {times} ]; then echo '{DESYNC}' >&2; exit 2; fi;;\nesac\n"
        f"exec {shutil.which('doveadm') or '/usr/bin/doveadm'} \"$@\"\n")
    (fake / "doveadm").chmod(0o755)
    return {"PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def test_a_dbox_login_copied_while_its_client_changes_it_is_copied_again(lab, tmp_path):
    """dsync ends a copy with "Mailbox changes caused a desync. You may want to run
    dsync again" (exit 2) when the user's IMAP client deletes and makes folders while
    it copies.  The whole login was left out of the archive (exit 1) with advice to
    force-resync or rename: a night without any of that user's mail for a passing race.
    Now the copy is made again, as dsync asks (up to 3 times): two desyncs and the
    backup exits 0 with carol whole; a login each copy of which desyncs every time (of
    the whole login 3 times, then of each folder on its own 3 times) is named as before
    (exit 1), with dsync's warning and that the copy was tried 3 times.
    (test_dbox_chain.py: a login only whose whole copy desyncs is copied folder by folder.)"""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", env=desyncing_doveadm(tmp_path, 2), check=None, text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert {"/primary/carol/INBOX/1", "/primary/carol/Work/1"} <= set(listing(home, a))
    assert int((tmp_path / "copies").read_text()) >= 3      # (read again: listed, then read)
    shutil.rmtree(tmp_path / "bin")
    (tmp_path / "copies").unlink()
    p = run(home, "imsbackup", "-f", tmp_path / "b.ims", "/", env=desyncing_doveadm(tmp_path, 99),
            check=EXIT_PARTIAL, text=True)
    named = errors(p.stderr)
    assert len(named) == 1 and named[0].startswith("imsbackup: could not back up /primary/carol: "), p.stderr
    assert "caused a desync" in named[0] and "3 times" in named[0], named[0]
    # 3 copies of the whole login, 3 of each of her 2 folders; not tried again in the run
    assert (tmp_path / "copies").read_text().strip() == "9"


def test_dovecot_down_still_stops_a_dbox_backup(lab, tmp_path):
    """Real errors are not one login's: with Dovecot stopped the backup of a dbox
    store still stops (exit 17, no archive), as before."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    lab.stop()
    try:
        p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=None, text=True)
    finally:
        lab.start()
    assert p.returncode == EXIT_STORE, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert not os.path.exists(tmp_path / "a.ims")


def test_a_dbox_backup_no_login_of_which_can_be_copied_fails(lab, tmp_path):
    """When doveadm backup fails for every login of the run (a host-wide error: the
    copy's file system read-only), nothing was backed up: the run fails as before one
    login's failure became exit 1, exit 17, one line with the first error, no archive
    (and no state file).  A run that copied some logins stays exit 1 (above)."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    failing = failing_doveadm(tmp_path, " backup -u ", "dsync: Error: mkdir(/x/Maildir) failed: Read-only file system")
    for names in (["/"], ["/primary/user/bob"]):
        archive = tmp_path / "a.ims"
        p = run(home, "imsbackup", "-f", archive, "--state-out", tmp_path / "a.state", *names,
                env=failing, check=None, text=True)
        assert p.returncode == EXIT_STORE, (names, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert "Read-only file system" in lines[0] and "cannot copy this login" in lines[0], lines[0]
        assert "was removed" in lines[0], lines[0]
        assert not os.path.exists(archive) and not os.path.exists(tmp_path / "a.state")
