"""A command's start: the cyclic garbage collector is paused while its modules load
(asm/__init__.py) and runs again, with what the start made frozen, once run_command
begins the command's work (asm.cli.common._resume_gc).  Anything else that imports asm
(a test, a plugin host, ``python -c``) keeps the collector as it was."""
from __future__ import annotations

import subprocess
import sys

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
