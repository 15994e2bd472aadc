"""flock with a deadline: the one way ims-asm waits for a lock another process holds;
and whether a process named in a lock or a temporary's name still lives."""
from __future__ import annotations

import fcntl
import os
import time


def pid_alive(pid: int) -> bool:
    """True unless no process ``pid`` exists on this host (one we may not signal lives)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def flock_wait(fd: int, timeout: float, poll: float = 0.02) -> bool:
    """Take an exclusive flock on ``fd``, waiting up to ``timeout`` seconds.
    False when another process still holds it then (``fd`` is left open)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
