"""Mailbox GUIDs across a restore, against a real Dovecot (Maildir and sdbox).

A site that keeps a login in sync with a replica by dsync (``doveadm sync``, what the
replicator runs) knows each folder by its mailbox GUID.  Before the archive carried it
(IMSASM.mailbox_guid), every folder a restore made got a new one, and every later
``doveadm sync`` of the login failed ("Mailbox changes caused a desync ... Remote lost
mailbox GUID"), run after run.  Here: ``doveadm mailbox status guid`` is what it was at
the backup after a full restore and after a chain restore (in one command and in two),
and dsync to the replica goes on working (a folder renamed between the backups
too: the restore of the full makes it under its old name, the incremental's under its
new one, with its GUID once the old one has gone); a folder restored beside (-n) or under
another user (-m) never takes a GUID another folder of the account has.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from tests.dovecot_lab import lab_fixture, message
from tests.helpers import run
from tests.test_dovecot_layouts import configure

lab = lab_fixture(params=["plain", "sdbox"])


def guids(lab, login) -> dict[str, str]:
    """{folder: mailbox GUID} as Dovecot serves them."""
    out = lab.doveadm("-f json mailbox status", "guid", "*", user=login).stdout
    return {row["mailbox"]: row["guid"] for row in json.loads(out)}


def _replica(lab, login) -> str:
    rep = os.path.join(lab.dir, f"replica-{login}")
    if not os.path.isdir(rep):
        os.mkdir(rep)
        os.chown(rep, lab.uid, lab.gid)
    return f"{lab.layout.format}:{rep}/mail"


def sync(lab, login) -> tuple[int, str]:
    """``doveadm sync -u LOGIN`` with the login's replica: (exit status, last line)."""
    r = lab.doveadm("sync", _replica(lab, login), user=login, check=False)
    return r.returncode, (r.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]


def syncs_clean(lab, login, times: int = 2) -> None:
    for i in range(times):
        rc, err = sync(lab, login)
        assert rc == 0, f"doveadm sync -u {login} (run {i + 1}) exited {rc}: {err}"


def wipe(lab, login) -> None:
    """The login's mail is lost (its whole home, as the layouts keep it)."""
    shutil.rmtree(os.path.join(lab.store, login))


def fill(lab, login) -> None:
    lab.deliver([login], message(f"to {login}"))
    with lab.imap(login) as c:
        for box in ("Work", "Work/2024", "Old"):
            c.create(box)
        c.append("Work", message("w1"), [r"\Seen"])
        c.append("Work/2024", message("w2"))


def test_a_full_restore_keeps_every_mailbox_guid_and_dsync_goes_on(lab, tmp_path):
    login = "alice"
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab, login)
    syncs_clean(lab, login)
    before = guids(lab, login)
    assert len(before) == 4 and len(set(before.values())) == 4
    archive = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", archive, f"/primary/user/{login}", check=0)
    wipe(lab, login)
    run(home, "imsrestore", "-f", archive, check=0)
    assert guids(lab, login) == before
    syncs_clean(lab, login, 3)
    # the replica's mail and the restored login's are the same mail
    with lab.imap(login) as c:
        c.append("Old", message("after the restore"))
    syncs_clean(lab, login)
    assert guids(lab, login) == before


def test_a_chain_restore_keeps_every_mailbox_guid_and_dsync_goes_on(lab, tmp_path):
    login = "bob"
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab, login)
    syncs_clean(lab, login)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", tmp_path / "full.state", f"/primary/user/{login}",
        check=0)
    before = guids(lab, login)
    with lab.imap(login) as c:
        c.create("New")
        c.append("New", message("n1"))
        c.append("Work", message("w3"), [r"\Flagged"])
        c.rename("Old", "Older")            # (Dovecot keeps a renamed folder's GUID)
    syncs_clean(lab, login)
    after = guids(lab, login)
    assert len(after) == 5 and len(set(after.values())) == 5
    assert after["Older"] == before["Old"]
    run(home, "imsbackup", "-f", incr, "--base", tmp_path / "full.state", f"/primary/user/{login}", check=0)
    for split in (False, True):
        wipe(lab, login)
        if split:
            run(home, "imsrestore", "-f", full, check=0)
            run(home, "imsrestore", "-f", incr, check=0)
        else:
            run(home, "imsrestore", "-f", full, "-f", incr, check=0)
        assert guids(lab, login) == after, f"split={split}"
        syncs_clean(lab, login)


def test_a_folder_restored_beside_or_for_another_user_gets_a_guid_of_its_own(lab, tmp_path):
    """-n into the live login: the folder beside Work is another mailbox, with its own
    GUID; -m carol=alice: carol's folders made in alice's account get GUIDs of their own
    (carol's are hers), those merged into keep alice's."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab, "carol")
    carol = guids(lab, "carol")
    archive = tmp_path / "carol.ims"
    run(home, "imsbackup", "-f", archive, "/primary/user/carol", check=0)
    with lab.imap("carol") as c:
        c.append("Work", message("since the backup"))
    run(home, "imsrestore", "-n", "-f", archive, "/primary/carol/Work", check=0)
    now = guids(lab, "carol")
    beside = set(now) - set(carol)          # Work-DATE (and Work/2024-DATE: a path takes subfolders)
    assert beside and all(n.startswith("Work") and "-" in n for n in beside), now
    assert {k: now[k] for k in carol} == carol
    assert len(set(now.values())) == len(now), now
    alice = guids(lab, "alice")
    mapfile = tmp_path / "map"
    mapfile.write_text("carol=alice\n")
    time.sleep(1.1)                 # (another UIDVALIDITY for folders made now)
    run(home, "imsrestore", "-m", mapfile, "-f", archive, check=0)
    merged = guids(lab, "alice")
    assert {k: merged[k] for k in alice} == alice
    assert len(set(merged.values())) == len(merged)
    assert not set(merged.values()) & set(carol.values())
