"""The restore lock of a folder: held by a restore for the whole of that folder's
restore, from before it looks whether the folder exists until the journal says it is
done, so two restores that touch the same folder take turns (the second then finds
what the first restored, and skips it) while restores of other folders run at once.

It is ims-asm's own, separate from the store's folder lock (Dovecot's dotlock, which
a writer may hold only for short batches): one byte of ``$IMS_HOME/data/restore.lock``
per (user, folder), locked with POSIX record locks, which the kernel drops when their
process ends however it ends, so a killed restore never leaves one behind.

POSIX record locks belong to a process and are all dropped when it closes any
descriptor of the file: the file is opened once per process and never closed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import threading
from typing import Iterator

from asm.config import make_dirs

LOCK_FILE = "restore.lock"             # in $IMS_HOME/data, beside the restore journal
_files: dict[str, int] = {}            # path -> the one descriptor of this process
_mutex = threading.Lock()


def _fd(path: str, owner=None) -> int:
    with _mutex:
        fd = _files.get(path)
        if fd is None:
            make_dirs(os.path.dirname(path))       # $IMS_HOME/data: 0755 whatever the umask
            fd = _files[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if owner and os.geteuid() == 0 and os.fstat(fd).st_uid != owner[0]:
                os.fchown(fd, *owner)        # the store owner's restores take it too
        return fd


def _offset(user: str, folder: str) -> int:
    key = f"{user}\0{folder}".encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(key).digest()[:7], "big")     # < 2**56: any off_t


def holder(fd: int, offset: int) -> int | None:
    """The pid of the process holding the byte at ``offset`` (Linux struct flock)."""
    try:
        req = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        got = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        l_type, _, _, _, pid = struct.unpack("hh4xqqi4x", got)
        return pid if l_type != fcntl.F_UNLCK else None
    except (OSError, struct.error):
        return None


class RestoreLocks:
    """The restore locks of one installation (``path``: its restore.lock)."""

    def __init__(self, path: str, owner: tuple[int, int] | None = None):
        self.path = path
        self.owner = owner                  # store.owner: who the file is given to
        # called before waiting for a lock another process holds: a restore lets go of the
        # folders it holds until they are recorded complete (Restorer._record_done), so two
        # restores never wait for each other
        self.before_wait = None

    @contextlib.contextmanager
    def hold(self, user: str, folder: str, waiting=None) -> Iterator[None]:
        """Hold the restore lock of ``user``'s ``folder``, waiting as long as another
        restore holds it; ``waiting(pid)`` is called once if it has to wait."""
        fd = _fd(self.path, self.owner)
        offset = _offset(user, folder)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except (BlockingIOError, PermissionError):
            if self.before_wait is not None:
                self.before_wait()
            if waiting is not None:
                waiting(holder(fd, offset))
            # the kernel wakes us when the holder lets go (or dies); Ctrl-C still works
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset, os.SEEK_SET)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
