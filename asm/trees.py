"""Removing a directory tree a command made for itself (a scratch installation, a dbox
login's copy, a restore's spool, a folder kept aside, a bundle unpacked aside).

``shutil.rmtree`` must not be cut by a stop signal: its descriptor walk closes a
directory's descriptor and then records that it did, and KeyboardInterrupt raised
between the two (the handler runs at the next bytecode) makes its ``finally`` close the
descriptor again.  The OSError (EBADF) replaced the interrupt: the command ended with
"internal error", exit 70, instead of "interrupted", 130 (imsverify --restore-test
SIGTERM'd at 6 of 40 points inside shutil, tests/test_cleanup_signals.py; imsdr restore
in CI), and the tree was left half removed.  So every such removal runs with the stop
signals held (asm.interrupts): one that comes meanwhile is delivered once the tree is
gone.
"""
from __future__ import annotations

from asm.interrupts import interrupts_deferred


def remove_tree(path: str, strict: bool = False) -> None:
    """``path`` and what it holds removed, with the stop signals held until it is done;
    whatever cannot be removed (or is not there) is left as it is, or with ``strict``
    the first OSError is raised (after the signals are let go)."""
    import shutil       # here: most commands remove no tree, and shutil is a few ms of every start
    with interrupts_deferred():
        shutil.rmtree(path, ignore_errors=not strict)
