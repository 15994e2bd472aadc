"""A command's start: the cyclic garbage collector is paused while its modules load
(asm/__init__.py) and runs again, with what the start made frozen, once run_command
begins the command's work (asm.cli.common._resume_gc).  Anything else that imports asm
(a test, a plugin host, ``python -c``) keeps the collector as it was.

And what a plain archive's restore loads: a layer's modules (cryptography for age,
zstandard), the backup's modules and socket are loaded only by what needs them; the
kill-point tests alone start thousands of restores."""
from __future__ import annotations

import subprocess
import sys

import pytest

from asm.store import open_store
from tests.helpers import DRIVERS, in_home, make_home, put, run

SCRIPT = """\
import gc, sys
import asm
from asm.cli.common import run_command
print("start", gc.isenabled(), asm._gc_paused, flush=True)
def body(argv):
    print("body", gc.isenabled(), asm._gc_paused, gc.get_freeze_count() > 0, flush=True)
    return 0
sys.exit(run_command("x", body, []))
"""


def _run(path) -> list[str]:
    p = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_a_command_loads_with_the_collector_paused_and_works_with_it_on(tmp_path):
    script = tmp_path / "imsbackup"                     # a console script's name
    script.write_text(SCRIPT)
    assert _run(script) == ["start False True", "body True False True"]


def test_anything_else_importing_asm_keeps_the_collector_on(tmp_path):
    script = tmp_path / "not-a-command"
    script.write_text(SCRIPT)
    assert _run(script) == ["start True False", "body True False False"]


#: modules a restore of a plain archive into a store without Dovecot has no use for
NOT_LOADED = ("cryptography", "zstandard", "asm.layers.age", "asm.layers.zstd", "asm.backup", "socket")


def _loaded(stderr: bytes) -> set[str]:
    """The modules ``-X importtime`` (PYTHONPROFILEIMPORTTIME) listed on stderr."""
    out = set()
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            out.add(line.rsplit("|", 1)[1].strip())
    return out


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_plain_archive_restores_without_the_layers_or_the_backups_modules(tmp_path, driver):
    src = tmp_path / "src"
    cfg = make_home(src, driver)
    with in_home(src):
        store = open_store(cfg)
        for n in range(3):
            put(store, "alice", "INBOX" if n else "Work", n)
    archive = tmp_path / "a.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    dst = tmp_path / "dst"
    make_home(dst, driver)
    p = run(dst, "imsrestore", "-f", archive, env={"PYTHONPROFILEIMPORTTIME": "1"}, check=0)
    loaded = _loaded(p.stderr)
    assert "asm.restore.engine" in loaded            # the listing is there at all
    assert "asm.store" in loaded
    wrong = sorted(m for m in loaded if m.split(".")[0] in NOT_LOADED or m in NOT_LOADED)
    assert not wrong, f"a plain restore loaded {wrong}"
