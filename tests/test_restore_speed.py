"""What a restore's speed rests on, counted in system calls (issue 17, bench/RESULTS.md,
thirteenth pass): a count does not depend on how loaded the machine is, a time does.

A restore into an empty store makes every folder it restores: on a store of many small
folders the cost of making one is a large part of the run, and syncs are the dearest part
of it (each waits for the disk)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from asm.store import open_store

STRACE = shutil.which("strace")

_CHILD = r"""
import sys
from asm.config import Config
from asm.store import open_store
store = open_store(Config(home=sys.argv[1]))
n = int(sys.argv[2])
store.create_user("joe")
for i in range(n):
    store.create_folder("joe", f"F{i}", uidvalidity=1000 + i, uidnext=7)
"""


def _syncs(home, n: int, out) -> int:
    """fsync and fdatasync calls of a process that makes a user and ``n`` folders."""
    if STRACE is None:
        pytest.skip("strace is not installed")
    subprocess.run([STRACE, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out),
                    sys.executable, "-c", _CHILD, str(home), str(n)],
                   check=True, env={**os.environ, "IMS_HOME": str(home)})
    calls = 0
    for line in open(out):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$", line)
        if m:
            calls += int(m.group(1))
    return calls


@pytest.mark.parametrize("driver", ["classic"])
def test_a_new_classic_folder_costs_two_syncs_not_four(tmp_path, driver):
    """Its index is built aside and renamed into place: one sync of the file, one of the
    directory (made in place, its first SQLite commit synced the journal twice, the
    directory and the index)."""
    from asm.config import Config
    costs = []
    for n in (0, 12):
        home = tmp_path / f"home{n}"
        Config(home=str(home)).set("store.driver", driver)
        costs.append(_syncs(home, n, tmp_path / f"strace{n}"))
        store = open_store(Config(home=str(home)))
        for i in range(n):                  # and each folder is as asked, its index whole
            f = store.folder("joe", f"F{i}")
            assert (f.uidvalidity, f.uidnext) == (1000 + i, 7)
    assert (costs[1] - costs[0]) / 12 <= 2, costs


def test_a_new_classic_index_left_half_built_by_a_killed_process_goes(tmp_path):
    """A process killed while it built a folder's index aside left its temporary (and
    no folder: the mailbox list never got the row); making the folder removes it."""
    from asm.config import Config
    home = tmp_path / "home"
    Config(home=str(home)).set("store.driver", "classic")
    store = open_store(Config(home=str(home)))
    store.create_user("joe")
    fdir = store._folder_dir("joe", "Work")
    os.makedirs(fdir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = os.path.join(fdir, f"store.idx.new-{dead.pid}")
    with open(left, "wb") as f:
        f.write(b"SQLite format 3\0half")
    store.create_folder("joe", "Work", uidvalidity=77, uidnext=5)
    assert not os.path.exists(left)
    assert sorted(n for n in os.listdir(fdir) if n.startswith("store.idx")) == ["store.idx"]
    f = open_store(Config(home=str(home))).folder("joe", "Work")
    assert (f.uidvalidity, f.uidnext) == (77, 5)
