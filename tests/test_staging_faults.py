"""imsstage dump stopped part-way: by a staging disk that fills up (another writer) and by
SIGTERM (what NetBackup sends bpstart_notify), each at many points of the run.  Whatever
the point, nothing is under a final name without a ``complete`` row that records its
size and SHA-256, no row of the stopped run stays ``running``, a failed dump has no file,
and the rerun stages every group."""
from __future__ import annotations

import os

from tests.faults import count_steps, run_with_fault, spread
from tests.helpers import build, imsstage, rows, sha256, small_tmpfs, staged_files

FILLER = "zz-other-writer"
GROUPS = "gA=[a-d].*\n"       # two dumps: gA and the rest, 'user'; run two at a time


def _one_parent(env=None):
    """The fault applies to imsstage itself, not to its imsbackup children."""
    return dict(env or {}, IMS_FAULT_INHERIT="no")


def _empty(directory) -> None:
    for n in os.listdir(directory):
        os.unlink(os.path.join(directory, n))


def _recorded(st) -> None:
    """Every file under a final name is a complete dump's, with its recorded size and
    digest; a failed dump has no file; no temporary file is left."""
    by_file = {d["file"]: d for d in rows(st)}
    for name in staged_files(st):
        d = by_file.get(name)
        assert d is not None and d["status"] == "complete", (name, d)
        assert os.path.getsize(st / name) == d["size"] and sha256(st / name) == d["sha256"], name
    for d in by_file.values():
        if d["status"] != "complete":
            assert not (st / d["file"]).exists(), d
    assert not [n for n in os.listdir(st) if n.startswith(".") and n != ".lock"], os.listdir(st)


def _points(argv, st, tmp_path, ims_home, n: int, seed: int, *marks: str) -> list[int]:
    """``n`` steps of imsstage spread over its run from its first dump's row on (before
    it, nothing is dumped: a full disk there is the plan's exit 9), and the steps whose
    log line holds one of ``marks``."""
    log = tmp_path / "steps.log"
    total, p = count_steps(argv, st, tmp_path, env=_one_parent({"IMS_HOME": str(ims_home),
                                                                 "IMS_FAULT_LOG": str(log)}))
    assert p.returncode == 0, p.stderr
    lines = [(int(line.split()[0]), line) for line in log.read_text().splitlines() if line[:1].isdigit()]
    first = next(k for k, line in lines if "INSERT INTO dumps" in line)
    marked = {k for k, line in lines if any(m in line for m in marks)}
    assert len(marked) >= 2 * len(marks), lines         # each mark, for each of the two dumps
    _empty(st)
    return sorted(marked | {first + k for k in spread(total - first, n, seed)})


def _rerun_stages_everything(ims_home, st) -> None:
    r = imsstage(ims_home, "-D", str(st), "-j", "2")
    assert r.returncode == 0, r.stderr
    _recorded(st)
    done = rows(st)
    assert not [d for d in done if d["status"] == "running"], done
    assert sorted(d["grp"] for d in done if d["status"] == "complete" and d["run"] == done[-1]["run"]) == \
        ["gA", "user"]
    # the engine saved the area: nothing of any dump stays behind (no orphan of a failed one)
    imsstage(ims_home, "done", "-D", str(st), "--status", "0", "--keep", "0", check=0)
    assert staged_files(st) == [], os.listdir(st)


def test_a_staging_disk_that_fills_up_exits_13_and_leaves_no_unrecorded_file(ims_home, tmp_path):
    """The staging disk fills up (a real tmpfs, written full by another file) before each
    of imsstage's own steps in turn -- a row written, a list file, a rename, the catalog
    update after it: the run exits 13 (a full local disk, as the exit-status table says)
    with one line, or 0 when nothing more needed room; never 3.  What it staged is
    recorded; no row it could write stays running; and the rerun with room again stages
    every group and leaves no file of a failed dump for cleanup to miss."""
    build(ims_home, "classic", users=8, messages=40, groups=GROUPS)
    with small_tmpfs(tmp_path / "st", "16m") as st:
        argv = ["imsstage", "-D", str(st), "-j", "2"]
        statuses = set()
        # the catalog updates that record a dump complete, just after its file took its name
        for k in _points(argv, st, tmp_path, ims_home, 4, 3, "SET status='complete'"):
            _empty(st)
            r = run_with_fault(argv, st, f"fill:{k}", env=_one_parent(
                {"IMS_HOME": str(ims_home), "IMS_FAULT_FILL": str(st / FILLER)}))
            out = r.stderr.decode()
            statuses.add(r.returncode)
            assert r.returncode in (0, 13), (k, r.returncode, out)
            if r.returncode == 13:
                assert out.count("\n") == 1 and "full" in out and str(st) in out, (k, out)
            os.unlink(st / FILLER)
            _recorded(st)
            _rerun_stages_everything(ims_home, st)
        assert 13 in statuses, statuses


def test_sigterm_at_any_point_leaves_no_dump_running(ims_home, tmp_path):
    """SIGTERM (NetBackup giving up on bpstart_notify, which runs ``imsstage dump -j 2``)
    before each of imsstage's steps in turn -- a dump's row written but its child not yet
    started, a child's exit read but its file not yet renamed or recorded, the rename:
    the run exits 130 saying "unfinished dumps were removed and marked failed", and that
    is so once it has ended: no row of it is left ``running``, no file of a dump that did
    not complete stays, every file under a final name is recorded complete, and no child
    is left (the area's lock is free)."""
    from staging.lock import AreaLock
    build(ims_home, "classic", users=8, messages=40, groups=GROUPS)
    st = tmp_path / "st"
    st.mkdir()
    argv = ["imsstage", "-D", str(st), "-j", "2"]
    points = _points(argv, st, tmp_path, ims_home, 4, 5,
                     "UPDATE dumps SET file", ".report.json", ".ims.partial")
    for k in points:
        _empty(st)
        r = run_with_fault(argv, st, f"term:{k}", env=_one_parent({"IMS_HOME": str(ims_home)}))
        out = r.stderr.decode()
        done = rows(st)
        assert [d["status"] for d in done if d["status"] == "running"] == [], (k, out, done)
        if r.returncode == 0:       # the signal came after the last step: the run had finished
            assert [d["status"] for d in done] == ["complete"] * 2, (k, done)
        else:
            assert r.returncode == 130, (k, r.returncode, out)
            assert out == "imsstage: interrupted: unfinished dumps were removed and marked failed\n", (k, out)
        _recorded(st)
        with AreaLock(str(st)).acquire():
            pass
