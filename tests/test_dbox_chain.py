"""Full + incremental chains on sdbox and mdbox (issues 13 and 14), against a real Dovecot.

Dovecot fills the store (LMTP deliveries, IMAP APPEND), then between the full and the
incremental an IMAP client moves, copies, renames, expunges and changes flags.  The
chain (``imsbackup --base``) is restored into an emptied dbox store, in one command and
in two (the second meets logins the first gave to Dovecot), and into the live store;
each time the client view Dovecot serves must be the one it served at the last backup:
UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, INTERNALDATE, RFC822.SIZE, bytes, X-GUID,
folders and subscriptions.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time

import pytest

from asm.errors import EXIT_PARTIAL, EXIT_STORE
from tests.dovecot_lab import MAIL_USER, lab_fixture, message, random_changes
from tests.faults import run_with_fault
from tests.helpers import BIN, in_home, make_home, popen, run
from tests.test_restore_durability import lock_order_problems, restore_waiting_for

lab = lab_fixture(params=["sdbox", "mdbox"], scope="function")
USERS = ("alice", "bob")
KWS = [f"kw{i:02d}" for i in range(30)]


def configure(lab, home) -> None:
    """The installation msconfig set would write (the same msg.conf, written by the same
    Config.set), in this process: four msconfig commands per test and kill point took
    seconds on a loaded machine and tested nothing here (msconfig's own tests do)."""
    make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                  "store.mail_location": "doveconf"})


def view(lab, login):
    st = lab.client_state(login)
    return ({name: (f.uidvalidity, f.uidnext, f.subscribed,
                    tuple((m.uid, m.flags, m.internaldate, m.size, m.sha256, m.guid) for m in f.messages))
             for name, f in st.folders.items()}, st.subscriptions & set(st.folders))


def views(lab):
    return {u: view(lab, u) for u in USERS}


def wipe(lab) -> None:
    shutil.rmtree(lab.store)
    os.mkdir(lab.store)
    os.chown(lab.store, lab.uid, lab.gid)


def fill(lab) -> None:
    for i in range(4):
        lab.deliver(list(USERS), message(f"first {i}", size=700 * i))
    with lab.imap("alice") as c:
        for box in ("Work", "Old", "Projects"):
            c.create(box)
            c.subscribe(box)
        c.append("Work", message("w1"), [r"\Flagged", "$Label1"], "05-Mar-2024 12:00:00 +0100")
        c.append("Old", message("o1"), [r"\Seen"], "06-Mar-2024 23:59:59 -0500")
        c.append("Projects", message("p1"), ["Project"])
        c.create("Tags")                           # more keywords than a Maildir file name holds
        c.append("Tags", message("t1"), [r"\Seen", *KWS])


def change(lab) -> None:
    """Between the full and the incremental: every kind of change a client makes."""
    lab.deliver(list(USERS), message("between", size=2500))
    with lab.imap("alice") as c:
        c.select("INBOX")
        uids = c.uids()
        c.uid_move(uids[:1], "Work")                               # MOVE
        c.uid_copy(uids[1:2], "Old")                               # COPY
        c.uid_store(uids[2:3], "FLAGS", [r"\Answered", "$Todo"])   # flags and keywords
        c.uid_expunge(uids[3:4])                                   # EXPUNGE
        c.unselect()
        c.rename("Projects", "Projects-2026")                      # RENAME
        c.create("New")
        c.append("New", message("n1"), ["$Later"], "07-Mar-2024 08:00:00 +0000")
    with lab.imap("bob") as c:
        c.select("INBOX")
        c.uid_expunge(c.uids()[:2])
        c.unselect()


def chain(lab, tmp_path):
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", tmp_path / "full.state", "/", check=0)
    first = views(lab)
    change(lab)
    run(home, "imsbackup", "-f", incr, "--base", tmp_path / "full.state", "/", check=0)
    second = views(lab)
    assert second != first
    assert first["alice"][0]["Tags"][3][0][1] == {r"\Seen", *KWS}
    # the incremental holds what changed only
    toc = run(home, "imsrestore", "-t", "-f", incr, check=0, text=True).stdout
    assert sorted(ln.split("\t")[0] for ln in toc.splitlines() if ln.split("\t")[0].rsplit("/", 1)[-1].isdigit()) == [
        "/primary/alice/INBOX/5", "/primary/alice/New/1", "/primary/alice/Old/2",
        "/primary/alice/Projects-2026/1", "/primary/alice/Work/2", "/primary/bob/INBOX/5"], toc
    assert not [n for n in os.listdir(lab.store) if n.startswith(".ims-dbox-work")]
    return home, full, incr, first, second


def test_a_chain_restores_into_an_empty_dbox_store_as_clients_saw_it(lab, tmp_path):
    home, full, incr, first, second = chain(lab, tmp_path)
    toc = run(home, "imsrestore", "-t", "-f", incr, check=0, text=True).stdout
    assert "/primary/alice/Work" in toc
    for split in (False, True):
        wipe(lab)
        if split:
            run(home, "imsrestore", "-H", "-f", full, check=0)
            assert views(lab) == first
            run(home, "imsrestore", "-f", incr, check=0)
        else:
            run(home, "imsrestore", "-f", full, "-f", incr, check=0)
        assert views(lab) == second, split
        assert not [n for n in os.listdir(lab.store) if n.startswith(".ims-dbox-work")]
    # and Dovecot goes on from there: the next delivery takes the next UID
    lab.deliver(["alice"], message("after"))
    inbox = lab.client_state("alice")["INBOX"]
    assert inbox.messages[-1].uid == second["alice"][0]["INBOX"][1]


def test_each_dbox_folder_is_recorded_before_its_restore_lock_is_released(lab, tmp_path):
    """docs/restore-design.md §3 on dbox: a folder's restore lock is held until its
    journal record, written once its copy was given back to Dovecot, and released
    after it (the order log of tests/fault: the journal's statements and the restore
    lock's lockf calls; doveadm writes the account in processes of its own).  Before,
    a dbox restore released each folder's lock as soon as its copy was written, before
    the give-back and the record: another restore could take the folder and find it
    under way, or record it before this one's record landed over its own."""
    home, full, incr, _first, second = chain(lab, tmp_path)
    wipe(lab)
    log = tmp_path / "order"
    with in_home(home):
        p = run_with_fault(["imsrestore", "-f", full, "-f", incr], home, f"order:{log}")
    assert p.returncode == 0, p.stderr
    assert views(lab) == second
    problems, records = lock_order_problems(log, home)
    assert problems == []
    # every folder of both links, and the folder the incremental removed (the rename)
    assert records >= 2 * sum(len(second[u][0]) for u in USERS) - 2


def test_a_dbox_restore_waiting_for_another_gives_back_and_records_what_it_finished(lab, tmp_path):
    """Holding each folder's restore lock until its record (above), a dbox restore that
    must wait for a folder another restore holds first gives Dovecot what it finished,
    records it and lets go of it, as the end of its batch would: two restores never
    wait for each other's folders, and what the first finished is Dovecot's and done."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    want = views(lab)
    wipe(lab)
    with restore_waiting_for(home, "alice", "Work", "-f", full) as before:
        assert "INBOX" in before, before                                   # recorded, let go of
        got = view(lab, "alice")[0]                                        # and Dovecot's
        assert {f: got.get(f) for f in before} == {f: want["alice"][0][f] for f in before}
    assert views(lab) == want


def test_a_chain_restored_into_the_live_dbox_store_changes_nothing(lab, tmp_path):
    home, full, incr, first, second = chain(lab, tmp_path)
    for _ in range(2):
        run(home, "imsrestore", "-f", full, "-f", incr, check=0)
        assert views(lab) == second
        run(home, "imsrestore", "-f", incr, check=0)
        assert views(lab) == second


def test_an_older_archive_into_a_live_dbox_account_brings_back_what_went(lab, tmp_path):
    """The full restored into the store as it is after the incremental: what the client
    expunged or moved since comes back (new UIDs above UIDNEXT, its GUID), nothing that
    is there changes, and a second run adds nothing."""
    home, full, incr, first, second = chain(lab, tmp_path)
    run(home, "imsrestore", "-f", full, check=0)
    after = views(lab)
    for u in USERS:
        for name, (uv, nxt, sub, msgs) in first[u][0].items():
            box = name if name in after[u][0] else None
            if box is None:                       # renamed since: the restore makes it again
                assert name == "Projects" and name in after[u][0]
            now = after[u][0][name][3]
            assert {m[4] for m in msgs} <= {m[4] for m in now}, (u, name)
            before = second[u][0].get(name)
            if before:
                assert set(before[3]) <= set(now), (u, name)            # untouched
                back = [m for m in now if m not in before[3]]
                assert all(m[0] >= before[1] for m in back), (u, name)  # new UIDs
                old_guids = {m[4]: m[5] for m in msgs}
                assert all(old_guids[m[4]] == m[5] for m in back), (u, name)
    run(home, "imsrestore", "-f", full, check=0)
    assert views(lab) == after


@pytest.mark.parametrize("meanwhile", ["lmtp", "flags", "expunge"])
def test_a_dbox_account_dovecot_changed_during_the_restore_is_not_overwritten(lab, tmp_path, meanwhile):
    """Dovecot changes the folder the restore wrote after the restore copied the
    account: nothing is given back, the failure names the login and the folder, and
    what Dovecot did stays."""
    import io

    from asm.config import Config
    from asm.store import open_store
    from asm.store.base import StoreError
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    store = open_store(Config(home=str(home)))
    assert store.exists("alice", "INBOX")                 # the copy is made here
    store.append("alice", "INBOX", io.BytesIO(message("restored")), flags=("\\Seen",))
    if meanwhile == "lmtp":
        lab.deliver(["alice"], message("delivered meanwhile"))
    with lab.imap("alice") as c:
        c.select("INBOX")
        if meanwhile == "flags":
            c.uid_store(c.uids()[:1], "+FLAGS", [r"\Deleted"])
        elif meanwhile == "expunge":
            c.uid_expunge(c.uids()[:1])
        c.unselect()
    before = view(lab, "alice")
    with pytest.raises(StoreError, match="alice: Dovecot changed the dbox account .*in 'INBOX'"):
        store.sync()
    assert view(lab, "alice") == before


def paused_after_copy(tmp_path, home, *argv, nth: int = 1):
    """``argv`` (an imsrestore) started with a doveadm that stops once it has copied a
    login to WORK (``doveadm backup ... maildir:``; the ``nth`` time) until the test has
    changed the account: the point between the copy and the driver's next step.
    Returns the process and a function that lets it go on."""
    real = shutil.which("doveadm", path="/usr/bin:/usr/sbin:/bin:/sbin")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    wrapper = bin_ / "doveadm"
    wrapper.write_text(f"""#!/bin/sh
{real} "$@"; rc=$?
eval last=\\${{$#}}
case "$last" in maildir:*)
    echo >> {bin_}/copies
    if [ ! -e {bin_}/copied ] && [ "$(wc -l < {bin_}/copies)" -ge {nth} ]; then
        : > {bin_}/copied
        while [ ! -e {bin_}/go ]; do sleep 0.05; done
    fi;;
esac
exit $rc
""")
    wrapper.chmod(0o755)
    p = popen(home, *argv, env={"PATH": f"{bin_}:{os.environ['PATH']}"}, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (bin_ / "copied").exists():
        assert p.poll() is None and time.monotonic() - t0 < 60, p.communicate()
        time.sleep(0.05)
    return p, lambda: (bin_ / "go").touch()


def _client_acts_while_the_restore_copies(lab, tmp_path, act, refused=True):
    """alice's INBOX restored (one message expunged since the backup) with the restore
    paused after doveadm copied the account, ``act(imap)`` done by a client meanwhile.
    ``refused``: the client changed INBOX, so the restore must refuse the give-back (17)
    and leave what the client sees; otherwise (other folders only) it gives INBOX back,
    exit 0, and leaves the client's other folders as the client left them.  Returns the
    view after the restore."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/primary/alice", check=0)
    archived = view(lab, "alice")[0]["INBOX"]
    with lab.imap("alice") as c:
        c.select("INBOX")
        c.uid_expunge([1])
        c.unselect()
    p, go = paused_after_copy(tmp_path, home, "imsrestore", "-f", a, "/primary/alice/INBOX")
    with lab.imap("alice") as c:
        act(c)
    client = view(lab, "alice")
    go()
    out, err = p.communicate(timeout=300)
    after = view(lab, "alice")
    if refused:
        assert p.returncode == EXIT_STORE, err
        assert "alice: Dovecot changed the dbox account" in err and "in 'INBOX'" in err, err
        assert after == client
    else:
        assert p.returncode == 0, err
        # (the expunged message comes back with a new UID: "an older archive into the live account")
        assert sorted(m[4] for m in after[0]["INBOX"][3]) == sorted(m[4] for m in archived[3])
        assert {k: v for k, v in after[0].items() if k != "INBOX"} == \
            {k: v for k, v in client[0].items() if k != "INBOX"}
        assert after[1] == client[1]
    return after


@pytest.mark.parametrize("lab", ["mdbox"], indirect=True)
def test_what_a_client_does_while_the_restore_copies_the_dbox_account_stays(lab, tmp_path):
    """An IMAP APPEND to the restored INBOX, a flag set and a folder CREATEd after doveadm
    copied the account (before, the listing compared at give-back was taken after the
    copy: it held the client's changes, the copy did not, and the give-back undid them
    with exit 0): refused, all kept."""
    def act(c):
        c.append("INBOX", message("appended during the restore"))
        c.select("Old")
        c.uid_store([1], "+FLAGS", [r"\Flagged"])
        c.unselect()
        c.create("Created")
    client = _client_acts_while_the_restore_copies(lab, tmp_path, act)
    assert r"\Flagged" in client[0]["Old"][3][0][1]
    assert "Created" in client[0]


@pytest.mark.parametrize("lab", ["mdbox"], indirect=True)
def test_what_a_client_does_to_other_folders_while_the_restore_copies_stays_and_inbox_is_restored(lab, tmp_path):
    """The same in other folders than the one restored: INBOX is given back (exit 0) and
    the APPEND, the flag and the new folder stay (before, the whole login was compared
    and given back: refused, exit 17)."""
    def act(c):
        c.append("Old", message("appended during the restore"))
        c.select("Old")
        c.uid_store([1], "+FLAGS", [r"\Flagged"])
        c.unselect()
        c.create("Created")
    after = _client_acts_while_the_restore_copies(lab, tmp_path, act, refused=False)
    assert len(after[0]["Old"][3]) == 2 and r"\Flagged" in after[0]["Old"][3][0][1]
    assert "Created" in after[0]


@pytest.mark.parametrize("lab", ["mdbox"], indirect=True)
def test_a_subscription_changed_while_the_restore_copies_the_dbox_account_stays(lab, tmp_path):
    """A client that only SUBSCRIBEs and UNSUBSCRIBEs while the restore works on its copy
    of the account: the listing compared at give-back held no subscriptions, so the
    give-back undid both with exit 0.  Now only the restored folders are given back: the
    client's subscriptions of other folders are kept, INBOX restored, exit 0."""
    def act(c):
        c.subscribe("Tags")
        c.unsubscribe("Old")
    after = _client_acts_while_the_restore_copies(lab, tmp_path, act, refused=False)
    assert "Tags" in after[1] and "Old" not in after[1]


@pytest.mark.parametrize("lab", ["mdbox"], indirect=True)
def test_a_dbox_restore_refused_for_a_change_meanwhile_releases_held_deliveries(lab, tmp_path):
    """The exit-17 refusal ("Dovecot changed the dbox account ...") wrote nothing to
    Dovecot: the login's deliveries are released as at any end of a run (before, its
    dovecot.holdfile line stayed and LMTP answered 451 after the command had gone), and
    the refusal is said once, in one line."""
    home = tmp_path / "ims"
    configure(lab, home)
    hold = os.path.join(lab.dir, "hold.lmtp")
    open(hold, "w").close()
    os.chmod(hold, 0o644)
    run(home, "msconfig", "set", "dovecot.holdfile", hold, check=0)
    fill(lab)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/primary/alice", check=0)
    with lab.imap("alice") as c:
        c.select("INBOX")
        c.uid_expunge([2])                 # what the restore brings back
        c.unselect()
    # (the copy made when the command looks alice up is made again once the hold is
    # in place: the change comes after that one)
    p, go = paused_after_copy(tmp_path, home, "imsrestore", "-f", a, "/primary/alice", nth=2)
    with lab.imap("alice") as c:
        c.select("INBOX")
        c.uid_store([1], "+FLAGS", [r"\Flagged"])
        c.unselect()
    go()
    out, err = p.communicate(timeout=300)
    assert p.returncode == EXIT_STORE, err
    assert err.count("\n") == 1 and err.startswith("imsrestore: alice: Dovecot changed the dbox account"), err
    assert "alice" not in open(hold).read(), (out, err)
    time.sleep(1.1)                        # Dovecot reads the hold file again at most once a second
    assert lab.deliver(["alice"], message("after the restore"), check=False)["alice"][0] == 250


@pytest.mark.parametrize("lab", ["mdbox"], indirect=True)
def test_a_dbox_restore_with_dovecot_stopped_is_refused_before_it_writes(lab, tmp_path):
    """A dbox restore reaches Dovecot through doveadm, which needs the running Dovecot:
    with Dovecot stopped (as docs/disaster-recovery.md said until step 6) the restore
    ran to its end and failed every login with doveadm's "User lookup failed", exit 17,
    one line per login.  Now one line says to start Dovecot, nothing is written, and
    with Dovecot started the same command restores."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    want = views(lab)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    lab.stop()
    wipe(lab)
    try:
        p = run(home, "imsrestore", "-f", a, text=True)
        assert os.listdir(lab.store) == []
    finally:
        lab.start()
    assert p.returncode == EXIT_STORE, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("imsrestore: Dovecot is not running"), p.stderr
    assert "start Dovecot" in p.stderr
    run(home, "imsrestore", "-f", a, check=0)
    assert views(lab) == want


def listing(home, archive) -> list[str]:
    """The folders an archive holds (its table of contents)."""
    toc = run(home, "imsrestore", "-t", "-f", archive, check=0, text=True).stdout
    return sorted(ln.split("\t")[0] for ln in toc.splitlines() if "\tuidvalidity=" in ln)


def test_a_parent_that_only_holds_folders_stays_one(lab, tmp_path):
    """A dbox parent that only holds other folders ("Trash" of "Trash/child", IMAP
    \\Noselect) is no folder: doveadm backup makes it a real, empty one in the copy the
    driver reads, and a restore gave it to Dovecot as a new folder the clients had never
    seen (found by a random chain of IMAP changes).  It is neither backed up nor made a
    folder, by a restore into the emptied store or into the live one."""
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(list(USERS), message("hello"))
    with lab.imap("alice") as c:
        for box in ("Trash/child", "Lists/A/B"):
            c.create(box)
            c.append(box, message(f"in {box}"), [r"\Seen"])
        c.subscribe("Lists/A/B")
        assert {a.lower() for a in c.list()["Trash"]} >= {"\\noselect"}
    before = views(lab)
    assert sorted(before["alice"][0]) == ["INBOX", "Lists/A/B", "Trash/child"]
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    assert listing(home, full) == ["/primary/alice/INBOX", "/primary/alice/Lists/A/B",
                                   "/primary/alice/Trash/child", "/primary/bob/INBOX"]
    run(home, "imsrestore", "-f", full, check=0)              # into the live store
    assert views(lab) == before
    wipe(lab)
    run(home, "imsrestore", "-f", full, check=0)              # into the emptied store
    assert views(lab) == before
    with lab.imap("alice") as c:
        assert {a.lower() for a in c.list()["Trash"]} >= {"\\noselect"}
    # a chain: the copy given back to Dovecot once per archive
    run(home, "imsbackup", "-f", full, "--state-out", tmp_path / "full.state", "/", check=0)
    with lab.imap("alice") as c:
        c.append("Trash/child", message("second"))
        c.create("Trash/other")
    incr = tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", incr, "--base", tmp_path / "full.state", "/", check=0)
    after = views(lab)
    for split in (False, True):
        wipe(lab)
        if split:
            run(home, "imsrestore", "-f", full, check=0)
            run(home, "imsrestore", "-f", incr, check=0)
        else:
            run(home, "imsrestore", "-f", full, "-f", incr, check=0)
        assert views(lab) == after, split


def test_a_dbox_folder_named_with_percent_is_named_not_renamed(lab, tmp_path):
    """doveadm backup (dsync, Dovecot 2.3) reads "%50" in a folder name as an escaped
    "P", both ways: "pct%50" was backed up as "pctP" and a restore that gave the login
    back to Dovecot renamed it there, each with exit 0.  Now such a folder is named as
    not backed up (exit 1, the others are in the archive, nothing under the changed
    name), and a restore into that login is refused before anything is written (exit
    17), the dbox account as it was."""
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(list(USERS), message("hello"))
    with lab.imap("alice") as c:
        for box in ("Work", "pct%50", "a%25b"):
            c.create(box)
            c.append(box, message(f"in {box}"))
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=EXIT_PARTIAL, text=True)
    for box in ("pct%50", "a%25b"):
        assert f"could not back up /primary/alice/{box}: doveadm backup (dsync)" in p.stderr, p.stderr
    assert "rename it without '%'" in p.stderr
    assert listing(home, tmp_path / "a.ims") == ["/primary/alice/INBOX", "/primary/alice/Work",
                                                 "/primary/bob/INBOX"]
    with lab.imap("bob") as c:
        c.create("Work")
        c.append("Work", message("bob's"))
    before = views(lab)
    with lab.imap("alice") as c:
        c.select("Work")
        c.uid_expunge(c.uids())
        c.unselect()
    gone = views(lab)
    p = run(home, "imsrestore", "-f", tmp_path / "a.ims", check=EXIT_STORE, text=True)
    assert "alice: nothing restored into this login: its dbox folder 'a%25b' has '%'" in p.stderr, p.stderr
    assert views(lab) == gone                 # alice's account untouched, 'pct%50' not renamed
    assert before["bob"] == gone["bob"]


def _percent_folders(lab, tmp_path, date=None):
    """(an installation on the lab, the folder names): alice's folders whose names hold
    '%' that dsync keeps, two messages each (the first with INTERNALDATE ``date``)."""
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(list(USERS), message("hello"))
    names = ("100%", "%%", "a%2Fb", "Work/50%")
    with lab.imap("alice") as c:
        for box in names:
            c.create(box)
            c.append(box, message(f"in {box}"), [r"\Seen"], date)
            c.append(box, message(f"also in {box}", size=900), [r"\Flagged", "$Label1"])
        c.subscribe("100%")
    return home, names


def test_a_dbox_folder_with_percent_that_dsync_keeps_is_backed_up_without_a_word(lab, tmp_path):
    """Most '%' in a folder name goes through doveadm backup unchanged: only "%" and two
    hex digits are read as an escaped character ("pct%50", above).  "100%", "%%",
    "a%2Fb", "Work/50%" are backed up under their names with exit 0 and nothing on
    stderr, and a restore into the emptied store gives the client every folder, UID and
    flag back.  (Before, each was named "could not back up ... rename it without '%'"
    and the backup exited 1, while the archive held the folder and restored it right.)"""
    home, names = _percent_folders(lab, tmp_path)
    before = views(lab)
    assert set(names) <= set(before["alice"][0])
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=None, text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert listing(home, a) == sorted(["/primary/alice/INBOX", "/primary/bob/INBOX",
                                       *(f"/primary/alice/{n}" for n in names)])
    wipe(lab)
    run(home, "imsrestore", "-f", a, check=0)
    assert views(lab) == before


def test_a_dbox_folder_with_percent_that_dsync_keeps_is_restored_into_a_live_account(lab, tmp_path):
    """Giving a folder whose name holds '%' back to an account that has it, dsync
    (Dovecot 2.3.19) always ends on a desync, "Mailbox 100%25 mailbox_rename conflict:
    Can't rename mailbox to itself", and gives the folder back all the same.  Every
    restore into such a login once failed: the incremental of a chain restored archive
    by archive, a chain restored into the live store, the full brought back into an
    account whose client expunged mail since, each exit 17 after 3 tries ("could not
    bring the folder in step"), the incremental's mail not given to Dovecot.  Now each
    exits 0 and the client sees what it saw at the backup (what went comes back; what
    is there stays)."""
    home, names = _percent_folders(lab, tmp_path, "05-Mar-2024 12:00:00 +0100")
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    first = views(lab)
    lab.deliver(list(USERS), message("between"))
    with lab.imap("alice") as c:
        for box in names:
            c.append(box, message(f"later in {box}"), ["$Later"])
            c.select(box)
            c.uid_store(c.uids()[:1], "+FLAGS", [r"\Answered", "Done"])
            c.unselect()
    run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
    second = views(lab)
    assert second != first
    wipe(lab)
    run(home, "imsrestore", "-H", "-f", full, check=0)
    assert views(lab) == first
    p = run(home, "imsrestore", "-f", incr, check=None, text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert views(lab) == second
    p = run(home, "imsrestore", "-f", full, "-f", incr, check=None, text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert views(lab) == second
    # the client expunges the first message of each: the full brings it back, above UIDNEXT
    with lab.imap("alice") as c:
        for box in names:
            c.select(box)
            c.uid_expunge(c.uids()[:1])
            c.unselect()
    gone = views(lab)
    p = run(home, "imsrestore", "-f", full, check=None, text=True)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    back = views(lab)
    for box in names:
        was, now = gone["alice"][0][box], back["alice"][0][box]
        assert set(was[3]) <= set(now[3]) and len(now[3]) == len(was[3]) + 1, box
        (uid, _fl, _date, _size, sha, guid), = [m for m in now[3] if m not in was[3]]
        assert uid >= was[1] and (sha, guid) == first["alice"][0][box][3][0][4:], box
    assert back["bob"] == gone["bob"]


def test_a_dbox_folder_dsync_cannot_copy_at_all_is_named_with_what_to_do(lab, tmp_path):
    """A '%XX' that dsync decodes to a character the Maildir++ copy cannot hold ("v%2e"
    becomes "v.", a hierarchy) stops doveadm backup of the whole login, and `-x v%2e`
    does not leave it out.  The backup stopped for every login (exit 17, no archive; at
    first in dsync's own words, "Invalid mailbox name: Ends with hierarchy separator").
    Now the folder is left out of the copy (`-x v%252e`: dsync reads the pattern's
    '%25' as '%'), named in one line with the rename to do, exit 1, and the login's
    other folders and the other logins are in the archive.
    (tests/test_dbox_uncopyable.py: the incrementals after the rename.)"""
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(list(USERS), message("hello"))
    with lab.imap("alice") as c:
        for box in ("v%2e", "Work"):
            c.create(box)
            c.append(box, message(f"in {box}"))
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=EXIT_PARTIAL, text=True)
    err = [ln for ln in p.stderr.splitlines() if "could not back up" in ln]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    assert err[0].startswith("imsbackup: could not back up /primary/alice/v%2e: doveadm backup (dsync) "
                             "copies a dbox folder whose name holds '%' and two hex digits not at all"), err
    assert "rename it without '%' (doveadm mailbox rename -u alice v%2e NEW-NAME)" in err[0], err
    assert listing(home, a) == ["/primary/alice/INBOX", "/primary/alice/Work", "/primary/bob/INBOX"]


@pytest.mark.parametrize("seed", [1, 2, 6])
def test_random_dbox_changes_between_backups_chain_back(lab, tmp_path, seed):
    """A full and 2-4 incrementals by base with random client changes of every login
    between them; the chain restored in one command into the emptied dbox store is what
    the clients saw at the last backup.  (Each of these seeds, on both dbox formats, gave
    clients folders they had never seen before the driver compared each copy with the
    account, and failed the restore with exit 17 while it looked at the copy through
    Dovecot's list index.)"""
    import random
    rnd = random.Random(seed)
    home = tmp_path / "ims"
    configure(lab, home)
    random_changes(lab, rnd, 15, "full")
    archives = []
    for i in range(rnd.randint(3, 5)):
        if i:
            random_changes(lab, rnd, rnd.randint(1, 12), f"incr{i}")
        a = tmp_path / f"b{i}.ims"
        run(home, "imsbackup", "-f", a, *(["--base", f"{archives[-1]}.state"] if archives else []), "/",
            check=0)
        archives.append(a)
    want = {u: view(lab, u) for u in lab.logins}
    wipe(lab)
    run(home, "imsrestore", *sum((["-f", a] for a in archives), []), check=0)
    assert {u: view(lab, u) for u in lab.logins} == want


KILL_POINTS = 8          # per dbox format, spread over the run, plus the journal's last step


def test_a_link_that_removes_a_folder_killed_anywhere_removes_it_when_run_again(lab, tmp_path):
    """A link restored as its own command removes the folder its incremental no longer
    lists.  On dbox the removal reaches Dovecot only when the copy is given back, as the
    run ends: the journal forgets the folder only then too.  Killed anywhere (points
    spread over the run, just before and after the journal forgets the folder, and near
    its end), the same command run again removes the folder, exit 0, and the logins are
    as the client saw them at the incremental.  (Before, a kill after the journal forgot the folder and before the
    give-back left the folder for good, exit 0: found by a helper's fuzzer.)"""
    import random

    from tests.faults import count_steps, run_with_fault, spread
    from tests.helpers import in_home
    src = tmp_path / "src"
    configure(lab, src)
    lab.deliver(list(USERS), message("one"))
    with lab.imap("alice") as c:
        c.create("Work")
        c.subscribe("Work")
        c.append("Work", message("w"))
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(src, "imsbackup", "-f", full, "/", check=0)
    with lab.imap("alice") as c:
        c.delete("Work")
    lab.deliver(["bob"], message("two"))           # bob's give-back comes after alice's
    run(src, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
    want = views(lab)

    def fresh(name):
        wipe(lab)
        home = tmp_path / name
        configure(lab, home)
        run(home, "imsrestore", "-H", "-f", full, check=0)
        return home
    home = fresh("count")
    log = tmp_path / "steps.log"
    with in_home(home):
        total, p = count_steps(["imsrestore", "-f", incr], "/", tmp_path, env={"IMS_FAULT_LOG": str(log)})
    assert p.returncode == 0 and views(lab) == want, p.stderr
    # the step where the journal forgets the removed folder, and the one after it
    forget = [int(ln.split()[0]) for ln in log.read_text().splitlines() if "DELETE FROM restored" in ln]
    assert len(forget) == 1, log.read_text()
    seed = random.randrange(1 << 30)
    # (a run's step count varies by one or two: the last points may find it ended)
    points = sorted(set(spread(total - 3, KILL_POINTS, seed)) | {forget[0], forget[0] + 1, total - 2,
                                                                  total - 1, total})
    bad, killed = [], 0
    for k in points:
        home = fresh(f"k{k}")
        with in_home(home):
            first = run_with_fault(["imsrestore", "-f", incr], "/", f"kill:{k}")
        killed += first.returncode == -9
        again = run(home, "imsrestore", "-f", incr)
        if first.returncode not in (-9, 0) or again.returncode != 0 or views(lab) != want:
            bad.append((k, first.returncode, again.returncode, again.stderr[-300:]))
    assert bad == [], (f"seed {seed}, {total} steps", bad)
    assert killed >= len(points) - 2, (killed, points, total)


def test_a_restore_killed_while_doveadm_gives_a_login_back_waits_for_it_when_run_again(lab, tmp_path):
    """imsrestore SIGKILLed (the process only, not its group) while its ``doveadm backup``
    child gives the login's copy back to Dovecot: that doveadm went on writing the dbox
    account while the run again made it anew (mdbox: exit 0 with 69 of 193 messages not at
    their UID; sdbox: exit 17).  The run again waits until the killed run's doveadm is gone
    (on Linux doveadm dies with its parent), and the account is the archived one."""
    import signal
    import subprocess
    import time

    from tests.dovecot_lab import DOVEADM
    from tests.helpers import popen
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    want = views(lab)
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    # a doveadm that, the first time it gives a copy back, waits 2 s before it writes
    bindir, mark = tmp_path / "bin", tmp_path / "slow"
    bindir.mkdir()
    (bindir / "doveadm").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *mail_location=maildir:*" backup "*)\n'
        f"  if mkdir {mark} 2>/dev/null; then echo $$ > {mark}/pid; sleep 2; fi;;\nesac\n"
        f'{DOVEADM} "$@"\n')
    os.chmod(bindir / "doveadm", 0o755)
    env = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    wipe(lab)
    p = popen(home, "imsrestore", "-f", full, env=env, start_new_session=True,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (mark / "pid").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (mark / "pid").exists(), p.poll()
    os.kill(p.pid, signal.SIGKILL)                 # imsrestore only: its doveadm stays
    p.wait()
    again = run(home, "imsrestore", "-f", full, env=env)
    # whatever the killed run's doveadm still does, it does now
    pid = int((mark / "pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    assert again.returncode == 0, again.stderr
    assert views(lab) == want


def test_dbox_folders_the_maildir_copy_cannot_hold_are_named_not_renamed(lab, tmp_path):
    """The temporary Maildir++ copy cannot hold '.' in a folder name: dsync made
    "Lists.Debian" and "Projects/v1.2" "Lists_Debian" and "Projects/v1_2", backed up and
    restored under those names with exit 0.  And a 9-level folder tree, too long as one
    Maildir++ directory name, stopped the backup of every login (exit 17, no archive).
    Now each such folder is named as not backed up (exit 1), the logins' other folders
    are in the archive, and a restore into those logins writes nothing (exit 17)."""
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(list(USERS), message("hello"))
    deep = "/".join(f"Level{i:02d}-" + "x" * 24 for i in range(9))
    with lab.imap("alice") as c:
        for box in ("Work", "Lists.Debian", "Projects/v1.2"):
            c.create(box)
            c.append(box, message(f"in {box}"))
    with lab.imap("bob") as c:
        for box in ("Old", deep):
            c.create(box)
            c.append(box, message(f"in {box}"))
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=EXIT_PARTIAL, text=True)
    for box in ("alice/Lists.Debian", "alice/Projects/v1.2", f"bob/{deep}"):
        assert f"could not back up /primary/{box}: doveadm backup (dsync)" in p.stderr, p.stderr
    assert "rename it without '.'" in p.stderr and "too long" in p.stderr, p.stderr
    assert listing(home, tmp_path / "a.ims") == ["/primary/alice/INBOX", "/primary/alice/Work",
                                                 "/primary/bob/INBOX", "/primary/bob/Old"]
    for login, box in (("alice", "Work"), ("bob", "Old")):
        with lab.imap(login) as c:
            c.select(box)
            c.uid_expunge(c.uids())
            c.unselect()
    gone = views(lab)
    p = run(home, "imsrestore", "-f", tmp_path / "a.ims", check=EXIT_STORE, text=True)
    assert "alice: nothing restored into this login: its dbox folder 'Lists.Debian' has '.'" in p.stderr, p.stderr
    assert "bob: nothing restored into this login: its dbox folder 'Level00-" in p.stderr, p.stderr
    assert views(lab) == gone              # not renamed, not removed


@pytest.mark.parametrize("how", ["never-delivered", "renamed-away"])
def test_a_dbox_login_without_an_inbox_is_backed_up_and_restored(lab, tmp_path, how):
    """A login whose INBOX Dovecot never made (folders and mail by IMAP only, nothing
    delivered) or whose INBOX was renamed away (RENAME INBOX) has no INBOX in the dbox
    account, while the Maildir copy always has one: every backup exited 1 naming
    /primary/alice/INBOX as copied "under another name" (rename INBOX).  Now exit 0, the
    login's folders are in the archive, and a restore into an emptied store gives the
    client the same folders, UIDs, flags and bytes (INBOX empty, as before).
    That INBOX was archived with the UIDVALIDITY the Maildir copy made up (1-2 above the
    one Dovecot then made for the first client), and a restore into the unchanged live
    store gave the live INBOX that one, exit 0: the backup has Dovecot make the INBOX
    first (as a client's login does), so every UIDVALIDITY archived is one Dovecot serves."""
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver(["bob"], message("for bob"))
    with lab.imap("alice") as c:
        if how == "renamed-away":
            c.append("INBOX", message("in the inbox"), [r"\Seen"])
            c.rename("INBOX", "Old")
        c.create("Work")
        c.append("Work", message("draft"), [r"\Seen", "$Label1"], "05-Mar-2024 12:00:00 +0100")
    time.sleep(1.1)                   # (a UIDVALIDITY made up later would differ)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    want = ["/primary/alice/INBOX", "/primary/alice/Work", "/primary/alice/Work/1"]
    if how == "renamed-away":
        want[1:1] = ["/primary/alice/Old", "/primary/alice/Old/1"]
    toc = run(home, "imsrestore", "-t", "-f", a, "/primary/alice", check=0, text=True).stdout
    assert sorted(ln.split("\t")[0] for ln in toc.splitlines() if ln.startswith("/")) == want, toc
    before = {u: view(lab, u) for u in USERS}
    assert before["alice"][0]["INBOX"][3] == ()
    served = lab.doveadm("mailbox status", "uidvalidity", "INBOX", user="alice").stdout.decode()
    archived = [ln for ln in toc.splitlines() if ln.startswith("/primary/alice/INBOX\t")][0]
    assert f"uidvalidity={before['alice'][0]['INBOX'][0]} " in archived, (archived, served)
    assert f"uidvalidity={before['alice'][0]['INBOX'][0]}" in served, served
    run(home, "imsrestore", "-f", a, check=0)          # into the live account: nothing to do
    assert {u: view(lab, u) for u in USERS} == before
    wipe(lab)
    run(home, "imsrestore", "-f", a, check=0)
    assert {u: view(lab, u) for u in USERS} == before


@pytest.mark.parametrize("size", ["1m", "3m"])
def test_a_full_dbox_store_exits_13_and_the_same_command_then_restores_it(lab, tmp_path, size):
    """A restore into a dbox store whose disk fills: doveadm's "No space left on device"
    was exit 17, and at some sizes the give-back of a later login was blamed on Dovecot
    ("Dovecot changed the dbox account").  Now it is exit 13 (the store is full), one
    line, and with space back the same command restores what the client saw."""
    from asm.errors import EXIT_NOSPACE
    from tests.helpers import small_tmpfs
    home = tmp_path / "ims"
    configure(lab, home)
    for login in USERS:
        with lab.imap(login) as c:
            c.create("Work")
            for k in range(24):
                c.append("Work" if k % 2 else "INBOX", message(f"{login} {k}", size=50_000))
    want = views(lab)
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    wipe(lab)
    with small_tmpfs(lab.store, size):
        os.chown(lab.store, lab.uid, lab.gid)
        p = run(home, "imsrestore", "-f", full, text=True)
        assert p.returncode == EXIT_NOSPACE, p.stderr
        assert "the store is full" in p.stderr and p.stderr.count("\n") == 1, p.stderr
        assert "Dovecot changed" not in p.stderr
    run(home, "imsrestore", "-f", full, check=0)
    assert views(lab) == want


def test_a_backup_into_the_dbox_store_it_reads_is_refused(lab, tmp_path):
    """imsbackup -f naming a dbox login's own files (a message file of sdbox, a storage
    file of mdbox, an index, a new file among them, by a path with '..') is refused,
    exit 2, one line naming it, before anything is written: the archive renamed there
    would destroy a message or add a file Dovecot reads as its own.  A directory of its
    own beside the logins, and a file in a login's home outside its mail, are fine."""
    import hashlib
    from asm.errors import EXIT_USAGE
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    before = views(lab)
    mail = os.path.join(lab.store, "alice", lab.layout.name)
    files = sorted(os.path.join(d, n) for d, _, ns in os.walk(mail) for n in ns)
    data = next(f for f in files if os.path.basename(f).startswith(("u.", "m.")))
    index = next(f for f in files if os.path.basename(f).startswith("dovecot.index"))

    def snapshot():
        out = {}
        for f in files:
            with open(f, "rb") as fh:
                out[f] = hashlib.sha256(fh.read()).hexdigest()
        return out, sorted(os.listdir(os.path.dirname(data)))
    was = snapshot()
    dotdot = os.path.join(lab.store, "backups", "..", os.path.relpath(data, lab.store))
    for dev in (data, index, os.path.join(os.path.dirname(data), "x.ims"), dotdot):
        p = run(home, "imsbackup", "-f", dev, "/", text=True)
        assert p.returncode == EXIT_USAGE, (dev, p.stderr)
        assert p.stderr.count("\n") == 1 and dev in p.stderr and "inside the store" in p.stderr, p.stderr
    assert snapshot() == was and views(lab) == before
    os.mkdir(os.path.join(lab.store, "backups"))
    run(home, "imsbackup", "-f", os.path.join(lab.store, "backups", "full.ims"), "/", check=0)
    run(home, "imsbackup", "-f", os.path.join(lab.store, "alice", "full.ims"), "/", check=0)
    assert views(lab) == before


@pytest.mark.parametrize("lab", ["sdbox"], indirect=True)
def test_imsdr_backup_of_a_dbox_store_captures_the_installation_and_leaves_the_mail_to_archives(lab, tmp_path):
    """docs/disaster-recovery.md's nightly block starts with `imsdr backup`, which refused
    every sdbox/mdbox store (exit 2): run with `sh -e` (or chained with && as the staging
    cron line and the Bacula FileSet do) no mail archive was ever taken, and there was no
    dr-*.tar to bring the configuration, journals, catalog and keys back in step 3.  Now
    it captures those, leaves out only the dbox mail and index files (said in the
    manifest, not a problem: exit 0), and step 3 restores the configuration from it."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    conf = (home / "config" / "msg.conf").read_bytes()
    dr = tmp_path / "dr.tar"
    p = run(home, "imsdr", "backup", "-f", dr, text=True, check=0)
    assert p.stderr == ""                                              # nothing for cron to mail
    manifest = json.loads(run(home, "imsdr", "show", "--json", "-f", dr, check=0, text=True).stdout)
    assert [i["member"] for i in manifest["items"] if i["kind"] == "config"] == ["config/msg.conf"]
    assert manifest["counts"]["indexes"] == 0 and manifest["problems"] == []
    assert not [i for i in manifest["items"] if i["member"].startswith(("dovecot/", "partition/"))]
    assert manifest["notes"] and "sdbox store: its mail and index files are not captured" in manifest["notes"][0]
    shown = run(home, "imsdr", "show", "-f", dr, check=0, text=True).stdout
    assert "note: mail_location" in shown and "recover the mail from archives" in shown
    shutil.rmtree(home)
    run(home, "imsdr", "restore", "-f", dr, check=0)
    assert (home / "config" / "msg.conf").read_bytes() == conf


@pytest.mark.parametrize("lab", ["sdbox"], indirect=True)
def test_the_runbooks_check_block_works_after_a_dbox_recovery(lab, tmp_path):
    """docs/disaster-recovery.md step 5 ("Check") after step 4a restored an sdbox store:
    its first line, `reconstruct -n -m -r /`, exited 2 ("the maildir driver reads maildir:
    locations (sdbox is not supported)"), so under `sh -e` neither `mboxutil -l` nor the
    fresh full backup ran.  Now reconstruct checks a dbox store through Dovecot, whose
    index files are the authority there: every login's every mailbox is opened with
    doveadm (exit 0, the counts in its summary), `reconstruct -r` (no -n) has Dovecot
    resync them (doveadm force-resync), changing nothing a client sees, and the block
    runs to its end."""
    from tests.test_runbook import blocks
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    want = views(lab)
    backup = tmp_path / "backup"
    backup.mkdir()
    run(home, "imsbackup", "-f", backup / "full-1.ims", "/", check=0)
    wipe(lab)
    run(home, "imsrestore", "-f", backup / "full-1.ims", check=0)
    assert views(lab) == want
    folders = sum(len(want[u][0]) for u in USERS)
    messages = sum(len(f[3]) for u in USERS for f in want[u][0].values())
    p = run(home, "reconstruct", "-n", "-v", "-m", "-r", "/", text=True, check=0)
    assert f"reconstruct: 2 users, {folders} folders, {messages} messages checked; 0 problems found" in p.stderr, \
        p.stderr
    assert "Dovecot's index files" in p.stderr, p.stderr
    p = run(home, "reconstruct", "-r", "/primary/alice", text=True, check=0)
    assert p.stderr == "", p.stderr
    assert views(lab) == want
    lab.stop()                              # doveadm needs the running Dovecot: said, in one line
    try:
        p = run(home, "reconstruct", "-n", "-r", "/", text=True, check=EXIT_STORE)
    finally:
        lab.start()
    assert p.stderr.count("\n") == 1 and "start Dovecot" in p.stderr, p.stderr
    _, body = blocks()["check"]
    p = subprocess.run(["bash", "-e", "-c", body], capture_output=True, text=True, cwd="/", timeout=600,
                       env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "IMS_HOME": str(home),
                            "BACKUP": str(backup)})
    assert p.returncode == 0, p.stderr
    listed = (home / "recovered-mailboxes.txt").read_text()
    assert "user/alice/Work" in listed and "user/bob/INBOX" in listed, listed
    assert [n for n in os.listdir(backup) if n.startswith("after-recovery-") and n.endswith(".ims")]


def _doveadm_acting_once(tmp_path, lab, match: str, act: str, error: str | None) -> dict:
    """A doveadm on PATH that, the first time its arguments match ``match`` (a shell
    case pattern; never on the login's Maildir copy), does ``act`` to the account as an
    IMAP client would at that moment (with the real doveadm), then either fails as
    Dovecot does when that client wins the race (``error`` on stderr, exit 68) or runs
    the command.  The environment to run a command with."""
    from tests.dovecot_lab import DOVEADM
    bindir, mark = tmp_path / "bin", tmp_path / "acted"
    bindir.mkdir()
    real = f"{DOVEADM} -c {lab.conf}"
    (bindir / "doveadm").write_text(
        "#!/bin/sh\n"
        'case "$*" in *mail_location=maildir:*) ;;\n'
        f'  {match})\n'
        f"  if mkdir {mark} 2>/dev/null; then\n"
        f"    {act.replace('DOVEADM', real)}\n"
        + (f"    echo {shlex.quote(error)} >&2; exit 68\n" if error is not None else "")
        + "  fi;;\n"
        + "esac\n"
        f'exec {DOVEADM} "$@"\n')
    os.chmod(bindir / "doveadm", 0o755)
    return {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


#: how Dovecot 2.3.19 ends a doveadm whose folder Tmp2 a client deleted (and made again)
#: under it, besides "Mailbox doesn't exist" (seen with 3 clients creating and deleting
#: a folder each in a loop: mdbox's listing, sdbox's doveadm backup)
LOG_SEQUENCE = ("Mailbox Tmp2: Failed to lookup mailbox status: Transaction log "
                "MAIL/mailboxes/Tmp2/dbox-Mails/dovecot.index.log: duplicate transaction log sequence (2)")
INDEXID = ("Mailbox Tmp2: Failed to lookup mailbox status: Corrupted transaction log file "
           "MAIL/mailboxes/Tmp2/dbox-Mails/dovecot.index.log seq 2: indexid changed: 1796438667 -> "
           "1796438668 (sync_offset=0)")
STAT_GONE = "Mailbox Tmp2: stat(MAIL/mailboxes/Tmp2/dbox-Mails) failed: No such file or directory"
LOCK_GONE = ("Failed to lock mailbox Tmp2 for dsyncing: file_create_locked(MAIL/mailboxes/Tmp2/dbox-Mails/"
             ".dovecot-box-sync.lock) failed: safe_mkstemp(MAIL/mailboxes/Tmp2/dbox-Mails/"
             ".dovecot-box-sync.lock) failed: No such file or directory")


@pytest.mark.parametrize("race", ["folder-deleted", "deleted-under-us", "message-expunged",
                                  "log-sequence", "indexid-changed", "stat-gone"])
def test_dboxlive_a_client_changing_the_account_while_it_is_listed_fails_no_backup(lab, tmp_path, race):
    """An IMAP client that deletes a folder, or expunges a message, while imsbackup lists
    the dbox account before copying it made doveadm fail ("Mailbox doesn't exist: Tmp2",
    "Message was expunged"): the whole backup exited 17, no archive, every login's
    nightly backup lost to one busy mailbox.  The listing is taken again: exit 0, the
    archive holds what the account holds (the folder or message gone is not in it).
    A folder deleted and made again under doveadm may end it on the folder's index log
    ("duplicate transaction log sequence") or its files gone ("stat(...) failed: No such
    file or directory"), or on a new index's id ("Corrupted transaction log file ...
    indexid changed", which ended the whole backup with exit 17): that login was named as
    not backed up (exit 1); the same now."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    with lab.imap("alice") as c:
        c.create("Tmp2")
        c.append("Tmp2", message("soon gone"))
        c.select("INBOX")
        uids = c.uids()
        c.unselect()
    if race == "message-expunged":
        env = _doveadm_acting_once(
            tmp_path, lab, "*\" fetch -u alice \"*", f"DOVEADM expunge -u alice mailbox INBOX uid {uids[-1]}",
            f"doveadm(alice): Error: fetch(guid) failed for box=INBOX uid={uids[-1]}: Message was expunged")
    elif race in ("log-sequence", "indexid-changed", "stat-gone"):
        text = {"log-sequence": LOG_SEQUENCE, "indexid-changed": INDEXID,
                "stat-gone": STAT_GONE}[race].replace("MAIL", f"{lab.store}/alice")
        env = _doveadm_acting_once(
            tmp_path, lab, "*\" mailbox status -u alice \"*", "DOVEADM mailbox delete -u alice Tmp2",
            f"doveadm(alice): Error: {text}")
    else:
        text = ("Mailbox doesn't exist: Tmp2" if race == "folder-deleted" else "Mailbox was deleted under us")
        env = _doveadm_acting_once(
            tmp_path, lab, "*\" mailbox status -u alice \"*", "DOVEADM mailbox delete -u alice Tmp2",
            f"doveadm(alice): Error: Mailbox Tmp2: Failed to lookup mailbox status: {text}")
    want = views(lab)
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", env=env, check=0, text=True)
    assert (tmp_path / "acted").is_dir()
    assert p.stderr == "", p.stderr
    got = views(lab)
    if race == "message-expunged":
        assert len(got["alice"][0]["INBOX"][3]) == len(want["alice"][0]["INBOX"][3]) - 1
    else:
        assert "Tmp2" not in got["alice"][0]
    assert listing(home, tmp_path / "a.ims") == sorted(f"/primary/{u}/{f}" for u in USERS for f in got[u][0])
    toc = run(home, "imsrestore", "-t", "-f", tmp_path / "a.ims", check=0, text=True).stdout
    inbox = sorted(int(ln.split("\t")[0].rsplit("/", 1)[1]) for ln in toc.splitlines()
                   if ln.startswith("/primary/alice/INBOX/"))
    assert inbox == [m[0] for m in got["alice"][0]["INBOX"][3]], toc


@pytest.mark.parametrize("pct", [False, True])
def test_dboxlive_a_folder_deleted_or_renamed_while_the_account_is_copied_is_gone_not_misnamed(lab, tmp_path, pct):
    """A client deleting "Tmp0" and renaming "Projects" to "Projects-2" while doveadm
    backup copied the dbox account: imsbackup exited 1 with "could not back up
    /primary/alice/Tmp0: ... (the temporary Maildir++ copy cannot hold its name) ...
    rename it ... (doveadm mailbox rename -u alice Tmp0 NEW-NAME)" for folders that no
    longer exist, and (with a '%' folder named too) left "Projects-2" out of the archive
    unnamed.  Now what went during the copy is gone (not named, exit 0 as for mail a
    Maildir backup finds gone), what the copy holds under its new name is in the archive,
    and only a folder the copy cannot hold is named."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    with lab.imap("alice") as c:
        for box in ("Tmp0", *(["pct%50"] if pct else [])):
            c.create(box)
            c.append(box, message(f"in {box}"))
    env = _doveadm_acting_once(
        tmp_path, lab, "*\" backup -u alice maildir:\"*",
        "DOVEADM mailbox delete -u alice Tmp0 && DOVEADM mailbox rename -u alice Projects Projects-2", None)
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", env=env,
            check=EXIT_PARTIAL if pct else 0, text=True)
    assert (tmp_path / "acted").is_dir()
    assert "Tmp0" not in p.stderr and "Projects" not in p.stderr, p.stderr
    if pct:
        assert "could not back up /primary/alice/pct%50: doveadm backup (dsync)" in p.stderr, p.stderr
    got = views(lab)
    assert "Tmp0" not in got["alice"][0] and "Projects" not in got["alice"][0]
    assert listing(home, tmp_path / "a.ims") == sorted(f"/primary/{u}/{f}" for u in USERS for f in got[u][0]
                                                       if f != "pct%50")
    toc = run(home, "imsrestore", "-t", "-f", tmp_path / "a.ims", check=0, text=True).stdout
    assert "/primary/alice/Projects-2/1\t" in toc, toc


DESYNC = ("dsync(alice): Warning: Mailbox changes caused a desync. You may want to run dsync again: "
          "Remote lost mailbox GUID 0123456789abcdef0123456789abcdef (maybe it was just deleted?)")


@pytest.mark.parametrize("flaky", [False, True])
def test_dboxlive_a_login_whose_client_churns_a_folder_is_backed_up_folder_by_folder(lab, tmp_path, flaky):
    """A client that creates and deletes a scratch folder all day makes every
    ``doveadm backup`` of the whole login end on dsync's desync ("Mailbox changes caused
    a desync. You may want to run dsync again"): imsbackup exited 17 "no login could be
    backed up: /primary/alice: ... its folders changed while it copied them, 3 times",
    no archive, though every real folder was stable (on Maildir the same churn backs up
    fine).  Here the doveadm's whole-login copies of alice always desync; a folder
    ("Tmp0") is deleted while the driver copies her folder by folder.  Her stable
    folders are in the archive with their UIDs, UIDVALIDITY, flags, keywords and
    subscriptions, the folder gone is gone (exit 0, not named); with ``flaky`` one
    folder desyncs on its own copy every time: only it is named (exit 1), with what to
    do."""
    from tests.dovecot_lab import DOVEADM
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    with lab.imap("alice") as c:
        for box in ("Tmp0", "Flaky"):
            c.create(box)
            c.append(box, message(f"in {box}"), [r"\Seen", "$Label2"])
        c.subscribe("Flaky")
    bindir, log = tmp_path / "bin", tmp_path / "copies"
    bindir.mkdir()
    real = f"{DOVEADM} -c {lab.conf}"
    whole, flaky_copy = '*" backup -u alice maildir:"*', ' | *" backup -u alice -m Flaky maildir:"*'
    (bindir / "doveadm").write_text(
        "#!/bin/sh\n"
        'case "$*" in *mail_location=maildir:*) ;;\n'
        f'  *" backup -u alice "*maildir:*) echo "$*" | sed "s/.* backup -u alice *//; s/ *maildir:.*//" >> {log};;\n'
        "esac\n"
        'case "$*" in *mail_location=maildir:*) ;;\n'
        f"  {whole}{flaky_copy if flaky else ''})\n"
        f"    echo {shlex.quote(DESYNC)} >&2; exit 2;;\n"
        '  *" backup -u alice -m "*)\n'
        f"    if mkdir {tmp_path / 'acted'} 2>/dev/null; then {real} mailbox delete -u alice Tmp0; fi;;\n"
        "esac\n"
        f'exec {DOVEADM} "$@"\n')
    os.chmod(bindir / "doveadm", 0o755)
    env = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    before = views(lab)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", env=env, check=EXIT_PARTIAL if flaky else 0, text=True)
    assert (tmp_path / "acted").is_dir()
    # each copy of alice (listed, then read: k of them): the whole login 3 times, as dsync
    # asks, then folder by folder, a folder that desyncs on its own 3 times
    copies = log.read_text().splitlines()
    k = copies.count("-m INBOX")
    assert k >= 1 and copies.count("") == 3 * k and copies.count("-m Work") == k, copies
    assert copies.count("-m Flaky") == (3 if flaky else 1) * k, copies
    want = views(lab)
    assert "Tmp0" not in want["alice"][0] and "Tmp0" in before["alice"][0]
    if flaky:
        named = [ln for ln in p.stderr.splitlines() if "could not back up" in ln]
        assert len(named) == 1 and named[0].startswith("imsbackup: could not back up /primary/alice/Flaky: "), p.stderr
        assert "changed while" in named[0] and "3 times" in named[0] and "caused a desync" in named[0], named[0]
        assert "doveadm kick alice" in named[0], named[0]
        del want["alice"][0]["Flaky"]
        want["alice"] = (want["alice"][0], want["alice"][1] - {"Flaky"})
    else:
        assert p.stderr == "", p.stderr
    assert "Tmp0" not in p.stderr
    assert listing(home, a) == sorted(f"/primary/{u}/{f}" for u in USERS for f in want[u][0])
    # a restore into the live login reads it through the same copy: a message expunged
    # since comes back (a new UID, its bytes and GUID) through the give-back, nothing
    # else changes; with a folder the copy lacks nothing is given back (the give-back
    # would delete that folder in the account): exit 17, named, the account as it was
    with lab.imap("alice") as c:
        c.select("INBOX")
        gone = c.uids()[-1]
        c.uid_expunge([gone])
        c.unselect()
    live = views(lab)
    p = run(home, "imsrestore", "-f", a, env=env, check=EXIT_STORE if flaky else 0, text=True)
    after = views(lab)
    if flaky:
        assert "nothing restored into this login: its dbox folder 'Flaky' could not be copied" in p.stderr, p.stderr
        assert "restore again when its IMAP client is less busy (or hold it, doveadm kick alice)" in p.stderr
        assert after == live
    else:
        inbox = after["alice"][0]["INBOX"]
        old = {m[0]: m for m in want["alice"][0]["INBOX"][3]}
        back = [m for m in inbox[3] if m[0] not in old]
        assert [(m[4], m[5]) for m in back] == [(old[gone][4], old[gone][5])], back
        assert back[0][0] >= live["alice"][0]["INBOX"][1]
        assert {n: f for n, f in after["alice"][0].items() if n != "INBOX"} == \
            {n: f for n, f in live["alice"][0].items() if n != "INBOX"}
        assert after["bob"] == live["bob"] and after["alice"][1] == live["alice"][1]
    # what the archive holds is what the clients saw: restored into an emptied store
    wipe(lab)
    # (a folder the archive's trailer names, not as the store had it: exit 1)
    run(home, "imsrestore", "-f", a, check=EXIT_PARTIAL if flaky else 0)
    assert views(lab) == want


def test_dboxlive_a_backup_while_clients_make_and_delete_folders_has_every_stable_folder(lab, tmp_path):
    """Three IMAP clients of alice create and delete a scratch folder each in a loop
    while imsbackup runs (a mail client or a filter that does so all day): the whole-login
    copy desyncs now and then, and a login that desynced 3 times running was never
    backed up (exit 17 with no other login, no archive).  Every backup exits 0 without
    a word and holds every stable folder, as the clients see it (restored into an
    emptied store)."""
    import threading
    from tests.dovecot_lab import LabImapError
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    with lab.imap("alice") as c:
        for i in range(12):
            c.create(f"F{i:02d}")
            c.append(f"F{i:02d}", message(f"f{i}"), [r"\Seen", f"$K{i}"])
    want = views(lab)
    stop = threading.Event()

    def churn(j):
        with lab.imap("alice") as c:
            while not stop.is_set():
                try:
                    c.create(f"Tmp{j}")
                    c.delete(f"Tmp{j}")
                except LabImapError:
                    pass
    threads = [threading.Thread(target=churn, args=(j,)) for j in range(3)]
    for t in threads:
        t.start()
    got = []
    try:
        for n in range(3):
            p = run(home, "imsbackup", "-f", tmp_path / f"b{n}.ims", "/", check=None, text=True)
            got.append((p.returncode, p.stderr))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert got == [(0, "")] * 3, got
    stable = sorted(f"/primary/{u}/{f}" for u in USERS for f in want[u][0])
    for n in range(3):
        assert [f for f in listing(home, tmp_path / f"b{n}.ims") if "/Tmp" not in f] == stable
    with lab.imap("alice") as c:
        for j in range(3):
            if f"Tmp{j}" in c.list():
                c.delete(f"Tmp{j}")
    wipe(lab)
    run(home, "imsrestore", "-f", tmp_path / "b2.ims", check=0)
    after = views(lab)
    after["alice"] = ({n: f for n, f in after["alice"][0].items() if not n.startswith("Tmp")},
                      {n for n in after["alice"][1] if not n.startswith("Tmp")})
    assert after == want


@pytest.mark.parametrize("race", ["log-sequence", "indexid-changed", "stat-gone", "lock-gone"])
def test_dboxlive_a_folder_made_again_while_the_account_is_copied_is_copied_again(lab, tmp_path, race):
    """A folder deleted (and made again) while doveadm backup copies the whole login may
    end dsync not on its desync warning but on the folder's index log ("Can't sync
    mailbox Tmp2: Transaction log ...: duplicate transaction log sequence (2)", exit 75)
    or its files gone ("Mailbox Tmp2: stat(...) failed: No such file or directory",
    "Failed to lock mailbox Tmp2 for dsyncing: ... No such file or directory"): the login
    was named as not backed up ("cannot copy this login, on which dsync stops"),
    exit 1, for a scratch folder.  The copy is made again, as after a desync: exit 0,
    every folder the account has in the archive, the one gone not."""
    home = tmp_path / "ims"
    configure(lab, home)
    fill(lab)
    with lab.imap("alice") as c:
        c.create("Tmp2")
        c.append("Tmp2", message("soon gone"))
    text = {"log-sequence": LOG_SEQUENCE.replace("Mailbox Tmp2: Failed to lookup mailbox status:",
                                                 "Can't sync mailbox Tmp2:"),
            "indexid-changed": INDEXID.replace("Mailbox Tmp2: Failed to lookup mailbox status:",
                                               "Can't sync mailbox Tmp2:"),
            "stat-gone": STAT_GONE, "lock-gone": LOCK_GONE}[race].replace("MAIL", f"{lab.store}/alice")
    env = _doveadm_acting_once(tmp_path, lab, "*\" backup -u alice maildir:\"*",
                               "DOVEADM mailbox delete -u alice Tmp2", f"dsync(alice): Error: {text}")
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", env=env, check=None, text=True)
    assert (tmp_path / "acted").is_dir()
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    got = views(lab)
    assert "Tmp2" not in got["alice"][0]
    assert listing(home, tmp_path / "a.ims") == sorted(f"/primary/{u}/{f}" for u in USERS for f in got[u][0])


def test_a_folder_renamed_between_backups_keeps_keywords_beyond_26_in_both_chain_forms(lab, tmp_path):
    """A folder renamed between a full and a ``--base`` incremental is carried whole under
    its new name with its mailbox GUID, which the old folder still has when the
    incremental is restored on its own (``imsrestore -H -f full`` then ``-f incr``): the
    folder is made without the GUID and gets it once the old one is removed.  Giving a
    Maildir folder another GUID removes its Dovecot index, where keywords beyond the 26
    file-name letters live: the messages' own keywords must survive it.  (Before, the
    -H form lost every keyword beyond the 26th, exit 0, while the one-command form was
    right: found by a helper's chain fuzzer on sdbox and mdbox.)  Random keyword sets,
    random renames; both forms must give what the client saw at the incremental."""
    import random
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    home = tmp_path / "ims"
    configure(lab, home)
    pool = [f"kw{i:02d}" for i in range(40)]
    lab.deliver(list(USERS), message("one"))
    with lab.imap("alice") as c:
        for box in ("Tags", "Keep"):
            c.create(box)
            c.subscribe(box)
            for i in range(rnd.randint(2, 4)):
                n = rnd.randint(27, 35) if (box, i) == ("Tags", 0) else rnd.choice([0, 3, 27, 30])
                kws = rnd.sample(pool, n)
                c.append(box, message(f"{box} {i}"), [*rnd.sample([r"\Seen", r"\Flagged"], rnd.randint(0, 2)),
                                                      *kws])
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "--state-out", tmp_path / "full.state", "/", check=0)
    with lab.imap("alice") as c:
        c.rename("Tags", "Tags-2026")
        if rnd.random() < 0.5:
            c.select("Tags-2026")
            uids = c.uids()
            c.uid_store(uids[:1], "+FLAGS", rnd.sample(pool, 2))
            c.unselect()
    run(home, "imsbackup", "-f", incr, "--base", tmp_path / "full.state", "/", check=0)
    want = views(lab)
    assert max(len(m[1]) for m in want["alice"][0]["Tags-2026"][3]) > 26
    for split in (False, True):
        wipe(lab)
        if split:
            assert run(home, "imsrestore", "-H", "-f", full).returncode == 0
            r = run(home, "imsrestore", "-f", incr)
        else:
            r = run(home, "imsrestore", "-f", full, "-f", incr)
        assert r.returncode == 0, r.stderr
        got = views(lab)
        lost = {(box, a[0]): sorted(a[1] - b[1]) for box, f in want["alice"][0].items()
                for a, b in zip(f[3], got["alice"][0].get(box, (0, 0, 0, ()))[3]) if a != b}
        assert got == want, (f"seed {seed}, -H form {split}: flags lost", lost)


def _mixed_chain(lab, tmp_path):
    """A chain of --base and -d links (full, --base, -d, --base), a client changing flags,
    keywords and subscriptions between them: (home, archives, the client view at the end)."""
    home = tmp_path / "src"
    configure(lab, home)
    lab.deliver(list(USERS), message("one"))
    lab.deliver(list(USERS), message("two"))
    with lab.imap("alice") as c:
        for box in ("Work", "Lists"):
            c.create(box)
            c.subscribe(box)
            c.append(box, message(f"{box} 1"), [r"\Seen", "kw01"])
    a = [tmp_path / f"b{i}.ims" for i in range(4)]

    def flags(login, box, op, fl):
        with lab.imap(login) as c:
            c.select(box)
            c.uid_store(c.uids()[:1], op, fl)
            c.unselect()
    run(home, "imsbackup", "-f", a[0], "--state-out", f"{a[0]}.state", "/", check=0)
    flags("alice", "INBOX", "FLAGS", [r"\Flagged", "$Todo", "kw17"])
    run(home, "imsbackup", "-f", a[1], "--base", f"{a[0]}.state", "--state-out", f"{a[1]}.state", "/", check=0)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    flags("alice", "Work", "FLAGS", [r"\Answered", "kw38"])
    lab.deliver(["bob"], message("three"))
    run(home, "imsbackup", "-f", a[2], "-d", since, "--state-out", f"{a[2]}.state", "/", check=0)
    # the last link: flags of messages it does not carry, and a subscription, change
    flags("alice", "INBOX", "FLAGS", [r"\Draft", "kw35"])
    flags("alice", "Work", "FLAGS", [])
    flags("bob", "INBOX", "+FLAGS", [r"\Seen"])
    with lab.imap("alice") as c:
        c.unsubscribe("Lists")
    run(home, "imsbackup", "-f", a[3], "--base", f"{a[2]}.state", "/", check=0)
    return home, a, views(lab)


def test_a_mixed_chain_cut_short_in_one_command_is_its_end_when_run_again(lab, tmp_path):
    """A chain of --base and -d links restored in one command, interrupted (Ctrl-C,
    SIGKILL) during its last link before that link reached a folder, then run again: the
    folder holds the -d link before it, whose header names no ancestor, so the earlier
    --base links met it as another chain's folder and merged into it: it stopped being a
    mirror, the last link merged too, and its flags and subscriptions were never set;
    exit 0 (alice's INBOX kept an earlier link's flags, "Lists" stayed subscribed; found
    by a helper's chain fuzzer on sdbox).  Now a link earlier in the command than the
    one the folder holds is skipped, as a full older than it is.  Kill points: a
    SIGKILL just after the link before the last one is journaled (its copies given
    back), and one point anywhere and one in the removal of the run's dbox WORK that
    ends it (Ctrl-C on sdbox, SIGKILL on mdbox); a Ctrl-C is "interrupted", 130; each
    rerun exits 0 with the client view of the last backup and no WORK left."""
    import random
    import signal

    from tests.faults import count_steps, run_with_fault, spread
    from tests.helpers import in_home
    src, archives, want = _mixed_chain(lab, tmp_path)
    assert "Lists" not in want["alice"][1]
    cmd = ["imsrestore", *sum((["-f", x] for x in archives), [])]

    def fresh(name):
        wipe(lab)
        home = tmp_path / name
        configure(lab, home)
        return home
    log = tmp_path / "steps.log"
    with in_home(fresh("count")):
        total, p = count_steps(cmd, "/", tmp_path, env={"IMS_FAULT_LOG": str(log)})
    assert p.returncode == 0 and views(lab) == want, p.stderr
    # the journal records a link's folders once its copies are given back: the groups
    # of those records end the links; the last link begins after the third group
    # (with the user each archive held whole, users_held, recorded among them)
    puts = [int(ln.split()[0]) for ln in log.read_text().splitlines()
            if "INSERT INTO restored (user, folder, uidv" in ln or "INSERT INTO users_held (user" in ln]
    groups = [n for i, n in enumerate(puts) if i + 1 == len(puts) or puts[i + 1] != n + 1]
    assert len(groups) == len(archives), groups
    # the run ends removing its dbox WORK (asm.atend)
    last_work = max(int(ln.split()[0]) for ln in log.read_text().splitlines() if ".ims-dbox-work." in ln)
    seed = random.randrange(1 << 30)
    # (three points a layout, to keep it fast: a kill where the last link begins, and
    # Ctrl-C (sdbox) or a kill (mdbox) anywhere and in that last removal)
    other = "int" if lab.layout.name == "sdbox" else "kill"
    # and Ctrl-C at each step of the copy's first folder lock taken (its temporary made,
    # linked, removed) and of the first two let go: a Ctrl-C there kept the lock, and the
    # doveadm giving the finished folders back to Dovecot as the run stopped waited for
    # it for ever (CI: step 88 of 721, a release; a sweep: step 38, a temporary removed)
    steps = [ln for ln in log.read_text().splitlines() if ".ims-dbox-work." in ln]
    locks = [int(ln.split()[0]) for ln in steps if ".temp." in ln and ln.endswith(".dovecot-uidlist.lock")][:3] \
        + [int(ln.split()[0]) for ln in steps if ln.endswith("/dovecot-uidlist.lock")][:2]
    points = [(groups[2] + 1, "kill"), (spread(total - 1, 1, seed)[0], other), (last_work, other),
              *((k, "int") for k in locks)]
    bad = []
    for k, how in points:
        home = fresh(f"k{k}{how}")
        with in_home(home):
            first = run_with_fault(cmd, "/", f"{how}:{k}")
        again = run(home, *cmd)
        got = views(lab)
        # (Ctrl-C before any step of the run, its removal of its dbox WORK at the end
        # included, is "interrupted", 130, and the chain's line naming the archives not
        # restored: before, a Ctrl-C there ended the process by the signal, -2 and no
        # line, as CI found at step 691 of 721)
        cut = first.returncode == 130 and b"imsrestore: interrupted" in first.stderr \
            if how == "int" else first.returncode in (-signal.SIGKILL, 0)
        work = [n for n in os.listdir(lab.store) if n.startswith(".ims-dbox-work.")]
        if not cut or work or again.returncode != 0 or got != want:
            bad.append((k, how, first.returncode, first.stderr[-200:], work, again.returncode, again.stderr[-300:],
                        {u: [(box, want[u][0][box][2:], got[u][0].get(box, (0, 0, None, ()))[2:])
                             for box in want[u][0] if want[u][0][box] != got[u][0].get(box)]
                         for u in USERS if want[u] != got[u]}))
    assert bad == [], (f"seed {seed}, {total} steps, points {points}", bad)


def test_a_date_chain_over_a_dbox_folder_whose_uidvalidity_changed_restores_it(lab, tmp_path):
    """F13 on dbox: between a full and an incremental by date (-d) a folder gets a new
    UIDVALIDITY with its mail files untouched (its index lost, simulated damage, and
    rebuilt by doveadm force-resync), and another is deleted and made again with its
    mail copied back.  The chain, restored into the wiped store in one command and
    archive by archive, gives what the clients saw at the incremental: never exit 7 with
    advice to do what was done."""
    home = tmp_path / "ims"
    configure(lab, home)
    with lab.imap("alice") as c:
        for box in ("Work", "Again"):
            c.create(box)
            for i in range(3):
                c.append(box, message(f"{box} {i}"), [r"\Seen"])
    lab.deliver(list(USERS), message("inbox"))
    time.sleep(2.1)                              # -d has whole seconds
    started = time.time()
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    first = views(lab)
    time.sleep(1.1)
    path = lab.mailbox_path("alice", "Work", "index")
    for name in os.listdir(path):
        if name.startswith("dovecot.index"):
            os.unlink(os.path.join(path, name))
    lab.doveadm("force-resync", "Work", user="alice")
    with lab.imap("alice") as c:
        c.select("Again")
        c.uid_copy(c.uids(), "INBOX")
        c.unselect()
        c.delete("Again")
        c.create("Again")
        c.select("INBOX")
        c.uid_copy(c.uids()[-3:], "Again")
        c.unselect()
        c.append("Work", message("new in work"))
    second = views(lab)
    assert second["alice"][0]["Again"][0] != first["alice"][0]["Again"][0]
    assert second["alice"][0]["Work"][0] != first["alice"][0]["Work"][0]      # rebuilt
    since = time.strftime("%Y%m%d:%H%M%S", time.localtime(started))
    run(home, "imsbackup", "-f", incr, "-d", since, "/", check=0)
    for split in (False, True):
        wipe(lab)
        if split:
            run(home, "imsrestore", "-H", "-f", full, check=0)
            run(home, "imsrestore", "-f", incr, check=0)
        else:
            run(home, "imsrestore", "-f", full, "-f", incr, check=0)
        assert views(lab) == second, split
