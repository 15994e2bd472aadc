"""Dovecot access control lists (acl plugin, vfile) across backups and restores.

A folder its owner shared (IMAP SETACL, ``doveadm acl set``) keeps its ``dovecot-acl``
file in its mail directory (CONTROL= or not).  Before the archive carried it
(IMSASM.acl), a restore into an emptied store gave every folder back to its owner alone,
and the users it was shared with lost it from their shared namespace.  Here, against a
real Dovecot with the acl plugin and a shared namespace (tests/dovecot_lab.py
ACL_LAYOUTS): GETACL, MYRIGHTS, the other users' LIST and their reading of the shared
folder are what they were after a restore into an emptied store (the shared-mailboxes
dictionary lost with it, rebuilt by the command the restore names); a chain whose only
change is an ACL ends with the last backup's ACL (by ``--base`` and by ``-d``); a
restore beside (-n), under another user (-m) or merged into a live folder leaves the
live ACL alone; an ACL file the format cannot hold is named and the folder's mail
archived without it.
"""
from __future__ import annotations

import os
import re
import shlex
import sqlite3
import stat
import subprocess
import threading
import time

import pytest

from asm.archive import ArchiveReader, spec
from asm.store.aclcmds import entries
from tests.archive_fuzz import emit, models
from tests.dovecot_lab import lab_fixture, message
from tests.helpers import popen, run, sh_commands
from tests.test_dovecot_layouts import configure, wipe

lab = lab_fixture(params=["acl", "aclctl"], scope="function")
acl_lab = lab_fixture("acl", scope="function")

OWNER = "alice"
FOLDERS = ("INBOX", "Work", "Work/Sub", "Private")


def fill(lab) -> None:
    """alice's folders with mail, three of them shared: bob and anyone (negative rights
    too) by IMAP SETACL, carol by doveadm acl set."""
    lab.deliver([OWNER], message("inbox mail"))
    with lab.imap(OWNER) as c:
        for f in FOLDERS[1:]:
            c.create(f)
            c.append(f, message(f"mail in {f}"), [r"\Seen"])
        c.command("SETACL", "Work", "bob", "lrs")
        c.command("SETACL", "Work", "anyone", "l")
        c.command("SETACL", "Work", "-carol", "w")
        c.command("SETACL", "INBOX", "carol", "lr")
    lab.doveadm("acl set", "Work/Sub", "user=carol", "lookup", "read", "write", "insert", user=OWNER)


def acls(lab) -> dict:
    """{folder: {identifier: rights}} as alice's IMAP GETACL answers."""
    out = {}
    with lab.imap(OWNER) as c:
        for f in FOLDERS:
            typ, data = c.conn.getacl(f)
            assert typ == "OK", (f, data)
            words = shlex.split(b" ".join(d for d in data if isinstance(d, bytes)).decode())
            out[f] = {k: v for k, v in zip(words[1::2], words[2::2]) if k != OWNER}   # (the owner's own)
    return out


def shared_view(lab, login) -> dict:
    """What ``login`` sees of alice's folders: LIST, MYRIGHTS and the subjects it reads."""
    view = {}
    with lab.imap(login) as c:
        typ, data = c.conn.list('""', "shared/*")
        names = sorted(re.sub(rb'^\(.*?\) "/" ', b"", d).decode().strip('"')
                       for d in data if isinstance(d, bytes))
        view["list"] = names
        for name in names:
            if not (name + "/").startswith(f"shared/{OWNER}/"):
                continue                 # (shared/alice itself is alice's INBOX)
            typ, data = c.conn.myrights(name)
            view[name] = {"rights": data[0].decode().split()[-1] if typ == "OK" else typ}
            typ, _ = c.conn.select(name, readonly=True)
            if typ == "OK":
                typ, data = c.conn.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                view[name]["subjects"] = sorted(d[1].strip().decode() for d in data if isinstance(d, tuple))
                c.conn.close()
    return view


def views(lab) -> dict:
    return {u: shared_view(lab, u) for u in ("bob", "carol")}


def acl_files(lab) -> dict:
    """{path relative to the lab: (mode, uid, gid, text)} of every dovecot-acl file."""
    out = {}
    for top in (lab.store, lab.ctl, lab.idx):
        for root, _dirs, files in os.walk(top):
            if "dovecot-acl" in files:
                p = os.path.join(root, "dovecot-acl")
                st = os.stat(p)
                with open(p) as f:
                    out[os.path.relpath(p, lab.dir)] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, f.read())
    return out


def archived_acls(path) -> dict:
    with open(path, "rb") as f:
        return {m.folder: m.acl for m in ArchiveReader(f).members() if m.kind == "folder"}


def recalc(lab, stderr: str) -> None:
    """Run the command the restore's note names (as the mail user, Dovecot running)."""
    line = next(ln for ln in stderr.splitlines() if "doveadm acl recalc" in ln)
    cmd = line.split("run ", 1)[1].strip()
    m = re.fullmatch(r"doveadm acl recalc -u (\S+)", cmd)
    assert m, line
    lab.doveadm("acl recalc", user=shlex.split(m.group(1))[0])


def test_sharing_comes_back_with_a_restore_into_an_emptied_store(lab, tmp_path):
    fill(lab)
    before, seen_before, files = acls(lab), views(lab), acl_files(lab)
    assert before["Work"] == {"bob": "lrs", "anyone": "l", "-carol": "w"} and before["Private"] == {}
    assert before["Work/Sub"] == {"carol": "ilrw"} and before["INBOX"] == {"carol": "lr"}
    assert seen_before["bob"]["list"] == ["shared/alice", "shared/alice/Work"]
    assert seen_before["bob"]["shared/alice/Work"] == {"rights": "lrs", "subjects": ["Subject: mail in Work"]}
    assert seen_before["carol"]["shared/alice"] == {"rights": "lr", "subjects": ["Subject: inbox mail"]}
    assert seen_before["carol"]["shared/alice/Work/Sub"]["rights"] == "lrwi"
    assert seen_before["carol"]["shared/alice/Work"] == {"rights": "l"}          # -carol w; anyone l
    # Dovecot keeps each in the folder's mail directory (not CONTROL=), 0600, the mail user's
    assert len(files) == 3 and all(k.startswith("mail/") for k in files), files
    assert {v[:3] for v in files.values()} == {(0o600, lab.uid, lab.gid)}
    home = tmp_path / "ims"
    configure(lab, home)
    archive = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", archive, f"/primary/user/{OWNER}", check=0)
    assert archived_acls(archive) == {"INBOX": "user=carol lr\n", "Work": files[next(
        k for k in files if k.endswith(".Work/dovecot-acl"))][3], "Work/Sub": "user=carol ilrw\n",
        "Private": ""}

    wipe(lab)                               # mail, indexes, control files, the shared dict
    res = run(home, "imsrestore", "-f", archive, check=0, text=True)
    assert acl_files(lab) == files           # same bytes, mode and owner
    notes = [ln for ln in res.stderr.splitlines() if "acl recalc" in ln]
    assert notes == [f"imsrestore: note: this restore gave 3 folders the access control list archived "
                     f"with it (1 user); Dovecot finds the folders shared with a user through its "
                     f"acl_shared_dict, which a lost store may have taken with it and no restore writes: "
                     f"with Dovecot running, run doveadm acl recalc -u {OWNER}"], res.stderr
    lab.restart()
    # without its dictionary Dovecot lists nothing shared (until something opens alice's
    # mail list and rebuilds it): the note's command is needed
    assert views(lab)["bob"]["list"] == []
    recalc(lab, res.stderr)
    assert views(lab) == seen_before
    assert acls(lab) == before


def test_a_chain_whose_only_change_is_an_acl_ends_with_the_last_acl(acl_lab, tmp_path):
    lab = acl_lab
    fill(lab)
    time.sleep(2.1)         # settled: the full's state records every folder's fingerprint
    home = tmp_path / "ims"
    configure(lab, home)
    full, state = tmp_path / "full.ims", tmp_path / "full.state"
    run(home, "imsbackup", "-f", full, "--state-out", state, f"/primary/user/{OWNER}", check=0)
    since = time.strftime("%Y%m%d:%H%M%S", time.localtime(time.time() + 1))
    first = acls(lab)
    # only ACLs change: one widened, one removed whole, one added, one folder untouched
    lab.doveadm("acl set", "Work", "user=bob", "lookup", "read", "write-seen", "write", user=OWNER)
    lab.doveadm("acl delete", "Work/Sub", "user=carol", user=OWNER)
    lab.doveadm("acl set", "Private", "anyone", "lookup", "read", user=OWNER)
    after = acls(lab)
    assert after["Work"]["bob"] == "lrws" and after["Work/Sub"] == {} and after["Private"] == {"anyone": "lr"}
    incr, dincr = tmp_path / "incr.ims", tmp_path / "d.ims"
    res = run(home, "imsbackup", "-v", "-f", incr, "--base", state, f"/primary/user/{OWNER}", check=0, text=True)
    # INBOX alone is unchanged since the base: the fingerprint skips it, and not the others
    assert [ln for ln in res.stderr.splitlines() if ln.endswith("(unchanged since the base)")] == \
        [f"imsbackup: /primary/{OWNER}/INBOX: 0 messages, 0 bytes (unchanged since the base)"], res.stderr
    res = run(home, "imsbackup", "-v", "-f", dincr, "-d", since, f"/primary/user/{OWNER}", check=0, text=True)
    assert " 0 messages, 0 links," in res.stderr, res.stderr      # no mail changed: only ACLs
    seen_after = views(lab)
    for arch in (incr, dincr):
        got = archived_acls(arch)
        assert got["Work"].count("user=bob lrws") == 1 and got["Work/Sub"] == "" and \
            got["Private"] == "anyone lr\n", (arch, got)
    for chain, split in (([full, incr], False), ([full, incr], True), ([full, dincr], False)):
        wipe(lab)
        if split:
            for a in chain:
                res = run(home, "imsrestore", "-f", a, check=0, text=True)
        else:
            res = run(home, "imsrestore", *[x for a in chain for x in ("-f", a)], check=0, text=True)
        recalc(lab, res.stderr)
        assert views(lab) == seen_after, (chain, split)
        assert acls(lab) == after, (chain, split)
    assert first != after


def test_a_restore_beside_under_another_user_or_merged_keeps_the_live_acl(acl_lab, tmp_path):
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    archive = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", archive, f"/primary/user/{OWNER}", check=0)
    with lab.imap(OWNER) as c:
        c.command("SETACL", "Work", "bob", "l")          # the owner changed it since
        c.command("DELETEACL", "Work", "anyone")
        c.append("Work", message("since the backup"))
    live = acls(lab)
    res = run(home, "imsrestore", "-f", archive, f"/primary/{OWNER}/Work", check=0, text=True)
    assert acls(lab) == live                 # merged into: the owner's ACL stays
    assert "acl recalc" not in res.stderr
    run(home, "imsrestore", "-n", "-f", archive, f"/primary/{OWNER}/Work", check=0)
    with lab.imap(OWNER) as c:
        beside = [f for f in c.list() if f.startswith("Work-")]
        assert beside
        for f in beside:
            typ, data = c.conn.getacl(f)
            assert typ == "OK" and data[0].decode().split()[1:] == [OWNER, "lrwstipekxacd"], (f, data)
            # (the owner's rights only: no ACL of its own)
    assert acls(lab) == live
    mapfile = tmp_path / "map"
    mapfile.write_text(f"{OWNER}=carol\n")
    run(home, "imsrestore", "-m", mapfile, "-f", archive, check=0)
    assert not [k for k in acl_files(lab) if "/carol/" in k]      # sharing is alice's, not carol's


def test_an_acl_file_the_archive_cannot_hold_is_named_and_the_mail_backed_up(acl_lab, tmp_path):
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    path = os.path.join(lab.store, OWNER, "Maildir", ".Private", "dovecot-acl")
    with open(path, "wb") as f:
        f.write(b"user=bob lr\nnot an acl line \xff\n")
    lab.fix_owner(path)
    archive = tmp_path / "full.ims"
    res = run(home, "imsbackup", "-f", archive, f"/primary/user/{OWNER}", check=1, text=True)
    assert "/primary/alice/Private: its access control list is not archived" in res.stderr, res.stderr
    got = archived_acls(archive)
    assert got["Private"] is None and got["Work"].count("user=bob lrs") == 1
    with open(archive, "rb") as f:
        assert [m.uid for m in ArchiveReader(f).members() if m.kind == "message" and m.folder == "Private"] == [1]
    # one that cannot be read at all (here a directory): named the same way, mail archived
    os.unlink(path)
    os.mkdir(path)
    unread = tmp_path / "unread.ims"
    res = run(home, "imsbackup", "-f", unread, f"/primary/user/{OWNER}", check=1, text=True)
    assert "/primary/alice/Private: its access control list (dovecot-acl) could not be read" in res.stderr, \
        res.stderr
    got = archived_acls(unread)
    assert got["Private"] is None and got["Work"].count("user=bob lrs") == 1
    with open(unread, "rb") as f:
        assert [m.uid for m in ArchiveReader(f).members() if m.kind == "message" and m.folder == "Private"] == [1]
    os.rmdir(path)
    wipe(lab)
    # restored, the folder is named as its backup named it (its ACL is not as the store
    # had it): exit 1, as for any mailbox the archive's trailer lists
    res = run(home, "imsrestore", "-f", archive, check=1, text=True)
    assert "/primary/alice/Private: the backup that made this archive could not read it" in res.stderr, \
        res.stderr
    assert not os.path.exists(path)
    # a hostile ACL in an archive (every digest forged right): that folder is refused
    # as damaged in one line, exit 4, nothing of it written; the rest is restored
    ms = models(archive.read_bytes())
    victim = next(m for m in ms if m.name.endswith(b"/Work/"))
    victim.set(spec.ACL, b"anyone lrwstipekxa\nuser=bob lr\x1b]0;pwned\x07\n")
    forged = tmp_path / "forged.ims"
    forged.write_bytes(emit(ms))
    wipe(lab)
    res = run(home, "imsrestore", "-f", forged, check=4, text=True)
    bad = [ln for ln in res.stderr.splitlines() if "corrupt member" in ln and "IMSASM.acl" in ln]
    assert len(bad) == 1 and "alice/Work/'" in bad[0] and "\x1b" not in res.stderr, res.stderr
    assert not os.path.isdir(os.path.join(lab.store, OWNER, "Maildir", ".Work", "cur"))
    assert sorted(acl_files(lab)) == [f"mail/{OWNER}/Maildir/.Work.Sub/dovecot-acl",
                                      f"mail/{OWNER}/Maildir/dovecot-acl"]


def test_an_acl_a_chain_link_gives_a_served_folder_is_seen_at_once(acl_lab, tmp_path):
    """The full restored and served (Dovecot lists alice's folders with an ACL in her
    dovecot-acl-list), then an incremental whose only change is an ACL on Private: bob
    sees the folder shared with him at once.  (The restore removes that list, which no
    longer says what is on disk, and Dovecot makes it again; kept, it hid Private from
    bob until something rebuilt it.)"""
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    full, state, incr = tmp_path / "full.ims", tmp_path / "full.state", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", state, f"/primary/user/{OWNER}", check=0)
    lab.doveadm("acl set", "Private", "user=bob", "lookup", "read", user=OWNER)
    seen = views(lab)
    assert seen["bob"]["shared/alice/Private"] == {"rights": "lr", "subjects": ["Subject: mail in Private"]}
    run(home, "imsbackup", "-f", incr, "--base", state, f"/primary/user/{OWNER}", check=0)
    wipe(lab)
    res = run(home, "imsrestore", "-f", full, check=0, text=True)
    recalc(lab, res.stderr)
    assert "shared/alice/Private" not in views(lab)["bob"]["list"]
    run(home, "imsrestore", "-f", incr, check=0)
    assert views(lab) == seen


TEAM = [f"Team{i}" for i in range(6)]
ARCHIVED = "user=bob lrs\n"
DAVES = 100
CAROL = ("lr", "lrw", "lrs", "ilr")     # (letters as Dovecot writes them: sorted)


def _acl_text(lab, folder: str) -> str:
    with open(os.path.join(lab.store, OWNER, "Maildir", f".{folder}", "dovecot-acl")) as f:
        return f.read()


def _setacl_loop(lab, folder: str, start: threading.Event, stop: threading.Event, oks: list) -> None:
    """SETACL carol on ``folder`` as fast as Dovecot answers, until ``stop``: each OK
    with the rights it set, when it was sent and when its OK came (time.monotonic())."""
    with lab.imap(OWNER) as c:
        start.wait()
        k = 0
        while not stop.is_set():
            rights = CAROL[k % len(CAROL)]
            sent = time.monotonic()
            typ, data = c.conn._simple_command("SETACL", folder, "carol", rights)
            assert typ == "OK", (folder, data)
            oks.append((rights, sent, time.monotonic()))
            k += 1


def test_setacl_racing_restores_is_never_lost_nor_mixed_with_the_restored_acl(acl_lab, tmp_path):
    """IMAP clients change the ACLs of alice's folders in a loop while restores (each the
    next full of the same folders: a chain link, which gives the archived ACL) run.  The
    restore takes Dovecot's dovecot-acl.lock around its read-compare-write, so every
    folder ends each round with the archived ACL, or with it and the client's last
    SETACL (Dovecot applied it after the restore wrote): never the ACL from before the
    restore (a SETACL that read it before the restore wrote and replaced the file
    after: the restored ACL lost), a torn file, or the client's last OK'd change lost
    when Dovecot answered it after the restore ended."""
    lab = acl_lab
    with lab.imap(OWNER) as c:
        for f in TEAM:
            c.create(f)
            c.append(f, message(f"mail in {f}"))
            c.command("SETACL", f, "bob", "lrs")
    home = tmp_path / "ims"
    configure(lab, home)
    rounds = 3
    fulls = []
    for k in range(rounds + 1):
        fulls.append(tmp_path / f"full{k}.ims")
        run(home, "imsbackup", "-f", fulls[-1], f"/primary/user/{OWNER}", check=0)
    assert {f: a for f, a in archived_acls(fulls[-1]).items() if f in TEAM} == {f: ARCHIVED for f in TEAM}
    wipe(lab)
    run(home, "imsrestore", "-f", fulls[0], check=0)
    line = re.compile(r"user=(bob|carol|dave\d\d\d) [a-z]+\n")
    raced = 0
    for k in range(1, rounds + 1):
        for f in TEAM:
            # the live ACL is not the archived one: bob's and many more (a long file
            # Dovecot reads, changes and writes back at each SETACL)
            path = os.path.join(lab.store, OWNER, "Maildir", f".{f}", "dovecot-acl")
            with open(path + ".new", "w") as out:
                out.write("user=bob lrs\n" + "".join(f"user=dave{i:03d} l\n" for i in range(DAVES)))
            lab.fix_owner(path + ".new")
            os.rename(path + ".new", path)
        start, stop = threading.Event(), threading.Event()
        oks = {f: [] for f in TEAM}
        clients = [threading.Thread(target=_setacl_loop, args=(lab, f, start, stop, oks[f])) for f in TEAM]
        for t in clients:
            t.start()
        start.set()
        time.sleep(0.05)
        p = popen(home, "imsrestore", "-f", fulls[k], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        out, err = p.communicate(timeout=120)
        ended = time.monotonic()
        time.sleep(0.3)
        stop.set()
        for t in clients:
            t.join(60)
        assert p.returncode == 0, (k, err)
        assert f"this restore gave {len(TEAM)} folders the access control list archived with it" in err, err
        for f in TEAM:
            text = _acl_text(lab, f)
            lines = text.splitlines(keepends=True)
            assert lines and all(line.fullmatch(ln) for ln in lines), (k, f, text)      # not torn
            got = {k: "".join(sorted(v)) for k, v in (ln.split() for ln in lines)}
            # the restore replaced the ACL from before it: no SETACL put it back
            assert got.get("user=bob") == "lrs", (k, f, text)
            assert set(got) <= {"user=bob", "user=carol"}, (k, f, text)
            last, sent, _ok = oks[f][-1]
            if "user=carol" in got or sent > ended:
                # Dovecot's last OK'd SETACL (the last one sent after the restore ended
                # is always there), never an older one: none lost.  (Its OK may come
                # after the restore ended and its change not be there: Dovecot made it
                # before the restore wrote, and rebuilt its lists before answering.)
                assert got.get("user=carol") == last, (k, f, text, last, sent > ended)
            raced += sum(t0 <= t <= ended for _r, _s, t in oks[f])
    assert raced > rounds * len(TEAM), raced          # the clients did run while restores did


def test_a_restore_waits_for_dovecots_acl_lock_and_names_one_it_cannot_have(acl_lab, tmp_path):
    """``dovecot-acl.lock`` as Dovecot's acl plugin holds it while it updates a folder's
    ACL (the lock file holds the new ACL, renamed onto dovecot-acl when done; no owner
    written in it):

    * held while the restore comes, then put in place: the restore waited for it and
      then wrote the archived ACL (it read the file after Dovecot's change).  Written
      through the lock, the restored ACL was replaced by Dovecot's with no word;
    * held past store.locktimeout: the folder is named (exit 6), its mail restored and
      its ACL left as it is, the lock too; the other folders get theirs."""
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    full, state, incr = tmp_path / "full.ims", tmp_path / "full.state", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", state, f"/primary/user/{OWNER}", check=0)
    lab.doveadm("acl set", "Private", "user=bob", "lookup", "read", user=OWNER)
    lab.doveadm("acl set", "Work/Sub", "user=bob", "lookup", user=OWNER)
    with lab.imap(OWNER) as c:
        c.append("Private", message("private since the full"))
    after = acls(lab)
    run(home, "imsbackup", "-f", incr, "--base", state, f"/primary/user/{OWNER}", check=0)
    private = os.path.join(lab.store, OWNER, "Maildir", ".Private")
    lock, acl_file = os.path.join(private, "dovecot-acl.lock"), os.path.join(private, "dovecot-acl")
    for case in ("replaced", "held"):
        run(home, "msconfig", "set", "store.locktimeout", "1" if case == "held" else "30", check=0)
        wipe(lab)
        run(home, "imsrestore", "-f", full, check=0)
        assert not os.path.exists(acl_file)
        with open(lock, "w") as f:
            f.write("user=carol lr\n")          # a SETACL's new file, from the ACL it read
        lab.fix_owner(lock)
        t0 = time.monotonic()
        p = popen(home, "imsrestore", "-f", incr, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if case == "replaced":
            # the restore waits for the lock (its lock temporary is there), or wrote
            # through it: then Dovecot's update ends, the lock renamed onto the file
            deadline = time.monotonic() + 120
            while not (os.path.exists(acl_file) or p.poll() is not None
                       or [n for n in os.listdir(private) if n.startswith(".temp.") and n.endswith("dovecot-acl.lock")]):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            os.rename(lock, acl_file)
        _out, err = p.communicate(timeout=120)
        assert p.returncode == (6 if case == "held" else 0), (case, err)
        got = acls(lab)
        with lab.imap(OWNER) as c:
            c.conn.select("Private", readonly=True)
            typ, data = c.conn.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            subjects = sorted(d[1].strip().decode() for d in data if isinstance(d, tuple))
        assert subjects == ["Subject: mail in Private", "Subject: private since the full"], (case, subjects)
        assert got["Work/Sub"] == after["Work/Sub"] and got["Work"] == after["Work"], (case, got)
        if case != "held":
            assert got == after and not os.path.exists(lock), (case, got, err)
            with open(acl_file) as f:
                assert f.read() == "user=bob lr\n"
            continue
        assert time.monotonic() - t0 >= 1
        named = [ln for ln in err.splitlines() if "dovecot-acl.lock" in ln]
        assert len(named) == 1 and named[0].startswith(f"imsrestore: /primary/{OWNER}/Private: its mail is restored, ") and \
            "its mail is restored, its access control list is not" in named[0] and \
            named[0].endswith(f"yourself: doveadm acl set -u {OWNER} -- Private user=bob lookup read") and \
            "user=bob lr" in named[0], err
        assert got["Private"] == {} and not os.path.exists(acl_file)
        with open(lock) as f:
            assert f.read() == "user=carol lr\n"             # another's lock: left alone


def test_dovecots_acl_lock_is_stale_as_dovecot_judges_it(tmp_path, monkeypatch):
    """A lock as Dovecot's acl plugin writes it (the new ACL, no owner) is stale only
    when neither it nor dovecot-acl changed for 120 s (file-dotlock.c, stale_timeout;
    mtime or ctime); one naming a process of this host is stale when that is gone."""
    from asm.locks import pid_alive
    from asm.store.maildir import dotlock
    acl, lock = str(tmp_path / "dovecot-acl"), str(tmp_path / "dovecot-acl.lock")
    with open(lock, "w") as f:
        f.write("user=carol lr\n")
    host = os.uname().nodename
    now = time.time()

    def stale_at(t: float) -> bool:
        monkeypatch.setattr(dotlock.time, "time", lambda: now + t)
        try:
            return dotlock.written_lock_is_stale(lock, acl, host)
        finally:
            monkeypatch.undo()

    assert [stale_at(t) for t in (0, 60, 119, 122)] == [False, False, False, True]
    with open(acl, "w") as f:
        f.write("user=bob lr\n")
    os.utime(acl, (now + 60, now + 60))       # the file it protects changed later
    assert [stale_at(t) for t in (122, 179, 182)] == [False, False, True]
    with open(lock, "w") as f:
        f.write(f"{os.getpid()}:{host}")      # ours (an imsrestore's), alive
    assert not stale_at(0) and not stale_at(1000)
    dead = 4194304 + 4321
    assert not pid_alive(dead)
    with open(lock, "w") as f:
        f.write(f"{dead}:{host}")
    assert stale_at(0)


sdbox_lab = lab_fixture("aclsdbox", scope="function")


def test_a_backup_of_a_dbox_store_says_its_acls_are_not_archived(sdbox_lab, tmp_path):
    """sdbox folders' ACLs are not archived (a restore could not give them back through
    doveadm backup): a backup of them says so in one line naming the folders, exit 0
    (the mail is all there), rather than dropping them without a word."""
    lab = sdbox_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    archive = tmp_path / "full.ims"
    res = run(home, "imsbackup", "-f", archive, f"/primary/user/{OWNER}", check=0, text=True)
    notes = [ln for ln in res.stderr.splitlines() if "access control list" in ln]
    assert len(notes) == 1 and notes[0].startswith("imsbackup: 3 folders of 1 user (") and \
        "have a Dovecot access control list (dovecot-acl) that this archive does not hold: the ACLs of " \
        "sdbox/mdbox folders are not archived" in notes[0], res.stderr
    assert all(f"{OWNER}/{f}" in notes[0] for f in ("INBOX", "Work", "Work/Sub")), notes
    assert f"{OWNER}/Private" not in notes[0]
    assert set(archived_acls(archive).values()) == {None}
    with open(archive, "rb") as f:
        assert len([m for m in ArchiveReader(f).members() if m.kind == "message"]) == 4


def test_imsverify_restore_test_compares_each_folders_acl_with_the_archive(acl_lab, tmp_path, monkeypatch, capsys):
    """imsverify --restore-test compares each folder's ACL after the test restore with
    the archived one (IMSASM.acl; by a --base chain, the last link's): intact, one
    archive and the chain pass; a restore that does not give a folder the ACL its
    archive holds (here one whose ACL write is made to give Work another ACL) fails,
    exit 19 as for a message, the folder named."""
    from asm.cli import imsverify
    from asm.store.maildir.store import MaildirStore
    from tests.helpers import in_home
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    full, state, incr = tmp_path / "full.ims", tmp_path / "full.state", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", state, f"/primary/user/{OWNER}", check=0)
    lab.doveadm("acl set", "Private", "user=bob", "lookup", "read", user=OWNER)
    lab.doveadm("acl delete", "Work/Sub", "user=carol", user=OWNER)
    run(home, "imsbackup", "-f", incr, "--base", state, f"/primary/user/{OWNER}", check=0)
    assert archived_acls(incr)["Private"] == "user=bob lr\n" and archived_acls(incr)["Work/Sub"] == ""
    chains = ([full], [full, incr])
    for chain in chains:
        run(home, "imsverify", *[x for a in chain for x in ("-f", a)], "--restore-test", check=0)
    real = MaildirStore.set_acl

    def other_acl(self, user, folder, acl):
        # a restore that gets one folder's ACL wrong
        return real(self, user, folder, "user=bob lrswi\n" if folder in ("Work", "Private") else acl)
    monkeypatch.setattr(MaildirStore, "set_acl", other_acl)
    capsys.readouterr()
    for chain in chains:
        with in_home(home):
            rc = imsverify.main([x for a in chain for x in ("-f", str(a))] + ["--restore-test", "-v"])
        err = capsys.readouterr().err
        assert rc == 19, (chain, err)
        named = sorted(ln for ln in err.splitlines() if "access control list" in ln)
        want = "'user=bob lr'" if len(chain) == 2 else "none"
        assert len(named) == 2 and "/primary/alice/Private: its access control list is 'user=bob lrswi' after " \
            f"the restore, {want} in the archive" in named[0] and "/primary/alice/Work: its access control " \
            "list is 'user=bob lrswi' after the restore, '" in named[1], (chain, err)


def test_the_disaster_recovery_chain_gives_every_acl_back(acl_lab, tmp_path):
    """The runbook's archive route (docs/disaster-recovery.md, 4a): imsdr chain
    --commands prints the imsrestore of the whole chain, which, run into the emptied
    store, gives every folder its last archived ACL and ends naming doveadm acl recalc;
    run, the other users see what was shared with them as before."""
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    backups = tmp_path / "backup"
    backups.mkdir()
    full, state, incr = backups / "full.ims", tmp_path / "full.state", backups / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", state, "/", check=0)
    lab.doveadm("acl set", "Private", "user=bob", "lookup", "read", user=OWNER)
    lab.doveadm("acl delete", "Work/Sub", "user=carol", user=OWNER)
    run(home, "imsbackup", "-f", incr, "--base", state, "/", check=0)
    before, seen, files = acls(lab), views(lab), acl_files(lab)
    wipe(lab)
    script = run(home, "imsdr", "chain", "--commands", backups, check=0, text=True).stdout
    assert script == f"imsrestore -f {full} -f {incr}\n"
    res = run(home, *shlex.split(script), check=0, text=True)     # (the one line sh -e runs)
    # (Dovecot leaves an empty dovecot-acl when the last entry goes: archived as "", no ACL)
    assert acl_files(lab) == {k: v for k, v in files.items() if v[3]}
    recalc(lab, res.stderr)
    assert views(lab) == seen and acls(lab) == before


@pytest.mark.parametrize("chain", [("incr",), ("full", "incr")])
def test_an_acl_a_restore_could_not_write_for_its_lock_is_given_by_the_same_command_run_again(
        acl_lab, tmp_path, chain):
    """The restore of an incremental (alone, or the chain in one command) finds the
    Private folder's ``dovecot-acl.lock`` held past store.locktimeout: exit 6, its mail
    restored, its ACL not.  The lock gone, the same command run again gives the folder
    its archived ACL, byte for byte, exit 0 (before, the journal had the folder as
    restored: the rerun merged, left the ACL as it was, and exited 0).  Given once: a
    third run leaves an ACL the owner set since as it is."""
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    run(home, "msconfig", "set", "store.locktimeout", "1", check=0)
    full, state, incr = tmp_path / "full.ims", tmp_path / "full.state", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", state, f"/primary/user/{OWNER}", check=0)
    lab.doveadm("acl set", "Private", "user=bob", "lookup", "read", user=OWNER)
    with lab.imap(OWNER) as c:
        c.append("Private", message("private since the full"))
    after = acls(lab)
    run(home, "imsbackup", "-f", incr, "--base", state, f"/primary/user/{OWNER}", check=0)
    archived = archived_acls(incr)["Private"]
    assert archived == "user=bob lr\n"
    wipe(lab)
    run(home, "imsrestore", "-f", full, check=0)
    private = os.path.join(lab.store, OWNER, "Maildir", ".Private")
    lock, acl_file = os.path.join(private, "dovecot-acl.lock"), os.path.join(private, "dovecot-acl")
    with open(lock, "w") as f:
        f.write("user=carol lr\n")              # a SETACL under way (or one left behind)
    lab.fix_owner(lock)
    argv = [x for name in chain for x in ("-f", {"full": full, "incr": incr}[name])]
    first = run(home, "imsrestore", *argv, check=6, text=True)
    assert not os.path.exists(acl_file), first.stderr
    named = [ln for ln in first.stderr.splitlines() if "dovecot-acl.lock" in ln]
    assert len(named) == 1 and "run the same command again" in named[0], first.stderr
    os.unlink(lock)
    again = run(home, "imsrestore", *argv, check=0, text=True)
    with open(acl_file) as f:
        assert f.read() == archived, again.stderr
    assert acls(lab) == after
    with lab.imap(OWNER) as c:
        c.conn.select("Private", readonly=True)
        typ, data = c.conn.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert sorted(d[1].strip().decode() for d in data if isinstance(d, tuple)) == \
        ["Subject: mail in Private", "Subject: private since the full"]
    # owed no more: the owner's change since stays through the same command run again
    lab.doveadm("acl set", "Private", "user=carol", "lookup", user=OWNER)
    with open(acl_file) as f:
        mine = f.read()
    run(home, "imsrestore", *argv, check=0)
    with open(acl_file) as f:
        assert f.read() == mine


def test_imsverify_against_store_counts_each_folder_whose_acl_changed_since_the_backup(lab, tmp_path):
    """imsverify --against-store compares each folder's ACL in the store with the
    archived one (by a --base chain, the last link's): just after the backup, and
    after an incremental that carries the changes, none is counted; an ACL set, changed
    or removed since is a change since the backup, as new mail is (exit 0): counted in
    the summary and named by -v in one line for its folder (the store's ACL and the
    archive's), and no other folder is named.  (Before, the comparison read no ACL.)"""
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    full, state, incr = tmp_path / "full.ims", tmp_path / "full.state", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", state, f"/primary/user/{OWNER}", check=0)
    run(home, "imsverify", "-f", full, "--against-store", check=0)
    lab.doveadm("acl set", "Private", "user=bob", "lookup", "read", user=OWNER)     # had none
    lab.doveadm("acl set", "Work", "user=bob", "lookup", user=OWNER)                # lrs -> l
    lab.doveadm("acl delete", "Work/Sub", "user=carol", user=OWNER)                # its only entry
    p = run(home, "imsverify", "-f", full, "--against-store", "-v", text=True, check=0)
    named = sorted(ln for ln in p.stderr.splitlines() if "access control list" in ln)
    assert named == [
        f"imsverify: /primary/{OWNER}/Private: its access control list is 'user=bob lr' in the store, none "
        f"in the archive (changed since the backup: a restore from these archives gives the archived one; "
        f"the next backup archives the store's)",
        f"imsverify: /primary/{OWNER}/Work/Sub: its access control list is none in the store, "
        f"'user=carol ilrw' in the archive (changed since the backup: a restore from these archives gives "
        f"the archived one; the next backup archives the store's)",
        f"imsverify: /primary/{OWNER}/Work: its access control list is 'anyone l; user=bob l; -user=carol w' "
        f"in the store, 'anyone l; user=bob lrs; -user=carol w' in the archive (changed since the backup: a "
        f"restore from these archives gives "
        f"the archived one; the next backup archives the store's)"], p.stderr
    assert "3 folders with another access control list: every check passed" in p.stdout, p.stdout
    run(home, "imsbackup", "-f", incr, "--base", state, f"/primary/user/{OWNER}", check=0)
    p = run(home, "imsverify", "-f", full, "-f", incr, "--against-store", "-v", text=True, check=0)
    assert "access control list" not in p.stdout + p.stderr, (p.stdout, p.stderr)


ODD = 'Q "1" 50%; Été'      # spaces, quotes, %, ; and non-ASCII: shell-quoted in a command


def _acl_entries(lab, folder) -> dict:
    """{identifier: sorted rights} of ``folder``'s dovecot-acl (none: {})."""
    path = lab.doveadm("mailbox path", folder, user=OWNER).stdout.decode().strip()
    try:
        with open(os.path.join(path, "dovecot-acl")) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    return {k: sorted(v) for k, v in entries(text).items()}


def _commands(line: str) -> list[list[str]]:
    """The shell commands a line's advice ("... yourself: CMD; CMD") names, parsed as
    sh parses them."""
    assert " yourself: " in line, line
    return sh_commands(line.split(" yourself: ", 1)[1])


def test_an_acl_a_restore_could_not_write_is_named_with_the_doveadm_commands_that_give_it(acl_lab, tmp_path):
    """The restore of an incremental finds the ACL locks of two folders held past
    store.locktimeout (exit 6): Work, whose archived ACL is none (its owner removed
    every entry), and a folder named with spaces, quotes, %, ; and non-ASCII, whose
    archived ACL replaces one identifier and adds a negative right.  Each line names
    the doveadm acl commands, shell-quoted, that make the folder's ACL the archived
    one: ``delete`` of each identifier to go (before, the line said "doveadm acl set"
    even where the archived ACL was none, with no identifier or rights, and the folder
    name unquoted); run as the line gives them, the folders have the archived ACLs."""
    lab = acl_lab
    fill(lab)
    lab.doveadm("mailbox create", ODD, user=OWNER)
    lab.doveadm("acl set", ODD, "user=bob", "lookup", "read", user=OWNER)
    home = tmp_path / "ims"
    configure(lab, home)
    run(home, "msconfig", "set", "store.locktimeout", "1", check=0)
    full, state, incr = tmp_path / "full.ims", tmp_path / "full.state", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", state, f"/primary/user/{OWNER}", check=0)
    for ident in ("user=bob", "anyone", "user=carol"):
        lab.doveadm("acl delete", "Work", ident, user=OWNER)
    lab.doveadm("acl delete", ODD, "user=bob", user=OWNER)
    lab.doveadm("acl set", ODD, "user=carol", "lookup", "read", "insert", user=OWNER)
    lab.doveadm("acl set", "--", ODD, "anyone", "-write", user=OWNER)
    want = {f: _acl_entries(lab, f) for f in ("Work", ODD)}
    assert want["Work"] == {} and want[ODD] == {"user=carol": ["insert", "lookup", "read"], "anyone": ["-write"]}
    run(home, "imsbackup", "-f", incr, "--base", state, f"/primary/user/{OWNER}", check=0)
    wipe(lab)
    run(home, "imsrestore", "-f", full, check=0)
    assert _acl_entries(lab, "Work") != {} and _acl_entries(lab, ODD) == {"user=bob": ["lookup", "read"]}
    locks = []
    for f in ("Work", ODD):
        path = lab.doveadm("mailbox path", f, user=OWNER).stdout.decode().strip()
        locks.append(os.path.join(path, "dovecot-acl.lock"))
        with open(locks[-1], "w") as fh:
            fh.write("user=dave l\n")
        lab.fix_owner(locks[-1])
    res = run(home, "imsrestore", "-f", incr, check=6, text=True)
    named = {f: [ln for ln in res.stderr.splitlines() if ln.startswith(f"imsrestore: /primary/{OWNER}/{f}: ")]
             for f in ("Work", ODD)}
    assert all(len(v) == 1 for v in named.values()), res.stderr
    work, odd = named["Work"][0], named[ODD][0]
    assert "doveadm acl set" not in work and "its archived ACL, none" in work, work
    assert [c[:7] for c in _commands(work)] == [["doveadm", "acl", "delete", "-u", OWNER, "--", "Work"]] * 3, work
    assert shlex.quote(ODD) in odd, odd
    for p in locks:
        os.unlink(p)
    for line in (work, odd):
        for cmd in _commands(line):
            assert cmd[:2] == ["doveadm", "acl"] and cmd[3] == "-u" and cmd[5] == "--", cmd
            lab.doveadm(f"acl {cmd[2]}", *cmd[5:], user=cmd[4])
    assert {f: _acl_entries(lab, f) for f in ("Work", ODD)} == want


def test_an_owed_acl_gives_way_to_a_later_link_that_carries_none(acl_lab, tmp_path):
    """An ACL the restore of an incremental owes a folder (its lock held, exit 6), then
    the next incremental of the chain, whose backup could not archive that folder's ACL
    (a line the format cannot hold: named, the folder's mail archived without it), is
    restored: its state is the truth, the owed ACL is older than it, so it is owed no
    more, and the live ACL stays as it is.  Before, it stayed owed for good, and the
    first incremental's command run again (its folders skipped as already restored)
    wrote that older ACL over the state of the later one, exit 0."""
    lab = acl_lab
    fill(lab)
    home = tmp_path / "ims"
    configure(lab, home)
    run(home, "msconfig", "set", "store.locktimeout", "1", check=0)
    full, incr, incr2 = tmp_path / "full.ims", tmp_path / "incr.ims", tmp_path / "incr2.ims"
    run(home, "imsbackup", "-f", full, "--state-out", tmp_path / "s1", f"/primary/user/{OWNER}", check=0)
    lab.doveadm("acl set", "Private", "user=bob", "lookup", "read", user=OWNER)
    run(home, "imsbackup", "-f", incr, "--base", tmp_path / "s1", "--state-out", tmp_path / "s2",
        f"/primary/user/{OWNER}", check=0)
    assert archived_acls(incr)["Private"] == "user=bob lr\n"
    private = os.path.join(lab.store, OWNER, "Maildir", ".Private")
    acl_file, lock = os.path.join(private, "dovecot-acl"), os.path.join(private, "dovecot-acl.lock")
    with open(acl_file, "w") as f:
        f.write('user=carol lr\n"user=x y" l\n')      # Dovecot's, but not an archive's
    lab.fix_owner(acl_file)
    with lab.imap(OWNER) as c:
        c.append("Private", message("private after the first incremental"))
    b = run(home, "imsbackup", "-f", incr2, "--base", tmp_path / "s2", f"/primary/user/{OWNER}", text=True)
    assert b.returncode == 1 and "/primary/alice/Private: its access control list is not archived" in b.stderr, b.stderr
    assert archived_acls(incr2)["Private"] is None
    wipe(lab)
    run(home, "imsrestore", "-f", full, check=0)
    with open(lock, "w") as f:
        f.write("user=dave l\n")
    lab.fix_owner(lock)
    run(home, "imsrestore", "-f", incr, check=6)
    os.unlink(lock)
    journal = home / "data" / "restore-journal.db"
    with sqlite3.connect(journal) as db:
        assert db.execute("SELECT acl_owed FROM restored WHERE folder='Private'").fetchone()[0] == "user=bob lr\n"
    run(home, "imsrestore", "-f", incr2)          # (exit 0 or 1: its backup named Private's ACL)
    with sqlite3.connect(journal) as db:
        assert db.execute("SELECT acl_owed FROM restored WHERE folder='Private'").fetchone()[0] is None
    assert not os.path.exists(acl_file)          # the live ACL (none) stays
    lab.doveadm("acl set", "Private", "user=carol", "lookup", user=OWNER)      # the owner's, since
    with open(acl_file) as f:
        mine = f.read()
    for argv in (["-f", incr], ["-f", full, "-f", incr]):
        run(home, "imsrestore", *argv, check=0)
        with open(acl_file) as f:
            assert f.read() == mine, argv
