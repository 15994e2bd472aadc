"""Child processes that must not outlive the command that started them."""
from __future__ import annotations

import contextlib
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In a child, before it executes its program (``preexec_fn``): SIGTERM to it when
    the process that started it dies, even of a SIGKILL (Linux's PR_SET_PDEATHSIG), so
    no server or tool goes on writing for a command that is gone.  ``parent``: the
    starter's pid; one already gone by now (it died before the request was made) gets
    the child its SIGTERM at once."""
    import ctypes
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
