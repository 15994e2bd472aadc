"""Chains of backups of a selection (a folder path, store.backupexclude): a restore of
the chain gives the selection as the chain's last backup saw it, nothing the backups
between them deleted."""
from __future__ import annotations

import io
import time

import pytest

from asm.store import open_store
from tests.dovecot_lab import lab_fixture, message
from tests.helpers import make_home, msg, run, state
from tests.test_dovecot_layouts import configure


def _folders(store, user):
    return sorted(k[1] for k in state(store, {user}) if len(k) == 2)


@pytest.mark.parametrize("path,exclude", [
    ("/primary/user/joe/Trash", "Trash"),       # named explicitly: its subfolders are backed up too
    ("/primary/joe/trash", None),               # a folder named but for case (match_folder)
    ("/primary/joe/trash", "Trash%Junk"),
    ("/primary/user/joe/Work", "Work/old"),     # a parent named: the excluded child is taken
])
def test_a_subfolder_deleted_between_backups_of_a_folder_path_stays_deleted(tmp_path, driver, path, exclude):
    """A full and an incremental of /primary/user/joe/Trash with store.backupexclude =
    Trash (the path names Trash, so the backup takes Trash and Trash/old anyway), and
    Trash/old deleted between them: a restore of the chain brought Trash/old back from
    the full, exit 0 ("outside what the chain's last archive covers"), although the
    incremental's backup looked at Trash/old and found it gone.  The same with the path
    written /primary/joe/trash (the backup takes Trash: folder names match but for case
    when nothing matches exactly), with or without an exclude."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_home(src, driver)
    if exclude:
        run(src, "msconfig", "set", "store.backupexclude", exclude, check=0)
    store = open_store(make_home(src, driver))
    top = "Work" if "Work" in path else "Trash"
    gone, kept = f"{top}/old", f"{top}/new"
    store.create_user("joe")
    for n, f in enumerate([top, gone, kept, "Other"]):
        store.create_folder("joe", f, subscribed=True)
        for k in range(3):
            store.append("joe", f, io.BytesIO(msg(n * 10 + k)), flags=["\\Seen"] if k else [])
    time.sleep(1.1)
    full, inc = tmp_path / "full.ims", tmp_path / "inc.ims"
    run(src, "imsbackup", "-f", full, path, check=0)
    store.delete_folder("joe", gone)
    store.append("joe", kept, io.BytesIO(msg(99)), flags=[])
    time.sleep(1.1)
    run(src, "imsbackup", "-f", inc, "--base", full, path, check=0)
    want = {k: v for k, v in state(store, {"joe"}).items() if k[1].startswith(top)}
    make_home(dst, driver)
    p = run(dst, "imsrestore", "-f", full, "-f", inc, text=True)
    assert p.returncode == 0, p.stderr
    target = open_store(make_home(dst, driver))
    assert _folders(target, "joe") == ["INBOX", top, kept]
    got = state(target, {"joe"})
    assert {k: v for k, v in got.items() if k[1] != "INBOX"} == want
    # a second run of the same chain changes nothing
    run(dst, "imsrestore", "-f", full, "-f", inc, check=0)
    assert state(target, {"joe"}) == got
    # imsverify's view of the chain is the restore's
    p = run(src, "imsverify", "-f", full, "-f", inc, "--restore-test", text=True)
    assert p.returncode == 0, p.stderr
    # the full, then the incremental, one at a time (a restore of a chain archive by
    # archive removes what the next link no longer lists): the same store.  Before, the
    # removal was only for archives of whole users: Trash/old stayed, exit 0
    dst2 = tmp_path / "dst2"
    make_home(dst2, driver)
    run(dst2, "imsrestore", "-H", "-f", full, check=0)
    p = run(dst2, "imsrestore", "-v", "-f", inc, text=True)
    assert p.returncode == 0, p.stderr
    got2 = state(open_store(make_home(dst2, driver)), {"joe"})
    assert {k: v for k, v in got2.items() if k[1] != "INBOX"} == want, p.stderr



def _joe_and_ann(src, driver, seen_too: bool = False):
    """joe and ann, each with Trash, Trash/old, Other and Other/sub (subscribed), one
    message in each (a second, \\Seen, with ``seen_too``); then a second passes."""
    store = open_store(make_home(src, driver))
    for user in ("joe", "ann"):
        store.create_user(user)
        for n, f in enumerate(["Trash", "Trash/old", "Other", "Other/sub"]):
            store.create_folder(user, f, subscribed=True)
            store.append(user, f, io.BytesIO(msg(n)), flags=[])
            if seen_too:
                store.append(user, f, io.BytesIO(msg(n + 10)), flags=["\\Seen"])
    time.sleep(1.1)
    return store


def _full_then_deletions(src, store, tmp_path):
    """A full of / (full.ims), then Trash/old and Other/sub of both users deleted:
    (full.ims, the incremental's name inc.ims, the state at the full)."""
    full, inc = tmp_path / "full.ims", tmp_path / "inc.ims"
    run(src, "imsbackup", "-f", full, "/", check=0)
    at_full = state(store)
    for user in ("joe", "ann"):
        store.delete_folder(user, "Trash/old")
        store.delete_folder(user, "Other/sub")
    return full, inc, at_full

@pytest.mark.parametrize("exclude", [None, "Trash"])
def test_an_incremental_of_one_folder_on_a_full_of_the_store_removes_nothing_else(tmp_path, driver, exclude):
    """A full of / and an incremental of /primary/user/joe/Trash alone (its backup looked
    at Trash and its subfolders, nothing else): restored archive by archive or in one
    command, a folder deleted under Trash stays deleted and every other folder (joe's
    and ann's, deleted since or not) is as the full holds it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    store = _joe_and_ann(src, driver)
    full, inc, at_full = _full_then_deletions(src, store, tmp_path)
    if exclude:
        run(src, "msconfig", "set", "store.backupexclude", exclude, check=0)
    time.sleep(1.1)
    run(src, "imsbackup", "-f", inc, "--base", full, "/primary/user/joe/Trash", check=0)
    want = {k: v for k, v in at_full.items() if k[:2] != ("joe", "Trash/old") and k[:2] != ("joe", "Trash")}
    want.update({k: v for k, v in state(store, {"joe"}).items() if k[1] == "Trash"})
    for how in ("chain", "one by one"):
        home = dst / how.replace(" ", "")
        make_home(home, driver)
        if how == "chain":
            p = run(home, "imsrestore", "-f", full, "-f", inc, text=True)
        else:
            run(home, "imsrestore", "-H", "-f", full, check=0)
            p = run(home, "imsrestore", "-f", inc, text=True)
        assert p.returncode == 0, p.stderr
        assert state(open_store(make_home(home, driver))) == want, how


lab = lab_fixture("plain")


def test_a_folder_path_chain_archive_by_archive_on_dovecot_as_a_client_sees_it(lab, tmp_path):
    """On a live Dovecot: the user's Trash backed up by path (store.backupexclude = Trash,
    so named explicitly), Trash/old deleted over IMAP, the incremental, then Trash lost
    and the chain restored archive by archive while LMTP delivers: the client sees Trash
    as at the incremental (Trash/old gone, as before the loss), every delivery in INBOX,
    and Work, which no backup of the chain looked at since the full, untouched."""
    u = lab.logins[0]
    home = tmp_path / "ims"
    configure(lab, home)
    run(home, "msconfig", "set", "store.backupexclude", "Trash", check=0)
    with lab.imap(u) as c:
        for f in ("Trash", "Trash/old", "Trash/keep", "Work"):
            c.create(f)
            c.subscribe(f)
            for i in range(3):
                c.append(f, message(f"{f} {i}"), [r"\Seen"] if i else [])
    full, inc = tmp_path / "full.ims", tmp_path / "inc.ims"
    run(home, "imsbackup", "-f", full, f"/primary/user/{u}/Trash", check=0)
    time.sleep(1.1)
    with lab.imap(u) as c:
        c.delete("Trash/old")
        c.append("Trash/keep", message("new"), [])
    lab.fix_owner()
    run(home, "imsbackup", "-f", inc, "--base", full, f"/primary/user/{u}/Trash", check=0)
    want = lab.client_state(u)
    with lab.imap(u) as c:
        c.delete("Trash/keep")
        c.delete("Trash")
    run(home, "imsrestore", "-H", "-f", full, check=0)
    lab.deliver([u], message("during the chain"))
    p = run(home, "imsrestore", "-f", inc, text=True)
    assert p.returncode == 0, p.stderr
    lab.deliver([u], message("after the chain"))
    got = lab.client_state(u)
    assert sorted(got.folders) == sorted(want.folders), p.stderr
    for name in ("Trash", "Trash/keep", "Work"):
        assert [(m.uid, m.flags, m.sha256) for m in got[name].messages] == \
               [(m.uid, m.flags, m.sha256) for m in want[name].messages], name
        assert (got[name].uidvalidity, got[name].uidnext) == (want[name].uidvalidity, want[name].uidnext), name
    assert len(got["INBOX"].messages) == len(want["INBOX"].messages) + 2


@pytest.mark.parametrize("path", ["/primary/joe/Trash", "/primary/user/joe/Trash/", "/primary/joe/Trash/old"])
def test_a_folder_path_restored_archive_by_archive_loses_its_deleted_subfolders(tmp_path, driver, path):
    """Backups of the whole store (a full, an incremental); joe's Trash/old and Other/sub
    deleted between them.  The full restored whole, then the incremental with a path
    naming Trash: Trash/old stayed (exit 0, '1 expunged' for Trash's own change), where the
    same path given to the chain in one command leaves it out.  Now the incremental
    removes it; Other/sub, which the path does not take, is left as the full's restore
    made it, and so is ann."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    store = _joe_and_ann(src, driver, seen_too=True)
    full, inc, at_full = _full_then_deletions(src, store, tmp_path)
    store.expunge("joe", "Trash", [1])
    time.sleep(1.1)
    run(src, "imsbackup", "-f", inc, "--base", full, "/", check=0)
    at_inc = state(store)
    make_home(dst, driver)
    run(dst, "imsrestore", "-H", "-f", full, check=0)
    p = run(dst, "imsrestore", "-f", inc, path, text=True)
    want = dict(at_full)
    for k in list(want):
        if k[0] == "joe" and (k[1] == "Trash/old" or k[1] == "Trash" and "old" not in path):
            del want[k]
    want.update({k: v for k, v in at_inc.items() if k[0] == "joe" and k[1] == "Trash" and "old" not in path})
    got = state(open_store(make_home(dst, driver)))
    if path.endswith("old"):
        # the path names the deleted folder itself: it matches nothing in the incremental
        # (exit 2, nothing written), and the folder is left as the full's restore made it
        assert p.returncode == 2 and "nothing in the archive matches" in p.stderr, p.stderr
        assert got == at_full
        return
    assert p.returncode == 0, p.stderr
    assert got == want
    # the chain in one command with the same path, into an empty store: the same folders
    dst2 = tmp_path / "dst2"
    make_home(dst2, driver)
    run(dst2, "imsrestore", "-f", full, "-f", inc, path, check=0)
    assert state(open_store(make_home(dst2, driver)), {"joe"}) == \
        {k: v for k, v in want.items() if k[0] == "joe" and k[1].startswith("Trash")} | \
        {k: v for k, v in state(open_store(make_home(dst2, driver)), {"joe"}).items() if k[1] == "INBOX"}


def test_the_listing_takes_what_the_restore_with_the_same_paths_takes(tmp_path, driver):
    """An archive of backup group gA (ann), listed and restored where no group gA is
    configured: /primary/gA selects the users the archive records in gA, for -t and the
    restore alike.  Where gA is also a user of the store, the restore reads /primary/gA as
    that user (nothing of the group's users merges into it) and matches nothing (exit 2),
    while -t listed ann, exit 0: a check of the tape promised what the restore did not do."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    cfg = make_home(src, driver)
    with open(cfg.groups_path, "w") as f:
        f.write("gA=[a-f].*\n")
    store = open_store(make_home(src, driver))
    store.create_user("ann")
    store.append("ann", "INBOX", io.BytesIO(msg(1)), flags=[])
    a = tmp_path / "a.ims"
    run(src, "imsbackup", "-f", a, "/primary/gA", check=0)
    make_home(dst, driver)
    target = open_store(make_home(dst, driver))
    # no gA here: the group the archive records
    t = run(dst, "imsrestore", "-t", "-f", a, "/primary/gA", text=True)
    assert t.returncode == 0 and [ln.split("\t")[0] for ln in t.stdout.splitlines()
                                  if "\tuidvalidity=" in ln] == ["/primary/ann/INBOX"], t.stderr
    # gA a user here: the path is that user, for the restore and the listing
    target.create_user("gA")
    before = state(target)
    t = run(dst, "imsrestore", "-t", "-f", a, "/primary/gA", text=True)
    p = run(dst, "imsrestore", "-f", a, "/primary/gA", text=True)
    assert p.returncode == 2 and "/primary/gA: nothing in the archive matches" in p.stderr, p.stderr
    assert state(target) == before
    assert t.returncode == 2 and t.stdout == "" and "/primary/gA: nothing in the archive matches" in t.stderr, \
        (t.stdout, t.stderr)
    # the restore with no such user takes ann, as listed
    target.delete_user("gA")
    run(dst, "imsrestore", "-f", a, "/primary/gA", check=0)
    assert state(target, {"ann"}) == state(store, {"ann"})
