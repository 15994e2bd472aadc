"""Work left to the end of a command: what a store made for the run and removes when
it ends (a dbox store's WORK directory, Maildir index files kept aside, a DR snapshot's
private copy of its mailbox list).

A command (asm.cli.common.run_command) does it inside the command, while Ctrl-C,
SIGTERM and SIGHUP still end the run as "interrupted" (one line, exit 130): before,
atexit did it after the command had let a late signal end the process quietly, and a
Ctrl-C while a dbox restore removed its WORK directory ended the process by the signal
itself (status -2 to its caller, no line; the directory half removed until the next
run).  After imsbackup's Commit (its archive in place) those signals are ignored and the
work completes.  Work not done by a command (code using a store outside one, or work a
signal cut short) is done at interpreter exit, as before.
"""
from __future__ import annotations

import atexit
import threading

_work: list[tuple] = []
_lock = threading.Lock()


def at_end(fn, *args) -> None:
    """Call ``fn(*args)`` when the command ends (or at exit); the last registered first."""
    with _lock:
        _work.append((fn, args))


def mark() -> int:
    """Where a command's own work begins (work registered before it is not its own)."""
    with _lock:
        return len(_work)


def finish(since: int = 0) -> None:
    """Do the work registered from ``since`` on, the last registered first.  Work a
    signal cuts short stays registered, for the next call or interpreter exit."""
    while True:
        with _lock:
            if len(_work) <= since:
                return
            fn, args = _work[-1]
        fn(*args)
        with _lock:
            if _work and _work[-1] == (fn, args):
                _work.pop()


def scratch_dir(prefix: str, parent: str | None = None, mode: int | None = None) -> str:
    """A new private directory (``tempfile.mkdtemp``) removed, with what it holds, when
    the command ends.  Made and registered with the stop signals held: one that came as
    mkdtemp returned left the directory behind with no one to remove it."""
    import tempfile
    from asm.interrupts import interrupts_deferred
    from asm.trees import remove_tree
    with interrupts_deferred():
        path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        at_end(remove_tree, path)
    if mode is not None:
        import os
        os.chmod(path, mode)
    return path


atexit.register(finish)
