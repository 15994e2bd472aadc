"""POP3 clients must not download every message again after a restore.

A POP3 client knows which messages it has fetched by their UIDLs.  Dovecot gives a
Maildir message's UIDL from its ``dovecot-uidlist`` record's ``P`` field when there is
one (a UIDL migrated from another server, kept by migrations and dsync), else by
``pop3_uidl_format``: the default ``%08Xu%08Xv`` (UID and UIDVALIDITY), or ``%f`` (the
file's base name), among others.  Each test logs in over POP3 to a real Dovecot
(tests/dovecot_lab.py), backs up, wipes every mail tree, restores, and logs in again:
the UIDL list must be the one the client saw before.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import time

import pytest

from tests.dovecot_lab import MAIL_USER, dovecot_lab, message
from tests.helpers import run
from tests.test_dovecot_layouts import wipe


def _configure(lab, home) -> None:
    run(home, "msconfig", "set", "store.driver", "maildir", check=0)
    run(home, "msconfig", "set", "store.owner", MAIL_USER, check=0)
    run(home, "msconfig", "set", "dovecot.config", lab.conf, check=0)
    run(home, "msconfig", "set", "store.mail_location", "doveconf", check=0)


def _fill(lab) -> None:
    lab.deliver(lab.logins, message("to both", size=2000))
    for u in lab.logins:
        for i in range(3):
            lab.deliver([u], message(f"m{i} {u}"))
    with lab.imap("alice") as c:           # a COPY: the second file is a hard link
        c.select("INBOX")
        c.create("Keep")
        c.uid_copy([2], "Keep")


def _migrated(path, extra: dict) -> list[str]:
    """The dovecot-uidlist at ``path`` with ``extra`` fields (UID -> "P... O...") put in
    its records, as a migration from another POP3 server leaves them; its lines."""
    with open(path) as f:
        lines = f.read().splitlines()
    lines = [lines[0]] + [re.sub(r"^(\d+) ", lambda m: f"{m.group(1)} {extra.get(int(m.group(1)), '')} ", ln)
                          for ln in lines[1:]]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def _round_trip(lab, tmp_path, restore_args=()) -> None:
    home = tmp_path / "ims"
    _configure(lab, home)
    archive = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", archive, "/")
    wipe(lab)
    run(home, "imsrestore", "-f", archive, *restore_args)


def test_pop3_uidls_by_file_name_survive_a_restore(tmp_path):
    """pop3_uidl_format = %f: the UIDL is the Maildir file's base name, so a restore
    must give every message back its own base name."""
    with dovecot_lab("plain", logins=["alice", "bob"], pop3_uidl_format="%f") as lab:
        _fill(lab)
        before = {u: lab.pop3_uidls(u) for u in lab.logins}
        imap_before = {u: lab.client_state(u) for u in lab.logins}
        assert all(len(v) == 4 for v in before.values())
        _round_trip(lab, tmp_path)
        assert {u: lab.pop3_uidls(u) for u in lab.logins} == before
        assert {u: lab.client_state(u) for u in lab.logins} == imap_before   # X-GUID too


def test_migrated_pop3_uidls_and_order_survive_a_restore(tmp_path):
    """UIDLs kept in dovecot-uidlist's P field (a migration from another POP3 server)
    and the POP3 order of its O field are given back as they were."""
    with dovecot_lab("plain", logins=["alice", "bob"], pop3_uidl_format="%08Xu%08Xv") as lab:
        _fill(lab)
        lab.stop(wait="sessions")
        path = os.path.join(lab.store, "alice/Maildir/dovecot-uidlist")
        # UIDs 1 and 3 carry migrated UIDLs (one with a ':', as real ones may); UID 2
        # an empty P (Dovecot: "the base file name"); the POP3 order puts 3 before 1
        _migrated(path, {1: "Pmigr:1-a O2", 2: "P", 3: "PUID-3@old.example O1"})
        for p in glob.glob(os.path.join(lab.store, "alice/Maildir/dovecot.index*")):
            os.unlink(p)
        lab.start()
        before = {u: lab.pop3_uidls(u) for u in lab.logins}
        uidls = [uidl for _, uidl in before["alice"]]
        assert uidls[:2] == ["UID-3@old.example", "migr:1-a"] and "." in uidls[2], before
        _round_trip(lab, tmp_path)
        assert {u: lab.pop3_uidls(u) for u in lab.logins} == before


def test_reconstruct_gives_back_pop3_uidls_order_and_file_names_from_an_archive(tmp_path):
    """A folder whose dovecot-uidlist (and index) is lost, its message files back from a
    file backup, one of them under another name: reconstruct -a ARCHIVE gives back the
    UIDs, the migrated UIDLs (P) and POP3 order (O) and, where it is free, the archived
    base name (pop3_uidl_format = %f), so a POP3 client sees the UIDL list it saw.
    (Before, the rebuilt uidlist had no P or O field and the renamed file kept its
    name: 3 of alice's 4 UIDLs changed and the order was the UID order.)"""
    with dovecot_lab("plain", logins=["alice", "bob"], pop3_uidl_format="%f") as lab:
        _fill(lab)
        lab.stop(wait="sessions")
        inbox = os.path.join(lab.store, "alice/Maildir")
        path = os.path.join(inbox, "dovecot-uidlist")
        lines = _migrated(path, {1: "Pmigr:1-a O2", 3: "PUID-3@old.example O1"})
        for p in glob.glob(os.path.join(inbox, "dovecot.index*")):
            os.unlink(p)
        lab.start()
        before = lab.pop3_uidls("alice")
        imap_before = lab.client_state("alice")
        assert [u for _, u in before][:2] == ["UID-3@old.example", "migr:1-a"], before
        home = tmp_path / "ims"
        _configure(lab, home)
        archive = tmp_path / "full.ims"
        run(home, "imsbackup", "-f", archive, "/")
        lab.stop()
        # the uidlist and index are lost; UID 4's file came back under another name
        for p in [path] + glob.glob(os.path.join(inbox, "dovecot.index*")):
            os.unlink(p)
        uid4 = [ln.split(":", 1)[1] for ln in lines[1:] if ln.startswith("4 ")][0]
        old = glob.glob(os.path.join(inbox, "*", uid4 + ":*")) + glob.glob(os.path.join(inbox, "new", uid4))
        assert len(old) == 1, (uid4, old)
        renamed = "1700000000.M1P1.filebackup" + old[0].split("/")[-1][uid4.index(","):]
        os.rename(old[0], os.path.join(os.path.dirname(old[0]), renamed))
        p = run(home, "reconstruct", "-r", "-a", archive, "/primary/alice", check=0, text=True)
        assert "POP3" in p.stdout + p.stderr and "file name" in p.stdout + p.stderr, (p.stdout, p.stderr)
        lab.start()
        assert lab.pop3_uidls("alice") == before
        assert lab.client_state("alice") == imap_before


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
def test_pop3_uidls_and_order_on_dbox_survive_a_restore(fmt, tmp_path):
    """sdbox/mdbox keep a migrated UIDL and POP3 order in Dovecot's own records (dbox
    metadata, index); imsbackup and imsrestore carry a dbox login through dsync and a
    Maildir: the UIDL list a POP3 client sees after a backup, a wiped store and a restore
    is the one it saw, migrated UIDLs (put in by dsync from a Maildir whose uidlist
    has P and O fields), their order, and the default %08Xu%08Xv ones."""
    with dovecot_lab(fmt, logins=["alice", "bob"], pop3_uidl_format="%08Xu%08Xv") as lab:
        _fill(lab)
        # alice's mail migrated from another POP3 server: a Maildir copy whose uidlist
        # carries the old server's UIDLs and order, synced back into an empty dbox
        mig = os.path.join(lab.dir, "migrated")
        os.makedirs(mig)
        lab.fix_owner(mig)
        lab.doveadm("backup", f"maildir:{mig}/Maildir", user="alice")
        path = os.path.join(mig, "Maildir", "dovecot-uidlist")
        _migrated(path, {1: "Pmigr:1-a O2", 3: "PUID-3@old.example O1"})
        for p in glob.glob(os.path.join(mig, "Maildir", "dovecot.index*")):
            os.unlink(p)
        shutil.rmtree(os.path.join(lab.store, "alice"))
        lab.doveadm("backup", "-R", f"maildir:{mig}/Maildir", user="alice")
        before = {u: lab.pop3_uidls(u) for u in lab.logins}
        uidls = [uidl for _, uidl in before["alice"]]
        assert uidls[:2] == ["UID-3@old.example", "migr:1-a"] and len(uidls) == 4, before
        imap_before = {u: lab.client_state(u) for u in lab.logins}
        _round_trip(lab, tmp_path)
        assert {u: lab.pop3_uidls(u) for u in lab.logins} == before
        assert {u: lab.client_state(u) for u in lab.logins} == imap_before


def _uidlist_pop3(lab, login) -> dict:
    """{UID: the P and O fields} of the login's INBOX dovecot-uidlist records (a P
    without a value, which Dovecot reads as the file's base name, written with it)."""
    path = os.path.join(lab.mailbox_path(login, "INBOX", "control"), "dovecot-uidlist")
    with open(path) as f:
        lines = f.read().splitlines()[1:]
    out = {}
    for ln in lines:
        uid, _, rest = ln.partition(" ")
        fields, _, base = rest.partition(":")
        out[int(uid)] = " ".join(f if f != "P" else f"P{base}" for f in fields.split() if f[:1] in ("P", "O"))
    return out


@pytest.mark.parametrize("how", ["base", "date"])
def test_pop3_uidls_saved_after_the_full_come_back_with_the_chain(how, tmp_path):
    """pop3_save_uidl = yes: POP3 clients log in after the full backup and Dovecot saves
    the UIDL it gave each message (P fields in dovecot-uidlist); then the administrator
    changes pop3_uidl_format, and an incremental (--base, or -d: the login moved the files
    from new/ to cur/, so -d carries them again) follows.  The chain restored into the
    wiped store, in one command and archive by archive, must give each message the UIDL
    the clients saw (else every POP3 client downloads all its mail again): the
    incremental carries the UIDLs of the messages it lists, as their flags.  (Found by
    an adversarial check: the UIDLs of the messages the full carried were lost.)"""
    with dovecot_lab("plain", logins=["alice", "bob"], pop3_uidl_format="%08Xu%08Xv",
                     extra="pop3_save_uidl = yes") as lab:
        home = tmp_path / "ims"
        _configure(lab, home)
        _fill(lab)
        time.sleep(1.1)                          # -d has whole seconds
        started = time.time()
        full = tmp_path / "full.ims"
        run(home, "imsbackup", "-f", full, "/", check=0)
        time.sleep(1.1)
        seen = {u: lab.pop3_uidls(u) for u in lab.logins}      # Dovecot saves them now
        lab.pop3_uidl_format = "%g"
        lab.restart()
        want = {u: lab.pop3_uidls(u) for u in lab.logins}
        assert want == seen                      # the saved UIDLs, not the new format's
        fields = {u: _uidlist_pop3(lab, u) for u in lab.logins}
        assert all(v.startswith("P") for u in lab.logins for v in fields[u].values()), fields
        lab.deliver(["alice"], message("after the change"))     # a %g UIDL, never saved
        want = {u: lab.pop3_uidls(u) for u in lab.logins}
        fields = {u: _uidlist_pop3(lab, u) for u in lab.logins}
        imap = {u: lab.client_state(u) for u in lab.logins}
        incr = tmp_path / "incr.ims"
        since = time.strftime("%Y%m%d:%H%M%S", time.localtime(started))
        args = ["--base", f"{full}.state"] if how == "base" else ["-d", since]
        run(home, "imsbackup", "-f", incr, *args, "/", check=0)
        for one_command in (True, False):
            wipe(lab)
            if one_command:
                run(home, "imsrestore", "-f", full, "-f", incr, check=0)
            else:
                run(home, "imsrestore", "-H", "-f", full, check=0)
                run(home, "imsrestore", "-f", incr, check=0)
            assert {u: _uidlist_pop3(lab, u) for u in lab.logins} == fields, one_command
            assert {u: lab.pop3_uidls(u) for u in lab.logins} == want, one_command
            assert {u: lab.client_state(u) for u in lab.logins} == imap, one_command
        # alice's uidlist and index lost after the restore, rebuilt by reconstruct from the
        # chain: the UIDLs the incremental lists without carrying come from it too
        # (IMSASM.state_pop3; before, reconstruct read only the messages' own records)
        lab.stop()
        inbox = os.path.join(lab.store, "alice/Maildir")
        for p in [os.path.join(inbox, "dovecot-uidlist")] + glob.glob(os.path.join(inbox, "dovecot.index*")):
            os.unlink(p)
        run(home, "reconstruct", "-r", "-a", full, "-a", incr, "/primary/alice", check=0)
        lab.start()
        assert _uidlist_pop3(lab, "alice") == fields["alice"]
        assert lab.pop3_uidls("alice") == want["alice"]
        # bob's mailbox moves on (a message deleted by mistake, new mail) and the chain is
        # restored into it in one command (a classic merge): the message comes back under
        # a new UID with the UIDL its POP3 client saw, the chain end's (not the full's none)
        with lab.imap("bob") as c:
            c.select("INBOX")
            gone = c.uids()[0]
            c.uid_expunge([gone])
            c.unselect()
        lab.deliver(["bob"], message("later"))
        run(home, "imsrestore", "-f", full, "-f", incr, check=0)
        back = _uidlist_pop3(lab, "bob")
        # (the expunged UID's line may stay in dovecot-uidlist until Dovecot drops it)
        assert fields["bob"][gone] in [v for uid, v in back.items() if uid > max(fields["bob"])], \
            (fields["bob"], back)
        uidls = [uidl for _, uidl in lab.pop3_uidls("bob")]
        assert set(uidl for _, uidl in want["bob"]) <= set(uidls), (want["bob"], uidls)


def test_a_message_expunged_since_the_backup_comes_back_with_its_pop3_uidl(tmp_path):
    """pop3_uidl_format = %f: a message expunged since the backup (a POP3 client's
    DELE, an IMAP expunge) and restored into the live folder comes back under its old
    base name, so its UIDL is the one the POP3 client knows and nothing is downloaded
    again.  Dovecot keeps the expunged message's uidlist line until it next rewrites
    the list; that line once counted as the name being taken, and every such message
    came back under a new name (a new UIDL; in another folder a new X-GUID, which is
    the base name).  Several rounds, each expunging other
    messages (the last UID, a middle one, a COPY's hard link, all of a folder), with
    an IMAP session holding the folder open through the restore: no Dovecot error."""
    with dovecot_lab("plain", logins=["alice", "bob"], pop3_uidl_format="%f") as lab:
        _fill(lab)
        for i in range(4):
            lab.deliver(["alice"], message(f"more {i}", size=300 * i))
        with lab.imap("alice") as c:
            c.append("Keep", message("kept"), [r"\Seen", "$Label1"], "05-Mar-2024 12:00:00 +0100")
        home = tmp_path / "ims"
        _configure(lab, home)
        picks = [("INBOX", lambda uids: uids[-1:]), ("INBOX", lambda uids: uids[1:3]),
                 ("Keep", lambda uids: uids[:1]), ("Keep", lambda uids: uids)]
        for rnd, (box, pick) in enumerate(picks):
            archive = tmp_path / f"full{rnd}.ims"
            run(home, "imsbackup", "-f", archive, "/", check=0)
            before = sorted(u for _, u in lab.pop3_uidls("alice"))
            mail = {(f, m.sha256, m.guid) for f, m in lab.client_state("alice").all_messages()}
            with lab.imap("alice") as watcher, lab.imap("alice") as c:
                watcher.select(box)
                c.select(box)
                c.uid_expunge(pick(c.uids()))
                c.unselect()
                assert box != "INBOX" or sorted(u for _, u in lab.pop3_uidls("alice")) != before
                p = run(home, "imsrestore", "-f", archive, "/primary/alice", check=None, text=True)
                assert p.returncode == 0, p.stderr
                watcher.command("NOOP")
                assert len(watcher.fetch_meta()) == len(lab.client_state("alice")[box].messages)
            assert sorted(u for _, u in lab.pop3_uidls("alice")) == before, (rnd, box)
            assert {(f, m.sha256, m.guid) for f, m in lab.client_state("alice").all_messages()} == mail
        assert not re.search(r"Error:|Panic:|Fatal:|Warning:", lab.log()), lab.log()
