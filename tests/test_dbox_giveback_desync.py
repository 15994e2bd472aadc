"""A dbox folder's give-back (``doveadm backup -m FOLDER``) that dsync ends on a desync
every time, against a real Dovecot, sdbox and mdbox: only the give-back's answer is
forced (a doveadm earlier on PATH says what dsync says when the folder changed while it
copied it); the account, the archive and every other doveadm run are real.

A desync that is not a UID conflict is run again as dsync asks; still there after the
last try, the restore exits 17 with one line that says so (not the "UIDs both claim" of a
UID conflict, the wrong reason), and the same command run again once nothing changes
the folder gives it back, exit 0.
"""
from __future__ import annotations

import os
import shutil

from asm.errors import EXIT_STORE
from asm.store.maildir.dbox import DESYNC_TRIES
from tests.dovecot_lab import lab_fixture
from tests.helpers import run
from tests.test_dbox_live_giveback import contents, trash_lost

lab = lab_fixture(params=["sdbox", "mdbox"], scope="function")

#: dsync's line when the mailboxes changed while it synced them (exit 2), not a UID conflict
DESYNC = ("Error: Mailbox changes caused a desync. You may want to run dsync again: "
          "Remote lost mailbox GUID 0123456789abcdef0123456789abcdef (maybe it was just deleted?)")


def desyncing_doveadm(tmp_path) -> tuple[dict, str]:
    """A PATH whose doveadm answers every folder give-back (``backup ... -m FOLDER``
    from ``mail_location=maildir:`` to the dbox account) with ``DESYNC``, exit 2,
    counting them in the file returned; any other command is the real doveadm's."""
    real = shutil.which("doveadm", path="/usr/bin:/usr/sbin:/bin:/sbin")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    tries = bin_ / "tries"
    (bin_ / "doveadm").write_text(f"""#!/bin/sh
case "$*" in *mail_location=maildir:*backup*-m*box:*)
    echo x >> {tries}
    echo "{DESYNC}" >&2
    exit 2;;
esac
exec {real} "$@"
""")
    (bin_ / "doveadm").chmod(0o755)
    return {"PATH": f"{bin_}:{os.environ['PATH']}"}, str(tries)


def test_dboxlive_a_give_back_that_desyncs_every_time_says_so_and_a_rerun_finishes(lab, tmp_path):
    home, a, trash = trash_lost(lab, tmp_path, n=5)
    env, tries = desyncing_doveadm(tmp_path)
    p = run(home, "imsrestore", "-f", a, "/primary/alice/Trash", env=env, check=None, text=True)
    assert p.returncode == EXIT_STORE, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    err = p.stderr
    # the reason it stopped, and what to do; not the UID conflict's wording
    assert "UIDs both claim" not in err, err
    assert (f"doveadm backup did not give the dbox account 'Trash' as restored: it could not "
            f"bring the folder in step after {DESYNC_TRIES} tries") in err, err
    assert "Mailbox changes caused a desync" in err, err
    assert "may be gone from it" in err and "restore the folder again while no client writes" in err, err
    # run again as dsync asks, DESYNC_TRIES times, not more
    assert open(tries).read().count("x") == DESYNC_TRIES
    # nothing was given back: the account's Trash is as it was (emptied), the others too
    assert contents(lab)["Trash"] == []
    # the same command, once dsync no longer desyncs, gives the folder back
    run(home, "imsrestore", "-f", a, "/primary/alice/Trash", check=0)
    assert contents(lab)["Trash"] == trash
