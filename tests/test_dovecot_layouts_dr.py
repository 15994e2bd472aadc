"""imsdr and reconstruct on Dovecot layouts (store.mail_location), against a real Dovecot.

Dovecot fills the store (tests/test_dovecot_layouts.py's ``fill``: LMTP, IMAP folders,
flags, keywords, COPY, EXPUNGE).  ``imsdr backup`` must capture every uidlist, keywords
file, subscriptions file and index file where Dovecot itself says they are (``doveadm
mailbox path -t control|index``); the file route of docs/disaster-recovery.md (message
files from a file backup, the rest from ``imsdr restore --all``, then ``reconstruct``)
must give the client the store it saw; and ``reconstruct`` must repair a folder whose
uidlist was lost where the layout keeps it (CONTROL=), with the UIDs an archive knows.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

from asm.store import utf7
from tests.dovecot_lab import lab_fixture, message
from tests.helpers import run
from tests.test_dovecot_layouts import configure, fill, wipe
from tests.test_dovecot_mailbox_guid import guids as mailbox_guids

lab = lab_fixture(params=["idxctl", "vdomain", "fs", "home"])


def trees(lab):
    return [t for t in (lab.store, lab.idx, lab.ctl, lab.homes) if os.path.isdir(t)]


def members(home, dr):
    res = run(home, "imsdr", "show", "--json", "-f", dr, check=0, text=True)
    return json.loads(res.stdout)


def test_imsdr_and_reconstruct_follow_the_layout(lab, tmp_path):
    fill(lab)
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    # a login's mail_crypt keys (mail_attribute_dict = file:%h/dovecot-attributes)
    owner = lab.logins[1]
    attrs = os.path.join(lab.doveadm("user", "-f", "home", owner).stdout.decode().strip(),
                         "dovecot-attributes")
    if not os.path.isdir(os.path.dirname(attrs)):          # a home only the keys use
        os.makedirs(os.path.dirname(attrs))
        os.chown(os.path.dirname(attrs), lab.uid, lab.gid)
    with open(attrs, "w") as f:
        f.write("priv/vendor/vendor.dovecot/pvt/crypt/active\n0123\n")
    os.chown(attrs, lab.uid, lab.gid)
    dr = tmp_path / "dr.tar"
    run(home, "imsdr", "backup", "-f", dr, check=0)
    man = members(home, dr)
    assert man["mail_location"] == lab.mail_location
    targets = {it.get("target") for it in man["items"]}
    # independent: where Dovecot says each folder's control and index files are
    for u in lab.logins:
        for f in before[u].folders:
            f = "/".join(utf7.decode(lv) for lv in f.split("/"))   # doveadm takes UTF-8
            ctl = lab.mailbox_path(u, f, "control")
            assert os.path.join(ctl, "dovecot-uidlist") in targets, (u, f, ctl)
            idx = lab.mailbox_path(u, f, "index")
            assert os.path.join(idx, "dovecot.index.log") in targets, (u, f, idx)
        if {f for f in before[u].folders if f != "INBOX"}:
            assert any(t and t.endswith("/subscriptions") and u.split("@")[0] in t for t in targets), u
    assert man["counts"]["indexes"] == len([t for t in targets if t and not t.endswith("attributes")])
    assert [(it["kind"], it.get("login")) for it in man["items"] if it.get("target") == attrs] == \
        [("keys", owner)]
    assert f"mail_location: {lab.mail_location}" in run(home, "imsdr", "show", "-f", dr, check=0, text=True).stdout

    # an archive of the same instant, the witness reconstruct may ask
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)

    # the file route: message files from a file backup (no control or index file in it),
    # everything else from the disaster backup, then reconstruct
    files = tmp_path / "files"
    lab.stop()
    mail_trees = [t for t in (lab.store, lab.homes) if os.listdir(t)]
    for t in mail_trees:
        os.makedirs(files / t.strip("/").replace("/", "_"))
        subprocess.run(["cp", "-a", f"{t}/.", files / t.strip("/").replace("/", "_")], check=True)
    wipe(lab)                                  # every tree: mail, INDEX=, CONTROL=, homes
    for t in mail_trees:
        subprocess.run(["cp", "-a", f"{files / t.strip('/').replace('/', '_')}/.", t], check=True)
        for root, _dirs, names in os.walk(t):
            for n in names:
                if n.startswith(("dovecot", "subscriptions")):
                    os.unlink(os.path.join(root, n))
    run(home, "imsdr", "restore", "--all", "--force", "-f", dr, check=0)
    res = run(home, "reconstruct", "-r", "/", text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    lab.start()
    for u in lab.logins:
        assert lab.client_state(u) == before[u], u
    assert open(attrs).read().endswith("0123\n")
    # the proof the runbook asks for before clients are let in: the store is the archive
    run(home, "imsverify", "-f", full, "--against-store", "--exact", check=0)

    # a lost uidlist where the layout keeps it: reconstruct gives the UIDs back
    u = lab.logins[0]
    lost = os.path.join(lab.mailbox_path(u, "Work", "control"), "dovecot-uidlist")
    guids = mailbox_guids(lab, u)
    lab.stop()
    os.unlink(lost)
    res = run(home, "reconstruct", "-r", "-a", full, f"/primary/{u}", text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert os.path.exists(lost)
    assert "dovecot-uidlist is missing" in res.stdout + res.stderr
    lab.start()
    assert lab.client_state(u) == before[u]
    # and the folder's mailbox GUID, which the archive holds: dsync knows the folder by it
    # (reconstruct gave it a new one, and --exact passed)
    assert mailbox_guids(lab, u) == guids
    run(home, "imsverify", "-f", full, "--against-store", "--exact", check=0)
    # mail Dovecot delivers after the restore is no longer the archive's store
    lab.deliver([u], message("after the restore"))
    p = run(home, "imsverify", "-v", "-f", full, "--against-store", "--exact", text=True)
    assert p.returncode == 19 and re.search(
        rf"exact: /primary/{re.escape(u)}/INBOX: message \d+ is there after the restore but not "
        rf"in the archive", p.stderr), p.stderr
    run(home, "imsverify", "-f", full, "--against-store", check=0)       # a change since, plainly



def test_drfiles_lost_control_tree_keeps_keywords_the_archive_and_index_know(tmp_path):
    """Only the CONTROL= tree is lost (mail and INDEX= intact).  Message 1 had $Archived in
    the archive and got $Later afterwards, message 2 has $Other: reconstruct names every
    letter from the witnesses (the archive, Dovecot's index log), exits 0, and IMAP shows
    the keywords the client saw, none as unknown-N."""
    import shutil

    from tests.dovecot_lab import dovecot_lab, message
    from tests.helpers import make_home
    home = tmp_path / "ims"
    with dovecot_lab("idxctl") as lab:
        make_home(home, "maildir", **{"store.owner": lab.mail_user, "dovecot.config": lab.conf,
                                      "store.mail_location": "doveconf"})
        for i in range(3):
            lab.deliver(["alice"], message(f"m{i}"))
        with lab.imap("alice") as c:
            c.select("INBOX")
            c.uid_store([2], "+FLAGS", ["$Other"])
            c.uid_store([1], "+FLAGS", ["\\Seen", "$Archived"])
            c.unselect()
        full = tmp_path / "full.ims"
        run(home, "imsbackup", "-f", full, "/", check=0)
        with lab.imap("alice") as c:
            c.select("INBOX")
            c.uid_store([1], "+FLAGS", ["$Later"])
            c.unselect()
        want = {m.uid: m.flags for m in lab.client_state("alice").folders["INBOX"].messages}
        assert want[1] == {"\\Seen", "$Archived", "$Later"} and want[2] == {"$Other"}
        lab.stop()
        shutil.rmtree(lab.ctl)
        os.mkdir(lab.ctl)
        os.chown(lab.ctl, lab.uid, lab.gid)
        res = run(home, "reconstruct", "-r", "-a", full, "/", text=True)
        assert "cannot be named" not in res.stderr, res.stderr
        assert res.returncode == 0, res.stderr
        lab.start()
        got = {m.uid: m.flags for m in lab.client_state("alice").folders["INBOX"].messages}
        assert got == want


def test_drfiles_lost_control_tree_keeps_keywords_of_a_rotated_index_log(tmp_path):
    """As above, after Dovecot rotated its index log (a commit with a log past
    mail_index_log_rotate_max_size, as a busy folder's log grows; doveadm force-resync
    rotates too): $Archived was first used in a log since dropped, $Other is named only
    in dovecot.index.log.2, $Later and $Third in dovecot.index.log, and no archive has
    $Other or $Third.  reconstruct read only the logs' first-use order (which lacked
    $Archived) and never saw the index's UIDVALIDITY (its dump's dotted form), so every
    letter became unknown-N (exit 1).  The index names them all: exit 0, IMAP unchanged."""
    import shutil

    from tests.dovecot_lab import dovecot_lab, message
    from tests.helpers import make_home
    home = tmp_path / "ims"
    with dovecot_lab("idxctl") as lab:
        make_home(home, "maildir", **{"store.owner": lab.mail_user, "dovecot.config": lab.conf,
                                      "store.mail_location": "doveconf"})
        for i in range(3):
            lab.deliver(["alice"], message(f"m{i}"))
        with lab.imap("alice") as c:
            c.select("INBOX")
            c.uid_store([1], "+FLAGS", ["\\Seen", "$Archived"])
            c.unselect()
        full = tmp_path / "full.ims"
        run(home, "imsbackup", "-f", full, "/", check=0)
        lab.doveadm("flags add", "$Other", "mailbox", "INBOX", "uid", "2", user="alice",
                    options=["mail_index_log_rotate_min_size=1", "mail_index_log_rotate_max_size=1"])
        with lab.imap("alice") as c:
            c.select("INBOX")
            c.uid_store([1], "+FLAGS", ["$Later"])
            c.uid_store([3], "+FLAGS", ["$Third"])
            c.unselect()
        want = {m.uid: m.flags for m in lab.client_state("alice").folders["INBOX"].messages}
        assert want == {1: {"\\Seen", "$Archived", "$Later"}, 2: {"$Other"}, 3: {"$Third"}}
        lab.stop()
        idx = os.path.join(lab.idx, "alice", ".INBOX")

        def named(log):
            out = subprocess.run(["doveadm", "dump", os.path.join(idx, log)], capture_output=True, text=True).stdout
            return {x.split("name=")[1].split(",")[0] for x in out.splitlines() if "name=" in x}
        assert named("dovecot.index.log.2") == {"$Other"} and named("dovecot.index.log") == {"$Later", "$Third"}
        shutil.rmtree(lab.ctl)
        os.mkdir(lab.ctl)
        os.chown(lab.ctl, lab.uid, lab.gid)
        res = run(home, "reconstruct", "-r", "-a", full, "/", text=True)
        assert "cannot be named" not in res.stderr and res.returncode == 0, res.stderr
        assert "a=$Archived, b=$Other, c=$Later, d=$Third" in res.stderr, res.stderr
        lab.start()
        got = {m.uid: m.flags for m in lab.client_state("alice").folders["INBOX"].messages}
        assert got == want
