"""Keep docs/ true: every option, hook and exit status the code has is documented."""
from __future__ import annotations

import os
import re

from asm import errors, hookspecs
from asm.config import OPTIONS, plugin_options

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def _read(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


def test_every_option_is_in_configuration_md():
    doc = _read("configuration.md")
    assert [k for k in OPTIONS if f"`{k}`" not in doc] == []
    # and those the built-in plugins declare (ssh.*)
    declared = plugin_options()
    assert "ssh.port" in declared
    assert [k for k in declared if f"`{k}`" not in doc] == []


def test_every_hook_is_in_plugins_md():
    doc = _read("plugins.md")
    hooks = [n for n in dir(hookspecs) if n.startswith("ims_")]
    assert len(hooks) >= 6
    assert [h for h in hooks if f"`{h}(" not in doc] == []


def test_the_exit_status_table_is_asm_errors():
    """docs/operations.md lists every status asm.errors defines (the only place the code
    takes one from: tests/test_errors.py checks that), once, in order, and nothing else."""
    doc = _read("operations.md")
    rows = [int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", doc, re.M)]
    codes = sorted(v for k, v in vars(errors).items() if k.startswith("EXIT_"))
    assert rows == codes
