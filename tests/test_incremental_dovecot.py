"""Incremental chains against a real Dovecot 2.3 (issue 13): stores filled by Dovecot
itself (LMTP deliveries, IMAP APPEND/COPY/MOVE/RENAME/DELETE/STORE/EXPUNGE), backed up
as a full and incrementals by base, restored into an empty store and into the live
one, and checked over IMAP: UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, INTERNALDATE,
sizes, bytes, X-GUID, subscriptions."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from asm.errors import EXIT_ORDER
from asm.store.base import SETTLE_NS
from tests.dovecot_lab import dovecot_lab, message, move_and_rename_start, random_changes
from tests.helpers import make_home, run


@pytest.fixture
def lab(tmp_path):
    with dovecot_lab("plain") as lab:
        lab.ims = tmp_path / "ims"
        make_home(lab.ims, "maildir", **{"partition:primary.path": lab.store, "store.owner": lab.mail_user})
        yield lab


def view(lab, login="alice"):
    """What the client sees.  Subscriptions: those of existing folders (an archive
    records a folder's subscription with the folder; a subscription Dovecot keeps for a
    name that no longer exists, after a RENAME, is not backed up: docs/operations.md)."""
    st = lab.client_state(login)
    return ({name: (f.uidvalidity, f.uidnext, f.subscribed,
                    tuple((m.uid, m.flags, m.internaldate, m.size, m.sha256, m.guid) for m in f.messages))
             for name, f in st.folders.items()}, st.subscriptions & set(st.folders))


class Chain:
    def __init__(self, lab, tmp_path):
        self.lab, self.tmp = lab, tmp_path
        self.archives, self.views = [], []

    def backup(self, *extra, base=True):
        a = self.tmp / f"b{len(self.archives)}.ims"
        args = ["--base", f"{self.archives[-1]}.state"] if base and self.archives else []
        run(self.lab.ims, "imsbackup", "-f", a, *args, *extra, "/", check=0)
        self.archives.append(a)
        self.views.append(view(self.lab))
        return a

    def into_empty(self, archives, one_command=True, login="alice"):
        """Stop Dovecot, remove the login's mail, restore, start Dovecot again."""
        lab = self.lab
        lab.stop()
        shutil.rmtree(os.path.join(lab.store, login))
        if one_command:
            run(lab.ims, "imsrestore", *sum((["-f", a] for a in archives), []), check=0)
        else:
            for i, a in enumerate(archives):
                run(lab.ims, "imsrestore", *(["-H"] if i < len(archives) - 1 else []), "-f", a, check=0)
        lab.start()
        return view(lab)


def test_the_issue_scenario_move_and_rename(lab, tmp_path):
    c = Chain(lab, tmp_path)
    move_and_rename_start(lab)
    c.backup()
    t0 = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    with lab.imap("alice") as imap:
        imap.select("INBOX")
        imap.uid_move(imap.uids(), "Archive")
        imap.unselect()
        imap.rename("Projects", "Projects-2026")
    incr = c.backup()
    want = c.views[-1]
    assert [m[4] for m in want[0]["Archive"][3]] and not want[0]["INBOX"][3]
    # -d alone sees the move too now (the file's ctime changed when Dovecot renamed it)
    by_date = tmp_path / "by-date.ims"
    run(lab.ims, "imsbackup", "-f", by_date, "-d", t0, "/", check=0)
    toc = run(lab.ims, "imsrestore", "-t", "-f", by_date, check=0, text=True).stdout
    assert any("/Archive/" in line and "\t" in line for line in toc.splitlines()), toc
    assert c.into_empty([c.archives[0], incr], one_command=False) == want
    assert c.into_empty([c.archives[0], incr]) == want


def test_changes_between_backups_chain_into_empty_and_live_store(lab, tmp_path):
    c = Chain(lab, tmp_path)
    for i in range(4):
        lab.deliver(["alice", "bob"], message(f"first {i}", size=500 * i))
    with lab.imap("alice") as imap:
        for box in ("Work", "Old", "Trash"):
            imap.create(box)
            imap.subscribe(box)
        imap.append("Work", message("w1"), flags=["\\Flagged"], internaldate=1_690_000_000)
        imap.append("Old", message("o1"), internaldate=1_680_000_000)
        imap.append("Trash", message("t1"), internaldate=1_680_000_100)
    c.backup()
    with lab.imap("alice") as imap:
        imap.select("INBOX")
        uids = imap.uids()
        imap.uid_copy(uids[:1], "Work")                       # copy
        imap.uid_store(uids[1:2], "FLAGS", ["\\Answered", "$Label1"])   # flags and keywords
        imap.uid_expunge(uids[2:3])                           # expunge
        imap.unselect()
        imap.delete("Old")                                    # folder delete
        imap.unsubscribe("Old")
        imap.unsubscribe("Trash")
    # last month's Trash restored beside the live one between the backups
    run(lab.ims, "imsrestore", "-n", "-f", c.archives[0], "/primary/alice/Trash", check=0)
    lab.deliver(["alice"], message("second"))
    c.backup()
    with lab.imap("alice") as imap:
        imap.select("Work")
        imap.uid_move(imap.uids()[:1], "INBOX")
        imap.unselect()
        imap.create("New")
        imap.append("New", message("n1"), flags=["$Later"], internaldate=1_695_000_000)
    c.backup()
    for i in range(1, 4):                                     # every point in time
        assert c.into_empty(c.archives[:i]) == c.views[i - 1], i
    # the live store (= the last backup) restored to again: nothing changes, every time
    for _ in range(3):
        run(lab.ims, "imsrestore", *sum((["-f", a] for a in c.archives), []), check=0)
        for a in c.archives:
            run(lab.ims, "imsrestore", "-f", a, check=0)
        assert view(lab) == c.views[-1]


def test_older_archive_into_a_folder_that_moved_on(lab, tmp_path):
    c = Chain(lab, tmp_path)
    for i in range(5):
        lab.deliver(["alice"], message(f"mail {i}", size=300 * i))
    full = c.backup()
    lab.deliver(["alice"], message("later"))
    c.backup()
    c.into_empty(c.archives)                        # restored by imsrestore: the journal knows it
    with lab.imap("alice") as imap:                 # the user deletes mail and gets new mail
        imap.select("INBOX")
        gone = imap.uids()[:2]
        imap.uid_expunge(gone)
        imap.unselect()
    lab.deliver(["alice"], message("newest"))
    before = view(lab)
    run(lab.ims, "imsrestore", "-f", full, check=0)  # last week's archive: never refused
    after = view(lab)
    old = {m[4]: m for m in c.views[0][0]["INBOX"][3]}
    now = {m[4]: m for m in after[0]["INBOX"][3]}
    assert set(old) <= set(now)                     # the deleted mail is back
    assert len(now) == len(after[0]["INBOX"][3])    # once
    for m in before[0]["INBOX"][3]:                 # what was there is untouched
        assert m in after[0]["INBOX"][3]
    back = [now[d] for d in old if d not in {m[4] for m in before[0]["INBOX"][3]}]
    assert len(back) == 2 and all(m[0] >= before[0]["INBOX"][1] for m in back)   # new UIDs
    assert {m[5] for m in back} == {old[m[4]][5] for m in back}                  # same GUIDs
    run(lab.ims, "imsrestore", "-f", full, check=0)
    assert view(lab) == after                       # a second run adds nothing


def test_a_gap_exits_7_and_changes_nothing(lab, tmp_path):
    c = Chain(lab, tmp_path)
    lab.deliver(["alice"], message("a"))
    c.backup()
    lab.deliver(["alice"], message("b"))
    c.backup()
    lab.deliver(["alice"], message("c"))
    c.backup()
    before = view(lab)
    p = run(lab.ims, "imsrestore", "-f", c.archives[0], "-f", c.archives[2], check=EXIT_ORDER)
    assert b"does not follow" in p.stderr
    assert view(lab) == before


def test_reference_completion_keeps_uids_and_runs_twice(lab, tmp_path):
    for i in range(3):
        lab.deliver(["alice", "bob"], message(f"shared {i}", size=700 * i))    # one file, two users
        lab.deliver(["bob"], message(f"own {i}"))
    want = view(lab, "bob")
    full = tmp_path / "full.ims"
    run(lab.ims, "imsbackup", "-f", full, "/", check=0)
    lab.stop()
    shutil.rmtree(os.path.join(lab.store, "bob"))
    run(lab.ims, "msconfig", "set", "restore.spoolmax", "0", check=0)
    ref = tmp_path / "bob.ref"
    p = run(lab.ims, "imsrestore", "-R", ref, "-f", "-", "/primary/user/bob", input=full.read_bytes())
    assert p.returncode == 1 and f"-r {ref}".encode() in p.stderr, p.stderr
    for _ in range(2):                              # the second -r adds nothing
        run(lab.ims, "imsrestore", "-f", full, "-r", ref, check=0)
        lab.start()
        assert view(lab, "bob") == want             # archived UIDs, GUIDs, bytes, flags
        lab.stop()
    lab.start()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_imap_changes_between_backups(lab, tmp_path, seed):
    import random
    rnd = random.Random(seed)
    c = Chain(lab, tmp_path)
    with lab.imap("alice") as imap:
        for box in ("Work", "Lists/A", "Trash"):
            imap.create(box)
            imap.subscribe(box)
    random_changes(lab, rnd, 10, "full", logins=["alice"])
    c.backup()
    for i in range(3):
        random_changes(lab, rnd, 12, f"incr{i}", logins=["alice"])
        c.backup()
    want = c.views[-1]
    run(lab.ims, "imsrestore", *sum((["-f", a] for a in c.archives), []), check=0)   # into the live store
    assert view(lab) == want
    assert c.into_empty(c.archives) == want
    assert c.into_empty(c.archives, one_command=False) == want


def four_folders(lab) -> None:
    """alice's Work, Lists/A, Trash and Quiet, subscribed, a seen message in each."""
    with lab.imap("alice") as imap:
        for box in ("Work", "Lists/A", "Trash", "Quiet"):
            imap.create(box)
            imap.subscribe(box)
            imap.append(box, message(f"first in {box}"), flags=["\\Seen"])


def test_date_incremental_carries_the_files_a_lost_uidlist_left_unnumbered(lab, tmp_path):
    """dovecot-uidlist lost (the indexes kept) after the full, then an LMTP delivery:
    Dovecot writes a new uidlist holding only the new message (same UIDVALIDITY), and
    the older files in cur/ have no UID until someone numbers them.  imsbackup -d numbers
    them (UIDNEXT on, as Dovecot would) but their ctimes are before the date: it listed
    them without carrying them and exited 0, and the chain could not be restored
    (exit 7, "restore the incremental(s) taken in between first": there are none).
    A UID the backup gives now is new since any date: the -d incremental carries it."""
    c = Chain(lab, tmp_path)
    for i in range(5):
        lab.deliver(["alice"], message(f"old {i}", size=400 * i))
    with lab.imap("alice") as imap:             # into cur/, numbered 1..5
        imap.select("INBOX")
        imap.unselect()
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    c.backup(base=False)
    time.sleep(1.1)
    os.unlink(os.path.join(lab.mailbox_path("alice", "INBOX", "control"), "dovecot-uidlist"))
    lab.deliver(["alice"], message("after the loss"))
    c.backup("-d", since, base=False)
    want = c.views[-1]
    assert len(want[0]["INBOX"][3]) == 6, want  # the old five under new UIDs, and the new one
    assert c.into_empty(c.archives) == want
    assert c.into_empty(c.archives, one_command=False) == want


def test_date_incremental_after_dovecot_numbered_a_lost_uidlist_again_says_what_to_do(lab, tmp_path):
    """dovecot-uidlist lost (the indexes kept) after the full, then a SELECT: Dovecot
    numbers the old files again itself (same UIDVALIDITY, UIDs 6..10), and nothing on
    disk tells a backup by date that these UIDs are new: the -d incremental lists them
    without carrying them (exit 0), and the chain's restore stops for the folder with
    exit 7 (docs/operations.md).  Its advice was "restore the incremental(s) taken in
    between first", and there are none; it names the renumbering and the way back too,
    and following it gets the mail back."""
    c = Chain(lab, tmp_path)
    for i in range(5):
        lab.deliver(["alice"], message(f"old {i}", size=400 * i))
    with lab.imap("alice") as imap:
        imap.select("INBOX")
        imap.unselect()
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    # no client reads the mail in between (after Chain.backup's client view, Dovecot
    # answered UIDNEXT 6 to this SELECT: it did not number the files again)
    full = tmp_path / "full.ims"
    run(lab.ims, "imsbackup", "-f", full, "/", check=0)
    time.sleep(1.1)
    os.unlink(os.path.join(lab.mailbox_path("alice", "INBOX", "control"), "dovecot-uidlist"))
    with lab.imap("alice") as imap:
        assert imap.select("INBOX")["uidnext"] == 11
        imap.unselect()
    incr = c.backup("-d", since, base=False)
    lab.stop()
    shutil.rmtree(os.path.join(lab.store, "alice"))
    p = run(lab.ims, "imsrestore", "-f", full, "-f", incr, check=EXIT_ORDER, text=True)
    assert "numbered again" in p.stderr and "imsrestore -n -f THIS-INCR /primary/alice/INBOX" in p.stderr, p.stderr
    run(lab.ims, "imsrestore", "-f", full, "/primary/alice/INBOX", check=0)
    run(lab.ims, "imsrestore", "-n", "-f", incr, "/primary/alice/INBOX", check=0)
    lab.start()
    got = lab.client_state("alice")
    assert sorted(m.sha256 for m in got["INBOX"].messages) == \
        sorted(m[4] for m in c.views[-1][0]["INBOX"][3])


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_imap_changes_between_date_incrementals(lab, tmp_path, seed):
    """A chain of incrementals by date (-d since the start of the backup before), with
    random Dovecot changes between them, but no folder RENAME (-d cannot carry a renamed
    folder's old mail: the test below, docs/operations.md).  Restored into the empty
    store in one command and in several (archive by archive, deleted folders were left
    behind until 7358311)."""
    import random
    rnd = random.Random(seed)
    c = Chain(lab, tmp_path)
    four_folders(lab)
    random_changes(lab, rnd, 10, "full", logins=["alice"], exclude={"rename"})
    time.sleep(1.1)                          # -d has whole seconds
    started = time.time()
    c.backup(base=False)
    for i in range(3):
        time.sleep(1.1)
        random_changes(lab, rnd, 8, f"incr{i}", logins=["alice"], exclude={"rename"})
        since = time.strftime("%Y%m%d:%H%M%S", time.localtime(started))
        started = time.time()
        c.backup("-d", since, base=False)
    want = c.views[-1]
    assert c.into_empty(c.archives) == want
    assert c.into_empty(c.archives, one_command=False) == want


@pytest.mark.parametrize("seed", [4, 5])
def test_settled_folders_skipped_while_dovecot_changes_others(lab, tmp_path, seed):
    """Every folder settles before each backup, so the base fingerprints all of them;
    then Dovecot changes a few (LMTP, APPEND, COPY, MOVE, EXPUNGE, STORE, RENAME,
    DELETE, CREATE) and the incremental must see each change through the fingerprints
    while not reading the folders nobody touched: the chain restored into an empty
    store is what the client saw at the last backup."""
    import random
    import re
    rnd = random.Random(seed)
    c = Chain(lab, tmp_path)
    four_folders(lab)
    random_changes(lab, rnd, 8, "full", logins=["alice"])
    skipped = []
    for i in range(3):
        if i:
            random_changes(lab, rnd, 4, f"incr{i}", logins=["alice"])
        time.sleep(SETTLE_NS / 1e9 + 0.2)
        a = tmp_path / f"b{len(c.archives)}.ims"
        args = ["--base", f"{c.archives[-1]}.state"] if c.archives else []
        p = run(lab.ims, "imsbackup", "-v", "-f", a, *args, "/", check=0, text=True)
        c.archives.append(a)
        c.views.append(view(lab))
        got = re.search(r"\((\d+) unchanged since the base, not read\)", p.stderr)
        skipped.append(int(got.group(1)) if got else 0)
    assert skipped[0] == 0 and all(n >= 1 for n in skipped[1:]), skipped
    assert c.into_empty(c.archives) == c.views[-1]


def test_a_date_incremental_over_a_folder_rename_is_named_not_lost(lab, tmp_path):
    """An IMAP RENAME renames the folder's directory, not its files: their ctimes stay,
    so an incremental by date (-d) lists the renamed folder's UIDs but carries none of
    its mail (which is in the full, under the old name).  Restoring that chain must say
    so for that folder (exit 7, the folder named, the rename mentioned) and restore the
    rest exactly; the same changes backed up by base restore whole.  (Found by a random
    chain of Dovecot changes backed up with -d: the docs said a RENAME changed ctimes.)"""
    with lab.imap("alice") as imap:
        imap.create("Old")
        for i in range(2):
            imap.append("Old", message(f"old {i}"), flags=["\\Seen"])
        imap.select("Old")                  # Dovecot moves them from new/ to cur/ (a rename
        imap.uids()                         # of their files, which a later RENAME would
        imap.unselect()                     # otherwise do, changing their ctimes)
        imap.create("Work")
    lab.deliver(["alice"], message("inbox"))
    time.sleep(1.1)                         # -d has whole seconds: all that is older
    full = tmp_path / "full.ims"
    started = time.time()
    run(lab.ims, "imsbackup", "-f", full, "/", check=0)
    time.sleep(1.1)
    with lab.imap("alice") as imap:
        imap.rename("Old", "Renamed")
        imap.append("Work", message("new in work"))
    since = time.strftime("%Y%m%d:%H%M%S", time.localtime(started))
    by_date, by_base = tmp_path / "d.ims", tmp_path / "b.ims"
    run(lab.ims, "imsbackup", "-f", by_date, "-d", since, "/", check=0)
    run(lab.ims, "imsbackup", "-f", by_base, "--base", f"{full}.state", "/", check=0)
    want = view(lab)
    toc = run(lab.ims, "imsrestore", "-t", "-f", by_date, check=0, text=True).stdout
    assert "/primary/alice/Renamed\tuidvalidity=" in toc and "/primary/alice/Renamed/" not in toc, toc
    lab.stop()
    shutil.rmtree(os.path.join(lab.store, "alice"))
    p = run(lab.ims, "imsrestore", "-f", full, "-f", by_date, check=EXIT_ORDER, text=True)
    # the chain was given in one command, in order: the advice is never to do that again
    # (F13), but what gets the mail back, which it does when followed (below)
    assert "user/alice/Renamed: this incremental by date" in p.stderr and "lists 2 messages" in p.stderr
    assert "renamed onto the name" in p.stderr and "--base" in p.stderr, p.stderr
    assert "restore the chain" not in p.stderr and "in one command" not in p.stderr, p.stderr
    lab.start()
    got = view(lab)
    assert got[0] == {k: v for k, v in want[0].items() if k != "Renamed"}
    # the advice followed: the folder from the archives before (under its earlier name),
    # then what the incremental carries, beside: every message is back
    run(lab.ims, "imsrestore", "-f", full, "/primary/alice/Old", check=0)
    run(lab.ims, "imsrestore", "-n", "-f", by_date, "/primary/alice/Renamed", check=0)
    got = view(lab)
    assert sorted(m[4] for m in got[0]["Old"][3]) == sorted(m[4] for m in want[0]["Renamed"][3])
    lab.stop()
    shutil.rmtree(os.path.join(lab.store, "alice"))
    run(lab.ims, "imsrestore", "-f", full, "-f", by_base, check=0)
    lab.start()
    assert view(lab) == want


def test_new_mail_under_uids_a_rollback_hands_out_again_is_carried(lab, tmp_path):
    """The store is put back from a file-level backup taken before the last incremental
    (docs/disaster-recovery.md, 4b: tar -xp of the Maildirs): dovecot-uidlist goes back
    under the same UIDVALIDITY and Dovecot gives the next APPENDs the UIDs that
    incremental holds with other messages.  The next incremental by base (its state file
    or its archive) carried none of them (exit 0, "0 messages"), and the chain restored
    the old messages under those UIDs (exit 0): the new mail was in no archive.  Now the
    identity recorded per UID (the GUID, which Dovecot takes from the file's base name)
    shows they are other messages: carried, and the chain, in one command or one archive
    at a time, is the store as Dovecot shows it."""
    with lab.imap("alice") as imap:
        imap.create("W")
        for i in range(3):
            imap.append("W", message(f"early {i}"))
    full, incr1 = tmp_path / "full.ims", tmp_path / "incr1.ims"
    run(lab.ims, "imsbackup", "-f", full, "/", check=0)
    lab.stop(wait="sessions")                          # a file-level backup of the store
    files = tmp_path / "files.tar"
    subprocess.run(["tar", "-C", lab.store, "-cpf", files, "."], check=True)
    lab.start()
    with lab.imap("alice") as imap:
        for i in range(2):
            imap.append("W", message(f"X before the disk died {i}", body="XXXX"))
    run(lab.ims, "imsbackup", "-f", incr1, "--base", f"{full}.state", "/", check=0)
    lab.stop(wait="sessions")                          # the store put back from it
    shutil.rmtree(os.path.join(lab.store, "alice"))
    subprocess.run(["tar", "-C", lab.store, "-xpf", files], check=True)
    lab.start()
    with lab.imap("alice") as imap:
        for i in range(2):
            imap.append("W", message(f"Y after the recovery {i}", body="YYYY"))
    want = view(lab)
    assert [m[0] for m in want[0]["W"][3]] == [1, 2, 3, 4, 5]     # 4 and 5 again
    c = Chain(lab, tmp_path)
    for base in (f"{incr1}.state", incr1):
        incr2 = tmp_path / f"incr2-{os.path.basename(base)}"
        run(lab.ims, "imsbackup", "-f", incr2, "--base", base, "--state-out", f"{incr2}.st", "/", check=0)
        toc = run(lab.ims, "imsrestore", "-t", "-f", incr2, check=0, text=True).stdout
        assert sorted(line.split("\t")[0] for line in toc.splitlines() if "/W/" in line) == \
            ["/primary/alice/W/4", "/primary/alice/W/5"], (base, toc)
        one_command = base == incr1                    # (and the other by its state file)
        assert c.into_empty([full, incr1, incr2], one_command) == want, (base, one_command)


def test_new_mail_under_uids_an_incrementals_earlier_links_hold_is_carried_by_its_archive(lab, tmp_path):
    """The store put back from a tar taken before the full: Dovecot gives the next
    APPENDs UIDs the full holds and the first incremental lists without carrying them.
    With that incremental's archive as the base (--base INCR1.ims, not its state file)
    the second incremental judged those UIDs by number and carried only the one INCR1
    carries (exit 0); the chain restored the old messages under the others (exit 0).
    Now INCR1 records what it lists under each UID (IMSASM.state_ids): every new
    message is carried and the chain is the store as Dovecot shows it."""
    with lab.imap("alice") as imap:
        imap.create("W")
        imap.append("W", message("early 0"))
    lab.stop(wait="sessions")                          # a file-level backup of the store
    files = tmp_path / "files.tar"
    subprocess.run(["tar", "-C", lab.store, "-cpf", files, "."], check=True)
    lab.start()
    with lab.imap("alice") as imap:
        for i in range(2):
            imap.append("W", message(f"early {i + 1}"))
        imap.select("W")
        imap.uid_store([2], "+FLAGS", ["\\Seen"])
        imap.unselect()
    full, incr1, incr2 = (tmp_path / f"{n}.ims" for n in ("full", "incr1", "incr2"))
    run(lab.ims, "imsbackup", "-f", full, "/", check=0)
    with lab.imap("alice") as imap:
        imap.append("W", message("X before the disk died", body="XXXX"))
    run(lab.ims, "imsbackup", "-f", incr1, "--base", f"{full}.state", "/", check=0)
    lab.stop(wait="sessions")                          # the store put back from it
    shutil.rmtree(os.path.join(lab.store, "alice"))
    subprocess.run(["tar", "-C", lab.store, "-xpf", files], check=True)
    lab.start()
    with lab.imap("alice") as imap:
        for i in range(4):
            imap.append("W", message(f"Y after the recovery {i}", body="YYYY"))
    want = view(lab)
    assert [m[0] for m in want[0]["W"][3]] == [1, 2, 3, 4, 5]     # 2 to 5 again
    run(lab.ims, "imsbackup", "-f", incr2, "--base", incr1, "/", check=0)
    toc = run(lab.ims, "imsrestore", "-t", "-f", incr2, check=0, text=True).stdout
    assert sorted(line.split("\t")[0] for line in toc.splitlines() if "/W/" in line) == \
        [f"/primary/alice/W/{u}" for u in (2, 3, 4, 5)], toc
    assert Chain(lab, tmp_path).into_empty([full, incr1, incr2]) == want


def test_an_account_removed_between_backups_stays_gone_archive_by_archive(lab, tmp_path):
    """bob's account is removed between the full and an incremental by base of /.  Into
    an empty store the chain archive by archive (-H, then the last) gives what the chain
    in one command gives: no bob (no directory of his left: the installation reads the
    store's layout from doveconf, whose mail/%u/Maildir leaves mail/bob), the others as
    the last backup had them; imsverify --restore-test of the chain (served by Dovecot)
    passes.
    (The -H form brought bob back with his mail, exit 0 twice, and imsverify failed, 19:
    "/primary/bob/INBOX is there after the restore but not in the archive".)"""
    lab.ims = tmp_path / "ims-doveconf"
    make_home(lab.ims, "maildir", **{"store.owner": lab.mail_user, "dovecot.config": lab.conf,
                                     "store.mail_location": "doveconf"})
    lab.deliver(["alice", "bob", "carol"], message("to everyone"))
    with lab.imap("bob") as imap:
        imap.create("Work")
        imap.append("Work", message("bob's work"))
    c = Chain(lab, tmp_path)
    c.backup()
    lab.stop(wait="sessions")
    shutil.rmtree(os.path.join(lab.store, "bob"))
    lab.start()
    lab.deliver(["alice"], message("later"))
    c.backup()
    want = {u: view(lab, u) for u in ("alice", "carol")}
    for one_command in (True, False):
        lab.stop()
        for u in os.listdir(lab.store):
            shutil.rmtree(os.path.join(lab.store, u))
        if one_command:
            run(lab.ims, "imsrestore", "-f", c.archives[0], "-f", c.archives[1], check=0)
        else:
            os.remove(os.path.join(lab.ims, "data", "restore-journal.db"))      # (the first's)
            run(lab.ims, "imsrestore", "-H", "-f", c.archives[0], check=0)
            run(lab.ims, "imsrestore", "-f", c.archives[1], check=0)
        assert sorted(os.listdir(lab.store)) == ["alice", "carol"], one_command
        lab.start()
        assert {u: view(lab, u) for u in ("alice", "carol")} == want, one_command
    run(lab.ims, "imsverify", "-f", c.archives[0], "-f", c.archives[1], "--restore-test", check=0)


def test_a_date_incremental_carries_a_folder_whose_uidvalidity_changed_whole(lab, tmp_path):
    """Between a full and an incremental by date (-d) a folder gets a new UIDVALIDITY
    while its message files keep their ctimes: its dovecot-uidlist and index were lost
    (simulated damage: Dovecot makes a new uidlist, new UIDVALIDITY, UIDs from 1; with
    its index kept Dovecot keeps the UIDs).  The incremental must
    carry it whole: the earlier archives hold that mail under other UIDs, so listed
    without its bytes the chain could not restore it (it exited 7 advising to restore
    the chain in order, which was what had been done: F13).  Dovecot gives a new folder
    the time as UIDVALIDITY, so one at or after the date is carried whole.  Restored in
    one command and archive by archive, the chain gives the client's last view."""
    c = Chain(lab, tmp_path)
    with lab.imap("alice") as imap:
        imap.create("Work")
        imap.create("Other")
        for i in range(3):
            imap.append("Work", message(f"work {i}"), flags=["\\Seen"])
        imap.append("Other", message("other"))
        imap.select("Work")                 # from new/ to cur/ now, not at the next select
        imap.uids()
        imap.unselect()
    lab.deliver(["alice"], message("inbox"))
    time.sleep(2.1)                         # -d has whole seconds: all that is older
    started = time.time()
    c.backup(base=False)
    time.sleep(1.1)
    work = os.path.join(lab.store, "alice", "Maildir", ".Work")
    lab.stop(wait="sessions")
    for name in os.listdir(work):
        if name.startswith("dovecot"):       # dovecot-uidlist, dovecot.index*
            os.unlink(os.path.join(work, name))
    lab.start()
    with lab.imap("alice") as imap:
        imap.append("Work", message("new in work"))
    since = time.strftime("%Y%m%d:%H%M%S", time.localtime(started))
    c.backup("-d", since, base=False)
    want = c.views[-1]
    assert want[0]["Work"][0] != c.views[0][0]["Work"][0]          # a new UIDVALIDITY
    toc = run(lab.ims, "imsrestore", "-t", "-f", c.archives[1], check=0, text=True).stdout
    carried = [ln for ln in toc.splitlines() if ln.startswith("/primary/alice/Work/")]
    assert len(carried) == len(want[0]["Work"][3]), toc
    assert c.into_empty(c.archives) == want
    assert c.into_empty(c.archives, one_command=False) == want
