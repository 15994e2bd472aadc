"""imsverify --restore-test and --against-store --exact compare what a restore gives back
beyond bytes, flags and UIDs: each message's GUID (Dovecot's X-GUID: dsync,
``pop3_uidl_format = %g``), its Maildir base name (``%f``) and POP3 UIDL and order (the
uidlist's P and O fields), each folder's mailbox GUID (dsync knows a folder by it), and
(the restore test) each user's subscriptions to names that are no folder; and that the
copies of a message that were one file at backup time (a link member and its first
copy) are one file again ("Single copy", docs/operations.md).

Before, both exited 0 ("every check passed", "exactly as the archives hold them") on a
store where any of these differed from the archives: the proof a disaster-recovery
runbook asks for said nothing of what makes POP3 clients download every message again
or every later dsync of the account fail.
"""
from __future__ import annotations

import io
import os
import re
import sqlite3
import time

import pytest

from asm.errors import EXIT_DIFFERS, EXIT_OK
from asm.store import open_store
from tests.helpers import DRIVERS, change_mail, inode_groups, make_home, put, run, verify_inprocess


def _chain(tmp_path, driver):
    """A store whose messages have GUIDs (and, Maildir, POP3 UIDLs and orders), one
    message delivered to two users (one file), a subscription to a name that is no
    folder (Maildir); a full backup, an incremental by --base and one by -d: the chain."""
    home = str(tmp_path / "src")
    store = open_store(make_home(home, driver))
    for i in range(12):
        kw = {"pop3_uidl": f"uidl-{i}", "pop3_order": i + 1} if driver == "maildir" and i % 3 else {}
        put(store, ["joe", "ann"][i % 2], ["INBOX", "Work"][i % 3 == 0], i, flags=["\\Seen"] if i % 2 else [],
            internaldate=1_600_000_000 + i, **kw)
    store.deliver(["joe", "ann"], io.BytesIO(b"Subject: to both\r\n\r\nbody\r\n"), internaldate=1_650_000_000)
    store.subscribe_names("joe", ["Old/Gone"])
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    a = [tmp_path / "full.ims", tmp_path / "incr-base.ims", tmp_path / "incr-d.ims"]
    run(home, "imsbackup", "-f", a[0], "/", check=EXIT_OK)
    change_mail(store, ["joe", "ann"])
    run(home, "imsbackup", "-f", a[1], "--base", a[0], "/", check=EXIT_OK)
    change_mail(store, ["ann", "joe"])
    run(home, "imsbackup", "-f", a[2], "-d", since, "/", check=EXIT_OK)
    return home, store, a


def _uidlist_edit(m, fn):
    """Rewrite the dovecot-uidlist lines of message ``m``'s Maildir folder with ``fn`` (as
    another tool would: the store is not asked, so it numbers nothing meanwhile)."""
    path = os.path.join(os.path.dirname(os.path.dirname(m.path)), "dovecot-uidlist")
    with open(path) as f:
        lines = f.read().split("\n")
    with open(path, "w") as f:
        f.write("\n".join(fn(lines)))


def _record(lines, uid, fn):
    """``lines`` with the record of ``uid`` changed by ``fn(fields, base) -> (fields, base)``."""
    out = []
    for ln in lines:
        head, colon, base = ln.partition(" :")
        words = head.split()
        if colon and words and words[0] == str(uid):
            fields, base = fn(words[1:], base)
            ln = " ".join([words[0], *fields]) + " :" + base
        out.append(ln)
    return out


@pytest.mark.parametrize("driver", DRIVERS)
def test_exact_names_every_identity_a_restore_gives_back(tmp_path, driver):
    """The chain restored into an empty store: --exact passes; then each identity
    changed in the store (as a tool that rewrote the files would leave it) is one named
    difference, exit 19: a message's GUID, a mailbox GUID, a POP3 UIDL and order, a base
    name.  Plain --against-store does not count them (a change since is no failure)."""
    _src, _store, a = _chain(tmp_path, driver)
    chain = [x for f in a for x in ("-f", f)]
    home = str(tmp_path / "restored")
    store = open_store(make_home(home, driver))
    run(home, "imsrestore", *chain, check=EXIT_OK)
    run(home, "imsverify", *chain, "--against-store", "--exact", check=EXIT_OK)
    other = "0123456789abcdef0123456789abcdef"
    joe = store.messages("joe", "INBOX")
    uid = joe[0].uid
    if driver == "classic":
        idx = os.path.join(os.path.dirname(os.path.dirname(joe[0].path)), "store.idx")

        def guid():
            con = sqlite3.connect(idx)
            con.execute("UPDATE guids SET guid=? WHERE uid=?", (other, uid))
            con.commit()
            con.close()
        changes = [(guid, f"/primary/joe/INBOX: message {uid} has GUID '{other}' after the restore, "
                          f"'{joe[0].guid}' in the archive")]
    else:
        ann = store.messages("ann", "INBOX")
        pop3 = [m for m in ann if m.pop3_uidl]
        assert pop3, "the chain restored no POP3 UIDL"
        mailbox_guid = store.folder("ann", "Work").guid
        work = store.messages("ann", "Work")[0]
        assert mailbox_guid
        m0 = joe[0]
        new_base = m0.basename.replace(".M", ".M9", 1)

        def rename():
            d = os.path.dirname(m0.path)
            os.rename(m0.path, os.path.join(d, os.path.basename(m0.path).replace(m0.basename, new_base)))
            _uidlist_edit(m0, lambda L: _record(L, uid, lambda fields, base: ([f"G{m0.guid}", *fields],
                                                                              new_base)))
        changes = [
            (lambda: _uidlist_edit(ann[0], lambda L: _record(
                L, pop3[0].uid, lambda fields, base: ([f for f in fields if f[:1] not in "PO"], base))),
             f"/primary/ann/INBOX: message {pop3[0].uid} has POP3 UIDL and order (uidlist P and O) ('', 0) after "
             f"the restore, ('{pop3[0].pop3_uidl}', {pop3[0].pop3_order}) in the archive"),
            (lambda: _uidlist_edit(ann[0], lambda L: _record(
                L, ann[-1].uid, lambda fields, base: ([*fields, f"G{other}"], base))),
             f"/primary/ann/INBOX: message {ann[-1].uid} has X-GUID '{other}' after the restore, "
             f"'{ann[-1].guid}' in the archive"),
            (lambda: _uidlist_edit(work, lambda L: [L[0].replace(mailbox_guid, other)] + L[1:]),
             f"/primary/ann/Work: its mailbox GUID is {other} after the restore, {mailbox_guid} in the archive"),
            (rename, f"/primary/joe/INBOX: message {uid} has base name (POP3 UIDL %f) '{new_base}' after the "
                     f"restore, '{m0.basename}' in the archive"),
        ]
    seen = []
    for change, line in changes:
        change()
        seen.append(line)
        p = run(home, "imsverify", "-v", *chain, "--against-store", "--exact", text=True)
        got = [ln.removeprefix("imsverify: exact: ") for ln in p.stderr.splitlines() if " exact: " in ln]
        assert p.returncode == EXIT_DIFFERS and sorted(got) == sorted(seen), (line, p.stderr)
    run(home, "imsverify", *chain, "--against-store", check=EXIT_OK)


@pytest.mark.parametrize("driver", DRIVERS)
def test_restore_test_fails_a_restore_that_loses_what_dsync_and_pop3_clients_know(tmp_path, driver, monkeypatch):
    """A restore that wrote every message's bytes, flags and UID but lost the rest (a
    regression simulated in the store and the restore planner): --restore-test of the
    chain fails, 19, naming each message and folder; with the restore as it is, it
    passes.  (Before, it passed either way.)"""
    home, _store, a = _chain(tmp_path, driver)
    argv = [x for f in a for x in ("-f", str(f))] + ["--restore-test", "-v"]
    status, text = verify_inprocess(argv, home)
    assert status == EXIT_OK, text

    from asm.restore.plan import Planner
    from asm.store.classic import ClassicStore
    from asm.store.maildir.store import MaildirStore
    cls = ClassicStore if driver == "classic" else MaildirStore
    append = cls.append

    def forgetful(self, *args, **kw):
        for k in ("guid", "basename", "pop3_uidl", "pop3_order"):
            kw.pop(k, None)
        return append(self, *args, **kw)
    monkeypatch.setattr(cls, "append", forgetful)
    monkeypatch.setattr(Planner, "own_guid", lambda self, *a: "")
    if driver == "maildir":
        monkeypatch.setattr(MaildirStore, "subscribe_names", lambda self, user, names: None)
    status, text = verify_inprocess(argv, home)
    lines = [ln for ln in text.splitlines() if "restore test: /primary/" in ln]
    assert status == EXIT_DIFFERS, text
    want = {"GUID" if driver == "classic" else "X-GUID"}
    if driver == "maildir":
        want |= {"base name", "POP3 UIDL", "mailbox GUID", "subscription"}
    for what in want:
        assert any(what in ln for ln in lines), (what, text)
    if driver == "maildir":
        assert "imsverify: restore test: /primary/joe: the subscription to 'Old/Gone' (no folder) was not " \
               "restored" in text, text
    n = sum(1 for ln in lines if re.search(r"message \d+ has (X-)?GUID", ln))
    assert n >= 12, text          # every message the chain holds, not one


@pytest.mark.parametrize("driver", DRIVERS)
def test_exact_and_restore_test_fail_a_single_copy_stored_twice(tmp_path, driver, monkeypatch):
    """Messages delivered to several users (one file) in a full and an incremental: the
    chain restored gives them back as one file each, --exact and --restore-test pass.
    Each copy made a file of its own (as cp without -l, or a restore that copied instead
    of linking, leaves it) is named by --exact, exit 19, and --restore-test of a restore
    that copies every link names every link.  (Before, both passed: 500 users' copies
    of one message restored as 500 files.)"""
    home = str(tmp_path / "src")
    store = open_store(make_home(home, driver))
    for user in ("joe", "ann", "bob"):
        store.create_user(user)
    for i in range(4):
        store.deliver(["joe", "ann", "bob"][: 2 + i % 2], io.BytesIO(b"Subject: all %d\r\n\r\nx\r\n" % i),
                      internaldate=1_650_000_000 + i)
    put(store, "joe", "INBOX", 99, internaldate=1_600_000_000)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    a = [tmp_path / "full.ims", tmp_path / "incr.ims"]
    run(home, "imsbackup", "-f", a[0], "/", check=EXIT_OK)
    time.sleep(1.1)
    for i in range(2):
        store.deliver(["ann", "bob", "joe"], io.BytesIO(b"Subject: later %d\r\n\r\ny\r\n" % i),
                      internaldate=1_700_000_000 + i)
    run(home, "imsbackup", "-f", a[1], "-d", since, "/", check=EXIT_OK)
    chain = [x for f in a for x in ("-f", str(f))]
    dst = str(tmp_path / "restored")
    restored = open_store(make_home(dst, driver))
    run(dst, "imsrestore", *chain, check=EXIT_OK)
    groups = inode_groups(restored)
    assert groups == inode_groups(store) and len(groups) == 6, groups
    run(dst, "imsverify", *chain, "--against-store", "--exact", check=EXIT_OK)
    status, text = verify_inprocess(chain + ["--restore-test"], home)
    assert status == EXIT_OK, text

    # each copy a file of its own, one at a time
    for group in groups:
        user, folder, uid = group[-1]
        m = restored.message(user, folder, uid)
        tmp = m.path + ".copy"
        with open(m.path, "rb") as f, open(tmp, "wb") as out:
            out.write(f.read())
        os.utime(tmp, (m.internaldate, m.internaldate))
        os.rename(tmp, m.path)
        p = run(dst, "imsverify", "-v", *chain, "--against-store", "--exact", text=True)
        lines = [ln for ln in p.stderr.splitlines() if " exact: " in ln]
        assert p.returncode == EXIT_DIFFERS and len(lines) == 1 and \
            f"exact: /primary/{user}/{folder}: message {uid} is a file of its own after the restore" in lines[0], \
            (group, p.stderr)
        os.unlink(m.path)               # one file again, as the restore made it
        os.link(restored.message(*group[0]).path, m.path)
    run(dst, "imsverify", *chain, "--against-store", "--exact", check=EXIT_OK)

    # a restore that copies each link instead of linking it
    from asm.store.classic import ClassicStore
    from asm.store.maildir.store import MaildirStore
    cls = ClassicStore if driver == "classic" else MaildirStore
    append = cls.append

    def copying(self, user, folder, src, **kw):
        link_from = kw.pop("link_from", None)
        if src is None and link_from is not None:
            with open(link_from, "rb") as f:
                return append(self, user, folder, f, **kw)
        return append(self, user, folder, src, link_from=link_from, **kw)
    monkeypatch.setattr(cls, "append", copying)
    status, text = verify_inprocess(chain + ["--restore-test", "-v"], home)
    named = [ln for ln in text.splitlines() if "is a file of its own after the restore" in ln]
    assert status == EXIT_DIFFERS and len(named) == sum(len(g) - 1 for g in groups), text
