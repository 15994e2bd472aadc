"""Dotlocks as Dovecot takes them (``dovecot-uidlist.lock``, ``subscriptions.lock``):
a file created next to the one it protects, holding ``<pid>:<host>``; whoever
created it may change the protected file.  A lock whose owner is gone is stale and
may be broken; a held lock is touched now and then so it never looks stale."""
from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import threading
import time

from asm.store.base import LockTimeout

LOCK_SUFFIX = ".lock"
STALE_LOCK_SECS = 120          # Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT
TOUCH_LOCK_SECS = 30           # refresh held locks well before they look stale


class Unlocked(Exception):
    """The dotlock cannot be created at all (read-only store): read without it."""


def lock_is_stale(path: str, hostname: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    if time.time() - st.st_mtime > STALE_LOCK_SECS:
        return True
    if time.time() - st.st_mtime < 2:   # like Dovecot: a fresh lock's PID is not checked
        return False
    try:
        with open(path, errors="replace") as f:
            pid_s, _, host = f.read(512).strip().partition(":")
        pid = int(pid_s)
    except (OSError, ValueError):
        return False
    if host not in (hostname, socket.gethostname(), socket.gethostname().split(".")[0]):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(path: str, timeout: float, what: str, pid: int, hostname: str, chown=None) -> None:
    """Create the dotlock ``path``, waiting up to ``timeout`` seconds (LockTimeout);
    :class:`Unlocked` when it cannot be created at all.  ``chown(fd)`` gives the lock
    file to the store's owner."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if lock_is_stale(path, hostname):
                break_lock(path)
                continue
            if time.monotonic() >= deadline:
                raise LockTimeout(what) from None
            # short polls: writers release the lock between operations for only
            # a moment, and a waiter that sleeps long would starve behind them
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.01)
            continue
        except (PermissionError, OSError) as exc:
            if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES):
                raise Unlocked() from exc
            raise
        try:
            os.write(fd, f"{pid}:{hostname}".encode())
            if chown is not None:
                chown(fd)
        finally:
            os.close(fd)
        return


def release(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def break_lock(path: str) -> None:
    """Remove a stale lock, but only the one we judged (not a fresh one since)."""
    try:
        before = os.stat(path)
        stale_name = f"{path}.stale.{os.getpid()}"
        os.rename(path, stale_name)
        after = os.stat(stale_name)
        if (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
            # someone took the lock in between: put theirs back if we can
            try:
                os.link(stale_name, path)
            except FileExistsError:
                pass
        os.unlink(stale_name)
    except FileNotFoundError:
        pass


class Toucher:
    """A daemon thread that touches the locks ``held()`` returns every TOUCH_LOCK_SECS;
    it ends when there are none."""

    def __init__(self, held, mutex):
        self._held = held              # () -> list of objects with .lockpath and .touched
        self._mutex = mutex
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(TOUCH_LOCK_SECS / 3):
            with self._mutex:
                held = self._held()
                if not held:
                    self._thread = None
                    return
            now = time.time()
            for h in held:
                if now - h.touched >= TOUCH_LOCK_SECS:
                    with contextlib.suppress(OSError):
                        os.utime(h.lockpath)
                    h.touched = now

    def start(self) -> None:
        """Call with the mutex held."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="maildir-lock-toucher")
            self._thread.start()
