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
from tests.faults import count_steps, run_with_fault, spread
from tests.dovecot_lab import lab_fixture
from tests.helpers import DRIVERS, in_home, make_home, run, state
from tests.restore_faults import Harness, backup, build_source, message_files
from tests.test_restore_powercut import JOURNAL, PowerCutHarness, _links, _rows

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

    def __init__(self, workdir, source_store, archive, driver, option, paths=(), cut=True, held=True):
        super().__init__(workdir, source_store, archive, driver, None, None,
                         prepare=["imsrestore", "-c", "y", "-f", archive] if held else None)
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
    """-n over the whole store, and over one user's folders (a partial restore, into an
    installation without them), cut at
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
        # (the whole store beside the folders it holds; one user into an installation
        # without it: -n restores each folder under its own name, absent)
        h = AgainHarness(tmp_path / f"h{k}", store, full, driver, "-n", paths, held=not paths)
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
        # (three points can all fall where the journal held nothing unsynced, before its
        # first record or after the last sync: once in CI; then more points, one at a time)
        more = 0
        while cut and not h.lost and more < 6:
            more += 1
            outcomes += [("cut", o) for o in _trials(h, seed + 100 * more, 1)]
        assert h.lost or not cut, "no trial lost journal records: the cut is not simulated"
    _judged(outcomes)


def _mail(st: dict) -> set:
    """(user, folder, sha256) of every message of a ``state``."""
    return {(k[0], k[1], v[0]) for k, v in st.items() if len(k) == 3}


@pytest.mark.parametrize("driver", DRIVERS)
def test_marks_of_a_cut_link_go_once_another_restore_merges_into_its_folders(tmp_path, driver):
    """The full restored; its next link cut by a power cut (the folders it had begun
    keep its mark, the journal lost that they were under way); then the full restored
    again over them (a merge: the mail deleted between the two backups comes back, as
    the administrator asked); then the next link's command again.  The merge takes the
    link's marks away (with the folder's change: the classic index's transaction), and
    nothing either archive holds is lost from the folders the link had begun.  (Before,
    a merge removed only the marks of the archive the journal named: the link's stayed
    in those folders for good, each cut run's one more file beside cur/, and one of them
    found by a later run of the link's command resumed it as a chain over the merge,
    expunging again what the merge had brought back, when the folder's UIDNEXT
    allowed it.)"""
    from tests.test_restore_powercut import _source as chain_source
    _store, full, incr, at_full, at_incr = chain_source(tmp_path, driver)
    home = str(tmp_path / "dst")
    make_home(home, driver)
    env = {"IMS_HOME": home}
    run(home, "imsrestore", "-c", "y", "-f", full, check=0)
    argv = ["imsrestore", "-c", "y", "-f", incr]
    durable = str(tmp_path / "durable.db")
    probe = str(tmp_path / "probe")
    shutil.copytree(home, probe, symlinks=True)
    shutil.copytree(home, probe + ".0", symlinks=True)
    total, p = count_steps(argv, probe, tmp_path, env={"IMS_HOME": probe})
    assert p.returncode == 0, p.stderr
    begun = set()
    for k in (6, 5, 4, 3, 7):
        # a point where the link began folders and the journal lost that it had
        shutil.rmtree(home)
        shutil.copytree(probe + ".0", home, symlinks=True)
        p = run_with_fault(argv, home, f"kill:{total * k // 8}", env={**env, "IMS_FAULT_DURABLE": durable})
        assert p.returncode == -9, p.stderr
        for ext in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(os.path.join(home, JOURNAL + ext)):
                os.unlink(os.path.join(home, JOURNAL + ext))
        shutil.copyfile(durable, os.path.join(home, JOURNAL))
        if any(r[2] for r in _rows(home).values()):
            continue                # an 'under way' record left: not this case
        store = open_store(Config(home), create=False)
        begun = {(u, f) for u in store.users("primary") for f in store.folder_names(u)
                 if any(".chain." in x for x in store.restoring_marks(u, f))}
        if begun:
            break
    assert begun
    run(home, "imsrestore", "-c", "y", "-f", full, check=0)
    store = open_store(Config(home), create=False)
    left = {(u, f): x for (u, f) in begun for x in store.restoring_marks(u, f) if ".chain." in x}
    assert not left, f"the link's marks left in {len(left)} folders merged into: {sorted(left.items())[:2]}"
    run(home, "imsrestore", "-c", "y", "-f", incr, check=0)
    # (a folder the link had not begun mirrors the full again: the link continues it)
    got = _mail(state(open_store(Config(home), create=False)))
    lost = {x for x in (_mail(at_full[0]) | _mail(at_incr[0])) - got if x[:2] in begun}
    assert not lost, f"{len(lost)} messages expunged, e.g. {sorted(lost)[:3]}"
    assert driver == "classic" or not _marks(home)


def _durable_rows(home, argv, tmp_path) -> tuple[dict, dict]:
    """Run ``argv`` (it must exit 0); the journal rows it left, and those a power cut right
    after it exited leaves (the journal's state at its last sync)."""
    os.makedirs(tmp_path, exist_ok=True)
    durable = str(tmp_path / "durable-after.db")
    with in_home(home):
        p = run_with_fault(argv, home, f"count:{tmp_path / 'steps'}",
                           env={"IMS_HOME": str(home), "IMS_FAULT_DURABLE": durable})
    assert p.returncode == 0, p.stderr
    live = _rows(home)
    cut = str(tmp_path / "cut")
    os.makedirs(os.path.join(cut, "data"), exist_ok=True)
    shutil.copyfile(durable, os.path.join(cut, JOURNAL))
    return live, _rows(cut)


dbox_lab = lab_fixture(params=["sdbox"], scope="function")


def test_a_dbox_restore_that_exits_0_has_its_journal_on_disk(dbox_lab, tmp_path):
    """A chain restored link by link into a dbox store Dovecot serves: when each command
    has exited 0, the journal a power cut leaves is the one it wrote (every folder a
    mirror of its link), so the next link continues the chain.  (Before, a dbox store
    recorded its folders after its batch had given them back to Dovecot, which is after
    the batch's last sync, and nothing synced the journal after that: a power cut in the
    seconds after exit 0 took every record of the run back, Dovecot serving the folders
    all the same, and the next link merged into them: the mail deleted between the
    backups kept, exit 0.)"""
    from tests.test_dbox_chain import chain, wipe
    home, full, incr, _first, _second = chain(dbox_lab, tmp_path)
    wipe(dbox_lab)
    for n, archive in enumerate((full, incr)):
        live, cut = _durable_rows(home, ["imsrestore", "-f", archive], tmp_path / f"r{n}")
        assert live and all(r[1] == 1 and r[2] is None for r in live.values()), live
        differ = sorted(k for k in set(live) | set(cut) if live.get(k) != cut.get(k))
        assert not differ, f"a power cut after exit 0 loses {len(differ)} journal rows, e.g. " \
            f"{differ[0]}: {cut.get(differ[0])} for {live.get(differ[0])}"


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_restore_that_exits_0_has_its_journal_on_disk(tmp_path, driver):
    """The same on the classic and maildir stores, a full then its next link."""
    from tests.test_restore_powercut import _source as chain_source
    _store, full, incr, _at_full, _at_incr = chain_source(tmp_path, driver)
    home = tmp_path / "dst"
    make_home(home, driver)
    for n, archive in enumerate((full, incr)):
        live, cut = _durable_rows(home, ["imsrestore", "-f", archive], tmp_path / f"r{n}")
        assert live == cut
        assert not _marks(home)
