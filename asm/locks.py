"""flock with a deadline: the one way ims-asm waits for a lock another process holds;
and whether a process named in a lock or a temporary's name still lives."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from asm.errors import ImsError
from asm.trees import remove_tree


class UnsafeLockFile(ImsError):
    """A lock file that is a link: nothing was done."""


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


def open_lock_file(path: str, mode: int = 0o600) -> int:
    """Open (make) the lock file ``path`` for reading and writing, never through a
    symbolic link or onto a file with other names (hard links): a lock beside an archive
    or in a staging area lives in a directory others may write (a shared /backup), and
    one who plants ``.full.ims.lock -> /etc/shadow`` there must not have root truncate
    that file to write a pid in it.  UnsafeLockFile (exit 2) names such a file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        fd = None
    if fd is not None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd
        os.close(fd)
    raise UnsafeLockFile(f"{path}: the lock file is a symbolic link, a hard link or no regular file, which "
                         f"ims-asm never writes through (someone who can write {os.path.dirname(path) or '.'} "
                         f"may have made it); remove it, make the directory writable only by the backup's "
                         f"user, and run again")


class FileLock:
    """An exclusive flock on the file ``path`` (made when missing), which holds the
    holder's pid: one run at a time for what the name stands for (imsbackup: one
    archive name and its state file).  The kernel lets it go when the process ends
    however it ends; :meth:`release` also removes the file.  Not waited for."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """None once held; else the pid of the holder (0 when it has not written it yet)."""
        while True:
            fd = open_lock_file(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    text = os.read(fd, 32).decode("ascii", "replace").strip()
                finally:
                    os.close(fd)
                return int(text) if text.isdigit() else 0
            except BaseException:
                os.close(fd)
                raise
            # still the file at that name (a holder that ended removed it meanwhile)?
            try:
                now = os.stat(self.path)
                mine = os.fstat(fd)
                same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass                 # (a full disk: the lock holds all the same, without its pid)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)     # while held: a run that opened it before tries again
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def owned_tempdir(prefix: str, parent: str | None = None) -> str:
    """``tempfile.mkdtemp`` named ``<prefix><host>.<pid>-XXXXXXXX`` in ``parent`` (default
    $TMPDIR), after removing every ``<prefix><host>.<pid>-*`` there whose process on this
    host is gone: a run killed outright (SIGKILL, a job timeout, the OOM killer) cannot
    remove its own, and scratch stores or copies left run after run would fill the disk."""
    import tempfile
    parent = parent if parent is not None else tempfile.gettempdir()
    mine = f"{prefix}{os.uname().nodename}."    # (socket.gethostname(): glibc reads uname)
    try:
        names = [n for n in os.listdir(parent) if n.startswith(mine)]
    except OSError:
        names = []
    for n in names:
        pid_s, dash, _ = n[len(mine):].partition("-")
        path = os.path.join(parent, n)
        if (dash and pid_s.isdigit() and int(pid_s) != os.getpid() and not pid_alive(int(pid_s))
                and os.path.isdir(path) and not os.path.islink(path)):
            remove_tree(path)
    return tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-", dir=parent)
