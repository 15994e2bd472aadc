"""The commands a restore's error lines tell the administrator to run name the real
login and folder, shell-quoted, whatever they hold (spaces, quotes, %, ;, non-ASCII):
a dbox give-back that failed, a dbox folder the Maildir copy cannot hold, an ACL whose
lock was held.  Each line's command, parsed as sh parses it, gives back exactly the
identifiers (tests/test_dovecot_acl.py runs the ACL commands against a real Dovecot).
"""
from __future__ import annotations

import re
import types

import pytest

from asm.restore.plan import Planner
from asm.store.base import StoreError
from asm.store.maildir import dbox
from asm.store.maildir.dbox import DboxStore
from tests.helpers import sh_commands

USERS = ["alice", "o'brien smith@example.com", 'a"b;c%d@exämple.org']
FOLDERS = ['Q "1" 50%; Été', "Work/it's; rm -rf x", "v%2e", "100%"]


def _store(**kw) -> DboxStore:
    s = DboxStore.__new__(DboxStore)        # (no Dovecot: only the messages are looked at)
    s._renamed, s._unsynced, s._aside = {}, {}, {}
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_a_dbox_folder_a_killed_restore_left_aside_is_named_with_the_rename_to_run(user, folder):
    """(tests/test_dbox_moving_killed.py: a folder moved aside that the archive gives no
    name) the rename the line names runs as one command whatever the names hold."""
    why = DboxStore._aside_why(user, [folder], "the restored mail was given to Dovecot")
    m = re.search(r"\((doveadm mailbox rename .*?NEW-NAME)\)$", why)
    assert m, why
    assert sh_commands(m.group(1)) == [["doveadm", "mailbox", "rename", "-u", user, folder, "NEW-NAME"]]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_a_dbox_folder_the_copy_cannot_hold_is_named_with_the_rename_to_run(user, folder):
    with pytest.raises(StoreError) as e:
        _store(_renamed={user: [folder]})._refuse_renamed(user)
    m = re.search(r"\((doveadm mailbox rename .*?NEW-NAME)\) and restore again$", str(e.value))
    assert m, str(e.value)
    assert sh_commands(m.group(1)) == [["doveadm", "mailbox", "rename", "-u", user, folder, "NEW-NAME"]]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_a_dbox_give_back_doveadm_did_not_keep_names_the_fetch_to_compare(user, folder):
    """doveadm backup gave the folder back, and the account does not hold what the copy
    does: the line names the doveadm fetch to compare with the archive."""
    listings = {(False, True): {folder: "x"}, (False, False): {folder: "a"}, (True, False): {folder: "b"}}
    s = _store(_pending={user}, _touched={user: {folder}}, _seen={user: {folder: "x"}},
               _dv=types.SimpleNamespace(run=lambda *a, **k: ""))
    s._listing = lambda u, maildir=False, modseq=False: listings[(maildir, modseq)]
    s._give_folders_back = lambda u, scope, copy: {}
    s._maildir = lambda u: "/nonexistent"
    s._location_of = lambda u: "sdbox:/nonexistent"
    with pytest.raises(StoreError) as e:
        s._give_back(user)
    m = re.search(r"compare the output of (doveadm fetch .*? all) with the archive$", str(e.value))
    assert m, str(e.value)
    assert sh_commands(m.group(1)) == [["doveadm", "fetch", "-u", user, "mailbox uid guid flags", "all"]]
    assert repr(folder) in str(e.value)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("claimed", [True, False])
def test_a_dbox_give_back_stopped_on_a_desync_names_the_kick(user, claimed):
    line = dbox._stopped_why(user, FOLDERS[0], "desync", claimed)
    m = re.search(r"\((doveadm kick .*?); dovecot.holdfile", line)
    assert m and sh_commands(m.group(1)) == [["doveadm", "kick", user]], line
    assert repr(FOLDERS[0]) in line


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("acl,have", [("", "user=bob lrs\nanyone l\n-user=carol w\n"),
                                      ("user=carol lrwi\n-anyone w\n", "user=bob lr\n"),
                                      ("user=bob lr\n", "")])
def test_an_acl_lock_timeout_names_the_doveadm_acl_commands(user, folder, acl, have):
    planner = types.SimpleNamespace(store=types.SimpleNamespace(acl=lambda u, f: have))
    line = Planner._acl_locked_why(planner, user, folder, acl, "/x/dovecot-acl.lock")
    cmds = sh_commands(line.split(" yourself: ", 1)[1])
    assert all(c[:3] in (["doveadm", "acl", "set"], ["doveadm", "acl", "delete"]) and
               c[3:7] == ["-u", user, "--", folder] for c in cmds), line
    sets = {c[7]: c[8:] for c in cmds if c[2] == "set"}
    deletes = [c[7] for c in cmds if c[2] == "delete" and len(c) == 8]
    if acl == "":
        assert not sets and deletes == ["user=bob", "anyone", "user=carol"], line
        assert "its archived ACL, none" in line
    elif have == "":
        assert sets == {"user=bob": ["lookup", "read"]} and not deletes, line
    else:
        assert sets == {"user=carol": ["lookup", "read", "write", "insert"], "anyone": ["-write"]}
        assert deletes == ["user=bob"], line
