"""imsverify of a directory that holds an earlier cycle's incrementals without their full
archive (pruned, or removed by mistake) beside this cycle's full: the summary says a chain
was checked without its full archive, as it says for this cycle's chain.

Before, "2 archives (1 chain) ... every check passed", as if the incremental were checked
whole, though what came before it (its full) was not given and imsrestore -f FULL -f INCR
refuses the pair (7).
"""
from __future__ import annotations

import time

import pytest

from asm.errors import EXIT_OK
from asm.store import open_store
from tests.helpers import DRIVERS, make_home, put, run

NOTE = "1 chain without its full archive (what came before not checked)"


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_earlier_cycles_incremental_without_its_full_is_said(tmp_path, driver):
    home = str(tmp_path / "src")
    store = open_store(make_home(home, driver))
    put(store, "joe", "INBOX", 1)
    d = tmp_path / "backup"
    d.mkdir()
    run(home, "imsbackup", "-f", d / "f1.ims", "/", check=EXIT_OK)
    time.sleep(1.1)
    put(store, "joe", "INBOX", 2)
    run(home, "imsbackup", "-f", d / "i1.ims", "--base", d / "f1.ims", "/", check=EXIT_OK)
    time.sleep(1.1)
    put(store, "joe", "INBOX", 3)
    run(home, "imsbackup", "-f", d / "f2.ims", "/", check=EXIT_OK)
    # the whole of both cycles: no note
    p = run(home, "imsverify", "-f", d, text=True, check=EXIT_OK)
    assert "without" not in p.stdout, p.stdout
    (d / "f1.ims").unlink()
    (d / "f1.ims.state").unlink()
    for argv in (["-f", d], ["-f", d / "f2.ims", "-f", d / "i1.ims"], ["-f", d / "i1.ims", "-f", d / "f2.ims"],
                 ["-f", d, "--restore-test"]):
        p = run(home, "imsverify", *argv, text=True)
        assert p.returncode == EXIT_OK and NOTE in p.stdout, (argv, p.stdout, p.stderr)
    p = run(home, "imsverify", "-f", d / "f2.ims", text=True, check=EXIT_OK)
    assert "without" not in p.stdout, p.stdout
