"""Power cuts in the restores tests/test_restore_powercut.py does not cut: beside (-n)
over a whole store and over one user (a partial restore), without the duplicate check
(-i), once and twice in a row.

The cut is simulated as there (tests/fault/sitecustomize.py, IMS_FAULT_DURABLE: the
journal put back as its last sync left it, the store's files kept), on other corpora and
seeds.  IMS_KILL_SEED repeats a seed.
"""
from __future__ import annotations

import os
import shutil

import pytest

from asm.config import Config
from asm.store import open_store
from tests.faults import count_steps, spread
from tests.helpers import DRIVERS, in_home, make_home, state
from tests.restore_faults import Harness, backup, build_source, message_files
from tests.test_restore_powercut import PowerCutHarness, _links, _rows

SEED = int(os.environ.get("IMS_KILL_SEED") or __import__("time").time_ns() % 1_000_000)


def _marks(home) -> list[str]:
    """Maildir restore marks (ims-restoring.*) anywhere in the installation."""
    return sorted(os.path.join(d, f) for d, _dirs, files in os.walk(str(home))
                  for f in files if f.startswith("ims-restoring."))


class AgainHarness(PowerCutHarness):
    """``imsrestore OPTION`` (-n: beside; -i: no duplicate check) of ``archive`` into an
    installation that holds it already, cut (``cut``: a power cut; else a kill, the
    journal kept); the same command again must leave what an uncut run leaves: for -n
    one folder beside each, whole, nothing half restored or empty beside it; for -i one
    more copy of each message, not two."""

    rerun_completed = False         # run again after it completed, -n and -i do more

    def __init__(self, workdir, source_store, archive, driver, option, paths=(), cut=True):
        super().__init__(workdir, source_store, archive, driver, None, None,
                         prepare=["imsrestore", "-c", "y", "-f", archive])
        self.argv = ["imsrestore", "-c", "y", option, "-f", archive, *paths]
        self.cut = cut

    def count(self) -> int:
        home = self.fresh()
        n, p = count_steps(self.argv, home, self.work, env={"IMS_HOME": home})
        assert p.returncode == 0, p.stderr
        target = open_store(Config(home), create=False)
        self.want, self.want_links = state(target), _links(target)
        self.want_files = message_files(home, self.driver)
        self.want_rows = _rows(home)
        shutil.rmtree(home, ignore_errors=True)
        return n

    def run_fault(self, home: str, spec: str):
        if self.cut:
            return super().run_fault(home, spec)
        return Harness.run_fault(self, home, spec)

    def judge(self, home: str) -> list[str]:
        problems = super().judge(home)
        left = _marks(home)
        if left:
            problems.append(f"marks left: {left[:3]}")
        return problems


def _trials(h: AgainHarness, seed: int, points: int) -> list:
    os.makedirs(h.work, exist_ok=True)
    total = h.count()
    return h.trials([dict(point=p, second=(max(1, total // 3) if i % 3 == 2 else None))
                     for i, p in enumerate(spread(total, points, seed))])


def _judged(outcomes: list) -> None:
    bad = [(a, o) for a, o in outcomes if not o.ok]
    assert not bad, (f"IMS_KILL_SEED={SEED}: {len(bad)} of {len(outcomes)} trials wrong:\n"
                     + "\n".join(f"  {a} point {o.point}: exits {o.first}/{o.second}/{o.final}: "
                                 f"{o.problems}" for a, o in bad[:5]))


def _source(tmp_path, driver, seed):
    home = tmp_path / "src"
    make_home(home, driver)
    with in_home(home):
        store = open_store(Config(str(home)))
        build_source(store, users=2, messages=14, big=700, seed=seed)
        full = backup(home, tmp_path / "full.ims")
    return store, full


@pytest.mark.parametrize("driver", DRIVERS)
def test_power_cut_in_a_beside_restore_then_the_same_command_goes_on_in_its_folders(tmp_path, driver):
    """-n over the whole store, and over one user's folders (a partial restore), cut at
    points spread over the run, once in three cut again in the rerun: the same command
    run again ends as an uncut run.  (Before, the power cut lost the command's token
    and its beside rows, which no sync covered: the rerun made every folder it had begun
    once more, Work-YYYYMMDD-2 beside the half-restored Work-YYYYMMDD, or beside an
    empty one when the cut came before the folder's index or mark reached the disk;
    exit 0.)"""
    seed = SEED * 10 + DRIVERS.index(driver)
    store, full = _source(tmp_path, driver, seed)
    outcomes = []
    for k, paths in enumerate(((), ("/primary/user/zoë",))):
        h = AgainHarness(tmp_path / f"h{k}", store, full, driver, "-n", paths)
        outcomes += [(paths, o) for o in _trials(h, seed + k, 4)]
        assert h.lost, "no trial lost journal records: the cut is not simulated"
    _judged(outcomes)


@pytest.mark.parametrize("driver", DRIVERS)
def test_cut_ignore_duplicates_restore_then_the_same_command_stores_one_copy(tmp_path, driver):
    """-i over a store that holds the archive already (one more copy of each message,
    as asked), cut by a power cut at points spread over the run, and killed (the
    journal kept): the same command run again exits 0 with exactly one more copy of each
    message.  (Before, the power cut lost the journal's record of the UID the command
    began at in each folder (Journal.mark_run, never synced): the rerun took what the
    cut run had stored for mail that was there before it and stored a second copy of
    all of it, exit 0; and after a kill the rerun named every archived UID the message
    there before the command held as 'held by other messages stored since its restore
    began', exit 1.)"""
    seed = SEED * 10 + 5 + DRIVERS.index(driver)
    store, full = _source(tmp_path, driver, seed)
    outcomes = []
    for cut in (True, False):
        h = AgainHarness(tmp_path / f"i{cut}", store, full, driver, "-i", cut=cut)
        outcomes += [(("cut" if cut else "killed"), o) for o in _trials(h, seed + cut, 3)]
        assert h.lost or not cut, "no trial lost journal records: the cut is not simulated"
    _judged(outcomes)
