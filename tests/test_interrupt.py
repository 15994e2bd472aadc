"""Ctrl-C (SIGINT) at many points of imsrestore and imsbackup, both drivers: an
interrupted command never says it succeeded.

tests/fault's ``int:N`` sends SIGINT just before step N of the run (a write under the
root; with IMS_FAULT_READS=1 a read too, so that a backup, which writes nothing in the
store, can be stopped while it reads it).  Every point before the run's last step must
end with status 130 and one line saying "interrupted"; only a point past the last step
(the signal never sent: the work was all done) may exit 0.  Then:

* imsrestore: the same command again exits 0 with the store as the archive has it
  (tests/restore_faults.py judges it);
* imsbackup: nothing is left under the archive's name but the complete archive and
  state file an earlier run put there, byte for byte.

(Before, a SIGINT sent at a step that was an SQLite statement was raised inside the
fault harness's trace callback, where sqlite3 drops exceptions: the run went on and
exited 0, which a helper took for a command swallowing Ctrl-C.  No real signal lands
there: the product registers no SQLite callback.)

IMS_KILL_SEED repeats a seed.
"""
from __future__ import annotations

import os
import random
import time

import pytest

from asm.errors import EXIT_INTERRUPTED
from asm.store import open_store
from tests.faults import count_steps, run_with_fault, spread
from tests.helpers import DRIVERS, in_home, make_home, run, sha256
from tests.restore_faults import Harness, Outcome, backup, build_source

SEED = int(os.environ.get("IMS_KILL_SEED") or time.time_ns() % 1_000_000)
POINTS = 8              # per driver and command, spread over the whole run (and, for a
                        # restore, one more at a step that is an SQLite statement)


def _source(tmp_path, driver):
    home = tmp_path / "src"
    with in_home(home):
        store = open_store(make_home(home, driver))
        build_source(store, users=2, messages=12, big=1000)
        archive = backup(home, tmp_path / "a.ims")
    return home, store, archive


def _interrupted(p) -> list[str]:
    err = p.stderr
    if p.returncode != EXIT_INTERRUPTED or err.count(b"\n") != 1 or b"interrupted" not in err:
        return [f"interrupted run: exit {p.returncode}, want {EXIT_INTERRUPTED} and one line: {err[-300:]!r}"]
    return []


class IntHarness(Harness):
    """Each trial: SIGINT at one step of the restore, then the same command clean."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.total = None
        self.sql = []           # the steps that are SQLite statements

    def count(self) -> int:
        home = self.fresh()
        log = os.path.join(self.work, "steps.log")
        n, p = count_steps(self.argv, home, self.work, env={"IMS_HOME": home, "IMS_FAULT_LOG": log})
        assert p.returncode == 0, p.stderr
        with open(log) as f:
            self.sql = [int(k) for k, _, what in (ln.partition(" ") for ln in f)
                        if k.isdigit() and what.startswith("sqlite:")]
        return n

    def kill_trial(self, point: int, second=None, mode="int") -> Outcome:
        home = self.fresh()
        p = self.run_fault(home, f"int:{point}")
        out = Outcome(point, p.returncode)
        if point <= self.total:
            out.problems += _interrupted(p)
        elif p.returncode != 0:
            out.problems.append(f"not interrupted (past the last step): exit {p.returncode}: {p.stderr[-300:]!r}")
        again = run(home, *self.argv, env={"IMS_HOME": home})
        out.final = again.returncode
        if again.returncode != 0:
            out.problems.append(f"rerun: exit {again.returncode}: {again.stderr[-300:]!r}")
        out.problems += self.judge(home)
        return out


def _report(outcomes, seed, total) -> str:
    bad = [o for o in outcomes if not o.ok]
    return (f"IMS_KILL_SEED={seed}: {total} steps, {len(bad)} of {len(outcomes)} points wrong:\n"
            + "\n".join(f"  point {o.point}: {o.problems}" for o in bad[:5]))


@pytest.mark.parametrize("driver", DRIVERS)
def test_ctrl_c_anywhere_in_a_restore_exits_130_and_the_same_command_finishes(tmp_path, driver):
    _, store, archive = _source(tmp_path, driver)
    h = IntHarness(tmp_path, store, archive, driver)
    h.total = h.count()
    seed = SEED * 10 + DRIVERS.index(driver)
    points = sorted(set(spread(h.total, POINTS, seed)) | {random.Random(seed).choice(h.sql)})
    outcomes = h.trials([dict(point=p) for p in points])
    assert all(o.ok for o in outcomes), _report(outcomes, seed, h.total)
    assert sum(o.first == EXIT_INTERRUPTED for o in outcomes) >= len(points) - 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_ctrl_c_anywhere_in_a_backup_exits_130_and_leaves_the_earlier_archive(tmp_path, driver):
    home, _, _ = _source(tmp_path, driver)
    target = tmp_path / "nightly.ims"
    argv = ["imsbackup", "-f", str(target), "/"]
    env = {"IMS_HOME": str(home), "IMS_FAULT_READS": "1"}
    root = home / "data"                      # the store: every file the backup opens there is a step
    total, p = count_steps(argv, root, tmp_path, env=env)
    assert p.returncode == 0 and total > 40, (total, p.stderr)
    backup(home, target)                      # the complete archive an earlier night left
    before = {n: sha256(tmp_path / n) for n in os.listdir(tmp_path) if n.startswith("nightly")}
    assert sorted(before) == ["nightly.ims", "nightly.ims.state"]
    seed = SEED * 10 + 5 + DRIVERS.index(driver)
    bad, signalled = [], 0
    for point in spread(total, POINTS, seed):
        # (the reader threads (-j) read a file ahead, or leave it to the writer, as timing
        # has it: a run's steps number a few more or fewer than counted, and one that
        # never reaches the point is not signalled -- it must then end 0, complete)
        sent = tmp_path / f"sent-{point}"
        p = run_with_fault(argv, root, f"int:{point}", env={**env, "IMS_FAULT_SENT": sent})
        was = sent.exists()
        signalled += was
        problems = _interrupted(p) if was else [] if p.returncode == 0 else [f"not signalled: exit {p.returncode}"]
        left = sorted(n for n in os.listdir(tmp_path) if "nightly" in n)
        if left != sorted(before):
            problems.append(f"left under the archive's name: {left}")
        elif was and {n: sha256(tmp_path / n) for n in left} != before:
            problems.append("the earlier archive or its state file changed")
        if problems:
            bad.append((point, problems))
        if problems or p.returncode == 0:
            backup(home, target)
            before = {n: sha256(tmp_path / n) for n in os.listdir(tmp_path) if n.startswith("nightly")}
    assert bad == [], f"IMS_KILL_SEED={SEED}: {total} steps: {bad[:5]}"
    assert signalled >= POINTS // 2, (signalled, total)


def test_a_state_file_a_killed_replacement_moved_aside_is_put_back_or_removed(tmp_path):
    """imsbackup replacing an archive of the same name moves the old state file aside
    (STATE.replaced-PID) before it puts the new archive in place.  Killed outright in
    between (6 of 60 kills), the old archive stayed without its state file: the next
    `--base` was refused, and the moved-aside files piled up.  Now the next --base of
    that state, or the next backup of that name, puts it back when the archive is still
    the one it describes, and removes it when the new archive is there."""
    from asm.store import open_store
    from tests.helpers import make_home, put, run
    home = tmp_path / "ims"
    store = open_store(make_home(home, "classic"))
    put(store, "joe", "INBOX", 1)
    full = tmp_path / "full.ims"
    state = tmp_path / "full.ims.state"
    run(home, "imsbackup", "-f", full, "/", check=0)
    dead = 999999999
    os.replace(state, f"{state}.replaced-{dead}")           # killed: the old archive, its state aside
    put(store, "joe", "INBOX", 2)
    run(home, "imsbackup", "-f", tmp_path / "incr.ims", "--base", state, "/", check=0)
    assert state.exists() and not list(tmp_path.glob("full.ims.state.replaced-*"))
    # killed after the new archive was put in place: the old state goes
    old = state.read_bytes()
    run(home, "imsbackup", "-f", full, "/", check=0)         # a new full of the same name
    (tmp_path / f"full.ims.state.replaced-{dead}").write_bytes(old)
    os.unlink(state)
    p = run(home, "imsbackup", "-f", tmp_path / "incr2.ims", "--base", state, "/")
    assert p.returncode == 2 and b"full.ims.state" in p.stderr, p.stderr
    assert not list(tmp_path.glob("full.ims.state.replaced-*"))
    # the next backup of that name sweeps one left beside it; a live run's is kept
    live = tmp_path / f"full.ims.state.replaced-{os.getpid()}"
    for aside in (tmp_path / f"full.ims.state.replaced-{dead}", live):
        aside.write_bytes(old)
    run(home, "imsbackup", "-f", full, "/", check=0)
    assert sorted(tmp_path.glob("full.ims.state.replaced-*")) == [live]


def test_a_signal_after_a_streamed_backup_sent_its_last_byte_is_no_failure(tmp_path):
    """imsbackup -v -f - without a state file, SIGTERM'd (or Ctrl-C'd) once the whole
    stream went out (its summary line said so): the run has succeeded, exit 0 and no
    other word -- at 24 delays spread over what is left of the run.  (It exited -15, or
    130 "interrupted", and the engine discarded a whole archive as a failed job.)"""
    import io
    import signal
    import subprocess
    import threading
    from asm.archive.reader import ArchiveReader
    from tests.helpers import popen
    home, _, _ = _source(tmp_path, "classic")
    bad, ran = [], 0
    for k in range(24):
        sig = signal.SIGTERM if k % 2 == 0 else signal.SIGINT
        proc = popen(home, "imsbackup", "-v", "-f", "-", "/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     env={"IMS_HOME": home}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        got = []
        reader = threading.Thread(target=lambda: got.append(proc.stdout.read()))
        reader.start()
        summary = b""
        while b" users, " not in summary:              # said once the archive went whole
            line = proc.stderr.readline()
            if not line:
                break
            summary += line
        time.sleep(0.0002 * k)                         # 0 to 5 ms after
        if proc.poll() is None:
            ran += 1
            proc.send_signal(sig)
        err = summary + proc.stderr.read()
        proc.wait(60)
        reader.join(60)
        r = ArchiveReader(io.BytesIO(got[0]))
        n = sum(1 for _ in r.members())
        if proc.returncode != 0 or b" users, " not in summary or err != summary \
                or not r.complete or n == 0:
            bad.append((k, sig.name, proc.returncode, err[-200:]))
    assert bad == [], bad
    assert ran >= 12, ran                              # (signals that came before the end)


def test_a_signal_as_a_streamed_backup_writes_its_state_file_leaves_the_old_one_or_a_whole_run(tmp_path):
    """imsbackup -f - --state-out S (the archive a stream on stdout, its state file the
    only thing put in place) SIGTERM'd or Ctrl-C'd before each step of replacing S:
    exit 130 with S as it was and nothing beside it, or exit 0 with the new S and the
    whole archive on stdout.  (A signal after the old S went aside exited 130 with S
    gone; one after the new S was written, 130 or 143 with S naming the stream the
    engine discarded: the next --base incremental built on it.)"""
    from asm.archive.reader import ArchiveReader
    import io
    home, _, _ = _source(tmp_path, "classic")
    out = tmp_path / "out"
    out.mkdir()
    state = out / "S.state"
    argv = ["imsbackup", "-f", "-", "--state-out", str(state), "/"]
    assert run(home, *argv).returncode == 0
    old = sha256(state)
    env = {"IMS_HOME": str(home)}
    total, p = count_steps(argv, out, tmp_path, env=env)
    assert p.returncode == 0 and total >= 4, (total, p.stderr)
    assert sha256(state) != old
    bad = []
    for mode in ("term", "int"):
        for point in range(1, total + 2):
            run(home, *argv)                                # the earlier night's S
            old = sha256(state)
            p = run_with_fault(argv, out, f"{mode}:{point}", env=env)
            problems = []
            if p.returncode == 130:
                if p.stderr.count(b"\n") != 1 or b"interrupted" not in p.stderr:
                    problems.append(p.stderr[-300:])
                if not state.exists() or sha256(state) != old:
                    problems.append("130, and S is not the old one")
            elif p.returncode == 0:
                r = ArchiveReader(io.BytesIO(p.stdout))
                n = sum(1 for _ in r.members())
                if sha256(state) == old or not r.complete or n == 0:
                    problems.append("0, and S or the archive is not the new whole one")
            else:
                problems.append(f"exit {p.returncode}: {p.stderr[-300:]!r}")
            left = sorted(os.listdir(out))
            if left != ["S.state"]:
                problems.append(f"left: {left}")
            if problems:
                bad.append((mode, point, problems))
    assert bad == [], f"{total} steps: {bad[:4]}"
