"""Run a project command under fault injection (see tests/fault/sitecustomize.py):
count the changes it makes on disk, then kill it, or fill its disk, before any one of
them. The kill and full-disk property tests pick their points from the count."""
from __future__ import annotations

import os
import random
import shutil
import subprocess

from tests.helpers import run

FAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault")


def _env(root, spec, env=None):
    e = dict(env or {})
    pythonpath = e.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
    e["PYTHONPATH"] = FAULT_DIR + (os.pathsep + pythonpath if pythonpath else "")
    e["IMS_FAULT"] = spec
    e["IMS_FAULT_ROOT"] = os.path.abspath(str(root))
    return e


def run_with_fault(argv, root, spec, env=None, input=None, timeout=300):
    """Run ``argv`` (argv[0] a command of the venv, e.g. "imsrestore") under ``spec``
    with ``helpers.run`` (IMS_HOME as in this process, ``env`` on top)."""
    return run(None, *argv, env=_env(root, spec, env), input=input, timeout=timeout)


def count_steps(argv, root, tmp, env=None, input=None) -> tuple[int, subprocess.CompletedProcess]:
    """How many on-disk changes ``argv`` makes under ``root`` when nothing goes wrong."""
    out = os.path.join(str(tmp), f"steps-{random.getrandbits(32):08x}")
    p = run_with_fault(argv, root, f"count:{out}", env=env, input=input)
    with open(out) as f:
        return int(f.read()), p


def spread(total: int, n: int, seed: int) -> list[int]:
    """``n`` distinct kill points over 1..total+1: the range cut into ``n`` runs of
    whole steps as even as can be, one point drawn in each, so every region of the run
    is hit and different seeds hit different steps. (Jittering a fractional stride, as
    this once did, let two neighbours land on the same step now and then: 49 points
    where 50 were asked.)"""
    rng = random.Random(seed)
    if total + 1 <= n:
        return list(range(1, total + 2))
    edges = [1 + i * (total + 1) // n for i in range(n + 1)]
    return [rng.randrange(edges[i], edges[i + 1]) for i in range(n)]


def killed_at_each(argv, base, points, tmp, judge_killed, judge_done, steps=()) -> list:
    """For each kill point: ``argv`` killed at that point in a copy of the installation
    ``base`` (it must die of SIGKILL), the copy judged by ``judge_killed(home)``, the
    same command run again (exit 0) and the copy judged by ``judge_done(home)`` (each a
    list of problems).  [(point, its step in ``steps`` (n, what), problems)] of the
    points where anything is wrong; the copies of the others are removed."""
    bad = []
    what = dict(steps)
    for point in points:
        home = os.path.join(str(tmp), f"k{point}")
        shutil.copytree(base, home)
        p = run_with_fault(argv, home, f"kill:{point}", env={"IMS_HOME": home})
        assert p.returncode == -9, (point, p.stderr)
        problems = judge_killed(home)
        p = run(home, *argv, env={"IMS_HOME": home})
        if p.returncode != 0:
            problems.append(f"rerun exits {p.returncode}: {p.stderr!r}")
        problems += judge_done(home)
        if problems:
            bad.append((point, what.get(point), problems))
        else:
            shutil.rmtree(home)
    return bad


def signalled_copy(argv, base, home, mode: str, point: int) -> subprocess.CompletedProcess:
    """``argv`` run on a fresh copy of the installation ``base`` at ``home``, stopped by
    ``mode`` ("term": SIGTERM, "int": SIGINT) before its ``point``-th step."""
    shutil.copytree(base, home)
    return run_with_fault(argv, home, f"{mode}:{point}", env={"IMS_HOME": str(home)})
