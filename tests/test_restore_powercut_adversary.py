"""Power cuts in the restores tests/test_restore_powercut.py does not cut: beside (-n)
over a whole store and over one user (a partial restore), twice in a row.

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
from tests.faults import spread
from tests.helpers import DRIVERS, in_home, make_home, state
from tests.restore_faults import backup, build_source, message_files
from tests.test_restore_powercut import PowerCutHarness, _links, _rows

SEED = int(os.environ.get("IMS_KILL_SEED") or __import__("time").time_ns() % 1_000_000)


def _marks(home) -> list[str]:
    """Maildir restore marks (ims-restoring.*) anywhere in the installation."""
    return sorted(os.path.join(d, f) for d, _dirs, files in os.walk(str(home))
                  for f in files if f.startswith("ims-restoring."))


class BesideHarness(PowerCutHarness):
    """``imsrestore -n`` of ``archive`` into an installation that holds it already (every
    folder restored beside), cut; the same command again must leave what an uncut run
    leaves: one folder beside each, whole, and nothing half restored or empty beside it."""

    rerun_completed = False         # run again after it completed, -n makes new folders

    def __init__(self, workdir, source_store, archive, driver, paths=()):
        super().__init__(workdir, source_store, archive, driver, None, None,
                         prepare=["imsrestore", "-c", "y", "-f", archive])
        self.argv = ["imsrestore", "-c", "y", "-n", "-f", archive, *paths]

    def count(self) -> int:
        home = self.fresh()
        from tests.faults import count_steps
        n, p = count_steps(self.argv, home, self.work, env={"IMS_HOME": home})
        assert p.returncode == 0, p.stderr
        target = open_store(Config(home), create=False)
        self.want, self.want_links = state(target), _links(target)
        self.want_files = message_files(home, self.driver)
        self.want_rows = _rows(home)
        assert any("-" in f for (_u, f) in self.want_rows), self.want_rows
        shutil.rmtree(home, ignore_errors=True)
        return n

    def judge(self, home: str) -> list[str]:
        problems = super().judge(home)
        left = _marks(home)
        if left:
            problems.append(f"marks left: {left[:3]}")
        return problems


def _beside_source(tmp_path, driver, seed):
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
    store, full = _beside_source(tmp_path, driver, seed)
    bad, n = [], 0
    for k, paths in enumerate(((), ("/primary/user/zoë",))):
        h = BesideHarness(tmp_path / f"h{k}", store, full, driver, paths)
        os.makedirs(h.work, exist_ok=True)
        total = h.count()
        points = spread(total, 4, seed + k)
        outcomes = h.trials([dict(point=p, second=(max(1, total // 3) if i % 3 == 2 else None))
                             for i, p in enumerate(points)])
        n += len(outcomes)
        bad += [(paths, o) for o in outcomes if not o.ok]
        assert h.lost, "no trial lost journal records: the cut is not simulated"
    assert not bad, (f"IMS_KILL_SEED={SEED}: {len(bad)} of {n} trials wrong:\n"
                     + "\n".join(f"  {paths} point {o.point}: exits {o.first}/{o.second}/{o.final}: "
                                 f"{o.problems}" for paths, o in bad[:5]))
