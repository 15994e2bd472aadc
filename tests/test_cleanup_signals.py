"""A stop signal landing while a command removes a tree it made for itself (asm.trees).

shutil.rmtree closes a directory's descriptor and then records that it did; a
KeyboardInterrupt raised between the two made it close the descriptor again, and the
OSError (EBADF) replaced the interrupt: ``imsverify --restore-test`` SIGTERM'd at 6 of 40
points spread over its calls into shutil ended "internal error (OSError: [Errno 9] Bad
file descriptor)", exit 70, instead of "interrupted", 130.  Every such removal now holds
the stop signals until the tree is gone.
"""
from __future__ import annotations

import os

import pytest

from tests.faults import run_with_fault, spread
from tests.helpers import build, run


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_sigterm_inside_shutil_anywhere_in_a_restore_test_ends_it_as_interrupted(driver, tmp_path):
    """SIGTERM raised at the N-th return of a built-in call made from shutil's own code
    (tests/fault: IMS_FAULT_LIBS=shutil.py: a descriptor's close(), an unlink(), a read of
    a copy), at 30 points spread over the whole run: each run ends with exit 130 and one
    line naming the interruption (or exit 0, the check done), and the scratch
    installation is gone every time."""
    src = tmp_path / "src"
    build(src, driver, users=3, messages=12)
    archive = tmp_path / "full.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = ["imsverify", "--restore-test", "--scratch", str(scratch), "-f", str(archive)]
    env = {"IMS_HOME": str(src), "IMS_FAULT_LIBS": "shutil.py"}
    counted = tmp_path / "points"
    run_with_fault(argv, tmp_path, f"sshcount:{counted}", env=env).check_returncode()
    total = int(counted.read_text())
    assert total > 200, total                 # (the removal of the scratch store counts)
    bad, outcomes = [], []
    for n in spread(total, 30, seed=61 if driver == "classic" else 62):
        p = run_with_fault(argv, tmp_path, f"sshterm:{n}", env=env, timeout=120)
        err = p.stderr.decode("utf-8", "replace")
        outcomes.append(p.returncode)
        if p.returncode == 130:
            if "interrupted" not in err or err.count("\n") != 1:
                bad.append((n, 130, err))
        elif p.returncode != 0:
            bad.append((n, p.returncode, err[-300:]))
        left = os.listdir(scratch)
        if left:
            bad.append((n, p.returncode, "scratch left", left))
    assert not bad, bad
    assert outcomes.count(130) >= 20, outcomes     # (the points fell inside the runs)
