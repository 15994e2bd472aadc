"""flock with a deadline: the one way ims-asm waits for a lock another process holds."""
from __future__ import annotations

import fcntl
import time


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
