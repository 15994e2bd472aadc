"""A folder made by the classic store's plain create_folder (mboxutil -c, imsimport,
imsdeliver into a folder not there) is never listed, after a power cut, without its
directory (docs/classic-store.md, "The folder index").  A power cut cannot be made in a
test: the order log (IMS_FAULT=order, tests/fault/sitecustomize.py) shows what came
before what, and the check is the one tests/test_restore_durability.py makes of a
restore: a commit of the mailbox list may reach the disk at once, so when the folder's
row commits, every directory entry its directory depends on (each directory the run
made for it, up to the partition, and its index renamed into place) must be durable:
an fsync of the directory holding it, or a syncfs, came in between.  (Before, the
directory's own entry in its parent was synced by nothing: on a filesystem that does
not keep metadata in order, the list's commit, made durable by its checkpoint, could
survive a power cut that lost the folder's directory, and every command then called the
folder damaged.)  And the cost stays small: syncs per new folder, one level deep, 3."""
from __future__ import annotations

import pytest

from asm.store import open_store
from tests.faults import run_with_fault
from tests.helpers import in_home, make_home, run
from tests.test_restore_durability import _events, _power_cut_problems


def _syncs(events) -> int:
    return sum(1 for _, kind, _ in events if kind in ("fsync", "fdatasync", "syncfs", "sync"))


@pytest.mark.parametrize("argv, before", [
    (["mboxutil", "-c", "user/ann"], []),                                   # a user and INBOX
    (["mboxutil", "-c", "user/ann/Work"], [["mboxutil", "-c", "user/ann"]]),
    (["mboxutil", "-c", "user/ann/Deep/er/est"], [["mboxutil", "-c", "user/ann"]]),   # new levels
    (["mboxutil", "-c", "user/ann/Deep"], [["mboxutil", "-c", "user/ann/Deep/er"]]),  # its directory there
])
def test_a_power_cut_never_leaves_a_new_folder_listed_without_its_directory(tmp_path, argv, before):
    home = tmp_path / "home"
    cfg = make_home(home, "classic")
    for b in before:
        run(home, *b, env={"IMS_HOME": str(home)}, check=0)
    log = tmp_path / "order"
    with in_home(home):
        p = run_with_fault(argv, home, f"order:{log}", env={"IMS_HOME": str(home)})
        assert p.returncode == 0, p.stderr
        store = open_store(cfg)
        events = _events(log)
        assert _power_cut_problems(events, store) == []
        user, _, folder = argv[-1].partition("/")[2].partition("/")
        assert store.folder(user, folder or "INBOX").uidnext == 1
    if argv[-1] == "user/ann/Work":
        assert _syncs(events) <= 3          # the index (2), the folder's entry (1)
