"""One run at a time per staging area: an flock on ``DIR/.lock`` holding the owner's pid.

The kernel drops the lock when the holder dies (even by SIGKILL), so a killed run never
blocks the next one; dump children inherit the descriptor, so the area stays locked
while any of them still writes.
"""
from __future__ import annotations

import os

from asm.locks import flock_wait, open_lock_file
from staging.errors import LockHeld

LOCK_NAME = ".lock"


class AreaLock:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK_NAME)
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, what: str = "imsstage") -> "AreaLock":
        fd = open_lock_file(self.path, 0o644)
        if not flock_wait(fd, wait, poll=0.2):
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            except OSError:
                holder = "?"
            os.close(fd)
            raise LockHeld(f"another staging run (pid {holder}) is using {os.path.dirname(self.path)}; "
                           f"wait for it to finish, or use another staging directory")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
